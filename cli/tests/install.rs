//! `concurio install`, `exec` and executable pruning against a loopback HTTP server.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::Sandbox;
use sha2::{Digest, Sha256};

const TOOL: &[u8] = b"#!/bin/sh\necho \"tool ran:$*\"\nexit \"${TOOL_EXIT:-0}\"\n";

/// Serves TOOL at every path on 127.0.0.1; returns the base URL and the request count.
fn serve() -> (String, Arc<AtomicUsize>) {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("bind 127.0.0.1");
    let port = server.server_addr().to_ip().expect("ip address").port();
    let requests = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&requests);
    std::thread::spawn(move || {
        for request in server.incoming_requests() {
            count.fetch_add(1, Ordering::SeqCst);
            let _ = request.respond(tiny_http::Response::from_data(TOOL));
        }
    });
    (format!("http://127.0.0.1:{port}"), requests)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn install_prints_only_a_runnable_path_and_exec_runs_it() {
    let sb = Sandbox::new();
    let (base, requests) = serve();
    let url = format!("{base}/tool");
    let sha = sha256_hex(TOOL);
    let args = [
        "install",
        url.as_str(),
        "--id",
        "tool-1",
        "--sha256",
        sha.as_str(),
    ];
    let stdout = sb.ok(&args);
    let path = stdout.strip_suffix('\n').expect("one line");
    assert!(
        !path.contains('\n'),
        "more than the path on stdout: {stdout:?}"
    );
    let path = std::path::Path::new(path);
    assert!(
        path.is_absolute() && path.starts_with(sb.path()),
        "{path:?}"
    );
    let ran = std::process::Command::new(path).arg("x").output().unwrap();
    assert_eq!(ran.stdout, b"tool ran:x\n");

    assert_eq!(sb.ok(&args), stdout, "a second install gives the same path");
    assert_eq!(requests.load(Ordering::SeqCst), 1, "installed twice");

    assert_eq!(sb.ok(&["exec", "tool-1", "--", "a", "b"]), "tool ran:a b\n");
    let failing = sb
        .cmd()
        .args(["exec", "tool-1"])
        .env("TOOL_EXIT", "5")
        .output()
        .unwrap();
    assert_eq!(
        failing.status.code(),
        Some(5),
        "exec passes the tool's status"
    );

    let listed = sb.json(&["installed", "--json"]);
    let rows = listed.as_array().expect("array");
    assert_eq!(rows.len(), 1, "{listed}");
    assert_eq!(rows[0]["identifier"], "tool-1");
    assert_eq!(rows[0]["path"], path.to_str().unwrap());
    assert_eq!(rows[0]["sha256"], sha.as_str());
    assert!(sb.ok(&["installed"]).contains("tool-1"));
}

