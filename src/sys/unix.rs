//! Unix implementations of the platform functions.

use std::fs::{self, DirBuilder, File, Metadata};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// Creates `path` and any missing parents with mode 0700 (before umask): cache directories
/// hold executables that get run, so nobody else may write, or even list, them.
pub(crate) fn create_private_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(path)
}

/// Why `meta` (from `symlink_metadata`) is not a directory only we control, if it is not.
pub(crate) fn unsafe_dir_reason(meta: &Metadata) -> Option<String> {
    if meta.file_type().is_symlink() {
        return Some("it is a symbolic link".into());
    }
    if !meta.is_dir() {
        return Some("it is not a directory".into());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Some(format!(
            "it is owned by uid {}, not by us (uid {me})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Some(format!(
            "it is writable by group or others (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    None
}

/// Identifies the current boot, so a cache can tell whether the machine restarted since it
/// last wrote without syncing. `None` where the platform does not say.
pub(crate) fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Sets mode 0755 on an open file (through the fd, so the file cannot be swapped under us).
#[allow(dead_code)] // used by execs (next)
pub(crate) fn make_executable(file: &File) -> io::Result<()> {
    file.set_permissions(fs::Permissions::from_mode(0o755))
}

/// Whether a file can be executed by us (any execute bit set).
#[allow(dead_code)] // used by execs (next)
pub(crate) fn is_executable(meta: &Metadata) -> bool {
    meta.mode() & 0o111 != 0
}

/// Flushes a directory's entries (a rename inside it) to disk.
#[allow(dead_code)] // used by execs (next)
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// True if a lock call failed because the file system cannot lock at all (some NFS and FUSE
/// mounts), as opposed to a real error.
pub(crate) fn lock_unsupported(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::Unsupported
        || matches!(
            err.raw_os_error(),
            Some(libc::ENOLCK) | Some(libc::EOPNOTSUPP)
        )
}

/// Bytes a file really occupies on disk (sparse regions excluded).
pub(crate) fn allocated_bytes(meta: &Metadata) -> u64 {
    meta.blocks() * 512
}

/// Default LMDB map size: the address space reserved for the index, not disk used. Values
/// above the inline limit live in their own files, so the index holds keys and small values.
pub(crate) const INDEX_MAP_SIZE: usize = if cfg!(target_pointer_width = "64") {
    32 << 30
} else {
    1 << 30
};
