//! How long the log and the state machine take at their steps: the disk's and the apply's
//! parts of every write's round, and the wait between (from an append to the apply of what
//! it carried: the commit), beside the peer RPCs the node times itself. What an
//! operator of etcd reads in `etcd_disk_wal_fsync_duration_seconds` and
//! `etcd_disk_backend_commit_duration_seconds`, and what a slow round is taken apart with
//! (docs/benchmarks.md: on 16 cores a batch's round took two to three times its
//! AppendEntries' round trip).
//!
//! Process-wide histograms, as the `prometheus` crate's own default registry keeps them, so
//! that the stores need not be handed a registry through openraft: the node adds them to its
//! own ([`register`]). Every store in one process records into the same ones, and the
//! commit's timer follows one log's indexes (only tests open more than one).

use std::collections::VecDeque;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};

/// From 100 µs (an fsync on a fast SSD) to 5 s (a disk in trouble).
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.5, 1.0, 5.0,
];

fn histogram(name: &str, help: &str) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()))
        .expect("a valid histogram")
}

/// An append of log entries, from openraft's call to its fsync's end.
pub static LOG_APPEND: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "raft_log_append_seconds",
        "Time from openraft's append of log entries to the end of the fsync that made them \
         durable: written to the WAL, queued behind the group fsync, synced. A leader counts \
         a write as its own vote only after it",
    )
});

/// One fsync of the WAL (one for every append queued meanwhile).
pub static WAL_FSYNC: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "raft_wal_fsync_seconds",
        "Time one fdatasync of the WAL took (one covers every append queued while the \
         last ran)",
    )
});

/// One call of the state machine's apply.
pub static APPLY: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "raft_apply_seconds",
        "Time the state machine took to apply one run of committed entries openraft handed \
         it: the records into its layers, the read cache, the applied index",
    )
});

/// From an append of log entries to the start of their apply.
pub static COMMIT: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "raft_commit_seconds",
        "Time from the append of log entries here to the start of their apply. On a leader: \
         its own append and fsync beside a quorum's (an append RPC and a follower's fsync), \
         and the commit reaching the state machine. On a follower: also until an append or \
         heartbeat from the leader carries the commit index",
    )
});

/// From an append of log entries to the start of an append RPC that carries them.
pub static SEND_DELAY: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "raft_append_send_delay_seconds",
        "Time from the leader's append of log entries to the start of the append RPC that \
         carries them to a follower (one sample per RPC and follower, for its oldest entry): \
         the replication task's wake-up, its read and encode of the entries, and any wait \
         behind that follower's earlier RPCs",
    )
});

/// From a follower's answer acknowledging entries to the start of their apply.
pub static APPLY_DELAY: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "raft_apply_delay_seconds",
        "Time from the first follower's answer acknowledging log entries to the start of \
         their apply on the leader: openraft's core taking the answer, advancing the commit \
         index and handing the entries to the state machine (and, when the leader's own \
         fsync ends later, the rest of that fsync)",
    )
});

/// One write of the state machine's applied changes into `sm.redb` (`sm::overlay`).
pub static STATE_FLUSH: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "raft_state_flush_seconds",
        "Time the state-flush thread took to write one frozen layer of applied changes into \
         sm.redb in one durable commit (etcd's backend commit): beside the apply, unless the \
         apply has to wait for it (raft_apply_flush_wait_seconds)",
    )
});

/// A wait of the apply for a write of the state machine's changes, its layers being full.
pub static APPLY_FLUSH_WAIT: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "raft_apply_flush_wait_seconds",
        "Time an apply waited for the state-flush thread because the layers of applied \
         changes not yet in sm.redb were at their memory bound: a stall of every write. \
         Seen where the flush thread gets too little CPU or disk for the write rate",
    )
});

/// The most appends waiting for their apply that [`COMMIT`] keeps track of: a node
/// whose apply lags further than that stops timing the oldest, and nothing grows.
const PENDING_MAX: usize = 4096;

/// Appends not yet applied, timed into a histogram when their apply begins.
struct CommitClock {
    /// The last index of each append and when it began, oldest first.
    pending: Mutex<Pending>,
    histogram: Histogram,
}

#[derive(Default)]
struct Pending {
    appends: VecDeque<(u64, Instant)>,
    /// The last index of the newest append taken off the front (applied, installed over,
    /// or dropped for room): entries up to it are not timed.
    floor: u64,
}

