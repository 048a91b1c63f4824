//! Observability at the HTTP edge: request ids, one tracing span per request, the request
//! metrics by route template, a panic catcher, and `GET /metrics`.
//!
//! The layers come from `tower-http`: [`SetRequestIdLayer`] keeps a client's
//! `X-Request-Id` (or makes one, `<node>-<unix secs hex>-<seq hex>`) and
//! [`PropagateRequestIdLayer`] echoes it; [`TraceLayer`] runs the request in a span with
//! method, route and id, so every log line a request causes (on the leader too, for a
//! forwarded write) names it; [`CatchPanicLayer`] answers 500 JSON instead of dropping the
//! connection. [`Tracked`] records `http_requests_total` and the latency histogram labelled
//! by route template (`/cookies/{cookie}`, never the raw path, so the label set stays
//! bounded). `router.rs` stacks them, once around each listener's router.

use std::any::Any;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tower_http::request_id::{MakeRequestId, RequestId};

pub use tower_http::catch_panic::CatchPanicLayer;
pub use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
pub use tower_http::trace::TraceLayer;

use super::error::ApiError;
use super::routes::Template;
use super::state::Shared;
use crate::clock::unix_now;
use crate::metrics::FinishedRequest;

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-chosen request id kept; a longer (or empty) one is replaced by ours.
const MAX_REQUEST_ID: usize = 128;

/// Makes this node's request ids: `<node name>-<unix seconds, hex>-<sequence, hex>`.
#[derive(Clone)]
pub struct NodeRequestIds {
    node: Arc<str>,
    seq: Arc<AtomicU64>,
}

impl NodeRequestIds {
    pub fn new(node: &str) -> Self {
        NodeRequestIds {
            node: node.into(),
            seq: Arc::default(),
        }
    }
}

impl MakeRequestId for NodeRequestIds {
    fn make_request_id<B>(&mut self, _req: &axum::http::Request<B>) -> Option<RequestId> {
        let id = format!(
            "{}-{:x}-{:x}",
            self.node,
            unix_now(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

/// A client's request id is kept when it is 1 to [`MAX_REQUEST_ID`] characters of a safe set
/// (letters, digits, `-_.:/+=@`): it goes into logs and into the leader's log through
/// forwarding, so no spaces, quotes or control characters.
fn usable_request_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(b))
}

/// Drop a client's `X-Request-Id` we will not carry (empty, too long, unsafe characters),
/// so the node makes its own instead. Runs before [`SetRequestIdLayer`].
pub fn drop_unusable_request_id(req: &mut Request) {
    let usable = req
        .headers()
        .get(&REQUEST_ID_HEADER)
        .map(|v| usable_request_id(v.as_bytes()));
    if usable == Some(false) {
        req.headers_mut().remove(&REQUEST_ID_HEADER);
    }
}

/// The request's id, as a handler argument (empty only if the id layer is missing).
pub struct ReqId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ReqId {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let id = parts
            .extensions
            .get::<RequestId>()
            .and_then(|r| r.header_value().to_str().ok())
            .unwrap_or_default();
        Ok(ReqId(id.to_owned()))
    }
}

/// The span every request runs in: method, route template and request id.
pub fn request_span(req: &axum::http::Request<Body>) -> tracing::Span {
    let route = req
        .extensions()
        .get::<Template>()
        .map_or("unmatched", |t| t.0);
    let id = req
        .extensions()
        .get::<RequestId>()
        .and_then(|r| r.header_value().to_str().ok())
        .unwrap_or_default();
    tracing::info_span!("request", method = %req.method(), route = %route, request_id = %id)
}

/// A handler that panicked: 500 with the usual JSON error; the node goes on serving.
pub fn panic_reply(panic: Box<dyn Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown");
    tracing::error!(panic = what, "a request handler panicked");
    ApiError::Internal("Internal server error".into()).into_response()
}

/// The metrics of one routed request: started as it arrives, recorded with its answer; its
/// status and latency are logged at debug (an access log costs too much at these rates to
/// be on by default). A request whose client goes away before the answer (its handler is
/// dropped) is recorded as 499, as nginx does: it went uncounted, so clients that give up
/// sooner than the node's timeouts hid an outage from the error-ratio alerts and their
/// slowest requests from the latency histogram (found in review).
pub struct Tracked {
    started: Instant,
    method: &'static str,
    route: &'static str,
    peer: bool,
    /// Until the answer is recorded; then None.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// Not an HTTP status: nginx's "client closed request", for a request nobody waited for.
const CLIENT_CLOSED: u16 = 499;

impl Tracked {
    pub fn start(req: &Request, route: Template, peer: bool, state: &Shared) -> Tracked {
        // Made-up methods are one label value, not one each (issue 13: 300 of them added
        // ~450 kB to every scrape, forever).
        let method = match *req.method() {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::DELETE => "DELETE",
            Method::HEAD => "HEAD",
            Method::OPTIONS => "OPTIONS",
            Method::PATCH => "PATCH",
            Method::TRACE => "TRACE",
            Method::CONNECT => "CONNECT",
            _ => "other",
        };
        Tracked {
            started: Instant::now(),
            method,
            route: route.0,
            peer,
            metrics: Some(state.metrics.clone()),
        }
    }

