//! The PostgreSQL wire client, hand-built on `postgres-protocol`: connections, authentication,
//! TLS, the simple query protocol, COPY streams and the replication protocol.

pub mod catalog;
pub mod conn;
pub mod copy;
pub mod error;
pub mod lsn;
pub mod partitions;
pub mod query;
pub mod replication;
pub mod tls;
mod tls_key;

pub use conn::{ConnectOptions, Connection};
pub use error::{DbError, PgError};
pub use lsn::Lsn;
pub use tls::{SslMode, TlsMaterial};
