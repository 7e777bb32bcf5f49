//! GDN as a destination and a source: keys, batching, the HTTP/2 writer, readers.

pub mod client;
pub mod document;
pub mod keys;
pub mod writer;
