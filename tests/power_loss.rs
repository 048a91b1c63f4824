//! Power cuts: nodes whose unsynced writes are lost, not just killed.
//!
//! `kill -9` leaves everything a process wrote in the kernel's page cache, so the other
//! crash tests cannot tell a store that fsyncs what it acknowledges from one that does not.
//! Here each node's data directory is a lossy FUSE filesystem (`common/lossy_fs.rs`)
//! that keeps written data in memory until the file is fsynced, and new, renamed or removed
//! names until their directory is; a power cut is `kill -9` followed by throwing that memory
//! away. The write path leans on fsyncs being where they are: the WAL's group fsync before
//! an append counts, the state machine's durable commit only every so often (its
//! write-behind layer), the committed index without an fsync of its own, snapshots and
//! installs renamed into place, WAL segments started and purged. This test checks that
//! acknowledged writes (creates, and updates of a register per writer) survive cuts of the
//! whole cluster, of the leader, and of a follower.
//!
//! It needs root and `/dev/fuse` (CI has both); elsewhere it prints why and passes, unless
//! `COOKIE_CRUD_REQUIRE_FUSE` is set.

mod common;
#[path = "common/lossy_fs.rs"]
mod lossy_fs;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, FAST_RAFT};
use lossy_fs::Writeback;
use serde_json::{json, Value};
use tempfile::TempDir;

/// Whether this machine can run the tests: without FUSE they say so and pass, unless
/// `COOKIE_CRUD_REQUIRE_FUSE` is set.
fn can_mount() -> bool {
    match lossy_fs::available() {
        Ok(()) => true,
        Err(why) if std::env::var_os("COOKIE_CRUD_REQUIRE_FUSE").is_some() => {
            panic!("power-cut tests need FUSE as root: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: power-cut tests need FUSE as root: {why}");
            false
        }
    }
}

/// A lossy filesystem of its own for a test of the filesystem itself: its backing
/// directory, where it is mounted, and the mount (syncs take no time).
struct Scratch {
    backing: TempDir,
    mnt: TempDir,
    m: lossy_fs::Mounted,
}

impl Scratch {
    /// `None` where this machine cannot mount one (see [`can_mount`]).
    fn mount() -> Option<Scratch> {
        if !can_mount() {
            return None;
        }
        let backing = TempDir::new().unwrap();
        let mnt = TempDir::new().unwrap();
        let m = lossy_fs::mount(backing.path(), mnt.path(), Duration::ZERO).unwrap();
        Some(Scratch { backing, mnt, m })
    }
}

/// Make the entries of directory `dir` durable.
fn sync_dir(dir: &std::path::Path) {
    std::fs::File::open(dir).unwrap().sync_all().unwrap();
}

