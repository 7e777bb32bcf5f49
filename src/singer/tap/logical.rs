//! LOG_BASED streaming of the tap: changes from the slot become RECORDs, as the old tap's
//! `logical_replication.sync_tables` printed them, with `lsn` bookmarks.
//!
//! # Format
//!
//! pgferry asks wal2json for format-version 2 by default (one message per row change,
//! `include-lsn`, `add-tables` for the selected tables), not the old tap's format-version 1 with
//! `write-in-chunks`. The output format is a per-stream option, so slots created for the old tap
//! work unchanged; version 2 gives every change its LSN and every commit its end position
//! (`nextlsn`) without depending on how chunks fall, reports TRUNCATE (version 1 drops it), and
//! is the default path of `pgferry run`. `wal2json_format_version: 1` selects the old tap's
//! chunked format (wal2json < 2.0 has only that), decoded by the same decoder as `pgferry run`'s;
//! the records are the same either way (tested against the same golden files).
//!
//! # Records and bookmarks
//!
//! INSERT and UPDATE: the synced columns present in the change, in its column order, then
//! `_sdc_deleted_at: null`; DELETE: the old key columns and `_sdc_deleted_at` = the run's
//! `time_extracted`; with `debug_lsn`, `_sdc_lsn` = the change's LSN as a decimal string. An
//! UPDATE that changed the key also emits a delete of the old key first (the old tap left the
//! old row behind). A change naming a column the stream does not know refreshes the stream from
//! the catalog and emits a new SCHEMA first, as the old tap did.
//!
//! The `lsn` bookmark is the end of the last transaction whose changes were all emitted (the
//! old tap wrote the position of a change, so a resume could repeat part of a transaction); it
//! is emitted in a STATE after every 10,000 changes (at a transaction boundary) and at the end,
//! and, when streaming without an end (`break_at_end_lsn: false`), after a second without
//! changes if it moved, so the target can confirm progress on a quiet database.
//!
//! # What is confirmed to PostgreSQL
//!
//! A Singer tap cannot know what the target made durable; only the STATE the target echoes
//! (and the orchestrator saves as the state file) says so. So the slot is confirmed up to the
//! lowest `lsn` bookmark of the state read at start, and, while streaming, up to the lowest
//! `lsn` of the state file re-read every 10 seconds (the old tap's poll), never past what this
//! run has emitted. `pgferry run` instead confirms on GDN's durable commits directly.
//!
//! With `break_at_end_lsn` (default true for the tap) the run ends once every transaction that
//! committed before the WAL position read at start has been emitted.

use crate::config::OutputPlugin;
use crate::decode::pgoutput::ProtocolVersion;
use crate::singer::tap::pgoutput_changes::{OwnedChange, PgOutputChanges};
use crate::source::plugin::{pgoutput_options, wal2json_options, wal2json_table_name};
use crate::source::plugin_choice::{AllowList, Chosen};
use crate::source::slot_setup::refused_plugin_message;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use std::sync::atomic::Ordering;

use crate::config::{PgSourceConfig, Wal2JsonFormat};
use crate::decode::replication::ReplicationMessage;
use crate::decode::text_value::from_text;
use crate::decode::wal2json::{is_skipped_change, parse_v2, Action, Change, ColumnValue};
use crate::decode::wal2json_v1::V1Decoder;
use crate::metrics::Metrics;
use crate::pg::replication::ReplicationClient;
use crate::pg::{Connection, Lsn};
use crate::singer::tap::catalog::{plan_streams, StreamPlan};
use crate::singer::tap::output::{singer_timestamp, MessageWriter};
use crate::singer::tap::state::TapState;
use crate::singer::tap::TapError;

/// Changes between two STATE messages while streaming (the old tap's period).
pub const STATE_EVERY_CHANGES: u64 = 10_000;
/// How often the state file is re-read for the position the target made durable.
const STATE_POLL: Duration = Duration::from_secs(10);
/// Streaming without an end: a quiet spell this long sends a STATE if the bookmark moved.
const IDLE_STATE: Duration = Duration::from_secs(1);

