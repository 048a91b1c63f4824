//! How cost grows with the number of stored records: point reads and creates at 10k, 100k
//! (and, with SCALE_LEVELS, 1M) records, `GET /cookies` paged and unpaged, and the time a
//! restarted follower needs to catch up by snapshot (and whether it did). `cargo bench --bench scale`
//! (SCALE_LEVELS=10000,100000,1000000; BENCH_SECS per measurement, default 3).

// clippy.toml keeps the server's functions to four arguments; a bench's helpers name every knob.
#![allow(clippy::too_many_arguments)]

mod support;

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use support::Nodes as Cluster;

async fn start() -> Cluster {
    Cluster::start(3, "cache_max_entries = 100000\n").await
}

/// Create records `from..to` with 64 concurrent clients.
async fn load(c: &Cluster, from: u64, to: u64) {
    cookie_raft::network::install_crypto_provider();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..64u64)
        .map(|w| {
            let client = client.clone();
            let url = c.url(w as usize % 3);
            tokio::spawn(async move {
                let mut i = from + w;
                while i < to {
                    let body = json!({"cookie": format!("k{i}"), "user_id": 1, "payload": "p".repeat(150)});
                    let r = client.post(format!("{url}/cookies")).json(&body).send().await.unwrap();
                    assert!(r.status() == 201 || r.status() == 409, "{}", r.status());
                    i += 64;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// Closed loop for `secs`: 64 clients, point reads (`create = false`) or creates.
async fn measure(c: &Cluster, secs: u64, n: u64, create: bool, tag: &str) -> (f64, f64) {
    cookie_raft::network::install_crypto_provider();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..64u64)
        .map(|w| {
            let client = client.clone();
            let url = c.url(w as usize % 3);
            let tag = tag.to_owned();
            tokio::spawn(async move {
                let mut h = Histogram::<u64>::new(3).unwrap();
                let mut j = 0u64;
                while Instant::now() < end {
                    j += 1;
                    let t = Instant::now();
                    let r = if create {
                        let body = json!({"cookie": format!("{tag}-{w}-{j}"), "user_id": 1, "payload": "p".repeat(150)});
                        client.post(format!("{url}/cookies")).json(&body).send().await
                    } else {
                        let k = (j.wrapping_mul(2654435761) + w * 7919) % n;
                        client.get(format!("{url}/cookies/k{k}")).send().await
                    };
                    if let Ok(r) = r {
                        let ok = r.status().is_success();
                        let _ = r.bytes().await;
                        if ok {
                            h.record(t.elapsed().as_micros() as u64).unwrap();
                        }
                    }
                }
                h
            })
        })
        .collect();
    let mut h = Histogram::<u64>::new(3).unwrap();
    for t in tasks {
        h.add(t.await.unwrap()).unwrap();
    }
    (
        h.len() as f64 / secs as f64,
        h.value_at_quantile(0.99) as f64 / 1000.0,
    )
}

async fn timed_get(url: &str) -> (Duration, usize) {
    cookie_raft::network::install_crypto_provider();
    let client = reqwest::Client::new();
    let t = Instant::now();
    let body = client.get(url).send().await.unwrap().bytes().await.unwrap();
    (t.elapsed(), body.len())
}

#[tokio::main]
async fn main() {
    let secs: u64 = support::env_num("BENCH_SECS", 3);
    let levels: Vec<u64> = std::env::var("SCALE_LEVELS")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let mut c = start().await;
    println!("| records | point reads/s (64 clients) | p99 ms | creates/s (64 clients) | p99 ms | GET /cookies?limit=100 | full GET /cookies | follower catch-up after missing 8,000 entries |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut have = 0;
    for (li, &n) in levels.iter().enumerate() {
        let t = Instant::now();
        load(&c, have, n).await;
        let load_time = t.elapsed();
        have = n;
        let (rps, rp99) = measure(&c, secs, n, false, "").await;
        let (cps, cp99) = measure(&c, secs, n, true, &format!("s{li}")).await;
        let (page_t, _) = timed_get(&format!("{}/cookies?limit=100", c.url(0))).await;
        // Uncached: the list cache was invalidated by the creates just measured.
        let (full_t, full_len) = timed_get(&format!("{}/cookies", c.url(0))).await;
        // Catch-up: stop a follower, write 8,000 entries one at a time (more than the
        // snapshot threshold of 5,000 entries plus the 1,000 kept, wherever the last
        // snapshot was), wait until the leader has purged the log past the follower, then
        // restart it and time until it serves the last write locally. Its
        // raft_snapshot_installs_total says whether it really needed a snapshot.
        let leader = leader_index(&c).await;
        let away = (leader + 1) % 3;
        let behind = cluster_info(&c.url(away)).await["last_log_index"]
            .as_u64()
            .unwrap_or(0);
        c.kill(away);
        let extra_from = 10_000_000 + li as u64 * 100_000;
        load_sequential(&c.url(leader), extra_from, 8000).await;
        let purged_past = wait_purged_past(&c.url(leader), behind).await;
        let last = format!("x{}", extra_from + 7999);
        let t = Instant::now();
        c.spawn(away);
        wait_local(&c.url(away), &last).await;
        let catch_up = t.elapsed();
        let how = match (purged_past, snapshot_installs(&c.url(away)).await) {
            (_, Some(n)) if n > 0 => "by snapshot",
            (true, _) => "by snapshot?",
            (false, _) => "by log (log not purged)",
        };
        println!(
            "| {n} (loaded in {:.0} s) | {rps:.0} | {rp99:.2} | {cps:.0} | {cp99:.2} | {:.1} ms | {:.0} ms ({:.1} MB) | {:.1} s {how} |",
            load_time.as_secs_f64(),
            page_t.as_secs_f64() * 1000.0,
            full_t.as_secs_f64() * 1000.0,
            full_len as f64 / 1e6,
            catch_up.as_secs_f64()
        );
    }
}

/// Creates `x{from}..x{from+count}` one at a time on the leader: one log entry each.
async fn load_sequential(leader: &str, from: u64, count: u64) {
    cookie_raft::network::install_crypto_provider();
    let client = reqwest::Client::new();
    for i in from..from + count {
        let body = json!({"cookie": format!("x{i}"), "user_id": 1});
        let r = client
            .post(format!("{leader}/cookies"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
}

async fn cluster_info(url: &str) -> serde_json::Value {
    cookie_raft::network::install_crypto_provider();
    reqwest::get(format!("{url}/cluster"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The index (0-based) of the node that leads.
async fn leader_index(c: &Cluster) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for i in 0..3 {
            let v = cluster_info(&c.url(i)).await;
            if v["role"] == "leader" {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait (up to 60 s) until the leader's log no longer holds entries after `index`: openraft
/// postpones a purge while a replication request covering it is in flight.
async fn wait_purged_past(leader: &str, index: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if cluster_info(leader).await["purged"].as_u64().unwrap_or(0) > index {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn snapshot_installs(url: &str) -> Option<u64> {
    cookie_raft::network::install_crypto_provider();
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("raft_snapshot_installs_total "))
        .and_then(|v| v.trim().parse().ok())
}

async fn wait_local(url: &str, id: &str) {
    cookie_raft::network::install_crypto_provider();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if let Ok(r) = client
            .get(format!("{url}/cookies/{id}?consistency=local"))
            .send()
            .await
        {
            if r.status() == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "follower never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
