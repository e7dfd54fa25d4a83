//! Unix implementations of the platform functions.

use std::fs::{self, DirBuilder, File, Metadata};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::OnceLock;

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
///
/// Read once per process (a process cannot outlive its boot): opening a cache asks twice,
/// and each read of `/proc` is six system calls of a `concurio run` cache hit.
pub(crate) fn boot_id() -> Option<String> {
    static BOOT_ID: OnceLock<Option<String>> = OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            // Read to its end through a buffer that holds it: `read_to_string` adds a
            // `statx`, and reads a /proc file (which reports no size) 32 bytes at a time.
            let mut file = File::open("/proc/sys/kernel/random/boot_id").ok()?;
            let mut buf = [0u8; 128];
            let mut len = 0;
            while len < buf.len() {
                match io::Read::read(&mut file, &mut buf[len..]) {
                    Ok(0) => break,
                    Ok(n) => len += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return None,
                }
            }
            // Longer than any boot id: not one (never a truncated one, which would look
            // like another boot's and reset caches).
            let id = std::str::from_utf8(&buf[..len]).ok()?.trim();
            (len < buf.len() && !id.is_empty()).then(|| id.to_owned())
        })
        .clone()
}

/// Sets mode 0755 on an open file (through the fd, so the file cannot be swapped under us).
pub(crate) fn make_executable(file: &File) -> io::Result<()> {
    file.set_permissions(fs::Permissions::from_mode(0o755))
}

/// Whether a file can be executed by us (any execute bit set).
pub(crate) fn is_executable(meta: &Metadata) -> bool {
    meta.mode() & 0o111 != 0
}

