//! Inbound Raft RPCs: `/raft/append`, `/raft/vote`, `/raft/snapshot`, handed to openraft
//! after the [`super::peer_gate`]. Their client is `cookie_raft::network`.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cookie_raft::{inbox, NodeId, TypeConfig};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};

use super::peer_gate::{admit_voted, reply};
use super::state::Shared;

pub async fn append(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let arrived = Instant::now();
    let admitted = admit_voted::<AppendEntriesRequest<TypeConfig>>(&state, &headers, &body);
    match admitted {
        Ok(req) => {
            let raft = &state.cluster.raft;
            // Heartbeats are not timed: they wait for nothing, and would bury the rounds.
            let carries_entries = !req.entries.is_empty();
            let _answering = state.append_lane.arrive(&req, raft, &state.metrics).await;
            let answer = raft.append_entries(req).await;
            if carries_entries {
                let took = arrived.elapsed().as_secs_f64();
                state.metrics.append_answer_seconds.observe(took);
            }
            reply(&answer)
        }
        Err(r) => r.into_response(),
    }
}

pub async fn vote(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let admitted = admit_voted::<VoteRequest<NodeId>>(&state, &headers, &body);
    match admitted {
        Ok(req) => reply(&state.cluster.raft.vote(req).await),
        Err(r) => r.into_response(),
    }
}

pub async fn snapshot(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let admitted = admit_voted::<InstallSnapshotRequest<TypeConfig>>(&state, &headers, &body);
    let req = match admitted {
        Ok(req) => req,
        Err(r) => return r.into_response(),
    };
    // The last chunk is when the install happens: no campaigning from here until the
    // leader has been heard from again (see `cluster::install_quiet`); the leader sends no
    // heartbeat while it waits for this answer, validation included. The hold is released
    // when it drops: after the answer, or when this handler is dropped half-way; at once
    // if the snapshot never reached Raft.
    let index = req.meta.last_log_id.map_or(0, |l| l.index);
    let quiet = req.done.then(|| state.install_quiet.hold(index));
    let installing = || quiet.iter().for_each(|q| q.installing());
    // Chunks go through the inbox, never straight to openraft (see `cookie_raft::inbox`).
    match state.snapshot_inbox.chunk(req, installing).await {
        Ok(answer) => reply(&answer),
        Err(refused) => {
            tracing::warn!("snapshot chunk refused: {refused}");
            // Counted for `raft_snapshot_install_failures_total` (deploy/alerts.yml).
            let (status, reason) = match refused {
                inbox::Refused::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
                inbox::Refused::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
                inbox::Refused::Storage { .. } => (StatusCode::INSUFFICIENT_STORAGE, "storage"),
                inbox::Refused::Stopped(_) => (StatusCode::SERVICE_UNAVAILABLE, "stopped"),
            };
            state.metrics.snapshot_install_failed(reason);
            (status, refused.to_string()).into_response()
        }
    }
}
