//! How values are stored: byte and string types as MessagePack bin/str (not arrays of
//! integers), entries of the earlier array format still readable, and the raw byte API
//! (`set_bytes` / `get_bytes` / `with_bytes`) with every guarantee of the serde path.

mod common;

use std::time::Duration;

use common::{blob_files, temp_cache};
use dbx_concurio::Error;
use dbx_concurio::caches::DiskCache;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// The size the cache reports for `key`'s encoded value.
fn stored_size(cache: &DiskCache, key: &str) -> u64 {
    cache
        .entries()
        .unwrap()
        .into_iter()
        .find(|e| e.key == key)
        .map(|e| e.size)
        .unwrap()
}

fn bytes_of<T: serde::de::DeserializeOwned>(cache: &DiskCache, key: &str) -> T {
    cache.get::<T>(key).unwrap().unwrap().value
}

/// A byte vector that serializes as serde's default sequence: what `set(&Vec<u8>)` wrote
/// before byte values were stored as bin (an array of integers).
struct OldFormatVec(Vec<u8>);

impl Serialize for OldFormatVec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(&self.0)
    }
}

#[test]
fn a_100_byte_vec_takes_102_bytes_not_203() {
    let (_tmp, cache) = temp_cache();
    let value = vec![0xFFu8; 100];
    cache.set("vec", &value, None).unwrap();
    cache.set("slice", &value[..], None).unwrap();
    cache
        .set("boxed", &value.clone().into_boxed_slice(), None)
        .unwrap();
    cache.set("text", &"x".repeat(100), None).unwrap();
    for key in ["vec", "slice", "boxed", "text"] {
        // 0xc4 (bin 8) / 0xd9 (str 8), one length byte, the 100 bytes.
        assert_eq!(stored_size(&cache, key), 102, "{key}");
    }
    cache.set("old", &OldFormatVec(value), None).unwrap();
    assert_eq!(stored_size(&cache, "old"), 203);
}

#[test]
fn a_16_mib_vec_is_stored_as_16_mib() {
    let (_tmp, cache) = temp_cache();
    let value: Vec<u8> = (0..16 << 20).map(|i: u32| (i * 7) as u8).collect();
    cache.set("big", &value, None).unwrap();
    assert_eq!(stored_size(&cache, "big"), (16 << 20) + 5);
    assert_eq!(bytes_of::<Vec<u8>>(&cache, "big"), value);
}

#[test]
fn every_byte_and_string_type_round_trips_as_the_type_asked_for() {
    let (_tmp, cache) = temp_cache();
    let value: Vec<u8> = (0..=255).collect();
    let slice: &[u8] = &value;
    cache.set("vec", &value, None).unwrap();
    cache.set("slice", slice, None).unwrap();
    cache.set("slice-ref", &slice, None).unwrap();
    cache
        .set("boxed", &value.clone().into_boxed_slice(), None)
        .unwrap();
    cache
        .set("bytebuf", &ByteBuf::from(value.clone()), None)
        .unwrap();
    for key in ["vec", "slice", "slice-ref", "boxed", "bytebuf"] {
        assert_eq!(bytes_of::<Vec<u8>>(&cache, key), value, "{key}");
        assert_eq!(
            bytes_of::<Box<[u8]>>(&cache, key),
            value.clone().into_boxed_slice(),
            "{key}"
        );
        assert_eq!(bytes_of::<ByteBuf>(&cache, key).into_vec(), value, "{key}");
        assert_eq!(cache.get_bytes(key).unwrap().unwrap().value, value, "{key}");
        assert_eq!(stored_size(&cache, key), 259, "{key}"); // bin 16: 0xc5, 2 length bytes
    }
    let empty: Vec<u8> = Vec::new();
    cache.set("empty", &empty, None).unwrap();
    assert_eq!(bytes_of::<Vec<u8>>(&cache, "empty"), empty);

    for (key, text) in [("s", "héllo"), ("long", &"ü".repeat(40_000)[..]), ("e", "")] {
        cache.set(key, text, None).unwrap();
        assert_eq!(bytes_of::<String>(&cache, key), text);
        cache.set(key, &text.to_string(), None).unwrap();
        assert_eq!(bytes_of::<String>(&cache, key), text);
        cache.set(key, &text, None).unwrap();
        assert_eq!(bytes_of::<String>(&cache, key), text);
        assert_eq!(
            cache.get_bytes(key).unwrap().unwrap().value,
            text.as_bytes()
        );
    }
    // Not bytes, not strings: still MessagePack through serde.
    cache.set("nums", &vec![1u16, 300], None).unwrap();
    assert_eq!(bytes_of::<Vec<u16>>(&cache, "nums"), vec![1, 300]);
    let err = cache.get_bytes("nums").unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    assert!(matches!(
        cache.get::<String>("vec").unwrap_err(),
        Error::Decode { .. }
    ));
}

