//! [`Ids`]: which record ids `sm.redb` may hold, so a create can skip its B-tree lookup.
//!
//! Every create asks whether its id is taken, on every replica. When no layer above the
//! database has the id, that question was a redb lookup through the page cache's locks: about
//! two thirds of `apply`'s CPU and ~8% of the three nodes' CPU at 64 clients
//! (docs/benchmarks.md, "Where the rest of the write tail goes"). Almost every create asks
//! about an id that is not there, which is what a Bloom filter answers without the lookup.
//!
//! The one property everything rests on: **every id the database holds is in the filter**
//! (no false negative), or a create would silently overwrite a record. It holds because
//! - a filter is built by scanning a read transaction the flush thread has just published
//!   ([`Rebuild`]), and the flush thread, the only writer, notes the ids of every layer it
//!   commits after that transaction and adds them to the new filter before it publishes it,
//!   between two of its commits;
//! - the flush thread adds a layer's ids to the published filter *before* it commits the
//!   layer ([`Ids::add_layer`]), and a reader that sees the commit took the state's lock after
//!   the flush thread released it, so it sees those bits;
//! - an install replaces the database and drops the filter with it (`handle::Current::new`):
//!   until the flush thread builds one for the new file, every question goes to redb.
//!
//! Extra ids (removed records, a write that failed after its ids were added) only cost a
//! lookup. They accumulate, so once as many new ids have been added as the filter was sized
//! for, a fresh one is built from the file, sized for twice its records. The scan takes about
//! half a second per million records, so it runs on a thread of its own at a lower priority:
//! on the flush thread it would hold up flushes until `apply` reached the layers' bound.
//! Memory: ~1.2 bytes per id of capacity at a 1% false-positive rate, so 2.4 MB at a
//! million records.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use fastbloom::AtomicBloomFilter;
use redb::{Database, ReadTransaction, ReadableTable, ReadableTableMetadata};

use super::layer::Layer;
use super::tables::COOKIES;
use crate::BoxError;

/// The false-positive rate a filter is sized for (at its capacity).
const FALSE_POSITIVES: f64 = 0.01;
/// The fewest ids a filter is sized for (80 KB): a small store does not rebuild often. The
/// crate's tests use a tiny one, so that every test that writes a few dozen records runs
/// through rebuilds.
const MIN_CAPACITY: usize = if cfg!(test) { 16 } else { 1 << 16 };

/// A Bloom filter over the ids of the database it was built from, plus the ids added since.
pub(super) struct Ids {
    bloom: AtomicBloomFilter,
    capacity: usize,
    /// Ids added that the filter did not already hold: when this reaches `capacity`, the
    /// false-positive rate has reached what the filter was sized for.
    added: AtomicUsize,
}

impl Ids {
    fn with_capacity(capacity: usize) -> Self {
        Ids {
            bloom: AtomicBloomFilter::with_false_pos(FALSE_POSITIVES).expected_items(capacity),
            capacity,
            added: AtomicUsize::new(0),
        }
    }

    /// The ids of every record `txn` sees, in a filter sized for twice as many (at least
    /// [`MIN_CAPACITY`]).
    /// Stops early with an error once `cancel` is set.
    fn build(txn: &ReadTransaction, cancel: &AtomicBool) -> Result<Self, BoxError> {
        let table = txn.open_table(COOKIES)?;
        let records = usize::try_from(table.len()?)?;
        let ids = Ids::with_capacity(records.saturating_mul(2).max(MIN_CAPACITY));
        for (i, row) in table.iter()?.enumerate() {
            if i % 4096 == 0 && cancel.load(Ordering::Relaxed) {
                return Err("cancelled".into());
            }
            let (id, _) = row?;
            ids.add(id.value());
        }
        Ok(ids)
    }

