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

use crate::config::Wal2JsonFormat;
use crate::decode::commit_time::parse_timestamptz_micros;
use crate::decode::replication::ReplicationMessage;
use crate::decode::wal2json::{parse_v2, Action, Change, ColumnValue, Wal2JsonError};
use crate::decode::wal2json_v1::V1Decoder;
use crate::gdn::client::{retrying, BatchOutcome, GdnClient, GdnError};
use crate::gdn::document::{DocumentError, DocumentPlan};
use crate::metrics::Metrics;
use crate::pg::catalog::{resolve_type_names, Column, NamedType, NumericMode, Table};
use crate::pg::replication::LogicalStream;
use crate::pg::{ConnectOptions, Connection, Lsn, PgError};
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
    /// Two versions of a document could not be merged (a bug, or a corrupt document in GDN).
    #[error("could not merge a partial update into its document: {0}\nHINT: this is a bug in pgferry or a corrupt document in GDN; the slot was not confirmed past this change, please report it")]
    Merge(String),
    /// The server ended the stream.
    #[error("the server ended the replication stream\nHINT: the server may be shutting down; restart pgferry to resume from the last confirmed position")]
    Ended,
}

/// One streamed table: how its rows become documents and where they go.
///
/// The plan follows the row shape the changes carry: wal2json names every column with its
/// type, so a column added, dropped or retyped since the catalog was read is decoded by the
/// type it had when the change was made (an INSERT is the whole row as it was then).
#[derive(Debug, Clone)]
pub struct CdcTable {
    /// Rows → documents (same attribute names and keys as the snapshot).
    pub plan: DocumentPlan,
    /// The collection.
    pub collection: Arc<str>,
    /// The catalog entry the plans are built on (its columns replaced as shapes change).
    table: Table,
    /// `(column, type name)` of the current plan, as the changes spell them.
    shape: Vec<(String, String)>,
}

impl CdcTable {
    /// A streamed table planned from its catalog entry.
    pub fn new(table: &Table, plan: DocumentPlan, collection: Arc<str>) -> CdcTable {
        CdcTable {
            shape: table
                .columns
                .iter()
                .map(|column| (column.name.clone(), column.type_name.clone()))
                .collect(),
            table: table.clone(),
            plan,
            collection,
        }
    }

