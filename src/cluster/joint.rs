//! A membership change left in its joint configuration is finished by whichever node leads.
//!
//! A change goes through joint consensus: openraft commits the joint configuration (the old
//! and the new voters, a majority of each needed for every commit), then the new voters
//! alone, both in one `change_membership` call (`Cluster::commit`). A leader that loses
//! leadership between the two steps ends that call, and nothing in openraft makes its
//! successor go on: the cluster stays joint, and a node it could lose before the change it
//! can no longer lose (found in review). So the leader looks for a committed joint
//! configuration that stays so, and asks for its new voters alone.

use std::collections::BTreeSet;
use std::time::Duration;

use cookie_raft::NodeId;
use openraft::{ChangeMembers, LogId};

use super::Cluster;

/// How often the leader looks. A joint configuration must be seen twice, this far apart,
/// before it is finished: a change still under way proposes its second step at once.
const EVERY: Duration = Duration::from_millis(500);

/// Run until the node stops: on the leader, finish a joint configuration left behind.
pub async fn run(cluster: Cluster) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Option<LogId<NodeId>> = None;
    loop {
        tick.tick().await;
        let left = if cluster.is_leader() {
            left_joint(&cluster)
        } else {
            None
        };
        let Some((at, voters)) = left else {
            seen = None;
            continue;
        };
        if seen.replace(at) != Some(at) {
            continue;
        }
        // One change at a time: one the API is making goes on its own.
        let Ok(_one_at_a_time) = cluster.changes.try_lock() else {
            continue;
        };
        tracing::warn!(
            ?voters,
            "finishing a membership change left in its joint configuration"
        );
        let change = ChangeMembers::ReplaceAllVoters(voters);
        if let Err(e) = cluster.commit(change).await {
            tracing::warn!("the joint membership is not finished yet: {e}");
        }
    }
}

/// Where this node's membership is a joint configuration that it has applied (so committed),
/// and the voters of the configuration it was going to: the last of the joint ones.
fn left_joint(cluster: &Cluster) -> Option<(LogId<NodeId>, BTreeSet<NodeId>)> {
    let m = cluster.raft.metrics();
    let m = m.borrow();
    let stored = &m.membership_config;
    let joint = stored.membership().get_joint_config();
    let at = (*stored.log_id())?;
    let applied = m.last_applied.is_some_and(|a| a.index >= at.index);
    (joint.len() > 1 && applied).then(|| (at, joint.last().cloned().unwrap_or_default()))
}
