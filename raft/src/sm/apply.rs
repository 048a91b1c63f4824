//! Applying committed entries to `sm.redb`: transactions, entries and durability.
//!
//! `apply` is deterministic: it reads only the entry and the current state (timestamps were
//! put into the command by the proposer), so every replica computes the same records, the same
//! versions and the same answers. A whole batch of entries is one redb transaction, committed
//! atomically with `last_applied` and the membership, so the state and its position in the log
//! always agree. Those commits are fsynced only every [`DURABLE_EVERY`] entries (and for
//! snapshots): the Raft log is the durable record, and after a crash the entries since the
//! last durable commit are applied again from it.
//!
//! What one command does to the records is [`Command::apply`]'s, against [`Tables`], which
//! keeps the `created` index and the list of records the cache must forget in step with every
//! change; this file walks the entries and keeps the batch's bookkeeping (membership, last
//! applied, durability).
//!
//! [`Command::apply`]: crate::command::Command

use std::sync::atomic::Ordering;

use openraft::{Entry, EntryPayload, StorageIOError};
use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};

use super::state::{SinceDurable, StateMachine};
use super::tables::{
    order_key, put_meta, Membership, BY_CREATED, COOKIES, IDENTITY, KEYS, KEYS_BY_EXPIRY,
    KEY_APPLIED, KEY_MEMBERSHIP, KEY_REGISTRY,
};
use crate::codec;
use crate::command::{KeyRecord, Records};
use crate::identity::Registry;
use crate::record::Record;
use crate::types::{Response, TypeConfig};
use crate::{BoxError, StResult};

/// Records written between two durable (fsynced) state machine commits, at most.
///
/// A durable commit writes out every page the non-durable commits since the last one
/// dirtied, and `apply` (so every write waiting for its answer) waits for it. Its cost is
/// what changed, not how many entries passed: at 1,000 entries of a loaded group commit
/// (hundreds of commands each) it was tens of megabytes and hundreds of milliseconds, the
/// periodic write stall of issue 16; at 50 entries the stalls were small under load, but a
/// lightly loaded node (a command or two per entry) paid an fsync every 50 commands. So the
/// count is of records: each durable commit carries about the same work whatever the load.
/// 1,000 gave the smallest tail and cost a quarter of the throughput at 256 clients; 4,000
/// kept the throughput with p99 at etcd's or below (docs/benchmarks.md, "The write tail").
const DURABLE_RECORDS: u64 = 4000;

/// Entries between two durable commits, at most, whatever they wrote: bounds the entries a
/// restarted node applies again from the log (and covers entries that write no record).
const DURABLE_ENTRIES: u64 = 1000;

/// Whether a commit that brings the state to `last`, having written `records` more since
/// `since`, must be durable.
fn durable_due(since: SinceDurable, last: u64, records: u64) -> bool {
    since.records + records >= DURABLE_RECORDS || last >= since.index + DURABLE_ENTRIES
}

/// What one applied batch changed, for cache invalidation (and the identity registry, for
/// the network's view of it).
#[derive(Default)]
struct Touched {
    ids: Vec<String>,
    list: bool,
    registry: Option<Registry>,
}

/// The record tables of one write transaction, as commands see them. Every change goes
/// through [`Tables::put`] or [`Tables::remove`], which keep the `created` index in step with
/// the records and note the id for the cache, so no command can forget either.
struct Tables<'txn> {
    cookies: Table<'txn, &'static str, &'static [u8]>,
    by_created: Table<'txn, (u64, &'static str), ()>,
    keys: Table<'txn, &'static str, &'static [u8]>,
    keys_by_expiry: Table<'txn, (u64, &'static str), ()>,
    identity: Table<'txn, &'static str, &'static [u8]>,
    touched: Touched,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, BoxError> {
        Ok(Tables {
            cookies: txn.open_table(COOKIES)?,
            by_created: txn.open_table(BY_CREATED)?,
            keys: txn.open_table(KEYS)?,
            keys_by_expiry: txn.open_table(KEYS_BY_EXPIRY)?,
            identity: txn.open_table(IDENTITY)?,
            touched: Touched::default(),
        })
    }

    /// Any change to a record changes the list too. An update in place removes and puts the
    /// same id: note it once.
    fn touch(&mut self, id: &str) {
        if self.touched.ids.last().map(String::as_str) != Some(id) {
            self.touched.ids.push(id.to_owned());
        }
        self.touched.list = true;
    }
}

