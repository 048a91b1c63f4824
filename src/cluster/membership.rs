//! Membership changes (api.md section 9): add a node (as a learner, then, for a voter,
//! promote it once it has caught up), promote a learner, remove a node. Any node takes a
//! change and forwards it to the leader, which makes it with openraft's `add_learner` and
//! `change_membership` (joint consensus), one at a time.
//!
//! Adding a node first asks it who it is, on its peer listener (`GET /cluster`, with the
//! peer credential): its id must be the one requested, it must not belong to another
//! cluster, and its answer is how the leader learns the new data's incarnation (a
//! successful reply, as in discovery; never a request's own claim: `cookie_raft::identity`).
//! A removed member leaves the identity registry, so a node with fresh data can take its
//! id again (replacing a node whose disk died).
//!
//! A leader asked to remove itself hands leadership over first (`handover`), and the new
//! leader removes it as any follower. When no voter can take over in time, it removes itself:
//! it leads until the membership without it commits, then steps down (openraft), and the
//! others elect a leader once its lease and an election timeout have passed.

use std::collections::BTreeSet;
use std::time::Duration;

use cookie_raft::identity::hex;
use cookie_raft::{CookieNode, NodeId};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use serde::Deserialize;
use tokio::time::Instant;

use super::discovery::PeerInfo;
pub use super::proto::{Change, ChangeError, MemberView, Members};
use super::{Cluster, Leader};
use crate::config::{derived_peer_addr, is_host_port};

/// How long a new learner may take to catch up before the add answers `Unfinished` (it
/// stays a learner and goes on catching up; promote it later).
pub const CATCH_UP: Duration = Duration::from_secs(60);
/// How long one `change_membership` may take to commit before the request is answered
/// `Unfinished` (the change goes on: [`Cluster::commit`]).
pub(super) const COMMIT: Duration = Duration::from_secs(10);
/// How long a leader asked to remove itself tries to hand leadership over first.
const STEP_ASIDE: Duration = Duration::from_secs(3);
/// How long the leader waits for the node to add to answer who it is.
const PROBE: Duration = Duration::from_secs(2);
/// How many entries behind the leader's log a learner may be when it is promoted: about a
/// second of entries under full load (each entry holds a batch of writes).
const PROMOTE_LAG: u64 = 1000;

impl Cluster {
    /// The membership as this node has applied it.
    pub fn members(&self) -> Members {
        let m = self.raft.metrics();
        let m = m.borrow();
        Members::of(m.membership_config.membership())
    }

    /// Make `change` on the leader, wherever it is: here, or forwarded. Waits for a leader
    /// until `deadline`.
    ///
    /// A node asked to remove itself may be out already without knowing it: the leader sends
    /// a removed voter nothing after the entry that removes it, so it can stay in the joint
    /// membership, campaigning and hearing no leader (found in review: `leave` run again on
    /// such a node waited 25 s and said it was still a member). When it has known no leader
    /// for two election timeouts, the members it names are asked to forward the change to
    /// theirs: the leader answers that it is no member, or removes it.
    pub async fn change_membership(
        &self,
        change: Change,
        deadline: Instant,
    ) -> Result<Members, ChangeError> {
        if !matches!(change, Change::Remove { id } if id == self.me) {
            return self.change_through_leader(change, deadline).await;
        }
        let alone_for = Duration::from_millis(self.raft.config().election_timeout_max * 2);
        let first = deadline.min(Instant::now() + alone_for);
        let result = match self.change_through_leader(change.clone(), first).await {
            Err(ChangeError::NoLeader) => self.change_through_members(&change, deadline).await,
            other => other,
        };
        // The leader's answer says this node is out, which its own membership may never
        // say (a leader that handed over is then removed as a follower): from now on it
        // answers writes and reads 503 at once, where it waited out each request's timeout
        // for a leader (found in review of the handover).
        if matches!(&result, Ok(m) if !m.members.iter().any(|v| v.id == self.me))
            || matches!(result, Err(ChangeError::NotMember))
        {
            let held = super::membership_position(&self.raft.metrics().borrow().membership_config);
            self.removed_in
                .store(held, std::sync::atomic::Ordering::Release);
            tracing::info!("this node is no longer a member; it answers 503 until re-added");
        }
        result
    }

