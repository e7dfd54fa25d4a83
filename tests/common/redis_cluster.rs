//! A real 3-master Redis Cluster on 127.0.0.1 (three `redis-server --cluster-enabled yes`
//! with free client and bus ports, joined by `redis-cli --cluster create`), killed on drop.
//! Include next to `redis_server.rs` (for `installed_or_skip`).
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Three masters, killed on drop.
pub struct Cluster {
    pub ports: Vec<u16>,
    servers: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts and joins the cluster, or prints why the test is skipped.
    pub fn start_or_skip(test: &str) -> Option<Cluster> {
        if !super::redis_server::installed_or_skip(test, &["redis-server", "redis-cli"]) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = Cluster {
            ports: Vec::new(),
            servers: Vec::new(),
            _dir: tempfile::tempdir().unwrap(),
        };
        for n in 0..3 {
            let (port, bus) = (free_port(), free_port());
            let conf = dir.path().join(format!("nodes-{n}.conf"));
            let server = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus.to_string(),
                ])
                .args(["--cluster-config-file", &conf.to_string_lossy()])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--dir", &dir.path().to_string_lossy()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            cluster.ports.push(port);
            cluster.servers.push(server);
        }
        for &port in &cluster.ports {
            cluster.wait_for(port, "PING", "PONG");
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(created.status.success(), "{created:?}");
        for &port in &cluster.ports {
            cluster.wait_for(port, "CLUSTER INFO", "cluster_state:ok");
        }
        cluster._dir = dir;
        Some(cluster)
    }

    /// `redis-cli -p PORT ARGS...`'s output.
    pub fn cli(&self, port: u16, args: &str) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args.split_whitespace())
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_for(&self, port: u16, args: &str, expected: &str) {
        let start = Instant::now();
        while !self.cli(port, args).contains(expected) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "node {port}: `{args}` never said {expected}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The slot ranges node `port` serves (its `myself` line of `CLUSTER NODES`).
    pub fn own_slots(&self, port: u16) -> Vec<(u16, u16)> {
        let nodes = self.cli(port, "CLUSTER NODES");
        let me = nodes
            .lines()
            .find(|l| l.contains("myself"))
            .expect("myself line");
        me.split_whitespace()
            .skip(8)
            .map(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                (lo.parse().unwrap(), hi.parse().unwrap())
            })
            .collect()
    }

    pub fn url(&self, node: usize) -> String {
        format!("redis://127.0.0.1:{}/0", self.ports[node % 3])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}
