//! The snapshot format, written and read as a stream.
//!
//! A snapshot's data is the bincode encoding of
//! `{ rows: Vec<(id, record)>, keys: Vec<(key, key record)>, registry: Registry }`: each
//! `Vec` is its length (a varint), then its elements. Written element by element from one
//! redb read transaction ([`write_body`]) and read back element by element ([`walk`]), a
//! snapshot of any size costs one row of memory at a time, never the whole state (issue 16:
//! a million records held whole were most of a node's peak). Backups carry the same bytes as
//! their body ([`super::backup`]).
//!
//! Earlier versions wrote the rows alone, then rows and keys: each version only appended a
//! field, so a stream that ends cleanly where a field would start is of an earlier version.
//!
//! # Compression
//! Snapshot files (and so snapshot transfers) are one zstd frame around that stream, at a
//! fast level: a snapshot is otherwise as large as the records, and with `sm.redb` beside it
//! a data directory held over twice the records' bytes (issue 16). Readers take both: a file
//! from before compression starts with its row count, and no such start is zstd's magic
//! (that would need a row id whose second byte is 0xFD, which no UTF-8 text has). A
//! compressed stream is read with a bounded window and a bound on what comes out of it, so
//! a small hostile file cannot unpack into an unbounded one. Backups keep the stream
//! uncompressed (their format is documented and hashed as such).

use std::io::{self, BufRead, BufReader, Read, Write};

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::tables::{COOKIES, KEYS};
use crate::command::KeyRecord;
use crate::identity::Registry;
use crate::record::Record;
use crate::{codec, BoxError};

/// The largest single value a snapshot row may claim: bounds what one hostile length
/// prefix makes a reader allocate (a record is at most `max_body_bytes`, 1 MiB by default).
const MAX_ROW: usize = 64 << 20;

/// Encode `value` onto `w` as one element of the stream.
pub(super) fn put<T: Serialize + ?Sized>(w: &mut dyn Write, value: &T) -> Result<(), BoxError> {
    let mut w = w;
    bincode::serde::encode_into_std_write(value, &mut w, bincode::config::standard())?;
    Ok(())
}

/// The next element of the stream.
fn next<T: DeserializeOwned>(r: &mut dyn BufRead) -> Result<T, BoxError> {
    let config = bincode::config::standard().with_limit::<MAX_ROW>();
    // bincode reads exactly what it decodes (no read-ahead), so the stream stays at the
    // next element.
    let mut r = r;
    Ok(bincode::serde::decode_from_std_read(&mut r, config)?)
}

/// Whether the stream has ended (nothing more to read).
fn at_end(r: &mut dyn BufRead) -> io::Result<bool> {
    Ok(r.fill_buf()?.is_empty())
}

/// How a zstd frame starts (its magic number, little-endian).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// zstd's fastest standard level: a million records compress in about a second.
const LEVEL: i32 = 1;
/// The largest window a compressed snapshot may ask its reader for (8 MiB; level 1 uses
/// far less). zstd's own limit would let a hostile frame claim 128 MiB.
const WINDOW_LOG_MAX: u32 = 23;

/// What a build wrote: records, idempotency keys, and the bytes before compression (the
/// size of the state, which the snapshot policy weighs the log against).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Written {
    pub records: u64,
    pub keys: u64,
    pub raw_bytes: u64,
}

/// [`write_body`], compressed: what a snapshot file holds.
pub(super) fn write_compressed(
    txn: &ReadTransaction,
    registry: &Registry,
    w: &mut dyn Write,
) -> Result<Written, BoxError> {
    let mut z = Counted::new(zstd::Encoder::new(w, LEVEL)?);
    let (records, keys) = write_body(txn, registry, &mut z)?;
    z.inner.finish()?;
    Ok(Written {
        records,
        keys,
        raw_bytes: z.bytes,
    })
}

/// Counts the bytes written through it (a snapshot's raw size; a backup's body).
pub(super) struct Counted<W> {
    pub inner: W,
    pub bytes: u64,
}

impl<W> Counted<W> {
    pub fn new(inner: W) -> Self {
        Counted { inner, bytes: 0 }
    }
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Fails a read once more than `left` bytes came out of `inner`.
struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "snapshot larger than the limit")
        })?;
        Ok(n)
    }
}

