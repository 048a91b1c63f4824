//! Compacting `sm.redb` when it opens, if its file has grown far beyond its live data.
//!
//! redb reuses freed pages but never gives the file back on its own: a store that once held
//! more (a burst of writes later deleted, a snapshot installed over a larger state, pages
//! freed by non-durable commits that could not be reused until a durable one) keeps a file
//! sized for its past. Compaction needs the database to itself (no reader, no writer), which
//! only start-up gives: once open, readers hold it at all times. So it runs there, and only
//! when the file is more than [`SLACK_FACTOR`] times what its pages hold, so a normal start
//! does not pay for it.

use std::path::Path;
use std::time::Instant;

use redb::Database;

use crate::BoxError;

/// Compact when the file is more than this many times its live bytes...
const SLACK_FACTOR: u64 = 2;
/// ...and more than this much larger than them (a small file is never worth the wait).
const MIN_SLACK: u64 = 64 << 20;

/// redb's storage stats of `db` (a walk of every page; takes the writer while it runs).
pub(super) fn stats(db: &Database) -> Result<redb::DatabaseStats, BoxError> {
    let txn = db.begin_write()?;
    let stats = txn.stats()?;
    txn.abort()?;
    Ok(stats)
}

/// What compaction would reclaim, if it is worth doing: (file bytes, live bytes).
fn worth_compacting(db: &Database, path: &Path) -> Result<Option<(u64, u64)>, BoxError> {
    let file = std::fs::metadata(path)?.len();
    if file < MIN_SLACK {
        return Ok(None);
    }
    let stats = stats(db)?;
    let live = stats.allocated_pages() * stats.page_size() as u64;
    let worth = file > live.saturating_mul(SLACK_FACTOR) && file - live > MIN_SLACK;
    Ok(worth.then_some((file, live)))
}

/// Compact `db` (at `path`) if its file has grown far beyond its live pages. Before any
/// other handle to it exists.
pub(super) fn if_bloated(db: &mut Database, path: &Path) -> Result<(), BoxError> {
    let Some((file, live)) = worth_compacting(db, path)? else {
        return Ok(());
    };
    let started = Instant::now();
    tracing::info!(
        file_mb = file >> 20,
        live_mb = live >> 20,
        "compacting sm.redb (its file is over {SLACK_FACTOR}x its live pages)"
    );
    while db.compact()? {}
    tracing::info!(
        file_mb = std::fs::metadata(path)?.len() >> 20,
        ms = started.elapsed().as_millis() as u64,
        "compacted sm.redb"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};

    use super::*;

    const T: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

    #[test]
    fn a_file_far_larger_than_its_data_is_compacted_and_a_lean_one_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sm.redb");
        let mut db = crate::create_db(&path, 4 << 20).unwrap();
        let value = vec![7u8; 4096];
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(T).unwrap();
            for i in 0..40_000u64 {
                t.insert(i, value.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
        // Lean: nothing to do.
        assert_eq!(worth_compacting(&db, &path).unwrap(), None);
        let txn = db.begin_write().unwrap();
        txn.open_table(T)
            .unwrap()
            .retain(|k, _| k % 100 == 0)
            .unwrap();
        txn.commit().unwrap();
        // A second durable commit lets redb reuse (and count as free) what the first freed.
        db.begin_write().unwrap().commit().unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        assert!(worth_compacting(&db, &path).unwrap().is_some(), "{before}");
        if_bloated(&mut db, &path).unwrap();
        let after = std::fs::metadata(&path).unwrap().len();
        assert!(after * 4 < before, "{before} -> {after}");
        assert_eq!(
            db.begin_read()
                .unwrap()
                .open_table(T)
                .unwrap()
                .len()
                .unwrap(),
            400
        );
    }
}
