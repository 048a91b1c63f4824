//! Peer health: a periodic `GET /health` of every other member, remembering whether it
//! answered and when it last did. `/cache` reports it as `cluster_status.node_health`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cookie_raft::{NodeId, Raft};
use futures::future::join_all;

use crate::peers::PeerClient;

/// What we last learned about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHealth {
    pub name: String,
    pub ok: bool,
    /// Unix seconds of the last successful check, if any.
    pub last_seen: Option<u64>,
}

#[derive(Clone, Default)]
pub struct Monitor {
    peers: Arc<Mutex<BTreeMap<NodeId, PeerHealth>>>,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The other members of the cluster, from the replicated membership: `(id, name, addr)`.
pub fn other_members(raft: &Raft, me: NodeId, peers: &PeerClient) -> Vec<(NodeId, String, String)> {
    let m = raft.metrics();
    let m = m.borrow();
    m.membership_config
        .membership()
        .nodes()
        .filter(|(id, _)| **id != me)
        .map(|(id, n)| (*id, n.name.clone(), peers.addr(*id, n)))
        .collect()
}

impl Monitor {
    /// A snapshot of every peer's health.
    pub fn snapshot(&self) -> BTreeMap<NodeId, PeerHealth> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Check every peer now, concurrently.
    pub async fn check_once(&self, raft: &Raft, me: NodeId, peers: &PeerClient, timeout: Duration) {
        let members = other_members(raft, me, peers);
        let results = join_all(
            members
                .iter()
                .map(|(_, _, addr)| peers.get_json(addr, "/health", timeout)),
        )
        .await;
        let now = unix_now();
        let mut map = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|id, _| members.iter().any(|(m, _, _)| m == id));
        for ((id, name, _), res) in members.into_iter().zip(results) {
            let entry = map.entry(id).or_insert(PeerHealth {
                name: name.clone(),
                ok: false,
                last_seen: None,
            });
            entry.name = name;
            entry.ok = res.is_ok();
            if entry.ok {
                entry.last_seen = Some(now);
            }
        }
    }

    /// Run [`Monitor::check_once`] every `interval` until the process stops.
    pub fn spawn(
        &self,
        raft: Raft,
        me: NodeId,
        peers: PeerClient,
        interval: Duration,
        timeout: Duration,
    ) {
        let monitor = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                monitor.check_once(&raft, me, &peers, timeout).await;
            }
        });
    }
}
