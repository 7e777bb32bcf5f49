//! Singer RECORDs → GDN document operations, with the pipeline's key and naming rules.
//!
//! A SCHEMA gives a stream its key properties, its attribute names (`_key`, `_id`, `_rev`
//! renamed with `_` prefixes as `pgferry run` does) and which numbers must be written as strings:
//! the old tap describes `numeric(p,s)` with `maximum` 10^(p-s) and `multipleOf` 10^-s, and, as
//! in `pgferry run`'s `numeric_mode: auto`, a numeric wider than 15 digits is stored as a string
//! with every digit because GDN would round the number. A RECORD is checked against its stream's
//! property types (never `multipleOf`, never decimals as floats) and becomes an upsert, a partial
//! update (properties missing, e.g. an unchanged TOASTed column), or a delete (a non-null
//! `_sdc_deleted_at`).

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::gdn::keys::{document_attribute_names, DocumentKey};
use crate::singer::{RawValue, RecordMessage, SchemaMessage};

/// Largest precision stored as a JSON number (GDN keeps doubles).
const EXACT_DOUBLE_DIGITS: i64 = 15;

/// What a record does to its document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Replace (or create) the whole document.
    Upsert(Vec<u8>),
    /// Change the attributes present, keep the others.
    Patch(Vec<u8>),
    /// Remove the document.
    Delete,
}

/// One record's effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordEffect {
    /// The document key (`None` for streams without key properties: GDN makes one).
    pub key: Option<DocumentKey>,
    /// The operation.
    pub operation: Operation,
}

/// A stream as its SCHEMA describes it.
#[derive(Debug, Clone)]
pub struct StreamShape {
    /// Key properties, in order.
    pub key_properties: Vec<String>,
    /// property → document attribute.
    attributes: HashMap<String, String>,
    /// property → the JSON types it may hold (`None`: anything).
    types: HashMap<String, Option<Vec<String>>>,
    /// Properties whose numbers are written as strings.
    string_numbers: HashSet<String>,
    /// Properties a complete record carries (all but `_sdc_*`).
    complete: Vec<String>,
}

fn type_list(schema: &Value) -> Option<Vec<String>> {
    match schema.get("type")? {
        Value::String(kind) => Some(vec![kind.clone()]),
        Value::Array(kinds) => Some(
            kinds
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
        ),
        _ => None,
    }
}

/// Decimal digits of a `numeric` as the old tap's bounds describe it (`None`: not a numeric).
fn numeric_precision(schema: &Value) -> Option<i64> {
    let digits = |value: &Value| -> Option<i64> {
        let number = value.as_f64()?;
        (number > 0.0).then(|| number.log10().round() as i64)
    };
    let integer_digits = digits(schema.get("maximum")?)?;
    let scale = -digits(schema.get("multipleOf")?)?;
    Some(integer_digits + scale)
}

/// Precision from a `#/definitions/sdc_recursive_decimal_{p}_{s}_array` reference.
fn array_precision(schema: &Value) -> Option<i64> {
    let reference = schema.get("items")?.get("$ref")?.as_str()?;
    let rest = reference.strip_prefix("#/definitions/sdc_recursive_decimal_")?;
    rest.split('_').next()?.parse().ok()
}

impl StreamShape {
    /// The shape of a stream from its SCHEMA message.
    pub fn new(schema: &SchemaMessage) -> StreamShape {
        let properties = schema.schema.get("properties").and_then(Value::as_object);
        let order: Vec<String> = if schema.property_order.is_empty() {
            properties
                .map(|map| map.keys().cloned().collect())
                .unwrap_or_default()
        } else {
            schema.property_order.clone()
        };
        let names = document_attribute_names(&order, &schema.key_properties);
        let mut shape = StreamShape {
            key_properties: schema.key_properties.clone(),
            attributes: order.iter().cloned().zip(names).collect(),
            types: HashMap::new(),
            string_numbers: HashSet::new(),
            complete: order
                .iter()
                .filter(|name| !name.starts_with("_sdc_"))
                .cloned()
                .collect(),
        };
        if let Some(properties) = properties {
            for (name, property) in properties {
                shape.types.insert(name.clone(), type_list(property));
                let precision = numeric_precision(property).or_else(|| array_precision(property));
                if precision.is_some_and(|digits| digits > EXACT_DOUBLE_DIGITS) {
                    shape.string_numbers.insert(name.clone());
                }
            }
        }
        shape
    }

