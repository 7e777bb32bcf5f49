//! Per-stream buffers of encoded rows, deduplicated by key: the last record of a key wins.
//!
//! A record is encoded into COPY text as soon as it arrives (the stream's columns cannot change
//! while rows are pending: a new SCHEMA flushes first), so a batch is one byte buffer plus a
//! small index per row. A later record for the same key marks the earlier one dead, so the
//! loaded batch has each key once — which `INSERT … ON CONFLICT DO UPDATE` requires.

use std::collections::HashMap;

use serde_json::value::RawValue;

use crate::singer::target_postgres::copy_binary::is_timestamptz;
use crate::singer::target_postgres::copy_encode::{
    encode_value, json_kind, push_escaped, validate_value, EncodeError, JsonKind,
};
use crate::singer::target_postgres::schema::{StreamSchema, ValueKind, FLATTEN_SEPARATOR};
use crate::singer::{object_fields, RecordMessage};

/// Whether a record is a delete (non-null `_sdc_deleted_at`) that carries nothing but its key
/// and `_sdc_*` metadata, as log-based taps send deletes.
fn is_key_only_delete(schema: &StreamSchema, record: &RecordMessage<'_>) -> bool {
    let mut delete = false;
    for (name, value) in &record.record {
        if name == "_sdc_deleted_at" {
            delete = json_kind(value.get()) != JsonKind::Null;
        } else if !name.starts_with("_sdc_")
            && !schema
                .key
                .iter()
                .any(|&index| schema.columns[index].property == name.as_ref())
        {
            return false;
        }
    }
    delete
}

/// The JSON a string holds, for a `jsonb` column whose schema does not allow strings: older
/// taps sent json/jsonb values dumped to strings (`"[]"`), and the old target's COPY stored
/// the JSON they hold; a string that holds no JSON stays a JSON string.
fn json_in_string(
    column: &crate::singer::target_postgres::schema::Column,
    raw: &str,
) -> Option<String> {
    if column.pg_type != crate::singer::target_postgres::schema::PgType::Jsonb
        || column.json_types.string
        || column.json_types.any
        || json_kind(raw) != JsonKind::String
    {
        return None;
    }
    let contents = crate::singer::target_postgres::copy_encode::string_contents(raw).ok()?;
    serde_json::from_str::<&RawValue>(&contents).ok()?;
    Some(contents.into_owned())
}

/// Whether a JSON value is a string PostgreSQL reads as a `timestamptz` instant (checked
/// conservatively: ISO 8601 with or without an offset).
fn is_timestamp_value(raw: &str) -> bool {
    crate::singer::target_postgres::copy_encode::string_contents(raw)
        .is_ok_and(|text| is_timestamp_text(&text))
}

/// Whether text reads as a `timestamptz` instant (ISO 8601, with or without an offset; a
/// fraction past microseconds, which PostgreSQL rounds, is checked by its first six digits).
fn is_timestamp_text(text: &str) -> bool {
    let text = text.trim();
    let shortened;
    let text = match text.find('.') {
        Some(dot) => {
            let digits = text[dot + 1..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            if digits > 6 {
                shortened = format!("{}{}", &text[..dot + 7], &text[dot + 1 + digits..]);
                shortened.as_str()
            } else {
                text
            }
        }
        None => text,
    };
    is_timestamptz(text) || is_timestamptz(&format!("{text}+00:00"))
}

/// Why a record cannot be buffered; the caller adds the line and stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    /// A value does not fit its column.
    #[error("column {column:?}: {source}")]
    Value {
        /// The property.
        column: String,
        /// Why.
        source: EncodeError,
    },
    /// A key column is missing or null.
    #[error("key column {column:?} is missing or null\nHINT: every record of a stream with key_properties must carry its key")]
    NullKey {
        /// The key property.
        column: String,
    },
    /// A property listed in `required` is missing (with `validate_records`).
    #[error("column {column:?}: required by the schema but missing from the record")]
    Required {
        /// The property.
        column: String,
    },
}

#[derive(Debug, Clone, Copy)]
struct PendingRow {
    start: usize,
    end: usize,
    line: u64,
    live: bool,
    deleted: bool,
}

