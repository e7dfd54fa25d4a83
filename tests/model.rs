//! Property test: random operation sequences against a `HashMap` model, reopening the cache
//! between steps.

use std::collections::HashMap;
use std::time::Duration;

use dbx_concurio::caches::DiskCache;
use proptest::prelude::*;
use serde_bytes::ByteBuf;

const KEYS: &[&str] = &[
    "",
    "a",
    "b",
    "../x",
    "nul\0",
    "🦀",
    "/etc/passwd",
    "k-long-",
];

fn key(i: usize) -> String {
    match KEYS[i % KEYS.len()] {
        "k-long-" => "L".repeat(1000 + i % 3), // hashed index keys
        k => k.to_owned(),
    }
}

/// Values from (seed, len): small inline ones and some over the 32 KiB file threshold.
fn value(seed: u8, len: usize) -> ByteBuf {
    ByteBuf::from(
        (0..len)
            .map(|i| seed.wrapping_add(i as u8))
            .collect::<Vec<u8>>(),
    )
}

#[derive(Debug, Clone)]
enum Expiry {
    Never,
    Past,
    Hour,
}

#[derive(Debug, Clone)]
enum Op {
    Set(usize, u8, usize, Expiry),
    Get(usize),
    Delete(usize),
    Touch(usize, Expiry),
    GetOrLoad(usize, u8),
    Purge,
    Clear,
    Reopen,
}

fn expiry() -> impl Strategy<Value = Expiry> {
    prop_oneof![Just(Expiry::Never), Just(Expiry::Past), Just(Expiry::Hour)]
}

fn op() -> impl Strategy<Value = Op> {
    let len = prop_oneof![4 => 0usize..200, 1 => 33_000usize..40_000];
    prop_oneof![
        6 => (0..KEYS.len() + 2, any::<u8>(), len, expiry()).prop_map(|(k, s, l, e)| Op::Set(k, s, l, e)),
        6 => (0..KEYS.len() + 2).prop_map(Op::Get),
        2 => (0..KEYS.len() + 2).prop_map(Op::Delete),
        2 => (0..KEYS.len() + 2, expiry()).prop_map(|(k, e)| Op::Touch(k, e)),
        2 => (0..KEYS.len() + 2, any::<u8>()).prop_map(|(k, s)| Op::GetOrLoad(k, s)),
        1 => Just(Op::Purge),
        1 => Just(Op::Clear),
        2 => Just(Op::Reopen),
    ]
}

fn duration(e: &Expiry) -> Option<Duration> {
    match e {
        Expiry::Never => None,
        Expiry::Past => Some(Duration::ZERO),
        Expiry::Hour => Some(Duration::from_secs(3600)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn cache_matches_a_hashmap_model(ops in proptest::collection::vec(op(), 1..60)) {
        let tmp = tempfile::tempdir().unwrap();
        let open = || DiskCache::builder().directory(tmp.path()).build().unwrap();
        let mut cache = open();
        // key -> (value, expired)
        let mut model: HashMap<String, (ByteBuf, bool)> = HashMap::new();
        for op in ops {
            match op {
                Op::Set(k, seed, len, e) => {
                    let v = value(seed, len);
                    cache.set(&key(k), &v, duration(&e)).unwrap();
                    model.insert(key(k), (v, matches!(e, Expiry::Past)));
                }
                Op::Get(k) => {
                    let got = cache.get::<ByteBuf>(&key(k)).unwrap().map(|v| v.value);
                    let want = model.get(&key(k)).filter(|(_, expired)| !expired).map(|(v, _)| v.clone());
                    prop_assert_eq!(got, want);
                }
                // Expired entries may be purged by any write (lazy purge), so an operation on
                // one may find it or not; on live entries the answer is exact.
                Op::Delete(k) => {
                    let existed = cache.delete(&key(k)).unwrap();
                    match model.remove(&key(k)) {
                        Some((_, true)) => {}
                        other => prop_assert_eq!(existed, other.is_some()),
                    }
                }
                Op::Touch(k, e) => {
                    let touched = cache.touch(&key(k), duration(&e)).unwrap();
                    match model.get(&key(k)) {
                        Some((_, true)) => {}
                        other => prop_assert_eq!(touched, other.is_some()),
                    }
                    if let Some(entry) = model.get_mut(&key(k)) {
                        // An expired entry stays expired; a live one takes the new expiry.
                        entry.1 = entry.1 || matches!(e, Expiry::Past);
                    }
                }
                Op::GetOrLoad(k, seed) => {
                    let v = value(seed, 10);
                    let got = cache.get_or_load(&key(k), || Ok::<_, std::io::Error>(v.clone()), None).unwrap();
                    let entry = model.entry(key(k)).or_insert((v.clone(), false));
                    if entry.1 {
                        *entry = (v, false);
                    }
                    prop_assert_eq!(&got.value, &entry.0);
                }
                Op::Purge => {
                    let expired = model.values().filter(|(_, e)| *e).count();
                    prop_assert!(cache.purge_expired().unwrap() <= expired);
                    model.retain(|_, (_, e)| !*e);
                }
                Op::Clear => {
                    let live = model.values().filter(|(_, e)| !e).count();
                    let cleared = cache.clear().unwrap();
                    prop_assert!(live <= cleared && cleared <= model.len());
                    model.clear();
                }
                Op::Reopen => {
                    drop(cache);
                    cache = open();
                }
            }
            let mut keys = cache.keys().unwrap();
            keys.sort();
            let mut want: Vec<_> = model.iter().filter(|(_, (_, e))| !e).map(|(k, _)| k.clone()).collect();
            want.sort();
            prop_assert_eq!(keys, want);
        }
        // Value files: exactly one per live file-backed entry (none leaked by overwrites).
        let in_files = cache.entries().unwrap().iter().filter(|e| e.in_file).count();
        let files = std::fs::read_dir(tmp.path().join("blobs")).unwrap().count();
        prop_assert_eq!(files, in_files);
    }
}
