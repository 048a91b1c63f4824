//! The [`StateMachine`] value and its counters: the handles every part of `sm` works on.
//! `open` and the `RaftStateMachine` impl are in `sm/mod.rs`; applying, snapshots and
//! reads add their methods in their own files.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::files::SnapshotFiles;
use crate::cache::Cache;
use crate::identity::Identity;

/// How many snapshots this node installed (sent by a leader) and built (its own), for the
/// `raft_snapshot_*_total` metrics: a follower that needed a snapshot to catch up shows here.
#[derive(Debug, Default)]
pub struct SnapshotCounts {
    pub installed: AtomicU64,
    pub built: AtomicU64,
    /// Builds put off for want of disk room: the current snapshot was kept instead.
    pub postponed: AtomicU64,
    /// The uncompressed bytes of the last snapshot this node built (0 until it builds one):
    /// what the next build will read and compress, roughly.
    pub state_bytes: AtomicU64,
}

/// The state machine handed to openraft.
pub struct StateMachine {
    pub(super) db: super::handle::Db,
    pub(super) cache: Arc<Cache>,
    pub(super) applied: Arc<AtomicU64>,
    pub(super) snapshots: Arc<SnapshotCounts>,
    pub(super) files: Arc<SnapshotFiles>,
    /// Told the identity registry whenever an apply or an install changes it.
    pub(super) identity: Arc<Identity>,
    /// Writes applied changes to `sm.redb` behind `apply`.
    pub(super) overlay: super::overlay::Overlay,
    /// Its thread, stopped (after a last write) when the state machine is dropped.
    pub(super) _flusher: super::overlay::FlushThread,
}
