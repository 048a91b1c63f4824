//! `dns` discovery against a DNS server the test controls.
//!
//! Three nodes listen on 127.0.0.2-4 (all loopback on Linux) on one port, as pods behind a
//! headless service would. The test's server answers A queries for `cookies.test` with
//! whatever addresses the test sets. Node ids (30, 10, 20) are each node's own, in an order
//! unrelated to the addresses, so the test also shows that ids never come from DNS order.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, Spec, FAST_RAFT};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use serde_json::json;
use tokio::net::UdpSocket;

const NAME: &str = "cookies.test.";

/// A one-name authoritative DNS server on UDP.
struct TestDns {
    addr: SocketAddr,
    answers: Arc<Mutex<Vec<Ipv4Addr>>>,
    queries: Arc<AtomicUsize>,
}

impl TestDns {
    async fn start() -> TestDns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let answers = Arc::new(Mutex::new(Vec::<Ipv4Addr>::new()));
        let queries = Arc::new(AtomicUsize::new(0));
        let (a, q) = (answers.clone(), queries.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
                reply.metadata.authoritative = true;
                reply.metadata.recursion_desired = query.metadata.recursion_desired;
                for question in &query.queries {
                    reply.add_query(question.clone());
                    if question.name().to_ascii().eq_ignore_ascii_case(NAME) {
                        if question.query_type() == RecordType::A {
                            q.fetch_add(1, Ordering::SeqCst);
                            for ip in a.lock().unwrap().iter() {
                                // TTL 0: nobody may cache the member set.
                                reply.add_answer(Record::from_rdata(
                                    question.name().clone(),
                                    0,
                                    RData::A(A(*ip)),
                                ));
                            }
                        }
                    } else {
                        reply.metadata.response_code = ResponseCode::NXDomain;
                    }
                }
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        TestDns {
            addr,
            answers,
            queries,
        }
    }

    fn set(&self, ips: &[Ipv4Addr]) {
        *self.answers.lock().unwrap() = ips.to_vec();
    }

    fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

/// `(id, name, addr, peer_addr)` of every member in a `/cluster` reply, sorted by id.
fn members(info: &serde_json::Value) -> Vec<(u64, String, String, String)> {
    let mut m: Vec<_> = info["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["name"].as_str().unwrap().to_string(),
                m["addr"].as_str().unwrap().to_string(),
                m["peer_addr"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    m.sort();
    m
}

/// A port free on every one of `hosts`.
fn port_free_on(hosts: &[Ipv4Addr]) -> u16 {
    loop {
        let port = common::free_port();
        if hosts.iter().all(|h| TcpListener::bind((*h, port)).is_ok()) {
            return port;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_discovery_founds_the_cluster_once_every_expected_member_resolves() {
    let dns = TestDns::start().await;
    let hosts = [
        Ipv4Addr::new(127, 0, 0, 2),
        Ipv4Addr::new(127, 0, 0, 3),
        Ipv4Addr::new(127, 0, 0, 4),
    ];
    let ids = [30u64, 10, 20];
    let port = port_free_on(&hosts);
    let peer_port = port_free_on(&hosts);
    let specs = hosts
        .iter()
        .zip(ids)
        .map(|(host, id)| {
            let toml = format!(
                "node_id = {id}\nlisten = \"{host}:{port}\"\npeer_listen = \"{host}:{peer_port}\"\n\
                 data_dir = \"{{data_dir}}\"\ncluster_secret = \"discovery-test-secret\"\n\
                 health_check_interval_ms = 200\n\
                 [cluster]\ndiscovery = \"dns\"\nservice = \"cookies.test\"\n\
                 expected_nodes = 3\ndns_server = \"{}\"\n{FAST_RAFT}",
                dns.addr
            );
            Spec {
                id,
                host: host.to_string(),
                port,
                peer_port,
                toml,
            }
        })
        .collect();
    let mut cluster = Cluster::from_configs(specs);

    // Only two of the three members are published yet.
    dns.set(&hosts[..2]);
    for i in 0..3 {
        cluster.spawn(i);
    }
    for i in 0..3 {
        cluster.wait_up(i, Duration::from_secs(30)).await;
    }
    // Every node is serving; let the nodes ask DNS a good number of times more. With two
    // of three expected members nobody may found a cluster.
    let seen = dns.queries();
    let deadline = Instant::now() + Duration::from_secs(30);
    while dns.queries() < seen + 12 {
        for i in 0..3 {
            let info = cluster.cluster_info(i).await;
            assert_eq!(
                info["initialized"], false,
                "node {i} initialized early: {info}"
            );
        }
        assert!(Instant::now() < deadline, "the nodes stopped asking DNS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The third member appears: the smallest id (10, on 127.0.0.3) founds the cluster.
    dns.set(&hosts);
    cluster.wait_ready_all(Duration::from_secs(30)).await;
    let info = cluster.cluster_info(0).await;
    // Found on the peer port; the client address is the found host with the port the
    // member advertises.
    let members: Vec<(u64, String, String)> = members(&info)
        .into_iter()
        .map(|(id, _, addr, peer)| (id, addr, peer))
        .collect();
    let at = |h: &str| (format!("{h}:{port}"), format!("{h}:{peer_port}"));
    let want: Vec<(u64, String, String)> =
        [(10, "127.0.0.3"), (20, "127.0.0.4"), (30, "127.0.0.2")]
            .into_iter()
            .map(|(id, h)| (id, at(h).0, at(h).1))
            .collect();
    assert_eq!(members, want, "{info}");
    let logs = cluster.logs();
    assert_eq!(
        logs.matches("initialized a new cluster").count(),
        1,
        "exactly one founder:\n{logs}"
    );

    // And it is a working cluster: a write on one node is read linearizably on another.
    let created = cluster
        .create(0, json!({"cookie": "dns-1", "user_id": 7, "flavor": "oat"}))
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let read = cluster.get(2, "dns-1", "linearizable").await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.json["flavor"], "oat");
}

/// `kubernetes` discovery as a StatefulSet runs it: each node knows only its pod name; ids
/// and the members' DNS names follow from it. Pod DNS does not exist here, so each node
/// reaches its peers through `peer_overrides` (as split-horizon addressing would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_discovery_forms_the_cluster_from_pod_names() {
    // Three initial pods, and a fourth (the StatefulSet scaled up) started later.
    let ports: Vec<u16> = (0..4).map(|_| common::free_port()).collect();
    let peer_ports: Vec<u16> = (0..4).map(|_| common::free_port()).collect();
    // Overrides name where this node reaches each peer's listener.
    let overrides: Vec<String> = peer_ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{{ id = {}, addr = \"127.0.0.1:{p}\" }}", i + 1))
        .collect();
    let specs = (0..4)
        .map(|i| {
            // Pod DNS does not exist here: the scaled-up pod is told where pod 0 listens
            // (in a StatefulSet it derives cookie-crud-0.cookie-crud-peers...:9080).
            let join = if i == 3 {
                format!(
                    "join = \"127.0.0.1:{}\"\njoin_as = \"voter\"\n",
                    peer_ports[0]
                )
            } else {
                String::new()
            };
            let toml = format!(
                "{join}listen = \"127.0.0.1:{}\"\npeer_listen = \"127.0.0.1:{}\"\n\
                 data_dir = \"{{data_dir}}\"\ncluster_secret = \"discovery-test-secret\"\n\
                 peer_overrides = [{}]\n\
                 [cluster]\ndiscovery = \"kubernetes\"\ninstance_id = \"cookie-crud-{i}\"\n\
                 service = \"cookie-crud-peers\"\nnamespace = \"shop\"\npeer_port = 9080\n\
                 expected_nodes = 3\n{FAST_RAFT}",
                ports[i],
                peer_ports[i],
                overrides.join(", ")
            );
            Spec {
                id: i as u64 + 1,
                host: "127.0.0.1".to_string(),
                port: ports[i],
                peer_port: peer_ports[i],
                toml,
            }
        })
        .collect();
    let mut cluster = Cluster::from_configs(specs);
    for i in 0..3 {
        cluster.spawn(i);
    }
    cluster.wait_ready_all(Duration::from_secs(30)).await;
    let info = cluster.cluster_info(2).await;
    assert_eq!(info["node_id"], 3, "{info}");
    assert_eq!(info["node"], "cookie-crud-2", "{info}");
    let members = members(&info);
    // Client addresses on the listen port (the founder's: in a StatefulSet every pod has
    // the same), peer addresses on the configured peer port.
    let want: Vec<(u64, String, String, String)> = (0..3u64)
        .map(|i| {
            let host = format!("cookie-crud-{i}.cookie-crud-peers.shop.svc.cluster.local");
            (
                i + 1,
                format!("cookie-crud-{i}"),
                format!("{host}:{}", ports[0]),
                format!("{host}:9080"),
            )
        })
        .collect();
    assert_eq!(members, want, "{info}");
    let created = cluster
        .create(1, json!({"cookie": "k8s-1", "user_id": 7}))
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let read = cluster.get(0, "k8s-1", "linearizable").await;
    assert_eq!(read.status, 200, "{}", read.text);

    // Scaled up: pod cookie-crud-3 (node 4) joins as a voter and catches up.
    cluster.spawn(3);
    cluster
        .wait_membership(0, &[1, 2, 3, 4], &[], Duration::from_secs(30))
        .await;
    cluster
        .wait_local(3, "k8s-1", Duration::from_secs(30), |r| r.status == 200)
        .await;
    // Scaled down: the preStop hook of an initial pod leaves nothing; the elastic pod's
    // takes it out of the membership before it stops.
    let leave = |i: usize| {
        std::process::Command::new(common::BIN)
            .args(["leave", "--if-elastic", "--config"])
            .arg(&cluster.nodes[i].config)
            .output()
            .unwrap()
    };
    let out = leave(0);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster
        .wait_membership(1, &[1, 2, 3, 4], &[], Duration::from_secs(5))
        .await;
    let out = leave(3);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster
        .wait_membership(0, &[1, 2, 3], &[], Duration::from_secs(30))
        .await;
    cluster.stop(3);
    let created = cluster
        .create(2, json!({"cookie": "k8s-2", "user_id": 7}))
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
}
