//! Making new directory entries durable.
//!
//! `fsync` on a file makes its contents durable, not its name: a file or directory created
//! just before a power loss can vanish with everything written into it unless the
//! directory holding it is synced too. Every place that creates a file or directory the
//! store depends on (`data_dir`, `log.redb`, `sm.redb`, `wal/`, `snapshots/`, segments)
//! goes through here, and the directories the store owns are synced at every start
//! ([`own_dir`]), for the names a killed run made and never synced.

use std::fs::{self, File};
use std::io;
use std::path::Path;

/// Sync directory `dir`, so the entries created or removed in it survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Remove file `path`; already gone is fine.
pub fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Sync the directory holding `path` (after creating `path`).
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(Path::new(".")),
    }
}

/// `fs::create_dir_all`, then a sync of the parent of every directory it created.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|a| !a.exists()).collect();
    fs::create_dir_all(dir)?;
    // Deepest first is fine: each created entry is made durable by its parent's sync.
    for created in missing {
        sync_parent(created)?;
    }
    Ok(())
}

/// A directory this store owns (`data_dir`, `wal/`, `snapshots/`): created if missing
/// (see [`create_dir_all`]), then synced whether or not it was. A run killed between
/// making an entry in it and syncing it left a name that is not durable (a file fsynced
/// but not its name), and this run would otherwise build on it: reopen that file, append
/// to it, acknowledge what it holds, and lose it all at the next power cut (the power test
/// `names_a_crashed_start_left_unsynced_are_made_durable_by_the_next_start`). Syncing at
/// every start makes whatever the directory holds durable before anything is built on it.
pub fn own_dir(dir: &Path) -> io::Result<()> {
    create_dir_all(dir)?;
    sync_dir(dir)
}

/// The filesystem holding a directory: bytes free to this process, and its whole size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub free: u64,
    pub total: u64,
}

/// [`Space`] of the filesystem that holds `dir` (`statvfs`).
pub fn space(dir: &Path) -> io::Result<Space> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: an all-zero statvfs is a valid value of the plain C struct it is.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a pointer to a statvfs the call fills in.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let frag = stats.f_frsize as u64;
    Ok(Space {
        free: (stats.f_bavail as u64).saturating_mul(frag),
        total: (stats.f_blocks as u64).saturating_mul(frag),
    })
}

/// Ask the kernel to drop `file`'s cached pages, once they are synced (clean pages only), so
/// that the next read comes from the device: a read-back then checks what the disk holds,
/// not what this process wrote into memory. Advice: the kernel may keep some pages.
pub fn drop_cached(file: &std::fs::File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor; the call only advises about its page cache.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Which file or directory a path named when it was looked at: its device and inode. One
/// removed, or replaced by another of the same name, no longer has the one recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

/// The [`FileId`] of what `path` names now.
pub fn file_id(path: &Path) -> io::Result<FileId> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path)?;
    Ok(FileId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// Free bytes on the filesystem that holds `dir`, or `None` (logged) when they cannot be
/// read: the callers that ask, to refuse work before the disk fills, then let the disk decide.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    match space(dir) {
        Ok(space) => Some(space.free),
        Err(e) => {
            tracing::warn!("free space of {}: {e}", dir.display());
            None
        }
    }
}

/// Whether `e`, or an error it was caused by, is a full disk (or quota). An `io::Error`
/// that wraps another names, as its `source`, the source of the one it wraps, so that one
/// is looked into too.
pub fn no_room(e: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(e), |e| e.source()).any(|e| {
        e.downcast_ref::<std::io::Error>().is_some_and(|io| {
            io.kind() == std::io::ErrorKind::StorageFull
                || matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
                || io.get_ref().is_some_and(|inner| no_room(inner))
        })
    })
}