    pub fn finish(mut self, resp: &Response) {
        self.record(resp.status());
    }

    fn record(&mut self, status: StatusCode) {
        let Some(metrics) = self.metrics.take() else {
            return;
        };
        let elapsed = self.started.elapsed();
        tracing::debug!(
            status = status.as_u16(),
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request done"
        );
        metrics.observe(&FinishedRequest {
            method: self.method,
            route: self.route,
            status,
            seconds: elapsed.as_secs_f64(),
            peer: self.peer,
        });
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.metrics.is_some() {
            let gone = StatusCode::from_u16(CLIENT_CLOSED).expect("499 is in range");
            self.record(gone);
        }
    }
}

/// Bring every scrape-time value up to date: what lives in the cache, the store, Raft, the
/// data directory and the health monitor.
async fn refresh(state: &Shared) {
    let m = &state.metrics;
    m.set_cache(&state.reader.cache().stats());
    let snaps = state.reader.snapshot_counts();
    m.set_snapshot_counts(snaps);
    m.set_flush_stats(&state.reader.flush_stats(), state.reader.applied_index());
    if let Ok(keys) = state.reader.key_count() {
        m.set_idempotency_keys(keys);
    }
    m.set_uptime(state.started.elapsed().as_secs_f64());
    // One walk of the data directory gives the total and each store's share.
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(&state.cfg.data_dir) {
        for (name, bytes) in entries.flatten().filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((e.file_name(), entry_bytes(&e.path(), &meta)))
        }) {
            total += bytes;
            match name.to_str() {
                Some("log.redb") => m.set_file_bytes("log", bytes),
                Some("sm.redb") => m.set_file_bytes("sm", bytes),
                Some("wal") => m.set_file_bytes("wal", bytes),
                _ => {}
            }
        }
    }
    let dirs = state.cfg.dirs();
    if dirs.wal_apart() {
        let wal = std::fs::metadata(&dirs.wal).map_or(0, |meta| entry_bytes(&dirs.wal, &meta));
        m.set_file_bytes("wal", wal);
        total += wal;
    }
    m.set_data_dir_bytes(total);
    if let Ok(space) = cookie_raft::durable::space(&state.cfg.data_dir) {
        m.set_data_dir_space(space);
    }
    if let Ok(space) = cookie_raft::durable::space(&dirs.wal) {
        m.set_wal_dir_space(space);
    }
    m.set_short_of_reserve(state.writer.room().short());

