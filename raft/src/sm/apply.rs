//! Applying committed entries: entries, commands and the batch they make.
//!
//! `apply` is deterministic: it reads only the entry and the current state (timestamps were
//! put into the command by the proposer), so every replica computes the same records, the same
//! versions and the same answers. A whole batch of entries becomes one layer of changes,
//! carrying `last_applied` and the membership, added to the state at once (`overlay`): readers
//! see all of a batch or none of it, and the state and its position in the log always agree.
//! Nothing is written to `sm.redb` here; the overlay's thread does that, a few thousand
//! records at a time, beside `apply` rather than in front of it.
//!
//! What one command does to the records is [`Command::apply`]'s, against [`Tables`], which
//! keeps the `created` index, the record count and the list of records the cache must forget
//! in step with every change; this file walks the entries and keeps the batch's bookkeeping
//! (membership, last applied).
//!
//! [`Command::apply`]: crate::command::Command

use std::sync::atomic::Ordering;

use std::ops::Bound;

use openraft::{Entry, EntryPayload, StorageIOError};

use super::overlay::{IndexKey, Layer, Room, Short, View};
use super::state::StateMachine;
use super::tables::{order_key, Membership};
use crate::codec;
use crate::command::{KeyRecord, Records};
use crate::durable::no_room;
use crate::identity::Registry;
use crate::record::Record;
use crate::types::{Response, TypeConfig};
use crate::{BoxError, StResult};

/// What one applied batch changed, for cache invalidation (and the identity registry, for
/// the network's view of it).
#[derive(Default)]
struct Touched {
    ids: Vec<String>,
    list: bool,
    registry: Option<Registry>,
}

/// The state as commands see it: the batch being built over the state it began on. Every
/// change goes through [`Tables::put`], [`Tables::remove`] or [`Tables::replace`], which keep
/// the `created` index and the record count in step with the records and note the id for the
/// cache, so no command can forget any of them.
struct Tables<'v> {
    view: &'v View,
    batch: Layer,
    touched: Touched,
}

impl Tables<'_> {
    /// Any change to a record changes the list too. An update that renames removes one id and
    /// puts another: each is noted; an id noted twice in a row is noted once.
    fn touch(&mut self, id: &str) {
        if self.touched.ids.last().map(String::as_str) != Some(id) {
            self.touched.ids.push(id.to_owned());
        }
        self.touched.list = true;
    }
}

impl Records for Tables<'_> {
    fn exists(&self, id: &str) -> Result<bool, BoxError> {
        self.view.has_record(Some(&self.batch), id)
    }

    fn get(&self, id: &str) -> Result<Option<Record>, BoxError> {
        self.view.get(Some(&self.batch), id)
    }

    /// Store `rec` under `id` (which holds no record, [`Records::put`]) and index it.
    fn put(&mut self, id: &str, rec: &Record) -> Result<(), BoxError> {
        debug_assert!(!self.exists(id)?, "put over a stored record: {id}");
        self.batch.count_delta += 1;
        self.batch.put_cookie(id, Some(rec.encode()));
        self.batch
            .by_created
            .insert((order_key(rec.created), id.to_owned()), true);
        self.touch(id);
        Ok(())
    }

    /// Remove `id` (whose record is `rec`) and its index entry.
    fn remove(&mut self, id: &str, rec: &Record) -> Result<(), BoxError> {
        self.batch.count_delta -= 1;
        self.batch.put_cookie(id, None);
        self.batch
            .by_created
            .insert((order_key(rec.created), id.to_owned()), false);
        self.touch(id);
        Ok(())
    }

    /// Store `rec` over `id`'s record, which sorts at the same place ([`Records::replace`]):
    /// the count and the `created` index stay as they are.
    fn replace(&mut self, id: &str, rec: &Record) -> Result<(), BoxError> {
        debug_assert!(self.exists(id)?, "replace of no record: {id}");
        self.batch.put_cookie(id, Some(rec.encode()));
        self.touch(id);
        Ok(())
    }

    fn key(&self, key: &str) -> Result<Option<KeyRecord>, BoxError> {
        match self.view.key(Some(&self.batch), key)? {
            Some(v) => Ok(Some(codec::decode(&v)?)),
            None => Ok(None),
        }
    }

    fn put_key(
        &mut self,
        key: &str,
        rec: &KeyRecord,
        replaces: Option<u64>,
    ) -> Result<(), BoxError> {
        match replaces {
            Some(expired) => {
                self.batch
                    .keys_by_expiry
                    .insert((expired, key.to_owned()), false);
            }
            None => self.batch.keys_delta += 1,
        }
        self.batch.put_key(key, Some(codec::encode(rec)?));
        let entry = (rec.expires_ms, key.to_owned());
        if below(&entry, self.view.expiry_floor(Some(&self.batch))) {
            self.batch.expiry_floor = Some(Bound::Included(entry.clone()));
        }
        self.batch.keys_by_expiry.insert(entry, true);
        Ok(())
    }

    fn expire_keys(&mut self, now_ms: u64, max: usize) -> Result<usize, BoxError> {
        let expired: Vec<IndexKey> = self
            .view
            .due_keys(Some(&self.batch), now_ms)?
            .take(max)
            .collect::<Result<_, _>>()?;
        if let Some(last) = expired.last() {
            // Every entry up to `last` is gone now: the next sweep starts after it.
            self.batch.expiry_floor = Some(Bound::Excluded(last.clone()));
        }
        let count = expired.len();
        self.batch.keys_delta -= count as i64;
        for (at, key) in expired {
            self.batch.put_key(&key, None);
            self.batch.keys_by_expiry.insert((at, key), false);
        }
        Ok(count)
    }

    fn registry(&self) -> Result<Registry, BoxError> {
        self.view.registry(Some(&self.batch))
    }

    fn set_registry(&mut self, registry: &Registry) -> Result<(), BoxError> {
        self.batch.registry = Some(registry.clone());
        self.touched.registry = Some(registry.clone());
        Ok(())
    }
}

