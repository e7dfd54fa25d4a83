//! Test helpers: the built `concurio` binary in a private cache base directory.
#![allow(dead_code)] // each test file uses a part

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A private `DBX_CONCURIO_CACHE_DIR`, also the working directory of the commands.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        Sandbox {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `concurio` with this sandbox's environment and null stdin.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_concurio"));
        cmd.env("DBX_CONCURIO_CACHE_DIR", self.path())
            .current_dir(self.path())
            .stdin(Stdio::null());
        clean_env(&mut cmd);
        cmd
    }

    /// Starts `concurio ARGS` with its stdout and stderr piped to us.
    pub fn spawn_piped(&self, args: &[&str]) -> std::process::Child {
        self.cmd()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn concurio")
    }

    /// Runs `concurio ARGS` to completion.
    pub fn concurio(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("spawn concurio")
    }

    /// Runs `concurio ARGS`, asserts it exited 0, returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.concurio(args);
        assert!(out.status.success(), "concurio {args:?}: {out:?}");
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs `concurio ARGS` and parses its stdout as JSON.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let stdout = self.ok(args);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
    }

    /// The file counted commands append to.
    pub fn counter_path(&self) -> PathBuf {
        self.path().join("counter")
    }

    /// How many times a counting command ran (lines in the counter file).
    pub fn runs(&self) -> usize {
        std::fs::read_to_string(self.counter_path()).map_or(0, |text| text.lines().count())
    }
}

/// Removes the variables concurio reads (but DBX_CONCURIO_CACHE_DIR) from `cmd`'s
/// environment, so that the caller's shell cannot change what a test sees.
pub fn clean_env(cmd: &mut Command) {
    for name in [
        "CONCURIO_LOG",
        "CONCURIO_TTL",
        "CONCURIO_STALE",
        "CONCURIO_SCOPE",
        "CONCURIO_CACHE_DIR",
        "CONCURIO_UNCACHED_FALLBACK",
        "CONCURIO_SHARED",
        "CONCURIO_OFFLINE",
        "DBX_CONCURIO_OFFLINE",
    ] {
        cmd.env_remove(name);
    }
}

/// `sh -c 'echo x >> counter; SCRIPT'`: counts its runs in the sandbox's counter file (the
/// working directory), then runs SCRIPT.
pub fn counted(script: &str) -> Vec<String> {
    let script = format!("echo x >> counter; {script}");
    vec!["sh".into(), "-c".into(), script]
}

/// `concurio run FLAGS -- ARGV` as one argument list.
pub fn run_args<'a>(flags: &[&'a str], argv: &'a [String]) -> Vec<&'a str> {
    let mut args = vec!["run"];
    args.extend_from_slice(flags);
    args.push("--");
    args.extend(argv.iter().map(String::as_str));
    args
}

/// A tmpfs of `size`, mounted for one test, unmounted when dropped (needs root and
/// CAP_SYS_ADMIN; `mount` returns `None` elsewhere). The library's tests/faults.rs has its
/// own: the two test crates share no code.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
