//! A row change in the form the streaming loop applies, whichever plugin decoded it: the new
//! image (a column left out is an unchanged TOASTed value) and the old key, as text.

use std::borrow::Cow;

use crate::decode::wal2json::{Action, Change, ColumnValue, Wal2JsonError};
use crate::pg::Lsn;

/// One column of a row image.
#[derive(Debug, Clone)]
pub struct Field<'c> {
    /// Column name.
    pub name: &'c str,
    /// Type as `format_type` spells it (empty when the plugin did not say).
    pub type_name: &'c str,
    /// PostgreSQL's text output of the value; `None` for SQL NULL.
    pub text: Option<Cow<'c, str>>,
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

    /// The new image as `(column, text)` pairs, for a document plan.
    pub fn column_pairs(&self) -> Vec<(&str, Option<&str>)> {
        pairs(&self.columns)
    }

    /// The old key as `(column, text)` pairs.
    pub fn identity_pairs(&self) -> Vec<(&str, Option<&str>)> {
        pairs(&self.identity)
    }
}

fn pairs<'a>(fields: &'a [Field<'_>]) -> Vec<(&'a str, Option<&'a str>)> {
    fields
        .iter()
        .map(|field| (field.name, field.text.as_deref()))
        .collect()
}

fn fields<'c>(columns: &'c [ColumnValue<'_>], lsn: Lsn) -> Result<Vec<Field<'c>>, Wal2JsonError> {
    columns
        .iter()
        .map(|column| {
            Ok(Field {
                name: column.name.as_ref(),
                type_name: column.type_name.as_ref(),
                text: column
                    .text()
                    .map_err(|detail| Wal2JsonError { lsn, detail })?,
            })
        })
        .collect()
}
