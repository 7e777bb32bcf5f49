//! FULL_TABLE mirroring into GDN: each keyed collection's `_key`s are listed in keyset pages,
//! and the documents whose keys the source tables no longer have are deleted by `_key`
//! (tables sharing a collection count together, and only keys carrying one of their prefixes
//! are considered there). A keyless table's collection was emptied before its reload.

use std::collections::BTreeMap;

use crate::destination::mirror::{MirrorError, Mirrored, Removed, SourceKeys};
use crate::gdn::client::{GdnClient, DELETE_BATCH};
use crate::gdn::cursor::KeysetScan;

use super::GdnTarget;

/// Keys asked for per page while the collection's keys are read.
const KEY_PAGE: u64 = 10_000;

/// Removes from each keyed collection of `tables` the documents whose keys `source` no longer
/// has.
pub(crate) async fn remove_stale<K: SourceKeys>(
    gdn: &GdnTarget,
    tables: &[Mirrored<'_>],
    source: &mut K,
) -> Result<Removed, K::Error> {
    let (client, max_retries, wait_for_sync) = (
        &gdn.client,
        gdn.settings.max_retries,
        gdn.settings.wait_for_sync,
    );
    let mut by_collection: BTreeMap<&str, Vec<(usize, &Mirrored<'_>)>> = BTreeMap::new();
    for (index, table) in tables.iter().enumerate() {
        by_collection
            .entry(&table.target.collection)
            .or_default()
            .push((index, table));
    }
    let mut removed = Removed::default();
    for (collection, tables) in by_collection {
        // A keyless table's collection was emptied before its reload: nothing is stale.
        if tables.iter().any(|(_, table)| table.target.keyless) {
            continue;
        }
        let positions: Vec<usize> = tables.iter().map(|(index, _)| *index).collect();
        source.read_keys(&positions).await?;
        // In a collection tables share, only keys carrying one of these tables' prefixes.
        let starts: Vec<String> = tables
            .iter()
            .filter_map(|(_, table)| table.plan.key_start())
            .collect();
        let shared = tables
            .iter()
            .any(|(_, table)| table.plan.key_prefix().is_some());
        let mut scan = KeysetScan::new(client, collection, KEY_PAGE, 60, max_retries).keys();
        let mut stale: Vec<String> = Vec::new();
        let mut count = 0u64;
        while let Some(page) = scan.next_page().await.map_err(MirrorError::from)? {
            for raw in &page.documents {
                let key: String = serde_json::from_str(raw.get()).map_err(|error| {
                    MirrorError::Refused(format!(
                        "collection {collection:?} answered a key that is not a string ({error}): {}",
                        raw.get()
                    ))
                })?;
                let ours = !shared || starts.iter().any(|start| key.starts_with(start.as_str()));
                if ours && !source.has(&key) {
                    stale.push(key);
                }
            }
            if stale.len() >= DELETE_BATCH {
                count += delete(client, collection, &mut stale, max_retries, wait_for_sync).await?;
            }
        }
        count += delete(client, collection, &mut stale, max_retries, wait_for_sync).await?;
        if count > 0 {
            tracing::info!(%collection, removed = count, "removed the documents whose rows the table no longer has");
        }
        removed.per_destination.push((collection.to_owned(), count));
    }
    Ok(removed)
}

/// Deletes `keys` from `collection` (a document already gone counts as done).
async fn delete(
    client: &GdnClient,
    collection: &str,
    keys: &mut Vec<String>,
    max_retries: u32,
    wait_for_sync: bool,
) -> Result<u64, MirrorError> {
    if let Some((key, failure)) = client
        .delete_keys(collection, keys, max_retries, wait_for_sync)
        .await?
    {
        return Err(MirrorError::Refused(format!(
            "GDN refused to remove document {key:?} of {collection:?}, whose row the table no longer has: errorNum {} ({})\nHINT: set \"full_table_mirror\": false to keep such documents",
            failure.error_num, failure.message
        )));
    }
    let count = keys.len() as u64;
    keys.clear();
    Ok(count)
}
