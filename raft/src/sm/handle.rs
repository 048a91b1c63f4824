//! [`Db`]: the state machine's database, replaceable as a whole.
//!
//! Installing a snapshot replaces every record. Done inside `sm.redb`, the old state's pages
//! and the new one's coexisted in one transaction (copy-on-write), and a file never gives
//! space back: a follower that had installed two snapshots held a file over twice its data
//! (docs/benchmarks.md, Footprint). So an install writes the new state into a new file,
//! `sm.redb.installing`, makes it durable, renames it over `sm.redb`, and makes it current
//! here; as etcd installs a snapshot by renaming the database file it received. Readers
//! that began on the old file finish on it (it is unlinked, its space returned when the last
//! of them lets go); every later read gets the new one. A crash before the rename leaves the
//! old state and a leftover file that the next start removes.
//!
//! A node at rest also replaces the file with a packed copy of itself (`repack`), the same
//! way. Both take [`Db::exclusive`], as does every writer of the file other than the flush
//! thread (which is the one that repacks): a copy must not miss a write, and a write must not
//! land in a file that a copy has replaced.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, TryLockError};

use redb::{Database, ReadTransaction, ReadableDatabase};

use super::ids::Ids;
use super::layer::Layer;
use crate::BoxError;

/// The state machine's database, shared by `apply`, snapshot builds and readers.
#[derive(Clone)]
pub(crate) struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    current: RwLock<Current>,
    /// Held to replace the file, and by writers of it other than the flush thread.
    exclusive: Mutex<()>,
    /// Threads waiting for `exclusive`: a repack gives way to them.
    waiting: AtomicUsize,
    /// `sm.redb`.
    path: PathBuf,
    /// The page cache of each database opened here.
    cache_bytes: usize,
}

/// The state machine's state: the database and the applied changes not yet written to it
/// (`overlay`). One lock, so a reader sees the layers and opens its transaction on the same
/// state, and an install replaces the file and drops the layers in one step.
pub(super) struct Current {
    pub db: Arc<Database>,
    /// The layer `apply` adds to.
    pub active: Arc<Layer>,
    /// The layer being written to `db`, if any: older than `active`, newer than `db`.
    pub frozen: Option<Arc<Layer>>,
    /// A read transaction on `db` as of its last write, shared by every read: redb's
    /// `begin_read` waits while a durable commit holds its header lock (milliseconds, for
    /// each flush), so reads and `apply` never call it; the flush that commits opens the next.
    pub txn: Arc<ReadTransaction>,
    /// Which ids `db` may hold (`ids`), built by the flush thread; `None` until it has been,
    /// and after an install: then every question goes to `db`.
    pub ids: Option<Arc<Ids>>,
}

impl Current {
    /// The state `db` holds, nothing above it yet: the active layer counts the flushes on from
    /// the count the file keeps (its last flush's, or the install's that wrote it).
    fn new(db: Arc<Database>) -> Result<Self, BoxError> {
        Ok(Current {
            txn: Arc::new(db.begin_read()?),
            active: Arc::new(Layer::counted_from(super::tables::flush_count(&db))),
            db,
            frozen: None,
            ids: None,
        })
    }
}

/// Where a replacement is written before it is renamed into place.
pub(super) fn installing_path(path: &Path) -> PathBuf {
    path.with_extension("redb.installing")
}

impl Db {
    pub(super) fn new(db: Database, path: &Path, cache_bytes: usize) -> Result<Self, BoxError> {
        Ok(Db {
            inner: Arc::new(Inner {
                current: RwLock::new(Current::new(Arc::new(db))?),
                exclusive: Mutex::new(()),
                waiting: AtomicUsize::new(0),
                path: path.to_owned(),
                cache_bytes,
            }),
        })
    }

    /// Where the file is.
    pub(super) fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The current database. A caller keeps what it got for the whole of one operation, so
    /// the operation reads one file, whatever replaces it meanwhile. The database alone: what
    /// has been written to it, without the layers above it (`overlay`).
    pub(crate) fn get(&self) -> Arc<Database> {
        self.read(|c| c.db.clone())
    }

