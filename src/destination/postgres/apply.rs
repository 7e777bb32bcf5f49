//! Commits streamed changes into the target: one transaction per flush, so the slot is
//! confirmed past a change only once the target durably holds it.
//!
//! A flush arrives coalesced per key (the streaming loop's pending operations). Per table, in
//! this order: key moves (they read the old row before its delete), deletes, whole rows
//! (upserts), then partial rows (updates of the columns they carry). Each set goes through the
//! session's staging table with `COPY`, then one statement.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::plan::{decode_row, key_values};
use super::sql::ReplicaTable;
use super::{pg, ReplicaError};
use crate::destination::TableChanges;
use crate::metrics::Metrics;
use crate::pg::query::quote_identifier;
use crate::pg::{ConnectOptions, Connection};
use crate::singer::target_postgres::copy_encode::push_escaped;

/// Chooses rows of a target table to remove (see [`ReplicaWriter::remove_rows`]).
pub trait RowPicker {
    /// The 0-based positions, in `rows` (a JSON array of objects keyed by column name), of
    /// the rows to remove.
    fn pick(
        &mut self,
        rows: &str,
    ) -> impl std::future::Future<Output = Result<Vec<usize>, ReplicaError>> + Send;
}

/// The target side of streaming: the replicated tables and one connection that applies.
#[derive(Debug)]
pub struct ReplicaWriter {
    options: ConnectOptions,
    /// `SET …` run on every new connection, so the source's text values parse as they were
    /// printed (the source's DateStyle and IntervalStyle).
    session: String,
    inner: tokio::sync::Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    connection: Option<Connection>,
    tables: HashMap<Arc<str>, ReplicaTable>,
    /// Tables whose staging table exists in the current session.
    staged: HashSet<Arc<str>>,
}

/// COPY data is sent in pieces of about this size.
const COPY_CHUNK: usize = 1 << 20;

impl ReplicaWriter {
    /// A writer for `tables` (by id) on the database `options` names; `session` holds the
    /// settings each new connection runs first.
    pub fn new(
        options: ConnectOptions,
        session: String,
        tables: impl IntoIterator<Item = (Arc<str>, ReplicaTable)>,
    ) -> ReplicaWriter {
        ReplicaWriter {
            options,
            session,
            inner: tokio::sync::Mutex::new(Inner {
                connection: None,
                tables: tables.into_iter().collect(),
                staged: HashSet::new(),
            }),
        }
    }

