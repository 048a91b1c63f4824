//! This node's watch over the cluster:
//! - peer health: a periodic `GET /health` of every other member, remembering whether it
//!   answered, when it last did, and the role, term and applied index it last reported.
//!   `/cache` reports it as `cluster_status.node_health`, `/metrics` as
//!   `raft_peer_reachable`, `/cluster` as `peers`. Voters that report their disks short of
//!   their reserve are remembered for the write path ([`Monitor::voters_short_of_room`]);
//! - leader changes: the last [`LEADER_HISTORY`] leaders this node learned of, one per
//!   term, from openraft's metrics. `/cluster` reports them as `leader_changes` (the status
//!   page shows them).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cookie_raft::NodeId;
use futures::future::join_all;
use serde::Serialize;

use super::proto::HEALTH_PATH;
use super::Cluster;
use crate::clock::{unix_now, unix_now_ms};

/// What we last learned about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHealth {
    pub name: String,
    pub ok: bool,
    /// Unix seconds of the last successful check, if any.
    pub last_seen: Option<u64>,
    /// What the peer's `/health` said at the last successful check: its role, term and
    /// last applied index.
    pub role: Option<String>,
    pub term: Option<u64>,
    pub last_applied: Option<u64>,
    /// Whether it said its disk is short of its reserve (`disk_short`, `write::room`), and
    /// whether near it (`disk_near_reserve`): then it is checked every [`CLOSELY`].
    pub disk_short: bool,
    pub disk_near: bool,
}

/// How often peers are checked while one says its disk is near its reserve (or short of
/// it), when `health_check_interval_ms` is longer: the leader must hear that a follower
/// is short before it takes more than its reserve holds.
pub const CLOSELY: Duration = Duration::from_millis(100);

/// How many leader changes [`Monitor::leader_changes`] remembers.
pub const LEADER_HISTORY: usize = 20;

/// A leader this node learned of: its term, id and name, and when this node learned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaderChange {
    pub term: u64,
    pub leader_id: NodeId,
    pub leader: String,
    /// Unix milliseconds, by this node's clock.
    pub at_ms: u64,
}

/// The latest health of every other member, and the recent leaders. Cloning shares them.
#[derive(Clone, Default)]
pub struct Monitor {
    peers: Arc<Mutex<BTreeMap<NodeId, PeerHealth>>>,
    leaders: Arc<Mutex<VecDeque<LeaderChange>>>,
    /// Whether a voter's last answer said its disk is short of its reserve, and which
    /// ([`voters_short_of_room`]): read by every write the leader takes, so a flag first.
    voters_short: Arc<AtomicBool>,
    short_why: Arc<Mutex<Option<String>>>,
}

impl Monitor {
    /// The last [`LEADER_HISTORY`] leaders this node learned of, the most recent first.
    pub fn leader_changes(&self) -> Vec<LeaderChange> {
        let ring = self.leaders.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().rev().cloned().collect()
    }

    /// Remember `change` unless it names the leader and term remembered last.
    fn record_leader(&self, change: LeaderChange) {
        let mut ring = self.leaders.lock().unwrap_or_else(|e| e.into_inner());
        if ring
            .back()
            .is_some_and(|l| l.term == change.term && l.leader_id == change.leader_id)
        {
            return;
        }
        if ring.len() == LEADER_HISTORY {
            ring.pop_front();
        }
        ring.push_back(change);
    }

    /// Record each leader openraft's metrics name, as they change, until Raft stops. Changes
    /// that come and go between two looks at the metrics are not seen. The server metrics
    /// change only with the vote, role, leader or membership (see `count_elections`).
    async fn watch_leaders(&self, cluster: &Cluster) {
        let mut rx = cluster.raft.server_metrics();
        loop {
            let seen = {
                let m = rx.borrow_and_update();
                m.current_leader
                    .map(|id| (m.vote.leader_id().get_term(), id))
            };
            if let Some((term, id)) = seen {
                self.record_leader(LeaderChange {
                    term,
                    leader_id: id,
                    leader: cluster.node_name(id),
                    at_ms: unix_now_ms(),
                });
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Why, when a voter's last health check said its disk is short of its reserve
    /// ([`voters_short_of_room`]); up to a health check interval old.
    pub fn voters_short_of_room(&self) -> Option<String> {
        if !self.voters_short.load(Ordering::Relaxed) {
            return None;
        }
        self.short_why
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

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
                role: None,
                term: None,
                last_applied: None,
                disk_short: false,
                disk_near: false,
            });
            entry.name = m.name;
            entry.ok = res.is_ok();
            if let Ok(h) = res {
                entry.last_seen = Some(now);
                entry.role = h["role"].as_str().map(str::to_owned);
                entry.term = h["term"].as_u64();
                entry.last_applied = h["last_applied"].as_u64();
                entry.disk_short = h["disk_short"].as_bool().unwrap_or(false);
                entry.disk_near = h["disk_near_reserve"].as_bool().unwrap_or(false);
            }
        }
        let voters: Vec<NodeId> = {
            let m = cluster.raft.metrics();
            let m = m.borrow();
            m.membership_config.membership().voter_ids().collect()
        };
        let short = voters_short_of_room(&voters, &map);
        self.voters_short.store(short.is_some(), Ordering::Relaxed);
        *self.short_why.lock().unwrap_or_else(|e| e.into_inner()) = short;
    }

