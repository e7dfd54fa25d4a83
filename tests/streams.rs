//! Big values as streams and files (issue #12, point 3): stored from a `Read` and read as a
//! `Read` without holding them whole (checked in a child process by its peak RSS), handed
//! out as a verified copy or a hard link, damage detected, failures leave nothing behind.

mod common;

use std::io::Read;
use std::time::Duration;

use common::{child, child_role, env_path, open_dir as open};
use dbx_concurio::Error;

/// A deterministic stream of `len` bytes (a simple LCG, 8 bytes at a time).
struct Generated {
    state: u64,
    left: u64,
}

impl Generated {
    fn new(seed: u64, len: u64) -> Self {
        Generated {
            state: seed,
            left: len,
        }
    }
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize / 8 * 8;
        let n = if n == 0 {
            (self.left as usize).min(buf.len())
        } else {
            n
        };
        for chunk in buf[..n].chunks_mut(8) {
            self.state = self
                .state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let bytes = self.state.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Compares two streams chunk by chunk; returns the number of bytes compared.
fn same_stream(mut a: impl Read, mut b: impl Read) -> std::io::Result<u64> {
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut total = 0;
    loop {
        let n = a.read(&mut x)?;
        b.read_exact(&mut y[..n])?;
        assert_eq!(x[..n], y[..n], "streams differ at byte {total}");
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

#[test]
fn child_main() {
    let Some(role) = child_role() else { return };
    assert_eq!(role, "big");
    let cache = open(&env_path("CACHE"));
    let len = 256u64 << 20;
    let stored = cache
        .set_reader("big", Generated::new(7, len), None)
        .unwrap();
    assert_eq!(stored, len);
    let reader = cache.get_reader("big").unwrap().expect("stored");
    assert_eq!(reader.len(), len);
    assert_eq!(same_stream(reader, Generated::new(7, len)).unwrap(), len);
    println!("PEAK_RSS_KIB {}", peak_rss_kib());
}

#[test]
fn a_256_mib_value_is_stored_and_read_back_as_streams_in_little_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let out = child("child_main", "big")
        .env("CACHE", tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let peak: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("PEAK_RSS_KIB "))
        .expect("peak")
        .parse()
        .unwrap();
    assert!(peak > 0, "no VmHWM read");
    assert!(peak < 64 << 10, "peak RSS {peak} KiB for a 256 MiB value");
}

#[test]
fn small_and_empty_streams_round_trip_and_read_as_bytes_too() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path());
    for (key, len) in [("empty", 0u64), ("small", 100), ("exact", 32 * 1024 + 1)] {
        assert_eq!(
            cache.set_reader(key, Generated::new(1, len), None).unwrap(),
            len
        );
        let reader = cache.get_reader(key).unwrap().unwrap();
        assert_eq!(reader.len(), len);
        assert_eq!(same_stream(reader, Generated::new(1, len)).unwrap(), len);
        let mut expected = Vec::new();
        Generated::new(1, len).read_to_end(&mut expected).unwrap();
        assert_eq!(cache.get_bytes(key).unwrap().unwrap().value, expected);
    }
    // set_bytes values read as streams too.
    cache.set_bytes("raw", b"hello", None).unwrap();
    let mut text = String::new();
    cache
        .get_reader("raw")
        .unwrap()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "hello");
}

#[test]
fn a_failing_source_stores_nothing_and_leaves_no_file() {
    struct Failing(u64);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("the network went away"));
            }
            let n = buf.len().min(self.0 as usize);
            buf[..n].fill(1);
            self.0 -= n as u64;
            Ok(n)
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path());
    cache.set_reader("k", &b"old"[..], None).unwrap();
    let err = cache.set_reader("k", Failing(1 << 20), None).unwrap_err();
    assert!(err.to_string().contains("the network went away"), "{err}");
    let mut old = String::new();
    cache
        .get_reader("k")
        .unwrap()
        .unwrap()
        .read_to_string(&mut old)
        .unwrap();
    assert_eq!(old, "old", "the previous value is intact");
    let files = std::fs::read_dir(tmp.path().join("blobs")).unwrap().count();
    assert_eq!(files, 1, "only the old value's file");
}

#[test]
fn damage_fails_the_last_read_and_a_copy_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path());
    cache
        .set_reader("k", Generated::new(3, 200_000), None)
        .unwrap();
    let blob = std::fs::read_dir(tmp.path().join("blobs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[100_000] ^= 0xFF;
    std::fs::write(&blob, &bytes).unwrap();
    let mut sink = Vec::new();
    let err = cache
        .get_reader("k")
        .unwrap()
        .unwrap()
        .read_to_end(&mut sink)
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    let dest = tmp.path().join("copy");
    let err = cache.copy_to("k", &dest).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert!(!dest.exists(), "a failed copy left {}", dest.display());
    let err = cache
        .hard_link_to("k", tmp.path().join("link"))
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
}

#[test]
fn copies_and_hard_links_hold_the_value_and_outlive_the_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path());
    let len = 5 << 20;
    cache.set_reader("k", Generated::new(9, len), None).unwrap();
    let (copy, link) = (tmp.path().join("copy.bin"), tmp.path().join("link.bin"));
    assert!(cache.copy_to("k", &copy).unwrap());
    assert!(cache.hard_link_to("k", &link).unwrap());
    cache.delete("k").unwrap();
    for path in [&copy, &link] {
        let file = std::fs::File::open(path).unwrap();
        assert_eq!(same_stream(file, Generated::new(9, len)).unwrap(), len);
    }
    assert!(!cache.copy_to("k", tmp.path().join("none")).unwrap());
    assert!(!tmp.path().join("none").exists());
}

#[test]
fn messagepack_values_are_not_streams_and_streams_expire() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path());
    cache.set("typed", &vec![1u32, 2, 3], None).unwrap();
    let err = cache.get_reader("typed").unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    cache
        .set_reader("brief", &b"soon gone"[..], Some(Duration::from_millis(50)))
        .unwrap();
    assert!(cache.get_reader("brief").unwrap().is_some());
    std::thread::sleep(Duration::from_millis(100));
    assert!(cache.get_reader("brief").unwrap().is_none());
}
