//! DiskCache behaviour in one process: API, expiry, loaders, hostile keys, big values, types.

mod common;

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, SystemTime};

use common::temp_cache;
use dbx_concurio::Error;
use dbx_concurio::caches::{DiskCache, DiskCacheValue};

#[test]
fn api_shape_compiles_as_documented() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let cache = DiskCache::builder()
        .directory(tmp.path())
        .name("my_cache")
        .build()?;
    let dir: &std::path::Path = cache.directory();
    assert_eq!(dir, tmp.path().join("my_cache").canonicalize()?);

    let v: DiskCacheValue<String> = cache.get_or_load(
        "expensive_computation",
        || Ok::<_, std::io::Error>("computed".to_string()),
        Some(Duration::from_secs(3600)),
    )?;
    let (value, loaded_at): (&String, SystemTime) = (&v.value, v.load_timestamp);
    assert_eq!(value, "computed");
    assert!(loaded_at <= SystemTime::now());

    cache.set("k", &vec![1u32, 2, 3], Some(Duration::from_secs(60)))?;
    let got: Option<DiskCacheValue<Vec<u32>>> = cache.get("k")?;
    assert_eq!(got.map(|v| v.value), Some(vec![1, 2, 3]));
    let existed: bool = cache.delete("k")?;
    assert!(existed);
    assert!(!cache.delete("k")?);
    assert!(cache.get::<Vec<u32>>("k")?.is_none());
    Ok(())
}

#[test]
fn cache_is_send_sync_and_shared_through_arc() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<DiskCache>();
    assert_send_sync::<Error>();
    let (_tmp, cache) = temp_cache();
    let cache = Arc::new(cache);
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let cache = Arc::clone(&cache);
            thread::spawn(move || cache.set(&format!("t{i}"), &i, None).unwrap())
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(cache.len().unwrap(), 8);
}

#[test]
fn errors_box_into_dyn_error() {
    fn open() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let (_tmp, cache) = temp_cache();
        cache.set("s", "text", None)?;
        let _: Option<DiskCacheValue<u64>> = cache.get("s")?;
        Ok(())
    }
    let err = open().unwrap_err();
    assert!(err.downcast_ref::<Error>().is_some(), "{err}");
}

#[test]
fn set_get_overwrite_and_metadata() {
    let (_tmp, cache) = temp_cache();
    cache.set("a", "one", None).unwrap();
    cache.set("a", "two", None).unwrap();
    let v = cache.get::<String>("a").unwrap().unwrap();
    assert_eq!(v.value, "two");
    assert_eq!(v.expires_at, None);
    assert!(cache.contains("a").unwrap());
    assert!(!cache.contains("b").unwrap());
    assert_eq!(cache.keys().unwrap(), vec!["a".to_string()]);
}

#[test]
fn set_expiry_hides_the_value_and_purge_removes_it() {
    let (_tmp, cache) = temp_cache();
    cache
        .set("short", &1u8, Some(Duration::from_millis(150)))
        .unwrap();
    cache
        .set("long", &2u8, Some(Duration::from_secs(600)))
        .unwrap();
    cache.set("forever", &3u8, None).unwrap();
    assert_eq!(cache.get::<u8>("short").unwrap().map(|v| v.value), Some(1));
    thread::sleep(Duration::from_millis(200));
    assert!(cache.get::<u8>("short").unwrap().is_none());
    assert!(!cache.contains("short").unwrap());
    assert_eq!(cache.len().unwrap(), 2);
    let listed: Vec<_> = cache
        .entries()
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.expired))
        .collect();
    assert!(listed.contains(&("short".into(), true)), "{listed:?}");
    assert_eq!(cache.purge_expired().unwrap(), 1);
    assert_eq!(cache.entries().unwrap().len(), 2);
    assert_eq!(
        cache.get::<u8>("forever").unwrap().map(|v| v.value),
        Some(3)
    );
}

