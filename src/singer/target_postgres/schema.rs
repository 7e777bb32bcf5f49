//! JSON schema of a Singer stream → PostgreSQL columns.
//!
//! The old target's mapping without its losses:
//!
//! | JSON schema | column |
//! |---|---|
//! | `object`, `array` (alone or among other types) | `jsonb` |
//! | `string` with `format: date-time` | `timestamp with time zone` (old: without, offset dropped) |
//! | `string` with `format: date` | `date` |
//! | `string` with `format: time` | `time without time zone` |
//! | `number` (or `integer` + `number`) | `numeric`, unconstrained: every digit kept (old: `double precision`) |
//! | `integer` with `minimum`/`maximum` inside int2 / int4 / int8 | `smallint` / `integer` / `bigint` |
//! | `integer` without bounds | `bigint`; bounds beyond int8 → `numeric` |
//! | `boolean` | `boolean` |
//! | anything else (`string`, mixed types, no type) | `character varying` |
//!
//! `null` among the types only makes the column nullable; every column but the key is nullable.

use std::collections::HashMap;

use serde_json::Value;

use crate::singer::target_postgres::naming::column_name;

/// A column type this target creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PgType {
    /// `smallint`.
    SmallInt,
    /// `integer`.
    Integer,
    /// `bigint`.
    BigInt,
    /// `numeric` without precision or scale.
    Numeric,
    /// `boolean`.
    Boolean,
    /// `timestamp with time zone`.
    TimestampTz,
    /// `date`.
    Date,
    /// `time without time zone`.
    Time,
    /// `jsonb`.
    Jsonb,
    /// `character varying` without a length.
    Varchar,
}

impl PgType {
    /// The type as `format_type()` prints it (and as SQL accepts it).
    pub fn sql(self) -> &'static str {
        match self {
            PgType::SmallInt => "smallint",
            PgType::Integer => "integer",
            PgType::BigInt => "bigint",
            PgType::Numeric => "numeric",
            PgType::Boolean => "boolean",
            PgType::TimestampTz => "timestamp with time zone",
            PgType::Date => "date",
            PgType::Time => "time without time zone",
            PgType::Jsonb => "jsonb",
            PgType::Varchar => "character varying",
        }
    }

    /// What values of this column look like in JSON, for encoding and checks.
    pub fn kind(self) -> ValueKind {
        match self {
            PgType::SmallInt | PgType::Integer | PgType::BigInt => ValueKind::Integer,
            PgType::Numeric => ValueKind::Number,
            PgType::Boolean => ValueKind::Boolean,
            PgType::TimestampTz | PgType::Date | PgType::Time => ValueKind::Temporal,
            PgType::Jsonb => ValueKind::Json,
            PgType::Varchar => ValueKind::Text,
        }
    }
}

/// How a JSON value is turned into a column value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Whole numbers (a JSON number without fraction, or a string of digits).
    Integer,
    /// Decimal numbers, written with their exact digits.
    Number,
    /// `true` / `false`.
    Boolean,
    /// Dates and times as ISO 8601 strings, parsed by PostgreSQL.
    Temporal,
    /// Any JSON value, stored as its JSON text.
    Json,
    /// Strings as their contents; other values as their JSON text.
    Text,
}

/// The JSON types a property allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct JsonTypes {
    /// `null` allowed.
    pub null: bool,
    /// `string` allowed.
    pub string: bool,
    /// `integer` allowed.
    pub integer: bool,
    /// `number` allowed.
    pub number: bool,
    /// `boolean` allowed.
    pub boolean: bool,
    /// `object` allowed.
    pub object: bool,
    /// `array` allowed.
    pub array: bool,
    /// No `type` at all: anything goes.
    pub any: bool,
}

/// One column of a stream's table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Column {
    /// The record property it is filled from.
    pub property: String,
    /// The column name (the property, lower-cased).
    pub name: String,
    /// The type the stream's schema asks for.
    pub pg_type: PgType,
    /// The JSON types the schema allows (for `validate_records`).
    pub json_types: JsonTypes,
    /// Listed in the schema's `required`.
    pub required: bool,
}

