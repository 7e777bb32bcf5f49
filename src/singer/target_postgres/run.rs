//! The target's loop: read lines, buffer records per stream, load on size, SCHEMA, timer and
//! end of input, and release STATE once what precedes it is committed.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::pg::Connection;
use crate::singer::target_postgres::batch::{Pushed, StreamBatch};
use crate::singer::target_postgres::config::{CopyFormat, TargetConfig};
use crate::singer::target_postgres::error::{LoadError, TargetError};
use crate::singer::target_postgres::load::{
    load_batch, metadata_as_text, prepare_table, LoadFailure, LoadPath, TableExtras, TableState,
};
use crate::singer::target_postgres::naming::{split_stream, table_name, target_table};
use crate::singer::target_postgres::schema::StreamSchema;
use crate::singer::target_postgres::state::StateTracker;
use crate::singer::{parse_line, LineReader, Message, SchemaMessage};

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// RECORD messages read.
    pub records: u64,
    /// Rows loaded (after deduplication by key).
    pub rows: u64,
    /// Batches committed.
    pub batches: u64,
    /// STATE lines written.
    pub states: u64,
}

struct Stream {
    schema: StreamSchema,
    table: TableState,
    batch: StreamBatch,
    /// The connection slot that loads this stream (its staging table lives in that session).
    slot: usize,
    /// Batches to merge before trying a direct COPY again (after one met existing keys).
    direct_backoff: u32,
    /// Delete records that had no `_sdc_deleted_at` column to go to.
    unapplied_deletes: u64,
}

/// Batches merged through staging after a direct COPY met an existing key.
const DIRECT_BACKOFF_BATCHES: u32 = 8;

/// A batch being loaded by its own task, which owns the slot's connection meanwhile.
struct InFlight {
    slot: usize,
    stream: String,
    first_seq: Option<u64>,
    handle: tokio::task::JoinHandle<LoadJob>,
}

/// What a load task hands back: the connection, the batch (to reuse its buffers), the result.
struct LoadJob {
    connection: Connection,
    batch: StreamBatch,
    result: Result<(u64, LoadPath), LoadFailure>,
}

/// One of the target's connections.
enum Slot {
    /// Not opened yet (opened when a stream first needs it).
    Unopened,
    /// Ready.
    Idle(Box<Connection>),
    /// A load task holds it.
    Busy,
}

