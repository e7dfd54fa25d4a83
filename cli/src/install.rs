//! `concurio install`, `concurio exec` and `concurio installed`, over `dbx_concurio::execs`; and the executables
//! part of `concurio cache prune`.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use dbx_concurio::execs::{self, Executable, Gc, Installed};

use crate::cli::{ExecArgs, InstallArgs};
use crate::{Failure, Outcome};

/// Installs (or finds) the executable and prints only its absolute path on stdout.
pub fn install(args: InstallArgs) -> Outcome {
    let mut exe = Executable::new(args.source, args.id.as_str()).force(args.force);
    if let Some(hex) = args.sha256 {
        exe = exe.sha256(hex);
    }
    if let Some(member) = args.member {
        exe = exe.archive_member(member);
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
    for header in &args.header {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("--header {header:?}: expected NAME: VALUE"))?;
        exe = exe.header(name.trim(), value.trim());
    }
    let path = exe.install()?;
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
    writeln!(stdout, "{:>10}  {:>10}  IDENTIFIER  PATH", "AGE", "BYTES")?;
    for i in &all {
        let age = crate::duration::human(i.installed_at.elapsed().unwrap_or_default());
        let id = i.identifier.escape_debug();
        writeln!(
            stdout,
            "{age:>10}  {:>10}  {id}  {}",
            i.size,
            i.path.display()
        )?;
    }
    Ok(0)
}

fn find(id: &str, root: Option<&Path>) -> Result<Installed, Failure> {
    let all = execs::installed(root)?;
    all.into_iter().find(|i| i.identifier == id).ok_or_else(|| {
        let hint = format!("concurio install SOURCE --id {id}");
        format!("no executable is installed under the identifier {id:?} (install it with `{hint}`)")
            .into()
    })
}

/// Removes installed executables older than `older_than` (none without it); their paths.
pub fn prune_executables(
    older_than: Option<Duration>,
    root: Option<&Path>,
) -> Result<Vec<String>, Failure> {
    let Some(age) = older_than else {
        return Ok(Vec::new());
    };
    let mut gc = Gc::new().older_than(age);
    if let Some(root) = root {
        gc = gc.cache_root(root);
    }
    let removed = gc.run()?;
    Ok(removed
        .iter()
        .map(|i| i.path.display().to_string())
        .collect())
}
