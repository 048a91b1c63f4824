//! Backups: a consistent point-in-time copy of the state machine, as a file an operator keeps,
//! and its restore into the data directory of a brand-new single-node cluster.
//!
//! # Format
//! ```text
//! COOKIE-CRUD-BACKUP\n          the magic line
//! {"format":2,...}\n            the header (BackupHeader, one JSON line: readable with head -2)
//! body                          body_bytes bytes: the snapshot format (SnapshotRows, bincode)
//! ```
//! The body is byte for byte what a snapshot of the same state holds, uncompressed (every record, every
//! idempotency key, the identity registry), written as a stream: the same varint lengths and
//! rows that encoding the whole `SnapshotRows` would give, so a backup of any size is written
//! and read in bounded memory. The header names where the state is in the log (index, term),
//! the cluster, the counts, and the body's SHA-256.
//!
//! From format 2 the header carries a SHA-256 of its own line too (`header_sha256`, see
//! [`BackupHeader::seal`]): the body's checksum said nothing of the header, so a header whose
//! index was damaged or edited within range restored a log that started at the wrong place.
//! Format 1 files, which have no such field, are still read.
//!
//! # Consistency
//! A backup is one redb read transaction: it sees the state as of one applied index, and
//! `apply` goes on meanwhile (redb's readers never block its writer). The checksum must be in
//! the header, before the body, so the body is walked twice in the same transaction: once to
//! count and hash, once to send. Both walks see the same rows.
//!
//! # Restore
//! [`restore`] checks a whole file first (magic, format, every row decodes, counts, checksum,
//! nothing after the body), then writes the new data in [`RESTORING`] inside the target and
//! moves it up only once it is whole and synced. A node refuses to start on a directory that
//! still holds [`RESTORING`], and a restore run again clears what the interrupted one wrote,
//! so a failed or interrupted restore is never taken for a node's data. (It used to write
//! beside the target and rename it into place: a target that is a mount point, as a
//! Kubernetes volume is, can be neither removed nor replaced, and its parent is another
//! filesystem; such a restore failed and left its copy beside the volume.)
//! The new directory is a one-member cluster with a new cluster id and a new incarnation;
//! its log starts after the backup's index, so every record keeps its version and no later
//! write can give a record a version it had before.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;

use openraft::{CommittedLeaderId, LogId, Membership as Voters};
use redb::{Durability, ReadableDatabase};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::format::{write_body, Counted};
use super::reader::StoreReader;
use super::tables::{
    applied_in, order_key, put_meta, registry_in, Membership, BY_CREATED, COOKIES, IDENTITY, KEYS,
    KEYS_BY_EXPIRY, KEY_APPLIED, KEY_MEMBERSHIP, KEY_REGISTRY,
};
use crate::codec;
use crate::command::{valid_idempotency_key, KeyRecord, MAX_ID_BYTES};
use crate::identity::{hex, Registry};
use crate::record::Record;
use crate::types::{CookieNode, NodeId};
use crate::BoxError;

/// The first line of every backup.
pub const MAGIC: &[u8] = b"COOKIE-CRUD-BACKUP\n";
/// The newest backup format this version writes and reads (1 and 2 are read).
pub const FORMAT: u32 = 2;
/// The field of a format-2 header that holds the line's own checksum; it is written last.
const HEADER_SUM_KEY: &[u8] = b"\"header_sha256\":\"";
/// A header longer than this is not one of ours.
const MAX_HEADER: u64 = 64 << 10;
/// The largest single row a backup may hold (a record or an idempotency key).
const MAX_ROW: usize = 256 << 20;
/// Rows per restore transaction: bounds the memory of a restore of any size.
const RESTORE_BATCH: usize = 20_000;

/// What a backup says about itself: its first two lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    pub format: u32,
    /// The cluster the state came from (hex), when it had registered one.
    pub cluster_id: Option<String>,
    /// The log index of the last entry applied to the state the backup holds.
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
    pub records: u64,
    pub idempotency_keys: u64,
    /// The body's length in bytes, after the header line.
    pub body_bytes: u64,
    /// The body's SHA-256, hex.
    pub sha256: String,
    /// Which node wrote it, when (Unix ms), with which version of cookie-crud.
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub created_ms: u64,
    #[serde(default)]
    pub version: String,
    /// From format 2: the SHA-256 (hex) of the header line as written with this field's
    /// value empty. Set by [`BackupHeader::seal`], checked by [`read_header`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_sha256: Option<String>,
}

