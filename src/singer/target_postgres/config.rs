//! The Singer target's config keys, as `macrometa-target-postgres` (pipelinewise) read them.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::config::{
    boolean, lenient_keys, string, unsigned, ConfigError, PgConnectionConfig, CONNECTION_KEYS,
};

/// Keys the target knows besides the connection keys.
const TARGET_KEYS: &[&str] = &[
    "default_target_schema",
    "target_table",
    "hard_delete",
    "batch_size_rows",
    "batch_flush_interval",
    "batch_flush_min_time_gap",
    "add_metadata_columns",
    "primary_key_required",
    "validate_records",
    "parallelism",
    "max_parallelism",
    "flush_all_streams",
    "data_flattening_max_level",
    "schema_mapping",
    "temp_dir",
    "schema_evolution",
    "copy_format",
    "default_target_schema_select_permission",
    "default_target_schema_select_permissions",
    "disable_table_cache",
];

/// Keys of a `schema_mapping` entry, as pipelinewise wrote them.
const SCHEMA_MAPPING_KEYS: &[&str] = &[
    "target_schema",
    "target_schema_select_permissions",
    "indices",
];

/// What a `schema_mapping` entry asks for besides the target schema.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaExtras {
    /// Roles granted USAGE on the schema and SELECT on its tables, instead of the default ones.
    pub grantees: Option<Vec<String>>,
    /// Table name → indexes to create, each a comma-separated column list (`"a,b"`).
    pub indices: HashMap<String, Vec<String>>,
}

/// Grantees as the old target read them: a role name or a list of them. A dict (as
/// pipelinewise's Snowflake target took) was accepted and ignored by the PostgreSQL target:
/// the same here, with a warning.
fn grantees(
    value: Option<&Value>,
    key: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<Vec<String>>, ConfigError> {
    let invalid = || ConfigError::Invalid {
        key: key.to_owned(),
        detail: "expected a role name or a list of role names, e.g. [\"analysts\"]".into(),
    };
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(role)) if role.trim().is_empty() => Ok(None),
        Some(Value::String(role)) => Ok(Some(vec![role.trim().to_owned()])),
        Some(Value::Array(roles)) => roles
            .iter()
            .map(|role| {
                role.as_str()
                    .map(|role| role.trim().to_owned())
                    .ok_or_else(invalid)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|roles| Some(roles.into_iter().filter(|role| !role.is_empty()).collect())),
        Some(Value::Object(_)) => {
            warnings.push(format!(
                "{key}: an object of users and groups is ignored, as the old target ignored it; give a role name or a list of role names"
            ));
            Ok(None)
        }
        Some(_) => Err(invalid()),
    }
}

/// What to do with a column whose type changed between SCHEMA messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchemaEvolution {
    /// The old target's rule: rename the column to `<col>_<YYYYMMDD_HHMM>`, add it anew.
    #[default]
    Rename,
    /// Change the column's type to one that holds both the old and the new values.
    Widen,
}

/// The COPY format of loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CopyFormat {
    /// Binary when every column and value of a batch has an exact binary form, else text.
    #[default]
    Auto,
    /// Always text.
    Text,
}

/// Settings of `pgferry target`.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// Where to connect.
    pub connection: PgConnectionConfig,
    /// Schema for streams not named in `schema_mapping`.
    pub default_target_schema: Option<String>,
    /// One table for every stream (the Macrometa fork's key), when set.
    pub target_table: Option<String>,
    /// Source schema → target schema.
    pub schema_mapping: HashMap<String, String>,
    /// Source schema → grants and indexes of its `schema_mapping` entry.
    pub schema_extras: HashMap<String, SchemaExtras>,
    /// Roles granted USAGE on created schemas and SELECT on their tables
    /// (`default_target_schema_select_permission(s)`), as the old target did.
    pub default_grantees: Vec<String>,
    /// Config keys ignored, each with why (logged at start).
    pub warnings: Vec<String>,
    /// Delete rows whose record has `_sdc_deleted_at`, instead of keeping the time.
    pub hard_delete: bool,
    /// A stream's buffered rows are loaded at this count.
    pub batch_size_rows: usize,
    /// Buffered rows are loaded at least this often.
    pub batch_flush_interval: Duration,
    /// Timer flushes are at least this far apart.
    pub batch_flush_min_time_gap: Duration,
    /// Add `_sdc_extracted_at`, `_sdc_batched_at`, `_sdc_deleted_at`.
    pub add_metadata_columns: bool,
    /// A stream without key properties is an error (else: plain INSERT).
    pub primary_key_required: bool,
    /// Check records against their JSON schema before loading.
    pub validate_records: bool,
    /// Load every stream whenever one is loaded.
    pub flush_all_streams: bool,
    /// Type changes: rename (old rule) or widen.
    pub schema_evolution: SchemaEvolution,
    /// Nested object properties down to this level become `parent__child` columns (0: none,
    /// nested objects are jsonb).
    pub data_flattening_max_level: u64,
    /// `auto` (binary where exact, else text) or `text`.
    pub copy_format: CopyFormat,
    /// Streams loaded at once, each over a connection of its own (`parallelism`: 0 = one per
    /// stream, -1 = one per core; at most `max_parallelism`).
    pub parallelism: usize,
}

