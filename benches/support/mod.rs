//! What the HTTP benchmarks share: cookie-crud node processes on loopback, each with its own
//! data directory, started, waited for, killed and restarted.
#![allow(dead_code)]

pub mod cpu_quota;
pub mod delay;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_cookie-crud");

/// The node binary: this build's, or `BENCH_NODE_BIN` (not COOKIE_CRUD_*: nodes would read that as a config key) to measure another build (an A/B
/// comparison of a change, run against the same load generator).
pub fn bin() -> String {
    std::env::var("BENCH_NODE_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// A number from the environment (`BENCH_SECS`, `BENCH_CLIENTS`), or `default`.
pub fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `url` until `ok(status, body)` holds (a minute at most).
pub async fn wait_http(url: &str, ok: impl Fn(u16, &str) -> bool) {
    cookie_raft::network::install_crypto_provider();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(url).send().await {
            let status = r.status().as_u16();
            if ok(status, &r.text().await.unwrap_or_default()) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{url} never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Child processes killed when dropped.
#[derive(Default)]
pub struct Procs(pub Vec<Option<Child>>);

impl Procs {
    /// The running processes' ids.
    pub fn pids(&self) -> Vec<u32> {
        self.0.iter().flatten().map(Child::id).collect()
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.0[i].take() {
            let _ = c.kill();
            let _ = c.wait();
            cpu_quota::release(c.id());
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for i in 0..self.0.len() {
            self.kill(i);
        }
    }
}

/// CPU time (user + system, all threads) the processes have used so far, in seconds, from
/// `/proc/<pid>/stat` (clock ticks of 1/100 s, Linux's USER_HZ). Dividing a phase's CPU by
/// its operations gives a cost per operation that a noisy, shared machine does not blur as
/// much as throughput.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0)
        })
        .sum()
}

/// Context switches (voluntary and not) of every live thread of `pids` so far. A thread
/// that has exited is not counted, so take the difference over a phase whose threads
/// outlive it (the servers' workers and flush threads do; a blocking-pool thread that
/// retires mid-phase takes its count with it). Each switch is a thread hop: a wake-up of
/// a parked worker, a wait for the disk or for a lock. On a shared machine they are
/// steadier per request than throughput, so a change that removes hops shows there.
pub fn context_switches(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_dir(format!("/proc/{pid}/task")).ok())
        .flat_map(|tasks| tasks.flatten())
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// `n` cookie-crud nodes forming one cluster; `extra` is TOML appended to every config.
/// The nodes keep the default `worker_threads` (one per core), as users get them; one
/// thread per node was within noise on the compare bench (docs/benchmarks.md).
pub struct Nodes {
    /// Declared before `dir`: the processes are killed before their data is removed (the
    /// other way round, a node still running found its files gone and stopped with a
    /// storage error in its log at the end of every run).
    pub procs: Procs,
    pub dir: tempfile::TempDir,
    pub ports: Vec<u16>,
    configs: Vec<PathBuf>,
}

impl Nodes {
    pub async fn start(n: usize, extra: &str) -> Nodes {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let members: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{{ id = {}, addr = \"127.0.0.1:{p}\" }}", i + 1))
            .collect();
        // A cluster needs a peer credential (nodes refuse to start without one), unless
        // `extra` brings its own (a secret, or mutual TLS).
        let secret = if n > 1 && !extra.contains("cluster_secret") && !extra.contains("peer_ca") {
            "cluster_secret = \"bench-cluster-secret\"\n"
        } else {
            ""
        };
        let overrides = peer_delay_overrides(&ports).await;
        let mut configs = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let cfg = dir.path().join(format!("n{i}.toml"));
            let overrides = &overrides[i];
            std::fs::write(
                &cfg,
                format!(
                    "node_id = {}\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nnodes = [{}]\nlog_level = \"warn\"\n{overrides}{secret}{extra}",
                    i + 1,
                    dir.path().join(format!("d{i}")).display(),
                    members.join(", ")
                ),
            )
            .unwrap();
            configs.push(cfg);
        }
        let mut nodes = Nodes {
            dir,
            ports,
            configs,
            procs: Procs((0..n).map(|_| None).collect()),
        };
        for i in 0..n {
            nodes.spawn(i);
        }
        for i in 0..n {
            nodes.wait_ready(i).await;
        }
        nodes
    }

    pub fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    pub fn urls(&self) -> Vec<String> {
        (0..self.ports.len()).map(|i| self.url(i)).collect()
    }

    /// Start node `i`; its output goes where [`log_to`] says.
    pub fn spawn(&mut self, i: usize) {
        let (out, err) = log_to(&format!("node{}", i + 1));
        let mut cmd = Command::new(bin());
        cmd.arg(&self.configs[i])
            .env_remove("RUST_LOG")
            .stdout(out)
            .stderr(err);
        self.procs.0[i] = Some(cpu_quota::spawn(&mut cmd).unwrap());
    }

    pub fn kill(&mut self, i: usize) {
        self.procs.kill(i);
    }

    pub async fn wait_ready(&self, i: usize) {
        wait_http(&format!("{}/ready", self.url(i)), |s, _| s == 200).await;
    }
}

/// Where a server's output goes: with `BENCH_LOGS=dir`, appended to `dir/<name>.log` (to see
/// why a benchmark saw errors or a cluster never formed); otherwise discarded.
fn log_to(name: &str) -> (Stdio, Stdio) {
    match std::env::var("BENCH_LOGS") {
        Ok(dir) => {
            std::fs::create_dir_all(&dir).unwrap();
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(format!("{dir}/{name}.log"))
                .unwrap();
            (Stdio::from(f.try_clone().unwrap()), Stdio::from(f))
        }
        Err(_) => (Stdio::null(), Stdio::null()),
    }
}

/// With `BENCH_PEER_DELAY_MS` set, a delaying proxy ([`delay`]) on every link between the
/// nodes at `ports`, and each node's `peer_overrides` line naming its links; else no lines.
async fn peer_delay_overrides(ports: &[u16]) -> Vec<String> {
    let Some(held) = delay::configured() else {
        return vec![String::new(); ports.len()];
    };
    let mut lines = Vec::new();
    for a in 0..ports.len() {
        let mut entries = Vec::new();
        for (b, &target) in ports.iter().enumerate() {
            if a == b {
                continue;
            }
            // Peers listen `PEER_PORT_OFFSET` above the client port these configs give.
            let port = delay::front(target + cookie_crud::config::PEER_PORT_OFFSET, held).await;
            // An override's `addr` is where this node reaches that peer's listener.
            entries.push(format!("{{ id = {}, addr = \"127.0.0.1:{port}\" }}", b + 1));
        }
        lines.push(format!("peer_overrides = [{}]\n", entries.join(", ")));
    }
    lines
}

/// With `BENCH_PEER_DELAY_MS` set, a delaying proxy in front of each of `ports` (etcd's
/// peer listeners), and the ports the proxies listen on; else `ports` themselves.
async fn peer_delay_fronts(ports: &[u16]) -> Vec<u16> {
    let Some(held) = delay::configured() else {
        return ports.to_vec();
    };
    let mut fronts = Vec::new();
    for &target in ports {
        fronts.push(delay::front(target, held).await);
    }
    fronts
}

/// The etcd binary to compare against: `ETCD=path`, or Debian's `etcd-server` where it is
/// installed; `ETCD=none` (or no binary) skips etcd (A/B runs of cookie-crud alone).
pub fn etcd_binary() -> Option<String> {
    if let Ok(p) = std::env::var("ETCD") {
        return (p != "none").then_some(p);
    }
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|p| p.to_string())
}

