//! `get_or_load_async` with a shared tier: the steps of `tiered.rs`, with every network
//! call (the shared `GET`, the claim, which may wait for another machine, the fenced store,
//! the lease's release) on tokio's blocking pool and the loader awaited on the runtime.
//! Only plain entries cross to the pool; values are decoded on the caller's task (they
//! need not be `Send`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::asynchronous::off_runtime;
use super::fill::SharedSide;
use super::shared::Lease;
use super::tiered::{Landed, Tier, loaded_entry};
use super::{DiskCache, DiskCacheValue, to_value};
use crate::error::{BoxError, Result};

impl DiskCache {
    /// `get_or_load_async` after a local miss, with a shared tier.
    pub(super) async fn get_or_load_tiered_async<T, E, F, Fut>(
        &self,
        side: &Arc<SharedSide>,
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
        let found = {
            let (side, key) = (Arc::clone(side), key.to_owned());
            off_runtime(&self.store, move || Tier::read(&side.tier, &key)).await?
        };
        if let Some(hit) = self.shared_hit(side, key, found, expire)? {
            return Ok(hit);
        }
        let _lock = self.lock_key_off_runtime(key).await?;
        if let Some(hit) = self.fresh(key, expire)? {
            return Ok(hit);
        }
        let claim = {
            let (cache, side, key) = (self.clone(), Arc::clone(side), key.to_owned());
            off_runtime(&self.store, move || cache.claim_shared(&side, &key, expire)).await?
        };
        let lease = match self.landed(side, key, claim)? {
            Landed::Hit(hit) => return Ok(hit),
            Landed::Load(lease) => OffRuntimeLease(lease),
        };
        // A failed loader or a dropped future drops the lease: released on the pool.
        let value = loader().await.map_err(|e| super::loader_error(key, e))?;
        let (entry, meta) = loaded_entry(key, &value, expire)?;
        let (entry, written) = {
            let (side, key) = (Arc::clone(side), key.to_owned());
            let mut lease = lease;
            off_runtime(&self.store, move || {
                let lease = lease.0.take();
                let written = Tier::write(&side.tier, &key, &entry, lease.as_ref())?;
                drop(lease); // released here, on the pool (a no-op round trip after a store)
                Ok((entry, written))
            })
            .await?
        };
        // A short local write on the runtime thread, as the local-only path does.
        self.keep_local(key, &entry, written)?;
        Ok(to_value(value, meta))
    }
}

/// A lease that is released on tokio's blocking pool when dropped on the runtime (the
/// release is a network call, bounded by the command timeout, but a call all the same).
struct OffRuntimeLease(Option<Lease>);

impl Drop for OffRuntimeLease {
    fn drop(&mut self) {
        let Some(lease) = self.0.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(lease))),
            Err(_) => drop(lease),
        }
    }
}
