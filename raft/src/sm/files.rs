//! Snapshot data in files of their own, beside `sm.redb`.
//!
//! A snapshot is the whole state serialized: 250 MB at a million records. Kept as a redb
//! value, writing it held redb's single write lock for seconds, so `apply` (and with it
//! every client write) waited, and it was written twice over (copy-on-write pages, then the
//! freed old ones). As a file it is written with no lock held, in chunks each flushed to
//! disk so the writeback never builds up into one long stall, then renamed into place. Only
//! a small pointer (the snapshot's meta and file name) goes into `sm.redb`, in a short
//! durable transaction: the pointer is what makes a snapshot current, so a crash before it
//! leaves at most an unreferenced file, removed at the next start.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::data::SnapshotFile;
use crate::BoxError;

/// Bytes written between two flushes to disk.
const CHUNK: usize = 8 << 20;
const EXT: &str = "snap";

/// A snapshot file written as `<name>.tmp` and not yet made `<name>` (see
/// [`SnapshotFiles::stage`]).
#[derive(Debug)]
#[must_use = "a staged file is published or discarded"]
pub struct Staged {
    name: String,
    len: u64,
}

impl Staged {
    /// The file's name once published.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its length in bytes.
    pub fn bytes(&self) -> u64 {
        self.len
    }
}

/// A snapshot file being written: buffered, and flushed to disk every [`CHUNK`] bytes so
/// the kernel's writeback never builds up into one long stall.
struct Syncing {
    file: BufWriter<File>,
    written: u64,
    since_sync: usize,
}

