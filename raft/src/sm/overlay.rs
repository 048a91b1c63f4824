//! Applied changes not yet written to `sm.redb`: the state machine's write-behind layer.
//!
//! `apply` used to write every batch into `sm.redb` (a non-durable redb commit) and, every few
//! thousand records, commit durably. A durable commit writes out every page the commits
//! since the last one dirtied and fsyncs them: 4-5 MB of scattered 4 KB pages, 20-40 ms on
//! the bench machine, two or three times a second at 10,000 creates/s, and every write
//! waiting for its answer waited for it (the ~40 ms p99 of issue 16, docs/benchmarks.md).
//!
//! Now `apply` writes nothing to redb. A batch's changes go into an in-memory [`Layer`]
//! (`active`) that readers see above the database. A thread of its own (`state-flush`)
//! freezes the active layer once the entries, rows and bytes it took in, each counted
//! against its threshold (`FLUSH_ENTRIES`, `FLUSH_ROWS`, `FLUSH_BYTES`), add up to this
//! node's next boundary ([`crate::stagger`]: the nodes of a cluster flush apart), or once it
//! is `FLUSH_INTERVAL` old, and writes it to `sm.redb` in one durable transaction with its
//! `last_applied`, while `apply` fills a new active layer. So
//! the fsync runs beside `apply`, not in front of it, and the B-tree work is done once per
//! few thousand records instead of once per batch.
//!
//! Nothing durable depends on the layers: the Raft log is the durable record, `sm.redb`'s
//! `last_applied` names exactly the state it holds, and after a crash openraft applies the
//! entries after it again. Snapshots are built from `sm.redb` after a flush, so the log is
//! purged only up to what the file holds.
//!
//! Memory is bounded by configuration, not data: an active layer at `HARD_FACTOR` (`layer`)
//! times its thresholds makes `apply` wait until the flush thread has frozen it, which it
//! does once the frozen layer before it is written; `apply` adds a long run of entries a
//! slice at a time (`apply::SLICE_ROWS`, `apply::SLICE_BYTES`), so the layers hold at most
//! about twice that bound and a slice.
//! So does one whose write waits for room on the disk (`flush_room`): it is tried again every
//! `ROOM_RETRY`, readers read it meanwhile, and callers that cannot wait (a snapshot build,
//! a backup) get a full disk's error from [`Overlay::flush_all`].
//!
//! The flush thread runs at a low priority (client work first), so on a node whose CPU is
//! saturated the wait at the memory bound was a priority inversion: every write stalled
//! behind a thread the request threads left no CPU (on one CPU, writes of a layer took 1.3 s
//! and `apply` waited up to half a second). While the thread is behind (`apply` filled a
//! layer's worth during its last write, or waited for it, within `BEHIND_HOLD`), it hands its
//! writes to a thread at the normal priority (`background::Prompt`).
//!
//! Consistency for readers: the layers, the database and a read transaction on it are behind
//! one lock (`handle`'s `Current`); a reader takes the layers and the transaction together,
//! so it sees one state. The flusher commits a frozen layer, opens the next read transaction,
//! and only then, in one step under the lock, drops the layer and publishes the transaction:
//! a reader never sees the layer gone and the file without it
//! (`records_stay_visible_through_flushes_and_a_restart` fails if those two steps are split).
//! Readers share that one transaction rather than each calling redb's `begin_read`, which
//! waits while a durable commit holds redb's header lock (5-11 ms stalls of `apply`, seen
//! when each batch still opened its own).

use std::collections::{BTreeMap, HashMap};
use std::iter::Peekable;
use std::ops::Bound;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use openraft::LogId;
use redb::{
    Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTableMetadata, Table,
};

use super::background::Prompt;
use super::flush_room;
use super::handle::{Current, Db};
use super::ids::{Ids, Rebuild};
use super::layer::Row;
pub(super) use super::layer::{IndexKey, Layer};
use super::repack;
use super::tables::{
    put_meta, Membership, BY_CREATED, COOKIES, IDENTITY, KEYS, KEYS_BY_EXPIRY, KEY_APPLIED,
    KEY_FLUSH_COUNT, KEY_MEMBERSHIP, KEY_REGISTRY,
};
use crate::codec;
use crate::identity::Registry;
use crate::record::Record;
use crate::stagger::Stagger;
use crate::types::NodeId;
use crate::BoxError;

/// The first answer `layers` (newest first) give for `key` in the map `pick` names:
/// `Some(row)` when one of them changed it, `None` when the state below decides.
fn in_layers<'a>(
    layers: impl IntoIterator<Item = &'a Layer>,
    pick: fn(&Layer) -> &HashMap<String, Row>,
    key: &str,
) -> Option<&'a Row> {
    layers.into_iter().find_map(|l| pick(l).get(key))
}

fn cookies(l: &Layer) -> &HashMap<String, Row> {
    &l.cookies
}

fn keys(l: &Layer) -> &HashMap<String, Row> {
    &l.keys
}

/// Which index a range scan walks.
#[derive(Clone, Copy)]
pub(super) enum Index {
    Created,
    Expiry,
}

impl Index {
    fn of(self, l: &Layer) -> &BTreeMap<IndexKey, bool> {
        match self {
            Index::Created => &l.by_created,
            Index::Expiry => &l.keys_by_expiry,
        }
    }
}

