//! The Raft log: entries in the write-ahead log ([`wal`], `dir/wal/` or the configured WAL
//! directory, [`place`]), the vote and the purge and committed markers in `dir/log.redb`.
//!
//! # Durability
//! - An append is written at once (so it is readable when `append` returns, as openraft
//!   requires) and made durable by the flusher thread, which fsyncs once for every append
//!   waiting and only then calls their callbacks: nothing is acknowledged to openraft, and so
//!   to a leader or a client, before it is on disk. Returning before the fsync lets the
//!   leader send the entries to its followers while its own fsync runs (openraft 0.9's core
//!   waited for the callback all the same until `vendor/openraft` was patched,
//!   `Config::parallel_leader_append`).
//! - Truncation, purge and vote are durable before they return: the vote and the purge marker
//!   in a redb transaction with `Durability::Immediate`, truncation by the WAL's own fsync.
//!   The purge marker is committed before any segment is deleted; the deletion itself runs
//!   on the blocking pool after `purge` returns (openraft's core waits for `purge`, and the
//!   files took tens of milliseconds to go), and a segment left by a crash is skipped at open
//!   and removed by the next purge.
//! - The committed marker is a hint. [`LogStore::save_committed`] keeps it in memory and the
//!   next redb transaction writes it, so a commit costs no fsync of its own. After a crash the
//!   marker may be older than the real commit index. That is safe for applying (openraft
//!   re-learns the commit index from the leader), and the one reader that needed it exact, a
//!   leader restored in place at startup, gets its floor from
//!   [`LogStore::restored_leader_floor`] instead. It may also be newer than the log: a
//!   commit index can arrive while the node's own fsync of those entries runs, and a crash
//!   then takes them; a marker past the log's end is dropped at open.

use std::fmt::Debug;
use std::fs::File;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, StorageIOError, Vote};
use redb::{Database, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::types::{NodeId, TypeConfig};
use crate::{BoxError, StResult};
use tail::Tail;
use wal::Wal;

mod ahead;
pub mod place;
pub mod relocate;
mod tail;
pub mod wal;

pub use place::Dirs;

/// Where earlier versions kept the entries; moved into the WAL at open.
const LEGACY_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const KEY_VOTE: &str = "vote";
const KEY_PURGED: &str = "last_purged";
const KEY_COMMITTED: &str = "committed";
/// This data's incarnation ([`crate::identity`]): written once, when `log.redb` is created
/// (or first opened by a version with identities), never changed.
const KEY_INCARNATION: &str = "incarnation";
/// Set once the WAL directory holds this log's marker ([`place`]): from then on a WAL
/// directory without it is a missing WAL, not a new one.
const KEY_WAL_MARKED: &str = "wal_marked";

/// The Raft log. Cloning shares it (the clone is the log reader).
#[derive(Clone)]
pub struct LogStore {
    meta: Arc<Database>,
    wal: Arc<Mutex<Wal>>,
    /// The WAL's newest entries, decoded ([`tail`]). Changed only under the WAL's lock, and
    /// locked after it.
    tail: Arc<Mutex<Tail>>,
    flusher: mpsc::Sender<Flush>,
    /// The latest committed marker given, and whether redb has it yet.
    committed: Arc<Mutex<Committed>>,
    /// A removal of purged segments that failed, for the next purge to report.
    purge_failed: Arc<Mutex<Option<std::io::Error>>>,
    /// This data's incarnation, and whether it had no vote and no entries at open.
    incarnation: u64,
    pristine: bool,
}

#[derive(Default)]
struct Committed {
    latest: Option<Option<LogId<NodeId>>>,
    unwritten: bool,
}

/// How many bytes of log a snapshot would let this node give back ([`LogStore::size`]).
#[derive(Clone)]
pub struct LogSize {
    wal: Arc<Mutex<Wal>>,
}

impl LogSize {
    /// The bytes the log holds after `index` (see [`Wal::bytes_after`]).
    pub fn bytes_after(&self, index: u64) -> u64 {
        self.wal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bytes_after(index)
    }
}

/// An append waiting for its fsync.
struct Flush {
    file: Option<Arc<File>>,
    done: LogFlushed<TypeConfig>,
    /// When openraft asked for the append ([`crate::stages::LOG_APPEND`]).
    started: std::time::Instant,
}

/// A leader restored in place at startup, and the read index it must not go below.
///
/// openraft 0.9 restarts a node whose stored vote makes it the committed leader as leader of
/// the same term (where `Config::parallel_leader_append` is off; with it on, the patched
/// engine has it campaign for a new term instead, and this floor is never reached), without
/// a new entry, and names as read index the larger of its first entry
/// of the term and its commit index. That commit index comes from the committed marker, which
/// may be stale after a crash ([`LogStore`]), so a write acknowledged just before the crash
/// could be missed. Every acknowledged entry is in this leader's log, though: its last index
/// at startup bounds them all. Reads in `term` wait until that index is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadFloor {
    pub term: u64,
    pub index: u64,
}

