//! Where the WAL lives, and the check that the WAL found there is this log's.
//!
//! The WAL's segments live in the data directory's `wal/` unless the configuration puts them
//! elsewhere (`storage.wal_dir`), as etcd's `--wal-dir` does: a device of their own, so that
//! the log's fsyncs, which every write waits for, do not queue behind the state machine's
//! flushes. A WAL apart from the rest of the data can go missing on its own: a volume not
//! mounted shows an empty directory, a changed `storage.wal_dir` names another one. A node
//! that opened an empty WAL beside a log that had entries would come up having lost them
//! (acknowledged writes, and the votes Raft's safety counts on), and a node that opened
//! another node's WAL would serve that node's entries as its own.
//!
//! So the WAL directory carries a marker, the file [`MARKER`] holding the incarnation of the
//! log it belongs to (`log.redb`'s, [`crate::identity`]), and `log.redb` records that its
//! WAL was marked. At open, a marker naming another incarnation, or none where the log says
//! it marked one, stops the node with what to check. A log that has marked nothing yet (a
//! new one, a restored one, or one written before markers existed) claims the directory,
//! unless its WAL is plainly still in the data directory's `wal/` while the configuration
//! names another place: then the operator has to move it first.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::wal;

/// The marker's file name in the WAL directory. The WAL reads only its segments' names,
/// so the file sits beside them.
pub const MARKER: &str = "incarnation";

/// Where a node's files live: the data directory (`log.redb`, `sm.redb`, snapshots) and the
/// WAL's directory, the data directory's `wal/` unless configured elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirs {
    pub data: PathBuf,
    pub wal: PathBuf,
    /// Whether `wal` is somewhere other than `data`'s `wal/`: decided once, here, since the
    /// write reserve asks on every write near it.
    apart: bool,
}

impl Dirs {
    /// The WAL in `data`'s `wal/`.
    pub fn new(data: &Path) -> Dirs {
        Dirs::with_wal(data, None)
    }

    /// The WAL in `wal`, or in `data`'s `wal/` when `None`.
    pub fn with_wal(data: &Path, wal: Option<&Path>) -> Dirs {
        let inside = data.join("wal");
        let apart = wal.is_some_and(|w| lexical(w) != lexical(&inside));
        Dirs {
            data: data.to_path_buf(),
            wal: wal.map_or(inside, Path::to_path_buf),
            apart,
        }
    }

    /// Whether the WAL is somewhere other than the data directory's `wal/`, by the paths
    /// as written (`./data/wal` is `data/wal`).
    pub fn wal_apart(&self) -> bool {
        self.apart
    }
}

/// `p` without its `.` components (a trailing slash is none already), for comparing paths
/// as written: neither need exist yet, so they cannot be canonicalized.
pub fn lexical(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// How a WAL directory overlaps a data directory it must stay apart from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// The WAL directory is the data directory.
    Is,
    /// It lies inside the data directory, other than as its `wal/`.
    Inside,
    /// It holds the data directory.
    Holds,
}

impl Overlap {
    pub fn words(self) -> &'static str {
        match self {
            Overlap::Is => "is",
            Overlap::Inside => "is inside",
            Overlap::Holds => "holds",
        }
    }
}

/// How `wal` overlaps the data directory `data`, compared component by component as given
/// (the configuration's check passes them [`lexical`], the start's resolved); `None` where
/// they are apart or `wal` is `data`'s own `wal/`.
pub fn overlap(data: &Path, wal: &Path) -> Option<Overlap> {
    if wal == data {
        Some(Overlap::Is)
    } else if wal.starts_with(data) && wal != data.join("wal") {
        Some(Overlap::Inside)
    } else if data.starts_with(wal) {
        Some(Overlap::Holds)
    } else {
        None
    }
}

/// The incarnation the marker in `wal_dir` names; `None` without a marker (or a directory).
pub fn read_marker(wal_dir: &Path) -> io::Result<Option<u64>> {
    read_named(wal_dir, MARKER)
}

/// Write the marker naming `incarnation` into `wal_dir` (created if missing), durably.
pub fn write_marker(wal_dir: &Path, incarnation: u64) -> io::Result<()> {
    write_named(wal_dir, MARKER, incarnation)
}

