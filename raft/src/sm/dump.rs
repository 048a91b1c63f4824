//! A backup made from a stopped node's data directory, for the disaster case: a cluster that
//! lost its quorum for good, and one node whose data survives. Its backup is then restored
//! into a new cluster (`backup::restore`), as etcd's `snapshot restore` of a member's db.
//!
//! The state machine alone may lag the node's log: a follower learns that an entry is
//! committed one heartbeat after the leader acknowledged it, so the last writes a client saw
//! acknowledged may be in the log and not yet applied. So by default every entry the log holds
//! beyond the applied state is applied first, committed or not, as etcd's
//! `--force-new-cluster` does: nothing acknowledged is lost, and a write whose client saw an
//! error or a timeout (outcome unknown) may appear. `applied_only` takes the applied state
//! alone.
//!
//! The data directory is never changed: it is copied, and the copy is replayed and backed up,
//! then removed. A directory in use by a running node is refused (redb's file lock).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftStateMachine};
use redb::{DatabaseError, ReadOnlyDatabase};

use super::backup::{BackupHeader, Origin};
use super::StateMachine;
use crate::cache::{Cache, CacheConfig};
use crate::identity::Identity;
use crate::log::{place, Dirs, LogStore};
use crate::BoxError;

/// What a dump did.
#[derive(Debug, Clone)]
pub struct DumpReport {
    pub header: BackupHeader,
    /// The index the state machine had applied.
    pub applied: u64,
    /// Entries of the log applied on top of it (0 with `applied_only`).
    pub replayed: u64,
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Removes the copy however the dump ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copy the WAL in `from` (its segments and its marker, nothing else a volume's root may
/// hold) into `to`.
fn copy_wal(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    let mut names = place::segment_names(from)?;
    if from.join(place::MARKER).is_file() {
        names.push(place::MARKER.to_owned());
    }
    for name in names {
        std::fs::copy(from.join(&name), to.join(&name))?;
    }
    Ok(())
}

/// What to dump, and where to work.
pub struct DumpFrom<'a> {
    /// The node's data (and WAL).
    pub dirs: &'a Dirs,
    /// Where the working copy goes (in a directory of its own, removed at the end): a
    /// directory the user may write, outside the data directory. A data directory that is
    /// a volume's mount point under a read-only root has no writable parent (the
    /// StatefulSet's), where a copy beside it failed (found in review).
    pub scratch: &'a Path,
    /// Only the state the node had applied, not the rest of its log.
    pub applied_only: bool,
}

/// Write a backup of the node data in `from.dirs` into `out` (see the module's
/// documentation). Blocking, and not to be called on an async runtime (it runs one of its
/// own).
pub fn dump(
    from: &DumpFrom<'_>,
    origin: Origin,
    out: &mut dyn Write,
) -> Result<DumpReport, BoxError> {
    let (dirs, applied_only) = (from.dirs, from.applied_only);
    // Paths compared canonical, so that a relative name (`--data-dir .`, whose name is
    // empty) does not put the copy inside the directory it copies, where it copied itself
    // until the disk was full (found in review).
    let canonical =
        std::fs::canonicalize(&dirs.data).map_err(|e| format!("{}: {e}", dirs.data.display()))?;
    let dir = canonical.as_path();
    let (Some(beside), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(format!("{}: not a node's data directory", dir.display()).into());
    };
    let scratch_dir = std::fs::canonicalize(from.scratch)
        .map_err(|e| format!("{}: {e}", from.scratch.display()))?;
    // Inside the data directory the copy would copy itself: beside it instead.
    let parent = if scratch_dir.starts_with(dir) {
        beside
    } else {
        scratch_dir.as_path()
    };
    if super::backup::interrupted_restore(dir) {
        return Err(format!(
            "{} holds a restore that did not finish: not a node's data",
            dir.display()
        )
        .into());
    }
    for file in ["sm.redb", "log.redb"] {
        if !dir.join(file).is_file() {
            return Err(format!(
                "{} has no {file}: not a node's data directory",
                dir.display()
            )
            .into());
        }
    }
    // Refuse a directory a running node holds: its files may be mid-write. Opened read-only,
    // which never repairs (a crashed node's file needs it: the copy gets it instead).
    if let Err(DatabaseError::DatabaseAlreadyOpen) = ReadOnlyDatabase::open(dir.join("sm.redb")) {
        return Err(format!(
            "{} is in use by a running node: stop it first (its files change under a copy)",
            dir.display()
        )
        .into());
    }
    let scratch = Scratch(parent.join(format!(
        ".{}.dump-{}",
        name.to_string_lossy(),
        std::process::id()
    )));
    let _ = std::fs::remove_dir_all(&scratch.0);
    let copying = |from: &Path, e: std::io::Error| {
        format!("copying {} to {}: {e}", from.display(), scratch.0.display())
    };
    copy_tree(dir, &scratch.0).map_err(|e| copying(dir, e))?;
    // The copy's log finds its WAL in its own `wal/`, marker and all: the WAL apart, or
    // reached through a link named `wal` (which the copy of the tree skips, as it skips
    // every link, and a node runs on: found in review).
    let wal = if dirs.wal_apart() {
        Some(dirs.wal.clone())
    } else {
        Some(dir.join("wal")).filter(|w| w.is_symlink())
    };
    if let Some(wal) = wal {
        let _ = std::fs::remove_dir_all(scratch.0.join("wal"));
        copy_wal(&wal, &scratch.0.join("wal")).map_err(|e| copying(&wal, e))?;
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        // With `applied_only` the log is not read, so a damaged WAL (which stops a node from
        // starting) does not stop the state machine's copy from being made.
        let (mut log, incarnation) = if applied_only {
            (None, LogStore::stored_incarnation(&scratch.0)?)
        } else {
            let log = LogStore::open(&scratch.0)?;
            let incarnation = log.incarnation();
            (Some(log), incarnation)
        };
        let cache = Arc::new(Cache::new(CacheConfig {
            enabled: false,
            ..Default::default()
        }));
        let identity = Arc::new(Identity::new(0, incarnation, false));
        let mut sm = StateMachine::open(&scratch.0, cache, identity)?;
        let (applied, _) = sm.applied_state().await?;
        let from = applied.map_or(0, |l| l.index + 1);
        let mut replayed = 0;
        if let Some(log) = log.as_mut() {
            let state = log.get_log_state().await?;
            // The log must go on from where the state machine stopped. A node killed while
            // it installed a snapshot, by a version that purged the log before the install
            // was durable, holds a log purged past its applied state: the entries between
            // are in neither, and the log read skips them (found in review: the dump then
            // claimed the log's last index and lacked acknowledged writes).
            if let Some(purged) = state.last_purged_log_id.filter(|p| p.index >= from) {
                let applied = applied.map_or(0, |l| l.index);
                return Err(format!(
                    "the log was purged up to index {} but the state machine has applied only up \
                     to {applied}: the entries between are in neither, so a dump would lack them \
                     (a snapshot install cut short); `--applied-only` takes the applied state \
                     alone, as of index {applied}, and says so",
                    purged.index,
                )
                .into());
            }
            let last = state.last_log_id.map(|l| l.index);
            if let Some(last) = last.filter(|&l| l >= from) {
                let entries = log.try_get_log_entries(from..=last).await?;
                replayed = entries.len() as u64;
                sm.apply(entries).await?;
            }
        }
        let header = sm.reader().backup(origin, &mut |_| {}, out)?;
        Ok(DumpReport {
            header,
            applied: applied.map_or(0, |l| l.index),
            replayed,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NodeId;
    use openraft::{CommittedLeaderId, LogId};

    fn origin() -> Origin {
        Origin {
            node: "test".into(),
            created_ms: 0,
            version: "0".into(),
        }
    }

    /// A log purged past the applied state (a snapshot install cut short by a version that
    /// purged first) has a gap no dump can fill: it is refused, not dumped without the
    /// entries in the gap under the log's last index.
    #[tokio::test]
    async fn a_log_purged_past_the_applied_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("node");
        std::fs::create_dir(&data).unwrap();
        {
            let mut log = LogStore::open(&data).unwrap();
            let upto: LogId<NodeId> = LogId::new(CommittedLeaderId::new(3, 1), 40);
            log.purge(upto).await.unwrap();
            let cache = Arc::new(Cache::new(CacheConfig::default()));
            let identity = Arc::new(Identity::new(0, log.incarnation(), false));
            drop(StateMachine::open(&data, cache, identity).unwrap());
        }
        // Off the runtime, as `dump` runs one of its own.
        let dump_of = |applied_only: bool| {
            let (data, scratch) = (data.clone(), dir.path().to_owned());
            tokio::task::spawn_blocking(move || {
                let from = DumpFrom {
                    dirs: &Dirs::new(&data),
                    scratch: &scratch,
                    applied_only,
                };
                dump(&from, origin(), &mut Vec::new())
            })
        };
        let Err(err) = dump_of(false).await.unwrap() else {
            panic!("must refuse");
        };
        assert!(err.to_string().contains("purged up to index 40"), "{err}");
        // The applied state alone is still there to take, for what it holds.
        let report = dump_of(true).await.unwrap().unwrap();
        assert_eq!(report.applied, 0);
    }
}