/// Write `bytes` to a new file `path` and sync its data (not its name).
fn write_synced(path: &std::path::Path, bytes: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

/// The filesystem itself: file data survives a cut once the file was synced, names once
/// their directory was; nothing else does.
#[test]
fn the_lossy_filesystem_loses_exactly_what_was_not_synced() {
    let Some(Scratch { backing, mnt, m }) = Scratch::mount() else {
        return;
    };
    let at = |name: &str| mnt.path().join(name);

    // Synced, then extended without a sync.
    let mut a = std::fs::File::create(at("a")).unwrap();
    a.write_all(b"synced").unwrap();
    a.sync_data().unwrap();
    a.write_all(b" and not").unwrap();
    // Read back before the cut: unsynced data is visible to the processes.
    assert_eq!(std::fs::read(at("a")).unwrap(), b"synced and not");
    // Never synced.
    std::fs::write(at("b"), b"never synced").unwrap();
    // Renamed into place without a sync of its data: the name survives, the data does not.
    std::fs::write(at("c.tmp"), b"renamed, not synced").unwrap();
    std::fs::rename(at("c.tmp"), at("c")).unwrap();
    // Synced, then cut short without a sync: the cut brings the tail back.
    let mut d = std::fs::File::create(at("d")).unwrap();
    d.write_all(&[7u8; 10_000]).unwrap();
    d.sync_all().unwrap();
    d.set_len(3).unwrap();
    assert_eq!(std::fs::metadata(at("d")).unwrap().len(), 3);
    // Synced in a directory made on the filesystem.
    std::fs::create_dir(at("dir")).unwrap();
    write_synced(&at("dir/e"), b"in a directory");
    drop((a, d));
    // Every name so far made durable.
    sync_dir(&at("dir"));
    sync_dir(mnt.path());

    // Names changed after the directory's last sync, data synced each time.
    write_synced(&at("new"), b"synced, its name not"); // created
    std::fs::remove_file(at("a")).unwrap(); // removed
    write_synced(&at("d.tmp"), b"replacement"); // renamed over a durable file
    std::fs::rename(at("d.tmp"), at("d")).unwrap();
    std::fs::rename(at("b"), at("b2")).unwrap(); // moved
    std::fs::create_dir(at("dir2")).unwrap(); // a directory synced, its own name not
    write_synced(&at("dir2/f"), b"in a directory without a name");
    sync_dir(&at("dir2"));
    assert_eq!(std::fs::read(at("d")).unwrap(), b"replacement");
    assert!(!at("a").exists() && !at("b").exists());

    let lost = m.power.cut(Writeback::None);
    assert!(lost.pages >= 2, "{lost}, {:?}", m.power.counts());
    // The root's entries undone: new, b2, dir2 and the new d went; a, b and the old d came
    // back.
    assert_eq!(lost.names, 7, "{lost}");
    // With the power off nothing changes; back on, what was synced is there.
    assert!(std::fs::write(at("a"), b"while off").is_err());
    m.power.restore();

    assert_eq!(std::fs::read(at("a")).unwrap(), b"synced");
    assert_eq!(std::fs::read(at("b")).unwrap(), b"");
    assert_eq!(std::fs::read(at("c")).unwrap(), b"");
    assert_eq!(std::fs::read(at("d")).unwrap(), vec![7u8; 10_000]);
    assert_eq!(std::fs::read(at("dir/e")).unwrap(), b"in a directory");
    for gone in ["c.tmp", "new", "d.tmp", "b2", "dir2"] {
        assert!(!at(gone).exists(), "{gone} survived the cut");
    }
    let mut names: Vec<_> = std::fs::read_dir(mnt.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c", "d", "dir"]);

    // Writes at an offset past the end, and reads across pages, after a cut.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(at("d"))
        .unwrap();
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(9_000)).unwrap();
    f.write_all(&[9u8; 5_000]).unwrap();
    f.sync_data().unwrap();
    let mut back = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut back).unwrap();
    let mut want = vec![7u8; 9_000];
    want.extend_from_slice(&[9u8; 5_000]);
    assert_eq!(back, want);
    drop(f);

    // A rename made durable by its directory's sync replaces the old file for good; the
    // replaced file's backing data is freed once nothing can bring it back.
    write_synced(&at("d.tmp"), b"replaced for good");
    std::fs::rename(at("d.tmp"), at("d")).unwrap();
    std::fs::remove_dir_all(at("dir")).unwrap();
    sync_dir(mnt.path());
    m.power.cut(Writeback::None);
    m.power.restore();
    assert_eq!(std::fs::read(at("d")).unwrap(), b"replaced for good");
    assert!(!at("dir").exists() && !at("d.tmp").exists());
    // What is left in the backing directory: a, b, c, d.
    assert_eq!(std::fs::read_dir(backing.path()).unwrap().count(), 4);
}

/// Each fsync takes this long, like a cloud volume's; this machine's disk syncs in a
/// fraction of it, which would leave a cut almost no time to land inside one.
const SYNC_TIME: Duration = Duration::from_millis(2);

/// What the writers share: a stop flag, the creates acknowledged (id -> the value
/// written), each writer's register (the last value acknowledged, the last attempted), and
/// a count of requests that failed.
#[derive(Clone, Default)]
struct Writes {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<HashMap<String, u64>>>,
    registers: Arc<Mutex<HashMap<String, (u64, u64)>>>,
    failed: Arc<AtomicUsize>,
}

impl Writes {
    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn failed(&self) -> usize {
        self.failed.load(Ordering::Relaxed)
    }
}

