//! A Jepsen-style fault test of cookie-crud: real node processes, concurrent clients, a
//! nemesis, a recorded history and a linearizability checker. See `docs/jepsen.md`.

pub mod checker;
pub mod history;
pub mod nemesis;
pub mod proxy;
pub mod rng;
pub mod workload;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{first_panic, free_port, make_certs, tls_table, Cluster};
use crate::lossy_fs;
use history::{Call, Op, Outcome};
use nemesis::{Fault, Nemesis};
use proxy::Mesh;
use workload::Ctx;

/// Each fsync on a node's lossy filesystem takes at least this long (the power fault): a
/// cloud volume's time, so that a cut can land inside one.
const POWER_SYNC_TIME: Duration = Duration::from_millis(2);

/// Node settings for fault runs: quick elections, short request timeouts, and a snapshot
/// (with log purge) every 50 entries so snapshot installs happen all the time.
const NODE_CONFIG: &str = "write_timeout_ms = 2000
read_timeout_ms = 2000
health_check_interval_ms = 1000
[raft]
heartbeat_ms = 100
election_timeout_min_ms = 600
election_timeout_max_ms = 1200
snapshot_logs = 50
keep_logs_after_snapshot = 10
";

pub struct RunConfig {
    /// Cluster size: 3, or 5 (`JEPSEN_NODES`).
    pub nodes: usize,
    pub seconds: u64,
    pub seed: u64,
    pub faults: Vec<Fault>,
    pub register_clients: u64,
    pub set_clients: u64,
    /// Clients walking the list page by page while the faults go on.
    pub walk_clients: u64,
    pub results: PathBuf,
    /// Mutual TLS between the nodes and HTTPS for the clients (`JEPSEN_TLS=1`), with
    /// certificates made for the run.
    pub tls: bool,
    /// Each node's WAL in a directory outside its data directory (`JEPSEN_WAL_APART=1`,
    /// `storage.wal_dir`): kills and restarts then open a WAL apart.
    pub wal_apart: bool,
}

impl RunConfig {
    /// `JEPSEN_TIME` (seconds), `JEPSEN_SEED`, `JEPSEN_FAULTS`
    /// (kill,pause,stop,partition,member,power,disk,all,none), `JEPSEN_NODES` (3 or 5),
    /// `JEPSEN_RESULTS` (directory), `JEPSEN_TLS` (1: TLS), `JEPSEN_WAL_APART` (1: each
    /// node's WAL outside its data directory).
    pub fn from_env(default_seconds: u64) -> RunConfig {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let seed = env("JEPSEN_SEED")
            .map(|s| s.parse().expect("JEPSEN_SEED is a number"))
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    % 1_000_000
            });
        RunConfig {
            nodes: env("JEPSEN_NODES").map_or(3, |s| {
                let n: usize = s.parse().expect("JEPSEN_NODES is a number");
                assert!(
                    n >= 3 && n % 2 == 1,
                    "JEPSEN_NODES: an odd size of 3 or more"
                );
                n
            }),
            seconds: env("JEPSEN_TIME").map_or(default_seconds, |s| {
                s.parse().expect("JEPSEN_TIME in seconds")
            }),
            seed,
            faults: Fault::parse(&env("JEPSEN_FAULTS").unwrap_or_else(|| "all".into())).unwrap(),
            register_clients: 6,
            set_clients: 2,
            walk_clients: 1,
            results: env("JEPSEN_RESULTS")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results")),
            tls: env("JEPSEN_TLS").is_some_and(|v| v == "1"),
            wal_apart: env("JEPSEN_WAL_APART").is_some_and(|v| v == "1"),
        }
    }
}

pub struct Report {
    pub valid: bool,
    pub summary: String,
    pub dir: PathBuf,
}

/// Heal everything: links, paused and killed nodes; wait until the cluster serves again.
async fn heal_all(cluster: &mut Cluster, mesh: &Mesh) {
    mesh.heal();
    for i in 0..cluster.nodes.len() {
        // A node that stopped by itself (its disk filled just before room was made).
        if let Some(status) = cluster.wait_exit(i, Duration::ZERO).await {
            println!("node{} had stopped ({status}): restarting it", i + 1);
        }
        if cluster.is_running(i) {
            cluster.signal(i, "CONT");
        } else {
            cluster.spawn(i);
        }
    }
    cluster.wait_ready_all(Duration::from_secs(60)).await;
}