    let raft = &state.cluster.raft;
    let committed = raft
        .with_raft_state(|st| st.committed.map_or(0, |l| l.index))
        .await
        .unwrap_or(0);
    let rm = raft.metrics().borrow().clone();
    m.set_raft(&rm, state.cluster.me, committed);
    m.set_snapshot_sizes(
        snaps.state_bytes.load(Ordering::Relaxed),
        state
            .log_size
            .bytes_after(rm.snapshot.map_or(0, |l| l.index)),
    );

    let now = unix_now();
    m.set_peer_health(
        state
            .monitor
            .snapshot()
            .into_values()
            .map(|h| (h.name, h.ok, h.last_seen.map(|s| now.saturating_sub(s)))),
    );
    let last = rm.last_log_index.unwrap_or(0);
    let lags = rm
        .replication
        .iter()
        .flatten()
        .filter(|(peer, _)| **peer != state.cluster.me);
    m.set_replication_lag(lags.map(|(peer, matched)| {
        let lag = last.saturating_sub(matched.map_or(0, |l| l.index));
        (state.cluster.node_name(*peer), lag)
    }));
}

/// The bytes of a file, or of every file under a directory; what cannot be read counts 0.
/// Symbolic links are not followed.
fn entry_bytes(path: &std::path::Path, meta: &std::fs::Metadata) -> u64 {
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() {
        return 0;
    }
    std::fs::read_dir(path).map_or(0, |entries| {
        entries
            .flatten()
            .filter_map(|e| Some(entry_bytes(&e.path(), &e.metadata().ok()?)))
            .sum()
    })
}

/// `GET /metrics` in the Prometheus text format.
pub async fn scrape(State(state): State<Shared>) -> Response {
    refresh(&state).await;
    match state.metrics.encode() {
        Ok(body) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    /// The id and panic layers as the router stacks them, around two plain routes.
    fn app() -> Router {
        Router::new()
            .route(
                "/boom",
                get(|| async {
                    if true {
                        panic!("handler bug");
                    }
                    "unreachable"
                }),
            )
            .route("/ok", get(|| async { "ok" }))
            .layer(CatchPanicLayer::custom(panic_reply))
            .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER))
            .layer(SetRequestIdLayer::new(
                REQUEST_ID_HEADER,
                NodeRequestIds::new("node7"),
            ))
            .layer(tower::util::MapRequestLayer::new(|mut req: Request| {
                drop_unusable_request_id(&mut req);
                req
            }))
    }

    async fn call_on(app: &Router, path: &str, id: Option<&str>) -> Response {
        let mut req = axum::http::Request::get(path);
        if let Some(id) = id {
            req = req.header(&REQUEST_ID_HEADER, id);
        }
        app.clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn call(path: &str, id: Option<&str>) -> Response {
        call_on(&app(), path, id).await
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_json_and_keeps_the_request_id() {
        let resp = call("/boom", Some("trace-1")).await;
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(resp.headers()[&REQUEST_ID_HEADER], "trace-1");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "Internal server error");
    }

    #[tokio::test]
    async fn request_ids_are_kept_when_usable_and_made_otherwise() {
        let resp = call("/ok", Some("client-id-42")).await;
        assert_eq!(resp.headers()[&REQUEST_ID_HEADER], "client-id-42");
        let long = "x".repeat(MAX_REQUEST_ID + 1);
        for unusable in [
            None,
            Some(""),
            Some(&*long),
            Some("a b"),
            Some("a\"b"),
            Some("<x>"),
        ] {
            let resp = call("/ok", unusable).await;
            let id = resp.headers()[&REQUEST_ID_HEADER]
                .to_str()
                .unwrap()
                .to_owned();
            assert!(id.starts_with("node7-"), "{id}");
            assert_eq!(id.split('-').count(), 3, "{id}");
        }
        // One node's ids differ request by request (the clones share the sequence).
        let app = app();
        let a = call_on(&app, "/ok", None).await.headers()[&REQUEST_ID_HEADER].clone();
        let b = call_on(&app, "/ok", None).await.headers()[&REQUEST_ID_HEADER].clone();
        assert_ne!(a, b);
    }
}
