//! The PostgreSQL source's config keys, as `macrometa-source-postgres` read them.

use serde_json::Value;

use crate::config::connection::{port, PgConnectionConfig};
use crate::config::publication::Publications;
use crate::config::value::{boolean, reject_unknown_keys, string, unsigned};
use crate::config::ConfigError;
use crate::pg::replication::{default_slot_name, validate_slot_name};
use crate::pg::ConnectOptions;

/// How tables are replicated, with the old connector's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplicationMethod {
    /// Copy whole tables on every run.
    #[default]
    FullTable,
    /// Copy once, then stream changes from a logical replication slot.
    LogBased,
}

/// The wal2json output format LOG_BASED streaming asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wal2JsonFormat {
    /// One transaction per message, sent in chunks (the old connector's format; wal2json < 2.0
    /// has only this). wal2json never reports TRUNCATE in it.
    V1,
    /// One message per change (wal2json ≥ 2.0): TRUNCATE reported, smaller messages.
    #[default]
    V2,
}

/// The logical decoding output plugin LOG_BASED streaming uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputPlugin {
    /// wal2json (the old connector's), JSON text.
    Wal2Json,
    /// pgoutput, built into PostgreSQL ≥ 10 (managed services offer it), binary framing.
    PgOutput,
}

impl OutputPlugin {
    /// The name `CREATE_REPLICATION_SLOT` and `pg_replication_slots` use.
    pub fn name(self) -> &'static str {
        match self {
            OutputPlugin::Wal2Json => "wal2json",
            OutputPlugin::PgOutput => "pgoutput",
        }
    }

    /// The plugin a slot's `plugin` column names, when pgferry can decode it.
    pub fn from_name(name: &str) -> Option<OutputPlugin> {
        match name {
            "wal2json" => Some(OutputPlugin::Wal2Json),
            "pgoutput" => Some(OutputPlugin::PgOutput),
            _ => None,
        }
    }
}

/// The `plugin` key: a plugin forced by the config, or `auto` (the default), which keeps an
/// existing slot's plugin and gives a new slot pgoutput where a publication can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PluginChoice {
    /// Chosen at start from the slot, the publication and the server's allow-list.
    #[default]
    Auto,
    /// Set in the config: this plugin or an error.
    Forced(OutputPlugin),
}

impl PluginChoice {
    /// The config's spelling: `auto`, `wal2json` or `pgoutput`.
    pub fn name(self) -> &'static str {
        match self {
            PluginChoice::Auto => "auto",
            PluginChoice::Forced(plugin) => plugin.name(),
        }
    }
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
    "heartbeat_interval",
    "table_check_interval",
    "max_reconnect_attempts",
    "wal2json_format_version",
    "plugin",
    "publication",
    "pgoutput_streaming",
    "pgoutput_binary",
];

