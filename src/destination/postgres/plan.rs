//! Row images of a replicated table in the form the streaming loop coalesces: a JSON object of
//! column → PostgreSQL text value (or null), and a key that is the JSON array of the key
//! columns' text values. Pure: no I/O.
//!
//! The coalescing of pending changes (last write wins, partial updates merged, key moves) works
//! on JSON objects and string keys; giving it these lets PostgreSQL → PostgreSQL share it with
//! PostgreSQL → GDN. Unlike a GDN `_key`, this key can be read back, which deletes need.

use crate::decode::image::ImageValue;

/// Why an image cannot become a row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// A key column is missing from the image (or is null).
    #[error("the change of {table} carries no value for its key column {column:?}\nHINT: the table needs a primary key or REPLICA IDENTITY USING INDEX on NOT NULL columns")]
    MissingKey {
        /// `schema.table` of the source.
        table: String,
        /// The key column.
        column: String,
    },
    /// A value came in binary form (the replica path asks for text).
    #[error("column {column:?} of {table} came as a binary value; PostgreSQL destinations read text values\nHINT: this is a bug in pgferry, please report it")]
    Binary {
        /// `schema.table` of the source.
        table: String,
        /// The column.
        column: String,
    },
    /// A pending key could not be read back (a bug: keys are written by this module).
    #[error("a pending key of {table} is not a JSON array of key values: {detail}")]
    BadKey {
        /// `schema.table` of the source.
        table: String,
        /// What was wrong.
        detail: String,
    },
}

/// How one source table's row images become replica rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaPlan {
    /// `schema.table` of the source, for errors.
    table: String,
    /// Column names in source order.
    columns: Vec<String>,
    /// Key column names, in key order.
    keys: Vec<String>,
}

/// A row image encoded for coalescing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRow {
    /// The key: a JSON array of the key columns' text values.
    pub key: String,
    /// Whether every column of the plan was present (else a partial update).
    pub complete: bool,
}

impl ReplicaPlan {
    /// A plan for `table` with `columns` and key columns `keys`.
    pub fn new(table: &str, columns: Vec<String>, keys: Vec<String>) -> ReplicaPlan {
        ReplicaPlan {
            table: table.to_owned(),
            columns,
            keys,
        }
    }

    /// The plan of a source table as the catalog (or a change's row shape) describes it.
    pub fn for_table(table: &crate::pg::catalog::Table) -> ReplicaPlan {
        ReplicaPlan::new(
            &table.qualified_name(),
            table
                .columns
                .iter()
                .map(|column| column.name.clone())
                .collect(),
            table.key_columns.clone(),
        )
    }