/// `parallelism` as the old target read it: 0 = one per stream (up to `max_parallelism`),
/// -1 = the number of cores, otherwise that many.
fn parallelism(object: &serde_json::Map<String, Value>) -> Result<usize, ConfigError> {
    let invalid = |detail: String| ConfigError::Invalid {
        key: "parallelism".into(),
        detail,
    };
    let wanted = match object.get("parallelism") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(number)) => number
            .as_i64()
            .ok_or_else(|| invalid(format!("expected a whole number, got {number}")))?,
        Some(Value::String(text)) => text
            .trim()
            .parse::<i64>()
            .map_err(|_| invalid(format!("expected a whole number, got {text:?}")))?,
        Some(_) => return Err(invalid("expected a whole number".into())),
    };
    let max = usize::try_from(unsigned(object, "max_parallelism")?.unwrap_or(16))
        .unwrap_or(usize::MAX)
        .max(1);
    match wanted {
        -1 => Ok(std::thread::available_parallelism()
            .map_or(2, usize::from)
            .min(max)),
        0 => Ok(max),
        n if n > 0 => Ok(usize::try_from(n).unwrap_or(usize::MAX).min(max)),
        n => Err(invalid(format!(
            "{n} is not allowed: use 0 (one connection per stream), -1 (one per core) or a positive count"
        ))),
    }
}

fn seconds(
    object: &serde_json::Map<String, Value>,
    key: &str,
    default: u64,
) -> Result<Duration, ConfigError> {
    Ok(Duration::from_secs(
        unsigned(object, key)?.unwrap_or(default),
    ))
}

