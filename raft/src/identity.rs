//! Who a node's data is, so that a node whose data was lost cannot come back as the member
//! it was (issue 12, hole 9).
//!
//! A Raft member's safety rests on what it remembers: its vote and the entries it
//! acknowledged. A node whose disk (or PVC) was lost restarts empty under the same id; if the
//! others took it for the member they knew, it could grant a vote to a candidate that lacks
//! acknowledged writes, or complete a quorum for one, and those writes would be lost.
//!
//! So each node's data has an **incarnation**: a random number written into `log.redb` when
//! the data is created, never changed after. The cluster keeps a **registry** in the state
//! machine (replicated like any write, kept in snapshots): the cluster's id and the
//! incarnation of every member. Every node-to-node request names the sender, the sender's
//! incarnation, the incarnation the sender expects of its target, and the cluster id; the
//! receiver refuses ([`Refused`]) a request
//! - meant for another incarnation of itself: this node's data is newer than the member the
//!   cluster knows, so it was lost. The node stops and says how to replace it;
//! - that does not say which incarnation it is meant for, while this node has no Raft state
//!   yet: an empty node acts only for a sender that knows it;
//! - from a sender whose incarnation differs from the registry's, or from another cluster.
//!
//! Before the registry has an entry for a member, senders use an incarnation "observed" where
//! it can be trusted: by the founder, from the members it asked before founding the cluster
//! (none of them had Raft state then), and from the successful replies of members with Raft
//! state (data from a version without identities). Never from a refusal: an empty node
//! serves only a sender that names it, so a wiped node cannot introduce itself. The leader
//! registers what was observed, and from then on the registry decides.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// A node id ([`crate::types::NodeId`]; named here without importing `types`, which imports
/// the command that imports this module).
pub type NodeId = u64;

/// Request header: the sender's node id.
pub const SENDER_HEADER: &str = "x-raft-sender";
/// Request header: the sender's incarnation. Response header: the responder's.
pub const INCARNATION_HEADER: &str = "x-raft-incarnation";
/// Request header: the incarnation the sender expects of its target, when it knows it.
pub const TARGET_INCARNATION_HEADER: &str = "x-raft-target-incarnation";
/// Request header: the sender's cluster id, when it knows it.
pub const CLUSTER_HEADER: &str = "x-raft-cluster";

/// Identities are shown and sent as 16 hex digits.
pub fn hex(v: u64) -> String {
    format!("{v:016x}")
}

/// Bytes (a digest, a MAC, a nonce) as lowercase hex digits, two a byte.
pub fn hex_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s, 16).ok()
}

/// A fresh random identity (never zero, so zero never means "some identity").
pub fn random_id() -> std::io::Result<u64> {
    loop {
        let v = getrandom::u64().map_err(|e| std::io::Error::other(e.to_string()))?;
        if v != 0 {
            return Ok(v);
        }
    }
}

/// The cluster's registry of identities, as the state machine keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    /// The cluster's id, chosen by the first leader that registers.
    pub cluster: Option<u64>,
    /// Each member's incarnation, as first registered.
    pub members: BTreeMap<NodeId, u64>,
}

impl Registry {
    /// Apply a registration: the first cluster id and each member's first incarnation win
    /// (a member is registered again only after it left the membership). Whether anything
    /// changed; an error, changing nothing, for another cluster's id.
    pub fn register(&mut self, cluster: u64, members: &[(NodeId, u64)]) -> Result<bool, String> {
        match self.cluster {
            Some(ours) if ours != cluster => {
                return Err(format!(
                    "registration for cluster {} in cluster {}",
                    hex(cluster),
                    hex(ours)
                ))
            }
            _ => {}
        }
        let mut changed = self.cluster.is_none();
        self.cluster = Some(cluster);
        for &(id, incarnation) in members {
            if let std::collections::btree_map::Entry::Vacant(e) = self.members.entry(id) {
                e.insert(incarnation);
                changed = true;
            }
        }
        Ok(changed)
    }

