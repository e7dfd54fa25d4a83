//! The cache as real programs use it (issue #10): memoized recursion, dependency chains in
//! several processes, fork, thread pools of thousands, handles in statics and processes
//! that exit or die without dropping them, reboots, resets killed half-way, directories
//! moved or deleted while open, huge values, schema changes, skewed clocks, apparent size,
//! and descriptors inherited by commands. Multi-process cases re-invoke this test binary
//! (`common::child`) and SIGKILL where the case is about dying.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, SystemTime};

use common::{assert_success, child, child_role, sigkill, wait_for_line, wait_or_kill};
use dbx_concurio::Error;
use dbx_concurio::caches::{DiskCache, DiskCacheValue};

use common::{env_path, open_dir as open};

/// Runs this binary as a child playing `role` with `CACHE=dir` and `envs`; waits for it
/// (failing after `limit`), checks it succeeded and returns its stdout.
fn run_role(role: &str, dir: &Path, envs: &[(&str, &str)], limit: Duration) -> String {
    let mut cmd = child("child_main", role);
    cmd.env("CACHE", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in envs {
        cmd.env(name, value);
    }
    let out = wait_or_kill(cmd.spawn().expect("spawn"), limit, role);
    assert_success(&out, role);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a thread with a large stack; fails if it takes longer than `limit`.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || {
            let _ = tx.send(f());
        })
        .expect("spawn");
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("still running after {limit:?}: deadlocked"))
}

/// What `.state` says of the boot id is replaced by another boot's, as after a restart.
fn simulate_reboot(dir: &Path) {
    let path = dir.join(".state");
    let text = std::fs::read_to_string(&path).expect("read .state");
    let (_, rest) = text.split_once(' ').expect(".state holds '<boot> <state>'");
    std::fs::write(
        &path,
        format!("00000000-0000-0000-0000-000000000000 {rest}"),
    )
    .expect("write .state");
}

/// A chain of loads: the loader of `prefix-i` loads `prefix-(i+1)` first, up to `depth`.
fn chain(cache: &DiskCache, prefix: &str, i: u32, depth: u32) -> u64 {
    cache
        .get_or_load(
            &format!("{prefix}-{i}"),
            || {
                let below = if i + 1 < depth {
                    chain(cache, prefix, i + 1, depth)
                } else {
                    0
                };
                Ok::<_, std::io::Error>(below + u64::from(i))
            },
            None,
        )
        .expect("chain link")
        .value
}

// ---------------------------------------------------------------- child roles

