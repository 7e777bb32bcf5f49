//! A pipeline file: `source`, `destination`, and run options (`pgferry run -c pipeline.json`).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::connection::PgConnectionConfig;
use crate::config::destination::DestinationConfig;
use crate::config::error::ConfigError;
use crate::config::gdn_source::GdnSourceConfig;
use crate::config::pg_destination::PgDestinationConfig;
use crate::config::source::PgSourceConfig;
use crate::config::value::{boolean, reject_unknown_keys, string, unsigned};
use crate::pg::catalog::NumericMode;

const PIPELINE_KEYS: &[&str] = &[
    "source",
    "destination",
    "tables",
    "parallelism",
    "numeric_mode",
    "state_file",
    "full_table_mirror",
];

/// A table picked by name, with an optional collection of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSelection {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// Overrides the destination's naming rule.
    pub collection: Option<String>,
}

/// Everything `pgferry run` needs.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Where rows come from.
    pub source: PgSourceConfig,
    /// Where they go.
    pub destination: DestinationConfig,
    /// Explicit tables (else `filter_schemas` / `filter_table` of the source decide).
    pub tables: Vec<TableSelection>,
    /// Copy workers (default: the number of cores).
    pub parallelism: usize,
    /// How `numeric` columns are written.
    pub numeric_mode: NumericMode,
    /// Where progress (copied chunks, LSN bookmarks) is kept; `None` = next to the config file.
    pub state_file: Option<PathBuf>,
    /// FULL_TABLE: after a complete copy, remove what the destination holds of keys the table
    /// no longer has (default on; off for append-only destinations).
    pub full_table_mirror: bool,
}

fn object<'a>(
    value: Option<&'a Value>,
    key: &'static str,
    hint: &'static str,
) -> Result<&'a serde_json::Map<String, Value>, ConfigError> {
    match value {
        Some(Value::Object(map)) => Ok(map),
        Some(_) => Err(ConfigError::Invalid {
            key: key.into(),
            detail: "expected a JSON object".into(),
        }),
        None => Err(ConfigError::Missing { key, hint }),
    }
}

/// Splits `schema.table` (quotes allowed: `"My Schema"."T.1"`); a bare name means `public`.
pub fn parse_table_name(text: &str) -> Option<(String, String)> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = text.trim().chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '"' if quoted && chars.peek() == Some(&'"') => {
                current.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut current)),
            _ => current.push(ch),
        }
    }
    if quoted {
        return None;
    }
    parts.push(current);
    match parts.as_slice() {
        [table] if !table.is_empty() => Some(("public".into(), table.clone())),
        [schema, table] if !schema.is_empty() && !table.is_empty() => {
            Some((schema.clone(), table.clone()))
        }
        _ => None,
    }
}

fn table_selection(index: usize, value: &Value) -> Result<TableSelection, ConfigError> {
    let key = format!("tables[{index}]");
    let (name, collection) = match value {
        Value::String(name) => (name.clone(), None),
        Value::Object(map) => {
            reject_unknown_keys(map, &["table", "collection"])?;
            let name = string(map, "table")?.ok_or_else(|| ConfigError::Invalid {
                key: key.clone(),
                detail: "needs \"table\": \"schema.table\"".into(),
            })?;
            (name, string(map, "collection")?)
        }
        _ => {
            return Err(ConfigError::Invalid {
                key,
                detail: "expected \"schema.table\" or {\"table\": …, \"collection\": …}".into(),
            })
        }
    };
    let (schema, table) = parse_table_name(&name).ok_or_else(|| ConfigError::Invalid {
        key,
        detail: format!("{name:?} is not a table name; write schema.table"),
    })?;
    Ok(TableSelection {
        schema,
        table,
        collection,
    })
}