#[cfg(feature = "bytes")]
#[test]
fn bytes_bytes_round_trips() {
    let (_tmp, cache) = temp_cache();
    let value = bytes::Bytes::from(vec![0xFFu8; 100]);
    cache.set("b", &value, None).unwrap();
    assert_eq!(stored_size(&cache, "b"), 102);
    assert_eq!(bytes_of::<bytes::Bytes>(&cache, "b"), value);
    cache.set_bytes("raw", &value, None).unwrap();
    assert_eq!(bytes_of::<bytes::Bytes>(&cache, "raw"), value);
}

#[test]
fn entries_of_the_old_array_format_still_read() {
    let (_tmp, cache) = temp_cache();
    let value: Vec<u8> = (0..=255).cycle().take(1000).collect();
    cache
        .set("old", &OldFormatVec(value.clone()), None)
        .unwrap();
    cache
        .set("old-big", &OldFormatVec(vec![200u8; 40_000]), None)
        .unwrap();
    assert_eq!(bytes_of::<Vec<u8>>(&cache, "old"), value);
    assert_eq!(
        bytes_of::<Box<[u8]>>(&cache, "old"),
        value.clone().into_boxed_slice()
    );
    assert_eq!(bytes_of::<ByteBuf>(&cache, "old").into_vec(), value);
    assert_eq!(cache.get_bytes("old").unwrap().unwrap().value, value);
    assert_eq!(
        cache
            .with_bytes("old-big", |b| b.to_vec())
            .unwrap()
            .unwrap()
            .value,
        vec![200u8; 40_000]
    );
    // get_or_load serves the old entry: no reload.
    let hit = cache
        .get_or_load(
            "old",
            || -> Result<Vec<u8>, std::io::Error> { panic!("reloaded an old entry") },
            None,
        )
        .unwrap();
    assert_eq!(hit.value, value);
}

#[test]
fn byte_fields_inside_other_types_keep_round_tripping() {
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[serde(tag = "kind")]
    enum Message {
        Data { payload: Vec<u8> },
    }
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[serde(untagged)]
    enum Either {
        Bytes(Vec<u8>),
    }
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Outer {
        name: String,
        data: Vec<u8>,
        #[serde(flatten)]
        message: Message,
    }
    let (_tmp, cache) = temp_cache();
    let outer = Outer {
        name: "x".into(),
        data: vec![1, 255],
        message: Message::Data {
            payload: vec![0, 200],
        },
    };
    cache.set("outer", &outer, None).unwrap();
    assert_eq!(bytes_of::<Outer>(&cache, "outer"), outer);
    let either = Either::Bytes(vec![3, 250]);
    cache.set("either", &either, None).unwrap();
    assert_eq!(bytes_of::<Either>(&cache, "either"), either);
}

#[test]
fn raw_bytes_round_trip_in_place_and_as_byte_types() {
    let (_tmp, cache) = temp_cache();
    let value: Vec<u8> = (0..=255).collect();
    cache.set_bytes("raw", &value, None).unwrap();
    assert_eq!(stored_size(&cache, "raw"), 256);
    let got = cache.get_bytes("raw").unwrap().unwrap();
    assert_eq!(got.value, value);
    assert_eq!(got.expires_at, None);
    let sum = cache
        .with_bytes("raw", |b| b.iter().map(|&x| u64::from(x)).sum::<u64>())
        .unwrap()
        .unwrap();
    assert_eq!(sum.value, 255 * 256 / 2);
    assert_eq!(bytes_of::<Vec<u8>>(&cache, "raw"), value);
    assert_eq!(bytes_of::<ByteBuf>(&cache, "raw").into_vec(), value);
    assert_eq!(
        bytes_of::<Box<[u8]>>(&cache, "raw"),
        value.clone().into_boxed_slice()
    );
    cache.set_bytes("empty", b"", None).unwrap();
    assert_eq!(cache.get_bytes("empty").unwrap().unwrap().value, b"");
    assert!(cache.get_bytes("absent").unwrap().is_none());
    assert!(cache.with_bytes("absent", |_| ()).unwrap().is_none());
    let long_key = "k".repeat(1000);
    cache.set_bytes(&long_key, b"long", None).unwrap();
    assert_eq!(cache.get_bytes(&long_key).unwrap().unwrap().value, b"long");
    let stats = cache.stats().unwrap();
    assert_eq!((stats.hits, stats.misses), (7, 2));
}

