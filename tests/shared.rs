//! The shared tier (issue 13) against a real `redis-server` that each test starts on a free
//! 127.0.0.1 port. "Machines" are separate cache directories used by separate processes
//! (this test binary re-invoked, `common::child`); holders are SIGKILLed and SIGSTOPped,
//! the server is paused, killed and restarted. Without `redis-server` every test prints
//! why it is skipped.
#![cfg(feature = "shared")]

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::{
    append_line, assert_success, child, child_role, lines, sigkill, wait_for_line, wait_or_kill,
};
use dbx_concurio::Error;
use dbx_concurio::caches::DiskCache;
use redis_server::RedisServer;
use serde_bytes::ByteBuf;

/// A machine's cache: its own directory, the fleet's server, cache name `c`.
fn machine(dir: &Path, url: &str, lease: Duration) -> DiskCache {
    DiskCache::builder()
        .directory(dir)
        .name("c")
        .fallback(false)
        .shared(url)
        .shared_lease(lease)
        .shared_timeouts(Duration::from_millis(300), Duration::from_millis(500))
        .build()
        .expect("open cache")
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child env {name}"))
}

fn lease_from_env() -> Duration {
    Duration::from_millis(env("LEASE_MS").parse().expect("LEASE_MS"))
}

/// A loader that must not run (the value is expected from the shared tier).
fn no_load() -> Result<String, std::io::Error> {
    Err(std::io::Error::other(
        "the loader ran, but the value should have been shared",
    ))
}

/// The value of key `i` in the 1000-key test: sizes on both sides of the 32 KiB inline
/// limit, contents that depend on the key (so a torn or swapped value shows).
fn value_of(i: usize) -> ByteBuf {
    let len = [10, 1000, 40_000][i % 3] + i;
    ByteBuf::from(
        (0..len)
            .map(|j| ((i * 31 + j) % 251) as u8)
            .collect::<Vec<u8>>(),
    )
}

// ---------------------------------------------------------------- child roles

