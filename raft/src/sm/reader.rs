//! Reads of the applied state for the HTTP layer: [`StoreReader`].
//!
//! A reader shares the state machine's database, cache and applied index but never writes
//! records, so the HTTP layer holds one without holding the state machine (which openraft
//! owns). One record goes through the cache; pages and counts read redb. The whole list is
//! streamed from one read transaction ([`ListScan`]): at a million records it is some
//! 200 MB, which a node may not hold (let alone cache) whole, so only a list that fits in
//! one chunk is cached.

use std::io::{self, Write};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use redb::{
    Database, Range, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTableMetadata,
};
use tokio::sync::mpsc;

use super::state::{SnapshotCounts, StateMachine};
use super::tables::{order_key, BY_CREATED, COOKIES};
use crate::cache::{Cache, CachedRecord, Ticket};
use crate::chunks::{ChannelWriter, Chunk};
use crate::record::Record;
use crate::BoxError;

/// Bytes per chunk of a streamed list: large enough that a chunk's overhead (a channel send,
/// an HTTP chunk header) is noise, small enough that the few in flight are too. A list that
/// fits in one is cached whole.
pub const LIST_CHUNK: usize = 256 << 10;

/// Where the list body starts, in a page and in the streamed list alike.
const LIST_OPEN: &[u8] = b"{\"cookies\":[";

/// A cheap, cloneable read handle over the same state, for the HTTP layer.
#[derive(Clone)]
pub struct StoreReader {
    db: super::handle::Db,
    cache: Arc<Cache>,
    applied: Arc<AtomicU64>,
    snapshots: Arc<SnapshotCounts>,
}

/// Where a read was served from, for the `X-Cache` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
        }
    }
}

impl StateMachine {
    pub fn reader(&self) -> StoreReader {
        StoreReader {
            db: self.db.clone(),
            cache: self.cache.clone(),
            applied: self.applied.clone(),
            snapshots: self.snapshots.clone(),
        }
    }
}

/// The index of the last entry applied to the state `txn` sees (0 before any).
fn applied_index_in(txn: &ReadTransaction) -> Result<u64, BoxError> {
    Ok(super::tables::applied_in(txn)?.map_or(0, |l| l.index))
}

/// Write the records `range` names (the list order), at most `limit` of them,
/// comma-separated into `out`. Returns the last id written when more may follow.
fn write_rows(
    table: &ReadOnlyTable<&str, &[u8]>,
    range: Range<'static, (u64, &'static str), ()>,
    limit: usize,
    out: &mut impl Write,
) -> Result<Option<String>, BoxError> {
    // One buffer for the last id, not an allocation per row of a million-row list.
    let mut last = String::new();
    for (count, row) in range.enumerate() {
        let (key, _) = row?;
        if count == limit {
            return Ok((count > 0).then_some(last));
        }
        let (_, id) = key.value();
        let rec = get_readonly(table, id)?.ok_or("index names a missing record")?;
        if count > 0 {
            out.write_all(b",")?;
        }
        out.write_all(&rec.json)?;
        last.clear();
        last.push_str(id);
    }
    Ok(None)
}

fn get_readonly(table: &ReadOnlyTable<&str, &[u8]>, id: &str) -> Result<Option<Record>, BoxError> {
    match table.get(id)? {
        Some(v) => Ok(Some(
            Record::decode(v.value()).ok_or("corrupt record in the state machine")?,
        )),
        None => Ok(None),
    }
}

impl StoreReader {
    /// The state machine's current database, for a backup's read transaction (`backup.rs`).
    pub(super) fn db(&self) -> Arc<Database> {
        self.db.get()
    }

    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// Snapshots installed from a leader and built locally since the process started.
    pub fn snapshot_counts(&self) -> &SnapshotCounts {
        &self.snapshots
    }

