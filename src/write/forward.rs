//! Forwarding writes from a follower to the leader, many per request.
//!
//! Two thirds of the writes a 3-node cluster receives arrive at a follower. Sent one HTTP
//! request each, they cost the leader as much HTTP work as its own clients do, and on a small
//! machine that work, not the disk, was what bounded write throughput (docs/benchmarks.md).
//! So a follower's writes queue for one task that sends whatever is waiting as one request
//! (`/raft/write`, a bincode list): while one is out, the next fills up, so requests grow
//! with load as group commit's batches do. The leader offers every command to its group
//! commit at once and answers each one separately.
//!
//! One request is in flight, and more (up to `batch.forward_inflight`) only while the
//! node's CPU sits idle, as with group commit's second batch ([`super::window`]). A second
//! request in flight splits the writes that would have gone together: each request reaches
//! the leader on its own and is proposed as its own, smaller entry. And once a request is
//! answered, the next one waits briefly for the writers that answer released, as group
//! commit does ([`super::regather`]): they come back a few at a time, and the first of them
//! would otherwise go alone and leave the rest a whole forwarded round behind. Writes sent
//! to a follower by 16 clients on the 2-core bench machine went 3 to a request and 5 to an
//! entry with four requests in flight at any load and no hold, at 211-223 µs of the
//! cluster's CPU per write; now 11 and 11, at 135-138 µs (docs/benchmarks.md). Where the
//! CPU is not short, rounds are bound by latency, and a write that waits for the request
//! ahead of it waits a round for nothing: there the window opens.
//!
//! A request the leader does not answer (it stopped, paused, or was cut off, and another
//! node leads now) would hold the one slot until its timeout, seconds, while writes for the
//! new leader wait behind it. So a request out for [`STALL_ROUNDS`] recent rounds (between
//! [`STALL_MIN`] and [`STALL_MAX`]) gives its slot up; it still counts against
//! `batch.forward_inflight`, which bounds the requests in flight in all, until writes are
//! aimed at another leader: then it gives that up too. And a request goes to the leader
//! the newest write was aimed at, whichever leader the writes it carries were aimed at when
//! they queued. A paused leader used to keep all of `forward_inflight` with requests that
//! gave their slots up, and writes queued for it went on being sent to it: writes through
//! followers waited about `write_timeout` past the election (found in review).
//!
//! Outcomes stay per command: [`ForwardReply::NotLeader`] is still a promise that *that*
//! command was not proposed. A transport failure is a fact about the whole request: refused
//! connection means nothing was sent; anything later means every command is unknown.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;

use super::queue::{Queue, Verdict};
use super::regather::Regather;
use super::window::Window;
use crate::cluster::peer::{PeerClient, PeerError};
use crate::cluster::proto::{ForwardReply, ForwardedWrite};
use crate::tasks::Tasks;

/// Writes per request; the leader's group commit splits them further as it must.
const MAX_PER_REQUEST: usize = 512;

/// Payload bytes per request, at most (one larger write still goes alone): 512 writes of up
/// to 1 MiB each would exceed the leader's body limit for `/raft/write`, and a refused
/// request is "not sent", retried until the write timed out (issue 12).
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// A request out for this many recent forwarded rounds no longer holds the window's slot
/// (see the module docs), within [`STALL_MIN`] (a node's `stall_floor`) and [`STALL_MAX`]:
/// a leader that answers at all answers well within that, even under load (a p99 of a few
/// rounds).
pub const STALL_ROUNDS: u32 = 8;
pub const STALL_MIN: Duration = Duration::from_millis(50);
pub const STALL_MAX: Duration = Duration::from_secs(1);

/// Writes waiting to be forwarded, at most; a full queue makes senders wait.
const QUEUE: usize = 16 * 1024;

/// How much longer than the leader's own deadline a follower waits for its answer, so the
/// leader's answer (even "unknown") arrives before the follower gives up on it.
pub const LEADER_ANSWER_SLACK: Duration = Duration::from_millis(500);

