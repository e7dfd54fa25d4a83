//! Crash consistency of the cache: writer/loader processes SIGKILLed at random instants,
//! checked against a model after every round.
//!
//! Each child owns its keys `c<child>-<k>` (so the order of its operations is the order of
//! its lines) and shares the keys `sh<k>` with the others (loaded with `get_or_load` only).
//! It prints `B <key> <op> [<write>]` before a call and `E <key> <result>` after it returned,
//! and `G <key> <result>` for a read. Values are `(write number, bytes derived from it)`, so
//! any read proves itself whole or torn. Even rounds use an unlimited cache, odd rounds one
//! with a small size limit (eviction): there a key may also be missing, never wrong.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use dbx_concurio::caches::DiskCache;
use serde_bytes::ByteBuf;

use super::{Rng, Running, Spawn, env, kill_at_random, say};

/// Child processes per round.
const CHILDREN: u64 = 2;
/// Keys each child owns.
const OWN_KEYS: u64 = 16;
/// Keys all children load.
const SHARED_KEYS: u64 = 4;
/// The size limit of the evicting cache: about a dozen large values.
pub const LIMIT: u64 = 512 * 1024;

/// A stored value: its write number and bytes derived from it.
pub type Value = (u64, ByteBuf);

/// The value of write `w`: every fourth one is large (> 32 KiB: its own file).
pub fn value(w: u64) -> Value {
    let len = if w.is_multiple_of(4) {
        33_000 + (w % 3000) as usize
    } else {
        40 + (w % 300) as usize
    };
    (w, ByteBuf::from(bytes_of(w, len)))
}

/// Deterministic bytes for write `w`.
pub fn bytes_of(w: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| ((w as usize).wrapping_mul(131) ^ j.wrapping_mul(7) ^ (j >> 8)) as u8)
        .collect()
}

/// True if `v` is exactly what write `v.0` stored.
pub fn whole(v: &Value) -> bool {
    v.1 == value(v.0).1
}

fn open(dir: &Path, limited: bool) -> dbx_concurio::Result<DiskCache> {
    let builder = DiskCache::builder().directory(dir).fallback(false);
    if limited {
        builder.size_limit(LIMIT).build()
    } else {
        builder.build()
    }
}

fn show(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), |w| w.to_string())
}

fn parse(s: &str) -> Option<u64> {
    s.parse().ok()
}

/// The child: random operations until it is killed.
pub fn child() -> Result<(), String> {
    let dir: String = env("CRASH_DIR")?;
    let limited = env::<u8>("CRASH_LIMITED")? == 1;
    let me: u64 = env("CRASH_CHILD")?;
    let round: u64 = env("CRASH_ROUND")?;
    let mut rng = Rng::new(env("CRASH_SEED")?);
    let cache = open(Path::new(&dir), limited).map_err(|e| format!("open: {e}"))?;
    say("READY");
    let checked = |key: &str, v: &Value| -> Result<u64, String> {
        if whole(v) {
            Ok(v.0)
        } else {
            say(&format!("BAD {key} {}", v.0));
            Err(format!("{key}: torn value of write {}", v.0))
        }
    };
    let load = |key: &str, w: u64| -> Result<(), String> {
        say(&format!("B {key} gol {w}"));
        let v = cache
            .get_or_load(key, || Ok::<_, std::io::Error>(value(w)), None)
            .map_err(|e| format!("get_or_load {key}: {e}"))?;
        let got = checked(key, &v.value)?;
        say(&format!("E {key} {got}"));
        Ok(())
    };
    for seq in 0..100_000 {
        let w = round * 1_000_000 + me * 100_000 + seq;
        let r = rng.below(100);
        if r < 10 {
            load(&format!("sh{}", rng.below(SHARED_KEYS)), w)?;
            continue;
        }
        let key = format!("c{me}-{}", rng.below(OWN_KEYS));
        match r {
            10..=54 => {
                say(&format!("B {key} set {w}"));
                cache
                    .set(&key, &value(w), None)
                    .map_err(|e| format!("set {key}: {e}"))?;
                say(&format!("E {key} {w}"));
            }
            55..=69 => {
                say(&format!("B {key} del"));
                cache
                    .delete(&key)
                    .map_err(|e| format!("delete {key}: {e}"))?;
                say(&format!("E {key} -"));
            }
            70..=84 => load(&key, w)?,
            _ => {
                let got = match cache
                    .get::<Value>(&key)
                    .map_err(|e| format!("get {key}: {e}"))?
                {
                    Some(v) => Some(checked(&key, &v.value)?),
                    None => None,
                };
                say(&format!("G {key} {}", show(got)));
            }
        }
    }
    Ok(())
}

