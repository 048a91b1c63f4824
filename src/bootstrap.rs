//! Forming a brand-new cluster, exactly once.
//!
//! Only the member with the smallest id ever calls `initialize`, and only when (a) its own
//! store is pristine, (b) every other initial member answers, and (c) none of them is
//! initialized. A restarted node has state and skips all of it (re-initializing is how
//! clusters split their brain). If the others are already a cluster, a pristine smallest-id
//! node waits to be contacted by their leader instead of founding a second cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use cookie_raft::{CookieNode, Raft};

use crate::config::Config;
use crate::peers::PeerClient;

pub async fn run(raft: Raft, cfg: Config, peers: PeerClient) {
    let me = cfg.node_id;
    let founder = cfg.nodes.iter().map(|m| m.id).min() == Some(me);
    if !founder {
        return;
    }
    let members: BTreeMap<u64, CookieNode> = cfg
        .nodes
        .iter()
        .map(|m| {
            (
                m.id,
                CookieNode {
                    addr: m.addr.clone(),
                    name: m.name(),
                },
            )
        })
        .collect();
    let mut waited = 0u32;
    loop {
        match raft.is_initialized().await {
            Ok(true) => return,
            Ok(false) => {}
            Err(_) => return, // raft stopped
        }
        let mut all_up = true;
        let mut any_initialized = false;
        for m in cfg.nodes.iter().filter(|m| m.id != me) {
            match peers
                .get_json(
                    &peers.addr(m.id, &members[&m.id]),
                    "/cluster",
                    Duration::from_millis(500),
                )
                .await
            {
                Ok(v) => any_initialized |= v["initialized"].as_bool().unwrap_or(false),
                Err(_) => all_up = false,
            }
        }
        if any_initialized {
            tracing::warn!(
                "this node has no Raft state but its peers already form a cluster; \
                 not initializing, waiting for their leader to replicate to us"
            );
            return;
        }
        if all_up {
            match raft.initialize(members.clone()).await {
                Ok(()) => {
                    tracing::info!(members = ?members.keys().collect::<Vec<_>>(), "initialized a new cluster")
                }
                Err(e) => tracing::info!("initialize: {e} (already initialized)"),
            }
            return;
        }
        if waited.is_multiple_of(20) {
            tracing::info!(
                "waiting for every initial member to answer before initializing the cluster"
            );
        }
        waited += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
