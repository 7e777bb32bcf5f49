//! The GDN REST client: one multiplexed HTTP/2 connection (h2 over TLS for `https`, h2c for
//! `http` such as gdnlite), authentication, collection management, batched document writes,
//! and GDN error decoding.
//!
//! Every call returns a typed [`GdnError`] that says whether a retry can help; the caller (the
//! writer) owns the retry policy. Secrets (API key, password, JWT) live in `Secret` or a
//! sensitive header value and never reach an error or a log line.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::{GdnAuth, GdnDestinationConfig};
use crate::gdn::concurrency::{Outcome, RequestLimiter};

/// Largest response body we read: a bound on the memory one answer takes. A cursor page of
/// large documents can exceed it; the scan then asks for fewer documents per page
/// ([`GdnError::TooLarge`]).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Why a GDN call failed.
#[derive(Debug, thiserror::Error)]
pub enum GdnError {
    /// No connection could be made, or it broke mid-request.
    #[error("cannot reach GDN at {url}: {detail}\nHINT: check gdn_host / gdn_url and the network; pgferry retries this")]
    Unreachable {
        /// The URL called (no credentials in it).
        url: String,
        /// The transport's reason.
        detail: String,
    },
    /// The request took longer than `request_timeout`.
    #[error("GDN did not answer {method} {url} within {after:?}\nHINT: raise request_timeout or lower batch_size_rows; pgferry retries this")]
    Timeout {
        /// The method.
        method: String,
        /// The URL.
        url: String,
        /// The limit.
        after: Duration,
    },
    /// GDN answered with an error status.
    #[error("GDN answered {method} {url} with HTTP {status}{}: {message}{}", error_num.map(|n| format!(" (errorNum {n})")).unwrap_or_default(), hint(*status))]
    Status {
        /// The method.
        method: String,
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// GDN's `errorNum`, when the body had one.
        error_num: Option<u64>,
        /// GDN's `errorMessage`, or the start of the body.
        message: String,
        /// The wait the server asked for in `Retry-After` (429/503), if any.
        retry_after: Option<Duration>,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer from GDN to {method} {url}: {detail}")]
    BadResponse {
        /// The method.
        method: String,
        /// The URL.
        url: String,
        /// What was wrong.
        detail: String,
    },
    /// The answer was larger than pgferry reads in one piece ([`MAX_RESPONSE_BYTES`]): not a
    /// network problem, and the same request fails the same way.
    #[error("GDN's answer to {method} {url} is larger than {limit} bytes, the most pgferry reads in one answer\nHINT: ask for less per request (for a scan, pgferry lowers its page size by itself; a single document this large cannot be read)")]
    TooLarge {
        /// The method.
        method: String,
        /// The URL.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// The client could not be set up (bad URL, TLS roots, credentials with bad characters).
    #[error("invalid GDN setting {key}: {detail}")]
    Config {
        /// The config key at fault.
        key: &'static str,
        /// What was wrong.
        detail: String,
    },
}

fn hint(status: u16) -> &'static str {
    match status {
        401 => "\nHINT: the API key or login is not accepted; check api_key (or email/password) and that it belongs to this tenant",
        403 => "\nHINT: the API key lacks permission for this fabric or collection",
        404 => "\nHINT: check fabric and collection names",
        413 => "\nHINT: lower batch_size_rows or batch_size_bytes",
        429 => "\nHINT: GDN is rate limiting; pgferry retries with backoff (lower max_in_flight to be gentler)",
        500..=599 => "\nHINT: a GDN-side failure; pgferry retries this",
        _ => "",
    }
}

impl GdnError {
    /// Whether the same request may succeed later (network, timeout, 429, 5xx).
    pub fn is_retryable(&self) -> bool {
        match self {
            GdnError::Unreachable { .. } | GdnError::Timeout { .. } => true,
            GdnError::Status { status, .. } => *status == 429 || *status >= 500,
            GdnError::BadResponse { .. } | GdnError::TooLarge { .. } | GdnError::Config { .. } => {
                false
            }
        }
    }

