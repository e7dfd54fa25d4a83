//! Platform-specific pieces, one file per platform, all exporting the same functions, so the
//! rest of the crate carries no `cfg`.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use windows::*;
