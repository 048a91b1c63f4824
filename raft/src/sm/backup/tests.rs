use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload};

use super::*;
use crate::cache::Cache;
use crate::command::Command;
use crate::identity::Identity;
use crate::log::LogStore;
use crate::sm::StateMachine;
use crate::types::{Request, TypeConfig};

fn open(dir: &Path, me: NodeId) -> StateMachine {
    let identity = Arc::new(Identity::new(me, 0x11, false));
    StateMachine::open(dir, Arc::new(Cache::new(Default::default())), identity).unwrap()
}

fn entry(index: u64, cmds: Vec<Command>) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(3, 1), index),
        payload: EntryPayload::Normal(Request { cmds }),
    }
}

fn create(id: &str, created: i64) -> Command {
    let body = format!(r#"{{"cookie":"{id}","user_id":1,"created":{created}}}"#);
    Command::create(body.as_bytes(), 1).unwrap()
}

/// A state machine with `n` records, one idempotency key and a registry, at index n + 2.
async fn filled(dir: &Path, n: usize) -> StateMachine {
    let mut sm = open(dir, 1);
    let register = Command::Register {
        cluster: 0xc0ffee,
        members: vec![(1, 0x11)],
    };
    sm.apply(vec![entry(1, vec![register])]).await.unwrap();
    let cmds = (0..n)
        .map(|i| create(&format!("id-{i:04}"), i as i64))
        .collect();
    sm.apply(vec![entry(2, cmds)]).await.unwrap();
    let keyed = Command::keyed("key-1".into(), [7; 32], (5, 60_000), create("keyed", 99));
    sm.apply(vec![entry(n as u64 + 2, vec![keyed])])
        .await
        .unwrap();
    sm
}

fn origin() -> Origin {
    Origin {
        node: "node1".into(),
        created_ms: 1,
        version: "test".into(),
    }
}

fn backup_bytes(sm: &StateMachine) -> (BackupHeader, Vec<u8>) {
    let mut out = Vec::new();
    let mut seen = None;
    let header = sm
        .reader()
        .backup(origin(), &mut |h| seen = Some(h.clone()), &mut out)
        .unwrap();
    assert_eq!(
        seen.as_ref(),
        Some(&header),
        "told the header before the body"
    );
    (header, out)
}

/// The body offset: after the magic line and the header line.
fn body_start(bytes: &[u8]) -> usize {
    let first = MAGIC.len();
    first + bytes[first..].iter().position(|&b| b == b'\n').unwrap() + 1
}

fn target(id: NodeId) -> RestoreTarget {
    RestoreTarget {
        node_id: id,
        node: CookieNode::new("127.0.0.1:8085", "127.0.0.1:9085", "node5"),
        cluster: 0xbeef,
    }
}

/// `restore` runs a runtime of its own: call it off the test's.
fn restore_off_runtime(file: &Path, dir: &Path, id: NodeId) -> Result<BackupHeader, RestoreError> {
    std::thread::scope(|s| {
        s.spawn(|| restore(file, dir, &target(id), &|_| {}))
            .join()
            .unwrap()
    })
}

fn write(dir: &Path, bytes: &[u8]) -> PathBuf {
    let path = dir.join("cookies.backup");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test]
async fn the_body_is_exactly_a_snapshot_of_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = filled(dir.path(), 50).await;
    let (header, bytes) = backup_bytes(&sm);
    assert_eq!(
        (
            header.records,
            header.idempotency_keys,
            header.index,
            header.term
        ),
        (51, 1, 52, 3)
    );
    assert_eq!(header.cluster_id.as_deref(), Some("0000000000c0ffee"));
    let mut snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let body = &bytes[body_start(&bytes)..];
    assert_eq!(body.len() as u64, header.body_bytes);
    let mut built = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut *snapshot.snapshot, &mut built)
        .await
        .unwrap();
    // A snapshot file is the same stream, compressed (see `sm::format`).
    assert_eq!(body, zstd::decode_all(built.as_slice()).unwrap().as_slice());
}