/// A SCHEMA message the target cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// Two properties differ only in case, so they would share a column.
    #[error("properties {first:?} and {second:?} both become column {column:?} (column names are lower-cased)\nHINT: rename one of them in the source")]
    DuplicateColumn {
        /// One property.
        first: String,
        /// The other.
        second: String,
        /// The shared column name.
        column: String,
    },
    /// A key property is not among the properties.
    #[error("key property {0:?} is not in the schema's properties\nHINT: key_properties must name properties of the schema")]
    UnknownKey(String),
    /// A column name longer than PostgreSQL keeps (it would be truncated silently).
    #[error("property {0:?} is longer than 63 bytes, the longest column name PostgreSQL keeps\nHINT: shorten the column name in the source")]
    LongName(String),
    /// `properties` is not an object.
    #[error("\"properties\" must be an object of property schemas")]
    Properties,
}

/// The metadata columns of `add_metadata_columns` (and `hard_delete`).
pub const METADATA_COLUMNS: [&str; 3] = ["_sdc_extracted_at", "_sdc_batched_at", "_sdc_deleted_at"];

/// A stream's columns and key, derived from its SCHEMA message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSchema {
    /// Columns in table order: the schema's properties, then missing metadata columns.
    pub columns: Vec<Column>,
    /// Indexes of the key columns, in key order.
    pub key: Vec<usize>,
    /// Property name → column index.
    pub by_property: HashMap<String, usize>,
    /// Index of `_sdc_deleted_at`, when the table has it.
    pub deleted_at: Option<usize>,
    /// Index of `_sdc_extracted_at`, when added as metadata.
    pub extracted_at: Option<usize>,
    /// Index of `_sdc_batched_at`, when added as metadata.
    pub batched_at: Option<usize>,
    /// Top-level properties whose nested properties are columns of their own
    /// (`data_flattening_max_level`).
    pub flattened: Vec<String>,
}

/// Separator of flattened column names, as pipelinewise wrote them: `parent__child`.
pub const FLATTEN_SEPARATOR: &str = "__";

/// Whether a property schema is an object with properties of its own (flattenable).
fn nested_properties(schema: &Value) -> Option<&serde_json::Map<String, Value>> {
    let mut types = JsonTypes::default();
    add_types(schema.get("type")?, &mut types);
    if !types.object {
        return None;
    }
    schema.get("properties")?.as_object()
}

/// `(flattened name, schema)` of a property and, down to `max_level`, of its nested properties.
fn flatten<'a>(
    name: String,
    schema: &'a Value,
    level: u64,
    max_level: u64,
    out: &mut Vec<(String, &'a Value)>,
) {
    match nested_properties(schema).filter(|_| level < max_level) {
        Some(properties) => {
            for (child, child_schema) in properties {
                flatten(
                    format!("{name}{FLATTEN_SEPARATOR}{child}"),
                    child_schema,
                    level + 1,
                    max_level,
                    out,
                );
            }
        }
        None => out.push((name, schema)),
    }
}

fn add_types(value: &Value, types: &mut JsonTypes) {
    let mut add = |name: &str| match name {
        "null" => types.null = true,
        "string" => types.string = true,
        "integer" => types.integer = true,
        "number" => types.number = true,
        "boolean" => types.boolean = true,
        "object" => types.object = true,
        "array" => types.array = true,
        _ => types.any = true,
    };
    match value {
        Value::String(name) => add(name),
        Value::Array(names) => names.iter().filter_map(Value::as_str).for_each(add),
        _ => types.any = true,
    }
}