/// What a crash run did and found.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub rounds: u64,
    pub kills: u64,
    /// `set`s and `get_or_load`s that returned: each must be found until replaced.
    pub writes_confirmed: u64,
    pub deletes_confirmed: u64,
    pub reads_checked: u64,
    /// Operations under way at the kill (either outcome is allowed).
    pub in_flight: u64,
    pub lost: u64,
    pub torn: u64,
    pub wrong: u64,
    pub violations: Vec<String>,
}

impl Report {
    /// The one-line summary printed by the test and the example.
    pub fn summary(&self) -> String {
        format!(
            "crash: {} rounds, {} SIGKILLs, {} writes confirmed, {} deletes confirmed, {} reads checked, {} in flight at a kill, {} lost, {} torn, {} wrong, {} violations",
            self.rounds,
            self.kills,
            self.writes_confirmed,
            self.deletes_confirmed,
            self.reads_checked,
            self.in_flight,
            self.lost,
            self.torn,
            self.wrong,
            self.violations.len()
        )
    }

    fn violation(&mut self, round: u64, what: String) {
        super::note(&mut self.violations, round, what);
    }
}

/// One cache's model: the value each owned key must hold (None: absent), and the write
/// numbers begun for each shared key.
#[derive(Default)]
struct Model {
    own: HashMap<String, Option<u64>>,
    shared_begun: HashMap<String, HashSet<u64>>,
}

/// Runs `rounds` rounds of [`CHILDREN`] writers killed at random instants, alternating an
/// unlimited and a size-limited cache under `work`.
pub fn run(spawn: Spawn<'_>, work: &Path, rounds: u64, seed: u64) -> Report {
    let mut rng = Rng::new(seed);
    let mut report = Report::default();
    let mut models = [Model::default(), Model::default()];
    for round in 0..rounds {
        let limited = round % 2 == 1;
        let dir = work.join(if limited { "limited" } else { "unlimited" });
        let model = &mut models[usize::from(limited)];
        let mut children = Vec::new();
        for me in 0..CHILDREN {
            let mut cmd = spawn("crash-cache");
            cmd.env("CRASH_DIR", &dir)
                .env("CRASH_LIMITED", u8::from(limited).to_string())
                .env("CRASH_CHILD", me.to_string())
                .env("CRASH_ROUND", round.to_string())
                .env("CRASH_SEED", rng.next().to_string());
            match Running::spawn(cmd) {
                Ok(c) => children.push(c),
                Err(e) => report.violation(round, e),
            }
        }
        // One round in eight kills at any instant, opening included.
        let early = rng.below(8) == 0;
        let max_delay = Duration::from_millis(if early { 150 } else { 60 });
        let mut problems = Vec::new();
        let outputs = kill_at_random(children, &mut rng, early, max_delay, &mut problems);
        report.kills += outputs.len() as u64;
        for p in problems {
            report.violation(round, p);
        }
        for lines in &outputs {
            for line in lines {
                let f: Vec<&str> = line.split(' ').collect();
                if let ["B", key, "gol", w] = f[..]
                    && key.starts_with("sh")
                    && let Some(w) = parse(w)
                {
                    model
                        .shared_begun
                        .entry(key.to_owned())
                        .or_default()
                        .insert(w);
                }
            }
        }
        let mut pending: HashMap<String, Option<u64>> = HashMap::new();
        for lines in &outputs {
            if let Some((key, new)) = replay(lines, model, limited, round, &mut report) {
                pending.insert(key, new);
            }
        }
        report.in_flight += pending.len() as u64;
        verify(&dir, limited, model, &pending, round, &mut report);
        report.rounds += 1;
    }
    report
}

