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

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{
    parse_table_name, DestinationConfig, OutputPlugin, PipelineConfig, Wal2JsonFormat,
};
use crate::decode::pgoutput::ProtocolVersion;
use crate::destination::gdn::ChangeWriter;
use crate::destination::ChangeSink;
use crate::metrics::Metrics;
use crate::pg::catalog::{columns_with_missing_values, identity_without_key, RelationKind};
use crate::pg::partitions;
use crate::pg::query::{quote_identifier, quote_literal};
use crate::pg::replication::{ReplicationClient, SlotSnapshot};
use crate::pg::{Lsn, PgError};
use crate::pipeline::ack::Acknowledger;
use crate::pipeline::join;
use crate::pipeline::{
    copy_step, discover_selected, prepare_chosen, selected, RunControl, RunError, RunSummary,
};
use crate::progress::spawn_stream_display;
use crate::source::cdc::{
    stream_changes, wal2json_lossy_columns, wal2json_lossy_error, Acknowledge, CdcError,
    CdcSettings, CdcSummary, CdcTable, CdcTables, Decoding, LeafOf, SideConnection, StreamContext,
};
use crate::source::plugin::{pgoutput_options, wal2json_options, wal2json_table_name};
use crate::source::publication_contract::shape_table;
use crate::source::slot_setup::{
    ensure_publication, refused_plugin_message, resolve_plugin, slots_exhausted_message,
    truncates_hidden_by_root, via_root_message, wal_senders_exhausted_message, PartitionNames,
    PublicationError,
};
use crate::source::state::{CdcState, ChunkLedger, StateFile, SyncedTable};

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

/// Where an operator asks a running pipeline to copy tables again: `schema.table` lines in
/// `<state file>.resnapshot`. The running process notices it within `table_check_interval`,
/// starts again, and the new start takes the request (then removes the file).
pub fn resnapshot_request_path(state: &StateFile) -> std::path::PathBuf {
    let mut path = state.path().as_os_str().to_owned();
    path.push(".resnapshot");
    std::path::PathBuf::from(path)
}

