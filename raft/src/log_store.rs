//! The Raft log, vote, committed marker and purge marker, in `log.redb`.
//!
//! Every append, truncation, purge and vote is one redb write transaction committed with
//! `Durability::Immediate` (an fsync) before openraft is told it is done: an acknowledged
//! append or vote must survive `kill -9`. Commits run on the blocking pool so an fsync never
//! stalls the async workers that serve HTTP.
//!
//! The committed marker is the exception: it is a hint. [`LogStore::save_committed`] keeps
//! it in memory and the next of those transactions writes it, so a commit costs no fsync of
//! its own (it used to be half of all fsyncs). After a crash the marker may be older than the
//! real commit index. That is safe for applying (openraft re-learns the commit index from the
//! leader), and the one reader that needed it exact, a leader restored in place at startup,
//! gets its floor from [`LogStore::restored_leader_floor`] instead.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, StorageError, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::types::{NodeId, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const KEY_VOTE: &str = "vote";
const KEY_PURGED: &str = "last_purged";
const KEY_COMMITTED: &str = "committed";

type StResult<T> = Result<T, StorageError<NodeId>>;

/// The redb-backed Raft log. Cloning shares the database (the clone is the log reader).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// The latest committed marker not yet written (encoded), and the latest one given.
    committed: Arc<Mutex<Committed>>,
}

#[derive(Default)]
struct Committed {
    unwritten: Option<Vec<u8>>,
    latest: Option<Option<LogId<NodeId>>>,
}

/// A leader restored in place at startup, and the read index it must not go below.
///
/// openraft 0.9 restarts a node whose stored vote makes it the committed leader as leader of
/// the same term, without a new entry, and names as read index the larger of its first entry
/// of the term and its commit index. That commit index comes from the committed marker, which
/// may be stale after a crash ([`LogStore`]), so a write acknowledged just before the crash
/// could be missed. Every acknowledged entry is in this leader's log, though: its last index
/// at startup bounds them all. Reads in `term` wait until that index is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadFloor {
    pub term: u64,
    pub index: u64,
}

impl LogStore {
    /// Open or create `dir/log.redb`.
    pub fn open(dir: &Path) -> Result<Self, redb::Error> {
        let db = Database::create(dir.join("log.redb"))?;
        let txn = db.begin_write()?;
        {
            txn.open_table(LOG)?;
            txn.open_table(META)?;
        }
        txn.commit()?;
        Ok(LogStore {
            db: Arc::new(db),
            committed: Arc::default(),
        })
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

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> StResult<Option<T>> {
        let read = || -> Result<Option<T>, Box<dyn std::error::Error + Send + Sync>> {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(META)?;
            match table.get(key)? {
                Some(v) => Ok(Some(codec::decode(v.value())?)),
                None => Ok(None),
            }
        };
        read().map_err(|e| StorageIOError::read(&crate::io_err(e)).into())
    }

    /// Run a write transaction on the blocking pool and commit it durably (redb's default
    /// `Durability::Immediate`: fsync before `commit` returns).
    async fn write<F>(&self, f: F) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
    where
        F: FnOnce(&redb::WriteTransaction) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
            + Send
            + 'static,
    {
        let db = self.db.clone();
        // The committed marker rides along with whatever is written next.
        let committed = self
            .committed
            .lock()
            .expect("not poisoned")
            .unwritten
            .take();
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
        self.write(move |txn| {
            txn.open_table(META)?.insert(key, bytes.as_slice())?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write(&crate::io_err(e)).into())
    }
}

fn to_bounds<RB: RangeBounds<u64>>(range: &RB) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StResult<Vec<Entry<TypeConfig>>> {
        let read =
            || -> Result<Vec<Entry<TypeConfig>>, Box<dyn std::error::Error + Send + Sync>> {
                let txn = self.db.begin_read()?;
                let table = txn.open_table(LOG)?;
                let mut out = Vec::new();
                for row in table.range::<u64>(to_bounds(&range))? {
                    let (_, v) = row?;
                    out.push(codec::decode(v.value())?);
                }
                Ok(out)
            };
        read().map_err(|e| StorageIOError::read_logs(&crate::io_err(e)).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<NodeId>> = self.read_meta(KEY_PURGED)?;
        let read =
            || -> Result<Option<Entry<TypeConfig>>, Box<dyn std::error::Error + Send + Sync>> {
                let txn = self.db.begin_read()?;
                let table = txn.open_table(LOG)?;
                let last = table.last()?;
                match last {
                    Some((_, v)) => Ok(Some(codec::decode(v.value())?)),
                    None => Ok(None),
                }
            };
        let last = read().map_err(|e| StorageIOError::read_logs(&crate::io_err(e)))?;
        let last_log_id = last.map(|e| e.log_id).or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
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
        self.read_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StResult<()> {
        // A hint, written with the next append (see the module docs). The restored leader's
        // reads that relied on it are covered by `ReadFloor` (regression test: `last_
        // acknowledged_write_is_read_after_the_leader_restarts_first` in tests/cluster.rs).
        let bytes = codec::encode(&committed).map_err(|e| StorageIOError::write(&e))?;
        let mut c = self.committed.lock().expect("not poisoned");
        c.unwritten = Some(bytes);
        c.latest = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> StResult<Option<LogId<NodeId>>> {
        if let Some(latest) = self.committed.lock().expect("not poisoned").latest {
            return Ok(latest);
        }
        Ok(self
            .read_meta::<Option<LogId<NodeId>>>(KEY_COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for entry in entries {
            let bytes = codec::encode(&entry).map_err(|e| StorageIOError::write_logs(&e))?;
            rows.push((entry.log_id.index, bytes));
        }
        let res = self
            .write(move |txn| {
                let mut table = txn.open_table(LOG)?;
                for (index, bytes) in &rows {
                    table.insert(*index, bytes.as_slice())?;
                }
                Ok(())
            })
            .await;
        // openraft 0.9 waits for this callback; it must be called on every path.
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(&crate::io_err(e)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StResult<()> {
        // Inclusive: removes `log_id.index` and everything after it.
        self.write(move |txn| {
            txn.open_table(LOG)?
                .retain_in(log_id.index.., |_, _| false)?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&crate::io_err(e)).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StResult<()> {
        let marker = codec::encode(&log_id).map_err(|e| StorageIOError::write_logs(&e))?;
        // The marker and the deletion share one transaction: a crash in between would leave a
        // log whose first entry is unexplained.
        self.write(move |txn| {
            txn.open_table(META)?
                .insert(KEY_PURGED, marker.as_slice())?;
            txn.open_table(LOG)?
                .retain_in(..=log_id.index, |_, _| false)?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&crate::io_err(e)).into())
    }
}
