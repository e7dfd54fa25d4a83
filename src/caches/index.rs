//! The index inside LMDB: the entries and three named databases that every write
//! transaction updates together, so entries, their eviction order, their expiry order and
//! the totals can never disagree, whichever process wrote last.
//!
//! ```text
//! (main)    0x00 ++ index key           -> record (see record.rs)
//! (main)    "totals"                    -> Totals
//! (main)    "order", "expiry"           -> LMDB's records of the named databases
//! order     order_ns (BE) ++ index key  -> ""     oldest first: eviction order (kept only
//!                                                  while a size limit is set)
//! expiry    expire_ns (BE) ++ index key -> ""     soonest first: lazy purge
//! entries   (cache format 1 only: the entries, by index key; emptied by the migration)
//! meta      (cache format 1 only: held the totals in earlier builds; emptied likewise)
//! ```
//!
//! The entries live in LMDB's main (unnamed) database: its root is in the meta page a read
//! transaction starts from, whereas every read transaction marks the named databases stale
//! and the first access to one searches the main database for its record first (about an
//! eighth of a hit's instructions). Their keys start with the byte 0x00, which no other key
//! in the main database starts with (those are lowercase ASCII), so a user key such as
//! "totals" cannot meet the totals; the prefix is added and stripped here, and nothing above
//! this module sees it. `order` and `expiry` name entries by the index key without it.
//!
//! The totals live in the main database too: every commit rewrites its root page anyway (the
//! named databases' roots moved), so updating the totals costs no page of its own.
//!
//! This build opens no named database it does not use: each one open in the environment
//! costs every read transaction (LMDB sets up each database's state when the transaction
//! begins, and again when it ends), and a write touched `meta` at every commit.
//!
//! Cache format 1 kept the entries in a named database `entries`; the first opener of such a
//! cache moves them here in one write transaction ([`Index::migrate_format_1`], see
//! recovery.rs for the marker).

use std::mem::MaybeUninit;
use std::ops::Bound;

use heed::types::Bytes;
use heed::{Database, MdbError, RoTxn, RwTxn};

use super::lmdb::LmdbEnv;
use super::record::{Body, Meta, Record};

/// Expired entries removed in passing by each write, at most (bounded work per write).
const PURGE_PER_WRITE: usize = 16;
/// Entries evicted by one write, at most: a write never pauses for long; if the cache is
/// still over its limit, the next writes continue.
const EVICT_PER_WRITE: usize = 256;
const TOTALS_KEY: &[u8] = b"totals";
/// First byte of every entry's key in the main database (see the module docs).
const ENTRY_PREFIX: u8 = 0x00;
/// The entries are the main database's keys from `[ENTRY_PREFIX]` up to this, excluded.
const ENTRIES_END: &[u8] = &[ENTRY_PREFIX + 1];
/// LMDB's longest key (`MDB_MAXKEYSIZE`).
const MAX_LMDB_KEY: usize = 511;
/// Where cache format 1 kept the entries.
const FORMAT_1_ENTRIES: &str = "entries";
/// Where builds before the totals moved to the main database kept them (format 1).
const FORMAT_1_META: &str = "meta";
/// Records moved per step of the migration (its memory bound; one transaction for all).
const MIGRATE_BATCH: usize = 1024;

/// Calls `f` with the key of index key `ikey`'s entry in the main database: the prefix, then
/// the index key, in a buffer on this function's stack. A hit allocates nothing for it, and
/// the buffer is neither zeroed nor moved (a 511-byte value returned by value is copied,
/// each copy as long as the key's search in a small cache). LMDB's own error for a key it
/// cannot hold: an index key of 511 bytes or more (keys.rs makes none longer than 400).
#[inline(always)]
fn with_entry_key<R>(ikey: &[u8], f: impl FnOnce(&[u8]) -> heed::Result<R>) -> heed::Result<R> {
    if ikey.len() >= MAX_LMDB_KEY {
        return Err(heed::Error::Mdb(MdbError::BadValSize));
    }
    let mut buf = MaybeUninit::<[u8; MAX_LMDB_KEY]>::uninit();
    let base = buf.as_mut_ptr().cast::<u8>();
    // SAFETY: `1 + ikey.len() <= MAX_LMDB_KEY` bytes are written from the start of `buf`
    // (which `ikey` cannot overlap: `buf` is new), and the slice covers exactly those.
    let key = unsafe {
        base.write(ENTRY_PREFIX);
        std::ptr::copy_nonoverlapping(ikey.as_ptr(), base.add(1), ikey.len());
        std::slice::from_raw_parts(base, 1 + ikey.len())
    };
    f(key)
}

