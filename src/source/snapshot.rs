//! Consistent parallel table copy: every selected table read under one exported snapshot, in
//! ctid-range chunks by several workers at once, largest tables first.
//!
//! The coordinator opens a `REPEATABLE READ READ ONLY` transaction and exports its snapshot
//! (`pg_export_snapshot()`); each worker adopts it with `SET TRANSACTION SNAPSHOT`, so all of
//! them see the database as of one instant. A chunk is `COPY (SELECT … WHERE ctid >= '(a,0)'
//! AND ctid < '(b,0)') TO STDOUT (FORMAT binary)`: rows stream through the binary decoder
//! into document batches and on to the writer without the table ever being held in memory.
//! Page counts are read inside the snapshot, so every row the snapshot can see lies in a
//! planned chunk; the last chunk of a table is open-ended all the same.
//!
//! A worker reads its next chunks while the writes of the ones before are still in flight (a
//! GDN far away answers a chunk's last requests a round trip later; waiting for them before
//! reading on emptied the link at every chunk boundary, and cost a round trip per small
//! table) and records a chunk in the ledger only once its writes are durable.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::Mutex;

use crate::decode::copy_binary::CopyBinaryError;
use crate::pg::catalog::Table;
use crate::pg::query::quote_literal;
use crate::pg::{ConnectOptions, Connection, PgError};
use crate::progress::CopyProgress;
use crate::source::state::{ChunkLedger, StateError};

/// Smallest chunk, in 8 KiB pages (8 MiB): fewer round trips for small tables.
const MIN_PAGES_PER_CHUNK: u64 = 1024;
/// Largest chunk, in pages (256 MiB): bounds the work redone after an interruption.
const MAX_PAGES_PER_CHUNK: u64 = 32 * 1024;

/// Why the copy failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// PostgreSQL failed (with the table when one was being read).
    #[error("{context}: {source}")]
    Postgres {
        /// What was being done.
        context: String,
        /// The error.
        source: PgError,
    },
    /// The COPY stream could not be decoded.
    #[error("reading {table}: {source}")]
    Copy {
        /// `schema.table`.
        table: String,
        /// The error.
        source: CopyBinaryError,
    },
    /// A copy worker ended abnormally.
    #[error("a write task failed: {0}")]
    Task(String),
    /// Copy progress could not be recorded.
    #[error(transparent)]
    State(StateError),
    /// The destination failed (its own error, as it words it).
    #[error(transparent)]
    Destination(DestinationError),
}

/// What the copy needs to know of a destination's error.
pub trait SinkError: std::error::Error + Send + Sync + 'static {
    /// Whether copying again may succeed without a fix (the destination unreachable or
    /// restarting).
    fn is_transient(&self) -> bool;
}

/// A destination's error, boxed: the source names no destination's types.
#[derive(Debug)]
pub struct DestinationError(Box<dyn SinkError>);

impl DestinationError {
    /// Whether copying again may succeed without a fix.
    pub fn is_transient(&self) -> bool {
        self.0.is_transient()
    }
}

impl std::fmt::Display for DestinationError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(formatter)
    }
}

impl std::error::Error for DestinationError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl<E: SinkError> From<E> for SnapshotError {
    fn from(error: E) -> SnapshotError {
        SnapshotError::Destination(DestinationError(Box::new(error)))
    }
}

/// Where copied chunks go: GDN documents through the writer (`destination::gdn::copy`), or
/// rows into another database (`destination::postgres::copy`).
pub trait ChunkSink: Send + Sync + 'static {
    /// What each copy worker keeps between chunks (e.g. its connection to the target).
    type Worker: Send;

    /// Settings the source connection of every worker runs before its snapshot transaction.
    fn source_session(&self) -> Option<&str> {
        None
    }

    /// Prepares worker `worker`.
    fn open_worker(
        &self,
        worker: usize,
    ) -> impl std::future::Future<Output = Result<Self::Worker, SnapshotError>> + Send;

    /// A chunk read in full whose writes may still be on their way (GDN requests in flight):
    /// the worker reads the next chunks meanwhile, so a long link never drains between chunks.
    type Pending: Send + 'static;

    /// Reads `chunk` of `task` (the copy's task number `chunk.table`) from `source` (inside
    /// the snapshot) and hands every row to the destination; counts its rows into `progress`.
    /// The chunk is durable once [`ChunkSink::chunk_durable`] of what this returns is `Ok`.
    fn copy_chunk<'a>(
        &'a self,
        worker: &'a mut Self::Worker,
        source: &'a mut Connection,
        task: &'a CopyTask,
        chunk: &'a Chunk,
        progress: &'a CopyProgress,
    ) -> impl std::future::Future<Output = Result<Self::Pending, SnapshotError>> + Send + 'a;

    /// Waits until every write of a chunk [`ChunkSink::copy_chunk`] read is durable.
    fn chunk_durable(
        &self,
        pending: Self::Pending,
    ) -> impl std::future::Future<Output = Result<(), SnapshotError>> + Send + '_;

    /// Ends worker `worker` after its last chunk.
    fn close_worker(&self, worker: Self::Worker) -> impl std::future::Future<Output = ()> + Send;
}

