//! Our side of `bench/compare.sh` (which runs python-diskcache on the same workload and
//! prints one table). Prints JSON lines: `{"bench": .., "stat": .., "value": ..}`.
//!
//! Workloads (identical in bench/compare.py):
//! - headline: 1 000 keys, 100-byte values: 20 000 sets, 200 000 gets, 200 000 misses,
//!   200 000 get_or_load hits (median of per-batch means, µs/op), then 8 processes each doing
//!   20 000 get_or_load over the 1 000 keys on a fresh cache (ops/s);
//! - core: python-diskcache's benchmark_core mix (90% get, 9% set, 1% delete over 100 keys),
//!   1, 2, 4 and 8 processes, 20 000 ops each: p50/p90/p99/max per op (µs) and ops/s;
//! - extras (ours only): raw LMDB read, 16 MiB read vs `cat`, 1 000 000 keys.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dbx_concurio::caches::DiskCache;
use serde_bytes::ByteBuf;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["gol-child", dir] => gol_child(Path::new(dir)),
        ["core-child", dir, seed] => core_child(Path::new(dir), seed.parse()?),
        ["extras"] => extras(),
        ["engine"] => engine(),
        ["sets", n] => {
            // For syscall counts (strace -c): open a cache, then `n` sets of 100 bytes.
            let tmp = tempfile::tempdir()?;
            let cache = open(tmp.path())?;
            let value = ByteBuf::from(vec![7u8; 100]);
            for i in 0..n.parse::<usize>()? {
                cache.set(&format!("key{}", i % 1000), &value, None)?;
            }
            Ok(())
        }
        ["gets", n] => {
            // For profiles (perf record): 1 000 keys of 100 bytes, then `n` get::<Vec<u8>>.
            let tmp = tempfile::tempdir()?;
            let cache = open(tmp.path())?;
            let keys: Vec<String> = (0..1000).map(|i| format!("key{i}")).collect();
            for k in &keys {
                cache.set(k, &vec![7u8; 100], None)?;
            }
            for i in 0..n.parse::<usize>()? {
                std::hint::black_box(cache.get::<Vec<u8>>(&keys[i % 1000])?);
            }
            Ok(())
        }
        ["hits", kind, n] => hits(kind, n.parse()?),
        ["core", procs] => core(procs.parse()?),
        [] => {
            headline()?;
            for procs in [1, 2, 4, 8] {
                core(procs)?;
            }
            Ok(())
        }
        _ => Err(
            "usage: compare [extras | engine | core PROCESSES | sets N | gets N | hits KIND N]"
                .into(),
        ),
    }
}

fn emit(bench: &str, stat: &str, value: f64) {
    println!(
        r#"{{"side": "dbx-concurio", "bench": "{bench}", "stat": "{stat}", "value": {value:.4}}}"#
    );
}

fn open(dir: &Path) -> Res<DiskCache> {
    Ok(DiskCache::builder().directory(dir).build()?)
}

