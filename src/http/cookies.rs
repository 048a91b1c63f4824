//! `/cookies`: the original CRUD contract, plus versions (`ETag`/`If-Match`) and read
//! consistency levels (`?consistency=linearizable|local`).

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use cookie_raft::state_machine::CacheStatus;
use cookie_raft::{CmdResult, Command};
use serde_json::{Map, Value};

use super::error::{json_bytes, ApiError};
use super::Shared;
use crate::metrics::RequestId;

type ApiResult = Result<Response, ApiError>;

/// How a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Consistency {
    Linearizable,
    Local,
}

fn consistency(query: Option<&str>) -> Result<Consistency, ApiError> {
    let mut level = Consistency::Linearizable;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k == "consistency" {
            level = match v.as_ref() {
                "linearizable" => Consistency::Linearizable,
                "local" => Consistency::Local,
                _ => {
                    return Err(ApiError::bad_request(
                        "consistency must be linearizable or local",
                    ))
                }
            };
        }
    }
    Ok(level)
}

fn path_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    match path {
        Ok(Path(id)) if !id.is_empty() => Ok(id),
        Ok(_) => Err(ApiError::NotFound),
        Err(_) => Err(ApiError::bad_request("Invalid cookie id in path")),
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are a valid header")
}

/// Parse `If-Match: "<index>"` (quotes optional, a weak `W/` prefix tolerated).
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(raw) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let s = raw.to_str().unwrap_or("").trim();
    let s = s.strip_prefix("W/").unwrap_or(s);
    let s = s.trim_matches('"');
    s.parse::<u64>()
        .map(Some)
        .map_err(|_| ApiError::bad_request("If-Match must be a version like \"42\""))
}

/// How much of an oversized body we read and discard before answering 413, so that a
/// client still sending it reads our reply instead of a connection reset.
const DRAIN_LIMIT: usize = 16 << 20;

/// Read a request body of at most `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::bad_request("Could not read request body"))?;
        seen += chunk.len();
        if seen <= limit {
            buf.extend_from_slice(&chunk);
        } else if seen > limit + DRAIN_LIMIT {
            break; // give up draining; the connection will be closed
        }
    }
    if seen > limit {
        Err(ApiError::PayloadTooLarge)
    } else {
        Ok(buf)
    }
}

fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(ApiError::bad_request("Invalid JSON")),
    }
}

fn valid_user_id(v: &Value) -> bool {
    v.as_u64().is_some_and(|n| n > 0)
}

/// The `cookie` field as a non-empty string, with the contract's messages.
fn cookie_field(v: &Value) -> Result<&str, ApiError> {
    match v {
        Value::String(s) if s.is_empty() => Err(ApiError::bad_request("Cookie cannot be empty")),
        Value::String(s) => Ok(s),
        _ => Err(ApiError::bad_request("Cookie must be a string")),
    }
}

fn require_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::bad_request("Content-Type header is required"));
    };
    let ct = ct.to_str().unwrap_or("").trim().to_ascii_lowercase();
    if ct.starts_with("application/json") {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "Content-Type must be application/json",
        ))
    }
}

fn read_reply(
    status: StatusCode,
    body: impl Into<Body>,
    cache: CacheStatus,
    applied: u64,
) -> Response {
    let mut resp = json_bytes(status, body);
    let h = resp.headers_mut();
    h.insert("x-cache", HeaderValue::from_static(cache.as_str()));
    h.insert("x-raft-applied-index", HeaderValue::from(applied));
    resp
}

fn stored_reply(status: StatusCode, object: String, version: u64) -> Response {
    let mut resp = json_bytes(status, object);
    resp.headers_mut().insert(header::ETAG, etag(version));
    resp
}

async fn read_barrier(state: &Shared, level: Consistency) -> Result<(), ApiError> {
    if level == Consistency::Linearizable {
        state.reads.barrier(state.cfg.read_timeout()).await?;
    }
    Ok(())
}

/// Largest page `?limit=` accepts.
const MAX_PAGE: usize = 10_000;

