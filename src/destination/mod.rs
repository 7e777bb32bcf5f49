//! Where data goes: GDN, PostgreSQL, or nowhere (null). Each destination takes the snapshot
//! copy as chunks (`ChunkSink`) and the stream as flushes of coalesced row changes
//! ([`ChangeSink`]), and converts rows into its own form ([`RowPlan`]). A run's pipeline
//! prepares one [`Destination`], from which those are made and through which FULL_TABLE
//! mirroring removes what the source no longer has (`mirror`); `pgferry verify` reads a
//! destination back through [`Written`].
//!
//! The stream's contract with a destination is one sentence: [`ChangeSink::apply`] returns
//! `Ok` only once the destination durably holds every change of the flush, and an `Err` names
//! what it refused. What the pipeline does with that answer (move the watermark, save the
//! state file, confirm the slot) is the acknowledgement rule, which stands in
//! `pipeline::ack` and nowhere here: a destination never confirms.
//!
//! Dispatch is an enum, not a trait object: a row plan converts every row, and a `match` on a
//! two-variant enum costs what the `Option` tests it replaced cost, with no boxed future per
//! flush and no virtual call per row.

pub mod gdn;
pub mod mirror;
pub mod null;
pub mod postgres;

use std::future::Future;
use std::sync::Arc;

use crate::decode::image::ImageValue;
use crate::metrics::Metrics;
use crate::pg::catalog::{NumericMode, Table};
use crate::pg::partitions::Member;
use crate::pg::{Lsn, PgError};
use gdn::document::{DocumentError, DocumentPlan};
use mirror::{Mirrored, Removed, SourceKeys};
use postgres::{ReplicaError, ReplicaPlan, ReplicaWriter};

/// One table's coalesced changes of a flush (each key appears once).
#[derive(Debug, Default)]
pub struct TableChanges {
    /// Which table (the collection, or the id the PostgreSQL writer knows it by).
    pub id: Arc<str>,
    /// Whole rows: `(key, row)`.
    pub upserts: Vec<(String, Vec<u8>)>,
    /// Partial rows (unchanged TOASTed columns absent): `(key, row)`.
    pub patches: Vec<(String, Vec<u8>)>,
    /// Keys to delete.
    pub deletes: Vec<String>,
    /// Key changes with partial new rows: `(new key, old key, row)`.
    pub moves: Vec<(String, String, Vec<u8>)>,
}

/// Why a destination failed or refused a change of the stream.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
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
        source: Box<crate::gdn::client::GdnError>,
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
    /// The PostgreSQL destination failed.
    #[error("applying changes: {0}")]
    Replica(Box<ReplicaError>),
    /// Two versions of a document could not be merged (a bug, or a corrupt document in GDN).
    #[error("could not merge a partial update into its document: {0}\nHINT: this is a bug in pgferry or a corrupt document in GDN; the slot was not confirmed past this change, please report it")]
    Merge(String),
    /// The destination holds something pgferry cannot work with.
    #[error("{0}")]
    Unsupported(String),
    /// The source failed while it answered the destination (which rows a partition held).
    #[error("replication stream: {0}")]
    Source(PgError),
}

impl ChangeError {
    /// Whether the same flush may succeed after a reconnect.
    pub fn is_transient(&self) -> bool {
        match self {
            ChangeError::Gdn { source, .. } => source.is_retryable(),
            ChangeError::Replica(error) => error.is_transient(),
            ChangeError::Source(error) => error.is_transient(),
            ChangeError::Document { .. }
            | ChangeError::Refused { .. }
            | ChangeError::Merge(_)
            | ChangeError::Unsupported(_) => false,
        }
    }
}

impl From<ReplicaError> for ChangeError {
    fn from(error: ReplicaError) -> ChangeError {
        ChangeError::Replica(Box::new(error))
    }
}

/// Answers which of a page of destination rows a truncated partition held (the source knows,
/// the destination does not: it holds a partitioned table's rows without their partition).
pub trait PartitionPicker {
    /// The members of the truncated leaves among `rows` (a JSON array of objects keyed by
    /// column name), with the text of their `keys` columns in that order.
    fn members(
        &mut self,
        rows: &str,
        keys: &[&str],
    ) -> impl Future<Output = Result<Vec<Member>, PgError>> + Send;
}