/// Whether `entry` lies before `floor` (an index position a sweep starts from).
fn below(entry: &IndexKey, floor: Bound<&IndexKey>) -> bool {
    match floor {
        Bound::Unbounded => false,
        Bound::Included(f) => entry < f,
        Bound::Excluded(f) => entry <= f,
    }
}

/// Apply `entries` to the state `view` shows, as one new layer. Returns the responses, the
/// layer and what changed.
fn apply_entries(
    view: &View,
    entries: Vec<Entry<TypeConfig>>,
) -> Result<(Vec<Response>, Layer, Touched), BoxError> {
    let mut responses = Vec::with_capacity(entries.len());
    let mut tables = Tables {
        view,
        batch: Layer::default(),
        touched: Touched::default(),
    };
    for entry in entries {
        let index = entry.log_id.index;
        tables.batch.applied(entry.log_id);
        match entry.payload {
            EntryPayload::Blank => responses.push(Response::default()),
            EntryPayload::Normal(req) => {
                let mut results = Vec::with_capacity(req.cmds.len());
                for cmd in req.cmds {
                    // A record's version is the index of the entry that last wrote it.
                    results.push(cmd.apply(&mut tables, index)?);
                }
                responses.push(Response { results });
            }
            EntryPayload::Membership(m) => {
                // A node that left is forgotten, so a replacement can register its id.
                let mut registry = tables.registry()?;
                if registry.retain(|id| m.nodes().any(|(n, _)| *n == id)) {
                    tables.set_registry(&registry)?;
                }
                tables.batch.membership = Some(Membership::new(Some(entry.log_id), m));
                responses.push(Response::default());
            }
        }
    }
    Ok((responses, tables.batch, tables.touched))
}

/// A batch of at most this many commands is applied on the runtime's thread that asked for
/// it; a larger one (a follower catching up, a leader at hundreds of clients) on the blocking
/// pool. Handing every batch to the pool cost a thread wake-up and a switch each way: at 64
/// clients that was ~9% of the three nodes' CPU (docs/benchmarks.md, "apply without the
/// blocking pool"). A batch this size is a few hundred microseconds of CPU and reads only
/// the layers and redb's page cache, which is the runtime's budget for one poll.
const INLINE_COMMANDS: usize = 256;

/// How many commands `entries` carry (a blank or membership entry counts as one).
fn commands_in(entries: &[Entry<TypeConfig>]) -> usize {
    entries
        .iter()
        .map(|e| match &e.payload {
            EntryPayload::Normal(req) => req.cmds.len().max(1),
            _ => 1,
        })
        .sum()
}

/// A failure of `apply`'s work, as openraft takes it: a failed write of the state machine.
fn failed_write(e: BoxError) -> openraft::StorageError<crate::types::NodeId> {
    StorageIOError::write_state_machine(&crate::io_err(e)).into()
}

/// `f` on the blocking pool; its failure is a failed write of the state machine.
async fn on_pool<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BoxError> + Send + 'static,
) -> StResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageIOError::write_state_machine(&e))?
        .map_err(failed_write)
}

