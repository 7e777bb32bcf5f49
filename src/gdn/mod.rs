//! GDN as a destination and a source: keys, batching, the HTTP/2 writer, cursor scans and the
//! change-stream consumer.

pub mod client;
pub mod concurrency;
pub mod cursor;
pub mod document;
pub mod keys;
pub mod stream;
pub mod writer;
