//! FULL_TABLE sync of one stream (also the first phase of LOG_BASED), message for message as
//! the old tap's `full_table.sync_table` / `sync_view`: a STATE carrying the new table
//! `version`, ACTIVATE_VERSION on the first run, the RECORDs with `version` and
//! `time_extracted`, a STATE every 1,000 rows carrying the last row's `xmin`, then `xmin: null`
//! and ACTIVATE_VERSION.
//!
//! Rows are read with one `COPY (SELECT …) TO STDOUT (FORMAT binary)` (the server streams them;
//! `itersize` round trips are not needed) inside a `REPEATABLE READ` transaction, optionally
//! under an exported snapshot. An interrupted copy (an `xmin` bookmark) keeps its version and
//! is read again in full: the old tap's resume filter `age(xmin) <= age(<bookmark>)` over rows
//! ordered by `xmin::text` could skip rows, and re-sending rows is harmless to targets that
//! upsert by key.

use std::io::Write;
use std::time::SystemTime;

use serde_json::Value;

use crate::decode::copy_binary::{CopyBinaryDecoder, CopyBinaryError, RowFields};
use crate::decode::value::decode;
use crate::pg::query::quote_literal;
use crate::pg::{ConnectOptions, Connection};
use crate::singer::tap::catalog::StreamPlan;
use crate::singer::tap::output::{singer_timestamp, MessageWriter};
use crate::singer::tap::state::TapState;
use crate::singer::tap::TapError;

/// Rows between two STATE messages during a copy (the old tap's `UPDATE_BOOKMARK_PERIOD`).
pub const STATE_EVERY_ROWS: u64 = 1000;

/// Milliseconds since the Unix epoch: the old tap's table version.
pub fn version_now() -> i64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// Why a row could not be written.
pub(crate) enum RowError {
    Copy(CopyBinaryError),
    Value { column: String, detail: String },
    Output(std::io::Error),
}

impl RowError {
    /// The tap's error for a row of `stream`.
    pub(crate) fn into_tap_error(self, stream: &str) -> TapError {
        match self {
            RowError::Copy(error) => TapError::Decode(format!("reading {stream}: {error}")),
            RowError::Value { column, detail } => TapError::Value {
                stream: stream.to_owned(),
                column,
                detail,
            },
            RowError::Output(error) => TapError::Output(error),
        }
    }
}

impl From<CopyBinaryError> for RowError {
    fn from(error: CopyBinaryError) -> RowError {
        RowError::Copy(error)
    }
}

/// Appends `{"col": value, …}` for one row (fields in `columns` order), under `names` when
/// given (the console's renamed attributes) instead of the column names.
pub(crate) fn write_row<R: RowFields + ?Sized>(
    plan: &StreamPlan,
    row: &R,
    names: Option<&[String]>,
    out: &mut Vec<u8>,
) -> Result<(), RowError> {
    out.push(b'{');
    for (index, column) in plan.columns.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        let name = names
            .and_then(|names| names.get(index))
            .unwrap_or(&column.name);
        crate::decode::json_out::write_string(name, out);
        out.push(b':');
        match row.field(index) {
            None => out.extend_from_slice(b"null"),
            Some(raw) => {
                let value = decode(&column.codec, raw).map_err(|error| RowError::Value {
                    column: column.name.clone(),
                    detail: error.to_string(),
                })?;
                crate::singer::tap::catalog::schema_value(&column.codec, value).write_json(out);
            }
        }
    }
    out.push(b'}');
    Ok(())
}

/// The `xmin` bookmark of a LOG_BASED first copy before its first rows: PostgreSQL's frozen
/// transaction id, older than any row.
pub const COPY_STARTED_XMIN: i64 = 2;

