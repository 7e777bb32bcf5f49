//! Writing JSON text directly into an output buffer: strings escaped per RFC 8259, numbers as
//! given. Documents are built this way (no intermediate `serde_json::Value`), so exact numeric
//! literals pass through untouched.

/// Appends `text` as a JSON string literal, quotes included.
pub fn write_string(text: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(text.len() + 2);
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0C => b"\\f",
            0x00..=0x1F => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..index]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xF)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = index + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Copies JSON text `json` into `out`, passing each number outside strings through `number`
/// (which writes what stands in its place): the one scanner for rewriting numbers in JSON.
pub fn map_numbers(json: &[u8], out: &mut Vec<u8>, mut number: impl FnMut(&[u8], &mut Vec<u8>)) {
    let mut in_string = false;
    let mut escaped = false;
    let mut index = 0;
    while index < json.len() {
        let byte = json[index];
        if in_string {
            out.push(byte);
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            index += 1;
            continue;
        }
        if byte == b'-' || byte.is_ascii_digit() {
            let end = json[index..]
                .iter()
                .position(|b| {
                    !(b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
                })
                .map_or(json.len(), |length| index + length);
            number(&json[index..end], out);
            index = end;
            continue;
        }
        if byte == b'"' {
            in_string = true;
        }
        out.push(byte);
        index += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_rfc_8259_requires_and_nothing_else() {
        let mut out = Vec::new();
        write_string("a\"b\\c\nd\u{1}é/€", &mut out);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "\"a\\\"b\\\\c\\nd\\u0001é/€\""
        );
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é/€");
    }
}