fn other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// A log fsync this long is logged at debug level: long enough to show in a write's p99.9
/// on a local disk, so that a stall in the requests can be matched to it
/// (`benches/stalls.py`).
const SLOW_FSYNC: std::time::Duration = std::time::Duration::from_millis(2);
/// A log fsync this long is a warning: every write on this node waited that long (etcd
/// warns of a slow `fdatasync` at a second too).
const VERY_SLOW_FSYNC: std::time::Duration = std::time::Duration::from_secs(1);

/// How a log fsync that took `took` is logged: not at all, at debug level, or as a warning.
fn fsync_level(took: std::time::Duration) -> Option<tracing::Level> {
    if took >= VERY_SLOW_FSYNC {
        Some(tracing::Level::WARN)
    } else if took >= SLOW_FSYNC {
        Some(tracing::Level::DEBUG)
    } else {
        None
    }
}

fn slow_fsync(took: std::time::Duration, appends: usize) {
    let ms = took.as_millis() as u64;
    match fsync_level(took) {
        Some(tracing::Level::WARN) => tracing::warn!(
            ms,
            appends,
            "the log's fsync was slow: writes on this node waited for the disk"
        ),
        Some(_) => tracing::debug!(ms, appends, "slow log fsync"),
        None => {}
    }
}

/// Group fsync: one `fdatasync` for every append queued meanwhile, then their callbacks, in
/// order. Appends are written in order and a segment is synced before the next one starts,
/// so syncing the newest file covers them all.
fn run_flusher(rx: mpsc::Receiver<Flush>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let file = batch.iter().rev().find_map(|f| f.file.clone());
        let res = file.map_or(Ok(()), |f| {
            let synced = std::time::Instant::now();
            let res = f.sync_data();
            // One measure for the histogram and the slow-fsync line, so that they agree.
            let took = synced.elapsed();
            crate::stages::WAL_FSYNC.observe(took.as_secs_f64());
            slow_fsync(took, batch.len());
            res
        });
        for f in batch {
            crate::stages::since(&crate::stages::LOG_APPEND, f.started);
            f.done.log_io_completed(match &res {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            });
        }
    }
}

