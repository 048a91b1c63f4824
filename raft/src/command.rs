//! What a command is: one client write, from the request body that proposes it to the record
//! change that applying it makes.
//!
//! All of it lives here so the two ends cannot drift apart: the constructors
//! ([`Command::create`], [`Command::update`], [`Command::delete`]) hold the contract's
//! validation and fill in everything non-deterministic (timestamps) before the command enters
//! the log; `Command::apply` decides, against the state as of its log entry, what the
//! command does to the records and what it answers ([`CmdResult`]). The transaction around it
//! and the bookkeeping of a batch are [`crate::sm`]'s.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::flat_json::Flat;
use crate::identity::{NodeId, Registry};
use crate::record::{self, Record};
use crate::BoxError;

/// One client write, fully decided by the proposing node except for what depends on the
/// current state (existence, version, merge), which `apply` decides. Everything
/// non-deterministic (timestamps) is already filled in here.
///
/// JSON travels as text: bincode cannot carry `serde_json::Value` (it needs
/// `deserialize_any`), and text is what the store keeps anyway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Insert a new record unless `id` exists. `object` is the complete record (a JSON object
    /// with `created` and `last_used` already set by the proposer).
    Create { id: String, object: String },
    /// Merge `patch` (a JSON object) into record `id`, set `last_used = now`; rename when the
    /// patch carries a different `cookie`. With `if_match`, only if the version matches.
    Update {
        id: String,
        patch: String,
        /// The patch's `cookie` field when it differs from `id` (a rename).
        rename_to: Option<String>,
        now: u64,
        if_match: Option<u64>,
    },
    /// Remove record `id` (absent is fine). With `if_match`, only if it exists at that version.
    Delete { id: String, if_match: Option<u64> },
    /// A write sent with an `Idempotency-Key`: applied at most once per key. The key, the
    /// request's fingerprint and the answer are recorded in the same apply as the write, so
    /// every replica agrees; a later command with the same key gets that answer again (or
    /// [`CmdResult::KeyReused`] when its fingerprint differs) until the record expires.
    /// Expiry is by log time: `now_ms` and `expires_ms` are set by the proposer and carried
    /// in the log, so every replica decides the same. (Last variant: earlier entries keep
    /// their encoding.)
    Keyed {
        key: String,
        fingerprint: [u8; 32],
        now_ms: u64,
        expires_ms: u64,
        cmd: Box<Command>,
    },
    /// Record the cluster's id and members' incarnations in the registry
    /// ([`crate::identity`]), proposed by the leader, never by a client: the first cluster
    /// id and each member's first incarnation win. (Last variant, as above.)
    Register {
        cluster: u64,
        members: Vec<(NodeId, u64)>,
    },
    /// Forget at most `max` (and at most [`EXPIRE_MAX`]) idempotency keys whose retention
    /// ended at or before log time `now_ms`, oldest first. Proposed by the leader, never by
    /// a client, while the state holds keys that are due: a keyed write sweeps a few due keys
    /// itself, but where keyed writes stop coming, their keys would otherwise stay for good.
    /// (Last variant, as above.)
    Expire { now_ms: u64, max: u32 },
}

/// The most idempotency keys one [`Command::Expire`] forgets: its apply stays a few
/// milliseconds, whatever a proposer asks.
pub const EXPIRE_MAX: u32 = 4096;

/// What is kept for one idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub fingerprint: [u8; 32],
    /// Log time (ms) from which the key is free again.
    pub expires_ms: u64,
    /// The first answer, given again to every retry.
    pub result: CmdResult,
}

/// The outcome of one command, decided by `apply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmdResult {
    /// Created or updated: the stored object and its new version.
    Stored { object: String, version: u64 },
    /// Deleted (or already absent).
    Deleted,
    /// The record does not exist (update).
    NotFound,
    /// The id (or the rename target) already exists.
    AlreadyExists,
    /// `If-Match` did not match the stored version, or the record is absent.
    PreconditionFailed,
    /// The command could not be applied (e.g. a patch that is not an object). Proposers
    /// validate first, so this only guards determinism: every replica answers the same.
    Invalid(String),
    /// A retry of a keyed write: nothing was applied again; this is the first answer.
    Replayed(Box<CmdResult>),
    /// The idempotency key was used before with a different request: nothing was applied.
    KeyReused,
    /// A registration was applied (or changed nothing: the registry already had it).
    Registered,
    /// An expiry was applied: the number of idempotency keys it forgot.
    Expired(u64),
    /// The record would be over [`MAX_RECORD_BYTES`]: nothing was applied. (Last, so that
    /// the variants before it keep their encoding.)
    TooLarge,
}

/// A request body the contract refuses; `to_string()` is the message the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// The body is not a JSON object.
    #[error("Invalid JSON")]
    Json,
    /// `cookie` is absent or null (create).
    #[error("Cookie field is required")]
    CookieRequired,
    #[error("Cookie must be a string")]
    CookieNotString,
    #[error("Cookie cannot be empty")]
    CookieEmpty,
    /// `user_id` is absent (create).
    #[error("User ID field is required")]
    UserIdRequired,
    #[error("User ID must be a positive integer")]
    UserIdNotPositive,
    /// A record id (the `cookie` field) over [`MAX_ID_BYTES`].
    #[error("Cookie ID too long")]
    IdTooLong,
    /// An object key that serde_json reads as its own marker, anywhere in the body
    /// (`crate::reserved_keys`): it would be stored as something else than was sent.
    #[error("Invalid JSON: {0} is a reserved field name")]
    ReservedKey(&'static str),
}

/// The longest record id, in bytes of UTF-8 (api.md section 10). Longer ids would make paths
/// that HTTP servers refuse (414): a record nobody could read, update or delete.
pub const MAX_ID_BYTES: usize = 1024;

/// The largest record, in bytes of its JSON. A `PUT` merges its fields into the record, so
/// without a bound a record grew past any body limit, a few MiB at a time: past the 64 MiB
/// a snapshot row may hold (no node could install a snapshot, or join, again), and its
/// answers, one copy each, filled a forwarded batch's answer and the idempotency table
/// (found in review). Fixed here, not in the config: every replica must refuse the same
/// writes. `max_body_bytes` is at most this.
pub const MAX_RECORD_BYTES: usize = 16 << 20;

