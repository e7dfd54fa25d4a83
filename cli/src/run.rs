//! `concurio run`: memoize a command's stdout, stderr and exit status (like `bkt`).
//!
//! Fresh entry (younger than the TTL): replay it. Missing or old: `get_or_load` runs the
//! command once across all processes, streaming its output; concurrent callers wait and
//! replay. With `--stale S`, entries are kept TTL+S; one older than the TTL is replayed at
//! once while a detached `concurio run --refresh ...` reloads it (the refresh goes through
//! `get_or_load` too, so concurrent refreshes run the command once).

use std::cell::Cell;
use std::ffi::OsString;
use std::process::{Command, Stdio};
use std::time::Duration;

use dbx_concurio::Error;
use dbx_concurio::caches::DiskCache;
use sha2::{Digest, Sha256};

use crate::Outcome;
use crate::capture::{Recorded, RunError, run_streaming};
use crate::cli::RunArgs;

pub fn run(args: RunArgs) -> Outcome {
    let cache = args.location.open()?;
    let key = entry_key(&args)?;
    let stale = args.stale.unwrap_or_default();
    let keep = args.ttl.saturating_add(stale);
    tracing::debug!(key, dir = %cache.directory().display(), "run");
    if args.force {
        return match run_streaming(&args.command, args.stdin) {
            Ok(rec) if rec.success() || !args.discard_failures => {
                cache.set(&key, &rec, Some(keep))?;
                Ok(rec.exit_code())
            }
            Ok(rec) => Ok(rec.exit_code()),
            Err(e) => e.into_outcome(),
        };
    }
    if !stale.is_zero()
        && !args.refresh
        && let Some(code) = serve_stale(&cache, &key, &args, keep)?
    {
        return Ok(code);
    }
    load(&cache, &key, &args, keep)
}

/// With `--stale`: replays an entry younger than TTL+stale, starting a background refresh if
/// it is older than the TTL. `None` if there is no such entry.
fn serve_stale(
    cache: &DiskCache,
    key: &str,
    args: &RunArgs,
    keep: Duration,
) -> Result<Option<u8>, crate::Failure> {
    let Some(hit) = cache.get::<Recorded>(key)? else {
        return Ok(None);
    };
    if hit.age() >= keep {
        return Ok(None);
    }
    if hit.age() >= args.ttl {
        spawn_refresh();
    }
    hit.replay()?;
    Ok(Some(hit.exit_code()))
}

/// The `get_or_load` path: replay a fresh entry, or run the command (once across processes).
fn load(cache: &DiskCache, key: &str, args: &RunArgs, keep: Duration) -> Outcome {
    let ran = Cell::new(false);
    let loaded = cache.get_or_load(
        key,
        || {
            ran.set(true);
            let rec = run_streaming(&args.command, args.stdin)?;
            if args.discard_failures && !rec.success() {
                return Err(RunError::Failed(Box::new(rec)));
            }
            Ok(rec)
        },
        Some(args.ttl),
    );
    match loaded {
        Ok(entry) if ran.get() => {
            if keep > args.ttl {
                // get_or_load stored it with expiry TTL; keep it for the stale window too.
                cache.touch(key, Some(keep))?;
            }
            Ok(entry.exit_code()) // its output was streamed as it ran
        }
        Ok(entry) => {
            entry.replay()?;
            Ok(entry.exit_code())
        }
        Err(Error::Loader { source, .. }) => match source.downcast::<RunError>() {
            Ok(run_error) => run_error.into_outcome(),
            Err(other) => Err(other.into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// The entry's key: `--key` as given, else `run-v1:` + the SHA-256 of a length-prefixed,
/// tagged encoding of argv, the working directory (`--cwd`) and the `--env` variables
/// (sorted by name; unset and empty differ). `v1` changes if the encoding or the stored
/// record changes.
fn entry_key(args: &RunArgs) -> std::io::Result<String> {
    if let Some(key) = &args.key {
        return Ok(key.clone());
    }
    let mut hash = Sha256::new();
    let mut field = |tag: u8, bytes: &[u8]| {
        hash.update([tag]);
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    field(b'V', b"concurio run v1");
    for arg in &args.command {
        field(b'a', arg.as_encoded_bytes());
    }
    if args.cwd {
        field(
            b'c',
            std::env::current_dir()?.as_os_str().as_encoded_bytes(),
        );
    }
    let mut names = args.env.clone();
    names.sort();
    names.dedup();
    for name in &names {
        field(b'n', name.as_bytes());
        match std::env::var_os(name) {
            Some(value) => field(b'v', value.as_encoded_bytes()),
            None => field(b'u', b""),
        }
    }
    let digest = hash.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("run-v1:{hex}"))
}

/// Starts `concurio <our arguments, with --refresh after "run">` detached, with null stdio,
/// and does not wait for it. Failure to start it only logs a warning: the stale replay
/// still happens.
fn spawn_refresh() {
    let mut argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    // Only -v/-q can precede the subcommand, so the first "run" is the subcommand.
    let Some(at) = argv.iter().position(|a| a == "run") else {
        return;
    };
    argv.insert(at + 1, "--refresh".into());
    let spawned = std::env::current_exe().and_then(|exe| {
        let mut cmd = Command::new(exe);
        cmd.args(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0); // no terminal signals
        cmd.spawn()
    });
    match spawned {
        Ok(child) => tracing::info!(
            pid = child.id(),
            "refreshing a stale entry in the background"
        ),
        Err(e) => tracing::warn!("cannot start the background refresh: {e}"),
    }
}
