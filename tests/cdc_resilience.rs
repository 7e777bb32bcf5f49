//! Streaming through what production throws at it: PostgreSQL and gdnlite restarted under a
//! running stream (pgferry reconnects and resumes from its watermark), columns added, dropped
//! and retyped while changes are in flight, a quiet selected table beside busy ones (the slot
//! must not hold WAL), and one transaction of a million rows in bounded memory.

mod gdnlite_support;
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gdnlite_support::{api, wait_for, Http, Server, KEY};
use hyper::Method;
use pgferry::config::PipelineConfig;
use pgferry::metrics::{Labels, Metrics};
use pgferry::pipeline::{run_with, RunControl};
use serde_json::{json, Value};
use support::PgCluster;

fn pipeline(cluster: &PgCluster, gdn_url: &str, dir: &Path, extra: Value) -> PipelineConfig {
    gdnlite_support::log_based_pipeline(cluster.port(), gdn_url, dir, extra)
}

/// Starts a continuous LOG_BASED run (no `--once`) on `runtime`; send `true` to stop it.
fn spawn_continuous_run(
    runtime: &tokio::runtime::Handle,
    config: &PipelineConfig,
    metrics: &Arc<Metrics>,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<Result<pgferry::pipeline::RunSummary, pgferry::pipeline::RunError>>,
) {
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let config = config.clone();
    let metrics = Arc::clone(metrics);
    let run = runtime.spawn(async move {
        run_with(
            &config,
            metrics,
            RunControl {
                shutdown,
                once: false,
                resnapshot: Vec::new(),
            },
        )
        .await
    });
    (stop, run)
}

async fn documents(http: &Http, collection: &str) -> BTreeMap<String, Value> {
    gdnlite_support::all_documents(http, collection, true).await
}

/// A FULL_TABLE copy of `table` into `<table>_oracle`, by the binary COPY path.
async fn fresh_copy(
    cluster: &PgCluster,
    server: &Server,
    dir: &Path,
    table: &str,
) -> BTreeMap<String, Value> {
    let oracle_dir = dir.join(format!("oracle-{table}"));
    std::fs::create_dir_all(&oracle_dir).expect("oracle dir");
    let collection = format!("{table}_oracle");
    let mut config = pipeline(
        cluster,
        &server.url(),
        &oracle_dir,
        json!({"tables": [{"table": format!("public.{table}"), "collection": collection}]}),
    );
    config.source.replication_method = pgferry::config::ReplicationMethod::FullTable;
    let http = Http::h1(&server.url());
    let _ = http
        .call(
            Method::DELETE,
            &api(&format!("collection/{collection}")),
            Value::Null,
        )
        .await;
    pgferry::pipeline::run(&config).await.expect("oracle copy");
    documents(&http, &collection).await
}

fn slot_confirmed(cluster: &PgCluster) -> pgferry::pg::Lsn {
    cluster
        .psql("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'macrometa_postgres'")
        .parse()
        .expect("lsn")
}

/// One round of changes on `events` (inserts, updates, a delete) and `accounts`.
fn workload_round(cluster: &PgCluster, round: u64) {
    cluster.psql(&format!(
        "INSERT INTO public.events (v, note) SELECT g, 'round {round}' FROM generate_series(1, 200) g;
         UPDATE public.events SET v = v + 1000 WHERE id % 17 = {};
         DELETE FROM public.events WHERE id % 101 = {};
         UPDATE public.accounts SET balance = balance + {round} WHERE id % 5 = {};",
        round % 17,
        round % 101,
        round % 5
    ));
}

