//! Snapshots of the state machine: building one ([`SnapshotBuilder`]), installing one sent by
//! a leader, reading the current one, and the format of their data.
//!
//! A snapshot's data is every stored row, verbatim ([`super::format`], bincode), kept in a
//! file of its own ([`super::files`]); `sm_meta` holds only a pointer to it
//! ([`SnapshotPointer`]), and the pointer is what makes a snapshot current. Builds, sends and
//! installs stream that file: none holds the state in memory. Earlier versions kept the whole snapshot
//! in `sm_meta`; [`recover`] moves such a one into a file at open.

use std::io::BufReader;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::Snapshot;
use openraft::{RaftSnapshotBuilder, StorageIOError};
use redb::{Database, Durability, ReadableDatabase};
use serde::{Deserialize, Serialize};

use super::data::SnapshotFile;
use super::files::{SnapshotFiles, Staged};
use super::format::{self, Row};
use super::handle::Db;
use super::overlay::Short;
use super::state::{SnapshotCounts, StateMachine};
use super::tables::{
    applied_in, order_key, put_meta, read_meta, registry_in, Membership, Meta, BY_CREATED, COOKIES,
    IDENTITY, KEYS, KEYS_BY_EXPIRY, KEY_APPLIED, KEY_FLUSH_COUNT, KEY_MEMBERSHIP, KEY_REGISTRY,
    KEY_SNAPSHOT_FILE, KEY_SNAPSHOT_LEGACY, META,
};
use crate::codec;
use crate::durable::no_room;
use crate::identity::Registry;
use crate::types::TypeConfig;
use crate::{BoxError, StResult};

/// Check that `data` is a snapshot this node can install: it decodes, and so does every
/// record and idempotency key in it, exactly as installing reads them (see
/// `format::validate`, which the snapshot inbox runs on a received file).
pub fn validate(data: &[u8]) -> Result<(), BoxError> {
    format::validate(data, codec::DECODE_LIMIT as u64).map(|_| ())
}

/// [`validate`] for a snapshot in a file, read as a stream, of at most `limit` bytes
/// uncompressed. Returns the disk space installing it takes ([`install_room`]).
pub fn validate_file(path: &std::path::Path, limit: u64) -> Result<u64, BoxError> {
    let file = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    format::validate(file, limit).map(install_room)
}

/// The disk space, at most, that installing a snapshot whose rows hold `row_bytes` takes:
/// the new `sm.redb` it fills (see `replace_state`), which lives beside the old one until it
/// is renamed over it. It holds 1.3-1.5 bytes per byte of rows (page headers, leaves part
/// full, a row in the list index for each record; measured by
/// `an_install_takes_no_more_room_than_install_room` for records of 40 bytes to 1 KiB):
/// twice, and the size of an empty database on top, leaves a margin. Its length on disk
/// runs ahead of that, as a hole.
pub fn install_room(row_bytes: u64) -> u64 {
    row_bytes
        .saturating_mul(INSTALL_ROOM_FACTOR)
        .saturating_add(INSTALL_ROOM_BASE)
}

/// [`install_room`]: bytes of `sm.redb` per byte of rows, at most.
pub(super) const INSTALL_ROOM_FACTOR: u64 = 2;
/// [`install_room`]: an empty `sm.redb`'s size, and then some.
const INSTALL_ROOM_BASE: u64 = 4 << 20;

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
            overlay: self.overlay.clone(),
            snapshots: self.snapshots.clone(),
            files: self.files.clone(),
        }
    }

    /// openraft's `install_snapshot`: replace the state with the snapshot's, written into a
    /// new `sm.redb` that replaces the old file (see `handle`), and make it the current
    /// snapshot. `data` is the file the snapshot was received into; it becomes the snapshot
    /// file (renamed, not copied).
    pub(super) async fn install(&mut self, meta: &Meta, mut data: SnapshotFile) -> StResult<()> {
        let sig = Some(meta.signature());
        let write_err =
            |e: BoxError| StorageIOError::write_snapshot(sig.clone(), &crate::io_err(e));
        data.sync().await.map_err(|e| write_err(e.into()))?;
        let received = data.path().to_owned();
        drop(data);
        let meta = meta.clone();
        let db = self.db.clone();
        let files = self.files.clone();
        let applied = meta.last_log_id.map_or(0, |l| l.index);
        let registry = tokio::task::spawn_blocking(move || -> Result<Registry, BoxError> {
            let staged = files.adopt(&received, &SnapshotFiles::name_for(&meta.snapshot_id))?;
            replace_state(Target::of(&db, &files), &meta, staged)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?
        .map_err(write_err)?;
        self.cache.invalidate_all();
        self.identity.set_registry(applied, registry);
        self.applied.store(applied, Ordering::SeqCst);
        self.overlay.installed(Some(applied));
        self.snapshots.installed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// openraft's `get_current_snapshot`: the one the pointer names, as its open file.
    pub(super) async fn current_snapshot(&self) -> StResult<Option<Snapshot<TypeConfig>>> {
        let db = self.db.clone();
        let files = self.files.clone();
        let current = tokio::task::spawn_blocking(move || current_in(Target::of(&db, &files)))
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?
            .map_err(|e| StorageIOError::read_snapshot(None, &crate::io_err(e)))?;
        Ok(current.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(data),
        }))
    }
}

