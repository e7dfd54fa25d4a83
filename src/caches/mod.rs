//! `DiskCache`: a persistent key/value cache shared safely by threads and processes, with a
//! compute-once [`DiskCache::get_or_load`].
//!
//! ```
//! use dbx_concurio::caches::{DiskCache, DiskCacheValue};
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tmp = tempfile::tempdir()?;
//! let cache = DiskCache::builder().directory(tmp.path()).name("my_cache").build()?;
//! let v: DiskCacheValue<String> = cache.get_or_load(
//!     "greeting",
//!     || Ok::<_, std::io::Error>("hello".to_string()),
//!     Some(Duration::from_secs(3600)),
//! )?;
//! assert_eq!(v.value, "hello");
//! # Ok(()) }
//! ```

#[cfg(feature = "tokio")]
mod asynchronous;
mod blobs;
mod codec;
mod counters;
mod durability;
mod fill;
pub(crate) mod index;
mod iter;
mod key_locks;
mod keys;
mod lmdb;
mod open;
pub(crate) mod record;
mod recovery;
mod shared;
mod store;
mod streams;
mod tiered;
#[cfg(feature = "tokio")]
mod tiered_async;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use iter::Iter;
pub use open::Durability;
pub use shared::{FleetStats, SharedInfo, SharedStats};
pub use store::CheckReport;
pub use streams::ValueReader;

use crate::dirs::{self, Location};
use crate::error::{BoxError, Error, Result};
use codec::encode;
use fill::SharedSide;
use open::Store;
use record::{Format, Meta};
use shared::SharedOptions;
use store::{Lookup, PutMode, Restamp};

/// Which entries go first when a size-limited cache is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum EvictionPolicy {
    /// Least recently stored first (python-diskcache's default). Reads cost nothing extra.
    #[default]
    LeastRecentlyStored,
    /// Least recently used first. A read of an entry last used more than a second ago
    /// records the use with a write transaction (~5 µs, once per key per second); other
    /// reads cost nothing extra.
    LeastRecentlyUsed,
}

/// Counters of a cache, shared by all processes (see [`DiskCache::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Entries stored, expired ones not yet purged included.
    pub entries: u64,
    /// Bytes the entries account for on disk: records, index overhead and value files.
    pub bytes: u64,
    /// The size limit, if one is set.
    pub size_limit: Option<u64>,
    /// Reads that found a valid entry (`get`, `get_or_load`).
    pub hits: u64,
    /// Reads that found nothing valid.
    pub misses: u64,
    /// Entries evicted to respect the size limit.
    pub evictions: u64,
    /// The shared tier's counters (this process's), if the cache has one.
    pub shared: Option<SharedStats>,
}

/// A value read from the cache, with the time it was loaded (or set).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiskCacheValue<T> {
    /// The value.
    pub value: T,
    /// When the value was loaded or set (wall clock, shared by all processes).
    pub load_timestamp: SystemTime,
    /// When the entry expires, if it does.
    pub expires_at: Option<SystemTime>,
}

impl<T> DiskCacheValue<T> {
    /// A value with its load time and expiry, e.g. one loaded elsewhere, to store with
    /// [`DiskCache::set_value`].
    pub fn new(value: T, load_timestamp: SystemTime, expires_at: Option<SystemTime>) -> Self {
        DiskCacheValue {
            value,
            load_timestamp,
            expires_at,
        }
    }

    /// Takes the value out.
    pub fn into_value(self) -> T {
        self.value
    }

    /// How long ago the value was loaded (zero if the clock went backwards).
    pub fn age(&self) -> Duration {
        self.load_timestamp.elapsed().unwrap_or_default()
    }
}