/// A write waiting to be forwarded. It carries no address: it goes to the leader the
/// newest write was aimed at (see the module docs).
struct Job {
    write: ForwardedWrite,
    deadline: Instant,
    reply: oneshot::Sender<Result<ForwardReply, PeerError>>,
}

/// Handle to the forwarding task.
#[derive(Clone)]
pub struct Forwarder {
    tx: mpsc::Sender<Job>,
    /// The leader address the newest write was aimed at.
    aim: Arc<watch::Sender<String>>,
}

/// How many requests may be in flight to the leader.
#[derive(Debug, Clone, Copy)]
pub struct ForwardLimits {
    /// At most this many in all (`batch.forward_inflight`), and more than one that has not
    /// stalled only while ...
    pub max_inflight: usize,
    /// ... at least this share of the CPU the node may use sat idle
    /// (`batch.pipeline_idle_above`; 1.0: never).
    pub idle_above: f64,
    /// The longest the next request waits for the writers of the last answered one
    /// (`batch.regather_us`; zero: never).
    pub regather: Duration,
    /// A request gives its slot up after [`STALL_ROUNDS`] recent rounds, and never sooner
    /// than this ([`STALL_MIN`]).
    pub stall_floor: Duration,
}

impl Forwarder {
    /// Start the task in `tasks`.
    pub fn spawn(peers: PeerClient, limits: ForwardLimits, tasks: &Tasks) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (aim, aimed) = watch::channel(String::new());
        tasks.spawn("write forwarding", run(peers, rx, aimed, limits));
        Forwarder {
            tx,
            aim: Arc::new(aim),
        }
    }

    /// Send `write` to the leader at `addr`; the answer arrives by `deadline` or the outcome
    /// is unknown.
    pub async fn forward(
        &self,
        addr: String,
        write: ForwardedWrite,
        deadline: Instant,
    ) -> Result<ForwardReply, PeerError> {
        let (reply, rx) = oneshot::channel();
        self.aim.send_if_modified(|aim| {
            let changed = *aim != addr;
            if changed {
                *aim = addr;
            }
            changed
        });
        let job = Job {
            write,
            deadline,
            reply,
        };
        // A queue full for as long as the client waits: nothing was sent, and it never will
        // be. (Waiting on without a deadline held the client past its write timeout.)
        let queued_by = deadline
            .checked_sub(LEADER_ANSWER_SLACK)
            .unwrap_or(deadline);
        match tokio::time::timeout_at(queued_by, self.tx.send(job)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(PeerError::NotSent("the node is shutting down".into())),
            Err(_) => {
                return Ok(ForwardReply::NotApplied(
                    "too many writes waiting to be forwarded to the leader".into(),
                ))
            }
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(PeerError::MaybeSent("the node shut down".into())),
            Err(_) => Err(PeerError::MaybeSent(
                "timed out waiting for the leader".into(),
            )),
        }
    }
}

