//! Safe defaults in a shared temp directory: a default directory that someone else owns,
//! that others can write, or that is a symlink, is refused by caches and by `execs` (nothing
//! installed, nothing planted returned), except the shared root `dbx_concurio` itself, for
//! which the per-user root `dbx_concurio-<uid>` (which must be ours too) is used instead; keys, identifiers and file names never address a
//! path outside the cache. Each case runs in a child with its own `DBX_CONCURIO_CACHE_DIR`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{child, child_role};
use dbx_concurio::caches::DiskCache;
use dbx_concurio::execs::{self, Executable};
use sha2::{Digest, Sha256};

const NOBODY: u32 = 65534;

#[test]
fn child_main() {
    let Some(role) = child_role() else { return };
    let result = match role.as_str() {
        "cache" => DiskCache::new("c").map(|c| c.directory().display().to_string()),
        "exec" => {
            let (source, id) = (env("SOURCE"), env("ID"));
            Executable::new(source, id)
                .install()
                .map(|p| p.display().to_string())
        }
        "list" => execs::installed(None).map(|all| {
            let ids: Vec<String> = all.into_iter().map(|i| i.identifier).collect();
            ids.join(",")
        }),
        other => panic!("unknown role {other}"),
    };
    match result {
        Ok(path) => println!("OK {path}"),
        Err(err) => println!("ERR {err}"),
    }
}

fn env(name: &str) -> String {
    std::env::var(name).expect(name)
}

