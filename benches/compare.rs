//! `make bench`: cookie-crud against etcd (Debian's etcd-server 3.4, through its HTTP/JSON
//! gateway), 3 nodes each on loopback, fsync on, the same closed-loop workloads and
//! concurrency, ~200-byte records. Prints a table with throughput, p50/p99 and the ratio.
//!
//! `cargo bench --bench compare` (BENCH_SECS per phase, default 5; ETCD=path to override;
//! BENCH_ONLY=<substring of "workload@clients"> to run some phases only).
//! Without an `etcd` binary it measures cookie-crud alone.

// clippy.toml keeps the server's functions to four arguments; a bench's helpers name every knob.
#![allow(clippy::too_many_arguments)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use hdrhistogram::Histogram;
use serde_json::json;
use support::{cpu_seconds, env_num, etcd_binary, Etcd, Nodes};

const PRELOAD: u64 = 2000;

#[derive(Clone, Copy, PartialEq)]
enum Sys {
    Cookie,
    Etcd,
}

struct Cluster {
    sys: Sys,
    urls: Vec<String>,
    /// The server processes, for their CPU time.
    pids: Vec<u32>,
    /// What keeps the processes (and their data) alive until the cluster is dropped.
    _running: Box<dyn std::any::Any>,
}

async fn start_cookie(max_commands: usize) -> Cluster {
    // Both systems keep their default thread counts. (GOMAXPROCS=1 made etcd slower: 7,839
    // against 8,446 creates/s at 64 clients; one worker thread per cookie-crud node, see
    // `Nodes::start`.)
    let nodes = Nodes::start(3, &format!("[batch]\nmax_commands = {max_commands}\n")).await;
    Cluster {
        sys: Sys::Cookie,
        urls: nodes.urls(),
        pids: nodes.procs.pids(),
        _running: Box::new(nodes),
    }
}

