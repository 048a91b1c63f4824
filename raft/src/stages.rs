//! How long the log and the state machine take at their steps: the disk's and the apply's
//! parts of every write's round, beside the peer RPCs the node times itself. What an
//! operator of etcd reads in `etcd_disk_wal_fsync_duration_seconds` and
//! `etcd_disk_backend_commit_duration_seconds`, and what a slow round is taken apart with
//! (docs/benchmarks.md: on 16 cores a batch's round took two to three times its
//! AppendEntries' round trip).
//!
//! Process-wide histograms, as the `prometheus` crate's own default registry keeps them, so
//! that the stores need not be handed a registry through openraft: the node adds them to its
//! own ([`register`]). Every store in one process records into the same ones (only tests
//! open more than one).

use std::sync::LazyLock;
use std::time::Instant;

use prometheus::{Histogram, HistogramOpts, Registry};

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

/// Adds the histograms to a node's registry.
pub fn register(r: &Registry) -> prometheus::Result<()> {
    for h in [&*LOG_APPEND, &*WAL_FSYNC, &*APPLY] {
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
        let before = APPLY.get_sample_count();
        since(&APPLY, Instant::now());
        assert_eq!(APPLY.get_sample_count(), before + 1);
        let names: Vec<String> = r.gather().iter().map(|f| f.name().to_string()).collect();
        for n in [
            "raft_log_append_seconds",
            "raft_wal_fsync_seconds",
            "raft_apply_seconds",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
        }
        // A second node's registry in the same process takes them too.
        register(&Registry::new()).unwrap();
    }
}
