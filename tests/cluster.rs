//! Three real node processes on loopback: replication, failover, catch-up (also by
//! snapshot), full restarts, and the atomicity of merges and compare-and-set.

mod common;

use std::time::Duration;

use common::{send, Cluster, FAST_RAFT};
use futures::future::join_all;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_write_is_visible_to_linearizable_reads_everywhere() {
    let c = Cluster::start(3, FAST_RAFT).await;
    let leader = c.wait_leader(WAIT).await;
    let follower = (leader + 1) % 3;
    let r = c
        .create(
            follower,
            json!({"cookie": "f", "user_id": 5, "via": "follower"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let version = r.etag();
    // No waiting: a linearizable read that starts after the ack must see it on every node.
    for i in 0..3 {
        let r = c.get(i, "f", "linearizable").await;
        assert_eq!(r.status, 200, "node{}: {}", i + 1, r.text);
        assert_eq!(r.json["via"], "follower");
        assert_eq!(r.etag(), version);
        assert!(
            r.header("x-raft-applied-index")
                .unwrap()
                .parse::<u64>()
                .unwrap()
                >= version
        );
    }
    // Updates and deletes through another follower, seen everywhere at once.
    let other = (leader + 2) % 3;
    assert_eq!(
        c.put(other, "f", json!({"via": "other"}), None)
            .await
            .status,
        200
    );
    for i in 0..3 {
        assert_eq!(c.get(i, "f", "linearizable").await.json["via"], "other");
    }
    assert_eq!(c.delete(follower, "f").await.status, 200);
    for i in 0..3 {
        assert_eq!(c.get(i, "f", "linearizable").await.status, 404);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_a_new_one_and_writes_continue() {
    let mut c = Cluster::start(3, FAST_RAFT).await;
    let old = c.wait_leader(WAIT).await;
    assert_eq!(
        c.create(old, json!({"cookie": "before", "user_id": 1}))
            .await
            .status,
        201
    );
    c.kill(old);
    let new = c.wait_leader(WAIT).await;
    assert_ne!(new, old);
    let follower = (0..3).find(|&i| i != old && i != new).unwrap();
    // Both survivors accept writes; the follower forwards to the new leader.
    assert_eq!(
        c.create(follower, json!({"cookie": "after1", "user_id": 1}))
            .await
            .status,
        201
    );
    assert_eq!(
        c.create(new, json!({"cookie": "after2", "user_id": 1}))
            .await
            .status,
        201
    );
    for i in [new, follower] {
        for id in ["before", "after1", "after2"] {
            assert_eq!(
                c.get(i, id, "linearizable").await.status,
                200,
                "{id} on node{}",
                i + 1
            );
        }
    }
    // The old leader comes back as a follower and catches up.
    c.spawn(old);
    c.wait_local(old, "after2", WAIT, |r| r.status == 200).await;
    let h = c.health(old).await.unwrap();
    assert_ne!(
        h["role"], "leader",
        "a returning node does not depose the new leader by itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_catches_up_from_a_snapshot_after_log_purge() {
    // Snapshot every 20 entries, keep 5: a node away for 100 writes can only be caught up by
    // installing a snapshot.
    let extra = format!("{FAST_RAFT}snapshot_logs = 20\nkeep_logs_after_snapshot = 5\n");
    let mut c = Cluster::start(3, &extra).await;
    let leader = c.wait_leader(WAIT).await;
    let away = (leader + 1) % 3;
    c.kill(away);
    for i in 0..100 {
        let r = c
            .create(leader, json!({"cookie": format!("k{i}"), "user_id": i + 1}))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    // Deletes and updates must also survive the snapshot.
    assert_eq!(c.delete(leader, "k0").await.status, 200);
    assert_eq!(
        c.put(leader, "k1", json!({"updated": true}), None)
            .await
            .status,
        200
    );
    // The leader compacts its log (openraft postpones a purge while a replication request
    // covering it is in flight, so wait for it), and has built every snapshot these writes
    // call for (one per 20 entries): a build still to come when the node returns would
    // purge past the snapshot it is installing and send it a second one (seen in CI, under
    // load: two installs).
    c.wait_cluster_info(leader, WAIT, |v| {
        let at = |k: &str| v[k].as_u64().unwrap_or(0);
        at("purged") > 20 && at("last_log_index") < at("snapshot") + 20
    })
    .await;

    c.spawn(away);
    // Wait for the last write, the update of k1: the snapshot the node installs may end
    // before the delete and the update, which then reach it as log entries, each in its own
    // apply. Waiting for k99 alone raced them (seen in CI: k0 already gone, k1 not yet
    // updated, read at once).
    c.wait_local(away, "k1", WAIT, |r| r.json["updated"] == true)
        .await;
    // It caught up by a snapshot. Waited for: the state machine serves the installed state
    // as soon as it is in place, a little before openraft's metrics, which `/cluster`
    // reports, take in the install (seen in CI: the record read, `purged` already 104,
    // `snapshot` and `last_applied` still null).
    c.wait_cluster_info(away, WAIT, |v| v["snapshot"].as_u64().unwrap_or(0) > 20)
        .await;
    let metrics = send(c.client.get(format!("{}/metrics", c.url(away)))).await;
    let installs = metrics
        .text
        .lines()
        .find_map(|l| l.strip_prefix("raft_snapshot_installs_total "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    // One install, or two: openraft's chunked transport retried a node it could not reach
    // with the snapshot it had opened (5 tries, 500 ms apart), so a node back within that
    // time got a snapshot older than the leader's current one, then the current one (seen
    // once in CI, under load). Patched (vendor/README.md), it starts over with the current
    // snapshot when the first chunk does not reach the node; one that drops mid-stream
    // still resumes the one it was sent. More would mean a build still to come (see above).
    assert!(
        installs.is_some_and(|n| (1..=2).contains(&n)),
        "{installs:?} installs\n{}\n{}",
        metrics.text,
        c.logs()
    );
    assert_eq!(c.get(away, "k0", "local").await.status, 404);
    assert_eq!(c.get(away, "k99", "local").await.status, 200);
    assert_eq!(c.list(away, "local").await.len(), 99);
    // And it is a working member afterwards.
    assert_eq!(
        c.create(away, json!({"cookie": "late", "user_id": 1}))
            .await
            .status,
        201
    );
    assert_eq!(c.get(away, "late", "linearizable").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cluster_restart_loses_nothing_acknowledged() {
    let mut c = Cluster::start(3, FAST_RAFT).await;
    let mut acked = Vec::new();
    for i in 0..30 {
        let node = i % 3;
        let id = format!("p{i}");
        let r = c
            .create(node, json!({"cookie": id, "user_id": 1, "i": i}))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        acked.push(id);
    }
    // kill -9 everyone: acknowledged means fsynced on a majority.
    c.kill_and_restart_all(WAIT).await;
    for i in 0..3 {
        let ids: Vec<String> = c
            .list(i, "linearizable")
            .await
            .iter()
            .map(|v| v["cookie"].as_str().unwrap().to_owned())
            .collect();
        for id in &acked {
            assert!(ids.contains(id), "{id} lost on node{}", i + 1);
        }
    }
    // A graceful stop and start (SIGTERM) also keeps everything.
    for i in 0..3 {
        c.stop(i);
    }
    for i in 0..3 {
        c.spawn(i);
    }
    c.wait_ready_all(WAIT).await;
    assert_eq!(c.list(1, "linearizable").await.len(), acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_to_one_record_are_all_merged() {
    let c = Cluster::start(3, FAST_RAFT).await;
    assert_eq!(
        c.create(0, json!({"cookie": "m", "user_id": 1}))
            .await
            .status,
        201
    );
    let n = 30;
    let replies =
        join_all((0..n).map(|i| c.put(i % 3, "m", json!({ format!("f{i}"): i }), None))).await;
    let mut versions: Vec<u64> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200, "{}", r.text);
            r.etag()
        })
        .collect();
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(
        versions.len(),
        n,
        "every write to the record gets its own version"
    );
    let r = c.get(2, "m", "linearizable").await;
    for i in 0..n {
        assert_eq!(r.json[format!("f{i}")], i, "field f{i} lost: {}", r.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_if_match_updates_exactly_one_wins_per_version() {
    let c = Cluster::start(3, FAST_RAFT).await;
    let mut version = c
        .create(0, json!({"cookie": "cas", "user_id": 1, "n": 0}))
        .await
        .etag();
    for round in 1..=5 {
        let replies = join_all((0..9).map(|i| {
            c.put(
                i % 3,
                "cas",
                json!({"n": round, "writer": i}),
                Some(version),
            )
        }))
        .await;
        let winners: Vec<_> = replies.iter().filter(|r| r.status == 200).collect();
        let losers = replies.iter().filter(|r| r.status == 412).count();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {:?}",
            replies.iter().map(|r| r.status).collect::<Vec<_>>()
        );
        assert_eq!(losers, 8);
        let winner = winners[0];
        let r = c.get(1, "cas", "linearizable").await;
        assert_eq!(r.json["writer"], winner.json["writer"]);
        assert_eq!(r.etag(), winner.etag());
        version = winner.etag();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_writes_are_503_or_unknown_never_a_false_failure() {
    let extra = format!("write_timeout_ms = 1500\nread_timeout_ms = 1500\n{FAST_RAFT}");
    let mut c = Cluster::start(3, &extra).await;
    let leader = c.wait_leader(WAIT).await;
    let f1 = (leader + 1) % 3;
    let f2 = (leader + 2) % 3;
    assert_eq!(
        c.create(leader, json!({"cookie": "base", "user_id": 1}))
            .await
            .status,
        201
    );

    // The leader alone: it may propose, but nothing can commit. The outcome is unknown.
    c.kill(f1);
    c.kill(f2);
    let r = c
        .create(leader, json!({"cookie": "maybe", "user_id": 1}))
        .await;
    assert_eq!(r.status, 504, "{}", r.text);
    assert!(
        r.json["error"]
            .as_str()
            .unwrap()
            .contains("outcome unknown"),
        "{}",
        r.text
    );
    // It cannot confirm its leadership either: no linearizable read.
    let r = c.get(leader, "base", "linearizable").await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.header("retry-after"), Some("1"));
    // A local read still answers from its applied state.
    assert_eq!(c.get(leader, "base", "local").await.status, 200);

    // A follower alone knows no live leader: 503 "No leader available", nothing written.
    c.kill(leader);
    c.spawn(f1);
    c.wait_up(f1, WAIT).await;
    let r = c.create(f1, json!({"cookie": "never", "user_id": 1})).await;
    assert_eq!(
        (r.status, r.json.clone()),
        (503, json!({"error": "No leader available"}))
    );
    assert_eq!(r.header("retry-after"), Some("1"));

    // With a quorum back, the refused write is absent; the unknown one may or may not be.
    c.spawn(leader);
    c.wait_leader(WAIT).await;
    let r = c.get(f1, "never", "linearizable").await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(c.get(f1, "base", "linearizable").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_can_start_in_any_order() {
    for order in [[2, 1, 0], [0, 2, 1]] {
        let mut c = Cluster::configure(3, FAST_RAFT);
        c.spawn(order[0]);
        c.spawn(order[1]);
        c.wait_up(order[0], WAIT).await;
        c.wait_up(order[1], WAIT).await;
        // Two of three up but the cluster not formed yet: nobody initialized it alone.
        let info = c.cluster_info(order[0]).await;
        assert_eq!(info["initialized"], false, "{info}");
        assert!(!c.is_ready(order[0]).await);
        c.spawn(order[2]);
        c.wait_ready_all(WAIT).await;
        assert_eq!(
            c.create(order[2], json!({"cookie": "o", "user_id": 1}))
                .await
                .status,
            201
        );
        for i in 0..3 {
            assert_eq!(c.get(i, "o", "linearizable").await.status, 200);
            assert_eq!(c.cluster_info(i).await["voters"], json!([1, 2, 3]));
        }
    }
}

/// Regression: openraft 0.9 restores a restarted leader as leader at once, and its read
/// index is then its persisted commit index. That index must be durable: when it was
/// written without an fsync, a crash lost the last commit, and a linearizable read after
/// the restart missed the last acknowledged write (the leader had no new entry to commit).
/// That restore happens with `raft.parallel_leader_append = false` (the floor of
/// `ReadFloor` covers it); by default the restarted leader campaigns for a new term instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_acknowledged_write_is_read_after_the_leader_restarts_first() {
    let serial = format!("{FAST_RAFT}parallel_leader_append = false\n");
    for round in 0..4 {
        let extra = if round % 2 == 0 { FAST_RAFT } else { &serial };
        let mut c = Cluster::start(3, extra).await;
        let leader = c.wait_leader(WAIT).await;
        for i in 0..5 {
            let id = format!("w{round}-{i}");
            assert_eq!(
                c.create(leader, json!({"cookie": id, "user_id": 1}))
                    .await
                    .status,
                201
            );
        }
        for i in 0..3 {
            c.kill(i);
        }
        // The old leader first, alone: it resumes as leader (or, by default, campaigns)
        // but cannot reach anyone.
        c.spawn(leader);
        c.wait_up(leader, WAIT).await;
        for i in (0..3).filter(|&i| i != leader) {
            c.spawn(i);
        }
        c.wait_ready_all(WAIT).await;
        let last = format!("w{round}-4");
        for i in 0..3 {
            let r = c.get(i, &last, "linearizable").await;
            assert_eq!(
                r.status,
                200,
                "round {round}: node{} lost {last}: {}",
                i + 1,
                r.text
            );
        }
    }
}

/// Power loss in the middle of an append leaves a torn record at the end of the log. Every
/// node is killed and gets such a tail (a record header promising more bytes than follow);
/// each restarts, cuts it, keeps every acknowledged write, and appends after the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_write_at_the_end_of_the_log_is_cut_and_nothing_acknowledged_is_lost() {
    let mut c = Cluster::start(3, FAST_RAFT).await;
    let leader = c.wait_leader(WAIT).await;
    for i in 0..30 {
        let r = c
            .create(i % 3, json!({"cookie": format!("t{i}"), "user_id": i + 1}))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    for i in 0..3 {
        c.kill(i);
    }
    for id in 1..=3 {
        let wal = c.dir().join(format!("node{id}")).join("wal");
        let last = std::fs::read_dir(&wal)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .max()
            .expect("a WAL segment");
        let mut torn = Vec::new();
        torn.extend_from_slice(&4096u32.to_le_bytes()); // promises 4 KiB ...
        torn.extend_from_slice(&0xdead_beef_u32.to_le_bytes());
        torn.extend_from_slice(&u64::MAX.to_le_bytes());
        torn.extend_from_slice(&[7u8; 100]); // ... of which 100 bytes arrived
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&last)
            .unwrap()
            .write_all(&torn)
            .unwrap();
    }
    c.spawn(leader);
    for i in (0..3).filter(|&i| i != leader) {
        c.spawn(i);
    }
    c.wait_ready_all(WAIT).await;
    assert!(
        c.logs().matches("cutting a torn write").count() >= 3,
        "every node should report the cut:\n{}",
        c.logs()
    );
    for i in 0..3 {
        for n in [0, 17, 29] {
            let r = c.get(i, &format!("t{n}"), "linearizable").await;
            assert_eq!(r.status, 200, "node{} lost t{n}: {}", i + 1, r.text);
        }
    }
    // The log goes on after the cut, and survives another restart of every node.
    let r = c.create(0, json!({"cookie": "after", "user_id": 1})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    c.kill_and_restart_all(WAIT).await;
    for i in 0..3 {
        assert_eq!(c.get(i, "after", "linearizable").await.status, 200);
        assert_eq!(c.list(i, "linearizable").await.len(), 31);
    }
}

/// A write that times out while it waits behind batches that cannot commit is dropped, not
/// proposed minutes later: once a quorum is back, the first (proposed) writes may or may not
/// be applied, but the ones queued behind them never are (issue 12, zombie writes). Group
/// commit keeps two batches in flight here (pipelining whatever the load), so two writes
/// are proposed before the rest must queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_timed_out_in_the_queue_is_never_applied_later() {
    // Long election timeouts: the restarted followers must take the old leader's log, not
    // elect one of their own before its heartbeats reach them.
    let extra = "write_timeout_ms = 1000\n[raft]\nheartbeat_ms = 100\n\
                 election_timeout_min_ms = 4000\nelection_timeout_max_ms = 5000\n\
                 [batch]\nmax_inflight = 2\npipeline_below = 1000000\n";
    let mut c = Cluster::start(3, extra).await;
    let leader = c.wait_leader(WAIT).await;
    let followers = [(leader + 1) % 3, (leader + 2) % 3];
    let r = c
        .create(leader, json!({"cookie": "base", "user_id": 1}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);

    for f in followers {
        c.kill(f);
    }
    let last_index = |v: Value| v["last_log_index"].as_u64().unwrap_or(0);
    // The first two writes are proposed, one at a time, and cannot commit; they hold
    // group commit's two slots.
    let mut first = Vec::new();
    for id in ["first-0", "first-1"] {
        let before = last_index(c.cluster_info(leader).await);
        let (client, url) = (c.client.clone(), c.url(leader));
        first.push(tokio::spawn(async move {
            send(
                client
                    .post(format!("{url}/cookies"))
                    .json(&json!({"cookie": id, "user_id": 1})),
            )
            .await
        }));
        // Proposed means in the leader's log: only then does the next write go.
        let deadline = std::time::Instant::now() + WAIT;
        while last_index(c.cluster_info(leader).await) == before {
            assert!(
                std::time::Instant::now() < deadline,
                "{id} was never proposed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // These wait behind them, and their clients give up.
    let queued: Vec<_> = (0..5).map(|i| format!("queued-{i}")).collect();
    let replies = futures::future::join_all(
        queued
            .iter()
            .map(|id| c.create(leader, json!({"cookie": id, "user_id": 1}))),
    )
    .await;
    for r in &replies {
        assert_eq!(r.status, 504, "{}", r.text);
    }
    for f in first {
        assert_eq!(f.await.unwrap().status, 504);
    }

    for f in followers {
        c.spawn(f);
    }
    c.wait_ready_all(WAIT).await;
    // A write after the quorum is back commits, and with it everything proposed before.
    let r = c
        .create(leader, json!({"cookie": "after", "user_id": 1}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    for id in &queued {
        let r = c.get(leader, id, "linearizable").await;
        assert_eq!(r.status, 404, "{id} was applied after its client got 504");
    }
}

/// A leader cut off from its followers keeps in its log the writes it could not commit. Once
/// the others have elected a leader and written past them, it must give them up: its log
/// is cut back to what the new leader holds and takes the new leader's entries in their
/// place, and what it applies is those. The old leader is paused, not restarted, so its log
/// stays the one in memory throughout: the newest entries that its apply reads come from the
/// log's tail kept in memory (`raft/src/log/tail.rs`), which the cut must reach as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_uncommitted_writes_give_way_to_the_new_leaders() {
    let extra = format!("write_timeout_ms = 1500\n{FAST_RAFT}");
    let mut c = Cluster::start(3, &extra).await;
    let old = c.wait_leader(WAIT).await;
    let others = [(old + 1) % 3, (old + 2) % 3];
    let r = c.create(old, json!({"cookie": "base", "user_id": 1})).await;
    assert_eq!(r.status, 201, "{}", r.text);

    // Alone, the leader proposes these; nothing commits, and the clients hear so.
    for f in others {
        c.kill(f);
    }
    let lost: Vec<String> = (0..5).map(|i| format!("lost-{i}")).collect();
    let replies = join_all(
        lost.iter()
            .map(|id| c.create(old, json!({"cookie": id, "user_id": 1}))),
    )
    .await;
    for r in &replies {
        assert_eq!(r.status, 504, "{}", r.text);
    }
    let info = c.cluster_info(old).await;
    let (last, committed) = (info["last_log_index"].as_u64(), info["committed"].as_u64());
    assert!(
        last > committed,
        "the uncommitted writes are in the old leader's log: {info}"
    );

    // The old leader paused (its log stays in memory), the others elect one of their own
    // and write past the old leader's uncommitted entries.
    c.signal(old, "STOP");
    for f in others {
        c.spawn(f);
    }
    let deadline = std::time::Instant::now() + WAIT;
    let new = loop {
        let mut found = None;
        for f in others {
            if c.health(f).await.is_some_and(|h| h["role"] == "leader") {
                found = Some(f);
            }
        }
        if let Some(f) = found {
            break f;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no new leader\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut held = vec!["base".to_string()];
    for i in 0..8 {
        let id = format!("after-{i}");
        let r = c.create(new, json!({"cookie": id, "user_id": 1})).await;
        assert_eq!(r.status, 201, "{}", r.text);
        held.push(id);
    }
    held.sort();
    let new_last = c.cluster_info(new).await["last_log_index"].as_u64();
    assert!(
        new_last >= last,
        "the new leader's log reaches past the old one's uncommitted entries"
    );

    // Back, the old leader holds what the new one holds, and none of its lost writes.
    c.signal(old, "CONT");
    c.wait_local_list(old, "the new leader's records", WAIT, |list| {
        let mut ids: Vec<&str> = list.iter().map(|r| r["cookie"].as_str().unwrap()).collect();
        ids.sort();
        ids == held
    })
    .await;
    for id in &lost {
        for i in 0..3 {
            let r = c.get(i, id, "local").await;
            assert_eq!(r.status, 404, "node{} applied {id}: {}", i + 1, r.text);
        }
    }
}

/// `/ready` means caught up with the leader's commit index as of a check made now: a
/// restarted follower that is far behind (it catches up four entries per AppendEntries
/// here) is not ready until it has applied everything committed before it came back
/// (issue 12). Judged by its own commit index, it answered 200 while still behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_is_ready_only_once_caught_up() {
    let extra = format!("{FAST_RAFT}max_payload_entries = 4\n");
    let mut c = Cluster::start(3, &extra).await;
    let leader = c.wait_leader(WAIT).await;
    let follower = (leader + 1) % 3;
    c.kill(follower);
    // One entry per write: sequential writes each get their own log entry.
    for i in 0..600 {
        let r = c
            .create(leader, json!({"cookie": format!("lag-{i}"), "user_id": 1}))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let ready = |v: &Value| v["last_applied"].as_u64().unwrap_or(0);
    let leader_ready = send(c.client.get(format!("{}/ready", c.url(leader)))).await;
    let committed = ready(&leader_ready.json);
    assert!(committed >= 600, "{}", leader_ready.text);

    c.spawn(follower);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let Some(r) = common::try_send(c.client.get(format!("{}/ready", c.url(follower)))).await
        else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        if r.status == 200 {
            assert!(
                ready(&r.json) >= committed,
                "ready at applied index {} while {committed} was committed before it restarted",
                ready(&r.json)
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never ready: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `X-Raft-Applied-Index` never names a write that the reply lacks: a client that finds its
/// write's version at or below the header may take the write to be in the reply. A page
/// (built on the blocking pool past 100 records) used to name the index applied when it was
/// sent, not the one it was read at: with writes streaming in, a few pages in a hundred
/// named a write they did not show.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_applied_index_header_names_no_write_the_reply_lacks() {
    let c = Cluster::start(3, FAST_RAFT).await;
    let leader = c.wait_leader(WAIT).await;
    let follower = (leader + 1) % 3;
    let r = c
        .create(leader, json!({"cookie": "z", "user_id": 1, "x": 0}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    // The follower has applied z before its local reads begin.
    assert_eq!(c.get(follower, "z", "linearizable").await.status, 200);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // One writer, one write at a time: the versions record z goes through, in order.
    let writer = {
        let (http, stop) = (c.client.clone(), stop.clone());
        let url = format!("{}/cookies/z", c.url(leader));
        tokio::spawn(async move {
            let mut versions = vec![r.etag()];
            let mut x = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                x += 1;
                let r = send(http.put(&url).json(&json!({"x": x}))).await;
                assert_eq!(r.status, 200, "{}", r.text);
                versions.push(r.etag());
            }
            versions
        })
    };
    // Readers on a follower: each reply's header, and the version of z it shows.
    let readers: Vec<_> = (0..3)
        .map(|k| {
            let (http, stop) = (c.client.clone(), stop.clone());
            let base = c.url(follower);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let url = match k {
                        0 => format!("{base}/cookies?limit=2000"),
                        1 => format!("{base}/cookies?limit=2000&consistency=local"),
                        _ => format!("{base}/cookies/z"),
                    };
                    let r = send(http.get(url)).await;
                    assert_eq!(r.status, 200, "{}", r.text);
                    let header: u64 = r.header("x-raft-applied-index").unwrap().parse().unwrap();
                    // A point read shows z's version; a list shows its `x`, the number of
                    // the write that set it.
                    let shown = if k == 2 {
                        Shown::Version(r.etag())
                    } else {
                        let z = r.json["cookies"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .find(|o| o["cookie"] == "z");
                        Shown::Write(z.and_then(|o| o["x"].as_u64()).unwrap() as usize)
                    };
                    seen.push((header, shown));
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let versions = writer.await.unwrap();
    let mut checked = 0;
    for reader in readers {
        for (header, shown) in reader.await.unwrap() {
            let shown = match shown {
                Shown::Version(v) => v,
                Shown::Write(x) => versions[x],
            };
            // The first write to z after the one shown: its index must be past the header.
            if let Some(next) = versions.iter().find(|v| **v > shown) {
                assert!(
                    *next > header,
                    "the header says {header} is applied, but the reply shows z at version \
                     {shown}, and the write at {next} changed it"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} replies");
}

/// What a read showed of record z ([`the_applied_index_header_names_no_write_the_reply_lacks`]).
enum Shown {
    Version(u64),
    Write(usize),
}

/// `/ready` answers within its own check (1 s), inside a readiness probe's timeout (the
/// StatefulSet's 3 s), when the leader hangs: a follower's read-index round to a frozen
/// leader waited out the read timeout (5 s), and the kubelet gave up first and counted the
/// probe as failed, and the node a request its client abandoned (found in review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_answers_by_its_check_while_the_leader_hangs() {
    let c = Cluster::start(3, FAST_RAFT).await;
    let leader = c.wait_leader(WAIT).await;
    c.wait_ready_all(WAIT).await;
    let follower = (leader + 1) % 3;
    c.pause(leader);
    let started = std::time::Instant::now();
    let r = send(c.client.get(format!("{}/ready", c.url(follower)))).await;
    let took = started.elapsed();
    c.resume(leader);
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(
        took < Duration::from_secs(3),
        "/ready answered after {took:?}"
    );
}

/// A follower killed while it installs a snapshot keeps a log that goes on from its state
/// machine: the log's purge waits for the install to be durable. Purged first (openraft 0.9
/// purges as it starts the install), the kill left the log purged past the applied state,
/// and the node claimed entries it could not apply: once elected, or matched by a new
/// leader, it stopped with a fatal storage error (found in review). `dump`, which refuses a
/// log purged past the applied state, is the witness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_killed_mid_install_keeps_a_log_that_goes_on_from_its_state() {
    let extra = format!(
        "{FAST_RAFT}snapshot_logs = 20\nkeep_logs_after_snapshot = 0\nsnapshot_log_ratio = 0\n"
    );
    let mut c = Cluster::start(3, &extra).await;
    let leader = c.wait_leader(WAIT).await;
    let away = (leader + 1) % 3;
    c.kill(away);
    // A state of ~30 MB, so that the install takes a while.
    let big = "x".repeat(400_000);
    for i in 0..80 {
        let r = c
            .create(
                leader,
                json!({"cookie": format!("big{i}"), "user_id": 1, "data": big}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    c.wait_cluster_info(leader, WAIT, |v| {
        let at = |k: &str| v[k].as_u64().unwrap_or(0);
        at("purged") > 60
    })
    .await;

    let installing = c.data_dir(away).join("sm.redb.installing");
    c.spawn(away);
    let deadline = std::time::Instant::now() + WAIT;
    while !installing.exists() {
        assert!(std::time::Instant::now() < deadline, "no install began");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let seen = std::time::Instant::now();
    // Past the purge that went with the install's start, short of the install's end.
    tokio::time::sleep(Duration::from_millis(30)).await;
    c.kill(away);
    eprintln!("killed {:?} into the install", seen.elapsed());
    assert!(
        installing.exists(),
        "the install was over before the kill: nothing to test"
    );

    let file = c.dir().join("away.backup");
    let dir = c.data_dir(away);
    let (code, out, err) = common::run_bin(&[
        "dump",
        "--data-dir",
        dir.to_str().unwrap(),
        "--to",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");

    // And it comes back, installs, and serves what was written.
    c.spawn(away);
    c.wait_local(away, "big79", WAIT, |r| r.status == 200).await;
    assert_eq!(c.get(away, "big0", "local").await.status, 200);
}
