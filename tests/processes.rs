//! Real processes sharing one cache: this test binary re-invokes itself as children
//! (see `common::child`), and children are SIGKILLed where the test is about crashes.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{append_line, child, child_role, lines, sigkill};
use dbx_concurio::caches::DiskCache;
use serde_bytes::ByteBuf;

fn open(dir: &Path) -> DiskCache {
    DiskCache::builder()
        .directory(dir)
        .build()
        .expect("open cache")
}

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(name).expect("child env"))
}

/// Deterministic, self-checking value for write number `i`: a mix of inline (small) and
/// file-backed (> 32 KiB) values, so both storage paths are crashed.
fn payload(i: u64) -> (u64, ByteBuf) {
    let len = if i.is_multiple_of(3) {
        40_000 + (i % 1000) as usize
    } else {
        100 + (i % 50) as usize
    };
    let bytes: Vec<u8> = (0..len)
        .map(|j| (i as usize).wrapping_mul(31).wrapping_add(j) as u8)
        .collect();
    (i, ByteBuf::from(bytes))
}

const KEYS: u64 = 64;

// ---------------------------------------------------------------- child roles

/// Children: each test below re-invokes this binary with `--exact child_main` and a role.
#[test]
fn child_main() {
    let Some(role) = child_role() else { return };
    let dir = env_path("CACHE");
    match role.as_str() {
        "race" => {
            let counter = env_path("COUNTER");
            let v = open(&dir)
                .get_or_load(
                    "shared",
                    || {
                        append_line(&counter, &std::process::id().to_string());
                        std::thread::sleep(Duration::from_millis(300));
                        Ok::<_, std::io::Error>(format!("loaded by {}", std::process::id()))
                    },
                    None,
                )
                .expect("get_or_load");
            println!("VALUE {}", v.value);
        }
        "hold" => {
            let marker = env_path("MARKER");
            let _ = open(&dir).get_or_load(
                "held",
                || {
                    append_line(&marker, "started");
                    std::thread::sleep(Duration::from_secs(120));
                    Ok::<_, std::io::Error>(0u8)
                },
                None,
            );
        }
        "writer" => {
            use std::io::Write;
            let start: u64 = std::env::var("START")
                .expect("START")
                .parse()
                .expect("START");
            let step: u64 = std::env::var("STEP").map_or(1, |s| s.parse().expect("STEP"));
            let cache = open(&dir);
            let mut out = std::io::stdout().lock();
            let mut i = start;
            loop {
                cache
                    .set(&format!("k{}", i % KEYS), &payload(i), None)
                    .expect("set");
                writeln!(out, "COMMITTED {i}").expect("stdout");
                out.flush().expect("flush");
                i += step;
            }
        }
        other => panic!("unknown role {other}"),
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn eight_processes_race_and_the_loader_runs_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, counter) = (tmp.path().join("cache"), tmp.path().join("counter"));
    let children: Vec<_> = (0..8)
        .map(|_| {
            child("child_main", "race")
                .env("CACHE", &dir)
                .env("COUNTER", &counter)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut values = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        values.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("VALUE ").map(str::to_owned)),
        );
    }
    assert_eq!(values.len(), 8, "{values:?}");
    assert!(values.iter().all(|v| v == &values[0]), "{values:?}");
    let loads = lines(&counter);
    assert_eq!(loads.len(), 1, "loader ran in {loads:?}");
    assert_eq!(values[0], format!("loaded by {}", loads[0]));
}

#[test]
fn a_sigkilled_lock_holder_does_not_block_the_next_loader() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, marker) = (tmp.path().join("cache"), tmp.path().join("marker"));
    let mut holder = child("child_main", "hold")
        .env("CACHE", &dir)
        .env("MARKER", &marker)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while lines(&marker).is_empty() {
        assert!(Instant::now() < deadline, "holder never started loading");
        std::thread::sleep(Duration::from_millis(10));
    }
    sigkill(&holder);
    holder.wait().unwrap();
    // With the lock left to the kernel, the next caller gets it at once; a lock that
    // outlived its holder would make this return Error::Busy.
    let cache = DiskCache::builder()
        .directory(&dir)
        .lock_timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let v = cache
        .get_or_load("held", || Ok::<_, std::io::Error>(42u8), None)
        .unwrap();
    assert_eq!(v.value, 42);
}

