//! A FUSE filesystem that forgets what was not fsynced: the page cache a power cut loses.
//!
//! `kill -9` keeps every write the kernel has taken, synced or not, so it cannot show a
//! missing or misplaced fsync. This filesystem keeps what a power cut would lose in memory
//! and throws it away at [`Power::cut`]:
//!
//! - **File data**, a 4-KiB page at a time, until `fsync`/`fdatasync` of that file writes it
//!   to the file's backing file (writes, extensions and truncations alike). A cut may first
//!   write some of those pages back ([`Writeback`]), in any order, as the kernel's
//!   writeback and a disk's volatile cache do: unsynced data is not lost whole or kept whole,
//!   and a later page can survive an earlier one.
//! - **Names**: creating, renaming and removing a file or directory changes the namespace
//!   the processes see, not the durable one. A directory's entries become durable only when
//!   that directory is fsynced, as POSIX asks. A file created, written and fsynced in a
//!   directory never synced is gone after a cut; one renamed over another without a sync of
//!   the directory is the old file again; one removed without it is back, with its synced
//!   data. Each directory is made durable on its own, so a cross-directory rename synced in
//!   one directory only leaves the file in both or neither after a cut, a state a journaling
//!   filesystem would not produce; nothing under test renames across directories.
//!
//! This is stricter than lazyfs (the filesystem Jepsen uses for the same purpose), which
//! keeps names durable at once, and stricter than ext4, whose journal usually commits a new
//! name along with the next fsync of anything; it is what a store may rely on everywhere.
//!
//! It can also be full ([`Power::fill`]): from then on every change that needs more room (a
//! write past a file's end, a file made longer, an allocation) fails with `ENOSPC` until
//! [`Power::make_room`], while writes over bytes a file already has, syncs, creates, renames
//! and removals go on, as on a real full disk.
//!
//! The namespace lives in memory; the backing directory holds one file per regular file,
//! named by inode number, with what was last synced. Every open is direct I/O
//! (`FOPEN_DIRECT_IO`) and attributes are never cached, so the kernel holds no copy of file
//! data, sizes or names that could outlive a cut.

// Included by several test crates (`#[path]`), each using part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

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
    /// Directory fsyncs: each made its directory's entries durable.
    pub dir_syncs: u64,
    pub cuts: u64,
    /// Pages written but never synced when a cut came.
    pub pages_lost: u64,
    /// Pages written and never synced that a cut wrote back anyway ([`Writeback`]).
    pub pages_written_back: u64,
    /// Files whose size a cut moved back (an extension or a truncation not synced).
    pub sizes_lost: u64,
    /// Directory entries a cut undid: names created, removed or moved since their
    /// directory's last sync.
    pub names_lost: u64,
}

/// What one cut threw away.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Lost {
    /// Pages written and not synced.
    pub pages: u64,
    /// Pages written and not synced that reached the disk all the same ([`Writeback`]).
    pub written_back: u64,
    /// Directory entries changed since their directory's last sync (see [`Counts`]).
    pub names: u64,
}

/// Which unsynced pages reach the disk at a cut, before the rest is lost. Nothing orders
/// writes between two fsyncs: the kernel writes dirty pages back when it likes, and a disk
/// with a volatile cache persists what it holds in any order. A store must start again
/// from any of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writeback {
    /// None of them: the cut loses every unsynced page.
    None,
    /// All of a file's unsynced pages but its lowest: the later pages of an append survive
    /// its first, the order that looks most like damage.
    AllButFirst,
    /// Each page or not, as a generator seeded with this chooses.
    Random(u64),
}

impl Writeback {
    /// A choice per page: `first` is the lowest unsynced page of its file, `state` the
    /// random generator's (splitmix64).
    pub fn keeps(self, page: u64, first: u64, state: &mut u64) -> bool {
        match self {
            Writeback::None => false,
            Writeback::AllButFirst => page != first,
            Writeback::Random(_) => {
                *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = *state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                (z ^ (z >> 31)) & 1 == 1
            }
        }
    }
}

