//! Checks at start that the data directory and the config describe the same member.
//!
//! Raft knows a member by its id and dials it at the addresses the membership holds; the
//! config only says what this process is. Where the two disagree the node used to start and
//! look healthy while the cluster could not work with it (found in review):
//! - a data directory registered to another node id: the node ran as a learner no one
//!   replicated to, and answered every write 503 for ever;
//! - a member restarted with other addresses: the others could not reach it, it heard no
//!   leader, campaigned, won, and then every write forwarded to it went to its old address
//!   and failed, the whole cluster's.
//!
//! A member's addresses cannot change in place (the membership API adds and removes); the
//! refusal says how to move a node instead.

use cookie_raft::identity::{hex, Registry};
use cookie_raft::{CookieNode, NodeId};

/// The data's incarnation must not be registered to another node id.
pub fn check_registry(me: NodeId, own: u64, registry: &Registry) -> Result<(), String> {
    let owner = registry
        .members
        .iter()
        .find(|&(&id, &incarnation)| incarnation == own && id != me);
    match owner {
        None => Ok(()),
        Some((&id, _)) => Err(format!(
            "this data directory holds node {id}'s data (its incarnation {} is registered to \
             node {id}{}), but node_id is {me}: start it with node_id = {id}, or give node \
             {me} a data directory of its own",
            hex(own),
            registry
                .cluster
                .map(|c| format!(" in cluster {}", hex(c)))
                .unwrap_or_default(),
        )),
    }
}

/// What the config says this node is: its id, its client and peer addresses, and whether
/// it names them itself (DNS discovery finds members by the addresses it resolves, so
/// there the config names none).
pub struct Configured<'a> {
    pub id: NodeId,
    pub addr: &'a str,
    pub peer_addr: &'a str,
    pub names_addresses: bool,
}

/// The membership's entry for this node (when it is a member, of `members` in all) must
/// hold the configured addresses. A lone member is only warned: nothing dials it yet, and
/// a single node moved to another port should start.
pub fn check_addresses(
    me: &Configured,
    stored: Option<&CookieNode>,
    members: usize,
) -> Result<Option<String>, String> {
    let Some(node) = stored else {
        return Ok(None);
    };
    if !me.names_addresses {
        return Ok(None);
    }
    // Port 0 is "any free port": a test node's, known only once bound.
    let differs = |stored: &str, configured: &str| {
        !stored.is_empty() && !configured.ends_with(":0") && stored != configured
    };
    if !differs(&node.addr, me.addr) && !differs(&node.peer_addr, me.peer_addr) {
        return Ok(None);
    }
    let why = format!(
        "the cluster's membership has node {id} at {} (peers: {}), the config at {} (peers: \
         {}): a member's addresses cannot change in place, the others dial the ones in the \
         membership",
        node.addr,
        node.peer_addr,
        me.addr,
        me.peer_addr,
        id = me.id,
    );
    if members <= 1 {
        return Ok(Some(format!(
            "{why}; as the only member it starts, but a node that joins it will be told the \
             old addresses"
        )));
    }
    Err(format!(
        "{why}. Put the old addresses back in the config; or, to move the node, remove it \
         (DELETE /cluster/members/{id}), empty its data directory and start it at the new \
         addresses with --join (README, Operations: membership)",
        id = me.id,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(members: &[(NodeId, u64)]) -> Registry {
        Registry {
            cluster: Some(0xc1),
            members: members.iter().copied().collect(),
        }
    }

    #[test]
    fn data_registered_to_another_id_is_refused() {
        let reg = registry(&[(1, 0x11), (2, 0x22)]);
        assert_eq!(check_registry(1, 0x11, &reg), Ok(()));
        // Not registered yet (a new node joining), or a registry not yet applied.
        assert_eq!(check_registry(3, 0x33, &reg), Ok(()));
        assert_eq!(check_registry(2, 0x22, &Registry::default()), Ok(()));
        let err = check_registry(2, 0x11, &reg).unwrap_err();
        assert!(err.contains("holds node 1's data"), "{err}");
        assert!(err.contains("node_id is 2"), "{err}");
        assert!(err.contains("cluster 00000000000000c1"), "{err}");
    }

    #[test]
    fn a_member_at_other_addresses_is_refused_and_a_lone_one_warned() {
        let node = CookieNode::new("127.0.0.1:8081", "127.0.0.1:9081", "node1");
        let me = |addr: &'static str, peer: &'static str| Configured {
            id: 1,
            addr,
            peer_addr: peer,
            names_addresses: true,
        };
        let same = me("127.0.0.1:8081", "127.0.0.1:9081");
        assert_eq!(check_addresses(&same, Some(&node), 3), Ok(None));
        // Not a member (yet): nothing to compare.
        let moved = me("127.0.0.1:8081", "127.0.0.1:9999");
        assert_eq!(check_addresses(&moved, None, 3), Ok(None));
        let err = check_addresses(&moved, Some(&node), 3).unwrap_err();
        assert!(
            err.contains("127.0.0.1:9081") && err.contains("127.0.0.1:9999"),
            "{err}"
        );
        assert!(err.contains("DELETE /cluster/members/1"), "{err}");
        let err = check_addresses(&me("127.0.0.1:7081", "127.0.0.1:9081"), Some(&node), 2);
        assert!(err.is_err());
        // A lone member starts, warned.
        let warned = check_addresses(&moved, Some(&node), 1).unwrap();
        assert!(warned.is_some_and(|w| w.contains("only member")));
        // Port 0, an empty stored peer address (a membership older than peer listeners) and
        // DNS discovery compare nothing.
        assert_eq!(
            check_addresses(&me("127.0.0.1:0", "127.0.0.1:0"), Some(&node), 3),
            Ok(None)
        );
        let old = CookieNode::new("127.0.0.1:8081", "", "node1");
        assert_eq!(check_addresses(&moved, Some(&old), 3), Ok(None));
        let dns = Configured {
            names_addresses: false,
            ..me("0.0.0.0:8081", "0.0.0.0:9081")
        };
        assert_eq!(check_addresses(&dns, Some(&node), 3), Ok(None));
    }
}
