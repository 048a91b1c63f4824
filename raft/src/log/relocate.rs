//! Moving a stopped node's WAL to another directory (`cookie-crud move-wal`): onto a device
//! of its own, or back into the data directory's `wal/`.
//!
//! The move must never leave two directories that both pass for this log's WAL. A node
//! started on a stale copy would come up with a shorter log than the one it acknowledged
//! and voted with: [`place`] accepts any directory that carries this log's marker. So the
//! marker moves last, alone, and the steps are:
//!
//! 1. Copy the segments into the new directory, under a note ([`MOVING_IN`]) that names this
//!    log and says the copy is not a WAL yet; sync each file and the directory.
//! 2. Remove the marker from the old directory, and sync it. From here until step 3, neither
//!    directory is this log's WAL, and a node refuses to start on either.
//! 3. Write the marker into the new directory, then remove the note.
//! 4. Remove the old segments.
//!
//! A move cut short anywhere is finished by running it again: each state is told apart by
//! where the marker and the note are. `log.redb` stays open (locked) throughout, so a node
//! cannot start on the directory meanwhile, and one already running makes the move refuse.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::place::{self, segment_names, Dirs, MARKER};
use super::{other, read_meta, KEY_WAL_MARKED};

/// The note in a directory the WAL is being copied into: the incarnation of the log whose
/// segments it receives. A directory with it and no marker is an unfinished copy.
pub const MOVING_IN: &str = "moving-in";

/// What a move did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// The directory the WAL is in now.
    pub to: PathBuf,
    /// Segments copied (0 when a rerun found the copy made and only finished the move).
    pub segments: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// Move the WAL of the log in `dirs.data` from `dirs.wal` to `to` (see the module's
/// documentation). Refuses a node that is running, a WAL that is not this log's, a target
/// that holds anything of another log's or lies inside the data directory (but for its
/// `wal/`), and a target without room for the segments.
pub fn move_wal(configured: &Dirs, to: &Path) -> io::Result<Moved> {
    let meta = configured.data.join("log.redb");
    if !meta.is_file() {
        return Err(refused(format!(
            "{} has no log.redb: not a node's data directory",
            configured.data.display()
        )));
    }
    // Held until the move is done: no node starts on these directories meanwhile.
    let db = match crate::create_db(&meta, crate::DbCache::default().log) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            return Err(refused(format!(
                "{} is in use by a running node: stop it first",
                configured.data.display()
            )))
        }
        Err(e) => return Err(other(e)),
    };
    let incarnation = super::incarnation(&db).map_err(other)?;
    let marked = read_meta::<bool>(&db, KEY_WAL_MARKED)
        .map_err(other)?
        .unwrap_or(false);
    let same =
        |a: &Path, b: &Path| -> io::Result<bool> { Ok(place::resolve(a)? == place::resolve(b)?) };
    // A setting changed before the move (as a Kubernetes ConfigMap may be) already names
    // the target: the WAL is still where it was made, in the data directory's wal/.
    let from = if configured.wal_apart() && same(&configured.wal, to)? {
        Dirs::new(&configured.data)
    } else {
        configured.clone()
    };
    let dirs = &from;
    if same(&dirs.wal, to)? {
        return Err(refused(if place::read_marker(to)? == Some(incarnation) {
            format!("the WAL is in {} already", to.display())
        } else {
            format!(
                "{} is where the WAL goes, and the configuration names it already: name the \
                 directory the WAL is in now with --wal-dir",
                to.display()
            )
        }));
    }
    // Where the target is the data directory itself, inside it or above it.
    place::resolved_apart(&Dirs::with_wal(&dirs.data, Some(to)))?;
    let (from_marker, to_marker) = (place::read_marker(&dirs.wal)?, place::read_marker(to)?);
    let copying_in = read_note(to)? == Some(incarnation);

    let done = || Moved {
        to: to.to_path_buf(),
        segments: 0,
        bytes: 0,
    };
    match (from_marker, to_marker) {
        (_, Some(m)) if m != incarnation => {
            return Err(refused(format!(
                "{} holds the WAL of another log (incarnation {m:016x}): the WAL can move only \
                 into an empty directory",
                to.display()
            )))
        }
        (Some(m), Some(_)) if m == incarnation => {
            return Err(refused(format!(
                "both {} and {} hold this log's marker: one is a copy made by hand, and only \
                 the one the node last ran on is its WAL",
                dirs.wal.display(),
                to.display()
            )))
        }
        // Cut short after step 3: only the old segments are left to remove.
        (None, Some(_)) => {
            finish(&dirs.wal, to)?;
            return Ok(done());
        }
        // Cut short after step 2: the copy was whole before the marker left, and the old
        // segments are still there to show it (a volume not mounted since would show none).
        // Compared byte for byte: the copy becomes the only WAL in the next step.
        (None, None) if marked && copying_in => {
            if !same_segments(&dirs.wal, to)? {
                return Err(refused(format!(
                    "{} has no marker and the copy in {} does not match its segments: the \
                     move cannot finish from here (is the volume of {} mounted?)",
                    dirs.wal.display(),
                    to.display(),
                    dirs.wal.display()
                )));
            }
            switch(&dirs.wal, to, incarnation)?;
            return Ok(done());
        }
        _ => {}
    }
    // The WAL must be this log's where it is (a log from before markers claims it here,
    // as a node's start would).
    if place::check(dirs, incarnation, marked)? {
        place::write_marker(&dirs.wal, incarnation)?;
    }
    if !marked {
        super::write_meta_now(&db, KEY_WAL_MARKED, &true).map_err(other)?;
    }
    if !copying_in && place::in_use(to)? {
        return Err(refused(format!(
            "{} holds WAL segments of an unknown log: the WAL can move only into an empty \
             directory",
            to.display()
        )));
    }
    let (segments, bytes) = copy(&dirs.wal, to, incarnation)?;
    // Read back before the old marker goes (from the device: the copy's cached pages were
    // dropped): a copy that a faulty device or filesystem changed must not become the only
    // WAL. The move stops here, the node still starts on
    // the old directory, and a rerun copies again.
    if !same_segments(&dirs.wal, to)? {
        return Err(other(format!(
            "the copy of the WAL in {} reads back different from {}: nothing was switched; \
             check the target's device, then run the move again",
            to.display(),
            dirs.wal.display()
        )));
    }
    switch(&dirs.wal, to, incarnation)?;
    drop(db);
    Ok(Moved {
        to: to.to_path_buf(),
        segments,
        bytes,
    })
}

