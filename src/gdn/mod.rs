//! The GDN HTTP layer below the GDN destination and source: the client, keys, the batching
//! HTTP/2 writer, cursor scans and the change-stream consumer.

pub mod client;
pub mod concurrency;
pub mod cursor;
pub mod keys;
pub mod stream;
pub mod writer;
