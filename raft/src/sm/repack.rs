//! Rewriting `sm.redb` as a packed copy of itself once the node is at rest.
//!
//! Records arrive under random ids, so the flushes insert them all over the records' B-tree,
//! and a full leaf that takes one more splits into two half-full ones: under a load of
//! creates redb's leaves settle about three quarters full, and the list index, inserted at
//! its newest-first end, about half (docs/benchmarks.md, Footprint). At 1.65M records the
//! trees took 680 MB of pages for 514 MB of keys, values and their headers, and with the
//! log a leader's data directory was past twice its records. redb packs leaves only when
//! keys come in order, as when a snapshot is installed into a new file.
//!
//! So, once no write has been flushed for [`Policy::idle`] (at the first such rest after a
//! start, then once enough rows have been written since the last look), the flush thread
//! measures the trees, and if their pages exceed what they hold by [`SLACK_FACTOR`] (and by
//! [`Policy::min_slack`] bytes) it copies every table in key order into a new file and
//! renames it over `sm.redb` ([`super::handle::Db::rewrite`]):
//! the same state, in packed leaves. The copy gives up as soon as writes want flushing
//! again, or a snapshot's pointer or an install waits for the file, so neither a load that
//! resumes nor openraft waits on it; the next rest tries again.
//!
//! At rest from writes is not at rest from reads: a node may serve reads at full speed
//! while it copies. So the measure and the copy also wait, between rows, while the node's
//! requests leave less than a fifth of its CPU ([`Pace`]), and give up after a minute of
//! waiting in all.
//!
//! Why only at rest: a packed leaf splits on its next insert, so under load the tree returns
//! to three quarters full within one pass of writes over it, and the copy would cost a
//! read and a write of the whole state for nothing. The file written meanwhile needs as much
//! disk again as the packed state, for the seconds the copy takes: a copy starts only with
//! twice that free ([`room_for_copy`]), so that it never takes the disk the log needs.

use std::path::Path;
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, Key, ReadTransaction, ReadableTable, TableDefinition, TableHandle, Value,
};

use super::tables::{BY_CREATED, COOKIES, IDENTITY, KEYS, KEYS_BY_EXPIRY, META};
use crate::BoxError;

/// Rewrite when the trees' pages are more than this many times the bytes they hold...
const SLACK_FACTOR: f64 = 1.25;
/// Rows copied per transaction: bounds the memory of the copy (a transaction's dirty pages
/// are held until it commits).
const BATCH: usize = 20_000;
/// Rows copied between two looks at whether to go on, give up or wait.
const LOOK_EVERY: usize = 1_000;
/// How long the copy waits before it looks again while the CPU is busy.
const PAUSE: Duration = Duration::from_millis(50);
/// The CPU share that the copy must find left to it to go on (what sat idle, and what the
/// copy itself used): below it, the node's requests (or anything else on its CPUs) want
/// the CPU.
const MIN_LEFT: f64 = 0.2;
/// The longest the copy waits for idle CPU, all its pauses together, before it gives up
/// (and tries again at the next rest): it holds the file meanwhile.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// What the copy does at a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Look {
    Go,
    /// Wait [`PAUSE`] and look again.
    Wait,
    GiveUp,
}

/// Whether the copy may go on, by how much of the CPU is left to it (idle, or its own): it
/// waits while the node's requests keep the CPUs busy. At nice 10 alone, the repacks of
/// three nodes on a 2-core host took a quarter of its CPU from the reads it served, and
/// raised their p99 by half (docs/benchmarks.md, thirtieth pass); a lower priority still
/// took what the requests left in the gaps of their I/O, and a thread that only runs on
/// idle CPU (`SCHED_IDLE`) could be stopped for seconds inside a lock of redb's page cache
/// that flushes and reads share. So the copy waits between rows instead, holding no lock
/// but the file's.
pub(super) struct Pace {
    sampler: Option<crate::idle::IdleSampler>,
    /// When the sample under way began, and the copying thread's CPU time then.
    since: (Instant, Duration),
    busy: bool,
    waited: Duration,
}

