//! GDN as a destination: rows become documents (`document`), and the stream's flushes are
//! written as batched upserts, PATCHes and deletes that return only once GDN durably holds them.

pub mod changes;
pub mod document;
pub mod partitions;

pub use changes::ChangeWriter;
