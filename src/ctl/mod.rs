//! `cookie-crud ctl`: the operator's command line against a running cluster, and
//! `cookie-crud restore`.
//!
//! - [`client`]: endpoints tried in turn, token, CA, deadline; errors and their exit codes.
//! - [`status`]: the cluster at a glance, a table of every member.
//! - [`backup`]: backups downloaded and checked; restore into a new data directory.
//!
//! Records and members are thin calls of the API (api.md): the answer's JSON on standard
//! output, the error on standard error, and an exit code a script can branch on:
//! 0 success, 1 failure (no node reachable, a node's 5xx, a local error), 2 bad input or a
//! refused request (4xx), 3 not found (404), 4 conflict or failed precondition (409, 412),
//! 5 unauthorized or forbidden (401, 403).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use reqwest::Method;

pub mod backup;
pub mod client;
pub mod status;

use client::{json_arg, normalize, random_key, Call, Client, CtlError, Target};

/// `cookie-crud ctl`'s options and command.
#[derive(Args, Debug)]
pub struct CtlArgs {
    /// The nodes' client addresses (host:port or URLs), comma-separated: tried in turn.
    #[arg(
        long,
        env = "COOKIE_CRUD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:8080"
    )]
    endpoints: Vec<String>,
    /// A client token (`Authorization: Bearer`), when the cluster has client tokens.
    #[arg(long, env = "COOKIE_CRUD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Trust this CA certificate (PEM) for HTTPS; host:port endpoints then use https.
    #[arg(long, env = "COOKIE_CRUD_CACERT", value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// Give up after this many seconds (unreachable nodes and 503s are retried until then).
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    #[command(subcommand)]
    command: CtlCmd,
}

#[derive(Subcommand, Debug)]
enum CtlCmd {
    /// Every member: role, term, log indexes, lag behind the leader, reachable (a table).
    Status {
        /// JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// The membership: list, add, promote, remove.
    #[command(subcommand)]
    Members(MembersCmd),
    /// One record.
    Get {
        id: String,
        #[arg(long, default_value = "linearizable")]
        consistency: String,
    },
    /// The records, newest first (one page with --limit).
    List {
        #[arg(long)]
        limit: Option<usize>,
        /// Continue after this record id (the previous page's `next_after`).
        #[arg(long, conflicts_with = "cursor")]
        after: Option<String>,
        /// Continue from the previous page's `next_cursor`, which goes on past its last
        /// record even after that record is deleted.
        #[arg(long)]
        cursor: Option<String>,
        #[arg(long, default_value = "linearizable")]
        consistency: String,
    },
    /// Create a record: JSON inline, @FILE, or - for standard input.
    Create {
        json: String,
        #[command(flatten)]
        write: WriteOpts,
    },
    /// Update (merge into) a record.
    Put {
        id: String,
        json: String,
        #[command(flatten)]
        write: WriteOpts,
    },
    /// Delete a record.
    Delete {
        id: String,
        #[command(flatten)]
        write: WriteOpts,
    },
    /// Download a consistent backup into FILE (checked before it is kept).
    Backup {
        file: PathBuf,
        /// `linearizable` (everything committed when the backup starts) or `local`.
        #[arg(long, default_value = "linearizable")]
        consistency: String,
    },
    /// The read cache: statistics, or clear the answering node's.
    #[command(subcommand)]
    Cache(CacheCmd),
}

#[derive(Args, Debug)]
struct WriteOpts {
    /// Only if the record's version (ETag) is this.
    #[arg(long, value_name = "VERSION")]
    if_match: Option<u64>,
    /// The write's idempotency key (default: a random one, so retries are safe).
    #[arg(long)]
    idempotency_key: Option<String>,
}

#[derive(Subcommand, Debug)]
enum MembersCmd {
    List,
    /// Add a node: a learner, or a voter once it has caught up.
    Add {
        #[arg(long)]
        id: u64,
        /// Its client address (host:port).
        #[arg(long)]
        addr: String,
        /// Its peer address (default: the client port + 1000).
        #[arg(long)]
        peer_addr: Option<String>,
        #[arg(long, default_value = "learner", value_parser = ["learner", "voter"])]
        role: String,
    },
    /// Make a learner a voter.
    Promote {
        id: u64,
    },
    /// Remove a node from the membership.
    Remove {
        id: u64,
    },
}

#[derive(Subcommand, Debug)]
enum CacheCmd {
    Stats,
    Clear,
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

fn print_body(a: &client::Answer) {
    let body = String::from_utf8_lossy(&a.body);
    println!("{}", body.trim_end());
}

/// A write: its idempotency key, and `If-Match` when given.
fn write_call<'a>(method: Method, path: &'a str, w: &WriteOpts) -> Call<'a> {
    let mut call = Call::new(method, path).header(
        "idempotency-key",
        w.idempotency_key.clone().unwrap_or_else(random_key),
    );
    if let Some(v) = w.if_match {
        call = call.header("if-match", format!("\"{v}\""));
    }
    call
}