impl Write for Syncing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        self.since_sync += n;
        if self.since_sync >= CHUNK {
            self.file.flush()?;
            self.file.get_ref().sync_data()?;
            self.since_sync = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

pub struct SnapshotFiles {
    dir: PathBuf,
    /// Held while the current snapshot changes (file renamed, pointer committed, old files
    /// removed), so a concurrent build and install never remove each other's file.
    switch: Mutex<()>,
}

impl SnapshotFiles {
    /// `data_dir/snapshots`, created if missing, without leftovers of interrupted writes.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        let dir = data_dir.join("snapshots");
        crate::durable::create_dir_all(&dir)?;
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                fs::remove_file(&path)?;
            }
        }
        // The snapshot this start recovers from may have been published by a run killed
        // before it synced the directory; and the removals above are made durable with it.
        crate::durable::sync_dir(&dir)?;
        Ok(SnapshotFiles {
            dir,
            switch: Mutex::new(()),
        })
    }

    /// The file name for a snapshot id. Ids come from the leader too, so only a safe
    /// alphabet reaches the file system.
    pub fn name_for(snapshot_id: &str) -> String {
        let safe: String = snapshot_id
            .chars()
            .take(120)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{safe}.{EXT}")
    }

    /// Write `data` durably as `name.tmp` ([`SnapshotFiles::stage_with`]).
    pub fn stage(&self, name: &str, data: &[u8]) -> Result<Staged, BoxError> {
        self.stage_with(name, &mut |w| Ok(w.write_all(data)?))
    }

    /// Write a snapshot durably as `name.tmp`: `write` is given the file, buffered and
    /// flushed to disk every `CHUNK` bytes, with no lock held. It is invisible to
    /// [`SnapshotFiles::remove_others`] until [`SnapshotFiles::publish`] renames it, which
    /// happens under the switch lock: so a build and an install never remove each other's
    /// file, whichever finishes writing first (issue 12).
    pub fn stage_with(
        &self,
        name: &str,
        write: &mut dyn FnMut(&mut dyn Write) -> Result<(), BoxError>,
    ) -> Result<Staged, BoxError> {
        let tmp = self.dir.join(format!("{name}.tmp"));
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&tmp)?;
        let mut out = Syncing {
            file: BufWriter::with_capacity(1 << 20, file),
            written: 0,
            since_sync: 0,
        };
        let staged = write(&mut out).and_then(|()| {
            let file = out.file.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            Ok(())
        });
        if let Err(e) = staged {
            // A part-written file gives its room back (a full disk is the common cause).
            if let Err(rm) = crate::durable::remove_if_present(&tmp) {
                tracing::warn!("removing {}: {rm}", tmp.display());
            }
            return Err(e);
        }
        Ok(Staged {
            name: name.to_owned(),
            len: out.written,
        })
    }

    /// Take a received snapshot file (already flushed to disk, in this directory) as the
    /// staged file `name`, by renaming it: no second copy of a large snapshot is written.
    pub fn adopt(&self, received: &Path, name: &str) -> io::Result<Staged> {
        let tmp = self.dir.join(format!("{name}.tmp"));
        fs::rename(received, &tmp)?;
        Ok(Staged {
            name: name.to_owned(),
            len: fs::metadata(&tmp)?.len(),
        })
    }

    /// A new, empty file for a snapshot being received. Named `*.tmp`: never removed by
    /// [`SnapshotFiles::remove_others`], cleared by the next start if left behind.
    pub fn incoming(&self) -> io::Result<SnapshotFile> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        SnapshotFile::create(&self.dir.join(format!("incoming-{n}.tmp")))
    }

    /// Make a staged file `name` (rename it into place, then flush the directory). Takes the
    /// switch guard: only the holder of the switch may change which files exist.
    pub fn publish(&self, staged: Staged, _switch: &MutexGuard<'_, ()>) -> io::Result<()> {
        let name = self.dir.join(&staged.name);
        fs::rename(self.dir.join(format!("{}.tmp", staged.name)), name)?;
        crate::durable::sync_dir(&self.dir)
    }

    /// Drop a staged file that will not be published (a build overtaken by an install).
    /// Already gone is fine.
    pub fn discard(&self, staged: Staged) -> io::Result<()> {
        crate::durable::remove_if_present(&self.dir.join(format!("{}.tmp", staged.name)))
    }

    /// Write `data` durably as `name` at once ([`SnapshotFiles::stage`], then publish under
    /// the switch), for callers with nothing to do between the two.
    pub fn write(&self, name: &str, data: &[u8]) -> Result<(), BoxError> {
        let staged = self.stage(name, data)?;
        let switch = self.switch();
        Ok(self.publish(staged, &switch)?)
    }

    /// Where a staged file is, until it is published or discarded.
    pub fn staged_path(&self, staged: &Staged) -> PathBuf {
        self.dir.join(format!("{}.tmp", staged.name))
    }

    /// The directory the snapshot files are in (on the data directory's disk).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where published snapshot file `name` is.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Open snapshot file `name`, which must be `len` long.
    pub fn open_file(&self, name: &str, len: u64) -> io::Result<SnapshotFile> {
        let path = self.path(name);
        let actual = fs::metadata(&path)?.len();
        if actual != len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("snapshot {name} has {actual} bytes, expected {len}"),
            ));
        }
        SnapshotFile::open(&path)
    }

    /// Remove every snapshot file but `keep`. Temporary files are left alone: one may be a
    /// concurrent write in progress (a restart clears interrupted ones).
    pub fn remove_others(&self, keep: Option<&str>) -> io::Result<()> {
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if Some(name) != keep && path.extension().is_some_and(|e| e == EXT) {
                fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    pub fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.dir.join(name))
    }

    /// Exclusive right to change which snapshot is current.
    pub fn switch(&self) -> MutexGuard<'_, ()> {
        self.switch.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staging_that_fails_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::open(dir.path()).unwrap();
        let name = SnapshotFiles::name_for("1-10-99-0");
        let failed = files.stage_with(&name, &mut |w| {
            w.write_all(&[7; 4096])?;
            Err(io::Error::from_raw_os_error(libc::ENOSPC).into())
        });
        assert!(failed.is_err());
        let left: Vec<_> = std::fs::read_dir(files.dir()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn written_files_read_back_and_leftovers_go() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..(CHUNK * 2 + 17)).map(|i| i as u8).collect();
        let a = SnapshotFiles::name_for("1-10-99-0");
        files.write(&a, &data).unwrap();
        assert_eq!(std::fs::read(files.path(&a)).unwrap(), data);
        assert!(files.open_file(&a, data.len() as u64).is_ok());
        assert!(
            files.open_file(&a, 3).is_err(),
            "a short or long file is refused"
        );

        let b = SnapshotFiles::name_for("../../etc/passwd");
        assert!(!b.contains('/'), "{b}");
        files.write(&b, b"x").unwrap();
        std::fs::write(dir.path().join("snapshots").join("c.snap.tmp"), b"half").unwrap();
        files.remove_others(Some(&b)).unwrap();
        assert!(files.open_file(&a, data.len() as u64).is_err());
        assert_eq!(std::fs::read(files.path(&b)).unwrap(), b"x");
        // A restart clears interrupted writes.
        drop(files);
        let files = SnapshotFiles::open(dir.path()).unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.path().join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, std::slice::from_ref(&b));
        files.remove(&b).unwrap();
    }
}
