//! Prometheus metrics: the old connectors' names (`ingested_documents`, `ingested_bytes`,
//! `ingest_errors`) with their labels (`region`, `tenant`, `fabric`, `workflow` from
//! `GDN_FEDERATION`, `GDN_TENANT`, `GDN_FABRIC`, `WORKFLOW_UUID`, "NA" when unset), plus
//! pgferry's own (`pgferry_rows_read`, `pgferry_retries`, `pgferry_requests_in_flight`,
//! `pgferry_batches`, `pgferry_batch_documents`), and for change data capture `ingest_lag`
//! (seconds from a transaction's commit in PostgreSQL to GDN's durable answer, as a gauge of the
//! latest flush and as the histogram `pgferry_ingest_lag_seconds`), `pgferry_changes`,
//! `pgferry_transactions`, `pgferry_replication_lag_bytes`, `pgferry_confirmed_lsn` and
//! `pgferry_reconnects`, and the adaptive request concurrency (`pgferry_concurrency_limit`,
//! `pgferry_round_trip_seconds`), served as text on `--metrics-addr`.
//!
//! The same server answers Kubernetes probes: `/healthz` is 200 while the async runtime keeps
//! turning (a watchdog task stamps a heartbeat every second; a stamp older than
//! [`HEALTH_STALE_AFTER`] is 503), `/readyz` is 200 while the run is connected to both ends and
//! copying or streaming ([`Phase`]), 503 before that, in a reconnect backoff and after the end.
//!
//! Counters are plain atomics updated on the hot path; rendering reads them on demand.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};

use crate::gdn::concurrency::ConcurrencyGauges;

/// A heartbeat older than this makes `/healthz` answer 503: the runtime has not run the
/// watchdog task for that long, so nothing else runs either.
pub const HEALTH_STALE_AFTER: Duration = Duration::from_secs(10);

/// Where a run is, for `/readyz`: ready only while connected to both ends and moving data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Connecting, checking, planning: not ready yet.
    Starting = 0,
    /// Copying tables (a snapshot or a FULL_TABLE run): ready.
    Copying = 1,
    /// Streaming changes: ready.
    Streaming = 2,
    /// Waiting to reconnect after a transient failure: not ready.
    Backoff = 3,
    /// The run ended (finished or failed): not ready.
    Finished = 4,
}

impl Phase {
    fn from_u8(value: u8) -> Phase {
        match value {
            1 => Phase::Copying,
            2 => Phase::Streaming,
            3 => Phase::Backoff,
            4 => Phase::Finished,
            _ => Phase::Starting,
        }
    }

    /// Whether a readiness probe should pass in this phase.
    pub fn is_ready(self) -> bool {
        matches!(self, Phase::Copying | Phase::Streaming)
    }

    /// The lowercase name `/readyz` answers with.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Copying => "copying",
            Phase::Streaming => "streaming",
            Phase::Backoff => "reconnect backoff",
            Phase::Finished => "finished",
        }
    }
}

/// The label values every metric carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    /// `GDN_FEDERATION`.
    pub region: String,
    /// `GDN_TENANT`.
    pub tenant: String,
    /// `GDN_FABRIC`.
    pub fabric: String,
    /// `WORKFLOW_UUID`.
    pub workflow: String,
}

