//! The replicated state machine: cookies in `sm.redb`, applied in log order.
//!
//! `apply` is deterministic: it reads only the entry and the current state (timestamps were
//! put into the command by the proposer), so every replica computes the same records, the same
//! versions and the same answers. A whole batch of entries is one redb transaction, committed
//! atomically with `last_applied` and the membership, so the state and its position in the log
//! always agree. Those commits are fsynced only every [`DURABLE_EVERY`] entries (and for
//! snapshots): the Raft log is the durable record, and after a crash the entries since the
//! last durable commit are applied again from it. A storage error is returned to openraft,
//! which stops the node: answering a client with it instead would let replicas diverge.

use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageIOError, StoredMembership,
};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition,
};
use serde::{Deserialize, Serialize};

use crate::cache::{Cache, CachedRecord};
use crate::codec;
use crate::record::{self, Record};
use crate::{BoxError, StResult};
use files::SnapshotFiles;

pub mod files;
use crate::types::{CmdResult, Command, CookieNode, NodeId, Response, TypeConfig};

const COOKIES: TableDefinition<&str, &[u8]> = TableDefinition::new("cookies");
/// The list order as an index: `(order_key(created), id)`, so a page of `GET /cookies` is a
/// range scan instead of a sort of every record.
const BY_CREATED: TableDefinition<(u64, &str), ()> = TableDefinition::new("cookies_by_created");

/// Newest `created` first: map the signed sort key to an unsigned one, then invert it.
fn order_key(created: i64) -> u64 {
    u64::MAX - ((created as u64) ^ (1 << 63))
}
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");

const KEY_APPLIED: &str = "last_applied";
const KEY_MEMBERSHIP: &str = "membership";
/// The current snapshot: its meta and the file holding its data ([`SnapshotPointer`]).
const KEY_SNAPSHOT_FILE: &str = "snapshot_file";
/// Where earlier versions kept the whole snapshot, data included; migrated at open.
const KEY_SNAPSHOT_LEGACY: &str = "snapshot";

type Membership = StoredMembership<NodeId, CookieNode>;
type Meta = SnapshotMeta<NodeId, CookieNode>;

/// What a snapshot's bytes hold: every stored row, verbatim.
#[derive(Serialize, Deserialize)]
struct SnapshotRows {
    rows: Vec<(String, Vec<u8>)>,
}

/// A whole snapshot as earlier versions kept it in `sm_meta`.
#[derive(Serialize, Deserialize)]
struct LegacySnapshot {
    meta: Meta,
    data: Vec<u8>,
}

/// The current snapshot as kept in `sm_meta`: the data is in `snapshots/<file>`
/// ([`files`]).
#[derive(Serialize, Deserialize)]
struct SnapshotPointer {
    meta: Meta,
    file: String,
    len: u64,
}

/// How many snapshots this node installed (sent by a leader) and built (its own), for the
/// `raft_snapshot_*_total` metrics: a follower that needed a snapshot to catch up shows here.
#[derive(Debug, Default)]
pub struct SnapshotCounts {
    pub installed: AtomicU64,
    pub built: AtomicU64,
}

/// The state machine handed to openraft.
pub struct StateMachine {
    db: Arc<Database>,
    cache: Arc<Cache>,
    applied: Arc<AtomicU64>,
    snapshots: Arc<SnapshotCounts>,
    files: Arc<SnapshotFiles>,
    /// The last index committed durably by `apply`.
    last_durable: u64,
}

/// A cheap, cloneable read handle over the same state, for the HTTP layer.
#[derive(Clone)]
pub struct StoreReader {
    db: Arc<Database>,
    cache: Arc<Cache>,
    applied: Arc<AtomicU64>,
    snapshots: Arc<SnapshotCounts>,
}

/// Builds snapshots from a consistent read transaction while `apply` goes on.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    snapshots: Arc<SnapshotCounts>,
    files: Arc<SnapshotFiles>,
}

