//! Soak, long run: N processes × M threads of random cache operations for T seconds, with
//! self-checking values and invariants checked at the end (the logic is `tests/harness/`,
//! which `cargo test` runs for a few seconds).
//!
//! ```text
//! cargo run --release --example soak -- --processes 4 --threads 4 --seconds 300 --seed 42
//! ```
//!
//! Prints the operations done and the errors seen (must be 0); exits non-zero otherwise.

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::process::ExitCode;
use std::time::Duration;

use harness::{option, spawn_self};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(code) = harness::run_if_child(&args) {
        return code;
    }
    let processes = option(&args, "--processes", 4);
    let threads = option(&args, "--threads", 4);
    let seconds = option(&args, "--seconds", 60);
    let seed = option(&args, "--seed", harness::clock_seed());
    let work = tempfile::tempdir().expect("temp dir");
    println!("soak: seed {seed}, work dir {}", work.path().display());
    let duration = Duration::from_secs(seconds);
    let report = harness::soak::run(&spawn_self, work.path(), processes, threads, duration, seed);
    println!("{}", report.summary());
    harness::exit_code(&report.violations.iter().collect::<Vec<_>>())
}
