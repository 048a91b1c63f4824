//! Node configuration: a TOML file, or the embedded single-node default.
//!
//! Unknown keys are rejected (`deny_unknown_fields`) so a typo stops the node at start with a
//! message naming the key, instead of silently running with a default.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// One initial cluster member (the original's manual `nodes` list, with ids and addresses).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: u64,
    /// `host:port` of the member's client listener (the public API).
    pub addr: String,
    /// `host:port` of the member's peer listener (Raft RPCs, forwarded writes); defaults to
    /// `addr`'s host with its port + [`PEER_PORT_OFFSET`].
    pub peer_addr: Option<String>,
    /// Defaults to `node{id}`.
    pub name: Option<String>,
}

impl Member {
    pub fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("node{}", self.id))
    }

    /// The peer address, given or derived (filled in when the config is checked).
    pub fn peer_addr(&self) -> String {
        self.peer_addr
            .clone()
            .or_else(|| derived_peer_addr(&self.addr).ok())
            .unwrap_or_default()
    }
}

/// How far above the client port the peer port is when not given: 8080 serves clients,
/// 9080 peers (etcd's 2379 and 2380 are one apart, but `make cluster-start`'s nodes already
/// use neighbouring client ports).
pub const PEER_PORT_OFFSET: u16 = 1000;

/// The most AppendEntries `[raft] appends_in_flight` lets go to one follower at once: each
/// is a connection of its own, and past a few the rounds only queue at the follower's disk.
pub const MAX_APPENDS_IN_FLIGHT: u64 = 8;

/// The most initial members discovery may name (`cluster.expected_nodes`): far more voters
/// than a Raft cluster should have, and a bound on the list built from it.
pub const MAX_EXPECTED_NODES: usize = 100;

/// The most async worker threads a node may be given: far above any machine's cores.
pub const MAX_WORKER_THREADS: usize = 1024;

/// Whether `addr` is `host:port` with a port above 0 and a host that is an IP address
/// (`[...]` around IPv6) or a DNS name ([`is_dns_name`]): the address goes into the
/// membership, where every node dials it, and into URLs, where `/`, `?` or `#` would make it
/// another URL.
pub fn is_host_port(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => host.parse::<std::net::Ipv4Addr>().is_ok() || is_dns_name(host),
    };
    host_ok && port.parse::<u16>().is_ok_and(|p| p > 0)
}

/// Whether `host` is a DNS name: dot-separated labels of 1 to 63 letters, digits,
/// hyphens and underscores (Docker Compose names containers `project_service_1`), none
/// starting or ending with a hyphen, 253 characters at most, with a final dot allowed (a
/// fully qualified name). An IPv6 zone (`%eth0`) is not: URLs have no place for it.
pub fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `host:port` with the port raised by [`PEER_PORT_OFFSET`] (port 0, "any port", stays 0).
pub fn derived_peer_addr(addr: &str) -> Result<String, String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr:?} is not host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{addr:?} is not host:port"))?;
    let peer = match port {
        0 => 0,
        p => p.checked_add(PEER_PORT_OFFSET).ok_or_else(|| {
            format!("{addr:?}: port {p} + {PEER_PORT_OFFSET} is past 65535; give the peer address")
        })?,
    };
    Ok(format!("{host}:{peer}"))
}

/// Raft timing and log compaction. The defaults suit HTTP between nodes with an fsync on
/// every append: openraft's 50 ms defaults make heartbeats time out under load.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    /// Heartbeat period; also the timeout of every AppendEntries RPC.
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Timeout of each snapshot chunk RPC.
    pub install_snapshot_timeout_ms: u64,
    /// Build a snapshot after this many entries since the last one, once the log since it
    /// also holds `snapshot_log_ratio` times the bytes of the last snapshot built
    /// (`cluster::snapshots`).
    pub snapshot_logs: u64,
    /// How much log, against the state's size, pays for a build: a build reads the whole
    /// state, so with a fixed entry count its cost per write grows with the data. 0 builds
    /// every `snapshot_logs` entries whatever the sizes.
    pub snapshot_log_ratio: f64,
    /// After this long without a new entry, build a snapshot if the log since the last one
    /// could give disk back: a store whose load stopped does not keep that log. 0: never.
    pub snapshot_idle_ms: u64,
    /// Entries kept in the log behind a snapshot, for lagging followers.
    pub keep_logs_after_snapshot: u64,
    /// Entries per AppendEntries RPC.
    pub max_payload_entries: u64,
    /// How long an AppendEntries that would carry only a new commit index waits for the
    /// next entries to carry it instead, in microseconds (0: it goes at once). openraft 0.9
    /// keeps one AppendEntries in flight per follower, so without it the next entries wait
    /// a whole round trip behind that commit-only one (`vendor/openraft`, patched; nodes
    /// 1 ms apart: one round trip per write instead of two, docs/benchmarks.md). Followers
    /// learn the last commit this much later once writes stop.
    pub commit_linger_us: u64,
    /// How many AppendEntries may be in flight to one follower at once (1: one at a time,
    /// as openraft 0.9). With more, entries appended while a round is in flight go at once
    /// in a round of their own instead of waiting for its answer (`vendor/openraft`,
    /// patched, `replication/pipeline.rs`); a follower holds a round that arrives ahead of
    /// the one sent before it for a moment (`http::append_lane`). A further round waits
    /// until the one ahead has been out `pipeline_after_us`, so that it goes where rounds
    /// are long (nodes apart: 16 clients' creates 17-30% faster with nodes 1 ms apart) and
    /// rarely where they are short, where the extra rounds would cost more CPU than the wait
    /// they save (docs/benchmarks.md).
    pub appends_in_flight: u64,
    /// With `appends_in_flight` above 1: a further AppendEntries goes while another is in
    /// flight only once that one has been out this long, in microseconds (0: at once).
    /// Shorter rounds (nodes close, the CPU short) are waited for, and what was appended
    /// meanwhile shares the next one; longer ones (nodes apart) are not.
    pub pipeline_after_us: u64,
    /// Whether a further AppendEntries goes at once, without waiting `pipeline_after_us`,
    /// while this node has CPU to spare (at least `batch.pipeline_idle_above` of it idle, by
    /// the measure group commit takes; it stops below half that): then an extra round
    /// costs nothing the load needs and shortens the wait of what it carries. Where the CPU
    /// is short, as with three nodes and a load generator on two cores, the hold stays
    /// (docs/benchmarks.md, thirty-fifth pass). false: `pipeline_after_us` at any load.
    pub send_at_once_when_idle: bool,
    /// Whether a leader sends the entries it appends to its followers while its own fsync of
    /// them runs, instead of after it (Raft thesis, 10.2.1; `vendor/openraft`, patched). It
    /// counts itself in a quorum only once that fsync ends, and a node that led when it
    /// stopped campaigns for a new term at startup instead of leading its old one again,
    /// since a power cut may have taken entries of that term from its log that a quorum
    /// holds. false: openraft 0.9's order, one fsync after the other (docs/benchmarks.md).
    pub parallel_leader_append: bool,
    /// Whether a follower takes the next append while its fsync of the last one runs,
    /// answering its leader for those entries only once that fsync ends (`vendor/openraft`,
    /// patched), so that appends in flight to it share an fsync. false: openraft 0.9's order,
    /// the follower waits for each fsync before it takes anything else.
    pub parallel_follower_append: bool,
    /// The largest snapshot this node accepts from a leader, in bytes: its compressed size is
    /// checked before each chunk is stored, its uncompressed size as it is validated (at
    /// most `cookie_raft::codec::DECODE_LIMIT`).
    pub max_snapshot_bytes: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: 200,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            install_snapshot_timeout_ms: 30_000,
            snapshot_logs: 5000,
            snapshot_log_ratio: 0.25,
            snapshot_idle_ms: 10_000,
            keep_logs_after_snapshot: 1000,
            max_payload_entries: 256,
            commit_linger_us: 1000,
            appends_in_flight: 2,
            pipeline_after_us: 1000,
            send_at_once_when_idle: true,
            parallel_leader_append: true,
            parallel_follower_append: true,
            max_snapshot_bytes: cookie_raft::codec::DECODE_LIMIT as u64,
        }
    }
}

/// Group commit: how many client writes may share one log entry, how many entries may be
/// in flight at once, and below what load more than one goes; and how many requests of
/// forwarded writes a follower keeps in flight to the leader. A second entry in flight
/// cuts a write's wait when few are outstanding and costs CPU when many are (on the
/// 2-core bench machine +3-8% writes/s at 16-32 clients, -2-5% at 64-256:
/// `src/write/window.rs`, docs/benchmarks.md), so it goes only while fewer than
/// `pipeline_below` writes are outstanding. `pipeline_below = 0` keeps one in flight.
/// Where rounds are bound by latency rather than CPU, a second entry in flight pays at any
/// load: it also goes while at least `pipeline_idle_above` of the CPU this node may use sat
/// idle over the last half second (`raft/src/idle.rs`); 1.0 turns that off.
///
/// A follower forwards its clients' writes to the leader in requests of many
/// (`src/write/forward.rs`): one in flight, and up to `forward_inflight` only while
/// `pipeline_idle_above` of its CPU sits idle. A second request in flight on a busy node
/// splits the writes that would have gone together into smaller entries on the leader
/// (writes sent to a follower at 64 clients on the 2-core bench machine: 15.5-16.2k/s with
/// four in flight at any load, 19.5-19.7k with one); where rounds are bound by latency, a
/// write that waits for the request ahead waits a round for nothing (nodes 1 ms apart,
/// 16 clients: 1,181/s with up to 16 in flight, 961-966 with 4; docs/benchmarks.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchTuning {
    pub max_commands: usize,
    pub max_inflight: usize,
    pub pipeline_below: usize,
    pub pipeline_idle_above: f64,
    /// The longest a batch waits, after a batch is answered, for that batch's writers to
    /// come back so they go together (a quarter of the recent round at most;
    /// `src/write/regather.rs`), and a follower's next request of forwarded writes for
    /// the writers its last answer released; 0 turns both off.
    pub regather_us: u64,
    pub forward_inflight: usize,
}

impl Default for BatchTuning {
    fn default() -> Self {
        BatchTuning {
            max_commands: 512,
            max_inflight: 2,
            pipeline_below: 24,
            pipeline_idle_above: 0.4,
            regather_us: 1000,
            forward_inflight: 16,
        }
    }
}

