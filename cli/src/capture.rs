//! Running a command while streaming its output live and storing it, and replaying a
//! stored result.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;

use dbx_concurio::caches::DiskCache;
use serde::{Deserialize, Serialize};

use crate::output::{self, Captured, Output, Streams};

/// What `concurio run` stores: the command, how it ended, and its outputs (inline when
/// small, else the names of their stream entries: see [`crate::output`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recorded {
    /// The command line, for people reading `concurio cache get` (lossy UTF-8).
    pub command: Vec<String>,
    pub stdout: Output,
    pub stderr: Output,
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal number, if it was killed by one.
    pub signal: Option<i32>,
}

impl Recorded {
    /// Our exit status for it: the code, or 128+N for signal N.
    pub fn exit_code(&self) -> u8 {
        status_code(self.code, self.signal)
    }

    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The keys of its stream entries.
    pub fn stream_keys(&self) -> impl Iterator<Item = &str> {
        [&self.stdout, &self.stderr]
            .into_iter()
            .filter_map(Output::stream_key)
    }

    /// Both outputs, opened (so that a result replaced meanwhile is still read whole, and
    /// never half of one and half of another); `None` if a stream entry is gone.
    pub fn open(&self, cache: &DiskCache) -> Result<Option<Replay>, dbx_concurio::Error> {
        let Some(stdout) = self.stdout.open(cache)? else {
            return Ok(None);
        };
        let Some(stderr) = self.stderr.open(cache)? else {
            return Ok(None);
        };
        Ok(Some(Replay {
            stdout: (stdout, self.stdout.len()),
            stderr: (stderr, self.stderr.len()),
        }))
    }
}

/// Deletes the result stored under `key` and its stream entries; true if it was there.
pub fn delete_result(cache: &DiskCache, key: &str) -> Result<bool, dbx_concurio::Error> {
    // Read first: once the run entry is gone, nothing names its streams.
    let old = cache.get::<Recorded>(key).ok().flatten();
    let deleted = cache.delete(key)?;
    if let Some(old) = old {
        output::delete_streams(cache, old.stream_keys());
    }
    Ok(deleted)
}

/// The opened outputs of a stored result.
pub struct Replay {
    /// Each output and its length.
    stdout: (Box<dyn Read + Send>, u64),
    stderr: (Box<dyn Read + Send>, u64),
}

impl Replay {
    /// Writes the stored stdout and stderr to ours, byte for byte, through a fixed buffer.
    /// A closed pipe on our side (`| head`) is not an error; damaged stored bytes are
    /// (`InvalidData`, after what was read before the damage was found).
    pub fn write(self) -> io::Result<()> {
        let (stdout, len) = self.stdout;
        output::replay(stdout, len, &mut io::stdout().lock())?;
        let (stderr, len) = self.stderr;
        output::replay(stderr, len, &mut io::stderr().lock())
    }
}

/// Why running a command gave no result to store.
#[derive(Debug)]
pub enum RunError {
    /// It could not be started.
    Spawn {
        program: OsString,
        source: io::Error,
    },
    /// Reading its output or waiting for it failed.
    Io(io::Error),
    /// It failed and failures are not cached (`--discard-failures`); its output was shown.
    Failed(Box<Recorded>),
    /// It ran and its output was shown, but storing the output failed (a full disk).
    NotStored {
        status: u8,
        source: dbx_concurio::Error,
    },
}

impl RunError {
    /// How `concurio` ends: a failed command's own status; 127 for a command that does not
    /// exist and 126 for one that cannot be executed (shell convention); else 1.
    pub fn into_outcome(self) -> crate::Outcome {
        match self {
            RunError::Failed(recorded) => Ok(recorded.exit_code()),
            RunError::Spawn { ref source, .. } => {
                let code = if source.kind() == io::ErrorKind::NotFound {
                    127
                } else {
                    126
                };
                Err(crate::Failure::with_code(code, self))
            }
            RunError::NotStored { status, ref source } => {
                warn_not_stored(source);
                Ok(status)
            }
            RunError::Io(_) => Err(self.into()),
        }
    }
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Spawn { program, source } => {
                write!(f, "cannot run {:?}: {source}", program.to_string_lossy())
            }
            RunError::Io(e) => write!(f, "running the command: {e}"),
            RunError::Failed(r) => write!(f, "the command failed with status {}", r.exit_code()),
            RunError::NotStored { source, .. } => {
                write!(f, "the command's result could not be stored: {source}")
            }
        }
    }
}

