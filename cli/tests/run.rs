//! `concurio run` end to end: real processes, each test in its own cache base directory.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use common::{Sandbox, counted, run_args};

#[test]
fn eight_concurrent_identical_runs_execute_the_command_once() {
    let sb = Sandbox::new();
    let argv = counted("sleep 0.5; echo out");
    let children: Vec<_> = (0..8)
        .map(|_| {
            let mut cmd = sb.cmd();
            cmd.args(run_args(&["--ttl", "1m"], &argv))
                .stdout(Stdio::piped());
            cmd.spawn().expect("spawn")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(out.stdout, b"out\n");
    }
    assert_eq!(sb.runs(), 1, "the command ran more than once");
}

#[test]
fn replays_within_the_ttl_and_reruns_after_it() {
    let sb = Sandbox::new();
    let argv = counted("wc -l < counter | tr -d ' '");
    let args = run_args(&["--ttl", "1s"], &argv);
    assert_eq!(sb.ok(&args), "1\n");
    assert_eq!(sb.ok(&args), "1\n", "not replayed");
    assert_eq!(sb.runs(), 1);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(sb.ok(&args), "2\n", "not rerun after the TTL");
    assert_eq!(sb.runs(), 2);
}

#[test]
fn different_argv_are_different_entries() {
    let sb = Sandbox::new();
    let script = "echo x >> counter; echo \"$0\"";
    for (arg, runs) in [("a", 1), ("b", 2), ("a", 2), ("a ", 3)] {
        let out = sb.ok(&["run", "--", "sh", "-c", script, arg]);
        assert_eq!(out, format!("{arg}\n"));
        assert_eq!(sb.runs(), runs, "after {arg:?}");
    }
}

#[test]
fn exit_status_stdout_and_stderr_replay_byte_for_byte() {
    let sb = Sandbox::new();
    let argv = counted(r"printf 'out\377\000\n'; printf 'err\376\r\n' >&2; exit 7");
    for _ in 0..2 {
        let out = sb.concurio(&run_args(&[], &argv));
        assert_eq!(out.status.code(), Some(7));
        assert_eq!(out.stdout, b"out\xff\x00\n");
        assert_eq!(out.stderr, b"err\xfe\r\n");
    }
    assert_eq!(sb.runs(), 1);
}

#[test]
fn a_signal_death_is_replayed_as_128_plus_n() {
    let sb = Sandbox::new();
    let argv = counted("kill -9 $$");
    for _ in 0..2 {
        assert_eq!(sb.concurio(&run_args(&[], &argv)).status.code(), Some(137));
    }
    assert_eq!(sb.runs(), 1);
}

#[test]
fn discard_failures_does_not_cache_non_zero_exits() {
    let sb = Sandbox::new();
    let argv = counted("echo failing; exit 3");
    for runs in 1..=2 {
        let out = sb.concurio(&run_args(&["--discard-failures"], &argv));
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"failing\n");
        assert_eq!(sb.runs(), runs);
    }
    let ok = counted("echo fine");
    for _ in 0..2 {
        assert_eq!(sb.ok(&run_args(&["--discard-failures"], &ok)), "fine\n");
    }
    assert_eq!(sb.runs(), 3, "a success is cached");
}

#[test]
fn force_runs_again_and_overwrites() {
    let sb = Sandbox::new();
    let argv = counted("wc -l < counter | tr -d ' '");
    assert_eq!(sb.ok(&run_args(&[], &argv)), "1\n");
    assert_eq!(sb.ok(&run_args(&["--force"], &argv)), "2\n");
    assert_eq!(
        sb.ok(&run_args(&[], &argv)),
        "2\n",
        "the forced result replays"
    );
    assert_eq!(sb.runs(), 2);
}

#[test]
fn key_names_the_entry_instead_of_the_command_line() {
    let sb = Sandbox::new();
    assert_eq!(
        sb.ok(&run_args(&["--key", "mine"], &counted("echo one"))),
        "one\n"
    );
    assert_eq!(
        sb.ok(&run_args(&["--key", "mine"], &counted("echo two"))),
        "one\n"
    );
    assert_eq!(sb.runs(), 1);
    let entry = sb.json(&["cache", "get", "mine", "--json"]);
    assert_eq!(entry["value"]["stdout"], "one\n");
    assert_eq!(entry["value"]["code"], 0);
}

