//! Command-line definitions (clap derive). Behaviour lives in one module per command.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, FromArgMatches, Parser, Subcommand};

use crate::duration;

const ABOUT_EXAMPLES: &str = "\
Examples:
  concurio run --ttl 10m -- curl -s https://example.com/api   # memoize a command
  concurio install https://example.com/tool.tar.gz --id tool-1.2 --member bin/tool
  concurio cache stats --json

Caches and executables live in dbx_concurio/ under $CONCURIO_CACHE_DIR (or $DBX_CONCURIO_CACHE_DIR;
a relative path is taken from the current directory; default: the temp dir), or in
dbx_concurio-<uid>/ when another user owns dbx_concurio/. `concurio cache path` prints where.
Exit status: 0 on success, 1 on errors, 2 on usage errors; `run` and `exec` exit with the command's status.";

/// Memoize commands across processes, install verified tools, inspect disk caches.
#[derive(Debug, Parser)]
#[command(name = "concurio", version, after_help = ABOUT_EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub verbosity: Verbosity,
    #[command(subcommand)]
    pub command: Command,
}

/// The options every subcommand takes.
#[derive(Debug, Clone, Copy, Args)]
pub struct Verbosity {
    /// More log output on stderr (-v info, -vv debug, -vvv trace). Default: warnings only.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less log output on stderr (-q errors only, -qq nothing).
    #[arg(short, long, action = ArgAction::Count, global = true, conflicts_with = "verbose")]
    pub quiet: u8,
}

impl Cli {
    /// Parses our arguments; usage errors, `--help` and `--version` end the process with
    /// clap's message (exit 2, or 0).
    ///
    /// A cache hit of `concurio run` is a whole process of ~1.5 ms (issue 11, point 6), so
    /// `run` lines go first to a hand parser of the common forms ([`crate::run_argv`]:
    /// ~50 µs from `main` to parsed in a release build, against ~260 µs through clap, most
    /// of it first touches of clap's code), then to clap with a command that holds only
    /// `run` (clap builds every argument of every subcommand before it parses). Anything
    /// those do not accept (help, a usage error, another subcommand) is parsed by the full
    /// command, so what users see for those is clap's full output, unchanged.
    pub fn parse_args() -> Cli {
        let args: Vec<OsString> = std::env::args_os().collect();
        if let Some(cli) = crate::run_argv::parse(&args, |name| std::env::var_os(name)) {
            return cli;
        }
        if args.get(1).is_some_and(|a| a == "run")
            && let Some(cli) = parse_run_only(&args)
        {
            return cli;
        }
        Cli::parse_from(args)
    }
}

