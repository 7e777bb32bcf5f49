//! Helpers for the gdnlite integration tests: an in-process server on a temp dir and an HTTP
//! client (hyper-util's legacy client, HTTP/1.1 or h2c) that returns status, headers and JSON.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pgferry::gdnlite::{GdnLite, GdnLiteConfig, GdnLiteHandle};
use serde_json::Value;

/// The API key every test server uses.
pub const KEY: &str = "test.key.secret";

/// A started server and its data directory.
pub struct Server {
    /// The running server (None after stop).
    pub handle: Option<GdnLiteHandle>,
    /// Its data directory, kept for restarts.
    pub dir: tempfile::TempDir,
    /// The config it was started with.
    pub config: GdnLiteConfig,
}

impl Server {
    /// Starts a server on a fresh temp dir, after `tweak` adjusts the config.
    pub async fn start_with(tweak: impl FnOnce(&mut GdnLiteConfig)) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = GdnLiteConfig::new(dir.path(), KEY);
        tweak(&mut config);
        let handle = GdnLite::start(config.clone())
            .await
            .expect("gdnlite starts");
        Server {
            handle: Some(handle),
            dir,
            config,
        }
    }

    /// Starts a server with the default config.
    pub async fn start() -> Server {
        Server::start_with(|_| {}).await
    }

    /// Base URL.
    pub fn url(&self) -> String {
        self.handle.as_ref().expect("running").url()
    }

    /// Stops, waits `down`, and starts again on the same data dir and the same port (what a
    /// client configured with its URL sees as a server restart).
    pub async fn restart_in_place(&mut self, down: Duration) {
        if let Some(handle) = self.handle.take() {
            self.config.listen = handle.addr();
            handle.stop().await;
        }
        tokio::time::sleep(down).await;
        self.handle = Some(
            GdnLite::start(self.config.clone())
                .await
                .expect("gdnlite restarts on its port"),
        );
    }

    /// Stops and starts again on the same data dir (a new port).
    pub async fn restart(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.stop().await;
        }
        self.handle = Some(
            GdnLite::start(self.config.clone())
                .await
                .expect("gdnlite restarts"),
        );
    }
}

/// One answer: status, headers and the body parsed as JSON (Null when empty or not JSON).
#[derive(Debug)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Parsed body.
    pub json: Value,
    /// Raw body.
    pub raw: Bytes,
}

impl Answer {
    /// Asserts a GDN error with this status and errorNum.
    pub fn assert_error(&self, status: u16, error_num: u64) {
        assert_eq!(self.status.as_u16(), status, "status; body {}", self.json);
        assert_eq!(self.json["error"], Value::Bool(true), "body {}", self.json);
        assert_eq!(
            self.json["code"].as_u64(),
            Some(status as u64),
            "body {}",
            self.json
        );
        assert_eq!(
            self.json["errorNum"].as_u64(),
            Some(error_num),
            "errorNum; body {}",
            self.json
        );
        assert!(self.json["errorMessage"].is_string(), "body {}", self.json);
    }

    /// Asserts a success status and no errorNum in an object body (pyC8's success test).
    pub fn assert_ok(&self, status: u16) {
        assert_eq!(self.status.as_u16(), status, "status; body {}", self.json);
        if self.json.is_object() {
            assert!(
                self.json.get("errorNum").is_none(),
                "success body carries errorNum: {}",
                self.json
            );
        }
    }
}

/// An HTTP client bound to one server and one protocol.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    auth: Option<String>,
}

