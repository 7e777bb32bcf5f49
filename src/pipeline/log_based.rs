//! LOG_BASED pipelines: slot and snapshot, the copy, then streaming, resumable at every step.
//!
//! First run: the slot is created with an exported snapshot (its consistent point `L0` goes to
//! the state file), every table is copied under that snapshot while the creating connection
//! holds it, and streaming starts at `L0`. A run that finds the slot but no finished copy (it
//! was interrupted, or the user created the slot by hand, or the state file was lost) copies
//! again under a fresh snapshot and replays from the slot's position: every write is an
//! idempotent upsert or delete by key, applied in commit order, so the result converges; while
//! replaying changes older than that copy, "document not found" on a PATCH is expected and
//! ignored. Later runs stream from the watermark in the state file.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{DestinationConfig, OutputPlugin, PipelineConfig, Wal2JsonFormat};
use crate::decode::pgoutput::ProtocolVersion;
use crate::metrics::Metrics;
use crate::pg::catalog::{identity_without_key, RelationKind};
use crate::pg::partitions;
use crate::pg::query::{quote_identifier, quote_literal};
use crate::pg::replication::{ReplicationClient, SlotSnapshot};
use crate::pg::{Lsn, PgError};
use crate::pipeline::{
    copy_step, discover_selected, prepare_chosen, selected, RunControl, RunError, RunSummary,
};
use crate::progress::spawn_stream_display;
use crate::source::cdc::{
    stream_changes, wal2json_lossy_columns, wal2json_lossy_error, CdcError, CdcSettings,
    CdcSummary, CdcTable, CdcTables, Decoding, LeafOf, SideConnection, StreamContext,
};
use crate::source::plugin::{pgoutput_options, wal2json_options, wal2json_table_name};
use crate::source::publication_contract::shape_table;
use crate::source::slot_setup::{
    ensure_publication, refused_plugin_message, resolve_plugin, slots_exhausted_message,
    truncates_hidden_by_root, via_root_message, wal_senders_exhausted_message, PartitionNames,
    PublicationError,
};
use crate::source::state::{CdcState, ChunkLedger, StateFile};

/// The ledger's state once the copy is over.
fn take_state(ledger: Arc<ChunkLedger>) -> CdcState {
    match Arc::try_unwrap(ledger) {
        Ok(ledger) => ledger.into_state(),
        Err(shared) => shared.state(),
    }
}

fn state_file(config: &PipelineConfig) -> StateFile {
    StateFile::new(
        config
            .state_file
            .clone()
            .unwrap_or_else(|| std::path::PathBuf::from("pgferry-state.json")),
    )
}

/// The slot's confirmed position, when it exists.
async fn slot_info(client: &mut ReplicationClient, slot: &str) -> Result<Option<Lsn>, RunError> {
    let row = client
        .connection()
        .query_one(&format!(
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = {}",
            quote_literal(slot)
        ))
        .await?;
    Ok(row.map(|row| {
        row.get(0)
            .and_then(|lsn| lsn.parse().ok())
            .unwrap_or(Lsn::ZERO)
    }))
}