    /// Whether a member that answered said its disk is near its reserve, or short of it,
    /// or a member has not answered yet (a node starts before its peers do, members join
    /// after the last check): what it would say is not known.
    fn watch_closely(&self, cluster: &Cluster) -> bool {
        let members = cluster.other_members();
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        members.iter().any(|m| {
            peers
                .get(&m.id)
                .is_none_or(|h| h.last_seen.is_none() || (h.ok && (h.disk_near || h.disk_short)))
        })
    }

    /// [`Monitor::check_once`] every `interval` ([`CLOSELY`] while a peer's disk is near its
    /// reserve), each check bounded by `timeout`, and the leader changes as they happen;
    /// runs until the caller stops it.
    pub async fn run(self, cluster: Cluster, interval: Duration, timeout: Duration) {
        let checks = async {
            loop {
                let began = tokio::time::Instant::now();
                self.check_once(&cluster, timeout).await;
                // Asked again every CLOSELY, not once: members appear after a check (the
                // first one runs before the cluster is formed).
                loop {
                    tokio::time::sleep(CLOSELY.min(interval)).await;
                    if began.elapsed() >= interval || self.watch_closely(&cluster) {
                        break;
                    }
                }
            }
        };
        tokio::join!(checks, self.watch_leaders(&cluster));
    }
}

/// Why, when a voter's last health check said its disk is short of its reserve: then the
/// leader refuses writes that grow the store (`write::room`). A voter whose disk fills
/// stops, and the disks of a cluster fill together: letting the first short one fill (and
/// stop) while a majority still had room measured worse than refusing at once (a second
/// follower of `tests/disk_full.rs` filled and stopped before the leader heard it was
/// short too), and etcd, too, refuses puts cluster-wide once one member raises `NOSPACE`.
/// The price: one small disk stops creates and updates for the whole cluster until it has
/// room (the alerts say which node). A voter that does not answer is not counted (it takes
/// no writes); a learner's report does not count (it is not needed for a majority).
pub fn voters_short_of_room(
    voters: &[NodeId],
    peers: &BTreeMap<NodeId, PeerHealth>,
) -> Option<String> {
    let short: Vec<&str> = voters
        .iter()
        .filter_map(|id| peers.get(id).filter(|h| h.ok && h.disk_short))
        .map(|h| h.name.as_str())
        .collect();
    (!short.is_empty()).then(|| format!("disk short of its reserve on {}", short.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: NodeId, ok: bool, disk_short: bool) -> (NodeId, PeerHealth) {
        let health = PeerHealth {
            name: format!("node{id}"),
            ok,
            last_seen: None,
            role: None,
            term: None,
            last_applied: None,
            disk_short,
            disk_near: disk_short,
        };
        (id, health)
    }

    #[test]
    fn writes_stop_for_room_when_a_voter_that_answers_is_short_of_it() {
        let three = [1, 2, 3];
        let peers = |p: &[(NodeId, bool, bool)]| -> BTreeMap<NodeId, PeerHealth> {
            p.iter()
                .map(|&(id, ok, short)| peer(id, ok, short))
                .collect()
        };
        assert_eq!(
            voters_short_of_room(&three, &peers(&[(2, true, false), (3, true, false)])),
            None
        );
        assert_eq!(
            voters_short_of_room(&three, &peers(&[(2, true, false), (3, true, true)])).as_deref(),
            Some("disk short of its reserve on node3")
        );
        assert_eq!(
            voters_short_of_room(&three, &peers(&[(2, true, true), (3, true, true)])).as_deref(),
            Some("disk short of its reserve on node2, node3")
        );
        // A silent voter's last report is not trusted either way; a learner's does not count.
        assert_eq!(
            voters_short_of_room(&three, &peers(&[(2, false, true), (3, true, false)])),
            None
        );
        let with_learner = peers(&[(2, true, false), (3, true, false), (4, true, true)]);
        assert_eq!(voters_short_of_room(&three, &with_learner), None);
    }

    fn change(term: u64, leader_id: NodeId) -> LeaderChange {
        LeaderChange {
            term,
            leader_id,
            leader: format!("node{leader_id}"),
            at_ms: term * 1000,
        }
    }

    #[test]
    fn the_leader_history_keeps_one_entry_per_term_and_leader_and_the_last_twenty() {
        let m = Monitor::default();
        m.record_leader(change(1, 1));
        m.record_leader(change(1, 1));
        m.record_leader(change(2, 1));
        let got: Vec<(u64, u64)> = m
            .leader_changes()
            .iter()
            .map(|c| (c.term, c.leader_id))
            .collect();
        assert_eq!(got, [(2, 1), (1, 1)]);
        for term in 3..40 {
            m.record_leader(change(term, term % 3 + 1));
        }
        let all = m.leader_changes();
        assert_eq!(all.len(), LEADER_HISTORY);
        assert_eq!(all[0].term, 39);
        assert_eq!(all[LEADER_HISTORY - 1].term, 39 - LEADER_HISTORY as u64 + 1);
    }
}