/// A PostgreSQL failure while `context`.
pub(crate) fn pg(context: impl Into<String>) -> impl FnOnce(PgError) -> SnapshotError {
    let context = context.into();
    move |source| SnapshotError::Postgres { context, source }
}

/// One unit of copy work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Index into the table list.
    pub table: usize,
    /// First page (inclusive).
    pub start_page: u64,
    /// Page after the last one; `None` = to the end of the table.
    pub end_page: Option<u64>,
}

/// Pages per chunk for a table of `pages` copied by `workers`: about four chunks per worker,
/// within the bounds above.
pub fn pages_per_chunk(pages: u64, workers: usize) -> u64 {
    (pages / (workers.max(1) as u64 * 4)).clamp(MIN_PAGES_PER_CHUNK, MAX_PAGES_PER_CHUNK)
}

/// Splits `pages` into ranges of `per_chunk`; the last range is open-ended.
pub fn plan_ranges(pages: u64, per_chunk: u64) -> Vec<(u64, Option<u64>)> {
    let per_chunk = per_chunk.max(1);
    let mut ranges = Vec::new();
    let mut start = 0;
    loop {
        let end = start + per_chunk;
        if end >= pages {
            ranges.push((start, None));
            return ranges;
        }
        ranges.push((start, Some(end)));
        start = end;
    }
}

/// The `WHERE` clause of a chunk (`None` for a whole-table chunk).
pub fn ctid_predicate(start_page: u64, end_page: Option<u64>) -> Option<String> {
    match (start_page, end_page) {
        (0, None) => None,
        (start, None) => Some(format!("ctid >= '({start},0)'::tid")),
        (start, Some(end)) => Some(format!(
            "ctid >= '({start},0)'::tid AND ctid < '({end},0)'::tid"
        )),
    }
}

/// One table to copy (where its rows go is the sink's, by the task's number).
#[derive(Debug, Clone)]
pub struct CopyTask {
    /// The table from the catalog.
    pub table: Table,
    /// `schema.table`: its name in progress, the copy's summary and the chunk ledger.
    pub name: Arc<str>,
    /// Only the rows this SQL condition holds for (LOG_BASED through pgoutput: the
    /// publications' row filter, so the copy holds what the stream keeps up to date).
    pub row_filter: Option<String>,
}

impl CopyTask {
    /// The `WHERE` clause of a chunk's query (empty when every row of the chunk is read):
    /// the row filter, then the chunk's ctid range.
    pub fn chunk_condition(&self, chunk: &Chunk) -> String {
        let conditions: Vec<String> = self
            .row_filter
            .iter()
            .map(|filter| format!("({filter})"))
            .chain(ctid_predicate(chunk.start_page, chunk.end_page))
            .collect();
        if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        }
    }
}

/// Batch limits for the copy.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Documents per batch.
    pub rows: usize,
    /// Bytes per batch.
    pub bytes: usize,
}

/// Rows copied per table, for progress and the summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableCopied {
    /// `schema.table`.
    pub table: String,
    /// Rows read and handed to the writer.
    pub rows: u64,
    /// From the start of its first chunk to the end of its last (chunks overlap across workers).
    pub elapsed: Duration,
}

/// What the copy did.
#[derive(Debug, Clone, Default)]
pub struct CopySummary {
    /// Per table, in task order.
    pub tables: Vec<TableCopied>,
    /// Wall time.
    pub elapsed: Duration,
}

/// How a copy runs: workers, batch limits, snapshot, progress and (resumable copies) the ledger.
#[derive(Debug)]
pub struct CopyPlan {
    /// Connections copying chunks at once.
    pub workers: usize,
    /// Batch limits.
    pub limits: BatchLimits,
    /// An exported snapshot held by the caller, or `None` to export one here.
    pub snapshot: Option<String>,
    /// Rows per table, for progress and the summary.
    pub progress: Arc<CopyProgress>,
    /// Chunk plans and completions to record (LOG_BASED), or `None`.
    pub ledger: Option<Arc<ChunkLedger>>,
}

