//! The Singer catalog of a PostgreSQL source, in the shape the old source
//! (`macrometa-source-postgres`, after pipelinewise-tap-postgres) printed for `--discover`,
//! so that tools reading it keep working: one stream per table or view with its JSON schema
//! and its metadata (`table-key-properties`, `schema-name`, `database-name`, `row-count`,
//! `is-view`, `selected`, `replication-method`; per column `sql-datatype`, `inclusion`,
//! `selected-by-default`).
//!
//! One improvement: a column of a domain type is described by the domain's base type (the old
//! source marked it unsupported and dropped it); `sql-datatype` still names the domain.
//! The JSON schema of each column follows the old rules, including their numeric bounds
//! (`multipleOf` 10^-scale, exclusive ±10^(precision-scale), unconstrained numerics capped at
//! precision 100 / scale 38). pgferry itself never validates or rounds data against these
//! bounds (the old target dropped rows that way); they are printed for compatibility only.

use serde_json::{json, Map, Value};

use crate::config::{PgSourceConfig, ReplicationMethod};
use crate::pg::query::quote_literal;
use crate::pg::{Connection, PgError};

/// Precision used for `numeric` without one (the old source's cap).
const MAX_PRECISION: u32 = 100;
/// Scale used for `numeric` without one (the old source's cap).
const MAX_SCALE: u32 = 38;

/// One column as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogColumn {
    /// Column name.
    pub name: String,
    /// Part of the primary key.
    pub is_primary_key: bool,
    /// `format_type(type, NULL)` with domains resolved to their base type, e.g.
    /// `character varying`, `integer[]`: what the JSON schema is made from.
    pub sql_data_type: String,
    /// The declared type (a domain's own name), shown as `sql-datatype`.
    pub declared_type: String,
    /// Declared length of character and bit types.
    pub character_maximum_length: Option<u32>,
    /// Declared (or implied, for integers: 16/32/64 bits) precision.
    pub numeric_precision: Option<u32>,
    /// Declared scale.
    pub numeric_scale: Option<u32>,
    /// An array type.
    pub is_array: bool,
    /// An enum (or an array of one).
    pub is_enum: bool,
}

/// One table or view of the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogTable {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// A view or materialized view.
    pub is_view: bool,
    /// `reltuples` (an estimate).
    pub row_count: i64,
    /// Columns in attnum order.
    pub columns: Vec<CatalogColumn>,
}

fn nullable(types: &[&str], primary_key: bool) -> Value {
    let mut list: Vec<Value> = Vec::with_capacity(types.len() + 1);
    if !primary_key {
        list.push(json!("null"));
    }
    list.extend(types.iter().map(|kind| json!(kind)));
    Value::Array(list)
}

/// `10^exponent` as a JSON number (an integer when exact, else a float like `0.01`).
fn power_of_ten(exponent: i64) -> Value {
    if (0..=18).contains(&exponent) {
        json!(10i64.pow(exponent as u32))
    } else if exponent > 18 {
        // Beyond u64 the number becomes a double with the same value (1e+62 for 10**62).
        let digits = format!("1{}", "0".repeat(exponent as usize));
        serde_json::from_str(&digits).unwrap_or(Value::Null)
    } else {
        serde_json::from_str(&format!("1e{exponent}")).unwrap_or(Value::Null)
    }
}

fn negated(value: Value) -> Value {
    match value {
        Value::Number(number) => serde_json::from_str(&format!("-{number}")).unwrap_or(Value::Null),
        other => other,
    }
}

fn numeric_bounds(column: &CatalogColumn) -> (u32, u32) {
    let precision = column
        .numeric_precision
        .map_or(MAX_PRECISION, |precision| precision.min(MAX_PRECISION));
    let scale = column
        .numeric_scale
        .map_or(MAX_SCALE, |scale| scale.min(MAX_SCALE));
    (precision, scale)
}

