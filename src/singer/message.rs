//! One Singer message per line, parsed with serde_json; errors name the line.

use std::borrow::Cow;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::Value;

/// A line of Singer input that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SingerError {
    /// The line is not a JSON object.
    #[error("line {line}: not a JSON Singer message: {detail}\nHINT: every input line must be one JSON object such as {{\"type\": \"RECORD\", …}}; check the tap's stdout for log lines mixed into it")]
    Json {
        /// 1-based input line.
        line: u64,
        /// serde_json's message.
        detail: String,
    },
    /// A message lacks a field its type requires, or has it with the wrong shape.
    #[error("line {line}: {kind} message {detail}")]
    Shape {
        /// 1-based input line.
        line: u64,
        /// The message type.
        kind: String,
        /// What is missing or wrong.
        detail: String,
    },
    /// An unknown message type.
    #[error("line {line}: unknown Singer message type {kind:?}\nHINT: expected SCHEMA, RECORD, STATE or ACTIVATE_VERSION")]
    UnknownType {
        /// 1-based input line.
        line: u64,
        /// The `type` found.
        kind: String,
    },
    /// Reading the input failed or a line was too long.
    #[error("reading the input after line {line}: {detail}")]
    Read {
        /// The last complete line.
        line: u64,
        /// The reason.
        detail: String,
    },
}

/// A SCHEMA message: the JSON schema of a stream and its key.
#[derive(Debug, Clone)]
pub struct SchemaMessage {
    /// The stream (`<schema>-<table>` from the old source).
    pub stream: String,
    /// The JSON schema of one record.
    pub schema: Value,
    /// The names of `schema.properties` in the order the message lists them.
    pub property_order: Vec<String>,
    /// The columns identifying a row.
    pub key_properties: Vec<String>,
    /// Replication-key columns (informational here).
    pub bookmark_properties: Vec<String>,
}

/// A RECORD message; field names and values borrow from the input line.
#[derive(Debug)]
pub struct RecordMessage<'a> {
    /// The stream.
    pub stream: Cow<'a, str>,
    /// Fields in input order, each value as its raw JSON text.
    pub record: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// When the source read the row (RFC 3339), if it said.
    pub time_extracted: Option<Cow<'a, str>>,
    /// The table version, if any.
    pub version: Option<&'a RawValue>,
}

/// One parsed Singer line.
#[derive(Debug)]
pub enum Message<'a> {
    /// Describes a stream.
    Schema(SchemaMessage),
    /// One row.
    Record(RecordMessage<'a>),
    /// A bookmark to echo once everything before it is committed; the raw `value`.
    State(&'a RawValue),
    /// A new table version became complete (full-table replication).
    ActivateVersion {
        /// The stream.
        stream: String,
        /// The version, as raw JSON.
        version: Option<&'a RawValue>,
    },
}

/// The record object as a list of borrowed fields, in input order.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Fields<'de>, M::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    fields.push((key, value));
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// The fields of a JSON object value, borrowed, in order; `None` when it is not an object.
pub fn object_fields(raw: &RawValue) -> Option<Vec<(Cow<'_, str>, &RawValue)>> {
    serde_json::from_str::<Fields<'_>>(raw.get())
        .ok()
        .map(|Fields(fields)| fields)
}

/// A `Cow<str>` that borrows when the JSON string has no escapes.
#[derive(Deserialize)]
#[serde(transparent)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// Only the property names of a schema, in their order.
#[derive(Deserialize)]
struct OrderedSchema<'a> {
    #[serde(borrow, default)]
    properties: Option<Fields<'a>>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Text<'a>>,
    #[serde(borrow, default)]
    stream: Option<Text<'a>>,
    #[serde(borrow, default)]
    record: Option<Fields<'a>>,
    #[serde(borrow, default)]
    schema: Option<&'a RawValue>,
    #[serde(default)]
    key_properties: Option<Vec<String>>,
    #[serde(default)]
    bookmark_properties: Option<Vec<String>>,
    #[serde(borrow, default)]
    time_extracted: Option<Text<'a>>,
    #[serde(borrow, default)]
    version: Option<&'a RawValue>,
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
}

fn shape(line: u64, kind: &str, detail: &str) -> SingerError {
    SingerError::Shape {
        line,
        kind: kind.to_owned(),
        detail: detail.to_owned(),
    }
}

