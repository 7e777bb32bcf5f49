//! Which streams and columns to sync: the Singer catalog given with `--catalog` / `-p` (its
//! `selected`, `replication-method` and per-column `selected` metadata), checked against the
//! database and refreshed from it, as the old tap did before every sync.
//!
//! Rules of the old tap kept here: a stream is synced when its top-level metadata says
//! `selected: true`; a column when its inclusion is `automatic`, or it is `available` and not
//! deselected; `unsupported` columns never. Columns go out in name order (the old tap sorted
//! them). Without a catalog, the streams `pgferry discover` marks selected are synced.
//! Better than the old tap: a selected stream the database does not have is an error naming it
//! (the old one crashed with a `KeyError`), and a column deselected in the catalog stays out
//! (the old one's schema refresh lost column selections).

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::config::{PgSourceConfig, Publications, ReplicationMethod};
use crate::decode::value::TypeCodec;
use crate::pg::catalog::{NumericMode, PublishedTable, Table};
use crate::pg::Connection;
use crate::singer::tap::TapError;
use crate::source::discover::{catalog_tables, stream_entry};
use crate::source::publication_contract::shape_table;

/// A column's choice in the user's catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnChoice {
    /// `selected`, when the catalog says.
    pub selected: Option<bool>,
}

/// One stream of the user's catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogStream {
    /// `tap_stream_id` (`<schema>-<table>`).
    pub tap_stream_id: String,
    /// Top-level `selected`.
    pub selected: bool,
    /// Top-level `replication-method`, when set.
    pub replication_method: Option<String>,
    /// Top-level `view-key-properties` (keys the user gives a view).
    pub view_key_properties: Vec<String>,
    /// Per-column choices.
    pub columns: HashMap<String, ColumnChoice>,
}

/// Reads a Singer catalog file (`{"streams": [...]}`).
pub fn read_catalog(path: &std::path::Path) -> Result<Vec<CatalogStream>, TapError> {
    let error = |detail: String| TapError::Catalog {
        path: path.display().to_string(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|cause| error(cause.to_string()))?;
    parse_catalog(&text).map_err(error)
}

/// Parses a Singer catalog.
pub fn parse_catalog(text: &str) -> Result<Vec<CatalogStream>, String> {
    let value: Value = serde_json::from_str(text).map_err(|error| {
        format!("not valid JSON: {error}\nHINT: write it with `pgferry tap -c config.json -d`")
    })?;
    let Some(streams) = value.get("streams").and_then(Value::as_array) else {
        return Err("expected an object with a \"streams\" array".into());
    };
    let mut out = Vec::with_capacity(streams.len());
    for (index, stream) in streams.iter().enumerate() {
        let Some(id) = stream.get("tap_stream_id").and_then(Value::as_str) else {
            return Err(format!("stream {index} has no \"tap_stream_id\""));
        };
        let mut entry = CatalogStream {
            tap_stream_id: id.to_owned(),
            selected: false,
            replication_method: None,
            view_key_properties: Vec::new(),
            columns: HashMap::new(),
        };
        let metadata = match stream.get("metadata") {
            None => &[][..],
            Some(Value::Array(metadata)) => metadata.as_slice(),
            Some(_) => return Err(format!("stream {id}: \"metadata\" must be an array")),
        };
        for item in metadata {
            let breadcrumb = item.get("breadcrumb").and_then(Value::as_array);
            let Some(fields) = item.get("metadata").and_then(Value::as_object) else {
                continue;
            };
            match breadcrumb.map(Vec::as_slice) {
                Some([]) => {
                    entry.selected = fields.get("selected").and_then(Value::as_bool) == Some(true);
                    entry.replication_method = fields
                        .get("replication-method")
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    entry.view_key_properties = fields
                        .get("view-key-properties")
                        .and_then(Value::as_array)
                        .map(|keys| {
                            keys.iter()
                                .filter_map(Value::as_str)
                                .map(str::to_owned)
                                .collect()
                        })
                        .unwrap_or_default();
                }
                Some([Value::String(properties), Value::String(column)])
                    if properties == "properties" =>
                {
                    entry.columns.insert(
                        column.clone(),
                        ColumnChoice {
                            selected: fields.get("selected").and_then(Value::as_bool),
                        },
                    );
                }
                _ => {}
            }
        }
        out.push(entry);
    }
    Ok(out)
}

/// The codec of a column for the tap: `money` (and `money[]`) as PostgreSQL prints it
/// (`-$1,234.50`), the string the old tap sent under its `string` schema, in FULL_TABLE
/// (selected `::text`, `::text[]`) and LOG_BASED (the text the plugin sends) alike. Composite
/// values stay their text too (discovery marks composite columns unsupported, as the old tap
/// did), and arrays of composites, ranges or other types without a decoder are arrays of
/// their elements' text (`::text[]`), as the old tap's `string` array schema says.
fn tap_codec((codec, text_cast): (TypeCodec, bool)) -> (TypeCodec, bool) {
    let text_elements = |element: &TypeCodec| match element {
        TypeCodec::TextDelimited(delimiter) => TypeCodec::TextDelimited(*delimiter),
        _ => TypeCodec::Text,
    };
    match codec {
        TypeCodec::Money { .. } | TypeCodec::Composite(_) => (TypeCodec::Text, true),
        TypeCodec::Array(element)
            if matches!(*element, TypeCodec::Money { .. } | TypeCodec::Composite(_)) =>
        {
            (TypeCodec::Array(Box::new(TypeCodec::Text)), true)
        }
        TypeCodec::TextForm(inner) => match *inner {
            TypeCodec::Array(element) => {
                (TypeCodec::Array(Box::new(text_elements(&element))), true)
            }
            _ => (TypeCodec::Text, true),
        },
        other => (other, text_cast),
    }
}

/// A value as the schema the tap sends allows it: `NaN` and `±Infinity` of `real`, `double
/// precision` and `numeric` (schema `number`) become null, as the old tap sent them (JSON
/// has no such numbers, and a string would break the schema), in both sync methods.
pub fn schema_value<'a>(
    codec: &TypeCodec,
    value: crate::decode::value::Value<'a>,
) -> crate::decode::value::Value<'a> {
    use crate::decode::value::Value as V;
    match (codec, value) {
        (TypeCodec::Float4 | TypeCodec::Float8 | TypeCodec::Numeric(_), V::Str(_)) => V::Null,
        (TypeCodec::Array(element), V::Array(items)) => V::Array(
            items
                .into_iter()
                .map(|item| schema_value(element, item))
                .collect(),
        ),
        (_, value) => value,
    }
}

