//! Commit times as logical decoding reports them, turned into Unix microseconds so the
//! commit-to-durable latency (`ingest_lag`) can be measured against the local clock.

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 00:00:00 UTC).
pub const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// A PostgreSQL epoch timestamp (pgoutput's commit time) as Unix microseconds.
pub fn from_postgres_micros(micros: i64) -> i64 {
    micros.saturating_add(POSTGRES_EPOCH_UNIX_MICROS)
}

/// Parses PostgreSQL's ISO text of a `timestamptz` (`2026-11-26 13:55:00.123456+00`, offsets
/// `+HH`, `+HH:MM` or `+HH:MM:SS`, optional fraction) into Unix microseconds; `None` for any
/// other shape (BC dates, `infinity`, other `DateStyle`s), since the value only feeds a metric.
pub fn parse_timestamptz_micros(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = bytes.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(
            part.iter()
                .fold(0i64, |acc, digit| acc * 10 + i64::from(digit - b'0')),
        )
    };
    if bytes.len() < 19
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || !matches!(bytes[10], b' ' | b'T')
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let mut at = 19;
    let mut fraction_micros = 0i64;
    if bytes.get(at) == Some(&b'.') {
        let start = at + 1;
        let mut end = start;
        while bytes.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        if end == start {
            return None;
        }
        let kept = (end - start).min(6);
        fraction_micros = digits(start..start + kept)? * 10i64.pow(6 - kept as u32);
        at = end;
    }
    let sign = match bytes.get(at) {
        Some(b'+') => 1,
        Some(b'-') => -1,
        Some(b'Z') if at + 1 == bytes.len() => 0,
        _ => return None,
    };
    let mut offset_seconds = 0i64;
    if sign != 0 {
        let mut parts = text.get(at + 1..)?.split(':');
        let mut unit = 3600;
        for part in parts.by_ref().take(3) {
            if part.len() != 2 || !part.bytes().all(|byte| byte.is_ascii_digit()) {
                return None;
            }
            offset_seconds += part.parse::<i64>().ok()? * unit;
            unit /= 60;
        }
        if parts.next().is_some() {
            return None;
        }
        offset_seconds *= sign;
    }
    let days = crate::decode::civil::days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    Some(seconds * 1_000_000 + fraction_micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_and_known_instants() {
        assert_eq!(parse_timestamptz_micros("1970-01-01 00:00:00+00"), Some(0));
        assert_eq!(
            parse_timestamptz_micros("2000-01-01 00:00:00+00"),
            Some(POSTGRES_EPOCH_UNIX_MICROS)
        );
        // date -u -d '2026-11-26 11:37:46' +%s = 1795693066
        assert_eq!(
            parse_timestamptz_micros("2026-11-26 11:37:46.943744+00"),
            Some(1_795_693_066_943_744)
        );
        assert_eq!(from_postgres_micros(0), POSTGRES_EPOCH_UNIX_MICROS);
    }

    #[test]
    fn offsets_and_short_fractions() {
        let utc = parse_timestamptz_micros("2026-11-26 11:37:46.5+00").unwrap();
        assert_eq!(utc % 1_000_000, 500_000);
        assert_eq!(
            parse_timestamptz_micros("2026-11-26 13:07:46.5+01:30"),
            Some(utc)
        );
        assert_eq!(
            parse_timestamptz_micros("2026-11-26 06:37:46.5-05"),
            Some(utc)
        );
        assert_eq!(
            parse_timestamptz_micros("2026-11-26T11:37:46.5Z"),
            Some(utc)
        );
        assert_eq!(
            parse_timestamptz_micros("2026-11-26 11:37:46.50000099+00"),
            Some(utc),
            "digits beyond microseconds are dropped"
        );
    }

    #[test]
    fn other_shapes_are_none_not_a_panic() {
        for text in [
            "",
            "infinity",
            "2026-11-26",
            "2026-13-01 00:00:00+00",
            "2026-11-26 11:37:46.+00",
            "2026-11-26 11:37:46+0",
            "2026-11-26 11:37:46+00:00:00:00",
            "0001-01-01 00:00:00+00 BC",
            "2026-11-26 11:37:46",
            "２０２６-11-26 11:37:46+00",
        ] {
            assert_eq!(parse_timestamptz_micros(text), None, "{text:?}");
        }
    }
}
