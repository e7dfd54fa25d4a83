//! Opening and closing a cache directory: the process-wide registry, the open protocol
//! (open lock, recovery, LMDB), the per-fork-generation state, and the close.
//!
//! ```text
//! <dir>/.dbx-concurio   marker: "dbx-concurio cache format 2" (or "... resetting"; format
//!                       1 is migrated, recovery.rs)
//! <dir>/.state          "<boot id> clean|dirty" (durability.rs)
//! <dir>/.counters       shared hit/miss counters (counters.rs)
//! <dir>/.open.lock      flock: shared while open; exclusive for recovery
//! <dir>/.key-locks/keys.lock  byte-range get_or_load locks (key_locks.rs)
//! <dir>/index/          LMDB data.mdb + lock.mdb
//! <dir>/blobs/v-*.blob  values larger than INLINE_MAX (blobs.rs)
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::mem::ManuallyDrop;
use std::path::Path;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, RwLock, Weak};

use super::counters::Counters;
use super::durability::{self, Flush, Flusher, StateFile};
use super::index::Index;
use super::key_locks::KeyLocks;
use super::lmdb::{self, LmdbEnv};
use super::recovery::{Paths, Recovered, Verdict};
use crate::error::{Error, IoContext, Result};
use crate::lock::{FileLock, LockMode};
use crate::sys;

/// How much a cache promises to keep when the machine, not just a process, goes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Commits are not fsynced (microseconds per write); a background flush makes them
    /// durable within about a second of quiet. A process crash loses nothing that was
    /// committed. A power loss or kernel crash loses writes of the last second or so; if
    /// the cache was not flushed before it, the cache is reset on the next open (detected
    /// through the boot id): it can lose entries, never return a corrupt one.
    #[default]
    Fast,
    /// Every commit is fsynced (hundreds of microseconds per write): committed entries
    /// survive power loss too.
    Synced,
}

/// One cache directory, shared by every `DiskCache` of this process that uses it (LMDB
/// must not be opened twice by one process). What depends on the process (the LMDB
/// environment, lock descriptors, the flusher) lives in a [`Local`], replaced in a child
/// after `fork()`.
pub(crate) struct Store {
    /// Where the directory is: updated when this process opens it again under another path
    /// (after `mv`), so value files and syncs follow it.
    paths: RwLock<Arc<Paths>>,
    pub(crate) durability: Durability,
    /// `data.mdb` as this store opened it: its link count drops to 0 when the directory is
    /// deleted under us (then writes are refused).
    index_file: File,
    /// The current generation's `Local`, from `Box::into_raw`. Pointers replaced after a
    /// fork are leaked on purpose (the inherited environment must not be closed), so a
    /// loaded pointer stays valid for as long as the `Store` lives.
    local: AtomicPtr<Local>,
    reopen: Mutex<()>,
    weak_self: Weak<Store>,
}

/// What one process (fork generation) has open of a cache.
pub(crate) struct Local {
    pub(crate) generation: u64,
    /// Closed explicitly in `Drop`, under the registry lock.
    pub(crate) env: ManuallyDrop<LmdbEnv>,
    pub(crate) index: Index,
    pub(crate) key_locks: KeyLocks,
    pub(crate) state: StateFile,
    pub(crate) counters: Counters,
    pub(crate) flusher: Flusher,
    flushing: Mutex<()>,
    _open_lock: FileLock,
}

// `Store` shares `&Local` between threads through an `AtomicPtr`, which does not check this.
const _: () = {
    const fn shared_between_threads<T: Send + Sync>() {}
    shared_between_threads::<Local>();
};

type Registry = HashMap<(u64, u64), Weak<Store>>;

/// Open stores by directory identity (device, inode): two paths to one directory (after
/// `mv`, through a bind mount or a symlink) share one store.
static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);

