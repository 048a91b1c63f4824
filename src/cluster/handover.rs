//! A leader that is asked to stop (SIGTERM: a rolling restart, a pod rescheduled) hands
//! leadership over before it closes its listeners, so that no request meets a closed port
//! on the way and the cluster is without a leader for about one election round.
//!
//! openraft 0.9 has no leadership transfer, and its voters refuse to vote while the
//! leader's lease (`election_timeout_max`) runs: every AppendEntries, heartbeat or not,
//! renews it. The transfer is the Raft thesis' (section 3.10), built on a patch that lets a
//! leader release its voters from its lease (`Trigger::release_lease`, `vendor/README.md`):
//! 1. the leader stops proposing: [`Cluster::leader`] and [`Cluster::is_leader`] answer as
//!    if it did not lead, so new writes and read-index requests here (and those forwarded
//!    to it) wait for the next leader and go there; entries already proposed still
//!    replicate. It turns off its heartbeats and its own elections;
//! 2. it waits (at most [`CATCH_UP`]) for voters whose logs hold all of its own;
//! 3. it releases itself and every other voter from its lease ([`Handover`], on the peer
//!    listener), and once enough have answered for a majority, asks one of the caught-up
//!    voters to campaign at once (those that answered first; the next when one cannot): it
//!    wins with the votes of the leader and of the others, since its log is as long as any
//!    of theirs;
//! 4. once another leader is known (or a bound passes, which every wait above ends by), the
//!    node stops as usual: its client listener drains, then its peer listener (a read that
//!    came in meanwhile takes its read index from the new leader and waits for this node to
//!    apply it, which needs the new leader's appends), then Raft shuts down.
//!
//! Any step that fails leaves the fallback: with heartbeats off, the voters' leases run
//! out and one of them campaigns, one lease and an election timeout later.
//!
//! A release is tied to the leader's vote: a voter whose vote has moved on (a newer leader,
//! a vote it gave since) ignores it, and it lapses when the voter's vote changes. It never
//! loosens the log check, so no voter grants a candidate with a shorter log. The lease
//! keeps a partitioned or restarted node from unseating a working leader; the leader
//! itself waiving it cannot do that. Linearizable reads do not rely on it: a read is
//! confirmed by a quorum round (`read::rounds`).
//!
//! Requests that arrive here meanwhile are served: they wait for the new leader and are
//! forwarded to it, within their own timeout.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cookie_raft::NodeId;
use futures::stream::{FuturesUnordered, StreamExt};
use openraft::{LogId, Vote};
use tokio::time::Instant;

use super::proto::{Handover, HandoverReply};
use super::Cluster;

/// How long a stopping leader waits for a voter to hold all of its log before it gives the
/// transfer up (and leaves the leases to run out).
pub const CATCH_UP: Duration = Duration::from_secs(2);
/// How long each voter has to answer a [`Handover`].
const ASK: Duration = Duration::from_millis(500);