/// A 3-node etcd cluster (its default fsync and thread counts) on loopback, clients through
/// its HTTP/JSON gateway (`/v3/kv/*`); killed and its data removed when dropped.
pub struct Etcd {
    pub urls: Vec<String>,
    /// Declared before `dir`: the processes are killed before their data is removed.
    pub procs: Procs,
    pub dir: tempfile::TempDir,
}

impl Etcd {
    pub async fn start(bin: &str) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let client_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let peer_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        // Where the others reach each member: its peer port, or with BENCH_PEER_DELAY_MS a
        // delaying proxy in front of it (both directions of every link pass one).
        let advertised = peer_delay_fronts(&peer_ports).await;
        let initial: Vec<String> = advertised
            .iter()
            .enumerate()
            .map(|(i, p)| format!("e{i}=http://127.0.0.1:{p}"))
            .collect();
        // Killed on a panic too (a member that never becomes healthy), so none outlives the bench.
        let mut procs = Procs::default();
        for i in 0..3 {
            let c = format!("http://127.0.0.1:{}", client_ports[i]);
            let p = format!("http://127.0.0.1:{}", peer_ports[i]);
            let a = format!("http://127.0.0.1:{}", advertised[i]);
            let (out, err) = log_to(&format!("etcd{i}"));
            let mut cmd = Command::new(bin);
            cmd.args(["--name", &format!("e{i}")])
                .args([
                    "--data-dir",
                    &dir.path().join(format!("e{i}")).display().to_string(),
                ])
                .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
                .args([
                    "--listen-peer-urls",
                    &p,
                    "--initial-advertise-peer-urls",
                    &a,
                ])
                .args(["--initial-cluster", &initial.join(",")])
                .args([
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "bench",
                ])
                .args(["--logger", "zap", "--log-level", "error"])
                .stdout(out)
                .stderr(err);
            procs
                .0
                .push(Some(cpu_quota::spawn(&mut cmd).expect("start etcd")));
        }
        let urls: Vec<String> = client_ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        for u in &urls {
            wait_http(&format!("{u}/health"), |s, b| {
                s == 200 && b.contains("true")
            })
            .await;
        }
        Etcd { urls, procs, dir }
    }
}
