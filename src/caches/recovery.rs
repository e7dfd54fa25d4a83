//! Checking a cache before use, and resetting one that cannot be trusted.
//!
//! The reset is crash-atomic: it first writes the marker `resetting`, then deletes and
//! recreates the index and value files, and writes the real marker last. Every opener
//! (not only the first) checks the marker and the state, so a reset that was killed
//! half-way is finished by the next opener before anybody writes to the half-reset cache,
//! and nothing written after a reset can be wiped by a later one for the same cause.
//!
//! The marker also names the cache format: the layout of the index (records carry their own
//! version, record.rs). Format 2 keeps the entries in LMDB's main database, format 1 kept
//! them in a named one (index.rs). A build of format 2 migrates a format-1 cache when it
//! opens it first (the open lock held exclusively: no other process has it open), and
//! writes the format-2 marker only after the move has committed and been synced: a kill at
//! any point leaves a format-1 marker, and the next opener moves what is left (LMDB's
//! transaction moved all or nothing). Builds of format 1 refuse a format-2 cache (they
//! refuse any marker of another format), so they never see it as empty and write beside
//! the entries; this build refuses formats it does not know the same way.

use std::fs;
use std::path::PathBuf;

use super::durability::{self, State};
use crate::atomic::{read_small, write_atomically};
use crate::error::{Error, IoContext, Result};
use crate::sys;

const MARKER: &str = ".dbx-concurio";
/// The cache format this build reads and writes.
const FORMAT: u32 = 2;
const MARKER_TEXT: &str = "dbx-concurio cache format 2\n";
/// The format this build migrates (see the module docs).
const FORMAT_1_TEXT: &str = "dbx-concurio cache format 1\n";
const RESETTING_TEXT: &str = "dbx-concurio cache resetting\n";
/// Prefix of the temp files of atomic writes in a cache directory (`check` removes old ones).
pub(crate) const TEMP_PREFIX: &str = ".tmp";

/// What an opener must do before it uses a cache (see [`Paths::verdict`]). `dirty`:
/// `.state` says this boot's writers left unsynced writes (the first opener syncs them;
/// carried so that it need not read `.state` again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Use it. `unmarked`: no marker yet, a new cache (the first opener writes it).
    Ready { unmarked: bool, dirty: bool },
    /// Move its index from format 1 to this build's format first.
    Migrate { dirty: bool },
    /// Reset it first, for this reason.
    Reset(&'static str),
}

/// What the first opener must still do after [`Paths::recover`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// The index is of format 1: migrate it (see [`Paths::mark_migrated`]).
    pub(crate) migrate: bool,
    /// `.state` says writers of this boot left unsynced writes: sync them.
    pub(crate) dirty: bool,
}

/// The paths of one cache directory.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    pub(crate) dir: PathBuf,
    pub(crate) index_dir: PathBuf,
    pub(crate) blob_dir: PathBuf,
    pub(crate) lock_dir: PathBuf,
}

