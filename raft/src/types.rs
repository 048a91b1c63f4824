//! What travels through the Raft log, and what applying it answers.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// Node ids are small integers chosen by the operator (`node_id` in the config).
pub type NodeId = u64;

/// The node descriptor kept in the replicated membership: where to reach a node and what to
/// call it in `/health`, `/cache` and logs. One address serves both the API and Raft RPCs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CookieNode {
    /// `host:port` of the node's HTTP server.
    pub addr: String,
    /// The configured node name, e.g. `node1`.
    pub name: String,
}

impl fmt::Display for CookieNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

/// One client write, fully decided by the proposing node except for what depends on the
/// current state (existence, version, merge), which `apply` decides. Everything
/// non-deterministic (timestamps) is already filled in here.
///
/// JSON travels as text: bincode cannot carry `serde_json::Value` (it needs
/// `deserialize_any`), and text is what the store keeps anyway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Insert a new record unless `id` exists. `object` is the complete record (a JSON object
    /// with `created` and `last_used` already set by the proposer).
    Create { id: String, object: String },
    /// Merge `patch` (a JSON object) into record `id`, set `last_used = now`; rename when the
    /// patch carries a different `cookie`. With `if_match`, only if the version matches.
    Update {
        id: String,
        patch: String,
        /// The patch's `cookie` field when it differs from `id` (a rename).
        rename_to: Option<String>,
        now: u64,
        if_match: Option<u64>,
    },
    /// Remove record `id` (absent is fine). With `if_match`, only if it exists at that version.
    Delete { id: String, if_match: Option<u64> },
}

impl Command {
    /// The record ids this command may touch. A batch never holds two commands that share
    /// a key, so every write gets its own version (the index of its log entry).
    pub fn keys(&self) -> Vec<&str> {
        match self {
            Command::Create { id, .. } | Command::Delete { id, .. } => vec![id.as_str()],
            Command::Update { id, rename_to, .. } => {
                let mut keys = vec![id.as_str()];
                keys.extend(rename_to.as_deref());
                keys
            }
        }
    }
}

/// The application payload of a normal log entry: a group of client commands committed
/// together (group commit). Each command gets its own [`CmdResult`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub cmds: Vec<Command>,
}

/// The result of applying one log entry: one result per command, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub results: Vec<CmdResult>,
}

/// The outcome of one command, decided by `apply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmdResult {
    /// Created or updated: the stored object and its new version.
    Stored { object: String, version: u64 },
    /// Deleted (or already absent).
    Deleted,
    /// The record does not exist (update).
    NotFound,
    /// The id (or the rename target) already exists.
    AlreadyExists,
    /// `If-Match` did not match the stored version, or the record is absent.
    PreconditionFailed,
    /// The command could not be applied (e.g. a patch that is not an object). Proposers
    /// validate first, so this only guards determinism: every replica answers the same.
    Invalid(String),
}

openraft::declare_raft_types!(
    /// openraft's type configuration for cookie-crud.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = CookieNode,
        SnapshotData = Cursor<Vec<u8>>,
);
