//! JSON values → PostgreSQL COPY text format, with the checks that make a bad value an error
//! naming its column instead of a half-loaded batch.
//!
//! COPY text: fields separated by tab, rows ended by newline, NULL as `\N`, and backslash,
//! tab, newline and carriage return escaped with a backslash. Values keep their exact JSON
//! text where PostgreSQL parses it (numbers, JSON) — a number is never an `f64` here.

use std::borrow::Cow;

use serde_json::value::RawValue;

use crate::singer::target_postgres::schema::{Column, ValueKind};

/// Why a value cannot go into its column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The value's JSON kind does not fit the column.
    #[error("expected {expected}, got {got}")]
    Mismatch {
        /// What the column takes.
        expected: String,
        /// The value (shortened).
        got: String,
    },
    /// A string holds a NUL character, which PostgreSQL text cannot store.
    #[error(
        "the string contains a NUL character (\\u0000), which PostgreSQL cannot store in text"
    )]
    Nul,
    /// A JSON string could not be decoded.
    #[error("invalid JSON string: {0}")]
    String(String),
}

/// The JSON kind of a raw value, from its first character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonKind {
    /// `null`.
    Null,
    /// `true` / `false`.
    Boolean,
    /// A number literal.
    Number,
    /// A string.
    String,
    /// An array.
    Array,
    /// An object.
    Object,
}

/// The kind of `raw` (serde_json has validated it).
pub fn json_kind(raw: &str) -> JsonKind {
    match raw.as_bytes().first() {
        Some(b'n') => JsonKind::Null,
        Some(b't' | b'f') => JsonKind::Boolean,
        Some(b'"') => JsonKind::String,
        Some(b'[') => JsonKind::Array,
        Some(b'{') => JsonKind::Object,
        _ => JsonKind::Number,
    }
}

fn shorten(raw: &str) -> String {
    let mut text: String = raw.chars().take(60).collect();
    if text.len() < raw.len() {
        text.push('…');
    }
    text
}

fn mismatch(expected: &'static str, raw: &str) -> EncodeError {
    EncodeError::Mismatch {
        expected: expected.to_owned(),
        got: shorten(raw),
    }
}

/// Appends `text` escaped for COPY text format.
pub fn push_escaped(out: &mut Vec<u8>, text: &[u8]) {
    let mut start = 0;
    for (index, &byte) in text.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        out.extend_from_slice(&text[start..index]);
        out.extend_from_slice(escaped);
        start = index + 1;
    }
    out.extend_from_slice(&text[start..]);
}

/// The contents of a JSON string literal, borrowed when it has no escapes.
pub fn string_contents(raw: &str) -> Result<Cow<'_, str>, EncodeError> {
    if !raw.contains('\\') {
        return Ok(Cow::Borrowed(&raw[1..raw.len().saturating_sub(1).max(1)]));
    }
    let decoded: String =
        serde_json::from_str(raw).map_err(|error| EncodeError::String(error.to_string()))?;
    Ok(Cow::Owned(decoded))
}

/// Appends the contents of the JSON string literal `raw` escaped for COPY text; a NUL is an
/// error.
pub fn push_string(out: &mut Vec<u8>, raw: &str) -> Result<(), EncodeError> {
    let contents = string_contents(raw)?;
    if contents.contains('\0') {
        return Err(EncodeError::Nul);
    }
    match contents {
        // Without JSON escapes the contents hold no control characters: nothing to escape.
        Cow::Borrowed(text) => out.extend_from_slice(text.as_bytes()),
        Cow::Owned(text) => push_escaped(out, text.as_bytes()),
    }
    Ok(())
}

/// A JSON number literal written as an integer, if it is one (`1.0` and `1e3` are).
pub fn integral_text(raw: &str) -> Option<Cow<'_, str>> {
    if !raw.bytes().any(|byte| matches!(byte, b'.' | b'e' | b'E')) {
        return Some(Cow::Borrowed(raw));
    }
    let (negative, body) = match raw.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, raw),
    };
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => (&body[..at], body[at + 1..].parse::<i64>().ok()?),
        None => (body, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits: String = format!("{whole}{fraction}");
    let point = i64::try_from(whole.len()).ok()?.checked_add(exponent)?;
    if point < 0 {
        return digits
            .bytes()
            .all(|d| d == b'0')
            .then_some(Cow::Borrowed("0"));
    }
    let point = usize::try_from(point).ok()?;
    if point > 4096 {
        return None;
    }
    if point >= digits.len() {
        digits.extend(std::iter::repeat_n('0', point - digits.len()));
    } else if digits[point..].bytes().any(|d| d != b'0') {
        return None;
    } else {
        digits.truncate(point);
    }
    let trimmed = digits.trim_start_matches('0');
    let text = if trimmed.is_empty() { "0" } else { trimmed };
    Some(Cow::Owned(if negative && text != "0" {
        format!("-{text}")
    } else {
        text.to_owned()
    }))
}