async fn run(
    peers: PeerClient,
    rx: mpsc::Receiver<Job>,
    aimed: watch::Receiver<String>,
    limits: ForwardLimits,
) {
    let mut queue = Queue::new(rx);
    // Never by the load (`pipeline_below` 0): only idle CPU opens the window here.
    let mut window = Window::new(limits.max_inflight, 0).pipeline_when_idle(limits.idle_above);
    let regather = Regather::new(limits.regather);
    // Every request in flight holds one of these, stalled or not, until writes are aimed
    // at another leader. A job nobody waits for any more is not sent at all.
    let all = Arc::new(Semaphore::new(limits.max_inflight.max(1)));
    loop {
        let mut bytes = 0;
        let judge = |j: &Job, taken: &[Job]| {
            if j.reply.is_closed() || j.deadline <= Instant::now() {
                Verdict::Drop
            } else if !taken.is_empty() && bytes + j.write.cmd.size() > MAX_REQUEST_BYTES {
                Verdict::Stop
            } else {
                bytes += j.write.cmd.size();
                Verdict::Take
            }
        };
        // A slot first: the requests in flight are bounded, and the jobs that arrive while
        // they are make the next one larger.
        let mut slot = window.slot().await;
        let Ok(permit) = all.clone().acquire_owned().await else {
            return;
        };
        if !queue.ready().await {
            return;
        }
        // The writers a request's answer has just released come back a few at a time: the
        // first of them would go alone and take the request slot for a whole round while
        // the rest wait behind it. Unlike group commit's hold, this one idles nothing:
        // the leader goes on with the other nodes' writes.
        let start = Instant::now();
        if let Some(hold) = regather.hold(start, queue.waiting()) {
            queue.fill(hold.want, hold.until).await;
        }
        let Some(gathered) = queue.next(MAX_PER_REQUEST, judge).await else {
            return;
        };
        // Dropped jobs' waiters have given up already: dropping their replies is enough.
        let jobs = gathered.group;
        if jobs.is_empty() {
            continue;
        }
        window.sample_idle();
        window.proposed(&mut slot, jobs.len(), queue.waiting());
        let (peers, regather) = (peers.clone(), regather.clone());
        let mut aimed = aimed.clone();
        let addr = aimed.borrow_and_update().clone();
        let stall = (regather.round() * STALL_ROUNDS)
            .min(STALL_MAX)
            .max(limits.stall_floor);
        // Bounded by the request's timeout (the latest deadline plus the slack).
        tokio::spawn(async move {
            let (writes, sent) = (jobs.len(), Instant::now());
            let request = send(&peers, &addr, jobs);
            tokio::pin!(request);
            let (mut slot, mut permit) = (Some(slot), Some(permit));
            let answered = tokio::select! {
                answered = &mut request => answered,
                _ = tokio::time::sleep(stall) => {
                    drop(slot.take());
                    tokio::select! {
                        answered = &mut request => answered,
                        () = aimed_elsewhere(&mut aimed, &addr) => {
                            drop(permit.take());
                            request.await
                        }
                    }
                }
            };
            // Only a request the leader answered says how long a round is, and whom to wait
            // for; before the slot frees, so that the next request, formed the moment it
            // does, knows.
            if answered {
                let at = Instant::now();
                regather.answered(at, writes, at - sent);
            }
            drop(slot);
            drop(permit);
        });
    }
}

