//! Batches of documents and the pipelined writer that makes them durable in GDN.
//!
//! A [`DocumentBatch`] is the request body being built (a JSON array) plus where each document
//! sits in it, so documents GDN refuses one by one can be re-sent alone. The [`Writer`] bounds
//! the batches held with a semaphore of `max_in_flight` (backpressure: a producer waits for a
//! permit instead of piling batches up in memory); of those, the client's adaptive limit
//! ([`crate::gdn::concurrency`]) decides how many are on the wire. It retries 429/5xx/connection
//! loss with jittered exponential backoff (never sooner than a `Retry-After`), retries refused
//! documents, and fails loudly with table and key when a document still cannot be written.
//! Nothing is skipped silently.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::gdn::client::{GdnClient, GdnError};
use crate::gdn::keys::DocumentKey;
use crate::metrics::Metrics;

/// Why documents could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// GDN kept failing (or refused outright) a whole request.
    #[error("writing {documents} documents of {table} into collection {collection:?} failed after {attempts} attempt(s): {source}")]
    Request {
        /// `schema.table`.
        table: String,
        /// The collection.
        collection: String,
        /// Documents in the request.
        documents: usize,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        source: GdnError,
    },
    /// GDN refused a document on every attempt.
    #[error("GDN refused the document of {table} with _key {key:?} in collection {collection:?} (errorNum {error_num}: {message}) after {attempts} attempt(s)\nHINT: the row was not written; fix the cause (see errorNum in the GDN docs) and re-run")]
    Document {
        /// `schema.table`.
        table: String,
        /// The collection.
        collection: String,
        /// The document key, or `(generated)` for keyless tables.
        key: String,
        /// GDN's error number.
        error_num: u64,
        /// GDN's message.
        message: String,
        /// Attempts made.
        attempts: u32,
    },
    /// A write task ended abnormally.
    #[error("a write task failed: {0}")]
    Task(String),
}

/// A request body under construction: `[doc,doc,…]` with each document's byte range.
#[derive(Debug, Default)]
pub struct DocumentBatch {
    body: Vec<u8>,
    documents: Vec<Range<usize>>,
    keys: Vec<Option<DocumentKey>>,
}

impl DocumentBatch {
    /// An empty batch with room for `bytes`.
    pub fn with_capacity(bytes: usize) -> DocumentBatch {
        let mut body = Vec::with_capacity(bytes + 2);
        body.push(b'[');
        DocumentBatch {
            body,
            documents: Vec::new(),
            keys: Vec::new(),
        }
    }

    /// A batch reusing `buffer` (cleared), with room for at least `bytes`.
    pub fn from_buffer(mut buffer: Vec<u8>, bytes: usize) -> DocumentBatch {
        buffer.clear();
        buffer.reserve(bytes + 2);
        buffer.push(b'[');
        DocumentBatch {
            body: buffer,
            documents: Vec::new(),
            keys: Vec::new(),
        }
    }

    /// Appends one document: `encode` writes its JSON into the buffer and returns its key.
    pub fn push_with<E>(
        &mut self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<Option<DocumentKey>, E>,
    ) -> Result<(), E> {
        if self.body.is_empty() {
            self.body.push(b'[');
        }
        let separator = if self.documents.is_empty() { 0 } else { 1 };
        let mark = self.body.len();
        if separator == 1 {
            self.body.push(b',');
        }
        match encode(&mut self.body) {
            Ok(key) => {
                self.documents.push(mark + separator..self.body.len());
                self.keys.push(key);
                Ok(())
            }
            Err(error) => {
                self.body.truncate(mark);
                Err(error)
            }
        }
    }

    /// Documents in the batch.
    pub fn len(&self) -> usize {
        self.documents.len()
    }

    /// Whether the batch holds no document.
    pub fn is_empty(&self) -> bool {
        self.documents.is_empty()
    }

    /// Bytes of the body so far.
    pub fn bytes(&self) -> usize {
        self.body.len()
    }

