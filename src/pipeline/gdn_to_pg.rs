//! GDN → PostgreSQL: each collection is scanned into its table, then followed through its
//! change stream; resumable at every step.
//!
//! ```text
//! subscribe ──▶ cursor scan ──batches──▶ COPY (+ merge), COMMIT ──▶ [primary key] ──▶ state: scan done
//!     │
//!     └──messages──▶ batch (last change per _key) ──▶ COPY + merge, COMMIT ──▶ ack each message
//! ```
//!
//! Ordering argument, per collection:
//! 1. The subscription is attached **before** the scan starts, so every change committed after
//!    a scan page was read is a message of the subscription (whatever the server's initial
//!    position, it is not later than the attach).
//! 2. The scan loads each document as of the page it was read in (keyset pages, each a query of
//!    its own, not one snapshot); the stream then replays, in commit order,
//!    every message not acknowledged — possibly older than the snapshot. Every write is an
//!    idempotent upsert (the whole document) or delete by `_key`, and the last message of a key
//!    is its state at the end, so rows converge to the collection. While the backlog replays, a
//!    row may briefly show an older version.
//! 3. A message is acknowledged only after the transaction holding it commits. A crash before
//!    the acknowledgement redelivers it (and every later message), which re-applies the same
//!    final state; a crash during the scan (state file: scan not done) scans again.
//!    The state file records, per collection, the subscription and whether its scan finished;
//!    a different subscription name, or a table that vanished, scans again.
//! 4. A table pgferry creates is loaded without its primary key (each batch copied straight
//!    in) and marked as loading; the key is built once the scan is in, before the scan is
//!    recorded done. A run that finds the table still marked (a crash or a stop mid-scan)
//!    empties it and scans again; keys a restarted scan read twice are kept once (any copy is
//!    a state the row passes through, and point 2 brings it to the end state).
//!
//! `--once` stops after the scan plus the messages the subscription had not acknowledged when
//! it attached (its `msgBacklog` in the stream's stats); otherwise the run follows the streams
//! until SIGINT/SIGTERM, then commits and acknowledges what it holds and exits.
//!
//! GDN's stream carries nothing for a truncate, so a quiet stream (and the end of a `--once`
//! backlog) compares the table's rows with the collection's count and removes the rows whose
//! key is gone (`Follower::bring_in_line`). Each collection runs on its own: one that fails
//! stops alone, and the run reports every stopped collection at its end.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::{GdnAuth, GdnToPgConfig};
use crate::destination::postgres::documents::{
    document_key, Applied, DocumentBatch, DocumentError, DocumentTable, Encoded, PagedBatch,
    TableModel,
};
use crate::destination::postgres::infer::{DELETED_AT_COLUMN, KEY_COLUMN};
use crate::gdn::client::{retrying, GdnClient, GdnError};
use crate::gdn::cursor::{KeysetScan, ScanPage};
use crate::gdn::stream::{subscription_backlog, ChangeOp, StreamConsumer, StreamError};
use crate::metrics::{Metrics, Phase};
use crate::pg::query::quote_identifier;
use crate::pg::{Connection, PgError};
use crate::pipeline::RunControl;
use crate::progress::{spawn_display, CopyProgress};
use crate::singer::target_postgres::naming::TableName;
use crate::source::state::{StateError, StateFile};

/// The `kind` of a GDN → PostgreSQL state file.
const STATE_KIND: &str = "gdn_to_postgres";

/// Why a GDN → PostgreSQL run failed.
#[derive(Debug, thiserror::Error)]
pub enum GdnToPgError {
    /// A GDN call failed.
    #[error("GDN source: {0}")]
    Gdn(#[from] GdnError),
    /// The change stream failed.
    #[error("GDN source: {0}")]
    Stream(#[from] StreamError),
    /// A configured collection does not exist.
    #[error("collection {collection:?} not found in fabric {fabric:?}{}\nHINT: check \"source_collection\" and \"fabric\" in the source (a retry fails the same way)", listed(.available))]
    CollectionNotFound {
        /// The collection.
        collection: String,
        /// The fabric.
        fabric: String,
        /// Some collections that do exist.
        available: Vec<String>,
    },
    /// The database could not be reached.
    #[error("PostgreSQL destination: {0}")]
    Connect(Box<PgError>),
    /// A table name PostgreSQL cannot keep.
    #[error("table name {0:?} is longer than 63 bytes, the longest PostgreSQL keeps\nHINT: set \"table_name\" in the destination")]
    LongTableName(String),
    /// Loading a batch failed.
    #[error(transparent)]
    Load(Box<DocumentError>),
    /// A stream message that is not a change of a document.
    #[error("collection {collection:?}, stream message {id}: {detail}\n(not applied and not acknowledged; a retry fails the same way)")]
    BadMessage {
        /// The collection.
        collection: String,
        /// The message id.
        id: String,
        /// What is wrong.
        detail: String,
    },
    /// The state file failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// Some collections stopped (each on its own error); the others ran on.
    #[error("{} of {total} collections stopped; the others were loaded and followed until the run ended:{}\n(what each stopped collection had committed stays, its stream messages since are not acknowledged: a run after the fix resumes it where it stopped)", .failed.len(), failures(.failed))]
    Collections {
        /// Each stopped collection and why.
        failed: Vec<(String, Box<GdnToPgError>)>,
        /// Collections in the run.
        total: usize,
    },
    /// The scan's encoding thread stopped without saying why (a bug in pgferry).
    #[error("the scan's encoding thread stopped: {0}\n(nothing of the batch it held was applied; please report this with the log)")]
    Encoder(String),
}

impl From<DocumentError> for GdnToPgError {
    fn from(error: DocumentError) -> GdnToPgError {
        GdnToPgError::Load(Box::new(error))
    }
}

impl From<Box<DocumentError>> for GdnToPgError {
    fn from(error: Box<DocumentError>) -> GdnToPgError {
        GdnToPgError::Load(error)
    }
}

fn failures(failed: &[(String, Box<GdnToPgError>)]) -> String {
    failed
        .iter()
        .map(|(collection, error)| format!("\n- collection {collection:?}: {error}"))
        .collect()
}

fn listed(available: &[String]) -> String {
    if available.is_empty() {
        " (the fabric has no collections)".into()
    } else {
        format!(" (it has: {})", available.join(", "))
    }
}

/// The state file of a GDN → PostgreSQL pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GdnState {
    /// Format version of this file (1).
    pub version: u32,
    /// Always `gdn_to_postgres`, so a LOG_BASED state file is never mistaken for one.
    pub kind: String,
    /// Per collection.
    pub collections: BTreeMap<String, CollectionState>,
}

/// Where one collection's load stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionState {
    /// The subscription its stream is followed with.
    pub subscription: String,
    /// `schema.table` it is loaded into.
    pub table: String,
    /// Whether the cursor scan committed every document.
    pub scan_done: bool,
}

