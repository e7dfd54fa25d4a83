//! `concurio run` with outputs too big to hold in memory (issues 11.3 and 12.3): stored as
//! they stream, replayed by streaming, byte-exact, at a bounded RSS. Real `concurio`
//! processes; outputs are compared by SHA-256 streamed through `sha256sum`, never held by
//! the test.
#![cfg(unix)]

mod common;

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};

use common::{Sandbox, counted, run_args};

/// 512 MiB of distinct lines (`seq` output is not periodic, so a chunk out of place or
/// repeated changes the hash).
const BIG: &str = "seq 1 70000000 | head -c 536870912";

/// The bound on the peak RSS of `concurio run`, whatever the output's size.
const MAX_RSS_KIB: i64 = 128 * 1024;

/// The SHA-256 (hex) of what `script` prints, computed by a shell pipeline.
fn sha256_of(script: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", &format!("({script}) | sha256sum")])
        .output()
        .expect("sh");
    assert!(out.status.success(), "{out:?}");
    hex_of(&out.stdout)
}

fn hex_of(sha256sum_output: &[u8]) -> String {
    let text = String::from_utf8_lossy(sha256sum_output);
    text.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// `sha256sum` reading from a pipe, and the pipe's write end.
fn hasher() -> (Child, ChildStdin) {
    let mut sum = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    let input = sum.stdin.take().expect("piped stdin");
    (sum, input)
}

fn digest(sum: Child) -> String {
    let out = sum.wait_with_output().expect("sha256sum");
    assert!(out.status.success(), "{out:?}");
    hex_of(&out.stdout)
}

/// What one measured `concurio` process did.
struct Measured {
    code: Option<i32>,
    max_rss_kib: i64,
    stdout_sha256: String,
    stderr_sha256: String,
}

/// Runs `concurio ARGS` with stdout and stderr piped into `sha256sum`, and reaps it with
/// `wait4` for its peak RSS (`ru_maxrss`, KiB on Linux; it includes the descendants it
/// waited for: the command, a shell and `seq`/`head`, a few MiB).
fn measured(sb: &Sandbox, args: &[&str]) -> Measured {
    let (out_sum, out_pipe) = hasher();
    let (err_sum, err_pipe) = hasher();
    let child = {
        let mut cmd = sb.cmd();
        cmd.args(args)
            .stdout(Stdio::from(out_pipe))
            .stderr(Stdio::from(err_pipe));
        cmd.spawn().expect("spawn concurio")
        // `cmd` drops here with its copies of the pipes' write ends: the hashers see EOF.
    };
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Measured {
        code,
        max_rss_kib: usage.ru_maxrss,
        stdout_sha256: digest(out_sum),
        stderr_sha256: digest(err_sum),
    }
}

#[test]
fn a_512_mib_output_runs_and_replays_byte_exact_under_128_mib_rss() {
    let sb = Sandbox::new();
    let script = format!("{BIG}; seq 1 300000 >&2; exit 3");
    let argv = counted(&script);
    let args = run_args(&["--ttl", "1h"], &argv);
    let want_out = sha256_of(BIG);
    let want_err = sha256_of("seq 1 300000");
    for (what, runs) in [("run", 1), ("replay", 1)] {
        let m = measured(&sb, &args);
        println!("{what}: peak RSS {} KiB", m.max_rss_kib); // shown with --nocapture
        assert_eq!(m.code, Some(3), "{what}: exit status");
        assert_eq!(m.stdout_sha256, want_out, "{what}: stdout differs");
        assert_eq!(m.stderr_sha256, want_err, "{what}: stderr differs");
        assert!(
            m.max_rss_kib < MAX_RSS_KIB,
            "{what}: peak RSS {} MiB",
            m.max_rss_kib / 1024
        );
        assert_eq!(sb.runs(), runs, "{what}");
    }
}

/// `concurio run` of a command that prints `lines` numbers from its run count on (so each
/// run prints something else), and its run count on stderr.
fn versioned(lines: u32) -> Vec<String> {
    counted(&format!(
        "v=$(wc -l < counter | tr -d ' '); seq \"$v\" {lines}; echo \"version $v\" >&2"
    ))
}

#[test]
fn a_replay_across_a_forced_refresh_is_the_old_result_whole() {
    let sb = Sandbox::new();
    let argv = versioned(3_000_000); // about 20 MiB
    let args = run_args(&["--key", "k", "--ttl", "1h"], &argv);
    let out = sb.concurio(&args);
    assert!(
        out.status.success(),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A replay that has sent 1 MiB (and is blocked on its full pipe) ...
    let mut replay = sb.spawn_piped(&args);
    let mut stdout = replay.stdout.take().unwrap();
    let mut head = vec![0; 1 << 20];
    stdout.read_exact(&mut head).unwrap();
    // ... while a forced run replaces the result (and removes the old output) ...
    let forced = sb.concurio(&run_args(&["--key", "k", "--force", "--ttl", "1h"], &argv));
    assert!(forced.status.success(), "{forced:?}");
    assert_eq!(forced.stderr, b"version 2\n");
    // ... finishes with the old result, whole.
    let (sum, mut sum_in) = hasher();
    sum_in.write_all(&head).unwrap();
    std::io::copy(&mut stdout, &mut sum_in).unwrap();
    drop(sum_in);
    let mut stderr = String::new();
    replay
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(replay.wait().unwrap().success());
    assert_eq!(digest(sum), sha256_of("seq 1 3000000"), "replay torn");
    assert_eq!(
        stderr, "version 1\n",
        "stdout of one run, stderr of another"
    );
    // The next call replays the new result; the old one's streams are gone.
    let out = sb.concurio(&args);
    assert_eq!(out.stderr, b"version 2\n");
    assert_eq!(sb.runs(), 2);
    let stats = sb.json(&["cache", "stats", "--json"]);
    assert_eq!(stats["entries"], 2, "the run entry and its stdout: {stats}");
}

#[test]
fn concurrent_replays_and_forced_refreshes_are_each_one_whole_result() {
    let sb = Sandbox::new();
    let argv = versioned(1_000_000); // about 6.6 MiB
    let args = run_args(&["--key", "k", "--ttl", "1h"], &argv);
    sb.ok(&args);
    let forced = run_args(&["--key", "k", "--force", "--ttl", "1h"], &argv);
    let expected: Vec<String> = (1..=4)
        .map(|v| sha256_of(&format!("seq {v} 1000000")))
        .collect();
    std::thread::scope(|s| {
        let refresher = s.spawn(|| {
            for _ in 0..3 {
                let out = sb.concurio(&forced);
                assert!(out.status.success(), "{out:?}");
            }
        });
        while !refresher.is_finished() {
            let m = measured(&sb, &args);
            assert_eq!(m.code, Some(0));
            let version = expected.iter().position(|h| *h == m.stdout_sha256);
            let Some(version) = version else {
                panic!("a replay matches no run's output");
            };
            let stderr = sha256_of(&format!("echo 'version {}'", version + 1));
            assert_eq!(
                m.stderr_sha256, stderr,
                "stdout and stderr of different runs"
            );
        }
        refresher.join().unwrap();
    });
    assert_eq!(sb.runs(), 4, "replays never ran the command");
}

/// The key of a stream entry of the run entry `key`, as `cache list --json` shows it.
fn stream_keys(sb: &Sandbox, key: &str) -> Vec<String> {
    let list = sb.json(&["cache", "list", "--json"]);
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["key"] == key)
        .unwrap_or_else(|| panic!("no {key} in {list}"));
    row["streams"]
        .as_array()
        .unwrap_or_else(|| panic!("no streams in {row}"))
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_deleted_stream_entry_makes_the_next_callers_run_the_command_once() {
    let sb = Sandbox::new();
    let argv = counted("sleep 0.5; seq 1 100000; exit 4"); // 575 KiB
    let args = run_args(&["--key", "k", "--ttl", "1h"], &argv);
    assert_eq!(sb.concurio(&args).status.code(), Some(4));
    let streams = stream_keys(&sb, "k");
    assert_eq!(streams.len(), 1, "{streams:?}");
    // A result of at least a second (`run` handles a younger one without the once-logic).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(
        sb.json(&["cache", "delete", &streams[0], "--json"])["deleted"],
        true
    );
    let want = sha256_of("seq 1 100000");
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (sum, pipe) = hasher();
            let mut cmd = sb.cmd();
            cmd.args(&args).stdout(Stdio::from(pipe));
            (cmd.spawn().unwrap(), sum)
        })
        .collect();
    for (mut caller, sum) in callers {
        assert_eq!(caller.wait().unwrap().code(), Some(4));
        assert_eq!(digest(sum), want);
    }
    assert_eq!(sb.runs(), 2, "the command ran again once");
    assert_eq!(stream_keys(&sb, "k").len(), 1);
}