/// `concurio run ...` parsed by a command that holds only `run`: `None` if it fails.
fn parse_run_only(args: &[OsString]) -> Option<Cli> {
    let run = RunArgs::augment_args(clap::Command::new("run"));
    let command = Verbosity::augment_args(clap::Command::new("concurio")).subcommand(run);
    let matches = command.try_get_matches_from(args).ok()?;
    let verbosity = Verbosity::from_arg_matches(&matches).ok()?;
    let run_matches = matches.subcommand_matches("run")?;
    let run = RunArgs::from_arg_matches(run_matches).ok()?;
    Some(Cli {
        verbosity,
        command: Command::Run(run),
    })
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command once and replay its output from the cache while it is fresh (like bkt).
    #[command(after_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// Install an executable (download or copy, verify, cache) and print its absolute path.
    #[command(after_help = INSTALL_EXAMPLES)]
    Install(InstallArgs),
    /// Run an installed executable by its identifier.
    #[command(after_help = EXEC_EXAMPLES)]
    Exec(ExecArgs),
    /// List installed executables: identifier, age, size, path (--json for scripts).
    #[command(
        after_help = "Examples:\n  concurio installed\n  concurio installed --json | jq -r '.[].path'"
    )]
    Installed {
        #[arg(long, value_name = "DIR", help = ROOT_HELP)]
        root: Option<PathBuf>,
        /// Machine-readable JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Remove an installed executable (waits for an install of it in progress).
    #[command(after_help = UNINSTALL_EXAMPLES)]
    Uninstall(UninstallArgs),
    /// Inspect and maintain a disk cache.
    #[command(subcommand, after_help = CACHE_EXAMPLES)]
    Cache(CacheCommand),
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  concurio completions bash > ~/.local/share/bash-completion/completions/concurio"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Which cache: `--dir DIR` and/or `--name NAME`.
#[derive(Debug, Clone, Args)]
pub struct CacheLocation {
    /// Cache directory. With --name the cache is DIR/NAME; alone, DIR itself. (`--cache-dir`,
    /// bkt's name, works too.)
    #[arg(long, value_name = "DIR", alias = "cache-dir")]
    pub dir: Option<PathBuf>,
    /// Cache name under the default root ($CONCURIO_CACHE_DIR or the temp dir, then
    /// dbx_concurio/), or under --dir. Default without --dir: `run`, the cache of `concurio run`.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Bound the cache's size on disk (e.g. 500M, 2G); stored in the cache, so it holds for
    /// every process that uses it. Least recently stored entries are evicted first.
    #[arg(long, value_name = "SIZE", value_parser = crate::size::parse)]
    pub size_limit: Option<u64>,
    /// Share the cache with other machines through Redis: redis://host:6379/0, or
    /// rediss://user:password@host for TLS. `concurio run` then runs a command once across
    /// the fleet; Redis being down only costs the sharing. Default: $CONCURIO_SHARED.
    #[arg(
        long,
        value_name = "URL",
        env = "CONCURIO_SHARED",
        hide_env_values = true
    )]
    pub shared: Option<String>,
    /// Trust the CA certificates in this PEM file for a rediss:// --shared URL (a private
    /// CA) instead of the system's roots; ignored without --shared. Default:
    /// $CONCURIO_SHARED_TLS_CA.
    #[arg(long, value_name = "PEM", env = "CONCURIO_SHARED_TLS_CA")]
    pub shared_tls_ca: Option<PathBuf>,
}

const RUN_EXAMPLES: &str = "\
Examples:
  concurio run -- make --version                      # cached for 1 minute (the default TTL)
  concurio run --ttl 1h --cwd -- git log -1            # the working directory is part of the key
  concurio run --ttl 10m --stale 10s -- ./report       # after 10s: replay, refresh behind
  concurio run --ttl 1h --modtime .git/FETCH_HEAD -- git log origin/main -1
  concurio run --warm -- ./report                      # refresh in the background, print nothing
  concurio run --key weather --ttl 30m -- curl -s wttr.in
  concurio run --discard-failures -- ./flaky-probe     # failures are never stored nor replayed

--ttl and --stale mean what they mean in bkt. The TTL is the caller's: a result stored by
`--ttl 1s` is fresh for a later `--ttl 1h` call: a result stays on disk for at least a day
(--keep), longer than its TTL, so that callers with longer TTLs can use it. Before --stale took
bkt's meaning it was a window after the TTL: the old `--ttl 10m --stale 1h` is now
`--ttl 1h10m --stale 10m`.

The key is a SHA-256 of the argv, the --scope, the working directory (--cwd), the values of the
--env variables that are set, and the modification times of the --modtime files, unless --key
names it (then only --scope applies: --cwd, --env and --modtime do not go with --key). Replays
write the recorded stdout and stderr byte for byte (each in one piece, so their interleaving is
not kept) and exit with the recorded status; a command killed by signal N exits 128+N. If CMD
cannot be started, concurio prints one error line and exits 127 (not found) or 126 (not
executable); nothing is cached then. If the result cannot be stored (disk full), concurio warns
and exits with the command's status. A caller waiting for another process's run of the same
command says so after a second on a terminal, and with -v anywhere.

Environment: CONCURIO_TTL, CONCURIO_STALE, CONCURIO_SCOPE, CONCURIO_UNCACHED_FALLBACK set the
defaults of the options of the same name (CONCURIO_STALE only where it is shorter than the TTL);
CONCURIO_CACHE_DIR (or DBX_CONCURIO_CACHE_DIR) replaces the temp dir as the base of the default
cache (a relative path is taken from the current directory); CONCURIO_SHARED is the default of
--shared; CONCURIO_LOG is a log filter (e.g. debug).