/// Puts the nested fields of `value` (a flattened object property) into their columns,
/// recursing while the names continue to be flattened (`parent__child__grandchild`).
fn place_nested<'a>(
    schema: &StreamSchema,
    prefix: &str,
    value: &'a RawValue,
    values: &mut [Option<&'a RawValue>],
) {
    let Some(fields) = object_fields(value) else {
        // null (or a non-object) leaves every nested column NULL.
        return;
    };
    for (name, nested) in fields {
        let flat = format!("{prefix}{FLATTEN_SEPARATOR}{name}");
        if let Some(&column) = schema.by_property.get(&flat) {
            values[column] = Some(nested);
        } else {
            let deeper = format!("{flat}{FLATTEN_SEPARATOR}");
            if schema
                .by_property
                .keys()
                .any(|key| key.starts_with(&deeper))
            {
                place_nested(schema, &flat, nested, values);
            }
        }
    }
}

/// What [`StreamBatch::push`] did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Encoded and buffered.
    Buffered,
    /// A delete for a table without `_sdc_deleted_at`: not buffered (see `push`).
    DeleteWithoutColumn,
}

/// One live row of a batch, as loaded.
#[derive(Debug, Clone, Copy)]
pub struct BatchRow<'a> {
    /// The COPY text line, with its newline.
    pub data: &'a [u8],
    /// The input line it came from.
    pub line: u64,
    /// Whether the record had a non-null `_sdc_deleted_at`.
    pub deleted: bool,
}

/// The pending rows of one stream.
#[derive(Debug, Default)]
pub struct StreamBatch {
    data: Vec<u8>,
    rows: Vec<PendingRow>,
    by_key: HashMap<Box<[u8]>, usize>,
    live: usize,
    live_deletes: usize,
    first_seq: Option<u64>,
    /// Metadata columns (`_sdc_deleted_at`, `_sdc_extracted_at`) given a value that is not a
    /// timestamp in this batch.
    metadata_not_timestamp: Vec<usize>,
    key_scratch: Vec<u8>,
    fields: Vec<(usize, usize, usize)>,
}

impl StreamBatch {
    /// Records buffered since the last load (including superseded ones).
    pub fn received(&self) -> usize {
        self.rows.len()
    }

