//! The `cookie-crud` binary: run one node, or check that one is healthy.
//!
//! `cookie-crud [CONFIG.toml]` (or `cookie-crud run`) runs one node. Without a config file it
//! runs the embedded default, a single-node store on 127.0.0.1:8080 with its data in
//! `./data`; `COOKIE_CRUD_*` environment variables set any key.
//!
//! `cookie-crud healthcheck [CONFIG.toml]`: exit 0 when the node configured there answers
//! `GET /health` with 200 (a container `HEALTHCHECK` with no curl in the image); over HTTPS
//! when the config has a client certificate.
//!
//! `cookie-crud certs --out DIR --host NAME...`: a private CA and node certificates.
//!
//! Exit codes: 0 success, 1 a failure while running (or an unhealthy node), 2 a command line
//! or configuration the node refuses.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use cookie_crud::config::{Config, LogFormat};
use cookie_crud::tls::Tls;
use cookie_raft::log::Dirs;
use cookie_raft::network::{read_capped, MAX_RESPONSE_BYTES};
use tracing_subscriber::EnvFilter;

/// mimalloc, not glibc's malloc: a write allocates and frees many small buffers (request,
/// JSON, log entry, redb pages) across threads, and glibc's arenas spent 18% of a loaded
/// leader's CPU on it (docs/benchmarks.md, "Where a write's time goes").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "cookie-crud",
    version,
    about = "A Raft-replicated REST store of cookie records",
    long_about = "Runs one cookie-crud node. Without a config it serves a single-node store on \
                  127.0.0.1:8080 with data in ./data; COOKIE_CRUD_* environment variables set \
                  any key (COOKIE_CRUD_RAFT__HEARTBEAT_MS sets raft.heartbeat_ms).",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one node (what plain `cookie-crud` does).
    Run(RunArgs),
    /// Exit 0 when the node this config describes answers GET /health with 200.
    Healthcheck(ConfigArg),
    /// Remove this node from the cluster's membership (through its own API) and wait until
    /// the change is made: what a stopping node that should not come back runs. With
    /// `--if-elastic`, only a Kubernetes pod beyond the initial members does (the
    /// StatefulSet's preStop hook).
    Leave(LeaveArgs),
    /// Make a private CA and node certificates for a lab or test cluster (TLS and mutual
    /// TLS between peers): ca.pem, ca.key, node{i}.pem (the node's certificate, then the
    /// CA's) and node{i}.key. Existing files are never overwritten.
    Certs(CertsArgs),
    /// Operate a running cluster: status, members, records, backup, cache
    /// (`cookie-crud ctl --help`).
    Ctl(cookie_crud::ctl::CtlArgs),
    /// Make the data directory of a brand-new one-member cluster (a new cluster id) that
    /// holds exactly a backup's records; the node is the one the config describes, and other
    /// nodes then join it. Refuses a corrupt or truncated file, a file from a newer version,
    /// and a data directory that is not empty.
    Restore(RestoreArgs),
    /// Write a backup of a stopped node's data directory: for a cluster that lost its
    /// quorum for good, restore it into a new cluster. Every entry of the node's log is
    /// applied on top of its state first (committed or not: nothing acknowledged is lost);
    /// the directory itself is never changed.
    Dump(DumpArgs),
    /// Move a stopped node's WAL into another directory (onto a device of its own, or back
    /// into the data directory's `wal/`), then say what to set `storage.wal_dir` to. A move
    /// cut short is finished by running it again; the node refuses to start on a half-moved
    /// WAL meanwhile.
    MoveWal(MoveWalArgs),
}

#[derive(Args)]
struct MoveWalArgs {
    /// The directory to move the WAL into: empty, or missing.
    #[arg(long, value_name = "DIR")]
    to: PathBuf,
    #[command(flatten)]
    node: NodeDirsArgs,
}

/// A stopped node's directories, for the subcommands that work on them.
#[derive(Args)]
struct NodeDirsArgs {
    /// The node's data directory (default: the config's `data_dir`).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The node's WAL directory, where it is apart from the data directory (default: the
    /// config's `storage.wal_dir` when no `--data-dir` is given, else the data directory's
    /// `wal/`).
    #[arg(long, value_name = "DIR")]
    wal_dir: Option<PathBuf>,
    #[command(flatten)]
    config: ConfigArg,
}