/// The current snapshot, as its meta and its open file; `None` before the first.
fn current_in(at: Target<'_>) -> Result<Option<(Meta, SnapshotFile)>, BoxError> {
    // Under the switch lock, so the file named is not replaced before it is open (once
    // open, it stays readable even if a newer snapshot replaces it).
    let _switch = at.files.switch();
    let Some(p) = read_meta::<SnapshotPointer>(&at.db.get(), KEY_SNAPSHOT_FILE)? else {
        return Ok(None);
    };
    let data = at.files.open_file(&p.file, p.len)?;
    Ok(Some((p.meta, data)))
}

/// What a build came to.
enum Built {
    /// A new snapshot, with the uncompressed bytes of its state.
    New(Meta, SnapshotFile, u64),
    /// No room on the disk for a new one: the current one, kept.
    Kept(Meta, SnapshotFile),
}

/// Where a snapshot is made current: the state machine's database and its snapshot files.
#[derive(Clone, Copy)]
struct Target<'a> {
    db: &'a Db,
    files: &'a SnapshotFiles,
}

impl<'a> Target<'a> {
    fn of(db: &'a Db, files: &'a SnapshotFiles) -> Self {
        Target { db, files }
    }
}

/// Rows written per transaction while a new state is filled: bounds the memory of an install
/// of any size (a transaction's dirty pages are held until it commits).
const INSTALL_BATCH: usize = 20_000;

/// Make an installed snapshot, staged in `staged`, the state and the current snapshot: a new
/// database filled from its rows (read from the file as a stream), with `last_applied`,
/// membership and the pointer in its last, durable, transaction, renamed over `sm.redb`;
/// then the other snapshot files removed. Returns the snapshot's registry. Under the switch
/// from publishing the file to removing the others, so a concurrent build neither removes
/// this file before its pointer is current nor has its own file removed under it.
fn replace_state(to: Target<'_>, meta: &Meta, staged: Staged) -> Result<Registry, BoxError> {
    let Target { db, files } = to;
    let (file, len) = (staged.name().to_owned(), staged.bytes());
    let switch = files.switch();
    files.publish(staged, &switch)?;
    // Validated before it was handed to openraft (the inbox), or built by a node: no limit.
    let input = BufReader::with_capacity(1 << 20, std::fs::File::open(files.path(&file))?);
    let mut input = format::open(input, u64::MAX)?;
    let pointer = SnapshotPointer {
        meta: meta.clone(),
        file,
        len,
    };
    // The flushes' count as it stands (nothing is applied during an install), kept in the
    // new file: the state opened on it, now or at a restart before the next flush, counts on
    // from it.
    let count = db.read(|c| c.active.count_after());
    let registry = db.replace(|new| fill(new, &mut input, &pointer, count))?;
    files.remove_others(Some(&pointer.file))?;
    Ok(registry)
}

