//! Cached, verified, concurrency-safe executable installs.
//!
//! [`executable`] downloads (or copies) an executable once per identifier, verifies it,
//! publishes it atomically with exec permissions and returns its [`InstallPath`]. Later
//! calls, from any thread or process, return the installed path without a request and
//! without a lock. [`Executable`] adds options: a pinned SHA-256, an archive member,
//! timeouts, retries, offline mode, HTTP headers, forced reinstall, a cache root.
//!
//! ```no_run
//! use dbx_concurio::execs::{self, Executable, InstallPath};
//! use std::path::Path;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let exe: InstallPath = execs::executable("https://example.com/tool", "my-tool-v1.0")?;
//! std::process::Command::new(&*exe).arg("--help").status()?;
//! exe.complete();
//!
//! let exe = Executable::new("https://example.com/tool-1.2.tar.gz", "tool-1.2")
//!     .sha256("0000000000000000000000000000000000000000000000000000000000000000")
//!     .archive_member("bin/tool")
//!     .on_complete(|path: &Path| println!("done with {}", path.display()))
//!     .install()?;
//! # Ok(())
//! # }
//! ```
//!
//! Executables live in `<root>/executables/<sha256(identifier)>/<file name>`, where `<root>`
//! is [`default_root`](crate::default_root) unless [`Executable::cache_root`] says otherwise.
//!
//! # Trusting a download
//!
//! Installed files get executed, so: download over `https://` (the server is authenticated
//! and the bytes cannot be changed in transit), and pin the expected SHA-256 with
//! [`Executable::sha256`], taken from a source you trust (a release's published checksums,
//! your own lockfile). A pinned hash is the only check that the bytes are the ones you
//! meant: a mismatch installs nothing. Archive members cannot escape their directory
//! (absolute paths, `..`, symlinks and hard links are refused), and installs under the
//! default root refuse directories owned by another user, writable by others, or symlinked.

mod archive;
mod fetch;
mod gc;
#[cfg(feature = "download")]
mod http;
mod id_lock;
mod install;
mod install_path;
mod layout;
pub(crate) mod marker;
#[cfg(feature = "download")]
mod partial;
mod publish;
mod staging;
#[cfg(feature = "download")]
mod tree;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

pub use gc::{Gc, Installed, installed, installer_of, uninstall};
pub use install_path::InstallPath;

/// Environment variable that turns on offline mode (`1`, `true` or `yes`) for every install
/// that does not set [`Executable::offline`] itself.
pub const OFFLINE_ENV: &str = "DBX_CONCURIO_OFFLINE";

/// Default number of retries after a failed download attempt.
pub const DEFAULT_RETRIES: u32 = 3;

/// Default time limit of one download attempt (see [`Executable::timeout`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Installs the executable `source` (an `http://`, `https://` or `file://` URL, or a path)
/// under `identifier`, or returns it if it is installed already.
///
/// Same as `Executable::new(source, identifier).install()`.
pub fn executable(source: impl Into<String>, identifier: impl Into<String>) -> Result<InstallPath> {
    Executable::new(source, identifier).install()
}

/// A callback run by [`InstallPath::complete`].
type OnComplete = Box<dyn FnOnce(&Path) + Send + 'static>;

/// Builder for one install: `Executable::new(source, identifier)`, options, then
/// [`install`](Executable::install).
#[must_use = "nothing is installed until `.install()` is called"]
pub struct Executable {
    source: String,
    identifier: String,
    sha256: Option<String>,
    archive_member: Option<String>,
    on_complete: Option<OnComplete>,
    timeout: Duration,
    retries: u32,
    offline: Option<bool>,
    headers: Vec<(String, String)>,
    force: bool,
    cache_root: Option<PathBuf>,
    file_name: Option<String>,
    max_size: Option<u64>,
    whole_archive: bool,
}

impl std::fmt::Debug for Executable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values are often tokens: show only their names.
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Executable")
            .field("source", &self.source)
            .field("identifier", &self.identifier)
            .field("sha256", &self.sha256)
            .field("archive_member", &self.archive_member)
            .field("on_complete", &self.on_complete.is_some())
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("offline", &self.offline)
            .field("headers", &header_names)
            .field("force", &self.force)
            .field("cache_root", &self.cache_root)
            .field("file_name", &self.file_name)
            .field("max_size", &self.max_size)
            .field("whole_archive", &self.whole_archive)
            .finish()
    }
}

