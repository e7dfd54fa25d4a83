//! Filling the local tier with entries read from the shared tier, off the caller's path.
//!
//! A shared hit returns as soon as its value is decoded; a background thread (one per cache
//! handle and process, started on first use) writes the entry into the local store. A
//! write transaction costs about as much as the network round trip, so this keeps a shared
//! hit close to a raw `GET`. The fill uses [`PutMode::IfNewer`]: it never replaces a local
//! value loaded (or set) at or after the entry's own load time. If the queue is full, the
//! thread cannot start, or this is a forked child, the caller writes the entry itself.
//! Dropping the last handle waits for the queued fills (a short-lived program such as
//! `concurio run` keeps what it read); a process that exits without dropping its handles
//! loses only the fills still queued, which the next local miss repeats.

use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use super::open::Store;
use super::record::Meta;
use super::shared::{Entry, SharedOptions, SharedStats, SharedTier};
use super::store::PutMode;
use crate::error::Result;
use crate::sys;

/// What the writer does: a fill (key and entry), or say when all before it are done.
enum Job {
    Fill(String, Entry),
    Flush(mpsc::Sender<()>),
}

/// A running writer: its fork generation, its queue, and its thread.
type Writer = (u64, SyncSender<Job>, JoinHandle<()>);

/// Fills waiting for the background writer before callers write their own.
const QUEUE: usize = 4096;

/// The shared side of a cache handle: the tier, and the filler of the local tier.
pub(crate) struct SharedSide {
    pub(crate) tier: SharedTier,
    pub(crate) filler: Filler,
}

impl SharedSide {
    pub(crate) fn new(options: SharedOptions, name: &str, store: &Arc<Store>) -> Result<Self> {
        Ok(SharedSide {
            tier: SharedTier::new(options, name)?,
            filler: Filler {
                store: Arc::clone(store),
                queue: Mutex::new(None),
            },
        })
    }

    pub(crate) fn stats(&self) -> SharedStats {
        self.tier.stats()
    }
}

/// The background writer of shared hits into the local store.
pub(crate) struct Filler {
    /// Strong: the store must outlive the writer's last fill (the handle's own `Arc` may be
    /// dropped first). No cycle: the store does not own the filler.
    store: Arc<Store>,
    /// The queue of this process (fork generation); `None` until first used.
    queue: Mutex<Option<Writer>>,
}

impl Drop for Filler {
    /// Closes the queue and waits for the writer to finish it (not in a forked child:
    /// the thread stayed in the parent).
    fn drop(&mut self) {
        let writer = self
            .queue
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((generation, tx, thread)) = writer
            && generation == sys::fork_generation()
        {
            drop(tx);
            let _ = thread.join();
        }
    }
}

impl Filler {
    /// Stores `entry` under `key` in the local tier, in the background if it can.
    pub(crate) fn fill(&self, store: &Store, key: &str, entry: Entry) -> Result<()> {
        match self.enqueue(key.to_owned(), entry) {
            None => Ok(()),
            Some((key, entry)) => write(store, &key, &entry),
        }
    }

    /// Waits until every fill queued so far is written, so that a delete after this is not
    /// undone by a fill queued before it.
    pub(crate) fn flush(&self) {
        let tx = {
            let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            match queue.as_ref() {
                Some((generation, tx, _)) if *generation == sys::fork_generation() => tx.clone(),
                _ => return, // no writer: every fill was written by its caller
            }
        };
        let (done, finished) = mpsc::channel();
        if tx.send(Job::Flush(done)).is_ok() {
            let _ = finished.recv();
        }
    }

    /// Queues the fill; gives it back if the writer cannot take it.
    fn enqueue(&self, key: String, entry: Entry) -> Option<(String, Entry)> {
        let generation = sys::fork_generation();
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.as_ref().is_none_or(|(g, ..)| *g != generation) {
            // A forked child has no writer thread (threads do not survive fork): leave the
            // parent's alone (joining or detaching it here would act on a thread that is
            // not ours) and start one of its own.
            let inherited = std::mem::replace(
                &mut *queue,
                self.start().map(|(tx, thread)| (generation, tx, thread)),
            );
            std::mem::forget(inherited);
        }
        let Some((_, tx, _)) = queue.as_ref() else {
            return Some((key, entry));
        };
        match tx.try_send(Job::Fill(key, entry)) {
            Ok(()) => None,
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => match job {
                Job::Fill(key, entry) => Some((key, entry)),
                Job::Flush(_) => None,
            },
        }
    }

    fn start(&self) -> Option<(SyncSender<Job>, JoinHandle<()>)> {
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
        let store = Arc::clone(&self.store);
        let started = std::thread::Builder::new()
            .name("concurio-fill".into())
            .spawn(move || {
                // Ends when the last handle drops the sender.
                while let Ok(job) = rx.recv() {
                    match job {
                        Job::Fill(key, entry) => {
                            if let Err(err) = write(&store, &key, &entry) {
                                tracing::debug!("cannot fill the local tier with {key:?}: {err}");
                            }
                        }
                        Job::Flush(done) => drop(done.send(())),
                    }
                }
            });
        match started {
            Ok(thread) => Some((tx, thread)),
            Err(err) => {
                tracing::debug!("cannot start the local-tier filler: {err}");
                None
            }
        }
    }
}

/// The entry with its own stamps, unless the local tier has a newer one.
fn write(store: &Store, key: &str, entry: &Entry) -> Result<()> {
    let now = super::now_ns();
    let meta = Meta {
        load_ns: entry.load_ns,
        expire_ns: entry.expire_ns,
        order_ns: now,
        payload_len: entry.payload.len() as u64,
    };
    store
        .put(key, meta, &entry.payload, PutMode::IfNewer(now))
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caches::open::{Durability, open};
    use crate::caches::store::Lookup;

    fn entry(load_ns: u64, payload: &[u8]) -> Entry {
        Entry {
            load_ns,
            expire_ns: 0,
            payload: payload.to_vec(),
        }
    }

    fn stored(store: &Store) -> Vec<u8> {
        match store.lookup("k", |_| true, |_, b| Ok(b.to_vec())).unwrap() {
            Lookup::Found(_, payload) => payload,
            _ => panic!("missing"),
        }
    }

    #[test]
    fn a_fill_never_replaces_a_value_loaded_at_or_after_it() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path(), Durability::Fast).unwrap();
        write(&store, "k", &entry(200, b"set later")).unwrap();
        write(&store, "k", &entry(100, b"filled late")).unwrap();
        assert_eq!(stored(&store), b"set later");
        write(&store, "k", &entry(300, b"newer")).unwrap();
        assert_eq!(stored(&store), b"newer");
    }
}