    /// The wait the server asked for before a retry (`Retry-After` on a 429 or 503), capped
    /// at [`MAX_RETRY_AFTER`]; a retry never goes out sooner.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GdnError::Status { retry_after, .. } => {
                retry_after.map(|wait| wait.min(MAX_RETRY_AFTER))
            }
            _ => None,
        }
    }

    /// How the adaptive concurrency controller reads this failure: push-back (429, 502, 503,
    /// 504, timeout) shrinks the limit, anything else says nothing about load.
    pub fn concurrency_outcome(&self) -> Outcome {
        match self {
            GdnError::Timeout { .. } => Outcome::BackPressure,
            GdnError::Status {
                status: 429 | 502 | 503 | 504,
                ..
            } => Outcome::BackPressure,
            _ => Outcome::Failed,
        }
    }

    /// The HTTP status, when GDN answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            GdnError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The longest `Retry-After` honoured: a bound on a wait a broken header could make endless.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Bound of the adaptive concurrency of a client opened without a destination's
/// `max_in_flight` (sources and checks, whose own parallelism bounds them first).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

/// Requests in flight one HTTP/2 connection is given at most: servers and proxies commonly cap
/// concurrent streams at 100-128 (nginx 128, envoy 100 by default), and each connection adds
/// its own flow-control window. A `max_in_flight` of 64 is one connection, 200 is four.
pub const STREAMS_PER_CONNECTION: usize = 64;

/// The receive window of one HTTP/2 stream (an answer or a cursor page in flight).
pub const STREAM_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

/// The receive window of one HTTP/2 connection: 32 MiB cover 1 Gbit/s at 250 ms.
pub const CONNECTION_WINDOW_BYTES: u32 = 32 * 1024 * 1024;

/// `count` HTTP/2 clients over one connector: separate clients keep separate connections,
/// while the connector's TLS configuration, and so its session cache, is shared (a reconnect
/// resumes its TLS session instead of a full handshake).
fn connection_pool(connector: &Connector, count: usize) -> Arc<[Client<Connector, Full<Bytes>>]> {
    (0..count.max(1))
        .map(|_| {
            Client::builder(TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .http2_only(true)
                .http2_keep_alive_interval(Some(Duration::from_secs(30)))
                // Receive windows sized for a long fat link from the first byte: 64 concurrent
                // answers of 1,000 documents (~60 kB each) or a cursor page must not wait a
                // round trip per window. hyper's adaptive window starts at 64 KiB and grows only
                // as its BDP pings measure, which held 64 answers to 64 KiB per round trip.
                .http2_initial_stream_window_size(STREAM_WINDOW_BYTES)
                .http2_initial_connection_window_size(CONNECTION_WINDOW_BYTES)
                .build(connector.clone())
        })
        .collect()
}

/// Reads a `Retry-After` value: delay-seconds (`120`) or an HTTP date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`, taken relative to `now`); a date in the past is no wait.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = parse_http_date(value)?;
    let now = now.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// Seconds since the Unix epoch of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form
/// RFC 9110 requires senders to use.
fn parse_http_date(value: &str) -> Option<u64> {
    let (_, rest) = value.split_once(", ")?;
    let mut parts = rest.split(' ');
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut clock = parts
        .next()?
        .split(':')
        .map(|part| part.parse::<u64>().ok());
    let (hour, minute, second) = (clock.next()??, clock.next()??, clock.next()??);
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60
    {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days)
        .ok()
        .map(|days| days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// GDN's `errorNum` for a document that does not exist (a delete of one already gone).
pub const DOCUMENT_NOT_FOUND: u64 = 1202;

/// Keys per delete request of [`GdnClient::delete_keys`].
pub const DELETE_BATCH: usize = 1000;

/// One document of a batch that GDN refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentFailure {
    /// Position in the batch.
    pub index: usize,
    /// GDN's `errorNum`.
    pub error_num: u64,
    /// GDN's `errorMessage`.
    pub message: String,
}

/// The outcome of a batch write that GDN accepted as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// 201 when durable (`waitForSync=true`), 202 when only accepted.
    pub durable: bool,
    /// Documents that failed individually (empty when all succeeded).
    pub failures: Vec<DocumentFailure>,
}

/// A connection to one GDN fabric.
#[derive(Clone)]
pub struct GdnClient {
    /// One HTTP/2 client (one connection) each; requests take turns.
    http: Arc<[Client<Connector, Full<Bytes>>]>,
    next: Arc<AtomicUsize>,
    connector: Connector,
    base_url: String,
    fabric: String,
    authorization: HeaderValue,
    timeout: Duration,
    limiter: RequestLimiter,
}

impl std::fmt::Debug for GdnClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GdnClient")
            .field("base_url", &self.base_url)
            .field("fabric", &self.fabric)
            .finish_non_exhaustive()
    }
}

