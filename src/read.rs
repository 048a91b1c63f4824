//! The linearizable read barrier (ReadIndex).
//!
//! Before a `linearizable` read is served from this node's state, the leader confirms with a
//! quorum, by a heartbeat round that starts after the read arrived, that it is still the
//! leader, and names the read index (its commit index, at least its first entry of the term).
//! This node then waits until it has applied that index. Anything acknowledged before the
//! read began is committed at or below the read index, so the read sees it, whichever node
//! serves it. A leader cut off in a minority cannot get the quorum and serves nothing.

use std::time::Duration;

use cookie_raft::{NodeId, Raft};
use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::time::Instant;

use crate::peers::{PeerClient, ReadIndexReply};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// No leader could confirm a read index in time.
    NoLeader,
    /// The index was known but this node did not apply it in time.
    Lagging(u64),
}

/// Ask the local Raft, as leader, for a read index.
pub async fn local_read_index(raft: &Raft) -> Result<u64, ReadIndexReply> {
    match raft.get_read_log_id().await {
        Ok((read_log_id, _)) => Ok(read_log_id.map_or(0, |l| l.index)),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
            Err(ReadIndexReply::NotLeader)
        }
        // Quorum not reached or the node is stopping: no index can be given.
        Err(_) => Err(ReadIndexReply::NotLeader),
    }
}

/// Wait until this node may serve a linearizable read; returns the read index.
pub async fn barrier(
    raft: &Raft,
    me: NodeId,
    peers: &PeerClient,
    timeout: Duration,
) -> Result<u64, ReadError> {
    let deadline = Instant::now() + timeout;
    let mut metrics = raft.metrics();
    loop {
        metrics.borrow_and_update();
        let (leader, addr) = peers.leader(raft);
        let index = match (leader, addr) {
            (Some(l), _) if l == me => tokio::time::timeout_at(deadline, local_read_index(raft))
                .await
                .ok()
                .and_then(Result::ok),
            (Some(_), Some(addr)) => {
                let remaining = deadline.saturating_duration_since(Instant::now());
                match peers.read_index(&addr, remaining).await {
                    Ok(ReadIndexReply::Index(i)) => Some(i),
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(index) = index {
            let remaining = deadline.saturating_duration_since(Instant::now());
            return match raft
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
