//! The routes of the two listeners, the client API's and the peers', and the layers around them.

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use cookie_raft::identity::{self, INCARNATION_HEADER};
use std::time::Duration;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;

use super::error::ApiError;
use super::observe::{
    self, CatchPanicLayer, NodeRequestIds, PropagateRequestIdLayer, SetRequestIdLayer, TraceLayer,
    REQUEST_ID_HEADER,
};
use super::state::Shared;
use super::{
    auth, backup, cache, cookies, health, members, openapi, peer_gate, peer_rpc, raft_rpc, status,
};
use crate::cluster::proto::{
    APPEND_PATH, CACHE_PATH, CLUSTER_PATH, HEALTH_PATH, MEMBERSHIP_PATH, READ_INDEX_PATH,
    SNAPSHOT_PATH, VOTE_PATH, WRITE_PATH,
};

/// Raft RPC bodies carry snapshot chunks and batches of entries: far above the API limit.
const RAFT_BODY_LIMIT: usize = cookie_raft::network::MAX_PEER_BODY_BYTES;

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

/// The peer listener's routes (api.md section 9): Raft's RPCs, forwarded writes and
/// read-index requests, and the JSON documents peers probe (bootstrap's `/cluster`, the
/// health monitor's `/health`, `/cache`'s per-node statistics). Every one needs the peer
/// credential; nothing of the client API is here.
pub fn peer_router(state: Shared) -> Router {
    let rpcs = Router::new()
        .route(APPEND_PATH, post(raft_rpc::append))
        .route(VOTE_PATH, post(raft_rpc::vote))
        .route(SNAPSHOT_PATH, post(raft_rpc::snapshot))
        .route(WRITE_PATH, post(peer_rpc::forwarded_write))
        .route(READ_INDEX_PATH, post(peer_rpc::read_index))
        .route(MEMBERSHIP_PATH, post(peer_rpc::membership))
        .layer(DefaultBodyLimit::max(RAFT_BODY_LIMIT));
    let probes = Router::new()
        .route(CLUSTER_PATH, with_405(get(health::cluster)))
        .route(HEALTH_PATH, with_405(get(health::health)))
        .route(CACHE_PATH, with_405(get(cache::local_cache_stats)));
    let routes = rpcs
        .merge(probes)
        .fallback(not_found)
        // Matched routes only: an unknown path is 404 to everyone.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            peer_gate::require_peer,
        ))
        // Every answer to a peer, refusals included, names this node's incarnation: that is
        // how a leader learns a new member's before the registry has it.
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static(INCARNATION_HEADER),
            HeaderValue::from_str(&identity::hex(state.cluster.identity.own()))
                .expect("hex digits are a valid header value"),
        ));
    observed(routes, state)
}

/// The client listener's routes: the public API only. `/raft/*` is not here (404).
pub fn client_router(state: Shared) -> Router {
    let routes = Router::new()
        .route("/", with_405(get(status::page)))
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
            CACHE_PATH,
            with_405(
                get(cache::get_cache)
                    .delete(cache::clear_cache)
                    .head(method_not_allowed),
            ),
        )
        .route("/metrics", with_405(get(observe::scrape)))
        .route(HEALTH_PATH, with_405(get(health::health)))
        .route("/ready", with_405(get(health::ready)))
        .route(CLUSTER_PATH, with_405(get(health::cluster)))
        .route(
            "/cluster/members",
            with_405(
                get(members::list)
                    .post(members::add)
                    .head(method_not_allowed),
            ),
        )
        .route(
            "/cluster/members/{id}",
            with_405(axum::routing::delete(members::remove)),
        )
        .route(
            "/cluster/members/{id}/promote",
            with_405(post(members::promote)),
        )
        .route(
            "/admin/backup",
            with_405(get(backup::backup).head(method_not_allowed)),
        )
        .route("/openapi.json", with_405(get(openapi::document)))
        .fallback(not_found)
        // Client tokens are checked inside the metrics (a 401 is counted) and only on
        // matched routes (an unknown path is 404 to everyone).
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_role,
        ));
    observed(routes, state)
}

/// The layers both listeners share: the panic catcher, the body timeout, the metrics, the
/// request id and the span.
fn observed(routes: Router<Shared>, state: Shared) -> Router {
    let ids = NodeRequestIds::new(&state.cfg.name());
    routes
        // Innermost first: a panic becomes a 500 that the metrics still count.
        .layer(CatchPanicLayer::custom(observe::panic_reply))
        // A body that does not arrive in time ends with an error the handlers answer 408.
        .layer(RequestBodyTimeoutLayer::new(Duration::from_millis(
            state.cfg.http.body_timeout_ms,
        )))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            observe::track,
        ))
        // Outermost last: the id exists before the span that names it.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(observe::request_span)
                .on_request(())
                .on_response(())
                .on_body_chunk(())
                .on_eos(())
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER))
        .layer(SetRequestIdLayer::new(REQUEST_ID_HEADER, ids))
        .layer(axum::middleware::map_request(
            observe::drop_unusable_request_id,
        ))
        .with_state(state)
}
