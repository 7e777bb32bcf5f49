//! GDN documents into a PostgreSQL table: one row per `_key`, columns inferred from the
//! documents (`infer.rs`) and widened as new shapes arrive, one transaction per batch.
//!
//! A batch holds each key once (the last change wins: a document replaces the row, a delete
//! removes it). Applying it is one transaction:
//!
//! ```text
//! BEGIN
//!   ALTER TABLE … ADD COLUMN / ALTER COLUMN … TYPE …   (new attributes, disagreeing values)
//!   COPY staging FROM STDIN (binary where every column has an exact binary form, else text)
//!   INSERT INTO t SELECT … FROM staging ON CONFLICT ("_key") DO UPDATE SET every column
//!   DELETE FROM t USING deletes (hard_delete)  |  UPDATE t SET "_sdc_deleted_at" = now() …
//! COMMIT
//! ```
//!
//! so a batch, its schema changes included, is applied completely or not at all. Replaying a
//! batch (after a crash between COMMIT and the acknowledgement) gives the same rows: every
//! statement is an idempotent upsert or delete by key.

use foldhash::HashMap;

use serde_json::{Map, Value};

use crate::pg::query::{quote_identifier, quote_literal};
use crate::pg::{Connection, PgError};
use crate::target::copy_binary::{binary_type, text_to_binary_into};
use crate::target::infer::{
    column_name_of, encode_field, value_kind, ColumnType, ValueError, DELETED_AT_COLUMN, KEY_COLUMN,
};
use crate::target::naming::TableName;

/// COPY data is sent in messages of about this size.
const COPY_CHUNK_BYTES: usize = 256 * 1024;
/// The session's staging table of upserts.
const STAGING: &str = "pgferry_doc_stage";
/// The session's staging table of deleted keys.
const STAGING_DELETES: &str = "pgferry_doc_deletes";

/// Why a batch of documents could not be applied (it was rolled back).
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// A document without a string `_key`.
    #[error("a document of {table} has no string \"_key\": {snippet}\n(GDN documents always have one; nothing of this batch was applied and its messages were not acknowledged)")]
    NoKey {
        /// The table.
        table: TableName,
        /// The start of the document.
        snippet: String,
    },
    /// A value that cannot be stored.
    #[error("document {key:?}, attribute {attribute:?} → {table}: {source}\n(nothing of this batch was applied and its messages were not acknowledged; a retry fails the same way)")]
    Value {
        /// The table.
        table: TableName,
        /// The document's `_key`.
        key: String,
        /// The attribute.
        attribute: String,
        /// Why.
        source: ValueError,
    },
    /// The table exists but cannot take documents.
    #[error("table {table} exists but {detail}\nHINT: drop or rename it so pgferry creates it, or point \"table_name\" / \"target_schema\" elsewhere")]
    Unusable {
        /// The table.
        table: TableName,
        /// What is missing.
        detail: String,
    },
    /// PostgreSQL refused a statement.
    #[error("{during} {table} failed: {source}\n(the batch was rolled back and its messages were not acknowledged; {})", if source.is_transient() { "a retry may succeed" } else { "fix the table or the privileges first" })]
    Postgres {
        /// What was being done.
        during: &'static str,
        /// The table.
        table: TableName,
        /// The server's error.
        source: PgError,
    },
}

/// What a batch does to one key.
#[derive(Debug, Clone, PartialEq)]
enum Change {
    /// Insert or replace the row with the document's attributes (without `_key`, `_id`,
    /// `_rev`); each goes to the column [`column_name_of`] names.
    Upsert(Map<String, Value>),
    /// Delete the row.
    Delete,
}

/// Changes to apply in one transaction, each key once.
#[derive(Debug, Default)]
pub struct DocumentBatch {
    changes: HashMap<String, Change>,
    received: usize,
}

/// The `_key` of a document, when it has a string one.
pub fn document_key(document: &Map<String, Value>) -> Option<&str> {
    document.get(KEY_COLUMN).and_then(Value::as_str)
}

impl DocumentBatch {
    /// Adds a document (it replaces any earlier change of its key in this batch). `_id` and
    /// `_rev` are dropped; `_key` becomes the key; every other attribute goes to its column.
    /// `false` when the document has no string `_key`.
    pub fn upsert(&mut self, mut document: Map<String, Value>) -> bool {
        let Some(Value::String(key)) = document.remove(KEY_COLUMN) else {
            return false;
        };
        document.remove("_id");
        document.remove("_rev");
        self.received += 1;
        self.changes.insert(key, Change::Upsert(document));
        true
    }

