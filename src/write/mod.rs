//! The write path: group commit on the leader, forwarding from followers.
//!
//! # Group commit
//! openraft 0.9 pays one log append (an fsync) per `client_write`, which caps a node at a few
//! hundred writes per second. Every write therefore goes through the [`Batcher`]: one task
//! that gathers whatever commands are waiting into one log entry ([`Request`]) and proposes
//! it with `client_write_ff`, keeping at most `max_inflight` entries in flight. While those
//! are being appended and replicated, new commands queue up and form the next, larger
//! entry, so batches grow with load by themselves. Each command still gets its own result.
//! A batch never holds two commands on the same record, so each write to a record gets its
//! own version (the index of its entry).
//!
//! # Outcomes
//! A command's outcome is one of: applied (with its result); certainly not applied (the node
//! was not leader when it was offered, or openraft truncated the entry and answered
//! `ForwardToLeader`), which is safe to retry on the leader; or unknown (timeout, shutdown),
//! which is reported as such and never as a failure.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cookie_raft::{CmdResult, Command, NodeId, Raft, Request};
use openraft::error::ClientWriteError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument;

use crate::forward::{ForwardedWrite, Forwarder};
use crate::gather::{Batches, Verdict};
use crate::metrics::Metrics;
use crate::peers::{ForwardReply, PeerClient, SendError};

/// Why a write has no result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// No leader could take the write before the timeout; nothing was applied.
    NoLeader,
    /// The write may or may not have been applied.
    Unknown(String),
}

/// The local outcome of offering a command to this node's Raft.
#[derive(Debug)]
enum LocalError {
    NotLeader,
    Unknown(String),
}

struct Pending {
    cmd: Command,
    reply: Reply,
}

/// Limits of one batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_commands: usize,
    /// Approximate payload bytes per entry, so one entry stays well inside the RPC limits.
    pub max_bytes: usize,
    pub max_inflight: usize,
}

/// Handle to the group-commit task.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
}

fn cmd_size(cmd: &Command) -> usize {
    match cmd {
        Command::Create { id, object } => id.len() + object.len(),
        Command::Update { id, patch, .. } => id.len() + patch.len(),
        Command::Delete { id, .. } => id.len(),
    }
}

impl Batcher {
    pub fn spawn(raft: Raft, limits: BatchLimits, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(16 * 1024);
        tokio::spawn(run_batcher(raft, rx, limits, metrics));
        Batcher { tx }
    }

    /// Offer `cmd` to this node's Raft and wait for its outcome until `deadline`.
    async fn submit(&self, cmd: Command, deadline: Instant) -> Result<CmdResult, LocalError> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Pending { cmd, reply }).await.is_err() {
            return Err(LocalError::NotLeader); // the batcher is gone: nothing was proposed
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(LocalError::Unknown("the node shut down".into())),
            Err(_) => Err(LocalError::Unknown("timed out waiting for commit".into())),
        }
    }
}

type Reply = oneshot::Sender<Result<CmdResult, LocalError>>;

/// Give every command of a batch the same failure.
fn fail_all(replies: Vec<Reply>, err: impl Fn() -> LocalError) {
    for r in replies {
        let _ = r.send(Err(err()));
    }
}

async fn run_batcher(
    raft: Raft,
    rx: mpsc::Receiver<Pending>,
    limits: BatchLimits,
    metrics: Arc<Metrics>,
) {
    let mut batches = Batches::new(rx, limits.max_inflight);
    loop {
        let mut keys: HashSet<String> = HashSet::new();
        let mut bytes = 0;
        let next = batches.next(limits.max_commands, |p, batch| {
            if bytes >= limits.max_bytes && !batch.is_empty() {
                Verdict::Stop
            } else if p.cmd.keys().iter().any(|k| keys.contains(*k)) {
                Verdict::Defer // a second write to a record waits for the next entry
            } else {
                keys.extend(p.cmd.keys().into_iter().map(str::to_owned));
                bytes += cmd_size(&p.cmd);
                Verdict::Take
            }
        });
        let Some((batch, permit)) = next.await else {
            return;
        };

        let (cmds, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
        metrics.write_batch_commands.observe(cmds.len() as f64);
        let proposed = Instant::now();
        match raft.client_write_ff(Request { cmds }).await {
            Ok(receiver) => {
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    let outcome = receiver.await;
                    drop(permit);
                    metrics
                        .write_batch_seconds
                        .observe(proposed.elapsed().as_secs_f64());
                    match outcome {
                        Ok(Ok(resp)) if resp.data.results.len() == replies.len() => {
                            for (r, res) in replies.into_iter().zip(resp.data.results) {
                                let _ = r.send(Ok(res));
                            }
                        }
                        Ok(Ok(_)) => fail_all(replies, || {
                            LocalError::Unknown("result count mismatch".into())
                        }),
                        // Rejected before proposing, or proposed then truncated: not applied.
                        Ok(Err(ClientWriteError::ForwardToLeader(_))) => {
                            fail_all(replies, || LocalError::NotLeader)
                        }
                        Ok(Err(e)) => fail_all(replies, || LocalError::Unknown(e.to_string())),
                        Err(_) => fail_all(replies, || {
                            LocalError::Unknown("raft stopped before answering".into())
                        }),
                    }
                });
            }
            // The message never reached RaftCore: nothing was proposed.
            Err(_fatal) => fail_all(replies, || LocalError::NotLeader),
        }
    }
}

