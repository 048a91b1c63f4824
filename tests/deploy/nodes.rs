//! The files against the real binary and real nodes: the binary accepts the environment
//! of every container, the probe paths answer, and every metric the queries use is in the
//! nodes' `/metrics`.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{make_certs, tls_table, Cluster, BIN, FAST_RAFT};
use crate::compose::compose_nodes;
use crate::dockerfile::image_env;
use crate::files::{deploy_dir, k8s_objects, load_yaml_one, objects_of, Check};
use crate::kubernetes::{main_container, pod_environment};
use crate::promql::{
    all_queries, check_metric_refs, prometheus_configs, scrape_labels, Exposition,
};

/// Whether the binary accepts a container's environment: `cookie-crud healthcheck` loads
/// the configuration like the server does, and exits 2 when it refuses it (then 0 or 1
/// depending on whether something answers on that port, which does not matter here).
pub(crate) fn config_accepted(env: &BTreeMap<String, String>) -> Check {
    let out = Command::new(BIN)
        .arg("healthcheck")
        .env_clear()
        .envs(env)
        .output()
        .expect("run cookie-crud healthcheck");
    if out.status.code() == Some(2) {
        Err(format!(
            "cookie-crud refuses the environment {env:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    } else {
        Ok(())
    }
}

/// The binary takes the configuration each container gets: the compose services' and each
/// StatefulSet pod's (with its pod name as `HOSTNAME`).
#[test]
fn the_binary_accepts_every_container_environment() {
    let image = image_env();
    let compose = load_yaml_one(&deploy_dir().join("docker-compose.yml"));
    for (name, env) in compose_nodes(&compose, &image).unwrap() {
        config_accepted(&env).unwrap_or_else(|e| panic!("compose service {name}: {e}"));
    }
    let objects = k8s_objects();
    let replicas = objects_of(&objects, "StatefulSet")[0]["spec"]["replicas"]
        .as_u64()
        .unwrap_or(1);
    for ordinal in 0..replicas {
        config_accepted(&pod_environment(&objects, &image, ordinal))
            .unwrap_or_else(|e| panic!("StatefulSet pod {ordinal}: {e}"));
    }
}

pub(crate) async fn http_get(c: &Cluster, i: usize, path: &str) -> (u16, String) {
    let r = c
        .client
        .get(format!("{}{path}", c.url(i)))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} on node{}: {e}", i + 1));
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// The probe paths of the StatefulSet answer 200 on real nodes, and every metric the
/// dashboard and Prometheus configs query is in their real `/metrics`. Three nodes, because
/// the peer, replication and forwarding series exist only in a cluster; the leader is
/// killed at the end so that forward errors are exported too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_paths_answer_and_every_queried_metric_is_exported() {
    let objects = k8s_objects();
    let sts = objects_of(&objects, "StatefulSet")[0];
    let c0 = main_container(sts).unwrap();
    let live = c0["livenessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let ready = c0["readinessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let metrics = "/metrics";

    let mut c = Cluster::start(3, &format!("health_check_interval_ms = 200\n{FAST_RAFT}")).await;
    for i in 0..3 {
        let (status, body) = http_get(&c, i, &live).await;
        assert_eq!(status, 200, "liveness {live} on node{}: {body}", i + 1);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = http_get(&c, i, &ready).await;
            if status == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "readiness {ready} on node{}: {status} {body}",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (status, body) = http_get(&c, i, metrics).await;
        assert_eq!(status, 200, "{metrics} on node{}: {body}", i + 1);
    }

    // Requests, so that the per-request series exist: writes through a follower (forwarded)
    // and the leader, linearizable reads (a read index through the follower), hits, misses.
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let follower = (leader + 1) % 3;
    for (n, i) in [follower, leader].into_iter().enumerate() {
        let id = format!("deploy-{n}");
        let r = c.create(i, json!({"cookie": id, "user_id": 1})).await;
        assert_eq!(r.status, 201, "{}", r.text);
        let (status, body) = http_get(&c, i, "/cookies").await;
        assert_eq!(status, 200, "{body}");
        c.get(i, &id, "linearizable").await;
        c.get(i, &id, "linearizable").await;
        c.get(i, "absent", "local").await;
    }
    // The leader's per-peer series come with its health checks and replication.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, text) = http_get(&c, leader, metrics).await;
        if [
            "raft_peer_reachable{",
            "raft_replication_lag_entries{",
            "raft_peer_last_seen_age_seconds{",
        ]
        .iter()
        .all(|s| text.contains(s))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no per-peer series on the leader:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut expo = Exposition::default();
    for i in 0..3 {
        expo.add(&http_get(&c, i, metrics).await.1).unwrap();
    }
    // Forward errors: with the leader killed, the followers still forward to it at first.
    c.kill(leader);
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let writes = others.iter().map(|&i| {
        c.client
            .post(format!("{}/cookies", c.url(i)))
            .json(&json!({"cookie": format!("after-kill-{i}"), "user_id": 1}))
            .send()
    });
    let _ = futures::future::join_all(writes).await;
    for &i in &others {
        expo.add(&http_get(&c, i, metrics).await.1).unwrap();
    }
    // 507: a node whose write reserve is more than any disk has refuses every create.
    let short = format!(
        "{FAST_RAFT}[storage]\nwrite_reserve_bytes = {}\n",
        1u64 << 60
    );
    let full = Cluster::start(1, &short).await;
    let r = full
        .create(0, json!({"cookie": "no-room", "user_id": 1}))
        .await;
    assert_eq!(r.status, 507, "{}", r.text);
    expo.add(&http_get(&full, 0, metrics).await.1).unwrap();
    // The certificate series: a node with TLS on both listeners.
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path(), 1);
    let dir = certs.path().to_owned();
    let mut tls = Cluster::configure_with(1, FAST_RAFT, move |i, _| tls_table(&dir, i));
    tls.use_https(&certs.path().join("ca.pem"));
    tls.spawn(0);
    tls.wait_up(0, Duration::from_secs(20)).await;
    expo.add(&http_get(&tls, 0, metrics).await.1).unwrap();

    let configs: Vec<Value> = prometheus_configs().into_iter().map(|(_, v)| v).collect();
    let queries = all_queries();
    assert!(queries.len() > 20, "only {} queries", queries.len());
    check_metric_refs(&queries, &expo, &scrape_labels(&configs)).unwrap_or_else(|e| {
        panic!(
            "{e}\nexported sample names: {:?}",
            expo.series.keys().collect::<Vec<_>>()
        )
    });
}