    /// Adds a delete of `key` (it replaces any earlier change of the key in this batch).
    pub fn delete(&mut self, key: String) {
        self.received += 1;
        self.changes.insert(key, Change::Delete);
    }

    /// Changes added (before coalescing by key).
    pub fn received(&self) -> usize {
        self.received
    }

    /// Distinct keys.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Forgets every change.
    pub fn clear(&mut self) {
        self.changes.clear();
        self.received = 0;
    }
}

/// What applying a batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Rows inserted or replaced.
    pub upserts: u64,
    /// Keys deleted (or marked deleted).
    pub deletes: u64,
    /// Schema changes made (for the log).
    pub changes: Vec<String>,
    /// The rows went straight into the table (no key of the batch was there yet).
    pub direct: bool,
}

/// A table loaded from documents, as pgferry knows it.
#[derive(Debug, Clone)]
pub struct DocumentTable {
    name: TableName,
    /// Attribute columns in table order (without `_key` and `_sdc_deleted_at`).
    columns: Vec<(String, ColumnType)>,
    hard_delete: bool,
    /// The attribute columns (and types) the session's staging table was made for.
    staging: Option<Vec<(String, ColumnType)>>,
    /// COPY text and binary buffers, kept between batches (their pages stay mapped).
    buffers: (Vec<u8>, Vec<u8>),
}

fn pg<'a>(
    during: &'static str,
    table: &'a TableName,
) -> impl FnOnce(PgError) -> DocumentError + 'a {
    move |source| DocumentError::Postgres {
        during,
        table: table.clone(),
        source,
    }
}