impl std::ops::Add for Lost {
    type Output = Lost;
    fn add(self, o: Lost) -> Lost {
        Lost {
            pages: self.pages + o.pages,
            written_back: self.written_back + o.written_back,
            names: self.names + o.names,
        }
    }
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} unsynced pages ({} of them written back first) and {} names lost",
            self.pages, self.written_back, self.names
        )
    }
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

/// A regular file's data: the backing file holds what was last synced, `dirty` the rest.
struct Data {
    file: File,
    /// Pages written since the last sync, by page number.
    dirty: BTreeMap<u64, Dirty>,
    /// The size the processes see.
    size: u64,
    /// A truncation not synced yet: what the backing file holds from here on reads as zeros.
    zero_from: Option<u64>,
}

/// A directory's entries: those the processes see, and those its last sync made durable.
#[derive(Default)]
struct Dir {
    entries: BTreeMap<OsString, u64>,
    durable: BTreeMap<OsString, u64>,
    /// The directory holding this one now (the root holds itself).
    parent: u64,
}

enum Body {
    File(Data),
    Dir(Dir),
}

/// One file or directory, by inode number. Numbers are never reused.
struct Inode {
    body: Body,
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    /// Names the processes see it by (a directory: 1 while it has a name).
    links: u32,
    /// Open handles (regular files): an unlinked file lives while one is open.
    open: u32,
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

impl Data {
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
            let mut got = 0;
            while got < want {
                let n = self.file.read_at(&mut buf[got..want], start + got as u64)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
        }
        Ok(buf)
    }

