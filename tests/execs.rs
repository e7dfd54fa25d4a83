//! Integration tests of `dbx_concurio::execs` against a real HTTP server on 127.0.0.1.
//!
//! Multi-process tests re-run this test binary with `CHILD_URL` set: `child_role` then
//! installs like a separate program would and prints `PATH=...` or `ERR=...`.
#![cfg(feature = "download")]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Reply, Server};
use dbx_concurio::Error;
use dbx_concurio::execs::{self, Executable, Gc};
use sha2::{Digest, Sha256};

fn script(word: &str) -> Vec<u8> {
    format!("#!/bin/sh\necho {word}\n").into_bytes()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn run(path: &Path) -> String {
    let out = Command::new(path)
        .output()
        .expect("run installed executable");
    assert!(out.status.success(), "{} failed: {out:?}", path.display());
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Every file in the identifier directories of `root` (excluding lock files).
fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(root.join("executables")) else {
        return out;
    };
    for dir in dirs.flatten().filter(|d| d.path().is_dir()) {
        for file in std::fs::read_dir(dir.path()).expect("list").flatten() {
            out.push(file.path());
        }
    }
    out
}

fn child(url: &str, identifier: &str, cache_dir: &Path) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([
        "--exact",
        "child_role",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env("CHILD_URL", url)
    .env("CHILD_ID", identifier)
    .env("DBX_CONCURIO_CACHE_DIR", cache_dir)
    .env_remove("DBX_CONCURIO_OFFLINE")
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    cmd
}

/// The cache root of a child given `DBX_CONCURIO_CACHE_DIR=cache_dir` (the default root).
fn child_root(cache_dir: &Path) -> PathBuf {
    cache_dir.join("dbx_concurio")
}

/// The line a child printed with `prefix`.
fn child_line(output: &std::process::Output, prefix: &str) -> Option<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.split_once(prefix).map(|(_, rest)| rest.to_owned()))
}

/// Not a test of its own: the body of the child processes (a no-op without `CHILD_URL`).
#[test]
fn child_role() {
    let (Ok(url), Ok(id)) = (std::env::var("CHILD_URL"), std::env::var("CHILD_ID")) else {
        return;
    };
    match execs::executable(url, id) {
        Ok(path) => println!("PATH={}", path.display()),
        Err(err) => println!("ERR={err:?}"),
    }
}

