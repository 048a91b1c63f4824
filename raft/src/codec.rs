//! bincode 2 (serde mode) for log entries, snapshots and Raft RPC bodies.
//!
//! `standard()` uses varints; decoding of anything that came over the network is bounded by
//! [`DECODE_LIMIT`] so a hostile or corrupt length prefix cannot make us allocate gigabytes.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Upper bound on what one decode may allocate (well above the largest snapshot chunk).
pub const DECODE_LIMIT: usize = 1 << 30;

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::error::DecodeError> {
    let config = bincode::config::standard().with_limit::<DECODE_LIMIT>();
    let (value, _) = bincode::serde::decode_from_slice(bytes, config)?;
    Ok(value)
}
