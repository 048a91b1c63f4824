//! The Raft log's entries as an append-only write-ahead log: segment files of framed
//! records, appended with one write and made durable with one `fdatasync`.
//!
//! Why not a redb table: a redb commit rewrites B-tree pages, allocator state and its header
//! before the fsync, and that was a quarter of a node's CPU on the write path
//! (`docs/benchmarks.md`). A log is only ever appended at the end, cut at the end (a
//! follower's conflicting suffix) or dropped at the front (after a snapshot), which a file per
//! segment does with no bookkeeping beyond an in-memory index of where each record starts.
//!
//! # Layout
//! `dir/<first index, 20 digits>.wal`, each a segment header
//! `[magic C0 0C 1E FF][format version u32 LE = 2][key u64 LE][crc32 of those 16 bytes]
//! [4 zero bytes]` followed by records
//! `[payload length u32 LE][crc32 u32 LE][index u64 LE][masked payload]`, the CRC covering
//! the index and the payload as stored. Indices are contiguous within a segment and across
//! segments, except that a segment may start after a gap when everything before it was
//! purged.
//!
//! A payload is stored XORed with a keystream drawn from the segment's random key and the
//! record's index (`mask`), so that no record's bytes hold a sector of zeros, whatever the
//! client sent (a cookie id of NUL characters is stored as it is): recovery takes a zeroed
//! sector for a write that never reached the disk (`torn_before`), and an unmasked record
//! could hold one of its own. Segments of format 1, written before the header existed, are
//! records from byte 0 with their payloads as they are; they are still read, and the first
//! append after an open starts a segment of the current format. A binary that knows only
//! format 1 refuses a log of format 2 (the header reads as a damaged record followed by
//! valid ones) instead of misreading it.
//!
//! # Zeros ahead of the records
//! The active segment is kept written with zeros a little past its last record, by a thread
//! of their own (the `ahead` module), so that an append overwrites bytes the file already has.
//! Then the file's size and block map do not change on an append, and `fdatasync` has only
//! the data to write: on ext4 an append that grows the file also has to commit the
//! filesystem's journal, which every file on the disk shares, so its sync waits for other
//! files' metadata too (the other nodes' logs, the state machine's flushes). The zeros are
//! topped up about once per MiB of records, so one sync in that many carries the journal
//! commit. etcd preallocates its segments with `fallocate` instead, which on ext4 leaves
//! unwritten extents whose first write is again a journal commit. The cost on disk is
//! bounded: a segment is never zeroed past its size ([`SEGMENT_BYTES`] unless configured), and one that is finished is
//! cut to its records.
//!
//! # Durability and recovery
//! [`Wal::append`] writes; the caller makes it durable with [`Wal::sync_handle`] (see
//! [`crate::log`], which fsyncs on another thread and acknowledges afterwards). A crash can leave
//! the end of the last segment torn: recovery cuts the log at the first record that is short or
//! fails its CRC, provided it is in the last segment and either no valid record follows it or a
//! sector of it reads as zeros (a power cut can keep a later unsynced page and lose an earlier
//! one: `torn_before`), since that write was never acknowledged. Any other damage is
//! corruption of acknowledged entries and fails the open (naming the file and offset) instead of silently
//! dropping entries this node has acknowledged: Raft's safety counts on them. Such a node is wiped
//! and rejoins by snapshot. Truncation is fsynced before it returns: otherwise a crash could bring
//! back the old suffix behind newer, shorter records.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A new segment is started once the active one is this large (by default: see
/// [`Wal::open_with`]). It is also the unit in which a purge gives disk back: a store at rest keeps the segment holding the entries
/// behind its last snapshot, and the one after it. 64 MiB kept a leader at rest 64-85 MB of
/// log (docs/benchmarks.md, Footprint); a roll (the old file cut and synced, a new one and
/// its directory synced) every 16 MiB is a few more syncs per second at the highest loads.
pub const SEGMENT_BYTES: u64 = 16 << 20;
const HEADER: usize = 16;
const SUFFIX: &str = ".wal";

/// The first bytes of a segment of format 2 or later. As a format-1 record header they
/// claim a payload of about 4.3 GB, which no record is: the two formats cannot be confused.
const MAGIC: [u8; 4] = [0xC0, 0x0C, 0x1E, 0xFF];
/// The format this build writes.
const FORMAT: u32 = 2;
/// The segment header's size: magic, format, key, the CRC of those, 4 bytes kept zero.
const SEGMENT_HEADER: usize = 24;

/// How a segment's records are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// Format 1: records from byte 0, payloads as they are.
    Plain,
    /// Format 2: a header, then payloads masked with this key.
    Masked(u64),
}

impl Format {
    /// The format of a segment whose bytes start with `bytes`. A file too short for a
    /// header, or without the magic, is of format 1 (a segment of format 2 whose header
    /// never reached the disk holds no synced record: the header is written, in the same
    /// sector as the first record, before any append).
    fn of(path: &Path, bytes: &[u8]) -> io::Result<Format> {
        if bytes.len() < SEGMENT_HEADER || bytes[..4] != MAGIC {
            return Ok(Format::Plain);
        }
        let version = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        if version != FORMAT {
            return Err(corrupt(format!(
                "{}: a log segment of format {version}, which this version of cookie-crud \
                 cannot read (it reads formats 1 and {FORMAT})",
                path.display()
            )));
        }
        // The records' CRCs cover them as stored, masked: a damaged key would pass them all
        // and unmask every payload to garbage, which failed later as an undecodable entry
        // naming no file (found in review). The header's own CRC refuses it here.
        let crc = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
        if crc != crc32fast::hash(&bytes[..16]) {
            return Err(corrupt(format!(
                "{}: damaged segment header (its checksum fails)",
                path.display()
            )));
        }
        Ok(Format::Masked(u64::from_le_bytes(
            bytes[8..16].try_into().expect("8 bytes"),
        )))
    }

    /// A new segment's header, and its format: a fresh random key.
    fn new_header() -> io::Result<([u8; SEGMENT_HEADER], Format)> {
        let mut key = [0u8; 8];
        getrandom::fill(&mut key).map_err(io::Error::other)?;
        let mut header = [0u8; SEGMENT_HEADER];
        header[..4].copy_from_slice(&MAGIC);
        header[4..8].copy_from_slice(&FORMAT.to_le_bytes());
        header[8..16].copy_from_slice(&key);
        let crc = crc32fast::hash(&header[..16]);
        header[16..20].copy_from_slice(&crc.to_le_bytes());
        Ok((header, Format::Masked(u64::from_le_bytes(key))))
    }

    /// Where the records start.
    fn records_start(self) -> u64 {
        match self {
            Format::Plain => 0,
            Format::Masked(_) => SEGMENT_HEADER as u64,
        }
    }

    /// XOR the payload of record `index` with its keystream (format 2), both ways.
    fn apply(self, index: u64, payload: &mut [u8]) {
        if let Format::Masked(key) = self {
            mask(key, index, payload);
        }
    }
}

