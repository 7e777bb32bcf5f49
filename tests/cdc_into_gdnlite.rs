//! LOG_BASED pipelines into gdnlite: the snapshot under the slot's snapshot, then every change
//! streamed, checked document by document against an oracle — a FULL_TABLE copy of the same
//! tables made afterwards (the binary COPY path), so streaming and copying must agree exactly.

mod gdnlite_support;
mod support;

use std::collections::BTreeMap;
use std::path::Path;

use gdnlite_support::{api, Http, Server};
use hyper::Method;
use pgferry::config::PipelineConfig;
use serde_json::{json, Value};
use support::PgCluster;

fn pipeline(cluster: &PgCluster, gdn_url: &str, dir: &Path, extra: Value) -> PipelineConfig {
    gdnlite_support::log_based_pipeline(cluster.port(), gdn_url, dir, extra)
}

/// Every document of `collection`, by `_key`.
async fn documents(http: &Http, collection: &str) -> BTreeMap<String, Value> {
    gdnlite_support::all_documents(http, collection, true).await
}

/// Compares a streamed collection with a fresh FULL_TABLE copy of the table.
async fn assert_same_as_a_fresh_copy(
    cluster: &PgCluster,
    server: &Server,
    dir: &Path,
    table: &str,
) {
    let oracle_dir = dir.join("oracle");
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
    // Start from an empty oracle each time.
    let _ = http
        .call(
            Method::DELETE,
            &api(&format!("collection/{collection}")),
            Value::Null,
        )
        .await;
    pgferry::pipeline::run(&config).await.expect("oracle copy");
    let streamed = documents(&http, table).await;
    let oracle = documents(&http, &collection).await;
    assert_eq!(streamed.len(), oracle.len(), "{table}: document count");
    for (key, expected) in &oracle {
        assert_eq!(streamed.get(key), Some(expected), "{table}: document {key}");
    }
}

/// Which plugin and format the slot speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Wal2JsonV2,
    Wal2JsonV1,
    /// pgoutput protocol 1 (no streaming of in-progress transactions), text values.
    PgOutputV1,
    /// pgoutput protocol 2 with streaming, and a server that streams after 64 kB; binary values.
    PgOutputStreaming,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_workload_streams_to_exactly_what_a_fresh_copy_gives() {
    scripted_workload(Output::Wal2JsonV2).await;
}

/// The same workload in wal2json's format-version 1 (the old connector's, sent in chunks),
/// except TRUNCATE, which wal2json never reports in that format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_version_1_streams_the_same_workload() {
    scripted_workload(Output::Wal2JsonV1).await;
}

/// The same workload through pgoutput, protocol 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgoutput_protocol_1_streams_the_same_workload() {
    scripted_workload(Output::PgOutputV1).await;
}

/// The same workload through pgoutput protocol 2 with binary values, the 20,000-row
/// transaction streamed while in progress (logical_decoding_work_mem = 64kB) and applied at
/// its commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgoutput_protocol_2_streaming_gives_the_same_result() {
    scripted_workload(Output::PgOutputStreaming).await;
}

