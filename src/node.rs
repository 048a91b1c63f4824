//! Starting a node: open the stores, start Raft, the group-commit task and the HTTP server,
//! bootstrap if this is a brand-new cluster, and shut down cleanly on SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Duration;

use cookie_raft::{AddressBook, Cache, CacheConfig, LogStore, Network, Raft, StateMachine};
use openraft::SnapshotPolicy;

use crate::api::{self, AppState};
use crate::bootstrap;
use crate::config::Config;
use crate::monitor::Monitor;
use crate::peers::PeerClient;
use crate::read::ReadIndex;
use crate::write::{BatchLimits, Batcher, Writer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest payload of one log entry built by group commit (one command may exceed it alone).
const MAX_BATCH_BYTES: usize = 2 << 20;

fn raft_config(cfg: &Config) -> Result<openraft::Config, BoxError> {
    let r = &cfg.raft;
    let c = openraft::Config {
        cluster_name: "cookie-crud".into(),
        heartbeat_interval: r.heartbeat_ms,
        election_timeout_min: r.election_timeout_min_ms,
        election_timeout_max: r.election_timeout_max_ms,
        install_snapshot_timeout: r.install_snapshot_timeout_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(r.snapshot_logs),
        max_in_snapshot_log_to_keep: r.keep_logs_after_snapshot,
        max_payload_entries: r.max_payload_entries,
        // Snapshot chunks must stay below the Raft routes' body limit.
        snapshot_max_chunk_size: 8 << 20,
        ..Default::default()
    };
    Ok(c.validate()?)
}

pub async fn run(cfg: Config) -> Result<(), BoxError> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| format!("cannot create data_dir {}: {e}", cfg.data_dir.display()))?;

    let cache = Arc::new(Cache::new(CacheConfig {
        enabled: cfg.cache_enabled,
        ttl: Duration::from_secs(cfg.cache_ttl),
        max_entries: cfg.cache_max_entries,
    }));
    let _cleanup = cache.spawn_cleanup(Duration::from_secs(cfg.cache_cleanup_interval.max(1)));

    let mut log = LogStore::open(&cfg.data_dir)?;
    let floor = log.restored_leader_floor(cfg.node_id).await?;
    if let Some(f) = floor {
        tracing::info!(
            term = f.term,
            index = f.index,
            "resuming as leader: linearizable reads wait for the last index at startup"
        );
    }
    let sm = StateMachine::open(&cfg.data_dir, cache)?;
    let reader = sm.reader();
    let book = AddressBook::new(
        cfg.peer_overrides
            .iter()
            .map(|m| (m.id, m.addr.clone()))
            .collect(),
    );
    let network = Network::new(cfg.cluster_secret.clone(), book.clone())?;
    let raft = Raft::new(cfg.node_id, Arc::new(raft_config(&cfg)?), network, log, sm).await?;

    let peers = PeerClient::new(cfg.cluster_secret.clone(), book)?;
    let metrics = crate::metrics::Metrics::new();
    metrics.watch_raft(raft.clone());
    let batcher = Batcher::spawn(
        raft.clone(),
        BatchLimits {
            max_commands: cfg.batch.max_commands,
            max_bytes: MAX_BATCH_BYTES,
            max_inflight: cfg.batch.max_inflight,
        },
        metrics.clone(),
    );
    let writer = Writer::new(
        raft.clone(),
        cfg.node_id,
        batcher,
        peers.clone(),
        cfg.batch.forward_inflight,
        cfg.write_timeout(),
        metrics.clone(),
    );

    let reads = ReadIndex::new(
        raft.clone(),
        cfg.node_id,
        peers.clone(),
        cfg.read_timeout(),
        metrics.clone(),
        floor,
    );

    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    tracing::info!(
        node = %cfg.name(),
        id = cfg.node_id,
        listen = %cfg.listen,
        data_dir = %cfg.data_dir.display(),
        "cookie-crud node serving"
    );

    tokio::spawn(bootstrap::run(raft.clone(), cfg.clone(), peers.clone()));

    let monitor = Monitor::default();
    monitor.spawn(
        raft.clone(),
        cfg.node_id,
        peers.clone(),
        Duration::from_millis(cfg.health_check_interval_ms),
        Duration::from_millis(500),
    );

    let state = Arc::new(AppState {
        me: cfg.node_id,
        cfg,
        raft: raft.clone(),
        reader,
        writer,
        reads,
        peers,
        monitor,
        metrics: metrics.clone(),
        started: std::time::Instant::now(),
        install_quiet: Default::default(),
    });
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("shutting down raft");
    let _ = raft.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("signal received, stopping");
}