impl NodeDirsArgs {
    /// The directories, or the config's error (said on stderr, as `cmd`'s).
    fn dirs(&self, cmd: &str) -> Result<Dirs, ExitCode> {
        match &self.data_dir {
            Some(dir) => Ok(Dirs::with_wal(dir, self.wal_dir.as_deref())),
            None => match self.config.load() {
                Ok(c) => Ok(Dirs::with_wal(
                    &c.data_dir,
                    self.wal_dir.as_deref().or(c.storage.wal_dir.as_deref()),
                )),
                Err(e) => {
                    eprintln!("cookie-crud {cmd}: {e}");
                    Err(ExitCode::from(2))
                }
            },
        }
    }
}

#[derive(Args)]
struct DumpArgs {
    /// The backup file to write.
    #[arg(long, value_name = "FILE")]
    to: PathBuf,
    /// Only the state the node had applied, not the rest of its log.
    #[arg(long)]
    applied_only: bool,
    /// Where the working copy of the data goes while it is replayed (removed at the end;
    /// default: beside the backup file).
    #[arg(long, value_name = "DIR")]
    scratch_dir: Option<PathBuf>,
    #[command(flatten)]
    node: NodeDirsArgs,
}

#[derive(Args)]
struct RestoreArgs {
    /// The backup file (`cookie-crud ctl backup`, or `GET /admin/backup`).
    #[arg(long, value_name = "FILE")]
    from: PathBuf,
    /// The data directory to create (default: the config's `data_dir`).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The restored node's id (default: the config's `node_id`).
    #[arg(long, value_name = "N")]
    node_id: Option<u64>,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Args)]
struct LeaveArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Do nothing unless this node is a pod beyond the StatefulSet's initial members.
    #[arg(long)]
    if_elastic: bool,
}

#[derive(Args)]
struct CertsArgs {
    /// The directory to write into.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// How many node certificates.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// A name every certificate is valid for: an IP address or a DNS name (`*.` allowed);
    /// repeat it for each name peers and clients use.
    #[arg(long = "host", value_name = "NAME", required = true)]
    hosts: Vec<String>,
    /// Sign with the CA of an earlier run (the directory holding its `ca.pem` and
    /// `ca.key`) instead of making a new one: certificates for a node added later, or
    /// renewed ones, that the cluster's members trust. `--out` gets a copy of `ca.pem`.
    #[arg(long, value_name = "DIR")]
    ca: Option<PathBuf>,
    /// How many days the node certificates are valid (default: until the year 4096).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    days: Option<u32>,
}

