//! Naming rules: document `_key`s and collection names, as GDN (ArangoDB lineage) enforces them.

/// Longest `_key` GDN accepts.
pub const MAX_KEY_LEN: usize = 254;
/// Longest collection name accepted.
pub const MAX_COLLECTION_NAME_LEN: usize = 256;

/// Whether `key` is 1–254 characters of `[-_!$%'()*+,.:;=@a-zA-Z0-9]`.
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'_'
                        | b'!'
                        | b'$'
                        | b'%'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b'.'
                        | b':'
                        | b';'
                        | b'='
                        | b'@'
                )
        })
}

/// Whether `name` is a usable collection name: a letter first (or `_` for system
/// collections), then letters, digits, `_` and `-`, at most 256 bytes.
pub fn is_valid_collection_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
        _ => return false,
    }
    name.len() <= MAX_COLLECTION_NAME_LEN
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_gdn_alphabet_and_length() {
        assert!(is_valid_key("1"));
        assert!(is_valid_key("a-_!$%'()*+,.:;=@Z9"));
        assert!(is_valid_key(&"k".repeat(254)));
        assert!(!is_valid_key(""));
        assert!(!is_valid_key(&"k".repeat(255)));
        assert!(!is_valid_key("a/b"));
        assert!(!is_valid_key("a b"));
        assert!(!is_valid_key("é"));
        assert!(!is_valid_key("a\"b"));
    }

    #[test]
    fn collection_names_start_with_a_letter() {
        assert!(is_valid_collection_name("orders"));
        assert!(is_valid_collection_name("Orders_2024-x"));
        assert!(is_valid_collection_name("_system_thing"));
        assert!(!is_valid_collection_name(""));
        assert!(!is_valid_collection_name("1abc"));
        assert!(!is_valid_collection_name("a/b"));
        assert!(!is_valid_collection_name(&"a".repeat(257)));
    }
}
