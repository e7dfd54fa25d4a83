//! Soak: N processes × M threads doing random operations on one cache for T seconds, with
//! self-checking values; invariants checked at the end.
//!
//! Key families: `s<k>` (set / get / delete / touch / contains, mixed sizes and expiries),
//! `g<k>` (only `get_or_load` without expiry: its loader may run once per key in the whole
//! run) and `e<k>` (only `get_or_load` with a window W: the loader's start times per key are
//! at least W apart, since a load needs the previous value to be W old).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dbx_concurio::caches::DiskCache;
use serde_bytes::ByteBuf;

use super::crash::bytes_of;
use super::{Rng, Running, Spawn, env, say};

const S_KEYS: u64 = 48;
const G_KEYS: u64 = 8;
const E_KEYS: u64 = 8;
/// Expiry window of the `e` keys.
const WINDOW: Duration = Duration::from_millis(300);
/// The short expiry of some `s` entries.
const SHORT: Duration = Duration::from_millis(150);

/// A stored value: its key, its write number, bytes derived from the number.
type Value = (String, u64, ByteBuf);

fn value(key: &str, w: u64) -> Value {
    let len = if w.is_multiple_of(5) {
        40_000 + (w % 4000) as usize
    } else {
        16 + (w % 500) as usize
    };
    (key.to_owned(), w, ByteBuf::from(bytes_of(w, len)))
}

fn whole(key: &str, v: &Value) -> bool {
    v.0 == key && *v == value(key, v.1)
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Appends one line with O_APPEND: atomic for a short line, across processes.
fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(format!("{line}\n").as_bytes())
}

#[derive(Default)]
struct Counts {
    ops: AtomicU64,
    errors: AtomicU64,
    bad: AtomicU64,
}

/// The child: `SOAK_THREADS` threads of random operations for `SOAK_MILLIS`.
pub fn child() -> Result<(), String> {
    let dir: String = env("SOAK_DIR")?;
    let log: String = env("SOAK_LOG")?;
    let threads: u64 = env("SOAK_THREADS")?;
    let millis: u64 = env("SOAK_MILLIS")?;
    let seed: u64 = env("SOAK_SEED")?;
    let me: u64 = env("SOAK_CHILD")?;
    let cache = DiskCache::builder()
        .directory(&dir)
        .fallback(false)
        .build()
        .map_err(|e| format!("open: {e}"))?;
    let deadline = Instant::now() + Duration::from_millis(millis);
    let counts = Arc::new(Counts::default());
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (cache, counts, log) = (cache.clone(), counts.clone(), log.clone());
            let base = (me * 64 + t) << 40;
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed ^ base);
                let mut w = base;
                while Instant::now() < deadline {
                    w += 1;
                    operate(&cache, &mut rng, w, Path::new(&log), &counts);
                    counts.ops.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().map_err(|_| "a worker thread panicked")?;
    }
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    say(&format!(
        "SOAK {} {} {}",
        get(&counts.ops),
        get(&counts.errors),
        get(&counts.bad)
    ));
    Ok(())
}

fn expiry(rng: &mut Rng) -> Option<Duration> {
    match rng.below(3) {
        0 => None,
        1 => Some(SHORT),
        _ => Some(Duration::from_secs(3600)),
    }
}

/// One random operation; errors and torn values are counted (and said on stderr).
fn operate(cache: &DiskCache, rng: &mut Rng, w: u64, log: &Path, counts: &Counts) {
    let r = rng.below(1000);
    let key = match r {
        0..=759 => format!("s{}", rng.below(S_KEYS)),
        760..=879 => format!("g{}", rng.below(G_KEYS)),
        880..=989 => format!("e{}", rng.below(E_KEYS)),
        _ => String::new(),
    };
    let check = |got: dbx_concurio::Result<Option<Value>>| match got {
        Ok(Some(v)) if !whole(&key, &v) => {
            eprintln!("soak: {key}: torn or foreign value (write {})", v.1);
            counts.bad.fetch_add(1, Ordering::Relaxed);
        }
        Ok(_) => {}
        Err(e) => {
            eprintln!("soak: {key}: {e}");
            counts.errors.fetch_add(1, Ordering::Relaxed);
        }
    };
    let load = |family: &str, expire: Option<Duration>| {
        let got = cache.get_or_load(
            &key,
            || {
                append_line(log, &format!("{family} {key} {}", now_ns()))?;
                Ok::<_, std::io::Error>(value(&key, w))
            },
            expire,
        );
        check(got.map(|v| Some(v.value)));
    };
    let done = |r: dbx_concurio::Result<()>| check(r.map(|()| None));
    match r {
        0..=299 => done(cache.set(&key, &value(&key, w), expiry(rng))),
        300..=599 => check(cache.get::<Value>(&key).map(|v| v.map(|v| v.value))),
        600..=679 => done(cache.delete(&key).map(|_| ())),
        680..=739 => done(cache.touch(&key, expiry(rng)).map(|_| ())),
        740..=759 => done(cache.contains(&key).map(|_| ())),
        760..=879 => load("g", None),
        880..=989 => load("e", Some(WINDOW)),
        990..=994 => done(cache.purge_expired().map(|_| ())),
        _ => done(cache.stats().and_then(|_| cache.len()).map(|_| ())),
    }
}

/// What a soak run did and found.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub processes: u64,
    pub threads: u64,
    pub ops: u64,
    pub errors: u64,
    pub bad: u64,
    pub loads: u64,
    pub entries_at_end: u64,
    pub violations: Vec<String>,
}

