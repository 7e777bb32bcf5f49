//! PostgreSQL → PostgreSQL: the target tables a run creates or checks before copying, and
//! what streaming needs to apply changes there. The copy and the streaming loop are the ones
//! PostgreSQL → GDN uses; only the destination differs (`destination::postgres`).

use std::collections::HashSet;
use std::sync::Arc;

use super::TableTask;
use crate::config::{parse_table_name, ReplicaDestinationConfig};
use crate::destination::gdn::document::DocumentPlan;
use crate::destination::postgres::copy::{ReplicaCopy, TEXT_SESSION};
use crate::destination::postgres::{table::ensure, PostgresTarget, ReplicaError, ReplicaWriter};
use crate::gdn::writer::BatchTarget;
use crate::pg::catalog::{NumericMode, Table};
use crate::pg::query::quote_literal;
use crate::pg::{ConnectOptions, Connection};
use crate::pipeline::RunError;
use crate::singer::target_postgres::naming::TableName;

/// Creates or checks the target table of every chosen source table; keyless tables (only in
/// FULL_TABLE runs) are emptied first, so a re-run replaces their rows instead of adding them.
pub(crate) async fn prepare_targets(
    source: &ConnectOptions,
    destination: &ReplicaDestinationConfig,
    chosen: &[(&Table, Option<String>)],
    numeric_mode: NumericMode,
    allow_keyless: bool,
) -> Result<(Vec<TableTask>, PostgresTarget), RunError> {
    let target = destination.connection.destination_options();
    let replica_error = |error: ReplicaError| RunError::Replica(Box::new(error));
    let mut connection = Connection::connect(&target)
        .await
        .map_err(crate::destination::postgres::pg(
            "connecting to the target database for",
            "the tables",
        ))
        .map_err(replica_error)?;
    let (session, source_database) = source_session(source).await?;
    let same_database =
        source_database.is_some() && database_identity(&mut connection).await == source_database;
    let mut tasks = Vec::with_capacity(chosen.len());
    let mut copies = Vec::with_capacity(chosen.len());
    let mut seen = HashSet::new();
    for (index, (table, rename)) in chosen.iter().enumerate() {
        let plan = DocumentPlan::new(table, numeric_mode, allow_keyless)?;
        let name = target_name(destination, table, rename.as_deref())?;
        if same_database && name.schema == table.schema && name.table == table.name {
            return Err(RunError::Unsupported(format!(
                "the target of {} is the table itself: source and destination are the same database\nHINT: replicate into another database, or another schema or name (\"target_schema\", \"table_name\")",
                table.qualified_name()
            )));
        }
        if !seen.insert(name.clone()) {
            return Err(RunError::Unsupported(format!(
                "two source tables would be replicated into {name}\nHINT: give one of them its own name: \"tables\": [{{\"table\": \"{}\", \"collection\": \"<target table>\"}}]",
                table.qualified_name()
            )));
        }
        let (replica, status) = ensure(
            &mut connection,
            table,
            name,
            !destination.hard_delete,
            format!("pgferry_stage_{index}"),
        )
        .await
        .map_err(replica_error)?;
        let keyless = table.key_columns.is_empty();
        if keyless {
            tracing::info!(table = %table.qualified_name(), target = %replica.target, "keyless table: emptying the target table before the reload");
            connection
                .execute(&replica.truncate_sql())
                .await
                .map_err(crate::destination::postgres::pg(
                    "emptying",
                    &replica.target.to_string(),
                ))
                .map_err(replica_error)?;
        }
        tasks.push(TableTask {
            target: BatchTarget {
                table: format!("{}.{}", table.schema, table.name).into(),
                collection: replica.target.quoted().into(),
                keyless,
            },
            plan,
            table: (*table).clone(),
            row_filter: None,
        });
        copies.push(ReplicaCopy {
            table: replica,
            status,
        });
    }
    connection.close().await;
    let writer = ReplicaWriter::new(
        target.clone(),
        session,
        copies.iter().map(|copy| {
            (
                Arc::<str>::from(copy.table.target.quoted()),
                copy.table.clone(),
            )
        }),
    );
    Ok((
        tasks,
        PostgresTarget {
            target,
            copies,
            writer: Arc::new(writer),
        },
    ))
}

/// Where a source table goes: the `tables` entry's own name (`"collection"`: `table` or
/// `schema.table`), else the destination's naming rule.
pub(crate) fn target_name(
    destination: &ReplicaDestinationConfig,
    table: &Table,
    rename: Option<&str>,
) -> Result<TableName, RunError> {
    let (schema, name) = destination
        .table_for(&table.schema, &table.name)
        .map_err(RunError::Unsupported)?;
    match rename {
        None => Ok(TableName {
            schema,
            table: name,
        }),
        Some(rename) if rename.contains('.') => {
            let (schema, table_name) = parse_table_name(rename).ok_or_else(|| {
                RunError::Unsupported(format!(
                    "{rename:?} (the name given to {}) is not a table name\nHINT: write \"table\" or \"schema.table\"",
                    table.qualified_name()
                ))
            })?;
            Ok(TableName {
                schema,
                table: table_name,
            })
        }
        Some(rename) => Ok(TableName {
            schema,
            table: rename.to_owned(),
        }),
    }
}

/// The settings streamed text values need on the target (the copy's, with the source's
/// IntervalStyle: the walsender prints intervals in it; pgferry's sessions ask for ISO dates),
/// and which database the source is ([`database_identity`]).
async fn source_session(source: &ConnectOptions) -> Result<(String, Option<String>), RunError> {
    let mut connection = Connection::connect(source).await?;
    let style = connection
        .query_one("SELECT current_setting('IntervalStyle')")
        .await?
        .and_then(|row| row.get(0).map(str::to_owned))
        .unwrap_or_else(|| "postgres".into());
    let identity = database_identity(&mut connection).await;
    connection.close().await;
    Ok((
        format!(
            "{TEXT_SESSION}; SET IntervalStyle = {}",
            quote_literal(&style)
        ),
        identity,
    ))
}

/// The cluster's system identifier and the database's name, when the role may read them
/// (`pg_control_system()`): two connections with the same identity reach the same database.
async fn database_identity(connection: &mut Connection) -> Option<String> {
    connection
        .query_one(
            "SELECT (SELECT system_identifier FROM pg_catalog.pg_control_system())::text || '/' || current_database()",
        )
        .await
        .ok()
        .flatten()
        .and_then(|row| row.get(0).map(str::to_owned))
}
