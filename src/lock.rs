//! Locks: RAII file locks between processes, and per-key locks between threads.
//!
//! File locks use `std::fs::File::lock` (flock on Linux): the kernel drops them when the
//! holder dies, so a SIGKILLed process never blocks anyone. We never lock by creating or
//! deleting files, and never delete a lock file (deleting races with a process that has just
//! opened it). On file systems that cannot lock at all we warn once and go on unlocked:
//! locks only save duplicate work, atomic renames keep the data correct.

use std::collections::HashSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::sys;

/// Exclusive (writers) or shared (readers) file lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockMode {
    Exclusive,
    Shared,
}

/// A held file lock; released when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub(crate) struct FileLock {
    /// `None` when the file system does not support locking.
    file: Option<File>,
}

static WARNED_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

impl FileLock {
    /// Takes the lock on `path` (created if missing). Tries first; if another holder has it,
    /// says so at debug level and then blocks, up to `timeout` if one is given.
    pub(crate) fn acquire(path: &Path, mode: LockMode, timeout: Option<Duration>) -> Result<Self> {
        let file = open_lock_file(path)?;
        match try_lock(&file, mode) {
            Ok(()) => return Ok(FileLock { file: Some(file) }),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(err)) => return unlocked_or_error(path, err),
        }
        tracing::debug!(
            "waiting for lock {} (held by another process or thread)",
            path.display()
        );
        let result = match timeout {
            None => match mode {
                LockMode::Exclusive => file.lock(),
                LockMode::Shared => file.lock_shared(),
            },
            Some(timeout) => return poll_lock(file, path, mode, timeout),
        };
        match result {
            Ok(()) => Ok(FileLock { file: Some(file) }),
            Err(err) => unlocked_or_error(path, err),
        }
    }

    /// Takes the lock only if it is free right now.
    pub(crate) fn try_acquire(path: &Path, mode: LockMode) -> Result<Option<Self>> {
        let file = open_lock_file(path)?;
        match try_lock(&file, mode) {
            Ok(()) => Ok(Some(FileLock { file: Some(file) })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(err)) => unlocked_or_error(path, err).map(Some),
        }
    }

    /// Turns a held lock into the other mode, waiting if needed (flock converts in place).
    pub(crate) fn convert(&self, mode: LockMode, path: &Path) -> Result<()> {
        match &self.file {
            Some(file) => match mode {
                LockMode::Exclusive => file.lock(),
                LockMode::Shared => file.lock_shared(),
            }
            .at("convert lock", path),
            None => Ok(()),
        }
    }

    /// Tries to turn the lock into `mode` without waiting. Note that a failed flock
    /// conversion may leave the lock released: only call this right before dropping it.
    pub(crate) fn try_convert(&self, mode: LockMode) -> bool {
        match &self.file {
            Some(file) => try_lock(file, mode).is_ok(),
            None => false,
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        if let Some(file) = &self.file {
            // Closing the fd would release it too; unlocking first makes the order explicit.
            let _ = file.unlock();
        }
    }
}

/// Opens (creating if needed) a lock file; never truncates it, never deletes it.
fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .at("open lock file", path)
}

fn try_lock(file: &File, mode: LockMode) -> std::result::Result<(), TryLockError> {
    match mode {
        LockMode::Exclusive => file.try_lock(),
        LockMode::Shared => file.try_lock_shared(),
    }
}

fn poll_lock(file: File, path: &Path, mode: LockMode, timeout: Duration) -> Result<FileLock> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match try_lock(&file, mode) {
            Ok(()) => return Ok(FileLock { file: Some(file) }),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(err)) => return unlocked_or_error(path, err),
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(Error::Busy {
                path: path.to_owned(),
                waited,
            });
        }
        std::thread::sleep(pause.min(timeout - waited));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

fn unlocked_or_error(path: &Path, err: std::io::Error) -> Result<FileLock> {
    if !sys::lock_unsupported(&err) {
        return Err(Error::io("lock", path, err));
    }
    if !WARNED_UNSUPPORTED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "file locking is not supported for {} ({err}); continuing without interprocess \
             locks: results stay correct, but concurrent processes may load the same key twice",
            path.display()
        );
    }
    Ok(FileLock { file: None })
}

/// Per-key locks between the threads of one process.
///
/// A set of keys being loaded plus a condition variable: simpler than a map of mutexes, and it
/// holds nothing for keys nobody is loading. Panics cannot poison it: the set is only touched
/// in short sections that do not panic, and guards remove their key in `Drop`.
#[derive(Debug, Default)]
pub(crate) struct KeyLocks {
    busy: Mutex<HashSet<String>>,
    freed: Condvar,
}

/// A held per-key thread lock.
#[must_use = "the key is unlocked as soon as the guard is dropped"]
#[derive(Debug)]
pub(crate) struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    key: String,
}

impl KeyLocks {
    /// Waits until no other thread of this process holds `key`, then holds it. `lock_path`
    /// only names the lock in a [`Error::Busy`].
    pub(crate) fn lock(
        &self,
        key: &str,
        timeout: Option<Duration>,
        lock_path: &Path,
    ) -> Result<KeyGuard<'_>> {
        let start = Instant::now();
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        while busy.contains(key) {
            busy = match timeout {
                None => self
                    .freed
                    .wait(busy)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(timeout) => {
                    let waited = start.elapsed();
                    if waited >= timeout {
                        return Err(Error::Busy {
                            path: PathBuf::from(lock_path),
                            waited,
                        });
                    }
                    self.freed
                        .wait_timeout(busy, timeout - waited)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
        busy.insert(key.to_owned());
        Ok(KeyGuard {
            locks: self,
            key: key.to_owned(),
        })
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut busy = self
            .locks
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        busy.remove(&self.key);
        drop(busy);
        self.locks.freed.notify_all();
    }
}