/// Median over batches of `batch` calls of the mean µs per call.
fn median_us(total: usize, batch: usize, mut op: impl FnMut(usize)) -> f64 {
    let mut means: Vec<f64> = (0..total / batch)
        .map(|b| {
            let start = Instant::now();
            for i in b * batch..(b + 1) * batch {
                op(i);
            }
            start.elapsed().as_secs_f64() * 1e6 / batch as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    means[means.len() / 2]
}

fn headline() -> Res<()> {
    let tmp = tempfile::tempdir()?;
    let cache = open(tmp.path())?;
    let keys: Vec<String> = (0..1000).map(|i| format!("key{i}")).collect();
    let value = "v".repeat(100);
    emit(
        "set",
        "median_us",
        median_us(20_000, 100, |i| {
            cache.set(&keys[i % 1000], &value, None).expect("set")
        }),
    );
    emit(
        "get",
        "median_us",
        median_us(200_000, 1000, |i| {
            std::hint::black_box(
                cache
                    .get::<String>(&keys[i % 1000])
                    .expect("get")
                    .expect("hit"),
            );
        }),
    );
    let absent: Vec<String> = (0..1000).map(|i| format!("absent{i}")).collect();
    emit(
        "get_miss",
        "median_us",
        median_us(200_000, 1000, |i| {
            std::hint::black_box(cache.get::<String>(&absent[i % 1000]).expect("get"));
        }),
    );
    emit(
        "get_or_load_hit",
        "median_us",
        median_us(200_000, 1000, |i| {
            let v = cache.get_or_load(
                &keys[i % 1000],
                || Ok::<_, std::io::Error>(String::new()),
                None,
            );
            std::hint::black_box(v.expect("gol"));
        }),
    );
    let fresh = tempfile::tempdir()?;
    let start = Instant::now();
    let children = (0..8)
        .map(|_| {
            Command::new(std::env::current_exe()?)
                .arg("gol-child")
                .arg(fresh.path())
                .spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;
    for mut c in children {
        if !c.wait()?.success() {
            return Err("gol child failed".into());
        }
    }
    emit(
        "gol_8proc",
        "ops_per_s",
        8.0 * 20_000.0 / start.elapsed().as_secs_f64(),
    );
    Ok(())
}

fn gol_child(dir: &Path) -> Res<()> {
    let cache = open(dir)?;
    let value = "v".repeat(100);
    for i in 0..20_000 {
        let v = cache.get_or_load(
            &format!("key{}", i % 1000),
            || Ok::<_, std::io::Error>(value.clone()),
            None,
        )?;
        std::hint::black_box(v);
    }
    Ok(())
}

/// python-diskcache's benchmark_core mix, in `procs` processes.
fn core(procs: usize) -> Res<()> {
    let tmp = tempfile::tempdir()?;
    {
        let cache = open(tmp.path())?;
        for k in 0..100 {
            cache.set(&format!("key{k}"), &"v".repeat(100), None)?;
        }
    }
    let start = Instant::now();
    let children = (0..procs)
        .map(|p| {
            Command::new(std::env::current_exe()?)
                .args(["core-child", &tmp.path().to_string_lossy(), &p.to_string()])
                .stdout(Stdio::piped())
                .spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut samples: [Vec<f64>; 3] = Default::default();
    for c in children {
        let out = c.wait_with_output()?;
        for line in String::from_utf8(out.stdout)?.lines() {
            let (op, us) = line.split_once(' ').ok_or("bad child line")?;
            samples[op.parse::<usize>()?].push(us.parse()?);
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let total: usize = samples.iter().map(Vec::len).sum();
    emit(&format!("core_{procs}p"), "ops_per_s", total as f64 / wall);
    for (op, mut s) in ["get", "set", "delete"].into_iter().zip(samples) {
        s.sort_by(f64::total_cmp);
        for (stat, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)] {
            let idx = ((s.len() as f64 * q) as usize).min(s.len() - 1);
            emit(
                &format!("core_{procs}p_{op}"),
                &format!("{stat}_us"),
                s[idx],
            );
        }
    }
    Ok(())
}

fn core_child(dir: &Path, seed: u64) -> Res<()> {
    let cache = open(dir)?;
    let value = "v".repeat(100);
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(20_000 * 12);
    for _ in 0..20_000 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let key = format!("key{}", rng % 100);
        let roll = (rng >> 32) % 100;
        let start = Instant::now();
        let op = if roll < 90 {
            std::hint::black_box(cache.get::<String>(&key)?);
            0
        } else if roll < 99 {
            cache.set(&key, &value, None)?;
            1
        } else {
            cache.delete(&key)?;
            2
        };
        writeln!(out, "{op} {:.3}", start.elapsed().as_secs_f64() * 1e6)?;
    }
    std::io::stdout().write_all(&out)?;
    Ok(())
}

/// The engine's floor beside our hit and set paths and two Rust peers, all in one run, on
/// 1 000 keys of 100 bytes (the same bytes everywhere):
/// - floors: raw LMDB (heed) read with a fresh `MDB_NOTLS` read transaction, as ours, that
///   copies the 100 bytes into a `Vec` (as a `get` that returns owned bytes must), and
///   put+commit (`NO_SYNC`) with and without `MDB_WRITEMAP` (the cache opens without it, see
///   docs/design.md); for reference, the raw read without the copy, and from a named
///   database, as cache format 1 kept its entries (format 2 keeps them in the main one);
/// - ours: one cache per kind of value, each holding the same 1 000 keys as the floor;
///   `get` as `Vec<u8>` and as `String`, `get_bytes`, `with_bytes`, a `get_or_load`
///   hit, `set` of a `Vec<u8>` and a `String`, `set_bytes` (`Durability::Fast`);
/// - peers: redb 2 (a read transaction per get; insert+commit with `Durability::None`, no
///   fsync like the others) and cacache 13 (sync API: `read_sync`, `write_sync`).
///
/// Every benchmark runs a few batches in each of 10 rounds, interleaved (each round in an
/// order rotated from the last), so the machine's noise (other processes) falls on all of
/// them alike; each prints the median of its per-batch means (µs/op), then its ratio to its
/// floor (gets to the raw read, sets to both raw put+commit floors). `ENGINE=1 bench/compare.sh` runs this 3 times and tables it.
fn engine() -> Res<()> {
    const ROUNDS: usize = 10;
    let keys: Vec<String> = (0..1000).map(|i| format!("key{i}")).collect();
    let bytes = vec![7u8; 100];
    let text = "v".repeat(100);
    let tmp = tempfile::tempdir()?;

    type Db = heed::Database<heed::types::Str, heed::types::Bytes>;
    type RawEnv = heed::Env<heed::WithoutTls>;
    let raw_env = |dir: &str, flags: heed::EnvFlags, name: Option<&str>| -> Res<_> {
        let path = tmp.path().join(dir);
        std::fs::create_dir(&path)?;
        let mut options = heed::EnvOpenOptions::new().read_txn_without_tls();
        options.map_size(1 << 30).max_dbs(4);
        // SAFETY: valid flags; a fresh directory opened once.
        unsafe { options.flags(flags) };
        let env = unsafe { options.open(&path)? };
        let mut wtxn = env.write_txn()?;
        let db: Db = env.create_database(&mut wtxn, name)?;
        for k in &keys {
            db.put(&mut wtxn, k, &bytes)?;
        }
        wtxn.commit()?;
        Ok((env, db))
    };
    let (plain, plain_db) = raw_env("raw", heed::EnvFlags::NO_SYNC, None)?;
    let (mapped, mapped_db) = raw_env(
        "raw-writemap",
        heed::EnvFlags::NO_SYNC | heed::EnvFlags::WRITE_MAP,
        None,
    )?;
    let (named, named_db) = raw_env("raw-named", heed::EnvFlags::NO_SYNC, Some("entries"))?;

    // One cache per kind of value, each with the floor's 1 000 keys: one cache holding all
    // three would give our B-tree three times the floor's entries (and working set).
    let cache = open(&tmp.path().join("ours"))?;
    let texts_cache = open(&tmp.path().join("ours-text"))?;
    let raw_cache = open(&tmp.path().join("ours-raw"))?;
    for k in &keys {
        cache.set(k, &bytes, None)?;
        texts_cache.set(k, &text, None)?;
        raw_cache.set_bytes(k, &bytes, None)?;
    }
    const TABLE: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("t");
    let redb = redb::Database::create(tmp.path().join("redb"))?;
    let cacache = tmp.path().join("cacache");
    {
        let txn = redb.begin_write()?;
        {
            let mut table = txn.open_table(TABLE)?;
            for k in &keys {
                table.insert(k.as_str(), &bytes[..])?;
            }
        }
        txn.commit()?;
    }
    for k in &keys {
        cacache::write_sync(&cacache, k, &bytes)?;
    }

    // (name, batch size, batches per round, one operation on key index i)
    type Bench<'a> = (&'static str, usize, usize, Box<dyn FnMut(usize) + 'a>);
    // The floor copies the bytes out into a `Vec`, as a `get` returning owned bytes must;
    // `copy: false` is LMDB's borrowed slice alone, for reference.
    fn raw_get<'a>(
        env: &'a RawEnv,
        db: Db,
        keys: &'a [String],
        copy: bool,
    ) -> impl FnMut(usize) + 'a {
        move |i: usize| {
            let txn = env.read_txn().expect("txn");
            let got = db.get(&txn, &keys[i % 1000]).expect("get");
            if !copy {
                std::hint::black_box(got);
                return;
            }
            // As a `get` returning the bytes: the transaction ends (and LMDB frees it)
            // before the caller drops the copy; the order of the two frees changes malloc's
            // work (it is part of what a get costs).
            let got = got.map(<[u8]>::to_vec);
            drop(txn);
            std::hint::black_box(got);
        }
    }
    fn raw_put<'a>(env: &'a RawEnv, db: Db, keys: &'a [String]) -> impl FnMut(usize) + 'a {
        move |i: usize| {
            let mut txn = env.write_txn().expect("txn");
            db.put(&mut txn, &keys[i % 1000], &[7u8; 100]).expect("put");
            txn.commit().expect("commit");
        }
    }
    let mut benches: Vec<Bench> = vec![
        (
            "lmdb_raw_get_notls",
            1000,
            20,
            Box::new(raw_get(&plain, plain_db, &keys, true)),
        ),
        (
            "lmdb_raw_get_notls_no_copy",
            1000,
            20,
            Box::new(raw_get(&plain, plain_db, &keys, false)),
        ),
        (
            "lmdb_raw_get_notls_named_db",
            1000,
            20,
            Box::new(raw_get(&named, named_db, &keys, true)),
        ),
        (
            "ours_get_vec",
            1000,
            20,
            Box::new(|i| {
                std::hint::black_box(cache.get::<Vec<u8>>(&keys[i % 1000]).expect("get"));
            }),
        ),
        (
            "ours_get_string",
            1000,
            20,
            Box::new(|i| {
                std::hint::black_box(texts_cache.get::<String>(&keys[i % 1000]).expect("get"));
            }),
        ),
        (
            "ours_get_bytes",
            1000,
            20,
            Box::new(|i| {
                std::hint::black_box(raw_cache.get_bytes(&keys[i % 1000]).expect("get"));
            }),
        ),
        (
            "ours_get_with_bytes",
            1000,
            20,
            Box::new(|i| {
                std::hint::black_box(
                    raw_cache
                        .with_bytes(&keys[i % 1000], |b| b[0])
                        .expect("get"),
                );
            }),
        ),
        (
            "ours_get_or_load_hit",
            1000,
            20,
            Box::new(|i| {
                let loader = || Ok::<_, std::io::Error>(Vec::<u8>::new());
                std::hint::black_box(
                    cache
                        .get_or_load(&keys[i % 1000], loader, None)
                        .expect("gol"),
                );
            }),
        ),
        (
            "redb_get",
            1000,
            5,
            Box::new(|i| {
                let txn = redb.begin_read().expect("txn");
                let table = txn.open_table(TABLE).expect("table");
                let got = table.get(keys[i % 1000].as_str()).expect("get");
                std::hint::black_box(got.map(|v| v.value().len()));
            }),
        ),
        (
            "cacache_read",
            100,
            5,
            Box::new(|i| {
                std::hint::black_box(cacache::read_sync(&cacache, &keys[i % 1000]).expect("read"));
            }),
        ),
        (
            "lmdb_raw_put_commit",
            200,
            10,
            Box::new(raw_put(&plain, plain_db, &keys)),
        ),
        (
            "lmdb_raw_put_commit_writemap",
            200,
            10,
            Box::new(raw_put(&mapped, mapped_db, &keys)),
        ),
        (
            "ours_set_vec",
            200,
            10,
            Box::new(|i| {
                cache.set(&keys[i % 1000], &bytes, None).expect("set");
            }),
        ),
        (
            "ours_set_string",
            200,
            10,
            Box::new(|i| {
                texts_cache.set(&keys[i % 1000], &text, None).expect("set");
            }),
        ),
        (
            "ours_set_bytes",
            200,
            10,
            Box::new(|i| {
                raw_cache
                    .set_bytes(&keys[i % 1000], &bytes, None)
                    .expect("set");
            }),
        ),
        (
            "redb_insert_commit",
            50,
            4,
            Box::new(|i| {
                let mut txn = redb.begin_write().expect("txn");
                txn.set_durability(redb::Durability::None);
                {
                    let mut table = txn.open_table(TABLE).expect("table");
                    table
                        .insert(keys[i % 1000].as_str(), &bytes[..])
                        .expect("insert");
                }
                txn.commit().expect("commit");
            }),
        ),
        (
            "cacache_write",
            10,
            4,
            Box::new(|i| {
                cacache::write_sync(&cacache, &keys[i % 1000], &bytes).expect("write");
            }),
        ),
    ];
    let mut means: Vec<Vec<f64>> = vec![Vec::new(); benches.len()];
    // Each round starts one benchmark later: what runs before a benchmark changes its
    // figures (caches, malloc's free lists), so no benchmark always follows the same one.
    let count = benches.len();
    for round in 0..ROUNDS {
        let order = (0..count).map(|k| (k + round * count / ROUNDS) % count);
        for which in order {
            let ((_, batch, batches, op), out) = (&mut benches[which], &mut means[which]);
            for b in 0..*batches {
                let start = Instant::now();
                for i in b * *batch..(b + 1) * *batch {
                    op(i);
                }
                out.push(start.elapsed().as_secs_f64() * 1e6 / *batch as f64);
            }
        }
    }
    let medians: Vec<(&str, f64)> = benches
        .iter()
        .zip(&mut means)
        .map(|((name, ..), m)| {
            m.sort_by(f64::total_cmp);
            (*name, m[m.len() / 2])
        })
        .collect();
    let of = |name: &str| {
        medians
            .iter()
            .find(|r| r.0 == name)
            .map_or(f64::NAN, |r| r.1)
    };
    for (name, us) in &medians {
        emit(name, "median_us", *us);
        let floors: &[&str] = if name.contains("get") || name.contains("read") {
            &["lmdb_raw_get_notls"]
        } else {
            &["lmdb_raw_put_commit", "lmdb_raw_put_commit_writemap"]
        };
        for floor in floors {
            emit(name, &format!("x_{floor}"), us / of(floor));
        }
    }
    Ok(())
}

/// For profiles and instruction counts (`perf stat`, `perf record`): `n` hits of one kind
/// on 1 000 keys of 100 bytes, as in `engine`: `raw` (the floor: heed read, copied into a
/// `Vec`), `named` (the same from a named database, where format 1 kept entries), `vec`,
/// `string`, `bytes`, `gol`.
fn hits(kind: &str, n: usize) -> Res<()> {
    let tmp = tempfile::tempdir()?;
    let keys: Vec<String> = (0..1000).map(|i| format!("key{i}")).collect();
    let bytes = vec![7u8; 100];
    if let "raw" | "named" = kind {
        let mut options = heed::EnvOpenOptions::new().read_txn_without_tls();
        options.map_size(1 << 30).max_dbs(4);
        // SAFETY: valid flags; a fresh directory opened once.
        unsafe { options.flags(heed::EnvFlags::NO_SYNC) };
        let env = unsafe { options.open(tmp.path())? };
        let mut wtxn = env.write_txn()?;
        let name = (kind == "named").then_some("entries");
        let db: heed::Database<heed::types::Str, heed::types::Bytes> =
            env.create_database(&mut wtxn, name)?;
        for k in &keys {
            db.put(&mut wtxn, k, &bytes)?;
        }
        wtxn.commit()?;
        for i in 0..n {
            let got = {
                let txn = env.read_txn()?;
                db.get(&txn, &keys[i % 1000])?.map(<[u8]>::to_vec)
            };
            std::hint::black_box(got);
        }
        return Ok(());
    }
    let cache = open(tmp.path())?;
    for k in &keys {
        match kind {
            "string" => cache.set(k, &"v".repeat(100), None)?,
            "bytes" => cache.set_bytes(k, &bytes, None)?,
            _ => cache.set(k, &bytes, None)?,
        }
    }
    for i in 0..n {
        let key = &keys[i % 1000];
        match kind {
            "vec" => drop(std::hint::black_box(cache.get::<Vec<u8>>(key)?)),
            "string" => drop(std::hint::black_box(cache.get::<String>(key)?)),
            "bytes" => drop(std::hint::black_box(cache.get_bytes(key)?)),
            "gol" => drop(std::hint::black_box(cache.get_or_load(
                key,
                || Ok::<_, std::io::Error>(Vec::<u8>::new()),
                None,
            )?)),
            _ => return Err(format!("unknown kind {kind}").into()),
        }
    }
    Ok(())
}

fn extras() -> Res<()> {
    // Raw LMDB point read (fresh read transaction each time), same 1 000 keys of 100 bytes.
    let tmp = tempfile::tempdir()?;
    let env = unsafe {
        heed::EnvOpenOptions::new()
            .map_size(1 << 30)
            .open(tmp.path())?
    };
    let mut wtxn = env.write_txn()?;
    let db: heed::Database<heed::types::Str, heed::types::Bytes> =
        env.create_database(&mut wtxn, None)?;
    let keys: Vec<String> = (0..1000).map(|i| format!("key{i}")).collect();
    for k in &keys {
        db.put(&mut wtxn, k, &[7u8; 100])?;
    }
    wtxn.commit()?;
    emit(
        "lmdb_raw_get",
        "median_us",
        median_us(200_000, 1000, |i| {
            let txn = env.read_txn().expect("txn");
            std::hint::black_box(db.get(&txn, &keys[i % 1000]).expect("get"));
        }),
    );

    // 16 MiB value read vs `cat file > /dev/null` of the same bytes from the page cache.
    let cache = open(&tmp.path().join("big"))?;
    let big = ByteBuf::from(vec![5u8; 16 << 20]);
    cache.set("big", &big, None)?;
    let file = tmp.path().join("big.bin");
    std::fs::write(&file, &big)?;
    let rounds = 30;
    let ours = median_us(rounds, 1, |_| {
        std::hint::black_box(cache.get::<ByteBuf>("big").expect("get").expect("hit"));
    });
    let cat = median_us(rounds, 1, |_| {
        let status = Command::new("cat")
            .arg(&file)
            .stdout(Stdio::null())
            .status()
            .expect("cat");
        assert!(status.success());
    });
    emit("get_16MiB", "GiB_per_s", 16.0 / 1024.0 / (ours / 1e6));
    emit("cat_16MiB", "GiB_per_s", 16.0 / 1024.0 / (cat / 1e6));

    // 1 000 000 keys: get hit (strided over the key space) and a first open.
    let dir = tmp.path().join("million");
    let cache = open(&dir)?;
    let value = "v".repeat(100);
    let fill = Instant::now();
    for i in 0..1_000_000 {
        cache.set(&format!("key{i}"), &value, None)?;
    }
    emit("fill_1M", "seconds", fill.elapsed().as_secs_f64());
    let million: Vec<String> = (0..1_000_000).map(|i| format!("key{i}")).collect();
    let mut j = 0usize;
    emit(
        "get_1M_keys",
        "median_us",
        median_us(200_000, 1000, |_| {
            j = (j + 7919) % 1_000_000;
            std::hint::black_box(cache.get::<String>(&million[j]).expect("get").expect("hit"));
        }),
    );
    drop(cache);
    // The engine's own floor at this size: raw LMDB, same records, same stride.
    let raw_dir = tmp.path().join("raw-million");
    std::fs::create_dir(&raw_dir)?;
    let env = unsafe {
        heed::EnvOpenOptions::new()
            .map_size(4 << 30)
            .open(&raw_dir)?
    };
    let mut wtxn = env.write_txn()?;
    let db: heed::Database<heed::types::Str, heed::types::Bytes> =
        env.create_database(&mut wtxn, None)?;
    for k in &million {
        db.put(&mut wtxn, k, &[7u8; 150])?;
    }
    wtxn.commit()?;
    let mut j = 0usize;
    emit(
        "lmdb_raw_get_1M_keys",
        "median_us",
        median_us(200_000, 1000, |_| {
            j = (j + 7919) % 1_000_000;
            let txn = env.read_txn().expect("txn");
            std::hint::black_box(db.get(&txn, &million[j]).expect("get"));
        }),
    );
    let mut opens: Vec<Duration> = (0..10)
        .map(|_| {
            let start = Instant::now();
            let c = open(&dir).expect("open");
            let took = start.elapsed();
            drop(c);
            took
        })
        .collect();
    opens.sort();
    emit("open_1M_keys", "median_ms", opens[5].as_secs_f64() * 1e3);
    Ok(())
}
