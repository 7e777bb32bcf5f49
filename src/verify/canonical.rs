//! One canonical form of a JSON document, so that two documents that mean the same compare
//! (and hash) equal byte for byte: object members sorted by name, strings re-escaped one way,
//! numbers in one spelling per value with no leading or trailing zeros (so `1`, `1.0`, `1e0`
//! and `10e-1` are one number, and a 30-digit integer or decimal keeps every digit: numbers
//! are compared as exact decimals, never through a double), and no whitespace.
//!
//! The parser reads untrusted bytes (GDN's answers): every failure is an error, nesting is
//! bounded, and nothing panics.

use std::borrow::Cow;

/// Deepest nesting accepted (GDN itself refuses deeper documents).
const MAX_DEPTH: usize = 128;

/// Why bytes are not a JSON document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not JSON at byte {at}: {what}")]
pub struct CanonicalError {
    /// Where the parser stopped.
    pub at: usize,
    /// What it expected.
    pub what: &'static str,
}

/// The members of a top-level object, each as `(name, canonical value)`, sorted by name,
/// leaving out the names `skip` lists (GDN's `_id` and `_rev`, which only the destination has).
/// For showing differences; [`canonical`] is the fast path.
pub fn members(document: &[u8], skip: &[&str]) -> Result<Vec<(String, Vec<u8>)>, CanonicalError> {
    let mut form = Vec::with_capacity(document.len());
    canonical(document, skip, &mut form)?;
    let mut parser = Parser::new(&form)?;
    parser.expect(b'{', "an object")?;
    let mut out = Vec::new();
    if parser.peek() == Some(b'}') {
        return Ok(out);
    }
    loop {
        let name = parser.string()?.into_owned();
        parser.expect(b':', "':'")?;
        let start = parser.at;
        parser.skip_value()?;
        out.push((name, form[start..parser.at].to_vec()));
        match parser.next() {
            Some(b',') => continue,
            _ => break,
        }
    }
    Ok(out)
}

/// Appends the canonical form of a whole document to `out`, without the top-level members
/// `skip` names.
pub fn canonical(document: &[u8], skip: &[&str], out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    document_into(document, skip, out, None)
}

/// [`canonical`], returning the top-level `_key` too when it is a string (and not skipped).
pub fn canonical_with_key(
    document: &[u8],
    skip: &[&str],
    out: &mut Vec<u8>,
) -> Result<Option<String>, CanonicalError> {
    let mut key = None;
    document_into(document, skip, out, Some(&mut key))?;
    Ok(key)
}

fn document_into(
    document: &[u8],
    skip: &[&str],
    out: &mut Vec<u8>,
    key: Option<&mut Option<String>>,
) -> Result<(), CanonicalError> {
    let mut parser = Parser::new(document)?;
    parser.whitespace();
    if parser.peek() != Some(b'{') {
        return Err(parser.error("an object"));
    }
    parser.object(out, 1, skip, key)?;
    parser.whitespace();
    if parser.at != document.len() {
        return Err(parser.error("the end of the document"));
    }
    Ok(())
}

/// Writes a string the parser returned: a borrowed one holds nothing JSON escapes (it had no
/// backslash, and control characters are refused), so it is copied as it is.
#[allow(clippy::ptr_arg)] // the variant, not only the text, says whether to escape
fn write_name(name: &Cow<'_, str>, out: &mut Vec<u8>) {
    match name {
        Cow::Borrowed(text) => {
            out.push(b'"');
            out.extend_from_slice(text.as_bytes());
            out.push(b'"');
        }
        Cow::Owned(text) => crate::decode::json_out::write_string(text, out),
    }
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
    digits: Vec<u8>,
}

