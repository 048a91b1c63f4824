//! Inbound node-to-node application requests, after the [`super::peer_gate`]: writes a
//! follower forwards to the leader (`/raft/write`), read-index requests
//! (`/raft/read-index`), membership changes (`/raft/membership`), a stopping leader's
//! handover (`/raft/handover`), and the identity challenge of a node being added
//! (`/raft/prove`, the one route without the peer credential: `cluster::prove`). Their client is [`crate::cluster::peer`]; their messages are in
//! [`crate::cluster::proto`].

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use cookie_raft::codec;

use super::peer_gate::{admit, admit_voted, reply, Refusal};
use super::state::Shared;
use crate::cluster::membership::Change;
use crate::cluster::proto::{ForwardedWrite, Handover};
use tokio::time::Instant;

/// Writes forwarded by a follower; proposed here only if this node leads.
pub async fn forwarded_write(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match admit::<Vec<ForwardedWrite>>(&state, &headers, &body) {
        Ok(writes) => {
            // Only what the API could have built, validated as the API does: a peer must not
            // store what a client could not.
            if let Some(e) = writes.iter().find_map(|w| w.cmd.check_client_write().err()) {
                return (StatusCode::BAD_REQUEST, e.to_string()).into_response();
            }
            reply(&state.writer.write_forwarded(writes).await)
        }
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

/// A membership change forwarded by a member, or asked by a joining node: made on the
/// leader (forwarded on from here when this node does not lead).
pub async fn membership(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    match admit::<Change>(&state, &headers, &body) {
        Ok(change) => {
            let deadline = Instant::now() + state.cfg.write_timeout();
            reply(&state.cluster.change_membership(change, deadline).await)
        }
        Err(r) => r.into_response(),
    }
}

/// A stopping leader hands leadership over (`cluster::handover`): the peer gate checks that
/// the vote it names is its sender's, as for a Raft RPC.
pub async fn handover(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    match admit_voted::<Handover>(&state, &headers, &body) {
        Ok(msg) => reply(&state.cluster.handed_over(&msg).await),
        Err(r) => r.into_response(),
    }
}

/// The identity challenge (`cluster::prove`): who this node is, with a MAC of the caller's
/// nonce keyed by the cluster secret. Served without the peer credential, since the caller
/// is a leader that will not send the secret before the answer checks out.
pub async fn prove(State(state): State<Shared>, RawQuery(query): RawQuery) -> Response {
    use crate::cluster::prove;
    let refuse = |status, why: &str| Refusal(status, why.into()).into_response();
    let Some(secret) = &state.cfg.cluster_secret else {
        return refuse(
            StatusCode::NOT_FOUND,
            "this node has no cluster secret to prove",
        );
    };
    let nonce = query.as_deref().and_then(|q| q.strip_prefix("nonce="));
    let Some(nonce) = nonce.filter(|n| prove::valid_nonce(n)) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "expected ?nonce= and 32-128 hex digits",
        );
    };
    let identity = &state.cluster.identity;
    let who = serde_json::json!({
        "node_id": state.cluster.me,
        "initialized": state.cluster.raft.is_initialized().await.unwrap_or(false),
        "cluster_id": identity.registry().cluster.map(cookie_raft::identity::hex),
        "incarnation": cookie_raft::identity::hex(identity.own()),
    });
    axum::Json(prove::answer(secret.expose(), nonce, who)).into_response()
}
