//! The shared tier on a real 3-master Redis Cluster on 127.0.0.1 (three `redis-server
//! --cluster-enabled yes`, joined by `redis-cli --cluster create`). The cache is given one
//! node's URL and finds the cluster behind it. Without `redis-server` or `redis-cli` every
//! test prints why it is skipped.
#![cfg(feature = "shared")]

mod common;
#[path = "common/redis_cluster.rs"]
mod redis_cluster;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{append_line, assert_success, child, child_role, lines, wait_or_kill};
use dbx_concurio::caches::DiskCache;
use redis_cluster::Cluster;

fn machine(dir: &Path, url: &str) -> DiskCache {
    DiskCache::builder()
        .directory(dir)
        .name("c")
        .fallback(false)
        .shared(url)
        .shared_lease(Duration::from_secs(10))
        .build()
        .expect("open cache")
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child env {name}"))
}

const KEYS: usize = 200;

fn value_of(i: usize) -> String {
    format!("value {i} ").repeat(1 + i % 7)
}

#[test]
fn child_main() {
    let Some(role) = child_role() else { return };
    let cache = machine(Path::new(&env("CACHE")), &env("REDIS"));
    match role.as_str() {
        // get_or_load of every key, in an order of its own; checks every value.
        "load_all" => {
            let counter = std::path::PathBuf::from(env("COUNTER"));
            let offset: usize = env("OFFSET").parse().expect("OFFSET");
            for n in 0..KEYS {
                let i = (n * 7 + offset) % KEYS; // 7 is coprime to 200: a permutation
                let v = cache
                    .get_or_load(
                        &format!("key-{i}"),
                        || {
                            append_line(&counter, &i.to_string());
                            Ok::<_, std::io::Error>(value_of(i))
                        },
                        None,
                    )
                    .expect("get_or_load");
                assert_eq!(v.value, value_of(i), "key-{i}");
            }
            println!("DONE");
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn processes_on_two_machines_load_200_keys_once_across_a_three_node_cluster() {
    let Some(cluster) = Cluster::start_or_skip(
        "processes_on_two_machines_load_200_keys_once_across_a_three_node_cluster",
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let counter = tmp.path().join("loads");
    // Four processes on two machines; each names a different node as its seed.
    let children: Vec<Child> = (0..4)
        .map(|i| {
            child("child_main", "load_all")
                .env("CACHE", tmp.path().join(format!("m{}", i % 2)))
                .env("REDIS", cluster.url(i))
                .env("COUNTER", &counter)
                .env("OFFSET", (i * 50).to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn child")
        })
        .collect();
    for c in children {
        let out = wait_or_kill(c, Duration::from_secs(300), "load_all");
        assert_success(&out, "load_all");
    }
    let loads = lines(&counter);
    let unique: std::collections::BTreeSet<_> = loads.iter().collect();
    assert_eq!(
        (loads.len(), unique.len()),
        (KEYS, KEYS),
        "each key loaded exactly once"
    );

    // The entries really are spread over the three nodes, each on the node that serves
    // its slot.
    let mut per_node = [0usize; 3];
    for (n, &port) in cluster.ports.iter().enumerate() {
        let served = cluster.own_slots(port);
        let names = cluster.cli(port, "--scan --pattern concurio:c:*:v");
        for name in names.lines() {
            let slot: u16 = cluster
                .cli(port, &format!("CLUSTER KEYSLOT {name}"))
                .trim()
                .parse()
                .unwrap();
            assert!(
                served.iter().any(|&(lo, hi)| (lo..=hi).contains(&slot)),
                "{name} (slot {slot}) on node {port}, which serves {served:?}"
            );
            per_node[n] += 1;
        }
        assert!(
            cluster.cli(port, "DBSIZE").trim().parse::<u64>().unwrap() > 0,
            "node {port} holds nothing"
        );
    }
    assert_eq!(per_node.iter().sum::<usize>(), KEYS, "{per_node:?}");
    assert!(per_node.iter().all(|&n| n > 0), "{per_node:?}");

    // A third machine, seeded with any node: every value without a load; the info and
    // clear of the whole cluster.
    let third = machine(&tmp.path().join("m2"), &cluster.url(2));
    for i in 0..KEYS {
        let v = third.get::<String>(&format!("key-{i}")).unwrap();
        assert_eq!(v.map(|v| v.value), Some(value_of(i)), "key-{i}");
    }
    let info = third.shared_info().unwrap().unwrap();
    assert_eq!(info.entries, KEYS as u64);
    assert!(info.used_memory > 0);
    third.clear().unwrap();
    assert_eq!(third.shared_info().unwrap().unwrap().entries, 0);
    let other = machine(&tmp.path().join("m3"), &cluster.url(1));
    assert_eq!(other.get::<String>("key-1").unwrap(), None);
}

#[test]
fn set_on_one_machine_get_and_delete_on_another_through_the_cluster() {
    let Some(cluster) =
        Cluster::start_or_skip("set_on_one_machine_get_and_delete_on_another_through_the_cluster")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = machine(&tmp.path().join("a"), &cluster.url(0));
    let b = machine(&tmp.path().join("b"), &cluster.url(1));
    for i in 0..30 {
        a.set(&format!("k{i}"), &i, None).unwrap();
    }
    for i in 0..30 {
        assert_eq!(b.get::<i32>(&format!("k{i}")).unwrap().unwrap().value, i);
    }
    assert!(b.delete("k3").unwrap());
    let c = machine(&tmp.path().join("c"), &cluster.url(2));
    assert_eq!(c.get::<i32>("k3").unwrap(), None);
    assert_eq!(a.stats().unwrap().shared.unwrap().errors, 0);
}
