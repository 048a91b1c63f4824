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

/// The highest term a Raft message may carry, asked or answered. Real terms grow by one an
/// election; a vote with a term near `u64::MAX` (from a peer with the secret, or a broken
/// one) was taken by openraft, persisted, and made every node panic at its next election
/// (`term + 1`), for good, restarts included (found in review).
pub const MAX_TERM: u64 = 1 << 62;

/// A vote whose term is past [`MAX_TERM`], with that term, for the peer listener (a request)
/// and the network client (an answer) alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermOutOfRange(pub u64);

impl std::fmt::Display for TermOutOfRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "term {} is out of range (at most {MAX_TERM})", self.0)
    }
}

impl std::error::Error for TermOutOfRange {}

/// Whether a vote's term is within [`MAX_TERM`].
pub fn term_in_range(vote: &openraft::Vote<NodeId>) -> Result<(), TermOutOfRange> {
    let term = vote.leader_id().get_term();
    if term > MAX_TERM {
        return Err(TermOutOfRange(term));
    }
    Ok(())
}

/// The leader a node's metrics name, unless they name the node itself while it does not
/// lead. openraft names the holder of the last committed vote: a leader removed from the
/// membership drops to learner and keeps naming itself, for good (across restarts too).
/// Taken for the leader, it proposed writes that openraft refused (answered 504, "outcome
/// unknown", where nothing had been proposed) and reported itself leader in `/health`,
/// `/cluster` and the metrics beside the real one (found in review).
pub fn acting_leader(
    me: NodeId,
    state: openraft::ServerState,
    current_leader: Option<NodeId>,
) -> Option<NodeId> {
    match current_leader {
        Some(l) if l == me && state != openraft::ServerState::Leader => None,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::ServerState;

    #[test]
    fn a_node_that_names_itself_leads_only_in_the_leader_state() {
        assert_eq!(acting_leader(1, ServerState::Leader, Some(1)), Some(1));
        assert_eq!(acting_leader(1, ServerState::Learner, Some(1)), None);
        assert_eq!(acting_leader(1, ServerState::Follower, Some(1)), None);
        assert_eq!(acting_leader(1, ServerState::Follower, Some(2)), Some(2));
        assert_eq!(acting_leader(1, ServerState::Candidate, None), None);
    }
}
