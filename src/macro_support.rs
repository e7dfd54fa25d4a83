//! What the code that `#[cached]` generates calls. Not an API: only for the macro.

use std::sync::OnceLock;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::caches::DiskCache;
use crate::error::{Error, Result};

/// The function's cache, opened on first use (a failed open is retried by the next call).
pub fn cache<'a>(slot: &'a OnceLock<DiskCache>, name: &str) -> Result<&'a DiskCache> {
    if let Some(cache) = slot.get() {
        return Ok(cache);
    }
    let cache = DiskCache::new(name)?;
    Ok(slot.get_or_init(|| cache))
}

/// `prefix:` + the SHA-256 of the arguments' MessagePack encoding (hex): equal arguments,
/// equal key, whatever their size.
pub fn key(prefix: &str, args: &impl Serialize) -> Result<String> {
    let bytes = rmp_serde::to_vec(args).map_err(|e| Error::Encode {
        key: prefix.to_owned(),
        source: Box::new(e),
    })?;
    Ok(format!(
        "{prefix}:{}",
        crate::dirs::hex(&Sha256::digest(&bytes))
    ))
}

/// The loader error `#[cached]` hands `get_or_load` when the function failed; the function's
/// own error is returned instead.
#[derive(Debug)]
pub struct Failed;

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the memoized function failed")
    }
}

impl std::error::Error for Failed {}
