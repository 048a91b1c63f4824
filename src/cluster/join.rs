//! A new node joining a running cluster (`join` in the config, `cookie-crud --join ADDR`):
//! it asks a member, on that member's peer listener, to add it (as a learner, or a voter
//! with `join_as = "voter"`), and asks again until the membership it has applied names it.
//! The member forwards the request to the leader, which asks the new node who it is before
//! adding it (`membership`), then replicates to it (by snapshot when the log is purged).
//!
//! It asks at every start, even when the membership it has applied names it: that copy
//! may be stale (it may have been removed while it was down, or have left before
//! stopping, as an elastic Kubernetes pod does). For a member with the same addresses the
//! leader answers at once and changes nothing.

use std::time::Duration;

use cookie_raft::CookieNode;

use super::membership::{Change, ChangeError, CATCH_UP};
use super::Cluster;
use crate::config::{Config, JoinAs};

/// Pause between two requests that did not add this node.
const RETRY: Duration = Duration::from_secs(1);

pub async fn run(cluster: Cluster, cfg: Config) {
    let Some(target) = cfg.join.clone() else {
        return;
    };
    let voter = cfg.join_as == JoinAs::Voter;
    let change = Change::Add {
        id: cfg.node_id,
        node: CookieNode::new(cfg.advertise(), cfg.advertise_peer(), cfg.name()),
        voter,
    };
    let mut round = 0u64;
    loop {
        match cluster
            .peers
            .forward_change(&target, &change, CATCH_UP + Duration::from_secs(10))
            .await
        {
            Ok(m) => {
                tracing::info!(voters = ?m.voters, learners = ?m.learners, "joined the cluster through {target}");
                return;
            }
            // An operator must act (the id is taken by another node, or the request is
            // wrong): say so now and then, and keep asking.
            Err(e @ (ChangeError::Conflict(_) | ChangeError::Invalid(_))) => {
                if round.is_multiple_of(10) {
                    tracing::error!("cannot join through {target}: {e}");
                }
            }
            Err(e) => {
                if round.is_multiple_of(10) {
                    tracing::info!("joining through {target}: {e}; asking again");
                }
            }
        }
        round += 1;
        tokio::time::sleep(RETRY).await;
    }
}
