//! `GET /admin/backup`: a consistent point-in-time backup, streamed (api.md section 9).
//!
//! The backup is written by `StoreReader::backup` from one redb read transaction on the
//! blocking pool, into a bounded channel that the response body drains: memory stays at a
//! few chunks whatever the store's size, writes go on meanwhile, and a client that stops
//! reading stops the backup (the writer's send fails). The reply's `Content-Length` is
//! known from the header, so a client can tell a cut-off download from a whole one (and
//! `cookie-crud restore` checks the checksum anyway).
//!
//! `?consistency=linearizable` (the default, as for reads) waits until this node has
//! applied everything committed when the request arrived; `local` backs up what this node
//! has applied now.

use std::io;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cookie_raft::chunks::{ChannelWriter, Chunk};
use cookie_raft::sm::backup::{BackupHeader, Origin};
use tokio::sync::{mpsc, oneshot};

use super::error::ApiError;
use super::params::{consistency, Consistency};
use super::state::Shared;
use crate::clock::unix_now_ms;

/// Bytes per chunk sent to the client, and chunks buffered between the writer and the
/// response.
const CHUNK: usize = 256 << 10;
const CHUNKS_BUFFERED: usize = 4;

/// Backups written at once; one more is answered 503 at once. Each holds a thread of the
/// blocking pool, a read transaction and its chunks until it is written: with no bound, a
/// few hundred requests that read nothing stalled every write for the read timeout and
/// grew the node by a gigabyte (found in review). A backup is an operator's act: two let
/// one be retried while another runs.
pub const CONCURRENT: usize = 2;

fn header_value(v: impl ToString) -> HeaderValue {
    HeaderValue::from_str(&v.to_string()).unwrap_or_else(|_| HeaderValue::from_static("?"))
}

/// Why a backup failed before its first byte.
struct Failed {
    /// For want of room on the disk (507), not a fault (500).
    no_room: bool,
    why: String,
}

pub async fn backup(
    State(state): State<Shared>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let permit = state
        .backups
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Busy("backups being written"))?;
    if consistency(query.as_deref())? == Consistency::Linearizable {
        state.reads.barrier(state.cfg.read_timeout()).await?;
    }
    let (tx, mut rx) = mpsc::channel::<Chunk>(CHUNKS_BUFFERED);
    let (header_tx, header_rx) = oneshot::channel::<Result<BackupHeader, Failed>>();
    let reader = state.reader.clone();
    let origin = Origin {
        node: state.cfg.name(),
        created_ms: unix_now_ms(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    tokio::task::spawn_blocking(move || {
        // Until the backup is written, or its client went away (a send fails).
        let _permit = permit;
        let mut header_tx = Some(header_tx);
        let mut sink = ChannelWriter::new(tx.clone(), CHUNK);
        let result = reader.backup(
            origin,
            &mut |h| {
                if let Some(t) = header_tx.take() {
                    let _ = t.send(Ok(h.clone()));
                }
            },
            &mut sink,
        );
        match result {
            Ok(h) => tracing::info!(
                index = h.index,
                records = h.records,
                bytes = h.body_bytes,
                "backup sent"
            ),
            Err(e) => {
                tracing::warn!("backup failed: {e}");
                match header_tx.take() {
                    Some(t) => {
                        let _ = t.send(Err(Failed {
                            no_room: cookie_raft::durable::no_room(&*e),
                            why: e.to_string(),
                        }));
                    }
                    // Mid-stream: the error ends the body, and the client sees it cut off.
                    None => {
                        let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
                    }
                }
            }
        }
    });
    let header = match header_rx.await {
        Ok(Ok(h)) => h,
        // The state machine's changes wait for room on the disk to reach sm.redb, which a
        // backup reads: nothing wrong with the node, try again once there is room.
        Ok(Err(Failed { no_room: true, why })) => {
            return Err(ApiError::InsufficientStorage(format!(
                "backup put off: {why}"
            )))
        }
        Ok(Err(Failed { why, .. })) => {
            return Err(ApiError::Internal(format!("backup failed: {why}")))
        }
        Err(_) => return Err(ApiError::Internal("backup failed".to_owned())),
    };
    let length = header
        .file_len()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    // A client that takes nothing (HTTP/2 with no window, where no socket write waits) is
    // let go after the body timeout, and with it the backup's thread and permit.
    let body = super::answer_stall::watch(
        Body::from_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx))),
        state.cfg.http_body_timeout(),
    );
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    h.insert(
        header::CONTENT_DISPOSITION,
        header_value(format!(
            "attachment; filename=\"cookie-crud-{}-{}.backup\"",
            state.cfg.name(),
            header.index
        )),
    );
    h.insert("x-backup-index", HeaderValue::from(header.index));
    h.insert("x-backup-records", HeaderValue::from(header.records));
    h.insert("x-backup-sha256", header_value(&header.sha256));
    Ok(resp)
}
