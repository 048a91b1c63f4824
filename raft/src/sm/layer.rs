//! [`Layer`]: a set of applied changes above the state below it, and when one is due to be
//! written (`overlay` explains the layers).

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::time::{Duration, Instant};

use openraft::LogId;

use super::tables::Membership;
use crate::identity::Registry;
use crate::stagger::Stagger;
use crate::types::NodeId;

// A flush's worth of work is one period: what the layers take in counts as the fractions of
// the three thresholds below it makes up (entries / FLUSH_ENTRIES + rows / FLUSH_ROWS + bytes
// / FLUSH_BYTES), and a node flushes each time that count, since it started, passes a
// boundary its [`Stagger`] sets at a phase of its own, so that the nodes of a cluster do not
// all flush at once. A layer is thus due before it reaches any one of them.

/// Rows (records and idempotency keys): at most this many in a flush.
pub(super) const FLUSH_ROWS: usize = 8192;
/// Bytes of rows: at most this many in a flush.
pub(super) const FLUSH_BYTES: usize = 16 << 20;
/// Entries applied, whatever they wrote: at most this many in a flush. Bounds what a
/// restarted node applies again from the log.
pub(super) const FLUSH_ENTRIES: u64 = 1000;
/// Age of the oldest change in the active layer that starts a flush.
pub(super) const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// While a frozen layer is still being written, the active one may grow to this many times
/// the thresholds above before `apply` waits for the write: the layers' memory bound.
pub(super) const HARD_FACTOR: usize = 4;

/// An index key: `(order, id)` of `cookies_by_created`, `(expires_ms, key)` of the keys.
pub(super) type IndexKey = (u64, String);
/// `Some(bytes)`: stored as `bytes`; `None`: removed.
pub(super) type Row = Option<Vec<u8>>;

/// Changes to the state, above what lies below them (older layers, then the database).
#[derive(Clone, Default)]
pub(crate) struct Layer {
    pub(super) cookies: HashMap<String, Row>,
    /// `true`: present; `false`: removed.
    pub(super) by_created: BTreeMap<IndexKey, bool>,
    pub(super) keys: HashMap<String, Row>,
    pub(super) keys_by_expiry: BTreeMap<IndexKey, bool>,
    /// Where the next sweep of expired keys starts in the expiry index: no live entry lies
    /// before it in the state this layer tops (`None`: this layer has no word; an older
    /// layer's holds, or the index's start). A sweep removes the oldest entries first, so
    /// it leaves the floor just after the last one it removed; a key stored below the
    /// floor (a proposer whose clock is behind) lowers it to itself. Without it each
    /// sweep walked every entry the sweeps before it had removed since the last flush,
    /// in every layer and again in `sm.redb`: once keys expired, a keyed write cost time
    /// in proportion to the writes since the flush (docs/benchmarks.md, "idempotency
    /// keys"). Only where a sweep starts depends on it, never what it removes.
    pub(super) expiry_floor: Option<Bound<IndexKey>>,
    pub(super) registry: Option<Registry>,
    pub(super) membership: Option<Membership>,
    /// The last entry applied into this layer; `None` while it is empty.
    pub(super) applied: Option<LogId<NodeId>>,
    /// Records added minus records removed, against the state below.
    pub(super) count_delta: i64,
    /// Idempotency keys recorded minus keys forgotten, against the state below.
    pub(super) keys_delta: i64,
    bytes: usize,
    entries: u64,
    /// Rows this layer took in, counting a row each time a batch changed it.
    rows_taken: u64,
    /// The work, in periods, the layers before this one took in (since the node's state
    /// began: the count is kept in `sm.redb` with each flush, and goes on across restarts and
    /// installs): where this layer's count starts, against the stagger's boundaries.
    start: f64,
    /// When the first change came in.
    since: Option<Instant>,
}