/// Syncs one stream in full; `snapshot` is an exported snapshot to read under (LOG_BASED's
/// first copy when pgferry created the slot).
pub async fn sync_stream<W: Write>(
    options: &ConnectOptions,
    snapshot: Option<&str>,
    plan: &StreamPlan,
    state: &mut TapState,
    out: &mut MessageWriter<W>,
    metrics: &crate::metrics::Metrics,
) -> Result<u64, TapError> {
    let stream = plan.stream.as_str();
    let is_view = plan.table.kind.is_view();
    let time_extracted = singer_timestamp(SystemTime::now());
    let first_run = state.version(stream).is_none();
    let interrupted = !is_view && state.bookmark(stream, "xmin").is_some();
    let version = match (interrupted, state.version(stream)) {
        (true, Some(version)) => version,
        _ => version_now(),
    };
    state.set_bookmark(stream, "version", Value::from(version));
    if !is_view && !interrupted && state.bookmark(stream, "lsn").is_some() {
        // A LOG_BASED first copy: its first STATE already carries `lsn`, and a run stopped
        // before the copy's end would resume by streaming from it, without the rows. An `xmin`
        // marks the copy unfinished (2, the frozen xid: older than every row, so the old tap
        // too would copy all of them again).
        state.set_bookmark(stream, "xmin", Value::from(COPY_STARTED_XMIN));
    }
    out.state(&state.value())?;
    if first_run {
        out.activate_version(stream, version)?;
    }
    if interrupted {
        tracing::info!(%stream, version, "resuming an interrupted full-table copy: reading the table again in full");
    }

    let mut connection = Connection::connect(options).await?;
    connection
        .execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    if let Some(snapshot) = snapshot {
        connection
            .execute(&format!(
                "SET TRANSACTION SNAPSHOT {}",
                quote_literal(snapshot)
            ))
            .await?;
    }
    let mut select = plan.select_list();
    if !is_view {
        select.push("xmin::text::bigint".into());
    }
    let filter = plan
        .row_filter
        .as_ref()
        .map(|filter| format!(" WHERE ({filter})"))
        .unwrap_or_default();
    let sql = format!(
        "COPY (SELECT {} FROM {}{filter}) TO STDOUT (FORMAT binary)",
        select.join(", "),
        plan.table.qualified_name()
    );
    let width = select.len();
    let mut rows = 0u64;
    let mut last_xmin: Option<i64> = None;
    let mut record = Vec::with_capacity(1024);
    {
        let mut copy = connection.copy_out(&sql).await?;
        let mut decoder = CopyBinaryDecoder::new(width);
        while let Some(data) = copy.next().await? {
            decoder
                .decode_chunk_with(data, |row| {
                    record.clear();
                    write_row(plan, row, None, &mut record)?;
                    out.record(stream, &record, Some(version), &time_extracted)
                        .map_err(RowError::Output)?;
                    rows += 1;
                    metrics
                        .rows_read
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if !is_view {
                        // `xmin::text::bigint` in binary: 8 bytes, big-endian.
                        last_xmin = row
                            .get(width - 1)
                            .and_then(|raw| <[u8; 8]>::try_from(raw).ok())
                            .map(i64::from_be_bytes);
                    }
                    if rows % STATE_EVERY_ROWS == 0 {
                        if !is_view {
                            state.set_bookmark(
                                stream,
                                "xmin",
                                last_xmin.map_or(Value::Null, Value::from),
                            );
                        }
                        out.state(&state.value()).map_err(RowError::Output)?;
                    }
                    Ok(())
                })
                .map_err(|error: RowError| error.into_tap_error(stream))?;
        }
        decoder
            .finish()
            .map_err(|error| TapError::Decode(format!("reading {stream}: {error}")))?;
    }
    let _ = connection.execute("COMMIT").await;
    connection.close().await;
    if !is_view {
        state.set_bookmark(stream, "xmin", Value::Null);
    }
    out.activate_version(stream, version)?;
    out.flush()?;
    tracing::info!(%stream, rows, "full-table copy done");
    Ok(rows)
}
