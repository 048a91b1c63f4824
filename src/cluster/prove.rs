//! A node proves that it holds the cluster secret without anyone sending the secret to it.
//!
//! A membership change names the new node's peer address in its request body, and the
//! leader's first call there used to be a probe carrying the secret as its bearer token.
//! Whoever could ask for the change (the `admin` role, or any client when client tokens are
//! off) could name an address of their own and read the secret off the probe: full peer
//! power, more than any client role has (found in review). Now the leader sends a fresh
//! random nonce to [`PROVE_PATH`], unauthenticated, and the node answers who it is with an
//! HMAC-SHA256, keyed by the secret, of the nonce and that identity. The leader checks it
//! before anything carrying the secret (the add, then Raft's appends) goes to the address.
//!
//! What the answer gives an anonymous caller: a node's id, incarnation and cluster id (its
//! incarnation is on every peer answer already, refusals included) and a MAC that names them,
//! for a nonce of the caller's choosing. The MAC is of this message alone
//! (`message`, with its own prefix), so it is good for nothing but this proof.
//!
//! What it does not stop: a relay. An address that passes the probe on to a node that holds
//! the secret and is not a member, whose id the change names, passes. The leader's appends
//! then carry the secret to it. That needs such a node running and reachable by the
//! attacker; per-request MACs in place of the bearer secret on every peer call would close
//! it (docs/security.md).

use cookie_raft::identity::hex_bytes;
use ring::hmac;
use serde_json::{json, Value};

/// Where a node answers the challenge, on its peer listener, without the peer credential.
pub const PROVE_PATH: &str = "/raft/prove";
/// A nonce's length in hex digits, at least and at most.
const NONCE_HEX: std::ops::RangeInclusive<usize> = 32..=128;

/// A fresh nonce: 32 random bytes, in hex.
pub fn nonce() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source");
    hex_bytes(&bytes)
}

/// Whether `nonce` is one this node answers: hex digits, of a sane length.
pub fn valid_nonce(nonce: &str) -> bool {
    NONCE_HEX.contains(&nonce.len()) && nonce.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What the MAC covers: the nonce and the identity the answer states, each field on a line.
fn message(nonce: &str, answer: &Value) -> Option<String> {
    let id = answer["node_id"].as_u64()?;
    let incarnation = answer["incarnation"].as_str().unwrap_or_default();
    let cluster = answer["cluster_id"].as_str().unwrap_or_default();
    let initialized = answer["initialized"].as_bool()?;
    Some(format!(
        "cookie-crud prove v1\n{nonce}\n{id}\n{incarnation}\n{cluster}\n{initialized}"
    ))
}

/// The answer to `nonce`: `identity` (the fields of `/cluster` that say who this node is)
/// with its proof.
pub fn answer(secret: &str, nonce: &str, mut identity: Value) -> Value {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let proof = message(nonce, &identity)
        .map(|m| hex_bytes(hmac::sign(&key, m.as_bytes()).as_ref()))
        .unwrap_or_default();
    identity["proof"] = json!(proof);
    identity
}

/// Whether `answer` proves, for `nonce`, that its sender holds `secret` and is who it says.
pub fn verify(secret: &str, nonce: &str, answer: &Value) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let (Some(message), Some(proof)) = (
        message(nonce, answer),
        answer["proof"].as_str().and_then(parse_hex_bytes),
    ) else {
        return false;
    };
    hmac::verify(&key, message.as_bytes(), &proof).is_ok()
}

fn parse_hex_bytes(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who() -> Value {
        json!({"node_id": 4, "initialized": false, "incarnation": "00000000000000aa", "cluster_id": null})
    }

    #[test]
    fn an_answer_with_the_secret_verifies_and_nothing_else_does() {
        let n = nonce();
        assert!(valid_nonce(&n));
        let a = answer("s3cret", &n, who());
        assert!(verify("s3cret", &n, &a));
        assert!(!verify("other", &n, &a), "another secret");
        assert!(!verify("s3cret", &nonce(), &a), "another nonce");
        for (field, value) in [
            ("node_id", json!(5)),
            ("incarnation", json!("00000000000000ab")),
            ("cluster_id", json!("0000000000000001")),
            ("initialized", json!(true)),
            ("proof", json!("00")),
            ("proof", json!("zz")),
        ] {
            let mut forged = a.clone();
            forged[field] = value;
            assert!(!verify("s3cret", &n, &forged), "{field} changed");
        }
        assert!(!a.to_string().contains("s3cret"));
    }

    #[test]
    fn nonces_are_hex_of_a_sane_length() {
        assert!(valid_nonce(&"a".repeat(32)));
        assert!(!valid_nonce(&"a".repeat(31)));
        assert!(!valid_nonce(&"a".repeat(129)));
        assert!(!valid_nonce(&format!("{}g", "a".repeat(40))));
        assert_ne!(nonce(), nonce());
    }
}