/// Writeback at a cut: the unsynced pages it keeps reach the disk, the others do not, and a
/// page kept past the durable end leaves zeros before it.
#[test]
fn the_lossy_filesystem_writes_back_what_a_cut_keeps() {
    let Some(scratch) = Scratch::mount() else {
        return;
    };
    let (mnt, m) = (&scratch.mnt, &scratch.m);
    let at = |name: &str| mnt.path().join(name);
    const PAGE: usize = 4096;
    // One synced page of 1s, then three unsynced pages of 2s over and after it.
    let mut a = std::fs::File::create(at("a")).unwrap();
    a.write_all(&[1u8; PAGE]).unwrap();
    a.sync_all().unwrap();
    drop(a);
    sync_dir(mnt.path());
    {
        use std::os::unix::fs::FileExt;
        let a = std::fs::OpenOptions::new()
            .write(true)
            .open(at("a"))
            .unwrap();
        a.write_all_at(&[2u8; 3 * PAGE], 0).unwrap();
    }
    let lost = m.power.cut(Writeback::AllButFirst);
    assert_eq!((lost.pages, lost.written_back), (3, 2), "{lost}");
    m.power.restore();
    let back = std::fs::read(at("a")).unwrap();
    assert_eq!(back.len(), 3 * PAGE);
    assert_eq!(
        &back[..PAGE],
        &[1u8; PAGE][..],
        "the first page was not written back"
    );
    assert!(back[PAGE..].iter().all(|&b| b == 2), "the later pages were");

    // Only the last page kept: a hole of zeros between the durable end and it.
    let b = std::fs::File::create(at("b")).unwrap();
    b.sync_all().unwrap();
    drop(b);
    sync_dir(mnt.path());
    std::fs::write(at("b"), [3u8; 2 * PAGE + 10]).unwrap();
    // A seed whose choice for b's three pages (the only unsynced ones) keeps the last alone.
    let seed = (1..)
        .find(|&seed| {
            let mut state = seed;
            let keeps: Vec<bool> = (0..3)
                .map(|p| Writeback::Random(seed).keeps(p, 0, &mut state))
                .collect();
            keeps == [false, false, true]
        })
        .unwrap();
    let lost = m.power.cut(Writeback::Random(seed));
    assert_eq!((lost.pages, lost.written_back), (3, 1), "{lost}");
    m.power.restore();
    let back = std::fs::read(at("b")).unwrap();
    assert_eq!(back.len(), 2 * PAGE + 10);
    assert!(back[..2 * PAGE].iter().all(|&b| b == 0));
    assert!(back[2 * PAGE..].iter().all(|&b| b == 3));
}

/// The filesystem full: growth fails with ENOSPC, everything else goes on, and statfs says
/// nothing is free; with room made, growth works again.
#[test]
fn the_lossy_filesystem_when_full_refuses_only_growth() {
    let Some(scratch) = Scratch::mount() else {
        return;
    };
    let (mnt, m) = (&scratch.mnt, &scratch.m);
    let at = |name: &str| mnt.path().join(name);
    let enospc = |r: std::io::Result<()>| r.unwrap_err().raw_os_error() == Some(libc::ENOSPC);

    let mut a = std::fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(at("a"))
        .unwrap();
    a.write_all(b"0123456789").unwrap();
    assert!(cookie_raft::durable::space(mnt.path()).unwrap().free > 0);
    m.power.fill();
    use std::os::unix::fs::FileExt;
    assert!(enospc(a.write_all_at(b"grow", 8)), "a write past the end");
    assert!(enospc(a.set_len(4096)), "a longer file");
    a.write_all_at(b"ab", 2).unwrap(); // bytes the file has
    a.sync_all().unwrap();
    a.set_len(5).unwrap(); // shorter is fine
    std::fs::File::create(at("b")).unwrap(); // an empty file: no room needed
    std::fs::rename(at("b"), at("c")).unwrap();
    assert_eq!(cookie_raft::durable::space(mnt.path()).unwrap().free, 0);
    assert_eq!(std::fs::read(at("a")).unwrap(), b"01ab4");

    m.power.make_room();
    a.write_all_at(b"56789", 5).unwrap();
    assert_eq!(std::fs::read(at("a")).unwrap(), b"01ab456789");
    assert!(cookie_raft::durable::space(mnt.path()).unwrap().free > 0);
}

