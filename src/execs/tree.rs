//! Unpacking a whole archive into a directory we own, without ever leaving it.
//!
//! Entry names are plain relative paths (checked by the caller). Parent directories are
//! created here and must be real directories: an entry is never written through a symbolic
//! link (the classic `a -> /etc` then `a/passwd` attack). Symbolic links are allowed only if
//! they stay inside the tree by construction: a relative target made of some leading `..`
//! (no more than the link's depth) followed by plain names. Since every link's parents are
//! real directories, resolving any path inside the tree then stays inside it. Hard links and
//! special files are refused by the caller.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use crate::sys;

/// Why an archive (or a member of it) was not unpacked.
pub(super) enum Refusal {
    /// The archive is fine to read but unsafe to unpack: absolute paths, `..`, links.
    Unsafe(String),
    /// Reading or writing failed.
    Io(io::Error),
}

impl From<io::Error> for Refusal {
    fn from(err: io::Error) -> Self {
        Refusal::Io(err)
    }
}

/// The unpacked tree under `root`.
pub(super) struct TreeWriter {
    root: PathBuf,
}

impl TreeWriter {
    pub(super) fn new(root: &Path) -> Self {
        TreeWriter {
            root: root.to_owned(),
        }
    }

    /// Makes `parts` a directory (and its parents).
    pub(super) fn dir(&self, parts: &[String]) -> Result<PathBuf, Refusal> {
        let mut path = self.root.clone();
        for part in parts {
            path.push(part);
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(Refusal::Unsafe(format!(
                        "{} is used as a directory but is not one (a link or a file)",
                        parts.join("/")
                    )));
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => std::fs::create_dir(&path)?,
                Err(err) => return Err(err.into()),
            }
        }
        Ok(path)
    }

    /// Writes the regular file `parts` from `data` (a later entry replaces an earlier file).
    /// Executable files get mode 0755, others keep the default (no setuid, whatever the
    /// archive says).
    pub(super) fn file(
        &self,
        parts: &[String],
        data: &mut dyn Read,
        executable: bool,
    ) -> Result<(), Refusal> {
        let path = self.leaf(parts)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        io::copy(data, &mut file)?;
        if executable {
            sys::make_executable(&file)?;
        }
        // Durable before the marker says "installed"; closed before anyone execs it.
        file.sync_all()?;
        Ok(())
    }

    /// Creates the symbolic link `parts` -> `target`, if it stays inside the tree.
    pub(super) fn symlink(&self, parts: &[String], target: &str) -> Result<(), Refusal> {
        if !stays_inside(parts.len().saturating_sub(1), target) {
            return Err(Refusal::Unsafe(format!(
                "{} is a symbolic link to {target:?}, outside the archive",
                parts.join("/")
            )));
        }
        let path = self.leaf(parts)?;
        sys::create_symlink(Path::new(target), &path)?;
        Ok(())
    }

    /// The path of a new entry: parents made real directories, an earlier file or link of
    /// the same name removed (a directory stays and makes the entry fail).
    fn leaf(&self, parts: &[String]) -> Result<PathBuf, Refusal> {
        let (name, parents) = parts
            .split_last()
            .ok_or_else(|| Refusal::Unsafe("an entry without a name".into()))?;
        let path = self.dir(parents)?.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if !meta.is_dir() => std::fs::remove_file(&path)?,
            _ => {}
        }
        Ok(path)
    }
}

/// Whether a link `depth` directories below the root, pointing to `target`, stays inside:
/// relative, at most `depth` leading `..`, then only plain names.
fn stays_inside(depth: usize, target: &str) -> bool {
    let mut ups = 0;
    let mut named = false;
    for component in Path::new(target).components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir if !named => ups += 1,
            Component::Normal(name) if !name.to_string_lossy().contains('\\') => named = true,
            _ => return false,
        }
    }
    !target.is_empty() && ups <= depth
}

/// Whether `path` (inside a tree) is a regular file, reached without any link.
pub(super) fn is_plain_file(root: &Path, parts: &[String]) -> bool {
    let mut path = root.to_owned();
    parts.iter().enumerate().all(|(i, part)| {
        path.push(part);
        std::fs::symlink_metadata(&path).is_ok_and(|meta| {
            if i + 1 == parts.len() {
                meta.is_file()
            } else {
                meta.is_dir()
            }
        })
    })
}

/// Opens a file of the tree for reading (used to make the chosen member executable).
pub(super) fn open(root: &Path, parts: &[String]) -> io::Result<File> {
    File::open(parts.iter().fold(root.to_owned(), |p, part| p.join(part)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_must_stay_inside() {
        assert!(stays_inside(0, "bin/tool"));
        assert!(stays_inside(1, "../lib/x.so"));
        assert!(stays_inside(2, "./../../x"));
        assert!(!stays_inside(0, "../x"));
        assert!(!stays_inside(1, "../../x"));
        assert!(
            !stays_inside(3, "a/../../x"),
            "a .. after a name may climb through a link"
        );
        assert!(!stays_inside(3, "/etc/passwd"));
        assert!(!stays_inside(3, ""));
    }
}
