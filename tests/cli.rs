//! The binary as operators and containers call it: configuration from a file and from the
//! environment, refusal of bad keys at start, and the `healthcheck` subcommand.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{Cluster, BIN};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run cookie-crud")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_key_or_value_stops_the_node_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "node_id = 1\ncache_tll = 5\n").unwrap();
    let out = run(&["--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("cache_tll"), "{}", stderr(&out));

    // The same mistakes through the environment, with no file at all.
    let out = run(&[], &[("COOKIE_CRUD_CACHE_TLL", "5")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("cache_tll"), "{}", stderr(&out));
    let out = run(&[], &[("COOKIE_CRUD_CLUSTER__DISCOVERY", "gossip")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("discovery"), "{}", stderr(&out));
    let out = run(&[], &[("COOKIE_CRUD_PORT", "eighty")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("port"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_zero_only_while_the_node_is_up() {
    let mut cluster = Cluster::configure(1, common::FAST_RAFT);
    let config = cluster.nodes[0].config.to_str().unwrap().to_string();
    let out = run(&["healthcheck", "--config", &config], &[]);
    assert!(!out.status.success(), "healthy with no node running");

    cluster.spawn(0);
    cluster.wait_up(0, Duration::from_secs(30)).await;
    let out = run(&["healthcheck", "--config", &config], &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    // As in a container: no file, the port from the environment, listening on 0.0.0.0.
    let port = cluster.nodes[0].port.to_string();
    let out = run(
        &["healthcheck"],
        &[
            ("COOKIE_CRUD_LISTEN", "0.0.0.0:1"),
            ("COOKIE_CRUD_PORT", port.as_str()),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    cluster.stop(0);
    let out = run(&["healthcheck", "--config", &config], &[]);
    assert!(!out.status.success(), "healthy after the node stopped");
}
