//! Test harness: real `cookie-crud` processes on 127.0.0.1, each with its own data directory.
//!
//! Tests wait for conditions (a leader, an applied index, a record) instead of sleeping.
#![allow(dead_code)]
// clippy.toml keeps the server's functions to four arguments; test helpers name every knob.
#![allow(clippy::too_many_arguments)]

pub mod held;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_cookie-crud");

/// Ports below the kernel's ephemeral range, spread by process id so parallel test binaries
/// do not collide, and checked free before use.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 400) as u16 * 25;
    loop {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % 10_000;
        let port = 10_000 + (base - 10_000 + offset) % 22_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub struct Node {
    pub id: u64,
    /// The loopback address the node listens on (127.0.0.1 unless a test spreads nodes
    /// over 127.0.0.0/8, as the DNS discovery test does).
    pub host: String,
    /// The client listener's port.
    pub port: u16,
    /// The peer listener's port.
    pub peer_port: u16,
    /// `http`, or `https` for a node whose client listener has a certificate.
    pub scheme: &'static str,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Node {
    pub fn url(&self) -> String {
        format!("{}://{}:{}", self.scheme, self.host, self.port)
    }

    /// The peer listener's base URL.
    pub fn peer_url(&self) -> String {
        format!("{}://{}:{}", self.scheme, self.host, self.peer_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A node a test configures itself (`Cluster::from_configs`).
pub struct Spec {
    pub id: u64,
    pub host: String,
    /// Its `listen` port.
    pub port: u16,
    /// Its `peer_listen` port (the TOML must say so).
    pub peer_port: u16,
    pub toml: String,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub client: reqwest::Client,
    dir: TempDir,
}

/// The peer secret of the clusters the harness configures.
pub const TEST_CLUSTER_SECRET: &str = "harness-cluster-secret";

/// Raft timings for tests: quick elections, frequent heartbeats.
pub const FAST_RAFT: &str =
    "[raft]\nheartbeat_ms = 100\nelection_timeout_min_ms = 600\nelection_timeout_max_ms = 1200\n";

impl Cluster {
    /// Start `n` nodes; `extra` is TOML appended to every node's config (e.g. a `[raft]`
    /// table). Returns once a leader is elected and every node is ready.
    pub async fn start(n: usize, extra: &str) -> Cluster {
        let mut cluster = Cluster::configure(n, extra);
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_ready_all(Duration::from_secs(30)).await;
        cluster
    }

    /// Write the configs of `n` nodes without starting any.
    pub fn configure(n: usize, extra: &str) -> Cluster {
        Cluster::configure_with(n, extra, |_, _| String::new())
    }

    /// Like [`Cluster::configure`], with top-level TOML for each node from
    /// `per_node(index, client ports)` placed before `extra`.
    pub fn configure_with(
        n: usize,
        extra: &str,
        per_node: impl Fn(usize, &[u16]) -> String,
    ) -> Cluster {
        let dir = TempDir::new().unwrap();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let peer_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let members: Vec<String> = ports
            .iter()
            .zip(&peer_ports)
            .enumerate()
            .map(|(i, (p, pp))| {
                format!(
                    "{{ id = {}, addr = \"127.0.0.1:{p}\", peer_addr = \"127.0.0.1:{pp}\" }}",
                    i + 1
                )
            })
            .collect();
        let mut nodes = Vec::new();
        for (i, (port, peer_port)) in ports.iter().zip(&peer_ports).enumerate() {
            let id = i as u64 + 1;
            let data = dir.path().join(format!("node{id}"));
            let config = dir.path().join(format!("node{id}.toml"));
            let own = per_node(i, &ports);
            // A cluster needs its peer credential (nodes refuse to start without one),
            // unless the test sets its own (a secret, or mutual TLS).
            let given = |k: &str| extra.contains(k) || own.contains(k);
            let secret = if n > 1 && !given("cluster_secret") && !given("peer_ca") {
                format!("cluster_secret = \"{TEST_CLUSTER_SECRET}\"\n")
            } else {
                String::new()
            };
            let text = format!(
                "node_id = {id}\nlisten = \"127.0.0.1:{port}\"\npeer_listen = \"127.0.0.1:{peer_port}\"\n\
                 data_dir = \"{}\"\nnodes = [{}]\n{secret}{own}\n{extra}",
                data.display(),
                members.join(", "),
            );
            std::fs::write(&config, text).unwrap();
            nodes.push(Node {
                id,
                host: "127.0.0.1".into(),
                port: *port,
                peer_port: *peer_port,
                scheme: "http",
                config,
                log: dir.path().join(format!("node{id}.log")),
                child: None,
            });
        }
        Cluster::with_nodes(nodes, dir)
    }

    /// Nodes with configs a test writes itself; the data directory is `{dir}/node{id}`
    /// (the TOML may refer to it through `{data_dir}`).
    pub fn from_configs(specs: Vec<Spec>) -> Cluster {
        let dir = TempDir::new().unwrap();
        let nodes = specs
            .into_iter()
            .map(
                |Spec {
                     id,
                     host,
                     port,
                     peer_port,
                     toml: text,
                 }| {
                    let data = dir.path().join(format!("node{id}"));
                    let config = dir.path().join(format!("node{id}.toml"));
                    let text = text.replace("{data_dir}", &data.display().to_string());
                    std::fs::write(&config, text).unwrap();
                    Node {
                        id,
                        host,
                        port,
                        peer_port,
                        scheme: "http",
                        config,
                        log: dir.path().join(format!("node{id}.log")),
                        child: None,
                    }
                },
            )
            .collect();
        Cluster::with_nodes(nodes, dir)
    }

    fn with_nodes(nodes: Vec<Node>, dir: TempDir) -> Cluster {
        cookie_raft::network::install_crypto_provider();
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(15))
            // A node closes a kept-alive connection that sends no request within its
            // header timeout (500 ms in the hostile tests); a pooled connection reused just
            // as it closes fails. Drop idle ones well before.
            .pool_idle_timeout(Duration::from_millis(250))
            .build()
            .unwrap();
        Cluster { nodes, client, dir }
    }

    /// Configure (not start) node `id` to join this cluster through node `via`'s peer
    /// listener, as `join_as` (`learner` or `voter`), on new ports; `extra` is appended to
    /// its config. Returns its index.
    pub fn add_joiner(&mut self, id: u64, via: usize, join_as: &str, extra: &str) -> usize {
        let (port, peer_port) = (free_port(), free_port());
        let data = self.dir.path().join(format!("node{id}"));
        let config = self.dir.path().join(format!("node{id}.toml"));
        let text = format!(
            "node_id = {id}\nlisten = \"127.0.0.1:{port}\"\npeer_listen = \"127.0.0.1:{peer_port}\"\n\
             data_dir = \"{}\"\njoin = \"127.0.0.1:{}\"\njoin_as = \"{join_as}\"\n\
             cluster_secret = \"{TEST_CLUSTER_SECRET}\"\n{extra}",
            data.display(),
            self.nodes[via].peer_port,
        );
        std::fs::write(&config, text).unwrap();
        self.nodes.push(Node {
            id,
            host: "127.0.0.1".into(),
            port,
            peer_port,
            scheme: "http",
            config,
            log: self.dir.path().join(format!("node{id}.log")),
            child: None,
        });
        self.nodes.len() - 1
    }

    /// `GET /cluster/members` on node `i`: `(voters, learners)`.
    pub async fn membership(&self, i: usize) -> Option<(Vec<u64>, Vec<u64>)> {
        let r = try_send(self.client.get(format!("{}/cluster/members", self.url(i)))).await?;
        let ids = |k: &str| -> Option<Vec<u64>> {
            r.json[k].as_array()?.iter().map(|v| v.as_u64()).collect()
        };
        Some((ids("voters")?, ids("learners")?))
    }

    /// Wait until node `i` reports `voters` and `learners` (sorted).
    pub async fn wait_membership(
        &self,
        i: usize,
        voters: &[u64],
        learners: &[u64],
        timeout: Duration,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.membership(i).await;
            if now
                .as_ref()
                .is_some_and(|(v, l)| v == voters && l == learners)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node{} membership {now:?}, want voters {voters:?} learners {learners:?}\n{}",
                self.nodes[i].id,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Speak HTTPS to every node's listeners, trusting the CA in `ca_pem` (and showing
    /// no client certificate).
    pub fn use_https(&mut self, ca_pem: &std::path::Path) {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(ca_pem).unwrap()).unwrap();
        self.client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(15))
            .pool_idle_timeout(Duration::from_millis(250))
            .tls_certs_only([ca])
            .build()
            .unwrap();
        for n in &mut self.nodes {
            n.scheme = "https";
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// `kill -9` every node, then start them all again and wait until all are ready.
    pub async fn kill_and_restart_all(&mut self, timeout: Duration) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        for i in 0..self.nodes.len() {
            self.spawn(i);
        }
        self.wait_ready_all(timeout).await;
    }

    /// Start node `i`'s process (again).
    pub fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "node {} already running", node.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&node.config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start cookie-crud");
        node.child = Some(child);
    }

    /// `kill -9` node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP node `i`: it holds its sockets and answers nothing until [`Cluster::resume`].
    /// Returns once every thread of it is stopped: `kill` returns when the signal is sent,
    /// and a thread running on another CPU goes on until it is interrupted (a test that
    /// sent a request right after the signal was once answered by the "paused" leader).
    pub fn pause(&self, i: usize) {
        signal(&self.nodes[i], "-STOP");
        let pid = self.nodes[i].child.as_ref().expect("a running node").id();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !all_threads_stopped(pid) {
            assert!(
                Instant::now() < deadline,
                "node {} did not stop",
                self.nodes[i].id
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGCONT node `i`.
    pub fn resume(&self, i: usize) {
        signal(&self.nodes[i], "-CONT");
    }

    /// SIGTERM node `i` and wait for it to exit.
    pub fn stop(&mut self, i: usize) {
        let _ = self.stop_status(i);
    }

    /// SIGTERM node `i` and wait up to 10 s for it to exit: its exit status, or `None` when
    /// it was not running or had to be killed.
    pub fn stop_status(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let mut child = self.nodes[i].child.take()?;
        unsafe_sigterm(child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Panic, with `why` and the logs, if any of `nodes` has exited by itself.
    pub async fn assert_running(&mut self, nodes: impl IntoIterator<Item = usize>, why: &str) {
        for i in nodes {
            if let Some(status) = self.wait_exit(i, Duration::ZERO).await {
                panic!("node{} stopped ({status}): {why}\n{}", i + 1, self.logs());
            }
        }
    }

    /// Wait up to `timeout` for node `i`'s process to exit by itself: its exit status, or
    /// `None` when it is still running (it is left running) or was not. It looks at least
    /// once, so a zero `timeout` asks whether it has exited.
    pub async fn wait_exit(
        &mut self,
        i: usize,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.nodes[i].child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.nodes[i].child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The data directory of node `i`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{}", self.nodes[i].id))
    }

    /// Send a signal (`STOP`, `CONT`, ...) to node `i`.
    pub fn signal(&self, i: usize, sig: &str) {
        if let Some(pid) = self.nodes[i].pid() {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status();
        }
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    pub async fn health(&self, i: usize) -> Option<Value> {
        let r = self
            .client
            .get(format!("{}/health", self.url(i)))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// The index of the node that says it leads, among running nodes.
    pub async fn leader(&self) -> Option<usize> {
        for i in 0..self.nodes.len() {
            if !self.is_running(i) {
                continue;
            }
            if let Some(h) = self.health(i).await {
                if h["role"] == "leader" {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Wait until node `i` answers `/health` (its HTTP server is up).
    pub async fn wait_up(&self, i: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.health(i).await.is_none() {
            assert!(
                Instant::now() < deadline,
                "node{} never came up\n{}",
                i + 1,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader().await {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no leader within {timeout:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn is_ready(&self, i: usize) -> bool {
        match self
            .client
            .get(format!("{}/ready", self.url(i)))
            .timeout(Duration::from_secs(1))
            .send()
            .await
        {
            Ok(r) => r.status() == 200,
            Err(_) => false,
        }
    }

    pub async fn wait_ready_all(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut all = true;
            for i in 0..self.nodes.len() {
                if self.is_running(i) && !self.is_ready(i).await {
                    all = false;
                }
            }
            if all && self.leader().await.is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster not ready within {timeout:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Each node whose whole log shows a panic, with the first such line: a Raft core that
    /// panicked looks to clients like a node that is down, which most checks allow.
    pub fn panics(&self) -> Vec<(u64, String)> {
        self.nodes
            .iter()
            .filter_map(|n| {
                let log = std::fs::read(&n.log).unwrap_or_default();
                let line = first_panic(&String::from_utf8_lossy(&log))?.to_string();
                Some((n.id, line))
            })
            .collect()
    }

    /// Node `i`'s whole log.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let text = self.log(i);
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("--- node{} log (last lines) ---\n", n.id));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Wait until node `i` has applied every write the leader had applied when this was
    /// called. A write answers once the leader has applied it, so a follower may not hold it
    /// yet; after this, a `local` read on node `i` sees every write acknowledged before.
    /// It reads only `/cluster`, so the caches and request counters stay as they were.
    pub async fn wait_caught_up(&self, i: usize, timeout: Duration) {
        let leader = self.wait_leader(timeout).await;
        let applied = |v: &Value| v["last_applied"].as_u64().unwrap_or(0);
        let want = applied(&self.cluster_info(leader).await);
        self.wait_cluster_info(i, timeout, |v| applied(v) >= want)
            .await;
    }

    /// Wait until node `i`'s `/cluster` view satisfies `check`; returns that view.
    pub async fn wait_cluster_info(
        &self,
        i: usize,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let r = try_send(self.client.get(format!("{}/cluster", self.url(i)))).await;
            if let Some(r) = r {
                if check(&r.json) {
                    return r.json;
                }
                assert!(
                    Instant::now() < deadline,
                    "node{} /cluster never matched: {}\n{}",
                    i + 1,
                    r.text,
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "node{} /cluster unreachable",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// GET `/cluster` of node `i`.
    pub async fn cluster_info(&self, i: usize) -> Value {
        self.client
            .get(format!("{}/cluster", self.url(i)))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn signal(node: &Node, sig: &str) {
    let pid = node.child.as_ref().expect("a running node").id();
    let status = Command::new("kill").arg(sig).arg(pid.to_string()).status();
    assert!(status.is_ok_and(|s| s.success()), "kill {sig} {pid}");
}

/// Whether every thread of process `pid` is stopped (state `T` in `/proc`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name's closing parenthesis.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
        })
    })
}

fn unsafe_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// A reply: status, headers and JSON body (Null when the body is not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn etag(&self) -> u64 {
        self.header("etag")
            .expect("etag header")
            .trim_matches('"')
            .parse()
            .unwrap()
    }
}

/// The first line of a node's log where a thread panicked (std's panic message), if any.
pub fn first_panic(log: &str) -> Option<&str> {
    log.lines().find(|l| l.contains("panicked at"))
}

pub async fn send(req: reqwest::RequestBuilder) -> Reply {
    let desc = format!("{req:?}");
    match try_send(req).await {
        Some(r) => r,
        None => panic!("request failed: {desc}"),
    }
}

/// A counter or gauge from node `i`'s `/metrics`, or `None` while it does not answer.
pub async fn metric(cluster: &Cluster, i: usize, name: &str) -> Option<u64> {
    let r = try_send(cluster.client.get(format!("{}/metrics", cluster.url(i)))).await?;
    let prefix = format!("{name} ");
    r.text
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Like [`send`], but a connection error is `None` (e.g. a node still starting).
pub async fn try_send(req: reqwest::RequestBuilder) -> Option<Reply> {
    let resp = req.send().await.ok()?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Some(Reply {
        status,
        headers,
        text,
        json,
    })
}

impl Cluster {
    pub async fn create(&self, i: usize, body: Value) -> Reply {
        send(
            self.client
                .post(format!("{}/cookies", self.url(i)))
                .json(&body),
        )
        .await
    }

    pub async fn get(&self, i: usize, id: &str, consistency: &str) -> Reply {
        send(self.client.get(format!(
            "{}/cookies/{}?consistency={consistency}",
            self.url(i),
            encode(id)
        )))
        .await
    }

    pub async fn put(&self, i: usize, id: &str, body: Value, if_match: Option<u64>) -> Reply {
        let mut req = self
            .client
            .put(format!("{}/cookies/{}", self.url(i), encode(id)))
            .json(&body);
        if let Some(v) = if_match {
            req = req.header("if-match", format!("\"{v}\""));
        }
        send(req).await
    }

    pub async fn delete(&self, i: usize, id: &str) -> Reply {
        send(
            self.client
                .delete(format!("{}/cookies/{}", self.url(i), encode(id))),
        )
        .await
    }

    pub async fn list(&self, i: usize, consistency: &str) -> Vec<Value> {
        let r = send(
            self.client
                .get(format!("{}/cookies?consistency={consistency}", self.url(i))),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.json["cookies"].as_array().unwrap().clone()
    }

    /// Wait until `check` holds for node `i`'s whole list of records, read locally; `what`
    /// names the state awaited, for the failure.
    pub async fn wait_local_list(
        &self,
        i: usize,
        what: &str,
        timeout: Duration,
        check: impl Fn(&[Value]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let list = self.list(i, "local").await;
            if check(&list) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node{} never held {what}: it holds {} records",
                i + 1,
                list.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until `check` holds for node `i`'s local state.
    pub async fn wait_local(
        &self,
        i: usize,
        id: &str,
        timeout: Duration,
        check: impl Fn(&Reply) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let url = format!("{}/cookies/{}?consistency=local", self.url(i), encode(id));
            let r = try_send(self.client.get(url)).await;
            if r.as_ref().is_some_and(&check) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node{} never reached the state for {id}: last {r:?}\n{}",
                i + 1,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Percent-encode a path segment.
pub fn encode(id: &str) -> String {
    let mut out = String::new();
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `cookie-crud certs` into `dir`: a CA and `n` node certificates for 127.0.0.1.
pub fn make_certs(dir: &std::path::Path, n: usize) {
    let out = std::process::Command::new(BIN)
        .args(["certs", "--out", dir.to_str().unwrap(), "--nodes"])
        .arg(n.to_string())
        .args(["--host", "127.0.0.1", "--host", "localhost"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The TLS keys of node `i` (0-based): its certificate on both listeners, and the CA
/// for its peers.
pub fn tls_table(dir: &std::path::Path, i: usize) -> String {
    let p = |f: String| dir.join(f).display().to_string();
    // Dotted keys, not a [tls] table: the harness places this among top-level keys.
    format!(
        "tls.cert = \"{cert}\"\ntls.key = \"{key}\"\ntls.peer_ca = \"{ca}\"\n\
         tls.peer_cert = \"{cert}\"\ntls.peer_key = \"{key}\"\n",
        cert = p(format!("node{}.pem", i + 1)),
        key = p(format!("node{}.key", i + 1)),
        ca = p("ca.pem".into()),
    )
}

/// Run the binary with `args` (a subcommand such as `ctl`, `restore`, `dump`), without the
/// caller's `COOKIE_CRUD_ENDPOINTS` and `COOKIE_CRUD_TOKEN`: (exit code, stdout, stderr).
pub fn run_bin<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, String, String) {
    run_bin_in(Path::new("."), args)
}

/// [`run_bin`] in the working directory `cwd`.
pub fn run_bin_in<S: AsRef<std::ffi::OsStr>>(cwd: &Path, args: &[S]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .current_dir(cwd)
        .args(args)
        .env_remove("COOKIE_CRUD_ENDPOINTS")
        .env_remove("COOKIE_CRUD_TOKEN")
        .output()
        .expect("run cookie-crud");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
