//! The openraft glue of cookie-crud.
//!
//! # Layout
//! ```text
//! lib.rs            this map, the re-exports, BoxError
//! types.rs          Request/Response (a log entry's payload and answer), TypeConfig
//! member.rs         CookieNode: a member's client and peer addresses, and its encoding
//! command.rs        what a command is: validation (create/update/delete), keys, size, and
//!                   apply against the narrow `Records` interface
//! record.rs         how one cookie is stored: version, created sort key, JSON bytes; merge
//! codec.rs          bincode 2 for everything that goes to disk or over the wire
//! durable.rs        new files and directories made durable (their directory synced)
//! log/mod.rs        the Raft log (LogStore): vote, purge, committed markers in log.redb
//! log/wal.rs        its entries: segment files, framing, torn-tail recovery, truncate, purge
//! log/place.rs      where the WAL lives (`storage.wal_dir`) and the marker that ties it to
//!                   its log: a missing or foreign WAL stops the node
//! sm/mod.rs         the state machine in sm.redb: open, the openraft impl (delegates)
//! sm/state.rs       the StateMachine value and its snapshot counters
//! sm/tables.rs      sm.redb's tables and metadata keys
//! sm/apply.rs       applying entries: one transaction per batch, durability, Tables
//! sm/snapshot.rs    building and installing snapshots, their row format, the legacy move
//! sm/files.rs       snapshot data in files of their own beside sm.redb
//! sm/repack.rs      sm.redb rewritten as a packed copy of itself once the node is at rest
//! sm/reader.rs      StoreReader: get, the streamed list, page, count for the HTTP layer
//! cache.rs          the per-node TTL read cache, invalidated by apply
//! chunks.rs         a body written on the blocking pool, streamed through a bounded channel
//! capped.rs         a peer's answer read with a bound on its length
//! link.rs           one HTTP/1.1 connection to one peer, driven by the task that calls
//! network.rs        Raft RPCs over a Link per peer; reqwest for the peer listener's rest
//! inbox.rs          inbound snapshot chunks: bounded, in order, validated before install
//! identity.rs       a node's incarnation and the cluster's registry: a node whose data
//!                   was lost cannot come back as the member it was
//! stagger.rs        each node's own phase in periodic jobs (flushes, snapshot builds), so
//!                   that a cluster's nodes do not all run one at once
//! ```
//!
//! Applying a command is where every existence check, merge and version check happens, so
//! every answer is decided by the log order alone, and every replica's cache agrees with its
//! own applied state because `apply` invalidates it.
//!
//! No module imports one that imports it back (`tests/layers.rs` checks it): `sm/mod.rs`
//! uses its parts, the parts share only `state.rs`, `tables.rs` and `files.rs`.
//!
//! Log appends (on the RaftCore task) and state machine applies (on the state machine
//! worker) use separate files, so neither serialises behind the other's writer.

// openraft's storage traits fix the (large) `StorageError` type; boxing it is not ours to do.
#![allow(clippy::result_large_err)]

pub mod cache;
pub mod capped;
pub mod chunks;
pub mod codec;
pub mod command;
pub mod durable;
pub(crate) mod flat_json;
pub mod identity;
pub mod idle;
pub mod inbox;
pub mod link;
pub mod log;
pub mod member;
pub mod network;
pub mod record;
pub(crate) mod reserved_keys;
pub mod sm;
pub mod stages;
pub mod stagger;
pub mod types;

pub use cache::{Cache, CacheConfig, CacheStats};
pub use command::{CmdResult, Command, Invalid};
pub use identity::{Identity, Registry};
pub use inbox::SnapshotInbox;
pub use log::{LogSize, LogStore, ReadFloor};
pub use network::{AddressBook, Network, PeerHttp, RAFT_TARGET_HEADER};
pub use sm::{CacheStatus, SnapshotCounts, StateMachine, StoreReader};
pub use stagger::Stagger;
pub use types::{CookieNode, NodeId, Request, Response, TypeConfig};

/// How many bytes of pages redb may cache for each of a node's databases. redb's own default
/// is 1 GiB per database, so a node's memory grew with its data until it had cached both
/// files whole (issue 16); the read cache in front of the state machine (`cache`) serves the
/// hot records, and the log is read back only by a lagging follower's replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbCache {
    pub state_machine: usize,
    pub log: usize,
}

impl Default for DbCache {
    fn default() -> Self {
        DbCache {
            state_machine: 64 << 20,
            log: 16 << 20,
        }
    }
}

/// Open the redb database at `path`, or create it whole when it is missing: a new one is
/// made as `<path>.new`, synced, renamed into place and its directory synced. redb writes a
/// new file's magic number last, so a node killed while it created `sm.redb` or `log.redb`
/// in place left a file that every later start refused ("Not a redb database"): the node
/// could not start again until someone removed it by hand. A `.new` file is only ever a
/// creation that did not finish, and is removed.
pub(crate) fn open_or_create_db(
    path: &std::path::Path,
    cache_bytes: usize,
) -> Result<redb::Database, redb::DatabaseError> {
    let io = |e: std::io::Error| redb::DatabaseError::Storage(redb::StorageError::Io(e));
    let mut name = path.as_os_str().to_owned();
    name.push(".new");
    let fresh = std::path::PathBuf::from(name);
    durable::remove_if_present(&fresh).map_err(io)?;
    if !path.exists() {
        drop(create_db(&fresh, cache_bytes)?);
        std::fs::File::open(&fresh)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&fresh, path).map_err(io)?;
        durable::sync_parent(path).map_err(io)?;
    }
    create_db(path, cache_bytes)
}

/// Open or create the redb database at `path` with a page cache of `cache_bytes`.
pub(crate) fn create_db(
    path: &std::path::Path,
    cache_bytes: usize,
) -> Result<redb::Database, redb::DatabaseError> {
    redb::Builder::new()
        .set_cache_size(cache_bytes)
        .create(path)
}

/// The openraft handle specialised to cookie-crud.
pub type Raft = openraft::Raft<TypeConfig>;

/// Errors from redb, bincode, the file system and the blocking pool, boxed: on their way to
/// openraft inside this crate, and to the HTTP layer from [`StoreReader`]'s reads.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What openraft's storage traits return.
pub(crate) type StResult<T> = Result<T, openraft::StorageError<NodeId>>;

/// openraft's storage errors take a sized `Error`; wrap a boxed one.
pub(crate) fn io_err(e: BoxError) -> std::io::Error {
    std::io::Error::other(e)
}
