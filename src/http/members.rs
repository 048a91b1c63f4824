//! The membership API (api.md section 9, admin role when client tokens are set):
//! `GET /cluster/members`, `POST /cluster/members`, `POST /cluster/members/{id}/promote`,
//! `DELETE /cluster/members/{id}`. Any node takes them; the change is made on the leader
//! (`crate::cluster::membership`), one at a time, and the reply is the membership after it.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::time::Instant;

use super::error::json_bytes;
use super::params::read_body;
use super::state::Shared;
use crate::cluster::membership::{AddRequest, Change, ChangeError, Members};

/// The API's answer to a change that was not made.
fn refusal(e: ChangeError) -> Response {
    let status = match &e {
        ChangeError::InProgress | ChangeError::Conflict(_) => StatusCode::CONFLICT,
        ChangeError::NotMember => StatusCode::NOT_FOUND,
        ChangeError::Invalid(_) => StatusCode::BAD_REQUEST,
        ChangeError::Unreachable(_) | ChangeError::NoLeader | ChangeError::NotLeader => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ChangeError::Unfinished(_) => StatusCode::GATEWAY_TIMEOUT,
    };
    let body = serde_json::json!({ "error": e.to_string() }).to_string();
    let mut resp = json_bytes(status, body);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

async fn make(state: &Shared, change: Change) -> Response {
    let deadline = Instant::now() + state.cfg.write_timeout();
    match state.cluster.change_membership(change, deadline).await {
        Ok(m) => Json(m).into_response(),
        Err(e) => refusal(e),
    }
}

fn member_id(raw: &str) -> Result<u64, ChangeError> {
    raw.parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ChangeError::Invalid(format!("{raw:?} is not a member id")))
}

/// `GET /cluster/members`: the membership this node has applied.
pub async fn list(State(state): State<Shared>) -> Json<Members> {
    Json(state.cluster.members())
}

/// `POST /cluster/members` `{"id", "addr", "peer_addr"?, "name"?, "role"?}`. The body is
/// read as `/cookies` reads one (`max_body_bytes`, the body timeout, JSON errors): axum's
/// own extractor allowed 2 MB whatever the setting and answered its refusals in plain text.
pub async fn add(State(state): State<Shared>, body: Body) -> Response {
    let body = match read_body(body, state.cfg.max_body_bytes, &state.body_room).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let req: AddRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return refusal(ChangeError::Invalid(format!("Invalid JSON: {e}"))),
    };
    match req.change() {
        Ok(change) => make(&state, change).await,
        Err(e) => refusal(e),
    }
}

/// The `{id}` of a member route; one that is not UTF-8 is refused in JSON, as any other
/// id that is not a member's (axum's rejection was plain text).
fn path_member(path: Result<Path<String>, PathRejection>) -> Result<u64, ChangeError> {
    match path {
        Ok(Path(id)) => member_id(&id),
        Err(_) => Err(ChangeError::Invalid(
            "the path's id is not a member id".into(),
        )),
    }
}

/// `POST /cluster/members/{id}/promote`.
pub async fn promote(
    State(state): State<Shared>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    match path_member(path) {
        Ok(id) => make(&state, Change::Promote { id }).await,
        Err(e) => refusal(e),
    }
}

/// `DELETE /cluster/members/{id}`.
pub async fn remove(
    State(state): State<Shared>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    match path_member(path) {
        Ok(id) => make(&state, Change::Remove { id }).await,
        Err(e) => refusal(e),
    }
}
