//! The routes of the two listeners, the client API's and the peers', and the layers around them.

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use cookie_raft::identity::{self, INCARNATION_HEADER};
use std::time::Duration;
use tower::ServiceBuilder;
use tower_http::set_header::SetResponseHeaderLayer;

use super::body_timeout::BodyTimeoutLayer;
use super::error::ApiError;
use super::observe::{
    self, CatchPanicLayer, NodeRequestIds, PropagateRequestIdLayer, SetRequestIdLayer, TraceLayer,
    Tracked, REQUEST_ID_HEADER,
};
use super::routes::{Routes, Template};
use super::state::Shared;
use super::{
    auth, backup, cache, cookies, health, members, openapi, peer_gate, peer_rpc, raft_rpc, status,
};
use crate::cluster::proto::{
    APPEND_PATH, CACHE_PATH, CLUSTER_PATH, HANDOVER_PATH, HEALTH_PATH, MEMBERSHIP_PATH,
    READ_INDEX_PATH, SNAPSHOT_PATH, VOTE_PATH, WRITE_PATH,
};
use crate::cluster::prove::PROVE_PATH;

/// Raft RPC bodies carry snapshot chunks and batches of entries: far above the API limit.
const RAFT_BODY_LIMIT: usize = cookie_raft::network::MAX_PEER_BODY_BYTES;

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

async fn not_found() -> ApiError {
    ApiError::RouteNotFound
}

/// Unlisted methods answer 405 JSON.
fn with_405(r: MethodRouter<Shared>) -> MethodRouter<Shared> {
    r.fallback(method_not_allowed)
}

/// [`with_405`] for a route the original API refuses HEAD on, which axum would otherwise
/// answer with the GET handler. `allow` names the methods the route takes: axum's own
/// `Allow` would list HEAD with every GET, and a 405's `Allow` must list only what is
/// served (RFC 9110, 15.5.6).
fn refusing_head(r: MethodRouter<Shared>, allow: &'static str) -> MethodRouter<Shared> {
    let refuse = move || async move {
        (
            [(axum::http::header::ALLOW, allow)],
            ApiError::MethodNotAllowed,
        )
            .into_response()
    };
    r.head(refuse).fallback(refuse)
}

/// The peer listener's routes (api.md section 9): Raft's RPCs, forwarded writes and
/// read-index requests, and the JSON documents peers probe (bootstrap's `/cluster`, the
/// health monitor's `/health`, `/cache`'s per-node statistics). Every one needs the peer
/// credential; nothing of the client API is here.
pub fn peer_router(state: Shared) -> Router {
    let routes = Routes::default()
        .route(APPEND_PATH, with_405(post(raft_rpc::append)))
        .route(VOTE_PATH, with_405(post(raft_rpc::vote)))
        .route(SNAPSHOT_PATH, with_405(post(raft_rpc::snapshot)))
        .route(WRITE_PATH, with_405(post(peer_rpc::forwarded_write)))
        .route(READ_INDEX_PATH, with_405(post(peer_rpc::read_index)))
        .route(MEMBERSHIP_PATH, with_405(post(peer_rpc::membership)))
        .route(HANDOVER_PATH, with_405(post(peer_rpc::handover)))
        .route(PROVE_PATH, with_405(get(peer_rpc::prove)))
        .route(CLUSTER_PATH, with_405(get(health::cluster)))
        .route(HEALTH_PATH, with_405(get(health::health)))
        .route(CACHE_PATH, with_405(get(cache::local_cache_stats)));
    let outer = Outer {
        // Every answer to a peer, refusals included, names this node's incarnation: that is
        // how a leader learns a new member's before the registry has it.
        incarnation: Some(SetResponseHeaderLayer::overriding(
            HeaderName::from_static(INCARNATION_HEADER),
            HeaderValue::from_str(&identity::hex(state.cluster.identity.own()))
                .expect("hex digits are a valid header value"),
        )),
        // Raft's RPCs carry snapshot chunks and batches of entries (the probes no body).
        body_limit: Some(DefaultBodyLimit::max(RAFT_BODY_LIMIT)),
    };
    observed(routes, state, Gate::PeerCredential, outer)
}