    /// Forget members that left the membership, so a replacement can register under the id.
    pub fn retain(&mut self, keep: impl Fn(NodeId) -> bool) -> bool {
        let before = self.members.len();
        self.members.retain(|id, _| keep(*id));
        self.members.len() != before
    }
}

/// What an inbound node-to-node request says about who sent it and for whom it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Claims {
    pub sender: Option<NodeId>,
    pub sender_incarnation: Option<u64>,
    pub target_incarnation: Option<u64>,
    pub cluster: Option<u64>,
}

impl Claims {
    /// Read the claims from request headers, given a lookup by header name. A header that
    /// does not parse counts as absent.
    pub fn from_headers<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Claims {
        Claims {
            sender: get(SENDER_HEADER).and_then(|v| v.parse().ok()),
            sender_incarnation: get(INCARNATION_HEADER).and_then(parse_hex),
            target_incarnation: get(TARGET_INCARNATION_HEADER).and_then(parse_hex),
            cluster: get(CLUSTER_HEADER).and_then(parse_hex),
        }
    }
}

/// Why an inbound request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The request is for another incarnation of this node: its data was lost.
    #[error(
        "node {me}'s data was lost: the cluster knows node {me} as incarnation {known}, but \
         this data directory is incarnation {own}. A node that lost its data must not rejoin \
         under its old identity (it forgot its vote and the entries it acknowledged). Replace \
         it: remove node {me} from the membership (DELETE /cluster/members/{me} on any member), \
         then add this node as a new member with empty data (POST /cluster/members); see \
         \"Replacing a node\" in the README"
    )]
    Superseded {
        me: NodeId,
        known: String,
        own: String,
    },
    /// The request is for another incarnation of this node, from a sender whose view of the
    /// cluster is out of date: a former member, or one the registry does not hold, while the
    /// registry names this incarnation or does not come from that sender's cluster.
    #[error(
        "the sender names node {me} as incarnation {named}, but this node is {own} and the \
         cluster's registry, as this node has it, does not support the sender's view: \
         refused, and this node carries on"
    )]
    Stale {
        me: NodeId,
        named: String,
        own: String,
    },
    /// The request is for another incarnation of this node, while this node, new and
    /// joining, has not yet had the cluster's registry from its join target: it cannot yet
    /// tell a node whose data was lost from a sender whose view is stale.
    #[error(
        "the sender names node {me} as incarnation {named}, but this node is {own} and has \
         not yet had the cluster's registry from its join target: refused, and this node \
         carries on"
    )]
    Unverified {
        me: NodeId,
        named: String,
        own: String,
    },
    /// This node has no Raft state and the sender did not name its incarnation.
    #[error(
        "node {me} has no data yet and acts only for a sender that names its incarnation ({own})"
    )]
    Unnamed { me: NodeId, own: String },
    /// The sender is not the incarnation of its id that the cluster registered.
    #[error("node {sender} is registered as incarnation {known}, not {claimed}")]
    Impostor {
        sender: NodeId,
        known: String,
        claimed: String,
    },
    #[error("the sender is in cluster {theirs}, this node in cluster {ours}")]
    OtherCluster { theirs: String, ours: String },
}

/// This node's identity and its view of everyone else's. Shared by the network (outbound
/// headers, observed replies), the state machine (the registry it applies) and the HTTP
/// gate (inbound checks).
#[derive(Debug)]
pub struct Identity {
    me: NodeId,
    own: u64,
    /// No vote, no entries: this data has never taken part in Raft.
    pristine: AtomicBool,
    registry: RwLock<Registry>,
    /// The log index of `registry`, as written to `sm.redb`; changed under its write lock.
    registry_at: AtomicU64,
    observed: Mutex<BTreeMap<NodeId, u64>>,
    /// New and joining: no claim that this data was lost is believed until the registry
    /// comes, from the join target ([`Identity::vouch`]) or from Raft.
    awaiting_registry: AtomicBool,
    lost: OnceLock<String>,
    lost_notify: Notify,
}

