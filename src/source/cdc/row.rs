//! A row change in the form the streaming loop applies, whichever plugin decoded it: the new
//! image (a column left out is an unchanged TOASTed value) and the old key, as text.

use std::borrow::Cow;

use crate::decode::wal2json::{Action, Change, ColumnValue, Wal2JsonError};
use crate::gdn::document::ImageValue;
use crate::pg::Lsn;

/// One column of a row image.
#[derive(Debug, Clone)]
pub struct Field<'c> {
    /// Column name.
    pub name: &'c str,
    /// Type as `format_type` spells it (empty when the plugin did not say).
    pub type_name: &'c str,
    /// The value; `None` for SQL NULL.
    pub value: Option<FieldData<'c>>,
}

/// A value as the plugin sent it.
#[derive(Debug, Clone)]
pub enum FieldData<'c> {
    /// PostgreSQL's text output.
    Text(Cow<'c, str>),
    /// The type's binary send form (pgoutput with `binary`).
    Binary(&'c [u8]),
}

/// An INSERT, UPDATE or DELETE of one row.
#[derive(Debug, Clone)]
pub struct RowChange<'c> {
    /// `Insert`, `Update` or `Delete`.
    pub action: Action,
    /// The table's schema.
    pub schema: &'c str,
    /// The table.
    pub table: &'c str,
    /// The new image (INSERT, UPDATE), without unchanged TOASTed columns.
    pub columns: Vec<Field<'c>>,
    /// The old key or row (DELETE; UPDATE when the key changed or identity is FULL).
    pub identity: Vec<Field<'c>>,
}

impl<'c> RowChange<'c> {
    /// The row change a wal2json message describes (`None` for other actions).
    pub fn from_wal2json(
        change: &'c Change<'_>,
        lsn: Lsn,
    ) -> Result<Option<RowChange<'c>>, Wal2JsonError> {
        if !matches!(
            change.action,
            Action::Insert | Action::Update | Action::Delete
        ) {
            return Ok(None);
        }
        let (Some(schema), Some(table)) = (change.schema.as_deref(), change.table.as_deref())
        else {
            return Err(Wal2JsonError {
                lsn,
                detail: "a row change without schema or table".into(),
            });
        };
        Ok(Some(RowChange {
            action: change.action,
            schema,
            table,
            columns: fields(&change.columns, lsn)?,
            identity: fields(&change.identity, lsn)?,
        }))
    }

    /// The new image as `(column, value)` pairs, for a document plan.
    pub fn column_pairs(&self) -> Vec<(&str, Option<ImageValue<'_>>)> {
        pairs(&self.columns)
    }

    /// The old key as `(column, value)` pairs.
    pub fn identity_pairs(&self) -> Vec<(&str, Option<ImageValue<'_>>)> {
        pairs(&self.identity)
    }
}

fn pairs<'a>(fields: &'a [Field<'_>]) -> Vec<(&'a str, Option<ImageValue<'a>>)> {
    fields
        .iter()
        .map(|field| {
            let value = field.value.as_ref().map(|value| match value {
                FieldData::Text(text) => ImageValue::Text(text),
                FieldData::Binary(bytes) => ImageValue::Binary(bytes),
            });
            (field.name, value)
        })
        .collect()
}

fn fields<'c>(columns: &'c [ColumnValue<'_>], lsn: Lsn) -> Result<Vec<Field<'c>>, Wal2JsonError> {
    columns
        .iter()
        .map(|column| {
            Ok(Field {
                name: column.name.as_ref(),
                type_name: column.type_name.as_ref(),
                value: column
                    .text()
                    .map_err(|detail| Wal2JsonError { lsn, detail })?
                    .map(FieldData::Text),
            })
        })
        .collect()
}