#[test]
fn child_main() {
    let Some(role) = child_role() else { return };
    let dir = env_path("CACHE");
    match role.as_str() {
        // A 300-deep chain of keys of its own, loaded while another process does the same.
        "chain" => {
            let prefix = std::env::var("PREFIX").expect("PREFIX");
            let cache = open(&dir);
            let total = within(Duration::from_secs(120), move || {
                chain(&cache, &prefix, 0, 300)
            });
            println!("TOTAL {total}");
        }
        // Opens the cache, reads and writes, forks; the child uses the inherited handle and
        // a new one, then exits through `exit` (dropping nothing) or by dropping all.
        "fork" => fork_role(&dir),
        // A handle in a static, a write, then `std::process::exit`: nothing is dropped.
        "static-exit" => {
            static CACHE: OnceLock<DiskCache> = OnceLock::new();
            let cache = CACHE.get_or_init(|| open(&dir));
            cache.set("kept", &"through exit", None).expect("set");
            std::process::exit(0);
        }
        // Writes, says so, then idles until SIGKILLed.
        "write-then-idle" => {
            let cache = open(&dir);
            cache.set("kept", &"through a kill", None).expect("set");
            println!("WROTE");
            std::thread::sleep(Duration::from_secs(120));
        }
        // Plays a first opener killed in the middle of a reset: holds the open lock
        // exclusively with the marker damaged and the index gone, until SIGKILLed.
        "half-reset" => {
            let lock = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(dir.join(".open.lock"))
                .expect("open lock");
            lock.lock().expect("flock");
            std::fs::write(dir.join(".dbx-concurio"), "garbage").expect("damage marker");
            std::fs::remove_dir_all(dir.join("index")).expect("remove index");
            println!("HOLDING");
            std::thread::sleep(Duration::from_secs(120));
        }
        // Opens (waiting behind the half reset), writes its key and reads it back.
        "waiter" => {
            let key = std::env::var("KEY").expect("KEY");
            let cache = open(&dir);
            cache.set(&key, &key, None).expect("set");
            let back: String = cache.get(&key).expect("get").expect("present").value;
            assert_eq!(back, key);
            println!("STORED {key}");
        }
        // Counts the descriptors of data.mdb with the cache opened by two paths (the second
        // after `mv`), and the same with one path.
        "moved" => {
            let moved = env_path("MOVED");
            let first = open(&dir);
            first.set("k", &1u32, None).expect("set");
            let one = descriptors_of(&moved_or(&dir, &moved).join("index/data.mdb"));
            std::fs::rename(&dir, &moved).expect("mv");
            let second = open(&moved);
            assert_eq!(
                second.get::<u32>("k").expect("get").expect("present").value,
                1
            );
            let two = descriptors_of(&moved.join("index/data.mdb"));
            second
                .set("k2", &2u32, None)
                .expect("write through the new path");
            assert_eq!(
                first.get::<u32>("k2").expect("get").map(|v| v.value),
                Some(2)
            );
            println!("DESCRIPTORS {one} {two}");
        }
        // Opens the cache, reads a hit and a miss, exits.
        "read-only" => {
            let cache = open(&dir);
            let hit = cache.get::<String>("k").expect("get").map(|v| v.value);
            assert_eq!(hit.as_deref(), Some("v"));
            assert!(cache.get::<String>("missing").expect("get").is_none());
            let v = cache
                .get_or_load(
                    "k",
                    || Ok::<_, std::io::Error>("reloaded".to_string()),
                    None,
                )
                .expect("get_or_load");
            assert_eq!(v.value, "v");
        }
        // Reads `key` from a fresh process.
        "reader" => {
            let key = std::env::var("KEY").expect("KEY");
            let got = open(&dir)
                .get::<String>(&key)
                .expect("get")
                .map(|v| v.value);
            println!("GOT {got:?}");
        }
        // Stores a value whose encoding exceeds 4 GiB (bytes from an untouched anonymous
        // mapping, so it costs no memory) and reads it back.
        "huge" => {
            let len = (4usize << 30) + 16;
            let map = memmap2::MmapMut::map_anon(len).expect("map");
            struct Bytes<'a>(&'a [u8]);
            impl serde::Serialize for Bytes<'_> {
                fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    s.serialize_bytes(self.0)
                }
            }
            let cache = open(&dir);
            match cache.set("huge", &Bytes(&map), None) {
                Err(err) => println!("REFUSED {err}"),
                Ok(()) => {
                    let back: serde_bytes::ByteBuf =
                        cache.get("huge").expect("get").expect("present").value;
                    println!("STORED, READ BACK {} BYTES", back.len());
                }
            }
        }
        // Fills a cache until the index is full under a 4 MiB file size limit.
        "fsize" => {
            // SAFETY: plain libc calls on this single-threaded child.
            unsafe {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let limit = libc::rlimit {
                    rlim_cur: 4 << 20,
                    rlim_max: libc::RLIM_INFINITY,
                };
                assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
            }
            let cache = open(&dir);
            let value = vec![7u8; 20_000];
            for i in 0..10_000 {
                if let Err(err) =
                    cache.set(&format!("k{i}"), &serde_bytes::Bytes::new(&value), None)
                {
                    println!("FULL {err}");
                    return;
                }
            }
            println!("NEVER FULL");
        }
        other => panic!("unknown role {other}"),
    }
}

fn moved_or(dir: &Path, moved: &Path) -> PathBuf {
    if dir.exists() {
        dir.to_owned()
    } else {
        moved.to_owned()
    }
}

/// How many descriptors of this process refer to `file`'s inode.
fn descriptors_of(file: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::metadata(file).expect("stat");
    std::fs::read_dir("/proc/self/fd")
        .expect("list fds")
        .flatten()
        .filter(|e| {
            std::fs::metadata(e.path())
                .is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino())
        })
        .count()
}

