//! `concurio run`: memoize a command's stdout, stderr and exit status (like `bkt`).
//!
//! A result younger than the caller's `--ttl` is replayed; otherwise `get_or_load` runs the
//! command once across all processes, streaming its output, and concurrent callers wait and
//! replay. `--stale S` (shorter than the TTL) replays a result older than S at once and
//! starts a detached `concurio run --refresh ...` that reloads it (through `get_or_load`
//! with S as its age limit, so concurrent refreshes run the command once). `--warm` only
//! starts such a refresh, forced.
//!
//! Results are stored for [`keep_for`] (at least a day, never less than the TTL): freshness
//! is the caller's `--ttl` (as in bkt), so a result stored by a short-TTL call serves
//! longer-TTL callers.
//!
//! Outputs are stored as they stream and replayed as streams (big ones in stream entries
//! of their own, see [`crate::output`]): memory stays bounded whatever their size.

use std::cell::{Cell, RefCell};
use std::ffi::OsString;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dbx_concurio::Error;
use dbx_concurio::caches::{DiskCache, DiskCacheValue};
use sha2::{Digest, Sha256};

use crate::capture::{Recorded, Replay, RunError, run_streaming, warn_not_stored};
use crate::cli::RunArgs;
use crate::duration;
use crate::holder::{self, HolderNote};
use crate::output::{self, SHARED_INLINE_MAX, Streams};
use crate::{Failure, Outcome};

/// The shortest time a result stays on disk (see the module docs).
const MIN_KEEP: Duration = Duration::from_secs(24 * 3600);

/// The least age limit of the reload that replaces a result whose stored output is gone:
/// the limit is also the expiry `get_or_load` stores the new result with until we extend
/// it, which must not lapse before the callers waiting for it look.
const MIN_RELOAD_AGE: Duration = Duration::from_secs(1);

/// How many times a `--discard-failures` call deletes a failure that another caller stored
/// meanwhile before it runs the command without the cross-process lock.
const DISCARD_ATTEMPTS: usize = 3;

/// Runs `concurio run`. `notice`: say on stderr whom we wait for when blocked.
pub fn run(mut args: RunArgs, notice: bool) -> Outcome {
    check_durations(&args)?;
    if args.stale.is_none() {
        args.stale = stale_from_env(args.ttl);
    }
    let cache = match args.location.open() {
        Ok(cache) => cache,
        Err(e) if args.uncached_fallback => {
            tracing::warn!("no cache can be used ({e}); running the command uncached");
            return run_uncached(&args);
        }
        Err(e) => return Err(no_cache(e)),
    };
    let key = entry_key(&args)?;
    tracing::debug!(key, dir = %cache.directory().display(), "run");
    let run = Run {
        cache: &cache,
        key: &key,
        args: &args,
        notice,
    };
    if args.warm && !args.refresh {
        spawn_refresh();
        return Ok(0);
    }
    if args.force || args.warm {
        return run.forced();
    }
    // A background refresh reloads unless someone refreshed within the stale threshold.
    let max_age = match (args.refresh, args.stale) {
        (true, Some(stale)) => stale,
        _ => args.ttl,
    };
    let outcome = run.load(max_age);
    // The process ends next. Left open, a local cache is unmapped and closed by the kernel
    // at exit, which costs a hit less than LMDB's own close (~70 µs, measured); nothing is
    // lost: the library's exit hook flushes a handle that is never dropped, as it does for
    // one kept in a static. A shared tier's handle is dropped: its drop hands the local
    // fills it queued to the disk and this process's counts to the fleet's.
    if args.location.shared.is_none() {
        std::mem::forget(cache);
    }
    outcome
}

