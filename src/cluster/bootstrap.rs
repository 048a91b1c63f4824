//! Forming a brand-new cluster, exactly once.
//!
//! Each round asks every candidate member `GET /cluster` (see [`super::discovery`] for where
//! the candidates come from), and [`discovery::decide`] applies one rule: only the member
//! with the smallest id ever calls `initialize`, and only when its own store is pristine,
//! exactly the expected members answer, and none of them is initialized. A restarted node
//! has state and skips all of it (re-initializing is how clusters split their brain). If the
//! others are already a cluster, a pristine node waits to be contacted by their leader
//! instead of founding a second one.

use std::time::Duration;

use futures::future::join_all;

use super::discovery::{self, client_addr_of, Answer, Decision, DiscoveryError, PeerInfo, Seed};
use super::proto::CLUSTER_PATH;
use super::Cluster;
use crate::config::Config;

const ROUND: Duration = Duration::from_millis(250);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Found the cluster if this node is the one to, then end; runs at most until the cluster
/// is initialized (by this node or another).
pub async fn run(cluster: Cluster, cfg: Config) {
    // A joining node is added by a running cluster (`join`); it never founds one.
    if cfg.join.is_some() {
        return;
    }
    let me = cfg.node_id;
    let raft = &cluster.raft;
    let seed = match Seed::new(&cfg) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("discovery: {e}; this node cannot found a cluster");
            return;
        }
    };
    // With a fixed member list everyone knows up front who founds; the others just wait.
    if let Seed::Fixed(members) = &seed {
        if members.keys().next() != Some(&me) {
            return;
        }
    }
    let expected = seed.expected(&cfg);
    let mut round = 0u32;
    loop {
        match raft.is_initialized().await {
            Ok(true) => return,
            Ok(false) => {}
            Err(_) => return, // raft stopped
        }
        let (decision, answers) = match ask(&seed, &cfg, &cluster).await {
            Ok(answers) => (discovery::decide(me, expected, &answers), answers),
            Err(e) => (Decision::Wait(e), Vec::new()),
        };
        match decision {
            Decision::Found(members) => {
                // The members are empty nodes that serve only a sender that names their
                // incarnation, and none is in a cluster yet: what they just answered is
                // theirs. The founder takes part in Raft from here on (`cookie_raft::identity`).
                for info in answers.iter().filter_map(|a| a.reply.as_ref().ok()) {
                    if let Some(inc) = info.incarnation {
                        cluster.identity.observe(info.id, inc);
                    }
                }
                cluster.identity.settle();
                match raft.initialize(members.clone()).await {
                    Ok(()) => tracing::info!(
                        members = ?members.iter().map(|(id, n)| (id, &n.addr)).collect::<Vec<_>>(),
                        "initialized a new cluster"
                    ),
                    Err(e) => tracing::info!("initialize: {e} (already initialized)"),
                }
                return;
            }
            Decision::Join => {
                tracing::warn!(
                    "this node has no Raft state but its peers already form a cluster; \
                     not initializing, waiting for their leader to replicate to us"
                );
                return;
            }
            Decision::NotFounder => {
                tracing::info!("every initial member answers; the smallest id founds the cluster");
                return;
            }
            Decision::Wait(why) => {
                if round.is_multiple_of(20) {
                    tracing::info!("waiting to found the cluster: {why}");
                }
            }
        }
        round += 1;
        tokio::time::sleep(ROUND).await;
    }
}

/// One round: every candidate's own account of itself, asked concurrently.
async fn ask(seed: &Seed, cfg: &Config, cluster: &Cluster) -> Result<Vec<Answer>, String> {
    let peers = &cluster.peers;
    // (client address if known, peer address, where to ask, the id expected there)
    let targets: Vec<(Option<String>, String, String, Option<u64>)> = match seed {
        Seed::Fixed(members) => members
            .iter()
            .map(|(id, n)| {
                let reach = peers.addr(*id, n);
                (Some(n.addr.clone()), n.peer_addr.clone(), reach, Some(*id))
            })
            .collect(),
        Seed::Dns(dns) => {
            let addrs = dns.addresses().await.map_err(|e| e.to_string())?;
            if addrs.is_empty() {
                return Err(format!("{} has no addresses yet", dns.name()));
            }
            addrs
                .into_iter()
                .map(|a| (None, a.to_string(), a.to_string(), None))
                .collect()
        }
    };
    let me = cfg.node_id;
    let own_port = cfg
        .listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_default();
    let probes = targets
        .into_iter()
        .map(|(addr, peer_addr, reach, expected_id)| async move {
            // This node knows itself; a fixed seed need not ask over the network.
            let reply = if expected_id == Some(me) {
                Ok(PeerInfo {
                    id: me,
                    name: cfg.name(),
                    initialized: false,
                    incarnation: Some(cluster.identity.own()),
                    addr: Some(cfg.advertise().to_owned()),
                    cluster: None,
                })
            } else {
                match peers.get_json(&reach, CLUSTER_PATH, PROBE_TIMEOUT).await {
                    Ok(v) => PeerInfo::from_cluster_json(&v).ok_or_else(|| {
                        DiscoveryError::from("its /cluster reply has no node_id".to_string())
                    }),
                    Err(e) => Err(DiscoveryError::from(e.to_string())),
                }
            };
            let addr = addr.unwrap_or_else(|| match peer_addr.parse() {
                Ok(found) => client_addr_of(
                    found,
                    reply.as_ref().ok().and_then(|i| i.addr.as_deref()),
                    own_port,
                ),
                Err(_) => peer_addr.clone(),
            });
            Answer {
                addr,
                peer_addr,
                expected_id,
                reply,
            }
        });
    Ok(join_all(probes).await)
}
