//! The LMDB environment: options, opening (also where heed refuses a second environment on
//! one path), the first opener's meta check, and error classification.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use heed::{Env, EnvFlags, EnvOpenOptions, MdbError, WithoutTls};

use crate::error::Error;
use crate::sys;

/// The environment type: read transactions are not tied to threads (`MDB_NOTLS`).
pub(crate) type LmdbEnv = Env<WithoutTls>;

/// LMDB reader slots, all processes together. With `MDB_NOTLS` a read holds a slot only
/// while it runs (not for the life of its thread), so this bounds reads in progress at one
/// instant, not threads; a read that finds the table full clears dead processes' slots and
/// waits for a free one (see `Store::read_txn`).
pub(crate) const MAX_READERS: u32 = 4096;

/// Prefix of the temporary second names under which `open_env` opens an index that this
/// process already has open under its real name (`check` removes old ones).
pub(crate) const ALIAS_PREFIX: &str = ".alias-";

/// Opens the environment in `index_dir`.
///
/// No `MDB_WRITEMAP`: LMDB then writes pages with `pwrite` and `data.mdb` grows only as pages
/// are written, so its apparent size follows what the cache holds (with `WRITEMAP` LMDB
/// truncates the file to the whole map: 32 GiB that `tar`, `rsync` and `ls` see).
///
/// heed refuses to open a path it already has open in this process. That happens in a
/// forked child (the parent's environment was inherited, and must be neither used nor
/// closed there) and after the directory was deleted and recreated while an old handle
/// lives. Then we open the same two files through hard links with a fresh name
/// (`MDB_NOSUBDIR`) and unlink the names once LMDB holds the descriptors: same inodes, so
/// LMDB's locks and shared reader table are the ones every other process uses.
pub(crate) fn open_env(index_dir: &Path, synced: bool, map_size: usize) -> heed::Result<LmdbEnv> {
    match open_with_flags(index_dir, synced, map_size, EnvFlags::empty()) {
        Err(heed::Error::EnvAlreadyOpened) => open_through_alias(index_dir, synced, map_size),
        other => other,
    }
}

fn open_with_flags(
    path: &Path,
    synced: bool,
    map_size: usize,
    extra: EnvFlags,
) -> heed::Result<LmdbEnv> {
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    options
        .map_size(map_size)
        .max_readers(MAX_READERS)
        .max_dbs(4);
    // NO_SYNC only skips fsync at commit: a killed process loses nothing committed; machine
    // crashes are covered by the dirty/clean state and the background flush (durability.rs).
    let mut flags = extra;
    if !synced {
        flags |= EnvFlags::NO_SYNC;
    }
    // SAFETY: valid LMDB flags; see the comments above for their effects.
    unsafe { options.flags(flags) };
    // SAFETY: the directory is ours, and this process opens it once per fork generation
    // (the registry in open.rs); LMDB's lock file coordinates with other processes.
    let env = unsafe { options.open(path) }?;
    // LMDB opens data.mdb without O_CLOEXEC: commands we start must not inherit it.
    if let Ok(file) = env.try_clone_inner_file()
        && let Err(err) = sys::set_cloexec_on_descriptors_of(&file)
    {
        tracing::debug!("cannot set close-on-exec on the index: {err}");
    }
    Ok(env)
}

fn open_through_alias(index_dir: &Path, synced: bool, map_size: usize) -> heed::Result<LmdbEnv> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "{ALIAS_PREFIX}{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let data = index_dir.join(&name);
    let lock = index_dir.join(format!("{name}-lock"));
    // A new index has no files yet to link to: create them empty, as LMDB would.
    for file in ["data.mdb", "lock.mdb"] {
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(index_dir.join(file))
            .map_err(heed::Error::Io)?;
    }
    let result = fs::hard_link(index_dir.join("data.mdb"), &data)
        .and_then(|()| fs::hard_link(index_dir.join("lock.mdb"), &lock))
        .map_err(heed::Error::Io)
        .and_then(|()| open_with_flags(&data, synced, map_size, EnvFlags::NO_SUB_DIR));
    for path in [&data, &lock] {
        let _ = fs::remove_file(path);
    }
    result
}

/// The map size: the address space reserved for the index (not disk: without `WRITEMAP`
/// the file only grows as pages are written). Never more than this process's file size
/// limit (`ulimit -f`): LMDB then reports a full map instead of the kernel raising SIGXFSZ.
pub(crate) fn map_size(index_dir: &Path) -> heed::Result<usize> {
    const ALIGN: u64 = 64 << 10; // a multiple of every page size LMDB runs with
    const MIN: u64 = 1 << 20;
    let file_len = fs::metadata(index_dir.join("data.mdb")).map_or(0, |m| m.len());
    let limit = sys::file_size_limit() / ALIGN * ALIGN;
    let wanted = (sys::INDEX_MAP_SIZE as u64).min(limit);
    if wanted.max(file_len) < MIN {
        return Err(heed::Error::Io(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("the file size limit (ulimit -f) of {limit} bytes is too small for the index"),
        )));
    }
    Ok(wanted.max(file_len) as usize)
}

/// LMDB trusts its file: it bounds page numbers by the newest meta page's last page, so a
/// damaged meta page that claims pages past the end of `data.mdb` would make reads fault
/// (SIGBUS). The first opener therefore checks the claim against the file's length and the
/// map. Returns why the index cannot be trusted, if it cannot.
pub(crate) fn damaged_meta(env: &LmdbEnv, index_dir: &Path, map_size: usize) -> Option<String> {
    let claimed =
        (env.info().last_page_number as u64 + 1).saturating_mul(u64::from(env.stat().page_size));
    let file_len = fs::metadata(index_dir.join("data.mdb")).map_or(0, |m| m.len());
    if claimed > map_size as u64 {
        return Some(format!(
            "its meta page claims {claimed} bytes, more than the {map_size}-byte map"
        ));
    }
    (claimed > file_len).then(|| {
        format!("its meta page claims {claimed} bytes, but data.mdb holds only {file_len}")
    })
}

pub(crate) fn is_corruption(err: &heed::Error) -> bool {
    matches!(
        err,
        heed::Error::Mdb(
            MdbError::Invalid
                | MdbError::Corrupted
                | MdbError::PageNotFound
                | MdbError::VersionMismatch
                | MdbError::Panic
        )
    )
}

/// Turns an LMDB error into ours, naming the index directory.
pub(crate) fn storage_error(index_dir: &Path, err: heed::Error) -> Error {
    match err {
        heed::Error::Io(source) => Error::io("access index", index_dir, source),
        err if is_corruption(&err) => Error::Corrupt {
            path: index_dir.to_owned(),
            detail: err.to_string(),
        },
        heed::Error::Mdb(MdbError::MapFull) => {
            let limit = map_size(index_dir).unwrap_or(sys::INDEX_MAP_SIZE);
            let why = if (limit as u64) < sys::INDEX_MAP_SIZE as u64 {
                " (capped by the file size limit, ulimit -f)"
            } else {
                ""
            };
            Error::Storage {
                path: index_dir.to_owned(),
                source: format!(
                    "the index reached its maximum size of {limit} bytes{why}; purge or clear \
                     the cache"
                )
                .into(),
            }
        }
        err => Error::Storage {
            path: index_dir.to_owned(),
            source: Box::new(err),
        },
    }
}
