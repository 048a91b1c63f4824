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
//! over), within a byte bound checked before anything is written (and again on the
//! snapshot's uncompressed size when it is validated), into a file in the
//! snapshot directory (never into memory: a snapshot of a million records is a quarter of a
//! gigabyte), and the whole file is [validated](crate::sm::validate_snapshot_file), as a
//! stream, before `Raft::install_full_snapshot` is given it. A refused snapshot changes
//! nothing: its file is removed.
//!
//! Room on the disk is checked here too. openraft treats a failed install as a storage
//! failure, which stops the node (`cluster::failstop`), though a follower short of room for
//! a snapshot has nothing wrong with it but the room. So a snapshot is installed only when
//! the disk has the room its install takes ([`crate::sm::install_room`], checked once it is
//! validated); one that does not fit, as it arrives or once it is here, is refused
//! ([`Refused::Storage`]) and its file removed, which frees the room it took for the rest
//! of the node. Until the disk has the room it was found to need, that snapshot's chunks
//! are refused at once, without writing, so a sender that retries (openraft does, forever)
//! does not send it whole again and again. With room, its next try installs it: no restart.

use std::sync::Arc;

use openraft::error::{InstallSnapshotError, RaftError, SnapshotMismatch};
use openraft::raft::{InstallSnapshotRequest, InstallSnapshotResponse};
use openraft::{Snapshot, SnapshotSegmentId};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::sm::files::SnapshotFiles;
use crate::sm::SnapshotFile;
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
    /// Writing the received bytes failed (a full disk): the sender retries later.
    #[error("snapshot {id} could not be stored: {why}")]
    Storage { id: String, why: String },
    /// openraft stopped (shutdown or a fatal error elsewhere).
    #[error("raft: {0}")]
    Stopped(String),
}

/// The snapshot being received: its id, the file it goes to, and how much of it arrived.
struct Incoming {
    id: String,
    file: SnapshotFile,
    len: u64,
}

impl Incoming {
    /// Remove its file (a snapshot replaced by another, or refused).
    fn discard(self) {
        let path = self.file.path().to_owned();
        drop(self.file);
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!("removing {}: {e}", path.display());
        }
    }
}

/// A received snapshot's file that nothing has claimed yet: removed on drop.
struct Unclaimed(Option<std::path::PathBuf>);

impl Drop for Unclaimed {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            if let Err(e) = crate::durable::remove_if_present(&path) {
                tracing::warn!("removing {}: {e}", path.display());
            }
        }
    }
}

/// A snapshot refused for want of room, and the free bytes it was found to need.
struct Short {
    id: String,
    need: u64,
}

/// Receives snapshot chunks for one node.
pub struct SnapshotInbox {
    raft: Raft,
    max_bytes: u64,
    files: Arc<SnapshotFiles>,
    current: Mutex<Option<Incoming>>,
    short: std::sync::Mutex<Option<Short>>,
}

impl SnapshotInbox {
    /// Chunks for `raft`, at most `max_bytes` a snapshot, received into `files`' directory.
    pub fn new(raft: Raft, max_bytes: u64, files: Arc<SnapshotFiles>) -> Self {
        SnapshotInbox {
            raft,
            max_bytes,
            files,
            current: Mutex::new(None),
            short: std::sync::Mutex::new(None),
        }
    }

    /// Free bytes on the disk the snapshots (and the state) are on, or `None` where that
    /// cannot be read (then nothing is refused for room: the install finds out).
    fn free(&self) -> Option<u64> {
        crate::durable::free_bytes(self.files.dir())
    }

    /// Refuse snapshot `id` without writing while the disk lacks the room it was found
    /// to need; a different snapshot, or room, clears the memory of it.
    fn check_room(&self, id: &str) -> Result<(), Refused> {
        let mut short = self.short.lock().unwrap();
        let Some(s) = short.as_ref() else {
            return Ok(());
        };
        if s.id == id {
            if let Some(free) = self.free().filter(|&free| free < s.need) {
                return Err(Refused::Storage {
                    id: id.to_owned(),
                    why: format!(
                        "it needs {} bytes free on this node's disk, which has {free}",
                        s.need
                    ),
                });
            }
        }
        *short = None;
        Ok(())
    }