/// `?limit=N&after=<id>`: `None` when neither is given (the original, unpaged list).
fn paging(query: Option<&str>) -> Result<Option<(usize, Option<String>)>, ApiError> {
    let mut limit = None;
    let mut after = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "limit" => {
                let n = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n));
                limit = Some(n.ok_or_else(|| {
                    ApiError::bad_request(format!("limit must be an integer from 1 to {MAX_PAGE}"))
                })?);
            }
            "after" => after = Some(v.into_owned()),
            _ => {}
        }
    }
    if limit.is_none() && after.is_none() {
        return Ok(None);
    }
    Ok(Some((limit.unwrap_or(100), after)))
}

/// Run a store scan on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// `GET /cookies` (all of them, as the original), or one page with `?limit=&after=`:
/// `{"cookies":[...],"next_after":"<id>"}`, `next_after` present while more may follow.
pub async fn list(State(state): State<Shared>, RawQuery(q): RawQuery) -> ApiResult {
    let level = consistency(q.as_deref())?;
    let page = paging(q.as_deref())?;
    read_barrier(&state, level).await?;
    state
        .metrics
        .db_operations
        .with_label_values(&["list"])
        .inc();
    // Scans run on the blocking pool: an unpaged list of a million records takes over a
    // second, and on an async worker it would stall this node's Raft traffic meanwhile (all
    // of it, where the runtime has a single worker, as in a one-CPU container).
    let reader = state.reader.clone();
    if let Some((limit, after)) = page {
        let found = blocking(move || reader.page(limit, after.as_deref())).await?;
        let Some((body, _)) = found else {
            return Err(ApiError::bad_request(
                "after must be the id of an existing cookie",
            ));
        };
        return Ok(read_reply(
            StatusCode::OK,
            body,
            CacheStatus::Miss,
            state.reader.applied_index(),
        ));
    }
    let (body, cache) = blocking(move || reader.list()).await?;
    Ok(read_reply(
        StatusCode::OK,
        body,
        cache,
        state.reader.applied_index(),
    ))
}

/// `GET /cookies/{cookie}`
pub async fn get_one(
    State(state): State<Shared>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let id = path_id(path)?;
    let level = consistency(q.as_deref())?;
    read_barrier(&state, level).await?;
    state
        .metrics
        .db_operations
        .with_label_values(&["get"])
        .inc();
    let (found, cache) = state
        .reader
        .get(&id)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let applied = state.reader.applied_index();
    match found {
        Some(rec) => {
            let mut resp = read_reply(StatusCode::OK, rec.json, cache, applied);
            resp.headers_mut().insert(header::ETAG, etag(rec.version));
            Ok(resp)
        }
        None => {
            let mut resp = axum::response::IntoResponse::into_response(ApiError::NotFound);
            let h = resp.headers_mut();
            h.insert("x-cache", HeaderValue::from_static(cache.as_str()));
            h.insert("x-raft-applied-index", HeaderValue::from(applied));
            Ok(resp)
        }
    }
}

/// `POST /cookies/{anything}`: the path id is ignored, as in the original.
pub async fn create_with_path(
    state: State<Shared>,
    rid: Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    create(state, rid, headers, body).await
}

/// `POST /cookies`
pub async fn create(
    State(state): State<Shared>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    require_json_content_type(&headers)?;
    let bytes = read_body(body, state.cfg.max_body_bytes).await?;
    let mut obj = parse_object(&bytes)?;
    let id = match obj.get("cookie") {
        None | Some(Value::Null) => return Err(ApiError::bad_request("Cookie field is required")),
        Some(v) => cookie_field(v)?.to_owned(),
    };
    match obj.get("user_id") {
        None => return Err(ApiError::bad_request("User ID field is required")),
        Some(v) if !valid_user_id(v) => {
            return Err(ApiError::bad_request("User ID must be a positive integer"))
        }
        Some(_) => {}
    }
    let now = Value::String(now_secs().to_string());
    obj.insert("created".into(), now.clone());
    obj.insert("last_used".into(), now);
    let object = serde_json::to_string(&obj).map_err(|e| ApiError::Internal(e.to_string()))?;
    state
        .metrics
        .db_operations
        .with_label_values(&["create"])
        .inc();
    match state
        .writer
        .write(Command::Create { id, object }, &rid.0)
        .await?
    {
        CmdResult::Stored { object, version } => {
            Ok(stored_reply(StatusCode::CREATED, object, version))
        }
        CmdResult::AlreadyExists => Err(ApiError::Conflict),
        other => Err(unexpected(other)),
    }
}

