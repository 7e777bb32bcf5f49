//! A PostgreSQL destination (`"destination": {"type": "postgres", …}`) for GDN sources: the
//! connection keys the PostgreSQL source uses, where tables go, batching and deletes.

use std::time::Duration;

use serde_json::Value;

use crate::config::connection::PgConnectionConfig;
use crate::config::destination::positive;
use crate::config::error::ConfigError;
use crate::config::value::{boolean, string};

/// Keys a PostgreSQL destination knows besides the connection keys.
const PG_DESTINATION_KEYS: &[&str] = &[
    "type",
    "target_schema",
    "table_name",
    "batch_size_rows",
    "batch_flush_interval",
    "hard_delete",
    "schema_evolution",
    "parallelism",
    "batch_size_bytes",
    "max_columns",
];

/// Default `batch_size_bytes`: with the pages read ahead and the batches being committed, it
/// keeps a GDN → PostgreSQL run under its memory budget whatever the documents' sizes.
pub const DEFAULT_BATCH_SIZE_BYTES: u64 = 8 << 20;
/// Default `max_columns`: attribute columns per table before the rest go to the overflow
/// column, well below PostgreSQL's 1,600 (which counts every column, and a row must still fit
/// an 8 kB page).
pub const DEFAULT_MAX_COLUMNS: u64 = 1000;
/// Most attribute columns `max_columns` allows (PostgreSQL's 1,600, less `_key`,
/// `_sdc_deleted_at`, the overflow column and room for widened columns).
pub const MAX_MAX_COLUMNS: u64 = 1590;

/// Most connections one collection's scan loads over.
pub const MAX_PARALLELISM: u64 = 16;

/// Settings of a PostgreSQL destination.
#[derive(Debug, Clone)]
pub struct PgDestinationConfig {
    /// Where and how to connect.
    pub connection: PgConnectionConfig,
    /// Schema of the tables (created when missing).
    pub target_schema: String,
    /// Table naming rule: `{collection}` is replaced by the collection's name.
    pub table_name: String,
    /// Rows per transaction (scan pages and stream messages are cut at this count).
    pub batch_size_rows: usize,
    /// Bytes of documents per transaction: scan and stream batches are cut here too.
    pub batch_size_bytes: usize,
    /// Attribute columns per table; attributes beyond go to the `jsonb` overflow column.
    pub max_columns: usize,
    /// Stream messages wait at most this long before their batch is committed (and acked).
    pub batch_flush_interval: Duration,
    /// A GDN delete deletes the row (true) or sets `_sdc_deleted_at` and keeps it (false).
    pub hard_delete: bool,
    /// Connections a collection's scan commits its batches over at once (PostgreSQL parses
    /// and indexes each COPY on one core; the stream afterwards uses one).
    pub parallelism: usize,
}

/// Seconds, whole or fractional (`0.5`), at least one millisecond.
pub(crate) fn seconds(
    object: &serde_json::Map<String, Value>,
    key: &str,
    default: f64,
) -> Result<Duration, ConfigError> {
    let invalid = || ConfigError::Invalid {
        key: key.to_owned(),
        detail: "expected seconds, e.g. 1 or 0.5 (at least 0.001)".into(),
    };
    let value = match object.get(key) {
        None | Some(Value::Null) => default,
        Some(Value::Number(number)) => number.as_f64().ok_or_else(invalid)?,
        Some(Value::String(text)) => text.trim().parse::<f64>().map_err(|_| invalid())?,
        Some(_) => return Err(invalid()),
    };
    if !value.is_finite() || !(0.001..=86_400.0).contains(&value) {
        return Err(invalid());
    }
    Ok(Duration::from_secs_f64(value))
}

