//! The copy into GDN: each chunk's COPY rows are decoded straight into document batches for
//! the writer (or the null destination's), and a chunk is done once every batch is durable;
//! the worker reads the next chunks while the last batches of one are still in flight.

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::decode::copy_binary::{CopyBinaryDecoder, CopyBinaryError};
use crate::destination::gdn::document::{DocumentError, DocumentPlan};
use crate::gdn::writer::{BatchTarget, WriteError, Writer};
use crate::pg::{ConnectOptions, Connection};
use crate::progress::CopyProgress;
use crate::source::snapshot::{
    copy_tables_into, pg, BatchLimits, Chunk, ChunkSink, CopyPlan, CopySummary, CopyTask,
    SinkError, SnapshotError,
};

/// Where one copied table's rows go in GDN, and how they become documents.
#[derive(Debug, Clone)]
pub struct DocumentTable {
    /// How rows become documents.
    pub plan: DocumentPlan,
    /// Where they are written.
    pub target: BatchTarget,
}

/// Chunks become document batches for the GDN writer (or the null destination).
#[derive(Debug, Clone)]
pub struct DocumentSink {
    /// The writer.
    pub writer: Writer,
    /// Batch limits.
    pub limits: BatchLimits,
    /// Per copy task, in task order.
    pub tables: Vec<DocumentTable>,
}

impl SinkError for DocumentError {
    fn is_transient(&self) -> bool {
        false
    }
}

impl SinkError for WriteError {
    fn is_transient(&self) -> bool {
        match self {
            WriteError::Request { source, .. } => source.is_retryable(),
            _ => false,
        }
    }
}

impl ChunkSink for DocumentSink {
    type Worker = ();
    type Pending = Vec<JoinHandle<Result<(), WriteError>>>;

    async fn open_worker(&self, _worker: usize) -> Result<(), SnapshotError> {
        Ok(())
    }

    async fn copy_chunk<'a>(
        &'a self,
        _worker: &'a mut (),
        source: &'a mut Connection,
        task: &'a CopyTask,
        chunk: &'a Chunk,
        progress: &'a CopyProgress,
    ) -> Result<Self::Pending, SnapshotError> {
        let Some(table) = self.tables.get(chunk.table) else {
            return Err(SnapshotError::Task(format!(
                "no GDN plan was prepared for {} (a bug in pgferry)",
                task.name
            )));
        };
        copy_chunk(
            source,
            task,
            table,
            chunk,
            self.limits,
            &self.writer,
            progress,
        )
        .await
    }

    async fn chunk_durable(&self, pending: Self::Pending) -> Result<(), SnapshotError> {
        for handle in pending {
            handle
                .await
                .map_err(|error| WriteError::Task(error.to_string()))??;
        }
        Ok(())
    }

    async fn close_worker(&self, _worker: ()) {}
}

/// Copies `tasks` under one snapshot with `plan.workers` connections into `writer`, each
/// task's rows as its `tables` entry says.
pub async fn copy_tables(
    options: &ConnectOptions,
    tasks: Vec<CopyTask>,
    tables: Vec<DocumentTable>,
    writer: &Writer,
    plan: CopyPlan,
) -> Result<CopySummary, SnapshotError> {
    let sink = Arc::new(DocumentSink {
        writer: writer.clone(),
        limits: plan.limits,
        tables,
    });
    copy_tables_into(options, tasks, sink, plan).await
}

/// A row that could not be decoded or encoded.
enum RowError {
    Copy(CopyBinaryError),
    Document(DocumentError),
}

impl From<CopyBinaryError> for RowError {
    fn from(error: CopyBinaryError) -> RowError {
        RowError::Copy(error)
    }
}

/// Reads one chunk into batches for the writer; returns the batches' write handles.
async fn copy_chunk(
    connection: &mut Connection,
    task: &CopyTask,
    documents: &DocumentTable,
    chunk: &Chunk,
    limits: BatchLimits,
    writer: &Writer,
    progress: &CopyProgress,
) -> Result<Vec<JoinHandle<Result<(), WriteError>>>, SnapshotError> {
    let metrics = writer.metrics();
    let count = |rows: usize| {
        progress.add(chunk.table, rows as u64);
        metrics
            .rows_read
            .fetch_add(rows as u64, std::sync::atomic::Ordering::Relaxed);
    };
    let table = task.table.qualified_name();
    let sql = format!(
        "SELECT {} FROM {}{}",
        documents.plan.select_list(),
        table,
        task.chunk_condition(chunk)
    );
    let mut copy = connection
        .copy_out(&format!("COPY ({sql}) TO STDOUT (FORMAT binary)"))
        .await
        .map_err(pg(format!("reading {table}")))?;
    let mut decoder = CopyBinaryDecoder::new(documents.plan.width());
    // Size each batch's buffer like the previous one, so memory follows the real batch size.
    let mut capacity = (64 * 1024).min(limits.bytes);
    let mut batch = writer.batch(capacity);
    let mut pending = Vec::new();
    while let Some(data) = copy.next().await.map_err(pg(format!("reading {table}")))? {
        // PostgreSQL sends one row per message: decode it straight into the batch.
        decoder
            .decode_chunk_with(data, |row| {
                batch
                    .push_with(|out| documents.plan.encode(row, out))
                    .map_err(RowError::Document)
            })
            .map_err(|error| match error {
                RowError::Copy(source) => SnapshotError::Copy {
                    table: table.clone(),
                    source,
                },
                RowError::Document(error) => error.into(),
            })?;
        if batch.len() >= limits.rows || batch.bytes() >= limits.bytes {
            count(batch.len());
            capacity = (batch.bytes() + batch.bytes() / 8).min(limits.bytes + 1024);
            let full = std::mem::replace(&mut batch, writer.batch(capacity));
            pending.push(writer.submit(documents.target.clone(), full).await);
        }
    }
    decoder.finish().map_err(|source| SnapshotError::Copy {
        table: table.clone(),
        source,
    })?;
    if !batch.is_empty() {
        count(batch.len());
        pending.push(writer.submit(documents.target.clone(), batch).await);
    }
    Ok(pending)
}