    /// Rows that will be loaded.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Live rows that are deletes.
    pub fn live_deletes(&self) -> usize {
        self.live_deletes
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The global sequence number of the oldest pending record.
    pub fn first_seq(&self) -> Option<u64> {
        self.first_seq
    }

    /// Input lines of the first and last pending record.
    pub fn line_range(&self) -> (u64, u64) {
        (
            self.rows.first().map_or(0, |row| row.line),
            self.rows.last().map_or(0, |row| row.line),
        )
    }

    /// Bytes of encoded rows held.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// The live rows in arrival order.
    pub fn rows(&self) -> impl Iterator<Item = BatchRow<'_>> + '_ {
        self.rows.iter().filter(|row| row.live).map(|row| BatchRow {
            data: &self.data[row.start..row.end],
            line: row.line,
            deleted: row.deleted,
        })
    }

    /// The live rows' bytes as few slices of at most about `max` bytes (adjacent rows joined).
    pub fn chunks(&self, max: usize) -> Vec<&[u8]> {
        let mut chunks = Vec::new();
        let mut span: Option<(usize, usize)> = None;
        for row in self.rows.iter().filter(|row| row.live) {
            span = match span {
                Some((start, end)) if end == row.start && end - start < max => {
                    Some((start, row.end))
                }
                Some((start, end)) => {
                    chunks.push(&self.data[start..end]);
                    Some((row.start, row.end))
                }
                None => Some((row.start, row.end)),
            };
        }
        if let Some((start, end)) = span {
            chunks.push(&self.data[start..end]);
        }
        chunks
    }

    /// The metadata columns (by position) given a value in this batch that would not parse as
    /// a timestamp: the old target stored any value there and took any non-null
    /// `_sdc_deleted_at` as a delete (tap-mysql sent `…+00:00+00:00`), so such a column must
    /// become text before this batch loads, never stop the run.
    pub fn metadata_not_timestamp(&self) -> &[usize] {
        &self.metadata_not_timestamp
    }

    fn flag_not_timestamp(&mut self, position: usize) {
        if !self.metadata_not_timestamp.contains(&position) {
            self.metadata_not_timestamp.push(position);
        }
    }

    /// Forgets every row (after a load committed).
    pub fn clear(&mut self) {
        self.metadata_not_timestamp.clear();
        self.data.clear();
        self.rows.clear();
        self.by_key.clear();
        self.live = 0;
        self.live_deletes = 0;
        self.first_seq = None;
    }

    /// Encodes `record` (input line `line`, global sequence `seq`) as one COPY row of the
    /// stream's columns. `batched_at` fills `_sdc_batched_at`. With `keep_on_delete` (no
    /// `hard_delete`), a delete replacing a pending row keeps that row's values where it has none.
    ///
    /// A delete (non-null `_sdc_deleted_at`) for a table without that column is loaded as the
    /// old target loaded it, an upsert of its values, when it carries values besides its key;
    /// one that carries only its key has nothing to load (its key alone would blank the row):
    /// it is not buffered and [`Pushed::DeleteWithoutColumn`] says so, for the caller to report.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        schema: &StreamSchema,
        record: &RecordMessage<'_>,
        line: u64,
        seq: u64,
        validate: bool,
        keep_on_delete: bool,
        batched_at: &str,
    ) -> Result<Pushed, RowError> {
        if schema.deleted_at.is_none() && is_key_only_delete(schema, record) {
            return Ok(Pushed::DeleteWithoutColumn);
        }
        let mut values: Vec<Option<&RawValue>> = vec![None; schema.columns.len()];
        for (property, value) in &record.record {
            if let Some(&column) = schema.by_property.get(property.as_ref()) {
                values[column] = Some(&**value);
            } else if !schema.flattened.is_empty()
                && schema.flattened.iter().any(|name| name == property)
            {
                place_nested(schema, property, value, &mut values);
            }
        }
        let start = self.data.len();
        let result = self.encode(schema, record, &values, validate, batched_at);
        let deleted = match result {
            Ok(deleted) => deleted,
            Err(error) => {
                self.data.truncate(start);
                return Err(error);
            }
        };
        let index = self.rows.len();
        self.rows.push(PendingRow {
            start,
            end: self.data.len(),
            line,
            live: true,
            deleted,
        });
        self.live += 1;
        self.live_deletes += usize::from(deleted);
        self.first_seq.get_or_insert(seq);
        if !schema.key.is_empty() {
            let key: Box<[u8]> = self.key_scratch.as_slice().into();
            if let Some(previous) = self.by_key.insert(key, index) {
                let row = self.rows[previous];
                self.rows[previous].live = false;
                self.live -= 1;
                self.live_deletes -= usize::from(row.deleted);
                if deleted && keep_on_delete {
                    self.coalesce_last_row(row.start, row.end);
                }
            }
        }
        Ok(Pushed::Buffered)
    }

    /// Replaces the last row's NULL fields with the fields of the row at `start..end`: a
    /// delete that carries only the key keeps the values of the row it follows, as the merge
    /// does for rows already in the table.
    fn coalesce_last_row(&mut self, start: usize, end: usize) {
        let Some(last) = self.rows.last().copied() else {
            return;
        };
        let mut merged = Vec::with_capacity(last.end - last.start + end - start);
        let old = self.data[start..end.saturating_sub(1)].split(|&byte| byte == b'\t');
        let new = self.data[last.start..last.end.saturating_sub(1)].split(|&byte| byte == b'\t');
        for (index, (old, new)) in old.zip(new).enumerate() {
            if index > 0 {
                merged.push(b'\t');
            }
            merged.extend_from_slice(if new == b"\\N" { old } else { new });
        }
        merged.push(b'\n');
        self.data.truncate(last.start);
        self.data.extend_from_slice(&merged);
        if let Some(row) = self.rows.last_mut() {
            row.end = self.data.len();
        }
    }

