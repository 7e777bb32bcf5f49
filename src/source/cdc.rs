//! Change data capture: wal2json changes from the slot → coalesced document operations → GDN,
//! with the slot confirmed only up to what GDN durably holds.
//!
//! Changes are grouped per collection and coalesced per key (last write wins; an insert then a
//! delete is a delete; a partial update — unchanged TOASTed columns are absent — merges into a
//! pending upsert or becomes a PATCH, never a null). A flush writes every pending operation,
//! waits for GDN's 201s, and only then moves the watermark to the last commit seen: that LSN
//! goes to PostgreSQL as the flushed position and into the state file. A large transaction is
//! flushed in pieces (bounded memory) while the watermark waits for its commit.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::decode::replication::ReplicationMessage;
use crate::decode::wal2json::{parse_v2, Action, Change, ColumnValue, Wal2JsonError};
use crate::gdn::client::{retrying, BatchOutcome, GdnClient, GdnError};
use crate::gdn::document::{DocumentError, DocumentPlan};
use crate::metrics::Metrics;
use crate::pg::replication::LogicalStream;
use crate::pg::{Lsn, PgError};
use crate::source::state::{CdcState, StateError, StateFile};

/// GDN's "document not found".
const DOCUMENT_NOT_FOUND: u64 = 1202;

/// Why streaming stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CdcError {
    /// The replication connection failed.
    #[error("replication stream: {0}")]
    Postgres(#[from] PgError),
    /// A wal2json message could not be decoded.
    #[error(transparent)]
    Decode(#[from] Wal2JsonError),
    /// A change could not become a document.
    #[error("change at {lsn}: {source}")]
    Document {
        /// The change's LSN.
        lsn: Lsn,
        /// The reason.
        source: DocumentError,
    },
    /// GDN failed for good.
    #[error("writing changes of {table} into collection {collection:?}: {source}")]
    Gdn {
        /// `schema.table`.
        table: String,
        /// The collection.
        collection: String,
        /// The error.
        source: Box<GdnError>,
    },
    /// GDN refused a document on every attempt.
    #[error("GDN refused {operation} of _key {key:?} in collection {collection:?} (table {table}): errorNum {error_num}: {message}\nHINT: the slot was not confirmed past this change; fix the cause and restart, streaming resumes here")]
    Refused {
        /// `upsert`, `patch` or `delete`.
        operation: &'static str,
        /// `schema.table`.
        table: String,
        /// The collection.
        collection: String,
        /// The document key.
        key: String,
        /// GDN's error number.
        error_num: u64,
        /// GDN's message.
        message: String,
    },
    /// A change arrived for a table pgferry cannot stream.
    #[error("{0}")]
    Unsupported(String),
    /// The state file failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The server ended the stream.
    #[error("the server ended the replication stream\nHINT: the server may be shutting down; restart pgferry to resume from the last confirmed position")]
    Ended,
}

/// One streamed table: how its rows become documents and where they go.
#[derive(Debug, Clone)]
pub struct CdcTable {
    /// Rows → documents (same attribute names and keys as the snapshot).
    pub plan: DocumentPlan,
    /// The collection.
    pub collection: Arc<str>,
}

/// Knobs of the stream.
#[derive(Debug, Clone)]
pub struct CdcSettings {
    /// Pending documents that trigger a flush.
    pub flush_documents: usize,
    /// Pending bytes that trigger a flush.
    pub flush_bytes: usize,
    /// Longest time a change waits before it is flushed.
    pub flush_after: Duration,
    /// Documents per request.
    pub batch_size_rows: usize,
    /// `waitForSync=true`.
    pub wait_for_sync: bool,
    /// Attempts for retryable failures.
    pub max_retries: u32,
    /// Stop once everything up to this LSN is applied (batch runs); `None` = run until told.
    pub stop_at: Option<Lsn>,
}

/// What streaming did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CdcSummary {
    /// Row changes received (before coalescing).
    pub changes: u64,
    /// Transactions committed.
    pub transactions: u64,
    /// The final watermark (confirmed to PostgreSQL and in the state file).
    pub confirmed: Lsn,
}

