//! Waiting briefly for the writers a batch has just answered, so they go back together.
//!
//! Clients answered by one batch write again within moments of each other, but not at
//! once: the first of them finds a free slot and, without this, is proposed alone. openraft
//! 0.9 keeps one AppendEntries in flight per follower, so that lone entry takes the
//! replication stream for a whole round while the rest of its cohort, arriving a few
//! hundred microseconds later, waits behind it. The cohort splits in two, and each half
//! waits for the other's round: about two rounds per write where one would do. It costs
//! little where a round is short (one loopback machine) and halves throughput where it is
//! long (nodes on separate machines: with nodes 1 ms apart, 16 clients measured at 2.4
//! round trips per write).
//!
//! So once a batch of `n` commands is answered, the next batch waits until `n` commands
//! wait for it, or until a short hold after that answer ends, whichever comes first. The
//! hold is a fraction of the recent round ([`HOLD_SHARE`]) capped by `batch.regather_us`,
//! so that the wait costs at most that share of a round when the cohort does not come back
//! (an open load, clients that left). A batch of one never holds anything: a single client
//! writing in a loop sees no extra latency.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The longest hold, as a share of the recent round (a batch's time from proposal to
/// answer). A cohort's return takes the answers' and the requests' time on both ends,
/// well under a round where rounds are long; where they are short (loopback) a short hold
/// keeps the cost of a cohort that does not come back small.
pub const HOLD_SHARE: f64 = 0.25;

/// What the last answered batch tells the next one.
#[derive(Debug, Default)]
struct Last {
    /// When the last batch was answered, and how many commands it carried.
    answered: Option<(Instant, usize)>,
    /// The rounds of recent batches, averaged (seconds).
    round: f64,
}

/// Shared between group commit's task (which asks whether to hold) and the tasks that
/// answer its batches (which report the answers).
#[derive(Clone)]
pub struct Regather {
    last: Arc<Mutex<Last>>,
    cap: Duration,
}

/// Hold the next batch until `want` commands wait for it, or until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub want: usize,
    pub until: Instant,
}

impl Regather {
    /// Holds of at most `cap` (zero: never hold).
    pub fn new(cap: Duration) -> Self {
        Regather {
            last: Arc::new(Mutex::new(Last::default())),
            cap,
        }
    }

    fn last(&self) -> std::sync::MutexGuard<'_, Last> {
        // Nothing panics while holding it; a poisoned lock still holds a usable value.
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A batch of `commands` was answered at `at`, `round` after it was proposed.
    pub fn answered(&self, at: Instant, commands: usize, round: Duration) {
        let mut last = self.last();
        let r = round.as_secs_f64();
        last.round = if last.round == 0.0 {
            r
        } else {
            last.round + (r - last.round) / 8.0
        };
        last.answered = Some((at, commands));
    }

    /// The recent rounds, averaged (zero before the first answer).
    pub fn round(&self) -> Duration {
        Duration::from_secs_f64(self.last().round)
    }

    /// Whether a batch about to form at `now`, with `waiting` commands ready for it, should
    /// wait for more of the last answered cohort first, and until when.
    pub fn hold(&self, now: Instant, waiting: usize) -> Option<Hold> {
        if self.cap.is_zero() {
            return None;
        }
        let last = self.last();
        let (at, want) = last.answered?;
        let len = Duration::from_secs_f64(last.round * HOLD_SHARE).min(self.cap);
        let until = at + len;
        (want > 1 && waiting < want && now < until).then_some(Hold { want, until })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn holds_for_the_cohort_a_share_of_a_round_after_its_answer() {
        let r = Regather::new(10 * MS);
        let t0 = Instant::now();
        assert_eq!(r.hold(t0, 0), None, "nothing answered yet");
        r.answered(t0, 16, 8 * MS);
        let hold = r.hold(t0, 1).expect("1 of 16 back");
        assert_eq!(hold.want, 16);
        assert_eq!(hold.until, t0 + 2 * MS, "a quarter of the 8 ms round");
        assert_eq!(r.hold(t0 + MS, 16), None, "the whole cohort is back");
        assert_eq!(r.hold(t0 + 2 * MS, 3), None, "the hold is over");
    }

    #[test]
    fn the_cap_bounds_the_hold_and_zero_turns_it_off() {
        let r = Regather::new(MS);
        let t0 = Instant::now();
        r.answered(t0, 16, 100 * MS);
        assert_eq!(r.hold(t0, 1).unwrap().until, t0 + MS);
        let off = Regather::new(Duration::ZERO);
        off.answered(t0, 16, 100 * MS);
        assert_eq!(off.hold(t0, 1), None);
    }

    #[test]
    fn a_lone_writer_is_never_held() {
        let r = Regather::new(10 * MS);
        let t0 = Instant::now();
        r.answered(t0, 1, 8 * MS);
        assert_eq!(r.hold(t0, 0), None);
    }

    #[test]
    fn the_round_is_averaged_over_recent_batches() {
        let r = Regather::new(Duration::from_secs(1));
        let t0 = Instant::now();
        r.answered(t0, 4, 8 * MS);
        r.answered(t0, 4, 16 * MS);
        // 8 + (16 - 8) / 8 = 9 ms; a quarter of it.
        let len = r.hold(t0, 0).unwrap().until - t0;
        assert_eq!(len, Duration::from_micros(2250));
    }
}
