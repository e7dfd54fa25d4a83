//! Directory resolution, fallback and safety checks. Each case runs in a child process with
//! its own `DBX_CONCURIO_CACHE_DIR`, since the environment is process-wide.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{child, child_role};
use dbx_concurio::caches::DiskCache;

#[test]
fn child_main() {
    let Some(role) = child_role() else { return };
    let builder = DiskCache::builder();
    let builder = match role.split_once(':') {
        Some(("file", p)) => builder.for_file(p),
        Some(("dir", p)) => builder.directory(p),
        Some(("path", p)) => builder.path(p),
        _ => builder,
    };
    let builder = match std::env::var("NAME") {
        Ok(name) => builder.name(name),
        Err(_) => builder,
    };
    let builder = builder.fallback(std::env::var_os("NO_FALLBACK").is_none());
    match builder.build() {
        Ok(cache) => {
            cache.set("probe", "ok", None).expect("set");
            println!("DIR {}", cache.directory().display());
        }
        Err(err) => println!("ERR {err}"),
    }
}

/// Runs the child with `base` as `DBX_CONCURIO_CACHE_DIR`; returns its one result line.
fn resolve(
    base: &Path,
    role: &str,
    name: Option<&str>,
    extra: &[(&str, &str)],
) -> Result<PathBuf, String> {
    let mut cmd = child("child_main", role);
    cmd.env("DBX_CONCURIO_CACHE_DIR", base)
        .env_remove("NAME")
        .env_remove("NO_FALLBACK");
    if let Some(name) = name {
        cmd.env("NAME", name);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for line in text.lines() {
        if let Some(dir) = line.strip_prefix("DIR ") {
            return Ok(PathBuf::from(dir));
        }
        if let Some(err) = line.strip_prefix("ERR ") {
            return Err(err.to_owned());
        }
    }
    panic!("no result from child: {text}");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn default_location_is_base_plus_module_plus_name_and_private() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path().canonicalize().unwrap();
    let dir = resolve(&base, "default", Some("my_cache"), &[]).unwrap();
    assert_eq!(dir, base.join("dbx_concurio").join("my_cache"));
    assert_eq!(mode(&base.join("dbx_concurio")), 0o700);
    assert_eq!(mode(&dir), 0o700);
    let unnamed = resolve(&base, "default", None, &[]).unwrap();
    assert_eq!(unnamed, base.join("dbx_concurio"));
}

#[test]
fn a_file_path_gives_base_plus_a_hash_of_its_absolute_path() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path().canonicalize().unwrap();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("data.csv");
    let a = resolve(&base, &format!("file:{}", file.display()), None, &[]).unwrap();
    assert_eq!(a.parent(), Some(base.as_path()));
    assert!(
        a.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("dbx_concurio-"),
        "{a:?}"
    );
    // Same file, same cache; another file, another cache; the name is appended.
    assert_eq!(
        resolve(&base, &format!("file:{}", file.display()), None, &[]).unwrap(),
        a
    );
    let b = resolve(
        &base,
        &format!("file:{}", work.path().join("other.csv").display()),
        None,
        &[],
    )
    .unwrap();
    assert_ne!(a, b);
    let named = resolve(&base, &format!("file:{}", file.display()), Some("n"), &[]).unwrap();
    assert_eq!(named, a.join("n"));
    // `.path()` treats an existing file as a file, and a missing path as a directory.
    std::fs::write(&file, "x").unwrap();
    assert_eq!(
        resolve(&base, &format!("path:{}", file.display()), None, &[]).unwrap(),
        a
    );
    let missing = work.path().join("new-dir");
    assert_eq!(
        resolve(&base, &format!("path:{}", missing.display()), None, &[]).unwrap(),
        missing
    );
    // A relative file path that does not exist is still a file with .for_file().
    let rel = resolve(&base, "file:not/there.txt", None, &[]).unwrap();
    assert_eq!(rel.parent(), Some(base.as_path()));
}

#[test]
fn an_explicit_directory_is_used_as_is_with_the_name_appended() {
    let base = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("deep/er");
    assert_eq!(
        resolve(
            base.path(),
            &format!("dir:{}", dir.display()),
            Some("x"),
            &[]
        )
        .unwrap(),
        dir.join("x")
    );
}