#[test]
fn postgres_and_gdnlite_restarts_mid_stream_lose_nothing() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let mut cluster = PgCluster::start_default();
    cluster.require_wal2json();
    cluster.psql(
        "CREATE TABLE public.events (id bigserial PRIMARY KEY, v int, note text);
         CREATE TABLE public.accounts (id int PRIMARY KEY, balance numeric(12,2));
         INSERT INTO public.accounts SELECT g, 0 FROM generate_series(1, 50) g;",
    );
    let mut server = runtime.block_on(Server::start());
    let dir = tempfile::tempdir().expect("temp dir");
    let config = pipeline(
        &cluster,
        &server.url(),
        dir.path(),
        json!({"tables": ["public.events", "public.accounts"], "destination": {"max_retries": 2}}),
    );
    runtime
        .block_on(pgferry::pipeline::run(&config))
        .expect("the first run copies");

    let metrics = Arc::new(Metrics::new(Labels::from_env()));
    let (stop, streaming) = spawn_continuous_run(runtime.handle(), &config, &metrics);

    for round in 0..5 {
        workload_round(&cluster, round);
    }
    // PostgreSQL goes away for two seconds: the stream and the side connection break.
    cluster.restart(Duration::from_secs(2));
    for round in 5..10 {
        workload_round(&cluster, round);
    }
    // gdnlite goes away for four seconds, longer than the writer's own retries.
    runtime.block_on(server.restart_in_place(Duration::from_secs(4)));
    for round in 10..15 {
        workload_round(&cluster, round);
    }

    let http = runtime.block_on(async { Http::h1(&server.url()) });
    let expected_events: usize = cluster
        .psql("SELECT count(*) FROM public.events")
        .parse()
        .expect("count");
    runtime.block_on(wait_for(
        "every event row in gdnlite after the restarts",
        Duration::from_secs(120),
        || async { documents(&http, "events").await.len() == expected_events },
    ));
    let target: pgferry::pg::Lsn = cluster
        .psql("SELECT pg_current_wal_lsn()")
        .parse()
        .expect("lsn");
    runtime.block_on(wait_for(
        "the watermark to pass the last workload commit",
        Duration::from_secs(60),
        || async { slot_confirmed(&cluster) >= target },
    ));
    stop.send(true).expect("the run listens");
    let summary = runtime
        .block_on(streaming)
        .expect("the run task")
        .expect("the run ends cleanly after SIGTERM-like shutdown");
    let streamed = summary.streaming.expect("streaming summary");
    assert!(
        streamed.reconnects >= 1,
        "the PostgreSQL restart forces a reconnect: {streamed:?}"
    );
    assert_eq!(
        metrics
            .reconnects
            .load(std::sync::atomic::Ordering::Relaxed),
        streamed.reconnects
    );
    assert_eq!(slot_confirmed(&cluster), streamed.confirmed);

    for table in ["events", "accounts"] {
        let streamed = runtime.block_on(documents(&http, table));
        let oracle = runtime.block_on(fresh_copy(&cluster, &server, dir.path(), table));
        assert_eq!(streamed.len(), oracle.len(), "{table}: document count");
        for (key, expected) in &oracle {
            assert_eq!(streamed.get(key), Some(expected), "{table}: document {key}");
        }
    }
    let metrics_text = metrics.render();
    assert!(
        metrics.ingest_lag.count() > 0,
        "commit-to-GDN latency measured: {metrics_text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_added_dropped_and_retyped_while_streaming_follow_each_change() {
    let cluster = PgCluster::start_default();
    cluster.require_wal2json();
    cluster.psql(
        "CREATE TABLE public.shapes (id int PRIMARY KEY, a int, gone text, n int);
         INSERT INTO public.shapes SELECT g, g, 'old ' || g, g FROM generate_series(1, 20) g;",
    );
    let server = Server::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = pipeline(
        &cluster,
        &server.url(),
        dir.path(),
        json!({"tables": ["public.shapes"]}),
    );
    pgferry::pipeline::run(&config).await.expect("first run");

    // All of this is decoded after the last ALTER: each change must be read with the shape
    // the row had when it was made, not the catalog of today.
    cluster.psql(
        "ALTER TABLE public.shapes ADD COLUMN extra jsonb;
         INSERT INTO public.shapes VALUES (21, 21, 'old 21', 21, '{\"k\": [1, 2]}');
         UPDATE public.shapes SET extra = '{\"touched\": true}', a = -1 WHERE id = 1;
         ALTER TABLE public.shapes DROP COLUMN gone;
         INSERT INTO public.shapes (id, a, n, extra) VALUES (22, 22, 22, 'null');
         UPDATE public.shapes SET a = -2 WHERE id = 2;
         ALTER TABLE public.shapes ALTER COLUMN n TYPE numeric(20,5);
         UPDATE public.shapes SET n = n + 0.5 WHERE id = 3;
         INSERT INTO public.shapes (id, a, n) VALUES (23, 23, 12345678901234.56789);
         UPDATE public.shapes SET a = -4 WHERE id IN (1, 2, 21, 22);",
    );
    let summary = pgferry::pipeline::run(&config)
        .await
        .expect("the stream follows every shape");
    assert_eq!(summary.streaming.expect("streams").changes, 10);

    let http = Http::h1(&server.url());
    let streamed = documents(&http, "shapes").await;
    let oracle = fresh_copy(&cluster, &server, dir.path(), "shapes").await;
    // Rows changed after the last ALTER are exactly what a copy of today gives.
    for key in ["1", "2", "3", "21", "22", "23"] {
        assert_eq!(streamed.get(key), oracle.get(key), "document {key}");
    }
    assert_eq!(
        streamed["3"]["n"],
        json!("3.50000"),
        "numeric(20,5) is exact text"
    );
    assert_eq!(streamed["23"]["n"], json!("12345678901234.56789"));
    assert_eq!(streamed["1"]["extra"], json!({"touched": true}));
    assert!(
        streamed["1"].get("gone").is_none(),
        "the dropped column left the rows changed since"
    );
    // Rows untouched since the DDL keep the shape they were written with: no change of theirs
    // went through the slot (documented in the README).
    assert_eq!(streamed["5"]["gone"], json!("old 5"));
    assert_eq!(streamed["5"]["n"], json!(5));
    assert_eq!(streamed.len(), oracle.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_selected_table_does_not_make_the_slot_hold_wal() {
    let cluster = PgCluster::start_default();
    cluster.require_wal2json();
    cluster.psql(
        "CREATE TABLE public.quiet (id int PRIMARY KEY, v text);
         CREATE TABLE public.busy (id bigserial PRIMARY KEY, payload text);
         INSERT INTO public.quiet VALUES (1, 'only row');",
    );
    let server = Server::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = pipeline(
        &cluster,
        &server.url(),
        dir.path(),
        json!({"tables": ["public.quiet"]}),
    );
    pgferry::pipeline::run(&config).await.expect("first run");

    let metrics = Arc::new(Metrics::new(Labels::from_env()));
    let (stop, streaming) =
        spawn_continuous_run(&tokio::runtime::Handle::current(), &config, &metrics);
    // About 100 MB of WAL for a table the pipeline does not read.
    for _ in 0..10 {
        let cluster = &cluster;
        tokio::task::block_in_place(|| {
            cluster.psql(
                "INSERT INTO public.busy (payload) SELECT repeat(md5(g::text), 8) FROM generate_series(1, 25000) g;",
            )
        });
    }
    let end: pgferry::pg::Lsn = cluster
        .psql("SELECT pg_current_wal_lsn()")
        .parse()
        .expect("lsn");
    wait_for(
        "the slot confirmed past the busy table's WAL",
        Duration::from_secs(60),
        || async { slot_confirmed(&cluster) >= end },
    )
    .await;
    // A checkpoint logs the running transactions, which lets the slot's restart_lsn move on.
    wait_for(
        "the slot to retain less than 32 MB of WAL",
        Duration::from_secs(60),
        || async {
            let retained: u64 = tokio::task::block_in_place(|| {
                cluster.psql(
                    "CHECKPOINT; SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = 'macrometa_postgres'",
                )
            })
            .parse()
            .unwrap_or(u64::MAX);
            retained < 32 * 1024 * 1024
        },
    )
    .await;
    stop.send(true).expect("the run listens");
    let summary = streaming
        .await
        .expect("run task")
        .expect("clean stop")
        .streaming
        .expect("streams");
    assert_eq!(summary.changes, 0, "nothing of the quiet table changed");
}

#[test]
fn a_million_row_transaction_streams_through_in_bounded_memory() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let cluster = PgCluster::start_default();
    cluster.require_wal2json();
    cluster.psql("CREATE TABLE public.bulk (id int PRIMARY KEY, v int, note text);");
    let server = runtime.block_on(Server::start());
    let dir = tempfile::tempdir().expect("temp dir");
    let config = json!({
        "source": {
            "host": "127.0.0.1", "port": cluster.port(), "user": "postgres",
            "password": "trust", "dbname": "postgres", "sslmode": "disable",
            "replication_method": "LOG_BASED"
        },
        "destination": {"gdn_url": server.url(), "api_key": KEY, "batch_size_rows": 1000},
        "tables": ["public.bulk"],
        "state_file": dir.path().join("state.json").display().to_string()
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, config.to_string()).expect("write pipeline");
    let run = || support::run_to_completion(&path);
    run();
    cluster.psql(
        "BEGIN;
         INSERT INTO public.bulk SELECT g, g, 'row ' || g FROM generate_series(1, 1000000) g;
         UPDATE public.bulk SET v = -v WHERE id <= 1000;
         COMMIT;",
    );
    let summary = run();
    assert!(summary.contains("streamed 1001000 changes"), "{summary}");
    let peak = support::peak_rss_mb(&summary);
    // The transaction's decoded JSON alone is ~150 MB: flushing mid-transaction keeps the
    // process far below that.
    assert!(peak < 120.0, "peak RSS {peak} MB for a 1M-row transaction");
    let http = runtime.block_on(async { Http::h1(&server.url()) });
    let count =
        runtime.block_on(http.call(Method::GET, &api("collection/bulk/count"), Value::Null));
    assert_eq!(count.json["count"], json!(1_000_000), "{:?}", count.json);
    let first = runtime.block_on(http.call(Method::GET, &api("document/bulk/1"), Value::Null));
    assert_eq!(first.json["v"], json!(-1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_move_the_slot_of_an_idle_database() {
    let cluster = PgCluster::start_default();
    cluster.require_wal2json();
    cluster.psql("CREATE TABLE public.still (id int PRIMARY KEY);");
    let server = Server::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = pipeline(
        &cluster,
        &server.url(),
        dir.path(),
        json!({"tables": ["public.still"], "source": {"heartbeat_interval": 1}}),
    );
    pgferry::pipeline::run(&config).await.expect("first run");
    let metrics = Arc::new(Metrics::new(Labels::from_env()));
    let (stop, streaming) =
        spawn_continuous_run(&tokio::runtime::Handle::current(), &config, &metrics);
    // Once the run streams (it has confirmed a position), nothing writes to this cluster but
    // pgferry's heartbeats: WAL past this point is theirs.
    wait_for(
        "the continuous run to stream",
        Duration::from_secs(30),
        || async {
            metrics
                .confirmed_lsn
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        },
    )
    .await;
    let start: pgferry::pg::Lsn = tokio::task::block_in_place(|| {
        cluster
            .psql("SELECT pg_current_wal_lsn()")
            .parse()
            .expect("lsn")
    });
    wait_for(
        "the slot to move past a heartbeat",
        Duration::from_secs(30),
        || async { tokio::task::block_in_place(|| slot_confirmed(&cluster)) > start },
    )
    .await;
    stop.send(true).expect("the run listens");
    streaming.await.expect("run task").expect("clean stop");
}