impl Cluster {
    /// Hand leadership over if this node leads a cluster of more than one voter; `true`
    /// when another node leads at the end. Waits at most `bound`.
    pub async fn step_down(&self, bound: Duration) -> bool {
        let voters = self.members().voters.len();
        if !self.is_leader() || voters < 2 {
            return false;
        }
        tracing::info!("stopping: handing leadership over first");
        self.stepping_down.store(true, Ordering::SeqCst);
        let config = self.raft.runtime_config();
        config.heartbeat(false);
        config.elect(false);
        let started = Instant::now();
        let deadline = started + bound;
        self.transfer(deadline).await;
        let mut rx = self.raft.metrics();
        loop {
            let leader = rx.borrow_and_update().current_leader;
            if leader.is_some_and(|l| l != self.me) {
                tracing::info!(leader = ?leader, "leadership handed over");
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    "no other leader after {:?} (the bound); stopping anyway",
                    started.elapsed()
                );
                return false;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), rx.changed()).await;
        }
    }

    /// Hand leadership over as [`Cluster::step_down`] does, for a leader that goes on
    /// running: one asked to remove itself. `true` when another node leads at the end; the
    /// removal is then made there, as a follower's. Either way this node's heartbeats and
    /// elections are turned back on: it is still a voter until the removal commits.
    ///
    /// Removing itself directly, the leader led until the membership without it committed
    /// and then stopped sending heartbeats, and the others waited out its lease and an
    /// election timeout: writes stalled 3.35-3.7 s (found in review).
    pub async fn step_aside(&self, bound: Duration) -> bool {
        let handed = self.step_down(bound).await;
        self.stepping_down.store(false, Ordering::SeqCst);
        let config = self.raft.runtime_config();
        config.heartbeat(true);
        config.elect(true);
        handed
    }

    /// Steps 2 and 3 of the module's list; on any failure the leases run out instead. Every
    /// wait ends by `deadline`.
    async fn transfer(&self, deadline: Instant) {
        let ask = || ASK.min(deadline.saturating_duration_since(Instant::now()));
        let Some((targets, vote)) = self
            .caught_up_voters(deadline.min(Instant::now() + CATCH_UP))
            .await
        else {
            tracing::warn!(
                "no voter holds all of this leader's log; the next leader is elected once \
                 the lease runs out"
            );
            return;
        };
        if let Err(e) = self.raft.trigger().release_lease(vote).await {
            tracing::warn!("cannot release this leader's own lease: {e}");
            return;
        }
        let voters = self.members().voters;
        let others: Vec<_> = self
            .other_members()
            .into_iter()
            .filter(|m| voters.contains(&m.id))
            .collect();
        // Every other voter is released, each by a task of its own. A candidate needs a
        // majority: its own vote, this leader's, and enough released voters; so the campaign
        // is asked for once that many have answered, not after a voter that does not answer
        // (paused, cut off) has held everyone for `ASK`.
        let release = Handover {
            vote,
            campaign: false,
        };
        let mut answers: FuturesUnordered<_> = others
            .iter()
            .map(|m| {
                let (peers, addr, id, release) =
                    (self.peers.clone(), m.addr.clone(), m.id, release.clone());
                let ask = ask();
                tokio::spawn(async move { (id, peers.handover(&addr, &release, ask).await) })
            })
            .collect();
        let needed = (voters.len() / 2 + 1).saturating_sub(1);
        let mut released = Vec::new();
        while released.len() < needed {
            let Ok(answer) = tokio::time::timeout_at(deadline, answers.next()).await else {
                break;
            };
            match answer {
                Some(Ok((id, Ok(HandoverReply::Done)))) => released.push(id),
                Some(Ok((id, Ok(HandoverReply::Refused(why))))) => {
                    tracing::info!(node = id, "not released: {why}")
                }
                Some(Ok((id, Err(e)))) => tracing::info!(node = id, "not released: {e}"),
                Some(Err(e)) => tracing::warn!("a release did not finish: {e}"),
                None => break,
            }
        }
        // The rest finish on their own, within `ASK`.
        drop(answers);
        let campaign = Handover {
            vote,
            campaign: true,
        };
        // Those that answered first: a voter that did not may be down, though its log
        // looked caught up a moment ago.
        let (answered, silent): (Vec<NodeId>, Vec<NodeId>) =
            targets.into_iter().partition(|id| released.contains(id));
        for target in answered.into_iter().chain(silent) {
            let Some(member) = others.iter().find(|m| m.id == target) else {
                continue;
            };
            let ask = ask();
            if ask.is_zero() {
                tracing::warn!("no voter campaigned within the bound");
                return;
            }
            match self.peers.handover(&member.addr, &campaign, ask).await {
                Ok(HandoverReply::Done) => {
                    tracing::info!(node = target, "handing leadership to node {target}");
                    return;
                }
                Ok(HandoverReply::Refused(why)) => {
                    tracing::warn!(node = target, "node {target} does not campaign: {why}")
                }
                Err(e) => tracing::warn!(node = target, "node {target} does not campaign: {e}"),
            }
        }
    }

    /// Wait until voters hold every entry this leader has, at most until `deadline`: those
    /// voters, and this leader's vote. `None` when none does in time or this node no longer
    /// leads with a committed vote.
    async fn caught_up_voters(&self, deadline: Instant) -> Option<(Vec<NodeId>, Vote<NodeId>)> {
        let mut rx = self.raft.metrics();
        loop {
            {
                let m = rx.borrow_and_update();
                if !m.vote.is_committed() || m.vote.leader_id().voted_for() != Some(self.me) {
                    return None;
                }
                let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
                let matched = m.replication.as_ref()?;
                let targets = caught_up(&voters, self.me, matched, m.last_log_index);
                if !targets.is_empty() {
                    return Some((targets, m.vote));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), rx.changed()).await;
        }
    }

    /// A voter told by its leader that the leader hands over ([`Handover`]): release the
    /// lease, and campaign when asked, if that leader's vote is this node's own vote.
    pub async fn handed_over(&self, msg: &Handover) -> HandoverReply {
        let (vote, voter) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let voter = m
                .membership_config
                .membership()
                .voter_ids()
                .any(|id| id == self.me);
            (m.vote, voter)
        };
        if !msg.vote.is_committed() || vote != msg.vote {
            return HandoverReply::Refused(format!(
                "this node's vote is {vote}, not the sender's leadership {}",
                msg.vote
            ));
        }
        if !voter {
            return HandoverReply::Refused("this node is not a voter".into());
        }
        if let Err(e) = self.raft.trigger().release_lease(msg.vote).await {
            return HandoverReply::Refused(e.to_string());
        }
        if msg.campaign {
            tracing::info!(
                leader = msg.vote.leader_id().voted_for(),
                "the leader hands leadership over to this node: campaigning"
            );
            if let Err(e) = self.raft.trigger().elect().await {
                return HandoverReply::Refused(e.to_string());
            }
        }
        HandoverReply::Done
    }
}