/// `Idempotency-Key: <1-128 visible ASCII characters>` (api.md section 11).
pub fn valid_idempotency_key(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= 128 && key.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Why a command that came from a peer is refused: not one the API could have built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a client write: {0}")]
pub struct NotAClientWrite(pub String);

impl Command {
    /// `POST /cookies`: the body must be a JSON object with a non-empty string `cookie` (the
    /// id) and a positive integer `user_id`; other fields are kept as given. `created` and
    /// `last_used` become `now` (Unix seconds, as strings): added after the client's fields,
    /// or overwritten in place where it sent them, so the client's field order is kept.
    pub fn create(body: &[u8], now: u64) -> Result<Command, Invalid> {
        match Flat::parse(body) {
            Some(flat) => create_flat(&flat, now),
            None => create_value(body, now),
        }
    }

    /// `PUT /cookies/{id}`: the body must be a JSON object; `user_id`, when present, a
    /// positive integer; `cookie`, when present, a non-empty string, and a rename when it
    /// differs from `id`. The merge itself happens at apply, against the stored record.
    pub fn update(
        id: String,
        body: &[u8],
        now: u64,
        if_match: Option<u64>,
    ) -> Result<Command, Invalid> {
        let (patch, rename_to) = match Flat::parse(body) {
            Some(flat) => patch_flat(&flat, &id)?,
            None => patch_value(body, &id)?,
        };
        Ok(Command::Update {
            id,
            patch,
            rename_to,
            now,
            if_match,
        })
    }

    /// `DELETE /cookies/{id}`: nothing to validate.
    pub fn delete(id: String, if_match: Option<u64>) -> Command {
        Command::Delete { id, if_match }
    }

    /// The record ids this command may touch. A batch never holds two commands that share
    /// a key, so every write gets its own version (the index of its log entry).
    pub fn keys(&self) -> Vec<&str> {
        match self {
            Command::Create { id, .. } | Command::Delete { id, .. } => vec![id.as_str()],
            Command::Update { id, rename_to, .. } => {
                let mut keys = vec![id.as_str()];
                keys.extend(rename_to.as_deref());
                keys
            }
            Command::Keyed { cmd, .. } => cmd.keys(),
            Command::Register { .. } | Command::Expire { .. } => Vec::new(),
        }
    }

    /// Whether this is a write to one record on condition of a version at or before
    /// `index` (`If-Match`), with no rename. Such a write cannot apply once another write in
    /// the same log entry has changed the record: the record's version is then the entry's
    /// index, which is after `index`, and a record another write removed matches no version.
    /// So it may share an entry with earlier writes to its record (group commit) without two
    /// writes that applied ever sharing a version: at most one write to a record applies per
    /// entry. `index` must be one no new entry can take (the applied index: committed
    /// entries are never replaced), or a guessed version could be the entry's own.
    pub fn conditional_on_before(&self, index: u64) -> bool {
        match self {
            Command::Update {
                rename_to: None,
                if_match: Some(v),
                ..
            }
            | Command::Delete {
                if_match: Some(v), ..
            } => *v <= index,
            Command::Keyed { cmd, .. } => cmd.conditional_on_before(index),
            _ => false,
        }
    }

    /// Whether this command is one the API's constructors could have built, with the same
    /// validation: what a leader checks before proposing a write a peer forwarded, so a
    /// peer cannot store what a client could not (registrations come from the leader itself).
    pub fn check_client_write(&self) -> Result<(), NotAClientWrite> {
        let no = |why: &str| Err(NotAClientWrite(why.to_owned()));
        match self {
            Command::Create { id, object } => {
                let obj =
                    parse_object(object.as_bytes()).map_err(|e| NotAClientWrite(e.to_string()))?;
                match obj.get("cookie").map(cookie_field) {
                    Some(Ok(c)) if c == id => {}
                    Some(Err(e)) => return no(&e.to_string()),
                    _ => return no("create: the object's cookie is not its id"),
                }
                if !obj.get("user_id").is_some_and(valid_user_id) {
                    return no("create: no valid user_id");
                }
                let stamped = |f: &str| obj.get(f).is_some_and(Value::is_string);
                if !(stamped("created") && stamped("last_used")) {
                    return no("create: no created/last_used");
                }
                Ok(())
            }
            Command::Update {
                id,
                patch,
                rename_to,
                ..
            } => {
                let patch =
                    parse_object(patch.as_bytes()).map_err(|e| NotAClientWrite(e.to_string()))?;
                if patch.get("user_id").is_some_and(|v| !valid_user_id(v)) {
                    return no("update: user_id is not a positive integer");
                }
                let cookie = match patch.get("cookie").map(cookie_field) {
                    Some(Err(e)) => return no(&e.to_string()),
                    Some(Ok(c)) => Some(c),
                    None => None,
                };
                if cookie.filter(|c| c != id) != rename_to.as_deref() {
                    return no("update: rename_to does not match the patch");
                }
                Ok(())
            }
            Command::Delete { .. } => Ok(()),
            Command::Keyed { key, cmd, .. } => {
                if !valid_idempotency_key(key.as_bytes()) {
                    return no("keyed: not a valid Idempotency-Key");
                }
                match **cmd {
                    Command::Keyed { .. } | Command::Register { .. } | Command::Expire { .. } => {
                        no("keyed: nested")
                    }
                    _ => cmd.check_client_write(),
                }
            }
            Command::Register { .. } => no("registrations come from the leader only"),
            Command::Expire { .. } => no("expiries come from the leader only"),
        }
    }

    /// `cmd`, applied at most once for `key` until `retention_ms` of log time after `now_ms`.
    pub fn keyed(
        key: String,
        fingerprint: [u8; 32],
        (now_ms, retention_ms): (u64, u64),
        cmd: Command,
    ) -> Command {
        Command::Keyed {
            key,
            fingerprint,
            now_ms,
            expires_ms: now_ms.saturating_add(retention_ms),
            cmd: Box::new(cmd),
        }
    }

    /// Approximate payload bytes (ids and JSON text, not the encoding), for bounding how much
    /// one group commit carries.
    pub fn size(&self) -> usize {
        match self {
            Command::Create { id, object } => id.len() + object.len(),
            Command::Update { id, patch, .. } => id.len() + patch.len(),
            Command::Delete { id, .. } => id.len(),
            Command::Keyed { key, cmd, .. } => key.len() + 48 + cmd.size(),
            Command::Register { members, .. } => 8 + 16 * members.len(),
            Command::Expire { .. } => 12,
        }
    }

    /// Apply this command as part of the log entry at `version`, which becomes the version of
    /// every record it writes. All decisions happen here, against the state as of this entry:
    /// that is what makes existence checks, merges and `If-Match` atomic. An `Err` is a
    /// storage failure, never a refused command (that is a [`CmdResult`]).
    pub(crate) fn apply(
        self,
        tables: &mut impl Records,
        version: u64,
    ) -> Result<CmdResult, BoxError> {
        Ok(match self {
            Command::Keyed {
                key,
                fingerprint,
                now_ms,
                expires_ms,
                cmd,
            } => {
                // Bounded work per keyed write keeps the table from growing without end.
                tables.expire_keys(now_ms, 64)?;
                let replaces = match tables.key(&key)? {
                    Some(first) if first.expires_ms > now_ms => {
                        return Ok(if first.fingerprint == fingerprint {
                            CmdResult::Replayed(Box::new(first.result))
                        } else {
                            CmdResult::KeyReused
                        });
                    }
                    expired => expired.map(|k| k.expires_ms),
                };
                let result = cmd.apply(tables, version)?;
                let record = KeyRecord {
                    fingerprint,
                    expires_ms,
                    result: result.clone(),
                };
                tables.put_key(&key, &record, replaces)?;
                result
            }
            Command::Create { id, object } => {
                if tables.exists(&id)? {
                    return Ok(CmdResult::AlreadyExists);
                }
                if object.len() > MAX_RECORD_BYTES {
                    return Ok(CmdResult::TooLarge);
                }
                let rec = Record::new(version, object.into_bytes());
                tables.put(&id, &rec)?;
                CmdResult::Stored {
                    object: String::from_utf8(rec.json)?,
                    version,
                }
            }
            Command::Update {
                id,
                patch,
                rename_to,
                now,
                if_match,
            } => {
                let Some(current) = tables.get(&id)? else {
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
                if merged.len() > MAX_RECORD_BYTES {
                    return Ok(CmdResult::TooLarge);
                }
                let target = rename_to.unwrap_or_else(|| id.clone());
                if target != id && tables.exists(&target)? {
                    return Ok(CmdResult::AlreadyExists);
                }
                let rec = Record::new(version, merged);
                if target == id && rec.created == current.created {
                    tables.replace(&id, &rec)?;
                } else {
                    tables.remove(&id, &current)?;
                    tables.put(&target, &rec)?;
                }
                CmdResult::Stored {
                    object: String::from_utf8(rec.json)?,
                    version,
                }
            }
            Command::Delete { id, if_match } => {
                let current = tables.get(&id)?;
                if let Some(expected) = if_match {
                    if current.as_ref().map(|r| r.version) != Some(expected) {
                        return Ok(CmdResult::PreconditionFailed);
                    }
                }
                if let Some(rec) = current {
                    tables.remove(&id, &rec)?;
                }
                CmdResult::Deleted
            }
            Command::Register { cluster, members } => {
                let mut registry = tables.registry()?;
                match registry.register(cluster, &members) {
                    Ok(true) => tables.set_registry(&registry)?,
                    Ok(false) => {}
                    Err(e) => return Ok(CmdResult::Invalid(e)),
                }
                CmdResult::Registered
            }
            Command::Expire { now_ms, max } => {
                CmdResult::Expired(tables.expire_keys(now_ms, max.min(EXPIRE_MAX) as usize)? as u64)
            }
        })
    }
}

/// The records a command is applied to: all that [`Command::apply`] may read and change.
/// The state machine's write transaction implements it (`sm::apply::Tables`, which keeps the
/// `created` index and the cache's invalidation list in step with every change); the
/// interface stays this narrow so that what a command does is decided here alone.
pub(crate) trait Records {
    /// Whether `id` is stored, without decoding its record.
    fn exists(&self, id: &str) -> Result<bool, BoxError>;
    fn get(&self, id: &str) -> Result<Option<Record>, BoxError>;
    /// Store `rec` under `id`, which holds no record: a command checks that or removes the
    /// record first, so storing never looks the id up again (a create's second B-tree
    /// lookup, ~4% of the servers' CPU at 64 clients, docs/benchmarks.md).
    fn put(&mut self, id: &str, rec: &Record) -> Result<(), BoxError>;
    /// Remove `id`, whose stored record is `rec`.
    fn remove(&mut self, id: &str, rec: &Record) -> Result<(), BoxError>;
    /// Store `rec` over the record of `id`, which has the same `created` (so the same place
    /// in the list): an update in place. The list's index entry stands as it is, where a
    /// remove and a put would delete and insert it again, and a flush would write it again.
    fn replace(&mut self, id: &str, rec: &Record) -> Result<(), BoxError>;
    /// What is recorded for idempotency key `key`, expired or not.
    fn key(&self, key: &str) -> Result<Option<KeyRecord>, BoxError>;
    /// Record `key`; `replaces`: when the expired record of it that [`Records::key`] found
    /// expires (its entry in the expiry index goes), so storing does not look it up again.
    fn put_key(
        &mut self,
        key: &str,
        rec: &KeyRecord,
        replaces: Option<u64>,
    ) -> Result<(), BoxError>;
    /// Forget at most `max` keys that expired at or before log time `now_ms`, oldest first:
    /// how many it forgot.
    fn expire_keys(&mut self, now_ms: u64, max: usize) -> Result<usize, BoxError>;
    /// The identity registry ([`crate::identity`]).
    fn registry(&self) -> Result<Registry, BoxError>;
    fn set_registry(&mut self, registry: &Registry) -> Result<(), BoxError>;
}

/// [`Command::create`] through a `serde_json::Value`: any object. This is the definition
/// that [`create_flat`] must match byte for byte.
fn create_value(body: &[u8], now: u64) -> Result<Command, Invalid> {
    let mut obj = parse_object(body)?;
    // The checks run in the contract's order: the first failing one names the error.
    let id = match obj.get("cookie") {
        None | Some(Value::Null) => return Err(Invalid::CookieRequired),
        Some(v) => cookie_field(v)?.to_owned(),
    };
    match obj.get("user_id") {
        None => return Err(Invalid::UserIdRequired),
        Some(v) if !valid_user_id(v) => return Err(Invalid::UserIdNotPositive),
        Some(_) => {}
    }
    let now = Value::String(now.to_string());
    obj.insert("created".into(), now.clone());
    obj.insert("last_used".into(), now);
    Ok(Command::Create {
        id,
        object: to_json(obj),
    })
}

/// [`Command::create`] for a flat object ([`crate::flat_json`]): the same checks in the same
/// order, on the values' text, and the same bytes out.
fn create_flat(flat: &Flat, now: u64) -> Result<Command, Invalid> {
    let id = match flat.get("cookie") {
        None | Some("null") => return Err(Invalid::CookieRequired),
        Some(v) => flat_cookie(v)?.to_owned(),
    };
    match flat.get("user_id") {
        None => return Err(Invalid::UserIdRequired),
        Some(v) if !flat_user_id(v) => return Err(Invalid::UserIdNotPositive),
        Some(_) => {}
    }
    Ok(Command::Create {
        id,
        object: flat.write_stamped(&["created", "last_used"], now),
    })
}

/// [`Command::update`]'s patch through a `serde_json::Value`: any object. It checks
/// `user_id` and then `cookie`, and gives the patch written compactly and the rename, if
/// any. This is the definition that [`patch_flat`] must match byte for byte.
fn patch_value(body: &[u8], id: &str) -> Result<(String, Option<String>), Invalid> {
    let patch = parse_object(body)?;
    if let Some(v) = patch.get("user_id") {
        if !valid_user_id(v) {
            return Err(Invalid::UserIdNotPositive);
        }
    }
    let rename_to = match patch.get("cookie") {
        Some(v) => Some(cookie_field(v)?.to_owned()).filter(|new| new != id),
        None => None,
    };
    Ok((to_json(patch), rename_to))
}

/// [`patch_value`] for a flat object: the same checks in the same order, the same bytes.
fn patch_flat(flat: &Flat, id: &str) -> Result<(String, Option<String>), Invalid> {
    if flat.get("user_id").is_some_and(|v| !flat_user_id(v)) {
        return Err(Invalid::UserIdNotPositive);
    }
    let rename_to = match flat.get("cookie") {
        Some(v) => Some(flat_cookie(v)?.to_owned()).filter(|new| new != id),
        None => None,
    };
    Ok((flat.write(), rename_to))
}

/// A flat value's text as [`cookie_field`] takes the value: a flat string has no escapes, so
/// its text between the quotes is its value; anything unquoted is not a string.
fn flat_cookie(v: &str) -> Result<&str, Invalid> {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some("") => Err(Invalid::CookieEmpty),
        Some(s) if s.len() > MAX_ID_BYTES => Err(Invalid::IdTooLong),
        Some(s) => Ok(s),
        None => Err(Invalid::CookieNotString),
    }
}

/// A flat value's text as [`valid_user_id`] takes the value: the same rule on the same text.
fn flat_user_id(v: &str) -> bool {
    positive_integer_text(v)
}

/// The body as an object, refused when it holds a key serde_json would read as its own
/// marker: one turns an object into a number, the other makes the text fail to parse as a
/// `Value` though it is JSON.
fn parse_object(body: &[u8]) -> Result<Map<String, Value>, Invalid> {
    let reserved = || crate::reserved_keys::find(body).map(Invalid::ReservedKey);
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => reserved().map_or(Ok(map), Err),
        // (An object of one marker key reads as a number.)
        Ok(_) => Err(reserved().unwrap_or(Invalid::Json)),
        Err(_) if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() => {
            Err(reserved().unwrap_or(Invalid::Json))
        }
        Err(_) => Err(Invalid::Json),
    }
}