/// The tables an operator asked to copy again (see [`resnapshot_request_path`]).
fn read_resnapshot_request(path: &std::path::Path) -> Result<Vec<String>, RunError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(str::to_owned)
            .collect()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(RunError::Unsupported(format!(
            "cannot read the resnapshot request {}: {error}\nHINT: make it readable, or remove it",
            path.display()
        ))),
    }
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
    // Tables pgferry has just added to its own publication: they join the pipeline.
    let mut added: Vec<String> = Vec::new();
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
            added = coverage
                .added
                .iter()
                .filter_map(|name| parse_table_name(name))
                .map(|(schema, table)| format!("{schema}.{table}"))
                .collect();
            let hidden = truncates_hidden_by_root(&coverage);
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
    let replica = prepared.destination.replica_writer();
    let client = prepared.destination.gdn_client();
    // The stream's one destination; its knobs are the flush's (below).
    let destination = match (&client, &replica) {
        (_, Some(replica)) => ChangeSink::Postgres(replica),
        (Some(client), None) => ChangeSink::Gdn(ChangeWriter {
            client,
            batch_size_rows,
            max_in_flight,
            wait_for_sync,
            max_retries,
        }),
        (None, None) => ChangeSink::Null,
    };
    // Each table streams under its own name and, when partitioned, under its leaf partitions'
    // names (their changes are decoded under those): all into the table's collection, and
    // wal2json is asked for every one of them. A leaf's entry knows its partition constraint,
    // so a TRUNCATE of the leaf empties only its rows.
    let mut tables = CdcTables::default();
    let mut add_tables = Vec::with_capacity(prepared.tasks.len());
    // Each task's leaf partitions (`schema.table`, sorted; empty when not partitioned).
    let mut leaf_names: Vec<Vec<String>> = Vec::with_capacity(prepared.tasks.len());
    for task in &prepared.tasks {
        leaf_names.push(Vec::new());
        let plan = task.plan.clone();
        let id = Arc::clone(&task.target.collection);
        let streamed = CdcTable::new(&task.table, destination.row_plan(&task.table, plan), id);
        let mut names = vec![(task.table.schema.clone(), task.table.name.clone(), None)];
        if task.table.kind == RelationKind::PartitionedTable {
            let leaves = partitions::leaves(replication.connection(), task.table.oid).await?;
            if let Some(names) = leaf_names.last_mut() {
                *names = leaves
                    .iter()
                    .map(|leaf| format!("{}.{}", leaf.schema, leaf.name))
                    .collect();
            }
            let columns =
                Arc::new(partitions::key_columns(replication.connection(), task.table.oid).await?);
            if plugin == OutputPlugin::Wal2Json {
                tracing::info!(table = %task.table.qualified_name(), partitions = leaves.len(), "partitioned table with wal2json: its partitions are decoded by name; one attached later is picked up at the next start or within table_check_interval, when the table is copied again");
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

    let names: Vec<String> = prepared
        .tasks
        .iter()
        .map(|task| task.target.table.to_string())
        .collect();
    let columns: Vec<Vec<String>> = prepared
        .tasks
        .iter()
        .map(|task| {
            task.table
                .columns
                .iter()
                .map(|column| column.name.clone())
                .collect()
        })
        .collect();
    // `--once`, or `break_at_end_lsn: true` in the pipeline's source, makes a batch run.
    let batch = control.once || config.source.break_at_end_lsn == Some(true);
    let (state, copy, background) = match (existing, stored) {
        (Some(_), Some(mut state)) if state.snapshot_done => {
            let oids: Vec<u32> = prepared.tasks.iter().map(|task| task.table.oid).collect();
            let defaults = columns_with_missing_values(replication.connection(), &oids).await?;
            let current = TableColumns {
                names: &names,
                columns: &columns,
                with_defaults: &defaults,
                partitions: &leaf_names,
            };
            let request = resnapshot_request_path(&file);
            let mut requested = control.resnapshot.clone();
            requested.extend(read_resnapshot_request(&request)?);
            let joining = joining_tables(&mut state, &current, &added, &requested)?;
            file.save(&state)?;
            // The request is in the state file now (kept until copied).
            if request.exists() {
                let _ = std::fs::remove_file(&request);
            }
            if !joining.iter().any(|joins| *joins) {
                (state, None, None)
            } else if batch {
                // A batch run copies first, then streams up to where it started.
                let joined = join::begin(config, prepared.only(&joining), &options)
                    .await?
                    .copy(config, &metrics)
                    .await?;
                record_joined(
                    &mut state,
                    &file,
                    (&names, &columns, &leaf_names),
                    &joining,
                    joined.copied_at,
                )?;
                (state, Some(joined.copy), None)
            } else {
                let subset = prepared.only(&joining);
                (state, None, Some((joining, subset)))
            }
        }
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
            state.tables = Some(all_copied(&names, &columns, &leaf_names));
            state.resnapshot.clear();
            file.save(&state)?;
            (state, Some(copy), None)
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
            state.tables = Some(all_copied(&names, &columns, &leaf_names));
            state.resnapshot.clear();
            file.save(&state)?;
            (state, Some(copy), None)
        }
    };

    // A table that joined streams only its changes committed at or after its copy; one whose
    // copy runs beside the stream skips them all until then.
    if let Some(known) = &state.tables {
        for table in tables.values_mut() {
            table.copied_at = known.get(table.name()).and_then(|synced| synced.copied_at);
        }
    }
    if let Some((copying, _)) = &background {
        let copying: Vec<&String> = names
            .iter()
            .zip(copying)
            .filter(|(_, copies)| **copies)
            .map(|(name, _)| name)
            .collect();
        for table in tables.values_mut() {
            table.copying = copying.iter().any(|name| *name == table.name());
        }
    }
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
    let held = state.lsn;
    let settings = CdcSettings {
        // A PostgreSQL destination commits a flush in one transaction: batch_size_rows caps it.
        // Into GDN a flush may fill every request the adaptive limit allows (at least 8): with
        // one flush in flight at a time, a link of round trip R passes at most a flush per R.
        flush_documents: if replica.is_some() {
            batch_size_rows.max(1)
        } else {
            batch_size_rows.max(1) * max_in_flight.max(8)
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
        destination: &destination,
        settings: &settings,
        metrics: &metrics,
    };
    // The watermark stays where it is until the joining tables' copy is durable: their
    // snapshot, taken beside the stream, is no older than it.
    let mut ack = Acknowledger::new(state, &file, background.as_ref().map(|_| held));
    // A run without end looks for tables that joined the selection: the stream then stops
    // cleanly and the run starts again, which copies them (see `join`).
    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    let stop_sender = Arc::new(stop_sender);
    let selection_changed = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch_selection(
        resnapshot_request_path(&file),
        config.clone(),
        names
            .iter()
            .cloned()
            .zip(leaf_names.iter().cloned())
            .collect(),
        if batch {
            None
        } else {
            config.source.table_check_interval
        },
        control.shutdown.clone(),
        Arc::clone(&stop_sender),
        Arc::clone(&selection_changed),
    ));
    let display = spawn_stream_display(Arc::clone(&metrics));
    let mut side = SideConnection::new(options.clone());
    let mut summary = CdcSummary::default();
    let mut connection = Some(replication);
    let mut failures = 0u32;
    let streaming = async {
        loop {
            let before = summary.confirmed;
            let attempt = async {
                let client = match connection.take() {
                    Some(client) => client,
                    None => ReplicationClient::connect(&options).await?,
                };
                let stream = client
                    .start_logical(&slot, ack.watermark(), &plugin_options, STATUS_INTERVAL)
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
                    &mut ack,
                    stop.clone(),
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
                    tracing::warn!(%error, attempt = failures, retry_in = ?delay, resume_from = %ack.watermark(), "streaming interrupted; reconnecting");
                    metrics
                        .reconnects
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    summary.reconnects += 1;
                    metrics.set_phase(crate::metrics::Phase::Backoff);
                    if shutdown_during(delay, &stop).await {
                        // Nothing is pending that the watermark covers: stopping here loses nothing.
                        break Ok(());
                    }
                    // Pending changes were not acknowledged: they come again from the slot,
                    // from the watermark on.
                }
                Err(error) => break Err(error),
            }
        }
    };
    // Tables joining a run without end are copied beside the stream; once the copy is durable
    // the stream stops cleanly, and the run starts again from the held watermark.
    let (outcome, joined) = match background {
        None => (streaming.await, None),
        Some((marks, subset)) => {
            // Taking the snapshot waits for transactions in progress to end: beside the
            // stream, that wait stops nothing either.
            let copying = async {
                join::begin(config, subset, &options)
                    .await?
                    .copy(config, &metrics)
                    .await
            };
            tokio::pin!(streaming);
            tokio::pin!(copying);
            tokio::select! {
                // The stream stopped first (a shutdown, an error, the selection changed again):
                // the copy is dropped with its temporary slot, and nothing of it is recorded.
                outcome = &mut streaming => (outcome, None),
                copied = &mut copying => {
                    let _ = stop_sender.send(true);
                    (streaming.await, Some((copied, marks)))
                }
            }
        }
    };
    watcher.abort();
    side.close().await;
    if let Some(display) = display {
        display.finish().await;
    }
    outcome.map_err(|error| RunError::Cdc(Box::new(error)))?;
    if let Some((joined, joining)) = joined {
        let joined = joined?;
        if joined.copied_at < held {
            return Err(RunError::Unsupported(format!(
                "the joining tables' snapshot ({}) is older than the position the stream held ({held}): their changes in between would not be streamed, so they are not recorded as copied\nHINT: this should not happen; run again (they are copied again), and report it if it repeats",
                joined.copied_at
            )));
        }
        // Recorded beside the watermark the stream left.
        let mut state = ack.into_state();
        record_joined(
            &mut state,
            &file,
            (&names, &columns, &leaf_names),
            &joining,
            joined.copied_at,
        )?;
        tracing::info!(rows = joined.copy.tables.iter().map(|table| table.rows).sum::<u64>(), copied_at = %joined.copied_at, resume_from = %state.lsn, "the joining tables are copied: streaming starts again from the held position, with their changes from the copy on");
        return Err(RunError::Cdc(Box::new(CdcError::Restart(
            "tables joined the pipeline".into(),
        ))));
    }
    if selection_changed.load(Ordering::Relaxed) {
        return Err(RunError::Cdc(Box::new(CdcError::Restart(
            "tables joined or left the selection".into(),
        ))));
    }
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

/// Records the tables `joining` marks (of the selected `(names, columns, leaf partitions)`) as
/// copied at `copied_at`, and their resnapshot requests as done, in `file`.
fn record_joined(
    state: &mut CdcState,
    file: &StateFile,
    selected: (&[String], &[Vec<String>], &[Vec<String>]),
    joining: &[bool],
    copied_at: Lsn,
) -> Result<(), RunError> {
    let known = state.tables.get_or_insert_with(Default::default);
    for ((name, synced), _) in synced_tables(selected, Some(copied_at))
        .zip(joining)
        .filter(|(_, joins)| **joins)
    {
        state.resnapshot.remove(&name);
        known.insert(name, synced);
    }
    file.save(state)?;
    Ok(())
}

/// Every table of `names` (`schema.table`) with its `columns`, as copied under the slot's
/// own snapshot.
fn all_copied(
    names: &[String],
    columns: &[Vec<String>],
    partitions: &[Vec<String>],
) -> BTreeMap<String, SyncedTable> {
    synced_tables((names, columns, partitions), None).collect()
}

/// The state file's record of each selected `(names, columns, leaf partitions)` table, copied
/// at `copied_at` (`None`: under the slot's own snapshot).
fn synced_tables<'a>(
    (names, columns, partitions): (&'a [String], &'a [Vec<String>], &'a [Vec<String>]),
    copied_at: Option<Lsn>,
) -> impl Iterator<Item = (String, SyncedTable)> + 'a {
    names
        .iter()
        .zip(columns)
        .zip(partitions)
        .map(move |((name, columns), partitions)| {
            (
                name.clone(),
                SyncedTable {
                    copied_at,
                    columns: Some(columns.clone()),
                    partitions: Some(partitions.clone()),
                },
            )
        })
}