impl LogStore {
    /// Open or create the log in `dir`, moving entries an earlier version kept in
    /// `log.redb` into the WAL; `log.redb` with the default page cache ([`crate::DbCache`]).
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        Self::open_with(
            &Dirs::new(dir),
            crate::DbCache::default().log,
            wal::SEGMENT_BYTES,
        )
    }

    /// [`LogStore::open`] of the log in `dirs.data` with its WAL in `dirs.wal` (checked to
    /// be this log's, [`place`]), `cache_bytes` of memory for the log's newest entries, kept
    /// decoded for replication and the apply (their estimated size), and as the page cache
    /// of `log.redb` (which holds the vote and the markers: a few pages); WAL segments of
    /// `segment_bytes` (see [`Wal::open_with`]).
    pub fn open_with(dirs: &Dirs, cache_bytes: usize, segment_bytes: u64) -> std::io::Result<Self> {
        let db = open_meta(&dirs.data, cache_bytes)?;
        let incarnation = incarnation(&db).map_err(other)?;
        let marked = read_meta::<bool>(&db, KEY_WAL_MARKED)
            .map_err(other)?
            .unwrap_or(false);
        if place::check(dirs, incarnation, marked)? {
            place::write_marker(&dirs.wal, incarnation)?;
        }
        if !marked {
            write_meta_now(&db, KEY_WAL_MARKED, &true).map_err(other)?;
        }
        let purged = read_meta::<LogId<NodeId>>(&db, KEY_PURGED).map_err(other)?;
        let mut wal = Wal::open_with(&dirs.wal, purged.map(|p| p.index), segment_bytes)?;
        migrate_legacy_log(&db, &mut wal).map_err(other)?;
        let voted = read_meta::<Vote<NodeId>>(&db, KEY_VOTE)
            .map_err(other)?
            .is_some();
        let pristine = !voted && purged.is_none() && wal.bounds().is_none();
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("wal-flush".into())
            .spawn(move || run_flusher(rx))?;
        Ok(LogStore {
            meta: Arc::new(db),
            wal: Arc::new(Mutex::new(wal)),
            tail: Arc::new(Mutex::new(Tail::new(cache_bytes))),
            flusher: tx,
            committed: Arc::default(),
            purge_failed: Arc::default(),
            incarnation,
            pristine,
        })
    }

    /// A handle on the log's size, for the snapshot policy (which runs beside openraft,
    /// after this store has been handed to it).
    pub fn size(&self) -> LogSize {
        LogSize {
            wal: self.wal.clone(),
        }
    }

    /// The incarnation of the data in `dir`, read from its `log.redb` without opening the
    /// WAL: `dump --applied-only` reads a state machine beside a damaged log.
    pub fn stored_incarnation(dir: &Path) -> std::io::Result<u64> {
        let db = open_meta(dir, crate::DbCache::default().log)?;
        incarnation(&db).map_err(other)
    }

    /// This data's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Whether the log had no vote and no entries when it was opened: this data has never
    /// taken part in Raft.
    pub fn was_pristine(&self) -> bool {
        self.pristine
    }

    /// If the stored vote makes `me` the committed leader (openraft then restores it as
    /// leader at once), its term and its last log index at startup: see [`ReadFloor`].
    pub async fn restored_leader_floor(&mut self, me: NodeId) -> StResult<Option<ReadFloor>> {
        let Some(vote) = self.read_vote().await? else {
            return Ok(None);
        };
        if !vote.is_committed() || vote.leader_id().voted_for() != Some(me) {
            return Ok(None);
        }
        let last = self.get_log_state().await?.last_log_id;
        Ok(Some(ReadFloor {
            term: vote.leader_id().term,
            index: last.map_or(0, |l| l.index),
        }))
    }

    fn wal(&self) -> std::sync::MutexGuard<'_, Wal> {
        self.wal.lock().expect("not poisoned")
    }

    /// Run a redb write transaction on the blocking pool and commit it durably (redb's
    /// default `Durability::Immediate`: fsync before `commit` returns).
    async fn write_meta_txn<F>(&self, f: F) -> Result<(), BoxError>
    where
        F: FnOnce(&redb::WriteTransaction) -> Result<(), BoxError> + Send + 'static,
    {
        let db = self.meta.clone();
        // The committed marker rides along with whatever is written next (encoded here, not
        // on every commit).
        let committed = {
            let mut c = self.committed.lock().expect("not poisoned");
            let unwritten = std::mem::take(&mut c.unwritten);
            match c.latest {
                Some(latest) if unwritten => Some(codec::encode(&latest)?),
                _ => None,
            }
        };
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write()?;
            if let Some(bytes) = committed {
                txn.open_table(META)?
                    .insert(KEY_COMMITTED, bytes.as_slice())?;
            }
            f(&txn)?;
            txn.commit()?;
            Ok(())
        })
        .await?
    }

    async fn write_meta<T: Serialize>(&self, key: &'static str, value: &T) -> StResult<()> {
        let bytes = codec::encode(value).map_err(|e| StorageIOError::write(&e))?;
        self.write_meta_txn(move |txn| {
            txn.open_table(META)?.insert(key, bytes.as_slice())?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write(&crate::io_err(e)).into())
    }

    /// The entries `from..to`: those the tail holds from it, the rest read from the WAL and
    /// decoded.
    fn entries(&self, from: u64, to: u64) -> Result<Vec<Entry<TypeConfig>>, BoxError> {
        let (payloads, held) = {
            let wal = self.wal();
            let held = lock(&self.tail).get(from, to);
            let wal_to = held.as_ref().map_or(to, |(start, _)| *start);
            let payloads = if from < wal_to {
                wal.read(from, wal_to)?
            } else {
                Vec::new()
            };
            (payloads, held)
        };
        let mut out = payloads
            .iter()
            .map(|p| codec::decode(p).map_err(Into::into))
            .collect::<Result<Vec<Entry<TypeConfig>>, BoxError>>()?;
        match held {
            Some((_, entries)) => {
                crate::stages::LOG_READS.with_label_values(&["tail"]).inc();
                out.extend(entries);
            }
            None => crate::stages::LOG_READS.with_label_values(&["wal"]).inc(),
        }
        Ok(out)
    }
}

