//! `cargo bench --bench shared`: the shared tier against a real `redis-server` it starts on
//! a free port (skipped, with the reason printed, without one). One run, printed as a table:
//!
//! - raw `GET` of an entry's bytes with the same client (redis-rs, one connection) vs a
//!   shared-tier hit (a local miss: GET, verify, decode, fill the local tier), through
//!   `get_or_load` and through `get`;
//! - local hits (`get_or_load` and `get`) with and without a shared tier configured;
//! - `set` without and with a shared tier (two round trips: a fence token, the store);
//! - 8 processes x 2 machines doing get_or_load over 1000 keys: throughput and loads;
//! - on a 3-master cluster (when `redis-cli` is there too): a raw `GET` with redis-rs's
//!   cluster client vs a shared hit through the detected cluster.

#[path = "../tests/common/redis_cluster.rs"]
mod redis_cluster;
#[path = "../tests/common/redis_server.rs"]
mod redis_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dbx_concurio::caches::DiskCache;
use redis_server::RedisServer;
use serde_bytes::ByteBuf;

const KEYS: usize = 2000;
const ROLE_ENV: &str = "SHARED_BENCH_ROLE";

fn cache(dir: &Path, url: Option<&str>) -> DiskCache {
    let mut b = DiskCache::builder().directory(dir).name("c");
    if let Some(url) = url {
        b = b.shared(url);
    }
    b.build().expect("open cache")
}

fn value(size: usize) -> ByteBuf {
    ByteBuf::from(vec![7u8; size])
}

/// A raw `GET` of key `k`'s entry (of a `size`-byte value) in cache `c`, on `con`.
fn raw_getter(con: &mut impl redis::ConnectionLike, size: usize) -> impl FnMut(&str) + '_ {
    move |k| {
        let bytes: Vec<u8> = redis::cmd("GET")
            .arg(format!("concurio:c:{{{k}}}:v"))
            .query(con)
            .expect("GET");
        assert!(bytes.len() > size);
    }
}

/// The median of `times`, in µs.
fn median_us(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times[times.len() / 2].as_secs_f64() * 1e6
}

/// Mean µs per call of `f` over `keys`.
fn per_op(keys: &[String], mut f: impl FnMut(&str)) -> f64 {
    let start = Instant::now();
    for k in keys {
        f(k);
    }
    start.elapsed().as_secs_f64() * 1e6 / keys.len() as f64
}

fn main() {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        return fleet_member(&role);
    }
    let Some(server) = RedisServer::start_or_skip("benches/shared") else {
        return;
    };
    let url = server.url();
    let tmp = tempfile::tempdir().expect("tempdir");
    println!(
        "| size | raw GET µs (median) | shared hit µs (median) | ratio | shared get µs (median) | local hit µs (shared) | local hit µs (no shared) | local get µs (shared) | local get µs (no shared) | set µs (local) | set µs (shared) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for size in [100, 10 << 10] {
        let keys: Vec<String> = (0..KEYS).map(|i| format!("s{size}-{i}")).collect();
        let a = cache(&tmp.path().join(format!("a{size}")), Some(&url));
        let plain = cache(&tmp.path().join(format!("plain{size}")), None);
        for k in &keys {
            a.get_or_load(k, || Ok::<_, std::io::Error>(value(size)), None)
                .expect("load");
            plain.set(k, &value(size), None).expect("set");
        }
        let client = redis::Client::open(url.as_str()).expect("client");
        let mut con = client.get_connection().expect("connect");
        let mut raw_get = raw_getter(&mut con, size);
        per_op(&keys, &mut raw_get); // warm-up: connections, server caches
        let c = cache(&tmp.path().join(format!("set{size}")), None);
        let set = per_op(&keys, |k| c.set(k, &value(size), None).expect("set"));
        let s = cache(&tmp.path().join(format!("sset{size}")), Some(&url));
        let set_shared = per_op(&keys, |k| {
            s.set(&format!("set-{k}"), &value(size), None).expect("set")
        });
        // Each key once on a fresh machine: every call is a local miss and a shared hit.
        // Timed key by key, interleaved with a raw GET of the same bytes, so both see the
        // same machine load; medians, so a preempted call does not count.
        let b = cache(&tmp.path().join(format!("b{size}")), Some(&url));
        let (mut raw, mut shared_hit) = (Vec::new(), Vec::new());
        for k in &keys {
            let t0 = Instant::now();
            raw_get(k);
            let t1 = Instant::now();
            let v = b
                .get_or_load(k, || Err::<ByteBuf, _>(std::io::Error::other("miss")), None)
                .expect("shared hit");
            raw.push(t1 - t0);
            shared_hit.push(t1.elapsed());
            assert_eq!(v.value.len(), size);
        }
        let (raw, shared_hit) = (median_us(raw), median_us(shared_hit));
        // The same through `get` on another fresh machine.
        let g = cache(&tmp.path().join(format!("g{size}")), Some(&url));
        let shared_get = median_us(
            keys.iter()
                .map(|k| {
                    let t0 = Instant::now();
                    let v = g.get::<ByteBuf>(k).expect("get").expect("shared hit");
                    let took = t0.elapsed();
                    assert_eq!(v.value.len(), size);
                    took
                })
                .collect(),
        );
        // The local tier is filled in the background: wait until the last key is there
        // (`contains` looks at the local tier only).
        while !b.contains(&keys[KEYS - 1]).expect("contains") {
            std::thread::sleep(Duration::from_millis(10));
        }
        let local_hit = |c: &DiskCache| {
            per_op(&keys, |k| {
                let v = c
                    .get_or_load(k, || Err::<ByteBuf, _>(std::io::Error::other("miss")), None)
                    .expect("local hit");
                assert_eq!(v.value.len(), size);
            })
        };
        let local_get = |c: &DiskCache| {
            per_op(&keys, |k| {
                let v = c.get::<ByteBuf>(k).expect("get").expect("local hit");
                assert_eq!(v.value.len(), size);
            })
        };
        let (with_shared, without) = (local_hit(&b), local_hit(&plain));
        let (get_with, get_without) = (local_get(&b), local_get(&plain));
        println!(
            "| {size} B | {raw:.1} | {shared_hit:.1} | {:.2}x | {shared_get:.1} | {with_shared:.2} | {without:.2} | {get_with:.2} | {get_without:.2} | {set:.1} | {set_shared:.1} |",
            shared_hit / raw
        );
    }
    fleet(&url, tmp.path());
    cluster(tmp.path());
}

