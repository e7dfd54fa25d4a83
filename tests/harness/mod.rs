//! The crash and soak harness: real processes, real files, SIGKILL at random instants.
//!
//! Shared by `tests/crash_soak.rs` (short, bounded runs in `cargo test`) and the long-run
//! drivers `examples/crash.rs` and `examples/soak.rs`, which include this directory with
//! `#[path]`. The caller says how to start a copy of its own binary in a child role
//! ([`Spawn`]); the child calls [`child_main`] with that role.
#![allow(dead_code)]

pub mod crash;
pub mod install_crash;
#[path = "../common/server.rs"]
pub mod server;
pub mod soak;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Starts a copy of the calling binary that will run `child_main(role)`.
pub type Spawn<'a> = &'a dyn Fn(&str) -> Command;

/// The body of every child process, by role. Returns what went wrong, if anything.
pub fn child_main(role: &str) -> Result<(), String> {
    let result = match role {
        "crash-cache" => crash::child(),
        "crash-install" => install_crash::child(),
        "soak" => soak::child(),
        other => Err(format!("unknown child role {other:?}")),
    };
    if let Err(err) = &result {
        say(&format!("FAIL {err}"));
    }
    result
}

/// xorshift64*: small, deterministic, so a failure can be replayed from its printed seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A seed from the clock, for runs that do not give one.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// A child's parameter, passed in its environment.
pub fn env<T: FromStr>(name: &str) -> Result<T, String> {
    std::env::var(name)
        .map_err(|_| format!("{name} is not set"))?
        .parse()
        .map_err(|_| format!("{name} is not a valid value"))
}

/// Writes one protocol line to stdout and flushes it: one `write` of a short line to a pipe
/// is atomic, so a SIGKILL never leaves half a line behind.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("{line}\n").as_bytes());
    let _ = out.flush();
}

/// Sends SIGKILL (Child::kill is SIGKILL on Unix).
pub fn sigkill(child: &mut Child) {
    let _ = child.kill();
}

/// A running child whose stdout lines are collected by a thread.
pub struct Running {
    pub child: Child,
    ready: mpsc::Receiver<()>,
    lines: std::thread::JoinHandle<Vec<String>>,
}

impl Running {
    /// Spawns `cmd` with stdout piped; the line `READY` is signalled as it arrives.
    pub fn spawn(mut cmd: Command) -> Result<Running, String> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot spawn a child: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, ready) = mpsc::channel();
        let lines = std::thread::spawn(move || {
            let mut out = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "READY" {
                    let _ = tx.send(());
                }
                out.push(line);
            }
            out
        });
        Ok(Running {
            child,
            ready,
            lines,
        })
    }

    /// Waits until the child said READY (false: it did not, by `deadline`).
    pub fn wait_ready(&self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        self.ready.recv_timeout(left).is_ok()
    }

    /// Kills the child (if still running), reaps it, and returns its lines and whether it
    /// had exited by itself with an error before the kill.
    pub fn kill(mut self) -> (Vec<String>, Option<String>) {
        let early = match self.child.try_wait() {
            Ok(Some(status)) if !status.success() => Some(format!("child exited: {status}")),
            _ => None,
        };
        sigkill(&mut self.child);
        let _ = self.child.wait();
        (self.lines.join().unwrap_or_default(), early)
    }

    /// Waits for the child to finish (killing it after `limit`); returns its lines and an
    /// error if it failed or had to be killed.
    pub fn finish(mut self, limit: Duration) -> (Vec<String>, Option<String>) {
        let deadline = Instant::now() + limit;
        let problem = loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => break None,
                Ok(Some(status)) => break Some(format!("child failed: {status}")),
                Ok(None) if Instant::now() >= deadline => {
                    sigkill(&mut self.child);
                    let _ = self.child.wait();
                    break Some(format!("child still running after {limit:?}: hung"));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => break Some(format!("cannot wait for a child: {e}")),
            }
        };
        (self.lines.join().unwrap_or_default(), problem)
    }
}

/// Runs `children` (already spawned), kills each at a random instant after it said READY
/// (or, with `early`, at a random instant after its start, READY or not), and returns every
/// child's lines, plus problems (a child that never got ready, or failed by itself).
pub fn kill_at_random(
    children: Vec<Running>,
    rng: &mut Rng,
    early: bool,
    max_delay: Duration,
    problems: &mut Vec<String>,
) -> Vec<Vec<String>> {
    let start = Instant::now();
    if !early {
        let deadline = start + Duration::from_secs(60);
        for (i, c) in children.iter().enumerate() {
            if !c.wait_ready(deadline) {
                problems.push(format!("child {i} never said READY"));
            }
        }
    }
    let armed = Instant::now();
    let mut plan: Vec<(Duration, usize)> = (0..children.len())
        .map(|i| {
            let ms = max_delay.as_millis().max(1) as u64;
            (Duration::from_millis(rng.below(ms)), i)
        })
        .collect();
    plan.sort();
    let mut slots: Vec<Option<Running>> = children.into_iter().map(Some).collect();
    let mut out = vec![Vec::new(); slots.len()];
    for (delay, i) in plan {
        std::thread::sleep(delay.saturating_sub(armed.elapsed()));
        if let Some(child) = slots[i].take() {
            let (lines, early_exit) = child.kill();
            if let Some(p) = early_exit {
                problems.push(format!(
                    "child {i}: {p}; its last lines: {:?}",
                    tail(&lines)
                ));
            }
            out[i] = lines;
        }
    }
    out
}

/// Records a violation of `round` (the first 50: one bug tends to repeat).
pub fn note(violations: &mut Vec<String>, round: u64, what: String) {
    if violations.len() < 50 {
        violations.push(format!("round {round}: {what}"));
    }
}

/// The last few lines of a child's output, for error messages.
pub fn tail(lines: &[String]) -> &[String] {
    &lines[lines.len().saturating_sub(5)..]
}

// ---------------------------------------------------------------- for the example drivers

/// If this process was started as a child (`--child ROLE`), runs the role and returns the
/// exit code.
pub fn run_if_child(args: &[String]) -> Option<std::process::ExitCode> {
    match args {
        [flag, role] if flag == "--child" => Some(match child_main(role) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(_) => std::process::ExitCode::FAILURE,
        }),
        _ => None,
    }
}

/// Starts this binary again as a child in `role` (see [`run_if_child`]).
pub fn spawn_self(role: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
    cmd.args(["--child", role]);
    cmd
}

/// The number after `name` on the command line, else `default`.
pub fn option(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
}

/// Prints the violations and turns them into the exit code.
pub fn exit_code(violations: &[&String]) -> std::process::ExitCode {
    for v in violations {
        eprintln!("VIOLATION {v}");
    }
    if violations.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
