//! No elections from a follower while it installs a large snapshot.
//!
//! Installing a snapshot of a million records keeps a follower busy for seconds. openraft
//! 0.9 has no pre-vote, so when the install ends the follower finds its leader lease long
//! expired and starts an election at once; its higher term makes the healthy leader step
//! down, and the cluster takes writes again only after a new election (the scale bench saw
//! this every time at 1M records: terms 2-4 raised by the restarted follower, ~2 s without
//! a leader). So while the final chunk is installed, and for one election timeout after the
//! state machine reaches the snapshot (long enough for the leader's next heartbeat to renew
//! the lease), this node does not campaign. It still votes and accepts a leader, and the
//! other nodes can still elect one, so safety is untouched and only this node's own
//! candidacy waits.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cookie_raft::Raft;

use crate::tasks::Tasks;

/// How many installs are holding elections off. The count and the switch change together
/// under the lock, so a release never re-enables elections under a newer hold.
#[derive(Clone)]
pub struct InstallQuiet {
    raft: Raft,
    holds: Arc<Mutex<usize>>,
    /// One election timeout: how long after the state machine reached the snapshot this node
    /// still does not campaign.
    grace: Duration,
    /// The longest wait for the state machine to reach the snapshot (the install timeout).
    limit: Duration,
    /// Where the delayed releases run, so shutdown stops them.
    tasks: Tasks,
}

impl InstallQuiet {
    /// `grace`: the longest election timeout; `limit`: the snapshot install timeout.
    pub fn new(raft: Raft, grace: Duration, limit: Duration, tasks: Tasks) -> Self {
        InstallQuiet {
            raft,
            holds: Arc::default(),
            grace,
            limit,
            tasks,
        }
    }

    /// Hold elections off until `release` (called once per `hold`).
    pub fn hold(&self) {
        let mut holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        *holds += 1;
        self.raft.runtime_config().elect(false);
    }

    /// After the install answered: wait until the state machine has reached `index` (at most
    /// `limit`), then one `grace` more, then let this node campaign again unless another
    /// install still holds.
    pub fn release(&self, index: u64) {
        let holds = self.holds.clone();
        let (raft, grace, limit) = (self.raft.clone(), self.grace, self.limit);
        self.tasks.spawn("install-quiet release", async move {
            let mut rx = raft.metrics();
            let reached = rx.wait_for(|m| m.last_applied.is_some_and(|l| l.index >= index));
            let _ = tokio::time::timeout(limit, reached).await;
            tokio::time::sleep(grace).await;
            let mut holds = holds.lock().unwrap_or_else(|e| e.into_inner());
            *holds -= 1;
            if *holds == 0 {
                raft.runtime_config().elect(true);
            }
        });
    }
}