/// The client listener's routes: the public API only. `/raft/*` is not here (404).
pub fn client_router(state: Shared) -> Router {
    let routes = Routes::default()
        .route("/", with_405(get(status::page)))
        .route(
            "/cookies",
            refusing_head(get(cookies::list).post(cookies::create), "GET, POST"),
        )
        .route(
            "/cookies/{cookie}",
            refusing_head(
                get(cookies::get_one)
                    .post(cookies::create_with_path)
                    .put(cookies::update)
                    .delete(cookies::delete),
                "GET, POST, PUT, DELETE",
            ),
        )
        .route(
            CACHE_PATH,
            refusing_head(
                get(cache::get_cache).delete(cache::clear_cache),
                "GET, DELETE",
            ),
        )
        .route("/metrics", with_405(get(observe::scrape)))
        .route(HEALTH_PATH, with_405(get(health::health)))
        .route("/ready", with_405(get(health::ready)))
        .route(CLUSTER_PATH, with_405(get(health::cluster)))
        .route(
            "/cluster/members",
            refusing_head(get(members::list).post(members::add), "GET, POST"),
        )
        .route(
            "/cluster/members/{id}",
            with_405(axum::routing::delete(members::remove)),
        )
        .route(
            "/cluster/members/{id}/promote",
            with_405(post(members::promote)),
        )
        .route("/admin/backup", refusing_head(get(backup::backup), "GET"))
        .route("/openapi.json", with_405(get(openapi::document)));
    let outer = Outer {
        incarnation: None,
        body_limit: None,
    };
    observed(routes, state, Gate::ClientToken, outer)
}

/// What a listener checks before a routed request reaches its handler.
#[derive(Clone, Copy)]
enum Gate {
    /// The client's token and its role, when `client_tokens` are configured ([`auth`]).
    ClientToken,
    /// The peer credential ([`peer_gate`]).
    PeerCredential,
}

/// The listener's own layers, outside all the others.
struct Outer {
    incarnation: Option<SetResponseHeaderLayer<HeaderValue>>,
    body_limit: Option<DefaultBodyLimit>,
}

/// The layers every listener has, stacked once around its whole router (not around each
/// route, which axum clones for every request: `routes.rs`), outermost first:
/// - the route template and the request id: tagged before anything reads them;
/// - the span, which names both;
/// - [`front`]: the metrics, then the listener's credential check (so a 401 is counted),
///   for routed requests only (an unknown path is 404 to everyone, and not counted);
/// - the body timeout: a body that does not arrive in time (a client's whole body, a peer's
///   next frame) ends with an error the handlers answer 408;
/// - the panic catcher, innermost: a panic becomes a 500 that the metrics still count.
fn observed(routes: Routes<Shared>, state: Shared, gate: Gate, outer: Outer) -> Router {
    let (router, table) = routes.finish(not_found);
    let ids = NodeRequestIds::new(&state.cfg.name());
    let body_timeout = Duration::from_millis(state.cfg.http.body_timeout_ms);
    let front_state = Front {
        state: state.clone(),
        gate,
    };
    let stack = ServiceBuilder::new()
        .option_layer(outer.incarnation)
        .option_layer(outer.body_limit)
        .map_request(move |mut req: Request| {
            observe::drop_unusable_request_id(&mut req);
            if let Some(template) = table.template(req.uri().path()) {
                req.extensions_mut().insert(template);
            }
            req
        })
        .layer(SetRequestIdLayer::new(REQUEST_ID_HEADER, ids))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(observe::request_span)
                .on_request(())
                .on_response(())
                .on_body_chunk(())
                .on_eos(())
                .on_failure(()),
        )
        .layer(axum::middleware::from_fn_with_state(front_state, front))
        .layer(match gate {
            Gate::ClientToken => BodyTimeoutLayer::whole(body_timeout),
            Gate::PeerCredential => BodyTimeoutLayer::between_frames(body_timeout),
        })
        .layer(CatchPanicLayer::custom(observe::panic_reply))
        .service(router.with_state(state));
    Router::new().fallback_service(stack)
}

/// What [`front`] needs.
#[derive(Clone)]
struct Front {
    state: Shared,
    gate: Gate,
}

/// A routed request's metrics around its credential check and its handler.
async fn front(State(front): State<Front>, req: Request, next: Next) -> Response {
    let Some(&template) = req.extensions().get::<Template>() else {
        return next.run(req).await;
    };
    let peer = matches!(front.gate, Gate::PeerCredential);
    let tracked = Tracked::start(&req, template, peer, &front.state);
    let checked = match front.gate {
        Gate::ClientToken => auth::check(&front.state, &req).map_err(IntoResponse::into_response),
        // The identity challenge proves the secret without it (`cluster::prove`).
        Gate::PeerCredential if template.0 == PROVE_PATH => Ok(()),
        Gate::PeerCredential => {
            peer_gate::check(&front.state, req.headers()).map_err(IntoResponse::into_response)
        }
    };
    let resp = match checked {
        Ok(()) => next.run(req).await,
        Err(refused) => refused,
    };
    tracked.finish(&resp);
    resp
}