#[derive(Debug)]
enum Op {
    Upsert(Vec<u8>),
    Patch(Vec<u8>),
    Delete,
    /// A key change whose new image lacks unchanged TOASTed columns: the new document is the
    /// old one (read at flush time, before the old key is deleted) with this patch on top.
    MoveFrom(String, Vec<u8>),
}

#[derive(Debug, Default)]
struct CollectionOps {
    table: String,
    ops: HashMap<String, Op>,
}

/// Pending operations, coalesced per collection and key.
#[derive(Debug, Default)]
struct Pending {
    collections: HashMap<Arc<str>, CollectionOps>,
    documents: usize,
    bytes: usize,
    since: Option<Instant>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.documents == 0
    }

    /// The pending operation of `key`, if any.
    fn op(&self, collection: &Arc<str>, key: &str) -> Option<&Op> {
        self.collections.get(collection)?.ops.get(key)
    }

    fn put(&mut self, collection: &Arc<str>, table: &str, key: String, op: Op) {
        let entry = self.collections.entry(Arc::clone(collection)).or_default();
        if entry.table.is_empty() {
            entry.table = table.to_owned();
        }
        let size = match &op {
            Op::Upsert(doc) | Op::Patch(doc) | Op::MoveFrom(_, doc) => doc.len(),
            Op::Delete => key.len(),
        };
        let merged = match (entry.ops.remove(&key), op) {
            (Some(Op::Upsert(doc)), Op::Patch(patch)) => Op::Upsert(merge_objects(&doc, &patch)),
            (Some(Op::Patch(earlier)), Op::Patch(patch)) => {
                Op::Patch(merge_objects(&earlier, &patch))
            }
            (Some(Op::MoveFrom(from, earlier)), Op::Patch(patch)) => {
                Op::MoveFrom(from, merge_objects(&earlier, &patch))
            }
            (_, op) => op,
        };
        entry.ops.insert(key, merged);
        self.documents += 1;
        self.bytes += size;
        self.since.get_or_insert_with(Instant::now);
    }
}

/// Overlays the attributes of JSON object `patch` on JSON object `base`.
fn merge_objects(base: &[u8], patch: &[u8]) -> Vec<u8> {
    let parsed = (
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(base),
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(patch),
    );
    match parsed {
        (Ok(mut merged), Ok(overlay)) => {
            merged.extend(overlay);
            serde_json::to_vec(&merged).unwrap_or_else(|_| patch.to_vec())
        }
        // Both sides are documents pgferry wrote itself, so this does not happen; keeping the
        // patch alone would still be correct for a PATCH (it only drops the merge).
        _ => patch.to_vec(),
    }
}

/// `(name, text)` pairs of a row image, text borrowed where wal2json did not escape.
/// A row image as `(column, text)`; `None` text is SQL NULL.
type Image<'c> = Vec<(&'c str, Option<std::borrow::Cow<'c, str>>)>;

fn image<'c>(columns: &'c [ColumnValue<'_>], lsn: Lsn) -> Result<Image<'c>, CdcError> {
    columns
        .iter()
        .map(|column| {
            column
                .text()
                .map(|text| (column.name.as_ref(), text))
                .map_err(|detail| CdcError::Decode(Wal2JsonError { lsn, detail }))
        })
        .collect()
}

fn as_pairs<'a>(image: &'a Image<'a>) -> Vec<(&'a str, Option<&'a str>)> {
    image
        .iter()
        .map(|(name, text)| (*name, text.as_deref()))
        .collect()
}

