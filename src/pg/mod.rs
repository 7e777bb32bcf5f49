//! The PostgreSQL wire client, hand-built on `postgres-protocol`: connections, authentication,
//! TLS, the simple query protocol, COPY streams and the replication protocol.