impl CommitClock {
    fn new(histogram: Histogram) -> Self {
        CommitClock {
            pending: Mutex::new(Pending::default()),
            histogram,
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn appended(&self, first: u64, last: u64, started: Instant) {
        let mut p = self.pending();
        // A follower's log cut back and written again: what was cut will never be applied.
        while p.appends.back().is_some_and(|&(i, _)| i >= first) {
            p.appends.pop_back();
        }
        if p.appends.len() == PENDING_MAX {
            if let Some((i, _)) = p.appends.pop_front() {
                p.floor = i;
            }
        }
        p.appends.push_back((last, started));
    }

    /// When the append that holds `index` began, if it waits for its apply.
    fn started(&self, index: u64) -> Option<Instant> {
        let p = self.pending();
        if index <= p.floor {
            return None;
        }
        // Appends are in index order, each kept by its last index.
        let at = p.appends.partition_point(|&(i, _)| i < index);
        p.appends.get(at).map(|&(_, started)| started)
    }

    /// Appends up to `last` are done with: timed if `applied`, else only dropped.
    fn reached(&self, last: u64, applied: bool) {
        let now = Instant::now();
        let mut p = self.pending();
        while let Some(&(i, started)) = p.appends.front() {
            if i > last {
                break;
            }
            p.appends.pop_front();
            p.floor = i;
            if applied {
                let waited = now.saturating_duration_since(started);
                self.histogram.observe(waited.as_secs_f64());
            }
        }
    }
}

static CLOCK: LazyLock<CommitClock> = LazyLock::new(|| CommitClock::new(COMMIT.clone()));

/// Answers of followers not yet reached by the apply: the last index each acknowledged and
/// when, increasing (only the first answer for an index is kept).
struct Answers {
    q: Mutex<VecDeque<(u64, Instant)>>,
    histogram: Histogram,
}

impl Answers {
    fn new(histogram: Histogram) -> Self {
        Answers {
            q: Mutex::new(VecDeque::new()),
            histogram,
        }
    }

    fn q(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Instant)>> {
        self.q.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn answered(&self, last: u64, at: Instant) {
        let mut q = self.q();
        if q.back().is_some_and(|&(i, _)| i >= last) {
            return;
        }
        if q.len() == PENDING_MAX {
            q.pop_front();
        }
        q.push_back((last, at));
    }

    /// The apply of entries up to `last` begins (timed if `applied`): it waited since the
    /// first answer that acknowledged `last`.
    fn reached(&self, last: u64, applied: bool) {
        let now = Instant::now();
        let mut q = self.q();
        while q.front().is_some_and(|&(i, _)| i < last) {
            q.pop_front();
        }
        let Some(&(i, at)) = q.front() else { return };
        if i == last {
            q.pop_front();
        }
        if applied {
            let waited = now.saturating_duration_since(at);
            self.histogram.observe(waited.as_secs_f64());
        }
    }
}

static ANSWERS: LazyLock<Answers> = LazyLock::new(|| Answers::new(APPLY_DELAY.clone()));

/// An append RPC carrying entries from `first` on starts now ([`SEND_DELAY`]).
pub fn sending(first: u64) {
    if let Some(started) = CLOCK.started(first) {
        since(&SEND_DELAY, started);
    }
}

/// A follower acknowledged every entry up to `last` ([`APPLY_DELAY`]).
pub fn answered(last: u64) {
    ANSWERS.answered(last, Instant::now());
}

/// An append of the entries `first..=last` began at `started` ([`COMMIT`]).
pub fn appended(first: u64, last: u64, started: Instant) {
    CLOCK.appended(first, last, started);
}

/// The apply of entries up to `last` begins: every append they came in is committed.
pub fn applying(last: u64) {
    CLOCK.reached(last, true);
    ANSWERS.reached(last, true);
}

/// A snapshot up to `last` was installed: appends up to there will not be applied.
pub fn installed(last: u64) {
    CLOCK.reached(last, false);
    ANSWERS.reached(last, false);
}

/// Reads of log entries (replication, apply), by where they were served from.
pub static LOG_READS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "raft_log_reads_total",
            "Reads of Raft log entries (each follower's replication stream, the apply), by \
             where they were served from: tail (the newest entries, kept decoded in memory, \
             storage.log_cache_bytes) or wal (read back from the WAL and decoded: a reader \
             behind the tail, or a range that starts before it)",
        ),
        &["from"],
    )
    .expect("a valid counter")
});

/// Adds the histograms and the read counter to a node's registry.
pub fn register(r: &Registry) -> prometheus::Result<()> {
    r.register(Box::new(LOG_READS.clone()))?;
    for h in [
        &*LOG_APPEND,
        &*WAL_FSYNC,
        &*APPLY,
        &*COMMIT,
        &*SEND_DELAY,
        &*APPLY_DELAY,
        &*STATE_FLUSH,
        &*APPLY_FLUSH_WAIT,
    ] {
        r.register(Box::new(h.clone()))?;
    }
    Ok(())
}