/// Streams changes until `settings.stop_at` is reached, `shutdown` fires, or an error.
#[allow(clippy::too_many_arguments)]
pub async fn stream_changes(
    mut stream: LogicalStream,
    tables: &HashMap<(String, String), CdcTable>,
    client: Option<&GdnClient>,
    settings: &CdcSettings,
    state_file: &StateFile,
    mut state: CdcState,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    metrics: &Metrics,
) -> Result<CdcSummary, CdcError> {
    let mut pending = Pending::default();
    let mut summary = CdcSummary {
        confirmed: state.lsn,
        ..CdcSummary::default()
    };
    let mut committed = state.lsn;
    let mut in_transaction = false;
    let mut idle_probe_sent = false;
    loop {
        let flush_due = pending.since.map(|since| since + settings.flush_after);
        let caught_up = settings
            .stop_at
            .is_some_and(|stop| !in_transaction && committed >= stop);
        if caught_up
            || pending.documents >= settings.flush_documents
            || pending.bytes >= settings.flush_bytes
        {
            flush(&mut pending, client, settings, &state, metrics).await?;
            confirm(&mut stream, &mut state, state_file, committed, &mut summary).await?;
            if caught_up {
                stream.stop().await?;
                return Ok(summary);
            }
        }
        let idle_wait = tokio::time::sleep(Duration::from_millis(250));
        let message = tokio::select! {
            biased;
            _ = async {
                // A dropped sender means nobody can ask for a shutdown: wait forever then.
                if shutdown.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            } => {
                flush(&mut pending, client, settings, &state, metrics).await?;
                confirm(&mut stream, &mut state, state_file, committed, &mut summary).await?;
                stream.stop().await?;
                return Ok(summary);
            }
            _ = async { match flush_due { Some(due) => tokio::time::sleep_until(due).await, None => std::future::pending().await } } => {
                flush(&mut pending, client, settings, &state, metrics).await?;
                confirm(&mut stream, &mut state, state_file, committed, &mut summary).await?;
                continue;
            }
            _ = idle_wait, if settings.stop_at.is_some() && !idle_probe_sent => {
                // Ask the server where WAL ends now, so a batch run can see it caught up.
                stream.send_status(true).await?;
                idle_probe_sent = true;
                continue;
            }
            message = stream.next() => message?,
        };
        idle_probe_sent = false;
        match message {
            None => return Err(CdcError::Ended),
            Some(ReplicationMessage::PrimaryKeepalive(keepalive)) => {
                if pending.is_empty() && !in_transaction && keepalive.wal_end > committed {
                    // Nothing of ours is in flight: let the slot move past unrelated WAL.
                    committed = keepalive.wal_end;
                    confirm(&mut stream, &mut state, state_file, committed, &mut summary).await?;
                }
            }
            Some(ReplicationMessage::XLogData(xlog)) => {
                let change = parse_v2(&xlog.data, xlog.wal_start)?;
                match change.action {
                    Action::Begin => in_transaction = true,
                    Action::Commit => {
                        in_transaction = false;
                        summary.transactions += 1;
                        committed = committed.max(change.next_lsn.unwrap_or(xlog.wal_start));
                        if pending.is_empty() {
                            confirm(&mut stream, &mut state, state_file, committed, &mut summary)
                                .await?;
                        }
                    }
                    Action::Message => {}
                    Action::Truncate => {
                        let Some(table) = lookup(tables, &change) else {
                            continue;
                        };
                        flush(&mut pending, client, settings, &state, metrics).await?;
                        if let Some(client) = client {
                            retrying(settings.max_retries, || {
                                client.truncate_collection(&table.collection)
                            })
                            .await
                            .map_err(|source| CdcError::Gdn {
                                table: table.plan.table().to_owned(),
                                collection: table.collection.to_string(),
                                source: Box::new(source),
                            })?;
                        }
                    }
                    Action::Insert | Action::Update | Action::Delete => {
                        summary.changes += 1;
                        metrics.rows_read.fetch_add(1, Ordering::Relaxed);
                        apply_row(&change, xlog.wal_start, tables, &mut pending)?;
                    }
                }
            }
        }
    }
}