impl PipelineConfig {
    /// Reads and validates a pipeline object.
    pub fn from_object(
        root: &serde_json::Map<String, Value>,
    ) -> Result<PipelineConfig, ConfigError> {
        reject_unknown_keys(root, PIPELINE_KEYS)?;
        let source = PgSourceConfig::from_object(object(
            root.get("source"),
            "source",
            "the PostgreSQL source's settings (host, port, user, password, dbname, …)",
        )?)?;
        let destination = DestinationConfig::from_object(object(
            root.get("destination"),
            "destination",
            "where to write, e.g. {\"gdn_host\": …, \"fabric\": …, \"api_key\": …}",
        )?)?;
        let tables = match root.get("tables") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(index, item)| table_selection(index, item))
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(ConfigError::Invalid {
                    key: "tables".into(),
                    detail: "expected a list of \"schema.table\" names".into(),
                })
            }
        };
        let parallelism = match unsigned(root, "parallelism")? {
            Some(0) => {
                return Err(ConfigError::Invalid {
                    key: "parallelism".into(),
                    detail: "must be at least 1".into(),
                })
            }
            Some(workers) => workers as usize,
            None => std::thread::available_parallelism().map_or(2, usize::from),
        };
        let numeric_mode = match string(root, "numeric_mode")?.as_deref() {
            None | Some("auto") => NumericMode::Auto,
            Some("number") => NumericMode::Number,
            Some("string") => NumericMode::String,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "numeric_mode".into(),
                    detail: format!("expected \"auto\", \"number\" or \"string\", got {other:?}"),
                })
            }
        };
        Ok(PipelineConfig {
            source,
            destination,
            tables,
            parallelism,
            numeric_mode,
            state_file: string(root, "state_file")?.map(PathBuf::from),
            full_table_mirror: boolean(root, "full_table_mirror")?.unwrap_or(true),
        })
    }

    /// Reads a pipeline file; the state file defaults to `<config>.state.json` beside it.
    pub fn from_file(path: &Path) -> Result<PipelineConfig, ConfigError> {
        let root = crate::config::read_json_object(path)?;
        let mut config = PipelineConfig::from_object(&root)?;
        if config.state_file.is_none() {
            config.state_file = Some(default_state_file(path));
        }
        Ok(config)
    }
}

/// Top-level keys of a GDN → PostgreSQL pipeline file.
const GDN_TO_PG_KEYS: &[&str] = &["source", "destination", "state_file"];

/// A GDN → PostgreSQL pipeline: collections scanned, then followed through their change streams.
#[derive(Debug, Clone)]
pub struct GdnToPgConfig {
    /// The collections and how to read them.
    pub source: GdnSourceConfig,
    /// The database and how to load it.
    pub destination: PgDestinationConfig,
    /// Where "scan done" per collection is kept; `None` = next to the config file.
    pub state_file: Option<PathBuf>,
}

/// Any pipeline `pgferry run` can run, chosen by the `type` of its source and destination.
#[derive(Debug, Clone)]
pub enum Pipeline {
    /// PostgreSQL → GDN (or the null destination): snapshot, then optionally LOG_BASED changes.
    FromPostgres(Box<PipelineConfig>),
    /// GDN → PostgreSQL: collection scan, then the change stream.
    GdnToPg(Box<GdnToPgConfig>),
}

/// The `type` of a pipeline's `source` or `destination` object (`default` when absent).
fn kind(value: Option<&Value>, default: &'static str) -> Result<String, ConfigError> {
    match value {
        Some(Value::Object(map)) => Ok(string(map, "type")?.unwrap_or_else(|| default.to_owned())),
        _ => Ok(default.to_owned()),
    }
}

impl Pipeline {
    /// Reads a pipeline object: `source.type` is `postgres` (default) or `gdn`,
    /// `destination.type` is `gdn` (default), `null` or `postgres`.
    ///
    /// A PostgreSQL server that is not on this machine is verified with `verify-full` unless
    /// the file sets `sslmode` or `ssl` ([`PgConnectionConfig::apply_run_tls_default`]).
    pub fn from_object(root: &serde_json::Map<String, Value>) -> Result<Pipeline, ConfigError> {
        let mut pipeline = Pipeline::from_object_as_written(root)?;
        match &mut pipeline {
            Pipeline::FromPostgres(config) => {
                config.source.connection.apply_run_tls_default();
                if let DestinationConfig::Postgres(replica) = &mut config.destination {
                    replica.connection.apply_run_tls_default();
                }
            }
            Pipeline::GdnToPg(config) => config.destination.connection.apply_run_tls_default(),
        }
        Ok(pipeline)
    }

