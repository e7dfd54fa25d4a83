//! A hand parser for the common `concurio run` command lines.
//!
//! A cache hit of `concurio run` is a whole process (issue 11, point 6: within 1.2x of
//! bkt's). Even restricted to `run`, clap builds every argument, clones its matches and
//! checks its conflict graph before it hands the values over: ~0.1-0.2 ms of a ~1.5 ms hit,
//! most of it first-touch page faults on clap's code. This parser reads the forms people
//! and scripts write (`--opt VALUE`, `--opt=VALUE`, flags, `-v`/`-q`, then `--` and the
//! command) straight into [`Cli`], and gives up (`None`) on anything else: `--help`, a
//! usage error, a value that looks like an option, a repeated single option, a conflict,
//! an unparsable value, an empty or non-UTF-8 environment default. clap then parses the
//! line as before, so what users see for those is clap's output, unchanged.
//!
//! Agreement with clap is a test, not a hope: `tests` parses thousands of generated lines
//! (and environment defaults, in a child process) both ways and requires the same result
//! wherever this parser accepts a line.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{CacheLocation, Cli, Command, RunArgs, Verbosity};
use crate::{duration, size};

/// `concurio run ...` (`args[0]` is the program), or `None` for clap to parse. `env` reads
/// an environment variable (the options' defaults).
pub fn parse(args: &[OsString], env: impl Fn(&str) -> Option<OsString>) -> Option<Cli> {
    if args.get(1)? != "run" {
        return None;
    }
    let mut line = Line::default();
    let mut rest = args[2..].iter();
    loop {
        let token = rest.next()?.to_str()?; // no `--`: clap says what is missing
        if token == "--" {
            break;
        }
        line.take(token, &mut rest)?;
    }
    let command: Vec<OsString> = rest.cloned().collect();
    if command.is_empty() {
        return None;
    }
    line.finish(command, &env)
}

/// What one command line gave, before defaults.
#[derive(Default)]
struct Line {
    verbose: u8,
    quiet: u8,
    ttl: Option<Duration>,
    keep: Option<Duration>,
    stale: Option<Duration>,
    warm: bool,
    force: bool,
    discard_failures: bool,
    key: Option<String>,
    scope: Option<String>,
    cwd: bool,
    env: Vec<String>,
    modtime: Vec<PathBuf>,
    stdin: bool,
    uncached_fallback: bool,
    refresh: bool,
    dir: Option<PathBuf>,
    name: Option<String>,
    size_limit: Option<u64>,
    shared: Option<String>,
    shared_tls_ca: Option<PathBuf>,
}

