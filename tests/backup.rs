//! Backup and restore on real processes (issue 15): a backup taken from a 3-node cluster
//! under a write load, restored into a new cluster, holds every record acknowledged before
//! the backup began, and no record that was never written; the restored cluster takes new
//! members and new writes. Corrupt, truncated, foreign and newer files and non-empty data
//! directories are refused by `cookie-crud restore`, each with a clear message.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{free_port, run_bin, Cluster, Spec, FAST_RAFT, TEST_CLUSTER_SECRET};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// Run the binary: (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (i32, String, String) {
    run_bin(args)
}

/// Every write a client attempted (id -> its value), and those acknowledged.
#[derive(Default)]
struct Writes {
    attempted: Mutex<BTreeMap<String, i64>>,
    acked: Mutex<BTreeSet<String>>,
}

async fn writer(c: Arc<Cluster>, k: usize, stop: Arc<AtomicBool>, w: Arc<Writes>) {
    let mut n = 0i64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let id = format!("w{k}-{n}");
        w.attempted.lock().unwrap().insert(id.clone(), n);
        let node = (k + n as usize) % 3;
        let r = c
            .client
            .post(format!("{}/cookies", c.url(node)))
            .header("Idempotency-Key", &id)
            .json(&json!({"cookie": id, "user_id": 1, "n": n}))
            .send()
            .await;
        if r.is_ok_and(|r| r.status() == 201) {
            w.acked.lock().unwrap().insert(id);
        }
    }
}

