//! The binary as operators and containers call it: configuration from a file and from the
//! environment, refusal of bad keys at start, `--help` and `--version`, the `healthcheck`
//! subcommand, and a clean stop on SIGTERM.

mod common;

use std::io::BufRead;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{free_port, Cluster, BIN, FAST_RAFT};
use serde_json::json;

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
    // A worker count no machine has (a typo), and a log filter that does not parse: it
    // was dropped for the config's level without a word.
    let out = run(&[], &[("COOKIE_CRUD_WORKER_THREADS", "1000000")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("worker_threads"), "{}", stderr(&out));
    // (Data the node cannot open, so that a node that took the filter stops too.)
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("log.redb")).unwrap();
    let mut cmd = Command::new(BIN);
    let out = cmd
        .env("RUST_LOG", "info,openraft=loud")
        .env("COOKIE_CRUD_LISTEN", "127.0.0.1:0")
        .env("COOKIE_CRUD_DATA_DIR", &data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("RUST_LOG"), "{}", stderr(&out));
    // A body limit over the largest record: no such body could be stored.
    let out = run(&[], &[("COOKIE_CRUD_MAX_BODY_BYTES", "33554432")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("over the largest record"),
        "{}",
        stderr(&out)
    );
}

/// Peer authentication is on by default: a cluster member without a secret does not start,
/// and says how to set one (issue 13).
#[test]
fn a_cluster_member_without_a_secret_refuses_to_start_saying_how() {
    let nodes = r#"[{ id = 1, addr = "127.0.0.1:1" }, { id = 2, addr = "127.0.0.1:2" }]"#;
    let out = run(&[], &[("COOKIE_CRUD_NODES", nodes)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    for hint in [
        "cluster_secret",
        "COOKIE_CRUD_CLUSTER_SECRET",
        "insecure_peers",
    ] {
        assert!(stderr(&out).contains(hint), "{}", stderr(&out));
    }
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

    // In a Kubernetes pod beside the Service cookie-crud (service links), from a shell that
    // exports ctl's and the scripts' variables: none of them is node configuration.
    let out = run(
        &["healthcheck", "--config", &config],
        &[
            ("COOKIE_CRUD_SERVICE_HOST", "10.96.12.34"),
            ("COOKIE_CRUD_SERVICE_PORT", "8080"),
            ("COOKIE_CRUD_PORT", "tcp://10.96.12.34:8080"),
            ("COOKIE_CRUD_PORT_8080_TCP", "tcp://10.96.12.34:8080"),
            ("COOKIE_CRUD_PORT_8080_TCP_ADDR", "10.96.12.34"),
            ("COOKIE_CRUD_ENDPOINTS", "127.0.0.1:1"),
            ("COOKIE_CRUD_TOKEN", "t"),
            ("COOKIE_CRUD_CACERT", "/nowhere/ca.pem"),
            ("COOKIE_CRUD_BIN", "target/release/cookie-crud"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // A variable that is a mistake is named as a variable, not blamed on the file.
    let out = run(
        &["healthcheck", "--config", &config],
        &[("COOKIE_CRUD_CACHE_TLL", "5")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("environment variable COOKIE_CRUD_CACHE_TLL")
            && !stderr(&out).contains(&config),
        "{}",
        stderr(&out)
    );

    cluster.stop(0);
    let out = run(&["healthcheck", "--config", &config], &[]);
    assert!(!out.status.success(), "healthy after the node stopped");
}

#[test]
fn help_and_version_answer_and_exit_zero() {
    let out = run(&["--help"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["--config", "healthcheck", "run", "--version"] {
        assert!(
            help.contains(word),
            "--help does not mention {word}:\n{help}"
        );
    }
    let out = run(&["--version"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let version = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        version.trim(),
        format!("cookie-crud {}", env!("CARGO_PKG_VERSION"))
    );
    // A made-up flag is a usage error (2), naming the flag.
    let out = run(&["--frobnicate"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--frobnicate"), "{}", stderr(&out));
}

/// `--join` belongs to running a node: given to a subcommand that works on a stopped
/// node's files, or to the health check, it would be ignored without a word, so it is a
/// usage error there (2) that names it, and nothing runs. A running node still takes it.
#[test]
fn join_flags_are_refused_where_they_mean_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let to = dir.path().join("out");
    let to = to.to_str().unwrap();
    for args in [
        vec!["dump", "--data-dir", data, "--to", to],
        vec!["move-wal", "--data-dir", data, "--to", to],
        vec!["restore", "--from", to, "--data-dir", data],
        vec!["healthcheck"],
        vec!["leave"],
    ] {
        let mut with_join = args.clone();
        with_join.extend(["--join", "127.0.0.1:9"]);
        let out = run(&with_join, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("--join"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert!(!dir.path().join("out").exists() && !dir.path().join("data").exists());
    // `run` and the plain form still take it: there only the made-up flag after it is
    // refused.
    for args in [vec!["run", "--join"], vec!["--join"]] {
        let mut args = args;
        args.extend(["127.0.0.1:9", "--join-as", "learner", "--frobnicate"]);
        let out = run(&args, &[]);
        assert_eq!(out.status.code(), Some(2));
        let err = stderr(&out);
        assert!(
            err.contains("--frobnicate") && !err.contains("'--join'"),
            "{err}"
        );
    }
}

/// SIGTERM stops a node cleanly: every background task ends (none has to be aborted),
/// Raft shuts down, and the process exits 0, on a leader and on followers that have just
/// forwarded writes. So does SIGHUP (the terminal that started it closed), which killed
/// the node outright before, skipping the leader's handover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_every_background_task_and_exits_zero() {
    let mut c = Cluster::start(3, &format!("log_format = \"json\"\n{FAST_RAFT}")).await;
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    for i in 0..3 {
        let r = c
            .create(i, json!({"cookie": format!("stop-{i}"), "user_id": 1}))
            .await;
        assert_eq!(r.status, 201);
    }
    // Followers first, the leader last, so each stop happens in a working cluster.
    let order: Vec<usize> = (0..3).filter(|&i| i != leader).chain([leader]).collect();
    for (n, i) in order.into_iter().enumerate() {
        let status = if n == 0 {
            c.signal(i, "HUP");
            c.wait_exit(i, Duration::from_secs(10)).await
        } else {
            c.stop_status(i)
        };
        let log = std::fs::read_to_string(&c.nodes[i].log).unwrap();
        assert!(
            status.is_some_and(|s| s.success()),
            "node {} exited with {status:?}:\n{log}",
            i + 1
        );
        let line = log
            .lines()
            .find(|l| l.contains("background tasks stopped"))
            .unwrap_or_else(|| panic!("no shutdown line in node {}'s log:\n{log}", i + 1));
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        assert_eq!(v["fields"]["aborted"], 0, "{line}");
        // Group commit, forwarding, two read-round runners, the health monitor, the cache
        // sweep and the election counter at least (bootstrap may have ended already).
        assert!(v["fields"]["stopped"].as_u64() >= Some(7), "{line}");
        assert!(log.contains("node stopped"), "{log}");
    }
}

/// A log the node cannot open stops it with the path in the message, and the text logs,
/// written to a file (not a terminal), carry no colour codes.
#[test]
fn an_unopenable_log_is_named_and_logs_to_a_file_have_no_colour() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where log.redb should be: refused even to root (the tests may run as it),
    // as an unwritable directory is to anyone else.
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("log.redb")).unwrap();
    let out = run(
        &[],
        &[
            ("COOKIE_CRUD_LISTEN", "127.0.0.1:0"),
            ("COOKIE_CRUD_DATA_DIR", data.to_str().unwrap()),
            ("COOKIE_CRUD_LOG_FORMAT", "text"),
        ],
    );
    assert!(!out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(data.join("log.redb").to_str().unwrap()),
        "{err}"
    );
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(!logs.is_empty(), "no logs");
    assert!(
        !logs.contains('\u{1b}') && !err.contains('\u{1b}'),
        "colour codes in logs: {logs:?}"
    );
}

/// `cmd` set up to run a lone node with its data under `dir`, its logs as text on a pipe.
fn lone_node<'a>(cmd: &'a mut Command, dir: &std::path::Path) -> &'a mut Command {
    cmd.env("COOKIE_CRUD_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env(
            "COOKIE_CRUD_PEER_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("COOKIE_CRUD_DATA_DIR", dir.join("data"))
        .env("COOKIE_CRUD_LOG_FORMAT", "text")
        .stdout(Stdio::piped())
}

/// A node whose log reader went away (a log shipper that crashed, a closed pipe) still stops
/// on SIGTERM. tracing reported its own failed write to the same broken pipe, and that
/// report panicked the task that logged, the signal handler first: the node ignored SIGTERM
/// (found in review).
#[test]
fn a_node_whose_log_reader_went_away_still_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = lone_node(&mut Command::new(BIN), dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once it serves (its signal handler is in place), the reader goes away.
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains("serving"))),
        "the node never said it serves"
    );
    drop(lines);
    drop(child.stderr.take());
    let kill = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    assert!(kill.is_ok_and(|s| s.success()));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM did not stop the node cleanly: {status:?}"
    );
}

/// Started under `nohup` (as `make cluster-start` starts the nodes), a node goes on
/// ignoring SIGHUP: watching it replaced the ignoring, and a hangup stopped it (found in
/// review).
#[test]
fn a_node_under_nohup_goes_on_ignoring_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = lone_node(Command::new("nohup").arg(BIN), dir.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ignored = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        ignored |= line.contains("SIGHUP is ignored");
        if line.contains("serving") {
            break;
        }
    }
    assert!(ignored, "the node did not see that SIGHUP is ignored");
    // It is: the signal changes nothing, and SIGTERM still stops it cleanly.
    for sig in ["-HUP", "-TERM"] {
        let kill = Command::new("kill")
            .arg(sig)
            .arg(child.id().to_string())
            .status();
        assert!(kill.is_ok_and(|s| s.success()));
    }
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("signal=\"SIGTERM\"")),
        "{rest:?}"
    );
    assert!(!rest.iter().any(|l| l.contains("SIGHUP\"")), "{rest:?}");
}
