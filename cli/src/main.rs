//! `concurio`: memoize commands, install tools and inspect caches from the shell.
//! `main` parses, sets up logging, and turns an error into one line on stderr.

mod cache_cmd;
mod capture;
mod cli;
mod duration;
mod holder;
mod install;
mod json_value;
mod logging;
mod output;
// Only glibc Linux loads libm.so for it (see the module).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod pow;
mod run;
mod run_argv;
mod size;

use std::fmt;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::CommandFactory;
use dbx_concurio::BoxError;

use cli::{Cli, Command, Verbosity};

/// An error that ends the program: its message and the exit status (1 unless said otherwise).
pub struct Failure {
    code: u8,
    error: BoxError,
}

impl Failure {
    /// An error with a specific exit status (e.g. 127 for a command that does not exist).
    pub fn with_code(code: u8, error: impl Into<BoxError>) -> Self {
        Failure {
            code,
            error: error.into(),
        }
    }
}

impl<E: Into<BoxError>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure::with_code(1, error)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line, whatever the error's text holds.
        let text = self.error.to_string();
        f.write_str(&text.trim().replace('\n', "; "))
    }
}

/// The result of a command: the exit status to end with.
pub type Outcome = Result<u8, Failure>;

fn main() -> ExitCode {
    adopt_cli_environment();
    let cli = Cli::parse_args(); // usage errors: clap's message, exit 2
    logging::init(cli.verbosity);
    match try_main(cli) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            // Not eprintln!: it panics when stderr is a closed pipe (`2>&1 | head -c 10`).
            let _ = writeln!(std::io::stderr(), "concurio: {failure}");
            ExitCode::from(failure.code)
        }
    }
}

fn try_main(cli: Cli) -> Outcome {
    // Say whom we wait for (another run of the command, another install of the tool): on a
    // terminal, or anywhere with -v; never with -q.
    let Verbosity { verbose, quiet } = cli.verbosity;
    let notice = quiet == 0 && (verbose > 0 || std::io::stderr().is_terminal());
    match cli.command {
        Command::Run(args) => run::run(args, notice),
        Command::Install(args) => install::install(args, notice),
        Command::Exec(args) => install::exec(args),
        Command::Installed { root, json } => install::list(root.as_deref(), json),
        Command::Uninstall(args) => install::uninstall(args),
        Command::Cache(command) => cache_cmd::cache(command),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "concurio",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
    }
}

/// Every variable the CLI reads starts with `CONCURIO_`. The library reads
/// `DBX_CONCURIO_CACHE_DIR` and `DBX_CONCURIO_OFFLINE` (its documented names), so
/// `CONCURIO_CACHE_DIR` and `CONCURIO_OFFLINE`, when set, are handed to it under those names;
/// the old names keep working on their own.
fn adopt_cli_environment() {
    const ALIASES: [(&str, &str); 2] = [
        ("CONCURIO_CACHE_DIR", dbx_concurio::CACHE_DIR_ENV),
        ("CONCURIO_OFFLINE", dbx_concurio::execs::OFFLINE_ENV),
    ];
    for (ours, library) in ALIASES {
        if let Some(value) = std::env::var_os(ours).filter(|v| !v.is_empty()) {
            // SAFETY: first thing in main, before any other thread exists or the
            // environment is read elsewhere.
            unsafe { std::env::set_var(library, value) };
        }
    }
}
