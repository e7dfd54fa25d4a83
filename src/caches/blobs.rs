//! Reading value files (values whose encoding exceeds `INLINE_MAX` live in their own file).

use std::fs;
use std::path::Path;

/// Bytes of a value file. Large files are memory-mapped and decoded in place: reading a
/// 16 MiB file into a fresh buffer costs more in page faults than the copy itself.
pub(crate) fn read_blob(path: &Path) -> std::io::Result<BlobBytes> {
    const MAP_FROM: u64 = 1 << 20;
    let file = fs::File::open(path)?;
    if file.metadata()?.len() < MAP_FROM {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut bytes)?;
        return Ok(BlobBytes::Read(bytes));
    }
    // SAFETY: value files are written once, before the record naming them is committed, and
    // never modified afterwards: replacing or evicting an entry unlinks its file, which keeps
    // existing mappings valid. Only someone truncating files in our 0700 directory by hand
    // could make the mapping fault.
    Ok(BlobBytes::Mapped(unsafe { memmap2::Mmap::map(&file)? }))
}

pub(crate) enum BlobBytes {
    Read(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for BlobBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            BlobBytes::Read(bytes) => bytes,
            BlobBytes::Mapped(map) => map,
        }
    }
}
