//! gdnlite: a durable local GDN REST server for development and tests — not a GDN.
//!
//! It serves the subset of the GDN API that pyC8 and the old connectors call
//! (`reference/gdn-client-surface.md`): collections, documents, query cursors over a full
//! collection scan, collection change streams over the Pulsar WebSocket API, API-key and JWT
//! authentication. Storage is redb plus an append-only document log (`doclog`): a `201` means
//! the write is fsynced, a `202` that it is applied but may be lost by a crash. Numbers are stored as GDN stores them (i64 or f64).
//! Faults (latency, 5xx/429, connection resets, per-document errors) can be injected.

pub mod auth;
pub mod collections;
pub mod compact;
pub mod cursor;
pub mod doclog;
pub mod documents;
pub mod error;
pub mod faults;
pub mod http;
pub mod json;
pub mod keys;
pub mod params;
pub mod relay;
pub mod store;
pub mod streams;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::secret::Secret;
pub use error::{ApiError, GdnLiteError};
pub use faults::FaultConfig;

/// Default size from which the document log is compacted at startup (64 MiB).
pub const DEFAULT_LOG_COMPACTION_MIN_BYTES: u64 = 64 * 1024 * 1024;

/// Default request body limit (64 MiB), answered with 413 beyond.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// How to run a gdnlite server.
#[derive(Debug, Clone)]
pub struct GdnLiteConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Directory of the redb database; reused on restart.
    pub data_dir: PathBuf,
    /// The API key clients send as `Authorization: apikey <key>`.
    pub api_key: Secret,
    /// Tenant name reported by `/_api/user` and used in stream topics.
    pub tenant: String,
    /// The one fabric served.
    pub fabric: String,
    /// Email and password accepted by `POST /_open/auth`.
    pub login: Option<(String, Secret)>,
    /// Injected faults.
    pub faults: FaultConfig,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// At startup the document log is compacted when it is at least this long and more than
    /// half of it is replaced or deleted bodies.
    pub log_compaction_min_bytes: u64,
}

impl GdnLiteConfig {
    /// A config on `127.0.0.1:0` with tenant `_mm`, fabric `_system`, no login, no faults.
    pub fn new(data_dir: impl Into<PathBuf>, api_key: impl Into<String>) -> GdnLiteConfig {
        GdnLiteConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.into(),
            api_key: Secret::new(api_key),
            tenant: "_mm".into(),
            fabric: "_system".into(),
            login: None,
            faults: FaultConfig::default(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            log_compaction_min_bytes: DEFAULT_LOG_COMPACTION_MIN_BYTES,
        }
    }
}

/// One subscription's consumer slot: the lock the attached consumer holds, and a generation a
/// new consumer bumps to take the subscription over (a reconnect after a network failure must
/// not wait for the old, half-open connection to time out).
#[derive(Debug, Clone)]
pub struct SubscriptionSlot {
    lock: Arc<tokio::sync::Mutex<()>>,
    takeover: Arc<watch::Sender<u64>>,
}

/// Shared state of a running server.
pub struct State {
    tenant: String,
    fabric: String,
    credentials: auth::Credentials,
    faults: faults::Faults,
    store: store::Store,
    cursors: cursor::Cursors,
    max_body: usize,
    subscriptions: Mutex<HashMap<(String, String), SubscriptionSlot>>,
    tasks: Mutex<JoinSet<()>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("tenant", &self.tenant)
            .field("fabric", &self.fabric)
            .finish_non_exhaustive()
    }
}

impl State {
    /// The slot that keeps one consumer per subscription at a time.
    fn subscription_slot(&self, stream: &str, subscription: &str) -> SubscriptionSlot {
        let mut map = match self.subscriptions.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        map.entry((stream.to_string(), subscription.to_string()))
            .or_insert_with(|| SubscriptionSlot {
                lock: Arc::default(),
                takeover: Arc::new(watch::channel(0).0),
            })
            .clone()
    }

    /// Subscriptions of `stream` that a consumer has attached to since the server started.
    fn attached_subscriptions(&self, stream: &str) -> Vec<String> {
        let map = match self.subscriptions.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        map.keys()
            .filter(|(owner, _)| owner == stream)
            .map(|(_, name)| name.clone())
            .collect()
    }

    /// Spawns a task that `stop` aborts (WebSocket consumers).
    fn spawn_task(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = match self.tasks.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    store::now_micros() / 1_000_000
}

/// Starts gdnlite servers.
#[derive(Debug)]
pub struct GdnLite;

impl GdnLite {
    /// Opens the data directory, binds the listener and serves until the handle is stopped.
    pub async fn start(config: GdnLiteConfig) -> Result<GdnLiteHandle, GdnLiteError> {
        config.faults.validate().map_err(GdnLiteError::Config)?;
        if config.api_key.is_empty() {
            return Err(GdnLiteError::Config("the API key must not be empty".into()));
        }
        let data_dir = config.data_dir.clone();
        let compaction = config.log_compaction_min_bytes;
        let store = tokio::task::spawn_blocking(move || store::Store::open(&data_dir, compaction))
            .await
            .map_err(|e| GdnLiteError::Config(format!("the storage task failed: {e}")))??;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| GdnLiteError::Bind {
                    addr: config.listen.to_string(),
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| GdnLiteError::Bind {
            addr: config.listen.to_string(),
            source,
        })?;
        let state = Arc::new(State {
            tenant: config.tenant,
            fabric: config.fabric,
            credentials: auth::Credentials::new(config.api_key, config.login),
            faults: faults::Faults::new(config.faults),
            store,
            cursors: cursor::Cursors::default(),
            max_body: config.max_body_bytes,
            subscriptions: Mutex::new(HashMap::new()),
            tasks: Mutex::new(JoinSet::new()),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let server = tokio::spawn(accept_loop(listener, Arc::clone(&state), shutdown_rx));
        tracing::info!(%addr, "gdnlite listening (a development and test server, not a GDN)");
        Ok(GdnLiteHandle {
            addr,
            shutdown,
            server,
            state,
        })
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = sweep.tick() => state.cursors.expire(Instant::now()),
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "gdnlite: accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn_state = Arc::clone(&state);
                connections.spawn(async move {
                    let service = service_fn(move |request| http::serve(Arc::clone(&conn_state), request));
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    builder
                        .http2()
                        .max_concurrent_streams(1024)
                        .initial_stream_window_size(4 * 1024 * 1024)
                        .initial_connection_window_size(16 * 1024 * 1024)
                        .max_frame_size(256 * 1024);
                    if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await {
                        tracing::debug!(error = %e, "gdnlite: connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// A running gdnlite server.
#[derive(Debug)]
pub struct GdnLiteHandle {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    state: Arc<State>,
}

impl GdnLiteHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, the base URL for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, closes connections and consumers, finishes queued writes and closes
    /// the database, so the same data directory can be opened again.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.server.await;
        let tasks = {
            let mut guard = match self.state.tasks.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            std::mem::take(&mut *guard)
        };
        let mut tasks = tasks;
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        self.state.cursors.clear();
        let state = self.state;
        let writer_state = Arc::clone(&state);
        let _ = tokio::task::spawn_blocking(move || writer_state.store.shutdown()).await;
        // Requests still in flight on HTTP/2 streams hold the state briefly; wait for them so
        // the database file is closed when `stop` returns.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&state) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
