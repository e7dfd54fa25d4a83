//! `concurio run --shared URL` and `cache stats` with a shared tier, against a real
//! `redis-server` started on a free port ("machines" are separate cache directories).

mod common;
#[path = "../../tests/common/redis_server.rs"]
mod redis_server;

use common::{Sandbox, counted, run_args};
use redis_server::RedisServer;

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
