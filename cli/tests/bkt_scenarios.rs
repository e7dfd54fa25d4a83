//! bkt's own CLI scenarios (github.com/dimo414/bkt, tests/cli.rs, 0.8.x), played against
//! `concurio run`: users move between the two tools. Each test names the bkt test it comes
//! from. Differences, on purpose:
//! - bkt ages its cache by rewriting file modification times (`make_dir_stale`), which
//!   depends on bkt's file layout; these tests wait for real time with 1 s TTLs instead.
//! - `concurrent_call_race`: bkt runs the command in both callers; concurio promises once.
//! - Not ported: `help` (bkt's usage line), `debug_output` (bkt's debug build),
//!   `cache_dirs_multi_user` (sudo; see `dirs.rs`: a second user on a shared temp dir).
//! - bkt's `--cache-dir` is `--dir`, `BKT_TTL`/`BKT_SCOPE`/`BKT_CACHE_DIR` are
//!   `CONCURIO_TTL`/`CONCURIO_SCOPE`/`CONCURIO_CACHE_DIR`.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::clean_env;

// bkt's bash scripts, as they are.
const COUNT_INVOCATIONS: &str = r#"file=${1:?} lines=0; \
                                   printf '%s' '.' >> "$file"; \
                                   read < "$file"; \
                                   printf '%s' "${#REPLY}";"#;
const PRINT_ARGS: &str = r#"args=("$@"); declare -p args;"#;
const EXIT_WITH: &str = r#"exit "${1:?}";"#;
const EXIT_WITH_ENV: &str = r#"exit "${EXIT_WITH:?}";"#;
const AWAIT_AND_TOUCH: &str = r#"echo awaiting; \
                                 until [[ -e "${1:?}" ]]; do sleep .1; done; \
                                 echo > "${2:?}";"#;

/// bkt's `TestDir`: a temp dir; `bkt()` is `concurio run` with its cache in `cache/` and a
/// 5 s default TTL (bkt's tests set `BKT_TTL=5s`).
struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Dir(tempfile::tempdir().unwrap())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    fn file(&self) -> String {
        self.path("file").to_str().unwrap().to_owned()
    }

    /// `concurio run FLAGS -- ARGV`.
    fn bkt(&self, flags: &[&str], argv: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_concurio"));
        clean_env(&mut cmd);
        cmd.env("CONCURIO_TTL", "5s")
            .env("DBX_CONCURIO_CACHE_DIR", self.path("cache"))
            .current_dir(self.0.path())
            .stdin(Stdio::null())
            .arg("run")
            .args(flags)
            .arg("--")
            .args(argv);
        cmd
    }
}

