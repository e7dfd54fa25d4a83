//! Size limit, eviction order, statistics and `check()`.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use common::{child, child_role};
use dbx_concurio::caches::{DiskCache, EvictionPolicy};
use serde_bytes::ByteBuf;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Bytes the directory really occupies (allocated blocks; the sparse index counts as used).
fn disk_usage(path: &Path) -> u64 {
    let meta = std::fs::symlink_metadata(path).unwrap();
    if meta.is_dir() {
        std::fs::read_dir(path)
            .unwrap()
            .map(|e| disk_usage(&e.unwrap().path()))
            .sum()
    } else {
        meta.blocks() * 512
    }
}

fn limited(dir: &Path, limit: u64) -> DiskCache {
    DiskCache::builder()
        .directory(dir)
        .size_limit(limit)
        .build()
        .unwrap()
}

#[test]
fn child_main() {
    let Some(role) = child_role() else { return };
    // role "writer:<id>": 100 values of 100 KiB into the cache named by CACHE.
    let id = role.strip_prefix("writer:").expect("role");
    let cache = DiskCache::builder()
        .directory(std::env::var("CACHE").unwrap())
        .build()
        .unwrap();
    for i in 0..100 {
        cache
            .set(
                &format!("w{id}-{i}"),
                &ByteBuf::from(vec![i as u8; 100 * KIB as usize]),
                None,
            )
            .unwrap();
    }
}

#[test]
fn the_limit_holds_under_four_concurrent_writer_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let limit = 4 * MIB;
    drop(limited(tmp.path(), limit)); // the limit is stored in the cache for every process
    let writers: Vec<_> = (0..4)
        .map(|id| {
            child("child_main", &format!("writer:{id}"))
                .env("CACHE", tmp.path())
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut w in writers {
        assert!(w.wait().unwrap().success());
    }
    let cache = DiskCache::builder().directory(tmp.path()).build().unwrap();
    let stats = cache.stats().unwrap();
    assert_eq!(stats.size_limit, Some(limit));
    assert!(stats.bytes <= limit, "{stats:?}");
    assert_eq!(stats.entries + stats.evictions, 400, "{stats:?}");
    assert!(stats.entries >= 30, "the cache stays well used: {stats:?}");
    let used = disk_usage(tmp.path());
    assert!(
        used <= limit * 3 / 2,
        "{used} bytes on disk for a {limit} limit"
    );
}

#[test]
fn two_hundred_mib_into_a_twenty_mib_cache_stays_near_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let limit = 20 * MIB;
    let cache = limited(tmp.path(), limit);
    for i in 0..200 {
        cache
            .set(
                &format!("k{i}"),
                &ByteBuf::from(vec![i as u8; MIB as usize]),
                None,
            )
            .unwrap();
        // The entry just written is never the one evicted.
        assert!(cache.contains(&format!("k{i}")).unwrap());
    }
    let used = disk_usage(tmp.path());
    assert!(
        used <= limit * 3 / 2,
        "{used} bytes on disk for a {limit} limit"
    );
    let stats = cache.stats().unwrap();
    assert!(stats.bytes <= limit);
    assert_eq!(stats.entries + stats.evictions, 200);
    // Least recently stored go first: what is left is the newest run of keys.
    let mut kept: Vec<usize> = cache
        .keys()
        .unwrap()
        .iter()
        .map(|k| k[1..].parse().unwrap())
        .collect();
    kept.sort();
    assert_eq!(kept, ((200 - kept.len())..200).collect::<Vec<_>>());
}

#[test]
fn least_recently_used_keeps_what_was_read() {
    let tmp = tempfile::tempdir().unwrap();
    let value = ByteBuf::from(vec![0u8; 100 * KIB as usize]);
    // Room for about five values.
    let cache = DiskCache::builder()
        .directory(tmp.path())
        .size_limit(550 * KIB)
        .eviction_policy(EvictionPolicy::LeastRecentlyUsed)
        .build()
        .unwrap();
    for i in 0..5 {
        cache.set(&format!("k{i}"), &value, None).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1100)); // uses are recorded at 1 s granularity
    assert!(cache.get::<ByteBuf>("k0").unwrap().is_some());
    for i in 5..8 {
        cache.set(&format!("k{i}"), &value, None).unwrap();
    }
    let keys = cache.keys().unwrap();
    assert!(
        keys.contains(&"k0".to_string()),
        "read entry survived: {keys:?}"
    );
    assert!(
        !keys.contains(&"k1".to_string()),
        "oldest unread entry went first: {keys:?}"
    );

    // The same sequence under the default policy evicts k0.
    let tmp = tempfile::tempdir().unwrap();
    let cache = limited(tmp.path(), 550 * KIB);
    for i in 0..5 {
        cache.set(&format!("k{i}"), &value, None).unwrap();
    }
    assert!(cache.get::<ByteBuf>("k0").unwrap().is_some());
    for i in 5..8 {
        cache.set(&format!("k{i}"), &value, None).unwrap();
    }
    assert!(!cache.contains("k0").unwrap());
}