impl DocumentTable {
    /// Opens `name`, creating the schema and the table (`"_key" text PRIMARY KEY`, plus
    /// `"_sdc_deleted_at"` without `hard_delete`) when missing. Returns the table and whether
    /// it was created now.
    pub async fn open(
        connection: &mut Connection,
        name: &TableName,
        hard_delete: bool,
    ) -> Result<(DocumentTable, bool), DocumentError> {
        let deleted_at = if hard_delete {
            String::new()
        } else {
            format!(
                ", {} timestamp with time zone",
                quote_identifier(DELETED_AT_COLUMN)
            )
        };
        let rows = connection
            .query(&format!(
                "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), \
                 EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisunique \
                   AND i.indnatts = 1 AND i.indkey[0] = a.attnum AND i.indpred IS NULL) \
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                 WHERE n.nspname = {} AND c.relname = {} AND c.relkind IN ('r', 'p') ORDER BY a.attnum",
                quote_literal(&name.schema),
                quote_literal(&name.table)
            ))
            .await
            .map_err(pg("reading the columns of", name))?;
        let mut table = DocumentTable {
            name: name.clone(),
            columns: Vec::new(),
            hard_delete,
            staging: None,
            buffers: Default::default(),
        };
        if rows.is_empty() {
            crate::target::ensure_schema(connection, &name.schema)
                .await
                .map_err(pg("creating the schema of", name))?;
            connection
                .execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {} ({} text PRIMARY KEY{deleted_at})",
                    name.quoted(),
                    quote_identifier(KEY_COLUMN)
                ))
                .await
                .map_err(pg("creating", name))?;
            return Ok((table, true));
        }
        let mut key_ok = false;
        let mut has_deleted_at = false;
        for row in &rows {
            let column = row.get(0).unwrap_or_default();
            let sql = row.get(1).unwrap_or_default();
            match column {
                KEY_COLUMN => key_ok = row.get(2) == Some("t"),
                DELETED_AT_COLUMN => has_deleted_at = true,
                _ => table
                    .columns
                    .push((column.to_owned(), ColumnType::from_sql(sql))),
            }
        }
        if !key_ok {
            return Err(DocumentError::Unusable {
                table: name.clone(),
                detail: "has no \"_key\" column with a unique index of its own".into(),
            });
        }
        if !hard_delete && !has_deleted_at {
            connection
                .execute(&format!(
                    "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {}",
                    name.quoted(),
                    deleted_at.trim_start_matches(", ")
                ))
                .await
                .map_err(pg("adding _sdc_deleted_at to", name))?;
        }
        Ok((table, false))
    }

    /// The table's name.
    pub fn name(&self) -> &TableName {
        &self.name
    }

    /// Attribute columns and their types, in table order.
    pub fn columns(&self) -> &[(String, ColumnType)] {
        &self.columns
    }

    /// The columns after this batch, and the DDL that gets the table there.
    fn plan(&self, batch: &DocumentBatch) -> (Vec<(String, ColumnType)>, Vec<String>) {
        let mut columns = self.columns.clone();
        let mut index: HashMap<String, usize> = columns
            .iter()
            .enumerate()
            .map(|(position, (name, _))| (name.clone(), position))
            .collect();
        let before = columns.len();
        // Attribute → column position, resolved once per attribute name.
        let mut by_attribute: HashMap<&str, usize> = HashMap::default();
        for change in batch.changes.values() {
            let Change::Upsert(row) = change else {
                continue;
            };
            for (attribute, value) in row {
                let kind = value_kind(value);
                let known = match by_attribute.get(attribute.as_str()) {
                    Some(&position) => Some(position),
                    None => {
                        let found = index.get(column_name_of(attribute).as_ref()).copied();
                        if let Some(position) = found {
                            by_attribute.insert(attribute, position);
                        }
                        found
                    }
                };
                match known {
                    Some(position) => columns[position].1 = columns[position].1.join(kind),
                    None => {
                        if let Some(sql_type) = ColumnType::for_kind(kind) {
                            let column = column_name_of(attribute).into_owned();
                            index.insert(column.clone(), columns.len());
                            by_attribute.insert(attribute, columns.len());
                            columns.push((column, sql_type));
                        }
                    }
                }
            }
        }
        let mut ddl = Vec::new();
        for (position, (column, sql_type)) in columns.iter().enumerate() {
            let quoted = quote_identifier(column);
            if position >= before {
                ddl.push(format!(
                    "ALTER TABLE {} ADD COLUMN {quoted} {}",
                    self.name.quoted(),
                    sql_type.sql()
                ));
            } else if self.columns[position].1 != *sql_type {
                ddl.push(format!(
                    "ALTER TABLE {} ALTER COLUMN {quoted} TYPE {} USING {}",
                    self.name.quoted(),
                    sql_type.sql(),
                    self.columns[position].1.widen_using(&quoted, sql_type)
                ));
            }
        }
        (columns, ddl)
    }

    /// Applies `batch` in one transaction (schema changes included); on success the table
    /// model follows, on failure nothing changed. With `try_direct` (an initial load) a batch
    /// without deletes is first copied straight into the table under a savepoint; a key that
    /// exists already rolls that back and the batch is merged through staging instead.
    pub async fn apply(
        &mut self,
        connection: &mut Connection,
        batch: &DocumentBatch,
        try_direct: bool,
    ) -> Result<Applied, DocumentError> {
        let (columns, ddl) = self.plan(batch);
        let position: HashMap<&str, usize> = columns
            .iter()
            .enumerate()
            .map(|(index, (name, _))| (name.as_str(), index))
            .collect();
        // Encode before touching the database: a bad value fails the batch up front.
        let (mut rows, mut binary) = std::mem::take(&mut self.buffers);
        rows.clear();
        // Attribute → column position, resolved once per attribute name.
        let mut by_attribute: HashMap<&str, Option<usize>> = HashMap::default();
        let mut deletes = Vec::new();
        let mut upserts = 0u64;
        let mut fields: Vec<Option<&Value>> = vec![None; columns.len()];
        let mut attributes: Vec<&str> = vec![""; columns.len()];
        for (key, change) in &batch.changes {
            match change {
                Change::Delete => {
                    crate::target::copy_encode::push_escaped(&mut deletes, key.as_bytes());
                    deletes.push(b'\n');
                }
                Change::Upsert(row) => {
                    upserts += 1;
                    fields.iter_mut().for_each(|field| *field = None);
                    for (attribute, value) in row {
                        let index = *by_attribute.entry(attribute.as_str()).or_insert_with(|| {
                            position.get(column_name_of(attribute).as_ref()).copied()
                        });
                        if let Some(index) = index {
                            fields[index] = Some(value);
                            attributes[index] = attribute;
                        }
                    }
                    if key.contains('\0') {
                        return Err(DocumentError::Value {
                            table: self.name.clone(),
                            key: key.clone(),
                            attribute: KEY_COLUMN.into(),
                            source: ValueError::Nul,
                        });
                    }
                    crate::target::copy_encode::push_escaped(&mut rows, key.as_bytes());
                    for (index, (_, sql_type)) in columns.iter().enumerate() {
                        rows.push(b'\t');
                        match fields[index] {
                            None => rows.extend_from_slice(b"\\N"),
                            Some(value) => {
                                encode_field(&mut rows, value, sql_type).map_err(|source| {
                                    DocumentError::Value {
                                        table: self.name.clone(),
                                        key: key.clone(),
                                        attribute: attributes[index].to_owned(),
                                        source,
                                    }
                                })?
                            }
                        }
                    }
                    rows.push(b'\n');
                }
            }
        }
        let mut script = ddl.clone();
        if self.staging.as_ref() != Some(&columns) {
            let definitions: String = columns
                .iter()
                .map(|(name, sql_type)| format!(", {} {}", quote_identifier(name), sql_type.sql()))
                .collect();
            script.push(format!(
                "DROP TABLE IF EXISTS pg_temp.{STAGING}; CREATE TEMP TABLE {STAGING} ({} text{definitions}) ON COMMIT DELETE ROWS",
                quote_identifier(KEY_COLUMN)
            ));
            if self.staging.is_none() {
                script.push(format!(
                    "DROP TABLE IF EXISTS pg_temp.{STAGING_DELETES}; CREATE TEMP TABLE {STAGING_DELETES} ({} text) ON COMMIT DELETE ROWS",
                    quote_identifier(KEY_COLUMN)
                ));
            }
        }
        connection
            .execute("BEGIN")
            .await
            .map_err(pg("starting a transaction on", &self.name))?;
        let result = self
            .apply_in_transaction(
                connection,
                &columns,
                &script,
                (&rows, &mut binary),
                &deletes,
                try_direct,
            )
            .await;
        self.buffers = (rows, binary);
        let direct = match result {
            Ok(direct) => direct,
            Err(error) => {
                let _ = connection.execute("ROLLBACK").await;
                return Err(error);
            }
        };
        connection
            .execute("COMMIT")
            .await
            .map_err(pg("committing a batch into", &self.name))?;
        self.staging = Some(columns.clone());
        self.columns = columns;
        Ok(Applied {
            upserts,
            deletes: (batch.len() as u64).saturating_sub(upserts),
            changes: ddl,
            direct,
        })
    }

    async fn apply_in_transaction(
        &self,
        connection: &mut Connection,
        columns: &[(String, ColumnType)],
        script: &[String],
        (rows, binary): (&[u8], &mut Vec<u8>),
        deletes: &[u8],
        try_direct: bool,
    ) -> Result<bool, DocumentError> {
        let name = &self.name;
        if !script.is_empty() {
            connection
                .execute(&script.join("; "))
                .await
                .map_err(pg("changing the columns of", name))?;
        }
        let key = quote_identifier(KEY_COLUMN);
        let list: String = std::iter::once(key.clone())
            .chain(columns.iter().map(|(column, _)| quote_identifier(column)))
            .collect::<Vec<_>>()
            .join(", ");
        if !rows.is_empty() {
            let types: Option<Vec<_>> = std::iter::once("text")
                .chain(columns.iter().map(|(_, sql_type)| sql_type.sql()))
                .map(binary_type)
                .collect();
            let encoded = types.is_some_and(|types| text_to_binary_into(&[rows], &types, binary));
            let (format, payload) = if encoded {
                (" (FORMAT binary)", binary.as_slice())
            } else {
                ("", rows)
            };
            if try_direct && deletes.is_empty() {
                connection
                    .execute("SAVEPOINT pgferry_direct")
                    .await
                    .map_err(pg("starting a direct copy into", name))?;
                let direct = copy(
                    connection,
                    &format!("COPY {} ({list}) FROM STDIN{format}", name.quoted()),
                    payload,
                    name,
                )
                .await;
                match direct {
                    Ok(()) => return Ok(true),
                    Err(DocumentError::Postgres { source, .. })
                        if source.code() == Some("23505") =>
                    {
                        connection
                            .execute("ROLLBACK TO SAVEPOINT pgferry_direct")
                            .await
                            .map_err(pg("falling back to a merge into", name))?;
                    }
                    Err(error) => return Err(error),
                }
            }
            copy(
                connection,
                &format!("COPY {STAGING} ({list}) FROM STDIN{format}"),
                payload,
                name,
            )
            .await?;
            let deleted_at = quote_identifier(DELETED_AT_COLUMN);
            let mut sets: Vec<String> = columns
                .iter()
                .map(|(column, _)| {
                    let quoted = quote_identifier(column);
                    format!("{quoted} = EXCLUDED.{quoted}")
                })
                .collect();
            if !self.hard_delete {
                sets.push(format!("{deleted_at} = NULL"));
            }
            let action = if sets.is_empty() {
                "DO NOTHING".to_owned()
            } else {
                format!("DO UPDATE SET {}", sets.join(", "))
            };
            connection
                .execute(&format!(
                    "INSERT INTO {} AS t ({list}) SELECT {list} FROM {STAGING} ON CONFLICT ({key}) {action}",
                    name.quoted()
                ))
                .await
                .map_err(pg("merging a batch into", name))?;
        }
        if !deletes.is_empty() {
            copy(
                connection,
                &format!("COPY {STAGING_DELETES} ({key}) FROM STDIN"),
                deletes,
                name,
            )
            .await?;
            let statement = if self.hard_delete {
                format!(
                    "DELETE FROM {} t USING {STAGING_DELETES} d WHERE t.{key} = d.{key}",
                    name.quoted()
                )
            } else {
                let deleted_at = quote_identifier(DELETED_AT_COLUMN);
                format!(
                    "UPDATE {} t SET {deleted_at} = now() FROM {STAGING_DELETES} d WHERE t.{key} = d.{key} AND t.{deleted_at} IS NULL",
                    name.quoted()
                )
            };
            connection
                .execute(&statement)
                .await
                .map_err(pg("deleting rows of", name))?;
        }
        Ok(false)
    }
}