impl BackupHeader {
    /// The header as it is written: one JSON line, its newline included.
    pub fn line(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut line = serde_json::to_vec(self)?;
        line.push(b'\n');
        Ok(line)
    }

    /// The whole backup's length in bytes: the magic line, the header line, the body.
    pub fn file_len(&self) -> Result<u64, serde_json::Error> {
        Ok((MAGIC.len() + self.line()?.len()) as u64 + self.body_bytes)
    }

    /// Set `header_sha256`: the SHA-256 of the line as written with that field empty. The
    /// check works on the bytes as they are in the file (the field's value blanked out), not
    /// on the header parsed and written again, so a field a later version adds is covered
    /// and needs no knowledge of it here.
    pub fn seal(&mut self) -> Result<(), serde_json::Error> {
        self.header_sha256 = Some(String::new());
        let sum = Sha256::digest(self.line()?);
        self.header_sha256 = Some(crate::identity::hex_bytes(&sum));
        Ok(())
    }
}

/// Check a format-2 header line (its newline included) against the checksum it holds:
/// hash it with the checksum's value blanked out.
fn check_seal(line: &[u8]) -> Result<(), BackupError> {
    let bad = |why: &str| Err(BackupError::BadHeader(why.to_owned()));
    // A key can appear only once in a line that serde_json wrote: inside a string its
    // quotes would be escaped. A line where it appears twice was not written by a backup.
    let at: Vec<usize> = line
        .windows(HEADER_SUM_KEY.len())
        .enumerate()
        .filter(|(_, w)| *w == HEADER_SUM_KEY)
        .map(|(i, _)| i + HEADER_SUM_KEY.len())
        .collect();
    let start = match at.as_slice() {
        [] => return bad("format 2 and later carry header_sha256, this one does not"),
        [one] => *one,
        _ => return bad("it names header_sha256 twice"),
    };
    let Some(len) = line[start..].iter().position(|&b| b == b'"') else {
        return bad("header_sha256 is not a string");
    };
    let found = &line[start..start + len];
    let mut blanked = Vec::with_capacity(line.len());
    blanked.extend_from_slice(&line[..start]);
    blanked.extend_from_slice(&line[start + len..]);
    let sum = crate::identity::hex_bytes(&Sha256::digest(&blanked));
    if found != sum.as_bytes() {
        return Err(BackupError::BadHeader(format!(
            "its own checksum fails (header_sha256 is {}, the line hashes to {sum}): was the \
             header damaged or edited?",
            String::from_utf8_lossy(found)
        )));
    }
    Ok(())
}

/// Who is writing a backup, for its header.
#[derive(Debug, Clone)]
pub struct Origin {
    pub node: String,
    pub created_ms: u64,
    pub version: String,
}

/// Why a backup file was refused.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not a cookie-crud backup: it does not start with the line COOKIE-CRUD-BACKUP")]
    NotABackup,
    #[error(
        "backup format {found} is newer than this cookie-crud reads (format {FORMAT}): restore it \
         with the version that wrote it ({version}) or a newer one"
    )]
    NewerFormat { found: u32, version: String },
    #[error("the backup's header is corrupt: {0}")]
    BadHeader(String),
    #[error("the backup is truncated: {0}")]
    Truncated(String),
    #[error("the backup is corrupt: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

// ---------------------------------------------------------------------------------------
// Writing

/// Counts and hashes what is written through it, and passes it on (or nowhere).
struct Tally<W> {
    inner: Counted<W>,
    hash: Sha256,
}

impl<W> Tally<W> {
    fn new(inner: W) -> Self {
        Tally {
            inner: Counted::new(inner),
            hash: Sha256::new(),
        }
    }

    fn bytes(&self) -> u64 {
        self.inner.bytes
    }
}