    fn add(&self, id: &str) {
        if !self.bloom.insert(id) {
            self.added.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Add the ids `layer` stores (a record put; a removal needs nothing): before the layer
    /// is committed.
    pub(super) fn add_layer(&self, layer: &Layer) {
        layer.stored_ids().for_each(|id| self.add(id));
    }

    /// `false`: the database this filter covers holds no record `id`. `true`: it may.
    pub(super) fn may_hold(&self, id: &str) -> bool {
        self.bloom.contains(id)
    }

    /// Whether enough ids have been added that a fresh filter is due.
    pub(super) fn is_full(&self) -> bool {
        self.added.load(Ordering::Relaxed) >= self.capacity
    }
}

/// A filter being built on a thread of its own from a read transaction on `db`, and the ids
/// of the layers committed to `db` since that transaction. Owned and driven by the flush
/// thread: it starts one right after publishing a transaction, [`Rebuild::note`]s each layer
/// before committing it, and publishes [`Rebuild::finish`]'s filter between two commits.
pub(super) struct Rebuild {
    db: Arc<Database>,
    since: Vec<Box<str>>,
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Ids, BoxError>>>,
}

impl Rebuild {
    /// Scan `txn`, the transaction on `db` that the caller has just published.
    pub(super) fn start(db: Arc<Database>, txn: Arc<ReadTransaction>) -> std::io::Result<Self> {
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = cancel.clone();
        let thread = std::thread::Builder::new()
            .name("ids-build".into())
            .spawn(move || {
                super::background::lower_priority();
                Ids::build(&txn, &stop)
            })?;
        Ok(Rebuild {
            db,
            since: Vec::new(),
            cancel,
            thread: Some(thread),
        })
    }

    /// The ids `layer` stores, which the scan may not have seen: before it is committed.
    pub(super) fn note(&mut self, layer: &Layer) {
        self.since.extend(layer.stored_ids().map(Box::from));
    }

    pub(super) fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// The filter, with every id noted since the scan; and the database it covers.
    pub(super) fn finish(mut self) -> Result<(Arc<Database>, Ids), BoxError> {
        let thread = self.thread.take().ok_or("already finished")?;
        let ids = thread
            .join()
            .map_err(|_| "the thread building the filter of ids panicked")??;
        for id in &self.since {
            ids.add(id);
        }
        Ok((self.db.clone(), ids))
    }
}

impl Drop for Rebuild {
    /// Abandoned (the node stops): the scan stops early, and its transaction and database
    /// are released before the drop returns, so the file can be opened again at once.
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.cancel.store(true, Ordering::Relaxed);
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use redb::ReadableDatabase;

    use super::*;

    #[test]
    fn every_stored_id_is_held_and_most_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::create_db(&dir.path().join("sm.redb"), 1 << 20).unwrap();
        super::super::tables::create_tables(&db).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(COOKIES).unwrap();
            for i in 0..5000 {
                t.insert(format!("stored-{i}").as_str(), b"x".as_slice())
                    .unwrap();
            }
        }
        txn.commit().unwrap();
        let txn = Arc::new(db.begin_read().unwrap());
        let db = Arc::new(db);
        let mut rebuild = Rebuild::start(db.clone(), txn).unwrap();
        // Committed after the scanned transaction: found only because it was noted.
        let mut later = Layer::default();
        later.put_cookie("later", Some(b"x".to_vec()));
        later.put_cookie("later-removed", None);
        rebuild.note(&later);
        let (covered, ids) = rebuild.finish().unwrap();
        assert!(Arc::ptr_eq(&covered, &db));
        assert!(ids.may_hold("later"));
        assert_eq!(ids.capacity, 10_000);
        assert!((0..5000).all(|i| ids.may_hold(&format!("stored-{i}"))));
        let strangers = (0..10_000)
            .filter(|i| ids.may_hold(&format!("absent-{i}")))
            .count();
        assert!(strangers < 300, "{strangers} false positives in 10,000");
        assert!(!ids.is_full());

        let mut layer = Layer::default();
        layer.put_cookie("new", Some(b"x".to_vec()));
        layer.put_cookie("stored-1", None);
        ids.add_layer(&layer);
        assert!(ids.may_hold("new"));
        // Already held: an update adds nothing towards a rebuild.
        let before = ids.added.load(Ordering::Relaxed);
        ids.add("stored-2");
        assert_eq!(ids.added.load(Ordering::Relaxed), before);

        for i in 0..10_000 {
            ids.add(&format!("more-{i}"));
        }
        assert!(ids.is_full());
    }

    #[test]
    fn an_abandoned_build_stops_and_lets_go_of_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sm.redb");
        let db = crate::create_db(&path, 1 << 20).unwrap();
        super::super::tables::create_tables(&db).unwrap();
        let txn = Arc::new(db.begin_read().unwrap());
        let db = Arc::new(db);
        let rebuild = Rebuild::start(db.clone(), txn).unwrap();
        drop(rebuild);
        assert_eq!(Arc::strong_count(&db), 1);
        drop(db);
        crate::create_db(&path, 1 << 20).expect("the file opens again at once");
    }
}
