//! Peer health: a periodic `GET /health` of every other member, remembering whether it
//! answered and when it last did. `/cache` reports it as `cluster_status.node_health`, and
//! `/metrics` as `raft_peer_reachable`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cookie_raft::NodeId;
use futures::future::join_all;

use super::proto::HEALTH_PATH;
use super::Cluster;
use crate::clock::unix_now;

/// What we last learned about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHealth {
    pub name: String,
    pub ok: bool,
    /// Unix seconds of the last successful check, if any.
    pub last_seen: Option<u64>,
}

/// The latest health of every other member. Cloning shares it.
#[derive(Clone, Default)]
pub struct Monitor {
    peers: Arc<Mutex<BTreeMap<NodeId, PeerHealth>>>,
}

impl Monitor {
    /// A snapshot of every peer's health.
    pub fn snapshot(&self) -> BTreeMap<NodeId, PeerHealth> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Check every peer now, concurrently.
    pub async fn check_once(&self, cluster: &Cluster, timeout: Duration) {
        let members = cluster.other_members();
        let results = join_all(
            members
                .iter()
                .map(|m| cluster.peers.get_json(&m.addr, HEALTH_PATH, timeout)),
        )
        .await;
        let now = unix_now();
        let mut map = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|id, _| members.iter().any(|m| m.id == *id));
        for (m, res) in members.into_iter().zip(results) {
            let entry = map.entry(m.id).or_insert(PeerHealth {
                name: m.name.clone(),
                ok: false,
                last_seen: None,
            });
            entry.name = m.name;
            entry.ok = res.is_ok();
            if entry.ok {
                entry.last_seen = Some(now);
            }
        }
    }

    /// [`Monitor::check_once`] every `interval`, each check bounded by `timeout`; runs until
    /// the caller stops it.
    pub async fn run(self, cluster: Cluster, interval: Duration, timeout: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.check_once(&cluster, timeout).await;
        }
    }
}