/// The share of `cpus` CPUs left to the copy over `elapsed`: what sat idle (`idle`), and
/// what the copy itself used (`copied`, its thread's CPU time). Counted as taken, its own
/// use would stop a copy that has the CPUs to itself: on one CPU, every other sample.
fn left_to_the_copy(idle: f64, copied: Duration, elapsed: Duration, cpus: f64) -> f64 {
    let own = copied.as_secs_f64() / elapsed.as_secs_f64().max(1e-9) / cpus;
    idle + own.min(1.0)
}

/// The calling thread's CPU time; zero where it cannot be read.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given and reads nothing of ours.
    let read = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0;
    match (u64::try_from(ts.tv_sec), u32::try_from(ts.tv_nsec)) {
        (Ok(secs), Ok(nanos)) if read && nanos < 1_000_000_000 => Duration::new(secs, nanos),
        _ => Duration::ZERO,
    }
}

impl Pace {
    /// A pace for this process under `policy`, to be asked on the thread that copies;
    /// where the CPU's use cannot be read, or the policy says not to, the copy never waits.
    pub(super) fn for_this_process(policy: &Policy) -> Pace {
        let sampler = policy
            .wait_for_idle_cpu
            .then(crate::idle::IdleSampler::for_this_process)
            .flatten();
        Pace::new(sampler)
    }

    fn new(mut sampler: Option<crate::idle::IdleSampler>) -> Pace {
        // The first sample only starts the interval.
        if let Some(s) = sampler.as_mut() {
            s.poll(Instant::now());
        }
        Pace {
            // Busy until a first sample says otherwise, where there will be one.
            busy: sampler.is_some(),
            sampler,
            since: (Instant::now(), thread_cpu()),
            waited: Duration::ZERO,
        }
    }

    /// The look, given `left`: when a new sample is in, the CPU's share left to the copy
    /// since the last one (between samples the last one holds).
    fn look_with(&mut self, left: Option<f64>) -> Look {
        if let Some(left) = left {
            self.busy = left < MIN_LEFT;
        }
        if !self.busy {
            return Look::Go;
        }
        if self.waited >= MAX_WAIT {
            return Look::GiveUp;
        }
        self.waited += PAUSE;
        Look::Wait
    }

    /// The look at `now`.
    pub(super) fn look(&mut self, now: Instant) -> Look {
        let Some(sampler) = self.sampler.as_mut() else {
            return self.look_with(None);
        };
        let Some(idle) = sampler.poll(now) else {
            return self.look_with(None);
        };
        let cpu = thread_cpu();
        let (at, cpu_then) = std::mem::replace(&mut self.since, (now, cpu));
        let left = left_to_the_copy(
            idle,
            cpu.saturating_sub(cpu_then),
            now.duration_since(at),
            sampler.cpus(),
        );
        self.look_with(Some(left))
    }
}

/// When the flush thread looks (`None` where it is taken: never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// How long without a flush of new rows before the node counts as at rest.
    pub idle: Duration,
    /// Rows written since the last look before another (a look reads every page).
    pub min_rows: u64,
    /// Bytes the copy must give back at least (a small file is never worth one).
    pub min_slack: u64,
    /// Whether the measure and the copy wait while the CPU is busy (the copy's pace); off
    /// where a test needs the copy done on a machine that other tests keep busy.
    pub wait_for_idle_cpu: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            idle: Duration::from_secs(10),
            min_rows: 65_536,
            min_slack: 64 << 20,
            wait_for_idle_cpu: true,
        }
    }
}