async fn start_etcd(bin: &str) -> Cluster {
    let etcd = Etcd::start(bin).await;
    Cluster {
        sys: Sys::Etcd,
        urls: etcd.urls.clone(),
        pids: etcd.procs.pids(),
        _running: Box::new(etcd),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Create,
    LinRead,
    LocalRead,
    Update,
    Delete,
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn payload() -> String {
    "p".repeat(150)
}

/// Send one operation; `true` if the system acknowledged it.
async fn send(c: &reqwest::Client, sys: Sys, url: &str, op: Op, key: &str) -> bool {
    let r = match (sys, op) {
        (Sys::Cookie, Op::Create) => {
            c.post(format!("{url}/cookies"))
                .json(&json!({"cookie": key, "user_id": 1, "payload": payload()}))
                .send()
                .await
        }
        (Sys::Cookie, Op::LinRead) => c.get(format!("{url}/cookies/{key}")).send().await,
        (Sys::Cookie, Op::LocalRead) => {
            c.get(format!("{url}/cookies/{key}?consistency=local"))
                .send()
                .await
        }
        (Sys::Cookie, Op::Update) => {
            c.put(format!("{url}/cookies/{key}"))
                .json(&json!({"payload": payload()}))
                .send()
                .await
        }
        (Sys::Cookie, Op::Delete) => c.delete(format!("{url}/cookies/{key}")).send().await,
        (Sys::Etcd, Op::Create | Op::Update) => {
            let value = json!({"cookie": key, "user_id": 1, "payload": payload()}).to_string();
            c.post(format!("{url}/v3/kv/put"))
                .json(&json!({"key": b64(key), "value": b64(&value)}))
                .send()
                .await
        }
        (Sys::Etcd, Op::LinRead) => {
            c.post(format!("{url}/v3/kv/range"))
                .json(&json!({"key": b64(key)}))
                .send()
                .await
        }
        (Sys::Etcd, Op::LocalRead) => {
            c.post(format!("{url}/v3/kv/range"))
                .json(&json!({"key": b64(key), "serializable": true}))
                .send()
                .await
        }
        (Sys::Etcd, Op::Delete) => {
            c.post(format!("{url}/v3/kv/deleterange"))
                .json(&json!({"key": b64(key)}))
                .send()
                .await
        }
    };
    match r {
        Ok(r) => {
            let ok = r.status().is_success();
            let _ = r.bytes().await;
            ok
        }
        Err(_) => false,
    }
}

struct Stats {
    ops: u64,
    errors: u64,
    secs: f64,
    hist: Histogram<u64>,
    /// CPU seconds the servers used during the phase.
    cpu: f64,
}

impl Stats {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }
    /// Server CPU microseconds per operation.
    fn cpu_us(&self) -> f64 {
        self.cpu * 1e6 / self.ops.max(1) as f64
    }
    fn p(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

/// A closed loop: `clients` tasks, each sending its next operation when the last returns.
async fn run(cluster: &Cluster, clients: usize, secs: u64, tag: &str, mix: fn(u64) -> Op) -> Stats {
    cookie_raft::network::install_crypto_provider();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let errors = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_seconds(&cluster.pids);
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|w| {
            let client = client.clone();
            let url = cluster.urls[w % cluster.urls.len()].clone();
            let sys = cluster.sys;
            let errors = errors.clone();
            let tag = tag.to_owned();
            tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new(3).unwrap();
                let mut n: u64 = 0;
                let mut created: Vec<String> = Vec::new();
                while Instant::now() < end {
                    n += 1;
                    let op = mix(n.wrapping_mul(2654435761).wrapping_add(w as u64) % 100);
                    let key = match op {
                        Op::Create => format!("{tag}-{w}-{n}"),
                        Op::Delete => match created.pop() {
                            Some(k) => k,
                            None => continue,
                        },
                        _ => format!("r-{}", (n * 7919 + w as u64) % PRELOAD),
                    };
                    let t = Instant::now();
                    if send(&client, sys, &url, op, &key).await {
                        hist.record(t.elapsed().as_micros() as u64).unwrap();
                        if op == Op::Create {
                            created.push(key);
                        }
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                hist
            })
        })
        .collect();
    let mut hist = Histogram::<u64>::new(3).unwrap();
    for t in tasks {
        hist.add(t.await.unwrap()).unwrap();
    }
    Stats {
        ops: hist.len(),
        errors: errors.load(Ordering::Relaxed),
        secs: start.elapsed().as_secs_f64(),
        hist,
        cpu: cpu_seconds(&cluster.pids) - cpu_before,
    }
}

async fn preload(cluster: &Cluster) {
    cookie_raft::network::install_crypto_provider();
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..16u64)
        .map(|w| {
            let client = client.clone();
            let url = cluster.urls[w as usize % 3].clone();
            let sys = cluster.sys;
            tokio::spawn(async move {
                for i in (w..PRELOAD).step_by(16) {
                    assert!(send(&client, sys, &url, Op::Create, &format!("r-{i}")).await);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

struct Row {
    name: String,
    clients: usize,
    cookie: Stats,
    etcd: Option<Stats>,
}

/// A workload: its name, the number of clients, and the operation for a dice roll 0..100.
type Phase = (&'static str, usize, fn(u64) -> Op);

fn creates(_: u64) -> Op {
    Op::Create
}
fn lin_reads(_: u64) -> Op {
    Op::LinRead
}
fn local_reads(_: u64) -> Op {
    Op::LocalRead
}
/// The original's benchmark mix: 60% point reads, 20% creates, 10% updates, 10% deletes.
fn mixed(d: u64) -> Op {
    match d {
        0..=59 => Op::LinRead,
        60..=79 => Op::Create,
        80..=89 => Op::Update,
        _ => Op::Delete,
    }
}

#[tokio::main]
async fn main() {
    let secs: u64 = env_num("BENCH_SECS", 5);
    let phases: Vec<Phase> = vec![
        ("unique-key creates", 1, creates),
        ("unique-key creates", 16, creates),
        ("unique-key creates", 64, creates),
        ("linearizable point reads", 64, lin_reads),
        ("local / serializable point reads", 64, local_reads),
        ("mixed 60/20/10/10", 64, mixed),
    ];
    // BENCH_ONLY=creates (a substring of "<workload>@<clients>") runs just those phases,
    // against both systems, and skips the group-commit comparison: for quick looks and
    // for profiling one workload.
    let only = std::env::var("BENCH_ONLY").ok();
    let phases: Vec<Phase> = phases
        .into_iter()
        .filter(|(name, clients, _)| {
            only.as_ref()
                .is_none_or(|o| format!("{name}@{clients}").contains(o.as_str()))
        })
        .collect();
    let mut rows: Vec<Row> = Vec::new();

    let cookie = start_cookie(512).await;
    preload(&cookie).await;
    for (i, (name, clients, mix)) in phases.iter().enumerate() {
        let s = run(&cookie, *clients, secs, &format!("c{i}"), *mix).await;
        rows.push(Row {
            name: name.to_string(),
            clients: *clients,
            cookie: s,
            etcd: None,
        });
    }
    drop(cookie);

    let etcd_bin = etcd_binary();
    if let Some(bin) = &etcd_bin {
        let etcd = start_etcd(bin).await;
        preload(&etcd).await;
        for (i, (_, clients, mix)) in phases.iter().enumerate() {
            rows[i].etcd = Some(run(&etcd, *clients, secs, &format!("e{i}"), *mix).await);
        }
    }

    // Group commit before/after: the same creates with one command per log entry.
    let mut gc = Vec::new();
    if only.is_none() {
        let single = start_cookie(1).await;
        for clients in [1, 16, 64] {
            gc.push((
                clients,
                run(&single, clients, secs, &format!("g{clients}"), creates).await,
            ));
        }
        drop(single);
    }

    println!("\n{secs} s per phase, 3 nodes each on 127.0.0.1, clients spread over the nodes, ~200-byte records, fsync on");
    println!("| workload | clients | cookie-crud ops/s | p50 ms | p99 ms | CPU µs/op | etcd ops/s | p50 ms | p99 ms | CPU µs/op | ratio |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let (e_rate, e50, e99, ecpu, ratio) = match &r.etcd {
            Some(e) => (
                format!("{:.0}", e.rate()),
                format!("{:.2}", e.p(0.5)),
                format!("{:.2}", e.p(0.99)),
                format!("{:.0}", e.cpu_us()),
                format!("**{:.2}x**", r.cookie.rate() / e.rate()),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.0} | {} | {} | {} | {} | {} |",
            r.name,
            r.clients,
            r.cookie.rate(),
            r.cookie.p(0.5),
            r.cookie.p(0.99),
            r.cookie.cpu_us(),
            e_rate,
            e50,
            e99,
            ecpu,
            ratio
        );
    }
    let errors: u64 = rows
        .iter()
        .map(|r| r.cookie.errors + r.etcd.as_ref().map_or(0, |e| e.errors))
        .sum();
    println!("(errors, all phases: {errors})");
    if etcd_bin.is_none() {
        println!("etcd not found: install Debian's etcd-server (make bench does) to compare");
    }
    println!(
        "\nGroup commit: unique-key creates with max_commands = 1 (no grouping) vs 512 (default)"
    );
    println!("| clients | one command per entry ops/s | p99 ms | group commit ops/s | p99 ms | speed-up |");
    println!("|---|---|---|---|---|---|");
    for (i, (clients, s)) in gc.iter().enumerate() {
        let g = &rows[i].cookie;
        println!(
            "| {clients} | {:.0} | {:.2} | {:.0} | {:.2} | {:.2}x |",
            s.rate(),
            s.p(0.99),
            g.rate(),
            g.p(0.99),
            g.rate() / s.rate()
        );
    }
}
