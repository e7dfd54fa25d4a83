//! Value files: values whose encoding exceeds `INLINE_MAX` live in `blobs/v-<random>.blob`,
//! written once before the index record that names them is committed, never modified,
//! unlinked after the commit that drops their record.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, IoContext, Result};

/// How old an unreferenced file must be before a sweep treats it as debris: a concurrent
/// write creates its value file just before committing the record that names it.
pub(crate) const DEBRIS_AGE: Duration = Duration::from_secs(60);

/// The value files of one cache.
#[derive(Debug, Clone)]
pub(crate) struct Blobs {
    dir: PathBuf,
}

impl Blobs {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Blobs { dir }
    }

    /// Writes a value file under a fresh random name (created with O_EXCL), so readers
    /// never see it before the record naming it is committed. Returns (name, CRC-32).
    pub(crate) fn write(&self, payload: &[u8], sync: bool) -> Result<(String, u32)> {
        let (name, crc, _) = self.write_from(&mut &payload[..], sync)?;
        Ok((name, crc))
    }

    /// Writes a value file from `source`, streaming through a fixed buffer (nothing is held
    /// whole), hashing as it goes; same naming and visibility rules as [`write`](Self::write).
    /// Returns (name, CRC-32, length). A failing source leaves no file behind.
    pub(crate) fn write_from(
        &self,
        source: &mut dyn Read,
        sync: bool,
    ) -> Result<(String, u32, u64)> {
        let mut file = tempfile::Builder::new()
            .prefix("v-")
            .suffix(".blob")
            .rand_bytes(16)
            .tempfile_in(&self.dir)
            .at("create value file in", &self.dir)?;
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut len = 0u64;
        loop {
            let n = match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(Error::io("read the value to store in", &self.dir, err)),
            };
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).at("write", file.path())?;
            len += n as u64;
        }
        if sync {
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
        Ok((name, hasher.finalize(), len))
    }

    /// Opens value file `name` for streaming, checked as it is read: a reader that ends
    /// with an `InvalidData` error if the bytes fail the record's length or CRC.
    /// `Ok(None)`: the file is gone (the entry was replaced or evicted meanwhile).
    pub(crate) fn open_checked(
        &self,
        name: &str,
        len: u64,
        crc: u32,
        key: &str,
    ) -> Result<Option<CheckedReader>> {
        let path = self.dir.join(name);
        match fs::File::open(&path) {
            Ok(file) => Ok(Some(CheckedReader {
                file: std::io::BufReader::with_capacity(256 << 10, file),
                hasher: crc32fast::Hasher::new(),
                remaining: len,
                crc,
                what: format!("value file of key {key:?} ({})", path.display()),
            })),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(Error::io("open", path, err)),
        }
    }

    /// The bytes of value file `name`, checked against the record's length and CRC.
    /// `Ok(None)`: the file is gone (a writer replaced or evicted the entry meanwhile).
    pub(crate) fn read(
        &self,
        name: &str,
        len: u64,
        crc: u32,
        key: &str,
    ) -> Result<Option<BlobBytes>> {
        let path = self.dir.join(name);
        let bytes = match read_file(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(Error::io("read", path, err)),
        };
        if bytes.len() as u64 != len || crc32fast::hash(&bytes) != crc {
            return Err(Error::Corrupt {
                path,
                detail: format!("value file of key {key:?} fails its length or checksum"),
            });
        }
        Ok(Some(bytes))
    }

    /// Whether value file `name` exists with the given length and CRC (for `check`).
    pub(crate) fn verify(&self, name: &str, len: u64, crc: u32) -> bool {
        fs::read(self.dir.join(name))
            .is_ok_and(|b| b.len() as u64 == len && crc32fast::hash(&b) == crc)
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Unlinks value files whose records are gone (after the commit that dropped them).
    pub(crate) fn remove(&self, names: impl IntoIterator<Item = String>) {
        for name in names {
            let path = self.dir.join(name);
            if let Err(err) = fs::remove_file(&path)
                && err.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("cannot remove {}: {err}", path.display());
            }
        }
    }

    /// Deletes value files no record names, older than [`DEBRIS_AGE`]; returns how many.
    pub(crate) fn sweep(&self, referenced: &HashSet<String>) -> Result<u64> {
        sweep_dir(&self.dir, |name| !referenced.contains(name))
    }
}

/// Deletes the files of `dir` that `is_debris` names, older than [`DEBRIS_AGE`].
pub(crate) fn sweep_dir(dir: &Path, is_debris: impl Fn(&str) -> bool) -> Result<u64> {
    let old = |path: &Path| {
        fs::symlink_metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() > DEBRIS_AGE)
    };
    let mut removed = 0;
    for entry in fs::read_dir(dir).at("list", dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_debris(&name) && old(&entry.path()) && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Bytes of a value file. Large files are memory-mapped and decoded in place: reading a
/// 16 MiB file into a fresh buffer costs more in page faults than the copy itself.
fn read_file(path: &Path) -> std::io::Result<BlobBytes> {
    const MAP_FROM: u64 = 1 << 20;
    let file = fs::File::open(path)?;
    if file.metadata()?.len() < MAP_FROM {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut bytes)?;
        return Ok(BlobBytes::Read(bytes));
    }
    // SAFETY: value files are written once, before the record naming them is committed, and
    // never modified afterwards: replacing or evicting an entry unlinks its file, which keeps
    // existing mappings valid. Only someone truncating files in our 0700 directory by hand
    // could make the mapping fault.
    Ok(BlobBytes::Mapped(unsafe { memmap2::Mmap::map(&file)? }))
}

/// A value file read as a stream, verified on the way: the last `read` fails with
/// `InvalidData` instead of returning the end if the length or the CRC do not match.
pub(crate) struct CheckedReader {
    file: std::io::BufReader<fs::File>,
    hasher: crc32fast::Hasher,
    remaining: u64,
    crc: u32,
    what: String,
}

impl Read for CheckedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        if n == 0 {
            let crc = std::mem::take(&mut self.hasher).finalize();
            if self.remaining != 0 || crc != self.crc {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} fails its length or checksum", self.what),
                ));
            }
            self.crc = crc32fast::hash(&[]); // a second read at the end stays the end
            return Ok(0);
        }
        match self.remaining.checked_sub(n as u64) {
            Some(rest) => self.remaining = rest,
            None => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is longer than recorded", self.what),
                ));
            }
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

pub(crate) enum BlobBytes {
    Read(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for BlobBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            BlobBytes::Read(bytes) => bytes,
            BlobBytes::Mapped(map) => map,
        }
    }
}
