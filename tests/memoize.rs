//! `#[dbx_concurio::cached]` (feature `macros`) as users write it: memoized recursion, a
//! function's own errors returned untouched and never stored, and one call per distinct
//! arguments across processes. Each test process gets its own `DBX_CONCURIO_CACHE_DIR`.

mod common;

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Once};

use common::{append_line, child, child_role, env_path, lines};

/// Every cache of this process lives under one temp dir (set before the first cache opens).
fn isolate() {
    static TMP: LazyLock<tempfile::TempDir> = LazyLock::new(|| tempfile::tempdir().unwrap());
    static SET: Once = Once::new();
    SET.call_once(|| {
        if std::env::var_os("DBX_CONCURIO_CACHE_DIR").is_none() {
            // SAFETY: set once, before any thread of this test binary reads it (the caches
            // below open after this call).
            unsafe { std::env::set_var("DBX_CONCURIO_CACHE_DIR", TMP.path()) };
        }
    });
}

static FIB_CALLS: AtomicUsize = AtomicUsize::new(0);

#[dbx_concurio::cached(name = "memoize-fib")]
fn fib(n: u64) -> Result<u64, dbx_concurio::Error> {
    FIB_CALLS.fetch_add(1, Ordering::SeqCst);
    Ok(if n < 2 {
        n
    } else {
        fib(n - 1)?.wrapping_add(fib(n - 2)?)
    })
}

#[derive(Debug, PartialEq)]
enum LookupError {
    NotFound(String),
    Cache(String),
}

impl From<dbx_concurio::Error> for LookupError {
    fn from(err: dbx_concurio::Error) -> Self {
        LookupError::Cache(err.to_string())
    }
}

static LOOKUPS: AtomicUsize = AtomicUsize::new(0);

#[dbx_concurio::cached(name = "memoize-lookup", ttl_secs = 3600)]
fn lookup(user: String, verbose: bool) -> Result<String, LookupError> {
    LOOKUPS.fetch_add(1, Ordering::SeqCst);
    match user.as_str() {
        "ghost" => Err(LookupError::NotFound(user)),
        _ => Ok(format!("{user} (verbose: {verbose})")),
    }
}

#[dbx_concurio::cached(name = "memoize-shared", key = "square")]
fn slow_square(n: u32) -> Result<u32, dbx_concurio::Error> {
    let counter = env_path("COUNTER");
    append_line(&counter, &n.to_string());
    std::thread::sleep(std::time::Duration::from_millis(300));
    Ok(n * n)
}

#[test]
fn child_main() {
    let Some(role) = child_role() else { return };
    assert_eq!(role, "square");
    assert_eq!(slow_square(12).unwrap(), 144);
}

#[test]
fn memoized_recursion_calls_each_argument_once() {
    isolate();
    assert_eq!(fib(90).unwrap(), 2_880_067_194_370_816_120);
    assert_eq!(FIB_CALLS.load(Ordering::SeqCst), 91);
    assert_eq!(fib(90).unwrap(), 2_880_067_194_370_816_120);
    assert_eq!(
        FIB_CALLS.load(Ordering::SeqCst),
        91,
        "the second call is a hit"
    );
}

#[test]
fn errors_are_returned_as_they_are_and_never_stored() {
    isolate();
    let start = LOOKUPS.load(Ordering::SeqCst);
    assert_eq!(
        lookup("ghost".into(), false),
        Err(LookupError::NotFound("ghost".into()))
    );
    assert_eq!(
        lookup("ghost".into(), false),
        Err(LookupError::NotFound("ghost".into()))
    );
    assert_eq!(lookup("ada".into(), true).unwrap(), "ada (verbose: true)");
    assert_eq!(lookup("ada".into(), true).unwrap(), "ada (verbose: true)");
    assert_eq!(lookup("ada".into(), false).unwrap(), "ada (verbose: false)");
    // ghost twice (errors are not stored), ada/true once, ada/false once.
    assert_eq!(LOOKUPS.load(Ordering::SeqCst) - start, 4);
}

#[test]
fn four_processes_call_the_function_once_for_the_same_arguments() {
    isolate(); // every test sets the environment before any thread reads it (spawn does)
    let tmp = tempfile::tempdir().unwrap();
    let counter = tmp.path().join("counter");
    let children: Vec<_> = (0..4)
        .map(|_| {
            child("child_main", "square")
                .env("DBX_CONCURIO_CACHE_DIR", tmp.path())
                .env("COUNTER", &counter)
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(lines(&counter), vec!["12".to_string()]);
}