With --shared, a command runs once across every machine that uses the same Redis and cache
name (`run` unless --name says otherwise): the others wait and replay its result.";

#[derive(Debug, Args)]
pub struct RunArgs {
    /// How old a stored result may be for this call to replay it (30s, 10m, 1h, 2d; a bare
    /// number is seconds).
    #[arg(
        long,
        visible_alias = "time-to-live",
        value_name = "DURATION",
        env = "CONCURIO_TTL",
        default_value = "60s",
        value_parser = duration::parse
    )]
    pub ttl: Duration,
    /// How long a result stays on disk for callers with longer TTLs; `cache purge` removes
    /// it after that [default: the TTL, at least 1d; never shorter than the TTL].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    pub keep: Option<Duration>,
    /// Shorter than --ttl: a result older than this is replayed at once and refreshed in
    /// the background (as in bkt). Default: $CONCURIO_STALE, where it is shorter than --ttl.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    pub stale: Option<Duration>,
    /// Run the command in the background to refresh its stored result, and return at once
    /// with no output (as in bkt).
    #[arg(long, conflicts_with = "force")]
    pub warm: bool,
    /// Run the command even if a fresh result exists, and store the new result.
    #[arg(long)]
    pub force: bool,
    /// Never store nor replay a result with a non-zero exit status (or killed by a signal).
    #[arg(long)]
    pub discard_failures: bool,
    /// Name the cache entry yourself instead of hashing the command line.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["cwd", "env", "modtime"])]
    pub key: Option<String>,
    /// Keep this call's results apart from calls with another scope (or none).
    #[arg(long, value_name = "NAME", env = "CONCURIO_SCOPE")]
    pub scope: Option<String>,
    /// Make the current working directory part of the key.
    #[arg(long, visible_alias = "use-working-dir")]
    pub cwd: bool,
    /// Make the value of environment variable NAME part of the key (repeatable).
    #[arg(long = "env", value_name = "NAME", visible_alias = "use-environment")]
    pub env: Vec<String>,
    /// Make the modification time of PATH part of the key (repeatable; a missing file counts
    /// as "missing"), e.g. --modtime .git/FETCH_HEAD.
    #[arg(long, value_name = "PATH", visible_alias = "use-file-modtime")]
    pub modtime: Vec<PathBuf>,
    /// Pass our stdin to the command when it runs (default: /dev/null). stdin is not part of
    /// the key, and a replay does not read it.
    #[arg(long)]
    pub stdin: bool,
    /// If no cache can be used (unusable directory), warn and run the command uncached
    /// instead of failing.
    #[arg(
        long,
        env = "CONCURIO_UNCACHED_FALLBACK",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    pub uncached_fallback: bool,
    /// Internal: the background refresh started by --stale.
    #[arg(long, hide = true)]
    pub refresh: bool,
    #[command(flatten)]
    pub location: CacheLocation,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

