//! The shared tier: one cache's entries, leases and fence tokens on a Redis server that a
//! fleet of machines shares (see docs/design.md, "Shared tier").
//!
//! [`SharedTier`] turns every failure of the server (down, slow, partitioned, refusing) into
//! "unavailable" within bounded time: one warning per outage, a counter, and a retry at
//! most once a second until it answers again; or, with `shared_required`, into an error.
//! The protocol itself is in `redis.rs` (the scripts) and `lease.rs` (claiming a key).

#[cfg(feature = "shared")]
mod connect;
mod entry;
mod fleet;
mod lease;
#[cfg(feature = "shared")]
mod redis;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub use fleet::FleetStats;
use fleet::{Count, Fleet};
pub(crate) use lease::{Claim, Lease};

use crate::error::{BoxError, Error, Result};

/// One entry as both tiers hold it: the encoded value with its own stamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) load_ns: u64,
    /// 0 = never expires.
    pub(crate) expire_ns: u64,
    pub(crate) payload: Vec<u8>,
}

/// Counters of this process's use of the shared tier (see [`CacheStats`]).
///
/// [`CacheStats`]: super::CacheStats
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedStats {
    /// The server, without its password.
    pub endpoint: String,
    /// Whether the last call reached the server.
    pub available: bool,
    /// Local misses served from the shared tier.
    pub hits: u64,
    /// Local misses the shared tier could not serve either.
    pub misses: u64,
    /// Times this process waited for a loader on another machine.
    pub waits: u64,
    /// Values this process stored in the shared tier.
    pub stores: u64,
    /// Late writes the shared tier refused (a newer lease had been handed out).
    pub fenced: u64,
    /// Values kept local-only because they exceed `shared_max_value`.
    pub local_only: u64,
    /// Calls that failed or were skipped because the server was unavailable.
    pub errors: u64,
    /// Outages seen (each warned about once).
    pub outages: u64,
}

/// The shared tier's server as seen now (see [`DiskCache::shared_info`]).
///
/// [`DiskCache::shared_info`]: super::DiskCache::shared_info
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedInfo {
    /// The server, without its password.
    pub endpoint: String,
    /// Entries of this cache on the server (a `SCAN` of its namespace).
    pub entries: u64,
    /// The server's memory use in bytes (`INFO memory`), for all its data.
    pub used_memory: u64,
    /// The server's `maxmemory` (0 = none): the fleet's size bound.
    pub maxmemory: u64,
    /// What the server evicts when full (`maxmemory-policy`).
    pub maxmemory_policy: String,
    /// The counters of every process and machine that uses this cache's shared tier.
    pub fleet: FleetStats,
}

/// What the builder collected for the shared tier.
#[derive(Clone)]
pub(crate) struct SharedOptions {
    pub(crate) url: String,
    pub(crate) lease: Duration,
    pub(crate) required: bool,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) max_value: u64,
    pub(crate) prefix: String,
    /// PEM file of the certificates to trust for `rediss://` instead of the system's.
    pub(crate) tls_ca: Option<std::path::PathBuf>,
}

impl SharedOptions {
    pub(crate) fn new(url: String) -> Self {
        SharedOptions {
            url,
            lease: Duration::from_secs(30),
            required: false,
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(2),
            max_value: 64 << 20,
            prefix: "concurio".into(),
            tls_ca: None,
        }
    }
}

impl fmt::Debug for SharedOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedOptions")
            .field("url", &redact(&self.url))
            .field("lease", &self.lease)
            .field("required", &self.required)
            .field("tls_ca", &self.tls_ca)
            .finish_non_exhaustive()
    }
}

/// The URL with any user and password replaced by `***` (for logs and errors).
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparsable URL>".into();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// The Redis names of one key: value, lease and fence counter share a `{...}` hash tag
/// (one cluster slot, so the scripts may touch all three); the channel wakes waiters.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub(crate) value: String,
    pub(crate) lease: String,
    pub(crate) fence: String,
    pub(crate) channel: String,
}

/// Whether a lease was taken or is held by someone else (and for how much longer).
pub(crate) enum Acquired {
    Leased(u64),
    Held(Duration),
}

pub(crate) type RemoteResult<T> = std::result::Result<T, BoxError>;