#[test]
fn env_and_cwd_are_part_of_the_key_only_when_asked() {
    let sb = Sandbox::new();
    let argv = counted("echo \"$FOO\"");
    let with_env = run_args(&["--env", "FOO"], &argv);
    let run = |args: &[&str], foo: &str| {
        let out = sb.cmd().args(args).env("FOO", foo).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(run(&with_env, "1"), "1\n");
    assert_eq!(run(&with_env, "1"), "1\n");
    assert_eq!(run(&with_env, "2"), "2\n");
    let plain = run_args(&[], &argv);
    assert_eq!(run(&plain, "3"), "3\n");
    assert_eq!(
        run(&plain, "4"),
        "3\n",
        "FOO is not in the key without --env"
    );
    assert_eq!(sb.runs(), 3);

    let argv = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        "echo x >> ../counter; pwd".to_owned(),
    ];
    for sub in ["a", "b"] {
        std::fs::create_dir(sb.path().join(sub)).unwrap();
        let mut cmd = sb.cmd();
        cmd.args(run_args(&["--cwd"], &argv));
        let out = cmd.current_dir(sb.path().join(sub)).output().unwrap();
        assert!(
            String::from_utf8(out.stdout)
                .unwrap()
                .trim_end()
                .ends_with(sub)
        );
    }
    assert_eq!(sb.runs(), 5, "--cwd: one run per directory");
}

#[test]
fn stdin_is_null_unless_asked() {
    let sb = Sandbox::new();
    let feed = |flags: &[&str]| {
        let argv = vec!["cat".to_owned()];
        let mut cmd = sb.cmd();
        cmd.args(run_args(flags, &argv));
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"hello").unwrap();
        child.wait_with_output().unwrap().stdout
    };
    assert_eq!(feed(&[]), b"");
    assert_eq!(feed(&["--stdin", "--key", "with-stdin"]), b"hello");
}

#[test]
fn output_is_streamed_while_the_command_runs() {
    let sb = Sandbox::new();
    let script = "echo first; while [ ! -f go ]; do sleep 0.05; done; echo second";
    let argv = vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()];
    let mut cmd = sb.cmd();
    cmd.args(run_args(&[], &argv));
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        tx.send(line).unwrap();
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).unwrap();
        rest
    });
    // The command only finishes once we have seen its first line: buffering would hang.
    let first = rx.recv_timeout(Duration::from_secs(30));
    std::fs::write(sb.path().join("go"), b"").unwrap();
    assert_eq!(first.expect("first line not streamed"), "first\n");
    assert_eq!(reader.join().unwrap(), "second\n");
    assert!(child.wait().unwrap().success());
}

#[test]
fn stale_entries_replay_at_once_and_refresh_in_the_background() {
    let sb = Sandbox::new();
    let argv = counted("wc -l < counter | tr -d ' '");
    let args = run_args(&["--ttl", "2s", "--stale", "1m"], &argv);
    assert_eq!(sb.ok(&args), "1\n");
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(sb.ok(&args), "1\n", "the stale result is served");
    // The refresh runs detached; poll until its result replays (bounded).
    let mut seen = String::new();
    for _ in 0..100 {
        seen = sb.ok(&args);
        if seen != "1\n" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        seen, "2\n",
        "the background refresh did not store a new result"
    );
    assert_eq!(
        sb.runs(),
        2,
        "concurrent refreshes ran the command more than once"
    );
}

#[test]
fn a_command_that_cannot_start_is_one_error_line_and_127() {
    let sb = Sandbox::new();
    let out = sb.concurio(&["run", "--", "/no/such/command-xyz"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("concurio: cannot run \"/no/such/command-xyz\""),
        "{stderr}"
    );
    let json = sb.json(&["cache", "stats", "--json"]);
    assert_eq!(json["entries"], 0, "a failure to start is cached");
}

#[test]
fn usage_errors_exit_2() {
    let sb = Sandbox::new();
    let cases: [&[&str]; 6] = [
        &[],
        &["run"],
        &["run", "--ttl", "soon", "--", "true"],
        &["frobnicate"],
        &["cache", "get"],
        &["install", "http://127.0.0.1:9/x"],
    ];
    for args in cases {
        let out = sb.concurio(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
}