/// One consistent state to read: the layers as they were and a read transaction opened at
/// the same moment. Holding one keeps its layers alive (an `apply` meanwhile copies the
/// active layer rather than change it under the reader).
pub(crate) struct View {
    /// Newest first.
    layers: Vec<Arc<Layer>>,
    cookies: ReadOnlyTable<&'static str, &'static [u8]>,
    by_created: ReadOnlyTable<(u64, &'static str), ()>,
    /// The idempotency keys' tables, opened on first use (most views read no key) and then
    /// kept: opening one looks its root up in redb's table of tables, which a keyed write
    /// did twice over per command.
    keys: OnceLock<ReadOnlyTable<&'static str, &'static [u8]>>,
    keys_by_expiry: OnceLock<ReadOnlyTable<(u64, &'static str), ()>>,
    txn: Arc<ReadTransaction>,
    /// Which ids the database may hold, when the flush thread has built the filter.
    ids: Option<Arc<Ids>>,
    /// Declared last: the transaction is dropped before the database it reads.
    _db: Arc<Database>,
}

impl Db {
    /// The current state as a [`View`].
    pub(super) fn view(&self) -> Result<View, BoxError> {
        let (layers, db, txn, ids) = self.read(|c| {
            let layers = std::iter::once(c.active.clone())
                .chain(c.frozen.clone())
                .collect::<Vec<_>>();
            (layers, c.db.clone(), c.txn.clone(), c.ids.clone())
        });
        Ok(View {
            layers,
            cookies: txn.open_table(COOKIES)?,
            by_created: txn.open_table(BY_CREATED)?,
            keys: OnceLock::new(),
            keys_by_expiry: OnceLock::new(),
            txn,
            ids,
            _db: db,
        })
    }

    /// One record's stored bytes, from the layers or the database, without holding the
    /// layers: the lookup and the transaction are made under the lock, the read after it.
    pub(super) fn record(&self, id: &str) -> Result<Option<Vec<u8>>, BoxError> {
        let below = self.read(|c| {
            let layers = std::iter::once(&*c.active).chain(c.frozen.as_deref());
            match in_layers(layers, cookies, id) {
                Some(row) => Err(row.clone()),
                None => Ok(c.txn.clone()),
            }
        });
        match below {
            Err(row) => Ok(row),
            Ok(txn) => Ok(txn
                .open_table(COOKIES)?
                .get(id)?
                .map(|v| v.value().to_vec())),
        }
    }

    /// The stored size of each of `ids`' records (0 for one not stored), without copying
    /// any: one lock and one read transaction for them all.
    pub(super) fn record_sizes(&self, ids: &[&str]) -> Result<Vec<usize>, BoxError> {
        let (mut sizes, txn) = self.read(|c| {
            let sizes: Vec<Option<usize>> = ids
                .iter()
                .map(|id| {
                    let layers = std::iter::once(&*c.active).chain(c.frozen.as_deref());
                    in_layers(layers, cookies, id).map(|row| row.as_ref().map_or(0, Vec::len))
                })
                .collect();
            (sizes, c.txn.clone())
        });
        if sizes.iter().any(Option::is_none) {
            let table = txn.open_table(COOKIES)?;
            for (size, id) in sizes.iter_mut().zip(ids) {
                if size.is_none() {
                    *size = Some(table.get(*id)?.map_or(0, |v| v.value().len()));
                }
            }
        }
        Ok(sizes.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Number of stored records.
    pub(super) fn count(&self) -> Result<u64, BoxError> {
        self.counted(COOKIES, |l| l.count_delta)
    }

    /// Number of idempotency keys held, due or not (until a sweep forgets them).
    pub(super) fn key_count(&self) -> Result<u64, BoxError> {
        self.counted(KEYS, |l| l.keys_delta)
    }

    /// Rows of `table` in the database, and what the layers added or removed (`delta`), read
    /// together under the lock.
    fn counted(
        &self,
        table: redb::TableDefinition<&str, &[u8]>,
        delta: fn(&Layer) -> i64,
    ) -> Result<u64, BoxError> {
        let (delta, txn) = self.read(|c| {
            let delta = delta(&c.active) + c.frozen.as_deref().map_or(0, delta);
            (delta, c.txn.clone())
        });
        let stored = txn.open_table(table)?.len()?;
        Ok(stored.saturating_add_signed(delta))
    }

    /// The last entry applied and the membership, layers first.
    pub(super) fn applied_state(
        &self,
    ) -> Result<(Option<LogId<NodeId>>, Option<Membership>), BoxError> {
        let (applied, membership, db) = self.read(|c| {
            let layers = || std::iter::once(&*c.active).chain(c.frozen.as_deref());
            (
                layers().find_map(|l| l.applied),
                layers().find_map(|l| l.membership.clone()),
                c.db.clone(),
            )
        });
        let applied = match applied {
            Some(a) => Some(a),
            None => super::tables::read_meta::<Option<LogId<NodeId>>>(&db, KEY_APPLIED)?.flatten(),
        };
        let membership = match membership {
            Some(m) => Some(m),
            None => super::tables::read_meta::<Membership>(&db, KEY_MEMBERSHIP)?,
        };
        Ok((applied, membership))
    }
}

impl View {
    /// The layers, newest first, under `top` (the batch `apply` is building) when given.
    fn stack<'a>(&'a self, top: Option<&'a Layer>) -> impl Iterator<Item = &'a Layer> + 'a {
        top.into_iter().chain(self.layers.iter().map(|l| &**l))
    }

    /// A record's stored bytes.
    pub(super) fn record(&self, top: Option<&Layer>, id: &str) -> Result<Row, BoxError> {
        match in_layers(self.stack(top), cookies, id) {
            Some(row) => Ok(row.clone()),
            None => Ok(self.cookies.get(id)?.map(|v| v.value().to_vec())),
        }
    }

    /// A record, decoded.
    pub(super) fn get(&self, top: Option<&Layer>, id: &str) -> Result<Option<Record>, BoxError> {
        decode_record(self.record(top, id)?)
    }

    /// Whether a record `id` is stored: a create's question. Most ids asked about are new,
    /// and the filter of ids answers those without a B-tree lookup (`ids`).
    pub(super) fn has_record(&self, top: Option<&Layer>, id: &str) -> Result<bool, BoxError> {
        match in_layers(self.stack(top), cookies, id) {
            Some(row) => Ok(row.is_some()),
            None if self.ids.as_ref().is_some_and(|ids| !ids.may_hold(id)) => Ok(false),
            None => Ok(self.cookies.get(id)?.is_some()),
        }
    }

    /// An idempotency key's stored bytes.
    pub(super) fn key(&self, top: Option<&Layer>, key: &str) -> Result<Row, BoxError> {
        match in_layers(self.stack(top), keys, key) {
            Some(row) => Ok(row.clone()),
            None => Ok(opened(&self.keys, &self.txn, KEYS)?
                .get(key)?
                .map(|v| v.value().to_vec())),
        }
    }

    /// The registry, layers first.
    pub(super) fn registry(&self, top: Option<&Layer>) -> Result<Registry, BoxError> {
        if let Some(r) = self.stack(top).find_map(|l| l.registry.as_ref()) {
            return Ok(r.clone());
        }
        super::tables::registry_in(&self.txn)
    }

    /// Where a sweep of the expiry index may start: the newest layer's word
    /// ([`Layer::expiry_floor`]), or the index's start.
    pub(super) fn expiry_floor<'a>(&'a self, top: Option<&'a Layer>) -> Bound<&'a IndexKey> {
        self.stack(top)
            .find_map(|l| l.expiry_floor.as_ref())
            .map_or(Bound::Unbounded, Bound::as_ref)
    }

    /// The idempotency keys due at log time `now_ms` (their retention ended at or before
    /// it), oldest first, from where the sweeps have got to.
    pub(super) fn due_keys<'a>(
        &'a self,
        top: Option<&'a Layer>,
        now_ms: u64,
    ) -> Result<Merge<'a>, BoxError> {
        let from = self.expiry_floor(top);
        let until = (now_ms.saturating_add(1), String::new());
        if let Bound::Included(f) | Bound::Excluded(f) = from {
            if *f >= until {
                // Nothing before the floor is left to expire (a proposer's clock behind the
                // one that moved it there); an inverted range is also one a B-tree refuses.
                return Ok(Merge {
                    sources: Vec::new(),
                });
            }
        }
        self.range(top, Index::Expiry, (from.cloned(), Bound::Excluded(until)))
    }

    /// The keys of `index` from `start` up to `end`, in order, layers merged over the
    /// database (a key a layer removed is skipped).
    pub(super) fn range<'a>(
        &'a self,
        top: Option<&'a Layer>,
        index: Index,
        (start, end): (Bound<IndexKey>, Bound<IndexKey>),
    ) -> Result<Merge<'a>, BoxError> {
        // redb copies the bounds: its range borrows neither them nor the view.
        fn narrow(b: &Bound<IndexKey>) -> Bound<(u64, &str)> {
            b.as_ref().map(|(n, s)| (*n, s.as_str()))
        }
        let base = match index {
            Index::Created => self
                .by_created
                .range::<(u64, &str)>((narrow(&start), narrow(&end)))?,
            Index::Expiry => opened(&self.keys_by_expiry, &self.txn, KEYS_BY_EXPIRY)?
                .range::<(u64, &str)>((narrow(&start), narrow(&end)))?,
        };
        let mut sources: Vec<Source<'a>> = Vec::new();
        for layer in self.stack(top) {
            let bounds = (start.clone(), end.clone());
            let it = index
                .of(layer)
                .range(bounds)
                .map(|(k, present)| Ok((k.clone(), *present)));
            sources.push(Box::new(it));
        }
        sources.push(Box::new(base.map(|row| {
            let (k, _) = row?;
            let (n, s) = k.value();
            Ok(((n, s.to_owned()), true))
        })));
        Ok(Merge {
            sources: sources.into_iter().map(Iterator::peekable).collect(),
        })
    }

    /// The index of the last entry applied to this state (0 before any).
    pub(super) fn applied_index(&self) -> Result<u64, BoxError> {
        match self.layers.iter().find_map(|l| l.applied) {
            Some(a) => Ok(a.index),
            None => Ok(super::tables::applied_in(&self.txn)?.map_or(0, |l| l.index)),
        }
    }
}