/// Opens `dir` (which must exist), or returns the store this process already has open
/// there. A store whose directory was deleted is not reused: the path gets a new one.
pub(crate) fn open(dir: &Path, durability: Durability) -> Result<Arc<Store>> {
    let canonical = std::fs::canonicalize(dir).at("resolve", dir)?;
    let meta = std::fs::metadata(&canonical).at("stat", &canonical)?;
    let id = sys::file_id(&canonical, &meta);
    // A store found dead is dropped after the registry guard: its `Drop` takes the registry.
    let mut _dead = None;
    let mut registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(store) = registry.get(&id).and_then(Weak::upgrade) {
        if store.removed() {
            _dead = Some(store);
        } else {
            if store.paths().dir != canonical {
                tracing::debug!(
                    "{} moved to {}",
                    store.paths().dir.display(),
                    canonical.display()
                );
                *store.paths.write().unwrap_or_else(PoisonError::into_inner) =
                    Arc::new(Paths::new(canonical.clone()));
            }
            if store.durability != durability {
                tracing::debug!(
                    "{} is already open with {:?}; keeping it",
                    canonical.display(),
                    store.durability
                );
            }
            return Ok(store);
        }
    }
    let paths = Paths::new(canonical);
    let local = Local::open(&paths, durability)?;
    let index_file = File::open(paths.index_file()).at("open", &paths.index_file())?;
    let store = Arc::new_cyclic(|weak_self| Store {
        paths: RwLock::new(Arc::new(paths)),
        durability,
        index_file,
        local: AtomicPtr::new(Box::into_raw(Box::new(local))),
        reopen: Mutex::new(()),
        weak_self: weak_self.clone(),
    });
    registry.retain(|_, weak| weak.strong_count() > 0);
    registry.insert(id, Arc::downgrade(&store));
    durability::on_exit(flush_all_at_exit);
    Ok(store)
}

/// The exit hook: flushes every store of this process with unflushed writes.
fn flush_all_at_exit() {
    // Another thread may hold the registry at exit: then those stores flush by themselves
    // within a second only if the process lives that long; never block the exit on it.
    let Ok(registry) = REGISTRY.try_lock() else {
        return;
    };
    let stores: Vec<_> = registry.values().filter_map(Weak::upgrade).collect();
    drop(registry);
    for store in stores {
        store.flush_pending();
    }
}

