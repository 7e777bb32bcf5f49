//! `pgferry run`: wires the source, the one destination of the run and the state file together.
//!
//! FULL_TABLE: discovery, collection creation, one consistent parallel copy of every selected
//! table, and a summary. LOG_BASED (`log_based.rs`): the same copy under the replication slot's
//! exported snapshot, then change data capture from the slot, resumable from the state file.
//! GDN → PostgreSQL (`gdn_to_pg.rs`): each collection scanned, then followed through its
//! change stream. [`run_pipeline`] picks by the pipeline's source and destination types.

mod ack;
pub(crate) mod collections;
pub mod gdn_to_pg;
mod join;
mod log_based;
mod mirror;
pub(crate) mod pg_to_pg;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{
    DestinationConfig, PgSourceConfig, Pipeline, PipelineConfig, ReplicationMethod, TableSelection,
};
use crate::destination::gdn::copy::{copy_tables, DocumentTable};
use crate::destination::gdn::document::{DocumentError, DocumentPlan};
use crate::destination::gdn::GdnTarget;
use crate::destination::postgres::copy::ReplicaSink;
use crate::destination::Destination;
use crate::gdn::client::{GdnClient, GdnError};
use crate::gdn::writer::{BatchTarget, Writer, WriterSettings};
use crate::metrics::{Labels, Metrics, Phase};
use crate::pg::catalog::{discover, Table};
use crate::pg::{ConnectOptions, Connection, PgError};
use crate::progress::{spawn_display, CopyProgress};
use crate::source::cdc::{CdcError, CdcSummary};
use crate::source::snapshot::{
    copy_tables_into, BatchLimits, CopyPlan, CopySummary, CopyTask, SnapshotError,
};
use crate::source::state::{ChunkLedger, StateError};

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The source could not be read.
    #[error("PostgreSQL source: {0}")]
    Source(#[from] PgError),
    /// A configured table does not exist (or is not visible to the role).
    #[error("table {0} not found in the source database\nHINT: check the name in \"tables\" / \"filter_table\", and that the role may see it (GRANT USAGE ON SCHEMA …; GRANT SELECT ON …)")]
    TableNotFound(String),
    /// Nothing matched the selection.
    #[error("no table matched the selection (filter_schemas {schemas:?}, filter_table {table:?})\nHINT: check the names, or list tables explicitly in \"tables\"")]
    NothingSelected {
        /// The schemas filter.
        schemas: Vec<String>,
        /// The table filter.
        table: Option<String>,
    },
    /// A table cannot be turned into documents (e.g. no key where one is needed).
    #[error(transparent)]
    Plan(#[from] DocumentError),
    /// GDN refused or could not be reached while preparing collections.
    #[error("GDN destination: {0}")]
    Destination(#[from] GdnError),
    /// The copy failed.
    #[error("{0}")]
    Copy(Box<SnapshotError>),
    /// The pipeline asks for something pgferry cannot do (with the reason and the fix).
    #[error("{0}")]
    Unsupported(String),
    /// Change data capture failed.
    #[error(transparent)]
    Cdc(Box<CdcError>),
    /// The state file failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// A GDN → PostgreSQL pipeline failed.
    #[error(transparent)]
    GdnToPg(Box<gdn_to_pg::GdnToPgError>),
    /// The PostgreSQL destination of a PostgreSQL source failed.
    #[error("PostgreSQL destination: {0}")]
    Replica(Box<crate::destination::postgres::ReplicaError>),
}

impl RunError {
    /// Whether running the pipeline again may succeed without a fix: PostgreSQL (source or
    /// target) unreachable or restarting, GDN unreachable or overloaded while preparing or
    /// copying. Errors of streaming itself are not: the stream reconnects on its own and
    /// only gives up after `max_reconnect_attempts`.
    pub fn is_transient(&self) -> bool {
        match self {
            RunError::Source(error) => error.is_transient(),
            RunError::Destination(error) => error.is_retryable(),
            RunError::Replica(error) => error.is_transient(),
            RunError::Copy(error) => match error.as_ref() {
                SnapshotError::Postgres { source, .. } => source.is_transient(),
                SnapshotError::Destination(error) => error.is_transient(),
                _ => false,
            },
            _ => false,
        }
    }

    /// Whether no server could be reached at all (refused, unresolvable, timed out): on a
    /// first attempt that is more likely a wrong address than a restart, so the run stops
    /// at once with the error instead of retrying for minutes.
    pub fn is_unreachable(&self) -> bool {
        let pg =
            |error: &PgError| matches!(error, PgError::Connect { .. } | PgError::Timeout { .. });
        match self {
            RunError::Source(error) => pg(error),
            RunError::Replica(error) => matches!(
                error.as_ref(),
                crate::destination::postgres::ReplicaError::Postgres { source, .. } if pg(source)
            ),
            RunError::Destination(error) => matches!(
                error,
                GdnError::Unreachable { .. } | GdnError::Timeout { .. }
            ),
            _ => false,
        }
    }
}

/// What any pipeline run did.
#[derive(Debug, Clone)]
pub enum PipelineSummary {
    /// PostgreSQL → GDN (or null).
    FromPostgres(RunSummary),
    /// GDN → PostgreSQL.
    GdnToPg(gdn_to_pg::GdnRunSummary),
}

impl PipelineSummary {
    /// Lines for people.
    pub fn to_text(&self) -> String {
        match self {
            PipelineSummary::FromPostgres(summary) => summary.to_text(),
            PipelineSummary::GdnToPg(summary) => summary.to_text(),
        }
    }
}

/// Runs any pipeline, counting into `metrics`: the source and destination types choose how.
pub async fn run_pipeline(
    pipeline: &Pipeline,
    metrics: Arc<Metrics>,
    control: RunControl,
) -> Result<PipelineSummary, RunError> {
    match pipeline {
        Pipeline::FromPostgres(config) => run_with(config, metrics, control)
            .await
            .map(PipelineSummary::FromPostgres),
        Pipeline::GdnToPg(config) => {
            let outcome = gdn_to_pg::run(config, Arc::clone(&metrics), control).await;
            metrics.set_phase(Phase::Finished);
            outcome
                .map(PipelineSummary::GdnToPg)
                .map_err(|error| RunError::GdnToPg(Box::new(error)))
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Rows per table.
    pub copy: CopySummary,
    /// Documents durably written (0 for the null destination, which only counts).
    pub documents: u64,
    /// Request bytes written.
    pub bytes: u64,
    /// Requests or documents that were retried.
    pub retries: u64,
    /// The process's peak resident set size (`VmHWM`), when the platform reports it.
    pub peak_rss_bytes: Option<u64>,
    /// LOG_BASED: what streaming did after the copy.
    pub streaming: Option<CdcSummary>,
    /// FULL_TABLE with `full_table_mirror`: documents (rows) removed whose rows the tables no
    /// longer have.
    pub removed: Option<u64>,
    /// What `bytes` measured: `documents` (GDN, null) or `rows` (a PostgreSQL destination).
    pub written: &'static str,
}

/// This process's peak resident set size, from `/proc/self/status` (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

impl RunSummary {
    /// The summary of a run: the copy, the writer's totals from `metrics`, and streaming.
    pub fn new(
        copy: CopySummary,
        metrics: &Metrics,
        streaming: Option<CdcSummary>,
        destination: &DestinationConfig,
    ) -> RunSummary {
        let load = |counter: &std::sync::atomic::AtomicU64| {
            counter.load(std::sync::atomic::Ordering::Relaxed)
        };
        RunSummary {
            copy,
            documents: load(&metrics.ingested_documents),
            bytes: load(&metrics.ingested_bytes),
            retries: load(&metrics.retries),
            peak_rss_bytes: peak_rss_bytes(),
            streaming,
            removed: None,
            written: match destination {
                DestinationConfig::Postgres(_) => "rows",
                DestinationConfig::Gdn(_) | DestinationConfig::Null => "documents",
            },
        }
    }

    /// Lines for people: per table rows, then totals and the rate.
    pub fn to_text(&self) -> String {
        let seconds = self.copy.elapsed.as_secs_f64().max(1e-9);
        let mut text = String::new();
        let mut total = 0u64;
        for table in &self.copy.tables {
            total += table.rows;
            text.push_str(&format!(
                "{}: {} rows ({:.0} rows/s)\n",
                table.table,
                table.rows,
                table.rows as f64 / table.elapsed.as_secs_f64().max(1e-9)
            ));
        }
        if !self.copy.tables.is_empty() {
            text.push_str(&format!(
                "copied {total} rows ({:.1} MB of {}) in {:.2} s: {:.0} rows/s, {} retries\n",
                self.bytes as f64 / 1e6,
                self.written,
                seconds,
                total as f64 / seconds,
                self.retries
            ));
        }
        if let Some(removed) = self.removed {
            text.push_str(&format!(
                "removed {removed} {} whose rows the tables no longer have\n",
                self.written
            ));
        }
        if let Some(cdc) = &self.streaming {
            text.push_str(&format!(
                "streamed {} changes in {} transactions; confirmed up to {}\n",
                cdc.changes, cdc.transactions, cdc.confirmed
            ));
        }
        if let Some(peak) = self.peak_rss_bytes {
            text.push_str(&format!("peak RSS {:.1} MB\n", peak as f64 / 1e6));
        }
        text
    }
}

/// The discovered tables the config selects, each with its `tables` entry's collection.
pub(crate) fn selected<'a>(
    tables: &'a [Table],
    selection: &[TableSelection],
) -> Result<Vec<(&'a Table, Option<String>)>, RunError> {
    if selection.is_empty() {
        return Ok(tables.iter().map(|table| (table, None)).collect());
    }
    selection
        .iter()
        .map(|wanted| {
            tables
                .iter()
                .find(|table| table.schema == wanted.schema && table.name == wanted.table)
                .map(|table| (table, wanted.collection.clone()))
                .ok_or_else(|| {
                    RunError::TableNotFound(format!("{}.{}", wanted.schema, wanted.table))
                })
        })
        .collect()
}

/// Reads the tables the source config (or the `tables` list) selects.
pub(crate) async fn discover_selected(
    source: &PgSourceConfig,
    selection: &[TableSelection],
) -> Result<Vec<Table>, RunError> {
    let mut connection = Connection::connect(&source.connect_options()).await?;
    let schemas: Vec<String> = if selection.is_empty() {
        source.filter_schemas.clone()
    } else {
        let mut schemas: Vec<String> = selection.iter().map(|table| table.schema.clone()).collect();
        schemas.sort();
        schemas.dedup();
        schemas
    };
    let table_filter = if selection.is_empty() {
        source.filter_table.as_deref()
    } else {
        None
    };
    let tables = discover(&mut connection, &schemas, table_filter).await?;
    connection.close().await;
    if tables.is_empty() {
        return Err(match (selection.first(), table_filter) {
            (Some(first), _) => {
                RunError::TableNotFound(format!("{}.{}", first.schema, first.table))
            }
            (None, _) => RunError::NothingSelected {
                schemas: source.filter_schemas.clone(),
                table: source.filter_table.clone(),
            },
        });
    }
    Ok(tables)
}

/// How a run is steered from outside.
#[derive(Debug, Clone)]
pub struct RunControl {
    /// Becomes `true` on SIGINT/SIGTERM: flush, confirm, stop cleanly.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// LOG_BASED: stop once caught up with the WAL position read at start (a batch run).
    /// GDN sources: stop after the scan and the stream backlog present at start.
    pub once: bool,
    /// LOG_BASED: tables (`schema.table`) to copy again while the others stream.
    pub resnapshot: Vec<String>,
}

impl RunControl {
    /// A batch run that nobody interrupts (the shutdown channel's sender is gone, which the
    /// stream reads as "never").
    pub fn once() -> RunControl {
        let (_, shutdown) = tokio::sync::watch::channel(false);
        RunControl {
            shutdown,
            once: true,
            resnapshot: Vec::new(),
        }
    }
}

/// Runs a pipeline to completion (LOG_BASED: until caught up), with fresh metrics.
pub async fn run(config: &PipelineConfig) -> Result<RunSummary, RunError> {
    run_with(
        config,
        Arc::new(Metrics::new(Labels::from_env())),
        RunControl::once(),
    )
    .await
}

/// One table to copy, and how its rows become documents and where they go in GDN (the
/// copy itself sees only [`CopyTask`]; the GDN plan goes to its sink).
#[derive(Debug, Clone)]
pub(crate) struct TableTask {
    /// The table from the catalog.
    pub(crate) table: Table,
    /// How rows become documents.
    pub(crate) plan: DocumentPlan,
    /// Where they are written.
    pub(crate) target: BatchTarget,
    /// Only the rows this SQL condition holds for (LOG_BASED through pgoutput: the
    /// publications' row filter, so the copy holds what the stream keeps up to date).
    pub(crate) row_filter: Option<String>,
}

impl TableTask {
    /// What the source's copy needs of it.
    pub(crate) fn copy_task(&self) -> CopyTask {
        CopyTask {
            table: self.table.clone(),
            name: Arc::clone(&self.target.table),
            row_filter: self.row_filter.clone(),
        }
    }
}

/// Everything both replication methods need before copying.
pub(crate) struct Prepared {
    /// The run's one destination, ready for the copy and the stream.
    pub(crate) destination: Destination,
    pub(crate) limits: BatchLimits,
    pub(crate) tasks: Vec<TableTask>,
}

/// Discovers the selected tables, connects to GDN and makes sure every collection exists
/// (or, for a PostgreSQL destination, every target table).
pub(crate) async fn prepare(
    config: &PipelineConfig,
    allow_keyless: bool,
) -> Result<Prepared, RunError> {
    let discovered = discover_selected(&config.source, &config.tables).await?;
    let chosen = selected(&discovered, &config.tables)?;
    prepare_chosen(config, chosen, allow_keyless).await
}

/// [`prepare`] for tables already chosen (LOG_BASED shapes them by the publications first).
pub(crate) async fn prepare_chosen(
    config: &PipelineConfig,
    chosen: Vec<(&Table, Option<String>)>,
    allow_keyless: bool,
) -> Result<Prepared, RunError> {
    if let DestinationConfig::Postgres(destination) = &config.destination {
        let (tasks, target) = pg_to_pg::prepare_targets(
            &config.source.connect_options(),
            destination,
            &chosen,
            config.numeric_mode,
            allow_keyless,
        )
        .await?;
        return Ok(Prepared {
            destination: Destination::Postgres(target),
            limits: BatchLimits {
                rows: destination.batch_size_rows,
                bytes: 16 * 1024 * 1024,
            },
            tasks,
        });
    }

    let (client, settings, limits, create_stream) = match &config.destination {
        DestinationConfig::Gdn(gdn) => (
            Some(GdnClient::connect(gdn).await?),
            WriterSettings {
                max_in_flight: gdn.max_in_flight,
                wait_for_sync: gdn.wait_for_sync,
                max_retries: gdn.max_retries,
                initial_backoff: Duration::from_millis(100),
            },
            BatchLimits {
                rows: gdn.batch_size_rows,
                bytes: gdn.batch_size_bytes,
            },
            gdn.create_stream,
        ),
        DestinationConfig::Null => (
            None,
            crate::destination::null::writer_settings(),
            BatchLimits {
                rows: 1000,
                bytes: 4 * 1024 * 1024,
            },
            false,
        ),
        DestinationConfig::Postgres(_) => {
            return Err(RunError::Unsupported(
                "a PostgreSQL destination is prepared above".into(),
            ))
        }
    };

    let destinations: Vec<collections::TableCollection> = chosen
        .iter()
        .map(|(table, collection_override)| {
            let (collection, requested) = match (&config.destination, collection_override) {
                (_, Some(name)) => (name.clone(), true),
                (DestinationConfig::Gdn(gdn), None) => (
                    gdn.collection_for(&table.schema, &table.name),
                    gdn.target_collection.is_some(),
                ),
                (DestinationConfig::Null | DestinationConfig::Postgres(_), None) => {
                    (table.name.clone(), false)
                }
            };
            collections::TableCollection {
                table: table.qualified_name(),
                prefix: format!("{}.{}", table.schema, table.name),
                collection,
                requested,
                keyless: table.key_columns.is_empty(),
            }
        })
        .collect();
    let prefixes = if client.is_some() {
        collections::check_names(&destinations).map_err(RunError::Unsupported)?;
        collections::key_prefixes(&destinations).map_err(RunError::Unsupported)?
    } else {
        // The null destination writes nothing: names cannot collide there.
        vec![None; destinations.len()]
    };
    let mut tasks = Vec::with_capacity(chosen.len());
    for (((table, _), destination), prefix) in chosen.into_iter().zip(destinations).zip(prefixes) {
        let plan =
            DocumentPlan::new(table, config.numeric_mode, allow_keyless)?.with_key_prefix(prefix);
        let keyless = destination.keyless;
        let collection = destination.collection;
        tasks.push(TableTask {
            target: BatchTarget {
                table: format!("{}.{}", table.schema, table.name).into(),
                collection: collection.into(),
                keyless,
            },
            plan,
            table: table.clone(),
            row_filter: None,
        });
    }
    if let Some(client) = &client {
        collections::make_ready(client, &tasks, create_stream, settings.max_retries).await?;
    }
    let destination = match client {
        Some(client) => Destination::Gdn(GdnTarget { client, settings }),
        None => Destination::Null,
    };
    Ok(Prepared {
        destination,
        limits,
        tasks,
    })
}

/// Runs a pipeline, counting into `metrics` (e.g. served on `--metrics-addr`).
pub async fn run_with(
    config: &PipelineConfig,
    metrics: Arc<Metrics>,
    mut control: RunControl,
) -> Result<RunSummary, RunError> {
    if config.source.replication_method == ReplicationMethod::LogBased {
        // Preparing and copying are resumable (the slot, the state file, the chunk ledger): a
        // transient failure there (a server restarting) starts the run again after a backoff,
        // within `max_reconnect_attempts` like the stream's own reconnects.
        let mut failures = 0u32;
        loop {
            let outcome = Box::pin(log_based::run(
                config,
                Arc::clone(&metrics),
                control.clone(),
            ))
            .await;
            // `--resnapshot` is in the state file now: a run started again does not repeat it.
            control.resnapshot.clear();
            match outcome {
                // Tables joined (or must be copied again): start again, which copies them.
                Err(RunError::Cdc(error)) if matches!(*error, CdcError::Restart(_)) => {
                    tracing::info!(%error, "starting the run again");
                    failures = 0;
                }
                // A first attempt that reaches no server at all stops: likely a wrong address.
                Err(error)
                    if error.is_transient() && !(failures == 0 && error.is_unreachable()) =>
                {
                    failures += 1;
                    let limit = config.source.max_reconnect_attempts;
                    let Some(delay) = log_based::retry_delay(failures, limit) else {
                        return Err(error);
                    };
                    tracing::warn!(%error, attempt = failures, retry_in = ?delay, "the run failed before streaming; starting again");
                    metrics.set_phase(Phase::Backoff);
                    if log_based::shutdown_during(delay, &control.shutdown).await {
                        return Err(error);
                    }
                }
                outcome => {
                    metrics.set_phase(Phase::Finished);
                    return outcome;
                }
            }
        }
    }
    let outcome = Box::pin(full_table(config, &metrics)).await;
    metrics.set_phase(Phase::Finished);
    outcome
}

/// A FULL_TABLE run: the copy, then (with `full_table_mirror`) what the tables no longer have
/// is removed.
async fn full_table(
    config: &PipelineConfig,
    metrics: &Arc<Metrics>,
) -> Result<RunSummary, RunError> {
    let prepared = prepare(config, true).await?;
    let destination = mirror::Copied::of(&prepared);
    let copy = copy_step(config, prepared, metrics, None, None).await?;
    let mut summary = RunSummary::new(copy, metrics, None, &config.destination);
    // Only after every table's copy finished: an interrupted copy removes nothing.
    if config.full_table_mirror {
        let removed = destination
            .remove_stale(&config.source.connect_options(), config.numeric_mode, None)
            .await?;
        summary.removed = Some(removed.total());
    }
    Ok(summary)
}

/// The consistent copy of every prepared table, under `snapshot` when given.
pub(crate) async fn copy_step(
    config: &PipelineConfig,
    prepared: Prepared,
    metrics: &Arc<Metrics>,
    snapshot: Option<String>,
    ledger: Option<Arc<ChunkLedger>>,
) -> Result<CopySummary, RunError> {
    let Prepared {
        destination,
        limits,
        tasks,
    } = prepared;
    let progress = Arc::new(CopyProgress::new(tasks.iter().map(|task| {
        (
            task.target.table.to_string(),
            u64::try_from(task.table.row_estimate).unwrap_or(0),
        )
    })));
    let display = spawn_display(Arc::clone(&progress), Arc::clone(metrics));
    // Connected to both ends (prepared) and copying: what `/readyz` calls ready.
    metrics.set_phase(Phase::Copying);
    let plan = CopyPlan {
        workers: config.parallelism,
        limits,
        snapshot,
        progress: Arc::clone(&progress),
        ledger,
    };
    let source = config.source.connect_options();
    let copy_tasks = tasks.iter().map(TableTask::copy_task).collect();
    let copy = match destination {
        Destination::Postgres(target) => {
            let sink = ReplicaSink::new(target.target, target.copies, Arc::clone(metrics));
            copy_tables_into(&source, copy_tasks, Arc::new(sink), plan).await
        }
        Destination::Gdn(GdnTarget { client, settings }) => {
            let writer = Writer::new(Some(client), settings, Arc::clone(metrics));
            copy_documents(&source, copy_tasks, tasks, &writer, plan).await
        }
        Destination::Null => {
            let settings = crate::destination::null::writer_settings();
            let writer = Writer::new(None, settings, Arc::clone(metrics));
            copy_documents(&source, copy_tasks, tasks, &writer, plan).await
        }
    };
    progress.finish();
    if let Some(display) = display {
        let _ = display.await;
    }
    copy.map_err(|error| RunError::Copy(Box::new(error)))
}

/// The copy into documents (GDN, or the null destination through the same writer).
async fn copy_documents(
    source: &ConnectOptions,
    copy_tasks: Vec<CopyTask>,
    tasks: Vec<TableTask>,
    writer: &Writer,
    plan: CopyPlan,
) -> Result<CopySummary, SnapshotError> {
    let tables = tasks
        .into_iter()
        .map(|task| DocumentTable {
            plan: task.plan,
            target: task.target,
        })
        .collect();
    copy_tables(source, copy_tasks, tables, writer, plan).await
}
