//! The write path: every client write runs on the leader, wherever it arrives.
//!
//! - [`Writer`] routes a write: this node leads, so it goes to [`group_commit`]; another
//!   node leads, so it goes to [`forward`], which sends it to the leader's group commit;
//!   nobody leads, so it waits for a leader ([`crate::cluster::LeaderWatch`]).
//! - [`group_commit`]: many writes per log entry (a *batch*).
//! - [`entries`]: which entry of a batch each write goes into, so that no entry holds a
//!   record twice and a batch with several writes to one record is still one round.
//! - [`forward`]: a follower's writes sent to the leader many per request.
//! - [`queue`]: the queue both of them take their next group from.
//! - [`window`]: how many batches group commit keeps in flight, adapting to the load and to
//!   the CPU left idle ([`cookie_raft::idle`]).
//! - [`room`]: the leader refuses creates and updates while its disk is short of a reserve.
//!
//! # Outcomes
//! A command's outcome is one of: applied (with its result); certainly not applied (the node
//! did not lead when its batch was about to be proposed, or a follower's leader answered
//! "not leader"), which is retried on the leader; certainly not applied and refused
//! (too many writes waiting, or the deadline passed before it was proposed: 503; no room on
//! the leader's disk for what it would add: 507); or unknown
//! (timeout, shutdown, a lost connection after sending, or openraft's `ForwardToLeader`
//! for a proposed batch, which is also what a truncated entry answers, and a truncated entry
//! can still be committed by a later leader), which is reported as such and never as a
//! failure.
//! The decisions are pure functions (`Attempt`), tested as tables below.

pub mod answers;
pub mod entries;
pub mod forward;
pub mod group_commit;
pub mod queue;
pub mod regather;
pub mod room;
pub mod window;

use std::sync::Arc;
use std::time::Duration;

use cookie_raft::{CmdResult, Command};
use tokio::time::Instant;
use tracing::Instrument;

use crate::cluster::peer::PeerError;
use crate::cluster::proto::{ForwardReply, ForwardedWrite};
use crate::cluster::{Cluster, Leader};
use crate::metrics::Metrics;
use crate::tasks::Tasks;
use forward::{ForwardLimits, Forwarder, LEADER_ANSWER_SLACK};
use group_commit::{BatchLimits, GroupCommit, LocalError};
use room::{Refused, Room};

/// Why a write has no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// No leader could take the write before the timeout; nothing was applied.
    #[error("no leader available")]
    NoLeader,
    /// The write may or may not have been applied.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The write was not applied and will not be (too many writes waiting, or it timed out
    /// before it was proposed); the client may retry later.
    #[error("not applied: {0}")]
    NotApplied(String),
    /// The write was not applied: it would add data and the leader's disk is short of its
    /// reserve ([`room`]).
    #[error("no room: {0}")]
    NoRoom(String),
}

/// How the write path is tuned (from the config's `write_timeout_ms`, `[batch]` and
/// `storage.write_reserve_bytes`).
pub struct WriteSettings {
    /// How long a write may wait for a leader and for its commit.
    pub timeout: Duration,
    /// Group commit's batch limits.
    pub batch: BatchLimits,
    /// Forwarding requests to the leader in flight at once.
    pub forward: ForwardLimits,
    /// Whether, as leader, a write that grows the store may be proposed ([`room`]).
    pub room: Room,
    /// What this node's state says of records and keys, for the answer budget ([`answers`]).
    pub lookups: Lookups,
}

/// The stored size of each record named (0 for one not stored).
pub type RecordSizes = Box<dyn Fn(&[&str]) -> Vec<usize> + Send + Sync>;

/// What the answer budget ([`answers`]) reads of this node's state.
pub struct Lookups {
    pub record_sizes: RecordSizes,
    /// Whether an idempotency key is recorded now.
    pub key_recorded: Box<dyn Fn(&str) -> bool + Send + Sync>,
}

/// What a write sent with an `Idempotency-Key` is told, after why, when this request was
/// refused before it was proposed (too many writes waiting, its deadline passed, no room):
/// a request sent earlier with its key may still be applied, and a write is never reported
/// as failed when it may have applied (api.md section 6). So the outcome is unknown (504),
/// and the client retries with the same key, as after any 504.
pub(crate) const KEY_MAY_BE_PENDING: &str = "this request was not proposed, but one sent \
     earlier with its Idempotency-Key may still be applied: retry with the same key";