fn lookup<'t>(
    tables: &'t HashMap<(String, String), CdcTable>,
    change: &Change<'_>,
) -> Option<&'t CdcTable> {
    let schema = change.schema.as_deref()?;
    let table = change.table.as_deref()?;
    tables.get(&(schema.to_owned(), table.to_owned()))
}

fn apply_row(
    change: &Change<'_>,
    lsn: Lsn,
    tables: &HashMap<(String, String), CdcTable>,
    pending: &mut Pending,
) -> Result<(), CdcError> {
    let Some(table) = lookup(tables, change) else {
        return Ok(());
    };
    let document = |source| CdcError::Document { lsn, source };
    let name = table.plan.table().to_owned();
    match change.action {
        Action::Delete => {
            if change.identity.is_empty() {
                return Err(CdcError::Unsupported(format!(
                    "a DELETE on {name} at {lsn} carries no old key: the table has no primary key or replica identity\nHINT: ALTER TABLE {name} REPLICA IDENTITY USING INDEX <unique index>; (or add a primary key)"
                )));
            }
            let identity = image(&change.identity, lsn)?;
            let key = table
                .plan
                .key_from_text(&as_pairs(&identity))
                .map_err(document)?;
            pending.put(
                &table.collection,
                &name,
                key.as_str().to_owned(),
                Op::Delete,
            );
        }
        _ => {
            let columns = image(&change.columns, lsn)?;
            let mut doc = Vec::with_capacity(256);
            let encoded = table
                .plan
                .encode_text(&as_pairs(&columns), &mut doc)
                .map_err(document)?;
            if !change.identity.is_empty() {
                let identity = image(&change.identity, lsn)?;
                let old = table
                    .plan
                    .key_from_text(&as_pairs(&identity))
                    .map_err(document)?;
                if old != encoded.key {
                    // The key changed: the old document goes away, and a partial new image
                    // takes its missing (unchanged TOASTed) attributes from the old document.
                    let old_key = old.as_str().to_owned();
                    let moved = if encoded.complete {
                        Op::Upsert(doc)
                    } else {
                        match pending.op(&table.collection, &old_key) {
                            Some(Op::Upsert(base)) => Op::Upsert(merge_objects(base, &doc)),
                            // Earlier pending changes of the old key travel with it.
                            Some(Op::Patch(earlier)) => {
                                Op::MoveFrom(old_key.clone(), merge_objects(earlier, &doc))
                            }
                            Some(Op::MoveFrom(from, earlier)) => {
                                Op::MoveFrom(from.clone(), merge_objects(earlier, &doc))
                            }
                            Some(Op::Delete) | None => Op::MoveFrom(old_key.clone(), doc),
                        }
                    };
                    pending.put(&table.collection, &name, old_key, Op::Delete);
                    pending.put(
                        &table.collection,
                        &name,
                        encoded.key.as_str().to_owned(),
                        moved,
                    );
                    return Ok(());
                }
            }
            let op = if encoded.complete {
                Op::Upsert(doc)
            } else {
                Op::Patch(doc)
            };
            pending.put(
                &table.collection,
                &name,
                encoded.key.as_str().to_owned(),
                op,
            );
        }
    }
    Ok(())
}

async fn confirm(
    stream: &mut LogicalStream,
    state: &mut CdcState,
    state_file: &StateFile,
    lsn: Lsn,
    summary: &mut CdcSummary,
) -> Result<(), CdcError> {
    if lsn <= state.lsn {
        return Ok(());
    }
    // The state file first: if we crash between the two, the slot is behind (a replay), never ahead.
    state.lsn = lsn;
    state_file.save(state)?;
    stream.confirm(lsn);
    stream.send_status(false).await?;
    summary.confirmed = lsn;
    Ok(())
}

