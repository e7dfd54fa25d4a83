//! Staging files: where fetched and extracted bytes are written (hashed and counted on the
//! way) before they are published, and what a fetch is given and gives back.

use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use super::marker::STAGING_PREFIX;
use crate::dirs::{self, hex};
use crate::error::{IoContext, Result};

/// How to fetch (network options; ignored for local files).
#[derive(Debug)]
pub(super) struct FetchOptions<'a> {
    pub(super) timeout: Duration,
    pub(super) retries: u32,
    pub(super) headers: &'a [(String, String)],
    /// Refuse (and stop writing) more bytes than this.
    pub(super) max_size: Option<u64>,
    /// This process alone holds the identifier's lock, so it may write, keep and resume
    /// `.partial` (without working locks, every download gets its own staging file).
    pub(super) resumable: bool,
}

/// Bytes of the source in a staging file (deleted if dropped), with their digest.
#[derive(Debug)]
pub(super) struct Fetched {
    pub(super) file: NamedTempFile,
    pub(super) sha256: String,
}

/// A new, empty staging file in `dir`: same file system as the final path, so the
/// publishing rename is atomic; named so that the next lock holder can clean it up.
pub(super) fn staging_file(dir: &Path) -> Result<NamedTempFile> {
    tempfile::Builder::new()
        .prefix(STAGING_PREFIX)
        .tempfile_in(dir)
        .at("create staging file in", dir)
}

/// Writes to a staging file while hashing and counting, up to an optional size limit.
pub(super) struct HashingWriter {
    file: NamedTempFile,
    hasher: Sha256,
    written: u64,
    limit: Option<u64>,
}

/// The error a [`HashingWriter`] gives when a write would pass its limit.
#[derive(Debug)]
struct TooLarge(u64);

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "larger than max_size ({} bytes)", self.0)
    }
}

impl std::error::Error for TooLarge {}

/// The limit, if `err` is a [`HashingWriter`] refusing to pass it.
pub(super) fn exceeded_limit(err: &io::Error) -> Option<u64> {
    err.get_ref()?.downcast_ref::<TooLarge>().map(|t| t.0)
}

/// "larger than max_size (N bytes)", the text of every size-limit error.
pub(super) fn too_large_reason(limit: u64) -> String {
    TooLarge(limit).to_string()
}

impl HashingWriter {
    pub(super) fn new(file: NamedTempFile, limit: Option<u64>) -> Self {
        HashingWriter {
            file,
            hasher: Sha256::new(),
            written: 0,
            limit,
        }
    }

    /// Continues `file` (a kept partial download): hashes the bytes it holds, so that the
    /// final digest is over the whole file, and appends after them.
    pub(super) fn resume(file: NamedTempFile, limit: Option<u64>) -> io::Result<Self> {
        let mut writer = HashingWriter::new(file, limit);
        let mut reader = writer.file.reopen()?;
        writer.written = io::copy(&mut reader, &mut writer.hasher)?;
        writer.file.as_file_mut().seek(SeekFrom::End(0))?;
        Ok(writer)
    }

    /// Starts over from an empty file (the server sent the whole body again).
    pub(super) fn restart(&mut self) -> io::Result<()> {
        let file = self.file.as_file_mut();
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        self.hasher = Sha256::new();
        self.written = 0;
        Ok(())
    }

    pub(super) fn written(&self) -> u64 {
        self.written
    }

    pub(super) fn path(&self) -> &Path {
        self.file.path()
    }

    /// The file so far, without finishing the digest (to keep a partial download).
    pub(super) fn into_file(self) -> NamedTempFile {
        self.file
    }

    pub(super) fn finish(self) -> Fetched {
        Fetched {
            file: self.file,
            sha256: hex(&self.hasher.finalize()),
        }
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(limit) = self.limit
            && self.written.saturating_add(buf.len() as u64) > limit
        {
            return Err(io::Error::new(io::ErrorKind::FileTooLarge, TooLarge(limit)));
        }
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A download in progress, or kept to be resumed (see `partial`; not a staging name, so
/// that `clean_staging` leaves it for the next call).
pub(super) const PARTIAL: &str = ".partial";
/// The partial download's sidecar: its URL and validator.
pub(super) const PARTIAL_META: &str = ".partial.meta";

/// Removes a kept partial download (under the identifier's lock).
pub(super) fn discard_partial(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(PARTIAL));
    let _ = std::fs::remove_file(dir.join(PARTIAL_META));
}

/// Removes what killed installers left behind. Only called under the identifier's lock, so
/// no live installer is writing these (unless the file system cannot lock; then its rename
/// fails and it reports an error, but no partial file is ever published).
pub(super) fn clean_staging(id_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(id_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(STAGING_PREFIX) || name.starts_with(dirs::WRITE_PROBE_PREFIX) {
            tracing::debug!("removing staging debris {}", entry.path().display());
            // Unpacked trees and replaced installs are directories.
            let _ = match entry.file_type() {
                Ok(kind) if kind.is_dir() => std::fs::remove_dir_all(entry.path()),
                _ => std::fs::remove_file(entry.path()),
            };
        }
    }
}