/// What the run did for one collection.
#[derive(Debug, Clone, Default)]
pub struct CollectionSummary {
    /// The collection.
    pub collection: String,
    /// `schema.table`.
    pub table: String,
    /// Documents read by the scan (0 when it was done before).
    pub scanned: u64,
    /// Stream messages applied and acknowledged.
    pub streamed: u64,
    /// Transactions committed.
    pub batches: u64,
}

/// What a GDN → PostgreSQL run did.
#[derive(Debug, Clone, Default)]
pub struct GdnRunSummary {
    /// Per collection, in config order.
    pub collections: Vec<CollectionSummary>,
    /// Wall time.
    pub elapsed: Duration,
    /// The process's peak resident set size, when known.
    pub peak_rss_bytes: Option<u64>,
}

impl GdnRunSummary {
    /// Lines for people.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for collection in &self.collections {
            text.push_str(&format!(
                "{} → {}: scanned {} documents, applied {} stream messages, {} transactions\n",
                collection.collection,
                collection.table,
                collection.scanned,
                collection.streamed,
                collection.batches
            ));
        }
        text.push_str(&format!("done in {:.2} s\n", self.elapsed.as_secs_f64()));
        if let Some(peak) = self.peak_rss_bytes {
            text.push_str(&format!("peak RSS {:.1} MB\n", peak as f64 / 1e6));
        }
        text
    }
}

/// The state shared by the collections' tasks.
struct SharedState {
    file: StateFile,
    state: tokio::sync::Mutex<GdnState>,
}

impl SharedState {
    async fn get(&self, collection: &str) -> Option<CollectionState> {
        self.state.lock().await.collections.get(collection).cloned()
    }

    async fn set(&self, collection: &str, entry: CollectionState) -> Result<(), StateError> {
        let mut state = self.state.lock().await;
        state.collections.insert(collection.to_owned(), entry);
        self.file.save_json(&*state)
    }
}

fn load_state(file: &StateFile) -> Result<GdnState, StateError> {
    match file.load_json::<GdnState>()? {
        None => Ok(GdnState {
            version: 1,
            kind: STATE_KIND.into(),
            collections: BTreeMap::new(),
        }),
        Some(state) if state.version == 1 && state.kind == STATE_KIND => Ok(state),
        Some(state) => Err(StateError::Invalid {
            path: file.path().display().to_string(),
            detail: format!(
                "kind {:?} version {} is not a GDN → PostgreSQL state",
                state.kind, state.version
            ),
        }),
    }
}

/// Everything one collection's task needs.
struct Context<'a> {
    config: &'a GdnToPgConfig,
    client: &'a GdnClient,
    tenant: &'a str,
    state: &'a SharedState,
    metrics: &'a Metrics,
    progress: &'a CopyProgress,
    control: &'a RunControl,
}

