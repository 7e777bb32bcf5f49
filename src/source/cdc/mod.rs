//! Change data capture: changes from the slot (wal2json or pgoutput) → coalesced row
//! operations → one destination, with the slot confirmed only up to what the destination
//! durably holds.
//!
//! Changes are grouped per collection (or target table) and coalesced per key (last write
//! wins; an insert then a delete is a delete; a partial update — unchanged TOASTed columns are
//! absent — merges into a pending upsert or becomes a PATCH, never a null). Each table's rows
//! are converted by the destination's [`RowPlan`](crate::destination::RowPlan); the loop never
//! asks which destination it writes to.
//!
//! # Acknowledgements
//!
//! A flush hands every pending operation to the destination ([`ChangeSink::apply`]), which
//! returns only once it durably holds them; the stream then reports the last commit received
//! to the pipeline ([`Acknowledge::durable`]), which keeps the acknowledgement rule
//! (`pipeline::ack`: the state file first, then the server) and answers with the position to
//! confirm, which the stream carries to PostgreSQL in a standby status update. A large
//! transaction is flushed in pieces (bounded memory) while the watermark waits for its commit.
//!
//! The flushes the thresholds and the timer call for are launched, not awaited: the stream
//! reads on while one flush is in flight (a `Flight`, at most one, so a key's operations
//! reach the destination in commit order), and when it lands the watermark moves to the last
//! commit received when it left. While it is in flight no confirmation moves the watermark.
//!
//! One LSN's walk: the slot's XLogData → the decoder (`decode::wal2json`, `decode::pgoutput`)
//! → [`RowChange`] → `Pending` (coalesced under its key) → at a flush, [`ChangeSink::apply`]
//! (durable) → [`Acknowledge::durable`] (state file) → the standby status update.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Wal2JsonFormat;
use crate::decode::commit_time::parse_timestamptz_micros;
use crate::decode::pgoutput::ProtocolVersion;
use crate::decode::replication::ReplicationMessage;
use crate::decode::wal2json::{is_skipped_change, parse_v2, Action, Change, Wal2JsonError};
use crate::decode::wal2json_v1::V1Decoder;
use crate::destination::{ChangeError, ChangeSink};
use crate::metrics::Metrics;
use crate::pg::catalog::NumericMode;
use crate::pg::replication::LogicalStream;
use crate::pg::{Lsn, PgError};
use crate::source::state::StateError;
use pgoutput::PgOutputSource;

mod pending;
mod pgoutput;
mod row;
mod side;
mod table;
mod truncate;

pub use row::{Field, FieldData, RowChange};
pub use side::SideConnection;
pub use table::{CdcTable, CdcTables, LeafOf};

use pending::{apply_row, Pending};