    /// The finished JSON array.
    fn into_parts(mut self) -> (Bytes, Vec<Range<usize>>, Vec<Option<DocumentKey>>) {
        if self.body.is_empty() {
            self.body.push(b'[');
        }
        self.body.push(b']');
        (Bytes::from(self.body), self.documents, self.keys)
    }
}

/// What the writer needs to know besides the client.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// Batches held at once, and the bound of the adaptive number of requests in flight.
    pub max_in_flight: usize,
    /// `waitForSync=true`.
    pub wait_for_sync: bool,
    /// Attempts per request and per refused document.
    pub max_retries: u32,
    /// First backoff delay (doubled per attempt, with jitter, capped at 10 s).
    pub initial_backoff: Duration,
}

/// Sends batches to GDN with bounded concurrency; `None` client = the null destination.
#[derive(Debug, Clone)]
pub struct Writer {
    client: Option<GdnClient>,
    settings: WriterSettings,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    pool: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

/// Where a batch goes and which rows it holds (for error messages).
#[derive(Debug, Clone)]
pub struct BatchTarget {
    /// `schema.table`.
    pub table: Arc<str>,
    /// The collection.
    pub collection: Arc<str>,
    /// Keyless table: plain inserts with generated keys.
    pub keyless: bool,
}

impl Writer {
    /// A writer into GDN, or into nothing when `client` is `None`; counts into `metrics`.
    pub fn new(
        client: Option<GdnClient>,
        settings: WriterSettings,
        metrics: Arc<Metrics>,
    ) -> Writer {
        if let Some(client) = &client {
            client.limiter().report_to(&metrics.concurrency);
        }
        Writer {
            client,
            permits: Arc::new(Semaphore::new(settings.max_in_flight.max(1))),
            settings,
            metrics,
            pool: Arc::default(),
        }
    }

