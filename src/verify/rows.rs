//! PostgreSQL → PostgreSQL: both sides as rows of text. Each side is read with
//! `COPY (SELECT <the source's columns> …) TO STDOUT` under the session settings the copy uses
//! ([`TEXT_SESSION`], and one TimeZone for both), so equal values print equal text; the target
//! has the source's column names and types. Under `hard_delete: false` rows marked
//! `_sdc_deleted_at` are left out: they are deleted rows.

use crate::destination::postgres::copy::TEXT_SESSION;
use crate::destination::postgres::sql::DELETED_AT;
use crate::pg::catalog::Table;
use crate::pg::query::quote_identifier;
use crate::pg::{ConnectOptions, Connection, PgError};
use crate::singer::target_postgres::naming::TableName;

use super::buckets::{hash128, shorten, AttributeDiff};
use super::contract::where_clause;
use super::documents::RowSink;
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
        stream(options, &sql, &self.key_indexes(), sink)
            .await
            .map_err(|error| source(format!("reading {name}"))(error))
    }

    /// Streams the target table's live rows into `sink` (a missing table has none);
    /// returns how many.
    pub async fn destination(
        &self,
        options: &ConnectOptions,
        sink: RowSink<'_>,
    ) -> Result<u64, VerifyError> {
        let name = self.target.quoted();
        let filter = if self.soft_delete {
            format!(" WHERE {} IS NULL", quote_identifier(DELETED_AT))
        } else {
            String::new()
        };
        let sql = format!("SELECT {} FROM {name}{filter}", self.columns());
        match stream(options, &sql, &self.key_indexes(), sink).await {
            // 42P01: the target table does not exist (yet): it holds no rows.
            Err(PgError::Server(error)) if error.code == "42P01" => Ok(0),
            outcome => outcome.map_err(|error| target(format!("reading {}", self.target))(error)),
        }
    }
}

/// Runs `COPY (sql) TO STDOUT` (text) and hands each row to `sink`, keyed by the fields at
/// `keys` joined by a tab (a tab inside a value is escaped by COPY, so keys stay apart).
async fn stream(
    options: &ConnectOptions,
    sql: &str,
    keys: &[usize],
    sink: RowSink<'_>,
) -> Result<u64, PgError> {
    let mut connection = Connection::connect(options).await?;
    connection.execute(TEXT_SESSION).await?;
    connection.execute("SET TimeZone = 'UTC'").await?;
    let mut copy = connection
        .copy_out(&format!("COPY ({sql}) TO STDOUT"))
        .await?;
    let mut rows = 0u64;
    let mut key = String::new();
    while let Some(data) = copy.next().await? {
        let line = data.strip_suffix(b"\n").unwrap_or(&data);
        rows += 1;
        if keys.is_empty() {
            sink(None, hash128(line), line);
            continue;
        }
        key.clear();
        let fields: Vec<&[u8]> = line.split(|&byte| byte == b'\t').collect();
        for (position, &index) in keys.iter().enumerate() {
            if position > 0 {
                key.push('\t');
            }
            key.push_str(&String::from_utf8_lossy(
                fields.get(index).copied().unwrap_or_default(),
            ));
        }
        sink(Some(&key), hash128(line), line);
    }
    connection.close().await;
    Ok(rows)
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
