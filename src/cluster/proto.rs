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

use std::collections::BTreeSet;

use cookie_raft::{CmdResult, Command, CookieNode, NodeId};
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
/// A leader that is stopping hands leadership over (`handover`): [`Handover`] in,
/// [`HandoverReply`] out.
pub const HANDOVER_PATH: &str = "/raft/handover";
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
    /// Not proposed: it would add data and the leader's disk is short of its reserve
    /// (`write::room`). Last, so that the earlier variants keep their encoding; a node of a
    /// version before it cannot decode it and reports the write's outcome as unknown.
    NoRoom(String),
    /// Not proposed: with it, the answers to its request would have been more than one reply
    /// carries (`write::answers`). Send it again at once. Last, as `NoRoom`.
    Later(String),
}

/// What the leader answers a read-index request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadIndexReply {
    /// Leadership confirmed by a quorum after the request arrived; reads must wait for this
    /// index to be applied.
    Index(u64),
    NotLeader,
}

/// From a leader that is stopping, to each other voter: its lease is released (the voter may
/// vote within it), and the one named `campaign` is asked to stand for election at once.
/// The leader is named by its vote (committed, its term and id; the peer gate checks that
/// the sender is that node): a voter acts only while that is its own vote, so a message from
/// an old leader, or one delayed past the next election, changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    pub vote: openraft::Vote<NodeId>,
    pub campaign: bool,
}

/// What a voter answers a [`Handover`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandoverReply {
    /// The lease is released (and, when asked, the election started).
    Done,
    /// This voter's vote is not the sender's leadership, or it is not a voter: nothing done.
    Refused(String),
}

/// One membership change, as the API and the forwarding between nodes carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Add `node` as a learner; with `voter`, promote it once it has caught up.
    Add {
        id: NodeId,
        node: CookieNode,
        voter: bool,
    },
    /// Make a learner a voter.
    Promote { id: NodeId },
    /// Remove a voter or a learner.
    Remove { id: NodeId },
}

/// Why a change was not made, or not completely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ChangeError {
    /// Another change is being made (409).
    #[error("Membership change in progress")]
    InProgress,
    /// The node named is not a member (404).
    #[error("Member not found")]
    NotMember,
    /// The change makes no sense: a wrong id, the last voter (400).
    #[error("{0}")]
    Invalid(String),
    /// The node is a member already with other addresses, or belongs to another cluster
    /// (409).
    #[error("{0}")]
    Conflict(String),
    /// The node to add does not answer on its peer listener (503): nothing changed.
    #[error("{0}")]
    Unreachable(String),
    /// No leader within the deadline (503): nothing changed.
    #[error("No leader available")]
    NoLeader,
    /// The receiver does not lead (between nodes only: the sender tries the leader).
    #[error("not the leader")]
    NotLeader,
    /// Begun, and not known to be finished (504): a learner still catching up, or a
    /// change whose commit was not seen in time. Look at the membership, then retry.
    #[error("{0}")]
    Unfinished(String),
}

/// One member, as `/cluster/members` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub id: NodeId,
    pub name: String,
    pub addr: String,
    pub peer_addr: String,
    pub voter: bool,
}

/// The membership: every member, the voters' ids and the learners' ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    pub members: Vec<MemberView>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

impl Members {
    pub fn of(m: &openraft::Membership<NodeId, CookieNode>) -> Members {
        let voters: BTreeSet<NodeId> = m.voter_ids().collect();
        Members {
            members: m
                .nodes()
                .map(|(id, n)| MemberView {
                    id: *id,
                    name: n.name.clone(),
                    addr: n.addr.clone(),
                    peer_addr: n.peer_addr.clone(),
                    voter: voters.contains(id),
                })
                .collect(),
            voters: voters.into_iter().collect(),
            learners: m.learner_ids().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forwarded write's answer travels between nodes of different versions during an
    /// upgrade: each variant keeps its tag (its place), and new ones go last.
    #[test]
    fn forward_replies_keep_their_tags() {
        let tag = |r: &ForwardReply| cookie_raft::codec::encode(r).unwrap()[0];
        let replies = [
            ForwardReply::Applied(cookie_raft::CmdResult::Deleted),
            ForwardReply::NotLeader,
            ForwardReply::Unknown(String::new()),
            ForwardReply::NotApplied(String::new()),
            ForwardReply::NoRoom(String::new()),
            ForwardReply::Later(String::new()),
        ];
        let tags: Vec<u8> = replies.iter().map(tag).collect();
        assert_eq!(tags, [0, 1, 2, 3, 4, 5]);
    }
}
