//! Durations as workflow authors write them: `90s`, `10m`, `1h30m`.
//!
//! One grammar for every `timeout`, `initial_delay` and `max_delay`, so a
//! file never mixes seconds and milliseconds by accident: one or more
//! `<digits><unit>` parts, units `h`, `m`, `s` (and `ms` for sub-second
//! delays), largest first, each at most once, no spaces. A bare number is
//! rejected on purpose: `timeout: 30` could mean seconds or minutes.

use std::time::Duration;

/// Parses a duration such as `90s`, `10m`, `1h30m` or `500ms`.
///
/// # Errors
/// A sentence saying what was expected, for the validation report (zero is
/// rejected too: a zero timeout or delay is always a mistake).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "expected a duration such as `90s`, `10m` or `1h30m` \
(units h, m, s, ms; largest first)";
    let s = text.trim();
    if s.is_empty() {
        return Err(format!("empty duration: {EXPECTED}"));
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total_ms: u128 = 0;
    // Rank of the last unit seen (h=4, m=3, s=2, ms=1); units must descend.
    let mut last_rank = u8::MAX;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(format!("`{text}` is not a duration: {EXPECTED}"));
        }
        let number: u128 = s[start..i]
            .parse()
            .map_err(|_| format!("`{text}` has a number too large: {EXPECTED}"))?;
        let (rank, unit_ms, len) = if s[i..].starts_with("ms") {
            (1, 1, 2)
        } else {
            match bytes.get(i) {
                Some(b'h') => (4, 3_600_000, 1),
                Some(b'm') => (3, 60_000, 1),
                Some(b's') => (2, 1_000, 1),
                Some(_) => {
                    return Err(format!(
                        "`{text}` has an unknown unit `{}`: {EXPECTED}",
                        &s[i..]
                    ));
                }
                None => {
                    return Err(format!("`{text}` lacks a unit: {EXPECTED}"));
                }
            }
        };
        if rank >= last_rank {
            return Err(format!("`{text}` repeats or misorders units: {EXPECTED}"));
        }
        last_rank = rank;
        i += len;
        total_ms = total_ms.saturating_add(number.saturating_mul(unit_ms));
    }
    if total_ms == 0 {
        return Err(format!(
            "`{text}` is zero: a timeout or delay must be longer than nothing"
        ));
    }
    let ms = u64::try_from(total_ms).map_err(|_| format!("`{text}` is too long"))?;
    Ok(Duration::from_millis(ms))
}

/// Formats a duration the way [`parse_duration`] reads it (`1h30m`, `90s` → `1m30s`).
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 5m "), Ok(Duration::from_secs(300)));
    }

    #[test]
    fn rejects_ambiguous_or_malformed_text() {
        for bad in [
            "", "30", "10 m", "1.5h", "m", "10x", "1d", "30m1h", "1m1m", "0s", "0h0m", "-5s",
            "5sec", "1h 30m",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(
                err.contains("duration") || err.contains("zero"),
                "{bad}: {err}"
            );
        }
        assert_eq!(
            parse_duration("10x").unwrap_err(),
            "`10x` has an unknown unit `x`: expected a duration such as `90s`, `10m` or `1h30m` \
(units h, m, s, ms; largest first)"
        );
        assert!(parse_duration("99999999999999999999999h").is_err());
    }

    #[test]
    fn formats_round_trip() {
        for text in ["1h30m", "90ms", "1m30s", "2h", "1h1m1s1ms"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
    }
}
