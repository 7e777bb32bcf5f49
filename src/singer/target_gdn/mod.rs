//! `pgferry target-gdn`: a Singer target into GDN collections, drop-in for
//! `macrometa-target-collection`: Singer messages on stdin, each STATE echoed on stdout once
//! every record before it is durably written (GDN answered 201).
//!
//! It writes with the pipeline's writer and key rules (`document.rs`), without the old target's
//! defects: a composite key uses every key column (the old one used the first and collided), and
//! a record that does not fit its SCHEMA stops the run with its line number (the old one logged
//! and skipped it, and rejected decimals such as 0.07 by comparing `multipleOf` as floats).
//!
//! Records are coalesced per document key until a flush (last write wins): at
//! `batch_size_rows` pending records, every `batch_flush_interval` seconds (at least
//! `batch_flush_min_time_gap` apart), and at the end of the input. A flush writes upserts
//! (`POST …?overwrite=true`), partial updates (`PATCH`; a document that does not exist yet is
//! created) and deletes (a missing document is already deleted), waits for all of them, and only
//! then echoes the latest STATE. Documents GDN fails one by one are sent again, up to
//! `max_retries` times, for every kind of write.

mod document;

pub use document::{record_effect, Operation, RecordEffect, StreamShape};

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::config::{unsigned, ConfigError, GdnDestinationConfig};
use crate::gdn::client::{retrying, GdnClient, GdnError};
use crate::gdn::keys::DocumentKey;
use crate::gdn::writer::{BatchTarget, WriteError, Writer, WriterSettings};
use crate::metrics::Metrics;
use crate::singer::{parse_line, LineReader, Message, SingerError};

/// GDN's "document not found".
const DOCUMENT_NOT_FOUND: u64 = 1202;

/// The pause before sending again documents GDN failed one by one (as `pgferry run` does).
fn document_backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64 << attempt.min(6))
}

/// The target's settings: the old target's keys (and the pipeline destination's).
#[derive(Debug, Clone)]
pub struct TargetGdnConfig {
    /// The GDN connection and batch sizes.
    pub gdn: GdnDestinationConfig,
    /// Timer flushes are at least this far apart.
    pub flush_min_gap: Duration,
    /// Config keys ignored, each with why (logged at start).
    pub warnings: Vec<String>,
}

