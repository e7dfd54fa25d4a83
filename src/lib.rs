//! # dbx-concurio
//!
//! A disk cache and an executable installer that many threads and processes can share.
//!
//! - [`caches::DiskCache`]: a persistent key/value cache with a compute-once
//!   [`get_or_load`](caches::DiskCache::get_or_load): the loader runs once across every
//!   thread and process asking for the same key; valid entries are read without any lock.
//! - [`execs::executable`]: downloads (or copies) an executable once, verifies it, installs
//!   it atomically with exec permissions, and returns its [`InstallPath`](execs::InstallPath).
//!
//! Defaults live under `$DBX_CONCURIO_CACHE_DIR`, or the system temp dir, in `dbx_concurio/`.
//! See `docs/design.md` for the on-disk format and the locking protocol.
#![deny(missing_docs)]
#![warn(unsafe_op_in_unsafe_fn)]
#![cfg_attr(not(feature = "download"), allow(dead_code))]

#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
#[path = "fuzz.rs"]
pub mod __fuzz;
#[cfg(feature = "macros")]
#[doc(hidden)]
#[path = "macro_support.rs"]
pub mod __macro;
mod atomic;
pub mod caches;
mod dirs;
mod error;
pub mod execs;
mod lock;
mod sys;

/// Memoizes a function in a [`caches::DiskCache`] (feature `macros`); see
/// [`dbx_concurio_macros::cached`].
#[cfg(feature = "macros")]
pub use dbx_concurio_macros::cached;
pub use dirs::{CACHE_DIR_ENV, base_dir, default_root};
pub use error::{BoxError, Error, Result};

// The README's examples are compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
