//! bincode 2 (serde mode) for log entries, snapshots and Raft RPC bodies.
//!
//! `standard()` uses varints; decoding of anything that came over the network is bounded by
//! [`DECODE_LIMIT`] so a hostile or corrupt length prefix cannot make us allocate gigabytes.

use redb::{Database, ReadableDatabase, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::BoxError;

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

/// The value under `key` in a `&str -> bincode` redb table (the stores' metadata tables),
/// decoded; `None` when absent.
pub(crate) fn read_key<T: DeserializeOwned>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> Result<Option<T>, BoxError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(table)?;
    let value = table.get(key)?;
    match value {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}