/// What streaming needs besides the streams.
#[derive(Debug, Clone)]
pub struct LogicalSettings {
    /// The slot to read.
    pub slot: String,
    /// The slot's output plugin, as chosen at start.
    pub plugin: Chosen,
    /// The server's allow-list, for the fix when it refuses the plugin.
    pub allow: AllowList,
    /// The WAL position read at start.
    pub end_lsn: Lsn,
    /// Stop once every transaction before `end_lsn` is emitted.
    pub break_at_end_lsn: bool,
    /// `max_run_seconds`: stop at the first transaction boundary after this long.
    pub max_run: Option<Duration>,
    /// `logical_poll_total_seconds`: stop after this long without a change.
    pub poll_total: Option<Duration>,
    /// The state file to poll for the target's durable position.
    pub state_path: Option<PathBuf>,
}

/// What streaming did.
#[derive(Debug, Clone, Default)]
pub struct LogicalSummary {
    /// Row changes emitted.
    pub changes: u64,
    /// The final `lsn` bookmark.
    pub lsn: Lsn,
    /// The highest position confirmed to the server.
    pub confirmed: Lsn,
}

/// Reads the slot's messages as changes, by the slot's plugin and format.
enum Decoder {
    /// wal2json format-version 1 (chunked transactions).
    Wal2JsonV1(Box<V1Decoder>),
    /// wal2json format-version 2 (one message per change).
    Wal2JsonV2,
    /// pgoutput protocol 1, text values.
    PgOutput(Box<PgOutputChanges>),
}

/// The lowest `lsn` bookmark of `streams` in `state`.
fn lowest_lsn(state: &TapState, streams: &[StreamPlan]) -> Option<Lsn> {
    streams
        .iter()
        .map(|plan| state.lsn(&plan.stream).ok().flatten())
        .collect::<Option<Vec<Lsn>>>()
        .and_then(|lsns| lsns.into_iter().min())
}

fn value_error(plan: &StreamPlan, column: &str, detail: String) -> TapError {
    TapError::Value {
        stream: plan.stream.clone(),
        column: column.to_owned(),
        detail,
    }
}

/// Appends `"name": value` for the synced columns among `columns`.
fn write_columns(
    plan: &StreamPlan,
    columns: &[ColumnValue<'_>],
    record: &mut Vec<u8>,
) -> Result<(), TapError> {
    for column in columns {
        let Some(sync) = plan.column(&column.name) else {
            continue;
        };
        if record.len() > 1 {
            record.push(b',');
        }
        crate::decode::json_out::write_string(&sync.name, record);
        record.push(b':');
        match column
            .text()
            .map_err(|detail| value_error(plan, &column.name, detail))?
        {
            None => record.extend_from_slice(b"null"),
            Some(text) => crate::singer::tap::catalog::schema_value(
                &sync.codec,
                from_text(&sync.codec, &text)
                    .map_err(|error| value_error(plan, &column.name, error.to_string()))?,
            )
            .write_json(record),
        }
    }
    Ok(())
}

/// The metadata properties every LOG_BASED record ends with.
fn finish_record(record: &mut Vec<u8>, deleted_at: Option<&str>, lsn: Option<Lsn>) {
    if record.len() > 1 {
        record.push(b',');
    }
    record.extend_from_slice(b"\"_sdc_deleted_at\":");
    match deleted_at {
        Some(at) => crate::decode::json_out::write_string(at, record),
        None => record.extend_from_slice(b"null"),
    }
    if let Some(lsn) = lsn {
        record.extend_from_slice(b",\"_sdc_lsn\":");
        crate::decode::json_out::write_string(&lsn.as_u64().to_string(), record);
    }
    record.push(b'}');
}

/// Whether an UPDATE's old key differs from its new key.
fn key_changed(plan: &StreamPlan, change: &Change<'_>) -> bool {
    if change.identity.is_empty() {
        return false;
    }
    plan.key_properties.iter().any(|key| {
        let old = change
            .identity
            .iter()
            .find(|column| column.name == key.as_str());
        let new = change
            .columns
            .iter()
            .find(|column| column.name == key.as_str());
        match (old, new) {
            (Some(old), Some(new)) => {
                old.value.map(|raw| raw.get()) != new.value.map(|raw| raw.get())
            }
            _ => false,
        }
    })
}

struct Run<'a, W: Write> {
    config: &'a PgSourceConfig,
    plans: Vec<StreamPlan>,
    state: &'a mut TapState,
    out: &'a mut MessageWriter<W>,
    time_extracted: String,
    record: Vec<u8>,
    changes: u64,
    since_state: u64,
    /// `stream.column` names a refresh did not find (dropped since): not refreshed again.
    unknown: std::collections::HashSet<String>,
    /// Leaf partitions `(schema, table)` of partitioned streams → the stream's plan.
    partitions: std::collections::HashMap<(String, String), usize>,
}