/// The entries of the main database in index order, as (index key, record): the prefix is
/// stripped.
pub(crate) struct Entries<'t>(heed::RoRange<'t, Bytes, Bytes>);

impl<'t> Iterator for Entries<'t> {
    type Item = heed::Result<(&'t [u8], &'t [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.0.next()?;
        // Every key of the range starts with the prefix (it is the range's first byte).
        Some(item.map(|(key, record)| (key.get(1..).unwrap_or_default(), record)))
    }
}

/// Counters kept in the index, shared by all processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) entries: u64,
    /// Accounted bytes on disk: records, index overhead, and value files (4 KiB blocks).
    pub(crate) bytes: u64,
    /// 0 = no limit.
    pub(crate) size_limit: u64,
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) evictions: u64,
}

impl Totals {
    /// Whether the eviction order is kept: only a size-limited cache evicts. Without a
    /// limit, writes leave `order` alone (two to three dirty pages fewer per write); setting
    /// a limit rebuilds it from the records' stamps, which are always kept.
    pub(crate) fn ordered(&self) -> bool {
        self.size_limit != 0
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let fields = [
            self.entries,
            self.bytes,
            self.size_limit,
            self.hits,
            self.misses,
            self.evictions,
        ];
        let mut out: Vec<u8> = fields.iter().flat_map(|f| f.to_le_bytes()).collect();
        out.extend_from_slice(&crc32fast::hash(&out).to_le_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let (body, crc) = bytes.split_last_chunk::<4>()?;
        if body.len() != 48 || crc32fast::hash(body) != u32::from_le_bytes(*crc) {
            return None;
        }
        let f = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&body[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        Some(Totals {
            entries: f(0),
            bytes: f(1),
            size_limit: f(2),
            hits: f(3),
            misses: f(4),
            evictions: f(5),
        })
    }
}

/// What a write transaction did besides its own change: value files to unlink after commit.
#[derive(Debug, Default)]
pub(crate) struct Garbage {
    pub(crate) blobs: Vec<String>,
}

/// The databases.
#[derive(Clone, Copy)]
pub(crate) struct Index {
    /// LMDB's unnamed database: the entries, the named databases' records, and the totals.
    main: Database<Bytes, Bytes>,
    order: Database<Bytes, Bytes>,
    expiry: Database<Bytes, Bytes>,
}

impl Index {
    /// Opens the databases, creating them on first use (then synced at once: a new index
    /// is not covered by the dirty/clean state, see durability.rs).
    pub(crate) fn open(env: &LmdbEnv) -> heed::Result<Self> {
        let rtxn = env.read_txn()?;
        let open = |name| env.open_database::<Bytes, Bytes>(&rtxn, name);
        if let (Some(main), Some(order), Some(expiry)) =
            (open(None)?, open(Some("order"))?, open(Some("expiry"))?)
        {
            // Handles opened in a transaction die with it unless it commits (LMDB's rule).
            rtxn.commit()?;
            return Ok(Index {
                main,
                order,
                expiry,
            });
        }
        drop(rtxn);
        let mut wtxn = env.write_txn()?;
        let index = Index {
            main: env.create_database(&mut wtxn, None)?,
            order: env.create_database(&mut wtxn, Some("order"))?,
            expiry: env.create_database(&mut wtxn, Some("expiry"))?,
        };
        wtxn.commit()?;
        env.force_sync()?;
        Ok(index)
    }

    /// Moves the entries of a cache of format 1 from the named database `entries` into the
    /// main database, in one write transaction (a kill leaves none or all of them moved),
    /// and empties it; takes the counters from `meta` if the totals are still there (and
    /// empties it); recounts the totals, commits and syncs. Returns how many entries moved;
    /// 0 if there were none (or the move was done and committed before).
    ///
    /// Only with the open lock held exclusively: nobody else may read or write meanwhile.
    pub(crate) fn migrate_format_1(&self, env: &LmdbEnv) -> heed::Result<u64> {
        let mut txn = env.write_txn()?;
        let moved = match env.open_database::<Bytes, Bytes>(&txn, Some(FORMAT_1_ENTRIES))? {
            Some(old) => self.move_entries(&mut txn, old)?,
            None => 0,
        };
        let mut stored = self.main.get(&txn, TOTALS_KEY)?.and_then(Totals::decode);
        if let Some(meta) = env.open_database::<Bytes, Bytes>(&txn, Some(FORMAT_1_META))? {
            if stored.is_none() {
                stored = meta.get(&txn, TOTALS_KEY)?.and_then(Totals::decode);
            }
            meta.clear(&mut txn)?;
        }
        let totals = self.recount(&txn, stored.unwrap_or_default())?;
        self.put_totals(&mut txn, &totals)?;
        txn.commit()?;
        env.force_sync()?;
        Ok(moved)
    }

    /// The migration's move: every record of `old` to the main database, then `old` emptied.
    fn move_entries(&self, txn: &mut RwTxn, old: Database<Bytes, Bytes>) -> heed::Result<u64> {
        let mut moved = 0;
        let mut after: Option<Vec<u8>> = None;
        // In batches, so memory stays bounded however large the cache; one transaction.
        loop {
            let start = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            let batch = old
                .range(txn, &(start, Bound::Unbounded))?
                .take(MIGRATE_BATCH)
                .map(|item| item.map(|(ikey, record)| (ikey.to_vec(), record.to_vec())))
                .collect::<heed::Result<Vec<_>>>()?;
            let Some((last, _)) = batch.last() else {
                break;
            };
            after = Some(last.clone());
            for (ikey, record) in &batch {
                match self.put_entry(txn, ikey, record) {
                    Ok(()) => moved += 1,
                    // Not a key format 1 wrote (at most 400 bytes): no entry to keep.
                    Err(heed::Error::Mdb(MdbError::BadValSize)) => {
                        tracing::warn!("dropping an index key of {} bytes", ikey.len());
                    }
                    Err(err) => return Err(err),
                }
            }
        }
        old.clear(txn)?;
        Ok(moved)
    }

    /// The record stored under index key `ikey`. Inlined into the hit path, as is
    /// [`with_entry_key`]: LMDB's result returned through memory cost a store-forwarding
    /// stall (a wide load of what narrower stores had just written).
    #[inline(always)]
    pub(crate) fn get<'t>(&self, txn: &'t RoTxn, ikey: &[u8]) -> heed::Result<Option<&'t [u8]>> {
        with_entry_key(ikey, |key| self.main.get(txn, key))
    }

