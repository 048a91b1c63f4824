//! The node's Prometheus registry (the `prometheus` crate): every metric the node exports,
//! with setters for the values that live elsewhere (cache counters, Raft state, file sizes),
//! which the `/metrics` handler gathers when it is scraped.
//!
//! A leaf: it imports nothing from the rest of this crate, so every layer may record into
//! it without a cycle. Who measures what: the HTTP layer (requests by route template,
//! store operations, the scrape-time values), the write path (group-commit batches,
//! forwarding), the read path (read-index forwarding), the peer RPCs (refused snapshots).
//!
//! Besides its own metrics the registry carries the `process_*` series of the prometheus
//! crate's process collector (resident memory, CPU seconds, open and maximum file
//! descriptors, threads; Linux only) and `cookie_crud_build_info{version, commit}`, always
//! 1: the package version and the commit `build.rs` found.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use cookie_raft::{CacheStats, NodeId, Raft};
use openraft::{LogId, RaftMetrics};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// One finished HTTP request, as the request metrics label it.
pub struct FinishedRequest<'a> {
    pub method: &'a str,
    /// The route template (`/cookies/{cookie}`), never the raw path.
    pub route: &'a str,
    pub status: axum::http::StatusCode,
    pub seconds: f64,
    /// Came to the peer listener: counted apart (`peer_http_*`), so that node-to-node
    /// traffic (an idle follower's ~4.5 requests a second) does not dilute the client
    /// API's error ratios, nor a peer's `/cache` its latency (found in review).
    pub peer: bool,
}

/// Every metric of one node.
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    peer_http_requests: IntCounterVec,
    peer_http_duration: HistogramVec,
    pub db_operations: IntCounterVec,
    pub forwarded: IntCounterVec,
    pub forward_errors: IntCounterVec,
    cache_hits: IntCounter,
    cache_misses: IntCounter,
    cache_puts: IntCounter,
    cache_deletes: IntCounter,
    cache_evictions: IntCounter,
    cache_entries: IntGauge,
    cache_bytes: IntGauge,
    uptime: Gauge,
    db_file_bytes: IntGaugeVec,
    raft: IntGaugeVec,
    peer_reachable: IntGaugeVec,
    peer_last_seen_age: IntGaugeVec,
    replication_lag: IntGaugeVec,
    quorum_ack_age: IntGaugeVec,
    elections: IntCounter,
    leader_changes: IntCounter,
    membership_changes: IntCounter,
    members: IntGaugeVec,
    snapshot_installs: IntCounter,
    snapshot_install_failures: IntCounterVec,
    snapshots_built: IntCounter,
    snapshot_builds_postponed: IntCounter,
    /// What the snapshot policy weighs (`cluster::snapshots`).
    snapshot_state_bytes: IntGauge,
    log_bytes_since_snapshot: IntGauge,
    data_dir_bytes: IntGauge,
    data_dir_free_bytes: IntGauge,
    data_dir_capacity_bytes: IntGauge,
    wal_dir_free_bytes: IntGauge,
    wal_dir_capacity_bytes: IntGauge,
    data_dir_short_of_reserve: IntGauge,
    /// The state machine's write-behind layers (`cookie_raft::sm::overlay`).
    sm_flushes: IntCounter,
    sm_flush_failures: IntCounter,
    sm_flushes_postponed: IntCounter,
    sm_flushes_behind: IntCounter,
    sm_ids_scans: IntCounter,
    sm_repacks: IntCounter,
    sm_repacks_abandoned: IntCounter,
    sm_unflushed_entries: IntGauge,
    idempotency_keys: IntGauge,
    sm_last_flush_seconds: Gauge,
    /// Group commit: client writes per log entry, and an entry's time from proposal to
    /// applied on the leader.
    pub write_batch_commands: Histogram,
    pub write_batch_seconds: Histogram,
    pub write_queue_seconds: Histogram,
    /// How many batches group commit may keep in flight now (`write/window.rs`).
    pub write_batches_allowed: IntGauge,
    /// The idle share of the node's CPU that group commit last sampled (`cookie_raft::idle`).
    pub write_cpu_idle: Gauge,
    /// 1 while that share counts as CPU to spare (`cookie_raft::idle::SpareCpu`).
    pub write_cpu_spare: IntGauge,
    /// Writes group commit dropped before proposing them: their client was gone or their
    /// deadline had passed while they waited.
    pub write_dropped: IntCounter,
    /// How long group commit held batches for the writers of the last answered one
    /// (`write/regather.rs`).
    pub write_regather_seconds: Histogram,
    /// Each answered Raft RPC this node sent, by peer and RPC (`raft::network::RpcTimer`).
    peer_rpc_seconds: HistogramVec,
    /// Appends that reached this node while another was being answered, and those held
    /// for the one sent ahead of them (`http::append_lane`).
    pub append_overlapped: IntCounter,
    append_early: IntCounterVec,
    /// How long this node took to answer an append with entries (`http::raft_rpc`).
    pub append_answer_seconds: Histogram,
    /// Entries appends carried (`raft_append_entries_received_total`): past this node's
    /// log, and at indexes it had reached. The two series are looked up once, here, not per
    /// append.
    append_entries_new: IntCounter,
    append_entries_held: IntCounter,
    /// The certificates served (`tls::watch`): when each expires, whether its files on disk
    /// were refused, and each reload.
    tls_expiry: IntGaugeVec,
    tls_files_refused: IntGaugeVec,
    tls_reloads: IntCounterVec,
}

