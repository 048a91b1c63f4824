//! The per-node TTL read cache.
//!
//! It holds `cookie:{id}` entries (one record, with its version) and the `all_cookies` list
//! (the whole `GET /cookies` reply body, only when it fits in one chunk of the streamed list,
//! `sm/reader.rs`: a larger one is streamed and never held whole). The state machine
//! invalidates exactly the keys an entry touches when it applies it, on every replica, so
//! each node's cache agrees with that node's applied state and can serve even linearizable
//! reads.
//!
//! # No stale fill
//! The classic race: a reader misses, reads the old value from redb, an apply commits and
//! invalidates, then the reader inserts the old value. We stop it with epochs: keys hash
//! onto striped counters; `apply` commits, bumps the key's epoch, then removes the key. A
//! reader takes the epoch *before* reading redb ([`Cache::ticket`]) and [`Cache::fill`]
//! inserts only if the epoch is unchanged, checked while holding the map's shard lock. Since
//! the removal also needs that lock, either the fill's check saw the bump (and skips), or the
//! fill finished first and the removal that follows the bump deletes it. Because openraft
//! publishes `last_applied` only after `apply` returns, any read that waited for an index has
//! no stale value left to find.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use serde::Serialize;
use tokio::time::Instant;

const STRIPES: usize = 256;

/// Cache settings (`cache_enabled`, `cache_ttl`, `cache_max_entries`, `cache_max_bytes`).
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub enabled: bool,
    pub ttl: Duration,
    pub max_entries: usize,
    /// Bytes of cached ids and JSON at most: records are evicted oldest first past it, and a
    /// list body larger than it is not cached at all (issue 13: entries alone do not bound
    /// memory when a record can be a megabyte).
    pub max_bytes: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            ttl: Duration::from_secs(300),
            max_entries: 100_000,
            max_bytes: 128 << 20,
        }
    }
}

/// What a cached record costs, as [`CacheConfig::max_bytes`] counts it.
fn cost(id: &str, rec: &CachedRecord) -> u64 {
    (id.len() + rec.json.len()) as u64
}

/// A cached record: its JSON object and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedRecord {
    pub json: Bytes,
    pub version: u64,
}

#[derive(Clone)]
struct Slot<V> {
    value: V,
    inserted: Instant,
}

/// Counters as the original reports them in `GET /cache`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub puts: u64,
    pub deletes: u64,
    pub evictions: u64,
    pub size: u64,
    /// Bytes of cached ids and JSON (bounded by `cache_max_bytes`).
    pub bytes: u64,
    pub hit_rate: f64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    puts: AtomicU64,
    deletes: AtomicU64,
    evictions: AtomicU64,
}

/// An epoch observed before reading the store; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

pub struct Cache {
    cfg: CacheConfig,
    records: DashMap<String, Slot<CachedRecord>>,
    list: Mutex<Option<Slot<Bytes>>>,
    epochs: Box<[AtomicU64]>,
    list_epoch: AtomicU64,
    hasher: std::collections::hash_map::RandomState,
    counters: Counters,
    evicting: AtomicBool,
    /// Bytes of the cached records ([`cost`]); the list's are its body's length.
    record_bytes: AtomicU64,
    /// The cached list body's length, 0 without one (a body is never empty: `[]` at
    /// least); set under the list's lock, read by the caps without it.
    list_bytes: AtomicU64,
}