/// Flushes a directory's entries (a rename inside it) to disk.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Waits (bounded) until no process holds `path` open for writing.
///
/// Why: `execve` fails with ETXTBSY while any write fd of the file exists. We close ours
/// before publishing, but a child another thread forked while it was open holds a copy until
/// that child execs or exits. The kernel refuses a read lease while a write fd exists, so a
/// granted lease proves there is none; we drop it at once. Returns false if we gave up.
pub(crate) fn wait_until_no_writers(path: &Path) -> bool {
    lease::wait_until_no_writers(path)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod lease {
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::path::Path;
    use std::time::{Duration, Instant};

    const LIMIT: Duration = Duration::from_secs(5);

    pub(super) fn wait_until_no_writers(path: &Path) -> bool {
        let Ok(file) = File::open(path) else {
            return super::fallback_pause();
        };
        let fd = file.as_raw_fd();
        let start = Instant::now();
        let mut pause = Duration::from_micros(200);
        loop {
            // SAFETY: fd is a valid open descriptor owned by `file` for this whole call.
            if unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) } == 0 {
                // SAFETY: as above; releasing the lease we were just granted.
                unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
                return true;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EAGAIN) {
                // Leases disabled or not supported here (EINVAL, ENOLCK, ...).
                tracing::debug!("file leases unavailable for {}: {err}", path.display());
                return super::fallback_pause();
            }
            if start.elapsed() >= LIMIT {
                tracing::warn!(
                    "{} is still open for writing by another process after {LIMIT:?}",
                    path.display()
                );
                return false;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod lease {
    pub(super) fn wait_until_no_writers(_path: &std::path::Path) -> bool {
        super::fallback_pause()
    }
}

/// Without a way to ask the kernel, give forked children a moment to reach their exec.
fn fallback_pause() -> bool {
    std::thread::sleep(std::time::Duration::from_millis(50));
    true
}

/// The path of a decoded `file://` URL path (`/usr/bin/x`): already a path here.
pub(crate) fn path_from_file_url(url_path: String) -> std::path::PathBuf {
    std::path::PathBuf::from(url_path)
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

/// The largest file this process may write (`RLIMIT_FSIZE`, as `ulimit -f` sets it). Writing
/// or extending a file past it fails with EFBIG and raises SIGXFSZ, which kills by default.
pub(crate) fn file_size_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return u64::MAX;
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
    let bytes = limit.rlim_cur as u64;
    bytes
}

/// Default LMDB map size: the address space reserved for the index, not disk used. Values
/// above the inline limit live in their own files, so the index holds keys and small values.
pub(crate) const INDEX_MAP_SIZE: usize = if cfg!(target_pointer_width = "64") {
    32 << 30
} else {
    1 << 30
};

/// How many times this process's ancestry forked since it started: 0 in the original
/// process, bumped in each child right after `fork()` (a `pthread_atfork` handler,
/// registered by the first call). Per-process state (LMDB environments, lock descriptors,
/// thread-lock tables) compares its generation with this to notice that it was inherited.
pub(crate) fn fork_generation() -> u64 {
    use std::sync::Once;
    use std::sync::atomic::Ordering;
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        extern "C" fn bump() {
            FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: registers a child handler that only does an atomic add (async-signal-safe).
        let rc = unsafe { libc::pthread_atfork(None, None, Some(bump)) };
        if rc != 0 {
            tracing::warn!("pthread_atfork failed ({rc}): forked children must reopen caches");
        }
    });
    FORK_GENERATION.load(Ordering::Relaxed)
}

static FORK_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Takes an exclusive lock on byte `offset` of `file`. `wait`: block until it is free;
/// otherwise `Ok(false)` if someone else holds it.
///
/// Linux: an open-file-description lock (`F_OFD_SETLK[W]`): owned by the descriptor, so
/// threads of one process that lock through different descriptors exclude each other, and
/// the kernel drops it when the last descriptor closes (the holder died). Elsewhere: a
/// classic POSIX record lock (owned by the process; callers keep one descriptor open for as
/// long as they hold any lock on the file, and never lock one byte twice).
pub(crate) fn lock_byte(file: &File, offset: u64, wait: bool) -> io::Result<bool> {
    range_lock(file, offset, libc::F_WRLCK as libc::c_short, wait)
}

/// Releases the lock `lock_byte` took on byte `offset`.
pub(crate) fn unlock_byte(file: &File, offset: u64) -> io::Result<()> {
    range_lock(file, offset, libc::F_UNLCK as libc::c_short, false).map(drop)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
const RANGE_LOCK_CMDS: (libc::c_int, libc::c_int) = (libc::F_OFD_SETLK, libc::F_OFD_SETLKW);
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const RANGE_LOCK_CMDS: (libc::c_int, libc::c_int) = (libc::F_SETLK, libc::F_SETLKW);

fn range_lock(file: &File, offset: u64, kind: libc::c_short, wait: bool) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let start = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "lock offset out of range"))?;
    // SAFETY: an all-zero flock is valid (l_pid must be 0 for OFD locks).
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = start;
    lock.l_len = 1;
    let cmd = if wait {
        RANGE_LOCK_CMDS.1
    } else {
        RANGE_LOCK_CMDS.0
    };
    loop {
        // SAFETY: fcntl with a valid descriptor and a pointer to a live flock struct.
        if unsafe { libc::fcntl(file.as_raw_fd(), cmd, &lock) } == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN | libc::EACCES) if !wait => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// Makes everything written so far to the file system holding `path` durable, from every
/// process (`syncfs`): data files, value files and directory entries alike. `Ok(false)`
/// where the platform cannot promise that.
pub(crate) fn sync_filesystem(path: &Path) -> io::Result<bool> {
    sync_fs::sync_filesystem(path)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod sync_fs {
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;
    use std::path::Path;

    pub(super) fn sync_filesystem(path: &Path) -> io::Result<bool> {
        let dir = File::open(path)?;
        // SAFETY: syncfs on a descriptor we own for the whole call.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(true)
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod sync_fs {
    pub(super) fn sync_filesystem(_path: &std::path::Path) -> std::io::Result<bool> {
        // SAFETY: sync(2) has no preconditions; POSIX does not promise it waits.
        unsafe { libc::sync() };
        Ok(false)
    }
}

/// (device, inode) of a file or directory: what identifies it across paths (mv, bind mounts).
pub(crate) fn file_id(_path: &Path, meta: &Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

/// How many directory entries name the open file (0 once it has been deleted).
pub(crate) fn link_count(file: &File) -> io::Result<u64> {
    Ok(file.metadata()?.nlink())
}

/// Sets close-on-exec on the descriptor of this process that refers to `file`'s inode
/// without it: LMDB opens `data.mdb` once without `O_CLOEXEC`, and a command started by the
/// process would inherit it read-write. `file` is a duplicate made right after LMDB opened
/// its files, so LMDB's descriptors lie just below it: those are looked at first (a few
/// `fstat`s). Only if none of them is the one (another thread closed a lower descriptor
/// meanwhile, so the duplicate went below LMDB's) is every descriptor looked at, through
/// `/proc/self/fd`: listing it costs a short-lived process more than its cache hit.
pub(crate) fn set_cloexec_on_descriptors_of(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let meta = file.metadata()?;
    let target = (meta.dev(), meta.ino());
    let mut below = (0..file.as_raw_fd()).rev();
    if below.any(|fd| set_cloexec_if_inherited(fd, target)) {
        return Ok(());
    }
    let listing = fs::read_dir("/proc/self/fd").or_else(|_| fs::read_dir("/dev/fd"))?;
    for entry in listing.flatten() {
        if let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        {
            set_cloexec_if_inherited(fd, target);
        }
    }
    Ok(())
}

/// Sets close-on-exec on `fd` if it refers to the file `target` (device, inode) and lacks
/// it; true if it did. The flag is looked at first: LMDB opens its other descriptors of
/// the file with it, so those cost one call, not two.
fn set_cloexec_if_inherited(fd: i32, target: (u64, u64)) -> bool {
    // SAFETY: F_GETFD on any number: a stale one just fails with EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 || flags & libc::FD_CLOEXEC != 0 {
        return false;
    }
    // SAFETY: fstat into a zeroed struct, on a descriptor that F_GETFD just accepted.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)] // dev_t/ino_t are not u64 everywhere
    if (st.st_dev as u64, st.st_ino as u64) != target {
        return false;
    }
    // SAFETY: F_SETFD on the same descriptor.
    unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) == 0 }
}

/// Reads at `offset` without moving the file position (threads share the descriptor).
pub(crate) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

/// Writes all of `buf` at `offset` without moving the file position.
pub(crate) fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

/// Creates the symbolic link `link` pointing to `target` (execs: links inside an unpacked
/// archive tree).
#[cfg_attr(not(feature = "download"), allow(dead_code))]
pub(crate) fn create_symlink(target: &Path, link: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

/// Whether `path` still names the open `file` (execs: a lock file removed and created again
/// while we waited for its lock). `false` if `path` is gone.
pub(crate) fn same_file(file: &File, path: &Path) -> io::Result<bool> {
    let open = file.metadata()?;
    match fs::metadata(path) {
        Ok(named) => Ok(open.dev() == named.dev() && open.ino() == named.ino()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

/// Whether execs may remove an identifier's lock file (under its lock): yes where a removed
/// file stays lockable by whoever has it open, and [`same_file`] tells them.
pub(crate) const CAN_REMOVE_LOCK_FILES: bool = true;

/// The effective user id (names the per-user fallback root of a shared temp dir).
pub(crate) fn user_id() -> Option<u32> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    Some(unsafe { libc::geteuid() })
}

/// Whether we may create files in `dir`, asked of the kernel with the effective ids
/// (`faccessat(W_OK | X_OK, AT_EACCESS)`): read-only mounts fail with EROFS, modes and ACLs
/// are applied as a real write would be. Writes nothing.
pub(crate) fn check_writable(dir: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: a valid NUL-terminated path; faccessat only reads it.
    let rc = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    fn has_cloexec(fd: i32) -> bool {
        // SAFETY: F_GETFD on a descriptor this test owns.
        unsafe { libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC != 0 }
    }

    /// A duplicate without close-on-exec, at the lowest free number at or above `min`.
    fn inherited_dup(file: &File, min: i32) -> i32 {
        // SAFETY: F_DUPFD on an open descriptor; the test closes the result.
        let fd = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD, min) };
        assert!(fd >= min && !has_cloexec(fd));
        fd
    }

    /// The descriptor left without close-on-exec is found below the duplicate (the usual
    /// case) and above it (another thread freed a lower number: the listing finds it).
    #[test]
    fn the_inherited_descriptor_gets_close_on_exec_below_and_above_the_duplicate() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let below = inherited_dup(tmp.as_file(), 0);
        // Opened after `below`, so numbered above it (unless a test thread freed a lower
        // number meanwhile: then the listing below still covers it).
        let probe = File::open(tmp.path()).unwrap();
        set_cloexec_on_descriptors_of(&probe).unwrap();
        assert!(has_cloexec(below));

        let above = inherited_dup(tmp.as_file(), probe.as_raw_fd() + 64);
        set_cloexec_on_descriptors_of(&probe).unwrap();
        assert!(has_cloexec(above));
        // SAFETY: closing the two duplicates this test made.
        unsafe {
            libc::close(below);
            libc::close(above);
        }
    }
}
