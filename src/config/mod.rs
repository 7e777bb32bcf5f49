//! Typed configuration with the old connectors' key names and clear validation errors.
//!
//! Config files are JSON objects. Keys are checked against the known set: an unknown key is an
//! error that names the closest known key ("did you mean"), because a typo in `replication_slot`
//! would otherwise silently fall back to a default. Values are accepted in the shapes the old
//! Singer configs used (a port as `5432` or `"5432"`, a flag as `true` or `"true"`). Secrets may
//! be written as `{"env": "NAME"}` to read them from the environment instead of the file.

mod connection;
mod destination;
mod error;
mod gdn_source;
mod pg_destination;
mod pg_replica;
mod pipeline;
mod publication;
mod source;
mod value;

pub use connection::{PgConnectionConfig, CONNECTION_KEYS};
pub use destination::{DestinationConfig, GdnAuth, GdnDestinationConfig, GDN_KEYS};
pub use error::ConfigError;
pub use gdn_source::{GdnSourceConfig, DEFAULT_SUBSCRIPTION_NAME};
pub use pg_destination::PgDestinationConfig;
pub use pg_replica::ReplicaDestinationConfig;
pub use pipeline::{parse_table_name, PipelineConfig, TableSelection};
pub use publication::Publications;
pub use source::{
    OutputPlugin, PgSourceConfig, PluginChoice, ReplicationMethod, Wal2JsonFormat, SOURCE_KEYS,
};
pub use value::{boolean, did_you_mean, lenient_keys, reject_unknown_keys, string, unsigned};

pub use pipeline::{GdnToPgConfig, Pipeline};

use std::path::Path;

/// Reads a JSON config file into an object, with the file name in every error.
pub fn read_json_object(
    path: &Path,
) -> Result<serde_json::Map<String, serde_json::Value>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|error| ConfigError::Json {
            path: path.display().to_string(),
            line: error.line(),
            column: error.column(),
            detail: error.to_string(),
        })?;
    match value {
        serde_json::Value::Object(map) => Ok(map),
        _ => Err(ConfigError::Invalid {
            key: "(top level)".into(),
            detail: format!("{} must hold a JSON object {{ … }}", path.display()),
        }),
    }
}