/// Copies `tasks` under one snapshot with `plan.workers` connections into `sink`.
///
/// With `snapshot = Some(name)` the caller already holds an exported snapshot (e.g. from
/// `CREATE_REPLICATION_SLOT … (SNAPSHOT 'export')`) and keeps it alive until this returns;
/// otherwise a coordinator transaction exports one for the duration of the copy.
///
/// Rows are counted into `progress` (one entry per task, in task order) as batches are made.
pub async fn copy_tables_into<S: ChunkSink>(
    options: &ConnectOptions,
    tasks: Vec<CopyTask>,
    sink: Arc<S>,
    plan: CopyPlan,
) -> Result<CopySummary, SnapshotError> {
    let CopyPlan {
        workers,
        limits: _,
        snapshot,
        progress,
        ledger,
    } = plan;
    let started = Instant::now();
    let mut coordinator = Connection::connect(options)
        .await
        .map_err(pg("connecting the snapshot coordinator"))?;
    let snapshot = match snapshot {
        Some(name) => {
            coordinator
                .execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(pg("starting the snapshot transaction"))?;
            coordinator
                .execute(&format!(
                    "SET TRANSACTION SNAPSHOT {}",
                    quote_literal(&name)
                ))
                .await
                .map_err(pg("adopting the replication slot's snapshot"))?;
            name
        }
        None => {
            coordinator
                .execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(pg("starting the snapshot transaction"))?;
            coordinator
                .query_one("SELECT pg_export_snapshot()")
                .await
                .map_err(pg("exporting a snapshot"))?
                .and_then(|row| row.get(0).map(str::to_owned))
                .ok_or_else(|| SnapshotError::Postgres {
                    context: "exporting a snapshot".into(),
                    source: PgError::protocol("exporting a snapshot", "no snapshot name returned"),
                })?
        }
    };

    // Plan chunks inside the snapshot, largest tables first.
    let mut order: Vec<(usize, u64)> = Vec::with_capacity(tasks.len());
    for (index, task) in tasks.iter().enumerate() {
        let pages = if task.table.kind.is_view() {
            0
        } else {
            let row = coordinator
                .query_one(&format!(
                    "SELECT pg_relation_size({}) / current_setting('block_size')::bigint",
                    task.table.oid
                ))
                .await
                .map_err(pg(format!("sizing {}", task.table.qualified_name())))?;
            row.and_then(|row| row.get(0).and_then(|pages| pages.parse().ok()))
                .unwrap_or(0)
        };
        order.push((index, pages));
    }
    order.sort_by_key(|(_, pages)| std::cmp::Reverse(*pages));
    let mut chunks = VecDeque::new();
    for (index, pages) in order {
        let name = tasks[index].name.to_string();
        let proposed = if tasks[index].table.kind.is_view() {
            u64::MAX
        } else {
            pages_per_chunk(pages, workers)
        };
        // A resumed copy cuts the same chunks as before and skips the ones already done.
        let (per_chunk, done) = match &ledger {
            Some(ledger) => ledger.plan(&name, proposed),
            None => (proposed, Default::default()),
        };
        let ranges = if tasks[index].table.kind.is_view() {
            vec![(0, None)]
        } else {
            plan_ranges(pages, per_chunk)
        };
        for (start_page, end_page) in ranges {
            if done.contains(&start_page) {
                continue;
            }
            chunks.push_back(Chunk {
                table: index,
                start_page,
                end_page,
            });
        }
    }

    let queue = Arc::new(Mutex::new(chunks));
    let tasks = Arc::new(tasks);
    let spans: Arc<Spans> = Arc::new(std::sync::Mutex::new(vec![None; tasks.len()]));
    let mut handles = Vec::new();
    for worker in 0..workers.max(1) {
        let options = options.clone();
        let queue = Arc::clone(&queue);
        let tasks = Arc::clone(&tasks);
        let progress = Arc::clone(&progress);
        let spans = Arc::clone(&spans);
        let ledger = ledger.clone();
        let sink = Arc::clone(&sink);
        let snapshot = snapshot.clone();
        handles.push(tokio::spawn(async move {
            let shared = Shared {
                queue: &queue,
                tasks: &tasks,
                progress: &progress,
                spans: &spans,
                ledger: ledger.as_deref(),
            };
            copy_worker(worker, &options, &snapshot, shared, sink.as_ref()).await
        }));
    }
    let mut first_error = None;
    for handle in handles {
        let result = match handle.await {
            Ok(result) => result,
            Err(error) => Err(SnapshotError::Task(error.to_string())),
        };
        if let Err(error) = result {
            // Stop the other workers early: they take no new chunk once the queue is empty.
            queue.lock().await.clear();
            first_error.get_or_insert(error);
        }
    }
    // The exporting transaction ends last, after every worker adopted and used its snapshot.
    let _ = coordinator.execute("COMMIT").await;
    coordinator.close().await;
    if let Some(error) = first_error {
        return Err(error);
    }
    let spans = spans.lock().map(|spans| spans.clone()).unwrap_or_default();
    Ok(CopySummary {
        tables: tasks
            .iter()
            .enumerate()
            .map(|(index, task)| TableCopied {
                table: task.name.to_string(),
                rows: progress.rows(index),
                elapsed: spans
                    .get(index)
                    .copied()
                    .flatten()
                    .map_or(Duration::ZERO, |(start, end)| end - start),
            })
            .collect(),
        elapsed: started.elapsed(),
    })
}