    fn encode(
        &mut self,
        schema: &StreamSchema,
        record: &RecordMessage<'_>,
        values: &[Option<&RawValue>],
        validate: bool,
        batched_at: &str,
    ) -> Result<bool, RowError> {
        let mut deleted = false;
        self.key_scratch.clear();
        self.fields.clear();
        let row_start = self.data.len();
        for (position, column) in schema.columns.iter().enumerate() {
            if position > 0 {
                self.data.push(b'\t');
            }
            let field_start = self.data.len();
            let raw = values.get(position).copied().flatten();
            if Some(position) == schema.batched_at {
                self.data.extend_from_slice(batched_at.as_bytes());
            } else if Some(position) == schema.extracted_at && raw.is_none() {
                match &record.time_extracted {
                    Some(time) => {
                        if !is_timestamp_text(time) {
                            self.flag_not_timestamp(position);
                        }
                        push_escaped(&mut self.data, time.as_bytes());
                    }
                    None => self.data.extend_from_slice(b"\\N"),
                }
            } else {
                if validate {
                    if column.required && raw.is_none() {
                        return Err(RowError::Required {
                            column: column.property.clone(),
                        });
                    }
                    validate_value(raw, column).map_err(|source| RowError::Value {
                        column: column.property.clone(),
                        source,
                    })?;
                }
                match raw {
                    None => self.data.extend_from_slice(b"\\N"),
                    Some(raw) => {
                        let text = raw.get();
                        let mut kind = column.pg_type.kind();
                        if Some(position) == schema.deleted_at {
                            // Any non-null value marks a delete, as the old target read it;
                            // it is stored as text when it is not a timestamp.
                            deleted = json_kind(text) != JsonKind::Null;
                            if deleted && !is_timestamp_value(text) {
                                self.flag_not_timestamp(position);
                            }
                            kind = ValueKind::Text;
                        }
                        let unwrapped = json_in_string(column, text);
                        let text = unwrapped.as_deref().unwrap_or(text);
                        encode_value(&mut self.data, text, kind).map_err(|source| {
                            RowError::Value {
                                column: column.property.clone(),
                                source,
                            }
                        })?;
                    }
                }
            }
            if schema.key.contains(&position) {
                self.fields.push((
                    position,
                    field_start - row_start,
                    self.data.len() - row_start,
                ));
            }
        }
        // Fields hold no raw tab after escaping, so tab-joined key fields identify the key.
        for &position in &schema.key {
            let Some(&(_, start, end)) = self.fields.iter().find(|(at, _, _)| *at == position)
            else {
                continue;
            };
            let field = &self.data[row_start + start..row_start + end];
            if field == b"\\N" {
                self.fields.clear();
                return Err(RowError::NullKey {
                    column: schema.columns[position].property.clone(),
                });
            }
            self.key_scratch.extend_from_slice(field);
            self.key_scratch.push(b'\t');
        }
        self.fields.clear();
        self.data.push(b'\n');
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::singer::{parse_line, Message};

    fn schema() -> StreamSchema {
        let schema = serde_json::json!({"properties": {
            "id": {"type": "integer"}, "name": {"type": ["null", "string"]},
            "_sdc_deleted_at": {"type": ["null", "string"], "format": "date-time"}
        }});
        StreamSchema::new(
            &schema,
            &["id".into(), "name".into(), "_sdc_deleted_at".into()],
            &["id".to_owned()],
            false,
        )
        .unwrap()
    }

    fn push(batch: &mut StreamBatch, line: u64, text: &str) -> Result<Pushed, RowError> {
        let Message::Record(record) = parse_line(text, line).unwrap() else {
            panic!("not a record")
        };
        batch.push(&schema(), &record, line, line, false, true, "")
    }

    #[test]
    fn the_last_record_of_a_key_wins() {
        let mut batch = StreamBatch::default();
        push(
            &mut batch,
            1,
            r#"{"type":"RECORD","stream":"s","record":{"id":1,"name":"a"}}"#,
        )
        .unwrap();
        push(
            &mut batch,
            2,
            r#"{"type":"RECORD","stream":"s","record":{"id":2,"name":"b\tc"}}"#,
        )
        .unwrap();
        push(
            &mut batch,
            3,
            r#"{"type":"RECORD","stream":"s","record":{"name":"c","id":1}}"#,
        )
        .unwrap();
        push(&mut batch, 4, r#"{"type":"RECORD","stream":"s","record":{"id":2,"_sdc_deleted_at":"2024-01-01T00:00:00Z"}}"#).unwrap();
        assert_eq!(batch.received(), 4);
        assert_eq!(batch.live(), 2);
        assert_eq!(batch.live_deletes(), 1);
        let rows: Vec<(String, u64, bool)> = batch
            .rows()
            .map(|row| {
                (
                    String::from_utf8_lossy(row.data).into_owned(),
                    row.line,
                    row.deleted,
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                ("1\tc\t\\N\n".to_owned(), 3, false),
                ("2\tb\\tc\t2024-01-01T00:00:00Z\n".to_owned(), 4, true),
            ]
        );
        assert_eq!(batch.line_range(), (1, 4));
        assert_eq!(batch.first_seq(), Some(1));
        batch.clear();
        assert!(batch.is_empty());
    }

    #[test]
    fn a_bad_value_or_a_missing_key_leaves_the_batch_unchanged() {
        let mut batch = StreamBatch::default();
        push(
            &mut batch,
            1,
            r#"{"type":"RECORD","stream":"s","record":{"id":1}}"#,
        )
        .unwrap();
        let before = batch.bytes();
        let error = push(
            &mut batch,
            2,
            r#"{"type":"RECORD","stream":"s","record":{"id":"abc"}}"#,
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "column \"id\": expected an integer, got \"abc\""
        );
        let error = push(
            &mut batch,
            3,
            r#"{"type":"RECORD","stream":"s","record":{"name":"x"}}"#,
        )
        .unwrap_err();
        assert!(matches!(error, RowError::NullKey { .. }), "{error}");
        assert_eq!(batch.bytes(), before);
        assert_eq!(batch.live(), 1);
    }

    #[test]
    fn a_delete_without_a_deleted_at_column_is_not_buffered() {
        let schema = StreamSchema::new(
            &serde_json::json!({"properties": {"id": {"type": "integer"}, "name": {}}}),
            &[],
            &["id".to_owned()],
            false,
        )
        .unwrap();
        let mut batch = StreamBatch::default();
        let line = r#"{"type":"RECORD","stream":"s","record":{"id":1,"_sdc_deleted_at":"2024-01-01T00:00:00Z"}}"#;
        let Message::Record(record) = parse_line(line, 1).unwrap() else {
            panic!("not a record")
        };
        assert_eq!(
            batch.push(&schema, &record, 1, 1, false, true, ""),
            Ok(Pushed::DeleteWithoutColumn)
        );
        assert!(batch.is_empty());
    }

    #[test]
    fn a_delete_with_values_without_a_deleted_at_column_is_an_upsert_of_its_values() {
        let schema = StreamSchema::new(
            &serde_json::json!({"properties": {"id": {"type": "integer"}, "name": {}}}),
            &[],
            &["id".to_owned()],
            false,
        )
        .unwrap();
        let mut batch = StreamBatch::default();
        let line = r#"{"type":"RECORD","stream":"s","record":{"id":1,"name":"kept","_sdc_deleted_at":"2019-12-18T13:19:44+00:00+00:00"}}"#;
        let Message::Record(record) = parse_line(line, 1).unwrap() else {
            panic!("not a record")
        };
        assert_eq!(
            batch.push(&schema, &record, 1, 1, false, true, ""),
            Ok(Pushed::Buffered)
        );
        let rows: Vec<(Vec<u8>, bool)> = batch
            .rows()
            .map(|row| (row.data.to_vec(), row.deleted))
            .collect();
        assert_eq!(rows, vec![(b"1\tkept\n".to_vec(), false)]);
    }

    #[test]
    fn any_non_null_deleted_at_is_a_delete_and_non_timestamps_are_flagged() {
        let mut batch = StreamBatch::default();
        push(&mut batch, 1, r#"{"type":"RECORD","stream":"s","record":{"id":1,"_sdc_deleted_at":"2019-02-12T01:10:10.000000Z"}}"#).unwrap();
        push(&mut batch, 2, r#"{"type":"RECORD","stream":"s","record":{"id":2,"_sdc_deleted_at":"2019-02-10 02:00:00"}}"#).unwrap();
        assert!(
            batch.metadata_not_timestamp().is_empty(),
            "both are timestamps"
        );
        assert!(is_timestamp_text("2019-02-12T01:10:10.123456789Z"));
        assert!(is_timestamp_text("2019-02-12 01:10:10.5+05:30"));
        assert!(!is_timestamp_text("2019-02-12T01:10:10.5+05:30+00:00"));
        assert!(!is_timestamp_text("yesterday"));
        push(&mut batch, 3, r#"{"type":"RECORD","stream":"s","record":{"id":3,"_sdc_deleted_at":"2019-12-18T13:19:44+00:00+00:00"}}"#).unwrap();
        push(
            &mut batch,
            4,
            r#"{"type":"RECORD","stream":"s","record":{"id":4,"_sdc_deleted_at":true}}"#,
        )
        .unwrap();
        assert_eq!(batch.metadata_not_timestamp(), [2]);
        assert_eq!(batch.live_deletes(), 4);
        let last: Vec<&[u8]> = batch.rows().map(|row| row.data).collect();
        assert_eq!(last[2], b"3\t\\N\t2019-12-18T13:19:44+00:00+00:00\n");
        assert_eq!(last[3], b"4\t\\N\ttrue\n");
        batch.clear();
        assert!(batch.metadata_not_timestamp().is_empty());
    }
}

#[cfg(test)]
mod no_panic {
    use super::*;
    use crate::singer::{parse_line, Message};

    /// Mutates well-formed Singer lines byte by byte (deterministically) and feeds every result
    /// that parses through the encoder: errors are fine, panics are not.
    #[test]
    fn mutated_records_never_panic() {
        let schema = StreamSchema::flattened(
            &serde_json::json!({"properties": {
                "id": {"type": "integer"}, "n": {"type": ["null", "number"]},
                "b": {"type": "boolean"}, "t": {"type": "string", "format": "date-time"},
                "o": {"type": "object", "properties": {"x": {"type": "integer"}}},
                "j": {"type": ["object", "array"]}, "s": {"type": "string"},
                "_sdc_deleted_at": {"type": ["null", "string"]}
            }, "required": ["id"]}),
            &[],
            &["id".to_owned()],
            true,
            1,
        )
        .unwrap();
        let seeds = [
            r#"{"type":"RECORD","stream":"s","record":{"id":1,"n":1.5e3,"b":true,"t":"2024-01-01T00:00:00Z","o":{"x":2},"j":[1,{"a":"\u00e9\t"}],"s":"a\\b","_sdc_deleted_at":null}}"#,
            r#"{"type":"RECORD","stream":"s","record":{"id":"12","n":"NaN","b":"t","s":5,"_sdc_deleted_at":"2024"}}"#,
        ];
        let replacements = [
            b'"', b'{', b'}', b'[', b']', b',', b':', b'\\', b'0', b'e', b'-', b'.', b'n', b' ',
        ];
        let mut batch = StreamBatch::default();
        let mut seq = 0;
        for seed in seeds {
            for position in 0..seed.len() {
                for &byte in &replacements {
                    let mut bytes = seed.as_bytes().to_vec();
                    bytes[position] = byte;
                    let Ok(text) = String::from_utf8(bytes) else {
                        continue;
                    };
                    if let Ok(Message::Record(record)) = parse_line(&text, 1) {
                        seq += 1;
                        for (validate, keep) in [(false, true), (true, false)] {
                            let _ = batch.push(&schema, &record, 1, seq, validate, keep, "now");
                        }
                    }
                }
            }
        }
        assert!(batch.live() > 0, "some mutations still load");
        assert!(batch
            .chunks(1 << 10)
            .iter()
            .all(|chunk| chunk.ends_with(b"\n")));
    }
}