    /// The row shape this change needs when the current plan does not fit it, else `None`.
    fn shape_for(&self, change: &Change<'_>) -> Option<Vec<(String, String)>> {
        let fits = |column: &ColumnValue<'_>, position: Option<usize>| {
            let known = position
                .and_then(|position| self.shape.get(position))
                .filter(|(name, _)| name == column.name.as_ref())
                .or_else(|| {
                    self.shape
                        .iter()
                        .find(|(name, _)| name == column.name.as_ref())
                });
            known.is_some_and(|(_, type_name)| {
                column.type_name.is_empty() || type_name == column.type_name.as_ref()
            })
        };
        let columns_fit = change
            .columns
            .iter()
            .enumerate()
            .all(|(position, column)| fits(column, Some(position)));
        let identity_fits = change.identity.iter().all(|column| fits(column, None));
        let exact = change.action != Action::Insert || change.columns.len() == self.shape.len();
        if columns_fit && identity_fits && exact {
            return None;
        }
        let spelled = |column: &ColumnValue<'_>, before: Option<&String>| {
            let type_name = if column.type_name.is_empty() {
                before.cloned().unwrap_or_default()
            } else {
                column.type_name.to_string()
            };
            (column.name.to_string(), type_name)
        };
        let mut shape: Vec<(String, String)> = if change.action == Action::Insert {
            // An INSERT carries every column the row had: that is the shape.
            change
                .columns
                .iter()
                .map(|column| spelled(column, self.type_of(&column.name)))
                .collect()
        } else {
            // An UPDATE may leave out unchanged TOASTed columns: keep the ones it lacks.
            let mut shape = self.shape.clone();
            for column in &change.columns {
                let entry = spelled(column, self.type_of(&column.name));
                match shape.iter_mut().find(|(name, _)| *name == entry.0) {
                    Some(existing) => *existing = entry,
                    None => shape.push(entry),
                }
            }
            shape
        };
        for column in &change.identity {
            if !shape.iter().any(|(name, _)| name == column.name.as_ref()) {
                shape.push(spelled(column, self.type_of(&column.name)));
            }
        }
        Some(shape)
    }

    fn type_of(&self, column: &str) -> Option<&String> {
        self.shape
            .iter()
            .find(|(name, _)| name == column)
            .map(|(_, type_name)| type_name)
    }

    /// Re-plans for `shape`, with column types resolved by name through `types`.
    async fn reshape(
        &mut self,
        shape: Vec<(String, String)>,
        side: &mut SideConnection,
        numeric_mode: NumericMode,
        lsn: Lsn,
    ) -> Result<(), CdcError> {
        let names: Vec<&str> = shape
            .iter()
            .map(|(_, type_name)| type_name.as_str())
            .collect();
        let resolved = side.resolve_types(&names).await.map_err(|error| {
            if error.is_transient() {
                CdcError::Postgres(error)
            } else {
                CdcError::Unsupported(format!(
                    "a change of {} at {lsn} has column types ({}) that cannot be resolved: {error}\nHINT: a type dropped since the change was made cannot be decoded; restart with a fresh copy of this table",
                    self.plan.table(),
                    names.join(", ")
                ))
            }
        })?;
        let mut table = self.table.clone();
        table.columns = shape
            .iter()
            .zip(resolved)
            .enumerate()
            .map(|(index, ((name, type_name), named))| Column {
                name: name.clone(),
                position: i16::try_from(index + 1).unwrap_or(i16::MAX),
                type_name: type_name.clone(),
                type_oid: named.oid,
                typmod: named.typmod,
                not_null: false,
                resolved: named.resolved,
            })
            .collect();
        self.plan = DocumentPlan::new(&table, numeric_mode, false)
            .map_err(|source| CdcError::Document { lsn, source })?;
        self.table = table;
        self.shape = shape;
        Ok(())
    }
}

/// The streamed tables, found by a change's schema and table name without allocating.
#[derive(Debug, Default)]
pub struct CdcTables {
    by_name: HashMap<String, CdcTable>,
    scratch: String,
}

impl CdcTables {
    /// Adds (or replaces) `schema.table`.
    pub fn insert(&mut self, schema: &str, table: &str, streamed: CdcTable) {
        self.by_name.insert(Self::key(schema, table), streamed);
    }

    /// Every table.
    pub fn values(&self) -> impl Iterator<Item = &CdcTable> {
        self.by_name.values()
    }

    /// How many tables are streamed.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no table is streamed.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    fn key(schema: &str, table: &str) -> String {
        // NUL cannot occur in PostgreSQL identifiers, so the pair maps to one string.
        let mut key = String::with_capacity(schema.len() + table.len() + 1);
        key.push_str(schema);
        key.push('\0');
        key.push_str(table);
        key
    }

    /// The table a row change or TRUNCATE is about, if it is streamed.
    fn get_mut(&mut self, change: &Change<'_>) -> Option<&mut CdcTable> {
        let (schema, table) = (change.schema.as_deref()?, change.table.as_deref()?);
        self.scratch.clear();
        self.scratch.push_str(schema);
        self.scratch.push('\0');
        self.scratch.push_str(table);
        self.by_name.get_mut(self.scratch.as_str())
    }
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
    /// How re-planned tables write `numeric` (as the copy did).
    pub numeric_mode: NumericMode,
    /// Emit `pg_logical_emit_message` this often so a quiet database still shows progress.
    pub heartbeat: Option<Duration>,
    /// The wal2json output format the slot was started with.
    pub format: Wal2JsonFormat,
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
    /// Times the stream was re-established after a transient failure.
    pub reconnects: u64,
}