async fn copy(
    connection: &mut Connection,
    sql: &str,
    payload: &[u8],
    table: &TableName,
) -> Result<(), DocumentError> {
    let mut copy = connection
        .copy_in(sql)
        .await
        .map_err(pg("copying a batch for", table))?;
    for chunk in payload.chunks(COPY_CHUNK_BYTES) {
        copy.send(chunk)
            .await
            .map_err(pg("copying a batch for", table))?;
    }
    copy.finish()
        .await
        .map(|_| ())
        .map_err(pg("copying a batch for", table))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn table(columns: &[(&str, ColumnType)]) -> DocumentTable {
        DocumentTable {
            name: TableName {
                schema: "public".into(),
                table: "orders".into(),
            },
            columns: columns
                .iter()
                .map(|(name, sql_type)| ((*name).to_owned(), sql_type.clone()))
                .collect(),
            hard_delete: true,
            staging: None,
            buffers: Default::default(),
        }
    }

    fn document(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn a_batch_keeps_the_last_change_of_each_key() {
        let mut batch = DocumentBatch::default();
        assert!(batch.upsert(document(
            json!({"_key": "a", "_id": "c/a", "_rev": "1", "n": 1})
        )));
        assert!(batch.upsert(document(json!({"_key": "a", "n": 2}))));
        batch.delete("b".into());
        assert!(batch.upsert(document(json!({"_key": "b", "n": 3}))));
        batch.delete("c".into());
        assert!(!batch.upsert(document(json!({"n": 4}))));
        assert_eq!((batch.received(), batch.len()), (5, 3));
        assert_eq!(
            batch.changes["a"],
            Change::Upsert(document(json!({"n": 2}))),
            "_key, _id and _rev are not columns"
        );
        assert_eq!(batch.changes["c"], Change::Delete);
    }

    #[test]
    fn new_attributes_add_columns_and_disagreeing_values_widen_them() {
        let existing = table(&[("n", ColumnType::BigInt), ("s", ColumnType::Text)]);
        let mut batch = DocumentBatch::default();
        batch.upsert(document(
            json!({"_key": "a", "n": 1.5, "s": "x", "new": {"k": 1}, "empty": null}),
        ));
        batch.upsert(document(json!({"_key": "b", "s": 7})));
        let (columns, ddl) = existing.plan(&batch);
        assert_eq!(
            columns,
            vec![
                ("n".into(), ColumnType::Numeric),
                ("s".into(), ColumnType::Jsonb),
                ("new".into(), ColumnType::Jsonb)
            ]
        );
        assert_eq!(
            ddl,
            vec![
                r#"ALTER TABLE "public"."orders" ALTER COLUMN "n" TYPE numeric USING "n"::numeric"#,
                r#"ALTER TABLE "public"."orders" ALTER COLUMN "s" TYPE jsonb USING to_jsonb("s")"#,
                r#"ALTER TABLE "public"."orders" ADD COLUMN "new" jsonb"#,
            ]
        );
        let mut same = DocumentBatch::default();
        same.upsert(document(json!({"_key": "c", "n": 1, "s": "y"})));
        assert!(existing.plan(&same).1.is_empty());
    }
}