#[test]
fn eight_processes_one_download_one_path() {
    let server = Server::start(|_, _| Reply {
        delay: Duration::from_millis(300),
        ..Reply::ok(script("eight"))
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let url = server.url("tool");
    let children: Vec<_> = (0..8)
        .map(|_| {
            child(&url, "eight-v1", cache.path())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let paths: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("wait");
            child_line(&out, "PATH=").unwrap_or_else(|| panic!("child failed: {out:?}"))
        })
        .collect();
    assert_eq!(server.hits(), 1, "exactly one download");
    assert!(paths.iter().all(|p| *p == paths[0]), "{paths:?}");
    let path = PathBuf::from(&paths[0]);
    assert!(path.is_absolute());
    assert!(path.starts_with(cache.path()));
    assert_eq!(run(&path), "eight");
}

#[test]
fn installed_executable_is_served_from_cache_without_network() {
    let server = Server::start(|_, _| Reply::ok(script("cached")));
    let cache = tempfile::tempdir().expect("tempdir");
    let url = server.url("dir/tool");
    let first = Executable::new(&url, "cached-v1")
        .cache_root(cache.path())
        .header("Authorization", "Bearer t0k3n")
        .install()
        .expect("install");
    assert_eq!(first.file_name().and_then(|n| n.to_str()), Some("tool"));
    assert_eq!(server.received()[0].path, "/dir/tool");
    assert!(
        server.received()[0]
            .headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case("authorization: Bearer t0k3n")),
        "extra header sent"
    );
    server.stop();
    let again = Executable::new(&url, "cached-v1")
        .cache_root(cache.path())
        .retries(0)
        .install()
        .expect("cached install with the server gone");
    let dead = Executable::new("http://127.0.0.1:1/nothing", "cached-v1")
        .cache_root(cache.path())
        .retries(0)
        .install()
        .expect("cached install with a dead URL");
    assert_eq!(*again, *first);
    assert_eq!(*dead, *first);
    assert_eq!(run(&again), "cached");
}

#[test]
fn local_path_and_file_url_sources() {
    let src_dir = tempfile::Builder::new()
        .prefix("with space")
        .tempdir()
        .expect("tempdir");
    let src = src_dir.path().join("mytool");
    std::fs::write(&src, script("local")).expect("write source");
    let cache = tempfile::tempdir().expect("tempdir");

    let from_path = Executable::new(src.to_string_lossy(), "local-path")
        .cache_root(cache.path())
        .install()
        .expect("install from a path");
    assert_eq!(
        from_path.file_name().and_then(|n| n.to_str()),
        Some("mytool")
    );
    assert_eq!(run(&from_path), "local");

    let url = format!("file://{}", src.display()).replace(' ', "%20");
    let from_url = Executable::new(url, "local-url")
        .cache_root(cache.path())
        .install()
        .expect("install from a file:// URL");
    assert_ne!(
        *from_url, *from_path,
        "distinct identifiers, distinct paths"
    );
    assert_eq!(run(&from_url), "local");

    let missing = Executable::new("/definitely/not/here", "local-missing")
        .cache_root(cache.path())
        .install()
        .expect_err("missing source");
    assert!(
        missing.to_string().contains("/definitely/not/here"),
        "{missing}"
    );
}

#[test]
fn not_found_names_status_and_url_and_leaves_nothing() {
    let server = Server::start(|n, _| match n {
        0 => Reply::status(404),
        _ => Reply::ok(script("found")),
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let url = server.url("missing-tool");
    let err = Executable::new(&url, "nf-v1")
        .cache_root(cache.path())
        .install()
        .expect_err("404");
    let message = err.to_string();
    assert!(message.contains("404"), "{message}");
    assert!(message.contains(&url), "{message}");
    assert!(matches!(
        err,
        Error::Download {
            status: Some(404),
            ..
        }
    ));
    assert_eq!(server.hits(), 1, "a 404 is not retried");
    assert_eq!(files_under(cache.path()), Vec::<PathBuf>::new());

    let ok = Executable::new(&url, "nf-v1")
        .cache_root(cache.path())
        .install()
        .expect("next call installs");
    assert_eq!(run(&ok), "found");
}

#[test]
fn body_shorter_than_content_length_is_an_error() {
    let server = Server::start(|_, _| Reply {
        content_length: Some(4096),
        ..Reply::ok(script("short"))
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let url = server.url("tool");
    let err = Executable::new(&url, "short-v1")
        .cache_root(cache.path())
        .retries(1)
        .install()
        .expect_err("truncated body");
    assert!(matches!(err, Error::Download { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&url), "{message}");
    assert!(
        message.contains("4096"),
        "names the Content-Length: {message}"
    );
    assert_eq!(server.hits(), 2, "a truncated body is retried");
    assert_eq!(files_under(cache.path()), Vec::<PathBuf>::new());
}

#[test]
fn server_error_then_success_is_retried() {
    let server = Server::start(|n, _| match n {
        0 => Reply::status(503),
        _ => Reply::ok(script("retried")),
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let exe = Executable::new(server.url("tool"), "retry-503")
        .cache_root(cache.path())
        .install()
        .expect("retried install");
    assert_eq!(server.hits(), 2);
    assert_eq!(run(&exe), "retried");
}

#[test]
fn too_many_requests_honours_retry_after() {
    let server = Server::start(|n, _| match n {
        0 => Reply::status(429).header("Retry-After", "1"),
        _ => Reply::ok(script("patient")),
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let exe = Executable::new(server.url("tool"), "retry-429")
        .cache_root(cache.path())
        .install()
        .expect("retried install");
    assert_eq!(server.hits(), 2);
    assert_eq!(run(&exe), "patient");

    let always = Server::start(|_, _| Reply::status(503));
    let err = Executable::new(always.url("tool"), "retry-exhausted")
        .cache_root(cache.path())
        .retries(1)
        .install()
        .expect_err("retries exhausted");
    assert!(
        matches!(
            err,
            Error::Download {
                status: Some(503),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(always.hits(), 2, "one try plus one retry");
}

#[test]
fn sha256_is_verified() {
    let body = script("pinned");
    let server = Server::start({
        let body = body.clone();
        move |_, _| Reply::ok(body.clone())
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let wrong = "0".repeat(64);
    let err = Executable::new(server.url("tool"), "sha-v1")
        .cache_root(cache.path())
        .sha256(&wrong)
        .install()
        .expect_err("wrong sha256");
    match &err {
        Error::ChecksumMismatch {
            expected, actual, ..
        } => {
            assert_eq!(*expected, wrong);
            assert_eq!(*actual, sha256_hex(&body));
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    assert_eq!(files_under(cache.path()), Vec::<PathBuf>::new());
    assert!(
        execs::installed(Some(cache.path()))
            .expect("list")
            .is_empty()
    );

    let bad_syntax = Executable::new(server.url("tool"), "sha-v1")
        .cache_root(cache.path())
        .sha256("xyz")
        .install()
        .expect_err("bad syntax");
    assert!(
        matches!(bad_syntax, Error::InvalidInput(_)),
        "{bad_syntax:?}"
    );
    assert_eq!(server.hits(), 1, "bad syntax is refused before any request");

    let right = Executable::new(server.url("tool"), "sha-v1")
        .cache_root(cache.path())
        .sha256(sha256_hex(&body).to_uppercase())
        .install()
        .expect("right sha256");
    assert_eq!(run(&right), "pinned");
}

fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    for (name, data) in entries {
        let mut header = tar::Header::new_gnu();
        // Written raw: `set_path` would refuse the hostile names some tests need.
        let raw = &mut header.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        header.set_size(data.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        builder.append(&header, *data).expect("append");
    }
    builder
        .into_inner()
        .and_then(|gz| gz.finish())
        .expect("finish tar.gz")
}

fn zip(entries: &[(&str, &[u8])], symlink: Option<(&str, &str)>) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
    for (name, data) in entries {
        writer.start_file(*name, options).expect("start file");
        writer.write_all(data).expect("write");
    }
    if let Some((name, target)) = symlink {
        writer.add_symlink(name, target, options).expect("symlink");
    }
    writer.finish().expect("finish zip").into_inner()
}

fn serve_bytes(bytes: Vec<u8>) -> Server {
    Server::start(move |_, _| Reply::ok(bytes.clone()))
}

#[test]
fn archive_members_are_extracted() {
    let tool = script("from-archive");
    let tgz = tar_gz(&[("README", b"docs"), ("./bin/tool", &tool)]);
    let zipped = zip(&[("README", b"docs"), ("bin/tool", &tool)], None);
    let xz = {
        let mut enc = xz2::write::XzEncoder::new(Vec::new(), 1);
        let mut builder = tar::Builder::new(&mut enc);
        let mut header = tar::Header::new_gnu();
        header.set_size(tool.len() as u64);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, "bin/tool", &tool[..])
            .expect("append");
        builder.finish().expect("finish tar");
        drop(builder);
        enc.finish().expect("finish xz")
    };
    let cache = tempfile::tempdir().expect("tempdir");
    for (name, bytes) in [
        ("t.tar.gz", tgz.clone()),
        ("t.zip", zipped),
        ("t.tar.xz", xz),
    ] {
        let server = serve_bytes(bytes.clone());
        let exe = Executable::new(server.url(name), format!("archive-{name}"))
            .cache_root(cache.path())
            .sha256(sha256_hex(&bytes))
            .archive_member("bin/tool")
            .install()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(exe.file_name().and_then(|n| n.to_str()), Some("tool"));
        assert_eq!(run(&exe), "from-archive", "{name}");
    }

    let server = serve_bytes(tgz);
    let err = Executable::new(server.url("t.tar.gz"), "archive-missing")
        .cache_root(cache.path())
        .archive_member("bin/other")
        .install()
        .expect_err("missing member");
    assert!(matches!(err, Error::Archive { .. }), "{err:?}");
    assert!(err.to_string().contains("bin/other"), "{err}");
}

#[test]
fn unsafe_archive_members_are_refused() {
    let tool = script("safe");
    let hostile = tar_gz(&[("../evil", b"#!/bin/sh\n"), ("bin/tool", &tool)]);
    let cache = tempfile::tempdir().expect("tempdir");
    let root = cache.path().join("root");
    let server = serve_bytes(hostile);
    for member in ["../evil", "/etc/passwd", "bin/../../evil"] {
        let err = Executable::new(server.url("h.tar.gz"), format!("unsafe-{member}"))
            .cache_root(&root)
            .archive_member(member)
            .install()
            .expect_err(member);
        assert!(matches!(err, Error::Archive { .. }), "{member}: {err:?}");
    }
    assert_eq!(
        server.hits(),
        0,
        "unsafe member names are refused before any request"
    );

    // A hostile entry in the archive does not stop the safe member, and writes nothing.
    let exe = Executable::new(server.url("h.tar.gz"), "unsafe-ok")
        .cache_root(&root)
        .archive_member("bin/tool")
        .install()
        .expect("safe member");
    assert_eq!(run(&exe), "safe");
    assert!(!cache.path().join("evil").exists());
    assert!(!root.join("evil").exists());
    assert!(!root.join("executables").join("evil").exists());

    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    link.set_link_name("/bin/sh").expect("link name");
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_data(&mut link, "bin/tool", std::io::empty())
        .expect("append link");
    let symlink_tar = builder.into_inner().expect("tar");
    let symlink_zip = zip(&[], Some(("bin/tool", "/bin/sh")));
    for (name, bytes) in [("l.tar", symlink_tar), ("l.zip", symlink_zip)] {
        let server = serve_bytes(bytes);
        let err = Executable::new(server.url(name), format!("link-{name}"))
            .cache_root(&root)
            .archive_member("bin/tool")
            .install()
            .expect_err(name);
        assert!(matches!(err, Error::Archive { .. }), "{name}: {err:?}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }
}

#[test]
fn sigkilled_installer_leaves_no_install_and_does_not_block() {
    let body = script("survivor");
    let server = Server::start({
        let body = body.clone();
        move |n, _| match n {
            0 => Reply {
                stall_after: Some(body.len() / 2),
                ..Reply::ok(body.clone())
            },
            _ => Reply::ok(body.clone()),
        }
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let url = server.url("tool");
    let root = child_root(cache.path());
    let mut victim = child(&url, "killed-v1", cache.path())
        .spawn()
        .expect("spawn");
    // Wait until the child is mid-download: its partial download file exists.
    let start = Instant::now();
    while !files_under(&root)
        .iter()
        .any(|f| f.file_name().is_some_and(|n| n == ".partial"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "child never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    victim.kill().expect("SIGKILL"); // Child::kill is SIGKILL on Unix
    let _ = victim.wait();
    assert!(execs::installed(Some(&root)).expect("list").is_empty());

    let exe = Executable::new(&url, "killed-v1")
        .cache_root(&root)
        .install()
        .expect("clean install after the kill");
    assert_eq!(run(&exe), "survivor");
    assert_eq!(server.hits(), 2);
    let left: Vec<_> = files_under(&root)
        .into_iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let mut left = left;
    left.sort();
    assert_eq!(left, [".complete", "tool"], "staging debris was cleaned");
}

/// Forks a child that lingers (2 ms) between fork and exec, as a child doing setup work
/// would: meanwhile it holds copies of every fd the parent had open, our write fds included.
#[cfg(unix)]
fn spawn_lingering_child() {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("/bin/true");
    // SAFETY: the hook only sleeps (nanosleep is async-signal-safe) and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            std::thread::sleep(Duration::from_millis(2));
            Ok(())
        });
    }
    let _ = cmd.status();
}

#[cfg(unix)]
#[test]
fn exec_right_after_install_while_another_thread_forks() {
    let stop = Arc::new(AtomicBool::new(false));
    let spawners: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut spawned = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    spawn_lingering_child();
                    spawned += 1;
                }
                spawned
            })
        })
        .collect();
    let cache = tempfile::tempdir().expect("tempdir");
    // A real ELF binary, padded so that writing it takes a while (ELF ignores the tail).
    let source = cache.path().join("true-padded");
    let mut bytes = std::fs::read("/bin/true").expect("read /bin/true");
    bytes.resize(bytes.len() + (4 << 20), 0);
    std::fs::write(&source, bytes).expect("write source");
    for i in 0..20 {
        let exe = Executable::new(source.to_string_lossy(), format!("etxtbsy-{i}"))
            .cache_root(cache.path())
            .install()
            .expect("install");
        if let Err(err) = Command::new(&*exe).status() {
            panic!("exec of fresh install {i} failed: {err} ({err:?})");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for spawner in spawners {
        assert!(spawner.join().expect("spawner") > 0);
    }
}

#[test]
fn on_complete_runs_once_and_only_from_complete() {
    let cache = tempfile::tempdir().expect("tempdir");
    let src = cache.path().join("src-tool");
    std::fs::write(&src, script("done")).expect("write");
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(None));
    let make = |calls: &Arc<AtomicUsize>, seen: &Arc<std::sync::Mutex<Option<PathBuf>>>| {
        let (calls, seen) = (calls.clone(), seen.clone());
        Executable::new(src.to_string_lossy(), "complete-v1")
            .cache_root(cache.path())
            .on_complete(move |path: &Path| {
                calls.fetch_add(1, Ordering::SeqCst);
                *seen.lock().expect("lock") = Some(path.to_owned());
            })
            .install()
            .expect("install")
    };
    drop(make(&calls, &seen));
    assert_eq!(calls.load(Ordering::SeqCst), 0, "drop does not complete");
    let exe = make(&calls, &seen);
    assert_eq!(calls.load(Ordering::SeqCst), 0, "install does not complete");
    exe.complete();
    exe.complete();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(seen.lock().expect("lock").as_deref(), Some(&*exe as &Path));
    drop(exe);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn offline_mode_uses_only_the_cache() {
    let server = Server::start(|_, _| Reply::ok(script("online")));
    let cache = tempfile::tempdir().expect("tempdir");
    let url = server.url("tool");
    let root = child_root(cache.path());
    let err = Executable::new(&url, "offline-v1")
        .cache_root(&root)
        .offline(true)
        .install()
        .expect_err("not installed");
    assert!(matches!(err, Error::Offline { .. }), "{err:?}");
    assert_eq!(server.hits(), 0);

    // The environment variable, in a child process (env changes would leak between tests).
    let out = child(&url, "offline-v1", cache.path())
        .env("DBX_CONCURIO_OFFLINE", "1")
        .output()
        .expect("child");
    let line = child_line(&out, "ERR=").unwrap_or_else(|| panic!("child: {out:?}"));
    assert!(line.starts_with("Offline"), "{line}");
    assert_eq!(server.hits(), 0);

    let exe = Executable::new(&url, "offline-v1")
        .cache_root(&root)
        .install()
        .expect("online install");
    let cached = Executable::new(&url, "offline-v1")
        .cache_root(&root)
        .offline(true)
        .force(true)
        .install()
        .expect("offline reads the cache");
    assert_eq!(*cached, *exe);
    assert_eq!(server.hits(), 1);
}

#[test]
fn force_reinstalls_and_gc_removes_unwanted() {
    let version = Arc::new(AtomicUsize::new(1));
    let server = Server::start({
        let version = version.clone();
        move |_, _| Reply::ok(script(&format!("v{}", version.load(Ordering::SeqCst))))
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let install = |id: &str, force: bool| {
        Executable::new(server.url("tool"), id)
            .cache_root(cache.path())
            .force(force)
            .install()
            .expect("install")
    };
    assert_eq!(run(&install("gc-a", false)), "v1");
    version.store(2, Ordering::SeqCst);
    assert_eq!(run(&install("gc-a", false)), "v1", "cached");
    assert_eq!(run(&install("gc-a", true)), "v2", "forced");
    assert_eq!(run(&install("gc-b", false)), "v2");
    assert_eq!(run(&install("gc-c", false)), "v2");
    assert_eq!(server.hits(), 4);

    let listed: Vec<String> = execs::installed(Some(cache.path()))
        .expect("list")
        .into_iter()
        .map(|i| i.identifier)
        .collect();
    assert_eq!(listed, ["gc-a", "gc-b", "gc-c"]);

    let none = Gc::new()
        .cache_root(cache.path())
        .older_than(Duration::from_secs(3600))
        .run()
        .expect("gc");
    assert!(none.is_empty(), "nothing is an hour old");
    let removed = Gc::new()
        .cache_root(cache.path())
        .keep(["gc-a"])
        .run()
        .expect("gc");
    let mut removed: Vec<_> = removed
        .into_iter()
        .map(|i| (i.identifier, i.path))
        .collect();
    removed.sort();
    assert_eq!(removed.len(), 2);
    assert!(removed.iter().all(|(_, path)| !path.exists()));
    let listed = execs::installed(Some(cache.path())).expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].identifier, "gc-a");

    // A collected identifier installs again.
    assert_eq!(run(&install("gc-b", false)), "v2");
    assert_eq!(server.hits(), 5);
}

#[test]
fn threads_share_one_download() {
    let server = Server::start(|_, _| Reply {
        delay: Duration::from_millis(100),
        ..Reply::ok(script("threads"))
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let url = server.url("tool");
    let paths: Vec<PathBuf> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    Executable::new(&url, "threads-v1")
                        .cache_root(cache.path())
                        .install()
                        .expect("install")
                        .to_path_buf()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(server.hits(), 1);
    assert!(paths.iter().all(|p| *p == paths[0]));
    assert_eq!(run(&paths[0]), "threads");
}

#[test]
fn installed_check_takes_no_lock() {
    let cache = tempfile::tempdir().expect("tempdir");
    let root = cache.path().to_owned();
    let src = root.join("lockfree-tool");
    std::fs::write(&src, script("lockfree")).expect("write");
    let install = move || {
        Executable::new(src.to_string_lossy(), "lockfree-v1")
            .cache_root(&root)
            .install()
            .map(|p| p.to_path_buf())
    };
    let first = install().expect("install");
    // Hold the identifier's install lock, as a stuck installer would.
    let lock_path = cache
        .path()
        .join("executables")
        .join(format!("{}.lock", sha256_hex(b"lockfree-v1")));
    let lock = std::fs::File::open(&lock_path).expect("lock file exists");
    lock.lock().expect("take the lock");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(install());
    });
    // A generous bound only to turn a deadlock into a failure, not a timing claim.
    let again = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the installed check blocked on the lock")
        .expect("cached install");
    assert_eq!(again, first);
    drop(lock);
}

/// Issue 11.14: an identifier installed once used to be returned forever, even to a caller
/// that now pins other bytes.
#[test]
fn a_different_pinned_sha256_reinstalls() {
    let version = Arc::new(AtomicUsize::new(1));
    let server = Server::start({
        let version = version.clone();
        move |_, _| Reply::ok(script(&format!("v{}", version.load(Ordering::SeqCst))))
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let install = |pin: &str| {
        Executable::new(server.url("tool"), "repin")
            .cache_root(cache.path())
            .sha256(pin)
            .install()
    };
    let first = install(&sha256_hex(&script("v1"))).expect("install v1");
    assert_eq!(run(&first), "v1");
    assert_eq!(server.hits(), 1);
    assert_eq!(
        *install(&sha256_hex(&script("v1"))).expect("same pin"),
        *first
    );
    assert_eq!(server.hits(), 1, "the same pin is served from the cache");

    version.store(2, Ordering::SeqCst);
    let second = install(&sha256_hex(&script("v2"))).expect("install v2");
    assert_eq!(server.hits(), 2, "another pin downloads again");
    assert_eq!(run(&second), "v2");
    let listed = execs::installed(Some(cache.path())).expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].sha256, sha256_hex(&script("v2")));

    // Offline, a pin the installed bytes do not match is not "installed".
    let err = Executable::new(server.url("tool"), "repin")
        .cache_root(cache.path())
        .sha256(sha256_hex(&script("v1")))
        .offline(true)
        .install()
        .expect_err("offline with another pin");
    assert!(matches!(err, Error::Offline { .. }), "{err:?}");
    assert_eq!(server.hits(), 2);
}

/// `len` bytes that differ from position to position (a cut or misplaced range shows).
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

/// The identifier's directory under `root`.
fn id_dir(root: &Path, identifier: &str) -> PathBuf {
    root.join("executables")
        .join(sha256_hex(identifier.as_bytes()))
}

const CUT: usize = 100_000;

/// Serves `body` (as version "v1" with Range support if `ranged`), the first response
/// interrupted by `interrupt` (cut or stalled).
fn serve_interrupted(body: Vec<u8>, ranged: bool, interrupt: fn(Reply) -> Reply) -> Server {
    Server::start(move |n, request| {
        let reply = if ranged {
            Reply::ranged(&body, "v1", request)
        } else {
            Reply::ok(body.clone())
        };
        if n == 0 { interrupt(reply) } else { reply }
    })
}

/// `exe` holds `body`, got in two requests, the second for the bytes from CUT on.
fn assert_resumed(server: &Server, exe: &Path, body: &[u8]) {
    assert_eq!(std::fs::read(exe).expect("read"), body);
    let received = server.received();
    assert_eq!(received.len(), 2);
    assert_eq!(
        received[1].header("range"),
        Some(format!("bytes={CUT}-").as_str())
    );
}

/// Serves `body` as version "v1" with Range support, cutting the first response after CUT.
fn cut_then_ranged(body: Vec<u8>) -> Server {
    serve_interrupted(body, true, |reply| reply.cut_after(CUT))
}

/// Issue 11.13: a download cut mid-body is resumed with `Range: bytes=N-` in the same call,
/// and the sha256 is checked over the whole file.
#[test]
fn a_cut_download_resumes_with_a_range_request() {
    let body = pattern(300_000, 1);
    let server = cut_then_ranged(body.clone());
    let cache = tempfile::tempdir().expect("tempdir");
    let exe = Executable::new(server.url("tool"), "resume-v1")
        .cache_root(cache.path())
        .sha256(sha256_hex(&body))
        .retries(1)
        .install()
        .expect("resumed install");
    assert_eq!(std::fs::read(&*exe).expect("read"), body);
    let received = server.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].header("range"), None);
    assert_eq!(
        received[1].header("range"),
        Some(format!("bytes={CUT}-").as_str())
    );
    assert_eq!(received[1].header("if-range"), Some("\"v1\""));
    let mut left: Vec<_> = files_under(cache.path())
        .into_iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    left.sort();
    assert_eq!(left, [".complete", "tool"], "no partial file is left");
}

/// Issue 11.13: a failed call keeps the partial file; the next call asks only for the rest.
#[test]
fn a_kept_partial_download_resumes_in_the_next_call() {
    let body = pattern(300_000, 2);
    let server = cut_then_ranged(body.clone());
    let cache = tempfile::tempdir().expect("tempdir");
    let install = || {
        Executable::new(server.url("tool"), "resume-later")
            .cache_root(cache.path())
            .sha256(sha256_hex(&body))
            .retries(0)
            .install()
    };
    let err = install().expect_err("cut, no retries");
    assert!(matches!(err, Error::Download { .. }), "{err:?}");
    let dir = id_dir(cache.path(), "resume-later");
    assert_eq!(
        std::fs::read(dir.join(".partial")).expect("partial kept"),
        body[..CUT]
    );
    assert!(
        execs::installed(Some(cache.path()))
            .expect("list")
            .is_empty()
    );

    let exe = install().expect("resumed in the next call");
    assert_resumed(&server, &exe, &body);
    assert!(!dir.join(".partial").exists());
    assert!(!dir.join(".partial.meta").exists());
}

/// Issue 11.13: a server that answers a Range request with the whole body (200): the
/// download starts over from zero instead of appending the whole body to the kept part.
#[test]
fn a_server_that_ignores_range_restarts_from_zero() {
    let body = pattern(300_000, 3);
    let server = Server::start({
        let body = body.clone();
        move |n, request| {
            let full = Reply::ok(body.clone())
                .header("Accept-Ranges", "bytes")
                .header("ETag", "\"v1\"");
            match n {
                0 => full.cut_after(CUT),
                _ => {
                    let _ = request; // the Range header is ignored
                    full
                }
            }
        }
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let exe = Executable::new(server.url("tool"), "ignore-range")
        .cache_root(cache.path())
        .retries(1)
        .install()
        .expect("install");
    assert_eq!(server.received()[1].header("range"), Some("bytes=100000-"));
    assert_eq!(std::fs::read(&*exe).expect("read"), body);
}

/// Issue 11.13: the file changed on the server since the kept part was downloaded (new ETag):
/// If-Range makes the server send the whole new file, which replaces the kept part.
#[test]
fn a_changed_file_is_not_resumed_into_a_mix() {
    let old = pattern(300_000, 4);
    let new = pattern(250_000, 5);
    let server = Server::start({
        let (old, new) = (old.clone(), new.clone());
        move |n, request| match n {
            0 => Reply::ranged(&old, "old", request).cut_after(CUT),
            _ => Reply::ranged(&new, "new", request),
        }
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let install = |retries| {
        Executable::new(server.url("tool"), "changed")
            .cache_root(cache.path())
            .retries(retries)
            .install()
    };
    install(0).expect_err("cut");
    let exe = install(0).expect("the new file, whole");
    assert_eq!(server.received()[1].header("if-range"), Some("\"old\""));
    assert_eq!(std::fs::read(&*exe).expect("read"), new);
}

/// Issue 11.13: without Accept-Ranges and a validator nothing is kept or resumed.
#[test]
fn a_server_without_ranges_is_not_asked_for_one() {
    let body = pattern(300_000, 6);
    let server = serve_interrupted(body.clone(), false, |reply| reply.cut_after(CUT));
    let cache = tempfile::tempdir().expect("tempdir");
    let install = || {
        Executable::new(server.url("tool"), "no-ranges")
            .cache_root(cache.path())
            .retries(0)
            .install()
    };
    install().expect_err("cut");
    assert_eq!(
        std::fs::read_dir(cache.path().join("executables"))
            .expect("list")
            .flatten()
            .filter(|e| e.path().is_dir())
            .count(),
        0,
        "nothing kept, no directory left"
    );
    let exe = install().expect("second call");
    assert_eq!(server.received()[1].header("range"), None);
    assert_eq!(std::fs::read(&*exe).expect("read"), body);
}

/// Issue 11.16: an endless body is cut off at max_size instead of filling the disk until
/// the timeout; nothing is left behind.
#[test]
fn an_endless_body_stops_at_max_size() {
    let server = Server::start(|_, _| Reply {
        endless: true,
        ..Reply::ok(vec![b'z'; 64 * 1024])
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let (tx, rx) = std::sync::mpsc::channel();
    let url = server.url("endless");
    let root = cache.path().to_owned();
    std::thread::spawn(move || {
        let result = Executable::new(url, "endless")
            .cache_root(&root)
            .max_size(1 << 20)
            .install();
        let _ = tx.send(result.map(|p| p.to_path_buf()));
    });
    // A generous bound: without the limit this only ends at the 10-minute timeout.
    let err = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the download did not stop")
        .expect_err("too large");
    assert!(matches!(err, Error::Download { .. }), "{err:?}");
    assert!(err.to_string().contains("max_size"), "{err}");
    assert_eq!(server.hits(), 1, "a size limit is not retried");
    assert_eq!(files_under(cache.path()), Vec::<PathBuf>::new());
}

/// Issue 11.16: a Content-Length over max_size is refused before the body is read.
#[test]
fn a_content_length_over_max_size_is_refused() {
    let server = serve_bytes(vec![7u8; 10_000]);
    let cache = tempfile::tempdir().expect("tempdir");
    let err = Executable::new(server.url("big"), "big")
        .cache_root(cache.path())
        .max_size(9_999)
        .install()
        .expect_err("too large");
    let message = err.to_string();
    assert!(
        message.contains("10000") && message.contains("max_size"),
        "{message}"
    );
    let ok = Executable::new(server.url("big"), "big")
        .cache_root(cache.path())
        .max_size(10_000)
        .install()
        .expect("exactly max_size");
    assert_eq!(std::fs::metadata(&*ok).expect("stat").len(), 10_000);
}

/// Issue 11.16: copying `/dev/zero` stops at max_size.
#[cfg(unix)]
#[test]
fn copying_dev_zero_stops_at_max_size() {
    let cache = tempfile::tempdir().expect("tempdir");
    let err = Executable::new("/dev/zero", "zero")
        .cache_root(cache.path())
        .max_size(1 << 20)
        .install()
        .expect_err("too large");
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    assert!(err.to_string().contains("/dev/zero"), "{err}");
    assert_eq!(files_under(cache.path()), Vec::<PathBuf>::new());
}

/// Issue 11.16: failed installs leave no empty identifier directory and no orphan lock file.
#[test]
fn failed_installs_leave_no_directory() {
    let server = Server::start(|_, _| Reply::status(404));
    let cache = tempfile::tempdir().expect("tempdir");
    Executable::new(server.url("tool"), "fails-404")
        .cache_root(cache.path())
        .install()
        .expect_err("404");
    let src = cache.path().join("src");
    std::fs::write(&src, script("x")).expect("write");
    Executable::new(src.to_string_lossy(), "fails-sha")
        .cache_root(cache.path())
        .sha256("0".repeat(64))
        .install()
        .expect_err("mismatch");
    let left: Vec<_> = std::fs::read_dir(cache.path().join("executables"))
        .expect("list")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(left, Vec::<PathBuf>::new(), "no directory, no lock file");
}

/// Issue 11.17: `uninstall` waits for the identifier's lock, removes the install, and a
/// later install downloads again.
#[test]
fn uninstall_removes_an_install_under_its_lock() {
    let server = Server::start(|_, _| Reply::ok(script("gone")));
    let cache = tempfile::tempdir().expect("tempdir");
    let root = cache.path().to_owned();
    let install = || {
        Executable::new(server.url("tool"), "uninstall-me")
            .cache_root(&root)
            .install()
            .expect("install")
    };
    let path = install().to_path_buf();
    assert_eq!(
        execs::uninstall("not-installed", Some(&root)).expect("uninstall"),
        None
    );

    // Hold the install lock, as an installer of this identifier would.
    let lock = std::fs::File::open(
        root.join("executables")
            .join(format!("{}.lock", sha256_hex(b"uninstall-me"))),
    )
    .expect("lock file");
    lock.lock().expect("take the lock");
    let (tx, rx) = std::sync::mpsc::channel();
    let thread_root = root.clone();
    std::thread::spawn(move || {
        let _ = tx.send(execs::uninstall("uninstall-me", Some(&thread_root)));
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "uninstall did not wait for the lock"
    );
    assert!(path.exists(), "removed while the lock was held");
    drop(lock);
    let removed = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("uninstall finished")
        .expect("uninstall")
        .expect("it was installed");
    assert_eq!(removed.identifier, "uninstall-me");
    assert_eq!(removed.path, path);
    assert!(!path.exists());
    assert!(!id_dir(&root, "uninstall-me").exists());
    let lock_file = root
        .join("executables")
        .join(format!("{}.lock", sha256_hex(b"uninstall-me")));
    assert!(!lock_file.exists(), "the lock file goes with the install");
    assert!(execs::installed(Some(&root)).expect("list").is_empty());

    assert_eq!(run(&install()), "gone");
    assert_eq!(server.hits(), 2, "installed again after uninstall");
}

/// Issue 11.16/11.17: gc cleans what failed installs (of this and earlier versions) left,
/// without a criterion; a dry run reports and removes nothing.
#[test]
fn gc_cleans_debris_and_a_dry_run_removes_nothing() {
    let cache = tempfile::tempdir().expect("tempdir");
    let root = cache.path();
    let src = root.join("tool");
    std::fs::write(&src, script("kept")).expect("write");
    let exe = Executable::new(src.to_string_lossy(), "kept")
        .cache_root(root)
        .install()
        .expect("install");
    // What earlier versions and killed installers left: an empty directory, a directory
    // with only a partial download, staging files next to an install.
    let empty = id_dir(root, "failed-long-ago");
    std::fs::create_dir(&empty).expect("mkdir");
    let partial = id_dir(root, "cut-off");
    std::fs::create_dir(&partial).expect("mkdir");
    std::fs::write(partial.join(".partial"), b"half").expect("write");
    let kept_dir = id_dir(root, "kept");
    std::fs::write(kept_dir.join(".staging-abc"), b"debris").expect("write");
    let orphan_lock = root
        .join("executables")
        .join(format!("{}.lock", sha256_hex(b"never-installed")));
    std::fs::write(&orphan_lock, b"").expect("write");
    std::fs::write(kept_dir.join(".partial"), b"half").expect("write");

    let would = Gc::new()
        .cache_root(root)
        .keep(Vec::<String>::new())
        .dry_run(true)
        .run()
        .expect("dry run");
    assert_eq!(would.len(), 1);
    assert_eq!(would[0].identifier, "kept");
    assert!(exe.exists() && empty.exists() && partial.exists());
    assert!(kept_dir.join(".staging-abc").exists());

    let removed = Gc::new().cache_root(root).run().expect("gc");
    assert!(removed.is_empty(), "no criterion: no install is removed");
    assert!(exe.exists());
    assert!(!empty.exists() && !partial.exists());
    assert!(
        !orphan_lock.exists(),
        "a lock file without an install is removed"
    );
    let mut names: Vec<_> = std::fs::read_dir(root.join("executables"))
        .expect("list")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let kept_hash = sha256_hex(b"kept");
    assert_eq!(names, [kept_hash.clone(), format!("{kept_hash}.lock")]);
    let mut left: Vec<_> = std::fs::read_dir(&kept_dir)
        .expect("list")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, [".complete", "tool"]);
}

/// An entry of a test archive.
enum Ent<'a> {
    File(&'a str, &'a [u8], u32),
    Link(&'a str, &'a str),
    HardLink(&'a str, &'a str),
}

/// An uncompressed tar of `entries` (names written raw, so hostile ones too).
fn tar_of(entries: &[Ent<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        let (name, data, kind, mode, link): (&str, &[u8], _, u32, Option<&str>) = match entry {
            Ent::File(name, data, mode) => (name, data, tar::EntryType::Regular, *mode, None),
            Ent::Link(name, target) => (name, b"", tar::EntryType::Symlink, 0o777, Some(target)),
            Ent::HardLink(name, target) => (name, b"", tar::EntryType::Link, 0o644, Some(target)),
        };
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(target) = link {
            header.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        builder.append(&header, data).expect("append");
    }
    builder.into_inner().expect("tar")
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}

fn zst(bytes: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(bytes, 1).expect("zstd")
}

/// A toolchain: `bin/tool` runs only next to its `lib/`.
fn toolchain(version: &str) -> Vec<u8> {
    let tool = b"#!/bin/sh\ncat \"$(dirname \"$0\")/../lib/version.txt\"\n";
    tar_of(&[
        Ent::File("tc/bin/tool", tool, 0o755),
        Ent::File("tc/lib/version.txt", version.as_bytes(), 0o644),
        Ent::Link("tc/bin/tool-alias", "tool"),
        Ent::Link("tc/lib/up", "../bin"),
    ])
}

/// Issue 11.15: a whole archive (.tar.gz and .tar.zst) is installed as a tree and the chosen
/// member's path is returned; a forced reinstall replaces the tree.
#[test]
fn whole_archive_installs_the_tree_and_returns_the_member() {
    let cache = tempfile::tempdir().expect("tempdir");
    for (name, bytes) in [
        ("tc-1.tar.gz", gz(&toolchain("one"))),
        ("tc-1.tar.zst", zst(&toolchain("one"))),
    ] {
        let server = serve_bytes(bytes.clone());
        let install = || {
            Executable::new(server.url(name), format!("whole-{name}"))
                .cache_root(cache.path())
                .sha256(sha256_hex(&bytes))
                .archive_member("tc/bin/tool")
                .whole_archive(true)
                .install()
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let exe = install();
        assert!(exe.ends_with("tc-1/tc/bin/tool"), "{}", exe.display());
        assert_eq!(run(&exe), "one", "{name}: runs next to its lib/");
        let tree = exe.parent().and_then(Path::parent).expect("tree");
        assert_eq!(run(&tree.join("bin/tool-alias")), "one");
        assert_eq!(*install(), *exe, "{name}: installed");
        assert_eq!(server.hits(), 1, "{name}");
        let listed = execs::installed(Some(cache.path())).expect("list");
        assert!(listed.iter().any(|i| i.path == *exe), "{listed:?}");
    }

    let version = Arc::new(AtomicUsize::new(1));
    let server = Server::start({
        let version = version.clone();
        move |_, _| {
            let v = if version.load(Ordering::SeqCst) == 1 {
                "one"
            } else {
                "two"
            };
            Reply::ok(gz(&toolchain(v)))
        }
    });
    let install = |force| {
        Executable::new(server.url("tc.tgz"), "whole-forced")
            .cache_root(cache.path())
            .archive_member("tc/bin/tool")
            .whole_archive(true)
            .force(force)
            .install()
            .expect("install")
    };
    assert_eq!(run(&install(false)), "one");
    version.store(2, Ordering::SeqCst);
    let exe = install(true);
    assert_eq!(run(&exe), "two");
    let dir = id_dir(cache.path(), "whole-forced");
    let mut left: Vec<_> = std::fs::read_dir(&dir)
        .expect("list")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, [".complete", "tc"], "the old tree is gone");
}

/// Issue 11.15: an archive without a chosen member is an error that lists its files (it used
/// to be installed itself, with the exec bit); a missing member lists the closest names.
#[test]
fn archive_without_member_or_with_a_missing_one_lists_names() {
    let bytes = gz(&toolchain("x"));
    let server = serve_bytes(bytes);
    let cache = tempfile::tempdir().expect("tempdir");
    let err = Executable::new(server.url("tc.tar.gz"), "no-member")
        .cache_root(cache.path())
        .install()
        .expect_err("no member chosen");
    assert!(matches!(err, Error::Archive { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("tc/bin/tool"), "{message}");
    assert!(message.contains("tc/lib/version.txt"), "{message}");
    assert!(
        execs::installed(Some(cache.path()))
            .expect("list")
            .is_empty()
    );

    for whole in [false, true] {
        let err = Executable::new(server.url("tc.tar.gz"), format!("typo-{whole}"))
            .cache_root(cache.path())
            .archive_member("bin/tool")
            .whole_archive(whole)
            .install()
            .expect_err("missing member");
        let message = err.to_string();
        assert!(
            message.contains("closest: tc/bin/tool"),
            "whole={whole}: {message}"
        );
    }
    assert_eq!(files_under(cache.path()), Vec::<PathBuf>::new());
}

/// Issue 11.15: a whole tree gets the same traversal and link checks: absolute or `..`
/// entries, links out of the tree, writing through a link, and hard links are refused.
#[test]
fn whole_archive_refuses_escapes_and_writes_nothing_outside() {
    let cache = tempfile::tempdir().expect("tempdir");
    let root = cache.path().join("root");
    let tool: &[u8] = b"#!/bin/sh\necho ok\n";
    let hostile: [(&str, Vec<Ent<'_>>); 6] = [
        ("dotdot", vec![Ent::File("../evil", tool, 0o755)]),
        ("absolute", vec![Ent::File("/tmp/evil-abs", tool, 0o755)]),
        ("link-out", vec![Ent::Link("bin/sh", "/bin/sh")]),
        ("link-up", vec![Ent::Link("bin/up", "../../evil")]),
        (
            "through-link",
            vec![
                Ent::File("real/x", tool, 0o644),
                Ent::Link("via", "real"),
                Ent::File("via/evil", tool, 0o755),
            ],
        ),
        ("hard-link", vec![Ent::HardLink("bin/h", "/etc/passwd")]),
    ];
    for (name, mut entries) in hostile {
        entries.insert(0, Ent::File("bin/tool", tool, 0o755));
        let server = serve_bytes(gz(&tar_of(&entries)));
        let err = Executable::new(server.url("h.tgz"), format!("hostile-{name}"))
            .cache_root(&root)
            .archive_member("bin/tool")
            .whole_archive(true)
            .install()
            .expect_err(name);
        assert!(matches!(err, Error::Archive { .. }), "{name}: {err:?}");
        assert!(err.to_string().contains("refusing"), "{name}: {err}");
    }
    assert!(!cache.path().join("evil").exists());
    assert!(!root.join("evil").exists());
    assert!(!Path::new("/tmp/evil-abs").exists());
    assert!(execs::installed(Some(&root)).expect("list").is_empty());
    assert_eq!(files_under(&root), Vec::<PathBuf>::new(), "nothing left");
}

/// Issue 11.15: a single member of a `.tar.zst`.
#[test]
fn a_member_of_a_tar_zst_is_extracted() {
    let server = serve_bytes(zst(&toolchain("zst")));
    let cache = tempfile::tempdir().expect("tempdir");
    let exe = Executable::new(server.url("t.tar.zst"), "zst-member")
        .cache_root(cache.path())
        .archive_member("tc/lib/version.txt")
        .install()
        .expect("install");
    assert_eq!(std::fs::read(&*exe).expect("read"), b"zst");
}

/// Issue 11.13: an installer killed mid-download (SIGKILL, as after Ctrl-C) leaves a partial
/// file that the next call resumes with a Range request.
#[test]
fn a_download_killed_mid_body_is_resumed_by_the_next_process() {
    let body = pattern(300_000, 7);
    let server = serve_interrupted(body.clone(), true, |reply| Reply {
        stall_after: Some(CUT),
        ..reply
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let url = server.url("tool");
    let root = child_root(cache.path());
    let partial = id_dir(&root, "killed-resume").join(".partial");
    let mut victim = child(&url, "killed-resume", cache.path())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    while std::fs::metadata(&partial).map_or(0, |m| m.len()) < CUT as u64 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "child never got the first bytes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    victim.kill().expect("SIGKILL");
    let _ = victim.wait();

    let exe = Executable::new(&url, "killed-resume")
        .cache_root(&root)
        .sha256(sha256_hex(&body))
        .install()
        .expect("resumed after the kill");
    assert_resumed(&server, &exe, &body);
}

/// The lock-file removal protocol (id_lock): installs and uninstalls of one identifier from
/// many threads, which remove and recreate its lock file all the time, never download at
/// the same time (each holder of the lock is alone).
#[test]
fn installs_and_uninstalls_racing_never_overlap() {
    let active = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let server = Server::start({
        let (active, overlaps) = (active.clone(), overlaps.clone());
        move |_, _| {
            if active.fetch_add(1, Ordering::SeqCst) > 0 {
                overlaps.fetch_add(1, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(5));
            active.fetch_sub(1, Ordering::SeqCst);
            Reply::ok(script("racy"))
        }
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let url = server.url("tool");
    std::thread::scope(|scope| {
        for _ in 0..6 {
            scope.spawn(|| {
                for _ in 0..15 {
                    let exe = Executable::new(&url, "racy")
                        .cache_root(cache.path())
                        .install()
                        .expect("install");
                    // It may be uninstalled by another thread right away: only check the path.
                    assert!(exe.ends_with("tool"));
                    execs::uninstall("racy", Some(cache.path())).expect("uninstall");
                }
            });
        }
    });
    assert!(server.hits() > 1);
    assert_eq!(
        overlaps.load(Ordering::SeqCst),
        0,
        "two lock holders downloaded at once"
    );
    let left: Vec<_> = std::fs::read_dir(cache.path().join("executables"))
        .expect("list")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(
        left,
        Vec::<PathBuf>::new(),
        "all uninstalled, lock file included"
    );
}

/// A 206 (part of the file) to a request for the whole file is an error, not an install of
/// the part.
#[test]
fn a_partial_answer_to_a_whole_request_is_refused() {
    let body = pattern(1000, 8);
    let server = Server::start({
        let body = body.clone();
        move |_, _| {
            Reply {
                status: 206,
                ..Reply::ok(body[..100].to_vec())
            }
            .header("Content-Range", "bytes 0-99/1000")
        }
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let err = Executable::new(server.url("tool"), "partial-answer")
        .cache_root(cache.path())
        .install()
        .expect_err("a part is not the file");
    assert!(
        matches!(
            err,
            Error::Download {
                status: Some(206),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        execs::installed(Some(cache.path()))
            .expect("list")
            .is_empty()
    );
    assert_eq!(files_under(cache.path()), Vec::<PathBuf>::new());
}

/// A server that stops answering in the middle of the body (it keeps the connection open
/// and sends nothing more): the install gives up after its timeout instead of hanging,
/// installs nothing, and a retry gets the whole file.
#[test]
fn a_server_that_stops_answering_mid_body_times_out_and_a_retry_installs() {
    let body = b"#!/bin/sh\necho stalled-then-served\n".repeat(2000);
    let served = body.clone();
    let server = Server::start(move |n, _| {
        let reply = Reply::ok(served.clone());
        if n == 0 {
            Reply {
                stall_after: Some(served.len() / 2),
                ..reply
            }
        } else {
            reply
        }
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let url = server.url("tool");
    let (tx, rx) = std::sync::mpsc::channel();
    let root = cache.path().to_owned();
    let give_up = url.clone();
    std::thread::spawn(move || {
        let result = Executable::new(give_up, "stalled")
            .cache_root(&root)
            .timeout(Duration::from_secs(1))
            .retries(0)
            .install();
        let _ = tx.send(result.map(|p| p.to_path_buf()));
    });
    let err = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the install hung on a server that stopped answering")
        .expect_err("a stalled download cannot succeed without a retry");
    assert!(matches!(err, Error::Download { .. }), "{err:?}");
    assert!(
        execs::installed(Some(cache.path()))
            .expect("list")
            .is_empty()
    );
    let path = Executable::new(url, "stalled")
        .cache_root(cache.path())
        .timeout(Duration::from_secs(5))
        .install()
        .expect("the retry installs");
    assert_eq!(std::fs::read(&*path).expect("read"), body);
    assert_eq!(server.hits(), 2);
}