/// What the stream writes to and reports into.
#[derive(Debug, Clone, Copy)]
pub struct StreamContext<'a> {
    /// GDN, or `None` for the null destination.
    pub client: Option<&'a GdnClient>,
    /// The knobs.
    pub settings: &'a CdcSettings,
    /// Where the watermark is kept.
    pub state_file: &'a StateFile,
    /// Counters.
    pub metrics: &'a Metrics,
}

/// A plain connection beside the replication stream: resolves the types of columns the
/// catalog read at start does not know, and emits heartbeats. Connected on first use,
/// re-connected after a failure.
pub struct SideConnection {
    options: ConnectOptions,
    connection: Option<Connection>,
    /// Type names (as changes spell them) already resolved.
    types: HashMap<String, NamedType>,
}

impl SideConnection {
    /// A side connection to the server `options` name (not connected yet).
    pub fn new(options: ConnectOptions) -> SideConnection {
        SideConnection {
            options,
            connection: None,
            types: HashMap::new(),
        }
    }

    /// Remembers the types of a catalog entry's columns, so the usual shapes need no query.
    pub fn learn(&mut self, table: &Table) {
        for column in &table.columns {
            self.types
                .entry(column.type_name.clone())
                .or_insert_with(|| NamedType {
                    oid: column.type_oid,
                    typmod: column.typmod,
                    resolved: column.resolved.clone(),
                });
        }
    }

    async fn connection(&mut self) -> Result<&mut Connection, PgError> {
        if self.connection.is_none() {
            self.connection = Some(Connection::connect(&self.options).await?);
        }
        self.connection.as_mut().ok_or(PgError::Closed {
            during: "connecting",
        })
    }

    /// The types of `names`, in order, from the cache or the server.
    async fn resolve_types(&mut self, names: &[&str]) -> Result<Vec<NamedType>, PgError> {
        let mut missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|name| !self.types.contains_key(*name))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            let result = resolve_type_names(self.connection().await?, &missing).await;
            if result.as_ref().is_err_and(PgError::is_transient) {
                self.connection = None;
            }
            for (name, named) in missing.iter().zip(result?) {
                self.types.insert((*name).to_owned(), named);
            }
        }
        names
            .iter()
            .map(|name| {
                self.types.get(*name).cloned().ok_or_else(|| {
                    PgError::protocol("resolving type names", format!("{name} was not resolved"))
                })
            })
            .collect()
    }

    /// Writes a non-transactional logical message, which the slot sees as progress.
    async fn heartbeat(&mut self) -> Result<(), PgError> {
        let result = self
            .connection()
            .await?
            .query_one("SELECT pg_logical_emit_message(false, 'pgferry_heartbeat', '')")
            .await;
        if result.is_err() {
            self.connection = None;
        }
        result.map(drop)
    }

    /// Closes the connection, if open.
    pub async fn close(&mut self) {
        if let Some(connection) = self.connection.take() {
            connection.close().await;
        }
    }
}

impl std::fmt::Debug for SideConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SideConnection")
            .field("address", &self.options.address())
            .field("connected", &self.connection.is_some())
            .finish()
    }
}

