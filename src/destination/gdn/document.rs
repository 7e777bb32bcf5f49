//! Rows → GDN documents: `{"_key": …, "<attribute>": <value>, …}` as JSON bytes.
//!
//! A [`DocumentPlan`] is made once per table from the catalog: attribute names (reserved names
//! renamed), one codec per column, and which columns form the key. Encoding a row then writes
//! straight into a byte buffer: values go from the binary field to JSON text with no
//! intermediate tree, and the key is derived from the same decoded values.

use crate::decode::copy_binary::RowFields;
use crate::decode::text_value::from_text;
use crate::decode::value::{decode, TypeCodec, Value, ValueError};
use crate::gdn::keys::{document_attribute_names, DocumentKey};
use crate::pg::catalog::{NumericMode, Table};

/// Why a row could not become a document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// A field could not be decoded.
    #[error("table {table}, column {column:?}: {source}")]
    Value {
        /// `schema.table`.
        table: String,
        /// The column.
        column: String,
        /// The decoding error.
        source: ValueError,
    },
    /// A key column is NULL (possible with a replica identity index over nullable columns).
    #[error("table {table}: key column {column:?} is NULL, so the row has no document key")]
    NullKey {
        /// `schema.table`.
        table: String,
        /// The key column.
        column: String,
    },
    /// The table has no key: documents could not be updated or deleted later.
    #[error("table {table} has no primary key or replica identity index\nHINT: add a primary key, or ALTER TABLE {table} REPLICA IDENTITY USING INDEX <unique index on NOT NULL columns>;")]
    NoKey {
        /// `schema.table`.
        table: String,
    },
    /// A change names a column the plan does not know (added after the catalog was read).
    #[error("table {table}: column {column:?} is not in the catalog read at start")]
    UnknownColumn {
        /// `schema.table`.
        table: String,
        /// The column.
        column: String,
    },
    /// A change lacks a key column (e.g. an UPDATE whose key value was TOASTed and unchanged).
    #[error("table {table}: the change carries no value for key column {column:?}\nHINT: ALTER TABLE {table} REPLICA IDENTITY FULL; makes PostgreSQL log every column")]
    MissingKey {
        /// `schema.table`.
        table: String,
        /// The key column.
        column: String,
    },
    /// A binary value arrived for a column the codecs only read as text.
    #[error("table {table}, column {column:?}: its type has no binary decoder in pgferry, but the value arrived in binary form\nHINT: set \"pgoutput_binary\": false in the source config")]
    BinaryUnsupported {
        /// `schema.table`.
        table: String,
        /// The column.
        column: String,
    },
    /// The row has a different number of fields than the plan.
    #[error("table {table}: a row has {found} fields, expected {expected}")]
    Shape {
        /// `schema.table`.
        table: String,
        /// Fields in the row.
        found: usize,
        /// Fields planned.
        expected: usize,
    },
}

pub use crate::decode::image::ImageValue;

/// A document made from a logical-decoding row image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextDocument {
    /// Its key.
    pub key: DocumentKey,
    /// Whether every column was present (else it is a partial update: unchanged TOASTed
    /// columns are absent and must be kept, not nulled).
    pub complete: bool,
}

/// How one table's rows become documents.
#[derive(Debug, Clone)]
pub struct DocumentPlan {
    table: String,
    columns: Vec<String>,
    attributes: Vec<Vec<u8>>,
    codecs: Vec<TypeCodec>,
    text_cast: Vec<bool>,
    key_indexes: Vec<usize>,
    key_attribute_is_column: bool,
    /// Set when tables share a collection by request: their keys start with the table's name,
    /// so equal keys of two tables never name one document.
    key_prefix: Option<String>,
}

