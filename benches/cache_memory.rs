//! Memory per cached entry, measured with a counting allocator (not estimated).
//! Run: `cargo bench --bench cache_memory`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cookie_raft::cache::CachedRecord;
use cookie_raft::{Cache, CacheConfig};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let n = 100_000usize;
    // Build keys and values first: they are the payload the caller already holds.
    let keys: Vec<String> = (0..n).map(|i| format!("cookie-{i:06}")).collect();
    let values: Vec<CachedRecord> = (0..n)
        .map(|i| CachedRecord {
            json: Bytes::from(format!(
                r#"{{"cookie":"cookie-{i:06}","user_id":{i},"pad":"{}"}}"#,
                "x".repeat(150)
            )),
            version: i as u64,
        })
        .collect();
    let payload: usize = values.iter().map(|v| v.json.len()).sum::<usize>()
        + keys.iter().map(String::len).sum::<usize>();

    let cache = Cache::new(CacheConfig {
        enabled: true,
        ttl: Duration::from_secs(300),
        max_entries: n * 2,
        max_bytes: usize::MAX,
    });
    let before = LIVE.load(Ordering::SeqCst);
    for (k, v) in keys.iter().zip(&values) {
        // The cache stores its own copy of the key; the JSON is shared (`Bytes` is refcounted).
        cache.fill(k, cache.ticket(k), v.clone());
    }
    let after = LIVE.load(Ordering::SeqCst);
    let total = (after - before) as f64 / n as f64;
    let key_bytes = keys.iter().map(String::len).sum::<usize>() as f64 / n as f64;
    println!("entries: {n}");
    println!(
        "average JSON value: {:.0} bytes (shared with the store read, not copied)",
        (payload as f64 / n as f64) - key_bytes
    );
    println!("memory the cache allocated per entry: {total:.1} bytes");
    println!(
        "  of which the key copy: {key_bytes:.1} bytes; overhead beyond the key: {:.1} bytes",
        total - key_bytes
    );
    assert_eq!(cache.len(), n);
}