impl CdcError {
    /// Whether streaming may succeed again after a reconnect (connection loss, server
    /// restart, GDN unreachable), as opposed to errors that need a fix first.
    pub fn is_transient(&self) -> bool {
        match self {
            CdcError::Postgres(error) => error.is_transient(),
            CdcError::Ended => true,
            CdcError::Gdn { source, .. } => source.is_retryable(),
            CdcError::Decode(_)
            | CdcError::Document { .. }
            | CdcError::Refused { .. }
            | CdcError::Unsupported(_)
            | CdcError::Merge(_)
            | CdcError::State(_) => false,
        }
    }
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

/// Streams changes until `settings.stop_at` is reached, `shutdown` fires, or an error;
/// `summary` counts across calls (reconnects), and the watermark is always in `state_file`.
pub async fn stream_changes(
    mut stream: LogicalStream,
    tables: &mut CdcTables,
    side: &mut SideConnection,
    context: StreamContext<'_>,
    state: CdcState,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    summary: &mut CdcSummary,
) -> Result<(), CdcError> {
    let settings = context.settings;
    for table in tables.values() {
        side.learn(&table.table);
    }
    let mut run = Streamer {
        context,
        committed: state.lsn,
        state,
        pending: Pending::default(),
        commit_times: Vec::new(),
        in_transaction: false,
        transaction_rows: 0,
        commit_time: None,
    };
    summary.confirmed = summary.confirmed.max(run.state.lsn);
    let mut decoder = match settings.format {
        Wal2JsonFormat::V1 => Decoder::V1(V1Decoder::new()),
        Wal2JsonFormat::V2 => Decoder::V2,
    };
    // Timers live across iterations: arming one per message would cost more than decoding it.
    let flush_timer = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(flush_timer);
    let mut flush_armed: Option<Instant> = None;
    let mut idle_probe = tokio::time::interval(Duration::from_millis(250));
    idle_probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut messages = 0u64;
    let mut messages_at_tick = 0u64;
    let mut probed = false;
    let mut heartbeat = settings.heartbeat.map(|every| {
        let mut interval = tokio::time::interval_at(Instant::now() + every, every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    loop {
        let flush_due = run.pending.since.map(|since| since + settings.flush_after);
        if flush_due != flush_armed {
            if let Some(due) = flush_due {
                flush_timer.as_mut().reset(due);
            }
            flush_armed = flush_due;
        }
        let caught_up = settings
            .stop_at
            .is_some_and(|stop| !run.in_transaction && run.committed >= stop);
        if caught_up
            || run.pending.documents >= settings.flush_documents
            || run.pending.bytes >= settings.flush_bytes
        {
            run.checkpoint(&mut stream, summary).await?;
            if caught_up {
                stream.stop().await?;
                return Ok(());
            }
        }
        let message = tokio::select! {
            biased;
            _ = async {
                // A dropped sender means nobody can ask for a shutdown: wait forever then.
                if shutdown.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            } => {
                run.checkpoint(&mut stream, summary).await?;
                stream.stop().await?;
                return Ok(());
            }
            _ = &mut flush_timer, if flush_due.is_some() => {
                run.checkpoint(&mut stream, summary).await?;
                continue;
            }
            _ = async { match heartbeat.as_mut() { Some(interval) => interval.tick().await, None => std::future::pending().await } } => {
                if let Err(error) = side.heartbeat().await {
                    tracing::warn!(%error, "could not emit a heartbeat message; streaming goes on");
                }
                continue;
            }
            _ = idle_probe.tick(), if settings.stop_at.is_some() => {
                // Nothing arrived for a tick: ask the server where WAL ends now (once per
                // quiet spell), so a batch run can see it caught up.
                if messages != messages_at_tick {
                    probed = false;
                } else if !probed {
                    stream.send_status(true).await?;
                    probed = true;
                }
                messages_at_tick = messages;
                continue;
            }
            message = stream.next() => message?,
        };
        messages += 1;
        match message {
            None => return Err(CdcError::Ended),
            Some(ReplicationMessage::PrimaryKeepalive(keepalive)) => {
                run.server_end(keepalive.wal_end);
                if run.pending.is_empty()
                    && !run.in_transaction
                    && keepalive.wal_end > run.committed
                {
                    // Nothing of ours is in flight: let the slot move past unrelated WAL.
                    run.committed = keepalive.wal_end;
                    run.confirm(&mut stream, summary).await?;
                }
            }
            Some(ReplicationMessage::XLogData(xlog)) => {
                run.server_end(xlog.wal_end);
                match &mut decoder {
                    Decoder::V2 => {
                        let change = parse_v2(&xlog.data, xlog.wal_start)?;
                        run.apply(&change, xlog.wal_start, tables, side, &mut stream, summary)
                            .await?;
                    }
                    Decoder::V1(v1) => {
                        let mut changes = Vec::new();
                        v1.decode(&xlog.data, xlog.wal_start, &mut changes)?;
                        for change in &changes {
                            run.apply(change, xlog.wal_start, tables, side, &mut stream, summary)
                                .await?;
                        }
                    }
                }
            }
        }
    }
}

/// How XLogData frames are decoded.
enum Decoder {
    /// wal2json format-version 2: one change per frame.
    V2,
    /// wal2json format-version 1: transactions, whole or in chunks.
    V1(V1Decoder),
}

/// The streaming loop's position and pending work.
struct Streamer<'a> {
    context: StreamContext<'a>,
    /// The watermark: confirmed and saved.
    state: CdcState,
    /// The last commit received; becomes the watermark once everything before it is written.
    committed: Lsn,
    pending: Pending,
    /// Commit times (Unix µs) of received transactions with rows, not yet confirmed.
    commit_times: Vec<i64>,
    /// Between a Begin and its Commit.
    in_transaction: bool,
    /// Row changes of the open transaction.
    transaction_rows: u64,
    /// The open transaction's commit time (Unix µs), when reported.
    commit_time: Option<i64>,
}

impl Streamer<'_> {
    /// Applies one decoded change: transaction bounds move the watermark, rows become
    /// pending operations, TRUNCATE empties the collection.
    async fn apply(
        &mut self,
        change: &Change<'_>,
        wal_start: Lsn,
        tables: &mut CdcTables,
        side: &mut SideConnection,
        stream: &mut LogicalStream,
        summary: &mut CdcSummary,
    ) -> Result<(), CdcError> {
        let context = self.context;
        let settings = context.settings;
        match change.action {
            Action::Begin => {
                self.in_transaction = true;
                self.transaction_rows = 0;
                self.commit_time = change
                    .timestamp
                    .as_deref()
                    .and_then(parse_timestamptz_micros);
            }
            Action::Commit => {
                self.in_transaction = false;
                summary.transactions += 1;
                context.metrics.transactions.fetch_add(1, Ordering::Relaxed);
                if self.transaction_rows > 0 {
                    if let Some(micros) = self.commit_time.take().or_else(|| {
                        change
                            .timestamp
                            .as_deref()
                            .and_then(parse_timestamptz_micros)
                    }) {
                        self.commit_times.push(micros);
                    }
                }
                self.committed = self.committed.max(change.next_lsn.unwrap_or(wal_start));
                if self.pending.is_empty() {
                    self.confirm(stream, summary).await?;
                }
            }
            Action::Message => {
                if !self.in_transaction && self.pending.is_empty() {
                    // A non-transactional message (e.g. a heartbeat): every transaction
                    // committed before it was already received and applied.
                    let at = change.lsn.unwrap_or(wal_start);
                    if at > self.committed {
                        self.committed = at;
                        self.confirm(stream, summary).await?;
                    }
                }
            }
            Action::Truncate => {
                let Some(table) = tables.get_mut(change) else {
                    return Ok(());
                };
                let table = table.clone();
                self.flush().await?;
                if let Some(client) = context.client {
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
                self.transaction_rows += 1;
                context.metrics.rows_read.fetch_add(1, Ordering::Relaxed);
                context.metrics.changes.fetch_add(1, Ordering::Relaxed);
                let Some(table) = tables.get_mut(change) else {
                    return Ok(());
                };
                if let Some(shape) = table.shape_for(change) {
                    tracing::info!(table = %table.plan.table(), lsn = %wal_start, columns = ?shape, "the change has another row shape than the plan (columns added, dropped or retyped): re-planning");
                    table
                        .reshape(shape, side, settings.numeric_mode, wal_start)
                        .await?;
                }
                apply_row(change, wal_start, table, &mut self.pending)?;
            }
        }
        Ok(())
    }

    /// Writes everything pending, then confirms the last commit received.
    async fn checkpoint(
        &mut self,
        stream: &mut LogicalStream,
        summary: &mut CdcSummary,
    ) -> Result<(), CdcError> {
        self.flush().await?;
        self.confirm(stream, summary).await
    }

    async fn flush(&mut self) -> Result<(), CdcError> {
        flush(
            &mut self.pending,
            self.context.client,
            self.context.settings,
            &self.state,
            self.context.metrics,
        )
        .await
    }

    /// Records the server's end of WAL for the replication-lag gauge.
    fn server_end(&self, wal_end: Lsn) {
        self.context
            .metrics
            .replication_lag_bytes
            .store(wal_end.bytes_since(self.state.lsn), Ordering::Relaxed);
    }

    /// Moves the watermark to `self.committed` (the caller made sure everything before it is
    /// durable): the state file first, then the server, then the lag metrics.
    async fn confirm(
        &mut self,
        stream: &mut LogicalStream,
        summary: &mut CdcSummary,
    ) -> Result<(), CdcError> {
        let lsn = self.committed;
        if lsn <= self.state.lsn {
            return Ok(());
        }
        // The state file first: if we crash between the two, the slot is behind (a replay), never ahead.
        self.state.lsn = lsn;
        self.context.state_file.save(&self.state)?;
        stream.confirm(lsn);
        stream.send_status(false).await?;
        summary.confirmed = lsn;
        let metrics = self.context.metrics;
        metrics.confirmed_lsn.store(lsn.as_u64(), Ordering::Relaxed);
        let now = unix_micros();
        for committed_at in self.commit_times.drain(..) {
            let lag = u64::try_from(now.saturating_sub(committed_at)).unwrap_or(0);
            metrics.ingest_lag.observe(Duration::from_micros(lag));
        }
        Ok(())
    }
}

fn unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
        })
}