/// `cell`'s table, opened in `txn` the first time.
fn opened<'c, K: redb::Key + 'static, V: redb::Value + 'static>(
    cell: &'c OnceLock<ReadOnlyTable<K, V>>,
    txn: &ReadTransaction,
    table: redb::TableDefinition<K, V>,
) -> Result<&'c ReadOnlyTable<K, V>, BoxError> {
    if let Some(t) = cell.get() {
        return Ok(t);
    }
    let t = txn.open_table(table)?;
    Ok(cell.get_or_init(|| t))
}

/// A stored record's bytes, decoded.
pub(super) fn decode_record(row: Row) -> Result<Option<Record>, BoxError> {
    row.map(|v| Record::decode(&v).ok_or_else(|| "corrupt record in the state machine".into()))
        .transpose()
}

type Source<'a> = Box<dyn Iterator<Item = Result<(IndexKey, bool), BoxError>> + 'a>;

#[cfg(test)]
thread_local! {
    /// Keys a [`Merge`] on this thread has stepped over, present or removed: what a test
    /// counts to see how much of an index a scan walked.
    pub(super) static MERGE_STEPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Ordered keys merged from sources in priority order: for a key several hold, the first
/// source's word counts (present or removed).
pub(super) struct Merge<'a> {
    sources: Vec<Peekable<Source<'a>>>,
}

impl Iterator for Merge<'_> {
    type Item = Result<IndexKey, BoxError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let mut least: Option<IndexKey> = None;
            for s in &mut self.sources {
                match s.peek() {
                    None => {}
                    Some(Err(_)) => return s.next().map(|r| r.map(|(k, _)| k)),
                    Some(Ok((k, _))) if least.as_ref().is_none_or(|l| k < l) => {
                        least = Some(k.clone());
                    }
                    Some(Ok(_)) => {}
                }
            }
            let key = least?;
            #[cfg(test)]
            MERGE_STEPS.with(|n| n.set(n.get() + 1));
            let mut present = None;
            for s in &mut self.sources {
                if matches!(s.peek(), Some(Ok((k, _))) if *k == key) {
                    if let Some(Ok((_, p))) = s.next() {
                        present.get_or_insert(p);
                    }
                }
            }
            if present == Some(true) {
                return Some(Ok(key));
            }
        }
    }
}

/// How the flush thread and its waiters meet.
#[derive(Default)]
struct Progress {
    /// The index of the last entry written to the database (`None`: none yet; index 0 is
    /// an entry).
    written: Option<u64>,
    /// Someone wants the active layer written now.
    wanted: bool,
    /// Failed writes so far: a waiter gives up when this moves.
    failures: u64,
    /// Writes put off for want of room on the disk (`flush_room`), and whether the last try
    /// was: a waiter that cannot wait gives up when the count moves.
    postponed: u64,
    short: bool,
    /// Layers written so far, and how long the last one took.
    flushes: u64,
    last: Duration,
    /// Until when the flush thread counts as behind `apply` and writes at the normal
    /// priority (`background::Prompt`), and how many writes it has handed over so.
    behind_until: Option<Instant>,
    prompted: u64,
    /// Scans of the file that built a filter of ids.
    ids_scans: u64,
    /// Rewrites of the file as a packed copy (`repack`), and copies given up.
    repacks: u64,
    repacks_abandoned: u64,
    stop: bool,
}

/// What the flush thread has done, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FlushStats {
    /// The index of the last entry written to `sm.redb` (`None`: none yet).
    pub written: Option<u64>,
    pub flushes: u64,
    pub failures: u64,
    /// Writes put off while the disk had no room for them (`flush_room`).
    pub postponed: u64,
    /// How long the last write took.
    pub last_seconds: f64,
    /// Writes made at the normal priority because the flush thread was behind.
    pub prompted: u64,
    /// Scans of `sm.redb` started to build the filter of stored ids (`ids`).
    pub ids_scans: u64,
    /// Rewrites of `sm.redb` as a packed copy of itself at rest (`repack`), and copies given
    /// up because writes resumed.
    pub repacks: u64,
    pub repacks_abandoned: u64,
    /// The most rows and bytes the layers held at once since the node started: what the
    /// memory bound let them reach.
    pub peak_rows: usize,
    pub peak_bytes: usize,
}

/// Writes the layers to the database: a handle for `apply`, builds and backups.
#[derive(Clone)]
pub(crate) struct Overlay {
    db: Db,
    flush: Arc<(Mutex<Progress>, Condvar)>,
    repack: Option<repack::Policy>,
    /// The first failed write, for whoever must stop the node on it ([`Overlay::failed`]).
    failed: Arc<tokio::sync::watch::Sender<Option<String>>>,
    /// Where the flush thread's writes go while it is behind.
    prompt: Arc<Prompt>,
    /// Where in each period of the thresholds this node's flushes fall.
    stagger: Stagger,
    /// The most rows and bytes the layers (active and frozen) held at once.
    peak: Arc<(AtomicUsize, AtomicUsize)>,
}

/// How long the flush thread keeps writing at the normal priority after it was last found
/// behind: long enough that a saturated node does not go back to a slow write at every other
/// layer, short enough that a burst does not leave the request threads competing for long.
const BEHIND_HOLD: Duration = Duration::from_secs(5);

/// How long a write put off for want of room waits before it is tried again.
const ROOM_RETRY: Duration = Duration::from_millis(250);

/// What a flush did.
enum Flushed {
    /// Wrote a layer: the index now written and the rows written; `None` when there was
    /// nothing to write (or an install replaced what there was).
    Wrote(Option<(u64, u64)>),
    /// Left the frozen layer for want of room on the disk, saying why.
    PutOff(String),
}

/// What [`Overlay::flush_all`] does while the disk has no room for the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Short {
    Fail,
    Wait,
}

/// Whether the layers can take another batch, after [`Overlay::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(super) enum Room {
    Left,
    /// At the memory bound, with a frozen layer still being written.
    Full,
}

/// The flush thread: stopped (after a last flush) and joined when dropped.
pub(crate) struct FlushThread {
    overlay: Overlay,
    thread: Option<JoinHandle<()>>,
}

