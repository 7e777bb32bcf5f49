//! The PostgreSQL source's config keys, as `macrometa-source-postgres` read them.

use std::time::Duration;

use serde_json::Value;

use crate::config::value::{boolean, reject_unknown_keys, secret, string, unsigned};
use crate::config::ConfigError;
use crate::pg::replication::{default_slot_name, validate_slot_name};
use crate::pg::{ConnectOptions, SslMode, TlsMaterial};
use crate::secret::Secret;

/// How tables are replicated, with the old connector's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplicationMethod {
    /// Copy whole tables on every run.
    #[default]
    FullTable,
    /// Copy once, then stream changes from a logical replication slot.
    LogBased,
}

/// Keys a PostgreSQL source config may hold (the old tap's, plus `sslmode`, `connect_timeout`,
/// `application_name` and `type` for pipeline files).
pub const SOURCE_KEYS: &[&str] = &[
    "type",
    "host",
    "port",
    "user",
    "password",
    "dbname",
    "filter_schemas",
    "filter_table",
    "replication_method",
    "replication_slot",
    "ssl",
    "sslmode",
    "ssl_root_ca_cert",
    "ssl_client_certificate",
    "ssl_client_key",
    "ssl_client_password",
    "connect_timeout",
    "application_name",
    "break_at_end_lsn",
    "wal_sender_timeout",
    "debug_lsn",
    "itersize",
    "use_secondary",
    "secondary_host",
    "secondary_port",
    "tap_id",
];

/// A PostgreSQL source's settings.
#[derive(Debug, Clone)]
pub struct PgSourceConfig {
    /// Server host name, IP address, or Unix socket directory.
    pub host: String,
    /// Server port (default 5432).
    pub port: u16,
    /// Role to connect as.
    pub user: String,
    /// Its password (`password`, or the `PGPASSWORD` environment variable).
    pub password: Option<Secret>,
    /// Database to read.
    pub dbname: String,
    /// Schemas to scan (comma separated in the file).
    pub filter_schemas: Vec<String>,
    /// Table to scan, when the config names one.
    pub filter_table: Option<String>,
    /// FULL_TABLE or LOG_BASED.
    pub replication_method: ReplicationMethod,
    /// The slot for LOG_BASED (default `macrometa_<dbname>`).
    pub replication_slot: String,
    /// Whether the slot name was given explicitly (else the default, with `tap_id` fallback).
    pub replication_slot_explicit: bool,
    /// How much TLS to demand (`sslmode`, or `require` when `ssl` is true).
    pub sslmode: SslMode,
    /// PEM contents for TLS.
    pub tls: TlsMaterial,
    /// Limit for establishing a connection (seconds in the file; default 30).
    pub connect_timeout: Duration,
    /// Shown in `pg_stat_activity`.
    pub application_name: String,
    /// Stop streaming once past the WAL position read at start (batch runs).
    pub break_at_end_lsn: bool,
    /// `wal_sender_timeout` for the replication session, in milliseconds.
    pub wal_sender_timeout_ms: u64,
    /// Add `_sdc_lsn` to every record.
    pub debug_lsn: bool,
    /// Rows per round trip in FULL_TABLE reads.
    pub itersize: u64,
    /// Read FULL_TABLE from a replica.
    pub use_secondary: bool,
    /// The replica's host.
    pub secondary_host: Option<String>,
    /// The replica's port.
    pub secondary_port: Option<u16>,
    /// Suffix for the slot name.
    pub tap_id: Option<String>,
}

fn required(
    object: &serde_json::Map<String, Value>,
    key: &'static str,
    hint: &'static str,
) -> Result<String, ConfigError> {
    match string(object, key)? {
        Some(value) if !value.trim().is_empty() => Ok(value),
        _ => Err(ConfigError::Missing { key, hint }),
    }
}

fn port(object: &serde_json::Map<String, Value>, key: &str) -> Result<Option<u16>, ConfigError> {
    match unsigned(object, key)? {
        None => Ok(None),
        Some(value) => u16::try_from(value)
            .ok()
            .filter(|port| *port > 0)
            .map(Some)
            .ok_or_else(|| ConfigError::Invalid {
                key: key.to_owned(),
                detail: format!("{value} is not a TCP port (1–65535)"),
            }),
    }
}

