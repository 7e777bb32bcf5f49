//! The simple query protocol: SQL text in, rows as text out.
//!
//! Used for catalog queries, session setup and replication commands (`IDENTIFY_SYSTEM`,
//! `CREATE_REPLICATION_SLOT`, …), whose results are small. Bulk data goes through COPY
//! (`copy.rs`) instead. After an error the connection reads on to ReadyForQuery, so it stays
//! usable.

use std::sync::Arc;

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use crate::pg::conn::{server_error, unexpected, Connection};
use crate::pg::error::PgError;

/// One result row, every value in PostgreSQL's text format (`None` for NULL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<Option<String>>,
}

impl Row {
    /// Column names, in order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The value at `index`, or `None` for NULL or a missing column.
    pub fn get(&self, index: usize) -> Option<&str> {
        self.values.get(index).and_then(|value| value.as_deref())
    }

    /// The first two values as text (empty for NULL): a catalog row of two names.
    pub fn pair(&self) -> (String, String) {
        (
            self.get(0).unwrap_or_default().to_owned(),
            self.get(1).unwrap_or_default().to_owned(),
        )
    }

    /// The value of the column called `name`, or `None` for NULL or an unknown column.
    pub fn get_named(&self, name: &str) -> Option<&str> {
        let index = self.columns.iter().position(|column| column == name)?;
        self.get(index)
    }

    /// All values, in column order.
    pub fn values(&self) -> &[Option<String>] {
        &self.values
    }
}

/// What one statement of a simple query returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatementResult {
    /// Rows, if the statement returns any.
    pub rows: Vec<Row>,
    /// The command tag, e.g. `INSERT 0 5`, `SELECT 3`.
    pub tag: String,
}

impl StatementResult {
    /// Rows affected or returned, from the command tag's last number.
    pub fn row_count(&self) -> u64 {
        self.tag
            .rsplit(' ')
            .next()
            .and_then(|count| count.parse().ok())
            .unwrap_or(0)
    }
}

impl Connection {
    /// Runs one or more `;`-separated statements; returns each statement's rows and tag.
    pub async fn simple_query_all(&mut self, sql: &str) -> Result<Vec<StatementResult>, PgError> {
        const DURING: &str = "running a query";
        self.check_usable()?;
        frontend::query(sql, &mut self.write_buf)
            .map_err(|error| PgError::protocol(DURING, error.to_string()))?;
        self.flush(DURING).await?;
        let mut results = Vec::new();
        let mut current = StatementResult::default();
        let mut columns: Option<Arc<[String]>> = None;
        let mut failure = None;
        loop {
            match self.read_message(DURING).await? {
                Message::RowDescription(body) => {
                    let names: Vec<String> = body
                        .fields()
                        .map(|field| Ok(field.name().to_owned()))
                        .collect()
                        .map_err(|error| PgError::protocol(DURING, error.to_string()))?;
                    columns = Some(names.into());
                }
                Message::DataRow(body) => {
                    let Some(columns) = &columns else {
                        return Err(PgError::protocol(DURING, "DataRow without RowDescription"));
                    };
                    let buffer = body.buffer();
                    let mut values = Vec::with_capacity(columns.len());
                    let mut ranges = body.ranges();
                    while let Some(range) = ranges.next().map_err(|error| {
                        PgError::protocol(DURING, format!("malformed DataRow: {error}"))
                    })? {
                        values.push(match range {
                            None => None,
                            Some(range) => Some(
                                std::str::from_utf8(&buffer[range])
                                    .map_err(|_| PgError::protocol(DURING, "a text value is not valid UTF-8 although client_encoding is UTF8"))?
                                    .to_owned(),
                            ),
                        });
                    }
                    if values.len() != columns.len() {
                        return Err(PgError::protocol(
                            DURING,
                            format!(
                                "DataRow has {} values for {} columns",
                                values.len(),
                                columns.len()
                            ),
                        ));
                    }
                    current.rows.push(Row {
                        columns: columns.clone(),
                        values,
                    });
                }
                Message::CommandComplete(body) => {
                    current.tag = body
                        .tag()
                        .map_err(|error| PgError::protocol(DURING, error.to_string()))?
                        .to_owned();
                    results.push(std::mem::take(&mut current));
                    columns = None;
                }
                Message::EmptyQueryResponse => results.push(std::mem::take(&mut current)),
                Message::ErrorResponse(body) => failure = Some(server_error(body.fields())),
                Message::CopyInResponse(_) => {
                    frontend::copy_fail(
                        "COPY FROM STDIN is not allowed in simple_query; use copy_in",
                        &mut self.write_buf,
                    )
                    .map_err(|error| PgError::protocol(DURING, error.to_string()))?;
                    self.flush(DURING).await?;
                }
                Message::CopyOutResponse(_) | Message::CopyData(_) | Message::CopyDone => {
                    failure.get_or_insert_with(|| {
                        PgError::protocol(
                            DURING,
                            "COPY TO STDOUT is not allowed in simple_query; use copy_out",
                        )
                    });
                }
                Message::ReadyForQuery(_) => {
                    return match failure {
                        Some(error) => Err(error),
                        None => Ok(results),
                    }
                }
                other => return Err(unexpected(DURING, &other)),
            }
        }
    }

    /// Runs statements and returns the rows of the last one that returned rows.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Row>, PgError> {
        let results = self.simple_query_all(sql).await?;
        Ok(results
            .into_iter()
            .rev()
            .find(|result| !result.rows.is_empty())
            .map(|result| result.rows)
            .unwrap_or_default())
    }

    /// Runs statements and returns the first row of the last query, if any.
    pub async fn query_one(&mut self, sql: &str) -> Result<Option<Row>, PgError> {
        Ok(self.query(sql).await?.into_iter().next())
    }

    /// Runs statements for their effect; returns the last statement's row count.
    pub async fn execute(&mut self, sql: &str) -> Result<u64, PgError> {
        let results = self.simple_query_all(sql).await?;
        Ok(results.last().map(StatementResult::row_count).unwrap_or(0))
    }
}

/// Quotes an SQL identifier (table, column, slot option name) with double quotes.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal, safe under `standard_conforming_strings` on or off.
pub fn quote_literal(value: &str) -> String {
    if value.contains('\\') {
        format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", value.replace('\'', "''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_the_quote_characters() {
        assert_eq!(quote_identifier("my \"table\""), "\"my \"\"table\"\"\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b'"), r"E'a\\b'''");
    }

    #[test]
    fn row_count_comes_from_the_command_tag() {
        let result = |tag: &str| StatementResult {
            rows: vec![],
            tag: tag.into(),
        };
        assert_eq!(result("INSERT 0 5").row_count(), 5);
        assert_eq!(result("COPY 1000000").row_count(), 1_000_000);
        assert_eq!(result("CREATE TABLE").row_count(), 0);
    }
}
