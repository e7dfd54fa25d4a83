//! Where installs live: `<root>/executables/<sha256(id)>/` and its lock file, and the
//! lock-free "is it installed?" check.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::marker::Marker;
use crate::dirs::{self, hex};
use crate::error::{IoContext, Result};

/// The subdirectory of the cache root that holds executables.
const EXECUTABLES_DIR: &str = "executables";

/// `<root>/executables`, absolute.
pub(super) fn executables_dir(cache_root: Option<&Path>) -> Result<PathBuf> {
    let root = cache_root.map_or_else(dirs::default_root, Path::to_path_buf);
    let root = std::path::absolute(&root).at("resolve", &root)?;
    Ok(root.join(EXECUTABLES_DIR))
}

/// The name of the identifier's directory: the SHA-256 of the identifier, in hex (any
/// identifier, even one with `/` or `..`, gives a plain name).
pub(super) fn identifier_hash(identifier: &str) -> String {
    hex(&Sha256::digest(identifier.as_bytes()))
}

/// The identifier's lock file: next to its directory, so that it can be held while the
/// directory is created or removed (and removed itself only as `id_lock` says).
pub(super) fn lock_path(executables: &Path, hash: &str) -> PathBuf {
    executables.join(format!("{hash}.lock"))
}

/// The installed file of `id_dir`, if the install there is complete and intact. Takes no
/// lock. Fails if the directory is not safely ours (someone could have planted it).
pub(super) fn find_installed(id_dir: &Path) -> Result<Option<(Marker, PathBuf)>> {
    let Some(marker) = Marker::read(id_dir)? else {
        return Ok(None);
    };
    let Some(path) = marker.installed_file(id_dir) else {
        return Ok(None);
    };
    dirs::check_private(id_dir)?;
    Ok(Some((marker, path)))
}
