//! `concurio cache ...`, help, version and completions, end to end.

mod common;

use std::time::Duration;

use common::{Sandbox, counted, run_args};

#[test]
fn stats_json_has_the_documented_fields() {
    let sb = Sandbox::new();
    sb.ok(&run_args(&[], &counted("echo hi")));
    let stats = sb.json(&["cache", "stats", "--json"]);
    let dir = stats["directory"].as_str().expect("directory");
    assert!(std::path::Path::new(dir).is_dir());
    assert!(dir.starts_with(sb.path().to_str().unwrap()), "{dir}");
    assert_eq!(stats["entries"], 1);
    assert_eq!(stats["expired"], 0);
    assert!(stats["bytes"].as_u64().unwrap() > 0);
    assert!(stats["lock_files"].as_u64().unwrap() >= 1);
    for counter in ["hits", "misses", "evictions"] {
        assert!(stats[counter].is_u64(), "{counter}: {stats}");
    }
    assert!(stats["size_limit"].is_null(), "{stats}");
    let text = sb.ok(&["cache", "stats"]);
    assert!(text.contains("entries") && text.contains(dir), "{text}");
}

#[test]
fn list_get_delete_clear() {
    let sb = Sandbox::new();
    for key in ["alpha", "beta"] {
        sb.ok(&run_args(&["--key", key], &counted(&format!("echo {key}"))));
    }
    let list = sb.json(&["cache", "list", "--json"]);
    let keys: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["alpha", "beta"]);
    assert!(sb.ok(&["cache", "list"]).contains("beta"));

    let value: serde_json::Value =
        serde_json::from_str(&sb.ok(&["cache", "get", "alpha"])).unwrap();
    assert_eq!(value["stdout"], "alpha\n");
    let missing = sb.concurio(&["cache", "get", "gamma"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).starts_with("concurio: no entry for key"));

    assert_eq!(
        sb.json(&["cache", "delete", "alpha", "--json"])["deleted"],
        true
    );
    assert_eq!(
        sb.json(&["cache", "delete", "alpha", "--json"])["deleted"],
        false
    );
    assert_eq!(
        sb.json(&["cache", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(sb.json(&["cache", "clear", "--json"])["removed"], 1);
    assert_eq!(sb.json(&["cache", "stats", "--json"])["entries"], 0);
}

#[test]
fn dir_and_name_pick_the_cache() {
    let sb = Sandbox::new();
    let dir = sb.path().join("elsewhere");
    let dir = dir.to_str().unwrap();
    sb.ok(&run_args(
        &["--dir", dir, "--name", "n", "--key", "k"],
        &counted("echo hi"),
    ));
    let stats = sb.json(&["cache", "stats", "--dir", dir, "--name", "n", "--json"]);
    assert_eq!(stats["entries"], 1);
    assert_eq!(stats["directory"], format!("{dir}/n"));
    assert_eq!(
        sb.json(&["cache", "stats", "--json"])["entries"],
        0,
        "default cache"
    );
    assert_eq!(
        sb.json(&["cache", "stats", "--name", "n", "--json"])["entries"],
        0
    );
}

#[test]
fn prune_and_purge_remove_expired_entries() {
    let sb = Sandbox::new();
    sb.ok(&run_args(
        &["--ttl", "1s", "--keep", "1s", "--key", "short"],
        &counted("echo a"),
    ));
    sb.ok(&run_args(
        &["--ttl", "1h", "--key", "long"],
        &counted("echo b"),
    ));
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(sb.json(&["cache", "stats", "--json"])["expired"], 1);
    assert_eq!(sb.json(&["cache", "prune", "--json"])["expired_removed"], 1);
    assert_eq!(sb.json(&["cache", "purge", "--json"])["expired_removed"], 0);
    assert_eq!(sb.json(&["cache", "stats", "--json"])["entries"], 1);
}

#[test]
fn help_on_every_command_has_examples_and_version_and_completions_work() {
    let sb = Sandbox::new();
    let commands: [&[&str]; 11] = [
        &[],
        &["cache"],
        &["run"],
        &["install"],
        &["exec"],
        &["cache", "list"],
        &["cache", "get"],
        &["cache", "delete"],
        &["cache", "stats"],
        &["cache", "prune"],
        &["cache", "clear"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let help = sb.ok(&args);
        assert!(help.contains("Example"), "{args:?}: {help}");
    }
    let version = sb.ok(&["--version"]);
    assert!(version.starts_with("concurio "), "{version}");
    assert!(sb.ok(&["completions", "bash"]).contains("concurio"));
}

#[test]
fn size_limit_is_stored_and_check_repairs() {
    let sb = Sandbox::new();
    sb.ok(&run_args(&[], &counted("echo hi")));
    let stats = sb.json(&["cache", "stats", "--json", "--size-limit", "64K"]);
    assert_eq!(stats["size_limit"], 64 * 1024);
    // Stored in the cache: later invocations without the flag see it.
    assert_eq!(
        sb.json(&["cache", "stats", "--json"])["size_limit"],
        64 * 1024
    );
    let bad = sb.concurio(&["cache", "stats", "--size-limit", "lots"]);
    assert_eq!(bad.status.code(), Some(2));

    let dir = sb.json(&["cache", "stats", "--json"])["directory"]
        .as_str()
        .unwrap()
        .to_owned();
    let debris = std::path::Path::new(&dir).join(".key-locks/planted.lock");
    std::fs::write(&debris, "x").unwrap();
    let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&debris)
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();
    let report = sb.json(&["cache", "check", "--json"]);
    assert_eq!(report["entries"], 1, "{report}");
    assert_eq!(report["removed_files"], 1, "{report}");
    assert!(!debris.exists());
}

#[test]
fn list_shows_commands_human_sizes_and_aligned_columns() {
    let sb = Sandbox::new();
    sb.ok(&["run", "--", "sh", "-c", "echo short"]);
    sb.ok(&["run", "--", "sh", "-c", "head -c 300000 /dev/zero", "a b"]);
    sb.ok(&["run", "--key", "named", "--", "echo", "hi"]);
    let text = sb.ok(&["cache", "list"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        !text.contains("run-v"),
        "a hash instead of the command: {text}"
    );
    let at = lines[0].find("COMMAND").expect("header");
    let mut found = Vec::new();
    for line in &lines[1..] {
        let what = &line[at..];
        assert!(
            !line[..at].ends_with(|c: char| !c.is_whitespace()),
            "misaligned: {text}"
        );
        found.push(what.to_owned());
    }
    found.sort();
    assert_eq!(
        found,
        [
            "named = echo hi",
            "sh -c 'echo short'",
            "sh -c 'head -c 300000 /dev/zero' 'a b'"
        ],
        "{text}"
    );
    assert!(text.contains(" KiB  sh -c 'head"), "human size: {text}");
    assert!(
        text.contains(" B  sh -c 'echo short'"),
        "human size: {text}"
    );
    let json = sb.json(&["cache", "list", "--json"]);
    let commands: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["command"].as_str().unwrap())
        .collect();
    assert!(commands.contains(&"echo hi"), "{json}");
    assert!(
        sb.ok(&["cache", "stats"]).contains(" KiB"),
        "stats bytes in human units"
    );
}

#[test]
fn delete_and_clear_have_a_dry_run_that_removes_nothing() {
    let sb = Sandbox::new();
    for key in ["alpha", "beta"] {
        sb.ok(&run_args(&["--key", key], &counted(&format!("echo {key}"))));
    }
    let report = sb.json(&["cache", "delete", "alpha", "--dry-run", "--json"]);
    assert_eq!(report["would_delete"], true, "{report}");
    let report = sb.json(&["cache", "delete", "gamma", "--dry-run", "--json"]);
    assert_eq!(report["would_delete"], false, "{report}");
    assert!(
        sb.ok(&["cache", "delete", "alpha", "--dry-run"])
            .starts_with("would delete: alpha")
    );
    let report = sb.json(&["cache", "clear", "--dry-run", "--json"]);
    assert_eq!(report["would_remove"], 2, "{report}");
    assert!(report["bytes"].as_u64().unwrap() > 0, "{report}");
    assert!(
        sb.ok(&["cache", "clear", "--dry-run"])
            .starts_with("would remove 2 entries (")
    );
    assert_eq!(
        sb.json(&["cache", "stats", "--json"])["entries"],
        2,
        "a dry run removed"
    );
    assert_eq!(sb.json(&["cache", "clear", "--json"])["removed"], 2);
}

#[test]
fn path_says_where_a_cache_lives_without_creating_it() {
    let sb = Sandbox::new();
    let base = sb.path().canonicalize().unwrap();
    let default = base.join("dbx_concurio/run");
    assert_eq!(
        sb.ok(&["cache", "path"]).trim_end(),
        default.to_str().unwrap()
    );
    assert!(!default.exists(), "cache path created the cache");
    let named = sb.json(&["cache", "path", "--name", "n", "--json"]);
    assert_eq!(
        named["directory"],
        base.join("dbx_concurio/n").to_str().unwrap()
    );
    assert_eq!(
        sb.ok(&["cache", "path", "--dir", "d"]).trim_end(),
        base.join("d").to_str().unwrap()
    );
    sb.ok(&run_args(&["--dir", "d"], &counted("echo hi")));
    let stats = sb.json(&["cache", "stats", "--dir", "d", "--json"]);
    assert_eq!(
        stats["directory"],
        base.join("d").to_str().unwrap(),
        "path and use agree"
    );
}
