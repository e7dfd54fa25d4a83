//! The completion marker: `<id dir>/.complete`, written last, atomically.
//!
//! Its presence (with the file it names) is what "installed" means, so the check needs no
//! lock. It is a few `key=value` lines: readable by people and by [`super::gc`].

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::atomic::write_atomically;
use crate::error::Result;
use crate::sys;

/// The marker's file name in the identifier's directory.
pub(super) const MARKER: &str = ".complete";

/// Prefix of every temporary file in an identifier's directory (see `install::clean_staging`).
pub(super) const STAGING_PREFIX: &str = ".staging-";

const HEADER: &str = "dbx-concurio executable v1";

/// What a completed install recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Marker {
    pub(super) identifier: String,
    pub(super) source: String,
    pub(super) sha256: String,
    pub(super) file_name: String,
    pub(super) size: u64,
    pub(super) installed_at: SystemTime,
    /// For a whole archive: `file` is the unpacked tree and this the executable's path in it
    /// (`/`-separated plain names). Encoded as an optional last line, so markers without it
    /// read as before.
    pub(super) member: Option<String>,
}

impl Marker {
    /// Reads the marker of `dir`; `None` if there is none or it is unreadable garbage
    /// (a marker is only ever renamed into place whole, so garbage means tampering).
    pub(super) fn read(dir: &Path) -> Result<Option<Marker>> {
        let path = dir.join(MARKER);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let marker = Marker::decode(&text);
                if marker.is_none() {
                    tracing::warn!("ignoring unreadable install marker {}", path.display());
                }
                Ok(marker)
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) if err.kind() == std::io::ErrorKind::NotADirectory => Ok(None),
            Err(err) if err.kind() == std::io::ErrorKind::InvalidData => {
                // Not UTF-8: garbage like any other (one damaged marker must not make every
                // listing and every install of its identifier fail).
                tracing::warn!("ignoring unreadable install marker {}", path.display());
                Ok(None)
            }
            Err(err) => Err(crate::Error::io("read", path, err)),
        }
    }

    /// The installed file, if it is still there, executable, and of the recorded size.
    pub(super) fn installed_file(&self, dir: &Path) -> Option<PathBuf> {
        let mut path = dir.join(&self.file_name);
        for part in self.member.iter().flat_map(|m| m.split('/')) {
            path.push(part);
        }
        let meta = std::fs::symlink_metadata(&path).ok()?;
        let intact = meta.is_file() && meta.len() == self.size && sys::is_executable(&meta);
        intact.then_some(path)
    }

    /// Writes the marker atomically: temporary file, fsync, rename, fsync of the directory.
    pub(super) fn write(&self, dir: &Path) -> Result<()> {
        // Staging prefix: a killed writer's temp file is removed with the other staging debris.
        write_atomically(&dir.join(MARKER), self.encode().as_bytes(), STAGING_PREFIX)
    }

    pub(crate) fn encode(&self) -> String {
        let secs = self
            .installed_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let member = self
            .member
            .as_ref()
            .map_or(String::new(), |m| format!("member={}\n", escape(m)));
        format!(
            "{HEADER}\nidentifier={}\nsource={}\nsha256={}\nfile={}\nsize={}\ninstalled={secs}\n{member}",
            escape(&self.identifier),
            escape(&self.source),
            self.sha256,
            escape(&self.file_name),
            self.size,
        )
    }

    pub(crate) fn decode(text: &str) -> Option<Marker> {
        let mut lines = text.lines();
        if lines.next()? != HEADER {
            return None;
        }
        let mut field = |key: &str| -> Option<String> {
            let line = lines.next()?;
            line.strip_prefix(key)?.strip_prefix('=').map(unescape)
        };
        let identifier = field("identifier")?;
        let source = field("source")?;
        let sha256 = field("sha256")?;
        let file_name = field("file")?;
        let size = field("size")?.parse().ok()?;
        let secs: u64 = field("installed")?.parse().ok()?;
        let member = match lines.next() {
            None | Some("") => None,
            Some(line) => Some(unescape(line.strip_prefix("member=")?)),
        };
        // The file name must be a plain name: a marker must not point outside its directory.
        if !is_plain_name(&file_name) || !member.as_deref().is_none_or(is_relative_path) {
            return None;
        }
        Some(Marker {
            identifier,
            source,
            sha256,
            file_name,
            size,
            // checked: `SystemTime + Duration` panics past the platform's range.
            installed_at: UNIX_EPOCH.checked_add(Duration::from_secs(secs))?,
            member,
        })
    }
}

/// A single, visible file name component.
pub(super) fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && !name.chars().any(char::is_control)
}

/// `a/b/c` made of names that stay where they are (no `.`, `..`, empty part or `\\`).
fn is_relative_path(path: &str) -> bool {
    path.split('/').all(|part| {
        !matches!(part, "" | "." | "..")
            && !part.contains(['\\', '\0'])
            && !part.chars().any(char::is_control)
    })
}

/// Keeps every value on one line.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_odd_values() {
        let marker = Marker {
            identifier: "tool\nv1\\x=y".into(),
            source: "https://e.com/a?b=c".into(),
            sha256: "ab".repeat(32),
            file_name: "tool".into(),
            size: 42,
            installed_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            member: None,
        };
        assert_eq!(Marker::decode(&marker.encode()), Some(marker.clone()));
        let tree = Marker {
            member: Some("tool-1.2/bin/tool".into()),
            ..marker
        };
        assert_eq!(Marker::decode(&tree.encode()), Some(tree));
    }

    #[test]
    fn rejects_a_member_that_climbs() {
        for member in ["../x", "a/../../x", "/etc/passwd", "a//b", r"a\\..\\b"] {
            let text = format!(
                "{HEADER}\nidentifier=a\nsource=b\nsha256=c\nfile=x\nsize=1\ninstalled=1\nmember={member}\n"
            );
            assert_eq!(Marker::decode(&text), None, "{member}");
        }
    }

    /// Regression: `installed=` past what SystemTime can hold panicked (overflow when
    /// adding a duration), in `installed()` and in every install of that identifier.
    #[test]
    fn an_install_time_out_of_range_is_garbage_not_a_panic() {
        let text = format!(
            "{HEADER}\nidentifier=a\nsource=b\nsha256=c\nfile=x\nsize=1\ninstalled={}\n",
            u64::MAX
        );
        assert_eq!(Marker::decode(&text), None);
    }

    #[test]
    fn rejects_a_file_name_that_is_a_path() {
        let text =
            format!("{HEADER}\nidentifier=a\nsource=b\nsha256=c\nfile=../x\nsize=1\ninstalled=1\n");
        assert_eq!(Marker::decode(&text), None);
    }
}
