//! Listing installed executables and removing old or unwanted ones.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::id_lock::IdLock;
use super::layout::{executables_dir, find_installed, identifier_hash, lock_path};
use super::marker::{MARKER, Marker};
use super::staging::{clean_staging, discard_partial};
use crate::error::{Error, IoContext, Result};

/// An installed executable, as recorded when it was installed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Installed {
    /// The identifier it was installed under.
    pub identifier: String,
    /// The URL or path it came from.
    pub source: String,
    /// SHA-256 (hex) of the downloaded bytes (of the archive, for an archive member).
    pub sha256: String,
    /// The installed file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// When the install completed.
    pub installed_at: SystemTime,
}

impl Installed {
    fn new(marker: Marker, path: PathBuf) -> Self {
        Installed {
            identifier: marker.identifier,
            source: marker.source,
            sha256: marker.sha256,
            path,
            size: marker.size,
            installed_at: marker.installed_at,
        }
    }
}

/// The executables installed under `cache_root` (`None`: the default root). Incomplete
/// installs are not listed.
pub fn installed(cache_root: Option<&Path>) -> Result<Vec<Installed>> {
    let executables = executables_dir(cache_root)?;
    let mut out = Vec::new();
    for (_, id_dir) in identifier_dirs(&executables)? {
        match find_installed(&id_dir) {
            Ok(Some((marker, path))) => out.push(Installed::new(marker, path)),
            Ok(None) => {}
            // Never listed (so never run), but one planted directory must not hide the rest;
            // installing that identifier still fails with this error.
            Err(err @ Error::UnsafeDirectory { .. }) => tracing::warn!("skipping: {err}"),
            Err(err) => return Err(err),
        }
    }
    out.sort_by(|a, b| a.identifier.cmp(&b.identifier));
    Ok(out)
}

/// Removes installed executables that are older than a duration or not in a keep-list.
///
/// Each removal holds the identifier's install lock, so it never races an install of the
/// same identifier; identifiers being installed right now are skipped. Do not collect an
/// executable that is still in use: a process may be about to run it.
///
/// ```no_run
/// use std::time::Duration;
/// # fn main() -> dbx_concurio::Result<()> {
/// let removed = dbx_concurio::execs::Gc::new()
///     .older_than(Duration::from_secs(30 * 24 * 3600))
///     .run()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
#[must_use = "nothing is removed until `.run()` is called"]
pub struct Gc {
    cache_root: Option<PathBuf>,
    older_than: Option<Duration>,
    keep: Option<HashSet<String>>,
    dry_run: bool,
}

impl Gc {
    /// A collection that removes nothing until given a criterion.
    pub fn new() -> Self {
        Gc::default()
    }

    /// Works under `root` instead of the default root (as [`Executable::cache_root`]).
    ///
    /// [`Executable::cache_root`]: super::Executable::cache_root
    pub fn cache_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.cache_root = Some(root.into());
        self
    }

    /// Removes executables installed more than `age` ago.
    pub fn older_than(mut self, age: Duration) -> Self {
        self.older_than = Some(age);
        self
    }

    /// Removes executables whose identifier is not in `identifiers`.
    pub fn keep<I, S>(mut self, identifiers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.keep = Some(identifiers.into_iter().map(Into::into).collect());
        self
    }

    /// Only reports what [`run`](Self::run) would remove; removes nothing.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Removes what the criteria select (either one suffices) and returns it. Leftovers of
    /// failed installs (directories without an install, staging files, kept partial
    /// downloads, lock files of identifiers with nothing installed) are removed too, even
    /// without a criterion.
    pub fn run(self) -> Result<Vec<Installed>> {
        let executables = executables_dir(self.cache_root.as_deref())?;
        let now = SystemTime::now();
        let mut removed = Vec::new();
        for hash in identifier_hashes(&executables)? {
            let id_dir = executables.join(&hash);
            let Some(lock) = IdLock::try_acquire(&lock_path(&executables, &hash))? else {
                tracing::debug!("skipping {}: being installed", id_dir.display());
                continue;
            };
            let found = match std::fs::symlink_metadata(&id_dir) {
                Ok(_) => find_installed(&id_dir)?,
                // Only a lock file (a failed install of an earlier version).
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
                Err(err) => return Err(crate::Error::io("inspect", id_dir, err)),
            };
            if let Some((marker, _)) = &found
                && !self.selects(marker, now)
            {
                if !self.dry_run {
                    clean_staging(&id_dir);
                    discard_partial(&id_dir);
                }
                continue;
            }
            if !self.dry_run {
                remove_install(&id_dir)?;
                lock.remove();
            }
            if let Some((marker, path)) = found {
                tracing::info!("removed {:?} ({})", marker.identifier, path.display());
                removed.push(Installed::new(marker, path));
            }
        }
        Ok(removed)
    }

    fn selects(&self, marker: &Marker, now: SystemTime) -> bool {
        let too_old = self.older_than.is_some_and(|age| {
            now.duration_since(marker.installed_at)
                .is_ok_and(|elapsed| elapsed > age)
        });
        let unwanted = self
            .keep
            .as_ref()
            .is_some_and(|keep| !keep.contains(&marker.identifier));
        too_old || unwanted
    }
}

