//! Damaged or foreign files: clear errors or a logged reset, never a panic, a hang, or a
//! wrong value returned as right.

mod common;

use std::path::Path;

use common::blob_files;
use dbx_concurio::Error;
use dbx_concurio::caches::DiskCache;

fn open(dir: &Path) -> Result<DiskCache, Error> {
    DiskCache::builder().directory(dir).fallback(false).build()
}

#[test]
fn a_garbage_index_is_reset_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    open(tmp.path()).unwrap().set("k", "v", None).unwrap();
    std::fs::write(tmp.path().join("index/data.mdb"), vec![0xA5u8; 20_000]).unwrap();
    let cache = open(tmp.path()).unwrap();
    assert!(cache.get::<String>("k").unwrap().is_none());
    cache.set("k", "fresh", None).unwrap();
    assert_eq!(cache.get::<String>("k").unwrap().unwrap().value, "fresh");
}

#[test]
fn a_foreign_marker_resets_and_a_newer_format_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    open(tmp.path()).unwrap().set("k", "v", None).unwrap();
    std::fs::write(tmp.path().join(".dbx-concurio"), "something else").unwrap();
    assert!(
        open(tmp.path())
            .unwrap()
            .get::<String>("k")
            .unwrap()
            .is_none()
    );

    std::fs::write(
        tmp.path().join(".dbx-concurio"),
        "dbx-concurio cache format 99\n",
    )
    .unwrap();
    let err = open(tmp.path()).unwrap_err();
    assert!(err.to_string().contains("format 99"), "{err}");
}

#[test]
fn damaged_value_files_are_errors_for_get_and_reloaded_by_get_or_load() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path()).unwrap();
    let big = vec![3u8; 100_000];
    cache.set("flip", &big, None).unwrap();
    let file = blob_files(tmp.path()).pop().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[5000] ^= 0x40;
    std::fs::write(&file, bytes).unwrap();
    let err = cache.get::<Vec<u8>>("flip").unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    let v = cache
        .get_or_load("flip", || Ok::<_, std::io::Error>(vec![4u8; 100_000]), None)
        .unwrap();
    assert_eq!(v.value[0], 4);
    assert_eq!(cache.get::<Vec<u8>>("flip").unwrap().unwrap().value[0], 4);

    cache.set("gone", &big, None).unwrap();
    for f in blob_files(tmp.path()) {
        std::fs::remove_file(f).unwrap();
    }
    let err = cache.get::<Vec<u8>>("gone").unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    let v = cache
        .get_or_load("gone", || Ok::<_, std::io::Error>(vec![5u8; 10]), None)
        .unwrap();
    assert_eq!(v.value, vec![5u8; 10]);
}

#[test]
fn a_restart_with_unsynced_writes_resets_but_a_clean_close_keeps_everything() {
    let Ok(boot) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") else {
        eprintln!("no boot id on this platform: nothing to test");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    open(tmp.path()).unwrap().set("k", "v", None).unwrap();
    let state = std::fs::read_to_string(tmp.path().join(".state")).unwrap();
    assert_eq!(
        state,
        format!("{} clean\n", boot.trim()),
        "last close records a clean state"
    );

    std::fs::write(tmp.path().join(".state"), "some-other-boot clean\n").unwrap();
    assert!(
        open(tmp.path())
            .unwrap()
            .get::<String>("k")
            .unwrap()
            .is_some(),
        "clean: kept"
    );

    std::fs::write(tmp.path().join(".state"), "some-other-boot dirty\n").unwrap();
    assert!(
        open(tmp.path())
            .unwrap()
            .get::<String>("k")
            .unwrap()
            .is_none(),
        "dirty: reset"
    );
}

#[test]
fn a_directory_that_is_a_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let err = open(&file).unwrap_err();
    assert!(err.to_string().contains(&*file.to_string_lossy()), "{err}");
    assert!(err.to_string().contains("not a directory"), "{err:?}");
}

#[test]
fn a_meta_page_pointing_past_the_file_resets_instead_of_faulting() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let cache = open(tmp.path()).unwrap();
        for i in 0..200 {
            cache.set(&format!("k{i}"), &i, None).unwrap();
        }
    }
    // LMDB meta pages sit at pages 0 and 1; `mm_last_pg` is at byte 136 of each (after the
    // 16-byte page header, magic, version, address, map size and two 48-byte db records).
    let data = tmp.path().join("index/data.mdb");
    let page = 4096u64;
    let mut file = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    use std::io::{Seek, SeekFrom, Write};
    for meta in 0..2 {
        file.seek(SeekFrom::Start(meta * page + 136)).unwrap();
        file.write_all(&((64u64 << 30) / page).to_le_bytes())
            .unwrap();
    }
    drop(file);
    let cache = open(tmp.path()).unwrap();
    assert!(cache.get::<i32>("k1").unwrap().is_none(), "reset");
    cache.set("k1", &1, None).unwrap();
    assert_eq!(cache.get::<i32>("k1").unwrap().unwrap().value, 1);
}
