//! The path of an installed executable, with its one-shot completion callback.

use std::fmt;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use super::OnComplete;

/// The absolute path of an installed executable. Derefs to [`Path`].
///
/// [`complete`](InstallPath::complete) runs the [`on_complete`](super::Executable::on_complete)
/// callback, if any, exactly once. Dropping an `InstallPath` does not run it: the callback
/// means "the caller is done", which a drop during unwinding does not.
#[must_use = "the installed path is the point of installing"]
pub struct InstallPath {
    path: PathBuf,
    // A Mutex (not a Cell) so that an InstallPath can be shared between threads.
    on_complete: Mutex<Option<OnComplete>>,
}

impl InstallPath {
    pub(super) fn new(path: PathBuf, on_complete: Option<OnComplete>) -> Self {
        InstallPath {
            path,
            on_complete: Mutex::new(on_complete),
        }
    }

    /// The installed file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs the completion callback the first time it is called; later calls do nothing.
    pub fn complete(&self) {
        let callback = self
            .on_complete
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // Called outside the lock: the callback may itself call `complete`.
        if let Some(callback) = callback {
            callback(&self.path);
        }
    }
}

impl Deref for InstallPath {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for InstallPath {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl fmt::Debug for InstallPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pending = self
            .on_complete
            .lock()
            .map(|c| c.is_some())
            .unwrap_or(false);
        f.debug_struct("InstallPath")
            .field("path", &self.path)
            .field("on_complete_pending", &pending)
            .finish()
    }
}

impl fmt::Display for InstallPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.path.display().fmt(f)
    }
}