fn apply_row(
    change: &Change<'_>,
    lsn: Lsn,
    table: &CdcTable,
    pending: &mut Pending,
) -> Result<(), CdcError> {
    let document = |source| CdcError::Document { lsn, source };
    let name = table.plan.table();
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
            pending.put(&table.collection, name, key.as_str().to_owned(), Op::Delete)?;
        }
        _ => {
            let columns = image(&change.columns, lsn)?;
            let mut doc = Vec::with_capacity(256);
            let encoded = table
                .plan
                .encode_text(&as_pairs(&columns), &mut doc)
                .map_err(document)?;
            // An INSERT is the whole row (a column it lacks did not exist then); only an
            // UPDATE leaves out unchanged TOASTed columns.
            let complete = encoded.complete || change.action == Action::Insert;
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
                    return pending.put(
                        &table.collection,
                        name,
                        encoded.key.as_str().to_owned(),
                        moved,
                    );
                }
            }
            let op = if complete {
                Op::Upsert(doc)
            } else {
                Op::Patch(doc)
            };
            pending.put(&table.collection, name, encoded.key.as_str().to_owned(), op)?;
        }
    }
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
                            serde_json::from_slice(&old).map_err(|error| CdcError::Gdn {
                                table: ops.table.clone(),
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
        let Some(client) = client else {
            metrics.ingested_documents.fetch_add(
                (upserts.len() + patches.len() + deletes.len()) as u64,
                Ordering::Relaxed,
            );
            continue;
        };
        for chunk in deletes.chunks(settings.batch_size_rows.max(1)) {
            let body =
                serde_json::to_vec(chunk).map_err(|error| CdcError::Merge(error.to_string()))?;
            let keys: Vec<&str> = chunk.iter().map(String::as_str).collect();
            write(
                client,
                settings,
                &collection,
                &ops.table,
                Operation::Delete,
                &keys,
                Bytes::from(body),
                state,
                metrics,
            )
            .await?;
        }
        for (operation, documents) in [(Operation::Upsert, &upserts), (Operation::Patch, &patches)]
        {
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
    operation: Operation,
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