fn fork_role(dir: &Path) {
    let cache = open(dir);
    cache.set("before", &"parent", None).expect("set");
    // The parent reads first, so this thread holds whatever per-thread LMDB state it uses.
    assert_eq!(
        cache
            .get::<String>("before")
            .expect("get")
            .expect("present")
            .value,
        "parent"
    );
    let exit_by = std::env::var("EXIT_BY").expect("EXIT_BY");
    // SAFETY: this child process is single-threaded (run with --test-threads=1), apart
    // from the cache's own flusher thread, which holds no lock the child needs at fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(|| {
            let got = cache.get::<String>("before").expect("child get");
            assert_eq!(got.expect("present").value, "parent");
            cache.set("from-child", &"child", None).expect("child set");
            let fresh = open(dir);
            let v = fresh
                .get_or_load("loaded-in-child", || Ok::<_, std::io::Error>(7u32), None)
                .expect("child get_or_load");
            assert_eq!(v.value, 7);
            if exit_by == "drop" {
                drop(fresh);
                drop(cache);
            }
        })
        .map_or(3, |()| 0);
        // `exit` runs atexit handlers (as a child returning from main would).
        // SAFETY: ends the child.
        unsafe { libc::exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child we forked.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "forked child failed ({status})"
    );
    // The parent still has the cache open: nobody may take the open lock exclusively.
    let probe = std::fs::File::open(dir.join(".open.lock")).expect("open lock file");
    let exclusive = probe.try_lock().is_ok();
    println!("EXCLUSIVE_POSSIBLE {exclusive}");
    let child_value = cache
        .get::<String>("from-child")
        .expect("get")
        .map(|v| v.value);
    cache
        .set("after", &"parent again", None)
        .expect("parent set after fork");
    println!("CHILD_VALUE {child_value:?}");
}

// ---------------------------------------------------------------- 1, 2: nested loads

#[test]
fn memoized_fib_400_deep_loads_each_key_once_without_deadlock() {
    fn fib(cache: &DiskCache, n: u64, calls: &std::sync::atomic::AtomicU64) -> u64 {
        cache
            .get_or_load(
                &format!("fib-{n}"),
                || {
                    calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let v = if n < 2 {
                        n
                    } else {
                        fib(cache, n - 1, calls).wrapping_add(fib(cache, n - 2, calls))
                    };
                    Ok::<_, std::io::Error>(v)
                },
                None,
            )
            .expect("fib")
            .value
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path());
    let (value, loads) = within(Duration::from_secs(120), move || {
        let calls = std::sync::atomic::AtomicU64::new(0);
        let v = fib(&cache, 400, &calls);
        (v, calls.into_inner())
    });
    let expected = (0..400)
        .fold((0u64, 1u64), |(a, b), _| (b, a.wrapping_add(b)))
        .0;
    assert_eq!(value, expected);
    assert_eq!(loads, 401, "each of fib(0..=400) loads exactly once");
}

#[test]
fn two_processes_each_running_a_300_deep_chain_of_distinct_keys_both_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let children: Vec<_> = ["a", "b"]
        .iter()
        .map(|prefix| {
            child("child_main", "chain")
                .env("CACHE", tmp.path())
                .env("PREFIX", prefix)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let expected: u64 = (0..300).sum();
    for c in children {
        let out = wait_or_kill(c, Duration::from_secs(150), "chain process");
        assert_success(&out, "chain process");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("TOTAL {expected}")), "{text}");
    }
}

#[test]
fn a_loader_asking_for_its_own_key_gets_a_recursive_error_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path());
    let err = within(Duration::from_secs(30), move || {
        let err = cache
            .get_or_load(
                "self",
                || {
                    cache
                        .get_or_load("self", || Ok::<_, std::io::Error>(1u32), None)
                        .map(|v| v.value)
                },
                None,
            )
            .unwrap_err();
        // Nothing was stored, and the key can be loaded afterwards.
        let v = cache
            .get_or_load("self", || Ok::<_, std::io::Error>(2u32), None)
            .unwrap();
        (err, v.value)
    });
    let (err, after) = err;
    let Error::Loader { key, source } = err else {
        panic!("expected the loader's error, got {err:?}");
    };
    assert_eq!(key, "self");
    let inner = source.downcast_ref::<Error>().expect("inner dbx error");
    assert!(
        matches!(inner, Error::Recursive { key } if key == "self"),
        "{inner:?}"
    );
    assert!(inner.to_string().contains("\"self\""), "{inner}");
    assert_eq!(after, 2);
}

// ---------------------------------------------------------------- 3: fork