/// Runs a child role with `base` as the base of the default locations.
fn run(base: &Path, role: &str, extra: &[(&str, &Path)]) -> Result<String, String> {
    let mut cmd = child("child_main", role);
    cmd.env("DBX_CONCURIO_CACHE_DIR", base)
        .env_remove("DBX_CONCURIO_OFFLINE");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    text.lines()
        .find_map(|l| {
            l.strip_prefix("OK ")
                .map(|p| Ok(p.to_owned()))
                .or_else(|| l.strip_prefix("ERR ").map(|e| Err(e.to_owned())))
        })
        .unwrap_or_else(|| panic!("no result: {text}"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The ways a directory can be controlled by someone else.
#[derive(Debug, Clone, Copy)]
enum Attack {
    /// Owned by another user (needs root to set up).
    Foreign,
    /// Writable by others.
    WorldWritable,
    /// A symlink to a directory the attacker chose.
    Symlink,
}

const ATTACKS: [Attack; 3] = [Attack::Foreign, Attack::WorldWritable, Attack::Symlink];

/// Plants `path` as a directory controlled by someone else; returns the attacker's
/// directory for a symlink. `None` if this attack cannot be set up here (said why).
fn plant(path: &Path, attack: Attack, elsewhere: &Path) -> Option<()> {
    match attack {
        Attack::Foreign if !is_root() => {
            eprintln!("skipped: chown to another user needs root");
            return None;
        }
        Attack::Foreign => {
            std::fs::create_dir(path).unwrap();
            std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        Attack::WorldWritable => {
            std::fs::create_dir(path).unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        Attack::Symlink => std::os::unix::fs::symlink(elsewhere, path).unwrap(),
    }
    Some(())
}

fn assert_refused(result: Result<String, String>, attack: Attack, what: &str) {
    let err = result.expect_err(&format!("{what} under a {attack:?} directory was used"));
    let reason = match attack {
        Attack::Foreign => format!("owned by uid {NOBODY}"),
        Attack::WorldWritable => "writable by group or others".into(),
        Attack::Symlink => "symbolic link".into(),
    };
    assert!(err.contains(&reason), "{what}, {attack:?}: {err}");
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// The per-user root used when the shared one is not ours.
fn own_root() -> String {
    // SAFETY: geteuid has no preconditions.
    format!("dbx_concurio-{}", unsafe { libc::geteuid() })
}

/// For every attack on every directory of `depths` (below a fresh base): plants it, runs
/// the child `role`, and checks that it was refused for that reason and wrote nothing there.
/// A depth below the per-user root gets a shared root that is not ours, too.
fn refused_everywhere(depths: &[&str], role: &str, extra: &[(&str, &Path)]) {
    for attack in ATTACKS {
        for depth in depths {
            let base = tempfile::tempdir().unwrap();
            let elsewhere = tempfile::tempdir().unwrap();
            if depth.starts_with(&own_root()) {
                let shared = base.path().join("dbx_concurio");
                std::fs::create_dir(&shared).unwrap();
                std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
            }
            let path = base.path().join(depth);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            if plant(&path, attack, elsewhere.path()).is_none() {
                continue;
            }
            assert_refused(run(base.path(), role, extra), attack, depth);
            assert_eq!(files_in(elsewhere.path()), 0, "written through a symlink");
            if !matches!(attack, Attack::Symlink) {
                assert_eq!(files_in(&path), 0, "{depth}, {attack:?}: written into it");
            }
        }
    }
}

/// For every attack on the shared root `dbx_concurio`: the child `role` succeeds in the
/// per-user root, and nothing is written into (or through) the planted one.
fn falls_back_to_the_per_user_root(role: &str, extra: &[(&str, &Path)]) {
    for attack in ATTACKS {
        let base = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let shared = base.path().join("dbx_concurio");
        if plant(&shared, attack, elsewhere.path()).is_none() {
            continue;
        }
        let used = run(base.path(), role, extra)
            .unwrap_or_else(|e| panic!("{attack:?}: no fallback: {e}"));
        let own = base.path().join(own_root());
        assert!(Path::new(&used).starts_with(&own), "{attack:?}: {used}");
        assert_eq!(files_in(elsewhere.path()), 0, "written through a symlink");
        if !matches!(attack, Attack::Symlink) {
            assert_eq!(files_in(&shared), 0, "{attack:?}: written into it");
        }
    }
}

#[test]
fn caches_refuse_default_directories_controlled_by_others() {
    // The named cache directory, and the per-user root.
    let own = own_root();
    refused_everywhere(&["dbx_concurio/c", &own, &format!("{own}/c")], "cache", &[]);
    falls_back_to_the_per_user_root("cache", &[]);
}

fn script(word: &str) -> Vec<u8> {
    format!("#!/bin/sh\necho {word}\n").into_bytes()
}

#[test]
fn execs_refuse_default_directories_controlled_by_others() {
    let src = tempfile::tempdir().unwrap();
    let source = src.path().join("tool");
    std::fs::write(&source, script("real")).unwrap();
    let extra = [("SOURCE", source.as_path()), ("ID", Path::new("tool-v1"))];
    let own = own_root();
    let depths = [
        "dbx_concurio/executables",
        &own,
        &format!("{own}/executables"),
    ];
    refused_everywhere(&depths, "exec", &extra);
    falls_back_to_the_per_user_root("exec", &extra);
}

/// An identifier directory planted, complete with a marker and an "executable", by someone
/// else: `install` must refuse it, never return the planted file.
#[test]
fn execs_never_run_a_planted_install() {
    let src = tempfile::tempdir().unwrap();
    let source = src.path().join("tool");
    std::fs::write(&source, script("real")).unwrap();
    let id = "planted-v1";
    let hash: String = Sha256::digest(id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    for attack in ATTACKS {
        let base = tempfile::tempdir().unwrap();
        let executables = base.path().join("dbx_concurio/executables");
        std::fs::create_dir_all(&executables).unwrap();
        for dir in [base.path().join("dbx_concurio"), executables.clone()] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let good = [("SOURCE", source.as_path()), ("ID", Path::new("good-v1"))];
        assert!(run(base.path(), "exec", &good).is_ok());
        let attacker = tempfile::tempdir().unwrap();
        let id_dir = executables.join(&hash);
        if plant(&id_dir, attack, attacker.path()).is_none() {
            continue;
        }
        let evil = script("planted");
        std::fs::write(id_dir.join("tool"), &evil).unwrap();
        std::fs::set_permissions(id_dir.join("tool"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let marker = format!(
            "dbx-concurio executable v1\nidentifier={id}\nsource=x\nsha256={}\nfile=tool\nsize={}\ninstalled=1\n",
            "0".repeat(64),
            evil.len()
        );
        std::fs::write(id_dir.join(".complete"), marker).unwrap();
        let extra = [("SOURCE", source.as_path()), ("ID", Path::new(id))];
        assert_refused(
            run(base.path(), "exec", &extra),
            attack,
            "identifier directory",
        );
        assert_eq!(
            std::fs::read(id_dir.join("tool")).unwrap(),
            evil,
            "nothing installed into it"
        );
        // The listing skips the planted directory, and does not let it hide the others.
        assert_eq!(
            run(base.path(), "list", &[]),
            Ok("good-v1".to_owned()),
            "{attack:?}"
        );
    }
}

/// Everything under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            }
            out.push(entry.path().strip_prefix(dir).unwrap().to_path_buf());
        }
    }
    out.sort();
    out
}

#[test]
fn keys_identifiers_and_file_names_stay_inside_the_cache() {
    let outer = tempfile::tempdir().unwrap();
    let dir = outer.path().join("cache");
    let cache = DiskCache::builder().directory(&dir).build().unwrap();
    let long = "../".repeat(300);
    let nasty = [
        "../escape",
        "../../../../../../tmp/escape",
        "/etc/passwd",
        "a/../../b",
        ".",
        "..",
        "nul\0byte",
        "blobs/../../x",
        long.as_str(),
    ];
    for (i, key) in nasty.iter().enumerate() {
        let big = vec![i as u8; 50_000]; // a value file too
        cache.set(key, &big, None).unwrap();
        assert_eq!(cache.get::<Vec<u8>>(key).unwrap().unwrap().value, big);
        cache
            .get_or_load(&format!("{key}/gol"), || Ok::<_, std::io::Error>(1u8), None)
            .unwrap();
    }
    let mut keys = cache.keys().unwrap();
    keys.sort();
    assert_eq!(keys.len(), 2 * nasty.len());
    // Only our own layout exists, whatever the keys were.
    assert_eq!(
        tree(outer.path())
            .iter()
            .filter(|p| p.components().count() == 1)
            .count(),
        1
    );
    for path in tree(&dir) {
        let top = path
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .into_owned();
        assert!(
            [
                "index",
                "blobs",
                ".key-locks",
                ".dbx-concurio",
                ".state",
                ".counters",
                ".open.lock"
            ]
            .contains(&top.as_str()),
            "unexpected {}",
            path.display()
        );
    }

    let src = tempfile::tempdir().unwrap();
    let source = src.path().join("tool");
    std::fs::write(&source, script("ok")).unwrap();
    let root = outer.path().join("root");
    for (id, name) in [
        ("../../evil", "../../evil"),
        ("/abs/id", "/etc/cron.d/x"),
        ("a\nb", ".."),
    ] {
        let path = Executable::new(source.display().to_string(), id)
            .cache_root(&root)
            .file_name(name)
            .install()
            .unwrap();
        let rel = path.strip_prefix(root.join("executables")).unwrap();
        assert_eq!(rel.components().count(), 2, "{}", path.display());
        let plain = rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        assert!(plain, "{}", path.display());
    }
    assert_eq!(execs::installed(Some(&root)).unwrap().len(), 3);
    let mut top: Vec<_> = tree(outer.path())
        .into_iter()
        .filter(|p| p.components().count() == 1)
        .collect();
    top.sort();
    assert_eq!(top, [PathBuf::from("cache"), PathBuf::from("root")]);
}