/// The types, format and integer bounds a property schema states (through `anyOf`/`oneOf`).
fn describe(
    schema: &Value,
    types: &mut JsonTypes,
    format: &mut Option<String>,
    bounds: &mut (Option<f64>, Option<f64>),
) {
    let Some(object) = schema.as_object() else {
        types.any = true;
        return;
    };
    let mut stated = false;
    if let Some(kind) = object.get("type") {
        add_types(kind, types);
        stated = true;
    }
    for combinator in ["anyOf", "oneOf"] {
        if let Some(Value::Array(variants)) = object.get(combinator) {
            for variant in variants {
                describe(variant, types, format, bounds);
            }
            stated = true;
        }
    }
    if !stated {
        types.any = true;
    }
    if format.is_none() {
        *format = object
            .get("format")
            .and_then(Value::as_str)
            .map(str::to_owned);
    }
    if let Some(minimum) = object.get("minimum").and_then(Value::as_f64) {
        bounds.0 = Some(minimum);
    }
    if let Some(maximum) = object.get("maximum").and_then(Value::as_f64) {
        bounds.1 = Some(maximum);
    }
}

/// The column type and JSON types of one property schema.
pub fn map_property(schema: &Value) -> (PgType, JsonTypes) {
    let mut types = JsonTypes::default();
    let mut format = None;
    let mut bounds = (None, None);
    describe(schema, &mut types, &mut format, &mut bounds);
    let others = types.string || types.boolean;
    let pg_type = if types.any {
        PgType::Varchar
    } else if types.object || types.array {
        PgType::Jsonb
    } else if types.integer && !types.number && !others {
        integer_type(bounds)
    } else if (types.integer || types.number) && !others {
        PgType::Numeric
    } else if types.boolean && !types.string {
        PgType::Boolean
    } else if types.string && !types.boolean {
        match format.as_deref() {
            Some("date-time") => PgType::TimestampTz,
            Some("date") => PgType::Date,
            Some("time") => PgType::Time,
            _ => PgType::Varchar,
        }
    } else {
        PgType::Varchar
    };
    (pg_type, types)
}

fn integer_type((minimum, maximum): (Option<f64>, Option<f64>)) -> PgType {
    let fits = |low: f64, high: f64| {
        minimum.is_some_and(|minimum| minimum >= low)
            && maximum.is_some_and(|maximum| maximum <= high)
    };
    if fits(i16::MIN as f64, i16::MAX as f64) {
        PgType::SmallInt
    } else if fits(i32::MIN as f64, i32::MAX as f64) {
        PgType::Integer
    } else if minimum.is_some_and(|minimum| minimum < i64::MIN as f64)
        || maximum.is_some_and(|maximum| maximum > i64::MAX as f64)
    {
        PgType::Numeric
    } else {
        PgType::BigInt
    }
}

impl StreamSchema {
    /// Derives the columns of a stream from its JSON schema and key; adds the metadata columns
    /// when asked.
    /// `order` lists the property names as the message did (serde_json's map sorts them);
    /// properties it misses follow in name order.
    pub fn new(
        schema: &Value,
        order: &[String],
        key_properties: &[String],
        metadata: bool,
    ) -> Result<StreamSchema, SchemaError> {
        StreamSchema::flattened(schema, order, key_properties, metadata, 0)
    }

