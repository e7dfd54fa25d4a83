//! A command's stored output (one of stdout, stderr): small outputs inline in the run entry,
//! big ones in a stream entry of their own, written as the command prints and read back
//! as a stream, so no output is ever whole in memory.
//!
//! Stream entries are named per run (`run-stream:<time>-<pid>-<n>:<stdout|stderr>`), never
//! per key: a result that replaces another one writes new entries, so a replay that has
//! opened the old ones reads them to the end (an unlinked file stays readable while it is
//! open), and it can never mix the stdout of one run with the stderr of another.

use std::io::{self, Cursor, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dbx_concurio::Error;
use dbx_concurio::caches::DiskCache;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// The longest output kept inline in the run entry; a longer one gets a stream entry. Up
/// to this much is held in memory per pipe while the command runs (a bounded buffer). Most
/// outputs fit, and then a run costs one write, as before streams.
pub const INLINE_MAX: usize = 64 * 1024;

/// The longest output kept inline when the cache has a shared tier: stream entries are
/// local-only, and a result is shared with other machines only with its outputs inline.
/// Two outputs of this size stay well under the shared tier's default value limit (64 MiB)
/// and a run under 128 MiB of memory (held, encoded, sent).
pub const SHARED_INLINE_MAX: usize = 8 * 1024 * 1024;

/// Bytes per read and write when passing an output through (a fixed buffer).
const CHUNK: usize = 64 * 1024;

/// The prefix of stream entry keys (`cache list` folds them into their run entry).
const STREAM_PREFIX: &str = "run-stream:";

/// One stored output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Output {
    /// The bytes themselves (a MessagePack `bin`: the format of every result stored before
    /// stream entries existed, which are therefore still read).
    Inline(ByteBuf),
    /// In the stream entry `stream`, `len` bytes long.
    Stream { stream: String, len: u64 },
}

impl Output {
    /// No output.
    pub fn empty() -> Self {
        Output::Inline(ByteBuf::new())
    }

    /// The output's length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Output::Inline(bytes) => bytes.len() as u64,
            Output::Stream { len, .. } => *len,
        }
    }

    /// The stream entry's key, if it has one.
    pub fn stream_key(&self) -> Option<&str> {
        match self {
            Output::Inline(_) => None,
            Output::Stream { stream, .. } => Some(stream),
        }
    }

    /// The output as a stream, checked as it is read (damage shows as an `InvalidData`
    /// error of the last read). `None` if its stream entry is gone (pruned, evicted,
    /// deleted).
    pub fn open(&self, cache: &DiskCache) -> Result<Option<Box<dyn Read + Send>>, Error> {
        match self {
            Output::Inline(bytes) => Ok(Some(Box::new(Cursor::new(bytes.to_vec())))),
            Output::Stream { stream, .. } => Ok(cache
                .get_reader(stream)?
                .map(|r| Box::new(r) as Box<dyn Read + Send>)),
        }
    }
}

/// True for the key of a stream entry.
pub fn is_stream_key(key: &str) -> bool {
    key.starts_with(STREAM_PREFIX)
}

/// Deletes stream entries, logging (not failing on) what cannot be deleted: an entry left
/// behind only takes space until it expires.
pub fn delete_streams<'a>(cache: &DiskCache, keys: impl IntoIterator<Item = &'a str>) {
    for key in keys {
        if let Err(e) = cache.delete(key) {
            tracing::warn!("cannot delete the stream entry {key}: {e}");
        }
    }
}

/// Where the outputs of one run are stored: stream entries named after the run, kept for
/// `expire`.
pub struct Streams<'a> {
    cache: &'a DiskCache,
    run_id: String,
    expire: Option<Duration>,
    inline_max: usize,
}

/// What capturing one pipe gave.
pub enum Captured {
    /// The output, stored (a stream entry) or ready to store (inline).
    Kept(Output),
    /// The output was passed through, but storing it failed (a full disk).
    NotStored(Error),
}

impl<'a> Streams<'a> {
    pub fn new(cache: &'a DiskCache, expire: Option<Duration>) -> Self {
        Streams {
            cache,
            run_id: run_id(),
            expire,
            inline_max: INLINE_MAX,
        }
    }

    /// Keeps outputs up to `bytes` long inline (instead of [`INLINE_MAX`]).
    pub fn inline_up_to(self, bytes: usize) -> Self {
        Streams {
            inline_max: bytes,
            ..self
        }
    }

    /// The cache the stream entries go to.
    pub fn cache(&self) -> &DiskCache {
        self.cache
    }

