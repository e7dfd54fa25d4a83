//! The shared tier over `rediss://` against a real TLS `redis-server` (Debian's is built
//! with TLS) with a password. The test makes its own CA and a server certificate for
//! 127.0.0.1/localhost (rcgen; no `openssl` CLI needed); the cache trusts that CA with
//! `.shared_tls_ca(path)`. Without `redis-server` every test prints why it is skipped.
#![cfg(feature = "shared")]

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;
#[path = "common/redis_tls.rs"]
mod redis_tls;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use common::{append_line, assert_success, child, child_role, lines, wait_or_kill};
use dbx_concurio::Error;
use dbx_concurio::caches::DiskCache;
use redis_tls::{PASSWORD, TlsServer};

fn machine(dir: &Path, url: &str, ca: &Path) -> dbx_concurio::caches::DiskCacheBuilder {
    DiskCache::builder()
        .directory(dir)
        .name("c")
        .fallback(false)
        .shared(url)
        .shared_tls_ca(ca)
        .shared_timeouts(Duration::from_secs(2), Duration::from_secs(2))
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child env {name}"))
}

#[test]
fn child_main() {
    let Some(role) = child_role() else { return };
    let cache = machine(
        Path::new(&env("CACHE")),
        &env("REDIS"),
        Path::new(&env("CA")),
    )
    .shared_required(true)
    .build()
    .expect("open cache");
    assert_eq!(role, "load");
    let counter = PathBuf::from(env("COUNTER"));
    let v = cache
        .get_or_load(
            "k",
            || {
                append_line(&counter, &std::process::id().to_string());
                std::thread::sleep(Duration::from_millis(300));
                Ok::<_, std::io::Error>(format!("from {}", std::process::id()))
            },
            None,
        )
        .expect("get_or_load");
    println!("VALUE {}", v.value);
}

#[test]
fn two_processes_load_a_key_once_over_tls_with_a_password() {
    let Some(server) =
        TlsServer::start_or_skip("two_processes_load_a_key_once_over_tls_with_a_password")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let counter = tmp.path().join("loads");
    let children: Vec<Child> = (0..2)
        .map(|i| {
            child("child_main", "load")
                .env("CACHE", tmp.path().join(format!("m{i}")))
                .env("REDIS", server.url())
                .env("CA", server.file("ca.pem"))
                .env("COUNTER", &counter)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn child")
        })
        .collect();
    let values: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = wait_or_kill(c, Duration::from_secs(60), "load");
            assert_success(&out, "load");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect();
    assert_eq!(lines(&counter).len(), 1, "loaded once: {values:?}");
    let value = |out: &str| {
        out.lines()
            .find(|l| l.starts_with("VALUE "))
            .map(str::to_owned)
    };
    assert_eq!(value(&values[0]), value(&values[1]));
    assert!(value(&values[0]).is_some(), "{values:?}");

    // The server speaks only TLS: the same address without it is refused.
    let plain = format!("redis://:{PASSWORD}@127.0.0.1:{}/0", server.port);
    let cache = DiskCache::builder()
        .directory(tmp.path().join("plain"))
        .shared(plain)
        .shared_required(true)
        .shared_timeouts(Duration::from_millis(500), Duration::from_millis(500))
        .build()
        .unwrap();
    assert!(cache.get::<String>("k").is_err());
}

/// Everything the library logs (all levels) while `f` runs on this thread.
fn logs_of<R>(f: impl FnOnce() -> R) -> (R, String) {
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut out = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            out.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    (out, text)
}

#[test]
fn a_wrong_ca_is_a_clear_error_or_a_warned_fallback_and_the_password_never_shows() {
    let Some(server) = TlsServer::start_or_skip(
        "a_wrong_ca_is_a_clear_error_or_a_warned_fallback_and_the_password_never_shows",
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let wrong = server.file("other-ca.pem");

    let required = machine(&tmp.path().join("r"), &server.url(), &wrong)
        .shared_required(true)
        .build()
        .unwrap();
    let (result, logs) = logs_of(|| required.get_or_load("k", || Ok::<_, std::io::Error>(1), None));
    let err = result.unwrap_err();
    let shown = format!("{err} | {err:?}");
    assert!(matches!(err, Error::Shared { .. }), "{shown}");
    assert!(
        shown.contains("invalid peer certificate: UnknownIssuer"),
        "the error says what is wrong: {shown}"
    );
    assert!(
        shown.contains(&format!("rediss://***@127.0.0.1:{}", server.port)),
        "{shown}"
    );
    for text in [&shown, &logs] {
        assert!(!text.contains(PASSWORD), "password shown: {text}");
    }

    // Not required: the call falls back to the local tier with one warning.
    let degraded = machine(&tmp.path().join("d"), &server.url(), &wrong)
        .build()
        .unwrap();
    let (value, logs) = logs_of(|| {
        degraded
            .get_or_load("k", || Ok::<_, std::io::Error>(2), None)
            .unwrap()
            .value
    });
    assert_eq!(value, 2);
    assert!(logs.contains("unavailable"), "warned: {logs}");
    assert!(!logs.contains(PASSWORD), "password logged: {logs}");
    let stats = degraded.stats().unwrap().shared.unwrap();
    assert_eq!((stats.available, stats.outages), (false, 1));

    // The right CA, for comparison: the same URL works.
    let right = machine(
        &tmp.path().join("ok"),
        &server.url(),
        &server.file("ca.pem"),
    )
    .shared_required(true)
    .build()
    .unwrap();
    let (value, logs) = logs_of(|| right.get_or_load("k", || Ok::<_, std::io::Error>(3), None));
    assert_eq!(value.unwrap().value, 3);
    assert!(!logs.contains(PASSWORD), "password logged: {logs}");

    // A CA file that is not there, or one given for a URL without TLS: errors at build.
    let missing = tmp.path().join("no-such-ca.pem");
    let err = machine(&tmp.path().join("m"), &server.url(), &missing)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("no-such-ca.pem"), "{err}");
    let err = machine(
        &tmp.path().join("p"),
        "redis://127.0.0.1:1/0",
        &server.file("ca.pem"),
    )
    .build()
    .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
}