/// What the shared tier's server does, in plain data (Redis is the one implementation).
/// (Unwind-safe so `DiskCache` stays so: a panic cannot leave a call half-done in it.)
pub(crate) trait Remote: Send + Sync + std::panic::RefUnwindSafe {
    fn get(&self, keys: &Keys) -> RemoteResult<Option<Vec<u8>>>;
    fn acquire(&self, keys: &Keys, token: &str, lease: Duration) -> RemoteResult<Acquired>;
    fn renew(&self, keys: &Keys, token: &str, lease: Duration) -> RemoteResult<bool>;
    fn release(&self, keys: &Keys, token: &str) -> RemoteResult<()>;
    fn store(
        &self,
        keys: &Keys,
        token: &str,
        fence: u64,
        bytes: &[u8],
        ttl: Option<Duration>,
    ) -> RemoteResult<bool>;
    /// Counts the values whose names match `pattern` and reads the memory figures.
    fn info(&self, pattern: &str) -> RemoteResult<SharedInfo>;
    /// Deletes the value and fences out the loaders that started before; true if it was there.
    fn invalidate(&self, keys: &Keys) -> RemoteResult<bool>;
    /// Hands out the key's next fence token without a lease (for a `set`).
    fn reserve(&self, keys: &Keys) -> RemoteResult<u64>;
    /// Deletes every value whose name matches `pattern`; how many.
    fn clear(&self, pattern: &str) -> RemoteResult<u64>;
    /// Adds `deltas` to the fields of the hash `key` (one round trip).
    fn add_counts(&self, key: &str, deltas: &[(&'static str, u64)]) -> RemoteResult<()>;
    /// The fields of the hash `key`.
    fn counts(&self, key: &str) -> RemoteResult<Vec<(String, u64)>>;
    /// Subscribes to the key's channel: every store or release after this wakes the waiter.
    fn subscribe(&self, keys: &Keys) -> RemoteResult<Box<dyn Waiter>>;
}

/// A subscription to one key's channel.
pub(crate) trait Waiter {
    /// Waits up to `timeout` for a store or release; false on timeout.
    fn wait(&mut self, timeout: Duration) -> RemoteResult<bool>;
}

/// The shared tier of one cache handle (cheap to clone: a lease owns one, so it can be held
/// across an `.await` and released on another thread).
#[derive(Clone)]
pub(crate) struct SharedTier(Arc<TierState>);

/// What the clones of a [`SharedTier`] share.
pub(crate) struct TierState {
    remote: Arc<dyn Remote>,
    options: SharedOptions,
    /// `<prefix>:<name>:`
    namespace: String,
    endpoint: String,
    down: AtomicBool,
    retry_at: Mutex<Option<Instant>>,
    counters: Counters,
    fleet: Fleet,
}

impl Drop for TierState {
    /// Adds this process's last counts to the fleet's (unless the server is known down:
    /// exiting should not wait for timeouts).
    fn drop(&mut self) {
        self.fleet.stop();
        if !self.down.load(Ordering::Relaxed)
            && let Err(err) = self.fleet.flush()
        {
            tracing::debug!("cannot add to the fleet counters: {err}");
        }
    }
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    waits: AtomicU64,
    stores: AtomicU64,
    fenced: AtomicU64,
    local_only: AtomicU64,
    errors: AtomicU64,
    outages: AtomicU64,
}

/// While the server is unavailable, calls skip it; one in this interval tries again.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// What a write to the shared tier did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    Stored,
    /// Refused: a newer lease was handed out (we were paused past ours).
    Fenced,
    /// Not sent: too large, expired already, or the server is unavailable.
    Skipped,
}

impl std::ops::Deref for SharedTier {
    type Target = TierState;
    fn deref(&self) -> &TierState {
        &self.0
    }
}

impl SharedTier {
    /// Checks the options; connects lazily (an unreachable server is an outage, not a
    /// failure to open the cache).
    pub(crate) fn new(options: SharedOptions, name: &str) -> Result<Self> {
        if options.prefix.contains(['{', '}']) || name.contains(['{', '}']) {
            return Err(Error::InvalidInput(format!(
                "shared tier prefix {:?} and cache name {name:?} may not contain braces \
                 (they would change the keys' cluster hash slot)",
                options.prefix
            )));
        }
        if options.lease.is_zero() {
            return Err(Error::InvalidInput("shared_lease must be positive".into()));
        }
        let endpoint = redact(&options.url);
        let remote = connect(&options, &endpoint)?;
        let namespace = format!("{}:{name}:", options.prefix);
        Ok(SharedTier(Arc::new(TierState {
            fleet: Fleet::new(format!("{namespace}stats"), Arc::clone(&remote)),
            remote,
            namespace,
            options,
            endpoint,
            down: AtomicBool::new(false),
            retry_at: Mutex::new(None),
            counters: Counters::default(),
        })))
    }

    /// The Redis names of `key`. Short keys stay readable; long keys, keys with a `}` (it
    /// would end the hash tag), the empty key and keys that look hashed are hashed.
    pub(crate) fn keys(&self, key: &str) -> Keys {
        let tag = if key.is_empty() || key.len() > 128 || key.contains('}') || key.starts_with('#')
        {
            let digest = Sha256::digest(key.as_bytes());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            format!("#{hex}")
        } else {
            key.to_owned()
        };
        let base = format!("{}{{{tag}}}", self.namespace);
        Keys {
            value: format!("{base}:v"),
            lease: format!("{base}:lease"),
            fence: format!("{base}:fence"),
            channel: format!("{base}:done"),
        }
    }

    /// Reads `key`'s entry. `Ok(None)`: missing, damaged (warned) or server unavailable.
    pub(crate) fn read(&self, key: &str, keys: &Keys) -> Result<Option<Entry>> {
        let Some(bytes) = self.call(|r| r.get(keys))?.flatten() else {
            return Ok(None);
        };
        match entry::decode(key, bytes) {
            Ok(entry) => Ok(Some(entry)),
            Err(detail) => {
                tracing::warn!(
                    "shared entry {:?} on {}: {detail}; loading it again",
                    keys.value,
                    self.endpoint
                );
                Ok(None)
            }
        }
    }

    /// Stores `entry` under `lease` (fenced); see [`Written`].
    pub(crate) fn write(&self, key: &str, lease: &Lease, entry: &Entry) -> Result<Written> {
        self.store_fenced(key, lease.keys(), lease.token(), lease.fence(), entry)
    }

    /// Stores `entry` under a fence token of its own, without a lease (`set`): it replaces
    /// whatever is there (last writer wins, as in the local tier) and fences out every
    /// loader that took its lease before, whose value is older than this one.
    pub(crate) fn set(&self, key: &str, entry: &Entry) -> Result<Written> {
        if self.too_big(key, entry) {
            return Ok(Written::Skipped);
        }
        let keys = self.keys(key);
        let Some(fence) = self.call(|r| r.reserve(&keys))? else {
            return Ok(Written::Skipped);
        };
        // No lease token: the store script deletes a lease only if it holds our token.
        self.store_fenced(key, &keys, "", fence, entry)
    }

    /// Whether `entry` exceeds `shared_max_value` (counted and warned about: it stays local).
    fn too_big(&self, key: &str, entry: &Entry) -> bool {
        if entry.payload.len() as u64 <= self.options.max_value {
            return false;
        }
        self.counters.local_only.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "value of key {key:?} ({} bytes) exceeds the shared tier's limit of {} bytes; \
             keeping it local-only",
            entry.payload.len(),
            self.options.max_value
        );
        true
    }

    /// The fenced store of a load (`token` = its lease) or a `set` (no lease).
    fn store_fenced(
        &self,
        key: &str,
        keys: &Keys,
        token: &str,
        fence: u64,
        entry: &Entry,
    ) -> Result<Written> {
        if self.too_big(key, entry) {
            return Ok(Written::Skipped);
        }
        let ttl = match entry.expire_ns {
            0 => None,
            at => match at.checked_sub(super::now_ns()) {
                Some(left) if left > 0 => Some(Duration::from_nanos(left)),
                _ => return Ok(Written::Skipped), // expired before it could be stored
            },
        };
        let bytes = entry::encode(key, entry, fence);
        let stored = self.call(|r| r.store(keys, token, fence, &bytes, ttl))?;
        Ok(match stored {
            Some(true) => {
                self.counters.stores.fetch_add(1, Ordering::Relaxed);
                self.fleet.count(Count::Store);
                Written::Stored
            }
            Some(false) => {
                self.counters.fenced.fetch_add(1, Ordering::Relaxed);
                self.fleet.count(Count::Fenced);
                tracing::warn!(
                    "a newer write or lease on key {key:?} came first (fence token \
                     {fence} is stale); this value was not stored in the shared tier"
                );
                Written::Fenced
            }
            None => Written::Skipped,
        })
    }

    /// Deletes `key`'s shared entry (see [`Remote::invalidate`]); whether it was there.
    pub(crate) fn invalidate(&self, key: &str) -> Result<bool> {
        let keys = self.keys(key);
        Ok(self.call(|r| r.invalidate(&keys))?.unwrap_or(false))
    }

    /// Deletes every entry of this cache on the server (`SCAN` + `UNLINK` in batches);
    /// how many. Leases and fence counters stay: a loader running now is not fenced out.
    pub(crate) fn clear(&self) -> Result<u64> {
        let pattern = self.value_pattern();
        Ok(self.call(|r| r.clear(&pattern))?.unwrap_or(0))
    }

    /// The `SCAN` pattern of this cache's value names: hash tags start after the
    /// namespace; every value name ends in `}:v`.
    fn value_pattern(&self) -> String {
        format!("{}{{*}}:v", glob_escape(&self.namespace))
    }

    /// Asks the server now (errors are not an outage here: the caller asked).
    pub(crate) fn info(&self) -> Result<SharedInfo> {
        let pattern = self.value_pattern();
        let mut info = self.remote.info(&pattern).map_err(|e| Error::Shared {
            endpoint: self.endpoint.clone(),
            detail: e.to_string(),
        })?;
        // This process's own counts first, so they are in what it reads.
        if let Err(err) = self.fleet.flush() {
            tracing::debug!("cannot add to the fleet counters: {err}");
        }
        let fields = self
            .remote
            .counts(&self.fleet.key)
            .map_err(|e| Error::Shared {
                endpoint: self.endpoint.clone(),
                detail: e.to_string(),
            })?;
        info.fleet = FleetStats::from_fields(fields);
        info.endpoint = self.endpoint.clone();
        Ok(info)
    }

    pub(crate) fn count_hit(&self, hit: bool) {
        let (counter, fleet) = if hit {
            (&self.counters.hits, Count::Hit)
        } else {
            (&self.counters.misses, Count::Miss)
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.fleet.count(fleet);
    }

    /// A loader ran for a key of this cache (counted fleet-wide).
    pub(crate) fn count_load(&self) {
        self.fleet.count(Count::Load);
    }

    pub(crate) fn stats(&self) -> SharedStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SharedStats {
            endpoint: self.endpoint.clone(),
            available: !self.down.load(Ordering::Relaxed),
            hits: get(&c.hits),
            misses: get(&c.misses),
            waits: get(&c.waits),
            stores: get(&c.stores),
            fenced: get(&c.fenced),
            local_only: get(&c.local_only),
            errors: get(&c.errors),
            outages: get(&c.outages),
        }
    }

    /// Runs one call on the server. `Ok(None)` if it is unavailable (now, or still within
    /// the retry interval of an outage), unless the tier is required: then an error.
    /// A required tier tries every call (each bounded by the timeouts): its caller asked
    /// for errors, not for a second of errors after the server is back.
    fn call<R>(&self, f: impl FnOnce(&dyn Remote) -> RemoteResult<R>) -> Result<Option<R>> {
        let skip = !self.options.required
            && self
                .retry_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some_and(|at| Instant::now() < at);
        if skip {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            return self.unavailable("still unavailable; retrying within a second".into());
        }
        match f(&*self.remote) {
            Ok(out) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        "shared tier {} is available again; using it again",
                        self.endpoint
                    );
                }
                *self.retry_at.lock().unwrap_or_else(PoisonError::into_inner) = None;
                Ok(Some(out))
            }
            Err(err) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                *self.retry_at.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(Instant::now() + RETRY_INTERVAL);
                if !self.down.swap(true, Ordering::Relaxed) {
                    self.counters.outages.fetch_add(1, Ordering::Relaxed);
                    if !self.options.required {
                        tracing::warn!(
                            "shared tier {} is unavailable ({err}); using the local tier \
                             only until it is back",
                            self.endpoint
                        );
                    }
                }
                self.unavailable(err.to_string())
            }
        }
    }

    fn unavailable<R>(&self, detail: String) -> Result<Option<R>> {
        if self.options.required {
            Err(Error::Shared {
                endpoint: self.endpoint.clone(),
                detail,
            })
        } else {
            Ok(None)
        }
    }
}