impl Identity {
    pub fn new(me: NodeId, own: u64, pristine: bool) -> Self {
        Identity {
            me,
            own,
            pristine: AtomicBool::new(pristine),
            registry: RwLock::default(),
            registry_at: AtomicU64::new(0),
            observed: Mutex::default(),
            awaiting_registry: AtomicBool::new(false),
            lost: OnceLock::new(),
            lost_notify: Notify::new(),
        }
    }

    pub fn me(&self) -> NodeId {
        self.me
    }

    /// This data's incarnation.
    pub fn own(&self) -> u64 {
        self.own
    }

    pub fn is_pristine(&self) -> bool {
        self.pristine.load(Ordering::SeqCst)
    }

    /// This node takes part in Raft now (it founded the cluster, leads, or accepted a request
    /// meant for its incarnation).
    pub fn settle(&self) {
        self.pristine.store(false, Ordering::SeqCst);
    }

    pub fn registry(&self) -> Registry {
        self.read().clone()
    }

    /// The registry, borrowed: every Raft RPC consults it, so no copy on that path.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Called by the state machine once `registry`, as of log index `at`, is in `sm.redb`
    /// (at start, after an install, after an apply). One older than the registry held is
    /// ignored: a registry whose write waited for room on the disk may be written after a
    /// snapshot installed a newer one.
    pub fn set_registry(&self, at: u64, registry: Registry) {
        let mut held = self.registry.write().unwrap_or_else(|p| p.into_inner());
        if at >= self.registry_at.load(Ordering::SeqCst) {
            self.registry_at.store(at, Ordering::SeqCst);
            *held = registry;
            if at > 0 {
                self.awaiting_registry.store(false, Ordering::SeqCst);
            }
        }
    }

    /// This node is new (no Raft state) and joins through a member: until that member's
    /// registry comes ([`Identity::vouch`]), or the cluster's own through Raft, a request
    /// for another incarnation of this node is refused ([`Refused::Unverified`]) and stops
    /// nothing. A member removed while it was cut off still names the old incarnation of
    /// its id's replacement; with no registry to check it against, the replacement took it
    /// for the cluster's word and stopped as lost, for as long as its catch-up lasted
    /// (found in review).
    pub fn await_registry(&self) {
        if self.is_pristine() && self.registry_at.load(Ordering::SeqCst) == 0 {
            self.awaiting_registry.store(true, Ordering::SeqCst);
        }
    }

    pub fn awaits_registry(&self) -> bool {
        self.awaiting_registry.load(Ordering::SeqCst)
    }

    /// The cluster's registry as the join target holds it, for a node that has applied none
    /// yet: it decides who may say this data was lost until Raft brings the registry.
    pub fn vouch(&self, registry: Registry) {
        let mut held = self.registry.write().unwrap_or_else(|p| p.into_inner());
        if self.registry_at.load(Ordering::SeqCst) == 0 {
            *held = registry;
        }
        self.awaiting_registry.store(false, Ordering::SeqCst);
    }