/// The selected tables as the catalog has them now, in one order.
struct TableColumns<'a> {
    /// `schema.table` of each.
    names: &'a [String],
    /// Their columns.
    columns: &'a [Vec<String>],
    /// Their columns whose value older rows hold without a change in the WAL.
    with_defaults: &'a [Vec<String>],
    /// Their leaf partitions (empty when not partitioned).
    partitions: &'a [Vec<String>],
}

/// Which of the selected tables join the pipeline now (in `current`'s order): those the state
/// has not recorded as copied, those asked to be copied again (`--resnapshot`, or recorded in
/// the state), and those that gained a column with a default since their copy (older rows
/// hold it without a change in the WAL). Updates the state's record: tables that left the
/// selection are forgotten (their collections are kept), and a file of an earlier version,
/// which recorded no tables, counts every selected table as copied except those just `added`
/// to pgferry's publication.
fn joining_tables(
    state: &mut CdcState,
    current: &TableColumns<'_>,
    added: &[String],
    requested: &[String],
) -> Result<Vec<bool>, RunError> {
    let names = current.names;
    let mut again = Vec::with_capacity(requested.len());
    for request in requested {
        let (schema, table) = parse_table_name(request).ok_or_else(|| {
            RunError::Unsupported(format!(
                "--resnapshot {request:?} is not a table name\nHINT: write schema.table, quoted where needed (\"My Schema\".\"T\")"
            ))
        })?;
        let name = format!("{schema}.{table}");
        if !names.contains(&name) {
            return Err(RunError::Unsupported(format!(
                "--resnapshot {request}: {name} is not one of the pipeline's selected tables\nHINT: the selected tables are {}",
                names.join(", ")
            )));
        }
        again.push(name);
    }
    // Recorded, so a run that fails before the copy still copies them when it starts again.
    state.resnapshot.extend(again);
    let lsn = state.lsn;
    let known = state.tables.get_or_insert_with(|| {
        names
            .iter()
            .filter(|name| !added.contains(name))
            .map(|name| (name.clone(), SyncedTable::default()))
            .collect()
    });
    let left: Vec<String> = known
        .keys()
        .filter(|name| !names.contains(name))
        .cloned()
        .collect();
    for name in left {
        tracing::info!(table = %name, "the table left the selection: it is no longer streamed (its collection is kept)");
        known.remove(&name);
    }
    for (((name, columns), with_defaults), leaves) in names
        .iter()
        .zip(current.columns)
        .zip(current.with_defaults)
        .zip(current.partitions)
    {
        let Some(synced) = known.get_mut(name) else {
            continue;
        };
        // Once the stream has passed a joined table's copy, its position no longer matters.
        if synced.copied_at.is_some_and(|at| at <= lsn) {
            synced.copied_at = None;
        }
        match &synced.columns {
            // Columns unknown (an earlier version's file): what the catalog has now counts.
            None => synced.columns = Some(columns.clone()),
            Some(recorded) => {
                let gained: Vec<&String> = with_defaults
                    .iter()
                    .filter(|column| !recorded.contains(column))
                    .collect();
                if !gained.is_empty() {
                    tracing::info!(table = %name, columns = ?gained, "columns added with a default since the table was copied: older rows hold it without a change in the WAL, so the table is copied again");
                    state.resnapshot.insert(name.clone());
                }
            }
        }
        match &synced.partitions {
            None => synced.partitions = Some(leaves.clone()),
            Some(recorded) if recorded != leaves => {
                let attached: Vec<&String> = leaves
                    .iter()
                    .filter(|leaf| !recorded.contains(leaf))
                    .collect();
                let detached: Vec<&String> = recorded
                    .iter()
                    .filter(|leaf| !leaves.contains(leaf))
                    .collect();
                tracing::info!(table = %name, ?attached, ?detached, "partitions attached or detached since the table was copied (no row changes are written for either), so the table is copied again");
                state.resnapshot.insert(name.clone());
            }
            Some(_) => {}
        }
    }
    Ok(names
        .iter()
        .map(|name| !known.contains_key(name) || state.resnapshot.contains(name))
        .collect())
}

