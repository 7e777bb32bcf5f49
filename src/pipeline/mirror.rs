//! FULL_TABLE mirrors its tables: after a complete copy, what the destination holds under a
//! key its table no longer has is removed, so a collection (or target table) is the table,
//! not the table plus every row ever deleted from it.
//!
//! The rule: only after every table's copy finished (an interrupted or failed copy removes
//! nothing), the keys each table has *now* are read from the source (through the same key
//! rules the copy used), and the destination's keys not among them go. A row deleted after the
//! copy's snapshot is removed too (the table no longer has it); a row inserted after it is
//! simply not there yet. Keyless tables need none of this: their collection or target table is
//! emptied before the reload. `"full_table_mirror": false` keeps the old, append-only
//! behaviour (the old target ignored ACTIVATE_VERSION).
//!
//! This module is the source's side and the rule; listing and removing what the destination
//! holds is the destination's (`destination::Destination::remove_stale`), which asks for the
//! source's keys through [`SourceKeys`].

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};

use super::RunError;
use super::TableTask;
use crate::decode::copy_binary::CopyBinaryDecoder;
use crate::destination::gdn::document::DocumentPlan;
use crate::destination::mirror::{MirrorError, Mirrored, Removed, SourceKeys};
use crate::destination::postgres::copy::TEXT_SESSION;
use crate::destination::Destination;
use crate::pg::catalog::{NumericMode, Table};
use crate::pg::copy::CopyOut;
use crate::pg::{ConnectOptions, Connection, PgError};

/// What a copy wrote into, for removing what its tables no longer have afterwards: taken from
/// the preparation before the copy consumes it.
pub(crate) struct Copied {
    /// The copied tasks.
    pub(crate) tasks: Vec<TableTask>,
    /// Where they were copied to.
    pub(crate) destination: Destination,
}

impl Copied {
    /// The destination of `prepared`'s copy.
    pub(crate) fn of(prepared: &super::Prepared) -> Copied {
        Copied {
            tasks: prepared.tasks.clone(),
            destination: prepared.destination.clone(),
        }
    }

    /// Removes what the destination holds of keys the tables no longer have (as of
    /// `snapshot` when given, else now); the null destination holds nothing.
    pub(crate) async fn remove_stale(
        &self,
        source: &ConnectOptions,
        numeric_mode: NumericMode,
        snapshot: Option<&str>,
    ) -> Result<Removed, RunError> {
        let tables: Vec<Mirrored<'_>> = self
            .tasks
            .iter()
            .map(|task| Mirrored {
                target: &task.target,
                plan: &task.plan,
            })
            .collect();
        let mut keys = SnapshotKeys {
            options: source,
            snapshot,
            tasks: &self.tasks,
            numeric_mode,
            connection: None,
            keys: HashSet::new(),
        };
        let removed = Box::pin(self.destination.remove_stale(&tables, &mut keys)).await?;
        keys.finish().await?;
        Ok(removed)
    }
}

/// The source's keys as of the copy's snapshot (or now), read on one connection opened when a
/// destination first asks.
struct SnapshotKeys<'a> {
    options: &'a ConnectOptions,
    snapshot: Option<&'a str>,
    tasks: &'a [TableTask],
    numeric_mode: NumericMode,
    connection: Option<Connection>,
    /// The fingerprints of the document keys last read.
    keys: HashSet<u128>,
}

impl SnapshotKeys<'_> {
    /// Ends the snapshot's transaction and closes the connection, when one was opened.
    async fn finish(self) -> Result<(), PgError> {
        if let Some(mut connection) = self.connection {
            if self.snapshot.is_some() {
                connection.execute("COMMIT").await?;
            }
            connection.close().await;
        }
        Ok(())
    }
}

/// The source connection of `connection`, opened (with the copy's text session settings when
/// `text`, then under `snapshot`) on first use.
async fn opened<'c>(
    connection: &'c mut Option<Connection>,
    options: &ConnectOptions,
    snapshot: Option<&str>,
    text: bool,
) -> Result<&'c mut Connection, PgError> {
    if let Some(connection) = connection {
        return Ok(connection);
    }
    let mut opened = Connection::connect(options).await?;
    if text {
        opened.execute(TEXT_SESSION).await?;
    }
    adopt_snapshot(&mut opened, snapshot).await?;
    Ok(connection.insert(opened))
}