/// A shared hit through a 3-master cluster vs a raw cluster `GET` of the same bytes.
fn cluster(tmp: &Path) {
    let Some(cluster) = redis_cluster::Cluster::start_or_skip("benches/shared cluster") else {
        return;
    };
    let size = 100;
    let keys: Vec<String> = (0..KEYS).map(|i| format!("k{i}")).collect();
    let a = cache(&tmp.join("cluster-a"), Some(&cluster.url(0)));
    for k in &keys {
        a.set(k, &value(size), None).expect("set");
    }
    let client = redis::cluster::ClusterClient::new(vec![cluster.url(1)]).expect("client");
    let mut con = client.get_connection().expect("connect");
    let mut raw_get = raw_getter(&mut con, size);
    per_op(&keys, &mut raw_get); // warm-up: connections to every node
    let b = cache(&tmp.join("cluster-b"), Some(&cluster.url(2)));
    let (mut raw, mut shared_hit) = (Vec::new(), Vec::new());
    for k in &keys {
        let t0 = Instant::now();
        raw_get(k);
        let t1 = Instant::now();
        let v = b.get::<ByteBuf>(k).expect("get").expect("shared hit");
        raw.push(t1 - t0);
        shared_hit.push(t1.elapsed());
        assert_eq!(v.value.len(), size);
    }
    let (raw, shared_hit) = (median_us(raw), median_us(shared_hit));
    println!(
        "\ncluster (3 masters), {size} B, {KEYS} keys: raw cluster GET {raw:.1} µs, shared \
         hit (get) {shared_hit:.1} µs (medians), {:.2}x",
        shared_hit / raw
    );
}

/// 8 processes on each of 2 machines, all doing get_or_load over the same 1000 keys.
fn fleet(url: &str, tmp: &Path) {
    let counter = tmp.join("fleet-loads");
    let exe = std::env::current_exe().expect("current_exe");
    let start = Instant::now();
    let children: Vec<_> = (0..16)
        .map(|i| {
            Command::new(&exe)
                .env(ROLE_ENV, format!("{}", i * 61))
                .env("URL", url)
                .env("CACHE", tmp.join(format!("fleet-m{}", i % 2)))
                .env("COUNTER", &counter)
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn fleet member")
        })
        .collect();
    for mut c in children {
        assert!(c.wait().expect("wait").success(), "a fleet member failed");
    }
    let elapsed = start.elapsed();
    let loads = std::fs::read_to_string(&counter)
        .unwrap_or_default()
        .lines()
        .count();
    println!(
        "\nfleet: 16 processes (8 x 2 machines) x 1000 keys: {:.2} s wall (processes \
         started included), {:.0} get_or_load/s, loads {loads} (keys: 1000)",
        elapsed.as_secs_f64(),
        16_000.0 / elapsed.as_secs_f64()
    );
}

fn fleet_member(offset: &str) {
    let offset: usize = offset.parse().expect("offset");
    let var = |name: &str| std::env::var(name).expect(name);
    let counter = PathBuf::from(var("COUNTER"));
    let c = cache(Path::new(&var("CACHE")), Some(&var("URL")));
    for n in 0..1000 {
        let i = (n * 7 + offset) % 1000;
        c.get_or_load(
            &format!("fleet-{i}"),
            || {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&counter)?;
                writeln!(f, "{i}")?;
                Ok::<_, std::io::Error>(value(100))
            },
            Some(Duration::from_secs(3600)),
        )
        .expect("get_or_load");
    }
}
