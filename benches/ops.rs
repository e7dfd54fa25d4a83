//! `cargo bench`: every operation for 100 B, 10 KiB, 1 MiB and 16 MiB values, over 1 000 keys
//! (fewer for the big sizes: at most 256 MiB of values), plus get and open at 1 000 000 keys.
//! The side-by-side comparison with python-diskcache is `bench/compare.sh`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dbx_concurio::caches::DiskCache;
use serde_bytes::ByteBuf;
use tempfile::TempDir;

const SIZES: [(&str, usize); 4] = [
    ("100B", 100),
    ("10KiB", 10 << 10),
    ("1MiB", 1 << 20),
    ("16MiB", 16 << 20),
];

fn key_count(size: usize) -> usize {
    (256usize << 20).div_ceil(size).min(1000)
}

fn filled(keys: usize, size: usize) -> (TempDir, DiskCache, Vec<String>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = DiskCache::builder()
        .directory(tmp.path())
        .build()
        .expect("open");
    let value = ByteBuf::from(vec![7u8; size]);
    let names: Vec<String> = (0..keys).map(|i| format!("key{i}")).collect();
    for k in &names {
        cache.set(k, &value, None).expect("set");
    }
    (tmp, cache, names)
}

fn per_size(c: &mut Criterion) {
    for (label, size) in SIZES {
        let (_tmp, cache, keys) = filled(key_count(size), size);
        let value = ByteBuf::from(vec![9u8; size]);
        let mut group = c.benchmark_group(label);
        group.throughput(Throughput::Bytes(size as u64));
        if size >= 1 << 20 {
            group.sample_size(10);
        }
        let mut i = 0usize;
        group.bench_function("get_hit", |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                black_box(cache.get::<ByteBuf>(&keys[i % keys.len()]).expect("get"))
            })
        });
        group.bench_function("get_or_load_hit", |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let loader = || Ok::<_, std::io::Error>(ByteBuf::new());
                black_box(
                    cache
                        .get_or_load(&keys[i % keys.len()], loader, None)
                        .expect("gol"),
                )
            })
        });
        group.bench_function("set", |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                cache.set(&keys[i % keys.len()], &value, None).expect("set")
            })
        });
        let mut n = 0u64;
        group.bench_function("get_or_load_miss", |b| {
            b.iter(|| {
                n += 1;
                let loader = || Ok::<_, std::io::Error>(value.clone());
                black_box(
                    cache
                        .get_or_load(&format!("miss{n}"), loader, None)
                        .expect("gol"),
                )
            })
        });
        group.bench_function("delete", |b| {
            b.iter_batched(
                || {
                    n += 1;
                    let key = format!("del{n}");
                    cache.set(&key, &value, None).expect("set");
                    key
                },
                |key| cache.delete(&key).expect("delete"),
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
    let (_tmp, cache, _) = filled(1000, 100);
    c.bench_function("100B/get_miss", |b| {
        b.iter(|| black_box(cache.get::<ByteBuf>("absent").expect("get")))
    });
}

fn million_keys(c: &mut Criterion) {
    let (tmp, cache, keys) = filled(1_000_000, 100);
    let mut group = c.benchmark_group("1M_keys");
    group.sample_size(20);
    let mut i = 0usize;
    group.bench_function(BenchmarkId::new("get_hit", "100B"), |b| {
        b.iter(|| {
            // A stride that walks the whole key space, so the B-tree is exercised, not one page.
            i = (i + 7919) % keys.len();
            black_box(cache.get::<ByteBuf>(&keys[i]).expect("get"))
        })
    });
    drop(cache);
    group.bench_function("open", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let cache = DiskCache::builder()
                    .directory(tmp.path())
                    .build()
                    .expect("open");
                total += start.elapsed();
                drop(cache);
            }
            total
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = config(); targets = per_size, million_keys }
criterion_main!(benches);
