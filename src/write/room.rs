//! Room on the leader's disk for new data (`storage.write_reserve_bytes`).
//!
//! A node whose disk fills stops (`cluster::failstop`): openraft cannot go on after a failed
//! append. Every node holds the same data, so their disks fill together, and once a majority
//! has stopped the cluster takes nothing, not even the deletes that would make room. So the
//! leader refuses the writes that grow the store, creates and updates, while the
//! filesystem of its data directory has less free than a reserve, as etcd refuses puts
//! once its database reaches its quota (`NOSPACE`). Reads, deletes and membership changes go
//! on, and so do the snapshot builds and log purges that give disk back: the reserve is the
//! configured bytes plus the last snapshot's (a build writes the new snapshot before it
//! removes the old one).
//!
//! A write with an `Idempotency-Key` is let through: it may be the retry of one already
//! applied, and a refusal, which says "not applied", would then be a lie (api.md, 11). The
//! reserve leaves room for them; a disk that fills all the same stops the node as before.
//!
//! Only the leader decides, before proposing: whether a write is refused must not depend on
//! a follower's disk, and a follower forwards every write anyway. A follower's own disk is
//! as full as the leader's, give or take a snapshot, so the leader's reserve shields it too.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cookie_raft::Command;

/// How long a reading of the free space is used before the next `statvfs`: at 20,000
/// writes a second of 1 KiB, 2 MB, well inside any useful reserve.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Decides whether a write may be proposed, by the room on this node's disk.
pub struct Room {
    dir: PathBuf,
    /// `storage.write_reserve_bytes`; 0 turns the check off.
    reserve: u64,
    /// The uncompressed bytes of the last snapshot this node built (0 before one): the
    /// next build needs about that much, at most.
    snapshot_bytes: Box<dyn Fn() -> u64 + Send + Sync>,
    epoch: Instant,
    /// When `free` was read, in milliseconds since `epoch` plus one (0: never).
    sampled_ms: AtomicU64,
    free: AtomicU64,
}

impl Room {
    pub fn new(
        dir: PathBuf,
        reserve: u64,
        snapshot_bytes: Box<dyn Fn() -> u64 + Send + Sync>,
    ) -> Self {
        Room {
            dir,
            reserve,
            snapshot_bytes,
            epoch: Instant::now(),
            sampled_ms: AtomicU64::new(0),
            free: AtomicU64::new(0),
        }
    }

    /// Free bytes on the data directory's filesystem, read at most every [`SAMPLE_EVERY`];
    /// `None` when it cannot be read (then nothing is refused: the disk decides).
    fn free(&self) -> Option<u64> {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let sampled = self.sampled_ms.load(Ordering::Relaxed);
        if sampled != 0 && now - sampled.min(now) < SAMPLE_EVERY.as_millis() as u64 {
            return Some(self.free.load(Ordering::Relaxed));
        }
        let free = cookie_raft::durable::free_bytes(&self.dir)?;
        self.free.store(free, Ordering::Relaxed);
        self.sampled_ms.store(now, Ordering::Relaxed);
        Some(free)
    }

    /// `Err` with the reason when `cmd` would grow the store and the disk is short of its
    /// reserve.
    pub fn admit(&self, cmd: &Command) -> Result<(), String> {
        if self.reserve == 0 || !grows(cmd) {
            return Ok(());
        }
        let need = self.reserve.saturating_add((self.snapshot_bytes)());
        match self.free() {
            Some(free) if free < need => Err(format!(
                "the leader's disk has {free} bytes free, under its reserve of {need} \
                 (storage.write_reserve_bytes and room for a snapshot); deletes still go \
                 through"
            )),
            _ => Ok(()),
        }
    }
}

/// Whether `cmd` is refused for room: a create or an update, sent without a key.
fn grows(cmd: &Command) -> bool {
    matches!(cmd, Command::Create { .. } | Command::Update { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(reserve: u64, snapshot: u64) -> Room {
        let dir = std::env::temp_dir();
        Room::new(dir, reserve, Box::new(move || snapshot))
    }

    fn create() -> Command {
        Command::Create {
            id: "a".into(),
            object: "{}".into(),
        }
    }

    #[test]
    fn only_writes_that_grow_the_store_are_refused_and_only_when_short() {
        let free = cookie_raft::durable::space(&std::env::temp_dir())
            .unwrap()
            .free;
        // More than the disk has: creates and updates refused, the rest let through.
        let short = room(free + (1 << 30), 0);
        assert!(short.admit(&create()).is_err());
        let update = Command::Update {
            id: "a".into(),
            patch: "{}".into(),
            rename_to: None,
            now: 1,
            if_match: None,
        };
        assert!(short.admit(&update).is_err());
        let delete = Command::Delete {
            id: "a".into(),
            if_match: None,
        };
        assert_eq!(short.admit(&delete), Ok(()));
        let keyed = Command::Keyed {
            key: "k".into(),
            fingerprint: [0; 32],
            now_ms: 1,
            expires_ms: 2,
            cmd: Box::new(create()),
        };
        assert_eq!(short.admit(&keyed), Ok(()));
        // The last snapshot's bytes count toward the reserve.
        assert!(room(1, free + (1 << 30)).admit(&create()).is_err());
        // Room enough, or the check off.
        assert_eq!(room(1, 0).admit(&create()), Ok(()));
        assert_eq!(room(0, u64::MAX).admit(&create()), Ok(()));
    }
}