/// Writes through every node until told to stop, in turn a create of a new record and an
/// update of the writer's own register (`reg-<w>`, created beforehand); failures (nodes
/// down) are retried with new ids and values after a short pause.
fn start_writers(
    cluster: &Cluster,
    writers: usize,
    shared: &Writes,
) -> Vec<tokio::task::JoinHandle<()>> {
    let urls: Vec<String> = (0..cluster.nodes.len()).map(|i| cluster.url(i)).collect();
    (0..writers)
        .map(|w| {
            let client = cluster.client.clone();
            let url = urls[w % urls.len()].clone();
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                let register = format!("reg-{w}");
                // Some records span pages, so an append's unsynced pages are several and a
                // cut that writes some of them back can keep a later one without the first.
                let pad = if w % 2 == 0 { 6000 } else { 150 };
                while !shared.stop.load(Ordering::Relaxed) {
                    n += 1;
                    let update = n.is_multiple_of(2);
                    let id = if update {
                        let mut regs = shared.registers.lock().unwrap();
                        regs.entry(register.clone()).or_default().1 = n;
                        register.clone()
                    } else {
                        format!("pl-{w}-{n}")
                    };
                    let body =
                        json!({"cookie": id, "user_id": w + 1, "v": n, "pad": "x".repeat(pad)});
                    let req = if update {
                        client.put(format!("{url}/cookies/{id}"))
                    } else {
                        client.post(format!("{url}/cookies"))
                    };
                    let res = req.timeout(Duration::from_secs(5)).json(&body).send().await;
                    match res {
                        Ok(r) if r.status().is_success() && update => {
                            shared.registers.lock().unwrap().entry(id).or_default().0 = n;
                        }
                        Ok(r) if r.status().is_success() => {
                            shared.acked.lock().unwrap().insert(id, n);
                        }
                        _ => {
                            shared.failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            })
        })
        .collect()
}

/// A first start killed after it made its files and directories and before it synced the
/// data directory leaves names that a power cut would take. The next start finds them
/// there and must make them durable too: otherwise the next cut takes the log, votes and
/// state with it, and the node comes back blank after acknowledging writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_a_crashed_start_left_unsynced_are_made_durable_by_the_next_start() {
    if !can_mount() {
        return;
    }
    let backing = TempDir::new().unwrap();
    let mut cluster = Cluster::configure(3, FAST_RAFT);
    let (mounts, power) = lossy_fs::mount_all(&cluster, backing.path(), SYNC_TIME);
    // What the crashed start left: empty databases (redb initializes an empty file) and
    // directories, named in a data directory never synced since.
    for i in 0..3 {
        let dir = cluster.data_dir(i);
        for sub in ["wal", "snapshots"] {
            std::fs::create_dir(dir.join(sub)).unwrap();
        }
        for file in ["log.redb", "sm.redb"] {
            std::fs::File::create(dir.join(file)).unwrap();
        }
    }
    for i in 0..3 {
        cluster.spawn(i);
    }
    cluster.wait_ready_all(Duration::from_secs(60)).await;
    let mut acked = Vec::new();
    for n in 0..30 {
        let id = format!("early-{n}");
        let r = cluster
            .create(n % 3, json!({"cookie": id, "user_id": n + 1}))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        acked.push(id);
    }
    let lost = lossy_fs::cut_power(&mut cluster, &power, (&[0, 1, 2], Writeback::None));
    for (i, p) in power.iter().enumerate() {
        p.restore();
        cluster.spawn(i);
    }
    cluster.wait_ready_all(Duration::from_secs(60)).await;
    let leader = cluster.wait_leader(Duration::from_secs(30)).await;
    let ids: Vec<String> = cluster
        .list(leader, "linearizable")
        .await
        .iter()
        .filter_map(|c| Some(c["cookie"].as_str()?.to_string()))
        .collect();
    let missing: Vec<_> = acked.iter().filter(|id| !ids.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged creates lost by a power cut ({lost}), e.g. {:?}\n{}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)],
        cluster.logs()
    );
    for i in 0..3 {
        cluster.kill(i);
    }
    drop(mounts);
}