/// Why streaming stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CdcError {
    /// The replication connection failed.
    #[error("replication stream: {0}")]
    Postgres(#[from] PgError),
    /// A wal2json message could not be decoded.
    #[error(transparent)]
    Decode(#[from] Wal2JsonError),
    /// The destination failed, or refused a change.
    #[error(transparent)]
    Destination(Box<ChangeError>),
    /// A change arrived for a table pgferry cannot stream.
    #[error("{0}")]
    Unsupported(String),
    /// The stream stops for the pipeline to start again (the reason says why: a table to
    /// copy again is recorded in the state file).
    #[error("the pipeline starts again: {0}")]
    Restart(String),
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
    /// Requests of one flush in flight at once.
    pub max_in_flight: usize,
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
    /// The output plugin the slot was started with, and its format.
    pub decoding: Decoding,
}

/// How the slot's output is decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoding {
    /// wal2json in this format.
    Wal2Json(Wal2JsonFormat),
    /// pgoutput with this protocol version; streamed transactions spool under `spool_dir`.
    PgOutput {
        /// `proto_version`.
        version: ProtocolVersion,
        /// Where in-progress transactions wait for their commit.
        spool_dir: std::path::PathBuf,
    },
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

/// Whether a change of `table` in a transaction whose commit record starts at `commit_lsn` is
/// already in the table's copy: the copy of a table that joined the pipeline holds every
/// transaction that committed before its consistent point (`copied_at`), and none after.
fn in_copy(table: &CdcTable, commit_lsn: Option<Lsn>, at: Lsn) -> Result<bool, CdcError> {
    if table.copying {
        // Its copy runs beside the stream: every change comes again after it (the pipeline
        // holds its watermark meanwhile: `pipeline::join`).
        return Ok(true);
    }
    let Some(copied_at) = table.copied_at else {
        return Ok(false);
    };
    match commit_lsn {
        Some(commit) => Ok(commit < copied_at),
        // Every plugin pgferry asks reports where a transaction commits; without it the
        // change could be older than the copy and undo it.
        None if at < copied_at => Err(CdcError::Unsupported(format!(
            "a change of {} at {at} does not say where its transaction commits, and the table's copy was taken at {copied_at}: pgferry cannot tell whether the copy already holds it\nHINT: use pgoutput or wal2json with include-lsn (pgferry's own options)",
            table.name()
        ))),
        None => Ok(false),
    }
}

impl From<ChangeError> for CdcError {
    fn from(error: ChangeError) -> CdcError {
        CdcError::Destination(Box::new(error))
    }
}

/// What the stream writes to and reports into.
#[derive(Debug, Clone, Copy)]
pub struct StreamContext<'a> {
    /// The one destination (GDN, PostgreSQL or null).
    pub destination: &'a ChangeSink<'a>,
    /// The knobs.
    pub settings: &'a CdcSettings,
    /// Counters.
    pub metrics: &'a Metrics,
}

/// Where the stream's acknowledgements go: the pipeline keeps the watermark (the
/// acknowledgement rule); the stream reports what the destination durably holds and carries
/// the answer to the server.
pub trait Acknowledge: Send {
    /// The watermark: every change before it is durable in the destination and saved.
    fn watermark(&self) -> Lsn;
    /// Whether changes received now may repeat ones already applied (a replay: a partial
    /// update of a row the destination does not hold is expected then).
    fn replaying(&self) -> bool;
    /// The destination durably holds every change of transactions committed up to `written`:
    /// the position to confirm to the server, when the watermark moved (already saved).
    fn durable(&mut self, written: Lsn) -> Result<Option<Lsn>, StateError>;
    /// Records at once that `table` (`schema.table`) must be copied again at the next start.
    fn copy_again(&mut self, table: &str) -> Result<(), StateError>;
}

impl CdcError {
    /// Whether streaming may succeed again after a reconnect (connection loss, server
    /// restart, GDN unreachable), as opposed to errors that need a fix first.
    pub fn is_transient(&self) -> bool {
        match self {
            CdcError::Postgres(error) => error.is_transient(),
            CdcError::Ended => true,
            CdcError::Destination(error) => error.is_transient(),
            CdcError::Decode(_)
            | CdcError::Unsupported(_)
            | CdcError::Restart(_)
            | CdcError::Merge(_)
            | CdcError::State(_) => false,
        }
    }
}