/// redb's page caches (`[storage]`): with the read cache's `cache_max_bytes` they set how
/// much memory a node uses, whatever its data (redb's own default, 1 GiB per database, let a
/// node grow with its data). The hot records are served by the read cache; these hold the
/// B-tree pages that reads and `apply` walk, and the log's metadata.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageTuning {
    /// Bytes of `sm.redb` pages cached.
    pub sm_cache_bytes: usize,
    /// Bytes of `log.redb` pages cached.
    pub log_cache_bytes: usize,
    /// After this long without new writes, rewrite `sm.redb` as a packed copy of itself if
    /// its B-trees' pages are over 1.25 times what they hold (random ids leave them about
    /// three quarters full). Needs disk for the copy while it runs. 0: never.
    pub repack_idle_ms: u64,
    /// Directory of the Raft log's segments (the WAL), which every write waits to fsync:
    /// a device of its own keeps those fsyncs from queueing behind the state machine's
    /// flushes, as etcd's `--wal-dir`. Unset: the data directory's `wal/`. The directory
    /// carries a marker naming its log, and a node refuses to start on a WAL that is not
    /// its own or is missing (an unmounted volume). Moving the WAL is done with the node
    /// stopped: its files go from the old place to the new, then the setting changes.
    pub wal_dir: Option<PathBuf>,
    /// The WAL starts a new segment file once the active one holds this many bytes; a
    /// purge gives disk back a segment at a time. Smaller segments give disk back sooner
    /// and roll more often (a roll syncs the old file, the new one and the directory).
    pub wal_segment_bytes: u64,
    /// As leader, refuse creates and updates (507) while the data directory's filesystem has
    /// less than this many bytes free beyond what it has yet to write (`write::room`): deletes,
    /// reads, snapshots and log purges go on, so the cluster stays up and room can be made
    /// through the API. 0: never refuse (a full disk then stops the node).
    pub write_reserve_bytes: u64,
}

/// The default `storage.write_reserve_bytes`: four WAL segments of 16 MiB, room for a
/// stream of deletes and the state machine's next flushes while room is made.
const WRITE_RESERVE_BYTES: u64 = 64 << 20;

impl Default for StorageTuning {
    fn default() -> Self {
        let d = cookie_raft::DbCache::default();
        StorageTuning {
            sm_cache_bytes: d.state_machine,
            log_cache_bytes: d.log,
            repack_idle_ms: cookie_raft::sm::RepackPolicy::default().idle.as_millis() as u64,
            wal_dir: None,
            wal_segment_bytes: cookie_raft::log::wal::SEGMENT_BYTES,
            write_reserve_bytes: WRITE_RESERVE_BYTES,
        }
    }
}

/// `storage.wal_dir` may be the data directory's `wal/` or a directory outside it; not the
/// data directory itself, nor another of its subdirectories (the snapshots'), nor a
/// directory that holds the data directory (a dump copies the WAL's directory). Compared
/// as written, lexically, since neither need exist yet.
fn check_wal_dir(data: &Path, wal: &Path) -> Result<(), String> {
    let fail = |why: &str| {
        Err(format!(
            "storage: wal_dir {} {why} data_dir {}",
            wal.display(),
            data.display()
        ))
    };
    if wal.as_os_str().is_empty() {
        return Err("storage: wal_dir must not be empty (leave it unset for data_dir/wal)".into());
    }
    use cookie_raft::log::place::{lexical, overlap, Overlap};
    match overlap(&lexical(data), &lexical(wal)) {
        Some(Overlap::Inside) => fail("is inside (only its wal/ may be named)"),
        Some(how) => fail(how.words()),
        None => Ok(()),
    }
}

impl StorageTuning {
    pub fn db_cache(&self) -> cookie_raft::DbCache {
        cookie_raft::DbCache {
            state_machine: self.sm_cache_bytes,
            log: self.log_cache_bytes,
        }
    }

    /// When `sm.redb` is rewritten packed (`None`: never).
    pub fn repack(&self) -> Option<cookie_raft::sm::RepackPolicy> {
        (self.repack_idle_ms > 0).then(|| cookie_raft::sm::RepackPolicy {
            idle: std::time::Duration::from_millis(self.repack_idle_ms),
            ..Default::default()
        })
    }
}

/// How a brand-new cluster finds its initial members (the seed's `cluster.discovery`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discovery {
    /// The `nodes` list names every member with its id and address.
    #[default]
    Manual,
    /// `cluster.service` is a DNS name whose A/AAAA records are the members' addresses
    /// (port `cluster.peer_port`); each answers `GET /cluster` with its own `node_id`. The
    /// cluster is founded once `cluster.expected_nodes` distinct members answer.
    Dns,
    /// A StatefulSet: this node's id is its pod ordinal + 1 (from `instance_id`, by default
    /// the pod name in `HOSTNAME`), and the members are the pods `0..expected_nodes` under
    /// the headless service `cluster.service`.
    Kubernetes,
}

/// The seed's `cluster` table: discovery and the instance's identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub discovery: Discovery,
    /// `auto` (the host name, which is the pod name in Kubernetes) or a custom string.
    /// With `kubernetes` discovery it must end in `-<ordinal>`; otherwise, when custom, it
    /// is the default `node_name`.
    pub instance_id: String,
    /// The DNS name to resolve (`dns`) or the headless service's name (`kubernetes`).
    pub service: Option<String>,
    /// How many members a new cluster starts with (`dns`, `kubernetes`).
    pub expected_nodes: usize,
    /// The port peers serve on; defaults to this node's `peer_listen` port.
    pub peer_port: Option<u16>,
    /// Kubernetes namespace; defaults to `POD_NAMESPACE`, `KUBERNETES_NAMESPACE`, the
    /// service account's namespace file, then `default`.
    pub namespace: Option<String>,
    pub cluster_domain: String,
    /// `ip:port` of the DNS server to ask; defaults to the system's (`/etc/resolv.conf`).
    pub dns_server: Option<SocketAddr>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            discovery: Discovery::Manual,
            instance_id: "auto".into(),
            service: None,
            expected_nodes: 3,
            peer_port: None,
            namespace: None,
            cluster_domain: "cluster.local".into(),
            dns_server: None,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The process environment other than `COOKIE_CRUD_*`, for the few values discovery reads
/// from it. Tests pass their own.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub vars: std::collections::BTreeMap<String, String>,
}

impl Env {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).filter(|v| !v.is_empty()).cloned()
    }

    /// The host name (a pod's name in Kubernetes).
    fn hostname(&self) -> Option<String> {
        self.var("HOSTNAME").or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
    }

    fn namespace(&self) -> Option<String> {
        self.var("POD_NAMESPACE")
            .or_else(|| self.var("KUBERNETES_NAMESPACE"))
            .or_else(|| {
                std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
            })
    }
}

/// The prefix of the environment variables that configure a node.
const ENV_PREFIX: &str = "COOKIE_CRUD_";

/// `COOKIE_CRUD_*` variables (named without the prefix) that are someone else's: the
/// logger's, `cookie-crud ctl`'s (`--endpoints`, `--token`, `--cacert`), the scripts'
/// (`scripts/cluster.sh`, `scripts/fuzz.sh`) and the tests'. A shell that exports them for
/// ctl or the scripts must not stop a node started from it.
const NOT_NODE_CONFIG: &[&str] = &[
    "LOG_FORMAT",
    "ENDPOINTS",
    "TOKEN",
    "CACERT",
    "BIN",
    "REQUIRE_FUSE",
    "REQUIRE_MOUNT",
];

/// Whether `COOKIE_CRUD_{key}=value` is not node configuration: one of `NOT_NODE_CONFIG`,
/// or a variable Kubernetes injects for a Service whose name starts with `cookie-crud`
/// (the Service `cookie-crud` gives every pod in its namespace `COOKIE_CRUD_SERVICE_HOST`,
/// `COOKIE_CRUD_PORT=tcp://10.96.0.1:8080`, `COOKIE_CRUD_PORT_8080_TCP_ADDR` and more),
/// which would otherwise be read as unknown keys or a bad `port` and stop every pod.
pub fn not_node_config(key: &str, value: &str) -> bool {
    NOT_NODE_CONFIG.contains(&key) || is_service_link(key, value)
}

/// Kubernetes' service-link variables, less the prefix: `[NAME_]SERVICE_HOST`,
/// `[NAME_]SERVICE_PORT[_PORTNAME]`, `[NAME_]PORT=tcp://ip:port` and
/// `[NAME_]PORT_<port>_<TCP|UDP|SCTP>[_PROTO|_PORT|_ADDR]`. A key with `__` nests into a
/// config table, which no service name can produce, so it is always configuration; and a
/// `PORT` that is no URL is the config key `port`.
fn is_service_link(key: &str, value: &str) -> bool {
    if key.contains("__") {
        return false;
    }
    let words: Vec<&str> = key.split('_').collect();
    let url = ["tcp://", "udp://", "sctp://"]
        .iter()
        .any(|s| value.starts_with(s));
    words.iter().enumerate().any(|(i, w)| {
        let rest = &words[i + 1..];
        match *w {
            "SERVICE" => rest == ["HOST"] || rest.first() == Some(&"PORT"),
            "PORT" if rest.is_empty() => url,
            "PORT" => {
                rest.len() >= 2
                    && !rest[0].is_empty()
                    && rest[0].bytes().all(|b| b.is_ascii_digit())
                    && ["TCP", "UDP", "SCTP"].contains(&rest[1])
                    && (rest.len() == 2
                        || (rest.len() == 3 && ["PROTO", "PORT", "ADDR"].contains(&rest[2])))
            }
            _ => false,
        }
    })
}

/// Where a configuration error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    File,
    Env,
}

/// One `COOKIE_CRUD_*` variable as a config value at a key path.
struct EnvSetting {
    name: String,
    path: Vec<String>,
    value: toml::Value,
}

impl EnvSetting {
    fn new(name: String, key: &str, raw: String) -> Self {
        let path: Vec<String> = key.split("__").map(str::to_ascii_lowercase).collect();
        // A secret is taken as it is: read as TOML, `12345678901234` would be a number
        // (refused as no string), `"x"` would lose its quotes and `true` its meaning.
        let value = if path == ["cluster_secret"] {
            toml::Value::String(raw)
        } else {
            toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(raw))
        };
        EnvSetting { name, path, value }
    }

    /// Whether the value may hold a credential, which no error may show.
    fn is_secret(&self) -> bool {
        self.path
            .iter()
            .any(|p| p.contains("secret") || p.contains("token"))
    }

    fn apply(&self, doc: &mut toml::Table) -> Result<(), String> {
        let mut table = doc;
        for part in &self.path[..self.path.len() - 1] {
            let entry = table
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry.as_table_mut().ok_or_else(|| {
                format!("environment variable {}: {part} is not a table", self.name)
            })?;
        }
        table.insert(self.path[self.path.len() - 1].clone(), self.value.clone());
        Ok(())
    }
}

/// A deserialization error's text on one line ("invalid type: ... in `port`").
fn de_message(e: &toml::de::Error) -> String {
    e.to_string().trim().replace('\n', " ")
}

/// Which source `err` (from the file with every variable applied) comes from: the file if
/// it fails alone, else the first variable that makes it fail, named.
fn blame(file: &toml::Table, settings: &[EnvSetting], err: toml::de::Error) -> (Origin, String) {
    if let Err(e) = file.clone().try_into::<Config>() {
        return (Origin::File, de_message(&e));
    }
    let mut doc = file.clone();
    for s in settings {
        if s.apply(&mut doc).is_err() {
            break;
        }
        if let Err(e) = doc.clone().try_into::<Config>() {
            return (
                Origin::Env,
                format!("environment variable {}: {}", s.name, de_message(&e)),
            );
        }
    }
    (Origin::File, de_message(&err))
}