/// `cookie-crud restore`: the config the restored node will run with, the flags over it.
fn restore(r: &RestoreArgs) -> ExitCode {
    let mut extra = Vec::new();
    if let Some(d) = &r.data_dir {
        extra.push((
            "COOKIE_CRUD_DATA_DIR".to_owned(),
            format!("{:?}", d.display().to_string()),
        ));
    }
    if let Some(n) = r.node_id {
        extra.push(("COOKIE_CRUD_NODE_ID".to_owned(), n.to_string()));
    }
    let cfg = match r.config.load_with(extra) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cookie-crud restore: {e}");
            return ExitCode::from(2);
        }
    };
    match cookie_crud::ctl::backup::restore(&cfg, &r.from) {
        Ok(h) => {
            println!(
                "restored {} records (index {}, term {}, from {}) into {} as node {} of a new \
                 one-member cluster; start it, then add the other nodes (--join)",
                h.records,
                h.index,
                h.term,
                if h.node.is_empty() { "?" } else { &h.node },
                cfg.data_dir.display(),
                cfg.node_id
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cookie-crud restore: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `cookie-crud dump`.
fn dump(d: &DumpArgs) -> ExitCode {
    let dirs = match d.node.dirs("dump") {
        Ok(dirs) => dirs,
        Err(code) => return code,
    };
    match cookie_crud::ctl::backup::dump(&dirs, &d.to, d.scratch_dir.as_deref(), d.applied_only) {
        Ok(r) => {
            println!(
                "wrote {}: {} records at index {} (applied {}, then {} entries of the log)",
                d.to.display(),
                r.header.records,
                r.header.index,
                r.applied,
                r.replayed
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cookie-crud dump: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `cookie-crud move-wal`: exit 2 when it refused (nothing changed), 1 when it failed on
/// the way (running it again finishes the move).
fn move_wal(m: &MoveWalArgs) -> ExitCode {
    let dirs = match m.node.dirs("move-wal") {
        Ok(dirs) => dirs,
        Err(code) => return code,
    };
    match cookie_raft::log::relocate::move_wal(&dirs, &m.to) {
        Ok(moved) => {
            let setting = if Dirs::with_wal(&dirs.data, Some(&moved.to)).wal_apart() {
                format!(
                    "set storage.wal_dir = {:?} in the node's config (or \
                     COOKIE_CRUD_STORAGE__WAL_DIR)",
                    moved.to.display().to_string()
                )
            } else {
                "leave storage.wal_dir unset in the node's config".to_owned()
            };
            println!(
                "moved the WAL of {} ({} segments, {} bytes) from {} to {}; now {setting}, \
                 then start the node",
                dirs.data.display(),
                moved.segments,
                moved.bytes,
                dirs.wal.display(),
                moved.to.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cookie-crud move-wal: {e}");
            // Refusals (of the target, of a running node, of a WAL that is not this
            // log's) come before anything is written.
            use std::io::ErrorKind::{InvalidData, InvalidInput};
            let refused = matches!(e.kind(), InvalidInput | InvalidData);
            ExitCode::from(if refused { 2 } else { 1 })
        }
    }
}

/// Where the configuration comes from.
#[derive(Args, Default)]
struct ConfigArg {
    /// The node's config file (TOML).
    #[arg(short, long = "config", value_name = "PATH")]
    config: Option<PathBuf>,
    /// The config file, as a plain argument.
    #[arg(value_name = "CONFIG", conflicts_with = "config")]
    path: Option<PathBuf>,
}

impl ConfigArg {
    fn load(&self) -> Result<Config, cookie_crud::config::ConfigError> {
        self.load_with(Vec::new())
    }

    /// Load, with `extra` environment variables over the process's: the flags win over the
    /// file and the environment, as the environment over the file.
    fn load_with(
        &self,
        extra: Vec<(String, String)>,
    ) -> Result<Config, cookie_crud::config::ConfigError> {
        let mut env: Vec<(String, String)> = std::env::vars().collect();
        env.extend(extra);
        Config::from_file_and_env_vars(self.config.as_deref().or(self.path.as_deref()), env)
    }
}

/// What running a node takes: the configuration, and the flags that join a running cluster.
/// Only a running node has them: `--join` given to `dump` or `move-wal` would be a
/// mistake said nowhere, so clap refuses it there.
#[derive(Args, Default)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Join a running cluster through the member whose peer listener is at ADDR (the
    /// config's `join`): this node must have empty data.
    #[arg(long, value_name = "ADDR")]
    join: Option<String>,
    /// What to join as: `learner` (a read replica, the default) or `voter` (the config's
    /// `join_as`).
    #[arg(long, value_name = "ROLE", requires = "join")]
    join_as: Option<String>,
}

impl RunArgs {
    fn load(&self) -> Result<Config, cookie_crud::config::ConfigError> {
        let mut flags = Vec::new();
        if let Some(j) = &self.join {
            flags.push(("COOKIE_CRUD_JOIN".into(), format!("{j:?}")));
        }
        if let Some(r) = &self.join_as {
            flags.push(("COOKIE_CRUD_JOIN_AS".into(), format!("{r:?}")));
        }
        self.config.load_with(flags)
    }
}

/// `GET /health` on this node's own port, over loopback when it listens on every address.
fn healthcheck(cfg: &Config) -> ExitCode {
    let Some((client, base)) = own_client(cfg) else {
        return ExitCode::from(2);
    };
    let Some(rt) = local_runtime() else {
        return ExitCode::FAILURE;
    };
    let url = format!("{base}/health");
    let status = rt.block_on(async {
        client
            .get(&url)
            .timeout(std::time::Duration::from_secs(3))
            .send()
            .await
            .map(|r| r.status())
    });
    match status {
        Ok(s) if s.is_success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("cookie-crud: {url} answered {s}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("cookie-crud: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `DELETE /cluster/members/{own id}` on this node's own client listener (an admin token
/// from the config when client tokens are set), retried while the cluster has no leader or
/// is busy with another change, for up to 25 s (within a pod's termination grace period).
fn leave(cfg: &Config) -> ExitCode {
    let Some((client, base)) = own_client(cfg) else {
        return ExitCode::from(2);
    };
    let url = format!("{base}/cluster/members/{}", cfg.node_id);
    let token = cfg
        .client_tokens
        .iter()
        .find(|t| t.role == cookie_crud::config::Role::Admin)
        .map(|t| t.token.expose().to_owned());
    let Some(rt) = local_runtime() else {
        return ExitCode::FAILURE;
    };
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(25);
        loop {
            let answer = match with_token(client.delete(&url), &token).send().await {
                Ok(r) => {
                    let status = r.status();
                    // A membership answer is a short JSON object: read no more than a bound.
                    let body = read_capped(r, MAX_RESPONSE_BYTES).await;
                    let body = body.unwrap_or_else(|e| e.to_string().into_bytes());
                    Ok((status, String::from_utf8_lossy(&body).into_owned()))
                }
                Err(e) => Err(e.to_string()),
            };
            match answer {
                Ok((s, body)) if s.is_success() || s == 404 => {
                    println!("node {} left the membership: {body}", cfg.node_id);
                    return ExitCode::SUCCESS;
                }
                Ok((s, body)) if s != 503 && s != 409 && s != 504 => {
                    eprintln!("cookie-crud leave: {url} answered {s}: {body}");
                    return ExitCode::FAILURE;
                }
                // A node outside the membership knows no leader and answers 503: one that
                // never joined, or was removed already (a leave run twice). It was asked
                // again for 25 s and then said it was still a member (found in review).
                Ok((s, _))
                    if s == 503 && !names_itself(&client, &base, cfg.node_id, &token).await =>
                {
                    println!(
                        "node {} is not a member: its membership does not name it",
                        cfg.node_id
                    );
                    return ExitCode::SUCCESS;
                }
                other => {
                    if tokio::time::Instant::now() > deadline {
                        let why = match other {
                            Ok((s, body)) => {
                                // The node's reason, not its JSON.
                                let reason = serde_json::from_str::<serde_json::Value>(&body)
                                    .ok()
                                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                                    .unwrap_or_else(|| body.trim().to_owned());
                                format!("{url} still answers {s}: {reason}")
                            }
                            Err(e) => format!("{url}: {e}"),
                        };
                        eprintln!(
                            "cookie-crud leave: gave up after 25 s, node {} was not removed: {why}",
                            cfg.node_id
                        );
                        return ExitCode::FAILURE;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        }
    })
}

/// Whether the node's own view of the membership (`GET /cluster/members`) names `id`. True
/// when it cannot tell: only a clear "not listed" ends a leave early.
async fn names_itself(
    client: &reqwest::Client,
    base: &str,
    id: u64,
    token: &Option<String>,
) -> bool {
    let req = with_token(client.get(format!("{base}/cluster/members")), token);
    let Ok(r) = req.send().await else {
        return true;
    };
    if !r.status().is_success() {
        return true;
    }
    let Ok(body) = read_capped(r, MAX_RESPONSE_BYTES).await else {
        return true;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return true;
    };
    match v["members"].as_array() {
        Some(members) => members.iter().any(|m| m["id"].as_u64() == Some(id)),
        None => true,
    }
}

/// `req` with the admin token, when the config has one.
fn with_token(req: reqwest::RequestBuilder, token: &Option<String>) -> reqwest::RequestBuilder {
    match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
}

/// A one-thread runtime for the subcommands that call their own node (said on stderr when
/// it cannot be made).
fn local_runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| eprintln!("cookie-crud: {e}"))
        .ok()
}

/// A client for this node's own client listener, over loopback: HTTPS pinned to its own
/// certificate when it has one. `None` (said on stderr) when the config cannot give one.
fn own_client(cfg: &Config) -> Option<(reqwest::Client, String)> {
    let mut addr: std::net::SocketAddr = match cfg.listen.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cookie-crud: listen: {e}");
            return None;
        }
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    cookie_raft::network::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(30));
    let scheme = match &cfg.tls.cert {
        Some(cert) => match Tls::pinned(cert) {
            Ok(tls) => {
                builder = builder.tls_backend_preconfigured(tls);
                "https"
            }
            Err(e) => {
                eprintln!("cookie-crud: {e}");
                return None;
            }
        },
        None => "http",
    };
    match builder.build() {
        Ok(c) => Some((c, format!("{scheme}://{addr}"))),
        Err(e) => {
            eprintln!("cookie-crud: {e}");
            None
        }
    }
}

/// Logs: `RUST_LOG` or the config's `log_level`; text, or JSON lines when the config's
/// `log_format` (or `COOKIE_CRUD_LOG_FORMAT`) says `json`.
fn init_logging(cfg: &Config) -> Result<(), String> {
    // A RUST_LOG that does not parse is refused, as a bad log_level is: it was dropped for
    // the config's level without a word, so the logs an operator asked for never came.
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => {
            EnvFilter::try_new(&env).map_err(|e| format!("RUST_LOG {env:?}: {e}"))?
        }
        Err(std::env::VarError::NotUnicode(_)) => return Err("RUST_LOG is not UTF-8".into()),
        _ => EnvFilter::try_new(&cfg.log_level)
            .map_err(|e| format!("log_level {:?}: {e}", cfg.log_level))?,
    };
    let format = match std::env::var("COOKIE_CRUD_LOG_FORMAT").ok().as_deref() {
        Some("json") => LogFormat::Json,
        Some("text") => LogFormat::Text,
        Some(other) => {
            return Err(format!(
                "COOKIE_CRUD_LOG_FORMAT: {other:?} is not text or json"
            ))
        }
        None => cfg.log_format,
    };
    // Colour only for a person at a terminal: in a file or a log collector the escape codes
    // are noise in every line. (The logs go to standard output, fmt's default.)
    // A log line that cannot be written (the reader of standard output went away) is
    // dropped: tracing's report of it went to the same broken pipe and panicked the task
    // that logged, the signal handler among them, so SIGTERM was ignored (found in review).
    let builder = tracing_subscriber::fmt()
        .log_internal_errors(false)
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
    Ok(())
}

fn run_node(cfg: Config) -> ExitCode {
    if let Err(e) = init_logging(&cfg) {
        eprintln!("cookie-crud: {e}");
        return ExitCode::from(2);
    }
    // Before the runtime and the stores allocate: every later page fault follows it.
    match cookie_crud::process::transparent_huge_pages(cfg.transparent_huge_pages) {
        Ok(off) => tracing::info!(transparent_huge_pages = !off, "process memory"),
        Err(e) => tracing::warn!("cannot turn transparent huge pages off: {e}"),
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if cfg.worker_threads > 0 {
        rt.worker_threads(cfg.worker_threads);
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cookie-crud: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(cookie_crud::node::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("fatal: {e}");
            eprintln!("cookie-crud: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        None => cli.run,
        Some(Cmd::Run(a)) => a,
        Some(Cmd::Healthcheck(a)) => {
            return match a.load() {
                Ok(cfg) => healthcheck(&cfg),
                Err(e) => {
                    eprintln!("cookie-crud: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Some(Cmd::Leave(l)) => {
            return match l.config.load() {
                Ok(cfg) if l.if_elastic && !cfg.is_elastic() => {
                    println!("not an elastic pod: staying in the membership");
                    ExitCode::SUCCESS
                }
                Ok(cfg) => leave(&cfg),
                Err(e) => {
                    eprintln!("cookie-crud: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Some(Cmd::Ctl(c)) => return cookie_crud::ctl::run(c),
        Some(Cmd::Restore(r)) => return restore(&r),
        Some(Cmd::Dump(d)) => return dump(&d),
        Some(Cmd::MoveWal(m)) => return move_wal(&m),
        Some(Cmd::Certs(c)) => {
            let signing = cookie_crud::certs::Signing {
                ca: c.ca,
                days: c.days,
            };
            return match cookie_crud::certs::generate_with(&c.out, (c.nodes, &c.hosts), &signing) {
                Ok(w) => {
                    println!(
                        "wrote {} and {} node certificates",
                        w.ca.display(),
                        w.nodes.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cookie-crud certs: {e}");
                    ExitCode::from(2)
                }
            };
        }
    };
    match args.load() {
        Ok(cfg) => run_node(cfg),
        Err(e) => {
            eprintln!("cookie-crud: {e}");
            ExitCode::from(2)
        }
    }
}
