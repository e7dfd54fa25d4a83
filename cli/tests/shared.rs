//! `concurio run --shared URL` and `cache stats` with a shared tier, against a real
//! `redis-server` started on a free port ("machines" are separate cache directories).

mod common;
#[path = "../../tests/common/redis_server.rs"]
mod redis_server;
#[path = "../../tests/common/redis_tls.rs"]
mod redis_tls;

use common::{Sandbox, counted, run_args};
use redis_server::RedisServer;
use redis_tls::{PASSWORD, TlsServer};

#[test]
fn a_command_runs_once_across_two_machines_and_stats_show_both_tiers() {
    let Some(server) = RedisServer::start_or_skip(
        "a_command_runs_once_across_two_machines_and_stats_show_both_tiers",
    ) else {
        return;
    };
    let sb = Sandbox::new();
    let url = server.url();
    let script = counted("echo result");
    // Machine 1 passes --shared; machine 2 gets it from $CONCURIO_SHARED.
    let m1 = ["--dir", "m1", "--name", "fleet", "--shared", url.as_str()];
    let out = sb.ok(&run_args(&m1, &script));
    assert_eq!(out, "result\n");
    let m2 = ["--dir", "m2", "--name", "fleet"];
    let out = sb
        .cmd()
        .env("CONCURIO_SHARED", &url)
        .args(run_args(&m2, &script))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "result\n");
    assert_eq!(
        sb.runs(),
        1,
        "the second machine replayed the first one's result"
    );

    let stats = sb.json(&[
        "cache", "stats", "--json", "--dir", "m2", "--name", "fleet", "--shared", &url,
    ]);
    assert_eq!(stats["entries"], 1, "the local tier was filled: {stats}");
    assert_eq!(stats["shared"]["available"], true, "{stats}");
    assert_eq!(stats["shared"]["entries"], 1, "{stats}");
    // Fleet-wide: machine 1's load (and store), machine 2's shared hit.
    let fleet = &stats["shared"]["fleet"];
    assert_eq!(
        (&fleet["loads"], &fleet["stores"], &fleet["hits"]),
        (&1.into(), &1.into(), &1.into()),
        "{stats}"
    );
    assert!(
        stats["shared"]["used_memory"].as_u64().unwrap() > 0,
        "{stats}"
    );
    let text = sb.ok(&[
        "cache", "stats", "--dir", "m2", "--name", "fleet", "--shared", &url,
    ]);
    assert!(text.contains("1 entries; server uses"), "{text}");
    assert!(text.contains("fleet: 1 hits, "), "{text}");
    let local_only = sb.json(&["cache", "stats", "--json", "--dir", "m2", "--name", "fleet"]);
    assert!(local_only["shared"].is_null(), "{local_only}");

    // A password in the URL is never shown, also when the server is unreachable.
    let secret = format!("redis://u:s3cret@127.0.0.1:{}/0", server.port());
    drop(server);
    let stats = sb.json(&[
        "cache", "stats", "--json", "--dir", "m2", "--name", "fleet", "--shared", &secret,
    ]);
    assert_eq!(stats["shared"]["available"], false, "{stats}");
    assert!(!stats.to_string().contains("s3cret"), "{stats}");
    let help = sb
        .cmd()
        .env("CONCURIO_SHARED", &secret)
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains("s3cret"));
}

/// An output longer than what a local result keeps inline (64 KiB) still runs once across
/// the fleet: with a shared tier, outputs up to 8 MiB stay inline and travel with the result.
#[test]
fn a_one_mib_output_runs_once_across_two_machines_and_replays_byte_exact() {
    let Some(server) = RedisServer::start_or_skip(
        "a_one_mib_output_runs_once_across_two_machines_and_replays_byte_exact",
    ) else {
        return;
    };
    let sb = Sandbox::new();
    let url = server.url();
    // 1 MiB of numbered lines on stdout, a little on stderr.
    let script = counted("seq 1 200000 | head -c 1048576; echo on-stderr >&2");
    let machine = |dir: &'static str| {
        sb.cmd()
            .args(run_args(
                &["--dir", dir, "--name", "fleet", "--shared", &url],
                &script,
            ))
            .output()
            .unwrap()
    };
    let first = machine("m1");
    assert!(first.status.success(), "{first:?}");
    assert_eq!(first.stdout.len(), 1_048_576);
    let second = machine("m2");
    assert!(second.status.success(), "{second:?}");
    assert_eq!(
        sb.runs(),
        1,
        "the second machine replayed the first one's result"
    );
    assert!(
        second.stdout == first.stdout,
        "the replay differs from the output"
    );
    assert_eq!(String::from_utf8_lossy(&second.stderr), "on-stderr\n");
}

/// `--shared rediss://...` with `--shared-tls-ca` (or `$CONCURIO_SHARED_TLS_CA`) runs a
/// command once across two machines over TLS; the wrong CA is refused by name, without the
/// password.
#[test]
fn a_command_runs_once_across_two_machines_over_tls_with_a_private_ca() {
    let Some(server) = TlsServer::start_or_skip(
        "a_command_runs_once_across_two_machines_over_tls_with_a_private_ca",
    ) else {
        return;
    };
    let sb = Sandbox::new();
    let url = server.url();
    let ca = server.file("ca.pem");
    let ca = ca.to_str().unwrap();
    let script = counted("echo over-tls");
    let m1 = [
        "--dir",
        "m1",
        "--name",
        "fleet",
        "--shared",
        &url,
        "--shared-tls-ca",
        ca,
    ];
    assert_eq!(sb.ok(&run_args(&m1, &script)), "over-tls\n");
    let m2 = ["--dir", "m2", "--name", "fleet", "--shared", &url];
    let out = sb
        .cmd()
        .env("CONCURIO_SHARED_TLS_CA", ca)
        .args(run_args(&m2, &script))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over-tls\n");
    assert_eq!(sb.runs(), 1, "the second machine replayed over TLS");

    let other = server.file("other-ca.pem");
    let stats = sb.json(&[
        "cache",
        "stats",
        "--json",
        "--dir",
        "m2",
        "--name",
        "fleet",
        "--shared",
        &url,
        "--shared-tls-ca",
        other.to_str().unwrap(),
    ]);
    assert_eq!(stats["shared"]["available"], false, "{stats}");
    let text = stats.to_string();
    assert!(text.contains("UnknownIssuer"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
}
