//! `concurio run` end to end: real processes, each test in its own cache base directory.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use common::{Sandbox, Tmpfs, counted, run_args};

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
    let script = format!("echo first; {AWAIT_GO} echo second");
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

/// Reads `from` to its end on a thread, sending each "waiting for" line.
fn notices(
    from: impl BufRead + Send + 'static,
) -> (mpsc::Receiver<String>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in from.lines().map_while(Result::ok) {
            if line.contains("waiting for") {
                let _ = tx.send(line);
            }
        }
    });
    (rx, reader)
}

#[test]
fn a_waiting_caller_on_a_terminal_says_whom_it_waits_for_without_v() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: `script` (util-linux), which gives a command a terminal, is missing");
        return;
    }
    let sb = Sandbox::new();
    let script = format!("echo x >> counter; touch started; {AWAIT_GO} echo done");
    let argv = vec!["sh".to_owned(), "-c".to_owned(), script.clone()];
    let holder = sb
        .cmd()
        .args(run_args(&[], &argv))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(30, || sb.path().join("started").exists().then_some(())).is_some());
    // The waiter runs on a pseudo-terminal (stdout and stderr), without -v.
    std::fs::write(
        sb.path().join("waiter.sh"),
        "exec \"$CONCURIO\" run -- sh -c \"$SCRIPT\"\n",
    )
    .unwrap();
    let mut waiter = std::process::Command::new("script");
    common::clean_env(&mut waiter);
    let mut waiter = waiter
        .args(["-qec", "sh waiter.sh", "/dev/null"])
        .env("DBX_CONCURIO_CACHE_DIR", sb.path())
        .env("CONCURIO", env!("CARGO_BIN_EXE_concurio"))
        .env("SCRIPT", &script)
        .current_dir(sb.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let terminal = BufReader::new(waiter.stdout.take().unwrap());
    let (notices, reader) = notices(terminal);
    let notice = notices.recv_timeout(Duration::from_secs(30));
    std::fs::write(sb.path().join("go"), "").unwrap();
    let notice = notice.expect("no notice on the terminal");
    let expected = format!("concurio: waiting for pid {}: sh -c", holder.id());
    assert!(notice.trim_end().starts_with(&expected), "{notice}");
    assert!(holder.wait_with_output().unwrap().status.success());
    assert!(waiter.wait().unwrap().success());
    reader.join().unwrap();
    assert_eq!(sb.runs(), 1);
}

#[test]
fn an_error_into_a_closed_pipe_keeps_its_exit_status() {
    let sb = Sandbox::new();
    // stderr is a pipe whose reader is gone before concurio writes its error line.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = sb
        .cmd()
        .args(["run", "--ttl", "10m", "--stale", "1h", "--", "true"])
        .stderr(writer)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "panicked instead: {out:?}");
}

