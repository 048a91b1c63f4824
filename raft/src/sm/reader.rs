//! Reads of the applied state for the HTTP layer: [`StoreReader`].
//!
//! A reader shares the state machine's database, cache and applied index but never writes
//! records, so the HTTP layer holds one without holding the state machine (which openraft
//! owns). One record and the whole list go through the cache; pages and counts read redb.

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use redb::{Database, ReadOnlyTable, ReadableDatabase, ReadableTableMetadata};

use super::state::{SnapshotCounts, StateMachine};
use super::tables::{order_key, BY_CREATED, COOKIES};
use crate::cache::{Cache, CachedRecord};
use crate::record::Record;
use crate::BoxError;

/// A cheap, cloneable read handle over the same state, for the HTTP layer.
#[derive(Clone)]
pub struct StoreReader {
    db: Arc<Database>,
    cache: Arc<Cache>,
    applied: Arc<AtomicU64>,
    snapshots: Arc<SnapshotCounts>,
}

/// Where a read was served from, for the `X-Cache` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
        }
    }
}

impl StateMachine {
    pub fn reader(&self) -> StoreReader {
        StoreReader {
            db: self.db.clone(),
            cache: self.cache.clone(),
            applied: self.applied.clone(),
            snapshots: self.snapshots.clone(),
        }
    }
}

fn get_readonly(table: &ReadOnlyTable<&str, &[u8]>, id: &str) -> Result<Option<Record>, BoxError> {
    match table.get(id)? {
        Some(v) => Ok(Some(
            Record::decode(v.value()).ok_or("corrupt record in the state machine")?,
        )),
        None => Ok(None),
    }
}

impl StoreReader {
    /// The state machine's database, for a backup's read transaction (`backup.rs`).
    pub(super) fn db(&self) -> &Database {
        &self.db
    }

    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// Snapshots installed from a leader and built locally since the process started.
    pub fn snapshot_counts(&self) -> &SnapshotCounts {
        &self.snapshots
    }

    /// The index of the last entry this node applied.
    pub fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }

    /// One record from the applied state, through the cache.
    pub fn get(&self, id: &str) -> Result<(Option<CachedRecord>, CacheStatus), BoxError> {
        if let Some(hit) = self.cache.get(id) {
            return Ok((Some(hit), CacheStatus::Hit));
        }
        let ticket = self.cache.ticket(id);
        let txn = self.db.begin_read()?;
        let table = txn.open_table(COOKIES)?;
        let rec = match table.get(id)? {
            Some(v) => Record::decode(v.value()).ok_or("corrupt record in the state machine")?,
            None => return Ok((None, CacheStatus::Miss)),
        };
        let cached = CachedRecord {
            json: Bytes::from(rec.json),
            version: rec.version,
        };
        self.cache.fill(id, ticket, cached.clone());
        Ok((Some(cached), CacheStatus::Miss))
    }

    /// The whole `GET /cookies` reply body, newest `created` first, ties by id.
    pub fn list(&self) -> Result<(Bytes, CacheStatus), BoxError> {
        if let Some(hit) = self.cache.get_list() {
            return Ok((hit, CacheStatus::Hit));
        }
        let ticket = self.cache.list_ticket();
        // The whole list is the unbounded page: one ordering, kept by the index, serves both.
        let (body, _) = self
            .page(usize::MAX, None)?
            .ok_or("the unbounded page has no cursor to miss")?;
        self.cache.fill_list(ticket, body.clone());
        Ok((body, CacheStatus::Miss))
    }

    /// One page of the list order (newest `created` first, ties by id): at most `limit`
    /// records after the record `after`. Returns the body and, when more may follow, the id
    /// to continue after; `None` when `after` names no record. Costs a range scan of the
    /// index, not a sort of the whole store.
    pub fn page(
        &self,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Option<(Bytes, Option<String>)>, BoxError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(COOKIES)?;
        let order = txn.open_table(BY_CREATED)?;
        let start_key = match after {
            None => None,
            Some(a) => match get_readonly(&table, a)? {
                Some(rec) => Some((order_key(rec.created), a)),
                None => return Ok(None),
            },
        };
        let range = match start_key {
            Some(k) => order.range::<(u64, &str)>((Bound::Excluded(k), Bound::Unbounded))?,
            None => order.range::<(u64, &str)>(..)?,
        };
        let mut body = b"{\"cookies\":[".to_vec();
        let mut last: Option<String> = None;
        let mut more = false;
        for (count, row) in range.enumerate() {
            let (key, _) = row?;
            if count == limit {
                more = true;
                break;
            }
            let (_, id) = key.value();
            let rec = get_readonly(&table, id)?.ok_or("index names a missing record")?;
            if count > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&rec.json);
            last = Some(id.to_owned());
        }
        body.extend_from_slice(b"]");
        let next = if more { last } else { None };
        if let Some(n) = &next {
            body.extend_from_slice(b",\"next_after\":");
            body.extend_from_slice(serde_json::to_string(n)?.as_bytes());
        }
        body.push(b'}');
        Ok(Some((Bytes::from(body), next)))
    }

    /// Number of stored records.
    pub fn count(&self) -> Result<u64, BoxError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(COOKIES)?.len()?)
    }
}