/// XOR `buf` with the keystream of record `index` under `key` (SplitMix64, seeded by both).
/// Not for secrecy: a stream the client cannot steer, so that a payload of zeros is not
/// stored as zeros. A zero word in it has a chance of 2^-64, a zero sector none to speak of.
fn mask(key: u64, index: u64, buf: &mut [u8]) {
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut state = key ^ index.wrapping_mul(GAMMA);
    let mut next = || {
        state = state.wrapping_add(GAMMA);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut words = buf.chunks_exact_mut(8);
    for w in &mut words {
        let v = u64::from_le_bytes((&*w).try_into().expect("8 bytes")) ^ next();
        w.copy_from_slice(&v.to_le_bytes());
    }
    let rest = words.into_remainder();
    if !rest.is_empty() {
        for (b, m) in rest.iter_mut().zip(next().to_le_bytes()) {
            *b ^= m;
        }
    }
}

/// Where one record lives.
#[derive(Debug, Clone, Copy)]
struct Loc {
    /// The segment's first index, its key in `Wal::segments`.
    segment: u64,
    /// Offset of the record's header.
    offset: u64,
    len: u32,
}

struct Segment {
    file: Arc<File>,
    format: Format,
    /// Where its records end.
    len: u64,
    /// The zeros after its records.
    ahead: Arc<Ahead>,
}

impl Segment {
    /// Finish it: no more zeros, and the file cut to its records.
    fn finish(&self) -> io::Result<()> {
        self.ahead.close();
        if self.file.metadata()?.len() > self.len {
            self.file.set_len(self.len)?;
        }
        Ok(())
    }
}

/// Whether `bytes` are all zero: the unwritten tail of a segment, not a torn write.
fn zeros(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

pub struct Wal {
    dir: PathBuf,
    zeroer: Zeroer,
    segments: BTreeMap<u64, Segment>,
    /// `locs[i]` is the record of index `first + i`.
    locs: VecDeque<Loc>,
    first: u64,
    /// Set when every record was purged: the next append starts a new segment at its index.
    fresh_segment: bool,
    /// A new segment starts once the active one holds this many bytes.
    segment_bytes: u64,
}

impl Drop for Wal {
    /// No zeros after this: the thread writing them stops within a chunk, and the `Zeroer`
    /// field, dropped next, waits for it.
    fn drop(&mut self) {
        for s in self.segments.values() {
            s.ahead.close();
        }
    }
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

pub(super) fn segment_name(first: u64) -> String {
    format!("{first:020}{SUFFIX}")
}

/// Whether a file named `name` is one of the WAL's segments.
pub(crate) fn is_segment_name(name: &str) -> bool {
    name.strip_suffix(SUFFIX)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Append record `index` to `out` as a segment of `format` stores it.
fn frame(format: Format, index: u64, payload: &[u8], out: &mut Vec<u8>) {
    let at = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // the CRC, below
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(payload);
    format.apply(index, &mut out[at + HEADER..]);
    let crc = crc32fast::hash(&out[at + 8..]);
    out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The records of one segment's bytes, from `start` (where its records start): `(index,
/// offset, payload length)` of each whole, valid record, and the offset where the valid
/// prefix ends.
fn scan(bytes: &[u8], start: usize) -> (Vec<(u64, u64, u32)>, u64) {
    let mut out = Vec::new();
    let mut at = start.min(bytes.len());
    while bytes.len() - at >= HEADER {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let index = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().expect("8 bytes"));
        let end = at + HEADER + len as usize;
        if end > bytes.len() {
            break;
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&bytes[at + 8..end]);
        if h.finalize() != crc {
            break;
        }
        out.push((index, at as u64, len));
        at = end;
    }
    (out, at as u64)
}

/// The smallest unit a disk writes whole: a torn write loses whole sectors.
const SECTOR: usize = 512;

/// Whether the damage from `from` up to the valid record at `next_valid` is a write that
/// did not reach the disk in full: some sector it spans, before the one `next_valid` starts
/// in, reads as zeros where the damaged records are.
///
/// Between two fsyncs nothing orders writes: the kernel's writeback and a disk's volatile
/// cache persist the pages of unsynced appends in any order, so a power cut can keep a
/// later record and lose part of an earlier one. What the lost sectors read as is what they
/// held before the append: zeros, since appends only ever write over the zeros ahead of the
/// records, or past the end of the file (a hole), and a truncation is synced before anything
/// is written over it. An fsync covers every write before it, so the later records were
/// never synced either, and cutting them drops nothing acknowledged. Damage to synced
/// records (a bad disk, a stray write) leaves no such sector: it stays an error. The
/// sector holding the start of `next_valid` is left out, since the valid record proves it
/// reached the disk. etcd's WAL makes the same call on a zeroed sector (`isTornEntry`).
///
/// The rule needs records that never hold a zero sector of their own, or a record that
/// held one (a cookie id of 512 or more NUL characters, which the API allows) and that a
/// bad disk then damaged elsewhere would be taken for a torn write, and cut with the
/// synced records after it (found in review). Payloads are stored masked for that
/// ([`mask`]). Segments of format 1, written unmasked by older versions, keep that blind
/// spot until a snapshot lets them go.
fn torn_before(bytes: &[u8], from: usize, next_valid: usize) -> bool {
    let last = next_valid - next_valid % SECTOR;
    let mut at = from;
    while at < last {
        let end = (at - at % SECTOR + SECTOR).min(last);
        if zeros(&bytes[at..end]) {
            return true;
        }
        at = end;
    }
    false
}

/// The offset of a valid record after `from` whose index is plausibly a later entry
/// (`next` or somewhat above), if any: proof that the damage at `from` is not a torn tail.
fn record_after(bytes: &[u8], from: usize, next: u64) -> Option<usize> {
    const PLAUSIBLE: u64 = 1 << 20;
    (from + 1..=bytes.len().saturating_sub(HEADER)).find(|&at| {
        let index = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().expect("8 bytes"));
        if index < next || index - next > PLAUSIBLE {
            return false; // cheap filter before the CRC
        }
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let end = at + HEADER + len;
        if end > bytes.len() {
            return false;
        }
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let mut h = crc32fast::Hasher::new();
        h.update(&bytes[at + 8..end]);
        h.finalize() == crc
    })
}

use super::ahead::{Ahead, Zeroer};
use crate::durable::sync_dir;

impl Wal {
    /// Open (or create) the log in `dir`. Records at or below `purged` are not indexed (their
    /// segments are left for the next purge to delete, [`Wal::purge_entries`]).
    pub fn open(dir: &Path, purged: Option<u64>) -> io::Result<Wal> {
        Self::open_with(dir, purged, SEGMENT_BYTES)
    }

    /// [`Wal::open`], starting a new segment every `segment_bytes` instead of every
    /// [`SEGMENT_BYTES`]. Segments already there keep their size.
    pub fn open_with(dir: &Path, purged: Option<u64>, segment_bytes: u64) -> io::Result<Wal> {
        // Synced even when it exists: the last segment, appended to from here on, may have
        // been made by a run killed before its name was synced.
        crate::durable::own_dir(dir)?;
        let mut firsts = Vec::new();
        for e in fs::read_dir(dir)? {
            let name = e?.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name.strip_suffix(SUFFIX) {
                let first = n
                    .parse::<u64>()
                    .map_err(|_| corrupt(format!("unexpected file {name} in the log")))?;
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            zeroer: Zeroer::start()?,
            segments: BTreeMap::new(),
            locs: VecDeque::new(),
            first: purged.map_or(0, |p| p + 1),
            fresh_segment: firsts.is_empty(),
            segment_bytes,
        };
        let floor = purged.map_or(0, |p| p + 1);
        for (n, &first) in firsts.iter().enumerate() {
            let last_segment = n + 1 == firsts.len();
            let path = dir.join(segment_name(first));
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let bytes = fs::read(&path)?;
            let format = Format::of(&path, &bytes)?;
            let (records, valid) = scan(&bytes, format.records_start() as usize);
            // Zeros after the records are the space the last segment had ready for more.
            let zero_tail = last_segment && zeros(&bytes[valid as usize..]);
            // A segment whose successor starts at or below the floor holds only purged
            // records: a purge that took every entry dropped it as the last segment, zeros
            // ahead and all, and a crash (or a failed unlink) left it behind the next
            // segment. What it holds is not read again, and the next purge deletes it; its
            // tail was taken for damage and the node refused to start (found in review).
            let wholly_purged =
                purged.is_some() && firsts.get(n + 1).is_some_and(|&next| next <= floor);
            let mut file_len = bytes.len() as u64;
            if valid < bytes.len() as u64 && !zero_tail && !wholly_purged {
                if !last_segment {
                    return Err(corrupt(format!(
                        "{}: damaged record at byte {valid} in a segment that is not the last",
                        path.display()
                    )));
                }
                // A damaged record with valid records after it is damage to acknowledged
                // entries, unless it is a write only partly on disk (`torn_before`):
                // cutting there would silently drop them, and Raft counts on this node
                // having them.
                let next = records.last().map_or(first, |r| r.0 + 1);
                let after = record_after(&bytes, valid as usize, next);
                // A damaged last record, with nothing valid after it, is cut whatever its
                // bytes: it cannot be told from a write cut short. Without stable pages the
                // kernel lets a page change while it is being written back (the fsync of
                // the batch before runs beside the next append), so a power cut can leave
                // part of a sector new and the rest as it was. Refusing such a record when
                // no sector of it read as zeros stopped a node after an ordinary power cut
                // (tried, and found in review); the cost is that bit rot in the last synced
                // record is cut, on this node only, rather than refused.
                if let Some(at) = after {
                    if !torn_before(&bytes, valid as usize, at) {
                        return Err(corrupt(format!(
                            "{}: damaged record at byte {valid}, followed by a valid record at byte {at}",
                            path.display()
                        )));
                    }
                }
                // A torn write and whatever follows it: never synced, never acknowledged.
                tracing::warn!(
                    segment = %path.display(),
                    at = valid,
                    dropped = bytes.len() as u64 - valid,
                    later_record_at = ?after,
                    "cutting a torn write at the end of the log{}",
                    if after.is_some() { ", and the unsynced records written after it" } else { "" }
                );
                file.set_len(valid)?;
                file.sync_all()?;
                file_len = valid;
            }
            for (index, offset, len) in records {
                if index < first {
                    return Err(corrupt(format!(
                        "{}: record {index} at byte {offset}, below the segment's first index",
                        path.display()
                    )));
                }
                if index < floor {
                    continue; // purged; its segment goes at the next purge
                }
                if wal.locs.is_empty() {
                    // After a purge the log must resume exactly after the purged index.
                    if purged.is_some() && index != floor {
                        return Err(corrupt(format!(
                            "{}: the log resumes at {index}, but {floor} follows the purged entries",
                            path.display()
                        )));
                    }
                    wal.first = index;
                } else {
                    let expected = wal.first + wal.locs.len() as u64;
                    if index != expected {
                        return Err(corrupt(format!(
                            "{}: record {index} where {expected} was expected",
                            path.display()
                        )));
                    }
                }
                wal.locs.push_back(Loc {
                    segment: first,
                    offset,
                    len,
                });
            }
            let file = Arc::new(file);
            let ahead = Ahead::new(file.clone(), valid, file_len, wal.segment_bytes);
            if !last_segment {
                ahead.close();
            }
            wal.segments.insert(
                first,
                Segment {
                    file,
                    format,
                    len: valid,
                    ahead,
                },
            );
        }
        if wal.locs.is_empty() {
            wal.first = floor;
            wal.fresh_segment = true;
        }
        Ok(wal)
    }

    /// The first and last index held, if any.
    pub fn bounds(&self) -> Option<(u64, u64)> {
        (!self.locs.is_empty()).then(|| (self.first, self.first + self.locs.len() as u64 - 1))
    }

    /// The bytes the records after `index` take in the segments, headers included: what a
    /// snapshot at `index` lets the log give back. Zero when none is held after it.
    pub fn bytes_after(&self, index: u64) -> u64 {
        let at = index.saturating_add(1).max(self.first);
        let Some(start) = self.locs.get((at - self.first) as usize) else {
            return 0;
        };
        // The segments are whole from `start`'s on (less their headers); the first one
        // counts from the record.
        let first = &self.segments[&start.segment];
        self.segments
            .range(start.segment..)
            .map(|(_, seg)| seg.len - seg.format.records_start())
            .sum::<u64>()
            .saturating_sub(start.offset - first.format.records_start())
    }

    /// Write records `(index, payload)`, which must continue the log (or start it anew after
    /// a purge emptied it). Not durable until the [`Wal::sync_handle`] is synced.
    pub fn append(&mut self, records: &[(u64, Vec<u8>)]) -> io::Result<()> {
        let Some(&(start, _)) = records.first() else {
            return Ok(());
        };
        let expected = self.first + self.locs.len() as u64;
        if !self.locs.is_empty() && start != expected {
            return Err(io::Error::other(format!(
                "append at {start} would leave a hole after {}",
                expected - 1
            )));
        }
        // A segment of format 1 (an older version's, or one whose header a crash lost) is
        // not appended to: the records go to a new segment of the current format.
        let roll = self.fresh_segment
            || self.locs.is_empty()
            || self
                .active()
                .is_none_or(|(_, s)| s.len >= self.segment_bytes || s.format == Format::Plain);
        if roll {
            self.start_segment(start)?;
        }
        if self.locs.is_empty() {
            self.first = start;
        }
        let (&key, seg) = self
            .segments
            .iter_mut()
            .next_back()
            .expect("a segment was just ensured");
        let mut buf = Vec::with_capacity(records.iter().map(|(_, p)| p.len() + HEADER).sum());
        let mut locs = Vec::with_capacity(records.len());
        for (i, (index, payload)) in records.iter().enumerate() {
            if *index != start + i as u64 {
                return Err(io::Error::other("append with a hole inside the batch"));
            }
            locs.push(Loc {
                segment: key,
                offset: seg.len + buf.len() as u64,
                len: payload.len() as u32,
            });
            frame(seg.format, *index, payload, &mut buf);
        }
        let end = seg.len + buf.len() as u64;
        let zeros_due = seg.ahead.claim(end);
        seg.file.write_all_at(&buf, seg.len)?;
        seg.len = end;
        if zeros_due {
            self.zeroer.request(&seg.ahead);
        }
        self.locs.extend(locs);
        Ok(())
    }

    fn active(&self) -> Option<(&u64, &Segment)> {
        self.segments.iter().next_back()
    }

    /// Start a new segment whose first record is `first`. The previous segment is cut to
    /// its records and synced first: later syncs only cover the new file.
    pub(super) fn start_segment(&mut self, first: u64) -> io::Result<()> {
        if let Some((_, s)) = self.active() {
            s.finish()?;
            s.file.sync_data()?;
        }
        let path = self.dir.join(segment_name(first));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        // The header is made durable by the first sync of the records after it: a segment
        // whose header did not reach the disk holds no synced record either.
        let (header, format) = Format::new_header()?;
        file.write_all_at(&header, 0)?;
        sync_dir(&self.dir)?;
        let file = Arc::new(file);
        let start = format.records_start();
        let ahead = Ahead::new(file.clone(), start, start, self.segment_bytes);
        self.zeroer.request(&ahead);
        self.segments.insert(
            first,
            Segment {
                file,
                format,
                len: start,
                ahead,
            },
        );
        self.fresh_segment = false;
        Ok(())
    }

    /// A handle on the active segment, whose `sync_data` makes every append so far durable.
    pub fn sync_handle(&self) -> Option<Arc<File>> {
        self.active().map(|(_, s)| s.file.clone())
    }

    /// The payloads of `from..to` (clamped to what is held), in order.
    pub fn read(&self, from: u64, to: u64) -> io::Result<Vec<Vec<u8>>> {
        let from = from.max(self.first);
        let to = to.min(self.first + self.locs.len() as u64);
        let mut out = Vec::with_capacity(to.saturating_sub(from) as usize);
        for index in from..to {
            let loc = self.locs[(index - self.first) as usize];
            let seg = &self.segments[&loc.segment];
            let mut buf = vec![0u8; loc.len as usize];
            seg.file
                .read_exact_at(&mut buf, loc.offset + HEADER as u64)?;
            seg.format.apply(index, &mut buf);
            out.push(buf);
        }
        Ok(out)
    }

    /// Remove `index` and everything after it, durably.
    pub fn truncate(&mut self, index: u64) -> io::Result<()> {
        self.truncate_in_steps(index, |_| Ok(()))
    }

    /// [`Wal::truncate`], calling `step` after each change on disk (tests stop there, as a
    /// crash would). The order keeps every crash point openable: later segments go newest
    /// first (a crash leaves a contiguous log, never one with a hole, which the next open
    /// refuses), and the cut segment is shrunk only once they are gone. A crash part-way
    /// leaves entries the truncation meant to remove, as if it had not begun; it had not
    /// returned, so nothing was acknowledged on top of them, and openraft truncates again.
    fn truncate_in_steps(
        &mut self,
        index: u64,
        mut step: impl FnMut(&str) -> io::Result<()>,
    ) -> io::Result<()> {
        if index >= self.first + self.locs.len() as u64 {
            return Ok(());
        }
        let keep = index.saturating_sub(self.first) as usize;
        let Some(cut) = self.locs.get(keep).copied() else {
            return Ok(());
        };
        let later: Vec<u64> = self
            .segments
            .range(cut.segment + 1..)
            .map(|(k, _)| *k)
            .rev()
            .collect();
        for &k in &later {
            self.segments[&k].ahead.close();
            fs::remove_file(self.dir.join(segment_name(k)))?;
            step("remove a later segment")?;
        }
        if !later.is_empty() {
            sync_dir(&self.dir)?;
            step("sync the directory")?;
        }
        let seg = &self.segments[&cut.segment];
        seg.ahead.cut(cut.offset, || {
            seg.file.set_len(cut.offset)?;
            seg.file.sync_all()
        })?;
        step("shrink the cut segment")?;

        for k in later {
            self.segments.remove(&k);
        }
        let seg = self
            .segments
            .get_mut(&cut.segment)
            .expect("segment of a record");
        seg.len = cut.offset;
        self.locs.truncate(keep);
        if self.locs.is_empty() {
            self.fresh_segment = true;
        }
        Ok(())
    }

    /// Forget everything up to and including `index`, deleting the segments that hold nothing
    /// newer. The caller records the purge durably first. (The store itself purges in two
    /// halves, [`Wal::purge_entries`] under its lock and [`Purged::remove`] outside it.)
    #[cfg(test)]
    pub fn purge(&mut self, index: u64) -> io::Result<()> {
        self.purge_entries(index).remove()
    }

    /// The in-memory half of a purge: forget the entries, and hand back the segments
    /// that hold nothing newer, to be deleted with [`Purged::remove`] once this log's lock is
    /// released. Deleting a few 16-MiB files and syncing the directory takes tens of
    /// milliseconds, and under the lock every append and every read of the log waited for it
    /// (a write stall each time a snapshot let the log go, docs/benchmarks.md).
    pub fn purge_entries(&mut self, index: u64) -> Purged {
        let drop = (index + 1)
            .saturating_sub(self.first)
            .min(self.locs.len() as u64);
        self.locs.drain(..drop as usize);
        self.first = self.first.max(index + 1);
        if self.locs.is_empty() {
            self.fresh_segment = true;
        }
        // A segment can go once the next one starts at or below the new first index, or,
        // for the last one, once it holds nothing at all, unless it is named for the new
        // first index (empty, as a truncation at a segment's start or a power cut after a
        // roll leaves it): the next append would start a segment of that very name, and the
        // removal, which runs later on another thread, would unlink the new file with the
        // acknowledged entries in it. It stays, and the next append starts it afresh.
        let keys: Vec<u64> = self.segments.keys().copied().collect();
        let mut files = Vec::new();
        for (n, k) in keys.iter().enumerate() {
            let obsolete = match keys.get(n + 1) {
                Some(next) => *next <= self.first,
                None => self.locs.is_empty() && *k != self.first,
            };
            if obsolete {
                if let Some(s) = self.segments.remove(k) {
                    s.ahead.close();
                }
                files.push(self.dir.join(segment_name(*k)));
            }
        }
        Purged {
            dir: self.dir.clone(),
            files,
        }
    }
}

/// Segments that a purge left with nothing to hold ([`Wal::purge_entries`]). No name among
/// them is used again: a new segment is named by its first index, which is past the purge.
#[must_use = "the segments stay on disk until removed"]
pub struct Purged {
    dir: PathBuf,
    files: Vec<PathBuf>,
}

impl Purged {
    /// Delete the segments, then sync the directory so that they stay deleted. After a crash
    /// in between, the next open skips what the durable purge marker covers.
    pub fn remove(self) -> io::Result<()> {
        for f in &self.files {
            fs::remove_file(f)?;
        }
        if !self.files.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::ahead::ZERO_AHEAD;
    use super::*;

    fn recs(from: u64, to: u64) -> Vec<(u64, Vec<u8>)> {
        (from..=to)
            .map(|i| (i, format!("entry {i}").into_bytes()))
            .collect()
    }

    /// Records 1-3 in one segment, 4-6 in a second.
    fn two_segments(dir: &Path) -> Wal {
        let mut w = Wal::open(dir, None).unwrap();
        w.append(&recs(1, 3)).unwrap();
        w.start_segment(4).unwrap();
        w.append(&recs(4, 6)).unwrap();
        w
    }

    /// What a snapshot at an index lets the log give back: the records after it, across
    /// segments, headers included; and nothing of what a purge removed.
    #[test]
    fn bytes_after_counts_the_records_past_an_index() {
        let d = tempfile::tempdir().unwrap();
        let mut w = two_segments(d.path());
        // "entry N" is 7 bytes for N < 10.
        let rec = (HEADER + 7) as u64;
        assert_eq!(w.bytes_after(0), 6 * rec);
        assert_eq!(w.bytes_after(2), 4 * rec);
        assert_eq!(w.bytes_after(3), 3 * rec);
        assert_eq!(w.bytes_after(5), rec);
        assert_eq!(w.bytes_after(6), 0);
        assert_eq!(w.bytes_after(u64::MAX), 0);
        w.purge(3).unwrap();
        assert_eq!(w.bytes_after(0), 3 * rec, "purged records are not counted");
        assert_eq!(w.bytes_after(4), 2 * rec);
    }

    /// Cut the last `by` bytes off a file, as a crash in the middle of a write would.
    fn shorten(path: &Path, by: u64) {
        let f = OpenOptions::new().write(true).open(path).unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len - by).unwrap();
    }

    /// Where the active segment's records end.
    fn records_end(w: &Wal) -> u64 {
        w.active().expect("a segment").1.len
    }

    /// Zero the last `by` bytes of the records that end at `end`: a write that did not
    /// reach the disk, over the zeros written ahead of it.
    ///
    /// The bytes torn must not all be zero already, or the test would see intact records
    /// (payloads are masked with a random key: one stored byte is zero once in 256 runs,
    /// and a test that tore one byte failed so).
    fn tear(path: &Path, end: u64, by: u64) {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut held = vec![0; by as usize];
        f.read_exact_at(&mut held, end - by).unwrap();
        assert!(!zeros(&held), "the bytes to tear are zeros already");
        f.write_all_at(&vec![0; by as usize], end - by).unwrap();
    }

    fn file_len(path: &Path) -> u64 {
        fs::metadata(path).unwrap().len()
    }

    fn all(w: &Wal) -> Vec<String> {
        let (a, b) = w.bounds().unwrap();
        w.read(a, b + 1)
            .unwrap()
            .into_iter()
            .map(|p| String::from_utf8(p).unwrap())
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Whatever a segment holds (a torn write, a bad disk), scanning it never panics and
        /// names only whole records inside it.
        #[test]
        fn scanning_arbitrary_bytes_stays_in_bounds(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            from in 0usize..300,
            next in proptest::prelude::any::<u64>(),
        ) {
            let (found, end) = scan(&bytes, from);
            proptest::prop_assert!(end as usize <= bytes.len());
            for (_, at, len) in found {
                proptest::prop_assert!(at as usize + HEADER + len as usize <= bytes.len());
            }
            if let Some(at) = record_after(&bytes, from, next) {
                proptest::prop_assert!(at > from && at + HEADER <= bytes.len());
            }
        }

        /// Framed records followed by any garbage scan back as those records, in order,
        /// in either format.
        #[test]
        fn framed_records_scan_back_whatever_follows(
            recs in proptest::collection::vec(
                (proptest::prelude::any::<u64>(), proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)),
                0..8,
            ),
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            key in proptest::option::of(proptest::prelude::any::<u64>()),
        ) {
            let format = key.map_or(Format::Plain, Format::Masked);
            let mut bytes = Vec::new();
            for (index, payload) in &recs {
                frame(format, *index, payload, &mut bytes);
            }
            let framed = bytes.len();
            bytes.extend_from_slice(&garbage);
            let (found, end) = scan(&bytes, 0);
            proptest::prop_assert!(found.len() >= recs.len() && end as usize >= framed);
            for ((index, payload), (got, at, len)) in recs.iter().zip(&found) {
                proptest::prop_assert_eq!(*index, *got);
                let start = *at as usize + HEADER;
                let mut stored = bytes[start..start + *len as usize].to_vec();
                format.apply(*got, &mut stored);
                proptest::prop_assert_eq!(&stored, payload);
            }
        }
    }

    #[test]
    fn appends_survive_reopen() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), None).unwrap();
        assert_eq!(w.bounds(), None);
        w.append(&recs(1, 3)).unwrap();
        w.append(&recs(4, 5)).unwrap();
        drop(w);
        let w = Wal::open(d.path(), None).unwrap();
        assert_eq!(w.bounds(), Some((1, 5)));
        assert_eq!(all(&w)[4], "entry 5");
        assert_eq!(w.read(2, 4).unwrap().len(), 2);
    }

    /// Appends write over zeros already in the file, so they change neither its length nor
    /// its blocks and `fdatasync` need not commit the filesystem's journal; the zeros are
    /// not mistaken for a torn write when the log is opened again.
    #[test]
    fn appends_write_over_zeros_written_ahead() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(segment_name(1));
        let mut w = Wal::open(d.path(), None).unwrap();
        w.append(&recs(1, 1)).unwrap();
        // The zeros are written by a thread of their own.
        w.zeroer.settle();
        let ahead = file_len(&path);
        assert!(ahead >= records_end(&w) + ZERO_AHEAD / 2, "{ahead}");
        for i in 2..=200 {
            w.append(&recs(i, i)).unwrap();
        }
        assert_eq!(file_len(&path), ahead, "an append grew the file");
        let end = records_end(&w);
        drop(w);
        assert!(zeros(&fs::read(&path).unwrap()[end as usize..]));

        let mut w = Wal::open(d.path(), None).unwrap();
        assert_eq!(w.bounds(), Some((1, 200)));
        assert_eq!(file_len(&path), ahead, "the zeros were cut at open");
        w.append(&recs(201, 201)).unwrap();
        drop(w);
        let w = Wal::open(d.path(), None).unwrap();
        assert_eq!(all(&w).len(), 201);
        assert_eq!(all(&w)[200], "entry 201");
    }

    /// Zeros go no further than a segment's size, and a finished segment is cut to its
    /// records: zeros are only ever at the end of the last one.
    #[test]
    fn a_finished_segment_holds_only_its_records() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), None).unwrap();
        let mb = |i: u64| (i, vec![b'x'; 1 << 20]);
        let mut i = 1;
        while w.segments.len() < 2 {
            w.append(&[mb(i)]).unwrap();
            assert!(file_len(&d.path().join(segment_name(1))) <= SEGMENT_BYTES + (2 << 20));
            i += 1;
        }
        let first = &w.segments[&1];
        assert_eq!(file_len(&d.path().join(segment_name(1))), first.len);
        let last = *w.segments.keys().next_back().unwrap();
        drop(w);
        let w = Wal::open(d.path(), None).unwrap();
        assert_eq!(w.bounds(), Some((1, last)));

        // And so two segments made by hand.
        let d = tempfile::tempdir().unwrap();
        let w = two_segments(d.path());
        assert_eq!(
            file_len(&d.path().join(segment_name(1))),
            w.segments[&1].len
        );
    }

    /// Records appended while the zeros ahead of them are being written come back intact,
    /// before and after a reopen: zeros never land on a record.
    #[test]
    fn records_written_beside_the_zeros_are_intact() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), None).unwrap();
        let payload = |i: u64| vec![(i % 251) as u8 + 1; 500 + (i as usize * 7919) % 6000];
        for i in 1..=3000 {
            w.append(&[(i, payload(i))]).unwrap();
        }
        let check = |w: &Wal| {
            let held = w.read(1, 3001).unwrap();
            assert_eq!(held.len(), 3000);
            for (i, p) in (1..).zip(&held) {
                assert!(*p == payload(i), "record {i} was overwritten");
            }
        };
        check(&w);
        drop(w);
        check(&Wal::open(d.path(), None).unwrap());
    }

    /// A purge that takes every entry drops the last segment with its zeros ahead; a crash
    /// before its unlink leaves it behind the next segment. The log opens, past it, and the
    /// next purge deletes it (the zeros were taken for damage to a segment that is not the
    /// last, and the node refused to start: found in review).
    #[test]
    fn a_segment_left_by_a_purge_of_every_entry_is_skipped_at_open() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), None).unwrap();
        w.append(&recs(1, 3)).unwrap();
        w.zeroer.settle();
        let old = d.path().join(segment_name(1));
        assert!(file_len(&old) > records_end(&w), "no zeros ahead to leave");
        // Every entry purged; the removal never runs (the crash).
        let _left = w.purge_entries(3);
        w.append(&recs(4, 5)).unwrap();
        drop(w);
        assert!(old.exists());
        let mut w = Wal::open(d.path(), Some(3)).unwrap();
        assert_eq!(w.bounds(), Some((4, 5)));
        assert_eq!(all(&w), ["entry 4", "entry 5"]);
        w.purge_entries(4).remove().unwrap();
        assert!(!old.exists());
        // Damage in a segment that still holds live entries is refused as before.
        let d = tempfile::tempdir().unwrap();
        let w = two_segments(d.path());
        let first = w.locs[0];
        drop(w);
        let path = d.path().join(segment_name(1));
        let mut bytes = fs::read(&path).unwrap();
        bytes[first.offset as usize + HEADER] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        assert!(Wal::open(d.path(), None).is_err());
        assert!(Wal::open(d.path(), Some(0)).is_err());
    }

    #[test]
    fn a_hole_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), None).unwrap();
        w.append(&recs(1, 3)).unwrap();
        assert!(w.append(&recs(5, 6)).is_err());
        assert!(w.append(&[(4, vec![]), (6, vec![])]).is_err());
    }

    /// The last record's write did not reach the disk: its sector reads as before, the
    /// records before it and zeros.
    #[test]
    fn a_torn_tail_is_cut_and_the_log_goes_on() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), None).unwrap();
        w.append(&recs(1, 3)).unwrap();
        w.append(&recs(4, 4)).unwrap();
        let fourth = w.locs[3].offset;
        let end = records_end(&w);
        drop(w);
        assert_eq!(
            fourth / SECTOR as u64,
            (end - 1) / SECTOR as u64,
            "one sector"
        );
        tear(&d.path().join(segment_name(1)), end, end - fourth);
        let mut w = Wal::open(d.path(), None).unwrap();
        assert_eq!(w.bounds(), Some((1, 3)));
        w.append(&recs(4, 5)).unwrap();
        drop(w);
        let w = Wal::open(d.path(), None).unwrap();
        assert_eq!(
            all(&w),
            ["entry 1", "entry 2", "entry 3", "entry 4", "entry 5"]
        );
    }

    /// A flipped byte in the last record fails its CRC. With nothing valid after it, that
    /// cannot be told from a write cut short inside a sector (a page changed while it was
    /// written back), so it is cut, as a torn write is.
    #[test]
    fn a_flipped_byte_in_the_last_record_is_cut() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), None).unwrap();
        w.append(&recs(1, 3)).unwrap();
        let end = records_end(&w);
        drop(w);
        let path = d.path().join(segment_name(1));
        let mut bytes = fs::read(&path).unwrap();
        let at = end as usize - 2;
        bytes[at] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let w = Wal::open(d.path(), None).unwrap();
        assert_eq!(w.bounds(), Some((1, 2)));
    }

    /// The last record reached the disk only in part, inside one sector: its final bytes
    /// read as the zeros that were there (a page written back while the record was being
    /// copied into it). No sector is all zeros, and it is still a torn write: cut.
    #[test]
    fn a_last_record_cut_short_inside_a_sector_is_a_torn_write() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), None).unwrap();
        w.append(&recs(1, 4)).unwrap();
        let end = records_end(&w);
        drop(w);
        tear(&d.path().join(segment_name(1)), end, 4);
        let mut w = Wal::open(d.path(), None).unwrap();
        assert_eq!(w.bounds(), Some((1, 3)));
        w.append(&recs(4, 5)).unwrap();
        drop(w);
        assert_eq!(Wal::open(d.path(), None).unwrap().bounds(), Some((1, 5)));
    }

    /// A last record whose header says more bytes than the file holds is a write whose new
    /// size was lost with it: cut.
    #[test]
    fn a_last_record_past_the_end_of_the_file_is_a_torn_write() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), None).unwrap();
        w.append(&recs(1, 3)).unwrap();
        let third = w.locs[2];
        drop(w);
        let path = d.path().join(segment_name(1));
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(third.offset + HEADER as u64 + 2).unwrap();
        let w = Wal::open(d.path(), None).unwrap();
        assert_eq!(w.bounds(), Some((1, 2)));
    }

    #[test]
    fn damage_with_valid_records_after_it_fails_the_open() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), None).unwrap();
        w.append(&recs(1, 5)).unwrap();
        let third = w.locs[2];
        drop(w);
        // One flipped byte inside record 3 of 5: records 4 and 5 are intact behind it.
        let path = d.path().join(segment_name(1));
        let mut bytes = fs::read(&path).unwrap();
        bytes[third.offset as usize + HEADER + 2] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let err = Wal::open(d.path(), None).err().expect("must refuse");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string().contains("followed by a valid record"),
            "{err}"
        );
        // The file is left as it was, for whoever investigates.
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }

    /// Records 1-6 of 700 bytes each (so most start and end inside a sector), written in
    /// one segment; the path and where each starts.
    fn sector_spanning_records(dir: &Path) -> (PathBuf, Vec<u64>) {
        let mut w = Wal::open(dir, None).unwrap();
        let records: Vec<(u64, Vec<u8>)> =
            (1..=6).map(|i| (i, vec![b'a' + i as u8; 700])).collect();
        w.append(&records).unwrap();
        let starts = w.locs.iter().map(|l| l.offset).collect();
        (dir.join(segment_name(1)), starts)
    }

    /// Zero `len` bytes of `path` at `at`.
    fn zero(path: &Path, at: u64, len: usize) {
        let f = OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(&vec![0; len], at).unwrap();
    }

    /// A power cut that kept later unsynced records and lost a sector of an earlier one: the
    /// log is cut at the first damaged record, the later ones with it (no fsync had covered
    /// them: it would have covered the earlier one too).
    #[test]
    fn a_lost_sector_before_later_records_is_a_torn_write() {
        let d = tempfile::tempdir().unwrap();
        let (path, starts) = sector_spanning_records(d.path());
        // Records 3-6 were written after the last sync, and the disk lost the sector
        // holding the middle of record 3 (the sectors of 4-6 reached it).
        let sector = (starts[2] as usize / SECTOR + 1) * SECTOR;
        assert!(
            sector + SECTOR <= starts[3] as usize,
            "the sector is inside record 3"
        );
        zero(&path, sector as u64, SECTOR);
        let mut w = Wal::open(d.path(), None).unwrap();
        assert_eq!(w.bounds(), Some((1, 2)));
        assert_eq!(file_len(&path), starts[2], "cut at the torn record");
        w.append(&recs(3, 4)).unwrap();
        drop(w);
        assert_eq!(Wal::open(d.path(), None).unwrap().bounds(), Some((1, 4)));
    }

    /// The sector lost was the one holding the start of the damaged record: what it reads
    /// is its old content, the end of the record before (synced) and zeros.
    #[test]
    fn a_lost_first_sector_of_a_record_is_a_torn_write() {
        let d = tempfile::tempdir().unwrap();
        let (path, starts) = sector_spanning_records(d.path());
        let start = starts[2] as usize;
        assert!(!start.is_multiple_of(SECTOR));
        let sector_end = (start / SECTOR + 1) * SECTOR;
        zero(&path, start as u64, sector_end - start);
        let w = Wal::open(d.path(), None).unwrap();
        assert_eq!(w.bounds(), Some((1, 2)));
    }

    /// A record damaged without a zeroed sector (a flipped byte, as a bad disk makes) with
    /// valid records after it is not taken for a torn write, nor is a sector of zeros in
    /// the sector where the next valid record starts (that sector reached the disk).
    #[test]
    fn damage_without_a_lost_sector_is_not_a_torn_write() {
        let d = tempfile::tempdir().unwrap();
        let (path, starts) = sector_spanning_records(d.path());
        let bytes = fs::read(&path).unwrap();
        // Record 3's last 100 bytes zeroed, in the sector where record 4 starts.
        let four = starts[3] as usize;
        assert!(
            four % SECTOR >= 100,
            "record 4 starts past 100 bytes into its sector"
        );
        zero(&path, four as u64 - 100, 100);
        let err = Wal::open(d.path(), None).err().expect("must refuse");
        assert!(
            err.to_string().contains("followed by a valid record"),
            "{err}"
        );
        assert!(!torn_before(
            &fs::read(&path).unwrap(),
            starts[2] as usize,
            four
        ));
        // A flipped byte in every sector of record 3.
        let mut flipped = bytes.clone();
        for at in (starts[2] as usize + HEADER..four).step_by(SECTOR / 2) {
            flipped[at] ^= 0x10;
        }
        fs::write(&path, &flipped).unwrap();
        let err = Wal::open(d.path(), None).err().expect("must refuse");
        assert!(
            err.to_string().contains("followed by a valid record"),
            "{err}"
        );
    }

    /// A payload of zeros (a cookie id of NUL characters) is not stored as zeros: no
    /// sector of the record reads as a lost one, and it reads back as it was written.
    #[test]
    fn a_payload_of_zeros_holds_no_zero_sector_on_disk() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), None).unwrap();
        w.append(&[(1, vec![0; 4096]), (2, b"after".to_vec())])
            .unwrap();
        let first = w.locs[0];
        let bytes = fs::read(d.path().join(segment_name(1))).unwrap();
        let record = &bytes[first.offset as usize..first.offset as usize + HEADER + 4096];
        for sector in record.chunks(SECTOR) {
            assert!(!zeros(sector), "a sector of the record is all zeros");
        }
        assert_eq!(w.read(1, 2).unwrap(), [vec![0; 4096]]);
        drop(w);
        let w = Wal::open(d.path(), None).unwrap();
        assert_eq!(w.read(1, 3).unwrap(), [vec![0; 4096], b"after".to_vec()]);
    }

    /// Review of the torn-write rule: a synced record of NUL characters that a bad disk
    /// then damaged (one flipped byte) was taken for a torn write, since its own bytes held
    /// a zero sector, and the log was cut there, the synced records after it with it. It is
    /// damage to acknowledged entries, and the open refuses.
    #[test]
    fn a_damaged_record_of_zeros_is_not_taken_for_a_torn_write() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), None).unwrap();
        w.append(&recs(1, 2)).unwrap();
        w.append(&[(3, vec![0; 2048])]).unwrap();
        w.append(&recs(4, 6)).unwrap();
        let third = w.locs[2];
        drop(w);
        let path = d.path().join(segment_name(1));
        let mut bytes = fs::read(&path).unwrap();
        bytes[third.offset as usize + HEADER + 1000] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let err = Wal::open(d.path(), None).err().expect("must refuse");
        assert!(
            err.to_string().contains("followed by a valid record"),
            "{err}"
        );
        assert_eq!(
            fs::read(&path).unwrap(),
            bytes,
            "the file is left as it was"
        );
    }

    /// A segment of format 1, as older versions wrote it (records from byte 0, payloads as
    /// they are), is read, and the next append starts a segment of the current format.
    #[test]
    fn a_segment_of_format_one_is_read_and_appends_go_to_a_new_one() {
        let d = tempfile::tempdir().unwrap();
        let mut old = Vec::new();
        for (index, payload) in recs(1, 3) {
            frame(Format::Plain, index, &payload, &mut old);
        }
        fs::write(d.path().join(segment_name(1)), &old).unwrap();
        let mut w = Wal::open(d.path(), None).unwrap();
        assert_eq!(all(&w), ["entry 1", "entry 2", "entry 3"]);
        w.append(&recs(4, 5)).unwrap();
        assert!(matches!(w.segments[&4].format, Format::Masked(_)));
        drop(w);
        assert_eq!(fs::read(d.path().join(segment_name(1))).unwrap(), old);
        let w = Wal::open(d.path(), None).unwrap();
        assert_eq!(
            all(&w),
            ["entry 1", "entry 2", "entry 3", "entry 4", "entry 5"]
        );
        // Truncated back into the old segment, the log goes on in a new one of that name.
        let mut w = w;
        w.truncate(3).unwrap();
        w.append(&recs(3, 3)).unwrap();
        drop(w);
        assert_eq!(
            all(&Wal::open(d.path(), None).unwrap()),
            ["entry 1", "entry 2", "entry 3"]
        );
    }

    /// A damaged segment header (one bit of its key) is refused, naming the file: the
    /// records' CRCs, over the masked bytes, would all pass, and every payload would
    /// unmask to garbage.
    #[test]
    fn a_damaged_segment_header_is_refused() {
        let d = tempfile::tempdir().unwrap();
        drop(two_segments(d.path()));
        let path = d.path().join(segment_name(4));
        let mut bytes = fs::read(&path).unwrap();
        bytes[8] ^= 0x01;
        fs::write(&path, bytes).unwrap();
        let err = Wal::open(d.path(), None).err().expect("must refuse");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("damaged segment header"), "{err}");
        assert!(err.to_string().contains(&segment_name(4)), "{err}");
    }

    /// A segment of a format this build does not know is refused, not misread.
    #[test]
    fn a_segment_of_a_later_format_is_refused() {
        let d = tempfile::tempdir().unwrap();
        drop(two_segments(d.path()));
        let path = d.path().join(segment_name(4));
        let mut bytes = fs::read(&path).unwrap();
        bytes[4..8].copy_from_slice(&3u32.to_le_bytes());
        fs::write(&path, bytes).unwrap();
        let err = Wal::open(d.path(), None).err().expect("must refuse");
        assert!(err.to_string().contains("of format 3"), "{err}");
    }

    /// A crash right after a segment was created can leave its header unwritten (zeros,
    /// or nothing), records never synced behind it or not: it opens as an empty segment,
    /// and the log goes on.
    #[test]
    fn a_segment_whose_header_never_reached_the_disk_holds_nothing() {
        for keep in [0usize, 8, 4096] {
            let d = tempfile::tempdir().unwrap();
            let mut w = Wal::open(d.path(), None).unwrap();
            w.append(&recs(1, 3)).unwrap();
            w.start_segment(4).unwrap();
            w.append(&[(4, vec![7; 1500]), (5, vec![8; 1500])]).unwrap();
            drop(w);
            let path = d.path().join(segment_name(4));
            if keep == 4096 {
                // The first sector (the header, record 4's start) lost; the rest kept.
                zero(&path, 0, SECTOR);
            } else {
                let f = OpenOptions::new().write(true).open(&path).unwrap();
                f.set_len(keep as u64).unwrap();
                f.write_all_at(&vec![0; keep], 0).unwrap();
            }
            let mut w = Wal::open(d.path(), None).unwrap();
            assert_eq!(w.bounds(), Some((1, 3)), "keep {keep}");
            w.append(&recs(4, 4)).unwrap();
            drop(w);
            assert_eq!(
                all(&Wal::open(d.path(), None).unwrap()),
                ["entry 1", "entry 2", "entry 3", "entry 4"],
                "keep {keep}"
            );
        }
    }

    #[test]
    fn damage_before_the_last_segment_fails_the_open() {
        let d = tempfile::tempdir().unwrap();
        drop(two_segments(d.path()));
        shorten(&d.path().join(segment_name(1)), 3);
        let err = Wal::open(d.path(), None).err().expect("must refuse");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn truncate_removes_the_suffix_across_segments_durably() {
        let d = tempfile::tempdir().unwrap();
        let mut w = two_segments(d.path());
        w.truncate(3).unwrap();
        assert_eq!(w.bounds(), Some((1, 2)));
        // Shorter records where longer ones were: nothing of the old suffix may come back.
        w.append(&[(3, b"x".to_vec())]).unwrap();
        drop(w);
        let w = Wal::open(d.path(), None).unwrap();
        assert_eq!(all(&w), ["entry 1", "entry 2", "x"]);
        assert!(!d.path().join(segment_name(4)).exists());
    }

    /// Issue 12: a crash at any point of a truncation across segments leaves a log that
    /// opens, holding a contiguous prefix of what was there (unlinking the later segments
    /// oldest first left a hole that the next open refused).
    #[test]
    fn a_crash_at_any_step_of_a_truncation_leaves_a_log_that_opens() {
        for crash_at in 0.. {
            let d = tempfile::tempdir().unwrap();
            let mut w = Wal::open(d.path(), None).unwrap();
            w.append(&recs(1, 3)).unwrap();
            for first in [4, 7] {
                w.start_segment(first).unwrap();
                w.append(&recs(first, first + 2)).unwrap();
            }
            let mut steps = 0;
            let done = w
                .truncate_in_steps(2, |_| {
                    steps += 1;
                    if steps > crash_at {
                        Err(io::Error::other("crash"))
                    } else {
                        Ok(())
                    }
                })
                .is_ok();
            drop(w);
            let w = Wal::open(d.path(), None).unwrap_or_else(|e| {
                panic!("crash after step {crash_at}: the log does not open: {e}")
            });
            let held = all(&w);
            let expected: Vec<String> = (1..=held.len()).map(|i| format!("entry {i}")).collect();
            assert_eq!(held, expected, "crash after step {crash_at}");
            if done {
                assert_eq!(held, ["entry 1"]);
                break;
            }
        }
    }

    #[test]
    fn truncate_everything_then_append_again() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), None).unwrap();
        w.append(&recs(1, 3)).unwrap();
        w.truncate(1).unwrap();
        assert_eq!(w.bounds(), None);
        w.append(&recs(1, 2)).unwrap();
        drop(w);
        assert_eq!(
            all(&Wal::open(d.path(), None).unwrap()),
            ["entry 1", "entry 2"]
        );
    }

    #[test]
    fn purge_drops_whole_segments_and_a_gap_may_follow() {
        let d = tempfile::tempdir().unwrap();
        let mut w = two_segments(d.path());
        w.purge(4).unwrap();
        assert_eq!(w.bounds(), Some((5, 6)));
        assert!(!d.path().join(segment_name(1)).exists());
        drop(w);
        let mut w = Wal::open(d.path(), Some(4)).unwrap();
        assert_eq!(all(&w), ["entry 5", "entry 6"]);
        // A snapshot install purges past the end; the log resumes after the gap.
        w.purge(100).unwrap();
        assert_eq!(w.bounds(), None);
        w.append(&recs(101, 102)).unwrap();
        drop(w);
        let w = Wal::open(d.path(), Some(100)).unwrap();
        assert_eq!(all(&w), ["entry 101", "entry 102"]);
        assert_eq!(w.segments.len(), 1);
    }

    #[test]
    fn a_missing_start_is_corruption() {
        let d = tempfile::tempdir().unwrap();
        drop(two_segments(d.path()));
        fs::remove_file(d.path().join(segment_name(1))).unwrap();
        // Entries 2 and 3 follow the purged entry 1, and they are gone.
        let err = Wal::open(d.path(), Some(1)).err().expect("must refuse");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // With the purge marker at 3 nothing is missing.
        assert_eq!(Wal::open(d.path(), Some(3)).unwrap().bounds(), Some((4, 6)));
    }
}