#[cfg(test)]
mod join_tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| (*name).to_owned()).collect()
    }

    /// Tables of columns `id, v`, none with a default kept in the catalog.
    fn plain(names: &[String]) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
        (
            names
                .iter()
                .map(|_| vec!["id".to_owned(), "v".to_owned()])
                .collect(),
            names.iter().map(|_| Vec::new()).collect(),
        )
    }

    fn no_partitions(names: &[String]) -> Vec<Vec<String>> {
        names.iter().map(|_| Vec::new()).collect()
    }

    #[test]
    fn a_partition_attached_or_detached_since_the_copy_copies_the_table_again() {
        let mut state = CdcState::new("s", Lsn::from_u64(100));
        let selected = names(&["public.p"]);
        let before = vec![names(&["public.p_1", "public.p_2"])];
        state.tables = Some(all_copied(&selected, &plain(&selected).0, &before));
        let (columns, with_defaults) = plain(&selected);
        let same = TableColumns {
            names: &selected,
            columns: &columns,
            with_defaults: &with_defaults,
            partitions: &before,
        };
        assert_eq!(
            joining_tables(&mut state, &same, &[], &[]).unwrap(),
            [false]
        );
        let detached = vec![names(&["public.p_1"])];
        let now = TableColumns {
            partitions: &detached,
            ..same
        };
        assert_eq!(joining_tables(&mut state, &now, &[], &[]).unwrap(), [true]);
    }

    fn joining(
        state: &mut CdcState,
        selected: &[&str],
        added: &[&str],
        requested: &[&str],
    ) -> Result<Vec<bool>, RunError> {
        let selected = names(selected);
        let (columns, with_defaults) = plain(&selected);
        let partitions = no_partitions(&selected);
        let current = TableColumns {
            names: &selected,
            columns: &columns,
            with_defaults: &with_defaults,
            partitions: &partitions,
        };
        joining_tables(state, &current, &names(added), &names(requested))
    }

    #[test]
    fn a_table_the_state_has_not_recorded_joins_and_one_that_left_is_forgotten() {
        let mut state = CdcState::new("s", Lsn::from_u64(100));
        let before = names(&["public.a", "public.gone"]);
        state.tables = Some(all_copied(
            &before,
            &plain(&before).0,
            &no_partitions(&before),
        ));
        assert_eq!(
            joining(&mut state, &["public.a", "public.b"], &[], &[]).unwrap(),
            [false, true]
        );
        assert!(!state.tables.as_ref().unwrap().contains_key("public.gone"));
    }

    #[test]
    fn an_earlier_state_file_counts_tables_copied_except_those_just_published() {
        let mut state = CdcState::new("s", Lsn::from_u64(100));
        assert_eq!(
            joining(&mut state, &["public.a", "public.b"], &["public.b"], &[]).unwrap(),
            [false, true]
        );
    }

    #[test]
    fn resnapshot_requests_join_again_are_recorded_and_unknown_ones_are_refused() {
        let mut state = CdcState::new("s", Lsn::from_u64(100));
        let before = names(&["public.a", "public.b"]);
        state.tables = Some(all_copied(
            &before,
            &plain(&before).0,
            &no_partitions(&before),
        ));
        assert_eq!(
            joining(&mut state, &["public.a", "public.b"], &[], &["public.b"]).unwrap(),
            [false, true]
        );
        assert!(state.resnapshot.contains("public.b"), "kept until copied");
        let error = joining(&mut state, &["public.a"], &[], &["public.x"])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("public.x is not one of the pipeline's selected tables"),
            "{error}"
        );
    }

    #[test]
    fn a_column_added_with_a_default_since_the_copy_copies_the_table_again() {
        let mut state = CdcState::new("s", Lsn::from_u64(100));
        let selected = names(&["public.a", "public.b"]);
        state.tables = Some(all_copied(
            &selected,
            &plain(&selected).0,
            &no_partitions(&selected),
        ));
        let columns = vec![names(&["id", "v", "c"]), names(&["id", "v", "d"])];
        // a's new column has a default older rows hold; b's was added without one.
        let with_defaults = vec![names(&["c"]), Vec::new()];
        let partitions = no_partitions(&selected);
        let current = TableColumns {
            names: &selected,
            columns: &columns,
            with_defaults: &with_defaults,
            partitions: &partitions,
        };
        assert_eq!(
            joining_tables(&mut state, &current, &[], &[]).unwrap(),
            [true, false]
        );
    }

    #[test]
    fn a_joined_table_s_position_is_dropped_once_the_stream_passed_it() {
        let mut state = CdcState::new("s", Lsn::from_u64(500));
        let before = names(&["public.a", "public.b"]);
        let mut known = all_copied(&before, &plain(&before).0, &no_partitions(&before));
        known.get_mut("public.b").unwrap().copied_at = Some(Lsn::from_u64(400));
        state.tables = Some(known);
        joining(&mut state, &["public.a", "public.b"], &[], &[]).unwrap();
        assert_eq!(state.tables.unwrap()["public.b"].copied_at, None);
    }
}