/// The incarnation file `name` in `dir` names (the marker, or a move's note); `None` without
/// it (or a directory).
pub(super) fn read_named(dir: &Path, name: &str) -> io::Result<Option<u64>> {
    let path = dir.join(name);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    u64::from_str_radix(text.trim(), 16).map(Some).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: not a WAL marker (a log incarnation in hex): {:?}",
                path.display(),
                text.chars().take(40).collect::<String>()
            ),
        )
    })
}

/// Write file `name` naming `incarnation` into `dir` (created if missing), durably: a
/// temporary file, synced, renamed over `name`, and the directory synced.
pub(super) fn write_named(dir: &Path, name: &str, incarnation: u64) -> io::Result<()> {
    crate::durable::own_dir(dir)?;
    let partial = dir.join(format!("{name}.partial"));
    let mut file = fs::File::create(&partial)?;
    writeln!(file, "{incarnation:016x}")?;
    file.sync_all()?;
    fs::rename(&partial, dir.join(name))?;
    crate::durable::sync_dir(dir)
}

/// The WAL segments' file names in `dir`, in order (none when it does not exist).
pub(crate) fn segment_names(dir: &Path) -> io::Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if wal::is_segment_name(&name) && e.file_type()?.is_file() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Whether `dir` holds a WAL segment (a missing directory holds none).
pub fn holds_segments(dir: &Path) -> io::Result<bool> {
    Ok(!segment_names(dir)?.is_empty())
}

/// Whether `wal_dir` holds a WAL, marked or not: what a restore must not write beside.
pub fn in_use(wal_dir: &Path) -> io::Result<bool> {
    Ok(read_marker(wal_dir)?.is_some() || holds_segments(wal_dir)?)
}

/// Decide whether the log of incarnation `incarnation`, which has (`marked`) or has not yet
/// marked a WAL directory, may open the WAL in `dirs.wal`: `Ok(true)` when the directory is
/// to be claimed (its marker written), `Ok(false)` when it is already this log's, `Err` with
/// what to check when it is not this log's WAL.
pub fn check(dirs: &Dirs, incarnation: u64, marked: bool) -> io::Result<bool> {
    let apart = resolved_apart(dirs)?;
    let wal = dirs.wal.display();
    let data = dirs.data.display();
    match read_marker(&dirs.wal)? {
        Some(m) if m == incarnation => Ok(false),
        Some(m) => Err(misplaced(format!(
            "the WAL in {wal} belongs to another log (incarnation {m:016x}), not to the one \
             in {data} ({incarnation:016x}): storage.wal_dir must name this node's own WAL \
             (where the data directory was emptied on purpose, empty the WAL's too)"
        ))),
        // The WAL still in the data directory, where storage.wal_dir now names another
        // place: ours by its marker, or (from before markers) by its segments.
        None if apart && still_inside(dirs, incarnation, marked)? => Err(misplaced(format!(
            "the log's WAL is in {data}/wal, but storage.wal_dir names {wal}: with the \
                 node stopped, move the files of {data}/wal into {wal}, or leave \
                 storage.wal_dir unset"
        ))),
        // Left by a `cookie-crud move-wal` cut short between the marker's leaving and its
        // arrival: the copy is whole elsewhere, and a rerun finishes the move.
        None if marked && holds_segments(&dirs.wal)? => Err(misplaced(format!(
            "{wal} holds WAL segments but no marker, though the log in {data} marked its WAL: \
             a `cookie-crud move-wal` cut short leaves this; run it again to finish the move"
        ))),
        None if marked => Err(misplaced(format!(
            "{wal} holds no WAL, but the log in {data} keeps its WAL there: is the WAL's \
             volume mounted, and is storage.wal_dir what it was when the node last ran? \
             Starting without it would lose the log's entries"
        ))),
        None => Ok(true),
    }
}

