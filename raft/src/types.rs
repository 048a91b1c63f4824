//! What travels through the Raft log (a [`Request`]: the commands of one group commit), what
//! applying it answers (a [`Response`]), the node descriptor, and openraft's type
//! configuration. What one command is and does is [`crate::command`]'s.

use serde::{Deserialize, Serialize};

use crate::command::{CmdResult, Command};
pub use crate::member::CookieNode;

/// Node ids are small integers chosen by the operator (`node_id` in the config).
pub type NodeId = u64;

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

openraft::declare_raft_types!(
    /// openraft's type configuration for cookie-crud.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = CookieNode,
        SnapshotData = crate::sm::SnapshotFile,
);
