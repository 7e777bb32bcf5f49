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

use std::collections::{BTreeMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use super::RunError;
use super::TableTask;
use crate::decode::copy_binary::CopyBinaryDecoder;
use crate::destination::gdn::document::DocumentPlan;
use crate::destination::postgres::copy::{ReplicaCopy, TEXT_SESSION};
use crate::destination::postgres::{pg, ReplicaError};
use crate::gdn::client::{GdnClient, DELETE_BATCH};
use crate::gdn::cursor::KeysetScan;
use crate::gdn::writer::WriterSettings;
use crate::pg::catalog::{NumericMode, Table};
use crate::pg::{ConnectOptions, Connection, PgError};

/// Keys asked for per page while the collection's keys are read.
const KEY_PAGE: u64 = 10_000;

/// What mirroring removed, per table or collection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    /// `(collection or target table, what was removed)`.
    pub per_destination: Vec<(String, u64)>,
}

impl Removed {
    /// Everything removed.
    pub fn total(&self) -> u64 {
        self.per_destination.iter().map(|(_, count)| count).sum()
    }
}

/// What a copy wrote into, for removing what its tables no longer have afterwards: taken from
/// the preparation before the copy consumes it.
pub(crate) struct Destination {
    /// The copied tasks.
    pub(crate) tasks: Vec<TableTask>,
    /// GDN (with its writer settings), when the destination is GDN.
    pub(crate) gdn: Option<(GdnClient, WriterSettings)>,
    /// The target database and tables, when the destination is PostgreSQL.
    pub(crate) postgres: Option<(ConnectOptions, Vec<ReplicaCopy>)>,
}

