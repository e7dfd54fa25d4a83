//! Hit and miss counters shared by every process, in a one-page memory-mapped file: a hit
//! is one relaxed atomic add on shared memory, so reading (and closing) a cache writes
//! nothing to the index and costs no fsync.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{IoContext, Result};

pub(crate) const COUNTERS_FILE: &str = ".counters";
const LEN: u64 = 4096;

#[derive(Debug)]
pub(crate) struct Counters {
    map: memmap2::MmapRaw,
}

impl Counters {
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(COUNTERS_FILE);
        let file = crate::lock::open_shared_file(&path)?;
        // Extending is idempotent, so concurrent openers cannot conflict.
        if file.metadata().at("stat", &path)?.len() < LEN {
            file.set_len(LEN).at("extend", &path)?;
        }
        let map = memmap2::MmapOptions::new()
            .len(LEN as usize)
            .map_raw(&file)
            .at("map", &path)?;
        Ok(Counters { map })
    }

    fn counter(&self, index: usize) -> &AtomicU64 {
        // SAFETY: the mapping is page-aligned, LEN bytes long and lives as long as `self`;
        // indexes 0..=2 are 8-byte aligned u64 slots that are only ever accessed atomically
        // (by every process). The file sits in our 0700 directory and is never truncated.
        unsafe { AtomicU64::from_ptr(self.map.as_mut_ptr().cast::<u64>().add(index)) }
    }

    pub(crate) fn count(&self, hit: bool) {
        self.counter(usize::from(!hit))
            .fetch_add(1, Ordering::Relaxed);
    }

    /// How many times a flush has marked the cache clean (see durability.rs): a writer
    /// that made the cache dirty at epoch N knows it is still dirty while this says N.
    pub(crate) fn flush_epoch(&self) -> u64 {
        self.counter(2).load(Ordering::Acquire)
    }

    /// Called right after a flush wrote `clean`, with LMDB's writer lock held.
    pub(crate) fn bump_flush_epoch(&self) {
        self.counter(2).fetch_add(1, Ordering::Release);
    }

    /// (hits, misses) since the counters file was created.
    pub(crate) fn get(&self) -> (u64, u64) {
        (
            self.counter(0).load(Ordering::Relaxed),
            self.counter(1).load(Ordering::Relaxed),
        )
    }
}
