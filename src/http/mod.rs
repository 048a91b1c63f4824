//! The HTTP layer: the public API (`/cookies`, `/cache`, `/health`, `/ready`, `/cluster`,
//! `/metrics`) and the status page (`/`) on the client listener, and the node-to-node
//! endpoints (`/raft/*` and the peer probes) on the peer listener, each with its own axum
//! router.
//!
//! - [`cookies`], [`cache`], [`health`], [`members`]: the public API's handlers; [`params`] what they
//!   read from a request; [`page_room`] the memory list pages may hold; [`error`] the one
//!   mapping of errors to HTTP.
//! - [`raft_rpc`]: Raft's own RPCs; [`peer_rpc`]: forwarded writes and read-index
//!   requests; [`peer_gate`]: what both check first.
//! - [`observe`]: request ids, spans, metrics, the panic catcher, `/metrics`; [`auth`]:
//!   client tokens and roles; [`openapi`]: the API's OpenAPI document; [`status`]: the
//!   status page at `/`.
//! - [`state`]: what every handler shares; [`router`]: the routes and the layers around them;
//!   [`routes`]: which route a path matches, known to those layers before routing;
//!   [`server`]: accepting connections, with hyper's limits; [`idle`]: closing those with
//!   no request; [`stall`]: closing those whose client stops reading.
//!
//! Handlers hold no logic of the store: writes go to [`crate::write`], linearizable reads
//! wait on [`crate::read`], and everything is read from `cookie_raft::StoreReader`.

pub mod answer_stall;
pub mod append_lane;
pub mod auth;
pub mod backup;
pub mod body_timeout;
pub mod cache;
pub mod cookies;
pub mod error;
pub mod health;
pub mod idle;
pub mod members;
pub mod observe;
pub mod openapi;
pub mod page_room;
pub mod params;
pub mod peer_gate;
pub mod peer_rpc;
pub mod raft_rpc;
pub mod router;
pub mod routes;
pub mod server;
pub mod stall;
pub mod state;
pub mod status;

pub use router::{client_router, peer_router};
pub use state::{AppState, Shared};
