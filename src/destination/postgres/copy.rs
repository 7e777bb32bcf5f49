//! The snapshot into a PostgreSQL destination: each chunk is `COPY (SELECT …) TO STDOUT` on the
//! source piped into `COPY … FROM STDIN` on the target, in one target transaction per chunk.
//!
//! Binary format when every column has the same built-in type on both sides, text otherwise
//! (with the same DateStyle/IntervalStyle/float settings on both ends, so values parse back
//! exactly). A table that was empty before the run is copied straight into; otherwise (a
//! resumed or repeated copy) rows go through the staging table and an upsert by key, so a chunk
//! done twice leaves one row per key.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::sql::ReplicaTable;
use super::table::TargetStatus;
use super::{pg, ReplicaError};
use crate::metrics::Metrics;
use crate::pg::query::quote_identifier;
use crate::pg::{ConnectOptions, Connection};
use crate::progress::CopyProgress;
use crate::source::snapshot::{Chunk, ChunkSink, CopyTask, SnapshotError};

/// Settings both ends of a copy (and the streaming applier) use so text values round-trip.
pub const TEXT_SESSION: &str =
    "SET DateStyle = ISO, YMD; SET IntervalStyle = postgres; SET extra_float_digits = 3; SET bytea_output = hex; SET client_min_messages = warning";

/// One table of the copy: where it goes and how.
#[derive(Debug, Clone)]
pub struct ReplicaCopy {
    /// The target table.
    pub table: ReplicaTable,
    /// What it was like before the run.
    pub status: TargetStatus,
}

/// Chunks go into target tables, in the task order of the copy.
#[derive(Debug)]
pub struct ReplicaSink {
    target: ConnectOptions,
    tables: Vec<ReplicaCopy>,
    metrics: Arc<Metrics>,
}

impl ReplicaSink {
    /// A sink writing `tables` (one per copy task, same order) into the database `target`.
    pub fn new(
        target: ConnectOptions,
        tables: Vec<ReplicaCopy>,
        metrics: Arc<Metrics>,
    ) -> ReplicaSink {
        ReplicaSink {
            target,
            tables,
            metrics,
        }
    }
}

/// A copy worker's target connection and the staging tables it has made.
pub struct TargetWorker {
    connection: Connection,
    staged: Vec<bool>,
}

impl ChunkSink for ReplicaSink {
    type Worker = TargetWorker;
    /// Nothing: a chunk is committed on the target before `copy_chunk` returns.
    type Pending = ();

    fn source_session(&self) -> Option<&str> {
        Some(TEXT_SESSION)
    }

    async fn open_worker(&self, worker: usize) -> Result<TargetWorker, SnapshotError> {
        let mut connection = Connection::connect(&self.target).await.map_err(pg(
            "connecting copy worker to the target for",
            &format!("worker {worker}"),
        ))?;
        connection.execute(TEXT_SESSION).await.map_err(pg(
            "setting up the target session of",
            &format!("worker {worker}"),
        ))?;
        Ok(TargetWorker {
            connection,
            staged: vec![false; self.tables.len()],
        })
    }

    async fn copy_chunk<'a>(
        &'a self,
        worker: &'a mut TargetWorker,
        source: &'a mut Connection,
        task: &'a CopyTask,
        chunk: &'a Chunk,
        progress: &'a CopyProgress,
    ) -> Result<(), SnapshotError> {
        let index = chunk.table;
        let Some(copy) = self.tables.get(index) else {
            return Err(ReplicaError::Unusable {
                table: task.table.qualified_name(),
                detail: "no target table was prepared for it (a bug in pgferry)".into(),
            }
            .into());
        };
        let result = copy_chunk(worker, source, task, chunk, copy).await;
        match result {
            Ok((rows, bytes)) => {
                progress.add(index, rows);
                self.metrics.rows_read.fetch_add(rows, Ordering::Relaxed);
                self.metrics
                    .ingested_documents
                    .fetch_add(rows, Ordering::Relaxed);
                self.metrics
                    .ingested_bytes
                    .fetch_add(bytes, Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                // The transaction is gone with the failure; so is a staging table made in it.
                let _ = worker.connection.execute("ROLLBACK").await;
                worker.staged.iter_mut().for_each(|staged| *staged = false);
                Err(error)
            }
        }
    }

    async fn chunk_durable(&self, _pending: ()) -> Result<(), SnapshotError> {
        Ok(())
    }

    async fn close_worker(&self, worker: TargetWorker) {
        worker.connection.close().await;
    }
}

/// Copies one chunk in one target transaction; returns its rows and bytes.
async fn copy_chunk(
    worker: &mut TargetWorker,
    source: &mut Connection,
    task: &CopyTask,
    chunk: &Chunk,
    copy: &ReplicaCopy,
) -> Result<(u64, u64), SnapshotError> {
    let table = &copy.table;
    let name = table.target.to_string();
    let source_name = task.table.qualified_name();
    // Straight into a table that was empty before the run (chunks never overlap); through the
    // staging table and an upsert otherwise. Keyless tables were emptied first (FULL_TABLE).
    let direct = copy.status.empty || table.keys.is_empty();
    let binary = copy.status.binary;
    let target = &mut worker.connection;
    target
        .execute("BEGIN")
        .await
        .map_err(pg("starting a copy transaction on", &name))?;
    let index = chunk.table;
    if !direct && !worker.staged[index] {
        target
            .execute(&table.staging_sql())
            .await
            .map_err(pg("creating the staging table of", &name))?;
        worker.staged[index] = true;
    }
    let columns: Vec<&str> = table.column_names().collect();
    let select: Vec<String> = task
        .table
        .columns
        .iter()
        .map(|column| quote_identifier(&column.name))
        .collect();
    let sql = format!(
        "SELECT {} FROM {}{}",
        select.join(", "),
        source_name,
        task.chunk_condition(chunk)
    );
    let format = if binary { " (FORMAT binary)" } else { "" };
    let mut into = target
        .copy_in(&table.copy_in_sql(&columns, direct, binary))
        .await
        .map_err(pg("copying into", &name))?;
    let mut out = match source
        .copy_out(&format!("COPY ({sql}) TO STDOUT{format}"))
        .await
    {
        Ok(out) => out,
        Err(error) => {
            let _ = into.abort("the source could not be read").await;
            return Err(pg("reading", &source_name)(error).into());
        }
    };
    let mut bytes = 0u64;
    loop {
        let data = match out.next().await {
            Ok(Some(data)) => data,
            Ok(None) => break,
            Err(error) => {
                let _ = into.abort("the source could not be read").await;
                return Err(pg("reading", &source_name)(error).into());
            }
        };
        bytes += data.len() as u64;
        into.send(&data).await.map_err(pg("copying into", &name))?;
    }
    let rows = into.finish().await.map_err(pg("copying into", &name))?;
    if !direct {
        target
            .execute(&table.upsert_sql(&columns))
            .await
            .map_err(pg("merging copied rows into", &name))?;
    }
    target
        .execute("COMMIT")
        .await
        .map_err(pg("committing a copied chunk of", &name))?;
    Ok((rows, bytes))
}