impl<T> std::ops::Deref for DiskCacheValue<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// An entry's key and metadata, without its value (see [`DiskCache::entries`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryInfo {
    /// The key.
    pub key: String,
    /// When the value was loaded or set.
    pub load_timestamp: SystemTime,
    /// When the entry expires, if it does.
    pub expires_at: Option<SystemTime>,
    /// Size of the encoded value in bytes.
    pub size: u64,
    /// True if the value is stored in its own file (large values).
    pub in_file: bool,
    /// True if the entry has expired (it is removed by the next purge).
    pub expired: bool,
}

/// A persistent key/value cache that many threads and processes can share.
///
/// Values are any `serde` type, stored as MessagePack with field names (so reading a value
/// as the wrong type is an error, not garbage). Cloning is cheap and shares the same store.
#[derive(Clone)]
pub struct DiskCache {
    store: Arc<Store>,
    /// The directory as this handle opened it.
    dir: Arc<Path>,
    lock_timeout: Option<Duration>,
    policy: EvictionPolicy,
    time_to_live: Option<Duration>,
    shared: Option<Arc<SharedSide>>,
}

/// Configures and opens a [`DiskCache`]; see [`DiskCache::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct DiskCacheBuilder {
    location: Location,
    name: Option<String>,
    fallback: bool,
    durability: Durability,
    lock_timeout: Option<Duration>,
    size_limit: Option<u64>,
    policy: EvictionPolicy,
    time_to_live: Option<Duration>,
    shared: Option<SharedOptions>,
}

impl Default for DiskCacheBuilder {
    fn default() -> Self {
        DiskCacheBuilder {
            location: Location::Default,
            name: None,
            fallback: true,
            durability: Durability::default(),
            lock_timeout: None,
            size_limit: None,
            policy: EvictionPolicy::default(),
            time_to_live: None,
            shared: None,
        }
    }
}

impl DiskCacheBuilder {
    /// Use exactly this directory (created if missing).
    pub fn directory(mut self, dir: impl Into<PathBuf>) -> Self {
        self.location = Location::Directory(dir.into());
        self
    }

