//! `cookie-crud [CONFIG.toml]`: run one node. Without a config file it runs the embedded
//! default, a single-node store on 127.0.0.1:8080 with its data in `./data`.
//!
//! `cookie-crud healthcheck [CONFIG.toml]`: exit 0 when the node configured there answers
//! `GET /health` with 200 (a container `HEALTHCHECK` with no curl in the image).

use std::path::PathBuf;
use std::process::ExitCode;

use cookie_crud::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

fn usage() -> &'static str {
    "usage: cookie-crud [healthcheck] [--config PATH | PATH]\n\
     Runs one cookie-crud node. Without a config it serves a single-node store on \
     127.0.0.1:8080 with data in ./data; COOKIE_CRUD_* environment variables set any key.\n\
     `healthcheck` exits 0 when that node answers GET /health with 200."
}

struct Args {
    config: Option<PathBuf>,
    healthcheck: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1).peekable();
    let healthcheck = args.next_if(|a| a == "healthcheck").is_some();
    let mut path = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => return Err(usage().into()),
            "-c" | "--config" => {
                path = Some(PathBuf::from(args.next().ok_or("--config needs a path")?))
            }
            other if !other.starts_with('-') && path.is_none() => path = Some(PathBuf::from(other)),
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    Ok(Args {
        config: path,
        healthcheck,
    })
}

/// `GET /health` on this node's own port, over loopback when it listens on every address.
fn healthcheck(cfg: &Config) -> ExitCode {
    let mut addr: std::net::SocketAddr = match cfg.listen.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cookie-crud: listen: {e}");
            return ExitCode::from(2);
        }
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cookie-crud: {e}");
            return ExitCode::FAILURE;
        }
    };
    let url = format!("http://{addr}/health");
    let status = rt.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(3))
            .build()?;
        client.get(&url).send().await.map(|r| r.status())
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

/// Logs: `RUST_LOG` or the config's `log_level`; text, or JSON lines when the config's
/// `log_format` (or `COOKIE_CRUD_LOG_FORMAT`) says `json`.
fn init_logging(cfg: &Config) -> Result<(), String> {
    let filter = match EnvFilter::try_from_default_env() {
        Ok(f) => f,
        Err(_) => EnvFilter::try_new(&cfg.log_level)
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
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
    Ok(())
}

fn main() -> ExitCode {
    let (cfg, args) =
        match parse_args().and_then(|a| Ok((Config::from_file_and_env(a.config.as_deref())?, a))) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cookie-crud: {e}");
                return ExitCode::from(2);
            }
        };
    if args.healthcheck {
        return healthcheck(&cfg);
    }
    if let Err(e) = init_logging(&cfg) {
        eprintln!("cookie-crud: {e}");
        return ExitCode::from(2);
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
