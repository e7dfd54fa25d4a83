//! Checking a cache before use, and resetting one that cannot be trusted.
//!
//! The reset is crash-atomic: it first writes the marker `resetting`, then deletes and
//! recreates the index and value files, and writes the real marker last. Every opener
//! (not only the first) checks the marker and the state, so a reset that was killed
//! half-way is finished by the next opener before anybody writes to the half-reset cache,
//! and nothing written after a reset can be wiped by a later one for the same cause.

use std::fs;
use std::path::PathBuf;

use super::durability::{self, State};
use super::record::FORMAT_VERSION;
use crate::atomic::write_atomically;
use crate::error::{Error, IoContext, Result};
use crate::sys;

const MARKER: &str = ".dbx-concurio";
const MARKER_TEXT: &str = "dbx-concurio cache format 1\n";
const RESETTING_TEXT: &str = "dbx-concurio cache resetting\n";
/// Prefix of the temp files of atomic writes in a cache directory (`check` removes old ones).
pub(crate) const TEMP_PREFIX: &str = ".tmp";

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

    pub(crate) fn create(&self) -> Result<()> {
        for sub in [&self.index_dir, &self.blob_dir, &self.lock_dir] {
            sys::create_private_dir_all(sub).at("create directory", sub)?;
        }
        Ok(())
    }

    /// Why the cache must be reset before anybody uses it, if it must. Cheap (two small
    /// reads): every opener calls it.
    pub(crate) fn reset_reason(&self) -> Result<Option<&'static str>> {
        let marker = self.dir.join(MARKER);
        // Read as bytes: a marker that is not even UTF-8 is garbage too (reset), not an error.
        match fs::read(&marker).map(|b| String::from_utf8_lossy(&b).into_owned()) {
            Ok(text) if text == MARKER_TEXT => {}
            Ok(text) if text == RESETTING_TEXT => {
                return Ok(Some("an earlier reset was interrupted"));
            }
            Ok(text) if text.starts_with("dbx-concurio cache format ") => {
                return Err(Error::Unsupported(format!(
                    "{} holds a cache of another format ({}); this build reads format {FORMAT_VERSION}",
                    self.dir.display(),
                    text.trim()
                )));
            }
            Ok(_) => return Ok(Some("its marker file is damaged")),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                // A new cache has no index yet; an index without a marker is not ours to trust.
                if self.index_dir.join("data.mdb").exists() {
                    return Ok(Some("its marker file is missing"));
                }
            }
            Err(err) => return Err(Error::io("read", marker, err)),
        }
        if let (State::Dirty { boot }, Some(now)) =
            (durability::read_state(&self.dir), sys::boot_id())
            && boot != now
        {
            return Ok(Some(
                "the machine restarted while unsynced writes were pending",
            ));
        }
        Ok(None)
    }

    /// Run by an opener that holds the open lock exclusively (no process has the cache
    /// open): resets the cache if it must, and writes the marker of a new cache.
    pub(crate) fn recover(&self) -> Result<()> {
        if let Some(why) = self.reset_reason()? {
            return self.reset(why);
        }
        if !self.dir.join(MARKER).exists() {
            self.write_marker(MARKER_TEXT)?;
        }
        Ok(())
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
