//! The node descriptor kept in the replicated membership ([`CookieNode`]) and its encoding.
//!
//! A member has two addresses: `addr`, where clients reach its API, and `peer_addr`, where
//! other nodes reach its peer listener (Raft RPCs, forwarded writes, read-index, peer
//! probes). Versions before the peer listener kept one address, and their membership
//! entries and snapshots are still in logs and backups, so the binary encoding reads both:
//!
//! - the first form was the derived struct, two strings: `addr`, `name`;
//! - the current form starts with a marker string no address can be, then `addr`, `name`,
//!   `peer_addr`. A reader sees the marker and reads the rest, or sees an address and knows
//!   it holds the first form (its `peer_addr` is then empty: [`CookieNode::peer_addr`]
//!   tells the caller to find it elsewhere, e.g. in its own config).
//!
//! bincode has no field names and no lengths for a tuple, which is what makes the marker
//! necessary; human-readable formats (JSON) keep the plain struct.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Starts the current binary form. A NUL byte is never in a `host:port`.
const MARKER: &str = "\0cookie-node/2";

/// A member as the replicated membership keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CookieNode {
    /// `host:port` of the node's client listener (the public API).
    pub addr: String,
    /// The configured node name, e.g. `node1`.
    pub name: String,
    /// `host:port` of the node's peer listener; empty in a membership written before
    /// peer listeners existed.
    pub peer_addr: String,
}

impl CookieNode {
    pub fn new(
        addr: impl Into<String>,
        peer_addr: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        CookieNode {
            addr: addr.into(),
            name: name.into(),
            peer_addr: peer_addr.into(),
        }
    }

    /// Where peers reach this node, when the membership knows it.
    pub fn peer_addr(&self) -> Option<&str> {
        Some(self.peer_addr.as_str()).filter(|a| !a.is_empty())
    }
}

impl fmt::Display for CookieNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{} (peer {})", self.name, self.addr, self.peer_addr)
    }
}

/// The JSON form: the plain struct.
#[derive(Serialize, Deserialize)]
struct Named {
    addr: String,
    name: String,
    #[serde(default)]
    peer_addr: String,
}

impl Serialize for CookieNode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return Named {
                addr: self.addr.clone(),
                name: self.name.clone(),
                peer_addr: self.peer_addr.clone(),
            }
            .serialize(s);
        }
        let mut t = s.serialize_tuple(4)?;
        t.serialize_element(MARKER)?;
        t.serialize_element(&self.addr)?;
        t.serialize_element(&self.name)?;
        t.serialize_element(&self.peer_addr)?;
        t.end()
    }
}

struct Binary;

impl<'de> Visitor<'de> for Binary {
    type Value = CookieNode;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a cookie-crud member (addr, name[, peer_addr])")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CookieNode, A::Error> {
        let mut next = |i: usize| -> Result<String, A::Error> {
            seq.next_element()?
                .ok_or_else(|| de::Error::invalid_length(i, &self))
        };
        let first = next(0)?;
        if first != MARKER {
            // The first form: the address, then the name; nothing more was written.
            return Ok(CookieNode {
                addr: first,
                name: next(1)?,
                peer_addr: String::new(),
            });
        }
        Ok(CookieNode {
            addr: next(1)?,
            name: next(2)?,
            peer_addr: next(3)?,
        })
    }
}

impl<'de> Deserialize<'de> for CookieNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let n = Named::deserialize(d)?;
            return Ok(CookieNode {
                addr: n.addr,
                name: n.name,
                peer_addr: n.peer_addr,
            });
        }
        // Up to four elements; the first form stops after two, and bincode does not mind
        // a tuple read short (it has no length to check).
        d.deserialize_tuple(4, Binary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use std::collections::BTreeMap;

    /// What versions before the peer listener wrote.
    #[derive(Serialize)]
    struct FirstForm {
        addr: String,
        name: String,
    }

    #[test]
    fn the_current_form_round_trips_in_bincode_and_json() {
        let n = CookieNode::new("10.0.0.1:8080", "10.0.0.1:9080", "node1");
        let back: CookieNode = codec::decode(&codec::encode(&n).unwrap()).unwrap();
        assert_eq!(back, n);
        let json = serde_json::to_value(&n).unwrap();
        assert_eq!(json["peer_addr"], "10.0.0.1:9080");
        assert_eq!(serde_json::from_value::<CookieNode>(json).unwrap(), n);
    }

    /// A membership written by an older version, inside a larger value (as in a log entry
    /// or a snapshot's metadata): every member reads back with an empty peer address, and
    /// what follows the members is read from the right place.
    #[test]
    fn the_first_form_reads_back_inside_a_larger_value() {
        let old: BTreeMap<u64, FirstForm> = [1, 2]
            .into_iter()
            .map(|i| {
                (
                    i,
                    FirstForm {
                        addr: format!("h{i}:8080"),
                        name: format!("node{i}"),
                    },
                )
            })
            .collect();
        let bytes = codec::encode(&(old, 42u64, "after")).unwrap();
        let (members, n, tail): (BTreeMap<u64, CookieNode>, u64, String) =
            codec::decode(&bytes).unwrap();
        assert_eq!(members[&2].addr, "h2:8080");
        assert_eq!(members[&2].name, "node2");
        assert_eq!(members[&2].peer_addr(), None);
        assert_eq!((n, tail.as_str()), (42, "after"));

        // And the current form in the same position.
        let new: BTreeMap<u64, CookieNode> = [(1, CookieNode::new("a:1", "a:2", "one"))]
            .into_iter()
            .collect();
        let bytes = codec::encode(&(new.clone(), 7u64)).unwrap();
        let (back, n): (BTreeMap<u64, CookieNode>, u64) = codec::decode(&bytes).unwrap();
        assert_eq!((back, n), (new, 7));
    }

    #[test]
    fn a_truncated_member_is_an_error_not_a_panic() {
        let bytes = codec::encode(&CookieNode::new("a:1", "a:2", "one")).unwrap();
        for len in 0..bytes.len() {
            assert!(codec::decode::<CookieNode>(&bytes[..len]).is_err(), "{len}");
        }
    }
}
