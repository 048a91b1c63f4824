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
//!
//! A hold is a guard ([`Hold`]): it is released when dropped, so an install whose HTTP
//! handler is dropped half-way (the leader's connection closed) cannot leave this node
//! unable to campaign for good (issue 12).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cookie_raft::{CookieNode, NodeId, Raft};
use openraft::RaftMetrics;
use tokio::sync::watch;

use crate::tasks::Tasks;

type Metrics = RaftMetrics<NodeId, CookieNode>;

/// Turns this node's own campaigning on and off (openraft's `runtime_config().elect`).
type Elect = Arc<dyn Fn(bool) + Send + Sync>;

/// How many installs are holding elections off. The count and the switch change together
/// under the lock, so a release never re-enables elections under a newer hold.
#[derive(Clone)]
pub struct InstallQuiet {
    elect: Elect,
    /// Raft's metrics, to see the state machine reach the snapshot.
    metrics: watch::Receiver<Metrics>,
    holds: Arc<Mutex<usize>>,
    /// One election timeout: how long after the state machine reached the snapshot this node
    /// still does not campaign.
    grace: Duration,
    /// The longest wait for the state machine to reach the snapshot (the install timeout).
    limit: Duration,
    /// Where the delayed releases run, so shutdown stops them.
    tasks: Tasks,
}

/// Elections held off for one install of a snapshot up to `index`; released on drop: once
/// the state machine has reached `index` plus one grace if the install began
/// ([`Hold::installing`]), at once if it never did (a chunk refused, from an older vote,
/// out of place, invalid, or with no room for it). Waiting for an index that an install
/// never brings kept this node from campaigning for the whole install timeout, 30 s, and
/// for good while a disk-short follower was sent the chunk again and again (found in
/// review).
#[must_use = "dropping the hold releases it at once"]
pub struct Hold {
    quiet: InstallQuiet,
    index: u64,
    installing: AtomicBool,
}

impl Hold {
    /// The snapshot is being handed to Raft: from now on the release waits for it.
    pub fn installing(&self) {
        self.installing.store(true, Ordering::Relaxed);
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.installing.load(Ordering::Relaxed) {
            self.quiet.release(self.index);
        } else {
            self.quiet.release_now();
        }
    }
}

impl InstallQuiet {
    /// `grace`: the longest election timeout; `limit`: the snapshot install timeout.
    pub fn new(raft: &Raft, grace: Duration, limit: Duration, tasks: Tasks) -> Self {
        let switch = raft.clone();
        Self::with(
            Arc::new(move |on| switch.runtime_config().elect(on)),
            raft.metrics(),
            (grace, limit),
            tasks,
        )
    }

    fn with(
        elect: Elect,
        metrics: watch::Receiver<Metrics>,
        (grace, limit): (Duration, Duration),
        tasks: Tasks,
    ) -> Self {
        InstallQuiet {
            elect,
            metrics,
            holds: Arc::default(),
            grace,
            limit,
            tasks,
        }
    }

    /// Hold elections off while a snapshot up to `index` is installed, until the returned
    /// guard is dropped and then the state machine has reached `index` plus one `grace`.
    pub fn hold(&self, index: u64) -> Hold {
        let mut holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        *holds += 1;
        (self.elect)(false);
        Hold {
            quiet: self.clone(),
            index,
            installing: AtomicBool::new(false),
        }
    }

    /// A hold whose install never began: let this node campaign again at once unless
    /// another install still holds.
    fn release_now(&self) {
        let_go(&self.holds, &self.elect);
    }

    /// Wait until the state machine has reached `index` (at most `limit`), then one `grace`
    /// more, then let this node campaign again unless another install still holds.
    fn release(&self, index: u64) {
        let holds = self.holds.clone();
        let (elect, mut rx) = (self.elect.clone(), self.metrics.clone());
        let (grace, limit) = (self.grace, self.limit);
        let release = async move {
            let reached = rx.wait_for(|m| m.last_applied.is_some_and(|l| l.index >= index));
            let _ = tokio::time::timeout(limit, reached).await;
            tokio::time::sleep(grace).await;
            let_go(&holds, &elect);
        };
        self.tasks.spawn("install-quiet release", release);
    }
}

/// One hold ends: campaigning comes back on once none is left.
fn let_go(holds: &Mutex<usize>, elect: &Elect) {
    let mut holds = holds.lock().unwrap_or_else(|e| e.into_inner());
    *holds -= 1;
    if *holds == 0 {
        elect(true);
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId};

    use super::*;

    /// A quiet switch over a fake Raft: its campaigning flag and its applied index.
    fn quiet(tasks: &Tasks) -> (InstallQuiet, Arc<AtomicBool>, watch::Sender<Metrics>) {
        let campaigns = Arc::new(AtomicBool::new(true));
        let flag = campaigns.clone();
        let (tx, rx) = watch::channel(Metrics::new_initial(1));
        let grace = Duration::from_millis(20);
        let q = InstallQuiet::with(
            Arc::new(move |on| flag.store(on, Ordering::SeqCst)),
            rx,
            (grace, Duration::from_secs(5)),
            tasks.clone(),
        );
        (q, campaigns, tx)
    }

    fn apply(tx: &watch::Sender<Metrics>, index: u64) {
        tx.send_modify(|m| m.last_applied = Some(LogId::new(CommittedLeaderId::new(1, 1), index)));
    }

    async fn wait_until(flag: &AtomicBool, want: bool) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while flag.load(Ordering::SeqCst) != want {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the campaign flag never changed");
    }

    /// Issue 12: an install whose handler is dropped half-way (no explicit release) must
    /// not leave the node unable to campaign.
    #[tokio::test]
    async fn a_hold_dropped_mid_install_lets_the_node_campaign_again() {
        let tasks = Tasks::new();
        let (q, campaigns, tx) = quiet(&tasks);
        let hold = q.hold(10);
        hold.installing();
        assert!(!campaigns.load(Ordering::SeqCst));
        drop(hold); // the handler's future was dropped with it
        apply(&tx, 10);
        wait_until(&campaigns, true).await;
    }

    /// Two installs: the first one's release does not re-enable elections under the second.
    #[tokio::test]
    async fn elections_stay_off_while_any_install_holds() {
        let tasks = Tasks::new();
        let (q, campaigns, tx) = quiet(&tasks);
        let first = q.hold(5);
        let second = q.hold(9);
        first.installing();
        second.installing();
        drop(first);
        apply(&tx, 5);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!campaigns.load(Ordering::SeqCst), "re-enabled under a hold");
        drop(second);
        apply(&tx, 9);
        wait_until(&campaigns, true).await;
    }

    /// A final chunk that was never installed (refused, or from an older vote) releases its
    /// hold at once: before, the release waited the whole install limit (5 s here, 30 s by
    /// default) for an index no install would bring.
    #[tokio::test]
    async fn a_hold_whose_install_never_began_lets_the_node_campaign_at_once() {
        let tasks = Tasks::new();
        let (q, campaigns, _tx) = quiet(&tasks);
        let hold = q.hold(10);
        assert!(!campaigns.load(Ordering::SeqCst));
        drop(hold);
        assert!(campaigns.load(Ordering::SeqCst), "still held off");
        // And an install that began still waits for its index.
        let hold = q.hold(10);
        hold.installing();
        drop(hold);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !campaigns.load(Ordering::SeqCst),
            "released before the index was applied"
        );
    }
}