impl Overlay {
    /// The overlay of `db`, whose file holds the state up to entry `written`, and its thread,
    /// which flushes at the thresholds' boundaries `stagger` sets.
    pub(super) fn start(
        db: Db,
        written: Option<u64>,
        repack: Option<repack::Policy>,
        stagger: Stagger,
    ) -> std::io::Result<(Overlay, FlushThread)> {
        let overlay = Overlay {
            db,
            repack,
            stagger,
            failed: Arc::new(tokio::sync::watch::channel(None).0),
            // Started here, before the flush thread lowers its own priority.
            prompt: Arc::new(Prompt::start("state-flush-prompt")?),
            peak: Arc::default(),
            flush: Arc::new((
                Mutex::new(Progress {
                    written,
                    ..Progress::default()
                }),
                Condvar::new(),
            )),
        };
        let worker = overlay.clone();
        let thread = std::thread::Builder::new()
            .name("state-flush".into())
            .spawn(move || {
                // Client work first: a flush has seconds of slack before `apply` waits for it.
                super::background::lower_priority();
                worker.run()
            })?;
        Ok((
            overlay.clone(),
            FlushThread {
                overlay,
                thread: Some(thread),
            },
        ))
    }

    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.flush.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, Progress>) -> MutexGuard<'a, Progress> {
        // A timeout too, so a waiter rechecks even if a wake-up is missed.
        let (g, _) = self
            .flush
            .1
            .wait_timeout(guard, Duration::from_millis(100))
            .unwrap_or_else(|e| e.into_inner());
        g
    }

    fn wake(&self) {
        self.flush.1.notify_all();
    }

    /// Add a batch's changes to the active layer, where readers see them, and start a flush
    /// when one is due. Never waits: returns [`Room::Full`] when the layers are at their
    /// memory bound, and then the caller must [`Overlay::wait_for_room`] before it adds more.
    pub(super) fn add(&self, batch: Layer) -> Room {
        let (due, full, held) = self.db.write(|c| {
            Arc::make_mut(&mut c.active).absorb(batch);
            let frozen = c.frozen.as_deref();
            let held = (
                c.active.rows() + frozen.map_or(0, Layer::rows),
                c.active.bytes() + frozen.map_or(0, Layer::bytes),
            );
            // Full whether or not a frozen layer is being written: a flush thread that has
            // not yet frozen this one (it runs at a low priority) must not let it grow.
            (c.active.due(&self.stagger), c.active.full(), held)
        });
        self.peak.0.fetch_max(held.0, Ordering::Relaxed);
        self.peak.1.fetch_max(held.1, Ordering::Relaxed);
        if due {
            self.progress().wanted = true;
            self.wake();
        }
        if full {
            Room::Full
        } else {
            Room::Left
        }
    }

    /// Wait until the flush thread has frozen the full active layer (once the frozen one
    /// before it is written), which makes room for the next batch. Blocks: call it off the
    /// async runtime.
    pub(super) fn wait_for_room(&self) -> Result<(), BoxError> {
        // The write under way is already slow; the ones after it go at the normal priority.
        self.fell_behind();
        self.progress().wanted = true;
        self.wake();
        self.wait_for(|c| !c.active.full())
    }

    /// The flush thread is behind `apply`: its writes for the next `BEHIND_HOLD` go at the
    /// normal priority (`background::Prompt`).
    fn fell_behind(&self) {
        self.progress().behind_until = Some(Instant::now() + BEHIND_HOLD);
    }

    /// Write everything applied so far to the database, and wait for it: before a snapshot
    /// build or a backup reads the database alone, and after a registry change. While the
    /// disk has no room for the write (`flush_room`), `Short::Fail` returns a full disk's
    /// error at the first try put off; `Short::Wait` waits for room, as `apply` must.
    pub(crate) fn flush_all(&self, short: Short) -> Result<(), BoxError> {
        let target = self.db.read(|c| {
            std::iter::once(&*c.active)
                .chain(c.frozen.as_deref())
                .find_map(|l| l.applied)
                .map(|a| a.index)
        });
        let Some(target) = target else {
            return Ok(());
        };
        let mut p = self.progress();
        let (failures, postponed) = (p.failures, p.postponed);
        while p.written < Some(target) && !p.stop {
            if p.failures != failures {
                return Err("writing the state machine's changes to sm.redb failed".into());
            }
            if short == Short::Fail && p.postponed != postponed {
                return Err(flush_room::no_room().into());
            }
            // Asked again only while the layer being written does not hold the target: asked
            // again at every wake-up (a freeze wakes waiters), the thread wrote the active
            // layer too, early, once the frozen one was done.
            let covered = self.db.read(|c| {
                c.frozen
                    .as_ref()
                    .and_then(|f| f.applied)
                    .is_some_and(|a| a.index >= target)
            });
            if !covered {
                p.wanted = true;
                self.wake();
            }
            p = self.wait(p);
        }
        Ok(())
    }

    /// Wait until `ready` holds of the current state, or a flush fails.
    fn wait_for(&self, ready: impl Fn(&Current) -> bool) -> Result<(), BoxError> {
        let mut p = self.progress();
        let failures = p.failures;
        while !self.db.read(&ready) {
            if p.failures != failures || p.stop {
                return Err("writing the state machine's changes to sm.redb failed".into());
            }
            p = self.wait(p);
        }
        Ok(())
    }

    /// Told the first failed write. redb refuses every write after one that failed on I/O
    /// until the file is opened again, so the layers can no longer reach the file: the node
    /// must stop (its log still holds every entry the file lacks), not wait for `apply` to
    /// fill the memory bound and fail. A write the disk has no room for is not tried
    /// (`flush_room`), so that only a disk that fills during the write itself comes here.
    pub(crate) fn failed(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.failed.subscribe()
    }

    fn fail(&self, why: String) {
        self.failed.send_if_modified(|f| {
            let first = f.is_none();
            if first {
                *f = Some(why);
            }
            first
        });
    }

    /// Bytes the writes of the layers not yet in `sm.redb` may add to the disk
    /// (`flush_room::needed`).
    pub(crate) fn unflushed_disk_due(&self) -> u64 {
        let file_len = flush_room::file_len(self.db.path());
        self.db.read(|c| {
            let frozen = c
                .frozen
                .as_ref()
                .map_or(0, |f| flush_room::needed(f, file_len));
            flush_room::needed(&c.active, file_len).saturating_add(frozen)
        })
    }

    pub(crate) fn stats(&self) -> FlushStats {
        let p = self.progress();
        FlushStats {
            written: p.written,
            flushes: p.flushes,
            failures: p.failures,
            postponed: p.postponed,
            last_seconds: p.last.as_secs_f64(),
            prompted: p.prompted,
            ids_scans: p.ids_scans,
            repacks: p.repacks,
            repacks_abandoned: p.repacks_abandoned,
            peak_rows: self.peak.0.load(Ordering::Relaxed),
            peak_bytes: self.peak.1.load(Ordering::Relaxed),
        }
    }

    /// After an install: the file holds the state up to `index`.
    pub(super) fn installed(&self, index: Option<u64>) {
        self.progress().written = index;
        self.wake();
    }

    fn run(self) {
        // A filter of ids being built: this thread's alone, and dropped (cancelled) with it.
        let mut rebuild: Option<Rebuild> = None;
        let mut rest = Rest::new();
        loop {
            let stop = {
                let mut p = self.progress();
                while !p.wanted
                    && !p.stop
                    && !self.db.read(|c| c.active.old())
                    && !rebuild.as_ref().is_some_and(Rebuild::is_finished)
                    && !self.repack_due(&rest, &rebuild)
                {
                    p = self.wait(p);
                }
                // Woken for the filter of ids alone: it is published, and the layer is left
                // to its own thresholds. Writing it here too made flushes early and small, at
                // no point a caller could predict.
                if !p.wanted
                    && !p.stop
                    && rebuild.as_ref().is_some_and(Rebuild::is_finished)
                    && !self.db.read(|c| c.active.old())
                {
                    drop(p);
                    self.publish_ids(&mut rebuild);
                    continue;
                }
                if !p.wanted && !p.stop && self.repack_due(&rest, &rebuild) {
                    drop(p);
                    self.repack_if_worth_it(&mut rest);
                    continue;
                }
                p.wanted = false;
                p.stop
            };
            if stop && self.failed.borrow().is_some() {
                // The file takes no more writes (see `failed`); the log holds the rest.
                return;
            }
            // Everything, when stopping: a clean shutdown leaves nothing to apply again.
            loop {
                let started = Instant::now();
                let written = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    let written = self.flush_once(&mut rebuild);
                    self.publish_ids(&mut rebuild);
                    written
                }));
                let failed = !matches!(written, Ok(Ok(Flushed::Wrote(_))));
                let put_off = matches!(written, Ok(Ok(Flushed::PutOff(_))));
                let mut p = self.progress();
                if !put_off && p.short && !failed {
                    tracing::info!("the state machine's changes written to sm.redb: room was made");
                    p.short = false;
                }
                match written {
                    Ok(Ok(Flushed::Wrote(Some((index, rows))))) => {
                        p.written = p.written.max(Some(index));
                        p.flushes += 1;
                        p.last = started.elapsed();
                        crate::stages::since(&crate::stages::STATE_FLUSH, started);
                        rest.wrote(rows);
                    }
                    Ok(Ok(Flushed::Wrote(None))) => {}
                    Ok(Ok(Flushed::PutOff(why))) => {
                        p.postponed += 1;
                        if !p.short {
                            // Once a stretch: it is tried again every `ROOM_RETRY`.
                            tracing::warn!(
                                "writing the state machine's changes to sm.redb put off until \
                                 there is room: {why}"
                            );
                        }
                        p.short = true;
                    }
                    Ok(Err(e)) => {
                        p.failures += 1;
                        let why = format!("writing the state machine's changes to sm.redb: {e}");
                        tracing::error!("{why}");
                        self.fail(why);
                    }
                    Err(_) => {
                        p.failures += 1;
                        let why = "writing the state machine's changes to sm.redb panicked";
                        tracing::error!("{why}");
                        self.fail(why.to_owned());
                    }
                }
                drop(p);
                self.wake();
                if put_off && !stop {
                    // Kept frozen, tried again soon; meanwhile `apply` fills up to the bound
                    // and then waits, and readers read the layers.
                    std::thread::sleep(ROOM_RETRY);
                    self.progress().wanted = true;
                } else if failed && !stop {
                    // Kept frozen, tried again until the node stops on the failure
                    // (`failed`); meanwhile `apply` fills up to the bound.
                    std::thread::sleep(Duration::from_millis(500));
                }
                if !stop || failed || self.db.read(|c| c.active.is_empty() && c.frozen.is_none()) {
                    break;
                }
            }
            if stop {
                return;
            }
        }
    }

    /// Whether the node is at rest and has written enough since the last look to look at the
    /// file's packing again (`repack`): no layer to write, no filter of ids being built.
    fn repack_due(&self, rest: &Rest, rebuild: &Option<Rebuild>) -> bool {
        rebuild.is_none()
            && self.repack.is_some_and(|p| rest.due(&p))
            && self.db.read(|c| c.active.is_empty() && c.frozen.is_none())
    }

    /// Rewrite the file as a packed copy of itself if its trees are far larger than what they
    /// hold (`repack`); give up the copy as soon as a flush is wanted.
    fn repack_if_worth_it(&self, rest: &mut Rest) {
        let Some(policy) = self.repack else {
            return;
        };
        let looked = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<bool, BoxError> {
            // Not while writes want flushing, nor while a snapshot's pointer or an install
            // waits for the file; and only on CPU that the node's requests leave.
            let mut pace = repack::Pace::for_this_process(&policy);
            let mut look = || {
                let p = self.progress();
                if p.wanted || p.stop || self.db.exclusive_wanted() {
                    return repack::Look::GiveUp;
                }
                drop(p);
                pace.look(Instant::now())
            };
            // The measure below reads every page: work of the same kind as the copy.
            if !repack::go_on(&mut look) {
                tracing::debug!(
                    "sm.redb not measured for a repack: writes resumed or the CPU stayed busy"
                );
                return Ok(false);
            }
            let Some((pages, held)) = repack::worth_it(&self.db.get(), policy.min_slack)? else {
                return Ok(true);
            };
            if !repack::room_for_copy(self.db.path(), held)? {
                tracing::warn!(
                    pages_mb = pages >> 20,
                    held_mb = held >> 20,
                    "sm.redb not rewritten packed: the disk has less than twice its data free"
                );
                return Ok(true);
            }
            let started = Instant::now();
            tracing::info!(
                pages_mb = pages >> 20,
                held_mb = held >> 20,
                "rewriting sm.redb as a packed copy (the node is at rest)"
            );
            let done = self
                .db
                .rewrite(|from, to| repack::copy(from, to, &mut look))?;
            if done {
                self.progress().repacks += 1;
                tracing::info!(
                    ms = started.elapsed().as_millis() as u64,
                    "sm.redb rewritten packed"
                );
            } else {
                self.progress().repacks_abandoned += 1;
                tracing::info!("rewriting sm.redb given up: writes resumed, a writer waits, or the CPU stayed busy");
            }
            Ok(done)
        }));
        match looked {
            Ok(Ok(true)) => rest.looked(),
            Ok(Ok(false)) => rest.abandoned(),
            // Not again until as many rows again have been written.
            Ok(Err(e)) => {
                tracing::warn!("rewriting sm.redb as a packed copy: {e}");
                rest.looked();
            }
            Err(_) => {
                tracing::error!("rewriting sm.redb as a packed copy panicked");
                rest.looked();
            }
        }
    }

    /// Freeze the active layer (unless a frozen one waits from a failed or put-off try) and
    /// write it, if the disk has room for it.
    fn flush_once(&self, rebuild: &mut Option<Rebuild>) -> Result<Flushed, BoxError> {
        // The next active layer, sized like this one, allocated before the lock is taken.
        let mut next = Layer::sized_for(self.db.read(|c| c.active.cookies.len()));
        let (frozen, db, ids, froze) = self.db.write(|c| {
            let froze = c.frozen.is_none() && !c.active.is_empty();
            if froze {
                next.follow(&c.active);
                c.frozen = Some(std::mem::replace(&mut c.active, Arc::new(next)));
            }
            (c.frozen.clone(), c.db.clone(), c.ids.clone(), froze)
        });
        if froze {
            // An `apply` waiting at the bound may go on into the new active layer.
            self.wake();
        }
        let Some(frozen) = frozen else {
            return Ok(Flushed::Wrote(None));
        };
        let need = flush_room::needed(&frozen, flush_room::file_len(self.db.path()));
        if let Some(why) = flush_room::short(self.db.path(), need) {
            return Ok(Flushed::PutOff(why));
        }
        let started = Instant::now();
        // Before the commit: a reader that sees the records must find their ids (`ids`).
        if let Some(ids) = &ids {
            ids.add_layer(&frozen);
        }
        if let Some(r) = rebuild {
            r.note(&frozen);
        }
        let behind = {
            let mut p = self.progress();
            let behind = p.behind_until.is_some_and(|t| Instant::now() < t);
            p.prompted += u64::from(behind);
            behind
        };
        if behind {
            let (db, frozen) = (db.clone(), frozen.clone());
            self.prompt.run(move || write_layer(&db, &frozen))?;
        } else {
            write_layer(&db, &frozen)?;
        }
        // Behind: `apply` filled a layer's worth while this one was written.
        if self.db.read(|c| c.active.big()) {
            self.fell_behind();
        }
        // The state readers see next: opened here, once per flush, not by each reader.
        let txn = Arc::new(db.begin_read()?);
        tracing::debug!(
            rows = frozen.rows(),
            ms = started.elapsed().as_millis() as u64,
            behind,
            "state machine changes written to sm.redb"
        );
        // Dropped only if it is still the one (an install replaces the state whole).
        let current = self.db.write(|c| {
            let same = c.frozen.as_ref().is_some_and(|f| Arc::ptr_eq(f, &frozen));
            if same {
                c.frozen = None;
                c.txn = txn.clone();
            }
            same
        });
        if current && rebuild.is_none() && self.ids_need_scan(&db, ids.as_ref(), &txn) {
            match Rebuild::start(db, txn) {
                Ok(r) => {
                    *rebuild = Some(r);
                    self.progress().ids_scans += 1;
                }
                Err(e) => tracing::warn!("starting to build the filter of stored ids: {e}"),
            }
        }
        Ok(Flushed::Wrote(
            current
                .then_some(frozen.applied.map(|a| (a.index, frozen.rows() as u64)))
                .flatten(),
        ))
    }

    /// Whether the filter of `db`'s ids must be built by a scan of the file, just committed
    /// as `txn`: there is none yet, or a full one holds mostly ids of removed records. A full
    /// one otherwise grows here, between two commits like a scanned one is published: every
    /// id committed so far is in the filters it keeps.
    fn ids_need_scan(
        &self,
        db: &Arc<Database>,
        ids: Option<&Arc<Ids>>,
        txn: &ReadTransaction,
    ) -> bool {
        let Some(ids) = ids else {
            return true;
        };
        if !ids.is_full() {
            return false;
        }
        let records = match records_in(txn) {
            Ok(records) => records,
            Err(e) => {
                // The next flush asks again.
                tracing::warn!("counting the stored records for the filter of ids: {e}");
                return false;
            }
        };
        match ids.grown(records) {
            Some(grown) => {
                self.publish(db, Some(ids), grown);
                false
            }
            None => true,
        }
    }

    /// Make `ids` the filter of `db`'s ids, unless an install has replaced `db` meanwhile or
    /// (`replacing`) the filter is no longer that one. Returns whether it did.
    fn publish(&self, db: &Arc<Database>, replacing: Option<&Arc<Ids>>, ids: Ids) -> bool {
        let ids = Arc::new(ids);
        self.db.write(|c| {
            let same_db = Arc::ptr_eq(&c.db, db);
            let same_ids = match (replacing, &c.ids) {
                (Some(old), Some(now)) => Arc::ptr_eq(old, now),
                (Some(_), None) => false,
                (None, _) => true,
            };
            if same_db && same_ids {
                c.ids = Some(ids);
            }
            same_db && same_ids
        })
    }

    /// Publish the filter of ids if its build has finished, unless an install has replaced
    /// the database it covers meanwhile. Called between this thread's commits: every layer
    /// committed since the scanned transaction has been noted (`ids`).
    fn publish_ids(&self, rebuild: &mut Option<Rebuild>) {
        let Some(r) = rebuild.take_if(|r| r.is_finished()) else {
            return;
        };
        match r.finish() {
            Ok((db, ids)) => {
                let published = self.publish(&db, None, ids);
                tracing::debug!(published, "filter of stored ids built");
            }
            // Until the next flush starts another build, creates ask sm.redb.
            Err(e) => tracing::warn!("building the filter of stored ids: {e}"),
        }
    }
}

