//! PostgreSQL → PostgreSQL: both sides as rows of text. Each side is read with
//! `COPY (SELECT <the source's columns> …) TO STDOUT` under the session settings the copy uses
//! (`destination::postgres::read`, for both), so equal values print equal text; the target
//! has the source's column names and types. Under `hard_delete: false` rows marked
//! `_sdc_deleted_at` are left out: they are deleted rows.

use std::convert::Infallible;

use crate::destination::postgres::read::text_rows;
use crate::destination::{Place, ReadError, Written};
use crate::pg::catalog::Table;
use crate::pg::query::quote_identifier;
use crate::pg::ConnectOptions;
use crate::singer::target_postgres::naming::TableName;

use super::buckets::{hash128, shorten, AttributeDiff};
use super::contract::where_clause;
use super::documents::{not_connected, RowSink};
use super::error::{source, target, VerifyError};

/// One source table and its target table.
#[derive(Debug, Clone)]
pub struct TableUnit {
    /// The source table.
    pub table: Table,
    /// The target table.
    pub target: TableName,
    /// Deleted rows are marked (`hard_delete: false`), not removed.
    pub soft_delete: bool,
    /// The publications' row filter: the rows the pipeline carries, when not all.
    pub row_filter: Option<String>,
}

impl TableUnit {
    fn columns(&self) -> String {
        self.table
            .columns
            .iter()
            .map(|column| quote_identifier(&column.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn key_indexes(&self) -> Vec<usize> {
        self.table
            .key_columns
            .iter()
            .filter_map(|key| {
                self.table
                    .columns
                    .iter()
                    .position(|column| &column.name == key)
            })
            .collect()
    }

    /// Streams the source table's rows into `sink`; returns how many.
    pub async fn source(
        &self,
        options: &ConnectOptions,
        sink: RowSink<'_>,
    ) -> Result<u64, VerifyError> {
        let name = self.table.qualified_name();
        let sql = format!(
            "SELECT {} FROM {name}{}",
            self.columns(),
            where_clause(self.row_filter.as_deref())
        );
        let mut keyed = Keyed::new(self.key_indexes(), sink);
        text_rows(options, &sql, |line| keyed.row(line))
            .await
            .map_err(|error| source(format!("reading {name}"))(error))
    }

    /// Streams the target table's live rows into `sink` (a missing table has none);
    /// returns how many.
    pub async fn destination(
        &self,
        destination: &Written,
        sink: RowSink<'_>,
    ) -> Result<u64, VerifyError> {
        let mut keyed = Keyed::new(self.key_indexes(), sink);
        let columns = self.columns();
        let place = Place::Table {
            table: &self.target,
            columns: &columns,
            soft_delete: self.soft_delete,
        };
        let read = destination
            .read(place, |line| {
                keyed.row(line);
                Ok::<(), Infallible>(())
            })
            .await;
        read.map_err(|error| match error {
            ReadError::Postgres(error) => target(format!("reading {}", self.target))(error),
            ReadError::Reader(never) => match never {},
            ReadError::Gdn(_) | ReadError::Elsewhere => not_connected(),
        })
    }
}

/// Hands text rows to a sink keyed by the fields at `keys` joined by a tab (a tab inside a
/// value is escaped by COPY, so keys stay apart); keyless rows go without a key.
struct Keyed<'s> {
    keys: Vec<usize>,
    key: String,
    sink: RowSink<'s>,
}

impl<'s> Keyed<'s> {
    fn new(keys: Vec<usize>, sink: RowSink<'s>) -> Keyed<'s> {
        Keyed {
            keys,
            key: String::new(),
            sink,
        }
    }

    fn row(&mut self, line: &[u8]) {
        if self.keys.is_empty() {
            (self.sink)(None, hash128(line), line);
            return;
        }
        self.key.clear();
        let fields: Vec<&[u8]> = line.split(|&byte| byte == b'\t').collect();
        for (position, &index) in self.keys.iter().enumerate() {
            if position > 0 {
                self.key.push('\t');
            }
            self.key.push_str(&String::from_utf8_lossy(
                fields.get(index).copied().unwrap_or_default(),
            ));
        }
        (self.sink)(Some(&self.key), hash128(line), line);
    }
}

/// How a row's key reads in a report: the key columns' text joined by `, `.
pub fn display_key(key: &str) -> String {
    key.replace('\t', ", ")
}

/// The columns two text rows disagree on, values shortened (`\N` is NULL).
pub fn describe(columns: &[String], source: &[u8], destination: &[u8]) -> Vec<AttributeDiff> {
    let split = |line: &[u8]| -> Vec<String> {
        line.split(|&byte| byte == b'\t')
            .map(|field| String::from_utf8_lossy(field).into_owned())
            .collect()
    };
    let (left, right) = (split(source), split(destination));
    columns
        .iter()
        .enumerate()
        .filter(|(index, _)| left.get(*index) != right.get(*index))
        .map(|(index, name)| AttributeDiff {
            name: name.clone(),
            source: left.get(index).map(|value| shorten(value)),
            destination: right.get(index).map(|value| shorten(value)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_names_the_columns_that_differ() {
        let columns = vec!["id".to_owned(), "a".to_owned(), "b".to_owned()];
        let diff = describe(&columns, b"1\tx\t\\N", b"1\ty\t2");
        let names: Vec<&str> = diff.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(diff[1].source.as_deref(), Some("\\N"));
        assert_eq!(display_key("1\tb"), "1, b");
    }
}
