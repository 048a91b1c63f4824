//! Forwarding writes from a follower to the leader, many per request.
//!
//! Two thirds of the writes a 3-node cluster receives arrive at a follower. Sent one HTTP
//! request each, they cost the leader as much HTTP work as its own clients do, and on a small
//! machine that work, not the disk, was what bounded write throughput (docs/benchmarks.md).
//! So a follower's writes queue for one task that sends whatever is waiting as one request
//! (`/raft/write`, a bincode list), with a few requests in flight: while one is out, the next
//! fills up, so requests grow with load as group commit's batches do. The leader offers
//! every command to its group commit at once and answers each one separately.
//!
//! Outcomes stay per command: [`ForwardReply::NotLeader`] is still a promise that *that*
//! command was not proposed. A transport failure is a fact about the whole request: refused
//! connection means nothing was sent; anything later means every command is unknown.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use super::queue::{Queue, Verdict};
use crate::cluster::peer::{PeerClient, PeerError};
use crate::cluster::proto::{ForwardReply, ForwardedWrite};
use crate::tasks::Tasks;

/// Writes per request; the leader's group commit splits them further as it must.
const MAX_PER_REQUEST: usize = 512;

/// Payload bytes per request, at most (one larger write still goes alone): 512 writes of up
/// to 1 MiB each would exceed the leader's body limit for `/raft/write`, and a refused
/// request is "not sent", retried until the write timed out (issue 12).
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// Writes waiting to be forwarded, at most; a full queue makes senders wait.
const QUEUE: usize = 16 * 1024;

/// How much longer than the leader's own deadline a follower waits for its answer, so the
/// leader's answer (even "unknown") arrives before the follower gives up on it.
pub const LEADER_ANSWER_SLACK: Duration = Duration::from_millis(500);

struct Job {
    addr: String,
    write: ForwardedWrite,
    deadline: Instant,
    reply: oneshot::Sender<Result<ForwardReply, PeerError>>,
}

/// Handle to the forwarding task.
#[derive(Clone)]
pub struct Forwarder {
    tx: mpsc::Sender<Job>,
}

impl Forwarder {
    /// Start the task in `tasks`; `inflight`: requests to the leader in flight at once.
    pub fn spawn(peers: PeerClient, inflight: usize, tasks: &Tasks) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tasks.spawn("write forwarding", run(peers, rx, inflight));
        Forwarder { tx }
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
        let job = Job {
            addr,
            write,
            deadline,
            reply,
        };
        if self.tx.send(job).await.is_err() {
            return Err(PeerError::NotSent("the node is shutting down".into()));
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

async fn run(peers: PeerClient, rx: mpsc::Receiver<Job>, inflight: usize) {
    let mut queue = Queue::new(rx);
    let slots = Arc::new(Semaphore::new(inflight));
    // One request goes to one address: jobs for another (older or newer) leader wait for
    // the next request. A job nobody waits for any more is not sent at all.
    loop {
        let mut bytes = 0;
        let judge = |j: &Job, taken: &[Job]| match taken.first() {
            _ if j.reply.is_closed() || j.deadline <= Instant::now() => Verdict::Drop,
            Some(first) if first.addr != j.addr => Verdict::Defer,
            Some(_) if bytes + j.write.cmd.size() > MAX_REQUEST_BYTES => Verdict::Stop,
            _ => {
                bytes += j.write.cmd.size();
                Verdict::Take
            }
        };
        // A slot first: the requests in flight are bounded, and the jobs that arrive while
        // they are make the next one larger.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(gathered) = queue.next(MAX_PER_REQUEST, judge).await else {
            return;
        };
        // Dropped jobs' waiters have given up already: dropping their replies is enough.
        let jobs = gathered.group;
        if jobs.is_empty() {
            continue;
        }
        let peers = peers.clone();
        // Bounded by the request's timeout (the latest deadline plus the slack).
        tokio::spawn(async move {
            let addr = jobs[0].addr.clone();
            send(&peers, &addr, jobs).await;
            drop(slot);
        });
    }
}

async fn send(peers: &PeerClient, addr: &str, jobs: Vec<Job>) {
    let latest = jobs
        .iter()
        .map(|j| j.deadline)
        .max()
        .unwrap_or_else(Instant::now);
    let timeout = latest.saturating_duration_since(Instant::now()) + LEADER_ANSWER_SLACK;
    let (writes, replies): (Vec<_>, Vec<_>) = jobs.into_iter().map(|j| (j.write, j.reply)).unzip();
    match peers.forward_writes(addr, &writes, timeout).await {
        Ok(answers) if answers.len() == replies.len() => {
            for (r, a) in replies.into_iter().zip(answers) {
                let _ = r.send(Ok(a));
            }
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
}
