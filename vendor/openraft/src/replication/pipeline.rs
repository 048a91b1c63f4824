//! Patched (cookie-crud): several AppendEntries in flight to one follower.
//!
//! Upstream 0.9 sends one AppendEntries and waits for its answer before the next, so a
//! follower's stream is busy for a whole round (the exchange, the follower's append and
//! fsync) while entries the leader appended meanwhile wait. With
//! `Config::appends_in_flight` above 1 the engine grows the range in flight as the log grows
//! (`ProgressEntry::extend_inflight`), and this loop sends the new part in a round of its
//! own, up to that many rounds, each on a client of its own, once the oldest round in flight
//! has been out for `Config::pipeline_after_us` (what is appended before that waits for its
//! answer and goes in the next round, as with one in flight).
//!
//! Rounds are answered to the core in the order they were sent, so the core sees what it
//! saw before: one range, acknowledged from its start. What is new is what a round's answer
//! may mean:
//!
//! - A round can reach the follower before the one sent ahead of it (they travel on
//!   different connections). The follower then answers a conflict at its `prev`, which the
//!   earlier round's answer has since shown the follower to hold. That is not a conflict to
//!   report (the engine would take it for a follower whose log went back): the range is sent
//!   again from the matching log id.
//! - When a round fails (an error, a real conflict, a partial append), the rounds sent after
//!   it went out on the assumption that it would succeed. Their answers are dropped: an
//!   `epoch` tells them apart. The follower may have appended what they carried, which is
//!   harmless: a Raft append of entries the follower already holds changes nothing.
//! - A failure is reported once, for the range's request id. Entries the engine added to
//!   that range before it saw the failure are dropped when they arrive (`failed_id`); the
//!   engine starts a new range with a new id.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use tokio::select;

use super::request::Data;
use super::request::DataWithId;
use super::request::Replicate;
use super::response::ReplicationResult;
use super::ReplicationCore;
use crate::error::decompose::DecomposeResult;
use crate::error::RPCError;
use crate::error::ReplicationClosed;
use crate::error::ReplicationError;
use crate::error::Timeout;
use crate::log_id_range::LogIdRange;
use crate::network::RPCOption;
use crate::network::RPCTypes;
use crate::network::RaftNetwork;
use crate::network::RaftNetworkFactory;
use crate::raft::AppendEntriesRequest;
use crate::raft::AppendEntriesResponse;
use crate::replication::request_id::RequestId;
use crate::storage::RaftLogStorage;
use crate::type_config::alias::InstantOf;
use crate::type_config::TypeConfigExt;
use crate::LogId;
use crate::RaftTypeConfig;

/// One AppendEntries sent, with what its answer needs.
pub(crate) struct Round<C: RaftTypeConfig, Net> {
    epoch: u64,
    /// Whether a round of the same epoch was in flight when this one was sent: only such a
    /// round can reach the follower before the one ahead of it.
    behind: bool,
    /// Its request id and the range it carried (`prev` to the last entry sent).
    sent: DataWithId<LogIdRange<C::NodeId>>,
    leader_time: InstantOf<C>,
    net: Net,
    answer: Result<AppendEntriesResponse<C::NodeId>, RPCError<C::NodeId, C::Node>>,
}

/// The state of the rounds to one follower.
pub(crate) struct Pipeline<C: RaftTypeConfig, Net> {
    /// Rounds sent and not yet answered, in the order sent.
    rounds: FuturesOrdered<BoxFuture<'static, Round<C, Net>>>,
    /// Answers of rounds sent before the last failure carry an older epoch and are dropped.
    epoch: u64,
    /// When each of the current epoch's log rounds in flight was sent, oldest first.
    current: VecDeque<InstantOf<C>>,
    /// A further log round waits until then (`Config::pipeline_after_us`).
    hold_until: Option<InstantOf<C>>,
    /// The request id of the range being sent, and the last log id of it known here.
    id: Option<RequestId>,
    last: Option<LogId<C::NodeId>>,
    /// What of that range is not sent yet.
    queued: Option<DataWithId<LogIdRange<C::NodeId>>>,
    /// The range whose failure has been reported: what the engine added to it is dropped.
    failed_id: Option<RequestId>,
    /// The core asked for a heartbeat.
    heartbeat_wanted: bool,
    /// The commit index the last round sent carried, and when a round that carries only a
    /// newer one goes (see `linger_for_entries`).
    sent_committed: Option<LogId<C::NodeId>>,
    commit_due: Option<InstantOf<C>>,
    /// No round goes before this, after the follower was unreachable.
    backoff_until: Option<InstantOf<C>>,
}