impl DocumentPlan {
    /// Plans `table`; tables without a key get an error unless `allow_keyless` (then GDN
    /// generates keys, which is only safe for whole-collection reloads).
    pub fn new(
        table: &Table,
        numeric_mode: NumericMode,
        allow_keyless: bool,
    ) -> Result<DocumentPlan, DocumentError> {
        let qualified = format!("{}.{}", table.schema, table.name);
        if table.key_columns.is_empty() && !allow_keyless {
            return Err(DocumentError::NoKey { table: qualified });
        }
        let columns: Vec<String> = table
            .columns
            .iter()
            .map(|column| column.name.clone())
            .collect();
        let attributes = document_attribute_names(&columns, &table.key_columns);
        let mut encoded = Vec::with_capacity(attributes.len());
        for attribute in &attributes {
            let mut quoted = Vec::with_capacity(attribute.len() + 3);
            crate::decode::json_out::write_string(attribute, &mut quoted);
            quoted.push(b':');
            encoded.push(quoted);
        }
        let (codecs, text_cast) = table
            .columns
            .iter()
            .map(|column| column.codec(numeric_mode))
            .unzip();
        let key_indexes = table
            .key_columns
            .iter()
            .filter_map(|key| columns.iter().position(|column| column == key))
            .collect();
        Ok(DocumentPlan {
            table: qualified,
            key_attribute_is_column: attributes.iter().any(|attribute| attribute == "_key"),
            columns,
            attributes: encoded,
            codecs,
            text_cast,
            key_indexes,
            key_prefix: None,
        })
    }

    /// The plan with keys prefixed by `prefix` (`schema.table`), for a collection several
    /// tables share: `_key` becomes `<prefix>:<key>` (each part percent-encoded as in a
    /// composite key).
    pub fn with_key_prefix(mut self, prefix: Option<String>) -> DocumentPlan {
        self.key_prefix = prefix;
        self
    }

    /// The key prefix, when tables share the collection.
    pub fn key_prefix(&self) -> Option<&str> {
        self.key_prefix.as_deref()
    }

    /// How this table's keys begin in a collection tables share (`<prefix>:`, percent-encoded
    /// as in a key), when they share one: keys longer than GDN allows are hashed and do not.
    pub fn key_start(&self) -> Option<String> {
        let prefix = self.key_prefix.as_ref()?;
        let probe = DocumentKey::derive(&[prefix.as_str(), "x"]);
        probe
            .as_str()
            .strip_suffix(":x")
            .map(|start| format!("{start}:"))
    }

    /// The key of a row from its key columns' text, with the prefix when there is one.
    pub fn key_of(&self, parts: Vec<String>) -> DocumentKey {
        self.derive_key(parts)
    }

    fn derive_key(&self, mut parts: Vec<String>) -> DocumentKey {
        if let Some(prefix) = &self.key_prefix {
            parts.insert(0, prefix.clone());
        }
        DocumentKey::derive(&parts)
    }