impl Cache {
    pub fn new(cfg: CacheConfig) -> Self {
        Cache {
            cfg,
            records: DashMap::new(),
            list: Mutex::new(None),
            epochs: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            list_epoch: AtomicU64::new(0),
            hasher: Default::default(),
            counters: Counters::default(),
            evicting: AtomicBool::new(false),
            record_bytes: AtomicU64::new(0),
            list_bytes: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    fn stripe(&self, id: &str) -> &AtomicU64 {
        &self.epochs[(self.hasher.hash_one(id) as usize) % STRIPES]
    }

    fn expired(&self, inserted: Instant) -> bool {
        inserted.elapsed() >= self.cfg.ttl
    }

    fn count(&self, c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Account for a record slot that left the map.
    fn forget(&self, id: &str, slot: &Slot<CachedRecord>) {
        self.record_bytes
            .fetch_sub(cost(id, &slot.value), Ordering::Relaxed);
    }

    /// Bytes held: cached records and the list body.
    pub fn bytes(&self) -> u64 {
        self.record_bytes.load(Ordering::Relaxed) + self.list_bytes.load(Ordering::Relaxed)
    }

    /// Put `slot` in the list's place (under its lock), keeping its byte count.
    fn set_list(&self, held: &mut Option<Slot<Bytes>>, slot: Option<Slot<Bytes>>) {
        let len = slot.as_ref().map_or(0, |s| s.value.len() as u64);
        *held = slot;
        self.list_bytes.store(len, Ordering::Relaxed);
    }

    /// Look up one record. An expired entry counts as a miss and an eviction.
    pub fn get(&self, id: &str) -> Option<CachedRecord> {
        if !self.cfg.enabled {
            return None;
        }
        let found = self
            .records
            .get(id)
            .map(|slot| (slot.value.clone(), slot.inserted));
        match found {
            Some((value, inserted)) if !self.expired(inserted) => {
                self.count(&self.counters.hits, 1);
                Some(value)
            }
            Some((_, inserted)) => {
                // Remove only the slot we judged expired, not a fresh one filled meanwhile.
                if let Some((k, s)) = self.records.remove_if(id, |_, s| s.inserted == inserted) {
                    self.forget(&k, &s);
                    self.count(&self.counters.evictions, 1);
                }
                self.count(&self.counters.misses, 1);
                None
            }
            None => {
                self.count(&self.counters.misses, 1);
                None
            }
        }
    }

    /// Look up the `all_cookies` list body.
    pub fn get_list(&self) -> Option<Bytes> {
        if !self.cfg.enabled {
            return None;
        }
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        match list.as_ref() {
            Some(slot) if !self.expired(slot.inserted) => {
                self.count(&self.counters.hits, 1);
                Some(slot.value.clone())
            }
            Some(_) => {
                self.set_list(&mut list, None);
                self.count(&self.counters.evictions, 1);
                self.count(&self.counters.misses, 1);
                None
            }
            None => {
                self.count(&self.counters.misses, 1);
                None
            }
        }
    }

    /// Take a ticket for `id` before reading it from the store.
    pub fn ticket(&self, id: &str) -> Ticket {
        Ticket(self.stripe(id).load(Ordering::SeqCst))
    }

    /// Take a ticket for the `all_cookies` list before reading the store.
    pub fn list_ticket(&self) -> Ticket {
        Ticket(self.list_epoch.load(Ordering::SeqCst))
    }

    /// Insert a value read from the store, unless an apply touched `id` since `ticket` was
    /// taken. Returns whether it was inserted.
    pub fn fill(&self, id: &str, ticket: Ticket, value: CachedRecord) -> bool {
        if !self.cfg.enabled {
            return false;
        }
        let size = cost(id, &value);
        if size > self.cfg.max_bytes as u64 {
            return false;
        }
        let inserted = {
            // The entry guard holds the shard lock across the epoch check and the insert.
            let entry = self.records.entry(id.to_owned());
            if self.stripe(id).load(Ordering::SeqCst) != ticket.0 {
                false
            } else {
                let slot = Slot {
                    value,
                    inserted: Instant::now(),
                };
                self.record_bytes.fetch_add(size, Ordering::Relaxed);
                if let dashmap::Entry::Occupied(mut old) = entry {
                    let old = old.insert(slot);
                    self.forget(id, &old);
                } else {
                    entry.insert(slot);
                }
                true
            }
        };
        if inserted {
            self.count(&self.counters.puts, 1);
            self.enforce_cap();
        }
        inserted
    }

    /// Insert the list body, unless an apply changed the set since `ticket`.
    pub fn fill_list(&self, ticket: Ticket, body: Bytes) -> bool {
        if !self.cfg.enabled {
            return false;
        }
        if body.len() > self.cfg.max_bytes {
            return false; // the whole store in one reply: too big to keep
        }
        {
            let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
            if self.list_epoch.load(Ordering::SeqCst) != ticket.0 {
                return false;
            }
            let slot = Slot {
                value: body,
                inserted: Instant::now(),
            };
            self.set_list(&mut list, Some(slot));
        }
        self.count(&self.counters.puts, 1);
        // The list counts in both caps, as an entry and by its bytes: records make room
        // for it (it was left out, and a node held up to twice `max_bytes`: found in review).
        self.enforce_cap();
        true
    }

    /// Called by `apply` after its transaction committed: forget `ids`, and the list when
    /// `list` is set.
    pub fn invalidate<'a>(&self, ids: impl IntoIterator<Item = &'a str>, list: bool) {
        for id in ids {
            self.stripe(id).fetch_add(1, Ordering::SeqCst);
            if let Some((k, s)) = self.records.remove(id) {
                self.forget(&k, &s);
                self.count(&self.counters.deletes, 1);
            }
        }
        if list {
            self.list_epoch.fetch_add(1, Ordering::SeqCst);
            let mut slot = self.list.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_some() {
                self.set_list(&mut slot, None);
                self.count(&self.counters.deletes, 1);
            }
        }
    }

    /// Forget everything and reject every fill in flight (snapshot install).
    pub fn invalidate_all(&self) {
        for e in self.epochs.iter() {
            e.fetch_add(1, Ordering::SeqCst);
        }
        self.list_epoch.fetch_add(1, Ordering::SeqCst);
        self.clear();
    }

    /// `DELETE /cache`: drop every entry; the statistics stay.
    pub fn clear(&self) {
        self.records.retain(|k, s| {
            self.forget(k, s);
            false
        });
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        self.set_list(&mut list, None);
    }

    /// Number of entries (records plus the list).
    pub fn len(&self) -> usize {
        self.records.len() + usize::from(self.list_bytes.load(Ordering::Relaxed) > 0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Remove expired entries; returns how many. Run by the cleanup task.
    pub fn remove_expired(&self) -> usize {
        let mut removed = 0;
        self.records.retain(|k, slot| {
            let keep = !self.expired(slot.inserted);
            if !keep {
                self.forget(k, slot);
                removed += 1;
            }
            keep
        });
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        if list.as_ref().is_some_and(|s| self.expired(s.inserted)) {
            self.set_list(&mut list, None);
            removed += 1;
        }
        self.count(&self.counters.evictions, removed as u64);
        removed
    }

    /// Keep memory bounded: past `max_entries` or `max_bytes` (the list counted in both),
    /// drop expired entries, then the oldest entries, the list among them by its age, until
    /// the cache is at 90% of both caps (so the sort is paid once per many inserts), or only
    /// the newest is left and it is within them. With the list kept out of the eviction, a
    /// list near `max_bytes` made every record filled after it go at once, the newest first
    /// (found in review).
    fn enforce_cap(&self) {
        let over = |share: usize| {
            let list = self.list_bytes.load(Ordering::Relaxed);
            self.records.len() + usize::from(list > 0) > self.cfg.max_entries * share / 10
                || self.record_bytes.load(Ordering::Relaxed) + list
                    > (self.cfg.max_bytes * share / 10) as u64
        };
        if !over(10) {
            return;
        }
        if self.evicting.swap(true, Ordering::AcqRel) {
            return; // someone else is already at it
        }
        self.remove_expired();
        if over(9) {
            // `None` is the list.
            let mut ages: Vec<(Instant, Option<String>)> = self
                .records
                .iter()
                .map(|r| (r.value().inserted, Some(r.key().clone())))
                .collect();
            if let Some(list) = self.list.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                ages.push((list.inserted, None));
            }
            ages.sort_unstable();
            let newest = ages.len().saturating_sub(1);
            for (i, (inserted, entry)) in ages.into_iter().enumerate() {
                // The newest entry (most often the one just filled) goes only if it alone is
                // past a cap: a list between 90% and 100% of `max_bytes` was kept, then
                // dropped by the pass its own fill began.
                if !over(9) || (i == newest && !over(10)) {
                    break;
                }
                match entry {
                    Some(id) => {
                        let gone = self.records.remove_if(&id, |_, s| s.inserted == inserted);
                        if let Some((k, s)) = gone {
                            self.forget(&k, &s);
                            self.count(&self.counters.evictions, 1);
                        }
                    }
                    None => {
                        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
                        if list.as_ref().is_some_and(|l| l.inserted == inserted) {
                            self.set_list(&mut list, None);
                            self.count(&self.counters.evictions, 1);
                        }
                    }
                }
            }
        }
        self.evicting.store(false, Ordering::Release);
    }

    pub fn stats(&self) -> CacheStats {
        let hits = self.counters.hits.load(Ordering::Relaxed);
        let misses = self.counters.misses.load(Ordering::Relaxed);
        let reads = hits + misses;
        CacheStats {
            hits,
            misses,
            puts: self.counters.puts.load(Ordering::Relaxed),
            deletes: self.counters.deletes.load(Ordering::Relaxed),
            evictions: self.counters.evictions.load(Ordering::Relaxed),
            size: self.len() as u64,
            bytes: self.bytes(),
            hit_rate: if reads == 0 {
                0.0
            } else {
                hits as f64 / reads as f64 * 100.0
            },
        }
    }

    /// Start the background task that sweeps expired entries every `interval`. It stops when
    /// the last other reference to the cache is dropped.
    pub fn spawn_cleanup(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await; // the first tick is immediate
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(cache) => {
                        cache.remove_expired();
                    }
                    None => return,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(v: u64) -> CachedRecord {
        CachedRecord {
            json: Bytes::from(format!("{{\"v\":{v}}}")),
            version: v,
        }
    }

    fn cache(ttl: u64, max: usize) -> Cache {
        Cache::new(CacheConfig {
            enabled: true,
            ttl: Duration::from_secs(ttl),
            max_entries: max,
            max_bytes: 1 << 30,
        })
    }

    /// The list counts in both caps: records make room for it (found in review: a node
    /// with `cache_max_bytes = 2000` held 3,848 bytes, and one with `cache_max_entries = 2`
    /// three entries).
    #[test]
    fn the_list_counts_in_both_caps() {
        let c = Cache::new(CacheConfig {
            max_bytes: 2_000,
            ..CacheConfig::default()
        });
        let rec = |v: u64| CachedRecord {
            json: Bytes::from(vec![b'x'; 382]),
            version: v,
        };
        for i in 0..5u64 {
            let id = format!("c{i}"); // 2 + 382 = 384 bytes each
            assert!(c.fill(&id, c.ticket(&id), rec(i)));
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(c.bytes(), 1_920);
        assert!(c.fill_list(c.list_ticket(), Bytes::from(vec![b'['; 1_928])));
        assert!(c.bytes() <= 2_000, "{} bytes", c.bytes());
        assert!(
            c.get_list().is_some(),
            "the list stays, older records made room"
        );
        assert_eq!(c.get("c0"), None, "the oldest record went first");
        // Then a record filled goes in and the list, now the oldest, makes room for it
        // (with the list left out, every record filled after it went at once).
        std::thread::sleep(Duration::from_millis(1));
        assert!(c.fill("c9", c.ticket("c9"), rec(9)));
        assert!(c.get("c9").is_some(), "the newest entry stays");
        assert!(c.get_list().is_none(), "the list was the oldest");
        assert!(c.bytes() <= 2_000, "{} bytes", c.bytes());
        // A list as large as the cap alone is kept; one larger is not.
        assert!(!c.fill_list(c.list_ticket(), Bytes::from(vec![b'['; 2_001])));
        assert!(c.fill_list(c.list_ticket(), Bytes::from(vec![b'['; 2_000])));
        assert_eq!((c.bytes(), c.len()), (2_000, 1));
        c.clear();
        assert_eq!((c.bytes(), c.len()), (0, 0));

        let c = cache(60, 2);
        for id in ["a", "b"] {
            assert!(c.fill(id, c.ticket(id), rec(1)));
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(c.fill_list(c.list_ticket(), Bytes::from_static(b"[]")));
        assert!(c.len() <= 2, "{} entries", c.len());
        assert_eq!(c.get("a"), None);
        c.invalidate([], true);
        assert_eq!((c.len(), c.bytes()), (0, 0));
    }

    #[test]
    fn bytes_bound_evicts_oldest_first_and_keeps_its_count_exact() {
        let c = Cache::new(CacheConfig {
            max_bytes: 10_000,
            ..CacheConfig::default()
        });
        let big = |v: u64| CachedRecord {
            json: Bytes::from(vec![b'x'; 998]),
            version: v,
        };
        for i in 0..30u64 {
            let id = format!("{i:02}"); // 2 + 998 = 1,000 bytes each
            assert!(c.fill(&id, c.ticket(&id), big(i)));
            std::thread::sleep(Duration::from_millis(1));
            assert!(c.bytes() <= 10_000, "{} bytes after {i}", c.bytes());
        }
        assert_eq!(c.get("00"), None, "the oldest went first");
        assert!(c.get("29").is_some());
        assert_eq!(c.bytes(), 1_000 * c.len() as u64);
        // Replacing, invalidating and clearing keep the count exact.
        c.fill("29", c.ticket("29"), big(99));
        assert_eq!(c.bytes(), 1_000 * c.len() as u64);
        c.invalidate(["29"], false);
        assert_eq!(c.bytes(), 1_000 * c.len() as u64);
        c.clear();
        assert_eq!((c.bytes(), c.len()), (0, 0));
        // A value larger than the whole budget is not cached, nor is such a list.
        let huge = CachedRecord {
            json: Bytes::from(vec![b'y'; 20_000]),
            version: 1,
        };
        assert!(!c.fill("h", c.ticket("h"), huge));
        assert!(!c.fill_list(c.list_ticket(), Bytes::from(vec![b'['; 20_000])));
        assert!(c.fill_list(c.list_ticket(), Bytes::from_static(b"[]")));
        assert_eq!(c.bytes(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_expiry_counts_miss_and_eviction() {
        let c = cache(300, 100);
        assert!(c.fill("a", c.ticket("a"), rec(1)));
        assert_eq!(c.get("a"), Some(rec(1)));
        tokio::time::advance(Duration::from_secs(299)).await;
        assert_eq!(c.get("a"), Some(rec(1)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(c.get("a"), None);
        let s = c.stats();
        assert_eq!(
            (s.hits, s.misses, s.puts, s.evictions, s.size),
            (2, 1, 1, 1, 0)
        );
        assert!((s.hit_rate - 200.0 / 3.0).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn cleanup_task_sweeps_expired_entries() {
        let c = Arc::new(cache(10, 100));
        c.fill("a", c.ticket("a"), rec(1));
        c.fill_list(c.list_ticket(), Bytes::from_static(b"[]"));
        let task = c.spawn_cleanup(Duration::from_secs(60));
        assert_eq!(c.len(), 2);
        // Let the task start its interval before the clock moves.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        tokio::time::advance(Duration::from_secs(61)).await;
        // Let the task run its tick.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(c.len(), 0);
        assert_eq!(c.stats().evictions, 2);
        task.abort();
    }

    #[test]
    fn stale_fill_is_rejected() {
        let c = cache(300, 100);
        let t = c.ticket("a"); // reader takes a ticket, then reads the old value
        c.invalidate(["a"], true); // apply commits and invalidates
        assert!(!c.fill("a", t, rec(1)), "old value must not be inserted");
        assert_eq!(c.get("a"), None);
        let lt = c.list_ticket();
        c.invalidate(["b"], true);
        assert!(!c.fill_list(lt, Bytes::from_static(b"[]")));
        assert!(c.fill("a", c.ticket("a"), rec(2)));
    }

    #[test]
    fn invalidate_all_rejects_every_ticket() {
        let c = cache(300, 100);
        let t = c.ticket("x");
        c.fill("a", c.ticket("a"), rec(1));
        c.invalidate_all();
        assert!(c.is_empty());
        assert!(!c.fill("x", t, rec(1)));
    }

    #[test]
    fn cap_evicts_oldest_first() {
        let c = cache(300, 10);
        for i in 0..11 {
            let id = format!("k{i}");
            c.fill(&id, c.ticket(&id), rec(i));
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(c.len() <= 10);
        assert_eq!(c.get("k0"), None, "the oldest entry goes first");
        assert!(c.get("k10").is_some());
        assert!(c.stats().evictions >= 1);
    }

    #[test]
    fn disabled_cache_stores_nothing() {
        let c = Cache::new(CacheConfig {
            enabled: false,
            ..Default::default()
        });
        assert!(!c.fill("a", c.ticket("a"), rec(1)));
        assert_eq!(c.get("a"), None);
        assert_eq!(c.stats().misses, 0);
    }
}