/// Resolves once a shutdown is requested (never, when nobody can request one).
async fn stop_requested(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Runs a GDN → PostgreSQL pipeline.
pub async fn run(
    config: &GdnToPgConfig,
    metrics: Arc<Metrics>,
    control: RunControl,
) -> Result<GdnRunSummary, GdnToPgError> {
    let started = Instant::now();
    let source = &config.source;
    let client = GdnClient::open(
        &source.base_url,
        &source.fabric,
        &source.auth,
        source.request_timeout,
    )
    .await?;
    let api_key = match &source.auth {
        GdnAuth::ApiKey(key) => Some(key.expose().to_owned()),
        GdnAuth::Login { .. } => None,
    };
    let tenant = retrying(source.max_retries, || client.tenant(api_key.as_deref())).await?;
    let existing = retrying(source.max_retries, || client.collection_names()).await?;
    for collection in &source.collections {
        if !existing.contains(collection) {
            let mut available: Vec<String> = existing
                .iter()
                .filter(|name| !name.starts_with('_'))
                .take(20)
                .cloned()
                .collect();
            available.sort();
            return Err(GdnToPgError::CollectionNotFound {
                collection: collection.clone(),
                fabric: source.fabric.clone(),
                available,
            });
        }
        if let Err(error) = retrying(source.max_retries, || client.enable_stream(collection)).await
        {
            tracing::warn!(%collection, %error, "could not turn the collection's change stream on; subscribing anyway");
        }
    }
    let file = StateFile::new(
        config
            .state_file
            .clone()
            .unwrap_or_else(|| std::path::PathBuf::from("pgferry-state.json")),
    );
    let state = SharedState {
        state: tokio::sync::Mutex::new(load_state(&file)?),
        file,
    };
    // The counts only size the progress bars: they are read beside the work, not before it
    // (counting a large collection can take a while).
    let progress = Arc::new(CopyProgress::new(
        source
            .collections
            .iter()
            .map(|collection| (collection.clone(), 0)),
    ));
    let estimates = async {
        for (index, collection) in source.collections.iter().enumerate() {
            if let Ok(count) = retrying(source.max_retries, || client.count(collection)).await {
                progress.set_estimate(index, count);
            }
        }
    };
    let display = spawn_display(Arc::clone(&progress), Arc::clone(&metrics));
    // Connected to both ends: scanning and following from here on (`/readyz` is ready).
    metrics.set_phase(Phase::Copying);
    let context = Context {
        config,
        client: &client,
        tenant: &tenant,
        state: &state,
        metrics: &metrics,
        progress: &progress,
        control: &control,
    };
    // Each collection runs on its own: one that stops (an error that needs a fix, or GDN or
    // the database failing for it) says so at once and leaves the others running.
    let sync = std::pin::pin!(futures_util::future::join_all(
        source
            .collections
            .iter()
            .enumerate()
            .map(|(index, collection)| {
                let context = &context;
                async move {
                    let result = sync_collection(context, index, collection).await;
                    if let Err(error) = &result {
                        context.metrics.ingest_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(%collection, %error, "this collection stopped; the others go on");
                    }
                    result
                }
            }),
    ));
    // The work does not wait for the counts (a failed run does not retry them first).
    let result = match futures_util::future::select(sync, std::pin::pin!(estimates)).await {
        futures_util::future::Either::Left((result, _)) => result,
        futures_util::future::Either::Right(((), sync)) => sync.await,
    };
    progress.finish();
    if let Some(display) = display {
        let _ = display.await;
    }
    let mut collections = Vec::new();
    let mut failed = Vec::new();
    for (collection, result) in source.collections.iter().zip(result) {
        match result {
            Ok(summary) => collections.push(summary),
            Err(error) => failed.push((collection.clone(), Box::new(error))),
        }
    }
    if !failed.is_empty() {
        return Err(GdnToPgError::Collections {
            failed,
            total: source.collections.len(),
        });
    }
    Ok(GdnRunSummary {
        collections,
        elapsed: started.elapsed(),
        peak_rss_bytes: crate::pipeline::peak_rss_bytes(),
    })
}

/// A collection's consumer, its pending batch, and the ids of the messages in it.
struct Follower<'a> {
    context: &'a Context<'a>,
    collection: &'a str,
    subscription: String,
    consumer: StreamConsumer,
    connection: Connection,
    table: DocumentTable,
    batch: DocumentBatch,
    ids: Vec<String>,
    bytes: u64,
    summary: CollectionSummary,
    /// The collection's position in the progress display.
    index: usize,
}

