//! `concurio cache list|get|delete|stats|prune|check|clear`: human text by default, `--json` for
//! scripts. Results go to stdout.

use std::time::SystemTime;

use dbx_concurio::caches::{DiskCache, EntryInfo};
use serde_json::{Value, json};

use crate::cli::{CacheCommand, CacheOpts};
use crate::json_value::AnyValue;
use crate::{Outcome, duration};

pub fn cache(command: CacheCommand) -> Outcome {
    match command {
        CacheCommand::List(opts) => list(&opts),
        CacheCommand::Get { key, opts } => get(&key, &opts),
        CacheCommand::Delete { key, opts } => delete(&key, &opts),
        CacheCommand::Stats(opts) => stats(&opts),
        CacheCommand::Prune {
            opts,
            older_than,
            root,
        } => {
            let cache = opts.location.open()?;
            let purged = cache.purge_expired()?;
            let removed = crate::install::prune_executables(older_than, root.as_deref())?;
            let report = json!({ "expired_removed": purged, "executables_removed": removed });
            emit(&opts, &report, || {
                format!(
                    "removed {purged} expired entries and {} executables",
                    removed.len()
                )
            })
        }
        CacheCommand::Check(opts) => {
            let report = opts.location.open()?.check()?;
            let json = json!({
                "entries": report.entries,
                "removed_entries": report.removed_entries,
                "removed_files": report.removed_files,
            });
            emit(&opts, &json, || {
                format!(
                    "{} entries verified; removed {} damaged entries and {} debris files",
                    report.entries, report.removed_entries, report.removed_files
                )
            })
        }
        CacheCommand::Clear(opts) => {
            let removed = opts.location.open()?.clear()?;
            emit(&opts, &json!({ "removed": removed }), || {
                format!("removed {removed} entries")
            })
        }
    }
}

fn list(opts: &CacheOpts) -> Outcome {
    let entries = opts.location.open()?.entries()?;
    if opts.json {
        let rows: Vec<Value> = entries.iter().map(entry_json).collect();
        println!("{}", Value::Array(rows));
        return Ok(0);
    }
    println!("{:>10}  {:>10}  {:>9}  KEY", "AGE", "EXPIRES IN", "BYTES");
    for e in &entries {
        let expires = match e.expires_at {
            _ if e.expired => "expired".to_owned(),
            None => "never".to_owned(),
            Some(at) => duration::human(at.duration_since(SystemTime::now()).unwrap_or_default()),
        };
        let age = duration::human(e.load_timestamp.elapsed().unwrap_or_default());
        let key = e.key.escape_debug(); // one line per entry, whatever the key holds
        println!("{age:>10}  {expires:>10}  {:>9}  {key}", e.size);
    }
    Ok(0)
}

fn get(key: &str, opts: &CacheOpts) -> Outcome {
    let cache = opts.location.open()?;
    let Some(entry) = cache.get::<AnyValue>(key)? else {
        return Err(format!(
            "no entry for key {key:?} in {}",
            cache.directory().display()
        )
        .into());
    };
    let out = if opts.json {
        json!({
            "key": key,
            "value": entry.value.0,
            "loaded_at": timestamp(entry.load_timestamp),
            "expires_at": entry.expires_at.map(timestamp),
        })
        .to_string()
    } else {
        serde_json::to_string_pretty(&entry.value.0)?
    };
    println!("{out}");
    Ok(0)
}

fn delete(key: &str, opts: &CacheOpts) -> Outcome {
    let deleted = opts.location.open()?.delete(key)?;
    let report = json!({ "key": key, "deleted": deleted });
    emit(opts, &report, || {
        let what = if deleted { "deleted" } else { "no entry" };
        format!("{what}: {}", key.escape_debug())
    })
}

fn stats(opts: &CacheOpts) -> Outcome {
    let cache = opts.location.open()?;
    let entries = cache.entries()?;
    let counters = cache.stats()?;
    let report = json!({
        "directory": cache.directory(),
        "entries": entries.len(),
        "expired": entries.iter().filter(|e| e.expired).count(),
        "bytes": counters.bytes,
        "size_limit": counters.size_limit,
        "lock_files": lock_files(&cache),
        "hits": counters.hits,
        "misses": counters.misses,
        "evictions": counters.evictions,
    });
    emit(opts, &report, || {
        let fields = [
            "directory",
            "entries",
            "expired",
            "bytes",
            "size_limit",
            "lock_files",
            "hits",
            "misses",
            "evictions",
        ];
        let lines = fields.map(|f| format!("{f:<11} {}", plain(&report[f])));
        lines.join("\n")
    })
}

/// Prints `report` as JSON with `--json`, else the text `human` makes.
fn emit(opts: &CacheOpts, report: &Value, human: impl FnOnce() -> String) -> Outcome {
    if opts.json {
        println!("{report}");
    } else {
        println!("{}", human());
    }
    Ok(0)
}

fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "none".to_owned(),
        other => other.to_string(),
    }
}

/// Number of `.key-locks/*.lock` files (the library keeps a fixed set of them).
fn lock_files(cache: &DiskCache) -> usize {
    let dir = cache.directory().join(".key-locks");
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "lock"))
            .count()
    })
}

fn entry_json(e: &EntryInfo) -> Value {
    json!({
        "key": e.key,
        "loaded_at": timestamp(e.load_timestamp),
        "expires_at": e.expires_at.map(timestamp),
        "expired": e.expired,
        "bytes": e.size,
        "in_file": e.in_file,
    })
}

/// RFC 3339, UTC, to the millisecond.
fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