#[test]
fn child_main() {
    let Some(role) = child_role() else { return };
    let cache = machine(Path::new(&env("CACHE")), &env("REDIS"), lease_from_env());
    let counter = PathBuf::from(env("COUNTER"));
    match role.as_str() {
        // get_or_load of KEY; the loader records itself and takes a while.
        "load" => {
            let v = cache
                .get_or_load(
                    &env("KEY"),
                    || {
                        append_line(&counter, &std::process::id().to_string());
                        std::thread::sleep(Duration::from_millis(300));
                        Ok::<_, std::io::Error>(env("VALUE"))
                    },
                    None,
                )
                .expect("get_or_load");
            println!("VALUE {}", v.value);
        }
        // The loader says LOADING, then waits for the file GO (it may be SIGKILLed or
        // SIGSTOPped meanwhile); prints its value and the shared tier's counters.
        "hold" => {
            let go = PathBuf::from(env("GO"));
            let v = cache
                .get_or_load(
                    &env("KEY"),
                    || {
                        append_line(&counter, &std::process::id().to_string());
                        println!("LOADING");
                        std::io::stdout().flush().expect("flush");
                        while !go.exists() {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Ok::<_, std::io::Error>(env("VALUE"))
                    },
                    None,
                )
                .expect("get_or_load");
            let stats = cache.stats().expect("stats").shared.expect("shared stats");
            println!("VALUE {}", v.value);
            println!("FENCED {}", stats.fenced);
        }
        // get_or_load of 1000 keys in an order of its own; checks every value.
        "thousand" => {
            let offset: usize = env("OFFSET").parse().expect("OFFSET");
            for n in 0..1000 {
                let i = (n * 7 + offset) % 1000; // 7 is coprime to 1000: a permutation
                let v = cache
                    .get_or_load(
                        &format!("key-{i}"),
                        || {
                            append_line(&counter, &i.to_string());
                            Ok::<_, std::io::Error>(value_of(i))
                        },
                        Some(Duration::from_secs(3600)),
                    )
                    .expect("get_or_load");
                assert_eq!(v.value, value_of(i), "key-{i} torn or swapped");
            }
            println!("DONE");
        }
        // The everyday calls of one machine: set, get, delete KEY.
        "set" => cache.set(&env("KEY"), &env("VALUE"), None).expect("set"),
        "get" => match cache.get::<String>(&env("KEY")).expect("get") {
            Some(v) => {
                println!("GOT {}", v.value);
                let at = v.load_timestamp.duration_since(std::time::UNIX_EPOCH);
                println!("AT {}", at.expect("after 1970").as_nanos());
            }
            None => println!("GOT none"),
        },
        "delete" => println!("DELETED {}", cache.delete(&env("KEY")).expect("delete")),
        // get_or_load of `key-0..key-9`, then `get` of MISSING absent keys; prints this
        // process's shared counters.
        "ten" => {
            for i in 0..10 {
                cache
                    .get_or_load(&format!("key-{i}"), || Ok::<_, std::io::Error>(i), None)
                    .expect("get_or_load");
            }
            let missing: usize = env("MISSING").parse().expect("MISSING");
            for i in 0..missing {
                assert_eq!(cache.get::<i32>(&format!("absent-{i}")).expect("get"), None);
            }
            let s = cache.stats().expect("stats").shared.expect("shared");
            println!("STATS {} {} {} {}", s.hits, s.misses, s.stores, s.fenced);
        }
        // Three shared misses, then a fork: the child (which inherits the uncounted three)
        // makes no call and drops its handle, as a forked worker that exits would.
        "fork_counts" => {
            for i in 0..3 {
                assert_eq!(cache.get::<i32>(&format!("gone-{i}")).expect("get"), None);
            }
            // SAFETY: this process is single-threaded (--test-threads=1) apart from the
            // cache's own threads, which hold no lock the child needs at fork.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                drop(cache);
                // SAFETY: ends the child.
                unsafe { libc::exit(0) };
            }
            let mut status = 0;
            // SAFETY: waits for the child we forked.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "child {status}"
            );
            println!("FORKED ok");
        }
        // `load`, from async code: the loader is a future, awaited on a tokio runtime.
        #[cfg(feature = "tokio")]
        "load_async" => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_time()
                .build()
                .expect("runtime");
            let v = runtime
                .block_on(cache.get_or_load_async(
                    &env("KEY"),
                    || async {
                        append_line(&counter, &std::process::id().to_string());
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok::<_, std::io::Error>(env("VALUE"))
                    },
                    None,
                ))
                .expect("get_or_load_async");
            println!("VALUE {}", v.value);
        }
        other => panic!("unknown role {other}"),
    }
}

/// A child playing `role` on machine `dir`.
fn spawn_role(role: &str, dir: &Path, server: &RedisServer, envs: &[(&str, String)]) -> Child {
    let mut cmd = child("child_main", role);
    cmd.env("CACHE", dir)
        .env("REDIS", server.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn child")
}

/// The environment of a `load` or `hold` child: key, its value, the load counter, the
/// lease, and the file a `hold` loader waits for.
fn key_env(
    key: &str,
    value: &str,
    counter: &Path,
    lease: Duration,
    go: &Path,
) -> Vec<(&'static str, String)> {
    vec![
        ("KEY", key.to_string()),
        ("VALUE", value.to_string()),
        ("COUNTER", counter.display().to_string()),
        ("LEASE_MS", lease.as_millis().to_string()),
        ("GO", go.display().to_string()),
    ]
}

/// Waits for the child (SIGKILLing it and failing after `limit`); it must succeed.
fn finish(child: Child, limit: Duration, what: &str) -> Output {
    let out = wait_or_kill(child, limit, what);
    assert_success(&out, what);
    out
}

/// The value after `NAME ` in a child's output.
fn said(out: &Output, name: &str) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} line in {text}"))
        .to_owned()
}

// ---------------------------------------------------------------- tests

