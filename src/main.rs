//! `cookie-crud [CONFIG.toml]`: run one node. Without a config file it runs the embedded
//! default, a single-node store on 127.0.0.1:8080 with its data in `./data`.

use std::path::PathBuf;
use std::process::ExitCode;

use cookie_crud::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

fn usage() -> &'static str {
    "usage: cookie-crud [--config PATH | PATH]\n\
     Runs one cookie-crud node. Without a config it serves a single-node store on \
     127.0.0.1:8080 with data in ./data."
}

fn parse_args() -> Result<Option<PathBuf>, String> {
    let mut args = std::env::args().skip(1);
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
    Ok(path)
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
    let cfg = match parse_args().and_then(|p| Config::from_file_and_env(p.as_deref())) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cookie-crud: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(&cfg) {
        eprintln!("cookie-crud: {e}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Runtime::new() {
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