/// Runs a LOG_BASED pipeline.
pub(crate) async fn run(
    config: &PipelineConfig,
    metrics: Arc<Metrics>,
    control: RunControl,
) -> Result<RunSummary, RunError> {
    let discovered = discover_selected(&config.source, &config.tables).await?;
    let chosen_tables = selected(&discovered, &config.tables)?;
    for (table, _) in &chosen_tables {
        if table.kind.is_view() {
            return Err(RunError::Unsupported(format!(
                "{} is a view: views have no changes to stream\nHINT: copy views with replication_method FULL_TABLE in a pipeline of their own",
                table.qualified_name()
            )));
        }
    }
    let (wait_for_sync, batch_size_rows, max_retries, flush_after, max_in_flight) =
        match &config.destination {
            DestinationConfig::Postgres(destination) => (
                true,
                destination.batch_size_rows,
                1,
                destination.batch_flush_interval,
                1,
            ),
            DestinationConfig::Gdn(gdn) => (
                gdn.wait_for_sync,
                gdn.batch_size_rows,
                gdn.max_retries,
                gdn.batch_flush_interval.min(CDC_FLUSH_AFTER),
                gdn.max_in_flight,
            ),
            DestinationConfig::Null => (false, 1000, 1, CDC_FLUSH_AFTER, 1),
        };

    let slot = config.source.replication_slot.clone();
    let file = state_file(config);
    let options = config.source.connect_options();
    let mut replication = ReplicationClient::connect(&options)
        .await
        .map_err(|error| match wal_senders_exhausted_message(&error) {
            Some(message) => RunError::Unsupported(message),
            None => RunError::Source(error),
        })?;
    let selected: Vec<(String, String)> = chosen_tables
        .iter()
        .map(|(table, _)| (table.schema.clone(), table.name.clone()))
        .collect();
    let (choice, allow) = resolve_plugin(
        replication.connection(),
        &config.source,
        &slot,
        &selected,
        PartitionNames::Leaves,
    )
    .await?;
    let chosen = choice
        .map_err(|refusal| RunError::Unsupported(refusal.message()))?
        .log();
    let plugin = chosen.plugin;
    let unidentified: Vec<(String, String)> = chosen_tables
        .iter()
        .filter_map(|(table, _)| {
            let missing = table.key_columns_not_in_identity();
            (!missing.is_empty()).then(|| {
                identity_without_key(
                    &format!(
                        "{}.{}",
                        quote_identifier(&table.schema),
                        quote_identifier(&table.name)
                    ),
                    &missing,
                )
            })
        })
        .collect();
    if !unidentified.is_empty() {
        let (problems, fixes): (Vec<String>, Vec<String>) = unidentified.into_iter().unzip();
        return Err(RunError::Unsupported(format!(
            "{}\nHINT: {}",
            problems.join("; "),
            fixes.join("\n")
        )));
    }
    if matches!(config.destination, DestinationConfig::Postgres(_))
        && plugin == OutputPlugin::Wal2Json
    {
        let lossy: Vec<String> = chosen_tables
            .iter()
            .flat_map(|(table, _)| wal2json_lossy_columns(table))
            .collect();
        if !lossy.is_empty() {
            return Err(RunError::Unsupported(wal2json_lossy_error(&lossy)));
        }
    }
    // pgoutput: the publications are made ready before the slot exists (pgoutput reads them
    // as of each change), and what they publish of each table shapes the copy too.
    let (shaped, row_filters) = match plugin {
        OutputPlugin::PgOutput => {
            let coverage = ensure_publication(
                &options,
                &config.source.publication,
                &selected,
                PartitionNames::Leaves,
            )
            .await
            .map_err(|error| match error {
                PublicationError::Postgres(error) => RunError::Source(error),
                PublicationError::Unusable(message) => RunError::Unsupported(message),
            })?;
            let hidden = truncates_hidden_by_root(
                replication.connection(),
                &config.source.publication,
                &selected,
            )
            .await?;
            if !hidden.is_empty() {
                return Err(RunError::Unsupported(via_root_message(
                    &config.source.publication,
                    &hidden,
                )));
            }
            let mut shaped = Vec::with_capacity(chosen_tables.len());
            let mut filters = Vec::with_capacity(chosen_tables.len());
            for (table, _) in &chosen_tables {
                let published = coverage.table(&table.schema, &table.name);
                let (table, filter) = shape_table(table, published, &config.source.publication)
                    .map_err(RunError::Unsupported)?;
                if let Some(published) = published {
                    if published.row_filter.is_some()
                        || published.columns.is_some()
                        || !published.actions.all()
                    {
                        tracing::info!(table = %table.qualified_name(), row_filter = ?published.row_filter, columns = ?published.columns, publish = %published.actions.describe(), "the publications' contract: the copy and the stream follow it");
                    }
                }
                shaped.push(table);
                filters.push(filter);
            }
            (shaped, filters)
        }
        OutputPlugin::Wal2Json => {
            if config.source.publication.explicit() {
                tracing::warn!(publication = %config.source.publication.describe(), "wal2json ignores publications: every row and column of the selected tables is copied and streamed");
            }
            let shaped: Vec<_> = chosen_tables
                .iter()
                .map(|(table, _)| (*table).clone())
                .collect();
            let filters = vec![None; shaped.len()];
            (shaped, filters)
        }
    };
    let mut prepared = prepare_chosen(
        config,
        shaped
            .iter()
            .zip(&chosen_tables)
            .map(|(table, (_, collection))| (table, collection.clone()))
            .collect(),
        false,
    )
    .await?;
    for (task, filter) in prepared.tasks.iter_mut().zip(row_filters) {
        task.row_filter = filter;
    }
    let replica = prepared
        .replica
        .as_ref()
        .map(|replica| Arc::clone(&replica.writer));
    let client = prepared.client.clone();
    // Each table streams under its own name and, when partitioned, under its leaf partitions'
    // names (their changes are decoded under those): all into the table's collection, and
    // wal2json is asked for every one of them. A leaf's entry knows its partition constraint,
    // so a TRUNCATE of the leaf empties only its rows.
    let mut tables = CdcTables::default();
    let mut add_tables = Vec::with_capacity(prepared.tasks.len());
    for task in &prepared.tasks {
        let plan = task.plan.clone();
        let id = Arc::clone(&task.target.collection);
        let streamed = match replica {
            Some(_) => CdcTable::for_replica(&task.table, plan, id),
            None => CdcTable::new(&task.table, plan, id),
        };
        let mut names = vec![(task.table.schema.clone(), task.table.name.clone(), None)];
        if task.table.kind == RelationKind::PartitionedTable {
            let leaves = partitions::leaves(replication.connection(), task.table.oid).await?;
            let columns =
                Arc::new(partitions::key_columns(replication.connection(), task.table.oid).await?);
            if plugin == OutputPlugin::Wal2Json {
                tracing::warn!(table = %task.table.qualified_name(), partitions = leaves.len(), "partitioned table with wal2json: its partitions are streamed as they are now; one attached later is not decoded until pgferry restarts, and its rows written before that are missed — restart pgferry right after attaching a partition (before writing to it), or use \"plugin\": \"pgoutput\"");
            }
            names.extend(leaves.into_iter().map(|leaf| {
                (
                    leaf.schema.clone(),
                    leaf.name.clone(),
                    Some(LeafOf {
                        leaf,
                        columns: Arc::clone(&columns),
                    }),
                )
            }));
        }
        for (schema, name, leaf) in names {
            add_tables.push(format!(
                "{}.{}",
                wal2json_table_name(&schema),
                wal2json_table_name(&name)
            ));
            let entry = match leaf {
                Some(leaf) => streamed.for_leaf(leaf),
                None => streamed.clone(),
            };
            tables.insert(&schema, &name, entry);
        }
    }
    let existing = slot_info(&mut replication, &slot).await?;
    let server_version = replication
        .connection()
        .server_version_num()
        .unwrap_or(100_000);
    // Binary values only when every selected column has a binary decoder (as in the copy).
    // A PostgreSQL destination takes text values (they parse back into any column type).
    let binary = config.source.pgoutput_binary
        && replica.is_none()
        && server_version >= 140_000
        && prepared.tasks.iter().all(|task| task.plan.decodes_binary());
    let refused = |error: PgError| match refused_plugin_message(&error, &chosen, &allow)
        .or_else(|| slots_exhausted_message(&error))
    {
        Some(message) => RunError::Unsupported(message),
        None => RunError::Source(error),
    };
    let stored = file.load()?.filter(|state| state.slot == slot);

    let (state, copy) = match (existing, stored) {
        (Some(_), Some(state)) if state.snapshot_done => (state, None),
        (None, _) => {
            // A new slot: its exported snapshot is the copy's snapshot, held open by
            // `replication` (idle) until the copy is done.
            let created = replication
                .create_logical_slot(&slot, plugin.name(), SlotSnapshot::Export, false)
                .await
                .map_err(refused)?;
            let state = CdcState::new(&slot, created.consistent_point);
            file.save(&state)?;
            tracing::info!(%slot, consistent_point = %created.consistent_point, "created the replication slot; copying under its snapshot");
            let ledger = Arc::new(ChunkLedger::new(state, file.clone()));
            let copy = copy_step(
                config,
                prepared,
                &metrics,
                created.snapshot_name,
                Some(Arc::clone(&ledger)),
            )
            .await?;
            let mut state = take_state(ledger);
            state.snapshot_done = true;
            state.chunks.clear();
            file.save(&state)?;
            (state, Some(copy))
        }
        (Some(confirmed), stored) => {
            // The slot exists but no finished copy is recorded: copy again under a fresh
            // snapshot and replay from the slot's position (the resume rule).
            let mut state = stored.unwrap_or_else(|| CdcState::new(&slot, confirmed));
            state.lsn = state.lsn.max(confirmed);
            let done: usize = state.chunks.values().map(|table| table.done.len()).sum();
            tracing::info!(%slot, from = %state.lsn, chunks_done = done, "slot found without a finished copy: copying the chunks not done under a fresh snapshot, then replaying from the slot");
            let ledger = Arc::new(ChunkLedger::new(state, file.clone()));
            let copy =
                copy_step(config, prepared, &metrics, None, Some(Arc::clone(&ledger))).await?;
            let mut state = take_state(ledger);
            state.chunks.clear();
            let after_copy: Lsn = replication
                .connection()
                .query_one("SELECT pg_current_wal_lsn()")
                .await?
                .and_then(|row| row.get(0).and_then(|lsn| lsn.parse().ok()))
                .unwrap_or(Lsn::MAX);
            state.replay_until = after_copy;
            state.snapshot_done = true;
            file.save(&state)?;
            (state, Some(copy))
        }
    };

    // `--once`, or `break_at_end_lsn: true` in the pipeline's source, makes a batch run.
    let batch = control.once || config.source.break_at_end_lsn == Some(true);
    // The insert position, not IDENTIFY_SYSTEM's flush position: a transaction committed
    // asynchronously (synchronous_commit = off) before the run started is included too.
    let stop_at = if batch {
        Some(
            replication
                .connection()
                .query_one("SELECT pg_current_wal_insert_lsn()")
                .await?
                .and_then(|row| row.get(0).and_then(|lsn| lsn.parse().ok()))
                .ok_or_else(|| {
                    RunError::Unsupported(
                        "the server did not report its WAL insert position".into(),
                    )
                })?,
        )
    } else {
        None
    };
    let decoding = match plugin {
        OutputPlugin::Wal2Json => Decoding::Wal2Json(config.source.wal2json_format),
        OutputPlugin::PgOutput => Decoding::PgOutput {
            version: if config.source.pgoutput_streaming && server_version >= 140_000 {
                ProtocolVersion::V2
            } else {
                ProtocolVersion::V1
            },
            spool_dir: {
                let mut dir = file.path().as_os_str().to_owned();
                dir.push(".spool");
                std::path::PathBuf::from(dir)
            },
        },
    };
    let plugin_options = match &decoding {
        Decoding::Wal2Json(format) => wal2json_options(*format, &add_tables),
        Decoding::PgOutput { version, .. } => {
            pgoutput_options(*version, &config.source.publication, server_version, binary)
        }
    };
    if decoding == Decoding::Wal2Json(Wal2JsonFormat::V1) {
        tracing::warn!("wal2json format-version 1: wal2json never reports TRUNCATE in this format, so a truncated table's documents stay in GDN; use format-version 2 (wal2json >= 2.0) when tables may be truncated");
    }
    let settings = CdcSettings {
        // A PostgreSQL destination commits a flush in one transaction: batch_size_rows caps it.
        flush_documents: if replica.is_some() {
            batch_size_rows.max(1)
        } else {
            batch_size_rows.max(1) * 8
        },
        flush_bytes: 16 * 1024 * 1024,
        flush_after,
        batch_size_rows,
        max_in_flight,
        wait_for_sync,
        max_retries,
        stop_at,
        numeric_mode: config.numeric_mode,
        heartbeat: config.source.heartbeat_interval,
        decoding,
    };
    let context = StreamContext {
        client: client.as_ref(),
        replica: replica.as_deref(),
        settings: &settings,
        state_file: &file,
        metrics: &metrics,
    };
    let display = spawn_stream_display(Arc::clone(&metrics));
    let mut side = SideConnection::new(options.clone());
    let mut summary = CdcSummary::default();
    let mut connection = Some(replication);
    let mut state = state;
    let mut failures = 0u32;
    let outcome = loop {
        let before = summary.confirmed;
        let attempt = async {
            let client = match connection.take() {
                Some(client) => client,
                None => ReplicationClient::connect(&options).await?,
            };
            let stream = client
                .start_logical(&slot, state.lsn, &plugin_options, STATUS_INTERVAL)
                .await
                .map_err(
                    |error| match refused_plugin_message(&error, &chosen, &allow) {
                        Some(message) => CdcError::Unsupported(message),
                        None => error.into(),
                    },
                )?;
            metrics.set_phase(crate::metrics::Phase::Streaming);
            stream_changes(
                stream,
                &mut tables,
                &mut side,
                context,
                state.clone(),
                control.shutdown.clone(),
                &mut summary,
            )
            .await
        };
        match attempt.await {
            Ok(()) => break Ok(()),
            Err(error) if error.is_transient() => {
                // Progress since the last failure resets the count: only a streak gives up.
                if summary.confirmed > before {
                    failures = 0;
                }
                failures += 1;
                let limit = config.source.max_reconnect_attempts;
                let Some(delay) = retry_delay(failures, limit) else {
                    tracing::error!(attempts = limit, "giving up after consecutive reconnects");
                    break Err(error);
                };
                tracing::warn!(%error, attempt = failures, retry_in = ?delay, resume_from = %summary.confirmed.max(state.lsn), "streaming interrupted; reconnecting");
                metrics
                    .reconnects
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                summary.reconnects += 1;
                metrics.set_phase(crate::metrics::Phase::Backoff);
                if shutdown_during(delay, &control.shutdown).await {
                    // Nothing is pending that the watermark covers: stopping here loses nothing.
                    break Ok(());
                }
                // The watermark on disk is the truth: pending changes were not confirmed and
                // come again from the slot.
                state = file
                    .load()?
                    .filter(|stored| stored.slot == slot)
                    .unwrap_or(state);
            }
            Err(error) => break Err(error),
        }
    };
    side.close().await;
    if let Some(display) = display {
        display.finish().await;
    }
    outcome.map_err(|error| RunError::Cdc(Box::new(error)))?;
    Ok(RunSummary::new(
        copy.unwrap_or_default(),
        &metrics,
        Some(summary),
        &config.destination,
    ))
}

