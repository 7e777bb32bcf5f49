//! Target tables of a replication: created with the source's column types and key, or checked
//! and completed when they exist already.

use super::sql::{ReplicaTable, DELETED_AT};
use super::{pg, ReplicaError};
use crate::pg::catalog::Table;
use crate::pg::query::{quote_identifier, quote_literal, Row};
use crate::pg::Connection;
use crate::singer::target_postgres::naming::TableName;

/// The first OID of objects users create (`FirstNormalObjectId`): types below it are built in.
const FIRST_USER_OID: u32 = 16384;

/// What a target table was like before the run touched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetStatus {
    /// Created now.
    pub created: bool,
    /// Holds no row (a fresh copy may then write straight into it).
    pub empty: bool,
    /// The snapshot may use binary COPY: every column has the source's built-in type.
    pub binary: bool,
}

/// Creates `target` for the source table `source` when missing (schema too), else adds the
/// columns it lacks and checks that its key can be matched. `soft_delete` adds
/// `_sdc_deleted_at`. `staging` names the session's staging table.
pub async fn ensure(
    connection: &mut Connection,
    source: &Table,
    target: TableName,
    soft_delete: bool,
    staging: String,
) -> Result<(ReplicaTable, TargetStatus), ReplicaError> {
    let name = target.to_string();
    let existing = existing_columns(connection, &target).await?;
    let mut table = ReplicaTable {
        source: source.qualified_name(),
        target,
        columns: source
            .columns
            .iter()
            .map(|column| (column.name.clone(), column.type_name.clone()))
            .collect(),
        keys: source.key_columns.clone(),
        soft_delete,
        staging,
    };
    let builtin = source.columns.iter().all(|column| {
        column.type_oid < FIRST_USER_OID && !OBJECT_REFERENCE_TYPES.contains(&column.type_oid)
    });
    if existing.is_empty() {
        crate::singer::target_postgres::ensure_schema(connection, &table.target.schema)
            .await
            .map_err(pg("creating the schema of", &name))?;
        if let Err(error) = connection.execute(&table.create_sql()).await {
            if error.code() == Some("42704") {
                return Err(ReplicaError::Unusable {
                    table: name,
                    detail: format!("{error}\nHINT: a column of {} has a type the target database lacks (an enum, domain or extension type): create it there first, e.g. from pg_dump --schema-only of the source", table.source),
                });
            }
            return Err(pg("creating", &name)(error));
        }
        tracing::info!(table = %name, source = %table.source, "created the target table");
        return Ok((
            table,
            TargetStatus {
                created: true,
                empty: true,
                binary: builtin,
            },
        ));
    }
    let mut same_types = true;
    for (column, type_name) in &mut table.columns {
        match existing.iter().find(|(name, _)| name == column) {
            Some((_, target_type)) => {
                if target_type != type_name {
                    same_types = false;
                    tracing::info!(table = %name, column = %column, source_type = %type_name, target_type = %target_type, "the target column has another type: values are copied as text and converted");
                    *type_name = target_type.clone();
                }
            }
            None => {
                connection
                    .execute(&format!(
                        "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {type_name}",
                        table.target.quoted(),
                        quote_identifier(column)
                    ))
                    .await
                    .map_err(pg("adding a column to", &name))?;
                tracing::info!(table = %name, column = %column, "added a column the target table lacked");
            }
        }
    }
    if soft_delete && !existing.iter().any(|(name, _)| name == DELETED_AT) {
        connection
            .execute(&format!(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} timestamp with time zone",
                table.target.quoted(),
                quote_identifier(DELETED_AT)
            ))
            .await
            .map_err(pg("adding _sdc_deleted_at to", &name))?;
    }
    if !table.keys.is_empty() && !has_key_index(connection, &table).await? {
        return Err(ReplicaError::Unusable {
            table: name,
            detail: format!(
                "it has no primary key or unique index on exactly the source's key ({})\nHINT: ALTER TABLE {} ADD PRIMARY KEY ({});",
                table.keys.join(", "),
                table.target.quoted(),
                table.keys.iter().map(|key| quote_identifier(key)).collect::<Vec<_>>().join(", ")
            ),
        });
    }
    let empty = connection
        .query_one(&format!(
            "SELECT NOT EXISTS (SELECT 1 FROM {})",
            table.target.quoted()
        ))
        .await
        .map_err(pg("reading", &name))?
        .is_some_and(|row| row.get(0) == Some("t"));
    Ok((
        table,
        TargetStatus {
            created: false,
            empty,
            binary: builtin && same_types,
        },
    ))
}

/// `(column, type)` of an existing ordinary or partitioned table, empty when there is none.
async fn existing_columns(
    connection: &mut Connection,
    target: &TableName,
) -> Result<Vec<(String, String)>, ReplicaError> {
    let rows = connection
        .query(&format!(
            "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             WHERE n.nspname = {} AND c.relname = {} AND c.relkind IN ('r', 'p') ORDER BY a.attnum",
            quote_literal(&target.schema),
            quote_literal(&target.table)
        ))
        .await
        .map_err(pg("reading the columns of", &target.to_string()))?;
    Ok(rows.iter().map(Row::pair).collect())
}

/// Whether a unique, non-partial index covers exactly the key columns (ON CONFLICT needs one).
async fn has_key_index(
    connection: &mut Connection,
    table: &ReplicaTable,
) -> Result<bool, ReplicaError> {
    let mut keys = table.keys.clone();
    keys.sort();
    let wanted: Vec<String> = keys.iter().map(|key| quote_literal(key)).collect();
    let row = connection
        .query_one(&format!(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
             WHERE i.indrelid = {}::regclass AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL \
             AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text COLLATE \"C\") FROM pg_catalog.pg_attribute a \
                  WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)) = ARRAY[{}]::text[])",
            quote_literal(&table.target.quoted()),
            wanted.join(", ")
        ))
        .await
        .map_err(pg("reading the indexes of", &table.target.to_string()))?;
    Ok(row.is_some_and(|row| row.get(0) == Some("t")))
}

/// The `reg*` types and their arrays: their binary form is the oid of an object of the source
/// database (a table, a type, …), which names another object or none in the target; their
/// text form names the object, which the target resolves to its own.
const OBJECT_REFERENCE_TYPES: &[u32] = &[
    24, 2202, 2203, 2204, 2205, 2206, 3734, 3769, 4089, 4096,
    4191, // regproc … regcollation
    1008, 2207, 2208, 2209, 2210, 2211, 3735, 3770, 4090, 4097, 4192, // their arrays
];
