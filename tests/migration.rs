//! Cache format 2 (entries in LMDB's main database) opening caches of format 1 (entries in
//! the named database `entries`): every entry survives the migration, also when the
//! migrating process is SIGKILLed at any point, and a format this build does not know is
//! refused with an error that says what to do, touching nothing.
//!
//! A format-1 cache is made the way format 1 stored it: this build writes the entries (the
//! records are the same in both formats), then the fixture moves them with plain LMDB calls
//! from the main database (key 0x00 ++ index key) to the named database `entries` (key =
//! index key) and writes the format-1 marker, as a build of format 1 left its caches.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{child, child_role, env_path, open_dir, sigkill};
use heed::types::Bytes;

type Db = heed::Database<Bytes, Bytes>;

const MARKER: &str = ".dbx-concurio";
const FORMAT_1: &str = "dbx-concurio cache format 1\n";
const FORMAT_2: &str = "dbx-concurio cache format 2\n";

/// The keys of a fixture of `n` numbered entries, and the ones that could meet something
/// else in the main database or need another index key: the totals' key and the named
/// databases' names, the empty key (index key 0xFE), a key longer than 400 bytes (hashed).
fn keys(n: usize) -> Vec<String> {
    let mut keys: Vec<String> = ["totals", "order", "expiry", "meta", "entries", ""]
        .map(str::to_owned)
        .into();
    keys.push("long-".repeat(100));
    keys.extend((0..n).map(|i| format!("k{i}")));
    keys
}

/// The value of `key`: its own bytes, so a value read under another key shows; the key
/// "expiry" gets one larger than 32 KiB (a value file).
fn value(key: &str) -> Vec<u8> {
    let len = if key == "expiry" { 40_000 } else { 100 };
    key.bytes()
        .chain(*b"|")
        .cycle()
        .take(len)
        .collect::<Vec<u8>>()
}

/// Writes the entries of `keys` with this build (the key "order" expiring in an hour), then
/// moves them to format 1's layout and marker. Returns how many it moved.
fn make_format_1_cache(dir: &Path, keys: &[String]) -> usize {
    {
        let cache = open_dir(dir);
        for key in keys {
            let ttl = (key == "order").then_some(Duration::from_secs(3600));
            cache.set(key, &value(key), ttl).expect("set");
        }
    }
    let moved = with_index(dir, |env, txn| {
        let main: Db = env.open_database(txn, None).unwrap().unwrap();
        let named: Db = env.create_database(txn, Some("entries")).unwrap();
        let records: Vec<(Vec<u8>, Vec<u8>)> = main
            .prefix_iter(txn, &[0x00])
            .unwrap()
            .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect();
        for (key, record) in &records {
            named.put(txn, &key[1..], record).unwrap();
            main.delete(txn, key).unwrap();
        }
        records.len()
    });
    std::fs::write(dir.join(MARKER), FORMAT_1).unwrap();
    moved
}

/// Runs `f` in a write transaction on the index of the (closed) cache in `dir`.
fn with_index<R>(dir: &Path, f: impl FnOnce(&heed::Env, &mut heed::RwTxn) -> R) -> R {
    let mut options = heed::EnvOpenOptions::new();
    options.max_dbs(4).map_size(1 << 30);
    // SAFETY: the cache is closed; nothing else in this process has the index open.
    let env = unsafe { options.open(dir.join("index")) }.expect("open index");
    let mut txn = env.write_txn().unwrap();
    let out = f(&env, &mut txn);
    txn.commit().unwrap();
    out
}

/// The number of records left in the named database `entries` (None: there is none).
fn records_in_named_entries(dir: &Path) -> Option<u64> {
    with_index(dir, |env, txn| {
        let named: Option<Db> = env.open_database(txn, Some("entries")).unwrap();
        named.map(|db| db.len(txn).unwrap())
    })
}

