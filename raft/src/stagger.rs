//! [`Stagger`]: where in each period of a periodic job (a flush of the state machine's
//! layers, a snapshot build) this node's runs fall, so that the nodes of a cluster do not all
//! run it at once.
//!
//! Every node applies the same entries in the same batches. With the thresholds counted the
//! same way on each (a flush every 1,000 entries, or 8,192 rows, or 16 MiB), all the nodes
//! of a cluster froze and wrote their layers at the same entry, within milliseconds of each
//! other (their logs showed it: each flush of ~1,500 rows on the three nodes within 1-6 ms).
//! A flush takes a node's CPU (the B-tree work) and its disk (the commit's fsync) for
//! milliseconds to tens of them. One node at a time, the other two make the quorum and
//! writes go on; all three at once, every write waits for the slowest of the two
//! followers. On one host it is worse: the three flushes compete for the same CPUs
//! (docs/benchmarks.md, "Flushes and builds in step").
//!
//! So each node counts the work its layers took in, in periods (`sm::layer`: entries, rows and
//! bytes, each as a fraction of its threshold), and flushes when that count passes
//! `k - phase` for a whole `k`, its phase its own. The same period on every node, so the same
//! flush sizes and rates; the nodes' flushes are spread over each period instead of stacked,
//! and while one node writes, the other two make the quorum. The count is kept in `sm.redb`
//! with each flush and goes on across a restart (the entries after the last flush, applied
//! again, add what they added before) and an install (which writes it into the new file),
//! so a restarted node keeps its place against the others'.
//!
//! Snapshot builds were in step the same way (each node's policy looks at the same log every
//! 200 ms), and a build first flushes the layers, then reads and compresses the whole state:
//! three at once on one host left a request thread runnable and waiting 12.6 ms for a CPU. The
//! snapshot policy (`cluster::snapshots` in the server) waits, once a build is due, for
//! this node's boundary in the log index, a period being `snapshot_logs` entries.

/// The golden ratio's fractional part: the multiples of it by 1, 2, 3, ... fall each into the
/// largest gap the ones before left in [0, 1), so nodes 1, 2 and 3 get phases 0.62, 0.24 and
/// 0.85 of a period, and five nodes none closer than 0.15.
const SPREAD: f64 = 0.618_033_988_749_895;

#[derive(Clone, Copy, Debug)]
pub struct Stagger {
    /// In [0, 1): how far into each period this node's boundaries are moved.
    phase: f64,
}

impl Stagger {
    /// The phase of node `id`; node 0 (tests, tools) has none.
    pub fn for_node(id: u64) -> Stagger {
        Stagger {
            phase: (id as f64 * SPREAD).fract(),
        }
    }

    /// Whether a count of periods that went from `from` to `to` passed one of this node's
    /// boundaries.
    pub fn crossed(&self, from: f64, to: f64) -> bool {
        (to + self.phase).floor() > (from + self.phase).floor()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where, counting whole steps of `1 / steps` of a period from 0, node `id` crosses.
    fn crossings(id: u64, steps: u32, upto: u32) -> Vec<u32> {
        let s = Stagger::for_node(id);
        let at = |n: u32| f64::from(n) / f64::from(steps);
        (1..=upto)
            .filter(|&n| s.crossed(at(n - 1), at(n)))
            .collect()
    }

    #[test]
    fn a_node_crosses_once_a_period_at_a_phase_of_its_own() {
        assert_eq!(crossings(0, 1000, 3000), [1000, 2000, 3000]);
        // Nodes 1, 2 and 3: phases 0.618, 0.236 and 0.854 of a period.
        assert_eq!(crossings(1, 1000, 3000), [382, 1382, 2382]);
        assert_eq!(crossings(2, 1000, 3000), [764, 1764, 2764]);
        assert_eq!(crossings(3, 1000, 3000), [146, 1146, 2146]);
    }

    #[test]
    fn three_nodes_never_cross_within_a_seventh_of_a_period_of_each_other() {
        let steps = 8192;
        let mut all: Vec<u32> = (1..=3)
            .flat_map(|id| crossings(id, steps, 10 * steps))
            .collect();
        all.sort_unstable();
        let closest = all.windows(2).map(|w| w[1] - w[0]).min().unwrap();
        assert!(
            closest >= steps / 7,
            "closest crossings {closest} steps apart"
        );
    }

    #[test]
    fn a_jump_past_a_boundary_counts_and_a_step_short_of_one_does_not() {
        let s = Stagger::for_node(1);
        assert!(s.crossed(0.0, 10.0));
        assert!(!s.crossed(0.382, 1.381));
        assert!(s.crossed(0.382, 1.382));
        assert!(!s.crossed(5.0, 5.0));
    }
}
