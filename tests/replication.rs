//! Replication rounds: a commit-only AppendEntries does not take a round of its own when the
//! next entries follow within `raft.commit_linger_us` (openraft 0.9 as patched in
//! `vendor/openraft`), and does without the linger (upstream's behaviour, measured so that
//! this test is seen to tell the two apart). With `raft.appends_in_flight` above 1 a
//! follower gets appends while it answers others, and still ends up with every write; with
//! 1 it never does (the same load, so that the counter is seen to tell the two apart).

mod common;

use std::time::{Duration, Instant};

use common::{send, Cluster, FAST_RAFT};
use futures::future::join_all;
use serde_json::json;

/// Sequential creates: one entry each, the next proposed only after the last one applied.
const WRITES: usize = 150;

/// The values of the series in `node`'s metrics that start with `series` and name `label`.
async fn scrape(c: &Cluster, node: usize, series: &str, label: &str) -> Vec<f64> {
    send(c.client.get(format!("{}/metrics", c.url(node))))
        .await
        .text
        .lines()
        .filter(|l| l.starts_with(series) && l.contains(label))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .collect()
}

/// `POST /raft/append` requests `follower` has answered, and `leader`'s last log index.
async fn appends_and_last_index(c: &Cluster, follower: usize, leader: usize) -> (f64, f64) {
    let appends = scrape(c, follower, "http_requests_total{", "\"/raft/append\"").await;
    let last = scrape(c, leader, "raft_state{", "\"last_log_index\"").await;
    let last = *last.first().expect("the leader reports its last log index");
    (appends.iter().sum(), last)
}

/// Appends a follower answered per entry over `WRITES` sequential creates, less the ones
/// its heartbeats (every 100 ms) explain.
async fn appends_per_entry(linger_us: u64) -> f64 {
    let c = Cluster::start(3, &format!("{FAST_RAFT}commit_linger_us = {linger_us}\n")).await;
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let follower = (leader + 1) % 3;
    let (appends0, last0) = appends_and_last_index(&c, follower, leader).await;
    let started = Instant::now();
    for i in 0..WRITES {
        let r = c
            .create(leader, json!({"cookie": format!("r{i}"), "user_id": 1}))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    // The last entry's commit-only append, which may or may not have gone yet, is one in
    // the allowance for heartbeats.
    let heartbeats = started.elapsed().as_millis() as f64 / 100.0 + 2.0;
    let (appends1, last1) = appends_and_last_index(&c, follower, leader).await;
    let entries = last1 - last0;
    assert!(
        entries >= WRITES as f64,
        "{entries} entries for {WRITES} writes"
    );
    (appends1 - appends0 - heartbeats) / entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_entry_carries_the_commit_index_instead_of_a_round_of_its_own() {
    // Upstream: once an entry commits, a commit-only append goes at once, and the next
    // entry waits behind it: two appends per entry.
    let without = appends_per_entry(0).await;
    assert!(
        without > 1.7,
        "without the linger: {without:.2} appends per entry"
    );
    // A linger far longer than a client's next request takes on loopback (yet shorter than
    // the heartbeat): the next entry's append carries the commit index.
    let with = appends_per_entry(50_000).await;
    eprintln!("appends per entry: {without:.2} without the linger, {with:.2} with it");
    assert!(with < 1.3, "with the linger: {with:.2} appends per entry");
}

/// Concurrent writers, and the creates each makes per burst.
const WRITERS: usize = 32;
const BURST: usize = 10;

/// A burst of concurrent creates on the leader; the ids it made.
async fn burst(c: &Cluster, leader: usize, n: usize) -> Vec<String> {
    join_all((0..WRITERS).map(|w| async move {
        let mut ids = Vec::new();
        for i in 0..BURST {
            let id = format!("b{n}-w{w}-{i}");
            let r = c
                .create(leader, json!({"cookie": id, "user_id": w + 1}))
                .await;
            assert_eq!(r.status, 201, "{}", r.text);
            ids.push(id);
        }
        ids
    }))
    .await
    .concat()
}

/// Appends the followers of `leader` took in while answering another, summed.
async fn overlapped(c: &Cluster, leader: usize) -> f64 {
    let mut sum = 0.0;
    for f in (0..3).filter(|&i| i != leader) {
        sum += scrape(c, f, "raft_appends_overlapped_total ", "")
            .await
            .iter()
            .sum::<f64>();
    }
    sum
}

/// Bursts of concurrent creates with `appends_in_flight`, until the followers report
/// overlapped appends (`want_overlap`) or, without, for as many bursts as that took at
/// least; then every follower must hold exactly the records created. Returns the
/// overlapped appends counted.
async fn concurrent_creates(appends_in_flight: u64, want_overlap: bool) -> f64 {
    // Rounds time out after a heartbeat interval, and a round that timed out may still be
    // answered at the follower while the next one arrives: a slow heartbeat keeps that out
    // of the count.
    // A further round goes at once, not only once the one ahead has been out a while
    // (`pipeline_after_us`): loopback rounds are short.
    let raft = format!(
        "[raft]\nheartbeat_ms = 500\nelection_timeout_min_ms = 3000\nelection_timeout_max_ms = 6000\nappends_in_flight = {appends_in_flight}\npipeline_after_us = 0\n"
    );
    let c = Cluster::start(3, &raft).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    // Streams rebuilt as the cluster forms leave appends behind that a follower may still
    // be answering: counted from here on.
    let r = c
        .create(leader, json!({"cookie": "first", "user_id": 1}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = overlapped(&c, leader).await;
    let mut created = vec!["first".to_string()];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    loop {
        created.extend(burst(&c, leader, n).await);
        n += 1;
        let seen = overlapped(&c, leader).await - before;
        if (want_overlap && seen > 0.0) || (!want_overlap && n >= 5) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no follower took in an append while answering another after {n} bursts of {WRITERS} writers"
        );
    }
    created.sort();
    for f in (0..3).filter(|&i| i != leader) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut ids: Vec<String> = c
                .list(f, "local")
                .await
                .iter()
                .map(|r| r["cookie"].as_str().unwrap().to_string())
                .collect();
            ids.sort();
            if ids == created {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node{} holds {} records, {} were created",
                f + 1,
                ids.len(),
                created.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    overlapped(&c, leader).await - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_in_flight_overlap_at_the_followers_and_every_write_arrives() {
    let pipelined = concurrent_creates(4, true).await;
    let one_at_a_time = concurrent_creates(1, false).await;
    eprintln!("overlapped appends: {pipelined} with 4 in flight, {one_at_a_time} with 1");
    assert_eq!(
        one_at_a_time, 0.0,
        "one append in flight never overlaps another"
    );
}
