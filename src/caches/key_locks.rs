//! Per-key load locks for `get_or_load`: exact per key, between the threads of a process and
//! between processes, with a bounded number of files.
//!
//! Every key maps to one byte of `.key-locks/keys.lock`: the first 62 bits of the key's
//! SHA-256, as an offset. A load holds
//! 1. the key's entry in this process's owner table (key slot -> owning thread), so threads
//!    of one process wait for each other on a condition variable, and a thread that asks
//!    for a key it is already loading (true recursion) gets [`Error::Recursive`] at once;
//! 2. an exclusive byte-range lock on that byte (`sys::lock_byte`: an open-file-description
//!    lock on Linux), so processes wait for each other, and the kernel releases it when the
//!    holder dies.
//!
//! Two different keys share a byte only if their SHA-256 agree on 62 bits (about 1 in 4.6e18
//! per pair): distinct keys never wait for each other, so nested loads of other keys
//! (memoized recursion, dependency chains) cannot deadlock. The file is never deleted (that
//! would race with a process that has just opened it) and never grows: byte-range locks
//! need no bytes in the file.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::sys;

/// The one lock file of a cache's key locks, inside `.key-locks/`.
pub(crate) const KEY_LOCK_FILE: &str = "keys.lock";

/// This process's side of the key locks of one cache (one per fork generation).
#[derive(Debug)]
pub(crate) struct KeyLocks {
    file: File,
    path: PathBuf,
    generation: u64,
    owners: Mutex<HashMap<u64, ThreadId>>,
    freed: Condvar,
}

/// A held key lock (both levels); released when dropped, also when the loader panics.
#[must_use = "the key is unlocked as soon as the guard is dropped"]
#[derive(Debug)]
pub(crate) struct KeyLock<'a> {
    locks: &'a KeyLocks,
    held: Held,
}

/// What a held key lock consists of, for guards that own their store instead of borrowing
/// the locks (async loads hold it across `.await`): give it back with [`KeyLocks::release`].
#[must_use = "a held key lock must be released"]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Held {
    slot: u64,
    /// Whether the byte-range lock is held (not on file systems without lock support).
    file_locked: bool,
    generation: u64,
}

static WARNED_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

impl KeyLocks {
    /// Opens (creating if needed) the lock file in `lock_dir`.
    pub(crate) fn open(lock_dir: &Path) -> Result<Self> {
        let path = lock_dir.join(KEY_LOCK_FILE);
        let file = crate::lock::open_shared_file(&path)?;
        Ok(KeyLocks {
            file,
            path,
            generation: sys::fork_generation(),
            owners: Mutex::default(),
            freed: Condvar::new(),
        })
    }

    /// Waits until no other thread or process loads `key`, then holds it. With a
    /// `timeout`, gives up with [`Error::Busy`]. A thread asking again for a key it holds
    /// gets [`Error::Recursive`].
    pub(crate) fn lock(&self, key: &str, timeout: Option<Duration>) -> Result<KeyLock<'_>> {
        let start = Instant::now();
        let slot = slot_of(key);
        let mut guard = KeyLock {
            locks: self,
            held: Held {
                slot,
                file_locked: false,
                generation: self.generation,
            },
        };
        let owners = self.wait_for_threads(key, slot, start, timeout)?;
        drop(owners);
        guard.held.file_locked = self.lock_between_processes(key, slot, start, timeout)?;
        Ok(guard)
    }

    /// Like [`lock`](Self::lock), for a caller that releases it itself (async loads).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn acquire(&self, key: &str, timeout: Option<Duration>) -> Result<Held> {
        let guard = self.lock(key, timeout)?;
        let held = guard.held;
        std::mem::forget(guard);
        Ok(held)
    }

    /// Releases what [`acquire`](Self::acquire) took. A lock taken before a fork is the
    /// parent's: a child neither releases the parent's byte lock nor touches a table copied
    /// mid-update.
    pub(crate) fn release(&self, held: Held) {
        if held.generation != sys::fork_generation() {
            return;
        }
        if held.file_locked
            && let Err(err) = sys::unlock_byte(&self.file, held.slot)
        {
            tracing::warn!("cannot unlock {}: {err}", self.path.display());
        }
        let mut owners = self.owners.lock().unwrap_or_else(PoisonError::into_inner);
        owners.remove(&held.slot);
        drop(owners);
        self.freed.notify_all();
    }

    /// Level 1: takes `slot` in the owner table, waiting for the thread that has it.
    fn wait_for_threads(
        &self,
        key: &str,
        slot: u64,
        start: Instant,
        timeout: Option<Duration>,
    ) -> Result<MutexGuard<'_, HashMap<u64, ThreadId>>> {
        let me = std::thread::current().id();
        let mut owners = self.owners.lock().unwrap_or_else(PoisonError::into_inner);
        let mut said = false;
        while let Some(&owner) = owners.get(&slot) {
            if owner == me {
                return Err(Error::Recursive {
                    key: key.to_owned(),
                });
            }
            if !std::mem::replace(&mut said, true) {
                tracing::debug!("waiting for another thread loading {key:?}");
            }
            owners = match timeout {
                None => self
                    .freed
                    .wait(owners)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(timeout) => {
                    let waited = start.elapsed();
                    if waited >= timeout {
                        return Err(self.busy(waited));
                    }
                    self.freed
                        .wait_timeout(owners, timeout - waited)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
        owners.insert(slot, me);
        Ok(owners)
    }

    /// Level 2: the byte-range lock. Tries first, says that it waits, then blocks (or polls
    /// until `timeout`). `Ok(false)`: the file system cannot lock; we go on unlocked.
    fn lock_between_processes(
        &self,
        key: &str,
        slot: u64,
        start: Instant,
        timeout: Option<Duration>,
    ) -> Result<bool> {
        match sys::lock_byte(&self.file, slot, false) {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(err) => return self.unsupported_or_error(err),
        }
        tracing::debug!("waiting for another process loading {key:?}");
        let Some(timeout) = timeout else {
            return match sys::lock_byte(&self.file, slot, true) {
                Ok(locked) => Ok(locked),
                Err(err) => self.unsupported_or_error(err),
            };
        };
        let mut pause = Duration::from_millis(1);
        loop {
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(self.busy(waited));
            }
            std::thread::sleep(pause.min(timeout - waited));
            pause = (pause * 2).min(Duration::from_millis(50));
            match sys::lock_byte(&self.file, slot, false) {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(err) => return self.unsupported_or_error(err),
            }
        }
    }

    fn unsupported_or_error(&self, err: std::io::Error) -> Result<bool> {
        if !sys::lock_unsupported(&err) {
            return Err(Error::io("lock", &self.path, err));
        }
        if !WARNED_UNSUPPORTED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "byte-range locks are not supported for {} ({err}); continuing without \
                 interprocess key locks: results stay correct, but processes may load the \
                 same key twice",
                self.path.display()
            );
        }
        Ok(false)
    }

    fn busy(&self, waited: Duration) -> Error {
        Error::Busy {
            path: self.path.clone(),
            waited,
        }
    }
}

impl Drop for KeyLock<'_> {
    fn drop(&mut self) {
        self.locks.release(self.held);
    }
}

/// The byte that stands for `key`: 62 bits of its SHA-256 (stable across builds and
/// platforms, unlike std's hasher), so offsets stay positive and `offset + 1` cannot wrap.
pub(crate) fn slot_of(key: &str) -> u64 {
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first) >> 2
}
