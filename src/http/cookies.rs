//! `/cookies`: the original CRUD contract, plus versions (`ETag`/`If-Match`) and read
//! consistency levels (`?consistency=linearizable|local`).
//!
//! A handler reads the request ([`super::params`]), has the command built and validated
//! where commands live (`cookie_raft::Command`), hands it to the write path or serves the
//! read after the read barrier, and maps the result to the contract's status.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cookie_raft::chunks::Chunk;
use cookie_raft::sm::ListScan;
use cookie_raft::{BoxError, CacheStatus, CmdResult, Command};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::error::{json_bytes, ApiError};
use super::observe::ReqId;
use super::params::{
    consistency, idempotency_key, if_match, paging, path_id, read_body, require_json_content_type,
    Consistency,
};
use super::state::Shared;
use crate::clock::{unix_now, unix_now_ms};

type ApiResult = Result<Response, ApiError>;

/// Chunks of a streamed list buffered between its scan and the response: with 256 KiB
/// chunks, about a megabyte per list in flight.
const LIST_CHUNKS_BUFFERED: usize = 4;

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are a valid header")
}

/// `X-Cache` and `X-Raft-Applied-Index` on every read reply.
fn read_headers(resp: &mut Response, cache: CacheStatus, applied: u64) {
    let h = resp.headers_mut();
    h.insert("x-cache", HeaderValue::from_static(cache.as_str()));
    h.insert("x-raft-applied-index", HeaderValue::from(applied));
}