/// Whether the WAL is apart from the data directory as the filesystem resolves the two
/// (symlinks followed), not only as written; an error where, resolved, the WAL directory is
/// the data directory, lies inside it (other than as its `wal/`) or holds it. The
/// configuration refuses those by the paths as written, before either need exist; a symlink
/// gets past that, and would put the segments among the data directory's own files, or the
/// data directory in the WAL's. A `wal/` that is a link to the WAL directory is the same
/// place, not apart.
pub(super) fn resolved_apart(dirs: &Dirs) -> io::Result<bool> {
    if !dirs.wal_apart() {
        return Ok(false);
    }
    let (data, wal) = (resolve(&dirs.data)?, resolve(&dirs.wal)?);
    if wal == resolve(&dirs.data.join("wal"))? {
        return Ok(false);
    }
    let Some(how) = overlap(&data, &wal) else {
        return Ok(true);
    };
    Err(misplaced(format!(
        "storage.wal_dir {} resolves to {}, which {} the data directory {} ({}): the WAL \
         must be on a directory of its own, or in the data directory's wal/",
        dirs.wal.display(),
        wal.display(),
        how.words(),
        dirs.data.display(),
        data.display()
    )))
}

/// `p` as the filesystem resolves it: its longest existing ancestor canonicalized (symlinks
/// followed), with the components below it that do not exist yet as written.
pub(super) fn resolve(p: &Path) -> io::Result<PathBuf> {
    let full = std::path::absolute(p)?;
    let mut missing = Vec::new();
    let mut at = full.as_path();
    loop {
        match fs::canonicalize(at) {
            Ok(found) => return Ok(missing.iter().rev().fold(found, |acc, c| acc.join(c))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match (at.parent(), at.file_name()) {
                    (Some(parent), Some(name)) => {
                        missing.push(name.to_owned());
                        at = parent;
                    }
                    // `..` below a missing directory: compare it as written.
                    _ => return Ok(lexical(&full)),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether this log's WAL is in the data directory's `wal/`: there with this log's marker,
/// or, for a log that has marked none, with segments.
fn still_inside(dirs: &Dirs, incarnation: u64, marked: bool) -> io::Result<bool> {
    let inside = dirs.data.join("wal");
    Ok(match read_marker(&inside)? {
        Some(m) => m == incarnation,
        None => !marked && holds_segments(&inside)?,
    })
}

fn misplaced(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(dir: &Path) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("00000000000000000001.wal"), b"").unwrap();
    }

    #[test]
    fn a_new_log_claims_its_wal_directory_and_then_owns_it() {
        let tmp = tempfile::tempdir().unwrap();
        let apart = tmp.path().join("fast-disk");
        for dirs in [
            Dirs::new(&tmp.path().join("a")),
            Dirs::with_wal(&tmp.path().join("b"), Some(&apart)),
        ] {
            assert!(check(&dirs, 7, false).unwrap(), "{dirs:?}");
            write_marker(&dirs.wal, 7).unwrap();
            assert_eq!(read_marker(&dirs.wal).unwrap(), Some(7));
            assert!(!check(&dirs, 7, true).unwrap());
            // A crash between the marker and log.redb's flag: the marker is already ours.
            assert!(!check(&dirs, 7, false).unwrap());
        }
    }

    #[test]
    fn the_data_directorys_own_wal_named_explicitly_is_not_apart() {
        let data = Path::new("./data");
        for same in ["data/wal", "./data/wal", "data/wal/", "./data/./wal"] {
            assert!(
                !Dirs::with_wal(data, Some(Path::new(same))).wal_apart(),
                "{same}"
            );
        }
        assert!(Dirs::with_wal(data, Some(Path::new("/mnt/wal"))).wal_apart());
        assert!(Dirs::with_wal(data, Some(Path::new("data/wal2"))).wal_apart());
    }

    #[test]
    fn another_logs_wal_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = Dirs::with_wal(&tmp.path().join("data"), Some(&tmp.path().join("w")));
        write_marker(&dirs.wal, 0xabc).unwrap();
        for marked in [false, true] {
            let err = check(&dirs, 0xdef, marked).unwrap_err().to_string();
            assert!(err.contains("belongs to another log"), "{err}");
            assert!(err.contains("0000000000000abc"), "{err}");
        }
    }

    #[test]
    fn a_missing_wal_is_refused_once_the_log_has_marked_one() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        // An unmounted volume: the directory is there, empty (or it is not there at all).
        let empty = tmp.path().join("mnt");
        fs::create_dir_all(&empty).unwrap();
        for wal in [
            Some(empty.as_path()),
            Some(&tmp.path().join("nowhere")),
            None,
        ] {
            let dirs = Dirs::with_wal(&data, wal);
            let err = check(&dirs, 5, true).unwrap_err().to_string();
            assert!(err.contains("holds no WAL"), "{err}");
            assert!(err.contains("mounted"), "{err}");
        }
        // storage.wal_dir set where the WAL is still in the data directory: say where it is.
        write_marker(&data.join("wal"), 5).unwrap();
        let err = check(&Dirs::with_wal(&data, Some(&empty)), 5, true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("is in {}/wal", data.display())),
            "{err}"
        );
        assert!(err.contains("move the files"), "{err}");
    }

    #[test]
    fn an_unmarked_wal_still_in_the_data_directory_must_be_moved_before_it_is_apart() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        segment(&data.join("wal"));
        let apart = Dirs::with_wal(&data, Some(&tmp.path().join("w")));
        let err = check(&apart, 9, false).unwrap_err().to_string();
        assert!(err.contains("move the files"), "{err}");
        // Where it is, a log from before markers claims its WAL...
        assert!(check(&Dirs::new(&data), 9, false).unwrap());
        // ... and once moved, it is claimed where it went.
        segment(&apart.wal);
        fs::remove_dir_all(data.join("wal")).unwrap();
        assert!(check(&apart, 9, false).unwrap());
    }

    #[test]
    fn a_wal_dir_that_reaches_into_the_data_directory_through_a_symlink_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        fs::create_dir_all(data.join("snapshots")).unwrap();
        let link = |name: &str, to: &Path| {
            let l = tmp.path().join(name);
            std::os::unix::fs::symlink(to, &l).unwrap();
            l
        };
        let to_data = link("to-data", &data);
        let to_snaps = link("to-snaps", &data.join("snapshots"));
        let to_parent = link("to-parent", tmp.path());
        for (wal, how) in [
            (to_data.clone(), "which is the data directory"),
            (to_snaps, "which is inside the data directory"),
            // Not there yet: the link above it still decides where it would be made.
            (
                to_data.join("segments"),
                "which is inside the data directory",
            ),
            (to_parent, "which holds the data directory"),
        ] {
            let dirs = Dirs::with_wal(&data, Some(&wal));
            assert!(dirs.wal_apart(), "apart as written: {wal:?}");
            let err = check(&dirs, 4, false).unwrap_err().to_string();
            assert!(err.contains(how), "{wal:?}: {err}");
            assert!(!wal.join(MARKER).exists(), "nothing claimed");
        }
        // A directory of its own, reached through a link, is apart.
        fs::create_dir_all(tmp.path().join("disk2")).unwrap();
        let to_disk = link("to-disk2", &tmp.path().join("disk2"));
        assert!(check(&Dirs::with_wal(&data, Some(&to_disk)), 4, false).unwrap());
    }

    #[test]
    fn a_wal_linked_from_the_data_directory_is_where_it_is_named() {
        // The old way to put a WAL on another disk: data/wal a link to it. Naming that
        // directory in storage.wal_dir names the same WAL, not one to move.
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let disk = tmp.path().join("disk2");
        segment(&disk);
        fs::create_dir_all(&data).unwrap();
        std::os::unix::fs::symlink(&disk, data.join("wal")).unwrap();
        assert!(check(&Dirs::with_wal(&data, Some(&disk)), 2, false).unwrap());
    }

    #[test]
    fn a_damaged_marker_is_an_error_not_a_missing_one() {
        let tmp = tempfile::tempdir().unwrap();
        let w = tmp.path().join("w");
        fs::create_dir_all(&w).unwrap();
        fs::write(w.join(MARKER), "not hex\n").unwrap();
        let err = read_marker(&w).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let dirs = Dirs::with_wal(&tmp.path().join("d"), Some(&w));
        let err = check(&dirs, 1, false).unwrap_err().to_string();
        assert!(err.contains("not a WAL marker"), "{err}");
    }

    #[test]
    fn in_use_sees_a_marker_or_a_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let w = tmp.path().join("w");
        assert!(!in_use(&w).unwrap());
        fs::create_dir_all(w.join("lost+found")).unwrap();
        assert!(
            !in_use(&w).unwrap(),
            "a fresh filesystem's lost+found is not a WAL"
        );
        segment(&w);
        assert!(in_use(&w).unwrap());
        let m = tmp.path().join("m");
        write_marker(&m, 3).unwrap();
        assert!(in_use(&m).unwrap());
    }
}
