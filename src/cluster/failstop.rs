//! A node whose storage fails stops.
//!
//! openraft stops a node's Raft core for good on a storage error (a log append or a vote
//! that could not be written: a full disk, a failing device), and redb refuses every write
//! after one that failed on I/O until the file is opened again. Neither heals while the
//! process runs, so a node that stayed up would answer `/health` as ever, time out every
//! write it was sent and never catch up. It stops instead, with a failure status, so that
//! its supervisor (Kubernetes, systemd, an operator) sees it and starts it again once the
//! fault is gone; at that start the log's torn tail is cut and the state machine's lost
//! writes are applied again from the log, which holds every acknowledged entry. The rest of
//! the cluster carries on without it meanwhile, as without any stopped node.

use std::path::PathBuf;
use std::time::Duration;

use cookie_raft::durable::{file_id, FileId};
use cookie_raft::Raft;
use openraft::error::Fatal;
use tokio::sync::watch;

/// How often [`OwnDirs::replaced`] looks at the node's directories.
const DIRS_LOOK_EVERY: Duration = Duration::from_secs(1);

/// Wait until the Raft core's task has ended while this runs: it panicked (openraft's
/// `unwrap`s on a state it cannot handle). Its metrics channel then closes without an error
/// said first. The node went on answering `/health` 200, a follower for ever, and timed out
/// every write (found in review). Like [`storage_failed`], drop this before shutting Raft
/// down on purpose.
pub async fn core_ended(raft: Raft) -> String {
    core_ended_on(raft.server_metrics(), raft.metrics()).await
}

type Metrics = openraft::RaftMetrics<cookie_raft::NodeId, cookie_raft::CookieNode>;

/// Waits on the server metrics, which change only with the vote, role, leader or
/// membership: the full metrics are sent at every turn of openraft's loop and would wake
/// this task thousands of times a second under load (see `metrics::count_elections`). Both
/// close together, with the core.
async fn core_ended_on<S>(
    mut server: watch::Receiver<S>,
    full: watch::Receiver<Metrics>,
) -> String {
    while server.changed().await.is_ok() {}
    if full.borrow().running_state.is_err() {
        // It said why: `storage_failed` tells that.
        std::future::pending::<()>().await;
    }
    "the Raft core's task ended without a reason (a panic: see the log above)".to_owned()
}

/// Wait until the Raft core has stopped on an error, or a write of the state machine's
/// changes has failed; return why. Never returns while both are healthy. A core stopped on
/// purpose (`Raft::shutdown`) is not a failure; drop this before shutting Raft down.
pub async fn storage_failed(raft: Raft, mut sm_failed: watch::Receiver<Option<String>>) -> String {
    let mut metrics = raft.metrics();
    let core = async {
        loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state {
                if !matches!(fatal, Fatal::Stopped) {
                    return format!("the Raft core stopped: {fatal}");
                }
            }
            if metrics.changed().await.is_err() {
                // The core's task ended without saying why (it reports every error it
                // stops on first), so it was shut down: not this watch's business.
                std::future::pending::<()>().await;
            }
        }
    };
    let state = async {
        let why = sm_failed
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|why| why.clone());
        match why {
            Some(why) => why,
            // The state machine was dropped: Raft is shutting down.
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        why = core => why,
        why = state => why,
    }
}

/// The directories a node's files are in (`data_dir`, and the WAL's where it is apart), and
/// the files in them that are never replaced while it runs (`log.redb`, the WAL's marker),
/// as they were when it opened its files. The files matter where a directory is a mount
/// point: `rm -rf` empties it but cannot remove it, so the directory stays the same one.
pub struct OwnDirs(Vec<(PathBuf, FileId)>);

impl OwnDirs {
    /// Record what each of `paths` that is there names now.
    pub fn record(paths: impl IntoIterator<Item = PathBuf>) -> std::io::Result<OwnDirs> {
        let mut seen = Vec::new();
        for path in paths {
            match file_id(&path) {
                Ok(id) => seen.push((path, id)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(OwnDirs(seen))
    }

    /// Why one of the paths no longer names what was recorded, if one does not.
    fn look(&self) -> Option<String> {
        self.0.iter().find_map(|(dir, was)| match file_id(dir) {
            Ok(id) if id == *was => None,
            Ok(_) => Some(format!("{} was replaced by another", dir.display())),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                Some(format!("{} was removed: {e}", dir.display()))
            }
            Err(e) => {
                // (Permissions changed, say: the files the node holds open still work.)
                tracing::warn!("looking at {}: {e}", dir.display());
                None
            }
        })
    }

    /// Wait until one of the directories was removed or replaced while the node ran; return
    /// why. Never returns while they stay. The node's files are open: it would go on writing
    /// into files no name reaches any more, and their fsyncs succeed, so everything it
    /// acknowledged from then on is gone at its next start (found in review: after `rm -rf`
    /// of a one-node cluster's data directory, 3,000 writes were acknowledged, then lost).
    pub async fn replaced(self) -> String {
        let mut every = tokio::time::interval(DIRS_LOOK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Some(why) = self.look() {
                return why;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_core_gone_without_a_word_is_a_failure_and_one_that_said_why_is_not_this_ones() {
        let (server_tx, server) = watch::channel(());
        let (tx, rx) = watch::channel(Metrics::new_initial(1));
        let ended = tokio::spawn(core_ended_on(server, rx));
        tokio::task::yield_now().await;
        assert!(!ended.is_finished());
        drop((server_tx, tx));
        let why = tokio::time::timeout(Duration::from_secs(5), ended)
            .await
            .expect("seen")
            .unwrap();
        assert!(why.contains("without a reason"), "{why}");

        let (server_tx, server) = watch::channel(());
        let (tx, rx) = watch::channel(Metrics::new_initial(1));
        tx.send_modify(|m| {
            m.running_state = Err(Fatal::Panicked);
        });
        drop((server_tx, tx));
        let left =
            tokio::time::timeout(Duration::from_millis(100), core_ended_on(server, rx)).await;
        assert!(left.is_err(), "storage_failed tells an error the core said");
    }

    #[test]
    fn a_removed_or_replaced_directory_is_seen() {
        let root = tempfile::tempdir().unwrap();
        let (data, wal) = (root.path().join("data"), root.path().join("wal"));
        std::fs::create_dir(&data).unwrap();
        std::fs::create_dir(&wal).unwrap();
        let dirs = OwnDirs::record([data.clone(), wal.clone()]).unwrap();
        assert_eq!(dirs.look(), None);
        // Replaced by another of the same name.
        std::fs::rename(&wal, root.path().join("old-wal")).unwrap();
        std::fs::create_dir(&wal).unwrap();
        let why = dirs.look().unwrap();
        assert!(why.contains("replaced"), "{why}");
        // Removed.
        let dirs = OwnDirs::record([data.clone()]).unwrap();
        std::fs::remove_dir_all(&data).unwrap();
        let why = dirs.look().unwrap();
        assert!(why.contains("removed"), "{why}");
        // A file inside a directory that stays (a mount point emptied by `rm -rf`); what
        // is not there at the start is not looked at.
        let meta = wal.join("log.redb");
        std::fs::write(&meta, b"x").unwrap();
        let dirs = OwnDirs::record([wal.clone(), meta.clone(), wal.join("none")]).unwrap();
        assert_eq!(dirs.look(), None);
        std::fs::remove_file(&meta).unwrap();
        let why = dirs.look().unwrap();
        assert!(why.contains("log.redb was removed"), "{why}");
    }
}
