//! A PostgreSQL destination for a PostgreSQL source (`"destination": {"type": "postgres", …}`
//! in a pipeline whose source is PostgreSQL): the connection keys, where each source table
//! goes, and how streamed changes are committed.

use std::time::Duration;

use serde_json::Value;

use crate::config::connection::PgConnectionConfig;
use crate::config::destination::positive;
use crate::config::error::ConfigError;
use crate::config::pg_destination::seconds;
use crate::config::value::{boolean, string};

/// Keys a replica destination knows besides the connection keys.
const REPLICA_KEYS: &[&str] = &[
    "type",
    "target_schema",
    "table_name",
    "batch_size_rows",
    "batch_flush_interval",
    "hard_delete",
];

/// PostgreSQL's longest identifier, in bytes (`NAMEDATALEN - 1`).
const MAX_IDENTIFIER_BYTES: usize = 63;

/// Settings of a PostgreSQL destination fed by a PostgreSQL source (replication).
#[derive(Debug, Clone)]
pub struct ReplicaDestinationConfig {
    /// Where and how to connect.
    pub connection: PgConnectionConfig,
    /// One schema for every table; `None` keeps each source table's schema.
    pub target_schema: Option<String>,
    /// Table naming rule: `{schema}` and `{table}` are replaced by the source's names.
    pub table_name: String,
    /// Streamed changes pending before they are committed (one target transaction).
    pub batch_size_rows: usize,
    /// The longest a streamed change waits before its transaction is committed.
    pub batch_flush_interval: Duration,
    /// A source DELETE deletes the row (true) or sets `_sdc_deleted_at` and keeps it (false).
    pub hard_delete: bool,
}

impl ReplicaDestinationConfig {
    /// Reads and validates a replica destination object.
    pub fn from_object(
        object: &serde_json::Map<String, Value>,
    ) -> Result<ReplicaDestinationConfig, ConfigError> {
        let connection = PgConnectionConfig::from_destination(
            object,
            REPLICA_KEYS,
            "the database to replicate into, e.g. \"dbname\": \"replica\"",
        )?;
        let table_name = string(object, "table_name")?
            .filter(|name| !name.trim().is_empty())
            .unwrap_or_else(|| "{table}".into());
        if !table_name.contains("{table}") {
            return Err(ConfigError::Invalid {
                key: "table_name".into(),
                detail: format!("{table_name:?} must contain {{table}}, so each source table gets a table of its own (e.g. \"{{table}}_copy\")"),
            });
        }
        let target_schema =
            string(object, "target_schema")?.filter(|schema| !schema.trim().is_empty());
        if let Some(schema) = &target_schema {
            if schema.len() > MAX_IDENTIFIER_BYTES {
                return Err(ConfigError::Invalid {
                    key: "target_schema".into(),
                    detail: "longer than 63 bytes, the longest name PostgreSQL keeps".into(),
                });
            }
        }
        Ok(ReplicaDestinationConfig {
            connection,
            target_schema,
            table_name,
            batch_size_rows: positive(object, "batch_size_rows", 10_000)? as usize,
            batch_flush_interval: seconds(object, "batch_flush_interval", 0.05)?,
            hard_delete: boolean(object, "hard_delete")?.unwrap_or(true),
        })
    }

    /// The `(schema, table)` a source table is replicated into, or why that name cannot be used.
    pub fn table_for(&self, schema: &str, table: &str) -> Result<(String, String), String> {
        let target_schema = self
            .target_schema
            .clone()
            .unwrap_or_else(|| schema.to_owned());
        let name = self
            .table_name
            .replace("{schema}", schema)
            .replace("{table}", table);
        if name.len() > MAX_IDENTIFIER_BYTES {
            return Err(format!(
                "the target table name {name:?} (for {schema}.{table}) is longer than 63 bytes, the longest name PostgreSQL keeps\nHINT: choose a shorter \"table_name\" rule in the destination, or map the table with \"tables\": [{{\"table\": \"{schema}.{table}\", \"collection\": \"<target table>\"}}]"
            ));
        }
        Ok((target_schema, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: Value) -> Result<ReplicaDestinationConfig, ConfigError> {
        ReplicaDestinationConfig::from_object(value.as_object().unwrap())
    }

    #[test]
    fn tables_keep_their_schema_and_name_by_default() {
        let config = parse(
            serde_json::json!({"type": "postgres", "host": "db", "user": "u", "dbname": "replica"}),
        )
        .unwrap();
        assert_eq!(
            config.table_for("sales", "orders").unwrap(),
            ("sales".into(), "orders".into())
        );
        assert!(config.hard_delete);
        assert_eq!(config.batch_flush_interval, Duration::from_millis(50));
        assert_eq!(config.batch_size_rows, 10_000);
    }

    #[test]
    fn naming_rules_and_their_limits() {
        let config = parse(
            serde_json::json!({"type": "postgres", "host": "db", "user": "u",
            "dbname": "replica", "target_schema": "mirror", "table_name": "{schema}_{table}"}),
        )
        .unwrap();
        assert_eq!(
            config.table_for("sales", "orders").unwrap(),
            ("mirror".into(), "sales_orders".into())
        );
        let long = "t".repeat(60);
        let error = config.table_for("sales", &long).unwrap_err();
        assert!(error.contains("longer than 63 bytes"), "{error}");
        let error = parse(serde_json::json!({"host": "db", "user": "u", "dbname": "r",
            "table_name": "everything"}))
        .unwrap_err()
        .to_string();
        assert!(error.contains("must contain {table}"), "{error}");
        let error = parse(serde_json::json!({"host": "db", "user": "u", "dbname": "r",
            "target_collection": "x"}))
        .unwrap_err()
        .to_string();
        assert!(error.contains("target_collection"), "{error}");
    }
}
