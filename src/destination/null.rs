//! The null destination: the stream decodes, converts and coalesces as for GDN, and a flush
//! only counts what it would write (the CDC benchmark's ceiling without a network).

use std::sync::atomic::Ordering;

use super::TableChanges;
use crate::metrics::Metrics;

/// Counts one flush's documents as ingested (a key move is one upsert).
pub fn apply(changes: &[(String, TableChanges)], metrics: &Metrics) {
    let documents: usize = changes
        .iter()
        .map(|(_, changes)| {
            changes.upserts.len()
                + changes.moves.len()
                + changes.patches.len()
                + changes.deletes.len()
        })
        .sum();
    metrics
        .ingested_documents
        .fetch_add(documents as u64, Ordering::Relaxed);
}
