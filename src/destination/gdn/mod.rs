//! GDN as a destination: rows become documents (`document`), the copy's chunks become document
//! batches (`copy`), and the stream's flushes are written as batched upserts, PATCHes and deletes that return only once GDN durably holds them.
//! `mirror` removes what a collection holds that its tables no longer have.

pub mod changes;
pub mod copy;
pub mod document;
pub mod mirror;
pub mod partitions;
pub mod read;

pub use changes::ChangeWriter;

use crate::gdn::client::GdnClient;
use crate::gdn::writer::WriterSettings;

/// A run's GDN destination as the pipeline prepared it: the connected client (every collection
/// exists) and how the writer writes.
#[derive(Clone)]
pub struct GdnTarget {
    /// The connected client.
    pub client: GdnClient,
    /// The writer's knobs (the copy's, and the retries and sync of mirroring).
    pub settings: WriterSettings,
}
