//! Archives (`.tar`, `.tar.gz`, `.tar.xz`, `.tar.zst`, `.zip`): one member, or the whole tree.
//!
//! One member is written into a staging file we create: no archive path is ever joined to a
//! directory. A whole tree is unpacked by [`super::tree`], which never writes outside its
//! directory. Either way, entries that are absolute, climb with `..`, or are hard links are
//! refused; the chosen member must be a regular file. A member that is missing is reported
//! with the closest names in the archive.

use std::path::{Component, Path};

use crate::error::{Error, Result};

/// The member's path components, after checking it is a plain relative path.
pub(super) fn member_components(member: &str, source_name: &str) -> Result<Vec<String>> {
    let path = Path::new(member);
    let mut components = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(c) => components.push(c.to_string_lossy().into_owned()),
            Component::CurDir => {}
            _ => return Err(unsafe_member(member, source_name)),
        }
    }
    // A `\` in a zip member on Unix, or a `..` hidden in one: refuse rather than guess.
    if components.is_empty() || components.iter().any(|c| c == ".." || c.contains('\\')) {
        return Err(unsafe_member(member, source_name));
    }
    Ok(components)
}

fn unsafe_member(member: &str, source_name: &str) -> Error {
    archive_error(
        source_name,
        format!("member path {member:?} must be relative, without '..'; refusing it"),
    )
}

fn archive_error(source_name: &str, reason: String) -> Error {
    Error::Archive {
        source_name: source_name.to_owned(),
        reason,
    }
}

#[cfg(feature = "download")]
pub(super) use formats::{extract, extract_tree, members};

/// Without the `download` feature there is no archive support.
#[cfg(not(feature = "download"))]
pub(super) fn extract(
    _archive: &Path,
    _member: &[String],
    _dir: &Path,
    source_name: &str,
) -> Result<tempfile::NamedTempFile> {
    Err(unsupported(source_name))
}

/// Without the `download` feature there is no archive support.
#[cfg(not(feature = "download"))]
pub(super) fn extract_tree(
    _archive: &Path,
    _member: &[String],
    _dir: &Path,
    source_name: &str,
) -> Result<tempfile::TempDir> {
    Err(unsupported(source_name))
}

/// Without the `download` feature nothing is recognized as an archive.
#[cfg(not(feature = "download"))]
pub(super) fn members(_file: &Path, _source_name: &str) -> Result<Option<Vec<String>>> {
    Ok(None)
}

#[cfg(not(feature = "download"))]
fn unsupported(source_name: &str) -> Error {
    Error::Unsupported(format!(
        "cannot extract from {source_name}: dbx-concurio was built without its `download` feature"
    ))
}

/// The components of an entry name, or `None` if it is not a plain relative path (such an
/// entry can never be the member we were asked for, and is never unpacked).
#[cfg_attr(not(feature = "download"), allow(dead_code))]
fn entry_components<'a>(parts: impl Iterator<Item = &'a str>) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for part in parts {
        match part {
            "" | "." => {}
            ".." => return None,
            part if part.contains('\\') => return None,
            part => out.push(part.to_owned()),
        }
    }
    Some(out)
}

/// "no member X; closest: a, b, c (N files)": what to say when the member is missing.
#[cfg_attr(not(feature = "download"), allow(dead_code))]
fn missing_member(source_name: &str, wanted: &str, names: &[String]) -> Error {
    // Edit distances are quadratic: over the names with the same base name, plus the first
    // few thousand, so that a typo in a huge archive still fails fast.
    const SCORED: usize = 2000;
    let base = wanted.rsplit('/').next().unwrap_or(wanted);
    let mut scored: Vec<(usize, &String)> = names
        .iter()
        .enumerate()
        .filter(|(i, name)| *i < SCORED || name.rsplit('/').next() == Some(base))
        .map(|(_, name)| (closeness(wanted, name), name))
        .collect();
    scored.sort();
    let closest: Vec<&str> = scored.iter().take(5).map(|(_, n)| n.as_str()).collect();
    let reason = if closest.is_empty() {
        format!("it has no member {wanted:?} (it has no files)")
    } else {
        format!(
            "it has no member {wanted:?}; closest: {} ({} files)",
            closest.join(", "),
            names.len()
        )
    };
    archive_error(source_name, reason)
}