impl Follower<'_> {
    /// Commits the pending batch, then acknowledges its messages.
    async fn flush(&mut self, acknowledge: bool) -> Result<(), GdnToPgError> {
        if self.ids.is_empty() && self.batch.is_empty() {
            return Ok(());
        }
        self.commit().await?;
        let streamed = self.ids.len() as u64;
        if acknowledge {
            for id in std::mem::take(&mut self.ids) {
                if let Err(error) = self.consumer.ack(&id).await {
                    // Committed, not acknowledged: redelivered later and re-applied (same rows).
                    tracing::warn!(collection = self.collection, %error, "acknowledging failed; the messages will be delivered again");
                    break;
                }
            }
        }
        self.ids.clear();
        self.summary.streamed += streamed;
        Ok(())
    }

    /// Applies the pending batch in one transaction.
    async fn commit(&mut self) -> Result<(), GdnToPgError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let applied = self
            .table
            .apply(&mut self.connection, &self.batch, false)
            .await?;
        self.record(&applied);
        self.batch.clear();
        Ok(())
    }

    /// Logs a committed batch's schema changes and counts it.
    fn record(&mut self, applied: &Applied) {
        count_batch(
            self.context,
            self.collection,
            applied,
            std::mem::take(&mut self.bytes),
        );
        self.summary.batches += 1;
    }

    /// Adds one stream message to the batch.
    fn take(&mut self, message: crate::gdn::stream::StreamMessage) -> Result<(), GdnToPgError> {
        let bad = |detail: String| GdnToPgError::BadMessage {
            collection: self.collection.to_owned(),
            id: message.id.clone(),
            detail,
        };
        self.context
            .metrics
            .rows_read
            .fetch_add(1, Ordering::Relaxed);
        self.bytes += message.payload.len() as u64;
        if !message.payload.iter().all(u8::is_ascii_whitespace) {
            let payload = String::from_utf8(message.payload)
                .map_err(|error| bad(format!("the payload is not UTF-8: {error}")))?;
            let document = RawValue::from_string(payload)
                .map_err(|error| bad(format!("the payload is not JSON: {error}")))?;
            let result = match message.op {
                ChangeOp::Upsert => self.batch.upsert(document).map_err(|bad| bad.reason),
                ChangeOp::Delete => document_key(&document).map(|key| self.batch.delete(key)),
            };
            result.map_err(|reason| bad(format!("the payload {reason}")))?;
        }
        self.ids.push(message.id);
        Ok(())
    }

    /// Brings the table in line with the collection when it holds more rows than the
    /// collection has documents — a truncate (GDN's stream carries no message for one) or
    /// deletes never seen: the collection's keys are read (keyset pages of keys) into a
    /// temporary table and every row whose key is not among them is deleted (or marked
    /// deleted without `hard_delete`), in one transaction. Called with nothing pending. Safe
    /// against writes going on: a row whose document is gone when its key would be read was
    /// deleted in GDN after the row's last change, and any later change of the key is a
    /// stream message still to come. Returns the rows removed.
    async fn bring_in_line(&mut self) -> Result<u64, GdnToPgError> {
        let context = self.context;
        let source = &context.config.source;
        let collection = self.collection;
        let documents = retrying(source.max_retries, || context.client.count(collection)).await?;
        let name = self.table.name().clone();
        let key = quote_identifier(KEY_COLUMN);
        let deleted_at = quote_identifier(DELETED_AT_COLUMN);
        let live = if context.config.destination.hard_delete {
            String::new()
        } else {
            format!(" WHERE {deleted_at} IS NULL")
        };
        let failed = |during: &'static str| {
            let name = name.clone();
            move |source: PgError| {
                GdnToPgError::from(DocumentError::Postgres {
                    during,
                    table: name,
                    source,
                })
            }
        };
        let counted = self
            .connection
            .query(&format!("SELECT count(*) FROM {}{live}", name.quoted()))
            .await
            .map_err(failed("counting the rows of"))?;
        let rows: u64 = counted
            .first()
            .and_then(|row| row.get(0))
            .and_then(|count| count.parse().ok())
            .unwrap_or(0);
        if rows <= documents {
            return Ok(0);
        }
        tracing::warn!(%collection, table = %name, rows, documents, "the table holds more rows than the collection has documents (a truncate, which GDN's stream does not carry, or deletes not seen): removing the rows whose key the collection no longer has");
        self.connection
            .execute(&format!(
                "BEGIN; CREATE TEMP TABLE pgferry_live_keys ({key} text) ON COMMIT DROP"
            ))
            .await
            .map_err(failed("reading the live keys of"))?;
        let result = self.remove_missing(&name, &key, &live).await;
        match result {
            Ok(removed) => {
                self.connection
                    .execute("COMMIT")
                    .await
                    .map_err(failed("removing the rows gone from"))?;
                tracing::info!(%collection, table = %name, removed, "the table is in line with the collection again");
                Ok(removed)
            }
            Err(error) => {
                let _ = self.connection.execute("ROLLBACK").await;
                Err(error)
            }
        }
    }

    /// Inside [`Follower::bring_in_line`]'s transaction: copies the collection's keys in and
    /// removes the rows without one.
    async fn remove_missing(
        &mut self,
        name: &TableName,
        key: &str,
        live: &str,
    ) -> Result<u64, GdnToPgError> {
        let context = self.context;
        let source = &context.config.source;
        let failed = |during: &'static str| {
            move |source: PgError| {
                GdnToPgError::from(DocumentError::Postgres {
                    during,
                    table: name.clone(),
                    source,
                })
            }
        };
        let mut keys = KeysetScan::new(
            context.client,
            self.collection,
            source.cursor_batch_size,
            source.cursor_ttl,
            source.max_retries,
        )
        .keys();
        let mut copy = self
            .connection
            .copy_in(&format!("COPY pgferry_live_keys ({key}) FROM STDIN"))
            .await
            .map_err(failed("reading the live keys of"))?;
        let mut text = Vec::new();
        while let Some(page) = keys.next_page().await? {
            text.clear();
            for raw in &page.documents {
                let key: String =
                    serde_json::from_str(raw.get()).map_err(|error| GdnToPgError::BadMessage {
                        collection: self.collection.to_owned(),
                        id: "keys".into(),
                        detail: format!("a key page holds {:?}: {error}", raw.get()),
                    })?;
                crate::singer::target_postgres::copy_encode::push_escaped(
                    &mut text,
                    key.as_bytes(),
                );
                text.push(b'\n');
            }
            copy.send(&text)
                .await
                .map_err(failed("reading the live keys of"))?;
        }
        copy.finish()
            .await
            .map_err(failed("reading the live keys of"))?;
        let gone =
            format!("NOT EXISTS (SELECT 1 FROM pgferry_live_keys k WHERE k.{key} = t.{key})");
        let statement = if context.config.destination.hard_delete {
            format!("DELETE FROM {} t WHERE {gone}", name.quoted())
        } else {
            format!(
                "UPDATE {} t SET {} = now(){} AND {gone}",
                name.quoted(),
                quote_identifier(DELETED_AT_COLUMN),
                live.replace(" WHERE ", " WHERE t.")
            )
        };
        self.connection
            .execute(&statement)
            .await
            .map_err(failed("removing the rows gone from"))
    }

    /// Attaches to the subscription again after the connection broke; what was not committed
    /// is dropped (the server delivers it again).
    async fn reconnect(&mut self, error: StreamError) -> Result<(), GdnToPgError> {
        tracing::warn!(collection = self.collection, %error, "the change stream broke; reconnecting (messages not acknowledged come again)");
        self.batch.clear();
        self.ids.clear();
        self.bytes = 0;
        let context = self.context;
        let source = &context.config.source;
        // Not ready while the stream is down (`/readyz`), ready again once subscribed.
        context.metrics.set_phase(Phase::Backoff);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(100u64 << attempt.min(7))).await;
            match StreamConsumer::subscribe(
                context.client,
                context.tenant,
                self.collection,
                &self.subscription,
                source.request_timeout,
            )
            .await
            {
                Ok(consumer) => {
                    self.consumer = consumer;
                    context.metrics.set_phase(Phase::Streaming);
                    return Ok(());
                }
                Err(error) if error.is_retryable() && attempt < source.max_retries => {}
                Err(error) => return Err(error.into()),
            }
        }
    }
}

