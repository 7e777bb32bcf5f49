//! GDN across a network: the adaptive request concurrency against a server that rate limits
//! three requests in ten (Retry-After honoured, retries bounded), and copies through
//! `pgferry-relay`'s link (a round trip added to every byte, connections cut mid-copy) that
//! end exact. Rates are measured by `scripts/bench-wan.sh`, not here.

mod gdnlite_support;
mod support;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use gdnlite_support::{Http, Server, KEY};
use pgferry::config::PipelineConfig;
use pgferry::gdnlite::relay::{LinkConfig, Relay};
use pgferry::metrics::{Labels, Metrics, Phase};
use pgferry::pipeline::RunControl;
use serde_json::{json, Value};
use support::PgCluster;

const MAX_IN_FLIGHT: u64 = 16;

fn pipeline(cluster: &PgCluster, gdn_url: &str, destination: Value) -> PipelineConfig {
    let mut target = json!({"gdn_url": gdn_url, "api_key": KEY, "batch_size_rows": 500,
        "max_in_flight": MAX_IN_FLIGHT, "max_retries": 30});
    if let (Some(target), Some(extra)) = (target.as_object_mut(), destination.as_object()) {
        target.extend(extra.clone());
    }
    let config = json!({
        "source": {
            "host": "127.0.0.1", "port": cluster.port(), "user": "postgres",
            "password": "trust", "dbname": "postgres", "sslmode": "disable",
            "replication_method": "FULL_TABLE"
        },
        "destination": target,
        "parallelism": 2
    });
    match config {
        Value::Object(map) => PipelineConfig::from_object(&map).expect("valid pipeline"),
        _ => unreachable!("a JSON object"),
    }
}

fn fill(cluster: &PgCluster, rows: u64) {
    cluster.psql(&format!(
        "CREATE TABLE public.events (id bigint PRIMARY KEY, body text, amount numeric(12,2));
         INSERT INTO public.events SELECT g, md5(g::text), (g % 100000) / 100.0 FROM generate_series(1, {rows}) g;"
    ));
}

