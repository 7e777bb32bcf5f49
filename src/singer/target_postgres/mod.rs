//! `pgferry target`: a Singer target into PostgreSQL, drop-in for `macrometa-target-postgres`.
//!
//! Reads Singer messages on stdin, keeps one buffer per stream (deduplicated by key), and loads
//! each buffer with COPY into a staging table and one merge per batch, in one transaction.
//! STATE messages are echoed on stdout only once every record before them is committed.
//! The modules: `config` (keys), `naming` (stream → table), `schema` (JSON schema → columns),
//! `copy_encode` (values → COPY text), `batch` (buffers), `load` (DDL and merge),
//! `state` (STATE ordering), `run` (the loop). GDN → PostgreSQL pipelines load documents
//! through `destination::postgres` (`infer`, `documents`), which shares the COPY encoders here.

pub mod batch;
pub mod config;
pub mod copy_binary;
pub mod copy_encode;
mod error;
pub mod load;
pub mod naming;
mod run;
pub mod schema;
pub mod state;

pub use config::{CopyFormat, SchemaEvolution, TargetConfig};
pub use error::{LoadError, TargetError};
pub use run::{run, Summary};

/// Creates `schema` unless it exists. Loads of other tables may create it at the same moment:
/// losing that race (a unique violation in the catalog) means it exists. No NOTICE is caused
/// when it exists already.
pub(crate) async fn ensure_schema(
    connection: &mut crate::pg::Connection,
    schema: &str,
) -> Result<(), crate::pg::PgError> {
    let exists = connection
        .query_one(&format!(
            "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = {}",
            crate::pg::query::quote_literal(schema)
        ))
        .await?
        .is_some();
    if exists {
        return Ok(());
    }
    match connection
        .execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            crate::pg::query::quote_identifier(schema)
        ))
        .await
    {
        Err(error) if error.code() != Some("23505") => Err(error),
        _ => Ok(()),
    }
}
