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
//!
//! A node with no data first asks the target for the cluster's registry of identities
//! (`GET /cluster` on its peer listener): until it has one, it believes no claim that its
//! data was lost (`cookie_raft::identity::Identity::await_registry`).
//!
//! A node whose data belongs to a cluster compares that cluster's id with the target's
//! before it asks, and stops if they differ: such a node used to go on leading its own old
//! cluster, taking writes the cluster it was told to join never saw, while the target
//! refused each request to add it (found in review).

use std::time::Duration;

use cookie_raft::identity::{hex, parse_hex, Registry};
use cookie_raft::CookieNode;

use super::membership::{Change, ChangeError, CATCH_UP};
use super::proto::CLUSTER_PATH;
use super::Cluster;
use crate::config::{Config, JoinAs};

/// Pause between two requests that did not add this node.
const RETRY: Duration = Duration::from_secs(1);
/// How long the join target may take to show its registry.
const ASK_REGISTRY: Duration = Duration::from_secs(2);

/// Ask until this node is a member. Returns why when it must not join at all (its data
/// belongs to another cluster): the node then stops.
pub async fn run(cluster: Cluster, cfg: Config) -> Option<String> {
    let target = cfg.join.clone()?;
    let voter = cfg.join_as == JoinAs::Voter;
    let change = Change::Add {
        id: cfg.node_id,
        node: CookieNode::new(cfg.advertise(), cfg.advertise_peer(), cfg.name()),
        voter,
    };
    let mut round = 0u64;
    let mut joined = false;
    let mut same_cluster = cluster.identity.registry().cluster.is_none();
    loop {
        if cluster.identity.awaits_registry() {
            ask_registry(&cluster, &target, round).await;
        }
        if !same_cluster {
            match compare_clusters(&cluster, &target).await {
                Ok(true) => same_cluster = true,
                Ok(false) => {}
                Err(why) => return Some(why),
            }
        }
        if joined {
            if !cluster.identity.awaits_registry() {
                return None;
            }
            round += 1;
            tokio::time::sleep(RETRY).await;
            continue;
        }
        match cluster
            .peers
            .forward_change(&target, &change, CATCH_UP + Duration::from_secs(10))
            .await
        {
            Ok(m) => {
                tracing::info!(voters = ?m.voters, learners = ?m.learners, "joined the cluster through {target}");
                joined = true;
                continue;
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

/// Whether the join target is in the cluster this node's data belongs to: `Ok(false)` while
/// that cannot be told (no answer, or no cluster id there yet), an error when it is another.
async fn compare_clusters(cluster: &Cluster, target: &str) -> Result<bool, String> {
    let Some(own) = cluster.identity.registry().cluster else {
        return Ok(true);
    };
    let Ok(v) = cluster
        .peers
        .get_json(target, CLUSTER_PATH, ASK_REGISTRY)
        .await
    else {
        return Ok(false);
    };
    match registry_of(&v).and_then(|r| r.cluster) {
        None => Ok(false),
        Some(theirs) if theirs == own => Ok(true),
        Some(theirs) => Err(format!(
            "join: this node's data belongs to cluster {}, and {target} is in cluster {}: a \
             node joins with empty data. Empty its data directory to join {target}, or start \
             it without --join (and no join in its config) to run as a member of its own \
             cluster",
            hex(own),
            hex(theirs)
        )),
    }
}

/// Ask the join target for the cluster's registry, and hold it until Raft brings one. A
/// target that has none yet (no cluster id) is asked again next round.
async fn ask_registry(cluster: &Cluster, target: &str, round: u64) {
    match cluster
        .peers
        .get_json(target, CLUSTER_PATH, ASK_REGISTRY)
        .await
    {
        Ok(v) => match registry_of(&v) {
            Some(registry) => {
                tracing::info!(
                    members = registry.members.len(),
                    "the cluster's registry, from {target}"
                );
                cluster.identity.vouch(registry);
            }
            None if round.is_multiple_of(10) => {
                tracing::info!("{target} has no cluster registry yet; asking again")
            }
            None => {}
        },
        Err(e) if round.is_multiple_of(10) => {
            tracing::info!("asking {target} for the cluster's registry: {e}; asking again")
        }
        Err(_) => {}
    }
}

/// The registry a member's `/cluster` shows: its cluster id and the incarnation of each
/// member it has registered. None without a cluster id.
fn registry_of(v: &serde_json::Value) -> Option<Registry> {
    let cluster = v["cluster_id"].as_str().and_then(parse_hex)?;
    let members = v["members"]
        .as_array()?
        .iter()
        .filter_map(|m| {
            let id = m["id"].as_u64()?;
            Some((id, m["incarnation"].as_str().and_then(parse_hex)?))
        })
        .collect();
    Some(Registry {
        cluster: Some(cluster),
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_registry_is_read_from_a_members_cluster_view() {
        let v = json!({
            "cluster_id": "0000000000000007",
            "members": [
                {"id": 1, "incarnation": "0000000000000011"},
                {"id": 2, "incarnation": null},
                {"id": 4, "incarnation": "00000000000000ff"},
            ],
        });
        let r = registry_of(&v).unwrap();
        assert_eq!(r.cluster, Some(7));
        assert_eq!(
            r.members.into_iter().collect::<Vec<_>>(),
            [(1, 0x11), (4, 0xff)]
        );
        // A member of no cluster yet shows no registry.
        assert_eq!(
            registry_of(&json!({"cluster_id": null, "members": []})),
            None
        );
        assert_eq!(registry_of(&json!({"cluster_id": "zz"})), None);
    }
}