impl Executable {
    /// An install of `source` (URL or path) under `identifier`. The identifier is the cache
    /// key: put the version in it (`"tool-1.2"`), since a new source under an installed
    /// identifier is not downloaded again (unless its pinned [`sha256`](Self::sha256) differs).
    pub fn new(source: impl Into<String>, identifier: impl Into<String>) -> Self {
        Executable {
            source: source.into(),
            identifier: identifier.into(),
            sha256: None,
            archive_member: None,
            on_complete: None,
            timeout: DEFAULT_TIMEOUT,
            retries: DEFAULT_RETRIES,
            offline: None,
            headers: Vec::new(),
            force: false,
            cache_root: None,
            file_name: None,
            max_size: None,
            whole_archive: false,
        }
    }

    /// The expected SHA-256 of the downloaded (or copied) bytes, as 64 hex digits; for an
    /// archive, of the archive. A mismatch is [`Error::ChecksumMismatch`] and installs nothing.
    /// If the identifier is installed with other bytes, they are downloaded again (a pin
    /// always gets the pinned bytes, as in pooch).
    pub fn sha256(mut self, hex: impl Into<String>) -> Self {
        self.sha256 = Some(hex.into());
        self
    }

    /// Installs this member (`"bin/tool"`) of a `.tar.gz`/`.tgz`/`.tar.xz`/`.tar.zst`/`.tar`/
    /// `.zip` source instead of the source itself (with [`whole_archive`](Self::whole_archive):
    /// the path returned inside the unpacked tree). The format is recognized from the
    /// content. An archive without a member chosen is an error that lists its files; a
    /// missing member, one that names the closest ones.
    pub fn archive_member(mut self, member: impl Into<String>) -> Self {
        self.archive_member = Some(member.into());
        self
    }

    /// Installs the archive's whole tree (a toolchain's `bin/` next to its `lib/`) and
    /// returns the path of [`archive_member`](Self::archive_member) inside it. The tree goes
    /// to `<identifier dir>/<name>/`, `<name>` being [`file_name`](Self::file_name) or the
    /// archive's name without its extensions. Entries that are absolute or climb with `..`,
    /// hard links, special files and symbolic links that point outside the tree are refused
    /// (the whole install fails); nothing is ever written through a link.
    pub fn whole_archive(mut self, whole: bool) -> Self {
        self.whole_archive = whole;
        self
    }

    /// A callback that [`InstallPath::complete`] runs once, with the installed path.
    pub fn on_complete(mut self, callback: impl FnOnce(&Path) + Send + 'static) -> Self {
        self.on_complete = Some(Box::new(callback));
        self
    }

    /// Time limit of one download attempt, from connecting to the last byte (default
    /// [`DEFAULT_TIMEOUT`]). Connecting alone is limited to 30 s, or this if shorter.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many times a failed download is retried (default [`DEFAULT_RETRIES`]): after
    /// connection errors, timeouts, truncated bodies, HTTP 5xx and 429.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Offline mode: only return what is installed; anything else is [`Error::Offline`].
    /// When not set, [`OFFLINE_ENV`] decides.
    pub fn offline(mut self, offline: bool) -> Self {
        self.offline = Some(offline);
        self
    }

    /// Adds an HTTP request header (for example an `Authorization` token).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Downloads and installs again even if the identifier is installed.
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// Uses `root` instead of [`default_root`](crate::default_root): executables go to
    /// `<root>/executables/`.
    pub fn cache_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.cache_root = Some(root.into());
        self
    }

    /// The installed file's name. Default: the archive member's base name, else the last
    /// segment of the URL path or the source file's name. Path separators and a leading dot
    /// are replaced: the name never leaves the identifier's directory.
    pub fn file_name(mut self, name: impl Into<String>) -> Self {
        self.file_name = Some(name.into());
        self
    }

    /// Refuses a download or copy of more than `bytes` bytes (default: no limit): a larger
    /// Content-Length fails before the body is read, and a body or file that grows past the
    /// limit (an endless stream, `/dev/zero`) is cut off there. Nothing is installed then.
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = Some(bytes);
        self
    }

    /// Installs (once per identifier, across threads and processes) and returns the path.
    pub fn install(self) -> Result<InstallPath> {
        install::install(self)
    }

    fn is_offline(&self) -> bool {
        self.offline.unwrap_or_else(|| {
            std::env::var(OFFLINE_ENV).is_ok_and(|v| {
                matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes")
            })
        })
    }
}

/// Checks and normalizes a SHA-256 given by the user.
fn parse_sha256(hex: &str) -> Result<String> {
    let hex = hex.trim();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex.to_ascii_lowercase())
    } else {
        Err(Error::InvalidInput(format!(
            "sha256 {hex:?} is not 64 hexadecimal digits"
        )))
    }
}