async fn scripted_workload(output: Output) {
    let cluster = if output == Output::PgOutputStreaming {
        PgCluster::builder()
            .setting("logical_decoding_work_mem", "64kB")
            .start()
    } else {
        PgCluster::start_default()
    };
    cluster.require_wal2json();
    cluster.psql(
        r#"CREATE TYPE mood AS ENUM ('sad', 'happy');
        CREATE TABLE public.items (
            id int PRIMARY KEY, name text, big text, amount numeric(12,2), wide numeric,
            tags text[], grid int[], doc jsonb, at timestamptz, day date, t time, m mood,
            raw bytea, f real, d double precision, flag boolean, iv interval, u uuid, ip inet
        );
        ALTER TABLE public.items ALTER COLUMN big SET STORAGE EXTERNAL;
        CREATE TABLE public.pairs (a int, b text, note text, PRIMARY KEY (a, b));
        INSERT INTO public.items (id, name, big, amount, wide, tags, grid, doc, at, day, t, m, raw, f, d, flag, iv, u, ip)
        SELECT g, 'item ' || g, repeat('x', 3000) || g, g * 1.25, 12345678901234567890.123456789 + g,
               ARRAY['a' || g, 'b "quoted"', NULL], ARRAY[[g, g + 1], [g + 2, g + 3]],
               jsonb_build_object('g', g, 'nested', jsonb_build_object('list', jsonb_build_array(1, 2.50, 'x'))),
               '2024-01-01 00:00:00+02'::timestamptz + g * interval '1 hour 1.5 seconds', '2024-02-29'::date + g,
               '13:14:15.25', 'happy', '\xdeadbeef', 0.1, 1e300, g % 2 = 0, make_interval(0, 1, 0, g, 2, 3, 4.5),
               'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.0.1/24'
        FROM generate_series(1, 200) g;
        INSERT INTO public.pairs SELECT g % 5, 'k' || g, 'n' FROM generate_series(1, 50) g;"#,
    );
    let server = Server::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = pipeline(
        &cluster,
        &server.url(),
        dir.path(),
        json!({"tables": ["public.items", "public.pairs"]}),
    );
    match output {
        Output::Wal2JsonV2 | Output::Wal2JsonV1 => {
            config.source.plugin =
                pgferry::config::PluginChoice::Forced(pgferry::config::OutputPlugin::Wal2Json);
            if output == Output::Wal2JsonV1 {
                config.source.wal2json_format = pgferry::config::Wal2JsonFormat::V1;
            }
        }
        Output::PgOutputV1 | Output::PgOutputStreaming => {
            config.source.plugin =
                pgferry::config::PluginChoice::Forced(pgferry::config::OutputPlugin::PgOutput);
            config.source.pgoutput_streaming = output == Output::PgOutputStreaming;
            // Protocol 1 reads text values, protocol 2 binary ones: both decoders are covered.
            config.source.pgoutput_binary = output == Output::PgOutputStreaming;
        }
    }
    let plugin = match output {
        Output::Wal2JsonV1 | Output::Wal2JsonV2 => "wal2json",
        Output::PgOutputV1 | Output::PgOutputStreaming => "pgoutput",
    };

    // First run: slot, snapshot copy, nothing to stream yet.
    let first = pgferry::pipeline::run(&config).await.expect("first run");
    assert_eq!(first.copy.tables.iter().map(|t| t.rows).sum::<u64>(), 250);
    assert_eq!(
        cluster
            .psql("SELECT plugin FROM pg_replication_slots WHERE slot_name = 'macrometa_postgres'"),
        plugin
    );

    let truncate = if output == Output::Wal2JsonV1 {
        "DELETE FROM public.pairs;"
    } else {
        "TRUNCATE public.pairs;"
    };
    cluster.psql(
        &r#"INSERT INTO public.items (id, name, big, amount, tags, doc, at, day)
             VALUES (1000, 'new', repeat('y', 5000), 99.99, '{}', '[1, {"a": null}]', '0044-03-15 12:00:00+00 BC', '0044-03-15 BC');
           UPDATE public.items SET name = 'renamed ' || id WHERE id <= 20;          -- big is TOASTed and unchanged
           UPDATE public.items SET big = 'small now' WHERE id = 21;
           UPDATE public.items SET id = 5000 WHERE id = 22;                         -- a key change
           UPDATE public.items SET name = 'before move' WHERE id = 23;
           UPDATE public.items SET id = 6000 WHERE id = 23;                         -- a pending patch moves along
           DELETE FROM public.items WHERE id BETWEEN 30 AND 39;
           BEGIN; INSERT INTO public.items (id, name) VALUES (2000, 'x'); DELETE FROM public.items WHERE id = 2000; COMMIT;
           UPDATE public.items SET tags = NULL, doc = '{"replaced": true}' WHERE id = 40;
           TRUNCATE public.pairs;
           INSERT INTO public.pairs VALUES (1, 'after truncate', 'n');
           INSERT INTO public.items (id, name, amount) SELECT g, 'bulk', g FROM generate_series(10001, 30000) g;
           UPDATE public.items SET amount = amount + 1 WHERE id BETWEEN 10001 AND 10100;"#
            .replace("TRUNCATE public.pairs;", truncate),
    );

    let second = pgferry::pipeline::run(&config)
        .await
        .expect("streaming run");
    let streaming = second.streaming.expect("a LOG_BASED run streams");
    assert!(streaming.changes > 20_000, "{streaming:?}");
    let confirmed: pgferry::pg::Lsn = cluster
        .psql("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'macrometa_postgres'")
        .parse()
        .expect("lsn");
    assert_eq!(
        confirmed, streaming.confirmed,
        "the slot is confirmed exactly to the watermark"
    );

    let http = Http::h1(&server.url());
    let items = documents(&http, "items").await;
    assert_eq!(items["1"]["name"], json!("renamed 1"));
    assert!(
        items["1"]["big"]
            .as_str()
            .is_some_and(|big| big.len() > 3000),
        "an unchanged TOASTed value is kept, not nulled"
    );
    assert!(
        !items.contains_key("22") && items.contains_key("5000"),
        "key change moves the document"
    );
    assert_eq!(items["6000"]["name"], json!("before move"));
    assert!(
        items["6000"]["big"]
            .as_str()
            .is_some_and(|big| big.len() > 3000),
        "the moved document keeps its TOASTed value"
    );
    assert!(!items.contains_key("30") && !items.contains_key("2000"));
    assert_eq!(items["1000"]["at"], json!("-0043-03-15T12:00:00+00:00"));

    assert_same_as_a_fresh_copy(&cluster, &server, dir.path(), "items").await;
    assert_same_as_a_fresh_copy(&cluster, &server, dir.path(), "pairs").await;

    // An idle pipeline still moves the slot: other tables' WAL is confirmed away.
    cluster.psql("CREATE TABLE public.other (x int); INSERT INTO public.other SELECT generate_series(1, 1000);");
    let before: pgferry::pg::Lsn = cluster
        .psql("SELECT pg_current_wal_lsn()")
        .parse()
        .expect("lsn");
    let third = pgferry::pipeline::run(&config).await.expect("idle run");
    assert!(
        third.streaming.expect("streams").confirmed >= before,
        "idle slot confirmed past unrelated WAL"
    );
}