impl SourceKeys for SnapshotKeys<'_> {
    type Error = RunError;

    async fn read_keys(&mut self, tasks: &[usize]) -> Result<(), RunError> {
        let connection = opened(&mut self.connection, self.options, self.snapshot, false).await?;
        self.keys.clear();
        for task in tasks.iter().filter_map(|index| self.tasks.get(*index)) {
            source_keys(connection, task, self.numeric_mode, &mut self.keys).await?;
        }
        Ok(())
    }

    fn has(&self, key: &str) -> bool {
        self.keys.contains(&fingerprint(key))
    }

    async fn key_rows<'s>(
        &'s mut self,
        task: usize,
        columns: &'s [String],
        binary: bool,
    ) -> Result<CopyOut<'s>, PgError> {
        let table = self.tasks.get(task).map(|task| task.table.qualified_name());
        let connection = opened(&mut self.connection, self.options, self.snapshot, true).await?;
        let keys: Vec<String> = columns
            .iter()
            .map(|key| crate::pg::query::quote_identifier(key))
            .collect();
        let format = if binary { " (FORMAT binary)" } else { "" };
        connection
            .copy_out(&format!(
                "COPY (SELECT {} FROM {}) TO STDOUT{format}",
                keys.join(", "),
                table.unwrap_or_default()
            ))
            .await
    }
}

impl From<MirrorError> for RunError {
    fn from(error: MirrorError) -> RunError {
        match error {
            MirrorError::Gdn(error) => RunError::Destination(error),
            MirrorError::Replica(error) => RunError::Replica(error),
            MirrorError::Refused(message) => RunError::Unsupported(message),
        }
    }
}

/// A 128-bit fingerprint of a document key: the set of a table's keys is kept as these, 16
/// bytes a row, and two distinct keys share one with odds of about 2⁻¹²⁸ per pair.
fn fingerprint(key: &str) -> u128 {
    let half = |seed: u64| {
        let mut hasher = DefaultHasher::new();
        seed.hash(&mut hasher);
        key.hash(&mut hasher);
        hasher.finish()
    };
    (u128::from(half(0x9e37_79b9_7f4a_7c15)) << 64) | u128::from(half(0x2545_f491_4f6c_dd1d))
}

/// The plan that derives `table`'s document keys from its key columns alone, exactly as the
/// copy's `plan` derives them from whole rows.
fn key_plan(
    table: &Table,
    plan: &DocumentPlan,
    numeric_mode: NumericMode,
) -> Result<DocumentPlan, RunError> {
    let mut keys_only = table.clone();
    keys_only.columns = table
        .key_columns
        .iter()
        .filter_map(|key| table.columns.iter().find(|column| &column.name == key))
        .cloned()
        .collect();
    Ok(DocumentPlan::new(&keys_only, numeric_mode, false)?
        .with_key_prefix(plan.key_prefix().map(str::to_owned)))
}

/// Adds the fingerprints of `task`'s table's current keys to `keys`.
async fn source_keys(
    source: &mut Connection,
    task: &TableTask,
    numeric_mode: NumericMode,
    keys: &mut HashSet<u128>,
) -> Result<(), RunError> {
    let plan = key_plan(&task.table, &task.plan, numeric_mode)?;
    let name = task.table.qualified_name();
    let mut copy = source
        .copy_out(&format!(
            "COPY (SELECT {} FROM {name}) TO STDOUT (FORMAT binary)",
            plan.select_list()
        ))
        .await?;
    let mut decoder = CopyBinaryDecoder::new(plan.width());
    let mut scratch = Vec::new();
    while let Some(data) = copy.next().await? {
        decoder.decode_chunk_with(data, |row| {
            scratch.clear();
            if let Some(key) = plan.encode(row, &mut scratch).map_err(RunError::Plan)? {
                keys.insert(fingerprint(key.as_str()));
            }
            Ok::<(), RunError>(())
        })?;
    }
    decoder
        .finish()
        .map_err(|error| RunError::Unsupported(format!("reading the keys of {name}: {error}")))?;
    Ok(())
}

impl From<crate::decode::copy_binary::CopyBinaryError> for RunError {
    fn from(error: crate::decode::copy_binary::CopyBinaryError) -> RunError {
        RunError::Unsupported(format!("reading the source's keys: {error}"))
    }
}

/// Reads as of the exported snapshot `snapshot`, when there is one: a repeatable-read
/// transaction that adopts it (left open for the reads that follow).
async fn adopt_snapshot(
    connection: &mut Connection,
    snapshot: Option<&str>,
) -> Result<(), PgError> {
    if let Some(name) = snapshot {
        connection
            .execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}",
                crate::pg::query::quote_literal(name)
            ))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_tell_keys_apart_and_repeat_for_the_same_key() {
        assert_eq!(fingerprint("a:1"), fingerprint("a:1"));
        assert_ne!(fingerprint("a:1"), fingerprint("a:2"));
        assert_ne!(fingerprint(""), fingerprint("\0"));
    }
}