    fn put_entry(&self, txn: &mut RwTxn, ikey: &[u8], record: &[u8]) -> heed::Result<()> {
        with_entry_key(ikey, |key| self.main.put(txn, key, record))
    }

    fn delete_entry(&self, txn: &mut RwTxn, ikey: &[u8]) -> heed::Result<bool> {
        with_entry_key(ikey, |key| self.main.delete(txn, key))
    }

    /// Every entry, in index order.
    pub(crate) fn iter<'t>(&self, txn: &'t RoTxn) -> heed::Result<Entries<'t>> {
        self.iter_after(txn, None)
    }

    /// The entries after index key `after` (all of them for `None`), in index order.
    pub(crate) fn iter_after<'t>(
        &self,
        txn: &'t RoTxn,
        after: Option<&[u8]>,
    ) -> heed::Result<Entries<'t>> {
        let end = Bound::Excluded(ENTRIES_END);
        // heed copies the bounds: the range does not borrow the key.
        let range = match after {
            Some(after) => with_entry_key(after, |key| {
                self.main.range(txn, &(Bound::Excluded(key), end))
            })?,
            None => self
                .main
                .range(txn, &(Bound::Included(&[ENTRY_PREFIX][..]), end))?,
        };
        Ok(Entries(range))
    }

    /// The totals; recounted from the entries if the record is missing or damaged.
    pub(crate) fn totals(&self, txn: &RoTxn) -> heed::Result<Totals> {
        match self.main.get(txn, TOTALS_KEY)?.and_then(Totals::decode) {
            Some(totals) => Ok(totals),
            None => self.recount(txn, Totals::default()),
        }
    }

    /// How many entries have expired at `now` (expiry `<= now`). The expiry order is
    /// sorted, so this reads only the expired ones.
    pub(crate) fn count_expired(&self, txn: &RoTxn, now: u64) -> heed::Result<u64> {
        let mut count = 0;
        for item in self.expiry.iter(txn)? {
            let (stamped, _) = item?;
            let Some(stamp) = stamped.first_chunk::<8>() else {
                continue;
            };
            if u64::from_be_bytes(*stamp) > now {
                break;
            }
            count += 1;
        }
        Ok(count)
    }

    /// Recomputes `entries` and `bytes` from the entries themselves (keeps the counters).
    pub(crate) fn recount(&self, txn: &RoTxn, mut totals: Totals) -> heed::Result<Totals> {
        totals.entries = 0;
        totals.bytes = 0;
        for item in self.iter(txn)? {
            let (ikey, value) = item?;
            totals.entries += 1;
            totals.bytes += footprint(ikey, value);
        }
        Ok(totals)
    }

    pub(crate) fn put_totals(&self, txn: &mut RwTxn, totals: &Totals) -> heed::Result<()> {
        self.main.put(txn, TOTALS_KEY, &totals.encode())
    }

    /// Stores `record` (already encoded) under `ikey`, replacing and accounting for any
    /// previous entry.
    pub(crate) fn insert(
        &self,
        txn: &mut RwTxn,
        totals: &mut Totals,
        garbage: &mut Garbage,
        ikey: &[u8],
        record: &[u8],
        meta: &Meta,
    ) -> heed::Result<()> {
        self.remove(txn, totals, garbage, ikey)?;
        self.put_entry(txn, ikey, record)?;
        if totals.ordered() {
            self.order.put(txn, &stamped(meta.order_ns, ikey), &[])?;
        }
        if meta.expire_ns != 0 {
            self.expiry.put(txn, &stamped(meta.expire_ns, ikey), &[])?;
        }
        totals.entries += 1;
        totals.bytes += footprint(ikey, record);
        Ok(())
    }

    /// Removes `ikey` and its order and expiry entries; true if it was there.
    pub(crate) fn remove(
        &self,
        txn: &mut RwTxn,
        totals: &mut Totals,
        garbage: &mut Garbage,
        ikey: &[u8],
    ) -> heed::Result<bool> {
        let Some(value) = self.get(txn, ikey)? else {
            return Ok(false);
        };
        let size = footprint(ikey, value);
        // A damaged record cannot name its order and expiry entries; eviction and purging
        // drop such dangling entries when they reach them.
        let decoded = Record::decode(ikey, value)
            .ok()
            .map(|r| (r.meta, blob_name(&r)));
        self.delete_entry(txn, ikey)?;
        if let Some((meta, blob)) = decoded {
            if totals.ordered() {
                self.order.delete(txn, &stamped(meta.order_ns, ikey))?;
            }
            if meta.expire_ns != 0 {
                self.expiry.delete(txn, &stamped(meta.expire_ns, ikey))?;
            }
            garbage.blobs.extend(blob);
        }
        totals.entries = totals.entries.saturating_sub(1);
        totals.bytes = totals.bytes.saturating_sub(size);
        Ok(true)
    }

    /// Moves `ikey` to a new place in the eviction order (LRU use) and/or gives it a new
    /// expiry, keeping its value; false if it is missing or unreadable.
    pub(crate) fn restamp(
        &self,
        txn: &mut RwTxn,
        totals: &Totals,
        ikey: &[u8],
        change: impl FnOnce(&mut Meta),
    ) -> heed::Result<bool> {
        let Some(value) = self.get(txn, ikey)? else {
            return Ok(false);
        };
        let Ok(mut record) = Record::decode(ikey, value) else {
            return Ok(false);
        };
        let old = record.meta;
        change(&mut record.meta);
        let new = record.meta;
        let updated = record.encode(ikey);
        if totals.ordered() {
            self.order.delete(txn, &stamped(old.order_ns, ikey))?;
            self.order.put(txn, &stamped(new.order_ns, ikey), &[])?;
        }
        if old.expire_ns != 0 {
            self.expiry.delete(txn, &stamped(old.expire_ns, ikey))?;
        }
        if new.expire_ns != 0 {
            self.expiry.put(txn, &stamped(new.expire_ns, ikey), &[])?;
        }
        self.put_entry(txn, ikey, &updated)?;
        Ok(true)
    }

    /// Bounded housekeeping done by every write: purge a few expired entries, then evict in
    /// order (oldest stamp first) while over the size limit. `keep` (the entry just written)
    /// is never evicted.
    pub(crate) fn maintain(
        &self,
        txn: &mut RwTxn,
        totals: &mut Totals,
        garbage: &mut Garbage,
        now_ns: u64,
        keep: &[u8],
    ) -> heed::Result<()> {
        let expired = self.first_keys(txn, self.expiry, PURGE_PER_WRITE, |stamp| stamp < now_ns)?;
        for (stamp_key, ikey) in expired {
            if !self.remove(txn, totals, garbage, &ikey)? {
                self.expiry.delete(txn, &stamp_key)?; // dangling
            }
        }
        if totals.size_limit == 0 || totals.bytes <= totals.size_limit {
            return Ok(());
        }
        let candidates = self.first_keys(txn, self.order, EVICT_PER_WRITE + 1, |_| true)?;
        for (stamp_key, ikey) in candidates {
            if totals.bytes <= totals.size_limit {
                break;
            }
            if ikey == keep {
                continue;
            }
            if self.remove(txn, totals, garbage, &ikey)? {
                totals.evictions += 1;
            } else {
                self.order.delete(txn, &stamp_key)?; // dangling
            }
        }
        Ok(())
    }

    /// Removes every entry; returns how many there were.
    pub(crate) fn clear(
        &self,
        txn: &mut RwTxn,
        totals: &mut Totals,
        garbage: &mut Garbage,
    ) -> heed::Result<u64> {
        for item in self.iter(txn)? {
            let (ikey, value) = item?;
            if let Ok(record) = Record::decode(ikey, value) {
                garbage.blobs.extend(blob_name(&record));
            }
        }
        let all = (
            Bound::Included(&[ENTRY_PREFIX][..]),
            Bound::Excluded(ENTRIES_END),
        );
        let count = self.main.delete_range(txn, &all)? as u64;
        for db in [self.order, self.expiry] {
            db.clear(txn)?;
        }
        totals.entries = 0;
        totals.bytes = 0;
        Ok(count)
    }

    /// Verifies every entry with `valid` (given the index key and the decoded record; false
    /// = damaged), removes the damaged and the undecodable ones, rebuilds the order and expiry
    /// databases and the totals from the survivors. Returns (entries kept, removed, the value
    /// files the kept entries reference).
    pub(crate) fn rebuild(
        &self,
        txn: &mut RwTxn,
        totals: &mut Totals,
        garbage: &mut Garbage,
        mut valid: impl FnMut(&Record<'_>) -> bool,
    ) -> heed::Result<(u64, u64, std::collections::HashSet<String>)> {
        let mut keep = Vec::new();
        let mut bad = Vec::new();
        let mut referenced = std::collections::HashSet::new();
        for item in self.iter(txn)? {
            let (ikey, value) = item?;
            match Record::decode(ikey, value) {
                Ok(record) if valid(&record) => {
                    referenced.extend(blob_name(&record));
                    keep.push((ikey.to_vec(), record.meta));
                }
                Ok(record) => {
                    garbage.blobs.extend(blob_name(&record));
                    bad.push(ikey.to_vec());
                }
                Err(_) => bad.push(ikey.to_vec()),
            }
        }
        for ikey in &bad {
            self.delete_entry(txn, ikey)?;
        }
        self.order.clear(txn)?;
        self.expiry.clear(txn)?;
        for (ikey, meta) in &keep {
            if totals.ordered() {
                self.order.put(txn, &stamped(meta.order_ns, ikey), &[])?;
            }
            if meta.expire_ns != 0 {
                self.expiry.put(txn, &stamped(meta.expire_ns, ikey), &[])?;
            }
        }
        *totals = self.recount(txn, *totals)?;
        Ok((keep.len() as u64, bad.len() as u64, referenced))
    }

    /// Sets the size limit; the eviction order is rebuilt from the records' stamps when it
    /// starts being kept (see [`Totals::ordered`]) and dropped when it stops.
    pub(crate) fn set_size_limit(
        &self,
        txn: &mut RwTxn,
        totals: &mut Totals,
        limit: u64,
    ) -> heed::Result<()> {
        let was = totals.ordered();
        totals.size_limit = limit;
        if was == totals.ordered() {
            return Ok(());
        }
        self.order.clear(txn)?;
        if !totals.ordered() {
            return Ok(());
        }
        let mut stamps = Vec::new();
        for item in self.iter(txn)? {
            let (ikey, value) = item?;
            if let Ok(record) = Record::decode(ikey, value) {
                stamps.push(stamped(record.meta.order_ns, ikey));
            }
        }
        for key in &stamps {
            self.order.put(txn, key, &[])?;
        }
        Ok(())
    }

    /// Up to `max` (stamp key, index key) pairs from the start of an order database whose
    /// stamp satisfies `take`.
    fn first_keys(
        &self,
        txn: &RoTxn,
        db: Database<Bytes, Bytes>,
        max: usize,
        take: impl Fn(u64) -> bool,
    ) -> heed::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in db.iter(txn)? {
            let (key, _) = item?;
            let Some((stamp, ikey)) = key.split_first_chunk::<8>() else {
                continue;
            };
            if out.len() >= max || !take(u64::from_be_bytes(*stamp)) {
                break;
            }
            out.push((key.to_vec(), ikey.to_vec()));
        }
        Ok(out)
    }
}