impl<W: Write> Write for Tally<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl StoreReader {
    /// Write a backup of the applied state into `out`, from one read transaction: the magic
    /// line, the header, the body. `on_header` is told the header before the body is written
    /// (an HTTP handler answers with it). Blocking: run it off the async runtime.
    pub fn backup(
        &self,
        origin: Origin,
        on_header: &mut dyn FnMut(&BackupHeader),
        out: &mut dyn Write,
    ) -> Result<BackupHeader, BoxError> {
        let db = self.flushed_db()?;
        let txn = db.begin_read()?;
        let applied = applied_in(&txn)?;
        let registry = registry_in(&txn)?;
        // First walk: count and hash.
        let mut tally = Tally::new(io::sink());
        let (records, keys) = write_body(&txn, &registry, &mut tally)?;
        let mut header = BackupHeader {
            format: FORMAT,
            cluster_id: registry.cluster.map(hex),
            index: applied.map_or(0, |l| l.index),
            term: applied.map_or(0, |l| l.leader_id.term),
            records,
            idempotency_keys: keys,
            body_bytes: tally.bytes(),
            sha256: crate::identity::hex_bytes(&tally.hash.finalize()),
            node: origin.node,
            created_ms: origin.created_ms,
            version: origin.version,
            header_sha256: None,
        };
        header.seal()?;
        on_header(&header);
        out.write_all(MAGIC)?;
        out.write_all(&header.line()?)?;
        // Second walk, in the same transaction: the same bytes.
        let mut sent = Tally::new(&mut *out);
        write_body(&txn, &registry, &mut sent)?;
        if sent.bytes() != header.body_bytes {
            return Err("the backup's body changed between its two walks".into());
        }
        out.flush()?;
        Ok(header)
    }
}

// ---------------------------------------------------------------------------------------
// Reading

/// Read the magic line and the header; leaves `r` at the start of the body.
pub fn read_header(r: &mut impl BufRead) -> Result<BackupHeader, BackupError> {
    let mut magic = vec![0u8; MAGIC.len()];
    match r.read_exact(&mut magic) {
        Ok(()) if magic == MAGIC => {}
        Ok(()) => return Err(BackupError::NotABackup),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(BackupError::NotABackup),
        Err(e) => return Err(e.into()),
    }
    let mut line = Vec::new();
    r.take(MAX_HEADER).read_until(b'\n', &mut line)?;
    if line == b"\n" {
        return Err(BackupError::BadHeader(
            "the header line is empty".to_owned(),
        ));
    }
    if line.last() != Some(&b'\n') {
        // A line cut short by the end of the file is a truncated file, not a long line.
        let why = if (line.len() as u64) < MAX_HEADER {
            "the file ends inside it: was the file cut short?"
        } else {
            "no end of line within 64 KiB"
        };
        return Err(BackupError::BadHeader(why.to_owned()));
    }
    // The format first: a newer file's header may not parse as this version's.
    let probe: serde_json::Value =
        serde_json::from_slice(&line).map_err(|e| BackupError::BadHeader(e.to_string()))?;
    let found = probe.get("format").and_then(|f| f.as_u64());
    match found {
        Some(f) if f > FORMAT as u64 => {
            return Err(BackupError::NewerFormat {
                found: u32::try_from(f).unwrap_or(u32::MAX),
                version: probe
                    .get("version")
                    .and_then(|v| v.as_str())
                    .unwrap_or("unknown")
                    .to_owned(),
            })
        }
        Some(0) => {
            return Err(BackupError::BadHeader(
                "format 0 was never written".to_owned(),
            ))
        }
        // Format 1 had no seal: one that carries a seal is a later file whose format was
        // damaged, and taking it as format 1 would skip the seal's check (found in review:
        // "format":2 edited to 1 with a changed index restored).
        Some(1) if probe.get("header_sha256").is_some() => {
            return Err(BackupError::BadHeader(
                "format 1 carries no header_sha256; this one does: was the header edited?"
                    .to_owned(),
            ))
        }
        Some(1) => {}
        Some(_) => check_seal(&line)?,
        None => return Err(BackupError::BadHeader("it names no format".to_owned())),
    }
    let header: BackupHeader =
        serde_json::from_value(probe).map_err(|e| BackupError::BadHeader(e.to_string()))?;
    // The restored log starts after the index: one at the end of the range left no room
    // for a next entry, and the restored node took no write and then could not start
    // (found in review; the checksum covers the body, not the header).
    if header.index > MAX_INDEX {
        return Err(BackupError::BadHeader(format!(
            "index {} is past any log's ({MAX_INDEX} at most): was the header edited?",
            header.index
        )));
    }
    Ok(header)
}

