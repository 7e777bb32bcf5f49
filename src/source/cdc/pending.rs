//! Pending document operations, coalesced per collection and key, and how a flush writes
//! them to GDN (upserts, PATCHes, deletes, key moves) before the watermark may move.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use tokio::time::Instant;

use super::row::RowChange;
use super::table::CdcTable;
use super::{CdcError, CdcSettings};
use crate::decode::image::ImageValue;
use crate::decode::wal2json::Action;
use crate::destination::postgres::apply::TableChanges;
use crate::gdn::client::{retrying, BatchOutcome, GdnClient, GdnError, DOCUMENT_NOT_FOUND};
use crate::metrics::Metrics;
use crate::pg::Lsn;
use crate::source::state::CdcState;

/// A kind of write request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Upsert,
    Patch,
    Delete,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Upsert => "upsert",
            Operation::Patch => "patch",
            Operation::Delete => "delete",
        }
    }
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
pub(super) struct Pending {
    collections: HashMap<Arc<str>, CollectionOps>,
    pub(super) documents: usize,
    pub(super) bytes: usize,
    pub(super) since: Option<Instant>,
}

impl Pending {
    pub(super) fn is_empty(&self) -> bool {
        self.documents == 0
    }

    /// The pending operation of `key`, if any.
    fn op(&self, collection: &Arc<str>, key: &str) -> Option<&Op> {
        self.collections.get(collection)?.ops.get(key)
    }

    fn put(
        &mut self,
        collection: &Arc<str>,
        table: &str,
        key: String,
        op: Op,
    ) -> Result<(), CdcError> {
        if !self.collections.contains_key(collection) {
            self.collections
                .insert(Arc::clone(collection), CollectionOps::default());
        }
        let Some(entry) = self.collections.get_mut(collection) else {
            return Err(CdcError::Merge(
                "a collection vanished from the batch".into(),
            ));
        };
        if entry.table.is_empty() {
            entry.table = table.to_owned();
        }
        let size = match &op {
            Op::Upsert(doc) | Op::Patch(doc) | Op::MoveFrom(_, doc) => doc.len(),
            Op::Delete => key.len(),
        };
        let merged = match (entry.ops.remove(&key), op) {
            (Some(Op::Upsert(doc)), Op::Patch(patch)) => Op::Upsert(merge_objects(&doc, &patch)?),
            (Some(Op::Patch(earlier)), Op::Patch(patch)) => {
                Op::Patch(merge_objects(&earlier, &patch)?)
            }
            (Some(Op::MoveFrom(from, earlier)), Op::Patch(patch)) => {
                Op::MoveFrom(from, merge_objects(&earlier, &patch)?)
            }
            (_, op) => op,
        };
        entry.ops.insert(key, merged);
        self.documents += 1;
        self.bytes += size;
        self.since.get_or_insert_with(Instant::now);
        Ok(())
    }
}

/// Overlays the attributes of JSON object `patch` on JSON object `base`.
fn merge_objects(base: &[u8], patch: &[u8]) -> Result<Vec<u8>, CdcError> {
    let parse = |bytes: &[u8]| {
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(bytes).map_err(
            |error| {
                CdcError::Merge(format!(
                    "{error} in {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(120)])
                ))
            },
        )
    };
    let mut merged = parse(base)?;
    merged.extend(parse(patch)?);
    serde_json::to_vec(&merged).map_err(|error| CdcError::Merge(error.to_string()))
}

