//! A row change in the form the streaming loop applies, whichever plugin decoded it: the new
//! image (a column left out is an unchanged TOASTed value) and the old key, as text.

use std::borrow::Cow;

use crate::decode::image::ImageValue;
use crate::decode::wal2json::{Action, Change, ColumnValue, Wal2JsonError};
use crate::pg::Lsn;

/// One column of a row image.
#[derive(Debug, Clone)]
pub struct Field<'c> {
    /// Column name.
    pub name: &'c str,
    /// Type as `format_type` spells it (empty when the plugin did not say); wal2json drops
    /// the quotes of a quoted name (`"char"` arrives as `char`), see [`same_type_spelling`].
    pub type_name: &'c str,
    /// The type's oid, when the plugin sent it (wal2json format 2).
    pub type_oid: Option<u32>,
    /// The value; `None` for SQL NULL.
    pub value: Option<FieldData<'c>>,
}

/// Whether a change's type spelling names the shape's type: the same text, or wal2json's form
/// of a quoted name (`format_type`'s `"char"` or `"Mixed_Case"` written without its quotes).
pub fn same_type_spelling(shape: &str, change: &str) -> bool {
    shape == change
        || (shape.len() == change.len() + 2
            && shape.starts_with('"')
            && shape.ends_with('"')
            && &shape[1..shape.len() - 1] == change)
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
    /// The key columns as the table had them when the change was made, when the plugin says
    /// (wal2json's `pk`, pgoutput's key flags): a key column renamed since is found by these.
    pub keys: Vec<&'c str>,
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
            keys: change.pk.iter().map(AsRef::as_ref).collect(),
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
            let text = column
                .text()
                .map_err(|detail| Wal2JsonError { lsn, detail })?;
            Ok(Field {
                name: column.name.as_ref(),
                type_name: column.type_name.as_ref(),
                type_oid: column.type_oid,
                value: text
                    .map(|text| postgres_text(column.type_name.as_ref(), text))
                    .map(FieldData::Text),
            })
        })
        .collect()
}

/// A wal2json value as PostgreSQL's text output: wal2json writes `bytea` (the type itself, not
/// a domain or an array of it) without its `\x` prefix, which `bytea`'s input needs back
/// (`ff` alone would be read as the two bytes `f` `f`).
fn postgres_text<'t>(type_name: &str, text: Cow<'t, str>) -> Cow<'t, str> {
    if type_name == "bytea" && !text.starts_with("\\x") {
        Cow::Owned(format!("\\x{text}"))
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal2json_bytea_gets_its_hex_prefix_back_and_other_values_stay() {
        assert_eq!(postgres_text("bytea", Cow::Borrowed("ff00")), "\\xff00");
        assert_eq!(postgres_text("bytea", Cow::Borrowed("")), "\\x");
        assert_eq!(
            postgres_text("bytea[]", Cow::Borrowed("{\"\\\\xff\"}")),
            "{\"\\\\xff\"}"
        );
        assert_eq!(postgres_text("text", Cow::Borrowed("ff")), "ff");
    }

    #[test]
    fn a_quoted_type_name_is_the_same_type_as_wal2json_spells_it() {
        assert!(same_type_spelling("\"char\"", "char"));
        assert!(same_type_spelling("\"wal2json_Type\"", "wal2json_Type"));
        assert!(same_type_spelling("integer", "integer"));
        assert!(!same_type_spelling("character(1)", "char"));
        assert!(!same_type_spelling("\"a\"", "b"));
    }
}
