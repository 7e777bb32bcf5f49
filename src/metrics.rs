//! Prometheus metrics: the old connectors' names (`ingested_documents`, `ingested_bytes`,
//! `ingest_errors`) with their labels (`region`, `tenant`, `fabric`, `workflow` from
//! `GDN_FEDERATION`, `GDN_TENANT`, `GDN_FABRIC`, `WORKFLOW_UUID`, "NA" when unset), plus
//! pgferry's own (`pgferry_rows_read`, `pgferry_retries`, `pgferry_requests_in_flight`,
//! `pgferry_batches`, `pgferry_batch_documents`), and for change data capture `ingest_lag`
//! (seconds from a transaction's commit in PostgreSQL to GDN's durable answer, as a gauge of the
//! latest flush and as the histogram `pgferry_ingest_lag_seconds`), `pgferry_changes`,
//! `pgferry_transactions`, `pgferry_replication_lag_bytes`, `pgferry_confirmed_lsn` and
//! `pgferry_reconnects`, served as text on `--metrics-addr`.
//!
//! Counters are plain atomics updated on the hot path; rendering reads them on demand.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};

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

/// Serves `GET /metrics` (any path, in fact) on `addr`; returns the bound address and the
/// server task (abort it to stop).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = Arc::clone(&metrics);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |_request: Request<hyper::body::Incoming>| {
                        let body = metrics.render();
                        async move {
                            Response::builder()
                                .header("content-type", "text/plain; version=0.0.4")
                                .body(Full::new(Bytes::from(body)))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((bound, task))
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