fn read_reply(
    status: StatusCode,
    body: impl Into<Body>,
    cache: CacheStatus,
    applied: u64,
) -> Response {
    let mut resp = json_bytes(status, body);
    read_headers(&mut resp, cache, applied);
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

fn count(state: &Shared, operation: &str) {
    state
        .metrics
        .db_operations
        .with_label_values(&[operation])
        .inc();
}

/// The largest page served on the async worker that took the request; a larger one goes to
/// the blocking pool. A page costs about half a microsecond a record on the 2-core bench
/// machine, so this one holds a worker for some 50 µs, about what a point read that misses
/// the cache and a batch's apply hold it for.
const INLINE_PAGE: usize = 100;

/// Run a store scan on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BoxError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

/// `GET /cookies` (all of them, as the original), or one page with `?limit=&after=` or
/// `&cursor=`: `{"cookies":[...],"next_after":"<id>","next_cursor":"<token>"}`, the last two
/// present while more may follow.
pub async fn list(State(state): State<Shared>, RawQuery(q): RawQuery) -> ApiResult {
    let level = consistency(q.as_deref())?;
    let page = paging(q.as_deref())?;
    read_barrier(&state, level).await?;
    count(&state, "list");
    // Long scans run on the blocking pool: an unpaged list of a million records takes over
    // a second, and on an async worker it would stall this node's Raft traffic meanwhile (all
    // of it, where the runtime has a single worker, as in a one-CPU container). A short page
    // is served where it is asked for, as a point read is: the hop to the pool and back cost
    // more than its scan (docs/benchmarks.md, "Reads beside writes, churn and pages").
    let reader = state.reader.clone();
    if let Some((limit, from)) = page {
        // Room for the page before it is built, kept until it is sent (`page_room`).
        let room = state.page_room.take(state.cfg.read_timeout()).await?;
        let found = if limit <= INLINE_PAGE {
            reader
                .page(limit, from.start())
                .map_err(ApiError::internal)?
        } else {
            blocking(move || reader.page(limit, from.start())).await?
        };
        let Some(found) = found else {
            return Err(ApiError::bad_request(
                "after must be the id of an existing cookie (a page's next_cursor goes on past a deleted one)",
            ));
        };
        return Ok(read_reply(
            StatusCode::OK,
            super::page_room::hold(found.body, room, state.cfg.http_body_timeout()),
            CacheStatus::Miss,
            found.applied,
        ));
    }
    // A small list is cached whole (it fits in one chunk): a hit costs no permit.
    // The index first: the state read after it holds every write up to it at least, so the
    // header never names a write the reply lacks (the same below for one record).
    let applied = state.reader.applied_index();
    if let Some(body) = state.reader.cached_list() {
        return Ok(read_reply(StatusCode::OK, body, CacheStatus::Hit, applied));
    }
    // Every record in one reply: a few at a time, each holding a scan, a read transaction and
    // a few chunks until its reply is sent; the others wait their turn, up to the read timeout.
    let permit = tokio::time::timeout(
        state.cfg.read_timeout(),
        state.full_lists.clone().acquire_owned(),
    )
    .await
    .map_err(|_| ApiError::Busy("unpaged GET /cookies"))?
    .map_err(ApiError::internal)?;
    let scan = blocking(move || reader.list_scan()).await?;
    let applied = scan.applied_index();
    let body = super::answer_stall::watch(stream_list(scan, permit), state.cfg.http_body_timeout());
    Ok(read_reply(StatusCode::OK, body, CacheStatus::Miss, applied))
}

/// The whole list as a streamed body: scanned on the blocking pool into a bounded channel
/// that the body drains, so a node holds a few chunks of it, never all of it (a million
/// records are some 200 MB). `permit` goes with the body: it is held until the reply is
/// sent, or dropped with the body when the client goes away (which stops the scan).
fn stream_list(scan: ListScan, permit: OwnedSemaphorePermit) -> Body {
    let (tx, mut rx) = mpsc::channel::<Chunk>(LIST_CHUNKS_BUFFERED);
    tokio::task::spawn_blocking(move || scan.send(tx));
    Body::from_stream(futures::stream::poll_fn(move |cx| {
        let _held = &permit;
        rx.poll_recv(cx)
    }))
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
    count(&state, "get");
    let applied = state.reader.applied_index();
    let (found, cache) = state.reader.get(&id).map_err(ApiError::internal)?;
    match found {
        Some(rec) => {
            let mut resp = read_reply(StatusCode::OK, rec.json, cache, applied);
            resp.headers_mut().insert(header::ETAG, etag(rec.version));
            Ok(resp)
        }
        None => {
            let mut resp = ApiError::NotFound.into_response();
            read_headers(&mut resp, cache, applied);
            Ok(resp)
        }
    }
}

/// `POST /cookies/{anything}`: the path id is ignored, as in the original.
pub async fn create_with_path(
    state: State<Shared>,
    rid: ReqId,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    create(state, rid, headers, body).await
}

/// `POST /cookies`
pub async fn create(
    State(state): State<Shared>,
    ReqId(rid): ReqId,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    require_json_content_type(&headers)?;
    let key = idempotency_key(&headers)?;
    let bytes = read_body(body, state.cfg.max_body_bytes, &state.body_room).await?;
    let cmd = Command::create(&bytes, unix_now())?;
    let print = Fingerprint {
        method: "POST",
        id: "",
        body: &bytes,
        if_match: None,
    };
    let cmd = under_key(&state, key, print, cmd);
    count(&state, "create");
    write(&state, &rid, cmd, |res| match res {
        CmdResult::Stored { object, version } => {
            Ok(stored_reply(StatusCode::CREATED, object, version))
        }
        CmdResult::AlreadyExists => Err(ApiError::Conflict),
        CmdResult::TooLarge => Err(ApiError::PayloadTooLarge),
        other => Err(unexpected(other)),
    })
    .await
}

/// `PUT /cookies/{cookie}`: merge, atomically where the write is applied.
// An axum handler's arguments are its extractors, in the order they run: not a constructor.
#[allow(clippy::too_many_arguments)]
pub async fn update(
    State(state): State<Shared>,
    ReqId(rid): ReqId,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let id = path_id(path)?;
    let expected = if_match(&headers)?;
    let key = idempotency_key(&headers)?;
    let bytes = read_body(body, state.cfg.max_body_bytes, &state.body_room).await?;
    let print = Fingerprint {
        method: "PUT",
        id: &id,
        body: &bytes,
        if_match: expected,
    };
    let cmd = Command::update(id.clone(), &bytes, unix_now(), expected)?;
    let cmd = under_key(&state, key, print, cmd);
    count(&state, "update");
    write(&state, &rid, cmd, |res| match res {
        CmdResult::Stored { object, version } => Ok(stored_reply(StatusCode::OK, object, version)),
        CmdResult::NotFound => Err(ApiError::NotFound),
        CmdResult::AlreadyExists => Err(ApiError::Conflict),
        CmdResult::TooLarge => Err(ApiError::PayloadTooLarge),
        CmdResult::PreconditionFailed => Err(ApiError::PreconditionFailed),
        CmdResult::Invalid(msg) => Err(ApiError::BadRequest(msg)),
        other => Err(unexpected(other)),
    })
    .await
}

/// `DELETE /cookies/{cookie}`: idempotent unless `If-Match` is given.
pub async fn delete(
    State(state): State<Shared>,
    ReqId(rid): ReqId,
    path: Result<Path<String>, PathRejection>,
    req: axum::extract::Request,
) -> ApiResult {
    let id = path_id(path)?;
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    // Its body means nothing, but is held to the limit all the same (api.md section 10): a
    // DELETE with a body of 1 MiB and more was applied. Read (and over the limit drained,
    // as a create's) so that the connection can carry the next request.
    let body = read_body(body, state.cfg.max_body_bytes, &state.body_room).await?;
    let expected = if_match(&headers)?;
    let key = idempotency_key(&headers)?;
    // The body too, as api.md section 11 lists it: a key reused with another body is
    // another request (422), even where the body changes nothing (found in review: it was
    // replayed). An empty body prints as before.
    let print = Fingerprint {
        method: "DELETE",
        id: &id,
        body: &body,
        if_match: expected,
    };
    let cmd = under_key(&state, key, print, Command::delete(id.clone(), expected));
    count(&state, "delete");
    write(&state, &rid, cmd, |res| match res {
        CmdResult::Deleted => Ok(json_bytes(
            StatusCode::OK,
            r#"{"message":"Cookie deleted successfully"}"#,
        )),
        CmdResult::PreconditionFailed => Err(ApiError::PreconditionFailed),
        other => Err(unexpected(other)),
    })
    .await
}

/// What an `Idempotency-Key` is bound to: the request's method, path id, body and
/// `If-Match` (api.md section 11).
struct Fingerprint<'a> {
    method: &'a str,
    id: &'a str,
    body: &'a [u8],
    if_match: Option<u64>,
}