/// Starts one loader per role (`load`, `load_async`), alternating between two machines,
/// all for the same key; returns the loads they ran and the values they got.
fn race_loaders(server: &RedisServer, roles: &[&str]) -> (Vec<String>, Vec<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let counter = tmp.path().join("loads");
    let children: Vec<_> = roles
        .iter()
        .enumerate()
        .map(|(i, role)| {
            let dir = tmp.path().join(format!("machine{}", i % 2));
            let lease = Duration::from_secs(5);
            let envs = key_env("the-key", &format!("from-{i}"), &counter, lease, &counter);
            spawn_role(role, &dir, server, &envs)
        })
        .collect();
    let values = children
        .into_iter()
        .map(|c| said(&finish(c, Duration::from_secs(60), "loader"), "VALUE"))
        .collect();
    (lines(&counter), values)
}

#[test]
fn eight_processes_on_two_machines_load_a_key_once() {
    let Some(server) =
        RedisServer::start_or_skip("eight_processes_on_two_machines_load_a_key_once")
    else {
        return;
    };
    let (loads, values) = race_loaders(&server, &["load"; 8]);
    assert_eq!(loads.len(), 1, "loads: {loads:?}");
    assert!(values.iter().all(|v| v == &values[0]), "{values:?}");
}

#[test]
fn a_local_miss_is_served_from_the_shared_tier_with_the_entrys_own_stamps() {
    let Some(server) = RedisServer::start_or_skip(
        "a_local_miss_is_served_from_the_shared_tier_with_the_entrys_own_stamps",
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = machine(&tmp.path().join("a"), &server.url(), Duration::from_secs(5));
    let b = machine(&tmp.path().join("b"), &server.url(), Duration::from_secs(5));
    let loaded = a
        .get_or_load(
            "k",
            || Ok::<_, std::io::Error>("v".to_string()),
            Some(Duration::from_secs(60)),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let shared = b
        .get_or_load("k", no_load, Some(Duration::from_secs(60)))
        .unwrap();
    assert_eq!(
        shared, loaded,
        "value, load time and expiry travel together"
    );
    let stats = b.stats().unwrap().shared.unwrap();
    assert_eq!((stats.hits, stats.misses), (1, 0));
    // The local tier is filled (in the background) with the same stamps; then it serves
    // with the server paused, no network call made.
    // (`contains` looks at the local tier only; `get` would read through.)
    let start = Instant::now();
    while !b.contains("k").unwrap() {
        assert!(start.elapsed() < Duration::from_secs(10), "never filled");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.pause();
    assert_eq!(b.get::<String>("k").unwrap(), Some(loaded.clone()));
    let again = b
        .get_or_load("k", no_load, Some(Duration::from_secs(60)))
        .unwrap();
    assert_eq!(again, loaded);
    assert_eq!(b.stats().unwrap().shared.unwrap().errors, 0);
    server.resume();
}

#[test]
fn a_sigkilled_lease_holder_is_replaced_within_the_lease() {
    let Some(server) =
        RedisServer::start_or_skip("a_sigkilled_lease_holder_is_replaced_within_the_lease")
    else {
        return;
    };
    let lease = Duration::from_secs(2);
    let tmp = tempfile::tempdir().unwrap();
    let counter = tmp.path().join("loads");
    let never = tmp.path().join("never");
    let envs = |value: &str| key_env("k", value, &counter, lease, &never);
    let mut holder = spawn_role("hold", &tmp.path().join("m0"), &server, &envs("dead"));
    wait_for_line(&mut holder, "LOADING");
    let mut waiter = spawn_role("load", &tmp.path().join("m1"), &server, &envs("alive"));
    // A live holder renews its lease: after more than two leases the waiter still waits.
    std::thread::sleep(lease * 5 / 2);
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "the waiter did not wait for a live holder"
    );
    sigkill(&holder);
    let killed = Instant::now();
    let _ = holder.wait();
    while waiter.try_wait().unwrap().is_none() {
        assert!(
            killed.elapsed() < lease + Duration::from_secs(3),
            "the waiter was still blocked {:?} after the holder died (lease {lease:?})",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = finish(waiter, Duration::from_secs(1), "waiter");
    assert_eq!(said(&out, "VALUE"), "alive");
    assert_eq!(
        lines(&counter).len(),
        2,
        "the dead holder's load and the waiter's"
    );
}

#[test]
fn a_holder_paused_past_its_lease_cannot_overwrite_the_newer_value() {
    let Some(server) = RedisServer::start_or_skip(
        "a_holder_paused_past_its_lease_cannot_overwrite_the_newer_value",
    ) else {
        return;
    };
    let lease = Duration::from_secs(1);
    let tmp = tempfile::tempdir().unwrap();
    let counter = tmp.path().join("loads");
    let go = tmp.path().join("go");
    let envs = |value: &str| key_env("k", value, &counter, lease, &go);
    let mut late = spawn_role("hold", &tmp.path().join("m0"), &server, &envs("late"));
    wait_for_line(&mut late, "LOADING");
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    assert_eq!(
        unsafe { libc::kill(late.id() as libc::pid_t, libc::SIGSTOP) },
        0
    );
    std::thread::sleep(lease + Duration::from_millis(500));
    let newer = spawn_role("load", &tmp.path().join("m1"), &server, &envs("newer"));
    let newer = finish(newer, Duration::from_secs(30), "newer loader");
    assert_eq!(said(&newer, "VALUE"), "newer");
    std::fs::write(&go, "").unwrap();
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::kill(late.id() as libc::pid_t, libc::SIGCONT) },
        0
    );
    let late = finish(late, Duration::from_secs(30), "late loader");
    assert_eq!(
        said(&late, "VALUE"),
        "late",
        "the late caller still gets its own value"
    );
    assert_eq!(said(&late, "FENCED"), "1", "its store was refused");
    let third = machine(&tmp.path().join("m2"), &server.url(), lease);
    assert_eq!(
        third.get_or_load("k", no_load, None).unwrap().value,
        "newer"
    );
}

#[test]
fn redis_paused_then_killed_then_restarted_calls_stay_bounded_degrade_and_recover() {
    let Some(mut server) = RedisServer::start_or_skip(
        "redis_paused_then_killed_then_restarted_calls_stay_bounded_degrade_and_recover",
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url();
    let a = machine(&tmp.path().join("a"), &url, Duration::from_secs(2));
    let required = DiskCache::builder()
        .directory(tmp.path().join("r"))
        .shared(&url)
        .shared_required(true)
        .shared_timeouts(Duration::from_millis(300), Duration::from_millis(500))
        .build()
        .unwrap();
    let load = |v: &str| {
        let v = v.to_string();
        move || Ok::<_, std::io::Error>(v)
    };
    let bounded = |what: &str, f: &dyn Fn()| {
        let start = Instant::now();
        f();
        // connect 0.3 s + command 0.5 s per call; a hang would be 30 s and more.
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what} took {:?}",
            start.elapsed()
        );
    };
    a.get_or_load("warm", load("w"), None).unwrap();

    server.pause();
    bounded("a load with the server paused", &|| {
        assert_eq!(a.get_or_load("p1", load("p1"), None).unwrap().value, "p1");
    });
    bounded("a second load in the same outage", &|| {
        assert_eq!(a.get_or_load("p2", load("p2"), None).unwrap().value, "p2");
    });
    bounded("a required cache", &|| {
        let err = required.get_or_load("r", load("r"), None).unwrap_err();
        assert!(matches!(err, Error::Shared { .. }), "{err}");
    });
    let stats = a.stats().unwrap().shared.unwrap();
    assert!(!stats.available);
    assert_eq!(stats.outages, 1, "one outage, warned once");
    assert!(stats.errors >= 1);

    server.kill();
    bounded("a load with the server dead", &|| {
        assert_eq!(a.get_or_load("k1", load("k1"), None).unwrap().value, "k1");
    });
    assert_eq!(
        a.get("p1").unwrap().map(|v| v.value),
        Some("p1".to_string())
    );

    server.restart();
    let start = Instant::now();
    let mut n = 0;
    while !a.stats().unwrap().shared.unwrap().available || n == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never reconnected"
        );
        std::thread::sleep(Duration::from_millis(100));
        n += 1;
        a.get_or_load(&format!("back{n}"), load("back"), None)
            .unwrap();
    }
    // Stored in the shared tier again: another machine reads it without loading.
    let b = machine(&tmp.path().join("b"), &url, Duration::from_secs(2));
    assert_eq!(
        b.get_or_load(&format!("back{n}"), no_load, None)
            .unwrap()
            .value,
        "back"
    );
    assert_eq!(a.stats().unwrap().shared.unwrap().outages, 1);
    assert_eq!(
        required.get_or_load("r", load("r"), None).unwrap().value,
        "r"
    );
}

