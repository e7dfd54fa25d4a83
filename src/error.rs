//! The crate's one error type.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// A boxed error from a loader, a dependency, or the operating system.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `dbx_concurio`.
///
/// Foreign error types (LMDB, MessagePack, HTTP) are boxed so that they are not part of the
/// public API; they stay reachable through [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file-system operation failed. `path` is the file or directory it was about.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What we were doing ("create directory", "read", ...).
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error; its [`io::ErrorKind`] is preserved.
        #[source]
        source: io::Error,
    },

    /// A lock could not be taken within the configured timeout: another thread or process
    /// is holding it (for example, loading the same key).
    #[error("timed out after {waited:?} waiting for lock {}", path.display())]
    Busy {
        /// The lock file.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },

    /// A loader asked `get_or_load` for the key it is loading itself: waiting would never
    /// end, so the inner call fails at once.
    #[error("recursive load: the loader of key {key:?} asked for {key:?} itself")]
    Recursive {
        /// The key.
        key: String,
    },

    /// The cache's directory was deleted (or replaced) while this handle had it open:
    /// writes through it would be seen by nobody. Open a new handle.
    #[error("cache directory {} was removed while open; open the cache again", path.display())]
    Removed {
        /// The directory.
        path: PathBuf,
    },

    /// The storage engine (LMDB) reported an error.
    #[error("cache index {}: {source}", path.display())]
    Storage {
        /// The index directory.
        path: PathBuf,
        /// The engine's error.
        #[source]
        source: BoxError,
    },

    /// Bytes on disk failed their integrity check or could not be parsed.
    #[error("corrupt cache data in {}: {detail}", path.display())]
    Corrupt {
        /// The file or directory that holds the bad bytes.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },

    /// A value could not be serialized.
    #[error("cannot encode the value for key {key:?}: {source}")]
    Encode {
        /// The key being written.
        key: String,
        /// The serializer's error.
        #[source]
        source: BoxError,
    },

    /// A stored value could not be decoded as the requested type (usually: read as the
    /// wrong type, or written by an incompatible version of the type).
    #[error("cannot decode the value of key {key:?} as {type_name}: {source}")]
    Decode {
        /// The key being read.
        key: String,
        /// The Rust type that was requested.
        type_name: &'static str,
        /// The deserializer's error.
        #[source]
        source: BoxError,
    },

    /// The loader passed to `get_or_load` failed; its error is the source.
    #[error("loader for key {key:?} failed: {source}")]
    Loader {
        /// The key being loaded.
        key: String,
        /// The loader's own error (downcast it to get your type back).
        #[source]
        source: BoxError,
    },

    /// A directory we would store data or executables in is not safe to use.
    #[error("refusing to use {}: {reason}", path.display())]
    UnsafeDirectory {
        /// The directory.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },

    /// The base directory the user chose (`DBX_CONCURIO_CACHE_DIR`) cannot hold caches: it
    /// is a file, cannot be created, or cannot be written.
    #[error(
        "{var}={}: {problem}; set {var} to a directory you can write, or unset it to use the \
         temp dir",
        path.display()
    )]
    BaseDirectory {
        /// The environment variable that named it.
        var: &'static str,
        /// The directory, made absolute.
        path: PathBuf,
        /// What is wrong with it, in a user's words.
        problem: String,
        /// The underlying error; its [`io::ErrorKind`] is preserved.
        #[source]
        source: io::Error,
    },

    /// An argument was invalid (bad source, bad checksum syntax, bad member name, ...).
    #[error("{0}")]
    InvalidInput(String),

    /// A download failed (connection, TLS, timeout, or an HTTP error status).
    #[error("download of {url} failed: {reason}")]
    Download {
        /// The URL.
        url: String,
        /// The HTTP status, when the server answered.
        status: Option<u16>,
        /// What went wrong.
        reason: String,
        /// The transport error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// The downloaded or copied bytes do not have the expected SHA-256.
    #[error("sha256 mismatch for {source_name}: expected {expected}, got {actual}")]
    ChecksumMismatch {
        /// The URL or path.
        source_name: String,
        /// The pinned digest.
        expected: String,
        /// The digest of what was received.
        actual: String,
    },

    /// An archive could not be read, or the requested member is missing or unsafe.
    #[error("archive {source_name}: {reason}")]
    Archive {
        /// The URL or path of the archive.
        source_name: String,
        /// What went wrong.
        reason: String,
    },

    /// Offline mode is on and the executable is not installed yet.
    #[error(
        "offline mode: {identifier:?} is not installed and may not be downloaded ({source_name})"
    )]
    Offline {
        /// The executable's identifier.
        identifier: String,
        /// Where it would have come from.
        source_name: String,
    },

    /// The shared tier (Redis) is unavailable or refused a call, and the cache was built
    /// with `shared_required(true)` (otherwise it falls back to the local tier).
    #[error("shared tier {endpoint}: {detail}")]
    Shared {
        /// The server, without its password.
        endpoint: String,
        /// What went wrong.
        detail: String,
    },

    /// This build lacks a feature needed for the request (e.g. `download` for URLs).
    #[error("{0}")]
    Unsupported(String),
}

impl Error {
    /// Builds an [`Error::Io`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// The [`io::ErrorKind`] of an I/O error, if this is one.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Error::Io { source, .. } | Error::BaseDirectory { source, .. } => Some(source.kind()),
            _ => None,
        }
    }

    /// True if this error means "another holder has the lock" ([`Error::Busy`]).
    pub fn is_busy(&self) -> bool {
        matches!(self, Error::Busy { .. })
    }
}

/// Adds the path to an `io::Result`, keeping its `ErrorKind`.
pub(crate) trait IoContext<T> {
    fn at(self, op: &'static str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, op: &'static str, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}
