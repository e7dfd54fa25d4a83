//! A tiny real HTTP/1.1 server on 127.0.0.1 for the execs tests: every request is counted
//! and answered by a closure, which can also truncate or stall the body.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the server answers.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Content-Length to announce instead of the body's length (a truncated body).
    pub content_length: Option<usize>,
    /// Send this many body bytes, then hang until the server stops.
    pub stall_after: Option<usize>,
    /// Wait this long before sending the body (lets concurrent clients pile up).
    pub delay: Duration,
    /// Send the body in pieces of this many bytes (0: at once), pausing `pause` after each:
    /// a slow download, so a client can be killed in the middle of it.
    pub chunk: usize,
    pub pause: Duration,
    /// Send this many body bytes, then close the connection (a cut download).
    pub cut_after: Option<usize>,
    /// No Content-Length; send the body again and again until the client goes away.
    pub endless: bool,
}

impl Reply {
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Reply {
            status: 200,
            body: body.into(),
            ..Reply::default()
        }
    }

    pub fn status(status: u16) -> Self {
        Reply {
            status,
            body: format!("status {status}").into_bytes(),
            ..Reply::default()
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// `body`, version `etag`, answering Range requests the way a file server does: a 206 with
    /// the rest of the body for `Range: bytes=N-` (unless an If-Range names another version),
    /// else a 200 with all of it. Always advertises `Accept-Ranges: bytes` and the ETag.
    pub fn ranged(body: &[u8], etag: &str, request: &Received) -> Self {
        let etag = format!("\"{etag}\"");
        let same_version = request.header("if-range").is_none_or(|v| v == etag);
        let start = request
            .header("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| same_version && n < body.len());
        let reply = match start {
            Some(n) => Reply {
                status: 206,
                body: body[n..].to_vec(),
                ..Reply::default()
            }
            .header(
                "Content-Range",
                &format!("bytes {n}-{}/{}", body.len() - 1, body.len()),
            ),
            None => Reply::ok(body),
        };
        reply.header("Accept-Ranges", "bytes").header("ETag", &etag)
    }

    /// Sends `n` body bytes, then closes the connection.
    pub fn cut_after(self, n: usize) -> Self {
        Reply {
            cut_after: Some(n),
            ..self
        }
    }
}

impl Received {
    /// The value of header `name` (case-insensitive), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }
}

/// A request as received: path and raw header lines.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<String>,
}

type Handler = dyn Fn(usize, &Received) -> Reply + Send + Sync;

pub struct Server {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts a server; `handler(n, request)` answers the n-th request (from 0).
    pub fn start(handler: impl Fn(usize, &Received) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let thread = {
            let (hits, received, stop) = (hits.clone(), received.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (hits, received, stop, handler) = (
                        hits.clone(),
                        received.clone(),
                        stop.clone(),
                        handler.clone(),
                    );
                    std::thread::spawn(move || {
                        serve(stream, &hits, &received, &stop, &*handler);
                    });
                }
            })
        };
        Server {
            addr,
            hits,
            received,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    /// Stops accepting (the port is closed afterwards) and releases stalled replies.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(
    stream: TcpStream,
    hits: &AtomicUsize,
    received: &Mutex<Vec<Received>>,
    stop: &AtomicBool,
    handler: &Handler,
) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return; // the shutdown wake-up connection
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        headers.push(line.trim().to_owned());
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    let request = Received { path, headers };
    received.lock().expect("lock").push(request.clone());
    let n = hits.fetch_add(1, Ordering::SeqCst);
    let reply = handler(n, &request);

    let mut stream = stream;
    let length = reply.content_length.unwrap_or(reply.body.len());
    let mut head = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", reply.status);
    if !reply.endless {
        head.push_str(&format!("Content-Length: {length}\r\n"));
    }
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    std::thread::sleep(reply.delay);
    if reply.endless {
        // Until the client hangs up (or the server stops).
        while !stop.load(Ordering::SeqCst) && stream.write_all(&reply.body).is_ok() {}
        return;
    }
    let sent = reply
        .stall_after
        .or(reply.cut_after)
        .unwrap_or(reply.body.len())
        .min(reply.body.len());
    let piece_len = if reply.chunk == 0 {
        sent.max(1)
    } else {
        reply.chunk
    };
    for piece in reply.body[..sent].chunks(piece_len) {
        if stream
            .write_all(piece)
            .and_then(|()| stream.flush())
            .is_err()
        {
            return;
        }
        std::thread::sleep(reply.pause);
    }
    if reply.stall_after.is_some() {
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // Dropping the stream closes the connection: a short body ends here.
}
