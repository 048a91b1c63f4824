//! One node's life: open the stores, start Raft and every background task, serve HTTP (the
//! client listener and the peer listener),
//! found the cluster if this node is the one to, and on SIGTERM/SIGINT/SIGHUP stop in order: a
//! leader hands leadership over (`cluster::handover`), then the HTTP servers stop
//! (in-flight requests finish), then the background tasks, then Raft.
//!
//! This is the composition root: the only module that knows every layer, and the one
//! place where the layers are wired to each other.

use std::sync::Arc;
use std::time::Duration;

use cookie_raft::idle::SpareCpu;
use cookie_raft::{
    AddressBook, BoxError, Cache, CacheConfig, Identity, LogStore, Network, PeerHttp, Raft,
    SnapshotInbox, StateMachine,
};
use openraft::SnapshotPolicy;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::cluster::install_quiet::InstallQuiet;
use crate::cluster::monitor::Monitor;
use crate::cluster::peer::PeerClient;
use crate::cluster::{
    bootstrap, expiry, failstop, identity, join, joint, own_place, snapshots, Cluster,
};
use crate::config::Config;
use crate::http::server::{ConnLimits, Endpoint};
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::read::{ReadIndex, ReadSettings};
use crate::tasks::Tasks;
use crate::tls::Tls;
use crate::write::forward::{ForwardLimits, STALL_MIN};
use crate::write::group_commit::BatchLimits;
use crate::write::room::{self, Room};
use crate::write::{Lookups, WriteSettings, Writer};

/// Largest payload of one group-commit batch (one command may exceed it alone).
const MAX_BATCH_BYTES: usize = 2 << 20;

/// How long shutdown waits for open connections to finish their requests.
const HTTP_DRAIN_BOUND: Duration = Duration::from_secs(10);

/// How long shutdown waits for the background tasks before aborting the rest.
const TASKS_STOP_BOUND: Duration = Duration::from_secs(5);

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot create data_dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "data_dir {path} holds a restore that did not finish (its .restoring is there): run \
         the restore again, which clears it, or empty the directory"
    )]
    InterruptedRestore { path: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("storage: {0}")]
    Storage(BoxError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("http client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The cluster addressed this node as an older incarnation of itself: its data was lost
    /// and it must be replaced, not rejoin (the message says how).
    #[error("{0}")]
    DataLost(String),
    /// The data directory, or the WAL's, was removed or replaced while the node ran: what
    /// it wrote since is in files no name reaches.
    #[error(
        "storage lost: {0}. This node's data is gone: what it wrote since then is not on \
         the disk. Start it again: a member of a cluster is then refused and must be \
         replaced (README, Membership); a lone node starts empty unless its data is restored"
    )]
    DirsReplaced(String),
    /// The Raft log or the state machine could not be written (a full disk, a failing
    /// device): the node stops so that it is started again once the fault is gone.
    #[error(
        "storage failed: {0}. Make room or repair the device, then start the node again: \
         its log holds every write it acknowledged"
    )]
    StorageFailed(String),
    /// The data directory and the config describe different members (`own_place`).
    #[error("{0}")]
    Misplaced(String),
}

/// The membership's entry for this node against the configured addresses
/// ([`own_place::check_addresses`]), as the Raft core loaded it (the log's last membership).
async fn check_addresses(raft: &Raft, cfg: &Config) -> Result<(), NodeError> {
    let me = cfg.node_id;
    let (stored, members) = raft
        .with_raft_state(move |st| {
            let m = st.membership_state.effective().membership();
            (m.get_node(&me).cloned(), m.nodes().count())
        })
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
    let configured = own_place::Configured {
        id: me,
        addr: cfg.advertise(),
        peer_addr: cfg.advertise_peer(),
        names_addresses: cfg.cluster.discovery != crate::config::Discovery::Dns,
    };
    match own_place::check_addresses(&configured, stored.as_ref(), members) {
        Ok(None) => Ok(()),
        Ok(Some(warning)) => {
            tracing::warn!("{warning}");
            Ok(())
        }
        Err(why) => Err(NodeError::Misplaced(why)),
    }
}

impl NodeError {
    /// A store could not be opened or read at start, while doing `what`.
    fn storage(what: &str, e: impl std::fmt::Display) -> NodeError {
        NodeError::Storage(format!("{what}: {e}").into())
    }
}

