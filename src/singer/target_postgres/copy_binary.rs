//! COPY text rows → COPY binary, for columns whose binary form is simple and exact.
//!
//! PostgreSQL parses binary COPY about twice as fast as text (see BENCHMARKS.md), so a batch is
//! converted when every column has a type below and every value has a form this module parses
//! with certainty (integers, plain decimals, ISO 8601 dates and times with an explicit offset,
//! booleans, text, jsonb). Anything else — an exponent, `NaN`, a timestamp without an offset, a
//! date with a time — makes [`text_to_binary`] return `None`, and the batch goes as text, where
//! PostgreSQL's own parser decides. The conversion never guesses.

/// A column type with a binary encoding here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryType {
    /// `smallint`.
    Int2,
    /// `integer`.
    Int4,
    /// `bigint`.
    Int8,
    /// `numeric` (any typmod: the server applies it as for text).
    Numeric,
    /// `boolean`.
    Bool,
    /// `timestamp with time zone`.
    TimestampTz,
    /// `date`.
    Date,
    /// `time without time zone`.
    Time,
    /// `jsonb`.
    Jsonb,
    /// `text` and unbounded `character varying`.
    Text,
}

/// The binary encoding of a column of type `sql_type` (as `format_type()` prints it), if any.
pub fn binary_type(sql_type: &str) -> Option<BinaryType> {
    Some(match sql_type {
        "smallint" => BinaryType::Int2,
        "integer" => BinaryType::Int4,
        "bigint" => BinaryType::Int8,
        "boolean" => BinaryType::Bool,
        "timestamp with time zone" => BinaryType::TimestampTz,
        "date" => BinaryType::Date,
        "time without time zone" => BinaryType::Time,
        "jsonb" => BinaryType::Jsonb,
        "text" | "character varying" => BinaryType::Text,
        numeric if numeric == "numeric" || numeric.starts_with("numeric(") => BinaryType::Numeric,
        _ => return None,
    })
}

/// The 19-byte header of a binary COPY stream (signature, flags, extension length).
pub const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Days from 1970-01-01 to 2000-01-01, PostgreSQL's epoch.
const PG_EPOCH_DAYS: i64 = 10_957;

/// Converts COPY text rows (each ending in `\n`) with columns of `types` into a complete binary
/// COPY stream (header, rows, trailer), or `None` when any value is not one this module encodes
/// with certainty.
pub fn text_to_binary(rows: &[&[u8]], types: &[BinaryType]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    text_to_binary_into(rows, types, &mut out).then_some(out)
}

/// [`text_to_binary`] into `out` (cleared first, its capacity reused across batches); `false`
/// when a value is not one this module encodes with certainty (then `out` holds garbage).
pub fn text_to_binary_into(rows: &[&[u8]], types: &[BinaryType], out: &mut Vec<u8>) -> bool {
    encode_stream(rows, types, out).is_some()
}