impl Dir {
    /// Waits (5 s at most) until the cache holds an entry.
    fn wait_until_stored(&self) {
        for _ in 0..50 {
            let mut list = Command::new(env!("CARGO_BIN_EXE_concurio"));
            clean_env(&mut list);
            list.args(["cache", "list", "--json"])
                .env("DBX_CONCURIO_CACHE_DIR", self.path("cache"));
            let out = list.output().unwrap();
            let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if entries.as_array().is_some_and(|a| !a.is_empty()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("nothing was stored");
    }
}

#[derive(Debug, PartialEq, Eq)]
struct CmdResult {
    out: String,
    err: String,
    status: Option<i32>,
}

impl From<Output> for CmdResult {
    fn from(output: Output) -> Self {
        CmdResult {
            out: String::from_utf8(output.stdout).unwrap(),
            err: String::from_utf8(output.stderr).unwrap(),
            status: output.status.code(),
        }
    }
}

fn run(cmd: &mut Command) -> CmdResult {
    cmd.output().unwrap().into()
}

/// bkt's `succeed`: exit 0, nothing on stderr; returns stdout.
fn succeed(cmd: &mut Command) -> String {
    let result = run(cmd);
    assert_eq!(result.err, "");
    assert_eq!(result.status, Some(0), "{result:?}");
    result.out
}

/// bkt's `wait_for_contents_to_change`, for ~5 s.
fn wait_for_contents_to_change(file: &Path, initial: &str) {
    for _ in 1..50 {
        if std::fs::read_to_string(file).unwrap() != initial {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("Contents of {} did not change", file.display());
}

fn count(file: &str) -> [&str; 5] {
    ["bash", "-c", COUNT_INVOCATIONS, "arg0", file]
}

fn past_a_1s_ttl() {
    std::thread::sleep(Duration::from_millis(1200));
}

#[test]
fn cached() {
    let dir = Dir::new();
    let file = dir.file();
    let first = run(&mut dir.bkt(&[], &count(&file)));
    for _ in 1..3 {
        assert_eq!(first, run(&mut dir.bkt(&[], &count(&file))));
    }
}

#[test]
fn cache_expires() {
    let dir = Dir::new();
    let file = dir.file();
    assert_eq!(succeed(&mut dir.bkt(&["--ttl=1s"], &count(&file))), "1");
    assert_eq!(succeed(&mut dir.bkt(&["--ttl=1s"], &count(&file))), "1");
    past_a_1s_ttl();
    assert_eq!(succeed(&mut dir.bkt(&["--ttl=1s"], &count(&file))), "2");
    // Respects CONCURIO_TTL (bkt: BKT_TTL).
    past_a_1s_ttl();
    let mut cmd = dir.bkt(&[], &count(&file));
    assert_eq!(succeed(cmd.env("CONCURIO_TTL", "1s")), "3");
}

#[test]
fn cache_expires_separately() {
    let dir = Dir::new();
    let (file1, file2) = (dir.path("file1"), dir.path("file2"));
    let args1 = count(file1.to_str().unwrap());
    let args2 = count(file2.to_str().unwrap());
    for _ in 0..2 {
        assert_eq!(succeed(&mut dir.bkt(&["--ttl=1s"], &args1)), "1");
        assert_eq!(succeed(&mut dir.bkt(&["--ttl=20s"], &args2)), "1");
    }
    past_a_1s_ttl();
    assert_eq!(succeed(&mut dir.bkt(&["--ttl=1s"], &args1)), "2");
    assert_eq!(succeed(&mut dir.bkt(&["--ttl=20s"], &args2)), "1");
}

#[test]
fn cache_hits_with_different_settings() {
    let dir = Dir::new();
    let file = dir.file();
    assert_eq!(succeed(&mut dir.bkt(&["--ttl=1s"], &count(&file))), "1");
    assert_eq!(succeed(&mut dir.bkt(&["--ttl=20s"], &count(&file))), "1");
    // The provided TTL is respected, though it was cached with a smaller TTL.
    past_a_1s_ttl();
    assert_eq!(succeed(&mut dir.bkt(&["--ttl=20s"], &count(&file))), "1");
    assert_eq!(succeed(&mut dir.bkt(&["--ttl=1s"], &count(&file))), "2");
}

#[test]
fn cache_refreshes_in_background() {
    let dir = Dir::new();
    let file = dir.file();
    let flags = ["--stale=1s", "--ttl=20s"];
    assert_eq!(succeed(&mut dir.bkt(&flags, &count(&file))), "1");
    past_a_1s_ttl();
    assert_eq!(succeed(&mut dir.bkt(&flags, &count(&file))), "1");
    wait_for_contents_to_change(Path::new(&file), ".");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "..");
    // The refresh stores its result just after the command ends.
    let mut seen = String::new();
    for _ in 0..50 {
        seen = succeed(&mut dir.bkt(&flags, &count(&file)));
        if seen == "2" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seen, "2");
}

#[test]
fn discard_failures() {
    let dir = Dir::new();
    let file = dir.file();
    let script = format!("{COUNT_INVOCATIONS} false;");
    let argv = ["bash", "-c", &script, "arg0", &file];
    for expected in ["1", "2"] {
        let result = run(&mut dir.bkt(&["--discard-failures"], &argv));
        assert_eq!(result.out, expected, "not cached");
        assert_eq!(result.status, Some(1));
    }
}

#[test]
fn discard_failure_cached_separately() {
    let dir = Dir::new();
    let argv = ["bash", "-c", EXIT_WITH_ENV, "arg0"];
    // In bkt 0.5.4 and earlier result2.status was 14.
    let result1 = run(dir.bkt(&[], &argv).env("EXIT_WITH", "14"));
    assert_eq!(result1.status, Some(14));
    let result2 = run(dir
        .bkt(&["--discard-failures"], &argv)
        .env("EXIT_WITH", "0"));
    assert_eq!(result2.status, Some(0));
}

#[test]
fn discard_failures_in_background() {
    let dir = Dir::new();
    let file = dir.file();
    let script = format!("{COUNT_INVOCATIONS} ! \"${{FAIL:-false}}\";");
    let argv = ["bash", "-c", &script, "arg0", &file];
    let flags = ["--ttl=20s", "--discard-failures"];
    let stale_flags = ["--stale=1s", "--ttl=20s", "--discard-failures"];
    assert_eq!(succeed(&mut dir.bkt(&flags, &argv)), "1");
    // The command fails from now on: the stale refresh must not replace the success.
    past_a_1s_ttl();
    assert_eq!(
        succeed(dir.bkt(&stale_flags, &argv).env("FAIL", "true")),
        "1"
    );
    wait_for_contents_to_change(Path::new(&file), ".");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "..");
    std::thread::sleep(Duration::from_millis(300)); // let the refresh finish
    assert_eq!(succeed(dir.bkt(&flags, &argv).env("FAIL", "true")), "1");
}

#[test]
fn respects_cache_dir() {
    let dir = Dir::new();
    let file = dir.file();
    let at = |name: &str| format!("--dir={}", dir.path(name).display());
    let first = succeed(&mut dir.bkt(&[&at("cache")], &count(&file)));
    assert_eq!(first, "1");
    assert_eq!(first, succeed(&mut dir.bkt(&[&at("cache")], &count(&file))));
    assert_eq!(
        succeed(&mut dir.bkt(&[&at("new-cache")], &count(&file))),
        "2"
    );
    let mut env_cache = dir.bkt(&[], &count(&file));
    env_cache.env("CONCURIO_CACHE_DIR", dir.path("env-cache"));
    assert_eq!(succeed(&mut env_cache), "3");
}

#[test]
fn respects_relative_cache() {
    // https://github.com/dimo414/bkt/issues/9
    let dir = Dir::new();
    let cwd = dir.path("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let file = dir.file();
    let first = succeed(dir.bkt(&["--dir=cache"], &count(&file)).current_dir(&cwd));
    assert_eq!(first, "1");
    let second = succeed(dir.bkt(&["--dir=cache"], &count(&file)).current_dir(&cwd));
    assert_eq!(first, second);
}

#[test]
fn respects_cache_scope() {
    let dir = Dir::new();
    let file = dir.file();
    let first = succeed(&mut dir.bkt(&[], &count(&file)));
    assert_eq!(first, "1");
    assert_eq!(first, succeed(&mut dir.bkt(&[], &count(&file))));
    let scoped = succeed(&mut dir.bkt(&["--scope=foo"], &count(&file)));
    assert_eq!(scoped, "2");
    assert_eq!(
        scoped,
        succeed(&mut dir.bkt(&["--scope=foo"], &count(&file)))
    );
    assert_eq!(
        scoped,
        succeed(dir.bkt(&[], &count(&file)).env("CONCURIO_SCOPE", "foo"))
    );
}

#[test]
fn respects_args() {
    let dir = Dir::new();
    let file = dir.file();
    let argv = count(&file);
    let first = succeed(&mut dir.bkt(&[], &argv));
    assert_eq!(first, "1");
    assert_eq!(first, succeed(&mut dir.bkt(&[], &argv)));
    assert_eq!(succeed(dir.bkt(&[], &argv).arg("A B")), "2");
    assert_eq!(succeed(dir.bkt(&[], &argv).args(["A", "B"])), "3");
}

#[test]
fn respects_cwd() {
    let dir = Dir::new();
    for sub in ["dir1", "dir2"] {
        std::fs::create_dir(dir.path(sub)).unwrap();
    }
    let argv = ["bash", "-c", "pwd"];
    let in_dir =
        |flags: &[&str], sub: &str| succeed(dir.bkt(flags, &argv).current_dir(dir.path(sub)));
    assert!(in_dir(&[], "dir1").trim().ends_with("/dir1"));
    assert!(in_dir(&[], "dir2").trim().ends_with("/dir1")); // cached too eagerly, as in bkt
    assert!(in_dir(&["--cwd"], "dir1").trim().ends_with("/dir1"));
    assert!(in_dir(&["--cwd"], "dir2").trim().ends_with("/dir2"));
}

#[test]
fn respects_env() {
    let dir = Dir::new();
    let argv = [
        "bash",
        "-c",
        r#"printf 'foo:%s bar:%s baz:%s' "$FOO" "$BAR" "$BAZ""#,
    ];
    let env_flags = ["--env=FOO", "--env=BAR"];
    let with = |flags: &[&str], foo: &str, bar: &str, baz: &str| {
        let mut cmd = dir.bkt(flags, &argv);
        succeed(cmd.env("FOO", foo).env("BAR", bar).env("BAZ", baz))
    };
    let without_env = with(&[], "1", "1", "1");
    assert_eq!(without_env, succeed(&mut dir.bkt(&[], &argv)));
    // Even with --env, if the variables are absent the earlier call's result is used.
    assert_eq!(without_env, succeed(&mut dir.bkt(&env_flags, &argv)));
    assert_eq!(with(&env_flags, "2", "2", "2"), "foo:2 bar:2 baz:2");
    assert_eq!(with(&env_flags, "3", "2", "3"), "foo:3 bar:2 baz:3");
    assert_eq!(with(&env_flags, "4", "4", "4"), "foo:4 bar:4 baz:4");
    assert_eq!(with(&env_flags, "2", "2", "5"), "foo:2 bar:2 baz:2"); // BAZ is not in the key
}

#[test]
fn respects_modtime() {
    let dir = Dir::new();
    let file = dir.file();
    let watch = dir.path("watch");
    let flags = ["--modtime", watch.to_str().unwrap()];
    let no_file = succeed(&mut dir.bkt(&flags, &count(&file)));
    assert_eq!(no_file, "1");
    assert_eq!(no_file, succeed(&mut dir.bkt(&flags, &count(&file))));
    std::fs::File::create(&watch).unwrap();
    let new_file = succeed(&mut dir.bkt(&flags, &count(&file)));
    assert_eq!(new_file, "2");
    assert_eq!(new_file, succeed(&mut dir.bkt(&flags, &count(&file))));
    let earlier = std::time::SystemTime::now() - Duration::from_secs(10);
    let handle = std::fs::File::options().write(true).open(&watch).unwrap();
    handle.set_modified(earlier).unwrap();
    let old_file = succeed(&mut dir.bkt(&flags, &count(&file)));
    assert_eq!(old_file, "3");
    assert_eq!(old_file, succeed(&mut dir.bkt(&flags, &count(&file))));
}

#[test]
fn streaming() {
    let dir = Dir::new();
    let file = dir.file();
    let script = r#"echo BEFORE; for (( i=0; i<50; i++ )); do if [[ -e "$1" ]]; then echo AFTER; exit 0; fi; sleep .1; done; exit 10"#;
    let argv = ["bash", "-c", script, "arg0", &file];
    let mut proc = dir
        .bkt(&[], &argv)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0; 64];
    let mut stdout = proc.stdout.take().unwrap();
    let len = stdout.read(&mut buf).unwrap();
    assert_eq!(b"BEFORE\n", &buf[0..len]);
    assert_eq!(proc.try_wait().unwrap(), None); // still running
    std::fs::File::create(&file).unwrap();
    let len = stdout.read(&mut buf).unwrap();
    assert_eq!(b"AFTER\n", &buf[0..len]);
    let mut err = String::new();
    proc.stderr
        .as_mut()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(err, "");
    assert_eq!(proc.wait().unwrap().code(), Some(0));
    // Cached: replays without blocking.
    std::fs::remove_file(&file).unwrap();
    assert_eq!(succeed(&mut dir.bkt(&[], &argv)), "BEFORE\nAFTER\n");
}

#[test]
fn large_output() {
    let dir = Dir::new();
    let bytes = 1024 * 100; // larger than a pipe buffer
    let script = format!(r#"printf '.%.0s' {{1..{bytes}}}; printf '.%.0s' {{1..{bytes}}} >&2"#);
    let result = run(&mut dir.bkt(&[], &["bash", "-c", &script, "arg0"]));
    assert_eq!(result.out.len(), bytes);
    assert_eq!(result.err.len(), bytes);
    assert_eq!(result.status, Some(0));
}

#[test]
fn truncated_output() {
    // https://github.com/dimo414/bkt/issues/44
    let dir = Dir::new();
    let bytes = 1024 * 100;
    let script = format!(r#"printf '.%.0s' {{1..{bytes}}}"#);
    let mut child = dir
        .bkt(&[], &["bash", "-c", &script, "arg0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0; 10];
    child.stdout.as_mut().unwrap().read_exact(&mut buf).unwrap();
    assert_eq!(buf, [b'.'; 10]);
    drop(child.stdout.take().unwrap()); // close stdout without reading further
    let result: CmdResult = child.wait_with_output().unwrap().into();
    assert_eq!(result.out, "");
    assert_eq!(result.err, "");
    assert_eq!(result.status, Some(0));
}

#[test]
fn no_debug_output() {
    let dir = Dir::new();
    let quiet = CmdResult {
        out: "".into(),
        err: "".into(),
        status: Some(0),
    };
    assert_eq!(run(&mut dir.bkt(&[], &["bash", "-c", "true"])), quiet); // not cached
    assert_eq!(run(&mut dir.bkt(&[], &["bash", "-c", "true"])), quiet); // cached
}

#[test]
fn output_preserved() {
    let dir = Dir::new();
    let same_output = |args: &[&str]| {
        let mut argv = vec!["bash", "-c", PRINT_ARGS, "arg0"];
        argv.extend_from_slice(args);
        assert_eq!(
            succeed(&mut dir.bkt(&[], &argv)),
            succeed(&mut dir.bkt(&[], &argv))
        );
    };
    same_output(&[]);
    same_output(&[""]);
    same_output(&["a", "b"]);
    same_output(&["a b"]);
    same_output(&["a b", "c"]);
}

#[test]
fn sensitive_output() {
    let dir = Dir::new();
    let argv = ["bash", "-c", r"printf 'foo\0bar'; printf 'bar\0baz\n' >&2"];
    let output = run(&mut dir.bkt(&[], &argv));
    let expected = CmdResult {
        out: "foo\u{0}bar".into(),
        err: "bar\u{0}baz\n".into(),
        status: Some(0),
    };
    assert_eq!(output, expected);
    assert_eq!(run(&mut dir.bkt(&[], &argv)), output);
}

#[test]
fn exit_code_preserved() {
    let dir = Dir::new();
    let argv = ["bash", "-c", EXIT_WITH, "arg0", "14"];
    assert_eq!(run(&mut dir.bkt(&[], &argv)).status, Some(14));
    assert_eq!(run(&mut dir.bkt(&[], &argv)).status, Some(14));
}

#[test]
fn warm() {
    let dir = Dir::new();
    let (await_file, touch_file) = (dir.path("await"), dir.path("touch"));
    let argv = [
        "bash",
        "-c",
        AWAIT_AND_TOUCH,
        "arg0",
        await_file.to_str().unwrap(),
        touch_file.to_str().unwrap(),
    ];
    assert_eq!(succeed(&mut dir.bkt(&["--warm"], &argv)), "");
    assert!(!touch_file.exists());
    std::fs::File::create(&await_file).unwrap(); // let the background command end
    for _ in 0..10 {
        if touch_file.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(touch_file.exists());
    // As bkt's comment says, the result is stored just after the command ends.
    dir.wait_until_stored();
    std::fs::remove_file(&await_file).unwrap(); // it would not end if it ran again
    assert_eq!(succeed(&mut dir.bkt(&[], &argv)), "awaiting\n");
}

#[test]
fn force() {
    let dir = Dir::new();
    let file = dir.file();
    assert_eq!(succeed(&mut dir.bkt(&[], &count(&file))), "1");
    assert_eq!(succeed(&mut dir.bkt(&[], &count(&file))), "1");
    assert_eq!(succeed(&mut dir.bkt(&["--force"], &count(&file))), "2");
    assert_eq!(succeed(&mut dir.bkt(&[], &count(&file))), "2");
}

/// Not a bkt test: bkt's long option names (its visible aliases) work, so a command line
/// moves between the tools unchanged.
#[test]
fn bkt_option_names() {
    let dir = Dir::new();
    let file = dir.file();
    std::fs::write(dir.path("watch"), "").unwrap();
    let flags = [
        "--time-to-live=1m",
        "--use-working-dir",
        "--use-environment=HOME",
        "--use-file-modtime=watch",
        "--cache-dir=bkt-cache",
    ];
    assert_eq!(succeed(&mut dir.bkt(&flags, &count(&file))), "1");
    assert_eq!(succeed(&mut dir.bkt(&flags, &count(&file))), "1");
    assert!(dir.path("bkt-cache").is_dir());
}

#[test]
fn concurrent_call_race() {
    let dir = Dir::new();
    let file = dir.file();
    let slow = format!(r#"sleep "0.5$RANDOM"; {COUNT_INVOCATIONS}"#);
    let argv = ["bash", "-c", &slow, "arg0", &file];
    let spawn = || {
        dir.bkt(&[], &argv)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (proc1, proc2) = (spawn(), spawn());
    let result1: CmdResult = proc1.wait_with_output().unwrap().into();
    let result2: CmdResult = proc2.wait_with_output().unwrap().into();
    for result in [&result1, &result2] {
        assert_eq!(result.err, "");
        assert_eq!(result.status, Some(0));
    }
    // bkt: "..", one caller sees "2". concurio runs the command once for both.
    assert_eq!(std::fs::read_to_string(&file).unwrap(), ".");
    assert_eq!((result1.out.as_str(), result2.out.as_str()), ("1", "1"));
}