impl std::error::Error for RunError {}

impl From<io::Error> for RunError {
    fn from(e: io::Error) -> Self {
        RunError::Io(e)
    }
}

/// The warning for a result that ran but could not be stored.
pub fn warn_not_stored(error: &dbx_concurio::Error) {
    tracing::warn!("the command's result could not be stored: {error}");
}

/// Runs `argv`, copying its stdout and stderr to ours as they arrive (a reader thread per
/// pipe, no buffering until the end) while storing them in `streams` (see
/// [`Streams::capture`]); with `None`, only passes them through (an uncached run, whose
/// `Recorded` has empty outputs).
pub fn run_streaming(
    argv: &[OsString],
    pass_stdin: bool,
    streams: Option<&Streams>,
) -> Result<Recorded, RunError> {
    let (program, args) = argv.split_first().ok_or_else(|| {
        RunError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no command to run",
        ))
    })?;
    let stdin = if pass_stdin {
        Stdio::inherit()
    } else {
        Stdio::null()
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RunError::Spawn {
            program: program.clone(),
            source,
        })?;
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(io::Error::other("the command's output pipes are missing").into());
    };
    let (stdout, stderr) = thread::scope(|s| {
        let out = s.spawn(|| capture(streams, "stdout", out, io::stdout()));
        let err = s.spawn(|| capture(streams, "stderr", err, io::stderr()));
        (joined(out), joined(err))
    });
    let status = child.wait();
    let captured = [stdout, stderr];
    let kept = |c: &io::Result<Captured>| match c {
        Ok(Captured::Kept(output)) => output.stream_key().map(str::to_owned),
        _ => None,
    };
    let stored: Vec<String> = captured.iter().filter_map(kept).collect();
    let recorded = finish(argv, status, captured);
    if recorded.is_err()
        && let Some(streams) = streams
    {
        // Nothing refers to the stream entries of a run that gives no result.
        output::delete_streams(streams.cache(), stored.iter().map(String::as_str));
    }
    recorded
}

/// Reads one pipe of the command: stored in `streams`, or only passed through.
fn capture(
    streams: Option<&Streams>,
    name: &str,
    from: impl Read,
    to: impl Write,
) -> io::Result<Captured> {
    match streams {
        Some(streams) => streams.capture(name, from, to),
        None => output::pass_through(from, to).map(|()| Captured::Kept(Output::empty())),
    }
}

/// A reader thread's result; its panic continues in ours.
fn joined<T>(handle: thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// The result of a finished run, from how it ended and what its pipes gave.
fn finish(
    argv: &[OsString],
    status: io::Result<ExitStatus>,
    [stdout, stderr]: [io::Result<Captured>; 2],
) -> Result<Recorded, RunError> {
    let (code, signal) = split_status(status?);
    let (stdout, stderr) = match (stdout?, stderr?) {
        (Captured::Kept(stdout), Captured::Kept(stderr)) => (stdout, stderr),
        (Captured::NotStored(source), _) | (_, Captured::NotStored(source)) => {
            return Err(RunError::NotStored {
                status: status_code(code, signal),
                source,
            });
        }
    };
    Ok(Recorded {
        command: argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        stdout,
        stderr,
        code,
        signal,
    })
}

/// (exit code, signal) of a finished process.
pub fn split_status(status: ExitStatus) -> (Option<i32>, Option<i32>) {
    #[cfg(unix)]
    let signal = std::os::unix::process::ExitStatusExt::signal(&status);
    #[cfg(not(unix))]
    let signal = None;
    (status.code(), signal)
}

/// Our exit status for a process that ended with `code` or `signal`: the code (1 if it does
/// not fit), or 128+N for signal N.
pub fn status_code(code: Option<i32>, signal: Option<i32>) -> u8 {
    match (code, signal) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(255),
        (None, None) => 1,
    }
}
