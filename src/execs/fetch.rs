//! Sources (URLs and paths) and getting their bytes into a staging file, hashed on the way.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::staging::{
    FetchOptions, Fetched, HashingWriter, exceeded_limit, staging_file, too_large_reason,
};
use crate::error::{Error, IoContext, Result};
use crate::sys;

/// Where the bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    /// An `http://` or `https://` URL.
    Http(String),
    /// A local file (a plain path or a `file://` URL).
    Local(PathBuf),
}

impl Source {
    pub(super) fn parse(source: &str) -> Result<Source> {
        let lower = source.get(..8).unwrap_or(source).to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            return Ok(Source::Http(source.to_owned()));
        }
        if lower.starts_with("file://") {
            return file_url_path(source).map(Source::Local);
        }
        if source.is_empty() || looks_like_url(source) {
            return Err(Error::InvalidInput(format!(
                "unsupported source {source:?}: use an http://, https:// or file:// URL or a path"
            )));
        }
        Ok(Source::Local(PathBuf::from(source)))
    }

    /// The last segment of the URL path or the file name, undecoded and unsanitized.
    pub(super) fn last_segment(&self) -> Option<String> {
        match self {
            Source::Http(url) => {
                let path = url.split(['?', '#']).next().unwrap_or(url);
                let after_scheme = path.split_once("://").map_or(path, |(_, rest)| rest);
                let (_, path) = after_scheme.split_once('/')?;
                let segment = path.rsplit('/').next()?;
                Some(percent_decode(segment)).filter(|s| !s.is_empty())
            }
            Source::Local(path) => path.file_name().map(|n| n.to_string_lossy().into_owned()),
        }
    }
}

/// `scheme://...` with a scheme we do not know (a Windows path `C:\x` has no `//`).
fn looks_like_url(source: &str) -> bool {
    source.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    })
}

/// `file:///abs/path` or `file://localhost/abs/path`, percent-decoded.
fn file_url_path(url: &str) -> Result<PathBuf> {
    let rest = &url["file://".len()..];
    let rest = rest.strip_prefix("localhost").unwrap_or(rest);
    if !rest.starts_with('/') {
        return Err(Error::InvalidInput(format!(
            "file URL {url:?} must be file:///absolute/path (remote hosts are not supported)"
        )));
    }
    let decoded = percent_decode(rest.split(['?', '#']).next().unwrap_or(rest));
    Ok(sys::path_from_file_url(decoded))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes.get(i + 1..i + 3).and_then(|h| {
            std::str::from_utf8(h)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        });
        match (bytes[i], escaped) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Fetches `source` into a new staging file in `dir`.
pub(super) fn fetch(source: &Source, dir: &Path, options: &FetchOptions<'_>) -> Result<Fetched> {
    match source {
        Source::Local(path) => copy_local(path, dir, options.max_size),
        Source::Http(url) => download(url, dir, options),
    }
}

#[cfg(feature = "download")]
fn download(url: &str, dir: &Path, options: &FetchOptions<'_>) -> Result<Fetched> {
    super::http::download(url, dir, options)
}

#[cfg(not(feature = "download"))]
fn download(url: &str, _dir: &Path, _options: &FetchOptions<'_>) -> Result<Fetched> {
    Err(Error::Unsupported(format!(
        "cannot download {url}: dbx-concurio was built without its `download` feature"
    )))
}

fn copy_local(path: &Path, dir: &Path, max_size: Option<u64>) -> Result<Fetched> {
    let mut input = File::open(path).at("open", path)?;
    let mut out = HashingWriter::new(staging_file(dir)?, max_size);
    match io::copy(&mut input, &mut out) {
        Ok(_) => Ok(out.finish()),
        Err(err) => match exceeded_limit(&err) {
            Some(limit) => Err(Error::InvalidInput(format!(
                "{}: {}; refusing to copy it",
                path.display(),
                too_large_reason(limit)
            ))),
            None => Err(Error::io("copy", path, err)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert_eq!(
            Source::parse("HTTPS://e.com/x").ok(),
            Some(Source::Http("HTTPS://e.com/x".into()))
        );
        assert_eq!(
            Source::parse("file:///tmp/a%20b").ok(),
            Some(Source::Local("/tmp/a b".into()))
        );
        assert_eq!(
            Source::parse("file://localhost/tmp/x").ok(),
            Some(Source::Local("/tmp/x".into()))
        );
        assert!(Source::parse("file://host/x").is_err());
        assert!(Source::parse("ftp://e.com/x").is_err());
        assert!(Source::parse("").is_err());
        assert_eq!(
            Source::parse("rel/tool").ok(),
            Some(Source::Local("rel/tool".into()))
        );
    }

    #[test]
    fn last_segment_ignores_query_and_host() {
        let seg = |s: &str| Source::parse(s).ok().and_then(|s| s.last_segment());
        assert_eq!(
            seg("https://e.com/a/tool%2B1?x=/y#z"),
            Some("tool+1".into())
        );
        assert_eq!(seg("https://e.com"), None);
        assert_eq!(seg("https://e.com/dir/"), None);
        assert_eq!(seg("/opt/bin/tool"), Some("tool".into()));
    }
}