/// The trees' pages and the bytes they hold, when a rewrite is worth it (it would give back
/// `min_slack` bytes or more): (pages, held).
pub(super) fn worth_it(db: &Database, min_slack: u64) -> Result<Option<(u64, u64)>, BoxError> {
    let stats = super::compact::stats(db)?;
    let page = stats.page_size() as u64;
    let pages = (stats.leaf_pages() + stats.branch_pages()) * page;
    let held = stats.stored_bytes() + stats.metadata_bytes();
    let worth = pages as f64 > held as f64 * SLACK_FACTOR && pages - held >= min_slack;
    Ok(worth.then_some((pages, held)))
}

/// Whether the filesystem holding `path` has room for a packed copy of `held` bytes, and as
/// much again to spare.
pub(super) fn room_for_copy(path: &Path, held: u64) -> std::io::Result<bool> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let free = crate::durable::space(dir)?.free;
    Ok(free / 2 >= held)
}

/// Every table `create_tables` makes, by name: a table the copy does not know would be lost.
fn copied() -> [&'static str; 6] {
    [
        COOKIES.name(),
        BY_CREATED.name(),
        KEYS.name(),
        KEYS_BY_EXPIRY.name(),
        IDENTITY.name(),
        META.name(),
    ]
}

/// Copy every table `from` sees into the empty database `to`, in key order, so that redb
/// appends and packs each leaf. The last commit, of `sm_meta`, is durable (until the file is
/// renamed into place nothing reads it, and a crash leaves it to be removed). Every
/// [`LOOK_EVERY`] rows it asks `look`: it waits [`PAUSE`] and asks again while told to
/// wait, and returns `false` once told to give up (the transaction under way is dropped,
/// not committed).
pub(super) fn copy(
    from: &ReadTransaction,
    to: &Database,
    look: &mut dyn FnMut() -> Look,
) -> Result<bool, BoxError> {
    for t in from.list_tables()? {
        if !copied().contains(&t.name()) {
            return Err(
                format!("sm.redb has a table the repack does not know: {}", t.name()).into(),
            );
        }
    }
    let mut copy = Copy { from, to, look };
    Ok(copy.table(COOKIES, false)?
        && copy.table(BY_CREATED, false)?
        && copy.table(KEYS, false)?
        && copy.table(KEYS_BY_EXPIRY, false)?
        && copy.table(IDENTITY, false)?
        && copy.table(META, true)?)
}

/// One copy from a read transaction into a new database.
struct Copy<'a> {
    from: &'a ReadTransaction,
    to: &'a Database,
    look: &'a mut dyn FnMut() -> Look,
}

/// Ask `look`, waiting [`PAUSE`] while it says wait: whether to go on.
pub(super) fn go_on(look: &mut dyn FnMut() -> Look) -> bool {
    loop {
        match look() {
            Look::Go => return true,
            Look::GiveUp => return false,
            Look::Wait => std::thread::sleep(PAUSE),
        }
    }
}

impl Copy<'_> {
    /// Copy `table` in transactions of [`BATCH`] rows, the last one durable if
    /// `durable_last`. `false` when `look` said to give up.
    fn table<K: Key + 'static, V: Value + 'static>(
        &mut self,
        table: TableDefinition<K, V>,
        durable_last: bool,
    ) -> Result<bool, BoxError> {
        let source = self.from.open_table(table)?;
        let mut rows = source.iter()?;
        loop {
            let mut txn = self.to.begin_write()?;
            let mut done = false;
            {
                let mut target = txn.open_table(table)?;
                for n in 1..=BATCH {
                    let Some(row) = rows.next() else {
                        done = true;
                        break;
                    };
                    let (k, v) = row?;
                    target.insert(k.value(), v.value())?;
                    if n % LOOK_EVERY == 0 && !go_on(self.look) {
                        // Dropped uncommitted: redb aborts it.
                        return Ok(false);
                    }
                }
            }
            if !(done && durable_last) {
                txn.set_durability(Durability::None)?;
            }
            txn.commit()?;
            if done {
                return Ok(true);
            }
        }
    }
}

