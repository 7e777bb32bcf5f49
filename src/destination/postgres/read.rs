//! Reading a target table back (`pgferry verify`): its live rows as text, under the session
//! settings the copy uses ([`TEXT_SESSION`], and one TimeZone), so a value prints as the
//! source's does. Under `hard_delete: false` rows marked `_sdc_deleted_at` are deleted rows
//! and are left out.

use crate::pg::query::quote_identifier;
use crate::pg::{ConnectOptions, Connection, PgError};
use crate::singer::target_postgres::naming::TableName;

use super::copy::TEXT_SESSION;
use super::sql::DELETED_AT;

/// Hands each live row of `table` (its `columns`, quoted and comma-separated, as a text COPY
/// line without the newline) to `each`; a missing table holds no rows. Returns how many.
pub async fn live_rows(
    options: &ConnectOptions,
    table: &TableName,
    columns: &str,
    soft_delete: bool,
    each: impl FnMut(&[u8]) + Send,
) -> Result<u64, PgError> {
    let filter = if soft_delete {
        format!(" WHERE {} IS NULL", quote_identifier(DELETED_AT))
    } else {
        String::new()
    };
    let sql = format!("SELECT {columns} FROM {}{filter}", table.quoted());
    match text_rows(options, &sql, each).await {
        // 42P01: the target table does not exist (yet): it holds no rows.
        Err(PgError::Server(error)) if error.code == "42P01" => Ok(0),
        outcome => outcome,
    }
}

/// Runs `COPY (sql) TO STDOUT` (text) under the copy's session settings in UTC and hands each
/// line, without its newline, to `each`; returns how many. Both ends of a comparison read
/// through it, so equal values print equal text.
pub async fn text_rows(
    options: &ConnectOptions,
    sql: &str,
    mut each: impl FnMut(&[u8]) + Send,
) -> Result<u64, PgError> {
    let mut connection = Connection::connect(options).await?;
    connection.execute(TEXT_SESSION).await?;
    connection.execute("SET TimeZone = 'UTC'").await?;
    let mut copy = connection
        .copy_out(&format!("COPY ({sql}) TO STDOUT"))
        .await?;
    let mut rows = 0u64;
    while let Some(data) = copy.next().await? {
        rows += 1;
        each(data.strip_suffix(b"\n").unwrap_or(&data));
    }
    connection.close().await;
    Ok(rows)
}