/// The JSON schema of a non-array column (an empty object when the type is unsupported).
pub fn scalar_schema(column: &CatalogColumn) -> Value {
    let data_type = column.sql_data_type.to_lowercase().replace("[]", "");
    let pk = column.is_primary_key;
    let typed = |kind: &str| json!({"type": nullable(&[kind], pk)});
    match data_type.as_str() {
        "smallint" | "integer" | "bigint" => {
            let bits = column
                .numeric_precision
                .unwrap_or(match data_type.as_str() {
                    "smallint" => 16,
                    "integer" => 32,
                    _ => 64,
                });
            let max = (1i128 << (bits.saturating_sub(1))) - 1;
            json!({"type": nullable(&["integer"], pk), "minimum": -(max + 1), "maximum": max})
        }
        "money" => typed("string"),
        _ if column.is_enum => typed("string"),
        "bit" if column.character_maximum_length == Some(1) => typed("boolean"),
        "boolean" => typed("boolean"),
        "uuid" | "citext" | "text" | "cidr" | "inet" | "macaddr" => typed("string"),
        "hstore" => json!({"type": nullable(&["object"], pk), "properties": {}}),
        "json" | "jsonb" => json!({"type": nullable(&["object", "array"], pk)}),
        "numeric" => {
            let (precision, scale) = numeric_bounds(column);
            let limit = power_of_ten(i64::from(precision) - i64::from(scale));
            json!({
                "type": nullable(&["number"], pk),
                "exclusiveMaximum": true,
                "maximum": limit,
                "multipleOf": power_of_ten(-i64::from(scale)),
                "exclusiveMinimum": true,
                "minimum": negated(limit.clone()),
            })
        }
        "time without time zone" | "time with time zone" => {
            json!({"type": nullable(&["string"], pk), "format": "time"})
        }
        "date" | "timestamp without time zone" | "timestamp with time zone" => {
            json!({"type": nullable(&["string"], pk), "format": "date-time"})
        }
        "real" | "double precision" => typed("number"),
        "character varying" | "character" => {
            let mut schema = typed("string");
            if let (Some(length), Some(map)) =
                (column.character_maximum_length, schema.as_object_mut())
            {
                map.insert("maxLength".into(), json!(length));
            }
            schema
        }
        _ => json!({}),
    }
}

fn numeric_array_definition(precision: u32, scale: u32) -> String {
    format!("sdc_recursive_decimal_{precision}_{scale}_array")
}

/// The JSON schema of a column (arrays refer to the recursive definitions).
pub fn column_schema(column: &CatalogColumn) -> Value {
    if !column.is_array {
        return scalar_schema(column);
    }
    let definition = match column.sql_data_type.as_str() {
        "integer[]" | "bigint[]" | "smallint[]" => "sdc_recursive_integer_array".to_owned(),
        "bit[]" | "boolean[]" => "sdc_recursive_boolean_array".to_owned(),
        "date[]" | "timestamp without time zone[]" | "timestamp with time zone[]" => {
            "sdc_recursive_timestamp_array".to_owned()
        }
        "numeric[]" => {
            let (precision, scale) = numeric_bounds(column);
            numeric_array_definition(precision, scale)
        }
        "double precision[]" | "real[]" => "sdc_recursive_number_array".to_owned(),
        "hstore[]" | "json[]" | "jsonb[]" => "sdc_recursive_object_array".to_owned(),
        _ => "sdc_recursive_string_array".to_owned(),
    };
    json!({"type": ["null", "array"], "items": {"$ref": format!("#/definitions/{definition}")}})
}

fn base_definitions() -> Map<String, Value> {
    let recursive = |name: &str, kind: &str| {
        (
            name.to_owned(),
            json!({"type": ["null", kind, "array"], "items": {"$ref": format!("#/definitions/{name}")}}),
        )
    };
    let mut definitions: Map<String, Value> = [
        recursive("sdc_recursive_integer_array", "integer"),
        recursive("sdc_recursive_number_array", "number"),
        recursive("sdc_recursive_string_array", "string"),
        recursive("sdc_recursive_boolean_array", "boolean"),
        recursive("sdc_recursive_timestamp_array", "string"),
        recursive("sdc_recursive_object_array", "object"),
    ]
    .into_iter()
    .collect();
    if let Some(Value::Object(timestamp)) = definitions.get_mut("sdc_recursive_timestamp_array") {
        timestamp.insert("format".into(), json!("date-time"));
    }
    definitions
}

