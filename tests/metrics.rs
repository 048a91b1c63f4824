//! `GET /metrics`: the names, labels and types of `../shared/docs/api.md` section 4, with
//! counts that match a scripted mix of requests, and the series the seed's PromQL uses.

mod common;

use std::collections::HashMap;

use common::{send, Cluster, FAST_RAFT};
use serde_json::json;

/// Parse the text format into `TYPE` declarations and `series -> value`.
fn parse(text: &str) -> (HashMap<String, String>, HashMap<String, f64>) {
    let mut types = HashMap::new();
    let mut values = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            types.insert(it.next().unwrap().to_owned(), it.next().unwrap().to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').unwrap();
            values.insert(series.to_owned(), value.parse().unwrap());
        }
    }
    (types, values)
}

/// Scrape `node`'s metrics every 100 ms until `done` (types, values, text) says so; fail
/// with `what` after 20 s.
async fn poll_metrics(
    c: &Cluster,
    node: usize,
    what: &str,
    done: impl Fn(&HashMap<String, String>, &HashMap<String, f64>, &str) -> bool,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = send(c.client.get(format!("{}/metrics", c.url(node)))).await;
        let (types, v) = parse(&r.text);
        if done(&types, &v, &r.text) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {}", r.text);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Raft timings for a test whose exact counts need one leader throughout: its follower's
/// writes are forwarded only while it stays a follower. With [`FAST_RAFT`]'s 600 ms, a
/// leader starved on a busy machine could lose its place mid-script.
const STEADY_RAFT: &str =
    "[raft]\nheartbeat_ms = 100\nelection_timeout_min_ms = 3000\nelection_timeout_max_ms = 4000\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_names_labels_types_and_counts() {
    let c = Cluster::start(3, STEADY_RAFT).await;
    let leader = c.wait_leader(std::time::Duration::from_secs(20)).await;
    let follower = (leader + 1) % 3;
    // A scripted mix on the follower: 3 creates, 2 reads of one record (miss, hit), one
    // 404, one list, one update, one delete.
    for i in 0..3 {
        assert_eq!(
            c.create(follower, json!({"cookie": format!("m{i}"), "user_id": 1}))
                .await
                .status,
            201
        );
    }
    // The creates answered once the leader applied them; the follower may not have yet.
    c.wait_caught_up(follower, std::time::Duration::from_secs(20))
        .await;
    c.get(follower, "m0", "local").await;
    c.get(follower, "m0", "local").await;
    assert_eq!(c.get(follower, "nope", "local").await.status, 404);
    c.list(follower, "linearizable").await;
    assert_eq!(
        c.put(follower, "m1", json!({"x": 1}), None).await.status,
        200
    );
    assert_eq!(c.delete(follower, "m2").await.status, 200);

    let r = send(c.client.get(format!("{}/metrics", c.url(follower)))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4"));
    let (types, v) = parse(&r.text);

    for (name, kind) in [
        ("http_requests_total", "counter"),
        ("http_request_duration_seconds", "histogram"),
        ("cache_hits_total", "counter"),
        ("cache_misses_total", "counter"),
        ("cache_puts_total", "counter"),
        ("cache_deletes_total", "counter"),
        ("cache_evictions_total", "counter"),
        ("cache_entries", "gauge"),
        ("cache_bytes", "gauge"),
        ("db_operations_total", "counter"),
        ("service_uptime_seconds", "gauge"),
        ("db_file_bytes", "gauge"),
        ("raft_state", "gauge"),
        ("forwarded_requests_total", "counter"),
        ("raft_elections_total", "counter"),
        ("raft_leader_changes_total", "counter"),
        ("raft_membership_changes_total", "counter"),
        ("raft_snapshot_installs_total", "counter"),
        ("raft_snapshots_built_total", "counter"),
        ("raft_snapshot_state_bytes", "gauge"),
        ("raft_log_bytes_since_snapshot", "gauge"),
        ("raft_write_batch_commands", "histogram"),
        ("raft_write_batch_seconds", "histogram"),
        ("raft_write_queue_seconds", "histogram"),
        ("raft_write_batches_allowed", "gauge"),
        ("raft_write_cpu_idle_ratio", "gauge"),
        ("raft_write_cpu_spare", "gauge"),
        ("raft_log_append_seconds", "histogram"),
        ("raft_wal_fsync_seconds", "histogram"),
        ("raft_apply_seconds", "histogram"),
        ("raft_commit_seconds", "histogram"),
        ("raft_append_send_delay_seconds", "histogram"),
        ("raft_apply_delay_seconds", "histogram"),
        ("raft_append_answer_seconds", "histogram"),
        ("raft_state_flush_seconds", "histogram"),
        ("raft_sm_flushes_behind_total", "counter"),
        ("raft_apply_flush_wait_seconds", "histogram"),
        ("raft_log_reads_total", "counter"),
    ] {
        assert_eq!(
            types.get(name).map(String::as_str),
            Some(kind),
            "{name}\n{}",
            r.text
        );
    }
    let get = |s: &str| {
        v.get(s)
            .copied()
            .unwrap_or_else(|| panic!("missing {s}\n{}", r.text))
    };
    // Labels are route templates; counts match what was sent.
    assert_eq!(
        get(r#"http_requests_total{endpoint="/cookies",method="POST",status="201"}"#),
        3.0
    );
    assert_eq!(
        get(r#"http_requests_total{endpoint="/cookies/{cookie}",method="GET",status="200"}"#),
        2.0
    );
    assert_eq!(
        get(r#"http_requests_total{endpoint="/cookies/{cookie}",method="GET",status="404"}"#),
        1.0
    );
    assert_eq!(
        get(r#"http_requests_total{endpoint="/cookies",method="GET",status="200"}"#),
        1.0
    );
    assert_eq!(
        get(r#"http_requests_total{endpoint="/cookies/{cookie}",method="PUT",status="200"}"#),
        1.0
    );
    assert_eq!(
        get(r#"http_requests_total{endpoint="/cookies/{cookie}",method="DELETE",status="200"}"#),
        1.0
    );
    assert!(
        !r.text.contains("/cookies/m0"),
        "raw paths must not become labels"
    );
    // Node-to-node traffic is counted apart from the client API's: the leader's appends
    // reached this follower's peer listener.
    assert!(
        get(r#"peer_http_requests_total{endpoint="/raft/append",method="POST",status="200"}"#)
            >= 1.0
    );
    assert!(
        !v.keys()
            .any(|k| k.starts_with("http_requests_total{") && k.contains("/raft/")),
        "peer routes in the client API's metrics\n{}",
        r.text
    );
    assert_eq!(
        get(r#"http_request_duration_seconds_count{endpoint="/cookies",method="POST"}"#),
        3.0
    );
    assert!(r.text.contains(r#"http_request_duration_seconds_bucket{endpoint="/cookies/{cookie}",method="GET",le="0.005"}"#));
    assert_eq!(get(r#"db_operations_total{operation="create"}"#), 3.0);
    // The writes' 507 series exist before any refusal, so that an alert's increase() sees
    // the first ones.
    for series in [
        r#"http_requests_total{endpoint="/cookies",method="POST",status="507"}"#,
        r#"http_requests_total{endpoint="/cookies/{cookie}",method="PUT",status="507"}"#,
    ] {
        assert_eq!(get(series), 0.0, "{series}");
    }
    // No snapshot yet: the whole log is after it, and no build has sized the state.
    assert!(
        get("raft_log_bytes_since_snapshot") > 0.0,
        "the writes are in the log since the last snapshot"
    );
    assert_eq!(get("raft_snapshot_state_bytes"), 0.0);
    assert_eq!(get(r#"db_operations_total{operation="get"}"#), 3.0);
    assert_eq!(get(r#"db_operations_total{operation="update"}"#), 1.0);
    assert_eq!(get(r#"db_operations_total{operation="delete"}"#), 1.0);
    // Cache: the second read of m0 was a hit; the first read of m0 and of "nope" missed.
    assert_eq!(get("cache_hits_total"), 1.0);
    assert!(get("cache_misses_total") >= 2.0);
    // The follower forwarded its 5 writes to the leader.
    assert_eq!(get(r#"forwarded_requests_total{kind="write"}"#), 5.0);
    assert!(get(r#"raft_state{field="term"}"#) >= 1.0);
    // The follower saw at least the first election and learned of its leader; it was never
    // far enough behind to need a snapshot.
    assert!(get("raft_elections_total") >= 1.0);
    assert!(get("raft_leader_changes_total") >= 1.0);
    assert_eq!(get("raft_snapshot_installs_total"), 0.0);
    // The quorum-ack (heartbeat) age is the leader's alone.
    assert!(
        !v.contains_key("raft_quorum_ack_age_milliseconds"),
        "{}",
        r.text
    );
    assert_eq!(get(r#"raft_state{field="is_leader"}"#), 0.0);
    assert_eq!(get(r#"raft_state{field="leader_id"}"#), (leader + 1) as f64);
    // The linearizable list waited until the follower applied the three creates (entries
    // 2-4 after the membership and blank entries); the later writes may still be in flight.
    assert!(get(r#"raft_state{field="applied_index"}"#) >= 4.0);
    // The follower appended those entries to its WAL, synced it, and applied them.
    assert!(get("raft_log_append_seconds_count") >= 1.0, "{}", r.text);
    assert!(get("raft_wal_fsync_seconds_count") >= 1.0, "{}", r.text);
    assert!(get("raft_apply_seconds_count") >= 1.0, "{}", r.text);
    assert!(get("raft_commit_seconds_count") >= 1.0, "{}", r.text);
    // ... and timed its answers to the appends that carried them.
    assert!(get("raft_append_answer_seconds_count") >= 1.0, "{}", r.text);
    // Its apply read the entries it had just appended from the log's tail, not the WAL.
    assert!(
        get(r#"raft_log_reads_total{from="tail"}"#) >= 1.0,
        "{}",
        r.text
    );
    assert!(get(r#"db_file_bytes{file="log"}"#) > 0.0);
    assert!(get(r#"db_file_bytes{file="wal"}"#) > 0.0);
    assert!(get("service_uptime_seconds") > 0.0);
    // Group commit runs on the leader: the follower proposed nothing itself.
    assert_eq!(get("raft_write_batch_commands_count"), 0.0);
    // Nor did it send appends, or have them answered.
    assert_eq!(get("raft_append_send_delay_seconds_count"), 0.0);
    assert_eq!(get("raft_apply_delay_seconds_count"), 0.0);

    // On the leader: every forwarded write went into some group-commit entry.
    let r = send(c.client.get(format!("{}/metrics", c.url(leader)))).await;
    let (_, v) = parse(&r.text);
    assert_eq!(v["raft_write_batch_commands_sum"], 5.0, "{}", r.text);
    let entries = v["raft_write_batch_commands_count"];
    assert!((1.0..=5.0).contains(&entries), "{}", r.text);
    assert_eq!(v["raft_write_batch_seconds_count"], entries, "{}", r.text);
    // Each write's wait for its entry, once per write.
    assert_eq!(v["raft_write_queue_seconds_count"], 5.0, "{}", r.text);
    // Five writes are a light load: the default window allows two batches in flight.
    assert_eq!(v["raft_write_batches_allowed"], 2.0, "{}", r.text);
    // A share (0 until group commit has taken two samples half a second apart).
    let idle = v["raft_write_cpu_idle_ratio"];
    assert!((0.0..=1.0).contains(&idle), "{}", r.text);
    // 0 or 1: whether that share counted as CPU to spare.
    let spare = v["raft_write_cpu_spare"];
    assert!(spare == 0.0 || spare == 1.0, "{}", r.text);
    // The leader timed its appends to each follower (every entry went to both).
    let (types, _) = parse(&r.text);
    assert_eq!(types["raft_peer_rpc_seconds"], "histogram");
    for peer in (0..3).filter(|&n| n != leader) {
        let appends = format!(
            "raft_peer_rpc_seconds_count{{peer_id=\"{}\",rpc=\"append\"}}",
            peer + 1
        );
        assert!(v[&appends] >= 1.0, "{appends}\n{}", r.text);
    }
    // ... each from the append of its entries on the leader, and the apply of the writes
    // from the first follower's answer.
    assert!(
        v["raft_append_send_delay_seconds_count"] >= 2.0,
        "{}",
        r.text
    );
    assert!(v["raft_apply_delay_seconds_count"] >= 1.0, "{}", r.text);

    // On the leader: per-peer replication lag, and peer reachability once the periodic
    // health check has run.
    poll_metrics(&c, leader, "no peer health series", |types, v, text| {
        assert_eq!(v.get(r#"raft_state{field="is_leader"}"#), Some(&1.0));
        let count = |prefix: &str| v.keys().filter(|k| k.starts_with(prefix)).count();
        if count("raft_peer_reachable{") != 2 {
            return false;
        }
        assert_eq!(types["raft_peer_reachable"], "gauge");
        assert_eq!(types["raft_replication_lag_entries"], "gauge");
        assert_eq!(types["raft_quorum_ack_age_milliseconds"], "gauge");
        assert!(v.contains_key("raft_quorum_ack_age_milliseconds"), "{text}");
        assert_eq!(count("raft_replication_lag_entries{"), 2, "{text}");
        let peer = format!("node{}", follower + 1);
        assert_eq!(v[&format!("raft_peer_reachable{{peer=\"{peer}\"}}")], 1.0);
        true
    })
    .await;

    // The state machine's flush thread writes the applied writes to sm.redb within about a
    // second (FLUSH_INTERVAL), after which nothing applied is left unwritten.
    poll_metrics(
        &c,
        leader,
        "applied writes never flushed",
        |types, v, text| {
            assert_eq!(types["raft_sm_flushes_total"], "counter");
            assert_eq!(types["raft_sm_flush_failures_total"], "counter");
            assert_eq!(types["raft_sm_unflushed_entries"], "gauge");
            assert_eq!(types["raft_sm_last_flush_seconds"], "gauge");
            assert_eq!(types["raft_sm_ids_scans_total"], "counter");
            assert_eq!(v["raft_sm_flush_failures_total"], 0.0, "{text}");
            // The first flush scans the file for the filter of ids.
            v["raft_sm_flushes_total"] >= 1.0
                && v["raft_sm_unflushed_entries"] == 0.0
                && v["raft_sm_ids_scans_total"] >= 1.0
        },
    )
    .await;
}

/// A write sent to a follower with `X-Request-Id` can be followed into the leader's log:
/// the id is echoed, forwarded with the write, and carried by the leader's JSON log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_follows_a_write_from_follower_to_leader_log() {
    let extra = format!(
        "log_level = \"info,cookie_crud=debug,openraft=warn\"\nlog_format = \"json\"\n{FAST_RAFT}"
    );
    let c = Cluster::start(3, &extra).await;
    let leader = c.wait_leader(std::time::Duration::from_secs(20)).await;
    let follower = (leader + 1) % 3;
    let r = send(
        c.client
            .post(format!("{}/cookies", c.url(follower)))
            .header("x-request-id", "trace-me-42")
            .json(&json!({"cookie": "traced", "user_id": 1})),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("x-request-id"), Some("trace-me-42"));
    // Without one, the node makes one.
    let r = send(c.client.get(format!("{}/health", c.url(follower)))).await;
    assert!(r
        .header("x-request-id")
        .is_some_and(|id| id.starts_with(&format!("node{}-", follower + 1))));

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&c.nodes[leader].log).unwrap();
        let line = log
            .lines()
            .find(|l| l.contains("trace-me-42") && l.contains("write forwarded by a follower"));
        if let Some(line) = line {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
            // Followers forward writes many per request; each write's line carries its own
            // client's id, inside the leader's span for that /raft/write request.
            assert_eq!(v["span"]["request_id"], "trace-me-42", "{line}");
            let routes: Vec<&str> = v["spans"]
                .as_array()
                .map(|s| s.iter().filter_map(|s| s["route"].as_str()).collect())
                .unwrap_or_default();
            assert_eq!(routes, ["/raft/write"], "{line}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no leader log line with the id:\n{log}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The operator's signals (issue 15): the process collector's series, the build's version
/// and commit, the data directory's size, and refused snapshots counted by reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_build_info_data_dir_and_snapshot_failure_series() {
    use cookie_crud::cluster::proto::SNAPSHOT_PATH;
    use cookie_raft::{codec, TypeConfig, RAFT_TARGET_HEADER};
    use openraft::raft::InstallSnapshotRequest;
    use openraft::storage::SnapshotMeta;
    use openraft::{CommittedLeaderId, LogId, StoredMembership, Vote};

    const SECRET: &str = "metrics-test-secret";
    let c = Cluster::start(1, &format!("cluster_secret = \"{SECRET}\"\n{FAST_RAFT}")).await;
    assert_eq!(
        c.create(0, json!({"cookie": "m", "user_id": 1}))
            .await
            .status,
        201
    );
    // A snapshot that does not decode, sent with a peer's credentials: refused (422) and
    // counted as `invalid`.
    let garbage = InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new_committed(1000, 2),
        meta: SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1000, 2), 1_000_000)),
            last_membership: StoredMembership::default(),
            snapshot_id: "not-a-snapshot".into(),
        },
        offset: 0,
        data: b"not a snapshot at all".to_vec(),
        done: true,
    };
    let r = send(
        c.client
            .post(format!("{}{SNAPSHOT_PATH}", c.nodes[0].peer_url()))
            .bearer_auth(SECRET)
            .header(RAFT_TARGET_HEADER, c.nodes[0].id.to_string())
            .header(cookie_raft::identity::SENDER_HEADER, "2")
            .header("content-type", "application/octet-stream")
            .body(codec::encode(&garbage).unwrap()),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.text);

    let r = send(c.client.get(format!("{}/metrics", c.url(0)))).await;
    assert_eq!(r.status, 200);
    let (types, v) = parse(&r.text);
    let get = |s: &str| {
        v.get(s)
            .copied()
            .unwrap_or_else(|| panic!("missing {s}\n{}", r.text))
    };

    // The process collector (Linux): memory, CPU and file descriptors of the node itself.
    if cfg!(target_os = "linux") {
        for (name, kind) in [
            ("process_resident_memory_bytes", "gauge"),
            ("process_virtual_memory_bytes", "gauge"),
            ("process_open_fds", "gauge"),
            ("process_max_fds", "gauge"),
            ("process_cpu_seconds_total", "counter"),
            ("process_start_time_seconds", "gauge"),
            ("process_threads", "gauge"),
        ] {
            assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
        }
        // A running node holds megabytes and a few files (its listeners, the stores).
        assert!(get("process_resident_memory_bytes") > 1e6, "{}", r.text);
        assert!(get("process_open_fds") >= 3.0, "{}", r.text);
        assert!(get("process_max_fds") >= get("process_open_fds"));
    }

    // Build info: the package version and the commit build.rs found, as the only series.
    let commit = cookie_crud::metrics::BUILD_COMMIT;
    let info: Vec<(&String, &f64)> = v
        .iter()
        .filter(|(k, _)| k.starts_with("cookie_crud_build_info{"))
        .collect();
    assert_eq!(types["cookie_crud_build_info"], "gauge");
    let want = format!(
        "cookie_crud_build_info{{commit=\"{commit}\",version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(info, [(&want, &1.0)], "{}", r.text);
    // With git and this repository at hand (and no SOURCE_COMMIT given to the build), it
    // is a real commit of it: 12 hex digits git resolves. (Not compared with HEAD now: a
    // commit made since the build would move HEAD.)
    let git = std::process::Command::new("git")
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(format!("{commit}^{{commit}}"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    let in_repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".git")
        .exists();
    if in_repo && option_env!("SOURCE_COMMIT").is_none() {
        if let Ok(out) = git {
            assert_eq!(commit.len(), 12, "{commit}");
            assert!(
                out.status.success(),
                "{commit} is not a commit of this repository"
            );
            assert!(String::from_utf8_lossy(&out.stdout).starts_with(commit));
        }
    }

    // The data directory: every file under it, so at least the stores and the WAL.
    assert_eq!(types["data_dir_bytes"], "gauge");
    let files: f64 = ["log", "sm", "wal"]
        .iter()
        .map(|f| get(&format!("db_file_bytes{{file=\"{f}\"}}")))
        .sum();
    assert!(files > 0.0);
    assert!(get("data_dir_bytes") >= files, "{}", r.text);
    // Its filesystem: what is free, out of a size that holds at least the directory.
    assert_eq!(types["data_dir_free_bytes"], "gauge");
    let (free, capacity) = (get("data_dir_free_bytes"), get("data_dir_capacity_bytes"));
    assert!(capacity >= get("data_dir_bytes"), "{}", r.text);
    assert!(free > 0.0 && free <= capacity, "{}", r.text);

    // Refused snapshots, by reason; every reason is exported from the start.
    assert_eq!(types["raft_snapshot_install_failures_total"], "counter");
    for (reason, n) in [("invalid", 1.0), ("too_large", 0.0), ("stopped", 0.0)] {
        assert_eq!(
            get(&format!(
                "raft_snapshot_install_failures_total{{reason=\"{reason}\"}}"
            )),
            n,
            "{reason}"
        );
    }
    assert_eq!(get("raft_snapshot_installs_total"), 0.0);
}

/// A request whose client gives up before the answer is counted, as 499: it went uncounted,
/// so clients that time out sooner than the node hid an outage from the error-ratio alerts
/// (found in review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_client_gave_up_on_is_counted_as_499() {
    let mut c = Cluster::start(3, FAST_RAFT).await;
    let leader = c.wait_leader(std::time::Duration::from_secs(20)).await;
    let alone = (leader + 1) % 3;
    for i in (0..3).filter(|&i| i != alone) {
        c.kill(i);
    }
    // With no quorum a linearizable read waits for the read timeout; the client does not.
    let url = format!("{}/cookies/x?consistency=linearizable", c.url(alone));
    let r = c
        .client
        .get(&url)
        .timeout(std::time::Duration::from_millis(300))
        .send()
        .await;
    assert!(r.is_err_and(|e| e.is_timeout()));
    let series = r#"http_requests_total{endpoint="/cookies/{cookie}",method="GET",status="499"}"#;
    poll_metrics(
        &c,
        alone,
        "the abandoned request was never counted",
        |_, v, _| v.get(series) == Some(&1.0),
    )
    .await;
}

/// A restarted node reports its members at once: it has its membership from its storage
/// before the task that keeps the gauges subscribes, and nothing changes after, so
/// `raft_members` was missing until the next election or membership change (found in
/// review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_reports_its_members() {
    let mut c = Cluster::start(3, FAST_RAFT).await;
    let leader = c.wait_leader(std::time::Duration::from_secs(20)).await;
    let follower = (leader + 1) % 3;
    c.stop(follower);
    c.spawn(follower);
    c.wait_ready_all(std::time::Duration::from_secs(20)).await;
    poll_metrics(
        &c,
        follower,
        "no member counts after a restart",
        |_, v, _| {
            v.get(r#"raft_members{role="voter"}"#) == Some(&3.0)
                && v.get(r#"raft_members{role="learner"}"#) == Some(&0.0)
        },
    )
    .await;
}
