//! The read cache alone: 1,000 puts and 1,000 lookups, to compare with the original's ETS
//! figures (~8.3 puts/ms, ~1,163 lookups/ms). Run: `cargo bench --bench cache`.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use cookie_raft::cache::CachedRecord;
use cookie_raft::{Cache, CacheConfig};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const N: usize = 1000;

fn record(i: usize) -> CachedRecord {
    // About the size of a typical cookie: ~200 bytes of JSON.
    let json = format!(
        r#"{{"cookie":"cookie-{i:06}","user_id":{},"created":"1749658366","last_used":"1749658366","theme":"dark","lang":"en-GB","flags":[1,2,3],"note":"{}"}}"#,
        i + 1,
        "x".repeat(48)
    );
    CachedRecord {
        json: Bytes::from(json),
        version: i as u64 + 1,
    }
}

fn keys() -> Vec<String> {
    (0..N).map(|i| format!("cookie-{i:06}")).collect()
}

fn cache() -> Cache {
    Cache::new(CacheConfig {
        enabled: true,
        ttl: Duration::from_secs(300),
        max_entries: 100_000,
        max_bytes: 1 << 30,
    })
}

fn bench(c: &mut Criterion) {
    let keys = keys();
    let records: Vec<_> = (0..N).map(record).collect();
    let mut g = c.benchmark_group("cache");
    g.throughput(Throughput::Elements(N as u64));

    g.bench_function("put_1000", |b| {
        b.iter_batched(
            cache,
            |cache| {
                for (k, r) in keys.iter().zip(&records) {
                    cache.fill(k, cache.ticket(k), r.clone());
                }
                cache
            },
            BatchSize::SmallInput,
        )
    });

    let warm = cache();
    for (k, r) in keys.iter().zip(&records) {
        warm.fill(k, warm.ticket(k), r.clone());
    }
    g.bench_function("lookup_1000", |b| {
        b.iter(|| {
            for k in &keys {
                black_box(warm.get(k));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