/// The snapshot stream held in `r`, compressed or not (see the module's documentation),
/// failing once more than `limit` bytes of it are read.
pub(super) fn open<'a>(
    mut r: impl BufRead + Send + 'a,
    limit: u64,
) -> io::Result<Box<dyn BufRead + Send + 'a>> {
    let inner: Box<dyn Read + Send + 'a> = if r.fill_buf()?.starts_with(&ZSTD_MAGIC) {
        let mut z = zstd::Decoder::with_buffer(r)?;
        z.window_log_max(WINDOW_LOG_MAX)?;
        Box::new(z)
    } else {
        Box::new(r)
    };
    Ok(Box::new(BufReader::with_capacity(
        256 << 10,
        Bounded { inner, left: limit },
    )))
}

/// Write a snapshot of `txn` (with its `registry`) onto `w`: every record, every
/// idempotency key, the registry. Returns (records, keys).
pub(super) fn write_body(
    txn: &ReadTransaction,
    registry: &Registry,
    w: &mut dyn Write,
) -> Result<(u64, u64), BoxError> {
    let mut counts = [0u64; 2];
    for (slot, def) in [COOKIES, KEYS].into_iter().enumerate() {
        let table = txn.open_table(def)?;
        let n = table.len()?;
        // A Vec's encoding: its length, then each element.
        put(w, &n)?;
        for row in table.iter()? {
            let (k, v) = row?;
            // As bytes, not a sequence of u8: the same encoding, written in one call
            // instead of one per byte (which made a build of 160,000 records take seconds).
            put(w, &(k.value(), serde_bytes::Bytes::new(v.value())))?;
            counts[slot] += 1;
        }
        if counts[slot] != n {
            return Err(format!("table length {n} but {} rows", counts[slot]).into());
        }
    }
    put(w, registry)?;
    Ok((counts[0], counts[1]))
}

/// One row of a snapshot, decoded and checked as installing it needs.
pub(super) enum Row {
    /// A record, stored verbatim, and its `created` (for the list index).
    Record {
        id: String,
        value: Vec<u8>,
        created: i64,
    },
    /// An idempotency key, stored verbatim, and when it expires (for the expiry index).
    Key {
        key: String,
        value: Vec<u8>,
        expires_ms: u64,
    },
}

/// Read a whole snapshot from `r`, each row handed to `each` in order (records by id, then
/// keys); returns the registry. Fails on a row that does not decode as installing reads it,
/// on a stream that ends inside a field, and on bytes after the end.
pub(super) fn walk(
    r: &mut dyn BufRead,
    each: &mut dyn FnMut(Row) -> Result<(), BoxError>,
) -> Result<Registry, BoxError> {
    let records: u64 = next(r)?;
    for _ in 0..records {
        let (id, value): (String, serde_bytes::ByteBuf) = next(r)?;
        let value = value.into_vec();
        let created = Record::decode(&value)
            .ok_or_else(|| format!("record {id:?} in the snapshot does not decode"))?
            .created;
        each(Row::Record { id, value, created })?;
    }
    if at_end(r)? {
        return Ok(Registry::default()); // written before idempotency keys
    }
    let keys: u64 = next(r)?;
    for _ in 0..keys {
        let (key, value): (String, serde_bytes::ByteBuf) = next(r)?;
        let value = value.into_vec();
        let rec: KeyRecord = codec::decode(&value)
            .map_err(|e| format!("idempotency key {key:?} in the snapshot: {e}"))?;
        let expires_ms = rec.expires_ms;
        each(Row::Key {
            key,
            value,
            expires_ms,
        })?;
    }
    if at_end(r)? {
        return Ok(Registry::default()); // written before identities
    }
    let registry = next(r)?;
    if !at_end(r)? {
        return Err("bytes after the snapshot's end".into());
    }
    Ok(registry)
}

