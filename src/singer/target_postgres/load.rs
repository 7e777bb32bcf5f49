//! Tables and loads: creating and evolving a stream's table, and loading one batch through a
//! staging table in one transaction.
//!
//! A load is `BEGIN; COPY staging FROM STDIN; INSERT INTO target SELECT … FROM staging
//! ON CONFLICT (key) DO UPDATE …; DELETE … USING staging (hard_delete); COMMIT`. Any failure
//! rolls the whole batch back, so a batch is applied completely or not at all.

use crate::pg::query::{quote_identifier, quote_literal};
use crate::pg::{Connection, PgError};
use crate::singer::target_postgres::batch::StreamBatch;
use crate::singer::target_postgres::config::SchemaEvolution;
use crate::singer::target_postgres::copy_binary::{binary_type, text_to_binary, BinaryType};
use crate::singer::target_postgres::naming::{folded_identifier, TableName};
use crate::singer::target_postgres::schema::{fit, widened, Fit, StreamSchema, METADATA_COLUMNS};

/// COPY data is sent in messages of about this size.
const COPY_CHUNK_BYTES: usize = 256 * 1024;

/// How a batch is merged into its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeMode {
    /// `INSERT … ON CONFLICT (key) DO UPDATE` (the key has a unique index).
    OnConflict,
    /// `UPDATE … FROM` then `INSERT … WHERE NOT EXISTS` (an existing table without a unique
    /// index on the key, as the old target did it).
    UpdateThenInsert,
    /// No key: rows are appended with COPY straight into the table.
    Append,
}

/// A stream's table as prepared for loading.
#[derive(Debug, Clone)]
pub struct TableState {
    /// The target table.
    pub name: TableName,
    /// Column names in the stream's column order.
    pub columns: Vec<String>,
    /// Key column names.
    pub key: Vec<String>,
    /// The session's staging table.
    pub staging: String,
    /// How batches are merged.
    pub mode: MergeMode,
    /// The `_sdc_deleted_at` column, when the table has one.
    pub deleted_at: Option<String>,
    /// DDL statements run to get here (for logs and tests).
    pub changes: Vec<String>,
    /// Binary encodings of the columns, when every column has one (else COPY text).
    pub binary: Option<Vec<BinaryType>>,
    /// The columns' types as the table has them (`format_type()`), in column order.
    pub types: Vec<String>,
}

/// Turns metadata columns (by position) that are not text yet, and their staging twins, into
/// `text`, for a batch giving them a value that is not a timestamp: the old target stored any
/// value there and read any non-null `_sdc_deleted_at` as a delete, so the column adapts rather
/// than the run stopping.
pub async fn metadata_as_text(
    connection: &mut Connection,
    table: &mut TableState,
    positions: &[usize],
) -> Result<(), PgError> {
    let changing: Vec<usize> = positions
        .iter()
        .copied()
        .filter(|&position| {
            table.types.get(position).is_some_and(|sql_type| {
                sql_type != "text" && !sql_type.starts_with("character varying")
            })
        })
        .collect();
    if changing.is_empty() {
        return Ok(());
    }
    let mut statements = Vec::new();
    for &position in &changing {
        let quoted = quote_identifier(&table.columns[position]);
        statements.push(format!(
            "ALTER TABLE {} ALTER COLUMN {quoted} TYPE text USING {quoted}::text",
            table.name.quoted()
        ));
        statements.push(format!(
            "ALTER TABLE pg_temp.{} ALTER COLUMN {quoted} TYPE text",
            table.staging
        ));
    }
    let script = format!("BEGIN; {}; COMMIT", statements.join("; "));
    if let Err(error) = connection.execute(&script).await {
        let _ = connection.execute("ROLLBACK").await;
        return Err(error);
    }
    for position in changing {
        tracing::warn!(table = %table.name, column = %table.columns[position], "a metadata value is not a timestamp: the column is now text (any non-null _sdc_deleted_at still marks a delete)");
        table.types[position] = "text".to_owned();
        if let Some(binary) = table.binary.as_mut() {
            binary[position] = BinaryType::Text;
        }
    }
    Ok(())
}

/// A column of an existing table.
#[derive(Debug, Clone)]
struct ExistingColumn {
    name: String,
    sql_type: String,
}