fn run_fork_role(exit_by: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let text = run_role(
        "fork",
        tmp.path(),
        &[("EXIT_BY", exit_by)],
        Duration::from_secs(60),
    );
    assert!(text.contains("EXCLUSIVE_POSSIBLE false"), "{text}");
    assert!(text.contains("CHILD_VALUE Some(\"child\")"), "{text}");
    // And a fresh process sees what both wrote.
    let cache = open(tmp.path());
    for (key, value) in [
        ("before", "parent"),
        ("from-child", "child"),
        ("after", "parent again"),
    ] {
        assert_eq!(cache.get::<String>(key).unwrap().unwrap().value, value);
    }
    assert_eq!(
        cache.get::<u32>("loaded-in-child").unwrap().unwrap().value,
        7
    );
}

#[test]
fn a_forked_child_uses_the_inherited_handle_and_exits_without_releasing_the_parents_lock() {
    run_fork_role("exit");
}

#[test]
fn a_forked_child_that_drops_its_handles_leaves_the_parents_cache_open() {
    run_fork_role("drop");
}

// ---------------------------------------------------------------- 4: thousands of threads

#[test]
fn two_thousand_threads_reading_while_all_alive_get_no_errors() {
    const THREADS: usize = 2000;
    let tmp = tempfile::tempdir().unwrap();
    let cache = Arc::new(open(tmp.path()));
    cache.set("shared", &"value", None).unwrap();
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (cache, barrier) = (cache.clone(), barrier.clone());
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    let first = cache.get::<String>("shared");
                    barrier.wait(); // every thread has read and is still alive
                    let second = cache.get::<String>("shared");
                    [first, second]
                        .into_iter()
                        .filter(|r| !matches!(r, Ok(Some(v)) if v.value == "value"))
                        .map(|r| format!("{r:?}"))
                        .collect::<Vec<_>>()
                })
                .expect("spawn")
        })
        .collect();
    let errors: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("join"))
        .collect();
    assert!(
        errors.is_empty(),
        "{} failed reads, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
}

// ---------------------------------------------------------------- 5: reboots