/// What the workers share: the chunk queue, the tasks, and per-table counters.
#[derive(Clone, Copy)]
struct Shared<'a> {
    queue: &'a Mutex<VecDeque<Chunk>>,
    tasks: &'a [CopyTask],
    progress: &'a CopyProgress,
    spans: &'a Spans,
    ledger: Option<&'a ChunkLedger>,
}

/// Per table, the first chunk's start and the last chunk's end.
type Spans = std::sync::Mutex<Vec<Option<(Instant, Instant)>>>;

async fn copy_worker<S: ChunkSink>(
    worker: usize,
    options: &ConnectOptions,
    snapshot: &str,
    shared: Shared<'_>,
    sink: &S,
) -> Result<(), SnapshotError> {
    let mut connection = Connection::connect(options)
        .await
        .map_err(pg(format!("connecting copy worker {worker}")))?;
    if let Some(session) = sink.source_session() {
        connection
            .execute(session)
            .await
            .map_err(pg("setting up a copy session"))?;
    }
    let mut state = sink.open_worker(worker).await?;
    connection
        .execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(pg("starting a copy transaction"))?;
    connection
        .execute(&format!(
            "SET TRANSACTION SNAPSHOT {}",
            quote_literal(snapshot)
        ))
        .await
        .map_err(pg("adopting the exported snapshot"))?;
    // Chunks read whose writes are still in flight: the worker reads on meanwhile (the
    // writer's bound on batches held keeps memory flat) and records each once durable.
    let mut writing = FuturesUnordered::new();
    loop {
        let Some(chunk) = shared.queue.lock().await.pop_front() else {
            break;
        };
        let task = &shared.tasks[chunk.table];
        let started = Instant::now();
        let pending = {
            let reading =
                sink.copy_chunk(&mut state, &mut connection, task, &chunk, shared.progress);
            tokio::pin!(reading);
            loop {
                tokio::select! {
                    pending = &mut reading => break pending?,
                    // A failed write ends the worker at once, not after the chunk being read.
                    Some(durable) = writing.next(), if !writing.is_empty() => durable?,
                }
            }
        };
        writing.push(finish_chunk(sink, shared, chunk, started, pending));
    }
    while let Some(durable) = writing.next().await {
        durable?;
    }
    let _ = connection.execute("COMMIT").await;
    connection.close().await;
    sink.close_worker(state).await;
    Ok(())
}

/// Waits until every write of `chunk` is durable, then records it in the ledger and the
/// table's span.
async fn finish_chunk<S: ChunkSink>(
    sink: &S,
    shared: Shared<'_>,
    chunk: Chunk,
    started: Instant,
    pending: S::Pending,
) -> Result<(), SnapshotError> {
    sink.chunk_durable(pending).await?;
    // Recorded only now that every write of the chunk is durable: a resumed copy skips it.
    if let Some(ledger) = shared.ledger {
        ledger
            .chunk_done(&shared.tasks[chunk.table].name, chunk.start_page)
            .map_err(SnapshotError::State)?;
    }
    if let Ok(mut spans) = shared.spans.lock() {
        let span = spans[chunk.table].get_or_insert((started, started));
        span.0 = span.0.min(started);
        span.1 = span.1.max(Instant::now());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_page_and_end_open() {
        assert_eq!(plan_ranges(0, 10), vec![(0, None)]);
        assert_eq!(plan_ranges(10, 10), vec![(0, None)]);
        assert_eq!(
            plan_ranges(25, 10),
            vec![(0, Some(10)), (10, Some(20)), (20, None)]
        );
    }

    #[test]
    fn chunk_sizes_stay_within_bounds() {
        assert_eq!(pages_per_chunk(10, 4), MIN_PAGES_PER_CHUNK);
        assert_eq!(pages_per_chunk(u64::MAX / 2, 1), MAX_PAGES_PER_CHUNK);
        assert_eq!(pages_per_chunk(160_000, 4), 10_000);
    }

    #[test]
    fn predicates_use_tid_ranges() {
        assert_eq!(ctid_predicate(0, None), None);
        assert_eq!(
            ctid_predicate(10, Some(20)).unwrap(),
            "ctid >= '(10,0)'::tid AND ctid < '(20,0)'::tid"
        );
        assert_eq!(ctid_predicate(20, None).unwrap(), "ctid >= '(20,0)'::tid");
    }
}
