//! Room on the disks for new data (`storage.write_reserve_bytes`): the leader's, and the voters'.
//!
//! A node whose disk fills stops (`cluster::failstop`): openraft cannot go on after a failed
//! append. Every node holds the same data, so their disks fill together, and once a majority
//! has stopped the cluster takes nothing, not even the deletes that would make room. So the
//! leader refuses the writes that grow the store, creates and updates, while the
//! filesystem of its data directory has less free than a reserve, as etcd refuses puts
//! once its database reaches its quota (`NOSPACE`). Reads, deletes and membership changes go
//! on, and so do the snapshot builds and log purges that give disk back.
//!
//! A write with an `Idempotency-Key` may be the retry of one sent earlier, and a 507, which
//! says "not applied", would be a lie if that one is applied later (it may still be in a
//! queue, in the log, or on its way from a follower). So while short, a keyed create or
//! update whose key the applied state already holds goes through (it is answered from the
//! record: the store does not grow), and one whose key it does not hold is not proposed and
//! is answered as a timeout is, outcome unknown (504): true of any earlier attempt, and the
//! client's retry with the same key goes through once there is room (api.md, 11). Until
//! 2026-12-04 they were all let through, and a disk that filled all the same stopped the node.
//!
//! Only the leader decides, before proposing, so a write's fate does not hang on which node
//! received it; a follower forwards every write anyway. But a follower's disk may be
//! smaller than the leader's, or fuller (a snapshot, a slower flush), and a voter whose disk
//! fills stops. So every node reports on `/health` whether its own disk is short of its own
//! reserve (`disk_short`), and the leader refuses as well while a voter's last report said
//! so ([`voters_short_of_room`](crate::cluster::monitor::voters_short_of_room) says why not
//! only a majority's), as etcd refuses puts cluster-wide once one member raises `NOSPACE`.
//! The leader hears within a health check interval (`health_check_interval_ms`, 2 s), or
//! within 100 ms of a node near its reserve (`WATCH_CLOSELY`): the reserve must hold what
//! a follower takes meanwhile (at 10,000 creates a second of 1 KiB, about 3 MB).
//!
//! What counts is the free space less what this node will write that the filesystem does
//! not show yet ([`StoreReader::disk_due`](cookie_raft::sm::StoreReader::disk_due)): applied
//! changes still in memory, up to 64 MiB of them, and the next snapshot build. Without them
//! a node with its reserve free filled its disk at the next flush of its state machine
//! (`a_leader_short_of_its_reserve_refuses_what_grows_the_store_and_stays_up`, with 1 KiB
//! records: every node stopped half a second into the load).

use cookie_raft::log::Dirs;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cookie_raft::Command;

/// How long a reading of the room is used before the next: at 20,000 writes a second of
/// 1 KiB, 2 MB of records (about three times that on disk, in the log and the state).
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Within this much of the reserve, the room is read again for every write: a reading
/// 100 ms old could let through more than the reserve holds.
const NEAR: u64 = 16 << 20;

/// Within this much of its reserve a node says so on `/health` (`disk_near_reserve`), and
/// the other members check its health every 100 ms instead of every
/// `health_check_interval_ms` (`cluster::monitor`): the reserve then has to hold what a
/// follower takes in 100 ms before the leader hears it is short, not in 2 s. Wider than
/// what a node takes in one interval at full speed (about 60 MB in 2 s), so that none
/// crosses it between two checks.
const WATCH_CLOSELY: u64 = 256 << 20;