impl Http {
    /// HTTP/1.1 client with the API key.
    pub fn h1(base: &str) -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: base.to_string(),
            auth: Some(format!("apikey {KEY}")),
        }
    }

    /// h2c (HTTP/2 with prior knowledge) client with the API key.
    pub fn h2(base: &str) -> Http {
        Http {
            client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
            base: base.to_string(),
            auth: Some(format!("apikey {KEY}")),
        }
    }

    /// The same client with another Authorization header (None: no header).
    pub fn with_auth(&self, auth: Option<&str>) -> Http {
        Http {
            auth: auth.map(str::to_string),
            ..self.clone()
        }
    }

    /// Sends a request with a raw body.
    pub async fn raw(&self, method: Method, path: &str, body: impl Into<Bytes>) -> Answer {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path))
            .header("content-type", "application/json")
            .header("charset", "utf-8");
        if let Some(auth) = &self.auth {
            builder = builder.header("authorization", auth);
        }
        let request = builder.body(Full::new(body.into())).expect("request");
        let response = self.client.request(request).await.expect("response");
        let (parts, body) = response.into_parts();
        let raw = body.collect().await.expect("body").to_bytes();
        let json = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Answer {
            status: parts.status,
            headers: parts.headers,
            json,
            raw,
        }
    }

    /// Sends a request with a JSON body (Null: empty body).
    pub async fn call(&self, method: Method, path: &str, body: Value) -> Answer {
        let bytes = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        self.raw(method, path, bytes).await
    }

    /// Sends a request; `Err` when the connection failed, else status and JSON body.
    pub async fn try_call_json(
        &self,
        method: Method,
        path: &str,
        body: Value,
    ) -> Result<(u16, Value), String> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path))
            .header("content-type", "application/json");
        if let Some(auth) = &self.auth {
            builder = builder.header("authorization", auth);
        }
        let request = builder
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let raw = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, serde_json::from_slice(&raw).unwrap_or(Value::Null)))
    }

    /// Sends a request and returns the transport result (for fault tests).
    pub async fn try_call(
        &self,
        method: Method,
        path: &str,
        body: Value,
    ) -> Result<StatusCode, String> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path))
            .header("content-type", "application/json");
        if let Some(auth) = &self.auth {
            builder = builder.header("authorization", auth);
        }
        let request = builder
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        match self.client.request(request).await {
            Ok(response) => Ok(response.status()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The fabric API prefix.
pub fn api(path: &str) -> String {
    format!("/_fabric/_system/_api/{path}")
}

/// Waits for `condition` to hold, polling, failing after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A WebSocket connection to a stream consumer endpoint.
pub type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// One received stream message: id, op, decoded payload.
#[derive(Debug, Clone)]
pub struct StreamMessage {
    /// The opaque id to ack.
    pub id: String,
    /// `INSERT`, `UPDATE` or `DELETE`.
    pub op: String,
    /// The document.
    pub doc: Value,
}

/// Opens a consumer of `stream` for `subscription` with the given Authorization header.
pub async fn consume(
    base: &str,
    stream: &str,
    subscription: &str,
    auth: &str,
) -> Result<Ws, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let addr = base.trim_start_matches("http://");
    let url = format!("ws://{addr}/_ws/ws/v2/consumer/persistent/_mm/c8local._system/{stream}/{subscription}?subscriptionType=Exclusive");
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "authorization",
        auth.parse().map_err(|_| "bad header".to_string())?,
    );
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (ws, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// Receives the next stream message within 10 s.
pub async fn next_message(ws: &mut Ws) -> StreamMessage {
    use base64::Engine;
    use futures_util::StreamExt;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a stream message within 10 s")
            .expect("the stream is open")
            .expect("a valid frame");
        let tokio_tungstenite::tungstenite::Message::Text(text) = frame else {
            continue;
        };
        let v: Value = serde_json::from_str(text.as_str()).expect("JSON frame");
        let payload = base64::engine::general_purpose::STANDARD
            .decode(v["payload"].as_str().expect("payload"))
            .expect("base64 payload");
        assert!(v["publishTime"].is_string(), "{v}");
        return StreamMessage {
            id: v["messageId"].as_str().expect("messageId").to_string(),
            op: v["properties"]["op"].as_str().expect("op").to_string(),
            doc: serde_json::from_slice(&payload).expect("JSON payload"),
        };
    }
}

/// Acknowledges one message.
pub async fn ack(ws: &mut Ws, id: &str) {
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        serde_json::json!({"messageId": id}).to_string(),
    ))
    .await
    .expect("ack sent");
}