    fn attribute<'a>(&'a self, property: &'a str) -> &'a str {
        self.attributes
            .get(property)
            .map_or(property, String::as_str)
    }
}

/// The JSON type of a raw value.
fn kind_of(raw: &str) -> &'static str {
    match raw.as_bytes().first() {
        Some(b'"') => "string",
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b't' | b'f') => "boolean",
        Some(b'n') => "null",
        _ if raw.contains(['.', 'e', 'E']) => "number",
        _ => "integer",
    }
}

fn type_allows(types: &[String], kind: &str) -> bool {
    types
        .iter()
        .any(|allowed| allowed == kind || (allowed == "number" && kind == "integer"))
}

/// The text a key part is made from: a string's content, other values as written.
fn key_text(raw: &RawValue) -> String {
    match serde_json::from_str::<String>(raw.get()) {
        Ok(text) if raw.get().starts_with('"') => text,
        _ => raw.get().to_owned(),
    }
}

/// Copies `raw` into `out` with every number outside strings turned into a string.
fn numbers_as_strings(raw: &str, out: &mut Vec<u8>) {
    crate::decode::json_out::map_numbers(raw.as_bytes(), out, |token, out| {
        out.push(b'"');
        out.extend_from_slice(token);
        out.push(b'"');
    });
}

