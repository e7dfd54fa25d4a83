//! Opening a cache safely: the LMDB options, the first opener's checks (marker, unclean
//! reboot, damaged meta page) and the reset of a cache that cannot be trusted.

use std::fs;
use std::path::Path;

use heed::{Env, EnvFlags, EnvOpenOptions, MdbError};

use super::record::FORMAT_VERSION;
use super::store::{Durability, MAX_READERS};
use crate::atomic::write_atomically;
use crate::error::{Error, IoContext, Result};
use crate::sys;

const MARKER: &str = ".dbx-concurio";
/// Prefix of the temp files of atomic writes in a cache directory (`check` removes old ones).
pub(crate) const TEMP_PREFIX: &str = ".tmp";
const MARKER_TEXT: &str = "dbx-concurio cache format 1\n";

/// The paths the open/recovery protocol works on.
pub(crate) struct Paths<'a> {
    pub(crate) dir: &'a Path,
    pub(crate) index_dir: &'a Path,
    pub(crate) blob_dir: &'a Path,
}

impl Paths<'_> {
    /// Run by the first opener, alone: checks the marker and whether the machine restarted
    /// while unsynced writes were pending, and resets the cache if it cannot be trusted.
    pub(crate) fn recover(&self) -> Result<()> {
        let marker = self.dir.join(MARKER);
        // Read as bytes: a marker that is not even UTF-8 is garbage too (reset), not an error.
        match fs::read(&marker).map(|b| String::from_utf8_lossy(&b).into_owned()) {
            Ok(text) if text == MARKER_TEXT => {}
            Ok(text) if text.starts_with("dbx-concurio cache format ") => {
                return Err(Error::Unsupported(format!(
                    "{} holds a cache of another format ({}); this build reads format {FORMAT_VERSION}",
                    self.dir.display(),
                    text.trim()
                )));
            }
            Ok(_) => self.reset("its marker file is damaged")?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                write_atomically(&marker, MARKER_TEXT.as_bytes(), TEMP_PREFIX)?;
            }
            Err(err) => return Err(Error::io("read", marker, err)),
        }
        let state = fs::read_to_string(self.dir.join(".state")).unwrap_or_default();
        if let (Some((boot, "dirty")), Some(now)) = (state.trim().split_once(' '), sys::boot_id())
            && boot != now
        {
            self.reset("the machine restarted while unsynced writes were pending")?;
        }
        Ok(())
    }

    /// Deletes the index and the value files, and starts an empty cache. Only the first opener
    /// calls this, while holding the open lock exclusively: no process has the index open.
    pub(crate) fn reset(&self, why: &str) -> Result<()> {
        tracing::warn!("resetting cache {}: {why}", self.dir.display());
        for sub in [self.index_dir, self.blob_dir] {
            match fs::remove_dir_all(sub) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(Error::io("remove", sub, err)),
            }
            sys::create_private_dir_all(sub).at("create directory", sub)?;
        }
        write_atomically(&self.dir.join(MARKER), MARKER_TEXT.as_bytes(), TEMP_PREFIX)?;
        self.write_state("clean")
    }

    /// Records that this boot may leave unsynced writes behind (skipped if already said).
    pub(crate) fn mark_dirty(&self) -> Result<()> {
        let Some(boot) = sys::boot_id() else {
            return Ok(());
        };
        let state = fs::read_to_string(self.dir.join(".state")).unwrap_or_default();
        if state.trim() == format!("{boot} dirty") {
            return Ok(());
        }
        self.write_state("dirty")
    }

    pub(crate) fn write_state(&self, state: &str) -> Result<()> {
        let Some(boot) = sys::boot_id() else {
            return Ok(());
        };
        write_atomically(
            &self.dir.join(".state"),
            format!("{boot} {state}\n").as_bytes(),
            TEMP_PREFIX,
        )
    }
}

pub(crate) fn open_env(
    index_dir: &Path,
    durability: Durability,
    map_size: usize,
) -> heed::Result<Env> {
    let mut options = EnvOpenOptions::new();
    options
        .map_size(map_size)
        .max_readers(MAX_READERS)
        .max_dbs(4);
    // WRITE_MAP: writers update the shared map in place instead of write(2)-ing each dirty
    // page at commit: a set costs ~2.5 µs instead of ~11 µs. Copy-on-write still protects
    // committed pages, so a killed writer leaves the last commit intact. LMDB forbids
    // mixing processes with and without it, hence in every mode.
    let mut flags = EnvFlags::WRITE_MAP;
    if durability == Durability::Fast {
        // NO_SYNC only skips fsync; crash consistency for processes is unaffected, and the
        // boot-id check covers machine crashes.
        flags |= EnvFlags::NO_SYNC;
    }
    // SAFETY: the flags are valid LMDB flags; see the comments above for their effects.
    unsafe { options.flags(flags) };
    // SAFETY: the directory is ours and opened at most once per process (the registry above);
    // LMDB's own lock file coordinates with other processes.
    unsafe { options.open(index_dir) }
}

/// The map size for this process. With `WRITE_MAP`, LMDB sets the file's length to the map
/// size at open, so: never less than the file's current length (shrinking it under another
/// process's map would make that process's writes fault), and never more than this process's
/// file size limit (`ulimit -f`: growing a file past it raises SIGXFSZ, fatal by default).
pub(crate) fn map_size(index_dir: &Path) -> heed::Result<usize> {
    const ALIGN: u64 = 64 << 10; // a multiple of every page size LMDB runs with
    const MIN: u64 = 1 << 20;
    let file_len = fs::metadata(index_dir.join("data.mdb")).map_or(0, |m| m.len());
    let limit = sys::file_size_limit() / ALIGN * ALIGN;
    let wanted = (sys::INDEX_MAP_SIZE as u64).min(limit);
    if wanted < sys::INDEX_MAP_SIZE as u64 && file_len < sys::INDEX_MAP_SIZE as u64 {
        if wanted.max(file_len) < MIN {
            return Err(heed::Error::Io(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                format!(
                    "the file size limit (ulimit -f) of {limit} bytes is too small for the index"
                ),
            )));
        }
        tracing::warn!(
            "the file size limit (ulimit -f) caps the index of {} at {} bytes; a damaged index \
             may crash readers",
            index_dir.display(),
            wanted.max(file_len)
        );
    }
    Ok(wanted.max(file_len) as usize)
}

/// LMDB trusts its file: a damaged page reference past the end of `data.mdb` makes a read
/// of the memory map fault (SIGBUS), which no error handling can catch. With `WRITE_MAP`,
/// LMDB sets the file's length to the map size, so stray references within the map read
/// zeros, which LMDB reports as corruption and our checksums reject. What remains is a meta
/// page that claims more pages than the map we asked for: LMDB would then map (and grow the
/// file to) that size. So the first opener compares the newest meta page with `map_size`.
/// Returns why the index cannot be trusted, if it cannot.
pub(crate) fn damaged_meta(env: &Env, map_size: usize) -> Option<String> {
    let claimed =
        (env.info().last_page_number as u64 + 1).saturating_mul(u64::from(env.stat().page_size));
    (claimed > map_size as u64)
        .then(|| format!("its meta page claims {claimed} bytes, more than the {map_size}-byte map"))
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
