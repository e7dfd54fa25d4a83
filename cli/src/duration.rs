//! Durations on the command line: `30s`, `10m`, `1h`, `2d`, `1h30m`, `500ms`; a bare number
//! is seconds.

use std::time::Duration;

/// Parses a duration argument (the clap value parser of `--ttl`, `--stale`, `--older-than`).
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{e} (examples: 30s, 10m, 1h, 2d, 1h30m; a bare number is seconds)"))
}

/// Formats a duration for people, to the second (`1h 2m 3s`), or `0s`.
pub fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        let cases = [
            ("30s", 30),
            ("10m", 600),
            ("1h", 3600),
            ("2d", 172_800),
            ("1h30m", 5400),
            ("45", 45),
        ];
        for (text, secs) in cases {
            assert_eq!(parse(text), Ok(Duration::from_secs(secs)), "{text}");
        }
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse("soon").is_err());
        assert!(parse("-1s").is_err());
        assert_eq!(human(Duration::from_millis(3_723_400)), "1h 2m 3s");
        assert_eq!(human(Duration::ZERO), "0s");
    }
}
