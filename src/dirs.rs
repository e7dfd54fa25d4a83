//! Where caches and executables live: the spec's "Cache Directory Resolution".
//!
//! 1. a file path gives `<base>/dbx_concurio-<hash of the absolute path>`;
//! 2. a directory gives that directory;
//! 3. nothing gives `<base>/dbx_concurio`;
//! 4. then the optional `name` is appended, and everything is created.
//!
//! `<base>` is `$DBX_CONCURIO_CACHE_DIR` when set and non-empty (a relative path is taken from
//! the current directory), else [`std::env::temp_dir`]. Directories under `<base>` are
//! created mode 0700 and must be ours: a shared `/tmp` is a place where another user could
//! plant a directory for us to install executables into. When `<base>/dbx_concurio` is not
//! ours (the first user of a shared `/tmp` created it), the default root is the per-user
//! `<base>/dbx_concurio-<uid>` instead, with a warning; it must be ours too.

use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::sys;

/// Environment variable that replaces the temp dir as the base of every default location.
pub const CACHE_DIR_ENV: &str = "DBX_CONCURIO_CACHE_DIR";

/// Prefix of the temp file `prepare` writes to test a directory; one left by a killed
/// process is debris that cleanups remove.
/// Prefix of the probe files earlier versions wrote to test a directory (debris to sweep).
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

/// The base of every default location: `$DBX_CONCURIO_CACHE_DIR` (absolute, against the
/// current directory if it is relative), or the temp dir.
pub fn base_dir() -> PathBuf {
    env_base().unwrap_or_else(std::env::temp_dir)
}

/// `$DBX_CONCURIO_CACHE_DIR` as an absolute path, if it is set and not empty.
fn env_base() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os(CACHE_DIR_ENV).filter(|d| !d.is_empty())?);
    Some(std::path::absolute(&dir).unwrap_or(dir))
}

/// The default cache root, also the root of installed executables: `<base>/dbx_concurio`,
/// or `<base>/dbx_concurio-<uid>` if `<base>/dbx_concurio` exists but is not a directory
/// only we control (another user's, on a shared temp dir). Only looks, creates nothing.
pub fn default_root() -> PathBuf {
    let base = base_dir();
    let shared = base.join(MODULE_DIR);
    let reason = match std::fs::symlink_metadata(&shared) {
        Ok(meta) => sys::unsafe_dir_reason(&meta),
        Err(_) => None, // missing (ours to create), or an error `prepare` reports
    };
    let (Some(reason), Some(uid)) = (reason, sys::user_id()) else {
        return shared;
    };
    let own = base.join(format!("{MODULE_DIR}-{uid}"));
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(
            "not using {}: {reason}; using {} instead",
            shared.display(),
            own.display()
        );
    });
    own
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
    // Asked of the kernel with our effective ids: read-only mounts (EROFS), modes and ACLs.
    // Writing a probe file instead would make every open write, even a read-only one.
    sys::check_writable(dir).at("write in", dir)
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
    check_base(&base, create)?;
    // Check each component before creating the next one inside it, so a planted symlink or
    // foreign directory is refused before anything goes through it.
    let mut path = base.clone();
    for component in below.components() {
        path.push(component);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(err) if create && err.kind() == std::io::ErrorKind::NotFound => {
                if let Err(err) = sys::create_private_dir_all(&path) {
                    return Err(base_error(&base, &path, err));
                }
                std::fs::symlink_metadata(&path).at("inspect", &path)?
            }
            Err(err) => return Err(Error::io("inspect", path, err)),
        };
        if let Some(reason) = sys::unsafe_dir_reason(&meta) {
            let reason = format!(
                "{reason} (set {CACHE_DIR_ENV} to a directory of your own to use another place)"
            );
            return Err(Error::UnsafeDirectory { path, reason });
        }
    }
    Ok(())
}

/// Checks (and with `create`, creates) the base of the default locations. A base the user
/// chose with `DBX_CONCURIO_CACHE_DIR` that cannot be used is an [`Error::BaseDirectory`]
/// that says what is wrong with it.
fn check_base(base: &Path, create: bool) -> Result<()> {
    let not_a_dir = || std::io::Error::from(std::io::ErrorKind::NotADirectory);
    match std::fs::metadata(base) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) if is_env_base(base) => Err(base_dir_error(
            base,
            "exists and is not a directory".into(),
            not_a_dir(),
        )),
        Ok(_) => Err(Error::io("use as directory", base, not_a_dir())),
        Err(err) if create && err.kind() == std::io::ErrorKind::NotFound => {
            match sys::create_private_dir_all(base) {
                Ok(()) => Ok(()),
                Err(err) if is_env_base(base) => {
                    let problem = format!("does not exist and cannot be created: {err}");
                    Err(base_dir_error(base, problem, err))
                }
                Err(err) => Err(Error::io("create directory", base, err)),
            }
        }
        Err(err) => Err(Error::io("inspect", base, err)),
    }
}

/// The error for a directory below `base` that could not be created: when `base` is the
/// user's `DBX_CONCURIO_CACHE_DIR` and we may not write in it, that is what to say.
fn base_error(base: &Path, path: &Path, err: std::io::Error) -> Error {
    let denied = matches!(
        err.kind(),
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
    );
    if denied && path.parent() == Some(base) && is_env_base(base) {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let problem = format!("is not writable (cannot create {name} in it: {err})");
        return base_dir_error(base, problem, err);
    }
    Error::io("create directory", path, err)
}

fn is_env_base(base: &Path) -> bool {
    env_base().as_deref() == Some(base)
}

fn base_dir_error(base: &Path, problem: String, source: std::io::Error) -> Error {
    Error::BaseDirectory {
        var: CACHE_DIR_ENV,
        path: base.to_path_buf(),
        problem,
        source,
    }
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
