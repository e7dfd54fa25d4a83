//! The install protocol, in named steps.
//!
//! 1. `validate`: arguments checked and paths worked out before any request.
//! 2. `check_installed`, lock-free: a marker naming an intact file (with the pinned sha256,
//!    if one is pinned) means installed.
//! 3. `install_under_lock`: take `<executables>/<hash>.lock` (see `id_lock`), check again:
//!    another process may have installed it while we waited.
//! 4. `fetch_and_publish`: remove staging debris of killed installers, fetch (resuming a
//!    kept partial download, see `partial`), verify, extract the member or unpack the whole
//!    tree, publish it (see `publish`), write the marker last (atomically). Readers never see
//!    a partial file: the lock saves duplicate downloads and guards `.partial`; the renames
//!    keep the cache correct. A failed first install removes its directory and lock file.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::fetch::{Source, fetch};
use super::id_lock::IdLock;
use super::layout::{executables_dir, find_installed, identifier_hash, lock_path};
use super::marker::Marker;
use super::publish::{publish_file, publish_tree};
use super::staging::{FetchOptions, clean_staging};
use super::{Executable, InstallPath, OnComplete, archive, parse_sha256};
use crate::dirs;
use crate::error::{Error, Result};

/// One install, validated: everything the steps below need, nothing left to check.
struct Plan {
    source: String,
    parsed: Source,
    identifier: String,
    expected: Option<String>,
    member: Option<Vec<String>>,
    file_name: String,
    on_complete: Option<OnComplete>,
    timeout: Duration,
    retries: u32,
    headers: Vec<(String, String)>,
    max_size: Option<u64>,
    whole_archive: bool,
    force: bool,
    offline: bool,
    executables: PathBuf,
    hash: String,
    id_dir: PathBuf,
}

pub(super) fn install(exe: Executable) -> Result<InstallPath> {
    let mut plan = validate(exe)?;
    if let Some(path) = check_installed(&plan)? {
        return Ok(InstallPath::new(path, plan.on_complete.take()));
    }
    if plan.offline {
        return Err(Error::Offline {
            identifier: plan.identifier,
            source_name: plan.source,
        });
    }
    let path = install_under_lock(&plan)?;
    Ok(InstallPath::new(path, plan.on_complete.take()))
}

/// Step 1: checks the arguments (before any request) and works out the paths.
fn validate(exe: Executable) -> Result<Plan> {
    let offline = exe.is_offline();
    let Executable {
        source,
        identifier,
        sha256,
        archive_member,
        on_complete,
        timeout,
        retries,
        offline: _,
        headers,
        force,
        cache_root,
        file_name,
        max_size,
        whole_archive,
    } = exe;
    if identifier.is_empty() {
        return Err(Error::InvalidInput(
            "the identifier may not be empty".into(),
        ));
    }
    let expected = sha256.as_deref().map(parse_sha256).transpose()?;
    let parsed = Source::parse(&source)?;
    let member = archive_member
        .as_deref()
        .map(|m| archive::member_components(m, &source))
        .transpose()?;
    let file_name = sanitize_file_name(file_name.or_else(|| match &member {
        // The tree's directory: the archive's name without its extensions.
        Some(_) if whole_archive => parsed.last_segment().map(|s| archive::stem(&s)),
        Some(member) => member.last().cloned(),
        None => parsed.last_segment(),
    }));
    let executables = executables_dir(cache_root.as_deref())?;
    let hash = identifier_hash(&identifier);
    let id_dir = executables.join(&hash);
    Ok(Plan {
        source,
        parsed,
        identifier,
        expected,
        member,
        file_name,
        on_complete,
        timeout,
        retries,
        headers,
        max_size,
        whole_archive,
        force,
        offline,
        executables,
        hash,
        id_dir,
    })
}

/// Step 2, without a lock: the installed path, if the identifier is installed and the plan
/// does not ask for a reinstall.
fn check_installed(plan: &Plan) -> Result<Option<PathBuf>> {
    // Offline means "only the cache", so it also overrides `force`.
    if plan.force && !plan.offline {
        return Ok(None);
    }
    let found = find_current(plan)?;
    if let Some(path) = &found {
        tracing::debug!("{:?} is installed at {}", plan.identifier, path.display());
    }
    Ok(found)
}

/// The installed file, unless there is none or its bytes are not the pinned ones: a caller
/// who now pins another sha256 gets those bytes, not what an earlier call installed (as
/// pooch re-downloads when the hash differs).
fn find_current(plan: &Plan) -> Result<Option<PathBuf>> {
    let Some((marker, path)) = find_installed(&plan.id_dir)? else {
        return Ok(None);
    };
    if let Some(expected) = plan.expected.as_ref().filter(|e| **e != marker.sha256) {
        tracing::info!(
            "{:?} is installed with sha256 {}, but {expected} is pinned: reinstalling",
            plan.identifier,
            marker.sha256
        );
        return Ok(None);
    }
    Ok(Some(path))
}