/// The largest index a backup may name: the restored log must have room after it.
const MAX_INDEX: u64 = i64::MAX as u64;

/// One row of a backup's body, as restore writes it.
enum Row {
    Record(String, Vec<u8>),
    Key(String, Vec<u8>, u64),
}

/// Hashes and counts what is read through it, reporting progress.
struct Hashing<'a, R> {
    inner: R,
    read: u64,
    hash: Sha256,
    progress: &'a dyn Fn(u64),
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.read += n as u64;
        (self.progress)(self.read);
        Ok(n)
    }
}

fn take<T: serde::de::DeserializeOwned>(r: &mut impl Read, what: &str) -> Result<T, BackupError> {
    let config = bincode::config::standard().with_limit::<MAX_ROW>();
    bincode::serde::decode_from_std_read(r, config).map_err(|e| match e {
        bincode::error::DecodeError::UnexpectedEnd { .. } => {
            BackupError::Truncated(format!("it ends inside {what}"))
        }
        bincode::error::DecodeError::Io { inner, .. }
            if inner.kind() == io::ErrorKind::UnexpectedEof =>
        {
            BackupError::Truncated(format!("it ends inside {what}"))
        }
        e => BackupError::Corrupt(format!("{what} does not decode: {e}")),
    })
}

/// Read a count of `what` from the body, which must be the header's `expected`.
fn count(r: &mut impl Read, expected: u64, what: &str) -> Result<u64, BackupError> {
    let n: u64 = take(r, &format!("the count of {what}"))?;
    if n != expected {
        return Err(BackupError::Corrupt(format!(
            "the header says {expected} {what}, the body {n}"
        )));
    }
    Ok(n)
}

/// Walk a body of `header.body_bytes` bytes: every row decoded and checked exactly as
/// installing a snapshot reads it, handed to `each`; then the counts, the end of the file
/// and the checksum checked. Returns the registry.
fn walk_body(
    r: &mut impl Read,
    header: &BackupHeader,
    progress: &dyn Fn(u64),
    each: &mut dyn FnMut(Row) -> Result<(), BoxError>,
) -> Result<Registry, BackupError> {
    let mut body = Hashing {
        inner: r.take(header.body_bytes),
        read: 0,
        hash: Sha256::new(),
        progress,
    };
    let mut last = Ascending::default();
    for _ in 0..count(&mut body, header.records, "records")? {
        let (id, value): (String, serde_bytes::ByteBuf) = take(&mut body, "a record")?;
        if id.is_empty() || id.len() > MAX_ID_BYTES {
            return Err(BackupError::Corrupt(format!(
                "a record id of {} bytes (1 to {MAX_ID_BYTES})",
                id.len()
            )));
        }
        last.next(&id, "record")?;
        let value = value.into_vec();
        check_record(&id, &value, header.index).map_err(BackupError::Corrupt)?;
        each(Row::Record(id, value)).map_err(|e| BackupError::Io(io::Error::other(e)))?;
    }
    let mut last = Ascending::default();
    for _ in 0..count(&mut body, header.idempotency_keys, "idempotency keys")? {
        let (key, value): (String, serde_bytes::ByteBuf) = take(&mut body, "an idempotency key")?;
        if !valid_idempotency_key(key.as_bytes()) {
            return Err(BackupError::Corrupt(format!(
                "idempotency key {key:?} is not one a client could have sent"
            )));
        }
        last.next(&key, "idempotency key")?;
        let value = value.into_vec();
        let rec: KeyRecord = codec::decode(&value)
            .map_err(|e| BackupError::Corrupt(format!("idempotency key {key:?}: {e}")))?;
        each(Row::Key(key, value, rec.expires_ms))
            .map_err(|e| BackupError::Io(io::Error::other(e)))?;
    }
    let registry: Registry = take(&mut body, "the registry")?;
    if body.read != header.body_bytes {
        return Err(BackupError::Corrupt(format!(
            "{} bytes after the body's last row",
            header.body_bytes - body.read
        )));
    }
    let sum = crate::identity::hex_bytes(&body.hash.finalize());
    if sum != header.sha256 {
        return Err(BackupError::Corrupt(format!(
            "its SHA-256 is {sum}, the header says {}",
            header.sha256
        )));
    }
    let mut rest = [0u8; 1];
    if r.read(&mut rest)? != 0 {
        return Err(BackupError::Corrupt(
            "there is data after the body".to_owned(),
        ));
    }
    Ok(registry)
}

