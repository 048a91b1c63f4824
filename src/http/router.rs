//! The HTTP server: the cookie API, health, cluster view, and the Raft RPC endpoints.

pub mod cache;
pub mod cookies;
pub mod error;
pub mod health;
pub mod raft_rpc;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post, MethodRouter};
use axum::Router;
use cookie_raft::{NodeId, Raft, StoreReader};

use crate::config::Config;
use crate::metrics::{self, Metrics};
use crate::monitor::Monitor;
use crate::peers::PeerClient;
use crate::read::ReadIndex;
use crate::write::Writer;
use error::ApiError;

/// Everything a handler needs; shared by all requests.
pub struct AppState {
    pub cfg: Config,
    pub me: NodeId,
    pub raft: Raft,
    pub reader: StoreReader,
    pub writer: Writer,
    pub reads: ReadIndex,
    pub peers: PeerClient,
    pub monitor: Monitor,
    pub metrics: Arc<Metrics>,
    pub started: std::time::Instant,
    pub install_quiet: crate::install_quiet::InstallQuiet,
}

pub type Shared = Arc<AppState>;

/// Raft RPC bodies carry snapshot chunks and batches of entries: far above the API limit.
const RAFT_BODY_LIMIT: usize = 256 << 20;

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

async fn not_found() -> ApiError {
    ApiError::RouteNotFound
}

/// Unlisted methods answer 405 JSON. HEAD is listed explicitly because axum would otherwise
/// answer it with the GET handler, and the original API refuses it.
fn with_405(r: MethodRouter<Shared>) -> MethodRouter<Shared> {
    r.fallback(method_not_allowed)
}

pub fn router(state: Shared) -> Router {
    let raft_routes = Router::new()
        .route("/raft/append", post(raft_rpc::append))
        .route("/raft/vote", post(raft_rpc::vote))
        .route("/raft/snapshot", post(raft_rpc::snapshot))
        .route("/raft/write", post(raft_rpc::forwarded_write))
        .route("/raft/read-index", post(raft_rpc::read_index))
        .layer(DefaultBodyLimit::max(RAFT_BODY_LIMIT));

    Router::new()
        .route(
            "/cookies",
            with_405(
                get(cookies::list)
                    .post(cookies::create)
                    .head(method_not_allowed),
            ),
        )
        .route(
            "/cookies/{cookie}",
            with_405(
                get(cookies::get_one)
                    .post(cookies::create_with_path)
                    .put(cookies::update)
                    .delete(cookies::delete)
                    .head(method_not_allowed),
            ),
        )
        .route(
            "/cache",
            with_405(
                get(cache::get_cache)
                    .delete(cache::clear_cache)
                    .head(method_not_allowed),
            ),
        )
        .route("/metrics", with_405(get(metrics::scrape)))
        .route("/health", with_405(get(health::health)))
        .route("/ready", with_405(get(health::ready)))
        .route("/cluster", with_405(get(health::cluster)))
        .merge(raft_routes)
        .route("/raft/{*rest}", any(not_found))
        .fallback(not_found)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
}
