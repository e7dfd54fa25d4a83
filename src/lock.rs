//! Locks: RAII file locks between processes, and per-key locks between threads.
//!
//! File locks use `std::fs::File::lock` (flock on Linux): the kernel drops them when the
//! holder dies, so a SIGKILLed process never blocks anyone. We never lock by creating or
//! deleting files, and never delete a lock file (deleting races with a process that has just
//! opened it). On file systems that cannot lock at all we warn once and go on unlocked:
//! locks only save duplicate work, atomic renames keep the data correct.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
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
        let file = open_shared_file(path)?;
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
        let file = open_shared_file(path)?;
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
}

impl Drop for FileLock {
    fn drop(&mut self) {
        if let Some(file) = &self.file {
            // Closing the fd would release it too; unlocking first makes the order explicit.
            let _ = file.unlock();
        }
    }
}

/// Opens a file shared by processes for reading and writing in place (lock files, the
/// cache's state and counters), creating it if needed; never truncates it.
pub(crate) fn open_shared_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .at("open", path)
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