async fn run_cmd(client: &Client, cmd: CtlCmd) -> Result<(), CtlError> {
    match cmd {
        CtlCmd::Status { json } => {
            let rows = status::rows(client).await;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows)
                        .map_err(|e| CtlError::Failed(e.to_string()))?
                );
            } else {
                print!("{}", status::table(&rows));
            }
            if rows.iter().all(|r| !r.reachable) {
                if rows.iter().any(|r| r.role == "refused") {
                    return Err(CtlError::Unauthorized(
                        "every member that answered refused this token: `status` reads \
                         /cluster, which needs an admin token (--token, COOKIE_CRUD_TOKEN)"
                            .into(),
                    ));
                }
                return Err(CtlError::Failed("no member is reachable".into()));
            }
        }
        CtlCmd::Members(m) => {
            let a = match m {
                MembersCmd::List => client.ok(Call::get("/cluster/members")).await?,
                MembersCmd::Add {
                    id,
                    addr,
                    peer_addr,
                    role,
                } => {
                    let mut body = serde_json::json!({"id": id, "addr": addr, "role": role});
                    if let Some(p) = peer_addr {
                        body["peer_addr"] = p.into();
                    }
                    let call = Call::new(Method::POST, "/cluster/members")
                        .json(body.to_string().into_bytes())
                        .answered_once();
                    client.ok(call).await?
                }
                MembersCmd::Promote { id } => {
                    let path = format!("/cluster/members/{id}/promote");
                    client
                        .ok(Call::new(Method::POST, &path).answered_once())
                        .await?
                }
                MembersCmd::Remove { id } => {
                    let path = format!("/cluster/members/{id}");
                    client
                        .ok(Call::new(Method::DELETE, &path).answered_once())
                        .await?
                }
            };
            print_body(&a);
        }
        CtlCmd::Get { id, consistency } => {
            let path = format!("/cookies/{}?consistency={}", enc(&id), enc(&consistency));
            print_body(&client.ok(Call::get(&path)).await?);
        }
        CtlCmd::List {
            limit,
            after,
            cursor,
            consistency,
        } => {
            let mut path = format!("/cookies?consistency={}", enc(&consistency));
            if let Some(l) = limit {
                path.push_str(&format!("&limit={l}"));
            }
            if let Some(a) = after {
                path.push_str(&format!("&after={}", enc(&a)));
            }
            if let Some(c) = cursor {
                path.push_str(&format!("&cursor={}", enc(&c)));
            }
            print_body(&client.ok(Call::get(&path)).await?);
        }
        CtlCmd::Create { json, write } => {
            let call = write_call(Method::POST, "/cookies", &write).json(json_arg(&json)?);
            print_body(&client.ok(call).await?);
        }
        CtlCmd::Put { id, json, write } => {
            let path = format!("/cookies/{}", enc(&id));
            let call = write_call(Method::PUT, &path, &write).json(json_arg(&json)?);
            print_body(&client.ok(call).await?);
        }
        CtlCmd::Delete { id, write } => {
            let path = format!("/cookies/{}", enc(&id));
            print_body(&client.ok(write_call(Method::DELETE, &path, &write)).await?);
        }
        CtlCmd::Backup { file, consistency } => {
            let h = backup::download(client, &file, &consistency).await?;
            println!(
                "{}",
                serde_json::json!({
                    "file": file.display().to_string(), "index": h.index, "term": h.term,
                    "records": h.records, "sha256": h.sha256, "cluster_id": h.cluster_id,
                    "node": h.node,
                })
            );
        }
        CtlCmd::Cache(c) => {
            let call = match c {
                CacheCmd::Stats => Call::get("/cache"),
                CacheCmd::Clear => Call::new(Method::DELETE, "/cache"),
            };
            print_body(&client.ok(call).await?);
        }
    }
    Ok(())
}

/// Run one `ctl` command; its exit code.
pub fn run(args: CtlArgs) -> ExitCode {
    let tls = args.cacert.is_some();
    let target = Target {
        endpoints: args
            .endpoints
            .iter()
            .filter(|e| !e.trim().is_empty())
            .map(|e| normalize(e, tls))
            .collect(),
        token: args.token,
        cacert: args.cacert,
        timeout: Duration::from_secs(args.timeout.max(1)),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cookie-crud ctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let client = Client::new(target)?;
        run_cmd(&client, args.command).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cookie-crud ctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