/// Big-endian stamp ++ index key: LMDB's byte order is then time order.
fn stamped(stamp: u64, ikey: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + ikey.len());
    key.extend_from_slice(&stamp.to_be_bytes());
    key.extend_from_slice(ikey);
    key
}

pub(crate) fn blob_name(record: &Record<'_>) -> Option<String> {
    match record.body {
        Body::Blob { name, .. } => Some(name.to_owned()),
        Body::Inline(_) => None,
    }
}

/// Bytes an entry accounts for: its record and index key (three times: entries, order and
/// expiry databases) plus LMDB node overhead, and its value file rounded up to 4 KiB blocks.
fn footprint(ikey: &[u8], record: &[u8]) -> u64 {
    let blob = match Record::decode(ikey, record) {
        Ok(Record {
            body: Body::Blob { .. },
            meta,
            ..
        }) => meta.payload_len.div_ceil(4096) * 4096,
        _ => 0,
    };
    (record.len() + 3 * (ikey.len() + 8) + 48) as u64 + blob
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Totals kept in the `meta` database by earlier builds keep their counters through the
    /// migration (entries and bytes are recounted), and `meta` is emptied.
    #[test]
    fn totals_written_in_meta_by_earlier_builds_are_kept_by_the_migration() {
        let tmp = tempfile::tempdir().unwrap();
        let env = crate::caches::lmdb::open_env(tmp.path(), false, 1 << 20).unwrap();
        let index = Index::open(&env).unwrap();
        let old = Totals {
            entries: 3,
            bytes: 300,
            size_limit: 1 << 20,
            hits: 5,
            misses: 6,
            evictions: 7,
        };
        let mut txn = env.write_txn().unwrap();
        let meta = env
            .create_database::<Bytes, Bytes>(&mut txn, Some(FORMAT_1_META))
            .unwrap();
        meta.put(&mut txn, TOTALS_KEY, &old.encode()).unwrap();
        txn.commit().unwrap();

        assert_eq!(index.migrate_format_1(&env).unwrap(), 0);
        let txn = env.read_txn().unwrap();
        let recounted = Totals {
            entries: 0,
            bytes: 0,
            ..old
        };
        assert_eq!(index.totals(&txn).unwrap(), recounted);
        assert!(meta.get(&txn, TOTALS_KEY).unwrap().is_none());
    }
}