impl TargetGdnConfig {
    /// Reads a config object; `batch_size_rows` defaults to the old target's 500. Unknown
    /// keys are warnings with the closest known key, as Singer targets ignore keys they do
    /// not use (orchestrators pass such keys).
    pub fn from_object(
        object: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<TargetGdnConfig, ConfigError> {
        let (object, warnings) =
            crate::config::lenient_keys(object, crate::config::GDN_KEYS, "target-gdn");
        let mut gdn = GdnDestinationConfig::from_object(&object)?;
        if !object.contains_key("batch_size_rows") {
            gdn.batch_size_rows = 500;
        }
        Ok(TargetGdnConfig {
            flush_min_gap: Duration::from_secs(
                unsigned(&object, "batch_flush_min_time_gap")?.unwrap_or(10),
            ),
            gdn,
            warnings,
        })
    }

    /// Reads the config file; ignored keys are logged as warnings.
    pub fn from_file(path: &std::path::Path) -> Result<TargetGdnConfig, ConfigError> {
        let config = TargetGdnConfig::from_object(&crate::config::read_json_object(path)?)?;
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        Ok(config)
    }
}

/// Why the target stopped.
#[derive(Debug, thiserror::Error)]
pub enum TargetGdnError {
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A line of input cannot be used.
    #[error(transparent)]
    Input(#[from] SingerError),
    /// A record does not fit its stream.
    #[error("line {line}: stream {stream}: {detail}\nHINT: nothing after the last STATE echoed was confirmed; fix the input and run again from that state")]
    Record {
        /// 1-based input line.
        line: u64,
        /// The stream.
        stream: String,
        /// What is wrong.
        detail: String,
    },
    /// GDN failed.
    #[error("GDN: {0}")]
    Gdn(Box<GdnError>),
    /// The writer failed.
    #[error(transparent)]
    Write(Box<WriteError>),
    /// GDN refused a document.
    #[error("GDN refused to {operation} the document with _key {key:?} in collection {collection:?} (errorNum {error_num}: {message})\nHINT: nothing after the last STATE echoed was confirmed")]
    Refused {
        /// `patch` or `delete`.
        operation: &'static str,
        /// The key.
        key: String,
        /// The collection.
        collection: String,
        /// GDN's error number.
        error_num: u64,
        /// GDN's message.
        message: String,
    },
    /// Writing STATE to stdout failed.
    #[error("writing STATE to stdout: {0}")]
    Output(#[from] std::io::Error),
}

impl From<GdnError> for TargetGdnError {
    fn from(error: GdnError) -> TargetGdnError {
        TargetGdnError::Gdn(Box::new(error))
    }
}

impl From<WriteError> for TargetGdnError {
    fn from(error: WriteError) -> TargetGdnError {
        TargetGdnError::Write(Box::new(error))
    }
}

impl TargetGdnError {
    /// Whether the config is at fault (exit code 2).
    pub fn is_config(&self) -> bool {
        matches!(self, TargetGdnError::Config(_))
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetGdnSummary {
    /// RECORD messages read.
    pub records: u64,
    /// Flushes made.
    pub flushes: u64,
    /// STATE lines written.
    pub states: u64,
}

/// A pending operation on one document.
#[derive(Debug)]
enum Pending {
    Upsert(Vec<u8>),
    Patch(Vec<u8>),
    Delete,
}

/// One collection's work since the last flush.
#[derive(Debug)]
struct Collection {
    name: Arc<str>,
    table: Arc<str>,
    keyed: HashMap<DocumentKey, Pending>,
    inserts: Vec<Vec<u8>>,
}

impl Collection {
    fn len(&self) -> usize {
        self.keyed.len() + self.inserts.len()
    }
}

/// Partial updates of one collection, flushed together.
struct PatchBatch {
    collection: Arc<str>,
    table: Arc<str>,
    documents: Vec<(DocumentKey, Vec<u8>)>,
}

struct Stream {
    shape: StreamShape,
    collection: Arc<str>,
}

struct Target<'a, W: Write> {
    config: &'a TargetGdnConfig,
    client: GdnClient,
    writer: Writer,
    streams: HashMap<String, Stream>,
    collections: HashMap<Arc<str>, Collection>,
    pending: usize,
    since: Option<Instant>,
    last_timer_flush: Instant,
    state: Option<String>,
    output: &'a mut W,
    summary: TargetGdnSummary,
}

fn stream_table(stream: &str) -> (&str, &str) {
    stream.split_once('-').unwrap_or(("public", stream))
}

impl<W: Write> Target<'_, W> {
    async fn schema(&mut self, schema: crate::singer::SchemaMessage) -> Result<(), TargetGdnError> {
        if self.pending > 0 && self.streams.contains_key(&schema.stream) {
            // A changed shape applies to the records after it.
            self.flush().await?;
        }
        let (schema_name, table) = stream_table(&schema.stream);
        let collection: Arc<str> = self.config.gdn.collection_for(schema_name, table).into();
        if !self.collections.contains_key(&collection) {
            retrying(self.config.gdn.max_retries, || {
                self.client
                    .ensure_collection(&collection, self.config.gdn.create_stream)
            })
            .await?;
            self.collections.insert(
                Arc::clone(&collection),
                Collection {
                    name: Arc::clone(&collection),
                    table: schema.stream.clone().into(),
                    keyed: HashMap::new(),
                    inserts: Vec::new(),
                },
            );
        }
        if schema.key_properties.is_empty() {
            tracing::warn!(stream = %schema.stream, "the stream has no key properties: its records are inserted with keys GDN makes, and a re-run inserts them again");
        }
        self.streams.insert(
            schema.stream.clone(),
            Stream {
                shape: StreamShape::new(&schema),
                collection,
            },
        );
        Ok(())
    }

    async fn record(
        &mut self,
        line: u64,
        record: crate::singer::RecordMessage<'_>,
    ) -> Result<(), TargetGdnError> {
        let Some(stream) = self.streams.get(record.stream.as_ref()) else {
            return Err(TargetGdnError::Record {
                line,
                stream: record.stream.to_string(),
                detail: "a RECORD before the stream's SCHEMA".into(),
            });
        };
        let effect =
            record_effect(&stream.shape, &record).map_err(|detail| TargetGdnError::Record {
                line,
                stream: record.stream.to_string(),
                detail,
            })?;
        let collection = Arc::clone(&stream.collection);
        self.summary.records += 1;
        let patch_over_pending = matches!(effect.operation, Operation::Patch(_))
            && effect.key.as_ref().is_some_and(|key| {
                self.collections
                    .get(&collection)
                    .is_some_and(|pending| pending.keyed.contains_key(key))
            });
        if patch_over_pending {
            // A partial update of a document with a pending write: write that first.
            self.flush().await?;
        }
        let Some(pending) = self.collections.get_mut(&collection) else {
            return Ok(());
        };
        let before = pending.len();
        match (effect.key, effect.operation) {
            (None, Operation::Upsert(document) | Operation::Patch(document)) => {
                pending.inserts.push(document)
            }
            (None, Operation::Delete) => {}
            (Some(key), Operation::Upsert(document)) => {
                pending.keyed.insert(key, Pending::Upsert(document));
            }
            (Some(key), Operation::Patch(document)) => {
                pending.keyed.insert(key, Pending::Patch(document));
            }
            (Some(key), Operation::Delete) => {
                pending.keyed.insert(key, Pending::Delete);
            }
        }
        self.pending += pending.len() - before;
        self.since.get_or_insert_with(Instant::now);
        if self.pending >= self.config.gdn.batch_size_rows {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes everything pending, waits for GDN, then echoes the latest STATE.
    async fn flush(&mut self) -> Result<(), TargetGdnError> {
        let rows = self.config.gdn.batch_size_rows.max(1);
        let retries = self.config.gdn.max_retries;
        let wait = self.config.gdn.wait_for_sync;
        let metrics = self.writer.metrics();
        let mut handles = Vec::new();
        let mut patches: Vec<PatchBatch> = Vec::new();
        let mut deletes: Vec<(Arc<str>, Vec<DocumentKey>)> = Vec::new();
        for collection in self.collections.values_mut() {
            if collection.len() == 0 {
                continue;
            }
            let keyed = BatchTarget {
                table: Arc::clone(&collection.table),
                collection: Arc::clone(&collection.name),
                keyless: false,
            };
            let mut batch = self.writer.batch(64 * 1024);
            let mut collection_patches = Vec::new();
            let mut collection_deletes = Vec::new();
            for (key, pending) in collection.keyed.drain() {
                match pending {
                    Pending::Upsert(document) => {
                        let _ = batch.push_with(|out| {
                            out.extend_from_slice(&document);
                            Ok::<_, ()>(Some(key))
                        });
                        if batch.len() >= rows {
                            let full = std::mem::replace(&mut batch, self.writer.batch(64 * 1024));
                            handles.push(self.writer.submit(keyed.clone(), full).await);
                        }
                    }
                    Pending::Patch(document) => collection_patches.push((key, document)),
                    Pending::Delete => collection_deletes.push(key),
                }
            }
            if !batch.is_empty() {
                handles.push(self.writer.submit(keyed.clone(), batch).await);
            }
            if !collection.inserts.is_empty() {
                let keyless = BatchTarget {
                    keyless: true,
                    ..keyed
                };
                for chunk in collection.inserts.chunks(rows) {
                    let mut batch = self.writer.batch(64 * 1024);
                    for document in chunk {
                        let _ = batch.push_with(|out| {
                            out.extend_from_slice(document);
                            Ok::<_, ()>(None)
                        });
                    }
                    handles.push(self.writer.submit(keyless.clone(), batch).await);
                }
                collection.inserts.clear();
            }
            if !collection_patches.is_empty() {
                patches.push(PatchBatch {
                    collection: Arc::clone(&collection.name),
                    table: Arc::clone(&collection.table),
                    documents: collection_patches,
                });
            }
            if !collection_deletes.is_empty() {
                deletes.push((Arc::clone(&collection.name), collection_deletes));
            }
        }
        for (collection, keys) in deletes {
            for chunk in keys.chunks(rows) {
                // Documents GDN fails one by one are sent again, as the writer does for upserts
                // (a delete is idempotent); "not found" means already deleted.
                let mut remaining: Vec<&DocumentKey> = chunk.iter().collect();
                let mut attempt = 0u32;
                loop {
                    attempt += 1;
                    let body = serde_json::to_vec(
                        &remaining.iter().map(|key| key.as_str()).collect::<Vec<_>>(),
                    )
                    .map(Bytes::from)
                    .unwrap_or_default();
                    let outcome = retrying(retries, || {
                        self.client
                            .delete_documents(&collection, body.clone(), wait)
                    })
                    .await?;
                    let failed: Vec<_> = outcome
                        .failures
                        .iter()
                        .filter(|failure| failure.error_num != DOCUMENT_NOT_FOUND)
                        .collect();
                    metrics.ingested_documents.fetch_add(
                        (remaining.len() - failed.len()) as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    let Some(first) = failed.first() else {
                        break;
                    };
                    if attempt >= retries.max(1) {
                        return Err(TargetGdnError::Refused {
                            operation: "delete",
                            key: remaining
                                .get(first.index)
                                .map(|key| key.to_string())
                                .unwrap_or_default(),
                            collection: collection.to_string(),
                            error_num: first.error_num,
                            message: first.message.clone(),
                        });
                    }
                    remaining = failed
                        .iter()
                        .filter_map(|failure| remaining.get(failure.index).copied())
                        .collect();
                    tokio::time::sleep(document_backoff(attempt)).await;
                }
            }
        }
        for PatchBatch {
            collection,
            table,
            documents,
        } in patches
        {
            for chunk in documents.chunks(rows) {
                let mut missing = self.writer.batch(4096);
                // As for deletes: documents failed one by one are sent again.
                let mut remaining: Vec<&(DocumentKey, Vec<u8>)> = chunk.iter().collect();
                let mut attempt = 0u32;
                loop {
                    attempt += 1;
                    let mut body = Vec::with_capacity(remaining.len() * 128);
                    body.push(b'[');
                    for (index, (_, document)) in remaining.iter().enumerate() {
                        if index > 0 {
                            body.push(b',');
                        }
                        body.extend_from_slice(document);
                    }
                    body.push(b']');
                    let body = Bytes::from(body);
                    let outcome = retrying(retries, || {
                        self.client.patch_documents(&collection, body.clone(), wait)
                    })
                    .await?;
                    let mut failed = Vec::new();
                    let mut created = 0usize;
                    for failure in &outcome.failures {
                        let Some(&entry) = remaining.get(failure.index) else {
                            continue;
                        };
                        if failure.error_num == DOCUMENT_NOT_FOUND {
                            // Not there yet: the partial record is all there is, create it.
                            let (key, document) = entry;
                            created += 1;
                            let _ = missing.push_with(|out| {
                                out.extend_from_slice(document);
                                Ok::<_, ()>(Some(key.clone()))
                            });
                        } else {
                            failed.push((entry, failure));
                        }
                    }
                    metrics.ingested_documents.fetch_add(
                        (remaining.len() - created - failed.len()) as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    let Some(&((key, _), first)) = failed.first() else {
                        break;
                    };
                    if attempt >= retries.max(1) {
                        return Err(TargetGdnError::Refused {
                            operation: "patch",
                            key: key.to_string(),
                            collection: collection.to_string(),
                            error_num: first.error_num,
                            message: first.message.clone(),
                        });
                    }
                    remaining = failed.into_iter().map(|(entry, _)| entry).collect();
                    tokio::time::sleep(document_backoff(attempt)).await;
                }
                if !missing.is_empty() {
                    let target = BatchTarget {
                        table: Arc::clone(&table),
                        collection: Arc::clone(&collection),
                        keyless: false,
                    };
                    handles.push(self.writer.submit(target, missing).await);
                }
            }
        }
        for handle in handles {
            handle
                .await
                .map_err(|error| WriteError::Task(error.to_string()))??;
        }
        self.pending = 0;
        self.since = None;
        self.summary.flushes += 1;
        self.release_state()
    }

    fn release_state(&mut self) -> Result<(), TargetGdnError> {
        if self.pending > 0 {
            return Ok(());
        }
        if let Some(state) = self.state.take() {
            self.output.write_all(state.as_bytes())?;
            self.output.write_all(b"\n")?;
            self.output.flush()?;
            self.summary.states += 1;
        }
        Ok(())
    }
}

/// Reads Singer messages from `input` and writes them into GDN; STATE lines go to `output`.
pub async fn run<R: Read + Send + 'static, W: Write>(
    config: &TargetGdnConfig,
    input: R,
    output: &mut W,
    metrics: Arc<Metrics>,
) -> Result<TargetGdnSummary, TargetGdnError> {
    let client = GdnClient::connect(&config.gdn).await?;
    // Connected to GDN with Singer input on stdin: ready to take records (`/readyz`).
    metrics.set_phase(crate::metrics::Phase::Streaming);
    let writer = Writer::new(
        Some(client.clone()),
        WriterSettings {
            max_in_flight: config.gdn.max_in_flight,
            wait_for_sync: config.gdn.wait_for_sync,
            max_retries: config.gdn.max_retries,
            initial_backoff: Duration::from_millis(100),
        },
        metrics,
    );
    let mut target = Target {
        config,
        client,
        writer,
        streams: HashMap::new(),
        collections: HashMap::new(),
        pending: 0,
        since: None,
        last_timer_flush: Instant::now(),
        state: None,
        output,
        summary: TargetGdnSummary::default(),
    };
    let mut reader = LineReader::spawn(input);
    loop {
        let due = target.since.map(|since| {
            (since + config.gdn.batch_flush_interval)
                .max(target.last_timer_flush + config.flush_min_gap)
        });
        let block = tokio::select! {
            block = reader.next() => block,
            _ = async {
                match due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            } => {
                target.flush().await?;
                target.last_timer_flush = Instant::now();
                continue;
            }
        };
        let Some(block) = block else {
            break;
        };
        let block = block?;
        for (line, text) in block.lines() {
            match parse_line(text, line)? {
                Message::Schema(schema) => target.schema(schema).await?,
                Message::Record(record) => target.record(line, record).await?,
                Message::State(value) => {
                    target.state = Some(value.get().to_owned());
                    target.release_state()?;
                }
                Message::ActivateVersion { stream, .. } => {
                    tracing::debug!(%stream, "ACTIVATE_VERSION: documents are upserted by key, nothing to switch");
                }
            }
        }
    }
    target.flush().await?;
    Ok(target.summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_warnings_with_the_closest_key_and_known_keys_stay_checked() {
        let object = serde_json::json!({
            "gdn_host": "gdn.example.com", "fabric": "_system", "api_key": "k",
            "target_collection": "orders", "batch_size_row": 10, "orchestrator_only": true
        });
        let config = TargetGdnConfig::from_object(object.as_object().expect("object"))
            .expect("an old config starts");
        assert_eq!(
            config.gdn.batch_size_rows, 500,
            "the misspelt key is not read"
        );
        assert_eq!(config.warnings.len(), 2, "{:?}", config.warnings);
        assert!(config.warnings[0].contains("did you mean \"batch_size_rows\""));
        assert!(config.warnings[1].contains("orchestrator_only"));
        let bad = serde_json::json!({"gdn_host": "h", "api_key": "k", "batch_size_rows": "many"});
        let error = TargetGdnConfig::from_object(bad.as_object().expect("object")).unwrap_err();
        assert!(error.to_string().contains("batch_size_rows"), "{error}");
    }
}