/// What the flush thread has written since it last looked at the file's packing.
struct Rest {
    /// Rows written since the last look; `u64::MAX` before the first, so that a node
    /// restarted after a load looks at its first rest.
    rows: u64,
    /// When it last wrote rows (or gave up a copy).
    since: Instant,
}

impl Rest {
    fn new() -> Self {
        Rest {
            rows: u64::MAX,
            since: Instant::now(),
        }
    }

    fn wrote(&mut self, rows: u64) {
        self.rows = self.rows.saturating_add(rows);
        if rows > 0 {
            self.since = Instant::now();
        }
    }

    fn due(&self, policy: &repack::Policy) -> bool {
        self.rows >= policy.min_rows && self.since.elapsed() >= policy.idle
    }

    /// Looked (and rewrote, or found it not worth it): not again before as many rows again.
    fn looked(&mut self) {
        self.rows = 0;
    }

    /// Gave up a copy because writes resumed: again at the next rest.
    fn abandoned(&mut self) {
        self.since = Instant::now();
    }
}

impl Drop for FlushThread {
    fn drop(&mut self) {
        self.overlay.progress().stop = true;
        self.overlay.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The records `txn` sees (redb keeps the count: no scan).
fn records_in(txn: &ReadTransaction) -> Result<u64, BoxError> {
    Ok(txn.open_table(COOKIES)?.len()?)
}

/// Write `layer` into `db` in one durable transaction, with its `last_applied`: the
/// database then holds exactly the state up to that entry.
fn write_layer(db: &Database, layer: &Layer) -> Result<(), BoxError> {
    let txn = db.begin_write()?;
    {
        write_rows(&mut txn.open_table(COOKIES)?, &layer.cookies)?;
        write_index(&mut txn.open_table(BY_CREATED)?, &layer.by_created)?;
        write_rows(&mut txn.open_table(KEYS)?, &layer.keys)?;
        write_index(&mut txn.open_table(KEYS_BY_EXPIRY)?, &layer.keys_by_expiry)?;
        if let Some(r) = &layer.registry {
            txn.open_table(IDENTITY)?
                .insert(KEY_REGISTRY, codec::encode(r)?.as_slice())?;
        }
    }
    if let Some(m) = &layer.membership {
        put_meta(&txn, KEY_MEMBERSHIP, m)?;
    }
    put_meta(&txn, KEY_APPLIED, &layer.applied)?;
    put_meta(&txn, KEY_FLUSH_COUNT, &layer.count_after())?;
    txn.commit()?;
    Ok(())
}

/// Store or remove each row, in key order: neighbours share pages, so each page is copied
/// once.
fn write_rows(
    table: &mut Table<'_, &'static str, &'static [u8]>,
    rows: &HashMap<String, Row>,
) -> Result<(), BoxError> {
    let mut sorted: Vec<_> = rows.iter().collect();
    sorted.sort_unstable_by_key(|(k, _)| k.as_str());
    for (key, row) in sorted {
        match row {
            Some(v) => table.insert(key.as_str(), v.as_slice())?,
            None => table.remove(key.as_str())?,
        };
    }
    Ok(())
}

/// Add or remove each index key (a `BTreeMap`: already in order).
fn write_index(
    table: &mut Table<'_, (u64, &'static str), ()>,
    keys: &BTreeMap<IndexKey, bool>,
) -> Result<(), BoxError> {
    for ((n, key), present) in keys {
        match present {
            true => table.insert((*n, key.as_str()), ())?,
            false => table.remove((*n, key.as_str()))?,
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(rows: &[(u64, &str, bool)]) -> Layer {
        let mut l = Layer::default();
        for (n, id, present) in rows {
            l.by_created.insert((*n, id.to_string()), *present);
        }
        l
    }

    #[test]
    fn a_merge_takes_the_newest_word_for_each_key_in_order() {
        let newest = layer(&[(2, "b", false), (5, "e", true)]);
        let older = layer(&[(2, "b", true), (3, "c", false), (4, "d", true)]);
        let base: Vec<Result<(IndexKey, bool), BoxError>> = [(1, "a"), (3, "c"), (6, "f")]
            .iter()
            .map(|(n, s)| Ok(((*n, s.to_string()), true)))
            .collect();
        let sources: Vec<Source<'_>> = vec![
            Box::new(newest.by_created.iter().map(|(k, p)| Ok((k.clone(), *p)))),
            Box::new(older.by_created.iter().map(|(k, p)| Ok((k.clone(), *p)))),
            Box::new(base.into_iter()),
        ];
        let merged: Vec<IndexKey> = Merge {
            sources: sources.into_iter().map(Iterator::peekable).collect(),
        }
        .collect::<Result<_, _>>()
        .unwrap();
        let ids: Vec<&str> = merged.iter().map(|(_, s)| s.as_str()).collect();
        // b: removed by the newest; c: removed by the older layer; d, e: added.
        assert_eq!(ids, ["a", "d", "e", "f"]);
    }

    /// A new, empty `sm.redb` in `dir`, and an overlay over it with its flush thread.
    fn empty_overlay(dir: &std::path::Path) -> (Db, Overlay, FlushThread) {
        let path = dir.join("sm.redb");
        let file = crate::create_db(&path, 1 << 20).unwrap();
        super::super::tables::create_tables(&file).unwrap();
        let db = Db::new(file, &path, 1 << 20).unwrap();
        let (overlay, flusher) =
            Overlay::start(db.clone(), None, None, Stagger::for_node(0)).unwrap();
        (db, overlay, flusher)
    }

    /// `apply` adds without blocking and is told when the layers are at their bound; the wait
    /// for room ends when the frozen layer is written, and not before.
    #[test]
    fn add_reports_the_bound_and_the_wait_for_room_ends_with_the_write_and_the_next_goes_prompt() {
        use super::super::layer::{FLUSH_ROWS, HARD_FACTOR};
        use openraft::CommittedLeaderId;

        let dir = tempfile::tempdir().unwrap();
        let (db, overlay, _flusher) = empty_overlay(dir.path());
        // redb has one writer at a time: while this transaction is open, the flush thread's
        // write of the frozen layer cannot begin. Declared after the flush thread, so that a
        // failed assertion drops it first and the thread's join does not wait on it.
        let held = db.get().begin_write().unwrap();
        let mut index = 0;
        let mut batch = |rows: usize| {
            let mut l = Layer::default();
            for _ in 0..rows {
                index += 1;
                l.put_cookie(&format!("id-{index}"), Some(b"{}".to_vec()));
                l.applied(LogId::new(CommittedLeaderId::new(1, 1), index));
            }
            l
        };
        // A layer due for a flush: the flush thread freezes it and waits for the writer.
        assert_eq!(overlay.add(batch(FLUSH_ROWS)), Room::Left);
        let deadline = Instant::now() + Duration::from_secs(10);
        while db.read(|c| c.frozen.is_none()) {
            assert!(Instant::now() < deadline, "the flush never froze the layer");
            std::thread::sleep(Duration::from_millis(5));
        }
        // The next active layer starts with room for as many records as the frozen one.
        assert!(db.read(|c| c.active.cookies.capacity()) >= FLUSH_ROWS);
        // Up to the bound the active layer takes batches; at it, `add` says so.
        assert_eq!(overlay.add(batch(FLUSH_ROWS)), Room::Left);
        assert_eq!(overlay.add(batch(FLUSH_ROWS * HARD_FACTOR)), Room::Full);
        let waiter = std::thread::spawn({
            let overlay = overlay.clone();
            move || overlay.wait_for_room()
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !waiter.is_finished(),
            "room before the frozen layer was written"
        );
        drop(held);
        waiter.join().unwrap().unwrap();
        // The frozen layer (entries up to FLUSH_ROWS) reaches the file's written index. Not
        // "nothing is frozen now": the flush thread, woken by the adds above, may already have
        // frozen the next layer. The index only grows, but is published just after the layer
        // is let go, so it is waited for.
        let deadline = Instant::now() + Duration::from_secs(10);
        while overlay.stats().written < Some(FLUSH_ROWS as u64) {
            assert!(
                Instant::now() < deadline,
                "the frozen layer's index was never written"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // That write was behind: `apply` filled more than a layer's worth, and waited, while
        // it ran. What was applied meanwhile is written at the normal priority.
        let all = (FLUSH_ROWS * (2 + HARD_FACTOR)) as u64;
        while overlay.stats().written < Some(all) {
            assert!(
                Instant::now() < deadline,
                "the later layers were never written"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(overlay.stats().prompted >= 1, "{:?}", overlay.stats());
    }

    /// A node's flushes' count (its place against the stagger's boundaries) goes on across a
    /// restart and an install. It used to start from zero at each: a restarted node's phase
    /// against the other nodes' was then a matter of chance, and could fall on theirs.
    #[test]
    fn the_flush_count_goes_on_across_a_restart_and_an_install() {
        use openraft::CommittedLeaderId;

        let dir = tempfile::tempdir().unwrap();
        let batch = |from: u64, n: u64| {
            let mut l = Layer::default();
            for i in from..from + n {
                l.put_cookie(&format!("id-{i}"), Some(b"{}".to_vec()));
                l.applied(LogId::new(CommittedLeaderId::new(1, 1), i));
            }
            l
        };
        let count = |db: &Db| db.read(|c| c.active.count_after());
        let written = {
            let (db, overlay, flusher) = empty_overlay(dir.path());
            assert_eq!(count(&db), 0.0);
            let _ = overlay.add(batch(1, 300));
            let _ = overlay.add(batch(301, 300));
            let before = count(&db);
            assert!(
                before > 0.5,
                "600 entries are more than half a flush's worth"
            );
            overlay.flush_all(Short::Wait).unwrap();
            // The active layer after the flush starts where the written one ended.
            assert_eq!(count(&db), before);
            drop(flusher);
            drop(overlay);
            drop(db);
            before
        };
        // Reopened, as a restarted node opens its `sm.redb`.
        let path = dir.path().join("sm.redb");
        let file = crate::create_db(&path, 1 << 20).unwrap();
        let db = Db::new(file, &path, 1 << 20).unwrap();
        let (overlay, _flusher) =
            Overlay::start(db.clone(), Some(600), None, Stagger::for_node(0)).unwrap();
        assert_eq!(
            count(&db),
            written,
            "a restart counts on from the last flush"
        );
        let _ = overlay.add(batch(601, 100));
        let added = count(&db);
        assert!(added > written);
        // An install replaces the file and drops the layers; it writes the count as it
        // stands into the new file (`snapshot::fill`), and the count stays.
        db.replace(|new| {
            let txn = new.begin_write()?;
            put_meta(
                &txn,
                KEY_APPLIED,
                &Some(LogId::new(CommittedLeaderId::new(1, 1), 900)),
            )?;
            put_meta(&txn, KEY_FLUSH_COUNT, &added)?;
            txn.commit()?;
            Ok(())
        })
        .unwrap();
        assert!(db.read(|c| c.active.is_empty()));
        assert_eq!(count(&db), added, "an install keeps the count");
    }

    /// A flushes' count that cannot be read does not stop the state machine from opening:
    /// it only spreads the nodes' flushes, so it starts from zero.
    #[test]
    fn an_unreadable_flush_count_starts_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sm.redb");
        let file = crate::create_db(&path, 1 << 20).unwrap();
        super::super::tables::create_tables(&file).unwrap();
        let txn = file.begin_write().unwrap();
        txn.open_table(super::super::tables::META)
            .unwrap()
            .insert(KEY_FLUSH_COUNT, &b"xy"[..])
            .unwrap();
        txn.commit().unwrap();
        let db = Db::new(file, &path, 1 << 20).unwrap();
        let (_overlay, _flusher) =
            Overlay::start(db.clone(), None, None, Stagger::for_node(0)).unwrap();
        assert_eq!(db.read(|c| c.active.count_after()), 0.0);
    }

    /// A filter of ids that finishes building is published by itself: the layer applied
    /// meanwhile waits for its own thresholds. The flush thread used to write it then too,
    /// early and at a moment no caller could foresee; a test that squeezes the disk between
    /// its creates and their write failed 3 runs in 12 on it.
    #[test]
    fn a_finished_filter_of_ids_is_published_without_writing_the_layer() {
        use super::super::layer::FLUSH_INTERVAL;
        use openraft::CommittedLeaderId;

        let dir = tempfile::tempdir().unwrap();
        let (db, overlay, _flusher) = empty_overlay(dir.path());
        let row = |id: &str, index| {
            let mut l = Layer::default();
            l.put_cookie(id, Some(b"{}".to_vec()));
            l.applied(LogId::new(CommittedLeaderId::new(1, 1), index));
            l
        };
        assert_eq!(overlay.add(row("first", 1)), Room::Left);
        // The first write finds no filter, and starts building one.
        overlay.flush_all(Short::Wait).unwrap();
        assert_eq!(overlay.stats().ids_scans, 1);
        let added = Instant::now();
        assert_eq!(overlay.add(row("second", 2)), Room::Left);
        let deadline = Instant::now() + Duration::from_secs(10);
        while db.read(|c| c.ids.is_none()) {
            assert!(Instant::now() < deadline, "the filter was never published");
            std::thread::sleep(Duration::from_millis(2));
        }
        // Long enough for a write begun with the publication to be counted.
        std::thread::sleep(Duration::from_millis(100));
        if added.elapsed() >= FLUSH_INTERVAL {
            // A machine too busy to build a filter of one row in a second (the threads run
            // at nice 10): the layer was due by its age, and a write cannot tell either way.
            eprintln!(
                "the filter took {:?} to publish: nothing to tell",
                added.elapsed()
            );
            return;
        }
        assert_eq!(
            overlay.stats().written,
            Some(1),
            "the layer was written early"
        );
        assert!(!db.read(|c| c.active.is_empty()));
    }

    /// Once at rest, a file whose trees are far larger than what they hold is rewritten as a
    /// packed copy: every row, seen through the readers' shared transaction too, in fewer
    /// pages, with the index it was written up to; nothing left beside it.
    #[test]
    fn at_rest_the_file_is_rewritten_packed_with_every_row() {
        use openraft::CommittedLeaderId;
        use std::os::unix::fs::MetadataExt;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sm.redb");
        let file = repack::filled(&path, 100_000);
        let before = std::fs::metadata(&path).unwrap().blocks();
        let db = Db::new(file, &path, 1 << 20).unwrap();
        let policy = repack::Policy {
            idle: Duration::from_millis(50),
            min_rows: 1,
            min_slack: 1 << 20,
            // Other tests keep the CPU busy: the copy would wait for them.
            wait_for_idle_cpu: false,
        };
        let (overlay, _flusher) =
            Overlay::start(db.clone(), None, Some(policy), Stagger::for_node(0)).unwrap();
        // One row through the layers: the flush thread counts it, and looks once at rest.
        let mut l = Layer::default();
        l.put_cookie("written-last", Some(b"{}".to_vec()));
        l.applied(LogId::new(CommittedLeaderId::new(1, 1), 7));
        assert_eq!(overlay.add(l), Room::Left);
        overlay.flush_all(Short::Wait).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while overlay.stats().repacks == 0 {
            assert!(Instant::now() < deadline, "never rewritten");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(repack::worth_it(&db.get(), 1 << 20).unwrap(), None);
        let (records, applied) = db.read(|c| {
            let records = c.txn.open_table(COOKIES).unwrap().len().unwrap();
            (records, super::super::tables::applied_in(&c.txn).unwrap())
        });
        assert_eq!(records, 100_001);
        assert_eq!(applied.map(|a| a.index), Some(7));
        assert_eq!(overlay.stats().written, Some(7));
        assert!(!super::super::handle::installing_path(&path).exists());
        let after = std::fs::metadata(&path).unwrap().blocks();
        assert!(after * 10 < before * 9, "{before} -> {after} blocks");
        // Looked once: not again until as many rows again are written.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(overlay.stats().repacks, 1);
    }

    /// A node looks at its file at its first rest (it may have been restarted after a
    /// load), then only once enough rows have been written since, and never during writes.
    #[test]
    fn rest_looks_first_at_start_then_after_enough_rows() {
        let policy = repack::Policy {
            idle: Duration::ZERO,
            min_rows: 100,
            min_slack: 0,
            wait_for_idle_cpu: true,
        };
        let mut rest = Rest::new();
        assert!(rest.due(&policy));
        rest.looked();
        assert!(!rest.due(&policy));
        rest.wrote(99);
        assert!(!rest.due(&policy));
        rest.wrote(1);
        assert!(rest.due(&policy));
        // Not before the idle time since the last rows written, or the last copy given up.
        let policy = repack::Policy {
            idle: Duration::from_secs(3600),
            ..policy
        };
        assert!(!rest.due(&policy));
        rest.abandoned();
        assert!(!rest.due(&policy));
    }

    #[test]
    fn absorbing_keeps_the_newer_change_and_adds_the_counts() {
        let mut older = Layer::default();
        older.put_cookie("a", Some(b"1".to_vec()));
        older.count_delta = 1;
        let mut newer = Layer::default();
        newer.put_cookie("a", None);
        newer.count_delta = -1;
        older.absorb(newer);
        assert_eq!(older.cookies["a"], None);
        assert_eq!(older.count_delta, 0);
    }
}