    /// Look at the current state under its lock: keep it short, `apply` waits for it.
    pub(super) fn read<T>(&self, f: impl FnOnce(&Current) -> T) -> T {
        f(&self.inner.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub(super) fn write<T>(&self, f: impl FnOnce(&mut Current) -> T) -> T {
        f(&mut self
            .inner
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()))
    }

    /// Held by a writer of the file other than the flush thread (a snapshot's pointer), from
    /// before it takes the database to after its commit; and by every replacement.
    pub(super) fn exclusive(&self) -> MutexGuard<'_, ()> {
        let lock = &self.inner.exclusive;
        match lock.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => {
                self.inner.waiting.fetch_add(1, Ordering::SeqCst);
                let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                self.inner.waiting.fetch_sub(1, Ordering::SeqCst);
                guard
            }
        }
    }

    /// Whether a thread waits for [`Db::exclusive`]: a repack holding it gives up, so that a
    /// snapshot's pointer or an install (and whoever waits on them) is not held for the
    /// seconds of a copy.
    pub(super) fn exclusive_wanted(&self) -> bool {
        self.inner.waiting.load(Ordering::SeqCst) > 0
    }

    /// Replace the database with one `fill` writes (the tables already created; its last
    /// commit must be durable): written beside the current file, renamed over it, then
    /// made current.
    pub(super) fn replace<T>(
        &self,
        fill: impl FnOnce(&Database) -> Result<T, BoxError>,
    ) -> Result<T, BoxError> {
        let _exclusive = self.exclusive();
        let (db, out) = self
            .write_beside(|db| fill(db).map(Some))?
            .ok_or("a replacement's fill gave up")?;
        // The new state replaces the old one whole: the layers belonged to the old file.
        let next = Current::new(Arc::new(db))?;
        let old = self.write(|c| std::mem::replace(c, next));
        // Dropped outside the lock: closing a database (its last handle) writes and syncs.
        drop(old);
        Ok(out)
    }

    /// Replace the database with a copy of itself that `copy` writes from a read transaction
    /// of it into a new one (the tables already created; its last commit must be durable).
    /// The same state in another file: the layers above it and the filter of its ids stay.
    /// Returns `false`, and replaces nothing, when `copy` gives up. Called by the flush
    /// thread, the only writer that does not take [`Db::exclusive`], between its flushes:
    /// nothing writes the file while it is copied.
    pub(super) fn rewrite(
        &self,
        copy: impl FnOnce(&ReadTransaction, &Database) -> Result<bool, BoxError>,
    ) -> Result<bool, BoxError> {
        let _exclusive = self.exclusive();
        let old = self.get();
        let from = old.begin_read()?;
        let copied = self.write_beside(|new| Ok(copy(&from, new)?.then_some(())))?;
        let Some((db, ())) = copied else {
            return Ok(false);
        };
        let db = Arc::new(db);
        let txn = Arc::new(db.begin_read()?);
        // `old`, still held here, keeps the old database from closing under the lock.
        self.write(|c| {
            c.db = db;
            c.txn = txn;
        });
        Ok(true)
    }

    /// A new database written by `fill` beside the file and renamed over it; `None` when
    /// `fill` gives up (returns `None`). A `fill` that fails or gives up leaves the file as it
    /// was, and no other behind it.
    fn write_beside<T>(
        &self,
        fill: impl FnOnce(&Database) -> Result<Option<T>, BoxError>,
    ) -> Result<Option<(Database, T)>, BoxError> {
        let next = installing_path(&self.inner.path);
        crate::durable::remove_if_present(&next)?;
        let db = crate::create_db(&next, self.inner.cache_bytes)?;
        let filled = super::tables::create_tables(&db).and_then(|()| fill(&db));
        let out = match filled {
            Ok(Some(out)) => out,
            failed_or_gave_up => {
                drop(db);
                crate::durable::remove_if_present(&next)?;
                return failed_or_gave_up.map(|_| None);
            }
        };
        std::fs::rename(&next, &self.inner.path)?;
        if let Some(dir) = self.inner.path.parent() {
            crate::durable::sync_dir(dir)?;
        }
        Ok(Some((db, out)))
    }
}

#[cfg(test)]
mod tests {
    use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};

    use super::*;

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");

    /// The holder of the file sees when another thread waits for it (a repack then gives
    /// way), and stops seeing it once that thread has it.
    #[test]
    fn the_holder_sees_a_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sm.redb");
        let db = Db::new(crate::create_db(&path, 1 << 20).unwrap(), &path, 1 << 20).unwrap();
        let held = db.exclusive();
        assert!(!db.exclusive_wanted());
        let waiter = std::thread::spawn({
            let db = db.clone();
            move || drop(db.exclusive())
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !db.exclusive_wanted() {
            assert!(
                std::time::Instant::now() < deadline,
                "the waiter was never seen"
            );
            std::thread::yield_now();
        }
        drop(held);
        waiter.join().unwrap();
        assert!(!db.exclusive_wanted());
    }

    #[test]
    fn a_replacement_takes_the_files_place_and_old_readers_finish_on_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sm.redb");
        let first = crate::create_db(&path, 1 << 20).unwrap();
        let txn = first.begin_write().unwrap();
        txn.open_table(T).unwrap().insert(1, 1).unwrap();
        txn.commit().unwrap();
        let db = Db::new(first, &path, 1 << 20).unwrap();

        let old = db.get();
        let reading = old.begin_read().unwrap();
        // A fill that fails replaces nothing.
        db.replace(|new| -> Result<(), BoxError> {
            let txn = new.begin_write()?;
            txn.open_table(T)?.insert(2, 2)?;
            txn.commit()?;
            Err("the snapshot ended early".into())
        })
        .unwrap_err();
        assert_eq!(
            db.get()
                .begin_read()
                .unwrap()
                .open_table(T)
                .unwrap()
                .len()
                .unwrap(),
            1
        );

        db.replace(|new| {
            let txn = new.begin_write()?;
            {
                let mut t = txn.open_table(T)?;
                t.insert(2, 2)?;
                t.insert(3, 3)?;
            }
            txn.commit()?;
            Ok(())
        })
        .unwrap();
        // The reader that began before still sees the old state.
        assert_eq!(reading.open_table(T).unwrap().len().unwrap(), 1);
        let now = db.get();
        let t = now.begin_read().unwrap().open_table(T).unwrap();
        assert_eq!(t.len().unwrap(), 2);
        assert!(!installing_path(&path).exists());
        drop((reading, old, t, now, db));
        // The file on disk is the new state.
        let reopened = crate::create_db(&path, 1 << 20).unwrap();
        let t = reopened.begin_read().unwrap().open_table(T).unwrap();
        assert_eq!(t.len().unwrap(), 2);
    }
}
