//! The old source's console interface (`validate`, `schemas`, `samples`), which the Macrometa
//! console called to set up a workflow, as commands printing JSON.
//!
//! - `validate`: connects and runs discovery; success prints `{"valid": true, "streams": N}`,
//!   failure the error text on stderr with a non-zero exit code.
//! - `schemas`: per stream `{"name": <table>, "attributes": [{"name", "type"}]}` with the type one
//!   of `string`, `long`, `bool`, `double`, `object` (from the column's JSON schema: integer →
//!   long, number → double, boolean → bool, string → string, anything else → object).
//! - `samples`: per stream `{"schema": {…as above…}, "data": [the first 10 rows]}`, values as
//!   the tap writes them.
//!
//! In both, columns named `_key`, `_id`, `_rev` are renamed by prefixing `_` until unique,
//! except `_key` when it is the primary key, as the documents will be named in GDN. Unsupported
//! columns (which the tap does not sync) are left out.

use serde_json::{json, Value};

use crate::decode::copy_binary::CopyBinaryDecoder;
use crate::gdn::keys::document_attribute_names;
use crate::pg::Connection;
use crate::singer::tap::catalog::{plan_streams, StreamPlan};
use crate::singer::tap::full_table::write_row;
use crate::singer::tap::TapError;

/// Rows per stream in `samples`.
pub const SAMPLE_ROWS: usize = 10;

/// The console's attribute type for a JSON schema.
pub fn attribute_type(schema: &Value) -> &'static str {
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(kind)) => vec![kind.as_str()],
        Some(Value::Array(kinds)) => kinds.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    match types.iter().find(|kind| **kind != "null") {
        Some(&"string") => "string",
        Some(&"integer") => "long",
        Some(&"boolean") => "bool",
        Some(&"number") => "double",
        _ => "object",
    }
}

/// Attribute names of a stream's synced columns, in `plan.columns` order.
fn attribute_names(plan: &StreamPlan) -> Vec<String> {
    let columns: Vec<String> = plan
        .columns
        .iter()
        .map(|column| column.name.clone())
        .collect();
    document_attribute_names(&columns, &plan.table.key_columns)
}

/// The console's schema of a stream: columns in table order.
pub fn schema_of(plan: &StreamPlan) -> Value {
    let names = attribute_names(plan);
    let attributes: Vec<Value> = plan
        .table
        .columns
        .iter()
        .filter_map(|column| {
            let index = plan
                .columns
                .iter()
                .position(|sync| sync.name == column.name)?;
            Some(json!({
                "name": names[index],
                "type": attribute_type(&plan.schema["properties"][&column.name]),
            }))
        })
        .collect();
    json!({"name": plan.table.name, "attributes": attributes})
}

async fn streams(config: &crate::config::PgSourceConfig) -> Result<Vec<StreamPlan>, TapError> {
    let mut connection = Connection::connect(&config.connect_options()).await?;
    let plans = plan_streams(&mut connection, config, None).await;
    connection.close().await;
    plans
}

/// `validate`: the config works and discovery finds something.
pub async fn validate(config: &crate::config::PgSourceConfig) -> Result<Value, TapError> {
    let plans = streams(config).await?;
    if plans.is_empty() {
        return Err(TapError::Unsupported(format!(
            "no table or view with a supported column found in schemas {:?}{}\nHINT: check filter_schemas / filter_table and the role's SELECT privileges",
            config.filter_schemas,
            config
                .filter_table
                .as_deref()
                .map(|table| format!(" (filter_table {table:?})"))
                .unwrap_or_default()
        )));
    }
    Ok(json!({"valid": true, "streams": plans.len()}))
}

/// `schemas`: every stream's attributes.
pub async fn schemas(config: &crate::config::PgSourceConfig) -> Result<Value, TapError> {
    Ok(Value::Array(
        streams(config).await?.iter().map(schema_of).collect(),
    ))
}

/// `samples`: every stream's schema and first rows, as JSON text (numbers keep every digit).
pub async fn samples(config: &crate::config::PgSourceConfig) -> Result<String, TapError> {
    let plans = streams(config).await?;
    let mut connection = Connection::connect(&config.connect_options()).await?;
    let mut out = Vec::with_capacity(4096);
    out.push(b'[');
    for (position, plan) in plans.iter().enumerate() {
        if position > 0 {
            out.push(b',');
        }
        let names = attribute_names(plan);
        let select = plan.select_list();
        let sql = format!(
            "COPY (SELECT {} FROM {} LIMIT {SAMPLE_ROWS}) TO STDOUT (FORMAT binary)",
            select.join(", "),
            plan.table.qualified_name()
        );
        out.extend_from_slice(b"{\"schema\":");
        serde_json::to_writer(&mut out, &schema_of(plan))
            .map_err(|error| TapError::Decode(error.to_string()))?;
        out.extend_from_slice(b",\"data\":[");
        let mut rows = 0usize;
        let mut copy = connection.copy_out(&sql).await?;
        let mut decoder = CopyBinaryDecoder::new(select.len());
        while let Some(data) = copy.next().await? {
            decoder
                .decode_chunk_with(data, |row| {
                    if rows > 0 {
                        out.push(b',');
                    }
                    rows += 1;
                    write_row(plan, row, Some(&names), &mut out)
                })
                .map_err(|error: crate::singer::tap::full_table::RowError| {
                    error.into_tap_error(&plan.stream)
                })?;
        }
        out.extend_from_slice(b"]}");
    }
    out.push(b']');
    connection.close().await;
    String::from_utf8(out).map_err(|error| TapError::Decode(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_types_are_the_consoles_five() {
        assert_eq!(
            attribute_type(&json!({"type": ["null", "integer"]})),
            "long"
        );
        assert_eq!(
            attribute_type(&json!({"type": ["null", "number"]})),
            "double"
        );
        assert_eq!(attribute_type(&json!({"type": ["boolean"]})), "bool");
        assert_eq!(
            attribute_type(&json!({"type": ["null", "string"], "format": "date-time"})),
            "string"
        );
        assert_eq!(
            attribute_type(&json!({"type": ["null", "object", "array"]})),
            "object"
        );
        assert_eq!(
            attribute_type(&json!({"type": ["null", "array"]})),
            "object"
        );
        assert_eq!(attribute_type(&json!({})), "object");
    }
}