/// A PostgreSQL source's settings.
#[derive(Debug, Clone)]
pub struct PgSourceConfig {
    /// Where and how to connect (host, port, user, password, dbname, TLS, timeouts).
    pub connection: PgConnectionConfig,
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
    /// Stop streaming once past the WAL position read at start (batch runs); `None` when the
    /// file does not say (the old tap's default is `true`, `pgferry run`'s is to stream on).
    pub break_at_end_lsn: Option<bool>,
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
    /// LOG_BASED: emit a logical message this often (seconds; `None` = never) so a quiet
    /// database still shows progress and lag.
    pub heartbeat_interval: Option<std::time::Duration>,
    /// LOG_BASED, a run without end: how often to look for tables that joined the selection
    /// (seconds; `None` = never), so they are copied and streamed without a restart by hand.
    pub table_check_interval: Option<std::time::Duration>,
    /// LOG_BASED: consecutive reconnects after transient failures before giving up (0 = never
    /// give up).
    pub max_reconnect_attempts: u32,
    /// LOG_BASED: wal2json's `format-version`.
    pub wal2json_format: Wal2JsonFormat,
    /// LOG_BASED: the output plugin, or `auto`.
    pub plugin: PluginChoice,
    /// LOG_BASED with pgoutput: the publications to read (one name is created for the selected
    /// tables if missing; several must all exist).
    pub publication: Publications,
    /// LOG_BASED with pgoutput: stream large in-progress transactions (protocol 2, PostgreSQL
    /// ≥ 14) instead of letting the server spill them.
    pub pgoutput_streaming: bool,
    /// LOG_BASED with pgoutput: ask for values in binary (PostgreSQL ≥ 14, when every column
    /// has a binary decoder), cheaper to produce and to decode than text.
    pub pgoutput_binary: bool,
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
        let connection = PgConnectionConfig::from_object(
            object,
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
                _ => (default_slot_name(&connection.dbname), false),
            };
        let publication = Publications::from_value(object.get("publication"))?
            .unwrap_or_else(|| Publications::default_for_slot(&replication_slot));
        Ok(PgSourceConfig {
            connection,
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
            break_at_end_lsn: boolean(object, "break_at_end_lsn")?,
            wal_sender_timeout_ms: unsigned(object, "wal_sender_timeout")?.unwrap_or(3_600_000),
            debug_lsn: boolean(object, "debug_lsn")?.unwrap_or(false),
            itersize: unsigned(object, "itersize")?.unwrap_or(20_000).max(1),
            use_secondary: boolean(object, "use_secondary")?.unwrap_or(false),
            secondary_host: string(object, "secondary_host")?,
            secondary_port: port(object, "secondary_port")?,
            tap_id: string(object, "tap_id")?.filter(|id| !id.is_empty()),
            heartbeat_interval: unsigned(object, "heartbeat_interval")?
                .filter(|seconds| *seconds > 0)
                .map(std::time::Duration::from_secs),
            table_check_interval: Some(unsigned(object, "table_check_interval")?.unwrap_or(60))
                .filter(|seconds| *seconds > 0)
                .map(std::time::Duration::from_secs),
            plugin: match string(object, "plugin")?.as_deref() {
                None | Some("auto") | Some("") => PluginChoice::Auto,
                Some(name) => match OutputPlugin::from_name(name) {
                    Some(plugin) => PluginChoice::Forced(plugin),
                    None => {
                        return Err(ConfigError::Invalid {
                            key: "plugin".into(),
                            detail: format!(
                                "expected \"auto\", \"pgoutput\" or \"wal2json\", got {name:?}"
                            ),
                        })
                    }
                },
            },
            publication,
            pgoutput_streaming: boolean(object, "pgoutput_streaming")?.unwrap_or(true),
            pgoutput_binary: boolean(object, "pgoutput_binary")?.unwrap_or(true),
            wal2json_format: match unsigned(object, "wal2json_format_version")? {
                None | Some(2) => Wal2JsonFormat::V2,
                Some(1) => Wal2JsonFormat::V1,
                Some(other) => {
                    return Err(ConfigError::Invalid {
                        key: "wal2json_format_version".into(),
                        detail: format!("expected 1 or 2, got {other}"),
                    })
                }
            },
            max_reconnect_attempts: match unsigned(object, "max_reconnect_attempts")? {
                None => 20,
                Some(attempts) => u32::try_from(attempts).map_err(|_| ConfigError::Invalid {
                    key: "max_reconnect_attempts".into(),
                    detail: format!("{attempts} is too large; use 0 to retry forever"),
                })?,
            },
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
        self.connection.connect_options()
    }

    /// The slot names to look for, in order: the configured or default one, then the
    /// `tap_id` variant the old connector tried second.
    pub fn slot_candidates(&self) -> Vec<String> {
        let mut candidates = vec![self.replication_slot.clone()];
        if let (false, Some(tap_id)) = (self.replication_slot_explicit, &self.tap_id) {
            let mut with_tap = default_slot_name(&format!("{}_{tap_id}", self.connection.dbname));
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
        assert_eq!(config.connection.port, 5433);
        assert_eq!(config.filter_schemas, vec!["public", "sales"]);
        assert_eq!(config.replication_method, ReplicationMethod::LogBased);
        assert_eq!(config.connection.sslmode, crate::pg::SslMode::Require);
        assert_eq!(config.replication_slot, "macrometa_sales_db");
        assert_eq!(
            config.slot_candidates(),
            vec!["macrometa_sales_db", "macrometa_sales_db_t1"]
        );
        assert_eq!(
            config.break_at_end_lsn, None,
            "unset: each command has its default"
        );
        assert_eq!(config.itersize, 20_000);
        assert_eq!(config.heartbeat_interval, None);
        assert_eq!(config.max_reconnect_attempts, 20);
    }

    #[test]
    fn streaming_knobs() {
        let config = parse(json!({
            "host": "h", "user": "u", "dbname": "d", "break_at_end_lsn": "false",
            "heartbeat_interval": 30, "max_reconnect_attempts": "0"
        }))
        .unwrap();
        assert_eq!(config.break_at_end_lsn, Some(false));
        assert_eq!(
            config.heartbeat_interval,
            Some(std::time::Duration::from_secs(30))
        );
        assert_eq!(config.max_reconnect_attempts, 0);
        assert_eq!(config.wal2json_format, Wal2JsonFormat::V2);
        assert_eq!(config.plugin, PluginChoice::Auto, "auto by default");
        assert_eq!(
            config.publication.names(),
            std::slice::from_ref(&config.replication_slot)
        );
        let pgoutput = parse(json!({"host": "h", "user": "u", "dbname": "d", "plugin": "pgoutput", "publication": "pub1", "pgoutput_streaming": false}))
            .unwrap();
        assert_eq!(
            pgoutput.plugin,
            PluginChoice::Forced(OutputPlugin::PgOutput)
        );
        let wal2json =
            parse(json!({"host": "h", "user": "u", "dbname": "d", "plugin": "wal2json"})).unwrap();
        assert_eq!(
            wal2json.plugin,
            PluginChoice::Forced(OutputPlugin::Wal2Json)
        );
        assert_eq!(pgoutput.publication.names(), ["pub1"]);
        let several =
            parse(json!({"host": "h", "user": "u", "dbname": "d", "publication": ["p1", "p2"]}))
                .unwrap();
        assert_eq!(several.publication.names(), ["p1", "p2"]);
        assert!(!pgoutput.pgoutput_streaming);
        assert!(pgoutput.pgoutput_binary, "binary values by default");
        let unknown =
            parse(json!({"host": "h", "user": "u", "dbname": "d", "plugin": "decoderbufs"}))
                .unwrap_err();
        assert!(unknown.to_string().contains("\"pgoutput\""), "{unknown}");
        let v1 =
            parse(json!({"host": "h", "user": "u", "dbname": "d", "wal2json_format_version": "1"}))
                .unwrap();
        assert_eq!(v1.wal2json_format, Wal2JsonFormat::V1);
        let v3 =
            parse(json!({"host": "h", "user": "u", "dbname": "d", "wal2json_format_version": 3}))
                .unwrap_err();
        assert!(v3.to_string().contains("expected 1 or 2"), "{v3}");
        let off = parse(json!({"host": "h", "user": "u", "dbname": "d", "heartbeat_interval": 0}))
            .unwrap();
        assert_eq!(off.heartbeat_interval, None);
        let huge = parse(
            json!({"host": "h", "user": "u", "dbname": "d", "max_reconnect_attempts": 1u64 << 40}),
        )
        .unwrap_err();
        assert!(
            huge.to_string().contains("max_reconnect_attempts"),
            "{huge}"
        );
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