    /// Remember that snapshot `id` needs `need` bytes free.
    fn remember_short(&self, id: &str, need: u64) {
        *self.short.lock().unwrap() = Some(Short {
            id: id.to_owned(),
            need,
        });
    }

    /// Take one chunk; on the last, validate and install the snapshot, calling
    /// `installing` just before it is handed to Raft.
    pub async fn chunk(
        &self,
        req: InstallSnapshotRequest<TypeConfig>,
        installing: impl FnOnce(),
    ) -> ChunkResult {
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
        let storage = |e: std::io::Error| Refused::Storage {
            id: id.clone(),
            why: e.to_string(),
        };
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|c| c.id != id) {
            if let Some(old) = current.take() {
                old.discard();
            }
        }
        let have = current.as_ref().map_or(0, |c| c.len);
        if req.offset > have {
            return Ok(Err(RaftError::APIError(
                InstallSnapshotError::SnapshotMismatch(SnapshotMismatch {
                    expect: SnapshotSegmentId {
                        id: id.clone(),
                        offset: have,
                    },
                    got: SnapshotSegmentId {
                        id: id.clone(),
                        offset: req.offset,
                    },
                }),
            )));
        }
        if current.is_none() {
            self.check_room(&id)?;
            *current = Some(Incoming {
                id: id.clone(),
                file: self.files.incoming().map_err(storage)?,
                len: 0,
            });
        }
        let incoming = current.as_mut().expect("set above");
        // `offset <= have`: a repeated chunk overwrites what it sent before.
        let mut written = incoming.file.truncate_to(req.offset).await;
        if written.is_ok() {
            written = incoming.file.write_all(&req.data).await;
        }
        if req.done && written.is_ok() {
            written = incoming.file.flush().await;
        }
        if let Err(e) = written {
            // Most likely a full disk: what arrived is removed, to give its room back.
            if let Some(incoming) = current.take() {
                incoming.discard();
            }
            self.remember_short(&id, end);
            return Err(storage(e));
        }
        incoming.len = end;
        if !req.done {
            return Ok(Ok(InstallSnapshotResponse { vote: my_vote }));
        }
        let Some(incoming) = current.take() else {
            return Ok(Ok(InstallSnapshotResponse { vote: my_vote }));
        };
        drop(current);
        // Until the file is handed to Raft, a handler dropped half-way (the sender's
        // timeout, a closed connection) must not leave it behind: before, each such retry
        // of a large snapshot left a full copy on disk until the next restart.
        // The same guard removes it on the refusals below.
        let path = incoming.file.path().to_owned();
        let mut unclaimed = Unclaimed(Some(path.clone()));
        let (limit, checking) = (self.max_bytes, path.clone());
        let checked = tokio::task::spawn_blocking(move || {
            crate::sm::validate_snapshot_file(&checking, limit)
        })
        .await
        .map_err(|e| Refused::Stopped(e.to_string()))?;
        let room = match checked {
            Ok(room) => room,
            Err(e) => {
                return Err(Refused::Invalid {
                    id,
                    why: e.to_string(),
                });
            }
        };
        if let Some(free) = self.free().filter(|&free| free < room) {
            // Next time it must be received again, then installed.
            self.remember_short(&id, end.saturating_add(room));
            return Err(Refused::Storage {
                id,
                why: format!(
                    "installing it takes up to {room} bytes of this node's disk, \
                     which has {free} free"
                ),
            });
        }
        let snapshot = Snapshot {
            meta: req.meta,
            snapshot: Box::new(incoming.file),
        };
        // Raft renames it into place from here (a removal now could race that rename).
        unclaimed.0 = None;
        installing();
        let installed = self.raft.install_full_snapshot(req.vote, snapshot).await;
        // Installing renames the file into place; openraft skips a snapshot that is not
        // newer than what this node has, and then the file is still here, to remove.
        if let Err(e) = crate::durable::remove_if_present(&path) {
            tracing::warn!("removing {}: {e}", path.display());
        }
        match installed {
            Ok(resp) => Ok(Ok(resp.into())),
            Err(fatal) => Err(Refused::Stopped(fatal.to_string())),
        }
    }
}