    /// Use a cache that belongs to `file`: `<base>/dbx_concurio-<hash of its absolute path>`.
    /// The file need not exist.
    pub fn for_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.location = Location::File(file.into());
        self
    }

    /// The spec's rule: an existing regular file means [`for_file`](Self::for_file), anything
    /// else [`directory`](Self::directory).
    pub fn path(mut self, path: impl Into<PathBuf>) -> Self {
        self.location = Location::Auto(path.into());
        self
    }

    /// Append `name` (a relative path without `..`) to the resolved directory.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// If the chosen directory cannot be created or written, warn and use the default
    /// location instead (on by default, as the spec says). `false` makes it an error.
    pub fn fallback(mut self, fallback: bool) -> Self {
        self.fallback = fallback;
        self
    }

    /// What the cache keeps across machine crashes; see [`Durability`].
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Give up with [`Error::Busy`] after waiting this long for another loader of the same
    /// key. By default, waits as long as the other loader runs.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = Some(timeout);
        self
    }

    /// Bound the bytes the cache holds on disk (values and index together), for every
    /// process that shares it: the limit is stored in the cache, and each write evicts in
    /// policy order (at most 256 entries per write) while the cache is over it. The entry
    /// being written is never the one evicted.
    pub fn size_limit(mut self, bytes: u64) -> Self {
        self.size_limit = Some(bytes);
        self
    }

    /// Which entries a size-limited cache evicts first (per process).
    pub fn eviction_policy(mut self, policy: EvictionPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The expiry (and, for loads, the maximum age) of the calls that take none:
    /// [`DiskCache::insert`] and [`DiskCache::try_get_with`]. Calls with an `expire`
    /// argument keep it, `None` included ("never"). Per handle: other handles and
    /// processes choose their own. Without it, those calls store entries that never expire.
    #[doc(alias = "ttl")]
    #[doc(alias = "default_expire")]
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.time_to_live = Some(ttl);
        self
    }

    /// Shares the cache with a fleet through a Redis server (7.x, Valkey, managed Redis):
    /// `redis://[user:password@]host:port/db`, or `rediss://` for TLS. The local tier
    /// stays in front: a local hit makes no network call; a local miss reads the shared
    /// tier, and `get_or_load` runs its loader once across all machines (a lease per key).
    /// If the server is down or slow, calls fall back to the local tier within the
    /// timeouts (see [`shared_required`](Self::shared_required)). Keys live under
    /// `concurio:<name>:` (the cache's name, or its directory's). See docs/design.md.
    pub fn shared(mut self, url: impl Into<String>) -> Self {
        self.shared_options().url = url.into();
        self
    }

    /// How long a loader that died (SIGKILL, lost machine) can keep other machines
    /// waiting for a key; a live loader renews its lease every third of it. Default 30 s.
    pub fn shared_lease(mut self, lease: Duration) -> Self {
        self.shared_options().lease = lease;
        self
    }

    /// `true`: an unavailable shared tier is an error ([`Error::Shared`]) instead of a
    /// warning and a fall-back to the local tier (the default).
    pub fn shared_required(mut self, required: bool) -> Self {
        self.shared_options().required = required;
        self
    }

    /// Connect and command timeouts of the shared tier (default 1 s and 2 s): the most a
    /// call waits for an unresponsive server before it falls back (or fails).
    pub fn shared_timeouts(mut self, connect: Duration, command: Duration) -> Self {
        let options = self.shared_options();
        options.connect_timeout = connect.max(Duration::from_millis(1));
        options.command_timeout = command.max(Duration::from_millis(1));
        self
    }

    /// Values whose encoding is larger than this stay local-only, with a warning (default
    /// 64 MiB).
    pub fn shared_max_value(mut self, bytes: u64) -> Self {
        self.shared_options().max_value = bytes;
        self
    }

    /// The first part of the shared tier's key names (default `concurio`).
    pub fn shared_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.shared_options().prefix = prefix.into();
        self
    }

    /// Trusts the CA certificates in this PEM file (instead of the system's and webpki's
    /// roots) for a `rediss://` shared tier: a private CA, a test CA. Read when the cache
    /// is built; a missing file is an error there.
    pub fn shared_tls_ca(mut self, pem_file: impl Into<PathBuf>) -> Self {
        self.shared_options().tls_ca = Some(pem_file.into());
        self
    }

    /// The shared options, so `shared_*` may come before or after `shared(url)`.
    fn shared_options(&mut self) -> &mut SharedOptions {
        self.shared
            .get_or_insert_with(|| SharedOptions::new(String::new()))
    }

    /// Resolves the directory, creates it, and opens the cache.
    pub fn build(self) -> Result<DiskCache> {
        let dir = dirs::resolve_and_prepare(&self.location, self.name.as_deref(), self.fallback)?;
        let store = open::open(&dir, self.durability)?;
        let dir: Arc<Path> = store.paths().dir.clone().into();
        if let Some(limit) = self.size_limit
            && store.totals()?.size_limit != limit
        {
            store.set_size_limit(limit)?;
        }
        let shared = self
            .shared
            .filter(|options| !options.url.is_empty())
            .map(|options| {
                let name = self
                    .name
                    .as_deref()
                    .map_or_else(|| shared_name(&self.location), str::to_owned);
                SharedSide::new(options, &name, &store).map(Arc::new)
            })
            .transpose()?;
        Ok(DiskCache {
            store,
            dir,
            lock_timeout: self.lock_timeout,
            policy: self.policy,
            time_to_live: self.time_to_live,
            shared,
        })
    }
}

/// The shared tier's name of an unnamed cache: its directory's last component.
fn shared_name(location: &Location) -> String {
    let path = match location {
        Location::Directory(p) | Location::File(p) | Location::Auto(p) => Some(p.as_path()),
        Location::Default => None,
    };
    path.and_then(Path::file_name)
        .map_or_else(|| "default".into(), |n| n.to_string_lossy().into_owned())
}