/// A one-node cluster's config, ready for `restore` and to run (with a secret, so that
/// others can join it).
fn restored_spec(id: u64) -> Spec {
    let (port, peer_port) = (free_port(), free_port());
    Spec {
        id,
        host: "127.0.0.1".into(),
        port,
        peer_port,
        toml: format!(
            "node_id = {id}\nlisten = \"127.0.0.1:{port}\"\npeer_listen = \"127.0.0.1:{peer_port}\"\n\
             data_dir = \"{{data_dir}}\"\ncluster_secret = \"{TEST_CLUSTER_SECRET}\"\n{FAST_RAFT}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_load_restores_into_a_new_cluster_with_exactly_the_acknowledged_records() {
    let c = Arc::new(Cluster::start(3, FAST_RAFT).await);
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(Writes::default());
    let tasks: Vec<_> = (0..4)
        .map(|k| tokio::spawn(writer(c.clone(), k, stop.clone(), writes.clone())))
        .collect();
    // Some history first, then the backup while the writers go on.
    while writes.acked.lock().unwrap().len() < 300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let acked_before = writes.acked.lock().unwrap().clone();
    let file = c.dir().join("cluster.backup");
    let endpoints = format!("{},{}", c.url(1), c.url(2));
    let file_arg = file.display().to_string();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        cli(&["ctl", "--endpoints", &endpoints, "backup", &file_arg])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "ctl backup: {out}{err}");
    let said: Value = serde_json::from_str(out.trim()).unwrap();
    // The writers keep going after the backup; none of that may appear in it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let attempted = writes.attempted.lock().unwrap().clone();
    let total_acked = writes.acked.lock().unwrap().len();

    // Restore it into a brand-new cluster of one, then start it.
    let mut fresh = Cluster::from_configs(vec![restored_spec(1)]);
    let config = fresh.nodes[0].config.display().to_string();
    let (code, out, err) = cli(&[
        "restore",
        "--from",
        &file.display().to_string(),
        "--config",
        &config,
    ]);
    assert_eq!(code, 0, "restore: {out}{err}");
    assert!(
        out.contains(&format!("restored {} records", said["records"])),
        "{out}"
    );
    fresh.spawn(0);
    fresh.wait_ready_all(WAIT).await;

    let restored: BTreeMap<String, Value> = fresh
        .list(0, "linearizable")
        .await
        .into_iter()
        .map(|r| (r["cookie"].as_str().unwrap().to_owned(), r))
        .collect();
    assert_eq!(restored.len() as u64, said["records"].as_u64().unwrap());
    let missing: Vec<_> = acked_before
        .iter()
        .filter(|id| !restored.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged before the backup began, not restored: {missing:?}"
    );
    for (id, rec) in &restored {
        let n = attempted.get(id);
        assert!(n.is_some(), "{id} was restored but never written");
        assert_eq!(
            rec["n"].as_i64(),
            n.copied(),
            "{id} restored with another value"
        );
    }
    assert!(
        restored.len() < total_acked,
        "writes acknowledged after the backup are not in it ({} restored of {total_acked})",
        restored.len()
    );
    println!(
        "backup at index {}: {} records; {} acknowledged before it began, {} in all",
        said["index"],
        restored.len(),
        acked_before.len(),
        total_acked
    );

    // The new cluster is a cluster: it has a new id, takes writes that version after the
    // backup's index, and grows by joining.
    let info = fresh.cluster_info(0).await;
    assert_ne!(info["cluster_id"], c.cluster_info(0).await["cluster_id"]);
    let r = fresh
        .create(0, json!({"cookie": "after-restore", "user_id": 2}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(r.etag() > said["index"].as_u64().unwrap());
    let j = fresh.add_joiner(2, 0, "voter", FAST_RAFT);
    fresh.spawn(j);
    fresh.wait_membership(0, &[1, 2], &[], WAIT).await;
    fresh
        .wait_local(j, "after-restore", WAIT, |r| r.status == 200)
        .await;
    assert_eq!(fresh.list(j, "local").await.len(), restored.len() + 1);
}

/// `cookie-crud restore` on a bad file or into a used directory: a clear message, exit 2,
/// and no data directory made.
fn refused(file: &Path, data: &Path, expect: &str) {
    let (code, out, err) = cli(&[
        "restore",
        "--from",
        &file.display().to_string(),
        "--data-dir",
        &data.display().to_string(),
    ]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
}

#[tokio::test]
async fn corrupt_truncated_foreign_and_newer_backups_and_used_directories_are_refused() {
    let c = Cluster::start(1, FAST_RAFT).await;
    for i in 0..20 {
        let r = c
            .create(0, json!({"cookie": format!("r{i}"), "user_id": 1}))
            .await;
        assert_eq!(r.status, 201);
    }
    let good = c.dir().join("good.backup");
    let (code, out, err) = cli(&[
        "ctl",
        "--endpoints",
        &c.url(0),
        "backup",
        &good.display().to_string(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    // A backup never overwrites a file.
    let (code, _, err) = cli(&[
        "ctl",
        "--endpoints",
        &c.url(0),
        "backup",
        &good.display().to_string(),
    ]);
    assert_eq!(code, 2, "{err}");
    let bytes = std::fs::read(&good).unwrap();
    let dir = c.dir();
    let write = |name: &str, b: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, b).unwrap();
        p
    };
    let data = dir.join("restored");

    let mut flipped = bytes.clone();
    let at = bytes.len() - 40;
    flipped[at] ^= 0x01;
    refused(&write("flipped", &flipped), &data, "corrupt");
    refused(
        &write("cut", &bytes[..bytes.len() - 100]),
        &data,
        "truncated",
    );
    refused(
        &write("foreign", b"{\"cookies\":[]}"),
        &data,
        "not a cookie-crud backup",
    );
    let text = String::from_utf8_lossy(&bytes).replacen("\"format\":2", "\"format\":9", 1);
    refused(&write("newer", text.as_bytes()), &data, "newer");
    assert!(!data.exists(), "a refused restore made no directory");

    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("keep"), b"x").unwrap();
    refused(&good, &data, "not empty");
    assert_eq!(std::fs::read(data.join("keep")).unwrap(), b"x");
}

/// The disaster case: every node stops and two of three data directories are gone for good.
/// The survivor's data, dumped offline, restores into a new cluster with every acknowledged
/// write. A running node's directory is refused, and the survivor's is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_lost_its_quorum_for_good_comes_back_from_one_nodes_data() {
    let mut c = Cluster::start(3, FAST_RAFT).await;
    let mut acked = Vec::new();
    for i in 0..150 {
        let id = format!("d{i}");
        let r = c.create(i % 3, json!({"cookie": id, "user_id": 1})).await;
        assert_eq!(r.status, 201, "{}", r.text);
        acked.push(id);
    }
    let leader = c.wait_leader(WAIT).await;
    // A follower survives: its state machine may lag its log by the last commits.
    let survivor = (leader + 1) % 3;
    let dir = c.data_dir(survivor).display().to_string();
    let file = c.dir().join("survivor.backup").display().to_string();
    let (code, _, err) = cli(&["dump", "--data-dir", &dir, "--to", &file]);
    assert_eq!(code, 2, "a running node's data is refused: {err}");
    assert!(err.contains("in use"), "{err}");

    for i in 0..3 {
        c.kill(i);
    }
    for i in (0..3).filter(|&i| i != survivor) {
        std::fs::remove_dir_all(c.data_dir(i)).unwrap();
    }
    let before = std::fs::read(c.data_dir(survivor).join("sm.redb")).unwrap();
    let entries = |dir: &std::path::Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let (names, beside) = (entries(&c.data_dir(survivor)), entries(c.dir()));
    // Run in the directory itself, as `--data-dir .`: its copy used to be made inside it,
    // copying itself until the path was too long.
    let (code, out, err) = common::run_bin_in(
        &c.data_dir(survivor),
        &["dump", "--data-dir", ".", "--to", &file],
    );
    assert_eq!(code, 0, "{out}{err}");
    println!("{}", out.trim());
    assert_eq!(
        std::fs::read(c.data_dir(survivor).join("sm.redb")).unwrap(),
        before,
        "a dump leaves the data directory as it was"
    );
    assert_eq!(
        entries(&c.data_dir(survivor)),
        names,
        "files left in the data"
    );
    let mut after = beside.clone();
    after.insert("survivor.backup".into());
    assert_eq!(entries(c.dir()), after, "files left beside the data");

    let mut fresh = Cluster::from_configs(vec![restored_spec(1)]);
    let config = fresh.nodes[0].config.display().to_string();
    let (code, out, err) = cli(&["restore", "--from", &file, "--config", &config]);
    assert_eq!(code, 0, "{out}{err}");
    fresh.spawn(0);
    fresh.wait_ready_all(WAIT).await;
    let ids: BTreeSet<String> = fresh
        .list(0, "linearizable")
        .await
        .iter()
        .map(|r| r["cookie"].as_str().unwrap().to_owned())
        .collect();
    let lost: Vec<_> = acked.iter().filter(|id| !ids.contains(*id)).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert_eq!(ids.len(), acked.len(), "no record that was never written");
}

/// Backups are written two at a time: a third is answered 503 at once, and a client that
/// went away gives its place back. With no bound, a few hundred requests that read nothing
/// each held a thread, a read transaction and their chunks: writes stalled for the read
/// timeout and the node grew by a gigabyte (found in review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_are_written_two_at_a_time_and_a_client_that_left_gives_its_place_back() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = Cluster::start(1, FAST_RAFT).await;
    let pad = "z".repeat(1000 << 10);
    for i in 0..40 {
        let r = c
            .create(
                0,
                json!({"cookie": format!("b{i}"), "user_id": 1, "pad": pad}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    // Two clients ask and read nothing past the status line: 40 MB is more than the
    // sockets and chunks hold, so each holds its place. (One that came second to a third
    // request's place was answered 503: it asks again.)
    let addr = format!("127.0.0.1:{}", c.nodes[0].port);
    let mut idle = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while idle.len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no backup began");
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /admin/backup?consistency=local HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        match &head {
            b"HTTP/1.1 200" => idle.push(s),
            b"HTTP/1.1 503" => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("{}", String::from_utf8_lossy(other)),
        }
    }
    let url = format!("{}/admin/backup?consistency=local", c.url(0));
    let r = c.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(
        v,
        json!({"error": "Too many concurrent requests: backups being written; retry later"})
    );
    drop(idle);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = c.client.get(&url).send().await.unwrap();
        if r.status() == 200 {
            let len = r.content_length();
            assert_eq!(Some(r.bytes().await.unwrap().len() as u64), len);
            break;
        }
        assert_eq!(r.status(), 503);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the clients that left kept their places"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A WAL damaged in its middle stops the node (it will not guess which entries to keep),
/// and `dump` says so; `dump --applied-only` reads the state machine alone, so the data it
/// holds can still be taken off the node. It used to open the log all the same and stop
/// at the same damage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_applied_only_reads_the_state_beside_a_damaged_log() {
    let mut c = Cluster::start(1, FAST_RAFT).await;
    for i in 0..60 {
        let r = c
            .create(0, json!({"cookie": format!("a{i}"), "user_id": 1}))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    c.stop(0);
    let wal = c.data_dir(0).join("wal");
    let mut segments: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segments.sort();
    let newest = segments.last().unwrap();
    let mut bytes = std::fs::read(newest).unwrap();
    // A third of the way into what was written: valid records follow the damage.
    let used = bytes.iter().rposition(|b| *b != 0).unwrap();
    bytes[used / 3] ^= 0x55;
    std::fs::write(newest, &bytes).unwrap();

    let dir = c.data_dir(0).display().to_string();
    let file = c.dir().join("all.backup").display().to_string();
    let (code, _, err) = cli(&["dump", "--data-dir", &dir, "--to", &file]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("damaged record"), "{err}");
    let file = c.dir().join("applied.backup").display().to_string();
    let (code, out, err) = cli(&["dump", "--applied-only", "--data-dir", &dir, "--to", &file]);
    assert_eq!(code, 0, "{out}{err}");
    let head = std::fs::read(&file).unwrap();
    assert!(head.starts_with(b"COOKIE-CRUD-BACKUP\n"), "{out}");
}

/// `dump` takes a node whose `wal/` is a link to the WAL's directory, as the node runs on
/// it (the copy of the tree skips links, and the copy had no log: found in review), and
/// makes its working copy where it is told (`--scratch-dir`; by default beside the backup
/// file, not beside the data directory, whose parent may not be writable: a volume's mount
/// point under a read-only root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_follows_a_linked_wal_and_works_where_it_is_told() {
    let mut c = Cluster::start(1, FAST_RAFT).await;
    for i in 0..30 {
        let r = c
            .create(0, json!({"cookie": format!("l{i}"), "user_id": 1}))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    c.kill(0);
    let wal = c.data_dir(0).join("wal");
    let elsewhere = c.dir().join("wal-elsewhere");
    std::fs::rename(&wal, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &wal).unwrap();

    let dir = c.data_dir(0).display().to_string();
    let missing = c.dir().join("no-such-dir").display().to_string();
    let file = c.dir().join("linked.backup").display().to_string();
    let (code, out, err) = cli(&[
        "dump",
        "--data-dir",
        &dir,
        "--to",
        &file,
        "--scratch-dir",
        &missing,
    ]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("no-such-dir"), "{err}");
    assert!(!Path::new(&file).exists());

    let (code, out, err) = cli(&["dump", "--data-dir", &dir, "--to", &file]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("30 records"), "{out}");
    // The node still runs on its linked WAL, with everything.
    c.spawn(0);
    c.wait_local(0, "l29", WAIT, |r| r.status == 200).await;
}