const INSTALL_EXAMPLES: &str = "\
Examples:
  tool=$(concurio install https://example.com/tool-1.2 --id tool-1.2 --sha256 <64 hex digits>)
  concurio install https://example.com/tool-1.2.tar.gz --id tool-1.2 --member tool-1.2/bin/tool
  concurio install https://example.com/sdk-3.tar.zst --id sdk-3 --member sdk/bin/cc --whole-archive
  concurio install ./build/tool --id tool-dev --force

Only the absolute path goes to stdout; progress and messages go to stderr. An executable is
downloaded once per identifier; later installs return the cached path without any request.";

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// URL (http://, https://, file://) or local path of the executable or archive.
    pub source: String,
    /// Identifier of this executable (include the version: the cache is keyed by it).
    #[arg(long)]
    pub id: String,
    /// Expected SHA-256 of the downloaded bytes (64 hex digits).
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Install this member of a .tar.gz/.tgz/.tar.xz/.tar.zst/.zip archive.
    #[arg(long, value_name = "PATH")]
    pub member: Option<String>,
    /// Install the archive's whole tree and print the path of --member inside it.
    #[arg(long, requires = "member")]
    pub whole_archive: bool,
    /// Never download: succeed only if already installed.
    #[arg(long)]
    pub offline: bool,
    /// Reinstall even if already installed.
    #[arg(long)]
    pub force: bool,
    /// File name of the installed executable (default: from the source or member).
    #[arg(long = "name", value_name = "FILE")]
    pub file_name: Option<String>,
    #[arg(long, value_name = "DIR", help = ROOT_HELP)]
    pub root: Option<PathBuf>,
    /// Time limit of one download attempt (e.g. 2m).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    pub timeout: Option<Duration>,
    /// How many times a failed download is retried.
    #[arg(long, value_name = "N")]
    pub retries: Option<u32>,
    /// Extra HTTP request header, e.g. "Authorization: Bearer $TOKEN" (repeatable).
    #[arg(long, value_name = "NAME: VALUE")]
    pub header: Vec<String>,
    /// Refuse a download or copy larger than this (e.g. 200M, 2G).
    #[arg(long, value_name = "SIZE", value_parser = crate::size::parse)]
    pub max_size: Option<u64>,
}

const UNINSTALL_EXAMPLES: &str = "\
Examples:
  concurio uninstall tool-1.2
  concurio uninstall tool-1.2 --dry-run     # print what would be removed

Exits 1 if ID is not installed.";

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Identifier given to `concurio install --id`.
    pub id: String,
    #[arg(long, value_name = "DIR", help = ROOT_HELP)]
    pub root: Option<PathBuf>,
    /// Print what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

const ROOT_HELP: &str = "Cache root: executables live in DIR/executables [default: \
    $DBX_CONCURIO_CACHE_DIR or the temp dir, then dbx_concurio]";

const EXEC_EXAMPLES: &str = "\
Examples:
  concurio exec tool-1.2 -- --help
  concurio exec tool-1.2 --root /opt/tools -- build .

Exits with the tool's status (128+N if killed by signal N); 1 if ID is not installed.";

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Identifier given to `concurio install --id`.
    pub id: String,
    #[arg(long, value_name = "DIR", help = ROOT_HELP)]
    pub root: Option<PathBuf>,
    /// Arguments for the tool.
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<OsString>,
}

const CACHE_EXAMPLES: &str = "\
Examples:
  concurio cache list                       # the cache of `concurio run`: commands, sizes
  concurio cache path                       # where it lives
  concurio cache clear --dry-run            # what would be removed
  concurio cache list --dir /some/dir --name my_cache --json
  concurio cache get greeting --name my_cache
  concurio cache prune --older-than 30d     # expired entries; executables installed 30+ days ago
  concurio cache check --json               # verify; remove damaged entries and debris
  concurio cache stats --size-limit 500M    # bound the cache (kept for every process)";

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List entries: key, age, expiry, size.
    #[command(after_help = CACHE_EXAMPLES)]
    List(CacheOpts),
    /// Print the value of KEY as JSON (bytes become a string if UTF-8, else a list of numbers).
    #[command(after_help = CACHE_EXAMPLES)]
    Get {
        /// The key.
        key: String,
        #[command(flatten)]
        opts: CacheOpts,
    },
    /// Delete KEY (exit 0 whether or not it was there; --json tells which).
    #[command(after_help = CACHE_EXAMPLES)]
    Delete {
        /// The key.
        key: String,
        /// Only say whether it would be deleted.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        opts: CacheOpts,
    },
    /// Print the cache's directory (where it lives; nothing is created).
    #[command(after_help = CACHE_EXAMPLES)]
    Path(CacheOpts),
    /// Directory, entries, expired entries, bytes on disk, size limit, lock files, and the
    /// hit/miss/eviction counters shared by all processes.
    #[command(after_help = CACHE_EXAMPLES)]
    Stats(CacheOpts),
    /// Remove expired entries; with --older-than, also executables installed before then.
    #[command(visible_alias = "purge", after_help = CACHE_EXAMPLES)]
    Prune {
        /// Also remove installed executables older than this (30d, 12h, ...).
        #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
        older_than: Option<Duration>,
        #[arg(long, value_name = "DIR", help = ROOT_HELP)]
        root: Option<PathBuf>,
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        opts: CacheOpts,
    },
    /// Remove every entry. Asks no question (safe in scripts); prints how many were removed.
    #[command(after_help = CACHE_EXAMPLES)]
    Clear {
        /// Only say how many entries (and bytes) would be removed.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        opts: CacheOpts,
    },
    /// Verify every entry and value file; remove damaged entries and debris (orphan value
    /// files, temp files of interrupted writes, foreign lock files older than a minute).
    #[command(after_help = CACHE_EXAMPLES)]
    Check(CacheOpts),
}

