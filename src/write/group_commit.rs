//! Group commit: many client writes per log entry.
//!
//! openraft 0.9 pays one log append (an fsync) per `client_write`, which caps a node at a few
//! hundred writes per second. Every write on the leader therefore goes through
//! [`GroupCommit`]: one task that gathers whatever commands are waiting into one log entry
//! (a *batch*, [`Request`]) and proposes it with `client_write_ff`, keeping at most
//! `max_inflight` batches in flight. While those are being appended and replicated, new
//! commands queue up and form the next, larger batch, so batches grow with load by
//! themselves. Each command still gets its own result. No entry holds two commands on the
//! same record, so each write to a record gets its own version (its entry's index): a batch
//! with several writes to one record is proposed as several entries in the same round
//! ([`super::entries`]).
//!
//! A command waits at most until its deadline: one whose client is gone or whose deadline
//! passed while it waited is dropped when the next batch is formed, never proposed (a
//! "zombie" write proposed minutes after its client got 504 would be applied behind the
//! client's back). At most [`QUEUE`] commands wait, the ones set aside for a later batch
//! included; beyond that a write is refused at once ([`LocalError::Busy`], 503).

use std::sync::Arc;

use cookie_raft::{CmdResult, Command, CookieNode, NodeId, Request, TypeConfig};
use openraft::error::ClientWriteError;
use openraft::raft::ClientWriteResponse;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::entries::Entries;
use super::queue::{Queue, Verdict};
use super::regather::Regather;
use super::window::Window;
use crate::cluster::Cluster;
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
    /// Too many writes waiting: refused before it was queued, not applied.
    #[error("too many writes waiting")]
    Busy,
    /// Its deadline passed (or its client left) before it was proposed: not applied.
    #[error("timed out before it was proposed")]
    Expired,
}

/// Limits of one batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_commands: usize,
    /// Approximate payload bytes per batch, so one entry stays well inside the RPC limits.
    pub max_bytes: usize,
    /// Batches proposed and not yet applied, at most.
    pub max_inflight: usize,
    /// More than one batch in flight only while fewer writes than this are outstanding
    /// (waiting for a batch or in one): see [`super::window`].
    pub pipeline_below: usize,
    /// More than one batch in flight at any load while this share of the node's CPU sits
    /// idle (1.0: never): see [`super::window`].
    pub pipeline_idle_above: f64,
    /// The longest a batch waits for the writers of the last answered one to come back
    /// (zero: never): see [`super::regather`].
    pub regather: std::time::Duration,
}

type Reply = oneshot::Sender<Result<CmdResult, LocalError>>;

struct Pending {
    cmd: Command,
    reply: Reply,
    /// After this it is dropped rather than proposed.
    deadline: Instant,
    /// When it was offered: its wait for a batch is `raft_write_queue_seconds`.
    queued: Instant,
    /// Its place among the [`QUEUE`] that may wait; given back when it leaves the queue.
    _place: OwnedSemaphorePermit,
}

impl Pending {
    /// Whether proposing it still serves anyone.
    fn wanted(&self, now: Instant) -> bool {
        !self.reply.is_closed() && now < self.deadline
    }
}

/// Handle to the group-commit task.
#[derive(Clone)]
pub struct GroupCommit {
    tx: mpsc::Sender<Pending>,
    places: Arc<Semaphore>,
}

/// Commands waiting for a batch, at most (in the channel and set aside for a later batch).
pub const QUEUE: usize = 16 * 1024;

impl GroupCommit {
    /// Start the task in `tasks`.
    pub fn spawn(
        cluster: Cluster,
        limits: BatchLimits,
        metrics: Arc<Metrics>,
        tasks: &Tasks,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let places = Arc::new(Semaphore::new(QUEUE));
        let queued = Queued {
            rx,
            places: places.clone(),
        };
        tasks.spawn("group commit", run(cluster, queued, limits, metrics));
        GroupCommit { tx, places }
    }

