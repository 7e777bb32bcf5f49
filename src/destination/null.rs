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

/// How the copy's writer writes into nothing: many batches in flight, none waited on.
pub fn writer_settings() -> crate::gdn::writer::WriterSettings {
    crate::gdn::writer::WriterSettings {
        max_in_flight: 64,
        wait_for_sync: false,
        max_retries: 1,
        initial_backoff: std::time::Duration::from_millis(100),
    }
}
