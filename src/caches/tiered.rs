//! `get_or_load` over two tiers: the local store (this machine) and the shared tier (a
//! fleet's Redis), behind one seam, [`Tier`], that carries plain entries. The once-logic
//! lives here, above both: local hit; else shared hit (filling the local tier); else the
//! local key lock, the shared lease, re-checks, load, store in both.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::fill::SharedSide;
use super::open::Store;
use super::record::{Format, Meta};
use super::shared::{Claim, Entry, Lease, SharedInfo, SharedTier, Written};
use super::store::{Lookup, PutMode};
use super::{CLOCK_SKEW_NS, DiskCache, DiskCacheValue, encode, now_ns, to_value};
use crate::error::{BoxError, Result};

/// What the once-logic needs of a tier: read an entry, write one (under the key's shared
/// lease, when there is one).
pub(crate) trait Tier {
    /// The entry under `key`, verified; `None` if missing (or unreadable there).
    fn read(&self, key: &str) -> Result<Option<Entry>>;
    /// Stores `entry` under `key`, with its own stamps.
    fn write(&self, key: &str, entry: &Entry, lease: Option<&Lease<'_>>) -> Result<Written>;
}

impl Tier for Store {
    fn read(&self, key: &str) -> Result<Option<Entry>> {
        // The shared tier carries `get_or_load`'s MessagePack values only: a raw entry
        // (`set_bytes`) is not one of them.
        let found = self.lookup(
            key,
            |_| true,
            |format, bytes| Ok((format == Format::MessagePack).then(|| bytes.to_vec())),
        )?;
        Ok(match found {
            Lookup::Found(meta, Some(payload)) => Some(Entry {
                load_ns: meta.load_ns,
                expire_ns: meta.expire_ns,
                payload,
            }),
            Lookup::Found(_, None) | Lookup::Missing | Lookup::Rejected => None,
        })
    }

    fn write(&self, key: &str, entry: &Entry, _: Option<&Lease<'_>>) -> Result<Written> {
        let meta = Meta {
            load_ns: entry.load_ns,
            expire_ns: entry.expire_ns,
            order_ns: now_ns(),
            payload_len: entry.payload.len() as u64,
        };
        self.put(key, meta, &entry.payload, PutMode::Replace)?;
        Ok(Written::Stored)
    }
}

impl Tier for SharedTier {
    fn read(&self, key: &str) -> Result<Option<Entry>> {
        SharedTier::read(self, key, &self.keys(key))
    }

    /// Only under a lease: an unfenced write could overwrite a newer value.
    fn write(&self, key: &str, entry: &Entry, lease: Option<&Lease<'_>>) -> Result<Written> {
        match lease {
            Some(lease) => SharedTier::write(self, key, lease, entry),
            None => Ok(Written::Skipped),
        }
    }
}

impl DiskCache {
    /// Removes `key` from this machine's tier and from the shared tier, so the next
    /// `get_or_load` anywhere loads it again; true if either had it. A loader already
    /// running for the key when this returns cannot store its value in the shared tier
    /// (it is fenced out). Other machines' local tiers keep their copies until they expire.
    /// Without a shared tier, the same as [`delete`](Self::delete).
    pub fn invalidate(&self, key: &str) -> Result<bool> {
        let shared = match &self.shared {
            Some(side) => {
                // A shared hit's fill still queued would bring the value back locally.
                side.filler.flush();
                side.tier.invalidate(key)?
            }
            None => false,
        };
        Ok(self.delete(key)? | shared)
    }

    /// The shared tier's server as it is now: this cache's entries there, memory use and
    /// limit. `None` without a shared tier; [`Error::Shared`](crate::Error::Shared) if the
    /// server does not answer.
    pub fn shared_info(&self) -> Result<Option<SharedInfo>> {
        self.shared
            .as_ref()
            .map(|side| side.tier.info())
            .transpose()
    }

    /// `get_or_load` after a local miss, with a shared tier (see the module doc).
    pub(super) fn get_or_load_tiered<T, E, F>(
        &self,
        side: &SharedSide,
        key: &str,
        loader: F,
        expire: Option<Duration>,
    ) -> Result<DiskCacheValue<T>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> std::result::Result<T, E>,
        E: Into<BoxError>,
    {
        let shared = &side.tier;
        let valid = |entry: &Entry| fresh_entry(entry, expire, now_ns());
        // One round trip; no lock.
        if let Some(entry) = Tier::read(shared, key)?.filter(|e| valid(e))
            && let Some(hit) = self.serve(side, key, entry)?
        {
            return Ok(hit);
        }
        shared.count_hit(false);
        let _lock = self.store.lock_key(key, self.lock_timeout)?;
        if let Some(hit) = self.fresh(key, expire)? {
            return Ok(hit); // another thread or process of this machine got it meanwhile
        }
        self.store.ensure_present()?;
        let deadline = self.lock_timeout.map(|t| Instant::now() + t);
        let lease = match shared.claim(key, valid, deadline)? {
            Claim::Landed(entry) => match self.serve(side, key, entry)? {
                Some(hit) => return Ok(hit),
                None => None, // stored under an older type: load it (locally) again
            },
            Claim::Leased(lease) => Some(lease),
            Claim::Unavailable => None,
        };
        self.store.count(false);
        // An error drops the lease: released at once.
        let value = loader().map_err(|e| super::loader_error(key, e))?;
        let payload = encode(key, &value)?;
        let meta = super::new_meta(now_ns(), expire, &payload);
        let entry = Entry {
            load_ns: meta.load_ns,
            expire_ns: meta.expire_ns,
            payload,
        };
        // Shared first: a fenced (late) value must not replace this machine's copy of the
        // newer one either. The caller gets its own value all the same.
        if Tier::write(shared, key, &entry, lease.as_ref())? != Written::Fenced {
            Tier::write(&*self.store, key, &entry, None)?;
        }
        Ok(to_value(value, meta))
    }

    /// Serves a shared entry: decodes it and fills the local tier with its own stamps (in
    /// the background). `None` if it is not a `T` (stored by another version of the type).
    fn serve<T: DeserializeOwned>(
        &self,
        side: &SharedSide,
        key: &str,
        entry: Entry,
    ) -> Result<Option<DiskCacheValue<T>>> {
        let value = match rmp_serde::from_slice::<T>(&entry.payload) {
            Ok(value) => value,
            Err(err) => {
                tracing::warn!(
                    "shared value of key {key:?} is not a {}: {err}; loading it again",
                    std::any::type_name::<T>()
                );
                return Ok(None);
            }
        };
        let served = DiskCacheValue {
            value,
            load_timestamp: super::from_ns(entry.load_ns),
            expires_at: (entry.expire_ns != 0).then(|| super::from_ns(entry.expire_ns)),
        };
        side.filler.fill(&self.store, key, entry)?;
        side.tier.count_hit(true);
        self.store.count(false);
        Ok(Some(served))
    }
}

/// The rule of `DiskCache::fresh`, for an entry: unexpired, younger than `expire`, and
/// loaded no more than the clock tolerance in the future.
fn fresh_entry(entry: &Entry, expire: Option<Duration>, now: u64) -> bool {
    (entry.expire_ns == 0 || now < entry.expire_ns)
        && expire.is_none_or(|max| {
            entry.load_ns <= now.saturating_add(CLOCK_SKEW_NS)
                && u128::from(now.saturating_sub(entry.load_ns)) < max.as_nanos()
        })
}
