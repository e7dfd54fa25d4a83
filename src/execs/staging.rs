//! Staging files: where fetched and extracted bytes are written (hashed and counted on the
//! way) before they are published, and what a fetch is given and gives back.

use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use super::marker::STAGING_PREFIX;
use crate::dirs::hex;
use crate::error::{IoContext, Result};

/// How to fetch (network options; ignored for local files).
#[derive(Debug)]
pub(super) struct FetchOptions<'a> {
    pub(super) timeout: Duration,
    pub(super) retries: u32,
    pub(super) headers: &'a [(String, String)],
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

/// Writes to a staging file while hashing and counting.
pub(super) struct HashingWriter {
    file: NamedTempFile,
    hasher: Sha256,
    written: u64,
}

impl HashingWriter {
    pub(super) fn new(file: NamedTempFile) -> Self {
        HashingWriter {
            file,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    pub(super) fn written(&self) -> u64 {
        self.written
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
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}