/// Parses one input line (1-based number `line`, for errors).
pub fn parse_line(text: &str, line: u64) -> Result<Message<'_>, SingerError> {
    let envelope: Envelope<'_> = serde_json::from_str(text).map_err(|error| SingerError::Json {
        line,
        detail: error.to_string(),
    })?;
    let Some(Text(kind)) = envelope.kind else {
        return Err(shape(
            line,
            "a",
            "has no \"type\" (expected SCHEMA, RECORD, STATE or ACTIVATE_VERSION)",
        ));
    };
    let stream = |kind: &str| {
        envelope
            .stream
            .as_ref()
            .map(|Text(stream)| stream.clone())
            .filter(|stream| !stream.is_empty())
            .ok_or_else(|| shape(line, kind, "has no \"stream\""))
    };
    match kind.as_ref() {
        "RECORD" => {
            let stream = stream("RECORD")?;
            let Some(Fields(record)) = envelope.record else {
                return Err(shape(line, "RECORD", "has no \"record\" object"));
            };
            Ok(Message::Record(RecordMessage {
                stream,
                record,
                time_extracted: envelope.time_extracted.map(|Text(text)| text),
                version: envelope.version,
            }))
        }
        "SCHEMA" => {
            let stream = stream("SCHEMA")?.into_owned();
            let no_schema = || shape(line, "SCHEMA", "has no \"schema\" object");
            let raw = envelope.schema.ok_or_else(no_schema)?;
            let schema: Value = serde_json::from_str(raw.get()).map_err(|_| no_schema())?;
            if !schema.is_object() {
                return Err(no_schema());
            }
            let property_order = serde_json::from_str::<OrderedSchema<'_>>(raw.get())
                .ok()
                .and_then(|ordered| ordered.properties)
                .map(|Fields(fields)| {
                    fields
                        .into_iter()
                        .map(|(name, _)| name.into_owned())
                        .collect()
                })
                .unwrap_or_default();
            Ok(Message::Schema(SchemaMessage {
                stream,
                schema,
                property_order,
                key_properties: envelope.key_properties.unwrap_or_default(),
                bookmark_properties: envelope.bookmark_properties.unwrap_or_default(),
            }))
        }
        "STATE" => match envelope.value {
            Some(value) => Ok(Message::State(value)),
            None => Err(shape(line, "STATE", "has no \"value\"")),
        },
        "ACTIVATE_VERSION" => Ok(Message::ActivateVersion {
            stream: stream("ACTIVATE_VERSION")?.into_owned(),
            version: envelope.version,
        }),
        other => Err(SingerError::UnknownType {
            line,
            kind: other.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_keeps_every_digit_and_borrows_its_fields() {
        let line = r#"{"type": "RECORD", "stream": "public-orders", "record": {"id": 1, "amount": 0.07, "big": 12345678901234567890.123456789012345678, "note": "a\tb", "tags": [1, {"x": null}]}, "time_extracted": "2024-01-01T00:00:00+00:00", "version": 3}"#;
        let Message::Record(record) = parse_line(line, 7).unwrap() else {
            panic!("expected a RECORD")
        };
        assert_eq!(record.stream, "public-orders");
        let values: Vec<(&str, &str)> = record
            .record
            .iter()
            .map(|(name, value)| (name.as_ref(), value.get()))
            .collect();
        assert_eq!(
            values,
            vec![
                ("id", "1"),
                ("amount", "0.07"),
                ("big", "12345678901234567890.123456789012345678"),
                ("note", r#""a\tb""#),
                ("tags", r#"[1, {"x": null}]"#),
            ]
        );
        assert!(matches!(record.stream, Cow::Borrowed(_)));
        assert_eq!(
            record.time_extracted.as_deref(),
            Some("2024-01-01T00:00:00+00:00")
        );
        assert_eq!(record.version.map(RawValue::get), Some("3"));
    }

    #[test]
    fn schema_state_and_activate_version() {
        let line = r#"{"type":"SCHEMA","stream":"s","schema":{"properties":{"id":{"type":"integer"}}},"key_properties":["id"],"bookmark_properties":["lsn"]}"#;
        let Message::Schema(schema) = parse_line(line, 1).unwrap() else {
            panic!("expected a SCHEMA")
        };
        assert_eq!(schema.key_properties, vec!["id"]);
        let ordered = r#"{"type":"SCHEMA","stream":"s","schema":{"properties":{"z":{},"a":{},"m":{}}},"key_properties":[]}"#;
        let Message::Schema(ordered) = parse_line(ordered, 1).unwrap() else {
            panic!("expected a SCHEMA")
        };
        assert_eq!(ordered.property_order, vec!["z", "a", "m"]);
        assert_eq!(schema.bookmark_properties, vec!["lsn"]);
        let Message::State(value) = parse_line(
            r#"{"type":"STATE","value":{"bookmarks":{"s":{"lsn":5}}}}"#,
            2,
        )
        .unwrap() else {
            panic!("expected a STATE")
        };
        assert_eq!(value.get(), r#"{"bookmarks":{"s":{"lsn":5}}}"#);
        assert!(matches!(
            parse_line(r#"{"type":"ACTIVATE_VERSION","stream":"s","version":1}"#, 3).unwrap(),
            Message::ActivateVersion { .. }
        ));
    }

    #[test]
    fn bad_lines_name_their_line_number() {
        let cases = [
            ("not json", "line 4: not a JSON Singer message"),
            (
                r#"{"type":"RECORD","record":{}}"#,
                "line 4: RECORD message has no \"stream\"",
            ),
            (
                r#"{"type":"RECORD","stream":"s"}"#,
                "has no \"record\" object",
            ),
            (
                r#"{"type":"RECORD","stream":"s","record":[1]}"#,
                "line 4: not a JSON",
            ),
            (
                r#"{"type":"SCHEMA","stream":"s"}"#,
                "has no \"schema\" object",
            ),
            (r#"{"type":"STATE"}"#, "STATE message has no \"value\""),
            (
                r#"{"type":"BOOKMARK"}"#,
                "unknown Singer message type \"BOOKMARK\"",
            ),
            (r#"{"stream":"s"}"#, "has no \"type\""),
            ("[]", "line 4: not a JSON"),
        ];
        for (line, expected) in cases {
            let error = parse_line(line, 4).unwrap_err().to_string();
            assert!(error.contains(expected), "{line}: {error}");
        }
    }
}
