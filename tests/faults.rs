//! Faults and bad input, with real processes and real file systems: file-size limits
//! (EFBIG), a full file system (ENOSPC), a read-only one, and bytes flipped in every file of
//! a cache directory. Reads of damaged caches run in child processes, so a crash is seen
//! and counted instead of taking the test runner down.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{child, child_role};
use dbx_concurio::Result;
use dbx_concurio::caches::DiskCache;
use serde_bytes::ByteBuf;

/// Keys written by `fill`: `k0..KEYS`.
const KEYS: u64 = 40;

/// Self-checking value of key `k<i>`: every third one is large (its own value file).
fn value(i: u64) -> (u64, ByteBuf) {
    let len = if i.is_multiple_of(3) {
        40_000 + i as usize
    } else {
        20 + i as usize
    };
    let bytes: Vec<u8> = (0..len)
        .map(|j| (i as usize * 37 + j * 11 + (j >> 7)) as u8)
        .collect();
    (i, ByteBuf::from(bytes))
}

fn open(dir: &Path) -> Result<DiskCache> {
    DiskCache::builder().directory(dir).fallback(false).build()
}

/// A fresh cache with `k0..KEYS`, closed again (a `get_or_load` creates a lock stripe).
fn fill(dir: &Path) {
    let cache = open(dir).expect("open");
    for i in 0..KEYS {
        cache.set(&format!("k{i}"), &value(i), None).expect("set");
    }
    cache
        .get_or_load("loaded", || Ok::<_, std::io::Error>(value(1)), None)
        .expect("get_or_load");
}

/// Reads every key; the value must be right, or missing, or an error: never wrong.
/// Returns (right, missing, errors) or the first wrong value.
fn read_all(cache: &DiskCache) -> std::result::Result<(u64, u64, u64), String> {
    let mut counts = (0, 0, 0);
    for i in 0..KEYS {
        match cache.get::<(u64, ByteBuf)>(&format!("k{i}")) {
            Ok(Some(v)) if v.value == value(i) => counts.0 += 1,
            Ok(Some(v)) => return Err(format!("k{i}: WRONG value (write {})", v.value.0)),
            Ok(None) => counts.1 += 1,
            Err(_) => counts.2 += 1,
        }
    }
    Ok(counts)
}

/// Sets RLIMIT_FSIZE; with `ignore`, writes past it fail with EFBIG instead of SIGXFSZ
/// killing the process.
fn limit_file_size(bytes: u64, ignore: bool) {
    // SAFETY: plain libc calls with valid arguments, in a child process of our own.
    unsafe {
        if ignore {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        }
        let limit = libc::rlimit {
            rlim_cur: bytes as libc::rlim_t,
            rlim_max: libc::RLIM_INFINITY,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
}

// ---------------------------------------------------------------- child roles

#[test]
fn child_main() {
    let Some(role) = child_role() else { return };
    let dir = PathBuf::from(std::env::var_os("CACHE").expect("CACHE"));
    match role.as_str() {
        // Opens the cache with a file-size limit already in force, SIGXFSZ left fatal.
        "open-limited" => {
            limit_file_size(1 << 20, false);
            match open(&dir).and_then(|c| c.set("k", "v", None).map(|()| c)) {
                Ok(c) => println!(
                    "OPENED {:?}",
                    c.get::<String>("k").map(|v| v.map(|v| v.value))
                ),
                Err(e) => println!("OPENERR {e}"),
            }
        }
        // Opens, then runs into a 64 KiB file-size limit.
        "efbig" => {
            let cache = open(&dir).expect("open");
            limit_file_size(64 * 1024, true);
            match cache.set("huge", &vec![7u8; 300_000], None) {
                Ok(()) => println!("HUGE stored"),
                Err(e) => println!("HUGE {:?} {e}", e.io_kind()),
            }
            match read_all(&cache) {
                Ok(counts) => println!("READ {counts:?}"),
                Err(wrong) => println!("{wrong}"),
            }
            println!(
                "GOT {:?}",
                cache.get::<Vec<u8>>("huge").map(|v| v.is_some())
            );
        }
        // Opens a (maybe damaged) cache and reads everything; says what it saw.
        "read-all" => match open(&dir) {
            Err(e) => println!("OPENERR {e}"),
            Ok(cache) => {
                match read_all(&cache) {
                    Ok(counts) => println!("READ {counts:?}"),
                    Err(wrong) => println!("{wrong}"),
                }
                let works = cache
                    .set("probe", &value(5), None)
                    .and_then(|()| cache.get::<(u64, ByteBuf)>("probe"));
                match works {
                    Ok(Some(v)) if v.value == value(5) => println!("WORKS"),
                    other => println!("BROKEN {other:?}"),
                }
            }
        },
        other => panic!("unknown role {other}"),
    }
}

fn run_child(role: &str, dir: &Path) -> (String, std::process::ExitStatus) {
    let mut child = child("child_main", role)
        .env("CACHE", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{role} on {} hung", dir.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut out = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    (out, status)
}

fn line<'a>(out: &'a str, prefix: &str) -> Option<&'a str> {
    out.lines().find_map(|l| l.strip_prefix(prefix))
}

// ---------------------------------------------------------------- file-size limit

#[test]
fn a_file_size_limit_fails_large_writes_and_keeps_everything_else() {
    let tmp = tempfile::tempdir().unwrap();
    fill(tmp.path());
    let (out, status) = run_child("efbig", tmp.path());
    assert!(status.success(), "{status}: {out}");
    // The value file cannot grow past the limit: EFBIG, an I/O error, no panic, no signal.
    let huge = line(&out, "HUGE ").expect(&out);
    assert!(huge.starts_with("Some(FileTooLarge)"), "{huge}");
    assert_eq!(
        line(&out, "READ "),
        Some(&*format!("({KEYS}, 0, 0)")),
        "{out}"
    );
    assert_eq!(line(&out, "GOT "), Some("Ok(false)"), "{out}");
    // The limit gone, the cache works and kept everything; the failed write left no file.
    let cache = open(tmp.path()).unwrap();
    assert_eq!(read_all(&cache).unwrap(), (KEYS, 0, 0));
    cache.set("huge", &vec![7u8; 300_000], None).unwrap();
    assert_eq!(
        cache.get::<Vec<u8>>("huge").unwrap().unwrap().value.len(),
        300_000
    );
    let in_files = cache
        .entries()
        .unwrap()
        .iter()
        .filter(|e| e.in_file)
        .count();
    assert_eq!(
        std::fs::read_dir(tmp.path().join("blobs")).unwrap().count(),
        in_files
    );
}

/// Regression: opening extended `data.mdb` to 32 GiB regardless of RLIMIT_FSIZE, so a
/// process under `ulimit -f` was killed by SIGXFSZ (or, ignoring it, could not open).
#[test]
fn a_process_with_a_file_size_limit_can_open_a_new_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, status) = run_child("open-limited", tmp.path());
    assert!(status.success(), "killed or failed ({status}): {out}");
    assert_eq!(line(&out, "OPENED "), Some("Ok(Some(\"v\"))"), "{out}");
}