async fn existing_columns(
    connection: &mut Connection,
    table: &TableName,
) -> Result<Option<Vec<ExistingColumn>>, PgError> {
    let exists = connection
        .query_one(&format!(
            "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = {} AND c.relname = {} AND c.relkind IN ('r', 'p')",
            quote_literal(&table.schema),
            quote_literal(&table.table)
        ))
        .await?;
    let Some(oid) = exists.and_then(|row| row.get(0).map(str::to_owned)) else {
        return Ok(None);
    };
    let rows = connection
        .query(&format!(
            "SELECT attname, pg_catalog.format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute \
             WHERE attrelid = {oid} AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
        ))
        .await?;
    Ok(Some(
        rows.iter()
            .map(|row| ExistingColumn {
                name: row.get(0).unwrap_or_default().to_owned(),
                sql_type: row.get(1).unwrap_or_default().to_owned(),
            })
            .collect(),
    ))
}

async fn has_unique_key(
    connection: &mut Connection,
    table: &TableName,
    key: &[String],
) -> Result<bool, PgError> {
    let rows = connection
        .query(&format!(
            "SELECT string_agg(a.attname, ',' ORDER BY a.attname) FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
             WHERE i.indrelid = {}::regclass AND i.indisunique AND i.indimmediate AND i.indpred IS NULL \
             GROUP BY i.indexrelid",
            quote_literal(&table.quoted())
        ))
        .await?;
    let mut wanted: Vec<&str> = key.iter().map(String::as_str).collect();
    wanted.sort_unstable();
    let wanted = wanted.join(",");
    Ok(rows.iter().any(|row| row.get(0) == Some(wanted.as_str())))
}

