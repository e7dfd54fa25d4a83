//! `concurio install` and `concurio exec` (waiting for the `execs` module).

use crate::Outcome;
use crate::cli::{ExecArgs, InstallArgs};

pub fn install(_args: InstallArgs) -> Outcome {
    Err("install is not available yet".into())
}

pub fn exec(_args: ExecArgs) -> Outcome {
    Err("exec is not available yet".into())
}

/// Removes installed executables older than `older_than` (none without it); their paths.
pub fn prune_executables(
    older_than: Option<std::time::Duration>,
    _root: Option<&std::path::Path>,
) -> Result<Vec<String>, crate::Failure> {
    match older_than {
        None => Ok(Vec::new()),
        Some(_) => Err("pruning executables is not available yet".into()),
    }
}
