//! The per-node read cache seen from outside: `X-Cache`, invalidation on every replica,
//! `/cache` and `DELETE /cache`, and `cache_enabled = false`.

mod common;

use std::time::Duration;

use common::{send, Cluster, FAST_RAFT};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_invalidates_the_cache_on_every_node() {
    let c = Cluster::start(3, FAST_RAFT).await;
    let r = c
        .create(0, json!({"cookie": "inv", "user_id": 1, "v": 1}))
        .await;
    assert_eq!(r.status, 201);
    let v1 = r.etag();

    // Cached on node 3: the second read is a HIT and the hit counter grows.
    let first = c.get(2, "inv", "linearizable").await;
    assert_eq!(first.header("x-cache"), Some("MISS"));
    let hits_before = cache_stats(&c, 2).await["hits"].as_u64().unwrap();
    let second = c.get(2, "inv", "linearizable").await;
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert_eq!(second.etag(), v1);
    assert_eq!(
        cache_stats(&c, 2).await["hits"].as_u64().unwrap(),
        hits_before + 1
    );

    // Update through node 2; node 3's next linearizable read must not be the stale HIT.
    let r = c.put(1, "inv", json!({"v": 2}), None).await;
    assert_eq!(r.status, 200);
    let v2 = r.etag();
    let r = c.get(2, "inv", "linearizable").await;
    assert_eq!(
        r.json["v"],
        2,
        "stale value served: {:?}",
        r.header("x-cache")
    );
    assert_eq!(r.etag(), v2);
    assert_eq!(r.header("x-cache"), Some("MISS"));

    // The list is invalidated too, and deletes are seen at once.
    assert_eq!(c.list(2, "linearizable").await.len(), 1);
    assert_eq!(
        c.create(0, json!({"cookie": "inv2", "user_id": 1}))
            .await
            .status,
        201
    );
    assert_eq!(c.list(2, "linearizable").await.len(), 2);
    assert_eq!(c.delete(0, "inv").await.status, 200);
    assert_eq!(c.get(2, "inv", "linearizable").await.status, 404);
    assert_eq!(c.list(2, "linearizable").await.len(), 1);
}

async fn cache_doc(c: &Cluster, i: usize) -> serde_json::Value {
    let r = send(c.client.get(format!("{}/cache", c.url(i)))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json
}

async fn cache_stats(c: &Cluster, i: usize) -> serde_json::Value {
    cache_doc(c, i).await["cache_stats"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_endpoint_shape_stats_and_clear() {
    let extra = format!("health_check_interval_ms = 200\n{FAST_RAFT}");
    let mut c = Cluster::start(3, &extra).await;
    c.create(0, json!({"cookie": "s", "user_id": 1})).await;
    // Node 1 may be a follower, which applies the create after the leader answered it.
    c.wait_caught_up(0, WAIT).await;
    c.get(0, "s", "local").await; // miss
    c.get(0, "s", "local").await; // hit
    c.get(0, "s", "local").await; // hit

    let doc = cache_doc(&c, 0).await;
    let s = &doc["cache_stats"];
    for k in ["hits", "misses", "puts", "deletes", "evictions", "size"] {
        assert!(s[k].is_u64(), "{k} in {s}");
    }
    assert_eq!(s["hits"], 2);
    assert_eq!(s["misses"], 1);
    assert!((s["hit_rate"].as_f64().unwrap() - 200.0 / 3.0).abs() < 1e-6);
    assert_eq!(doc["local_node"], "node1");
    assert!(doc["timestamp"].as_u64().unwrap() > 1_700_000_000);
    let cs = &doc["cluster_status"];
    assert_eq!(cs["current_node"], "node1");
    assert_eq!(cs["cluster_nodes"], json!(["node2", "node3"]));
    for peer in ["node2", "node3"] {
        assert_eq!(doc["node_statuses"][peer]["status"], "ok", "{doc}");
        assert!(doc["node_statuses"][peer]["hits"].is_u64());
    }

    // DELETE /cache clears entries, keeps statistics.
    let r = send(c.client.delete(format!("{}/cache", c.url(0)))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["message"], "Cache cleared successfully");
    assert!(r.json["timestamp"].is_u64());
    let s = cache_stats(&c, 0).await;
    assert_eq!(s["size"], 0);
    assert_eq!(s["hits"], 2);
    assert_eq!(c.get(0, "s", "local").await.header("x-cache"), Some("MISS"));

    // The health checker has seen every peer.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let doc = cache_doc(&c, 0).await;
        if doc["cluster_status"]["connected_nodes"] == json!(["node2", "node3"]) {
            assert!(doc["cluster_status"]["node_health"]["node3"]["last_seen"].is_u64());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "peers never seen: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // One peer down: marked unreachable in node_statuses, and in error in node_health.
    c.kill(2);
    loop {
        let doc = cache_doc(&c, 0).await;
        assert_eq!(
            doc["node_statuses"]["node3"]["status"], "unreachable",
            "{doc}"
        );
        assert_eq!(doc["node_statuses"]["node2"]["status"], "ok", "{doc}");
        let h = &doc["cluster_status"]["node_health"];
        if h["node3"]["status"] == "error" {
            assert_eq!(h["node2"]["status"], "ok");
            assert!(h["node3"]["last_seen"].is_u64(), "it was seen before: {h}");
            assert_eq!(doc["cluster_status"]["connected_nodes"], json!(["node2"]));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node3 never marked down: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_cache_always_reads_the_store() {
    let extra = format!("cache_enabled = false\n{FAST_RAFT}");
    let c = Cluster::start(1, &extra).await;
    c.create(0, json!({"cookie": "d", "user_id": 1})).await;
    for _ in 0..3 {
        let r = c.get(0, "d", "local").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-cache"), Some("MISS"));
    }
    let s = cache_stats(&c, 0).await;
    assert_eq!((s["hits"].as_u64(), s["size"].as_u64()), (Some(0), Some(0)));
}