    /// The shared counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Starts writing `batch`; waits first for a free slot (backpressure). The handle resolves
    /// once every document is durable (or the write failed for good).
    pub async fn submit(
        &self,
        target: BatchTarget,
        batch: DocumentBatch,
    ) -> JoinHandle<Result<(), WriteError>> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|error| WriteError::Task(error.to_string()));
        let writer = self.clone();
        tokio::spawn(async move {
            let permit = permit?;
            let documents = batch.len() as u64;
            writer
                .metrics
                .requests_in_flight
                .fetch_add(1, Ordering::Relaxed);
            let result = writer.write(target, batch, permit).await;
            writer
                .metrics
                .requests_in_flight
                .fetch_sub(1, Ordering::Relaxed);
            writer.metrics.batches.fetch_add(1, Ordering::Relaxed);
            writer
                .metrics
                .batch_documents
                .fetch_add(documents, Ordering::Relaxed);
            if let Err(error) = &result {
                let failed = match error {
                    WriteError::Request { documents, .. } => *documents as u64,
                    _ => 1,
                };
                writer
                    .metrics
                    .ingest_errors
                    .fetch_add(failed, Ordering::Relaxed);
            }
            result
        })
    }

    async fn write(
        &self,
        target: BatchTarget,
        batch: DocumentBatch,
        _permit: OwnedSemaphorePermit,
    ) -> Result<(), WriteError> {
        let (body, documents, keys) = batch.into_parts();
        let result = self.write_body(&target, &body, &documents, &keys).await;
        self.recycle(body);
        result
    }

    /// A batch whose buffer is recycled from an earlier one when possible (no fresh pages).
    pub fn batch(&self, capacity: usize) -> DocumentBatch {
        let buffer = self
            .pool
            .lock()
            .ok()
            .and_then(|mut pool| pool.pop())
            .unwrap_or_default();
        DocumentBatch::from_buffer(buffer, capacity)
    }

    /// Takes a sent body's buffer back when nothing else holds it.
    fn recycle(&self, body: Bytes) {
        if let Ok(buffer) = body.try_into_mut() {
            if let Ok(mut pool) = self.pool.lock() {
                if pool.len() < self.settings.max_in_flight.max(1) * 2 {
                    pool.push(Vec::from(buffer));
                }
            }
        }
    }

    async fn write_body(
        &self,
        target: &BatchTarget,
        body: &Bytes,
        documents: &[Range<usize>],
        keys: &[Option<DocumentKey>],
    ) -> Result<(), WriteError> {
        let Some(client) = &self.client else {
            self.metrics
                .ingested_documents
                .fetch_add(documents.len() as u64, Ordering::Relaxed);
            self.metrics
                .ingested_bytes
                .fetch_add(body.len() as u64, Ordering::Relaxed);
            return Ok(());
        };
        let mut pending: Vec<usize> = (0..documents.len()).collect();
        let mut request_body = body.clone();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = client
                .write_documents(
                    &target.collection,
                    request_body.clone(),
                    !target.keyless,
                    self.settings.wait_for_sync,
                )
                .await;
            match result {
                Ok(outcome) if outcome.failures.is_empty() => {
                    self.metrics
                        .ingested_documents
                        .fetch_add(pending.len() as u64, Ordering::Relaxed);
                    self.metrics
                        .ingested_bytes
                        .fetch_add(request_body.len() as u64, Ordering::Relaxed);
                    return Ok(());
                }
                Ok(outcome) => {
                    let failed: Vec<usize> = outcome
                        .failures
                        .iter()
                        .filter_map(|failure| pending.get(failure.index).copied())
                        .collect();
                    let written = pending.len() - failed.len();
                    self.metrics
                        .ingested_documents
                        .fetch_add(written as u64, Ordering::Relaxed);
                    if attempt >= self.settings.max_retries || target.keyless {
                        // Keyless inserts are not idempotent: re-sending could duplicate.
                        let first = &outcome.failures[0];
                        let index = pending.get(first.index).copied().unwrap_or(0);
                        return Err(document_error(
                            target,
                            keys.get(index),
                            first.error_num,
                            first.message.clone(),
                            attempt,
                        ));
                    }
                    self.metrics
                        .retries
                        .fetch_add(failed.len() as u64, Ordering::Relaxed);
                    request_body = subset(body, documents, &failed);
                    pending = failed;
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
                Err(error)
                    if error.is_retryable()
                        && attempt < self.settings.max_retries
                        && !target.keyless =>
                {
                    self.metrics.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(table = %target.table, collection = %target.collection, attempt, %error, "retrying a GDN write");
                    let wait = self
                        .backoff(attempt)
                        .max(error.retry_after().unwrap_or_default());
                    tokio::time::sleep(wait).await;
                }
                Err(error) => {
                    // A request refused as a whole for its body: name the document at fault.
                    if let GdnError::Status {
                        status: 400,
                        error_num,
                        ..
                    } = &error
                    {
                        if let Some((index, reason)) =
                            unreadable_document(body, documents, &pending)
                        {
                            return Err(document_error(
                                target,
                                keys.get(index),
                                error_num.unwrap_or(600),
                                reason,
                                attempt,
                            ));
                        }
                    }
                    return Err(WriteError::Request {
                        table: target.table.to_string(),
                        collection: target.collection.to_string(),
                        documents: pending.len(),
                        attempts: attempt,
                        source: error,
                    });
                }
            }
        }
    }

    /// Exponential backoff with full jitter, capped at 10 s.
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.settings.initial_backoff.as_millis() as u64;
        let ceiling = base.saturating_mul(1 << attempt.min(16)).min(10_000);
        let jitter = jitter_fraction();
        Duration::from_millis(ceiling / 2 + (ceiling as f64 / 2.0 * jitter) as u64)
    }
}

/// GDN's refusal of one document of `target`, named by its key (`(generated)` when keyless).
fn document_error(
    target: &BatchTarget,
    key: Option<&Option<DocumentKey>>,
    error_num: u64,
    message: String,
    attempts: u32,
) -> WriteError {
    WriteError::Document {
        table: target.table.to_string(),
        collection: target.collection.to_string(),
        key: key
            .and_then(Option::as_ref)
            .map_or_else(|| "(generated)".into(), |key| key.as_str().to_owned()),
        error_num,
        message,
        attempts,
    }
}