/// The most commands, and payload bytes, `apply` adds to the layers before it looks at
/// their memory bound again: a flush's worth of rows or bytes. openraft hands `apply` every
/// entry committed since the last call, which for a follower catching up, or entries of
/// large records, was hundreds of MiB added in one step past the bound (640 MiB seen in
/// review against its 64 MiB).
pub(super) const SLICE_ROWS: usize = super::layer::FLUSH_ROWS;
pub(super) const SLICE_BYTES: usize = super::layer::FLUSH_BYTES;

/// The payload bytes of an entry's commands (`Command::size`).
fn bytes_in(entry: &Entry<TypeConfig>) -> usize {
    match &entry.payload {
        EntryPayload::Normal(req) => req.cmds.iter().map(crate::command::Command::size).sum(),
        _ => 0,
    }
}

/// `entries` cut, in order, into runs of at most [`SLICE_ROWS`] commands and [`SLICE_BYTES`]
/// bytes each (an entry larger than that alone). The common case, entries that fit one
/// run, is handed back as it came.
fn slices(entries: Vec<Entry<TypeConfig>>) -> Vec<Vec<Entry<TypeConfig>>> {
    if entries.is_empty() {
        return Vec::new();
    }
    if commands_in(&entries) <= SLICE_ROWS
        && entries.iter().map(bytes_in).sum::<usize>() <= SLICE_BYTES
    {
        return vec![entries];
    }
    let mut out: Vec<Vec<Entry<TypeConfig>>> = Vec::new();
    let mut current = Vec::new();
    let (mut rows, mut bytes) = (0, 0);
    for e in entries {
        let (r, b) = (commands_in(std::slice::from_ref(&e)), bytes_in(&e));
        if !current.is_empty() && (rows + r > SLICE_ROWS || bytes + b > SLICE_BYTES) {
            out.push(std::mem::take(&mut current));
            (rows, bytes) = (0, 0);
        }
        rows += r;
        bytes += b;
        current.push(e);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

impl StateMachine {
    /// openraft's `apply`: the entries applied a slice at a time ([`slices`]), each as
    /// [`StateMachine::apply_slice`] says.
    pub(super) async fn apply_batch(
        &mut self,
        entries: Vec<Entry<TypeConfig>>,
    ) -> StResult<Vec<Response>> {
        let mut slices = slices(entries).into_iter();
        let Some(first) = slices.next() else {
            return Ok(Vec::new());
        };
        let mut responses = self.apply_slice(first).await?;
        for slice in slices {
            responses.extend(self.apply_slice(slice).await?);
        }
        Ok(responses)
    }

    /// Entries applied into the layers (on this thread when they are few,
    /// [`INLINE_COMMANDS`]), any wait on the flush thread on the blocking pool, then the
    /// cache and the applied index brought up to date.
    async fn apply_slice(&mut self, entries: Vec<Entry<TypeConfig>>) -> StResult<Vec<Response>> {
        let inline = commands_in(&entries) <= INLINE_COMMANDS;
        let db = self.db.clone();
        let overlay = self.overlay.clone();
        let work = move || {
            let view = db.view()?;
            let (responses, batch, touched) = apply_entries(&view, entries)?;
            // Let go of the layers before adding to them, or the active one would be copied.
            drop(view);
            let last = batch.applied.map_or(0, |l| l.index);
            let room = overlay.add(batch);
            Ok::<_, BoxError>((responses, touched, last, room))
        };
        let (responses, touched, last, room) = if inline {
            work().map_err(failed_write)?
        } else {
            on_pool(work).await?
        };
        // The waits, which block, go to the pool. A registry change is written to sm.redb
        // before the node acts on it (it is rare): a node that restarts must still name
        // every member's incarnation, or it could not tell a wiped one.
        let full = room == Room::Full;
        let registry = touched.registry.is_some();
        let written = if full || registry {
            let overlay = self.overlay.clone();
            on_pool(move || {
                if full {
                    let waited = std::time::Instant::now();
                    overlay.wait_for_room()?;
                    crate::stages::since(&crate::stages::APPLY_FLUSH_WAIT, waited);
                }
                if !registry {
                    return Ok(true);
                }
                match overlay.flush_all(Short::Fail) {
                    Ok(()) => Ok(true),
                    Err(e) if no_room(&*e) => Ok(false),
                    Err(e) => Err(e),
                }
            })
            .await?
        } else {
            true
        };
        // Visible to readers: now make the cache forget what changed, before openraft publishes the
        // new last_applied (it does so after we return).
        self.cache
            .invalidate(touched.ids.iter().map(String::as_str), touched.list);
        if let Some(registry) = touched.registry {
            if written {
                self.identity.set_registry(last, registry);
            } else {
                self.registry_once_written(last, registry);
            }
        }
        self.applied.store(last, Ordering::SeqCst);
        Ok(responses)
    }

    /// The disk has no room yet for the write of `registry` (as of `last`) to sm.redb:
    /// `apply` goes on, and the node keeps acting on the registry it has (as it did while
    /// `apply` used to wait here, holding up every write behind it) until the write is
    /// done. A thread of the pool waits for it; on a failed write the node stops anyway.
    fn registry_once_written(&self, last: u64, registry: Registry) {
        tracing::warn!(
            index = last,
            "a change of the member registry waits for room on the disk to be written; the \
             node acts on the previous registry until then"
        );
        let overlay = self.overlay.clone();
        let identity = self.identity.clone();
        tokio::task::spawn_blocking(move || {
            let done =
                overlay.flush_all(Short::Wait).is_ok() && overlay.stats().written >= Some(last);
            if done {
                identity.set_registry(last, registry);
                tracing::info!(index = last, "the member registry written; now in force");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;
    use std::sync::Arc;

    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, LogId};

    use super::*;
    use crate::cache::Cache;
    use crate::command::Command;
    use crate::identity::Identity;
    use crate::sm::overlay::MERGE_STEPS;
    use crate::types::Request;

    fn open(dir: &Path) -> StateMachine {
        let identity = Arc::new(Identity::new(1, 0x11, false));
        StateMachine::open(dir, Arc::new(Cache::new(Default::default())), identity).unwrap()
    }

    /// A create of record `key` under idempotency key `key`, proposed at log time `now_ms`
    /// and kept `retention_ms`.
    fn keyed(key: &str, now_ms: u64, retention_ms: u64) -> Command {
        let body = format!(r#"{{"cookie":"{key}","user_id":1}}"#);
        let create = Command::create(body.as_bytes(), 1).unwrap();
        Command::keyed(key.into(), [7; 32], (now_ms, retention_ms), create)
    }

    /// Apply `cmd` as entry `index`, alone, as a leader applies one entry at a time.
    async fn apply_one(sm: &mut StateMachine, index: u64, cmd: Command) {
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request { cmds: vec![cmd] }),
        };
        sm.apply(vec![entry]).await.unwrap();
    }

    /// Once keys expire, each keyed write sweeps a few: the sweep starts after what the
    /// sweeps before it removed. It used to start at the index's start and step over every
    /// entry removed since the last flush, in each layer and again in `sm.redb`: at 2,000
    /// writes that is hundreds of thousands of steps, where a sweep's own work is a few.
    /// (A current-thread runtime: `apply` runs these one-command batches on this thread,
    /// whose step count the test reads.)
    #[tokio::test]
    async fn a_sweep_of_expired_keys_does_not_walk_what_earlier_sweeps_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        const WRITES: u64 = 2000;
        MERGE_STEPS.with(|n| n.set(0));
        // Each key expires 15 ms after it was written, and the writes are 10 ms apart: every
        // write finds the one two before it expired.
        for i in 1..=WRITES {
            apply_one(&mut sm, i, keyed(&format!("k{i:05}"), i * 10, 15)).await;
        }
        let steps = MERGE_STEPS.with(|n| n.get());
        assert!(
            steps <= 3 * WRITES,
            "{steps} index entries stepped over by {WRITES} sweeps"
        );
        // And they did sweep: only the last two keys are left.
        let view = sm.db.view().unwrap();
        let left: Vec<u64> = (1..=WRITES)
            .filter(|i| view.key(None, &format!("k{i:05}")).unwrap().is_some())
            .collect();
        assert_eq!(left, [WRITES - 1, WRITES]);
        // The count of keys held follows, in the layers and once they are written.
        assert_eq!(sm.reader().key_count().unwrap(), 2);
        sm.overlay.flush_all(Short::Fail).unwrap();
        assert_eq!(sm.reader().key_count().unwrap(), 2);
    }

    /// openraft hands `apply` every entry committed since its last call: a follower that
    /// catches up gets thousands at once. They go into the layers a slice at a time, each
    /// slice checked against the memory bound, so the layers never hold them all; applied
    /// in one step they held every row (160,000 here) before the bound was looked at.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_run_of_entries_goes_into_the_layers_a_slice_at_a_time() {
        use crate::sm::layer::{FLUSH_ROWS, HARD_FACTOR};
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        const PER_ENTRY: u64 = 256;
        const ENTRIES: u64 = 625;
        let entries: Vec<_> = (1..=ENTRIES)
            .map(|index| {
                let cmds = (0..PER_ENTRY)
                    .map(|i| {
                        let id = format!("r{index:04}-{i:03}");
                        let body = format!(r#"{{"cookie":"{id}","user_id":1}}"#);
                        Command::create(body.as_bytes(), 1).unwrap()
                    })
                    .collect();
                Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                    payload: EntryPayload::Normal(Request { cmds }),
                }
            })
            .collect();
        let responses = sm.apply(entries).await.unwrap();
        assert_eq!(responses.len() as u64, ENTRIES);
        let bound = 2 * (FLUSH_ROWS * HARD_FACTOR + SLICE_ROWS);
        let peak = sm.overlay.stats().peak_rows;
        assert!(
            peak <= bound,
            "the layers held {peak} rows at once, over the bound's {bound}"
        );
        assert_eq!(sm.reader().count().unwrap(), ENTRIES * PER_ENTRY);
        assert_eq!(sm.applied.load(Ordering::SeqCst), ENTRIES);
    }

    /// Slices keep the entries' order, never split an entry, and take one larger than a
    /// slice alone.
    #[test]
    fn slices_keep_order_and_whole_entries() {
        let entry = |index: u64, cmds: usize, bytes: usize| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request {
                cmds: (0..cmds)
                    .map(|_| Command::Delete {
                        id: "x".repeat(bytes / cmds),
                        if_match: None,
                    })
                    .collect(),
            }),
        };
        let entries = vec![
            entry(1, 5000, 5000),
            entry(2, 5000, 5000),
            entry(3, 1, SLICE_BYTES + 1),
            entry(4, 10, 10),
            entry(5, 10, 10),
        ];
        let cut: Vec<Vec<u64>> = slices(entries)
            .iter()
            .map(|s| s.iter().map(|e| e.log_id.index).collect())
            .collect();
        assert_eq!(cut, [vec![1], vec![2], vec![3], vec![4, 5]]);
        assert!(slices(Vec::new()).is_empty());
    }

    /// A key is recorded, for the leader's room check, only while it is retained: one past
    /// its retention but not yet swept out would be applied as a new write.
    #[tokio::test]
    async fn a_key_past_its_retention_is_not_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        apply_one(&mut sm, 1, keyed("k", 1_000, 500)).await;
        let reader = sm.reader();
        assert!(reader.key_recorded("k", 1_200).unwrap());
        assert!(!reader.key_recorded("k", 1_500).unwrap());
        assert!(!reader.key_recorded("other", 1_200).unwrap());
    }

    /// What a keyed write removes does not depend on where the sweep starts, nor on when
    /// the layers were written: the state matches a model that sweeps the whole index each
    /// time, through keys used again, a proposer's clock that goes back (a key stored below
    /// where the sweeps had got to), many keys due at once (more than a sweep takes), and
    /// flushes at any point.
    #[tokio::test]
    async fn sweeps_remove_what_a_sweep_of_the_whole_index_removes() {
        for seed in 1..=6u64 {
            let dir = tempfile::tempdir().unwrap();
            let mut sm = open(dir.path());
            let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut next = |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            // The model: key -> when it expires, and the expiry index.
            let mut keys: BTreeMap<String, u64> = BTreeMap::new();
            let mut index: BTreeSet<(u64, String)> = BTreeSet::new();
            let mut now = 1_000u64;
            for i in 1..=600u64 {
                now = match next(20) {
                    0 => now.saturating_sub(next(300)),
                    1 => now + 200 + next(300),
                    _ => now + next(5),
                };
                let key = format!("k{}", next(150));
                let retention = 1 + next(100);
                apply_one(&mut sm, i, keyed(&key, now, retention)).await;

                let due: Vec<(u64, String)> = index
                    .iter()
                    .take_while(|(at, _)| *at <= now)
                    .take(64)
                    .cloned()
                    .collect();
                for (at, k) in due {
                    index.remove(&(at, k.clone()));
                    keys.remove(&k);
                }
                if keys.get(&key).is_none_or(|at| *at <= now) {
                    if let Some(old) = keys.insert(key.clone(), now + retention) {
                        index.remove(&(old, key.clone()));
                    }
                    index.insert((now + retention, key));
                }
                if next(50) == 0 {
                    sm.overlay.flush_all(Short::Fail).unwrap();
                }
                assert_eq!(
                    sm.reader().key_count().unwrap(),
                    keys.len() as u64,
                    "seed {seed}, write {i}: keys held"
                );
                let view = sm.db.view().unwrap();
                for k in 0..150 {
                    let k = format!("k{k}");
                    assert_eq!(
                        view.key(None, &k).unwrap().is_some(),
                        keys.contains_key(&k),
                        "seed {seed}, write {i}: key {k}"
                    );
                }
            }
        }
    }
}
