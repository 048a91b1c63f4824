//! What every handler shares: one [`AppState`], built at start by `node::run`.

use std::sync::Arc;
use std::time::Instant;

use cookie_raft::{LogSize, SnapshotInbox, StoreReader};

use super::append_lane::AppendLane;
use crate::cluster::install_quiet::InstallQuiet;
use crate::cluster::monitor::Monitor;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::read::ReadIndex;
use crate::write::Writer;

/// Everything a handler needs, built once at start and shared by every request.
pub struct AppState {
    /// The node's configuration as loaded at start: body and time limits, the node's name,
    /// the data directory (for file sizes), the cluster secret the peer gate checks.
    pub cfg: Config,
    /// Raft, this node's id and the peer client: who leads, the members, their names.
    pub cluster: Cluster,
    /// Reads of the applied state through the read cache (never blocks on `apply`).
    pub reader: StoreReader,
    /// The log's size after an index (`/metrics`: the log since the last snapshot).
    pub log_size: LogSize,
    /// The write path: group commit here, or forwarding to the leader.
    pub writer: Writer,
    /// The linearizable read barrier, and the read index this node gives as leader.
    pub reads: ReadIndex,
    /// The other members' latest health checks (for `/cache` and `/metrics`).
    pub monitor: Monitor,
    /// The node's metrics registry.
    pub metrics: Arc<Metrics>,
    /// When the node started (`service_uptime_seconds`).
    pub started: Instant,
    /// Holds this node's elections off while it installs a snapshot.
    pub install_quiet: InstallQuiet,
    /// Inbound snapshot chunks: bounded, in order, validated before openraft installs them.
    pub snapshot_inbox: SnapshotInbox,
    /// Permits for unpaged `GET /cookies` (`http.max_concurrent_full_lists`), shared so
    /// that a streamed reply's body can own its permit until it is sent.
    pub full_lists: Arc<tokio::sync::Semaphore>,
    /// Permits for `GET /admin/backup` ([`super::backup::CONCURRENT`]), each held until
    /// its backup is written or given up.
    pub backups: Arc<tokio::sync::Semaphore>,
    /// Inbound appends: held when one overtook the one sent before it, and counted.
    pub append_lane: AppendLane,
    /// The bytes of request bodies held while they are read ([`super::params::BodyRoom`]).
    pub body_room: super::params::BodyRoom,
    /// The bytes of list pages held while they are sent ([`super::page_room`]).
    pub page_room: super::page_room::PageRoom,
}

pub type Shared = Arc<AppState>;
