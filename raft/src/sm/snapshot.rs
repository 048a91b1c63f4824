//! Snapshots of the state machine: building one ([`SnapshotBuilder`]), installing one sent by
//! a leader, reading the current one, and the format of their data.
//!
//! A snapshot's data is every stored row, verbatim ([`SnapshotRows`], bincode), kept in a file
//! of its own ([`super::files`]); `sm_meta` holds only a pointer to it ([`SnapshotPointer`]),
//! and the pointer is what makes a snapshot current. Earlier versions kept the whole snapshot
//! in `sm_meta`; [`recover`] moves such a one into a file at open.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::Snapshot;
use openraft::{LogId, RaftSnapshotBuilder, StorageIOError};
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::files::SnapshotFiles;
use super::state::{SnapshotCounts, StateMachine};
use super::tables::{
    order_key, put_meta, read_meta, Membership, Meta, BY_CREATED, COOKIES, KEY_APPLIED,
    KEY_MEMBERSHIP, KEY_SNAPSHOT_FILE, KEY_SNAPSHOT_LEGACY, META,
};
use crate::codec;
use crate::record::Record;
use crate::types::{NodeId, TypeConfig};
use crate::{BoxError, StResult};

/// What a snapshot's bytes hold: every stored row, verbatim.
#[derive(Serialize, Deserialize)]
struct SnapshotRows {
    rows: Vec<(String, Vec<u8>)>,
}

/// A whole snapshot as earlier versions kept it in `sm_meta`.
#[derive(Serialize, Deserialize)]
struct LegacySnapshot {
    meta: Meta,
    data: Vec<u8>,
}

/// The current snapshot as kept in `sm_meta`: the data is in `snapshots/<file>`
/// ([`super::files`]).
#[derive(Serialize, Deserialize)]
struct SnapshotPointer {
    meta: Meta,
    file: String,
    len: u64,
}

/// At open: move a legacy snapshot into a file, then remove the files no pointer names (a
/// crash came between writing one and committing it).
pub(super) fn recover(db: &Database, files: &SnapshotFiles) -> Result<(), BoxError> {
    migrate_legacy_snapshot(db, files)?;
    let current = read_meta::<SnapshotPointer>(db, KEY_SNAPSHOT_FILE)?.map(|p| p.file);
    files.remove_others(current.as_deref())?;
    Ok(())
}

/// Move a snapshot kept whole in `sm_meta` (earlier versions) into a file.
fn migrate_legacy_snapshot(db: &Database, files: &SnapshotFiles) -> Result<(), BoxError> {
    let Some(old) = read_meta::<LegacySnapshot>(db, KEY_SNAPSHOT_LEGACY)? else {
        return Ok(());
    };
    let file = SnapshotFiles::name_for(&old.meta.snapshot_id);
    files.write(&file, &old.data)?;
    let txn = db.begin_write()?;
    put_meta(
        &txn,
        KEY_SNAPSHOT_FILE,
        &SnapshotPointer {
            meta: old.meta,
            file,
            len: old.data.len() as u64,
        },
    )?;
    txn.open_table(META)?.remove(KEY_SNAPSHOT_LEGACY)?;
    txn.commit()?;
    Ok(())
}