/// Writes every pending operation; returns once GDN durably holds them all.
async fn flush(
    pending: &mut Pending,
    client: Option<&GdnClient>,
    settings: &CdcSettings,
    state: &CdcState,
    metrics: &Metrics,
) -> Result<(), CdcError> {
    if pending.is_empty() {
        return Ok(());
    }
    let collections = std::mem::take(&mut pending.collections);
    *pending = Pending::default();
    for (collection, ops) in collections {
        let mut upserts = Vec::new();
        let mut patches = Vec::new();
        let mut deletes = Vec::new();
        let mut moves = Vec::new();
        for (key, op) in ops.ops {
            match op {
                Op::Upsert(doc) => upserts.push((key, doc)),
                Op::Patch(doc) => patches.push((key, doc)),
                Op::Delete => deletes.push(key),
                Op::MoveFrom(from, doc) => moves.push((key, from, doc)),
            }
        }
        if let Some(client) = client {
            // Read moved documents' old versions before their old keys are deleted.
            for (key, from, doc) in moves {
                let old = retrying(settings.max_retries, || {
                    client.get_document(&collection, &from)
                })
                .await
                .map_err(|source| CdcError::Gdn {
                    table: ops.table.clone(),
                    collection: collection.to_string(),
                    source: Box::new(source),
                })?;
                match old {
                    Some(old) => {
                        let mut base: serde_json::Map<String, serde_json::Value> =
                            serde_json::from_slice(&old).unwrap_or_default();
                        base.remove("_id");
                        base.remove("_rev");
                        let base = serde_json::to_vec(&base).unwrap_or_default();
                        upserts.push((key, merge_objects(&base, &doc)));
                    }
                    // Not there (a replay over a newer copy): patch the new key instead.
                    None => patches.push((key, doc)),
                }
            }
        } else {
            upserts.extend(moves.into_iter().map(|(key, _, doc)| (key, doc)));
        }
        let Some(client) = client else {
            metrics.ingested_documents.fetch_add(
                (upserts.len() + patches.len() + deletes.len()) as u64,
                Ordering::Relaxed,
            );
            continue;
        };
        for chunk in deletes.chunks(settings.batch_size_rows.max(1)) {
            let body = serde_json::to_vec(chunk).unwrap_or_default();
            let keys: Vec<&str> = chunk.iter().map(String::as_str).collect();
            write(
                client,
                settings,
                &collection,
                &ops.table,
                "delete",
                &keys,
                Bytes::from(body),
                state,
                metrics,
            )
            .await?;
        }
        for (operation, documents) in [("upsert", &upserts), ("patch", &patches)] {
            for chunk in documents.chunks(settings.batch_size_rows.max(1)) {
                let mut body = Vec::with_capacity(
                    chunk.iter().map(|(_, doc)| doc.len() + 1).sum::<usize>() + 2,
                );
                body.push(b'[');
                for (index, (_, doc)) in chunk.iter().enumerate() {
                    if index > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(doc);
                }
                body.push(b']');
                let keys: Vec<&str> = chunk.iter().map(|(key, _)| key.as_str()).collect();
                write(
                    client,
                    settings,
                    &collection,
                    &ops.table,
                    operation,
                    &keys,
                    Bytes::from(body),
                    state,
                    metrics,
                )
                .await?;
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn write(
    client: &GdnClient,
    settings: &CdcSettings,
    collection: &str,
    table: &str,
    operation: &'static str,
    keys: &[&str],
    body: Bytes,
    state: &CdcState,
    metrics: &Metrics,
) -> Result<(), CdcError> {
    let bytes = body.len() as u64;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let result: Result<BatchOutcome, GdnError> = retrying(settings.max_retries, || {
            let body = body.clone();
            async move {
                match operation {
                    "delete" => {
                        client
                            .delete_documents(collection, body, settings.wait_for_sync)
                            .await
                    }
                    "patch" => {
                        client
                            .patch_documents(collection, body, settings.wait_for_sync)
                            .await
                    }
                    _ => {
                        client
                            .write_documents(collection, body, true, settings.wait_for_sync)
                            .await
                    }
                }
            }
        })
        .await;
        let outcome = result.map_err(|source| CdcError::Gdn {
            table: table.to_owned(),
            collection: collection.to_owned(),
            source: Box::new(source),
        })?;
        // A delete of a document that is already gone is done; so is a patch of a document the
        // resumed copy never saw, while replaying changes older than that copy (the resume rule).
        let replaying = state.lsn < state.replay_until;
        let real_failures: Vec<_> = outcome
            .failures
            .iter()
            .filter(|failure| {
                !(failure.error_num == DOCUMENT_NOT_FOUND
                    && (operation == "delete" || (operation == "patch" && replaying)))
            })
            .collect();
        if real_failures.is_empty() {
            metrics
                .ingested_documents
                .fetch_add(keys.len() as u64, Ordering::Relaxed);
            metrics.ingested_bytes.fetch_add(bytes, Ordering::Relaxed);
            return Ok(());
        }
        let first = real_failures[0];
        if attempt >= settings.max_retries || first.error_num == DOCUMENT_NOT_FOUND {
            metrics
                .ingest_errors
                .fetch_add(real_failures.len() as u64, Ordering::Relaxed);
            return Err(CdcError::Refused {
                operation,
                table: table.to_owned(),
                collection: collection.to_owned(),
                key: keys
                    .get(first.index)
                    .map(|key| (*key).to_owned())
                    .unwrap_or_default(),
                error_num: first.error_num,
                message: first.message.clone(),
            });
        }
        // Every operation here is idempotent per key: re-sending the whole request is safe.
        metrics.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100u64 << attempt.min(6))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalescing_keeps_the_last_write_per_key() {
        let collection: Arc<str> = Arc::from("c");
        let mut pending = Pending::default();
        pending.put(
            &collection,
            "t",
            "1".into(),
            Op::Upsert(br#"{"_key":"1","a":1,"b":"big"}"#.to_vec()),
        );
        pending.put(
            &collection,
            "t",
            "1".into(),
            Op::Patch(br#"{"_key":"1","a":2}"#.to_vec()),
        );
        pending.put(
            &collection,
            "t",
            "2".into(),
            Op::Upsert(br#"{"_key":"2"}"#.to_vec()),
        );
        pending.put(&collection, "t", "2".into(), Op::Delete);
        pending.put(
            &collection,
            "t",
            "3".into(),
            Op::Patch(br#"{"_key":"3","a":1}"#.to_vec()),
        );
        pending.put(
            &collection,
            "t",
            "3".into(),
            Op::Patch(br#"{"_key":"3","b":2}"#.to_vec()),
        );
        let ops = &pending.collections[&collection].ops;
        match &ops["1"] {
            Op::Upsert(doc) => {
                let value: serde_json::Value = serde_json::from_slice(doc).unwrap();
                assert_eq!(
                    value,
                    serde_json::json!({"_key": "1", "a": 2, "b": "big"}),
                    "a TOAST-less update keeps the big value"
                );
            }
            other => panic!("expected an upsert, got {other:?}"),
        }
        assert!(
            matches!(ops["2"], Op::Delete),
            "insert then delete is a delete"
        );
        match &ops["3"] {
            Op::Patch(doc) => {
                let value: serde_json::Value = serde_json::from_slice(doc).unwrap();
                assert_eq!(value, serde_json::json!({"_key": "3", "a": 1, "b": 2}));
            }
            other => panic!("expected a patch, got {other:?}"),
        }
        assert_eq!(pending.documents, 6);
        assert!(matches!(pending.op(&collection, "1"), Some(Op::Upsert(_))));
        assert!(pending.op(&collection, "4").is_none());
    }
}
