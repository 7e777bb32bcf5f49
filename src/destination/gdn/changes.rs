//! How a flush of the stream is written to GDN: per collection, key moves first (the old
//! document is read before its key is deleted), then batched deletes, upserts and PATCHes,
//! `max_in_flight` requests at a time; the flush returns once GDN has answered every request.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use crate::destination::{ChangeError, TableChanges};
use crate::gdn::client::{retrying, BatchOutcome, GdnClient, GdnError, DOCUMENT_NOT_FOUND};
use crate::metrics::Metrics;

/// The stream's GDN destination: the client and how flushes are cut into requests.
#[derive(Debug, Clone, Copy)]
pub struct ChangeWriter<'a> {
    /// The client.
    pub client: &'a GdnClient,
    /// Documents per request.
    pub batch_size_rows: usize,
    /// Requests of one flush in flight at once.
    pub max_in_flight: usize,
    /// `waitForSync=true`.
    pub wait_for_sync: bool,
    /// Attempts for retryable failures.
    pub max_retries: u32,
}

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

/// One write request of a flush.
struct Request {
    collection: Arc<str>,
    table: String,
    operation: Operation,
    keys: Vec<String>,
    body: Bytes,
}

impl ChangeWriter<'_> {
    /// Writes one flush (`(table, changes)` per collection); returns once GDN durably holds
    /// it all.
    pub async fn apply(
        &self,
        changes: Vec<(String, TableChanges)>,
        replaying: bool,
        metrics: &Metrics,
    ) -> Result<(), ChangeError> {
        let client = self.client;
        let mut requests = Vec::new();
        for (table, changes) in changes {
            let TableChanges {
                id: collection,
                mut upserts,
                mut patches,
                deletes,
                moves,
            } = changes;
            // Read moved documents' old versions before their old keys are deleted.
            for (key, from, doc) in moves {
                let old = retrying(self.max_retries, || client.get_document(&collection, &from))
                    .await
                    .map_err(|source| ChangeError::Gdn {
                        table: table.clone(),
                        collection: collection.to_string(),
                        source: Box::new(source),
                    })?;
                match old {
                    Some(old) => {
                        let mut base: serde_json::Map<String, serde_json::Value> =
                            serde_json::from_slice(&old).map_err(|error| ChangeError::Gdn {
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
                            .map_err(|error| ChangeError::Merge(error.to_string()))?,
                        );
                        let merged = serde_json::to_vec(&base)
                            .map_err(|error| ChangeError::Merge(error.to_string()))?;
                        upserts.push((key, merged));
                    }
                    // Not there (a replay over a newer copy): patch the new key instead.
                    None => patches.push((key, doc)),
                }
            }
            let rows = self.batch_size_rows.max(1);
            let mut deletes = deletes.into_iter().peekable();
            while deletes.peek().is_some() {
                let keys: Vec<String> = deletes.by_ref().take(rows).collect();
                let body = serde_json::to_vec(&keys)
                    .map_err(|error| ChangeError::Merge(error.to_string()))?;
                requests.push(Request {
                    collection: Arc::clone(&collection),
                    table: table.clone(),
                    operation: Operation::Delete,
                    keys,
                    body: Bytes::from(body),
                });
            }
            for (operation, documents) in
                [(Operation::Upsert, upserts), (Operation::Patch, patches)]
            {
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
        // The client's adaptive limit gates these requests (within `max_in_flight`); its gauge
        // is this run's.
        client.limiter().report_to(&metrics.concurrency);
        // Every key has one operation in a flush (and moved documents were read above), so the
        // requests are independent: they go out `max_in_flight` at a time. The flush is done
        // only once all of them are answered.
        let mut writes = Vec::with_capacity(requests.len());
        for request in &requests {
            writes.push(self.write(request, replaying, metrics));
        }
        futures_util::stream::iter(writes)
            .buffer_unordered(self.max_in_flight.max(1))
            .try_collect::<()>()
            .await
    }

    /// Sends one request until GDN takes every document of it (or refuses one for good).
    async fn write(
        &self,
        request: &Request,
        replaying: bool,
        metrics: &Metrics,
    ) -> Result<(), ChangeError> {
        let Request {
            collection,
            table,
            operation,
            keys,
            body,
        } = request;
        let (client, operation) = (self.client, *operation);
        let bytes = body.len() as u64;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result: Result<BatchOutcome, GdnError> = retrying(self.max_retries, || {
                let body = body.clone();
                async move {
                    match operation {
                        Operation::Delete => {
                            client
                                .delete_documents(collection, body, self.wait_for_sync)
                                .await
                        }
                        Operation::Patch => {
                            client
                                .patch_documents(collection, body, self.wait_for_sync)
                                .await
                        }
                        Operation::Upsert => {
                            client
                                .write_documents(collection, body, true, self.wait_for_sync)
                                .await
                        }
                    }
                }
            })
            .await;
            let outcome = result.map_err(|source| ChangeError::Gdn {
                table: table.to_owned(),
                collection: collection.to_string(),
                source: Box::new(source),
            })?;
            // A delete of a document that is already gone is done; so is a patch of a document
            // the resumed copy never saw, while replaying changes older than that copy (the
            // resume rule).
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
            if attempt >= self.max_retries || first.error_num == DOCUMENT_NOT_FOUND {
                metrics
                    .ingest_errors
                    .fetch_add(real_failures.len() as u64, Ordering::Relaxed);
                return Err(ChangeError::Refused {
                    operation: operation.as_str(),
                    table: table.to_owned(),
                    collection: collection.to_string(),
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

    /// Empties `table`'s collection `id`.
    pub async fn truncate(&self, table: &str, id: &Arc<str>) -> Result<(), ChangeError> {
        retrying(self.max_retries, || self.client.truncate_collection(id))
            .await
            .map_err(|source| gdn_error(table, id, source))
    }
}

/// A GDN failure while writing `table`'s changes into `collection`.
pub(super) fn gdn_error(table: &str, collection: &str, source: GdnError) -> ChangeError {
    ChangeError::Gdn {
        table: table.to_owned(),
        collection: collection.to_owned(),
        source: Box::new(source),
    }
}