    /// Commits `changes` in one transaction. `replaying`: changes older than the latest copy
    /// of the tables are being replayed, so an update may find its row not copied yet.
    pub async fn apply(
        &self,
        changes: Vec<TableChanges>,
        replaying: bool,
        metrics: &Metrics,
    ) -> Result<(), ReplicaError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut inner = self.inner.lock().await;
        let result = inner
            .apply(&self.options, &self.session, changes, replaying, metrics)
            .await;
        if result.is_err() {
            inner.abandon().await;
        }
        result
    }

    /// Empties the target table of `id` (the source table was truncated).
    pub async fn truncate(&self, id: &Arc<str>) -> Result<(), ReplicaError> {
        let mut inner = self.inner.lock().await;
        let Some(table) = inner.tables.get(id).cloned() else {
            return Ok(());
        };
        let result = async {
            let connection = inner.connect(&self.options, &self.session).await?;
            connection
                .execute(&table.truncate_sql())
                .await
                .map_err(pg("truncating", &table.target.to_string()))?;
            Ok(())
        }
        .await;
        if result.is_err() {
            inner.abandon().await;
        }
        result
    }

    /// Removes the rows of `id`'s target table that `pick` chooses: the table is read in
    /// pages of `columns` (a JSON array of objects keyed by column name), `pick` answers the
    /// positions to remove, and those rows go, all in one transaction. Returns how many.
    ///
    /// Why: a TRUNCATE of one partition empties only that partition, and which rows of the
    /// parent's target table it held is the source's question to answer (`pick`).
    pub async fn remove_rows(
        &self,
        id: &Arc<str>,
        columns: &[&str],
        pick: &mut impl RowPicker,
    ) -> Result<u64, ReplicaError> {
        let mut inner = self.inner.lock().await;
        let Some(table) = inner.tables.get(id).cloned() else {
            return Ok(0);
        };
        let name = table.target.to_string();
        if let Some(absent) = columns
            .iter()
            .find(|column| table.type_of(column).is_none())
        {
            return Err(ReplicaError::Unusable {
                table: name,
                detail: format!("it has no column {absent:?}, which the source's partition key reads\nHINT: add the column to the target table as the source has it"),
            });
        }
        let result = async {
            let Inner {
                connection, staged, ..
            } = &mut *inner;
            let connection = open(connection, staged, &self.options, &self.session).await?;
            connection
                .execute("BEGIN")
                .await
                .map_err(pg("starting a transaction for", &name))?;
            let selected: Vec<String> = columns
                .iter()
                .map(|column| format!("t.{}", quote_identifier(column)))
                .collect();
            connection
                .execute(&format!(
                    "DECLARE pgferry_rows NO SCROLL CURSOR FOR SELECT t.ctid::text, \
                     (SELECT pg_catalog.to_jsonb(x) FROM (SELECT {}) AS x)::text FROM {} AS t",
                    selected.join(", "),
                    table.target.quoted()
                ))
                .await
                .map_err(pg("reading the rows of", &name))?;
            let mut doomed: Vec<String> = Vec::new();
            loop {
                let page = connection
                    .query("FETCH 1000 FROM pgferry_rows")
                    .await
                    .map_err(pg("reading the rows of", &name))?;
                if page.is_empty() {
                    break;
                }
                let mut rows = String::from("[");
                for (index, row) in page.iter().enumerate() {
                    if index > 0 {
                        rows.push(',');
                    }
                    rows.push_str(row.get(1).unwrap_or("{}"));
                }
                rows.push(']');
                for position in pick.pick(&rows).await? {
                    if let Some(ctid) = page.get(position).and_then(|row| row.get(0)) {
                        doomed.push(ctid.to_owned());
                    }
                }
            }
            connection
                .execute("CLOSE pgferry_rows")
                .await
                .map_err(pg("reading the rows of", &name))?;
            let mut removed = 0;
            for chunk in doomed.chunks(10_000) {
                let list: Vec<String> = chunk.iter().map(|ctid| format!("'{ctid}'")).collect();
                removed += connection
                    .execute(&format!(
                        "DELETE FROM {} WHERE ctid = ANY (ARRAY[{}]::tid[])",
                        table.target.quoted(),
                        list.join(", ")
                    ))
                    .await
                    .map_err(pg("removing a truncated partition's rows from", &name))?;
            }
            connection.execute("COMMIT").await.map_err(pg(
                "committing the removal of a truncated partition's rows from",
                &name,
            ))?;
            Ok(removed)
        }
        .await;
        if result.is_err() {
            inner.abandon().await;
        }
        result
    }

    /// The source table of `id` has the columns `columns` now: new ones are added to the
    /// target, retyped ones change type there (columns the source dropped stay).
    pub async fn reshape(
        &self,
        id: &Arc<str>,
        columns: &[(String, String)],
    ) -> Result<(), ReplicaError> {
        let mut inner = self.inner.lock().await;
        let Some(mut table) = inner.tables.get(id).cloned() else {
            return Ok(());
        };
        let mut ddl = Vec::new();
        for (name, type_name) in columns {
            let quoted = quote_identifier(name);
            match table.columns.iter_mut().find(|(column, _)| column == name) {
                None => {
                    ddl.push(format!(
                        "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {quoted} {type_name}",
                        table.target.quoted()
                    ));
                    table.columns.push((name.clone(), type_name.clone()));
                }
                Some((_, existing)) if existing != type_name && !type_name.is_empty() => {
                    ddl.push(format!(
                        "ALTER TABLE {} ALTER COLUMN {quoted} TYPE {type_name} USING {quoted}::text::{type_name}",
                        table.target.quoted()
                    ));
                    *existing = type_name.clone();
                }
                Some(_) => {}
            }
        }
        if ddl.is_empty() {
            return Ok(());
        }
        let target = table.target.to_string();
        let result = async {
            let connection = inner.connect(&self.options, &self.session).await?;
            for statement in &ddl {
                tracing::info!(table = %target, statement = %statement, "following the source's schema change");
                connection
                    .execute(statement)
                    .await
                    .map_err(pg("changing the columns of", &target))?;
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                inner.staged.remove(id);
                inner.tables.insert(Arc::clone(id), table);
                Ok(())
            }
            Err(error) => {
                inner.abandon().await;
                Err(error)
            }
        }
    }
}