/// Streams changes until `settings.stop_at` is reached, `shutdown` fires, or an error;
/// `summary` counts across calls (reconnects), and `ack` keeps the watermark.
pub async fn stream_changes(
    mut stream: LogicalStream,
    tables: &mut CdcTables,
    side: &mut SideConnection,
    context: StreamContext<'_>,
    ack: &mut dyn Acknowledge,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    summary: &mut CdcSummary,
) -> Result<(), CdcError> {
    let settings = context.settings;
    for table in tables.values() {
        side.learn(table.table());
    }
    let mut run = Streamer {
        context,
        committed: ack.watermark(),
        ack,
        pending: Pending::default(),
        commit_times: Vec::new(),
        in_transaction: false,
        transaction_rows: 0,
        commit_time: None,
        commit_lsn: None,
        in_flight: None,
        unsent: None,
    };
    summary.confirmed = summary.confirmed.max(run.ack.watermark());
    let mut decoder = match &settings.decoding {
        Decoding::Wal2Json(Wal2JsonFormat::V1) => Decoder::V1(V1Decoder::new()),
        Decoding::Wal2Json(Wal2JsonFormat::V2) => Decoder::V2,
        Decoding::PgOutput { version, spool_dir } => {
            Decoder::PgOutput(Box::new(PgOutputSource::new(*version, spool_dir.clone())?))
        }
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
        if caught_up {
            run.checkpoint(&mut stream, summary).await?;
            stream.stop().await?;
            return Ok(());
        }
        if run.pending.documents >= settings.flush_documents
            || run.pending.bytes >= settings.flush_bytes
        {
            // One flush in flight at a time: the next waits for the one before to land.
            if run.in_flight.is_some() {
                run.land(&mut stream, summary).await?;
            }
            run.launch();
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
            written = async { match run.in_flight.as_mut() { Some(flight) => flight.written.as_mut().await, None => std::future::pending().await } } => {
                run.landed(written, &mut stream, summary).await?;
                continue;
            }
            _ = &mut flush_timer, if flush_due.is_some() && run.in_flight.is_none() => {
                run.launch();
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
        // Read before the message is applied: a skipped change's warning precedes its commit.
        for warning in stream.take_warnings() {
            if is_skipped_change(&warning.message) {
                return Err(CdcError::Unsupported(skipped_change_error(
                    &warning.message,
                    run.committed,
                )));
            }
        }
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
                    Decoder::PgOutput(source) => {
                        run.apply_pgoutput(
                            source,
                            &xlog.data,
                            xlog.wal_start,
                            tables,
                            side,
                            &mut stream,
                            summary,
                        )
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

/// The columns of `table` whose NaN and ±Infinity wal2json sends as `null` (it writes
/// `real`, `double precision` and `numeric` values as JSON numbers, which have neither), as
/// `schema.table.column`: a PostgreSQL destination would store NULL for them.
pub fn wal2json_lossy_columns(table: &crate::pg::catalog::Table) -> Vec<String> {
    const FLOAT4: u32 = 700;
    const FLOAT8: u32 = 701;
    const NUMERIC: u32 = 1700;
    table
        .columns
        .iter()
        .filter(|column| matches!(column.type_oid, FLOAT4 | FLOAT8 | NUMERIC))
        .map(|column| {
            format!(
                "{}.{}",
                table.qualified_name(),
                crate::pg::query::quote_identifier(&column.name)
            )
        })
        .collect()
}

/// Why PostgreSQL → PostgreSQL refuses wal2json for `columns`, and the fix.
pub fn wal2json_lossy_error(columns: &[String]) -> String {
    format!(
        "wal2json sends NaN and ±Infinity of real, double precision and numeric columns as null, so a PostgreSQL destination would hold NULL where the source holds them: {}\nHINT: stream through pgoutput, which keeps them: \"plugin\": \"pgoutput\" (or \"auto\", which takes pgoutput for a new slot); a pipeline on an existing wal2json slot drops it first (SELECT pg_drop_replication_slot('<slot>');) and copies again",
        columns.join(", ")
    )
}

/// The error for a change the plugin skipped (its only trace is the server's `warning`): the
/// slot stays before it, and the fix.
pub(crate) fn skipped_change_error(warning: &str, confirmed: Lsn) -> String {
    format!(
        "wal2json skipped a row change after {confirmed}: {warning}. The table has no replica identity (REPLICA IDENTITY NOTHING, or DEFAULT without a primary key), so the WAL holds no old key and the change cannot be applied; nothing past {confirmed} is confirmed\nHINT: give the table an identity for later changes (ALTER TABLE … REPLICA IDENTITY DEFAULT with a primary key, or REPLICA IDENTITY FULL); the changes already written cannot be decoded by wal2json: copy the table again (delete the state file and drop the slot, then run), or stream through pgoutput, with which PostgreSQL refuses such writes instead of losing them"
    )
}

/// How XLogData frames are decoded.
enum Decoder {
    /// wal2json format-version 2: one change per frame.
    V2,
    /// wal2json format-version 1: transactions, whole or in chunks.
    V1(V1Decoder),
    /// pgoutput.
    PgOutput(Box<PgOutputSource>),
}

/// The streaming loop's position and pending work.
struct Streamer<'a, 'b> {
    context: StreamContext<'a>,
    /// The pipeline's watermark.
    ack: &'b mut dyn Acknowledge,
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
    /// Where the open transaction's commit record starts, when reported: a table that joined
    /// the pipeline takes only changes of transactions committing at or after its copy.
    commit_lsn: Option<Lsn>,
    /// The flush on its way to the destination while the stream reads on (one at a time, so
    /// a key's operations still reach the destination in commit order).
    in_flight: Option<Flight<'a>>,
    /// A position the watermark reached while no status update could be sent: the next
    /// confirmation carries it to the server.
    unsent: Option<Lsn>,
}

/// A flush handed to the destination whose answer the stream does not wait for.
struct Flight<'a> {
    /// Resolves once the destination durably holds every operation of the flush.
    written:
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ChangeError>> + Send + 'a>>,
    /// Every transaction committed up to here is in this flush or already durable.
    upto: Lsn,
    /// Commit times (Unix µs) of the transactions this flush completes.
    commit_times: Vec<i64>,
}

impl Streamer<'_, '_> {
    /// Applies one wal2json change: transaction bounds move the watermark, rows become
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
        match change.action {
            Action::Begin => self.begin(
                change
                    .timestamp
                    .as_deref()
                    .and_then(parse_timestamptz_micros),
                // Format 2 gives the commit record's start; format 1 only its end.
                change.lsn.or_else(|| {
                    change
                        .next_lsn
                        .map(|end| Lsn::from_u64(end.as_u64().saturating_sub(1)))
                }),
            ),
            Action::Commit => {
                // The Begin's time usually stands already: parse the Commit's only without it.
                let time = if self.commit_time.is_none() {
                    change
                        .timestamp
                        .as_deref()
                        .and_then(parse_timestamptz_micros)
                } else {
                    None
                };
                self.commit(change.next_lsn.unwrap_or(wal_start), time, stream, summary)
                    .await?;
            }
            Action::Message => {
                self.message(change.lsn.unwrap_or(wal_start), stream, summary)
                    .await?;
            }
            Action::Truncate => {
                if let (Some(schema), Some(table)) =
                    (change.schema.as_deref(), change.table.as_deref())
                {
                    self.truncate(tables, &[(schema, table)], side).await?;
                }
            }
            Action::Insert | Action::Update | Action::Delete => {
                if let Some(row) = RowChange::from_wal2json(change, wal_start)? {
                    self.row(&row, wal_start, tables, side, summary).await?;
                }
            }
        }
        Ok(())
    }

    /// A transaction begins (its commit time in Unix µs, when known).
    fn begin(&mut self, commit_time: Option<i64>, commit_lsn: Option<Lsn>) {
        self.in_transaction = true;
        self.transaction_rows = 0;
        self.commit_time = commit_time;
        self.commit_lsn = commit_lsn;
    }

    /// The open transaction committed; `end` is the position after its commit record.
    async fn commit(
        &mut self,
        end: Lsn,
        commit_time: Option<i64>,
        stream: &mut LogicalStream,
        summary: &mut CdcSummary,
    ) -> Result<(), CdcError> {
        self.in_transaction = false;
        summary.transactions += 1;
        self.context
            .metrics
            .transactions
            .fetch_add(1, Ordering::Relaxed);
        if self.transaction_rows > 0 {
            if let Some(micros) = self.commit_time.take().or(commit_time) {
                self.commit_times.push(micros);
            }
        }
        self.committed = self.committed.max(end);
        if self.pending.is_empty() {
            self.confirm(stream, summary).await?;
        }
        Ok(())
    }

    /// A non-transactional logical message at `at` (e.g. a heartbeat): outside a transaction
    /// with nothing pending, every transaction committed before it was received and applied.
    async fn message(
        &mut self,
        at: Lsn,
        stream: &mut LogicalStream,
        summary: &mut CdcSummary,
    ) -> Result<(), CdcError> {
        if !self.in_transaction && self.pending.is_empty() && at > self.committed {
            self.committed = at;
            self.confirm(stream, summary).await?;
        }
        Ok(())
    }

    /// Whether the open transaction's changes of `table` are already in its copy (a table that
    /// joined the pipeline: its copy holds every transaction committed before `copied_at`).
    pub(super) fn in_copy_now(&self, table: &CdcTable, at: Lsn) -> Result<bool, CdcError> {
        in_copy(table, self.commit_lsn, at)
    }

    /// One INSERT, UPDATE or DELETE: re-plans the table if the row's shape changed, then
    /// coalesces it into the pending operations.
    async fn row(
        &mut self,
        row: &RowChange<'_>,
        wal_start: Lsn,
        tables: &mut CdcTables,
        side: &mut SideConnection,
        summary: &mut CdcSummary,
    ) -> Result<(), CdcError> {
        let metrics = self.context.metrics;
        summary.changes += 1;
        self.transaction_rows += 1;
        metrics.rows_read.fetch_add(1, Ordering::Relaxed);
        metrics.changes.fetch_add(1, Ordering::Relaxed);
        let Some(table) = tables.get_mut(row.schema, row.table) else {
            return Ok(());
        };
        if in_copy(table, self.commit_lsn, wal_start)? {
            return Ok(());
        }
        if let Some(shape) = table.shape_for(row) {
            tracing::info!(table = %table.name(), lsn = %wal_start, columns = ?shape, "the change has another row shape than the plan (columns added, dropped or retyped): re-planning");
            let added: Vec<String> = shape
                .iter()
                .map(|(name, _, _)| name.clone())
                .filter(|name| !table.shape().iter().any(|(known, _)| known == name))
                .collect();
            if !added.is_empty() {
                let with_default = side
                    .columns_with_missing_values(table.table().oid, &added)
                    .await?;
                if !with_default.is_empty() {
                    // Older rows hold the default without a WAL record of it: copy the table
                    // again (it joins anew), its later changes streamed from that copy on.
                    let name = table.name().to_owned();
                    tracing::info!(table = %name, columns = ?with_default, lsn = %wal_start, "columns added with a default: older rows hold it without a change in the WAL, so the table is copied again");
                    self.ack.copy_again(&name)?;
                    return Err(CdcError::Restart(format!(
                        "{name} gained column(s) {} with a default, which older rows hold without a change in the WAL: copying it again",
                        with_default.join(", ")
                    )));
                }
            }
            table
                .reshape(
                    shape,
                    &row.keys,
                    side,
                    self.context.settings.numeric_mode,
                    wal_start,
                )
                .await?;
            let destination = self.context.destination;
            if destination.keeps_column_types() {
                if let Decoding::Wal2Json(_) = &self.context.settings.decoding {
                    let lossy = wal2json_lossy_columns(table.table());
                    if !lossy.is_empty() {
                        return Err(CdcError::Unsupported(wal2json_lossy_error(&lossy)));
                    }
                }
                // Rows pending in the old shape are written first, then the destination
                // follows.
                let id = std::sync::Arc::clone(&table.collection);
                let shape = table.shape().to_vec();
                self.flush().await?;
                destination.reshape(&id, &shape).await?;
            }
        }
        apply_row(row, wal_start, table, &mut self.pending)
    }

    /// Writes what is pending once it reaches the flush thresholds (inside a large
    /// transaction, so memory stays bounded; the watermark waits for the commit).
    async fn flush_if_full(&mut self) -> Result<(), CdcError> {
        let settings = self.context.settings;
        if self.pending.documents >= settings.flush_documents
            || self.pending.bytes >= settings.flush_bytes
        {
            self.flush().await?;
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

    /// Hands everything pending to the destination as one flush; returns once the
    /// destination durably holds it and the flush in flight before it (the watermark is the
    /// caller's to move).
    async fn flush(&mut self) -> Result<(), CdcError> {
        if let Some(Flight {
            written,
            upto,
            commit_times,
        }) = self.in_flight.take()
        {
            written.await?;
            self.settle(upto, commit_times)?;
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let changes = self.pending.take_changes();
        // Changes older than the latest copy are replayed: a row may not be there yet.
        let replaying = self.ack.replaying();
        self.context
            .destination
            .apply(changes, replaying, self.context.metrics)
            .await?;
        Ok(())
    }

    /// Hands everything pending to the destination without waiting for it: the stream reads
    /// on, and the watermark moves to the last commit received now once it lands. Only when
    /// nothing is in flight.
    fn launch(&mut self) {
        if self.pending.is_empty() || self.in_flight.is_some() {
            return;
        }
        let changes = self.pending.take_changes();
        let replaying = self.ack.replaying();
        let destination = self.context.destination;
        let metrics = self.context.metrics;
        self.in_flight = Some(Flight {
            written: Box::pin(async move { destination.apply(changes, replaying, metrics).await }),
            upto: self.committed,
            commit_times: std::mem::take(&mut self.commit_times),
        });
    }

    /// Waits for the flush in flight and moves the watermark to what it completes.
    async fn land(
        &mut self,
        stream: &mut LogicalStream,
        summary: &mut CdcSummary,
    ) -> Result<(), CdcError> {
        let written = match self.in_flight.as_mut() {
            Some(flight) => flight.written.as_mut().await,
            None => return Ok(()),
        };
        self.landed(written, stream, summary).await
    }

    /// The flush in flight answered `written`: on success the watermark moves to what it
    /// completes and the server hears it.
    async fn landed(
        &mut self,
        written: Result<(), ChangeError>,
        stream: &mut LogicalStream,
        summary: &mut CdcSummary,
    ) -> Result<(), CdcError> {
        let flight = self.in_flight.take();
        written?;
        if let Some(flight) = flight {
            self.settle(flight.upto, flight.commit_times)?;
        }
        self.send_confirmation(stream, summary).await
    }

    /// A flight that left at `upto` landed: the watermark moves there or, with nothing
    /// pending since, to the last commit received (transactions committed meanwhile without
    /// rows of ours are done too), in one save.
    fn settle(&mut self, upto: Lsn, mut commit_times: Vec<i64>) -> Result<(), CdcError> {
        if self.pending.is_empty() {
            commit_times.append(&mut self.commit_times);
            self.moved(self.committed, commit_times)
        } else {
            self.moved(upto, commit_times)
        }
    }

    /// Everything of transactions committed up to `upto` is durable: the pipeline moves (and
    /// saves) its watermark; the position for the server waits for the next status update.
    fn moved(&mut self, upto: Lsn, commit_times: Vec<i64>) -> Result<(), CdcError> {
        if let Some(lsn) = self.ack.durable(upto)? {
            self.unsent = Some(self.unsent.map_or(lsn, |unsent| unsent.max(lsn)));
        }
        let metrics = self.context.metrics;
        metrics
            .confirmed_lsn
            .store(self.ack.watermark().as_u64(), Ordering::Relaxed);
        let now = unix_micros();
        for committed_at in commit_times {
            let lag = u64::try_from(now.saturating_sub(committed_at)).unwrap_or(0);
            metrics.ingest_lag.observe(Duration::from_micros(lag));
        }
        Ok(())
    }

    /// Sends the server the position the watermark reached, if it has not heard it yet.
    async fn send_confirmation(
        &mut self,
        stream: &mut LogicalStream,
        summary: &mut CdcSummary,
    ) -> Result<(), CdcError> {
        if let Some(lsn) = self.unsent.take() {
            stream.confirm(lsn);
            stream.send_status(false).await?;
            summary.confirmed = lsn;
        }
        Ok(())
    }

    /// Records the server's end of WAL for the replication-lag gauge.
    fn server_end(&self, wal_end: Lsn) {
        self.context
            .metrics
            .replication_lag_bytes
            .store(wal_end.bytes_since(self.ack.watermark()), Ordering::Relaxed);
    }

    /// Everything received up to `self.committed` is durable in the destination: the pipeline
    /// moves its watermark (and saves it), the server hears the position it answers with, and
    /// the commit-to-destination lag of those transactions is observed.
    ///
    /// While a flush is in flight nothing more is durable than what it will complete: the
    /// watermark then waits for it to land.
    async fn confirm(
        &mut self,
        stream: &mut LogicalStream,
        summary: &mut CdcSummary,
    ) -> Result<(), CdcError> {
        if self.in_flight.is_none() {
            let commit_times = std::mem::take(&mut self.commit_times);
            self.moved(self.committed, commit_times)?;
        }
        self.send_confirmation(stream, summary).await
    }
}

fn unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
        })
}
