//! HTTP(S) downloads with ureq (rustls): timeouts, retries with backoff, length check,
//! progress bar. Proxies come from the usual environment variables (ureq's default).

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::staging::{FetchOptions, Fetched, HashingWriter, staging_file};
use crate::error::{BoxError, Error, IoContext, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A stalled connection is given up (and retried) after this long without a byte.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A server's Retry-After is honoured up to this: a day-long ban should fail, not hang.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// A failed attempt, and whether another may succeed.
struct Failure {
    error: Error,
    retryable: bool,
    retry_after: Option<Duration>,
}

impl Failure {
    fn fatal(error: Error) -> Self {
        Failure {
            error,
            retryable: false,
            retry_after: None,
        }
    }
}

/// Downloads `url` into a staging file in `dir`, retrying transient failures.
pub(super) fn download(url: &str, dir: &Path, options: &FetchOptions<'_>) -> Result<Fetched> {
    let agent = agent(options.timeout);
    let mut attempt = 0;
    loop {
        match attempt_download(&agent, url, dir, options) {
            Ok(fetched) => return Ok(fetched),
            Err(failure) if failure.retryable && attempt < options.retries => {
                let pause = backoff(attempt, failure.retry_after);
                attempt += 1;
                tracing::warn!(
                    "{}; retry {attempt} of {} in {pause:?}",
                    failure.error,
                    options.retries
                );
                std::thread::sleep(pause);
            }
            Err(failure) => return Err(failure.error),
        }
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        // We look at the status ourselves: Retry-After lives in the headers of an error.
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT.min(timeout)))
        .timeout_per_read(Some(IDLE_TIMEOUT.min(timeout)))
        .timeout_per_call(Some(timeout))
        // The bytes as published: a pinned sha256 is of the file, not of a re-encoding.
        .accept_encoding("identity")
        .user_agent(concat!("dbx-concurio/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

fn attempt_download(
    agent: &ureq::Agent,
    url: &str,
    dir: &Path,
    options: &FetchOptions<'_>,
) -> std::result::Result<Fetched, Failure> {
    tracing::debug!("downloading {url}");
    let mut request = agent.get(url);
    for (name, value) in options.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let response = request.call().map_err(|e| transport_failure(url, e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(Failure {
            error: download_error(
                url,
                Some(status.as_u16()),
                format!("HTTP status {status}"),
                None,
            ),
            retryable: status.is_server_error() || status.as_u16() == 429,
            retry_after: header(&response, "retry-after").and_then(parse_retry_after),
        });
    }
    // ureq removes Content-Length when it decompresses, so a present one is the body's size.
    let expected = header(&response, "content-length").and_then(|v| v.parse::<u64>().ok());
    let file = staging_file(dir).map_err(Failure::fatal)?;
    let mut out = HashingWriter::new(file);
    let progress = progress_bar(url, expected);
    let mut body = response.into_body().into_reader();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => {
                let of = expected.map_or(String::new(), |e| format!(" of {e} (Content-Length)"));
                let reason = format!(
                    "reading the body failed after {} bytes{of}: {err}",
                    out.written()
                );
                return Err(Failure {
                    error: download_error(url, None, reason, Some(Box::new(err))),
                    retryable: true,
                    retry_after: None,
                });
            }
        };
        out.write_all(&buf[..n])
            .at("write", Path::new(dir))
            .map_err(Failure::fatal)?;
        progress.inc(n as u64);
    }
    progress.finish_and_clear();
    if let Some(expected) = expected.filter(|&e| e != out.written()) {
        let reason = format!(
            "the body has {} bytes but Content-Length says {expected}",
            out.written()
        );
        return Err(Failure {
            error: download_error(url, None, reason, None),
            retryable: true,
            retry_after: None,
        });
    }
    Ok(out.finish())
}

fn header<'a>(response: &'a ureq::http::Response<ureq::Body>, name: &str) -> Option<&'a str> {
    response.headers().get(name)?.to_str().ok()
}

fn transport_failure(url: &str, err: ureq::Error) -> Failure {
    let retryable = matches!(
        err,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
    );
    let reason = err.to_string();
    Failure {
        error: download_error(url, None, reason, Some(Box::new(err))),
        retryable,
        retry_after: None,
    }
}

fn download_error(
    url: &str,
    status: Option<u16>,
    reason: String,
    source: Option<BoxError>,
) -> Error {
    Error::Download {
        url: url.to_owned(),
        status,
        reason,
        source,
    }
}

/// `Retry-After` in seconds (the HTTP-date form falls back to our own backoff).
fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Exponential backoff with jitter (50-100 %), or the server's Retry-After, both capped.
fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(wait) = retry_after {
        return wait.min(MAX_RETRY_AFTER);
    }
    let exponential = FIRST_BACKOFF
        .saturating_mul(1 << attempt.min(16))
        .min(MAX_BACKOFF);
    exponential.mul_f64(0.5 + jitter() / 2.0)
}

/// A number in [0, 1) that differs between processes and calls: spreads the retries of
/// many processes that failed together. Not cryptographic; no `rand` needed for that.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// A progress bar on stderr when it is a terminal; a hidden one otherwise.
fn progress_bar(url: &str, len: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
    let template = match len {
        Some(_) => "{msg} {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        None => "{msg} {spinner} {bytes} ({bytes_per_sec})",
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    let name = url.rsplit('/').next().unwrap_or(url);
    bar.set_message(format!("downloading {name}"));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        assert!(backoff(0, None) <= FIRST_BACKOFF);
        assert!(backoff(0, None) >= FIRST_BACKOFF / 2);
        assert!(backoff(30, None) <= MAX_BACKOFF);
        assert_eq!(
            backoff(0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            backoff(0, Some(Duration::from_secs(1 << 20))),
            MAX_RETRY_AFTER
        );
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