/// Rows come in strictly ascending order of their ids, as a backup writes them (the order
/// of the table it walks). A file with an id twice was restored as it came: the table kept
/// the last row, the list index one entry for each, and the restored node listed the
/// record twice, then failed every list once it was deleted, while nodes that joined it
/// built their index again from a snapshot and listed it once (found in review).
#[derive(Default)]
struct Ascending(Option<String>);

impl Ascending {
    fn next(&mut self, id: &str, what: &str) -> Result<(), BackupError> {
        if let Some(last) = &self.0 {
            if id <= last.as_str() {
                return Err(BackupError::Corrupt(format!(
                    "{what} {id:?} comes after {last:?}: rows must be in ascending order, \
                     each once"
                )));
            }
        }
        self.0 = Some(id.to_owned());
        Ok(())
    }
}

/// A record as `apply` stores it: a record header, then a JSON object whose `cookie` is the
/// id, and a version (the index of the entry that wrote it) no later than `index`, the
/// backup's. The checksum covers the body, not the header: a header whose index was edited
/// down would restore a log that starts before versions the records hold, and later writes
/// would give records versions they had before (an `If-Match` would then match the wrong
/// state); no backup is taken past its own index, so such a file is refused (found in review).
/// Read as the object's syntax and its `cookie` alone, not as a `serde_json::Value`: that
/// would read a key serde_json reserves as its own marker (`crate::reserved_keys`), and a
/// record stored with one before writes refused them would fail every backup's check. It
/// costs less too.
fn check_record(id: &str, value: &[u8], index: u64) -> Result<(), String> {
    /// The object's `cookie`, borrowed where it has no escapes; every other field is only
    /// checked to be JSON.
    #[derive(serde::Deserialize)]
    struct Named<'a> {
        #[serde(borrow)]
        cookie: Option<std::borrow::Cow<'a, str>>,
    }
    let rec = Record::decode(value).ok_or_else(|| format!("record {id:?} does not decode"))?;
    if rec.version > index {
        return Err(format!(
            "record {id:?} has version {}, past the backup's index {index} (was the header edited?)",
            rec.version
        ));
    }
    // (A struct would read an array too: a record is stored as a compact object.)
    if rec.json.first() != Some(&b'{') {
        return Err(format!("record {id:?} is not a JSON object"));
    }
    let named: Named<'_> =
        serde_json::from_slice(&rec.json).map_err(|e| format!("record {id:?} is not JSON: {e}"))?;
    match named.cookie {
        Some(c) if c == id => Ok(()),
        _ => Err(format!("record {id:?} does not name itself")),
    }
}

/// Check a whole backup file without writing anything; returns its header.
pub fn verify(path: &Path, progress: &dyn Fn(u64)) -> Result<BackupHeader, BackupError> {
    let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
    let header = read_header(&mut r)?;
    walk_body(&mut r, &header, progress, &mut |_| Ok(()))?;
    Ok(header)
}

// ---------------------------------------------------------------------------------------
// Restoring

/// Who the restored node is.
#[derive(Debug, Clone)]
pub struct RestoreTarget {
    pub node_id: NodeId,
    pub node: CookieNode,
    /// The new cluster's id.
    pub cluster: u64,
}

/// Why a restore was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{path} is not empty: restore writes only a new data directory (move it away, or pick another)")]
    NotEmpty { path: String },
    #[error("{0}")]
    Backup(#[from] BackupError),
    #[error("writing {path}: {err}")]
    Write { path: String, err: BoxError },
    #[error("another restore is writing {path}: wait for it, or stop it and run this again")]
    InProgress { path: String },
}

