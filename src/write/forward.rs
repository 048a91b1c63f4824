//! Forwarding writes from a follower to the leader, many per request.
//!
//! Two thirds of the writes a 3-node cluster receives arrive at a follower. Sent one HTTP
//! request each, they cost the leader as much HTTP work as its own clients do, and on a small
//! machine that work, not the disk, was what bounded write throughput (docs/benchmarks.md).
//! So a follower's writes queue for one task that sends whatever is waiting as one request
//! (`/raft/write`, a bincode list), with a few requests in flight: while one is out, the next
//! fills up, so batches grow with load as group commit's do. The leader offers every command
//! to its group commit at once and answers each one separately.
//!
//! Outcomes stay per command: [`ForwardReply::NotLeader`] is still a promise that *that*
//! command was not proposed. A transport failure is a fact about the whole request: refused
//! connection means nothing was sent; anything later means every command is unknown.

use std::time::Duration;

use cookie_raft::Command;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::gather::{Batches, Verdict};
use crate::peers::{ForwardReply, PeerClient, SendError};

/// One forwarded write, with the client's request id so the leader's log can name it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardedWrite {
    pub cmd: Command,
    pub request_id: String,
}

/// Commands per request; the leader's group commit splits them further as it must.
const MAX_BATCH: usize = 512;

struct Job {
    addr: String,
    write: ForwardedWrite,
    deadline: Instant,
    reply: oneshot::Sender<Result<ForwardReply, SendError>>,
}

/// Handle to the forwarding task.
#[derive(Clone)]
pub struct Forwarder {
    tx: mpsc::Sender<Job>,
}

impl Forwarder {
    /// `inflight`: requests to the leader in flight at once.
    pub fn spawn(peers: PeerClient, inflight: usize) -> Self {
        let (tx, rx) = mpsc::channel(16 * 1024);
        tokio::spawn(run(peers, rx, inflight));
        Forwarder { tx }
    }

    /// Send `write` to the leader at `addr`; the answer arrives by `deadline` or the outcome
    /// is unknown.
    pub async fn forward(
        &self,
        addr: String,
        write: ForwardedWrite,
        deadline: Instant,
    ) -> Result<ForwardReply, SendError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            addr,
            write,
            deadline,
            reply,
        };
        if self.tx.send(job).await.is_err() {
            return Err(SendError::NotSent("the node is shutting down".into()));
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(SendError::MaybeSent("the node shut down".into())),
            Err(_) => Err(SendError::MaybeSent(
                "timed out waiting for the leader".into(),
            )),
        }
    }
}

async fn run(peers: PeerClient, rx: mpsc::Receiver<Job>, inflight: usize) {
    let mut batches = Batches::new(rx, inflight);
    // One request goes to one address: jobs for another (older or newer) leader wait for
    // the next request.
    let same_leader = |j: &Job, batch: &[Job]| match batch.first() {
        Some(first) if first.addr != j.addr => Verdict::Defer,
        _ => Verdict::Take,
    };
    while let Some((batch, permit)) = batches.next(MAX_BATCH, same_leader).await {
        let peers = peers.clone();
        tokio::spawn(async move {
            let addr = batch[0].addr.clone();
            send(&peers, &addr, batch).await;
            drop(permit);
        });
    }
}

async fn send(peers: &PeerClient, addr: &str, batch: Vec<Job>) {
    let latest = batch
        .iter()
        .map(|j| j.deadline)
        .max()
        .unwrap_or_else(Instant::now);
    // A little longer than the leader's own deadline, so the leader's answer (even
    // "unknown") arrives before we give up on it.
    let timeout = latest.saturating_duration_since(Instant::now()) + Duration::from_millis(500);
    let (writes, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|j| (j.write, j.reply)).unzip();
    match peers.forward_writes(addr, &writes, timeout).await {
        Ok(answers) if answers.len() == replies.len() => {
            for (r, a) in replies.into_iter().zip(answers) {
                let _ = r.send(Ok(a));
            }
        }
        Ok(answers) => {
            let msg = format!(
                "the leader answered {} of {} writes",
                answers.len(),
                replies.len()
            );
            for r in replies {
                let _ = r.send(Err(SendError::MaybeSent(msg.clone())));
            }
        }
        Err(e) => {
            let not_sent = matches!(e, SendError::NotSent(_));
            let msg = match e {
                SendError::NotSent(m) | SendError::MaybeSent(m) => m,
            };
            for r in replies {
                let _ = r.send(Err(if not_sent {
                    SendError::NotSent(msg.clone())
                } else {
                    SendError::MaybeSent(msg.clone())
                }));
            }
        }
    }
}
