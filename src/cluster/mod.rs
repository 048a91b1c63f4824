//! This node's view of the cluster: who leads, who the members are, how to reach them, how
//! a brand-new cluster is founded, and how the other members' health is watched.
//!
//! Everything above this layer (the write and read paths, HTTP) asks *here* whether this
//! node leads and where the leader is ([`Cluster::leader`], [`LeaderWatch`]), so that
//! question has one answer and one way of waiting for it to change.
//!
//! - [`proto`]: every node-to-node message and path.
//! - [`peer`]: the HTTP client for node-to-node application traffic.
//! - [`bootstrap`] and [`discovery`]: founding a brand-new cluster exactly once.
//! - [`monitor`]: periodic health checks of the other members.
//! - [`install_quiet`]: no campaigning from a follower busy installing a snapshot.
//! - [`identity`]: the leader registers members' incarnations, so a node whose data was lost
//!   cannot come back as the member it was.
//! - [`membership`]: adding, promoting and removing members, on the leader, one at a time;
//!   [`join`]: a new node asking the cluster to add it; [`handover`]: a leader that stops
//!   hands leadership over first; [`failstop`]: a node whose storage fails stops;
//!   [`own_place`]: a node whose data and config describe different members does not start.
//! - [`snapshots`]: when this node builds a snapshot, weighing the log against the state.

pub mod bootstrap;
pub mod discovery;
pub mod expiry;
pub mod failstop;
pub mod handover;
pub mod identity;
pub mod install_quiet;
pub mod join;
pub mod joint;
pub mod membership;
pub mod monitor;
pub mod own_place;
pub mod peer;
pub mod proto;
pub mod prove;
pub mod snapshots;

use std::sync::Arc;
use std::time::Duration;

use cookie_raft::{Identity, NodeId, Raft};
use openraft::ServerState;
use tokio::time::Instant;

use peer::PeerClient;

/// Raft, this node's id, its identity and the peer client: what every layer above needs to
/// ask who leads and to reach the other members. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    pub raft: Raft,
    pub me: NodeId,
    pub peers: PeerClient,
    /// This node's incarnation and the cluster's identity registry ([`identity`]).
    pub identity: Arc<Identity>,
    /// Held by the membership change being made on this node ([`membership`]).
    pub changes: Arc<tokio::sync::Mutex<()>>,
    /// Set by a leader that is handing leadership over before it stops ([`handover`]): it
    /// then answers as a node that does not lead.
    pub stepping_down: Arc<std::sync::atomic::AtomicBool>,
    /// Whether this node has CPU to spare, as group commit last measured it; this node's
    /// replication streams read it ([`cookie_raft::idle::SpareCpu`]).
    pub spare_cpu: cookie_raft::idle::SpareCpu,
    /// Set when the leader answered this node's own removal ([`membership`]): the position
    /// of the membership this node held then ([`membership_position`]; 0: never told). A
    /// removed voter is sent nothing after the entry that removes it, so its own membership
    /// may go on naming it; while that membership is the one it held when told, it knows it
    /// is out (a later one, as a re-add brings, ends this). An atomic: every write and read
    /// looks at it on its way to the leader.
    pub removed_in: Arc<std::sync::atomic::AtomicU64>,
}

/// Where a membership stands in this node's log, for [`Cluster::removed_in`]: its entry's
/// index plus 2 (1 for the membership before any entry), so that 0 is left for "never".
/// Memberships follow one another up the log, so a later one stands higher.
pub fn membership_position(
    held: &openraft::StoredMembership<NodeId, cookie_raft::CookieNode>,
) -> u64 {
    held.log_id().map_or(1, |l| l.index.saturating_add(2))
}

/// Who leads, as this node sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leader {
    /// This node.
    Me,
    /// Another node, reachable at this address.
    At(String),
    /// No leader known (an election is running), or one whose address is not in the
    /// membership this node has applied yet.
    Unknown,
}

/// One other member, from the replicated membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub name: String,
    /// The address this node uses to reach it.
    pub addr: String,
}

/// A node's Raft role, as the API names it.
pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Learner => "learner",
        ServerState::Candidate => "candidate",
        ServerState::Shutdown => "shutdown",
    }
}

/// Longest pause between two looks at the leader while waiting for one, when openraft's
/// metrics do not change (a follower can learn a leader's address late).
const LEADER_POLL: Duration = Duration::from_millis(50);

