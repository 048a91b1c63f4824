//! No stale fill, under load: readers hammer a few keys through the cache while `apply`
//! keeps changing them. At every read, the value served must be at least as new as the
//! applied state the reader observed before it started.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use cookie_raft::cache::CachedRecord;
use cookie_raft::{Cache, CacheConfig, Command, Request, StateMachine, StoreReader};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

const KEYS: u64 = 4;

fn key(i: u64) -> String {
    format!("k{i}")
}

/// Which key the entry at `index` (from 1 + KEYS on) updates: a fixed, uneven schedule.
fn key_of(index: u64) -> u64 {
    (index * 7 + index / 3) % KEYS
}

fn entry(index: u64, cmd: Command) -> Entry<cookie_raft::TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Request { cmds: vec![cmd] }),
    }
}

/// The version key `k` must have at least, once everything up to `applied` is applied.
fn min_version(k: u64, applied: u64) -> u64 {
    (KEYS + 1..=applied)
        .rev()
        .find(|&i| key_of(i) == k)
        .unwrap_or(k + 1) // its create
}

/// The checker: `None` when `served` is acceptable after `applied`, else a description.
fn stale(k: u64, applied: u64, served: Option<&CachedRecord>) -> Option<String> {
    let want = min_version(k, applied);
    match served {
        Some(r) if r.version >= want => None,
        Some(r) => Some(format!(
            "k{k}: served version {} after applied {applied} (want >= {want})",
            r.version
        )),
        None => Some(format!("k{k}: missing")),
    }
}

async fn setup(dir: &std::path::Path) -> (StateMachine, StoreReader, Arc<Cache>) {
    let cache = Arc::new(Cache::new(CacheConfig::default()));
    let mut sm = StateMachine::open(
        dir,
        cache.clone(),
        Arc::new(cookie_raft::Identity::new(1, 1, false)),
    )
    .unwrap();
    let reader = sm.reader();
    let creates: Vec<_> = (0..KEYS)
        .map(|k| {
            entry(
                k + 1,
                Command::Create {
                    id: key(k),
                    object: format!(r#"{{"cookie":"{}","n":0}}"#, key(k)),
                },
            )
        })
        .collect();
    sm.apply(creates).await.unwrap();
    (sm, reader, cache)
}

fn update(index: u64) -> Entry<cookie_raft::TypeConfig> {
    entry(
        index,
        Command::Update {
            id: key(key_of(index)),
            patch: format!(r#"{{"n":{index}}}"#),
            rename_to: None,
            now: 0,
            if_match: None,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_never_serves_a_value_older_than_the_applied_state() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sm, reader, cache) = setup(dir.path()).await;
    let stop = Arc::new(AtomicBool::new(false));
    // Checks made so far by all readers: the writer goes on until they have made enough
    // beside its writes (on a busy machine the readers' threads may start late).
    let made = Arc::new(AtomicU64::new(0));

    let readers: Vec<_> = (0..3u64)
        .map(|t| {
            let reader = reader.clone();
            let stop = stop.clone();
            let made = made.clone();
            std::thread::spawn(move || {
                let mut checks = 0u64;
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    i = i
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let k = (i >> 33) % KEYS;
                    let applied = reader.applied_index();
                    let (served, _) = reader.get(&key(k)).unwrap();
                    if let Some(e) = stale(k, applied, served.as_ref()) {
                        panic!("stale read: {e}");
                    }
                    checks += 1;
                    made.fetch_add(1, Ordering::Relaxed);
                }
                checks
            })
        })
        .collect();

    // The writer: entries applied in groups of 1-3, as openraft hands them over; at least
    // 3,000, and more until the readers have checked beside them (a minute at most).
    let total = 3000;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut index = KEYS + 1;
    while index < KEYS + 1 + total
        || (made.load(Ordering::Relaxed) <= 1000 && std::time::Instant::now() < deadline)
    {
        let n = 1 + index % 3;
        let batch: Vec<_> = (index..index + n).map(update).collect();
        sm.apply(batch).await.unwrap();
        index += n;
    }
    stop.store(true, Ordering::Relaxed);
    let checks: u64 = readers
        .into_iter()
        .map(|h| h.join().expect("reader saw a stale value"))
        .sum();
    assert!(checks > 1000, "readers made only {checks} checks");

    // At the end the cache agrees with the store exactly.
    let applied = reader.applied_index();
    for k in 0..KEYS {
        let cached = cache.get(&key(k));
        if let Some(c) = &cached {
            assert_eq!(
                c.version,
                min_version(k, applied),
                "k{k} cached stale at the end"
            );
        }
    }
    cache.clear();
    for k in 0..KEYS {
        let (fresh, _) = reader.get(&key(k)).unwrap();
        assert_eq!(fresh.unwrap().version, min_version(k, applied));
    }
    assert!(cache.stats().hits > 0, "the cache was exercised");
}

/// The checker above is not vacuous: a fill that ignores the epoch (the classic race,
/// played in order) is caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_catches_a_naive_fill() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sm, reader, cache) = setup(dir.path()).await;
    let k = key_of(KEYS + 1);
    // A reader reads the old value from the store...
    cache.clear();
    let (old, _) = reader.get(&key(k)).unwrap();
    cache.clear();
    // ...an apply commits and invalidates...
    sm.apply(vec![update(KEYS + 1)]).await.unwrap();
    let applied = reader.applied_index();
    // ...and a naive cache (a fresh ticket, no epoch check against the read) inserts it.
    assert!(cache.fill(&key(k), cache.ticket(&key(k)), old.unwrap()));
    let (served, _) = reader.get(&key(k)).unwrap();
    assert!(
        stale(k, applied, served.as_ref()).is_some(),
        "the checker must flag it"
    );

    // The real protocol: a ticket taken before the read is refused after the apply.
    cache.clear();
    let ticket = cache.ticket(&key(k));
    let (old, _) = reader.get(&key(k)).unwrap();
    cache.clear();
    let next = entry(
        KEYS + 2,
        Command::Update {
            id: key(k),
            patch: r#"{"n":-1}"#.into(),
            rename_to: None,
            now: 0,
            if_match: None,
        },
    );
    sm.apply(vec![next]).await.unwrap();
    assert!(!cache.fill(&key(k), ticket, old.unwrap()));
    assert_eq!(reader.get(&key(k)).unwrap().0.unwrap().version, KEYS + 2);
}