/// Opens the cache in `dir` and checks that it holds exactly `keys` with their values
/// (and the expiry of "order"); returns a description of the first difference.
fn check_every_entry(dir: &Path, keys: &[String]) -> Result<(), String> {
    let cache = open_dir(dir);
    for key in keys {
        let got = cache
            .get::<Vec<u8>>(key)
            .map_err(|e| format!("get {key:.20?}: {e}"))?
            .ok_or_else(|| format!("{key:.20?} is missing"))?;
        if got.value != value(key) {
            return Err(format!("{key:.20?} has a wrong value"));
        }
        if (key == "order") != got.expires_at.is_some() {
            return Err(format!("{key:.20?} lost or gained an expiry"));
        }
    }
    let stats = cache.stats().map_err(|e| e.to_string())?;
    let listed = cache.keys().map_err(|e| e.to_string())?;
    let len = cache.len().map_err(|e| e.to_string())?;
    if stats.entries != keys.len() as u64 || listed.len() != keys.len() || len != keys.len() {
        return Err(format!(
            "{} keys, but stats count {}, keys() lists {}, len() says {len}",
            keys.len(),
            stats.entries,
            listed.len()
        ));
    }
    let mut expected = keys.to_vec();
    expected.sort();
    let mut listed = listed;
    listed.sort();
    if listed != expected {
        return Err("keys() lists other keys".into());
    }
    Ok(())
}

#[test]
fn a_format_1_cache_is_migrated_and_every_entry_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keys(200);
    assert_eq!(make_format_1_cache(tmp.path(), &keys), keys.len());
    assert_eq!(
        records_in_named_entries(tmp.path()),
        Some(keys.len() as u64)
    );

    check_every_entry(tmp.path(), &keys).unwrap();
    assert_eq!(
        std::fs::read_to_string(tmp.path().join(MARKER)).unwrap(),
        FORMAT_2
    );
    assert_eq!(records_in_named_entries(tmp.path()), Some(0));

    // After the migration the cache is an ordinary one: writes, deletes, check, clear.
    let cache = open_dir(tmp.path());
    cache.set("new", &value("new"), None).unwrap();
    assert!(cache.delete("totals").unwrap());
    let report = cache.check().unwrap();
    assert_eq!(report.entries, keys.len() as u64);
    assert_eq!(report.removed_entries, 0);
    assert_eq!(cache.clear().unwrap(), keys.len());
    assert_eq!(cache.stats().unwrap().entries, 0);
    assert!(cache.keys().unwrap().is_empty());
}

/// What a migration killed after its commit but before the new marker leaves: the entries
/// already moved, an empty named database, the format-1 marker.
#[test]
fn a_migration_committed_but_not_marked_is_finished_by_the_next_opener() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keys(50);
    {
        let cache = open_dir(tmp.path());
        for key in &keys {
            let ttl = (key == "order").then_some(Duration::from_secs(3600));
            cache.set(key, &value(key), ttl).unwrap();
        }
    }
    with_index(tmp.path(), |env, txn| {
        let _: Db = env.create_database(txn, Some("entries")).unwrap();
    });
    std::fs::write(tmp.path().join(MARKER), FORMAT_1).unwrap();

    check_every_entry(tmp.path(), &keys).unwrap();
    assert_eq!(
        std::fs::read_to_string(tmp.path().join(MARKER)).unwrap(),
        FORMAT_2
    );
}

/// The child of the test below: opens (and so migrates) the cache, then says so.
#[test]
fn child_main() {
    let Some(role) = child_role() else { return };
    assert_eq!(role, "migrate");
    drop(open_dir(&env_path("CACHE")));
    println!("OPENED");
}

