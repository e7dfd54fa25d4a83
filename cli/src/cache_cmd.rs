//! `concurio cache list|get|delete|path|stats|prune|check|clear`: human text by default,
//! `--json` for scripts. Results go to stdout.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::time::SystemTime;

use dbx_concurio::caches::{DiskCache, EntryInfo};
use serde_json::{Value, json};

use crate::capture::Recorded;
use crate::cli::{CacheCommand, CacheOpts};
use crate::json_value::{AnyValue, bytes_json};
use crate::output::{self, Output};
use crate::{Outcome, duration, size};

pub fn cache(command: CacheCommand) -> Outcome {
    match command {
        CacheCommand::List(opts) => list(&opts),
        CacheCommand::Get { key, opts } => get(&key, &opts),
        CacheCommand::Delete { key, dry_run, opts } => delete(&key, dry_run, &opts),
        CacheCommand::Path(opts) => {
            let dir = opts.location.path();
            emit(&opts, &json!({ "directory": dir }), || {
                dir.display().to_string()
            })
        }
        CacheCommand::Stats(opts) => stats(&opts),
        CacheCommand::Prune {
            opts,
            older_than,
            root,
            dry_run,
        } => {
            let cache = opts.location.open()?;
            let purged = if dry_run {
                cache.entries()?.iter().filter(|e| e.expired).count()
            } else {
                cache.purge_expired()?
            };
            let removed = crate::install::prune_executables(older_than, root.as_deref(), dry_run)?;
            let report = json!({
                "expired_removed": purged,
                "executables_removed": removed,
                "dry_run": dry_run,
            });
            let verb = if dry_run { "would remove" } else { "removed" };
            emit(&opts, &report, || {
                format!(
                    "{verb} {purged} expired entries and {} executables",
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
        CacheCommand::Clear {
            dry_run: true,
            opts,
        } => {
            let entries = opts.location.open()?.entries()?;
            let bytes: u64 = entries.iter().map(|e| e.size).sum();
            let report = json!({ "dry_run": true, "would_remove": entries.len(), "bytes": bytes });
            emit(&opts, &report, || {
                format!(
                    "would remove {} entries ({}); nothing removed (--dry-run)",
                    entries.len(),
                    size::human(bytes)
                )
            })
        }
        CacheCommand::Clear {
            dry_run: false,
            opts,
        } => {
            let removed = opts.location.open()?.clear()?;
            emit(&opts, &json!({ "removed": removed }), || {
                format!("removed {removed} entries")
            })
        }
    }
}

fn list(opts: &CacheOpts) -> Outcome {
    let cache = opts.location.open()?;
    let rows = listed(&cache)?;
    if opts.json {
        let rows: Vec<Value> = rows
            .iter()
            .map(|row| {
                let mut json = entry_json(&row.entry);
                json["bytes"] = json!(row.size);
                json["command"] = json!(row.command);
                if let Some(streams) = &row.streams {
                    json["streams"] = json!(streams);
                }
                json
            })
            .collect();
        println!("{}", Value::Array(rows));
        return Ok(0);
    }
    let mut table = vec![[
        "AGE".to_owned(),
        "EXPIRES IN".to_owned(),
        "SIZE".to_owned(),
        "COMMAND OR KEY".to_owned(),
    ]];
    for row in rows {
        let e = &row.entry;
        let expires = match e.expires_at {
            _ if e.expired => "expired".to_owned(),
            None => "never".to_owned(),
            Some(at) => duration::human(at.duration_since(SystemTime::now()).unwrap_or_default()),
        };
        let age = duration::human(e.load_timestamp.elapsed().unwrap_or_default());
        let key = e.key.escape_debug().to_string(); // one line per entry, whatever it holds
        let what = match row.command {
            Some(command) if is_hashed_run_key(&e.key) => command,
            Some(command) => format!("{key} = {command}"),
            None => key,
        };
        table.push([age, expires, size::human(row.size), what]);
    }
    print_table(&table);
    Ok(0)
}

/// One line of `cache list`.
struct Listed {
    entry: EntryInfo,
    /// The command line of a `concurio run` result.
    command: Option<String>,
    /// The keys of its stream entries (for a `concurio run` result).
    streams: Option<Vec<String>>,
    /// Its size with its stream entries.
    size: u64,
}

/// The entries to list: a `concurio run` result with the size of its stream entries, which
/// are not listed on their own. A stream entry that no result names (its command is still
/// running, or its result was deleted or evicted) is listed as itself.
fn listed(cache: &DiskCache) -> Result<Vec<Listed>, dbx_concurio::Error> {
    let entries = cache.entries()?;
    let sizes: HashMap<&str, u64> = entries.iter().map(|e| (e.key.as_str(), e.size)).collect();
    let mut rows = Vec::new();
    let mut folded = HashSet::new();
    for e in &entries {
        let run = run_result(cache, &e.key);
        let (command, streams, size) = match &run {
            Some(run) => {
                let streams: Vec<String> = run.stream_keys().map(str::to_owned).collect();
                // What is there: a stream entry that is gone adds nothing.
                let bytes: u64 = streams.iter().filter_map(|k| sizes.get(k.as_str())).sum();
                folded.extend(streams.clone());
                let command = crate::holder::command_line(&run.command);
                (Some(command), Some(streams), e.size + bytes)
            }
            None => (None, None, e.size),
        };
        rows.push(Listed {
            entry: e.clone(),
            command,
            streams,
            size,
        });
    }
    rows.retain(|row| !(output::is_stream_key(&row.entry.key) && folded.contains(&row.entry.key)));
    Ok(rows)
}

/// Prints rows in columns that stay aligned whatever their widths: the text of the last
/// column is left as is, the others are padded (numbers to the right).
fn print_table(rows: &[[String; 4]]) {
    let mut widths = [0usize; 3];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for [age, expires, size, what] in rows {
        let [a, e, s] = widths;
        println!("{age:>a$}  {expires:>e$}  {size:>s$}  {what}");
    }
}

/// The `concurio run` result `key` holds, if it holds one (and has not expired).
fn run_result(cache: &DiskCache, key: &str) -> Option<Recorded> {
    if output::is_stream_key(key) {
        return None; // raw bytes: not worth trying to decode
    }
    cache.get::<Recorded>(key).ok()?.map(|e| e.value)
}

/// Keys `concurio run` makes by hashing the command line (as opposed to `--key NAME`).
fn is_hashed_run_key(key: &str) -> bool {
    key.starts_with("run-v1:") || key.starts_with("run-v2:")
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
    let mut value = entry.value.0;
    if let Some(run) = run_result(&cache, key) {
        with_streamed_output(&cache, key, &run, &mut value)?;
    }
    let out = if opts.json {
        json!({
            "key": key,
            "value": value,
            "loaded_at": timestamp(entry.load_timestamp),
            "expires_at": entry.expires_at.map(timestamp),
        })
        .to_string()
    } else {
        serde_json::to_string_pretty(&value)?
    };
    println!("{out}");
    Ok(0)
}

/// Puts the outputs of a `concurio run` result that are in stream entries into its JSON
/// form, as an inline output shows (text, or a list of byte values). They are read whole:
/// `cache get` is for reading a result, `run` replays big ones as streams.
fn with_streamed_output(
    cache: &DiskCache,
    key: &str,
    run: &Recorded,
    value: &mut Value,
) -> Result<(), crate::Failure> {
    for (name, out) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
        let Output::Stream { stream, .. } = out else {
            continue;
        };
        let Some(mut reader) = out.open(cache)? else {
            return Err(format!(
                "the {name} of {key:?} is gone (its stream entry {stream} was deleted or \
                 expired): the next `concurio run` of it runs the command again"
            )
            .into());
        };
        let mut bytes = Vec::new();
        reader
            .read_to_end(&mut bytes)
            .map_err(|e| format!("reading the {name} of {key:?} ({stream}): {e}"))?;
        value[name] = bytes_json(&bytes);
    }
    Ok(())
}

fn delete(key: &str, dry_run: bool, opts: &CacheOpts) -> Outcome {
    let cache = opts.location.open()?;
    let shown = key.escape_debug();
    if dry_run {
        let found = cache.entries()?.iter().any(|e| e.key == key);
        let report = json!({ "key": key, "dry_run": true, "would_delete": found });
        return emit(opts, &report, || match found {
            true => format!("would delete: {shown} (--dry-run)"),
            false => format!("no entry: {shown}"),
        });
    }
    let deleted = crate::capture::delete_result(&cache, key)?; // with its stream entries
    let report = json!({ "key": key, "deleted": deleted });
    emit(opts, &report, || {
        let what = if deleted { "deleted" } else { "no entry" };
        format!("{what}: {shown}")
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
        "shared": shared_report(&cache),
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
            "shared",
        ];
        let lines = fields.map(|f| {
            let value = match (f, report[f].as_u64()) {
                ("bytes" | "size_limit", Some(bytes)) => size::human(bytes),
                ("shared", _) => shared_line(&report[f]),
                _ => plain(&report[f]),
            };
            format!("{f:<11} {value}")
        });
        lines.join("\n")
    })
}

/// The shared tier as its server sees it now (null without one).
fn shared_report(cache: &DiskCache) -> Value {
    let endpoint = cache
        .stats()
        .ok()
        .and_then(|s| s.shared)
        .map(|s| s.endpoint);
    match cache.shared_info() {
        Ok(None) => Value::Null,
        Ok(Some(info)) => json!({
            "endpoint": info.endpoint,
            "available": true,
            "entries": info.entries,
            "used_memory": info.used_memory,
            "maxmemory": info.maxmemory,
            "maxmemory_policy": info.maxmemory_policy,
            "fleet": {
                "hits": info.fleet.hits,
                "misses": info.fleet.misses,
                "loads": info.fleet.loads,
                "stores": info.fleet.stores,
                "fenced": info.fleet.fenced,
            },
        }),
        Err(e) => json!({ "endpoint": endpoint, "available": false, "error": e.to_string() }),
    }
}

/// One line for the shared tier in the text form of `cache stats`.
fn shared_line(shared: &Value) -> String {
    if shared.is_null() {
        return "none".into();
    }
    let endpoint = plain(&shared["endpoint"]);
    if shared["available"] != true {
        return format!("{endpoint} unavailable: {}", plain(&shared["error"]));
    }
    let bytes = |f: &str| size::human(shared[f].as_u64().unwrap_or(0));
    let limit = match shared["maxmemory"].as_u64() {
        Some(0) | None => "no maxmemory".into(),
        Some(_) => format!("maxmemory {}", bytes("maxmemory")),
    };
    let fleet = |f: &str| plain(&shared["fleet"][f]);
    format!(
        "{endpoint}: {} entries; server uses {}, {limit}, policy {}; fleet: {} hits, {} \
         misses, {} loads, {} stores, {} fenced",
        plain(&shared["entries"]),
        bytes("used_memory"),
        plain(&shared["maxmemory_policy"]),
        fleet("hits"),
        fleet("misses"),
        fleet("loads"),
        fleet("stores"),
        fleet("fenced"),
    )
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