    /// Reads `from` to its end, writing each chunk to `to` as it arrives (live output) and
    /// keeping the bytes: inline if they fit in the inline limit, else in the stream entry
    /// `name` of this run. Writing to `to` may fail (a closed pipe): the output is still
    /// read and kept. Storing may fail: the output is still passed through to the end (the
    /// command must not block on a full pipe), then that failure is returned.
    pub fn capture(&self, name: &str, from: impl Read, to: impl Write) -> io::Result<Captured> {
        let mut tee = Tee::new(from, to);
        let mut head = Vec::new();
        (&mut tee)
            .take(self.inline_max as u64 + 1)
            .read_to_end(&mut head)?;
        if head.len() <= self.inline_max {
            return Ok(Captured::Kept(Output::Inline(ByteBuf::from(head))));
        }
        let key = format!("{STREAM_PREFIX}{}:{name}", self.run_id);
        let stored = self
            .cache
            .set_reader(&key, Cursor::new(head).chain(&mut tee), self.expire);
        match stored {
            Ok(len) => Ok(Captured::Kept(Output::Stream { stream: key, len })),
            Err(e) => {
                tee.pass_rest()?;
                Ok(Captured::NotStored(e))
            }
        }
    }
}

/// Passes `from` through to `to` to its end, keeping nothing (an uncached run).
pub fn pass_through(from: impl Read, to: impl Write) -> io::Result<()> {
    Tee::new(from, to).pass_rest()
}

/// Copies a stored output to `to` through a fixed buffer. A closed pipe on our side
/// (`| head`) ends the copy without an error. An `InvalidData` error means the stored bytes
/// are damaged.
pub fn replay(mut from: impl Read, len: u64, to: &mut impl Write) -> io::Result<()> {
    // No bigger than the output (+1 to see its end in one read): a cache hit of a short
    // output does not zero a 64 KiB buffer (page faults are much of what a hit costs).
    let size = usize::try_from(len.saturating_add(1)).map_or(CHUNK, |n| n.min(CHUNK));
    let mut buf = vec![0u8; size];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        match to.write_all(&buf[..n]) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            other => other?,
        }
    }
    match to.flush() {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// A reader that writes what it reads to `to` as it passes, flushed (live output). Once
/// `to` fails (a closed pipe) it is dropped and reading goes on.
///
/// It reads `from` a chunk at a time into a buffer of its own, whatever its caller asks
/// for, so output reaches `to` in the pieces the command wrote: `read_to_end` asks for a
/// few bytes at a time as its vector grows, and passing its reads through cut lines where
/// its buffer happened to end (`AFTER` went out as `A`, then `FTER`).
struct Tee<R, W> {
    from: R,
    to: Option<W>,
    buf: Box<[u8]>,
    /// `buf[start..end]`: read from `from`, passed to `to`, not yet given to the caller.
    start: usize,
    end: usize,
}

impl<R: Read, W: Write> Tee<R, W> {
    fn new(from: R, to: W) -> Self {
        Tee {
            from,
            to: Some(to),
            buf: vec![0u8; CHUNK].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Reads the next chunk of `from` into the buffer and passes it to `to`; 0 at the end.
    fn fill(&mut self) -> io::Result<usize> {
        let n = loop {
            match self.from.read(&mut self.buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        if let Some(to) = &mut self.to
            && (to.write_all(&self.buf[..n]).is_err() || to.flush().is_err())
        {
            self.to = None;
        }
        (self.start, self.end) = (0, n);
        Ok(n)
    }

    /// Reads the rest, passing it through.
    fn pass_rest(mut self) -> io::Result<()> {
        while self.fill()? != 0 {}
        Ok(())
    }
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.start == self.end && self.fill()? == 0 {
            return Ok(0);
        }
        let n = out.len().min(self.end - self.start);
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

/// A name for one run's stream entries that no other run (of any process) takes: the time,
/// our pid, and a counter for runs within one process.
fn run_id() -> String {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    format!("{ns}-{}-{n}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that returns its chunks one per read, as a pipe returns a command's writes.
    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl Read for Chunks {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let Some(mut chunk) = self.0.pop_front() else {
                return Ok(0);
            };
            let n = out.len().min(chunk.len());
            out[..n].copy_from_slice(&chunk[..n]);
            if n < chunk.len() {
                self.0.push_front(chunk.split_off(n));
            }
            Ok(n)
        }
    }

    /// A writer that records each write.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl Write for &mut Writes {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.push(bytes.to_vec());
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn live_output_goes_out_in_the_pieces_the_command_wrote() {
        let chunks: Vec<Vec<u8>> = [7, 6, 1, 100, 3000, 40_000]
            .iter()
            .enumerate()
            .map(|(i, &len)| vec![b'a' + i as u8; len])
            .collect();
        let mut writes = Writes::default();
        let mut kept = Vec::new();
        let mut tee = Tee::new(Chunks(chunks.iter().cloned().collect()), &mut writes);
        // As `Streams::capture` reads: through `take` and `read_to_end`, small reads first.
        (&mut tee).take(20_000).read_to_end(&mut kept).unwrap();
        tee.pass_rest().unwrap();
        assert_eq!(
            writes.0, chunks,
            "output went out cut where the reader's buffer ended"
        );
        assert_eq!(kept, chunks.concat()[..20_000]);
    }
}