#[test]
fn touch_extends_or_removes_expiry() {
    let (_tmp, cache) = temp_cache();
    cache
        .set("k", &1u8, Some(Duration::from_millis(200)))
        .unwrap();
    assert!(cache.touch("k", None).unwrap());
    thread::sleep(Duration::from_millis(250));
    assert!(
        cache.get::<u8>("k").unwrap().is_some(),
        "touch(None) removed the expiry"
    );
    assert!(cache.touch("k", Some(Duration::from_millis(50))).unwrap());
    thread::sleep(Duration::from_millis(100));
    assert!(cache.get::<u8>("k").unwrap().is_none());
    assert!(!cache.touch("missing", None).unwrap());
}

#[test]
fn get_or_load_reloads_once_the_entry_is_older_than_expire() {
    let (_tmp, cache) = temp_cache();
    let calls = AtomicUsize::new(0);
    let load = || {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        Ok::<_, std::io::Error>(n)
    };
    let expire = Some(Duration::from_millis(300));
    let first = cache.get_or_load("k", load, expire).unwrap();
    let second = cache.get_or_load("k", load, expire).unwrap();
    assert_eq!((first.value, second.value), (1, 1));
    assert_eq!(first.load_timestamp, second.load_timestamp);
    thread::sleep(Duration::from_millis(350));
    let third = cache.get_or_load("k", load, expire).unwrap();
    assert_eq!(third.value, 2);
    assert!(third.load_timestamp > first.load_timestamp);
    // A value set without expiry is still "stale" for a caller that wants it fresh.
    cache.set("old", &0usize, None).unwrap();
    thread::sleep(Duration::from_millis(20));
    let fresh = cache
        .get_or_load("old", load, Some(Duration::from_millis(10)))
        .unwrap();
    assert_eq!(fresh.value, 3);
    // ...and never stale with expire = None.
    let kept = cache.get_or_load("old", load, None).unwrap();
    assert_eq!(kept.value, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[test]
fn sixteen_threads_race_and_the_loader_runs_once() {
    let (_tmp, cache) = temp_cache();
    let cache = Arc::new(cache);
    let calls = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(std::sync::Barrier::new(16));
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let (cache, calls, barrier) = (cache.clone(), calls.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                cache
                    .get_or_load(
                        "shared",
                        || {
                            calls.fetch_add(1, Ordering::SeqCst);
                            thread::sleep(Duration::from_millis(200));
                            Ok::<_, std::io::Error>("v".to_string())
                        },
                        None,
                    )
                    .unwrap()
                    .value
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), "v");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn loader_error_is_returned_inside_and_nothing_is_stored() {
    let (_tmp, cache) = temp_cache();
    let err = cache
        .get_or_load::<String, _, _>(
            "k",
            || {
                Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "nope",
                ))
            },
            None,
        )
        .unwrap_err();
    let Error::Loader { key, source } = &err else {
        panic!("expected Error::Loader, got {err:?}");
    };
    assert_eq!(key, "k");
    let io = source
        .downcast_ref::<std::io::Error>()
        .expect("loader error reachable");
    assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(std::error::Error::source(&err).is_some());
    assert!(cache.get::<String>("k").unwrap().is_none());
    // The next caller loads normally.
    let v = cache
        .get_or_load("k", || Ok::<_, std::io::Error>("ok".to_string()), None)
        .unwrap();
    assert_eq!(v.value, "ok");
}

#[test]
fn a_waiter_runs_its_own_load_after_the_first_loader_fails() {
    let (_tmp, cache) = temp_cache();
    let cache = Arc::new(cache);
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let failing = {
        let cache = cache.clone();
        thread::spawn(move || {
            cache.get_or_load::<u32, _, _>(
                "k",
                || {
                    started_tx.send(()).unwrap();
                    thread::sleep(Duration::from_millis(300));
                    Err("first loader fails")
                },
                None,
            )
        })
    };
    started_rx.recv().unwrap();
    let waiter = cache
        .get_or_load("k", || Ok::<_, std::io::Error>(7u32), None)
        .unwrap();
    assert_eq!(waiter.value, 7);
    assert!(matches!(failing.join().unwrap(), Err(Error::Loader { .. })));
}