impl Records for Tables<'_> {
    fn exists(&self, id: &str) -> Result<bool, BoxError> {
        Ok(self.cookies.get(id)?.is_some())
    }

    fn get(&self, id: &str) -> Result<Option<Record>, BoxError> {
        let row = self.cookies.get(id)?;
        match row {
            Some(v) => Ok(Some(
                Record::decode(v.value()).ok_or("corrupt record in the state machine")?,
            )),
            None => Ok(None),
        }
    }

    /// Store `rec` under `id` and index it.
    fn put(&mut self, id: &str, rec: &Record) -> Result<(), BoxError> {
        self.cookies.insert(id, rec.encode().as_slice())?;
        self.by_created.insert((order_key(rec.created), id), ())?;
        self.touch(id);
        Ok(())
    }

    /// Remove `id` (whose record is `rec`) and its index entry.
    fn remove(&mut self, id: &str, rec: &Record) -> Result<(), BoxError> {
        self.cookies.remove(id)?;
        self.by_created.remove((order_key(rec.created), id))?;
        self.touch(id);
        Ok(())
    }

    fn key(&self, key: &str) -> Result<Option<KeyRecord>, BoxError> {
        let row = self.keys.get(key)?;
        Ok(match row {
            Some(v) => Some(codec::decode(v.value())?),
            None => None,
        })
    }

    fn put_key(&mut self, key: &str, rec: &KeyRecord) -> Result<(), BoxError> {
        if let Some(old) = self.key(key)? {
            self.keys_by_expiry.remove((old.expires_ms, key))?;
        }
        self.keys.insert(key, codec::encode(rec)?.as_slice())?;
        self.keys_by_expiry.insert((rec.expires_ms, key), ())?;
        Ok(())
    }

    fn expire_keys(&mut self, now_ms: u64, max: usize) -> Result<(), BoxError> {
        let expired: Vec<(u64, String)> = self
            .keys_by_expiry
            .range(..(now_ms.saturating_add(1), ""))?
            .take(max)
            .map(|row| row.map(|(k, _)| (k.value().0, k.value().1.to_owned())))
            .collect::<Result<_, _>>()?;
        for (at, key) in expired {
            self.keys_by_expiry.remove((at, key.as_str()))?;
            self.keys.remove(key.as_str())?;
        }
        Ok(())
    }

    fn registry(&self) -> Result<Registry, BoxError> {
        if let Some(r) = &self.touched.registry {
            return Ok(r.clone());
        }
        let row = self.identity.get(KEY_REGISTRY)?;
        Ok(match row {
            Some(v) => codec::decode(v.value())?,
            None => Registry::default(),
        })
    }

    fn set_registry(&mut self, registry: &Registry) -> Result<(), BoxError> {
        self.identity
            .insert(KEY_REGISTRY, codec::encode(registry)?.as_slice())?;
        self.touched.registry = Some(registry.clone());
        Ok(())
    }
}