#[test]
fn checksum_mismatch_fails_with_a_message_and_installs_nothing() {
    let sb = Sandbox::new();
    let (base, _) = serve();
    let url = format!("{base}/tool");
    let wrong = "0".repeat(64);
    let out = sb.concurio(&["install", &url, "--id", "tool-2", "--sha256", &wrong]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("concurio: ") && stderr.contains("sha256"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let exec = sb.concurio(&["exec", "tool-2"]);
    assert_eq!(exec.status.code(), Some(1));
    let stderr = String::from_utf8(exec.stderr).unwrap();
    assert!(stderr.contains("no executable is installed"), "{stderr}");
}

#[test]
fn offline_install_of_a_missing_tool_fails_and_prune_removes_old_executables_dry_run_only_tells() {
    let sb = Sandbox::new();
    let (base, requests) = serve();
    let url = format!("{base}/tool");
    let offline = sb.concurio(&["install", &url, "--id", "tool-3", "--offline"]);
    assert_eq!(offline.status.code(), Some(1));
    assert_eq!(requests.load(Ordering::SeqCst), 0);

    let path = sb.ok(&["install", &url, "--id", "tool-3"]);
    assert_eq!(
        sb.ok(&["install", &url, "--id", "tool-3", "--offline"]),
        path
    );
    let kept = sb.json(&["cache", "prune", "--older-than", "1h", "--json"]);
    assert_eq!(kept["executables_removed"], serde_json::json!([]));
    // A dry run names what would go and removes nothing.
    let told = sb.json(&[
        "cache",
        "prune",
        "--older-than",
        "0s",
        "--dry-run",
        "--json",
    ]);
    assert_eq!(
        told["executables_removed"],
        serde_json::json!([path.trim_end()])
    );
    assert_eq!(told["dry_run"], serde_json::json!(true));
    assert!(
        std::path::Path::new(path.trim_end()).exists(),
        "a dry run removed it"
    );
    let pruned = sb.json(&["cache", "prune", "--older-than", "0s", "--json"]);
    assert_eq!(
        pruned["executables_removed"],
        serde_json::json!([path.trim_end()])
    );
    assert_eq!(sb.concurio(&["exec", "tool-3"]).status.code(), Some(1));
}

/// A local file of `len` bytes that runs (a shell script padded with a comment).
fn padded_tool(sb: &Sandbox, len: usize) -> std::path::PathBuf {
    let mut bytes = b"#!/bin/sh\necho padded\n#".to_vec();
    bytes.resize(len, b'x');
    let path = sb.path().join("padded-tool");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Issue 11.17: `installed` shows sizes in human units; `--json` keeps bytes as numbers.
#[test]
fn installed_shows_human_sizes_and_json_keeps_bytes() {
    let sb = Sandbox::new();
    let src = padded_tool(&sb, 2 << 20);
    sb.ok(&["install", src.to_str().unwrap(), "--id", "big-1"]);
    let text = sb.ok(&["installed"]);
    assert!(text.contains("2.0 MiB"), "{text}");
    assert!(!text.contains("2097152"), "{text}");
    let listed = sb.json(&["installed", "--json"]);
    assert_eq!(listed[0]["size"], serde_json::json!(2 << 20));
}

/// Issue 11.17: `concurio uninstall ID` (and its --dry-run).
#[test]
fn uninstall_removes_and_dry_run_only_tells() {
    let sb = Sandbox::new();
    let (base, requests) = serve();
    let url = format!("{base}/tool");
    let path = sb.ok(&["install", &url, "--id", "tool-u"]);
    let path = std::path::Path::new(path.trim_end()).to_owned();

    let told = sb.ok(&["uninstall", "tool-u", "--dry-run"]);
    assert!(told.starts_with("would remove tool-u"), "{told}");
    assert!(told.contains(path.to_str().unwrap()), "{told}");
    assert!(path.exists(), "a dry run removed it");

    let done = sb.ok(&["uninstall", "tool-u"]);
    assert!(done.starts_with("removed tool-u"), "{done}");
    assert!(!path.exists());
    assert_eq!(sb.concurio(&["exec", "tool-u"]).status.code(), Some(1));

    let again = sb.concurio(&["uninstall", "tool-u"]);
    assert_eq!(again.status.code(), Some(1));
    let stderr = String::from_utf8(again.stderr).unwrap();
    assert!(stderr.contains("no executable is installed"), "{stderr}");

    sb.ok(&["install", &url, "--id", "tool-u"]);
    assert_eq!(requests.load(Ordering::SeqCst), 2, "installed again");
}

/// Issue 11.16: `--max-size` stops an endless copy; `cache prune` removes what failed
/// installs of earlier versions left (an empty identifier directory).
#[test]
fn max_size_stops_an_endless_copy_and_prune_cleans_debris() {
    let sb = Sandbox::new();
    let out = sb.concurio(&["install", "/dev/zero", "--id", "zero", "--max-size", "1M"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("max_size"), "{stderr}");

    let executables = sb.path().join("dbx_concurio").join("executables");
    let debris = executables.join("ab".repeat(32));
    std::fs::create_dir(&debris).unwrap();
    sb.ok(&["cache", "prune"]);
    assert!(!debris.exists(), "prune left an empty identifier directory");
}

/// Issue 11.15: `--whole-archive` installs the tree; the printed path is the member in it.
#[test]
fn whole_archive_prints_the_member_inside_the_tree() {
    let sb = Sandbox::new();
    let tool = b"#!/bin/sh\ncat \"$(dirname \"$0\")/../lib/v\"\n";
    // A real tar made by the system's tar, as a user would make one.
    let tree = sb.path().join("tree");
    std::fs::create_dir_all(tree.join("sdk/bin")).unwrap();
    std::fs::create_dir_all(tree.join("sdk/lib")).unwrap();
    std::fs::write(tree.join("sdk/bin/cc"), tool).unwrap();
    std::fs::write(tree.join("sdk/lib/v"), b"v3").unwrap();
    let archive = sb.path().join("sdk-3.tar");
    let made = std::process::Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&tree)
        .arg("sdk")
        .status()
        .unwrap();
    assert!(made.success());
    let src = archive.to_str().unwrap();
    let no_member = sb.concurio(&["install", src, "--id", "sdk-3"]);
    assert_eq!(no_member.status.code(), Some(1));
    let stderr = String::from_utf8(no_member.stderr).unwrap();
    assert!(stderr.contains("sdk/bin/cc"), "lists the files: {stderr}");

    let args = [
        "install",
        src,
        "--id",
        "sdk-3",
        "--member",
        "sdk/bin/cc",
        "--whole-archive",
    ];
    let path = sb.ok(&args);
    let path = std::path::Path::new(path.trim_end());
    assert!(path.ends_with("sdk-3/sdk/bin/cc"), "{path:?}");
    let ran = std::process::Command::new(path).output().unwrap();
    assert_eq!(ran.stdout, b"v3");
}

/// Issue 11.7: a second `concurio install` of an identifier that another process is
/// installing says whom it waits for. The source is a FIFO: the first installer holds the
/// install lock, blocked reading it, until the test writes the tool into it.
#[test]
fn a_waiting_install_says_whom_it_waits_for() {
    use std::io::{BufRead, Write};
    let sb = Sandbox::new();
    let fifo = sb.path().join("tool.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let source = fifo.to_str().unwrap();
    let args = ["install", source, "--id", "slow-tool"];
    let holder = sb
        .cmd()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The holder has the lock once its lock file names it.
    let lock_named = (0..300).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        walk_files(sb.path()).iter().any(|p| {
            p.extension().is_some_and(|e| e == "lock")
                && std::fs::read_to_string(p)
                    .is_ok_and(|t| t.starts_with(&format!("{}\n", holder.id())))
        })
    });
    assert!(
        lock_named,
        "the installer never noted itself in its lock file"
    );
    let mut waiter = sb
        .cmd()
        .arg("-v")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(waiter.stderr.take().unwrap());
    let expected = format!("concurio: waiting for pid {}: ", holder.id());
    let mut notice = String::new();
    while stderr.read_line(&mut notice).unwrap() > 0 && !notice.contains(&expected) {}
    assert!(notice.contains(&expected), "{notice}");
    assert!(
        notice.contains("install"),
        "it says what the holder runs: {notice}"
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .unwrap()
        .write_all(b"#!/bin/sh\necho slow\n")
        .unwrap();
    let held = holder.wait_with_output().unwrap();
    let waited = waiter.wait_with_output().unwrap();
    assert!(held.status.success() && waited.status.success());
    assert_eq!(
        held.stdout, waited.stdout,
        "both print the one installed path"
    );
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}