/// Percent-encodes a path segment (collection names are plain, keys may not be).
pub fn encode_path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Reads GDN's `{"errorNum", "errorMessage"}` from an error body.
fn error_fields(body: &[u8]) -> (Option<u64>, String) {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let error_num = parsed
        .as_ref()
        .and_then(|value| value.get("errorNum"))
        .and_then(serde_json::Value::as_u64);
    let message = parsed
        .as_ref()
        .and_then(|value| value.get("errorMessage"))
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            text.chars().take(200).collect()
        });
    (error_num, message)
}

/// Parses `X-C8-Error-Codes` (`1200:17,1205:10`, or a JSON object `{"1200":17}`) into a total.
pub fn error_code_total(header: &str) -> u64 {
    let header = header.trim();
    if header.starts_with('{') {
        return serde_json::from_str::<std::collections::BTreeMap<String, u64>>(header)
            .map(|map| map.values().sum())
            .unwrap_or(0);
    }
    header
        .split(',')
        .filter_map(|pair| pair.split(':').nth(1))
        .filter_map(|count| count.trim().parse::<u64>().ok())
        .sum()
}

/// Finds the failed entries of an aligned batch answer.
pub fn document_failures(body: &[u8]) -> Result<Vec<DocumentFailure>, String> {
    let entries: Vec<serde_json::Value> = serde_json::from_slice(body)
        .map_err(|error| format!("batch answer is not a JSON array: {error}"))?;
    Ok(entries
        .iter()
        .enumerate()
        .filter(|(_, entry)| entry.get("error").and_then(serde_json::Value::as_bool) == Some(true))
        .map(|(index, entry)| DocumentFailure {
            index,
            error_num: entry
                .get("errorNum")
                .or_else(|| entry.get("errorCode"))
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
            message: entry
                .get("errorMessage")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("no message")
                .to_owned(),
        })
        .collect())
}

struct Answer {
    status: StatusCode,
    error_codes: Option<String>,
    retry_after: Option<Duration>,
    body: Bytes,
}

impl GdnClient {
    /// Builds the client and, for email/password, logs in to get a JWT.
    pub async fn connect(config: &GdnDestinationConfig) -> Result<GdnClient, GdnError> {
        let client = GdnClient::open(
            &config.base_url,
            &config.fabric,
            &config.auth,
            config.request_timeout,
        )
        .await?;
        Ok(client.with_max_in_flight(config.max_in_flight))
    }

    /// This client with a fresh adaptive limit bounded by `max_in_flight` (the destination's
    /// setting: the most document requests ever in flight).
    pub fn with_max_in_flight(mut self, max_in_flight: usize) -> GdnClient {
        self.limiter = RequestLimiter::new(max_in_flight);
        let connections = max_in_flight.div_ceil(STREAMS_PER_CONNECTION).max(1);
        if connections != self.http.len() {
            self.http = connection_pool(&self.connector, connections);
        }
        self
    }

