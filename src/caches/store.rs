//! The data path: reads, writes and maintenance of one cache, through a plain-data
//! interface (`lookup`, `put`, `restamp`, `delete`, `count`) that knows nothing of
//! `get_or_load`'s locking, which sits above it (mod.rs).

use std::time::Duration;

use heed::{MdbError, RoTxn, RwTxn, WithoutTls};

use super::blobs::{Blobs, sweep_dir};
use super::codec::Decode;
use super::index::{Garbage, Index, Totals};
use super::key_locks::KEY_LOCK_FILE;
use super::keys::{IndexKey, user_key};
use super::lmdb::ALIAS_PREFIX;
use super::open::{Durability, Local, Store};
use super::record::{Body, Format, Meta, Record};
use super::recovery::TEMP_PREFIX;
use crate::error::{Error, Result};

/// Values whose encoding is larger than this go to their own file (as python-diskcache does):
/// the index stays small and dense, and big reads are plain file reads.
pub(crate) const INLINE_MAX: usize = 32 * 1024;

/// The record stores a long key's length in 32 bits: refuse rather than wrap.
fn check_key_len(key: &str) -> Result<()> {
    if u32::try_from(key.len()).is_err() {
        return Err(Error::InvalidInput(format!(
            "a key of {} bytes is longer than the 4 GiB - 1 a cache key may have",
            key.len()
        )));
    }
    Ok(())
}

/// Where a value lies (see [`Store::locate`]).
pub(crate) enum Located {
    /// A small value, copied out of the index.
    Inline(Vec<u8>),
    /// A value file, with its CRC-32.
    File { name: String, crc: u32 },
}

/// What a lookup found.
pub(crate) enum Lookup<R> {
    Missing,
    /// Present, but refused by the caller's `accept` (expired or stale).
    Rejected,
    Found(Meta, R),
}

/// Whether a `put` replaces what is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PutMode {
    /// Always store.
    Replace,
    /// Store only if there is no entry, or it has expired at this time (ns).
    IfAbsentOrExpired(u64),
    /// Store unless a live entry (at this time, ns) was loaded at or after this one: a
    /// background fill from the shared tier never replaces a newer local value.
    IfNewer(u64),
}

/// A change of an entry's stamps that keeps its value (see [`Store::restamp`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Restamp {
    /// New expiry (ns; 0 = never), unless the entry has expired at `now`.
    pub(crate) expire_ns: Option<u64>,
    /// New place in the eviction order (ns).
    pub(crate) order_ns: Option<u64>,
    /// The time that decides "expired" for `expire_ns`.
    pub(crate) now: u64,
}

/// What [`Store::check`] found and repaired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckReport {
    /// Entries verified and kept.
    pub entries: u64,
    /// Damaged entries removed (bad record, missing or damaged value file).
    pub removed_entries: u64,
    /// Debris files removed (orphan value files, temp files, foreign lock files).
    pub removed_files: u64,
}

/// An entry without its value, for listings.
#[derive(Debug, Clone)]
pub(crate) struct EntryInfo {
    pub(crate) key: String,
    pub(crate) meta: Meta,
    pub(crate) in_file: bool,
}

impl Store {
    fn blobs(&self) -> Blobs {
        Blobs::new(self.paths().blob_dir.clone())
    }

    /// Counts a hit or a miss in the counters every process shares (no index write).
    pub(crate) fn count(&self, hit: bool) {
        if let Ok(local) = self.local() {
            local.counters.count(hit);
        }
    }

    /// Reads `key` without any lock: one LMDB read transaction, a checksum, and `decode`
    /// on the payload (in place) if `accept` likes the metadata.
    pub(crate) fn lookup<R>(
        &self,
        key: &str,
        accept: impl Fn(&Meta) -> bool,
        decode: impl FnMut(Format, &[u8]) -> Result<R>,
    ) -> Result<Lookup<R>> {
        self.lookup_with(key, accept, decode)
    }