/// Resolves once writes are aimed at a leader other than `addr`; never, if the forwarder
/// is gone.
async fn aimed_elsewhere(aimed: &mut watch::Receiver<String>, addr: &str) {
    loop {
        if *aimed.borrow_and_update() != addr {
            return;
        }
        if aimed.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Send `jobs` as one request and hand each its answer; whether the leader answered.
async fn send(peers: &PeerClient, addr: &str, jobs: Vec<Job>) -> bool {
    let latest = jobs
        .iter()
        .map(|j| j.deadline)
        .max()
        .unwrap_or_else(Instant::now);
    let now = Instant::now();
    let timeout = latest.saturating_duration_since(now) + LEADER_ANSWER_SLACK;
    let (writes, replies): (Vec<_>, Vec<_>) = jobs
        .into_iter()
        .map(|mut j| {
            // The time the write has left, counted now: it waited in this queue since it was
            // made, and the leader counts from when the request reaches it. Counted from the
            // making, the leader went on with it after this node had answered its client
            // "unknown".
            let left = j
                .deadline
                .saturating_duration_since(now + LEADER_ANSWER_SLACK);
            let left = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
            j.write.timeout_ms = j.write.timeout_ms.min(left);
            (j.write, j.reply)
        })
        .unzip();
    match peers.forward_writes(addr, &writes, timeout).await {
        Ok(answers) if answers.len() == replies.len() => {
            for (r, a) in replies.into_iter().zip(answers) {
                let _ = r.send(Ok(a));
            }
            return true;
        }
        Ok(answers) => {
            let e = PeerError::MaybeSent(format!(
                "the leader answered {} of {} writes",
                answers.len(),
                replies.len()
            ));
            for r in replies {
                let _ = r.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for r in replies {
                let _ = r.send(Err(e.clone()));
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::body::Bytes;
    use axum::routing::post;
    use cookie_raft::{codec, AddressBook, CmdResult, Command, Identity, PeerHttp};
    use tokio::sync::Semaphore;

    use super::*;
    use crate::cluster::proto::WRITE_PATH;

    /// A stand-in leader: notes how many writes each `/raft/write` request carries and
    /// holds each answer until the test lets one go.
    struct Leader {
        addr: String,
        sizes: Arc<Mutex<Vec<usize>>>,
        /// The `timeout_ms` of every write received, in order.
        timeouts: Arc<Mutex<Vec<u64>>>,
        answer: Arc<Semaphore>,
    }

    impl Leader {
        async fn start() -> Leader {
            let sizes = Arc::new(Mutex::new(Vec::new()));
            let timeouts = Arc::new(Mutex::new(Vec::new()));
            let answer = Arc::new(Semaphore::new(0));
            let (s, t, a) = (sizes.clone(), timeouts.clone(), answer.clone());
            let handler = move |body: Bytes| async move {
                let writes: Vec<ForwardedWrite> = codec::decode(&body).expect("a write list");
                s.lock().unwrap().push(writes.len());
                t.lock()
                    .unwrap()
                    .extend(writes.iter().map(|w| w.timeout_ms));
                a.acquire().await.expect("open").forget();
                let replies = vec![ForwardReply::Applied(CmdResult::Deleted); writes.len()];
                codec::encode(&replies).expect("encodes")
            };
            let app = axum::Router::new().route(WRITE_PATH, post(handler));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            tokio::spawn(async move { axum::serve(listener, app).await });
            Leader {
                addr,
                sizes,
                timeouts,
                answer,
            }
        }

        async fn requests(&self, n: usize) -> Vec<usize> {
            wait_for(|| self.sizes.lock().unwrap().len() >= n).await;
            self.sizes.lock().unwrap().clone()
        }
    }

    async fn wait_for(mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "condition not met in 10 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn start(limits: ForwardLimits) -> Forwarder {
        start_queueing(limits, QUEUE)
    }

    /// [`start`] with a queue of `queue` writes.
    fn start_queueing(limits: ForwardLimits, queue: usize) -> Forwarder {
        let peers = PeerClient::new(
            None,
            AddressBook::default(),
            Arc::new(Identity::new(2, 1, false)),
            PeerHttp::new(None).unwrap(),
        );
        let (tx, rx) = mpsc::channel(queue);
        let (aim, aimed) = watch::channel(String::new());
        tokio::spawn(run(peers, rx, aimed, limits));
        Forwarder {
            tx,
            aim: Arc::new(aim),
        }
    }

    fn write(n: usize) -> ForwardedWrite {
        ForwardedWrite {
            cmd: Command::Delete {
                id: format!("cookie:{n}"),
                if_match: None,
            },
            request_id: format!("req-{n}"),
            timeout_ms: 30_000,
        }
    }

    /// One request at a time, held by the stand-in leader until the test lets it go.
    const ONE_AT_A_TIME: ForwardLimits = ForwardLimits {
        max_inflight: 1,
        idle_above: 1.0,
        regather: Duration::ZERO,
        stall_floor: Duration::from_secs(60),
    };

    /// A write tells the leader the time it has left when it is sent, not when it was
    /// queued: the leader counts from the request's arrival, and went on with a write that
    /// had waited here for seconds after this node had answered its client.
    #[tokio::test]
    async fn a_write_that_waited_in_the_queue_tells_the_leader_the_time_it_has_left() {
        let leader = Leader::start().await;
        let fwd = start(ONE_AT_A_TIME);
        let far = Instant::now() + Duration::from_secs(30);
        let out = {
            let (fwd, addr) = (fwd.clone(), leader.addr.clone());
            tokio::spawn(async move { fwd.forward(addr, write(0), far).await })
        };
        assert_eq!(leader.requests(1).await, vec![1]);
        // Ten seconds for the client, as `Writer::write` makes it: the leader's part, then
        // the slack this node waits beyond it.
        let deadline = Instant::now() + Duration::from_secs(10) + LEADER_ANSWER_SLACK;
        let mut queued = write(1);
        queued.timeout_ms = 10_000;
        let waiting = {
            let (fwd, addr) = (fwd.clone(), leader.addr.clone());
            tokio::spawn(async move { fwd.forward(addr, queued, deadline).await })
        };
        wait_for(|| fwd.tx.max_capacity() - fwd.tx.capacity() == 1).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        leader.answer.add_permits(2);
        assert_eq!(leader.requests(2).await, vec![1, 1]);
        let sent = leader.timeouts.lock().unwrap()[1];
        assert!(
            sent <= 8_500,
            "a write queued for 1.5 s of its 10 told the leader it had {sent} ms"
        );
        out.await.unwrap().expect("answered");
        waiting.await.unwrap().expect("answered");
    }

    /// A queue that stays full for as long as the client waits: the write is not sent,
    /// and says so by then. It used to wait for room with no deadline at all.
    #[tokio::test]
    async fn a_write_the_full_queue_never_takes_is_not_applied_by_its_deadline() {
        let leader = Leader::start().await;
        let fwd = start_queueing(ONE_AT_A_TIME, 1);
        let far = Instant::now() + Duration::from_secs(30);
        let send = |n, deadline| {
            let (fwd, addr) = (fwd.clone(), leader.addr.clone());
            tokio::spawn(async move { fwd.forward(addr, write(n), deadline).await })
        };
        let out = send(0, far);
        assert_eq!(leader.requests(1).await, vec![1]);
        let queued = send(1, far);
        wait_for(|| fwd.tx.capacity() == 0).await;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(1) + LEADER_ANSWER_SLACK;
        let reply = tokio::time::timeout(Duration::from_secs(10), send(2, deadline))
            .await
            .expect("a write that found the queue full waited past its deadline")
            .unwrap();
        assert!(
            matches!(&reply, Ok(ForwardReply::NotApplied(why)) if why.contains("too many writes")),
            "{reply:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        leader.answer.add_permits(2);
        out.await.unwrap().expect("answered");
        queued.await.unwrap().expect("answered");
    }

    /// Writes that arrive while a request is out wait for it and go together in the next:
    /// with a second request in flight they would go at once, alone, and each would become
    /// its own entry on the leader.
    #[tokio::test]
    async fn writes_that_wait_for_the_request_out_go_together_in_the_next() {
        let leader = Leader::start().await;
        // CPU idleness never opens the window here: one request in flight, as on a busy node.
        let fwd = start(ForwardLimits {
            max_inflight: 4,
            idle_above: 1.0,
            regather: Duration::ZERO,
            // The request out is held on purpose here: it never counts as stalled.
            stall_floor: Duration::from_secs(60),
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let send = |n| {
            let (fwd, addr) = (fwd.clone(), leader.addr.clone());
            tokio::spawn(async move { fwd.forward(addr, write(n), deadline).await })
        };
        let mut answers = vec![send(0)];
        assert_eq!(leader.requests(1).await, vec![1]);
        answers.extend((1..=10).map(send));
        // All ten queue behind the request that is out; none is sent yet.
        wait_for(|| fwd.tx.max_capacity() - fwd.tx.capacity() == 10).await;
        assert_eq!(leader.requests(1).await, vec![1]);
        leader.answer.add_permits(1);
        assert_eq!(leader.requests(2).await, vec![1, 10]);
        leader.answer.add_permits(1);
        for a in answers {
            let reply = a.await.unwrap().expect("answered");
            assert_eq!(reply, ForwardReply::Applied(CmdResult::Deleted));
        }
    }

    /// The writers one request's answer releases come back one by one; the next request
    /// waits (a quarter of the recent round at most) until they are all back, rather than
    /// going with the first of them alone and leaving the rest a round behind.
    #[tokio::test]
    async fn the_writers_an_answer_releases_go_together_in_the_next_request() {
        const ROUND: Duration = Duration::from_secs(2);
        let leader = Leader::start().await;
        let fwd = start(ForwardLimits {
            max_inflight: 4,
            idle_above: 1.0,
            regather: Duration::from_secs(10),
            stall_floor: Duration::from_secs(60),
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let send = |n| {
            let (fwd, addr) = (fwd.clone(), leader.addr.clone());
            tokio::spawn(async move { fwd.forward(addr, write(n), deadline).await })
        };
        // Two requests, each answered a long round after it went: [1], then the four that
        // queued behind it.
        let first = send(0);
        assert_eq!(leader.requests(1).await, vec![1]);
        let cohort: Vec<_> = (1..=4).map(send).collect();
        wait_for(|| fwd.tx.max_capacity() - fwd.tx.capacity() == 4).await;
        tokio::time::sleep(ROUND).await;
        leader.answer.add_permits(1);
        assert_eq!(leader.requests(2).await, vec![1, 4]);
        first.await.unwrap().expect("answered");
        tokio::time::sleep(ROUND).await;
        leader.answer.add_permits(1);
        // The cohort of four is answered; its writers write again, 10 ms apart (the hold
        // is a quarter of the 2-s round).
        let mut again = Vec::new();
        for (n, a) in (5..).zip(cohort) {
            a.await.unwrap().expect("answered");
            again.push(send(n));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(leader.requests(3).await, vec![1, 4, 4]);
        leader.answer.add_permits(1);
        for a in again {
            a.await.unwrap().expect("answered");
        }
    }

    /// A leader that stops answering (paused, cut off) while another takes over: the
    /// request stuck on it gives the window's slot up, and writes for the new leader go
    /// without waiting for its timeout.
    #[tokio::test]
    async fn a_request_the_old_leader_never_answers_does_not_hold_up_the_new_leader() {
        let (old, new) = (Leader::start().await, Leader::start().await);
        new.answer.add_permits(1000);
        let fwd = start(ForwardLimits {
            max_inflight: 4,
            idle_above: 1.0,
            regather: Duration::from_millis(1),
            stall_floor: STALL_MIN,
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let stuck = {
            let (fwd, addr) = (fwd.clone(), old.addr.clone());
            tokio::spawn(async move { fwd.forward(addr, write(0), deadline).await })
        };
        assert_eq!(old.requests(1).await, vec![1]);
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            fwd.forward(new.addr.clone(), write(1), deadline),
        )
        .await
        .expect("sent and answered long before the stuck request's timeout")
        .expect("answered");
        assert_eq!(reply, ForwardReply::Applied(CmdResult::Deleted));
        assert!(!stuck.is_finished(), "the old leader never answered");
    }

    /// Requests stuck on a leader that stopped answering keep none of `forward_inflight`
    /// once writes are aimed at another, and a write still queued for the old leader goes
    /// to the new one: before, both waited for the stuck requests' timeout (found in
    /// review).
    #[tokio::test]
    async fn writes_aimed_at_a_new_leader_do_not_wait_for_requests_stuck_on_the_old() {
        let (old, new) = (Leader::start().await, Leader::start().await);
        new.answer.add_permits(1000);
        let fwd = start(ForwardLimits {
            max_inflight: 2,
            idle_above: 1.0,
            regather: Duration::from_millis(1),
            stall_floor: STALL_MIN,
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let send = |n: usize, to: &Leader| {
            let (fwd, addr) = (fwd.clone(), to.addr.clone());
            tokio::spawn(async move { fwd.forward(addr, write(n), deadline).await })
        };
        // Two requests out to the old leader, each stalled: every permit is held.
        let first = send(0, &old);
        assert_eq!(old.requests(1).await, vec![1]);
        let stuck = [first, send(1, &old)];
        assert_eq!(old.requests(2).await, vec![1, 1]);
        // One more write for the old leader queues; then writes are aimed at the new one.
        let queued = send(2, &old);
        wait_for(|| fwd.tx.max_capacity() - fwd.tx.capacity() == 1).await;
        let fresh = send(3, &new);
        for answer in [queued, fresh] {
            let reply = tokio::time::timeout(Duration::from_secs(5), answer)
                .await
                .expect("answered long before the stuck requests' timeout")
                .unwrap()
                .expect("answered");
            assert_eq!(reply, ForwardReply::Applied(CmdResult::Deleted));
        }
        assert_eq!(
            old.requests(2).await,
            vec![1, 1],
            "nothing more went to the old leader"
        );
        assert!(
            stuck.iter().all(|s| !s.is_finished()),
            "the old leader never answered"
        );
    }
}
