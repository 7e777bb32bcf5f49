//! Singer messages on stdout, laid out as singer-python printed them: one JSON object per line,
//! keys in the order `type`, `stream`, … and Python's separators (`", "`, `": "`), so a diff
//! against the old tap's output shows only data, never formatting.
//!
//! Everything goes through one buffered writer; [`MessageWriter::flush`] hands it to the target
//! (after each STATE and whenever the tap waits for the database).

use std::io::Write;

use serde_json::Value;

use crate::decode::civil::civil_from_days;

/// Re-spaces compact JSON with Python's `json.dumps` separators (`", "` and `": "`), leaving
/// strings untouched.
pub fn python_spacing(compact: &[u8], out: &mut Vec<u8>) {
    let mut in_string = false;
    let mut escaped = false;
    for &byte in compact {
        out.push(byte);
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b',' | b':' => out.push(b' '),
            _ => {}
        }
    }
}

/// A number token written with an exponent (`1e62`, `-1.5e+34`) as the integer it is, or
/// `None` when it is not an integer. Schema bounds of wide numerics are powers of ten beyond
/// 64 bits, which JSON values here hold as doubles; the old tap (Python integers) wrote every
/// digit, and validators compare the bound exactly.
fn exact_integer(token: &str) -> Option<String> {
    let (mantissa, exponent) = token.split_once(['e', 'E'])?;
    let exponent: i64 = exponent
        .strip_prefix('+')
        .unwrap_or(exponent)
        .parse()
        .ok()?;
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let fraction = fraction.trim_end_matches('0');
    let zeros = exponent.checked_sub(i64::try_from(fraction.len()).ok()?)?;
    if !(0..=400).contains(&zeros)
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let digits = format!(
        "{whole}{fraction}{}",
        "0".repeat(usize::try_from(zeros).ok()?)
    );
    let digits = digits.trim_start_matches('0');
    Some(if digits.is_empty() {
        "0".to_owned()
    } else {
        format!("{sign}{digits}")
    })
}

/// Rewrites the exponent-written integers of JSON text (outside strings) with every digit.
pub fn exact_integers(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 64);
    crate::decode::json_out::map_numbers(json, &mut out, |token, out| {
        match exact_integer(std::str::from_utf8(token).unwrap_or_default()) {
            Some(digits) => out.extend_from_slice(digits.as_bytes()),
            None => out.extend_from_slice(token),
        }
    });
    out
}

/// `2024-03-01T12:30:00.123456Z`: singer-python's `strftime` of a UTC time (for
/// `time_extracted` and a delete's `_sdc_deleted_at`).
pub fn singer_timestamp(time: std::time::SystemTime) -> String {
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since.as_secs() as i64;
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let of_day = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_micros()
    )
}

/// The tap's stdout: Singer messages, buffered, in the old tap's layout.
#[derive(Debug)]
pub struct MessageWriter<W: Write> {
    out: std::io::BufWriter<W>,
    compact: Vec<u8>,
    line: Vec<u8>,
    records: u64,
}

impl<W: Write> MessageWriter<W> {
    /// A writer over `out` (stdout in the binary, a buffer in tests).
    pub fn new(out: W) -> MessageWriter<W> {
        MessageWriter {
            out: std::io::BufWriter::with_capacity(256 * 1024, out),
            compact: Vec::with_capacity(4096),
            line: Vec::with_capacity(4096),
            records: 0,
        }
    }