    /// Set the size the processes see; nothing reaches the backing file before a sync.
    fn truncate(&mut self, len: u64, stamp: u64) -> std::io::Result<()> {
        if len < self.size {
            let keep = len.div_ceil(PAGE);
            self.dirty.retain(|&p, _| p < keep);
            if !len.is_multiple_of(PAGE) {
                let p = len / PAGE;
                let mut data = self.page(p)?;
                data[(len % PAGE) as usize..].fill(0);
                self.dirty.insert(p, Dirty { stamp, data });
            }
            self.zero_from = Some(self.zero_from.map_or(len, |z| z.min(len)));
        }
        self.size = len;
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8], stamp: u64) -> std::io::Result<()> {
        let end = offset + data.len() as u64;
        for (p, within, n, from) in spans(offset, end) {
            if !self.dirty.contains_key(&p) {
                let page = self.page(p)?;
                self.dirty.insert(p, Dirty { stamp, data: page });
            }
            let page = self.dirty.get_mut(&p).expect("inserted");
            page.stamp = stamp;
            page.data[within..within + n].copy_from_slice(&data[from..from + n]);
        }
        self.size = self.size.max(end);
        Ok(())
    }

    fn read(&self, offset: u64, size: u32) -> std::io::Result<Vec<u8>> {
        let end = (offset + size as u64).min(self.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        for (p, within, n, _) in spans(offset, end) {
            let page = self.page(p)?;
            out.extend_from_slice(&page[within..within + n]);
        }
        Ok(out)
    }

    /// The first half of an fsync: what it will make durable.
    fn plan_sync(&self, epoch: u64) -> std::io::Result<SyncPlan> {
        Ok(SyncPlan {
            file: self.file.try_clone()?,
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

    /// Forget what was not synced, but for the pages `writeback` keeps: those reach the
    /// backing file first, each with the size it implies (a page past the durable end
    /// leaves a hole of zeros before it, as a file extended by writeback does).
    fn cut(&mut self, counts: &mut Counts, writeback: Writeback, state: &mut u64) {
        counts.pages_lost += self.dirty.len() as u64;
        let dirty = std::mem::take(&mut self.dirty);
        let first = dirty.keys().next().copied().unwrap_or(0);
        let kept: Vec<(u64, Vec<u8>)> = dirty
            .into_iter()
            .filter(|(p, _)| writeback.keeps(*p, first, state))
            .map(|(p, d)| (p, d.data))
            .collect();
        counts.pages_written_back += kept.len() as u64;
        // A page written after a truncation that was not synced reached the disk only
        // after the truncation did (a journal commits them in order).
        if let Some(z) = self.zero_from {
            if kept.iter().any(|(p, _)| (p + 1) * PAGE > z) {
                let len = self.file.metadata().expect("the backing file").len();
                if len > z {
                    self.file.set_len(z).expect("truncate the backing file");
                }
            }
        }
        for (p, data) in kept {
            let start = p * PAGE;
            if start < self.size {
                let n = (self.size - start).min(PAGE) as usize;
                self.file
                    .write_all_at(&data[..n], start)
                    .expect("write a page back");
            }
        }
        self.zero_from = None;
        let durable = self.file.metadata().map(|m| m.len()).unwrap_or(0);
        if durable != self.size {
            counts.sizes_lost += 1;
        }
        self.size = durable;
    }
}

impl Inode {
    fn kind(&self) -> FileType {
        match self.body {
            Body::File(_) => FileType::RegularFile,
            Body::Dir(_) => FileType::Directory,
        }
    }

    fn dir(&self) -> Result<&Dir, Errno> {
        match &self.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self) -> Result<&mut Dir, Errno> {
        match &mut self.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn data(&self) -> Result<&Data, Errno> {
        match &self.body {
            Body::File(d) => Ok(d),
            Body::Dir(_) => Err(Errno::EISDIR),
        }
    }

    fn data_mut(&mut self) -> Result<&mut Data, Errno> {
        match &mut self.body {
            Body::File(d) => Ok(d),
            Body::Dir(_) => Err(Errno::EISDIR),
        }
    }
}

struct State {
    backing: PathBuf,
    /// Ordered, so that a cut walks the files in the same order in every run and a seed
    /// repeats the same losses (a `HashMap`'s order changes from process to process).
    inodes: BTreeMap<u64, Inode>,
    next_ino: u64,
    counts: Counts,
    /// The power is off: nothing more reaches the disk, every change fails with EIO.
    off: bool,
    /// The disk is full: every change that needs more room fails with ENOSPC.
    full: bool,
    /// Counts the cuts: an fsync that began before one does not complete.
    epoch: u64,
    /// Counts writes, to stamp the pages they dirty.
    stamp: u64,
}

impl State {
    /// Fail with ENOSPC when the disk is full and file `ino` would grow to `to` bytes.
    fn room(&self, ino: u64, to: u64) -> Result<(), Errno> {
        if self.full && to > self.node(ino)?.data()?.size {
            return Err(Errno::ENOSPC);
        }
        Ok(())
    }

    /// A new stamp for the pages a write or truncation dirties.
    fn next_stamp(&mut self) -> u64 {
        self.stamp += 1;
        self.stamp
    }

    fn node(&self, ino: u64) -> Result<&Inode, Errno> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Inode, Errno> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    /// Where regular file `ino` keeps what was synced.
    fn backing_of(&self, ino: u64) -> PathBuf {
        self.backing.join(ino.to_string())
    }

    /// The inode directory `parent` names `name`, as the processes see it.
    fn child(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        let dir = self.node(parent)?.dir()?;
        match name.as_bytes() {
            b"." => Ok(parent),
            b".." => Ok(dir.parent),
            _ => dir.entries.get(name).copied().ok_or(Errno::ENOENT),
        }
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let node = self.node(ino)?;
        let (size, nlink) = match &node.body {
            Body::File(d) => (d.size, node.links),
            Body::Dir(_) => (PAGE, 2),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.mtime,
            mtime: node.mtime,
            ctime: node.mtime,
            crtime: node.mtime,
            kind: node.kind(),
            perm: node.perm,
            nlink,
            uid: node.uid,
            gid: node.gid,
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    /// A new inode, not named yet.
    fn add(&mut self, body: Body, perm: u16, req: &Request) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        let inode = Inode {
            body,
            perm,
            uid: req.uid(),
            gid: req.gid(),
            mtime: SystemTime::now(),
            links: 0,
            open: 0,
        };
        self.inodes.insert(ino, inode);
        ino
    }

    /// A new, empty regular file, not named yet.
    fn add_file(&mut self, perm: u16, req: &Request) -> Result<u64, Errno> {
        let ino = self.next_ino;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.backing_of(ino))
            .map_err(Errno::from)?;
        let data = Data {
            file,
            dirty: BTreeMap::new(),
            size: 0,
            zero_from: None,
        };
        Ok(self.add(Body::File(data), perm, req))
    }

    /// Name `ino` `name` in directory `parent`, as the processes see it.
    fn link(&mut self, parent: u64, name: &OsStr, ino: u64) -> Result<(), Errno> {
        let dir = self.node_mut(parent)?.dir_mut()?;
        if dir.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        dir.entries.insert(name.to_owned(), ino);
        self.node_mut(parent)?.mtime = SystemTime::now();
        let node = self.node_mut(ino)?;
        node.links += 1;
        if let Body::Dir(d) = &mut node.body {
            d.parent = parent;
        }
        Ok(())
    }

    /// Remove name `name` from directory `parent`, as the processes see it; returns the
    /// inode it named. Nothing is freed here (see [`State::sweep`]).
    fn unlink(&mut self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        let dir = self.node_mut(parent)?.dir_mut()?;
        let ino = dir.entries.remove(name).ok_or(Errno::ENOENT)?;
        self.node_mut(parent)?.mtime = SystemTime::now();
        if let Some(n) = self.inodes.get_mut(&ino) {
            n.links = n.links.saturating_sub(1);
        }
        Ok(ino)
    }

    /// Whether directory `ino` is `ancestor` or lies under it, as the processes see it.
    fn is_under(&self, mut ino: u64, ancestor: u64) -> bool {
        loop {
            if ino == ancestor {
                return true;
            }
            match self.inodes.get(&ino).map(|n| n.dir()) {
                Some(Ok(d)) if ino != ROOT => ino = d.parent,
                _ => return false,
            }
        }
    }

    fn rename(
        &mut self,
        (parent, name): (u64, &OsStr),
        (newparent, newname): (u64, &OsStr),
        noreplace: bool,
    ) -> Result<(), Errno> {
        let moved = self.child(parent, name)?;
        let moved_dir = self.node(moved)?.dir().is_ok();
        self.node(newparent)?.dir()?;
        if moved_dir && self.is_under(newparent, moved) {
            return Err(Errno::EINVAL);
        }
        if let Ok(old) = self.child(newparent, newname) {
            if noreplace {
                return Err(Errno::EEXIST);
            }
            if old == moved {
                return Ok(());
            }
            match (moved_dir, self.node(old)?.dir()) {
                (true, Ok(d)) if !d.entries.is_empty() => return Err(Errno::ENOTEMPTY),
                (true, Err(_)) => return Err(Errno::ENOTDIR),
                (false, Ok(_)) => return Err(Errno::EISDIR),
                _ => {}
            }
            self.unlink(newparent, newname)?;
        }
        self.unlink(parent, name)?;
        self.link(newparent, newname, moved)?;
        self.sweep();
        Ok(())
    }

    /// Directory `ino`'s entries as the processes see them, `.` and `..` first, then by
    /// name (a stable order, so `readdir`'s offsets mean the same thing from one call to
    /// the next).
    fn entries(&self, ino: u64) -> Result<Vec<(u64, FileType, OsString)>, Errno> {
        let dir = self.node(ino)?.dir()?;
        let mut out = vec![
            (ino, FileType::Directory, ".".into()),
            (dir.parent, FileType::Directory, "..".into()),
        ];
        for (name, &child) in &dir.entries {
            if let Some(n) = self.inodes.get(&child) {
                out.push((child, n.kind(), name.clone()));
            }
        }
        Ok(out)
    }

    /// The inodes reachable from the root through `edges` of each directory (with both
    /// the names the processes see and the durable ones, everything that may exist after
    /// a cut).
    fn reachable(&self, edges: impl Fn(&Dir) -> Vec<u64>) -> HashSet<u64> {
        let mut seen = HashSet::from([ROOT]);
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            let Some(Ok(dir)) = self.inodes.get(&ino).map(|n| n.dir()) else {
                continue;
            };
            for child in edges(dir) {
                if self.inodes.contains_key(&child) && seen.insert(child) {
                    stack.push(child);
                }
            }
        }
        seen
    }

    /// Free every inode that neither has a name, durable or not, nor is open: no cut can
    /// bring it back and no process can reach it.
    fn sweep(&mut self) {
        let live = self.reachable(|d| {
            d.entries
                .values()
                .chain(d.durable.values())
                .copied()
                .collect()
        });
        self.drop_all_but(&live, true);
    }

    /// Remove the inodes not in `keep` (with `open_too`, open files are kept as well), and
    /// their backing files.
    fn drop_all_but(&mut self, keep: &HashSet<u64>, open_too: bool) {
        let gone: Vec<u64> = self
            .inodes
            .iter()
            .filter(|(ino, n)| !(keep.contains(ino) || open_too && n.open > 0))
            .map(|(&ino, _)| ino)
            .collect();
        for ino in gone {
            if let Some(Inode {
                body: Body::File(_),
                ..
            }) = self.inodes.remove(&ino)
            {
                let _ = std::fs::remove_file(self.backing_of(ino));
            }
        }
    }

    /// The power cut: every directory goes back to its durable entries, every file to its
    /// synced data and the unsynced pages `writeback` keeps, and whatever is left without a
    /// durable name is gone.
    fn cut(&mut self, writeback: Writeback) -> Lost {
        let mut state = match writeback {
            Writeback::Random(seed) => seed,
            _ => 0,
        };
        let mut counts = self.counts;
        for node in self.inodes.values_mut() {
            if let Body::Dir(d) = &mut node.body {
                let differ = |a: &BTreeMap<OsString, u64>, b: &BTreeMap<OsString, u64>| {
                    a.iter().filter(|(k, v)| b.get(*k) != Some(*v)).count() as u64
                };
                counts.names_lost +=
                    differ(&d.entries, &d.durable) + differ(&d.durable, &d.entries);
                d.entries = d.durable.clone();
            }
        }
        let live = self.reachable(|d| d.durable.values().copied().collect());
        self.drop_all_but(&live, false);
        // Names and parents as the durable namespace has them.
        let mut links: HashMap<u64, u32> = HashMap::new();
        let mut parents: HashMap<u64, u64> = HashMap::new();
        for (&ino, node) in &self.inodes {
            if let Body::Dir(d) = &node.body {
                for &child in d.entries.values() {
                    *links.entry(child).or_default() += 1;
                    parents.insert(child, ino);
                }
            }
        }
        for (ino, node) in self.inodes.iter_mut() {
            node.links = links.get(ino).copied().unwrap_or(0);
            match &mut node.body {
                Body::File(d) => d.cut(&mut counts, writeback, &mut state),
                Body::Dir(d) => d.parent = parents.get(ino).copied().unwrap_or(ROOT),
            }
        }
        counts.cuts += 1;
        let lost = Lost {
            pages: counts.pages_lost - self.counts.pages_lost,
            written_back: counts.pages_written_back - self.counts.pages_written_back,
            names: counts.names_lost - self.counts.names_lost,
        };
        self.counts = counts;
        self.off = true;
        self.epoch += 1;
        lost
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
    /// Cut the power: every write and every change of a name no fsync has reached is lost,
    /// but for the pages `writeback` lets reach the disk first, and from now on nothing
    /// reaches the disk (every change fails with EIO) until [`Power::restore`]. The
    /// processes using the filesystem should be frozen first (SIGSTOP), so that none acts on
    /// what happens after the cut, then killed. Returns what this cut lost.
    pub fn cut(&self, writeback: Writeback) -> Lost {
        lock(&self.state).cut(writeback)
    }

    /// Power back on, for the processes started after the cut.
    pub fn restore(&self) {
        lock(&self.state).off = false;
    }

    /// Fill the disk: from now on a change that needs more room fails with ENOSPC (see the
    /// module's text), until [`Power::make_room`].
    pub fn fill(&self) {
        lock(&self.state).full = true;
    }

    /// Room again, as when an operator deletes what filled the disk.
    pub fn make_room(&self) {
        lock(&self.state).full = false;
    }

    pub fn counts(&self) -> Counts {
        lock(&self.state).counts
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
/// finish their fsyncs), lose what they had not synced (but for what `writeback` keeps; a
/// random choice is seeded anew for each node), then kill them. Their power stays off until
/// [`Power::restore`]. Returns what the cuts lost.
pub fn cut_power(
    cluster: &mut Cluster,
    power: &[Power],
    (victims, writeback): (&[usize], Writeback),
) -> Lost {
    for &i in victims {
        if let Some(pid) = cluster.nodes[i].pid() {
            // SAFETY: kill(2) on a child this test started and has not reaped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
        }
    }
    let lost = victims.iter().fold(Lost::default(), |lost, &i| {
        let writeback = match writeback {
            Writeback::Random(seed) => Writeback::Random(seed ^ (i as u64 + 1)),
            w => w,
        };
        lost + power[i].cut(writeback)
    });
    for &i in victims {
        cluster.kill(i);
    }
    lost
}

/// Each data directory of `cluster` on a lossy filesystem of its own, synced data kept
/// under `backing`; and their power switches, by node.
pub fn mount_all(
    cluster: &Cluster,
    backing: &Path,
    sync_time: Duration,
) -> (Vec<Mounted>, Vec<Power>) {
    let mounts: Vec<Mounted> = (0..cluster.nodes.len())
        .map(|i| {
            mount(
                &backing.join(format!("n{}", i + 1)),
                &cluster.data_dir(i),
                sync_time,
            )
            .expect("mount a lossy filesystem")
        })
        .collect();
    let power = mounts.iter().map(|m| m.power.clone()).collect();
    (mounts, power)
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

/// Mount an empty lossy filesystem at `mountpoint` (an empty directory), keeping synced
/// data in `backing` (made if missing; files in it named like inode numbers are
/// overwritten). Every fsync, of a file or a directory, takes at least `sync_time`, the
/// device's own time: the backing directory may sit on a disk (or a tmpfs) far faster than
/// the ones stores run on, and a store that answers before its fsync is done is caught only
/// while that fsync is slow enough for a cut to land in it.
pub fn mount(backing: &Path, mountpoint: &Path, sync_time: Duration) -> std::io::Result<Mounted> {
    std::fs::create_dir_all(backing)?;
    std::fs::create_dir_all(mountpoint)?;
    let root = Inode {
        body: Body::Dir(Dir {
            parent: ROOT,
            ..Dir::default()
        }),
        perm: 0o755,
        // SAFETY: geteuid and getegid have no preconditions and cannot fail.
        uid: unsafe { libc::geteuid() },
        gid: unsafe { libc::getegid() },
        mtime: SystemTime::now(),
        links: 1,
        open: 0,
    };
    let state = Arc::new(Mutex::new(State {
        backing: backing.to_path_buf(),
        inodes: BTreeMap::from([(ROOT, root)]),
        next_ino: ROOT + 1,
        counts: Counts::default(),
        off: false,
        full: false,
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

    /// The state, for an operation that changes what is on disk: none while the power is off.
    fn powered(&self) -> Result<MutexGuard<'_, State>, Errno> {
        let s = self.lock();
        if s.off {
            return Err(Errno::EIO);
        }
        Ok(s)
    }

    /// Remove name `name` from `parent` if `check` accepts what it names.
    fn remove(
        &self,
        parent: INodeNo,
        name: &OsStr,
        check: fn(&Inode) -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        let mut s = self.powered()?;
        check(s.node(s.child(parent.0, name)?)?)?;
        s.unlink(parent.0, name)?;
        s.sweep();
        Ok(())
    }

    /// Wait out the device's time for a sync that began at `began`, then, if no cut came
    /// meanwhile, run `finish` on the state.
    fn finish_sync<T>(
        &self,
        began: std::time::Instant,
        epoch: u64,
        finish: impl FnOnce(&mut State) -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        std::thread::sleep(self.sync_time.saturating_sub(began.elapsed()));
        let mut s = self.lock();
        if s.off || s.epoch != epoch {
            return Err(Errno::EIO);
        }
        finish(&mut s)
    }
}

/// Answer an operation that returns nothing.
fn empty(reply: ReplyEmpty, res: Result<(), Errno>) {
    match res {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// Answer an operation that returns an entry.
fn entry(reply: ReplyEntry, res: Result<FileAttr, Errno>) {
    match res {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

/// Answer an operation that returns attributes.
fn attr(reply: ReplyAttr, res: Result<FileAttr, Errno>) {
    match res {
        Ok(attr) => reply.attr(&TTL, &attr),
        Err(e) => reply.error(e),
    }
}

fn direct() -> FopenFlags {
    FopenFlags::FOPEN_DIRECT_IO
}

fn perm(mode: u32, umask: u32) -> u16 {
    (mode & !umask & 0o7777) as u16
}

impl Filesystem for LossyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let s = self.lock();
        entry(reply, s.child(parent.0, name).and_then(|ino| s.attr(ino)));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        attr(reply, self.lock().attr(ino.0));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
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
                s.room(ino.0, len)?;
            }
            let stamp = s.next_stamp();
            let node = s.node_mut(ino.0)?;
            if let Some(len) = size {
                node.data_mut()?.truncate(len, stamp).map_err(Errno::from)?;
                node.mtime = SystemTime::now();
            }
            if let Some(mode) = mode {
                node.perm = perm(mode, 0);
            }
            node.uid = uid.unwrap_or(node.uid);
            node.gid = gid.unwrap_or(node.gid);
            match mtime {
                Some(TimeOrNow::SpecificTime(t)) => node.mtime = t,
                Some(TimeOrNow::Now) => node.mtime = SystemTime::now(),
                None => {}
            }
            s.attr(ino.0)
        });
        attr(reply, res);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let res = self.powered().and_then(|mut s| {
            match s.child(parent.0, name) {
                Ok(_) => return Err(Errno::EEXIST),
                Err(e) if e != Errno::ENOENT => return Err(e),
                Err(_) => {}
            }
            let ino = s.add(Body::Dir(Dir::default()), perm(mode, umask), req);
            s.link(parent.0, name, ino)?;
            s.attr(ino)
        });
        entry(reply, res);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let res = self.remove(parent, name, |n| n.data().map(|_| ()));
        empty(reply, res);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let res = self.remove(parent, name, |n| match n.dir()?.entries.is_empty() {
            true => Ok(()),
            false => Err(Errno::ENOTEMPTY),
        });
        empty(reply, res);
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
        // RENAME_NOREPLACE is all a careful writer asks for.
        let res = match flags.difference(RenameFlags::RENAME_NOREPLACE).is_empty() {
            false => Err(Errno::EINVAL),
            true => self.powered().and_then(|mut s| {
                let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
                s.rename((parent.0, name), (newparent.0, newname), noreplace)
            }),
        };
        empty(reply, res);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let res = self.powered().and_then(|mut s| {
            let stamp = s.next_stamp();
            let node = s.node_mut(ino.0)?;
            let data = node.data_mut()?;
            if flags.0 & libc::O_TRUNC != 0 {
                data.truncate(0, stamp).map_err(Errno::from)?;
            }
            node.open += 1;
            Ok(())
        });
        match res {
            Ok(()) => reply.opened(FileHandle(0), direct()),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Not `powered`: the handles of processes killed at a cut close after it. A file
        // the cut took is gone already.
        let mut s = self.lock();
        if let Some(node) = s.inodes.get_mut(&ino.0) {
            node.open = node.open.saturating_sub(1);
            if node.open == 0 && node.links == 0 {
                s.sweep();
            }
        }
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let res = self.powered().and_then(|mut s| {
            let ino = match s.child(parent.0, name) {
                Ok(_) if flags & libc::O_EXCL != 0 => return Err(Errno::EEXIST),
                Ok(ino) => ino,
                Err(e) if e != Errno::ENOENT => return Err(e),
                Err(_) => {
                    let ino = s.add_file(perm(mode, umask), req)?;
                    s.link(parent.0, name, ino)?;
                    ino
                }
            };
            let stamp = s.next_stamp();
            let node = s.node_mut(ino)?;
            let data = node.data_mut()?;
            if flags & libc::O_TRUNC != 0 {
                data.truncate(0, stamp).map_err(Errno::from)?;
            }
            node.open += 1;
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
        let s = self.lock();
        let res = s
            .node(ino.0)
            .and_then(|n| n.data()?.read(offset, size).map_err(Errno::from));
        match res {
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
        let res = self.powered().and_then(|mut s| {
            s.room(ino.0, offset + data.len() as u64)?;
            let stamp = s.next_stamp();
            let node = s.node_mut(ino.0)?;
            node.data_mut()?
                .write(offset, data, stamp)
                .map_err(Errno::from)?;
            node.mtime = SystemTime::now();
            Ok(())
        });
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
        // is a real fsync of the backing file, at least `sync_time`. A file's fsync makes
        // its data durable, not its name.
        let began = std::time::Instant::now();
        let plan = self.powered().and_then(|s| {
            let data = s.node(ino.0)?.data()?;
            data.plan_sync(s.epoch).map_err(Errno::from)
        });
        let res = plan.and_then(|plan| {
            plan.file.sync_all().map_err(Errno::from)?;
            self.finish_sync(began, plan.epoch, |s| {
                let State { inodes, counts, .. } = s;
                let node = inodes.get_mut(&ino.0).ok_or(Errno::ENOENT)?;
                let data = node.data_mut()?;
                data.finish_sync(plan, counts).map_err(Errno::from)
            })
        });
        empty(reply, res);
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // The directory's entries as they are now become durable once the device's time
        // has passed, unless a cut comes first. Names that were removed and whose inode
        // is gone since the sync began (nothing else held it) are left out.
        let began = std::time::Instant::now();
        let plan = self
            .powered()
            .and_then(|s| Ok((s.node(ino.0)?.dir()?.entries.clone(), s.epoch)));
        let res = plan.and_then(|(entries, epoch)| {
            self.finish_sync(began, epoch, |s| {
                let mut durable = entries;
                durable.retain(|_, child| s.inodes.contains_key(child));
                s.node_mut(ino.0)?.dir_mut()?.durable = durable;
                s.counts.dir_syncs += 1;
                s.sweep();
                Ok(())
            })
        });
        empty(reply, res);
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
            s.room(ino.0, offset + length)?;
            let data = s.node_mut(ino.0)?.data_mut()?;
            data.size = data.size.max(offset + length);
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
        let (backing, full) = {
            let s = self.lock();
            (s.backing.clone(), s.full)
        };
        let Ok(c_path) = CString::new(backing.as_os_str().as_bytes()) else {
            return reply.error(Errno::EINVAL);
        };
        // SAFETY: an all-zero statvfs is a valid value of the plain C struct it is.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a pointer to a statvfs the call fills in.
        if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
            return reply.error(Errno::from(std::io::Error::last_os_error()));
        }
        // Full: nothing free, as the processes should see it.
        let (bfree, bavail) = if full {
            (0, 0)
        } else {
            (st.f_bfree, st.f_bavail)
        };
        reply.statfs(
            st.f_blocks,
            bfree,
            bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            st.f_namemax as u32,
            st.f_frsize as u32,
        );
    }
}