/// What one attempt at a write came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attempt {
    Done(CmdResult),
    /// Certainly not applied: try the leader again (it may have changed).
    Retry,
    /// Certainly not applied: the leader asks for it again at once (its answer budget,
    /// [`answers`]); why, for a client whose deadline passes meanwhile.
    Again(String),
    Unknown(String),
    /// Certainly not applied, and retrying now would not help: tell the client.
    Refused(String),
    /// Certainly not applied: no room on the leader's disk ([`room`]).
    NoRoom(String),
}

impl Attempt {
    /// This attempt, for a write sent with an idempotency key when `keyed`: a refusal is an
    /// unknown outcome ([`KEY_MAY_BE_PENDING`]).
    fn keyed(self, keyed: bool) -> Self {
        match self {
            Attempt::Refused(why) if keyed => {
                Attempt::Unknown(format!("{why}; {KEY_MAY_BE_PENDING}"))
            }
            other => other,
        }
    }

    /// A write offered to this node's group commit.
    fn local(outcome: Result<CmdResult, LocalError>) -> Self {
        match outcome {
            Ok(res) => Attempt::Done(res),
            Err(LocalError::NotLeader) => Attempt::Retry,
            Err(LocalError::Unknown(e)) => Attempt::Unknown(e),
            Err(e @ (LocalError::Busy | LocalError::Expired)) => Attempt::Refused(e.to_string()),
        }
    }

    /// A write forwarded to the leader, with the `forward_errors_total` label it counts as.
    fn forwarded(reply: Result<ForwardReply, PeerError>) -> (Self, Option<&'static str>) {
        match reply {
            Ok(ForwardReply::Applied(res)) => (Attempt::Done(res), None),
            Ok(ForwardReply::NotLeader) => (Attempt::Retry, Some("not_leader")),
            Ok(ForwardReply::Unknown(e)) => (Attempt::Unknown(e), Some("outcome_unknown")),
            Ok(ForwardReply::NotApplied(e)) => (Attempt::Refused(e), Some("not_applied")),
            Ok(ForwardReply::NoRoom(e)) => (Attempt::NoRoom(e), Some("no_room")),
            Ok(ForwardReply::Later(why)) => (Attempt::Again(why), Some("answer_budget")),
            Err(PeerError::NotSent(_)) => (Attempt::Retry, Some("not_sent")),
            Err(PeerError::MaybeSent(e)) => (
                Attempt::Unknown(format!("forwarding to the leader failed: {e}")),
                Some("maybe_sent"),
            ),
        }
    }
}

/// Routes writes to the leader: proposes locally when this node leads, forwards otherwise.
#[derive(Clone)]
pub struct Writer {
    cluster: Cluster,
    group_commit: GroupCommit,
    forwarder: Forwarder,
    timeout: Duration,
    metrics: Arc<Metrics>,
    room: Arc<Room>,
    lookups: Arc<Lookups>,
}

impl Writer {
    /// Start the write path's tasks (group commit, forwarding) in `tasks`.
    pub fn start(
        cluster: Cluster,
        settings: WriteSettings,
        metrics: Arc<Metrics>,
        tasks: &Tasks,
    ) -> Self {
        Writer {
            group_commit: GroupCommit::spawn(
                cluster.clone(),
                settings.batch,
                metrics.clone(),
                tasks,
            ),
            forwarder: Forwarder::spawn(cluster.peers.clone(), settings.forward, tasks),
            cluster,
            timeout: settings.timeout,
            metrics,
            room: Arc::new(settings.room),
            lookups: Arc::new(settings.lookups),
        }
    }

    /// The room on this node's disk, as the reserve sees it.
    pub fn room(&self) -> &Room {
        &self.room
    }