#[derive(Debug, Clone, Args)]
pub struct CacheOpts {
    #[command(flatten)]
    pub location: CacheLocation,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl CacheLocation {
    /// Where the chosen cache lives (what [`open`](Self::open) opens), without creating it.
    pub fn path(&self) -> PathBuf {
        let name = self.name.as_deref();
        match &self.dir {
            Some(dir) => {
                let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
                name.map_or_else(|| dir.clone(), |name| dir.join(name))
            }
            None => dbx_concurio::default_root().join(name.unwrap_or("run")),
        }
    }

    /// Opens the chosen cache: `DIR[/NAME]`, or `<default root>/NAME` (NAME defaults to
    /// `run`). An explicit `--dir` that cannot be used is an error, never a silent fallback to
    /// the temp dir (the library's default for programs).
    pub fn open(&self) -> dbx_concurio::Result<dbx_concurio::caches::DiskCache> {
        let builder = dbx_concurio::caches::DiskCache::builder();
        let builder = match &self.dir {
            Some(dir) => builder.directory(dir).fallback(false),
            None => builder.name("run"),
        };
        let builder = match self.size_limit {
            Some(limit) => builder.size_limit(limit),
            None => builder,
        };
        let builder = match (self.shared.as_deref(), &self.shared_tls_ca) {
            (Some("") | None, _) => builder,
            (Some(url), None) => builder.shared(url),
            (Some(url), Some(pem)) => builder.shared(url).shared_tls_ca(pem),
        };
        match &self.name {
            Some(name) => builder.name(name.as_str()).build(),
            None => builder.build(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<OsString> {
        std::iter::once("concurio")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    /// The `run`-only parser reads every `run` command line exactly as the full one does.
    #[test]
    fn the_run_only_parser_agrees_with_the_full_parser() {
        // Whitespace-separated (the last one's command is `sh -c "echo $$"`).
        let lines = [
            "run -- echo hi",
            "run -v --ttl 10m --stale 10s -- ./report -x",
            "run -qq --key k --scope s --discard-failures -- true",
            "run --cwd --env HOME --modtime /etc/hostname -- ls",
            "run --dir /tmp/c --name n --size-limit 2G -- date",
            "run --force --stdin --keep 2d -- sort",
            "run --warm --uncached-fallback -- sh -c",
        ];
        for line in lines {
            let mut args = argv(&line.split(' ').collect::<Vec<_>>());
            if line.ends_with("-c") {
                args.push("echo $$".into());
            }
            let fast = parse_run_only(&args).map(|cli| format!("{cli:?}"));
            let full = match Cli::try_parse_from(&args) {
                Ok(cli) => format!("{cli:?}"),
                Err(e) => panic!("{line:?} is not a valid command line: {e}"),
            };
            assert_eq!(fast, Some(full), "{line:?}");
        }
    }

    /// What the `run`-only parser does not accept goes to the full parser (its help and
    /// its errors are what users see).
    #[test]
    fn help_and_usage_errors_are_left_to_the_full_parser() {
        for line in [
            &["run", "--help"][..],
            &["run", "--ttl", "soon", "--", "true"],
            &["run", "--no-such-option", "--", "true"],
            &["run"],
        ] {
            assert!(parse_run_only(&argv(line)).is_none(), "{line:?}");
        }
    }
}