/// Starts a writer process, lets it live `quiet` after its write, then SIGKILLs it.
fn kill_writer_after(dir: &Path, quiet: Duration) {
    let mut writer = child("child_main", "write-then-idle")
        .env("CACHE", dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_line(&mut writer, "WROTE");
    std::thread::sleep(quiet);
    sigkill(&writer);
    writer.wait().unwrap();
}

#[test]
fn a_static_handle_left_by_process_exit_survives_a_reboot() {
    let tmp = tempfile::tempdir().unwrap();
    run_role("static-exit", tmp.path(), &[], Duration::from_secs(60));
    simulate_reboot(tmp.path());
    let got = open(tmp.path()).get::<String>("kept").unwrap();
    assert_eq!(got.map(|v| v.value).as_deref(), Some("through exit"));
}

#[test]
fn a_writer_killed_after_a_second_of_quiet_leaves_a_cache_that_survives_a_reboot() {
    let tmp = tempfile::tempdir().unwrap();
    kill_writer_after(tmp.path(), Duration::from_millis(1500));
    simulate_reboot(tmp.path());
    let got = open(tmp.path()).get::<String>("kept").unwrap();
    assert_eq!(got.map(|v| v.value).as_deref(), Some("through a kill"));
}

#[test]
fn a_cache_dirty_from_another_boot_is_still_reset() {
    // The other side of the window: a writer killed right after writing (no flush yet)
    // leaves `dirty`, and after a reboot that cache is not trusted.
    let tmp = tempfile::tempdir().unwrap();
    kill_writer_after(tmp.path(), Duration::ZERO);
    let state = std::fs::read_to_string(tmp.path().join(".state")).unwrap();
    if !state.contains("dirty") {
        // The flusher beat the kill (it runs 200 ms after the write): nothing to show.
        eprintln!("skipped: the writer flushed before it was killed ({state:?})");
        return;
    }
    simulate_reboot(tmp.path());
    assert!(open(tmp.path()).get::<String>("kept").unwrap().is_none());
}

// ---------------------------------------------------------------- 6: crash-atomic reset

#[test]
fn waiters_behind_a_reset_killed_half_way_keep_what_they_write() {
    let tmp = tempfile::tempdir().unwrap();
    open(tmp.path()).set("old", &"old", None).unwrap();
    // `open` above registered the directory in this process; the children do the work.
    let mut resetter = child("child_main", "half-reset")
        .env("CACHE", tmp.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_line(&mut resetter, "HOLDING");
    let waiters: Vec<_> = (0..4)
        .map(|i| {
            child("child_main", "waiter")
                .env("CACHE", tmp.path())
                .env("KEY", format!("w{i}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300)); // the waiters queue on the open lock
    sigkill(&resetter);
    resetter.wait().unwrap();
    for w in waiters {
        let out = wait_or_kill(w, Duration::from_secs(60), "waiter");
        assert_success(&out, "waiter");
    }
    // The next opener (a fresh process) finds every waiter's value.
    for i in 0..4 {
        let key = format!("w{i}");
        let text = run_role(
            "reader",
            tmp.path(),
            &[("KEY", &key)],
            Duration::from_secs(30),
        );
        assert!(text.contains(&format!("GOT Some(\"w{i}\")")), "{text}");
    }
}

// ---------------------------------------------------------------- 7: moved, removed

#[test]
fn a_directory_opened_again_by_its_new_path_after_mv_shares_one_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let moved = tmp.path().join("after");
    let text = run_role(
        "moved",
        &tmp.path().join("before"),
        &[("MOVED", moved.to_str().unwrap())],
        Duration::from_secs(60),
    );
    let counts: Vec<usize> = text
        .lines()
        .find_map(|l| l.strip_prefix("DESCRIPTORS "))
        .expect("counts")
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(
        counts[0], counts[1],
        "opening the moved directory opened data.mdb again"
    );
}

#[test]
fn after_rm_rf_the_old_handle_refuses_writes_and_a_new_handle_is_shared() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let old = open(&dir);
    old.set("k", &"before".to_string(), None).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let err = old.set("k", &"lost".to_string(), None).unwrap_err();
    assert!(matches!(err, Error::Removed { .. }), "{err:?}");
    let err = old
        .get_or_load("g", || Ok::<_, std::io::Error>(1u32), None)
        .unwrap_err();
    assert!(matches!(err, Error::Removed { .. }), "{err:?}");
    let new = open(&dir);
    assert!(new.get::<String>("k").unwrap().is_none(), "a fresh cache");
    new.set("k", &"after".to_string(), None).unwrap();
    let text = run_role("reader", &dir, &[("KEY", "k")], Duration::from_secs(30));
    assert!(text.contains("GOT Some(\"after\")"), "{text}");
}

// ---------------------------------------------------------------- 8: huge values

#[test]
fn a_value_over_4_gib_is_refused_not_truncated() {
    let tmp = tempfile::tempdir().unwrap();
    let text = run_role("huge", tmp.path(), &[], Duration::from_secs(300));
    assert!(text.contains("REFUSED"), "{text}");
    assert!(text.contains("4 GiB"), "the error says the limit: {text}");
}

// ---------------------------------------------------------------- 9, 10: schema, clocks

#[test]
fn an_entry_stored_under_an_older_type_is_reloaded_by_get_or_load() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct V1 {
        name: String,
    }
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct V2 {
        name: String,
        size: u64,
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path());
    cache.set("k", &V1 { name: "a".into() }, None).unwrap();
    let err = cache.get::<V2>("k").unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    let v = cache
        .get_or_load(
            "k",
            || {
                Ok::<_, std::io::Error>(V2 {
                    name: "b".into(),
                    size: 2,
                })
            },
            None,
        )
        .unwrap();
    assert_eq!(v.value.size, 2);
    assert_eq!(cache.get::<V2>("k").unwrap().unwrap().value.name, "b");
}

#[test]
fn an_entry_loaded_in_the_future_is_stale_for_get_or_load() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path());
    let future = SystemTime::now() + Duration::from_secs(3600);
    cache
        .set_value(
            "k",
            &DiskCacheValue::new("skewed".to_string(), future, None),
        )
        .unwrap();
    let v = cache
        .get_or_load(
            "k",
            || Ok::<_, std::io::Error>("reloaded".to_string()),
            Some(Duration::from_secs(600)),
        )
        .unwrap();
    assert_eq!(v.value, "reloaded");
    // Within the tolerance (a second), a future load time is fine.
    let soon = SystemTime::now() + Duration::from_millis(200);
    cache
        .set_value("j", &DiskCacheValue::new("close".to_string(), soon, None))
        .unwrap();
    let v = cache
        .get_or_load(
            "j",
            || Ok::<_, std::io::Error>("reloaded".to_string()),
            Some(Duration::from_secs(600)),
        )
        .unwrap();
    assert_eq!(v.value, "close");
}

// ---------------------------------------------------------------- 11: apparent size

fn apparent_size(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            apparent_size(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

#[test]
fn a_cache_with_one_entry_is_small_to_ls_and_tar() {
    let tmp = tempfile::tempdir().unwrap();
    open(tmp.path()).set("k", &"v", None).unwrap();
    let size = apparent_size(tmp.path());
    assert!(size < 2 << 20, "apparent size {size} bytes for one entry");
}

#[test]
fn a_cache_limited_to_20_mib_looks_about_20_mib_to_ls_and_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = DiskCache::builder()
        .directory(tmp.path())
        .size_limit(20 << 20)
        .build()
        .unwrap();
    // 60 MiB through it: small values (in the index) and large ones (in files).
    for i in 0..2000u32 {
        let len = if i % 4 == 0 { 60_000 } else { 20_000 };
        cache
            .set(
                &format!("k{i}"),
                &serde_bytes::ByteBuf::from(vec![i as u8; len]),
                None,
            )
            .unwrap();
    }
    let size = apparent_size(tmp.path());
    assert!(
        size <= 2 * (20 << 20) + (4 << 20),
        "apparent size {size} bytes for a 20 MiB limit"
    );
}

// ---------------------------------------------------------------- 12: descriptors

#[test]
fn a_command_started_by_a_process_with_an_open_cache_inherits_none_of_its_files() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path());
    cache.set("k", &"v", None).unwrap();
    let _ = cache
        .get_or_load("g", || Ok::<_, std::io::Error>(1u8), None)
        .unwrap();
    let out = std::process::Command::new("sh")
        .args(["-c", "ls -l /proc/$$/fd"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    let root = tmp.path().canonicalize().unwrap();
    let leaked: Vec<&str> = listing
        .lines()
        .filter(|l| l.contains(root.to_str().unwrap()))
        .collect();
    assert!(leaked.is_empty(), "inherited: {leaked:?}");
}

// ---------------------------------------------------------------- reading writes nothing

/// Every file and directory under `dir` with its inode, length and modification time,
/// except the two files that are shared memory by design (LMDB's reader table and our
/// hit counters: updating them is how readers coordinate, not a write of cache data).
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, u64, SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            stack.extend(
                std::fs::read_dir(&path)
                    .unwrap()
                    .flatten()
                    .map(|e| e.path()),
            );
        }
        let name = path.file_name().unwrap_or_default();
        if name == "lock.mdb" || name == ".counters" {
            out.push((path, meta.ino(), meta.len(), SystemTime::UNIX_EPOCH));
            continue;
        }
        out.push((path, meta.ino(), meta.len(), meta.modified().unwrap()));
    }
    out.sort();
    out
}

