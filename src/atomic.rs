//! Small files replaced atomically: readers see the old or the new contents, never a mix, and
//! the new contents survive a crash once this returns (file and directory are fsynced). And
//! read whole, cheaply.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::sys;

/// Writes `bytes` to a temp file named `<temp_prefix>…` beside `path`, fsyncs it, renames it
/// over `path`, and fsyncs the directory. The prefix lets each owner recognize the temp files
/// a killed writer leaves behind as debris.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8], temp_prefix: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::Builder::new()
        .prefix(temp_prefix)
        .tempfile_in(dir)
        .at("create temp file in", dir)?;
    file.write_all(bytes).at("write", file.path())?;
    file.as_file().sync_all().at("sync", file.path())?;
    file.persist(path)
        .map_err(|e| Error::io("rename into", path, e.error))?;
    sys::sync_dir(dir).at("sync", dir)
}

/// Reads a small file whole: `fs::read` without the `statx` it makes for a size hint. Every
/// open of a cache reads two such files of a few dozen bytes (the marker and `.state`).
pub(crate) fn read_small(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(bytes),
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_small_reads_files_of_any_length_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        for len in [0, 1, 255, 256, 257, 10_000] {
            let path = dir.path().join(format!("f{len}"));
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            std::fs::write(&path, &bytes).expect("write");
            assert_eq!(read_small(&path).expect("read"), bytes, "{len} bytes");
        }
        let missing = read_small(&dir.path().join("missing")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }
}