    /// Ask each other member this node names, in turn, to make `change` (the peer route a
    /// joining node uses: a member forwards it to its leader), until one answers for the
    /// leader or `deadline` passes.
    async fn change_through_members(
        &self,
        change: &Change,
        deadline: Instant,
    ) -> Result<Members, ChangeError> {
        let mut last = ChangeError::NoLeader;
        for member in self.other_members() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.peers.forward_change(&member.addr, change, left).await {
                Err(
                    e @ (ChangeError::NotLeader
                    | ChangeError::NoLeader
                    | ChangeError::Unreachable(_)),
                ) => last = e,
                answered => return answered,
            }
        }
        Err(last)
    }

    /// [`Cluster::change_membership`] through the leader this node knows.
    async fn change_through_leader(
        &self,
        change: Change,
        deadline: Instant,
    ) -> Result<Members, ChangeError> {
        let mut watch = self.watch_leader(deadline);
        while let Some(leader) = watch.next().await {
            let result = match leader {
                Leader::Me => self.change_here(change.clone()).await,
                Leader::At(addr) => {
                    self.peers
                        .forward_change(&addr, &change, CATCH_UP + COMMIT)
                        .await
                }
                Leader::Unknown => continue,
            };
            match result {
                Err(ChangeError::NotLeader) => continue,
                other => return other,
            }
        }
        Err(ChangeError::NoLeader)
    }

    /// Make `change` here, on the leader (a node that does not lead answers `NotLeader`).
    pub async fn change_here(&self, change: Change) -> Result<Members, ChangeError> {
        if !self.is_leader() {
            return Err(ChangeError::NotLeader);
        }
        let _one_at_a_time = self
            .changes
            .try_lock()
            .map_err(|_| ChangeError::InProgress)?;
        tracing::info!(?change, "membership change");
        let result = match change {
            Change::Add { id, node, voter } => self.add(id, node, voter).await,
            Change::Promote { id } => self.promote(id, Instant::now() + CATCH_UP).await,
            Change::Remove { id } => self.remove(id).await,
        };
        match &result {
            Ok(m) => tracing::info!(voters = ?m.voters, learners = ?m.learners, "membership now"),
            Err(ChangeError::NotLeader) => {
                tracing::info!("leadership handed over: the new leader makes the change")
            }
            Err(e) => tracing::warn!("membership change not made: {e}"),
        }
        result
    }

    async fn add(&self, id: NodeId, node: CookieNode, voter: bool) -> Result<Members, ChangeError> {
        let now = self.members();
        if let Some(m) = now.members.iter().find(|m| m.id == id) {
            if m.addr != node.addr || m.peer_addr != node.peer_addr {
                return Err(ChangeError::Conflict(format!(
                    "node {id} is already a member, at {} (peer {}); remove it first to \
                     replace it",
                    m.addr, m.peer_addr
                )));
            }
            // Asked again (a retry, or a node that joins again): finish what was asked.
            return if voter && !m.voter {
                self.promote(id, Instant::now() + CATCH_UP).await
            } else {
                Ok(now)
            };
        }
        if let Some(clash) = address_clash(&now, id, &node) {
            return Err(clash);
        }
        self.ask_who(id, &node).await?;
        // openraft's own wait counts a learner that holds nothing as at index 0, so within
        // its lag threshold of a short log: `promote` waits for more.
        let deadline = Instant::now() + CATCH_UP;
        let added = tokio::time::timeout_at(deadline, self.raft.add_learner(id, node, true)).await;
        match added {
            Err(_) => {
                return Err(ChangeError::Unfinished(format!(
                    "node {id} was added as a learner and is still catching up; \
                     promote it once it has"
                )))
            }
            Ok(r) => {
                r.map_err(openraft_error)?;
            }
        }
        if voter {
            return self.promote(id, deadline).await;
        }
        Ok(self.members())
    }

    /// Ask the node to add who it is, on its peer listener, and for proof that it holds the
    /// cluster secret (`super::prove`): the address comes from the request, and whoever
    /// names it must not get the secret by naming their own.
    async fn ask_who(&self, id: NodeId, node: &CookieNode) -> Result<(), ChangeError> {
        // The address asked, named in every refusal: the recorded one may be empty (the
        // client address is used) or overridden.
        let addr = self.peers.addr(id, node);
        let reply = self.peers.prove(&addr, PROBE).await.map_err(|e| {
            ChangeError::Unreachable(format!(
                "node {id} does not answer at its peer address {addr}: {e}"
            ))
        })?;
        let info = PeerInfo::from_cluster_json(&reply)
            .ok_or_else(|| ChangeError::Unreachable(format!("{addr} gave no node id")))?;
        if info.id != id {
            return Err(ChangeError::Invalid(format!(
                "{addr} answers as node {}, not {id}",
                info.id
            )));
        }
        if let Some(refused) = foreign(&info, self.identity.registry().cluster) {
            return Err(refused);
        }
        if let Some(incarnation) = info.incarnation {
            self.identity.observe(id, incarnation);
        }
        Ok(())
    }

    /// Make learner `id` a voter, once it has caught up ([`Cluster::caught_up`]), waiting
    /// for that until `deadline`.
    async fn promote(&self, id: NodeId, deadline: Instant) -> Result<Members, ChangeError> {
        let now = self.members();
        match now.members.iter().find(|m| m.id == id) {
            None => return Err(ChangeError::NotMember),
            Some(m) if m.voter => return Ok(now),
            Some(_) => {}
        }
        self.caught_up(id, deadline).await?;
        self.commit(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
            .await
    }

    /// Wait, until `deadline`, for learner `id` to hold the leader's log as it was when the
    /// wait began and to be within [`PROMOTE_LAG`] entries of its end. A voter that holds
    /// nothing yet counts toward no commit, yet its vote is needed: promoted at once (as
    /// openraft's own wait allowed), a learner that could not install a snapshot made a
    /// cluster of four that could not lose one node (found in review).
    async fn caught_up(&self, id: NodeId, deadline: Instant) -> Result<(), ChangeError> {
        let mut metrics = self.raft.metrics();
        let target = metrics.borrow().last_log_index.unwrap_or(0);
        loop {
            {
                let m = metrics.borrow_and_update();
                let Some(replication) = &m.replication else {
                    return Err(ChangeError::NotLeader);
                };
                let matched = replication.get(&id).copied().flatten().map(|l| l.index);
                let end = m.last_log_index.unwrap_or(0);
                if matched.is_some_and(|i| i >= target && end.saturating_sub(i) <= PROMOTE_LAG) {
                    return Ok(());
                }
            }
            let wait = tokio::time::timeout_at(deadline, metrics.changed()).await;
            if !matches!(wait, Ok(Ok(()))) {
                return Err(ChangeError::Unfinished(format!(
                    "node {id} is a learner and has not caught up yet; it is promoted when \
                     asked again once it has"
                )));
            }
        }
    }

    async fn remove(&self, id: NodeId) -> Result<Members, ChangeError> {
        let now = self.members();
        let Some(m) = now.members.iter().find(|m| m.id == id) else {
            return Err(ChangeError::NotMember);
        };
        let change = if m.voter {
            if now.voters == [id] {
                return Err(ChangeError::Invalid(format!(
                    "node {id} is the only voter; add another before removing it"
                )));
            }
            // The leader removing itself hands leadership over first; the caller then
            // takes the change to the new leader ([`Cluster::change_membership`] goes on
            // after `NotLeader`). When no one takes over in time, it is made here.
            if id == self.me && self.step_aside(STEP_ASIDE).await {
                return Err(ChangeError::NotLeader);
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.commit(change).await
    }

    /// Commit a membership change (joint consensus, both steps) and answer the membership
    /// it made. `retain = false`: a removed voter leaves the membership altogether.
    ///
    /// openraft proposes the second step (the new voters alone) in the same call, once the
    /// first (old and new voters, each majority needed) commits. The call runs apart, so
    /// that neither the timeout here nor a client that goes away drops it between the two:
    /// that left the cluster in the joint configuration, which could not lose a node it
    /// could lose before (found in review: a removal that timed out while a voter was
    /// paused committed its first step later, and stayed there). A leader that loses
    /// leadership between the steps ends the call; its successor finishes the change
    /// ([`super::joint`]).
    pub(super) async fn commit(
        &self,
        change: ChangeMembers<NodeId, CookieNode>,
    ) -> Result<Members, ChangeError> {
        let raft = self.raft.clone();
        let call = tokio::spawn(async move { raft.change_membership(change, false).await });
        let resp = tokio::time::timeout(COMMIT, call)
            .await
            .map_err(|_| {
                ChangeError::Unfinished(
                    "the membership change did not commit in time; it goes on, and completes \
                     once a quorum of the old and of the new voters answers"
                        .into(),
                )
            })?
            .map_err(|e| ChangeError::Unfinished(e.to_string()))?
            .map_err(openraft_error)?;
        Ok(resp
            .membership
            .as_ref()
            .map_or_else(|| self.members(), Members::of))
    }
}

fn openraft_error(e: RaftError<NodeId, ClientWriteError<NodeId, CookieNode>>) -> ChangeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ChangeError::NotLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => match c {
            ChangeMembershipError::InProgress(_) => ChangeError::InProgress,
            ChangeMembershipError::LearnerNotFound(_) => ChangeError::NotMember,
            other => ChangeError::Invalid(other.to_string()),
        },
        RaftError::Fatal(f) => ChangeError::Unfinished(f.to_string()),
    }
}

