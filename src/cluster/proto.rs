//! Every node-to-node message and path, in one place.
//!
//! Peers talk in two ways. Raft's own RPCs (`/raft/append`, `/raft/vote`,
//! `/raft/snapshot`) carry openraft's request and response types, sent by
//! `cookie_raft::network`. The application traffic defined here rides beside them:
//! followers forward client writes to the leader and ask it for read indexes, and every
//! node probes the others' JSON documents (bootstrap, health monitor, `/cache`). All of it
//! goes to a node's peer listener, never its client listener.
//! Bodies of the `/raft/*` routes are bincode ([`cookie_raft::codec`]); each request names
//! the node it is meant for in [`RAFT_TARGET_HEADER`] and carries the cluster secret when
//! one is configured.

use cookie_raft::{CmdResult, Command};
use serde::{Deserialize, Serialize};

pub use cookie_raft::network::{APPEND_PATH, SNAPSHOT_PATH, VOTE_PATH};
pub use cookie_raft::RAFT_TARGET_HEADER;

/// Writes a follower forwards to the leader: `Vec<ForwardedWrite>` in, one
/// [`ForwardReply`] per write out, in order.
pub const WRITE_PATH: &str = "/raft/write";
/// A follower asks the leader for a read index: empty body in, [`ReadIndexReply`] out.
pub const READ_INDEX_PATH: &str = "/raft/read-index";
/// A membership change for the leader to make (a forwarded admin request, or a new node
/// asking to join): `membership::Change` in, `Result<Members, ChangeError>` out.
pub const MEMBERSHIP_PATH: &str = "/raft/membership";
/// The JSON documents peers probe on each other's peer listener, at the paths the client
/// API uses for the same documents: who a node is and whether it is initialized
/// (bootstrap), whether it is alive (health monitor), its cache statistics (`/cache`).
pub const CLUSTER_PATH: &str = "/cluster";
pub const HEALTH_PATH: &str = "/health";
pub const CACHE_PATH: &str = "/cache";

/// One forwarded write, with the client's request id so the leader's log can name it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardedWrite {
    pub cmd: Command,
    pub request_id: String,
    /// What is left of the client's deadline when the follower sends it, in milliseconds:
    /// the leader drops the write rather than propose it after that (its own write timeout
    /// is the upper bound).
    pub timeout_ms: u64,
}

/// What the leader answers a forwarded write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardReply {
    /// Committed and applied; this is its result.
    Applied(CmdResult),
    /// The receiver is not the leader and did not propose the write: safe to retry elsewhere.
    NotLeader,
    /// Proposed, but its fate is unknown (timeout, leadership lost, shutdown).
    Unknown(String),
    /// Not proposed and never will be (the leader's queue is full, or the write's deadline
    /// passed before it was proposed): not applied, and not worth retrying at once.
    NotApplied(String),
}

/// What the leader answers a read-index request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadIndexReply {
    /// Leadership confirmed by a quorum after the request arrived; reads must wait for this
    /// index to be applied.
    Index(u64),
    NotLeader,
}