/// Applies one child's lines to the model, checking its reads and results on the way;
/// returns its operation in flight at the kill, if any: (key, the state it would leave).
fn replay(
    lines: &[String],
    model: &mut Model,
    limited: bool,
    round: u64,
    report: &mut Report,
) -> Option<(String, Option<u64>)> {
    let mut begun: Option<(String, &str, Option<u64>)> = None;
    for line in lines {
        let f: Vec<&str> = line.split(' ').collect();
        match f[..] {
            ["BAD", key, w] => {
                report.torn += 1;
                report.violation(round, format!("{key}: a child read write {w} torn"));
            }
            ["B", key, op, w] if !key.starts_with("sh") => {
                begun = Some((key.to_owned(), op, parse(w)));
            }
            ["B", key, "del"] => begun = Some((key.to_owned(), "del", None)),
            ["B", ..] => begun = None,
            ["E", key, got] if key.starts_with("sh") => {
                let ok = parse(got)
                    .is_some_and(|w| model.shared_begun.get(key).is_some_and(|b| b.contains(&w)));
                if !ok {
                    report.wrong += 1;
                    report.violation(round, format!("{key}: get_or_load returned {got}"));
                }
                report.writes_confirmed += 1;
            }
            ["E", key, got] => {
                let got = parse(got);
                let prev = model.own.get(key).copied().flatten();
                let expected = match begun.take() {
                    Some((k, "set", w)) if k == key => got == w,
                    Some((k, "del", _)) if k == key => got.is_none(),
                    // get_or_load returns what was there, or what its loader made.
                    Some((k, "gol", w)) if k == key => got.is_some() && (got == prev || got == w),
                    _ => false,
                };
                if !expected {
                    report.wrong += 1;
                    report.violation(round, format!("{key}: unexpected result {line:?}"));
                }
                if got.is_some() {
                    report.writes_confirmed += 1;
                } else {
                    report.deletes_confirmed += 1;
                }
                model.own.insert(key.to_owned(), got);
            }
            ["G", key, got] => {
                report.reads_checked += 1;
                let got = parse(got);
                let want = model.own.get(key).copied().flatten();
                if got != want && !(limited && got.is_none()) {
                    if got.is_none() {
                        report.lost += 1;
                    } else {
                        report.wrong += 1;
                    }
                    report.violation(round, format!("{key}: read {got:?}, model says {want:?}"));
                }
            }
            _ => {}
        }
    }
    begun.map(|(key, op, w)| (key, if op == "del" { None } else { w }))
}

/// Reopens the cache after the kills and checks every key against the model, then that
/// `check()` has nothing to repair and that the cache still works.
fn verify(
    dir: &Path,
    limited: bool,
    model: &mut Model,
    pending: &HashMap<String, Option<u64>>,
    round: u64,
    report: &mut Report,
) {
    let cache = match open(dir, limited) {
        Ok(c) => c,
        Err(e) => {
            report.violation(round, format!("cannot reopen after the kills: {e}"));
            return;
        }
    };
    let read = |key: &str, report: &mut Report| -> Option<Option<u64>> {
        report.reads_checked += 1;
        match cache.get::<Value>(key) {
            Ok(None) => Some(None),
            Ok(Some(v)) if whole(&v.value) => Some(Some(v.value.0)),
            Ok(Some(v)) => {
                report.torn += 1;
                report.violation(round, format!("{key}: write {} torn", v.value.0));
                None
            }
            Err(e) => {
                report.violation(round, format!("{key}: {e}"));
                None
            }
        }
    };
    for me in 0..CHILDREN {
        for k in 0..OWN_KEYS {
            let key = format!("c{me}-{k}");
            let Some(got) = read(&key, report) else {
                continue;
            };
            let want = model.own.get(&key).copied().flatten();
            let allowed = got == want
                || pending.get(&key).is_some_and(|p| *p == got)
                || (limited && got.is_none());
            if !allowed {
                if got.is_none() {
                    report.lost += 1;
                } else {
                    report.wrong += 1;
                }
                report.violation(
                    round,
                    format!("{key}: found {got:?}, model says {want:?} (in flight: {pending:?})"),
                );
            }
            model.own.insert(key, got);
        }
    }
    for k in 0..SHARED_KEYS {
        let key = format!("sh{k}");
        if let Some(Some(w)) = read(&key, report)
            && !model.shared_begun.get(&key).is_some_and(|b| b.contains(&w))
        {
            report.wrong += 1;
            report.violation(round, format!("{key}: holds write {w}, never begun for it"));
        }
    }
    match cache.check() {
        Ok(c) if c.removed_entries == 0 => {}
        Ok(c) => report.violation(round, format!("check() removed damaged entries: {c:?}")),
        Err(e) => report.violation(round, format!("check(): {e}")),
    }
    let probe = cache
        .set("probe", &round, None)
        .and_then(|()| cache.get::<u64>("probe"));
    if !matches!(probe, Ok(Some(ref v)) if v.value == round) {
        report.violation(round, format!("the cache does not work: {probe:?}"));
    }
}
