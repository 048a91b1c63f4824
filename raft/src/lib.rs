//! The openraft glue of cookie-crud.
//!
//! # Layout
//! - [`types`]: the replicated commands (what a log entry carries) and their results, the node
//!   descriptor, and openraft's type configuration.
//! - [`record`]: how one cookie is stored (version + creation time + JSON bytes).
//! - [`codec`]: bincode 2 encoding of everything that goes to disk or over the wire.
//! - [`log`]: the Raft log (entries in the [`log::wal`], an append-only file per segment;
//!   vote, purge and committed markers in `log.redb`).
//!   - [`log::wal`]: the segment files, their framing, recovery of a torn tail, truncation and
//!     purge.
//! - [`sm`]: the cookies, last applied log id, membership and current snapshot in
//!   `sm.redb`; applying a command is where every existence check, merge and version check
//!   happens, so the answer is decided by the log order alone.
//!   - [`sm::files`]: snapshot data in files of their own beside `sm.redb`.
//! - [`cache`]: the per-node TTL read cache, invalidated by `apply` so every replica's cache
//!   agrees with its own applied state.
//! - [`network`]: Raft RPCs over HTTP with one pooled reqwest client.
//!
//! Log appends (on the RaftCore task) and state machine applies (on the state machine
//! worker) use separate files, so neither serialises behind the other's writer.

// openraft's storage traits fix the (large) `StorageError` type; boxing it is not ours to do.
#![allow(clippy::result_large_err)]

pub mod cache;
pub mod codec;
pub mod log;
pub mod network;
pub mod record;
pub mod sm;
pub mod types;

pub use cache::{Cache, CacheConfig, CacheStats};
pub use log::{LogStore, ReadFloor};
pub use network::{AddressBook, Network, RAFT_TARGET_HEADER};
pub use sm::{CacheStatus, SnapshotCounts, StateMachine, StoreReader};
pub use types::{CmdResult, Command, CookieNode, NodeId, Request, Response, TypeConfig};

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