fn spawn_migrator(dir: &Path) -> std::process::Child {
    child("child_main", "migrate")
        .env("CACHE", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Copies the directory tree `from` to `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_migration_sigkilled_at_any_point_loses_nothing() {
    const ROUNDS: u32 = 12;
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    let keys = keys(20_000);
    assert_eq!(make_format_1_cache(&pristine, &keys), keys.len());

    // How long a whole migrating child takes here: the kills are spread over it.
    let whole = tmp.path().join("whole");
    copy_tree(&pristine, &whole);
    let start = Instant::now();
    let status = spawn_migrator(&whole).wait().unwrap();
    let span = start.elapsed();
    assert!(status.success(), "uninterrupted migration failed: {status}");
    check_every_entry(&whole, &keys).unwrap();

    let mut seed = u64::from(std::process::id()) | 1;
    let (mut interrupted, mut finished) = (0, 0);
    for round in 0..ROUNDS {
        let dir = tmp.path().join(format!("round-{round}"));
        copy_tree(&pristine, &dir);
        // Spread over the span, with jitter (xorshift): kills at the start, during, after.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let slot = span / ROUNDS;
        let delay = slot * round + slot.mul_f64((seed % 1000) as f64 / 1000.0);
        let mut migrator = spawn_migrator(&dir);
        std::thread::sleep(delay);
        if migrator.try_wait().unwrap().is_none() {
            sigkill(&migrator);
        }
        migrator.wait().unwrap();
        let marker = std::fs::read_to_string(dir.join(MARKER)).unwrap();
        if marker == FORMAT_1 {
            interrupted += 1;
        } else {
            assert_eq!(marker, FORMAT_2, "round {round}");
            finished += 1;
        }
        check_every_entry(&dir, &keys)
            .unwrap_or_else(|e| panic!("round {round} (killed after {delay:?}): {e}"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
    println!(
        "migration of {} entries: {span:?} per child; {interrupted} rounds killed before the \
         new marker, {finished} after",
        keys.len()
    );
    assert!(interrupted > 0, "no kill interrupted a migration");
}

#[test]
fn a_cache_of_an_unknown_format_is_refused_and_left_as_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let cache = open_dir(tmp.path());
        cache.set("kept", &value("kept"), None).unwrap();
    }
    let format_3 = "dbx-concurio cache format 3\n";
    std::fs::write(tmp.path().join(MARKER), format_3).unwrap();
    let index_before = std::fs::read(tmp.path().join("index/data.mdb")).unwrap();

    let err = dbx_concurio::caches::DiskCache::builder()
        .directory(tmp.path())
        .fallback(false)
        .build()
        .expect_err("a format-3 cache must be refused");
    let message = err.to_string();
    assert!(
        matches!(err, dbx_concurio::Error::Unsupported(_)),
        "{err:?}"
    );
    for part in [
        &tmp.path().display().to_string()[..],
        "format 3",
        "reads format 2",
        "delete the directory",
    ] {
        assert!(message.contains(part), "{part:?} not in: {message}");
    }
    assert_eq!(
        std::fs::read_to_string(tmp.path().join(MARKER)).unwrap(),
        format_3
    );
    assert!(std::fs::read(tmp.path().join("index/data.mdb")).unwrap() == index_before);

    // Nothing was lost: with its marker back, the entry reads.
    std::fs::write(tmp.path().join(MARKER), FORMAT_2).unwrap();
    let cache = open_dir(tmp.path());
    assert_eq!(
        cache.get::<Vec<u8>>("kept").unwrap().unwrap().value,
        value("kept")
    );
}

/// A process of a format-1 build has the cache open (a shared lock on `.open.lock`, as every
/// opener holds): a format-2 opener must not read or migrate under it, and waits until it
/// is gone, then migrates and reads every entry.
#[test]
fn an_opener_waits_for_a_format_1_process_to_close_before_migrating() {
    use std::os::fd::AsRawFd;
    let tmp = tempfile::tempdir().unwrap();
    let keys = keys(20);
    assert_eq!(make_format_1_cache(tmp.path(), &keys), keys.len());
    // flock locks belong to the open file: this one conflicts with the cache's own.
    let old_build = std::fs::File::open(tmp.path().join(".open.lock")).unwrap();
    // SAFETY: flock(2) on a descriptor we own.
    assert_eq!(
        unsafe { libc::flock(old_build.as_raw_fd(), libc::LOCK_SH) },
        0
    );

    let dir = tmp.path().to_path_buf();
    let opener = std::thread::spawn(move || check_every_entry(&dir, &keys));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !opener.is_finished(),
        "opened while a format-1 process had it open"
    );
    assert_eq!(
        std::fs::read_to_string(tmp.path().join(MARKER)).unwrap(),
        FORMAT_1
    );
    drop(old_build);
    opener.join().unwrap().unwrap();
    assert_eq!(
        std::fs::read_to_string(tmp.path().join(MARKER)).unwrap(),
        FORMAT_2
    );
}
