//! Whether the disk has room for the flush thread's next write of a layer into `sm.redb`.
//!
//! redb refuses every write after one that failed on I/O, until the file is opened again,
//! and a node whose flush fails must stop (`overlay`'s `failed`). A disk that fills between
//! an entry's append to the log and the next flush (at most a second later) used to stop the
//! node so: three of the stops in the Jepsen `disk` fault's run of 2026-12-04. So the flush
//! thread asks first, and puts the write off while the disk lacks room for it; `apply` goes on
//! into the layers up to their memory bound, readers read them, and the write goes through
//! once there is room. A disk that fills during the write itself still stops the node.
//!
//! What a write takes is bounded, not measured: redb copies on write, so each row's bytes
//! are written once into a new page and the page it replaces stays until the commit after
//! (twice the rows' bytes, as for an install); and each row rewrites the leaf it lands on,
//! a whole page, unless its neighbours share it (a random id in a large table never does),
//! never more pages than the file holds. The same bound counts in the write reserve
//! ([`crate::sm::StoreReader::disk_due`]), so a node that refuses work for room refuses it
//! before its flushes would wait.

use std::path::Path;

use super::layer::Layer;

/// redb's page.
const PAGE: u64 = 4096;
/// Bytes on disk per byte of rows written: the new page, and the one it replaces, kept
/// until the commit after (copy on write).
const ROWS_FACTOR: u64 = 2;
/// The commit's own pages: headers, the allocator's state, the table of tables.
const COMMIT: u64 = 64 << 10;

/// Bytes a write of `layer` into a file of `file_len` bytes may add to the disk.
pub(super) fn needed(layer: &Layer, file_len: u64) -> u64 {
    if layer.is_empty() {
        return 0;
    }
    let rows = (layer.bytes() as u64).saturating_mul(ROWS_FACTOR);
    let leaves = (layer.rows() as u64).saturating_mul(PAGE).min(file_len);
    rows.saturating_add(leaves).saturating_add(COMMIT)
}

/// The length of `sm.redb` (0 when it cannot be read: the bound then counts no leaves).
pub(super) fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Why a write of `need` bytes into `path` waits, or `None` when the disk has room (or its
/// free space cannot be read: then the disk decides).
pub(super) fn short(path: &Path, need: u64) -> Option<String> {
    let free = crate::durable::free_bytes(path.parent()?)?;
    (free < need).then(|| {
        format!("{free} bytes free, less than the {need} a write of the applied changes may take")
    })
}

/// The error a caller that cannot wait gets while writes wait for room: a full disk's, so
/// that a snapshot build keeps the current snapshot rather than fail (`durable::no_room`).
pub(super) fn no_room() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::StorageFull,
        "the state machine's changes wait for room on the disk to be written to sm.redb",
    )
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId};

    use super::*;

    fn layer(rows: usize, bytes: usize) -> Layer {
        let mut l = Layer::default();
        for i in 0..rows {
            l.put_cookie(&format!("{i:04}"), Some(vec![b'x'; bytes]));
        }
        l.applied(LogId::new(CommittedLeaderId::new(1, 1), 1));
        l
    }

    #[test]
    fn a_write_may_take_its_rows_twice_and_a_page_for_each_up_to_the_file() {
        assert_eq!(needed(&Layer::default(), 1 << 30), 0);
        let l = layer(10, 1000);
        // Each row: 4 bytes of id, 1,000 of value, 64 of overhead.
        let rows = 10 * (4 + 1000 + 64) * 2;
        assert_eq!(needed(&l, 1 << 30), rows + 10 * PAGE + COMMIT);
        // A small file has fewer pages to rewrite than the rows touch.
        assert_eq!(needed(&l, 8192), rows + 8192 + COMMIT);
    }

    #[test]
    fn short_compares_with_what_the_disk_has_free() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sm.redb");
        assert_eq!(short(&path, 0), None);
        let why = short(&path, u64::MAX).unwrap();
        assert!(why.contains("bytes free, less than"), "{why}");
    }
}