/// Records the time since `started` in `h`.
pub fn since(h: &Histogram, started: Instant) {
    h.observe(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histograms_go_into_a_registry_and_count_what_is_recorded() {
        let r = Registry::new();
        register(&r).unwrap();
        // Other tests in this process apply entries too: at least this one is counted.
        let before = APPLY.get_sample_count();
        since(&APPLY, Instant::now());
        assert!(APPLY.get_sample_count() > before);
        let names: Vec<String> = r.gather().iter().map(|f| f.name().to_string()).collect();
        for n in [
            "raft_log_append_seconds",
            "raft_wal_fsync_seconds",
            "raft_apply_seconds",
            "raft_commit_seconds",
            "raft_append_send_delay_seconds",
            "raft_apply_delay_seconds",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
        }
        // A second node's registry in the same process takes them too.
        register(&Registry::new()).unwrap();
    }

    #[test]
    fn each_append_is_timed_once_when_the_apply_reaches_it() {
        // A clock of its own: the process-wide one takes the appends of every other test.
        let clock = CommitClock::new(histogram("t_commit_seconds", "test"));
        let count = || clock.histogram.get_sample_count();
        let t = Instant::now();
        clock.appended(1, 1, t);
        clock.appended(2, 4, t);
        clock.appended(5, 5, t);
        clock.reached(3, true);
        assert_eq!(count(), 1, "2..=4 is not all applied yet");
        clock.reached(4, true);
        assert_eq!(count(), 2);
        // A follower's log cut back to 5 and written again: 5 is timed once, from the
        // second append.
        clock.appended(5, 6, t);
        assert_eq!(clock.pending().appends.len(), 1);
        clock.reached(6, true);
        assert_eq!(count(), 3);
        assert!(clock.pending().appends.is_empty());
        // An apply that lags far: the oldest stop being timed, and the queue stays bounded.
        for i in 0..(PENDING_MAX as u64 + 10) {
            clock.appended(100 + i, 100 + i, t);
        }
        assert_eq!(clock.pending().appends.len(), PENDING_MAX);
        // 100..=109 were dropped untimed; 110..=200 are timed now.
        clock.reached(200, true);
        assert_eq!(count(), 3 + 91);
        // A snapshot installed over the rest: dropped, not timed.
        clock.reached(u64::MAX, false);
        assert!(clock.pending().appends.is_empty());
        assert_eq!(count(), 3 + 91);
    }

    #[test]
    fn a_send_is_timed_from_the_append_that_holds_its_first_entry() {
        let clock = CommitClock::new(histogram("t_send_seconds", "test"));
        let t0 = Instant::now();
        let t1 = t0 + std::time::Duration::from_millis(1);
        clock.appended(1, 3, t0);
        clock.appended(4, 6, t1);
        assert_eq!(clock.started(2), Some(t0));
        assert_eq!(clock.started(4), Some(t1));
        assert_eq!(clock.started(7), None, "not appended yet");
        clock.reached(3, true);
        // Sent again to a follower that lags: applied already, not timed.
        assert_eq!(clock.started(2), None);
        assert_eq!(clock.started(5), Some(t1));
    }

    #[test]
    fn an_apply_is_timed_from_the_first_answer_that_acknowledged_it() {
        let answers = Answers::new(histogram("t_apply_delay_seconds", "test"));
        let count = || answers.histogram.get_sample_count();
        let t = Instant::now();
        answers.answered(3, t);
        // The other follower's answer for the same entries comes later: not kept.
        answers.answered(3, t + std::time::Duration::from_secs(1));
        answers.answered(2, t);
        answers.answered(6, t);
        assert_eq!(answers.q().len(), 2);
        answers.reached(3, true);
        assert_eq!(count(), 1);
        // Entries 4..=5 are covered by the answer up to 6, which stays for 6 itself.
        answers.reached(5, true);
        assert_eq!(count(), 2);
        assert_eq!(answers.q().len(), 1);
        answers.reached(6, true);
        assert_eq!(count(), 3);
        assert!(answers.q().is_empty());
        // No answer for it (a follower's apply, or a one-node cluster): nothing timed.
        answers.reached(7, true);
        assert_eq!(count(), 3);
        // A snapshot installed over answered entries: dropped, not timed.
        answers.answered(9, t);
        answers.reached(9, false);
        assert_eq!(count(), 3);
        assert!(answers.q().is_empty());
        for i in 0..(PENDING_MAX as u64 + 5) {
            answers.answered(100 + i, t);
        }
        assert_eq!(answers.q().len(), PENDING_MAX);
    }
}