    fn from_object_as_written(
        root: &serde_json::Map<String, Value>,
    ) -> Result<Pipeline, ConfigError> {
        let source = kind(root.get("source"), "postgres")?;
        let destination = kind(root.get("destination"), "gdn")?;
        match (source.as_str(), destination.as_str()) {
            ("postgres", "gdn" | "null" | "postgres") => {
                PipelineConfig::from_object(root).map(|config| Pipeline::FromPostgres(Box::new(config)))
            }
            ("gdn", "postgres") => {
                reject_unknown_keys(root, GDN_TO_PG_KEYS)?;
                let source = GdnSourceConfig::from_object(object(
                    root.get("source"),
                    "source",
                    "the GDN source's settings (gdn_host, fabric, api_key, source_collection, …)",
                )?)?;
                let destination = PgDestinationConfig::from_object(
                    object(
                        root.get("destination"),
                        "destination",
                        "the PostgreSQL database to load (host, port, user, password, dbname, …)",
                    )?,
                    source.collections.len(),
                )?;
                Ok(Pipeline::GdnToPg(Box::new(GdnToPgConfig {
                    source,
                    destination,
                    state_file: string(root, "state_file")?.map(PathBuf::from),
                })))
            }
            ("gdn", "gdn" | "null") => Err(ConfigError::Invalid {
                key: "destination.type".into(),
                detail: format!(
                    "a {source} → {destination} pipeline is not supported; pgferry runs postgres → gdn, null or postgres, and gdn → postgres\nHINT: set \"type\" of the source and the destination to one of those pairs"
                ),
            }),
            ("postgres" | "gdn", other) => Err(ConfigError::Invalid {
                key: "destination.type".into(),
                detail: format!("unknown destination type {other:?}; expected \"gdn\", \"null\" or \"postgres\""),
            }),
            (other, _) => Err(ConfigError::Invalid {
                key: "source.type".into(),
                detail: format!("unknown source type {other:?}; expected \"postgres\" or \"gdn\""),
            }),
        }
    }

    /// The PostgreSQL connection of the pipeline (its source or its destination).
    pub fn pg_connection(&self) -> &PgConnectionConfig {
        match self {
            Pipeline::FromPostgres(config) => &config.source.connection,
            Pipeline::GdnToPg(config) => &config.destination.connection,
        }
    }

    /// Warnings `pgferry run` logs at start: an explicit opt-out of `verify-full` towards a
    /// PostgreSQL server that is not on this machine.
    pub fn tls_warnings(&self) -> Vec<String> {
        let mut warnings: Vec<String> = self
            .pg_connection()
            .tls_opt_out_warning()
            .into_iter()
            .collect();
        if let Pipeline::FromPostgres(config) = self {
            if let DestinationConfig::Postgres(replica) = &config.destination {
                warnings.extend(replica.connection.tls_opt_out_warning());
            }
        }
        warnings
    }

    /// Reads a pipeline file; the state file defaults to `<config>.state.json` beside it.
    pub fn from_file(path: &Path) -> Result<Pipeline, ConfigError> {
        let root = crate::config::read_json_object(path)?;
        let mut pipeline = Pipeline::from_object(&root)?;
        let state_file = match &mut pipeline {
            Pipeline::FromPostgres(config) => &mut config.state_file,
            Pipeline::GdnToPg(config) => &mut config.state_file,
        };
        if state_file.is_none() {
            *state_file = Some(default_state_file(path));
        }
        Ok(pipeline)
    }
}

