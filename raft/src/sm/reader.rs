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
use redb::Database;
use tokio::sync::mpsc;

use super::cursor::Cursor;
use super::overlay::{decode_record, Index, Merge, Short, View};
use super::state::{SnapshotCounts, StateMachine};
use super::tables::order_key;
use crate::cache::{Cache, CachedRecord, Ticket};
use crate::chunks::{ChannelWriter, Chunk};
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
    overlay: super::overlay::Overlay,
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
            overlay: self.overlay.clone(),
            cache: self.cache.clone(),
            applied: self.applied.clone(),
            snapshots: self.snapshots.clone(),
        }
    }
}

/// Write the records `order` names (the list order), at most `limit` of them,
/// comma-separated into `out`. Returns the last id written when more may follow.
/// A page of `GET /cookies?limit=` ends once its records take this many bytes, whatever
/// its `limit` (it always holds one): a page is built whole in memory, and 10,000 records
/// of up to a MiB each made a single request worth 10 GB (16 such pages took a node's RSS
/// from 164 MB to 3.4 GB, in review). `next_after` says where to go on, as at the limit.
pub const PAGE_BYTES: usize = 4 << 20;

/// The records `order` names, comma-separated, until `limit` of them or `budget` bytes
/// (checked before each record after the first); the last one's place if more may follow.
fn write_rows(
    view: &View,
    order: Merge<'_>,
    (limit, budget): (usize, usize),
    out: &mut impl Write,
) -> Result<Option<Cursor>, BoxError> {
    let mut last = None;
    let mut written = 0;
    for (count, key) in order.enumerate() {
        let (order, id) = key?;
        if count == limit || (count > 0 && written >= budget) {
            return Ok(last);
        }
        let rec = view.get(None, &id)?.ok_or("index names a missing record")?;
        if count > 0 {
            out.write_all(b",")?;
        }
        out.write_all(&rec.json)?;
        written += rec.json.len() + 1;
        last = Some(Cursor { order, id });
    }
    Ok(None)
}

/// One page of the list ([`StoreReader::page`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The reply's body.
    pub body: Bytes,
    /// When more may follow, the place to go on from, which the body names too
    /// (`next_after`, its record's id, and `next_cursor`, its token).
    pub next: Option<Cursor>,
    /// The applied index of the state the page was read from: the reply's
    /// `X-Raft-Applied-Index`, which must not name a write the page may lack.
    pub applied: u64,
}