    /// The index of the last entry this node applied.
    pub fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }

    /// One record from the applied state, through the cache.
    pub fn get(&self, id: &str) -> Result<(Option<CachedRecord>, CacheStatus), BoxError> {
        if let Some(hit) = self.cache.get(id) {
            return Ok((Some(hit), CacheStatus::Hit));
        }
        let ticket = self.cache.ticket(id);
        let db = self.db.get();
        let txn = db.begin_read()?;
        let table = txn.open_table(COOKIES)?;
        let rec = match table.get(id)? {
            Some(v) => Record::decode(v.value()).ok_or("corrupt record in the state machine")?,
            None => return Ok((None, CacheStatus::Miss)),
        };
        let cached = CachedRecord {
            json: Bytes::from(rec.json),
            version: rec.version,
        };
        self.cache.fill(id, ticket, cached.clone());
        Ok((Some(cached), CacheStatus::Miss))
    }

    /// The whole `GET /cookies` reply body, when the cache holds it (a small list).
    pub fn cached_list(&self) -> Option<Bytes> {
        self.cache.get_list()
    }

    /// Begin the whole `GET /cookies` reply (newest `created` first, ties by id): opens the
    /// read transaction it is read from, so a reply is one consistent state however long it
    /// takes to send, and learns that state's applied index for the headers. Send it with
    /// [`ListScan::send`].
    pub fn list_scan(&self) -> Result<ListScan, BoxError> {
        // The ticket before the transaction, as for one record: an apply that commits after
        // it keeps a list read from an older state out of the cache (cache.rs).
        let ticket = self.cache.list_ticket();
        let db = self.db.get();
        let txn = db.begin_read()?;
        let applied = applied_index_in(&txn)?;
        Ok(ListScan {
            txn,
            _db: db,
            applied,
            ticket,
            cache: self.cache.clone(),
        })
    }

    /// One page of the list order (newest `created` first, ties by id): at most `limit`
    /// records after the record `after`. Returns the body and, when more may follow, the id
    /// to continue after; `None` when `after` names no record. Costs a range scan of the
    /// index, not a sort of the whole store.
    pub fn page(
        &self,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Option<(Bytes, Option<String>)>, BoxError> {
        let db = self.db.get();
        let txn = db.begin_read()?;
        let table = txn.open_table(COOKIES)?;
        let order = txn.open_table(BY_CREATED)?;
        let start_key = match after {
            None => None,
            Some(a) => match get_readonly(&table, a)? {
                Some(rec) => Some((order_key(rec.created), a)),
                None => return Ok(None),
            },
        };
        let range = match start_key {
            Some(k) => order.range::<(u64, &str)>((Bound::Excluded(k), Bound::Unbounded))?,
            None => order.range::<(u64, &str)>(..)?,
        };
        let mut body = LIST_OPEN.to_vec();
        let next = write_rows(&table, range, limit, &mut body)?;
        body.extend_from_slice(b"]");
        if let Some(n) = &next {
            body.extend_from_slice(b",\"next_after\":");
            body.extend_from_slice(serde_json::to_string(n)?.as_bytes());
        }
        body.push(b'}');
        Ok(Some((Bytes::from(body), next)))
    }

    /// Number of stored records.
    pub fn count(&self) -> Result<u64, BoxError> {
        let db = self.db.get();
        let txn = db.begin_read()?;
        Ok(txn.open_table(COOKIES)?.len()?)
    }
}

/// The whole list, read from one redb read transaction: see [`StoreReader::list_scan`].
pub struct ListScan {
    txn: ReadTransaction,
    /// The database `txn` reads, kept open until the scan ends even if an install replaces
    /// it meanwhile (declared after `txn`, so dropped after it).
    _db: Arc<Database>,
    applied: u64,
    ticket: Ticket,
    cache: Arc<Cache>,
}

impl ListScan {
    /// The index of the last entry applied to the state this list is read from.
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// Send the list body into `tx` in chunks of about [`LIST_CHUNK`] bytes, blocking while
    /// the channel is full: the same bytes as `page(usize::MAX, None)`. Blocking: run it on
    /// the blocking pool. A body that fits in one chunk is cached whole. When the receiver
    /// is gone (the client disconnected) it stops quietly; any other error is sent as the
    /// last item, so the body ends cut off rather than as valid JSON missing records.
    pub fn send(self, tx: mpsc::Sender<Chunk>) {
        let out = ChannelWriter::new(tx.clone(), LIST_CHUNK);
        match self.write(out) {
            Ok(()) => {}
            Err(_) if tx.is_closed() => tracing::debug!("GET /cookies: the client went away"),
            Err(e) => {
                tracing::warn!("GET /cookies failed mid-reply: {e}");
                let _ = tx.blocking_send(Err(io::Error::other(e)));
            }
        }
    }

    fn write(&self, mut out: ChannelWriter) -> Result<(), BoxError> {
        let table = self.txn.open_table(COOKIES)?;
        let order = self.txn.open_table(BY_CREATED)?;
        out.write_all(LIST_OPEN)?;
        write_rows(
            &table,
            order.range::<(u64, &str)>(..)?,
            usize::MAX,
            &mut out,
        )?;
        out.write_all(b"]}")?;
        if let Some(whole) = out.finish()? {
            self.cache.fill_list(self.ticket, whole);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    use super::*;
    use crate::command::Command;
    use crate::identity::Identity;
    use crate::types::{Request, TypeConfig};

    fn open(dir: &Path) -> StateMachine {
        let identity = Arc::new(Identity::new(1, 0x11, false));
        StateMachine::open(dir, Arc::new(Cache::new(Default::default())), identity).unwrap()
    }

    /// Apply `n` creates of about `pad` bytes each as the entry at `index`.
    async fn create(sm: &mut StateMachine, (index, n, pad): (u64, usize, usize)) {
        let cmds = (0..n)
            .map(|i| {
                let body = format!(
                    r#"{{"cookie":"id-{index}-{i:05}","user_id":1,"pad":"{}"}}"#,
                    "x".repeat(pad)
                );
                // Every fourth record shares a `created`, so ties are ordered by id too.
                Command::create(body.as_bytes(), (i / 4) as u64).unwrap()
            })
            .collect();
        let entry = Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request { cmds }),
        };
        sm.apply(vec![entry]).await.unwrap();
    }