#[test]
fn a_thousand_keys_from_four_processes_on_two_machines_nothing_lost_or_torn() {
    let Some(server) = RedisServer::start_or_skip(
        "a_thousand_keys_from_four_processes_on_two_machines_nothing_lost_or_torn",
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let counter = tmp.path().join("loads");
    let children: Vec<_> = (0..4)
        .map(|i| {
            let envs = [
                ("OFFSET", (i * 250).to_string()),
                ("COUNTER", counter.display().to_string()),
                ("LEASE_MS", "10000".to_string()),
            ];
            spawn_role(
                "thousand",
                &tmp.path().join(format!("m{}", i % 2)),
                &server,
                &envs,
            )
        })
        .collect();
    for c in children {
        finish(c, Duration::from_secs(300), "thousand");
    }
    let loads = lines(&counter);
    let unique: std::collections::BTreeSet<_> = loads.iter().collect();
    assert_eq!(
        (loads.len(), unique.len()),
        (1000, 1000),
        "each key loaded exactly once"
    );
    // Nothing lost in the shared tier: a third machine reads all 1000 without loading.
    let third = machine(
        &tmp.path().join("m2"),
        &server.url(),
        Duration::from_secs(10),
    );
    for i in 0..1000 {
        let v = third
            .get_or_load(
                &format!("key-{i}"),
                || Err::<ByteBuf, _>(std::io::Error::other("lost")),
                Some(Duration::from_secs(3600)),
            )
            .unwrap();
        assert_eq!(v.value, value_of(i), "key-{i}");
    }
}

#[test]
fn values_over_the_size_limit_stay_local_and_damaged_entries_are_loaded_again() {
    let Some(server) = RedisServer::start_or_skip(
        "values_over_the_size_limit_stay_local_and_damaged_entries_are_loaded_again",
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let small = |dir: &str| {
        DiskCache::builder()
            .directory(tmp.path().join(dir))
            .name("c")
            .shared(server.url())
            .shared_max_value(100)
            .build()
            .unwrap()
    };
    let (a, b) = (small("a"), small("b"));
    let big = "x".repeat(200);
    a.get_or_load("big", || Ok::<_, std::io::Error>(big.clone()), None)
        .unwrap();
    assert_eq!(a.stats().unwrap().shared.unwrap().local_only, 1);
    let v = b
        .get_or_load(
            "big",
            || Ok::<_, std::io::Error>("b's own".to_string()),
            None,
        )
        .unwrap();
    assert_eq!(
        v.value, "b's own",
        "the big value never reached the shared tier"
    );

    // Another program's bytes under our key name: a miss, loaded again and overwritten.
    let client = redis::Client::open(server.url()).unwrap();
    let mut con = client.get_connection().unwrap();
    redis::cmd("SET")
        .arg("concurio:c:{small}:v")
        .arg("CQS1 not an entry")
        .exec(&mut con)
        .unwrap();
    let v = a
        .get_or_load(
            "small",
            || Ok::<_, std::io::Error>("fresh".to_string()),
            None,
        )
        .unwrap();
    assert_eq!(v.value, "fresh");
    assert_eq!(
        b.get_or_load("small", no_load, None).unwrap().value,
        "fresh"
    );
}

#[test]
fn passwords_never_appear_in_debug_output_stats_or_errors() {
    let url = "redis://user:s3cret@127.0.0.1:1/0";
    let builder = DiskCache::builder().shared(url);
    assert!(!format!("{builder:?}").contains("s3cret"));
    let tmp = tempfile::tempdir().unwrap();
    let cache = builder
        .directory(tmp.path())
        .shared_required(true)
        .shared_timeouts(Duration::from_millis(200), Duration::from_millis(200))
        .build()
        .unwrap();
    let err = cache
        .get_or_load("k", || Ok::<_, std::io::Error>(1), None)
        .unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("***@127.0.0.1:1"), "{shown}");
    assert!(!shown.contains("s3cret"), "{shown}");
    let stats = cache.stats().unwrap().shared.unwrap();
    assert!(!stats.endpoint.contains("s3cret"));
}

#[test]
fn invalidate_reloads_everywhere_and_fences_out_a_loader_already_running() {
    let Some(server) = RedisServer::start_or_skip(
        "invalidate_reloads_everywhere_and_fences_out_a_loader_already_running",
    ) else {
        return;
    };
    let lease = Duration::from_secs(5);
    let tmp = tempfile::tempdir().unwrap();
    let a = machine(&tmp.path().join("a"), &server.url(), lease);
    let b = machine(&tmp.path().join("b"), &server.url(), lease);
    a.get_or_load("k", || Ok::<_, std::io::Error>("v1".to_string()), None)
        .unwrap();
    assert_eq!(b.get_or_load("k", no_load, None).unwrap().value, "v1");
    assert!(b.invalidate("k").unwrap());
    let v2 = b.get_or_load("k", || Ok::<_, std::io::Error>("v2".to_string()), None);
    assert_eq!(
        v2.unwrap().value,
        "v2",
        "loaded again, not served from the shared tier"
    );

    let go = tmp.path().join("go");
    let envs = key_env("j", "stale", &tmp.path().join("loads"), lease, &go);
    let mut holder = spawn_role("hold", &tmp.path().join("h"), &server, &envs);
    wait_for_line(&mut holder, "LOADING");
    assert!(!b.invalidate("j").unwrap(), "nothing stored yet");
    std::fs::write(&go, "").unwrap();
    let out = finish(holder, Duration::from_secs(30), "holder");
    assert_eq!(
        said(&out, "VALUE"),
        "stale",
        "its caller still gets its value"
    );
    assert_eq!(
        said(&out, "FENCED"),
        "1",
        "but it is not stored after the invalidation"
    );
    let c = machine(&tmp.path().join("c"), &server.url(), lease);
    let v = c.get_or_load("j", || Ok::<_, std::io::Error>("fresh".to_string()), None);
    assert_eq!(v.unwrap().value, "fresh");
}

/// Runs `role` for `key` on machine `dir` to the end and returns what it printed: the
/// value a `get` got (or, with `value` "AT", its load time), whether a `delete` deleted;
/// "" for a `set` (of `value`).
fn run_role(role: &str, dir: &Path, server: &RedisServer, key: &str, value: &str) -> String {
    let tmp = dir.with_extension("unused");
    let envs = key_env(key, value, &tmp, Duration::from_secs(5), &tmp);
    let out = finish(
        spawn_role(role, dir, server, &envs),
        Duration::from_secs(60),
        role,
    );
    match role {
        "get" if value == "AT" => said(&out, "AT"),
        "get" => said(&out, "GOT"),
        "delete" => said(&out, "DELETED"),
        _ => String::new(),
    }
}

#[test]
fn set_on_one_machine_is_read_by_get_on_another_with_its_own_stamps() {
    let Some(server) = RedisServer::start_or_skip(
        "set_on_one_machine_is_read_by_get_on_another_with_its_own_stamps",
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    run_role("set", &a, &server, "k", "from-a");
    assert_eq!(run_role("get", &b, &server, "k", ""), "from-a");
    // With the stamps machine a gave it.
    let set_on_a = machine(&a, &server.url(), Duration::from_secs(5))
        .get::<String>("k")
        .unwrap()
        .expect("a's own value");
    assert_eq!(
        run_role("get", &b, &server, "k", "AT"),
        nanos(set_on_a.load_timestamp)
    );
    // A second set replaces it everywhere (last writer wins, as in the local tier).
    run_role("set", &a, &server, "k", "again");
    assert_eq!(
        run_role("get", &tmp.path().join("c"), &server, "k", ""),
        "again"
    );
    // Machine b's process filled its local tier (the handle's drop waits for the fill):
    // with the server gone, b still reads it.
    drop(server);
    let local_b = DiskCache::builder()
        .directory(&b)
        .name("c")
        .build()
        .unwrap()
        .get::<String>("k")
        .unwrap()
        .expect("b's local tier was filled by its get");
    assert_eq!(local_b.value, "from-a");
    assert_eq!(local_b.load_timestamp, set_on_a.load_timestamp);
}

fn nanos(at: std::time::SystemTime) -> String {
    at.duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        .to_string()
}

#[test]
fn delete_removes_both_tiers_and_other_machines_keep_only_a_local_copy_they_read() {
    let Some(server) = RedisServer::start_or_skip(
        "delete_removes_both_tiers_and_other_machines_keep_only_a_local_copy_they_read",
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    run_role("set", &a, &server, "k", "v1");
    assert_eq!(run_role("get", &b, &server, "k", ""), "v1");
    assert_eq!(run_role("delete", &a, &server, "k", ""), "true");
    assert_eq!(run_role("get", &a, &server, "k", ""), "none");
    assert_eq!(
        run_role("get", &c, &server, "k", ""),
        "none",
        "gone from the shared tier"
    );
    // The documented staleness window: machine b read the value before the delete, so
    // its local tier serves it (without asking the server) until it expires.
    assert_eq!(run_role("get", &b, &server, "k", ""), "v1");
    // get_or_load anywhere else loads it again.
    let d = machine(&tmp.path().join("d"), &server.url(), Duration::from_secs(5));
    let v = d.get_or_load("k", || Ok::<_, std::io::Error>("v2".to_string()), None);
    assert_eq!(v.unwrap().value, "v2");
    assert_eq!(run_role("get", &c, &server, "k", ""), "v2");
}

#[test]
fn a_set_fences_out_a_loader_that_started_before_it() {
    let Some(server) =
        RedisServer::start_or_skip("a_set_fences_out_a_loader_that_started_before_it")
    else {
        return;
    };
    let lease = Duration::from_secs(5);
    let tmp = tempfile::tempdir().unwrap();
    let go = tmp.path().join("go");
    let envs = key_env("k", "loaded-before", &tmp.path().join("loads"), lease, &go);
    let mut holder = spawn_role("hold", &tmp.path().join("h"), &server, &envs);
    wait_for_line(&mut holder, "LOADING");
    run_role("set", &tmp.path().join("s"), &server, "k", "set-later");
    std::fs::write(&go, "").unwrap();
    let out = finish(holder, Duration::from_secs(30), "holder");
    assert_eq!(
        said(&out, "VALUE"),
        "loaded-before",
        "its caller gets its value"
    );
    assert_eq!(said(&out, "FENCED"), "1", "but the set's value stays");
    assert_eq!(
        run_role("get", &tmp.path().join("r"), &server, "k", ""),
        "set-later"
    );
    // Nor does the late loader's machine keep its older value locally.
    assert_eq!(
        run_role("get", &tmp.path().join("h"), &server, "k", ""),
        "set-later"
    );
}

#[test]
fn clear_removes_the_fleets_entries_of_this_cache_and_no_other() {
    let Some(server) =
        RedisServer::start_or_skip("clear_removes_the_fleets_entries_of_this_cache_and_no_other")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url();
    let a = machine(&tmp.path().join("a"), &url, Duration::from_secs(5));
    let other = DiskCache::builder()
        .directory(tmp.path().join("o"))
        .name("other")
        .shared(&url)
        .build()
        .unwrap();
    // More keys than one SCAN batch, and a key named like a glob pattern.
    let n = 2500;
    for i in 0..n {
        a.set(&format!("key-{i}"), &i, None).unwrap();
    }
    a.set("*", &-1, None).unwrap();
    other.set("key-1", &"other cache", None).unwrap();
    assert_eq!(a.shared_info().unwrap().unwrap().entries, n + 1);
    assert_eq!(a.clear().unwrap(), n as usize + 1);
    assert_eq!(a.shared_info().unwrap().unwrap().entries, 0);
    let b = machine(&tmp.path().join("b"), &url, Duration::from_secs(5));
    assert_eq!(b.get::<i64>("key-7").unwrap(), None);
    assert_eq!(b.get::<i64>("*").unwrap(), None);
    assert_eq!(
        other.get::<String>("key-1").unwrap().unwrap().value,
        "other cache"
    );
    assert_eq!(other.shared_info().unwrap().unwrap().entries, 1);
}

#[cfg(feature = "tokio")]
#[test]
fn async_and_sync_processes_on_two_machines_load_a_key_once() {
    let Some(server) =
        RedisServer::start_or_skip("async_and_sync_processes_on_two_machines_load_a_key_once")
    else {
        return;
    };
    let roles = [
        "load",
        "load_async",
        "load_async",
        "load",
        "load_async",
        "load_async",
    ];
    let (loads, values) = race_loaders(&server, &roles);
    assert_eq!(loads.len(), 1, "loads: {loads:?}");
    assert!(values.iter().all(|v| v == &values[0]), "{values:?}");
}

#[test]
fn fleet_counters_add_up_the_counts_of_every_process() {
    let Some(server) =
        RedisServer::start_or_skip("fleet_counters_add_up_the_counts_of_every_process")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let ten = |machine: &str, missing: usize| {
        let mut envs = key_env(
            "",
            "",
            &tmp.path().join("unused"),
            Duration::from_secs(5),
            &tmp.path().join("unused"),
        );
        envs.push(("MISSING", missing.to_string()));
        let child = spawn_role("ten", &tmp.path().join(machine), &server, &envs);
        let out = finish(child, Duration::from_secs(60), "ten");
        let numbers: Vec<u64> = said(&out, "STATS")
            .split(' ')
            .map(|n| n.parse().unwrap())
            .collect();
        numbers
    };
    // Machine a loads the ten keys; machine b reads them from the shared tier and misses
    // five others. Each process's counts reach the server when its handle is dropped.
    let a = ten("a", 0);
    let b = ten("b", 5);
    assert_eq!(a, [0, 10, 10, 0], "a: hits, misses, stores, fenced");
    assert_eq!(b, [10, 5, 0, 0], "b: hits, misses, stores, fenced");
    let reader = machine(&tmp.path().join("c"), &server.url(), Duration::from_secs(5));
    let fleet = reader.shared_info().unwrap().unwrap().fleet;
    let sum = |i: usize| a[i] + b[i];
    assert_eq!(
        (fleet.hits, fleet.misses, fleet.stores, fleet.fenced),
        (sum(0), sum(1), sum(2), sum(3))
    );
    assert_eq!(fleet.loads, 10, "machine a's ten loads");
    // A live process's counts arrive within about a second, without a call of its own.
    reader.get::<i32>("key-3").unwrap();
    let start = Instant::now();
    let probe = machine(&tmp.path().join("d"), &server.url(), Duration::from_secs(5));
    loop {
        let now = probe.shared_info().unwrap().unwrap().fleet;
        if now.hits == fleet.hits + 1 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{now:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_forked_child_does_not_add_its_parents_counts_to_the_fleets_again() {
    let Some(server) = RedisServer::start_or_skip(
        "a_forked_child_does_not_add_its_parents_counts_to_the_fleets_again",
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let unused = tmp.path().join("unused");
    let envs = key_env("", "", &unused, Duration::from_secs(5), &unused);
    let child = spawn_role("fork_counts", &tmp.path().join("m"), &server, &envs);
    assert_eq!(
        said(&finish(child, Duration::from_secs(60), "fork"), "FORKED"),
        "ok"
    );
    let reader = machine(&tmp.path().join("r"), &server.url(), Duration::from_secs(5));
    let fleet = reader.shared_info().unwrap().unwrap().fleet;
    assert_eq!(fleet.misses, 3, "the parent's three, once: {fleet:?}");
}
