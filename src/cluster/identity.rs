//! The leader registers every member's incarnation in the replicated registry
//! (`cookie_raft::identity`), so that a node whose data was lost cannot come back as the
//! member it was.
//!
//! Each member's incarnation reaches the leader in the header of every answer to a Raft
//! RPC; the registrar, on whichever node leads, proposes a [`Command::Register`] for the
//! members the registry lacks (and a cluster id when there is none yet). The first
//! registration of a member wins: from then on every node names that incarnation in its
//! requests to it, and a node with other data is refused, and stops. A member that leaves
//! the membership is forgotten, so a replacement can register under the same id.

use std::time::Duration;

use cookie_raft::identity::{hex, random_id};
use cookie_raft::{Command, Request};

use super::Cluster;

/// How often the registrar looks for unregistered members.
const EVERY: Duration = Duration::from_millis(250);
/// How long one registration may take before the next look.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The registration this node should propose now, if it leads and the registry lacks the
/// cluster id or a member whose incarnation is known.
fn pending(cluster: &Cluster) -> Option<Command> {
    let identity = &cluster.identity;
    let registry = identity.registry();
    let members: Vec<(u64, u64)> = {
        let m = cluster.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| !registry.members.contains_key(id))
            .filter_map(|id| identity.observed(id).map(|inc| (id, inc)))
            .collect()
    };
    if members.is_empty() && registry.cluster.is_some() {
        return None;
    }
    let cluster_id = match registry.cluster {
        Some(c) => c,
        None => random_id().ok()?,
    };
    Some(Command::Register {
        cluster: cluster_id,
        members,
    })
}

/// Run until the node stops: on the leader, register what is missing.
pub async fn run(cluster: Cluster) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !cluster.is_leader() {
            continue;
        }
        cluster.identity.settle();
        let Some(cmd) = pending(&cluster) else {
            continue;
        };
        let what = match &cmd {
            Command::Register { cluster, members } => format!(
                "cluster {} members {:?}",
                hex(*cluster),
                members
                    .iter()
                    .map(|(id, inc)| (id, hex(*inc)))
                    .collect::<Vec<_>>()
            ),
            _ => String::new(),
        };
        let proposed = tokio::time::timeout(
            PROPOSE_TIMEOUT,
            cluster.raft.client_write(Request { cmds: vec![cmd] }),
        )
        .await;
        match proposed {
            Ok(Ok(_)) => tracing::info!("registered {what}"),
            Ok(Err(e)) => tracing::debug!("registration not committed: {e}"),
            Err(_) => tracing::debug!("registration timed out"),
        }
    }
}