/// Routes writes to the leader: proposes locally when this node leads, forwards otherwise.
#[derive(Clone)]
pub struct Writer {
    raft: Raft,
    me: NodeId,
    batcher: Batcher,
    peers: PeerClient,
    forwarder: Forwarder,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Writer {
    pub fn new(
        raft: Raft,
        me: NodeId,
        batcher: Batcher,
        peers: PeerClient,
        forward_inflight: usize,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Writer {
            raft,
            me,
            batcher,
            forwarder: Forwarder::spawn(peers.clone(), forward_inflight),
            peers,
            timeout,
            metrics,
        }
    }

    /// A write received from a client: run it on the leader, wherever that is.
    pub async fn write(&self, cmd: Command, request_id: &str) -> Result<CmdResult, WriteError> {
        let deadline = Instant::now() + self.timeout;
        let mut metrics = self.raft.metrics();
        loop {
            metrics.borrow_and_update();
            let (leader, addr) = self.peers.leader(&self.raft);
            match (leader, addr) {
                (Some(l), _) if l == self.me => {
                    match self.batcher.submit(cmd.clone(), deadline).await {
                        Ok(res) => return Ok(res),
                        Err(LocalError::Unknown(e)) => return Err(WriteError::Unknown(e)),
                        Err(LocalError::NotLeader) => {}
                    }
                }
                (Some(_), Some(addr)) => {
                    self.metrics.forwarded.with_label_values(&["write"]).inc();
                    tracing::debug!(leader = %addr, "forwarding write to the leader");
                    let write = ForwardedWrite {
                        cmd: cmd.clone(),
                        request_id: request_id.to_owned(),
                    };
                    // The leader's own deadline is `timeout` from when it receives the
                    // write; wait for its answer a little longer than ours.
                    let wait = deadline + Duration::from_millis(500);
                    let reply = self.forwarder.forward(addr, write, wait).await;
                    let error_kind = match &reply {
                        Ok(ForwardReply::Applied(_)) => None,
                        Ok(ForwardReply::NotLeader) => Some("not_leader"),
                        Ok(ForwardReply::Unknown(_)) => Some("outcome_unknown"),
                        Err(SendError::NotSent(_)) => Some("not_sent"),
                        Err(SendError::MaybeSent(_)) => Some("maybe_sent"),
                    };
                    if let Some(kind) = error_kind {
                        self.metrics.forward_errors.with_label_values(&[kind]).inc();
                    }
                    match reply {
                        Ok(ForwardReply::Applied(res)) => return Ok(res),
                        Ok(ForwardReply::Unknown(e)) => return Err(WriteError::Unknown(e)),
                        Err(SendError::MaybeSent(e)) => {
                            return Err(WriteError::Unknown(format!(
                                "forwarding to the leader failed: {e}"
                            )))
                        }
                        Ok(ForwardReply::NotLeader) | Err(SendError::NotSent(_)) => {}
                    }
                }
                _ => {}
            }
            // No usable leader right now: wait for a change, or retry after a short pause.
            let now = Instant::now();
            if now >= deadline {
                return Err(WriteError::NoLeader);
            }
            let pause = (deadline - now).min(Duration::from_millis(50));
            let _ = tokio::time::timeout(pause, metrics.changed()).await;
        }
    }

    /// Writes forwarded by another node: propose them here, all at once so they share log
    /// entries, or say we are not the leader. Never forwards again, so a stale view of the
    /// leader cannot make a loop. One answer per write, in order.
    pub async fn write_forwarded(&self, writes: Vec<ForwardedWrite>) -> Vec<ForwardReply> {
        if self.raft.metrics().borrow().current_leader != Some(self.me) {
            return writes.iter().map(|_| ForwardReply::NotLeader).collect();
        }
        let deadline = Instant::now() + self.timeout;
        let each = writes.into_iter().map(|w| {
            let span = tracing::info_span!("forwarded", request_id = %w.request_id);
            async move {
                tracing::debug!("write forwarded by a follower");
                match self.batcher.submit(w.cmd, deadline).await {
                    Ok(res) => ForwardReply::Applied(res),
                    Err(LocalError::NotLeader) => ForwardReply::NotLeader,
                    Err(LocalError::Unknown(e)) => ForwardReply::Unknown(e),
                }
            }
            .instrument(span)
        });
        futures::future::join_all(each).await
    }
}