/// Step 1: copy `from`'s segments into `to` under the note, synced. Anything an earlier,
/// unfinished copy left there is copied over. Returns the segments and their bytes.
fn copy(from: &Path, to: &Path, incarnation: u64) -> io::Result<(usize, u64)> {
    let names = segment_names(from)?;
    let mut need = 0;
    for name in &names {
        need += fs::metadata(from.join(name))?.len();
    }
    // Asked of the filesystem the target will be on, before anything is made there.
    let on = to
        .ancestors()
        .find(|a| a.is_dir())
        .unwrap_or(Path::new("."));
    let free = crate::durable::space(on)?.free;
    if free < need {
        return Err(refused(format!(
            "{} has {free} bytes free, and the WAL's segments take {need}",
            to.display()
        )));
    }
    // Makes the directory, durably, before anything goes in.
    place::write_named(to, MOVING_IN, incarnation)?;
    // Segments of an earlier try that this WAL no longer has (purged since) would be read
    // as part of the log: remove them.
    for stale in segment_names(to)? {
        if !names.contains(&stale) {
            fs::remove_file(to.join(stale))?;
        }
    }
    for name in &names {
        let target = to.join(name);
        fs::copy(from.join(name), &target)?;
        let copied = fs::File::open(&target)?;
        copied.sync_all()?;
        // So that the read-back before the switch reads the device, not these pages.
        crate::durable::drop_cached(&copied)?;
    }
    crate::durable::sync_dir(to)?;
    Ok((names.len(), need))
}

/// Steps 2 to 4: the marker leaves `from`, enters `to`; then the note and the old segments
/// go.
fn switch(from: &Path, to: &Path, incarnation: u64) -> io::Result<()> {
    crate::durable::remove_if_present(&from.join(MARKER))?;
    sync_if_there(from)?;
    place::write_marker(to, incarnation)?;
    finish(from, to)
}

/// Step 4, and the note's removal: what is left once the marker is in `to`.
fn finish(from: &Path, to: &Path) -> io::Result<()> {
    crate::durable::remove_if_present(&to.join(MOVING_IN))?;
    crate::durable::sync_dir(to)?;
    for name in segment_names(from)? {
        fs::remove_file(from.join(name))?;
    }
    sync_if_there(from)
}

/// The incarnation the note in `dir` names, if there is one.
fn read_note(dir: &Path) -> io::Result<Option<u64>> {
    place::read_named(dir, MOVING_IN)
}