impl Store {
    /// The directory's paths (where it is now, as far as this process knows).
    pub(crate) fn paths(&self) -> Arc<Paths> {
        Arc::clone(&self.paths.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// This process's side of the cache; opens a fresh one in a forked child (LMDB forbids
    /// using an environment across `fork()`).
    #[inline]
    pub(crate) fn local(&self) -> Result<&Local> {
        // SAFETY: see the field's doc: the pointer is valid while `self` lives.
        let local = unsafe { &*self.local.load(Ordering::Acquire) };
        if local.generation == sys::fork_generation() {
            return Ok(local);
        }
        self.reopen_after_fork()
    }

    #[cold]
    fn reopen_after_fork(&self) -> Result<&Local> {
        let _one_at_a_time = self.reopen.lock().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: as in `local`.
        let current = unsafe { &*self.local.load(Ordering::Acquire) };
        if current.generation == sys::fork_generation() {
            return Ok(current);
        }
        let paths = self.paths();
        tracing::debug!("reopening {} after fork", paths.dir.display());
        let fresh = Box::into_raw(Box::new(Local::open(&paths, self.durability)?));
        // The inherited `Local` is leaked: closing its environment or unlocking its locks
        // would act on the parent's behalf.
        self.local.store(fresh, Ordering::Release);
        // SAFETY: `fresh` was just made from a live Box and is never freed before `self`.
        Ok(unsafe { &*fresh })
    }

    /// True if the directory this store opened was deleted (or its index replaced).
    pub(crate) fn removed(&self) -> bool {
        sys::link_count(&self.index_file).is_ok_and(|n| n == 0)
    }

    /// `Err(Removed)` if the directory was deleted: nothing written here would be seen.
    pub(crate) fn ensure_present(&self) -> Result<()> {
        if self.removed() {
            return Err(Error::Removed {
                path: self.paths().dir.clone(),
            });
        }
        Ok(())
    }

    /// Takes `key`'s load lock (threads and processes); see key_locks.rs.
    pub(crate) fn lock_key(
        &self,
        key: &str,
        timeout: Option<std::time::Duration>,
    ) -> Result<super::key_locks::KeyLock<'_>> {
        self.local()?.key_locks.lock(key, timeout)
    }

    pub(crate) fn weak(&self) -> Weak<dyn Flush> {
        self.weak_self.clone()
    }

    /// Makes this process's unflushed commits durable and marks the cache clean.
    pub(crate) fn flush_local(&self, local: &Local) -> Result<()> {
        // One flush at a time per process: an exit-time flush waits for the flusher
        // thread's, instead of returning while it is half done.
        let _one = local
            .flushing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !local.flusher.take() {
            return Ok(());
        }
        let dir = self.paths().dir.clone();
        let result = (|| {
            // Sync once without the writer lock: the file system may hold other programs'
            // dirty data, and writers of this cache should not wait for all of it.
            durability::sync_all(&dir)?;
            // The write transaction is LMDB's writer lock: no process commits until we
            // have synced (now only what changed since) and written `clean`.
            let txn = local.env.write_txn().map_err(|e| self.storage(e))?;
            if durability::sync_all(&dir)? {
                local.state.mark_clean()?;
                local.counters.bump_flush_epoch();
            }
            txn.abort();
            Ok(())
        })();
        if result.is_err() {
            local.flusher.restore();
        }
        result
    }

    pub(crate) fn storage(&self, err: heed::Error) -> Error {
        lmdb::storage_error(&self.paths().index_dir, err)
    }
}

impl Flush for Store {
    fn flush_pending(&self) {
        // SAFETY: as in `local`.
        let local = unsafe { &*self.local.load(Ordering::Acquire) };
        if local.generation != sys::fork_generation() {
            return; // the parent's: not ours to flush
        }
        if let Err(err) = self.flush_local(local) {
            tracing::warn!("cannot flush cache {}: {err}", self.paths().dir.display());
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let local = *self.local.get_mut();
        // SAFETY: as in `local`.
        if unsafe { &*local }.generation != sys::fork_generation() {
            return; // inherited from the parent: leaked, see `reopen_after_fork`
        }
        self.flush_pending();
        // SAFETY: the pointer came from Box::into_raw and nobody else can reach it now.
        let local = unsafe { Box::from_raw(local) };
        local.flusher.stop();
        // Hold the registry so no thread of ours reopens the directory while LMDB closes it.
        let _registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
        drop(local);
    }
}

impl Local {
    /// The open protocol (docs/design.md, "Open, recovery and close").
    fn open(paths: &Paths, durability: Durability) -> Result<Self> {
        paths.create()?;
        let (open_lock, recovered) = take_open_lock(paths)?;
        let first = recovered.is_some();
        let Recovered { migrate, dirty } = recovered.unwrap_or_default();
        let synced = durability == Durability::Synced;
        let ((env, index), reset) = match open_index(paths, synced, first, migrate)? {
            Ok(opened) => (opened, false),
            Err(why) if first => {
                paths.reset(&why)?;
                let opened = open_index(paths, synced, true, false)?;
                (opened.map_err(|why| corrupt(paths, why))?, true)
            }
            Err(why) => return Err(corrupt(paths, why)),
        };
        // `.state` as the recovery check read it: a reset (above or in it) leaves it clean.
        if dirty && !reset {
            // Dirty from this boot (another boot's was reset above): its writers died
            // before flushing, but the page cache holds their commits. Make them durable.
            if durability::sync_all(&paths.dir)? {
                durability::write_clean_atomically(&paths.dir, super::recovery::TEMP_PREFIX)?;
            }
        }
        if first {
            open_lock.convert(LockMode::Shared, &paths.dir.join(OPEN_LOCK))?;
        }
        // Reader slots of killed processes would otherwise pin old pages.
        match env.clear_stale_readers() {
            Ok(0) => {}
            Ok(n) => tracing::debug!("cleared {n} stale LMDB readers in {}", paths.dir.display()),
            Err(err) => tracing::warn!("cannot clear stale readers: {err}"),
        }
        Ok(Local {
            generation: sys::fork_generation(),
            env: ManuallyDrop::new(env),
            index,
            key_locks: KeyLocks::open(&paths.lock_dir)?,
            state: StateFile::open(&paths.dir)?,
            counters: Counters::open(&paths.dir)?,
            flusher: Flusher::default(),
            flushing: Mutex::new(()),
            _open_lock: open_lock,
        })
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // SAFETY: `env` is never used again: this is the last line that touches it.
        unsafe { ManuallyDrop::drop(&mut self.env) };
    }
}

const OPEN_LOCK: &str = ".open.lock";

/// Takes `.open.lock`: exclusively if nobody has the cache open (then we are the first
/// opener and check it), else shared. A shared opener that finds the cache needing a reset
/// (its reset was interrupted, or nobody did it) or a migration (a build of format 1 has it
/// open) lets go and comes back exclusively. Returns the lock and, for the first opener,
/// what the recovery check left it to do (see recovery.rs).
fn take_open_lock(paths: &Paths) -> Result<(FileLock, Option<Recovered>)> {
    let path = paths.dir.join(OPEN_LOCK);
    if let Some(lock) = FileLock::try_acquire(&path, LockMode::Exclusive)? {
        return Ok((lock, Some(paths.recover()?)));
    }
    let shared = FileLock::acquire(&path, LockMode::Shared, None)?;
    if matches!(paths.verdict()?, Verdict::Ready { .. }) {
        return Ok((shared, None));
    }
    drop(shared);
    let lock = FileLock::acquire(&path, LockMode::Exclusive, None)?;
    Ok((lock, Some(paths.recover()?)))
}

/// Opens the environment and the index; `Ok(Err(why))` if the index is damaged (the first
/// opener then resets it). `first`: the first opener, alone, also checks the meta page.
/// `migrate`: the index is of format 1; move it to this build's format (first opener only).
fn open_index(
    paths: &Paths,
    synced: bool,
    first: bool,
    migrate: bool,
) -> Result<std::result::Result<(LmdbEnv, Index), String>> {
    let index_dir = &paths.index_dir;
    let map = lmdb::map_size(index_dir).map_err(|e| lmdb::storage_error(index_dir, e))?;
    let env = match lmdb::open_env(index_dir, synced, map) {
        Ok(env) => env,
        Err(err) if lmdb::is_corruption(&err) => {
            return Ok(Err(format!("the index cannot be opened ({err})")));
        }
        Err(err) => return Err(lmdb::storage_error(index_dir, err)),
    };
    if first && let Some(why) = lmdb::damaged_meta(&env, index_dir, map) {
        return Ok(Err(why));
    }
    let opened = Index::open(&env).and_then(|index| {
        if migrate {
            let moved = index.migrate_format_1(&env)?;
            tracing::info!(
                "migrated cache {} to the current format ({moved} entries moved)",
                paths.dir.display()
            );
        }
        Ok(index)
    });
    match opened {
        Ok(index) => {
            if migrate {
                paths.mark_migrated()?;
            }
            Ok(Ok((env, index)))
        }
        Err(err) if lmdb::is_corruption(&err) => {
            Ok(Err(format!("the index cannot be read ({err})")))
        }
        Err(err) => Err(lmdb::storage_error(index_dir, err)),
    }
}

fn corrupt(paths: &Paths, detail: String) -> Error {
    Error::Corrupt {
        path: paths.index_dir.clone(),
        detail,
    }
}