impl StateMachine {
    pub(super) fn snapshot_builder(&self) -> SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            snapshots: self.snapshots.clone(),
            files: self.files.clone(),
        }
    }

    /// openraft's `install_snapshot`: replace every record with the snapshot's rows and make
    /// it the current snapshot, in one durable transaction.
    pub(super) async fn install(&mut self, meta: &Meta, data: Vec<u8>) -> StResult<()> {
        let sig = Some(meta.signature());
        let rows: SnapshotRows =
            codec::decode(&data).map_err(|e| StorageIOError::read_snapshot(sig.clone(), &e))?;
        let meta = meta.clone();
        let db = self.db.clone();
        let files = self.files.clone();
        let applied = meta.last_log_id.map_or(0, |l| l.index);
        tokio::task::spawn_blocking(move || -> Result<(), BoxError> {
            let file = SnapshotFiles::name_for(&meta.snapshot_id);
            files.write(&file, &data)?;
            let _switch = files.switch();
            let txn = db.begin_write()?;
            {
                // Replace, never merge: a row absent from the snapshot was deleted.
                let mut table = txn.open_table(COOKIES)?;
                let mut order = txn.open_table(BY_CREATED)?;
                table.retain(|_, _| false)?;
                order.retain(|_, _| false)?;
                // Rows arrive in id order (a table scan), so the records go in as appends;
                // the index is sorted first for the same reason (random-order inserts into
                // a B-tree touch a different page each time). Values are stored verbatim.
                let mut index = Vec::with_capacity(rows.rows.len());
                for (id, value) in &rows.rows {
                    let created = Record::decode(value)
                        .ok_or("corrupt record in the snapshot")?
                        .created;
                    table.insert(id.as_str(), value.as_slice())?;
                    index.push((order_key(created), id.as_str()));
                }
                index.sort_unstable();
                for key in index {
                    order.insert(key, ())?;
                }
            }
            put_meta(&txn, KEY_APPLIED, &meta.last_log_id)?;
            put_meta(&txn, KEY_MEMBERSHIP, &meta.last_membership)?;
            let len = data.len() as u64;
            put_meta(
                &txn,
                KEY_SNAPSHOT_FILE,
                &SnapshotPointer {
                    meta,
                    file: file.clone(),
                    len,
                },
            )?;
            txn.commit()?;
            files.remove_others(Some(&file))?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?
        .map_err(|e| StorageIOError::write_snapshot(sig, &crate::io_err(e)))?;
        self.cache.invalidate_all();
        self.applied.store(applied, Ordering::SeqCst);
        self.last_durable = applied;
        self.snapshots.installed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// openraft's `get_current_snapshot`: the one the pointer names, read from its file.
    pub(super) async fn current_snapshot(&self) -> StResult<Option<Snapshot<TypeConfig>>> {
        let db = self.db.clone();
        let files = self.files.clone();
        let current = tokio::task::spawn_blocking(move || -> Result<_, BoxError> {
            // Under the switch lock, so the file named is not replaced while it is read.
            let _switch = files.switch();
            let Some(p) = read_meta::<SnapshotPointer>(&db, KEY_SNAPSHOT_FILE)? else {
                return Ok(None);
            };
            let data = files.read(&p.file, p.len)?;
            Ok(Some((p.meta, data)))
        })
        .await
        .map_err(|e| StorageIOError::read_snapshot(None, &e))?
        .map_err(|e| StorageIOError::read_snapshot(None, &crate::io_err(e)))?;
        Ok(current.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// Builds snapshots from a consistent read transaction while `apply` goes on.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    snapshots: Arc<SnapshotCounts>,
    files: Arc<SnapshotFiles>,
}

/// Makes snapshot ids unique within a process even when two builds share a microsecond.
static SNAPSHOT_SEQ: AtomicU64 = AtomicU64::new(0);

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StResult<Snapshot<TypeConfig>> {
        let db = self.db.clone();
        let files = self.files.clone();
        let built = tokio::task::spawn_blocking(move || -> Result<(Meta, Vec<u8>), BoxError> {
            // One read transaction: rows, last_applied and membership from the same instant.
            let (meta, data) = {
                let txn = db.begin_read()?;
                let meta_t = txn.open_table(META)?;
                let decode_meta = |key: &str| -> Result<Option<Vec<u8>>, BoxError> {
                    Ok(meta_t.get(key)?.map(|v| v.value().to_vec()))
                };
                let last_log_id: Option<LogId<NodeId>> = match decode_meta(KEY_APPLIED)? {
                    Some(b) => codec::decode(&b)?,
                    None => None,
                };
                let last_membership: Membership = match decode_meta(KEY_MEMBERSHIP)? {
                    Some(b) => codec::decode(&b)?,
                    None => Membership::default(),
                };
                let table = txn.open_table(COOKIES)?;
                let mut rows = Vec::new();
                for row in table.iter()? {
                    let (k, v) = row?;
                    rows.push((k.value().to_owned(), v.value().to_vec()));
                }
                let data = codec::encode(&SnapshotRows { rows })?;
                let micros = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros());
                let seq = SNAPSHOT_SEQ.fetch_add(1, Ordering::Relaxed);
                let snapshot_id = format!(
                    "{}-{}-{micros}-{seq}",
                    last_log_id.map_or(0, |l| l.leader_id.term),
                    last_log_id.map_or(0, |l| l.index)
                );
                (
                    Meta {
                        last_log_id,
                        last_membership,
                        snapshot_id,
                    },
                    data,
                )
            };
            // The data goes to its own file with no lock held; only the pointer to it
            // takes redb's write lock, briefly (see [`super::files`]).
            let file = SnapshotFiles::name_for(&meta.snapshot_id);
            files.write(&file, &data)?;
            let _switch = files.switch();
            let current = read_meta::<SnapshotPointer>(&db, KEY_SNAPSHOT_FILE)?;
            if let Some(c) = current.filter(|c| c.meta.last_log_id > meta.last_log_id) {
                // An installed snapshot overtook this build: keep the newer one current.
                if c.file != file {
                    files.remove(&file)?;
                }
                return Ok((meta, data));
            }
            let txn = db.begin_write()?;
            let len = data.len() as u64;
            let pointer = SnapshotPointer {
                meta: meta.clone(),
                file: file.clone(),
                len,
            };
            put_meta(&txn, KEY_SNAPSHOT_FILE, &pointer)?;
            txn.commit()?;
            files.remove_others(Some(&file))?;
            Ok((meta, data))
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, &e))?
        .map_err(|e| StorageIOError::write_snapshot(None, &crate::io_err(e)))?;
        self.snapshots.built.fetch_add(1, Ordering::Relaxed);
        Ok(Snapshot {
            meta: built.0,
            snapshot: Box::new(Cursor::new(built.1)),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use openraft::storage::RaftStateMachine;

    use super::*;
    use crate::cache::Cache;

    fn open(dir: &Path) -> StateMachine {
        StateMachine::open(dir, Arc::new(Cache::new(Default::default()))).unwrap()
    }

    fn snapshot_files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn a_built_snapshot_survives_a_restart_and_only_it_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let first = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let second = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_ne!(first.meta.snapshot_id, second.meta.snapshot_id);
        // A file left by a crash between writing and committing its pointer.
        std::fs::write(dir.path().join("snapshots/orphan.snap"), b"x").unwrap();
        drop(sm);

        let mut sm = open(dir.path());
        assert_eq!(
            snapshot_files(dir.path()),
            [SnapshotFiles::name_for(&second.meta.snapshot_id)]
        );
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, second.meta);
        assert_eq!(current.snapshot.into_inner(), second.snapshot.into_inner());
    }

    #[tokio::test]
    async fn a_snapshot_kept_whole_in_sm_meta_is_moved_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let sm = open(dir.path());
        let meta = Meta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(2, 1), 40)),
            last_membership: Membership::default(),
            snapshot_id: "2-40-1-0".into(),
        };
        let data = codec::encode(&SnapshotRows { rows: vec![] }).unwrap();
        let txn = sm.db.begin_write().unwrap();
        put_meta(
            &txn,
            KEY_SNAPSHOT_LEGACY,
            &LegacySnapshot {
                meta: meta.clone(),
                data: data.clone(),
            },
        )
        .unwrap();
        txn.commit().unwrap();
        drop(sm);

        let mut sm = open(dir.path());
        assert!(read_meta::<LegacySnapshot>(&sm.db, KEY_SNAPSHOT_LEGACY)
            .unwrap()
            .is_none());
        assert_eq!(snapshot_files(dir.path()), ["2-40-1-0.snap"]);
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, meta);
        assert_eq!(current.snapshot.into_inner(), data);
    }
}