/// Which source made the whole config's check fail with `msg`: the file, when it fails so
/// alone; else the first variable after which it does, named. Every check error was put on
/// the file, which may not even hold the key (found in review: an empty
/// `COOKIE_CRUD_CLUSTER_SECRET` was reported as the file's `cluster_secret`).
fn blame_check(
    file: &toml::Table,
    settings: &[EnvSetting],
    others: &Env,
    msg: String,
) -> (Origin, String) {
    let fails_so = |doc: &toml::Table| {
        doc.clone()
            .try_into::<Config>()
            .is_ok_and(|mut cfg| cfg.finish_with(others).is_err_and(|e| e.0 == msg))
    };
    if fails_so(file) {
        return (Origin::File, msg);
    }
    let mut doc = file.clone();
    for s in settings {
        if s.apply(&mut doc).is_err() {
            break;
        }
        if fails_so(&doc) {
            return (
                Origin::Env,
                format!("environment variable {}: {msg}", s.name),
            );
        }
    }
    (Origin::File, msg)
}

/// The credentials in `doc` and the secret variables, to keep out of error messages.
///
/// A string is a credential under a key that names one (`cluster_secret`, `client_tokens`,
/// `token`), directly or in an array; a table's strings are judged by their own keys, so a
/// token's `role` is not taken for one (and blotted out of every message that names a
/// role). `client_tokens = ["…"]`, a list of strings where tables belong, was shown in its
/// error (found in review).
fn secrets_in(doc: &toml::Table, settings: &[EnvSetting]) -> Vec<String> {
    fn names_credential(key: &str) -> bool {
        key.contains("secret") || key.contains("token")
    }
    fn strings(v: &toml::Value, secret: bool, out: &mut Vec<String>) {
        match v {
            toml::Value::String(s) if secret && !s.is_empty() => {
                out.push(s.clone());
                // As an error message quotes it (`invalid type: string "[{ token = \"t\" ..."`):
                // a broken token list with double quotes was printed whole (found in review).
                let quoted = s.escape_debug().to_string();
                if quoted != *s {
                    out.push(quoted);
                }
            }
            toml::Value::Array(a) => a.iter().for_each(|v| strings(v, secret, out)),
            toml::Value::Table(t) => t
                .iter()
                .for_each(|(k, v)| strings(v, names_credential(k), out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    strings(&toml::Value::Table(doc.clone()), false, &mut out);
    for s in settings.iter().filter(|s| s.is_secret()) {
        // A value that was no TOML (a broken token list) is kept whole, and may be quoted.
        strings(&s.value, true, &mut out);
    }
    // Longest first, so a secret holding a shorter one is hidden whole.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

/// `msg` with every secret replaced by `***`, where it stands as a word of its own: a short
/// secret (a lab's `"s"`) is not blotted out of the words around it.
fn redact(msg: &str, secrets: &[String]) -> String {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    secrets.iter().fold(msg.to_string(), |m, secret| {
        let mut out = String::with_capacity(m.len());
        let mut rest = m.as_str();
        while let Some(i) = rest.find(secret.as_str()) {
            let end = i + secret.len();
            let alone = !word(rest[..i].chars().next_back()) && !word(rest[end..].chars().next());
            out.push_str(&rest[..i]);
            out.push_str(if alone { "***" } else { &rest[i..end] });
            rest = &rest[end..];
        }
        out.push_str(rest);
        out
    })
}

/// A TOML syntax error in `text`: toml's own message, which quotes the line at fault,
/// unless that line sets a credential (`cluster_secret`, a client `token`), whose value is
/// then not shown.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return e.to_string();
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = &text[line_start..line_end];
    let credential = |l: &str| l.contains("secret") || l.contains("token");
    if !credential(line) && !credential(open_multiline_string(&text[..line_start])) {
        return e.to_string();
    }
    let line_num = text[..line_start].matches('\n').count() + 1;
    format!(
        "TOML parse error at line {line_num}: {} (the line is not shown: it sets a credential)",
        e.message().trim()
    )
}

/// The line that opened a multi-line string (`'''` or `"""`) still open at the end of
/// `before`, or "": a syntax error on the second line of a multi-line `cluster_secret` is on
/// a line that does not name the key (found in review). A close reading: a delimiter inside
/// a one-line string or a comment counts too, which at worst hides a line it need not.
fn open_multiline_string(before: &str) -> &str {
    let mut open: Option<(&str, &str)> = None;
    for line in before.split_inclusive('\n') {
        let mut rest = line;
        loop {
            match open {
                Some((delim, _)) => match rest.find(delim) {
                    Some(i) => {
                        rest = &rest[i + 3..];
                        open = None;
                    }
                    None => break,
                },
                None => {
                    let next = ["'''", "\"\"\""]
                        .iter()
                        .filter_map(|d| rest.find(d).map(|i| (i, *d)))
                        .min();
                    match next {
                        Some((i, delim)) => {
                            rest = &rest[i + 3..];
                            open = Some((delim, line));
                        }
                        None => break,
                    }
                }
            }
        }
    }
    open.map_or("", |(_, line)| line)
}

/// Whether a credential can be sent as an HTTP header value as it is: no control character
/// (a newline left by `echo` into the file it was read from) and no blank at either end
/// (dropped in transit). One that cannot made every peer request fail inside the node,
/// before it was sent, logged as the peer not answering (found in review).
fn sendable(credential: &str) -> bool {
    !credential.bytes().any(|b| b.is_ascii_control())
        && credential.trim_matches([' ', '\t']) == credential
}

/// A configuration the node refuses, with the key and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl From<String> for ConfigError {
    fn from(s: String) -> Self {
        ConfigError(s)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node_id: u64,
    /// Defaults to `node{node_id}`.
    pub node_name: Option<String>,
    /// Address the client listener (the public API) binds.
    pub listen: String,
    /// Address the peer listener (Raft RPCs, forwarded writes, read-index and the peer
    /// probes, all behind the peer credential) binds; defaults to `listen`'s IP with its
    /// port + [`PEER_PORT_OFFSET`].
    pub peer_listen: Option<String>,
    /// The seed's `port`: when set, replaces the port of `listen`.
    pub port: Option<u16>,
    /// Directory of `log.redb` and `sm.redb` (the seed's `db_file` is accepted as its name).
    #[serde(alias = "db_file")]
    pub data_dir: PathBuf,
    /// The initial members. This node must be among them. The member with the smallest id
    /// initializes a brand-new cluster, once.
    pub nodes: Vec<Member>,
    /// The peer address of a member of a running cluster to join (`cookie-crud --join`):
    /// this node starts with empty data, asks to be added, and never founds a cluster.
    pub join: Option<String>,
    /// What a joining node asks to be: `learner` (a read replica; promote it later) or
    /// `voter` (promoted once caught up).
    pub join_as: JoinAs,
    /// Addresses this node uses to reach particular peers instead of the ones in the
    /// membership (split-horizon addressing; the fault-injection tests put a proxy here).
    pub peer_overrides: Vec<Member>,
    pub cache_enabled: bool,
    /// Seconds an entry stays in the read cache.
    pub cache_ttl: u64,
    pub cache_max_entries: usize,
    /// Bytes of cached ids and JSON at most (entries alone do not bound memory: a record can
    /// be a megabyte); a list reply larger than this is not cached.
    pub cache_max_bytes: usize,
    /// Seconds between sweeps of expired cache entries.
    pub cache_cleanup_interval: u64,
    /// Milliseconds between health checks of the other members (`/cache` node_health).
    pub health_check_interval_ms: u64,
    /// Largest accepted request body on the API, in bytes.
    pub max_body_bytes: usize,
    /// How long a write may wait for a leader and for its commit.
    pub write_timeout_ms: u64,
    /// How long a linearizable read may wait for a leader and for the apply.
    pub read_timeout_ms: u64,
    /// How long a write's `Idempotency-Key` is remembered, in seconds of log time (the
    /// proposing node's clock, carried in the log, so every replica forgets it alike).
    pub idempotency_retention_secs: u64,
    /// When set, `/raft/*` requests must carry `Authorization: Bearer <secret>`.
    pub cluster_secret: Option<Secret>,
    /// Run a cluster without `cluster_secret` (a throwaway lab: anyone who reaches a node
    /// can then speak Raft to it). Without it, a multi-node node refuses to start unsecured.
    pub insecure_peers: bool,
    /// Client tokens and their roles (api.md section 12). Empty: no client authentication,
    /// as in the original API.
    pub client_tokens: Vec<ClientToken>,
    /// `text` or `json`; the environment variable `COOKIE_CRUD_LOG_FORMAT` overrides it.
    pub log_format: LogFormat,
    /// A tracing filter such as `info,openraft=warn`; `RUST_LOG` overrides it.
    pub log_level: String,
    /// Async worker threads; 0 means one per CPU core; at most [`MAX_WORKER_THREADS`].
    /// Fewer threads mean fewer wake-ups of parked workers when nodes share a machine
    /// (measured in docs/benchmarks.md); slow work (store scans, fsyncs) runs on the
    /// blocking pool, so one thread does not stall.
    pub worker_threads: usize,
    /// Let the kernel back this process's memory with transparent huge pages. Off by
    /// default: faulting in and zeroing 2 MiB pages under load set the write tail
    /// ([`crate::process`]).
    pub transparent_huge_pages: bool,
    pub cluster: ClusterConfig,
    pub raft: RaftTuning,
    pub batch: BatchTuning,
    pub storage: StorageTuning,
    pub http: HttpLimits,
    pub tls: TlsConfig,
}

/// TLS files (PEM), read at start (`crate::tls`). Each group is all or nothing.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The client listener's certificate chain and key: HTTPS for clients.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The CA that signs every member's peer certificate, and this node's: mutual TLS on
    /// the peer listener and on every outgoing peer call. A peer's certificate must name
    /// the host of its `peer_addr`.
    pub peer_ca: Option<PathBuf>,
    pub peer_cert: Option<PathBuf>,
    pub peer_key: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether peers authenticate each other with certificates.
    pub fn mutual_peers(&self) -> bool {
        self.peer_ca.is_some()
    }

    fn check(&self) -> Result<(), String> {
        if self.cert.is_some() != self.key.is_some() {
            return Err("tls: cert and key go together".into());
        }
        let peer = [&self.peer_ca, &self.peer_cert, &self.peer_key];
        if peer.iter().any(|p| p.is_some()) && !peer.iter().all(|p| p.is_some()) {
            return Err("tls: peer_ca, peer_cert and peer_key go together".into());
        }
        Ok(())
    }
}

/// What a joining node asks to become.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinAs {
    #[default]
    Learner,
    Voter,
}

/// A credential from the config: compared in constant time, never printed (`Debug` shows
/// `Secret(***)`, so a logged `Config` does not leak it).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// Any string; anything else is refused without the value serde would quote
/// ("invalid type: integer 12345678901234"), since the value is the credential.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        const NOT_A_STRING: &str =
            "a credential must be a string (quote it); the value is not shown";
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Secret;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(E::custom(NOT_A_STRING))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(E::custom(NOT_A_STRING))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom(NOT_A_STRING))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom(NOT_A_STRING))
            }
        }
        d.deserialize_string(Visitor)
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for sending it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this secret, in time that does not depend on where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.0.as_bytes().ct_eq(presented))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A client's bearer token and what it may do.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientToken {
    pub token: Secret,
    pub role: Role,
}

