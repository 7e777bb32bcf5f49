//! Reading a collection back (`pgferry verify`): its documents in `_key` order, in keyset
//! pages, as GDN stores them (`_id` and `_rev` included; the comparison decides what counts).

use crate::gdn::client::{retrying, GdnClient, GdnError};
use crate::gdn::cursor::KeysetScan;

/// The most documents a scan page asks for (pages shrink for large documents).
const SCAN_PAGE: u64 = 10_000;

/// The documents of `collection` in `_key` order, a page at a time; `None` when there is no
/// such collection (it holds no documents).
pub async fn documents<'a>(
    client: &'a GdnClient,
    collection: &str,
    max_retries: u32,
) -> Result<Option<KeysetScan<'a>>, GdnError> {
    if !retrying(max_retries, || client.has_collection(collection)).await? {
        return Ok(None);
    }
    Ok(Some(KeysetScan::new(
        client,
        collection,
        SCAN_PAGE,
        60,
        max_retries,
    )))
}