/// One Singer stream entry for `table`.
pub fn stream_entry(
    table: &CatalogTable,
    database: &str,
    method: ReplicationMethod,
    selected: bool,
) -> Value {
    let key_properties: Vec<&str> = table
        .columns
        .iter()
        .filter(|column| column.is_primary_key)
        .map(|column| column.name.as_str())
        .collect();
    let mut definitions = base_definitions();
    let mut properties = Map::new();
    let mut metadata = vec![json!({
        "breadcrumb": [],
        "metadata": {
            "table-key-properties": key_properties,
            "schema-name": table.schema,
            "database-name": database,
            "row-count": table.row_count,
            "is-view": table.is_view,
            "selected": selected,
            "replication-method": match method {
                ReplicationMethod::FullTable => "FULL_TABLE",
                ReplicationMethod::LogBased => "LOG_BASED",
            },
        }
    })];
    for column in &table.columns {
        let schema = column_schema(column);
        if column.sql_data_type == "numeric[]" {
            let (precision, scale) = numeric_bounds(column);
            let name = numeric_array_definition(precision, scale);
            let limit = power_of_ten(i64::from(precision) - i64::from(scale));
            definitions.insert(
                name.clone(),
                json!({
                    "type": ["null", "number", "array"],
                    "multipleOf": power_of_ten(-i64::from(scale)),
                    "exclusiveMaximum": true,
                    "maximum": limit,
                    "exclusiveMinimum": true,
                    "minimum": negated(limit.clone()),
                    "items": {"$ref": format!("#/definitions/{name}")},
                }),
            );
        }
        let sql_datatype = match (
            column.declared_type.as_str(),
            column.character_maximum_length,
        ) {
            ("bit", Some(length)) if length > 1 => format!("bit({length})"),
            (other, _) => other.to_owned(),
        };
        let (inclusion, selected_by_default) = if schema.get("type").is_none() {
            ("unsupported", false)
        } else if column.is_primary_key {
            ("automatic", true)
        } else {
            ("available", true)
        };
        metadata.push(json!({
            "breadcrumb": ["properties", column.name],
            "metadata": {
                "sql-datatype": sql_datatype,
                "inclusion": inclusion,
                "selected-by-default": selected_by_default,
            }
        }));
        properties.insert(column.name.clone(), schema);
    }
    json!({
        "table_name": table.name,
        "stream": table.name,
        "metadata": metadata,
        "tap_stream_id": format!("{}-{}", table.schema, table.name),
        "schema": {"type": "object", "properties": properties, "definitions": definitions},
    })
}

fn parse_u32(value: Option<&str>) -> Option<u32> {
    value.and_then(|text| text.parse().ok())
}

/// Reads the tables and views the role may read, filtered like the old source.
pub async fn catalog_tables(
    connection: &mut Connection,
    schemas: &[String],
    table: Option<&str>,
) -> Result<Vec<CatalogTable>, PgError> {
    let mut filter = String::new();
    if !schemas.is_empty() {
        let list: Vec<String> = schemas.iter().map(|schema| quote_literal(schema)).collect();
        filter.push_str(&format!(" AND n.nspname IN ({})", list.join(", ")));
    }
    if let Some(table) = table {
        filter.push_str(&format!(" AND c.relname = {}", quote_literal(table)));
    }
    // Domains resolve to their base type for length/precision; arrays to their element type.
    let rows = connection
        .query(&format!(
            "SELECT n.nspname, c.relname, c.relkind IN ('v', 'm'), c.reltuples::bigint, a.attname, \
                    COALESCE(pk.indisprimary, false), \
                    format_type(CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END, NULL), \
                    information_schema._pg_char_max_length(base.oid, information_schema._pg_truetypmod(a.*, t.*)), \
                    information_schema._pg_numeric_precision(base.oid, information_schema._pg_truetypmod(a.*, t.*)), \
                    information_schema._pg_numeric_scale(base.oid, information_schema._pg_truetypmod(a.*, t.*)), \
                    t.typcategory = 'A', COALESCE(elem.typtype, t.typtype) = 'e', \
                    format_type(a.atttypid, NULL) \
             FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_type elem ON elem.oid = t.typelem AND t.typelem <> 0 \
             JOIN pg_type base ON base.oid = CASE \
                    WHEN COALESCE(elem.typtype, t.typtype) = 'd' THEN COALESCE(elem.typbasetype, t.typbasetype) \
                    ELSE COALESCE(elem.oid, t.oid) END \
             LEFT JOIN pg_index pk ON pk.indrelid = c.oid AND pk.indisprimary AND a.attnum = ANY (pk.indkey) \
             WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm') \
               AND NOT c.relispartition \
               AND n.nspname NOT IN ('pg_toast', 'pg_catalog', 'information_schema') \
               AND has_column_privilege(c.oid, a.attnum, 'SELECT'){filter} \
             ORDER BY n.nspname, c.relname, a.attnum"
        ))
        .await?;
    let mut tables: Vec<CatalogTable> = Vec::new();
    for row in rows {
        let schema = row.get(0).unwrap_or_default().to_owned();
        let name = row.get(1).unwrap_or_default().to_owned();
        let column = CatalogColumn {
            name: row.get(4).unwrap_or_default().to_owned(),
            is_primary_key: row.get(5) == Some("t"),
            sql_data_type: row.get(6).unwrap_or_default().to_owned(),
            declared_type: row.get(12).unwrap_or_default().to_owned(),
            character_maximum_length: parse_u32(row.get(7)),
            numeric_precision: parse_u32(row.get(8)),
            numeric_scale: parse_u32(row.get(9)),
            is_array: row.get(10) == Some("t"),
            is_enum: row.get(11) == Some("t"),
        };
        match tables.last_mut() {
            Some(last) if last.schema == schema && last.name == name => last.columns.push(column),
            _ => tables.push(CatalogTable {
                schema,
                name,
                is_view: row.get(2) == Some("t"),
                row_count: row.get(3).and_then(|count| count.parse().ok()).unwrap_or(0),
                columns: vec![column],
            }),
        }
    }
    Ok(tables)
}

