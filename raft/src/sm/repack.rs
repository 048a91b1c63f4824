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
//! Why only at rest: a packed leaf splits on its next insert, so under load the tree returns
//! to three quarters full within one pass of writes over it, and the copy would cost a
//! read and a write of the whole state for nothing. The file written meanwhile needs as much
//! disk again as the packed state, for the seconds the copy takes: a copy starts only with
//! twice that free ([`room_for_copy`]), so that it never takes the disk the log needs.

use std::path::Path;
use std::time::Duration;

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

/// When the flush thread looks (`None` where it is taken: never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// How long without a flush of new rows before the node counts as at rest.
    pub idle: Duration,
    /// Rows written since the last look before another (a look reads every page).
    pub min_rows: u64,
    /// Bytes the copy must give back at least (a small file is never worth one).
    pub min_slack: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            idle: Duration::from_secs(10),
            min_rows: 65_536,
            min_slack: 64 << 20,
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
/// renamed into place nothing reads it, and a crash leaves it to be removed). Returns `false`
/// as soon as `keep_going` does (asked between transactions).
pub(super) fn copy(
    from: &ReadTransaction,
    to: &Database,
    keep_going: &mut dyn FnMut() -> bool,
) -> Result<bool, BoxError> {
    for t in from.list_tables()? {
        if !copied().contains(&t.name()) {
            return Err(
                format!("sm.redb has a table the repack does not know: {}", t.name()).into(),
            );
        }
    }
    let mut copy = Copy {
        from,
        to,
        keep_going,
    };
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
    keep_going: &'a mut dyn FnMut() -> bool,
}

impl Copy<'_> {
    /// Copy `table` in transactions of [`BATCH`] rows, the last one durable if
    /// `durable_last`. `false` when `keep_going` said to stop.
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
                for _ in 0..BATCH {
                    let Some(row) = rows.next() else {
                        done = true;
                        break;
                    };
                    let (k, v) = row?;
                    target.insert(k.value(), v.value())?;
                }
            }
            if !(done && durable_last) {
                txn.set_durability(Durability::None)?;
            }
            txn.commit()?;
            if done {
                return Ok(true);
            }
            if !(self.keep_going)() {
                return Ok(false);
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

    #[test]
    fn a_copy_holds_every_row_in_fewer_pages_and_a_packed_file_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = filled(&dir.path().join("a.redb"), 100_000);
        let (pages, held) = worth_it(&db, 1 << 20)
            .unwrap()
            .expect("randomly inserted trees are worth it");
        let copy_path = dir.path().join("b.redb");
        let packed = crate::create_db(&copy_path, 4 << 20).unwrap();
        create_tables(&packed).unwrap();
        let from = db.begin_read().unwrap();
        assert!(copy(&from, &packed, &mut || true).unwrap());
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
        let to = crate::create_db(&dir.path().join("b.redb"), 4 << 20).unwrap();
        let mut asked = 0;
        let from = db.begin_read().unwrap();
        assert!(!copy(&from, &to, &mut || {
            asked += 1;
            false
        })
        .unwrap());
        assert_eq!(asked, 1);
        drop(from);
        let txn = db.begin_write().unwrap();
        txn.open_table(TableDefinition::<u64, u64>::new("new_table"))
            .unwrap()
            .insert(1, 1)
            .unwrap();
        txn.commit().unwrap();
        let from = db.begin_read().unwrap();
        let err = copy(&from, &to, &mut || true).unwrap_err();
        assert!(err.to_string().contains("new_table"), "{err}");
    }
}