impl<'a> Parser<'a> {
    fn new(document: &'a [u8]) -> Result<Parser<'a>, CanonicalError> {
        let text = std::str::from_utf8(document).map_err(|error| CanonicalError {
            at: error.valid_up_to(),
            what: "UTF-8 text",
        })?;
        Ok(Parser {
            text,
            bytes: document,
            at: 0,
            digits: Vec::new(),
        })
    }

    fn error(&self, what: &'static str) -> CanonicalError {
        CanonicalError { at: self.at, what }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek();
        if byte.is_some() {
            self.at += 1;
        }
        byte
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), CanonicalError> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    fn whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn literal(&mut self, word: &'static [u8], out: &mut Vec<u8>) -> Result<(), CanonicalError> {
        if self.bytes.get(self.at..self.at + word.len()) == Some(word) {
            self.at += word.len();
            out.extend_from_slice(word);
            Ok(())
        } else {
            Err(self.error("a value"))
        }
    }

    fn value(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), CanonicalError> {
        if depth > MAX_DEPTH {
            return Err(self.error("less nesting"));
        }
        self.whitespace();
        match self.peek() {
            Some(b'{') => self.object(out, depth, &[], None),
            Some(b'[') => self.array(out, depth),
            Some(b'"') => {
                let text = self.string()?;
                write_name(&text, out);
                Ok(())
            }
            Some(b't') => self.literal(b"true", out),
            Some(b'f') => self.literal(b"false", out),
            Some(b'n') => self.literal(b"null", out),
            Some(b'-' | b'0'..=b'9') => self.number(out),
            _ => Err(self.error("a value")),
        }
    }

    /// Skips one value of a canonical document (no whitespace, nothing to check again).
    fn skip_value(&mut self) -> Result<(), CanonicalError> {
        let mut scratch = Vec::new();
        self.value(&mut scratch, 1)
    }

    /// An object, members sorted by name, those in `skip` left out; `key` receives `_key`.
    fn object(
        &mut self,
        out: &mut Vec<u8>,
        depth: usize,
        skip: &[&str],
        mut key: Option<&mut Option<String>>,
    ) -> Result<(), CanonicalError> {
        self.at += 1;
        let mut members: Vec<(Cow<'a, str>, std::ops::Range<usize>)> = Vec::with_capacity(16);
        // The document's own members: at most what is left of it (numbers never grow much),
        // so one allocation; nested objects start small.
        let capacity = if depth == 1 {
            self.bytes.len() - self.at + 16
        } else {
            64
        };
        let mut values: Vec<u8> = Vec::with_capacity(capacity);
        self.whitespace();
        if self.peek() == Some(b'}') {
            self.at += 1;
        } else {
            loop {
                self.whitespace();
                let name = self.string()?;
                self.whitespace();
                self.expect(b':', "':'")?;
                let start = values.len();
                self.value(&mut values, depth + 1)?;
                if skip.contains(&name.as_ref()) {
                    values.truncate(start);
                } else {
                    if name == "_key" {
                        if let Some(key) = key.as_deref_mut() {
                            *key = serde_json::from_slice::<String>(&values[start..]).ok();
                        }
                    }
                    members.push((name, start..values.len()));
                }
                self.whitespace();
                match self.next() {
                    Some(b',') => continue,
                    Some(b'}') => break,
                    _ => return Err(self.error("',' or '}'")),
                }
            }
        }
        members.sort_by(|a, b| a.0.cmp(&b.0));
        out.push(b'{');
        for (index, (name, range)) in members.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            write_name(name, out);
            out.push(b':');
            out.extend_from_slice(&values[range.clone()]);
        }
        out.push(b'}');
        Ok(())
    }

    fn array(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), CanonicalError> {
        self.at += 1;
        out.push(b'[');
        self.whitespace();
        if self.peek() == Some(b']') {
            self.at += 1;
            out.push(b']');
            return Ok(());
        }
        let mut first = true;
        loop {
            if !first {
                out.push(b',');
            }
            first = false;
            self.value(out, depth + 1)?;
            self.whitespace();
            match self.next() {
                Some(b',') => continue,
                Some(b']') => break,
                _ => return Err(self.error("',' or ']'")),
            }
        }
        out.push(b']');
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, CanonicalError> {
        let digits = self
            .bytes
            .get(self.at..self.at + 4)
            .ok_or_else(|| self.error("four hex digits"))?;
        let text = std::str::from_utf8(digits).map_err(|_| self.error("four hex digits"))?;
        let value = u32::from_str_radix(text, 16).map_err(|_| self.error("four hex digits"))?;
        self.at += 4;
        Ok(value)
    }

    /// A string's text: borrowed from the document when it has no escape.
    fn string(&mut self) -> Result<Cow<'a, str>, CanonicalError> {
        self.expect(b'"', "a string")?;
        let start = self.at;
        while let Some(byte) = self.peek() {
            if byte == b'"' || byte == b'\\' || byte < 0x20 {
                break;
            }
            self.at += 1;
        }
        if self.peek() == Some(b'"') {
            self.at += 1;
            // Quotes are ASCII, so both ends are character boundaries.
            return self
                .text
                .get(start..self.at - 1)
                .map(Cow::Borrowed)
                .ok_or_else(|| self.error("UTF-8 text"));
        }
        let mut text: Vec<u8> = self.bytes[start..self.at].to_vec();
        loop {
            let start = self.at;
            while let Some(byte) = self.peek() {
                if byte == b'"' || byte == b'\\' || byte < 0x20 {
                    break;
                }
                self.at += 1;
            }
            text.extend_from_slice(&self.bytes[start..self.at]);
            match self.next() {
                Some(b'"') => break,
                Some(b'\\') => {
                    let escaped = match self.next() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            let high = self.hex4()?;
                            let code = if (0xd800..0xdc00).contains(&high) {
                                if self.bytes.get(self.at..self.at + 2) != Some(b"\\u") {
                                    return Err(self.error("a low surrogate"));
                                }
                                self.at += 2;
                                let low = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&low) {
                                    return Err(self.error("a low surrogate"));
                                }
                                0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00)
                            } else {
                                high
                            };
                            char::from_u32(code).ok_or_else(|| self.error("a character"))?
                        }
                        _ => return Err(self.error("an escape")),
                    };
                    let mut buffer = [0u8; 4];
                    text.extend_from_slice(escaped.encode_utf8(&mut buffer).as_bytes());
                }
                _ => return Err(self.error("the end of the string")),
            }
        }
        String::from_utf8(text)
            .map(Cow::Owned)
            .map_err(|_| self.error("UTF-8 text"))
    }

    /// Writes the number from its significant digits D (no leading or trailing zeros) and the
    /// power of ten N of D's last digit: plainly (`1200`, `0.015`) while that stays short,
    /// else as `DeN`; zero is `0`. Each value has exactly one form.
    fn number(&mut self, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
        let begin = self.at;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        let mut digits = std::mem::take(&mut self.digits);
        digits.clear();
        let mut exponent: i64 = 0;
        let integer_start = self.at;
        while let Some(byte @ b'0'..=b'9') = self.peek() {
            digits.push(byte);
            self.at += 1;
        }
        if self.at == integer_start {
            self.digits = digits;
            return Err(self.error("a digit"));
        }
        let integer_only = !matches!(self.peek(), Some(b'.' | b'e' | b'E'));
        if integer_only && digits.first() != Some(&b'0') {
            // The common case: an integer, already without leading zeros; written as it is
            // unless it has more than 21 trailing zeros (then the exponent form below).
            let zeros = digits
                .iter()
                .rev()
                .take_while(|&&digit| digit == b'0')
                .count();
            if zeros <= 21 {
                out.extend_from_slice(&self.bytes[begin..self.at]);
                self.digits = digits;
                return Ok(());
            }
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            let fraction_start = self.at;
            while let Some(byte @ b'0'..=b'9') = self.peek() {
                digits.push(byte);
                exponent -= 1;
                self.at += 1;
            }
            if self.at == fraction_start {
                self.digits = digits;
                return Err(self.error("a digit"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            let sign: i64 = match self.peek() {
                Some(b'-') => {
                    self.at += 1;
                    -1
                }
                Some(b'+') => {
                    self.at += 1;
                    1
                }
                _ => 1,
            };
            let start = self.at;
            let mut written: i64 = 0;
            while let Some(byte @ b'0'..=b'9') = self.peek() {
                written = written
                    .saturating_mul(10)
                    .saturating_add(i64::from(byte - b'0'));
                self.at += 1;
            }
            if self.at == start {
                self.digits = digits;
                return Err(self.error("a digit"));
            }
            exponent = exponent.saturating_add(sign.saturating_mul(written));
        }
        write_number(negative, &digits, exponent, out);
        self.digits = digits;
        Ok(())
    }
}

/// Writes `[-]digits × 10^exponent` in its one canonical spelling.
fn write_number(negative: bool, digits: &[u8], exponent: i64, out: &mut Vec<u8>) {
    let Some(first) = digits.iter().position(|&digit| digit != b'0') else {
        out.push(b'0');
        return;
    };
    let last = digits
        .iter()
        .rposition(|&digit| digit != b'0')
        .unwrap_or(first);
    let exponent = exponent.saturating_add((digits.len() - 1 - last) as i64);
    if negative {
        out.push(b'-');
    }
    let significant = &digits[first..=last];
    let length = significant.len() as i64;
    if (0..=21).contains(&exponent) {
        // 1200, not 12e2: the plain form while it stays short.
        out.extend_from_slice(significant);
        out.resize(out.len() + exponent as usize, b'0');
    } else if exponent < 0 && -exponent < length {
        let point = (length + exponent) as usize;
        out.extend_from_slice(&significant[..point]);
        out.push(b'.');
        out.extend_from_slice(&significant[point..]);
    } else if exponent < 0 && -exponent - length <= 6 {
        out.extend_from_slice(b"0.");
        out.resize(out.len() + (-exponent - length) as usize, b'0');
        out.extend_from_slice(significant);
    } else {
        out.extend_from_slice(significant);
        out.push(b'e');
        out.extend_from_slice(exponent.to_string().as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(text: &str) -> String {
        let mut out = Vec::new();
        canonical(text.as_bytes(), &["_id", "_rev"], &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn equal_meaning_is_equal_bytes() {
        assert_eq!(
            form(r#"{"b": 1.0, "a": [1e0, 10e-1, 0.10], "_id": "c/1", "_rev": "x"}"#),
            form(r#"{"a":[1,1,0.1],"b":1}"#)
        );
        assert_eq!(form(r#"{"a":"\u00e9\/"}"#), form("{\"a\":\"é/\"}"));
        assert_eq!(
            form(r#"{"a":{"y":1,"x":2}}"#),
            form(r#"{"a":{"x":2,"y":1}}"#)
        );
        assert_eq!(form(r#"{"a":-0.0}"#), form(r#"{"a":0}"#));
        assert_eq!(form(r#"{"a":"\ud83d\ude00"}"#), form("{\"a\":\"😀\"}"));
    }

    #[test]
    fn big_numbers_and_strings_compare_exactly() {
        assert_ne!(
            form(r#"{"a":123456789012345678901234567890}"#),
            form(r#"{"a":123456789012345678901234567891}"#)
        );
        assert_ne!(
            form(r#"{"a":9007199254740993}"#),
            form(r#"{"a":9007199254740992}"#)
        );
        assert_ne!(form(r#"{"a":"1"}"#), form(r#"{"a":1}"#));
        assert_ne!(form(r#"{"a":0.30000000000000004}"#), form(r#"{"a":0.3}"#));
        assert_eq!(form(r#"{"a":12e2}"#), r#"{"a":1200}"#);
        assert_eq!(form(r#"{"a":63.00}"#), r#"{"a":63}"#);
        assert_eq!(form(r#"{"a":-0.0150}"#), r#"{"a":-0.015}"#);
        assert_eq!(form(r#"{"a":1.5E-9}"#), r#"{"a":15e-10}"#);
        assert_eq!(form(r#"{"a":1e400}"#), r#"{"a":1e400}"#);
    }

    #[test]
    fn fast_paths_agree_with_the_general_rule() {
        // Integers pass through unless they end in more than 21 zeros.
        assert_eq!(form(r#"{"a":-1200}"#), r#"{"a":-1200}"#);
        assert_eq!(
            form(r#"{"a":10000000000000000000000000}"#),
            form(r#"{"a":1e25}"#)
        );
        assert_eq!(form(r#"{"a":1e25}"#), r#"{"a":1e25}"#);
        // Escaped and plain spellings of one string or name are one form.
        assert_eq!(form(r#"{"a":"b","c":"d"}"#), r#"{"a":"b","c":"d"}"#);
        assert_eq!(form("{\"q\\\"\":\"x\\u0001\"}"), "{\"q\\\"\":\"x\\u0001\"}");
        let mut out = Vec::new();
        let key = canonical_with_key(br#"{"v":1,"_key":"k\/1","_rev":"r"}"#, &["_rev"], &mut out)
            .unwrap();
        assert_eq!(key.as_deref(), Some("k/1"));
        assert_eq!(out, br#"{"_key":"k/1","v":1}"#);
        let (members, _) = (
            members(br#"{"b":[1.0,{"y":2,"x":1}],"a":null}"#, &[]).unwrap(),
            (),
        );
        assert_eq!(
            members,
            vec![
                ("a".to_owned(), b"null".to_vec()),
                ("b".to_owned(), br#"[1,{"x":1,"y":2}]"#.to_vec())
            ]
        );
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        for bad in [
            "",
            "{",
            "[]",
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":1.}"#,
            r#"{"a":-}"#,
            r#"{"a":1} x"#,
            r#"{"a":"\x"}"#,
            r#"{"a":tru}"#,
            "{\"a\":\"\u{1}\"}",
        ] {
            let mut out = Vec::new();
            assert!(canonical(bad.as_bytes(), &[], &mut out).is_err(), "{bad:?}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        let mut out = Vec::new();
        assert!(canonical(deep.as_bytes(), &[], &mut out).is_err());
    }
}