impl Inner {
    async fn connect(
        &mut self,
        options: &ConnectOptions,
        session: &str,
    ) -> Result<&mut Connection, ReplicaError> {
        open(&mut self.connection, &mut self.staged, options, session).await
    }

    /// After a failure: roll back if the connection still works, else drop it.
    async fn abandon(&mut self) {
        self.staged.clear();
        if let Some(mut connection) = self.connection.take() {
            if connection.execute("ROLLBACK").await.is_ok() {
                self.connection = Some(connection);
            }
        }
    }

    async fn apply(
        &mut self,
        options: &ConnectOptions,
        session: &str,
        changes: Vec<TableChanges>,
        replaying: bool,
        metrics: &Metrics,
    ) -> Result<(), ReplicaError> {
        let Inner {
            connection,
            tables,
            staged,
        } = self;
        let connection = open(connection, staged, options, session).await?;
        connection
            .execute("BEGIN")
            .await
            .map_err(pg("starting a transaction for", "streamed changes"))?;
        let mut rows = 0u64;
        let mut bytes = 0u64;
        for changes in changes {
            let Some(table) = tables.get(&changes.id) else {
                return Err(ReplicaError::Unusable {
                    table: changes.id.to_string(),
                    detail:
                        "changes arrived for a table the writer does not know (a bug in pgferry)"
                            .into(),
                });
            };
            let name = table.target.to_string();
            if !staged.contains(&changes.id) {
                connection
                    .execute(&table.staging_sql())
                    .await
                    .map_err(pg("creating the staging table of", &name))?;
                staged.insert(Arc::clone(&changes.id));
            }
            let mut applier = TableApplier {
                connection,
                table,
                name: &name,
                bytes: 0,
            };
            rows += applier.apply(changes, replaying).await?;
            bytes += applier.bytes;
        }
        connection
            .execute("COMMIT")
            .await
            .map_err(pg("committing streamed changes into", "the target"))?;
        metrics
            .ingested_documents
            .fetch_add(rows, Ordering::Relaxed);
        metrics.ingested_bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }
}

/// The session's connection, opened (with `session` run first) when there is none; a new
/// session has no staging tables yet.
async fn open<'c>(
    connection: &'c mut Option<Connection>,
    staged: &mut HashSet<Arc<str>>,
    options: &ConnectOptions,
    session: &str,
) -> Result<&'c mut Connection, ReplicaError> {
    let open = match connection.take() {
        Some(open) => open,
        None => {
            let mut fresh = Connection::connect(options)
                .await
                .map_err(pg("connecting to the target for", "streamed changes"))?;
            if !session.is_empty() {
                fresh
                    .execute(session)
                    .await
                    .map_err(pg("setting up the session for", "streamed changes"))?;
            }
            staged.clear();
            fresh
        }
    };
    Ok(connection.insert(open))
}

/// Applies one table's changes inside the open transaction.
struct TableApplier<'a> {
    connection: &'a mut Connection,
    table: &'a ReplicaTable,
    name: &'a str,
    bytes: u64,
}

