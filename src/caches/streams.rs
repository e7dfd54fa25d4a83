//! Big values as streams and files: store what a `Read` yields, read a value as a `Read`,
//! and hand a value out as a file (a verified copy, or a hard link to the value file), all
//! without holding the value whole in memory. Stream values are raw bytes (like
//! [`DiskCache::set_bytes`]), always in their own value file, with the same CRC, expiry
//! and atomic-replace guarantees as every other value.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::record::{Format, Meta};
use super::store::Located;
use super::{DiskCache, LazyNow, expiry_ns, from_ns, now_ns};
use crate::error::{Error, IoContext, Result};

/// A value read as a stream (see [`DiskCache::get_reader`]). Its bytes are checked as
/// they are read: the read that reaches the end fails with
/// [`std::io::ErrorKind::InvalidData`] if they do not match the recorded length and CRC.
pub struct ValueReader {
    meta: Meta,
    inner: Box<dyn Read + Send>,
}

impl ValueReader {
    /// The value's length in bytes.
    pub fn len(&self) -> u64 {
        self.meta.payload_len
    }

    /// True for an empty value.
    pub fn is_empty(&self) -> bool {
        self.meta.payload_len == 0
    }

    /// When the value was stored.
    pub fn load_timestamp(&self) -> SystemTime {
        from_ns(self.meta.load_ns)
    }

    /// When the entry expires, if it does.
    pub fn expires_at(&self) -> Option<SystemTime> {
        (self.meta.expire_ns != 0).then(|| from_ns(self.meta.expire_ns))
    }
}

impl Read for ValueReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl std::fmt::Debug for ValueReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValueReader")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl DiskCache {
    /// Stores the bytes `reader` yields under `key`, streaming them into a value file
    /// through a fixed buffer (the value is never whole in memory, whatever its size), and
    /// returns how many there were. Readers see the old value until the new one is
    /// complete. If `reader` fails, nothing is stored and no file is left.
    pub fn set_reader(
        &self,
        key: &str,
        mut reader: impl Read,
        expire: Option<Duration>,
    ) -> Result<u64> {
        let now = now_ns();
        self.store
            .put_stream(key, now, expiry_ns(now, expire), &mut reader)
    }

    /// The bytes of `key` as a stream: a value stored by [`set_reader`](Self::set_reader)
    /// or [`set_bytes`](Self::set_bytes). `None` if it is missing or expired.
    ///
    /// Errors: [`Error::Decode`] for a value stored as MessagePack (read it with
    /// [`get`](Self::get)); damage shows as an `InvalidData` error of the last read.
    pub fn get_reader(&self, key: &str) -> Result<Option<ValueReader>> {
        // A value file can vanish between reading its record and opening it, when another
        // writer replaces or evicts the entry: then look again.
        for _ in 0..5 {
            let now = LazyNow::default();
            let Some((meta, format, located)) = self.store.locate(key, |m| now.live(m))? else {
                self.store.count(false);
                return Ok(None);
            };
            if format != Format::Raw {
                return Err(Error::Decode {
                    key: key.to_owned(),
                    type_name: "a stream of raw bytes",
                    source: "the value is stored as MessagePack: read it with get".into(),
                });
            }
            let inner: Box<dyn Read + Send> = match located {
                Located::Inline(bytes) => {
                    if bytes.len() as u64 != meta.payload_len {
                        return Err(Error::Corrupt {
                            path: self.directory().to_owned(),
                            detail: format!("record of key {key:?}: wrong value length"),
                        });
                    }
                    Box::new(std::io::Cursor::new(bytes))
                }
                Located::File { name, crc } => {
                    match self
                        .store
                        .open_value_file(key, &name, meta.payload_len, crc)?
                    {
                        Some(reader) => Box::new(reader),
                        None => continue,
                    }
                }
            };
            self.store.count(true);
            return Ok(Some(ValueReader { meta, inner }));
        }
        Ok(None)
    }

    /// Copies the bytes of `key` (as [`get_reader`](Self::get_reader) reads them) into a
    /// new file at `dest`, verified, without holding them whole in memory: written beside
    /// `dest` and renamed over it once complete and checked. Returns false (and creates
    /// nothing) if the key is missing or expired.
    pub fn copy_to(&self, key: &str, dest: impl AsRef<Path>) -> Result<bool> {
        let dest = dest.as_ref();
        let Some(mut reader) = self.get_reader(key)? else {
            return Ok(false);
        };
        let dir = match dest.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut file = tempfile::Builder::new()
            .prefix(".dbx-concurio-copy")
            .tempfile_in(dir)
            .at("create a temp file in", dir)?;
        if let Err(err) = std::io::copy(&mut reader, &mut file) {
            return Err(match err.kind() {
                std::io::ErrorKind::InvalidData => Error::Corrupt {
                    path: self.directory().to_owned(),
                    detail: err.to_string(),
                },
                _ => Error::io("copy the value of a key to", dest, err),
            });
        }
        file.flush().at("write", dest)?;
        file.persist(dest)
            .map_err(|e| Error::io("rename into", dest, e.error))?;
        Ok(true)
    }

    /// Makes `dest` a hard link to the value file of `key` (no copy: the cache's files are
    /// written once and never modified, so the link keeps the value even after the entry is
    /// replaced or deleted). The file is verified first. `dest` must not exist and must be
    /// on the cache's file system; do not modify the linked file (that would damage the
    /// cached value). A small value without a file of its own is copied instead. Returns
    /// false if the key is missing or expired.
    pub fn hard_link_to(&self, key: &str, dest: impl AsRef<Path>) -> Result<bool> {
        let dest = dest.as_ref();
        for _ in 0..5 {
            let now = LazyNow::default();
            let Some((meta, format, located)) = self.store.locate(key, |m| now.live(m))? else {
                return Ok(false);
            };
            let Located::File { name, crc } = located else {
                return self.copy_to(key, dest);
            };
            if format != Format::Raw {
                return Err(Error::Decode {
                    key: key.to_owned(),
                    type_name: "a file of raw bytes",
                    source: "the value is stored as MessagePack: read it with get".into(),
                });
            }
            let Some(mut check) = self
                .store
                .open_value_file(key, &name, meta.payload_len, crc)?
            else {
                continue; // replaced meanwhile: look again
            };
            std::io::copy(&mut check, &mut std::io::sink()).map_err(|err| Error::Corrupt {
                path: self.directory().to_owned(),
                detail: err.to_string(),
            })?;
            match std::fs::hard_link(self.store.value_file_path(&name), dest) {
                Ok(()) => return Ok(true),
                Err(err)
                    if err.kind() == std::io::ErrorKind::NotFound
                        && dest.parent().is_none_or(Path::exists) =>
                {
                    continue;
                }
                Err(err) => return Err(Error::io("hard-link a value to", dest, err)),
            }
        }
        Ok(false)
    }
}