impl StateMachine {
    /// Open or create `dir/sm.redb`.
    pub fn open(dir: &Path, cache: Arc<Cache>) -> Result<Self, BoxError> {
        let db = Database::create(dir.join("sm.redb"))?;
        let txn = db.begin_write()?;
        {
            txn.open_table(COOKIES)?;
            txn.open_table(BY_CREATED)?;
            txn.open_table(META)?;
        }
        txn.commit()?;
        let db = Arc::new(db);
        let files = Arc::new(SnapshotFiles::open(dir)?);
        migrate_legacy_snapshot(&db, &files)?;
        // Files no pointer names: a crash came between writing one and committing it.
        let current = read_meta::<SnapshotPointer>(&db, KEY_SNAPSHOT_FILE)?.map(|p| p.file);
        files.remove_others(current.as_deref())?;
        let applied = read_meta::<Option<LogId<NodeId>>>(&db, KEY_APPLIED)?
            .flatten()
            .map_or(0, |l| l.index);
        Ok(StateMachine {
            db,
            cache,
            applied: Arc::new(AtomicU64::new(applied)),
            snapshots: Arc::default(),
            files,
            last_durable: applied,
        })
    }

    pub fn reader(&self) -> StoreReader {
        StoreReader {
            db: self.db.clone(),
            cache: self.cache.clone(),
            applied: self.applied.clone(),
            snapshots: self.snapshots.clone(),
        }
    }
}

/// Move a snapshot kept whole in `sm_meta` (earlier versions) into a file.
fn migrate_legacy_snapshot(db: &Database, files: &SnapshotFiles) -> Result<(), BoxError> {
    let Some(old) = read_meta::<LegacySnapshot>(db, KEY_SNAPSHOT_LEGACY)? else {
        return Ok(());
    };
    let file = SnapshotFiles::name_for(&old.meta.snapshot_id);
    files.write(&file, &old.data)?;
    let txn = db.begin_write()?;
    put_meta(
        &txn,
        KEY_SNAPSHOT_FILE,
        &SnapshotPointer {
            meta: old.meta,
            file,
            len: old.data.len() as u64,
        },
    )?;
    txn.open_table(META)?.remove(KEY_SNAPSHOT_LEGACY)?;
    txn.commit()?;
    Ok(())
}

fn read_meta<T: serde::de::DeserializeOwned>(
    db: &Database,
    key: &str,
) -> Result<Option<T>, BoxError> {
    codec::read_key(db, META, key)
}

fn put_meta<T: Serialize>(txn: &redb::WriteTransaction, key: &str, v: &T) -> Result<(), BoxError> {
    let bytes = codec::encode(v)?;
    txn.open_table(META)?.insert(key, bytes.as_slice())?;
    Ok(())
}

/// What one applied batch changed, for cache invalidation.
#[derive(Default)]
struct Touched {
    ids: Vec<String>,
    list: bool,
}

fn get_record(table: &Table<&str, &[u8]>, id: &str) -> Result<Option<Record>, BoxError> {
    let row = table.get(id)?;
    match row {
        Some(v) => Ok(Some(
            Record::decode(v.value()).ok_or("corrupt record in the state machine")?,
        )),
        None => Ok(None),
    }
}

fn get_readonly(
    table: &redb::ReadOnlyTable<&str, &[u8]>,
    id: &str,
) -> Result<Option<Record>, BoxError> {
    match table.get(id)? {
        Some(v) => Ok(Some(
            Record::decode(v.value()).ok_or("corrupt record in the state machine")?,
        )),
        None => Ok(None),
    }
}

/// Apply one command at log index `index`. All decisions happen here, against the state
/// as of this entry: that is what makes existence checks, merges and `If-Match` atomic.
/// Store `rec` under `id` and index it.
fn put(
    table: &mut Table<&str, &[u8]>,
    order: &mut Table<(u64, &str), ()>,
    id: &str,
    rec: &Record,
) -> Result<(), BoxError> {
    table.insert(id, rec.encode().as_slice())?;
    order.insert((order_key(rec.created), id), ())?;
    Ok(())
}

/// Remove `id` (whose record is `rec`) and its index entry.
fn remove(
    table: &mut Table<&str, &[u8]>,
    order: &mut Table<(u64, &str), ()>,
    id: &str,
    rec: &Record,
) -> Result<(), BoxError> {
    table.remove(id)?;
    order.remove((order_key(rec.created), id))?;
    Ok(())
}