/// Whether `text` is a whole number: an optional sign, then digits only.
pub fn is_integer_text(text: &str) -> bool {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit())
}

fn is_decimal_text(text: &str) -> bool {
    let lowered = text.to_ascii_lowercase();
    let unsigned = lowered.strip_prefix(['-', '+']).unwrap_or(&lowered);
    if matches!(unsigned, "nan" | "infinity" | "inf") {
        return true;
    }
    let (mantissa, exponent) = match unsigned.split_once('e') {
        Some((mantissa, exponent)) => (mantissa, Some(exponent)),
        None => (unsigned, None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |part: &str| part.bytes().all(|byte| byte.is_ascii_digit());
    (!whole.is_empty() || !fraction.is_empty())
        && digits(whole)
        && digits(fraction)
        && exponent.is_none_or(is_integer_text)
}

/// Appends `raw` (one JSON value, not null) as a COPY text field of a column of kind `kind`.
pub fn encode_value(out: &mut Vec<u8>, raw: &str, kind: ValueKind) -> Result<(), EncodeError> {
    let json = json_kind(raw);
    match (kind, json) {
        (_, JsonKind::Null) => out.extend_from_slice(b"\\N"),
        (ValueKind::Json, _) => push_escaped(out, raw.as_bytes()),
        (ValueKind::Integer, JsonKind::Number) => match integral_text(raw) {
            Some(text) => out.extend_from_slice(text.as_bytes()),
            None => return Err(mismatch("an integer", raw)),
        },
        (ValueKind::Integer, JsonKind::String) => {
            let contents = string_contents(raw)?;
            if !is_integer_text(contents.trim()) {
                return Err(mismatch("an integer", raw));
            }
            out.extend_from_slice(contents.trim().as_bytes());
        }
        (ValueKind::Integer, _) => return Err(mismatch("an integer", raw)),
        (ValueKind::Number, JsonKind::Number) => out.extend_from_slice(raw.as_bytes()),
        (ValueKind::Number, JsonKind::String) => {
            let contents = string_contents(raw)?;
            if !is_decimal_text(contents.trim()) {
                return Err(mismatch("a number", raw));
            }
            out.extend_from_slice(contents.trim().as_bytes());
        }
        (ValueKind::Number, _) => return Err(mismatch("a number", raw)),
        (ValueKind::Boolean, JsonKind::Boolean) => out.extend_from_slice(raw.as_bytes()),
        (ValueKind::Boolean, JsonKind::String) => push_string(out, raw)?,
        (ValueKind::Boolean, _) => return Err(mismatch("true or false", raw)),
        (ValueKind::Temporal, JsonKind::String) => push_string(out, raw)?,
        (ValueKind::Temporal, _) => return Err(mismatch("a date/time string", raw)),
        (ValueKind::Text, JsonKind::String) => push_string(out, raw)?,
        (ValueKind::Text, _) => push_escaped(out, raw.as_bytes()),
    }
    Ok(())
}

/// Checks `raw` against the column's JSON schema types (`validate_records`): the JSON kind
/// must be allowed, and an `integer` must be whole. Decimals are compared as text, never as
/// floats; `multipleOf` is not checked (the old validator rejected `0.07` for `0.01` that way).
pub fn validate_value(raw: Option<&RawValue>, column: &Column) -> Result<(), EncodeError> {
    let types = column.json_types;
    if types.any {
        return Ok(());
    }
    let raw = match raw {
        None => return Ok(()),
        Some(raw) => raw.get(),
    };
    let allowed = match json_kind(raw) {
        JsonKind::Null => types.null,
        JsonKind::Boolean => types.boolean,
        JsonKind::String => types.string,
        JsonKind::Array => types.array,
        JsonKind::Object => types.object,
        JsonKind::Number => types.number || (types.integer && integral_text(raw).is_some()),
    };
    if allowed {
        Ok(())
    } else {
        let mut names = Vec::new();
        for (flag, name) in [
            (types.null, "null"),
            (types.string, "string"),
            (types.integer, "integer"),
            (types.number, "number"),
            (types.boolean, "boolean"),
            (types.object, "object"),
            (types.array, "array"),
        ] {
            if flag {
                names.push(name);
            }
        }
        Err(EncodeError::Mismatch {
            expected: format!("a value of the schema's types ({})", names.join(", ")),
            got: shorten(raw),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(raw: &str, kind: ValueKind) -> Result<String, EncodeError> {
        let mut out = Vec::new();
        encode_value(&mut out, raw, kind)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn values_become_copy_text_fields() {
        assert_eq!(encode("null", ValueKind::Integer).unwrap(), "\\N");
        assert_eq!(encode("42", ValueKind::Integer).unwrap(), "42");
        assert_eq!(encode("-1.000", ValueKind::Integer).unwrap(), "-1");
        assert_eq!(encode("1.5e3", ValueKind::Integer).unwrap(), "1500");
        assert_eq!(encode("\" 7 \"", ValueKind::Integer).unwrap(), "7");
        assert_eq!(encode("0.07", ValueKind::Number).unwrap(), "0.07");
        assert_eq!(
            encode("12345678901234567890.123456789012345678", ValueKind::Number).unwrap(),
            "12345678901234567890.123456789012345678"
        );
        assert_eq!(encode("\"NaN\"", ValueKind::Number).unwrap(), "NaN");
        assert_eq!(encode("true", ValueKind::Boolean).unwrap(), "true");
        assert_eq!(
            encode("\"2024-01-02T03:04:05.123456+05:30\"", ValueKind::Temporal).unwrap(),
            "2024-01-02T03:04:05.123456+05:30"
        );
        assert_eq!(
            encode(r#""a\tb\\c\n\u00e9""#, ValueKind::Text).unwrap(),
            "a\\tb\\\\c\\né"
        );
        assert_eq!(encode("\"plain\"", ValueKind::Text).unwrap(), "plain");
        assert_eq!(encode("12.50", ValueKind::Text).unwrap(), "12.50");
        assert_eq!(
            encode(r#"{"a": "x\ty", "b": [1, 2]}"#, ValueKind::Json).unwrap(),
            r#"{"a": "x\\ty", "b": [1, 2]}"#
        );
        assert_eq!(
            encode(r#""just a string""#, ValueKind::Json).unwrap(),
            r#""just a string""#
        );
    }

    #[test]
    fn values_that_do_not_fit_are_errors() {
        let error = encode("\"abc\"", ValueKind::Integer)
            .unwrap_err()
            .to_string();
        assert_eq!(error, "expected an integer, got \"abc\"");
        assert!(encode("1.5", ValueKind::Integer).is_err());
        assert!(encode("\"12a\"", ValueKind::Number).is_err());
        assert!(encode("{}", ValueKind::Number).is_err());
        assert!(encode("1", ValueKind::Boolean).is_err());
        assert!(encode("5", ValueKind::Temporal).is_err());
        assert_eq!(
            encode(r#""a\u0000b""#, ValueKind::Text).unwrap_err(),
            EncodeError::Nul
        );
    }

    #[test]
    fn integral_text_is_exact() {
        assert_eq!(integral_text("10").as_deref(), Some("10"));
        assert_eq!(integral_text("10.0").as_deref(), Some("10"));
        assert_eq!(integral_text("-0.0").as_deref(), Some("0"));
        assert_eq!(integral_text("1E2").as_deref(), Some("100"));
        assert_eq!(integral_text("1234e-2"), None);
        assert_eq!(integral_text("1200e-2").as_deref(), Some("12"));
        assert_eq!(integral_text("0.1"), None);
        assert_eq!(integral_text("1e999999"), None);
        assert_eq!(integral_text("1e9223372036854775807"), None);
        assert_eq!(
            integral_text("0e-9223372036854775808").as_deref(),
            Some("0")
        );
    }

    #[test]
    fn validation_follows_the_schema_types_without_floats() {
        use crate::singer::target_postgres::schema::StreamSchema;
        let schema = serde_json::json!({"properties": {
            "amount": {"type": ["null", "number"], "multipleOf": 0.01},
            "qty": {"type": "integer"},
            "name": {"type": "string"}
        }});
        let stream = StreamSchema::new(&schema, &[], &[], false).unwrap();
        let raw = |text: &str| RawValue::from_string(text.to_owned()).unwrap();
        let column = |name: &str| &stream.columns[stream.by_property[name]];
        assert!(validate_value(Some(&raw("0.07")), column("amount")).is_ok());
        assert!(validate_value(Some(&raw("0.29")), column("amount")).is_ok());
        assert!(validate_value(Some(&raw("null")), column("amount")).is_ok());
        assert!(validate_value(Some(&raw("3.0")), column("qty")).is_ok());
        assert!(validate_value(Some(&raw("3.5")), column("qty")).is_err());
        assert!(validate_value(Some(&raw("null")), column("qty")).is_err());
        assert!(validate_value(Some(&raw("\"5\"")), column("qty")).is_err());
        assert!(validate_value(Some(&raw("5")), column("name")).is_err());
    }
}