impl DiskCache {
    /// Opens the cache `name` in the default location, `<base>/dbx_concurio/<name>`.
    pub fn new(name: impl AsRef<str>) -> Result<Self> {
        Self::builder().name(name.as_ref()).build()
    }

    /// A builder for a cache anywhere, with options.
    pub fn builder() -> DiskCacheBuilder {
        DiskCacheBuilder::default()
    }

    /// The directory this cache lives in.
    pub fn directory(&self) -> &Path {
        &self.dir
    }

    /// Reads `key`. `None` if it is missing or expired. Takes no lock. With a shared tier,
    /// a local miss reads the shared tier (and fills the local one from it).
    ///
    /// Errors: [`Error::Decode`] if the value is not a `T`; [`Error::Corrupt`] if its bytes
    /// fail their checksum.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<DiskCacheValue<T>>> {
        let local = self.read_with(key, codec::Typed::new(key))?;
        match &self.shared {
            // A local miss reads through to the shared tier (a local hit makes no call).
            Some(side) if local.is_none() => self.get_shared(side, key),
            _ => Ok(local),
        }
    }

    /// Stores `value` under `key`, replacing any previous value; `expire` = `None` keeps it
    /// until deleted. Readers see the old or the new value, whole. With a shared tier, the
    /// value goes there first (a load that started before cannot overwrite it), then here.
    pub fn set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        expire: Option<Duration>,
    ) -> Result<()> {
        let payload = encode(key, value)?;
        let meta = new_meta(now_ns(), expire, &payload);
        if let Some(side) = &self.shared {
            return self.set_tiered(side, key, meta, payload);
        }
        self.store
            .put(key, meta, &payload, PutMode::Replace)
            .map(drop)
    }

    /// [`set`](Self::set) with the cache's [`time_to_live`](DiskCacheBuilder::time_to_live)
    /// (never expires without one).
    pub fn insert<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<()> {
        self.set(key, value, self.time_to_live)
    }

    /// Stores a value with its own load time and expiry (one read from another cache, or
    /// loaded on another machine), replacing any previous value. `get_or_load` judges its
    /// age from that load time.
    pub fn set_value<T: Serialize>(&self, key: &str, value: &DiskCacheValue<T>) -> Result<()> {
        let payload = encode(key, &value.value)?;
        let load_ns = to_ns(value.load_timestamp);
        let meta = Meta {
            load_ns,
            expire_ns: value.expires_at.map_or(0, |at| to_ns(at).max(1)),
            order_ns: now_ns(),
            payload_len: payload.len() as u64,
        };
        if let Some(side) = &self.shared {
            return self.set_tiered(side, key, meta, payload);
        }
        self.store
            .put(key, meta, &payload, PutMode::Replace)
            .map(drop)
    }

    /// Stores `value` only if `key` holds no unexpired entry, atomically across processes;
    /// returns whether it stored.
    pub fn add<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        expire: Option<Duration>,
    ) -> Result<bool> {
        let payload = encode(key, value)?;
        let now = now_ns();
        self.store.put(
            key,
            new_meta(now, expire, &payload),
            &payload,
            PutMode::IfAbsentOrExpired(now),
        )
    }

    /// Stores `bytes` under `key` as they are, without serde (for callers that hold bytes:
    /// file contents, responses, their own encodings). Same guarantees as [`set`](Self::set):
    /// checksummed, atomic, values over 32 KiB in their own file.
    ///
    /// Read them with [`get_bytes`](Self::get_bytes), [`with_bytes`](Self::with_bytes), or
    /// [`get`](Self::get) as a byte type (`Vec<u8>`, `Box<[u8]>`, `serde_bytes::ByteBuf`,
    /// `bytes::Bytes`). Raw bytes are never parsed as MessagePack: `get` as any type that
    /// does not take a byte array is [`Error::Decode`].
    pub fn set_bytes(&self, key: &str, bytes: &[u8], expire: Option<Duration>) -> Result<()> {
        codec::check_raw(key, bytes)?;
        let meta = new_meta(now_ns(), expire, bytes);
        self.store
            .put_as(key, meta, Format::Raw, bytes, PutMode::Replace)
            .map(drop)
    }

    /// Reads the bytes of `key`: a value stored by [`set_bytes`](Self::set_bytes), or by
    /// [`set`](Self::set) as bytes or a string. `None` if it is missing or expired.
    ///
    /// Errors: [`Error::Decode`] if the value is not bytes; [`Error::Corrupt`] as for `get`.
    pub fn get_bytes(&self, key: &str) -> Result<Option<DiskCacheValue<Vec<u8>>>> {
        self.with_bytes(key, <[u8]>::to_vec)
    }

    /// Calls `f` on the bytes of `key` where they lie (in the index's memory for values up
    /// to 32 KiB: no copy), and returns what it returns; `None` if the key is missing or
    /// expired. Which values have bytes, and the errors: as [`get_bytes`](Self::get_bytes).
    ///
    /// `f` runs inside a read transaction: keep it short (a long one keeps the pages it
    /// reads from being reused).
    pub fn with_bytes<R>(
        &self,
        key: &str,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<DiskCacheValue<R>>> {
        let mut f = Some(f);
        self.read(key, |format, payload| {
            let bytes = codec::bytes_of(key, format, payload)?;
            // `lookup` decodes at most once: it returns right after.
            f.take()
                .map(|f| f(&bytes))
                .ok_or_else(|| Error::InvalidInput("with_bytes: the value was read twice".into()))
        })
    }

    /// Returns the value of `key` if it is younger than `expire` (and not expired); else runs
    /// `loader` and stores its value with that expiry.
    ///
    /// The loader runs **once** across all threads and processes that ask for the same key
    /// at the same time: the others wait for it and then read its value. A valid entry is
    /// read without taking any lock. If the loader fails, nothing is stored and its error is
    /// returned inside [`Error::Loader`]; a waiting caller then runs its own loader. If it
    /// panics, the locks are released and the panic continues.
    ///
    /// Loaders may call `get_or_load` for other keys (memoized recursion, dependency chains):
    /// the locks are exact per key, so distinct keys never wait for each other. A loader
    /// that asks for its own key gets [`Error::Recursive`] at once.
    ///
    /// An entry that cannot be read as a `T` (stored by an older version of the type) or
    /// fails its checksum is loaded again and overwritten. An entry whose load time lies
    /// more than a second in the future (another machine's clock, a clock stepped back) is
    /// stale.
    pub fn get_or_load<T, E, F>(
        &self,
        key: &str,
        loader: F,
        expire: Option<Duration>,
    ) -> Result<DiskCacheValue<T>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> std::result::Result<T, E>,
        E: Into<BoxError>,
    {
        if let Some(hit) = self.fresh(key, expire)? {
            return Ok(hit);
        }
        if let Some(shared) = &self.shared {
            return self.get_or_load_tiered(shared, key, loader, expire);
        }
        // Miss: one thread of this process, then one process, per key. Guards drop in reverse
        // order, also when the loader panics.
        let _lock = self.store.lock_key(key, self.lock_timeout)?;
        if let Some(hit) = self.recheck_under_lock(key, expire)? {
            return Ok(hit);
        }
        let value = loader().map_err(|e| loader_error(key, e))?;
        self.store_loaded(key, value, expire)
    }

    /// The steps of a load between taking the key's lock and running the loader: another
    /// thread, task or process may have loaded the key while we waited; and loading into a
    /// deleted directory would store where nobody can see it. Counts the miss.
    fn recheck_under_lock<T: DeserializeOwned>(
        &self,
        key: &str,
        expire: Option<Duration>,
    ) -> Result<Option<DiskCacheValue<T>>> {
        if let Some(hit) = self.fresh(key, expire)? {
            return Ok(Some(hit));
        }
        self.store.ensure_present()?;
        self.store.count(false);
        Ok(None)
    }

    /// Stores what a loader returned, still under the key's lock, and hands it back.
    fn store_loaded<T: Serialize>(
        &self,
        key: &str,
        value: T,
        expire: Option<Duration>,
    ) -> Result<DiskCacheValue<T>> {
        let payload = encode(key, &value)?;
        let meta = new_meta(now_ns(), expire, &payload);
        self.store.put(key, meta, &payload, PutMode::Replace)?;
        Ok(to_value(value, meta))
    }

    /// [`get_or_load`](Self::get_or_load) with the cache's
    /// [`time_to_live`](DiskCacheBuilder::time_to_live) as `expire` (never stale without
    /// one).
    pub fn try_get_with<T, E, F>(&self, key: &str, loader: F) -> Result<DiskCacheValue<T>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> std::result::Result<T, E>,
        E: Into<BoxError>,
    {
        self.get_or_load(key, loader, self.time_to_live)
    }

    /// Removes `key`; true if it was there. With a shared tier, from both tiers (see
    /// [`invalidate`](Self::invalidate)).
    pub fn delete(&self, key: &str) -> Result<bool> {
        if let Some(side) = &self.shared {
            return self.delete_tiered(side, key);
        }
        self.store.delete(key)
    }

    /// True if `key` holds a value that has not expired.
    pub fn contains(&self, key: &str) -> Result<bool> {
        let now = now_ns();
        Ok(matches!(
            self.store
                .lookup(key, |meta| !meta.expired(now), |_, _| Ok(()))?,
            Lookup::Found(..)
        ))
    }

    /// Gives `key` a new expiry, counted from now (`None` = never); true if it was there.
    pub fn touch(&self, key: &str, expire: Option<Duration>) -> Result<bool> {
        let now = now_ns();
        self.store.restamp(
            key,
            Restamp {
                expire_ns: Some(expiry_ns(now, expire)),
                now,
                ..Restamp::default()
            },
        )
    }

    /// Counters shared by all processes: entries, bytes, hits, misses, evictions.
    pub fn stats(&self) -> Result<CacheStats> {
        let t = self.store.totals()?;
        Ok(CacheStats {
            entries: t.entries,
            bytes: t.bytes,
            size_limit: (t.size_limit != 0).then_some(t.size_limit),
            hits: t.hits,
            misses: t.misses,
            evictions: t.evictions,
            shared: self.shared.as_ref().map(|s| s.stats()),
        })
    }

    /// Verifies every entry and value file, removes what is damaged, rebuilds the internal
    /// orders and counters, and deletes debris (orphan value files, temp files of
    /// interrupted writes, foreign lock files). Holds the write lock while it runs.
    pub fn check(&self) -> Result<CheckReport> {
        self.store.check()
    }

    /// Number of entries that have not expired: the stored count less the expired entries
    /// not yet purged (read from the expiry order, so the cost is that of the expired ones).
    pub fn len(&self) -> Result<usize> {
        let live = self.store.live_entries(now_ns())?;
        Ok(usize::try_from(live).unwrap_or(usize::MAX))
    }

    /// True if there is no unexpired entry (as cheap as [`len`](Self::len)).
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The keys of all unexpired entries, as a snapshot (in byte order for keys of up to
    /// 400 bytes, then longer keys).
    pub fn keys(&self) -> Result<Vec<String>> {
        Ok(self
            .entries()?
            .into_iter()
            .filter(|e| !e.expired)
            .map(|e| e.key)
            .collect())
    }

    /// Every entry's key and metadata, expired ones included (marked), as a snapshot.
    pub fn entries(&self) -> Result<Vec<EntryInfo>> {
        let now = now_ns();
        Ok(self
            .store
            .entries()?
            .into_iter()
            .map(|e| entry_info(e, now))
            .collect())
    }

    /// The unexpired entries' keys and metadata, lazily, in batches of 1 024 read from
    /// short read transactions: memory stays flat for caches of millions of entries (where
    /// [`keys`](Self::keys) and [`entries`](Self::entries) build a `Vec`). Same order as
    /// `keys`; entries written or removed during the walk may or may not be seen.
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// # let cache = dbx_concurio::caches::DiskCache::builder().directory(tmp.path()).build()?;
    /// # cache.set("a", "x", None)?;
    /// for entry in cache.iter() {
    ///     let entry = entry?;
    ///     println!("{} ({} bytes)", entry.key, entry.size);
    /// }
    /// # Ok::<(), dbx_concurio::Error>(())
    /// ```
    pub fn iter(&self) -> Iter {
        Iter::new(self.clone())
    }

    /// Removes every entry; returns how many there were. With a shared tier, the fleet's
    /// entries of this cache too (the count is this machine's).
    pub fn clear(&self) -> Result<usize> {
        if let Some(side) = &self.shared {
            return self.clear_tiered(side);
        }
        Ok(self.store.clear()? as usize)
    }

    /// Removes expired entries (and unreadable records); returns how many.
    pub fn purge_expired(&self) -> Result<usize> {
        let now = now_ns();
        self.store.remove_where(|meta| meta.expired(now))
    }

    /// The entry, if it is valid for `get_or_load` (unexpired and younger than `expire`).
    /// A corrupt entry counts as missing here: it is reloaded and overwritten.
    fn fresh<T: DeserializeOwned>(
        &self,
        key: &str,
        expire: Option<Duration>,
    ) -> Result<Option<DiskCacheValue<T>>> {
        let now = LazyNow::default();
        let max_age = expire.map(|d| d.as_nanos());
        let valid = |meta: &Meta| {
            now.live(meta)
                && max_age.is_none_or(|max| {
                    let now = now.get();
                    // A load time in the future is another clock's: trust it only within
                    // the tolerance, so a skewed entry is not served as fresh forever.
                    meta.load_ns <= now.saturating_add(CLOCK_SKEW_NS)
                        && u128::from(now.saturating_sub(meta.load_ns)) < max
                })
        };
        match self.lookup(key, valid) {
            Ok(Lookup::Found(meta, value)) => Ok(Some(self.hit(key, value, meta, &now))),
            Ok(Lookup::Missing | Lookup::Rejected) => Ok(None),
            // A damaged entry, or one stored under an older version of `T`: load it again
            // and overwrite it (`get` reports both).
            Err(err @ (Error::Corrupt { .. } | Error::Decode { .. })) => {
                tracing::warn!("{err}; loading it again");
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    /// `get`'s path: the unexpired entry, decoded by `decode`, counted as a hit or a miss.
    fn read<R>(
        &self,
        key: &str,
        decode: impl FnMut(Format, &[u8]) -> Result<R>,
    ) -> Result<Option<DiskCacheValue<R>>> {
        self.read_with(key, decode)
    }

    /// [`read`](Self::read) with any decoder (`get`'s is not a closure, see
    /// [`codec::Typed`]).
    fn read_with<R>(
        &self,
        key: &str,
        decode: impl codec::Decode<R>,
    ) -> Result<Option<DiskCacheValue<R>>> {
        let now = LazyNow::default();
        match self.store.lookup_with(key, |meta| now.live(meta), decode)? {
            Lookup::Found(meta, value) => Ok(Some(self.hit(key, value, meta, &now))),
            Lookup::Missing | Lookup::Rejected => {
                self.store.count(false);
                Ok(None)
            }
        }
    }

    /// Records a hit (and, under LRU, the use) and wraps the value. Inlined into the hit
    /// path: the value returned through memory cost a store-forwarding stall (a wide load
    /// of what narrower stores had just written); the LRU write stays out of line.
    #[inline(always)]
    fn hit<T>(&self, key: &str, value: T, meta: Meta, now: &LazyNow) -> DiskCacheValue<T> {
        self.store.count(true);
        if self.policy == EvictionPolicy::LeastRecentlyUsed
            && now.get().saturating_sub(meta.order_ns) > LRU_GRANULARITY_NS
        {
            self.record_use(key, now.get());
        }
        to_value(value, meta)
    }

    /// Moves `key` to the young end of the eviction order (LRU), at most once per
    /// [`LRU_GRANULARITY_NS`]: a write, so a failure is only logged (the hit stands).
    #[inline(never)]
    fn record_use(&self, key: &str, now: u64) {
        let moved = Restamp {
            order_ns: Some(now),
            ..Restamp::default()
        };
        if let Err(err) = self.store.restamp(key, moved) {
            tracing::debug!("cannot record the use of {key:?}: {err}");
        }
    }

    fn lookup<T: DeserializeOwned>(
        &self,
        key: &str,
        accept: impl Fn(&Meta) -> bool,
    ) -> Result<Lookup<T>> {
        self.store.lookup_with(key, accept, codec::Typed::new(key))
    }
}

impl fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskCache")
            .field("directory", &self.directory())
            .finish_non_exhaustive()
    }
}

/// A loader's error, with the key it was loading.
fn loader_error(key: &str, err: impl Into<BoxError>) -> Error {
    Error::Loader {
        key: key.to_owned(),
        source: err.into(),
    }
}

/// Under LRU, uses closer together than this are not recorded again.
const LRU_GRANULARITY_NS: u64 = 1_000_000_000;
/// How far in the future a load time may lie (clocks of other machines) and still count as
/// fresh for `get_or_load`.
const CLOCK_SKEW_NS: u64 = 1_000_000_000;
/// The metadata of a value stored now with `expire`.
fn new_meta(now: u64, expire: Option<Duration>, payload: &[u8]) -> Meta {
    Meta {
        load_ns: now,
        expire_ns: expiry_ns(now, expire),
        order_ns: now,
        payload_len: payload.len() as u64,
    }
}

fn entry_info(e: store::EntryInfo, now: u64) -> EntryInfo {
    EntryInfo {
        key: e.key,
        load_timestamp: from_ns(e.meta.load_ns),
        expires_at: (e.meta.expire_ns != 0).then(|| from_ns(e.meta.expire_ns)),
        size: e.meta.payload_len,
        in_file: e.in_file,
        expired: e.meta.expired(now),
    }
}

fn to_value<T>(value: T, meta: Meta) -> DiskCacheValue<T> {
    DiskCacheValue {
        value,
        load_timestamp: from_ns(meta.load_ns),
        expires_at: (meta.expire_ns != 0).then(|| from_ns(meta.expire_ns)),
    }
}

/// The wall clock, read at most once and only when needed: an entry without expiry, read
/// with no maximum age, needs no clock (one `clock_gettime` less on the hit path).
#[derive(Default)]
struct LazyNow(std::cell::Cell<Option<u64>>);

impl LazyNow {
    fn get(&self) -> u64 {
        self.0.get().unwrap_or_else(|| {
            let now = now_ns();
            self.0.set(Some(now));
            now
        })
    }

    /// Whether the entry's own expiry has not passed.
    fn live(&self, meta: &Meta) -> bool {
        meta.expire_ns == 0 || !meta.expired(self.get())
    }
}

fn now_ns() -> u64 {
    to_ns(SystemTime::now())
}

/// Nanoseconds since the Unix epoch (0 before it, saturating far after it).
fn to_ns(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn from_ns(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

/// The stored expiry: 0 means never.
fn expiry_ns(now: u64, expire: Option<Duration>) -> u64 {
    match expire {
        None => 0,
        Some(d) => now
            .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .max(1),
    }
}