async fn subscribe(
    context: &Context<'_>,
    collection: &str,
    subscription: &str,
) -> Result<StreamConsumer, GdnToPgError> {
    let source = &context.config.source;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match StreamConsumer::subscribe(
            context.client,
            context.tenant,
            collection,
            subscription,
            source.request_timeout,
        )
        .await
        {
            Ok(consumer) => return Ok(consumer),
            Err(error) if error.is_retryable() && attempt < source.max_retries => {
                tracing::warn!(%collection, %error, "subscribing failed; retrying");
                tokio::time::sleep(Duration::from_millis(100u64 << attempt.min(7))).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// The subscription's backlog right after attaching (for `--once`).
async fn backlog(
    context: &Context<'_>,
    collection: &str,
    subscription: &str,
) -> Result<u64, GdnToPgError> {
    let source = &context.config.source;
    for _ in 0..50 {
        let found = retrying(source.max_retries, || {
            subscription_backlog(context.client, collection, subscription)
        })
        .await?;
        if let Some(backlog) = found {
            return Ok(backlog);
        }
        // The server registers a new subscription shortly after the handshake.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(GdnToPgError::Stream(StreamError::Protocol {
        url: format!("{}/_fabric/{}/_api/streams/c8locals.{collection}/stats", context.client.base_url(), context.client.fabric()),
        detail: format!("the stream's stats do not list the subscription {subscription:?} this run attached to, so --once cannot tell where the backlog ends; run without --once"),
    }))
}

/// Scans then follows one collection.
async fn sync_collection(
    context: &Context<'_>,
    index: usize,
    collection: &str,
) -> Result<CollectionSummary, GdnToPgError> {
    let destination = &context.config.destination;
    let source = &context.config.source;
    let name = TableName {
        schema: destination.target_schema.clone(),
        table: destination.table_for(collection),
    };
    if name.table.len() > 63 {
        return Err(GdnToPgError::LongTableName(name.table));
    }
    let mut connection = Connection::connect(&destination.connection.destination_options())
        .await
        .map_err(|error| GdnToPgError::Connect(Box::new(error)))?;
    let table = DocumentTable::open(
        &mut connection,
        &name,
        destination.hard_delete,
        destination.max_columns,
    )
    .await?;
    let subscription = source.subscription_for(
        collection,
        &destination.connection.dbname,
        &name.schema,
        &name.table,
    );
    let consumer = subscribe(context, collection, &subscription).await?;
    let backlog = if context.control.once {
        Some(backlog(context, collection, &subscription).await?)
    } else {
        None
    };
    let recorded = context.state.get(collection).await;
    let scan_done = !table.loading()
        && recorded
            .as_ref()
            .is_some_and(|entry| entry.scan_done && entry.subscription == subscription);
    let mut follower = Follower {
        context,
        collection,
        subscription: subscription.clone(),
        consumer,
        connection,
        table,
        batch: DocumentBatch::default(),
        ids: Vec::new(),
        bytes: 0,
        index,
        summary: CollectionSummary {
            collection: collection.to_owned(),
            table: name.to_string(),
            ..CollectionSummary::default()
        },
    };
    let mut shutdown = context.control.shutdown.clone();
    if !scan_done {
        let entry = CollectionState {
            subscription: subscription.clone(),
            table: name.to_string(),
            scan_done: false,
        };
        context.state.set(collection, entry.clone()).await?;
        tracing::info!(%collection, table = %name, %subscription, "scanning the collection (subscribed to its stream first)");
        let finished = scan(&mut follower, &mut shutdown).await?;
        if !finished {
            follower.consumer.close().await;
            follower.connection.close().await;
            return Ok(follower.summary);
        }
        if follower.table.loading() {
            tracing::info!(%collection, table = %name, "scan loaded: adding the primary key on \"_key\"");
            let building = Instant::now();
            let removed = follower.table.finish_load(&mut follower.connection).await?;
            if removed > 0 {
                tracing::info!(%collection, table = %name, removed, "removed the copies of keys the scan read twice");
            }
            tracing::info!(%collection, table = %name, seconds = building.elapsed().as_secs_f64(), "primary key added");
        }
        context
            .state
            .set(
                collection,
                CollectionState {
                    scan_done: true,
                    ..entry
                },
            )
            .await?;
    }
    follow(&mut follower, backlog, &mut shutdown).await?;
    let Follower {
        consumer,
        connection,
        summary,
        ..
    } = follower;
    consumer.close().await;
    connection.close().await;
    Ok(summary)
}

/// Logs a committed batch's schema changes and adds it to the metrics.
fn count_batch(context: &Context<'_>, collection: &str, applied: &Applied, bytes: u64) {
    for change in &applied.changes {
        tracing::info!(collection, "{change}");
    }
    let metrics = context.metrics;
    let rows = applied.upserts + applied.deletes;
    metrics
        .ingested_documents
        .fetch_add(rows, Ordering::Relaxed);
    metrics.ingested_bytes.fetch_add(bytes, Ordering::Relaxed);
    metrics.batches.fetch_add(1, Ordering::Relaxed);
    metrics.batch_documents.fetch_add(rows, Ordering::Relaxed);
}

/// Pages fetched ahead of the encoding: more than a batch's worth at GDN's largest page
/// (1,000 documents), so fetching goes on while the encoder turns a batch into COPY data.
const PAGES_AHEAD: usize = 16;
/// Bytes of pages fetched ahead of the encoding (whatever their count): with large documents
/// this, not [`PAGES_AHEAD`], bounds the memory the pages in flight take.
const PAGES_AHEAD_BYTES: usize = 8 << 20;

/// A page on its way to the encoder, holding its share of [`PAGES_AHEAD_BYTES`] until the
/// encoder has taken it in.
type AheadPage = (Vec<Box<RawValue>>, tokio::sync::OwnedSemaphorePermit);

/// Scans the collection into the table in three stages that run at once: this task fetches
/// cursor pages, a thread of its own reads each page and encodes it as COPY data into the open
/// batch while it is fresh in the cache (against the columns the table will have by then; see
/// [`PagedBatch`]), and `parallelism`
/// connections commit the encoded batches in PostgreSQL (a scan's batches hold distinct keys,
/// so they do not wait on each other; one that changes the columns commits alone). GDN,
/// pgferry and PostgreSQL all stay busy instead of waiting on each other. `Ok(false)` when a
/// shutdown interrupted the scan (what was read is committed; the next run scans again).
async fn scan(
    follower: &mut Follower<'_>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<bool, GdnToPgError> {
    let context = follower.context;
    let destination = &context.config.destination;
    let mut others = Vec::new();
    for _ in 1..destination.parallelism {
        let connection = Connection::connect(&destination.connection.destination_options())
            .await
            .map_err(|error| GdnToPgError::Connect(Box::new(error)))?;
        others.push((connection, follower.table.for_another_session()));
    }
    let source = &context.config.source;
    let mut reader = KeysetScan::new(
        context.client,
        follower.collection,
        source.cursor_batch_size,
        source.cursor_ttl,
        source.max_retries,
    );
    let (pages_tx, pages_rx) = tokio::sync::mpsc::channel::<AheadPage>(PAGES_AHEAD);
    // Permits are KiB of pages ahead.
    let ahead = std::sync::Arc::new(tokio::sync::Semaphore::new(PAGES_AHEAD_BYTES >> 10));
    let (encoded_tx, encoded_rx) = tokio::sync::mpsc::channel(destination.parallelism);
    let (spare_tx, spare_rx) = std::sync::mpsc::channel();
    let encoder = ScanEncoder {
        model: follower.table.model().clone(),
        batch_size: destination.batch_size_rows,
        batch_bytes: destination.batch_size_bytes as u64,
    };
    let encoding =
        tokio::task::spawn_blocking(move || encoder.run(pages_rx, &encoded_tx, &spare_rx));
    let fetch = async {
        let pages_tx = pages_tx;
        loop {
            if *shutdown.borrow_and_update() {
                return Ok(false);
            }
            let Some(ScanPage { documents, bytes }) = reader.next_page().await? else {
                return Ok(true);
            };
            context
                .metrics
                .rows_read
                .fetch_add(documents.len() as u64, Ordering::Relaxed);
            let share = u32::try_from((bytes >> 10) + 1)
                .unwrap_or(u32::MAX)
                .min((PAGES_AHEAD_BYTES >> 10) as u32);
            let Ok(permit) = ahead.clone().acquire_many_owned(share).await else {
                return Ok(true);
            };
            if pages_tx.send((documents, permit)).await.is_err() {
                // The encoder stopped: its error (or the commit's) is the scan's.
                return Ok(true);
            }
        }
    };
    let lanes = ScanLanes {
        context,
        collection: follower.collection,
        index: follower.index,
        batches: tokio::sync::Mutex::new(encoded_rx),
        order: tokio::sync::RwLock::new(()),
        try_direct: AtomicBool::new(true),
        spare: spare_tx,
        documents: AtomicU64::new(0),
        batches_committed: AtomicU64::new(0),
    };
    let commit = futures_util::future::try_join_all(
        std::iter::once((&mut follower.connection, &mut follower.table))
            .chain(
                others
                    .iter_mut()
                    .map(|(connection, table)| (connection, table)),
            )
            .map(|(connection, table)| lanes.commit(connection, table)),
    );
    let outcome = tokio::try_join!(fetch, commit);
    // On an error the stages still running are dropped; the encoder sees its channels close.
    let ScanLanes {
        batches,
        documents,
        batches_committed,
        ..
    } = lanes;
    drop(batches);
    let model = encoding
        .await
        .map_err(|error| GdnToPgError::Encoder(error.to_string()))?;
    for (connection, _) in others {
        connection.close().await;
    }
    follower.summary.scanned += documents.into_inner();
    follower.summary.batches += batches_committed.into_inner();
    let (finished, _) = outcome?;
    // Every batch is committed: the columns are the encoder's.
    follower.table.committed_elsewhere(model);
    Ok(finished)
}

/// What the connections that commit a scan's batches share.
struct ScanLanes<'a> {
    context: &'a Context<'a>,
    collection: &'a str,
    index: usize,
    /// Encoded batches, in the order they were read.
    batches:
        tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Result<ScannedBatch, Box<DocumentError>>>>,
    /// Batches commit side by side (shared); one that changes the columns alone (exclusive),
    /// after every batch before it and before any after it.
    order: tokio::sync::RwLock<()>,
    /// Batches are copied straight into the table until one meets a key that is there.
    try_direct: AtomicBool,
    /// Buffers back to the encoder.
    spare: std::sync::mpsc::Sender<(Vec<u8>, Vec<u8>)>,
    documents: AtomicU64,
    batches_committed: AtomicU64,
}