    /// Run the producer as the HTTP layer does (off the runtime) into a channel of
    /// `capacity`, and collect what it sent.
    async fn stream(scan: ListScan, capacity: usize) -> Vec<Chunk> {
        let (tx, mut rx) = mpsc::channel(capacity);
        let producer = tokio::task::spawn_blocking(move || scan.send(tx));
        let mut chunks = Vec::new();
        while let Some(c) = rx.recv().await {
            chunks.push(c);
        }
        producer.await.unwrap();
        chunks
    }

    fn joined(chunks: &[Chunk]) -> Vec<u8> {
        chunks
            .iter()
            .flat_map(|c| c.as_ref().unwrap().iter().copied())
            .collect()
    }

    fn whole_page(r: &StoreReader) -> Bytes {
        r.page(usize::MAX, None).unwrap().unwrap().0
    }

    #[tokio::test]
    async fn streamed_list_is_the_unbounded_page_and_only_a_small_one_is_cached() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let r = sm.reader();
        // (entry, records it adds, chunks expected): none, one, then ~1.2 MB in several chunks.
        for (index, n, chunks) in [(1, 0, 1), (2, 1, 1), (3, 1_200, 5)] {
            create(&mut sm, (index, n, 1_000)).await;
            assert_eq!(r.cached_list(), None, "an apply drops the cached list");
            let scan = r.list_scan().unwrap();
            assert_eq!(scan.applied_index(), index);
            let sent = stream(scan, 2).await;
            assert_eq!(joined(&sent), whole_page(&r), "after entry {index}");
            assert_eq!(sent.len(), chunks, "after entry {index}");
            for c in &sent {
                assert!(c.as_ref().unwrap().len() < LIST_CHUNK + 1_100);
            }
            let cached = r.cached_list();
            if chunks == 1 {
                assert_eq!(cached, Some(whole_page(&r)), "one chunk is cached whole");
            } else {
                assert_eq!(cached, None, "a list of many chunks is never cached");
            }
        }
        assert_eq!(
            &whole_page(&r)[..],
            &joined(&stream(r.list_scan().unwrap(), 1).await)
        );
        let all: serde_json::Value = serde_json::from_slice(&whole_page(&r)).unwrap();
        assert_eq!(all["cookies"].as_array().unwrap().len(), 1_201);
    }

    #[tokio::test]
    async fn a_list_is_the_state_its_scan_began_on_and_is_not_cached_after_an_apply() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let r = sm.reader();
        create(&mut sm, (1, 3, 10)).await;
        let before = whole_page(&r);
        let scan = r.list_scan().unwrap();
        create(&mut sm, (2, 1, 10)).await;
        assert_eq!(&joined(&stream(scan, 4).await), &before);
        assert_eq!(
            r.cached_list(),
            None,
            "read before the apply: stale, not cached"
        );
        assert_ne!(whole_page(&r), before);
    }

    #[tokio::test]
    async fn a_dropped_receiver_stops_the_producer() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let r = sm.reader();
        create(&mut sm, (1, 2_000, 1_000)).await; // ~2 MB: eight chunks
        let (tx, mut rx) = mpsc::channel(1);
        let scan = r.list_scan().unwrap();
        let producer = tokio::task::spawn_blocking(move || scan.send(tx));
        assert!(rx.recv().await.unwrap().is_ok());
        drop(rx);
        // It would block on a full channel for ever if a closed one did not stop it.
        tokio::time::timeout(std::time::Duration::from_secs(10), producer)
            .await
            .expect("the producer stopped")
            .unwrap();
        assert_eq!(r.cached_list(), None);
    }

    #[tokio::test]
    async fn an_error_mid_list_ends_the_stream_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let r = sm.reader();
        create(&mut sm, (1, 600, 1_000)).await;
        // An index row naming no record, last in the order (the oldest `created`).
        let txn = r.db().begin_write().unwrap();
        txn.open_table(BY_CREATED)
            .unwrap()
            .insert((order_key(-1), "ghost"), ())
            .unwrap();
        txn.commit().unwrap();
        let sent = stream(r.list_scan().unwrap(), 2).await;
        let (last, body) = sent.split_last().unwrap();
        assert!(body.len() >= 2, "the error comes after chunks were sent");
        assert!(body.iter().all(Result::is_ok));
        assert!(last
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("missing record"));
        assert_eq!(r.cached_list(), None);
    }
}
