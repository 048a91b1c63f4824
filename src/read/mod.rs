//! The read path: the linearizable read barrier (ReadIndex), with shared confirmation
//! rounds.
//!
//! Before a `linearizable` read is served from this node's state, the leader confirms with a
//! quorum, by a heartbeat round that starts after the read arrived, that it is still the
//! leader, and names the read index (its commit index, at least its first entry of the term).
//! This node then waits until it has applied that index. Anything acknowledged before the
//! read began is committed at or below the read index, so the read sees it, whichever node
//! serves it. A leader cut off in a minority cannot get the quorum and serves nothing.
//!
//! Rounds are shared ([`rounds`]): on the leader, one quorum heartbeat serves every read
//! waiting when it starts; on a follower, one read-index RPC to the leader does (and the
//! leader shares those RPCs' rounds with its own reads).

pub mod rounds;

use std::sync::Arc;
use std::time::Duration;

use cookie_raft::{Raft, ReadFloor};
use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::time::Instant;

use crate::cluster::proto::ReadIndexReply;
use crate::cluster::{Cluster, Leader};
use crate::metrics::Metrics;
use crate::tasks::Tasks;
use rounds::Rounds;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// No leader could confirm a read index in time.
    #[error("no leader available")]
    NoLeader,
    /// The index was known but this node did not apply it in time.
    #[error("node has not applied the read index {0} yet")]
    Lagging(u64),
}

