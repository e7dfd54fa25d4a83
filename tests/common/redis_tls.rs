//! A TLS-only `redis-server` with a password, on a free 127.0.0.1 port, with a CA and a
//! server certificate for 127.0.0.1/localhost made here (rcgen; no `openssl` CLI needed),
//! and a second, unrelated CA. Shared by the library's and the CLI's TLS tests (included
//! with `#[path]`, next to `redis_server.rs`, which the including crate must also declare).

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use super::redis_server;

pub const PASSWORD: &str = "tls-s3cret-pw";

/// A TLS-only redis-server with a password, and the PEM files of its CA.
pub struct TlsServer {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl TlsServer {
    pub fn start_or_skip(test: &str) -> Option<TlsServer> {
        if !redis_server::installed_or_skip(test, &["redis-server"]) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_key) = new_ca("concurio test CA");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let issuer = Issuer::new(ca_params("concurio test CA"), ca_key);
        let cert = params.signed_by(&server_key, &issuer).unwrap();
        std::fs::write(dir.path().join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
        let (other_ca, _) = new_ca("some other CA");
        std::fs::write(dir.path().join("other-ca.pem"), other_ca.pem()).unwrap();

        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let file = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--tls-cert-file", &file("server.pem")])
            .args(["--tls-key-file", &file("server.key")])
            .args(["--tls-ca-cert-file", &file("ca.pem")])
            .args(["--tls-auth-clients", "no", "--requirepass", PASSWORD])
            .args(["--dir", &file("")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "TLS port never opened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(TlsServer { port, child, dir })
    }

    pub fn url(&self) -> String {
        format!("rediss://:{PASSWORD}@127.0.0.1:{}/0", self.port)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params
}

fn new_ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    (ca_params(name).self_signed(&key).unwrap(), key)
}