#[test]
fn a_closed_pipe_while_running_still_stores_the_whole_output() {
    let sb = Sandbox::new();
    let argv = counted("seq 1 1000000");
    let args = run_args(&["--ttl", "1h"], &argv);
    let mut child = sb.cmd().args(&args).stdout(Stdio::piped()).spawn().unwrap();
    let mut head = [0; 10];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    drop(child.stdout.take()); // `| head -c 10`
    assert!(child.wait().unwrap().success());
    let m = measured(&sb, &args);
    assert_eq!(m.code, Some(0));
    assert_eq!(m.stdout_sha256, sha256_of("seq 1 1000000"));
    assert_eq!(sb.runs(), 1);
}

#[test]
fn cache_list_shows_a_big_result_once_with_the_size_of_its_output() {
    let sb = Sandbox::new();
    sb.ok(&["run", "--", "sh", "-c", "seq 1 1000000; seq 1 20000 >&2"]);
    let text = sb.ok(&["cache", "list"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "one header, one entry: {text}");
    assert!(
        lines[1].contains(" MiB  sh -c 'seq 1 1000000; seq 1 20000 >&2'"),
        "{text}"
    );
    let list = sb.json(&["cache", "list", "--json"]);
    let bytes = list[0]["bytes"].as_u64().unwrap();
    assert!(bytes > 6_888_896 + 108_894, "{list}"); // the outputs' lengths, and a header
    let got = sb.concurio(&["cache", "get", list[0]["key"].as_str().unwrap(), "--json"]);
    assert!(got.status.success(), "{got:?}");
    let entry: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    let stdout = entry["value"]["stdout"].as_str().unwrap();
    assert_eq!(stdout.len(), 6_888_896);
    assert!(stdout.ends_with("999999\n1000000\n"));
    assert_eq!(entry["value"]["stderr"].as_str().unwrap().len(), 108_894);
}

#[test]
fn a_damaged_stored_output_is_an_error_and_the_next_call_runs_again() {
    let sb = Sandbox::new();
    let argv = counted("seq 1 150000"); // 1 MiB: a stream entry
    let args = run_args(&["--ttl", "1h"], &argv);
    let want = sha256_of("seq 1 150000");
    sb.ok(&args);
    let blobs = sb.path().join("dbx_concurio/run/blobs");
    let files: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one value file: {files:?}");
    let mut perms = std::fs::metadata(&files[0]).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&files[0], perms).unwrap();
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&files[0], bytes).unwrap();

    let damaged = sb.concurio(&args);
    let stderr = String::from_utf8_lossy(&damaged.stderr);
    assert_eq!(damaged.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("damaged"), "{stderr}");
    assert_eq!(sb.runs(), 1, "a damaged replay is not a run");
    let m = measured(&sb, &args);
    assert_eq!(m.code, Some(0));
    assert_eq!(m.stdout_sha256, want, "the next call ran the command");
    assert_eq!(sb.runs(), 2);
}