/// Write the snapshot read from `input` into the empty database `db`: the rows in batches
/// (records arrive in id order, so they go in as appends; their index entries as they
/// come), then the registry, `last_applied`, the membership and the snapshot's `pointer` in
/// the last transaction, the only durable one: until the file is renamed into place nothing
/// reads it, and a crash leaves it to be removed. This node's flushes' `count` goes in
/// that transaction too.
fn fill(
    db: &Database,
    input: &mut dyn std::io::BufRead,
    pointer: &SnapshotPointer,
    count: f64,
) -> Result<Registry, BoxError> {
    let write = |batch: &mut Vec<Row>| -> Result<(), BoxError> {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::None)?;
        {
            let mut table = txn.open_table(COOKIES)?;
            let mut order = txn.open_table(BY_CREATED)?;
            let mut keys = txn.open_table(KEYS)?;
            let mut by_expiry = txn.open_table(KEYS_BY_EXPIRY)?;
            for row in batch.drain(..) {
                match row {
                    Row::Record { id, value, created } => {
                        table.insert(id.as_str(), value.as_slice())?;
                        order.insert((order_key(created), id.as_str()), ())?;
                    }
                    Row::Key {
                        key,
                        value,
                        expires_ms,
                    } => {
                        keys.insert(key.as_str(), value.as_slice())?;
                        by_expiry.insert((expires_ms, key.as_str()), ())?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    };
    let mut batch = Vec::with_capacity(INSTALL_BATCH);
    let registry = format::walk(input, &mut |row| {
        batch.push(row);
        if batch.len() >= INSTALL_BATCH {
            write(&mut batch)?;
        }
        Ok(())
    })?;
    write(&mut batch)?;
    let txn = db.begin_write()?;
    txn.open_table(IDENTITY)?
        .insert(KEY_REGISTRY, codec::encode(&registry)?.as_slice())?;
    put_meta(&txn, KEY_APPLIED, &pointer.meta.last_log_id)?;
    put_meta(&txn, KEY_MEMBERSHIP, &pointer.meta.last_membership)?;
    put_meta(&txn, KEY_SNAPSHOT_FILE, pointer)?;
    put_meta(&txn, KEY_FLUSH_COUNT, &count)?;
    txn.commit()?;
    Ok(registry)
}

/// Builds snapshots from a consistent read transaction while `apply` goes on.
pub struct SnapshotBuilder {
    db: Db,
    /// Flushed before a build: the build reads `sm.redb` alone.
    overlay: super::overlay::Overlay,
    snapshots: Arc<SnapshotCounts>,
    files: Arc<SnapshotFiles>,
}

/// Makes snapshot ids unique within a process even when two builds share a microsecond.
static SNAPSHOT_SEQ: AtomicU64 = AtomicU64::new(0);

/// The meta of a snapshot of the state `txn` sees: its last applied log id and membership,
/// and a new id.
fn meta_of(txn: &redb::ReadTransaction) -> Result<Meta, BoxError> {
    let last_log_id = applied_in(txn)?;
    let last_membership: Membership = match txn.open_table(META)?.get(KEY_MEMBERSHIP)? {
        Some(b) => codec::decode(b.value())?,
        None => Membership::default(),
    };
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let seq = SNAPSHOT_SEQ.fetch_add(1, Ordering::Relaxed);
    let snapshot_id = format!(
        "{}-{}-{micros}-{seq}",
        last_log_id.map_or(0, |l| l.leader_id.term),
        last_log_id.map_or(0, |l| l.index)
    );
    Ok(Meta {
        last_log_id,
        last_membership,
        snapshot_id,
    })
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StResult<Snapshot<TypeConfig>> {
        let db = self.db.clone();
        let files = self.files.clone();
        let overlay = self.overlay.clone();
        // On a thread of its own at a lower priority (see `background`).
        let built = super::background::run("snapshot-build", move || -> Result<_, BoxError> {
            // One read transaction: rows, last_applied and membership from the same instant,
            // streamed into the file row by row. No lock is held meanwhile (redb's readers
            // never block its writer); only the pointer to the file takes redb's write lock,
            // briefly (see [`super::files`]).
            let started = std::time::Instant::now();
            // A build on a disk without room for it would fail, and openraft stops on a
            // failed build; but a build only gives disk back later (the log it lets go).
            // So while the free space is less than the current snapshot's file, or the
            // write runs out of room, the current snapshot is kept and the node goes on;
            // the policy asks again a second later (`cluster::snapshots`). Without a current
            // snapshot there is nothing to keep, and the failure stands.
            let keep = |why: &dyn std::fmt::Display| -> Result<Built, BoxError> {
                let Some((meta, data)) = current_in(Target::of(&db, &files))? else {
                    return Err(format!("building a snapshot: {why}").into());
                };
                tracing::warn!(
                    kept = meta.last_log_id.map_or(0, |l| l.index),
                    "snapshot build put off: {why}"
                );
                Ok(Built::Kept(meta, data))
            };
            // Everything applied so far into `sm.redb` first: the snapshot is then as recent
            // as openraft asked for, and the log it lets openraft purge is already in the
            // file (a restart resumes from the file, not from the layers). That write too
            // waits while the disk has no room for it (`flush_room`).
            match overlay.flush_all(Short::Fail) {
                Err(e) if no_room(&*e) => return keep(&e),
                flushed => flushed?,
            }
            let read_from = db.get();
            if let Some(p) = read_meta::<SnapshotPointer>(&read_from, KEY_SNAPSHOT_FILE)? {
                if let Some(free) = crate::durable::free_bytes(files.dir()) {
                    if free < p.len {
                        return keep(&format!(
                            "{free} bytes free, less than the current snapshot's {}",
                            p.len
                        ));
                    }
                }
            }
            let txn = read_from.begin_read()?;
            let meta = meta_of(&txn)?;
            let registry = registry_in(&txn)?;
            let file = SnapshotFiles::name_for(&meta.snapshot_id);
            let mut counts = format::Written::default();
            let staged = match files.stage_with(&file, &mut |w| {
                counts = format::write_compressed(&txn, &registry, w)?;
                Ok(())
            }) {
                Ok(staged) => staged,
                Err(e) if no_room(&*e) => return keep(&e),
                Err(e) => return Err(e),
            };
            drop(txn);
            let written = started.elapsed();
            // Opened before it is published: if a newer snapshot replaces it at once, this
            // handle still reads it whole.
            let data = SnapshotFile::open(&files.staged_path(&staged))?;
            let bytes = staged.bytes();
            publish_built(Target::of(&db, &files), &meta, staged)?;
            tracing::info!(
                index = meta.last_log_id.map_or(0, |l| l.index),
                records = counts.records,
                keys = counts.keys,
                raw_bytes = counts.raw_bytes,
                bytes,
                write_ms = written.as_millis() as u64,
                total_ms = started.elapsed().as_millis() as u64,
                "snapshot built"
            );
            Ok(Built::New(meta, data, counts.raw_bytes))
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, &e))?
        .map_err(|e| StorageIOError::write_snapshot(None, &crate::io_err(e)))?;
        let (meta, data) = match built {
            Built::New(meta, data, state_bytes) => {
                self.snapshots.built.fetch_add(1, Ordering::Relaxed);
                self.snapshots
                    .state_bytes
                    .store(state_bytes, Ordering::Relaxed);
                (meta, data)
            }
            // openraft takes a snapshot no newer than its own as nothing new, and purges
            // nothing.
            Built::Kept(meta, data) => {
                self.snapshots.postponed.fetch_add(1, Ordering::Relaxed);
                (meta, data)
            }
        };
        Ok(Snapshot {
            meta,
            snapshot: Box::new(data),
        })
    }
}

/// Make a built snapshot, staged in `staged`, the current one, unless an installed snapshot
/// overtook it meanwhile: then it is discarded and the build still ends well (a failed
/// build is fatal to openraft). Under the switch, so an install never sees this file
/// half-published, nor removes it, nor has its own file removed by it.
fn publish_built(to: Target<'_>, meta: &Meta, staged: Staged) -> Result<(), BoxError> {
    let Target { db, files } = to;
    let len = staged.bytes();
    let switch = files.switch();
    // Held through the commit: a repack copying the file meanwhile would miss the pointer.
    let _exclusive = db.exclusive();
    // The database now current: an install or a repack may have replaced the one this build
    // read.
    let db = db.get();
    let current = read_meta::<SnapshotPointer>(&db, KEY_SNAPSHOT_FILE)?;
    if current.is_some_and(|c| c.meta.last_log_id > meta.last_log_id) {
        files.discard(staged)?;
        return Ok(());
    }
    let file = SnapshotFiles::name_for(&meta.snapshot_id);
    files.publish(staged, &switch)?;
    commit_current(db.begin_write()?, files, meta, (file, len))
}

/// Point `sm_meta` at snapshot `file` (`len` bytes) in `txn`, commit it durably, and remove
/// every other snapshot file. The caller holds the switch.
fn commit_current(
    txn: redb::WriteTransaction,
    files: &SnapshotFiles,
    meta: &Meta,
    (file, len): (String, u64),
) -> Result<(), BoxError> {
    let pointer = SnapshotPointer {
        meta: meta.clone(),
        file,
        len,
    };
    put_meta(&txn, KEY_SNAPSHOT_FILE, &pointer)?;
    txn.commit()?;
    files.remove_others(Some(&pointer.file))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use openraft::storage::RaftStateMachine;
    use openraft::LogId;

    use super::*;
    use crate::cache::Cache;
    use crate::identity::Identity;
    use crate::record::Record;

    fn open(dir: &Path) -> StateMachine {
        open_as(dir, Arc::new(Identity::new(1, 0x11, false)))
    }

    fn open_as(dir: &Path, identity: Arc<Identity>) -> StateMachine {
        StateMachine::open(dir, Arc::new(Cache::new(Default::default())), identity).unwrap()
    }

    /// Rows and keys, encoded whole: the same bytes a build streams.
    #[derive(Serialize, Deserialize)]
    struct SnapshotRows {
        rows: Vec<(String, Vec<u8>)>,
        keys: Vec<(String, Vec<u8>)>,
        registry: Registry,
    }

    /// The rows alone, as snapshots were written before idempotency keys.
    #[derive(Serialize, Deserialize)]
    struct SnapshotRowsV1 {
        rows: Vec<(String, Vec<u8>)>,
    }

    /// All of a snapshot's bytes.
    async fn bytes(mut data: Box<SnapshotFile>) -> Vec<u8> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        data.seek(std::io::SeekFrom::Start(0)).await.unwrap();
        let mut out = Vec::new();
        data.read_to_end(&mut out).await.unwrap();
        out
    }

    /// `data` as a snapshot received into `sm`'s directory, as the inbox leaves it.
    async fn received(sm: &StateMachine, data: &[u8]) -> SnapshotFile {
        use tokio::io::AsyncWriteExt;
        let mut file = sm.files.incoming().unwrap();
        file.write_all(data).await.unwrap();
        file.sync().await.unwrap();
        file
    }

    fn snapshot_files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    /// Build a snapshot of `sm`'s state now, as openraft asks for one.
    async fn build(sm: &mut StateMachine) -> Snapshot<TypeConfig> {
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_built_snapshot_survives_a_restart_and_only_it_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let first = build(&mut sm).await;
        let second = build(&mut sm).await;
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
        assert_eq!(bytes(current.snapshot).await, bytes(second.snapshot).await);
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
        let data = codec::encode(&SnapshotRowsV1 { rows: vec![] }).unwrap();
        let txn = sm.db.get().begin_write().unwrap();
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
        assert!(
            read_meta::<LegacySnapshot>(&sm.db.get(), KEY_SNAPSHOT_LEGACY)
                .unwrap()
                .is_none()
        );
        assert_eq!(snapshot_files(dir.path()), ["2-40-1-0.snap"]);
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, meta);
        assert_eq!(bytes(current.snapshot).await, data);
    }

    fn meta_at(index: u64, id: &str) -> Meta {
        Meta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(2, 1), index)),
            last_membership: Membership::default(),
            snapshot_id: id.into(),
        }
    }

    fn rows(ids: &[&str]) -> Vec<u8> {
        let rows = ids
            .iter()
            .map(|id| {
                let json = format!(r#"{{"cookie":"{id}","created":"1"}}"#).into_bytes();
                (id.to_string(), Record::new(1, json).encode())
            })
            .collect();
        codec::encode(&SnapshotRows {
            rows,
            keys: Vec::new(),
            registry: Registry::default(),
        })
        .unwrap()
    }

    /// Issue 12: a build that wrote its file, then saw an install replace the state and
    /// clean up the snapshot files, must end well (a failed build is fatal to openraft),
    /// and leave the installed snapshot current and on disk.
    #[tokio::test]
    async fn a_build_overtaken_by_an_install_ends_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let built = meta_at(5, "2-5-built");
        let built_data = rows(&["old"]);
        let staged = sm
            .files
            .stage(&SnapshotFiles::name_for(&built.snapshot_id), &built_data)
            .unwrap();

        let installed = meta_at(40, "2-40-installed");
        let data = received(&sm, &rows(&["a", "b"])).await;
        sm.install(&installed, data).await.unwrap();
        publish_built(Target::of(&sm.db, &sm.files), &built, staged).unwrap();

        assert_eq!(snapshot_files(dir.path()), ["2-40-installed.snap"]);
        drop(sm);
        let mut sm = open(dir.path());
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, installed);
        assert_eq!(sm.reader().count().unwrap(), 2);
    }

    /// Issue 12, the other order: an install that wrote its file, then waited while a build
    /// became current and cleaned up, must still find its file when it commits its pointer,
    /// or the node could not restart.
    #[tokio::test]
    async fn an_install_overtaken_by_a_build_keeps_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let installed = meta_at(40, "2-40-installed");
        let data = rows(&["a", "b"]);
        let file = SnapshotFiles::name_for(&installed.snapshot_id);
        let staged = sm.files.stage(&file, &data).unwrap();

        // A build of the (older) state runs from start to end meanwhile.
        build(&mut sm).await;

        // The install goes on from where it was: its file must still be there.
        replace_state(Target::of(&sm.db, &sm.files), &installed, staged).unwrap();
        drop(sm);
        let mut sm = open(dir.path());
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, installed);
        assert_eq!(snapshot_files(dir.path()), [file]);
    }

    fn entry(index: u64, cmd: crate::command::Command) -> openraft::Entry<TypeConfig> {
        openraft::Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Normal(crate::types::Request { cmds: vec![cmd] }),
        }
    }

    /// Idempotency keys are state: a replica that installs a snapshot answers a retry of a
    /// keyed write as a replay, exactly as the replica that built it does.
    #[tokio::test]
    async fn idempotency_keys_travel_with_snapshots() {
        use crate::command::{CmdResult, Command};
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let keyed = || {
            let create = Command::create(br#"{"cookie":"x","user_id":1}"#, 1).unwrap();
            Command::keyed("k".into(), [7; 32], (5, 60_000), create)
        };
        let mut a = open(d1.path());
        let first = a.apply(vec![entry(1, keyed())]).await.unwrap();
        let snap = build(&mut a).await;

        let mut b = open(d2.path());
        let file = received(&b, &bytes(snap.snapshot).await).await;
        b.install_snapshot(&snap.meta, Box::new(file))
            .await
            .unwrap();
        let retry = b.apply(vec![entry(2, keyed())]).await.unwrap();
        assert_eq!(
            retry[0].results[0],
            CmdResult::Replayed(Box::new(first[0].results[0].clone()))
        );
    }

    #[test]
    fn validate_accepts_what_a_build_writes_and_refuses_garbage() {
        assert!(validate(&rows(&["a", "b"])).is_ok());
        assert!(validate(&[]).is_err());
        assert!(validate(b"garbage, not a snapshot").is_err());
    }

    /// A snapshot written before idempotency keys installs: its rows replace the state.
    #[tokio::test]
    async fn a_snapshot_from_before_idempotency_keys_still_installs() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let (id, value) = (
            "a".to_owned(),
            Record::new(1, br#"{"cookie":"a"}"#.to_vec()).encode(),
        );
        let v1 = codec::encode(&SnapshotRowsV1 {
            rows: vec![(id, value)],
        })
        .unwrap();
        let data = received(&sm, &v1).await;
        sm.install(&meta_at(9, "2-9-v1"), data).await.unwrap();
        assert_eq!(sm.reader().count().unwrap(), 1);
        assert_eq!(snapshot_files(dir.path()), ["2-9-v1.snap"]);
    }

    /// A built snapshot is the state, row for row: installed elsewhere, it gives the same
    /// records, and its bytes are what encoding the rows whole gives.
    #[tokio::test]
    async fn a_streamed_build_installs_elsewhere_as_the_same_state() {
        use crate::command::Command;
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a = open(d1.path());
        let entries: Vec<_> = (1..=300)
            .map(|i| {
                let json = format!(r#"{{"cookie":"c{i:03}","user_id":{i}}}"#);
                entry(i, Command::create(json.as_bytes(), 1000 + i).unwrap())
            })
            .collect();
        a.apply(entries).await.unwrap();
        let snap = a.snapshot_builder().build_snapshot().await.unwrap();
        let data = bytes(snap.snapshot).await;
        let mut b = open(d2.path());
        let file = received(&b, &data).await;
        b.install(&snap.meta, file).await.unwrap();
        let page = |sm: &StateMachine| {
            sm.reader()
                .page(usize::MAX, crate::sm::reader::PageStart::First)
                .unwrap()
                .unwrap()
                .body
        };
        assert_eq!(page(&a), page(&b));
        assert_eq!(b.reader().count().unwrap(), 300);
        // No received file is left beside the installed one.
        assert_eq!(
            snapshot_files(d2.path()),
            [SnapshotFiles::name_for(&snap.meta.snapshot_id)]
        );
    }

    /// A node restarted after an install, before its next flush, goes on with the flushes'
    /// count it had (its place against the other nodes', `crate::stagger`): the install
    /// keeps it in memory and writes it into the new file.
    #[tokio::test]
    async fn a_restart_after_an_install_keeps_the_flush_count() {
        use crate::command::Command;
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let create = |i: u64| {
            let json = format!(r#"{{"cookie":"c{i:03}","user_id":{i}}}"#);
            entry(i, Command::create(json.as_bytes(), 1000 + i).unwrap())
        };
        let mut a = open(d1.path());
        a.apply((1..=300).map(create).collect::<Vec<_>>())
            .await
            .unwrap();
        let snap = a.snapshot_builder().build_snapshot().await.unwrap();
        let data = bytes(snap.snapshot).await;
        let count = |sm: &StateMachine| sm.db.read(|c| c.active.count_after());
        let before = {
            let mut b = open(d2.path());
            b.apply((1..=100).map(create).collect::<Vec<_>>())
                .await
                .unwrap();
            let before = count(&b);
            assert!(before > 0.0);
            let file = received(&b, &data).await;
            b.install(&snap.meta, file).await.unwrap();
            assert_eq!(count(&b), before, "the install kept the count");
            before
        };
        let b = open(d2.path());
        assert_eq!(b.reader().count().unwrap(), 300);
        assert_eq!(
            count(&b),
            before,
            "the restart went on from the installed file's"
        );
    }

    /// Installing replaces the database file instead of rewriting it in place: a node that
    /// installs snapshot after snapshot keeps a file the size of one state, where rewriting
    /// in place held the old state's pages beside the new one's.
    #[tokio::test]
    async fn repeated_installs_do_not_grow_the_state_file() {
        use crate::command::Command;
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a = open(d1.path());
        let payload = "x".repeat(200);
        let entries: Vec<_> = (1..=5000)
            .map(|i| {
                let json = format!(r#"{{"cookie":"c{i:05}","user_id":{i},"p":"{payload}"}}"#);
                entry(i, Command::create(json.as_bytes(), 1000 + i).unwrap())
            })
            .collect();
        a.apply(entries).await.unwrap();
        let data = bytes(
            a.snapshot_builder()
                .build_snapshot()
                .await
                .unwrap()
                .snapshot,
        )
        .await;
        let mut b = open(d2.path());
        let size = || std::fs::metadata(d2.path().join("sm.redb")).unwrap().len();
        let mut sizes = Vec::new();
        for n in 0..3 {
            let file = received(&b, &data).await;
            b.install(&meta_at(5000, &format!("2-5000-{n}")), file)
                .await
                .unwrap();
            sizes.push(size());
        }
        assert!(sizes[2] <= sizes[0] + sizes[0] / 4, "{sizes:?}");
        assert_eq!(b.reader().count().unwrap(), 5000);
        // Readers made before an install read the new state after it.
        let reader = b.reader();
        let file = received(&b, &rows(&["only"])).await;
        b.install(&meta_at(6000, "2-6000-x"), file).await.unwrap();
        assert_eq!(reader.count().unwrap(), 1);
    }

    /// [`install_room`] bounds what an install writes, for small records and large ones: a
    /// node refuses a snapshot it has no room for by this bound, before it starts (the
    /// snapshot inbox), so one that installs anyway and fills the disk stops the node.
    #[tokio::test]
    async fn an_install_takes_no_more_room_than_install_room() {
        use crate::command::Command;
        use std::os::unix::fs::MetadataExt;
        for (records, pad) in [(20_000, 0), (5_000, 200), (18_000, 1_000), (1, 0)] {
            let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let mut a = open(d1.path());
            let payload = "x".repeat(pad);
            let entries: Vec<_> = (1..=records)
                .map(|i| {
                    let json = format!(r#"{{"cookie":"c{i:05}","user_id":{i},"p":"{payload}"}}"#);
                    entry(i, Command::create(json.as_bytes(), 1000 + i).unwrap())
                })
                .collect();
            a.apply(entries).await.unwrap();
            let snap = a.snapshot_builder().build_snapshot().await.unwrap();
            let data = bytes(snap.snapshot).await;
            let room = format::validate(&data[..], u64::MAX)
                .map(install_room)
                .unwrap();
            let mut b = open(d2.path());
            let file = received(&b, &data).await;
            b.install(&snap.meta, file).await.unwrap();
            // The blocks it holds: redb sets the file's length ahead of its pages (doubling
            // it as it grows), and the space between is a hole.
            let taken = std::fs::metadata(d2.path().join("sm.redb"))
                .unwrap()
                .blocks()
                * 512;
            eprintln!("{records} records of {pad} bytes: sm.redb holds {taken}, room {room}");
            assert!(
                taken <= room,
                "{records} records of {pad} bytes: {taken} > {room}"
            );
        }
    }

    /// A follower that catches up by snapshot learns every member's incarnation from it, and
    /// a node that leaves the membership is forgotten by the registry.
    #[tokio::test]
    async fn the_registry_is_applied_kept_in_snapshots_and_pruned_on_leave() {
        use crate::command::{CmdResult, Command};
        use openraft::{Entry, EntryPayload, Membership as RaftMembership};
        use std::collections::{BTreeMap, BTreeSet};

        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ident_a = Arc::new(Identity::new(1, 0x11, false));
        let mut a = open_as(d1.path(), ident_a.clone());
        let register = Command::Register {
            cluster: 7,
            members: vec![(1, 0x11), (2, 0x22), (3, 0x33)],
        };
        let out = a.apply(vec![entry(1, register)]).await.unwrap();
        assert_eq!(out[0].results, vec![CmdResult::Registered]);
        assert_eq!(ident_a.expected(3), Some(0x33));

        let snap = a.snapshot_builder().build_snapshot().await.unwrap();
        let ident_b = Arc::new(Identity::new(2, 0x22, false));
        let mut b = open_as(d2.path(), ident_b.clone());
        let file = received(&b, &bytes(snap.snapshot).await).await;
        b.install_snapshot(&snap.meta, Box::new(file))
            .await
            .unwrap();
        assert_eq!(ident_b.registry().cluster, Some(7));
        assert_eq!(ident_b.expected(1), Some(0x11));
        drop(b);
        // Reopened, the registry is read back from sm.redb.
        let ident_b2 = Arc::new(Identity::new(2, 0x22, false));
        let _b = open_as(d2.path(), ident_b2.clone());
        assert_eq!(ident_b2.registry(), ident_b.registry());

        let nodes: BTreeMap<u64, crate::CookieNode> = [1, 2]
            .into_iter()
            .map(|i| (i, Default::default()))
            .collect();
        let leave = RaftMembership::new(vec![BTreeSet::from([1, 2])], nodes);
        a.apply(vec![Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), 2),
            payload: EntryPayload::Membership(leave),
        }])
        .await
        .unwrap();
        assert_eq!(ident_a.expected(3), None);
        assert_eq!(ident_a.registry().members.len(), 2);
    }

    /// Whether a filter of ids is published within 10 s. It is built on a thread of its own
    /// and published at a later wake of the flush thread (every 100 ms at most).
    async fn filter_built(sm: &StateMachine) -> bool {
        for _ in 0..500 {
            if sm.db.read(|c| c.ids.is_some()) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        false
    }

    /// A create must find every stored id, wherever it is: in a layer, in `sm.redb` behind
    /// the filter of ids (`ids`), after the filter grows (the tests' filters start at 16 ids,
    /// so 300 records grow the chain several times), after a restart and after an install
    /// replaced the file. One id the filter missed would be a record overwritten.
    #[tokio::test]
    async fn a_stored_id_is_never_created_again_through_flushes_installs_and_restarts() {
        use crate::command::{CmdResult, Command};
        let create = |i: u64, prefix: &str| {
            let json = format!(r#"{{"cookie":"{prefix}{i:03}","user_id":{}}}"#, i + 1);
            Command::create(json.as_bytes(), 1000 + i).unwrap()
        };
        // Creates of ids `prefix`000..count as entries from `first` on, in batches of 25,
        // each batch flushed to the file; the answers, in order.
        async fn apply_all(
            sm: &mut StateMachine,
            first: u64,
            cmds: Vec<crate::command::Command>,
        ) -> Vec<CmdResult> {
            let mut results = Vec::new();
            let mut index = first;
            for batch in cmds.chunks(25) {
                let entries: Vec<_> = batch
                    .iter()
                    .map(|cmd| {
                        index += 1;
                        entry(index, cmd.clone())
                    })
                    .collect();
                for r in sm.apply(entries).await.unwrap() {
                    results.extend(r.results);
                }
                sm.overlay.flush_all(Short::Wait).unwrap();
            }
            results
        }
        let stored = |r: &[CmdResult]| r.iter().all(|r| matches!(r, CmdResult::Stored { .. }));
        let refused = |r: &[CmdResult]| r.iter().all(|r| *r == CmdResult::AlreadyExists);
        let has_filter = |sm: &StateMachine| sm.db.read(|c| c.ids.is_some());

        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a = open(d1.path());
        let firsts: Vec<_> = (0..300).map(|i| create(i, "a")).collect();
        assert!(stored(&apply_all(&mut a, 0, firsts.clone()).await));
        assert!(filter_built(&a).await, "the flushes built a filter");
        assert!(refused(&apply_all(&mut a, 300, firsts.clone()).await));
        // One scan of the file, at the first flush: growing the store only grew the filter.
        // (Before filters grew in place, each time one filled it was built again by a scan.)
        assert_eq!(a.overlay.stats().ids_scans, 1);
        assert!(a.db.read(|c| c.ids.as_ref().unwrap().chain_len()) > 1);

        // Restarted: the first flush builds the filter from the file.
        drop(a);
        let mut a = open(d1.path());
        let more: Vec<_> = (0..30).map(|i| create(i, "more")).collect();
        assert!(stored(&apply_all(&mut a, 600, more).await));
        assert!(filter_built(&a).await);
        assert!(refused(&apply_all(&mut a, 630, firsts.clone()).await));

        // Installed over a state of other ids: the new file's ids are found, the old ones
        // are gone.
        let snap = a.snapshot_builder().build_snapshot().await.unwrap();
        let data = bytes(snap.snapshot).await;
        let mut b = open(d2.path());
        let others: Vec<_> = (0..300).map(|i| create(i, "b")).collect();
        assert!(stored(&apply_all(&mut b, 0, others.clone()).await));
        assert!(filter_built(&b).await);
        let file = received(&b, &data).await;
        b.install(&snap.meta, file).await.unwrap();
        assert!(!has_filter(&b), "an install drops the old file's filter");
        let next = snap.meta.last_log_id.unwrap().index;
        assert!(refused(&apply_all(&mut b, next, firsts).await));
        assert!(filter_built(&b).await);
        assert!(stored(&apply_all(&mut b, next + 300, others).await));
    }

    /// The same while the flush thread commits layers beside `apply` rather than between
    /// batches: each round creates new ids and re-creates two earlier rounds', whichever of
    /// the layers and the file holds them by then.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stored_ids_stay_found_while_the_flush_thread_runs_beside_apply() {
        use crate::command::{CmdResult, Command};
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let round = |r: u64| -> Vec<Command> {
            (0..400)
                .map(|i| {
                    let json = format!(r#"{{"cookie":"r{r}-{i}","user_id":1}}"#);
                    Command::create(json.as_bytes(), 1).unwrap()
                })
                .collect()
        };
        // 50,000 records first, so the filter is sized for 100,000 and the rounds' 32,000 new
        // ids are added to it at each flush rather than rebuilt into a new one.
        let preload: Vec<Command> = (0..50_000)
            .map(|i| Command::create(format!(r#"{{"cookie":"p{i}","user_id":1}}"#).as_bytes(), 1))
            .collect::<Result<_, _>>()
            .unwrap();
        sm.apply(vec![openraft::Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), 1),
            payload: openraft::EntryPayload::Normal(crate::types::Request { cmds: preload }),
        }])
        .await
        .unwrap();
        sm.overlay.flush_all(Short::Wait).unwrap();
        assert!(filter_built(&sm).await, "the flush built a filter");
        let flushes = sm.overlay.stats().flushes;
        let mut index = 1;
        for r in 0..80u64 {
            let mut cmds = round(r);
            // The last round's ids, likely still in a layer, and an older round's, likely in
            // the file by now.
            if r > 0 {
                cmds.extend(round(r - 1));
                cmds.extend(round(r / 2));
            }
            // One entry per 40 commands, so the flush thread (every 1,000 entries or 8,192
            // rows) is at work during some of the rounds.
            let entries: Vec<_> = cmds
                .chunks(40)
                .map(|c| {
                    index += 1;
                    openraft::Entry {
                        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
                        payload: openraft::EntryPayload::Normal(crate::types::Request {
                            cmds: c.to_vec(),
                        }),
                    }
                })
                .collect();
            let results: Vec<_> = sm
                .apply(entries)
                .await
                .unwrap()
                .into_iter()
                .flat_map(|r| r.results)
                .collect();
            let (new, again) = results.split_at(400);
            assert!(new.iter().all(|r| matches!(r, CmdResult::Stored { .. })));
            assert!(
                again.iter().all(|r| *r == CmdResult::AlreadyExists),
                "round {r}: a stored id was created again"
            );
            // The flush thread flushes on its own schedule; these make sure some rounds
            // meet ids that have moved from the layers into the file.
            if r % 10 == 5 {
                sm.overlay.flush_all(Short::Wait).unwrap();
            }
        }
        assert!(sm.overlay.stats().flushes >= flushes + 8);
        assert_eq!(sm.reader().count().unwrap(), 50_000 + 80 * 400);
    }

    /// A snapshot's pointer committed while a repack copies `sm.redb` must land in the file
    /// that ends up current. The copy reads one transaction begun before it; a pointer
    /// committed into the old file after that would vanish with the file at the rename, and
    /// `commit_current` has already removed the snapshot the pointer replaced: the node would
    /// restart with no snapshot and a purged log. Here the copy is held open until the build
    /// either waits for the file or has published, so the two always meet.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pointer_published_during_a_repack_is_kept() {
        use std::sync::atomic::AtomicBool;
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let before = build(&mut sm).await;
        let published = Arc::new(AtomicBool::new(false));
        let (copying, copy_started) = std::sync::mpsc::channel();
        let repack = std::thread::spawn({
            let db = sm.db.clone();
            let published = published.clone();
            move || {
                db.rewrite(|from, to| {
                    copying.send(()).unwrap();
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while !db.exclusive_wanted()
                        && !published.load(Ordering::SeqCst)
                        && Instant::now() < deadline
                    {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    super::super::repack::copy(from, to, &mut || super::super::repack::Look::Go)
                })
                .unwrap()
            }
        });
        copy_started.recv().unwrap();
        let built = build(&mut sm).await;
        published.store(true, Ordering::SeqCst);
        assert!(repack.join().unwrap(), "the copy was not given up");
        assert_ne!(built.meta.snapshot_id, before.meta.snapshot_id);

        // Without the lock: the pointer left is the first build's, whose file is gone.
        let current = sm
            .get_current_snapshot()
            .await
            .expect("the current snapshot's file is there");
        assert_eq!(current.map(|s| s.meta), Some(built.meta.clone()));
        drop(sm);
        let mut sm = open(dir.path());
        let current = sm.get_current_snapshot().await.unwrap();
        assert_eq!(current.map(|s| s.meta), Some(built.meta.clone()));
        assert_eq!(
            snapshot_files(dir.path()),
            [SnapshotFiles::name_for(&built.meta.snapshot_id)]
        );
    }
}