impl TableApplier<'_> {
    async fn apply(&mut self, changes: TableChanges, replaying: bool) -> Result<u64, ReplicaError> {
        let table = self.table;
        let source = table.source.as_str();
        let key_count = table.keys.len();
        let mut patches = changes.patches;
        let mut applied = 0u64;
        // Key moves first: they read the old row, which a delete below removes.
        for (key, from, row) in changes.moves {
            let values = decode_row(source, &row)?;
            let from = key_values(source, &from, key_count)?;
            let moved = self
                .connection
                .execute(&table.move_sql(&from, &values))
                .await
                .map_err(pg("moving a row to its new key in", self.name))?;
            if moved == 0 {
                // The old row is not there (a replay over a newer copy): update the new key.
                patches.push((key, row));
            } else {
                applied += 1;
            }
        }
        if !changes.deletes.is_empty() {
            let mut data = Vec::with_capacity(changes.deletes.len() * 16);
            for key in &changes.deletes {
                push_row(
                    &mut data,
                    key_values(source, key, key_count)?
                        .iter()
                        .map(|v| Some(v.as_str())),
                );
            }
            let keys: Vec<&str> = table.keys.iter().map(String::as_str).collect();
            self.stage(&keys, &data).await?;
            self.connection
                .execute(&table.delete_sql())
                .await
                .map_err(pg("deleting rows of", self.name))?;
            applied += changes.deletes.len() as u64;
        }
        applied += self.write_rows(changes.upserts, false, replaying).await?;
        applied += self.write_rows(patches, true, replaying).await?;
        Ok(applied)
    }

    /// Whole rows (`partial` false) are upserted; partial ones update the columns they carry.
    /// Rows are grouped by the columns they carry (one group unless the shape changed).
    async fn write_rows(
        &mut self,
        rows: Vec<(String, Vec<u8>)>,
        partial: bool,
        replaying: bool,
    ) -> Result<u64, ReplicaError> {
        let table = self.table;
        let mut groups: HashMap<Vec<String>, (Vec<u8>, u64, String)> = HashMap::new();
        for (key, row) in rows {
            let mut values = decode_row(&table.source, &row)?;
            // Target column order, so equal column sets group together.
            values.sort_by_key(|(name, _)| {
                table
                    .columns
                    .iter()
                    .position(|(column, _)| column == name)
                    .unwrap_or(usize::MAX)
            });
            if let Some((name, _)) = values
                .iter()
                .find(|(name, _)| table.type_of(name).is_none())
            {
                return Err(ReplicaError::Unusable {
                    table: self.name.to_owned(),
                    detail: format!("a streamed row carries column {name:?}, which the table does not have (a bug in pgferry: schema changes add columns first)"),
                });
            }
            let columns: Vec<String> = values.iter().map(|(name, _)| name.clone()).collect();
            let group = groups
                .entry(columns)
                .or_insert_with(|| (Vec::new(), 0, key.clone()));
            push_row(
                &mut group.0,
                values.iter().map(|(_, value)| value.as_deref()),
            );
            group.1 += 1;
        }
        let mut applied = 0;
        for (columns, (data, count, first_key)) in groups {
            let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
            let statement = if partial {
                match table.patch_sql(&columns) {
                    Some(statement) => statement,
                    // Nothing but the key changed hands: nothing to write.
                    None => continue,
                }
            } else {
                table.upsert_sql(&columns)
            };
            self.stage(&columns, &data).await?;
            let changed = self.connection.execute(&statement).await.map_err(pg(
                if partial {
                    "updating rows of"
                } else {
                    "upserting rows into"
                },
                self.name,
            ))?;
            if partial && changed < count && !replaying {
                return Err(ReplicaError::Lost {
                    table: self.name.to_owned(),
                    missing: count - changed,
                    expected: count,
                    first_key,
                });
            }
            applied += count;
        }
        Ok(applied)
    }

    /// Empties the staging table and copies `data` (COPY text rows of `columns`) into it.
    async fn stage(&mut self, columns: &[&str], data: &[u8]) -> Result<(), ReplicaError> {
        self.connection
            .execute(&self.table.clear_staging_sql())
            .await
            .map_err(pg("emptying the staging table of", self.name))?;
        let mut copy = self
            .connection
            .copy_in(&self.table.copy_in_sql(columns, false, false))
            .await
            .map_err(pg("staging rows of", self.name))?;
        for piece in data.chunks(COPY_CHUNK) {
            copy.send(piece)
                .await
                .map_err(pg("staging rows of", self.name))?;
        }
        copy.finish()
            .await
            .map_err(pg("staging rows of", self.name))?;
        self.bytes += data.len() as u64;
        Ok(())
    }
}

/// Appends one COPY text row (`None` = NULL).
fn push_row<'v>(out: &mut Vec<u8>, values: impl Iterator<Item = Option<&'v str>>) {
    for (index, value) in values.enumerate() {
        if index > 0 {
            out.push(b'\t');
        }
        match value {
            None => out.extend_from_slice(b"\\N"),
            Some(text) => push_escaped(out, text.as_bytes()),
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_rows_escape_and_mark_nulls() {
        let mut out = Vec::new();
        push_row(&mut out, [Some("a\tb"), None, Some("c\\d\n")].into_iter());
        assert_eq!(out, b"a\\tb\t\\N\tc\\\\d\\n\n");
    }
}