fn lock(tail: &Mutex<Tail>) -> std::sync::MutexGuard<'_, Tail> {
    tail.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_meta<T: DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>, BoxError> {
    codec::read_key(db, META, key)
}

/// The stored incarnation, or a new one written durably.
fn incarnation(db: &Database) -> Result<u64, BoxError> {
    if let Some(v) = read_meta::<u64>(db, KEY_INCARNATION)? {
        return Ok(v);
    }
    let v = crate::identity::random_id()?;
    write_meta_now(db, KEY_INCARNATION, &v)?;
    Ok(v)
}

/// `log.redb` in `dir`, created (its name made durable) if missing, with its table.
fn open_meta(dir: &Path, cache_bytes: usize) -> std::io::Result<Database> {
    let path = dir.join("log.redb");
    let db = crate::open_or_create_db(&path, cache_bytes).map_err(other)?;
    let txn = db.begin_write().map_err(other)?;
    txn.open_table(META).map_err(other)?;
    txn.commit().map_err(other)?;
    Ok(db)
}

/// Write `value` under `key` in a durable transaction of its own (outside a running store).
fn write_meta_now<T: Serialize>(db: &Database, key: &str, value: &T) -> Result<(), BoxError> {
    let txn = db.begin_write()?;
    txn.open_table(META)?
        .insert(key, codec::encode(value)?.as_slice())?;
    txn.commit()?;
    Ok(())
}

/// A new log in `dir` whose entries up to `purged` are gone, as a restored node's is: its
/// incarnation. It has no WAL yet: the node's first start makes one where its configuration
/// says ([`place`]), so a restore needs no WAL directory.
pub fn create_purged(dir: &Path, purged: LogId<NodeId>) -> Result<u64, BoxError> {
    let db = open_meta(dir, crate::DbCache::default().log)?;
    let incarnation = incarnation(&db)?;
    write_meta_now(&db, KEY_PURGED, &purged)?;
    Ok(incarnation)
}

/// Entries from the `raft_log` table of earlier versions go into the WAL (durably), then the
/// table is dropped. After a crash in between, the WAL holds a prefix and the rest follows.
fn migrate_legacy_log(db: &Database, wal: &mut Wal) -> Result<(), BoxError> {
    let txn = db.begin_write()?;
    let mut moved = 0usize;
    {
        let table = txn.open_table(LEGACY_LOG)?;
        let have = wal.bounds().map(|(_, last)| last);
        let mut batch = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            if have.is_none_or(|last| k.value() > last) {
                batch.push((k.value(), v.value().to_vec()));
            }
        }
        if !batch.is_empty() {
            moved = batch.len();
            wal.append(&batch)?;
            if let Some(f) = wal.sync_handle() {
                f.sync_data()?;
            }
        }
    }
    txn.delete_table(LEGACY_LOG)?;
    txn.commit()?;
    if moved > 0 {
        tracing::info!(
            entries = moved,
            "moved the Raft log from log.redb into the WAL"
        );
    }
    Ok(())
}

