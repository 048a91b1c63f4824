//! A FUSE filesystem that forgets what was not fsynced: the page cache a power cut loses.
//!
//! `kill -9` keeps every write the kernel has taken, synced or not, so it cannot show a
//! missing or misplaced fsync. This filesystem keeps the data written to a file in memory,
//! a 4-KiB page at a time, until `fsync`/`fdatasync` of that file writes it to a backing
//! directory; [`Power::cut`] throws away whatever no fsync has reached yet (writes,
//! extensions and truncations alike), as a machine that loses power would. Test nodes run
//! with their data directory on it, then have their power cut between a `kill -9` and a
//! restart.
//!
//! The model follows lazyfs (the filesystem Jepsen uses for the same purpose): file *data*
//! is volatile until synced; names are not. Creating, renaming and removing files and
//! directories reach the backing directory at once, so a missing fsync of a directory is
//! not caught, but a file renamed into place before its own data was synced is: after a
//! cut it has the name and not the data.
//!
//! Every open is direct I/O (`FOPEN_DIRECT_IO`) and attributes are never cached, so the
//! kernel holds no copy of file data or sizes that could outlive a cut.

// Included by several test crates (`#[path]`), each using part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::Cluster;
use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    TimeOrNow, WriteFlags,
};

const PAGE: u64 = 4096;
const ROOT: u64 = 1;
/// Nothing is cached in the kernel: every lookup and stat comes here.
const TTL: Duration = Duration::ZERO;

/// What a cut threw away and what fsyncs wrote, since the mount.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub fsyncs: u64,
    pub pages_synced: u64,
    pub cuts: u64,
    /// Pages written but never synced when a cut came.
    pub pages_lost: u64,
    /// Files whose size a cut moved back (an extension or a truncation not synced).
    pub sizes_lost: u64,
}

/// A page written since the last sync, and a stamp that changes with every write to it.
struct Dirty {
    stamp: u64,
    data: Vec<u8>,
}

/// What an fsync makes durable: the file as it was when the fsync began.
struct SyncPlan {
    file: File,
    pages: Vec<(u64, u64, Vec<u8>)>,
    size: u64,
    zero_from: Option<u64>,
    epoch: u64,
}

/// One file or directory the kernel knows by its inode number.
struct Inode {
    /// Relative to the backing directory; `None` once removed (it may still be open).
    path: Option<PathBuf>,
    dir: bool,
    /// Regular files: the backing file, which holds what was last synced.
    file: Option<File>,
    /// Pages written since the last sync, by page number.
    dirty: BTreeMap<u64, Dirty>,
    /// The size the processes see.
    size: u64,
    /// A truncation not synced yet: what the backing file holds from here on reads as zeros.
    zero_from: Option<u64>,
}

/// The pieces of the range `offset..end` in each page it touches: (page, offset within the
/// page, length, offset within the range).
fn spans(offset: u64, end: u64) -> impl Iterator<Item = (u64, usize, usize, usize)> {
    let mut at = offset;
    std::iter::from_fn(move || {
        (at < end).then(|| {
            let within = (at % PAGE) as usize;
            let n = ((PAGE as usize) - within).min((end - at) as usize);
            let span = (at / PAGE, within, n, (at - offset) as usize);
            at += n as u64;
            span
        })
    })
}

impl Inode {
    fn new(path: PathBuf, file: Option<File>, size: u64) -> Self {
        Inode {
            path: Some(path),
            dir: file.is_none(),
            file,
            dirty: BTreeMap::new(),
            size,
            zero_from: None,
        }
    }

    fn kind(&self) -> FileType {
        if self.dir {
            FileType::Directory
        } else {
            FileType::RegularFile
        }
    }