/// Where a page of the list starts.
#[derive(Debug, Clone, Copy)]
pub enum PageStart<'a> {
    /// At the list's first record.
    First,
    /// After the record of this id, which must exist (`?after=`).
    After(&'a str),
    /// After a place a page named, whatever became of its record since (`?cursor=`).
    At(&'a Cursor),
}

impl StoreReader {
    /// The state machine's current database, with everything applied so far written to it,
    /// for a backup's read transaction (`backup.rs`).
    pub(super) fn flushed_db(&self) -> Result<Arc<Database>, BoxError> {
        self.overlay.flush_all(Short::Fail)?;
        Ok(self.db.get())
    }

    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// Snapshots installed from a leader and built locally since the process started.
    pub fn snapshot_counts(&self) -> &SnapshotCounts {
        &self.snapshots
    }

    /// Disk this state machine will take that its filesystem does not show yet: the writes
    /// of its unflushed layers to `sm.redb` (`flush_room::needed`: twice their rows' bytes
    /// and a page for each row, copy on write) and its next snapshot build (about the size of
    /// the last one, written before that one is removed). A node that refuses work for room
    /// counts these, or the layers' next flush fills the disk it thought had room (up to
    /// 4 x 16 MiB of them wait in memory), or waits for room that never comes.
    pub fn disk_due(&self) -> u64 {
        self.overlay
            .unflushed_disk_due()
            .saturating_add(self.snapshots.state_bytes.load(Ordering::Relaxed))
    }

    /// What the thread that writes applied changes to `sm.redb` has done.
    pub fn flush_stats(&self) -> super::overlay::FlushStats {
        self.overlay.stats()
    }

    /// Holds why, once a write of applied changes to `sm.redb` has failed: from then on the
    /// node cannot make its state durable and must stop.
    pub fn write_failed(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.overlay.failed()
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
        let Some(rec) = decode_record(self.db.record(id)?)? else {
            return Ok((None, CacheStatus::Miss));
        };
        let cached = CachedRecord {
            json: Bytes::from(rec.json),
            version: rec.version,
        };
        self.cache.fill(id, ticket, cached.clone());
        Ok((Some(cached), CacheStatus::Miss))
    }

    /// The stored size of each of `ids`' records in the applied state (0 for one not
    /// stored), read without copying them or touching the cache.
    pub fn record_sizes(&self, ids: &[&str]) -> Result<Vec<usize>, BoxError> {
        self.db.record_sizes(ids)
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
        let view = self.db.view()?;
        let applied = view.applied_index()?;
        Ok(ListScan {
            view,
            applied,
            ticket,
            cache: self.cache.clone(),
        })
    }

    /// One page of the list order (newest `created` first, ties by id): at most `limit`
    /// records from `start`, read from one state (a `Page`); `None` when `start` is after a
    /// record that does not exist. Costs a range scan of the index, not a sort of the whole
    /// store.
    pub fn page(&self, limit: usize, start: PageStart<'_>) -> Result<Option<Page>, BoxError> {
        let view = self.db.view()?;
        let applied = view.applied_index()?;
        let start = match start {
            PageStart::First => Bound::Unbounded,
            PageStart::After(a) => match view.get(None, a)? {
                Some(rec) => Bound::Excluded((order_key(rec.created), a.to_owned())),
                None => return Ok(None),
            },
            PageStart::At(c) => Bound::Excluded((c.order, c.id.clone())),
        };
        let order = view.range(None, Index::Created, (start, Bound::Unbounded))?;
        let mut body = LIST_OPEN.to_vec();
        let next = write_rows(&view, order, (limit, PAGE_BYTES), &mut body)?;
        body.extend_from_slice(b"]");
        if let Some(n) = &next {
            body.extend_from_slice(b",\"next_after\":");
            body.extend_from_slice(serde_json::to_string(n.id())?.as_bytes());
            // The token is base64url: nothing in it needs escaping in a JSON string.
            body.extend_from_slice(b",\"next_cursor\":\"");
            body.extend_from_slice(n.encode().as_bytes());
            body.push(b'"');
        }
        body.push(b'}');
        Ok(Some(Page {
            body: Bytes::from(body),
            next,
            applied,
        }))
    }

    /// Number of stored records.
    pub fn count(&self) -> Result<u64, BoxError> {
        self.db.count()
    }

    /// Number of idempotency keys the applied state holds (until their expiry is applied).
    pub fn key_count(&self) -> Result<u64, BoxError> {
        self.db.key_count()
    }

    /// Whether the applied state holds the answer to a write under idempotency key `key`
    /// that is still retained at log time `now_ms`. A key past its retention but not yet
    /// swept out is not: a write under it is applied as new (found in review: a disk short of
    /// its reserve let such creates through as "replays").
    pub fn key_recorded(&self, key: &str, now_ms: u64) -> Result<bool, BoxError> {
        let Some(row) = self.db.view()?.key(None, key)? else {
            return Ok(false);
        };
        let rec: crate::command::KeyRecord = crate::codec::decode(&row)?;
        Ok(rec.expires_ms > now_ms)
    }

    /// Whether the applied state holds an idempotency key whose retention ended at or before
    /// log time `now_ms`: one a [`crate::Command::Expire`] would forget.
    pub fn keys_due(&self, now_ms: u64) -> Result<bool, BoxError> {
        let view = self.db.view()?;
        let mut due = view.due_keys(None, now_ms)?;
        Ok(due.next().transpose()?.is_some())
    }
}

/// The whole list, read from one redb read transaction: see [`StoreReader::list_scan`].
pub struct ListScan {
    /// The state it reads, kept whole until the scan ends even if applies or an install
    /// change the node's state meanwhile.
    view: View,
    applied: u64,
    ticket: Ticket,
    cache: Arc<Cache>,
}

impl ListScan {
    /// The index of the last entry applied to the state this list is read from.
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// Send the list body into `tx` in chunks of about `LIST_CHUNK` bytes, blocking while
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
        let all = (Bound::Unbounded, Bound::Unbounded);
        out.write_all(LIST_OPEN)?;
        write_rows(
            &self.view,
            self.view.range(None, Index::Created, all)?,
            (usize::MAX, usize::MAX),
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

    /// `disk_due` counts what the writes of the changes not yet in `sm.redb` may take, and the next
    /// snapshot build; the layers' part goes once they are written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disk_due_counts_changes_not_yet_written_and_the_next_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let r = sm.reader();
        assert_eq!(r.disk_due(), 0);
        // 200 records: under every flush threshold but age (1 s), and this takes less.
        create(&mut sm, (1, 200, 100)).await;
        let unflushed = sm.overlay.unflushed_disk_due();
        // Each row is its id (`id-1-00000`), its stored JSON and 64 bytes of overhead, twice.
        assert!(unflushed >= 2 * 200 * (10 + 64), "{unflushed}");
        assert_eq!(r.disk_due(), unflushed);
        r.snapshot_counts()
            .state_bytes
            .store(5000, Ordering::Relaxed);
        assert_eq!(r.disk_due(), unflushed + 5000);
        sm.overlay.flush_all(Short::Wait).unwrap();
        assert_eq!(r.disk_due(), 5000);
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
        apply(sm, index, cmds).await;
    }

    async fn apply(sm: &mut StateMachine, index: u64, cmds: Vec<Command>) {
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

    /// Every record, as the streamed list writes them (a page has a byte budget).
    fn whole_page(r: &StoreReader) -> Bytes {
        let view = r.db.view().unwrap();
        let all = (Bound::Unbounded, Bound::Unbounded);
        let order = view.range(None, Index::Created, all).unwrap();
        let mut body = LIST_OPEN.to_vec();
        write_rows(&view, order, (usize::MAX, usize::MAX), &mut body).unwrap();
        body.extend_from_slice(b"]}");
        Bytes::from(body)
    }

    /// A page stops at `PAGE_BYTES` whatever its limit, with `next_after` where to go on,
    /// and the pages walked that way hold every record once, in the list's order.
    #[tokio::test]
    async fn a_page_ends_at_its_byte_budget_and_the_walk_misses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let r = sm.reader();
        create(&mut sm, (1, 12, 700_000)).await;
        let (mut walked, mut after, mut pages) = (Vec::new(), None::<String>, 0);
        loop {
            let start = after.as_deref().map_or(PageStart::First, PageStart::After);
            let Page { body, next, .. } = r.page(10_000, start).unwrap().unwrap();
            assert!(
                body.len() < PAGE_BYTES + 700_100,
                "a page of {} bytes",
                body.len()
            );
            let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let ids = page["cookies"].as_array().unwrap().iter();
            walked.extend(ids.map(|c| c["cookie"].as_str().unwrap().to_owned()));
            pages += 1;
            assert_eq!(
                page.get("next_after").and_then(|v| v.as_str()),
                next.as_ref().map(Cursor::id)
            );
            match next {
                Some(n) => after = Some(n.id().to_owned()),
                None => break,
            }
        }
        assert!(pages >= 2, "{pages} pages");
        assert_eq!(walked, listed_ids(&whole_page(&r)));
    }

    fn listed_ids(body: &[u8]) -> Vec<String> {
        let all: serde_json::Value = serde_json::from_slice(body).unwrap();
        all["cookies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["cookie"].as_str().unwrap().to_owned())
            .collect()
    }

    /// A walk by `next_cursor` goes on past a record that was deleted, or moved by an update
    /// of its `created`, after its page named it: it holds every record that stayed where it
    /// was, in order, once. `after=` that record's id stops the walk or sends it back.
    #[tokio::test]
    async fn a_cursor_walk_goes_on_past_a_deleted_or_moved_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let r = sm.reader();
        create(&mut sm, (1, 40, 10)).await;
        let before = listed_ids(&whole_page(&r));
        let (mut walked, mut cursor, mut index) = (Vec::new(), None::<Cursor>, 1);
        let mut gone = Vec::new();
        loop {
            let start = cursor.as_ref().map_or(PageStart::First, PageStart::At);
            let Page { body, next, .. } = r.page(7, start).unwrap().unwrap();
            let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
            walked.extend(listed_ids(&body));
            let Some(next) = next else {
                assert!(page.get("next_cursor").is_none(), "{page}");
                break;
            };
            let token = page["next_cursor"].as_str().unwrap();
            assert_eq!(Cursor::decode(token).as_ref(), Some(&next));
            // Each page's last record goes: deleted, or moved to the list's front, which the
            // walk has passed.
            index += 1;
            let cmd = if index % 2 == 0 {
                Command::delete(next.id().to_owned(), None)
            } else {
                Command::update(next.id().to_owned(), br#"{"created":"100"}"#, 9, None).unwrap()
            };
            apply(&mut sm, index, vec![cmd]).await;
            // By id, a walk stops at a deleted record, and goes back over a moved one's page.
            match r.page(7, PageStart::After(next.id())).unwrap() {
                None => assert_eq!(index % 2, 0),
                Some(page) => assert!(walked.contains(&listed_ids(&page.body)[0])),
            }
            gone.push(next.id().to_owned());
            cursor = Some(next);
        }
        assert_eq!(walked, before, "every record once, in order");
        assert!(gone.len() >= 5, "{gone:?}");
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
        create(&mut sm, (1, 600, 1_000)).await;
        // An index row naming no record, last in the order (the oldest `created`), written
        // behind the state machine's back; reopened, it reads it.
        let txn = sm.reader().flushed_db().unwrap().begin_write().unwrap();
        txn.open_table(super::super::tables::BY_CREATED)
            .unwrap()
            .insert((order_key(-1), "ghost"), ())
            .unwrap();
        txn.commit().unwrap();
        drop(sm);
        let r = open(dir.path()).reader();
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

    /// Records applied are visible at once and stay visible while their layer is frozen,
    /// written to sm.redb and dropped: a reader racing the flushes never sees one vanish,
    /// nor the count go back. And a restart reads them all from the file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_stay_visible_through_flushes_and_a_restart() {
        use std::sync::atomic::AtomicBool;
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let r = sm.reader();
        let done = Arc::new(AtomicBool::new(false));
        let applied = Arc::new(AtomicU64::new(0));
        let checker = {
            let (r, done, applied) = (r.clone(), done.clone(), applied.clone());
            std::thread::spawn(move || {
                let (mut checks, mut last_count) = (0u64, 0);
                while !done.load(Ordering::SeqCst) {
                    // Every entry up to `upto` was applied before this read began.
                    let upto = applied.load(Ordering::SeqCst);
                    let count = r.count().unwrap();
                    assert!(count >= last_count, "the count went back");
                    assert!(
                        count >= upto * 500,
                        "applied records missing from the count"
                    );
                    last_count = count;
                    let probes = if upto == 0 {
                        vec![]
                    } else {
                        vec![1, upto / 2 + 1, upto]
                    };
                    for index in probes {
                        let id = format!("id-{index}-00499");
                        assert!(r.get(&id).unwrap().0.is_some(), "{id} vanished");
                        r.cache().invalidate([id.as_str()], false);
                    }
                    checks += 1;
                }
                checks
            })
        };
        // 40 entries of 500 records: several flushes (FLUSH_ROWS) while the checker reads.
        for index in 1..=40 {
            create(&mut sm, (index, 500, 10)).await;
            applied.store(index, Ordering::SeqCst);
        }
        done.store(true, Ordering::SeqCst);
        assert!(checker.join().unwrap() > 0);
        assert_eq!(r.count().unwrap(), 20_000);
        let listed = String::from_utf8(whole_page(&r).to_vec()).unwrap();
        assert_eq!(listed.matches("\"cookie\"").count(), 20_000);
        drop((sm, r));
        let r = open(dir.path()).reader();
        assert_eq!(r.count().unwrap(), 20_000);
        assert!(r.get("id-40-00499").unwrap().0.is_some());
    }

    /// An update that keeps `created` stores over the record and leaves its entry in the
    /// list's index as it is (`Tables::replace`); one that sends another `created` moves it,
    /// and a rename moves it to the new id. Either way the list holds each record once, in
    /// order, with what it holds now, and the count stays: from the layers, from `sm.redb`
    /// once they are written (a first flush wrote the creates, so the index entries that stand
    /// are the file's), and after a restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_list_follows_updates_in_place_moves_and_renames() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let r = sm.reader();
        let new = |id: &str, created: u64| {
            Command::create(
                format!(r#"{{"cookie":"{id}","user_id":1}}"#).as_bytes(),
                created,
            )
            .unwrap()
        };
        let upd =
            |id: &str, body: &str| Command::update(id.into(), body.as_bytes(), 99, None).unwrap();
        let listed = |r: &StoreReader| -> Vec<(String, i64)> {
            let page: serde_json::Value = serde_json::from_slice(&whole_page(r)).unwrap();
            page["cookies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c["cookie"].as_str().unwrap().to_owned(),
                        c["x"].as_i64().unwrap_or(0),
                    )
                })
                .collect()
        };
        let entries = [
            vec![new("a", 10), new("b", 20), new("c", 30), new("d", 40)],
            vec![
                upd("b", r#"{"x":1}"#),
                upd("a", r#"{"created":"50","x":1}"#),
            ],
            vec![upd("b", r#"{"x":2}"#), upd("d", r#"{"cookie":"e","x":3}"#)],
            vec![upd("c", r#"{"created":"30","x":4}"#)],
        ];
        let want = [("a", 1), ("e", 3), ("c", 4), ("b", 2)]
            .map(|(id, x)| (id.to_owned(), x))
            .to_vec();
        for (i, cmds) in entries.into_iter().enumerate() {
            let entry = Entry::<TypeConfig> {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), i as u64 + 1),
                payload: EntryPayload::Normal(Request { cmds }),
            };
            sm.apply(vec![entry]).await.unwrap();
            if i == 0 {
                sm.overlay.flush_all(Short::Wait).unwrap();
            }
        }
        assert_eq!(listed(&r), want, "from the layers");
        assert_eq!(r.count().unwrap(), 4);
        sm.overlay.flush_all(Short::Wait).unwrap();
        assert_eq!(listed(&r), want, "from sm.redb");
        drop((sm, r));
        let r = open(dir.path()).reader();
        assert_eq!(listed(&r), want, "after a restart");
        assert_eq!(r.count().unwrap(), 4);
    }

    /// The record count through every kind of change, in one entry and across entries,
    /// from the layers and after a restart from the file: `Tables::put` counts a record
    /// without looking its id up, so this is what says every command puts only where no
    /// record is (an update removes first; a rename onto a stored id is refused).
    #[tokio::test]
    async fn the_count_follows_creates_updates_renames_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let r = sm.reader();
        let new =
            |id: &str| Command::create(format!(r#"{{"cookie":"{id}","user_id":1}}"#).as_bytes(), 1);
        let upd = |id: &str, body: &str| Command::update(id.into(), body.as_bytes(), 2, None);
        let steps: Vec<(Vec<Command>, u64)> = vec![
            (
                vec![new("a").unwrap(), new("b").unwrap(), new("a").unwrap()],
                2,
            ),
            (
                vec![
                    upd("a", r#"{"x":1}"#).unwrap(),
                    upd("a", r#"{"x":2}"#).unwrap(),
                ],
                2,
            ),
            (vec![upd("b", r#"{"cookie":"c"}"#).unwrap()], 2),
            (
                vec![upd("c", r#"{"cookie":"a"}"#).unwrap(), new("b").unwrap()],
                3,
            ),
            (
                vec![
                    Command::delete("a".into(), None),
                    Command::delete("a".into(), None),
                ],
                2,
            ),
            (
                vec![upd("c", r#"{"cookie":"a"}"#).unwrap(), new("c").unwrap()],
                3,
            ),
        ];
        for (i, (cmds, count)) in steps.into_iter().enumerate() {
            let index = i as u64 + 1;
            let entry = Entry::<TypeConfig> {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Normal(Request { cmds }),
            };
            sm.apply(vec![entry]).await.unwrap();
            assert_eq!(r.count().unwrap(), count, "after entry {index}");
        }
        let ids = |r: &StoreReader| ["a", "b", "c"].map(|id| r.get(id).unwrap().0.is_some());
        assert_eq!(ids(&r), [true, true, true]);
        drop((sm, r));
        let r = open(dir.path()).reader();
        assert_eq!(r.count().unwrap(), 3);
        assert_eq!(ids(&r), [true, true, true]);
    }
}