/// Small deterministic PRNG so failures can be replayed from the printed seed.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn rounds() -> usize {
    std::env::var("DBX_CONCURIO_CRASH_ROUNDS").map_or(15, |s| s.parse().expect("rounds"))
}

/// Runs a writer child from `start`, kills it after `delay`, returns the writes it reported.
fn run_and_kill(dir: &Path, start: u64, step: u64, delay: Duration) -> Vec<u64> {
    let mut writer = child("child_main", "writer")
        .env("CACHE", dir)
        .env("START", start.to_string())
        .env("STEP", step.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = writer.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| l.strip_prefix("COMMITTED ").and_then(|n| n.parse().ok()))
            .collect::<Vec<u64>>()
    });
    std::thread::sleep(delay);
    sigkill(&writer);
    writer.wait().unwrap();
    reader.join().unwrap()
}

#[test]
fn sigkilled_writers_lose_no_committed_value_and_tear_none() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    // Per key: the newest write whose `set` returned (a later one may have committed
    // just before the kill, without being reported).
    let mut committed: HashMap<u64, u64> = HashMap::new();
    let mut start = 0;
    let rounds = rounds();
    for round in 0..rounds {
        // Let the child get past start-up (~tens of ms) before killing at a random instant.
        let delay = Duration::from_millis(80 + next(&mut seed) % 150);
        let reported = run_and_kill(&dir, start, 1, delay);
        for &i in &reported {
            committed.insert(i % KEYS, i);
        }
        let attempted_max = reported.last().map_or(start, |&i| i + 1);
        start = attempted_max + 1;
        // The cache opens and works after every kill, and holds every committed write.
        let cache = open(&dir);
        for (&key, &min) in &committed {
            let got = cache
                .get::<(u64, ByteBuf)>(&format!("k{key}"))
                .unwrap_or_else(|e| panic!("round {round}: k{key}: {e}"))
                .unwrap_or_else(|| panic!("round {round}: k{key} lost (committed {min})"));
            let (i, bytes) = got.value;
            assert_eq!(i % KEYS, key, "round {round}: wrong key's value");
            assert!(
                i >= min && i <= attempted_max,
                "round {round}: k{key} went back to {i} < {min}"
            );
            assert_eq!(bytes, payload(i).1, "round {round}: k{key} torn");
        }
        cache.set("probe", &round, None).unwrap();
        assert_eq!(cache.get::<usize>("probe").unwrap().unwrap().value, round);
    }
    assert!(
        committed.len() as u64 >= KEYS / 2,
        "writers made too little progress to test anything"
    );
    // No leftover value files beyond the live ones, except at most one per killed write.
    let live = open(&dir)
        .entries()
        .unwrap()
        .iter()
        .filter(|e| e.in_file)
        .count();
    let files = std::fs::read_dir(dir.join("blobs")).unwrap().count();
    assert!(
        files <= live + rounds,
        "{files} value files for {live} live ones"
    );
}

#[test]
fn readers_see_old_or_new_values_whole_while_two_processes_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let spawn = |start: u64| {
        child("child_main", "writer")
            .env("CACHE", &dir)
            .env("START", start.to_string())
            .env("STEP", "2")
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut writers = [spawn(0), spawn(1)];
    let cache = open(&dir);
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut reads = 0;
    while Instant::now() < deadline {
        for key in 0..KEYS {
            if let Some(v) = cache.get::<(u64, ByteBuf)>(&format!("k{key}")).unwrap() {
                let (i, bytes) = v.value;
                assert_eq!(i % KEYS, key);
                assert_eq!(bytes, payload(i).1, "torn read of k{key} at write {i}");
                reads += 1;
            }
        }
    }
    for w in &mut writers {
        sigkill(w);
        w.wait().unwrap();
    }
    assert!(reads > 100, "only {reads} reads happened");
}
