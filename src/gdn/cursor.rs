//! Collection scans through the cursor API: `POST /_fabric/{f}/_api/cursor` with the query
//! `FOR d IN @@collection RETURN d`, `batchSize` and `ttl`, then `PUT /_api/cursor/{id}` for
//! each next page while `hasMore` is true (the OpenAPI's "read next batch"; pyC8 sends PUT).
//!
//! A page is only requested after the caller has taken the previous one, so a slow consumer
//! holds one page in memory, never the collection. The cursor lives on the server for `ttl`
//! seconds after each page; a caller that stops early deletes it.

use bytes::Bytes;
use hyper::Method;
use serde_json::value::RawValue;

use crate::gdn::client::{encode_path_segment, retrying, GdnClient, GdnError};

/// One page of a cursor answer: documents as raw JSON, and whether more follow.
#[derive(Debug, serde::Deserialize)]
struct Page {
    result: Vec<Box<RawValue>>,
    #[serde(rename = "hasMore")]
    has_more: bool,
    id: Option<String>,
}

/// A collection scan in pages.
#[derive(Debug)]
pub struct CollectionScan<'a> {
    client: &'a GdnClient,
    collection: String,
    batch_size: u64,
    ttl: u64,
    max_retries: u32,
    state: ScanState,
}

#[derive(Debug)]
enum ScanState {
    NotStarted,
    More(String),
    Done,
}

impl<'a> CollectionScan<'a> {
    /// A scan of `collection` in pages of `batch_size` documents, each page kept `ttl` seconds.
    pub fn new(
        client: &'a GdnClient,
        collection: &str,
        batch_size: u64,
        ttl: u64,
        max_retries: u32,
    ) -> CollectionScan<'a> {
        CollectionScan {
            client,
            collection: collection.to_owned(),
            batch_size,
            ttl,
            max_retries,
            state: ScanState::NotStarted,
        }
    }

    fn parse(&self, method: &str, rest: &str, body: &Bytes) -> Result<Page, GdnError> {
        serde_json::from_slice(body).map_err(|error| GdnError::BadResponse {
            method: method.into(),
            url: format!(
                "{}/_fabric/{}/_api/{rest}",
                self.client.base_url(),
                self.client.fabric()
            ),
            detail: format!("not a cursor page: {error}"),
        })
    }

    /// The next page of documents; `None` once the collection is exhausted.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Box<RawValue>>>, GdnError> {
        let page = match &self.state {
            ScanState::Done => return Ok(None),
            ScanState::NotStarted => {
                let body = Bytes::from(
                    serde_json::json!({
                        "query": "FOR d IN @@collection RETURN d",
                        "bindVars": {"@collection": self.collection},
                        "batchSize": self.batch_size,
                        "ttl": self.ttl,
                        "count": false,
                    })
                    .to_string(),
                );
                // Creating a cursor has no side effect but the cursor: safe to retry.
                let answer = retrying(self.max_retries, || {
                    self.client
                        .fabric_call(Method::POST, "cursor", Some(body.clone()))
                })
                .await?;
                self.parse("POST", "cursor", &answer)?
            }
            ScanState::More(id) => {
                // Not retried: a lost answer would skip a page. The caller restarts the scan.
                let rest = format!("cursor/{}", encode_path_segment(id));
                let answer = self.client.fabric_call(Method::PUT, &rest, None).await?;
                self.parse("PUT", &rest, &answer)?
            }
        };
        self.state = match (page.has_more, page.id) {
            (true, Some(id)) => ScanState::More(id),
            (true, None) => {
                return Err(GdnError::BadResponse {
                    method: "POST".into(),
                    url: format!(
                        "{}/_fabric/{}/_api/cursor",
                        self.client.base_url(),
                        self.client.fabric()
                    ),
                    detail: "\"hasMore\" is true but the answer has no cursor \"id\"".into(),
                })
            }
            (false, _) => ScanState::Done,
        };
        Ok(Some(page.result))
    }

    /// Deletes the server's cursor when the scan stops before its end (best effort).
    pub async fn close(self) {
        if let ScanState::More(id) = self.state {
            let rest = format!("cursor/{}", encode_path_segment(&id));
            if let Err(error) = self.client.fabric_call(Method::DELETE, &rest, None).await {
                tracing::debug!(%error, "could not delete an abandoned cursor; it expires by its ttl");
            }
        }
    }
}