    /// The HTTP/2 connections requests are spread over.
    pub fn connections(&self) -> usize {
        self.http.len()
    }

    /// The adaptive gate document writes pass (its limit is the `pgferry_concurrency_limit`
    /// gauge once reported into a run's metrics).
    pub fn limiter(&self) -> &RequestLimiter {
        &self.limiter
    }

    /// Builds a client for `fabric` at `base_url` (a destination's or a source's) and, for
    /// email/password, logs in to get a JWT.
    pub async fn open(
        base_url: &str,
        fabric: &str,
        auth: &GdnAuth,
        request_timeout: Duration,
    ) -> Result<GdnClient, GdnError> {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|error| GdnError::Config {
            key: "gdn_url",
            detail: error.to_string(),
        })?
        .with_root_certificates(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        })
        .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        // The scheme is the TLS connector's business; small HTTP/2 frames go out at once
        // (Nagle's algorithm held a request's frames behind the previous one's ACK).
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http2()
            .wrap_connector(tcp);
        let mut client = GdnClient {
            http: connection_pool(&connector, 1),
            next: Arc::default(),
            connector,
            base_url: base_url.to_owned(),
            fabric: fabric.to_owned(),
            authorization: HeaderValue::from_static(""),
            timeout: request_timeout,
            limiter: RequestLimiter::new(DEFAULT_MAX_IN_FLIGHT),
        };
        client.authorization = match auth {
            GdnAuth::ApiKey(key) => sensitive(&format!("apikey {}", key.expose()), "api_key")?,
            GdnAuth::Login { email, password } => {
                let jwt = client.login(email, password.expose()).await?;
                sensitive(&format!("bearer {jwt}"), "password")?
            }
        };
        Ok(client)
    }

    async fn login(&self, email: &str, password: &str) -> Result<String, GdnError> {
        let body = serde_json::json!({"email": email, "password": password}).to_string();
        let answer = self
            .send(
                Method::POST,
                "/_open/auth".into(),
                Some(Bytes::from(body)),
                false,
            )
            .await?;
        let url = format!("{}/_open/auth", self.base_url);
        self.expect_success(&Method::POST, &url, &answer)?;
        let value: serde_json::Value =
            serde_json::from_slice(&answer.body).map_err(|error| GdnError::BadResponse {
                method: "POST".into(),
                url: url.clone(),
                detail: error.to_string(),
            })?;
        value
            .get("jwt")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .ok_or(GdnError::BadResponse {
                method: "POST".into(),
                url,
                detail: "no \"jwt\" in the login answer".into(),
            })
    }

    /// `<base>/_fabric/<fabric>/_api/<rest>`.
    fn fabric_path(&self, rest: &str) -> String {
        format!("/_fabric/{}/_api/{rest}", encode_path_segment(&self.fabric))
    }

    async fn send(
        &self,
        method: Method,
        path: String,
        body: Option<Bytes>,
        authorized: bool,
    ) -> Result<Answer, GdnError> {
        self.send_limited(method, path, body, authorized, MAX_RESPONSE_BYTES)
            .await
    }

    /// [`GdnClient::send`], reading at most `limit` bytes of the answer.
    async fn send_limited(
        &self,
        method: Method,
        path: String,
        body: Option<Bytes>,
        authorized: bool,
        limit: usize,
    ) -> Result<Answer, GdnError> {
        let url = format!("{}{path}", self.base_url);
        let mut request = Request::builder()
            .method(method.clone())
            .uri(&url)
            .header(CONTENT_TYPE, "application/json");
        if authorized {
            request = request.header(AUTHORIZATION, self.authorization.clone());
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|error| GdnError::Config {
                key: "gdn_url",
                detail: format!("{url}: {error}"),
            })?;
        let call = async {
            let http = &self.http[self.next.fetch_add(1, Ordering::Relaxed) % self.http.len()];
            let response = http
                .request(request)
                .await
                .map_err(|error| GdnError::Unreachable {
                    url: url.clone(),
                    detail: describe_transport_error(&error),
                })?;
            let status = response.status();
            let error_codes = response
                .headers()
                .get("x-c8-error-codes")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            let retry_after = response
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| parse_retry_after(value, std::time::SystemTime::now()));
            let body = http_body_util::Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|error| {
                    if error.is::<http_body_util::LengthLimitError>() {
                        GdnError::TooLarge {
                            method: method.to_string(),
                            url: url.clone(),
                            limit,
                        }
                    } else {
                        GdnError::Unreachable {
                            url: url.clone(),
                            detail: format!("reading the answer: {error}"),
                        }
                    }
                })?
                .to_bytes();
            Ok(Answer {
                status,
                error_codes,
                retry_after,
                body,
            })
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| GdnError::Timeout {
                method: method.to_string(),
                url: url.clone(),
                after: self.timeout,
            })?
    }

    fn expect_success(&self, method: &Method, url: &str, answer: &Answer) -> Result<(), GdnError> {
        if answer.status.is_success() {
            return Ok(());
        }
        let (error_num, message) = error_fields(&answer.body);
        Err(GdnError::Status {
            method: method.to_string(),
            url: url.to_owned(),
            status: answer.status.as_u16(),
            error_num,
            message,
            retry_after: answer.retry_after,
        })
    }

    async fn call(
        &self,
        method: Method,
        rest: &str,
        body: Option<Bytes>,
    ) -> Result<Answer, GdnError> {
        let path = self.fabric_path(rest);
        let url = format!("{}{path}", self.base_url);
        let answer = self.send(method.clone(), path, body, true).await?;
        self.expect_success(&method, &url, &answer)?;
        Ok(answer)
    }

    /// The base URL (no credentials in it).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The fabric.
    pub fn fabric(&self) -> &str {
        &self.fabric
    }

    /// The `Authorization` header value (marked sensitive), for the stream consumer's handshake.
    pub(crate) fn authorization(&self) -> &HeaderValue {
        &self.authorization
    }

    /// A fabric call (`/_fabric/<fabric>/_api/<rest>`) whose 2xx body is returned; any other
    /// status is a [`GdnError::Status`].
    pub async fn fabric_call(
        &self,
        method: Method,
        rest: &str,
        body: Option<Bytes>,
    ) -> Result<Bytes, GdnError> {
        self.call(method, rest, body)
            .await
            .map(|answer| answer.body)
    }

    /// [`GdnClient::fabric_call`] reading at most `limit` bytes of the answer (at most
    /// [`MAX_RESPONSE_BYTES`]): a larger one is a [`GdnError::TooLarge`] once `limit` bytes
    /// arrived, so asking for less costs no more memory than that.
    pub async fn fabric_call_limited(
        &self,
        method: Method,
        rest: &str,
        body: Option<Bytes>,
        limit: usize,
    ) -> Result<Bytes, GdnError> {
        let path = self.fabric_path(rest);
        let url = format!("{}{path}", self.base_url);
        let answer = self
            .send_limited(
                method.clone(),
                path,
                body,
                true,
                limit.min(MAX_RESPONSE_BYTES),
            )
            .await?;
        self.expect_success(&method, &url, &answer)?;
        Ok(answer.body)
    }

    /// The tenant stream topics are named under: `result[0].tenant` of `GET /_api/user` (as
    /// pyC8 reads it), else the API key's first part (`<tenant>.<name>.<secret>`), else `_mm`.
    pub async fn tenant(&self, api_key: Option<&str>) -> Result<String, GdnError> {
        let answer = self
            .send(Method::GET, "/_api/user".into(), None, true)
            .await?;
        let url = format!("{}/_api/user", self.base_url);
        self.expect_success(&Method::GET, &url, &answer)?;
        let reported = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|value| {
                value
                    .pointer("/result/0/tenant")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned)
            })
            .filter(|tenant| !tenant.is_empty());
        Ok(reported.unwrap_or_else(|| tenant_from_key(api_key.unwrap_or_default())))
    }

    /// The names of the fabric's collections (`GET /collection`, as pyC8 checks existence).
    pub async fn collection_names(&self) -> Result<Vec<String>, GdnError> {
        let body = self.fabric_call(Method::GET, "collection", None).await?;
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|error| GdnError::BadResponse {
                method: "GET".into(),
                url: format!("{}{}", self.base_url, self.fabric_path("collection")),
                detail: error.to_string(),
            })?;
        Ok(value
            .get("result")
            .and_then(serde_json::Value::as_array)
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|entry| entry.get("name").and_then(serde_json::Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Turns a collection's change stream on (`PUT …/properties {"hasStream": true}`, as the
    /// old source did); a no-op when it is on.
    pub async fn enable_stream(&self, name: &str) -> Result<(), GdnError> {
        let rest = format!("collection/{}/properties", encode_path_segment(name));
        self.fabric_call(
            Method::PUT,
            &rest,
            Some(Bytes::from_static(br#"{"hasStream":true}"#)),
        )
        .await
        .map(|_| ())
    }

    /// Whether a collection exists.
    pub async fn has_collection(&self, name: &str) -> Result<bool, GdnError> {
        let rest = format!("collection/{}", encode_path_segment(name));
        match self.call(Method::GET, &rest, None).await {
            Ok(_) => Ok(true),
            Err(GdnError::Status { status: 404, .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Creates a document collection unless it exists (optionally with a change stream).
    pub async fn ensure_collection(&self, name: &str, stream: bool) -> Result<(), GdnError> {
        if self.has_collection(name).await? {
            return Ok(());
        }
        let body = serde_json::json!({
            "name": name,
            "type": 2,
            "stream": stream,
            "keyOptions": {"type": "traditional", "allowUserKeys": true},
        })
        .to_string();
        match self
            .call(Method::POST, "collection", Some(Bytes::from(body)))
            .await
        {
            Ok(_) => Ok(()),
            // Another worker (or run) created it in between.
            Err(GdnError::Status { status: 409, .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Removes every document of a collection (a FULL_TABLE reload of a keyless table).
    pub async fn truncate_collection(&self, name: &str) -> Result<(), GdnError> {
        let rest = format!("collection/{}/truncate", encode_path_segment(name));
        self.call(Method::PUT, &rest, None).await.map(|_| ())
    }

    /// Number of documents in a collection.
    pub async fn count(&self, name: &str) -> Result<u64, GdnError> {
        let rest = format!("collection/{}/count", encode_path_segment(name));
        let answer = self.call(Method::GET, &rest, None).await?;
        serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|value| value.get("count").and_then(serde_json::Value::as_u64))
            .ok_or_else(|| GdnError::BadResponse {
                method: "GET".into(),
                url: format!("{}{}", self.base_url, self.fabric_path(&rest)),
                detail: "no \"count\" in the answer".into(),
            })
    }

    /// Writes a batch (`body` is a JSON array of documents) in one POST: with `overwrite`, an
    /// upsert by `_key` (idempotent); without, plain inserts (keyless reloads: GDN makes keys).
    /// Durable (201) when `wait_for_sync`.
    pub async fn write_documents(
        &self,
        collection: &str,
        body: Bytes,
        overwrite: bool,
        wait_for_sync: bool,
    ) -> Result<BatchOutcome, GdnError> {
        let rest = format!(
            "document/{}?overwrite={overwrite}&waitForSync={wait_for_sync}&returnNew=false&silent=false",
            encode_path_segment(collection)
        );
        self.batch(Method::POST, &rest, body).await
    }

    /// One document by key; `None` when it does not exist.
    pub async fn get_document(
        &self,
        collection: &str,
        key: &str,
    ) -> Result<Option<Bytes>, GdnError> {
        let rest = format!(
            "document/{}/{}",
            encode_path_segment(collection),
            encode_path_segment(key)
        );
        match self.call(Method::GET, &rest, None).await {
            Ok(answer) => Ok(Some(answer.body)),
            Err(GdnError::Status { status: 404, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Deletes documents by key (`body` is a JSON array of keys); a missing document is a
    /// per-document failure with errorNum 1202.
    pub async fn delete_documents(
        &self,
        collection: &str,
        body: Bytes,
        wait_for_sync: bool,
    ) -> Result<BatchOutcome, GdnError> {
        let rest = format!(
            "document/{}?waitForSync={wait_for_sync}&returnOld=false&silent=false",
            encode_path_segment(collection)
        );
        self.batch(Method::DELETE, &rest, body).await
    }

    /// Deletes the documents `keys` of `collection` in batches of [`DELETE_BATCH`], each
    /// retried up to `max_retries` times; a document already gone counts as deleted. Returns
    /// the first document GDN refused otherwise, with its key, so nothing is skipped silently.
    pub async fn delete_keys<K: AsRef<str> + serde::Serialize>(
        &self,
        collection: &str,
        keys: &[K],
        max_retries: u32,
        wait_for_sync: bool,
    ) -> Result<Option<(String, DocumentFailure)>, GdnError> {
        for batch in keys.chunks(DELETE_BATCH) {
            let body = Bytes::from(serde_json::to_vec(batch).unwrap_or_default());
            let outcome = retrying(max_retries, || {
                self.delete_documents(collection, body.clone(), wait_for_sync)
            })
            .await?;
            if let Some(failure) = outcome
                .failures
                .into_iter()
                .find(|failure| failure.error_num != DOCUMENT_NOT_FOUND)
            {
                let key = batch
                    .get(failure.index)
                    .map(|key| key.as_ref().to_owned())
                    .unwrap_or_default();
                return Ok(Some((key, failure)));
            }
        }
        Ok(None)
    }

    /// Partially updates documents (`body` is a JSON array of objects with `_key`): attributes
    /// present replace the stored ones (`mergeObjects=false`, `keepNull=true`), others stay.
    pub async fn patch_documents(
        &self,
        collection: &str,
        body: Bytes,
        wait_for_sync: bool,
    ) -> Result<BatchOutcome, GdnError> {
        let rest = format!(
            "document/{}?keepNull=true&mergeObjects=false&waitForSync={wait_for_sync}&returnNew=false&silent=false",
            encode_path_segment(collection)
        );
        self.batch(Method::PATCH, &rest, body).await
    }

    async fn batch(
        &self,
        method: Method,
        rest: &str,
        body: Bytes,
    ) -> Result<BatchOutcome, GdnError> {
        // Document requests pass the adaptive gate: its limit follows the round trips and the
        // push-back of these answers.
        let permit = self.limiter.acquire().await;
        let answer = self.call(method.clone(), rest, Some(body)).await;
        permit.finish(match &answer {
            Ok(_) => Outcome::Answered,
            Err(error) => error.concurrency_outcome(),
        });
        let answer = answer?;
        let failures = match &answer.error_codes {
            Some(codes) if !codes.trim().is_empty() => {
                document_failures(&answer.body).map_err(|detail| GdnError::BadResponse {
                    method: method.to_string(),
                    url: format!("{}{}", self.base_url, self.fabric_path(rest)),
                    detail,
                })?
            }
            _ => Vec::new(),
        };
        Ok(BatchOutcome {
            durable: answer.status == StatusCode::CREATED,
            failures,
        })
    }
}

/// Runs an idempotent call, retrying retryable failures up to `attempts` times with backoff.
pub async fn retrying<T, F, Fut>(attempts: u32, mut call: F) -> Result<T, GdnError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, GdnError>>,
{
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match call().await {
            Err(error) if error.is_retryable() && attempt < attempts.max(1) => {
                tracing::warn!(attempt, %error, "retrying a GDN call");
                let delay = 100u64.saturating_mul(1 << attempt.min(7)).min(10_000);
                let delay =
                    Duration::from_millis(delay).max(error.retry_after().unwrap_or_default());
                tokio::time::sleep(delay).await;
            }
            result => return result,
        }
    }
}

/// The tenant in a GDN API key (`<tenant>.<key name>.<secret>`), as the old source derived
/// it; `_mm` for keys of fewer parts.
pub fn tenant_from_key(key: &str) -> String {
    let parts: Vec<&str> = key.rsplitn(3, '.').collect();
    match parts.as_slice() {
        [_, _, tenant] if !tenant.is_empty() => (*tenant).to_owned(),
        _ => "_mm".to_owned(),
    }
}

fn sensitive(text: &str, key: &'static str) -> Result<HeaderValue, GdnError> {
    let mut value = HeaderValue::from_str(text).map_err(|_| GdnError::Config {
        key,
        detail: "contains characters that cannot go into an HTTP header".into(),
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// The most specific reason in a transport error's chain (e.g. "connection refused").
fn describe_transport_error(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_header_in_both_shapes() {
        assert_eq!(error_code_total("1200:17,1205:10"), 27);
        assert_eq!(error_code_total("{\"1210\":2}"), 2);
        assert_eq!(error_code_total(""), 0);
    }

    #[test]
    fn failures_are_found_by_position() {
        let body = br#"[{"_id":"c/a","_key":"a","_rev":"1"},{"error":true,"errorNum":1210,"errorMessage":"unique constraint violated"},{"_key":"c"}]"#;
        assert_eq!(
            document_failures(body).unwrap(),
            vec![DocumentFailure {
                index: 1,
                error_num: 1210,
                message: "unique constraint violated".into()
            }]
        );
        assert!(document_failures(b"{}").is_err());
    }

    #[test]
    fn retryable_statuses() {
        let status = |status| GdnError::Status {
            method: "POST".into(),
            url: "u".into(),
            status,
            error_num: None,
            message: String::new(),
            retry_after: None,
        };
        assert!(status(503).is_retryable());
        assert!(status(429).is_retryable());
        assert!(!status(401).is_retryable());
        assert!(!status(404).is_retryable());
        assert!(status(401).to_string().contains("api_key"));
    }

    #[test]
    fn tenants_come_from_the_keys_first_part() {
        assert_eq!(tenant_from_key("acme.reader.s3cr3t"), "acme");
        assert_eq!(tenant_from_key("a.b.c.reader.s3cr3t"), "a.b.c");
        assert_eq!(tenant_from_key("reader.s3cr3t"), "_mm");
        assert_eq!(tenant_from_key(""), "_mm");
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_as_an_http_date() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 07:28:00
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past is no wait"
        );
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_retry_after("Wed, 21 Foo 2015 07:28:30 GMT", now),
            None
        );
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn a_long_retry_after_is_capped_and_push_back_is_told_apart() {
        let error = |status, retry_after| GdnError::Status {
            method: "POST".into(),
            url: "u".into(),
            status,
            error_num: None,
            message: String::new(),
            retry_after,
        };
        assert_eq!(
            error(429, Some(Duration::from_secs(86_400))).retry_after(),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(error(429, None).retry_after(), None);
        assert_eq!(
            error(429, None).concurrency_outcome(),
            Outcome::BackPressure
        );
        assert_eq!(
            error(503, None).concurrency_outcome(),
            Outcome::BackPressure
        );
        assert_eq!(error(400, None).concurrency_outcome(), Outcome::Failed);
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode_path_segment("orders"), "orders");
        assert_eq!(encode_path_segment("a b/c"), "a%20b%2Fc");
    }
}