fn raft_config(cfg: &Config) -> Result<openraft::Config, NodeError> {
    let r = &cfg.raft;
    let c = openraft::Config {
        cluster_name: "cookie-crud".into(),
        heartbeat_interval: r.heartbeat_ms,
        election_timeout_min: r.election_timeout_min_ms,
        election_timeout_max: r.election_timeout_max_ms,
        install_snapshot_timeout: r.install_snapshot_timeout_ms,
        // This node decides when to build (`cluster::snapshots`): by sizes, not entries alone.
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: r.keep_logs_after_snapshot,
        max_payload_entries: r.max_payload_entries,
        commit_linger_us: r.commit_linger_us,
        appends_in_flight: r.appends_in_flight,
        pipeline_after_us: r.pipeline_after_us,
        parallel_leader_append: r.parallel_leader_append,
        parallel_follower_append: r.parallel_follower_append,
        // Snapshot chunks must stay below the Raft routes' body limit.
        snapshot_max_chunk_size: 8 << 20,
        ..Default::default()
    };
    c.validate().map_err(|e| NodeError::Raft(e.to_string()))
}

/// Run the node until a signal stops it.
pub async fn run(cfg: Config) -> Result<(), NodeError> {
    cookie_raft::durable::own_dir(&cfg.data_dir).map_err(|source| NodeError::DataDir {
        path: cfg.data_dir.display().to_string(),
        source,
    })?;
    // Only some of a restore's files may be there; started on them, the node would make up
    // the rest (an empty log, say) and serve a state that never was.
    if cookie_raft::sm::backup::interrupted_restore(&cfg.data_dir) {
        return Err(NodeError::InterruptedRestore {
            path: cfg.data_dir.display().to_string(),
        });
    }
    let tasks = Tasks::new();

    let cache = Arc::new(Cache::new(CacheConfig {
        enabled: cfg.cache_enabled,
        ttl: Duration::from_secs(cfg.cache_ttl),
        max_entries: cfg.cache_max_entries,
        max_bytes: cfg.cache_max_bytes,
    }));
    let sweep = Duration::from_secs(cfg.cache_cleanup_interval.max(1));
    // Aborted when the task set drops it at shutdown (a plain JoinHandle would detach).
    let cleanup = AbortOnDropHandle::new(cache.spawn_cleanup(sweep));
    tasks.spawn("cache sweep", async move {
        let _ = cleanup.await;
    });

    let db_cache = cfg.storage.db_cache();
    let dirs = cfg.dirs();
    let mut log =
        LogStore::open_with(&dirs, db_cache.log, cfg.storage.wal_segment_bytes).map_err(|e| {
            // Name the files: "Permission denied" alone does not say which directory.
            let what = format!(
                "opening the log ({} and the WAL in {})",
                dirs.data.join("log.redb").display(),
                dirs.wal.display()
            );
            NodeError::storage(&what, e)
        })?;
    // What the node's files are in, from now on (`failstop::OwnDirs`).
    let own_dirs = failstop::OwnDirs::record([
        dirs.data.clone(),
        dirs.wal.clone(),
        dirs.data.join("log.redb"),
        dirs.wal.join(cookie_raft::log::place::MARKER),
    ])
    .map_err(|e| NodeError::storage("looking at data_dir", e))?;
    let floor = log
        .restored_leader_floor(cfg.node_id)
        .await
        .map_err(|e| NodeError::storage("reading the log", e))?;
    if let Some(f) = floor {
        if cfg.raft.parallel_leader_append {
            tracing::info!(
                term = f.term,
                "led when it stopped: campaigning for a new term, not resuming this one"
            );
        } else {
            tracing::info!(
                term = f.term,
                index = f.index,
                "resuming as leader: linearizable reads wait for the last index at startup"
            );
        }
    }
    // With the leader's fsync beside its followers' rounds, a node that led campaigns for a
    // new term at startup (vendor/README.md) and never leads the old one again: no floor.
    let floor = floor.filter(|_| !cfg.raft.parallel_leader_append);
    let identity = Arc::new(Identity::new(
        cfg.node_id,
        log.incarnation(),
        log.was_pristine(),
    ));
    if cfg.join.is_some() {
        identity.await_registry();
    }
    tracing::info!(
        incarnation = %cookie_raft::identity::hex(identity.own()),
        empty = identity.is_pristine(),
        "data identity"
    );
    let sm = StateMachine::open_with(
        &cfg.data_dir,
        (cache, identity.clone()),
        db_cache.state_machine,
        cfg.storage.repack(),
    )
    .map_err(|e| {
        let what = format!(
            "opening the state machine ({}, {})",
            cfg.data_dir.join("sm.redb").display(),
            cfg.data_dir.join("snapshots").display()
        );
        NodeError::storage(&what, e)
    })?;
    own_place::check_registry(cfg.node_id, identity.own(), &identity.registry())
        .map_err(NodeError::Misplaced)?;
    let reader = sm.reader();
    let snapshot_files = sm.snapshot_files();
    let book = AddressBook::new(
        cfg.peer_overrides
            .iter()
            .map(|m| (m.id, m.addr.clone()))
            .collect(),
        cfg.nodes.iter().map(|m| (m.id, m.peer_addr())).collect(),
    );
    let tls = Tls::load(&cfg.tls, cfg.advertise_peer())?;
    for w in &tls.warnings {
        tracing::warn!("tls: {w}");
    }
    let secret = cfg.cluster_secret.as_ref().map(|s| s.expose().to_owned());
    let metrics = Metrics::new();
    if !tls.files.is_empty() {
        tasks.spawn(
            "certificate reload",
            crate::tls::watch(tls.files.clone(), metrics.clone()),
        );
    }
    let spare_cpu = SpareCpu::default();
    let network = Network::new(
        secret.clone(),
        book.clone(),
        identity.clone(),
        PeerHttp::new(tls.peer_client.clone())?,
    )
    .with_rpc_timer(metrics.rpc_timer());
    // The replication streams act on the measure only if asked to; group commit takes it
    // either way.
    let network = if cfg.raft.send_at_once_when_idle {
        network.with_spare_cpu(spare_cpu.clone())
    } else {
        network
    };
    let log_size = log.size();
    let raft = Raft::new(cfg.node_id, Arc::new(raft_config(&cfg)?), network, log, sm)
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
    if let Err(e) = check_addresses(&raft, &cfg).await {
        let _ = raft.shutdown().await;
        return Err(e);
    }

    let cluster = Cluster {
        raft: raft.clone(),
        me: cfg.node_id,
        peers: PeerClient::new(
            secret,
            book,
            identity.clone(),
            PeerHttp::new(tls.peer_client.clone())?,
        ),
        identity: identity.clone(),
        changes: Arc::default(),
        stepping_down: Arc::default(),
        spare_cpu,
        removed_in: Arc::default(),
    };
    tasks.spawn(
        "election counter",
        metrics.clone().count_elections(raft.clone()),
    );
    let monitor = Monitor::default();
    let writer = Writer::start(
        cluster.clone(),
        WriteSettings {
            timeout: cfg.write_timeout(),
            batch: BatchLimits {
                max_commands: cfg.batch.max_commands,
                max_bytes: MAX_BATCH_BYTES,
                max_inflight: cfg.batch.max_inflight,
                pipeline_below: cfg.batch.pipeline_below,
                pipeline_idle_above: cfg.batch.pipeline_idle_above,
                regather: std::time::Duration::from_micros(cfg.batch.regather_us),
            },
            forward: ForwardLimits {
                max_inflight: cfg.batch.forward_inflight,
                idle_above: cfg.batch.pipeline_idle_above,
                regather: std::time::Duration::from_micros(cfg.batch.regather_us),
                stall_floor: STALL_MIN,
            },
            room: Room::new(
                dirs.clone(),
                cfg.storage.write_reserve_bytes,
                room::Sources {
                    due: {
                        let reader = reader.clone();
                        Box::new(move || reader.disk_due())
                    },
                    short_voters: {
                        let monitor = monitor.clone();
                        Box::new(move || monitor.voters_short_of_room())
                    },
                    key_recorded: {
                        let reader = reader.clone();
                        // Unreadable: not known to be recorded (the answer is then "unknown").
                        Box::new(move |key| {
                            let now = crate::clock::unix_now_ms();
                            reader.key_recorded(key, now).unwrap_or(false)
                        })
                    },
                },
            ),
            lookups: Lookups {
                record_sizes: {
                    let reader = reader.clone();
                    // Unreadable: each taken at the largest a record may be.
                    Box::new(move |ids: &[&str]| {
                        reader.record_sizes(ids).unwrap_or_else(|_| {
                            vec![cookie_raft::command::MAX_RECORD_BYTES; ids.len()]
                        })
                    })
                },
                key_recorded: {
                    let reader = reader.clone();
                    // Unreadable: taken as recorded, its answer at the largest.
                    Box::new(move |key| {
                        let now = crate::clock::unix_now_ms();
                        reader.key_recorded(key, now).unwrap_or(true)
                    })
                },
            },
        },
        metrics.clone(),
        &tasks,
    );
    let reads = ReadIndex::start(
        cluster.clone(),
        ReadSettings {
            round_timeout: cfg.read_timeout(),
            floor,
        },
        metrics.clone(),
        &tasks,
    );

    let client_listener = bind(&cfg.listen, tls.client_listener.clone()).await?;
    let peer_listener = bind(cfg.peer_listen(), tls.peer_listener.clone()).await?;
    let signals = Signals::watch();
    tracing::info!(
        node = %cfg.name(),
        id = cfg.node_id,
        listen = %cfg.listen,
        peer_listen = %cfg.peer_listen(),
        client_tls = tls.client_listener.is_some(),
        peer_mtls = tls.peer_listener.is_some(),
        data_dir = %cfg.data_dir.display(),
        wal_dir = %dirs.wal.display(),
        "cookie-crud node serving"
    );

    tasks.spawn(
        "snapshot policy",
        snapshots::run(
            raft.clone(),
            snapshots::Policy {
                logs: cfg.raft.snapshot_logs,
                ratio: cfg.raft.snapshot_log_ratio,
                idle: (cfg.raft.snapshot_idle_ms > 0)
                    .then(|| Duration::from_millis(cfg.raft.snapshot_idle_ms)),
                keep: cfg.raft.keep_logs_after_snapshot,
                stagger: cookie_raft::Stagger::for_node(cfg.node_id),
            },
            log_size.clone(),
            reader.clone(),
        ),
    );
    tasks.spawn("bootstrap", bootstrap::run(cluster.clone(), cfg.clone()));
    // A node told to join a cluster its data does not belong to stops (`join`).
    let (join_refused_tx, join_refused) = tokio::sync::oneshot::channel::<String>();
    tasks.spawn("join", {
        let joining = join::run(cluster.clone(), cfg.clone());
        async move {
            if let Some(why) = joining.await {
                let _ = join_refused_tx.send(why);
            }
        }
    });
    tasks.spawn("identity registrar", identity::run(cluster.clone()));
    tasks.spawn("joint membership finisher", joint::run(cluster.clone()));
    tasks.spawn(
        "idempotency key expiry",
        expiry::run(cluster.clone(), reader.clone()),
    );
    tasks.spawn(
        "health monitor",
        monitor.clone().run(
            cluster.clone(),
            Duration::from_millis(cfg.health_check_interval_ms),
            Duration::from_millis(500),
        ),
    );

    let install_quiet = InstallQuiet::new(
        &raft,
        Duration::from_millis(cfg.raft.election_timeout_max_ms),
        Duration::from_millis(cfg.raft.install_snapshot_timeout_ms),
        tasks.clone(),
    );
    let cfg_max_snapshot = cfg.raft.max_snapshot_bytes;
    let cfg_full_lists = cfg.http.max_concurrent_full_lists;
    let body_room = crate::http::params::BodyRoom::new(cfg.max_body_bytes);
    let page_room = crate::http::page_room::PageRoom::new(cfg.max_body_bytes);
    let state = Arc::new(AppState {
        cfg,
        cluster,
        reader,
        log_size,
        writer,
        reads,
        monitor,
        metrics,
        started: std::time::Instant::now(),
        install_quiet,
        snapshot_inbox: SnapshotInbox::new(raft.clone(), cfg_max_snapshot, snapshot_files),
        full_lists: Arc::new(tokio::sync::Semaphore::new(cfg_full_lists.max(1))),
        backups: Arc::new(tokio::sync::Semaphore::new(http::backup::CONCURRENT)),
        append_lane: Default::default(),
        body_room,
        page_room,
    });
    // Stop on a signal, when this node learns its data was lost, or when its storage fails.
    let halted = Arc::new(std::sync::OnceLock::new());
    let stopping = CancellationToken::new();
    let handover_bound = Duration::from_millis(3 * state.cfg.raft.election_timeout_max_ms);
    let watch = {
        let (halted, stopping) = (halted.clone(), stopping.clone());
        let cluster = state.cluster.clone();
        let storage = failstop::storage_failed(raft.clone(), state.reader.write_failed());
        let own_dirs = own_dirs.replaced();
        let core_ended = failstop::core_ended(raft.clone());
        AbortOnDropHandle::new(tokio::spawn(async move {
            tokio::select! {
                () = signals.received() => {
                    // A leader hands over while its listeners still serve (handover.rs).
                    cluster.step_down(handover_bound).await;
                }
                why = identity.lost() => {
                    tracing::error!("stopping: this node must be replaced, not rejoin");
                    let _ = halted.set(NodeError::DataLost(why));
                }
                why = storage => {
                    tracing::error!("stopping: the storage failed: {why}");
                    let _ = halted.set(NodeError::StorageFailed(why));
                }
                why = own_dirs => {
                    tracing::error!("stopping: {why}");
                    let _ = halted.set(NodeError::DirsReplaced(why));
                }
                why = core_ended => {
                    tracing::error!("stopping: {why}");
                    let _ = halted.set(NodeError::Raft(why));
                }
                Ok(why) = join_refused => {
                    tracing::error!("stopping: {why}");
                    let _ = halted.set(NodeError::Misplaced(why));
                }
            }
            stopping.cancel();
        }))
    };
    let max_connections = match crate::process::raise_open_files() {
        Ok(files) => {
            let fits = crate::process::connections_within(state.cfg.http.max_connections, files);
            if fits < state.cfg.http.max_connections {
                tracing::warn!(
                    open_files = files,
                    max_connections = fits,
                    "the open-files limit is too low for http.max_connections on both \
                     listeners; each takes fewer (raise the limit: ulimit -n, LimitNOFILE)"
                );
            }
            fits
        }
        Err(e) => {
            tracing::warn!("cannot read the open-files limit: {e}");
            state.cfg.http.max_connections
        }
    };
    let limits = ConnLimits {
        header_timeout: Duration::from_millis(state.cfg.http.header_timeout_ms),
        max_connections,
        send_timeout: state.cfg.http_body_timeout(),
        drain: HTTP_DRAIN_BOUND,
    };
    // The client listener stops first and its in-flight requests finish; the peer listener
    // stops only then. A linearizable read that came in while this leader handed over has
    // its read index from the new leader, in the new term, and waits for this node to apply
    // it: the new leader's appends must still reach it through the peer listener, or the read
    // waits out its timeout and fails.
    let peers_stopping = CancellationToken::new();
    let client_router = http::client_router(state.clone());
    let client = async {
        http::server::serve(
            client_listener,
            client_router,
            limits,
            stopping.cancelled_owned(),
        )
        .await;
        peers_stopping.cancel();
    };
    tokio::join!(
        client,
        http::server::serve(
            peer_listener,
            http::peer_router(state),
            limits,
            peers_stopping.clone().cancelled_owned(),
        ),
    );
    // Before Raft is shut down on purpose, which the watch must not take for a failure.
    drop(watch);
    let stopped = tasks.shutdown(TASKS_STOP_BOUND).await;
    tracing::info!(
        stopped = stopped.stopped,
        aborted = stopped.aborted,
        "background tasks stopped; shutting down raft"
    );
    let _ = raft.shutdown().await;
    tracing::info!("node stopped");
    match Arc::into_inner(halted).and_then(std::sync::OnceLock::into_inner) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn bind(addr: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Result<Endpoint, NodeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Listen {
            addr: addr.to_owned(),
            source,
        })?;
    Ok(Endpoint {
        listener,
        tls: tls.map(tokio_rustls::TlsAcceptor::from),
    })
}

