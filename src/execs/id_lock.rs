//! The per-identifier install lock, `<executables>/<hash>.lock`, which (unlike the cache's
//! lock files) may be removed, so that an uninstalled or never installed identifier leaves
//! nothing behind. The locking itself is [`FileLock`]'s.
//!
//! Why removing is safe: a lock file is only removed by a holder of its lock, as the last
//! thing it does before releasing it. Whoever takes the lock then checks that the path still
//! names the file it locked; if not (it waited on a file that was removed meanwhile), it
//! starts over with the file now at the path. So two processes never both hold "the" lock: a
//! holder's file stays at the path from its check until it releases it (only a holder
//! removes it), and a second holder would have to have locked that same file. A process
//! that opened the old file before the removal gets its lock after the release, sees another
//! file (or none) at the path, and retries. Where the platform cannot tell (Windows), or the
//! file system cannot lock, lock files stay.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::lock::{FileLock, LockMode};
use crate::sys;

/// A held identifier lock; released when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub(super) struct IdLock {
    // Field order matters: the lock is released before the pin is closed.
    _lock: FileLock,
    /// Our own fd on the file we meant to lock: it keeps the inode alive, so its number
    /// cannot be reused while we compare it with what the path names.
    pin: File,
    path: PathBuf,
}

impl IdLock {
    /// Takes the lock, waiting for it.
    pub(super) fn acquire(path: &Path) -> Result<IdLock> {
        loop {
            let pin = open(path)?;
            let lock = match FileLock::try_acquire(path, LockMode::Exclusive)? {
                Some(lock) => lock,
                None => {
                    match read_holder(path) {
                        Some((pid, command)) => tracing::debug!(
                            "waiting for pid {pid}: {command} (it installs the same identifier)"
                        ),
                        None => {
                            tracing::debug!("waiting for another installer of {}", path.display())
                        }
                    }
                    FileLock::acquire(path, LockMode::Exclusive, None)?
                }
            };
            if let Some(lock) = Self::checked(lock, pin, path)? {
                return Ok(lock);
            }
        }
    }

    /// Takes the lock only if it is free right now.
    pub(super) fn try_acquire(path: &Path) -> Result<Option<IdLock>> {
        loop {
            let pin = open(path)?;
            let Some(lock) = FileLock::try_acquire(path, LockMode::Exclusive)? else {
                return Ok(None);
            };
            if let Some(lock) = Self::checked(lock, pin, path)? {
                return Ok(Some(lock));
            }
        }
    }

    /// `lock` is ours if the path still names the pinned file: it named it before
    /// `FileLock` opened the path and names it now, and a removed file never comes back to
    /// a path, so `FileLock` opened (and locked) that same file. `None`: it was removed (by
    /// the previous holder) meanwhile; take the one there now.
    fn checked(lock: FileLock, pin: File, path: &Path) -> Result<Option<IdLock>> {
        if !sys::same_file(&pin, path).at("inspect", path)? {
            tracing::debug!("{} was replaced while we waited; again", path.display());
            return Ok(None);
        }
        write_holder(&pin, path);
        Ok(Some(IdLock {
            _lock: lock,
            pin,
            path: path.to_owned(),
        }))
    }

    /// Whether this process alone holds the identifier: false where the file system cannot
    /// lock (`FileLock` then goes on unlocked). Only then may it keep and resume a partial
    /// download. Probed through the pin, a second open file: our own lock must block it.
    pub(super) fn is_exclusive(&self) -> bool {
        match self.pin.try_lock() {
            Err(TryLockError::WouldBlock) => true,
            Ok(()) => {
                let _ = self.pin.unlock();
                false
            }
            Err(TryLockError::Error(_)) => false,
        }
    }

    /// Removes the lock file, then releases the lock: for an identifier with nothing left
    /// (no install, no kept download). The next installer creates a new one.
    pub(super) fn remove(self) {
        if sys::CAN_REMOVE_LOCK_FILES
            && self.is_exclusive()
            && let Err(err) = std::fs::remove_file(&self.path)
        {
            tracing::debug!("cannot remove {}: {err}", self.path.display());
        }
    }
}

/// Opens the lock file for the pin, creating it if needed (appending never truncates).
fn open(path: &Path) -> Result<File> {
    let options = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .clone();
    options.open(path).at("open lock file", path)
}

/// Writes who holds the lock into the lock file: our pid, then our command line. Only
/// informative (waiters say whom they wait for): failing to write it fails nothing.
fn write_holder(pin: &File, path: &Path) {
    use std::io::Write;
    let command: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let written = pin.set_len(0).and_then(|()| {
        let mut pin = pin;
        writeln!(pin, "{}\n{}", std::process::id(), command.join(" "))
    });
    if let Err(err) = written {
        tracing::debug!("cannot note the holder in {}: {err}", path.display());
    }
}

/// The holder an install lock file names: (pid, command line), if it names one that is not
/// this process. The file may name a holder that has finished: callers ask only while they
/// wait for the lock.
pub(super) fn read_holder(path: &Path) -> Option<(u32, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (pid, command) = text.split_once('\n')?;
    let pid: u32 = pid.trim().parse().ok()?;
    (pid != std::process::id()).then(|| (pid, command.trim_end().to_owned()))
}