/// The whole catalog `{"streams": [...]}` for a source config.
pub async fn catalog(config: &PgSourceConfig) -> Result<Value, PgError> {
    let mut connection = Connection::connect(&config.connect_options()).await?;
    let tables = catalog_tables(
        &mut connection,
        &config.filter_schemas,
        config.filter_table.as_deref(),
    )
    .await?;
    connection.close().await;
    let streams: Vec<Value> = tables
        .iter()
        .map(|table| {
            let selected = config
                .filter_table
                .as_deref()
                .is_none_or(|wanted| wanted == table.name);
            let method = if table.is_view {
                ReplicationMethod::FullTable
            } else {
                config.replication_method
            };
            stream_entry(table, &config.connection.dbname, method, selected)
        })
        .collect();
    Ok(json!({"streams": streams}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, sql: &str) -> CatalogColumn {
        CatalogColumn {
            name: name.into(),
            is_primary_key: false,
            sql_data_type: sql.into(),
            declared_type: sql.into(),
            character_maximum_length: None,
            numeric_precision: None,
            numeric_scale: None,
            is_array: sql.ends_with("[]"),
            is_enum: false,
        }
    }

    #[test]
    fn integers_carry_their_bounds_and_keys_are_not_nullable() {
        let mut id = column("id", "bigint");
        id.is_primary_key = true;
        id.numeric_precision = Some(64);
        assert_eq!(
            scalar_schema(&id),
            json!({"type": ["integer"], "minimum": -9223372036854775808i64, "maximum": 9223372036854775807i64})
        );
        let mut small = column("s", "smallint");
        small.numeric_precision = Some(16);
        assert_eq!(
            scalar_schema(&small),
            json!({"type": ["null", "integer"], "minimum": -32768, "maximum": 32767})
        );
    }

    #[test]
    fn numerics_use_the_old_bounds() {
        let mut amount = column("amount", "numeric");
        amount.numeric_precision = Some(12);
        amount.numeric_scale = Some(2);
        assert_eq!(
            scalar_schema(&amount).to_string(),
            r#"{"exclusiveMaximum":true,"exclusiveMinimum":true,"maximum":10000000000,"minimum":-10000000000,"multipleOf":0.01,"type":["null","number"]}"#
        );
        let free = scalar_schema(&column("n", "numeric"));
        assert_eq!(free["multipleOf"].to_string(), "1e-38");
        // Python printed 10**62 as digits; the value is the same JSON number.
        assert_eq!(free["maximum"].as_f64(), Some(1e62));
    }

    #[test]
    fn strings_times_json_and_unsupported_types() {
        let mut name = column("name", "character varying");
        name.character_maximum_length = Some(40);
        assert_eq!(
            scalar_schema(&name),
            json!({"type": ["null", "string"], "maxLength": 40})
        );
        assert_eq!(
            scalar_schema(&column("t", "timestamp with time zone")),
            json!({"type": ["null", "string"], "format": "date-time"})
        );
        assert_eq!(
            scalar_schema(&column("j", "jsonb")),
            json!({"type": ["null", "object", "array"]})
        );
        assert_eq!(scalar_schema(&column("p", "point")), json!({}));
        assert_eq!(
            column_schema(&column("tags", "text[]")),
            json!({"type": ["null", "array"], "items": {"$ref": "#/definitions/sdc_recursive_string_array"}})
        );
    }

    #[test]
    fn a_stream_entry_has_the_old_metadata() {
        let mut id = column("id", "integer");
        id.is_primary_key = true;
        let table = CatalogTable {
            schema: "public".into(),
            name: "orders".into(),
            is_view: false,
            row_count: 10,
            columns: vec![id, column("shape", "point")],
        };
        let entry = stream_entry(&table, "shop", ReplicationMethod::LogBased, true);
        assert_eq!(entry["tap_stream_id"], "public-orders");
        assert_eq!(entry["stream"], "orders");
        let top = &entry["metadata"][0];
        assert_eq!(top["breadcrumb"], json!([]));
        assert_eq!(top["metadata"]["table-key-properties"], json!(["id"]));
        assert_eq!(top["metadata"]["database-name"], "shop");
        assert_eq!(top["metadata"]["replication-method"], "LOG_BASED");
        assert_eq!(
            entry["metadata"][1]["metadata"]["inclusion"],
            json!("automatic")
        );
        assert_eq!(
            entry["metadata"][2]["metadata"],
            json!({"sql-datatype": "point", "inclusion": "unsupported", "selected-by-default": false})
        );
        assert!(
            entry["schema"]["definitions"]["sdc_recursive_timestamp_array"]["format"]
                == "date-time"
        );
    }
}