/// What `POST /cluster/members` takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    pub id: NodeId,
    pub addr: String,
    pub peer_addr: Option<String>,
    pub name: Option<String>,
    /// `learner` or `voter` (the default).
    pub role: Option<String>,
}

/// Why a node that answered `info` may not be added to cluster `ours`, if it may not: it has
/// Raft state, and not ours. A node that founded a cluster of its own has a vote and a log
/// of another history, and its cluster id is registered only a moment after it founds it;
/// so Raft state without our cluster id is refused too, registered or not (issue 15: a
/// standalone node added in that moment answered the leader with its own vote, and the
/// two histories mixed). A node that left this cluster and comes back with its data names
/// our id, and may.
fn foreign(info: &PeerInfo, ours: Option<u64>) -> Option<ChangeError> {
    if !info.initialized || (info.cluster.is_some() && info.cluster == ours) {
        return None;
    }
    Some(ChangeError::Conflict(format!(
        "node {} already has Raft state of another cluster ({}); give it empty data to add it",
        info.id,
        info.cluster
            .map_or_else(|| "not yet registered".to_owned(), hex)
    )))
}

/// Why node `id` at `node`'s addresses may not join `members`, if it may not: another
/// member already has one of them (as its client or its peer address). Two members at one
/// address would be one process answering for two ids; the probe of who it is would catch
/// a different id, but not an address given for the wrong listener.
fn address_clash(members: &Members, id: NodeId, node: &CookieNode) -> Option<ChangeError> {
    let mine = [("addr", &node.addr), ("peer_addr", &node.peer_addr)];
    for m in members.members.iter().filter(|m| m.id != id) {
        for (field, a) in mine {
            if *a == m.addr || *a == m.peer_addr {
                return Some(ChangeError::Invalid(format!(
                    "{field} {a} is already node {}'s address (client {}, peer {})",
                    m.id, m.addr, m.peer_addr
                )));
            }
        }
    }
    None
}

