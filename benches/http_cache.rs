//! HTTP: cached `GET /cookies/{id}?consistency=local` on a node with the cache on, against
//! the same on a node with `cache_enabled = false`, in the same run. Reports the ratio.
//! Run: `cargo bench --bench http_cache` (BENCH_SECS, BENCH_CLIENTS to change the load).

mod support;

use std::time::{Duration, Instant};

use support::{env_num, Nodes};

const RECORDS: usize = 1000;

/// One node, with the cache on or off.
async fn start(cache: bool) -> Nodes {
    Nodes::start(1, &format!("cache_enabled = {cache}\n")).await
}

async fn load(url: &str) {
    cookie_raft::network::install_crypto_provider();
    let client = reqwest::Client::new();
    for i in 0..RECORDS {
        let r = client
            .post(format!("{url}/cookies"))
            .json(&serde_json::json!({"cookie": format!("c{i}"), "user_id": i + 1, "theme": "dark", "note": "x".repeat(120)}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
}

struct Result {
    rps: f64,
    p50: Duration,
    p99: Duration,
    hit_header: String,
}

async fn run(url: &str, clients: usize, secs: u64, list: bool) -> Result {
    cookie_raft::network::install_crypto_provider();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|t| {
            let client = client.clone();
            let url = url.to_owned();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = t * 7919;
                let mut header = String::new();
                while Instant::now() < end {
                    i = (i * 31 + 17) % RECORDS;
                    let start = Instant::now();
                    let path = if list {
                        "/cookies?consistency=local".to_owned()
                    } else {
                        format!("/cookies/c{i}?consistency=local")
                    };
                    let r = client.get(format!("{url}{path}")).send().await.unwrap();
                    header = r
                        .headers()
                        .get("x-cache")
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    let _ = r.bytes().await.unwrap();
                    lat.push(start.elapsed());
                }
                (lat, header)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut hit_header = String::new();
    for t in tasks {
        let (lat, h) = t.await.unwrap();
        all.extend(lat);
        hit_header = h;
    }
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Result {
        rps: all.len() as f64 / secs as f64,
        p50: pct(0.50),
        p99: pct(0.99),
        hit_header,
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let secs: u64 = env_num("BENCH_SECS", 5);
    let clients: usize = env_num("BENCH_CLIENTS", 16);
    let cached = start(true).await;
    let uncached = start(false).await;
    load(&cached.url(0)).await;
    load(&uncached.url(0)).await;
    // Warm the cache: one pass over every record.
    let _ = run(&cached.url(0), 1, 1, false).await;

    println!("consistency=local reads, {clients} clients, {secs} s each, {RECORDS} records");
    println!(
        "{:<34} {:>10} {:>10} {:>10}  x-cache",
        "request / node", "req/s", "p50", "p99"
    );
    for (what, list) in [
        ("GET /cookies/{id}", false),
        ("GET /cookies (1000 records)", true),
    ] {
        let on = run(&cached.url(0), clients, secs, list).await;
        let off = run(&uncached.url(0), clients, secs, list).await;
        for (name, r) in [("cache on", &on), ("cache off", &off)] {
            let label = format!("{what}, {name}");
            println!(
                "{:<34} {:>10.0} {:>10.3?} {:>10.3?}  {}",
                label, r.rps, r.p50, r.p99, r.hit_header
            );
        }
        println!(
            "{what}: cached/uncached throughput ratio {:.2}x",
            on.rps / off.rps
        );
    }
}