/// Check that `r` holds a snapshot (compressed or not) this node can install, of at most
/// `limit` bytes uncompressed, row by row, exactly as installing reads it, in bounded
/// memory. Returns the bytes of its rows (ids, keys and values), what installing it writes.
pub fn validate(r: impl BufRead + Send, limit: u64) -> Result<u64, BoxError> {
    let mut bytes = 0u64;
    walk(&mut open(r, limit)?, &mut |row| {
        let (name, value) = match &row {
            Row::Record { id, value, .. } => (id, value),
            Row::Key { key, value, .. } => (key, value),
        };
        bytes += (name.len() + value.len()) as u64;
        Ok(())
    })?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Serialize, Deserialize)]
    struct Whole {
        rows: Vec<(String, Vec<u8>)>,
        keys: Vec<(String, Vec<u8>)>,
        registry: Registry,
    }

    fn record(id: &str) -> (String, Vec<u8>) {
        let json = format!(r#"{{"cookie":"{id}"}}"#).into_bytes();
        (id.to_owned(), Record::new(1, json).encode())
    }

    fn ids(bytes: &[u8]) -> Result<(Vec<String>, Registry), BoxError> {
        let mut seen = Vec::new();
        let registry = walk(&mut &bytes[..], &mut |row| {
            if let Row::Record { id, .. } = row {
                seen.push(id);
            }
            Ok(())
        })?;
        Ok((seen, registry))
    }

    /// What `write_body` streams is what encoding the whole value at once gives, so either
    /// reads the other's bytes.
    #[test]
    fn the_stream_reads_a_whole_encoding_and_its_earlier_versions() {
        let registry = Registry {
            cluster: Some(7),
            members: [(1, 0x11)].into_iter().collect(),
        };
        let whole = codec::encode(&Whole {
            rows: vec![record("a"), record("b")],
            keys: Vec::new(),
            registry: registry.clone(),
        })
        .unwrap();
        assert_eq!(
            ids(&whole).unwrap(),
            (vec!["a".into(), "b".into()], registry)
        );
        // Rows alone (the first version), then rows and keys (the second).
        let v1 = codec::encode(&(vec![record("a")],)).unwrap();
        assert_eq!(ids(&v1).unwrap().0, ["a"]);
        let v2 = codec::encode(&(vec![record("a")], Vec::<(String, Vec<u8>)>::new())).unwrap();
        assert_eq!(ids(&v2).unwrap(), (vec!["a".into()], Registry::default()));
    }

    #[test]
    fn garbage_truncation_and_trailing_bytes_are_refused() {
        let whole = codec::encode(&Whole {
            rows: vec![record("a"), record("b")],
            keys: Vec::new(),
            registry: Registry::default(),
        })
        .unwrap();
        assert!(validate(&whole[..], u64::MAX).is_ok());
        assert!(validate(&[][..], u64::MAX).is_err());
        assert!(validate(&b"garbage, not a snapshot"[..], u64::MAX).is_err());
        // Cut inside the second record.
        assert!(validate(&whole[..whole.len() / 2], u64::MAX).is_err());
        let mut long = whole.clone();
        long.push(0);
        assert!(validate(&long[..], u64::MAX).is_err());
        // Valid framing, a record that does not decode.
        let bad = codec::encode(&(vec![("a".to_owned(), vec![1u8])],)).unwrap();
        assert!(validate(&bad[..], u64::MAX).is_err());
    }

    /// A compressed snapshot reads as the same rows, and one that unpacks past the limit is
    /// refused.
    #[test]
    fn compressed_snapshots_read_back_within_their_limit() {
        let whole = codec::encode(&Whole {
            rows: (0..500).map(|i| record(&format!("c{i}"))).collect(),
            keys: Vec::new(),
            registry: Registry::default(),
        })
        .unwrap();
        let packed = zstd::encode_all(&whole[..], LEVEL).unwrap();
        assert!(
            packed.len() * 4 < whole.len(),
            "{} {}",
            packed.len(),
            whole.len()
        );
        let mut seen = 0;
        walk(&mut open(&packed[..], u64::MAX).unwrap(), &mut |_| {
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 500);
        assert!(validate(&packed[..], whole.len() as u64).is_ok());
        assert!(validate(&packed[..], whole.len() as u64 - 1).is_err());
        assert!(validate(&whole[..], whole.len() as u64 - 1).is_err());
        // A frame cut short.
        assert!(validate(&packed[..packed.len() - 3], u64::MAX).is_err());
    }

    /// A length prefix that claims more than a row may hold is refused before anything of
    /// that size is allocated.
    #[test]
    fn a_hostile_length_is_refused() {
        let mut bytes = codec::encode(&1u64).unwrap(); // one record
        bytes.extend(codec::encode(&"a").unwrap());
        bytes.extend(codec::encode(&(u64::MAX >> 1)).unwrap()); // its value's claimed length
        assert!(validate(&bytes[..], u64::MAX).is_err());
    }
}