/// Step 3: takes the identifier's lock, checks again (another process may have installed it
/// while we waited), then fetches, verifies and publishes.
fn install_under_lock(plan: &Plan) -> Result<PathBuf> {
    dirs::prepare(&plan.executables)?;
    let lock = IdLock::acquire(&lock_path(&plan.executables, &plan.hash))?;
    if !plan.force
        && let Some(path) = find_current(plan)?
    {
        tracing::debug!("{:?} was installed by another process", plan.identifier);
        return Ok(path);
    }
    // Under the lock: gc may have removed the directory since any earlier check.
    dirs::prepare(&plan.id_dir)?;
    clean_staging(&plan.id_dir);
    let result = fetch_and_publish(plan, lock.is_exclusive());
    // A failed first install leaves no empty directory and no lock file behind. `remove_dir`
    // only removes an empty one: an earlier install or a kept partial download stays.
    if result.is_err() && std::fs::remove_dir(&plan.id_dir).is_ok() {
        lock.remove();
    }
    result
}

/// Step 4 (under the lock): fetch, verify, extract, publish, write the marker.
fn fetch_and_publish(plan: &Plan, exclusive: bool) -> Result<PathBuf> {
    let id_dir = &plan.id_dir;
    let options = FetchOptions {
        timeout: plan.timeout,
        retries: plan.retries,
        headers: &plan.headers,
        max_size: plan.max_size,
        resumable: exclusive,
    };
    let fetched = fetch(&plan.parsed, id_dir, &options)?;
    if let Some(expected) = plan.expected.as_ref().filter(|e| **e != fetched.sha256) {
        return Err(Error::ChecksumMismatch {
            source_name: plan.source.clone(),
            expected: expected.clone(),
            actual: fetched.sha256,
        });
    }
    let target = id_dir.join(&plan.file_name);
    let published = match (&plan.member, plan.whole_archive) {
        (None, _) => {
            refuse_archive(plan, fetched.file.path())?;
            publish_file(fetched.file, &target, id_dir)?
        }
        (Some(member), false) => {
            let staged = archive::extract(fetched.file.path(), member, id_dir, &plan.source)?;
            publish_file(staged, &target, id_dir)?
        }
        (Some(member), true) => {
            let tree = archive::extract_tree(fetched.file.path(), member, id_dir, &plan.source)?;
            publish_tree(tree, member, &target, id_dir)?
        }
    };
    let member = plan
        .member
        .as_ref()
        .filter(|_| plan.whole_archive)
        .map(|m| m.join("/"));
    let path = member
        .iter()
        .flat_map(|m| m.split('/'))
        .fold(target, |path, part| path.join(part));

    let previous = Marker::read(id_dir).ok().flatten();
    let marker = Marker {
        identifier: plan.identifier.clone(),
        source: plan.source.clone(),
        sha256: fetched.sha256,
        file_name: plan.file_name.clone(),
        size: published.size,
        installed_at: SystemTime::now(),
        member,
    };
    marker.write(id_dir)?;
    // What the new install replaced: no longer referenced now that the marker is written.
    if let Some(aside) = published.replaced {
        remove_path(&aside);
    }
    if let Some(previous) = previous.filter(|p| p.file_name != marker.file_name) {
        remove_path(&id_dir.join(previous.file_name));
    }
    tracing::info!(
        "installed {:?} from {} at {}",
        marker.identifier,
        marker.source,
        path.display()
    );
    Ok(path)
}

/// An archive fetched without a member to install is an error that lists its files (an
/// archive is not an executable; installing it with the exec bit helped no one).
fn refuse_archive(plan: &Plan, file: &Path) -> Result<()> {
    match archive::members(file, &plan.source)? {
        Some(names) => Err(archive::no_member_chosen(&plan.source, &names)),
        None if plan.whole_archive => Err(Error::InvalidInput(format!(
            "whole_archive: {} is not an archive",
            plan.source
        ))),
        None => Ok(()),
    }
}

/// Removes a replaced file or tree (best effort: the next install's cleanup or gc retries).
fn remove_path(path: &Path) {
    let removed = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => return,
    };
    if let Err(err) = removed {
        tracing::warn!("cannot remove {}: {err}", path.display());
    }
}

/// Turns a wished-for name into a plain one: separators and control characters become `_`,
/// and a leading dot too (dot names are ours: the marker and staging files).
fn sanitize_file_name(name: Option<String>) -> String {
    let name = name.unwrap_or_default();
    let mut clean: String = name
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c == '\0' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if clean.starts_with('.') {
        clean.replace_range(..1, "_");
    }
    if clean.is_empty() {
        clean = "executable".into();
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::execs::marker::is_plain_name;

    #[test]
    fn file_names_are_plain() {
        for (wish, got) in [
            (Some("tool"), "tool"),
            (Some("../x"), "_._x"),
            (Some(".complete"), "_complete"),
            (Some("a\nb"), "a_b"),
            (Some(""), "executable"),
            (None, "executable"),
        ] {
            let clean = sanitize_file_name(wish.map(str::to_owned));
            assert_eq!(clean, got);
            assert!(is_plain_name(&clean));
        }
    }
}
