//! Inbound node-to-node endpoints: the Raft RPCs, forwarded writes and read-index requests.
//! Bodies are bincode. Each is refused (and changes nothing) when it names another node id
//! in `x-raft-target` or lacks the configured cluster secret.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use cookie_raft::codec;
use std::time::Duration;

use cookie_raft::{TypeConfig, RAFT_TARGET_HEADER};
use openraft::raft::InstallSnapshotRequest;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Shared;
use crate::forward::ForwardedWrite;

/// Why an inbound RPC was refused before it reached Raft.
type Refusal = (StatusCode, String);

fn refuse(status: StatusCode, msg: String) -> Refusal {
    (status, msg)
}

/// Check the caller may talk to us, then decode its body.
fn admit<T: DeserializeOwned>(
    state: &Shared,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, Refusal> {
    if let Some(secret) = &state.cfg.cluster_secret {
        let expected = format!("Bearer {secret}");
        if headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            != Some(&expected)
        {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "cluster secret required".into(),
            ));
        }
    }
    if let Some(target) = headers.get(RAFT_TARGET_HEADER) {
        let target = target.to_str().unwrap_or("").parse::<u64>().ok();
        if target != Some(state.me) {
            return Err(refuse(
                StatusCode::MISDIRECTED_REQUEST,
                format!("this is node {}, not {:?}", state.me, target),
            ));
        }
    }
    codec::decode(body).map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("bad body: {e}")))
}

fn reply<T: Serialize>(value: &T) -> Response {
    match codec::encode(value) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

pub async fn append(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    match admit(&state, &headers, &body) {
        Ok(req) => reply(&state.raft.append_entries(req).await),
        Err(r) => r.into_response(),
    }
}

pub async fn vote(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    match admit(&state, &headers, &body) {
        Ok(req) => reply(&state.raft.vote(req).await),
        Err(r) => r.into_response(),
    }
}

pub async fn snapshot(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let req: InstallSnapshotRequest<TypeConfig> = match admit(&state, &headers, &body) {
        Ok(req) => req,
        Err(r) => return r.into_response(),
    };
    // The last chunk is when the install happens: no campaigning from here until the
    // leader has been heard from again (see `install_quiet`).
    let last = req.done;
    let index = req.meta.last_log_id.map_or(0, |l| l.index);
    if last {
        state.install_quiet.hold(&state.raft);
    }
    let resp = state.raft.install_snapshot(req).await;
    if last {
        let r = &state.cfg.raft;
        state.install_quiet.release(
            state.raft.clone(),
            index,
            Duration::from_millis(r.election_timeout_max_ms),
            Duration::from_millis(r.install_snapshot_timeout_ms),
        );
    }
    reply(&resp)
}

/// Writes forwarded by a follower; proposed here only if this node leads.
pub async fn forwarded_write(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match admit::<Vec<ForwardedWrite>>(&state, &headers, &body) {
        Ok(writes) => reply(&state.writer.write_forwarded(writes).await),
        Err(r) => r.into_response(),
    }
}

/// A follower asks for a read index: confirm leadership with a quorum, name the index.
pub async fn read_index(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = admit::<()>(&state, &headers, &codec::encode(&()).unwrap_or_default()) {
        return r.into_response();
    }
    reply(&state.reads.as_leader().await)
}