impl Labels {
    /// Reads the labels from the environment, as the old connectors did.
    pub fn from_env() -> Labels {
        let read = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.is_empty())
                .unwrap_or_else(|| "NA".into())
        };
        Labels {
            region: read("GDN_FEDERATION"),
            tenant: read("GDN_TENANT"),
            fabric: read("GDN_FABRIC"),
            workflow: read("WORKFLOW_UUID"),
        }
    }

    fn render(&self) -> String {
        format!(
            "region=\"{}\",tenant=\"{}\",fabric=\"{}\",workflow=\"{}\"",
            escape(&self.region),
            escape(&self.tenant),
            escape(&self.fabric),
            escape(&self.workflow)
        )
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The counters of one pipeline run.
#[derive(Debug)]
pub struct Metrics {
    labels: Labels,
    /// Documents durably written to the destination.
    pub ingested_documents: AtomicU64,
    /// Request bytes of those documents.
    pub ingested_bytes: AtomicU64,
    /// Documents that could not be written.
    pub ingest_errors: AtomicU64,
    /// Rows read from the source.
    pub rows_read: AtomicU64,
    /// Requests or documents retried.
    pub retries: AtomicU64,
    /// Requests in flight now.
    pub requests_in_flight: AtomicI64,
    /// Batches written.
    pub batches: AtomicU64,
    /// Documents in those batches (with `batches`, the mean batch size).
    pub batch_documents: AtomicU64,
    /// Row changes received from the replication slot (before coalescing).
    pub changes: AtomicU64,
    /// Transactions whose commit was received from the slot.
    pub transactions: AtomicU64,
    /// Bytes of WAL between the server's reported end and the confirmed position.
    pub replication_lag_bytes: AtomicU64,
    /// The position confirmed to PostgreSQL (as a 64-bit LSN).
    pub confirmed_lsn: AtomicU64,
    /// Times streaming reconnected after a transient failure.
    pub reconnects: AtomicU64,
    /// Commit-to-durable latency of streamed transactions.
    pub ingest_lag: LagHistogram,
    /// The adaptive request limit and round trip, reported by the GDN client's limiter.
    pub concurrency: Arc<ConcurrencyGauges>,
    phase: AtomicU8,
    started: Instant,
    heartbeat_millis: AtomicU64,
}

/// Upper bounds (seconds) of the `pgferry_ingest_lag_seconds` buckets.
pub const LAG_BUCKETS: [f64; 18] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// A Prometheus histogram of latencies, lock-free: one counter per bucket.
#[derive(Debug, Default)]
pub struct LagHistogram {
    buckets: [AtomicU64; LAG_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
    last_micros: AtomicU64,
}

impl LagHistogram {
    /// Records one latency.
    pub fn observe(&self, lag: std::time::Duration) {
        let seconds = lag.as_secs_f64();
        if let Some(index) = LAG_BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[index].fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.last_micros.store(micros, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The latest observation, in seconds.
    pub fn last_seconds(&self) -> f64 {
        self.last_micros.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// The smallest bucket bound holding at least `quantile` of the observations (an upper
    /// estimate, as Prometheus' `histogram_quantile` would give at a bucket edge); `None`
    /// when empty or beyond the last bucket.
    pub fn quantile_bound(&self, quantile: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let wanted = (quantile * count as f64).ceil() as u64;
        let mut seen = 0;
        for (bucket, bound) in self.buckets.iter().zip(LAG_BUCKETS) {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= wanted {
                return Some(bound);
            }
        }
        None
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let _ = writeln!(
            out,
            "# HELP {name} Seconds from a transaction's commit in PostgreSQL to its durable write in the destination."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bucket, bound) in self.buckets.iter().zip(LAG_BUCKETS) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

impl Metrics {
    /// Zeroed counters with these labels.
    pub fn new(labels: Labels) -> Metrics {
        Metrics {
            labels,
            ingested_documents: AtomicU64::new(0),
            ingested_bytes: AtomicU64::new(0),
            ingest_errors: AtomicU64::new(0),
            rows_read: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            requests_in_flight: AtomicI64::new(0),
            batches: AtomicU64::new(0),
            batch_documents: AtomicU64::new(0),
            changes: AtomicU64::new(0),
            transactions: AtomicU64::new(0),
            replication_lag_bytes: AtomicU64::new(0),
            confirmed_lsn: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            ingest_lag: LagHistogram::default(),
            concurrency: Arc::default(),
            phase: AtomicU8::new(Phase::Starting as u8),
            started: Instant::now(),
            heartbeat_millis: AtomicU64::new(0),
        }
    }

    /// Moves the run to `phase` (what `/readyz` answers).
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// The run's phase now.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    /// Stamps the liveness heartbeat (the watchdog task does, every second).
    pub fn beat(&self) {
        let millis = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.heartbeat_millis.store(millis, Ordering::Relaxed);
    }

    /// Time since the last heartbeat.
    pub fn since_heartbeat(&self) -> Duration {
        let stamp = Duration::from_millis(self.heartbeat_millis.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(stamp)
    }

    /// The requests allowed in flight now (0 before any GDN client reported).
    pub fn concurrency_limit(&self) -> u64 {
        self.concurrency.limit.load(Ordering::Relaxed)
    }

    /// The latest mean round trip of GDN document requests, if any was measured.
    pub fn round_trip(&self) -> Option<Duration> {
        match self.concurrency.round_trip_micros.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let labels = self.labels.render();
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        };
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed).to_string();
        metric(
            "ingested_documents",
            "counter",
            "Documents durably written to the destination.",
            load(&self.ingested_documents),
        );
        metric(
            "ingested_bytes",
            "counter",
            "Bytes of documents written to the destination.",
            load(&self.ingested_bytes),
        );
        metric(
            "ingest_errors",
            "counter",
            "Documents that could not be written.",
            load(&self.ingest_errors),
        );
        metric(
            "pgferry_rows_read",
            "counter",
            "Rows read from the source.",
            load(&self.rows_read),
        );
        metric(
            "pgferry_retries",
            "counter",
            "Requests or documents retried.",
            load(&self.retries),
        );
        metric(
            "pgferry_requests_in_flight",
            "gauge",
            "Destination requests in flight.",
            self.requests_in_flight.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "pgferry_concurrency_limit",
            "gauge",
            "Destination requests allowed in flight now by the adaptive controller (at most max_in_flight).",
            self.concurrency_limit().to_string(),
        );
        metric(
            "pgferry_round_trip_seconds",
            "gauge",
            "Mean round trip of destination document requests in the controller's latest window.",
            self.round_trip()
                .unwrap_or_default()
                .as_secs_f64()
                .to_string(),
        );
        metric(
            "pgferry_batches",
            "counter",
            "Batches written.",
            load(&self.batches),
        );
        metric(
            "pgferry_batch_documents",
            "counter",
            "Documents in written batches.",
            load(&self.batch_documents),
        );
        metric(
            "ingest_lag",
            "gauge",
            "Seconds from commit in PostgreSQL to the durable write, for the latest flushed transaction.",
            self.ingest_lag.last_seconds().to_string(),
        );
        metric(
            "pgferry_changes",
            "counter",
            "Row changes received from the replication slot.",
            load(&self.changes),
        );
        metric(
            "pgferry_transactions",
            "counter",
            "Transactions received from the replication slot.",
            load(&self.transactions),
        );
        metric(
            "pgferry_replication_lag_bytes",
            "gauge",
            "WAL bytes between the server's end and the confirmed position.",
            load(&self.replication_lag_bytes),
        );
        metric(
            "pgferry_confirmed_lsn",
            "gauge",
            "The WAL position confirmed to PostgreSQL, as a number.",
            load(&self.confirmed_lsn),
        );
        metric(
            "pgferry_reconnects",
            "counter",
            "Times streaming reconnected after a transient failure.",
            load(&self.reconnects),
        );
        self.ingest_lag
            .render(&mut out, "pgferry_ingest_lag_seconds", &labels);
        out
    }
}

/// Serves `GET /metrics` (any other path too), `GET /healthz` and `GET /readyz` on `addr`;
/// returns the bound address and the server task (abort it to stop; the watchdog stops with it).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let watchdog = Arc::clone(&metrics);
        let beats = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                watchdog.beat();
            }
        });
        // The watchdog ends with the server (its task is aborted with this one).
        let _beats = AbortOnDrop(beats);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = Arc::clone(&metrics);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let answer = answer(&metrics, request.uri().path());
                        async move { answer }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((bound, task))
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The answer to one request of the metrics server.
fn answer(metrics: &Metrics, path: &str) -> Result<Response<Full<Bytes>>, hyper::http::Error> {
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
    };
    match path {
        "/healthz" => {
            let since = metrics.since_heartbeat();
            if since <= HEALTH_STALE_AFTER {
                text(StatusCode::OK, "ok\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the runtime has not turned for {} s\n", since.as_secs()),
                )
            }
        }
        "/readyz" => {
            let phase = metrics.phase();
            let status = if phase.is_ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, format!("{}\n", phase.as_str()))
        }
        _ => Response::builder()
            .header("content-type", "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(metrics.render()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_old_names_with_their_labels() {
        let metrics = Metrics::new(Labels {
            region: "us-east".into(),
            tenant: "acme".into(),
            fabric: "_system".into(),
            workflow: "NA".into(),
        });
        metrics.ingested_documents.store(42, Ordering::Relaxed);
        let text = metrics.render();
        assert!(text.contains(
            "ingested_documents{region=\"us-east\",tenant=\"acme\",fabric=\"_system\",workflow=\"NA\"} 42\n"
        ), "{text}");
        assert!(text.contains("# TYPE ingest_errors counter"));
        assert!(text.contains("# TYPE pgferry_requests_in_flight gauge"));
    }

    #[test]
    fn the_lag_histogram_counts_cumulatively_and_estimates_quantiles() {
        let metrics = Metrics::new(Labels::from_env());
        for millis in [3, 20, 20, 40, 900] {
            metrics
                .ingest_lag
                .observe(std::time::Duration::from_millis(millis));
        }
        let text = metrics.render();
        assert!(
            text.contains("# TYPE pgferry_ingest_lag_seconds histogram"),
            "{text}"
        );
        assert!(text.contains(",le=\"0.005\"} 1\n"), "{text}");
        assert!(text.contains(",le=\"0.025\"} 3\n"), "{text}");
        assert!(text.contains(",le=\"1\"} 5\n"), "{text}");
        assert!(text.contains(",le=\"+Inf\"} 5\n"), "{text}");
        assert!(text.contains("pgferry_ingest_lag_seconds_count{"), "{text}");
        assert!(text.contains("ingest_lag{"), "{text}");
        assert_eq!(metrics.ingest_lag.quantile_bound(0.5), Some(0.025));
        assert_eq!(metrics.ingest_lag.quantile_bound(0.99), Some(1.0));
        assert_eq!(LagHistogram::default().quantile_bound(0.5), None);
    }

    #[tokio::test]
    async fn the_endpoint_serves_the_text_format() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let metrics = Arc::new(Metrics::new(Labels::from_env()));
        metrics.rows_read.store(7, Ordering::Relaxed);
        let (addr, server) = serve("127.0.0.1:0".parse().unwrap(), Arc::clone(&metrics))
            .await
            .unwrap();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        server.abort();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("text/plain; version=0.0.4"), "{answer}");
        assert!(answer.contains("pgferry_rows_read{"), "{answer}");
        assert!(answer.contains("} 7\n"), "{answer}");
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn probes_answer_as_kubernetes_expects() {
        let metrics = Arc::new(Metrics::new(Labels::from_env()));
        let (addr, server) = serve("127.0.0.1:0".parse().unwrap(), Arc::clone(&metrics))
            .await
            .unwrap();
        // Before the run connected: alive, not ready.
        metrics.beat();
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let answer = get(addr, "/readyz").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.ends_with("starting\n"), "{answer}");
        for (phase, ready) in [
            (Phase::Copying, true),
            (Phase::Streaming, true),
            (Phase::Backoff, false),
            (Phase::Streaming, true),
            (Phase::Finished, false),
        ] {
            metrics.set_phase(phase);
            let answer = get(addr, "/readyz").await;
            let expected = if ready {
                "HTTP/1.1 200"
            } else {
                "HTTP/1.1 503"
            };
            assert!(answer.starts_with(expected), "{phase:?}: {answer}");
            assert!(
                answer.ends_with(&format!("{}\n", phase.as_str())),
                "{answer}"
            );
        }
        server.abort();
    }

    #[test]
    fn a_stale_heartbeat_fails_the_liveness_probe() {
        let metrics = Metrics::new(Labels::from_env());
        metrics.beat();
        assert_eq!(
            answer(&metrics, "/healthz").unwrap().status(),
            StatusCode::OK
        );
        // As if the watchdog last ran long ago.
        let stale = Metrics {
            started: Instant::now() - HEALTH_STALE_AFTER - Duration::from_secs(1),
            ..Metrics::new(Labels::from_env())
        };
        assert_eq!(
            answer(&stale, "/healthz").unwrap().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            answer(&stale, "/metrics").unwrap().status(),
            StatusCode::OK,
            "metrics are served whatever the probes say"
        );
    }

    #[test]
    fn the_concurrency_gauges_are_rendered() {
        let metrics = Metrics::new(Labels::from_env());
        metrics.concurrency.limit.store(12, Ordering::Relaxed);
        metrics
            .concurrency
            .round_trip_micros
            .store(150_000, Ordering::Relaxed);
        let text = metrics.render();
        assert!(
            text.contains("# TYPE pgferry_concurrency_limit gauge"),
            "{text}"
        );
        assert!(text.contains("} 12\n"), "{text}");
        assert!(text.contains("pgferry_round_trip_seconds{"), "{text}");
        assert!(text.contains("} 0.15\n"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let labels = Labels {
            region: "a\"b".into(),
            tenant: "c\\d".into(),
            fabric: "e\nf".into(),
            workflow: "g".into(),
        };
        assert_eq!(
            labels.render(),
            r#"region="a\"b",tenant="c\\d",fabric="e\nf",workflow="g""#
        );
    }
}