/// SIGTERM, SIGINT or SIGHUP: each stops the node in order (a leader hands over first).
/// SIGHUP's default action killed the node outright when the terminal that started it
/// closed; there is nothing to reload on it. Started with SIGHUP ignored (`nohup`), the
/// node keeps ignoring it. Watched from [`Signals::watch`] on, before
/// the node says it serves: a signal that came before the watch began killed it outright.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    hup: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn watch() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let watch = |kind: SignalKind, name: &str| {
            signal(kind)
                .map_err(|e| tracing::warn!("cannot watch {name} ({e}); stopping without it"))
                .ok()
        };
        Signals {
            term: watch(SignalKind::terminate(), "SIGTERM"),
            hup: if crate::process::hangup_ignored() {
                tracing::info!("SIGHUP is ignored (nohup): a hangup does not stop this node");
                None
            } else {
                watch(SignalKind::hangup(), "SIGHUP")
            },
            int: watch(SignalKind::interrupt(), "SIGINT"),
        }
    }

    /// Until one of them comes.
    async fn received(mut self) {
        let name = tokio::select! {
            Some(_) = recv(&mut self.term) => "SIGTERM",
            Some(_) = recv(&mut self.hup) => "SIGHUP",
            Some(_) = recv(&mut self.int) => "SIGINT",
        };
        tracing::info!(signal = name, "signal received, stopping");
    }
}

/// The next delivery of a signal being watched; never, for one that is not.
async fn recv(sig: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match sig {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
