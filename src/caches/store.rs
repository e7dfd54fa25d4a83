//! Storage: an LMDB index (one record per key) plus one file per large value, and the
//! open / recovery / close protocol that keeps several processes and reboots safe.
//!
//! Directory layout (see docs/design.md):
//! ```text
//! <dir>/.dbx-concurio   marker: "dbx-concurio cache format 1"
//! <dir>/.state          "<boot id> clean|dirty": were unsynced writes pending at a reboot?
//! <dir>/.open.lock      shared while open; exclusive for recovery and clean close
//! <dir>/.key-locks/NNN.lock   256 striped get_or_load locks
//! <dir>/index/          LMDB data.mdb + lock.mdb
//! <dir>/blobs/v-*.blob  values larger than INLINE_MAX
//! ```

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};

use heed::{Env, MdbError, RwTxn};

use super::blobs::read_blob;
use super::index::{Garbage, Index, Totals};
use super::keys::{IndexKey, user_key};
use super::record::{Body, Meta, Record};
use super::recovery::{Paths, TEMP_PREFIX, damaged_meta, is_corruption, map_size, open_env};
use crate::error::{Error, IoContext, Result};
use crate::lock::{FileLock, KeyLocks, LockMode};
use crate::sys;

/// Values whose encoding is larger than this go to their own file (as python-diskcache does):
/// the index stays small and dense, and big reads are plain file reads.
pub(crate) const INLINE_MAX: usize = 32 * 1024;
/// Number of interprocess key-lock files: fixed, so lock files never pile up per key.
pub(crate) const KEY_LOCK_STRIPES: u32 = 256;
/// LMDB reader slots: one per thread that ever read the cache, in all processes together.
pub(crate) const MAX_READERS: u32 = 1024;

/// How much a cache promises to keep when the machine, not just a process, goes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Commits are not fsynced (microseconds per write). A process crash loses nothing that
    /// was committed; after a power loss or kernel crash with unsynced writes pending, the
    /// cache is reset on the next open (detected through the boot id): it can lose entries,
    /// never return a corrupt one.
    #[default]
    Fast,
    /// Every commit is fsynced (hundreds of microseconds per write): committed entries
    /// survive power loss too.
    Synced,
}

