//! Document keys (`_key`) derived from a row's key columns, and reserved column names.
//!
//! GDN accepts a `_key` of 1–254 characters from `[-_!$%'()*+,.:;=@a-zA-Z0-9]`.
//!
//! * One key column: its text is the key when it is a valid key, else the lower-case hex
//!   SHA-256 of the text. This is the old target's rule, so collections it filled keep their
//!   keys (except that we do not trim whitespace first: `" a"` and `"a"` are different rows).
//! * Several key columns: each part is percent-encoded (every byte outside the key alphabet,
//!   and `%` and `:` themselves), and the parts are joined with `:`. Because `:` never occurs
//!   inside an encoded part, distinct rows get distinct keys; the old target used only the
//!   first column and collided. A joined key longer than 254 characters is hashed.
//!
//! Column names `_key`, `_id` and `_rev` are GDN's own; a source column with one of those names
//! is renamed by prefixing `_` until the name is unique, except `_key` when it is the table's
//! only key column (then its value is the key).

use std::fmt;

use sha2::{Digest, Sha256};

/// Longest `_key` GDN accepts.
pub const MAX_KEY_LEN: usize = 254;

/// A valid GDN document key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocumentKey(String);

impl DocumentKey {
    /// The key text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Derives the key of a row from the text of its key columns, in key order.
    pub fn derive<S: AsRef<str>>(parts: &[S]) -> DocumentKey {
        match parts {
            [single] => {
                let text = single.as_ref();
                if is_valid_key(text) {
                    DocumentKey(text.to_owned())
                } else {
                    DocumentKey(sha256_hex(text.as_bytes()))
                }
            }
            parts => {
                let mut joined = String::new();
                for (index, part) in parts.iter().enumerate() {
                    if index > 0 {
                        joined.push(':');
                    }
                    percent_encode_into(part.as_ref(), &mut joined);
                }
                if joined.is_empty() || joined.len() > MAX_KEY_LEN {
                    DocumentKey(sha256_hex(joined.as_bytes()))
                } else {
                    DocumentKey(joined)
                }
            }
        }
    }
}

impl fmt::Display for DocumentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_key_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-_!$%'()*+,.:;=@".contains(&byte)
}

/// Whether `text` may be used as a `_key` as it is.
pub fn is_valid_key(text: &str) -> bool {
    (1..=MAX_KEY_LEN).contains(&text.len()) && text.bytes().all(is_key_byte)
}

fn percent_encode_into(text: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for byte in text.bytes() {
        if is_key_byte(byte) && byte != b'%' && byte != b':' {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0F)]));
        }
    }
}

fn sha256_hex(data: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(data);
    let mut out = String::with_capacity(64);
    for byte in digest.iter() {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0F)]));
    }
    out
}

/// GDN's system attribute names, which source columns must not overwrite.
pub const RESERVED_NAMES: [&str; 3] = ["_key", "_id", "_rev"];

/// The document attribute name for each column: reserved names get `_` prefixes until unique,
/// except `_key` when it is the only key column.
pub fn document_attribute_names<S: AsRef<str>>(columns: &[S], key_columns: &[S]) -> Vec<String> {
    let key_is_own_column = key_columns.len() == 1 && key_columns[0].as_ref() == "_key";
    let mut taken: Vec<String> = columns.iter().map(|c| c.as_ref().to_owned()).collect();
    let mut names = Vec::with_capacity(columns.len());
    for column in columns {
        let column = column.as_ref();
        if RESERVED_NAMES.contains(&column) && !(column == "_key" && key_is_own_column) {
            let mut renamed = format!("_{column}");
            while taken.contains(&renamed) || RESERVED_NAMES.contains(&renamed.as_str()) {
                renamed.insert(0, '_');
            }
            taken.push(renamed.clone());
            names.push(renamed);
        } else {
            names.push(column.to_owned());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_single_key_is_used_as_is() {
        assert_eq!(DocumentKey::derive(&["42"]).as_str(), "42");
        assert_eq!(
            DocumentKey::derive(&["a-b_c!$%'()*+,.:;=@Z9"]).as_str(),
            "a-b_c!$%'()*+,.:;=@Z9"
        );
        let longest = "k".repeat(254);
        assert_eq!(DocumentKey::derive(&[longest.as_str()]).as_str(), longest);
    }

    #[test]
    fn an_invalid_single_key_becomes_its_sha256() {
        // sha256("hello world")
        assert_eq!(
            DocumentKey::derive(&["hello world"]).as_str(),
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        assert_eq!(DocumentKey::derive(&[""]).as_str().len(), 64);
        assert_eq!(DocumentKey::derive(&["k".repeat(255)]).as_str().len(), 64);
        assert_eq!(DocumentKey::derive(&["ü"]).as_str().len(), 64);
    }

    #[test]
    fn composite_keys_encode_each_part_and_join_with_colons() {
        assert_eq!(DocumentKey::derive(&["1", "2"]).as_str(), "1:2");
        assert_eq!(DocumentKey::derive(&["a:b", "c"]).as_str(), "a%3Ab:c");
        assert_eq!(DocumentKey::derive(&["a", "b:c"]).as_str(), "a:b%3Ac");
        assert_eq!(DocumentKey::derive(&["50%", "x y"]).as_str(), "50%25:x%20y");
        assert_ne!(
            DocumentKey::derive(&["", "a"]),
            DocumentKey::derive(&["a", ""])
        );
        let long = "z".repeat(200);
        assert_eq!(
            DocumentKey::derive(&[long.as_str(), long.as_str()])
                .as_str()
                .len(),
            64
        );
    }

    #[test]
    fn reserved_column_names_are_prefixed_until_unique() {
        let names = document_attribute_names(&["_key", "_id", "__id", "_rev", "name"], &["name"]);
        assert_eq!(names, vec!["__key", "___id", "__id", "__rev", "name"]);
        let own_key = document_attribute_names(&["_key", "v"], &["_key"]);
        assert_eq!(own_key, vec!["_key", "v"]);
        let composite = document_attribute_names(&["_key", "b"], &["_key", "b"]);
        assert_eq!(composite, vec!["__key", "b"]);
    }
}
