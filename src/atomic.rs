//! Small files replaced atomically: readers see the old or the new contents, never a mix, and
//! the new contents survive a crash once this returns (file and directory are fsynced).

use std::io::Write;
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
