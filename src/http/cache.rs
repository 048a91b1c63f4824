//! `GET /cache` and `DELETE /cache`, as the original: this node's cache statistics, the
//! cluster's health as this node sees it, and every peer's own cache statistics.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::future::join_all;
use serde_json::{json, Value};

use super::state::Shared;
use crate::clock::unix_now;
use crate::cluster::proto::CACHE_PATH;

/// How long `/cache` waits for a peer's statistics before marking it unreachable.
pub const PEER_STATS_TIMEOUT: Duration = Duration::from_millis(500);

fn stats_json(state: &Shared) -> Value {
    serde_json::to_value(state.reader.cache().stats()).unwrap_or(Value::Null)
}

/// This node's own `cache_stats`: what `GET /cache` on the peer listener answers, so the
/// fan-out never recurses.
pub async fn local_cache_stats(State(state): State<Shared>) -> Response {
    Json(json!({ "cache_stats": stats_json(&state), "local_node": state.cfg.name() }))
        .into_response()
}

/// `GET /cache` (`?scope=local`: only this node's `cache_stats`, as peers see it).
pub async fn get_cache(State(state): State<Shared>, RawQuery(q): RawQuery) -> Response {
    let local_only = q.as_deref().is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "scope" && v == "local")
    });
    if local_only {
        return local_cache_stats(State(state)).await;
    }

    let members = state.cluster.other_members();
    let fetched = join_all(members.iter().map(|m| {
        state
            .cluster
            .peers
            .get_json(&m.addr, CACHE_PATH, PEER_STATS_TIMEOUT)
    }))
    .await;
    let mut node_statuses = BTreeMap::new();
    for (m, res) in members.iter().zip(fetched) {
        let entry = match res {
            Ok(mut v) => {
                let mut s = v["cache_stats"].take();
                if let Some(obj) = s.as_object_mut() {
                    obj.insert("status".into(), json!("ok"));
                }
                s
            }
            Err(_) => json!({ "status": "unreachable" }),
        };
        node_statuses.insert(m.name.clone(), entry);
    }

    let health = state.monitor.snapshot();
    // Learners (read replicas) are named as such; the others vote.
    let view = state.cluster.members();
    let role_of = |id: u64| {
        if view.learners.contains(&id) {
            "learner"
        } else {
            "voter"
        }
    };
    let mut node_health = BTreeMap::new();
    let mut connected = Vec::new();
    for m in &members {
        let (status, last_seen) = match health.get(&m.id) {
            Some(h) => (if h.ok { "ok" } else { "error" }, h.last_seen),
            None => ("unknown", None),
        };
        if status == "ok" {
            connected.push(m.name.clone());
        }
        node_health.insert(
            m.name.clone(),
            json!({ "status": status, "last_seen": last_seen, "role": role_of(m.id) }),
        );
    }

    Json(json!({
        "cache_stats": stats_json(&state),
        "cluster_status": {
            "current_node": state.cfg.name(),
            "current_role": role_of(state.cluster.me),
            "cluster_nodes": members.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
            "connected_nodes": connected,
            "node_health": node_health,
        },
        "node_statuses": node_statuses,
        "local_node": state.cfg.name(),
        "timestamp": unix_now(),
    }))
    .into_response()
}

/// `DELETE /cache`: clear this node's cache; the statistics stay.
pub async fn clear_cache(State(state): State<Shared>) -> Response {
    state.reader.cache().clear();
    Json(json!({ "message": "Cache cleared successfully", "timestamp": unix_now() }))
        .into_response()
}
