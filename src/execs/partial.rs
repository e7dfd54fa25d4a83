//! A download kept after a failure, to be resumed with an HTTP `Range` request.
//!
//! The bytes go to `<id dir>/.partial` (not a `.staging-*` name: the next lock holder must
//! not clean it away). It is only worth keeping when the server said it can resume
//! (`Accept-Ranges: bytes`) and gave a validator (a strong `ETag` or `Last-Modified`), sent
//! back as `If-Range`: if the file changed since, the server answers `200` with the whole new
//! body and we start over from an empty file. Across calls the URL, the validator and the
//! boot id live in `<id dir>/.partial.meta`, written before the first byte of a resumable
//! body, so that a killed call can be resumed too. A kept file for another URL, from another
//! boot (a power cut may have lost unsynced bytes), or without metadata is discarded.
//! Only the holder of the identifier's lock reads or writes either file. The digest is always
//! over the whole file (the kept bytes are hashed again when resuming).

use std::fs::OpenOptions;
use std::path::Path;

use tempfile::{NamedTempFile, TempPath};

use super::marker::STAGING_PREFIX;
use super::staging::{
    Fetched, HashingWriter, PARTIAL, PARTIAL_META, discard_partial, staging_file,
};
use crate::atomic::write_atomically;
use crate::error::{IoContext, Result};
use crate::sys;

const HEADER: &str = "dbx-concurio partial v1";

/// What makes a kept partial download resumable: the `If-Range` value to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Validator(String);

impl Validator {
    /// From a response's headers: `None` unless the server accepts byte ranges and names the
    /// version of the file (a weak ETag cannot be used with `If-Range`, RFC 9110 13.1.5).
    pub(super) fn from_headers(
        accept_ranges: Option<&str>,
        etag: Option<&str>,
        last_modified: Option<&str>,
    ) -> Option<Validator> {
        let ranges = accept_ranges?
            .split(',')
            .any(|unit| unit.trim().eq_ignore_ascii_case("bytes"));
        if !ranges {
            return None;
        }
        let strong_etag = etag.map(str::trim).filter(|e| e.starts_with('"'));
        strong_etag
            .or(last_modified.map(str::trim))
            .filter(|v| !v.is_empty() && !v.contains(['\n', '\r']))
            .map(|v| Validator(v.to_owned()))
    }

    pub(super) fn as_str(&self) -> &str {
        &self.0
    }
}

/// The partial download being written, and the validator of the bytes it holds.
pub(super) struct Partial {
    pub(super) writer: HashingWriter,
    pub(super) validator: Option<Validator>,
    /// Written to `.partial` (we hold the identifier's lock), so it may outlive the call; else
    /// a private staging file, resumable only within this call.
    keepable: bool,
}

impl Partial {
    /// A new, empty `.partial` in `dir` (replacing any); a private staging file instead if
    /// we do not hold the identifier's lock exclusively (`keepable` false).
    pub(super) fn create(dir: &Path, limit: Option<u64>, keepable: bool) -> Result<Partial> {
        let file = if keepable {
            let path = dir.join(PARTIAL);
            let file = open(&path, true).at("create", &path)?;
            let _ = std::fs::remove_file(dir.join(PARTIAL_META));
            file
        } else {
            staging_file(dir)?
        };
        Ok(Partial {
            writer: HashingWriter::new(file, limit),
            validator: None,
            keepable,
        })
    }

    /// The partial download an earlier call kept for `url`, if there is a usable one.
    /// Anything else found there is removed.
    pub(super) fn load(dir: &Path, url: &str, limit: Option<u64>) -> Option<Partial> {
        let path = dir.join(PARTIAL);
        let meta = std::fs::read_to_string(dir.join(PARTIAL_META)).ok();
        let boot = sys::boot_id().unwrap_or_default();
        let validator = meta.as_deref().and_then(|m| decode_meta(m, url, &boot));
        let partial = validator.and_then(|validator| {
            let file = open(&path, false).ok()?;
            let writer = HashingWriter::resume(file, limit).ok()?;
            Some(Partial {
                writer,
                validator: Some(validator),
                keepable: true,
            })
        });
        if partial.is_none() {
            discard_partial(dir);
        }
        partial
    }

