//! cookie-crud: a Raft-replicated REST store of cookie records.
//!
//! # Layers
//! Each layer is a folder (or a file) and imports only from the layers below it; the
//! `layers` test checks this on every `make lint` and `make test`.
//!
//! ```text
//!   node            start-up, wiring, shutdown (the composition root)
//!    │
//!   http            axum: the public API, the peer endpoints, observability
//!    │
//!   write   read    the write path (group commit, forwarding) │ the read barrier (ReadIndex)
//!    │       │
//!   cluster  tls    who leads, members, peer client and wire types, bootstrap, monitor │
//!    │              rustls configs from the [tls] files
//!   metrics  config  tasks  clock  certs  process   leaves: no imports from this crate
//!    │
//!   cookie_raft     the openraft glue (log, state machine, cache, Raft network) in raft/
//! ```
//!
//! - [`node`]: start-up and shutdown of one node.
//! - [`http`]: the HTTP server: the cookie API, health, cluster view, Raft and peer routes.
//! - [`mod@write`]: the write path: group commit on the leader, forwarding from followers.
//! - [`read`]: the linearizable read barrier (ReadIndex) and its shared rounds.
//! - [`cluster`]: leader lookup, members, the peer client and wire types ([`cluster::proto`]),
//!   bootstrap and discovery, the health monitor, no elections during snapshot installs.
//! - [`metrics`]: the Prometheus registry.
//! - [`config`]: node configuration (TOML file, environment, or the embedded default).
//! - [`tls`]: TLS for both listeners and the peer calls; [`certs`]: `cookie-crud certs`,
//!   a private CA and node certificates for labs and tests.
//! - [`tasks`]: the background tasks, owned so that shutdown stops them all.
//! - [`clock`]: wall-clock time.
//! - [`process`]: settings of the whole process made at start-up (transparent huge pages).

pub mod certs;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod ctl;
pub mod http;
pub mod metrics;
pub mod node;
pub mod process;
pub mod read;
pub mod tasks;
pub mod tls;
pub mod write;
