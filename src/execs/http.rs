//! HTTP(S) downloads with ureq (rustls): timeouts, retries with backoff, length check,
//! progress bar. Proxies come from the usual environment variables (ureq's default).

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::partial::{Partial, Validator};
use super::staging::{
    FetchOptions, Fetched, HashingWriter, discard_partial, exceeded_limit, too_large_reason,
};
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

/// Downloads `url` into `<dir>/.partial`, retrying transient failures. A body cut short is
/// resumed with a `Range` request where the server allows it, within this call and (from the
/// kept partial file) in the next one: see [`super::partial`].
pub(super) fn download(url: &str, dir: &Path, options: &FetchOptions<'_>) -> Result<Fetched> {
    let agent = agent(options.timeout);
    // Without the lock to ourselves, `.partial` may be another process's: leave it alone.
    let mut partial = options
        .resumable
        .then(|| Partial::load(dir, url, options.max_size))
        .flatten();
    let mut attempt = 0;
    loop {
        match attempt_download(&agent, url, dir, options, &mut partial) {
            Ok(()) => {
                return match partial {
                    Some(partial) => Ok(partial.finish(dir)),
                    None => Err(download_error(url, None, "no body".into(), None)),
                };
            }
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
            Err(failure) => {
                if let Some(partial) = partial {
                    partial.keep(dir, url);
                }
                return Err(failure.error);
            }
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

/// One request. Appends to `partial` (206 to our Range request) or starts it over (200),
/// and records whether the server would let a later attempt resume.
fn attempt_download(
    agent: &ureq::Agent,
    url: &str,
    dir: &Path,
    options: &FetchOptions<'_>,
    partial: &mut Option<Partial>,
) -> std::result::Result<(), Failure> {
    let resume = partial
        .as_ref()
        .and_then(|p| p.resume_from())
        .map(|(offset, v)| (offset, v.as_str().to_owned()));
    tracing::debug!(
        "downloading {url} (from byte {})",
        resume.as_ref().map_or(0, |r| r.0)
    );
    let mut request = agent.get(url);
    for (name, value) in options.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    if let Some((offset, validator)) = &resume {
        // If-Range: the rest of *this* version, or the whole file if it changed.
        request = request
            .header("Range", format!("bytes={offset}-"))
            .header("If-Range", validator.as_str());
    }
    let response = request.call().map_err(|e| transport_failure(url, e))?;
    let status = response.status();
    if !status.is_success() {
        if status.as_u16() == 416 && partial.take().is_some() && options.resumable {
            // Our offset is past the end: the file shrank. Start over next time.
            discard_partial(dir);
        }
        return Err(status_failure(url, &response));
    }
    // ureq removes Content-Length when it decompresses, so a present one is the body's size.
    let length = header(&response, "content-length").and_then(|v| v.parse::<u64>().ok());
    let start = match (status.as_u16(), &resume) {
        (206, Some((offset, _))) => {
            check_content_range(url, header(&response, "content-range"), *offset)?;
            *offset
        }
        (206, None) => {
            // Part of the file when we asked for all of it (a Range header of the caller's?).
            let reason = "a partial answer (206) to a request for the whole file".into();
            return Err(Failure::fatal(download_error(url, Some(206), reason, None)));
        }
        _ => 0, // the whole body: the server ignored the range, or the file changed
    };
    let expected = length.map(|l| start + l);
    if let (Some(limit), Some(total)) = (options.max_size, expected)
        && total > limit
    {
        return Err(Failure::fatal(too_large(url, limit, Some(total))));
    }
    let validator = Validator::from_headers(
        header(&response, "accept-ranges"),
        header(&response, "etag"),
        header(&response, "last-modified"),
    );
    let out = prepare_partial(partial, dir, url, options, start, validator)?;
    let progress = progress_bar(url, expected);
    progress.set_position(start);
    let body = response.into_body().into_reader();
    let result = copy_body(body, out, &progress, url, expected);
    progress.finish_and_clear();
    result?;
    check_length(url, expected, out.written())
}

/// An HTTP error status; 5xx, 429 and 416 (retried from zero) are worth another attempt.
fn status_failure(url: &str, response: &ureq::http::Response<ureq::Body>) -> Failure {
    let status = response.status();
    Failure {
        error: download_error(
            url,
            Some(status.as_u16()),
            format!("HTTP status {status}"),
            None,
        ),
        retryable: status.is_server_error() || matches!(status.as_u16(), 416 | 429),
        retry_after: header(response, "retry-after").and_then(parse_retry_after),
    }
}

/// A body shorter (or longer) than announced is retried: the next attempt may resume.
fn check_length(
    url: &str,
    expected: Option<u64>,
    written: u64,
) -> std::result::Result<(), Failure> {
    match expected.filter(|&e| e != written) {
        Some(expected) => Err(Failure {
            error: download_error(
                url,
                None,
                format!("the body has {written} bytes but Content-Length says {expected}"),
                None,
            ),
            retryable: true,
            retry_after: None,
        }),
        None => Ok(()),
    }
}

/// The writer to append the body to: the partial file as it is when resuming (`start` > 0),
/// else an empty one. Records the validator of the bytes about to be written.
fn prepare_partial<'a>(
    partial: &'a mut Option<Partial>,
    dir: &Path,
    url: &str,
    options: &FetchOptions<'_>,
    start: u64,
    validator: Option<Validator>,
) -> std::result::Result<&'a mut HashingWriter, Failure> {
    let fresh = match partial.take() {
        Some(p) if start > 0 => p,
        Some(mut p) => {
            p.writer
                .restart()
                .at("truncate", p.writer.path())
                .map_err(Failure::fatal)?;
            p
        }
        None => {
            Partial::create(dir, options.max_size, options.resumable).map_err(Failure::fatal)?
        }
    };
    let partial = partial.insert(fresh);
    // Resuming keeps the validator we sent (the server confirmed it by answering 206).
    if start == 0 {
        partial.set_validator(dir, url, validator);
    }
    Ok(&mut partial.writer)
}

/// A 206 must continue exactly where our file ends.
fn check_content_range(
    url: &str,
    content_range: Option<&str>,
    offset: u64,
) -> std::result::Result<(), Failure> {
    let first = content_range
        .and_then(|v| v.trim().strip_prefix("bytes "))
        .and_then(|v| v.split_once('-'))
        .and_then(|(first, _)| first.trim().parse::<u64>().ok());
    if first == Some(offset) {
        return Ok(());
    }
    let reason = format!(
        "asked for the bytes from {offset} on, got Content-Range {:?}",
        content_range.unwrap_or("")
    );
    Err(Failure::fatal(download_error(url, Some(206), reason, None)))
}

/// Streams the body into `out`. A read error is retryable (the next attempt may resume).
fn copy_body(
    mut body: impl Read,
    out: &mut HashingWriter,
    progress: &ProgressBar,
    url: &str,
    expected: Option<u64>,
) -> std::result::Result<(), Failure> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => return Ok(()),
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
        if let Err(err) = out.write_all(&buf[..n]) {
            let error = match exceeded_limit(&err) {
                Some(limit) => too_large(url, limit, None),
                None => Error::io("write", out.path().to_owned(), err),
            };
            return Err(Failure::fatal(error));
        }
        progress.inc(n as u64);
    }
}

/// The size-limit error; `announced` is a Content-Length over the limit.
fn too_large(url: &str, limit: u64, announced: Option<u64>) -> Error {
    let reason = match announced {
        Some(total) => format!("{total} bytes announced, {}", too_large_reason(limit)),
        None => too_large_reason(limit),
    };
    download_error(url, None, reason, None)
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