/// Whether `a` and `b` hold the same segments, name for name and byte for byte.
fn same_segments(a: &Path, b: &Path) -> io::Result<bool> {
    let names = segment_names(a)?;
    if names != segment_names(b)? {
        return Ok(false);
    }
    for name in &names {
        if !same_bytes(&a.join(name), &b.join(name))? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether two files hold the same bytes, read a bounded chunk at a time (a segment is
/// tens of MiB).
fn same_bytes(a: &Path, b: &Path) -> io::Result<bool> {
    use io::Read;
    const CHUNK: usize = 1 << 20;
    let (mut fa, mut fb) = (fs::File::open(a)?, fs::File::open(b)?);
    let len = fa.metadata()?.len();
    if len != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        fa.read_exact(&mut ba[..n])?;
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
        left -= n as u64;
    }
    Ok(true)
}

fn sync_if_there(dir: &Path) -> io::Result<()> {
    match crate::durable::sync_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

fn refused(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::wal::Wal;
    use crate::log::LogStore;

    const SEGMENT: u64 = 1 << 12;

    fn open(dirs: &Dirs) -> io::Result<LogStore> {
        LogStore::open_with(dirs, 1 << 20, SEGMENT)
    }

    /// A log in `dirs` (its open claims the WAL directory) whose WAL holds 40 records over
    /// several segments; the records.
    fn log_with_entries(dirs: &Dirs) -> Vec<Vec<u8>> {
        fs::create_dir_all(&dirs.data).unwrap();
        drop(open(dirs).unwrap());
        let recs: Vec<(u64, Vec<u8>)> = (1..=40).map(|i| (i, vec![i as u8; 300])).collect();
        let mut w = Wal::open_with(&dirs.wal, None, SEGMENT).unwrap();
        for r in &recs {
            // One at a time: a segment rolls between appends.
            w.append(std::slice::from_ref(r)).unwrap();
        }
        recs.into_iter().map(|(_, r)| r).collect()
    }

    fn records(dir: &Path) -> Vec<Vec<u8>> {
        Wal::open_with(dir, None, SEGMENT)
            .unwrap()
            .read(1, 41)
            .unwrap()
    }

    /// The marker, the note and the segments in `dir`.
    fn state(dir: &Path) -> (Option<u64>, Option<u64>, Vec<String>) {
        (
            place::read_marker(dir).unwrap(),
            read_note(dir).unwrap(),
            segment_names(dir).unwrap(),
        )
    }

    #[test]
    fn a_wal_moves_out_and_back_and_the_log_opens_it_where_it_went() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let disk = tmp.path().join("disk2");
        let inside = Dirs::new(&data);
        let recs = log_with_entries(&inside);
        let segs = segment_names(&inside.wal).unwrap();
        assert!(segs.len() > 1, "{segs:?}");
        let inc = place::read_marker(&inside.wal).unwrap();

        let moved = move_wal(&inside, &disk).unwrap();
        assert_eq!(moved.segments, segs.len());
        assert_eq!(state(&disk), (inc, None, segs.clone()));
        assert_eq!(state(&inside.wal), (None, None, vec![]));
        assert_eq!(records(&disk), recs);
        // The log opens it where it went, and refuses the old place.
        let apart = Dirs::with_wal(&data, Some(&disk));
        drop(open(&apart).unwrap());
        let err = open(&inside).err().unwrap().to_string();
        assert!(err.contains("holds no WAL"), "{err}");

        // And back.
        move_wal(&apart, &inside.wal).unwrap();
        assert_eq!(state(&inside.wal), (inc, None, segs));
        assert_eq!(state(&disk), (None, None, vec![]));
        assert_eq!(records(&inside.wal), recs);
        drop(open(&inside).unwrap());
    }

    #[test]
    fn a_move_cut_short_at_any_step_is_finished_by_running_it_again() {
        for step in 1..=3 {
            let tmp = tempfile::tempdir().unwrap();
            let data = tmp.path().join("data");
            let disk = tmp.path().join("disk2");
            let (inside, apart) = (Dirs::new(&data), Dirs::with_wal(&data, Some(&disk)));
            let recs = log_with_entries(&inside);
            let segs = segment_names(&inside.wal).unwrap();
            let inc = place::read_marker(&inside.wal).unwrap().unwrap();
            // The steps done by hand, up to where the move was cut short.
            copy(&inside.wal, &disk, inc).unwrap();
            match step {
                1 => {
                    // Mid-copy: a segment cut short, and one left from an earlier try that
                    // the WAL has purged since. The node still starts where its WAL was,
                    // not on the copy.
                    fs::write(disk.join(&segs[1]), b"torn").unwrap();
                    fs::write(disk.join("00000000000000000000.wal"), b"old").unwrap();
                    drop(open(&inside).unwrap());
                    assert!(open(&apart).is_err());
                }
                _ => {
                    fs::remove_file(inside.wal.join(MARKER)).unwrap();
                    // Neither directory is the WAL now: a node starts on neither, and
                    // where the WAL was it says what to do.
                    let err = open(&inside).err().unwrap().to_string();
                    assert!(
                        err.contains("cut short") && err.contains("run it again"),
                        "{err}"
                    );
                    if step == 2 {
                        assert!(open(&apart).is_err());
                        // The old volume not mounted now: the copy cannot be checked, and
                        // the move will not finish on it.
                        let held = tmp.path().join("held");
                        fs::rename(&inside.wal, &held).unwrap();
                        let err = move_wal(&inside, &disk).unwrap_err().to_string();
                        assert!(err.contains("mounted"), "{err}");
                        fs::rename(&held, &inside.wal).unwrap();
                        // A copy that reads back different, at the same length (a device
                        // fault since it was made), is not promoted either.
                        let last = disk.join(segs.last().unwrap());
                        let good = fs::read(&last).unwrap();
                        let mut bad = good.clone();
                        *bad.last_mut().unwrap() ^= 1;
                        fs::write(&last, &bad).unwrap();
                        let err = move_wal(&inside, &disk).unwrap_err().to_string();
                        assert!(err.contains("does not match"), "{err}");
                        assert_eq!(state(&disk).0, None);
                        fs::write(&last, &good).unwrap();
                    } else {
                        place::write_marker(&disk, inc).unwrap();
                    }
                }
            }
            move_wal(&inside, &disk).unwrap();
            assert_eq!(state(&disk), (Some(inc), None, segs.clone()), "step {step}");
            assert_eq!(state(&inside.wal), (None, None, vec![]), "step {step}");
            assert_eq!(records(&disk), recs, "step {step}");
            drop(open(&apart).unwrap());
        }
    }

    #[test]
    fn segments_are_compared_by_name_and_by_every_byte() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        let name = "00000000000000000001.wal";
        // Past one read chunk, so a difference in the second one counts.
        let body: Vec<u8> = (0..(1usize << 20) + 7).map(|i| i as u8).collect();
        fs::write(a.join(name), &body).unwrap();
        fs::write(b.join(name), &body).unwrap();
        assert!(same_segments(&a, &b).unwrap());
        let mut other = body.clone();
        other[(1 << 20) + 3] ^= 0x80;
        fs::write(b.join(name), &other).unwrap();
        assert!(!same_segments(&a, &b).unwrap());
        fs::write(b.join(name), &body[..body.len() - 1]).unwrap();
        assert!(!same_segments(&a, &b).unwrap());
        fs::write(b.join(name), &body).unwrap();
        fs::write(b.join("00000000000000000002.wal"), b"").unwrap();
        assert!(!same_segments(&a, &b).unwrap());
    }

    #[test]
    fn a_setting_changed_before_the_move_is_no_obstacle() {
        // storage.wal_dir set first (a ConfigMap changed, then the node stopped), the WAL
        // still in data/wal: the move takes it from there, and a rerun finds it done.
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let disk = tmp.path().join("disk2");
        let recs = log_with_entries(&Dirs::new(&data));
        let configured = Dirs::with_wal(&data, Some(&disk));
        let moved = move_wal(&configured, &disk).unwrap();
        assert!(moved.segments > 1, "{moved:?}");
        assert_eq!(records(&disk), recs);
        assert_eq!(move_wal(&configured, &disk).unwrap().segments, 0);
        drop(open(&configured).unwrap());
        // Back, with the setting already unset: where the WAL is now must be named.
        let err = move_wal(&Dirs::new(&data), &data.join("wal"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--wal-dir"), "{err}");
        move_wal(&configured, &data.join("wal")).unwrap();
        assert_eq!(records(&data.join("wal")), recs);
    }

    #[test]
    fn a_move_refuses_what_it_must_not_touch() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let inside = Dirs::new(&data);
        let recs = log_with_entries(&inside);
        let refuse = |to: &Path, says: &str| {
            let err = move_wal(&inside, to).unwrap_err().to_string();
            assert!(err.contains(says), "{to:?}: {err}");
            assert!(place::read_marker(&inside.wal).unwrap().is_some(), "{to:?}");
        };
        refuse(&inside.wal, "already");
        refuse(&data.join("./wal/"), "already");
        refuse(&data.join("snapshots"), "inside the data directory");
        refuse(&data, "is the data directory");
        let foreign = tmp.path().join("foreign");
        place::write_marker(&foreign, 0x1234).unwrap();
        refuse(&foreign, "another log");
        let copied = tmp.path().join("copied");
        let inc = place::read_marker(&inside.wal).unwrap().unwrap();
        place::write_marker(&copied, inc).unwrap();
        refuse(&copied, "both");
        let unknown = tmp.path().join("unknown");
        fs::create_dir_all(&unknown).unwrap();
        fs::write(unknown.join("00000000000000000001.wal"), b"x").unwrap();
        refuse(&unknown, "unknown log");
        // A running node holds log.redb.
        let running = open(&inside).unwrap();
        refuse(&tmp.path().join("free"), "in use by a running node");
        drop(running);
        move_wal(&inside, &tmp.path().join("free")).unwrap();
        assert_eq!(records(&tmp.path().join("free")), recs);
        let err = move_wal(
            &Dirs::new(&tmp.path().join("nowhere")),
            &tmp.path().join("x"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a node's data directory"), "{err}");
    }
}
