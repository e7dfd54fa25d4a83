//! Fleet-wide counters: one Redis hash per cache namespace (`<prefix>:<name>:stats`) that
//! every process of every machine adds to.
//!
//! Counting must not cost a round trip on the caller's path, so each process counts in
//! atomics and a background thread of the tier adds the deltas to the hash (`HINCRBY`s,
//! pipelined: one round trip) at most once a second, and once more when the last handle is
//! dropped (a short-lived program such as `concurio run` counts too). A failed flush puts
//! the deltas back for the next one; a process that dies before flushing loses at most a
//! second of counts. A forked child starts from zero (its parent flushes what it inherited).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{Remote, RemoteResult};
use crate::sys;

/// What the fleet counts (the field names in the hash, in this order).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Count {
    Hit,
    Miss,
    Load,
    Store,
    Fenced,
}

const FIELDS: [&str; 5] = ["hits", "misses", "loads", "stores", "fenced"];

/// How often the background thread adds this process's counts to the hash.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The counters of every process that uses the cache's shared tier, as the server holds
/// them (see [`SharedInfo::fleet`](super::SharedInfo::fleet)). A process adds its counts
/// within about a second, and when it drops its last handle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FleetStats {
    /// Local misses served from the shared tier (each also filled a local tier).
    pub hits: u64,
    /// Local misses the shared tier could not serve either.
    pub misses: u64,
    /// Loaders run (`get_or_load` misses everywhere).
    pub loads: u64,
    /// Values stored in the shared tier (by loads and `set`s).
    pub stores: u64,
    /// Late writes the shared tier refused (fenced off).
    pub fenced: u64,
}

impl FleetStats {
    /// From the hash's fields (unknown ones ignored, so older and newer versions mix).
    pub(crate) fn from_fields(fields: Vec<(String, u64)>) -> Self {
        let mut stats = FleetStats::default();
        for (name, value) in fields {
            let field = match name.as_str() {
                "hits" => &mut stats.hits,
                "misses" => &mut stats.misses,
                "loads" => &mut stats.loads,
                "stores" => &mut stats.stores,
                "fenced" => &mut stats.fenced,
                _ => continue,
            };
            *field = value;
        }
        stats
    }
}

/// This process's counts not yet added to the hash.
type Pending = [AtomicU64; FIELDS.len()];

/// The flushing thread: its fork generation, the sender whose drop stops it, the thread.
type Flusher = (u64, Sender<()>, JoinHandle<()>);

/// The fleet counters of one tier.
pub(crate) struct Fleet {
    /// The hash's name.
    pub(crate) key: String,
    remote: Arc<dyn Remote>,
    pending: Arc<Pending>,
    /// The fork generation whose counts `pending` holds.
    generation: AtomicU64,
    /// The flushing thread of this process (fork generation), started on first count.
    flusher: Mutex<Option<Flusher>>,
}

impl Fleet {
    pub(crate) fn new(key: String, remote: Arc<dyn Remote>) -> Self {
        Fleet {
            key,
            remote,
            pending: Arc::new(Default::default()),
            generation: AtomicU64::new(sys::fork_generation()),
            flusher: Mutex::new(None),
        }
    }

    /// Counts one event (no call: the flusher sends it).
    pub(crate) fn count(&self, what: Count) {
        self.ensure_flusher();
        self.pending[what as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds the pending counts to the hash now.
    pub(crate) fn flush(&self) -> RemoteResult<()> {
        self.adopt();
        flush(&*self.remote, &self.key, &self.pending)
    }

    /// In a forked child, forgets the counts inherited from the parent (the parent adds
    /// them): a child adds only its own.
    fn adopt(&self) {
        let generation = sys::fork_generation();
        if self.generation.swap(generation, Ordering::Relaxed) != generation {
            for counter in self.pending.iter() {
                counter.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Stops the flusher (the caller flushes the rest).
    pub(crate) fn stop(&self) {
        let flusher = self
            .flusher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((generation, stop, thread)) = flusher
            && generation == sys::fork_generation()
        {
            drop(stop);
            let _ = thread.join();
        }
    }

    fn ensure_flusher(&self) {
        self.adopt();
        let generation = sys::fork_generation();
        let mut flusher = self.flusher.lock().unwrap_or_else(PoisonError::into_inner);
        if flusher.as_ref().is_some_and(|(g, ..)| *g == generation) {
            return;
        }
        if let Some(inherited) = flusher.take() {
            // A forked child: the parent's thread is not ours to join.
            std::mem::forget(inherited);
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let (remote, key, pending) = (
            Arc::clone(&self.remote),
            self.key.clone(),
            Arc::clone(&self.pending),
        );
        let started = std::thread::Builder::new()
            .name("concurio-fleet".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(FLUSH_EVERY) {
                    if let Err(err) = flush(&*remote, &key, &pending) {
                        tracing::debug!("cannot add to the fleet counters {key:?}: {err}");
                    }
                }
            });
        match started {
            Ok(thread) => *flusher = Some((generation, stop, thread)),
            // Counts then reach the hash only when the handle is dropped or info is read.
            Err(err) => tracing::debug!("cannot start the fleet counter thread: {err}"),
        }
    }
}

/// Takes the pending counts and adds them to the hash; puts them back if that fails.
fn flush(remote: &dyn Remote, key: &str, pending: &Pending) -> RemoteResult<()> {
    let deltas: Vec<(&'static str, u64)> = FIELDS
        .iter()
        .zip(pending.iter())
        .map(|(name, counter)| (*name, counter.swap(0, Ordering::Relaxed)))
        .filter(|(_, n)| *n > 0)
        .collect();
    if deltas.is_empty() {
        return Ok(());
    }
    remote.add_counts(key, &deltas).inspect_err(|_| {
        for (name, n) in &deltas {
            if let Some(i) = FIELDS.iter().position(|f| f == name) {
                pending[i].fetch_add(*n, Ordering::Relaxed);
            }
        }
    })
}