/// One document per row, each with its row's values.
async fn assert_exact_copy(url: &str, rows: u64) {
    let http = Http::h1(url);
    let docs: BTreeMap<String, Value> =
        gdnlite_support::all_documents(&http, "events", false).await;
    assert_eq!(docs.len() as u64, rows, "one document per row");
    let mut id_sum = 0u64;
    for (key, doc) in &docs {
        let id = doc["id"].as_u64().expect("id");
        assert_eq!(key, &id.to_string());
        assert_eq!(doc["amount"].as_f64(), Some((id % 100_000) as f64 / 100.0));
        id_sum += id;
    }
    assert_eq!(id_sum, rows * (rows + 1) / 2, "checksum of ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_rate_limits_three_requests_in_ten_still_gets_an_exact_copy() {
    const ROWS: u64 = 10_000;
    let cluster = PgCluster::start_default();
    fill(&cluster, ROWS);
    let mut server = Server::start_with(|config| {
        // gdnlite answers these with `Retry-After: 1`.
        config.faults.rate_limit_rate = 0.3;
        config.faults.seed = Some(11);
    })
    .await;
    let config = pipeline(&cluster, &server.url(), json!({}));
    let metrics = Arc::new(Metrics::new(Labels::from_env()));
    let summary = pgferry::pipeline::run_with(&config, Arc::clone(&metrics), RunControl::once())
        .await
        .expect("the copy ends despite the 429s");
    assert_eq!(summary.documents, ROWS);
    // 20 requests of 500 documents, each attempt refused with probability 0.3: retries happen,
    // and stay bounded (about 9 expected; far fewer than the 20 × 29 the settings would allow).
    let batches = ROWS / 500;
    assert!(summary.retries > 0, "429s were answered and retried");
    assert!(
        summary.retries <= batches * 3,
        "{} retries for {batches} requests",
        summary.retries
    );
    let limit = metrics.concurrency_limit();
    assert!(
        (1..=MAX_IN_FLIGHT).contains(&limit),
        "the adaptive limit {limit} stays within 1..=max_in_flight"
    );
    assert_eq!(metrics.phase(), Phase::Finished);

    server.config.faults = Default::default();
    server.restart().await;
    assert_exact_copy(&server.url(), ROWS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_through_a_delayed_link_with_cut_connections_ends_exact() {
    const ROWS: u64 = 30_000;
    let cluster = PgCluster::start_default();
    fill(&cluster, ROWS);
    let server = Server::start().await;
    let relay = Relay::start(
        "127.0.0.1:0".parse().expect("address"),
        server.handle.as_ref().expect("running").addr(),
        LinkConfig {
            round_trip: Duration::from_millis(20),
            bandwidth: Some(50_000_000),
            ..LinkConfig::default()
        },
    )
    .await
    .expect("relay starts");
    let relay = Arc::new(relay);
    let config = pipeline(
        &cluster,
        &format!("http://{}", relay.addr()),
        json!({"request_timeout": 30}),
    );
    let metrics = Arc::new(Metrics::new(Labels::from_env()));
    // Cut every connection a few times while the copy runs: each in-flight request fails as
    // a lost connection and is sent again on a new one.
    let cutter = tokio::spawn({
        let relay = Arc::clone(&relay);
        let metrics = Arc::clone(&metrics);
        async move {
            let mut cuts = 0;
            while cuts < 3 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                if metrics.ingested_documents.load(Ordering::Relaxed) > 0 {
                    cuts += usize::from(relay.reset_connections() > 0);
                }
            }
        }
    });
    let summary = pgferry::pipeline::run_with(&config, Arc::clone(&metrics), RunControl::once())
        .await
        .expect("the copy ends despite the cuts");
    let cut = cutter.is_finished();
    cutter.abort();
    eprintln!(
        "cuts done: {cut}, retries: {}, limit at the end: {}",
        summary.retries,
        metrics.concurrency_limit()
    );
    assert_eq!(summary.documents, ROWS);
    assert!(metrics.concurrency_limit() <= MAX_IN_FLIGHT);
    assert_exact_copy(&server.url(), ROWS).await;
}

/// `GET path` on the metrics server: the status and the body.
async fn probe(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer).await;
    let status = answer
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim().to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_run_from_start_through_a_reconnect_backoff_to_the_end() {
    let cluster = PgCluster::start_default();
    fill(&cluster, 100);
    let server = Server::start().await;
    let state = tempfile::tempdir().expect("temp dir");
    let config = json!({
        "source": {
            "host": "127.0.0.1", "port": cluster.port(), "user": "postgres",
            "password": "trust", "dbname": "postgres", "sslmode": "disable",
            "replication_method": "LOG_BASED", "replication_slot": "wan_probes",
            "max_reconnect_attempts": 0
        },
        "destination": {"gdn_url": server.url(), "api_key": KEY},
        "tables": ["public.events"],
        "state_file": state.path().join("state.json").to_str().expect("utf-8 path")
    });
    let config = match config {
        Value::Object(map) => PipelineConfig::from_object(&map).expect("valid pipeline"),
        _ => unreachable!("a JSON object"),
    };
    let metrics = Arc::new(Metrics::new(Labels::from_env()));
    let (addr, metrics_server) = pgferry::metrics::serve(
        "127.0.0.1:0".parse().expect("address"),
        Arc::clone(&metrics),
    )
    .await
    .expect("metrics server");
    gdnlite_support::wait_for("a heartbeat", Duration::from_secs(10), || async {
        probe(addr, "/healthz").await.0 == 200
    })
    .await;
    assert_eq!(probe(addr, "/readyz").await, (503, "starting".to_owned()));

    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let run = tokio::spawn({
        let metrics = Arc::clone(&metrics);
        async move {
            pgferry::pipeline::run_with(
                &config,
                metrics,
                RunControl {
                    shutdown,
                    once: false,
                    resnapshot: Vec::new(),
                },
            )
            .await
        }
    });
    let ready = || async { probe(addr, "/readyz").await == (200, "streaming".to_owned()) };
    gdnlite_support::wait_for("ready while streaming", Duration::from_secs(60), ready).await;

    // PostgreSQL restarts under the stream: not ready during the reconnect backoff, ready
    // again once streaming resumes.
    let mut cluster = cluster;
    let restart = std::thread::spawn(move || {
        cluster.restart(Duration::from_secs(3));
        cluster
    });
    gdnlite_support::wait_for(
        "not ready in the reconnect backoff",
        Duration::from_secs(30),
        || async { probe(addr, "/readyz").await == (503, "reconnect backoff".to_owned()) },
    )
    .await;
    let cluster = tokio::task::spawn_blocking(move || restart.join().expect("restart"))
        .await
        .expect("restart thread");
    gdnlite_support::wait_for("ready again", Duration::from_secs(60), ready).await;
    assert_eq!(probe(addr, "/healthz").await.0, 200);

    stop.send(true).expect("the run listens");
    run.await.expect("run task").expect("a clean stop");
    assert_eq!(probe(addr, "/readyz").await, (503, "finished".to_owned()));
    assert!(metrics.reconnects.load(Ordering::Relaxed) >= 1);
    metrics_server.abort();
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_a_flush_is_on_a_long_link_the_slot_is_not_confirmed_past_it() {
    // The stream reads on while a flush crosses a 2 s link; transactions on a table outside
    // the pipeline commit meanwhile (each would confirm the slot were nothing in flight).
    // Whenever the slot's confirmed position reaches a change, gdnlite (read directly, not
    // through the link) must already hold it.
    let cluster = PgCluster::start_default();
    fill(&cluster, 10);
    cluster.psql("CREATE TABLE public.other (id bigint PRIMARY KEY)");
    let server = Server::start().await;
    let relay = Relay::start(
        "127.0.0.1:0".parse().expect("address"),
        server.handle.as_ref().expect("running").addr(),
        LinkConfig {
            round_trip: Duration::from_secs(2),
            ..LinkConfig::default()
        },
    )
    .await
    .expect("relay starts");
    let state = tempfile::tempdir().expect("temp dir");
    let config = json!({
        "source": {
            "host": "127.0.0.1", "port": cluster.port(), "user": "postgres",
            "password": "trust", "dbname": "postgres", "sslmode": "disable",
            "replication_method": "LOG_BASED", "replication_slot": "wan_flight"
        },
        "destination": {"gdn_url": format!("http://{}", relay.addr()), "api_key": KEY,
                        "request_timeout": 30},
        "tables": ["public.events"],
        "state_file": state.path().join("state.json").to_str().expect("utf-8 path")
    });
    let config = match config {
        Value::Object(map) => PipelineConfig::from_object(&map).expect("valid pipeline"),
        _ => unreachable!("a JSON object"),
    };
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(async move {
        pgferry::pipeline::run_with(
            &config,
            Arc::new(Metrics::new(Labels::from_env())),
            RunControl {
                shutdown,
                once: false,
                resnapshot: Vec::new(),
            },
        )
        .await
    });
    let direct = Http::h1(&server.url());
    gdnlite_support::wait_for("the copy", Duration::from_secs(120), || async {
        gdnlite_support::document_count(&direct, "events").await == Some(10)
    })
    .await;

    let confirmed = || -> u64 {
        cluster
            .psql("SELECT (confirmed_flush_lsn - '0/0')::text FROM pg_replication_slots WHERE slot_name = 'wan_flight'")
            .parse()
            .expect("confirmed position")
    };
    let mut checked = 0;
    for id in 100..103u64 {
        let at: u64 = cluster
            .psql(&format!(
                "INSERT INTO public.events VALUES ({id}, 'in flight', 1);
                 SELECT (pg_current_wal_insert_lsn() - '0/0')::text"
            ))
            .lines()
            .last()
            .and_then(|line| line.parse().ok())
            .expect("the position after the insert");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            cluster.psql(&format!(
                "INSERT INTO public.other VALUES ({}) ON CONFLICT DO NOTHING",
                id * 1000 + checked
            ));
            checked += 1;
            if confirmed() >= at {
                let answer = direct
                    .call(
                        hyper::Method::GET,
                        &gdnlite_support::api(&format!("document/events/{id}")),
                        Value::Null,
                    )
                    .await;
                assert_eq!(
                    answer.status.as_u16(),
                    200,
                    "the slot was confirmed past row {id} before gdnlite held it"
                );
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "row {id} was never confirmed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stop.send(true).expect("the run listens");
    run.await.expect("run task").expect("a clean stop");
    drop(relay);
}
