//! Byte sizes on the command line: `4096`, `64K`, `500M`, `2G` (powers of 1024; a trailing
//! `B` or `iB` is accepted, so `500MiB` and `500MB` mean the same).

pub fn parse(text: &str) -> Result<u64, String> {
    let upper = text.trim().to_ascii_uppercase();
    let digits = upper.trim_end_matches("IB").trim_end_matches('B');
    let (number, shift) = match digits.char_indices().last() {
        Some((i, 'K')) => (&digits[..i], 10),
        Some((i, 'M')) => (&digits[..i], 20),
        Some((i, 'G')) => (&digits[..i], 30),
        Some((i, 'T')) => (&digits[..i], 40),
        _ => (digits, 0),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("invalid size {text:?} (examples: 4096, 64K, 500M, 2G)"))
}

/// A byte count for people: `512 B`, `1.5 KiB`, `3.0 MiB`, ... (powers of 1024, as `parse`).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_units() {
        assert_eq!(super::parse("4096"), Ok(4096));
        assert_eq!(super::parse("64K"), Ok(64 << 10));
        assert_eq!(super::parse("500MiB"), Ok(500 << 20));
        assert_eq!(super::parse("2g"), Ok(2 << 30));
        assert!(super::parse("").is_err());
        assert!(super::parse("12X").is_err());
        assert!(super::parse("99999999999T").is_err());
    }

    #[test]
    fn human_units() {
        assert_eq!(super::human(0), "0 B");
        assert_eq!(super::human(1023), "1023 B");
        assert_eq!(super::human(1536), "1.5 KiB");
        assert_eq!(super::human(3 << 20), "3.0 MiB");
        assert_eq!(super::human(5 << 30), "5.0 GiB");
    }
}