impl ScanLanes<'_> {
    /// Commits batches over one connection until they run out.
    async fn commit(
        &self,
        connection: &mut Connection,
        table: &mut DocumentTable,
    ) -> Result<(), GdnToPgError> {
        loop {
            // The turn is taken while the batch is taken, so turns follow the batches' order.
            let (scanned, alone, shared) = {
                let mut batches = self.batches.lock().await;
                let Some(scanned) = batches.recv().await else {
                    return Ok(());
                };
                let scanned = scanned?;
                if scanned.encoded.changes_columns() {
                    (scanned, Some(self.order.write().await), None)
                } else {
                    (scanned, None, Some(self.order.read().await))
                }
            };
            let applied = table
                .commit(
                    connection,
                    &scanned.encoded,
                    self.try_direct.load(Ordering::Relaxed),
                )
                .await?;
            drop((alone, shared));
            if !applied.direct {
                // A resumed scan: the table has keys already, later batches merge.
                self.try_direct.store(false, Ordering::Relaxed);
            }
            count_batch(self.context, self.collection, &applied, scanned.bytes);
            self.documents
                .fetch_add(scanned.documents, Ordering::Relaxed);
            self.batches_committed.fetch_add(1, Ordering::Relaxed);
            self.context.progress.add(self.index, scanned.documents);
            // The buffers go back to the encoder; it is gone only after an error.
            let _ = self.spare.send(scanned.encoded.into_buffers());
        }
    }
}