    /// Remember an incarnation of `id` from a trusted source (see the module docs).
    pub fn observe(&self, id: NodeId, incarnation: u64) {
        if id != self.me {
            self.observed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, incarnation);
        }
    }

    pub fn observed(&self, id: NodeId) -> Option<u64> {
        if id == self.me {
            return Some(self.own);
        }
        self.observed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .copied()
    }

    /// The incarnation `id` should have: the registry's, else the one it last named.
    pub fn expected(&self, id: NodeId) -> Option<u64> {
        let registered = self.read().members.get(&id).copied();
        registered.or_else(|| self.observed(id))
    }

    /// The headers of a request to `target`.
    pub fn request_headers(&self, target: NodeId) -> Vec<(&'static str, String)> {
        let mut h = self.sender_headers();
        if let Some(inc) = self.expected(target) {
            h.push((TARGET_INCARNATION_HEADER, hex(inc)));
        }
        h
    }

    /// The headers naming the sender (and its cluster), for a request whose target is known
    /// only by address.
    pub fn sender_headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![
            (SENDER_HEADER, self.me.to_string()),
            (INCARNATION_HEADER, hex(self.own)),
        ];
        if let Some(c) = self.read().cluster {
            h.push((CLUSTER_HEADER, hex(c)));
        }
        h
    }

    /// Decide on an inbound request. A request meant for another incarnation of this node
    /// also marks this node lost ([`Identity::lost`]), when its sender can be believed.
    ///
    /// The sender's own claims are checked first: a sender from another cluster, or one
    /// that is not the incarnation of its id that the registry holds, is refused and stops
    /// nothing. And once this node has the registry, only a sender in it can tell it that
    /// its data was lost, and only if the registry does not name this very incarnation: a
    /// removed member still running, with its old view of the cluster, named the old
    /// incarnation of a member's replacement and stopped it, every time the README's
    /// procedure was followed (found in review).
    pub fn admit(&self, claims: &Claims) -> Result<(), Refused> {
        let registry = self.read();
        if let (Some(theirs), Some(ours)) = (claims.cluster, registry.cluster) {
            if theirs != ours {
                return Err(Refused::OtherCluster {
                    theirs: hex(theirs),
                    ours: hex(ours),
                });
            }
        }
        if let (Some(sender), Some(claimed)) = (claims.sender, claims.sender_incarnation) {
            if let Some(&known) = registry.members.get(&sender) {
                if known != claimed {
                    return Err(Refused::Impostor {
                        sender,
                        known: hex(known),
                        claimed: hex(claimed),
                    });
                }
            }
        }
        match claims.target_incarnation {
            Some(t) if t != self.own => {
                if self.awaits_registry() {
                    return Err(Refused::Unverified {
                        me: self.me,
                        named: hex(t),
                        own: hex(self.own),
                    });
                }
                let registered_sender = claims
                    .sender
                    .is_some_and(|s| registry.members.contains_key(&s));
                let believed = registry.members.get(&self.me) != Some(&self.own)
                    && (registry.members.is_empty() || registered_sender);
                if !believed {
                    return Err(Refused::Stale {
                        me: self.me,
                        named: hex(t),
                        own: hex(self.own),
                    });
                }
                let refused = Refused::Superseded {
                    me: self.me,
                    known: hex(t),
                    own: hex(self.own),
                };
                self.lose(refused.to_string());
                return Err(refused);
            }
            None if self.is_pristine() => {
                return Err(Refused::Unnamed {
                    me: self.me,
                    own: hex(self.own),
                })
            }
            _ => {}
        }
        if claims.target_incarnation.is_some() {
            self.settle();
        }
        Ok(())
    }

    fn lose(&self, why: String) {
        if self.lost.set(why).is_ok() {
            self.lost_notify.notify_waiters();
            self.lost_notify.notify_one();
        }
    }

    /// Resolves once this node learned that its data was lost, with the message saying so.
    pub async fn lost(&self) -> String {
        loop {
            let notified = self.lost_notify.notified();
            if let Some(why) = self.lost.get() {
                return why.clone();
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(target: Option<u64>) -> Claims {
        Claims {
            sender: Some(1),
            sender_incarnation: Some(0x11),
            target_incarnation: target,
            cluster: None,
        }
    }

    #[test]
    fn registration_is_first_wins_and_per_cluster() {
        let mut r = Registry::default();
        assert_eq!(r.register(7, &[(1, 0x11), (2, 0x22)]), Ok(true));
        assert_eq!(r.register(7, &[(2, 0x99), (3, 0x33)]), Ok(true));
        assert_eq!(r.members, BTreeMap::from([(1, 0x11), (2, 0x22), (3, 0x33)]));
        assert_eq!(r.register(7, &[(3, 0x33)]), Ok(false));
        assert!(r.register(8, &[(4, 0x44)]).is_err());
        assert!(!r.members.contains_key(&4));
        assert!(r.retain(|id| id != 2));
        assert_eq!(r.register(7, &[(2, 0x99)]), Ok(true));
        assert_eq!(r.members[&2], 0x99);
    }

    #[tokio::test]
    async fn a_request_for_an_older_incarnation_marks_the_node_lost() {
        let id = Identity::new(3, 0xbb, true);
        let refused = id.admit(&claims(Some(0xaa))).unwrap_err();
        assert!(matches!(refused, Refused::Superseded { me: 3, .. }));
        let why = tokio::time::timeout(std::time::Duration::from_secs(1), id.lost())
            .await
            .expect("lost resolves");
        assert!(why.contains("data was lost"), "{why}");
        assert!(why.contains("00000000000000aa") && why.contains("00000000000000bb"));
    }

    /// A removed member still running names the old incarnation of its id's replacement:
    /// the replacement, which the registry knows, refuses it and carries on. So it does for
    /// a sender the registry does not hold, and for another cluster's.
    #[tokio::test]
    async fn a_stale_sender_cannot_stop_a_registered_member() {
        let id = Identity::new(3, 0xbb, false);
        id.set_registry(
            1,
            Registry {
                cluster: Some(7),
                members: BTreeMap::from([(1, 0x11), (3, 0xbb)]),
            },
        );
        // The registry names this incarnation: even a registered member's claim is stale.
        let mut c = claims(Some(0xaa));
        assert!(matches!(id.admit(&c), Err(Refused::Stale { me: 3, .. })));
        // A removed member (no longer in the registry).
        c.sender = Some(4);
        c.sender_incarnation = Some(0x44);
        assert!(matches!(id.admit(&c), Err(Refused::Stale { .. })));
        c.cluster = Some(8);
        assert!(matches!(id.admit(&c), Err(Refused::OtherCluster { .. })));
        // Before this node's own registration is applied, an unregistered sender is stale
        // too; a registered one is believed.
        let id = Identity::new(3, 0xbb, false);
        id.set_registry(
            1,
            Registry {
                cluster: Some(7),
                members: BTreeMap::from([(1, 0x11)]),
            },
        );
        c.cluster = Some(7);
        assert!(matches!(id.admit(&c), Err(Refused::Stale { .. })));
        let gone = tokio::time::timeout(std::time::Duration::from_millis(50), id.lost()).await;
        assert!(gone.is_err(), "marked lost by a stale sender");
        assert!(matches!(
            id.admit(&claims(Some(0xaa))),
            Err(Refused::Superseded { .. })
        ));
    }

    /// A new node joining believes no claim that its data was lost before it has the
    /// cluster's registry; with the join target's, a removed member is stale and a
    /// registered one is believed.
    #[tokio::test]
    async fn a_joining_node_believes_no_loss_before_it_has_the_registry() {
        let id = Identity::new(3, 0xbb, true);
        id.await_registry();
        let mut stale = claims(Some(0xaa));
        stale.sender = Some(4);
        stale.sender_incarnation = Some(0x44);
        assert!(matches!(
            id.admit(&stale),
            Err(Refused::Unverified { me: 3, .. })
        ));
        assert!(matches!(
            id.admit(&claims(Some(0xaa))),
            Err(Refused::Unverified { .. })
        ));
        let gone = tokio::time::timeout(std::time::Duration::from_millis(50), id.lost()).await;
        assert!(gone.is_err(), "marked lost before the registry came");
        // Requests meant for this incarnation are served meanwhile.
        assert_eq!(id.admit(&claims(Some(0xbb))), Ok(()));
        id.vouch(Registry {
            cluster: Some(7),
            members: BTreeMap::from([(1, 0x11), (2, 0x22)]),
        });
        assert!(!id.awaits_registry());
        assert!(matches!(id.admit(&stale), Err(Refused::Stale { .. })));
        assert!(matches!(
            id.admit(&claims(Some(0xaa))),
            Err(Refused::Superseded { .. })
        ));
        // One applied through Raft is not replaced by a join target's.
        let id = Identity::new(3, 0xbb, true);
        id.await_registry();
        let applied = Registry {
            cluster: Some(7),
            members: BTreeMap::from([(1, 0x11), (3, 0xbb)]),
        };
        id.set_registry(5, applied.clone());
        assert!(!id.awaits_registry());
        id.vouch(Registry::default());
        assert_eq!(id.registry(), applied);
        // Nor does a node with Raft state wait for one.
        let id = Identity::new(3, 0xbb, false);
        id.await_registry();
        assert!(!id.awaits_registry());
    }

    #[test]
    fn an_empty_node_acts_only_for_a_sender_that_names_it() {
        let id = Identity::new(3, 0xbb, true);
        assert!(matches!(
            id.admit(&claims(None)),
            Err(Refused::Unnamed { .. })
        ));
        assert!(id.is_pristine());
        assert_eq!(id.admit(&claims(Some(0xbb))), Ok(()));
        assert!(!id.is_pristine());
        // Once part of the cluster, a sender that does not know it yet (an older version,
        // or one that has not applied the registry) is served.
        assert_eq!(id.admit(&claims(None)), Ok(()));
        // What a request claims is checked, never learnt.
        assert_eq!(id.observed(1), None);
    }

    #[test]
    fn an_impostor_or_another_cluster_is_refused() {
        let id = Identity::new(3, 0xbb, false);
        id.set_registry(
            1,
            Registry {
                cluster: Some(7),
                members: BTreeMap::from([(1, 0x11), (3, 0xbb)]),
            },
        );
        let mut c = claims(Some(0xbb));
        c.sender_incarnation = Some(0x12);
        assert!(matches!(
            id.admit(&c),
            Err(Refused::Impostor { sender: 1, .. })
        ));
        c.sender_incarnation = Some(0x11);
        c.cluster = Some(8);
        assert!(matches!(id.admit(&c), Err(Refused::OtherCluster { .. })));
        c.cluster = Some(7);
        assert_eq!(id.admit(&c), Ok(()));
    }

    /// A registry whose write waited for room may be written after an install brought a
    /// newer one: the older is not put back.
    #[test]
    fn a_registry_older_than_the_one_held_is_ignored() {
        let id = Identity::new(1, 0x11, false);
        let reg = |incarnation| Registry {
            cluster: Some(7),
            members: BTreeMap::from([(2, incarnation)]),
        };
        id.set_registry(10, reg(0x21));
        id.set_registry(5, reg(0x20));
        assert_eq!(id.expected(2), Some(0x21));
        id.set_registry(10, reg(0x22));
        assert_eq!(id.expected(2), Some(0x22));
        id.set_registry(11, reg(0x23));
        assert_eq!(id.expected(2), Some(0x23));
    }

    #[test]
    fn senders_name_the_registered_incarnation_before_an_observed_one() {
        let id = Identity::new(1, 0x11, false);
        assert_eq!(id.expected(2), None);
        id.observe(2, 0x22);
        assert_eq!(id.expected(2), Some(0x22));
        id.set_registry(
            1,
            Registry {
                cluster: Some(7),
                members: BTreeMap::from([(2, 0x21)]),
            },
        );
        assert_eq!(id.expected(2), Some(0x21));
        let h = id.request_headers(2);
        assert!(h.contains(&(TARGET_INCARNATION_HEADER, hex(0x21))));
        assert!(h.contains(&(CLUSTER_HEADER, hex(7))));
        assert!(h.contains(&(SENDER_HEADER, "1".into())));
    }
}