#[derive(Debug, Clone, Copy)]
enum Cut {
    All,
    Leader,
    Follower,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_power_cuts_of_the_whole_cluster_the_leader_and_a_follower() {
    if !can_mount() {
        return;
    }
    // Snapshots every few hundred entries, so cuts also land around snapshot builds, log
    // purges and installs; WAL segments of 64 KiB (the least allowed), so around segment
    // rolls (a new file and a sync of its directory) and purges of whole segments too.
    let extra = format!(
        "{FAST_RAFT}snapshot_logs = 400\nkeep_logs_after_snapshot = 50\n\
         [storage]\nwal_segment_bytes = 65536\n"
    );
    let backing = TempDir::new().unwrap();
    let mut cluster = Cluster::configure(3, &extra);
    let (mounts, power) = lossy_fs::mount_all(&cluster, backing.path(), SYNC_TIME);
    for i in 0..3 {
        cluster.spawn(i);
    }
    cluster.wait_ready_all(Duration::from_secs(60)).await;

    const WRITERS: usize = 12;
    for w in 0..WRITERS {
        let r = cluster
            .create(
                w % 3,
                json!({"cookie": format!("reg-{w}"), "user_id": w + 1, "v": 0}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let writes = Writes::default();
    let writers = start_writers(&cluster, WRITERS, &writes);

    // Each cut also chooses which unsynced pages reached the disk before it: none, all but
    // each file's first (an append's later pages without its first), or a random half.
    use Cut::*;
    use Writeback::{AllButFirst, Random};
    let plan = [
        (All, Writeback::None),
        (Leader, AllButFirst),
        (All, AllButFirst),
        (Follower, Random(1)),
        (All, Random(2)),
        (Leader, Writeback::None),
        (All, AllButFirst),
        (Follower, AllButFirst),
        (All, Random(3)),
    ];
    let mut lost_at_cuts = Vec::new();
    for (round, (cut, writeback)) in plan.iter().enumerate() {
        // Cut while writes flow: wait for a few hundred more acknowledgements.
        let before = writes.acked();
        let deadline = Instant::now() + Duration::from_secs(60);
        while writes.acked() < before + 300 {
            assert!(
                Instant::now() < deadline,
                "round {round}: writes stopped being acknowledged ({} so far, {} failed)\n{}",
                writes.acked(),
                writes.failed(),
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let leader = cluster.wait_leader(Duration::from_secs(30)).await;
        let victims: Vec<usize> = match cut {
            Cut::All => (0..3).collect(),
            Cut::Leader => vec![leader],
            Cut::Follower => vec![(leader + 1) % 3],
        };
        let lost = lossy_fs::cut_power(&mut cluster, &power, (&victims, *writeback));
        lost_at_cuts.push((*cut, lost));
        for &i in &victims {
            power[i].restore();
            cluster.spawn(i);
        }
        cluster.wait_ready_all(Duration::from_secs(60)).await;
    }
    writes.stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }

    // Every acknowledged create is there, with what was written, on every node.
    let acked = writes.acked.lock().unwrap().clone();
    let leader = cluster.wait_leader(Duration::from_secs(30)).await;
    let present = |list: Vec<Value>| -> HashMap<String, u64> {
        list.into_iter()
            .filter_map(|c| Some((c["cookie"].as_str()?.to_string(), c["v"].as_u64()?)))
            .collect()
    };
    let on_leader = present(cluster.list(leader, "linearizable").await);
    let missing: Vec<_> = acked
        .iter()
        .filter(|(id, v)| on_leader.get(*id) != Some(v))
        .map(|(id, _)| id.clone())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged creates lost or changed after the power cuts ({lost_at_cuts:?}), e.g. {:?}\n{}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)],
        cluster.logs()
    );
    // No register went back past a value acknowledged, nor on to one never attempted.
    let registers = writes.registers.lock().unwrap().clone();
    for (id, (acked, attempted)) in &registers {
        let v = on_leader.get(id).copied();
        assert!(
            v.is_some_and(|v| *acked <= v && v <= *attempted),
            "register {id} holds {v:?} after the power cuts: acknowledged up to {acked}, \
             attempted up to {attempted}\n{}",
            cluster.logs()
        );
    }
    // The replicas converge on the leader's state.
    let what = format!("the leader's {} records", on_leader.len());
    for i in 0..3 {
        cluster
            .wait_local_list(i, &what, Duration::from_secs(30), |list| {
                present(list.to_vec()) == on_leader
            })
            .await;
    }
    let panics = cluster.panics();
    assert!(
        panics.is_empty(),
        "a node panicked after a power cut: {panics:?}\n{}",
        cluster.logs()
    );
    // The cuts must have thrown writes away, or this test proved nothing.
    let total_lost: u64 = lost_at_cuts.iter().map(|(_, l)| l.pages).sum();
    let counts: Vec<_> = mounts.iter().map(|m| m.power.counts()).collect();
    assert!(
        total_lost > 0,
        "no cut lost an unsynced page: {lost_at_cuts:?}; per node {counts:?}"
    );
    // Starts that found a torn write with later records kept (see `Writeback`).
    let torn_with_later: usize = (0..3)
        .map(|i| {
            cluster
                .log(i)
                .matches("and the unsynced records written after it")
                .count()
        })
        .sum();
    eprintln!(
        "power cuts: {} acknowledged creates all present, {} registers at or past their last \
         acknowledged update ({} requests failed meanwhile); {torn_with_later} starts cut a \
         torn write that later records had outlived; lost per cut {lost_at_cuts:?}; per node \
         {counts:?}",
        acked.len(),
        registers.len(),
        writes.failed()
    );
    for i in 0..3 {
        cluster.kill(i);
    }
    drop(mounts);
}
