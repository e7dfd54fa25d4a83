//! Iterating over a cache of any size: entries in batches, each batch from its own short
//! read transaction (a transaction held across a whole walk of millions of entries would
//! keep LMDB from reusing the pages freed meanwhile, and the file would grow).

use super::{DiskCache, EntryInfo, now_ns};
use crate::error::Result;

/// Entries read per read transaction.
const BATCH: usize = 1024;

/// The unexpired entries of a cache, key and metadata, in index order (byte order for keys
/// of up to 400 bytes, then longer keys); see [`DiskCache::iter`].
///
/// Each batch of entries is read from a fresh snapshot, so a walk concurrent with writes
/// sees every entry that exists throughout it, once; entries added or removed meanwhile
/// may or may not appear (as python-diskcache's `iterkeys`).
#[derive(Debug)]
#[must_use = "iterators are lazy and do nothing unless consumed"]
pub struct Iter {
    cache: DiskCache,
    /// The last index key read: the next batch starts after it.
    after: Option<Vec<u8>>,
    batch: std::vec::IntoIter<EntryInfo>,
    done: bool,
}

impl Iter {
    pub(super) fn new(cache: DiskCache) -> Self {
        Iter {
            cache,
            after: None,
            batch: Vec::new().into_iter(),
            done: false,
        }
    }

    /// Reads the next batch; false at the end.
    fn refill(&mut self) -> Result<bool> {
        if self.done {
            return Ok(false);
        }
        let (entries, last) = self
            .cache
            .store
            .entries_after(self.after.as_deref(), BATCH)?;
        let now = now_ns();
        self.done = last.is_none();
        self.after = last;
        self.batch = entries
            .into_iter()
            .map(|e| super::entry_info(e, now))
            .filter(|e| !e.expired)
            .collect::<Vec<_>>()
            .into_iter();
        Ok(true)
    }
}

impl Iterator for Iter {
    type Item = Result<EntryInfo>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.batch.next() {
                return Some(Ok(entry));
            }
            match self.refill() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(err) => {
                    self.done = true; // a storage error ends the walk
                    return Some(Err(err));
                }
            }
        }
    }
}