#[test]
fn usage_errors_exit_2() {
    let sb = Sandbox::new();
    let cases: [&[&str]; 9] = [
        &[],
        &["run"],
        &["run", "--key", "k", "--cwd", "--", "true"], // --key is the whole key
        &["run", "--ttl", "0s", "--", "true"],
        &["run", "--warm", "--force", "--", "true"],
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

/// Waits for a file `go` in the working directory, for 60 s at most (a test that failed
/// early must not leave a command behind forever).
const AWAIT_GO: &str =
    "i=0; while [ ! -f go ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done;";

/// Polls `f` every 100 ms until it returns `Some`, for at most `secs` seconds.
fn eventually<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    for _ in 0..secs * 10 {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn stale_is_bkts_stale_replay_at_once_then_refresh_in_the_background() {
    let sb = Sandbox::new();
    let argv = counted("wc -l < counter | tr -d ' '");
    let args = run_args(&["--ttl", "10m", "--stale", "1s"], &argv);
    assert_eq!(sb.ok(&args), "1\n");
    assert_eq!(
        sb.ok(&args),
        "1\n",
        "younger than --stale: replayed, no refresh"
    );
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        sb.ok(&args),
        "1\n",
        "older than --stale: the old result at once"
    );
    let refreshed = eventually(10, || (sb.ok(&args) == "2\n").then_some(()));
    assert!(refreshed.is_some(), "no background refresh within the TTL");
    assert_eq!(sb.runs(), 2, "the refresh ran more than once");
}

#[test]
fn stale_at_or_past_the_ttl_is_a_usage_error_that_gives_the_new_spelling() {
    let sb = Sandbox::new();
    let out = sb.concurio(&["run", "--ttl", "10m", "--stale", "1h", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--ttl 1h10m --stale 10m"), "{stderr}");
    assert_eq!(sb.runs(), 0);
}

#[test]
fn ttl_stale_and_scope_have_concurio_environment_defaults() {
    let sb = Sandbox::new();
    let argv = counted("wc -l < counter | tr -d ' '");
    let run = |env: &[(&str, &str)]| {
        let mut cmd = sb.cmd();
        cmd.args(run_args(&[], &argv)).envs(env.iter().copied());
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(run(&[("CONCURIO_TTL", "1s")]), "1\n");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        run(&[("CONCURIO_TTL", "1s")]),
        "2\n",
        "CONCURIO_TTL=1s ignored"
    );
    assert_eq!(
        run(&[("CONCURIO_SCOPE", "a")]),
        "3\n",
        "a scope is its own entry"
    );
    assert_eq!(run(&[("CONCURIO_SCOPE", "a")]), "3\n");
    assert_eq!(sb.ok(&run_args(&["--scope", "a"], &argv)), "3\n");
    // CONCURIO_STALE where it is shorter than the TTL; ignored (not an error) where not.
    let stale = |value: &str, ttl: &str| {
        let mut cmd = sb.cmd();
        cmd.args(run_args(&["--ttl", ttl, "--scope", "stale"], &argv))
            .env("CONCURIO_STALE", value);
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(stale("2m", "1m"), "4\n");
    assert_eq!(stale("2m", "1m"), "4\n");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        stale("1s", "1m"),
        "4\n",
        "older than CONCURIO_STALE: replayed at once"
    );
    let refreshed = eventually(10, || (stale("1s", "1m") == "5\n").then_some(()));
    assert!(refreshed.is_some(), "CONCURIO_STALE=1s did not refresh");
}

#[test]
fn modtime_files_are_part_of_the_key() {
    let sb = Sandbox::new();
    let argv = counted("wc -l < counter | tr -d ' '");
    let args = run_args(&["--modtime", "watched"], &argv);
    assert_eq!(sb.ok(&args), "1\n", "a missing file is a state too");
    assert_eq!(sb.ok(&args), "1\n");
    let watched = sb.path().join("watched");
    std::fs::write(&watched, "x").unwrap();
    assert_eq!(sb.ok(&args), "2\n", "created");
    assert_eq!(sb.ok(&args), "2\n");
    let earlier = std::time::SystemTime::now() - Duration::from_secs(10);
    let file = std::fs::File::options().write(true).open(&watched).unwrap();
    file.set_modified(earlier).unwrap();
    assert_eq!(sb.ok(&args), "3\n", "modified");
    assert_eq!(
        sb.ok(&run_args(&[], &argv)),
        "4\n",
        "without --modtime: another entry"
    );
}

#[test]
fn warm_refreshes_in_the_background_and_returns_at_once() {
    let sb = Sandbox::new();
    let argv = counted(&format!("{AWAIT_GO} echo warmed"));
    let out = sb.concurio(&run_args(&["--warm"], &argv));
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    // It returned while the command still waits for `go`.
    assert!(eventually(30, || (sb.runs() == 1).then_some(())).is_some());
    std::fs::write(sb.path().join("go"), "").unwrap();
    let stored = eventually(30, || {
        let list = sb.json(&["cache", "list", "--json"]);
        (list.as_array().unwrap().len() == 1).then_some(())
    });
    assert!(stored.is_some(), "the warmed result was not stored");
    std::fs::remove_file(sb.path().join("go")).unwrap(); // would hang if it ran again
    assert_eq!(sb.ok(&run_args(&[], &argv)), "warmed\n");
    assert_eq!(sb.runs(), 1);
}

#[test]
fn the_callers_ttl_decides_whether_a_result_is_fresh() {
    let sb = Sandbox::new();
    let argv = counted("wc -l < counter | tr -d ' '");
    assert_eq!(sb.ok(&run_args(&["--ttl", "1s"], &argv)), "1\n");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        sb.ok(&run_args(&["--ttl", "30s"], &argv)),
        "1\n",
        "1.5 s old is fresh for a 30 s TTL"
    );
    assert_eq!(
        sb.ok(&run_args(&["--ttl", "1s"], &argv)),
        "2\n",
        "but not for 1 s"
    );
    assert_eq!(sb.runs(), 2);
}

#[test]
fn discard_failures_never_replays_a_failure_stored_without_it() {
    // bkt's discard_failure_cached_separately (the bug bkt fixed in 0.5.4).
    let sb = Sandbox::new();
    let argv = counted("exit \"$EXIT_WITH\"");
    let run = |flags: &[&str], code: &str| {
        let mut cmd = sb.cmd();
        cmd.args(run_args(flags, &argv)).env("EXIT_WITH", code);
        cmd.output().unwrap().status.code()
    };
    assert_eq!(run(&[], "14"), Some(14));
    assert_eq!(
        run(&["--discard-failures"], "0"),
        Some(0),
        "replayed the failure"
    );
    assert_eq!(sb.runs(), 2);
    // The success it stored serves every caller.
    assert_eq!(run(&[], "14"), Some(0));
    assert_eq!(sb.runs(), 2);
}

#[test]
fn a_result_that_cannot_be_stored_exits_with_the_commands_status_and_warns() {
    let sb = Sandbox::new();
    let Some(fs) = Tmpfs::mount(&sb.path().join("small"), "2m") else {
        println!("skipped: cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)");
        return;
    };
    // 3 MiB of output cannot be stored in a 2 MiB file system.
    let argv = counted("head -c 3145728 /dev/zero; exit 5");
    for flags in [&[][..], &["--force"][..]] {
        let out = sb
            .cmd()
            .env("DBX_CONCURIO_CACHE_DIR", &fs.0)
            .args(run_args(flags, &argv))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{flags:?}: {stderr}");
        assert_eq!(out.stdout.len(), 3 << 20, "the output was streamed");
        assert!(
            stderr.contains("could not be stored"),
            "{flags:?}: {stderr}"
        );
    }
    assert_eq!(sb.runs(), 2);
}

#[test]
fn a_waiting_caller_says_whom_it_waits_for() {
    let sb = Sandbox::new();
    let argv = counted(&format!("touch started; {AWAIT_GO} echo done"));
    let args = run_args(&[], &argv);
    let holder = sb.cmd().args(&args).stdout(Stdio::piped()).spawn().unwrap();
    assert!(eventually(30, || sb.path().join("started").exists().then_some(())).is_some());
    let mut verbose_args = vec!["-v"];
    verbose_args.extend(&args);
    let mut waiter = sb.spawn_piped(&verbose_args);
    let quiet_waiter = sb.spawn_piped(&args);
    let stderr = BufReader::new(waiter.stderr.take().unwrap());
    let (notices, reader) = notices(stderr);
    let notice = notices.recv_timeout(Duration::from_secs(30));
    std::fs::write(sb.path().join("go"), "").unwrap();
    let expected = format!(
        "concurio: waiting for pid {}: sh -c 'echo x >> counter;",
        holder.id()
    );
    let notice = notice.expect("no notice while waiting");
    assert!(notice.starts_with(&expected), "{notice}");
    let children = [
        ("holder", holder),
        ("waiter", waiter),
        ("quiet", quiet_waiter),
    ];
    for (name, child) in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{name}: {out:?}");
        assert_eq!(out.stdout, b"done\n", "{name}");
        // The waiter's stderr went to the reader; the others are not on a terminal, no -v.
        assert!(out.stderr.is_empty(), "{name}: {out:?}");
    }
    reader.join().unwrap();
    assert_eq!(sb.runs(), 1);
}

#[test]
fn unrelated_commands_never_wait_for_each_other() {
    // `--key slow` and `--key fast-213` shared one of the 256 lock stripes of earlier
    // versions: the fast command waited for the slow one to finish.
    let sb = Sandbox::new();
    let script = format!("touch started; {AWAIT_GO} echo slow");
    let mut slow = sb
        .cmd()
        .args([
            "run", "--key", "slow", "--ttl", "1h", "--", "sh", "-c", &script,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(30, || sb.path().join("started").exists().then_some(())).is_some());
    let fast = sb.ok(&[
        "run", "--key", "fast-213", "--ttl", "1h", "--", "echo", "fast",
    ]);
    assert_eq!(fast, "fast\n");
    // The slow command was still running when the fast one finished: nobody waited.
    assert!(
        slow.try_wait().unwrap().is_none(),
        "the slow command ended first"
    );
    std::fs::write(sb.path().join("go"), "").unwrap();
    let out = slow.wait_with_output().unwrap();
    assert_eq!(out.stdout, b"slow\n");
}

/// The log level: warnings by default, `CONCURIO_LOG` (an env-filter directive) when neither
/// -v nor -q is given, and -v/-q over it. The "run" debug line names the entry's key.
#[test]
fn concurio_log_and_verbosity_choose_what_is_logged() {
    let sb = Sandbox::new();
    let stderr_of = |log: Option<&str>, flags: &[&str]| {
        let mut cmd = sb.cmd();
        cmd.args(run_args(flags, &["true".to_owned()]));
        if let Some(log) = log {
            cmd.env("CONCURIO_LOG", log);
        }
        let out = cmd.output().expect("run concurio");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let debug_line = |stderr: &str| stderr.contains("DEBUG") && stderr.contains("key=");
    // (CONCURIO_LOG, flags, whether the debug line is logged)
    let cases: [(Option<&str>, &[&str], bool); 6] = [
        (None, &[], false),
        (Some("debug"), &[], true),
        (Some("info"), &[], false),
        (None, &["-vv"], true),
        (Some("debug"), &["-q"], false),
        (Some("debug"), &["-v"], false),
    ];
    for (log, flags, logged) in cases {
        let stderr = stderr_of(log, flags);
        assert_eq!(debug_line(&stderr), logged, "{log:?} {flags:?}: {stderr}");
    }
    let invalid = stderr_of(Some("[[nonsense"), &[]);
    assert!(!debug_line(&invalid), "an invalid CONCURIO_LOG: {invalid}");
}

/// A run leaves its cache open for the kernel to close at exit (cheaper than LMDB's close):
/// the library's exit hook must still flush what it stored, so `.state` says clean once
/// the process is gone, and the next process replays the result.
#[test]
fn a_run_that_stores_leaves_the_cache_flushed_at_exit() {
    let sb = Sandbox::new();
    let argv = counted("echo stored");
    let args = run_args(&["--ttl", "1h"], &argv);
    assert_eq!(sb.ok(&args), "stored\n");
    let state =
        std::fs::read_to_string(sb.path().join("dbx_concurio/run/.state")).expect("read .state");
    assert!(state.trim_end().ends_with(" clean"), "state: {state:?}");
    assert_eq!(sb.ok(&args), "stored\n");
    assert_eq!(sb.runs(), 1);
}