fn column_list(columns: &[String]) -> String {
    columns
        .iter()
        .map(|name| quote_identifier(name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the old target's config asked for around a table besides its columns.
#[derive(Debug, Clone, Copy, Default)]
pub struct TableExtras<'a> {
    /// Roles granted USAGE on a schema this run creates and SELECT on the tables of a schema
    /// where this run creates a table (`default_target_schema_select_permission(s)`,
    /// `schema_mapping.*.target_schema_select_permissions`), as the old target granted them.
    pub grantees: &'a [String],
    /// Indexes to have, each a comma-separated column list (`schema_mapping.*.indices`).
    pub indices: &'a [String],
}

/// `CREATE INDEX IF NOT EXISTS` for one `schema_mapping` index, named as the old target
/// named it (`i_<table, 30 characters>_<columns joined by _>`), so it is not made twice.
fn index_sql(name: &TableName, spec: &str) -> String {
    let columns: Vec<String> = spec
        .split(',')
        .map(folded_identifier)
        .filter(|column| !column.is_empty())
        .collect();
    let table: String = name
        .table
        .chars()
        .take(30)
        .filter(|c| *c != ' ' && *c != '"')
        .collect();
    format!(
        "CREATE INDEX IF NOT EXISTS {} ON {} ({})",
        quote_identifier(&format!("i_{table}_{}", columns.join("_"))),
        name.quoted(),
        column_list(&columns)
    )
}

/// Creates or evolves the table of a stream so it has every column of `schema` with a type
/// that holds its values, with the grants and indexes of `extras`; creates the session's
/// staging table (dropping the stream's previous one when `recreate_staging`).
#[allow(clippy::too_many_arguments)]
pub async fn prepare_table(
    connection: &mut Connection,
    schema: &StreamSchema,
    name: &TableName,
    evolution: SchemaEvolution,
    staging: &str,
    recreate_staging: bool,
    extras: TableExtras<'_>,
) -> Result<TableState, PgError> {
    let columns: Vec<String> = schema
        .columns
        .iter()
        .map(|column| column.name.clone())
        .collect();
    let key: Vec<String> = schema
        .key
        .iter()
        .map(|&index| columns[index].clone())
        .collect();
    let mut types: Vec<String> = schema
        .columns
        .iter()
        .map(|column| column.pg_type.sql().to_owned())
        .collect();
    let mut changes = Vec::new();
    let schema_exists = connection
        .query_one(&format!(
            "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = {}",
            quote_literal(&name.schema)
        ))
        .await?
        .is_some();
    let grantees: Vec<String> = extras
        .grantees
        .iter()
        .map(|role| quote_identifier(&folded_identifier(role)))
        .collect();
    if !schema_exists {
        changes.push(format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            quote_identifier(&name.schema)
        ));
        for role in &grantees {
            changes.push(format!(
                "GRANT USAGE ON SCHEMA {} TO {role}",
                quote_identifier(&name.schema)
            ));
        }
    }
    let mut mode = if key.is_empty() {
        MergeMode::Append
    } else {
        MergeMode::OnConflict
    };
    match existing_columns(connection, name).await? {
        None => {
            let mut definitions: Vec<String> = columns
                .iter()
                .zip(&types)
                .map(|(column, sql_type)| format!("{} {sql_type}", quote_identifier(column)))
                .collect();
            if !key.is_empty() {
                definitions.push(format!("PRIMARY KEY ({})", column_list(&key)));
            }
            changes.push(format!(
                "CREATE TABLE IF NOT EXISTS {} ({})",
                name.quoted(),
                definitions.join(", ")
            ));
            for role in &grantees {
                changes.push(format!(
                    "GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {role}",
                    quote_identifier(&name.schema)
                ));
            }
        }
        Some(existing) => {
            let suffix = connection
                .query_one("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD_HH24MI')")
                .await?
                .and_then(|row| row.get(0).map(str::to_owned))
                .unwrap_or_default();
            let mut taken: Vec<String> =
                existing.iter().map(|column| column.name.clone()).collect();
            for (index, column) in schema.columns.iter().enumerate() {
                let quoted = quote_identifier(&column.name);
                let Some(current) = existing.iter().find(|found| found.name == column.name) else {
                    changes.push(format!(
                        "ALTER TABLE {} ADD COLUMN {quoted} {}",
                        name.quoted(),
                        column.pg_type.sql()
                    ));
                    continue;
                };
                if METADATA_COLUMNS.contains(&column.name.as_str()) {
                    // The old target made these `character varying`; a metadata value never
                    // renames or retypes a column (any non-null `_sdc_deleted_at` is a delete).
                    types[index] = current.sql_type.clone();
                    continue;
                }
                match fit(&current.sql_type, column.pg_type) {
                    Fit::Holds => {
                        types[index] = current.sql_type.clone();
                        continue;
                    }
                    Fit::Lossy(why) => {
                        tracing::warn!(table = %name, column = %column.name, existing = %current.sql_type, "kept the existing column: {why}");
                        types[index] = current.sql_type.clone();
                        continue;
                    }
                    Fit::Changed => {}
                }
                let is_key = schema.key.contains(&index);
                if evolution == SchemaEvolution::Widen || is_key {
                    match widened(&current.sql_type, column.pg_type) {
                        Some(wider) => {
                            changes.push(format!(
                                "ALTER TABLE {} ALTER COLUMN {quoted} TYPE {wider} USING {quoted}::{wider}",
                                name.quoted()
                            ));
                            types[index] = wider;
                        }
                        None => types[index] = current.sql_type.clone(),
                    }
                    continue;
                }
                let mut renamed = format!("{}_{suffix}", column.name);
                let mut attempt = 2;
                while taken.contains(&renamed) {
                    renamed = format!("{}_{suffix}_{attempt}", column.name);
                    attempt += 1;
                }
                taken.push(renamed.clone());
                changes.push(format!(
                    "ALTER TABLE {} RENAME COLUMN {quoted} TO {}",
                    name.quoted(),
                    quote_identifier(&renamed)
                ));
                changes.push(format!(
                    "ALTER TABLE {} ADD COLUMN {quoted} {}",
                    name.quoted(),
                    column.pg_type.sql()
                ));
            }
        }
    }
    if !changes.is_empty() {
        let script = format!("BEGIN; {}; COMMIT", changes.join("; "));
        if let Err(error) = connection.execute(&script).await {
            let _ = connection.execute("ROLLBACK").await;
            return Err(error);
        }
    }
    if !extras.indices.is_empty() {
        let script: Vec<String> = extras
            .indices
            .iter()
            .map(|spec| index_sql(name, spec))
            .collect();
        connection.execute(&script.join("; ")).await?;
    }
    if mode == MergeMode::OnConflict && !has_unique_key(connection, name, &key).await? {
        tracing::warn!(table = %name, "no unique index on the key ({}): merging with UPDATE then INSERT; add a PRIMARY KEY for faster loads", key.join(", "));
        mode = MergeMode::UpdateThenInsert;
    }
    let definitions: Vec<String> = columns
        .iter()
        .zip(&types)
        .map(|(column, sql_type)| format!("{} {sql_type}", quote_identifier(column)))
        .collect();
    let drop = if recreate_staging {
        format!("DROP TABLE IF EXISTS pg_temp.{staging}; ")
    } else {
        String::new()
    };
    connection
        .execute(&format!(
            "{drop}CREATE TEMP TABLE {staging} ({}) ON COMMIT DELETE ROWS",
            definitions.join(", ")
        ))
        .await?;
    let binary = types
        .iter()
        .map(|sql_type| binary_type(sql_type))
        .collect::<Option<Vec<_>>>();
    Ok(TableState {
        binary,
        types,
        name: name.clone(),
        deleted_at: schema.deleted_at.map(|index| columns[index].clone()),
        columns,
        key,
        staging: staging.to_owned(),
        mode,
        changes,
    })
}

/// A load that failed, with where in the batch when the server said.
#[derive(Debug)]
pub struct LoadFailure {
    /// The server's (or the connection's) error.
    pub error: PgError,
    /// The batch row the COPY stopped at (0-based among live rows), when known.
    pub row: Option<usize>,
    /// The column the COPY stopped at, when known.
    pub column: Option<String>,
}

/// `line N` and `column C` from a COPY error's context (`COPY t, line 3, column c: "…"`).
fn copy_position(error: &PgError) -> (Option<usize>, Option<String>) {
    let Some(context) = error.as_db_error().and_then(|db| db.where_.as_deref()) else {
        return (None, None);
    };
    let Some(after) = context.split(", line ").nth(1) else {
        return (None, None);
    };
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    let row = digits
        .parse::<usize>()
        .ok()
        .and_then(|line| line.checked_sub(1));
    let column = after
        .split_once(", column ")
        .map(|(_, rest)| rest.split(':').next().unwrap_or(rest).to_owned());
    (row, column)
}

fn key_match(key: &[String], left: &str, right: &str) -> String {
    key.iter()
        .map(|column| {
            let quoted = quote_identifier(column);
            format!("{left}.{quoted} = {right}.{quoted}")
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The merge statements of one batch.
pub fn merge_sql(table: &TableState, hard_delete: bool, has_deletes: bool) -> Vec<String> {
    let target = table.name.quoted();
    let staging = &table.staging;
    let all = column_list(&table.columns);
    let selected = table
        .columns
        .iter()
        .map(|column| format!("s.{}", quote_identifier(column)))
        .collect::<Vec<_>>()
        .join(", ");
    let others: Vec<&String> = table
        .columns
        .iter()
        .filter(|column| !table.key.contains(column))
        .collect();
    let deleted = table
        .deleted_at
        .as_deref()
        .filter(|_| has_deletes)
        .map(quote_identifier);
    // `None`: every row; `Some(false)`: rows that are not deletes; `Some(true)`: deletes.
    let filter = |rows: Option<bool>, alias: &str| match (rows, &deleted) {
        (Some(false), Some(column)) => format!(" WHERE {alias}.{column} IS NULL"),
        (Some(true), Some(column)) => format!(" WHERE {alias}.{column} IS NOT NULL"),
        _ => String::new(),
    };
    let mut statements = Vec::new();
    // (which rows, keep existing values where the record has none)
    let mut passes = vec![(deleted.as_ref().map(|_| false), false)];
    if deleted.is_some() {
        if hard_delete {
            statements.push(format!(
                "DELETE FROM {target} t USING {staging} s{} AND {}",
                filter(Some(true), "s"),
                key_match(&table.key, "t", "s")
            ));
        } else {
            passes.push((Some(true), true));
        }
    }
    for (rows, keep) in passes {
        let value = |column: &String, source: &str| {
            let quoted = quote_identifier(column);
            if keep {
                format!("{quoted} = COALESCE({source}.{quoted}, t.{quoted})")
            } else {
                format!("{quoted} = {source}.{quoted}")
            }
        };
        let and_where = |alias: &str| {
            let clause = filter(rows, alias);
            if clause.is_empty() {
                " WHERE ".to_owned()
            } else {
                format!("{clause} AND ")
            }
        };
        match table.mode {
            MergeMode::OnConflict => {
                let action = if others.is_empty() {
                    "DO NOTHING".to_owned()
                } else {
                    let sets = others
                        .iter()
                        .map(|column| value(column, "EXCLUDED"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    format!("DO UPDATE SET {sets}")
                };
                statements.push(format!(
                    "INSERT INTO {target} AS t ({all}) SELECT {selected} FROM {staging} s{} ON CONFLICT ({}) {action}",
                    filter(rows, "s"),
                    column_list(&table.key)
                ));
            }
            MergeMode::UpdateThenInsert => {
                if !others.is_empty() {
                    let sets = others
                        .iter()
                        .map(|column| value(column, "s_new"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    statements.push(format!(
                        "UPDATE {target} t SET {sets} FROM {staging} s_new{}{}",
                        and_where("s_new"),
                        key_match(&table.key, "t", "s_new")
                    ));
                }
                statements.push(format!(
                    "INSERT INTO {target} ({all}) SELECT {selected} FROM {staging} s{}NOT EXISTS (SELECT 1 FROM {target} t WHERE {})",
                    and_where("s"),
                    key_match(&table.key, "t", "s")
                ));
            }
            MergeMode::Append => {}
        }
    }
    statements
}

/// How a batch was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadPath {
    /// COPY straight into the table (no row of the batch was there yet, or no key).
    Direct,
    /// COPY into staging, then the merge statements.
    Merged,
    /// A direct COPY met an existing key and was rolled back to its savepoint; then merged.
    DirectThenMerged,
}

/// Loads the live rows of `batch` into `table` in one transaction, as COPY binary when `binary`
/// and every column and value allows it (else text). With `try_direct`, a batch
/// without deletes is first copied straight into the table under a savepoint: when none of its
/// keys exist yet (an initial load) that is a plain COPY; a unique violation rolls back to the
/// savepoint and the batch is merged through staging instead.
pub async fn load_batch(
    connection: &mut Connection,
    table: &TableState,
    batch: &StreamBatch,
    hard_delete: bool,
    try_direct: bool,
    binary: bool,
) -> Result<(u64, LoadPath), LoadFailure> {
    let fail = |error: PgError| LoadFailure {
        error,
        row: None,
        column: None,
    };
    connection.execute("BEGIN").await.map_err(fail)?;
    let result =
        load_in_transaction(connection, table, batch, hard_delete, try_direct, binary).await;
    match result {
        Ok(done) => {
            connection.execute("COMMIT").await.map_err(fail)?;
            Ok(done)
        }
        Err(failure) => {
            // The server has aborted the transaction; this only ends it.
            let _ = connection.execute("ROLLBACK").await;
            Err(failure)
        }
    }
}

/// The rows of a batch in the format they are sent.
enum Payload<'a> {
    /// COPY text rows, in chunks of whole rows.
    Text(Vec<&'a [u8]>),
    /// A complete binary COPY stream.
    Binary(Vec<u8>),
}

async fn copy_rows(
    connection: &mut Connection,
    destination: &str,
    table: &TableState,
    payload: &Payload<'_>,
) -> Result<u64, LoadFailure> {
    let format = match payload {
        Payload::Text(_) => "",
        Payload::Binary(_) => " (FORMAT binary)",
    };
    let mut copy = connection
        .copy_in(&format!(
            "COPY {destination} ({}) FROM STDIN{format}",
            column_list(&table.columns)
        ))
        .await
        .map_err(|error| LoadFailure {
            error,
            row: None,
            column: None,
        })?;
    let chunks: Vec<&[u8]> = match payload {
        Payload::Text(chunks) => chunks.clone(),
        Payload::Binary(stream) => stream.chunks(COPY_CHUNK_BYTES).collect(),
    };
    for chunk in chunks {
        if let Err(error) = copy.send(chunk).await {
            return Err(LoadFailure {
                error,
                row: None,
                column: None,
            });
        }
    }
    copy.finish().await.map_err(|error| {
        let (row, column) = copy_position(&error);
        LoadFailure { error, row, column }
    })
}

async fn load_in_transaction(
    connection: &mut Connection,
    table: &TableState,
    batch: &StreamBatch,
    hard_delete: bool,
    try_direct: bool,
    binary: bool,
) -> Result<(u64, LoadPath), LoadFailure> {
    let fail = |error: PgError| LoadFailure {
        error,
        row: None,
        column: None,
    };
    let text = batch.chunks(COPY_CHUNK_BYTES);
    let payload = match table
        .binary
        .as_deref()
        .filter(|_| binary)
        .and_then(|types| text_to_binary(&text, types))
    {
        Some(stream) => Payload::Binary(stream),
        None => Payload::Text(text),
    };
    tracing::debug!(
        table = %table.name,
        format = if matches!(payload, Payload::Binary(_)) { "binary" } else { "text" },
        "COPY format"
    );
    if table.mode == MergeMode::Append {
        let copied = copy_rows(connection, &table.name.quoted(), table, &payload).await?;
        return Ok((copied, LoadPath::Direct));
    }
    let mut path = LoadPath::Merged;
    // Only a unique index on the key turns an existing key into an error a direct COPY can
    // detect; without one (UpdateThenInsert) a direct COPY would duplicate rows.
    if try_direct && table.mode == MergeMode::OnConflict && batch.live_deletes() == 0 {
        connection
            .execute("SAVEPOINT pgferry_direct")
            .await
            .map_err(fail)?;
        match copy_rows(connection, &table.name.quoted(), table, &payload).await {
            Ok(copied) => return Ok((copied, LoadPath::Direct)),
            Err(failure) if failure.error.code() == Some("23505") => {
                connection
                    .execute("ROLLBACK TO SAVEPOINT pgferry_direct")
                    .await
                    .map_err(fail)?;
                path = LoadPath::DirectThenMerged;
            }
            Err(failure) => return Err(failure),
        }
    }
    let copied = copy_rows(connection, &table.staging, table, &payload).await?;
    for statement in merge_sql(table, hard_delete, batch.live_deletes() > 0) {
        connection.execute(&statement).await.map_err(fail)?;
    }
    Ok((copied, path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::DbError;

    fn table(mode: MergeMode) -> TableState {
        TableState {
            name: TableName {
                schema: "public".into(),
                table: "orders".into(),
            },
            columns: vec!["id".into(), "amount".into(), "_sdc_deleted_at".into()],
            key: vec!["id".into()],
            staging: "pgferry_stage_1".into(),
            mode,
            deleted_at: Some("_sdc_deleted_at".into()),
            changes: vec![],
            binary: None,
            types: vec![
                "integer".into(),
                "numeric".into(),
                "timestamp with time zone".into(),
            ],
        }
    }

    #[test]
    fn upserts_and_deletes_are_one_statement_each() {
        assert_eq!(
            merge_sql(&table(MergeMode::OnConflict), false, false),
            vec![
                r#"INSERT INTO "public"."orders" AS t ("id", "amount", "_sdc_deleted_at") SELECT s."id", s."amount", s."_sdc_deleted_at" FROM pgferry_stage_1 s ON CONFLICT ("id") DO UPDATE SET "amount" = EXCLUDED."amount", "_sdc_deleted_at" = EXCLUDED."_sdc_deleted_at""#
            ]
        );
        let hard = merge_sql(&table(MergeMode::OnConflict), true, true);
        assert_eq!(hard.len(), 2);
        assert_eq!(
            hard[0],
            r#"DELETE FROM "public"."orders" t USING pgferry_stage_1 s WHERE s."_sdc_deleted_at" IS NOT NULL AND t."id" = s."id""#
        );
        assert!(
            hard[1].contains(r#"WHERE s."_sdc_deleted_at" IS NULL ON CONFLICT"#),
            "{}",
            hard[1]
        );
        let soft = merge_sql(&table(MergeMode::OnConflict), false, true);
        assert_eq!(soft.len(), 2);
        assert!(
            soft[1].contains(r#""amount" = COALESCE(EXCLUDED."amount", t."amount")"#),
            "{}",
            soft[1]
        );
        let old_style = merge_sql(&table(MergeMode::UpdateThenInsert), false, false);
        assert_eq!(
            old_style,
            vec![
                r#"UPDATE "public"."orders" t SET "amount" = s_new."amount", "_sdc_deleted_at" = s_new."_sdc_deleted_at" FROM pgferry_stage_1 s_new WHERE t."id" = s_new."id""#,
                r#"INSERT INTO "public"."orders" ("id", "amount", "_sdc_deleted_at") SELECT s."id", s."amount", s."_sdc_deleted_at" FROM pgferry_stage_1 s WHERE NOT EXISTS (SELECT 1 FROM "public"."orders" t WHERE t."id" = s."id")"#,
            ]
        );
    }

    #[test]
    fn copy_errors_name_their_row_and_column() {
        let error = PgError::from(DbError {
            code: "22P02".into(),
            message: "invalid input syntax for type bigint: \"abc\"".into(),
            where_: Some("COPY pgferry_stage_1, line 3, column qty: \"abc\"".into()),
            ..DbError::default()
        });
        assert_eq!(copy_position(&error), (Some(2), Some("qty".into())));
    }
}