/// `rename(2)` that fails, rather than replace `to`, when `to` exists (`renameat2`'s
/// `RENAME_NOREPLACE`).
pub fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let from_c = std::ffi::CString::new(from.as_os_str().as_bytes())?;
    let to_c = std::ffi::CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths, relative to the working directory.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        // Filesystems without the flag (FUSE servers without rename2, NFS) refuse the call
        // itself: a hard link fails the same way when `to` exists, then `from` goes.
        if matches!(
            e.raw_os_error(),
            Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
        ) {
            return fs::hard_link(from, to)
                .and_then(|()| fs::remove_file(from))
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("moving {} to {}: {e}", from.display(), to.display()),
                    )
                });
        }
        return Err(io::Error::new(
            e.kind(),
            format!("moving {} to {}: {e}", from.display(), to.display()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_pages_of_a_file_are_dropped_and_a_pipe_is_refused() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&[7u8; 64 << 10]).unwrap();
        f.sync_all().unwrap();
        drop_cached(&f).unwrap();
        // Still the same bytes, read back (from the device where the pages went).
        assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 64 << 10]);
        // Advice about a page cache means nothing for a pipe: said, not ignored.
        let (reader, _writer) = std::io::pipe().unwrap();
        let pipe = std::fs::File::from(std::os::fd::OwnedFd::from(reader));
        assert_eq!(
            drop_cached(&pipe).unwrap_err().raw_os_error(),
            Some(libc::ESPIPE)
        );
    }

    #[test]
    fn a_full_disk_is_told_from_other_failures_however_it_is_wrapped() {
        let full: crate::BoxError = std::io::Error::from_raw_os_error(libc::ENOSPC).into();
        assert!(no_room(&*full));
        let quota: crate::BoxError = std::io::Error::from_raw_os_error(libc::EDQUOT).into();
        assert!(no_room(&*quota));
        let wrapped: crate::BoxError = Box::new(std::io::Error::other(full));
        assert!(no_room(&*wrapped));
        let eio: crate::BoxError = std::io::Error::from_raw_os_error(libc::EIO).into();
        assert!(!no_room(&*eio));
        let other: crate::BoxError = "a corrupt row".into();
        assert!(!no_room(&*other));
    }

    #[test]
    fn creates_nested_directories() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all(&deep).unwrap(); // already there: fine
        own_dir(&deep).unwrap(); // and synced
        own_dir(&d.path().join("a/own")).unwrap(); // or made
        assert!(d.path().join("a/own").is_dir());
    }

    /// A database is created whole or not at all under its name: what a killed creation
    /// left (`<name>.new`) goes, and an existing database is opened as it is.
    #[test]
    fn a_database_is_created_whole_under_its_name() {
        use redb::{ReadableDatabase, TableDefinition};
        const T: TableDefinition<&str, u64> = TableDefinition::new("t");
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("sm.redb");
        let fresh = d.path().join("sm.redb.new");
        // A creation killed before its magic number was written: zeros where it belongs.
        fs::write(&fresh, vec![0u8; 4096]).unwrap();
        let db = crate::open_or_create_db(&path, 1 << 20).unwrap();
        assert!(!fresh.exists());
        assert_eq!(&fs::read(&path).unwrap()[..4], b"redb");
        let txn = db.begin_write().unwrap();
        txn.open_table(T).unwrap().insert("k", 7).unwrap();
        txn.commit().unwrap();
        drop(db);
        let db = crate::open_or_create_db(&path, 1 << 20).unwrap();
        let txn = db.begin_read().unwrap();
        let got = txn
            .open_table(T)
            .unwrap()
            .get("k")
            .unwrap()
            .map(|v| v.value());
        assert_eq!(got, Some(7));
    }

    #[test]
    fn space_reports_the_filesystem_and_fails_for_a_missing_directory() {
        let d = tempfile::tempdir().unwrap();
        let before = space(d.path()).unwrap();
        assert!(
            before.total > 0 && before.free <= before.total,
            "{before:?}"
        );
        assert!(space(&d.path().join("missing")).is_err());
    }
}
