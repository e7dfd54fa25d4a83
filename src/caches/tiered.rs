//! The cache's calls over two tiers: the local store (this machine) and the shared tier (a
//! fleet's Redis), behind one seam, [`Tier`], that carries plain entries. The once-logic
//! lives here, above both: local hit; else shared hit (filling the local tier); else the
//! local key lock, the shared lease, re-checks, load, store in both. `get` reads through
//! (a local miss asks the shared tier), `set` writes both (fenced), `delete` and `clear`
//! remove from both. The async `get_or_load` reuses the steps (`tiered_async.rs`).

use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::fill::SharedSide;
use super::open::Store;
use super::record::{Format, Meta};
use super::shared::{Claim, Entry, Lease, SharedInfo, SharedTier, Written};
use super::store::{Lookup, PutMode};
use super::{CLOCK_SKEW_NS, DiskCache, DiskCacheValue, codec, encode, now_ns, to_value};
use crate::error::{BoxError, Result};

/// What the once-logic needs of a tier: read an entry, write one (under the key's shared
/// lease, when there is one).
pub(crate) trait Tier {
    /// The entry under `key`, verified; `None` if missing (or unreadable there).
    fn read(&self, key: &str) -> Result<Option<Entry>>;
    /// Stores `entry` under `key`, with its own stamps.
    fn write(&self, key: &str, entry: &Entry, lease: Option<&Lease>) -> Result<Written>;
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