/// Ask the local Raft, as leader, for a read index (one quorum heartbeat round), raised to
/// `floor` while this node leads the term it was restored in as leader ([`ReadFloor`]).
async fn confirm_leadership(raft: &Raft, floor: Option<ReadFloor>) -> ReadIndexReply {
    let term = || raft.metrics().borrow().current_term;
    let round = async {
        match raft.get_read_log_id().await {
            Ok((read_log_id, _)) => Some(read_log_id.map_or(0, |l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => None,
            // Quorum not reached or the node is stopping: no index can be given.
            Err(_) => None,
        }
    };
    match floored(term, round, floor).await {
        Some(index) => ReadIndexReply::Index(index),
        None => ReadIndexReply::NotLeader,
    }
}

/// The index a confirmation `round` named, raised to `floor` when the round ran in the
/// floor's term. The term is taken before the round. Taken after it, a restored leader that
/// stepped down meanwhile would see a later term and drop the floor from an index its round
/// confirmed in the floor's term (issue 12, hole 3). Applying the floor is never unsafe (a
/// read only waits longer), and a node already leading a later term when the round starts
/// has its first entry of that term, which covers the floor, in the round's index.
async fn floored(
    term: impl Fn() -> u64,
    round: impl std::future::Future<Output = Option<u64>>,
    floor: Option<ReadFloor>,
) -> Option<u64> {
    let term = term();
    let index = round.await?;
    Some(match floor {
        Some(f) if f.term == term => index.max(f.index),
        _ => index,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// Issue 12, hole 3: the restored leader's round is confirmed in its term, then it steps
    /// down (the term moves on) before the answer is put together. The floor still applies:
    /// the index came from a round of the floor's term.
    #[tokio::test]
    async fn the_floor_holds_when_the_term_moves_on_during_the_round() {
        let term = AtomicU64::new(5);
        let floor = Some(ReadFloor { term: 5, index: 40 });
        let round = async {
            term.store(6, Ordering::SeqCst);
            Some(30)
        };
        let got = floored(|| term.load(Ordering::SeqCst), round, floor).await;
        assert_eq!(got, Some(40));
        // A round in a later term needs no floor; no round, no index.
        let got = floored(|| 6, async { Some(30) }, floor).await;
        assert_eq!(got, Some(30));
        assert_eq!(floored(|| 5, async { None }, floor).await, None);
    }
}

/// How the read path is tuned, and what it must know from start-up.
#[derive(Debug, Clone, Copy)]
pub struct ReadSettings {
    /// Bounds one confirmation round (the config's `read_timeout_ms`).
    pub round_timeout: Duration,
    /// The restored leader's read floor, if this node resumed as leader after a crash.
    pub floor: Option<ReadFloor>,
}

/// This node's read-index service.
#[derive(Clone)]
pub struct ReadIndex {
    cluster: Cluster,
    /// Rounds of leadership confirmation, when this node leads.
    leader_rounds: Rounds<ReadIndexReply>,
    /// Rounds of read-index RPCs to the leader, when this node follows.
    follower_rounds: Rounds<ReadIndexReply>,
    /// What bounds a round ([`ReadSettings::round_timeout`]).
    round_timeout: Duration,
}

impl ReadIndex {
    /// Start the two round runners in `tasks`.
    pub fn start(
        cluster: Cluster,
        settings: ReadSettings,
        metrics: Arc<Metrics>,
        tasks: &Tasks,
    ) -> Self {
        let ReadSettings {
            round_timeout,
            floor,
        } = settings;
        let leader_rounds = {
            let raft = cluster.raft.clone();
            Rounds::spawn("read rounds (leader)", tasks, move || {
                let raft = raft.clone();
                async move {
                    tokio::time::timeout(round_timeout, confirm_leadership(&raft, floor))
                        .await
                        .unwrap_or(ReadIndexReply::NotLeader)
                }
            })
        };
        let follower_rounds = {
            let cluster = cluster.clone();
            Rounds::spawn("read rounds (follower)", tasks, move || {
                let cluster = cluster.clone();
                let metrics = metrics.clone();
                async move {
                    let Leader::At(addr) = cluster.leader() else {
                        return ReadIndexReply::NotLeader;
                    };
                    metrics.forwarded.with_label_values(&["read_index"]).inc();
                    cluster
                        .peers
                        .read_index(&addr, round_timeout)
                        .await
                        .unwrap_or_else(|_| {
                            metrics
                                .forward_errors
                                .with_label_values(&["read_index"])
                                .inc();
                            ReadIndexReply::NotLeader
                        })
                }
            })
        };
        ReadIndex {
            cluster,
            leader_rounds,
            follower_rounds,
            round_timeout,
        }
    }

    /// A read index confirmed by this node as leader (the `/raft/read-index` handler).
    pub async fn as_leader(&self) -> ReadIndexReply {
        if !self.cluster.is_leader() {
            return ReadIndexReply::NotLeader;
        }
        self.leader_rounds
            .join()
            .await
            .unwrap_or(ReadIndexReply::NotLeader)
    }

    /// Wait until this node may serve a linearizable read; returns the read index.
    pub async fn barrier(&self, timeout: Duration) -> Result<u64, ReadError> {
        let deadline = Instant::now() + timeout;
        let index = self.read_index(deadline).await?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        match self
            .cluster
            .raft
            .wait(Some(remaining))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
        {
            Ok(_) => Ok(index),
            Err(_) => Err(ReadError::Lagging(index)),
        }
    }

    /// The leader's commit index, confirmed by a quorum after this call began (from this
    /// node as leader, or asked of the leader), without waiting to apply it: what `/ready`
    /// compares this node's applied index with.
    pub async fn read_index(&self, deadline: Instant) -> Result<u64, ReadError> {
        let mut leaders = self.cluster.watch_leader(deadline);
        while let Some(leader) = leaders.next().await {
            let round = async {
                match leader {
                    Leader::Me => self.as_leader().await,
                    Leader::At(_) => self
                        .follower_rounds
                        .join()
                        .await
                        .unwrap_or(ReadIndexReply::NotLeader),
                    Leader::Unknown => ReadIndexReply::NotLeader,
                }
            };
            // A round ends by the read timeout, whoever joined it: a caller with a closer
            // deadline (`/ready`'s 1 s check) answers by that, not 5 s later when a frozen
            // leader never answers (found in review; a readiness probe gave up first). A
            // read that has about a round's time left (its deadline is the read timeout,
            // as the round's is) arms no timer of its own on its way.
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = if left < self.round_timeout.mul_f64(0.9) {
                match tokio::time::timeout_at(deadline, round).await {
                    Ok(reply) => reply,
                    Err(_) => break,
                }
            } else {
                round.await
            };
            if let ReadIndexReply::Index(index) = reply {
                return Ok(index);
            }
        }
        Err(ReadError::NoLeader)
    }
}