impl Cluster {
    /// The current leader as this node sees it, from openraft's server metrics: the channel
    /// [`LeaderWatch`] waits on, which openraft updates before the full metrics, so a watch
    /// woken by a new leader reads that leader here.
    pub fn leader(&self) -> Leader {
        let m = self.raft.server_metrics();
        let m = m.borrow();
        match cookie_raft::types::acting_leader(self.me, m.state, m.current_leader) {
            Some(l) if l == self.me => {
                if self.stepping_down.load(std::sync::atomic::Ordering::SeqCst) {
                    Leader::Unknown
                } else {
                    Leader::Me
                }
            }
            Some(l) => m
                .membership_config
                .membership()
                .get_node(&l)
                .map_or(Leader::Unknown, |n| Leader::At(self.peers.addr(l, n))),
            None => Leader::Unknown,
        }
    }

    /// Whether the leader told this node it is out ([`Cluster::removed_in`]), and no
    /// membership since names it again. The membership it held when told may still name it
    /// (the entry that removes it never came), and so may a later joint one on the way out,
    /// in its first half only; a re-add names it as a learner or in the last half.
    pub fn told_removed(
        &self,
        held: &openraft::StoredMembership<NodeId, cookie_raft::CookieNode>,
    ) -> bool {
        let at = self.removed_in.load(std::sync::atomic::Ordering::Acquire);
        if at == 0 {
            return false;
        }
        if membership_position(held) <= at {
            return true;
        }
        let m = held.membership();
        let voter_after = m
            .get_joint_config()
            .last()
            .is_some_and(|c| c.contains(&self.me));
        let learner = m.learner_ids().any(|id| id == self.me);
        !(voter_after || learner)
    }

    /// Whether this node leads now.
    pub fn is_leader(&self) -> bool {
        let m = self.raft.server_metrics();
        let m = m.borrow();
        cookie_raft::types::acting_leader(self.me, m.state, m.current_leader) == Some(self.me)
            && !self.stepping_down.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Look at the leader now, then again each time it may have changed, until `deadline`.
    pub fn watch_leader(&self, deadline: Instant) -> LeaderWatch {
        LeaderWatch {
            cluster: self.clone(),
            rx: self.raft.server_metrics(),
            deadline,
            first: true,
        }
    }

    /// The other members, from the replicated membership.
    pub fn other_members(&self) -> Vec<Member> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.me)
            .map(|(id, n)| Member {
                id: *id,
                name: n.name.clone(),
                addr: self.peers.addr(*id, n),
            })
            .collect()
    }

    /// The name of node `id` from the replicated membership (`node{id}` if unknown).
    pub fn node_name(&self, id: NodeId) -> String {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .get_node(&id)
            .map_or_else(|| format!("node{id}"), |n| n.name.clone())
    }
}

/// The one way to wait for a usable leader: the write path and the read path both try the
/// leader [`LeaderWatch::next`] names, and call it again when that did not work.
pub struct LeaderWatch {
    cluster: Cluster,
    /// The server metrics: they change when the leader, role, vote or membership does, not
    /// on every turn of openraft's loop as the full metrics do.
    rx: tokio::sync::watch::Receiver<
        openraft::metrics::RaftServerMetrics<NodeId, cookie_raft::CookieNode>,
    >,
    deadline: Instant,
    first: bool,
}

impl LeaderWatch {
    /// The leader now on the first call; on later calls, the leader after openraft's
    /// metrics change (or `LEADER_POLL` passes). `None` once the deadline has passed.
    pub async fn next(&mut self) -> Option<Leader> {
        if !self.first {
            let now = Instant::now();
            if now >= self.deadline {
                return None;
            }
            let pause = (self.deadline - now).min(LEADER_POLL);
            let _ = tokio::time::timeout(pause, self.rx.changed()).await;
        }
        self.first = false;
        let (told, removed) = {
            let m = self.rx.borrow_and_update();
            let membership = m.membership_config.membership();
            (
                self.cluster.told_removed(&m.membership_config),
                membership.nodes().next().is_some()
                    && membership.get_node(&self.cluster.me).is_none(),
            )
        };
        match self.cluster.leader() {
            // Told by the leader it is out: it serves the cluster no more, whatever leader
            // it last heard of (it forwarded writes to it, and waited out each request's
            // timeout once it campaigned).
            _ if told => None,
            // Removed from the membership: no leader will ever tell this node about itself,
            // so waiting out the deadline would only delay the same answer.
            Leader::Unknown if removed => None,
            leader => Some(leader),
        }
    }
}