/// Closes a consumer cleanly.
pub async fn close(mut ws: Ws) {
    let _ = ws.close(None).await;
    use futures_util::StreamExt;
    // Drain until the server's close arrives, so its acknowledgements are processed.
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
}

/// Every document of each of `collections` on the server at `url`, by collection then `_key`,
/// without `_id` and `_rev` (for comparing collections with an oracle).
pub fn collections(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    collections: &[&str],
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, Value>> {
    let http = Http::h1(url);
    collections
        .iter()
        .map(|collection| {
            (
                (*collection).to_owned(),
                runtime.block_on(all_documents(&http, collection, true)),
            )
        })
        .collect()
}

/// The number of documents in `collection`; `None` while it does not exist.
pub async fn document_count(http: &Http, collection: &str) -> Option<u64> {
    let answer = http
        .call(
            Method::GET,
            &api(&format!("collection/{collection}/count")),
            Value::Null,
        )
        .await;
    answer
        .status
        .is_success()
        .then(|| answer.json["count"].as_u64())
        .flatten()
}

/// Every document of `collection`, by `_key`, read page by page with the cursor API; fails if
/// a key comes twice. `_id` and `_rev` are removed when `strip_meta` (for comparisons).
pub async fn all_documents(
    http: &Http,
    collection: &str,
    strip_meta: bool,
) -> std::collections::BTreeMap<String, Value> {
    let mut answer = http
        .call(
            Method::POST,
            &api("cursor"),
            serde_json::json!({"query": "FOR d IN @@c RETURN d", "bindVars": {"@c": collection}, "batchSize": 5000}),
        )
        .await;
    let mut out = std::collections::BTreeMap::new();
    loop {
        assert!(
            answer.status.is_success(),
            "cursor over {collection}: {:?}",
            answer.json
        );
        for document in answer.json["result"].as_array().expect("result array") {
            let mut document = document.clone();
            if strip_meta {
                if let Some(object) = document.as_object_mut() {
                    object.remove("_id");
                    object.remove("_rev");
                }
            }
            let key = document["_key"].as_str().expect("_key").to_owned();
            assert!(
                out.insert(key.clone(), document).is_none(),
                "document {key} returned twice"
            );
        }
        if answer.json["hasMore"] != serde_json::json!(true) {
            return out;
        }
        let id = answer.json["id"].as_str().expect("cursor id").to_owned();
        answer = http
            .call(Method::PUT, &api(&format!("cursor/{id}")), Value::Null)
            .await;
    }
}

/// A LOG_BASED pipeline from the PostgreSQL on `pg_port` (schema `public`) into the gdnlite at
/// `gdn_url`, with its state file in `dir`. Keys of `extra` are set on top; an object given for
/// `source` or `destination` adds to (or overrides) those objects' keys.
pub fn log_based_pipeline(
    pg_port: u16,
    gdn_url: &str,
    dir: &std::path::Path,
    extra: Value,
) -> pgferry::config::PipelineConfig {
    let mut config = serde_json::json!({
        "source": {
            "host": "127.0.0.1", "port": pg_port, "user": "postgres",
            "password": "trust", "dbname": "postgres", "sslmode": "disable",
            "replication_method": "LOG_BASED", "filter_schemas": "public"
        },
        "destination": {"gdn_url": gdn_url, "api_key": KEY, "batch_size_rows": 500},
        "parallelism": 2,
        "state_file": dir.join("state.json").display().to_string()
    });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            match (config.get_mut(key), value) {
                (Some(Value::Object(existing)), Value::Object(more)) => {
                    existing.extend(more.clone());
                }
                _ => {
                    config.insert(key.clone(), value.clone());
                }
            }
        }
    }
    match config {
        Value::Object(map) => {
            pgferry::config::PipelineConfig::from_object(&map).expect("valid pipeline")
        }
        _ => unreachable!("a JSON object"),
    }
}