impl Fingerprint<'_> {
    /// SHA-256 over the fields, each length-prefixed so no two requests run together.
    fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [self.method.as_bytes(), self.id.as_bytes(), self.body] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        match self.if_match {
            Some(v) => {
                h.update([1u8]);
                h.update(v.to_be_bytes());
            }
            None => h.update([0u8]),
        }
        h.finalize().into()
    }
}

/// `cmd` under the request's `Idempotency-Key`, when it has one: applied at most once for
/// the key, and a retry gets the first answer.
fn under_key(state: &Shared, key: Option<String>, print: Fingerprint<'_>, cmd: Command) -> Command {
    match key {
        None => cmd,
        Some(key) => {
            let retention_ms = state.cfg.idempotency_retention_secs.saturating_mul(1000);
            Command::keyed(key, print.digest(), (unix_now_ms(), retention_ms), cmd)
        }
    }
}

/// Run a write on the leader and answer it with `answer`. A replay of a keyed write is
/// answered as the first time (same status, body and `ETag`) and marked
/// `Idempotency-Replayed: true`; a key reused with another request is 422.
async fn write(
    state: &Shared,
    request_id: &str,
    cmd: Command,
    answer: impl FnOnce(CmdResult) -> ApiResult,
) -> ApiResult {
    let first = match state.writer.write(cmd, request_id).await? {
        CmdResult::Replayed(first) => *first,
        CmdResult::KeyReused => return Err(ApiError::KeyReused),
        res => return answer(res),
    };
    let mut resp = answer(first).unwrap_or_else(|e| e.into_response());
    resp.headers_mut()
        .insert("idempotency-replayed", HeaderValue::from_static("true"));
    Ok(resp)
}

fn unexpected(r: CmdResult) -> ApiError {
    ApiError::Internal(format!("unexpected result from the state machine: {r:?}"))
}
