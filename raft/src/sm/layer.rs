//! [`Layer`]: a set of applied changes above the state below it, and when one is due to be
//! written (`overlay` explains the layers).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use openraft::LogId;

use super::tables::Membership;
use crate::identity::Registry;
use crate::types::NodeId;

/// Rows (records and idempotency keys) in the active layer that start a flush.
pub(super) const FLUSH_ROWS: usize = 8192;
/// Bytes in the active layer that start a flush.
pub(super) const FLUSH_BYTES: usize = 16 << 20;
/// Entries applied to the active layer that start a flush, whatever they wrote: bounds what a
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
    pub(super) registry: Option<Registry>,
    pub(super) membership: Option<Membership>,
    /// The last entry applied into this layer; `None` while it is empty.
    pub(super) applied: Option<LogId<NodeId>>,
    /// Records added minus records removed, against the state below.
    pub(super) count_delta: i64,
    bytes: usize,
    entries: u64,
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

    /// Add `newer`'s changes on top of these.
    pub(super) fn absorb(&mut self, newer: Layer) {
        self.cookies.extend(newer.cookies);
        self.by_created.extend(newer.by_created);
        self.keys.extend(newer.keys);
        self.keys_by_expiry.extend(newer.keys_by_expiry);
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

    /// Whether it is worth a flush now.
    pub(super) fn due(&self) -> bool {
        self.big() || self.entries >= FLUSH_ENTRIES
    }

    /// Whether it holds a flush's worth of rows or bytes (what `due` counts, but entries):
    /// filled while the last write ran, it says the flush thread is behind.
    pub(super) fn big(&self) -> bool {
        self.rows() >= FLUSH_ROWS || self.bytes >= FLUSH_BYTES
    }

    /// Whether `apply` must wait for the frozen layer before adding more.
    pub(super) fn full(&self) -> bool {
        self.rows() >= FLUSH_ROWS * HARD_FACTOR || self.bytes >= FLUSH_BYTES * HARD_FACTOR
    }

    pub(super) fn old(&self) -> bool {
        self.since.is_some_and(|t| t.elapsed() >= FLUSH_INTERVAL)
    }
}
