//! Collection scans in keyset pages: each page is one cursor query,
//! `FOR d IN @@collection FILTER d._key > @after SORT d._key LIMIT @count RETURN d`
//! (`batchSize` = `count`, so one answer holds it; a server that still splits it is read on
//! with `PUT /_api/cursor/{id}`), starting after the last key of the page before.
//!
//! Why pages of their own rather than one cursor: a cursor's page size is fixed when it is
//! created, and a page whose answer is lost cannot be asked for again. A keyset page can be:
//! asking for it again, or for fewer documents, is harmless. So the page size follows the
//! documents' sizes — it shrinks when an answer is larger than the client reads
//! ([`GdnError::TooLarge`], never retried as a network failure), stays at what fits about
//! [`PAGE_BYTES_TARGET`], and grows back while pages stay small — and a page that failed on
//! the network is asked for again instead of the scan starting over.
//!
//! The pages are not one snapshot: a document written during the scan may be read or not. The
//! caller subscribes to the collection's change stream first, so every such write is also a
//! stream message, applied after the scan (the last change of a key is its state).

use bytes::Bytes;
use hyper::Method;
use serde_json::value::RawValue;

use crate::gdn::client::{encode_path_segment, retrying, GdnClient, GdnError, MAX_RESPONSE_BYTES};

/// The answer size a scan page aims at: small enough that a few pages in flight stay well
/// inside the memory budget, large enough that small documents come 1,000 to a page.
pub const PAGE_BYTES_TARGET: usize = 4 << 20;

/// The most a page of several documents may take: a larger answer stops arriving here and
/// the page is asked for again with fewer documents, so finding out costs at most this much
/// memory. A page of one document may take up to [`MAX_RESPONSE_BYTES`].
const PAGE_BYTES_LIMIT: usize = 4 * PAGE_BYTES_TARGET;

/// What the first page asks for (at most): pages grow twofold from here while they stay
/// small, so a collection of large documents is not first asked for in one huge answer.
const FIRST_PAGE: u64 = 16;

/// The keyset page query.
const PAGE_QUERY: &str =
    "FOR d IN @@collection FILTER d._key > @after SORT d._key LIMIT @count RETURN d";
/// The keyset page query for keys only.
const KEYS_QUERY: &str =
    "FOR d IN @@collection FILTER d._key > @after SORT d._key LIMIT @count RETURN d._key";

/// One answer of the cursor API: documents (or keys) as raw JSON, and whether more follow.
#[derive(Debug, serde::Deserialize)]
struct Answer {
    result: Vec<Box<RawValue>>,
    #[serde(rename = "hasMore")]
    has_more: bool,
    id: Option<String>,
}

/// A page of a scan: the documents (or keys) and the bytes of the answers they came in.
#[derive(Debug)]
pub struct ScanPage {
    /// The documents (with [`KeysetScan::keys`], the keys as JSON strings), in key order.
    pub documents: Vec<Box<RawValue>>,
    /// The size of the answers they came in.
    pub bytes: usize,
}

/// A collection scan in keyset pages whose size follows the documents' sizes.
#[derive(Debug)]
pub struct KeysetScan<'a> {
    client: &'a GdnClient,
    collection: String,
    /// The most documents a page asks for (the configured `cursor_batch_size`).
    most: u64,
    /// What the next page asks for.
    size: u64,
    ttl: u64,
    max_retries: u32,
    /// The last key read; the next page starts after it.
    after: String,
    done: bool,
    keys_only: bool,
}