fn to_range<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let from = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (from, to)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StResult<Vec<Entry<TypeConfig>>> {
        let (from, to) = to_range(&range);
        self.entries(from, to)
            .map_err(|e| StorageIOError::read_logs(&crate::io_err(e)).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<NodeId>> = read_meta(&self.meta, KEY_PURGED)
            .map_err(|e| StorageIOError::read(&crate::io_err(e)))?;
        let last = self.wal().bounds().map(|(_, last)| last);
        let last_entry = match last {
            Some(i) => self
                .entries(i, i + 1)
                .map_err(|e| StorageIOError::read_logs(&crate::io_err(e)))?
                .pop(),
            None => None,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last_entry.map(|e| e.log_id).or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StResult<()> {
        self.write_meta(KEY_VOTE, vote)
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> StResult<Option<Vote<NodeId>>> {
        read_meta(&self.meta, KEY_VOTE).map_err(|e| StorageIOError::read(&crate::io_err(e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StResult<()> {
        // A hint, written with the next redb transaction (see the module docs). The restored
        // leader's reads that relied on it are covered by `ReadFloor` (regression test:
        // `last_acknowledged_write_is_read_after_the_leader_restarts_first`, tests/cluster.rs).
        let mut c = self.committed.lock().expect("not poisoned");
        c.latest = Some(committed);
        c.unwritten = true;
        Ok(())
    }

    async fn read_committed(&mut self) -> StResult<Option<LogId<NodeId>>> {
        if let Some(latest) = self.committed.lock().expect("not poisoned").latest {
            return Ok(latest);
        }
        let stored = read_meta::<Option<LogId<NodeId>>>(&self.meta, KEY_COMMITTED)
            .map_err(|e| StorageIOError::read(&crate::io_err(e)))?
            .flatten();
        // The marker may name entries this log no longer holds: a node learns a commit
        // index while its own fsync of those entries still runs (`parallel_follower_append`,
        // `parallel_leader_append`), the next redb write makes the marker durable, and a
        // power cut takes the unsynced tail. openraft re-applies up to the marker at
        // startup and, finding no entries there, failed every start. Such a marker is
        // dropped: the state machine's own applied point stands, and the leader's next
        // append brings the commit index back with the entries.
        let held = self.get_log_state().await?.last_log_id.map(|l| l.index);
        match stored {
            Some(c) if held.is_none_or(|h| c.index > h) => {
                tracing::warn!(
                    committed = c.index,
                    log_ends_at = ?held,
                    "the committed marker is past the end of the log (its tail was not \
                     synced before a crash); starting from the applied state instead"
                );
                Ok(None)
            }
            c => Ok(c),
        }
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = std::time::Instant::now();
        let mut records = Vec::new();
        let mut decoded = Vec::new();
        for entry in entries {
            let bytes = codec::encode(&entry).map_err(|e| StorageIOError::write_logs(&e))?;
            let cost = tail::cost(&entry, bytes.len());
            records.push((entry.log_id.index, bytes));
            decoded.push((entry, cost));
        }
        if let (Some(&(first, _)), Some(&(last, _))) = (records.first(), records.last()) {
            crate::stages::appended(first, last, started);
        }
        // A write into the page cache; the fsync happens on the flusher thread.
        let written = {
            let mut wal = self.wal();
            let written = wal.append(&records).map(|()| wal.sync_handle());
            let mut tail = lock(&self.tail);
            match written {
                Ok(_) => tail.push(decoded),
                // The WAL may hold part of them: it alone answers from here.
                Err(_) => tail.clear(),
            }
            written
        };
        match written {
            Ok(file) => {
                let flush = Flush {
                    file,
                    done: callback,
                    started,
                };
                if let Err(mpsc::SendError(f)) = self.flusher.send(flush) {
                    let err = std::io::Error::other("the WAL flusher is gone");
                    f.done
                        .log_io_completed(Err(std::io::Error::other(err.to_string())));
                    return Err(StorageIOError::write_logs(&err).into());
                }
                Ok(())
            }
            Err(e) => {
                // openraft 0.9 waits for this callback; it must be called on every path.
                callback.log_io_completed(Err(std::io::Error::new(e.kind(), e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StResult<()> {
        // Inclusive: removes `log_id.index` and everything after it, durably.
        let (wal, tail) = (self.wal.clone(), self.tail.clone());
        tokio::task::spawn_blocking(move || {
            let mut wal = wal.lock().expect("not poisoned");
            // Whether or not the WAL's truncation completes, the tail holds nothing from the
            // index on: a read of those goes to the WAL.
            lock(&tail).truncate(log_id.index);
            wal.truncate(log_id.index)
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&other(e)))?
        .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StResult<()> {
        // The marker first, durably: a crash before the segments go leaves entries that the
        // next open skips; the other order could leave a log whose start is unexplained.
        let started = std::time::Instant::now();
        if let Some(e) = self
            .purge_failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return Err(StorageIOError::write_logs(&e).into());
        }
        self.write_meta(KEY_PURGED, &log_id).await?;
        let (purged, entries) = {
            let mut wal = self.wal();
            let entries = lock(&self.tail).purge(log_id.index);
            (wal.purge_entries(log_id.index), entries)
        };
        // openraft's core waits for this call, and with it every append and every answer:
        // deleting the segments (a few 16-MiB files) and syncing the directory took 40-80 ms
        // there, a write stall at each snapshot (docs/benchmarks.md). They go on the blocking
        // pool instead, and so does freeing the entries the tail held. A failure is reported
        // by the next purge.
        let failed = self.purge_failed.clone();
        tokio::task::spawn_blocking(move || {
            drop(entries);
            let removing = std::time::Instant::now();
            match purged.remove() {
                Ok(()) => tracing::debug!(
                    upto = log_id.index,
                    ms = removing.elapsed().as_millis() as u64,
                    "purged log segments removed"
                ),
                Err(e) => {
                    tracing::error!(upto = log_id.index, error = %e, "removing purged log segments failed");
                    *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                }
            }
        });
        tracing::debug!(
            upto = log_id.index,
            ms = started.elapsed().as_millis() as u64,
            "log purged"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    /// The indexes of the entries the log holds.
    fn indexes(store: &LogStore) -> Vec<u64> {
        let all = store.entries(0, u64::MAX).unwrap();
        all.iter().map(|e| e.log_id.index).collect()
    }

    #[test]
    fn a_slow_fsync_is_logged_by_how_slow() {
        use std::time::Duration;
        use tracing::Level;
        let cases = [
            (Duration::from_micros(150), None),
            (Duration::from_micros(1999), None),
            (Duration::from_millis(2), Some(Level::DEBUG)),
            (Duration::from_millis(999), Some(Level::DEBUG)),
            (Duration::from_secs(1), Some(Level::WARN)),
            (Duration::from_secs(30), Some(Level::WARN)),
        ];
        for (took, level) in cases {
            assert_eq!(fsync_level(took), level, "{took:?}");
        }
    }

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    /// A committed marker past the end of the log is dropped at open. A node learns a commit
    /// index while its own fsync of those entries runs, the next redb write (a vote, a
    /// purge) makes the marker durable, and a power cut takes the unsynced tail: here the
    /// log ends at 10 and the marker names 20. openraft re-applied up to the marker at
    /// startup and failed ("Failed to get log entries, expected index: [0, 21)"), at every
    /// start. Found in review; this test failed so before the fix. A marker within the log
    /// stands.
    #[tokio::test]
    async fn a_committed_marker_past_the_log_is_dropped_at_open() {
        use openraft::storage::{RaftLogStorageExt, StorageHelper};
        use openraft::Vote;
        let reopen = |dir: &Path| {
            let store = LogStore::open(dir).unwrap();
            let sm = crate::StateMachine::open(
                dir,
                Arc::new(crate::Cache::new(Default::default())),
                Arc::new(crate::identity::Identity::new(1, 0x11, false)),
            )
            .unwrap();
            (store, sm)
        };
        for (marker, kept) in [(20, false), (7, true)] {
            let dir = tempfile::tempdir().unwrap();
            let (mut store, sm) = reopen(dir.path());
            drop(sm);
            let entries: Vec<_> = (0..=10).map(|i| entry(1, i)).collect();
            store.blocking_append(entries).await.unwrap();
            let at = LogId::new(CommittedLeaderId::new(1, 1), marker);
            store.save_committed(Some(at)).await.unwrap();
            store.save_vote(&Vote::new_committed(2, 2)).await.unwrap();
            drop(store);
            let (mut store, mut sm) = reopen(dir.path());
            StorageHelper::new(&mut store, &mut sm)
                .get_initial_state()
                .await
                .unwrap_or_else(|e| panic!("marker {marker}: the node does not start: {e}"));
            drop((store, sm));
            let (mut store, _sm) = reopen(dir.path());
            let read = store.read_committed().await.unwrap();
            assert_eq!(read, kept.then_some(at), "marker {marker}");
        }
    }

    /// A purge that empties the log while its last segment is empty and named for the next
    /// index (here a truncation at segment 6's first entry) left that segment to the
    /// deferred removal; the next append started a segment of the same name, and the
    /// removal then unlinked it, acknowledged entries and all: after a reopen the log was
    /// empty (40 runs of 40, in review). The segment now stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_purge_never_removes_the_segment_the_next_append_reuses() {
        use openraft::storage::RaftLogStorageExt;
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("wal");
        let log_id = |i| LogId::new(CommittedLeaderId::new(1, 1), i);
        let mut store = LogStore::open(dir.path()).unwrap();
        let entries = |r: std::ops::RangeInclusive<u64>| r.map(|i| entry(1, i)).collect::<Vec<_>>();
        store.blocking_append(entries(1..=5)).await.unwrap();
        store.wal().start_segment(6).unwrap();
        store.blocking_append(entries(6..=8)).await.unwrap();
        store.truncate(log_id(6)).await.unwrap();
        store.purge(log_id(5)).await.unwrap();
        store.blocking_append(entries(6..=8)).await.unwrap();
        // The deferred removal has run once the first segment is gone.
        let first = wal.join(wal::segment_name(1));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while first.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the purge removed nothing"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        drop(store);
        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&store), [6, 7, 8]);
    }

    /// A purge forgets the entries and makes its marker durable before it returns, and
    /// leaves the segments' removal to the blocking pool (openraft's core waits for the
    /// purge); they are gone soon after, and a reopened log starts after the purge.
    #[tokio::test]
    async fn a_purge_forgets_at_once_and_its_segments_go_soon_after() {
        let dir = tempfile::tempdir().unwrap();
        let segments = || {
            std::fs::read_dir(dir.path().join("wal"))
                .unwrap()
                .filter(|e| {
                    wal::is_segment_name(&e.as_ref().unwrap().file_name().to_string_lossy())
                })
                .count()
        };
        let mut store = LogStore::open(dir.path()).unwrap();
        {
            let mut wal = store.wal();
            for first in [1u64, 11, 21] {
                if first > 1 {
                    wal.start_segment(first).unwrap();
                }
                let recs: Vec<(u64, Vec<u8>)> = (first..first + 10)
                    .map(|i| (i, codec::encode(&entry(1, i)).unwrap()))
                    .collect();
                wal.append(&recs).unwrap();
            }
        }
        assert_eq!(segments(), 3);

        store
            .purge(LogId::new(CommittedLeaderId::new(1, 1), 20))
            .await
            .unwrap();
        assert_eq!(store.wal().bounds(), Some((21, 30)));
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(20));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while segments() > 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the purged segments were never removed: {} left",
                segments()
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        drop(store);

        let mut store = LogStore::open(dir.path()).unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(20));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(30));
        assert_eq!(indexes(&store), (21..=30).collect::<Vec<_>>());
    }

    fn create(term: u64, index: u64, cmds: usize) -> Entry<TypeConfig> {
        let cmds = (0..cmds)
            .map(|c| crate::command::Command::Create {
                id: format!("r{index}-{c}"),
                object: format!("{{\"cookie\":\"r{index}-{c}\"}}"),
            })
            .collect();
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(crate::types::Request { cmds }),
        }
    }

    /// Every range, as the store serves it (tail and WAL), against the WAL alone.
    fn check_every_range(store: &LogStore, step: &str) {
        let Some((first, last)) = store.wal().bounds() else {
            assert!(store.entries(0, u64::MAX).unwrap().is_empty(), "{step}");
            return;
        };
        for from in first.saturating_sub(1)..=last + 1 {
            for to in from..=last + 2 {
                let wal: Vec<Entry<TypeConfig>> = store
                    .wal()
                    .read(from, to)
                    .unwrap()
                    .iter()
                    .map(|p| codec::decode(p).unwrap())
                    .collect();
                assert_eq!(
                    store.entries(from, to).unwrap(),
                    wal,
                    "{step}: {from}..{to}"
                );
            }
        }
    }

    /// The tail answers every read as the WAL would, through appends past its cap, a
    /// truncation and the appends of a new term, a purge, and an install's jump past a gap.
    #[tokio::test]
    async fn the_tail_answers_as_the_wal_does() {
        use openraft::storage::RaftLogStorageExt;
        let dir = tempfile::tempdir().unwrap();
        // About six entries of three commands each.
        let cap = 6 * tail::cost(
            &create(1, 1, 3),
            codec::encode(&create(1, 1, 3)).unwrap().len(),
        );
        let mut store =
            LogStore::open_with(&Dirs::new(dir.path()), cap, wal::SEGMENT_BYTES).unwrap();
        let log_id = |term, index| LogId::new(CommittedLeaderId::new(term, 1), index);

        for batch in [1u64..4, 4..5, 5..12] {
            let entries: Vec<_> = batch.map(|i| create(1, i, 3)).collect();
            store.blocking_append(entries).await.unwrap();
        }
        let held = lock(&store.tail).get(0, u64::MAX).map(|(start, _)| start);
        assert!(
            held.is_some_and(|s| s > 1),
            "the oldest went past the cap: {held:?}"
        );
        check_every_range(&store, "appended");

        store.truncate(log_id(1, 9)).await.unwrap();
        check_every_range(&store, "truncated");
        let entries: Vec<_> = (9..11).map(|i| create(2, i, 1)).collect();
        store.blocking_append(entries).await.unwrap();
        check_every_range(&store, "appended in term 2");
        assert_eq!(store.entries(9, 10).unwrap()[0].log_id, log_id(2, 9));

        store.purge(log_id(1, 7)).await.unwrap();
        check_every_range(&store, "purged");

        // An install: everything purged, the log goes on past a gap.
        store.purge(log_id(2, 20)).await.unwrap();
        check_every_range(&store, "purged past the end");
        let entries: Vec<_> = (21..24).map(|i| create(2, i, 2)).collect();
        store.blocking_append(entries).await.unwrap();
        check_every_range(&store, "after the gap");
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(2, 23)));
    }

    #[test]
    fn entries_of_the_redb_log_move_into_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join("log.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(LEGACY_LOG).unwrap();
                for i in 1..=3 {
                    t.insert(i, codec::encode(&entry(1, i)).unwrap().as_slice())
                        .unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&store), [1, 2, 3]);
        drop(store);
        // The table is gone, and opening again does not append the entries twice.
        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(store.entries(0, 10).unwrap().len(), 3);
    }
}
