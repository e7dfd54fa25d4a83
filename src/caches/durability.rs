//! What survives a machine crash: the `.state` file and the background flush.
//!
//! In `Durability::Fast` commits are not fsynced. After a power loss, pages of a commit may
//! be on disk while others are not, and LMDB could then follow a reference into garbage. So
//! `.state` says `<boot id> dirty` whenever commits may be unsynced, and the first opener
//! after a reboot resets a cache that is dirty from another boot. To keep that from wiping
//! caches on every reboot, the state goes back to `clean` by itself:
//!
//! - a writer, inside its LMDB write transaction (LMDB's writer lock is held, so no other
//!   process writes or flushes meanwhile), reads `.state` and, if it says clean, writes
//!   `dirty` and fsyncs it *before* any of its pages can reach the disk;
//! - each writing process runs a flusher thread: after [`QUIET`] without writes (at most
//!   [`MAX_DELAY`] after the first unflushed one), it takes the writer lock, `syncfs`es the
//!   file system (index, value files and directory entries of every process) and writes
//!   `clean`. Holding the writer lock, no commit can slip in between the sync and the mark;
//! - the last handle's drop and process exit (`atexit`: `std::process::exit`, returning from
//!   `main`) flush what is pending at once;
//! - a first opener that finds `dirty` from the *current* boot (its writers died before
//!   flushing: the page cache still holds everything) syncs and marks it clean.
//!
//! The window: a reboot loses what was written less than about a second before it, or the
//! whole cache if the last writer was killed (SIGKILL, Ctrl-C) within that second and nobody
//! opened the cache again before the reboot.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, Once, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::atomic::write_atomically;
use crate::error::{Error, IoContext, Result};
use crate::sys;

pub(crate) const STATE_FILE: &str = ".state";
/// Flush after this long without writes...
pub(crate) const QUIET: Duration = Duration::from_millis(200);
/// ...or this long after the first unflushed write, whichever comes first.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(1);

/// What `.state` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum State {
    Clean,
    /// Commits since the last sync may not be on disk; written during boot `boot`.
    Dirty {
        boot: String,
    },
}

/// Reads `.state` (a missing or unreadable file counts as clean: a new cache).
pub(crate) fn read_state(dir: &Path) -> State {
    parse(&crate::atomic::read_small(&dir.join(STATE_FILE)).unwrap_or_default())
}

fn parse(bytes: &[u8]) -> State {
    let text = String::from_utf8_lossy(bytes);
    match text.trim().split_once(' ') {
        Some((boot, "dirty")) => State::Dirty {
            boot: boot.to_owned(),
        },
        _ => State::Clean,
    }
}

/// Replaces `.state` with `clean` (temp file + rename). Only while no other process has
/// the cache open (the first opener): others keep `.state` open by descriptor.
pub(crate) fn write_clean_atomically(dir: &Path, temp_prefix: &str) -> Result<()> {
    let boot = sys::boot_id().unwrap_or_default();
    write_atomically(
        &dir.join(STATE_FILE),
        format!("{boot} clean\n").as_bytes(),
        temp_prefix,
    )
}

/// `.state`, open for in-place updates under LMDB's writer lock.
#[derive(Debug)]
pub(crate) struct StateFile {
    file: File,
    path: PathBuf,
    boot: Option<String>,
    /// 1 + the flush epoch at which this process last saw or made `.state` dirty (0:
    /// never). While the shared epoch has not moved, nobody wrote `clean` since, so the
    /// file need not be read again: a write costs one atomic load, not a `pread`.
    dirty_since: std::sync::atomic::AtomicU64,
}