    /// Page `p` as the processes see it, synced or not.
    fn page(&self, p: u64) -> std::io::Result<Vec<u8>> {
        if let Some(d) = self.dirty.get(&p) {
            return Ok(d.data.clone());
        }
        let mut buf = vec![0u8; PAGE as usize];
        let start = p * PAGE;
        let limit = self.zero_from.unwrap_or(u64::MAX).min(self.size);
        if start < limit {
            let want = (limit - start).min(PAGE) as usize;
            let file = self.file.as_ref().expect("a regular file");
            let mut got = 0;
            while got < want {
                let n = file.read_at(&mut buf[got..want], start + got as u64)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
        }
        Ok(buf)
    }

    /// The first half of an fsync: what it will make durable.
    fn plan_sync(&self, epoch: u64) -> std::io::Result<SyncPlan> {
        let file = self.file.as_ref().expect("a regular file").try_clone()?;
        Ok(SyncPlan {
            file,
            pages: self
                .dirty
                .iter()
                .map(|(&p, d)| (p, d.stamp, d.data.clone()))
                .collect(),
            size: self.size,
            zero_from: self.zero_from,
            epoch,
        })
    }

    /// The second half: the planned state is durable now. Pages written since the plan
    /// stay dirty.
    fn finish_sync(&mut self, plan: SyncPlan, counts: &mut Counts) -> std::io::Result<()> {
        let file = &plan.file;
        if let Some(z) = plan.zero_from {
            if file.metadata()?.len() > z {
                file.set_len(z)?;
            }
        }
        for (p, _, data) in &plan.pages {
            let start = p * PAGE;
            if start >= plan.size {
                continue;
            }
            let n = (plan.size - start).min(PAGE) as usize;
            file.write_all_at(&data[..n], start)?;
            counts.pages_synced += 1;
        }
        file.set_len(plan.size)?;
        for (p, stamp, _) in &plan.pages {
            if self.dirty.get(p).is_some_and(|d| d.stamp == *stamp) {
                self.dirty.remove(p);
            }
        }
        if self.zero_from == plan.zero_from {
            self.zero_from = None;
        }
        counts.fsyncs += 1;
        Ok(())
    }

    /// Forget what was not synced.
    fn cut(&mut self, counts: &mut Counts) {
        counts.pages_lost += self.dirty.len() as u64;
        self.dirty.clear();
        self.zero_from = None;
        if let Some(f) = &self.file {
            let durable = f.metadata().map(|m| m.len()).unwrap_or(0);
            if durable != self.size {
                counts.sizes_lost += 1;
            }
            self.size = durable;
        }
    }
}

struct State {
    backing: PathBuf,
    inodes: HashMap<u64, Inode>,
    by_path: HashMap<PathBuf, u64>,
    next_ino: u64,
    counts: Counts,
    /// The power is off: nothing more reaches the disk, every change fails with EIO.
    off: bool,
    /// Counts the cuts: an fsync that began before one does not complete.
    epoch: u64,
    /// Counts writes, to stamp the pages they dirty.
    stamp: u64,
}

impl State {
    fn full(&self, rel: &Path) -> PathBuf {
        self.backing.join(rel)
    }

    fn path_of(&self, ino: u64) -> Result<PathBuf, Errno> {
        self.inodes
            .get(&ino)
            .and_then(|n| n.path.clone())
            .ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path_of(parent)?.join(name))
    }

