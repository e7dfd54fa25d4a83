//! Who is running a command that other `concurio run` processes wait for.
//!
//! The process whose loader runs the command publishes a small note, `<cache
//! dir>/running/<hash of the key>` (its pid, then the command line), for as long as the
//! command runs. A process that waits for that key reads it from a timer thread and says
//! whom it waits for. The note is only informative: the library's locks decide who runs; a
//! note left by a killed process is overwritten by the next runner of the key.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// How long a caller waits before saying what it waits for.
const NOTICE_AFTER: Duration = Duration::from_secs(1);

/// The note of the process running the command of a key; removed when dropped.
pub struct HolderNote {
    path: PathBuf,
}

impl HolderNote {
    /// Publishes our pid and `command` for `key` (atomically: written aside, then renamed).
    /// `None` if it cannot be written: the note is a courtesy, never a reason to fail.
    pub fn publish(cache_dir: &Path, key: &str, command: &[OsString]) -> Option<HolderNote> {
        let path = note_path(cache_dir, key);
        let dir = path.parent()?;
        let temp = dir.join(format!(".note-{}.tmp", std::process::id()));
        let written = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::File::create(&temp))
            .and_then(|mut file| {
                writeln!(file, "{}", std::process::id())?;
                writeln!(file, "{}", command_line(command))
            })
            .and_then(|()| std::fs::rename(&temp, &path));
        match written {
            Ok(()) => Some(HolderNote { path }),
            Err(e) => {
                tracing::debug!("cannot write the holder note {}: {e}", path.display());
                let _ = std::fs::remove_file(&temp);
                None
            }
        }
    }
}

impl Drop for HolderNote {
    fn drop(&mut self) {
        // Only our own note: a later runner may have replaced it if we were presumed dead.
        if read_note(&self.path).is_some_and(|(pid, _)| pid == std::process::id()) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Runs `wait` (a call that may block on another process's run of `key`). If `notice` is
/// set and `wait` is still blocked after [`NOTICE_AFTER`] without `started` (our own loader
/// began), prints once on stderr whom we wait for.
pub fn while_waiting<T>(
    notice: bool,
    cache_dir: &Path,
    key: &str,
    started: &AtomicBool,
    wait: impl FnOnce() -> T,
) -> T {
    say_while_blocked(
        notice,
        || (!started.load(Ordering::SeqCst)).then(|| waiting_message(cache_dir, key)),
        wait,
    )
}

/// Runs `wait`; if `notice` is set and it is still running after [`NOTICE_AFTER`], prints
/// `message()` once on stderr (nothing if it gives `None`).
pub fn say_while_blocked<T>(
    notice: bool,
    message: impl FnOnce() -> Option<String> + Send,
    wait: impl FnOnce() -> T,
) -> T {
    if !notice {
        return wait();
    }
    let (done, finished) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let timed_out = matches!(
                finished.recv_timeout(NOTICE_AFTER),
                Err(mpsc::RecvTimeoutError::Timeout)
            );
            if timed_out && let Some(message) = message() {
                let _ = writeln!(std::io::stderr(), "concurio: {message}");
            }
        });
        let result = wait();
        drop(done);
        result
    })
}

fn waiting_message(cache_dir: &Path, key: &str) -> String {
    match read_note(&note_path(cache_dir, key)) {
        Some((pid, command)) if pid != std::process::id() => {
            format!("waiting for pid {pid}: {command}")
        }
        _ => "waiting for another process that runs this command".to_owned(),
    }
}

fn note_path(cache_dir: &Path, key: &str) -> PathBuf {
    let digest = Sha256::digest(key.as_bytes());
    let name: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    cache_dir.join("running").join(name)
}

fn read_note(path: &Path) -> Option<(u32, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (pid, command) = text.split_once('\n')?;
    Some((pid.trim().parse().ok()?, command.trim_end().to_owned()))
}

/// The command as a person would type it: arguments with spaces or quotes are quoted.
pub fn command_line(command: &[impl AsRef<std::ffi::OsStr>]) -> String {
    let words: Vec<String> = command
        .iter()
        .map(|arg| {
            let arg = arg.as_ref().to_string_lossy();
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain {
                arg.into_owned()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect();
    // One line, whatever the arguments hold.
    words
        .join(" ")
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}
