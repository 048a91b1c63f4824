//! When this node builds a snapshot (openraft's own policy is off: `SnapshotPolicy::Never`).
//!
//! A build reads and compresses the whole state (about a second per 400,000 records on the
//! bench machine) so that the log before it can be purged. openraft's policy builds every
//! `snapshot_logs` entries whatever the sizes, so the cost of builds per write grew with the
//! data: at a million records the builds were a tenth of the CPU under load, at ten million
//! a node would build without pause. Here a build is due once the log since the last one
//! holds both `snapshot_logs` entries and `snapshot_log_ratio` times the bytes of the last
//! build: the bytes read per byte written stay bounded whatever the state's size, and the
//! log, at most that share of the state, stays in proportion to it on disk.
//!
//! A store whose load stops keeps the log written since its last snapshot, which no later
//! build will purge until writes resume; after `snapshot_idle_ms` without an entry, a build
//! is due if it would give back at least [`IDLE_MIN_LOG_BYTES`] and more entries than
//! `keep_logs_after_snapshot`.
//!
//! Builds small states freely: below [`RATIO_FROM_STATE_BYTES`] of state the entry count
//! alone decides, as before.
//!
//! Every node's policy sees the same log, so they all found a build due at the same tick and
//! built at once: on one host, three builds together (each flushing its layers, then reading
//! and compressing its state) left request threads waiting for a CPU. A build that is due
//! now waits for this node's turn: the next boundary of its [`Stagger`] in the log index, a
//! period being `snapshot_logs` entries (at most one period, or `TURN_MOST`). A build
//! does not wait on a node that is the only voter, nor once writes have stopped
//! (`TURN_IDLE`): nothing else is running then.

use std::time::Duration;

use cookie_raft::{LogSize, Raft, Stagger, StoreReader};
use tokio::time::Instant;

/// Below this many bytes of state a build is cheap, and the entry count alone decides.
pub const RATIO_FROM_STATE_BYTES: u64 = 16 << 20;
/// An idle store builds only when the log since its last snapshot is at least this long:
/// one WAL segment, the unit in which the log is given back (a log within the active
/// segment keeps its file whatever is purged).
pub const IDLE_MIN_LOG_BYTES: u64 = cookie_raft::log::wal::SEGMENT_BYTES;
/// How often the policy looks.
const TICK: Duration = Duration::from_millis(200);
/// A build asked for that has not happened by then (it failed, or openraft dropped the
/// request) is asked for again.
const RETRY: Duration = Duration::from_secs(30);
/// A build put off for want of disk room (`sm::snapshot`) is asked for again after this:
/// each try costs a look at the free space, and a disk gets room back in its own time.
const RETRY_POSTPONED: Duration = Duration::from_secs(1);
/// The longest a due build waits for this node's turn: writes too slow to reach its
/// boundary soon do not put a build off for long.
const TURN_MOST: Duration = Duration::from_secs(10);
/// A due build waits for its turn only while entries keep coming: once none came for this
/// long, nothing is left to spread the builds away from.
const TURN_IDLE: Duration = Duration::from_secs(1);

/// The policy's settings (`[raft]`).
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub logs: u64,
    pub ratio: f64,
    pub idle: Option<Duration>,
    pub keep: u64,
    /// This node's phase: when, once a build is due, its turn comes.
    pub stagger: Stagger,
}

/// What the policy weighs.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Entries applied since the last snapshot's index.
    pub entries: u64,
    /// Bytes of log after the last snapshot's index.
    pub log_bytes: u64,
    /// Uncompressed bytes of the last snapshot this node built; 0 when unknown.
    pub state_bytes: u64,
    /// How long since the last entry was appended.
    pub idle_for: Duration,
}

/// Why a build is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// The log has grown enough, against the state, since the last build.
    Grown,
    /// Writes have stopped, and a build would give log back.
    Idle,
}

impl Policy {
    /// The fewest entries since the last snapshot with which [`Policy::due`] can say yes:
    /// below it, the log's size (which needs the log's lock) is not worth asking for.
    fn least_entries(&self) -> u64 {
        match self.idle {
            Some(_) => self.logs.min(self.keep.saturating_add(1)),
            None => self.logs,
        }
    }

