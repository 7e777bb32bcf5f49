//! JSON as GDN keeps it: integers that fit in i64 stay integers, every other number becomes an
//! IEEE double. A 20-digit literal is therefore rounded on arrival, exactly as a real fabric
//! would round it, so that tests against gdnlite catch precision loss.

use serde_json::{Number, Value};

use super::error::ApiError;

/// Parses a request body as JSON and normalises its numbers to GDN's storage types.
///
/// Invalid UTF-8, trailing garbage and malformed JSON are all `CORRUPTED_JSON` errors.
pub fn parse_body(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::corrupted_json("the body is empty"));
    }
    let mut value: Value = serde_json::from_slice(bytes).map_err(ApiError::corrupted_json)?;
    normalize_numbers(&mut value);
    Ok(value)
}

/// Rewrites every unsigned integer above `i64::MAX` as a double, in place.
pub fn normalize_numbers(value: &mut Value) {
    match value {
        Value::Number(n) => {
            if let Some(rounded) = gdn_number(n) {
                *n = rounded;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_numbers),
        Value::Object(map) => map.values_mut().for_each(normalize_numbers),
        _ => {}
    }
}

fn gdn_number(n: &Number) -> Option<Number> {
    if n.is_u64() && n.as_i64().is_none() {
        n.as_f64().and_then(Number::from_f64)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_integers_stay_exact() {
        let v = parse_body(br#"{"a": 9223372036854775807, "b": -9223372036854775808}"#).unwrap();
        assert_eq!(v["a"].as_i64(), Some(i64::MAX));
        assert_eq!(v["b"].as_i64(), Some(i64::MIN));
    }

    #[test]
    fn wide_integers_become_doubles() {
        let v = parse_body(br#"{"a": 12345678901234567890, "b": [18446744073709551615]}"#).unwrap();
        assert!(v["a"].is_f64());
        assert_eq!(v["a"].to_string(), "1.2345678901234567e+19");
        assert!(v["b"][0].is_f64());
        let huge = parse_body(b"123456789012345678901234567890").unwrap();
        assert!(huge.is_f64());
    }

    #[test]
    fn wide_literals_round_to_the_nearest_double_on_every_path() {
        // Found by fuzzing: the tree parser stored 1.2345678901234567e20 while the batch
        // transcoder stored 1.2345678901234568e20, the correctly rounded double.
        for literal in ["123456789012345678490", "1.23456789012345678490e20"] {
            let tree = parse_body(literal.as_bytes()).unwrap();
            assert_eq!(tree.as_f64(), Some(1.2345678901234568e20), "{literal}");
            let Ok(TranscodedBody::Single(TranscodedDoc::NotObject)) =
                transcode_batch(literal.as_bytes())
            else {
                panic!("a number is not a document");
            };
            let doc = format!("[{{\"n\": {literal}}}]");
            let Ok(TranscodedBody::Array(docs)) = transcode_batch(doc.as_bytes()) else {
                panic!("one document");
            };
            let TranscodedDoc::Object { open_body, .. } = &docs[0] else {
                panic!("an object");
            };
            let stored: Value =
                serde_json::from_slice(&TranscodedDoc::finish(open_body, "k", "c", "r")).unwrap();
            assert_eq!(
                stored["n"].as_f64(),
                Some(1.2345678901234568e20),
                "{literal}"
            );
        }
    }

    #[test]
    fn invalid_utf8_in_an_ignored_id_is_refused_like_anywhere_else() {
        // Found by fuzzing: the transcoder skipped `_id` without checking it, so a batch write
        // took a body that every other path refuses with 600.
        let body = b"[{\"_key\": \"k\", \"_id\": \"orders\xffk\", \"v\": 1}]";
        assert_eq!(
            parse_body(body).unwrap_err().error_num,
            super::super::error::CORRUPTED_JSON
        );
        assert_eq!(
            transcode_batch(body).unwrap_err().error_num,
            super::super::error::CORRUPTED_JSON
        );
    }

    #[test]
    fn decimals_are_doubles() {
        let v = parse_body(br#"[0.1000000000000000055511151231257827, 1.5]"#).unwrap();
        assert_eq!(v[0].as_f64(), Some(0.1));
        assert_eq!(v[1].as_f64(), Some(1.5));
    }

    #[test]
    fn malformed_and_non_utf8_bodies_are_corrupted_json() {
        for body in [
            &b"{"[..],
            b"",
            b"  ",
            b"[1,]",
            b"{\"a\": \"\xff\"}",
            b"{} x",
        ] {
            let err = parse_body(body).unwrap_err();
            assert_eq!(
                err.error_num,
                super::super::error::CORRUPTED_JSON,
                "{body:?}"
            );
            assert_eq!(err.status.as_u16(), 400);
        }
    }
}

/// One element of a write batch after [`transcode_batch`]: an object re-encoded in one pass
/// (numbers normalised, `_key` / `_id` / `_rev` taken out), or something else.
#[derive(Debug, Clone, PartialEq)]
pub enum TranscodedDoc {
    /// A JSON object.
    Object {
        /// `{` followed by the other attributes, comma separated, without the closing `}`.
        open_body: Vec<u8>,
        /// The `_key` value, if present.
        key: Option<Value>,
        /// The `_rev` value, if present.
        rev: Option<Value>,
    },
    /// Not an object (a per-document 1227).
    NotObject,
}

impl TranscodedDoc {
    /// Closes the object with `_key`, `_id` and `_rev` (validated ASCII, written unescaped).
    pub fn finish(open_body: &[u8], key: &str, id_collection: &str, rev: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            open_body.len() + key.len() * 2 + id_collection.len() + rev.len() + 32,
        );
        out.extend_from_slice(open_body);
        if open_body.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(b"\"_key\":\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\",\"_id\":\"");
        out.extend_from_slice(id_collection.as_bytes());
        out.push(b'/');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\",\"_rev\":\"");
        out.extend_from_slice(rev.as_bytes());
        out.extend_from_slice(b"\"}");
        out
    }
}

/// The body of a batch write: an array of elements, or one element.
#[derive(Debug, Clone, PartialEq)]
pub enum TranscodedBody {
    /// `[...]`.
    Array(Vec<TranscodedDoc>),
    /// A single value.
    Single(TranscodedDoc),
}

/// Parses an insert/replace body and re-encodes every document in the same pass, without
/// building a `serde_json::Value` tree: the hot path of batch writes. Produces the same stored
/// JSON (up to attribute order) as [`parse_body`] followed by serialisation.
pub fn transcode_batch(bytes: &[u8]) -> Result<TranscodedBody, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::corrupted_json("the body is empty"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let body = serde::de::DeserializeSeed::deserialize(BodySeed, &mut de)
        .map_err(ApiError::corrupted_json)?;
    de.end().map_err(ApiError::corrupted_json)?;
    Ok(body)
}

mod transcode {
    use std::fmt;

    use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
    use serde::Deserializer;
    use serde_json::Value;

    use super::{TranscodedBody, TranscodedDoc};

    /// Writes a string as a JSON string literal.
    fn write_str(out: &mut Vec<u8>, s: &str) {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }

    /// Writes a string serde_json borrowed from the input. It borrows only strings without
    /// escapes, and valid JSON strings without escapes contain nothing that needs escaping
    /// (no quote, backslash or control character), so the text is copied as it is.
    fn write_borrowed_str(out: &mut Vec<u8>, s: &str) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }

    fn write_f64(out: &mut Vec<u8>, f: f64) {
        match serde_json::Number::from_f64(f) {
            Some(n) => {
                let _ = serde_json::to_writer(&mut *out, &n);
            }
            None => out.extend_from_slice(b"null"),
        }
    }

    /// Copies any JSON value into `out`, normalising numbers as GDN stores them.
    pub(super) struct ValueSeed<'o>(pub(super) &'o mut Vec<u8>);

    impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for ValueSeed<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, v: bool) -> Result<(), E> {
            self.0.extend_from_slice(if v { b"true" } else { b"false" });
            Ok(())
        }
        fn visit_i64<E>(self, v: i64) -> Result<(), E> {
            self.0.extend_from_slice(v.to_string().as_bytes());
            Ok(())
        }
        fn visit_u64<E>(self, v: u64) -> Result<(), E> {
            match i64::try_from(v) {
                Ok(i) => self.0.extend_from_slice(i.to_string().as_bytes()),
                Err(_) => write_f64(self.0, v as f64),
            }
            Ok(())
        }
        fn visit_f64<E>(self, v: f64) -> Result<(), E> {
            write_f64(self.0, v);
            Ok(())
        }
        fn visit_str<E>(self, v: &str) -> Result<(), E> {
            write_str(self.0, v);
            Ok(())
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<(), E> {
            write_borrowed_str(self.0, v);
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            self.0.extend_from_slice(b"null");
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            self.0.push(b'[');
            let mut first = true;
            loop {
                if !first {
                    self.0.push(b',');
                }
                let mark = self.0.len();
                if seq.next_element_seed(ValueSeed(&mut *self.0))?.is_none() {
                    if !first {
                        self.0.truncate(mark - 1);
                    }
                    break;
                }
                first = false;
            }
            self.0.push(b']');
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            self.0.push(b'{');
            let mut first = true;
            while let Some(key) = map.next_key::<KeyString<'de>>()? {
                if !first {
                    self.0.push(b',');
                }
                first = false;
                key.write(self.0);
                self.0.push(b':');
                map.next_value_seed(ValueSeed(&mut *self.0))?;
            }
            self.0.push(b'}');
            Ok(())
        }
    }

    /// An attribute name, borrowed from the input when it has no escapes.
    pub(super) enum KeyString<'de> {
        /// Borrowed: needs no escaping when written.
        Borrowed(&'de str),
        /// Unescaped into a new string.
        Owned(String),
    }

    impl KeyString<'_> {
        fn as_str(&self) -> &str {
            match self {
                KeyString::Borrowed(s) => s,
                KeyString::Owned(s) => s,
            }
        }

        fn write(&self, out: &mut Vec<u8>) {
            match self {
                KeyString::Borrowed(s) => write_borrowed_str(out, s),
                KeyString::Owned(s) => write_str(out, s),
            }
        }
    }

    impl<'de> serde::Deserialize<'de> for KeyString<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KeyString<'de>, D::Error> {
            struct KeyVisitor;
            impl<'de> Visitor<'de> for KeyVisitor {
                type Value = KeyString<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("an attribute name")
                }
                fn visit_borrowed_str<E>(self, v: &'de str) -> Result<KeyString<'de>, E> {
                    Ok(KeyString::Borrowed(v))
                }
                fn visit_str<E>(self, v: &str) -> Result<KeyString<'de>, E> {
                    Ok(KeyString::Owned(v.to_string()))
                }
                fn visit_string<E>(self, v: String) -> Result<KeyString<'de>, E> {
                    Ok(KeyString::Owned(v))
                }
            }
            d.deserialize_str(KeyVisitor)
        }
    }

    /// One element of a batch: objects are transcoded, anything else is skipped.
    pub(super) struct DocSeed;

    impl<'de> DeserializeSeed<'de> for DocSeed {
        type Value = TranscodedDoc;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<TranscodedDoc, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for DocSeed {
        type Value = TranscodedDoc;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a document")
        }
        fn visit_bool<E>(self, _: bool) -> Result<TranscodedDoc, E> {
            Ok(TranscodedDoc::NotObject)
        }
        fn visit_i64<E>(self, _: i64) -> Result<TranscodedDoc, E> {
            Ok(TranscodedDoc::NotObject)
        }
        fn visit_u64<E>(self, _: u64) -> Result<TranscodedDoc, E> {
            Ok(TranscodedDoc::NotObject)
        }
        fn visit_f64<E>(self, _: f64) -> Result<TranscodedDoc, E> {
            Ok(TranscodedDoc::NotObject)
        }
        fn visit_str<E>(self, _: &str) -> Result<TranscodedDoc, E> {
            Ok(TranscodedDoc::NotObject)
        }
        fn visit_unit<E>(self) -> Result<TranscodedDoc, E> {
            Ok(TranscodedDoc::NotObject)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<TranscodedDoc, A::Error> {
            // Walked like any value, so the nesting limit applies as on the other paths.
            let mut sink = Vec::new();
            ValueSeed(&mut sink).visit_seq(seq)?;
            Ok(TranscodedDoc::NotObject)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TranscodedDoc, A::Error> {
            let mut out = Vec::with_capacity(1024);
            out.push(b'{');
            let (mut key, mut rev) = (None, None);
            while let Some(name) = map.next_key::<KeyString<'de>>()? {
                match name.as_str() {
                    "_key" => key = Some(map.next_value::<Value>()?),
                    "_rev" => rev = Some(map.next_value::<Value>()?),
                    "_id" => {
                        // Dropped, but checked like any value (UTF-8, nesting), as the other
                        // paths check it.
                        map.next_value_seed(ValueSeed(&mut Vec::new()))?;
                    }
                    _ => {
                        if out.len() > 1 {
                            out.push(b',');
                        }
                        name.write(&mut out);
                        out.push(b':');
                        map.next_value_seed(ValueSeed(&mut out))?;
                    }
                }
            }
            Ok(TranscodedDoc::Object {
                open_body: out,
                key,
                rev,
            })
        }
    }

    /// The whole body: an array of documents or a single one.
    pub(super) struct BodySeed;

    impl<'de> DeserializeSeed<'de> for BodySeed {
        type Value = TranscodedBody;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<TranscodedBody, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for BodySeed {
        type Value = TranscodedBody;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a document or an array of documents")
        }
        fn visit_bool<E>(self, _: bool) -> Result<TranscodedBody, E> {
            Ok(TranscodedBody::Single(TranscodedDoc::NotObject))
        }
        fn visit_i64<E>(self, _: i64) -> Result<TranscodedBody, E> {
            Ok(TranscodedBody::Single(TranscodedDoc::NotObject))
        }
        fn visit_u64<E>(self, _: u64) -> Result<TranscodedBody, E> {
            Ok(TranscodedBody::Single(TranscodedDoc::NotObject))
        }
        fn visit_f64<E>(self, _: f64) -> Result<TranscodedBody, E> {
            Ok(TranscodedBody::Single(TranscodedDoc::NotObject))
        }
        fn visit_str<E>(self, _: &str) -> Result<TranscodedBody, E> {
            Ok(TranscodedBody::Single(TranscodedDoc::NotObject))
        }
        fn visit_unit<E>(self) -> Result<TranscodedBody, E> {
            Ok(TranscodedBody::Single(TranscodedDoc::NotObject))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TranscodedBody, A::Error> {
            let mut docs = Vec::with_capacity(seq.size_hint().unwrap_or(64).min(100_000));
            while let Some(doc) = seq.next_element_seed(DocSeed)? {
                docs.push(doc);
            }
            Ok(TranscodedBody::Array(docs))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TranscodedBody, A::Error> {
            DocSeed.visit_map(map).map(TranscodedBody::Single)
        }
    }
}

use transcode::BodySeed;

#[cfg(test)]
mod transcode_tests {
    use super::*;

    /// The stored document the Value path produces, for comparison.
    fn via_value(doc: &Value, key: &str, rev: &str) -> Value {
        let mut map = doc.as_object().cloned().unwrap_or_default();
        map.insert("_key".into(), key.into());
        map.insert("_id".into(), format!("c/{key}").into());
        map.insert("_rev".into(), rev.into());
        Value::Object(map)
    }

    #[test]
    fn transcoding_matches_the_value_path() {
        let body = br#"[
            {"_key": "a", "n": 12345678901234567890, "i": -5, "u": 9223372036854775807, "f": 1.50,
             "s": "t\u00e9\"x\n", "z": null, "b": [true, false, [], {}], "o": {"p": {"q": [1, 2.5e3]}},
             "_id": "ignored", "_rev": "r1"},
            {},
            7, "s", null, [1, {"a": 1}],
            {"\u0041": 1, "q\"k": {"x\\y": "plain", "e": "\t"}, "emoji": "\ud83d\ude00"}
        ]"#;
        let expected = parse_body(body).unwrap();
        let TranscodedBody::Array(docs) = transcode_batch(body).unwrap() else {
            panic!("array expected");
        };
        assert_eq!(docs.len(), 7);
        for (doc, want) in docs.iter().zip(expected.as_array().unwrap()) {
            match doc {
                TranscodedDoc::Object {
                    open_body,
                    key,
                    rev,
                } => {
                    let k = key.as_ref().and_then(Value::as_str).unwrap_or("gen");
                    let stored = TranscodedDoc::finish(open_body, k, "c", "_r");
                    let got: Value = serde_json::from_slice(&stored).unwrap();
                    let mut want_doc = via_value(want, k, "_r");
                    want_doc
                        .as_object_mut()
                        .unwrap()
                        .insert("_id".into(), format!("c/{k}").into());
                    assert_eq!(got, want_doc);
                    if k == "a" {
                        assert_eq!(rev.as_ref().and_then(Value::as_str), Some("r1"));
                        assert!(got["n"].is_f64() && got["u"].is_i64() && got["f"] == 1.5);
                    }
                }
                TranscodedDoc::NotObject => assert!(!want.is_object()),
            }
        }
    }

    #[test]
    fn single_objects_and_errors() {
        assert!(matches!(
            transcode_batch(br#"{"x": 1}"#).unwrap(),
            TranscodedBody::Single(TranscodedDoc::Object { .. })
        ));
        assert_eq!(
            transcode_batch(b"5").unwrap(),
            TranscodedBody::Single(TranscodedDoc::NotObject)
        );
        for bad in [
            &b"["[..],
            b"[{]",
            b"",
            b"[1] x",
            b"[\"\xff\"]",
            b"[{\"a\": 1e999}]",
        ] {
            assert_eq!(
                transcode_batch(bad).unwrap_err().error_num,
                super::super::error::CORRUPTED_JSON,
                "{bad:?}"
            );
        }
        // Deep nesting inside a document hits serde_json's recursion limit, not the stack.
        let deep = format!("[{{\"a\": {}{}}}]", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(
            transcode_batch(deep.as_bytes()).unwrap_err().error_num,
            super::super::error::CORRUPTED_JSON
        );
        let deep = format!("[{}{}]", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(
            transcode_batch(deep.as_bytes()).unwrap_err().error_num,
            super::super::error::CORRUPTED_JSON
        );
    }

    #[test]
    fn finish_handles_empty_objects() {
        let stored = TranscodedDoc::finish(b"{", "k", "c", "_r");
        assert_eq!(stored, br#"{"_key":"k","_id":"c/k","_rev":"_r"}"#.to_vec());
    }
}
