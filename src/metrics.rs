//! Prometheus metrics: the old connectors' names (`ingested_documents`, `ingested_bytes`,
//! `ingest_errors`) with their labels (`region`, `tenant`, `fabric`, `workflow` from
//! `GDN_FEDERATION`, `GDN_TENANT`, `GDN_FABRIC`, `WORKFLOW_UUID`, "NA" when unset), plus
//! pgferry's own (`pgferry_rows_read`, `pgferry_retries`, `pgferry_requests_in_flight`,
//! `pgferry_batches`, `pgferry_batch_documents`), served as text on `--metrics-addr`.
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
