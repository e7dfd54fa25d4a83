//! Where caches and executables live: the spec's "Cache Directory Resolution".
//!
//! 1. a file path gives `<base>/dbx_concurio-<hash of the absolute path>`;
//! 2. a directory gives that directory;
//! 3. nothing gives `<base>/dbx_concurio`;
//! 4. then the optional `name` is appended, and everything is created.
//!
//! `<base>` is `$DBX_CONCURIO_CACHE_DIR` when set and non-empty, else [`std::env::temp_dir`].
//! Directories under `<base>` are created mode 0700 and must be ours: a shared `/tmp` is a
//! place where another user could plant a directory for us to install executables into.

use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::sys;

/// Environment variable that replaces the temp dir as the base of every default location.
pub const CACHE_DIR_ENV: &str = "DBX_CONCURIO_CACHE_DIR";

/// Prefix of the temp file `prepare` writes to test a directory; one left by a killed
/// process is debris that cleanups remove.
pub(crate) const WRITE_PROBE_PREFIX: &str = ".write-probe";

/// The module name used for the default location.
pub(crate) const MODULE_DIR: &str = "dbx_concurio";

/// What the caller asked for, before resolution.
#[derive(Debug, Clone, Default)]
pub(crate) enum Location {
    /// No path: `<base>/dbx_concurio`.
    #[default]
    Default,
    /// Exactly this directory.
    Directory(PathBuf),
    /// A file the cache belongs to: `<base>/dbx_concurio-<hash>`.
    File(PathBuf),
    /// The spec's rule: an existing file is a file, anything else a directory.
    Auto(PathBuf),
}

/// The base of every default location.
pub fn base_dir() -> PathBuf {
    match std::env::var_os(CACHE_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => std::env::temp_dir(),
    }
}

/// `<base>/dbx_concurio`: the default cache root, also the root of installed executables.
pub fn default_root() -> PathBuf {
    base_dir().join(MODULE_DIR)
}

/// The directory a `Location` and `name` resolve to, without touching the disk (except to
/// tell a file from a directory for [`Location::Auto`]).
pub(crate) fn resolve(location: &Location, name: Option<&str>) -> Result<PathBuf> {
    let dir = match location {
        Location::Default => default_root(),
        Location::Directory(dir) => dir.clone(),
        Location::File(file) => file_dir(file)?,
        Location::Auto(path) if path.is_file() => file_dir(path)?,
        Location::Auto(path) => path.clone(),
    };
    match name {
        None => Ok(dir),
        Some(name) => Ok(dir.join(check_name(name)?)),
    }
}

fn file_dir(file: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(file).at("resolve", file)?;
    let digest = Sha256::digest(absolute.as_os_str().as_encoded_bytes());
    Ok(base_dir().join(format!("{MODULE_DIR}-{}", hex(&digest[..8]))))
}

/// A cache name is one or more plain relative components: it may not climb out of its parent.
fn check_name(name: &str) -> Result<&Path> {
    let path = Path::new(name);
    let plain = !name.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
    if plain {
        Ok(path)
    } else {
        Err(Error::InvalidInput(format!(
            "cache name {name:?} must be a non-empty relative path without '..'"
        )))
    }
}

/// Creates `dir` (mode 0700) and checks that we can write in it. Directories below the base
/// of the default locations must also be ours and not writable by others.
pub(crate) fn prepare(dir: &Path) -> Result<()> {
    walk_private(dir, true)?;
    // A probe file: the only reliable "can write here" test (read-only mounts, ACLs, quotas).
    tempfile::Builder::new()
        .prefix(WRITE_PROBE_PREFIX)
        .tempfile_in(dir)
        .at("write in", dir)?;
    Ok(())
}

/// Checks, without creating or writing anything, that an existing `dir` is a directory and,
/// below the base of the default locations, that every directory down to it is ours and not
/// writable by others. Read-only callers (a lock-free "is it installed?" check) use this.
pub(crate) fn check_private(dir: &Path) -> Result<()> {
    walk_private(dir, false)
}

fn walk_private(dir: &Path, create: bool) -> Result<()> {
    let base = base_dir();
    let Ok(below) = dir.strip_prefix(&base) else {
        if create {
            sys::create_private_dir_all(dir).at("create directory", dir)?;
        }
        if !std::fs::metadata(dir).at("inspect", dir)?.is_dir() {
            return Err(Error::io(
                "use as directory",
                dir,
                std::io::Error::from(std::io::ErrorKind::NotADirectory),
            ));
        }
        return Ok(());
    };
    if create {
        sys::create_private_dir_all(&base).at("create directory", &base)?;
    }
    // Check each component before creating the next one inside it, so a planted symlink or
    // foreign directory is refused before anything goes through it.
    let mut path = base;
    for component in below.components() {
        path.push(component);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(err) if create && err.kind() == std::io::ErrorKind::NotFound => {
                sys::create_private_dir_all(&path).at("create directory", &path)?;
                std::fs::symlink_metadata(&path).at("inspect", &path)?
            }
            Err(err) => return Err(Error::io("inspect", path, err)),
        };
        if let Some(reason) = sys::unsafe_dir_reason(&meta) {
            return Err(Error::UnsafeDirectory { path, reason });
        }
    }
    Ok(())
}

/// Resolves and prepares; if an explicit location is unusable and `fallback` is set, warns
/// and uses the default location with the same name instead.
pub(crate) fn resolve_and_prepare(
    location: &Location,
    name: Option<&str>,
    fallback: bool,
) -> Result<PathBuf> {
    let dir = resolve(location, name)?;
    match prepare(&dir) {
        Ok(()) => Ok(dir),
        Err(err) if fallback && !matches!(location, Location::Default) => {
            let default = resolve(&Location::Default, name)?;
            tracing::warn!(
                "cannot use {}: {err}; falling back to {}",
                dir.display(),
                default.display()
            );
            prepare(&default)?;
            Ok(default)
        }
        Err(err) => Err(err),
    }
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