#[test]
fn an_unusable_directory_falls_back_to_the_default_or_errors() {
    let base = tempfile::tempdir().unwrap();
    let base_path = base.path().canonicalize().unwrap();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let under_file = format!("dir:{}", file.join("sub").display());
    assert_eq!(
        resolve(base.path(), &under_file, Some("n"), &[]).unwrap(),
        base_path.join("dbx_concurio/n")
    );
    let err = resolve(base.path(), &under_file, Some("n"), &[("NO_FALLBACK", "1")]).unwrap_err();
    assert!(err.contains("a-file"), "error names the path: {err}");
    // The directory itself being a file.
    let err = resolve(
        base.path(),
        &format!("dir:{}", file.display()),
        None,
        &[("NO_FALLBACK", "1")],
    )
    .unwrap_err();
    assert!(err.contains("a-file"), "{err}");
}

#[test]
fn names_cannot_climb_out() {
    let base = tempfile::tempdir().unwrap();
    for name in ["../escape", "/abs", "a/../../b", ""] {
        let err = resolve(base.path(), "default", Some(name), &[]).unwrap_err();
        assert!(err.contains("cache name"), "{name:?}: {err}");
    }
}

fn uid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

#[test]
fn a_default_root_controlled_by_others_falls_back_to_a_per_user_root() {
    // Writable by others (a squatter could swap files in it), or a symlink planted where our
    // directory should be: neither is used, nor written through; our own root is.
    type Plant = fn(&Path, &Path);
    let plants: [(&str, Plant); 2] = [
        ("writable by others", |module, _| {
            std::fs::create_dir(module).unwrap();
            std::fs::set_permissions(module, std::fs::Permissions::from_mode(0o777)).unwrap();
        }),
        ("symlink", |module, elsewhere| {
            std::os::unix::fs::symlink(elsewhere, module).unwrap()
        }),
    ];
    for (what, plant) in plants {
        let base = tempfile::tempdir().unwrap();
        let base_path = base.path().canonicalize().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let module = base.path().join("dbx_concurio");
        plant(&module, elsewhere.path());
        let dir = resolve(base.path(), "default", Some("c"), &[]).unwrap();
        let own = base_path.join(format!("dbx_concurio-{}", uid()));
        assert_eq!(dir, own.join("c"), "{what}");
        assert_eq!(mode(&own), 0o700, "{what}");
        assert_eq!(
            std::fs::read_dir(elsewhere.path()).unwrap().count(),
            0,
            "{what}"
        );
        if what != "symlink" {
            assert_eq!(std::fs::read_dir(&module).unwrap().count(), 0, "{what}");
        }
    }
}

#[test]
fn default_directories_controlled_by_others_are_refused() {
    // Below a root that is ours: a named cache directory writable by others.
    let base = tempfile::tempdir().unwrap();
    let named = base.path().join("dbx_concurio/c");
    std::fs::create_dir_all(&named).unwrap();
    std::fs::set_permissions(
        base.path().join("dbx_concurio"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    std::fs::set_permissions(&named, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = resolve(base.path(), "default", Some("c"), &[]).unwrap_err();
    assert!(err.contains("writable by group or others"), "{err}");
    assert!(
        err.contains("set DBX_CONCURIO_CACHE_DIR"),
        "the way out: {err}"
    );

    // The per-user fallback root must be ours too: a symlink planted there is refused.
    let base = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::create_dir(base.path().join("dbx_concurio")).unwrap();
    std::fs::set_permissions(
        base.path().join("dbx_concurio"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let own = base.path().join(format!("dbx_concurio-{}", uid()));
    std::os::unix::fs::symlink(elsewhere.path(), &own).unwrap();
    let err = resolve(base.path(), "default", Some("c"), &[]).unwrap_err();
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(
        std::fs::read_dir(elsewhere.path()).unwrap().count(),
        0,
        "nothing written through it"
    );
}

#[test]
fn a_base_directory_from_the_environment_is_absolute_and_its_errors_say_what_is_wrong() {
    // Relative: taken from the current directory.
    let work = tempfile::tempdir().unwrap();
    let mut cmd = child("child_main", "default");
    cmd.env("DBX_CONCURIO_CACHE_DIR", "rel")
        .current_dir(work.path());
    let out = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
    let expected = work.path().canonicalize().unwrap().join("rel/dbx_concurio");
    assert!(
        out.contains(&format!("DIR {}", expected.display())),
        "{out}"
    );

    // A file.
    let file = work.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let err = resolve(&file, "default", None, &[]).unwrap_err();
    assert!(err.contains("exists and is not a directory"), "{err}");
    assert!(
        err.contains(&format!("DBX_CONCURIO_CACHE_DIR={}", file.display())),
        "{err}"
    );
    assert!(
        err.contains("set DBX_CONCURIO_CACHE_DIR to a directory you can write"),
        "{err}"
    );
}