/// Apply `entries` in one transaction; durable when [`durable_due`] says so. Returns
/// the responses, what changed, the last applied index and whether this commit was durable.
fn apply_entries(
    db: &Database,
    entries: Vec<Entry<TypeConfig>>,
    since: SinceDurable,
) -> Result<(Vec<Response>, Touched, u64, bool), BoxError> {
    let mut responses = Vec::with_capacity(entries.len());
    let mut last = None;
    let mut txn = db.begin_write()?;
    // The log is durable, so the state machine need not be: after a crash it resumes from
    // its last durable commit and openraft applies the committed entries again. Snapshots
    // are committed durably and logs are purged only up to a snapshot, so the entries to
    // re-apply are always still in the log. A durable commit every DURABLE_RECORDS records
    // or DURABLE_ENTRIES entries bounds that replay.
    txn.set_durability(Durability::None)?;
    let touched = {
        let mut tables = Tables::open(&txn)?;
        for entry in entries {
            let index = entry.log_id.index;
            last = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => responses.push(Response::default()),
                EntryPayload::Normal(req) => {
                    let mut results = Vec::with_capacity(req.cmds.len());
                    for cmd in req.cmds {
                        // A record's version is the index of the entry that last wrote it.
                        results.push(cmd.apply(&mut tables, index)?);
                    }
                    responses.push(Response { results });
                }
                EntryPayload::Membership(m) => {
                    // A node that left is forgotten, so a replacement can register its id.
                    let mut registry = tables.registry()?;
                    if registry.retain(|id| m.nodes().any(|(n, _)| *n == id)) {
                        tables.set_registry(&registry)?;
                    }
                    put_meta(
                        &txn,
                        KEY_MEMBERSHIP,
                        &Membership::new(Some(entry.log_id), m),
                    )?;
                    responses.push(Response::default());
                }
            }
        }
        tables.touched
    };
    put_meta(&txn, KEY_APPLIED, &last)?;
    let last_index = last.map_or(0, |l| l.index);
    // A registry change is made durable at once (it is rare): a node that restarts must
    // still name every member's incarnation, or it could not tell a wiped one.
    let durable =
        durable_due(since, last_index, touched.ids.len() as u64) || touched.registry.is_some();
    if durable {
        txn.set_durability(Durability::Immediate)?;
    }
    txn.commit()?;
    Ok((responses, touched, last_index, durable))
}

impl StateMachine {
    /// openraft's `apply`: the transaction on the blocking pool, then the cache and the
    /// applied index brought up to date.
    pub(super) async fn apply_batch(
        &mut self,
        entries: Vec<Entry<TypeConfig>>,
    ) -> StResult<Vec<Response>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let db = self.db.get();
        let since = self.since_durable;
        let (responses, touched, last, durable) =
            tokio::task::spawn_blocking(move || apply_entries(&db, entries, since))
                .await
                .map_err(|e| StorageIOError::write_state_machine(&e))?
                .map_err(|e| StorageIOError::write_state_machine(&crate::io_err(e)))?;
        // Committed: now make the cache forget what changed, before openraft publishes the
        // new last_applied (it does so after we return).
        self.cache
            .invalidate(touched.ids.iter().map(String::as_str), touched.list);
        if let Some(registry) = touched.registry {
            self.identity.set_registry(registry);
        }
        self.applied.store(last, Ordering::SeqCst);
        self.since_durable = if durable {
            SinceDurable {
                index: last,
                records: 0,
            }
        } else {
            SinceDurable {
                index: self.since_durable.index,
                records: self.since_durable.records + touched.ids.len() as u64,
            }
        };
        Ok(responses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Durability follows what was written: many records in few entries (a loaded group
    /// commit) and few records in many entries (a light load) both end up durable, each
    /// after about the same work.
    #[test]
    fn a_commit_is_durable_after_enough_records_or_entries() {
        let due =
            |index, records, last, more| durable_due(SinceDurable { index, records }, last, more);
        assert!(!due(100, 0, 101, 1));
        assert!(!due(100, DURABLE_RECORDS - 2, 101, 1));
        assert!(
            due(100, DURABLE_RECORDS - 1, 101, 1),
            "records reach the bound"
        );
        assert!(due(100, 0, 102, DURABLE_RECORDS), "one large batch");
        assert!(!due(100, 0, 100 + DURABLE_ENTRIES - 1, 0));
        assert!(
            due(100, 0, 100 + DURABLE_ENTRIES, 0),
            "entries reach the bound"
        );
    }
}