    /// RECORD messages written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    fn emit(&mut self) -> std::io::Result<()> {
        self.line.clear();
        python_spacing(&self.compact, &mut self.line);
        self.line.push(b'\n');
        self.out.write_all(&self.line)
    }

    fn start(&mut self, kind: &str) {
        self.compact.clear();
        self.compact.extend_from_slice(b"{\"type\":\"");
        self.compact.extend_from_slice(kind.as_bytes());
        self.compact.push(b'"');
    }

    fn field(&mut self, name: &str, value: &Value) {
        self.compact.extend_from_slice(b",\"");
        self.compact.extend_from_slice(name.as_bytes());
        self.compact.extend_from_slice(b"\":");
        // Writing a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.compact, value);
    }

    /// `{"type": "SCHEMA", "stream", "schema", "key_properties"[, "bookmark_properties"]}`.
    pub fn schema(
        &mut self,
        stream: &str,
        schema: &Value,
        key_properties: &[String],
        bookmark_properties: &[&str],
    ) -> std::io::Result<()> {
        self.start("SCHEMA");
        self.field("stream", &Value::from(stream));
        let start = self.compact.len();
        self.field("schema", schema);
        let exact = exact_integers(&self.compact[start..]);
        self.compact.truncate(start);
        self.compact.extend_from_slice(&exact);
        self.field("key_properties", &Value::from(key_properties.to_vec()));
        if !bookmark_properties.is_empty() {
            self.field(
                "bookmark_properties",
                &Value::from(bookmark_properties.to_vec()),
            );
        }
        self.compact.push(b'}');
        self.emit()
    }

    /// `{"type": "RECORD", "stream", "record", "version", "time_extracted"}`; `record` is the
    /// compact JSON object of the row.
    pub fn record(
        &mut self,
        stream: &str,
        record: &[u8],
        version: Option<i64>,
        time_extracted: &str,
    ) -> std::io::Result<()> {
        // The hot path: strings written straight into the line, no JSON values built.
        self.start("RECORD");
        self.compact.extend_from_slice(b",\"stream\":");
        crate::decode::json_out::write_string(stream, &mut self.compact);
        self.compact.extend_from_slice(b",\"record\":");
        self.compact.extend_from_slice(record);
        if let Some(version) = version {
            self.compact.extend_from_slice(b",\"version\":");
            self.compact
                .extend_from_slice(itoa::Buffer::new().format(version).as_bytes());
        }
        self.compact.extend_from_slice(b",\"time_extracted\":");
        crate::decode::json_out::write_string(time_extracted, &mut self.compact);
        self.compact.push(b'}');
        self.records += 1;
        self.emit()
    }

    /// `{"type": "STATE", "value"}`, flushed at once so the target sees it.
    pub fn state(&mut self, value: &Value) -> std::io::Result<()> {
        self.start("STATE");
        self.field("value", value);
        self.compact.push(b'}');
        self.emit()?;
        self.flush()
    }

    /// `{"type": "ACTIVATE_VERSION", "stream", "version"}`.
    pub fn activate_version(&mut self, stream: &str, version: i64) -> std::io::Result<()> {
        self.start("ACTIVATE_VERSION");
        self.field("stream", &Value::from(stream));
        self.field("version", &Value::from(version));
        self.compact.push(b'}');
        self.emit()
    }

    /// Hands everything written so far to the reader of stdout.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// Writes a whole pre-formatted document (the catalog of `--discover`).
    pub fn raw(&mut self, text: &str) -> std::io::Result<()> {
        self.out.write_all(text.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_follow_python_and_strings_stay_as_they_are() {
        let mut out = Vec::new();
        python_spacing(br#"{"a":[1,2],"b":"x, y: \"z,\"","c":{}}"#, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a": [1, 2], "b": "x, y: \"z,\"", "c": {}}"#
        );
    }

    #[test]
    fn timestamps_are_singer_pythons_format() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_709_296_200_123_456);
        assert_eq!(singer_timestamp(at), "2024-03-01T12:30:00.123456Z");
        assert_eq!(
            singer_timestamp(std::time::UNIX_EPOCH),
            "1970-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn messages_have_the_old_key_order() {
        let mut writer = MessageWriter::new(Vec::new());
        writer
            .record(
                "public-t",
                br#"{"id":1}"#,
                Some(7),
                "2024-01-01T00:00:00.000000Z",
            )
            .unwrap();
        writer.activate_version("public-t", 7).unwrap();
        writer
            .schema(
                "public-t",
                &serde_json::json!({"type": "object"}),
                &["id".into()],
                &["lsn"],
            )
            .unwrap();
        writer.flush().unwrap();
        let text = String::from_utf8(writer.out.into_inner().unwrap()).unwrap();
        assert_eq!(
            text,
            "{\"type\": \"RECORD\", \"stream\": \"public-t\", \"record\": {\"id\": 1}, \"version\": 7, \"time_extracted\": \"2024-01-01T00:00:00.000000Z\"}\n\
             {\"type\": \"ACTIVATE_VERSION\", \"stream\": \"public-t\", \"version\": 7}\n\
             {\"type\": \"SCHEMA\", \"stream\": \"public-t\", \"schema\": {\"type\": \"object\"}, \"key_properties\": [\"id\"], \"bookmark_properties\": [\"lsn\"]}\n"
        );
    }
}

#[cfg(test)]
mod exact_integer_tests {
    use super::*;

    #[test]
    fn exponent_integers_get_every_digit_and_nothing_else_changes() {
        let json = br#"{"maximum":1e62,"minimum":-1e62,"m":1e+34,"f":1.5e3,"x":0.01,"y":1e-38,"s":"1e62","n":12}"#;
        let expected = format!(
            r#"{{"maximum":1{z62},"minimum":-1{z62},"m":1{z34},"f":1500,"x":0.01,"y":1e-38,"s":"1e62","n":12}}"#,
            z62 = "0".repeat(62),
            z34 = "0".repeat(34)
        );
        assert_eq!(String::from_utf8(exact_integers(json)).unwrap(), expected);
    }
}
