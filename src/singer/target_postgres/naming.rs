//! Stream name → `schema.table`, with the old target's rules.
//!
//! A stream `<schema>-<table>` (the old source's `tap_stream_id`) names a source schema and a
//! table. The target schema is `schema_mapping[<schema>].target_schema`, else
//! `default_target_schema`, else the stream's own schema, else `public`. The table is
//! `target_table` when configured, else the stream's table part; table names are lower-cased
//! and `.` and `-` become `_`. Column names are lower-cased (pipelinewise did the same).

use crate::singer::target_postgres::config::TargetConfig;

/// Where a stream's rows go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    /// Target schema.
    pub schema: String,
    /// Target table.
    pub table: String,
}

impl TableName {
    /// `"schema"."table"`, quoted for SQL.
    pub fn quoted(&self) -> String {
        format!(
            "{}.{}",
            crate::pg::query::quote_identifier(&self.schema),
            crate::pg::query::quote_identifier(&self.table)
        )
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// A table name as the old target wrote it: lower-case, `.` and `-` as `_`.
pub fn table_name(name: &str) -> String {
    name.to_lowercase().replace(['.', '-'], "_")
}

/// A column name as the old target wrote it: lower-case.
pub fn column_name(property: &str) -> String {
    property.to_lowercase()
}

/// An identifier written bare in the old target's SQL (role names, index columns in
/// `schema_mapping`): PostgreSQL folded it to lower case unless it was double-quoted.
pub fn folded_identifier(raw: &str) -> String {
    let raw = raw.trim();
    match raw
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
    {
        Some(inner) => inner.replace("\"\"", "\""),
        None => raw.to_lowercase(),
    }
}

/// The source schema and table named by a stream id (`<schema>-<table>`, pipelinewise's
/// `<catalog>-<schema>-<table…>`, or a bare table).
pub fn split_stream(stream: &str) -> (Option<&str>, String) {
    let parts: Vec<&str> = stream.split('-').collect();
    match parts.as_slice() {
        [table] => (None, (*table).to_owned()),
        [schema, table] => (Some(*schema), (*table).to_owned()),
        [_, schema, rest @ ..] => (Some(*schema), rest.join("_")),
        [] => (None, stream.to_owned()),
    }
}

/// The target table of `stream`.
pub fn target_table(stream: &str, config: &TargetConfig) -> TableName {
    let (source_schema, table) = split_stream(stream);
    let schema = source_schema
        .and_then(|schema| config.schema_mapping.get(schema).cloned())
        .or_else(|| config.default_target_schema.clone())
        .or_else(|| source_schema.map(str::to_owned))
        .unwrap_or_else(|| "public".to_owned());
    TableName {
        schema,
        table: table_name(config.target_table.as_deref().unwrap_or(&table)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> TargetConfig {
        let mut object = serde_json::json!({"host": "h", "user": "u", "dbname": "d"});
        if let (Some(object), Some(extra)) = (object.as_object_mut(), extra.as_object()) {
            object.extend(extra.clone());
        }
        TargetConfig::from_object(object.as_object().unwrap()).unwrap()
    }

    #[test]
    fn streams_map_to_schema_and_table() {
        let plain = config(serde_json::json!({}));
        let name = |stream: &str, config: &TargetConfig| target_table(stream, config).to_string();
        assert_eq!(name("public-orders", &plain), "public.orders");
        assert_eq!(name("sales-Order.Items", &plain), "sales.order_items");
        assert_eq!(name("orders", &plain), "public.orders");
        assert_eq!(name("db-sales-order-lines", &plain), "sales.order_lines");
        let defaulted = config(serde_json::json!({"default_target_schema": "raw"}));
        assert_eq!(name("public-orders", &defaulted), "raw.orders");
        let mapped = config(serde_json::json!({
            "default_target_schema": "raw",
            "schema_mapping": {"sales": {"target_schema": "analytics"}}
        }));
        assert_eq!(name("sales-orders", &mapped), "analytics.orders");
        assert_eq!(name("public-orders", &mapped), "raw.orders");
        let one_table = config(serde_json::json!({"target_table": "All-Rows"}));
        assert_eq!(name("public-orders", &one_table), "public.all_rows");
        assert_eq!(column_name("OrderID"), "orderid");
        assert_eq!(target_table("a-b", &plain).quoted(), "\"a\".\"b\"");
        assert_eq!(folded_identifier(" Group_1 "), "group_1");
        assert_eq!(folded_identifier("\"Mixed\"\"Case\""), "Mixed\"Case");
    }
}