#[test]
fn a_result_stored_before_stream_entries_is_still_replayed() {
    /// A result as `concurio run` stored it before stream entries: outputs inline.
    #[derive(serde::Serialize)]
    struct OldRecorded {
        command: Vec<String>,
        stdout: serde_bytes::ByteBuf,
        stderr: serde_bytes::ByteBuf,
        code: Option<i32>,
        signal: Option<i32>,
    }
    let sb = Sandbox::new();
    let dir = sb.path().join("dbx_concurio/run");
    let cache = dbx_concurio::caches::DiskCache::builder()
        .directory(&dir)
        .build()
        .unwrap();
    let old = OldRecorded {
        command: vec!["old".into()],
        stdout: serde_bytes::ByteBuf::from(b"old out\xff\n".to_vec()),
        stderr: serde_bytes::ByteBuf::from(b"old err\n".to_vec()),
        code: Some(6),
        signal: None,
    };
    cache.set("k", &old, None).unwrap();
    drop(cache);
    let out = sb.concurio(&run_args(&["--key", "k"], &counted("echo new")));
    assert_eq!(out.status.code(), Some(6));
    assert_eq!(out.stdout, b"old out\xff\n");
    assert_eq!(out.stderr, b"old err\n");
    assert_eq!(sb.runs(), 0, "the old result was not replayed");
}

#[test]
fn a_big_result_and_its_stream_entries_expire_together_and_prune_removes_them() {
    let sb = Sandbox::new();
    let short = ["--ttl", "1s", "--keep", "1s", "--key", "short"];
    sb.ok(&run_args(&short, &counted("seq 1 100000; seq 1 20000 >&2")));
    sb.ok(&run_args(
        &["--ttl", "1h", "--key", "long"],
        &counted("seq 1 100000"),
    ));
    assert_eq!(sb.json(&["cache", "stats", "--json"])["entries"], 5);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(sb.json(&["cache", "stats", "--json"])["expired"], 3);
    assert_eq!(sb.json(&["cache", "prune", "--json"])["expired_removed"], 3);
    assert_eq!(stream_keys(&sb, "long").len(), 1);
    assert_eq!(sb.json(&["cache", "stats", "--json"])["entries"], 2);
}