#[test]
fn raw_bytes_are_never_parsed_as_message_pack() {
    let (_tmp, cache) = temp_cache();
    // Raw bytes that happen to be valid MessagePack of a u32 and of a string.
    cache.set_bytes("five", &[0x05], None).unwrap();
    cache.set_bytes("text", &[0xa2, b'h', b'i'], None).unwrap();
    for key in ["five", "text"] {
        let err = cache.get::<u32>(key).unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err:?}");
        assert!(err.to_string().contains("raw bytes"), "{err}");
    }
    assert_eq!(bytes_of::<Vec<u8>>(&cache, "five"), vec![5]);
    assert!(cache.get::<String>("text").is_err());
    // get_or_load of another type replaces it, as for any value of the wrong type.
    let v = cache
        .get_or_load("five", || Ok::<_, std::io::Error>(7u32), None)
        .unwrap();
    assert_eq!(v.value, 7);
    assert_eq!(bytes_of::<u32>(&cache, "five"), 7);
}

#[test]
fn raw_bytes_expire() {
    let (_tmp, cache) = temp_cache();
    cache
        .set_bytes("short", b"soon gone", Some(Duration::from_millis(50)))
        .unwrap();
    cache
        .set_bytes("big", &vec![1u8; 100_000], Some(Duration::from_millis(50)))
        .unwrap();
    let got = cache.get_bytes("short").unwrap().unwrap();
    assert!(got.expires_at.is_some());
    std::thread::sleep(Duration::from_millis(120));
    assert!(cache.get_bytes("short").unwrap().is_none());
    assert!(cache.with_bytes("big", |_| ()).unwrap().is_none());
    assert!(cache.get::<Vec<u8>>("short").unwrap().is_none());
    assert_eq!(cache.purge_expired().unwrap(), 2);
}

#[test]
fn big_raw_values_live_in_their_own_file_and_fail_their_checksum_when_damaged() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = DiskCache::builder().directory(tmp.path()).build().unwrap();
    let value: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    cache.set_bytes("big", &value, None).unwrap();
    let info = cache.entries().unwrap().pop().unwrap();
    assert!(info.in_file);
    assert_eq!(info.size, 100_000);
    let files = blob_files(tmp.path());
    assert_eq!(files.len(), 1);
    assert_eq!(std::fs::read(&files[0]).unwrap(), value); // the bytes, as they are
    assert_eq!(cache.get_bytes("big").unwrap().unwrap().value, value);
    assert_eq!(
        cache.with_bytes("big", |b| b.len()).unwrap().unwrap().value,
        100_000
    );

    let mut bytes = std::fs::read(&files[0]).unwrap();
    bytes[5000] ^= 0x40;
    std::fs::write(&files[0], bytes).unwrap();
    let err = cache.get_bytes("big").unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert!(matches!(
        cache.with_bytes("big", |_| ()).unwrap_err(),
        Error::Corrupt { .. }
    ));
    assert_eq!(cache.check().unwrap().removed_entries, 1);
    assert!(cache.get_bytes("big").unwrap().is_none());
}

#[test]
fn a_damaged_inline_raw_value_fails_its_checksum() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = b"raw-value-that-we-will-damage-0123456789";
    {
        let cache = DiskCache::builder().directory(tmp.path()).build().unwrap();
        cache.set_bytes("k", marker, None).unwrap();
    }
    let index = tmp.path().join("index/data.mdb");
    let mut bytes = std::fs::read(&index).unwrap();
    let mut flipped = 0;
    for at in 0..bytes.len() - marker.len() {
        if &bytes[at..at + marker.len()] == marker {
            bytes[at + 10] ^= 0x01;
            flipped += 1;
        }
    }
    assert!(flipped > 0, "the value is in the index");
    std::fs::write(&index, bytes).unwrap();
    let cache = DiskCache::builder().directory(tmp.path()).build().unwrap();
    let err = cache.get_bytes("k").unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert!(matches!(
        cache.get::<Vec<u8>>("k").unwrap_err(),
        Error::Corrupt { .. }
    ));
}

#[test]
fn raw_writes_replace_atomically_and_are_seen_by_other_handles() {
    let tmp = tempfile::tempdir().unwrap();
    let a = DiskCache::builder().directory(tmp.path()).build().unwrap();
    a.set("k", &"packed".to_string(), None).unwrap();
    a.set_bytes("k", &vec![9u8; 50_000], None).unwrap();
    a.set_bytes("k", b"small again", None).unwrap();
    let b = DiskCache::builder().directory(tmp.path()).build().unwrap();
    assert_eq!(b.get_bytes("k").unwrap().unwrap().value, b"small again");
    // The replaced value file was removed after the commit.
    assert!(blob_files(tmp.path()).is_empty());
    assert_eq!(b.stats().unwrap().entries, 1);
}
