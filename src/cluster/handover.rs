//! A leader that is asked to stop (SIGTERM: a rolling restart, a pod rescheduled) hands
//! leadership over before it closes its listeners, so the cluster's leaderless window is
//! one lease, not a lease plus a failed election, and no request meets a closed port on
//! the way.
//!
//! openraft 0.9 has no leadership transfer, and its followers refuse to vote while the
//! leader's lease (`election_timeout_max`) runs: every AppendEntries, heartbeat or not,
//! renews it. So the leader makes itself quiet:
//! 1. it stops proposing: [`Cluster::leader`] and [`Cluster::is_leader`] answer as if it
//!    did not lead, so new writes and read-index requests here (and those forwarded to it)
//!    wait for the next leader and go there; entries already proposed still replicate;
//! 2. it turns off its heartbeats and its own elections (openraft's runtime config);
//! 3. the followers' leases run out, one of them campaigns, and wins (this node's log is
//!    no longer than theirs once its last entries are replicated);
//! 4. once another leader is known (or a bound passes), the node stops as usual: its HTTP
//!    servers drain, then Raft shuts down.
//!
//! Requests that arrive here meanwhile are served: they wait for the new leader and are
//! forwarded to it, within their own timeout.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::Cluster;

impl Cluster {
    /// Hand leadership over if this node leads a cluster of more than one voter; `true`
    /// when another node leads at the end. Waits at most `bound`.
    pub async fn step_down(&self, bound: Duration) -> bool {
        let voters = self.members().voters.len();
        if !self.is_leader() || voters < 2 {
            return false;
        }
        tracing::info!("stopping: handing leadership over first");
        self.stepping_down.store(true, Ordering::SeqCst);
        let config = self.raft.runtime_config();
        config.heartbeat(false);
        config.elect(false);
        let deadline = Instant::now() + bound;
        let mut rx = self.raft.metrics();
        loop {
            let leader = rx.borrow_and_update().current_leader;
            if leader.is_some_and(|l| l != self.me) {
                tracing::info!(leader = ?leader, "leadership handed over");
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!("no other leader after {bound:?}; stopping anyway");
                return false;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), rx.changed()).await;
        }
    }
}