    /// [`lookup`](Self::lookup) with any [`Decode`]r (the hit path's is not a closure).
    pub(crate) fn lookup_with<R>(
        &self,
        key: &str,
        accept: impl Fn(&Meta) -> bool,
        mut decode: impl Decode<R>,
    ) -> Result<Lookup<R>> {
        let local = self.local()?;
        let ikey = IndexKey::new(key);
        // A value file can vanish between reading its record and opening it, when another
        // writer replaces or evicts the entry; then the record has changed too: look again.
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            let (meta, format, crc, name) = {
                let txn = self.read_txn(local)?;
                let Some(record) = self.record(local, &txn, key, &ikey)? else {
                    return Ok(Lookup::Missing);
                };
                if !accept(&record.meta) {
                    return Ok(Lookup::Rejected);
                }
                match record.body {
                    Body::Inline(payload) => {
                        let value = decode.decode(record.format, payload)?;
                        return Ok(Lookup::Found(record.meta, value));
                    }
                    Body::Blob { crc, name } => (record.meta, record.format, crc, name.to_owned()),
                }
            };
            match self.blobs().read(&name, meta.payload_len, crc, key)? {
                Some(bytes) => return Ok(Lookup::Found(meta, decode.decode(format, &bytes)?)),
                None if attempt < ATTEMPTS => {}
                None => {
                    return Err(Error::Corrupt {
                        path: self.blobs().path(&name),
                        detail: format!("value file of key {key:?} is missing"),
                    });
                }
            }
        }
        Ok(Lookup::Missing)
    }

    /// Stores `payload` under `key` with `meta`'s stamps (`order_ns` = `load_ns`),
    /// atomically; then does the bounded housekeeping (lazy purge, eviction) in the same
    /// transaction. Returns whether it stored (`PutMode::IfAbsentOrExpired` may decline).
    pub(crate) fn put(&self, key: &str, meta: Meta, payload: &[u8], mode: PutMode) -> Result<bool> {
        self.put_as(key, meta, Format::MessagePack, payload, mode)
    }

    /// [`put`](Self::put) of a payload in `format`.
    pub(crate) fn put_as(
        &self,
        key: &str,
        meta: Meta,
        format: Format,
        payload: &[u8],
        mode: PutMode,
    ) -> Result<bool> {
        check_key_len(key)?;
        let blob = if payload.len() > INLINE_MAX {
            Some(
                self.blobs()
                    .write(payload, self.durability == Durability::Synced)?,
            )
        } else {
            None
        };
        let body = match &blob {
            Some((name, crc)) => Body::Blob { crc: *crc, name },
            None => Body::Inline(payload),
        };
        let blob_name = blob.as_ref().map(|(name, _)| name.clone());
        self.commit(key, meta, format, body, mode, blob_name)
    }

    /// Stores the bytes `source` yields under `key` as a raw value in its own file,
    /// streaming (a fixed buffer, whatever the size); returns how many bytes. The entry
    /// replaces any previous one atomically, once the file is complete.
    pub(crate) fn put_stream(
        &self,
        key: &str,
        load_ns: u64,
        expire_ns: u64,
        source: &mut dyn std::io::Read,
    ) -> Result<u64> {
        check_key_len(key)?;
        let synced = self.durability == Durability::Synced;
        let (name, crc, len) = self.blobs().write_from(source, synced)?;
        let meta = Meta {
            load_ns,
            expire_ns,
            order_ns: load_ns,
            payload_len: len,
        };
        let body = Body::Blob { crc, name: &name };
        self.commit(
            key,
            meta,
            Format::Raw,
            body,
            PutMode::Replace,
            Some(name.clone()),
        )?;
        Ok(len)
    }

    /// Commits the record of `key` (its value file, if any, already written): one write
    /// transaction that honours `mode`, then the bounded housekeeping. A value file whose
    /// record did not commit is removed.
    fn commit(
        &self,
        key: &str,
        meta: Meta,
        format: Format,
        body: Body<'_>,
        mode: PutMode,
        blob: Option<String>,
    ) -> Result<bool> {
        let ikey = IndexKey::new(key);
        let record = Record {
            meta,
            stored_key: ikey.is_hashed().then_some(key.as_bytes()),
            format,
            body,
        }
        .encode(ikey.as_bytes());
        let ikey = ikey.as_bytes();
        let result = self.write(|index, txn, totals, garbage| {
            if let PutMode::IfAbsentOrExpired(now) | PutMode::IfNewer(now) = mode {
                let current = index
                    .get(txn, ikey)?
                    .and_then(|v| Record::decode(ikey, v).ok());
                if current.is_some_and(|r| {
                    !r.meta.expired(now)
                        && (mode == PutMode::IfAbsentOrExpired(now)
                            || r.meta.load_ns >= meta.load_ns)
                }) {
                    return Ok(false);
                }
            }
            index.insert(txn, totals, garbage, ikey, &record, &meta)?;
            index.maintain(txn, totals, garbage, meta.order_ns, ikey)?;
            Ok(true)
        });
        if !matches!(result, Ok(true)) {
            self.blobs().remove(blob);
        }
        result
    }

    /// The verified record of `key` in `txn`; `None` if there is none (or the index key is
    /// shared by a different long key with the same hash). Inlined: returned from a call,
    /// the record was written to memory and read back wider (a store-forwarding stall).
    #[inline(always)]
    fn record<'t>(
        &self,
        local: &Local,
        txn: &'t RoTxn<'_, WithoutTls>,
        key: &str,
        ikey: &IndexKey<'_>,
    ) -> Result<Option<Record<'t>>> {
        let Some(bytes) = local
            .index
            .get(txn, ikey.as_bytes())
            .map_err(|e| self.storage(e))?
        else {
            return Ok(None);
        };
        let record = Record::decode_inline(ikey.as_bytes(), bytes)
            .map_err(|detail| self.corrupt(key, detail))?;
        Ok(record
            .stored_key
            .is_none_or(|stored| stored == key.as_bytes())
            .then_some(record))
    }

    /// Where the value of `key` lies, if `accept` likes its metadata, without reading a
    /// value file: small values are copied out (at most `INLINE_MAX` bytes).
    pub(crate) fn locate(
        &self,
        key: &str,
        accept: impl Fn(&Meta) -> bool,
    ) -> Result<Option<(Meta, Format, Located)>> {
        let local = self.local()?;
        let ikey = IndexKey::new(key);
        let txn = self.read_txn(local)?;
        let Some(record) = self.record(local, &txn, key, &ikey)? else {
            return Ok(None);
        };
        if !accept(&record.meta) {
            return Ok(None);
        }
        let located = match record.body {
            Body::Inline(payload) => Located::Inline(payload.to_vec()),
            Body::Blob { crc, name } => Located::File {
                name: name.to_owned(),
                crc,
            },
        };
        Ok(Some((record.meta, record.format, located)))
    }

    /// Opens a located value file as a checked stream (`None`: it was replaced meanwhile).
    pub(crate) fn open_value_file(
        &self,
        key: &str,
        name: &str,
        len: u64,
        crc: u32,
    ) -> Result<Option<super::blobs::CheckedReader>> {
        self.blobs().open_checked(name, len, crc, key)
    }

    /// The path of a located value file (for hard links: value files are never modified).
    pub(crate) fn value_file_path(&self, name: &str) -> std::path::PathBuf {
        self.blobs().path(name)
    }

    /// Removes `key`; true if it was there.
    pub(crate) fn delete(&self, key: &str) -> Result<bool> {
        let ikey = IndexKey::new(key);
        self.write(|index, txn, totals, garbage| {
            index.remove(txn, totals, garbage, ikey.as_bytes())
        })
    }

    /// Changes `key`'s expiry and/or eviction stamp, keeping its value; true if it was there.
    pub(crate) fn restamp(&self, key: &str, change: Restamp) -> Result<bool> {
        let ikey = IndexKey::new(key);
        self.write(|index, txn, totals, _| {
            index.restamp(txn, totals, ikey.as_bytes(), |meta| {
                if let Some(expire_ns) = change.expire_ns
                    && !meta.expired(change.now)
                {
                    meta.expire_ns = expire_ns;
                }
                if let Some(order_ns) = change.order_ns {
                    meta.order_ns = order_ns;
                }
            })
        })
    }

    /// Removes every entry for which `doomed` says yes (and every unreadable record).
    pub(crate) fn remove_where(&self, doomed: impl Fn(&Meta) -> bool) -> Result<usize> {
        self.write(|index, txn, totals, garbage| {
            let mut victims = Vec::new();
            for item in index.iter(txn)? {
                let (ikey, value) = item?;
                if Record::decode(ikey, value).is_ok_and(|r| !doomed(&r.meta)) {
                    continue;
                }
                victims.push(ikey.to_vec());
            }
            for ikey in &victims {
                index.remove(txn, totals, garbage, ikey)?;
            }
            Ok(victims.len())
        })
    }

    /// Removes every entry; returns how many there were.
    pub(crate) fn clear(&self) -> Result<u64> {
        self.write(|index, txn, totals, garbage| index.clear(txn, totals, garbage))
    }

    /// Sets the size limit shared by every process (0 = none); evicts at the next write.
    pub(crate) fn set_size_limit(&self, limit: u64) -> Result<()> {
        self.write(|index, txn, totals, _| index.set_size_limit(txn, totals, limit))
    }

    /// The shared totals, with the shared hit and miss counters added.
    pub(crate) fn totals(&self) -> Result<Totals> {
        let local = self.local()?;
        let txn = self.read_txn(local)?;
        let mut totals = local.index.totals(&txn).map_err(|e| self.storage(e))?;
        let (hits, misses) = local.counters.get();
        totals.hits += hits;
        totals.misses += misses;
        Ok(totals)
    }

    /// Entries that have not expired at `now`, from the totals and the expiry order.
    pub(crate) fn live_entries(&self, now: u64) -> Result<u64> {
        let local = self.local()?;
        let txn = self.read_txn(local)?;
        let totals = local.index.totals(&txn).map_err(|e| self.storage(e))?;
        let expired = local
            .index
            .count_expired(&txn, now)
            .map_err(|e| self.storage(e))?;
        Ok(totals.entries.saturating_sub(expired))
    }

    /// A snapshot of every entry's key and metadata (corrupt records are skipped).
    pub(crate) fn entries(&self) -> Result<Vec<EntryInfo>> {
        Ok(self.entries_after(None, usize::MAX)?.0)
    }

    /// Up to `limit` entries after index key `after` (from the start for `None`), in index
    /// order, from one read transaction (corrupt records are skipped). Also returns the last
    /// index key read, to continue from; `None` once the end was reached.
    pub(crate) fn entries_after(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<EntryInfo>, Option<Vec<u8>>)> {
        let local = self.local()?;
        let txn = self.read_txn(local)?;
        let mut out = Vec::new();
        let mut last = None;
        let items = local
            .index
            .iter_after(&txn, after)
            .map_err(|e| self.storage(e))?;
        for (read, item) in items.enumerate() {
            if read == limit {
                return Ok((out, last.map(<[u8]>::to_vec)));
            }
            let (k, v) = item.map_err(|e| self.storage(e))?;
            last = Some(k);
            let Ok(record) = Record::decode(k, v) else {
                tracing::warn!(
                    "skipping a corrupt record in {}",
                    self.paths().dir.display()
                );
                continue;
            };
            let Some(key) = user_key(k, &record) else {
                continue;
            };
            out.push(EntryInfo {
                key,
                meta: record.meta,
                in_file: matches!(record.body, Body::Blob { .. }),
            });
        }
        Ok((out, None))
    }

    /// Verifies every entry and value file, removes what is damaged, rebuilds the order,
    /// expiry and totals, and deletes debris older than a minute: value files no entry
    /// names, temp files of interrupted atomic writes and of index aliases, and foreign
    /// files among the key locks (the stripes of earlier versions among them).
    pub(crate) fn check(&self) -> Result<CheckReport> {
        let blobs = self.blobs();
        let paths = self.paths();
        let (entries, removed, referenced) = self.write(|index, txn, totals, garbage| {
            index.rebuild(txn, totals, garbage, |record| match record.body {
                Body::Inline(_) => true,
                Body::Blob { crc, name } => blobs.verify(name, record.meta.payload_len, crc),
            })
        })?;
        let removed_files = blobs.sweep(&referenced)?
            + sweep_dir(&paths.dir, |name| {
                name.starts_with(TEMP_PREFIX) || name.starts_with(crate::dirs::WRITE_PROBE_PREFIX)
            })?
            + sweep_dir(&paths.index_dir, |name| name.starts_with(ALIAS_PREFIX))?
            + sweep_dir(&paths.lock_dir, |name| name != KEY_LOCK_FILE)?;
        Ok(CheckReport {
            entries,
            removed_entries: removed,
            removed_files,
        })
    }

    /// A read transaction. With `MDB_NOTLS` it holds a reader slot only while it lives; if
    /// every slot is taken, clear the slots of dead processes and wait for one to free up
    /// (reads are microseconds long): a full table delays a read, it never fails it.
    fn read_txn<'l>(&self, local: &'l Local) -> Result<RoTxn<'l, WithoutTls>> {
        let mut pause = Duration::from_micros(50);
        loop {
            match local.env.read_txn() {
                Err(heed::Error::Mdb(MdbError::ReadersFull)) => {
                    if local.env.clear_stale_readers().unwrap_or(0) == 0 {
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(10));
                    }
                }
                other => return other.map_err(|e| self.storage(e)),
            }
        }
    }

    /// One write transaction: marks the cache dirty if needed (before any page can reach
    /// the disk), lets `f` change the index and totals, commits, then unlinks the value
    /// files `f` made garbage and tells the flusher.
    fn write<R>(
        &self,
        f: impl FnOnce(&Index, &mut RwTxn, &mut Totals, &mut Garbage) -> heed::Result<R>,
    ) -> Result<R> {
        self.ensure_present()?;
        let local = self.local()?;
        let fast = self.durability == Durability::Fast;
        let mut txn = local.env.write_txn().map_err(|e| self.storage(e))?;
        if fast {
            local.state.ensure_dirty(local.counters.flush_epoch())?;
        }
        let run = |txn: &mut RwTxn| -> heed::Result<(R, Garbage)> {
            let mut totals = local.index.totals(txn)?;
            let mut garbage = Garbage::default();
            let out = f(&local.index, txn, &mut totals, &mut garbage)?;
            local.index.put_totals(txn, &totals)?;
            Ok((out, garbage))
        };
        let (out, garbage) = run(&mut txn).map_err(|e| self.storage(e))?;
        txn.commit().map_err(|e| self.storage(e))?;
        if fast {
            local.flusher.wrote(|| self.weak());
        }
        self.blobs().remove(garbage.blobs);
        Ok(out)
    }

    fn corrupt(&self, key: &str, detail: String) -> Error {
        Error::Corrupt {
            path: self.paths().index_dir.clone(),
            detail: format!("record of key {key:?}: {detail}"),
        }
    }
}
