//! The replicated state machine: cookies in `sm.redb`, applied in log order.
//!
//! This file holds [`StateMachine::open`] and the [`RaftStateMachine`] impl, which only
//! delegates to the parts:
//! - `state.rs`: the [`StateMachine`] value itself; `tables.rs`: the redb tables and
//!   metadata keys.
//! - `apply.rs`: entries in one redb transaction per batch, and when a commit is durable.
//!   What each command does to the records is [`crate::command`]'s.
//! - `snapshot.rs`: building ([`SnapshotBuilder`]) and installing snapshots, and the move of
//!   snapshots kept whole in `sm_meta` by earlier versions; `format.rs`: their row format,
//!   written and read as a stream.
//! - [`files`] (`files.rs`): snapshot data in files of their own beside `sm.redb`;
//!   `data.rs`: [`SnapshotFile`], such a file as openraft handles it.
//! - `reader.rs`: [`StoreReader`], the HTTP layer's reads (get, list, page, count) through the
//!   cache.
//!
//! A storage error is returned to openraft, which stops the node: answering a client with it
//! instead would let replicas diverge.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{Entry, LogId, OptionalSend, StorageIOError};

use crate::cache::Cache;
use crate::identity::Identity;
use crate::types::{NodeId, Response, TypeConfig};
use crate::{BoxError, StResult};
use files::SnapshotFiles;
use handle::Db;

mod apply;
mod background;
pub mod backup;
mod compact;
mod cursor;
mod data;
pub mod dump;
pub mod files;
mod flush_room;
mod format;
mod handle;
mod ids;
mod layer;
mod overlay;
mod reader;
mod repack;
mod snapshot;
mod state;
mod tables;

pub use cursor::Cursor;
pub use data::SnapshotFile;
pub use overlay::FlushStats;
pub use reader::{CacheStatus, ListScan, PageStart, StoreReader, PAGE_BYTES};
pub use repack::Policy as RepackPolicy;
pub use snapshot::{
    install_room, validate as validate_snapshot, validate_file as validate_snapshot_file,
    SnapshotBuilder,
};
pub use state::{SnapshotCounts, StateMachine};
use tables::{read_meta, Membership, Meta, KEY_APPLIED};

impl StateMachine {
    /// Open or create `dir/sm.redb` with the default page cache ([`crate::DbCache`]) and
    /// repacking ([`RepackPolicy`]); `identity` is given the stored registry now and each
    /// change to it later.
    pub fn open(dir: &Path, cache: Arc<Cache>, identity: Arc<Identity>) -> Result<Self, BoxError> {
        Self::open_with(
            dir,
            (cache, identity),
            crate::DbCache::default().state_machine,
            Some(RepackPolicy::default()),
        )
    }

    /// [`StateMachine::open`] with a page cache of `cache_bytes` for `sm.redb`, and the file
    /// rewritten packed at rest as `repack` says (`None`: never).
    pub fn open_with(
        dir: &Path,
        (cache, identity): (Arc<Cache>, Arc<Identity>),
        cache_bytes: usize,
        repack: Option<RepackPolicy>,
    ) -> Result<Self, BoxError> {
        let path = dir.join("sm.redb");
        // What an install interrupted before its rename left (see `handle`).
        crate::durable::remove_if_present(&handle::installing_path(&path))?;
        let mut db = crate::open_or_create_db(&path, cache_bytes)?;
        compact::if_bloated(&mut db, &path)?;
        tables::create_tables(&db)?;
        let files = Arc::new(SnapshotFiles::open(dir)?);
        snapshot::recover(&db, &files)?;
        let applied = read_meta::<Option<LogId<NodeId>>>(&db, KEY_APPLIED)?
            .flatten()
            .map(|l| l.index);
        identity.set_registry(applied.unwrap_or(0), tables::read_registry(&db)?);
        let db = Db::new(db, &path, cache_bytes)?;
        let stagger = crate::Stagger::for_node(identity.me());
        let (overlay, flusher) = overlay::Overlay::start(db.clone(), applied, repack, stagger)?;
        Ok(StateMachine {
            db,
            cache,
            applied: Arc::new(AtomicU64::new(applied.unwrap_or(0))),
            snapshots: Arc::default(),
            files,
            identity,
            overlay,
            _flusher: flusher,
        })
    }
}

impl StateMachine {
    /// The snapshot directory, for the inbox that receives snapshots into it.
    pub fn snapshot_files(&self) -> Arc<SnapshotFiles> {
        self.files.clone()
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> StResult<(Option<LogId<NodeId>>, Membership)> {
        let (applied, membership) = self
            .db
            .applied_state()
            .map_err(|e| StorageIOError::read_state_machine(&crate::io_err(e)))?;
        Ok((applied, membership.unwrap_or_default()))
    }

    async fn apply<I>(&mut self, entries: I) -> StResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = std::time::Instant::now();
        let entries: Vec<_> = entries.into_iter().collect();
        if let Some(last) = entries.last() {
            crate::stages::applying(last.log_id.index);
        }
        let applied = self.apply_batch(entries).await;
        crate::stages::since(&crate::stages::APPLY, started);
        applied
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_builder()
    }

    /// A new file in the snapshot directory. (cookie-crud's own inbox receives snapshots,
    /// [`crate::inbox`]; this is openraft's receiver's path, kept working.)
    async fn begin_receiving_snapshot(&mut self) -> StResult<Box<SnapshotFile>> {
        let file = self
            .files
            .incoming()
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: Box<SnapshotFile>) -> StResult<()> {
        self.install(meta, *snapshot).await?;
        crate::stages::installed(meta.last_log_id.map_or(0, |l| l.index));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StResult<Option<Snapshot<TypeConfig>>> {
        self.current_snapshot().await
    }
}