impl Destination {
    /// The destination of `prepared`'s copy.
    pub(crate) fn of(prepared: &super::Prepared) -> Destination {
        Destination {
            tasks: prepared.tasks.clone(),
            gdn: prepared
                .client
                .clone()
                .map(|client| (client, prepared.settings.clone())),
            postgres: prepared
                .replica
                .as_ref()
                .map(|replica| (replica.target.clone(), replica.copies.clone())),
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
        match (&self.postgres, &self.gdn) {
            (Some((target, copies)), _) => {
                Box::pin(mirror_tables(source, target, &self.tasks, copies, snapshot)).await
            }
            (None, Some((client, settings))) => {
                Box::pin(mirror_collections(
                    source,
                    client,
                    &self.tasks,
                    numeric_mode,
                    settings.max_retries,
                    settings.wait_for_sync,
                    snapshot,
                ))
                .await
            }
            (None, None) => Ok(Removed::default()),
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

/// Removes from each keyed task's collection the documents whose keys its tables no longer
/// have (tables sharing a collection count together, and only documents whose keys carry one
/// of their prefixes are considered there). `snapshot` (an exported snapshot) reads the keys
/// as of that instant instead of now.
async fn mirror_collections(
    source: &ConnectOptions,
    client: &GdnClient,
    tasks: &[TableTask],
    numeric_mode: NumericMode,
    max_retries: u32,
    wait_for_sync: bool,
    snapshot: Option<&str>,
) -> Result<Removed, RunError> {
    let mut by_collection: BTreeMap<&str, Vec<&TableTask>> = BTreeMap::new();
    for task in tasks {
        by_collection
            .entry(&task.target.collection)
            .or_default()
            .push(task);
    }
    let mut removed = Removed::default();
    let mut connection = Connection::connect(source).await?;
    adopt_snapshot(&mut connection, snapshot).await?;
    for (collection, tasks) in by_collection {
        // A keyless table's collection was emptied before its reload: nothing is stale.
        if tasks.iter().any(|task| task.target.keyless) {
            continue;
        }
        let mut keys = HashSet::new();
        for task in &tasks {
            source_keys(&mut connection, task, numeric_mode, &mut keys).await?;
        }
        // In a collection tables share, only keys carrying one of these tables' prefixes.
        let starts: Vec<String> = tasks
            .iter()
            .filter_map(|task| task.plan.key_start())
            .collect();
        let shared = tasks.iter().any(|task| task.plan.key_prefix().is_some());
        let mut scan = KeysetScan::new(client, collection, KEY_PAGE, 60, max_retries).keys();
        let mut stale: Vec<String> = Vec::new();
        let mut count = 0u64;
        while let Some(page) = scan.next_page().await? {
            for raw in &page.documents {
                let key: String = serde_json::from_str(raw.get()).map_err(|error| {
                    RunError::Unsupported(format!(
                        "collection {collection:?} answered a key that is not a string ({error}): {}",
                        raw.get()
                    ))
                })?;
                let ours = !shared || starts.iter().any(|start| key.starts_with(start.as_str()));
                if ours && !keys.contains(&fingerprint(&key)) {
                    stale.push(key);
                }
            }
            if stale.len() >= DELETE_BATCH {
                count += delete(client, collection, &mut stale, max_retries, wait_for_sync).await?;
            }
        }
        count += delete(client, collection, &mut stale, max_retries, wait_for_sync).await?;
        if count > 0 {
            tracing::info!(%collection, removed = count, "removed the documents whose rows the table no longer has");
        }
        removed.per_destination.push((collection.to_owned(), count));
    }
    if snapshot.is_some() {
        connection.execute("COMMIT").await?;
    }
    connection.close().await;
    Ok(removed)
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

/// Deletes `keys` from `collection` (a document already gone counts as done).
async fn delete(
    client: &GdnClient,
    collection: &str,
    keys: &mut Vec<String>,
    max_retries: u32,
    wait_for_sync: bool,
) -> Result<u64, RunError> {
    if let Some((key, failure)) = client
        .delete_keys(collection, keys, max_retries, wait_for_sync)
        .await?
    {
        return Err(RunError::Unsupported(format!(
            "GDN refused to remove document {key:?} of {collection:?}, whose row the table no longer has: errorNum {} ({})\nHINT: set \"full_table_mirror\": false to keep such documents",
            failure.error_num, failure.message
        )));
    }
    let count = keys.len() as u64;
    keys.clear();
    Ok(count)
}

/// Removes from each keyed target table that held rows before the run the rows whose keys
/// the source table no longer has (soft-deleted with `hard_delete: false`); `snapshot` (an
/// exported snapshot) reads the source's keys as of that instant instead of now.
async fn mirror_tables(
    source: &ConnectOptions,
    target: &ConnectOptions,
    tasks: &[TableTask],
    copies: &[ReplicaCopy],
    snapshot: Option<&str>,
) -> Result<Removed, RunError> {
    let replica = |error: ReplicaError| RunError::Replica(Box::new(error));
    let mut removed = Removed::default();
    let mut from = Connection::connect(source).await?;
    from.execute(TEXT_SESSION).await?;
    adopt_snapshot(&mut from, snapshot).await?;
    let mut into = Connection::connect(target)
        .await
        .map_err(pg(
            "connecting to the target for",
            "removing rows the source no longer has",
        ))
        .map_err(replica)?;
    into.execute(TEXT_SESSION)
        .await
        .map_err(pg("setting up the target session for", "removing rows"))
        .map_err(replica)?;
    for (task, copy) in tasks.iter().zip(copies) {
        // Keyless tables were emptied before the reload; a table empty before the run holds
        // only what this copy wrote.
        if copy.table.keys.is_empty() || copy.status.empty {
            continue;
        }
        let name = copy.table.target.to_string();
        let count = mirror_table(&mut from, &mut into, task, copy)
            .await
            .map_err(|error| match error {
                Side::Source(error) => RunError::Source(error),
                Side::Target(error) => replica(pg(
                    "removing rows the source no longer has from",
                    &name,
                )(error)),
            });
        let count = match count {
            Ok(count) => count,
            Err(error) => {
                let _ = into.execute("ROLLBACK").await;
                return Err(error);
            }
        };
        if count > 0 {
            tracing::info!(table = %name, removed = count, "removed the rows the source table no longer has");
        }
        removed.per_destination.push((name, count));
    }
    if snapshot.is_some() {
        from.execute("COMMIT").await?;
    }
    from.close().await;
    into.close().await;
    Ok(removed)
}

/// Which end failed.
enum Side {
    Source(PgError),
    Target(PgError),
}

/// Ships the source's key columns into a temporary table beside the target and removes the
/// target's rows without a match, in one target transaction.
async fn mirror_table(
    from: &mut Connection,
    into: &mut Connection,
    task: &TableTask,
    copy: &ReplicaCopy,
) -> Result<u64, Side> {
    let table = &copy.table;
    into.execute("BEGIN").await.map_err(Side::Target)?;
    into.execute(&table.source_keys_sql())
        .await
        .map_err(Side::Target)?;
    let keys: Vec<String> = table
        .keys
        .iter()
        .map(|key| crate::pg::query::quote_identifier(key))
        .collect();
    let format = if copy.status.binary {
        " (FORMAT binary)"
    } else {
        ""
    };
    let mut sink = into
        .copy_in(&format!(
            "COPY pg_temp.pgferry_source_keys FROM STDIN{format}"
        ))
        .await
        .map_err(Side::Target)?;
    let mut out = match from
        .copy_out(&format!(
            "COPY (SELECT {} FROM {}) TO STDOUT{format}",
            keys.join(", "),
            task.table.qualified_name()
        ))
        .await
    {
        Ok(out) => out,
        Err(error) => {
            let _ = sink.abort("the source could not be read").await;
            return Err(Side::Source(error));
        }
    };
    loop {
        match out.next().await {
            Ok(Some(data)) => sink.send(&data).await.map_err(Side::Target)?,
            Ok(None) => break,
            Err(error) => {
                let _ = sink.abort("the source could not be read").await;
                return Err(Side::Source(error));
            }
        }
    }
    sink.finish().await.map_err(Side::Target)?;
    into.execute("ANALYZE pg_temp.pgferry_source_keys")
        .await
        .map_err(Side::Target)?;
    let count = into
        .execute(&table.remove_unmatched_sql())
        .await
        .map_err(Side::Target)?;
    into.execute("COMMIT").await.map_err(Side::Target)?;
    Ok(count)
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