    /// Where to resume: the byte offset and the `If-Range` value, if there is anything to
    /// resume.
    pub(super) fn resume_from(&self) -> Option<(u64, &Validator)> {
        let offset = self.writer.written();
        self.validator
            .as_ref()
            .filter(|_| offset > 0)
            .map(|v| (offset, v))
    }

    /// Records the validator of the bytes about to be written from offset 0. A resumable
    /// one is written to `.partial.meta` at once, before any byte: a call that is killed
    /// (Ctrl-C, SIGKILL) can then be resumed too, not only one that gives up.
    pub(super) fn set_validator(&mut self, dir: &Path, url: &str, validator: Option<Validator>) {
        let meta_path = dir.join(PARTIAL_META);
        if !self.keepable {
            self.validator = validator;
            return;
        }
        match &validator {
            Some(v) => {
                let boot = sys::boot_id().unwrap_or_default();
                let meta = format!(
                    "{HEADER}\nurl={url}\nvalidator={}\nboot={boot}\n",
                    v.as_str()
                );
                if let Err(err) = write_atomically(&meta_path, meta.as_bytes(), STAGING_PREFIX) {
                    // Still resumable within this call; only a later call starts over.
                    tracing::warn!("cannot record how to resume {url}: {err}");
                }
            }
            None => {
                let _ = std::fs::remove_file(&meta_path);
            }
        }
        self.validator = validator;
    }

    /// After a failed download: keeps the file (its metadata is written already) for the
    /// next call if it can be resumed, else removes both.
    pub(super) fn keep(self, dir: &Path, url: &str) {
        if !self.keepable {
            return; // dropping the writer removes the staging file
        }
        let Some((offset, _)) = self.resume_from() else {
            discard_partial(dir);
            return;
        };
        let (file, path) = self.writer.into_file().into_parts();
        drop(file);
        if path.keep().is_ok() {
            tracing::info!("kept {offset} bytes of {url} to resume later");
        }
    }

    /// The complete download; its metadata is no longer needed.
    pub(super) fn finish(self, dir: &Path) -> Fetched {
        if self.keepable {
            let _ = std::fs::remove_file(dir.join(PARTIAL_META));
        }
        self.writer.finish()
    }
}

/// Opens (or creates empty) the partial file, to be removed when dropped unless kept.
fn open(path: &Path, create: bool) -> std::io::Result<NamedTempFile> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(create)
        .open(path)?;
    Ok(NamedTempFile::from_parts(
        file,
        TempPath::try_from_path(path)?,
    ))
}

/// The validator recorded for `url`; `None` for another URL (the identifier's source
/// changed), another boot (unsynced bytes of the file may have been lost in a power cut), or
/// garbage.
fn decode_meta(text: &str, url: &str, boot: &str) -> Option<Validator> {
    let mut lines = text.lines();
    if lines.next()? != HEADER || lines.next()?.strip_prefix("url=")? != url {
        return None;
    }
    let value = lines.next()?.strip_prefix("validator=")?;
    if lines.next()?.strip_prefix("boot=")? != boot {
        return None;
    }
    Some(Validator(value.to_owned())).filter(|v| !v.0.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_byte_ranges_with_a_strong_validator_resume() {
        let v = |a, e, l| Validator::from_headers(a, e, l).map(|v| v.0);
        assert_eq!(
            v(Some("bytes"), Some("\"x1\""), None),
            Some("\"x1\"".into())
        );
        assert_eq!(
            v(Some("bytes"), Some("W/\"x1\""), Some("Tue, 1 Jan 2030")),
            Some("Tue, 1 Jan 2030".into())
        );
        assert_eq!(v(Some("bytes"), Some("W/\"x1\""), None), None);
        assert_eq!(v(Some("none"), Some("\"x1\""), None), None);
        assert_eq!(v(None, Some("\"x1\""), None), None);
        assert_eq!(v(Some("bytes"), None, None), None);
    }

    #[test]
    fn metadata_is_for_one_url_and_one_boot() {
        let text = format!("{HEADER}\nurl=http://a/x\nvalidator=\"e\"\nboot=b1\n");
        assert_eq!(
            decode_meta(&text, "http://a/x", "b1"),
            Some(Validator("\"e\"".into()))
        );
        assert_eq!(decode_meta(&text, "http://a/y", "b1"), None);
        assert_eq!(decode_meta(&text, "http://a/x", "b2"), None);
        assert_eq!(decode_meta("garbage", "http://a/x", "b1"), None);
    }
}