/// The name of an archive without its extensions: the default directory of a whole tree.
pub(super) fn stem(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    let extensions = [
        ".tar.gz",
        ".tar.xz",
        ".tar.zst",
        ".tar.zstd",
        ".tgz",
        ".txz",
        ".tzst",
        ".tar",
        ".zip",
    ];
    extensions
        .iter()
        .find(|ext| lower.ends_with(*ext) && lower.len() > ext.len())
        .map_or_else(
            || name.to_owned(),
            |ext| name[..name.len() - ext.len()].to_owned(),
        )
}

/// "it is an archive; choose ... : a, b, c": an archive source without a member.
pub(super) fn no_member_chosen(source_name: &str, names: &[String]) -> Error {
    const SHOWN: usize = 20;
    let mut listed = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        listed.push_str(&format!(", ... ({} files)", names.len()));
    }
    archive_error(
        source_name,
        format!(
            "it is an archive: choose the executable with archive_member (--member); \
             its files: {listed}"
        ),
    )
}

/// Edit distance between `wanted` and `name`, with a bonus for the same base name (the
/// usual mistake is the directory: `bin/tool` for `tool-1.2/bin/tool`).
#[cfg_attr(not(feature = "download"), allow(dead_code))]
fn closeness(wanted: &str, name: &str) -> usize {
    let base = |s: &str| s.rsplit('/').next().unwrap_or(s).to_owned();
    let distance = levenshtein(wanted, name);
    if base(wanted) == base(name) {
        distance / 4
    } else {
        distance
    }
}

#[cfg_attr(not(feature = "download"), allow(dead_code))]
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(feature = "download")]
mod formats {
    use std::fs::File;
    use std::io::{self, Read, Seek};
    use std::path::{Component, Path};

    use tempfile::{NamedTempFile, TempDir};

    use super::{archive_error, entry_components, missing_member};
    use crate::error::{IoContext, Result};
    use crate::execs::marker::STAGING_PREFIX;
    use crate::execs::staging::staging_file;
    use crate::execs::tree::{self, Refusal, TreeWriter};
    use crate::sys;

    enum Compression {
        None,
        Gz,
        Xz,
        Zst,
    }

    enum Format {
        Tar(Compression),
        Zip,
    }

    /// What an entry is.
    enum Kind {
        File { executable: bool },
        Dir,
        Symlink(String),
        HardLink,
        Other,
    }