impl<W: Write> Run<'_, W> {
    fn plan_index(&self, change: &Change<'_>) -> Option<usize> {
        let (schema, table) = (change.schema.as_deref()?, change.table.as_deref()?);
        self.plans
            .iter()
            .position(|plan| plan.table.schema == schema && plan.table.name == table)
            .or_else(|| {
                self.partitions
                    .get(&(schema.to_owned(), table.to_owned()))
                    .copied()
            })
    }

    /// Re-reads a stream from the catalog after its columns changed, and says so in a SCHEMA.
    async fn refresh(&mut self, index: usize) -> Result<(), TapError> {
        let choice = self.plans[index].choice.clone();
        let mut connection = Connection::connect(&self.config.connect_options()).await?;
        let fresh = plan_streams(
            &mut connection,
            self.config,
            Some(std::slice::from_ref(&choice)),
        )
        .await;
        connection.close().await;
        if let Some(plan) = fresh?.into_iter().next() {
            tracing::info!(stream = %plan.stream, "new columns in the changes: refreshed the stream's schema");
            self.out.schema(
                &plan.stream,
                &plan.log_based_schema(self.config.debug_lsn),
                &plan.key_properties,
                &["lsn"],
            )?;
            self.plans[index] = plan;
        }
        Ok(())
    }

    async fn row(&mut self, change: &Change<'_>, at: Lsn) -> Result<(), TapError> {
        let Some(mut index) = self.plan_index(change) else {
            return Ok(());
        };
        let plan = &self.plans[index];
        let unknown: Vec<String> = if change.action == Action::Delete {
            Vec::new()
        } else {
            change
                .columns
                .iter()
                .filter(|column| {
                    !plan
                        .table
                        .columns
                        .iter()
                        .any(|known| known.name == column.name.as_ref())
                })
                .map(|column| format!("{}.{}", plan.stream, column.name))
                .filter(|name| !self.unknown.contains(name))
                .collect()
        };
        if !unknown.is_empty() {
            self.refresh(index).await?;
            index = self.plan_index(change).unwrap_or(index);
            // A column the database no longer has (dropped since the change) is skipped from
            // now on instead of refreshing again for every change.
            self.unknown.extend(unknown);
        }
        let plan = &self.plans[index];
        let Some(version) = self.state.version(&plan.stream) else {
            return Err(TapError::State {
                path: "(-s)".into(),
                detail: format!("no version bookmark for LOG_BASED stream {}\nHINT: the state is damaged; remove the stream's bookmarks to copy it again", plan.stream),
            });
        };
        let lsn = self.config.debug_lsn.then_some(at);
        let deleted_old_key = change.action == Action::Update && key_changed(plan, change);
        if change.action == Action::Delete || deleted_old_key {
            self.record.clear();
            self.record.push(b'{');
            let keys: Vec<ColumnValue<'_>> = change
                .identity
                .iter()
                .filter(|column| {
                    plan.key_properties
                        .iter()
                        .any(|key| key == column.name.as_ref())
                        || change.action == Action::Delete
                })
                .cloned()
                .collect();
            write_columns(plan, &keys, &mut self.record)?;
            finish_record(&mut self.record, Some(&self.time_extracted), lsn);
            self.out.record(
                &plan.stream,
                &self.record,
                Some(version),
                &self.time_extracted,
            )?;
        }
        if change.action != Action::Delete {
            self.record.clear();
            self.record.push(b'{');
            write_columns(plan, &change.columns, &mut self.record)?;
            finish_record(&mut self.record, None, lsn);
            self.out.record(
                &plan.stream,
                &self.record,
                Some(version),
                &self.time_extracted,
            )?;
        }
        self.changes += 1;
        self.since_state += 1;
        Ok(())
    }

    fn bookmark(&mut self, lsn: Lsn) {
        for plan in &self.plans {
            self.state
                .set_bookmark(&plan.stream, "lsn", Value::from(lsn.as_u64()));
        }
    }
}

