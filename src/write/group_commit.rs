//! Group commit: many client writes per log entry.
//!
//! openraft 0.9 pays one log append (an fsync) per `client_write`, which caps a node at a few
//! hundred writes per second. Every write on the leader therefore goes through
//! [`GroupCommit`]: one task that gathers whatever commands are waiting into one log entry
//! (a *batch*, [`Request`]) and proposes it with `client_write_ff`, keeping at most
//! `max_inflight` batches in flight. While those are being appended and replicated, new
//! commands queue up and form the next, larger batch, so batches grow with load by
//! themselves. Each command still gets its own result. A batch never holds two commands on
//! the same record, so each write to a record gets its own version (its entry's index).

use std::collections::HashSet;
use std::sync::Arc;

use cookie_raft::{CmdResult, Command, CookieNode, NodeId, Raft, Request, TypeConfig};
use openraft::error::ClientWriteError;
use openraft::raft::ClientWriteResponse;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::queue::{Queue, Verdict};
use crate::metrics::Metrics;
use crate::tasks::Tasks;

/// The outcome of offering a command to this node's Raft, when it is not a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalError {
    /// Not proposed (this node does not lead, or the entry was truncated before commit):
    /// safe to offer again to whoever leads now.
    #[error("not leader")]
    NotLeader,
    /// Proposed, fate unknown.
    #[error("{0}")]
    Unknown(String),
}

/// Limits of one batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_commands: usize,
    /// Approximate payload bytes per batch, so one entry stays well inside the RPC limits.
    pub max_bytes: usize,
    /// Batches proposed and not yet applied, at most.
    pub max_inflight: usize,
}

type Reply = oneshot::Sender<Result<CmdResult, LocalError>>;

struct Pending {
    cmd: Command,
    reply: Reply,
}

/// Handle to the group-commit task.
#[derive(Clone)]
pub struct GroupCommit {
    tx: mpsc::Sender<Pending>,
}

/// Commands waiting for a batch, at most; a full queue makes submitters wait.
const QUEUE: usize = 16 * 1024;

impl GroupCommit {
    /// Start the task in `tasks`.
    pub fn spawn(raft: Raft, limits: BatchLimits, metrics: Arc<Metrics>, tasks: &Tasks) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tasks.spawn("group commit", run(raft, rx, limits, metrics));
        GroupCommit { tx }
    }

    /// Offer `cmd` to this node's Raft and wait for its outcome until `deadline`.
    pub async fn submit(&self, cmd: Command, deadline: Instant) -> Result<CmdResult, LocalError> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Pending { cmd, reply }).await.is_err() {
            return Err(LocalError::NotLeader); // the task is gone: nothing was proposed
        }
        settle(tokio::time::timeout_at(deadline, rx).await)
    }
}

/// What a submitter makes of waiting for its command: the answer, the task dropping it
/// (the node shut down), or the deadline passing first.
pub(super) fn settle<E>(
    waited: Result<Result<Result<CmdResult, LocalError>, E>, tokio::time::error::Elapsed>,
) -> Result<CmdResult, LocalError> {
    match waited {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) => Err(LocalError::Unknown("the node shut down".into())),
        Err(_) => Err(LocalError::Unknown("timed out waiting for commit".into())),
    }
}

pub(super) type Answer =
    Result<ClientWriteResponse<TypeConfig>, ClientWriteError<NodeId, CookieNode>>;

/// What openraft's answer for one batch of `n` commands means for each of them; `None`
/// when openraft stopped before answering.
pub(super) fn batch_outcome(
    n: usize,
    answer: Option<Answer>,
) -> Result<Vec<CmdResult>, LocalError> {
    match answer {
        Some(Ok(resp)) if resp.data.results.len() == n => Ok(resp.data.results),
        Some(Ok(_)) => Err(LocalError::Unknown("result count mismatch".into())),
        // Rejected before proposing, or proposed then truncated: openraft answers
        // ForwardToLeader for both.
        Some(Err(ClientWriteError::ForwardToLeader(_))) => Err(LocalError::NotLeader),
        Some(Err(e)) => Err(LocalError::Unknown(e.to_string())),
        None => Err(LocalError::Unknown("raft stopped before answering".into())),
    }
}

fn answer_all(replies: Vec<Reply>, outcome: Result<Vec<CmdResult>, LocalError>) {
    match outcome {
        Ok(results) => {
            for (r, res) in replies.into_iter().zip(results) {
                let _ = r.send(Ok(res));
            }
        }
        Err(e) => {
            for r in replies {
                let _ = r.send(Err(e.clone()));
            }
        }
    }
}

async fn run(raft: Raft, rx: mpsc::Receiver<Pending>, limits: BatchLimits, metrics: Arc<Metrics>) {
    let mut queue = Queue::new(rx, limits.max_inflight);
    loop {
        let mut keys: HashSet<String> = HashSet::new();
        let mut bytes = 0;
        let next = queue.next(limits.max_commands, |p, taken| {
            if bytes >= limits.max_bytes && !taken.is_empty() {
                Verdict::Stop
            } else if p.cmd.keys().iter().any(|k| keys.contains(*k)) {
                Verdict::Defer // a second write to a record waits for the next batch
            } else {
                keys.extend(p.cmd.keys().into_iter().map(str::to_owned));
                bytes += p.cmd.size();
                Verdict::Take
            }
        });
        let Some((batch, slot)) = next.await else {
            return;
        };

        let (cmds, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
        metrics.write_batch_commands.observe(cmds.len() as f64);
        let proposed = Instant::now();
        match raft.client_write_ff(Request { cmds }).await {
            Ok(receiver) => {
                let metrics = metrics.clone();
                // Bounded by Raft: the receiver resolves when the entry is applied, truncated
                // or Raft stops.
                tokio::spawn(async move {
                    let answer = receiver.await.ok();
                    drop(slot);
                    metrics
                        .write_batch_seconds
                        .observe(proposed.elapsed().as_secs_f64());
                    let outcome = batch_outcome(replies.len(), answer);
                    answer_all(replies, outcome);
                });
            }
            // The message never reached RaftCore: nothing was proposed.
            Err(_fatal) => answer_all(replies, Err(LocalError::NotLeader)),
        }
    }
}
