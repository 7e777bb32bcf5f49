//! Why the tap stopped, with what to fix; input errors are told apart from runtime failures so
//! the binary can exit 2 (fix the input) or 1 (the environment failed).

use crate::config::ConfigError;
use crate::pg::PgError;

/// Why `pgferry tap` (or the console commands) failed.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The config file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The catalog file cannot be used.
    #[error("catalog {path}: {detail}")]
    Catalog {
        /// The file.
        path: String,
        /// What is wrong, with the fix.
        detail: String,
    },
    /// The state file cannot be used.
    #[error("state {path}: {detail}")]
    State {
        /// The file.
        path: String,
        /// What is wrong, with the fix.
        detail: String,
    },
    /// The selection asks for something that cannot be done (e.g. LOG_BASED on a view).
    #[error("{0}")]
    Unsupported(String),
    /// PostgreSQL failed.
    #[error("PostgreSQL source: {0}")]
    Postgres(#[from] PgError),
    /// A value could not be converted.
    #[error("stream {stream}, column {column:?}: {detail}")]
    Value {
        /// The stream.
        stream: String,
        /// The column.
        column: String,
        /// The reason.
        detail: String,
    },
    /// A change from the slot could not be decoded.
    #[error("replication stream: {0}")]
    Decode(String),
    /// SIGINT/SIGTERM arrived during a copy.
    #[error("interrupted during the copy of {0}\nHINT: run again with the last STATE: the copy starts over with the same version")]
    Interrupted(String),
    /// Writing to stdout failed (the target stopped reading).
    #[error("writing Singer messages to stdout: {0}\nHINT: the program reading the tap's output stopped; see its error")]
    Output(#[from] std::io::Error),
}

impl TapError {
    /// Whether the input (config, catalog, state, selection) is at fault: exit code 2.
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            TapError::Config(_)
                | TapError::Catalog { .. }
                | TapError::State { .. }
                | TapError::Unsupported(_)
        )
    }
}