/// What a client token allows, each role including the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// GET requests.
    Read,
    /// Also POST, PUT and DELETE on `/cookies`.
    Write,
    /// Also `DELETE /cache`, `/cluster` and `/admin/*`.
    Admin,
}

/// What the HTTP server allows one connection and one request (issue 13).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLimits {
    /// A request's headers must arrive within this time, or the connection is closed.
    pub header_timeout_ms: u64,
    /// A request's body must arrive within this time (408).
    pub body_timeout_ms: u64,
    /// Open connections at most; more wait in the listen backlog.
    pub max_connections: usize,
    /// Unpaged `GET /cookies` (every record in one reply) running at once at most; more
    /// get 503 with `Retry-After`.
    pub max_concurrent_full_lists: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            max_connections: 4096,
            max_concurrent_full_lists: 4,
        }
    }
}

impl Default for Config {
    /// The embedded default: a single-node store on 127.0.0.1:8080 with data in `./data`.
    fn default() -> Self {
        Config {
            node_id: 1,
            node_name: None,
            listen: "127.0.0.1:8080".into(),
            peer_listen: None,
            port: None,
            data_dir: PathBuf::from("./data"),
            nodes: Vec::new(),
            join: None,
            join_as: JoinAs::Learner,
            peer_overrides: Vec::new(),
            cache_enabled: true,
            cache_ttl: 300,
            cache_max_entries: 100_000,
            cache_max_bytes: 128 << 20,
            cache_cleanup_interval: 60,
            health_check_interval_ms: 2000,
            max_body_bytes: 1 << 20,
            write_timeout_ms: 5000,
            read_timeout_ms: 5000,
            idempotency_retention_secs: 24 * 3600,
            cluster_secret: None,
            insecure_peers: false,
            client_tokens: Vec::new(),
            log_format: LogFormat::Text,
            log_level: "info,openraft=warn".into(),
            worker_threads: 0,
            transparent_huge_pages: false,
            cluster: ClusterConfig::default(),
            raft: RaftTuning::default(),
            batch: BatchTuning::default(),
            storage: StorageTuning::default(),
            http: HttpLimits::default(),
            tls: TlsConfig::default(),
        }
    }
}