fn apply_command(
    table: &mut Table<&str, &[u8]>,
    order: &mut Table<(u64, &str), ()>,
    index: u64,
    cmd: Command,
    touched: &mut Touched,
) -> Result<CmdResult, BoxError> {
    Ok(match cmd {
        Command::Create { id, object } => {
            if table.get(id.as_str())?.is_some() {
                return Ok(CmdResult::AlreadyExists);
            }
            let rec = Record::new(index, object.into_bytes());
            put(table, order, &id, &rec)?;
            touched.ids.push(id);
            touched.list = true;
            CmdResult::Stored {
                object: String::from_utf8(rec.json)?,
                version: index,
            }
        }
        Command::Update {
            id,
            patch,
            rename_to,
            now,
            if_match,
        } => {
            let Some(current) = get_record(table, &id)? else {
                return Ok(if if_match.is_some() {
                    CmdResult::PreconditionFailed
                } else {
                    CmdResult::NotFound
                });
            };
            if if_match.is_some_and(|v| v != current.version) {
                return Ok(CmdResult::PreconditionFailed);
            }
            let merged = match record::merge(&current.json, &patch, now) {
                Ok(m) => m,
                Err(e) => return Ok(CmdResult::Invalid(e)),
            };
            let target = rename_to.unwrap_or_else(|| id.clone());
            if target != id && table.get(target.as_str())?.is_some() {
                return Ok(CmdResult::AlreadyExists);
            }
            remove(table, order, &id, &current)?;
            let rec = Record::new(index, merged);
            put(table, order, &target, &rec)?;
            if target != id {
                touched.ids.push(target);
            }
            touched.ids.push(id);
            touched.list = true;
            CmdResult::Stored {
                object: String::from_utf8(rec.json)?,
                version: index,
            }
        }
        Command::Delete { id, if_match } => {
            let current = get_record(table, &id)?;
            if let Some(expected) = if_match {
                if current.as_ref().map(|r| r.version) != Some(expected) {
                    return Ok(CmdResult::PreconditionFailed);
                }
            }
            if let Some(rec) = current {
                remove(table, order, &id, &rec)?;
                touched.ids.push(id);
                touched.list = true;
            }
            CmdResult::Deleted
        }
    })
}

/// Entries applied between two durable (fsynced) state machine commits.
const DURABLE_EVERY: u64 = 1000;

