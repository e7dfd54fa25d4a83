//! Eight processes race on one key; the loader runs once, and everyone gets its value.
//!
//! ```text
//! cargo run --example race
//! ```
//!
//! The parent re-runs this binary as 8 children. Each calls `get_or_load` on the same key
//! with a slow loader that appends its pid to a counter file. Then a second wave reads the
//! stored value without running any loader.

use std::error::Error;
use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use dbx_concurio::caches::DiskCache;

const PROCESSES: usize = 8;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("child") if args.len() == 4 => child(Path::new(&args[2]), Path::new(&args[3])),
        _ => parent(),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("race: {err}");
            ExitCode::FAILURE
        }
    }
}

fn child(dir: &Path, counter: &Path) -> Result<ExitCode, Box<dyn Error>> {
    let cache = DiskCache::builder().directory(dir).name("race").build()?;
    let pid = std::process::id();
    let start = Instant::now();
    let v = cache.get_or_load(
        "answer",
        || {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(counter)?;
            writeln!(f, "{pid}")?;
            std::thread::sleep(Duration::from_millis(500)); // an expensive computation
            Ok::<_, std::io::Error>(format!("42, computed by process {pid}"))
        },
        Some(Duration::from_secs(3600)),
    )?;
    println!(
        "process {pid:>7}: got \"{}\" after {:?}",
        v.value,
        start.elapsed()
    );
    Ok(ExitCode::SUCCESS)
}

fn parent() -> Result<ExitCode, Box<dyn Error>> {
    let tmp = tempfile::tempdir()?;
    let counter = tmp.path().join("loads");
    let exe = std::env::current_exe()?;
    for wave in ["first wave (cold cache)", "second wave (warm cache)"] {
        println!("{wave}: {PROCESSES} processes call get_or_load(\"answer\") at once");
        let children = (0..PROCESSES)
            .map(|_| {
                Command::new(&exe)
                    .arg("child")
                    .arg(tmp.path())
                    .arg(&counter)
                    .spawn()
            })
            .collect::<Result<Vec<_>, _>>()?;
        for mut c in children {
            if !c.wait()?.success() {
                return Err("a child process failed".into());
            }
        }
    }
    let loads = std::fs::read_to_string(&counter)?.lines().count();
    println!(
        "the loader ran {loads} time(s) for {} calls in {} processes",
        2 * PROCESSES,
        2 * PROCESSES
    );
    Ok(if loads == 1 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
