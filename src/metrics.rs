//! Prometheus metrics, with the `prometheus` crate: HTTP (one middleware for every route,
//! labelled by route template), cache, store, Raft and forwarding. Values that live
//! elsewhere (cache counters, Raft state, file sizes) are read when `/metrics` is scraped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use tracing::Instrument;

use crate::api::Shared;

pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    pub db_operations: IntCounterVec,
    pub forwarded: IntCounterVec,
    pub forward_errors: IntCounterVec,
    cache_hits: IntCounter,
    cache_misses: IntCounter,
    cache_puts: IntCounter,
    cache_deletes: IntCounter,
    cache_evictions: IntCounter,
    cache_entries: IntGauge,
    uptime: Gauge,
    db_file_bytes: IntGaugeVec,
    raft: IntGaugeVec,
    peer_reachable: IntGaugeVec,
    peer_last_seen_age: IntGaugeVec,
    replication_lag: IntGaugeVec,
    quorum_ack_age: IntGaugeVec,
    elections: IntCounter,
    leader_changes: IntCounter,
    snapshot_installs: IntCounter,
    snapshots_built: IntCounter,
    /// Group commit: client writes per log entry, and an entry's time from proposal to
    /// applied on the leader.
    pub write_batch_commands: Histogram,
    pub write_batch_seconds: Histogram,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let r = Registry::new();
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by route template",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["method", "endpoint"],
        )
        .expect("valid metric");
        r.register(Box::new(http_duration.clone()))
            .expect("unique metric");
        let uptime = Gauge::new("service_uptime_seconds", "Seconds since the node started")
            .expect("valid metric");
        r.register(Box::new(uptime.clone())).expect("unique metric");
        let cache_entries =
            IntGauge::new("cache_entries", "Entries in the read cache").expect("valid metric");
        r.register(Box::new(cache_entries.clone()))
            .expect("unique metric");
        Arc::new(Metrics {
            http_requests: counter_vec(&r, "http_requests_total", "HTTP requests", &["method", "endpoint", "status"]),
            http_duration,
            db_operations: counter_vec(&r, "db_operations_total", "Store operations", &["operation"]),
            forwarded: counter_vec(&r, "forwarded_requests_total", "Requests sent to the leader", &["kind"]),
            forward_errors: counter_vec(&r, "forward_errors_total", "Failed requests to the leader", &["kind"]),
            cache_hits: counter(&r, "cache_hits_total", "Cache hits"),
            cache_misses: counter(&r, "cache_misses_total", "Cache misses (expired entries included)"),
            cache_puts: counter(&r, "cache_puts_total", "Cache fills"),
            cache_deletes: counter(&r, "cache_deletes_total", "Entries invalidated by applied writes"),
            cache_evictions: counter(&r, "cache_evictions_total", "Entries evicted (expired or over the cap)"),
            cache_entries,
            uptime,
            db_file_bytes: gauge_vec(&r, "db_file_bytes", "Size of the data files: log (log.redb), sm (sm.redb), wal (the log's segments)", &["file"]),
            raft: gauge_vec(
                &r,
                "raft_state",
                "Raft state of this node: term, is_leader, leader_id, last_log_index, committed_index, applied_index, snapshot_index, purged_index",
                &["field"],
            ),
            peer_reachable: gauge_vec(&r, "raft_peer_reachable", "1 if the last health check of the peer succeeded", &["peer"]),
            peer_last_seen_age: gauge_vec(&r, "raft_peer_last_seen_age_seconds", "Seconds since the peer last answered a health check", &["peer"]),
            replication_lag: gauge_vec(&r, "raft_replication_lag_entries", "Entries the peer is behind the leader's log (leader only)", &["peer"]),
            quorum_ack_age: gauge_vec(&r, "raft_quorum_ack_age_milliseconds", "Leader only: milliseconds since a quorum last acknowledged it (its heartbeat age)", &[]),
            elections: counter(&r, "raft_elections_total", "Elections this node has seen (each new term is one)"),
            leader_changes: counter(&r, "raft_leader_changes_total", "Times the leader this node knows of changed"),
            snapshot_installs: counter(&r, "raft_snapshot_installs_total", "Snapshots installed from a leader (a follower too far behind for the log)"),
            snapshots_built: counter(&r, "raft_snapshots_built_total", "Snapshots this node built of its own state (log compaction)"),
            write_batch_commands: histogram(&r, "raft_write_batch_commands", "Client writes per log entry proposed by group commit (leader only)",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]),
            write_batch_seconds: histogram(&r, "raft_write_batch_seconds", "Time from proposing a group-commit entry to its being applied (leader only)",
                vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
            registry: r,
        })
    }

    /// Count elections and leader changes as they happen (a scrape would miss the ones
    /// between two scrapes).
    pub fn watch_raft(self: &Arc<Self>, raft: cookie_raft::Raft) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut rx = raft.metrics();
            let (mut term, mut leader) = {
                let m = rx.borrow_and_update();
                (m.current_term, m.current_leader)
            };
            while rx.changed().await.is_ok() {
                let m = rx.borrow_and_update();
                if m.current_term > term {
                    this.elections.inc_by(m.current_term - term);
                    term = m.current_term;
                }
                if m.current_leader.is_some() && m.current_leader != leader {
                    this.leader_changes.inc();
                }
                if m.current_leader.is_some() {
                    leader = m.current_leader;
                }
            }
        });
    }

    /// Record one finished HTTP request.
    pub fn observe(&self, method: &str, endpoint: &str, status: u16, seconds: f64) {
        self.http_requests
            .with_label_values(&[method, endpoint, &status.to_string()])
            .inc();
        self.http_duration
            .with_label_values(&[method, endpoint])
            .observe(seconds);
    }

    /// Bring every scrape-time value up to date.
    async fn refresh(&self, state: &Shared) {
        let s = state.reader.cache().stats();
        let bump = |c: &IntCounter, v: u64| c.inc_by(v.saturating_sub(c.get()));
        bump(&self.cache_hits, s.hits);
        bump(&self.cache_misses, s.misses);
        bump(&self.cache_puts, s.puts);
        bump(&self.cache_deletes, s.deletes);
        bump(&self.cache_evictions, s.evictions);
        self.cache_entries.set(s.size as i64);
        let snaps = state.reader.snapshot_counts();
        bump(
            &self.snapshot_installs,
            snaps.installed.load(Ordering::Relaxed),
        );
        bump(&self.snapshots_built, snaps.built.load(Ordering::Relaxed));
        self.uptime.set(state.started.elapsed().as_secs_f64());
        for file in ["log", "sm"] {
            let path = state.cfg.data_dir.join(format!("{file}.redb"));
            let size = std::fs::metadata(path).map_or(0, |m| m.len());
            self.db_file_bytes
                .with_label_values(&[file])
                .set(size as i64);
        }
        let wal: u64 = std::fs::read_dir(state.cfg.data_dir.join("wal"))
            .map(|dir| {
                dir.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        self.db_file_bytes
            .with_label_values(&["wal"])
            .set(wal as i64);
        let committed = state
            .raft
            .with_raft_state(|st| st.committed.map_or(0, |l| l.index))
            .await
            .unwrap_or(0);
        let m = state.raft.metrics().borrow().clone();
        let idx = |l: Option<openraft::LogId<u64>>| l.map_or(0, |l| l.index) as i64;
        for (field, value) in [
            ("term", m.current_term as i64),
            ("is_leader", i64::from(m.current_leader == Some(state.me))),
            ("leader_id", m.current_leader.map_or(0, |l| l as i64)),
            ("last_log_index", m.last_log_index.unwrap_or(0) as i64),
            ("committed_index", committed as i64),
            ("applied_index", idx(m.last_applied)),
            ("snapshot_index", idx(m.snapshot)),
            ("purged_index", idx(m.purged)),
        ] {
            self.raft.with_label_values(&[field]).set(value);
        }
        let now = crate::monitor::unix_now();
        for (id, h) in state.monitor.snapshot() {
            let _ = id;
            self.peer_reachable
                .with_label_values(&[&h.name])
                .set(i64::from(h.ok));
            if let Some(seen) = h.last_seen {
                self.peer_last_seen_age
                    .with_label_values(&[&h.name])
                    .set(now.saturating_sub(seen) as i64);
            }
        }
        self.quorum_ack_age.reset();
        if let Some(age) = m.millis_since_quorum_ack {
            self.quorum_ack_age
                .with_label_values::<&str>(&[])
                .set(age as i64);
        }
        self.replication_lag.reset();
        if let Some(repl) = &m.replication {
            let last = m.last_log_index.unwrap_or(0);
            for (peer, matched) in repl {
                if *peer == state.me {
                    continue;
                }
                let name = crate::api::health::node_name(state, *peer);
                let lag = last.saturating_sub(matched.map_or(0, |l| l.index));
                self.replication_lag
                    .with_label_values(&[&name])
                    .set(lag as i64);
            }
        }
    }

    fn encode(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(buf)
    }
}

/// `GET /metrics` in the Prometheus text format.
pub async fn scrape(State(state): State<Shared>) -> Response {
    state.metrics.refresh(&state).await;
    match state.metrics.encode() {
        Ok(body) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The id of one request, from `X-Request-Id` or made here; forwarded with writes so one
/// write can be followed across nodes.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

pub const REQUEST_ID_HEADER: &str = "x-request-id";

fn request_id(req: &Request, cfg: &crate::config::Config) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let given = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128);
    match given {
        Some(id) => id.to_owned(),
        None => {
            let started = crate::monitor::unix_now();
            format!(
                "{}-{started:x}-{:x}",
                cfg.name(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            )
        }
    }
}

/// The one middleware around every route: it gives the request an id (returned in
/// `X-Request-Id`), runs it inside a span with method, route and id, logs status and
/// latency (at debug: an access log costs too much at these rates to be on by default),
/// and records the HTTP metrics. The endpoint label is the route template
/// (`/cookies/{cookie}`), never the raw path, so the label set stays bounded.
pub async fn track(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let id = request_id(&req, &state.cfg);
    req.extensions_mut().insert(RequestId(id.clone()));
    let span =
        tracing::info_span!("request", method = %method, route = %endpoint, request_id = %id);
    let mut resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    let elapsed = start.elapsed();
    span.in_scope(|| {
        tracing::debug!(
            status,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request done"
        )
    });
    state
        .metrics
        .observe(&method, &endpoint, status, elapsed.as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}
