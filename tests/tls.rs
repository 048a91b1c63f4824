//! TLS on both listeners (issue 13): a 3-node cluster whose peers authenticate each other
//! with mutual TLS alone (no cluster secret) and whose clients speak HTTPS, with
//! certificates made at run time by `cookie-crud certs` (rcgen).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{make_certs, send, tls_table, Cluster, BIN, FAST_RAFT};
use serde_json::json;

/// A client with a certificate: `Some((cert, key))` shows it on the handshake.
fn client(ca: &Path, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .tls_certs_only([ca]);
    if let Some((cert, key)) = identity {
        let mut pem = std::fs::read(key).unwrap();
        pem.extend(std::fs::read(cert).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_mutual_tls_between_peers_and_https_for_clients() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path(), 3);
    // A second CA, whose certificates the cluster must refuse.
    let rogue = tempfile::tempdir().unwrap();
    make_certs(rogue.path(), 1);

    let dir = certs.path().to_owned();
    let mut c = Cluster::configure_with(3, FAST_RAFT, move |i, _| tls_table(&dir, i));
    // The configs hold no cluster secret: mutual TLS is the peer credential.
    let text = std::fs::read_to_string(&c.nodes[0].config).unwrap();
    assert!(!text.contains("cluster_secret"), "{text}");
    c.use_https(&certs.path().join("ca.pem"));
    for i in 0..3 {
        c.spawn(i);
    }
    c.wait_ready_all(Duration::from_secs(30)).await;

    // Writes on a follower reach the leader over mutual TLS; every node reads them.
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    let follower = (leader + 1) % 3;
    let r = c
        .create(follower, json!({"cookie": "tls-1", "user_id": 1}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    for i in 0..3 {
        let r = c.get(i, "tls-1", "linearizable").await;
        assert_eq!(r.status, 200, "node{}: {}", i + 1, r.text);
    }

    // Plain HTTP gets no HTTP answer on either listener.
    let plain = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let n = &c.nodes[follower];
    for port in [n.port, n.peer_port] {
        let r = plain
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await;
        assert!(r.is_err(), "plain HTTP on {port} answered: {r:?}");
    }

    // The peer listener: no certificate, or one from another CA, fails the handshake and
    // changes nothing; a member's certificate is let in.
    let ca = certs.path().join("ca.pem");
    let peer = format!("https://127.0.0.1:{}/cluster", n.peer_port);
    let anonymous = client(&ca, None).get(&peer).send().await;
    assert!(anonymous.is_err(), "{anonymous:?}");
    let rogue_cert = (
        rogue.path().join("node1.pem"),
        rogue.path().join("node1.key"),
    );
    let stranger = client(&ca, Some((&rogue_cert.0, &rogue_cert.1)))
        .get(&peer)
        .send()
        .await;
    assert!(stranger.is_err(), "{stranger:?}");
    let member_cert = (
        certs.path().join("node1.pem"),
        certs.path().join("node1.key"),
    );
    let member = send(client(&ca, Some((&member_cert.0, &member_cert.1))).get(&peer)).await;
    assert_eq!(member.status, 200, "{}", member.text);
    assert_eq!(member.json["node_id"], c.nodes[follower].id);

    // A client that does not trust the cluster's CA refuses the client listener.
    let untrusting = client(&rogue.path().join("ca.pem"), None)
        .get(format!("{}/health", c.url(0)))
        .send()
        .await;
    assert!(untrusting.is_err(), "{untrusting:?}");

    // The container healthcheck speaks HTTPS to its own node.
    let out = Command::new(BIN)
        .args(["healthcheck", "--config"])
        .arg(&c.nodes[0].config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And the cluster is still whole.
    assert_eq!(c.list(leader, "linearizable").await.len(), 1);
}