/// One column the tap reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncColumn {
    /// Column name (also the record's property).
    pub name: String,
    /// How its values decode.
    pub codec: TypeCodec,
    /// Whether it is selected as `::text` (no binary decoder).
    pub text_cast: bool,
}

/// A stream to sync, resolved against the database.
#[derive(Debug, Clone)]
pub struct StreamPlan {
    /// `<schema>-<table>`: the stream name in every message and the bookmark key.
    pub stream: String,
    /// The table as the catalog reads it (kind, columns, types).
    pub table: Table,
    /// The JSON schema of the synced columns (the old tap's shapes).
    pub schema: Value,
    /// The key columns (`table-key-properties`, or a view's `view-key-properties`).
    pub key_properties: Vec<String>,
    /// The synced columns, in name order.
    pub columns: Vec<SyncColumn>,
    /// FULL_TABLE or LOG_BASED.
    pub method: ReplicationMethod,
    /// The user's choices for it, kept for schema refreshes.
    pub choice: CatalogStream,
    /// LOG_BASED through pgoutput: the publications' row filter, which the first copy applies
    /// so it holds what the stream keeps up to date.
    pub row_filter: Option<String>,
}

impl StreamPlan {
    /// The synced columns as a COPY's `SELECT` names them: quoted, and `::text` where the
    /// binary decoder has no codec for the type.
    pub fn select_list(&self) -> Vec<String> {
        self.columns
            .iter()
            .map(|column| {
                let quoted = crate::pg::query::quote_identifier(&column.name);
                if column.text_cast && matches!(column.codec, TypeCodec::Array(_)) {
                    format!("{quoted}::text[]")
                } else if column.text_cast {
                    format!("{quoted}::text")
                } else {
                    quoted
                }
            })
            .collect()
    }