    pub fn due(&self, s: &Sizes) -> Option<Due> {
        let grown = s.entries >= self.logs
            && (s.state_bytes < RATIO_FROM_STATE_BYTES
                || s.log_bytes as f64 >= self.ratio * s.state_bytes as f64);
        if grown {
            return Some(Due::Grown);
        }
        let idle = self.idle.is_some_and(|d| s.idle_for >= d)
            && s.entries > self.keep
            && s.log_bytes >= IDLE_MIN_LOG_BYTES;
        idle.then_some(Due::Idle)
    }

    /// Whether this node's turn came: the log index passed one of its boundaries since a
    /// build became due at index `from`.
    fn my_turn(&self, from: u64, applied: u64) -> bool {
        let period = self.logs.max(1) as f64;
        self.stagger
            .crossed(from as f64 / period, applied as f64 / period)
    }
}

/// A grown build, due since index `from` for the snapshot at `base`, waiting for its turn.
struct Turn {
    base: Option<u64>,
    from: u64,
    since: Instant,
}

/// Watch this node's log and ask openraft for a build when the policy says so. Runs until
/// Raft shuts down.
pub async fn run(raft: Raft, policy: Policy, log: LogSize, reader: StoreReader) {
    let mut metrics = raft.metrics();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_index = None;
    let mut last_change = Instant::now();
    // The snapshot index when a build was last asked for, and when, and how many builds
    // had been put off by then.
    let mut asked: Option<(Option<u64>, Instant, u64)> = None;
    let mut turn: Option<Turn> = None;
    let postponed = || {
        reader
            .snapshot_counts()
            .postponed
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    loop {
        tick.tick().await;
        if metrics.has_changed().is_err() {
            return; // Raft has shut down.
        }
        let (last_log, applied, snapshot, alone) = {
            let m = metrics.borrow_and_update();
            (
                m.last_log_index,
                m.last_applied.map_or(0, |l| l.index),
                m.snapshot.map(|l| l.index),
                m.membership_config.membership().voter_ids().count() < 2,
            )
        };
        if last_log != last_index {
            last_index = last_log;
            last_change = Instant::now();
        }
        if asked.is_some_and(|(at, when, put_off)| {
            let wait = if postponed() > put_off {
                RETRY_POSTPONED
            } else {
                RETRY
            };
            at == snapshot && when.elapsed() < wait
        }) {
            continue; // a build is on its way, or was put off a moment ago
        }
        let base = snapshot.unwrap_or(0);
        let entries = applied.saturating_sub(base);
        // The cheap test first: the log's size needs its lock, which appends take.
        if entries < policy.least_entries() {
            continue;
        }
        let sizes = Sizes {
            entries,
            log_bytes: log.bytes_after(base),
            state_bytes: reader
                .snapshot_counts()
                .state_bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            idle_for: last_change.elapsed(),
        };
        let Some(why) = policy.due(&sizes) else {
            continue;
        };
        if why == Due::Grown && !alone && sizes.idle_for < TURN_IDLE {
            let t = match turn.take() {
                Some(t) if t.base == snapshot => t,
                _ => Turn {
                    base: snapshot,
                    from: applied.saturating_sub(1),
                    since: Instant::now(),
                },
            };
            if !policy.my_turn(t.from, applied) && t.since.elapsed() < TURN_MOST {
                turn = Some(t);
                continue;
            }
        }
        tracing::info!(
            reason = ?why,
            entries = sizes.entries,
            log_bytes = sizes.log_bytes,
            state_bytes = sizes.state_bytes,
            "building a snapshot"
        );
        if raft.trigger().snapshot().await.is_err() {
            return;
        }
        asked = Some((snapshot, Instant::now(), postponed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn policy() -> Policy {
        Policy {
            logs: 5000,
            ratio: 0.5,
            idle: Some(Duration::from_secs(10)),
            keep: 1000,
            stagger: Stagger::for_node(0),
        }
    }

    fn busy(entries: u64, log_bytes: u64, state_bytes: u64) -> Sizes {
        Sizes {
            entries,
            log_bytes,
            state_bytes,
            idle_for: Duration::ZERO,
        }
    }

    #[test]
    fn a_small_state_builds_every_snapshot_logs_entries() {
        let p = policy();
        assert_eq!(p.due(&busy(4999, 100 * MB, 0)), None);
        assert_eq!(p.due(&busy(5000, 1, 0)), Some(Due::Grown));
        assert_eq!(p.due(&busy(5000, 1, 15 * MB)), Some(Due::Grown));
    }

    #[test]
    fn a_large_state_waits_for_log_in_proportion() {
        let p = policy();
        // 400 MB of state: 200 MB of log pays for the next build, however many entries.
        assert_eq!(p.due(&busy(5000, 150 * MB, 400 * MB)), None);
        assert_eq!(p.due(&busy(50_000, 199 * MB, 400 * MB)), None);
        assert_eq!(p.due(&busy(5000, 200 * MB, 400 * MB)), Some(Due::Grown));
        // ... and never before `snapshot_logs` entries.
        assert_eq!(p.due(&busy(4999, 900 * MB, 400 * MB)), None);
    }

    #[test]
    fn a_ratio_of_zero_is_the_entry_count_alone() {
        let p = Policy {
            ratio: 0.0,
            ..policy()
        };
        assert_eq!(p.due(&busy(5000, 0, 10_000 * MB)), Some(Due::Grown));
    }

    #[test]
    fn an_idle_store_builds_when_that_gives_log_back() {
        let p = policy();
        let idle = |entries, log_bytes, idle_s| Sizes {
            entries,
            log_bytes,
            state_bytes: 400 * MB,
            idle_for: Duration::from_secs(idle_s),
        };
        assert_eq!(p.due(&idle(3000, 80 * MB, 10)), Some(Due::Idle));
        assert_eq!(p.due(&idle(3000, 80 * MB, 9)), None, "not idle long enough");
        assert_eq!(
            p.due(&idle(1000, 80 * MB, 60)),
            None,
            "nothing past the kept entries"
        );
        assert_eq!(
            p.due(&idle(3000, IDLE_MIN_LOG_BYTES - 1, 60)),
            None,
            "less than a segment to give back"
        );
        let never = Policy {
            idle: None,
            ..policy()
        };
        assert_eq!(never.due(&idle(3000, 60 * MB, 3600)), None);
    }

    /// Three nodes that find a build due at the same index take their turns apart, each
    /// within one period (`snapshot_logs` entries) of it.
    #[test]
    fn nodes_take_turns_apart_within_a_period() {
        let from = 12_345;
        let turns: Vec<u64> = (1..=3)
            .map(|id| {
                let p = Policy {
                    stagger: Stagger::for_node(id),
                    ..policy()
                };
                (from + 1..).find(|&i| p.my_turn(from, i)).unwrap()
            })
            .collect();
        let mut sorted = turns.clone();
        sorted.sort_unstable();
        assert!(sorted.windows(2).all(|w| w[1] - w[0] >= 1000), "{turns:?}");
        assert!(turns.iter().all(|&t| t <= from + 5000), "{turns:?}");
        // Node 0 (no phase) builds at each multiple of the period.
        assert!(policy().my_turn(14_999, 15_000));
        assert!(!policy().my_turn(15_000, 19_999));
    }

    /// Below `least_entries` no sizes make a build due, so skipping the log's size there
    /// changes nothing.
    #[test]
    fn fewer_entries_than_the_least_are_never_due() {
        for p in [
            policy(),
            Policy {
                idle: None,
                ..policy()
            },
        ] {
            let n = p.least_entries() - 1;
            let any = Sizes {
                entries: n,
                log_bytes: u64::MAX,
                state_bytes: 0,
                idle_for: Duration::from_secs(3600),
            };
            assert_eq!(p.due(&any), None, "{p:?}");
        }
    }
}