    /// The select list for the snapshot query: columns quoted, `::text` where needed.
    pub fn select_list(&self) -> String {
        self.columns
            .iter()
            .zip(&self.text_cast)
            .map(|(column, cast)| {
                let quoted = crate::pg::query::quote_identifier(column);
                if *cast {
                    format!("{quoted}::text")
                } else {
                    quoted
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Number of columns a row must have.
    pub fn width(&self) -> usize {
        self.columns.len()
    }

    /// Appends the row as a JSON document to `out`; returns its key (None for keyless tables).
    ///
    /// Values go straight from the binary field to JSON text; key columns are decoded once
    /// more for the key (no per-row buffer of values).
    pub fn encode<R: RowFields + ?Sized>(
        &self,
        row: &R,
        out: &mut Vec<u8>,
    ) -> Result<Option<DocumentKey>, DocumentError> {
        if row.field_count() != self.columns.len() {
            return Err(DocumentError::Shape {
                table: self.table.clone(),
                found: row.field_count(),
                expected: self.columns.len(),
            });
        }
        let key = match self.key_indexes.as_slice() {
            [] => None,
            [single] if self.key_prefix.is_none() => {
                Some(DocumentKey::derive(&[self.key_part(row, *single)?]))
            }
            several => {
                let parts = several
                    .iter()
                    .map(|&index| self.key_part(row, index))
                    .collect::<Result<Vec<_>, _>>()?;
                Some(self.derive_key(parts))
            }
        };
        let mark = out.len();
        out.push(b'{');
        let mut first = true;
        if let (Some(key), false) = (&key, self.key_attribute_is_column) {
            out.extend_from_slice(b"\"_key\":");
            crate::decode::json_out::write_string(key.as_str(), out);
            first = false;
        }
        for index in 0..self.columns.len() {
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&self.attributes[index]);
            if self.attributes[index] == b"\"_key\":" {
                if let Some(key) = &key {
                    // The table's own `_key` column is its key; write the derived (valid) key.
                    crate::decode::json_out::write_string(key.as_str(), out);
                    continue;
                }
            }
            match self.value(row, index) {
                Ok(value) => value.write_json(out),
                Err(error) => {
                    out.truncate(mark);
                    return Err(error);
                }
            }
        }
        out.push(b'}');
        Ok(key)
    }

    /// Appends the document of a row image of text or binary values (`(column, None)` is
    /// NULL; an absent column is left out and makes the document partial).
    pub fn encode_image(
        &self,
        image: &[(&str, Option<ImageValue<'_>>)],
        out: &mut Vec<u8>,
    ) -> Result<TextDocument, DocumentError> {
        let slots = self.slots(image)?;
        let key = self.key_from_slots(&slots)?;
        let mark = out.len();
        out.push(b'{');
        if !self.key_attribute_is_column {
            out.extend_from_slice(b"\"_key\":");
            crate::decode::json_out::write_string(key.as_str(), out);
        }
        let mut complete = true;
        for (index, slot) in slots.iter().enumerate() {
            let Some(raw) = slot else {
                complete = false;
                continue;
            };
            if out.len() > mark + 1 {
                out.push(b',');
            }
            out.extend_from_slice(&self.attributes[index]);
            if self.attributes[index] == b"\"_key\":" {
                crate::decode::json_out::write_string(key.as_str(), out);
                continue;
            }
            match raw {
                None => out.extend_from_slice(b"null"),
                Some(raw) => match self.image_value(index, *raw) {
                    Ok(value) => value.write_json(out),
                    Err(error) => {
                        out.truncate(mark);
                        return Err(error);
                    }
                },
            }
        }
        out.push(b'}');
        Ok(TextDocument { key, complete })
    }

    /// The key of an old-row identity (DELETE, or an UPDATE that changed the key), of text
    /// or binary values.
    pub fn key_from_image(
        &self,
        identity: &[(&str, Option<ImageValue<'_>>)],
    ) -> Result<DocumentKey, DocumentError> {
        let slots = self.slots(identity)?;
        self.key_from_slots(&slots)
    }

    /// Whether binary values of every column can be decoded (no column is read as `::text`
    /// in the snapshot for want of a binary codec).
    pub fn decodes_binary(&self) -> bool {
        !self.text_cast.iter().any(|cast| *cast)
    }

    fn image_value<'v>(
        &self,
        index: usize,
        raw: ImageValue<'v>,
    ) -> Result<Value<'v>, DocumentError> {
        let error = |source| DocumentError::Value {
            table: self.table.clone(),
            column: self.columns[index].clone(),
            source,
        };
        match raw {
            ImageValue::Text(text) => from_text(&self.codecs[index], text).map_err(error),
            ImageValue::Binary(bytes) => {
                if self.text_cast[index] {
                    return Err(DocumentError::BinaryUnsupported {
                        table: self.table.clone(),
                        column: self.columns[index].clone(),
                    });
                }
                decode(&self.codecs[index], bytes).map_err(error)
            }
        }
    }

    /// Whether the table has key columns (keyless tables cannot be streamed).
    pub fn has_key(&self) -> bool {
        !self.key_indexes.is_empty()
    }

    /// The table's column names, in catalog order (the order of its row images).
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The names of the columns the document key is made of.
    pub fn key_columns(&self) -> Vec<&str> {
        self.key_indexes
            .iter()
            .map(|&index| self.columns[index].as_str())
            .collect()
    }

    /// `schema.table`, for messages.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn slots<'t>(
        &self,
        image: &[(&str, Option<ImageValue<'t>>)],
    ) -> Result<Vec<Option<Option<ImageValue<'t>>>>, DocumentError> {
        let mut slots = vec![None; self.columns.len()];
        for (position, (name, text)) in image.iter().enumerate() {
            // Row images list columns in catalog order: try the same position first.
            let index = if self
                .columns
                .get(position)
                .is_some_and(|column| column == name)
            {
                Some(position)
            } else {
                self.columns.iter().position(|column| column == name)
            };
            let index = index.ok_or_else(|| DocumentError::UnknownColumn {
                table: self.table.clone(),
                column: (*name).to_owned(),
            })?;
            slots[index] = Some(*text);
        }
        Ok(slots)
    }

    fn key_from_slots(
        &self,
        slots: &[Option<Option<ImageValue<'_>>>],
    ) -> Result<DocumentKey, DocumentError> {
        if self.key_indexes.is_empty() {
            return Err(DocumentError::NoKey {
                table: self.table.clone(),
            });
        }
        let mut parts = Vec::with_capacity(self.key_indexes.len());
        for &index in &self.key_indexes {
            let raw = match slots[index] {
                Some(Some(raw)) => raw,
                Some(None) => {
                    return Err(DocumentError::NullKey {
                        table: self.table.clone(),
                        column: self.columns[index].clone(),
                    })
                }
                None => {
                    return Err(DocumentError::MissingKey {
                        table: self.table.clone(),
                        column: self.columns[index].clone(),
                    })
                }
            };
            let value = self.image_value(index, raw)?;
            parts.push(value.key_text().into_owned());
        }
        Ok(self.derive_key(parts))
    }

    fn value<'r, R: RowFields + ?Sized>(
        &self,
        row: &'r R,
        index: usize,
    ) -> Result<Value<'r>, DocumentError> {
        match row.field(index) {
            None => Ok(Value::Null),
            Some(raw) => decode(&self.codecs[index], raw).map_err(|source| DocumentError::Value {
                table: self.table.clone(),
                column: self.columns[index].clone(),
                source,
            }),
        }
    }

    /// The key text of key column `index`; NULL is an error (a document needs a key).
    fn key_part<R: RowFields + ?Sized>(
        &self,
        row: &R,
        index: usize,
    ) -> Result<String, DocumentError> {
        let value = self.value(row, index)?;
        if value == Value::Null {
            return Err(DocumentError::NullKey {
                table: self.table.clone(),
                column: self.columns[index].clone(),
            });
        }
        Ok(value.key_text().into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::catalog::{Column, KeySource, RelationKind, ReplicaIdentity, ResolvedType};
    use bytes::Bytes;

    fn column(name: &str, oid: u32, type_name: &str) -> Column {
        Column {
            name: name.into(),
            position: 1,
            type_name: type_name.into(),
            type_oid: oid,
            typmod: -1,
            not_null: false,
            resolved: ResolvedType::Scalar {
                oid,
                name: type_name.into(),
                kind: 'b',
                delimiter: ',',
            },
        }
    }

    fn table(columns: Vec<Column>, keys: &[&str]) -> Table {
        Table {
            oid: 1,
            schema: "public".into(),
            name: "t".into(),
            kind: RelationKind::Table,
            row_estimate: 0,
            size_bytes: 0,
            replica_identity: ReplicaIdentity::Default,
            columns,
            key_columns: keys.iter().map(|key| key.to_string()).collect(),
            key_source: if keys.is_empty() {
                KeySource::None
            } else {
                KeySource::PrimaryKey
            },
            identity_columns: Vec::new(),
        }
    }

    fn encode(
        plan: &DocumentPlan,
        row: Vec<Option<&'static [u8]>>,
    ) -> (String, Option<DocumentKey>) {
        let row: crate::decode::copy_binary::CopyRow = row
            .into_iter()
            .map(|field| field.map(Bytes::from_static))
            .collect();
        let mut out = Vec::new();
        let key = plan.encode(&row, &mut out).unwrap();
        (String::from_utf8(out).unwrap(), key)
    }

    #[test]
    fn rows_become_documents_with_a_key_and_renamed_reserved_columns() {
        let plan = DocumentPlan::new(
            &table(
                vec![
                    column("id", 23, "int4"),
                    column("_id", 25, "text"),
                    column("note", 25, "text"),
                ],
                &["id"],
            ),
            NumericMode::Auto,
            false,
        )
        .unwrap();
        let (json, key) = encode(&plan, vec![Some(&[0, 0, 0, 7]), Some(b"x"), None]);
        assert_eq!(json, r#"{"_key":"7","id":7,"__id":"x","note":null}"#);
        assert_eq!(key.unwrap().as_str(), "7");
    }

    #[test]
    fn a_key_column_named_key_is_the_documents_key() {
        let plan = DocumentPlan::new(
            &table(
                vec![column("_key", 25, "text"), column("v", 23, "int4")],
                &["_key"],
            ),
            NumericMode::Auto,
            false,
        )
        .unwrap();
        let (json, _) = encode(&plan, vec![Some(b"has space"), Some(&[0, 0, 0, 1])]);
        let sha = DocumentKey::derive(&["has space"]);
        assert_eq!(json, format!(r#"{{"_key":"{sha}","v":1}}"#));
    }

    #[test]
    fn composite_keys_and_unknown_types() {
        let plan = DocumentPlan::new(
            &table(
                vec![
                    column("a", 25, "text"),
                    column("b", 23, "int4"),
                    column("p", 600, "point"),
                ],
                &["a", "b"],
            ),
            NumericMode::Auto,
            false,
        )
        .unwrap();
        assert_eq!(plan.select_list(), "\"a\", \"b\", \"p\"::text");
        let (json, key) = encode(
            &plan,
            vec![Some(b"x:y"), Some(&[0, 0, 0, 2]), Some(b"(1,2)")],
        );
        assert_eq!(key.unwrap().as_str(), "x%3Ay:2");
        assert_eq!(json, r#"{"_key":"x%3Ay:2","a":"x:y","b":2,"p":"(1,2)"}"#);
    }

    #[test]
    fn keyless_tables_null_keys_and_bad_values_are_errors() {
        let keyless = table(vec![column("a", 25, "text")], &[]);
        let error = DocumentPlan::new(&keyless, NumericMode::Auto, false).unwrap_err();
        assert!(error.to_string().contains("REPLICA IDENTITY"), "{error}");
        let plan = DocumentPlan::new(&keyless, NumericMode::Auto, true).unwrap();
        assert_eq!(
            encode(&plan, vec![Some(b"v")]),
            (r#"{"a":"v"}"#.to_string(), None)
        );
        let keyed = DocumentPlan::new(
            &table(vec![column("id", 23, "int4")], &["id"]),
            NumericMode::Auto,
            false,
        )
        .unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            keyed.encode(&vec![None], &mut out),
            Err(DocumentError::NullKey { .. })
        ));
        let error = keyed
            .encode(&vec![Some(Bytes::from_static(&[1, 2]))], &mut out)
            .unwrap_err();
        assert!(error.to_string().contains("column \"id\""), "{error}");
        assert!(matches!(
            keyed.encode(&vec![], &mut out),
            Err(DocumentError::Shape { .. })
        ));
    }
}
