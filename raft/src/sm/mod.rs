//! The replicated state machine: cookies in `sm.redb`, applied in log order.
//!
//! This file holds what the parts share: the [`StateMachine`] type and its `open`, the redb
//! tables and metadata keys, and the [`RaftStateMachine`] impl, which only delegates:
//! - `apply.rs`: entries in one redb transaction per batch, and when a commit is durable.
//!   What each command does to the records is [`crate::command`]'s.
//! - `snapshot.rs`: building ([`SnapshotBuilder`]) and installing snapshots, their row format,
//!   and the move of snapshots kept whole in `sm_meta` by earlier versions.
//! - [`files`] (`files.rs`): snapshot data in files of their own beside `sm.redb`.
//! - `reader.rs`: [`StoreReader`], the HTTP layer's reads (get, list, page, count) through the
//!   cache.
//!
//! A storage error is returned to openraft, which stops the node: answering a client with it
//! instead would let replicas diverge.

use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{Entry, LogId, OptionalSend, StorageIOError, StoredMembership};
use redb::{Database, TableDefinition};
use serde::Serialize;

use crate::cache::Cache;
use crate::codec;
use crate::types::{CookieNode, NodeId, Response, TypeConfig};
use crate::{BoxError, StResult};
use files::SnapshotFiles;

mod apply;
pub mod files;
mod reader;
mod snapshot;

pub(crate) use apply::Tables;
pub use reader::{CacheStatus, StoreReader};
pub use snapshot::SnapshotBuilder;

/// id -> [`crate::record::Record`], encoded.
const COOKIES: TableDefinition<&str, &[u8]> = TableDefinition::new("cookies");
/// The list order as an index: `(order_key(created), id)`, so a page of `GET /cookies` is a
/// range scan instead of a sort of every record.
const BY_CREATED: TableDefinition<(u64, &str), ()> = TableDefinition::new("cookies_by_created");

/// Newest `created` first: map the signed sort key to an unsigned one, then invert it.
fn order_key(created: i64) -> u64 {
    u64::MAX - ((created as u64) ^ (1 << 63))
}
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");

const KEY_APPLIED: &str = "last_applied";
const KEY_MEMBERSHIP: &str = "membership";
/// The current snapshot: its meta and the file holding its data (`snapshot::SnapshotPointer`).
const KEY_SNAPSHOT_FILE: &str = "snapshot_file";
/// Where earlier versions kept the whole snapshot, data included; migrated at open.
const KEY_SNAPSHOT_LEGACY: &str = "snapshot";

type Membership = StoredMembership<NodeId, CookieNode>;
type Meta = SnapshotMeta<NodeId, CookieNode>;

/// How many snapshots this node installed (sent by a leader) and built (its own), for the
/// `raft_snapshot_*_total` metrics: a follower that needed a snapshot to catch up shows here.
#[derive(Debug, Default)]
pub struct SnapshotCounts {
    pub installed: AtomicU64,
    pub built: AtomicU64,
}

/// The state machine handed to openraft.
pub struct StateMachine {
    db: Arc<Database>,
    cache: Arc<Cache>,
    applied: Arc<AtomicU64>,
    snapshots: Arc<SnapshotCounts>,
    files: Arc<SnapshotFiles>,
    /// The last index committed durably by `apply`.
    last_durable: u64,
}

impl StateMachine {
    /// Open or create `dir/sm.redb`.
    pub fn open(dir: &Path, cache: Arc<Cache>) -> Result<Self, BoxError> {
        let db = Database::create(dir.join("sm.redb"))?;
        let txn = db.begin_write()?;
        {
            txn.open_table(COOKIES)?;
            txn.open_table(BY_CREATED)?;
            txn.open_table(META)?;
        }
        txn.commit()?;
        let db = Arc::new(db);
        let files = Arc::new(SnapshotFiles::open(dir)?);
        snapshot::recover(&db, &files)?;
        let applied = read_meta::<Option<LogId<NodeId>>>(&db, KEY_APPLIED)?
            .flatten()
            .map_or(0, |l| l.index);
        Ok(StateMachine {
            db,
            cache,
            applied: Arc::new(AtomicU64::new(applied)),
            snapshots: Arc::default(),
            files,
            last_durable: applied,
        })
    }
}

fn read_meta<T: serde::de::DeserializeOwned>(
    db: &Database,
    key: &str,
) -> Result<Option<T>, BoxError> {
    codec::read_key(db, META, key)
}

fn put_meta<T: Serialize>(txn: &redb::WriteTransaction, key: &str, v: &T) -> Result<(), BoxError> {
    let bytes = codec::encode(v)?;
    txn.open_table(META)?.insert(key, bytes.as_slice())?;
    Ok(())
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> StResult<(Option<LogId<NodeId>>, Membership)> {
        let applied = read_meta::<Option<LogId<NodeId>>>(&self.db, KEY_APPLIED)
            .map_err(|e| StorageIOError::read_state_machine(&crate::io_err(e)))?
            .flatten();
        let membership = read_meta::<Membership>(&self.db, KEY_MEMBERSHIP)
            .map_err(|e| StorageIOError::read_state_machine(&crate::io_err(e)))?
            .unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> StResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.apply_batch(entries.into_iter().collect()).await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_builder()
    }

    async fn begin_receiving_snapshot(&mut self) -> StResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StResult<()> {
        self.install(meta, snapshot.into_inner()).await
    }

    async fn get_current_snapshot(&mut self) -> StResult<Option<Snapshot<TypeConfig>>> {
        self.current_snapshot().await
    }
}
