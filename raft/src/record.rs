//! How one cookie is kept in the state machine.
//!
//! A stored value is `version (u64 BE) | created sort key (i64 BE) | JSON object bytes`.
//! The header lets `GET /cookies` sort by `created` and splice the stored JSON into the reply
//! without parsing every record, and lets `If-Match` compare versions without parsing at all.

use serde_json::{Map, Value};

use crate::flat_json::Flat;

const HEADER: usize = 16;

/// A record as read back from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The index of the log entry that last changed this record.
    pub version: u64,
    /// `created` as a number, for ordering lists (0 when it is not a number).
    pub created: i64,
    /// The stored JSON object, exactly as the client will see it.
    pub json: Vec<u8>,
}

impl Record {
    /// Build a record from its JSON object text.
    pub fn new(version: u64, json: Vec<u8>) -> Self {
        let created = serde_json::from_slice::<CreatedProbe>(&json)
            .ok()
            .and_then(|p| p.created)
            .map(|v| created_key(&v))
            .unwrap_or(0);
        Record {
            version,
            created,
            json,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.json.len());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.created.to_be_bytes());
        out.extend_from_slice(&self.json);
        out
    }

    /// Decode a stored value; `None` when it is too short to be one (a corrupt row).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < HEADER {
            return None;
        }
        let version = u64::from_be_bytes(bytes[0..8].try_into().ok()?);
        let created = i64::from_be_bytes(bytes[8..16].try_into().ok()?);
        Some(Record {
            version,
            created,
            json: bytes[HEADER..].to_vec(),
        })
    }

    /// Only the version, without copying the JSON.
    pub fn decode_version(bytes: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(bytes.get(0..8)?.try_into().ok()?))
    }
}

#[derive(serde::Deserialize)]
struct CreatedProbe {
    created: Option<Value>,
}

/// `created` is a string of Unix seconds, but a client may send anything on PUT; order what
/// parses as an integer, and everything else as 0.
fn created_key(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.trim().parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// Merge `patch` into the stored object `base` as `PUT` does: patch fields overwrite or are
/// added, nothing is removed, `last_used` becomes `now`. Deterministic: `now` comes from the
/// log entry.
///
/// Every node runs it at apply, so its bytes must not depend on the path taken: when both
/// are flat objects (`flat_json::Flat`) the fields' text is copied, and the bytes are those
/// of `merge_value`, the definition (held to it by the property test
/// `command::tests::merge_on_the_fast_path_is_merge_through_a_value`).
pub fn merge(base: &[u8], patch: &str, now: u64) -> Result<Vec<u8>, String> {
    if let (Some(base), Some(patch)) = (Flat::parse(base), Flat::parse(patch.as_bytes())) {
        return Ok(base
            .merged(&patch)
            .write_stamped(&["last_used"], now)
            .into_bytes());
    }
    merge_value(base, patch, now)
}

/// [`merge`] through `serde_json::Value`s: any objects.
pub(crate) fn merge_value(base: &[u8], patch: &str, now: u64) -> Result<Vec<u8>, String> {
    let mut obj: Map<String, Value> =
        serde_json::from_slice(base).map_err(|e| format!("stored record is not an object: {e}"))?;
    let patch: Map<String, Value> =
        serde_json::from_str(patch).map_err(|e| format!("patch is not an object: {e}"))?;
    for (k, v) in patch {
        obj.insert(k, v);
    }
    obj.insert("last_used".into(), Value::String(now.to_string()));
    serde_json::to_vec(&obj).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let r = Record::new(42, br#"{"cookie":"a","created":"1749658366"}"#.to_vec());
        assert_eq!(r.created, 1_749_658_366);
        let back = Record::decode(&r.encode()).unwrap();
        assert_eq!(back, r);
        assert_eq!(Record::decode_version(&r.encode()), Some(42));
        assert_eq!(Record::decode(b"short"), None);
    }

    #[test]
    fn created_key_tolerates_odd_values() {
        assert_eq!(Record::new(1, br#"{"created":"x"}"#.to_vec()).created, 0);
        assert_eq!(Record::new(1, br#"{"created":17}"#.to_vec()).created, 17);
        assert_eq!(Record::new(1, br#"{"a":1}"#.to_vec()).created, 0);
    }

    #[test]
    fn merge_overwrites_adds_and_keeps() {
        let base = br#"{"cookie":"a","user_id":1,"created":"10","last_used":"10","x":1}"#;
        let out = merge(base, r#"{"user_id":2,"y":"new"}"#, 99).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["user_id"], 2);
        assert_eq!(v["x"], 1);
        assert_eq!(v["y"], "new");
        assert_eq!(v["created"], "10");
        assert_eq!(v["last_used"], "99");
        assert!(merge(base, "[1]", 1).is_err());
    }
}
