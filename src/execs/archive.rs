//! Extracting one member of a `.tar`, `.tar.gz`, `.tar.xz` or `.zip` archive.
//!
//! Only the named member is read, and it is written into a staging file we create: no
//! archive path is ever joined to a directory, so nothing can land outside the identifier's
//! directory. Members that are absolute, climb with `..`, or are links are refused.

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
pub(super) use formats::extract;

/// Without the `download` feature there is no archive support.
#[cfg(not(feature = "download"))]
pub(super) fn extract(
    _archive: &Path,
    _member: &[String],
    _dir: &Path,
    source_name: &str,
) -> Result<tempfile::NamedTempFile> {
    Err(Error::Unsupported(format!(
        "cannot extract from {source_name}: dbx-concurio was built without its `download` feature"
    )))
}

/// The components of an entry name, or `None` if it is not a plain relative path (such an
/// entry can never be the member we were asked for).
fn entry_components<'a>(parts: impl Iterator<Item = &'a str>) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for part in parts {
        match part {
            "" | "." => {}
            ".." => return None,
            part => out.push(part.to_owned()),
        }
    }
    Some(out)
}

#[cfg(feature = "download")]
mod formats {
    use std::fs::File;
    use std::io::{self, Read, Seek};
    use std::path::{Component, Path};

    use tempfile::NamedTempFile;

    use super::{archive_error, entry_components};
    use crate::error::{IoContext, Result};
    use crate::execs::staging::staging_file;

    enum Format {
        Tar,
        TarGz,
        TarXz,
        Zip,
    }

    /// Extracts `member` of the archive file `archive` into a new staging file in `dir`.
    pub(in crate::execs) fn extract(
        archive: &Path,
        member: &[String],
        dir: &Path,
        source_name: &str,
    ) -> Result<NamedTempFile> {
        let mut file = File::open(archive).at("open", archive)?;
        let format = sniff(&mut file, archive, source_name)?;
        let wanted = member.join("/");
        let out = staging_file(dir)?;
        let result = match format {
            Format::Tar => from_tar(file, member, out),
            Format::TarGz => from_tar(flate2::read::MultiGzDecoder::new(file), member, out),
            Format::TarXz => from_tar(xz2::read::XzDecoder::new(file), member, out),
            Format::Zip => from_zip(file, member, out),
        };
        match result {
            Ok(Some(out)) => Ok(out),
            Ok(None) => Err(archive_error(
                source_name,
                format!("it has no member {wanted:?}"),
            )),
            Err(Refusal::Unsafe(kind)) => Err(archive_error(
                source_name,
                format!("member {wanted:?} is {kind}; refusing to install it"),
            )),
            Err(Refusal::Read(err)) => Err(archive_error(
                source_name,
                format!("cannot read it (looking for {wanted:?}): {err}"),
            )),
        }
    }

    enum Refusal {
        Unsafe(&'static str),
        Read(io::Error),
    }

    impl From<io::Error> for Refusal {
        fn from(err: io::Error) -> Self {
            Refusal::Read(err)
        }
    }

    impl From<zip::result::ZipError> for Refusal {
        fn from(err: zip::result::ZipError) -> Self {
            Refusal::Read(io::Error::other(err))
        }
    }

    /// The format, from magic bytes rather than the name: download URLs often have none.
    fn sniff(file: &mut File, path: &Path, source_name: &str) -> Result<Format> {
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
        if head.starts_with(&[0x1f, 0x8b]) {
            Ok(Format::TarGz)
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Ok(Format::TarXz)
        } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
            Ok(Format::Zip)
        } else if head.get(257..262) == Some(b"ustar") {
            Ok(Format::Tar)
        } else {
            Err(archive_error(
                source_name,
                "not a .tar, .tar.gz, .tar.xz or .zip archive".into(),
            ))
        }
    }

    fn from_tar(
        input: impl Read,
        member: &[String],
        mut out: NamedTempFile,
    ) -> Result<Option<NamedTempFile>, Refusal> {
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
            if !plain || entry_components(parts.into_iter()).as_deref() != Some(member) {
                continue;
            }
            let kind = entry.header().entry_type();
            if kind.is_symlink() {
                return Err(Refusal::Unsafe("a symbolic link"));
            }
            if kind.is_hard_link() {
                return Err(Refusal::Unsafe("a hard link"));
            }
            if !(kind.is_file() || kind.is_contiguous()) {
                return Err(Refusal::Unsafe("not a regular file"));
            }
            io::copy(&mut entry, &mut out)?;
            return Ok(Some(out));
        }
        Ok(None)
    }

    fn from_zip(
        input: File,
        member: &[String],
        mut out: NamedTempFile,
    ) -> Result<Option<NamedTempFile>, Refusal> {
        let mut archive = zip::ZipArchive::new(input)?;
        for index in 0..archive.len() {
            let mut entry = archive.by_index(index)?;
            if entry_components(entry.name().split('/')).as_deref() != Some(member) {
                continue;
            }
            if entry.is_symlink() {
                return Err(Refusal::Unsafe("a symbolic link"));
            }
            if !entry.is_file() {
                return Err(Refusal::Unsafe("not a regular file"));
            }
            io::copy(&mut entry, &mut out)?;
            return Ok(Some(out));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