impl<C: RaftTypeConfig, Net> Default for Pipeline<C, Net> {
    fn default() -> Self {
        Self {
            rounds: FuturesOrdered::new(),
            epoch: 0,
            current: VecDeque::new(),
            hold_until: None,
            id: None,
            last: None,
            queued: None,
            failed_id: None,
            heartbeat_wanted: false,
            sent_committed: None,
            commit_due: None,
            backoff_until: None,
        }
    }
}

impl<C: RaftTypeConfig, Net> Pipeline<C, Net> {
    /// Drop the answers of the rounds in flight.
    fn drop_in_flight(&mut self) {
        self.epoch += 1;
        self.current.clear();
    }

    /// The next time the loop must wake with nothing else to wake it.
    fn wake_at(&self) -> Option<InstantOf<C>> {
        [self.backoff_until, self.commit_due, self.hold_until].into_iter().flatten().min()
    }
}

impl<C, N, LS> ReplicationCore<C, N, LS>
where
    C: RaftTypeConfig,
    N: RaftNetworkFactory<C>,
    LS: RaftLogStorage<C>,
{
    pub(super) async fn main_pipelined(mut self) -> Result<(), ReplicationClosed> {
        loop {
            if self.start_rounds().await?.is_break() {
                return Ok(());
            }

            let wake_at = self.pipe.wake_at();
            let wake = async move {
                match wake_at {
                    Some(t) => C::sleep_until(t).await,
                    None => futures::future::pending::<()>().await,
                }
            };
            let in_flight = !self.pipe.rounds.is_empty();

            select! {
                event = self.rx_event.recv() => {
                    let event = event.ok_or(ReplicationClosed::new("RaftCore closed replication"))?;
                    if self.pipelined_event(event).await?.is_break() {
                        return Ok(());
                    }
                }
                Some(round) = self.pipe.rounds.next(), if in_flight => {
                    if self.round_answered(round).is_break() {
                        return Ok(());
                    }
                }
                _ = wake => {}
            }
        }
    }

    async fn pipelined_event(&mut self, event: Replicate<C>) -> Result<ControlFlow<()>, ReplicationClosed> {
        match event {
            Replicate::Committed(c) => {
                self.committed = c;
                if self.committed > self.pipe.sent_committed && self.pipe.commit_due.is_none() {
                    let linger = Duration::from_micros(self.config.commit_linger_us);
                    self.pipe.commit_due = Some(C::now() + linger);
                }
            }
            Replicate::Heartbeat | Replicate::Data(Data::Heartbeat) => self.pipe.heartbeat_wanted = true,
            Replicate::Data(Data::Logs(logs)) => self.queue_logs(logs),
            Replicate::Data(d) => {
                // A snapshot: the engine starts one only with nothing in flight, so rounds
                // still out belong to a range that has ended.
                self.pipe.drop_in_flight();
                self.pipe.queued = None;
                let flow = self.run_action(d).await?;
                if self.backoff.is_some() {
                    self.arm_backoff();
                }
                if let Some(Data::Logs(logs)) = self.next_action.take() {
                    self.queue_logs(logs);
                }
                return Ok(flow);
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Take in logs to send: a new range, or more of the one being sent.
    fn queue_logs(&mut self, logs: DataWithId<LogIdRange<C::NodeId>>) {
        let id = logs.request_id();
        if Some(id) == self.pipe.failed_id {
            return;
        }
        let rng = logs.data().clone();
        if Some(id) == self.pipe.id && rng.prev == self.pipe.last {
            let prev = match self.pipe.queued.take() {
                Some(q) => q.data().prev.clone(),
                None => rng.prev.clone(),
            };
            self.pipe.queued = Some(DataWithId::new(id, LogIdRange::new(prev, rng.last.clone())));
        } else {
            debug_assert!(Some(id) != self.pipe.id, "more of a range must follow its end");
            // A new range: the engine ended the last one, so no answer to it counts.
            self.pipe.drop_in_flight();
            self.pipe.id = Some(id);
            self.pipe.queued = Some(logs);
        }
        self.pipe.last = rng.last;
    }

    /// Send rounds while there is something to send and room for it.
    async fn start_rounds(&mut self) -> Result<ControlFlow<()>, ReplicationClosed> {
        loop {
            if self.spare_networks.is_empty() {
                return Ok(ControlFlow::Continue(()));
            }
            let now = C::now();
            if let Some(until) = self.pipe.backoff_until {
                if now < until {
                    return Ok(ControlFlow::Continue(()));
                }
                self.pipe.backoff_until = None;
            }
            let commit_due = self.pipe.commit_due.is_some_and(|t| t <= now);
            // A further log round goes once the oldest in flight has been out for
            // `pipeline_after_us`: where rounds are short (CPU-bound, nodes close) what is
            // appended meanwhile waits for its answer and shares the next round, as with one
            // in flight; where they are long (nodes apart) it goes while they are out. The
            // network may let it go at once (`RaftNetwork::send_at_once`: the node has CPU to
            // spare, so an extra round costs nothing the load needs).
            let after = if self.network.send_at_once() {
                Duration::ZERO
            } else {
                Duration::from_micros(self.config.pipeline_after_us)
            };
            self.pipe.hold_until = match (&self.pipe.queued, self.pipe.current.front()) {
                (Some(_), Some(sent)) => Some(*sent + after).filter(|t| now < *t),
                _ => None,
            };
            let room = self.pipe.hold_until.is_none();
            // Logs held back leave the commit index to their round; a heartbeat still goes.
            let queued = self.pipe.queued.is_some();
            let next = if queued && room {
                self.pipe.queued.take().expect("queued")
            } else if self.pipe.heartbeat_wanted || (!queued && commit_due) {
                self.heartbeat_round()
            } else {
                return Ok(ControlFlow::Continue(()));
            };
            match self.start_round(next).await {
                Ok(()) => {}
                Err(ReplicationError::Closed(closed)) => return Err(closed),
                Err(ReplicationError::StorageError(error)) => {
                    self.report_storage_error(error);
                    return Ok(ControlFlow::Break(()));
                }
                Err(other) => unreachable!("only reading the log can fail here: {}", other),
            }
        }
    }

    /// A heartbeat: no entries, `prev` at what the follower is known to hold.
    fn heartbeat_round(&self) -> DataWithId<LogIdRange<C::NodeId>> {
        let m = self.matching.clone();
        DataWithId::new(RequestId::new_heartbeat(), LogIdRange::new(m.clone(), m))
    }

    /// Read the entries of the next round and send it.
    async fn start_round(
        &mut self,
        next: DataWithId<LogIdRange<C::NodeId>>,
    ) -> Result<(), ReplicationError<C::NodeId, C::Node>> {
        let request_id = next.request_id();
        let rng = next.data();
        let (entries, sent) = if request_id == RequestId::HeartBeat {
            (vec![], rng.clone())
        } else {
            self.load_logs(rng, self.config.max_payload_entries).await?
        };
        if sent.last < rng.last {
            self.pipe.queued = Some(DataWithId::new(request_id, LogIdRange::new(sent.last.clone(), rng.last.clone())));
        }

        // A round carries the commit index, and a heartbeat asked for is answered by any
        // round sent after it was asked for.
        self.pipe.heartbeat_wanted = false;
        self.pipe.sent_committed = self.committed.clone();
        self.pipe.commit_due = None;

        // A heartbeat carries no entries: it neither waits on nor overtakes anything.
        let heartbeat = request_id == RequestId::HeartBeat;
        let behind = !heartbeat && !self.pipe.current.is_empty();
        if !heartbeat {
            self.pipe.current.push_back(C::now());
        }
        let epoch = self.pipe.epoch;
        let payload = AppendEntriesRequest {
            vote: self.session_id.vote_ref().clone(),
            prev_log_id: sent.prev.clone(),
            leader_commit: self.committed.clone(),
            entries,
        };
        let the_timeout = Duration::from_millis(self.config.heartbeat_interval);
        let timed_out = Timeout {
            action: RPCTypes::AppendEntries,
            id: self.session_id.vote_ref().leader_id().voted_for().unwrap(),
            target: self.target.clone(),
            timeout: the_timeout,
        };
        let mut net = self.spare_networks.pop().expect("start_rounds checked for a free client");
        let leader_time = C::now();
        let sent = DataWithId::new(request_id, sent);

        self.pipe.rounds.push_back(Box::pin(async move {
            let res = C::timeout(the_timeout, net.append_entries(payload, RPCOption::new(the_timeout))).await;
            let answer = match res {
                Err(_) => Err(RPCError::Timeout(timed_out)),
                Ok(res) => DecomposeResult::<C, _, _>::decompose_infallible(res),
            };
            Round {
                epoch,
                behind,
                sent,
                leader_time,
                net,
                answer,
            }
        }));
        Ok(())
    }

    /// Handle the answer of the oldest round in flight.
    fn round_answered(&mut self, round: Round<C, N::Network>) -> ControlFlow<()> {
        let Round {
            epoch,
            behind,
            sent,
            leader_time,
            net,
            answer,
        } = round;
        self.spare_networks.push(net);
        let request_id = sent.request_id();
        let heartbeat = request_id == RequestId::HeartBeat;
        // A heartbeat's answer is the follower's word on the leader, whatever happened to
        // the rounds around it; a log round's counts only in its epoch.
        if !heartbeat {
            if epoch != self.pipe.epoch {
                return ControlFlow::Continue(());
            }
            self.pipe.current.pop_front();
        }
        let sent = sent.into_data();
        tracing::debug!(request_id = display(request_id), sent = display(&sent), answer = debug(&answer), "round answered");

        match answer {
            Ok(AppendEntriesResponse::Success) => {
                self.backoff = None;
                // A heartbeat's prev may be behind what the rounds ahead of it acknowledged.
                let matching = if heartbeat { self.matching.clone() } else { sent.last };
                self.send_progress(request_id, ReplicationResult::new(leader_time, Ok(matching)));
            }
            Ok(AppendEntriesResponse::PartialSuccess(matching)) => {
                self.backoff = None;
                if heartbeat {
                    let m = self.matching.clone();
                    self.send_progress(request_id, ReplicationResult::new(leader_time, Ok(m)));
                } else {
                    Self::debug_assert_partial_success(&sent, &matching);
                    self.send_progress(request_id, ReplicationResult::new(leader_time, Ok(matching.clone())));
                    if matching < sent.last {
                        // The rounds after this one start past what the follower holds.
                        self.resend_from_matching(request_id);
                    }
                }
            }
            Ok(AppendEntriesResponse::HigherVote(vote)) => {
                self.report_higher_vote(vote);
                return ControlFlow::Break(());
            }
            Ok(AppendEntriesResponse::Conflict) => {
                let conflict = sent.prev.clone().expect("prev_log_id=None never conflicts");
                if !heartbeat && behind && Some(&conflict) <= self.matching.as_ref() {
                    // It overtook the round ahead of it, which has since been accepted.
                    tracing::debug!(conflict = display(&conflict), "round arrived early; sending again");
                    self.resend_from_matching(request_id);
                } else {
                    self.send_progress(request_id, ReplicationResult::new(leader_time, Err(conflict)));
                    if !heartbeat {
                        self.range_failed(request_id);
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = display(&err), "round to target={} failed", self.target);
                match &err {
                    RPCError::PayloadTooLarge(too_large) => {
                        self.update_hint(too_large);
                        if !heartbeat {
                            self.resend_from_matching(request_id);
                            return ControlFlow::Continue(());
                        }
                    }
                    RPCError::Unreachable(_) => {
                        if self.backoff.is_none() {
                            self.backoff = Some(self.network.backoff());
                        }
                        self.arm_backoff();
                    }
                    _ => {}
                }
                self.send_progress_error(request_id, err);
                if !heartbeat {
                    self.range_failed(request_id);
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// Drop the rounds in flight and send the range again from what the follower holds.
    fn resend_from_matching(&mut self, request_id: RequestId) {
        self.pipe.drop_in_flight();
        self.pipe.queued = None;
        if self.matching < self.pipe.last {
            let rng = LogIdRange::new(self.matching.clone(), self.pipe.last.clone());
            self.pipe.queued = Some(DataWithId::new(request_id, rng));
        }
    }

    /// The range's failure is reported: drop its rounds and what the engine adds to it.
    fn range_failed(&mut self, request_id: RequestId) {
        self.pipe.drop_in_flight();
        self.pipe.queued = None;
        self.pipe.id = None;
        self.pipe.failed_id = Some(request_id);
    }

    /// No round before the next backoff interval.
    fn arm_backoff(&mut self) {
        let pause = self.backoff.as_mut().and_then(|b| b.next()).unwrap_or(Duration::from_millis(500));
        self.pipe.backoff_until = Some(C::now() + pause);
    }
}
