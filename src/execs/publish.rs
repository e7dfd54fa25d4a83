//! Publishing: moving a verified staging file or unpacked tree to its final name, atomically,
//! executable, durable, and with no write fd left open (ETXTBSY).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use tempfile::{NamedTempFile, TempDir};

use super::marker::STAGING_PREFIX;
use crate::error::{IoContext, Result};
use crate::sys;

/// What was published.
pub(super) struct Published {
    /// Size of the executable.
    pub(super) size: u64,
    /// The directory that had the target's name before, renamed to a staging name: to be
    /// removed once the marker names the new install.
    pub(super) replaced: Option<PathBuf>,
}

/// Makes the staged file executable, durable and closed, then renames it to `target`.
pub(super) fn publish_file(staged: NamedTempFile, target: &Path, dir: &Path) -> Result<Published> {
    let file = staged.as_file();
    sys::make_executable(file).at("make executable", staged.path())?;
    file.sync_all().at("sync", staged.path())?;
    let size = file.metadata().at("inspect", staged.path())?.len();
    // Closes our write fd: an executable must not be published while one is open (ETXTBSY).
    let staged = staged.into_temp_path();
    // Children forked by other threads while it was open hold copies until they exec.
    sys::wait_until_no_writers(&staged);
    // A file replaces a file atomically; a directory (an earlier whole-archive install of the
    // same name) has to be moved aside first.
    let replaced = move_aside_dir(target, dir)?;
    staged
        .persist(target)
        .map_err(|e| e.error)
        .at("rename into place", target)?;
    sys::sync_dir(dir).at("sync", dir)?;
    Ok(Published { size, replaced })
}

/// Renames an unpacked tree (its files already written, synced and closed) to `target`;
/// `member` is the executable in it.
pub(super) fn publish_tree(
    tree: TempDir,
    member: &[String],
    target: &Path,
    dir: &Path,
) -> Result<Published> {
    let executable = member
        .iter()
        .fold(tree.path().to_owned(), |path, part| path.join(part));
    let size = std::fs::metadata(&executable)
        .at("inspect", &executable)?
        .len();
    sys::wait_until_no_writers(&executable);
    let replaced = move_aside_dir(target, dir)?;
    if !std::fs::symlink_metadata(target).is_ok_and(|m| m.is_dir()) {
        // A plain file of that name (an earlier single-file install) is replaced below;
        // rename cannot put a directory over a file.
        let _ = std::fs::remove_file(target);
    }
    let path = tree.keep();
    if let Err(err) = std::fs::rename(&path, target) {
        let _ = std::fs::remove_dir_all(&path);
        return Err(crate::Error::io("rename into place", target, err));
    }
    sys::sync_dir(dir).at("sync", dir)?;
    Ok(Published { size, replaced })
}

/// If `target` is a directory, renames it to a new staging name in `dir` and returns that.
fn move_aside_dir(target: &Path, dir: &Path) -> Result<Option<PathBuf>> {
    if !std::fs::symlink_metadata(target).is_ok_and(|m| m.is_dir()) {
        return Ok(None);
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let aside = dir.join(format!(
        "{STAGING_PREFIX}replaced-{}-{nanos}",
        std::process::id()
    ));
    std::fs::rename(target, &aside).at("move aside", target)?;
    Ok(Some(aside))
}