/// Every `every` (none: never), discovers the selection again; when it is no longer `names`
/// (tables, each with its leaf partitions), or an operator left a resnapshot `request`,
/// records that and asks the stream to stop (as a shutdown does). A shutdown is passed on.
async fn watch_selection(
    request: std::path::PathBuf,
    config: PipelineConfig,
    names: BTreeMap<String, Vec<String>>,
    every: Option<Duration>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    stop: Arc<tokio::sync::watch::Sender<bool>>,
    changed: Arc<AtomicBool>,
) {
    let mut tick = every.map(|every| {
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    let mut listening = true;
    loop {
        tokio::select! {
            answer = shutdown.changed(), if listening => {
                if answer.is_err() {
                    // Nobody can ask for a shutdown any more.
                    listening = false;
                    continue;
                }
                let _ = stop.send(true);
                return;
            }
            _ = async {
                match tick.as_mut() {
                    Some(interval) => interval.tick().await,
                    None => std::future::pending().await,
                }
            } => {
                if request.exists() {
                    tracing::info!(request = %request.display(), "tables were asked to be copied again: the stream stops cleanly and the run starts again to copy them");
                    changed.store(true, Ordering::Relaxed);
                    let _ = stop.send(true);
                    return;
                }
                match selection_now(&config).await {
                    Ok(now) if now != names => {
                        let joined: Vec<&String> =
                            now.keys().filter(|name| !names.contains_key(*name)).collect();
                        let left: Vec<&String> =
                            names.keys().filter(|name| !now.contains_key(*name)).collect();
                        let repartitioned: Vec<&String> = now
                            .iter()
                            .filter(|(name, leaves)| names.get(*name).is_some_and(|before| before != *leaves))
                            .map(|(name, _)| name)
                            .collect();
                        tracing::info!(?joined, ?left, ?repartitioned, "the selection changed (tables joined or left, partitions attached or detached): the stream stops cleanly and the run starts again to copy what changed");
                        changed.store(true, Ordering::Relaxed);
                        let _ = stop.send(true);
                        return;
                    }
                    Ok(_) => {}
                    // No tables matched, or the catalog could not be read now: try again later.
                    Err(error) => {
                        tracing::warn!(%error, "could not look for tables that joined the selection; trying again later");
                    }
                }
            }
        }
    }
}

/// The selected tables now, each with its leaf partitions (`schema.table`, sorted).
async fn selection_now(config: &PipelineConfig) -> Result<BTreeMap<String, Vec<String>>, RunError> {
    let discovered = discover_selected(&config.source, &config.tables).await?;
    let chosen = selected(&discovered, &config.tables)?;
    let mut now = BTreeMap::new();
    let mut connection: Option<crate::pg::Connection> = None;
    for (table, _) in chosen.iter().filter(|(table, _)| !table.kind.is_view()) {
        let mut leaves = Vec::new();
        if table.kind == RelationKind::PartitionedTable {
            if connection.is_none() {
                connection =
                    Some(crate::pg::Connection::connect(&config.source.connect_options()).await?);
            }
            if let Some(connection) = connection.as_mut() {
                leaves = partitions::leaves(connection, table.oid)
                    .await?
                    .iter()
                    .map(|leaf| format!("{}.{}", leaf.schema, leaf.name))
                    .collect();
            }
        }
        now.insert(format!("{}.{}", table.schema, table.name), leaves);
    }
    if let Some(connection) = connection {
        connection.close().await;
    }
    Ok(now)
}