impl<'a> KeysetScan<'a> {
    /// A scan of `collection` in pages of at most `most` documents, each cursor kept `ttl`
    /// seconds between its answers.
    pub fn new(
        client: &'a GdnClient,
        collection: &str,
        most: u64,
        ttl: u64,
        max_retries: u32,
    ) -> KeysetScan<'a> {
        KeysetScan {
            client,
            collection: collection.to_owned(),
            most: most.max(1),
            size: most.clamp(1, FIRST_PAGE),
            ttl,
            max_retries,
            after: String::new(),
            done: false,
            keys_only: false,
        }
    }

    /// The same scan reading only the keys (`RETURN d._key`), in pages of up to `most`.
    pub fn keys(mut self) -> KeysetScan<'a> {
        self.keys_only = true;
        self
    }

    /// The page size the next page asks for (it adapts; see the module's documentation).
    pub fn page_size(&self) -> u64 {
        self.size
    }

    fn url(&self, rest: &str) -> String {
        format!(
            "{}/_fabric/{}/_api/{rest}",
            self.client.base_url(),
            self.client.fabric()
        )
    }

    fn parse(&self, method: &str, rest: &str, body: &Bytes) -> Result<Answer, GdnError> {
        serde_json::from_slice(body).map_err(|error| GdnError::BadResponse {
            method: method.into(),
            url: self.url(rest),
            detail: format!("not a cursor page: {error}"),
        })
    }

    /// The next page; `None` once the collection is exhausted. A page whose answer is too
    /// large is asked for again with fewer documents; one that failed on the network is asked
    /// for again (up to `max_retries` times); any other failure is the scan's.
    pub async fn next_page(&mut self) -> Result<Option<ScanPage>, GdnError> {
        if self.done {
            return Ok(None);
        }
        loop {
            match retrying(self.max_retries, || self.read_page(self.size)).await {
                Ok(page) => {
                    self.took(&page)?;
                    return Ok(Some(page));
                }
                Err(GdnError::TooLarge { limit, .. }) if self.size > 1 => {
                    let smaller = (self.size / 4).max(1);
                    tracing::info!(
                        collection = %self.collection,
                        from = self.size,
                        to = smaller,
                        "a scan page was larger than {limit} bytes: asking for fewer documents per page"
                    );
                    self.size = smaller;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Notes a page read: where the next starts, and its size from the documents' sizes.
    fn took(&mut self, page: &ScanPage) -> Result<(), GdnError> {
        let Some(last) = page.documents.last() else {
            self.done = true;
            return Ok(());
        };
        self.after = self.last_key(last)?;
        if (page.documents.len() as u64) < self.size {
            self.done = true;
        }
        let per_document = (page.bytes / page.documents.len()).max(1);
        let fits = (PAGE_BYTES_TARGET / per_document).max(1) as u64;
        // Grow back at most twofold a page, and only while pages stay small.
        let grown = if page.bytes <= PAGE_BYTES_TARGET / 2 {
            self.size.saturating_mul(2)
        } else {
            self.size
        };
        self.size = grown.min(fits).clamp(1, self.most);
        Ok(())
    }

    /// The `_key` of a page's last document (or the last key of a keys page).
    fn last_key(&self, last: &RawValue) -> Result<String, GdnError> {
        #[derive(serde::Deserialize)]
        struct KeyOf {
            #[serde(rename = "_key")]
            key: String,
        }
        let key = if self.keys_only {
            serde_json::from_str::<String>(last.get()).ok()
        } else {
            serde_json::from_str::<KeyOf>(last.get())
                .ok()
                .map(|of| of.key)
        };
        key.ok_or_else(|| GdnError::BadResponse {
            method: "POST".into(),
            url: self.url("cursor"),
            detail: format!(
                "a document of collection {:?} has no string \"_key\": {}",
                self.collection,
                last.get().chars().take(120).collect::<String>()
            ),
        })
    }

    /// Reads one page of up to `count` documents after `self.after`.
    async fn read_page(&self, count: u64) -> Result<ScanPage, GdnError> {
        let body = Bytes::from(
            serde_json::json!({
                "query": if self.keys_only { KEYS_QUERY } else { PAGE_QUERY },
                "bindVars": {"@collection": self.collection, "after": self.after, "count": count},
                "batchSize": count,
                "ttl": self.ttl,
                "count": false,
            })
            .to_string(),
        );
        let limit = if count > 1 {
            PAGE_BYTES_LIMIT
        } else {
            MAX_RESPONSE_BYTES
        };
        let answer = self
            .client
            .fabric_call_limited(Method::POST, "cursor", Some(body), limit)
            .await?;
        let mut bytes = answer.len();
        let mut parsed = self.parse("POST", "cursor", &answer)?;
        drop(answer);
        let mut documents = std::mem::take(&mut parsed.result);
        while parsed.has_more {
            let Some(id) = parsed.id.take() else {
                return Err(GdnError::BadResponse {
                    method: "POST".into(),
                    url: self.url("cursor"),
                    detail: "\"hasMore\" is true but the answer has no cursor \"id\"".into(),
                });
            };
            let rest = format!("cursor/{}", encode_path_segment(&id));
            // A failure here asks for the whole page again (the server's cursor expires).
            let answer = self
                .client
                .fabric_call_limited(Method::PUT, &rest, None, limit)
                .await?;
            bytes += answer.len();
            parsed = self.parse("PUT", &rest, &answer)?;
            parsed.id = parsed.id.or(Some(id));
            documents.append(&mut parsed.result);
        }
        Ok(ScanPage { documents, bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(client: &GdnClient, most: u64) -> KeysetScan<'_> {
        KeysetScan::new(client, "c", most, 30, 1)
    }

    async fn client() -> GdnClient {
        GdnClient::open(
            "http://127.0.0.1:9",
            "_system",
            &crate::config::GdnAuth::ApiKey(crate::secret::Secret::new("k")),
            std::time::Duration::from_secs(1),
        )
        .await
        .unwrap()
    }

    fn page(documents: usize, each: usize) -> ScanPage {
        let padding = "x".repeat(each.saturating_sub(20));
        ScanPage {
            documents: (0..documents)
                .map(|n| {
                    RawValue::from_string(format!(r#"{{"_key":"k{n:04}","p":"{padding}"}}"#))
                        .unwrap()
                })
                .collect(),
            bytes: documents * each,
        }
    }

    #[tokio::test]
    async fn the_page_size_follows_the_documents_sizes() {
        let client = client().await;
        let mut scan = scan(&client, 1000);
        assert_eq!(scan.page_size(), FIRST_PAGE);
        // 1 MB documents: the next page asks for what fits the target.
        scan.took(&page(16, 1 << 20)).unwrap();
        assert_eq!(scan.page_size(), (PAGE_BYTES_TARGET >> 20) as u64);
        assert_eq!(scan.after, "k0015");
        // Small documents again: the size grows back, twofold a page, up to the most.
        let mut sizes = Vec::new();
        for _ in 0..12 {
            let size = scan.page_size() as usize;
            scan.took(&page(size, 100)).unwrap();
            sizes.push(scan.page_size());
        }
        assert_eq!(&sizes[..4], &[8, 16, 32, 64]);
        assert_eq!(*sizes.last().unwrap(), 1000);
        assert!(!scan.done);
        // A short page is the last.
        scan.took(&page(3, 100)).unwrap();
        assert!(scan.done);
    }

    #[tokio::test]
    async fn a_page_without_keys_is_refused_naming_the_collection() {
        let client = client().await;
        let mut scan = scan(&client, 10);
        let bad = ScanPage {
            documents: vec![RawValue::from_string(r#"{"a":1}"#.into()).unwrap()],
            bytes: 7,
        };
        let error = scan.took(&bad).unwrap_err().to_string();
        assert!(error.contains("\"c\"") && error.contains("_key"), "{error}");
    }
}