/// The first of the `pending` documents a JSON reader with doubles cannot read (a number
/// beyond a double, such as `1e400` in a `json` value, which GDN refuses with the whole
/// request), with the attribute at fault.
fn unreadable_document(
    body: &[u8],
    documents: &[Range<usize>],
    pending: &[usize],
) -> Option<(usize, String)> {
    pending.iter().find_map(|&index| {
        let document = body.get(documents.get(index)?.clone())?;
        let error = serde_json::from_slice::<serde_json::Value>(document).err()?;
        let attribute = serde_json::from_slice::<
            std::collections::BTreeMap<String, Box<serde_json::value::RawValue>>,
        >(document)
        .ok()
        .and_then(|attributes| {
            attributes.into_iter().find_map(|(name, value)| {
                serde_json::from_str::<serde_json::Value>(value.get())
                    .err()
                    .map(|_| name)
            })
        });
        Some((
            index,
            match attribute {
                Some(name) => format!("attribute {name:?} cannot be read as JSON with doubles ({error}); a number beyond a double (e.g. 1e400 in a json column) has no form in GDN"),
                None => format!("the document cannot be read as JSON with doubles ({error})"),
            },
        ))
    })
}

/// A cheap pseudo-random number in [0, 1) for jitter (no dependency, no shared state).
fn jitter_fraction() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    let mut x = u64::from(nanos) ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x % 10_000) as f64 / 10_000.0
}

/// A JSON array of only the documents at `indexes`.
fn subset(body: &Bytes, documents: &[Range<usize>], indexes: &[usize]) -> Bytes {
    let mut out = Vec::with_capacity(body.len());
    out.push(b'[');
    for (position, &index) in indexes.iter().enumerate() {
        if position > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&body[documents[index].clone()]);
    }
    out.push(b']');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_of(documents: &[&str]) -> DocumentBatch {
        let mut batch = DocumentBatch::with_capacity(64);
        for document in documents {
            batch
                .push_with(|out| {
                    out.extend_from_slice(document.as_bytes());
                    Ok::<_, ()>(Some(DocumentKey::derive(&["k"])))
                })
                .unwrap();
        }
        batch
    }

    #[test]
    fn the_document_a_whole_request_was_refused_for_is_named_with_its_attribute() {
        let body = br#"[{"_key":"1","doc":{"a":1}},{"_key":"2","doc":{"a":1e400}}]"#;
        let documents = vec![1..27, 28..body.len() - 1];
        let (index, reason) =
            unreadable_document(body, &documents, &[0, 1]).expect("the second is unreadable");
        assert_eq!(index, 1);
        assert!(reason.contains("attribute \"doc\""), "{reason}");
        assert_eq!(unreadable_document(body, &documents, &[0]), None);
    }

    #[test]
    fn a_batch_is_a_json_array_and_failed_documents_can_be_picked_out() {
        let batch = batch_of(&[r#"{"_key":"a"}"#, r#"{"_key":"b"}"#, r#"{"_key":"c"}"#]);
        assert_eq!(batch.len(), 3);
        let (body, documents, _) = batch.into_parts();
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed.as_array().unwrap().len(), 3);
        let retry = subset(&body, &documents, &[0, 2]);
        assert_eq!(&retry[..], br#"[{"_key":"a"},{"_key":"c"}]"#);
    }

    #[test]
    fn a_document_that_fails_to_encode_leaves_no_trace() {
        let mut batch = batch_of(&[r#"{"_key":"a"}"#]);
        let result = batch.push_with(|out| {
            out.extend_from_slice(b",{\"half");
            Err::<Option<DocumentKey>, _>("bad value")
        });
        assert_eq!(result, Err("bad value"));
        let (body, _, _) = batch.into_parts();
        assert_eq!(&body[..], br#"[{"_key":"a"}]"#);
    }

    #[test]
    fn an_empty_batch_is_an_empty_array() {
        let (body, documents, _) = DocumentBatch::default().into_parts();
        assert_eq!(&body[..], b"[]");
        assert!(documents.is_empty());
    }
}