/// A scan batch encoded for the table, and what it counts for.
struct ScannedBatch {
    encoded: Encoded,
    documents: u64,
    bytes: u64,
}

/// The scan's middle stage, on a thread of its own: cursor pages in, encoded batches out.
struct ScanEncoder {
    /// The table's columns as they will be once the batches before are committed.
    model: TableModel,
    batch_size: usize,
    /// Bytes of documents after which a batch is sent on (as after `batch_size` documents).
    batch_bytes: u64,
}

impl ScanEncoder {
    /// Reads pages until their channel closes, encoding each into the open batch while it is
    /// fresh in the cache, and sending the batch once it holds `batch_size` documents or
    /// `batch_bytes` of them, once a
    /// page does not fit it (other columns, a repeated key), and at the end. Stops at the
    /// first error, which it sends on. Returns the columns the table has once every batch
    /// sent is committed.
    fn run(
        mut self,
        mut pages: tokio::sync::mpsc::Receiver<AheadPage>,
        out: &tokio::sync::mpsc::Sender<Result<ScannedBatch, Box<DocumentError>>>,
        spare: &std::sync::mpsc::Receiver<(Vec<u8>, Vec<u8>)>,
    ) -> TableModel {
        let mut page_batch = DocumentBatch::default();
        // The open batch, and the documents and bytes it counts for.
        let mut open: Option<(PagedBatch, u64, u64)> = None;
        loop {
            let page = pages.blocking_recv();
            let end = page.is_none();
            if let Some((page, _permit)) = page {
                page_batch.clear();
                let (mut documents, mut bytes) = (0u64, 0u64);
                for raw in page {
                    documents += 1;
                    bytes += raw.get().len() as u64;
                    if let Err(rejected) = page_batch.upsert(raw) {
                        let _ = out.blocking_send(Err(Box::new(DocumentError::Bad {
                            table: self.model.name().clone(),
                            snippet: rejected.snippet(),
                            reason: Box::new(rejected.reason),
                        })));
                        return self.model;
                    }
                }
                // An empty page (the last may be one) adds nothing.
                let taken = if page_batch.is_empty() {
                    Ok(())
                } else {
                    self.take_page(&page_batch, (documents, bytes), &mut open, out, spare)
                };
                if let Err(error) = taken {
                    if let Some(error) = error {
                        let _ = out.blocking_send(Err(error));
                    }
                    return self.model;
                }
            }
            let full = open.as_ref().is_some_and(|(paged, _, bytes)| {
                paged.len() >= self.batch_size as u64 || *bytes >= self.batch_bytes
            });
            if full || end {
                if let Some(batch) = open.take() {
                    if !self.send(batch, out) {
                        return self.model;
                    }
                }
            }
            if end {
                return self.model;
            }
        }
    }

