//! `concurio install`, `exec`, `installed` and `uninstall`, over `dbx_concurio::execs`; and the executables
//! part of `concurio cache prune`.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use dbx_concurio::execs::{self, Executable, Gc, Installed};

use crate::cli::{ExecArgs, InstallArgs, UninstallArgs};
use crate::{Failure, Outcome};

/// Installs (or finds) the executable and prints only its absolute path on stdout.
/// `notice`: if another process is installing the same identifier, say whom we wait for.
pub fn install(args: InstallArgs, notice: bool) -> Outcome {
    let root = args.root.clone();
    let id = args.id.clone();
    let mut exe = Executable::new(args.source, args.id.as_str()).force(args.force);
    if let Some(hex) = args.sha256 {
        exe = exe.sha256(hex);
    }
    if let Some(member) = args.member {
        exe = exe.archive_member(member).whole_archive(args.whole_archive);
    }
    if args.offline {
        exe = exe.offline(true); // else DBX_CONCURIO_OFFLINE decides
    }
    if let Some(name) = args.file_name {
        exe = exe.file_name(name);
    }
    if let Some(root) = args.root {
        exe = exe.cache_root(root);
    }
    if let Some(timeout) = args.timeout {
        exe = exe.timeout(timeout);
    }
    if let Some(retries) = args.retries {
        exe = exe.retries(retries);
    }
    if let Some(limit) = args.max_size {
        exe = exe.max_size(limit);
    }
    for header in &args.header {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("--header {header:?}: expected NAME: VALUE"))?;
        exe = exe.header(name.trim(), value.trim());
    }
    let waiting_for = || {
        execs::installer_of(&id, root.as_deref())
            .map(|(pid, command)| format!("waiting for pid {pid}: {command}"))
    };
    let path = crate::holder::say_while_blocked(notice, waiting_for, || exe.install())?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", path.display())?;
    stdout.flush()?;
    Ok(0)
}

/// Runs the executable installed under `id` with `args`; its exit status is ours.
pub fn exec(args: ExecArgs) -> Outcome {
    let tool = find(&args.id, args.root.as_deref())?;
    let mut cmd = Command::new(&tool.path);
    cmd.args(&args.args);
    #[cfg(unix)]
    {
        // Become the tool: signals, terminal and exit status pass through untouched.
        let error = std::os::unix::process::CommandExt::exec(&mut cmd);
        Err(format!("cannot run {}: {error}", tool.path.display()).into())
    }
    #[cfg(not(unix))]
    {
        let status = cmd
            .status()
            .map_err(|e| format!("cannot run {}: {e}", tool.path.display()))?;
        let (code, signal) = crate::capture::split_status(status);
        Ok(crate::capture::status_code(code, signal))
    }
}

/// Prints the installed executables, newest first.
pub fn list(root: Option<&Path>, json: bool) -> Outcome {
    let mut all = execs::installed(root)?;
    all.sort_by_key(|i| std::cmp::Reverse(i.installed_at));
    let mut stdout = std::io::stdout().lock();
    if json {
        let rows: Vec<serde_json::Value> = all
            .iter()
            .map(|i| {
                serde_json::json!({
                    "identifier": i.identifier,
                    "source": i.source,
                    "sha256": i.sha256,
                    "path": i.path,
                    "size": i.size,
                    "age_seconds": i.installed_at.elapsed().unwrap_or_default().as_secs(),
                })
            })
            .collect();
        writeln!(stdout, "{}", serde_json::Value::Array(rows))?;
        return Ok(0);
    }
    writeln!(stdout, "{:>10}  {:>10}  IDENTIFIER  PATH", "AGE", "SIZE")?;
    for i in &all {
        let age = crate::duration::human(i.installed_at.elapsed().unwrap_or_default());
        let id = i.identifier.escape_debug();
        writeln!(
            stdout,
            "{age:>10}  {:>10}  {id}  {}",
            human_bytes(i.size),
            i.path.display()
        )?;
    }
    Ok(0)
}

/// `512 B`, `1.5 KiB`, `2.0 MiB`, ...: sizes for people (`--json` keeps bytes).
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

/// Removes the executable installed under `args.id` (or, with --dry-run, says what would
/// be removed); prints what it did on stdout.
pub fn uninstall(args: UninstallArgs) -> Outcome {
    let root = args.root.as_deref();
    let (verb, gone) = if args.dry_run {
        ("would remove", find(&args.id, root)?)
    } else {
        let gone = execs::uninstall(&args.id, root)?.ok_or_else(|| not_installed(&args.id))?;
        ("removed", gone)
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "{verb} {} ({}, {})",
        gone.identifier.escape_debug(),
        gone.path.display(),
        human_bytes(gone.size)
    )?;
    Ok(0)
}

fn find(id: &str, root: Option<&Path>) -> Result<Installed, Failure> {
    let all = execs::installed(root)?;
    all.into_iter()
        .find(|i| i.identifier == id)
        .ok_or_else(|| not_installed(id))
}

fn not_installed(id: &str) -> Failure {
    let hint = format!("concurio install SOURCE --id {id}");
    format!("no executable is installed under the identifier {id:?} (install it with `{hint}`)")
        .into()
}

/// Removes installed executables older than `older_than` (none without it); their paths.
/// Leftovers of failed installs (also of earlier versions) are removed in any case.
pub fn prune_executables(
    older_than: Option<Duration>,
    root: Option<&Path>,
    dry_run: bool,
) -> Result<Vec<String>, Failure> {
    let mut gc = Gc::new().dry_run(dry_run);
    if let Some(age) = older_than {
        gc = gc.older_than(age);
    }
    if let Some(root) = root {
        gc = gc.cache_root(root);
    }
    let removed = gc.run()?;
    Ok(removed
        .iter()
        .map(|i| i.path.display().to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn sizes_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(2 << 20), "2.0 MiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
    }
}