/// The process installing `identifier` right now, as (pid, command line), if another
/// process holds its install lock (under `cache_root`; `None`: the default root). For
/// saying whom a waiting install waits for; `None` when nobody else is installing it.
pub fn installer_of(identifier: &str, cache_root: Option<&Path>) -> Option<(u32, String)> {
    let executables = executables_dir(cache_root).ok()?;
    let lock_file = lock_path(&executables, &identifier_hash(identifier));
    if !lock_file.exists() {
        return None; // no install running, and no lock file made for asking
    }
    // Held right now? (A free lock's file may still name its last holder.)
    let held = crate::lock::FileLock::try_acquire(&lock_file, crate::lock::LockMode::Shared)
        .ok()
        .is_some_and(|lock| lock.is_none());
    if !held {
        return None;
    }
    super::id_lock::read_holder(&lock_file)
}

/// Removes the executable installed under `identifier` (under `cache_root`; `None`: the
/// default root) and returns it; `Ok(None)` if it was not installed. Waits for the
/// identifier's install lock, so an install in progress finishes first and is then removed.
/// Debris of failed installs of the identifier is removed too.
///
/// ```no_run
/// # fn main() -> dbx_concurio::Result<()> {
/// if let Some(gone) = dbx_concurio::execs::uninstall("tool-1.2", None)? {
///     println!("removed {}", gone.path.display());
/// }
/// # Ok(())
/// # }
/// ```
pub fn uninstall(identifier: &str, cache_root: Option<&Path>) -> Result<Option<Installed>> {
    let executables = executables_dir(cache_root)?;
    let hash = identifier_hash(identifier);
    let id_dir = executables.join(&hash);
    let lock_file = lock_path(&executables, &hash);
    if std::fs::symlink_metadata(&id_dir).is_err() && std::fs::symlink_metadata(&lock_file).is_err()
    {
        return Ok(None); // nothing installed, no install running: no lock file made for nothing
    }
    let lock = IdLock::acquire(&lock_file)?;
    let found = find_installed(&id_dir)?;
    remove_install(&id_dir)?;
    lock.remove();
    Ok(found.map(|(marker, path)| {
        tracing::info!("uninstalled {:?} ({})", marker.identifier, path.display());
        Installed::new(marker, path)
    }))
}

/// Removes an identifier's directory, if there is one (under its lock): the marker first, so
/// that from then on lock-free readers see "not installed", never a half-removed install.
fn remove_install(id_dir: &Path) -> Result<()> {
    match std::fs::remove_file(id_dir.join(MARKER)) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(crate::Error::io("remove", id_dir.join(MARKER), err));
        }
        _ => {}
    }
    match std::fs::remove_dir_all(id_dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(crate::Error::io("remove", id_dir, err))
        }
        _ => Ok(()),
    }
}

/// The hash of every identifier with a directory or a lock file, once each.
fn identifier_hashes(executables: &Path) -> Result<Vec<String>> {
    let mut hashes: Vec<String> = list(executables)?
        .into_iter()
        .filter_map(|(name, _)| {
            let hash = name.strip_suffix(".lock").unwrap_or(&name);
            is_hash(hash).then(|| hash.to_owned())
        })
        .collect();
    hashes.sort();
    hashes.dedup();
    Ok(hashes)
}

fn is_hash(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `(hash, directory)` of every identifier directory (named by 64 hex digits).
fn identifier_dirs(executables: &Path) -> Result<Vec<(String, PathBuf)>> {
    Ok(list(executables)?
        .into_iter()
        .filter(|(name, entry)| is_hash(name) && entry.file_type().is_ok_and(|t| t.is_dir()))
        .map(|(name, entry)| (name, entry.path()))
        .collect())
}

/// The entries of `executables` with their names (none if it does not exist).
fn list(executables: &Path) -> Result<Vec<(String, std::fs::DirEntry)>> {
    let entries = match std::fs::read_dir(executables) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(crate::Error::io("list", executables, err)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.at("list", executables)?;
        out.push((entry.file_name().to_string_lossy().into_owned(), entry));
    }
    Ok(out)
}
