//! `pgferry target`: a Singer target into PostgreSQL, drop-in for `macrometa-target-postgres`.
//!
//! Reads Singer messages on stdin, keeps one buffer per stream (deduplicated by key), and loads
//! each buffer with COPY into a staging table and one merge per batch, in one transaction.
//! STATE messages are echoed on stdout only once every record before them is committed.
//! The modules: `config` (keys), `naming` (stream → table), `schema` (JSON schema → columns),
//! `copy_encode` (values → COPY text), `batch` (buffers), `load` (DDL and merge),
//! `state` (STATE ordering), `run` (the loop). GDN → PostgreSQL pipelines load documents with
//! `infer` (columns inferred from documents) and `documents` (one transaction per batch).

pub mod batch;
pub mod config;
pub mod copy_binary;
pub mod copy_encode;
pub mod documents;
mod error;
pub mod infer;
pub mod load;
pub mod naming;
pub mod replica;
mod run;
pub mod schema;
pub mod state;

pub use config::{CopyFormat, SchemaEvolution, TargetConfig};
pub use error::{LoadError, TargetError};
pub use run::{run, Summary};