    /// Follows what the publications publish of the table (pgoutput): only the listed
    /// columns are synced and in the SCHEMA, and the copy applies the row filter. A column
    /// list without the key is an error with the fix ([`shape_table`]).
    pub fn follow_publication(
        &mut self,
        published: Option<&PublishedTable>,
        publications: &Publications,
    ) -> Result<(), String> {
        let (table, row_filter) = shape_table(&self.table, published, publications)?;
        let listed = |name: &str| table.columns.iter().any(|column| column.name == name);
        self.columns.retain(|column| listed(&column.name));
        if let Some(Value::Object(properties)) = self.schema.get_mut("properties") {
            properties.retain(|name, _| listed(name));
        }
        self.table = table;
        self.row_filter = row_filter;
        Ok(())
    }

    /// The codec of a column by name (logical decoding names columns).
    pub fn column(&self, name: &str) -> Option<&SyncColumn> {
        self.columns.iter().find(|column| column.name == name)
    }

    /// The schema with the properties LOG_BASED records add (`_sdc_deleted_at`, and
    /// `_sdc_lsn` with `debug_lsn`).
    pub fn log_based_schema(&self, debug_lsn: bool) -> Value {
        let mut schema = self.schema.clone();
        if let Some(Value::Object(properties)) = schema.get_mut("properties") {
            properties.insert(
                "_sdc_deleted_at".into(),
                json!({"type": ["null", "string"], "format": "date-time"}),
            );
            if debug_lsn {
                properties.insert("_sdc_lsn".into(), json!({"type": ["null", "string"]}));
            }
        }
        schema
    }
}

fn method_named(name: &str, stream: &str) -> Result<ReplicationMethod, TapError> {
    match name {
        "FULL_TABLE" => Ok(ReplicationMethod::FullTable),
        "LOG_BASED" => Ok(ReplicationMethod::LogBased),
        other => Err(TapError::Unsupported(format!(
            "stream {stream}: replication-method {other:?} is not supported\nHINT: use FULL_TABLE or LOG_BASED in the catalog's metadata"
        ))),
    }
}

