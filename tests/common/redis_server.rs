//! A real `redis-server` on a free 127.0.0.1 port, without persistence, owned by one test:
//! started, paused (SIGSTOP), resumed, killed and restarted on the same port, stopped on drop.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// True if every tool runs; else prints why `test` is skipped. The reason goes straight
/// to stderr, past the test harness's capture, so a skip is never silent.
pub fn installed_or_skip(test: &str, tools: &[&str]) -> bool {
    for tool in tools {
        let runs = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok();
        if !runs {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: {tool} is not on PATH (.ci/run installs it with \
                 apt-get install -y redis-server)"
            );
            return false;
        }
    }
    true
}

/// A running server (or one this test stopped or killed).
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server, or prints why the test is skipped and returns `None` (no
    /// `redis-server` on PATH). The reason goes straight to stderr, past the test
    /// harness's capture, so a skip is never silent.
    pub fn start_or_skip(test: &str) -> Option<Self> {
        if !installed_or_skip(test, &["redis-server"]) {
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut server = RedisServer { port, child: None };
        server.restart();
        Some(server)
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// (Re)starts the server on its port, empty, and waits until it answers PING.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", &std::env::temp_dir().to_string_lossy()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let start = Instant::now();
        while !self.answers_ping() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server on port {} did not answer within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// `kill -SIGNAL` (the command: the CLI's tests, which share this file, have no libc).
    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("server running");
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} failed");
    }

    /// Freezes the server: it accepts connections (the kernel does) but answers nothing.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// SIGKILL (also a paused server) and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