/// Streams the LOG_BASED streams `plans` (each with an `lsn` bookmark) from the slot.
pub async fn sync<W: Write>(
    config: &PgSourceConfig,
    plans: Vec<StreamPlan>,
    state: &mut TapState,
    settings: &LogicalSettings,
    out: &mut MessageWriter<W>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    metrics: &Metrics,
) -> Result<LogicalSummary, TapError> {
    let Some(start) = lowest_lsn(state, &plans) else {
        return Err(TapError::State {
            path: "(-s)".into(),
            detail: "a LOG_BASED stream has no lsn bookmark".into(),
        });
    };
    let time_extracted = singer_timestamp(SystemTime::now());
    for plan in &plans {
        out.schema(
            &plan.stream,
            &plan.log_based_schema(config.debug_lsn),
            &plan.key_properties,
            &["lsn"],
        )?;
    }
    out.flush()?;
    let mut client = ReplicationClient::connect(&config.connect_options()).await?;
    // A partitioned table's changes come under its leaf partitions' names.
    let mut partitions = std::collections::HashMap::new();
    for (index, plan) in plans.iter().enumerate() {
        if plan.table.kind == crate::pg::catalog::RelationKind::PartitionedTable {
            for leaf in crate::pg::partitions::leaves(client.connection(), plan.table.oid).await? {
                partitions.insert((leaf.schema, leaf.name), index);
            }
        }
    }
    let add_tables: Vec<String> = plans
        .iter()
        .map(|plan| (&plan.table.schema, &plan.table.name))
        .chain(partitions.keys().map(|(schema, name)| (schema, name)))
        .map(|(schema, name)| {
            format!(
                "{}.{}",
                wal2json_table_name(schema),
                wal2json_table_name(name)
            )
        })
        .collect();
    if client
        .connection()
        .server_version_num()
        .is_some_and(|version| version >= 120_000)
    {
        client
            .connection()
            .execute(&format!(
                "SET SESSION wal_sender_timeout = {}",
                config.wal_sender_timeout_ms
            ))
            .await?;
    }
    let server_version = client.connection().server_version_num().unwrap_or(0);
    let (options, mut decoder) = match settings.plugin.plugin {
        OutputPlugin::Wal2Json => (
            wal2json_options(config.wal2json_format, &add_tables),
            match config.wal2json_format {
                Wal2JsonFormat::V1 => Decoder::Wal2JsonV1(Box::default()),
                Wal2JsonFormat::V2 => Decoder::Wal2JsonV2,
            },
        ),
        // Protocol 1 in text: a large transaction arrives whole at its commit (the server
        // spills it meanwhile), which is what a Singer tap emits anyway.
        OutputPlugin::PgOutput => (
            pgoutput_options(
                ProtocolVersion::V1,
                &config.publication,
                server_version,
                false,
            ),
            Decoder::PgOutput(Box::default()),
        ),
    };
    tracing::info!(slot = %settings.slot, from = %start, end = %settings.end_lsn, "requesting WAL streaming");
    // The stream starts confirmed at `start`: what the state read at start covers.
    let mut stream = client
        .start_logical(&settings.slot, start, &options, STATE_POLL)
        .await
        .map_err(|error| {
            match refused_plugin_message(&error, &settings.plugin, &settings.allow) {
                Some(message) => TapError::Unsupported(message),
                None => TapError::Postgres(error),
            }
        })?;
    metrics
        .confirmed_lsn
        .store(start.as_u64(), Ordering::Relaxed);
    let mut run = Run {
        config,
        plans,
        state,
        out,
        time_extracted,
        record: Vec::with_capacity(1024),
        changes: 0,
        since_state: 0,
        unknown: std::collections::HashSet::new(),
        partitions,
    };
    let mut committed = start;
    let mut emitted = start;
    let mut in_transaction = false;
    let mut idle_probe = tokio::time::interval(Duration::from_millis(250));
    idle_probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + STATE_POLL, STATE_POLL);
    let mut messages = 0u64;
    let mut messages_at_tick = 0u64;
    let mut probed = false;
    let mut idle = tokio::time::interval(IDLE_STATE);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut messages_at_idle = 0u64;
    // pipelinewise's bounds: the whole run, and the time without data.
    let started = tokio::time::Instant::now();
    let far = started + Duration::from_secs(100 * 365 * 86_400);
    let run_deadline = settings
        .max_run
        .and_then(|bound| started.checked_add(bound))
        .map_or(far, |deadline| deadline.min(far));
    let mut last_data = started;
    let mut bound_reached: Option<&'static str> = None;
    loop {
        if settings.break_at_end_lsn && !in_transaction && committed >= settings.end_lsn {
            tracing::info!(lsn = %committed, end = %settings.end_lsn, "caught up with the WAL position read at start");
            break;
        }
        if let (Some(why), false) = (bound_reached, in_transaction) {
            tracing::info!(lsn = %committed, "stopping: {why}");
            break;
        }
        let poll_deadline = settings
            .poll_total
            .and_then(|bound| last_data.checked_add(bound))
            .map_or(far, |deadline| deadline.min(far));
        let message = tokio::select! {
            biased;
            () = tokio::time::sleep_until(run_deadline), if bound_reached.is_none() && settings.max_run.is_some() => {
                bound_reached = Some("max_run_seconds reached");
                continue;
            }
            () = tokio::time::sleep_until(poll_deadline), if bound_reached.is_none() && settings.poll_total.is_some() => {
                bound_reached = Some("logical_poll_total_seconds without a change");
                continue;
            }
            changed = shutdown.changed() => {
                if changed.is_ok() && *shutdown.borrow() && !in_transaction {
                    break;
                }
                if changed.is_err() {
                    // Nobody can ask for a stop any more: keep streaming.
                    shutdown = tokio::sync::watch::channel(false).1;
                }
                continue;
            }
            _ = poll.tick() => {
                if let Some(path) = &settings.state_path {
                    let durable = std::fs::read_to_string(path)
                        .ok()
                        .and_then(|text| TapState::parse(&text).ok())
                        .and_then(|saved| lowest_lsn(&saved, &run.plans));
                    if let Some(durable) = durable.filter(|lsn| *lsn > stream.confirmed() && *lsn <= emitted) {
                        tracing::info!(lsn = %durable, "the state file covers more: confirming it to the server");
                        stream.confirm(durable);
                        stream.send_status(false).await?;
                        metrics.confirmed_lsn.store(durable.as_u64(), Ordering::Relaxed);
                    }
                }
                continue;
            }
            _ = idle.tick(), if !settings.break_at_end_lsn => {
                // Without an end, the target hears of progress when the stream goes quiet.
                if messages == messages_at_idle && !in_transaction && committed > emitted {
                    run.bookmark(committed);
                    emitted = committed;
                    run.out.state(&run.state.value())?;
                    run.since_state = 0;
                }
                messages_at_idle = messages;
                continue;
            }
            _ = idle_probe.tick(), if settings.break_at_end_lsn => {
                if messages != messages_at_tick {
                    probed = false;
                } else if !probed {
                    run.out.flush()?;
                    stream.send_status(true).await?;
                    probed = true;
                }
                messages_at_tick = messages;
                continue;
            }
            message = stream.next() => message?,
        };
        messages += 1;
        for warning in stream.take_warnings() {
            if is_skipped_change(&warning.message) {
                return Err(TapError::Decode(crate::source::cdc::skipped_change_error(
                    &warning.message,
                    committed,
                )));
            }
        }
        match message {
            None => {
                return Err(TapError::Decode(
                    "the server ended the replication stream\nHINT: run the tap again; it resumes from the state".into(),
                ))
            }
            Some(ReplicationMessage::PrimaryKeepalive(keepalive)) => {
                tracing::trace!(wal_end = %keepalive.wal_end, %committed, in_transaction, "keepalive");
                if !in_transaction && keepalive.wal_end > committed {
                    // Everything before it was sent: nothing of ours is pending.
                    committed = keepalive.wal_end;
                }
            }
            Some(ReplicationMessage::XLogData(xlog)) => {
                last_data = tokio::time::Instant::now();
                let mut owned = Vec::new();
                let mut changes = Vec::with_capacity(1);
                match &mut decoder {
                    Decoder::Wal2JsonV1(decoder) => decoder
                        .decode(&xlog.data, xlog.wal_start, &mut changes)
                        .map_err(|error| TapError::Decode(error.to_string()))?,
                    Decoder::Wal2JsonV2 => changes.push(
                        parse_v2(&xlog.data, xlog.wal_start)
                            .map_err(|error| TapError::Decode(error.to_string()))?,
                    ),
                    Decoder::PgOutput(decoder) => {
                        decoder
                            .decode(&xlog.data, xlog.wal_start, &mut owned)
                            .map_err(|error| TapError::Decode(error.to_string()))?;
                        changes.extend(owned.iter().map(OwnedChange::as_change));
                    }
                }
                for change in &changes {
                    tracing::trace!(action = ?change.action, at = %xlog.wal_start, "change");
                    match change.action {
                        Action::Begin => in_transaction = true,
                        Action::Commit => {
                            in_transaction = false;
                            committed = committed.max(change.next_lsn.unwrap_or(xlog.wal_start));
                            if run.since_state >= STATE_EVERY_CHANGES {
                                run.bookmark(committed);
                                emitted = committed;
                                run.out.state(&run.state.value())?;
                                run.since_state = 0;
                            } else {
                                run.out.flush()?;
                            }
                        }
                        Action::Insert | Action::Update | Action::Delete => {
                            // Format 1 has no per-change LSN: a chunk starts at its change.
                            let at = change.lsn.unwrap_or(xlog.wal_start);
                            run.row(change, at).await?;
                            metrics.changes.fetch_add(1, Ordering::Relaxed);
                        }
                        Action::Truncate => {
                            if run.plan_index(change).is_some() {
                                tracing::warn!(table = ?change.table, "TRUNCATE is not carried by Singer messages: the target keeps the rows; run a FULL_TABLE sync of the stream to clear them");
                            }
                        }
                        Action::Message => {}
                    }
                }
            }
        }
    }
    let confirmed = stream.confirmed();
    let _ = stream.stop().await;
    run.bookmark(committed);
    run.out.state(&run.state.value())?;
    Ok(LogicalSummary {
        changes: run.changes,
        lsn: committed,
        confirmed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_end_with_the_metadata_properties() {
        let mut record = b"{\"id\":1".to_vec();
        finish_record(&mut record, None, Some(Lsn::from_u64(42)));
        assert_eq!(
            String::from_utf8(record).unwrap(),
            r#"{"id":1,"_sdc_deleted_at":null,"_sdc_lsn":"42"}"#
        );
        let mut empty = b"{".to_vec();
        finish_record(&mut empty, Some("2024-01-01T00:00:00.000000Z"), None);
        assert_eq!(
            String::from_utf8(empty).unwrap(),
            r#"{"_sdc_deleted_at":"2024-01-01T00:00:00.000000Z"}"#
        );
    }
}
