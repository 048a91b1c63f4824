//! Who the initial members are, for bootstrap.
//!
//! Discovery only matters once: when a brand-new cluster is founded. After that the
//! membership lives in the Raft log, and a restarted node learns its peers from there.
//!
//! - `manual` and `kubernetes` give a fixed list of ids and addresses (the config computes
//!   the Kubernetes one from the StatefulSet's pod names).
//! - `dns` gives only addresses: a name's A/AAAA records, with the peer port. Each address
//!   is asked `GET /cluster` on its peer listener, and its answer says which node id lives
//!   there and which client port it serves. Ids therefore stay the ones
//!   configured on each node, and never depend on the order or the churn of DNS answers.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use cookie_raft::{CookieNode, NodeId};
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

use crate::config::{Config, Discovery};

/// Why discovery could not produce candidates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DiscoveryError(String);

impl From<String> for DiscoveryError {
    fn from(s: String) -> Self {
        DiscoveryError(s)
    }
}

/// A DNS name that lists the members' addresses.
pub struct DnsSeed {
    resolver: TokioResolver,
    name: String,
    port: u16,
}

impl DnsSeed {
    pub fn new(cfg: &Config) -> Result<Self, DiscoveryError> {
        let c = &cfg.cluster;
        let port = match c.peer_port {
            Some(p) => p,
            None => cfg
                .peer_listen()
                .parse::<SocketAddr>()
                .map_err(|e| DiscoveryError(format!("peer_listen: {e}")))?
                .port(),
        };
        let mut builder = match c.dns_server {
            // A named server (a test's, or a cluster's own): ask it and nothing else.
            Some(server) => {
                let mut ns = NameServerConfig::udp_and_tcp(server.ip());
                for conn in &mut ns.connections {
                    conn.port = server.port();
                }
                let config = ResolverConfig::from_parts(None, vec![], vec![ns]);
                TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            }
            None => TokioResolver::builder_tokio().map_err(|e| {
                DiscoveryError(format!("cannot read the system's DNS configuration: {e}"))
            })?,
        };
        // Membership changes between rounds (pods come up): never answer from a cache.
        builder.options_mut().cache_size = 0;
        let resolver = builder
            .build()
            .map_err(|e| DiscoveryError(format!("cannot build a DNS resolver: {e}")))?;
        Ok(DnsSeed {
            resolver,
            name: c.service.clone().unwrap_or_default(),
            port,
        })
    }

    /// The addresses the name resolves to now, sorted, with the peer port.
    pub async fn addresses(&self) -> Result<Vec<SocketAddr>, DiscoveryError> {
        let lookup = self
            .resolver
            .lookup_ip(self.name.as_str())
            .await
            .map_err(|e| DiscoveryError(format!("resolving {}: {e}", self.name)))?;
        let mut ips: Vec<IpAddr> = lookup.iter().collect();
        ips.sort();
        ips.dedup();
        Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, self.port))
            .collect())
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Where the candidate members come from.
pub enum Seed {
    /// Ids and addresses known up front.
    Fixed(BTreeMap<NodeId, CookieNode>),
    Dns(Box<DnsSeed>),
}

impl Seed {
    pub fn new(cfg: &Config) -> Result<Self, DiscoveryError> {
        Ok(match cfg.cluster.discovery {
            Discovery::Manual | Discovery::Kubernetes => Seed::Fixed(
                cfg.nodes
                    .iter()
                    .map(|m| (m.id, CookieNode::new(&m.addr, m.peer_addr(), m.name())))
                    .collect(),
            ),
            Discovery::Dns => Seed::Dns(Box::new(DnsSeed::new(cfg)?)),
        })
    }

    /// How many members the new cluster must have.
    pub fn expected(&self, cfg: &Config) -> usize {
        match self {
            Seed::Fixed(m) => m.len(),
            Seed::Dns(_) => cfg.cluster.expected_nodes,
        }
    }
}

/// What one candidate address said about itself.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The client address the member will be known by.
    pub addr: String,
    /// The peer address the member will be known by (the one that was asked).
    pub peer_addr: String,
    /// The id the seed expects there (fixed seeds), checked against the reply.
    pub expected_id: Option<NodeId>,
    pub reply: Result<PeerInfo, DiscoveryError>,
}

/// A node's own account of itself, from `GET /cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: NodeId,
    pub name: String,
    pub initialized: bool,
    /// Its data's incarnation (absent from versions without identities).
    pub incarnation: Option<u64>,
    /// The client address it advertises (absent from versions without a peer listener).
    pub addr: Option<String>,
    /// The cluster it belongs to, once registered.
    pub cluster: Option<u64>,
}

impl PeerInfo {
    pub fn from_cluster_json(v: &serde_json::Value) -> Option<Self> {
        Some(PeerInfo {
            id: v["node_id"].as_u64()?,
            name: v["node"].as_str().unwrap_or_default().to_string(),
            initialized: v["initialized"].as_bool()?,
            incarnation: v["incarnation"]
                .as_str()
                .and_then(cookie_raft::identity::parse_hex),
            addr: v["addr"].as_str().map(str::to_owned),
            cluster: v["cluster_id"]
                .as_str()
                .and_then(cookie_raft::identity::parse_hex),
        })
    }
}

