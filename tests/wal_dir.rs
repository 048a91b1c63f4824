//! `storage.wal_dir`: the Raft log's segments in a directory of their own, outside the data
//! directory. The log survives restarts there; a node refuses to start on a WAL that is
//! missing (an unmounted volume shows an empty directory) or is another log's, and starts
//! again once its own is back; a WAL still in the data directory must be moved before the
//! setting names another place; `dump` and `restore` follow the setting.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{run_bin, Cluster, FAST_RAFT};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn segments(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
            .count()
    })
}

fn ids(list: &[Value]) -> BTreeSet<String> {
    list.iter()
        .map(|r| r["cookie"].as_str().unwrap().to_owned())
        .collect()
}

/// Create `n` records through `via`, in turn.
async fn create_all(c: &Cluster, via: &[usize], prefix: &str, n: usize) -> BTreeSet<String> {
    let mut made = BTreeSet::new();
    for i in 0..n {
        let id = format!("{prefix}{i}");
        let r = c
            .create(via[i % via.len()], json!({"cookie": id, "user_id": 1}))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        made.insert(id);
    }
    made
}

/// Start node `i`, expect it to exit by itself with an error naming `what`.
async fn refuses_to_start(c: &mut Cluster, i: usize, what: &str) {
    c.spawn(i);
    let status = c
        .wait_exit(i, WAIT)
        .await
        .unwrap_or_else(|| panic!("node{} started on a WAL it must refuse", i + 1));
    assert!(!status.success(), "{status}");
    let log = c.log(i);
    assert!(
        log.contains(what),
        "node{} log lacks {what:?}:\n{log}",
        i + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_apart_keeps_the_log_and_a_missing_or_foreign_one_stops_the_node() {
    let wals = tempfile::TempDir::new().unwrap();
    let wal_of = |i: usize| wals.path().join(format!("wal{}", i + 1));
    let mut c = Cluster::configure_with(3, FAST_RAFT, |i, _| {
        format!("[storage]\nwal_dir = \"{}\"\n", wal_of(i).display())
    });
    for i in 0..3 {
        c.spawn(i);
    }
    c.wait_ready_all(WAIT).await;
    let mut acked = create_all(&c, &[0, 1, 2], "a", 30).await;
    for i in 0..3 {
        assert!(
            segments(&wal_of(i)) > 0,
            "node{}'s WAL is not where configured",
            i + 1
        );
        assert!(wal_of(i).join("incarnation").is_file(), "no marker");
        assert!(
            !c.data_dir(i).join("wal").exists(),
            "node{} made a WAL in its data directory too",
            i + 1
        );
    }
    // Every node killed at once: whatever was acknowledged is in the WALs apart.
    c.kill_and_restart_all(WAIT).await;
    assert_eq!(ids(&c.list(0, "linearizable").await), acked);

    let leader = c.wait_leader(WAIT).await;
    let f = (leader + 1) % 3;
    c.stop(f);
    // The WAL's volume not mounted: an empty directory where the WAL was.
    let away = wals.path().join("away");
    std::fs::rename(wal_of(f), &away).unwrap();
    std::fs::create_dir(wal_of(f)).unwrap();
    refuses_to_start(&mut c, f, "holds no WAL").await;
    assert!(c.log(f).contains("mounted"), "{}", c.log(f));
    // Another log's WAL in its place.
    std::fs::write(wal_of(f).join("incarnation"), "00000000000000ff\n").unwrap();
    refuses_to_start(&mut c, f, "belongs to another log").await;
    // The others go on meanwhile.
    acked.extend(create_all(&c, &[leader], "b", 10).await);
    // Its own WAL back: it starts, with its log, and catches up.
    std::fs::remove_dir_all(wal_of(f)).unwrap();
    std::fs::rename(&away, wal_of(f)).unwrap();
    c.spawn(f);
    c.wait_up(f, WAIT).await;
    c.wait_local_list(f, "every acknowledged record", WAIT, |list| {
        ids(list) == acked
    })
    .await;
    assert!(c.panics().is_empty(), "{:?}", c.panics());
}

/// The procedure README.md gives: stop the node, move `wal/`'s files, set `storage.wal_dir`.
/// Setting it without moving them is refused, with what to do. A dump finds the WAL where
/// the config says, and a restore will not write beside a WAL already there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_the_wal_out_of_the_data_directory() {
    let mut c = Cluster::start(1, FAST_RAFT).await;
    let acked = create_all(&c, &[0], "m", 20).await;
    c.stop(0);
    let inside = c.data_dir(0).join("wal");
    assert!(segments(&inside) > 0);
    let apart: PathBuf = c.dir().join("fast-disk").join("wal");
    let config = c.nodes[0].config.clone();
    let text = std::fs::read_to_string(&config).unwrap();
    // FAST_RAFT ends the file with the [raft] table: [storage] goes after it.
    std::fs::write(
        &config,
        format!("{text}\n[storage]\nwal_dir = \"{}\"\n", apart.display()),
    )
    .unwrap();
    refuses_to_start(&mut c, 0, "move the files").await;
    assert_eq!(segments(&apart), 0, "a refused start wrote nothing there");

    std::fs::create_dir_all(&apart).unwrap();
    for e in std::fs::read_dir(&inside).unwrap() {
        let e = e.unwrap();
        std::fs::rename(e.path(), apart.join(e.file_name())).unwrap();
    }
    std::fs::remove_dir(&inside).unwrap();
    c.spawn(0);
    c.wait_ready_all(WAIT).await;
    assert_eq!(ids(&c.list(0, "linearizable").await), acked);
    assert!(
        !inside.exists(),
        "the node made a WAL in its data directory again"
    );
    c.stop(0);

    // A dump by the config reads the WAL apart (a dump of the data directory alone would
    // find a log whose WAL is missing, and say so).
    let cfg = config.display().to_string();
    let file = c.dir().join("moved.backup").display().to_string();
    let dir = c.data_dir(0).display().to_string();
    let (code, out, err) = run_bin(&["dump", "--data-dir", &dir, "--to", &file]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("holds no WAL"), "{err}");
    let (code, out, err) = run_bin(&["dump", "--config", &cfg, "--to", &file]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!(": {} records", acked.len())), "{out}");

    // A restore whose config names a WAL directory in use is refused before it writes.
    let fresh = c.dir().join("restored");
    let (code, out, err) = run_bin(&[
        "restore",
        "--from",
        &file,
        "--config",
        &cfg,
        "--data-dir",
        &fresh.display().to_string(),
    ]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("holds a WAL already"), "{err}");
    assert!(
        !fresh.exists(),
        "a refused restore made {}",
        fresh.display()
    );
}

