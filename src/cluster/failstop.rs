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

use cookie_raft::Raft;
use openraft::error::Fatal;
use tokio::sync::watch;

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