impl AddRequest {
    /// The change it asks for, or why it is not one.
    pub fn change(self) -> Result<Change, ChangeError> {
        if self.id == 0 {
            return Err(ChangeError::Invalid("id must be at least 1".into()));
        }
        if !is_host_port(&self.addr) {
            return Err(ChangeError::Invalid(format!(
                "addr {:?} is not host:port",
                self.addr
            )));
        }
        let peer_addr = match self.peer_addr {
            Some(p) => p,
            None => derived_peer_addr(&self.addr).map_err(ChangeError::Invalid)?,
        };
        if !is_host_port(&peer_addr) || peer_addr == self.addr {
            return Err(ChangeError::Invalid(format!(
                "peer_addr {peer_addr:?} is not a host:port of its own"
            )));
        }
        let voter = match self.role.as_deref() {
            None | Some("voter") => true,
            Some("learner") => false,
            Some(other) => {
                return Err(ChangeError::Invalid(format!(
                    "role {other:?} is not learner or voter"
                )))
            }
        };
        let name = self.name.unwrap_or_else(|| format!("node{}", self.id));
        Ok(Change::Add {
            id: self.id,
            node: CookieNode::new(self.addr, peer_addr, name),
            voter,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: serde_json::Value) -> Result<Change, ChangeError> {
        serde_json::from_value::<AddRequest>(json).unwrap().change()
    }

    #[test]
    fn an_add_request_is_checked_and_defaults_filled() {
        let c = req(serde_json::json!({"id": 4, "addr": "h:8084"})).unwrap();
        assert_eq!(
            c,
            Change::Add {
                id: 4,
                node: CookieNode::new("h:8084", "h:9084", "node4"),
                voter: true
            }
        );
        let c = req(
            serde_json::json!({"id": 5, "addr": "h:1", "peer_addr": "h:2",
            "role": "learner", "name": "replica"}),
        )
        .unwrap();
        assert!(matches!(c, Change::Add { voter: false, .. }));
        for bad in [
            serde_json::json!({"id": 0, "addr": "h:1"}),
            serde_json::json!({"id": 4, "addr": "nowhere"}),
            serde_json::json!({"id": 4, "addr": "no such host/?#:1"}),
            serde_json::json!({"id": 4, "addr": "h:1", "peer_addr": "a b:2"}),
            serde_json::json!({"id": 4, "addr": "h:1", "peer_addr": "h:1"}),
            serde_json::json!({"id": 4, "addr": "h:1", "role": "boss"}),
        ] {
            assert!(
                matches!(req(bad.clone()), Err(ChangeError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_new_member_may_not_take_another_members_address() {
        let view = |id: NodeId, addr: &str, peer: &str| MemberView {
            id,
            name: format!("node{id}"),
            addr: addr.into(),
            peer_addr: peer.into(),
            voter: true,
        };
        let members = Members {
            members: vec![view(1, "h:8081", "h:9081"), view(2, "h:8082", "h:9082")],
            voters: vec![1, 2],
            learners: vec![],
        };
        for (addr, peer, named) in [
            ("h:8081", "h:9084", "addr h:8081 is already node 1's"),
            ("h:8084", "h:9082", "peer_addr h:9082 is already node 2's"),
            ("h:9081", "h:9084", "addr h:9081 is already node 1's"),
        ] {
            match address_clash(&members, 4, &CookieNode::new(addr, peer, "node4")) {
                Some(ChangeError::Invalid(e)) => assert!(e.contains(named), "{e}"),
                other => panic!("{addr} {peer}: {other:?}"),
            }
        }
        assert!(address_clash(&members, 4, &CookieNode::new("h:8084", "h:9084", "n")).is_none());
        // The same id again, at its own addresses: a retry, not a clash.
        assert!(address_clash(&members, 2, &CookieNode::new("h:8082", "h:9082", "n")).is_none());
    }

    #[test]
    fn a_node_with_raft_state_of_another_cluster_is_refused_registered_or_not() {
        let info = |initialized, cluster| PeerInfo {
            id: 4,
            name: "node4".into(),
            initialized,
            incarnation: Some(9),
            addr: None,
            cluster,
        };
        // Empty data: added, whatever it says of a cluster.
        assert!(foreign(&info(false, None), Some(7)).is_none());
        // A node that left this cluster and comes back with its data.
        assert!(foreign(&info(true, Some(7)), Some(7)).is_none());
        // Another cluster's, registered or only just founded (the regression).
        for (theirs, ours) in [(Some(8), Some(7)), (None, Some(7)), (None, None)] {
            assert!(
                matches!(
                    foreign(&info(true, theirs), ours),
                    Some(ChangeError::Conflict(_))
                ),
                "{theirs:?} in {ours:?}"
            );
        }
    }
}