    fn write(&self, key: &str, entry: &Entry, _: Option<&Lease>) -> Result<Written> {
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
    fn write(&self, key: &str, entry: &Entry, lease: Option<&Lease>) -> Result<Written> {
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
    /// The same as [`delete`](Self::delete), which does this with a shared tier.
    pub fn invalidate(&self, key: &str) -> Result<bool> {
        self.delete(key)
    }

    /// `delete` with a shared tier: both tiers (see [`invalidate`](Self::invalidate)).
    pub(super) fn delete_tiered(&self, side: &SharedSide, key: &str) -> Result<bool> {
        // A shared hit's fill still queued would bring the value back locally.
        side.filler.flush();
        let shared = side.tier.invalidate(key)?;
        Ok(self.store.delete(key)? | shared)
    }

    /// `clear` with a shared tier: the fleet's entries of this cache, then this machine's;
    /// returns how many this machine had (as without a shared tier).
    pub(super) fn clear_tiered(&self, side: &SharedSide) -> Result<usize> {
        side.filler.flush();
        let shared = side.tier.clear()?;
        tracing::debug!("cleared {shared} entries of the shared tier");
        Ok(self.store.clear()? as usize)
    }

    /// `set` (and `set_value`) with a shared tier: the shared tier first, under a fence
    /// token of its own (a loader that started before cannot overwrite it later), then the
    /// local tier, both with the same stamps. If a newer write came first in the shared
    /// tier, this machine does not keep the older value either.
    pub(super) fn set_tiered(
        &self,
        side: &SharedSide,
        key: &str,
        meta: Meta,
        payload: Vec<u8>,
    ) -> Result<()> {
        let entry = Entry {
            load_ns: meta.load_ns,
            expire_ns: meta.expire_ns,
            payload,
        };
        if side.tier.set(key, &entry)? != Written::Fenced {
            self.store
                .put(key, meta, &entry.payload, PutMode::Replace)?;
        }
        Ok(())
    }

    /// `get` after a local miss (already counted): one shared `GET`; a valid entry fills the
    /// local tier with its own stamps. A value that is not a `T` is an error, as locally.
    pub(super) fn get_shared<T: DeserializeOwned>(
        &self,
        side: &SharedSide,
        key: &str,
    ) -> Result<Option<DiskCacheValue<T>>> {
        let now = now_ns();
        let Some(entry) = Tier::read(&side.tier, key)?.filter(|e| fresh_entry(e, None, now)) else {
            side.tier.count_hit(false);
            return Ok(None);
        };
        let value = codec::decode(key, Format::MessagePack, &entry.payload)?;
        self.serve_value(side, key, entry, value).map(Some)
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
        // One round trip; no lock.
        let found = Tier::read(&side.tier, key)?;
        if let Some(hit) = self.shared_hit(side, key, found, expire)? {
            return Ok(hit);
        }
        let _lock = self.store.lock_key(key, self.lock_timeout)?;
        if let Some(hit) = self.fresh(key, expire)? {
            return Ok(hit); // another thread or process of this machine got it meanwhile
        }
        let claimed = self.claim_shared(side, key, expire)?;
        let lease = match self.landed(side, key, claimed)? {
            Landed::Hit(hit) => return Ok(hit),
            Landed::Load(lease) => lease,
        };
        // An error drops the lease: released at once.
        let value = loader().map_err(|e| super::loader_error(key, e))?;
        let (entry, meta) = loaded_entry(key, &value, expire)?;
        let written = Tier::write(&side.tier, key, &entry, lease.as_ref())?;
        self.keep_local(key, &entry, written)?;
        Ok(to_value(value, meta))
    }

    /// Step 1 of a tiered load: the entry a shared `GET` found, if valid for `expire`,
    /// served (the shared hit). Otherwise counts the shared miss.
    pub(super) fn shared_hit<T: DeserializeOwned>(
        &self,
        side: &SharedSide,
        key: &str,
        found: Option<Entry>,
        expire: Option<Duration>,
    ) -> Result<Option<DiskCacheValue<T>>> {
        let valid = found.filter(|e| fresh_entry(e, expire, now_ns()));
        if let Some(entry) = valid
            && let Some(hit) = self.serve(side, key, entry)?
        {
            return Ok(Some(hit));
        }
        side.tier.count_hit(false);
        Ok(None)
    }

    /// Step 2, under the local key lock (after the local re-check): claims the key across
    /// machines. Blocking: it may wait for another machine's loader.
    pub(super) fn claim_shared(
        &self,
        side: &SharedSide,
        key: &str,
        expire: Option<Duration>,
    ) -> Result<Claim> {
        self.store.ensure_present()?;
        let deadline = self.lock_timeout.map(|t| Instant::now() + t);
        side.tier
            .claim(key, |e| fresh_entry(e, expire, now_ns()), deadline)
    }

    /// Step 3: what the claim means for the caller: a value landed (served), or load (under
    /// the lease, if the shared tier gave one). Counts the local miss of a load.
    pub(super) fn landed<T: DeserializeOwned>(
        &self,
        side: &SharedSide,
        key: &str,
        claim: Claim,
    ) -> Result<Landed<T>> {
        let lease = match claim {
            Claim::Landed(entry) => match self.serve(side, key, entry)? {
                Some(hit) => return Ok(Landed::Hit(hit)),
                None => None, // stored under an older type: load it (locally) again
            },
            Claim::Leased(lease) => Some(lease),
            Claim::Unavailable => None,
        };
        self.store.count(false);
        side.tier.count_load();
        Ok(Landed::Load(lease))
    }

    /// Step 5, after the shared write: the local tier, unless the shared tier refused the
    /// value as late (this machine must not keep a value the fleet replaced). The caller
    /// gets its own value all the same.
    pub(super) fn keep_local(&self, key: &str, entry: &Entry, written: Written) -> Result<()> {
        if written != Written::Fenced {
            Tier::write(&*self.store, key, entry, None)?;
        }
        Ok(())
    }

    /// Serves a shared entry for `get_or_load`: `None` if it is not a `T` (stored by
    /// another version of the type: loaded again). Counts the local miss.
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
        self.store.count(false);
        self.serve_value(side, key, entry, value).map(Some)
    }

    /// A decoded shared hit: fills the local tier with the entry's own stamps (in the
    /// background) and counts the shared hit.
    fn serve_value<T>(
        &self,
        side: &SharedSide,
        key: &str,
        entry: Entry,
        value: T,
    ) -> Result<DiskCacheValue<T>> {
        let served = DiskCacheValue {
            value,
            load_timestamp: super::from_ns(entry.load_ns),
            expires_at: (entry.expire_ns != 0).then(|| super::from_ns(entry.expire_ns)),
        };
        side.filler.fill(&self.store, key, entry)?;
        side.tier.count_hit(true);
        Ok(served)
    }
}

/// What a claim leaves the caller to do.
pub(super) enum Landed<T> {
    /// Another machine's value (or one that landed while we waited).
    Hit(DiskCacheValue<T>),
    /// Load, and store under the lease (none: the shared tier is unavailable or had a value
    /// of another type; the value is then stored locally and, without a lease, not shared).
    Load(Option<Lease>),
}

/// The entry (and local metadata) of a value loaded now.
pub(super) fn loaded_entry<T: Serialize>(
    key: &str,
    value: &T,
    expire: Option<Duration>,
) -> Result<(Entry, Meta)> {
    let payload = encode(key, value)?;
    let meta = super::new_meta(now_ns(), expire, &payload);
    let entry = Entry {
        load_ns: meta.load_ns,
        expire_ns: meta.expire_ns,
        payload,
    };
    Ok((entry, meta))
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
