//! Replication rounds per entry: a commit-only AppendEntries does not take a round of its own
//! when the next entries follow within `raft.commit_linger_us` (openraft 0.9 as patched in
//! `vendor/openraft`), and does without the linger (upstream's behaviour, measured so that
//! this test is seen to tell the two apart).

mod common;

use std::time::{Duration, Instant};

use common::{send, Cluster, FAST_RAFT};
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
