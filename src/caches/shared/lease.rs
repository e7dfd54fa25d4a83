//! Claiming a key across machines: take its lease, or wait for whoever holds it.
//!
//! A waiter subscribes to the key's channel first, then looks for the value and tries the
//! lease, then sleeps on the subscription until the holder stores or releases (both publish)
//! or the lease runs out (a dead holder publishes nothing): so it neither misses a wake-up
//! nor polls. The holder's lease is renewed by a thread every third of its duration.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{Acquired, Entry, Keys, Remote, SharedTier, Waiter};
use crate::error::{Error, Result};

/// How a claim ended.
pub(crate) enum Claim {
    /// We hold the lease: load and store.
    Leased(Lease),
    /// A valid value is there (stored by another machine, maybe while we waited).
    Landed(Entry),
    /// The server is unavailable (and not required): load locally.
    Unavailable,
}

/// A held lease; released (compare-and-delete) when dropped unless a store consumed it.
/// It owns its tier (a clone), so an async load can hold it across `.await`.
pub(crate) struct Lease {
    tier: SharedTier,
    keys: Keys,
    token: String,
    fence: u64,
    renewer: Option<(Sender<()>, JoinHandle<()>)>,
}

impl Lease {
    pub(crate) fn fence(&self) -> u64 {
        self.fence
    }
    pub(crate) fn token(&self) -> &str {
        &self.token
    }
    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.renewer.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
        // After a store this is a no-op (the store script deleted it); after a failed or
        // panicking loader it frees the key at once instead of after the lease.
        if let Err(err) = self.tier.call(|r| r.release(&self.keys, &self.token)) {
            tracing::debug!("cannot release the lease {:?}: {err}", self.keys.lease);
        }
    }
}

impl SharedTier {
    /// Takes `key`'s lease, or waits until a value that `valid` accepts lands; gives up
    /// with [`Error::Busy`] at `deadline`.
    pub(crate) fn claim(
        &self,
        key: &str,
        valid: impl Fn(&Entry) -> bool,
        deadline: Option<Instant>,
    ) -> Result<Claim> {
        let keys = self.keys(key);
        let start = Instant::now();
        let mut waiter: Option<Box<dyn Waiter>> = None;
        loop {
            if let Some(entry) = self.read(key, &keys)?.filter(|e| valid(e)) {
                return Ok(Claim::Landed(entry));
            }
            let token = new_token();
            let Some(acquired) = self.call(|r| r.acquire(&keys, &token, self.options.lease))?
            else {
                return Ok(Claim::Unavailable);
            };
            let left = match acquired {
                Acquired::Leased(fence) => return self.leased(key, keys, token, fence, valid),
                Acquired::Held(left) => left,
            };
            let Some(w) = waiter.as_mut() else {
                // Subscribe, then look again: a store between our look and the
                // subscription would otherwise be missed.
                let Some(w) = self.call(|r| r.subscribe(&keys))? else {
                    return Ok(Claim::Unavailable);
                };
                self.counters.waits.fetch_add(1, Ordering::Relaxed);
                tracing::info!("waiting for another machine loading {key:?}");
                waiter = Some(w);
                continue;
            };
            // Wake on a store or release; else when the lease would run out (its holder
            // may have died), with a little slack for clocks and the network.
            let mut timeout = left + Duration::from_millis(20);
            if let Some(deadline) = deadline {
                let now = Instant::now();
                if now >= deadline {
                    return Err(Error::Busy {
                        path: keys.lease.clone().into(),
                        waited: start.elapsed(),
                    });
                }
                timeout = timeout.min(deadline - now);
            }
            match self.call(|_| w.wait(timeout))? {
                None => return Ok(Claim::Unavailable),
                Some(true) => {}
                // A timed-out read makes redis-rs skip the connection's next reply: subscribe
                // anew (after looking again) rather than miss a wake-up.
                Some(false) => waiter = None,
            }
        }
    }

    /// We got the lease: start renewing it, then look once more (a value may have landed
    /// between our read and the lease).
    fn leased(
        &self,
        key: &str,
        keys: Keys,
        token: String,
        fence: u64,
        valid: impl Fn(&Entry) -> bool,
    ) -> Result<Claim> {
        let renewer = spawn_renewer(
            Arc::clone(&self.remote),
            keys.clone(),
            token.clone(),
            self.options.lease,
        );
        let lease = Lease {
            tier: self.clone(),
            keys,
            token,
            fence,
            renewer,
        };
        match self.read(key, &lease.keys)?.filter(|e| valid(e)) {
            Some(entry) => Ok(Claim::Landed(entry)), // drops (releases) the lease
            None => Ok(Claim::Leased(lease)),
        }
    }
}

/// Renews the lease every third of its duration until told to stop. A failed renewal is
/// only logged: if the lease is lost, the fenced store keeps the late value out.
fn spawn_renewer(
    remote: Arc<dyn Remote>,
    keys: Keys,
    token: String,
    lease: Duration,
) -> Option<(Sender<()>, JoinHandle<()>)> {
    let (stop, stopped) = mpsc::channel::<()>();
    let every = (lease / 3).max(Duration::from_millis(10));
    let thread = std::thread::Builder::new()
        .name("concurio-lease".into())
        .spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                match remote.renew(&keys, &token, lease) {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(
                            "lost the lease {:?} (paused or partitioned past it); another \
                             machine may load the key, and our late value will be refused",
                            keys.lease
                        );
                        return;
                    }
                    Err(err) => tracing::debug!("cannot renew the lease {:?}: {err}", keys.lease),
                }
            }
        });
    match thread {
        Ok(thread) => Some((stop, thread)),
        Err(err) => {
            tracing::warn!("cannot start the lease renewer: {err}; the lease may run out");
            None
        }
    }
}

/// A random-enough lease token: unique per process, call and time (it identifies the
/// holder; it guards against mistakes, not attackers, who could just DEL the key).
fn new_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = Sha256::new();
    hasher.update(std::process::id().to_le_bytes());
    hasher.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hasher.update(super::super::now_ns().to_le_bytes());
    hasher.update(format!("{:?}", std::thread::current().id()).as_bytes());
    let local = 0u8;
    hasher.update((&raw const local as usize).to_le_bytes());
    hasher.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