struct Target<'a> {
    config: &'a TargetConfig,
    /// `parallelism` connections; each stream is loaded by one of them, so batches of
    /// different streams commit concurrently while each stream's batches stay in order.
    slots: Vec<Slot>,
    /// Slot for the next new stream (round robin).
    next_slot: usize,
    in_flight: Vec<InFlight>,
    spare: Vec<StreamBatch>,
    /// A load failed: no STATE may be released any more (its rows are not committed).
    failed: bool,
    streams: HashMap<String, Stream>,
    states: StateTracker,
    output: &'a mut (dyn Write + Send),
    summary: Summary,
    staging_tables: usize,
    last_flush: Instant,
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` for `_sdc_batched_at`.
pub(crate) fn utc_timestamp(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    let (year, month, day) = crate::decode::civil::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_micros()
    )
}

impl Target<'_> {
    fn oldest_pending(&self) -> Option<u64> {
        self.streams
            .values()
            .filter_map(|stream| stream.batch.first_seq())
            .chain(self.in_flight.iter().filter_map(|load| load.first_seq))
            .min()
    }

    fn pending(&self) -> bool {
        self.streams.values().any(|stream| !stream.batch.is_empty())
    }

    fn release_states(&mut self) -> Result<(), TargetError> {
        if self.failed {
            return Ok(());
        }
        if let Some(value) = self.states.release(self.oldest_pending()) {
            self.output
                .write_all(value.as_bytes())
                .and_then(|()| self.output.write_all(b"\n"))
                .and_then(|()| self.output.flush())
                .map_err(TargetError::Output)?;
            self.summary.states += 1;
        }
        Ok(())
    }

    /// Waits for every batch in flight, takes the connections back, and releases STATE.
    async fn join(&mut self) -> Result<(), TargetError> {
        let mut first_error = None;
        while let Some(load) = self.in_flight.pop() {
            if let Err(error) = self.finish(load).await {
                first_error.get_or_insert(error);
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Waits for the batch in flight on `slot`, if any.
    async fn join_slot(&mut self, slot: usize) -> Result<(), TargetError> {
        match self.in_flight.iter().position(|load| load.slot == slot) {
            Some(index) => {
                let load = self.in_flight.swap_remove(index);
                self.finish(load).await
            }
            None => Ok(()),
        }
    }

    /// Waits for one load, takes its connection back, and releases STATE.
    async fn finish(&mut self, load: InFlight) -> Result<(), TargetError> {
        let job = match load.handle.await {
            Ok(job) => job,
            Err(error) => {
                self.failed = true;
                return Err(TargetError::Internal(format!(
                    "the load task failed: {error}"
                )));
            }
        };
        self.slots[load.slot] = Slot::Idle(Box::new(job.connection));
        let stream = self.streams.get_mut(&load.stream);
        match job.result {
            Ok((rows, path)) => {
                tracing::debug!(stream = load.stream, rows, ?path, "batch committed");
                self.summary.rows += rows;
                self.summary.batches += 1;
                if let (LoadPath::DirectThenMerged, Some(stream)) = (path, stream) {
                    stream.direct_backoff = DIRECT_BACKOFF_BATCHES;
                }
                let mut batch = job.batch;
                batch.clear();
                self.spare.push(batch);
            }
            Err(failure) => {
                self.failed = true;
                let line = failure
                    .row
                    .and_then(|row| job.batch.rows().nth(row))
                    .map(|row| row.line);
                let column = failure.column.map(|column| {
                    stream
                        .as_ref()
                        .and_then(|stream| {
                            stream
                                .schema
                                .columns
                                .iter()
                                .find(|candidate| candidate.name == column)
                        })
                        .map_or(column, |found| found.property.clone())
                });
                let table = stream
                    .map(|stream| stream.table.name.clone())
                    .unwrap_or_else(|| crate::singer::target_postgres::naming::TableName {
                        schema: String::new(),
                        table: load.stream.clone(),
                    });
                return Err(TargetError::Load(Box::new(LoadError {
                    line,
                    stream: load.stream,
                    table,
                    column,
                    lines: job.batch.line_range(),
                    source: failure.error,
                })));
            }
        }
        self.release_states()
    }

    /// The connection of `slot`, once no load holds it (opened on first use).
    async fn connection(&mut self, slot: usize) -> Result<&mut Connection, TargetError> {
        self.join_slot(slot).await?;
        if matches!(self.slots[slot], Slot::Unopened) {
            self.slots[slot] = Slot::Idle(Box::new(open_connection(self.config).await?));
        }
        match &mut self.slots[slot] {
            Slot::Idle(connection) => Ok(connection),
            _ => Err(TargetError::Internal(
                "a connection was lost by a load task".into(),
            )),
        }
    }

    /// Starts loading a stream's pending rows on its slot's connection; the slot's previous
    /// load finishes first. The rows count as pending (for STATE) until they commit.
    async fn flush_stream(&mut self, name: &str) -> Result<(), TargetError> {
        let Some(slot) = self
            .streams
            .get(name)
            .filter(|stream| !stream.batch.is_empty())
            .map(|stream| stream.slot)
        else {
            return Ok(());
        };
        self.connection(slot).await?;
        let Slot::Idle(connection) = std::mem::replace(&mut self.slots[slot], Slot::Busy) else {
            return Err(TargetError::Internal(
                "a connection was lost by a load task".into(),
            ));
        };
        let Some(stream) = self.streams.get_mut(name) else {
            self.slots[slot] = Slot::Idle(connection);
            return Ok(());
        };
        let mut connection = *connection;
        if !stream.batch.metadata_not_timestamp().is_empty() {
            let positions = stream.batch.metadata_not_timestamp().to_vec();
            if let Err(source) =
                metadata_as_text(&mut connection, &mut stream.table, &positions).await
            {
                self.slots[slot] = Slot::Idle(Box::new(connection));
                return Err(TargetError::Prepare {
                    line: stream.batch.line_range().0,
                    stream: name.to_owned(),
                    table: stream.table.name.clone(),
                    source: Box::new(source),
                });
            }
        }
        let batch = std::mem::replace(&mut stream.batch, self.spare.pop().unwrap_or_default());
        let table = stream.table.clone();
        let try_direct = stream.direct_backoff == 0;
        stream.direct_backoff = stream.direct_backoff.saturating_sub(1);
        let hard_delete = self.config.hard_delete;
        let binary = self.config.copy_format == CopyFormat::Auto;
        let first_seq = batch.first_seq();
        let handle = tokio::spawn(async move {
            let result = load_batch(
                &mut connection,
                &table,
                &batch,
                hard_delete,
                try_direct,
                binary,
            )
            .await;
            LoadJob {
                connection,
                batch,
                result,
            }
        });
        self.in_flight.push(InFlight {
            slot,
            stream: name.to_owned(),
            first_seq,
            handle,
        });
        self.last_flush = Instant::now();
        Ok(())
    }

    /// Loads every stream's pending rows and waits until they are committed.
    async fn flush_all(&mut self) -> Result<(), TargetError> {
        let mut names: Vec<(u64, String)> = self
            .streams
            .iter()
            .filter_map(|(name, stream)| stream.batch.first_seq().map(|seq| (seq, name.clone())))
            .collect();
        names.sort_unstable();
        for (_, name) in names {
            self.flush_stream(&name).await?;
        }
        self.join().await?;
        self.last_flush = Instant::now();
        self.release_states()
    }

    async fn on_schema(&mut self, message: SchemaMessage, line: u64) -> Result<(), TargetError> {
        if self
            .streams
            .get(&message.stream)
            .is_some_and(|stream| !stream.batch.is_empty())
        {
            if self.config.flush_all_streams {
                self.flush_all().await?;
            } else {
                self.flush_stream(&message.stream).await?;
            }
        }
        if message.key_properties.is_empty() && self.config.primary_key_required {
            return Err(TargetError::NoKey {
                line,
                stream: message.stream,
            });
        }
        let metadata = self.config.add_metadata_columns || self.config.hard_delete;
        let schema = StreamSchema::flattened(
            &message.schema,
            &message.property_order,
            &message.key_properties,
            metadata,
            self.config.data_flattening_max_level,
        )
        .map_err(|source| TargetError::Schema {
            line,
            stream: message.stream.clone(),
            source,
        })?;
        let name = target_table(&message.stream, self.config);
        if let Some(stream) = self.streams.get(&message.stream) {
            if stream.schema == schema && stream.table.name == name {
                return Ok(());
            }
        }
        let (staging, recreate_staging, slot) = match self.streams.get(&message.stream) {
            Some(stream) => (stream.table.staging.clone(), true, stream.slot),
            None => {
                self.staging_tables += 1;
                let slot = self.next_slot % self.slots.len();
                self.next_slot += 1;
                (
                    format!("pgferry_stage_{}", self.staging_tables),
                    false,
                    slot,
                )
            }
        };
        let config = self.config;
        let (source_schema, source_table) = split_stream(&message.stream);
        let extras = TableExtras {
            grantees: config.grantees(source_schema),
            indices: config.indices(source_schema, &table_name(&source_table)),
        };
        let table = prepare_table(
            self.connection(slot).await?,
            &schema,
            &name,
            config.schema_evolution,
            &staging,
            recreate_staging,
            extras,
        )
        .await
        .map_err(|source| TargetError::Prepare {
            line,
            stream: message.stream.clone(),
            table: name.clone(),
            source: Box::new(source),
        })?;
        for change in &table.changes {
            tracing::info!(stream = %message.stream, "{change}");
        }
        let (batch, direct_backoff, unapplied_deletes) = self
            .streams
            .remove(&message.stream)
            .map(|stream| {
                (
                    stream.batch,
                    stream.direct_backoff,
                    stream.unapplied_deletes,
                )
            })
            .unwrap_or_default();
        self.streams.insert(
            message.stream,
            Stream {
                schema,
                table,
                batch,
                slot,
                direct_backoff,
                unapplied_deletes,
            },
        );
        Ok(())
    }
}

/// Runs the target: Singer messages from `input`, STATE lines to `output`.
pub async fn run<R: Read + Send + 'static>(
    config: &TargetConfig,
    input: R,
    output: &mut (dyn Write + Send),
) -> Result<Summary, TargetError> {
    // The first connection at once: a wrong address or password fails before any input.
    let mut slots: Vec<Slot> = (0..config.parallelism.max(1))
        .map(|_| Slot::Unopened)
        .collect();
    let mut first = open_connection(config).await?;
    check_grantees(&mut first, config).await?;
    slots[0] = Slot::Idle(Box::new(first));
    let mut target = Target {
        config,
        slots,
        next_slot: 0,
        in_flight: Vec::new(),
        spare: Vec::new(),
        failed: false,
        streams: HashMap::new(),
        states: StateTracker::default(),
        output,
        summary: Summary::default(),
        staging_tables: 0,
        last_flush: Instant::now(),
    };
    let flush_every = config
        .batch_flush_interval
        .max(config.batch_flush_min_time_gap)
        .max(Duration::from_millis(1));
    let mut reader = LineReader::spawn(input);
    let mut records = 0u64;
    if let Err(error) = process(&mut target, &mut reader, &mut records, flush_every).await {
        // Let a batch already in flight finish, so that what committed is known and the STATEs
        // it covers are written; the first error is the one reported.
        let _ = target.join().await;
        return Err(error);
    }
    for (name, stream) in &target.streams {
        if stream.unapplied_deletes > 0 {
            tracing::warn!(
                stream = %name,
                count = stream.unapplied_deletes,
                "delete records left their rows unchanged (the table has no _sdc_deleted_at column)"
            );
        }
    }
    target.summary.records = records;
    let summary = target.summary.clone();
    for slot in std::mem::take(&mut target.slots) {
        if let Slot::Idle(connection) = slot {
            connection.close().await;
        }
    }
    Ok(summary)
}

/// Refuses a config granting to a role that does not exist, before anything is created (the
/// old target failed on its GRANT, after creating the schema).
async fn check_grantees(
    connection: &mut Connection,
    config: &TargetConfig,
) -> Result<(), TargetError> {
    for (key, role) in config.all_grantees() {
        let role = crate::singer::target_postgres::naming::folded_identifier(&role);
        let exists = connection
            .query_one(&format!(
                "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = {}",
                crate::pg::query::quote_literal(&role)
            ))
            .await
            .map_err(TargetError::Connect)?
            .is_some();
        if !exists {
            return Err(TargetError::UnknownGrantee { key, role });
        }
    }
    Ok(())
}

/// A connection for loading.
async fn open_connection(config: &TargetConfig) -> Result<Connection, TargetError> {
    let mut connection = Connection::connect(&config.connection.destination_options())
        .await
        .map_err(TargetError::Connect)?;
    // Staging tables are temp tables: keep a batch of them in memory rather than in temp files
    // (only settable before the session's first temp table).
    connection
        .execute("SET temp_buffers = '128MB'")
        .await
        .map_err(TargetError::Connect)?;
    Ok(connection)
}

/// The loop over the input: everything up to the final commit.
async fn process(
    target: &mut Target<'_>,
    reader: &mut LineReader,
    records: &mut u64,
    flush_every: Duration,
) -> Result<(), TargetError> {
    let config = target.config;
    loop {
        let block = if target.pending() || !target.in_flight.is_empty() {
            let deadline = target.last_flush + flush_every;
            tokio::select! {
                block = reader.next() => block,
                () = tokio::time::sleep_until(deadline) => {
                    target.flush_all().await?;
                    continue;
                }
            }
        } else {
            reader.next().await
        };
        let Some(block) = block else { break };
        let block = block?;
        let batched_at = utc_timestamp(SystemTime::now());
        for (line, text) in block.lines() {
            match parse_line(text, line)? {
                Message::Record(record) => {
                    *records += 1;
                    let Some(stream) = target.streams.get_mut(record.stream.as_ref()) else {
                        return Err(TargetError::RecordBeforeSchema {
                            line,
                            stream: record.stream.into_owned(),
                        });
                    };
                    let pushed = stream
                        .batch
                        .push(
                            &stream.schema,
                            &record,
                            line,
                            *records,
                            config.validate_records,
                            !config.hard_delete,
                            &batched_at,
                        )
                        .map_err(|source| TargetError::Row {
                            line,
                            stream: record.stream.to_string(),
                            source,
                        })?;
                    if pushed == Pushed::DeleteWithoutColumn {
                        stream.unapplied_deletes += 1;
                        if stream.unapplied_deletes == 1 {
                            tracing::warn!(
                                stream = %record.stream,
                                line,
                                "a delete record (non-null _sdc_deleted_at) for a table without an _sdc_deleted_at column: the row is left unchanged; set \"hard_delete\": true to delete rows, or \"add_metadata_columns\": true to record the deletion time"
                            );
                        }
                        continue;
                    }
                    if stream.batch.received() >= config.batch_size_rows {
                        if config.flush_all_streams {
                            target.flush_all().await?;
                        } else {
                            target.flush_stream(record.stream.as_ref()).await?;
                        }
                    }
                }
                Message::Schema(schema) => target.on_schema(schema, line).await?,
                Message::State(value) => {
                    target.states.push(*records, value.get().to_owned());
                    if !target.pending() {
                        target.release_states()?;
                    }
                }
                Message::ActivateVersion { stream, version } => {
                    tracing::info!(
                        stream,
                        version = version.map(|raw| raw.get()).unwrap_or("null"),
                        "ACTIVATE_VERSION accepted: rows are upserted by key, so rows missing from the new version are kept (not deleted)"
                    );
                }
            }
        }
        if target.pending() && target.last_flush.elapsed() >= flush_every {
            target.flush_all().await?;
        }
    }
    target.flush_all().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_rfc3339() {
        let time = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(utc_timestamp(time), "2023-11-14T22:13:20.123456Z");
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc_timestamp(leap), "2000-02-29T00:00:00.000000Z");
    }
}
