//! Short, bounded runs of the crash and soak harness (`tests/harness/`): real processes,
//! SIGKILLed at random instants, checked against a model. The long runs are
//! `cargo run --release --example crash` and `--example soak`.

// `harness` loads `common/server.rs` itself, since the example drivers include it too.
#![allow(clippy::duplicate_mod)]

mod common;
mod harness;

use std::process::Command;
use std::time::Duration;

use common::{child, child_role};

fn spawn(role: &str) -> Command {
    child("child_main", role)
}

/// A number from the environment (to run longer), else `default`.
fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |s| s.parse().expect(name))
}

/// Not a test of its own: the body of the child processes.
#[test]
fn child_main() {
    let Some(role) = child_role() else { return };
    if let Err(err) = harness::child_main(&role) {
        panic!("{err}");
    }
}

fn assert_clean(summary: String, violations: &[String], seed: u64) {
    eprintln!("{summary} (seed {seed})");
    assert!(
        violations.is_empty(),
        "seed {seed}: {}",
        violations.join("\n")
    );
}

#[test]
fn sigkilled_cache_writers_lose_nothing_and_tear_nothing() {
    let work = tempfile::tempdir().unwrap();
    let seed = setting("DBX_CONCURIO_CRASH_SEED", harness::clock_seed());
    let rounds = setting("DBX_CONCURIO_CRASH_ROUNDS", 24);
    let report = harness::crash::run(&spawn, work.path(), rounds, seed);
    assert!(report.writes_confirmed > 0, "no write was confirmed");
    assert_clean(report.summary(), &report.violations, seed);
}

#[test]
fn sigkilled_installers_never_publish_a_partial_executable() {
    let work = tempfile::tempdir().unwrap();
    let seed = setting("DBX_CONCURIO_CRASH_SEED", harness::clock_seed());
    let rounds = setting("DBX_CONCURIO_INSTALL_ROUNDS", 6);
    let report = harness::install_crash::run(&spawn, work.path(), rounds, seed);
    assert_clean(report.summary(), &report.violations, seed);
}

#[test]
fn soak_processes_and_threads_lose_nothing() {
    let work = tempfile::tempdir().unwrap();
    let seed = setting("DBX_CONCURIO_SOAK_SEED", harness::clock_seed());
    let secs = setting("DBX_CONCURIO_SOAK_SECS", 3);
    let report = harness::soak::run(&spawn, work.path(), 2, 2, Duration::from_secs(secs), seed);
    assert!(report.ops > 0, "no operation ran");
    assert_clean(report.summary(), &report.violations, seed);
}