fn encode_stream(rows: &[&[u8]], types: &[BinaryType], out: &mut Vec<u8>) -> Option<()> {
    let total: usize = rows.iter().map(|chunk| chunk.len()).sum();
    out.clear();
    out.reserve(total + total / 4 + HEADER.len() + 2);
    out.extend_from_slice(HEADER);
    let columns = i16::try_from(types.len()).ok()?;
    let mut scratch = Vec::new();
    for chunk in rows {
        // Every row ends in its newline; an empty row is one empty field (a one-column table
        // and the empty string), not nothing.
        for row in chunk.split_inclusive(|&byte| byte == b'\n') {
            let row = row.strip_suffix(b"\n")?;
            out.extend_from_slice(&columns.to_be_bytes());
            let mut fields = row.split(|&byte| byte == b'\t');
            for &kind in types {
                let field = fields.next()?;
                if field == b"\\N" {
                    out.extend_from_slice(&(-1i32).to_be_bytes());
                    continue;
                }
                let at = out.len();
                out.extend_from_slice(&[0; 4]);
                encode_field(field, kind, out, &mut scratch)?;
                let length = i32::try_from(out.len() - at - 4).ok()?;
                out[at..at + 4].copy_from_slice(&length.to_be_bytes());
            }
            if fields.next().is_some() {
                return None;
            }
        }
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    Some(())
}

fn encode_field(
    field: &[u8],
    kind: BinaryType,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Option<()> {
    match kind {
        BinaryType::Text | BinaryType::Jsonb => {
            if kind == BinaryType::Jsonb {
                out.push(1);
            }
            unescape(field, scratch)?;
            out.extend_from_slice(scratch);
        }
        other => {
            let text = std::str::from_utf8(field).ok()?;
            if text.contains('\\') {
                return None;
            }
            match other {
                BinaryType::Int2 => out.extend_from_slice(&text.parse::<i16>().ok()?.to_be_bytes()),
                BinaryType::Int4 => out.extend_from_slice(&text.parse::<i32>().ok()?.to_be_bytes()),
                BinaryType::Int8 => out.extend_from_slice(&text.parse::<i64>().ok()?.to_be_bytes()),
                BinaryType::Bool => out.push(match text {
                    "true" | "t" => 1,
                    "false" | "f" => 0,
                    _ => return None,
                }),
                BinaryType::Numeric => numeric(text, out)?,
                BinaryType::Date => {
                    let days = date(text)? - PG_EPOCH_DAYS;
                    out.extend_from_slice(&i32::try_from(days).ok()?.to_be_bytes());
                }
                BinaryType::Time => {
                    out.extend_from_slice(&time(text)?.to_be_bytes());
                }
                BinaryType::TimestampTz => {
                    out.extend_from_slice(&timestamptz(text)?.to_be_bytes());
                }
                BinaryType::Text | BinaryType::Jsonb => return None,
            }
        }
    }
    Some(())
}

/// Undoes COPY text escaping (`\\`, `\t`, `\n`, `\r`); `None` for any other escape.
fn unescape(field: &[u8], out: &mut Vec<u8>) -> Option<()> {
    out.clear();
    let mut bytes = field.iter();
    while let Some(&byte) = bytes.next() {
        if byte != b'\\' {
            out.push(byte);
            continue;
        }
        out.push(match bytes.next()? {
            b'\\' => b'\\',
            b't' => b'\t',
            b'n' => b'\n',
            b'r' => b'\r',
            _ => return None,
        });
    }
    Some(())
}

/// A plain decimal (`-12.340`, `.5`, `7.`) as PostgreSQL's binary numeric: base-10000 digits,
/// weight, sign, display scale. No exponent, NaN or infinity (`None`).
pub fn numeric(text: &str, out: &mut Vec<u8>) -> Option<()> {
    let (negative, body) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (whole, fraction) = body.split_once('.').unwrap_or((body, ""));
    if (whole.is_empty() && fraction.is_empty())
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|byte| byte.is_ascii_digit())
    {
        return None;
    }
    let whole = whole.trim_start_matches('0');
    let scale = fraction.len();
    // Pad the whole part on the left and the fraction on the right to groups of four digits.
    let left = (4 - whole.len() % 4) % 4;
    let right = (4 - scale % 4) % 4;
    let padded: Vec<u8> = std::iter::repeat_n(b'0', left)
        .chain(whole.bytes())
        .chain(fraction.bytes())
        .chain(std::iter::repeat_n(b'0', right))
        .collect();
    let mut groups: Vec<i16> = padded
        .chunks(4)
        .map(|group| {
            group
                .iter()
                .fold(0i16, |value, digit| value * 10 + i16::from(digit - b'0'))
        })
        .collect();
    let mut weight = i64::try_from((left + whole.len()) / 4).ok()? - 1;
    let leading = groups.iter().take_while(|&&group| group == 0).count();
    groups.drain(..leading);
    weight -= i64::try_from(leading).ok()?;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    let (weight, sign) = if groups.is_empty() {
        (0, 0u16)
    } else {
        (weight, if negative { 0x4000 } else { 0 })
    };
    out.extend_from_slice(&i16::try_from(groups.len()).ok()?.to_be_bytes());
    out.extend_from_slice(&i16::try_from(weight).ok()?.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(
        &i16::try_from(scale)
            .ok()
            .filter(|scale| *scale <= 0x3FFF)?
            .to_be_bytes(),
    );
    for group in groups {
        out.extend_from_slice(&group.to_be_bytes());
    }
    Some(())
}

fn digits(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `YYYY-MM-DD` (years 1–9999, a real day) as days since 1970-01-01.
fn date(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let (year, month, day) = (
        digits(&text[..4])?,
        digits(&text[5..7])?,
        digits(&text[8..])?,
    );
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if year < 1 || day < 1 || day > days_in_month {
        return None;
    }
    Some(crate::decode::civil::days_from_civil(year, month, day))
}

/// `HH:MM:SS[.f…]` (at most six fraction digits; `24:00:00` allowed) as microseconds.
fn time(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() < 8 || bytes[2] != b':' || bytes[5] != b':' {
        return None;
    }
    let (hour, minute, second) = (
        digits(&text[..2])?,
        digits(&text[3..5])?,
        digits(&text[6..8])?,
    );
    let micros = match &text[8..] {
        "" => 0,
        fraction => {
            let fraction = fraction.strip_prefix('.')?;
            if fraction.len() > 6 {
                return None;
            }
            digits(fraction)? * 10i64.pow(6 - fraction.len() as u32)
        }
    };
    let total = ((hour * 60 + minute) * 60 + second) * 1_000_000 + micros;
    let valid = minute < 60 && second < 60 && (hour < 24 || total == 86_400_000_000);
    valid.then_some(total)
}

/// Whether `text` is a timestamp with an offset this module reads exactly: the check behind
/// keeping `_sdc_deleted_at` a `timestamptz` column only while every value is one.
pub fn is_timestamptz(text: &str) -> bool {
    timestamptz(text).is_some()
}

/// `YYYY-MM-DD[T ]HH:MM:SS[.f…](Z|±HH[:MM])` as microseconds since 2000-01-01 UTC; the offset
/// is required (without one PostgreSQL would use the session time zone).
fn timestamptz(text: &str) -> Option<i64> {
    if text.len() < 20 || !matches!(text.as_bytes()[10], b'T' | b't' | b' ') {
        return None;
    }
    let days = date(&text[..10])?;
    let rest = &text[11..];
    let (clock, offset_seconds) = if let Some(clock) = rest.strip_suffix(['Z', 'z']) {
        (clock, 0)
    } else {
        let at = rest.rfind(['+', '-'])?;
        let (clock, zone) = rest.split_at(at);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let zone = &zone[1..];
        let (hours, minutes) = match zone.len() {
            2 => (digits(zone)?, 0),
            4 => (digits(&zone[..2])?, digits(&zone[2..])?),
            5 if zone.as_bytes()[2] == b':' => (digits(&zone[..2])?, digits(&zone[3..])?),
            _ => return None,
        };
        if hours > 15 || minutes > 59 {
            return None;
        }
        (clock, sign * (hours * 3600 + minutes * 60))
    };
    let micros = time(clock)?;
    if micros >= 86_400_000_000 {
        return None;
    }
    Some(((days - PG_EPOCH_DAYS) * 86_400 - offset_seconds) * 1_000_000 + micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric_bytes(text: &str) -> Option<Vec<i16>> {
        let mut out = Vec::new();
        numeric(text, &mut out)?;
        Some(
            out.chunks(2)
                .map(|pair| i16::from_be_bytes([pair[0], pair[1]]))
                .collect(),
        )
    }

    #[test]
    fn a_row_whose_only_field_is_empty_is_kept() {
        // A one-column table and the empty string: the COPY text row is just its "\n".
        let stream = text_to_binary(&[b"\nabc\n\n"], &[BinaryType::Text]).unwrap();
        let mut rows = Vec::new();
        let mut decoder = crate::decode::copy_binary::CopyBinaryDecoder::new(1);
        decoder
            .decode_chunk(bytes::Bytes::from(stream), &mut rows)
            .unwrap();
        decoder.finish().unwrap();
        assert_eq!(rows.len(), 3, "\"\", \"abc\", \"\"");
        // A chunk whose last row lacks its newline is not a stream of rows: fall back to text.
        assert_eq!(text_to_binary(&[b"abc"], &[BinaryType::Text]), None);
    }

    #[test]
    fn numerics_follow_the_wire_layout() {
        // ndigits, weight, sign, dscale, digits…
        assert_eq!(numeric_bytes("0.07"), Some(vec![1, -1, 0, 2, 700]));
        assert_eq!(numeric_bytes("1234.50"), Some(vec![2, 0, 0, 2, 1234, 5000]));
        assert_eq!(
            numeric_bytes("-12.34"),
            Some(vec![2, 0, 0x4000, 2, 12, 3400])
        );
        assert_eq!(
            numeric_bytes("99999999.99"),
            Some(vec![3, 1, 0, 2, 9999, 9999, 9900])
        );
        assert_eq!(numeric_bytes("10000"), Some(vec![1, 1, 0, 0, 1]));
        assert_eq!(numeric_bytes("0"), Some(vec![0, 0, 0, 0]));
        assert_eq!(numeric_bytes("-0.00"), Some(vec![0, 0, 0, 2]));
        assert_eq!(numeric_bytes(".5"), Some(vec![1, -1, 0, 1, 5000]));
        assert_eq!(numeric_bytes("0.00001"), Some(vec![1, -2, 0, 5, 1000]));
        assert_eq!(
            numeric_bytes("12345678901234567890.12"),
            Some(vec![6, 4, 0, 2, 1234, 5678, 9012, 3456, 7890, 1200])
        );
        for bad in ["1e3", "NaN", "Infinity", "", "-", ".", "1.2.3", "12a"] {
            assert_eq!(numeric_bytes(bad), None, "{bad}");
        }
    }

    #[test]
    fn dates_times_and_timestamps_are_exact_or_refused() {
        assert_eq!(date("2000-01-01"), Some(PG_EPOCH_DAYS));
        assert_eq!(date("1970-01-01"), Some(0));
        assert_eq!(date("2024-02-29"), Some(19_782));
        assert_eq!(date("2023-02-29"), None);
        assert_eq!(date("2024-13-01"), None);
        assert_eq!(date("0000-01-01"), None);
        assert_eq!(time("23:59:59.5"), Some(86_399_500_000));
        assert_eq!(time("24:00:00"), Some(86_400_000_000));
        assert_eq!(time("24:00:01"), None);
        assert_eq!(time("12:00:00.1234567"), None);
        assert_eq!(timestamptz("2000-01-01T00:00:00Z"), Some(0));
        assert_eq!(timestamptz("2000-01-01T05:30:00+05:30"), Some(0));
        assert_eq!(timestamptz("1999-12-31 23:00:00-01"), Some(0));
        assert_eq!(timestamptz("2000-01-01T00:00:00.000001+00:00"), Some(1));
        assert_eq!(
            timestamptz("2000-01-01T00:00:00"),
            None,
            "no offset: session zone"
        );
        assert_eq!(timestamptz("2000-01-01T24:00:00Z"), None);
        assert_eq!(timestamptz("2000-01-01"), None);
    }

    #[test]
    fn rows_become_a_complete_binary_stream_or_none() {
        let rows: &[&[u8]] = &[b"1\ta\\tb\t\\N\n", b"2\t{\"k\": 1}\tt\n"];
        let types = [BinaryType::Int4, BinaryType::Text, BinaryType::Bool];
        let stream = text_to_binary(rows, &types).unwrap();
        assert!(stream.starts_with(HEADER));
        assert!(stream.ends_with(&[0xff, 0xff]));
        let first = &stream[HEADER.len()..];
        assert_eq!(&first[..2], &3i16.to_be_bytes());
        assert_eq!(&first[2..10], &[0, 0, 0, 4, 0, 0, 0, 1]);
        assert_eq!(&first[10..17], &[0, 0, 0, 3, b'a', b'\t', b'b']);
        assert_eq!(&first[17..21], &(-1i32).to_be_bytes());
        let jsonb = [BinaryType::Int4, BinaryType::Jsonb, BinaryType::Bool];
        assert!(text_to_binary(rows, &jsonb).is_some());
        assert!(text_to_binary(&[b"x\ta\tt\n"], &types).is_none());
        assert!(
            text_to_binary(&[b"1\ta\n"], &types).is_none(),
            "too few fields"
        );
        assert_eq!(binary_type("numeric(12,2)"), Some(BinaryType::Numeric));
        assert_eq!(binary_type("character varying(10)"), None);
        assert_eq!(binary_type("double precision"), None);
    }
}