/// A database of `n` records of 200 bytes under random ids and their list index, written in
/// small batches as flushes write a load of creates.
#[cfg(test)]
pub(super) fn filled(path: &std::path::Path, n: u64) -> Database {
    use super::tables::{create_tables, order_key};
    let db = crate::create_db(path, 4 << 20).unwrap();
    create_tables(&db).unwrap();
    let value = vec![b'x'; 200];
    let mut ids: Vec<u64> = (0..n)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect();
    for chunk in ids.chunks_mut(500) {
        chunk.sort_unstable();
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(Durability::None).unwrap();
        {
            let mut t = txn.open_table(COOKIES).unwrap();
            let mut o = txn.open_table(BY_CREATED).unwrap();
            for (n, id) in chunk.iter().enumerate() {
                let id = format!("cookie:{id:x}");
                t.insert(id.as_str(), value.as_slice()).unwrap();
                o.insert((order_key(n as i64), id.as_str()), ()).unwrap();
            }
            txn.open_table(META)
                .unwrap()
                .insert("k", b"v".as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    db.begin_write().unwrap().commit().unwrap();
    db
}

#[cfg(test)]
mod tests {
    use redb::{ReadableDatabase, ReadableTableMetadata};

    use super::*;
    use crate::sm::tables::create_tables;

    /// An empty database with every table, to copy into.
    fn target(path: &std::path::Path) -> Database {
        let to = crate::create_db(path, 4 << 20).unwrap();
        create_tables(&to).unwrap();
        to
    }

    #[test]
    fn a_copy_holds_every_row_in_fewer_pages_and_a_packed_file_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = filled(&dir.path().join("a.redb"), 100_000);
        let (pages, held) = worth_it(&db, 1 << 20)
            .unwrap()
            .expect("randomly inserted trees are worth it");
        let packed = target(&dir.path().join("b.redb"));
        let from = db.begin_read().unwrap();
        assert!(copy(&from, &packed, &mut || Look::Go).unwrap());
        // Every row of every table, the same.
        let to = packed.begin_read().unwrap();
        let (a, b) = (
            from.open_table(COOKIES).unwrap(),
            to.open_table(COOKIES).unwrap(),
        );
        assert_eq!(a.len().unwrap(), 100_000);
        assert_eq!(b.len().unwrap(), 100_000);
        for (x, y) in a.iter().unwrap().zip(b.iter().unwrap()) {
            let (x, y) = (x.unwrap(), y.unwrap());
            assert_eq!((x.0.value(), x.1.value()), (y.0.value(), y.1.value()));
        }
        let (a, b) = (
            from.open_table(BY_CREATED).unwrap(),
            to.open_table(BY_CREATED).unwrap(),
        );
        assert_eq!(a.len().unwrap(), b.len().unwrap());
        for (x, y) in a.iter().unwrap().zip(b.iter().unwrap()) {
            assert_eq!(x.unwrap().0.value(), y.unwrap().0.value());
        }
        assert_eq!(
            to.open_table(META)
                .unwrap()
                .get("k")
                .unwrap()
                .unwrap()
                .value(),
            b"v"
        );
        drop(to);
        // In far fewer pages, and not worth another copy.
        let stats = crate::sm::compact::stats(&packed).unwrap();
        let after = (stats.leaf_pages() + stats.branch_pages()) * stats.page_size() as u64;
        assert!(
            after * 10 < pages * 8,
            "{pages} -> {after} bytes of pages, {held} held"
        );
        assert_eq!(worth_it(&packed, 1 << 20).unwrap(), None);
    }

    #[test]
    fn a_copy_waits_while_told_to_and_then_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let db = filled(&dir.path().join("a.redb"), 5_000);
        let to = target(&dir.path().join("b.redb"));
        let from = db.begin_read().unwrap();
        let mut looks = 0;
        let started = Instant::now();
        assert!(copy(&from, &to, &mut || {
            looks += 1;
            if looks <= 3 {
                Look::Wait
            } else {
                Look::Go
            }
        })
        .unwrap());
        assert!(started.elapsed() >= PAUSE * 3, "{:?}", started.elapsed());
        let copied = to.begin_read().unwrap();
        assert_eq!(copied.open_table(COOKIES).unwrap().len().unwrap(), 5_000);
    }

    #[test]
    fn the_pace_waits_while_the_cpu_is_busy_and_not_for_ever() {
        let mut pace = Pace::new(None);
        // No reading of the CPU: never a wait.
        assert_eq!(pace.look(Instant::now()), Look::Go);
        assert_eq!(pace.look_with(Some(0.05)), Look::Wait);
        // Between samples the last one holds.
        assert_eq!(pace.look_with(None), Look::Wait);
        assert_eq!(pace.look_with(Some(0.6)), Look::Go);
        assert_eq!(pace.look_with(None), Look::Go);
        // Busy for good: waits until MAX_WAIT in all, then gives up.
        let mut waits = 2;
        while pace.look_with(Some(0.0)) == Look::Wait {
            waits += 1;
        }
        assert_eq!(
            waits as u32,
            MAX_WAIT.as_millis() as u32 / PAUSE.as_millis() as u32
        );
        assert_eq!(pace.look_with(None), Look::GiveUp);
    }

    #[test]
    fn the_copys_own_cpu_is_left_to_it() {
        let second = Duration::from_secs(1);
        // Alone on one CPU: nothing idle, all of it the copy's.
        assert!(left_to_the_copy(0.0, second, second, 1.0) >= MIN_LEFT);
        // Requests take it all and the copy waited.
        assert!(left_to_the_copy(0.0, Duration::ZERO, second, 1.0) < MIN_LEFT);
        // The copy got a tenth of one of two CPUs beside busy requests: 5% is not enough.
        let tenth = Duration::from_millis(100);
        assert!(left_to_the_copy(0.0, tenth, second, 2.0) < MIN_LEFT);
        // Half of two CPUs idle beside a copy on the other.
        assert_eq!(left_to_the_copy(0.5, second, second, 2.0), 1.0);
        // A sample of no length reads as no use rather than a division by zero.
        assert!(left_to_the_copy(0.1, Duration::ZERO, Duration::ZERO, 1.0).is_finite());
    }

    #[test]
    fn a_thread_reads_its_own_cpu_time() {
        let before = thread_cpu();
        let started = Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(thread_cpu() > before, "{x}");
    }

    #[test]
    fn room_is_the_free_disk_halved() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sm.redb");
        assert!(room_for_copy(&path, 1).unwrap());
        assert!(!room_for_copy(&path, u64::MAX / 2).unwrap());
    }

    #[test]
    fn a_copy_gives_up_when_asked_and_refuses_a_table_it_does_not_know() {
        let dir = tempfile::tempdir().unwrap();
        let db = filled(&dir.path().join("a.redb"), 50_000);
        let to = target(&dir.path().join("b.redb"));
        let mut asked = 0;
        let from = db.begin_read().unwrap();
        assert!(!copy(&from, &to, &mut || {
            asked += 1;
            Look::GiveUp
        })
        .unwrap());
        assert_eq!(asked, 1);
        // Asked after a thousand rows, in the first transaction, which is dropped: a copy
        // that asked only between transactions had committed 20,000 rows by then.
        let copied = to.begin_read().unwrap();
        assert_eq!(copied.open_table(COOKIES).unwrap().len().unwrap(), 0);
        drop(copied);
        drop(from);
        let txn = db.begin_write().unwrap();
        txn.open_table(TableDefinition::<u64, u64>::new("new_table"))
            .unwrap()
            .insert(1, 1)
            .unwrap();
        txn.commit().unwrap();
        let from = db.begin_read().unwrap();
        let err = copy(&from, &to, &mut || Look::Go).unwrap_err();
        assert!(err.to_string().contains("new_table"), "{err}");
    }
}