    /// As [`StreamSchema::new`], with nested object properties down to `max_level` turned into
    /// `parent__child` columns (`data_flattening_max_level`).
    pub fn flattened(
        schema: &Value,
        order: &[String],
        key_properties: &[String],
        metadata: bool,
        max_level: u64,
    ) -> Result<StreamSchema, SchemaError> {
        let empty = serde_json::Map::new();
        let properties = match schema.get("properties") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(properties)) => properties,
            Some(_) => return Err(SchemaError::Properties),
        };
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut columns = Vec::with_capacity(properties.len() + 3);
        let mut by_name: HashMap<String, usize> = HashMap::new();
        let mut by_property = HashMap::new();
        let mut ordered: Vec<(&String, &Value)> = order
            .iter()
            .filter_map(|name| properties.get_key_value(name))
            .collect();
        ordered.extend(properties.iter().filter(|(name, _)| !order.contains(name)));
        let mut flat = Vec::with_capacity(ordered.len());
        let mut flattened = Vec::new();
        for (property, property_schema) in ordered {
            let before = flat.len();
            flatten(property.clone(), property_schema, 0, max_level, &mut flat);
            if flat.len() != before + 1 || flat[before].0 != *property {
                flattened.push(property.clone());
            }
        }
        for (property, property_schema) in flat {
            let property = &property;
            let (pg_type, json_types) = map_property(property_schema);
            let name = column_name(property);
            if name.len() > 63 {
                return Err(SchemaError::LongName(property.clone()));
            }
            if let Some(&other) = by_name.get(&name) {
                let first: &Column = &columns[other];
                return Err(SchemaError::DuplicateColumn {
                    first: first.property.clone(),
                    second: property.clone(),
                    column: name,
                });
            }
            by_name.insert(name.clone(), columns.len());
            by_property.insert(property.clone(), columns.len());
            columns.push(Column {
                property: property.clone(),
                name,
                pg_type,
                json_types,
                required: required.contains(&property.as_str()),
            });
        }
        if metadata {
            for name in METADATA_COLUMNS {
                if !by_name.contains_key(name) {
                    by_name.insert(name.to_owned(), columns.len());
                    by_property.insert(name.to_owned(), columns.len());
                    columns.push(Column {
                        property: name.to_owned(),
                        name: name.to_owned(),
                        pg_type: PgType::TimestampTz,
                        json_types: JsonTypes {
                            null: true,
                            string: true,
                            ..JsonTypes::default()
                        },
                        required: false,
                    });
                }
            }
        }
        let key = key_properties
            .iter()
            .map(|property| {
                by_property
                    .get(property)
                    .copied()
                    .ok_or_else(|| SchemaError::UnknownKey(property.clone()))
            })
            .collect::<Result<Vec<usize>, SchemaError>>()?;
        let find = |name: &str| by_name.get(name).copied();
        Ok(StreamSchema {
            deleted_at: find("_sdc_deleted_at"),
            extracted_at: if metadata {
                find("_sdc_extracted_at")
            } else {
                None
            },
            batched_at: if metadata {
                find("_sdc_batched_at")
            } else {
                None
            },
            columns,
            key,
            by_property,
            flattened,
        })
    }
}

/// Whether an existing column of type `existing` (as `format_type()` prints it) already holds
/// what `wanted` asks for.
pub fn same_type(existing: &str, wanted: PgType) -> bool {
    let existing = existing.trim();
    match wanted {
        PgType::Varchar => existing == "text" || existing.starts_with("character varying"),
        PgType::Numeric => existing.starts_with("numeric"),
        PgType::TimestampTz => {
            existing.starts_with("timestamp") && existing.ends_with("with time zone")
        }
        PgType::Time => {
            existing.starts_with("time")
                && existing.ends_with("without time zone")
                && !existing.starts_with("timestamp")
        }
        other => existing == other.sql(),
    }
}

/// Whether an existing column can take the values a stream's schema now describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Yes, exactly (same type, or a wider one of the same family, or `json` for `jsonb`).
    Holds,
    /// Yes, as the old target's lossy column (`double precision`, `timestamp without time
    /// zone`): kept, so an existing warehouse is not reshaped, with a warning saying why.
    Lossy(&'static str),
    /// No: the type changed (rename or widen).
    Changed,
}

/// How `existing` (as `format_type()` prints it) fits the values `wanted` describes.
pub fn fit(existing: &str, wanted: PgType) -> Fit {
    const NUMBERS: [&str; 4] = ["smallint", "integer", "bigint", "numeric"];
    const TIMES: [&str; 3] = [
        "date",
        "timestamp without time zone",
        "timestamp with time zone",
    ];
    let existing = existing.trim();
    if same_type(existing, wanted) || (wanted == PgType::Jsonb && existing == "json") {
        return Fit::Holds;
    }
    for family in [&NUMBERS[..], &TIMES[..]] {
        if let (Some(old), Some(new)) = (rank(family, existing), rank(family, wanted.sql())) {
            if old >= new {
                return Fit::Holds;
            }
        }
    }
    match (existing, wanted) {
        ("double precision" | "real", PgType::Numeric | PgType::SmallInt | PgType::Integer | PgType::BigInt) => {
            Fit::Lossy("a floating-point column rounds decimals (0.07 becomes 0.07000000000000001 in binary); ALTER it to numeric to keep every digit")
        }
        (existing, PgType::TimestampTz) if existing.starts_with("timestamp") && existing.ends_with("without time zone") => {
            Fit::Lossy("a timestamp without time zone column drops the offset of every value; ALTER it to timestamp with time zone to keep the instant")
        }
        _ => Fit::Changed,
    }
}

