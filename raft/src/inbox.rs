//! Inbound snapshots, assembled and checked here before openraft is given them.
//!
//! openraft's own receiver (`Raft::install_snapshot`) writes each chunk at the offset the
//! sender names into the snapshot buffer, and installs the result when the last chunk
//! arrives. Two things in that path are fatal to a node (issue 13): a chunk at offset
//! `1 << 40` makes the in-memory buffer grow to that size (the process aborts or is
//! OOM-killed), and a final chunk whose data does not decode makes the state machine's
//! install fail, which openraft treats as a storage failure: its Raft stops for good.
//!
//! So chunks are taken here instead: in order (a chunk may repeat the last one, as a sender
//! retrying does; a gap is a [`SnapshotMismatch`], which makes openraft's sender start
//! over), within a byte bound checked before anything is allocated, and the whole snapshot
//! is [validated](crate::sm::validate_snapshot) before `Raft::install_full_snapshot` sees it.
//! A refused snapshot changes nothing.

use std::io::Cursor;

use openraft::error::{InstallSnapshotError, RaftError, SnapshotMismatch};
use openraft::raft::{InstallSnapshotRequest, InstallSnapshotResponse};
use openraft::{Snapshot, SnapshotSegmentId};
use tokio::sync::Mutex;

use crate::types::{NodeId, TypeConfig};
use crate::Raft;

/// What a chunk gets: openraft's answer (for the sender's protocol), or a refusal.
pub type ChunkResult = Result<
    Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    Refused,
>;

/// Why a chunk was refused outright (the sender gets an error status, nothing changes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("snapshot larger than the limit of {max} bytes (a chunk ends at byte {end})")]
    TooLarge { max: u64, end: u64 },
    #[error("snapshot {id} is not installable: {why}")]
    Invalid { id: String, why: String },
    /// openraft stopped (shutdown or a fatal error elsewhere).
    #[error("raft: {0}")]
    Stopped(String),
}

/// The snapshot being received.
struct Incoming {
    id: String,
    data: Vec<u8>,
}

/// Receives snapshot chunks for one node.
pub struct SnapshotInbox {
    raft: Raft,
    max_bytes: u64,
    current: Mutex<Option<Incoming>>,
}

impl SnapshotInbox {
    pub fn new(raft: Raft, max_bytes: u64) -> Self {
        SnapshotInbox {
            raft,
            max_bytes,
            current: Mutex::new(None),
        }
    }

    /// Take one chunk; on the last, validate and install the snapshot.
    pub async fn chunk(&self, req: InstallSnapshotRequest<TypeConfig>) -> ChunkResult {
        let my_vote = self.raft.metrics().borrow().vote;
        // As openraft does: a sender with an older vote is told ours, and stops.
        if req.vote < my_vote {
            return Ok(Ok(InstallSnapshotResponse { vote: my_vote }));
        }
        let end = req.offset.saturating_add(req.data.len() as u64);
        if end > self.max_bytes {
            return Err(Refused::TooLarge {
                max: self.max_bytes,
                end,
            });
        }
        let id = req.meta.snapshot_id.clone();
        let mut current = self.current.lock().await;
        let same = current.as_ref().is_some_and(|c| c.id == id);
        if !same {
            *current = None;
        }
        let have = current.as_ref().map_or(0, |c| c.data.len() as u64);
        if req.offset > have {
            return Ok(Err(RaftError::APIError(
                InstallSnapshotError::SnapshotMismatch(SnapshotMismatch {
                    expect: SnapshotSegmentId {
                        id: id.clone(),
                        offset: have,
                    },
                    got: SnapshotSegmentId {
                        id,
                        offset: req.offset,
                    },
                }),
            )));
        }
        let incoming = current.get_or_insert_with(|| Incoming {
            id: id.clone(),
            data: Vec::new(),
        });
        // `offset <= have <= max_bytes` and `end <= max_bytes`: both fit in memory bounds.
        incoming.data.truncate(req.offset as usize);
        incoming.data.extend_from_slice(&req.data);
        if !req.done {
            return Ok(Ok(InstallSnapshotResponse { vote: my_vote }));
        }
        let Some(Incoming { data, .. }) = current.take() else {
            return Ok(Ok(InstallSnapshotResponse { vote: my_vote }));
        };
        drop(current);
        let data =
            tokio::task::spawn_blocking(move || crate::sm::validate_snapshot(&data).map(|()| data))
                .await
                .map_err(|e| Refused::Stopped(e.to_string()))?
                .map_err(|e| Refused::Invalid {
                    id: req.meta.snapshot_id.clone(),
                    why: e.to_string(),
                })?;
        let snapshot = Snapshot {
            meta: req.meta,
            snapshot: Box::new(Cursor::new(data)),
        };
        match self.raft.install_full_snapshot(req.vote, snapshot).await {
            Ok(resp) => Ok(Ok(resp.into())),
            Err(fatal) => Err(Refused::Stopped(fatal.to_string())),
        }
    }
}