/// How one table's row images become the destination's rows: documents for GDN (and null,
/// which encodes them as GDN would), text-valued rows for PostgreSQL.
#[derive(Debug, Clone)]
pub enum RowPlan {
    /// Row → GDN document.
    Document(DocumentPlan),
    /// Row → PostgreSQL row of text values.
    Row(ReplicaPlan),
}

impl RowPlan {
    /// The key of a row image (new row or old identity).
    #[inline]
    pub fn key_from_image(
        &self,
        image: &[(&str, Option<ImageValue<'_>>)],
        lsn: Lsn,
    ) -> Result<String, ChangeError> {
        match self {
            RowPlan::Row(plan) => plan
                .key_from_image(image)
                .map_err(|error| ReplicaError::from(error).into()),
            RowPlan::Document(plan) => plan
                .key_from_image(image)
                .map(|key| key.as_str().to_owned())
                .map_err(|source| ChangeError::Document { lsn, source }),
        }
    }

    /// Encodes a new row image into `out` (a JSON object); returns its key and whether it is
    /// the whole row.
    #[inline]
    pub fn encode_image(
        &self,
        image: &[(&str, Option<ImageValue<'_>>)],
        out: &mut Vec<u8>,
        lsn: Lsn,
    ) -> Result<(String, bool), ChangeError> {
        match self {
            RowPlan::Row(plan) => plan
                .encode_image(image, out)
                .map(|row| (row.key, row.complete))
                .map_err(|error| ReplicaError::from(error).into()),
            RowPlan::Document(plan) => plan
                .encode_image(image, out)
                .map(|document| (document.key.as_str().to_owned(), document.complete))
                .map_err(|source| ChangeError::Document { lsn, source }),
        }
    }

    /// The same kind of plan for `table` (its columns changed while streaming, at `lsn`).
    pub fn replan(
        &self,
        table: &Table,
        numeric_mode: NumericMode,
        lsn: Lsn,
    ) -> Result<RowPlan, ChangeError> {
        match self {
            RowPlan::Row(_) => Ok(RowPlan::Row(ReplicaPlan::for_table(table))),
            RowPlan::Document(plan) => {
                let prefix = plan.key_prefix().map(str::to_owned);
                Ok(RowPlan::Document(
                    DocumentPlan::new(table, numeric_mode, false)
                        .map_err(|source| ChangeError::Document { lsn, source })?
                        .with_key_prefix(prefix),
                ))
            }
        }
    }

    /// The table's column names, in catalog order.
    pub fn columns(&self) -> &[String] {
        match self {
            RowPlan::Row(plan) => plan.columns(),
            RowPlan::Document(plan) => plan.columns(),
        }
    }

    /// What an error about renamed key columns adds for this destination.
    pub fn key_rename_hint(&self) -> &'static str {
        match self {
            RowPlan::Row(_) => "; for a PostgreSQL destination, rename the target's key columns to match the source's first",
            RowPlan::Document(_) => "",
        }
    }
}

/// The stream's one destination: it applies flushes of coalesced row changes and answers
/// only once they are durable, empties tables, and follows the source's columns.
#[derive(Debug)]
pub enum ChangeSink<'a> {
    /// GDN: batched document writes.
    Gdn(gdn::ChangeWriter<'a>),
    /// PostgreSQL: one target transaction per flush.
    Postgres(&'a ReplicaWriter),
    /// Nowhere: what would be written is counted (benchmarks, dry runs).
    Null,
}

impl ChangeSink<'_> {
    /// How `table`'s rows are converted for this destination; `document` is the plan its
    /// copy used (GDN and null keep it, PostgreSQL keeps the rows' text).
    pub fn row_plan(&self, table: &Table, document: DocumentPlan) -> RowPlan {
        match self {
            ChangeSink::Postgres(_) => RowPlan::Row(ReplicaPlan::for_table(table)),
            ChangeSink::Gdn(_) | ChangeSink::Null => RowPlan::Document(document),
        }
    }

    /// Whether the destination holds the source's columns with their types (PostgreSQL):
    /// then a new row shape changes its table ([`ChangeSink::reshape`], after what is pending
    /// in the old shape is written), and wal2json's `null` for NaN would silently change a
    /// value.
    pub fn keeps_column_types(&self) -> bool {
        matches!(self, ChangeSink::Postgres(_))
    }

    /// Writes one flush; returns once the destination durably holds every change of it.
    /// `replaying`: changes older than the latest copy of the tables are being replayed, so a
    /// patch or delete may find its row absent.
    pub async fn apply(
        &self,
        changes: Vec<(String, TableChanges)>,
        replaying: bool,
        metrics: &Metrics,
    ) -> Result<(), ChangeError> {
        match self {
            ChangeSink::Gdn(writer) => Box::pin(writer.apply(changes, replaying, metrics)).await,
            ChangeSink::Postgres(writer) => Ok(writer
                .apply(
                    changes.into_iter().map(|(_, changes)| changes).collect(),
                    replaying,
                    metrics,
                )
                .await?),
            ChangeSink::Null => {
                null::apply(&changes, metrics);
                Ok(())
            }
        }
    }

    /// Empties `table`'s collection or target table (`id`): the source table was truncated.
    pub async fn truncate(&self, table: &str, id: &Arc<str>) -> Result<(), ChangeError> {
        match self {
            ChangeSink::Gdn(writer) => writer.truncate(table, id).await,
            ChangeSink::Postgres(writer) => Ok(writer.truncate(id).await?),
            ChangeSink::Null => Ok(()),
        }
    }

    /// Removes the rows of `table` (at `id`, converted by `plan`) that truncated partitions
    /// held, as `picker` answers from their partition-key `columns`; returns how many.
    pub async fn remove_partition_rows(
        &self,
        table: &str,
        id: &Arc<str>,
        plan: &RowPlan,
        columns: &[&str],
        picker: &mut (impl PartitionPicker + Send),
    ) -> Result<u64, ChangeError> {
        match (self, plan) {
            (ChangeSink::Gdn(writer), RowPlan::Document(plan)) => {
                Box::pin(writer.remove_partition_rows(id, plan, columns, picker)).await
            }
            (ChangeSink::Postgres(writer), _) => {
                postgres::remove_partition_rows(writer, table, id, columns, picker).await
            }
            _ => Ok(0),
        }
    }

    /// The source table at `id` has the columns `columns` now (`(name, type)`): a destination
    /// that keeps column types follows them.
    pub async fn reshape(
        &self,
        id: &Arc<str>,
        columns: &[(String, String)],
    ) -> Result<(), ChangeError> {
        match self {
            ChangeSink::Postgres(writer) => Ok(writer.reshape(id, columns).await?),
            ChangeSink::Gdn(_) | ChangeSink::Null => Ok(()),
        }
    }
}

/// The run's one destination, as the pipeline prepared it (collections or target tables
/// exist): what the copy, the stream and FULL_TABLE mirroring need to reach it. The pipeline
/// chooses it by the config once; everything after asks it, never the config.
#[derive(Clone)]
pub enum Destination {
    /// GDN: the client and the writer's knobs.
    Gdn(gdn::GdnTarget),
    /// PostgreSQL: the target database, each task's target table, the stream's writer.
    Postgres(postgres::PostgresTarget),
    /// Nowhere (benchmarks, dry runs).
    Null,
}

impl Destination {
    /// The same destination restricted to the copy tasks `keep` marks (tables joining a
    /// running pipeline).
    pub fn only(&self, keep: &[bool]) -> Destination {
        match self {
            Destination::Postgres(target) => Destination::Postgres(postgres::PostgresTarget {
                target: target.target.clone(),
                copies: target
                    .copies
                    .iter()
                    .enumerate()
                    .filter(|(index, _)| keep.get(*index).copied().unwrap_or(false))
                    .map(|(_, copy)| copy.clone())
                    .collect(),
                writer: Arc::clone(&target.writer),
            }),
            Destination::Gdn(_) | Destination::Null => self.clone(),
        }
    }

    /// The GDN client, when the destination is GDN.
    pub fn gdn_client(&self) -> Option<crate::gdn::client::GdnClient> {
        match self {
            Destination::Gdn(gdn) => Some(gdn.client.clone()),
            Destination::Postgres(_) | Destination::Null => None,
        }
    }

    /// The PostgreSQL writer of the stream, when the destination is PostgreSQL.
    pub fn replica_writer(&self) -> Option<Arc<ReplicaWriter>> {
        match self {
            Destination::Postgres(target) => Some(Arc::clone(&target.writer)),
            Destination::Gdn(_) | Destination::Null => None,
        }
    }

    /// Removes what the destination holds of the copied `tables` (in the copy's task order)
    /// under keys `source` no longer has; the null destination holds nothing.
    pub async fn remove_stale<K: SourceKeys>(
        &self,
        tables: &[Mirrored<'_>],
        source: &mut K,
    ) -> Result<Removed, K::Error> {
        match self {
            Destination::Gdn(gdn) => Box::pin(gdn::mirror::remove_stale(gdn, tables, source)).await,
            Destination::Postgres(target) => {
                Box::pin(postgres::mirror::remove_stale(target, source)).await
            }
            Destination::Null => Ok(Removed::default()),
        }
    }
}

/// A destination connected for reading back what a pipeline wrote (`pgferry verify`, which
/// builds it from the config and compares what it reads).
pub enum Written {
    /// GDN, with the retries of the pipeline's config.
    Gdn {
        /// The connected client.
        client: crate::gdn::client::GdnClient,
        /// Attempts per request.
        max_retries: u32,
    },
    /// The target database.
    Postgres(crate::pg::ConnectOptions),
}

/// What of a destination to read back.
#[derive(Debug, Clone, Copy)]
pub enum Place<'a> {
    /// A collection's documents, in `_key` order.
    Collection(&'a str),
    /// A target table's live rows as text lines of its `columns` (quoted, comma-separated).
    Table {
        /// The target table.
        table: &'a crate::singer::target_postgres::naming::TableName,
        /// The columns read, in order.
        columns: &'a str,
        /// Rows marked `_sdc_deleted_at` are deleted rows (`hard_delete: false`).
        soft_delete: bool,
    },
}

/// Why reading a destination back failed: the destination, or the reader's own `E`.
#[derive(Debug)]
pub enum ReadError<E> {
    /// GDN failed.
    Gdn(crate::gdn::client::GdnError),
    /// The target database failed.
    Postgres(PgError),
    /// The reader refused what it was handed.
    Reader(E),
    /// The place is not of this destination (a collection of a PostgreSQL target, …).
    Elsewhere,
}

impl Written {
    /// Hands everything `place` holds to `each` (a document's JSON, or a row's text line) and
    /// returns how many; a missing collection or table holds nothing.
    pub async fn read<E: Send>(
        &self,
        place: Place<'_>,
        mut each: impl FnMut(&[u8]) -> Result<(), E> + Send,
    ) -> Result<u64, ReadError<E>> {
        match (self, place) {
            (
                Written::Gdn {
                    client,
                    max_retries,
                },
                Place::Collection(collection),
            ) => {
                let Some(mut scan) = gdn::read::documents(client, collection, *max_retries)
                    .await
                    .map_err(ReadError::Gdn)?
                else {
                    return Ok(0);
                };
                let mut rows = 0u64;
                while let Some(page) = scan.next_page().await.map_err(ReadError::Gdn)? {
                    for raw in &page.documents {
                        rows += 1;
                        each(raw.get().as_bytes()).map_err(ReadError::Reader)?;
                    }
                }
                Ok(rows)
            }
            (
                Written::Postgres(target),
                Place::Table {
                    table,
                    columns,
                    soft_delete,
                },
            ) => {
                let mut refused = None;
                let rows = postgres::read::live_rows(target, table, columns, soft_delete, |line| {
                    if refused.is_none() {
                        refused = each(line).err();
                    }
                })
                .await
                .map_err(ReadError::Postgres)?;
                match refused {
                    Some(error) => Err(ReadError::Reader(error)),
                    None => Ok(rows),
                }
            }
            _ => Err(ReadError::Elsewhere),
        }
    }
}