fn apply_entries(
    db: &Database,
    entries: Vec<Entry<TypeConfig>>,
    last_durable: u64,
) -> Result<(Vec<Response>, Touched, u64, bool), BoxError> {
    let mut touched = Touched::default();
    let mut responses = Vec::with_capacity(entries.len());
    let mut last = None;
    let mut txn = db.begin_write()?;
    // The log is durable, so the state machine need not be: after a crash it resumes from
    // its last durable commit and openraft applies the committed entries again. Snapshots
    // are committed durably and logs are purged only up to a snapshot, so the entries to
    // re-apply are always still in the log. A durable commit every DURABLE_EVERY entries
    // bounds that replay.
    let first = entries.first().map_or(0, |e| e.log_id.index);
    let durable = first >= last_durable + DURABLE_EVERY;
    if !durable {
        txn.set_durability(Durability::None)?;
    }
    {
        let mut table = txn.open_table(COOKIES)?;
        let mut order = txn.open_table(BY_CREATED)?;
        for entry in entries {
            let index = entry.log_id.index;
            last = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => responses.push(Response::default()),
                EntryPayload::Normal(req) => {
                    let mut results = Vec::with_capacity(req.cmds.len());
                    for cmd in req.cmds {
                        results.push(apply_command(
                            &mut table,
                            &mut order,
                            index,
                            cmd,
                            &mut touched,
                        )?);
                    }
                    responses.push(Response { results });
                }
                EntryPayload::Membership(m) => {
                    put_meta(
                        &txn,
                        KEY_MEMBERSHIP,
                        &Membership::new(Some(entry.log_id), m),
                    )?;
                    responses.push(Response::default());
                }
            }
        }
    }
    put_meta(&txn, KEY_APPLIED, &last)?;
    txn.commit()?;
    Ok((responses, touched, last.map_or(0, |l| l.index), durable))
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> StResult<(Option<LogId<NodeId>>, Membership)> {
        let applied = read_meta::<Option<LogId<NodeId>>>(&self.db, KEY_APPLIED)
            .map_err(|e| StorageIOError::read_state_machine(&crate::io_err(e)))?
            .flatten();
        let membership = read_meta::<Membership>(&self.db, KEY_MEMBERSHIP)
            .map_err(|e| StorageIOError::read_state_machine(&crate::io_err(e)))?
            .unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> StResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let db = self.db.clone();
        let last_durable = self.last_durable;
        let (responses, touched, last, durable) =
            tokio::task::spawn_blocking(move || apply_entries(&db, entries, last_durable))
                .await
                .map_err(|e| StorageIOError::write_state_machine(&e))?
                .map_err(|e| StorageIOError::write_state_machine(&crate::io_err(e)))?;
        // Committed: now make the cache forget what changed, before openraft publishes the
        // new last_applied (it does so after we return).
        self.cache
            .invalidate(touched.ids.iter().map(String::as_str), touched.list);
        self.applied.store(last, Ordering::SeqCst);
        if durable {
            self.last_durable = last;
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            snapshots: self.snapshots.clone(),
            files: self.files.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StResult<()> {
        let data = snapshot.into_inner();
        let sig = Some(meta.signature());
        let rows: SnapshotRows =
            codec::decode(&data).map_err(|e| StorageIOError::read_snapshot(sig.clone(), &e))?;
        let meta = meta.clone();
        let db = self.db.clone();
        let files = self.files.clone();
        let applied = meta.last_log_id.map_or(0, |l| l.index);
        tokio::task::spawn_blocking(move || -> Result<(), BoxError> {
            let file = SnapshotFiles::name_for(&meta.snapshot_id);
            files.write(&file, &data)?;
            let _switch = files.switch();
            let txn = db.begin_write()?;
            {
                // Replace, never merge: a row absent from the snapshot was deleted.
                let mut table = txn.open_table(COOKIES)?;
                let mut order = txn.open_table(BY_CREATED)?;
                table.retain(|_, _| false)?;
                order.retain(|_, _| false)?;
                // Rows arrive in id order (a table scan), so the records go in as appends;
                // the index is sorted first for the same reason (random-order inserts into
                // a B-tree touch a different page each time). Values are stored verbatim.
                let mut index = Vec::with_capacity(rows.rows.len());
                for (id, value) in &rows.rows {
                    let created = Record::decode(value)
                        .ok_or("corrupt record in the snapshot")?
                        .created;
                    table.insert(id.as_str(), value.as_slice())?;
                    index.push((order_key(created), id.as_str()));
                }
                index.sort_unstable();
                for key in index {
                    order.insert(key, ())?;
                }
            }
            put_meta(&txn, KEY_APPLIED, &meta.last_log_id)?;
            put_meta(&txn, KEY_MEMBERSHIP, &meta.last_membership)?;
            let len = data.len() as u64;
            put_meta(
                &txn,
                KEY_SNAPSHOT_FILE,
                &SnapshotPointer {
                    meta,
                    file: file.clone(),
                    len,
                },
            )?;
            txn.commit()?;
            files.remove_others(Some(&file))?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?
        .map_err(|e| StorageIOError::write_snapshot(sig, &crate::io_err(e)))?;
        self.cache.invalidate_all();
        self.applied.store(applied, Ordering::SeqCst);
        self.last_durable = applied;
        self.snapshots.installed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StResult<Option<Snapshot<TypeConfig>>> {
        let db = self.db.clone();
        let files = self.files.clone();
        let current = tokio::task::spawn_blocking(move || -> Result<_, BoxError> {
            // Under the switch lock, so the file named is not replaced while it is read.
            let _switch = files.switch();
            let Some(p) = read_meta::<SnapshotPointer>(&db, KEY_SNAPSHOT_FILE)? else {
                return Ok(None);
            };
            let data = files.read(&p.file, p.len)?;
            Ok(Some((p.meta, data)))
        })
        .await
        .map_err(|e| StorageIOError::read_snapshot(None, &e))?
        .map_err(|e| StorageIOError::read_snapshot(None, &crate::io_err(e)))?;
        Ok(current.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

static SNAPSHOT_SEQ: AtomicU64 = AtomicU64::new(0);

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StResult<Snapshot<TypeConfig>> {
        let db = self.db.clone();
        let files = self.files.clone();
        let built = tokio::task::spawn_blocking(move || -> Result<(Meta, Vec<u8>), BoxError> {
            // One read transaction: rows, last_applied and membership from the same instant.
            let (meta, data) = {
                let txn = db.begin_read()?;
                let meta_t = txn.open_table(META)?;
                let decode_meta = |key: &str| -> Result<Option<Vec<u8>>, BoxError> {
                    Ok(meta_t.get(key)?.map(|v| v.value().to_vec()))
                };
                let last_log_id: Option<LogId<NodeId>> = match decode_meta(KEY_APPLIED)? {
                    Some(b) => codec::decode(&b)?,
                    None => None,
                };
                let last_membership: Membership = match decode_meta(KEY_MEMBERSHIP)? {
                    Some(b) => codec::decode(&b)?,
                    None => Membership::default(),
                };
                let table = txn.open_table(COOKIES)?;
                let mut rows = Vec::new();
                for row in table.iter()? {
                    let (k, v) = row?;
                    rows.push((k.value().to_owned(), v.value().to_vec()));
                }
                let data = codec::encode(&SnapshotRows { rows })?;
                let micros = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros());
                let seq = SNAPSHOT_SEQ.fetch_add(1, Ordering::Relaxed);
                let snapshot_id = format!(
                    "{}-{}-{micros}-{seq}",
                    last_log_id.map_or(0, |l| l.leader_id.term),
                    last_log_id.map_or(0, |l| l.index)
                );
                (
                    Meta {
                        last_log_id,
                        last_membership,
                        snapshot_id,
                    },
                    data,
                )
            };
            // The data goes to its own file with no lock held; only the pointer to it
            // takes redb's write lock, briefly (see [`files`]).
            let file = SnapshotFiles::name_for(&meta.snapshot_id);
            files.write(&file, &data)?;
            let _switch = files.switch();
            let current = read_meta::<SnapshotPointer>(&db, KEY_SNAPSHOT_FILE)?;
            if let Some(c) = current.filter(|c| c.meta.last_log_id > meta.last_log_id) {
                // An installed snapshot overtook this build: keep the newer one current.
                if c.file != file {
                    files.remove(&file)?;
                }
                return Ok((meta, data));
            }
            let txn = db.begin_write()?;
            let len = data.len() as u64;
            let pointer = SnapshotPointer {
                meta: meta.clone(),
                file: file.clone(),
                len,
            };
            put_meta(&txn, KEY_SNAPSHOT_FILE, &pointer)?;
            txn.commit()?;
            files.remove_others(Some(&file))?;
            Ok((meta, data))
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, &e))?
        .map_err(|e| StorageIOError::write_snapshot(None, &crate::io_err(e)))?;
        self.snapshots.built.fetch_add(1, Ordering::Relaxed);
        Ok(Snapshot {
            meta: built.0,
            snapshot: Box::new(Cursor::new(built.1)),
        })
    }
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

impl StoreReader {
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
        use std::ops::Bound;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> StateMachine {
        StateMachine::open(dir, Arc::new(Cache::new(Default::default()))).unwrap()
    }

    fn snapshot_files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn a_built_snapshot_survives_a_restart_and_only_it_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let first = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let second = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_ne!(first.meta.snapshot_id, second.meta.snapshot_id);
        // A file left by a crash between writing and committing its pointer.
        std::fs::write(dir.path().join("snapshots/orphan.snap"), b"x").unwrap();
        drop(sm);

        let mut sm = open(dir.path());
        assert_eq!(
            snapshot_files(dir.path()),
            [SnapshotFiles::name_for(&second.meta.snapshot_id)]
        );
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, second.meta);
        assert_eq!(current.snapshot.into_inner(), second.snapshot.into_inner());
    }

    #[tokio::test]
    async fn a_snapshot_kept_whole_in_sm_meta_is_moved_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let sm = open(dir.path());
        let meta = Meta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(2, 1), 40)),
            last_membership: Membership::default(),
            snapshot_id: "2-40-1-0".into(),
        };
        let data = codec::encode(&SnapshotRows { rows: vec![] }).unwrap();
        let txn = sm.db.begin_write().unwrap();
        put_meta(
            &txn,
            KEY_SNAPSHOT_LEGACY,
            &LegacySnapshot {
                meta: meta.clone(),
                data: data.clone(),
            },
        )
        .unwrap();
        txn.commit().unwrap();
        drop(sm);

        let mut sm = open(dir.path());
        assert!(read_meta::<LegacySnapshot>(&sm.db, KEY_SNAPSHOT_LEGACY)
            .unwrap()
            .is_none());
        assert_eq!(snapshot_files(dir.path()), ["2-40-1-0.snap"]);
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, meta);
        assert_eq!(current.snapshot.into_inner(), data);
    }
}
