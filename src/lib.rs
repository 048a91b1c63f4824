//! cookie-crud: a Raft-replicated REST store of cookie records.
//!
//! # Layout
//! - [`config`]: node configuration (TOML file or the embedded single-node default).
//! - [`node`]: start-up and shutdown of one node.
//! - [`bootstrap`]: forming a brand-new cluster exactly once.
//! - [`discovery`]: who the initial members are (`manual`, `dns`, `kubernetes`).
//! - [`api`]: the HTTP server: the cookie API, health, cluster view, Raft endpoints.
//! - [`write`]: the write path: group commit on the leader, forwarding from followers.
//! - [`forward`]: followers' writes sent to the leader many per request.
//! - [`gather`]: forming one batch from a queue (group commit and forwarding).
//! - [`install_quiet`]: no elections from a follower busy installing a snapshot.
//! - [`read`]: the linearizable read barrier (ReadIndex), local or through the leader.
//! - [`metrics`]: Prometheus metrics and the HTTP middleware that records them.
//! - [`monitor`]: periodic health checks of the other members (for `/cache`).
//! - [`read_batch`]: sharing one leadership confirmation among concurrent reads.
//! - [`peers`]: the HTTP client for node-to-node application traffic.
//!
//! The Raft glue (log store, state machine, cache, Raft network) lives in the `cookie-raft`
//! crate under `raft/`.

pub mod api;
pub mod bootstrap;
pub mod config;
pub mod discovery;
pub mod forward;
pub mod gather;
pub mod install_quiet;
pub mod metrics;
pub mod monitor;
pub mod node;
pub mod peers;
pub mod read;
pub mod read_batch;
pub mod write;