/// A DNS-found member's client address: the host DNS gave (what this node can reach) with
/// the client port the member advertises (its own host may be a wildcard such as 0.0.0.0);
/// this node's own client port when the member does not say.
pub fn client_addr_of(found: SocketAddr, advertised: Option<&str>, own_port: u16) -> String {
    let port = advertised
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(own_port);
    SocketAddr::new(found.ip(), port).to_string()
}

/// What bootstrap should do after one round of asking.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not everything is in place; ask again. The reason is logged now and then.
    Wait(String),
    /// Some member is already part of a cluster: never found a second one. Its leader will
    /// replicate to this node.
    Join,
    /// Another member (the smallest id) founds the cluster.
    NotFounder,
    /// This node founds the cluster with these members.
    Found(BTreeMap<NodeId, CookieNode>),
}

/// The founding rule, the same for every discovery mode: found only when exactly `expected`
/// distinct members answer, none is initialized, this node is among them, and it has the
/// smallest id. Pure, so it is tested on its own.
pub fn decide(me: NodeId, expected: usize, answers: &[Answer]) -> Decision {
    let mut members: BTreeMap<NodeId, CookieNode> = BTreeMap::new();
    let mut unreachable = Vec::new();
    for a in answers {
        let info = match &a.reply {
            Ok(info) => info,
            Err(e) => {
                unreachable.push(format!("{} ({e})", a.addr));
                continue;
            }
        };
        if info.initialized {
            return Decision::Join;
        }
        if let Some(want) = a.expected_id {
            if want != info.id {
                return Decision::Wait(format!(
                    "{} answers as node {} but is configured as node {want}",
                    a.addr, info.id
                ));
            }
        }
        let node = CookieNode::new(&a.addr, &a.peer_addr, &info.name);
        if let Some(other) = members.insert(info.id, node) {
            return Decision::Wait(format!(
                "two addresses answer as node {}: {} and {}",
                info.id, other.peer_addr, a.peer_addr
            ));
        }
    }
    if !unreachable.is_empty() {
        return Decision::Wait(format!("not answering: {}", unreachable.join(", ")));
    }
    if answers.len() != expected {
        return Decision::Wait(format!(
            "found {} of the {expected} expected members",
            answers.len()
        ));
    }
    if !members.contains_key(&me) {
        return Decision::Wait(format!("this node (id {me}) is not among the members yet"));
    }
    if members.keys().next() != Some(&me) {
        return Decision::NotFounder;
    }
    Decision::Found(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(addr: &str, id: NodeId, initialized: bool) -> Answer {
        Answer {
            addr: addr.into(),
            peer_addr: format!("{addr}0"),
            expected_id: None,
            reply: Ok(PeerInfo {
                id,
                name: format!("node{id}"),
                initialized,
                incarnation: None,
                addr: None,
                cluster: None,
            }),
        }
    }

    #[test]
    fn founds_only_with_every_expected_member_and_the_smallest_id() {
        let all = [
            ok("a:1", 2, false),
            ok("b:1", 1, false),
            ok("c:1", 3, false),
        ];
        match decide(1, 3, &all) {
            Decision::Found(m) => {
                assert_eq!(m.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
                assert_eq!(m[&1].addr, "b:1");
                assert_eq!(m[&1].peer_addr, "b:10");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(decide(2, 3, &all), Decision::NotFounder);
        assert!(matches!(decide(1, 3, &all[..2]), Decision::Wait(_)));
        assert!(matches!(decide(1, 4, &all), Decision::Wait(_)));
    }

    #[test]
    fn never_founds_beside_an_existing_cluster_or_with_doubts() {
        let joined = [ok("a:1", 1, false), ok("b:1", 2, true), ok("c:1", 3, false)];
        assert_eq!(decide(1, 3, &joined), Decision::Join);

        let twins = [
            ok("a:1", 1, false),
            ok("b:1", 2, false),
            ok("c:1", 2, false),
        ];
        assert!(matches!(decide(1, 3, &twins), Decision::Wait(r) if r.contains("two addresses")));

        let mut down = vec![ok("a:1", 1, false), ok("b:1", 2, false)];
        down.push(Answer {
            addr: "c:1".into(),
            peer_addr: "c:10".into(),
            expected_id: Some(3),
            reply: Err(DiscoveryError::from("refused".to_string())),
        });
        assert!(matches!(decide(1, 3, &down), Decision::Wait(r) if r.contains("c:1")));

        let mut wrong = vec![ok("a:1", 1, false), ok("b:1", 2, false)];
        wrong.push(Answer {
            expected_id: Some(3),
            ..ok("c:1", 4, false)
        });
        assert!(matches!(decide(1, 3, &wrong), Decision::Wait(r) if r.contains("configured")));

        let without_me = [
            ok("a:1", 2, false),
            ok("b:1", 3, false),
            ok("c:1", 4, false),
        ];
        assert!(matches!(decide(1, 3, &without_me), Decision::Wait(_)));
    }

    #[test]
    fn a_dns_member_is_reached_at_the_found_host_and_its_advertised_port() {
        let found: SocketAddr = "10.1.2.3:9080".parse().unwrap();
        assert_eq!(
            client_addr_of(found, Some("0.0.0.0:8080"), 7000),
            "10.1.2.3:8080"
        );
        assert_eq!(client_addr_of(found, None, 7000), "10.1.2.3:7000");
        assert_eq!(
            client_addr_of(found, Some("garbage"), 7000),
            "10.1.2.3:7000"
        );
    }
}