/// `cookie-crud move-wal` on a follower of a running cluster: refused while the node runs;
/// once stopped, its WAL moves out, the node refuses its old setting and starts on the new
/// one with every record, those written while it was away included; and the WAL moves back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_wal_takes_a_stopped_followers_wal_out_and_back() {
    let mut c = Cluster::start(3, FAST_RAFT).await;
    let leader = c.wait_leader(WAIT).await;
    let f = (leader + 1) % 3;
    let mut acked = create_all(&c, &[0, 1, 2], "a", 20).await;
    let config = c.nodes[f].config.clone();
    let (cfg, original) = (
        config.display().to_string(),
        std::fs::read_to_string(&config).unwrap(),
    );
    let inside = c.data_dir(f).join("wal");
    let apart: PathBuf = c.dir().join("fast-disk").join("wal");
    let to = apart.display().to_string();

    let (code, out, err) = run_bin(&["move-wal", "--config", &cfg, "--to", &to]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("in use by a running node"), "{err}");
    assert!(!apart.exists(), "a refused move wrote {}", apart.display());

    c.stop(f);
    let (code, out, err) = run_bin(&["move-wal", "--config", &cfg, "--to", &to]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("set storage.wal_dir = {to:?}")),
        "{out}"
    );
    assert_eq!(segments(&inside), 0, "the old segments are gone");
    assert!(segments(&apart) > 0);
    // Its config still names the old place: it holds no WAL now.
    refuses_to_start(&mut c, f, "holds no WAL").await;
    acked.extend(create_all(&c, &[leader], "b", 20).await);
    // FAST_RAFT ends the file with the [raft] table: [storage] goes after it.
    std::fs::write(
        &config,
        format!("{original}\n[storage]\nwal_dir = {to:?}\n"),
    )
    .unwrap();
    c.spawn(f);
    c.wait_caught_up(f, WAIT).await;
    assert_eq!(ids(&c.list(f, "local").await), acked);

    // And back into its data directory.
    c.stop(f);
    let back = inside.display().to_string();
    let (code, out, err) = run_bin(&["move-wal", "--config", &cfg, "--to", &back]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("leave storage.wal_dir unset"), "{out}");
    assert_eq!(segments(&apart), 0);
    std::fs::write(&config, &original).unwrap();
    acked.extend(create_all(&c, &[leader], "c", 20).await);
    c.spawn(f);
    c.wait_caught_up(f, WAIT).await;
    assert_eq!(ids(&c.list(f, "local").await), acked);
    assert_eq!(c.panics(), vec![], "{}", c.logs());
}