    /// One entry: its name as written, its plain components (`None`: absolute or `..`),
    /// what it is, and its data.
    struct Entry<'a> {
        name: String,
        parts: Option<Vec<String>>,
        kind: Kind,
        data: &'a mut dyn Read,
    }

    enum Flow {
        Next,
        Stop,
    }

    /// Extracts `member` of the archive file `archive` into a new staging file in `dir`.
    pub(in crate::execs) fn extract(
        archive: &Path,
        member: &[String],
        dir: &Path,
        source_name: &str,
    ) -> Result<NamedTempFile> {
        let (format, file) = open(archive, source_name)?;
        let wanted = member.join("/");
        let mut out = Some(staging_file(dir)?);
        let mut found = None;
        let mut names = Vec::new();
        let result = visit(format, file, &mut |entry| {
            if entry.parts.as_deref() != Some(member) {
                if matches!(entry.kind, Kind::File { .. } | Kind::Symlink(_)) {
                    names.push(entry.name);
                }
                return Ok(Flow::Next);
            }
            match entry.kind {
                Kind::File { .. } => {}
                Kind::Symlink(_) => return Err(Refusal::Unsafe("a symbolic link".into())),
                Kind::HardLink => return Err(Refusal::Unsafe("a hard link".into())),
                _ => return Err(Refusal::Unsafe("not a regular file".into())),
            }
            if let Some(mut file) = out.take() {
                io::copy(entry.data, &mut file)?;
                found = Some(file);
            }
            Ok(Flow::Stop)
        });
        match result {
            Ok(()) => found.ok_or_else(|| missing_member(source_name, &wanted, &names)),
            Err(Refusal::Unsafe(kind)) => Err(archive_error(
                source_name,
                format!("member {wanted:?} is {kind}; refusing to install it"),
            )),
            Err(Refusal::Io(err)) => Err(archive_error(
                source_name,
                format!("cannot read it (looking for {wanted:?}): {err}"),
            )),
        }
    }

    /// Unpacks the whole archive into a new staging directory in `dir`, checks that
    /// `member` is a regular file in it and makes that executable.
    pub(in crate::execs) fn extract_tree(
        archive: &Path,
        member: &[String],
        dir: &Path,
        source_name: &str,
    ) -> Result<TempDir> {
        let (format, file) = open(archive, source_name)?;
        let staging = tempfile::Builder::new()
            .prefix(STAGING_PREFIX)
            .tempdir_in(dir)
            .at("create staging directory in", dir)?;
        let tree = TreeWriter::new(staging.path());
        let mut names = Vec::new();
        let result = visit(format, file, &mut |entry| {
            let Some(parts) = entry.parts else {
                return Err(Refusal::Unsafe(format!(
                    "entry {:?} is absolute or climbs with '..'",
                    entry.name
                )));
            };
            if parts.is_empty() {
                return Ok(Flow::Next); // the archive's own root, "./"
            }
            match entry.kind {
                Kind::Dir => {
                    tree.dir(&parts)?;
                }
                Kind::File { executable } => {
                    tree.file(&parts, entry.data, executable)?;
                    names.push(entry.name);
                }
                Kind::Symlink(target) => {
                    tree.symlink(&parts, &target)?;
                    names.push(entry.name);
                }
                Kind::HardLink => {
                    return Err(Refusal::Unsafe(format!("{:?} is a hard link", entry.name)));
                }
                Kind::Other => {
                    return Err(Refusal::Unsafe(format!(
                        "{:?} is not a file, directory or symbolic link",
                        entry.name
                    )));
                }
            }
            Ok(Flow::Next)
        });
        match result {
            Ok(()) => {}
            Err(Refusal::Unsafe(reason)) => {
                return Err(archive_error(
                    source_name,
                    format!("{reason}; refusing to unpack it"),
                ));
            }
            Err(Refusal::Io(err)) => {
                return Err(archive_error(
                    source_name,
                    format!("cannot unpack it: {err}"),
                ));
            }
        }
        if !tree::is_plain_file(staging.path(), member) {
            return Err(missing_member(source_name, &member.join("/"), &names));
        }
        let file = tree::open(staging.path(), member).at("open", staging.path())?;
        sys::make_executable(&file).at("make executable", staging.path())?;
        Ok(staging)
    }

    /// The files of `file` if it is an archive; `None` if it is not one.
    pub(in crate::execs) fn members(file: &Path, source_name: &str) -> Result<Option<Vec<String>>> {
        let mut handle = File::open(file).at("open", file)?;
        let Some(format) = sniff(&mut handle, file)? else {
            return Ok(None);
        };
        let mut names = Vec::new();
        visit(format, handle, &mut |entry| {
            if matches!(entry.kind, Kind::File { .. } | Kind::Symlink(_)) {
                names.push(entry.name);
            }
            Ok(Flow::Next)
        })
        .map_err(|refusal| {
            let reason = match refusal {
                Refusal::Unsafe(reason) => reason,
                Refusal::Io(err) => err.to_string(),
            };
            archive_error(
                source_name,
                format!("it looks like an archive but cannot be read: {reason}"),
            )
        })?;
        Ok(Some(names))
    }

    fn open(archive: &Path, source_name: &str) -> Result<(Format, File)> {
        let mut file = File::open(archive).at("open", archive)?;
        match sniff(&mut file, archive)? {
            Some(format) => Ok((format, file)),
            None => Err(archive_error(
                source_name,
                "not a .tar, .tar.gz, .tar.xz, .tar.zst or .zip archive".into(),
            )),
        }
    }

    /// The format, from magic bytes rather than the name: download URLs often have none.
    fn sniff(file: &mut File, path: &Path) -> Result<Option<Format>> {
        let mut head = [0u8; 262];
        let mut len = 0;
        while len < head.len() {
            match file.read(&mut head[len..]).at("read", path)? {
                0 => break,
                n => len += n,
            }
        }
        file.rewind().at("read", path)?;
        let head = &head[..len];
        Ok(if head.starts_with(&[0x1f, 0x8b]) {
            Some(Format::Tar(Compression::Gz))
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Some(Format::Tar(Compression::Xz))
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Format::Tar(Compression::Zst))
        } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
            Some(Format::Zip)
        } else if head.get(257..262) == Some(b"ustar") {
            Some(Format::Tar(Compression::None))
        } else {
            None
        })
    }

    fn visit(
        format: Format,
        file: File,
        f: &mut dyn FnMut(Entry<'_>) -> Result<Flow, Refusal>,
    ) -> Result<(), Refusal> {
        match format {
            Format::Tar(Compression::None) => visit_tar(file, f),
            Format::Tar(Compression::Gz) => visit_tar(flate2::read::MultiGzDecoder::new(file), f),
            Format::Tar(Compression::Xz) => visit_tar(xz2::read::XzDecoder::new(file), f),
            Format::Tar(Compression::Zst) => visit_tar(zstd::stream::read::Decoder::new(file)?, f),
            Format::Zip => visit_zip(file, f),
        }
    }

    fn visit_tar(
        input: impl Read,
        f: &mut dyn FnMut(Entry<'_>) -> Result<Flow, Refusal>,
    ) -> Result<(), Refusal> {
        let mut archive = tar::Archive::new(input);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.into_owned();
            let mut plain = true;
            let parts: Vec<&str> = path
                .components()
                .filter_map(|c| match c {
                    Component::Normal(c) => c.to_str(),
                    Component::CurDir => None,
                    _ => {
                        plain = false;
                        None
                    }
                })
                .collect();
            let parts = entry_components(parts.into_iter()).filter(|_| plain);
            let kind = entry.header().entry_type();
            let kind = if kind.is_symlink() {
                let target = entry.link_name()?.unwrap_or_default();
                Kind::Symlink(target.to_string_lossy().into_owned())
            } else if kind.is_hard_link() {
                Kind::HardLink
            } else if kind.is_dir() {
                Kind::Dir
            } else if kind.is_file() || kind.is_contiguous() {
                let mode = entry.header().mode().unwrap_or(0o644);
                Kind::File {
                    executable: mode & 0o111 != 0,
                }
            } else {
                Kind::Other
            };
            let name = path.to_string_lossy().into_owned();
            if stop(f, name, parts, kind, &mut entry)? {
                break;
            }
        }
        Ok(())
    }

    /// Hands one entry to the visitor; whether it wants no more.
    fn stop(
        f: &mut dyn FnMut(Entry<'_>) -> Result<Flow, Refusal>,
        name: String,
        parts: Option<Vec<String>>,
        kind: Kind,
        data: &mut dyn Read,
    ) -> Result<bool, Refusal> {
        let entry = Entry {
            name,
            parts,
            kind,
            data,
        };
        Ok(matches!(f(entry)?, Flow::Stop))
    }

    fn visit_zip(
        input: File,
        f: &mut dyn FnMut(Entry<'_>) -> Result<Flow, Refusal>,
    ) -> Result<(), Refusal> {
        let mut archive = zip::ZipArchive::new(input).map_err(io::Error::other)?;
        for index in 0..archive.len() {
            let mut entry = archive.by_index(index).map_err(io::Error::other)?;
            let name = entry.name().to_owned();
            // A leading '/' is an absolute path, not a name to clean up.
            let parts = entry_components(name.split('/')).filter(|_| !name.starts_with('/'));
            let kind = if entry.is_symlink() {
                let mut target = String::new();
                entry.read_to_string(&mut target)?;
                Kind::Symlink(target)
            } else if entry.is_dir() {
                Kind::Dir
            } else if entry.is_file() {
                Kind::File {
                    executable: entry.unix_mode().is_some_and(|m| m & 0o111 != 0),
                }
            } else {
                Kind::Other
            };
            if stop(f, name, parts, kind, &mut entry)? {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_names_come_first() {
        let names: Vec<String> = ["README", "tool-1.2/bin/tool", "tool-1.2/lib/libtool.so"]
            .map(String::from)
            .to_vec();
        let err = missing_member("a.tgz", "bin/tool", &names).to_string();
        let at = |s: &str| err.find(s).unwrap_or(usize::MAX);
        assert!(at("tool-1.2/bin/tool") < at("README"), "{err}");
        assert!(err.contains("(3 files)"), "{err}");
        assert_eq!(levenshtein("kitten", "sitting"), 3);
    }

    #[test]
    fn member_paths_must_be_plain() {
        assert_eq!(
            member_components("./bin/tool", "a").ok(),
            Some(vec!["bin".to_owned(), "tool".to_owned()])
        );
        for bad in ["", ".", "/bin/tool", "../tool", "bin/../../x", "a\\..\\b"] {
            assert!(
                matches!(member_components(bad, "a"), Err(Error::Archive { .. })),
                "{bad:?} accepted"
            );
        }
    }
}