impl Paths {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Paths {
            index_dir: dir.join("index"),
            blob_dir: dir.join("blobs"),
            lock_dir: dir.join(".key-locks"),
            dir,
        }
    }

    /// Creates the subdirectories that are missing. One `stat` each when they exist (every
    /// open of an existing cache): `mkdir` first would cost a failed `mkdir` and a `stat`.
    pub(crate) fn create(&self) -> Result<()> {
        for sub in [&self.index_dir, &self.blob_dir, &self.lock_dir] {
            if !fs::metadata(sub).is_ok_and(|meta| meta.is_dir()) {
                sys::create_private_dir_all(sub).at("create directory", sub)?;
            }
        }
        Ok(())
    }

    /// What must happen before anybody uses the cache. Cheap (two small reads): every
    /// opener calls it.
    pub(crate) fn verdict(&self) -> Result<Verdict> {
        let marker = self.dir.join(MARKER);
        // Read as bytes: a marker that is not even UTF-8 is garbage too (reset), not an error.
        let (format_1, unmarked) =
            match read_small(&marker).map(|b| String::from_utf8_lossy(&b).into_owned()) {
                Ok(text) if text == MARKER_TEXT => (false, false),
                Ok(text) if text == FORMAT_1_TEXT => (true, false),
                Ok(text) if text == RESETTING_TEXT => {
                    return Ok(Verdict::Reset("an earlier reset was interrupted"));
                }
                Ok(text) if text.starts_with("dbx-concurio cache format ") => {
                    return Err(self.unknown_format(text.trim()));
                }
                Ok(_) => return Ok(Verdict::Reset("its marker file is damaged")),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    // A new cache has no index yet; an index without a marker is not ours to trust.
                    if self.index_dir.join("data.mdb").exists() {
                        return Ok(Verdict::Reset("its marker file is missing"));
                    }
                    (false, true)
                }
                Err(err) => return Err(Error::io("read", marker, err)),
            };
        let dirty = match (durability::read_state(&self.dir), sys::boot_id()) {
            (State::Dirty { boot }, Some(now)) if boot != now => {
                return Ok(Verdict::Reset(
                    "the machine restarted while unsynced writes were pending",
                ));
            }
            (state, _) => matches!(state, State::Dirty { .. }),
        };
        Ok(if format_1 {
            Verdict::Migrate { dirty }
        } else {
            Verdict::Ready { unmarked, dirty }
        })
    }

    /// The error for a marker of a format this build neither reads nor migrates: nothing in
    /// the directory is touched; the way out is a build that reads it, or another directory.
    fn unknown_format(&self, marker: &str) -> Error {
        Error::Unsupported(format!(
            "{} holds a cache of another format ({marker}); this build reads format {FORMAT} \
             (and migrates format 1): open it with the build that wrote it (or a newer one), \
             or delete the directory (or choose another) to start an empty cache",
            self.dir.display()
        ))
    }

    /// Run by an opener that holds the open lock exclusively (no process has the cache
    /// open): resets the cache if it must, and writes the marker of a new cache.
    pub(crate) fn recover(&self) -> Result<Recovered> {
        Ok(match self.verdict()? {
            Verdict::Reset(why) => {
                self.reset(why)?; // a reset cache is clean, of this build's format, marked
                Recovered::default()
            }
            Verdict::Migrate { dirty } => Recovered {
                migrate: true,
                dirty,
            },
            Verdict::Ready { unmarked, dirty } => {
                if unmarked {
                    self.write_marker(MARKER_TEXT)?;
                }
                Recovered {
                    migrate: false,
                    dirty,
                }
            }
        })
    }

    /// Records that the index was migrated to this build's format: only once the move has
    /// committed and is on disk (see the module docs).
    pub(crate) fn mark_migrated(&self) -> Result<()> {
        self.write_marker(MARKER_TEXT)
    }

    /// Deletes the index and the value files and starts an empty cache, in an order that
    /// a kill at any point leaves the marker saying `resetting` (see the module docs).
    /// Only with the open lock held exclusively.
    pub(crate) fn reset(&self, why: &str) -> Result<()> {
        tracing::warn!("resetting cache {}: {why}", self.dir.display());
        self.write_marker(RESETTING_TEXT)?;
        for sub in [&self.index_dir, &self.blob_dir] {
            match fs::remove_dir_all(sub) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(Error::io("remove", sub, err)),
            }
            sys::create_private_dir_all(sub).at("create directory", sub)?;
        }
        durability::write_clean_atomically(&self.dir, TEMP_PREFIX)?;
        crate::sys::sync_dir(&self.dir).at("sync", &self.dir)?;
        self.write_marker(MARKER_TEXT)
    }

    fn write_marker(&self, text: &str) -> Result<()> {
        write_atomically(&self.dir.join(MARKER), text.as_bytes(), TEMP_PREFIX)
    }

    pub(crate) fn index_file(&self) -> PathBuf {
        self.index_dir.join("data.mdb")
    }
}
