//! The tables and metadata keys of `sm.redb`, shared by applying, snapshots and reads.

use openraft::storage::SnapshotMeta;
use openraft::LogId;
use openraft::StoredMembership;
use redb::{Database, ReadTransaction, TableDefinition};
use serde::Serialize;

use crate::codec;
use crate::identity::Registry;
use crate::types::{CookieNode, NodeId};
use crate::BoxError;

/// id -> [`crate::record::Record`], encoded.
pub(super) const COOKIES: TableDefinition<&str, &[u8]> = TableDefinition::new("cookies");
/// The list order as an index: `(order_key(created), id)`, so a page of `GET /cookies` is a
/// range scan instead of a sort of every record.
pub(super) const BY_CREATED: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("cookies_by_created");

/// Newest `created` first: map the signed sort key to an unsigned one, then invert it.
pub(super) fn order_key(created: i64) -> u64 {
    u64::MAX - ((created as u64) ^ (1 << 63))
}
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");

/// Idempotency keys: key -> [`crate::command::KeyRecord`], bincode.
pub(super) const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency_keys");
/// The keys by expiry, `(expires_ms, key)`, so expired ones are found by a range scan.
pub(super) const KEYS_BY_EXPIRY: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("idempotency_keys_by_expiry");

/// The identity registry ([`crate::identity::Registry`], bincode) under [`KEY_REGISTRY`].
pub(super) const IDENTITY: TableDefinition<&str, &[u8]> = TableDefinition::new("identity");
pub(super) const KEY_REGISTRY: &str = "registry";

/// The registry as of the last commit (empty before any registration).
pub(super) fn read_registry(db: &Database) -> Result<Registry, BoxError> {
    Ok(codec::read_key(db, IDENTITY, KEY_REGISTRY)?.unwrap_or_default())
}

pub(super) const KEY_APPLIED: &str = "last_applied";
pub(super) const KEY_MEMBERSHIP: &str = "membership";
/// The flushes' count (`layer`, an `f64` in periods) as of the last flush: a restarted node
/// counts on from it, so its flushes stay at its own phase against the other nodes'.
pub(super) const KEY_FLUSH_COUNT: &str = "flush_count";
/// The current snapshot: its meta and the file holding its data (`snapshot::SnapshotPointer`).
pub(super) const KEY_SNAPSHOT_FILE: &str = "snapshot_file";
/// Where earlier versions kept the whole snapshot, data included; migrated at open.
pub(super) const KEY_SNAPSHOT_LEGACY: &str = "snapshot";

pub(super) type Membership = StoredMembership<NodeId, CookieNode>;
pub(super) type Meta = SnapshotMeta<NodeId, CookieNode>;

/// Create every table (a new database, or one from before a table existed).
pub(super) fn create_tables(db: &Database) -> Result<(), BoxError> {
    let txn = db.begin_write()?;
    {
        txn.open_table(COOKIES)?;
        txn.open_table(BY_CREATED)?;
        txn.open_table(META)?;
        txn.open_table(KEYS)?;
        txn.open_table(KEYS_BY_EXPIRY)?;
        txn.open_table(IDENTITY)?;
    }
    txn.commit()?;
    Ok(())
}

/// The last entry applied to the state `txn` sees (`None` before any): written in the same
/// transaction as the entries' records, so it names exactly that state.
pub(super) fn applied_in(txn: &ReadTransaction) -> Result<Option<LogId<NodeId>>, BoxError> {
    match txn.open_table(META)?.get(KEY_APPLIED)? {
        Some(v) => Ok(codec::decode(v.value())?),
        None => Ok(None),
    }
}

/// The identity registry of the state `txn` sees (empty before any registration).
pub(super) fn registry_in(txn: &ReadTransaction) -> Result<Registry, BoxError> {
    match txn.open_table(IDENTITY)?.get(KEY_REGISTRY)? {
        Some(v) => Ok(codec::decode(v.value())?),
        None => Ok(Registry::default()),
    }
}

/// The flushes' count `db` keeps (`layer`): written with each flush and each install, zero in
/// a file without one. It only spreads the nodes' flushes, so one that cannot be read is no
/// reason not to open the state: it counts from zero too.
pub(super) fn flush_count(db: &Database) -> f64 {
    read_meta::<f64>(db, KEY_FLUSH_COUNT)
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the flushes' count in sm.redb is unreadable: from zero");
            None
        })
        .unwrap_or(0.0)
}

pub(super) fn read_meta<T: serde::de::DeserializeOwned>(
    db: &Database,
    key: &str,
) -> Result<Option<T>, BoxError> {
    codec::read_key(db, META, key)
}

pub(super) fn put_meta<T: Serialize>(
    txn: &redb::WriteTransaction,
    key: &str,
    v: &T,
) -> Result<(), BoxError> {
    let bytes = codec::encode(v)?;
    txn.open_table(META)?.insert(key, bytes.as_slice())?;
    Ok(())
}
