//! GDN as a destination: rows become documents (`document`), the copy's chunks become document
//! batches (`copy`), and the stream's flushes are written as batched upserts, PATCHes and deletes that return only once GDN durably holds them.

pub mod changes;
pub mod copy;
pub mod document;
pub mod partitions;

pub use changes::ChangeWriter;
