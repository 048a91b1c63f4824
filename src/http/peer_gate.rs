//! What every inbound node-to-node request passes before it reaches Raft or the write and
//! read paths: the peer credential on every route of the peer listener
//! ([`check`]: the cluster secret when one is configured), then, for the RPCs
//! ([`admit`]), the `x-raft-target` check (a
//! misaddressed request is refused rather than obeyed), the identity check (a request for
//! another incarnation of this node, from an impostor or another cluster, or to an empty
//! node that the sender does not know, is refused: `cookie_raft::identity`), and a bounded
//! bincode decode of the body. A refused request changes nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use cookie_raft::codec;
use cookie_raft::identity::{Claims, Refused};
use cookie_raft::types::term_in_range;
use cookie_raft::{NodeId, TypeConfig};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::Vote;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::state::Shared;
use crate::cluster::proto::RAFT_TARGET_HEADER;

/// When a request from a sender with a stale view was last logged.
static STALE_LOGGED: Throttle = Throttle(AtomicU64::new(0));
/// When a request this node could not check yet was last logged.
static UNVERIFIED_LOGGED: Throttle = Throttle(AtomicU64::new(0));

/// At most one log line per period, for a refusal that repeats at every election.
struct Throttle(AtomicU64);

impl Throttle {
    /// Whether nothing was let through in the last `period` (and now this is).
    fn first_in(&self, period: Duration) -> bool {
        let now = crate::clock::unix_now_ms();
        let last = self.0.load(Ordering::Relaxed);
        now.saturating_sub(last) >= period.as_millis() as u64
            && self
                .0
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Why an inbound RPC was refused: its status and reason, answered as the API's JSON error
/// (`{"error":"Unauthorized"}` without the peer credential, api.md section 9).
#[derive(Debug)]
pub struct Refusal(pub StatusCode, pub String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.1 }).to_string();
        super::error::json_bytes(self.0, body)
    }
}

/// Whether the request shows the peer credential: the cluster secret as a bearer token,
/// when one is configured. Without one, the peer listener is open only where it gives no
/// more than the client listener does, or where its TLS already checked the caller:
/// - mutual TLS between peers: the handshake checked the caller's certificate;
/// - no client tokens: the client API is open to anyone already;
/// - `insecure_peers`: an operator's explicit choice, for a lab.
///
/// A single node with client tokens and neither, which the config allows (it needs no
/// peers), refuses every peer RPC: it used to take forged writes and deletes on its peer
/// port from anyone, and show its `/cluster` there, tokens or not (found in review).
fn has_peer_credential(state: &Shared, headers: &HeaderMap) -> bool {
    let cfg = &state.cfg;
    let Some(secret) = &cfg.cluster_secret else {
        return cfg.tls.mutual_peers() || cfg.client_tokens.is_empty() || cfg.insecure_peers;
    };
    super::auth::bearer(headers).is_some_and(|p| secret.matches(p))
}

/// Every route of the peer listener: 401 `{"error":"Unauthorized"}` without the peer
/// credential, before the body is read.
pub fn check(state: &Shared, headers: &HeaderMap) -> Result<(), Refusal> {
    if has_peer_credential(state, headers) {
        Ok(())
    } else {
        Err(Refusal(StatusCode::UNAUTHORIZED, "Unauthorized".into()))
    }
}

/// Check the caller may talk to us (past [`check`]), then decode its body.
pub fn admit<T: DeserializeOwned>(
    state: &Shared,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, Refusal> {
    admit_with_claims(state, headers, body).map(|(req, _)| req)
}

/// [`admit`], for a Raft RPC: also check the vote it carries, its term within
/// `cookie_raft::types::MAX_TERM`, and its node the sender (the candidate of a vote
/// request, the leader of an append or a snapshot), so that a peer speaks only for itself.
pub fn admit_voted<T: DeserializeOwned + Voted>(
    state: &Shared,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, Refusal> {
    let (req, claims) = admit_with_claims::<T>(state, headers, body)?;
    let vote = req.vote();
    term_in_range(vote).map_err(|e| Refusal(StatusCode::BAD_REQUEST, e.to_string()))?;
    let node = vote.leader_id().voted_for();
    if claims.sender.is_none() || claims.sender != node {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            format!(
                "the vote is node {node:?}'s, the sender says it is {:?}",
                claims.sender
            ),
        ));
    }
    Ok(req)
}

/// A Raft RPC's request, by the vote it carries.
pub trait Voted {
    fn vote(&self) -> &Vote<NodeId>;
}

impl Voted for AppendEntriesRequest<TypeConfig> {
    fn vote(&self) -> &Vote<NodeId> {
        &self.vote
    }
}

impl Voted for VoteRequest<NodeId> {
    fn vote(&self) -> &Vote<NodeId> {
        &self.vote
    }
}

impl Voted for crate::cluster::proto::Handover {
    fn vote(&self) -> &Vote<NodeId> {
        &self.vote
    }
}

impl Voted for InstallSnapshotRequest<TypeConfig> {
    fn vote(&self) -> &Vote<NodeId> {
        &self.vote
    }
}

/// [`admit`], with the claims the request's headers made.
fn admit_with_claims<T: DeserializeOwned>(
    state: &Shared,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(T, Claims), Refusal> {
    if let Some(target) = headers.get(RAFT_TARGET_HEADER) {
        let target = target.to_str().unwrap_or("").parse::<u64>().ok();
        if target != Some(state.cluster.me) {
            return Err(Refusal(
                StatusCode::MISDIRECTED_REQUEST,
                format!("this is node {}, not {:?}", state.cluster.me, target),
            ));
        }
    }
    let claims = Claims::from_headers(|name| headers.get(name).and_then(|v| v.to_str().ok()));
    if let Err(refused) = state.cluster.identity.admit(&claims) {
        if matches!(refused, Refused::Superseded { .. }) {
            tracing::error!("{refused}");
        } else if matches!(refused, Refused::Unverified { .. }) {
            if UNVERIFIED_LOGGED.first_in(Duration::from_secs(30)) {
                tracing::warn!(sender = ?claims.sender, "{refused}");
            }
        } else if matches!(refused, Refused::Stale { .. }) {
            // A former member still running asks again at every election: say so, but not
            // every second.
            if STALE_LOGGED.first_in(Duration::from_secs(30)) {
                tracing::warn!(
                    sender = ?claims.sender,
                    "{refused} (a former member still running? stop it)"
                );
            }
        } else {
            tracing::debug!(?claims, "peer request refused: {refused}");
        }
        return Err(Refusal(StatusCode::CONFLICT, refused.to_string()));
    }
    let req = codec::decode(body)
        .map_err(|e| Refusal(StatusCode::BAD_REQUEST, format!("bad body: {e}")))?;
    Ok((req, claims))
}

/// A bincode reply.
pub fn reply<T: Serialize>(value: &T) -> Response {
    match codec::encode(value) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