impl Line {
    /// Takes one option (and its value, from `=` or the next token); `None` to give up.
    fn take<'a>(
        &mut self,
        token: &str,
        rest: &mut impl Iterator<Item = &'a OsString>,
    ) -> Option<()> {
        if let Some(letters) = token.strip_prefix('-').filter(|l| !l.starts_with('-')) {
            return self.take_short(letters);
        }
        let (name, inline) = match token.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (token, None),
        };
        if let Some(flag) = self.flag(name) {
            // `--flag=value` and a repeated flag are clap's to judge.
            return (inline.is_none() && !std::mem::replace(flag, true)).then_some(());
        }
        let value = match inline {
            Some(value) => value,
            None => rest.next()?.to_str()?,
        };
        // Values that look like options (or are empty) are clap's to judge.
        if value.is_empty() || value.starts_with('-') {
            return None;
        }
        match name {
            "--ttl" | "--time-to-live" => set(&mut self.ttl, duration::parse(value).ok()?),
            "--keep" => set(&mut self.keep, duration::parse(value).ok()?),
            "--stale" => set(&mut self.stale, duration::parse(value).ok()?),
            "--key" => set(&mut self.key, value.to_owned()),
            "--scope" => set(&mut self.scope, value.to_owned()),
            "--env" | "--use-environment" => {
                self.env.push(value.to_owned());
                Some(())
            }
            "--modtime" | "--use-file-modtime" => {
                self.modtime.push(value.into());
                Some(())
            }
            "--dir" | "--cache-dir" => set(&mut self.dir, value.into()),
            "--name" => set(&mut self.name, value.to_owned()),
            "--size-limit" => set(&mut self.size_limit, size::parse(value).ok()?),
            "--shared" => set(&mut self.shared, value.to_owned()),
            "--shared-tls-ca" => set(&mut self.shared_tls_ca, value.into()),
            _ => None,
        }
    }

    /// `-v`, `-qq`, ...; anything else (`-h`, `-V`, a value) is clap's.
    fn take_short(&mut self, letters: &str) -> Option<()> {
        if letters.is_empty() {
            return None;
        }
        for letter in letters.chars() {
            let count = match letter {
                'v' => &mut self.verbose,
                'q' => &mut self.quiet,
                _ => return None,
            };
            *count = count.checked_add(1)?;
        }
        Some(())
    }

    fn flag(&mut self, name: &str) -> Option<&mut bool> {
        Some(match name {
            "--warm" => &mut self.warm,
            "--force" => &mut self.force,
            "--discard-failures" => &mut self.discard_failures,
            "--cwd" | "--use-working-dir" => &mut self.cwd,
            "--stdin" => &mut self.stdin,
            "--uncached-fallback" => &mut self.uncached_fallback,
            "--refresh" => &mut self.refresh,
            _ => return None,
        })
    }

    /// Applies the environment defaults and clap's conflicts.
    fn finish(
        self,
        command: Vec<OsString>,
        env: &impl Fn(&str) -> Option<OsString>,
    ) -> Option<Cli> {
        let conflicts = (self.verbose > 0 && self.quiet > 0)
            || (self.warm && self.force)
            || (self.key.is_some()
                && (self.cwd || !self.env.is_empty() || !self.modtime.is_empty()));
        if conflicts {
            return None;
        }
        let ttl = match self.ttl {
            Some(ttl) => ttl,
            None => match default(env, "CONCURIO_TTL")? {
                Some(text) => duration::parse(&text).ok()?,
                None => Duration::from_secs(60),
            },
        };
        let scope = match self.scope {
            Some(scope) => Some(scope),
            None => default(env, "CONCURIO_SCOPE")?,
        };
        let uncached_fallback = self.uncached_fallback
            || default(env, "CONCURIO_UNCACHED_FALLBACK")?.is_some_and(|text| !falsey(&text));
        let shared = match self.shared {
            Some(url) => Some(url),
            None => default(env, "CONCURIO_SHARED")?,
        };
        let shared_tls_ca = match self.shared_tls_ca {
            Some(path) => Some(path),
            None => default(env, "CONCURIO_SHARED_TLS_CA")?.map(PathBuf::from),
        };
        Some(Cli {
            verbosity: Verbosity {
                verbose: self.verbose,
                quiet: self.quiet,
            },
            command: Command::Run(RunArgs {
                ttl,
                keep: self.keep,
                stale: self.stale,
                warm: self.warm,
                force: self.force,
                discard_failures: self.discard_failures,
                key: self.key,
                scope,
                cwd: self.cwd,
                env: self.env,
                modtime: self.modtime,
                stdin: self.stdin,
                uncached_fallback,
                refresh: self.refresh,
                location: CacheLocation {
                    dir: self.dir,
                    name: self.name,
                    size_limit: self.size_limit,
                    shared,
                    shared_tls_ca,
                },
                command,
            }),
        })
    }
}

/// Stores a single-use option's value; `None` (give up) if it was given before.
fn set<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    slot.replace(value).is_none().then_some(())
}

/// An option's default from the environment: `Some(None)` when unset, `None` (give up) when
/// set but empty or not UTF-8, whose handling is clap's.
fn default(env: &impl Fn(&str) -> Option<OsString>, name: &str) -> Option<Option<String>> {
    match env(name) {
        None => Some(None),
        Some(value) => value.into_string().ok().filter(|v| !v.is_empty()).map(Some),
    }
}

