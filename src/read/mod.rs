//! The linearizable read barrier (ReadIndex), with batched confirmation rounds.
//!
//! Before a `linearizable` read is served from this node's state, the leader confirms with a
//! quorum, by a heartbeat round that starts after the read arrived, that it is still the
//! leader, and names the read index (its commit index, at least its first entry of the term).
//! This node then waits until it has applied that index. Anything acknowledged before the
//! read began is committed at or below the read index, so the read sees it, whichever node
//! serves it. A leader cut off in a minority cannot get the quorum and serves nothing.
//!
//! Rounds are shared ([`RoundBatcher`]): on the leader, one quorum heartbeat serves every
//! read waiting when it starts; on a follower, one read-index RPC to the leader does (and the
//! leader batches those RPCs with its own reads).

use std::time::Duration;

use cookie_raft::{NodeId, Raft, ReadFloor};
use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::time::Instant;

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::peers::{PeerClient, ReadIndexReply};
use crate::read_batch::RoundBatcher;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// No leader could confirm a read index in time.
    NoLeader,
    /// The index was known but this node did not apply it in time.
    Lagging(u64),
}

/// Ask the local Raft, as leader, for a read index (one quorum heartbeat round), raised to
/// `floor` while this node leads the term it was restored in as leader ([`ReadFloor`]).
async fn confirm_leadership(raft: &Raft, floor: Option<ReadFloor>) -> ReadIndexReply {
    match raft.get_read_log_id().await {
        Ok((read_log_id, _)) => {
            let index = read_log_id.map_or(0, |l| l.index);
            // Checked after the round: had the term moved on, this node led a later term and
            // its first entry of that term already covers the floor (or it no longer leads).
            let term = raft.metrics().borrow().current_term;
            ReadIndexReply::Index(match floor {
                Some(f) if f.term == term => index.max(f.index),
                _ => index,
            })
        }
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
            ReadIndexReply::NotLeader
        }
        // Quorum not reached or the node is stopping: no index can be given.
        Err(_) => ReadIndexReply::NotLeader,
    }
}

/// This node's read-index service.
#[derive(Clone)]
pub struct ReadIndex {
    raft: Raft,
    me: NodeId,
    peers: PeerClient,
    /// Rounds of leadership confirmation, when this node leads.
    leader_rounds: RoundBatcher<ReadIndexReply>,
    /// Rounds of read-index RPCs to the leader, when this node follows.
    follower_rounds: RoundBatcher<ReadIndexReply>,
}

impl ReadIndex {
    pub fn new(
        raft: Raft,
        me: NodeId,
        peers: PeerClient,
        round_timeout: Duration,
        metrics: Arc<Metrics>,
        floor: Option<ReadFloor>,
    ) -> Self {
        let leader_rounds = {
            let raft = raft.clone();
            RoundBatcher::spawn(move || {
                let raft = raft.clone();
                async move {
                    tokio::time::timeout(round_timeout, confirm_leadership(&raft, floor))
                        .await
                        .unwrap_or(ReadIndexReply::NotLeader)
                }
            })
        };
        let follower_rounds = {
            let raft = raft.clone();
            let peers = peers.clone();
            RoundBatcher::spawn(move || {
                let raft = raft.clone();
                let peers = peers.clone();
                let metrics = metrics.clone();
                async move {
                    match peers.leader(&raft) {
                        (Some(l), Some(addr)) if l != me => {
                            metrics.forwarded.with_label_values(&["read_index"]).inc();
                            peers
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
                        _ => ReadIndexReply::NotLeader,
                    }
                }
            })
        };
        ReadIndex {
            raft,
            me,
            peers,
            leader_rounds,
            follower_rounds,
        }
    }

    /// A read index confirmed by this node as leader (the `/raft/read-index` handler).
    pub async fn as_leader(&self) -> ReadIndexReply {
        if self.raft.metrics().borrow().current_leader != Some(self.me) {
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
        let mut metrics = self.raft.metrics();
        loop {
            metrics.borrow_and_update();
            let reply = match self.peers.leader(&self.raft) {
                (Some(l), _) if l == self.me => self.as_leader().await,
                (Some(_), Some(_)) => self
                    .follower_rounds
                    .join()
                    .await
                    .unwrap_or(ReadIndexReply::NotLeader),
                _ => ReadIndexReply::NotLeader,
            };
            if let ReadIndexReply::Index(index) = reply {
                let remaining = deadline.saturating_duration_since(Instant::now());
                return match self
                    .raft
                    .wait(Some(remaining))
                    .applied_index_at_least(Some(index), "linearizable read")
                    .await
                {
                    Ok(_) => Ok(index),
                    Err(_) => Err(ReadError::Lagging(index)),
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ReadError::NoLeader);
            }
            let pause = (deadline - now).min(Duration::from_millis(50));
            let _ = tokio::time::timeout(pause, metrics.changed()).await;
        }
    }
}