#[test]
fn stats_add_up() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let cache = DiskCache::builder().directory(tmp.path()).build().unwrap();
        for i in 0..10u32 {
            cache.set(&format!("k{i}"), &i, None).unwrap();
        }
        for i in 0..15u32 {
            let _ = cache.get::<u32>(&format!("k{i}")).unwrap(); // 10 hits, 5 misses
        }
        let _ = cache
            .get_or_load("k0", || Ok::<_, std::io::Error>(0u32), None)
            .unwrap(); // hit
        let _ = cache
            .get_or_load("new", || Ok::<_, std::io::Error>(0u32), None)
            .unwrap(); // miss
        let stats = cache.stats().unwrap();
        assert_eq!(
            (stats.entries, stats.hits, stats.misses, stats.evictions),
            (11, 11, 6, 0)
        );
        assert_eq!(stats.size_limit, None);
        assert!(stats.bytes > 11 * 40, "{stats:?}");
        cache.delete("new").unwrap();
        assert_eq!(cache.stats().unwrap().entries, 10);
    }
    // Counters are shared: a new handle (as another process would) sees them.
    let stats = DiskCache::builder()
        .directory(tmp.path())
        .build()
        .unwrap()
        .stats()
        .unwrap();
    assert_eq!((stats.entries, stats.hits, stats.misses), (10, 11, 6));
}

#[test]
fn expired_entries_are_purged_lazily_by_writes() {
    let (_tmp, cache) = common::temp_cache();
    for i in 0..10 {
        cache
            .set(&format!("e{i}"), &i, Some(Duration::from_millis(1)))
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(20));
    cache.set("trigger", &0, None).unwrap();
    assert_eq!(
        cache.entries().unwrap().len(),
        1,
        "expired entries went with the next write"
    );
}

#[test]
fn check_repairs_planted_debris() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = DiskCache::builder().directory(tmp.path()).build().unwrap();
    let big = ByteBuf::from(vec![1u8; 50_000]);
    for i in 0..3 {
        cache.set(&format!("big{i}"), &big, None).unwrap();
    }
    cache.set("small", &1u8, None).unwrap();
    let dir = cache.directory().to_owned();
    let long_ago = SystemTime::now() - Duration::from_secs(3600);
    let plant = |path: &Path| {
        std::fs::write(path, b"debris").unwrap();
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
    };
    plant(&dir.join("blobs/v-orphan0000000000000000.blob"));
    plant(&dir.join(".tmpABC123"));
    plant(&dir.join(".key-locks/foreign.lock"));
    // A fresh orphan may belong to a write in progress: left alone.
    std::fs::write(dir.join("blobs/v-inflight000000000000000.blob"), b"x").unwrap();
    // One entry loses its value file.
    let victim = std::fs::read_dir(dir.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            !p.to_string_lossy().contains("orphan") && !p.to_string_lossy().contains("inflight")
        })
        .unwrap();
    std::fs::remove_file(victim).unwrap();

    let report = cache.check().unwrap();
    assert_eq!(
        (report.entries, report.removed_entries, report.removed_files),
        (3, 1, 3),
        "{report:?}"
    );
    assert!(!dir.join("blobs/v-orphan0000000000000000.blob").exists());
    assert!(!dir.join(".tmpABC123").exists());
    assert!(!dir.join(".key-locks/foreign.lock").exists());
    assert!(dir.join("blobs/v-inflight000000000000000.blob").exists());
    assert_eq!(cache.stats().unwrap().entries, 3);
    assert_eq!(cache.keys().unwrap().len(), 3);
    // A second check finds nothing more to do.
    let again = cache.check().unwrap();
    assert_eq!((again.removed_entries, again.removed_files), (0, 0));
}

/// Without a size limit writes skip the eviction order; a limit set later (by another
/// handle, on a cache filled without one) must still evict the oldest stores first, and
/// under LRU keep what was read meanwhile.
#[test]
fn a_limit_set_on_a_cache_filled_without_one_evicts_the_oldest_first() {
    for policy in [
        EvictionPolicy::LeastRecentlyStored,
        EvictionPolicy::LeastRecentlyUsed,
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let value = ByteBuf::from(vec![1u8; 40 * KIB as usize]);
        {
            let cache = DiskCache::builder()
                .directory(tmp.path())
                .eviction_policy(policy)
                .build()
                .unwrap();
            for i in 0..20 {
                cache.set(&format!("k{i:02}"), &value, None).unwrap();
            }
            // Rewritten last: the newest store, though its key sorts first.
            cache.set("k00", &value, None).unwrap();
            if policy == EvictionPolicy::LeastRecentlyUsed {
                std::thread::sleep(Duration::from_millis(1100)); // past the LRU granularity
                cache.get::<ByteBuf>("k01").unwrap().unwrap(); // used: kept
            }
        }
        let cache = DiskCache::builder()
            .directory(tmp.path())
            .eviction_policy(policy)
            .size_limit(500 * KIB)
            .build()
            .unwrap();
        cache.set("new", &value, None).unwrap();
        let keys = cache.keys().unwrap();
        assert!(keys.len() < 15, "{policy:?}: {keys:?}");
        assert!(keys.contains(&"new".to_string()), "{policy:?}");
        assert!(keys.contains(&"k00".to_string()), "{policy:?}: {keys:?}");
        assert!(keys.contains(&"k19".to_string()), "{policy:?}: {keys:?}");
        assert!(!keys.contains(&"k02".to_string()), "{policy:?}: {keys:?}");
        assert_eq!(
            keys.contains(&"k01".to_string()),
            policy == EvictionPolicy::LeastRecentlyUsed,
            "{policy:?}: {keys:?}"
        );
    }
}
