//! `get_or_load_async` under tokio (feature `tokio`): a current-thread runtime with a
//! thousand tasks, a runtime that keeps running while another process loads the key, a
//! dropped future that releases its locks, and tasks racing other processes on many keys.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{append_line, child, child_role, lines};

use common::{env_path, open_dir as open};

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

#[test]
fn child_main() {
    let Some(role) = child_role() else { return };
    let dir = env_path("CACHE");
    let counter = env_path("COUNTER");
    match role.as_str() {
        // Loads "held" slowly with the sync API, saying when its loader started.
        "slow-loader" => {
            let v = open(&dir)
                .get_or_load(
                    "held",
                    || {
                        println!("LOADING");
                        append_line(&counter, "slow-loader");
                        std::thread::sleep(Duration::from_secs(2));
                        Ok::<_, std::io::Error>("from the other process".to_string())
                    },
                    None,
                )
                .expect("get_or_load");
            assert_eq!(v.value, "from the other process");
        }
        // Loads keys 0..200 with the sync API, counting its loads.
        "sync-keys" => {
            let cache = open(&dir);
            for i in 0..200 {
                let v = cache
                    .get_or_load(
                        &format!("k{i}"),
                        || {
                            append_line(&counter, &format!("k{i}"));
                            std::thread::sleep(Duration::from_millis(2));
                            Ok::<_, std::io::Error>(i)
                        },
                        None,
                    )
                    .expect("get_or_load");
                assert_eq!(v.value, i);
            }
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn a_thousand_tasks_on_a_current_thread_runtime_load_once() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path());
    let loads = Arc::new(AtomicUsize::new(0));
    let values = current_thread().block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..1000 {
            let (cache, loads) = (cache.clone(), loads.clone());
            tasks.spawn(async move {
                cache
                    .get_or_load_async(
                        "k",
                        || async move {
                            loads.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            Ok::<_, std::io::Error>(42u32)
                        },
                        None,
                    )
                    .await
                    .expect("get_or_load_async")
                    .value
            });
        }
        let mut values = Vec::new();
        while let Some(v) = tasks.join_next().await {
            values.push(v.expect("task"));
        }
        values
    });
    assert_eq!(values.len(), 1000);
    assert!(values.iter().all(|&v| v == 42));
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

#[test]
fn waiting_for_another_process_does_not_block_the_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let counter = tmp.path().join("counter");
    let mut other = child("child_main", "slow-loader")
        .env("CACHE", tmp.path())
        .env("COUNTER", &counter)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(other.stdout.take().unwrap());
    while out.read_line(&mut line).unwrap() > 0 && !line.contains("LOADING") {}
    assert!(line.contains("LOADING"), "{line}");
    let cache = open(tmp.path());
    let (value, ticks) = current_thread().block_on(async {
        // A ticker on the same (only) runtime thread: it runs only if the wait is not on it.
        let ticks = Arc::new(AtomicUsize::new(0));
        let ticker = {
            let ticks = ticks.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    ticks.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        let v = cache
            .get_or_load_async(
                "held",
                || async { Ok::<_, std::io::Error>("loaded here".to_string()) },
                None,
            )
            .await
            .expect("get_or_load_async");
        ticker.abort();
        (v.value, ticks.load(Ordering::SeqCst))
    });
    assert!(other.wait().unwrap().success());
    assert_eq!(
        value, "from the other process",
        "the other process's load is used"
    );
    assert_eq!(lines(&counter).len(), 1, "loaded once");
    // The other loader slept ~2 s after we started waiting; a blocked runtime would tick 0-1.
    assert!(
        ticks > 20,
        "the runtime ticked only {ticks} times while waiting"
    );
}

#[test]
fn a_dropped_future_releases_its_locks() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path());
    let rt = current_thread();
    let value = rt.block_on(async {
        // A load that never finishes, given up after 100 ms: the future is dropped.
        let stuck = cache.get_or_load_async(
            "k",
            std::future::pending::<Result<u32, std::io::Error>>,
            None,
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(100), stuck)
                .await
                .is_err()
        );
        // The same key loads now, from this process (async and sync alike).
        let v = tokio::time::timeout(
            Duration::from_secs(10),
            cache.get_or_load_async("k", || async { Ok::<_, std::io::Error>(7u32) }, None),
        )
        .await
        .expect("the key's lock was released")
        .expect("get_or_load_async");
        v.value
    });
    assert_eq!(value, 7);
    let again = cache
        .get_or_load("j", || Ok::<_, std::io::Error>(1u8), None)
        .unwrap();
    assert_eq!(again.value, 1);
}

#[test]
fn tasks_and_other_processes_load_each_of_200_keys_once() {
    let tmp = tempfile::tempdir().unwrap();
    let counter = tmp.path().join("counter");
    let others: Vec<_> = (0..2)
        .map(|_| {
            child("child_main", "sync-keys")
                .env("CACHE", tmp.path())
                .env("COUNTER", &counter)
                .spawn()
                .unwrap()
        })
        .collect();
    let cache = open(tmp.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200u32 {
            for _ in 0..3 {
                let (cache, counter) = (cache.clone(), counter.clone());
                tasks.spawn(async move {
                    let v = cache
                        .get_or_load_async(
                            &format!("k{i}"),
                            || async move {
                                append_line(&counter, &format!("k{i}"));
                                tokio::time::sleep(Duration::from_millis(2)).await;
                                Ok::<_, std::io::Error>(i)
                            },
                            None,
                        )
                        .await
                        .expect("get_or_load_async");
                    assert_eq!(v.value, i);
                });
            }
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("task");
        }
    });
    for mut other in others {
        assert!(other.wait().unwrap().success());
    }
    let mut loaded = lines(&counter);
    loaded.sort();
    let before = loaded.len();
    loaded.dedup();
    assert_eq!(
        before, 200,
        "each key loaded once across tasks and processes"
    );
    assert_eq!(loaded.len(), 200);
}
