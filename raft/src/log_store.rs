//! The Raft log, vote, committed marker and purge marker, in `log.redb`.
//!
//! Every mutation is one redb write transaction committed with `Durability::Immediate`
//! (an fsync) before openraft is told it is done: an acknowledged append or vote must
//! survive `kill -9`. Commits run on the blocking pool so an fsync never stalls the async
//! workers that serve HTTP.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

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
        Ok(LogStore { db: Arc::new(db) })
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
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write()?;
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
        // Durable, and not a mere hint: openraft 0.9 restores a restarted leader as leader
        // at once, and its read index is then this commit index. Written without an fsync,
        // a crash could lose the last commit and a linearizable read would miss the last
        // acknowledged write (regression test: `last_acknowledged_write_is_read_after_the_
        // leader_restarts_first` in tests/cluster.rs).
        self.write_meta(KEY_COMMITTED, &committed).await
    }

    async fn read_committed(&mut self) -> StResult<Option<LogId<NodeId>>> {
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
