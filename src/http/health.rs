//! `/health` (liveness), `/ready` (readiness) and `/cluster` (the Raft view of this node).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cookie_raft::identity::hex;
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;

use super::state::Shared;
use crate::cluster::role_name as role;
use cookie_raft::types::acting_leader;

/// `GET /health`: 200 while the process serves.
pub async fn health(State(state): State<Shared>) -> Response {
    let (role, leader, term) = {
        let m = state.cluster.raft.metrics();
        let m = m.borrow();
        let leader = acting_leader(state.cluster.me, m.state, m.current_leader);
        (role(m.state), leader, m.current_term)
    };
    Json(json!({
        "status": "ok",
        "node": state.cfg.name(),
        "role": role,
        "leader": leader.map(|l| state.cluster.node_name(l)),
        "term": term,
        "last_applied": state.reader.applied_index(),
        // Whether this node's disk is short of its reserve (`write::room`): the leader
        // refuses creates and updates while a voter says so; and whether it is near it:
        // the other members then check this node every 100 ms (`cluster::monitor`).
        "disk_short": state.writer.room().short(),
        "disk_near_reserve": state.writer.room().near(),
    }))
    .into_response()
}

/// How long `/ready` waits for the leader to confirm its commit index.
const READY_CHECK: Duration = Duration::from_millis(1000);

/// `GET /ready`: 200 once a leader is known and this node has applied everything the
/// leader had committed as of a check made now (a read-index round: the leader confirms its
/// commit index with a quorum); 503 otherwise. A node restarted after a crash, or catching
/// up after a partition, is not ready until it has caught up, whatever its own (possibly
/// stale) commit index says.
pub async fn ready(State(state): State<Shared>) -> Response {
    let leader = {
        let m = state.cluster.raft.metrics();
        let m = m.borrow();
        acting_leader(state.cluster.me, m.state, m.current_leader)
    };
    let confirmed = state
        .reads
        .read_index(Instant::now() + READY_CHECK)
        .await
        .ok();
    // Read after the check: what this node has applied by the time the leader answered.
    let applied = state.reader.applied_index();
    let ready = leader.is_some() && confirmed.is_some_and(|c| applied >= c);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "node": state.cfg.name(),
        "leader": leader.map(|l| state.cluster.node_name(l)),
        "committed": confirmed,
        "last_applied": applied,
    });
    (status, Json(body)).into_response()
}

/// The other members as this node's health monitor last saw them: whether they answered,
/// when, and the role, term and applied index they reported.
fn peers(state: &Shared) -> Vec<serde_json::Value> {
    let members = state.monitor.snapshot();
    members
        .into_iter()
        .map(|(id, h)| {
            json!({
                "id": id, "name": h.name, "status": if h.ok { "ok" } else { "error" },
                "last_seen": h.last_seen, "role": h.role, "term": h.term,
                "last_applied": h.last_applied, "disk_short": h.disk_short,
                "disk_near_reserve": h.disk_near,
            })
        })
        .collect()
}

/// `GET /cluster`: members, voters, learners, leader, term and indexes; on the leader, how
/// far each follower's log matches (`replication`); the recent leaders (`leader_changes`).
pub async fn cluster(State(state): State<Shared>) -> Response {
    let raft = &state.cluster.raft;
    let initialized = raft.is_initialized().await.unwrap_or(false);
    let committed = raft
        .with_raft_state(|st| st.committed.map(|l| l.index))
        .await
        .ok()
        .flatten();
    let m = raft.metrics().borrow().clone();
    let leader = acting_leader(state.cluster.me, m.state, m.current_leader);
    let membership = m.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let learners: Vec<u64> = membership.learner_ids().collect();
    let identity = &state.cluster.identity;
    let registry = identity.registry();
    let members: Vec<_> = membership
        .nodes()
        .map(|(id, n)| {
            json!({
                "id": id, "name": n.name, "addr": n.addr, "peer_addr": n.peer_addr,
                "voter": voters.contains(id),
                "incarnation": registry.members.get(id).map(|i| hex(*i)),
            })
        })
        .collect();
    let last_log = m.last_log_index.unwrap_or(0);
    let replication: Option<Vec<_>> = m.replication.as_ref().map(|peers| {
        peers
            .iter()
            .filter(|(id, _)| **id != state.cluster.me)
            .map(|(id, matched)| {
                let matched = matched.map(|l| l.index);
                json!({
                    "id": id,
                    "name": state.cluster.node_name(*id),
                    "matched": matched,
                    "lag": last_log.saturating_sub(matched.unwrap_or(0)),
                })
            })
            .collect()
    });
    Json(json!({
        "node_id": state.cluster.me,
        "node": state.cfg.name(),
        "addr": state.cfg.advertise(),
        "peer_addr": state.cfg.advertise_peer(),
        "initialized": initialized,
        "cluster_id": registry.cluster.map(hex),
        "incarnation": hex(identity.own()),
        "role": role(m.state),
        "leader": leader,
        "leader_name": leader.map(|l| state.cluster.node_name(l)),
        "term": m.current_term,
        "members": members,
        "voters": voters,
        "learners": learners,
        // Mid-change (joint consensus): the old and the new voters, a majority of each
        // needed to commit; null otherwise, when `voters` is the one configuration.
        "joint": joint_configs(membership),
        "last_log_index": m.last_log_index,
        "committed": committed,
        "last_applied": m.last_applied.map(|l| l.index),
        "snapshot": m.snapshot.map(|l| l.index),
        "purged": m.purged.map(|l| l.index),
        "millis_since_quorum_ack": m.millis_since_quorum_ack,
        "replication": replication,
        "disk_short": state.writer.room().short(),
        "disk_near_reserve": state.writer.room().near(),
        "peers": peers(&state),
        "leader_changes": state.monitor.leader_changes(),
    }))
    .into_response()
}

/// The configurations of a joint membership (old voters, then new), or null for one.
fn joint_configs(
    membership: &openraft::Membership<u64, cookie_raft::CookieNode>,
) -> serde_json::Value {
    match membership.get_joint_config().as_slice() {
        [_] | [] => serde_json::Value::Null,
        configs => json!(configs),
    }
}