#[tokio::test]
async fn a_restore_holds_exactly_the_backups_records_in_a_new_one_member_cluster() {
    let (src, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sm = filled(src.path(), 30).await;
    let (header, bytes) = backup_bytes(&sm);
    let file = write(out.path(), &bytes);
    let data = out.path().join("data");
    let progress = std::sync::atomic::AtomicU64::new(0);
    let restored = tokio::task::spawn_blocking({
        let (file, data) = (file.clone(), data.clone());
        move || {
            restore(&file, &data, &target(5), &|n| {
                progress.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
            })
        }
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(restored, header);

    let mut back = open(&data, 5);
    let reader = back.reader();
    assert_eq!(reader.count().unwrap(), 31);
    for i in 0..30 {
        let id = format!("id-{i:04}");
        let (rec, _) = sm.reader().get(&id).unwrap();
        let (got, _) = reader.get(&id).unwrap();
        assert_eq!(got, rec, "{id} as it was, version included");
    }
    // Newest first, as before.
    assert_eq!(
        reader
            .page(usize::MAX, crate::sm::reader::PageStart::First)
            .unwrap()
            .map(|p| (p.body, p.next)),
        sm.reader()
            .page(usize::MAX, crate::sm::reader::PageStart::First)
            .unwrap()
            .map(|p| (p.body, p.next))
    );
    let (applied, membership) = back.applied_state().await.unwrap();
    let applied = applied.unwrap();
    assert_eq!((applied.index, applied.leader_id.term), (32, 1));
    let voters: Vec<_> = membership.membership().voter_ids().collect();
    assert_eq!(voters, [5]);
    let registry = super::super::tables::read_registry(&back.db.get()).unwrap();
    assert_eq!(registry.cluster, Some(0xbeef), "a new cluster id");
    assert_eq!(registry.members.len(), 1);
    // The log is purged up to the restored state: this data is not pristine.
    let log = LogStore::open(&data).unwrap();
    assert!(!log.was_pristine());
    assert_eq!(registry.members[&5], log.incarnation());
    assert!(!data.join(RESTORING).exists());
}

#[tokio::test]
async fn corrupt_truncated_foreign_and_newer_files_are_refused() {
    let (src, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sm = filled(src.path(), 20).await;
    let (_, good) = backup_bytes(&sm);
    let start = body_start(&good);
    let check = |bytes: &[u8]| {
        let file = write(out.path(), bytes);
        verify(&file, &|_| {}).unwrap_err()
    };

    let mut flipped = good.clone();
    flipped[start + (good.len() - start) / 2] ^= 0x40;
    assert!(
        matches!(check(&flipped), BackupError::Corrupt(_)),
        "{}",
        check(&flipped)
    );
    for cut in [good.len() - 1, start + 10, start] {
        assert!(
            matches!(check(&good[..cut]), BackupError::Truncated(_)),
            "cut at {cut}: {}",
            check(&good[..cut])
        );
    }
    let mut longer = good.clone();
    longer.extend_from_slice(b"more");
    assert!(matches!(check(&longer), BackupError::Corrupt(_)));
    assert!(matches!(
        check(b"PK\x03\x04 a zip"),
        BackupError::NotABackup
    ));
    assert!(matches!(check(b""), BackupError::NotABackup));

    let header_line = std::str::from_utf8(&good[MAGIC.len()..start]).unwrap();
    let newer = header_line.replacen("\"format\":2", "\"format\":3", 1);
    let mut future = MAGIC.to_vec();
    future.extend_from_slice(newer.as_bytes());
    future.extend_from_slice(&good[start..]);
    let err = check(&future);
    assert!(
        matches!(err, BackupError::NewerFormat { found: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("newer"));

    // The header has a checksum of its own: an index damaged or edited, up or down, is
    // refused before anything else is read (format 1 checked only the body, so an index
    // edited up within range restored a log that started later than the backup's state).
    let parsed: BackupHeader = serde_json::from_str(header_line).unwrap();
    let index = format!("\"index\":{},", parsed.index);
    assert!(header_line.contains(&index), "{header_line}");
    for to in [3, parsed.index + 1000] {
        let edited = header_line.replacen(&index, &format!("\"index\":{to},"), 1);
        let err = check(&with_header(edited.as_bytes(), &good[start..]));
        assert!(
            matches!(&err, BackupError::BadHeader(m) if m.contains("own checksum fails")),
            "{err}"
        );
    }
    let twice = header_line.replacen(
        "{",
        &format!("{{\"header_sha256\":\"{}\",", "0".repeat(64)),
        1,
    );
    let err = check(&with_header(twice.as_bytes(), &good[start..]));
    assert!(
        matches!(&err, BackupError::BadHeader(m) if m.contains("twice")),
        "{err}"
    );
    // Anyone can seal a header again (SHA-256 is an integrity check, not a signature): an
    // index edited down is still caught by the records' versions, which no backup holds
    // past its own index.
    let resealed = |edit: &dyn Fn(&mut BackupHeader)| {
        let mut h = parsed.clone();
        edit(&mut h);
        h.seal().unwrap();
        with_header(&h.line().unwrap(), &good[start..])
    };
    let err = check(&resealed(&|h| h.index = 3));
    assert!(
        matches!(&err, BackupError::Corrupt(m) if m.contains("past the backup's index 3")),
        "{err}"
    );

    // A header whose index leaves the restored log no room, or that names format 0, or
    // that is empty, is refused (an index of u64::MAX restored a node that took no write
    // and then could not start: found in review).
    let err = check(&resealed(&|h| h.index = u64::MAX));
    assert!(
        matches!(&err, BackupError::BadHeader(m) if m.contains("past any log's")),
        "{err}"
    );
    let zero = header_line.replacen("\"format\":2", "\"format\":0", 1);
    let err = check(&with_header(zero.as_bytes(), &good[start..]));
    assert!(
        matches!(&err, BackupError::BadHeader(m) if m.contains("format 0")),
        "{err}"
    );
    // A sealed header whose format reads 1 is not taken for format 1, which had no seal
    // (found in review: "format":2 edited to 1, with the index changed, restored).
    let one = header_line
        .replacen("\"format\":2", "\"format\":1", 1)
        .replacen(&index, "\"index\":999,", 1);
    let err = check(&with_header(one.as_bytes(), &good[start..]));
    assert!(
        matches!(&err, BackupError::BadHeader(m) if m.contains("format 1 carries no header_sha256")),
        "{err}"
    );
    // A file cut off inside its header says so (it was "no end of line within 64 KiB").
    for cut in [MAGIC.len() + 1, start - 1] {
        let err = check(&good[..cut]);
        assert!(
            matches!(&err, BackupError::BadHeader(m) if m.contains("cut short")),
            "cut at {cut}: {err}"
        );
    }
    let mut empty = MAGIC.to_vec();
    empty.extend_from_slice(b"\n");
    let err = check(&empty);
    assert!(
        matches!(&err, BackupError::BadHeader(m) if m.contains("empty")),
        "{err}"
    );

    // A refused file leaves no data directory, staged or final.
    let data = out.path().join("data");
    let file = write(out.path(), &flipped);
    assert!(restore_off_runtime(&file, &data, 1).is_err());
    assert!(!data.exists());
}

#[tokio::test]
async fn a_non_empty_data_directory_is_refused_and_left_alone() {
    let (src, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sm = filled(src.path(), 3).await;
    let (_, bytes) = backup_bytes(&sm);
    let file = write(out.path(), &bytes);
    let data = out.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("precious"), b"x").unwrap();
    let err = restore_off_runtime(&file, &data, 1).unwrap_err();
    assert!(matches!(err, RestoreError::NotEmpty { .. }), "{err}");
    assert_eq!(std::fs::read(data.join("precious")).unwrap(), b"x");
    // An empty directory (a fresh volume) is fine.
    let empty = out.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    restore_off_runtime(&file, &empty, 1).unwrap();
    assert!(empty.join("sm.redb").exists());
}

/// A restore writes inside its target, never beside it, and leaves the target directory
/// itself in place: a Kubernetes volume's mount point can be neither removed nor replaced,
/// and its parent is another filesystem. (Before, the restore wrote `.data.restoring`
/// beside the target, then removed the target and renamed its copy into place: into a
/// mount point it failed with EBUSY and left the copy beside the volume.)
#[tokio::test]
async fn a_restore_writes_inside_its_target_and_keeps_the_directory() {
    use std::os::unix::fs::MetadataExt;
    let (src, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sm = filled(src.path(), 3).await;
    let (_, bytes) = backup_bytes(&sm);
    let file = src.path().join("cookies.backup");
    std::fs::write(&file, &bytes).unwrap();
    let data = out.path().join("volume");
    std::fs::create_dir(&data).unwrap();
    let inode = std::fs::metadata(&data).unwrap().ino();
    restore_off_runtime(&file, &data, 1).unwrap();
    assert_eq!(
        std::fs::metadata(&data).unwrap().ino(),
        inode,
        "the target directory was replaced"
    );
    let beside: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, ["volume"], "written beside the target");
    assert!(data.join("sm.redb").exists() && !interrupted_restore(&data));
}

/// A fresh ext4 volume holds `lost+found`: it is no data, and stays.
#[tokio::test]
async fn a_fresh_volumes_lost_and_found_is_no_data() {
    let (src, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sm = filled(src.path(), 3).await;
    let (_, bytes) = backup_bytes(&sm);
    let file = write(src.path(), &bytes);
    let data = out.path().join("volume");
    std::fs::create_dir_all(data.join(LOST_FOUND)).unwrap();
    restore_off_runtime(&file, &data, 1).unwrap();
    assert!(data.join(LOST_FOUND).is_dir() && data.join("sm.redb").is_file());
}

/// The files a restore moves up never replace one already there (a node's, started on the
/// directory meanwhile).
#[test]
fn moving_up_never_replaces_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (dir.path().join("new"), dir.path().join("sm.redb"));
    std::fs::write(&from, b"restored").unwrap();
    std::fs::write(&to, b"a node's").unwrap();
    let err = crate::durable::rename_no_replace(&from, &to).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
    assert_eq!(std::fs::read(&to).unwrap(), b"a node's");
    std::fs::remove_file(&to).unwrap();
    crate::durable::rename_no_replace(&from, &to).unwrap();
    assert_eq!(std::fs::read(&to).unwrap(), b"restored");
}

/// A restore that stopped half-way leaves [`RESTORING`] in the directory: it is known as
/// an unfinished restore, and a restore run again clears it and finishes.
#[tokio::test]
async fn an_interrupted_restore_is_known_and_cleared_by_the_next() {
    let (src, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sm = filled(src.path(), 3).await;
    let (_, bytes) = backup_bytes(&sm);
    let file = write(src.path(), &bytes);
    let data = out.path().join("data");
    // As a restore killed while it moved its files up leaves it: some moved, some not.
    std::fs::create_dir_all(data.join(RESTORING)).unwrap();
    std::fs::write(data.join(RESTORING).join("sm.redb"), b"half").unwrap();
    std::fs::write(data.join("log.redb"), b"half").unwrap();
    assert!(interrupted_restore(&data));
    // While another restore holds the directory, its `.restoring` is its work in progress,
    // not an interrupted restore's leftovers: refused, and left as it is (it was cleared,
    // and the first restore reported success for the second's data: found in review).
    {
        let other = std::fs::File::open(&data).unwrap();
        other.lock().unwrap();
        let err = restore_off_runtime(&file, &data, 1).unwrap_err();
        assert!(matches!(err, RestoreError::InProgress { .. }), "{err}");
        assert_eq!(
            std::fs::read(data.join(RESTORING).join("sm.redb")).unwrap(),
            b"half"
        );
    }
    restore_off_runtime(&file, &data, 1).unwrap();
    assert!(!interrupted_restore(&data));
    let log = LogStore::open(&data).unwrap();
    assert!(!log.was_pristine());
}

/// A record is checked as JSON that names itself, whatever its keys: one stored with a key
/// serde_json reads as its own marker (before writes refused them) made every backup fail.
#[test]
fn a_record_check_reads_keys_as_keys() {
    let check =
        |json: &str| check_record("a", &Record::new(7, json.as_bytes().to_vec()).encode(), 7);
    for json in [
        r#"{"$serde_json::private::Number":"5","cookie":"a","user_id":1}"#,
        r#"{"cookie":"a","x":{"$serde_json::private::RawValue":"1"}}"#,
        r#"{"cookie":"\u0061","note":"escaped id"}"#,
    ] {
        assert_eq!(check(json), Ok(()), "{json}");
    }
    for json in [
        r#"{"cookie":"b"}"#,
        r#"{"user_id":1}"#,
        r#"{"cookie":"a""#,
        r#"["a"]"#,
    ] {
        assert!(check(json).is_err(), "{json}");
    }
}

/// A format-1 backup, as the versions before the header's own checksum wrote it (the same
/// header without `header_sha256`), is still read and restored whole.
#[tokio::test]
async fn a_backup_of_format_one_is_still_restored() {
    let (src, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sm = filled(src.path(), 5).await;
    let (header, good) = backup_bytes(&sm);
    assert_eq!(header.format, 2);
    assert!(header.header_sha256.is_some());
    let mut old = header.clone();
    old.format = 1;
    old.header_sha256 = None;
    let line = old.line().unwrap();
    assert!(!String::from_utf8_lossy(&line).contains("header_sha256"));
    let file = write(out.path(), &with_header(&line, &good[body_start(&good)..]));
    let data = out.path().join("data");
    let restored = restore_off_runtime(&file, &data, 1).unwrap();
    assert_eq!(restored, old);
    let back = open(&data, 1);
    assert_eq!(back.reader().count().unwrap(), sm.reader().count().unwrap());
    for i in 0..5 {
        let id = format!("id-{i:04}");
        assert_eq!(
            back.reader().get(&id).unwrap().0,
            sm.reader().get(&id).unwrap().0
        );
    }
}

/// A backup of `header` (its line, newline included) and `body`.
fn with_header(header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(body);
    bytes
}

/// A backup forged from `good` with its record rows changed by `edit`, its counts and
/// checksum made to match: what anyone can make, as SHA-256 is only an integrity check.
fn forged(good: &[u8], edit: impl FnOnce(&mut Vec<(String, serde_bytes::ByteBuf)>)) -> Vec<u8> {
    let start = body_start(good);
    let mut header: BackupHeader = serde_json::from_slice(&good[MAGIC.len()..start - 1]).unwrap();
    let mut body = &good[start..];
    let n: u64 = take(&mut body, "count").unwrap();
    let mut rows: Vec<(String, serde_bytes::ByteBuf)> =
        (0..n).map(|_| take(&mut body, "row").unwrap()).collect();
    edit(&mut rows);
    let config = bincode::config::standard();
    let mut out = bincode::serde::encode_to_vec(rows.len() as u64, config).unwrap();
    for row in &rows {
        out.extend(bincode::serde::encode_to_vec(row, config).unwrap());
    }
    out.extend_from_slice(body);
    header.records = rows.len() as u64;
    header.body_bytes = out.len() as u64;
    header.sha256 = crate::identity::hex_bytes(&Sha256::digest(&out));
    header.seal().unwrap();
    let mut file = MAGIC.to_vec();
    file.extend(header.line().unwrap());
    file.extend(out);
    file
}

/// A record id twice, out of order, empty or too long is refused: a restore of one id
/// twice listed it twice, then failed every list once it was deleted, and nodes that joined
/// listed it once (found in review).
#[tokio::test]
async fn rows_out_of_order_twice_or_with_impossible_ids_are_refused() {
    let (src, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sm = filled(src.path(), 5).await;
    let (_, good) = backup_bytes(&sm);
    let check = |bytes: &[u8]| {
        let file = write(out.path(), bytes);
        verify(&file, &|_| {}).map(|_| ())
    };
    // The forging itself changes nothing that matters.
    assert!(check(&forged(&good, |_| {})).is_ok());
    let twice = forged(&good, |rows| {
        let first = rows[0].clone();
        rows.insert(1, first);
    });
    let err = check(&twice).unwrap_err();
    assert!(
        matches!(&err, BackupError::Corrupt(m) if m.contains("ascending order")),
        "{err}"
    );
    let swapped = forged(&good, |rows| rows.swap(1, 2));
    assert!(matches!(check(&swapped), Err(BackupError::Corrupt(_))));
    for id in [String::new(), "x".repeat(crate::command::MAX_ID_BYTES + 1)] {
        let json = format!("{{\"cookie\":{}}}", serde_json::Value::String(id.clone()));
        let value = crate::record::Record::new(1, json.into_bytes()).encode();
        let bad = forged(&good, |rows| rows.insert(0, (id.clone(), value.into())));
        let err = check(&bad).unwrap_err();
        assert!(
            matches!(&err, BackupError::Corrupt(m) if m.contains("a record id of")),
            "{err}"
        );
    }
    // And a refused file restores nothing.
    let data = out.path().join("data");
    let file = write(out.path(), &twice);
    assert!(restore_off_runtime(&file, &data, 1).is_err());
    assert!(!data.exists());
}