impl Config {
    /// TOML text alone, without the environment (tests).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Self::from_sources(text, std::iter::empty())
    }

    /// The process's configuration: the file (or nothing: the embedded default), with every
    /// `COOKIE_CRUD_*` environment variable applied on top, so containers need no file.
    pub fn from_file_and_env(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_file_and_env_vars(path, std::env::vars())
    }

    /// The file (or the embedded default) with `env`'s `COOKIE_CRUD_*` variables on top.
    pub fn from_file_and_env_vars(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read config {}: {e}", p.display()))?,
            None => String::new(),
        };
        // An error a variable caused names the variable, not the file it never came from.
        Self::from_sources_blamed(&text, env).map_err(|(origin, e)| match (origin, path) {
            (Origin::File, Some(p)) => ConfigError(format!("config {}: {e}", p.display())),
            _ => ConfigError(e),
        })
    }

    /// TOML `text`, then overrides from `env`: `COOKIE_CRUD_CACHE_TTL=60` sets `cache_ttl`,
    /// `COOKIE_CRUD_RAFT__HEARTBEAT_MS=100` sets `raft.heartbeat_ms` (a double underscore
    /// nests). A value is read as TOML (`60`, `true`, `[{ id = 1, addr = "h:1" }]`), or as a
    /// plain string when it is not valid TOML; `COOKIE_CRUD_CLUSTER_SECRET` is always a plain
    /// string (a secret of digits is still a secret). Unknown keys are refused by name, as
    /// in files, naming the variable; the `COOKIE_CRUD_*` variables that are not node
    /// configuration ([`not_node_config`]) are passed over.
    pub fn from_sources(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::from_sources_blamed(text, env).map_err(|(_, e)| ConfigError(e))
    }

    /// [`Config::from_sources`], its error saying whether the file or a variable caused it.
    fn from_sources_blamed(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, (Origin, String)> {
        let file_doc: toml::Table =
            toml::from_str(text).map_err(|e| (Origin::File, toml_error(text, &e)))?;
        let mut doc = file_doc.clone();
        let mut others = Env::default();
        let mut settings = Vec::new();
        for (name, raw) in env {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                others.vars.insert(name, raw);
                continue;
            };
            if not_node_config(key, &raw) {
                continue;
            }
            let setting = EnvSetting::new(name.clone(), key, raw);
            setting.apply(&mut doc).map_err(|e| (Origin::Env, e))?;
            settings.push(setting);
        }
        let secrets = secrets_in(&doc, &settings);
        let mut cfg: Config = match doc.try_into() {
            Ok(cfg) => cfg,
            Err(e) => {
                let (origin, msg) = blame(&file_doc, &settings, e);
                return Err((origin, redact(&msg, &secrets)));
            }
        };
        if let Err(e) = cfg.finish_with(&others) {
            let (origin, msg) = blame_check(&file_doc, &settings, &others, e.0);
            return Err((origin, redact(&msg, &secrets)));
        }
        Ok(cfg)
    }

    /// Fill derived defaults and check the whole config, without looking at the process
    /// environment (see [`Config::finish_with`]).
    pub fn finish(&mut self) -> Result<(), ConfigError> {
        self.finish_with(&Env::default())
    }

    /// Fill derived defaults and check the whole config. `env` supplies what Kubernetes
    /// discovery reads from the environment (`HOSTNAME`, `POD_NAMESPACE`).
    pub fn finish_with(&mut self, env: &Env) -> Result<(), ConfigError> {
        self.check(env).map_err(ConfigError)
    }

    fn check(&mut self, env: &Env) -> Result<(), String> {
        let mut listen: SocketAddr = self
            .listen
            .parse()
            .map_err(|_| format!("listen: {:?} is not an ip:port", self.listen))?;
        if let Some(port) = self.port {
            listen.set_port(port);
            self.listen = listen.to_string();
        }
        let peer_listen: SocketAddr = match &self.peer_listen {
            Some(p) => p
                .parse()
                .map_err(|_| format!("peer_listen: {p:?} is not an ip:port"))?,
            None => derived_peer_addr(&self.listen)
                .map_err(|e| format!("listen: {e}"))?
                .parse()
                .map_err(|_| format!("listen: {:?} is not an ip:port", self.listen))?,
        };
        if peer_listen.port() != 0 && peer_listen == listen {
            return Err(format!(
                "peer_listen: {peer_listen} is also the client listener; peer traffic needs \
                 its own port"
            ));
        }
        self.peer_listen = Some(peer_listen.to_string());
        match self.cluster.discovery {
            Discovery::Manual => {}
            Discovery::Dns => {
                self.require_discovery_inputs("dns")?;
            }
            Discovery::Kubernetes => {
                self.require_discovery_inputs("kubernetes")?;
                self.kubernetes_members(env, listen.port(), peer_listen.port())?;
            }
        }
        if self.node_name.is_none() && self.cluster.instance_id != "auto" {
            self.node_name = Some(self.cluster.instance_id.clone());
        }
        if self.nodes.is_empty() && self.cluster.discovery == Discovery::Manual {
            self.nodes.push(Member {
                id: self.node_id,
                addr: self.listen.clone(),
                peer_addr: self.peer_listen.clone(),
                name: self.node_name.clone(),
            });
        }
        let mut ids = BTreeSet::new();
        // Every address a member is dialed at, and whose it is: two members at one address
        // would each answer as the other (found in review: a node so configured started and
        // logged "answers as node 1 but is configured as node 2" forever).
        let mut addrs: BTreeMap<String, u64> = BTreeMap::new();
        // Id 0 is what the metrics and the membership API take for "no node": a node 0
        // that led read as leaderless (`raft_state{field="leader_id"}` 0, and the
        // NodeWithoutLeader alert fired on a healthy cluster: found in review).
        if self.node_id == 0 {
            return Err("node_id must be at least 1".into());
        }
        for m in &mut self.nodes {
            if m.id == 0 {
                return Err("nodes: node ids start at 1".into());
            }
            if !ids.insert(m.id) {
                return Err(format!("nodes: node id {} appears twice", m.id));
            }
            let peer = match &m.peer_addr {
                Some(p) => p.clone(),
                None => derived_peer_addr(&m.addr)
                    .map_err(|e| format!("nodes: address of node {}: {e}", m.id))?,
            };
            for a in [&m.addr, &peer] {
                // (Port 0, "any free port", is a single test node's own listener.)
                let any_port = a.parse::<SocketAddr>().is_ok_and(|s| s.port() == 0);
                if !is_host_port(a) && !any_port {
                    return Err(format!(
                        "nodes: address {a:?} of node {} is not host:port (an IP address \
                         or a DNS name, and a port from 1 to 65535)",
                        m.id
                    ));
                }
                if any_port {
                    continue;
                }
                if let Some(other) = addrs.insert(a.clone(), m.id) {
                    if other != m.id {
                        return Err(format!(
                            "nodes: address {a} is given to node {other} and to node {}; \
                             every member needs addresses of its own",
                            m.id
                        ));
                    }
                }
            }
            // (Port 0, "any free port", is a single test node's: two listeners, two ports.)
            if peer == m.addr && !peer.ends_with(":0") {
                return Err(format!(
                    "nodes: node {} has one address for clients and peers ({peer}); \
                     peer traffic needs its own port",
                    m.id
                ));
            }
            m.peer_addr = Some(peer);
        }
        if self.cluster.discovery != Discovery::Dns {
            let Some(me) = self.nodes.iter().find(|m| m.id == self.node_id) else {
                return Err(format!(
                    "nodes: this node's id {} is not listed",
                    self.node_id
                ));
            };
            if self.node_name.is_none() {
                self.node_name = Some(me.name());
            }
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0 || r.election_timeout_min_ms <= r.heartbeat_ms {
            return Err("raft: election_timeout_min_ms must exceed heartbeat_ms > 0".into());
        }
        if r.commit_linger_us >= r.heartbeat_ms.saturating_mul(1000) {
            return Err("raft: commit_linger_us must be shorter than heartbeat_ms".into());
        }
        if r.pipeline_after_us >= r.heartbeat_ms.saturating_mul(1000) {
            return Err("raft: pipeline_after_us must be shorter than heartbeat_ms".into());
        }
        if !(1..=MAX_APPENDS_IN_FLIGHT).contains(&r.appends_in_flight) {
            return Err(format!(
                "raft: appends_in_flight must be 1 to {MAX_APPENDS_IN_FLIGHT}"
            ));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return Err("raft: election_timeout_max_ms must exceed election_timeout_min_ms".into());
        }
        if self
            .client_tokens
            .iter()
            .any(|t| t.token.expose().is_empty())
        {
            return Err("client_tokens: a token cannot be empty".into());
        }
        if self
            .client_tokens
            .iter()
            .any(|t| !sendable(t.token.expose()))
        {
            return Err(
                "client_tokens: a token holds a control character or a blank at an end (a \
                 newline from echo?): it cannot be sent in an Authorization header"
                    .into(),
            );
        }
        if self
            .cluster_secret
            .as_ref()
            .is_some_and(|s| !s.expose().trim().is_empty() && !sendable(s.expose()))
        {
            return Err(
                "cluster_secret holds a control character or a blank at an end (a newline \
                 from echo, or a file read with it?): it cannot be sent in an Authorization \
                 header; remove it on every node"
                    .into(),
            );
        }
        // An empty secret would be sent and checked like any other, and every peer would
        // be refused: the nodes would answer each other 401 forever.
        if self
            .cluster_secret
            .as_ref()
            .is_some_and(|s| s.expose().trim().is_empty())
        {
            return Err(
                "cluster_secret cannot be empty (or only blanks): give every node \
                        the same non-empty value, or remove the key"
                    .into(),
            );
        }
        self.tls.check()?;
        // Peer authentication is on by default: without a credential, anyone who reaches a
        // node's peer port can speak Raft to it (issue 13).
        if let Some(j) = &self.join {
            if !j
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            {
                return Err(format!(
                    "join: {j:?} is not the host:port of a member's peer listener"
                ));
            }
        }
        let multi_node = self.nodes.len() > 1
            || self.cluster.discovery != Discovery::Manual
            || self.join.is_some();
        let authenticated = self.cluster_secret.is_some() || self.tls.mutual_peers();
        if multi_node && !authenticated && !self.insecure_peers {
            return Err(
                "a cluster needs cluster_secret (the same value on every node; \
                 COOKIE_CRUD_CLUSTER_SECRET in the environment, e.g. from a Kubernetes Secret; \
                 `make cluster-start` makes one in run/cluster-secret) or mutual TLS between \
                 peers (tls.peer_ca, tls.peer_cert, tls.peer_key): without one, anyone who \
                 reaches a node can speak Raft to it. For a throwaway lab only, \
                 insecure_peers = true runs without"
                    .into(),
            );
        }
        if !(r.snapshot_log_ratio.is_finite() && (0.0..=100.0).contains(&r.snapshot_log_ratio)) {
            return Err("raft: snapshot_log_ratio must be between 0 and 100".into());
        }
        let decode_limit = cookie_raft::codec::DECODE_LIMIT as u64;
        if r.max_snapshot_bytes == 0 || r.max_snapshot_bytes > decode_limit {
            return Err(format!(
                "raft: max_snapshot_bytes must be between 1 and {decode_limit}"
            ));
        }
        let b = &self.batch;
        if b.max_commands == 0 || b.max_inflight == 0 || b.forward_inflight == 0 {
            return Err(
                "batch: max_commands, max_inflight and forward_inflight must be at least 1".into(),
            );
        }
        if !(b.pipeline_idle_above > 0.0 && b.pipeline_idle_above <= 1.0) {
            return Err("batch: pipeline_idle_above must be above 0 and at most 1".into());
        }
        if b.regather_us > 100_000 {
            return Err("batch: regather_us must be at most 100000 (100 ms)".into());
        }
        let st = &self.storage;
        if st.sm_cache_bytes < 1 << 20 || st.log_cache_bytes < 1 << 20 {
            return Err(
                "storage: sm_cache_bytes and log_cache_bytes must be at least 1 MiB".into(),
            );
        }
        if !(64 << 10..=1 << 30).contains(&st.wal_segment_bytes) {
            return Err("storage: wal_segment_bytes must be from 65536 (64 KiB) to 1 GiB".into());
        }
        if let Some(wal) = &st.wal_dir {
            check_wal_dir(&self.data_dir, wal)?;
        }
        if self.health_check_interval_ms == 0 {
            return Err("health_check_interval_ms must be at least 1".into());
        }
        // 0 for any of these made a node that started and then failed every request of
        // that kind (found in review: every write 503, or requests dropped unanswered).
        for (key, v) in [
            ("write_timeout_ms", self.write_timeout_ms),
            ("read_timeout_ms", self.read_timeout_ms),
            ("http.header_timeout_ms", self.http.header_timeout_ms),
            ("http.body_timeout_ms", self.http.body_timeout_ms),
            (
                "raft.install_snapshot_timeout_ms",
                r.install_snapshot_timeout_ms,
            ),
            ("raft.max_payload_entries", r.max_payload_entries),
        ] {
            if v == 0 {
                return Err(format!("{key} must be at least 1"));
            }
        }
        if self.max_body_bytes == 0 {
            return Err("max_body_bytes must be at least 1".into());
        }
        // A typo of a few zeros was taken as asked: that many runtime threads, each with a
        // stack of its own, started before the node served anything.
        if self.worker_threads > MAX_WORKER_THREADS {
            return Err(format!(
                "worker_threads must be at most {MAX_WORKER_THREADS} (0: one per CPU core)"
            ));
        }
        // 0 kept no key at all: every retry after a 504 applied again, with no word of it
        // (found in review).
        if self.idempotency_retention_secs == 0 {
            return Err("idempotency_retention_secs must be at least 1".into());
        }
        let most = cookie_raft::command::MAX_RECORD_BYTES;
        if self.max_body_bytes > most {
            return Err(format!(
                "max_body_bytes is {}, over the largest record ({most} bytes, 16 MiB): a \
                 body that large could never be stored",
                self.max_body_bytes
            ));
        }
        Ok(())
    }

    /// Where this node's files live: the data directory, and the WAL's
    /// (`storage.wal_dir`, or the data directory's `wal/`).
    pub fn dirs(&self) -> cookie_raft::log::Dirs {
        cookie_raft::log::Dirs::with_wal(&self.data_dir, self.storage.wal_dir.as_deref())
    }

    /// `dns` and `kubernetes` discovery find the members themselves: they need a service
    /// name and a member count, and a `nodes` list would contradict them.
    fn require_discovery_inputs(&self, mode: &str) -> Result<(), String> {
        match &self.cluster.service {
            Some(s) if !s.trim().is_empty() => {}
            _ => {
                return Err(format!(
                    "cluster.service is required with discovery = {mode}"
                ))
            }
        }
        if !(1..=MAX_EXPECTED_NODES).contains(&self.cluster.expected_nodes) {
            return Err(format!(
                "cluster.expected_nodes must be from 1 to {MAX_EXPECTED_NODES}"
            ));
        }
        if !self.nodes.is_empty() {
            return Err(format!(
                "nodes: must be empty with discovery = {mode} (the members are discovered)"
            ));
        }
        Ok(())
    }

    /// A StatefulSet's members: pod `<base>-<i>` is node `i + 1`, reached at
    /// `<base>-<i>.<service>.<namespace>.svc.<cluster_domain>:<peer_port>`.
    fn kubernetes_members(
        &mut self,
        env: &Env,
        listen_port: u16,
        peer_listen_port: u16,
    ) -> Result<(), String> {
        let c = &self.cluster;
        let instance = if c.instance_id == "auto" {
            env.hostname().ok_or(
                "cluster.instance_id: auto needs the pod name in HOSTNAME (or set instance_id)",
            )?
        } else {
            c.instance_id.clone()
        };
        let (base, ordinal) = instance
            .rsplit_once('-')
            .and_then(|(b, o)| Some((b.to_string(), o.parse::<u64>().ok()?)))
            .ok_or_else(|| {
                format!(
                    "cluster.instance_id: {instance:?} does not end in -<ordinal> \
                     (a StatefulSet pod name such as cookie-crud-0)"
                )
            })?;
        let namespace = c
            .namespace
            .clone()
            .or_else(|| env.namespace())
            .unwrap_or_else(|| "default".into());
        let service = c.service.clone().unwrap_or_default();
        let peer_port = c.peer_port.unwrap_or(peer_listen_port);
        let host = |i: u64| format!("{base}-{i}.{service}.{namespace}.svc.{}", c.cluster_domain);
        let member = |i: u64| Member {
            id: i + 1,
            addr: format!("{}:{listen_port}", host(i)),
            peer_addr: Some(format!("{}:{peer_port}", host(i))),
            name: Some(format!("{base}-{i}")),
        };
        self.nodes = (0..c.expected_nodes as u64).map(member).collect();
        // A pod beyond the initial members (the StatefulSet scaled up) is elastic: it joins
        // the running cluster through pod 0 as a voter, and leaves it before it stops
        // (`cookie-crud leave`, the preStop hook).
        if ordinal >= c.expected_nodes as u64 {
            self.nodes.push(member(ordinal));
            if self.join.is_none() {
                self.join = Some(format!("{}:{peer_port}", host(0)));
                self.join_as = JoinAs::Voter;
            }
        }
        self.node_id = ordinal + 1;
        self.node_name.get_or_insert(instance);
        Ok(())
    }

    pub fn name(&self) -> String {
        self.node_name
            .clone()
            .unwrap_or_else(|| format!("node{}", self.node_id))
    }

    /// Whether this node is a pod beyond a StatefulSet's initial members: it joined, and
    /// leaves the membership before it stops (`cookie-crud leave`).
    pub fn is_elastic(&self) -> bool {
        self.cluster.discovery == Discovery::Kubernetes
            && self.node_id > self.cluster.expected_nodes as u64
    }

    /// The address clients use to reach this node.
    pub fn advertise(&self) -> &str {
        self.nodes
            .iter()
            .find(|m| m.id == self.node_id)
            .map_or(self.listen.as_str(), |m| m.addr.as_str())
    }

    /// The address the peer listener binds (filled in when the config is checked).
    pub fn peer_listen(&self) -> &str {
        self.peer_listen.as_deref().unwrap_or_default()
    }

    /// The address other nodes use to reach this one's peer listener.
    pub fn advertise_peer(&self) -> &str {
        self.nodes
            .iter()
            .find(|m| m.id == self.node_id)
            .and_then(|m| m.peer_addr.as_deref())
            .unwrap_or(self.peer_listen())
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    pub fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.read_timeout_ms)
    }

    /// How long a request body may take to arrive, and an answer may wait for its client to
    /// take more of it.
    pub fn http_body_timeout(&self) -> Duration {
        Duration::from_millis(self.http.body_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_a_single_node_on_8080() {
        let mut cfg = Config::default();
        cfg.finish().unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:8080");
        assert_eq!(cfg.nodes.len(), 1);
        assert_eq!(cfg.name(), "node1");
        assert_eq!(cfg.advertise(), "127.0.0.1:8080");
    }

    #[test]
    fn parses_a_cluster_member_config() {
        let cfg = Config::parse(
            r#"
            node_id = 2
            listen = "127.0.0.1:8082"
            data_dir = "run/node2"
            cluster_secret = "s"
            nodes = [
              { id = 1, addr = "127.0.0.1:8081" },
              { id = 2, addr = "127.0.0.1:8082" },
              { id = 3, addr = "127.0.0.1:8083", name = "third" },
            ]
            [raft]
            heartbeat_ms = 100
            "#,
        )
        .unwrap();
        assert_eq!(cfg.name(), "node2");
        assert_eq!(cfg.nodes[2].name(), "third");
        assert_eq!(cfg.raft.heartbeat_ms, 100);
        assert_eq!(cfg.raft.election_timeout_min_ms, 1000);
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        let cfg = Config::from_sources(
            "cache_ttl = 300\n[raft]\nheartbeat_ms = 200\n",
            env(&[
                ("COOKIE_CRUD_CACHE_TTL", "60"),
                ("COOKIE_CRUD_CACHE_ENABLED", "false"),
                ("COOKIE_CRUD_DATA_DIR", "/var/lib/cookie-crud"),
                ("COOKIE_CRUD_RAFT__HEARTBEAT_MS", "100"),
                ("COOKIE_CRUD_LISTEN", "0.0.0.0:8080"),
                ("COOKIE_CRUD_NODE_ID", "2"),
                (
                    "COOKIE_CRUD_NODES",
                    r#"[{ id = 1, addr = "a:8080" }, { id = 2, addr = "b:8080" }]"#,
                ),
                ("COOKIE_CRUD_LOG_FORMAT", "json"),
                ("COOKIE_CRUD_CLUSTER_SECRET", "from-a-kubernetes-secret"),
                ("PATH", "/usr/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.cache_ttl, 60);
        assert!(!cfg.cache_enabled);
        assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/cookie-crud"));
        assert_eq!(cfg.raft.heartbeat_ms, 100);
        assert_eq!(cfg.node_id, 2);
        assert_eq!(cfg.advertise(), "b:8080");
        let secret = cfg.cluster_secret.as_ref().unwrap();
        assert!(secret.matches(b"from-a-kubernetes-secret"));
        // A typo in a variable name is refused, naming the key.
        let err = Config::from_sources("", env(&[("COOKIE_CRUD_CACHE_TLL", "5")])).unwrap_err();
        assert!(err.0.contains("cache_tll"), "{err}");
        let err = Config::from_sources("", env(&[("COOKIE_CRUD_CACHE_TTL", "soon")])).unwrap_err();
        assert!(err.0.contains("cache_ttl"), "{err}");
    }

    /// Peer authentication is on by default: a cluster without a secret does not start,
    /// unless a throwaway lab says so; a single node needs none.
    #[test]
    fn a_cluster_without_a_secret_refuses_to_start() {
        let cluster = "nodes = [{ id = 1, addr = \"a:1\" }, { id = 2, addr = \"b:1\" }]\n";
        let err = Config::parse(cluster).unwrap_err();
        assert!(
            err.0.contains("cluster_secret") && err.0.contains("insecure_peers"),
            "{err}"
        );
        assert!(Config::parse(&format!("{cluster}insecure_peers = true\n")).is_ok());
        assert!(Config::parse(&format!("{cluster}cluster_secret = \"s\"\n")).is_ok());
        let mtls = "[tls]\npeer_ca = \"ca.pem\"\npeer_cert = \"n.pem\"\npeer_key = \"n.key\"\n";
        assert!(Config::parse(&format!("{cluster}{mtls}")).is_ok());
        let half = "[tls]\npeer_ca = \"ca.pem\"\n";
        let err = Config::parse(&format!("{cluster}cluster_secret = \"s\"\n{half}")).unwrap_err();
        assert!(err.0.contains("go together"), "{err}");
        let err = Config::parse("[tls]\ncert = \"c.pem\"\n").unwrap_err();
        assert!(err.0.contains("go together"), "{err}");
        assert!(Config::parse("").is_ok());
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        let err = Config::parse("node_id = 1\ncache_tll = 5\n").unwrap_err();
        assert!(err.0.contains("cache_tll"), "{err}");
        let err =
            Config::parse("node_id = 4\nnodes = [{ id = 1, addr = \"127.0.0.1:1\" }]").unwrap_err();
        assert!(err.0.contains("not listed"), "{err}");
        let err = Config::parse("listen = \"nowhere\"").unwrap_err();
        assert!(err.0.contains("listen"), "{err}");
        for bad in ["0", "-0.5", "1.5", "nan"] {
            let err =
                Config::parse(&format!("[batch]\npipeline_idle_above = {bad}\n")).unwrap_err();
            assert!(err.0.contains("pipeline_idle_above"), "{bad}: {err}");
        }
        let cfg = Config::parse("[batch]\npipeline_idle_above = 1.0\n").unwrap();
        assert_eq!(cfg.batch.pipeline_idle_above, 1.0);
        let err = Config::parse("[batch]\nregather_us = 100001\n").unwrap_err();
        assert!(err.0.contains("regather_us"), "{err}");
        let cfg = Config::parse("[batch]\nregather_us = 0\n").unwrap();
        assert_eq!(cfg.batch.regather_us, 0);
        // The commit linger must end before a heartbeat is due; 0 turns it off.
        for bad in ["0", "9"] {
            let err = Config::parse(&format!("[raft]\nappends_in_flight = {bad}\n")).unwrap_err();
            assert!(err.0.contains("appends_in_flight"), "{err}");
        }
        let cfg = Config::parse("[raft]\nappends_in_flight = 4\n").unwrap();
        assert_eq!(cfg.raft.appends_in_flight, 4);
        let err = Config::parse("[raft]\npipeline_after_us = 200000\n").unwrap_err();
        assert!(err.0.contains("pipeline_after_us"), "{err}");
        let cfg = Config::parse("[raft]\npipeline_after_us = 0\n").unwrap();
        assert_eq!(cfg.raft.pipeline_after_us, 0);
        let err = Config::parse("[raft]\ncommit_linger_us = 200000\n").unwrap_err();
        assert!(err.0.contains("commit_linger_us"), "{err}");
        let cfg = Config::parse("[raft]\ncommit_linger_us = 0\n").unwrap();
        assert_eq!(cfg.raft.commit_linger_us, 0);
        let err = Config::parse("[storage]\nsm_cache_bytes = 4096\n").unwrap_err();
        assert!(err.0.contains("sm_cache_bytes"), "{err}");
        let cfg = Config::parse("[storage]\nlog_cache_bytes = 2097152\n").unwrap();
        assert_eq!(cfg.storage.db_cache().log, 2 << 20);
        assert_eq!(
            cfg.storage.db_cache().state_machine,
            cookie_raft::DbCache::default().state_machine
        );
        // Repacking at rest: on by default, after 10 s; 0 turns it off.
        assert_eq!(
            cfg.storage.repack().map(|p| p.idle),
            Some(std::time::Duration::from_secs(10))
        );
        let cfg = Config::parse("[storage]\nrepack_idle_ms = 0\n").unwrap();
        assert_eq!(cfg.storage.repack(), None);
        assert_eq!(cfg.storage.wal_segment_bytes, 16 << 20);
        assert_eq!(cfg.storage.write_reserve_bytes, 64 << 20);
        let cfg = Config::parse("[storage]\nwal_segment_bytes = 262144\n").unwrap();
        assert_eq!(cfg.storage.wal_segment_bytes, 256 << 10);
        for bad in ["0", "65535", "2147483648"] {
            let err =
                Config::parse(&format!("[storage]\nwal_segment_bytes = {bad}\n")).unwrap_err();
            assert!(
                err.to_string().contains("wal_segment_bytes"),
                "{bad}: {err}"
            );
        }
    }

    /// Found in review: each of these started a node that then misbehaved (two members
    /// answering as each other, a URL dialed with a path in it, every write 503, requests
    /// dropped unanswered, a panic building the member list).
    #[test]
    fn members_need_addresses_of_their_own_and_waits_a_length() {
        let members = |a: &str, b: &str| {
            Config::parse(&format!(
                "node_id = 1\ninsecure_peers = true\nnodes = [\
                 {{ id = 1, addr = \"{a}\" }}, {{ id = 2, addr = \"{b}\" }}]\n"
            ))
        };
        let err = members("127.0.0.1:7001", "127.0.0.1:7001").unwrap_err();
        assert!(err.0.contains("given to node 1 and to node 2"), "{err}");
        // A client address that is another member's (derived) peer address.
        let err = members("127.0.0.1:7001", "127.0.0.1:8001").unwrap_err();
        assert!(err.0.contains("given to node 1 and to node 2"), "{err}");
        for bad in ["bad host:7001", "x/y:1", "127.0.0.1:0x"] {
            let err = members("127.0.0.1:7001", bad).unwrap_err();
            assert!(err.0.contains("is not host:port"), "{bad}: {err}");
        }
        members("127.0.0.1:7001", "node-2.local:7001").unwrap();
        for key in [
            "write_timeout_ms",
            "read_timeout_ms",
            "http.header_timeout_ms",
            "http.body_timeout_ms",
            "raft.install_snapshot_timeout_ms",
            "raft.max_payload_entries",
        ] {
            let text = match key.split_once('.') {
                Some((table, k)) => format!("[{table}]\n{k} = 0\n"),
                None => format!("{key} = 0\n"),
            };
            let err = Config::parse(&text).unwrap_err();
            assert!(
                err.0.contains(&format!("{key} must be at least 1")),
                "{err}"
            );
        }
        let env = vars(&[
            ("COOKIE_CRUD_CLUSTER__DISCOVERY", "kubernetes"),
            ("COOKIE_CRUD_CLUSTER__SERVICE", "svc"),
            ("COOKIE_CRUD_CLUSTER__EXPECTED_NODES", "9223372036854775807"),
            ("COOKIE_CRUD_CLUSTER__INSTANCE_ID", "cookie-crud-0"),
            ("COOKIE_CRUD_CLUSTER_SECRET", "s"),
        ]);
        let err = Config::from_sources("", env).unwrap_err();
        assert!(
            err.0.contains("expected_nodes must be from 1 to 100"),
            "{err}"
        );
    }

    #[test]
    fn wal_dir_is_the_data_directorys_wal_or_outside_it() {
        let dirs = |text: &str| Config::parse(&format!("data_dir = \"/srv/data\"\n{text}"));
        let d = dirs("").unwrap().dirs();
        assert_eq!(d.wal, PathBuf::from("/srv/data/wal"));
        assert!(!d.wal_apart());
        let d = dirs("[storage]\nwal_dir = \"/mnt/fast/wal\"\n")
            .unwrap()
            .dirs();
        assert_eq!(d.wal, PathBuf::from("/mnt/fast/wal"));
        assert!(d.wal_apart());
        assert!(!dirs("[storage]\nwal_dir = \"/srv/data/wal/\"\n")
            .unwrap()
            .dirs()
            .wal_apart());
        for (bad, why) in [
            ("", "must not be empty"),
            ("/srv/data", "is data_dir"),
            ("/srv/data/./", "is data_dir"),
            ("/srv/data/snapshots", "is inside"),
            ("/srv", "holds data_dir"),
        ] {
            let err = dirs(&format!("[storage]\nwal_dir = \"{bad}\"\n")).unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
        let cfg = Config::from_sources(
            "data_dir = \"/srv/data\"\n",
            vars(&[("COOKIE_CRUD_STORAGE__WAL_DIR", "/mnt/wal")]),
        )
        .unwrap();
        assert_eq!(cfg.dirs().wal, PathBuf::from("/mnt/wal"));
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Kubernetes gives every pod variables for each Service of its namespace, named after
    /// the Service: for `cookie-crud` they start with COOKIE_CRUD_ and are no config.
    #[test]
    fn kubernetes_service_links_are_not_config() {
        let links = [
            ("COOKIE_CRUD_SERVICE_HOST", "10.96.12.34"),
            ("COOKIE_CRUD_SERVICE_PORT", "8080"),
            ("COOKIE_CRUD_SERVICE_PORT_HTTP", "8080"),
            ("COOKIE_CRUD_PORT", "tcp://10.96.12.34:8080"),
            ("COOKIE_CRUD_PORT_8080_TCP", "tcp://10.96.12.34:8080"),
            ("COOKIE_CRUD_PORT_8080_TCP_PROTO", "tcp"),
            ("COOKIE_CRUD_PORT_8080_TCP_PORT", "8080"),
            ("COOKIE_CRUD_PORT_8080_TCP_ADDR", "10.96.12.34"),
            ("COOKIE_CRUD_PEERS_SERVICE_HOST", "10.96.12.35"),
            ("COOKIE_CRUD_PEERS_PORT", "udp://10.96.12.35:9080"),
            ("COOKIE_CRUD_PEERS_PORT_9080_UDP_ADDR", "10.96.12.35"),
        ];
        let cfg = Config::from_sources("", vars(&links)).unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:8080");
        // `port` itself is still a key, and a bad one is still refused.
        let cfg = Config::from_sources("", vars(&[("COOKIE_CRUD_PORT", "9000")])).unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:9000");
        let err =
            Config::from_sources("", vars(&[("COOKIE_CRUD_PORT", "http://x:1")])).unwrap_err();
        assert!(err.0.contains("COOKIE_CRUD_PORT"), "{err}");
        // Nested keys are never service links, nor are names that only look alike.
        for (name, value) in [
            ("COOKIE_CRUD_CLUSTER__PEER_PORT", "tcp://10.0.0.1:9080"),
            ("COOKIE_CRUD_PORT_8080", "1"),
            ("COOKIE_CRUD_PORT_X_TCP", "1"),
            ("COOKIE_CRUD_SERVICE", "x"),
        ] {
            assert!(
                Config::from_sources("", vars(&[(name, value)])).is_err(),
                "{name}={value} was taken"
            );
        }
    }

    /// ctl's and the scripts' variables do not stop a node; a variable that is a bad
    /// key or value is named, and not blamed on the file.
    #[test]
    fn other_programs_variables_are_passed_over_and_bad_ones_named() {
        let others = [
            ("COOKIE_CRUD_ENDPOINTS", "a:8080,b:8080"),
            ("COOKIE_CRUD_TOKEN", "t"),
            ("COOKIE_CRUD_CACERT", "/etc/ca.pem"),
            ("COOKIE_CRUD_BIN", "target/release/cookie-crud"),
            ("COOKIE_CRUD_REQUIRE_FUSE", "1"),
            ("COOKIE_CRUD_REQUIRE_MOUNT", "1"),
            ("COOKIE_CRUD_LOG_FORMAT", "json"),
        ];
        assert!(Config::from_sources("", vars(&others)).is_ok());
        let dir = std::env::temp_dir().join(format!("cfg-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("n1.toml");
        std::fs::write(&file, "cache_ttl = 5\n").unwrap();
        let err = Config::from_file_and_env_vars(
            Some(&file),
            vars(&[
                ("COOKIE_CRUD_CACHE_TTL", "6"),
                ("COOKIE_CRUD_CACHE_TLL", "5"),
            ]),
        )
        .unwrap_err();
        assert!(
            err.0
                .starts_with("environment variable COOKIE_CRUD_CACHE_TLL: ")
                && err.0.contains("cache_tll")
                && !err.0.contains("n1.toml"),
            "{err}"
        );
        let err = Config::from_file_and_env_vars(
            Some(&file),
            vars(&[("COOKIE_CRUD_RAFT__HEARTBEAT_MS", "soon")]),
        )
        .unwrap_err();
        assert!(
            err.0.contains("COOKIE_CRUD_RAFT__HEARTBEAT_MS") && err.0.contains("heartbeat_ms"),
            "{err}"
        );
        // So do values a check refuses (not the parse): each was put on the file, which
        // may not even hold the key (found in review).
        for (var, value, says) in [
            ("COOKIE_CRUD_RAFT__HEARTBEAT_MS", "0", "heartbeat_ms"),
            (
                "COOKIE_CRUD_CLUSTER_SECRET",
                " ",
                "cluster_secret cannot be empty",
            ),
            (
                "COOKIE_CRUD_CLIENT_TOKENS",
                "[{ token = \"\", role = \"read\" }]",
                "a token cannot be empty",
            ),
        ] {
            let err =
                Config::from_file_and_env_vars(Some(&file), vars(&[(var, value)])).unwrap_err();
            assert!(
                err.0.starts_with(&format!("environment variable {var}: "))
                    && err.0.contains(says)
                    && !err.0.contains("n1.toml"),
                "{err}"
            );
        }
        std::fs::write(&file, "write_timeout_ms = 0\n").unwrap();
        let err =
            Config::from_file_and_env_vars(Some(&file), vars(&[("COOKIE_CRUD_CACHE_TTL", "6")]))
                .unwrap_err();
        assert!(
            err.0.contains("n1.toml") && err.0.contains("write_timeout_ms"),
            "{err}"
        );
        // The file's own faults still name the file.
        std::fs::write(&file, "cache_tll = 5\n").unwrap();
        let err = Config::from_file_and_env_vars(Some(&file), vars(&others)).unwrap_err();
        assert!(
            err.0.contains("n1.toml") && err.0.contains("cache_tll"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A retention of 0 would keep no key: retries would apply again, silently.
    #[test]
    fn idempotency_keys_are_kept_at_least_a_second() {
        let err = Config::parse("idempotency_retention_secs = 0\n").unwrap_err();
        assert!(err.0.contains("idempotency_retention_secs"), "{err}");
        let cfg = Config::parse("idempotency_retention_secs = 1\n").unwrap();
        assert_eq!(cfg.idempotency_retention_secs, 1);
    }

    /// Node ids start at 1: 0 reads as "no leader" in the metrics and is refused by the
    /// membership API.
    #[test]
    fn node_ids_start_at_one() {
        let err = Config::parse("node_id = 0\n").unwrap_err();
        assert!(err.0.contains("node_id must be at least 1"), "{err}");
        let err = Config::parse(
            "node_id = 1\nnodes = [{ id = 0, addr = \"a:1\" }, { id = 1, addr = \"b:1\" }]\n",
        )
        .unwrap_err();
        assert!(err.0.contains("node ids start at 1"), "{err}");
    }

    /// A worker count past any machine's cores is a typo, refused before the runtime makes
    /// that many threads; 0 (one per core) and a real count are taken.
    #[test]
    fn worker_threads_are_bounded() {
        let err = Config::parse("worker_threads = 1000000\n").unwrap_err();
        assert!(
            err.0.contains("worker_threads must be at most 1024"),
            "{err}"
        );
        for n in [0, 1, MAX_WORKER_THREADS] {
            let cfg = Config::parse(&format!("worker_threads = {n}\n")).unwrap();
            assert_eq!(cfg.worker_threads, n);
        }
    }

    /// An empty secret is refused like an empty token; a secret of digits is a secret; no
    /// error shows a credential.
    #[test]
    fn secrets_are_not_empty_and_never_shown() {
        let cluster = "nodes = [{ id = 1, addr = \"a:1\" }, { id = 2, addr = \"b:1\" }]\n";
        for blank in ["", "  "] {
            let err =
                Config::parse(&format!("{cluster}cluster_secret = \"{blank}\"\n")).unwrap_err();
            assert!(err.0.contains("cluster_secret cannot be empty"), "{err}");
            let err = Config::from_sources(cluster, vars(&[("COOKIE_CRUD_CLUSTER_SECRET", blank)]))
                .unwrap_err();
            assert!(err.0.contains("cluster_secret cannot be empty"), "{err}");
        }
        let cfg = Config::from_sources(
            cluster,
            vars(&[("COOKIE_CRUD_CLUSTER_SECRET", "12345678901234")]),
        )
        .unwrap();
        assert!(cfg.cluster_secret.unwrap().matches(b"12345678901234"));
        let cfg = Config::from_sources(cluster, vars(&[("COOKIE_CRUD_CLUSTER_SECRET", "\"q\"")]))
            .unwrap();
        assert!(cfg.cluster_secret.unwrap().matches(b"\"q\""));
        // In a file a number is refused, without showing it.
        let err =
            Config::parse(&format!("{cluster}cluster_secret = 12345678901234\n")).unwrap_err();
        assert!(
            err.0.contains("cluster_secret") && !err.0.contains("12345678901234"),
            "{err}"
        );
        let err = Config::parse("client_tokens = [{ token = 987654321, role = \"read\" }]\n")
            .unwrap_err();
        assert!(!err.0.contains("987654321"), "{err}");
        // A syntax error on a credential's line does not quote the line.
        for text in [
            "cluster_secret = \"hunter2\n",
            "cluster_secret = hunter2\n",
            "client_tokens = [{ token = \"hunter2\", role = \"read\" }, ]]\n",
        ] {
            let err = Config::parse(text).unwrap_err();
            assert!(
                !err.0.contains("hunter2") && err.0.contains("line 1"),
                "{text}: {err}"
            );
        }
        // Nor does a bad value elsewhere in a variable holding tokens.
        let err = Config::from_sources(
            "",
            vars(&[("COOKIE_CRUD_CLIENT_TOKENS", "hunter2-not-a-list")]),
        )
        .unwrap_err();
        assert!(
            err.0.contains("COOKIE_CRUD_CLIENT_TOKENS") && !err.0.contains("hunter2"),
            "{err}"
        );
        let err = Config::from_sources(
            "cluster_secret = \"hunter2\"\nlisten = \"hunter2\"\n",
            vars(&[]),
        )
        .unwrap_err();
        assert!(!err.0.contains("hunter2"), "{err}");
        // A broken list in a variable, with double quotes, which the message escapes.
        for broken in [
            "[{ token = \"hunter2tok\", role = \"read\" ]",
            "[{ token = \"hunter2tok\", role = \"read\" }",
        ] {
            let err = Config::from_sources("", vars(&[("COOKIE_CRUD_CLIENT_TOKENS", broken)]))
                .unwrap_err();
            assert!(!err.0.contains("hunter2"), "{broken}: {err}");
        }
        // Tokens as a list of strings, where tables belong: in a file or a variable.
        let err = Config::parse("client_tokens = [\"hunter2-token\"]\n").unwrap_err();
        assert!(!err.0.contains("hunter2"), "{err}");
        let err = Config::from_sources(
            "",
            vars(&[("COOKIE_CRUD_CLIENT_TOKENS", "[\"hunter2-token\"]")]),
        )
        .unwrap_err();
        assert!(!err.0.contains("hunter2"), "{err}");
        // A token's role is no credential: a bad one is still named.
        let err = Config::parse("client_tokens = [{ token = \"hunter2\", role = \"reed\" }]\n")
            .unwrap_err();
        assert!(
            !err.0.contains("hunter2") && err.0.contains("reed"),
            "{err}"
        );
        // A syntax error inside a multi-line secret is on a line that does not name it.
        let text = "cluster_secret = \"\"\"\nhunter2 \\q\n\"\"\"\n";
        let err = Config::parse(text).unwrap_err();
        assert!(
            !err.0.contains("hunter2") && err.0.contains("line 2"),
            "{err}"
        );
        let text = "cluster_secret = \"\"\"\nhunter2\n\"\"\"\nlisten = [\n";
        let err = Config::parse(text).unwrap_err();
        assert!(
            err.0.contains("listen"),
            "an error past the secret is shown: {err}"
        );
    }

    /// A credential that cannot go in an HTTP header as it is (a newline from `echo`) is
    /// refused at start, not sent and failed at every peer request.
    #[test]
    fn credentials_must_be_sendable_as_they_are() {
        let cluster = "nodes = [{ id = 1, addr = \"a:1\" }, { id = 2, addr = \"b:1\" }]\n";
        for bad in ["s3cret\n", " s3cret", "s3\u{1}cret"] {
            let err = Config::from_sources(cluster, vars(&[("COOKIE_CRUD_CLUSTER_SECRET", bad)]))
                .unwrap_err();
            assert!(err.0.contains("cannot be sent"), "{bad:?}: {err}");
            assert!(!err.0.contains("s3"), "{err}");
        }
        let text = "client_tokens = [{ token = \"t0ken\\n\", role = \"read\" }]\n";
        let err = Config::parse(text).unwrap_err();
        assert!(err.0.contains("cannot be sent"), "{err}");
        assert!(
            Config::from_sources(cluster, vars(&[("COOKIE_CRUD_CLUSTER_SECRET", "a b!~")])).is_ok()
        );
    }

    #[test]
    fn a_host_port_has_an_ip_or_a_dns_name() {
        for good in [
            "127.0.0.1:8080",
            "[::1]:8080",
            "node-1.cookie-crud.default.svc.cluster.local:9080",
            "h:1",
            "proj_svc_1:8080",
            "host.example.com.:8080",
        ] {
            assert!(is_host_port(good), "{good}");
        }
        for bad in [
            "no such host/?#:1",
            "h:0",
            ":1",
            "h",
            "h:x",
            "-h:1",
            "a..b:1",
            "h..:1",
            ".:1",
            "[fe80::1%eth0]:1",
            "::1:8080",
            "[nope]:1",
            "http://h:1",
        ] {
            assert!(!is_host_port(bad), "{bad}");
        }
    }

    #[test]
    fn seed_keys_port_and_db_file() {
        let cfg = Config::parse("port = 9000\ndb_file = \"/srv/cookies\"\n").unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:9000");
        assert_eq!(cfg.data_dir, PathBuf::from("/srv/cookies"));
        assert_eq!(cfg.advertise(), "127.0.0.1:9000");
        let cfg = Config::parse("[cluster]\ninstance_id = \"eu-west-a\"\n").unwrap();
        assert_eq!(cfg.name(), "eu-west-a");
        let err = Config::parse("[cluster]\ndiscovery = \"gossip\"\n").unwrap_err();
        assert!(err.0.contains("discovery"), "{err}");
        let err = Config::parse("[cluster]\ndiscovery = \"dns\"\n").unwrap_err();
        assert!(err.0.contains("cluster.service"), "{err}");
    }

    #[test]
    fn kubernetes_discovery_derives_id_and_members_from_the_pod() {
        let env = vars(&[
            ("COOKIE_CRUD_LISTEN", "0.0.0.0:8080"),
            ("COOKIE_CRUD_CLUSTER__DISCOVERY", "kubernetes"),
            ("COOKIE_CRUD_CLUSTER__SERVICE", "cookie-crud-peers"),
            ("COOKIE_CRUD_CLUSTER__EXPECTED_NODES", "3"),
            ("COOKIE_CRUD_CLUSTER__NAMESPACE", "shop"),
            ("COOKIE_CRUD_CLUSTER_SECRET", "s"),
            ("HOSTNAME", "cookie-crud-2"),
        ]);
        let cfg = Config::from_sources("", env.clone()).unwrap();
        assert_eq!(cfg.node_id, 3);
        assert_eq!(cfg.name(), "cookie-crud-2");
        let addrs: Vec<&str> = cfg.nodes.iter().map(|m| m.addr.as_str()).collect();
        assert_eq!(
            addrs,
            [
                "cookie-crud-0.cookie-crud-peers.shop.svc.cluster.local:8080",
                "cookie-crud-1.cookie-crud-peers.shop.svc.cluster.local:8080",
                "cookie-crud-2.cookie-crud-peers.shop.svc.cluster.local:8080",
            ]
        );
        assert_eq!(cfg.nodes[0].name(), "cookie-crud-0");
        assert_eq!(cfg.advertise(), addrs[2]);

        // The namespace from the downward-API variable the seed used.
        let mut env2: Vec<_> = env
            .iter()
            .filter(|(k, _)| k != "COOKIE_CRUD_CLUSTER__NAMESPACE")
            .cloned()
            .collect();
        env2.push(("KUBERNETES_NAMESPACE".into(), "prod".into()));
        let cfg = Config::from_sources("", env2).unwrap();
        assert!(cfg.nodes[0].addr.contains(".prod.svc."), "{:?}", cfg.nodes);

        // A pod beyond the initial members joins through pod 0, as a voter.
        let mut more = env.clone();
        more.push(("HOSTNAME".into(), "cookie-crud-3".into()));
        let cfg = Config::from_sources("", more).unwrap();
        assert_eq!(cfg.node_id, 4);
        assert_eq!(
            cfg.join.as_deref(),
            Some("cookie-crud-0.cookie-crud-peers.shop.svc.cluster.local:9080")
        );
        assert_eq!(cfg.join_as, JoinAs::Voter);
        assert!(cfg.is_elastic());
        // A name without an ordinal stops the node.
        let mut bad = env.clone();
        bad.push(("HOSTNAME".into(), "cookiebox".into()));
        let err = Config::from_sources("", bad).unwrap_err();
        assert!(err.0.contains("instance_id"), "{err}");
        let mut bad = env;
        bad.push((
            "COOKIE_CRUD_NODES".into(),
            r#"[{ id = 1, addr = "a:1" }]"#.into(),
        ));
        let err = Config::from_sources("", bad).unwrap_err();
        assert!(err.0.contains("nodes"), "{err}");
    }

    #[test]
    fn dns_discovery_keeps_the_configured_id_and_no_member_list() {
        let cfg = Config::parse(
            "node_id = 7\ncluster_secret = \"s\"\n[cluster]\ndiscovery = \"dns\"\n\
             service = \"cookies.internal\"\ndns_server = \"127.0.0.1:5353\"\n",
        )
        .unwrap();
        assert_eq!(cfg.node_id, 7);
        assert!(cfg.nodes.is_empty());
        assert_eq!(cfg.name(), "node7");
        let err = Config::parse(
            "[cluster]\ndiscovery = \"dns\"\nservice = \"x\"\ndns_server = \"resolver\"\n",
        )
        .unwrap_err();
        assert!(err.0.contains("dns_server"), "{err}");
    }

    /// The peer listener: given, or derived from the client listener; never the same port.
    #[test]
    fn peer_addresses_are_given_or_derived_and_never_the_client_port() {
        let mut cfg = Config::default();
        cfg.finish().unwrap();
        assert_eq!(cfg.peer_listen(), "127.0.0.1:9080");
        assert_eq!(cfg.advertise_peer(), "127.0.0.1:9080");

        let cfg = Config::parse(
            "listen = \"0.0.0.0:7000\"\npeer_listen = \"0.0.0.0:7001\"\ninsecure_peers = true\n\
             nodes = [{ id = 1, addr = \"a:7000\", peer_addr = \"a:7001\" }, \
             { id = 2, addr = \"b:7000\" }]\n",
        )
        .unwrap();
        assert_eq!(cfg.peer_listen(), "0.0.0.0:7001");
        assert_eq!(cfg.advertise_peer(), "a:7001");
        assert_eq!(cfg.nodes[1].peer_addr(), "b:8000");

        let err = Config::parse("listen = \"127.0.0.1:7000\"\npeer_listen = \"127.0.0.1:7000\"\n")
            .unwrap_err();
        assert!(err.0.contains("peer_listen"), "{err}");
        let err = Config::parse("listen = \"127.0.0.1:65000\"\n").unwrap_err();
        assert!(err.0.contains("65535"), "{err}");
        assert!(
            Config::parse("listen = \"127.0.0.1:65000\"\npeer_listen = \"127.0.0.1:65001\"\n")
                .is_ok()
        );
        let err = Config::parse(
            "insecure_peers = true\nnodes = [{ id = 1, addr = \"127.0.0.1:8080\" }, \
             { id = 2, addr = \"b:1\", peer_addr = \"b:1\" }]\n",
        )
        .unwrap_err();
        assert!(err.0.contains("node 2"), "{err}");
        // Port 0 (any free port) stays 0 for both.
        let cfg = Config::parse("listen = \"127.0.0.1:0\"\n").unwrap();
        assert_eq!(cfg.peer_listen(), "127.0.0.1:0");
    }

    /// `config/single.toml` is documented as the embedded default written out: keep it so.
    #[test]
    fn single_toml_is_the_embedded_default() {
        let text = include_str!("../config/single.toml");
        let file = Config::parse(text).unwrap();
        let mut default = Config::default();
        default.finish().unwrap();
        assert_eq!(format!("{file:?}"), format!("{default:?}"));
    }
}
