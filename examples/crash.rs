//! Crash test, long run: cache writers/loaders and installers SIGKILLed at random instants,
//! checked against a model after every round (the logic is `tests/harness/`, which
//! `cargo test` runs in short form).
//!
//! ```text
//! cargo run --release --example crash -- --rounds 300 --install-rounds 60 --seed 42
//! ```
//!
//! Prints one summary line per suite and exits non-zero on any violation.

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::process::ExitCode;

use harness::{option, spawn_self};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(code) = harness::run_if_child(&args) {
        return code;
    }
    let rounds = option(&args, "--rounds", 100);
    let install_rounds = option(&args, "--install-rounds", rounds / 5);
    let seed = option(&args, "--seed", harness::clock_seed());
    let work = tempfile::tempdir().expect("temp dir");
    println!("crash: seed {seed}, work dir {}", work.path().display());
    let cache = harness::crash::run(&spawn_self, &work.path().join("cache"), rounds, seed);
    println!("{}", cache.summary());
    let execs = work.path().join("execs");
    let install = harness::install_crash::run(&spawn_self, &execs, install_rounds, seed);
    println!("{}", install.summary());
    harness::exit_code(
        &cache
            .violations
            .iter()
            .chain(&install.violations)
            .collect::<Vec<_>>(),
    )
}