/// The longest a streamed change waits before it is written (a shorter `batch_flush_interval`
/// wins): small enough for a sub-250 ms commit-to-GDN p99, large enough to batch.
const CDC_FLUSH_AFTER: Duration = Duration::from_millis(50);

/// How often a standby status update goes out even when nothing changed.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// Backoff before reconnect attempt `attempt` (1-based): 1 s doubling up to 30 s.
fn reconnect_delay(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

/// The backoff before trying again after `failures` failures in a row, or `None` once
/// `limit` (`max_reconnect_attempts`, 0 = no limit) is used up.
pub(crate) fn retry_delay(failures: u32, limit: u32) -> Option<Duration> {
    (limit == 0 || failures <= limit).then(|| reconnect_delay(failures))
}

/// Sleeps `delay`; `true` when a shutdown was asked for meanwhile (the caller then stops).
pub(crate) async fn shutdown_during(
    delay: Duration,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> bool {
    let mut shutdown = shutdown.clone();
    tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        changed = shutdown.changed() => changed.is_ok() && *shutdown.borrow(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_back_off_from_one_second_to_thirty() {
        let delays: Vec<u64> = (1..=8).map(|n| reconnect_delay(n).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(retry_delay(3, 3), Some(Duration::from_secs(4)));
        assert_eq!(retry_delay(4, 3), None, "the limit is used up");
        assert_eq!(
            retry_delay(40, 0),
            Some(Duration::from_secs(30)),
            "0 = forever"
        );
    }
}