impl PgDestinationConfig {
    /// Reads and validates a PostgreSQL destination object for `collections` (a naming rule
    /// without `{collection}` is only allowed for one collection).
    pub fn from_object(
        object: &serde_json::Map<String, Value>,
        collections: usize,
    ) -> Result<PgDestinationConfig, ConfigError> {
        let connection = PgConnectionConfig::from_destination(
            object,
            PG_DESTINATION_KEYS,
            "the database to load into, e.g. \"dbname\": \"warehouse\"",
        )?;
        let table_name = string(object, "table_name")?
            .filter(|name| !name.trim().is_empty())
            .unwrap_or_else(|| "{collection}".into());
        if collections > 1 && !table_name.contains("{collection}") {
            return Err(ConfigError::Invalid {
                key: "table_name".into(),
                detail: format!("{table_name:?} must contain {{collection}} when several collections are read, so each gets a table of its own"),
            });
        }
        if table_name.len() > 63 && !table_name.contains("{collection}") {
            return Err(ConfigError::Invalid {
                key: "table_name".into(),
                detail: "longer than 63 bytes, the longest name PostgreSQL keeps".into(),
            });
        }
        match string(object, "schema_evolution")?.as_deref() {
            None | Some("widen") => {}
            Some("rename") => {
                return Err(ConfigError::Invalid {
                    key: "schema_evolution".into(),
                    detail: "\"rename\" is not available for GDN sources: their columns are inferred from documents and widened; use \"widen\" (the default)".into(),
                })
            }
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "schema_evolution".into(),
                    detail: format!("expected \"widen\", got {other:?}"),
                })
            }
        }
        Ok(PgDestinationConfig {
            connection,
            target_schema: string(object, "target_schema")?
                .filter(|schema| !schema.trim().is_empty())
                .unwrap_or_else(|| "public".into()),
            table_name,
            batch_size_rows: positive(object, "batch_size_rows", 10_000)? as usize,
            batch_size_bytes: positive(object, "batch_size_bytes", DEFAULT_BATCH_SIZE_BYTES)?
                as usize,
            max_columns: match positive(object, "max_columns", DEFAULT_MAX_COLUMNS)? {
                n if n > MAX_MAX_COLUMNS => {
                    return Err(ConfigError::Invalid {
                        key: "max_columns".into(),
                        detail: format!("{n} is above {MAX_MAX_COLUMNS}; PostgreSQL keeps at most 1,600 columns per table, pgferry's own included"),
                    })
                }
                n => n as usize,
            },
            batch_flush_interval: seconds(object, "batch_flush_interval", 1.0)?,
            hard_delete: boolean(object, "hard_delete")?.unwrap_or(true),
            parallelism: match positive(object, "parallelism", 2)? {
                n if n > MAX_PARALLELISM => {
                    return Err(ConfigError::Invalid {
                        key: "parallelism".into(),
                        detail: format!("{n} is above {MAX_PARALLELISM}; each is a PostgreSQL connection working at once"),
                    })
                }
                n => n as usize,
            },
        })
    }

    /// The table `collection` is loaded into.
    pub fn table_for(&self, collection: &str) -> String {
        self.table_name.replace("{collection}", collection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: Value, collections: usize) -> Result<PgDestinationConfig, ConfigError> {
        PgDestinationConfig::from_object(value.as_object().unwrap(), collections)
    }

    #[test]
    fn connection_keys_and_defaults() {
        let config = parse(
            serde_json::json!({"type": "postgres", "host": "db", "user": "u", "dbname": "dw",
                "batch_flush_interval": 0.25}),
            1,
        )
        .unwrap();
        assert_eq!(config.connection.dbname, "dw");
        assert_eq!(config.target_schema, "public");
        assert_eq!(config.table_for("orders"), "orders");
        assert_eq!(config.batch_size_rows, 10_000);
        assert_eq!(config.batch_flush_interval, Duration::from_millis(250));
        assert!(config.hard_delete);
        assert_eq!(config.parallelism, 2);
        assert_eq!(config.batch_size_bytes, 8 << 20);
        assert_eq!(config.max_columns, 1000);
    }

    #[test]
    fn mistakes_name_the_key() {
        let base = serde_json::json!({"host": "db", "user": "u", "dbname": "dw"});
        let with = |key: &str, value: Value, collections| {
            let mut object = base.clone();
            object[key] = value;
            parse(object, collections).unwrap_err().to_string()
        };
        assert!(with("hard_delet", true.into(), 1).contains("did you mean \"hard_delete\""));
        assert!(with("table_name", "all".into(), 2).contains("{collection}"));
        assert!(with("schema_evolution", "rename".into(), 1).contains("widen"));
        assert!(with("batch_flush_interval", (-1).into(), 1).contains("seconds"));
        assert!(with("batch_size_rows", 0.into(), 1).contains("at least 1"));
        assert!(with("max_columns", 1600.into(), 1).contains("1,600 columns"));
        assert!(with("batch_size_bytes", 0.into(), 1).contains("batch_size_bytes"));
    }
}