fn rank(family: &[&str], sql: &str) -> Option<usize> {
    family.iter().position(|member| sql.starts_with(member))
}

/// A type holding both the values of `existing` and those `wanted` asks for
/// (`schema_evolution: "widen"`), or `None` when `existing` already does.
pub fn widened(existing: &str, wanted: PgType) -> Option<String> {
    if same_type(existing, wanted) {
        return None;
    }
    const NUMBERS: [&str; 4] = ["smallint", "integer", "bigint", "numeric"];
    const TIMES: [&str; 3] = [
        "date",
        "timestamp without time zone",
        "timestamp with time zone",
    ];
    for family in [&NUMBERS[..], &TIMES[..]] {
        if let (Some(old), Some(new)) = (rank(family, existing), rank(family, wanted.sql())) {
            return (new > old).then(|| family[new].to_owned());
        }
    }
    if existing == "text" || existing.starts_with("character varying") {
        return None;
    }
    Some("character varying".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapped(schema: Value) -> &'static str {
        map_property(&schema).0.sql()
    }

    #[test]
    fn every_json_schema_type_has_a_lossless_column_type() {
        assert_eq!(mapped(json!({"type": ["null", "object"]})), "jsonb");
        assert_eq!(
            mapped(json!({"type": ["null", "array"], "items": {}})),
            "jsonb"
        );
        assert_eq!(
            mapped(json!({"type": ["null", "object", "array"]})),
            "jsonb"
        );
        assert_eq!(
            mapped(json!({"type": ["null", "string"], "format": "date-time"})),
            "timestamp with time zone"
        );
        assert_eq!(mapped(json!({"type": "string", "format": "date"})), "date");
        assert_eq!(
            mapped(json!({"type": "string", "format": "time"})),
            "time without time zone"
        );
        assert_eq!(
            mapped(
                json!({"type": ["null", "number"], "multipleOf": 0.01, "maximum": 1e10, "exclusiveMaximum": true})
            ),
            "numeric"
        );
        assert_eq!(
            mapped(json!({"type": ["null", "integer"], "minimum": -32768, "maximum": 32767})),
            "smallint"
        );
        assert_eq!(
            mapped(
                json!({"type": ["null", "integer"], "minimum": -2147483648i64, "maximum": 2147483647})
            ),
            "integer"
        );
        assert_eq!(
            mapped(json!({"type": "integer", "minimum": i64::MIN, "maximum": i64::MAX})),
            "bigint"
        );
        assert_eq!(mapped(json!({"type": "integer"})), "bigint");
        assert_eq!(
            mapped(json!({"type": "integer", "maximum": 1e30})),
            "numeric"
        );
        assert_eq!(mapped(json!({"type": ["integer", "number"]})), "numeric");
        assert_eq!(mapped(json!({"type": ["null", "boolean"]})), "boolean");
        assert_eq!(
            mapped(json!({"type": ["null", "string"]})),
            "character varying"
        );
        assert_eq!(
            mapped(json!({"type": ["string", "integer"]})),
            "character varying"
        );
        assert_eq!(mapped(json!({})), "character varying");
        assert_eq!(
            mapped(json!({"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]})),
            "timestamp with time zone"
        );
    }

    #[test]
    fn a_stream_schema_names_columns_keys_and_metadata() {
        let schema = json!({"properties": {"ID": {"type": "integer"}, "name": {"type": ["null", "string"]}}, "required": ["ID"]});
        let stream = StreamSchema::new(&schema, &[], &["ID".to_owned()], true).unwrap();
        let names: Vec<&str> = stream.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "id",
                "name",
                "_sdc_extracted_at",
                "_sdc_batched_at",
                "_sdc_deleted_at"
            ]
        );
        assert_eq!(stream.key, vec![0]);
        assert!(stream.columns[0].required);
        assert_eq!(stream.deleted_at, Some(4));
        assert_eq!(stream.by_property["ID"], 0);
        assert_eq!(
            StreamSchema::new(&schema, &[], &["nope".to_owned()], false).unwrap_err(),
            SchemaError::UnknownKey("nope".into())
        );
        let long = json!({"properties": {"x".repeat(64): {}}});
        assert!(matches!(
            StreamSchema::new(&long, &[], &[], false),
            Err(SchemaError::LongName(_))
        ));
        let twins = json!({"properties": {"a": {}, "A": {}}});
        assert!(matches!(
            StreamSchema::new(&twins, &[], &[], false),
            Err(SchemaError::DuplicateColumn { .. })
        ));
    }

    #[test]
    fn nested_objects_flatten_down_to_the_level_asked() {
        let schema = json!({"properties": {
            "id": {"type": "integer"},
            "address": {"type": ["null", "object"], "properties": {
                "city": {"type": "string"},
                "geo": {"type": "object", "properties": {"lat": {"type": "number"}}}
            }},
            "free": {"type": "object"}
        }});
        let names = |level| {
            StreamSchema::flattened(&schema, &[], &["id".to_owned()], false, level)
                .unwrap()
                .columns
                .iter()
                .map(|column| format!("{} {}", column.name, column.pg_type.sql()))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(0), ["address jsonb", "free jsonb", "id bigint"]);
        assert_eq!(
            names(1),
            [
                "address__city character varying",
                "address__geo jsonb",
                "free jsonb",
                "id bigint"
            ]
        );
        assert_eq!(
            names(2),
            [
                "address__city character varying",
                "address__geo__lat numeric",
                "free jsonb",
                "id bigint"
            ]
        );
        let flat = StreamSchema::flattened(&schema, &[], &[], false, 2).unwrap();
        assert_eq!(flat.flattened, vec!["address"]);
    }

    #[test]
    fn existing_columns_that_hold_the_values_are_kept() {
        assert_eq!(fit("bigint", PgType::Integer), Fit::Holds);
        assert_eq!(fit("numeric", PgType::BigInt), Fit::Holds);
        assert_eq!(fit("numeric(12,2)", PgType::Numeric), Fit::Holds);
        assert_eq!(fit("timestamp with time zone", PgType::Date), Fit::Holds);
        assert_eq!(fit("json", PgType::Jsonb), Fit::Holds);
        assert!(matches!(
            fit("double precision", PgType::Numeric),
            Fit::Lossy(_)
        ));
        assert!(matches!(
            fit("timestamp without time zone", PgType::TimestampTz),
            Fit::Lossy(_)
        ));
        assert_eq!(fit("smallint", PgType::Varchar), Fit::Changed);
        assert_eq!(fit("integer", PgType::BigInt), Fit::Changed);
        assert_eq!(fit("character varying", PgType::BigInt), Fit::Changed);
    }

    #[test]
    fn widening_keeps_both_kinds_of_values() {
        assert_eq!(
            widened("integer", PgType::BigInt).as_deref(),
            Some("bigint")
        );
        assert_eq!(
            widened("bigint", PgType::Numeric).as_deref(),
            Some("numeric")
        );
        assert_eq!(widened("numeric", PgType::Integer), None);
        assert_eq!(widened("numeric(12,2)", PgType::Numeric), None);
        assert_eq!(
            widened("date", PgType::TimestampTz).as_deref(),
            Some("timestamp with time zone")
        );
        assert_eq!(
            widened("bigint", PgType::Varchar).as_deref(),
            Some("character varying")
        );
        assert_eq!(widened("character varying", PgType::BigInt), None);
        assert_eq!(widened("text", PgType::Jsonb), None);
        assert_eq!(
            widened("boolean", PgType::BigInt).as_deref(),
            Some("character varying")
        );
        assert!(same_type("character varying(255)", PgType::Varchar));
        assert!(same_type(
            "timestamp(3) with time zone",
            PgType::TimestampTz
        ));
        assert!(!same_type(
            "timestamp without time zone",
            PgType::TimestampTz
        ));
    }
}