/// `PUT /cookies/{cookie}`: merge, atomically where the write is applied.
pub async fn update(
    State(state): State<Shared>,
    Extension(rid): Extension<RequestId>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let id = path_id(path)?;
    let expected = if_match(&headers)?;
    let bytes = read_body(body, state.cfg.max_body_bytes).await?;
    let patch = parse_object(&bytes)?;
    if let Some(v) = patch.get("user_id") {
        if !valid_user_id(v) {
            return Err(ApiError::bad_request("User ID must be a positive integer"));
        }
    }
    let rename_to = match patch.get("cookie") {
        Some(v) => Some(cookie_field(v)?.to_owned()).filter(|new| *new != id),
        None => None,
    };
    let patch = serde_json::to_string(&patch).map_err(|e| ApiError::Internal(e.to_string()))?;
    let cmd = Command::Update {
        id,
        patch,
        rename_to,
        now: now_secs(),
        if_match: expected,
    };
    state
        .metrics
        .db_operations
        .with_label_values(&["update"])
        .inc();
    match state.writer.write(cmd, &rid.0).await? {
        CmdResult::Stored { object, version } => Ok(stored_reply(StatusCode::OK, object, version)),
        CmdResult::NotFound => Err(ApiError::NotFound),
        CmdResult::AlreadyExists => Err(ApiError::Conflict),
        CmdResult::PreconditionFailed => Err(ApiError::PreconditionFailed),
        CmdResult::Invalid(msg) => Err(ApiError::BadRequest(msg)),
        other => Err(unexpected(other)),
    }
}

/// `DELETE /cookies/{cookie}`: idempotent unless `If-Match` is given.
pub async fn delete(
    State(state): State<Shared>,
    Extension(rid): Extension<RequestId>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> ApiResult {
    let id = path_id(path)?;
    let expected = if_match(&headers)?;
    state
        .metrics
        .db_operations
        .with_label_values(&["delete"])
        .inc();
    match state
        .writer
        .write(
            Command::Delete {
                id,
                if_match: expected,
            },
            &rid.0,
        )
        .await?
    {
        CmdResult::Deleted => Ok(json_bytes(
            StatusCode::OK,
            r#"{"message":"Cookie deleted successfully"}"#,
        )),
        CmdResult::PreconditionFailed => Err(ApiError::PreconditionFailed),
        other => Err(unexpected(other)),
    }
}

fn unexpected(r: CmdResult) -> ApiError {
    ApiError::Internal(format!("unexpected result from the state machine: {r:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_levels() {
        assert_eq!(consistency(None).unwrap(), Consistency::Linearizable);
        assert_eq!(
            consistency(Some("consistency=local")).unwrap(),
            Consistency::Local
        );
        assert_eq!(
            consistency(Some("x=1&consistency=linearizable")).unwrap(),
            Consistency::Linearizable
        );
        assert!(consistency(Some("consistency=eventual")).is_err());
    }

    #[test]
    fn paging_parameters() {
        assert_eq!(paging(None).unwrap(), None);
        assert_eq!(paging(Some("consistency=local")).unwrap(), None);
        assert_eq!(paging(Some("limit=5")).unwrap(), Some((5, None)));
        assert_eq!(
            paging(Some("after=a%20b")).unwrap(),
            Some((100, Some("a b".into())))
        );
        for bad in ["limit=0", "limit=-1", "limit=x", "limit=10001"] {
            assert!(paging(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn if_match_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(if_match(&h).unwrap(), None);
        h.insert(header::IF_MATCH, HeaderValue::from_static("\"12\""));
        assert_eq!(if_match(&h).unwrap(), Some(12));
        h.insert(header::IF_MATCH, HeaderValue::from_static("W/\"7\""));
        assert_eq!(if_match(&h).unwrap(), Some(7));
        h.insert(header::IF_MATCH, HeaderValue::from_static("*"));
        assert!(if_match(&h).is_err());
    }

    #[test]
    fn user_id_rules() {
        assert!(valid_user_id(&serde_json::json!(1001)));
        for bad in [
            serde_json::json!(0),
            serde_json::json!(-1),
            serde_json::json!(1001.0),
            serde_json::json!("1001"),
            Value::Null,
        ] {
            assert!(!valid_user_id(&bad), "{bad}");
        }
    }
}