impl Layer {
    /// An empty layer whose records' map has room for `rows` without growing: the size the
    /// layer it follows reached, so at a steady load the active layer is not rehashed a
    /// dozen times on its way to a flush (each time a new table, every row moved, the old
    /// one freed: 2.7% of a follower's CPU at 256 clients).
    pub(super) fn sized_for(rows: usize) -> Layer {
        Layer {
            cookies: HashMap::with_capacity(rows.min(FLUSH_ROWS * HARD_FACTOR)),
            ..Layer::default()
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.applied.is_none()
    }

    pub(super) fn put_cookie(&mut self, id: &str, row: Row) {
        self.bytes += id.len() + row.as_ref().map_or(0, Vec::len) + 64;
        self.cookies.insert(id.to_owned(), row);
    }

    /// The ids of the records this layer stores (not the ones it removes).
    pub(super) fn stored_ids(&self) -> impl Iterator<Item = &str> {
        self.cookies
            .iter()
            .filter(|(_, row)| row.is_some())
            .map(|(id, _)| id.as_str())
    }

    pub(super) fn put_key(&mut self, key: &str, row: Row) {
        self.bytes += key.len() + row.as_ref().map_or(0, Vec::len) + 64;
        self.keys.insert(key.to_owned(), row);
    }

    /// One more entry applied into this layer.
    pub(super) fn applied(&mut self, log_id: LogId<NodeId>) {
        self.applied = Some(log_id);
        self.entries += 1;
    }

    /// Make this (new, empty) layer the one after `before`: its count goes on from there.
    pub(super) fn follow(&mut self, before: &Layer) {
        self.start = within_a_period(before.count_after());
    }

    /// An empty layer whose count starts at `count` (the one kept with the last flush).
    pub(super) fn counted_from(count: f64) -> Layer {
        Layer {
            start: within_a_period(count),
            ..Layer::default()
        }
    }

    /// The count, in periods, once this layer's work is added: what a flush of it keeps.
    pub(super) fn count_after(&self) -> f64 {
        self.start + self.work()
    }

    /// The work this layer took in, in periods (flushes' worth).
    fn work(&self) -> f64 {
        self.entries as f64 / FLUSH_ENTRIES as f64
            + self.rows_taken as f64 / FLUSH_ROWS as f64
            + self.bytes as f64 / FLUSH_BYTES as f64
    }

    /// Add `newer`'s changes on top of these.
    pub(super) fn absorb(&mut self, newer: Layer) {
        // A batch has taken nothing in yet: its rows are what it takes.
        self.rows_taken += newer.rows_taken.max(newer.rows() as u64);
        self.cookies.extend(newer.cookies);
        self.by_created.extend(newer.by_created);
        self.keys.extend(newer.keys);
        self.keys_by_expiry.extend(newer.keys_by_expiry);
        if newer.expiry_floor.is_some() {
            self.expiry_floor = newer.expiry_floor;
        }
        if newer.registry.is_some() {
            self.registry = newer.registry;
        }
        if newer.membership.is_some() {
            self.membership = newer.membership;
        }
        if newer.applied.is_some() {
            self.applied = newer.applied;
        }
        self.count_delta += newer.count_delta;
        self.keys_delta += newer.keys_delta;
        self.bytes += newer.bytes;
        self.entries += newer.entries;
        self.since.get_or_insert_with(Instant::now);
    }

    /// The bytes of the rows it holds, and 64 for each.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(super) fn rows(&self) -> usize {
        self.cookies.len() + self.keys.len()
    }

    /// Whether it is worth a flush now: the work it took in passed one of this node's
    /// boundaries (`stagger`).
    pub(super) fn due(&self, stagger: &Stagger) -> bool {
        stagger.crossed(self.start, self.start + self.work())
    }

    /// Whether it holds a flush's worth of rows or bytes: filled while the last write ran, it
    /// says the flush thread is behind. (A staggered layer is due at this size or before.)
    pub(super) fn big(&self) -> bool {
        self.rows() >= FLUSH_ROWS || self.bytes >= FLUSH_BYTES
    }

    /// Whether `apply` must wait for the flush thread before adding more.
    pub(super) fn full(&self) -> bool {
        self.rows() >= FLUSH_ROWS * HARD_FACTOR || self.bytes >= FLUSH_BYTES * HARD_FACTOR
    }

    pub(super) fn old(&self) -> bool {
        self.since.is_some_and(|t| t.elapsed() >= FLUSH_INTERVAL)
    }
}