    /// A write received from a client: run it on the leader, wherever that is.
    pub async fn write(&self, cmd: Command, request_id: &str) -> Result<CmdResult, WriteError> {
        let deadline = Instant::now() + self.timeout;
        let keyed = matches!(cmd, Command::Keyed { .. });
        let mut leaders = self.cluster.watch_leader(deadline);
        // The leader that asked for the write again at once, and why.
        let mut again: Option<(Leader, String)> = None;
        loop {
            let leader = match again.take() {
                Some((leader, _)) if Instant::now() < deadline => leader,
                // Never proposed: held back each time until the client's deadline.
                Some((_, why)) => {
                    let why = format!("held back by the leader until the deadline: {why}");
                    return Err(match Attempt::Refused(why.clone()).keyed(keyed) {
                        Attempt::Unknown(e) => WriteError::Unknown(e),
                        _ => WriteError::NotApplied(why),
                    });
                }
                None => match leaders.next().await {
                    Some(leader) => leader,
                    // No leader, for a write sent with a key: one sent earlier with it may
                    // still commit once a leader is back, so this is no "nothing written"
                    // (found in review: a retry answered 503 after a 504, and the first
                    // attempt applied later).
                    None if keyed => {
                        return Err(WriteError::Unknown(format!(
                            "No leader available; {KEY_MAY_BE_PENDING}"
                        )))
                    }
                    None => return Err(WriteError::NoLeader),
                },
            };
            let attempt = match leader.clone() {
                Leader::Me => match self.room.admit(&cmd) {
                    Ok(()) => Attempt::local(self.group_commit.submit(cmd.clone(), deadline).await),
                    Err(Refused::NoRoom(why)) => Attempt::NoRoom(why),
                    Err(Refused::KeyPending(why)) => Attempt::Unknown(why),
                },
                Leader::At(addr) => {
                    self.metrics.forwarded.with_label_values(&["write"]).inc();
                    tracing::debug!(leader = %addr, "forwarding write to the leader");
                    let left = deadline.saturating_duration_since(Instant::now());
                    let write = ForwardedWrite {
                        cmd: cmd.clone(),
                        request_id: request_id.to_owned(),
                        timeout_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
                    };
                    // The leader drops the write at our deadline; wait for its answer a
                    // little longer than that.
                    let wait = deadline + LEADER_ANSWER_SLACK;
                    let reply = self.forwarder.forward(addr, write, wait).await;
                    let (attempt, error_kind) = Attempt::forwarded(reply);
                    if let Some(kind) = error_kind {
                        self.metrics.forward_errors.with_label_values(&[kind]).inc();
                    }
                    attempt
                }
                Leader::Unknown => Attempt::Retry,
            };
            match attempt.keyed(keyed) {
                Attempt::Done(res) => return Ok(res),
                Attempt::Unknown(e) => return Err(WriteError::Unknown(e)),
                Attempt::Refused(e) => return Err(WriteError::NotApplied(e)),
                Attempt::NoRoom(e) => return Err(WriteError::NoRoom(e)),
                Attempt::Again(why) => again = Some((leader, why)),
                Attempt::Retry => {}
            }
        }
    }

    /// Writes forwarded by another node: propose them here, all at once so they share log
    /// entries, or say we are not the leader. Never forwards again, so a stale view of the
    /// leader cannot make a loop. One answer per write, in order.
    pub async fn write_forwarded(&self, writes: Vec<ForwardedWrite>) -> Vec<ForwardReply> {
        if !self.cluster.is_leader() {
            return writes.iter().map(|_| ForwardReply::NotLeader).collect();
        }
        let received = Instant::now();
        // The writes past the first `admitted` would take the answers past one reply.
        let admitted = {
            let cmds: Vec<&Command> = writes.iter().map(|w| &w.cmd).collect();
            let stored = answers::Stored {
                sizes: &*self.lookups.record_sizes,
                replayed: &*self.lookups.key_recorded,
            };
            answers::admitted(&cmds, &stored)
        };
        let each = writes.into_iter().enumerate().map(|(n, w)| {
            let span = tracing::info_span!("forwarded", request_id = %w.request_id);
            // The client's deadline, as the follower carried it; never beyond our own.
            let deadline = received + self.timeout.min(Duration::from_millis(w.timeout_ms));
            async move {
                tracing::debug!("write forwarded by a follower");
                if n >= admitted {
                    return ForwardReply::Later(format!(
                        "the answers to the {admitted} writes before it fill one reply; send it \
                         again"
                    ));
                }
                match self.room.admit(&w.cmd) {
                    Ok(()) => {}
                    Err(Refused::NoRoom(why)) => return ForwardReply::NoRoom(why),
                    Err(Refused::KeyPending(why)) => return ForwardReply::Unknown(why),
                }
                let keyed = matches!(w.cmd, Command::Keyed { .. });
                match self.group_commit.submit(w.cmd, deadline).await {
                    Ok(res) => ForwardReply::Applied(res),
                    Err(LocalError::NotLeader) => ForwardReply::NotLeader,
                    Err(LocalError::Unknown(e)) => ForwardReply::Unknown(e),
                    Err(e @ (LocalError::Busy | LocalError::Expired)) if keyed => {
                        ForwardReply::Unknown(format!("{e}; {KEY_MAY_BE_PENDING}"))
                    }
                    Err(e @ (LocalError::Busy | LocalError::Expired)) => {
                        ForwardReply::NotApplied(e.to_string())
                    }
                }
            }
            .instrument(span)
        });
        futures::future::join_all(each).await
    }
}

#[cfg(test)]
mod tests;
