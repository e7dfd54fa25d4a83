//! Shared test helpers: temp caches and re-invoking this test binary as a child process.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use dbx_concurio::caches::DiskCache;

mod server;
#[allow(unused_imports)]
pub use server::{Received, Reply, Server};

/// Env var that tells a re-invoked test binary which child role to play.
pub const CHILD_ENV: &str = "DBX_CONCURIO_TEST_CHILD";

/// A cache in its own temp directory (the directory is returned to keep it alive).
pub fn temp_cache() -> (tempfile::TempDir, DiskCache) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = DiskCache::builder()
        .directory(tmp.path())
        .name("c")
        .build()
        .expect("open cache");
    (tmp, cache)
}

/// A command that runs only the test `name` of this binary, as a child with `role` set.
pub fn child(name: &str, role: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args([
        "--exact",
        name,
        "--nocapture",
        "--test-threads=1",
        "--quiet",
    ])
    .env(CHILD_ENV, role)
    .stdin(Stdio::null());
    cmd
}

/// Opens the cache in exactly `dir` (no fallback elsewhere).
pub fn open_dir(dir: &Path) -> DiskCache {
    DiskCache::builder()
        .directory(dir)
        .fallback(false)
        .build()
        .expect("open cache")
}

/// A path a child was given in its environment.
pub fn env_path(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var_os(name).expect("child env"))
}

/// The role this process was started with, if it is a child.
pub fn child_role() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// The value files of the cache in `dir`.
pub fn blob_files(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// Lines of a file, or none if it does not exist.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Appends one line with O_APPEND (atomic for short writes, across processes).
pub fn append_line(path: &Path, line: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open counter");
    f.write_all(format!("{line}\n").as_bytes()).expect("append");
}

/// Sends SIGKILL to a child.
pub fn sigkill(child: &std::process::Child) {
    // SAFETY: kill(2) on a pid we spawned and have not reaped.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill failed");
}

/// Waits for `child`; SIGKILLs it and fails after `limit` (a hang is a deadlock here).
pub fn wait_or_kill(mut child: Child, limit: Duration, what: &str) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > limit {
            sigkill(&child);
            let out = child.wait_with_output().expect("output");
            panic!(
                "{what}: still running after {limit:?} (deadlocked); stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fails with the child's output unless it exited successfully.
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reads the child's stdout until a line equal to `marker` (libtest prints its own lines
/// first); fails if the child ends before saying it.
pub fn wait_for_line(child: &mut Child, marker: &str) {
    use std::io::BufRead;
    let stdout = child.stdout.as_mut().expect("piped stdout");
    let mut reader = std::io::BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).expect("read child stdout");
        assert!(n > 0, "child ended before printing {marker}");
        if line.trim() == marker {
            return;
        }
    }
}
