//! Errors of `pgferry target`: each names the input line, the stream and the column where it
//! can, and says whether running again can help.

use crate::config::ConfigError;
use crate::pg::PgError;
use crate::singer::target_postgres::batch::RowError;
use crate::singer::target_postgres::naming::TableName;
use crate::singer::target_postgres::schema::SchemaError;
use crate::singer::SingerError;

/// Why `pgferry target` stopped.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The config file is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A line is not a usable Singer message.
    #[error(transparent)]
    Input(#[from] SingerError),
    /// A RECORD arrived for a stream that had no SCHEMA yet.
    #[error("line {line}: RECORD for stream {stream:?} before its SCHEMA\nHINT: the tap must send a SCHEMA message for a stream before its records (a retry fails the same way)")]
    RecordBeforeSchema {
        /// 1-based input line.
        line: u64,
        /// The stream.
        stream: String,
    },
    /// A stream without key properties while `primary_key_required` is on.
    #[error("line {line}: stream {stream:?} has no key_properties, and primary_key_required is true\nHINT: give the source table a primary key, or set \"primary_key_required\": false to append rows without deduplication (a retry fails the same way)")]
    NoKey {
        /// 1-based input line.
        line: u64,
        /// The stream.
        stream: String,
    },
    /// A SCHEMA message the target cannot use.
    #[error("line {line}: SCHEMA of stream {stream:?}: {source}\n(fix the schema; a retry fails the same way)")]
    Schema {
        /// 1-based input line.
        line: u64,
        /// The stream.
        stream: String,
        /// What is wrong.
        source: SchemaError,
    },
    /// A record that does not fit its stream's columns.
    #[error("line {line}: stream {stream:?}, {source}\nnothing after the last committed batch was loaded, and no STATE after it was written; fix the record or the schema (a retry fails the same way)")]
    Row {
        /// 1-based input line.
        line: u64,
        /// The stream.
        stream: String,
        /// What is wrong.
        source: RowError,
    },
    /// The database could not be reached.
    #[error("{0}")]
    Connect(PgError),
    /// Creating or changing a stream's table failed.
    #[error(
        "line {line}: creating or altering table {table} for stream {stream:?} failed: {source}\n({})",
        retry_hint(source)
    )]
    Prepare {
        /// The SCHEMA's line.
        line: u64,
        /// The stream.
        stream: String,
        /// The table.
        table: TableName,
        /// The server's error.
        source: Box<PgError>,
    },
    /// Loading a batch failed; it was rolled back.
    #[error(transparent)]
    Load(Box<LoadError>),
    /// A role named to receive the old target's GRANTs does not exist.
    #[error("{key}: role {role:?} does not exist, so USAGE and SELECT cannot be granted to it\nHINT: create the role (CREATE ROLE \"{role}\" NOLOGIN) or remove it from {key}; nothing was loaded (a retry fails the same way)")]
    UnknownGrantee {
        /// The config key naming it.
        key: String,
        /// The role, as PostgreSQL names it.
        role: String,
    },
    /// A bug: an internal task failed.
    #[error("internal error: {0}\nHINT: this is a bug in pgferry; please report it with the log")]
    Internal(String),
    /// Writing STATE to stdout failed.
    #[error("could not write STATE to stdout: {0}")]
    Output(std::io::Error),
}

/// A batch that could not be loaded (and was rolled back).
#[derive(Debug, thiserror::Error)]
#[error("{}", load_message(.line, .stream, .table, .column, .lines, .source))]
pub struct LoadError {
    /// The input line of the offending record, when the server named the row.
    pub line: Option<u64>,
    /// The stream.
    pub stream: String,
    /// The table.
    pub table: TableName,
    /// The column, when the server named it.
    pub column: Option<String>,
    /// First and last input line of the batch.
    pub lines: (u64, u64),
    /// The server's error.
    pub source: PgError,
}

fn retry_hint(source: &PgError) -> &'static str {
    if source.is_transient() {
        "a retry may succeed"
    } else {
        "fix the table or the privileges first; a retry fails the same way"
    }
}

fn load_message(
    line: &Option<u64>,
    stream: &str,
    table: &TableName,
    column: &Option<String>,
    lines: &(u64, u64),
    source: &PgError,
) -> String {
    let place = match (line, column) {
        (Some(line), Some(column)) => {
            format!("line {line}: stream {stream:?}, column {column:?}: ")
        }
        (Some(line), None) => format!("line {line}: stream {stream:?}: "),
        _ => format!("stream {stream:?}: "),
    };
    let retry = if source.is_transient() {
        "a retry may succeed"
    } else {
        "fix the data or the table first; a retry fails the same way"
    };
    format!(
        "{place}loading into {table} failed: {source}\nthe batch of input lines {}–{} was rolled back and no STATE after it was written ({retry})",
        lines.0, lines.1
    )
}

impl TargetError {
    /// Whether the configuration is at fault (exit code 2) rather than the run (exit code 1).
    pub fn is_config(&self) -> bool {
        matches!(self, TargetError::Config(_))
    }
}