/// Turns a RECORD of `shape`'s stream into its effect; `Err` says what is wrong with it.
pub fn record_effect(
    shape: &StreamShape,
    record: &RecordMessage<'_>,
) -> Result<RecordEffect, String> {
    for (name, raw) in &record.record {
        let kind = kind_of(raw.get());
        // GDN stores numbers as doubles: a literal beyond their range (e.g. 1e400, also inside
        // an array or object) cannot be written, unless it goes as an exact string.
        let as_string = kind == "number" && shape.string_numbers.contains(name.as_ref());
        if matches!(kind, "number" | "array" | "object")
            && !as_string
            && serde_json::from_str::<serde_json::Value>(raw.get()).is_err()
        {
            let excerpt: String = raw.get().chars().take(60).collect();
            return Err(format!(
                "property {name:?} holds a number GDN cannot store (beyond a double's range): {excerpt}"
            ));
        }
        if let Some(Some(types)) = shape.types.get(name.as_ref()) {
            if !types.is_empty() && !type_allows(types, kind) {
                let text = raw.get();
                let excerpt: String = text.chars().take(60).collect();
                return Err(format!(
                    "property {name:?} is {kind} {excerpt}, but the stream's SCHEMA allows {}",
                    types.join(", ")
                ));
            }
        }
    }
    let field = |name: &str| {
        record
            .record
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, raw)| *raw)
    };
    let key = if shape.key_properties.is_empty() {
        None
    } else {
        let mut parts = Vec::with_capacity(shape.key_properties.len());
        for property in &shape.key_properties {
            match field(property) {
                Some(raw) if raw.get() != "null" => parts.push(key_text(raw)),
                _ => {
                    return Err(format!(
                        "key property {property:?} is missing or null, so the record has no document key"
                    ))
                }
            }
        }
        Some(DocumentKey::derive(&parts))
    };
    let deleted = field("_sdc_deleted_at").is_some_and(|raw| raw.get() != "null");
    if deleted {
        if key.is_none() {
            return Err("a delete (_sdc_deleted_at) in a stream without key properties cannot name its document".into());
        }
        return Ok(RecordEffect {
            key,
            operation: Operation::Delete,
        });
    }
    let key_is_own_column = shape.key_properties.len() == 1 && shape.key_properties[0] == "_key";
    let mut document = Vec::with_capacity(256);
    document.push(b'{');
    if let Some(key) = &key {
        document.extend_from_slice(b"\"_key\":");
        crate::decode::json_out::write_string(key.as_str(), &mut document);
    }
    for (name, raw) in &record.record {
        if name == "_sdc_deleted_at" || (key_is_own_column && name == "_key") {
            continue;
        }
        let attribute = shape.attribute(name);
        // Reserved names missing from the SCHEMA are renamed as the rules say.
        let renamed;
        let attribute = if crate::gdn::keys::RESERVED_NAMES.contains(&attribute) {
            renamed = format!("_{attribute}");
            renamed.as_str()
        } else {
            attribute
        };
        if document.len() > 1 {
            document.push(b',');
        }
        crate::decode::json_out::write_string(attribute, &mut document);
        document.push(b':');
        if shape.string_numbers.contains(name.as_ref()) {
            numbers_as_strings(raw.get(), &mut document);
        } else {
            document.extend_from_slice(raw.get().as_bytes());
        }
    }
    document.push(b'}');
    let complete = shape
        .complete
        .iter()
        .all(|property| record.record.iter().any(|(name, _)| name == property));
    Ok(RecordEffect {
        key,
        operation: if complete || shape.key_properties.is_empty() {
            Operation::Upsert(document)
        } else {
            Operation::Patch(document)
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::singer::{parse_line, Message};

    fn shape(line: &str) -> StreamShape {
        match parse_line(line, 1).unwrap() {
            Message::Schema(schema) => StreamShape::new(&schema),
            _ => panic!("not a schema"),
        }
    }

    fn effect(shape: &StreamShape, line: &str) -> Result<RecordEffect, String> {
        match parse_line(line, 2).unwrap() {
            Message::Record(record) => record_effect(shape, &record),
            _ => panic!("not a record"),
        }
    }

    const SCHEMA: &str = r#"{"type": "SCHEMA", "stream": "public-t", "key_properties": ["a", "b"], "schema": {"properties": {"a": {"type": ["integer"]}, "b": {"type": ["string"]}, "_rev": {"type": ["null", "integer"]}, "small": {"type": ["null", "number"], "maximum": 10000000000, "multipleOf": 0.01, "exclusiveMaximum": true}, "wide": {"type": ["null", "number"], "maximum": 1e62, "multipleOf": 1e-38}, "_sdc_deleted_at": {"type": ["null", "string"]}}}}"#;

    #[test]
    fn composite_keys_do_not_collide_and_wide_numerics_keep_their_digits() {
        let shape = shape(SCHEMA);
        let one = effect(&shape, r#"{"type": "RECORD", "stream": "public-t", "record": {"a": 1, "b": "x:y", "_rev": 3, "small": 0.07, "wide": 12345678901234567890.5, "_sdc_deleted_at": null}}"#).unwrap();
        assert_eq!(one.key.as_ref().unwrap().as_str(), "1:x%3Ay");
        let Operation::Upsert(document) = one.operation else {
            panic!("expected an upsert")
        };
        assert_eq!(
            String::from_utf8(document).unwrap(),
            r#"{"_key":"1:x%3Ay","a":1,"b":"x:y","__rev":3,"small":0.07,"wide":"12345678901234567890.5"}"#
        );
        let two = effect(&shape, r#"{"type": "RECORD", "stream": "public-t", "record": {"a": 1, "b": "z", "_rev": 3, "small": 1, "wide": null}}"#).unwrap();
        assert_ne!(
            one.key, two.key,
            "the old target used only the first column"
        );
    }

    #[test]
    fn deletes_partial_records_and_schema_violations() {
        let shape = shape(SCHEMA);
        let deleted = effect(&shape, r#"{"type": "RECORD", "stream": "public-t", "record": {"a": 1, "b": "x", "_sdc_deleted_at": "2024-01-01T00:00:00.000000Z"}}"#).unwrap();
        assert_eq!(deleted.operation, Operation::Delete);
        let partial = effect(
            &shape,
            r#"{"type": "RECORD", "stream": "public-t", "record": {"a": 1, "b": "x", "small": 2}}"#,
        )
        .unwrap();
        assert!(matches!(partial.operation, Operation::Patch(_)));
        let wrong = effect(
            &shape,
            r#"{"type": "RECORD", "stream": "public-t", "record": {"a": "one", "b": "x"}}"#,
        )
        .unwrap_err();
        assert!(wrong.contains("\"a\" is string"), "{wrong}");
        let keyless = effect(
            &shape,
            r#"{"type": "RECORD", "stream": "public-t", "record": {"a": 1}}"#,
        )
        .unwrap_err();
        assert!(keyless.contains("key property \"b\""), "{keyless}");
    }

    #[test]
    fn numbers_inside_arrays_become_strings() {
        let mut out = Vec::new();
        numbers_as_strings(r#"[[1.5, -2e3], null, "7"]"#, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"[["1.5", "-2e3"], null, "7"]"#
        );
        assert_eq!(
            numeric_precision(&serde_json::json!({"maximum": 10000000000i64, "multipleOf": 0.01})),
            Some(12)
        );
    }
}