/// A positive integer: `1001` is, `1001.0`, `1e3`, `"1001"`, `0` and `-1` are not. Of any
/// size, as the original (Erlang's integers are unbounded) took it: numbers keep the
/// client's text (`arbitrary_precision`), so a user id past `u64` is stored as sent.
fn valid_user_id(v: &Value) -> bool {
    v.as_number()
        .is_some_and(|n| positive_integer_text(n.as_str()))
}

/// Whether a JSON number's text is an integer above zero: digits only (no sign, fraction or
/// exponent), not all zeros (JSON allows no leading zero, so that is `0`).
fn positive_integer_text(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && text.bytes().any(|b| b != b'0')
}

/// The `cookie` field as a non-empty string of at most [`MAX_ID_BYTES`].
fn cookie_field(v: &Value) -> Result<&str, Invalid> {
    match v {
        Value::String(s) if s.is_empty() => Err(Invalid::CookieEmpty),
        Value::String(s) if s.len() > MAX_ID_BYTES => Err(Invalid::IdTooLong),
        Value::String(s) => Ok(s),
        _ => Err(Invalid::CookieNotString),
    }
}

/// Compact JSON text, in the map's (insertion) order. The same bytes as
/// `serde_json::to_string(&map)`, without its `Result`: a map of `Value`s always serializes.
fn to_json(map: Map<String, Value>) -> String {
    Value::Object(map).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(body: &str) -> Result<Command, Invalid> {
        Command::create(body.as_bytes(), 1_749_658_366)
    }

    fn update(id: &str, body: &str) -> Result<Command, Invalid> {
        Command::update(id.into(), body.as_bytes(), 99, Some(7))
    }

    #[test]
    fn create_checks_in_the_contracts_order_with_its_messages() {
        let cases = [
            ("", "Invalid JSON"),
            ("not json", "Invalid JSON"),
            ("[1]", "Invalid JSON"),
            ("\"a\"", "Invalid JSON"),
            ("{}", "Cookie field is required"),
            (r#"{"cookie":null,"user_id":1}"#, "Cookie field is required"),
            // The cookie is checked before the user id.
            (r#"{"user_id":0}"#, "Cookie field is required"),
            (r#"{"cookie":5,"user_id":1}"#, "Cookie must be a string"),
            (r#"{"cookie":["a"]}"#, "Cookie must be a string"),
            (r#"{"cookie":"","user_id":1}"#, "Cookie cannot be empty"),
            (r#"{"cookie":"a"}"#, "User ID field is required"),
            (
                r#"{"cookie":"a","user_id":null}"#,
                "User ID must be a positive integer",
            ),
            (
                r#"{"cookie":"a","user_id":0}"#,
                "User ID must be a positive integer",
            ),
            (
                r#"{"cookie":"a","user_id":-1}"#,
                "User ID must be a positive integer",
            ),
            (
                r#"{"cookie":"a","user_id":1001.0}"#,
                "User ID must be a positive integer",
            ),
            (
                r#"{"cookie":"a","user_id":"1001"}"#,
                "User ID must be a positive integer",
            ),
            (
                r#"{"cookie":"a","user_id":1e3}"#,
                "User ID must be a positive integer",
            ),
            (
                r#"{"cookie":"a","user_id":-18446744073709551616}"#,
                "User ID must be a positive integer",
            ),
        ];
        for (body, message) in cases {
            assert_eq!(create(body).unwrap_err().to_string(), message, "{body}");
        }
    }

    /// A user id is an integer of any size, as the original took it, and is stored as the
    /// client wrote it: past `u64` (and past the flat path's 18 digits) too.
    #[test]
    fn a_user_id_of_any_size_is_taken_and_kept_as_sent() {
        for n in [
            "18446744073709551615",
            "18446744073709551616",
            "9".repeat(60).as_str(),
        ] {
            let body = format!(r#"{{"cookie":"a","user_id":{n}}}"#);
            let Ok(Command::Create { object, .. }) = create(&body) else {
                panic!("{body} must be taken")
            };
            assert!(object.contains(&format!(r#""user_id":{n},"#)), "{object}");
            let cmd = update("a", &format!(r#"{{"user_id":{n}}}"#)).unwrap();
            cmd.check_client_write().unwrap();
        }
    }

    #[test]
    fn create_sets_created_and_last_used_and_keeps_the_clients_fields_in_order() {
        let cmd = create(r#"{"user_id":1001,"cookie":"abc","x":{"y":[1,2]}}"#).unwrap();
        assert_eq!(
            cmd,
            Command::Create {
                id: "abc".into(),
                object: r#"{"user_id":1001,"cookie":"abc","x":{"y":[1,2]},"created":"1749658366","last_used":"1749658366"}"#.into(),
            }
        );
        // Fields the client sent are overwritten in place, not moved.
        let cmd = create(r#"{"created":"0","cookie":"abc","user_id":1}"#).unwrap();
        let Command::Create { object, .. } = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(
            object,
            r#"{"created":"1749658366","cookie":"abc","user_id":1,"last_used":"1749658366"}"#
        );
    }

    #[test]
    fn update_checks_with_the_contracts_messages() {
        let cases = [
            ("nope", "Invalid JSON"),
            ("[]", "Invalid JSON"),
            (r#"{"user_id":0}"#, "User ID must be a positive integer"),
            (r#"{"user_id":null}"#, "User ID must be a positive integer"),
            // The user id is checked before the cookie.
            (
                r#"{"cookie":5,"user_id":"x"}"#,
                "User ID must be a positive integer",
            ),
            (r#"{"cookie":5}"#, "Cookie must be a string"),
            (r#"{"cookie":null}"#, "Cookie must be a string"),
            (r#"{"cookie":""}"#, "Cookie cannot be empty"),
        ];
        for (body, message) in cases {
            assert_eq!(
                update("a", body).unwrap_err().to_string(),
                message,
                "{body}"
            );
        }
    }

    #[test]
    fn update_renames_only_when_the_cookie_differs() {
        let patch = r#"{"user_id":2,"cookie":"b"}"#;
        assert_eq!(
            update("a", patch).unwrap(),
            Command::Update {
                id: "a".into(),
                patch: patch.into(),
                rename_to: Some("b".into()),
                now: 99,
                if_match: Some(7),
            }
        );
        let Command::Update { rename_to, .. } = update("a", r#"{"cookie":"a"}"#).unwrap() else {
            unreachable!()
        };
        assert_eq!(rename_to, None);
        let Command::Update {
            rename_to, patch, ..
        } = update("a", "{}").unwrap()
        else {
            unreachable!()
        };
        assert_eq!((rename_to, patch.as_str()), (None, "{}"));
    }

    /// Records and keys in memory: what a command does needs no database to be tested.
    #[derive(Default)]
    struct Mem {
        records: std::collections::BTreeMap<String, Record>,
        keys: std::collections::BTreeMap<String, KeyRecord>,
        registry: Registry,
    }

    impl Records for Mem {
        fn exists(&self, id: &str) -> Result<bool, BoxError> {
            Ok(self.records.contains_key(id))
        }
        fn get(&self, id: &str) -> Result<Option<Record>, BoxError> {
            Ok(self.records.get(id).cloned())
        }
        fn put(&mut self, id: &str, rec: &Record) -> Result<(), BoxError> {
            // The contract every command keeps: put only where no record is.
            assert!(
                !self.records.contains_key(id),
                "put over a stored record: {id}"
            );
            self.records.insert(id.to_owned(), rec.clone());
            Ok(())
        }
        fn remove(&mut self, id: &str, _: &Record) -> Result<(), BoxError> {
            self.records.remove(id);
            Ok(())
        }
        fn replace(&mut self, id: &str, rec: &Record) -> Result<(), BoxError> {
            let old = self
                .records
                .get_mut(id)
                .expect("replace of a stored record");
            assert_eq!(old.created, rec.created, "replace at another place: {id}");
            *old = rec.clone();
            Ok(())
        }
        fn key(&self, key: &str) -> Result<Option<KeyRecord>, BoxError> {
            Ok(self.keys.get(key).cloned())
        }
        fn put_key(&mut self, key: &str, rec: &KeyRecord, _: Option<u64>) -> Result<(), BoxError> {
            self.keys.insert(key.to_owned(), rec.clone());
            Ok(())
        }
        fn expire_keys(&mut self, now_ms: u64, max: usize) -> Result<usize, BoxError> {
            // Oldest first, as the state machine's expiry index sweeps.
            let mut due: Vec<(u64, String)> = self
                .keys
                .iter()
                .filter(|(_, r)| r.expires_ms <= now_ms)
                .map(|(k, r)| (r.expires_ms, k.clone()))
                .collect();
            due.sort();
            let expired: Vec<String> = due.into_iter().take(max).map(|(_, k)| k).collect();
            for k in &expired {
                self.keys.remove(k);
            }
            Ok(expired.len())
        }
        fn registry(&self) -> Result<Registry, BoxError> {
            Ok(self.registry.clone())
        }
        fn set_registry(&mut self, registry: &Registry) -> Result<(), BoxError> {
            self.registry = registry.clone();
            Ok(())
        }
    }

    /// An expiry forgets the keys due at its log time, oldest first and no more than it
    /// (and [`EXPIRE_MAX`]) allows, says how many, and is no client write, alone or keyed.
    #[test]
    fn an_expiry_forgets_due_keys_oldest_first_within_its_bound_and_is_no_client_write() {
        let mut t = Mem::default();
        for (i, expires_ms) in [(1, 30), (2, 10), (3, 20), (4, 50)] {
            let rec = KeyRecord {
                fingerprint: [0; 32],
                expires_ms,
                result: CmdResult::Deleted,
            };
            t.put_key(&format!("k{i}"), &rec, None).unwrap();
        }
        let expire = |now_ms, max| Command::Expire { now_ms, max };
        assert_eq!(
            expire(30, 2).apply(&mut t, 9).unwrap(),
            CmdResult::Expired(2)
        );
        let left: Vec<&str> = t.keys.keys().map(String::as_str).collect();
        assert_eq!(left, ["k1", "k4"], "the two oldest go first");
        assert_eq!(
            expire(40, u32::MAX).apply(&mut t, 10).unwrap(),
            CmdResult::Expired(1)
        );
        assert_eq!(
            expire(40, 5).apply(&mut t, 11).unwrap(),
            CmdResult::Expired(0)
        );
        assert!(t.keys.contains_key("k4"));

        for _ in 0..EXPIRE_MAX + 10 {
            let rec = KeyRecord {
                fingerprint: [0; 32],
                expires_ms: 1,
                result: CmdResult::Deleted,
            };
            t.put_key(&format!("many-{}", t.keys.len()), &rec, None)
                .unwrap();
        }
        let forgot = expire(2, u32::MAX).apply(&mut t, 12).unwrap();
        assert_eq!(forgot, CmdResult::Expired(u64::from(EXPIRE_MAX)));

        assert!(expire(1, 1).check_client_write().is_err());
        let keyed = Command::keyed("k".into(), [0; 32], (0, 1), expire(1, 1));
        assert!(keyed.check_client_write().is_err());
        assert!(expire(1, 1).keys().is_empty());
    }

    /// A record is never stored over [`MAX_RECORD_BYTES`]: a `PUT` that would grow it past
    /// that is refused and changes nothing, as is a create that large.
    #[test]
    fn a_write_that_would_make_a_record_too_large_changes_nothing() {
        let mut t = Mem::default();
        let body = |id: &str, field: &str, n: usize| {
            format!(
                r#"{{"cookie":"{id}","user_id":1,"{field}":"{}"}}"#,
                "x".repeat(n)
            )
        };
        let half = MAX_RECORD_BYTES / 2;
        let create = Command::create(body("big", "a", half).as_bytes(), 1).unwrap();
        assert!(matches!(
            create.apply(&mut t, 1).unwrap(),
            CmdResult::Stored { .. }
        ));
        let update = |field: &str, n: usize| {
            Command::update("big".into(), body("big", field, n).as_bytes(), 2, None).unwrap()
        };
        // Another field of half the limit takes it over: refused.
        let before = t.get("big").unwrap().unwrap();
        assert_eq!(
            update("b", half).apply(&mut t, 2).unwrap(),
            CmdResult::TooLarge
        );
        assert_eq!(t.get("big").unwrap().unwrap(), before);
        // Replacing the field keeps it at its size: fine.
        assert!(matches!(
            update("a", half - 10).apply(&mut t, 3).unwrap(),
            CmdResult::Stored { version: 3, .. }
        ));
        let huge = Command::Create {
            id: "huge".into(),
            object: body("huge", "a", MAX_RECORD_BYTES),
        };
        assert_eq!(huge.apply(&mut t, 4).unwrap(), CmdResult::TooLarge);
        assert!(t.get("huge").unwrap().is_none());
    }

    /// Writes on condition of a version before an entry, in one entry: at most one of them
    /// applies, whatever came before them in it, so no two writes that applied share a
    /// version. (Group commit puts them together on this ground.)
    #[test]
    fn in_one_entry_at_most_one_write_on_condition_of_an_earlier_version_applies() {
        let create = |id: &str| {
            Command::create(format!(r#"{{"cookie":"{id}","user_id":1}}"#).as_bytes(), 1).unwrap()
        };
        let set = |v| Command::Update {
            id: "c".into(),
            patch: r#"{"n":1}"#.into(),
            rename_to: None,
            now: 2,
            if_match: Some(v),
        };
        let delete = |v| Command::Delete {
            id: "c".into(),
            if_match: Some(v),
        };
        let first: [fn() -> Option<Command>; 3] = [
            || None,
            || Some(Command::delete("c".into(), None)),
            || {
                Some(Command::Update {
                    id: "c".into(),
                    patch: r#"{"n":0}"#.into(),
                    rename_to: None,
                    now: 2,
                    if_match: None,
                })
            },
        ];
        for lead in first {
            for versions in [[5, 5, 5], [3, 5, 5], [5, 3, 5], [4, 5, 3]] {
                for conditional in [set, delete] {
                    let mut t = Mem::default();
                    create("c").apply(&mut t, 5).unwrap();
                    let entry = 9;
                    let mut applied = 0;
                    if let Some(cmd) = lead() {
                        assert!(!cmd.conditional_on_before(entry - 1));
                        applied +=
                            usize::from(cmd.apply(&mut t, entry).unwrap() != CmdResult::NotFound);
                    }
                    for v in versions {
                        let cmd = conditional(v);
                        assert!(cmd.conditional_on_before(entry - 1));
                        let r = cmd.apply(&mut t, entry).unwrap();
                        applied +=
                            usize::from(matches!(r, CmdResult::Stored { .. } | CmdResult::Deleted));
                    }
                    assert!(applied <= 1, "{applied} writes applied in one entry");
                }
            }
        }
        // A version after the bound, a rename, an unconditional write: none may share.
        assert!(!set(9).conditional_on_before(8));
        let rename = Command::Update {
            id: "c".into(),
            patch: r#"{"cookie":"d"}"#.into(),
            rename_to: Some("d".into()),
            now: 2,
            if_match: Some(5),
        };
        assert!(!rename.conditional_on_before(8));
        assert!(!Command::delete("c".into(), None).conditional_on_before(8));
        let keyed = Command::keyed("k".into(), [0; 32], (0, 1), set(5));
        assert!(keyed.conditional_on_before(8));
    }

    #[test]
    fn a_registration_applies_first_wins_and_is_no_client_write() {
        let mut t = Mem::default();
        let reg = |cluster, members: &[(u64, u64)]| Command::Register {
            cluster,
            members: members.to_vec(),
        };
        assert_eq!(
            reg(7, &[(1, 0x11)]).apply(&mut t, 1).unwrap(),
            CmdResult::Registered
        );
        reg(7, &[(1, 0x99), (2, 0x22)]).apply(&mut t, 2).unwrap();
        assert_eq!(t.registry.members, [(1, 0x11), (2, 0x22)].into());
        assert!(matches!(
            reg(8, &[(3, 0x33)]).apply(&mut t, 3).unwrap(),
            CmdResult::Invalid(_)
        ));
        assert_eq!(t.registry.cluster, Some(7));
        assert!(reg(7, &[]).check_client_write().is_err());
        let keyed = Command::keyed("k".into(), [0; 32], (0, 1), reg(7, &[]));
        assert!(keyed.check_client_write().is_err());
    }

    /// What the API builds passes the peer check; what it could not build does not (a peer
    /// once stored a non-object in a record, spliced into every `GET /cookies` reply).
    #[test]
    fn only_what_the_api_could_build_passes_the_peer_check() {
        let keyed_create = Command::keyed(
            "k-1".into(),
            [1; 32],
            (0, 1),
            create(r#"{"cookie":"a","user_id":1}"#).unwrap(),
        );
        let ok = [
            create(r#"{"cookie":"a","user_id":1,"x":[1]}"#).unwrap(),
            update("a", r#"{"cookie":"b","user_id":2}"#).unwrap(),
            update("a", r#"{"cookie":"a"}"#).unwrap(),
            update("a", "{}").unwrap(),
            Command::delete("anything".into(), Some(3)),
            keyed_create,
        ];
        for cmd in ok {
            assert_eq!(cmd.check_client_write(), Ok(()), "{cmd:?}");
        }
        let create_raw = |id: &str, object: &str| Command::Create {
            id: id.into(),
            object: object.into(),
        };
        let stamped = |id: &str, user: u64| {
            format!(r#"{{"cookie":"{id}","user_id":{user},"created":"1","last_used":"1"}}"#)
        };
        let update_raw = |patch: &str, rename_to: Option<&str>| Command::Update {
            id: "a".into(),
            patch: patch.into(),
            rename_to: rename_to.map(Into::into),
            now: 1,
            if_match: None,
        };
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let bad = [
            create_raw("a", "[1]"),
            create_raw("a", r#""text""#),
            create_raw("a", &stamped("b", 1)),
            create_raw("a", &stamped("a", 0)),
            create_raw("a", r#"{"cookie":"a","user_id":1}"#),
            create_raw(&long, &stamped(&long, 1)),
            update_raw("7", None),
            update_raw(r#"{"cookie":"b"}"#, None),
            update_raw("{}", Some("b")),
            Command::keyed(
                "bad key".into(),
                [1; 32],
                (0, 1),
                Command::delete("a".into(), None),
            ),
        ];
        for cmd in bad {
            assert!(cmd.check_client_write().is_err(), "{cmd:?}");
        }
    }

    #[test]
    fn an_id_over_1024_bytes_is_refused() {
        let id = "é".repeat(512); // 1,024 bytes
        assert!(create(&format!(r#"{{"cookie":"{id}","user_id":1}}"#)).is_ok());
        let long = format!("{id}x");
        let refused = create(&format!(r#"{{"cookie":"{long}","user_id":1}}"#)).unwrap_err();
        assert_eq!(refused.to_string(), "Cookie ID too long");
        assert_eq!(
            update("a", &format!(r#"{{"cookie":"{long}"}}"#)).unwrap_err(),
            Invalid::IdTooLong
        );
    }

    #[test]
    fn a_keyed_write_applies_once_and_replays_its_first_answer() {
        let mut t = Mem::default();
        let create = |body: &str| Command::create(body.as_bytes(), 10).unwrap();
        let keyed =
            |fp: u8, now_ms: u64, cmd| Command::keyed("k1".into(), [fp; 32], (now_ms, 1000), cmd);
        let body = r#"{"cookie":"a","user_id":1}"#;
        let first = keyed(1, 5, create(body)).apply(&mut t, 1).unwrap();
        assert!(
            matches!(first, CmdResult::Stored { version: 1, .. }),
            "{first:?}"
        );
        // The retry replays the first answer, and nothing is applied again.
        let retry = keyed(1, 500, create(body)).apply(&mut t, 2).unwrap();
        assert_eq!(retry, CmdResult::Replayed(Box::new(first.clone())));
        assert_eq!(t.records["a"].version, 1);
        // The same key with another request is refused, and changes nothing.
        let other = keyed(2, 600, create(r#"{"cookie":"b","user_id":1}"#));
        assert_eq!(other.apply(&mut t, 3).unwrap(), CmdResult::KeyReused);
        assert!(!t.records.contains_key("b"));
        // Once expired (log time 1005 and later), the key is free: the write applies anew.
        let late = keyed(1, 1005, create(body)).apply(&mut t, 4).unwrap();
        assert_eq!(late, CmdResult::AlreadyExists);
        assert_eq!(t.keys["k1"].expires_ms, 2005);
    }

    #[test]
    fn apply_decides_against_the_state_as_of_its_entry() {
        let mut t = Mem::default();
        let new = |id: &str| {
            let body = format!(r#"{{"cookie":"{id}","user_id":1}}"#);
            Command::create(body.as_bytes(), 10).unwrap()
        };
        let put = |id: &str, body: &str, if_match| {
            Command::update(id.into(), body.as_bytes(), 20, if_match).unwrap()
        };

        let a = r#"{"cookie":"a","user_id":1,"created":"10","last_used":"10"}"#;
        let stored = |object: &str, version| CmdResult::Stored {
            object: object.into(),
            version,
        };
        assert_eq!(new("a").apply(&mut t, 1).unwrap(), stored(a, 1));
        assert_eq!(new("a").apply(&mut t, 2).unwrap(), CmdResult::AlreadyExists);
        assert_eq!(
            put("zz", "{}", None).apply(&mut t, 3).unwrap(),
            CmdResult::NotFound
        );
        assert_eq!(
            put("zz", "{}", Some(1)).apply(&mut t, 3).unwrap(),
            CmdResult::PreconditionFailed
        );
        assert_eq!(
            put("a", "{}", Some(9)).apply(&mut t, 3).unwrap(),
            CmdResult::PreconditionFailed
        );
        new("b").apply(&mut t, 4).unwrap();
        assert_eq!(
            put("a", r#"{"cookie":"b"}"#, None)
                .apply(&mut t, 5)
                .unwrap(),
            CmdResult::AlreadyExists
        );
        let c = r#"{"cookie":"c","user_id":1,"created":"10","last_used":"20"}"#;
        assert_eq!(
            put("a", r#"{"cookie":"c"}"#, Some(1))
                .apply(&mut t, 6)
                .unwrap(),
            stored(c, 6)
        );
        assert!(!t.exists("a").unwrap());
        assert_eq!(t.get("c").unwrap().unwrap().version, 6);
        let bad_patch = Command::Update {
            id: "c".into(),
            patch: "[1]".into(),
            rename_to: None,
            now: 30,
            if_match: None,
        };
        assert!(matches!(
            bad_patch.apply(&mut t, 7).unwrap(),
            CmdResult::Invalid(_)
        ));
        assert_eq!(
            Command::delete("a".into(), Some(1))
                .apply(&mut t, 8)
                .unwrap(),
            CmdResult::PreconditionFailed
        );
        assert_eq!(
            Command::delete("a".into(), None).apply(&mut t, 8).unwrap(),
            CmdResult::Deleted
        );
        assert_eq!(
            Command::delete("c".into(), Some(6))
                .apply(&mut t, 9)
                .unwrap(),
            CmdResult::Deleted
        );
        assert!(!t.exists("c").unwrap());
        assert!(t.exists("b").unwrap());
    }

    /// JSON text for the property test below: the keys a create looks at and a few others
    /// (so keys repeat), each sometimes written with an escape; values of every kind, the
    /// ones the fast path copies and the ones it must leave to the `Value` path; whitespace
    /// anywhere it may go.
    mod gen {
        use proptest::prelude::*;

        fn ws() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec!["", "", "", " ", "\n\t ", "\r"])
        }

        fn key() -> impl Strategy<Value = String> {
            prop::sample::select(vec![
                "\"cookie\"",
                "\"user_id\"",
                "\"created\"",
                "\"last_used\"",
                "\"a\"",
                "\"b\"",
                "\"\"",
                "\"\\u0063ookie\"",
                "\"us\\ber_id\"",
                "\"cr\\\"eated\"",
                "\"é\"",
            ])
            .prop_map(str::to_owned)
        }

        fn scalar() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("true".to_owned()),
                Just("false".to_owned()),
                Just("null".to_owned()),
                Just("-0".to_owned()),
                Just("0".to_owned()),
                Just("\"\"".to_owned()),
                any::<i64>().prop_map(|n| n.to_string()),
                any::<u64>().prop_map(|n| n.to_string()),
                (1u64..100).prop_map(|n| n.to_string()),
                "[0-9]{17,22}",
                "-[0-9]{17,22}",
                "-?[1-9][0-9]{0,3}(\\.[0-9]{1,3})?([eE][-+]?[0-9]{1,2})?",
                // Strings: plain, non-ASCII, escaped, long enough to be an over-long id.
                "\"[a-z0-9 é€😀]{0,12}\"",
                "\"([a-z]|\\\\[nt\"/\\\\]|\\\\u00[0-7][0-9a-f]){0,6}\"",
                "[a-z]{1020,1030}".prop_map(|s| format!("\"{s}\"")),
            ]
        }

        fn value() -> impl Strategy<Value = String> {
            scalar().prop_recursive(2, 8, 3, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..3)
                        .prop_map(|v| format!("[{}]", v.join(","))),
                    prop::collection::vec((key(), inner), 0..3).prop_map(|v| {
                        let fields: Vec<String> =
                            v.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                        format!("{{{}}}", fields.join(","))
                    }),
                ]
            })
        }

        fn field() -> impl Strategy<Value = String> {
            (ws(), key(), ws(), ws(), value(), ws())
                .prop_map(|(a, k, b, c, v, d)| format!("{a}{k}{b}:{c}{v}{d}"))
        }

        /// A field a create accepts: a short string id, or a positive user id.
        fn good_field() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-z0-9é]{1,8}".prop_map(|id| format!("\"cookie\":\"{id}\"")),
                (1u64..1_000_000).prop_map(|n| format!("\"user_id\":{n}")),
            ]
        }

        /// An id an update's path may carry: one the good fields name, and others.
        pub fn id() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-z0-9é]{1,2}",
                Just(String::new()),
                Just("a".repeat(1030)),
            ]
        }

        fn object(fields: Vec<String>) -> String {
            format!("{{{}}}", fields.join(","))
        }

        /// A body: mostly an object of fields (half of them with a good id and user id
        /// somewhere among the others), sometimes not an object or not JSON at all.
        pub fn body() -> impl Strategy<Value = String> {
            let any_fields = prop::collection::vec(field(), 0..8).prop_map(object);
            let likely = (
                good_field(),
                good_field(),
                prop::collection::vec(field(), 0..5),
            )
                .prop_flat_map(|(a, b, mut fields)| {
                    fields.push(a);
                    fields.push(b);
                    Just(fields).prop_shuffle()
                })
                .prop_map(object);
            prop_oneof![
                4 => any_fields,
                4 => likely,
                1 => (object_prefix(), "[a-z\\]}{,: ]{0,4}").prop_map(|(a, b)| a + &b),
                1 => value(),
            ]
        }

        fn object_prefix() -> impl Strategy<Value = String> {
            prop::sample::select(vec!["{", "{\"cookie\":\"x\",\"user_id\":1", ""])
                .prop_map(str::to_owned)
        }
    }

    /// The fast path for flat objects gives the same command (the same stored bytes) and
    /// the same error as the `Value` path on every body; and it is taken often enough here
    /// for that to mean something.
    #[test]
    fn create_on_the_fast_path_is_create_through_a_value() {
        let flat = std::cell::Cell::new(0u32);
        let stored = std::cell::Cell::new(0u32);
        run_bodies(&gen::body(), |body| {
            let got = Command::create(body.as_bytes(), 1_749_658_366);
            let want = create_value(body.as_bytes(), 1_749_658_366);
            proptest::prop_assert_eq!(&got, &want, "body {}", body);
            if Flat::parse(body.as_bytes()).is_some() {
                flat.set(flat.get() + 1);
                stored.set(stored.get() + u32::from(got.is_ok()));
            }
            Ok(())
        });
        assert!(flat.get() > 2_000, "fast path taken {} times", flat.get());
        assert!(
            stored.get() > 200,
            "fast path stored {} times",
            stored.get()
        );
    }

    /// An update's patch on the fast path: the same command (the same patch bytes and
    /// rename) and the same error as through a `Value`, for ids the bodies name and not.
    #[test]
    fn update_on_the_fast_path_is_update_through_a_value() {
        let flat = std::cell::Cell::new(0u32);
        run_bodies(&(gen::body(), gen::id()), |(body, id)| {
            let got = Command::update(id.clone(), body.as_bytes(), 99, None);
            let want =
                patch_value(body.as_bytes(), &id).map(|(patch, rename_to)| Command::Update {
                    id: id.clone(),
                    patch,
                    rename_to,
                    now: 99,
                    if_match: None,
                });
            proptest::prop_assert_eq!(&got, &want, "body {} id {}", body, id);
            if got.is_ok() && Flat::parse(body.as_bytes()).is_some() {
                flat.set(flat.get() + 1);
            }
            Ok(())
        });
        assert!(flat.get() > 2_000, "fast path taken {} times", flat.get());
    }

    /// The merge at apply on the fast path gives the bytes the `Value` path gives, for a
    /// stored record (what a create or an earlier merge wrote: serde_json's text of an
    /// object) and a patch as an update carries it.
    #[test]
    fn merge_on_the_fast_path_is_merge_through_a_value() {
        let flat = std::cell::Cell::new(0u32);
        run_bodies(&(gen::body(), gen::body()), |(base, patch)| {
            let Ok(base) = parse_object(base.as_bytes()).map(to_json) else {
                return Ok(());
            };
            let Ok(Command::Update { patch, .. }) =
                Command::update("x".into(), patch.as_bytes(), 1, None)
            else {
                return Ok(());
            };
            let got = record::merge(base.as_bytes(), &patch, 1_749_658_366);
            let want = record::merge_value(base.as_bytes(), &patch, 1_749_658_366);
            proptest::prop_assert_eq!(&got, &want, "base {} patch {}", base, patch);
            if Flat::parse(base.as_bytes()).is_some() && Flat::parse(patch.as_bytes()).is_some() {
                flat.set(flat.get() + 1);
            }
            Ok(())
        });
        // Both flat in about 3% of the pairs: each body is flat in about a sixth.
        assert!(flat.get() > 300, "fast path taken {} times", flat.get());
    }

    /// Run `check` on 20,000 cases of `strategy`.
    fn run_bodies<S: proptest::strategy::Strategy>(
        strategy: &S,
        check: impl Fn(S::Value) -> Result<(), proptest::test_runner::TestCaseError>,
    ) {
        use proptest::test_runner::{Config, TestRunner};
        let mut runner = TestRunner::new(Config {
            cases: 20_000,
            failure_persistence: None,
            ..Config::default()
        });
        runner.run(strategy, check).unwrap();
    }

    #[test]
    fn to_json_writes_what_serde_json_to_string_writes() {
        let text = r#"{"z":"\u00e9\"\n\u2028","a":[1.5,-2,null,true],"m":{"k":1e3}}"#;
        let map: Map<String, Value> = serde_json::from_str(text).unwrap();
        assert_eq!(to_json(map.clone()), serde_json::to_string(&map).unwrap());
    }

    #[test]
    fn delete_and_size() {
        let del = Command::delete("abc".into(), None);
        assert_eq!(
            del,
            Command::Delete {
                id: "abc".into(),
                if_match: None
            }
        );
        assert_eq!(del.size(), 3);
        let cmd = create(r#"{"cookie":"abc","user_id":1}"#).unwrap();
        let Command::Create { object, .. } = &cmd else {
            unreachable!()
        };
        assert_eq!(cmd.size(), 3 + object.len());
        let cmd = update("abc", r#"{"x":1}"#).unwrap();
        assert_eq!(cmd.size(), 3 + r#"{"x":1}"#.len());
    }
}