/// What a fresh filesystem holds at its root (ext4's), which is no data: a volume mounted as
/// the data directory holds it.
const LOST_FOUND: &str = "lost+found";

/// Whether `dir` holds nothing but the names in `besides` (and a fresh filesystem's
/// `lost+found`); a directory that is not there holds nothing.
fn holds_only(dir: &Path, besides: &[&str]) -> io::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let name = entry?.file_name();
                if name != LOST_FOUND && !besides.iter().any(|b| name == *b) {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

/// The directory, inside the data directory, that a restore writes in before it moves what it
/// wrote up into the data directory. While it is there, the data directory is an unfinished
/// restore: see [`interrupted_restore`].
pub const RESTORING: &str = ".restoring";

/// Whether `dir` holds a restore that did not finish: a node must not start on it (its files
/// may be only some of the restored ones), and [`restore`] run again clears it.
pub fn interrupted_restore(dir: &Path) -> bool {
    dir.join(RESTORING).exists()
}

/// Remove everything in `dir` (but `lost+found`), which an interrupted restore wrote: a
/// restore starts only on an empty directory, and a node never starts on one that holds
/// [`RESTORING`].
fn clear_interrupted(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() == LOST_FOUND {
            continue;
        }
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    crate::durable::sync_dir(dir)
}

/// Move every entry of `staging` up into `dir`, its parent (renames within one
/// filesystem), never over a file already there, then remove `staging`, syncing `dir` after
/// each step.
fn move_up(staging: &Path, dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(staging)? {
        let entry = entry?;
        crate::durable::rename_no_replace(&entry.path(), &dir.join(entry.file_name()))?;
    }
    crate::durable::sync_dir(dir)?;
    std::fs::remove_dir(staging)?;
    crate::durable::sync_dir(dir)
}

/// Restore the backup at `file` into `dir`, a data directory that must be empty or absent:
/// see the module's documentation. `progress` is told the body bytes read so far, for the
/// check and then for the writing (two walks of the file). Blocking, and not to be called on
/// an async runtime (it runs one of its own for the log).
pub fn restore(
    file: &Path,
    dir: &Path,
    target: &RestoreTarget,
    progress: &dyn Fn(u64),
) -> Result<BackupHeader, RestoreError> {
    let failed = |err: BoxError| RestoreError::Write {
        path: dir.display().to_string(),
        err,
    };
    let not_empty = || RestoreError::NotEmpty {
        path: dir.display().to_string(),
    };
    let existed = dir.exists();
    // One restore at a time in a directory, held until this returns: a second one took the
    // first's `.restoring` for an interrupted restore, cleared it, and the first reported
    // success for data the second had written (found in review).
    crate::durable::create_dir_all(dir).map_err(|e| failed(e.into()))?;
    let lock = std::fs::File::open(dir).map_err(|e| failed(e.into()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(RestoreError::InProgress {
                path: dir.display().to_string(),
            })
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(failed(e.into())),
    }
    let interrupted = interrupted_restore(dir);
    if !interrupted && !holds_only(dir, &[]).map_err(|e| failed(e.into()))? {
        return Err(not_empty());
    }
    if interrupted {
        // Everything in it is what the interrupted restore wrote, and never a node's data.
        clear_interrupted(dir).map_err(|e| failed(e.into()))?;
    }
    // Claim the directory before the long check of the file: from now on a node refuses
    // to start on it. (Claimed after the check, a node started meanwhile found it empty,
    // served writes, and then had its files replaced: found in review.) One that started
    // between the look above and the claim has written its files: look again.
    let staging = dir.join(RESTORING);
    crate::durable::create_dir_all(&staging).map_err(|e| failed(e.into()))?;
    let unclaim = || {
        let _ = std::fs::remove_dir_all(&staging);
        if !existed {
            let _ = std::fs::remove_dir(dir);
        }
    };
    if !holds_only(dir, &[RESTORING]).map_err(|e| failed(e.into()))? {
        unclaim();
        return Err(not_empty());
    }
    let header = match verify(file, progress) {
        Ok(h) => h,
        Err(e) => {
            unclaim();
            return Err(e.into());
        }
    };

    // The restored state sits after the backup's last entry, in term 1 of the new cluster;
    // the log starts empty, purged up to there.
    let applied = LogId::new(
        CommittedLeaderId::new(1, target.node_id),
        header.index.max(1),
    );
    let incarnation = crate::log::create_purged(&staging, applied).map_err(failed)?;

    let registry = Registry {
        cluster: Some(target.cluster),
        members: BTreeMap::from([(target.node_id, incarnation)]),
    };
    let membership = Membership::new(
        Some(applied),
        Voters::new(
            vec![BTreeSet::from([target.node_id])],
            BTreeMap::from([(target.node_id, target.node.clone())]),
        ),
    );
    let state = RestoredState {
        applied,
        membership,
        registry,
    };
    write_state((file, &header), &staging, &state, progress).map_err(|e| match e {
        WriteError::Backup(b) => RestoreError::Backup(b),
        WriteError::Other(err) => failed(err),
    })?;

    crate::durable::sync_dir(&staging).map_err(|e| failed(e.into()))?;
    move_up(&staging, dir).map_err(|e| failed(e.into()))?;
    Ok(header)
}

struct RestoredState {
    applied: LogId<NodeId>,
    membership: Membership,
    registry: Registry,
}

enum WriteError {
    Backup(BackupError),
    Other(BoxError),
}

impl<E: Into<BoxError>> From<E> for WriteError {
    fn from(e: E) -> Self {
        WriteError::Other(e.into())
    }
}

/// Write `sm.redb` in `dir` from the (already verified) backup: the rows in batches, then
/// the created-order index, the registry, `last_applied` and the membership in the last,
/// durable, transaction.
fn write_state(
    (file, header): (&Path, &BackupHeader),
    dir: &Path,
    state: &RestoredState,
    progress: &dyn Fn(u64),
) -> Result<(), WriteError> {
    let db = crate::create_db(
        &dir.join("sm.redb"),
        crate::DbCache::default().state_machine,
    )?;
    let mut r = BufReader::with_capacity(1 << 20, File::open(file)?);
    read_header(&mut r).map_err(WriteError::Backup)?;
    let mut batch: Vec<Row> = Vec::with_capacity(RESTORE_BATCH);
    let mut index: Vec<(u64, String)> = Vec::with_capacity(header.records as usize);
    let flush = |batch: &mut Vec<Row>, index: &mut Vec<(u64, String)>| -> Result<(), BoxError> {
        let mut txn = db.begin_write()?;
        // Only the last transaction needs to be durable: until it commits, the directory is
        // the staging one, and a crash leaves it to be removed.
        txn.set_durability(Durability::None)?;
        {
            let mut cookies = txn.open_table(COOKIES)?;
            let mut keys = txn.open_table(KEYS)?;
            let mut by_expiry = txn.open_table(KEYS_BY_EXPIRY)?;
            for row in batch.drain(..) {
                match row {
                    Row::Record(id, value) => {
                        let created = Record::decode(&value).map_or(0, |r| r.created);
                        cookies.insert(id.as_str(), value.as_slice())?;
                        index.push((order_key(created), id));
                    }
                    Row::Key(key, value, expires) => {
                        keys.insert(key.as_str(), value.as_slice())?;
                        by_expiry.insert((expires, key.as_str()), ())?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    };
    walk_body(&mut r, header, progress, &mut |row| {
        batch.push(row);
        if batch.len() >= RESTORE_BATCH {
            flush(&mut batch, &mut index)?;
        }
        Ok(())
    })
    .map_err(WriteError::Backup)?;
    flush(&mut batch, &mut index)?;

    index.sort_unstable();
    let txn = db.begin_write()?;
    {
        let mut order = txn.open_table(BY_CREATED)?;
        for (key, id) in &index {
            order.insert((*key, id.as_str()), ())?;
        }
        txn.open_table(IDENTITY)?
            .insert(KEY_REGISTRY, codec::encode(&state.registry)?.as_slice())?;
    }
    put_meta(&txn, KEY_APPLIED, &Some(state.applied))?;
    put_meta(&txn, KEY_MEMBERSHIP, &state.membership)?;
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests;
