//! The destination's side of FULL_TABLE mirroring: listing what a destination holds of the
//! copied tables and removing what their source tables no longer have. Which keys the source
//! has, and under which snapshot, is the pipeline's side (`pipeline::mirror`), asked through
//! [`SourceKeys`]; when to remove anything at all is the pipeline's rule too.

use std::future::Future;

use crate::gdn::client::GdnError;
use crate::gdn::writer::BatchTarget;
use crate::pg::copy::CopyOut;
use crate::pg::PgError;

use super::gdn::document::DocumentPlan;
use super::postgres::ReplicaError;

/// What mirroring removed, per table or collection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    /// `(collection or target table, what was removed)`.
    pub per_destination: Vec<(String, u64)>,
}

impl Removed {
    /// Everything removed.
    pub fn total(&self) -> u64 {
        self.per_destination.iter().map(|(_, count)| count).sum()
    }
}

/// A copied table as mirroring sees it, in the copy's task order: where its rows went and how
/// its document keys read (prefixes in shared collections).
#[derive(Debug, Clone, Copy)]
pub struct Mirrored<'a> {
    /// Where the copy wrote the table.
    pub target: &'a BatchTarget,
    /// The copy's plan, for its key prefix.
    pub plan: &'a DocumentPlan,
}

/// The source's current keys, as a destination asks for them while it removes stale rows; the
/// pipeline answers under the snapshot the copy ran under (or now).
pub trait SourceKeys: Send {
    /// The error of the source's side; the destination's own failures convert into it.
    type Error: From<MirrorError> + From<PgError> + Send;

    /// Reads the current document keys of the tables at `tasks` (positions in the copy's task
    /// order), replacing those read before.
    fn read_keys(
        &mut self,
        tasks: &[usize],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Whether the tables last read by [`SourceKeys::read_keys`] have the document key `key`.
    fn has(&self, key: &str) -> bool;

    /// The key `columns` of the table at `task` as COPY data (binary when `binary`), to ship
    /// beside a target table.
    fn key_rows<'s>(
        &'s mut self,
        task: usize,
        columns: &'s [String],
        binary: bool,
    ) -> impl Future<Output = Result<CopyOut<'s>, PgError>> + Send + 's;
}

/// Why the destination's side of mirroring failed.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// GDN failed while its keys were listed or removed.
    #[error(transparent)]
    Gdn(#[from] GdnError),
    /// The PostgreSQL destination failed.
    #[error(transparent)]
    Replica(Box<ReplicaError>),
    /// The destination refused a removal or holds a key pgferry cannot read, with the fix.
    #[error("{0}")]
    Refused(String),
}

impl From<ReplicaError> for MirrorError {
    fn from(error: ReplicaError) -> MirrorError {
        MirrorError::Replica(Box::new(error))
    }
}