/// Resolves the streams to sync: the catalog's selected streams (or, without a catalog, the
/// ones discovery selects), refreshed from the database, sorted by stream id.
pub async fn plan_streams(
    connection: &mut Connection,
    config: &PgSourceConfig,
    catalog: Option<&[CatalogStream]>,
) -> Result<Vec<StreamPlan>, TapError> {
    // With a catalog, every table of the schemas may be named; without, the config filters.
    let table_filter = match catalog {
        Some(_) => None,
        None => config.filter_table.as_deref(),
    };
    let described = catalog_tables(connection, &config.filter_schemas, table_filter).await?;
    let tables =
        crate::pg::catalog::discover(connection, &config.filter_schemas, table_filter).await?;
    let mut plans = Vec::new();
    let wanted: Vec<CatalogStream> = match catalog {
        Some(streams) => {
            for stream in streams.iter().filter(|stream| !stream.selected) {
                if !described
                    .iter()
                    .any(|table| format!("{}-{}", table.schema, table.name) == stream.tap_stream_id)
                {
                    tracing::warn!(stream = %stream.tap_stream_id, "the catalog names a stream this database does not have (not selected, ignored)");
                }
            }
            streams
                .iter()
                .filter(|stream| stream.selected)
                .cloned()
                .collect()
        }
        None => described
            .iter()
            .map(|table| CatalogStream {
                tap_stream_id: format!("{}-{}", table.schema, table.name),
                selected: true,
                replication_method: None,
                view_key_properties: Vec::new(),
                columns: HashMap::new(),
            })
            .collect(),
    };
    let mut unknown = Vec::new();
    for choice in &wanted {
        let described_table = described
            .iter()
            .find(|table| format!("{}-{}", table.schema, table.name) == choice.tap_stream_id);
        let table = tables
            .iter()
            .find(|table| table.stream_id() == choice.tap_stream_id);
        let (Some(described_table), Some(table)) = (described_table, table) else {
            unknown.push(choice.tap_stream_id.clone());
            continue;
        };
        let method = match &choice.replication_method {
            Some(name) => method_named(name, &choice.tap_stream_id)?,
            None if described_table.is_view => ReplicationMethod::FullTable,
            None => config.replication_method,
        };
        if method == ReplicationMethod::LogBased && !table.kind.supports_log_based() {
            return Err(TapError::Unsupported(format!(
                "stream {}: LOG_BASED replication is not possible for a view (it has no changes in the WAL)\nHINT: set \"replication-method\": \"FULL_TABLE\" in the stream's metadata",
                choice.tap_stream_id
            )));
        }
        let entry = stream_entry(described_table, &config.connection.dbname, method, true);
        let inclusion = |column: &str| {
            entry["metadata"]
                .as_array()
                .and_then(|items| {
                    items
                        .iter()
                        .find(|item| item["breadcrumb"] == json!(["properties", column]))
                })
                .and_then(|item| item["metadata"]["inclusion"].as_str())
                .unwrap_or("unsupported")
                .to_owned()
        };
        let mut properties = Map::new();
        let mut columns = Vec::new();
        for column in &table.columns {
            let sync = match inclusion(&column.name).as_str() {
                "automatic" => true,
                "unsupported" => false,
                _ => choice
                    .columns
                    .get(&column.name)
                    .and_then(|choice| choice.selected)
                    .unwrap_or(true),
            };
            if !sync {
                continue;
            }
            let (codec, text_cast) = tap_codec(column.codec(NumericMode::Number));
            columns.push(SyncColumn {
                name: column.name.clone(),
                codec,
                text_cast,
            });
            properties.insert(
                column.name.clone(),
                entry["schema"]["properties"][&column.name].clone(),
            );
        }
        columns.sort_by(|a, b| a.name.cmp(&b.name));
        if columns.is_empty() {
            tracing::warn!(stream = %choice.tap_stream_id, "there are no columns selected for the stream, skipping it");
            continue;
        }
        // The primary key, as the old tap; a table keyed only by its replica identity index
        // gets that index (the old tap sent none, so targets could not apply its deletes).
        let key_properties = if described_table.is_view {
            choice.view_key_properties.clone()
        } else {
            let primary: Vec<String> = entry["metadata"][0]["metadata"]["table-key-properties"]
                .as_array()
                .map(|keys| {
                    keys.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            if primary.is_empty() {
                table.key_columns.clone()
            } else {
                primary
            }
        };
        plans.push(StreamPlan {
            stream: choice.tap_stream_id.clone(),
            table: table.clone(),
            schema: json!({
                "type": "object",
                "properties": properties,
                "definitions": entry["schema"]["definitions"].clone(),
            }),
            key_properties,
            columns,
            method,
            choice: choice.clone(),
            row_filter: None,
        });
    }
    if !unknown.is_empty() {
        return Err(TapError::Catalog {
            path: "(--catalog)".into(),
            detail: format!(
                "selected stream(s) {} not found in database {:?} (schemas {:?})\nHINT: the catalog was written for another database or the tables were dropped; run `pgferry tap -c … -d` for a fresh catalog, or deselect them",
                unknown.join(", "),
                config.connection.dbname,
                config.filter_schemas
            ),
        });
    }
    plans.sort_by(|a, b| a.stream.cmp(&b.stream));
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_selection_method_and_column_choices() {
        let streams = parse_catalog(
            r#"{"streams": [
              {"tap_stream_id": "public-a", "metadata": [
                {"breadcrumb": [], "metadata": {"selected": true, "replication-method": "LOG_BASED"}},
                {"breadcrumb": ["properties", "x"], "metadata": {"selected": false, "inclusion": "available"}}]},
              {"tap_stream_id": "public-b", "metadata": []}
            ]}"#,
        )
        .unwrap();
        assert!(streams[0].selected);
        assert_eq!(streams[0].replication_method.as_deref(), Some("LOG_BASED"));
        assert_eq!(streams[0].columns["x"].selected, Some(false));
        assert!(!streams[1].selected);
    }

    #[test]
    fn bad_catalogs_say_what_is_wrong() {
        assert!(parse_catalog("{").unwrap_err().contains("not valid JSON"));
        assert!(parse_catalog("{}").unwrap_err().contains("\"streams\""));
        assert!(parse_catalog(r#"{"streams": [{}]}"#)
            .unwrap_err()
            .contains("tap_stream_id"));
        assert!(method_named("INCREMENTAL", "s").is_err());
    }
}
