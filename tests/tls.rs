//! TLS on both listeners (issue 13): a 3-node cluster whose peers authenticate each other
//! with mutual TLS alone (no cluster secret) and whose clients speak HTTPS, with
//! certificates made at run time by `cookie-crud certs` (rcgen); certificates renewed
//! while the nodes run; a certificate the peers would refuse, refused at start.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{make_certs, metric, run_bin, send, tls_table, Cluster, BIN, FAST_RAFT};
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

    renewed_certificates_are_served_without_a_restart(&mut c, certs.path()).await;
}

/// A client that makes a full handshake for every request (no connection kept, no session
/// resumed), with a certificate when `identity` is given: it sees what a node serves now.
fn handshaking(ca: &Path, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.resumption = rustls::client::Resumption::disabled();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .tls_info(true)
        .tls_backend_preconfigured(config)
        .build()
        .unwrap()
}

/// What `client` is served at `url`: the DER of the leaf certificate.
async fn served_leaf(client: &reqwest::Client, url: &str) -> Vec<u8> {
    let r = client.get(url).send().await.unwrap();
    let info = r.extensions().get::<reqwest::tls::TlsInfo>().unwrap();
    info.peer_certificate().unwrap().to_vec()
}

/// The DER of the first certificate in a PEM file.
fn leaf_in(path: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    let first = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    first.as_ref().to_vec()
}

/// Replace `to` by `from`'s bytes at once (a rename), as a renewal would.
fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// A metric of node 1's, read until `ok` holds (the reload looks every 10 s).
async fn wait_metric(c: &Cluster, name: &str, ok: impl Fn(Option<u64>) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let v = metric(c, 0, name).await;
        if ok(v) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} stayed at {v:?}\n{}",
            c.log(0)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Node 1's certificate and key, renewed in place (signed by the same CA with `certs --ca`,
/// valid 30 days), are served by the running node on both listeners; files that do not
/// belong together are refused and the renewed certificate goes on being served.
async fn renewed_certificates_are_served_without_a_restart(c: &mut Cluster, certs: &Path) {
    let ca = certs.join("ca.pem");
    let (cert, key) = (certs.join("node1.pem"), certs.join("node1.key"));
    let clients = handshaking(&ca, None);
    let health = format!("https://127.0.0.1:{}/health", c.nodes[0].port);
    let (node2_cert, node2_key) = (certs.join("node2.pem"), certs.join("node2.key"));
    let peers = handshaking(&ca, Some((&node2_cert, &node2_key)));
    let cluster = format!("https://127.0.0.1:{}/cluster", c.nodes[0].peer_port);
    let old = leaf_in(&cert);
    assert_eq!(served_leaf(&clients, &health).await, old);
    assert_eq!(served_leaf(&peers, &cluster).await, old);
    let client_expiry = "tls_certificate_expiry_timestamp_seconds{certificate=\"client\"}";
    let peer_expiry = "tls_certificate_expiry_timestamp_seconds{certificate=\"peer\"}";

    let renewed = tempfile::tempdir().unwrap();
    let out = renewed.path().to_str().unwrap();
    let (code, _, err) = run_bin(&[
        "certs",
        "--out",
        out,
        "--ca",
        certs.to_str().unwrap(),
        "--nodes",
        "1",
        "--host",
        "127.0.0.1",
        "--host",
        "localhost",
        "--days",
        "30",
    ]);
    assert_eq!(code, 0, "{err}");
    replace(&renewed.path().join("node1.key"), &key);
    replace(&renewed.path().join("node1.pem"), &cert);
    let new = leaf_in(&cert);
    assert_ne!(new, old);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Both listeners serve it within the reload interval (10 s).
    for (client, url) in [(&clients, &health), (&peers, &cluster)] {
        let deadline = std::time::Instant::now() + Duration::from_secs(40);
        while served_leaf(client, url).await != new {
            assert!(
                std::time::Instant::now() < deadline,
                "{url} still serves the certificate node 1 started with\n{}",
                c.log(0)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let in_30_days = |v: Option<u64>| v.is_some_and(|v| v.abs_diff(now + 30 * 86_400) < 7_200);
    wait_metric(c, client_expiry, in_30_days).await;
    wait_metric(c, peer_expiry, in_30_days).await;
    wait_metric(
        c,
        "tls_certificate_files_refused{certificate=\"peer\"}",
        |v| v == Some(0),
    )
    .await;
    // The healthcheck pins the file on disk: it passes against the renewed certificate.
    let (code, _, err) = run_bin(&[
        "healthcheck",
        "--config",
        c.nodes[0].config.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    // Writes through node 1 still reach the leader. (Its calls to peers keep the
    // connections they had, whose handshake showed the old certificate; new ones show the
    // renewed one, as the unit tests in `src/tls/files.rs` check of the resolver.)
    let r = c.create(0, json!({"cookie": "tls-2", "user_id": 2})).await;
    assert_eq!(r.status, 201, "{}", r.text);

    // Another node's key beside node 1's certificate: refused, and said so; the renewed
    // certificate is still served, and the same certificate is loaded again once its own
    // key is back.
    replace(&node2_key, &key);
    wait_metric(
        c,
        "tls_certificate_files_refused{certificate=\"client\"}",
        |v| v == Some(1),
    )
    .await;
    assert!(c.log(0).contains("were refused"), "{}", c.log(0));
    assert_eq!(served_leaf(&clients, &health).await, new);
    replace(&renewed.path().join("node1.key"), &key);
    wait_metric(
        c,
        "tls_certificate_files_refused{certificate=\"client\"}",
        |v| v == Some(0),
    )
    .await;
    assert_eq!(served_leaf(&clients, &health).await, new);
    assert_eq!(c.list(1, "linearizable").await.len(), 2);
}

/// A node whose peer certificate `peer_ca` did not sign, or whose certificate has expired,
/// does not start, and says which file and why (peers would refuse its every handshake).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_certificate_its_peers_would_refuse_does_not_start() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path(), 1);
    let rogue = tempfile::tempdir().unwrap();
    make_certs(rogue.path(), 1);
    // Node 1's peer certificate and key from another CA.
    std::fs::copy(
        rogue.path().join("node1.pem"),
        certs.path().join("node1.pem"),
    )
    .unwrap();
    std::fs::copy(
        rogue.path().join("node1.key"),
        certs.path().join("node1.key"),
    )
    .unwrap();
    let dir = certs.path().to_owned();
    let mut c = Cluster::configure_with(1, FAST_RAFT, move |i, _| tls_table(&dir, i));
    c.spawn(0);
    let status = c.wait_exit(0, Duration::from_secs(20)).await;
    assert!(
        status.is_some_and(|s| !s.success()),
        "{status:?}\n{}",
        c.log(0)
    );
    let log = c.log(0);
    assert!(log.contains("node1.pem: not accepted by peer_ca"), "{log}");
}