/// bkt's rules: a TTL of zero means nothing, and a --stale at or past the TTL never applies
/// (it also catches the old meaning of --stale, a window after the TTL).
fn check_durations(args: &RunArgs) -> Result<(), Failure> {
    if args.ttl.is_zero() {
        return Err(Failure::with_code(2, "--ttl must be longer than 0s"));
    }
    match args.stale {
        Some(stale) if stale.is_zero() => {
            Err(Failure::with_code(2, "--stale must be longer than 0s"))
        }
        Some(stale) if stale >= args.ttl => Err(Failure::with_code(
            2,
            format!(
                "--stale ({}) must be shorter than --ttl ({}): a result older than --stale is \
                 replayed at once and refreshed in the background, until it is older than \
                 --ttl (bkt's meaning). --stale used to be a window after the TTL: the old \
                 `--ttl {ttl} --stale {stale}` is now `--ttl {sum} --stale {ttl}`",
                humantime::format_duration(stale),
                humantime::format_duration(args.ttl),
                ttl = humantime::format_duration(args.ttl)
                    .to_string()
                    .replace(' ', ""),
                stale = humantime::format_duration(stale)
                    .to_string()
                    .replace(' ', ""),
                sum = humantime::format_duration(args.ttl + stale)
                    .to_string()
                    .replace(' ', ""),
            ),
        )),
        _ => Ok(()),
    }
}

/// `CONCURIO_STALE`, if it is set, valid and shorter than `ttl`. A default from the
/// environment that does not fit this call (a shorter --ttl) is ignored, not an error.
fn stale_from_env(ttl: Duration) -> Option<Duration> {
    let text = std::env::var("CONCURIO_STALE")
        .ok()
        .filter(|t| !t.is_empty())?;
    match duration::parse(&text) {
        Ok(stale) if !stale.is_zero() && stale < ttl => Some(stale),
        Ok(_) => {
            tracing::debug!("CONCURIO_STALE={text} is not shorter than --ttl: not used");
            None
        }
        Err(e) => {
            tracing::warn!("ignoring CONCURIO_STALE={text:?}: {e}");
            None
        }
    }
}

/// The error for a cache that cannot be opened, with the ways out.
fn no_cache(error: Error) -> Failure {
    Failure::from(format!(
        "{error} (pass --uncached-fallback or set CONCURIO_UNCACHED_FALLBACK=1 to run the \
         command uncached when no cache can be used)"
    ))
}

fn run_uncached(args: &RunArgs) -> Outcome {
    match run_streaming(&args.command, args.stdin, None) {
        Ok(rec) => Ok(rec.exit_code()),
        Err(e) => e.into_outcome(),
    }
}

/// How long a result stays on disk: `--keep`, else [`MIN_KEEP`]; never shorter than the TTL.
fn keep_for(args: &RunArgs) -> Duration {
    args.keep.unwrap_or(MIN_KEEP).max(args.ttl)
}

/// One `concurio run` against an open cache.
struct Run<'a> {
    cache: &'a DiskCache,
    key: &'a str,
    args: &'a RunArgs,
    notice: bool,
}