/// The key of a row image: the document `_key` (GDN), or the key values (PostgreSQL).
fn image_key(
    table: &CdcTable,
    image: &[(&str, Option<ImageValue<'_>>)],
    lsn: Lsn,
) -> Result<String, CdcError> {
    match &table.replica {
        Some(plan) => plan
            .key_from_image(image)
            .map_err(|error| CdcError::Replica(Box::new(error.into()))),
        None => table
            .plan
            .key_from_image(image)
            .map(|key| key.as_str().to_owned())
            .map_err(|source| CdcError::Document { lsn, source }),
    }
}

/// Encodes a new row image into `out`; returns its key and whether it is the whole row.
fn encode_image(
    table: &CdcTable,
    image: &[(&str, Option<ImageValue<'_>>)],
    out: &mut Vec<u8>,
    lsn: Lsn,
) -> Result<(String, bool), CdcError> {
    match &table.replica {
        Some(plan) => plan
            .encode_image(image, out)
            .map(|row| (row.key, row.complete))
            .map_err(|error| CdcError::Replica(Box::new(error.into()))),
        None => table
            .plan
            .encode_image(image, out)
            .map(|document| (document.key.as_str().to_owned(), document.complete))
            .map_err(|source| CdcError::Document { lsn, source }),
    }
}

/// Turns one row change into pending operations on its table's collection.
pub(super) fn apply_row(
    change: &RowChange<'_>,
    lsn: Lsn,
    table: &CdcTable,
    pending: &mut Pending,
) -> Result<(), CdcError> {
    let name = table.plan.table();
    match change.action {
        Action::Delete => {
            if change.identity.is_empty() {
                return Err(CdcError::Unsupported(format!(
                    "a DELETE on {name} at {lsn} carries no old key: the table has no primary key or replica identity\nHINT: ALTER TABLE {name} REPLICA IDENTITY USING INDEX <unique index>; (or add a primary key)"
                )));
            }
            let key = image_key(table, &change.identity_pairs(), lsn)?;
            pending.put(&table.collection, name, key, Op::Delete)?;
        }
        _ => {
            let mut doc = Vec::with_capacity(256);
            let (key, complete) = encode_image(table, &change.column_pairs(), &mut doc, lsn)?;
            // An INSERT is the whole row (a column it lacks did not exist then); only an
            // UPDATE leaves out unchanged TOASTed columns.
            let complete = complete || change.action == Action::Insert;
            if !change.identity.is_empty() {
                let old_key = image_key(table, &change.identity_pairs(), lsn)?;
                if old_key != key {
                    // The key changed: the old row goes away, and a partial new image
                    // takes its missing (unchanged TOASTed) values from the old row.
                    let moved = if complete {
                        Op::Upsert(doc)
                    } else {
                        match pending.op(&table.collection, &old_key) {
                            Some(Op::Upsert(base)) => Op::Upsert(merge_objects(base, &doc)?),
                            // Earlier pending changes of the old key travel with it.
                            Some(Op::Patch(earlier)) => {
                                Op::MoveFrom(old_key.clone(), merge_objects(earlier, &doc)?)
                            }
                            Some(Op::MoveFrom(from, earlier)) => {
                                Op::MoveFrom(from.clone(), merge_objects(earlier, &doc)?)
                            }
                            Some(Op::Delete) | None => Op::MoveFrom(old_key.clone(), doc),
                        }
                    };
                    pending.put(&table.collection, name, old_key, Op::Delete)?;
                    return pending.put(&table.collection, name, key, moved);
                }
            }
            let op = if complete {
                Op::Upsert(doc)
            } else {
                Op::Patch(doc)
            };
            pending.put(&table.collection, name, key, op)?;
        }
    }
    Ok(())
}

impl Pending {
    /// Takes every pending operation, split per collection into the kinds of write, and
    /// leaves the batch empty.
    pub(super) fn take_changes(&mut self) -> Vec<(String, TableChanges)> {
        let collections = std::mem::take(&mut self.collections);
        *self = Pending::default();
        collections
            .into_iter()
            .map(|(collection, ops)| {
                let mut changes = TableChanges {
                    id: collection,
                    ..TableChanges::default()
                };
                for (key, op) in ops.ops {
                    match op {
                        Op::Upsert(doc) => changes.upserts.push((key, doc)),
                        Op::Patch(doc) => changes.patches.push((key, doc)),
                        Op::Delete => changes.deletes.push(key),
                        Op::MoveFrom(from, doc) => changes.moves.push((key, from, doc)),
                    }
                }
                (ops.table, changes)
            })
            .collect()
    }
}

/// Writes every pending operation; returns once GDN durably holds them all.
pub(super) async fn flush(
    pending: &mut Pending,
    client: Option<&GdnClient>,
    settings: &CdcSettings,
    state: &CdcState,
    metrics: &Metrics,
) -> Result<(), CdcError> {
    if pending.is_empty() {
        return Ok(());
    }
    let mut requests = Vec::new();
    for (table, changes) in pending.take_changes() {
        let TableChanges {
            id: collection,
            mut upserts,
            mut patches,
            deletes,
            moves,
        } = changes;
        if let Some(client) = client {
            // Read moved documents' old versions before their old keys are deleted.
            for (key, from, doc) in moves {
                let old = retrying(settings.max_retries, || {
                    client.get_document(&collection, &from)
                })
                .await
                .map_err(|source| CdcError::Gdn {
                    table: table.clone(),
                    collection: collection.to_string(),
                    source: Box::new(source),
                })?;
                match old {
                    Some(old) => {
                        let mut base: serde_json::Map<String, serde_json::Value> =
                            serde_json::from_slice(&old).map_err(|error| CdcError::Gdn {
                                table: table.clone(),
                                collection: collection.to_string(),
                                source: Box::new(GdnError::BadResponse {
                                    method: "GET".into(),
                                    url: format!("document {from:?}"),
                                    detail: format!("not a JSON object: {error}"),
                                }),
                            })?;
                        base.remove("_id");
                        base.remove("_rev");
                        base.extend(
                            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(
                                &doc,
                            )
                            .map_err(|error| CdcError::Merge(error.to_string()))?,
                        );
                        let merged = serde_json::to_vec(&base)
                            .map_err(|error| CdcError::Merge(error.to_string()))?;
                        upserts.push((key, merged));
                    }
                    // Not there (a replay over a newer copy): patch the new key instead.
                    None => patches.push((key, doc)),
                }
            }
        } else {
            upserts.extend(moves.into_iter().map(|(key, _, doc)| (key, doc)));
        }
        let Some(_) = client else {
            metrics.ingested_documents.fetch_add(
                (upserts.len() + patches.len() + deletes.len()) as u64,
                Ordering::Relaxed,
            );
            continue;
        };
        let rows = settings.batch_size_rows.max(1);
        let mut deletes = deletes.into_iter().peekable();
        while deletes.peek().is_some() {
            let keys: Vec<String> = deletes.by_ref().take(rows).collect();
            let body =
                serde_json::to_vec(&keys).map_err(|error| CdcError::Merge(error.to_string()))?;
            requests.push(Request {
                collection: Arc::clone(&collection),
                table: table.clone(),
                operation: Operation::Delete,
                keys,
                body: Bytes::from(body),
            });
        }
        for (operation, documents) in [(Operation::Upsert, upserts), (Operation::Patch, patches)] {
            let mut documents = documents.into_iter().peekable();
            while documents.peek().is_some() {
                let chunk: Vec<(String, Vec<u8>)> = documents.by_ref().take(rows).collect();
                let mut body = Vec::with_capacity(
                    chunk.iter().map(|(_, doc)| doc.len() + 1).sum::<usize>() + 2,
                );
                body.push(b'[');
                let mut keys = Vec::with_capacity(chunk.len());
                for (index, (key, doc)) in chunk.into_iter().enumerate() {
                    if index > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(&doc);
                    keys.push(key);
                }
                body.push(b']');
                requests.push(Request {
                    collection: Arc::clone(&collection),
                    table: table.clone(),
                    operation,
                    keys,
                    body: Bytes::from(body),
                });
            }
        }
    }
    let Some(client) = client else {
        return Ok(());
    };
    // The client's adaptive limit gates these requests (within `max_in_flight`); its gauge is
    // this run's.
    client.limiter().report_to(&metrics.concurrency);
    // Every key has one operation in a flush (and moved documents were read above), so the
    // requests are independent: they go out `max_in_flight` at a time. The watermark moves
    // only once all of them are answered.
    let mut writes = Vec::with_capacity(requests.len());
    for request in &requests {
        writes.push(write(
            client,
            settings,
            &request.collection,
            &request.table,
            request.operation,
            &request.keys,
            request.body.clone(),
            state,
            metrics,
        ));
    }
    futures_util::stream::iter(writes)
        .buffer_unordered(settings.max_in_flight.max(1))
        .try_collect::<()>()
        .await
}

/// One write request of a flush.
struct Request {
    collection: Arc<str>,
    table: String,
    operation: Operation,
    keys: Vec<String>,
    body: Bytes,
}

#[allow(clippy::too_many_arguments)]
async fn write(
    client: &GdnClient,
    settings: &CdcSettings,
    collection: &str,
    table: &str,
    operation: Operation,
    keys: &[String],
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
                    Operation::Delete => {
                        client
                            .delete_documents(collection, body, settings.wait_for_sync)
                            .await
                    }
                    Operation::Patch => {
                        client
                            .patch_documents(collection, body, settings.wait_for_sync)
                            .await
                    }
                    Operation::Upsert => {
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
                    && (operation == Operation::Delete
                        || (operation == Operation::Patch && replaying)))
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
                operation: operation.as_str(),
                table: table.to_owned(),
                collection: collection.to_owned(),
                key: keys.get(first.index).cloned().unwrap_or_default(),
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
        pending
            .put(
                &collection,
                "t",
                "1".into(),
                Op::Upsert(br#"{"_key":"1","a":1,"b":"big"}"#.to_vec()),
            )
            .unwrap();
        pending
            .put(
                &collection,
                "t",
                "1".into(),
                Op::Patch(br#"{"_key":"1","a":2}"#.to_vec()),
            )
            .unwrap();
        pending
            .put(
                &collection,
                "t",
                "2".into(),
                Op::Upsert(br#"{"_key":"2"}"#.to_vec()),
            )
            .unwrap();
        pending
            .put(&collection, "t", "2".into(), Op::Delete)
            .unwrap();
        pending
            .put(
                &collection,
                "t",
                "3".into(),
                Op::Patch(br#"{"_key":"3","a":1}"#.to_vec()),
            )
            .unwrap();
        pending
            .put(
                &collection,
                "t",
                "3".into(),
                Op::Patch(br#"{"_key":"3","b":2}"#.to_vec()),
            )
            .unwrap();
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

#[cfg(test)]
#[path = "pending_props.rs"]
mod props;