/// Decides whether a write may be proposed, by the room on this node's disk.
pub struct Room {
    /// The data directory, and the WAL's where it is apart (`storage.wal_dir`): both must
    /// have room.
    dirs: Dirs,
    /// `storage.write_reserve_bytes`; 0 turns the check off.
    reserve: u64,
    /// Bytes the node will write that the filesystem does not show yet (the state
    /// machine's [`disk_due`](cookie_raft::sm::StoreReader::disk_due)).
    due: Box<dyn Fn() -> u64 + Send + Sync>,
    /// Why, when a voter reported its disk short of its reserve
    /// ([`Monitor::voters_short_of_room`](crate::cluster::monitor::Monitor::voters_short_of_room)).
    short_voters: Box<dyn Fn() -> Option<String> + Send + Sync>,
    /// Whether the applied state holds the answer to a write under an idempotency key.
    key_recorded: Box<dyn Fn(&str) -> bool + Send + Sync>,
    epoch: Instant,
    /// When `room` was read, in milliseconds since `epoch` plus one (0: never).
    sampled_ms: AtomicU64,
    /// Free bytes less `due` at the last reading.
    room: AtomicU64,
}

/// What [`Room`] asks of the rest of the node.
pub struct Sources {
    /// Bytes the node will write that the filesystem does not show yet.
    pub due: Box<dyn Fn() -> u64 + Send + Sync>,
    /// Why, when a voter reported its disk short of its reserve.
    pub short_voters: Box<dyn Fn() -> Option<String> + Send + Sync>,
    /// Whether the applied state holds the answer to a write under this idempotency key.
    pub key_recorded: Box<dyn Fn(&str) -> bool + Send + Sync>,
}

/// Why a write is not proposed for want of room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Not applied, and it will not be: 507.
    NoRoom(String),
    /// This request is not proposed, but one sent earlier with its idempotency key may
    /// still be applied: outcome unknown, 504.
    KeyPending(String),
}

impl Room {
    pub fn new(dirs: Dirs, reserve: u64, sources: Sources) -> Self {
        let Sources {
            due,
            short_voters,
            key_recorded,
        } = sources;
        Room {
            dirs,
            reserve,
            due,
            short_voters,
            key_recorded,
            epoch: Instant::now(),
            sampled_ms: AtomicU64::new(0),
            room: AtomicU64::new(0),
        }
    }

    /// Free bytes on the data directory's filesystem less what the node has yet to write
    /// there, or on the WAL's filesystem where it is apart and has less, read at most every
    /// [`SAMPLE_EVERY`] while well above the reserve; `None` when the data directory's free
    /// space cannot be read (then nothing is refused: the disk decides).
    fn room(&self) -> Option<u64> {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let sampled = self.sampled_ms.load(Ordering::Relaxed);
        let last = self.room.load(Ordering::Relaxed);
        if sampled != 0
            && now - sampled.min(now) < SAMPLE_EVERY.as_millis() as u64
            && last >= self.reserve.saturating_add(NEAR)
        {
            return Some(last);
        }
        let mut room =
            cookie_raft::durable::free_bytes(&self.dirs.data)?.saturating_sub((self.due)());
        if self.dirs.wal_apart() {
            // On the data directory's filesystem it has no more than that; on its own device
            // it may have less, and a WAL that cannot append stops the node as surely.
            if let Some(wal) = cookie_raft::durable::free_bytes(&self.dirs.wal) {
                room = room.min(wal);
            }
        }
        self.room.store(room, Ordering::Relaxed);
        self.sampled_ms.store(now, Ordering::Relaxed);
        Some(room)
    }

    /// Whether this node's own disk is short of its reserve (never with the reserve off).
    pub fn short(&self) -> bool {
        self.reserve != 0 && self.room().is_some_and(|room| room < self.reserve)
    }

    /// Whether this node's own disk is within `WATCH_CLOSELY` of its reserve, or short of
    /// it (never with the reserve off).
    pub fn near(&self) -> bool {
        self.reserve != 0
            && self
                .room()
                .is_some_and(|room| room < self.reserve.saturating_add(WATCH_CLOSELY))
    }