#[test]
fn a_process_that_only_reads_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let writer = open(&dir);
    writer.set("k", &"v".to_string(), None).unwrap();
    drop(writer); // closes and flushes: the cache is clean and closed
    // Closed for sure (the flusher thread may have held the store a moment longer): nobody
    // holds the open lock.
    let open_lock = std::fs::File::open(dir.join(".open.lock")).unwrap();
    let closed = (0..500).any(|_| {
        let free = open_lock.try_lock().is_ok();
        if !free {
            std::thread::sleep(Duration::from_millis(10));
        }
        free
    });
    assert!(closed, "the writer's handle never closed");
    open_lock.unlock().unwrap();
    let before = snapshot(&dir);
    std::thread::sleep(Duration::from_millis(20)); // a write now would show in mtimes
    run_role("read-only", &dir, &[], Duration::from_secs(30));
    assert_eq!(snapshot(&dir), before);
}

// ---------------------------------------------------------------- also

#[test]
fn len_and_is_empty_count_only_unexpired_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path());
    assert!(cache.is_empty().unwrap());
    cache.set("a", &1u8, None).unwrap();
    cache
        .set("b", &1u8, Some(Duration::from_millis(50)))
        .unwrap();
    cache
        .set("c", &1u8, Some(Duration::from_secs(3600)))
        .unwrap();
    assert_eq!(cache.len().unwrap(), 3);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(cache.len().unwrap(), 2);
    cache.delete("a").unwrap();
    cache.delete("c").unwrap();
    assert!(cache.is_empty().unwrap(), "only an expired entry is left");
}

#[test]
fn a_full_index_under_ulimit_f_names_the_real_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let text = run_role("fsize", tmp.path(), &[], Duration::from_secs(120));
    assert!(text.contains("FULL"), "{text}");
    assert!(text.contains("ulimit -f"), "{text}");
    assert!(!text.contains("32 GiB"), "{text}");
}
