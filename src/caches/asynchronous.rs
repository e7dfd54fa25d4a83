//! `get_or_load_async` and friends, for tokio services (feature `tokio`).
//!
//! The compute-once guarantee is the sync one: the same per-key locks (threads and
//! processes), the same store. What differs is where we wait:
//! - tasks of this process wait for each other on an async mutex per key (a gate), without
//!   any thread;
//! - the one task past the gate takes the key's sync lock on tokio's blocking pool, where it
//!   may wait for a sync thread or another process that loads the key: never on a runtime
//!   worker, and with at most one pool thread per key (the pool cannot fill up with tasks
//!   waiting for each other, which would starve the task that holds the key);
//! - the loader is a future, awaited on the runtime; storing its value is a short write.
//!
//! The held locks are owned by guards that live across `.await` and release when dropped,
//! so a dropped (cancelled, timed out) future releases its locks too.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::key_locks::{Held, slot_of};
use super::open::Store;
use super::{DiskCache, DiskCacheValue, loader_error};
use crate::error::{BoxError, Error, Result};

impl DiskCache {
    /// [`get_or_load`](Self::get_or_load) for async code: the loader is a future, and no
    /// runtime thread is blocked while another thread, task or process loads the same key
    /// (the wait happens on tokio's blocking pool). The loader runs once across all of them.
    /// Dropping the returned future releases the key's locks. Needs a tokio runtime.
    ///
    /// ```
    /// use dbx_concurio::caches::DiskCache;
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let tmp = tempfile::tempdir()?;
    /// let cache = DiskCache::builder().directory(tmp.path()).build()?;
    /// let v = cache
    ///     .get_or_load_async(
    ///         "answer",
    ///         || async { Ok::<_, std::io::Error>(42u32) }, // e.g. an HTTP call
    ///         Some(Duration::from_secs(3600)),
    ///     )
    ///     .await?;
    /// assert_eq!(v.value, 42);
    /// # Ok(()) }
    /// ```
    ///
    /// A task that awaits `get_or_load_async` of the key it is loading itself waits
    /// forever (it waits at its own key's gate): recursion is detected only by the sync
    /// [`get_or_load`](Self::get_or_load).
    pub async fn get_or_load_async<T, E, F, Fut>(
        &self,
        key: &str,
        loader: F,
        expire: Option<Duration>,
    ) -> Result<DiskCacheValue<T>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
        E: Into<BoxError>,
    {
        if let Some(hit) = self.fresh(key, expire)? {
            return Ok(hit);
        }
        if let Some(side) = &self.shared {
            return self
                .get_or_load_tiered_async(side, key, loader, expire)
                .await;
        }
        let _lock = self.lock_key_off_runtime(key).await?;
        if let Some(hit) = self.recheck_under_lock(key, expire)? {
            return Ok(hit);
        }
        let value = loader().await.map_err(|e| loader_error(key, e))?;
        // A short write on the runtime thread (it may wait microseconds for LMDB's writer
        // lock): a blocking-pool round trip would cost more than it saves.
        self.store_loaded(key, value, expire)
    }

    /// [`get`](Self::get) on tokio's blocking pool (value files can be large).
    pub async fn get_async<T>(&self, key: &str) -> Result<Option<DiskCacheValue<T>>>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let cache = self.clone();
        let key = key.to_owned();
        off_runtime(&self.store, move || cache.get(&key)).await
    }

    /// [`set`](Self::set) on tokio's blocking pool (a write may wait for another process's).
    pub async fn set_async<T>(&self, key: &str, value: T, expire: Option<Duration>) -> Result<()>
    where
        T: Serialize + Send + 'static,
    {
        let cache = self.clone();
        let key = key.to_owned();
        off_runtime(&self.store, move || cache.set(&key, &value, expire)).await
    }

    /// Takes `key`'s load lock: first the key's gate among this process's tasks (async),
    /// then the sync lock on the blocking pool. The guard owns what it holds.
    pub(super) async fn lock_key_off_runtime(&self, key: &str) -> Result<AsyncKeyLock> {
        let gate = gate(&self.store, slot_of(key)).lock_owned().await;
        let store = Arc::clone(&self.store);
        let key = key.to_owned();
        let timeout = self.lock_timeout;
        // If this future is dropped meanwhile, the blocking task still finishes; its result,
        // the guard, is then dropped with the task, which releases the lock.
        let lock = off_runtime(&self.store, move || {
            let held = store.local()?.key_locks.acquire(&key, timeout)?;
            Ok(OwnedKeyLock { store, held })
        })
        .await?;
        Ok(AsyncKeyLock {
            _lock: lock,
            _gate: gate,
        })
    }
}

/// The gates: one async mutex per (store, key slot) that some task holds or waits for.
type Gates = HashMap<(usize, u64), Weak<tokio::sync::Mutex<()>>>;
static GATES: LazyLock<Mutex<Gates>> = LazyLock::new(Default::default);

fn gate(store: &Arc<Store>, slot: u64) -> Arc<tokio::sync::Mutex<()>> {
    let mut gates = GATES.lock().unwrap_or_else(PoisonError::into_inner);
    let id = (Arc::as_ptr(store) as usize, slot);
    if let Some(gate) = gates.get(&id).and_then(Weak::upgrade) {
        return gate;
    }
    if gates.len() >= 1024 {
        gates.retain(|_, gate| gate.strong_count() > 0);
    }
    let gate = Arc::new(tokio::sync::Mutex::new(()));
    gates.insert(id, Arc::downgrade(&gate));
    gate
}

/// Both levels of an async load's lock; fields drop in order: the sync lock first, then the
/// gate lets the next task of this process in.
pub(super) struct AsyncKeyLock {
    _lock: OwnedKeyLock,
    _gate: tokio::sync::OwnedMutexGuard<()>,
}

/// Runs `f` on tokio's blocking pool.
pub(super) async fn off_runtime<R: Send + 'static>(
    store: &Store,
    f: impl FnOnce() -> Result<R> + Send + 'static,
) -> Result<R> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(err) => Err(Error::io(
            "run a blocking task for",
            store.paths().dir.clone(),
            std::io::Error::other(err),
        )),
    }
}

/// A key lock that owns its store, so it can be held across `.await`.
#[must_use = "the key is unlocked as soon as the guard is dropped"]
struct OwnedKeyLock {
    store: Arc<Store>,
    held: Held,
}

impl Drop for OwnedKeyLock {
    fn drop(&mut self) {
        // `release` ignores a lock from before a fork; the store's current `Local` is the one
        // whose locks were taken otherwise (a store never changes `Local` but at a fork).
        if let Ok(local) = self.store.local() {
            local.key_locks.release(self.held);
        }
    }
}