/// Of `voters` other than `me`, those whose matched log reaches `last` (this leader's last
/// index), by id. Empty while none does.
fn caught_up(
    voters: &[NodeId],
    me: NodeId,
    matched: &BTreeMap<NodeId, Option<LogId<NodeId>>>,
    last: Option<u64>,
) -> Vec<NodeId> {
    let Some(last) = last else {
        return Vec::new();
    };
    let mut out: Vec<NodeId> = voters
        .iter()
        .copied()
        .filter(|id| *id != me)
        .filter(|id| {
            matched
                .get(id)
                .copied()
                .flatten()
                .is_some_and(|l| l.index >= last)
        })
        .collect();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn at(index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(CommittedLeaderId::new(3, 1), index))
    }

    /// Only voters that hold all of the leader's log are asked to campaign: a learner, a
    /// voter behind, or one whose match is unknown never is.
    #[test]
    fn the_targets_hold_all_of_the_leaders_log() {
        let matched = BTreeMap::from([(2, at(9)), (3, at(10)), (4, None), (5, at(12))]);
        assert_eq!(caught_up(&[1, 2, 3, 4, 5], 1, &matched, Some(10)), [3, 5]);
        assert_eq!(caught_up(&[1, 2, 3, 4], 1, &matched, Some(10)), [3]);
        assert!(caught_up(&[1, 2, 4], 1, &matched, Some(10)).is_empty());
        // Node 5 is caught up but not a voter (a learner).
        assert!(caught_up(&[1, 2], 1, &matched, Some(12)).is_empty());
        assert!(caught_up(&[1, 2, 3], 1, &matched, None).is_empty());
        assert!(caught_up(&[1], 1, &matched, Some(1)).is_empty());
    }
}