/// `<config stem>.state.json` beside the config file.
fn default_state_file(path: &Path) -> PathBuf {
    let mut name = path.file_stem().unwrap_or_default().to_os_string();
    name.push(".state.json");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: Value) -> Result<PipelineConfig, ConfigError> {
        match value {
            Value::Object(map) => PipelineConfig::from_object(&map),
            _ => unreachable!("test configs are objects"),
        }
    }

    fn source() -> Value {
        serde_json::json!({"host": "db", "user": "u", "password": "p", "dbname": "shop"})
    }

    #[test]
    fn a_full_pipeline() {
        let config = parse(serde_json::json!({
            "source": source(),
            "destination": {"gdn_url": "http://127.0.0.1:8529", "api_key": "k"},
            "tables": ["public.orders", {"table": "\"Sales\".\"Line.Items\"", "collection": "items"}],
            "parallelism": 4,
            "numeric_mode": "string"
        }))
        .unwrap();
        assert_eq!(config.parallelism, 4);
        assert_eq!(config.numeric_mode, NumericMode::String);
        assert_eq!(
            config.tables[1],
            TableSelection {
                schema: "Sales".into(),
                table: "Line.Items".into(),
                collection: Some("items".into())
            }
        );
    }

    #[test]
    fn table_names_split_on_unquoted_dots() {
        assert_eq!(
            parse_table_name("orders"),
            Some(("public".into(), "orders".into()))
        );
        assert_eq!(
            parse_table_name("\"a\"\"b\".c"),
            Some(("a\"b".into(), "c".into()))
        );
        assert_eq!(parse_table_name("a.b.c"), None);
        assert_eq!(parse_table_name("\"open"), None);
        assert_eq!(parse_table_name(""), None);
    }

    #[test]
    fn missing_and_unknown_keys_are_named() {
        let error = parse(serde_json::json!({"source": source()}))
            .unwrap_err()
            .to_string();
        assert!(error.contains("destination"), "{error}");
        let error = parse(serde_json::json!({
            "source": source(), "destination": {"type": "null"}, "paralelism": 2
        }))
        .unwrap_err()
        .to_string();
        assert!(error.contains("did you mean \"parallelism\""), "{error}");
        let error = parse(serde_json::json!({
            "source": source(), "destination": {"type": "null"}, "tables": ["a.b.c"]
        }))
        .unwrap_err()
        .to_string();
        assert!(error.contains("tables[0]"), "{error}");
    }

    fn pipeline(value: Value) -> Result<Pipeline, ConfigError> {
        Pipeline::from_object(value.as_object().unwrap())
    }

    #[test]
    fn source_and_destination_types_choose_the_pipeline() {
        let old = pipeline(serde_json::json!({
            "source": source(), "destination": {"gdn_url": "http://h", "api_key": "k"}
        }))
        .unwrap();
        assert!(matches!(old, Pipeline::FromPostgres(_)));
        let gdn = pipeline(serde_json::json!({
            "source": {"type": "gdn", "gdn_url": "http://h", "api_key": "k", "source_collection": "c"},
            "destination": {"type": "postgres", "host": "db", "user": "u", "dbname": "dw"}
        }))
        .unwrap();
        let Pipeline::GdnToPg(gdn) = gdn else {
            panic!("expected GDN → PostgreSQL")
        };
        assert_eq!(gdn.source.collections, vec!["c"]);
        assert_eq!(gdn.destination.table_for("c"), "c");
        for (source, destination, expected) in [
            ("gdn", "gdn", "gdn → gdn pipeline is not supported"),
            ("gdn", "null", "gdn → null pipeline is not supported"),
            ("mysql", "gdn", "unknown source type \"mysql\""),
            ("gdn", "s3", "unknown destination type \"s3\""),
        ] {
            let error = pipeline(serde_json::json!({
                "source": {"type": source}, "destination": {"type": destination}
            }))
            .unwrap_err()
            .to_string();
            assert!(
                error.contains(expected),
                "{source} → {destination}: {error}"
            );
        }
        let error = pipeline(serde_json::json!({
            "source": {"type": "gdn", "gdn_url": "http://h", "api_key": "k", "source_collection": "c"},
            "destination": {"type": "postgres", "host": "db", "user": "u", "dbname": "dw"},
            "tables": ["a"]
        }))
        .unwrap_err()
        .to_string();
        assert!(error.contains("\"tables\""), "{error}");
    }

    #[test]
    fn a_postgres_destination_replicates_with_its_own_tls_default() {
        use crate::pg::SslMode;
        let replica = pipeline(serde_json::json!({
            "source": source(),
            "destination": {"type": "postgres", "host": "replica.example.com", "user": "u",
                            "dbname": "copy", "table_name": "{schema}_{table}"},
            "tables": ["public.orders"]
        }))
        .unwrap();
        let Pipeline::FromPostgres(config) = &replica else {
            panic!("expected a PostgreSQL source")
        };
        let DestinationConfig::Postgres(destination) = &config.destination else {
            panic!("expected a PostgreSQL destination")
        };
        assert_eq!(destination.connection.sslmode, SslMode::VerifyFull);
        assert_eq!(
            destination.table_for("public", "orders").unwrap(),
            ("public".into(), "public_orders".into())
        );
        let opted_out = pipeline(serde_json::json!({
            "source": source(),
            "destination": {"type": "postgres", "host": "replica.example.com", "user": "u",
                            "dbname": "copy", "sslmode": "disable"}
        }))
        .unwrap();
        let warnings = opted_out.tls_warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("replica.example.com"),
            "{}",
            warnings[0]
        );
    }

    #[test]
    fn remote_servers_default_to_verify_full_and_opt_outs_warn() {
        use crate::pg::SslMode;
        let gdn = serde_json::json!({"gdn_url": "http://h", "api_key": "k"});
        let run = |source: Value| {
            pipeline(serde_json::json!({"source": source, "destination": gdn})).unwrap()
        };
        let mode = |pipeline: &Pipeline| pipeline.pg_connection().sslmode;
        let remote = run(source());
        assert_eq!(mode(&remote), SslMode::VerifyFull);
        assert!(remote.tls_warnings().is_empty());
        for host in [
            "127.0.0.1",
            "localhost",
            "::1",
            "[::1]",
            "/var/run/postgresql",
        ] {
            let local = run(serde_json::json!({"host": host, "user": "u", "dbname": "d"}));
            assert_eq!(mode(&local), SslMode::Prefer, "{host}");
            assert!(local.tls_warnings().is_empty(), "{host}");
        }
        for (key, value, expected) in [
            ("sslmode", serde_json::json!("disable"), SslMode::Disable),
            ("sslmode", serde_json::json!("require"), SslMode::Require),
            ("sslmode", serde_json::json!("verify-ca"), SslMode::VerifyCa),
            ("ssl", serde_json::json!(false), SslMode::Prefer),
            ("ssl", serde_json::json!(true), SslMode::Require),
        ] {
            let mut explicit = source();
            explicit[key] = value;
            let opted_out = run(explicit);
            assert_eq!(mode(&opted_out), expected, "{key}");
            let warnings = opted_out.tls_warnings();
            assert_eq!(warnings.len(), 1, "{key}: {warnings:?}");
            assert!(warnings[0].contains(expected.as_str()), "{}", warnings[0]);
            assert!(warnings[0].contains("db:5432"), "{}", warnings[0]);
        }
        let mut full = source();
        full["sslmode"] = serde_json::json!("verify-full");
        assert!(run(full).tls_warnings().is_empty());
        let destination = pipeline(serde_json::json!({
            "source": {"type": "gdn", "gdn_url": "http://h", "api_key": "k", "source_collection": "c"},
            "destination": {"type": "postgres", "host": "warehouse.example.com", "user": "u", "dbname": "dw"}
        }))
        .unwrap();
        assert_eq!(mode(&destination), SslMode::VerifyFull);
    }
}