    /// The source table's column names, in catalog order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// `schema.table` of the source.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Writes the image as a JSON object `{column: text | null}` into `out`.
    pub fn encode_image(
        &self,
        image: &[(&str, Option<ImageValue<'_>>)],
        out: &mut Vec<u8>,
    ) -> Result<EncodedRow, ImageError> {
        out.push(b'{');
        for (index, (name, value)) in image.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            crate::decode::json_out::write_string(name, out);
            out.push(b':');
            match self.text(name, value)? {
                Some(text) => crate::decode::json_out::write_string(text, out),
                None => out.extend_from_slice(b"null"),
            }
        }
        out.push(b'}');
        let complete = self
            .columns
            .iter()
            .all(|column| image.iter().any(|(name, _)| name == column));
        Ok(EncodedRow {
            key: self.key_from_image(image)?,
            complete,
        })
    }

    /// The key of an image (new row or old identity).
    pub fn key_from_image(
        &self,
        image: &[(&str, Option<ImageValue<'_>>)],
    ) -> Result<String, ImageError> {
        let mut key = Vec::with_capacity(32);
        key.push(b'[');
        for (index, column) in self.keys.iter().enumerate() {
            let value = image
                .iter()
                .find(|(name, _)| name == column)
                .and_then(|(name, value)| self.text(name, value).transpose())
                .transpose()?
                .ok_or_else(|| ImageError::MissingKey {
                    table: self.table.clone(),
                    column: column.clone(),
                })?;
            if index > 0 {
                key.push(b',');
            }
            crate::decode::json_out::write_string(value, &mut key);
        }
        key.push(b']');
        // Built from `&str` pieces and JSON punctuation only.
        String::from_utf8(key).map_err(|error| ImageError::BadKey {
            table: self.table.clone(),
            detail: error.to_string(),
        })
    }

    /// The key columns' text values of a key made by [`ReplicaPlan::key_from_image`].
    pub fn key_values(&self, key: &str) -> Result<Vec<String>, ImageError> {
        key_values(&self.table, key, self.keys.len())
    }

    fn text<'v>(
        &self,
        name: &str,
        value: &'v Option<ImageValue<'_>>,
    ) -> Result<Option<&'v str>, ImageError> {
        match value {
            None => Ok(None),
            Some(ImageValue::Text(text)) => Ok(Some(text)),
            Some(ImageValue::Binary(_)) => Err(ImageError::Binary {
                table: self.table.clone(),
                column: name.to_owned(),
            }),
        }
    }
}

/// The `count` key values of a key made by [`ReplicaPlan::key_from_image`] for `table`.
pub fn key_values(table: &str, key: &str, count: usize) -> Result<Vec<String>, ImageError> {
    let values: Vec<String> = serde_json::from_str(key).map_err(|error| ImageError::BadKey {
        table: table.to_owned(),
        detail: error.to_string(),
    })?;
    if values.len() != count {
        return Err(ImageError::BadKey {
            table: table.to_owned(),
            detail: format!("{} values for {count} key columns", values.len()),
        });
    }
    Ok(values)
}

/// Reads a row made by [`ReplicaPlan::encode_image`] (after coalescing) back into
/// `(column, text)` pairs.
pub fn decode_row(table: &str, row: &[u8]) -> Result<Vec<(String, Option<String>)>, ImageError> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(row).map_err(|error| ImageError::BadKey {
            table: table.to_owned(),
            detail: format!("pending row: {error}"),
        })?;
    object
        .into_iter()
        .map(|(name, value)| match value {
            serde_json::Value::Null => Ok((name, None)),
            serde_json::Value::String(text) => Ok((name, Some(text))),
            other => Err(ImageError::BadKey {
                table: table.to_owned(),
                detail: format!("pending value of {name:?} is {other}, not text"),
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> ReplicaPlan {
        ReplicaPlan::new(
            "public.t",
            vec!["id".into(), "region".into(), "note".into()],
            vec!["region".into(), "id".into()],
        )
    }

    #[test]
    fn an_image_becomes_text_values_and_a_readable_key() {
        let mut out = Vec::new();
        let encoded = plan()
            .encode_image(
                &[
                    ("id", Some(ImageValue::Text("7"))),
                    ("region", Some(ImageValue::Text("eu,\"west\""))),
                    ("note", None),
                ],
                &mut out,
            )
            .unwrap();
        assert!(encoded.complete);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            r#"{"id":"7","region":"eu,\"west\"","note":null}"#
        );
        assert_eq!(
            plan().key_values(&encoded.key).unwrap(),
            vec!["eu,\"west\"".to_owned(), "7".to_owned()],
            "key values come back in key order, quotes and commas intact"
        );
        assert_eq!(
            decode_row("public.t", &out).unwrap(),
            vec![
                ("id".into(), Some("7".into())),
                ("note".into(), None),
                ("region".into(), Some("eu,\"west\"".into())),
            ],
            "columns come back by name (in name order)"
        );
    }

    #[test]
    fn partial_images_and_missing_keys() {
        let mut out = Vec::new();
        let encoded = plan()
            .encode_image(
                &[
                    ("id", Some(ImageValue::Text("7"))),
                    ("region", Some(ImageValue::Text("eu"))),
                ],
                &mut out,
            )
            .unwrap();
        assert!(!encoded.complete, "an unchanged TOASTed column is absent");
        let error = plan()
            .key_from_image(&[("id", Some(ImageValue::Text("7"))), ("region", None)])
            .unwrap_err();
        assert!(matches!(error, ImageError::MissingKey { ref column, .. } if column == "region"));
        let error = plan()
            .encode_image(&[("id", Some(ImageValue::Binary(b"\0")))], &mut out)
            .unwrap_err();
        assert!(matches!(error, ImageError::Binary { .. }));
        assert!(
            plan().key_values("[\"1\"]").is_err(),
            "one value for two key columns"
        );
    }

    #[test]
    fn different_keys_never_collide() {
        let key = |region: &str, id: &str| {
            plan()
                .key_from_image(&[
                    ("id", Some(ImageValue::Text(id))),
                    ("region", Some(ImageValue::Text(region))),
                ])
                .unwrap()
        };
        assert_ne!(key("a,b", "c"), key("a", "b,c"));
        assert_ne!(key("a\"", ""), key("a", "\""));
    }
}