/// Where `count` is within its period. Only that matters against the stagger's boundaries
/// (a layer's own work is added to it), and it keeps the count's precision however long a
/// node runs. A count read back that is not a number (a damaged file) starts from zero.
fn within_a_period(count: f64) -> f64 {
    if count.is_finite() {
        count.rem_euclid(1.0)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    /// A batch of `entries` entries ending at `last`, storing `rows` records of 100 bytes.
    fn batch(last: u64, entries: u64, rows: usize) -> Layer {
        let mut l = Layer::default();
        for index in last + 1 - entries..=last {
            l.applied(LogId::new(CommittedLeaderId::new(1, 1), index));
        }
        for r in 0..rows {
            l.put_cookie(&format!("cookie:{last}-{r}"), Some(vec![b'x'; 100]));
        }
        l
    }

    /// A count read back is kept as its place within the period: a layer counted from
    /// `k + x` is due exactly where one counted from `x` is, and a count that is not a number
    /// starts from zero instead of never crossing a boundary.
    #[test]
    fn a_count_read_back_keeps_its_place_in_the_period() {
        let s = Stagger::for_node(2);
        let fill_until_due = |mut l: Layer| {
            let mut batches = 0;
            while !l.due(&s) {
                batches += 1;
                l.absorb(batch(batches * 10, 10, 40));
                assert!(batches < 1000, "never due");
            }
            batches
        };
        let at = fill_until_due(Layer::counted_from(0.3));
        assert_eq!(fill_until_due(Layer::counted_from(1e12 + 0.3)), at);
        assert_eq!(fill_until_due(Layer::counted_from(-0.7)), at);
        let from_zero = fill_until_due(Layer::counted_from(0.0));
        assert_eq!(fill_until_due(Layer::counted_from(f64::NAN)), from_zero);
        assert_eq!(
            fill_until_due(Layer::counted_from(f64::INFINITY)),
            from_zero
        );
    }

    /// Feed `stagger`'s node batches of 10 entries and 40 rows, freezing the active layer
    /// whenever it is due, as the flush thread does; the indices at which it froze.
    fn freezes(stagger: &Stagger, batches: u64) -> Vec<u64> {
        let mut active = Layer::default();
        let mut at = Vec::new();
        for b in 1..=batches {
            active.absorb(batch(b * 10, 10, 40));
            if active.due(stagger) {
                at.push(b * 10);
                let mut next = Layer::default();
                next.follow(&active);
                active = next;
            }
        }
        at
    }

    #[test]
    fn entries_rows_and_bytes_add_up_to_a_flush() {
        let none = Stagger::for_node(0);
        let mut l = Layer::default();
        l.absorb(batch(999, 999, 0));
        assert!(!l.due(&none));
        l.absorb(batch(1000, 1, 0));
        assert!(l.due(&none), "1,000 entries");

        // Half a flush's worth of entries, then rows: due at about half of FLUSH_ROWS, a
        // little before, for the rows' bytes.
        let mut l = Layer::default();
        l.absorb(batch(500, 500, 0));
        let mut rows = 0;
        while !l.due(&none) {
            l.absorb(batch(501, 1, 1).without_entries());
            rows += 1;
        }
        assert!(
            (FLUSH_ROWS * 2 / 5..FLUSH_ROWS / 2).contains(&rows),
            "{rows}"
        );
    }

    #[test]
    fn a_layer_is_due_before_any_one_threshold() {
        // Rows alone, in whatever phase.
        for id in 0..5 {
            let s = Stagger::for_node(id);
            let mut l = Layer::default();
            let mut rows = 0;
            while !l.due(&s) {
                l.absorb(batch(1, 1, 64).without_entries());
                rows += 64;
            }
            assert!(rows <= FLUSH_ROWS, "node {id}: {rows} rows");
        }
    }

    #[test]
    fn nodes_fed_the_same_batches_freeze_at_different_entries() {
        let at: Vec<Vec<u64>> = (1..=3)
            .map(|id| freezes(&Stagger::for_node(id), 400))
            .collect();
        // Every node flushes at the same rate: 10 entries and 40 rows a batch are 0.01 +
        // 40/8192 of a period, a flush every ~67 batches.
        for a in &at {
            assert!((5..=7).contains(&a.len()), "{at:?}");
        }
        // And never two at the same entry.
        let mut all: Vec<u64> = at.concat();
        all.sort_unstable();
        assert!(all.windows(2).all(|w| w[1] - w[0] >= 100), "{at:?}");
    }

    impl Layer {
        /// The same rows, as if no entry had been applied (a part of a batch).
        fn without_entries(mut self) -> Layer {
            self.entries = 0;
            self
        }
    }
}
