#![cfg(unix)] // a second uid, modes and owners: Unix only
//! Where `concurio` keeps its caches: the base directory from the environment, its errors,
//! running uncached when no cache can be used, and a second user on a shared temp dir.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{Sandbox, clean_env, counted, run_args};

const NOBODY: u32 = 65534;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_cache_dir_that_is_a_file_says_so_and_names_the_ways_out() {
    let sb = Sandbox::new();
    let file = sb.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let argv = counted("echo ran; exit 3");
    let out = sb
        .cmd()
        .env("DBX_CONCURIO_CACHE_DIR", &file)
        .args(run_args(&[], &argv))
        .output()
        .unwrap();
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("exists and is not a directory"), "{text}");
    assert!(
        text.contains(&format!("DBX_CONCURIO_CACHE_DIR={}", file.display())),
        "{text}"
    );
    assert!(text.contains("--uncached-fallback"), "{text}");
    assert_eq!(sb.runs(), 0);

    // Uncached, with a warning, when asked (flag or environment).
    for (flag, env) in [(Some("--uncached-fallback"), None), (None, Some("1"))] {
        let mut cmd = sb.cmd();
        cmd.env("DBX_CONCURIO_CACHE_DIR", &file);
        if let Some(value) = env {
            cmd.env("CONCURIO_UNCACHED_FALLBACK", value);
        }
        let flags: Vec<&str> = flag.into_iter().collect();
        let out = cmd.args(run_args(&flags, &argv)).output().unwrap();
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        assert_eq!(out.stdout, b"ran\n");
        assert!(
            stderr(&out).contains("running the command uncached"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(sb.runs(), 2, "an uncached run runs every time");
}

#[test]
fn a_relative_cache_dir_is_taken_from_the_current_directory() {
    let sb = Sandbox::new();
    for var in ["DBX_CONCURIO_CACHE_DIR", "CONCURIO_CACHE_DIR"] {
        let out = sb
            .cmd()
            .env(var, format!("rel-{var}"))
            .args(["cache", "path"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let expected = sb.path().join(format!("rel-{var}/dbx_concurio/run"));
        assert_eq!(
            String::from_utf8(out.stdout).unwrap().trim_end(),
            expected.to_str().unwrap()
        );
        let mut stats = sb.cmd();
        stats
            .env(var, format!("rel-{var}"))
            .args(["cache", "stats", "--json"]);
        let stats: serde_json::Value =
            serde_json::from_slice(&stats.output().unwrap().stdout).unwrap();
        assert_eq!(stats["directory"], expected.to_str().unwrap(), "{var}");
    }
}

#[test]
fn concurio_cache_dir_is_read_and_wins_over_the_library_name() {
    let sb = Sandbox::new();
    let mine = sb.path().join("mine");
    let out = sb
        .cmd()
        .env("CONCURIO_CACHE_DIR", &mine)
        .args(run_args(&["--key", "k"], &counted("echo hi")))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(mine.join("dbx_concurio/run").is_dir());
    assert_eq!(sb.json(&["cache", "stats", "--json"])["entries"], 0);
}

#[test]
fn concurio_offline_is_read_for_installs() {
    let sb = Sandbox::new();
    // Port 9 (discard) on loopback: without offline mode this is a connection error.
    let args = [
        "install",
        "http://127.0.0.1:9/tool",
        "--id",
        "tool-1",
        "--retries",
        "0",
    ];
    let out = sb
        .cmd()
        .env("CONCURIO_OFFLINE", "1")
        .args(args)
        .output()
        .unwrap();
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("offline mode"), "{text}");
}

/// A directory everyone can use, like /tmp (sticky, world-writable), holding a copy of
/// `concurio` that every user can run.
struct SharedTmp {
    dir: tempfile::TempDir,
}

impl SharedTmp {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Copied by `cp`, not by this process: a write descriptor of the copy open here
        // would be inherited by children other test threads fork meanwhile, and exec of a
        // file open for writing fails with ETXTBSY.
        let copied = std::process::Command::new("cp")
            .arg(env!("CARGO_BIN_EXE_concurio"))
            .arg(bin.join("concurio"))
            .status()
            .unwrap();
        assert!(copied.success(), "cp concurio: {copied}");
        SharedTmp { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `concurio ARGS` as root (`nobody` false) or as uid 65534, with this directory as
    /// TMPDIR and working directory, and no DBX_CONCURIO_CACHE_DIR.
    fn concurio(&self, nobody: bool, args: &[&str]) -> Output {
        let concurio = self.path().join("bin/concurio");
        let mut cmd = if nobody {
            let mut cmd = Command::new("setpriv");
            let id = NOBODY.to_string();
            cmd.args(["--reuid", &id, "--regid", &id, "--clear-groups"])
                .arg(&concurio);
            cmd
        } else {
            Command::new(&concurio)
        };
        clean_env(&mut cmd);
        cmd.args(args)
            .env("TMPDIR", self.path())
            .env_remove("DBX_CONCURIO_CACHE_DIR")
            .current_dir(self.path())
            .stdin(Stdio::null());
        cmd.output().unwrap()
    }
}

/// Why a second user cannot be played here, if it cannot.
fn cannot_switch_users() -> Option<String> {
    let probe = tempfile::NamedTempFile::new().unwrap();
    if owner(probe.path()) != 0 {
        return Some("switching to a second uid needs root".into());
    }
    let setpriv = Command::new("setpriv").arg("--version").output();
    if !setpriv.is_ok_and(|o| o.status.success()) {
        return Some("setpriv (util-linux) is not installed".into());
    }
    None
}

fn owner(path: &Path) -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(path).unwrap())
}

#[test]
fn a_second_user_on_a_shared_tmp_gets_a_per_user_root_with_a_warning() {
    if let Some(reason) = cannot_switch_users() {
        println!("skipped: {reason}");
        return;
    }
    let tmp = SharedTmp::new();
    let count = "echo x >> counter-$(id -u); wc -l < counter-$(id -u) | tr -d ' '";
    let run = ["run", "--", "sh", "-c", count];
    let first = tmp.concurio(false, &run);
    assert!(first.status.success(), "{first:?}");
    let shared = tmp.path().join("dbx_concurio");
    assert_eq!(owner(&shared), 0);

    let second = tmp.concurio(true, &run);
    let text = stderr(&second);
    assert!(second.status.success(), "{text}");
    assert_eq!(second.stdout, b"1\n");
    let own = tmp.path().join(format!("dbx_concurio-{NOBODY}"));
    assert!(
        text.contains(&format!("not using {}", shared.display())),
        "{text}"
    );
    assert!(text.contains("owned by uid 0"), "{text}");
    assert!(text.contains(&own.display().to_string()), "{text}");
    assert_eq!(owner(&own), NOBODY);
    assert_eq!(
        std::fs::metadata(&own).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // Cached for the second user, too; and `cache path` says where.
    assert_eq!(tmp.concurio(true, &run).stdout, b"1\n");
    let path = tmp.concurio(true, &["cache", "path"]);
    assert_eq!(
        String::from_utf8_lossy(&path.stdout).trim_end(),
        own.join("run").to_str().unwrap()
    );

    // Installs go to the per-user root as well.
    let tool = tmp.path().join("tool");
    std::fs::write(&tool, "#!/bin/sh\necho tool\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let install = tmp.concurio(true, &["install", tool.to_str().unwrap(), "--id", "tool-1"]);
    assert!(install.status.success(), "{}", stderr(&install));
    let installed = PathBuf::from(String::from_utf8(install.stdout).unwrap().trim_end());
    assert!(
        installed.starts_with(own.join("executables")),
        "{}",
        installed.display()
    );
    // The first user's root holds only the first user's files.
    assert_eq!(owner(&shared), 0);
    let foreign: Vec<PathBuf> = walk(&shared)
        .into_iter()
        .filter(|p| owner(p) != 0)
        .collect();
    assert!(foreign.is_empty(), "{foreign:?}");
}

#[test]
fn a_per_user_root_that_someone_else_planted_is_refused_and_names_the_way_out() {
    if let Some(reason) = cannot_switch_users() {
        println!("skipped: {reason}");
        return;
    }
    let tmp = SharedTmp::new();
    for dir in ["dbx_concurio".to_owned(), format!("dbx_concurio-{NOBODY}")] {
        std::fs::create_dir(tmp.path().join(dir)).unwrap(); // root's, 0755
    }
    let out = tmp.concurio(true, &["run", "--", "echo", "hi"]);
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("refusing to use"), "{text}");
    assert!(text.contains("owned by uid 0"), "{text}");
    assert!(text.contains("set DBX_CONCURIO_CACHE_DIR"), "{text}");
    assert!(out.stdout.is_empty());
}

#[test]
fn an_unwritable_cache_dir_says_so() {
    if let Some(reason) = cannot_switch_users() {
        println!("skipped: {reason}");
        return;
    }
    let tmp = SharedTmp::new();
    let base = tmp.path().join("root-only");
    std::fs::create_dir(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(tmp.path().join("bin/concurio"))
        .args(["run", "--", "echo", "hi"])
        .env("DBX_CONCURIO_CACHE_DIR", &base)
        .current_dir(tmp.path());
    clean_env(&mut cmd);
    let out = cmd.output().unwrap();
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("DBX_CONCURIO_CACHE_DIR={}", base.display())),
        "{text}"
    );
    assert!(text.contains("is not writable"), "{text}");
}

/// Everything below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            }
            out.push(entry.path());
        }
    }
    out
}