/// `text` with the glob characters of Redis patterns escaped.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The server behind the tier.
#[cfg(feature = "shared")]
fn connect(options: &SharedOptions, endpoint: &str) -> Result<Arc<dyn Remote>> {
    let tls_ca = match &options.tls_ca {
        None => None,
        Some(path) if !options.url.starts_with("rediss://") => {
            return Err(Error::InvalidInput(format!(
                "shared_tls_ca {} is for rediss:// URLs; {endpoint} does not use TLS",
                path.display()
            )));
        }
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| Error::io("read the shared tier's CA certificates", path, e))?,
        ),
    };
    let at = redis::Endpoint::new(
        &options.url,
        endpoint,
        tls_ca.as_deref(),
        options.connect_timeout,
        options.command_timeout,
    )?;
    Ok(Arc::new(redis::Redis::new(at)))
}

#[cfg(not(feature = "shared"))]
fn connect(_: &SharedOptions, endpoint: &str) -> Result<Arc<dyn Remote>> {
    Err(Error::Unsupported(format!(
        "cannot use the shared tier {endpoint}: dbx-concurio was built without its `shared` \
         feature"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_user_and_password_only() {
        assert_eq!(
            redact("rediss://user:p@ss@host:6380/0"),
            "rediss://***@host:6380/0"
        );
        assert_eq!(redact("redis://10.0.0.5:6379/0"), "redis://10.0.0.5:6379/0");
        assert_eq!(redact("redis://:secret@h"), "redis://***@h");
        assert_eq!(redact("nonsense secret"), "<unparsable URL>");
    }
}
