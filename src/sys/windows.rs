//! Windows implementations of the platform functions (best effort: ACLs of the user profile
//! protect the default locations, so there is no mode or owner to check here).

use std::fs::{self, File, Metadata};
use std::io;
use std::path::Path;

pub(crate) fn create_private_dir_all(path: &Path) -> io::Result<()> {
    fs::create_dir_all(path)
}

pub(crate) fn unsafe_dir_reason(meta: &Metadata) -> Option<String> {
    if meta.file_type().is_symlink() {
        return Some("it is a symbolic link".into());
    }
    if !meta.is_dir() {
        return Some("it is not a directory".into());
    }
    None
}

pub(crate) fn boot_id() -> Option<String> {
    None
}

pub(crate) fn make_executable(_file: &File) -> io::Result<()> {
    Ok(())
}

pub(crate) fn is_executable(_meta: &Metadata) -> bool {
    true
}

pub(crate) fn sync_dir(_path: &Path) -> io::Result<()> {
    Ok(())
}

/// Windows has no fork: no child can inherit a write handle between create and exec.
pub(crate) fn wait_until_no_writers(_path: &Path) -> bool {
    true
}

/// The path of a decoded `file://` URL path: `/C:/x` is `C:/x`.
pub(crate) fn path_from_file_url(url_path: String) -> std::path::PathBuf {
    let bytes = url_path.as_bytes();
    let drive = bytes.len() > 2 && bytes[2] == b':' && bytes[1].is_ascii_alphabetic();
    std::path::PathBuf::from(if drive { &url_path[1..] } else { &url_path[..] })
}

pub(crate) fn lock_unsupported(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::Unsupported
}

pub(crate) fn file_size_limit() -> u64 {
    u64::MAX
}

pub(crate) const INDEX_MAP_SIZE: usize = if cfg!(target_pointer_width = "64") {
    32 << 30
} else {
    1 << 30
};

/// Windows has no fork.
pub(crate) fn fork_generation() -> u64 {
    0
}

/// Byte-range locks are not wired up on Windows yet: callers treat this like a file system
/// without locking support (warn once, go on unlocked: duplicate loads, never wrong values).
pub(crate) fn lock_byte(_file: &File, _offset: u64, _wait: bool) -> io::Result<bool> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

pub(crate) fn unlock_byte(_file: &File, _offset: u64) -> io::Result<()> {
    Ok(())
}

/// No whole-file-system sync without privileges: report that nothing is promised.
pub(crate) fn sync_filesystem(_path: &Path) -> io::Result<bool> {
    Ok(false)
}

/// No inode numbers through std on Windows: the canonical path identifies a directory.
pub(crate) fn file_id(path: &Path, _meta: &Metadata) -> (u64, u64) {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut hasher);
    (0, hasher.finish())
}

pub(crate) fn link_count(_file: &File) -> io::Result<u64> {
    Ok(1)
}

/// Handles are not inherited by child processes unless asked for.
pub(crate) fn set_cloexec_on_descriptors_of(_file: &File) -> io::Result<()> {
    Ok(())
}

pub(crate) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

pub(crate) fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let n = std::os::windows::fs::FileExt::seek_write(file, buf, offset)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

/// Symbolic links need privileges on Windows and must say whether they point to a file or
/// a directory, which an archive entry does not tell: not supported.
#[cfg_attr(not(feature = "download"), allow(dead_code))]
pub(crate) fn create_symlink(_target: &Path, link: &Path) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "cannot create the symbolic link {} on Windows",
            link.display()
        ),
    ))
}

/// Without a stable file id in std, we cannot tell; lock files are never removed here (see
/// [`CAN_REMOVE_LOCK_FILES`]), so the file at the path is the one we opened.
pub(crate) fn same_file(_file: &File, _path: &Path) -> io::Result<bool> {
    Ok(true)
}

/// A file removed while others have it open lingers as "delete pending" on Windows and
/// cannot be opened: an installer would fail instead of waiting. Lock files stay.
pub(crate) const CAN_REMOVE_LOCK_FILES: bool = false;

/// The temp dir is per user on Windows already: no per-user fallback root.
pub(crate) fn user_id() -> Option<u32> {
    None
}

/// A probe file: Windows has no faccessat that honours ACLs as a write would.
pub(crate) fn check_writable(dir: &Path) -> io::Result<()> {
    tempfile::Builder::new()
        .prefix(".write-probe")
        .tempfile_in(dir)
        .map(drop)
}