/// After healing: one linearizable read of every key, appended to the history (a lost write
/// shows up here), and the final list for the set check.
async fn final_reads(ctx: &Ctx, keys: &BTreeSet<String>) -> Vec<String> {
    for key in keys {
        for attempt in 0..20 {
            let invoke_ns = ctx.history.now();
            let r = ctx
                .client
                .get(format!("{}/cookies/{key}", ctx.urls[0]))
                .send()
                .await;
            let outcome = match r {
                Ok(r) if r.status() == 200 => {
                    let version = r
                        .headers()
                        .get("etag")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim_matches('"').parse().ok());
                    let v: serde_json::Value = r.json().await.unwrap_or_default();
                    Some(Outcome::Ok {
                        version,
                        value: v["v"].as_i64(),
                    })
                }
                Ok(r) if r.status() == 404 => Some(Outcome::Ok {
                    version: None,
                    value: None,
                }),
                _ => None,
            };
            if let Some(outcome) = outcome {
                ctx.history.push(Op {
                    process: 0,
                    node: 0,
                    key: key.clone(),
                    call: Call::Read { local: false },
                    invoke_ns,
                    complete_ns: ctx.history.now(),
                    outcome,
                });
                break;
            }
            assert!(attempt < 19, "final read of {key} kept failing");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    for _ in 0..20 {
        if let Ok(r) = ctx
            .client
            .get(format!("{}/cookies", ctx.urls[0]))
            .send()
            .await
        {
            if r.status() == 200 {
                let v: serde_json::Value = r.json().await.unwrap();
                return v["cookies"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|c| c["cookie"].as_str().map(str::to_owned))
                    .collect();
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("final list kept failing");
}

pub async fn run(cfg: RunConfig) -> Report {
    let n = cfg.nodes;
    let links = proxy::link_ports(n, free_port);
    let overrides = links.clone();
    // Certificates name 127.0.0.1, which is also where the link proxies listen: TLS runs
    // end to end through them.
    let certs = cfg.tls.then(|| {
        let dir = tempfile::tempdir().unwrap();
        make_certs(dir.path(), n);
        dir
    });
    let certs_dir = certs.as_ref().map(|d| d.path().to_owned());
    // The power and disk faults mount a lossy filesystem over each data directory; a WAL
    // apart would be outside it, and its writes beyond their reach.
    assert!(
        !(cfg.wal_apart
            && cfg
                .faults
                .iter()
                .any(|f| matches!(f, Fault::Power | Fault::Disk))),
        "JEPSEN_WAL_APART=1 runs without the power and disk faults"
    );
    let wals = cfg.wal_apart.then(|| tempfile::tempdir().unwrap());
    // Each node's WAL directory: in its config, and deleted by the nemesis with its data.
    let wal_dirs: Vec<PathBuf> = wals.as_ref().map_or_else(Vec::new, |root| {
        (0..n)
            .map(|i| root.path().join(format!("wal{}", i + 1)))
            .collect()
    });
    let wal_of = wal_dirs.clone();
    let mut cluster = Cluster::configure_with(n, NODE_CONFIG, move |i, _| {
        let entries: Vec<String> = (0..n)
            .filter(|&j| j != i)
            .map(|j| {
                format!(
                    "{{ id = {}, addr = \"127.0.0.1:{}\" }}",
                    j + 1,
                    overrides[&(i, j)]
                )
            })
            .collect();
        let tls = certs_dir
            .as_deref()
            .map_or(String::new(), |d| tls_table(d, i));
        // Dotted, as the TLS keys: this text sits among the top-level keys.
        let wal = wal_of.get(i).map_or(String::new(), |w| {
            format!("storage.wal_dir = \"{}\"\n", w.display())
        });
        format!("peer_overrides = [{}]\n{tls}{wal}", entries.join(", "))
    });
    let ca = certs.as_ref().map(|d| d.path().join("ca.pem"));
    if let Some(ca) = &ca {
        cluster.use_https(ca);
    }
    // The proxies carry node-to-node traffic: they forward to the peer listeners.
    let peer_ports: Vec<u16> = cluster.nodes.iter().map(|n| n.peer_port).collect();
    let mesh = Mesh::start(links, &peer_ports).await;
    // Power cuts need each data directory on a filesystem that can lose unsynced writes,
    // and full disks one that can be filled.
    let backing = tempfile::tempdir().unwrap();
    let (mounts, power) = if cfg
        .faults
        .iter()
        .any(|f| matches!(f, Fault::Power | Fault::Disk))
    {
        if let Err(why) = lossy_fs::available() {
            panic!("the power and disk faults need FUSE as root: {why}");
        }
        lossy_fs::mount_all(&cluster, backing.path(), POWER_SYNC_TIME)
    } else {
        (Vec::new(), Vec::new())
    };
    for i in 0..n {
        cluster.spawn(i);
    }
    cluster.wait_ready_all(Duration::from_secs(30)).await;

    let urls = (0..n).map(|i| cluster.url(i)).collect();
    let ctx = Arc::new(Ctx::new(urls, cfg.seed, ca.as_deref()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(cfg.seconds);
    let mut clients = Vec::new();
    for w in 0..cfg.register_clients {
        clients.push(tokio::spawn(workload::register_client(
            ctx.clone(),
            w,
            deadline,
        )));
    }
    for w in 0..cfg.set_clients {
        clients.push(tokio::spawn(workload::set_client(ctx.clone(), w, deadline)));
        clients.push(tokio::spawn(workload::keyed_client(
            ctx.clone(),
            w,
            deadline,
        )));
    }
    for w in 0..cfg.walk_clients {
        clients.push(tokio::spawn(workload::walk_client(
            ctx.clone(),
            w,
            deadline,
        )));
        clients.push(tokio::spawn(workload::drain_client(
            ctx.clone(),
            w,
            deadline,
        )));
    }
    let mut nemesis = Nemesis::new(cfg.faults.clone(), cfg.seed, power);
    nemesis.wal_dirs = wal_dirs;
    let injected = nemesis.run(&mut cluster, &mesh, deadline).await;
    for c in clients {
        c.await.unwrap();
    }
    heal_all(&mut cluster, &mesh).await;
    let keys: BTreeSet<String> = ctx.history.ops().iter().map(|o| o.key.clone()).collect();
    let final_ids = final_reads(&ctx, &keys).await;

    // Check.
    let ops = ctx.history.ops();
    let per_key = checker::by_key(&ops);
    let mut failures: Vec<(String, String)> = Vec::new();
    let mut bad_keys: Vec<&String> = Vec::new();
    for (key, key_ops) in &per_key {
        if !checker::linearizable(key_ops) {
            bad_keys.push(key);
        }
    }
    if !bad_keys.is_empty() {
        failures.push((
            "linearizability".into(),
            format!("{} keys not linearizable", bad_keys.len()),
        ));
    }
    if let Err(e) = checker::local_reads_valid(&ops) {
        failures.push(("local reads".into(), e));
    }
    if let Err(e) = checker::versions_monotonic(&ops) {
        failures.push(("version monotonicity".into(), e));
    }
    let attempted = ctx.set_attempted.lock().unwrap().clone();
    let acked = ctx.set_acked.lock().unwrap().clone();
    // The ids the set (`s`) and keyed (`k`) workloads make for this run start so.
    let prefix = |p: &str| format!("{p}{}-", cfg.seed % 10_000);
    let with_prefix = |p: &str| -> Vec<String> {
        let prefix = prefix(p);
        final_ids
            .iter()
            .filter(|id| id.starts_with(&prefix))
            .cloned()
            .collect()
    };
    let set_ids = with_prefix("s");
    let failed = ctx.set_failed.lock().unwrap().clone();
    if let Err(e) = checker::set_valid(&attempted, &acked, &failed, &set_ids) {
        failures.push(("set".into(), e));
    }
    let keyed = ctx.keyed.lock().unwrap().clone();
    let keyed_ids = with_prefix("k");
    if let Err(e) = checker::keyed_valid(&keyed, &keyed_ids) {
        failures.push(("keyed retries".into(), e));
    }
    let walks = ctx.walks.lock().unwrap().clone();
    let acks = ctx.acks.lock().unwrap().clone();
    let tracked = {
        let (s, k) = (prefix("s"), prefix("k"));
        move |id: &str| id.starts_with(&s) || id.starts_with(&k)
    };
    let both: BTreeSet<String> = attempted.union(&keyed.attempted).cloned().collect();
    if let Err(e) = checker::walks_valid(&walks.done, &acks, &both, tracked) {
        failures.push(("walks".into(), e));
    }
    if let Some(first) = walks.malformed.first() {
        failures.push((
            "walks".into(),
            format!(
                "{} pages malformed; the first: {first}",
                walks.malformed.len()
            ),
        ));
    }
    if let Some(first) = walks.refused.first() {
        failures.push((
            "walks".into(),
            format!("{} pages refused; the first: {first}", walks.refused.len()),
        ));
    }
    let pages: u64 = walks.done.iter().map(|w| w.pages).sum();
    let from_deleted: u64 = walks.done.iter().map(|w| w.from_deleted).sum();

    let count = |f: &dyn Fn(&Outcome) -> bool| ops.iter().filter(|o| f(&o.outcome)).count();
    let ok = count(&|o| matches!(o, Outcome::Ok { .. }));
    let fail = count(&|o| matches!(o, Outcome::Fail { .. } | Outcome::ReadFailed));
    let unknown = count(&|o| matches!(o, Outcome::Unknown { .. }));
    // A node that panicked is a bug whatever the history says: a Raft core that panicked
    // looks to the clients like a node that is down, which every checker allows.
    for (id, line) in cluster.panics() {
        failures.push((format!("node{id} panicked"), line));
    }
    let valid = failures.is_empty();
    let faults: Vec<String> = cfg
        .faults
        .iter()
        .map(|f| format!("{f:?}").to_lowercase())
        .collect();
    let mut summary = format!(
        "jepsen run: seed {} | {} nodes{} | {} s | faults [{}] ({injected} injected)\n\
         register ops: {} (ok {ok}, fail {fail}, unknown {unknown}) on {} keys\n\
         set: {} attempted, {} acknowledged, {} present after healing\n\
         keyed: {} attempted, {} acknowledged ({} retries, {} replays, {} unresolved), {} present\n\
         walks: {} of the list ({pages} pages, {from_deleted} from a deleted record's place), {} given up\n\
         result: {}\n",
        cfg.seed,
        cfg.nodes,
        match (cfg.tls, cfg.wal_apart) {
            (true, true) => ", mutual TLS, WAL apart",
            (true, false) => ", mutual TLS",
            (false, true) => ", WAL apart",
            (false, false) => "",
        },
        cfg.seconds,
        faults.join(","),
        ops.len(),
        per_key.len(),
        attempted.len(),
        acked.len(),
        set_ids.len(),
        keyed.attempted.len(),
        keyed.acked.len(),
        keyed.retries,
        keyed.replays,
        keyed.unresolved,
        keyed_ids.len(),
        walks.done.len(),
        walks.abandoned,
        if valid {
            "VALID".to_string()
        } else {
            "INVALID".to_string()
        },
    );
    for (what, why) in &failures {
        summary.push_str(&format!("  {what}: {why}\n"));
    }

    let dir = cfg.results.join(format!("jepsen-{}", cfg.seed));
    std::fs::create_dir_all(&dir).unwrap();
    let mut log = nemesis.log.join("\n");
    log.push('\n');
    std::fs::write(dir.join("nemesis.log"), log).unwrap();
    // Each node's own log beside it: what a node did under a fault is read there.
    for node in &cluster.nodes {
        if let Some(name) = node.log.file_name() {
            let _ = std::fs::copy(&node.log, dir.join(name));
        }
    }
    if !valid {
        std::fs::write(
            dir.join("history.json"),
            serde_json::to_string_pretty(&ops).unwrap(),
        )
        .unwrap();
        if let Some(smallest) = bad_keys.iter().min_by_key(|k| per_key[**k].len()) {
            let t = checker::timeline(&per_key[*smallest]);
            summary.push_str(&format!(
                "smallest failing key {smallest} ({} ops):\n{t}",
                per_key[*smallest].len()
            ));
            std::fs::write(dir.join("timeline.txt"), t).unwrap();
        }
    }
    std::fs::write(dir.join("summary.txt"), &summary).unwrap();
    if !valid {
        summary.push_str(&cluster.logs());
    }
    // The nodes go before their filesystems.
    for i in 0..n {
        cluster.kill(i);
    }
    drop(mounts);
    Report {
        valid,
        summary,
        dir,
    }
}

#[test]
fn a_panic_in_a_node_log_is_found() {
    let log = "2026-12-03T09:00:06Z  INFO cookie_crud: listening\n\
               thread 'tokio-runtime-worker' panicked at vendor/openraft/src/progress/entry/mod.rs:166:13:\n\
               follower log reversion is not allowed\n";
    assert_eq!(
        first_panic(log),
        Some("thread 'tokio-runtime-worker' panicked at vendor/openraft/src/progress/entry/mod.rs:166:13:")
    );
    assert_eq!(
        first_panic("2026-12-03T09:00:06Z  INFO cookie_crud: listening\n"),
        None
    );
}