fn pem(object: &serde_json::Map<String, Value>, key: &str) -> Result<Option<String>, ConfigError> {
    Ok(string(object, key)?.filter(|text| !text.trim().is_empty()))
}

impl PgSourceConfig {
    /// Reads and validates a source config object.
    pub fn from_object(
        object: &serde_json::Map<String, Value>,
    ) -> Result<PgSourceConfig, ConfigError> {
        reject_unknown_keys(object, SOURCE_KEYS)?;
        if let Some(kind) = string(object, "type")? {
            if kind != "postgres" {
                return Err(ConfigError::Invalid {
                    key: "type".into(),
                    detail: format!("expected \"postgres\" for a PostgreSQL source, got {kind:?}"),
                });
            }
        }
        let dbname = required(
            object,
            "dbname",
            "the database to read, e.g. \"dbname\": \"sales\"",
        )?;
        let replication_method = match string(object, "replication_method")?.as_deref() {
            None | Some("FULL_TABLE") => ReplicationMethod::FullTable,
            Some("LOG_BASED") => ReplicationMethod::LogBased,
            Some("INCREMENTAL") => {
                return Err(ConfigError::Invalid {
                    key: "replication_method".into(),
                    detail: "INCREMENTAL is not supported (the Macrometa connector never offered it); use LOG_BASED for changes or FULL_TABLE".into(),
                })
            }
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "replication_method".into(),
                    detail: format!("expected FULL_TABLE or LOG_BASED, got {other:?}"),
                })
            }
        };
        let (replication_slot, replication_slot_explicit) =
            match string(object, "replication_slot")? {
                Some(slot) if !slot.is_empty() => {
                    validate_slot_name(&slot).map_err(|error| ConfigError::Invalid {
                        key: "replication_slot".into(),
                        detail: error.to_string(),
                    })?;
                    (slot, true)
                }
                _ => (default_slot_name(&dbname), false),
            };
        let sslmode = match string(object, "sslmode")? {
            Some(mode) => {
                mode.parse()
                    .map_err(|error: crate::pg::PgError| ConfigError::Invalid {
                        key: "sslmode".into(),
                        detail: error.to_string(),
                    })?
            }
            None if boolean(object, "ssl")?.unwrap_or(false) => SslMode::Require,
            // The old connector used plain connections unless `ssl` was set; libpq's `prefer`
            // keeps them working and upgrades to TLS where the server offers it.
            None => SslMode::Prefer,
        };
        let password = match secret(object, "password")? {
            Some(password) => Some(password),
            None => std::env::var("PGPASSWORD").ok().map(Secret::new),
        };
        let connect_timeout = unsigned(object, "connect_timeout")?.unwrap_or(30);
        if connect_timeout == 0 {
            return Err(ConfigError::Invalid {
                key: "connect_timeout".into(),
                detail: "must be at least 1 second".into(),
            });
        }
        Ok(PgSourceConfig {
            host: required(
                object,
                "host",
                "the PostgreSQL server's host name or address",
            )?,
            port: port(object, "port")?.unwrap_or(5432),
            user: required(object, "user", "the role to connect as")?,
            password,
            dbname,
            filter_schemas: string(object, "filter_schemas")?
                .map(|schemas| {
                    schemas
                        .split(',')
                        .map(|schema| schema.trim().to_owned())
                        .filter(|schema| !schema.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            filter_table: string(object, "filter_table")?.filter(|table| !table.trim().is_empty()),
            replication_method,
            replication_slot,
            replication_slot_explicit,
            sslmode,
            tls: TlsMaterial {
                root_ca_pem: pem(object, "ssl_root_ca_cert")?,
                client_cert_pem: pem(object, "ssl_client_certificate")?,
                client_key_pem: secret(object, "ssl_client_key")?.filter(|key| !key.is_empty()),
                client_key_password: secret(object, "ssl_client_password")?
                    .filter(|key| !key.is_empty()),
            },
            connect_timeout: Duration::from_secs(connect_timeout),
            application_name: string(object, "application_name")?
                .unwrap_or_else(|| "pgferry".into()),
            break_at_end_lsn: boolean(object, "break_at_end_lsn")?.unwrap_or(true),
            wal_sender_timeout_ms: unsigned(object, "wal_sender_timeout")?.unwrap_or(3_600_000),
            debug_lsn: boolean(object, "debug_lsn")?.unwrap_or(false),
            itersize: unsigned(object, "itersize")?.unwrap_or(20_000).max(1),
            use_secondary: boolean(object, "use_secondary")?.unwrap_or(false),
            secondary_host: string(object, "secondary_host")?,
            secondary_port: port(object, "secondary_port")?,
            tap_id: string(object, "tap_id")?.filter(|id| !id.is_empty()),
        })
    }

    /// Reads a config file holding either a source config or a pipeline with a `source` object.
    pub fn from_file(path: &std::path::Path) -> Result<PgSourceConfig, ConfigError> {
        let object = crate::config::read_json_object(path)?;
        match object.get("source") {
            Some(Value::Object(source)) => PgSourceConfig::from_object(source),
            Some(_) => Err(ConfigError::Invalid {
                key: "source".into(),
                detail: "expected an object with the source's settings".into(),
            }),
            None => PgSourceConfig::from_object(&object),
        }
    }

    /// Connection options for the primary server.
    pub fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            password: self.password.clone(),
            dbname: self.dbname.clone(),
            application_name: self.application_name.clone(),
            sslmode: self.sslmode,
            tls: self.tls.clone(),
            connect_timeout: self.connect_timeout,
            replication: false,
        }
    }

    /// The slot names to look for, in order: the configured or default one, then the
    /// `tap_id` variant the old connector tried second.
    pub fn slot_candidates(&self) -> Vec<String> {
        let mut candidates = vec![self.replication_slot.clone()];
        if let (false, Some(tap_id)) = (self.replication_slot_explicit, &self.tap_id) {
            let mut with_tap = default_slot_name(&format!("{}_{tap_id}", self.dbname));
            with_tap.truncate(63);
            candidates.push(with_tap);
        }
        candidates
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<PgSourceConfig, ConfigError> {
        PgSourceConfig::from_object(value.as_object().unwrap())
    }

    #[test]
    fn reads_the_old_taps_config() {
        let config = parse(json!({
            "host": "db", "port": "5433", "user": "u", "password": "pw", "dbname": "Sales-DB",
            "filter_schemas": "public, sales", "filter_table": "orders",
            "replication_method": "LOG_BASED", "ssl": "true", "tap_id": "t1"
        }))
        .unwrap();
        assert_eq!(config.port, 5433);
        assert_eq!(config.filter_schemas, vec!["public", "sales"]);
        assert_eq!(config.replication_method, ReplicationMethod::LogBased);
        assert_eq!(config.sslmode, SslMode::Require);
        assert_eq!(config.replication_slot, "macrometa_sales_db");
        assert_eq!(
            config.slot_candidates(),
            vec!["macrometa_sales_db", "macrometa_sales_db_t1"]
        );
        assert!(config.break_at_end_lsn);
        assert_eq!(config.itersize, 20_000);
    }

    #[test]
    fn errors_name_the_key_and_the_fix() {
        let missing = parse(json!({"host": "h", "user": "u"})).unwrap_err();
        assert!(missing.to_string().contains("\"dbname\""), "{missing}");
        let typo = parse(json!({"host": "h", "user": "u", "dbname": "d", "replication_slt": "x"}))
            .unwrap_err();
        assert!(
            typo.to_string()
                .contains("did you mean \"replication_slot\""),
            "{typo}"
        );
        let method = parse(
            json!({"host": "h", "user": "u", "dbname": "d", "replication_method": "LOGBASED"}),
        )
        .unwrap_err();
        assert!(
            method.to_string().contains("FULL_TABLE or LOG_BASED"),
            "{method}"
        );
        let slot =
            parse(json!({"host": "h", "user": "u", "dbname": "d", "replication_slot": "My-Slot"}))
                .unwrap_err();
        assert!(slot.to_string().contains("lower-case"), "{slot}");
        let port =
            parse(json!({"host": "h", "user": "u", "dbname": "d", "port": 70000})).unwrap_err();
        assert!(port.to_string().contains("1–65535"), "{port}");
    }
}
