//! Running a command while streaming its output live and capturing it, and replaying a
//! captured result.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// What `concurio run` stores: the command's output and how it ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recorded {
    /// The command line, for people reading `concurio cache get` (lossy UTF-8).
    pub command: Vec<String>,
    pub stdout: ByteBuf,
    pub stderr: ByteBuf,
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

    /// Writes the recorded stdout and stderr to ours, byte for byte. A closed pipe on our
    /// side (`| head`) is not an error.
    pub fn replay(&self) -> io::Result<()> {
        write_all_ignoring_epipe(&mut io::stdout().lock(), &self.stdout)?;
        write_all_ignoring_epipe(&mut io::stderr().lock(), &self.stderr)
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
        }
    }
}

impl std::error::Error for RunError {}

impl From<io::Error> for RunError {
    fn from(e: io::Error) -> Self {
        RunError::Io(e)
    }
}

/// Runs `argv`, copying its stdout and stderr to ours as they arrive (reader threads, no
/// buffering until the end) while keeping a copy of each.
pub fn run_streaming(argv: &[OsString], pass_stdin: bool) -> Result<Recorded, RunError> {
    let (program, args) = argv.split_first().expect("clap requires a command");
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
    let out = child.stdout.take().expect("piped stdout");
    let err = child.stderr.take().expect("piped stderr");
    let out = thread::spawn(move || tee(out, io::stdout()));
    let err = thread::spawn(move || tee(err, io::stderr()));
    let stdout = out.join().expect("stdout reader panicked")?;
    let stderr = err.join().expect("stderr reader panicked")?;
    let status = child.wait()?;
    let (code, signal) = split_status(status);
    Ok(Recorded {
        command: argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        stdout: ByteBuf::from(stdout),
        stderr: ByteBuf::from(stderr),
        code,
        signal,
    })
}

/// Copies `from` to `to` chunk by chunk, returning everything read. Once `to` fails (e.g. a
/// closed pipe) it is dropped, but reading goes on so the capture is complete.
fn tee(mut from: impl Read, to: impl Write) -> io::Result<Vec<u8>> {
    let mut to = Some(to);
    let mut all = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(all),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        all.extend_from_slice(&buf[..n]);
        if let Some(w) = &mut to
            && (w.write_all(&buf[..n]).is_err() || w.flush().is_err())
        {
            to = None;
        }
    }
}

fn write_all_ignoring_epipe(to: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    match to.write_all(bytes).and_then(|()| to.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
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