impl Run<'_> {
    /// `--force` (and the background half of `--warm`): run now, store, exit with its status.
    fn forced(&self) -> Outcome {
        let _note = HolderNote::publish(self.cache.directory(), self.key, &self.args.command);
        let streams = self.streams();
        let rec = match run_streaming(&self.args.command, self.args.stdin, Some(&streams)) {
            Ok(rec) => rec,
            Err(e) => return e.into_outcome(),
        };
        if rec.success() || !self.args.discard_failures {
            let old = self.stored();
            match self.cache.set(self.key, &rec, Some(keep_for(self.args))) {
                Ok(()) => self.replaced(old.as_ref(), &rec),
                Err(e) => {
                    warn_not_stored(&e);
                    output::delete_streams(self.cache, rec.stream_keys());
                }
            }
        } else {
            output::delete_streams(self.cache, rec.stream_keys());
        }
        Ok(rec.exit_code())
    }

    /// Where this run's outputs go: stream entries kept as long as the result.
    /// With a shared tier, outputs up to [`SHARED_INLINE_MAX`] stay inline so that other
    /// machines replay them instead of running the command again.
    fn streams(&self) -> Streams<'_> {
        let streams = Streams::new(self.cache, Some(keep_for(self.args)));
        match self.args.location.shared {
            Some(_) => streams.inline_up_to(SHARED_INLINE_MAX),
            None => streams,
        }
    }

    /// The result stored now, if there is one we can read.
    fn stored(&self) -> Option<Recorded> {
        match self.cache.get::<Recorded>(self.key) {
            Ok(entry) => entry.map(|e| e.value),
            Err(e) => {
                tracing::debug!("the previous result cannot be read: {e}");
                None
            }
        }
    }

    /// After `new` replaced `old`: its stream entries expire with it (they were written
    /// first, so their keep time started earlier), and `old`'s are deleted. A replay that
    /// has them open reads them to the end.
    fn replaced(&self, old: Option<&Recorded>, new: &Recorded) {
        let keep = Some(keep_for(self.args));
        for key in new.stream_keys() {
            if let Err(e) = self.cache.touch(key, keep) {
                tracing::warn!("cannot extend the stream entry {key}: {e}");
            }
        }
        if let Some(old) = old {
            let current: Vec<&str> = new.stream_keys().collect();
            let gone = old.stream_keys().filter(|k| !current.contains(k));
            output::delete_streams(self.cache, gone);
        }
    }

    /// Replays a result younger than `max_age`, or runs the command once across processes.
    /// With `--discard-failures` a stored failure is deleted and the command runs instead.
    fn load(&self, max_age: Duration) -> Outcome {
        for _ in 0..DISCARD_ATTEMPTS {
            match self.load_once(max_age, true)? {
                Loaded::Done(code) => return Ok(code),
                Loaded::StoredFailure => {
                    tracing::info!("not replaying a stored failure (--discard-failures)");
                    crate::capture::delete_result(self.cache, self.key)?;
                }
            }
        }
        // Other callers keep storing failures: run without the lock rather than replay one.
        self.forced()
    }

    /// One `get_or_load`. `reload_if_gone`: a result whose stored output is gone is
    /// replaced through one more `get_or_load` (else run without the lock).
    fn load_once(&self, max_age: Duration, reload_if_gone: bool) -> Result<Loaded, Failure> {
        let ran: Cell<Option<u8>> = Cell::new(None);
        let started = AtomicBool::new(false);
        let old: RefCell<Option<Recorded>> = RefCell::new(None);
        let written: RefCell<Vec<String>> = RefCell::new(Vec::new());
        let streams = self.streams();
        let loader = || {
            started.store(true, Ordering::SeqCst);
            let _note = HolderNote::publish(self.cache.directory(), self.key, &self.args.command);
            *old.borrow_mut() = self.stored(); // under the key's lock: no other loader
            let rec = run_streaming(&self.args.command, self.args.stdin, Some(&streams))?;
            ran.set(Some(rec.exit_code()));
            if self.args.discard_failures && !rec.success() {
                output::delete_streams(self.cache, rec.stream_keys());
                return Err(RunError::Failed(Box::new(rec)));
            }
            *written.borrow_mut() = rec.stream_keys().map(str::to_owned).collect();
            Ok(rec)
        };
        let loaded = holder::while_waiting(
            self.notice,
            self.cache.directory(),
            self.key,
            &started,
            || {
                self.cache
                    .get_or_load::<Recorded, _, _>(self.key, loader, Some(max_age))
            },
        );
        match (loaded, ran.get()) {
            (Ok(entry), Some(code)) => {
                // get_or_load stored it with expiry max_age; keep it for longer-TTL callers.
                if let Err(e) = self.cache.touch(self.key, Some(keep_for(self.args))) {
                    warn_not_stored(&e);
                }
                self.replaced(old.borrow().as_ref(), &entry);
                Ok(Loaded::Done(code)) // its output was streamed as it ran
            }
            (Ok(entry), None) if self.args.discard_failures && !entry.success() => {
                Ok(Loaded::StoredFailure)
            }
            (Ok(entry), None) => {
                let Some(replay) = entry.open(self.cache)? else {
                    return self.output_gone(&entry, max_age, reload_if_gone);
                };
                if let Some(stale) = self.args.stale
                    && !self.args.refresh
                    && entry.age() >= stale
                {
                    spawn_refresh();
                }
                self.replay(replay)?;
                Ok(Loaded::Done(entry.exit_code()))
            }
            (Err(Error::Loader { source, .. }), _) => match source.downcast::<RunError>() {
                Ok(run_error) => run_error.into_outcome().map(Loaded::Done),
                Err(other) => Err(other.into()),
            },
            // The command ran and its output was streamed; only storing it failed.
            (Err(e), Some(code)) => {
                warn_not_stored(&e);
                output::delete_streams(self.cache, written.borrow().iter().map(String::as_str));
                Ok(Loaded::Done(code))
            }
            (Err(e), None) => Err(e.into()),
        }
    }

    /// A fresh result whose output is gone (its stream entry pruned, evicted or deleted) is
    /// a miss. It is replaced through `get_or_load` with the result's own age as the limit
    /// (at least [`MIN_RELOAD_AGE`]): a result stored after it is fresh, so the command runs
    /// once however many callers found it, a caller that waited replays the new result, and
    /// so does one that lost a race with a refresh (which deletes the old streams). If that
    /// gives a result whose output is gone too (the same one, younger than the limit), the
    /// command runs without the lock.
    fn output_gone(
        &self,
        entry: &DiskCacheValue<Recorded>,
        max_age: Duration,
        reload: bool,
    ) -> Result<Loaded, Failure> {
        tracing::info!("the stored output is gone: loading the result again");
        if reload {
            let limit = entry.age().max(MIN_RELOAD_AGE).min(max_age);
            return self.load_once(limit, false);
        }
        self.forced().map(Loaded::Done)
    }

    /// Writes a stored result's output. If it turns out damaged, it is deleted (the next
    /// call runs the command) and that is the error.
    fn replay(&self, replay: Replay) -> Result<(), Failure> {
        match replay.write() {
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                if let Err(d) = crate::capture::delete_result(self.cache, self.key) {
                    tracing::warn!("cannot delete the damaged result: {d}");
                }
                Err(format!(
                    "the stored output of {:?} in {} is damaged ({e}); it was deleted, the \
                     next call runs the command",
                    self.key,
                    self.cache.directory().display()
                )
                .into())
            }
            other => Ok(other?),
        }
    }
}