/// One opened cache directory, shared by every `DiskCache` of this process that uses it
/// (LMDB must not be opened twice by one process).
pub(crate) struct Store {
    dir: PathBuf,
    index_dir: PathBuf,
    blob_dir: PathBuf,
    lock_dir: PathBuf,
    /// Closed explicitly in `Drop`, under the registry lock, before the open lock is released.
    env: ManuallyDrop<Env>,
    index: Index,
    durability: Durability,
    open_lock: FileLock,
    pub(crate) key_locks: KeyLocks,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// What a lookup found.
pub(crate) enum Lookup<R> {
    Missing,
    /// Present, but refused by the caller's `accept` (expired or stale).
    Rejected,
    Found(Meta, R),
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

/// How old an unreferenced file must be before `check` treats it as debris.
const DEBRIS_AGE: std::time::Duration = std::time::Duration::from_secs(60);

fn is_stripe_name(name: &str) -> bool {
    name.strip_suffix(".lock")
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| n < KEY_LOCK_STRIPES && name.len() == 8)
}

/// An entry without its value, for listings.
#[derive(Debug, Clone)]
pub(crate) struct EntryInfo {
    pub(crate) key: String,
    pub(crate) meta: Meta,
    pub(crate) in_file: bool,
}

static REGISTRY: LazyLock<Mutex<HashMap<PathBuf, Weak<Store>>>> = LazyLock::new(Default::default);

/// Opens `dir` (which must exist), or returns the store this process already has open there.
pub(crate) fn open(dir: &Path, durability: Durability) -> Result<Arc<Store>> {
    let canonical = fs::canonicalize(dir).at("resolve", dir)?;
    let mut registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(store) = registry.get(&canonical).and_then(Weak::upgrade) {
        if store.durability != durability {
            tracing::debug!(
                "{} is already open with {:?}; keeping it",
                canonical.display(),
                store.durability
            );
        }
        return Ok(store);
    }
    let store = Arc::new(Store::open(canonical.clone(), durability)?);
    registry.insert(canonical, Arc::downgrade(&store));
    Ok(store)
}

impl Store {
    fn open(dir: PathBuf, durability: Durability) -> Result<Self> {
        let index_dir = dir.join("index");
        let blob_dir = dir.join("blobs");
        let lock_dir = dir.join(".key-locks");
        for sub in [&index_dir, &blob_dir, &lock_dir] {
            sys::create_private_dir_all(sub).at("create directory", sub)?;
        }
        // The first process to open the cache (nobody holds the lock shared) checks and, if
        // needed, resets it; everyone then holds the lock shared until they close.
        let open_lock_path = dir.join(".open.lock");
        let (open_lock, first) = match FileLock::try_acquire(&open_lock_path, LockMode::Exclusive)?
        {
            Some(lock) => (lock, true),
            None => (
                FileLock::acquire(&open_lock_path, LockMode::Shared, None)?,
                false,
            ),
        };
        let paths = Paths {
            dir: &dir,
            index_dir: &index_dir,
            blob_dir: &blob_dir,
        };
        if first {
            paths.recover()?;
        }
        let corrupt = |detail: String| Error::Corrupt {
            path: index_dir.clone(),
            detail,
        };
        let (env, index) = match open_index(&index_dir, durability, first)? {
            Ok(opened) => opened,
            Err(why) if first => {
                paths.reset(&why)?;
                open_index(&index_dir, durability, true)?.map_err(corrupt)?
            }
            Err(why) => return Err(corrupt(why)),
        };
        if durability == Durability::Fast {
            paths.mark_dirty()?;
        }
        if first {
            open_lock.convert(LockMode::Shared, &open_lock_path)?;
        }
        // Reader slots of killed processes would otherwise pin old pages forever.
        match env.clear_stale_readers() {
            Ok(0) => {}
            Ok(n) => tracing::debug!("cleared {n} stale LMDB readers in {}", index_dir.display()),
            Err(err) => tracing::warn!("cannot clear stale readers: {err}"),
        }
        Ok(Store {
            dir,
            index_dir,
            blob_dir,
            lock_dir,
            env: ManuallyDrop::new(env),
            index,
            durability,
            open_lock,
            key_locks: KeyLocks::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The interprocess lock file that guards loads of `key`.
    pub(crate) fn key_lock_path(&self, key: &str) -> PathBuf {
        let stripe = crc32fast::hash(key.as_bytes()) % KEY_LOCK_STRIPES;
        self.lock_dir.join(format!("{stripe:03}.lock"))
    }

    /// Counts a hit or a miss: a relaxed atomic add here, folded into the shared totals by
    /// this process's next write (or its close), so the read path writes nothing.
    pub(crate) fn count(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads `key` without any lock: one LMDB read transaction (lock-free after a thread's
    /// first read), a checksum, and `decode` on the payload if `accept` likes the metadata.
    pub(crate) fn lookup<R>(
        &self,
        key: &str,
        accept: impl Fn(&Meta) -> bool,
        mut decode: impl FnMut(&[u8]) -> Result<R>,
    ) -> Result<Lookup<R>> {
        let ikey = IndexKey::new(key);
        // A value file can vanish between reading its record and opening it, when another
        // writer replaces or evicts the entry; then the record has changed too: look again.
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            let (meta, crc, path) = {
                let txn = self.env.read_txn().map_err(|e| self.storage(e))?;
                let Some(bytes) = self
                    .index
                    .get(&txn, ikey.as_bytes())
                    .map_err(|e| self.storage(e))?
                else {
                    return Ok(Lookup::Missing);
                };
                let record = Record::decode(ikey.as_bytes(), bytes)
                    .map_err(|detail| self.corrupt(key, detail))?;
                if record
                    .stored_key
                    .is_some_and(|stored| stored != key.as_bytes())
                {
                    return Ok(Lookup::Missing); // a different long key with the same hash
                }
                if !accept(&record.meta) {
                    return Ok(Lookup::Rejected);
                }
                match record.body {
                    Body::Inline(payload) => {
                        return Ok(Lookup::Found(record.meta, decode(payload)?));
                    }
                    Body::Blob { crc, name } => (record.meta, crc, self.blob_dir.join(name)),
                }
            };
            match read_blob(&path) {
                Ok(bytes) => {
                    if bytes.len() as u64 != meta.payload_len || crc32fast::hash(&bytes) != crc {
                        return Err(Error::Corrupt {
                            path,
                            detail: format!(
                                "value file of key {key:?} fails its length or checksum"
                            ),
                        });
                    }
                    return Ok(Lookup::Found(meta, decode(&bytes)?));
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound && attempt < ATTEMPTS => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::Corrupt {
                        path,
                        detail: format!("value file of key {key:?} is missing"),
                    });
                }
                Err(err) => return Err(Error::io("read", path, err)),
            }
        }
        Ok(Lookup::Missing)
    }

    /// Stores `payload` under `key`, replacing any previous entry atomically; then does the
    /// bounded housekeeping (lazy purge, eviction) in the same transaction.
    pub(crate) fn put(
        &self,
        key: &str,
        load_ns: u64,
        expire_ns: u64,
        payload: &[u8],
    ) -> Result<()> {
        self.put_if(
            key,
            load_ns,
            expire_ns,
            payload,
            None::<fn(Option<&Meta>) -> bool>,
        )
        .map(drop)
    }

    /// Like `put`, but if `replace` is given, only if it accepts the current entry's metadata
    /// (`None`: no entry), decided inside the write transaction; returns whether it stored.
    /// Without `replace` the current record is not looked up here (`insert` reads it anyway).
    pub(crate) fn put_if(
        &self,
        key: &str,
        load_ns: u64,
        expire_ns: u64,
        payload: &[u8],
        replace: Option<impl FnOnce(Option<&Meta>) -> bool>,
    ) -> Result<bool> {
        let ikey = IndexKey::new(key);
        let blob = if payload.len() > INLINE_MAX {
            Some(self.write_blob(payload)?)
        } else {
            None
        };
        let body = match &blob {
            Some((name, crc)) => Body::Blob { crc: *crc, name },
            None => Body::Inline(payload),
        };
        let meta = Meta {
            load_ns,
            expire_ns,
            order_ns: load_ns,
            payload_len: payload.len() as u64,
        };
        let record = Record {
            meta,
            stored_key: ikey.is_hashed().then_some(key.as_bytes()),
            body,
        }
        .encode(ikey.as_bytes());
        let ikey = ikey.as_bytes();
        let result = self.write(|index, txn, totals, garbage| {
            if let Some(replace) = replace {
                let current = index
                    .get(txn, ikey)?
                    .and_then(|v| Record::decode(ikey, v).ok());
                if !replace(current.map(|r| r.meta).as_ref()) {
                    return Ok(false);
                }
            }
            index.insert(txn, totals, garbage, ikey, &record, &meta)?;
            index.maintain(txn, totals, garbage, load_ns, ikey)?;
            Ok(true)
        });
        if !matches!(result, Ok(true)) {
            self.remove_blobs(blob.map(|(name, _)| name));
        }
        result
    }

    /// Removes `key`; true if it was there.
    pub(crate) fn delete(&self, key: &str) -> Result<bool> {
        let ikey = IndexKey::new(key);
        self.write(|index, txn, totals, garbage| {
            index.remove(txn, totals, garbage, ikey.as_bytes())
        })
    }

    /// Changes `key`'s expiry and/or eviction stamp, keeping its value; true if it was there.
    pub(crate) fn restamp(&self, key: &str, change: impl FnOnce(&mut Meta)) -> Result<bool> {
        let ikey = IndexKey::new(key);
        self.write(|index, txn, _, _| index.restamp(txn, ikey.as_bytes(), change))
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
        self.write(|_, _, totals, _| {
            totals.size_limit = limit;
            Ok(())
        })
    }

    /// The shared totals plus this process's not yet recorded hits and misses.
    pub(crate) fn totals(&self) -> Result<Totals> {
        let txn = self.env.read_txn().map_err(|e| self.storage(e))?;
        let mut totals = self.index.totals(&txn).map_err(|e| self.storage(e))?;
        totals.hits += self.hits.load(Ordering::Relaxed);
        totals.misses += self.misses.load(Ordering::Relaxed);
        Ok(totals)
    }

    /// A snapshot of every entry's key and metadata (corrupt records are skipped).
    pub(crate) fn entries(&self) -> Result<Vec<EntryInfo>> {
        let txn = self.env.read_txn().map_err(|e| self.storage(e))?;
        let mut out = Vec::new();
        for item in self.index.iter(&txn).map_err(|e| self.storage(e))? {
            let (k, v) = item.map_err(|e| self.storage(e))?;
            let Ok(record) = Record::decode(k, v) else {
                tracing::warn!("skipping a corrupt record in {}", self.index_dir.display());
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
        Ok(out)
    }

    /// Verifies every entry and value file, removes what is damaged, rebuilds the order,
    /// expiry and totals, and deletes debris: value files no entry names (older than a
    /// minute: a concurrent write creates its file just before committing the entry), temp
    /// files of interrupted atomic writes, and foreign files among the lock stripes.
    pub(crate) fn check(&self) -> Result<CheckReport> {
        let blob_dir = self.blob_dir.clone();
        let (entries, removed, referenced) = self.write(|index, txn, totals, garbage| {
            index.rebuild(txn, totals, garbage, |record| match record.body {
                Body::Inline(_) => true,
                Body::Blob { crc, name } => fs::read(blob_dir.join(name)).is_ok_and(|b| {
                    b.len() as u64 == record.meta.payload_len && crc32fast::hash(&b) == crc
                }),
            })
        })?;
        let old = |path: &Path| {
            fs::symlink_metadata(path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() > DEBRIS_AGE)
        };
        let mut report = CheckReport {
            entries,
            removed_entries: removed,
            ..CheckReport::default()
        };
        for (dir, is_debris) in [
            (
                &self.blob_dir,
                &(|name: &str| !referenced.contains(name)) as &dyn Fn(&str) -> bool,
            ),
            (&self.dir, &|name: &str| {
                name.starts_with(TEMP_PREFIX) || name.starts_with(crate::dirs::WRITE_PROBE_PREFIX)
            }),
            (&self.lock_dir, &|name: &str| !is_stripe_name(name)),
        ] {
            let listing = fs::read_dir(dir).at("list", dir)?;
            for entry in listing.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if is_debris(&name) && old(&entry.path()) && fs::remove_file(entry.path()).is_ok() {
                    report.removed_files += 1;
                }
            }
        }
        Ok(report)
    }

    /// One write transaction: reads the totals, lets `f` change the index, folds in this
    /// process's hit/miss counts, commits, then unlinks the value files `f` made garbage.
    fn write<R>(
        &self,
        f: impl FnOnce(&Index, &mut RwTxn, &mut Totals, &mut Garbage) -> heed::Result<R>,
    ) -> Result<R> {
        let run = || -> heed::Result<(R, Garbage)> {
            let mut txn = self.env.write_txn()?;
            let mut totals = self.index.totals(&txn)?;
            let mut garbage = Garbage::default();
            let out = f(&self.index, &mut txn, &mut totals, &mut garbage)?;
            totals.hits += self.hits.swap(0, Ordering::Relaxed);
            totals.misses += self.misses.swap(0, Ordering::Relaxed);
            self.index.put_totals(&mut txn, &totals)?;
            txn.commit()?;
            Ok((out, garbage))
        };
        let (out, garbage) = run().map_err(|e| self.storage(e))?;
        self.remove_blobs(garbage.blobs);
        Ok(out)
    }

    /// Writes a value file under a fresh random name (created with O_EXCL), so it is never
    /// visible to readers before the index record that names it is committed.
    fn write_blob(&self, payload: &[u8]) -> Result<(String, u32)> {
        let mut file = tempfile::Builder::new()
            .prefix("v-")
            .suffix(".blob")
            .rand_bytes(16)
            .tempfile_in(&self.blob_dir)
            .at("create value file in", &self.blob_dir)?;
        file.write_all(payload).at("write", file.path())?;
        if self.durability == Durability::Synced {
            file.as_file().sync_all().at("sync", file.path())?;
        }
        let (_, path) = file
            .keep()
            .map_err(|e| Error::io("keep", e.file.path(), e.error))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .ok_or_else(|| {
                Error::InvalidInput(format!("bad value file name {}", path.display()))
            })?;
        Ok((name, crc32fast::hash(payload)))
    }

    fn remove_blobs(&self, names: impl IntoIterator<Item = String>) {
        for name in names {
            let path = self.blob_dir.join(name);
            if let Err(err) = fs::remove_file(&path)
                && err.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("cannot remove {}: {err}", path.display());
            }
        }
    }

    fn storage(&self, err: heed::Error) -> Error {
        storage_error(&self.index_dir, err)
    }

    fn corrupt(&self, key: &str, detail: String) -> Error {
        Error::Corrupt {
            path: self.index_dir.clone(),
            detail: format!("record of key {key:?}: {detail}"),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Hold the registry so no thread of ours reopens the directory while LMDB closes it.
        let _registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
        if self.hits.load(Ordering::Relaxed) + self.misses.load(Ordering::Relaxed) > 0
            && let Err(err) = self.write(|_, _, _, _| Ok(()))
        {
            tracing::debug!("cannot record hit counts: {err}");
        }
        let synced = self.env.force_sync();
        // SAFETY: `env` is never used again: this is the last line that touches it.
        unsafe { ManuallyDrop::drop(&mut self.env) };
        if let Err(err) = synced {
            tracing::warn!("cannot sync {}: {err}", self.index_dir.display());
            return;
        }
        // Last one out (nobody else holds the lock shared) records that all is on disk.
        if self.open_lock.try_convert(LockMode::Exclusive) {
            let paths = Paths {
                dir: &self.dir,
                index_dir: &self.index_dir,
                blob_dir: &self.blob_dir,
            };
            if let Err(err) = paths.write_state("clean") {
                tracing::debug!("cannot record a clean close: {err}");
            }
        }
    }
}

/// Opens the environment and the index databases; `Ok(Err(why))` if the index is damaged
/// (the first opener then resets it). `check_meta` is for the first opener, alone.
fn open_index(
    index_dir: &Path,
    durability: Durability,
    check_meta: bool,
) -> Result<std::result::Result<(Env, Index), String>> {
    let map = map_size(index_dir).map_err(|e| storage_error(index_dir, e))?;
    let env = match open_env(index_dir, durability, map) {
        Ok(env) => env,
        Err(err) if is_corruption(&err) => {
            return Ok(Err(format!("the index cannot be opened ({err})")));
        }
        Err(err) => return Err(storage_error(index_dir, err)),
    };
    if check_meta && let Some(why) = damaged_meta(&env, map) {
        return Ok(Err(why));
    }
    match Index::open(&env) {
        Ok(index) => Ok(Ok((env, index))),
        Err(err) if is_corruption(&err) => Ok(Err(format!("the index cannot be read ({err})"))),
        Err(err) => Err(storage_error(index_dir, err)),
    }
}

fn storage_error(index_dir: &Path, err: heed::Error) -> Error {
    match err {
        heed::Error::Io(source) => Error::io("access index", index_dir, source),
        err if is_corruption(&err) => Error::Corrupt {
            path: index_dir.to_owned(),
            detail: err.to_string(),
        },
        heed::Error::Mdb(MdbError::MapFull) => Error::Storage {
            path: index_dir.to_owned(),
            source: format!(
                "the index reached its maximum size ({} GiB); purge or clear the cache",
                sys::INDEX_MAP_SIZE >> 30
            )
            .into(),
        },
        err => Error::Storage {
            path: index_dir.to_owned(),
            source: Box::new(err),
        },
    }
}
