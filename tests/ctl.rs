//! `cookie-crud ctl` against real nodes (issue 15): every subcommand, its output and the
//! exit codes scripts branch on (0 ok, 1 failure, 2 refused, 3 not found, 4 conflict,
//! 5 unauthorized).

mod common;

use std::time::Duration;

use common::{run_bin, Cluster, FAST_RAFT};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// `cookie-crud ctl --endpoints E ARGS...`: (exit code, stdout, stderr).
async fn ctl(endpoints: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec![
        "ctl".to_owned(),
        "--endpoints".to_owned(),
        endpoints.to_owned(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || run_bin(&all))
        .await
        .unwrap()
}

fn json(out: &str) -> Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_every_member_and_finds_the_rest_from_one_endpoint() {
    let mut c = Cluster::start(3, FAST_RAFT).await;
    let leader = c.wait_leader(WAIT).await;
    // One endpoint, given as host:port: the others come from its membership.
    let (code, out, err) = ctl(&host_port(&c.url(0)), &["status"]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("ENDPOINT") && lines[0].contains("LAG"),
        "{out}"
    );
    assert_eq!(lines.len(), 4, "a header and three members:\n{out}");
    for i in 1..=3 {
        assert!(out.contains(&format!("node{i}")), "{out}");
    }
    assert_eq!(out.matches(" leader ").count(), 1, "{out}");

    let (code, out, _) = ctl(&c.url(0), &["status", "--json"]).await;
    assert_eq!(code, 0);
    let rows = json(&out);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let l = rows.iter().find(|r| r["role"] == "leader").unwrap();
    assert_eq!(l["id"], leader as u64 + 1);
    assert!(rows
        .iter()
        .all(|r| r["reachable"] == true && r["term"].as_u64() >= Some(1)));
    assert!(rows.iter().all(|r| r["lag"].is_u64()), "{out}");

    // A member down is shown unreachable; the command still succeeds.
    let down = (leader + 1) % 3;
    c.kill(down);
    let (code, out, _) = ctl(&c.url(leader), &["status"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("unreachable"), "{out}");
    // Nothing reachable at all: exit 1.
    let (code, _, err) = ctl("127.0.0.1:1", &["--timeout", "1", "status"]).await;
    assert_eq!(code, 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_cache_and_exit_codes() {
    let c = Cluster::start(3, FAST_RAFT).await;
    // The first endpoint is dead: ctl goes on to the next.
    let eps = format!("127.0.0.1:1,{}", c.url(1));
    let (code, out, err) = ctl(&eps, &["create", r#"{"cookie":"a","user_id":1}"#]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["cookie"], "a");
    let (code, _, err) = ctl(&eps, &["create", r#"{"cookie":"a","user_id":1}"#]).await;
    assert_eq!(code, 4, "a duplicate is a conflict: {err}");
    let (code, _, err) = ctl(&eps, &["create", "not json"]).await;
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = ctl(&eps, &["create", r#"{"user_id":1}"#]).await;
    assert_eq!(code, 2, "refused by the node: {err}");

    let (code, out, _) = ctl(&eps, &["get", "a"]).await;
    assert_eq!((code, json(&out)["user_id"].as_i64()), (0, Some(1)));
    let (code, _, err) = ctl(&eps, &["get", "nope"]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("404"), "{err}");

    let version = c.get(0, "a", "linearizable").await.etag();
    let (code, _, err) = ctl(
        &eps,
        &[
            "put",
            "a",
            r#"{"user_id":2}"#,
            "--if-match",
            &(version + 100).to_string(),
        ],
    )
    .await;
    assert_eq!(code, 4, "a stale version: {err}");
    let (code, out, err) = ctl(
        &eps,
        &[
            "put",
            "a",
            r#"{"user_id":2}"#,
            "--if-match",
            &version.to_string(),
        ],
    )
    .await;
    assert_eq!(
        (code, json(&out)["user_id"].as_i64()),
        (0, Some(2)),
        "{err}"
    );

    // An id that needs escaping, and a JSON body from a file.
    let file = c.dir().join("rec.json");
    std::fs::write(&file, r#"{"cookie":"a b/c?d","user_id":3}"#).unwrap();
    let (code, _, err) = ctl(&eps, &["create", &format!("@{}", file.display())]).await;
    assert_eq!(code, 0, "{err}");
    // A local read may lag the write on a follower (README, Consistency model): wait until
    // node 2, the endpoint ctl reaches, has applied it (under load in CI it once had not).
    c.wait_local(1, "a b/c?d", WAIT, |r| r.status == 200).await;
    let (code, out, _) = ctl(&eps, &["get", "a b/c?d", "--consistency", "local"]).await;
    assert_eq!((code, json(&out)["user_id"].as_i64()), (0, Some(3)));

    // The same idempotency key twice: applied once, the first answer again.
    let key = ["--idempotency-key", "k-1"];
    let args = |id: &str| {
        let mut v = vec![
            "create".to_owned(),
            format!(r#"{{"cookie":"{id}","user_id":4}}"#),
        ];
        v.extend(key.iter().map(|s| s.to_string()));
        v
    };
    let first = args("once");
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    assert_eq!(ctl(&eps, &first).await.0, 0);
    assert_eq!(ctl(&eps, &first).await.0, 0, "a replay, not a duplicate");

    let (code, out, _) = ctl(&eps, &["list"]).await;
    assert_eq!(code, 0);
    assert_eq!(json(&out)["cookies"].as_array().unwrap().len(), 3);
    let (code, out, _) = ctl(&eps, &["list", "--limit", "2"]).await;
    assert_eq!(code, 0);
    let page = json(&out);
    assert_eq!(page["cookies"].as_array().unwrap().len(), 2);
    let after = page["next_after"].as_str().unwrap().to_owned();
    let (_, out, _) = ctl(&eps, &["list", "--limit", "2", "--after", &after]).await;
    assert_eq!(json(&out)["cookies"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, out, _) = ctl(&eps, &["list", "--limit", "2", "--cursor", &cursor]).await;
    assert_eq!(json(&out)["cookies"].as_array().unwrap().len(), 1);

    let (code, _, _) = ctl(&eps, &["delete", "a"]).await;
    assert_eq!(code, 0);
    assert_eq!(ctl(&eps, &["get", "a"]).await.0, 3, "deleted");
    // DELETE is idempotent in the contract: a missing id is 200 too.
    let (code, out, _) = ctl(&eps, &["delete", "a"]).await;
    assert_eq!(code, 0);
    assert_eq!(json(&out)["message"], "Cookie deleted successfully");

    let (code, out, _) = ctl(&eps, &["cache", "stats"]).await;
    assert_eq!(code, 0);
    assert!(json(&out)["cache_stats"]["hit_rate"].is_number(), "{out}");
    let (code, out, _) = ctl(&eps, &["cache", "clear"]).await;
    assert_eq!(code, 0);
    assert_eq!(json(&out)["message"], "Cache cleared successfully");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_list_add_promote_remove() {
    let mut c = Cluster::start(3, FAST_RAFT).await;
    let eps = c.url(0);
    let (code, out, _) = ctl(&eps, &["members", "list"]).await;
    assert_eq!(code, 0);
    assert_eq!(json(&out)["voters"], serde_json::json!([1, 2, 3]), "{out}");

    // A fourth node with empty data, added as a learner by ctl. Its config names the four
    // members, so it neither founds a cluster of its own nor asks to join: it waits to be
    // added.
    let i = c.add_joiner(4, 0, "learner", FAST_RAFT);
    let peer = format!("127.0.0.1:{}", c.nodes[i].peer_port);
    let addr = host_port(&c.url(i));
    let nodes = std::fs::read_to_string(&c.nodes[0].config)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("nodes = ["))
        .unwrap()
        .trim_end_matches(']')
        .to_owned()
        + &format!(", {{ id = 4, addr = \"{addr}\", peer_addr = \"{peer}\" }}]");
    let cfg: String = std::fs::read_to_string(&c.nodes[i].config)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("join"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&c.nodes[i].config, format!("{nodes}\n{cfg}")).unwrap();
    c.spawn(i);
    // Up before it is added: a change the leader answers (503 "does not answer at its peer
    // address" included) is not sent again.
    c.wait_up(i, WAIT).await;
    let (addr, peer) = (
        host_port(&c.url(i)),
        format!("127.0.0.1:{}", c.nodes[i].peer_port),
    );
    let (code, out, err) = ctl(
        &eps,
        &[
            "--timeout",
            "30",
            "members",
            "add",
            "--id",
            "4",
            "--addr",
            &addr,
            "--peer-addr",
            &peer,
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json(&out)["learners"], serde_json::json!([4]), "{out}");
    let (code, out, err) = ctl(&eps, &["--timeout", "30", "members", "promote", "4"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json(&out)["voters"],
        serde_json::json!([1, 2, 3, 4]),
        "{out}"
    );
    let (code, out, err) = ctl(&eps, &["--timeout", "30", "members", "remove", "4"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["voters"], serde_json::json!([1, 2, 3]), "{out}");
    // The removed node, still running and asked first, keeps the membership it knew; status
    // goes by the leader's and says it is no member (before, it was a voter by its own word).
    let both = format!("{},{eps}", c.url(i));
    let (code, out, err) = ctl(&both, &["status"]).await;
    assert_eq!(code, 0, "{err}");
    let row4 = out
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("4"))
        .unwrap_or_else(|| panic!("no row for node 4:\n{out}"));
    assert!(row4.contains("not a member"), "{out}");
    assert_eq!(out.matches("not a member").count(), 1, "{out}");
    // Promoting a node that is not a member is refused.
    let (code, _, err) = ctl(&eps, &["members", "promote", "9"]).await;
    assert!(code == 2 || code == 3, "{code}: {err}");
    c.wait_membership(1, &[1, 2, 3], &[], WAIT).await;
}

/// A membership change a node answered is not sent again, and its answer is what ctl
/// says: a new member that does not answer at its peer address is a 503 the server gives at
/// once. (Before, ctl sent the change again and again for the whole --timeout, and ended
/// with its own "operation timed out", the server's reason lost.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_change_is_answered_once_with_the_servers_reason() {
    let c = Cluster::start(3, FAST_RAFT).await;
    c.wait_leader(WAIT).await;
    // Nothing listens on these: ports below the ephemeral range, which neither another
    // test's listener bound to port 0 nor an outgoing connection is given.
    let free = || format!("127.0.0.1:{}", common::free_port());
    let (addr, peer) = (free(), free());
    let started = std::time::Instant::now();
    let (code, out, err) = ctl(
        &c.url(0),
        &[
            "--timeout",
            "20",
            "members",
            "add",
            "--id",
            "4",
            "--addr",
            &addr,
            "--peer-addr",
            &peer,
            "--role",
            "voter",
        ],
    )
    .await;
    let took = started.elapsed();
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("503") && err.contains(&format!("does not answer at its peer address {peer}")),
        "{err}"
    );
    assert!(
        took < std::time::Duration::from_secs(15),
        "took {took:?}: sent again until the timeout"
    );
    c.wait_membership(0, &[1, 2, 3], &[], WAIT).await;

    // Another member's address, or a host that is no host name, is refused (400: exit 2),
    // naming it, before anything is asked of the new node.
    let taken = host_port(&c.url(1));
    let (code, out, err) = ctl(
        &c.url(0),
        &[
            "members",
            "add",
            "--id",
            "4",
            "--addr",
            &taken,
            "--peer-addr",
            &peer,
        ],
    )
    .await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("400") && err.contains(&format!("addr {taken} is already node 2's")),
        "{err}"
    );
    let (code, out, err) = ctl(
        &c.url(0),
        &["members", "add", "--id", "4", "--addr", "no such host/?#:1"],
    )
    .await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("is not host:port"), "{err}");
    c.wait_membership(0, &[1, 2, 3], &[], WAIT).await;
}

/// A node that takes connections and never answers (stopped), named first, does not hold a
/// command that may be sent again: each endpoint gets a share of `--timeout`, and `backup`
/// goes on to the next after `--timeout` without an answer. (Before, the read took the
/// whole `--timeout` on the stopped node and failed, and `backup` waited for ever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_named_first_does_not_hold_a_command() {
    let c = Cluster::start(3, FAST_RAFT).await;
    let leader = c.wait_leader(WAIT).await;
    let r = c
        .create(leader, serde_json::json!({"cookie": "here", "user_id": 1}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let stopped = (leader + 1) % 3;
    c.pause(stopped);
    let endpoints = format!("{},{}", c.url(stopped), c.url(leader));
    let started = std::time::Instant::now();
    let (code, out, err) = ctl(&endpoints, &["--timeout", "6", "get", "here"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"here\""), "{out}");
    eprintln!("get answered in {:?}", started.elapsed());

    let file = c.dir().join("from-the-second.backup");
    let file = file.display().to_string();
    let run = {
        let endpoints = endpoints.clone();
        let file = file.clone();
        tokio::task::spawn_blocking(move || {
            run_bin(&[
                "ctl",
                "--endpoints",
                &endpoints,
                "--timeout",
                "3",
                "backup",
                &file,
            ])
        })
    };
    let (code, out, err) = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("backup held by the stopped node")
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(std::path::Path::new(&file).is_file());
    c.resume(stopped);
}

/// `status` with a token that may not read `/cluster` says so, exit 5, and does not call
/// the members unreachable (it said "no member is reachable", exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_with_a_read_token_is_unauthorized() {
    let tokens = "client_tokens = [{ token = \"r\", role = \"read\" }]\n";
    let c = Cluster::start(1, tokens).await;
    let (code, out, err) = ctl(&c.url(0), &["--token", "r", "status"]).await;
    assert_eq!(code, 5, "{out}{err}");
    assert!(err.contains("admin token"), "{err}");
    assert!(out.contains("refused"), "{out}");
}

/// A token that an HTTP header cannot carry is the caller's mistake: exit 2 at once, the
/// token not shown. It failed every request as a builder error, taken for an unreachable
/// node, retried until `--timeout` and exit 1 (found in review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_no_header_can_carry_is_a_usage_error() {
    let started = std::time::Instant::now();
    let (code, out, err) = ctl(
        "127.0.0.1:1",
        &["--timeout", "20", "--token", "secrettok\n ", "get", "x"],
    )
    .await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("header"), "{err}");
    assert!(
        !err.contains("secrettok") && !out.contains("secrettok"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "it retried");
}
