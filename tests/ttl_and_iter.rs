//! A per-cache default expiry set once on the builder (`time_to_live`, used by `insert` and
//! `try_get_with`), and `iter()`, the lazy walk over entries.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use common::temp_cache;
use dbx_concurio::caches::DiskCache;

#[test]
fn time_to_live_is_used_by_insert_and_try_get_with_and_none_still_means_never() {
    let tmp = tempfile::tempdir().unwrap();
    let ttl = Duration::from_millis(300);
    let cache = DiskCache::builder()
        .directory(tmp.path())
        .time_to_live(ttl)
        .build()
        .unwrap();
    let loads = AtomicUsize::new(0);
    let loader = || {
        loads.fetch_add(1, Ordering::SeqCst);
        Ok::<_, std::io::Error>("loaded".to_string())
    };
    let before = SystemTime::now();
    cache.insert("inserted", "x").unwrap();
    cache.set("never", "y", None).unwrap();
    let v = cache.try_get_with("loaded", loader).unwrap();
    assert_eq!(v.value, "loaded");
    let expires = v.expires_at.expect("the default expiry");
    assert!(expires >= before + ttl && expires <= SystemTime::now() + ttl);
    cache.try_get_with("loaded", loader).unwrap();
    cache.get_or_load("pinned", loader, None).unwrap();
    assert_eq!(loads.load(Ordering::SeqCst), 2);
    let inserted = cache.get::<String>("inserted").unwrap().unwrap();
    assert!(inserted.expires_at.is_some());
    assert_eq!(
        cache.get::<String>("never").unwrap().unwrap().expires_at,
        None
    );

    std::thread::sleep(ttl + Duration::from_millis(100));
    assert!(cache.get::<String>("inserted").unwrap().is_none());
    assert_eq!(cache.get::<String>("never").unwrap().unwrap().value, "y");
    cache.try_get_with("loaded", loader).unwrap(); // stale: loads again
    cache.get_or_load("pinned", loader, None).unwrap(); // explicit None: never stale
    assert_eq!(loads.load(Ordering::SeqCst), 3);
}

#[test]
fn without_time_to_live_insert_and_try_get_with_never_expire() {
    let (_tmp, cache) = temp_cache();
    cache.insert("k", &vec![1u8, 2]).unwrap();
    assert_eq!(cache.get::<Vec<u8>>("k").unwrap().unwrap().expires_at, None);
    let v = cache
        .try_get_with("l", || Ok::<_, std::io::Error>(5u32))
        .unwrap();
    assert_eq!((v.value, v.expires_at), (5, None));
}

#[test]
fn iter_walks_every_unexpired_entry_once_across_batches() {
    let (_tmp, cache) = temp_cache();
    let mut expected = Vec::new();
    for i in 0..5000 {
        let key = format!("key{i:05}");
        cache.set(&key, &i, None).unwrap();
        expected.push(key);
    }
    let long = "L".repeat(1000); // hashed index key: listed after the literal ones
    cache.set(&long, "long", None).unwrap();
    expected.push(long);
    cache
        .set("key-expired", "x", Some(Duration::from_millis(1)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));

    let walked: Vec<String> = cache.iter().map(|e| e.unwrap().key).collect();
    assert_eq!(walked, expected);
    assert_eq!(walked, cache.keys().unwrap());
    let first = cache.iter().next().unwrap().unwrap();
    assert_eq!((first.key.as_str(), first.in_file), ("key00000", false));
}

#[test]
fn iter_tolerates_writes_during_the_walk() {
    let (_tmp, cache) = temp_cache();
    for i in 0..3000 {
        cache.set(&format!("k{i:04}"), &i, None).unwrap();
    }
    let mut seen = BTreeSet::new();
    for (n, entry) in cache.iter().enumerate() {
        let key = entry.unwrap().key;
        assert!(seen.insert(key.clone()), "{key} seen twice");
        if n == 10 {
            // Delete some entries ahead of the walk, add others behind and ahead of it.
            for i in (2000..3000).step_by(2) {
                cache.delete(&format!("k{i:04}")).unwrap();
            }
            cache.set("a-behind", "x", None).unwrap();
            cache.set("z-ahead", "x", None).unwrap();
        }
    }
    for i in 0..3000 {
        let key = format!("k{i:04}");
        let deleted = i >= 2000 && i % 2 == 0;
        assert_eq!(seen.contains(&key), !deleted, "{key}");
    }
    assert!(seen.contains("z-ahead"));
    assert!(!seen.contains("a-behind"));
}