impl Report {
    /// The one-line summary printed by the test and the example.
    pub fn summary(&self) -> String {
        format!(
            "soak: {} processes x {} threads, {} operations, {} loads, {} entries at the end, {} errors, {} torn, {} violations",
            self.processes,
            self.threads,
            self.ops,
            self.loads,
            self.entries_at_end,
            self.errors,
            self.bad,
            self.violations.len()
        )
    }
}

/// Runs `processes` × `threads` for `duration` on a cache in `work`, then checks the
/// invariants.
pub fn run(
    spawn: Spawn<'_>,
    work: &Path,
    processes: u64,
    threads: u64,
    duration: Duration,
    seed: u64,
) -> Report {
    let dir = work.join("cache");
    let log = work.join("loads.log");
    let mut report = Report {
        processes,
        threads,
        ..Report::default()
    };
    let children: Vec<_> = (0..processes)
        .filter_map(|me| {
            let mut cmd = spawn("soak");
            cmd.env("SOAK_DIR", &dir)
                .env("SOAK_LOG", &log)
                .env("SOAK_THREADS", threads.to_string())
                .env("SOAK_MILLIS", duration.as_millis().to_string())
                .env("SOAK_SEED", (seed ^ me.wrapping_mul(0x51_7CC1)).to_string())
                .env("SOAK_CHILD", me.to_string());
            Running::spawn(cmd)
                .map_err(|e| report.violations.push(e))
                .ok()
        })
        .collect();
    for child in children {
        let (lines, problem) = child.finish(duration + Duration::from_secs(120));
        report.violations.extend(problem);
        let summary = lines.iter().find_map(|l| {
            let f: Vec<u64> = l
                .strip_prefix("SOAK ")?
                .split(' ')
                .filter_map(|n| n.parse().ok())
                .collect();
            (f.len() == 3).then_some(f)
        });
        match summary {
            Some(f) => {
                report.ops += f[0];
                report.errors += f[1];
                report.bad += f[2];
            }
            None => report.violations.push(format!(
                "a child gave no summary: {:?}",
                super::tail(&lines)
            )),
        }
    }
    if report.errors + report.bad > 0 {
        report.violations.push(format!(
            "{} errors, {} torn values",
            report.errors, report.bad
        ));
    }
    check_loads(&log, &mut report);
    // Every short expiry set during the run has passed: the counts below cannot race one.
    std::thread::sleep(WINDOW.max(SHORT) + Duration::from_millis(200));
    check_cache(&dir, &mut report);
    report
}

/// `g` keys loaded at most once; `e` keys' load starts at least a window apart.
fn check_loads(log: &Path, report: &mut Report) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut starts: HashMap<(String, String), Vec<u64>> = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let [family, key, ns] = f[..] else {
            report
                .violations
                .push(format!("bad load log line {line:?}"));
            continue;
        };
        report.loads += 1;
        let ns = ns.parse().unwrap_or(0);
        starts
            .entry((family.to_owned(), key.to_owned()))
            .or_default()
            .push(ns);
    }
    for ((family, key), mut times) in starts {
        times.sort_unstable();
        if family == "g" && times.len() > 1 {
            report.violations.push(format!(
                "{key}: loaded {} times, at most once allowed",
                times.len()
            ));
        }
        for pair in times.windows(2) {
            if family == "e" && pair[1] - pair[0] < WINDOW.as_nanos() as u64 {
                report.violations.push(format!(
                    "{key}: loaded again {} ms after the previous load, within the {WINDOW:?} window",
                    (pair[1] - pair[0]) / 1_000_000
                ));
            }
        }
    }
}

/// After the run: purge, then the counters agree with the listing, `check()` has nothing
/// to repair and leaves the counters as they were, and no value file is left over.
fn check_cache(dir: &Path, report: &mut Report) {
    let mut problems = Vec::new();
    let result = (|| -> dbx_concurio::Result<()> {
        let cache = DiskCache::builder()
            .directory(dir)
            .fallback(false)
            .build()?;
        cache.purge_expired()?;
        let before = cache.stats()?;
        let keys = cache.keys()?.len() as u64;
        if before.entries != keys {
            problems.push(format!(
                "stats say {} entries, keys() lists {keys}",
                before.entries
            ));
        }
        let repaired = cache.check()?;
        if repaired.removed_entries + repaired.removed_files > 0 {
            problems.push(format!(
                "check() repaired something after a clean run: {repaired:?}"
            ));
        }
        let after = cache.stats()?;
        if (after.entries, after.bytes) != (before.entries, before.bytes) {
            problems.push(format!(
                "check() changed the totals: {before:?} -> {after:?}"
            ));
        }
        let in_files = cache.entries()?.iter().filter(|e| e.in_file).count();
        let files = std::fs::read_dir(dir.join("blobs")).map_or(0, |d| d.count());
        if files != in_files {
            problems.push(format!(
                "{files} value files for {in_files} entries stored in files"
            ));
        }
        for key in cache.keys()? {
            if let Some(v) = cache.get::<Value>(&key)?
                && !whole(&key, &v.value)
            {
                problems.push(format!("{key}: torn at the end"));
            }
        }
        report.entries_at_end = after.entries;
        Ok(())
    })();
    if let Err(e) = result {
        problems.push(format!("final checks: {e}"));
    }
    report.violations.extend(problems);
}
