//! PostgreSQL as a destination: a PostgreSQL source's tables replicated with their own column
//! types (by the same snapshot and change data capture that feed GDN), and GDN documents loaded
//! into inferred tables (`infer` chooses columns from documents, `documents` loads a batch in
//! one transaction).
//!
//! `table` creates or checks the target tables, `copy` moves snapshot chunks with
//! `COPY … TO STDOUT` piped into `COPY … FROM STDIN` (binary when both sides have the same
//! built-in types), `plan` turns streamed row images into the coalescing form the streaming
//! loop shares with GDN, `sql` holds the statements, and `apply` commits a flush of coalesced
//! changes in one target transaction before the slot may be confirmed past them. `mirror` removes
//! what a target table holds that its source table no longer has.

pub mod apply;
pub mod copy;
pub mod documents;
pub mod infer;
pub mod mirror;
pub mod plan;
pub mod read;
pub mod sql;
pub mod table;

pub use apply::{ReplicaWriter, RowPicker};
pub use plan::{ImageError, ReplicaPlan};
pub use sql::ReplicaTable;

use std::sync::Arc;

use crate::destination::{ChangeError, PartitionPicker};
use crate::pg::{ConnectOptions, PgError};
use copy::ReplicaCopy;

/// A run's PostgreSQL destination as the pipeline prepared it: every target table exists,
/// ready for the copy, for streaming and for mirroring.
#[derive(Debug, Clone)]
pub struct PostgresTarget {
    /// The target database.
    pub target: ConnectOptions,
    /// Per copy task (same order): its target table and how to copy into it.
    pub copies: Vec<ReplicaCopy>,
    /// Applies streamed changes.
    pub writer: Arc<ReplicaWriter>,
}

/// Why replicating into PostgreSQL failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The target (or, while copying, the source) failed.
    #[error("{during} {table}: {source}")]
    Postgres {
        /// What was being done.
        during: &'static str,
        /// The target table (or the source table while reading).
        table: String,
        /// The error.
        source: PgError,
    },
    /// An existing target table cannot take the source's rows.
    #[error("target table {table} cannot be used: {detail}")]
    Unusable {
        /// The target table.
        table: String,
        /// Why, with the fix.
        detail: String,
    },
    /// A streamed row image could not become a row.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Rows a partial update should change are not in the target (outside the replay window).
    #[error("{missing} of {expected} rows of {table} that streamed UPDATEs change are not in the target table (first key {first_key})\nHINT: the target table lost rows pgferry wrote (deleted or truncated by hand?); the slot was not confirmed past these changes. Reload the table: drop it and remove the state file to copy again")]
    Lost {
        /// The target table.
        table: String,
        /// Rows not found.
        missing: u64,
        /// Rows the updates named.
        expected: u64,
        /// One of the keys, as its column values.
        first_key: String,
    },
}

impl ReplicaError {
    /// Whether the same work may succeed after reconnecting (connection loss, restart).
    pub fn is_transient(&self) -> bool {
        match self {
            ReplicaError::Postgres { source, .. } => source.is_transient(),
            _ => false,
        }
    }
}

impl crate::source::snapshot::SinkError for ReplicaError {
    fn is_transient(&self) -> bool {
        ReplicaError::is_transient(self)
    }
}

/// An error of `during` on `table`.
pub(crate) fn pg(during: &'static str, table: &str) -> impl FnOnce(PgError) -> ReplicaError {
    let table = table.to_owned();
    move |source| ReplicaError::Postgres {
        during,
        table,
        source,
    }
}

/// Removes the rows of `table`'s target table (`id`) that truncated partitions held, as
/// `picker` answers from their partition-key `columns`; returns how many.
pub(crate) async fn remove_partition_rows(
    writer: &ReplicaWriter,
    table: &str,
    id: &Arc<str>,
    columns: &[&str],
    picker: &mut (impl PartitionPicker + Send),
) -> Result<u64, ChangeError> {
    let mut leaves = LeafRows { picker, table };
    Ok(writer.remove_rows(id, columns, &mut leaves).await?)
}

/// Picks the target rows the truncated leaves held, by asking the source.
struct LeafRows<'a, P> {
    picker: &'a mut P,
    table: &'a str,
}

impl<P: PartitionPicker + Send> RowPicker for LeafRows<'_, P> {
    async fn pick(&mut self, rows: &str) -> Result<Vec<usize>, ReplicaError> {
        let members =
            self.picker
                .members(rows, &[])
                .await
                .map_err(|source| ReplicaError::Postgres {
                    during: "asking the source which rows a truncated partition held, for",
                    table: self.table.to_owned(),
                    source,
                })?;
        Ok(members.into_iter().map(|member| member.position).collect())
    }
}