    /// The inode of an existing backing path, made known on first sight.
    fn inode_for(&mut self, rel: PathBuf) -> Result<u64, Errno> {
        if let Some(&ino) = self.by_path.get(&rel) {
            return Ok(ino);
        }
        let full = self.full(&rel);
        let meta = std::fs::symlink_metadata(&full).map_err(Errno::from)?;
        let file = if meta.is_dir() {
            None
        } else if meta.is_file() {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&full)
                .map_err(Errno::from)?;
            Some(f)
        } else {
            return Err(Errno::EOPNOTSUPP);
        };
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes
            .insert(ino, Inode::new(rel.clone(), file, meta.len()));
        self.by_path.insert(rel, ino);
        Ok(ino)
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let node = self.inodes.get(&ino).ok_or(Errno::ENOENT)?;
        let meta = match (&node.file, &node.path) {
            (Some(f), _) => f.metadata(),
            (None, Some(p)) => std::fs::symlink_metadata(self.full(p)),
            (None, None) => return Err(Errno::ENOENT),
        }
        .map_err(Errno::from)?;
        let size = if node.dir { meta.len() } else { node.size };
        let time = |s: i64, ns: i64| {
            UNIX_EPOCH + Duration::new(s.max(0) as u64, ns.clamp(0, 999_999_999) as u32)
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time(meta.atime(), meta.atime_nsec()),
            mtime: time(meta.mtime(), meta.mtime_nsec()),
            ctime: time(meta.ctime(), meta.ctime_nsec()),
            crtime: SystemTime::UNIX_EPOCH,
            kind: node.kind(),
            perm: (meta.mode() & 0o7777) as u16,
            nlink: meta.nlink() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut Inode, Errno> {
        match self.inodes.get_mut(&ino) {
            Some(n) if n.file.is_some() => Ok(n),
            Some(_) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    /// Set the size the processes see; nothing reaches the backing file before a sync.
    fn truncate(&mut self, ino: u64, len: u64) -> Result<(), Errno> {
        self.stamp += 1;
        let stamp = self.stamp;
        let node = self.file_mut(ino)?;
        if len < node.size {
            let keep = len.div_ceil(PAGE);
            node.dirty.retain(|&p, _| p < keep);
            if !len.is_multiple_of(PAGE) {
                let p = len / PAGE;
                let mut data = node.page(p).map_err(Errno::from)?;
                data[(len % PAGE) as usize..].fill(0);
                node.dirty.insert(p, Dirty { stamp, data });
            }
            node.zero_from = Some(node.zero_from.map_or(len, |z| z.min(len)));
        }
        node.size = len;
        Ok(())
    }

    fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<(), Errno> {
        self.stamp += 1;
        let stamp = self.stamp;
        let node = self.file_mut(ino)?;
        let end = offset + data.len() as u64;
        for (p, within, n, from) in spans(offset, end) {
            if !node.dirty.contains_key(&p) {
                let page = node.page(p).map_err(Errno::from)?;
                node.dirty.insert(p, Dirty { stamp, data: page });
            }
            let page = node.dirty.get_mut(&p).expect("inserted");
            page.stamp = stamp;
            page.data[within..within + n].copy_from_slice(&data[from..from + n]);
        }
        node.size = node.size.max(end);
        Ok(())
    }

    fn read(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let node = self.inodes.get(&ino).ok_or(Errno::ENOENT)?;
        if node.file.is_none() {
            return Err(Errno::EISDIR);
        }
        let end = (offset + size as u64).min(node.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        for (p, within, n, _) in spans(offset, end) {
            let page = node.page(p).map_err(Errno::from)?;
            out.extend_from_slice(&page[within..within + n]);
        }
        Ok(out)
    }

    /// Directory `ino`'s entries, `.` and `..` first, then by name (a stable order, so
    /// `readdir`'s offsets mean the same thing from one call to the next).
    fn entries(&mut self, ino: u64) -> Result<Vec<(u64, FileType, std::ffi::OsString)>, Errno> {
        let rel = self.path_of(ino)?;
        let mut names: Vec<_> = std::fs::read_dir(self.full(&rel))
            .map_err(Errno::from)?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        let mut entries = vec![
            (ino, FileType::Directory, ".".into()),
            (ino, FileType::Directory, "..".into()),
        ];
        for name in names {
            let Ok(child) = self.inode_for(rel.join(&name)) else {
                continue;
            };
            entries.push((child, self.inodes[&child].kind(), name));
        }
        Ok(entries)
    }

    /// The name `rel` is gone (removed or replaced by a rename).
    fn forget_path(&mut self, rel: &Path) {
        if let Some(ino) = self.by_path.remove(rel) {
            if let Some(n) = self.inodes.get_mut(&ino) {
                n.path = None;
            }
        }
    }

    fn rename(&mut self, from: &Path, to: &Path) {
        self.forget_path(to);
        let moved: Vec<(PathBuf, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (old, ino) in moved {
            self.by_path.remove(&old);
            let new = to.join(old.strip_prefix(from).expect("starts with it"));
            if let Some(n) = self.inodes.get_mut(&ino) {
                n.path = Some(new.clone());
            }
            self.by_path.insert(new, ino);
        }
    }
}

/// The filesystem as the FUSE session sees it.
struct LossyFs {
    state: Arc<Mutex<State>>,
    sync_time: Duration,
}

/// The test's side: counts, and the power switch.
#[derive(Clone)]
pub struct Power {
    state: Arc<Mutex<State>>,
}

/// The state; a panicked holder leaves nothing half-done that matters to a test.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Power {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Cut the power: every write no fsync has reached is lost, and from now on nothing
    /// reaches the disk (every change fails with EIO) until [`Power::restore`]. The
    /// processes using the filesystem should be frozen first (SIGSTOP), so that none acts
    /// on what happens after the cut, then killed. Returns the pages this cut lost.
    pub fn cut(&self) -> u64 {
        let mut s = self.lock();
        let mut counts = s.counts;
        for node in s.inodes.values_mut() {
            node.cut(&mut counts);
        }
        counts.cuts += 1;
        let lost = counts.pages_lost - s.counts.pages_lost;
        s.counts = counts;
        s.off = true;
        s.epoch += 1;
        lost
    }

    /// Power back on, for the processes started after the cut.
    pub fn restore(&self) {
        self.lock().off = false;
    }

    pub fn counts(&self) -> Counts {
        self.lock().counts
    }
}

/// A mounted lossy filesystem; dropping it unmounts.
pub struct Mounted {
    pub power: Power,
    _session: BackgroundSession,
}

/// Cut the power of nodes `victims` of `cluster` at one instant, `power[i]` being node i's
/// switch: freeze them all (SIGSTOP: no code of theirs runs after the cut, so nothing they
/// do later reaches a client; killing one by one would give the others milliseconds to
/// finish their fsyncs), lose what they had not synced, then kill them. Their power stays
/// off until [`Power::restore`]. Returns the pages lost.
pub fn cut_power(cluster: &mut Cluster, power: &[Power], victims: &[usize]) -> u64 {
    for &i in victims {
        if let Some(pid) = cluster.nodes[i].pid() {
            // SAFETY: kill(2) on a child this test started and has not reaped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
        }
    }
    let lost = victims.iter().map(|&i| power[i].cut()).sum();
    for &i in victims {
        cluster.kill(i);
    }
    lost
}

/// Whether this process may mount FUSE filesystems (root and `/dev/fuse`).
pub fn available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not running as root".into());
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map(|_| ())
        .map_err(|e| format!("cannot open /dev/fuse: {e}"))
}

/// Mount a lossy filesystem at `mountpoint` (an empty directory), keeping synced data in
/// `backing`. Every fsync takes at least `sync_time`, the device's own time: the backing
/// directory may sit on a disk (or a tmpfs) far faster than the ones stores run on, and a
/// store that answers before its fsync is done is caught only while that fsync is slow
/// enough for a cut to land in it.
pub fn mount(backing: &Path, mountpoint: &Path, sync_time: Duration) -> std::io::Result<Mounted> {
    std::fs::create_dir_all(backing)?;
    std::fs::create_dir_all(mountpoint)?;
    let state = Arc::new(Mutex::new(State {
        backing: backing.to_path_buf(),
        inodes: HashMap::from([(ROOT, Inode::new(PathBuf::new(), None, 0))]),
        by_path: HashMap::from([(PathBuf::new(), ROOT)]),
        next_ino: ROOT + 1,
        counts: Counts::default(),
        off: false,
        epoch: 0,
        stamp: 0,
    }));
    let fs = LossyFs {
        state: state.clone(),
        sync_time,
    };
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("lossy".into()),
        MountOption::Subtype("cookie-crud-test".into()),
    ];
    // Several threads, so a write is not held up behind another thread's fsync.
    config.n_threads = Some(4);
    config.clone_fd = true;
    let session = fuser::spawn_mount(fs, mountpoint, &config)?;
    Ok(Mounted {
        power: Power { state },
        _session: session,
    })
}

impl LossyFs {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Remove a name (a file or a directory): durable at once.
    fn remove(
        &self,
        parent: INodeNo,
        name: &OsStr,
        how: fn(&Path) -> std::io::Result<()>,
    ) -> Result<(), Errno> {
        let mut s = self.powered()?;
        let rel = s.child(parent.0, name)?;
        how(&s.full(&rel)).map_err(Errno::from)?;
        s.forget_path(&rel);
        Ok(())
    }

    /// The state, for an operation that changes what is on disk: none while the power is off.
    fn powered(&self) -> Result<MutexGuard<'_, State>, Errno> {
        let s = self.lock();
        if s.off {
            return Err(Errno::EIO);
        }
        Ok(s)
    }
}

/// Answer an operation that returns nothing.
fn empty(reply: ReplyEmpty, res: Result<(), Errno>) {
    match res {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn direct() -> FopenFlags {
    FopenFlags::FOPEN_DIRECT_IO
}

impl Filesystem for LossyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut s = self.lock();
        let res = s
            .child(parent.0, name)
            .and_then(|rel| s.inode_for(rel))
            .and_then(|ino| s.attr(ino));
        match res {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.lock().attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let res = self.powered().and_then(|mut s| {
            if let Some(len) = size {
                s.truncate(ino.0, len)?;
            }
            if let Some(mode) = mode {
                use std::os::unix::fs::PermissionsExt;
                let path = s.full(&s.path_of(ino.0)?);
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(Errno::from)?;
            }
            s.attr(ino.0)
        });
        match res {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let res = self.powered().and_then(|mut s| {
            let rel = s.child(parent.0, name)?;
            std::fs::DirBuilder::new()
                .mode(mode & !umask & 0o7777)
                .create(s.full(&rel))
                .map_err(Errno::from)?;
            let ino = s.inode_for(rel)?;
            s.attr(ino)
        });
        match res {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(
            reply,
            self.remove(parent, name, |p| std::fs::remove_file(p)),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.remove(parent, name, |p| std::fs::remove_dir(p)));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let res = self.powered().and_then(|mut s| {
            let from = s.child(parent.0, name)?;
            let to = s.child(newparent.0, newname)?;
            if flags.bits() != 0 {
                // RENAME_NOREPLACE is all a careful writer asks for; do it by hand.
                if flags.bits() != libc::RENAME_NOREPLACE {
                    return Err(Errno::EINVAL);
                }
                if s.full(&to).symlink_metadata().is_ok() {
                    return Err(Errno::EEXIST);
                }
            }
            // Make sure the moved name is known, so its open handles follow it.
            s.inode_for(from.clone())?;
            std::fs::rename(s.full(&from), s.full(&to)).map_err(Errno::from)?;
            s.rename(&from, &to);
            Ok(())
        });
        empty(reply, res);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let res = self.powered().and_then(|mut s| {
            if flags.0 & libc::O_TRUNC != 0 {
                s.truncate(ino.0, 0)?;
            }
            Ok(())
        });
        match res {
            Ok(()) => reply.opened(FileHandle(0), direct()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let res = self.powered().and_then(|mut s| {
            let rel = s.child(parent.0, name)?;
            let mut opts = OpenOptions::new();
            opts.read(true).write(true).mode(mode & !umask & 0o7777);
            if flags & libc::O_EXCL != 0 {
                opts.create_new(true);
            } else {
                opts.create(true);
            }
            // The new name is durable at once; the file holds nothing until synced.
            drop(opts.open(s.full(&rel)).map_err(Errno::from)?);
            let ino = s.inode_for(rel)?;
            if flags & libc::O_TRUNC != 0 {
                s.truncate(ino, 0)?;
            }
            s.attr(ino)
        });
        match res {
            Ok(attr) => reply.created(&TTL, &attr, Generation(0), FileHandle(0), direct()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.lock().read(ino.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let res = self
            .powered()
            .and_then(|mut s| s.write(ino.0, offset, data));
        match res {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() is not a sync.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Two halves, the lock released between them: a cut that comes while the device
        // works loses what this fsync was writing, as a real one would. The device's time
        // is a real fsync of the backing file, at least `sync_time`.
        let plan = self.powered().and_then(|s| match s.inodes.get(&ino.0) {
            Some(n) if n.file.is_some() => n.plan_sync(s.epoch).map(Some).map_err(Errno::from),
            Some(_) => Ok(None),
            None => Err(Errno::ENOENT),
        });
        let plan = match plan {
            Ok(Some(plan)) => plan,
            Ok(None) => return reply.ok(),
            Err(e) => return reply.error(e),
        };
        let began = std::time::Instant::now();
        if let Err(e) = plan.file.sync_all() {
            return reply.error(Errno::from(e));
        }
        std::thread::sleep(self.sync_time.saturating_sub(began.elapsed()));
        let mut s = self.lock();
        if s.off || s.epoch != plan.epoch {
            return reply.error(Errno::EIO);
        }
        let State { inodes, counts, .. } = &mut *s;
        let res = match inodes.get_mut(&ino.0) {
            Some(n) => n.finish_sync(plan, counts).map_err(Errno::from),
            None => Err(Errno::ENOENT),
        };
        empty(reply, res);
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Names are durable as soon as they change (see the module's comment).
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let res = self.powered().and_then(|mut s| {
            let node = s.file_mut(ino.0)?;
            node.size = node.size.max(offset + length);
            Ok(())
        });
        empty(reply, res);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.lock().entries(ino.0) {
            Ok(entries) => {
                for (i, (child, kind, name)) in
                    entries.into_iter().enumerate().skip(offset as usize)
                {
                    if reply.add(INodeNo(child), i as u64 + 1, kind, &name) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let backing = self.lock().backing.clone();
        let Ok(c_path) = CString::new(backing.as_os_str().as_bytes()) else {
            return reply.error(Errno::EINVAL);
        };
        // SAFETY: an all-zero statvfs is a valid value of the plain C struct it is.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a pointer to a statvfs the call fills in.
        if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
            return reply.error(Errno::from(std::io::Error::last_os_error()));
        }
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            st.f_namemax as u32,
            st.f_frsize as u32,
        );
    }
}
