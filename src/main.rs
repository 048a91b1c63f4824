//! `cookie-crud [CONFIG.toml]`: run one node. Without a config file it runs the embedded
//! default, a single-node store on 127.0.0.1:8080 with its data in `./data`.

use std::path::PathBuf;
use std::process::ExitCode;

use cookie_crud::config::Config;
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

fn main() -> ExitCode {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    tracing_subscriber::fmt().with_env_filter(filter).init();

    let cfg = match parse_args().and_then(|p| match p {
        Some(p) => Config::load(&p),
        None => {
            let mut c = Config::default();
            c.finish().map(|_| c)
        }
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cookie-crud: {e}");
            return ExitCode::from(2);
        }
    };
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