impl TargetConfig {
    /// Reads and validates a target config object.
    pub fn from_object(
        object: &serde_json::Map<String, Value>,
    ) -> Result<TargetConfig, ConfigError> {
        let known: Vec<&str> = CONNECTION_KEYS.iter().chain(TARGET_KEYS).copied().collect();
        let (object, mut warnings) = lenient_keys(object, &known, "target");
        let object = &object;
        let connection = PgConnectionConfig::from_object(
            object,
            "the database to load into, e.g. \"dbname\": \"warehouse\"",
        )?;
        let batch_size_rows = match unsigned(object, "batch_size_rows")? {
            None => 10_000,
            Some(0) => {
                return Err(ConfigError::Invalid {
                    key: "batch_size_rows".into(),
                    detail: "must be at least 1".into(),
                })
            }
            Some(rows) => usize::try_from(rows).unwrap_or(usize::MAX),
        };
        let data_flattening_max_level = unsigned(object, "data_flattening_max_level")?.unwrap_or(0);
        let mut schema_mapping = HashMap::new();
        let mut schema_extras = HashMap::new();
        match object.get("schema_mapping") {
            None | Some(Value::Null) => {}
            Some(Value::Object(mapping)) => {
                for (source, entry) in mapping {
                    let needs_target = || ConfigError::Invalid {
                        key: "schema_mapping".into(),
                        detail: format!("entry {source:?} needs {{\"target_schema\": \"…\"}}"),
                    };
                    let entry = entry.as_object().ok_or_else(needs_target)?;
                    let (entry, entry_warnings) = lenient_keys(
                        entry,
                        SCHEMA_MAPPING_KEYS,
                        &format!("target (schema_mapping.{source})"),
                    );
                    warnings.extend(entry_warnings);
                    let target = entry
                        .get("target_schema")
                        .and_then(Value::as_str)
                        .filter(|schema| !schema.is_empty())
                        .ok_or_else(needs_target)?;
                    schema_mapping.insert(source.clone(), target.to_owned());
                    let key = format!("schema_mapping.{source}.target_schema_select_permissions");
                    let mut extras = SchemaExtras {
                        grantees: grantees(
                            entry.get("target_schema_select_permissions"),
                            &key,
                            &mut warnings,
                        )?,
                        ..SchemaExtras::default()
                    };
                    let bad_indices = || ConfigError::Invalid {
                        key: format!("schema_mapping.{source}.indices"),
                        detail: "expected {\"<table>\": [\"<column>\", \"<column>,<column>\"]}"
                            .into(),
                    };
                    match entry.get("indices") {
                        None | Some(Value::Null) => {}
                        Some(Value::Object(tables)) => {
                            for (table, columns) in tables {
                                let columns = columns
                                    .as_array()
                                    .ok_or_else(bad_indices)?
                                    .iter()
                                    .map(|column| {
                                        column
                                            .as_str()
                                            .filter(|column| !column.trim().is_empty())
                                            .map(str::to_owned)
                                            .ok_or_else(bad_indices)
                                    })
                                    .collect::<Result<Vec<_>, _>>()?;
                                extras.indices.insert(
                                    crate::singer::target_postgres::naming::table_name(table),
                                    columns,
                                );
                            }
                        }
                        Some(_) => return Err(bad_indices()),
                    }
                    schema_extras.insert(source.clone(), extras);
                }
            }
            Some(_) => return Err(ConfigError::Invalid {
                key: "schema_mapping".into(),
                detail:
                    "expected an object such as {\"public\": {\"target_schema\": \"analytics\"}}"
                        .into(),
            }),
        }
        let mut default_grantees = None;
        for key in [
            "default_target_schema_select_permissions",
            "default_target_schema_select_permission",
        ] {
            if let Some(roles) = grantees(object.get(key), key, &mut warnings)? {
                default_grantees.get_or_insert(roles);
            }
        }
        // Accepted, without effect: the old target cached the catalog's column list between
        // streams; pgferry reads a table's columns once per SCHEMA message anyway.
        boolean(object, "disable_table_cache")?;
        let schema_evolution = match string(object, "schema_evolution")?.as_deref() {
            None | Some("rename") => SchemaEvolution::Rename,
            Some("widen") => SchemaEvolution::Widen,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "schema_evolution".into(),
                    detail: format!(
                        "expected \"rename\" (the old target's rule) or \"widen\", got {other:?}"
                    ),
                })
            }
        };
        let copy_format = match string(object, "copy_format")?.as_deref() {
            None | Some("auto") => CopyFormat::Auto,
            Some("text") => CopyFormat::Text,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "copy_format".into(),
                    detail: format!(
                        "expected \"auto\" (binary where exact) or \"text\", got {other:?}"
                    ),
                })
            }
        };
        let parallelism = parallelism(object)?;
        string(object, "temp_dir")?;
        Ok(TargetConfig {
            connection,
            default_target_schema: string(object, "default_target_schema")?
                .filter(|schema| !schema.trim().is_empty()),
            target_table: string(object, "target_table")?.filter(|table| !table.trim().is_empty()),
            schema_mapping,
            schema_extras,
            default_grantees: default_grantees.unwrap_or_default(),
            warnings,
            hard_delete: boolean(object, "hard_delete")?.unwrap_or(false),
            batch_size_rows,
            batch_flush_interval: seconds(object, "batch_flush_interval", 60)?,
            batch_flush_min_time_gap: seconds(object, "batch_flush_min_time_gap", 0)?,
            add_metadata_columns: boolean(object, "add_metadata_columns")?.unwrap_or(false),
            primary_key_required: boolean(object, "primary_key_required")?.unwrap_or(true),
            validate_records: boolean(object, "validate_records")?.unwrap_or(false),
            flush_all_streams: boolean(object, "flush_all_streams")?.unwrap_or(false),
            schema_evolution,
            data_flattening_max_level,
            copy_format,
            parallelism,
        })
    }

    /// Reads a target config file; ignored keys are logged as warnings.
    pub fn from_file(path: &Path) -> Result<TargetConfig, ConfigError> {
        let config = TargetConfig::from_object(&crate::config::read_json_object(path)?)?;
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        Ok(config)
    }

    /// Roles to grant USAGE and SELECT on `source_schema`'s target schema and tables.
    pub fn grantees(&self, source_schema: Option<&str>) -> &[String] {
        source_schema
            .and_then(|schema| self.schema_extras.get(schema))
            .and_then(|extras| extras.grantees.as_deref())
            .unwrap_or(&self.default_grantees)
    }

    /// Every role the config grants to, with the key that names it (checked at start, so a
    /// missing role stops the run before anything is created).
    pub fn all_grantees(&self) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = self
            .default_grantees
            .iter()
            .map(|role| {
                (
                    "default_target_schema_select_permissions".to_owned(),
                    role.clone(),
                )
            })
            .collect();
        let mut sources: Vec<&String> = self.schema_extras.keys().collect();
        sources.sort();
        for source in sources {
            for role in self.schema_extras[source].grantees.iter().flatten() {
                all.push((
                    format!("schema_mapping.{source}.target_schema_select_permissions"),
                    role.clone(),
                ));
            }
        }
        all
    }

    /// Indexes `schema_mapping` asks for on `table` of `source_schema`.
    pub fn indices(&self, source_schema: Option<&str>, table: &str) -> &[String] {
        source_schema
            .and_then(|schema| self.schema_extras.get(schema))
            .and_then(|extras| extras.indices.get(table))
            .map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<TargetConfig, ConfigError> {
        TargetConfig::from_object(value.as_object().unwrap())
    }

    #[test]
    fn parallelism_follows_the_old_targets_rules() {
        let with = |value: Value| {
            let mut config = json!({"host": "db", "user": "u", "dbname": "dw"});
            config
                .as_object_mut()
                .unwrap()
                .extend(value.as_object().unwrap().clone());
            parse(config).map(|config| config.parallelism)
        };
        assert_eq!(with(json!({})).unwrap(), 16);
        assert_eq!(with(json!({"parallelism": 4})).unwrap(), 4);
        assert_eq!(
            with(json!({"parallelism": "8", "max_parallelism": 3})).unwrap(),
            3
        );
        assert!(with(json!({"parallelism": -1})).unwrap() >= 1);
        let error = with(json!({"parallelism": -2})).unwrap_err().to_string();
        assert!(error.contains("parallelism"), "{error}");
    }

    #[test]
    fn reads_the_old_targets_keys_with_their_defaults() {
        let config = parse(json!({
            "host": "db", "port": "5433", "user": "u", "password": "pw", "dbname": "dw",
            "default_target_schema": "raw", "hard_delete": "true", "batch_size_rows": 500,
            "schema_mapping": {"public": {"target_schema": "analytics"}},
            "parallelism": 0, "max_parallelism": 16, "temp_dir": "/tmp", "flush_all_streams": true
        }))
        .unwrap();
        assert_eq!(config.connection.port, 5433);
        assert_eq!(config.default_target_schema.as_deref(), Some("raw"));
        assert!(config.hard_delete);
        assert_eq!(config.batch_size_rows, 500);
        assert_eq!(config.batch_flush_interval, Duration::from_secs(60));
        assert_eq!(
            config.parallelism, 16,
            "0 = one connection per stream, up to 16"
        );
        assert!(config.primary_key_required);
        assert!(!config.validate_records);
        assert!(!config.add_metadata_columns);
        assert_eq!(config.schema_mapping["public"], "analytics");
        assert_eq!(config.schema_evolution, SchemaEvolution::Rename);
        assert_eq!(config.copy_format, CopyFormat::Auto);
    }

    #[test]
    fn unknown_keys_are_warnings_with_the_closest_key_and_old_keys_do_what_they_did() {
        let config = parse(json!({
            "host": "h", "user": "u", "dbname": "d", "hard_delet": true,
            "disable_table_cache": null, "flush_all_streams": null,
            "default_target_schema_select_permissions": ["group_1", "group_2"],
            "schema_mapping": {"src": {"target_schema": "dw", "indices": {"Test-Table": ["c_varchar", "c_varchar,c_int"]},
                "target_schema_select_permissions": "readers", "invented": 1}}
        }))
        .unwrap();
        assert_eq!(config.warnings.len(), 2, "{:?}", config.warnings);
        assert!(config.warnings[0].contains("did you mean \"hard_delete\""));
        assert!(config.warnings[1].contains("invented"));
        assert!(!config.hard_delete);
        assert_eq!(config.default_grantees, ["group_1", "group_2"]);
        assert_eq!(config.grantees(Some("src")), ["readers"]);
        assert_eq!(config.grantees(Some("other")), ["group_1", "group_2"]);
        assert_eq!(
            config.indices(Some("src"), "test_table"),
            ["c_varchar", "c_varchar,c_int"]
        );
        let dict = parse(json!({"host": "h", "user": "u", "dbname": "d",
            "default_target_schema_select_permission": {"users": ["a"], "groups": ["b"]}}))
        .unwrap();
        assert!(dict.default_grantees.is_empty());
        assert!(dict.warnings[0].contains("ignored"), "{:?}", dict.warnings);
    }

    #[test]
    fn mistakes_name_the_key_and_the_fix() {
        let base = json!({"host": "h", "user": "u", "dbname": "d"});
        let with = |key: &str, value: Value| {
            let mut object = base.clone();
            object[key] = value;
            parse(object).unwrap_err().to_string()
        };
        assert!(with("batch_size_rows", json!(0)).contains("at least 1"));
        assert!(with("schema_evolution", json!("grow")).contains("widen"));
        assert!(with("copy_format", json!("csv")).contains("\"text\""));
        assert!(with("schema_mapping", json!({"public": {}})).contains("target_schema"));
        assert!(with("data_flattening_max_level", json!(-1)).contains("data_flattening_max_level"));
        assert!(parse(json!({"host": "h", "user": "u"}))
            .unwrap_err()
            .to_string()
            .contains("dbname"));
    }
}