    /// Offer `cmd` to this node's Raft and wait for its outcome until `deadline`.
    pub async fn submit(&self, cmd: Command, deadline: Instant) -> Result<CmdResult, LocalError> {
        let Ok(place) = self.places.clone().try_acquire_owned() else {
            return Err(LocalError::Busy);
        };
        let (reply, rx) = oneshot::channel();
        let pending = Pending {
            cmd,
            reply,
            deadline,
            queued: Instant::now(),
            _place: place,
        };
        // Never full: every item in it holds one of the QUEUE places.
        if self.tx.try_send(pending).is_err() {
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
        // openraft answers ForwardToLeader both for a write it refused before proposing
        // and for an entry it proposed and then truncated, and a truncated entry is not
        // certainly lost: with five voters a later leader can still commit it (issue 12).
        // The two cannot be told apart here, so neither is retried. `run` checks
        // leadership just before proposing, so a write offered to a node that no longer
        // leads is still refused as NotLeader (and retried) before it gets this far.
        Some(Err(ClientWriteError::ForwardToLeader(_))) => Err(LocalError::Unknown(
            "leadership changed after the write was proposed".into(),
        )),
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

/// The task's end of the queue: the commands, and the places they hold (which count them).
struct Queued {
    rx: mpsc::Receiver<Pending>,
    places: Arc<Semaphore>,
}

async fn run(cluster: Cluster, queued: Queued, limits: BatchLimits, metrics: Arc<Metrics>) {
    let mut window = Window::new(limits.max_inflight, limits.pipeline_below)
        .pipeline_when_idle(limits.pipeline_idle_above)
        .publish_spare(cluster.spare_cpu.clone());
    let places = queued.places;
    let mut queue = Queue::new(queued.rx);
    let regather = Regather::new(limits.regather);
    metrics.write_batches_allowed.set(window.allowed() as i64);
    loop {
        let mut in_window = window.slot().await;
        if !queue.ready().await {
            return;
        }
        // Only while more than one batch may be in flight: that is where rounds are bound
        // by latency rather than CPU (`window`), and where a split cohort costs a round.
        // With one in flight the CPU is what is short, and a hold would idle the log.
        let start = Instant::now();
        let hold = (window.allowed() > 1)
            .then(|| regather.hold(start, queue.waiting()))
            .flatten();
        if let Some(hold) = hold {
            queue.fill(hold.want, hold.until).await;
            metrics
                .write_regather_seconds
                .observe(start.elapsed().as_secs_f64());
        }
        let mut entries = Entries::default();
        let mut bytes = 0;
        // Every entry of this group comes after the applied index (committed entries are
        // never replaced), so a write on condition of a version up to it may share an entry
        // with an earlier write to its record (`Entries::place`).
        let applied = cluster
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index);
        // Read once the slot is free (the judge runs then), not before waiting for it.
        let mut now = None;
        let next = queue.next(limits.max_commands, |p, taken| {
            if !p.wanted(*now.get_or_insert_with(Instant::now)) {
                Verdict::Drop
            } else if bytes >= limits.max_bytes && !taken.is_empty() {
                Verdict::Stop
            } else if entries
                .place(&p.cmd.keys(), p.cmd.conditional_on_before(applied))
                .is_some()
            {
                bytes += p.cmd.size();
                Verdict::Take
            } else {
                Verdict::Defer // too many writes to one record: the next batch
            }
        });
        let Some(gathered) = next.await else {
            return;
        };
        if !gathered.dropped.is_empty() {
            metrics.write_dropped.inc_by(gathered.dropped.len() as u64);
            tracing::debug!(
                dropped = gathered.dropped.len(),
                "writes whose clients are gone or whose deadline passed: not proposed"
            );
            for p in gathered.dropped {
                let _ = p.reply.send(Err(LocalError::Expired));
            }
        }
        if gathered.group.is_empty() {
            continue;
        }
        // How long the group waited: with `raft_write_batch_seconds`, where a write's time
        // on the leader goes (waiting for a slot, or in its entry).
        let formed = Instant::now();
        for p in &gathered.group {
            metrics
                .write_queue_seconds
                .observe((formed - p.queued).as_secs_f64());
        }
        let writes = gathered.group.len();
        if !cluster.is_leader() {
            // Not proposed: safe to offer again to whoever leads now.
            let replies = gathered.group.into_iter().map(|p| p.reply).collect();
            answer_all(replies, Err(LocalError::NotLeader));
            continue;
        }
        if let Some(share) = window.sample_idle() {
            metrics.write_cpu_idle.set(share);
            metrics.write_cpu_spare.set(i64::from(window.spare()));
        }
        window.proposed(&mut in_window, writes, QUEUE - places.available_permits());
        metrics.write_batches_allowed.set(window.allowed() as i64);
        let proposed = Instant::now();
        // The entries go to openraft back to back, so they share the round: its core
        // appends and replicates what it has been given together.
        let mut sent = Vec::new();
        for entry in entries.split(gathered.group) {
            // Each command's place in the queue is given back here, as it leaves it.
            let (cmds, replies): (Vec<_>, Vec<_>) =
                entry.into_iter().map(|p| (p.cmd, p.reply)).unzip();
            metrics.write_batch_commands.observe(cmds.len() as f64);
            match cluster.raft.client_write_ff(Request { cmds }).await {
                Ok(receiver) => sent.push((receiver, replies)),
                // The message never reached RaftCore: nothing was proposed.
                Err(_fatal) => answer_all(replies, Err(LocalError::NotLeader)),
            }
        }
        if sent.is_empty() {
            continue;
        }
        let metrics = metrics.clone();
        let regather = regather.clone();
        // Bounded by Raft: each receiver resolves when its entry is applied, truncated or
        // Raft stops.
        tokio::spawn(async move {
            let mut outcomes = Vec::with_capacity(sent.len());
            for (receiver, replies) in sent {
                let answer = receiver.await.ok();
                outcomes.push((batch_outcome(replies.len(), answer), replies));
            }
            let answered = Instant::now();
            let round = answered - proposed;
            // Before the slot frees: the next batch, formed the moment it does, knows whom
            // to wait for.
            regather.answered(answered, writes, round);
            drop(in_window);
            metrics.write_batch_seconds.observe(round.as_secs_f64());
            for (outcome, replies) in outcomes {
                answer_all(replies, outcome);
            }
        });
    }
}