/// What one `get_or_load` gave.
enum Loaded {
    /// Finished: exit with this status.
    Done(u8),
    /// A failure another caller stored, which `--discard-failures` must not replay.
    StoredFailure,
}

/// The entry's key: `--key` as given (after the `--scope`, if any), else `run-v2:` + the
/// SHA-256 of a length-prefixed, tagged encoding of the scope, argv, the working directory
/// (`--cwd`), the `--env` variables that are set (sorted by name; set-but-empty counts) and
/// the modification times of the `--modtime` files (sorted by path; a missing file counts
/// as missing). `v2` changes if the encoding changes, or the stored record in a way older
/// results cannot be read as (outputs in stream entries were added readably: not a change).
fn entry_key(args: &RunArgs) -> Result<String, Failure> {
    if let Some(key) = &args.key {
        return Ok(match &args.scope {
            Some(scope) => format!("{scope:?}/{key}"),
            None => key.clone(),
        });
    }
    let mut hash = Sha256::new();
    let mut field = |tag: u8, bytes: &[u8]| {
        hash.update([tag]);
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    field(b'V', b"concurio run v2");
    if let Some(scope) = &args.scope {
        field(b's', scope.as_bytes());
    }
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
        // As in bkt: an unset variable adds nothing, so `--env X` with X unset shares the
        // entry of a call without it.
        if let Some(value) = std::env::var_os(name) {
            field(b'n', name.as_bytes());
            field(b'v', value.as_encoded_bytes());
        }
    }
    for (path, modified) in modtimes(&args.modtime)? {
        field(b'm', path.as_os_str().as_encoded_bytes());
        match modified {
            Some(ns) => field(b't', &ns.to_le_bytes()),
            None => field(b'x', b""),
        }
    }
    let digest = hash.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("run-v2:{hex}"))
}

/// The `--modtime` files, absolute and sorted, with their modification times in nanoseconds
/// since the epoch (`None`: missing).
fn modtimes(
    paths: &[std::path::PathBuf],
) -> Result<Vec<(std::path::PathBuf, Option<u128>)>, Failure> {
    let mut out = Vec::new();
    for path in paths {
        let absolute =
            std::path::absolute(path).map_err(|e| format!("--modtime {}: {e}", path.display()))?;
        let modified = match std::fs::metadata(&absolute).and_then(|m| m.modified()) {
            Ok(time) => Some(
                time.duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos(),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("--modtime {}: {e}", path.display()).into()),
        };
        out.push((absolute, modified));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Starts `concurio <our arguments, with --refresh after "run">` detached, with null stdio,
/// and does not wait for it. Failure to start it only logs a warning: the replay (or the
/// `--warm` call) still succeeds.
fn spawn_refresh() {
    let mut argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    // Only global options (-v/-q) can precede the subcommand, so the first "run" is it.
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
        Ok(child) => tracing::info!(pid = child.id(), "refreshing in the background"),
        Err(e) => tracing::warn!("cannot start the background refresh: {e}"),
    }
}