impl StateFile {
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        let file = crate::lock::open_shared_file(&path)?;
        Ok(StateFile {
            file,
            path,
            boot: sys::boot_id(),
            dirty_since: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn read(&self) -> State {
        let mut buf = [0u8; 128];
        let n = sys::read_at(&self.file, &mut buf, 0).unwrap_or(0);
        parse(&buf[..n])
    }

    /// Makes sure `.state` says dirty for this boot, durably, before a commit that will not
    /// be synced. Call with LMDB's writer lock held. Without a boot id there is nothing to
    /// compare after a reboot, so nothing to record.
    pub(crate) fn ensure_dirty(&self, flush_epoch: u64) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(boot) = &self.boot else {
            return Ok(());
        };
        if self.dirty_since.load(Relaxed) == flush_epoch + 1 {
            return Ok(());
        }
        if !matches!(self.read(), State::Dirty { boot: b } if &b == boot) {
            self.write(&format!("{boot} dirty\n"))?;
        }
        self.dirty_since.store(flush_epoch + 1, Relaxed);
        Ok(())
    }

    /// Records that everything committed is on disk. Call with LMDB's writer lock held,
    /// right after a sync.
    pub(crate) fn mark_clean(&self) -> Result<()> {
        let boot = self.boot.as_deref().unwrap_or_default();
        if self.read() == State::Clean {
            return Ok(());
        }
        self.write(&format!("{boot} clean\n"))
    }

    /// Both lines have the same length, within one sector: the in-place write is atomic.
    fn write(&self, line: &str) -> Result<()> {
        sys::write_all_at(&self.file, line.as_bytes(), 0)
            .and_then(|()| self.file.set_len(line.len() as u64))
            .and_then(|()| self.file.sync_data())
            .at("write", &self.path)
    }
}

/// What a flusher thread calls: the cache it belongs to, if still open.
pub(crate) trait Flush: Send + Sync {
    /// Syncs and marks the cache clean if this process has unflushed writes.
    fn flush_pending(&self);
}

/// Tracks this process's unflushed writes to one cache, and runs its flusher thread.
#[derive(Debug, Default)]
pub(crate) struct Flusher {
    shared: Arc<(Mutex<Pending>, Condvar)>,
}

#[derive(Debug, Default)]
struct Pending {
    first: Option<Instant>,
    last: Option<Instant>,
    running: bool,
    stop: bool,
}

impl Flusher {
    /// Notes a commit that is not synced yet; starts the flusher thread on the first one.
    pub(crate) fn wrote(&self, target: impl FnOnce() -> Weak<dyn Flush>) {
        let (lock, wake) = &*self.shared;
        let mut pending = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        // Only the first write of a batch wakes the flusher; later ones just move `last`,
        // which it reads when its deadline comes (no context switch per write).
        let idle = pending.first.is_none();
        pending.first.get_or_insert(now);
        pending.last = Some(now);
        if !pending.running && !pending.stop {
            pending.running = true;
            let shared = Arc::clone(&self.shared);
            let target = target();
            let spawned = std::thread::Builder::new()
                .name("dbx-concurio-flush".into())
                .spawn(move || run(&shared, &target));
            if let Err(err) = spawned {
                pending.running = false;
                tracing::warn!("cannot start the cache flusher ({err}); flushing at close only");
            }
        }
        drop(pending);
        if idle {
            wake.notify_one();
        }
    }

    /// Whether there are unflushed writes; clears the mark (the caller is about to flush).
    pub(crate) fn take(&self) -> bool {
        let mut pending = self.shared.0.lock().unwrap_or_else(PoisonError::into_inner);
        pending.last = None;
        pending.first.take().is_some()
    }

    /// Puts the mark back after a failed flush, so a later one tries again.
    pub(crate) fn restore(&self) {
        let mut pending = self.shared.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        pending.first.get_or_insert(now);
        pending.last.get_or_insert(now);
    }

    /// Ends the flusher thread (the cache is closing; the caller flushed what was pending).
    pub(crate) fn stop(&self) {
        let (lock, wake) = &*self.shared;
        lock.lock().unwrap_or_else(PoisonError::into_inner).stop = true;
        wake.notify_all();
    }
}

fn run(shared: &(Mutex<Pending>, Condvar), target: &Weak<dyn Flush>) {
    let (lock, wake) = shared;
    loop {
        let mut pending = lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if pending.stop {
                return;
            }
            let due = match (pending.first, pending.last) {
                (Some(first), Some(last)) => (last + QUIET).min(first + MAX_DELAY),
                (Some(first), None) => first + MAX_DELAY,
                _ => {
                    pending = wake.wait(pending).unwrap_or_else(PoisonError::into_inner);
                    continue;
                }
            };
            let now = Instant::now();
            if now >= due {
                break;
            }
            pending = wake
                .wait_timeout(pending, due - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        drop(pending);
        match target.upgrade() {
            Some(cache) => cache.flush_pending(),
            None => return,
        }
    }
}

/// Runs `hook` when the process exits through `exit()` (also `std::process::exit` and a
/// return from `main`), where handles in statics are never dropped. Registered once.
pub(crate) fn on_exit(hook: fn()) {
    static HOOK: OnceLock<fn()> = OnceLock::new();
    static REGISTER: Once = Once::new();
    let _ = HOOK.set(hook);
    REGISTER.call_once(|| {
        extern "C" fn at_exit() {
            if let Some(hook) = HOOK.get() {
                hook();
            }
        }
        // SAFETY: registers a plain function with no preconditions.
        if unsafe { libc::atexit(at_exit) } != 0 {
            tracing::warn!("atexit failed: caches in statics flush within a second instead");
        }
    });
}

/// Makes everything under `dir` durable (all processes' writes); `false` if the platform
/// cannot promise it (then the cache stays marked dirty).
pub(crate) fn sync_all(dir: &Path) -> Result<bool> {
    sys::sync_filesystem(dir).map_err(|e| Error::io("sync file system of", dir, e))
}