#[test]
fn a_panicking_loader_releases_its_locks() {
    let (_tmp, cache) = temp_cache();
    let result = catch_unwind(AssertUnwindSafe(|| {
        cache.get_or_load::<u32, std::io::Error, _>("k", || panic!("loader panicked"), None)
    }));
    assert!(result.is_err(), "the panic propagates");
    // The same key, from another thread: its loader runs (nothing was stored, no lock is
    // left behind, nothing is poisoned)...
    let cache = Arc::new(cache);
    let c2 = cache.clone();
    let other = thread::spawn(move || {
        let mut ran = false;
        let v = c2
            .get_or_load(
                "k",
                || {
                    ran = true;
                    Ok::<_, std::io::Error>(1u32)
                },
                None,
            )
            .unwrap();
        (v.value, ran)
    });
    assert_eq!(other.join().unwrap(), (1, true));
    // ...and the panicking thread itself now reads that value.
    let v = cache
        .get_or_load("k", || Ok::<_, std::io::Error>(2u32), None)
        .unwrap();
    assert_eq!(v.value, 1);
}

#[test]
fn hostile_keys_round_trip_and_stay_inside_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path().join("parent");
    std::fs::create_dir(&parent).unwrap();
    let cache = DiskCache::builder()
        .directory(&parent)
        .name("c")
        .build()
        .unwrap();
    let keys = [
        String::new(),
        "/".into(),
        "..".into(),
        "../../../../etc/passwd".into(),
        "/absolute/path".into(),
        "nul\0inside".into(),
        "emoji 🦀🔥".into(),
        "x".repeat(4096),
        "y".repeat(401),
        "y".repeat(400),
        "\\windows\\path".into(),
        ".key-locks/000.lock".into(),
    ];
    for (i, key) in keys.iter().enumerate() {
        cache.set(key, &i, None).unwrap();
    }
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            cache.get::<usize>(key).unwrap().map(|v| v.value),
            Some(i),
            "key {key:?}"
        );
    }
    let listed: BTreeSet<String> = cache.keys().unwrap().into_iter().collect();
    assert_eq!(listed, keys.iter().cloned().collect());
    // Nothing appeared next to the cache directory, and inside it only the known layout.
    let siblings: Vec<_> = std::fs::read_dir(&parent)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(siblings, vec![std::ffi::OsString::from("c")]);
    let inside: BTreeSet<String> = std::fs::read_dir(parent.join("c"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for name in &inside {
        assert!(
            [
                ".dbx-concurio",
                ".state",
                ".counters",
                ".open.lock",
                ".key-locks",
                "index",
                "blobs"
            ]
            .contains(&name.as_str()),
            "unexpected {name}"
        );
    }
    for (i, key) in keys.iter().enumerate() {
        let v = cache
            .get_or_load(key, || Ok::<_, std::io::Error>(0usize), None)
            .unwrap();
        assert_eq!(v.value, i);
        assert!(cache.delete(key).unwrap());
    }
    assert_eq!(cache.len().unwrap(), 0);
}

#[test]
fn sixteen_mib_values_round_trip() {
    let (_tmp, cache) = temp_cache();
    let big: Vec<u8> = (0..16 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let bytes = serde_bytes::ByteBuf::from(big.clone());
    cache.set("big", &bytes, None).unwrap();
    let got = cache.get::<serde_bytes::ByteBuf>("big").unwrap().unwrap();
    assert_eq!(got.value.as_slice(), big.as_slice());
    // Overwriting and deleting remove the old value file.
    cache
        .set("big", &serde_bytes::ByteBuf::from(vec![1u8; 100_000]), None)
        .unwrap();
    cache.set("big", &"small now", None).unwrap();
    assert_eq!(
        cache.get::<String>("big").unwrap().unwrap().value,
        "small now"
    );
    let blobs = std::fs::read_dir(cache.directory().join("blobs"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "replaced value files are removed");
    let v = cache
        .get_or_load(
            "big2",
            || Ok::<_, std::io::Error>(vec![7u64; 1 << 20]),
            None,
        )
        .unwrap();
    assert_eq!(v.value.len(), 1 << 20);
    assert_eq!(
        cache.get::<Vec<u64>>("big2").unwrap().unwrap().value,
        vec![7u64; 1 << 20]
    );
}

#[test]
fn reading_the_wrong_type_is_an_error() {
    #[derive(serde::Serialize, serde::Deserialize, Debug)]
    struct Point {
        x: i32,
        y: i32,
    }
    #[derive(serde::Serialize, serde::Deserialize, Debug)]
    struct Named {
        name: String,
    }
    let (_tmp, cache) = temp_cache();
    cache.set("vec", &vec![1u32, 2, 3], None).unwrap();
    cache.set("point", &Point { x: 1, y: 2 }, None).unwrap();
    cache.set("text", "hello", None).unwrap();
    for err in [
        cache.get::<String>("vec").map(|_| ()),
        cache.get::<Named>("point").map(|_| ()),
        cache.get::<Point>("text").map(|_| ()),
        cache.get::<u8>("vec").map(|_| ()),
    ] {
        let err = err.unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    }
    assert_eq!(cache.get::<Point>("point").unwrap().unwrap().value.y, 2);
}

#[test]
fn clear_empties_the_cache() {
    let (_tmp, cache) = temp_cache();
    for i in 0..50 {
        cache
            .set(&i.to_string(), &vec![i as u8; 40_000], None)
            .unwrap();
    }
    assert_eq!(cache.clear().unwrap(), 50);
    assert!(cache.is_empty().unwrap());
    assert_eq!(
        std::fs::read_dir(cache.directory().join("blobs"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn values_survive_reopening_and_two_handles_share_one_store() {
    let tmp = tempfile::tempdir().unwrap();
    let open = || DiskCache::builder().directory(tmp.path()).build().unwrap();
    {
        let a = open();
        let b = open();
        a.set("k", "v", None).unwrap();
        assert_eq!(b.get::<String>("k").unwrap().unwrap().value, "v");
    }
    let c = open();
    assert_eq!(c.get::<String>("k").unwrap().unwrap().value, "v");
}

#[test]
fn lock_timeout_reports_busy() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Arc::new(
        DiskCache::builder()
            .directory(tmp.path())
            .lock_timeout(Duration::from_millis(100))
            .build()
            .unwrap(),
    );
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let slow = {
        let cache = cache.clone();
        thread::spawn(move || {
            cache.get_or_load(
                "k",
                || {
                    started_tx.send(()).unwrap();
                    thread::sleep(Duration::from_millis(600));
                    Ok::<_, std::io::Error>(1u8)
                },
                None,
            )
        })
    };
    started_rx.recv().unwrap();
    let err = cache
        .get_or_load("k", || Ok::<_, std::io::Error>(2u8), None)
        .unwrap_err();
    assert!(err.is_busy(), "{err:?}");
    assert_eq!(slow.join().unwrap().unwrap().value, 1);
}

#[test]
fn add_stores_only_when_absent_or_expired() {
    let (_tmp, cache) = temp_cache();
    assert!(cache.add("k", "first", None).unwrap());
    assert!(!cache.add("k", "second", None).unwrap());
    assert_eq!(cache.get::<String>("k").unwrap().unwrap().value, "first");
    cache
        .set("e", "old", Some(Duration::from_millis(1)))
        .unwrap();
    thread::sleep(Duration::from_millis(5));
    assert!(cache.add("e", "new", None).unwrap());
    assert_eq!(cache.get::<String>("e").unwrap().unwrap().value, "new");
    // A big value that is not stored leaves no value file behind.
    assert!(
        !cache
            .add("k", &serde_bytes::ByteBuf::from(vec![0u8; 100_000]), None)
            .unwrap()
    );
    assert_eq!(
        std::fs::read_dir(cache.directory().join("blobs"))
            .unwrap()
            .count(),
        0
    );
}