/// clap's `FalseyValueParser`: these words (in any case) are false, anything else is true.
fn falsey(text: &str) -> bool {
    ["n", "no", "f", "false", "off", "0"].contains(&text.to_lowercase().as_str())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// Options and values the generated lines draw from: valid, invalid, repeated,
    /// conflicting and option-like values, in both `--opt VALUE` and `--opt=VALUE` forms.
    const WORDS: &[&str] = &[
        "--ttl",
        "--time-to-live",
        "--keep",
        "--stale",
        "--warm",
        "--force",
        "--discard-failures",
        "--key",
        "--scope",
        "--cwd",
        "--use-working-dir",
        "--env",
        "--use-environment",
        "--modtime",
        "--use-file-modtime",
        "--stdin",
        "--uncached-fallback",
        "--refresh",
        "--dir",
        "--cache-dir",
        "--name",
        "--size-limit",
        "--shared",
        "--shared-tls-ca",
        "-v",
        "-vv",
        "-q",
        "-qq",
        "-vq",
        "--verbose",
        "--quiet",
        "-h",
        "--help",
        "-V",
        "--bogus",
        "-x",
        "10m",
        "1h30m",
        "45",
        "soon",
        "0",
        "2G",
        "500k",
        "HOME",
        "/etc/hostname",
        "name with space",
        "-5",
        "--ttl=1h",
        "--ttl=",
        "--key=k",
        "--warm=yes",
        "--size-limit=1M",
        "--env=PATH",
        "redis://h:1/0",
        "é",
        "--",
    ];

    /// The `run`-only line made of `words` and `command` (no `--` if `command` is `None`).
    fn line(words: &[&str], command: Option<&[&str]>) -> Vec<OsString> {
        let mut args: Vec<OsString> = ["concurio", "run"].map(OsString::from).to_vec();
        args.extend(words.iter().map(OsString::from));
        if let Some(command) = command {
            args.push("--".into());
            args.extend(command.iter().map(OsString::from));
        }
        args
    }

    /// Where this parser accepts a line, clap reads it the same way; returns how many lines
    /// this parser accepted.
    fn agree(args: &[OsString], env: impl Fn(&str) -> Option<OsString>) -> bool {
        let Some(fast) = parse(args, env) else {
            return false;
        };
        match Cli::try_parse_from(args) {
            Ok(full) => assert_eq!(format!("{fast:?}"), format!("{full:?}"), "{args:?}"),
            Err(e) => panic!("{args:?}: accepted here, but clap says: {e}"),
        }
        true
    }

    /// Deterministic xorshift: the same lines on every run.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    #[test]
    fn every_line_this_parser_accepts_clap_reads_the_same_way() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut accepted = 0;
        for round in 0..20_000 {
            let words: Vec<&str> = (0..rng.below(6))
                .map(|_| WORDS[rng.below(WORDS.len())])
                .collect();
            let command: Option<&[&str]> = match round % 4 {
                0 => None,
                1 => Some(&[]),
                2 => Some(&["echo", "--ttl", "-v", "--"]),
                _ => Some(&["true"]),
            };
            // The process's environment has none of our variables (checked below).
            accepted += usize::from(agree(&line(&words, command), |_| None));
        }
        for name in VARIABLES {
            assert!(
                std::env::var_os(name).is_none(),
                "{name} is set in the test environment"
            );
        }
        // The generator must reach the accepting paths often, or this test proves little.
        assert!(accepted > 2_000, "only {accepted} lines accepted");
        eprintln!("{accepted} of 20000 generated lines taken here");
    }

    #[test]
    fn common_lines_are_taken_here_and_others_left_to_clap() {
        for words in [
            &["--ttl", "1h"][..],
            &["--ttl=1h", "--stale", "10s", "-v"],
            &["--key", "k", "--scope", "s", "--discard-failures", "-qq"],
            &[
                "--cwd",
                "--env",
                "HOME",
                "--env",
                "PATH",
                "--modtime",
                "/etc/hostname",
            ],
            &[
                "--dir",
                "/tmp/c",
                "--name",
                "n",
                "--size-limit",
                "2G",
                "--force",
                "--stdin",
            ],
        ] {
            assert!(
                agree(&line(words, Some(&["echo", "hi"])), |_| None),
                "{words:?}"
            );
        }
        for words in [
            &["--help"][..],
            &["--ttl", "soon"],
            &["--ttl", "1h", "--ttl", "2h"],
            &["--warm", "--force"],
            &["--key", "k", "--cwd"],
            &["-v", "-q"],
            &["--key", "-x"],
            &["--bogus"],
        ] {
            assert!(
                parse(&line(words, Some(&["true"])), |_| None).is_none(),
                "{words:?}"
            );
        }
        assert!(parse(&line(&["--ttl", "1h"], None), |_| None).is_none());
        assert!(parse(&line(&[], Some(&[])), |_| None).is_none());
    }

    /// The variables that give options their defaults.
    const VARIABLES: [&str; 5] = [
        "CONCURIO_TTL",
        "CONCURIO_SCOPE",
        "CONCURIO_UNCACHED_FALLBACK",
        "CONCURIO_SHARED",
        "CONCURIO_SHARED_TLS_CA",
    ];

    /// Environment defaults are read as clap reads them. clap reads the real environment,
    /// so each setting runs in a child process of this test binary (below).
    #[test]
    fn environment_defaults_are_read_as_clap_reads_them() {
        // (setting, how many of the child's 4 lines this parser takes: an invalid or empty
        // default leaves to clap the lines that would use it, not those that give the option)
        let scope_and_shared = [
            ("CONCURIO_SCOPE", "team"),
            ("CONCURIO_SHARED", "redis://127.0.0.1:1/0"),
        ];
        let settings: &[(&[(&str, &str)], usize)] = &[
            (&[("CONCURIO_TTL", "2h")], 4),
            (&[("CONCURIO_TTL", "soon")], 1),
            (&[("CONCURIO_TTL", "")], 1),
            (&scope_and_shared, 4),
            (&[("CONCURIO_SHARED_TLS_CA", "/etc/ca.pem")], 4),
            (&[("CONCURIO_UNCACHED_FALLBACK", "1")], 4),
            (&[("CONCURIO_UNCACHED_FALLBACK", "OFF")], 4),
            (&[("CONCURIO_UNCACHED_FALLBACK", "no")], 4),
            (&[("CONCURIO_UNCACHED_FALLBACK", "")], 1),
        ];
        let test_binary = std::env::current_exe().expect("the test binary's path");
        for (setting, takes) in settings {
            let mut child = std::process::Command::new(&test_binary);
            child.args([
                "--exact",
                "run_argv::tests::child_checks_environment_defaults",
                "--ignored",
                "--nocapture",
            ]);
            for name in VARIABLES {
                child.env_remove(name);
            }
            child.envs(setting.iter().copied());
            child.env(EXPECT, takes.to_string());
            let out = child.output().expect("run the child test");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("1 passed"),
                "{setting:?}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Run by `environment_defaults_are_read_as_clap_reads_them` with a setting in its
    /// environment.
    #[test]
    #[ignore = "child process of environment_defaults_are_read_as_clap_reads_them"]
    fn child_checks_environment_defaults() {
        let Some(expect) = std::env::var_os(EXPECT) else {
            panic!("run only as a child process, with {EXPECT} set");
        };
        let mut accepted = 0;
        let lines = [
            &[][..],
            &["--ttl", "5m"],
            &["--scope", "mine", "--shared", "redis://127.0.0.1:2/0"],
            &["--shared-tls-ca", "/x.pem", "--uncached-fallback"],
        ];
        for words in lines {
            accepted += usize::from(agree(&line(words, Some(&["true"])), |name| {
                std::env::var_os(name)
            }));
        }
        assert_eq!(Some(accepted.to_string().as_str()), expect.to_str());
    }

    /// Tells the child how many of its lines this parser should take with its setting.
    const EXPECT: &str = "RUN_ARGV_TEST_EXPECT";
}