/// Buckets of the Raft RPC timers, sent and answered: from 100 µs (a round on loopback) to
/// 5 s (a node in trouble).
const RPC_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

fn histogram_vec(r: &Registry, opts: HistogramOpts, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(opts, labels).expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn int_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn float_gauge(r: &Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
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

/// Why a snapshot sent by a leader was not installed: the label values of
/// `raft_snapshot_install_failures_total`, each exported from the start (at 0) so that a
/// rate over it is defined before the first failure.
pub const SNAPSHOT_INSTALL_FAILURES: [&str; 4] = ["too_large", "invalid", "storage", "stopped"];

/// The commit this binary was built from (`build.rs`: `SOURCE_COMMIT`, else git, else
/// `unknown`).
pub const BUILD_COMMIT: &str = env!("BUILD_COMMIT");

/// `cookie_crud_build_info{version, commit} 1`, and on Linux the process collector.
fn register_process_and_build(r: &Registry) {
    let info = gauge_vec(
        r,
        "cookie_crud_build_info",
        "Always 1: the version and commit this node was built from",
        &["version", "commit"],
    );
    info.with_label_values(&[env!("CARGO_PKG_VERSION"), BUILD_COMMIT])
        .set(1);
    #[cfg(target_os = "linux")]
    r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))
    .expect("unique metric");
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let r = Registry::new();
        register_process_and_build(&r);
        cookie_raft::stages::register(&r).expect("unique metric");
        let append_entries = counter_vec(&r, "raft_append_entries_received_total", "Log entries AppendEntries carried to this node, by log: new (past its last log index when the append arrived), already_held (at an index its log had reached: the leader sent them again, after a lost answer, a probe or a round that failed; a steady rise is bandwidth spent twice) (follower only)", &["log"]);
        let snapshot_install_failures = counter_vec(
            &r,
            "raft_snapshot_install_failures_total",
            "Snapshots from a leader this node refused or failed to install, by reason: too_large (over max_snapshot_bytes), invalid (does not decode), storage (writing it to disk failed), stopped (Raft stopped or failed installing it)",
            &["reason"],
        );
        for reason in SNAPSHOT_INSTALL_FAILURES {
            snapshot_install_failures.with_label_values(&[reason]);
        }
        let http_requests = counter_vec(
            &r,
            "http_requests_total",
            "Client API requests (499: the client went away before the answer)",
            &["method", "endpoint", "status"],
        );
        // The writes' 507 series exist from the start, at 0: an alert's increase() counts
        // nothing of a series' first sample, so the first refusals, exported only once made,
        // went unseen (found in review: three 507s, CookieCrudWritesRefusedForRoom silent).
        for (method, endpoint) in [
            ("POST", "/cookies"),
            ("POST", "/cookies/{cookie}"),
            ("PUT", "/cookies/{cookie}"),
        ] {
            http_requests.with_label_values(&[method, endpoint, "507"]);
        }
        let http_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let http_duration = histogram_vec(
            &r,
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Client API request latency by route template",
            )
            .buckets(http_buckets.clone()),
            &["method", "endpoint"],
        );
        let peer_http_duration = histogram_vec(
            &r,
            HistogramOpts::new(
                "peer_http_request_duration_seconds",
                "Peer listener request latency by route template",
            )
            .buckets(http_buckets),
            &["method", "endpoint"],
        );
        Arc::new(Metrics {
            tls_expiry: gauge_vec(&r, "tls_certificate_expiry_timestamp_seconds", "When the certificate this node serves expires (its notAfter, Unix seconds), by certificate: client (the client listener's) or peer (the peer listener's and outgoing peer calls')", &["certificate"]),
            tls_files_refused: gauge_vec(&r, "tls_certificate_files_refused", "1 while the certificate files on disk changed and were refused (the log says why): the certificate loaded before is still served", &["certificate"]),
            tls_reloads: counter_vec(&r, "tls_certificate_reloads_total", "Certificate files that changed on disk and were loaded or refused, by certificate and result", &["certificate", "result"]),
            http_requests,
            http_duration,
            peer_http_requests: counter_vec(&r, "peer_http_requests_total", "Peer listener requests (499: the peer went away before the answer)", &["method", "endpoint", "status"]),
            peer_http_duration,
            db_operations: counter_vec(&r, "db_operations_total", "Store operations", &["operation"]),
            forwarded: counter_vec(&r, "forwarded_requests_total", "Requests sent to the leader", &["kind"]),
            forward_errors: counter_vec(&r, "forward_errors_total", "Failed requests to the leader", &["kind"]),
            cache_hits: counter(&r, "cache_hits_total", "Cache hits"),
            cache_misses: counter(&r, "cache_misses_total", "Cache misses (expired entries included)"),
            cache_puts: counter(&r, "cache_puts_total", "Cache fills"),
            cache_deletes: counter(&r, "cache_deletes_total", "Entries invalidated by applied writes"),
            cache_evictions: counter(&r, "cache_evictions_total", "Entries evicted (expired or over the cap)"),
            cache_entries: int_gauge(&r, "cache_entries", "Entries in the read cache"),
            cache_bytes: int_gauge(&r, "cache_bytes", "Bytes of ids and JSON in the read cache"),
            uptime: float_gauge(&r, "service_uptime_seconds", "Seconds since the node started"),
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
            membership_changes: counter(&r, "raft_membership_changes_total", "Membership configurations this node has seen take effect (a change through joint consensus is two)"),
            members: gauge_vec(&r, "raft_members", "Members in the membership this node knows, by role: voter, learner", &["role"]),
            snapshot_installs: counter(&r, "raft_snapshot_installs_total", "Snapshots installed from a leader (a follower too far behind for the log)"),
            snapshot_install_failures,
            data_dir_bytes: int_gauge(&r, "data_dir_bytes", "Bytes of every file of the node: the log, the state machine, the snapshots under the data directory, and the WAL wherever storage.wal_dir puts it"),
            data_dir_free_bytes: int_gauge(&r, "data_dir_free_bytes", "Bytes free to this node on the filesystem holding its data directory: at 0 its writes fail and the node stops"),
            data_dir_capacity_bytes: int_gauge(&r, "data_dir_capacity_bytes", "Size of the filesystem holding the data directory"),
            wal_dir_free_bytes: int_gauge(&r, "wal_dir_free_bytes", "Bytes free to this node on the filesystem holding its WAL (storage.wal_dir; the data directory's own unless set apart): at 0 its appends fail and the node stops"),
            wal_dir_capacity_bytes: int_gauge(&r, "wal_dir_capacity_bytes", "Size of the filesystem holding the WAL"),
            data_dir_short_of_reserve: int_gauge(&r, "data_dir_short_of_reserve", "1 while this node's disk (or the WAL's, where storage.wal_dir sets it apart) has less free than storage.write_reserve_bytes beyond what it has yet to write: the leader refuses creates and updates while its own or a voter's is"),
            snapshots_built: counter(&r, "raft_snapshots_built_total", "Snapshots this node built of its own state (log compaction)"),
            snapshot_builds_postponed: counter(&r, "raft_snapshot_builds_postponed_total", "Snapshot builds put off for want of disk room (the current snapshot kept, the log not purged)"),
            snapshot_state_bytes: int_gauge(&r, "raft_snapshot_state_bytes", "Uncompressed bytes of the last snapshot this node built (0 until it builds one): the state a build reads"),
            log_bytes_since_snapshot: int_gauge(&r, "raft_log_bytes_since_snapshot", "Bytes of log after the last snapshot's index: a build is due once they reach raft.snapshot_log_ratio times raft_snapshot_state_bytes (and raft.snapshot_logs entries)"),
            sm_flushes: counter(&r, "raft_sm_flushes_total", "Layers of applied changes written to sm.redb by the state machine's flush thread"),
            sm_flush_failures: counter(&r, "raft_sm_flush_failures_total", "Failed writes of applied changes to sm.redb (the node stops on the first: cluster/failstop.rs)"),
            sm_flushes_behind: counter(&r, "raft_sm_flushes_behind_total", "Writes of applied changes to sm.redb made at the normal priority instead of the flush thread's low one, because the thread was behind apply (a layer's worth applied during its last write, or apply waited for it): the node's CPU is short for its write rate"),
            sm_flushes_postponed: counter(&r, "raft_sm_flushes_postponed_total", "Writes of applied changes to sm.redb put off because the disk had no room for them (tried again every 250 ms; apply waits once the layers reach their memory bound)"),
            sm_ids_scans: counter(&r, "raft_sm_ids_scans_total", "Scans of sm.redb that built the filter of stored ids (at start, after an install, and when most ids added are of removed records; a growing store grows the filter without one)"),
            sm_repacks: counter(&r, "raft_sm_repacks_total", "Rewrites of sm.redb as a packed copy of itself once the node was at rest (storage.repack_idle_ms)"),
            sm_repacks_abandoned: counter(&r, "raft_sm_repacks_abandoned_total", "Packed copies of sm.redb given up because writes resumed (or a snapshot or an install needed the file) during the copy"),
            sm_unflushed_entries: int_gauge(&r, "raft_sm_unflushed_entries", "Entries applied but not yet written to sm.redb: what a restart applies again from the log"),
            idempotency_keys: int_gauge(&r, "idempotency_keys", "Idempotency keys this node's state holds (each with its first answer), until their expiry is applied: a few seconds after idempotency_retention_secs"),
            sm_last_flush_seconds: float_gauge(&r, "raft_sm_last_flush_seconds", "How long the last write of applied changes to sm.redb took"),
            write_batch_commands: histogram(&r, "raft_write_batch_commands", "Client writes per log entry proposed by group commit (leader only)",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]),
            write_batch_seconds: histogram(&r, "raft_write_batch_seconds", "Time from proposing a group-commit batch (one entry, or several back to back where writes share a record) to its last entry being applied (leader only)",
                vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
            write_queue_seconds: histogram(&r, "raft_write_queue_seconds", "Time a client write waited in group commit's queue before it was taken into a batch (leader only)",
                vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
            write_batches_allowed: int_gauge(&r, "raft_write_batches_allowed", "Batches group commit may keep in flight now: batch.max_inflight while few writes are outstanding or batch.pipeline_idle_above of the CPU is idle, else 1 (leader only)"),
            write_cpu_idle: float_gauge(&r, "raft_write_cpu_idle_ratio", "Share of the CPU this node may use that sat idle over the last half second, as group commit last sampled it (leader only)"),
            write_cpu_spare: int_gauge(&r, "raft_write_cpu_spare", "1 while this node counts as having CPU to spare (batch.pipeline_idle_above of it idle, until under half that): group commit then keeps batch.max_inflight batches in flight at any load, and with raft.send_at_once_when_idle its replication streams send a further AppendEntries at once (leader only)"),
            write_dropped: counter(&r, "raft_write_dropped_total", "Client writes dropped before they were proposed: the client was gone or its deadline had passed (leader only)"),
            write_regather_seconds: histogram(&r, "raft_write_regather_seconds", "Time group commit held a batch for the writers the last batch answered to come back (leader only; batch.regather_us)",
                vec![0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01]),
            peer_rpc_seconds: histogram_vec(&r, HistogramOpts::new("raft_peer_rpc_seconds", "Time from sending a Raft RPC to a peer to its answer, by the peer's node id and the RPC (append, vote, snapshot). The rate of the append sum is the follower's appends in flight on average: with raft.appends_in_flight = 1, the share of time its stream was busy (near 1: writes wait for the round)")
                .buckets(RPC_BUCKETS.to_vec()),
                &["peer_id", "rpc"]),
            append_answer_seconds: histogram(&r, "raft_append_answer_seconds", "Time this node took to answer an AppendEntries carrying entries, from its arrival (the body read) to the answer: the decode, the hold of an early one, openraft's append and the wait for the fsync. Against the leader's raft_peer_rpc_seconds it splits a round trip into the follower's part and the network's with both ends' scheduling (follower only)",
                RPC_BUCKETS.to_vec()),
            append_overlapped: counter(&r, "raft_appends_overlapped_total", "AppendEntries with entries that reached this node while another with entries was being answered: a leader with raft.appends_in_flight above 1 at work (follower only)"),
            append_early: {
                let c = counter_vec(&r, "raft_appends_early_total", "AppendEntries that reached this node before the one sent ahead of them and were held for it, by outcome: in_order (it came within the hold), gave_up (it did not; openraft refused the early one and the leader sent it again)", &["outcome"]);
                for outcome in ["in_order", "gave_up"] {
                    c.with_label_values(&[outcome]);
                }
                c
            },
            append_entries_new: append_entries.with_label_values(&["new"]),
            append_entries_held: append_entries.with_label_values(&["already_held"]),
            registry: r,
        })
    }

    /// Count elections, leader changes and membership changes as they happen (a scrape
    /// would miss the ones between two scrapes), and keep the member counts. Runs until Raft
    /// stops; the caller owns the task.
    ///
    /// It watches openraft's server metrics (vote, role, leader, membership), which change
    /// only when one of those does: the full metrics are sent on every turn of openraft's
    /// loop, changed or not, and woke this task (a parked worker with it) thousands of
    /// times a second under load.
    pub async fn count_elections(self: Arc<Self>, raft: Raft) {
        let mut rx = raft.server_metrics();
        let (mut term, mut leader, mut config) = {
            // A restarted node has its membership, vote and leader from its storage before
            // this subscribes, and may see no change for a long time: the member counts
            // are set from what is there now (they were missing until the next change,
            // found in review).
            let m = rx.borrow_and_update();
            self.count_members(m.membership_config.membership());
            (
                m.vote.leader_id().get_term(),
                m.current_leader,
                *m.membership_config.log_id(),
            )
        };
        while rx.changed().await.is_ok() {
            let m = rx.borrow_and_update();
            self.count_members(m.membership_config.membership());
            if m.membership_config.log_id() != &config {
                if config.is_some() {
                    self.membership_changes.inc();
                }
                config = *m.membership_config.log_id();
            }
            let current_term = m.vote.leader_id().get_term();
            if current_term > term {
                self.elections.inc_by(current_term - term);
                term = current_term;
            }
            if m.current_leader.is_some() && m.current_leader != leader {
                self.leader_changes.inc();
            }
            if m.current_leader.is_some() {
                leader = m.current_leader;
            }
        }
    }

    /// The voters and learners of `membership`, as gauges.
    fn count_members(
        &self,
        membership: &openraft::Membership<cookie_raft::NodeId, cookie_raft::CookieNode>,
    ) {
        self.members
            .with_label_values(&["voter"])
            .set(membership.voter_ids().count() as i64);
        self.members
            .with_label_values(&["learner"])
            .set(membership.learner_ids().count() as i64);
    }

    /// A timer for Raft's RPCs (`Network::with_rpc_timer`) that feeds
    /// `raft_peer_rpc_seconds`.
    pub fn rpc_timer(self: &Arc<Self>) -> cookie_raft::network::RpcTimer {
        let metrics = self.clone();
        Arc::new(move |peer, rpc, took| {
            metrics
                .peer_rpc_seconds
                .with_label_values(&[peer.to_string().as_str(), rpc])
                .observe(took.as_secs_f64());
        })
    }

    /// Record one finished HTTP request.
    pub fn observe(&self, r: &FinishedRequest<'_>) {
        let (requests, duration) = if r.peer {
            (&self.peer_http_requests, &self.peer_http_duration)
        } else {
            (&self.http_requests, &self.http_duration)
        };
        requests
            .with_label_values(&[r.method, r.route, r.status.as_str()])
            .inc();
        duration
            .with_label_values(&[r.method, r.route])
            .observe(r.seconds);
    }

    /// The cache's own counters, as of now.
    pub fn set_cache(&self, s: &CacheStats) {
        bump(&self.cache_hits, s.hits);
        bump(&self.cache_misses, s.misses);
        bump(&self.cache_puts, s.puts);
        bump(&self.cache_deletes, s.deletes);
        bump(&self.cache_evictions, s.evictions);
        self.cache_entries.set(s.size as i64);
        self.cache_bytes.set(s.bytes as i64);
    }

    /// Snapshots installed from a leader and built by this node so far.
    pub fn set_snapshot_counts(&self, counts: &cookie_raft::sm::SnapshotCounts) {
        bump(
            &self.snapshot_installs,
            counts.installed.load(Ordering::Relaxed),
        );
        bump(&self.snapshots_built, counts.built.load(Ordering::Relaxed));
        bump(
            &self.snapshot_builds_postponed,
            counts.postponed.load(Ordering::Relaxed),
        );
    }

    /// The sizes the snapshot policy weighs: the last build's state, the log since it.
    pub fn set_snapshot_sizes(&self, state_bytes: u64, log_bytes: u64) {
        self.snapshot_state_bytes.set(state_bytes as i64);
        self.log_bytes_since_snapshot.set(log_bytes as i64);
    }

    /// The state machine's flush thread: what it wrote, and how far `sm.redb` is behind
    /// the applied index.
    pub fn set_flush_stats(&self, s: &cookie_raft::sm::FlushStats, applied: u64) {
        bump(&self.sm_flushes, s.flushes);
        bump(&self.sm_flush_failures, s.failures);
        bump(&self.sm_flushes_postponed, s.postponed);
        bump(&self.sm_flushes_behind, s.prompted);
        bump(&self.sm_ids_scans, s.ids_scans);
        bump(&self.sm_repacks, s.repacks);
        bump(&self.sm_repacks_abandoned, s.repacks_abandoned);
        let behind = applied.saturating_sub(s.written.unwrap_or(0));
        self.sm_unflushed_entries.set(behind as i64);
        self.sm_last_flush_seconds.set(s.last_seconds);
    }

    /// The idempotency keys the state holds.
    pub fn set_idempotency_keys(&self, keys: u64) {
        self.idempotency_keys
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
    }

    /// An append that overtook the one sent ahead of it was held: `in_order` when that one
    /// arrived in time, `gave_up` when it went to openraft without it.
    pub fn append_early(&self, outcome: &str) {
        self.append_early.with_label_values(&[outcome]).inc();
    }

    /// An append carried `new` entries past this node's log and `already_held` ones at
    /// indexes it had reached.
    pub fn append_entries(&self, new: u64, already_held: u64) {
        self.append_entries_new.inc_by(new);
        self.append_entries_held.inc_by(already_held);
    }

    /// The certificate `label` serves expires at `not_after` (Unix seconds); `refused` while
    /// newer files on disk were refused.
    pub fn set_certificate(&self, label: &str, not_after: i64, refused: bool) {
        self.tls_expiry.with_label_values(&[label]).set(not_after);
        self.tls_files_refused
            .with_label_values(&[label])
            .set(i64::from(refused));
    }

    /// The files of certificate `label` changed and were loaded (`true`) or refused.
    pub fn certificate_reloaded(&self, label: &str, loaded: bool) {
        let result = if loaded { "loaded" } else { "refused" };
        self.tls_reloads.with_label_values(&[label, result]).inc();
    }

    /// A snapshot from a leader was refused or its install failed; `reason` is one of
    /// [`SNAPSHOT_INSTALL_FAILURES`].
    pub fn snapshot_install_failed(&self, reason: &str) {
        self.snapshot_install_failures
            .with_label_values(&[reason])
            .inc();
    }

    /// The size of the node's files (the data directory's, and the WAL's where apart).
    pub fn set_data_dir_bytes(&self, bytes: u64) {
        self.data_dir_bytes.set(bytes as i64);
    }

    /// Free and whole size of the filesystem holding the data directory.
    pub fn set_data_dir_space(&self, space: cookie_raft::durable::Space) {
        self.data_dir_free_bytes.set(space.free as i64);
        self.data_dir_capacity_bytes.set(space.total as i64);
    }

    /// Free and whole size of the filesystem holding the WAL.
    pub fn set_wal_dir_space(&self, space: cookie_raft::durable::Space) {
        self.wal_dir_free_bytes.set(space.free as i64);
        self.wal_dir_capacity_bytes.set(space.total as i64);
    }

    /// Whether this node's disk is short of its write reserve (`write::room`).
    pub fn set_short_of_reserve(&self, short: bool) {
        self.data_dir_short_of_reserve.set(i64::from(short));
    }

    pub fn set_uptime(&self, seconds: f64) {
        self.uptime.set(seconds);
    }

    /// The size of one data file (`log`, `sm`, `wal`).
    pub fn set_file_bytes(&self, file: &str, bytes: u64) {
        self.db_file_bytes
            .with_label_values(&[file])
            .set(bytes as i64);
    }

    /// This node's Raft state; `committed` is read from openraft's core separately.
    pub fn set_raft(
        &self,
        m: &RaftMetrics<NodeId, cookie_raft::CookieNode>,
        me: NodeId,
        committed: u64,
    ) {
        let idx = |l: Option<LogId<NodeId>>| l.map_or(0, |l| l.index) as i64;
        let leader = cookie_raft::types::acting_leader(me, m.state, m.current_leader);
        for (field, value) in [
            ("term", m.current_term as i64),
            ("is_leader", i64::from(leader == Some(me))),
            ("leader_id", leader.map_or(0, |l| l as i64)),
            ("last_log_index", m.last_log_index.unwrap_or(0) as i64),
            ("committed_index", committed as i64),
            ("applied_index", idx(m.last_applied)),
            ("snapshot_index", idx(m.snapshot)),
            ("purged_index", idx(m.purged)),
        ] {
            self.raft.with_label_values(&[field]).set(value);
        }
        self.quorum_ack_age.reset();
        if let Some(age) = m.millis_since_quorum_ack {
            self.quorum_ack_age
                .with_label_values::<&str>(&[])
                .set(age as i64);
        }
    }

    /// Each member's last health check: its name, whether it answered, and seconds since
    /// it last did. Only the members given keep a series: a removed node's stayed, frozen,
    /// and its unreachable alert fired for good (found in review).
    pub fn set_peer_health(&self, peers: impl IntoIterator<Item = (String, bool, Option<u64>)>) {
        self.peer_reachable.reset();
        self.peer_last_seen_age.reset();
        for (name, ok, age) in peers {
            self.peer_reachable
                .with_label_values(&[&name])
                .set(i64::from(ok));
            if let Some(age) = age {
                self.peer_last_seen_age
                    .with_label_values(&[&name])
                    .set(age as i64);
            }
        }
    }

    /// Entries each follower is behind the leader's log (leader only; empty elsewhere).
    pub fn set_replication_lag(&self, lags: impl IntoIterator<Item = (String, u64)>) {
        self.replication_lag.reset();
        for (name, lag) in lags {
            self.replication_lag
                .with_label_values(&[&name])
                .set(lag as i64);
        }
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(buf)
    }
}

/// Raise a counter to `v` (a counter kept elsewhere, mirrored here).
fn bump(c: &IntCounter, v: u64) {
    c.inc_by(v.saturating_sub(c.get()));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member that left the membership leaves the peer gauges at the next scrape.
    #[test]
    fn a_removed_peer_has_no_health_series() {
        let m = Metrics::new();
        let text = |m: &Metrics| String::from_utf8(m.encode().unwrap()).unwrap();
        m.set_peer_health([
            ("node2".to_owned(), true, Some(1)),
            ("node5".to_owned(), false, Some(7)),
        ]);
        assert!(text(&m).contains(r#"raft_peer_reachable{peer="node5"} 0"#));
        m.set_peer_health([("node2".to_owned(), true, Some(0))]);
        let after = text(&m);
        assert!(!after.contains("node5"), "{after}");
        assert!(
            after.contains(r#"raft_peer_reachable{peer="node2"} 1"#),
            "{after}"
        );
    }
}