    /// `Err` with the reason when `cmd` would grow the store and this node's disk, or a
    /// voter's, is short of its reserve. The voters' reports count even where this node
    /// keeps no reserve of its own: theirs is their configuration.
    pub fn admit(&self, cmd: &Command) -> Result<(), Refused> {
        let key = match cmd {
            Command::Keyed { key, cmd, .. } if grows(cmd) => Some(key),
            Command::Keyed { .. } => return Ok(()),
            cmd if grows(cmd) => None,
            _ => return Ok(()),
        };
        let Some(why) = self.short_of_room() else {
            return Ok(());
        };
        match key {
            None => Err(Refused::NoRoom(format!("{why}; deletes still go through"))),
            // A replay of the recorded answer writes nothing new.
            Some(key) if (self.key_recorded)(key) => Ok(()),
            Some(_) => Err(Refused::KeyPending(format!(
                "insufficient storage: {why}; {} once there is room",
                super::KEY_MAY_BE_PENDING
            ))),
        }
    }

    /// Why writes that grow the store are refused now, if they are.
    fn short_of_room(&self) -> Option<String> {
        if self.reserve != 0 {
            if let Some(room) = self.room().filter(|room| *room < self.reserve) {
                return Some(format!(
                    "the leader's disk has {room} bytes free, less what it has yet to \
                     write, under its reserve of {} (storage.write_reserve_bytes)",
                    self.reserve
                ));
            }
        }
        (self.short_voters)().map(|why| format!("{why} (storage.write_reserve_bytes)"))
    }
}

/// Whether `cmd` is refused for room: a create or an update.
fn grows(cmd: &Command) -> bool {
    matches!(cmd, Command::Create { .. } | Command::Update { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(reserve: u64, due: u64) -> Room {
        Room::new(
            Dirs::new(&std::env::temp_dir()),
            reserve,
            Sources {
                due: Box::new(move || due),
                short_voters: Box::new(|| None),
                key_recorded: Box::new(|key| key == "recorded"),
            },
        )
    }

    fn keyed(key: &str, cmd: Command) -> Command {
        Command::Keyed {
            key: key.into(),
            fingerprint: [0; 32],
            now_ms: 1,
            expires_ms: 2,
            cmd: Box::new(cmd),
        }
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
        // Keyed: a delete goes through; a create whose key has an answer recorded is
        // answered from it; one whose key has none may have an earlier attempt in flight.
        assert_eq!(short.admit(&keyed("new", delete.clone())), Ok(()));
        assert_eq!(short.admit(&keyed("recorded", create())), Ok(()));
        match short.admit(&keyed("new", update.clone())) {
            Err(Refused::KeyPending(why)) => assert!(why.contains("retry with the same key")),
            other => panic!("{other:?}"),
        }
        assert_eq!(room(1, 0).admit(&keyed("new", create())), Ok(()));
        // What the node has yet to write counts against the free space.
        assert!(room(1, free + (1 << 30)).admit(&create()).is_err());
        // Room enough, or the check off.
        assert_eq!(room(1, 0).admit(&create()), Ok(()));
        assert_eq!(room(0, u64::MAX).admit(&create()), Ok(()));
        assert!(!room(1, 0).short());
        assert!(room(free + (1 << 30), 0).short());
        assert!(!room(0, u64::MAX).short());
        // Near: within WATCH_CLOSELY of the reserve, or short of it.
        assert!(room(free + (1 << 30), 0).near());
        assert!(room(free.saturating_sub(WATCH_CLOSELY / 2).max(1), 0).near());
        if free > WATCH_CLOSELY + 1 {
            assert!(!room(1, 0).near());
        }
        assert!(!room(0, u64::MAX).near());
    }

    #[test]
    fn a_voter_short_of_its_reserve_stops_what_grows_the_store_even_with_room_here() {
        let voter = Room::new(
            Dirs::new(&std::env::temp_dir()),
            0,
            Sources {
                due: Box::new(|| 0),
                short_voters: Box::new(|| Some("disk short of its reserve on node3".into())),
                key_recorded: Box::new(|_| false),
            },
        );
        let Err(Refused::NoRoom(refused)) = voter.admit(&create()) else {
            panic!("a create was not refused for room");
        };
        assert!(
            refused.starts_with("disk short of its reserve on node3"),
            "{refused}"
        );
        let delete = Command::Delete {
            id: "a".into(),
            if_match: None,
        };
        assert_eq!(voter.admit(&delete), Ok(()));
        assert!(!voter.short(), "its own disk is not short");
    }
}