    /// Adds a page to the open batch, or, when it does not fit, sends that batch on and opens
    /// the next with the page. `Err(Some(_))` is the scan's error; `Err(None)` when the commits
    /// are gone (after an error of theirs).
    fn take_page(
        &mut self,
        page: &DocumentBatch,
        (documents, bytes): (u64, u64),
        open: &mut Option<(PagedBatch, u64, u64)>,
        out: &tokio::sync::mpsc::Sender<Result<ScannedBatch, Box<DocumentError>>>,
        spare: &std::sync::mpsc::Receiver<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), Option<Box<DocumentError>>> {
        if let Some((paged, open_documents, open_bytes)) = open.as_mut() {
            if paged.append(page).map_err(Some)? {
                *open_documents += documents;
                *open_bytes += bytes;
                return Ok(());
            }
        }
        if let Some(full) = open.take() {
            if !self.send(full, out) {
                return Err(None);
            }
        }
        let buffers = spare.try_recv().unwrap_or_default();
        let paged = self.model.start_paged(page, buffers).map_err(Some)?;
        *open = Some((paged, documents, bytes));
        Ok(())
    }

    /// Sends a finished batch on (after which the model has its columns); `false` when the
    /// commits are gone (after an error).
    fn send(
        &mut self,
        (paged, documents, bytes): (PagedBatch, u64, u64),
        out: &tokio::sync::mpsc::Sender<Result<ScannedBatch, Box<DocumentError>>>,
    ) -> bool {
        if paged.is_empty() {
            return true;
        }
        let encoded = paged.finish();
        self.model.assume_committed(&encoded);
        out.blocking_send(Ok(ScannedBatch {
            encoded,
            documents,
            bytes,
        }))
        .is_ok()
    }
}

/// Applies stream messages in batches until a shutdown (or, with a backlog, once it is read).
async fn follow(
    follower: &mut Follower<'_>,
    backlog: Option<u64>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), GdnToPgError> {
    let destination = &follower.context.config.destination;
    let check = follower.context.config.source.truncate_check;
    // Scanned and subscribed: following the change stream (`/readyz` says "streaming").
    follower.context.metrics.set_phase(Phase::Streaming);
    let mut seen: HashSet<String> = HashSet::new();
    let mut deadline: Option<tokio::time::Instant> = None;
    // When the stream has been quiet long enough to compare the table with the collection.
    let mut quiet_at = check.map(|every| tokio::time::Instant::now() + every);
    loop {
        if backlog.is_some_and(|backlog| seen.len() as u64 >= backlog) {
            follower.flush(true).await?;
            if check.is_some() {
                follower.bring_in_line().await?;
            }
            return Ok(());
        }
        let flush_at = deadline;
        // Only with nothing pending: the table then holds every message read.
        let check_at = quiet_at.filter(|_| deadline.is_none() && backlog.is_none());
        tokio::select! {
            biased;
            () = stop_requested(shutdown) => {
                tracing::info!(collection = follower.collection, "stopping: committing and acknowledging what is pending");
                return follower.flush(true).await;
            }
            () = async {
                match flush_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                follower.flush(true).await?;
                deadline = None;
            }
            () = async {
                match check_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                follower.bring_in_line().await?;
                quiet_at = check.map(|every| tokio::time::Instant::now() + every);
            }
            message = follower.consumer.next() => match message {
                Ok(message) => {
                    quiet_at = check.map(|every| tokio::time::Instant::now() + every);
                    if backlog.is_some() {
                        seen.insert(message.id.clone());
                    }
                    follower.take(message)?;
                    deadline.get_or_insert_with(|| {
                        tokio::time::Instant::now() + destination.batch_flush_interval
                    });
                    if follower.ids.len() >= destination.batch_size_rows
                        || follower.bytes >= destination.batch_size_bytes as u64
                    {
                        follower.flush(true).await?;
                        deadline = None;
                    }
                }
                Err(error) if error.is_retryable() => {
                    follower.reconnect(error).await?;
                    deadline = None;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_is_ours_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("state.json"));
        let mut state = load_state(&file).unwrap();
        assert_eq!((state.version, state.kind.as_str()), (1, STATE_KIND));
        state.collections.insert(
            "orders".into(),
            CollectionState {
                subscription: "pgferry-dw-public-orders".into(),
                table: "public.orders".into(),
                scan_done: true,
            },
        );
        file.save_json(&state).unwrap();
        assert_eq!(load_state(&file).unwrap(), state);
        let log_based = crate::source::state::CdcState::new("slot", crate::pg::Lsn::ZERO);
        file.save(&log_based).unwrap();
        let error = load_state(&file).unwrap_err().to_string();
        assert!(error.contains("move it away"), "{error}");
    }
}
