//! Crash consistency of the installer: processes installing shared and distinct identifiers
//! from a slow loopback server are SIGKILLed at random instants; after every round, every
//! published file, every marker and everything `installed()` lists must be whole.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dbx_concurio::execs::{self, Executable};
use sha2::{Digest, Sha256};

use super::server::{Reply, Server};
use super::{Rng, Running, Spawn, env, kill_at_random, say};

const CHILDREN: u64 = 3;
const SHARED_IDS: u64 = 4;

/// The executable served for `id`: a script printing `id`, padded to ~100 KiB.
pub fn body(id: &str) -> Vec<u8> {
    let mut out = format!("#!/bin/sh\necho {id}\nexit 0\n#").into_bytes();
    let digest = Sha256::digest(id.as_bytes());
    let len = 96 * 1024 + usize::from(digest[0]) * 64;
    out.extend((out.len()..len).map(|i| b'a' + (digest[i % 32] ^ i as u8) % 26));
    out.push(b'\n');
    out
}

fn hash(id: &str) -> String {
    Sha256::digest(id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Serves `body(id)` at `/<id>`, slowly (8 KiB pieces, 1 ms apart), so kills land mid-body.
pub fn slow_server() -> Server {
    Server::start(|_, req| {
        let id = req.path.trim_start_matches('/').to_owned();
        Reply {
            chunk: 8 * 1024,
            pause: Duration::from_millis(1),
            ..Reply::ok(body(&id))
        }
    })
}

fn install(url: &str, id: &str, root: &Path) -> dbx_concurio::Result<PathBuf> {
    Executable::new(format!("{url}/{id}"), id)
        .cache_root(root)
        .retries(0)
        .offline(false)
        .timeout(Duration::from_secs(60))
        .install()
        .map(|p| p.path().to_owned())
}

/// The child: installs identifiers in random order until killed.
pub fn child() -> Result<(), String> {
    let url: String = env("CRASH_URL")?;
    let root: String = env("CRASH_ROOT")?;
    let me: u64 = env("CRASH_CHILD")?;
    let round: u64 = env("CRASH_ROUND")?;
    let mut rng = Rng::new(env("CRASH_SEED")?);
    say("READY");
    for i in 0..1000 {
        let id = if rng.below(2) == 0 {
            format!("shared-{}", rng.below(SHARED_IDS))
        } else {
            format!("own-{round}-{me}-{i}")
        };
        say(&format!("B {id}"));
        let path = install(&url, &id, Path::new(&root)).map_err(|e| format!("{id}: {e}"))?;
        say(&format!("E {id} {}", path.display()));
    }
    Ok(())
}

#[derive(Debug, Default, Clone)]
pub struct Report {
    pub rounds: u64,
    pub kills: u64,
    pub installs_confirmed: u64,
    /// Published files, markers and listed installs checked byte for byte.
    pub files_checked: u64,
    /// Temp files of killed installers seen (allowed: never published).
    pub debris_seen: u64,
    pub partial: u64,
    pub violations: Vec<String>,
}

impl Report {
    /// The one-line summary printed by the test and the example.
    pub fn summary(&self) -> String {
        format!(
            "install crash: {} rounds, {} SIGKILLs, {} installs confirmed, {} files checked whole, {} temp files of killed installers (unpublished), {} partial, {} violations",
            self.rounds,
            self.kills,
            self.installs_confirmed,
            self.files_checked,
            self.debris_seen,
            self.partial,
            self.violations.len()
        )
    }

    fn violation(&mut self, round: u64, what: String) {
        super::note(&mut self.violations, round, what);
    }
}

/// Runs `rounds` rounds of installers killed at random instants, then installs every
/// identifier once more and runs one of them.
pub fn run(spawn: Spawn<'_>, work: &Path, rounds: u64, seed: u64) -> Report {
    let server = slow_server();
    let url = server.url("").trim_end_matches('/').to_owned();
    let root = work.join("root");
    let mut rng = Rng::new(seed);
    let mut report = Report::default();
    let mut ids: HashMap<String, String> = (0..SHARED_IDS)
        .map(|i| format!("shared-{i}"))
        .map(|id| (hash(&id), id))
        .collect();
    for round in 0..rounds {
        let mut children = Vec::new();
        for me in 0..CHILDREN {
            let mut cmd = spawn("crash-install");
            cmd.env("CRASH_URL", &url)
                .env("CRASH_ROOT", &root)
                .env("CRASH_CHILD", me.to_string())
                .env("CRASH_ROUND", round.to_string())
                .env("CRASH_SEED", rng.next().to_string());
            match Running::spawn(cmd) {
                Ok(c) => children.push(c),
                Err(e) => report.violation(round, e),
            }
        }
        let mut problems = Vec::new();
        let outputs = kill_at_random(
            children,
            &mut rng,
            false,
            Duration::from_millis(120),
            &mut problems,
        );
        report.kills += outputs.len() as u64;
        for p in problems {
            report.violation(round, p);
        }
        let mut reported = Vec::new();
        for line in outputs.iter().flatten() {
            let f: Vec<&str> = line.splitn(3, ' ').collect();
            match f[..] {
                ["B", id] => {
                    ids.insert(hash(id), id.to_owned());
                }
                ["E", id, path] => {
                    report.installs_confirmed += 1;
                    reported.push((id.to_owned(), PathBuf::from(path)));
                }
                _ => {}
            }
        }
        for (id, path) in &reported {
            check_file(path, id, round, &mut report);
        }
        verify(&root, &ids, round, &mut report);
        report.rounds += 1;
    }
    // Every identifier installs cleanly after all that, and runs.
    for id in ids.values() {
        match install(&url, id, &root) {
            Ok(path) => check_file(&path, id, rounds, &mut report),
            Err(e) => report.violation(rounds, format!("final install of {id}: {e}")),
        }
    }
    if let Ok(path) = install(&url, "shared-0", &root) {
        match std::process::Command::new(&path).output() {
            Ok(out) if out.status.success() && out.stdout == b"shared-0\n" => {}
            other => report.violation(rounds, format!("running {}: {other:?}", path.display())),
        }
    }
    report
}

/// The file at `path` must be the whole executable of `id`, with exec permission.
fn check_file(path: &Path, id: &str, round: u64, report: &mut Report) {
    report.files_checked += 1;
    match std::fs::read(path) {
        Ok(bytes) if bytes == body(id) => {}
        Ok(bytes) => {
            report.partial += 1;
            report.violation(
                round,
                format!(
                    "{} ({id}): {} bytes, not the {} published",
                    path.display(),
                    bytes.len(),
                    body(id).len()
                ),
            );
        }
        Err(e) => report.violation(round, format!("{} ({id}): {e}", path.display())),
    }
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o111 != 0 => {}
        other => report.violation(
            round,
            format!("{} is not executable: {other:?}", path.display()),
        ),
    }
}

/// Checks every file of every identifier directory, every marker, and `installed()`.
fn verify(root: &Path, ids: &HashMap<String, String>, round: u64, report: &mut Report) {
    let executables = root.join("executables");
    let Ok(listing) = std::fs::read_dir(&executables) else {
        return; // nothing installed yet
    };
    for dir in listing.flatten().filter(|e| e.path().is_dir()) {
        let name = dir.file_name().to_string_lossy().into_owned();
        let Some(id) = ids.get(&name) else {
            report.violation(round, format!("directory {name} of an unknown identifier"));
            continue;
        };
        for file in std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let fname = file.file_name().to_string_lossy().into_owned();
            if fname == ".complete" {
                let text = std::fs::read_to_string(file.path()).unwrap_or_default();
                match text.lines().find_map(|l| l.strip_prefix("file=")) {
                    Some(target) => check_file(&dir.path().join(target), id, round, report),
                    None => report.violation(round, format!("marker of {id} is damaged: {text:?}")),
                }
            } else if fname.starts_with('.') {
                // Temp files of killed installers (`.staging-*`, `.write-probe*`): never
                // published, since published names never start with a dot.
                report.debris_seen += 1;
            } else {
                check_file(&file.path(), id, round, report);
            }
        }
    }
    match execs::installed(Some(root)) {
        Ok(list) => {
            for item in list {
                check_file(&item.path, &item.identifier, round, report);
                if item.size != body(&item.identifier).len() as u64 {
                    report.violation(round, format!("{item:?}: wrong size recorded"));
                }
            }
        }
        Err(e) => report.violation(round, format!("installed(): {e}")),
    }
}
