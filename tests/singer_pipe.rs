//! `pgferry tap … | pgferry target-gdn …` ends with the same documents as `pgferry run` on the
//! same data (FULL_TABLE, and LOG_BASED copy then changes), and `target-gdn` refuses bad input
//! with the line number instead of skipping it.

mod gdnlite_support;
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use gdnlite_support::{all_documents, Http, Server, KEY};
use serde_json::{json, Value};
use support::PgCluster;

const TABLES: &str = r#"
CREATE TABLE public.items (
    id bigint PRIMARY KEY, name text, price numeric(12,2), big numeric(30,10), wide numeric,
    at timestamptz, d date, ok boolean, tags int[], doc jsonb, "_rev" int, r double precision);
INSERT INTO public.items
  SELECT n, 'item ' || n, (n % 100000) / 100.0, n * 1234567.0123456789, n * 100000000000000000000.5,
         '2024-01-01 00:00:00+00'::timestamptz + n * interval '1 hour', DATE '2024-01-01' + n,
         n % 2 = 0, ARRAY[n, n + 1], jsonb_build_object('n', n, 'half', n / 2.0), n % 7, n / 3.0
  FROM generate_series(1, 1500) AS n;
INSERT INTO public.items (id) VALUES (0);
CREATE TABLE public.lines (order_id int, line text, qty int, PRIMARY KEY (order_id, line));
INSERT INTO public.lines VALUES (1, 'a', 1), (1, 'b', 2), (2, 'a', 3), (1, 'a:b', 4), (3, 'x y/z', 5);
CREATE TABLE public.tagged (code text NOT NULL, v int);
CREATE UNIQUE INDEX tagged_code ON public.tagged (code);
ALTER TABLE public.tagged REPLICA IDENTITY USING INDEX tagged_code;
INSERT INTO public.tagged VALUES ('one', 1), ('two', 2), ('three', 3);
"#;

fn write(dir: &Path, name: &str, value: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, value.to_string()).expect("write file");
    path
}

fn source(port: u16, method: &str) -> Value {
    json!({
        "host": "127.0.0.1", "port": port, "user": "postgres", "password": "x",
        "dbname": "postgres", "sslmode": "disable", "filter_schemas": "public",
        "replication_method": method
    })
}

/// Runs `pgferry tap -c tap.json [-s state] | pgferry target-gdn -c target.json`; returns the
/// target's stdout (the STATE lines) after checking both exit codes.
fn pipe(tap_config: &Path, state: Option<&Path>, target_config: &Path) -> String {
    let mut tap = Command::new(env!("CARGO_BIN_EXE_pgferry"));
    tap.arg("tap").arg("-c").arg(tap_config);
    if let Some(state) = state {
        tap.arg("-s").arg(state);
    }
    let mut tap = tap
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the tap");
    let target = Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["target-gdn", "-c"])
        .arg(target_config)
        .stdin(tap.stdout.take().expect("tap stdout"))
        .output()
        .expect("run target-gdn");
    let tap = tap.wait_with_output().expect("wait for the tap");
    assert_eq!(
        tap.status.code(),
        Some(0),
        "tap: {}",
        String::from_utf8_lossy(&tap.stderr)
    );
    assert_eq!(
        target.status.code(),
        Some(0),
        "target-gdn: {}",
        String::from_utf8_lossy(&target.stderr)
    );
    String::from_utf8_lossy(&target.stdout).into_owned()
}

fn run(port: u16, url: &str) {
    let mut config = json!({
        "source": source(port, "FULL_TABLE"),
        "destination": {"gdn_url": url, "api_key": KEY, "collection_name": "run_{table}"},
        "parallelism": 2
    });
    config["source"]
        .as_object_mut()
        .expect("object")
        .remove("filter_schemas");
    config["tables"] = json!(["public.items", "public.lines", "public.tagged"]);
    let config = match config {
        Value::Object(map) => pgferry::config::PipelineConfig::from_object(&map).expect("pipeline"),
        _ => unreachable!("an object"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime
        .block_on(pgferry::pipeline::run(&config))
        .expect("pgferry run");
}

async fn assert_same(url: &str, table: &str) -> usize {
    let http = Http::h1(url);
    let piped = all_documents(&http, &format!("pipe_{table}"), true).await;
    let copied = all_documents(&http, &format!("run_{table}"), true).await;
    for (key, document) in &copied {
        assert_eq!(
            piped.get(key),
            Some(document),
            "{table}: document {key} differs between tap | target-gdn and pgferry run"
        );
    }
    assert_eq!(piped.len(), copied.len(), "{table}: document counts");
    piped.len()
}

async fn in_blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work)
        .await
        .expect("blocking work")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_into_target_gdn_equals_pgferry_run() {
    let cluster = PgCluster::start_default();
    cluster.require_wal2json();
    cluster.psql(TABLES);
    let server = Server::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let target = write(
        dir.path(),
        "target.json",
        &json!({"gdn_url": server.url(), "api_key": KEY, "collection_name": "pipe_{table}",
                "batch_size_rows": 200, "batch_flush_interval": 1}),
    );

    // FULL_TABLE.
    let tap_config = write(
        dir.path(),
        "tap.json",
        &source(cluster.port(), "FULL_TABLE"),
    );
    let states = {
        let (tap_config, target) = (tap_config.clone(), target.clone());
        in_blocking(move || pipe(&tap_config, None, &target)).await
    };
    assert!(states.lines().count() >= 2, "STATE lines echoed: {states}");
    let url = server.url();
    let port = cluster.port();
    {
        let url = url.clone();
        in_blocking(move || run(port, &url)).await;
    }
    assert_eq!(assert_same(&url, "items").await, 1501);
    assert_eq!(
        assert_same(&url, "lines").await,
        5,
        "composite keys do not collide"
    );
    let http = Http::h1(&url);
    let items = all_documents(&http, "pipe_items", true).await;
    assert_eq!(
        items["7"]["price"],
        json!(0.07),
        "numeric(12,2) 0.07 is neither dropped nor rounded"
    );
    assert_eq!(
        items["7"]["__rev"],
        json!(0),
        "reserved names renamed as the pipeline does"
    );
    assert_eq!(
        items["1"]["wide"],
        json!("100000000000000000000.5"),
        "wide numerics keep every digit"
    );

    // LOG_BASED: the first run copies, the changes stream on the next.
    let tap_config = write(
        dir.path(),
        "tap-log.json",
        &source(cluster.port(), "LOG_BASED"),
    );
    let state_path = dir.path().join("state.json");
    let first = {
        let (tap_config, target) = (tap_config.clone(), target.clone());
        in_blocking(move || pipe(&tap_config, None, &target)).await
    };
    std::fs::write(&state_path, first.lines().last().expect("a STATE")).expect("state");
    cluster.psql(
        "INSERT INTO public.items (id, name, price) VALUES (5000, 'new', 0.29);
         UPDATE public.items SET name = 'renamed', wide = NULL WHERE id BETWEEN 10 AND 20;
         DELETE FROM public.items WHERE id BETWEEN 100 AND 199;
         UPDATE public.lines SET line = 'c' WHERE order_id = 2 AND line = 'a';
         DELETE FROM public.lines WHERE order_id = 3;
         INSERT INTO public.lines VALUES (4, 'd', 9);
         DELETE FROM public.tagged WHERE code = 'two';
         UPDATE public.tagged SET v = 30 WHERE code = 'three';",
    );
    let second = {
        let (tap_config, target, state) = (tap_config.clone(), target.clone(), state_path.clone());
        in_blocking(move || pipe(&tap_config, Some(&state), &target)).await
    };
    let last: Value = serde_json::from_str(second.lines().last().expect("a STATE")).expect("JSON");
    assert!(
        last["bookmarks"]["public-items"]["lsn"].as_u64().is_some(),
        "{last}"
    );
    {
        let url = url.clone();
        in_blocking(move || run(port, &url)).await;
    }
    // `run` upserts: documents of deleted rows are still in its collections from the first run.
    let http = Http::h1(&url);
    for key in (100..200).map(|n| n.to_string()) {
        http.call(
            hyper::Method::DELETE,
            &gdnlite_support::api(&format!("document/run_items/{key}")),
            Value::Null,
        )
        .await;
    }
    for key in ["3:x%20y%2Fz", "2:a"] {
        http.call(
            hyper::Method::DELETE,
            &gdnlite_support::api(&format!("document/run_lines/{}", key.replace('%', "%25"))),
            Value::Null,
        )
        .await;
    }
    assert_eq!(assert_same(&url, "items").await, 1402);
    assert_eq!(assert_same(&url, "lines").await, 5);
    http.call(
        hyper::Method::DELETE,
        &gdnlite_support::api("document/run_tagged/two"),
        Value::Null,
    )
    .await;
    assert_eq!(assert_same(&url, "tagged").await, 2);
}

fn target_gdn(config: &Path, input: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["target-gdn", "-c"])
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run target-gdn");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let output = child.wait_with_output().expect("wait");
    writer.join().expect("writer");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_gdn_refuses_bad_input_with_its_line() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write(
        dir.path(),
        "target.json",
        &json!({"gdn_url": server.url(), "api_key": KEY, "target_collection": "all"}),
    );
    let schema = r#"{"type": "SCHEMA", "stream": "public-t", "schema": {"properties": {"id": {"type": ["integer"]}, "n": {"type": ["null", "number"], "multipleOf": 0.01}}}, "key_properties": ["id"]}"#;
    let good = r#"{"type": "RECORD", "stream": "public-t", "record": {"id": 1, "n": 0.07}}"#;
    let state = r#"{"type": "STATE", "value": {"bookmarks": {"public-t": {"lsn": 1}}}}"#;

    let cases = [
        (format!("{schema}\n{good}\n{state}\n{{\"type\": \"RECORD\", \"stream\": \"public-t\", \"record\": {{\"id\": \"one\"}}}}\n"), "line 4: stream public-t: property \"id\" is string"),
        (format!("{good}\n"), "line 1: stream public-t: a RECORD before the stream's SCHEMA"),
        (format!("{schema}\n{{\"type\": \"RECORD\", \"stream\": \"public-t\", \"record\": {{\"n\": 1}}}}\n"), "line 2: stream public-t: key property \"id\" is missing"),
        (format!("{schema}\nnot json\n"), "line 2: not a JSON Singer message"),
    ];
    let config_path = config.clone();
    for (input, expected) in cases {
        let config = config_path.clone();
        let (code, stdout, stderr) = in_blocking(move || target_gdn(&config, &input)).await;
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in:\n{stderr}"
        );
        assert_eq!(
            stdout, "",
            "no STATE is echoed for data that was not written"
        );
    }
    // A good run echoes the state once the record is durable, and 0.07 is kept.
    let config = config_path.clone();
    let (code, stdout, stderr) =
        in_blocking(move || target_gdn(&config, &format!("{schema}\n{good}\n{state}\n"))).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "{\"bookmarks\": {\"public-t\": {\"lsn\": 1}}}\n");
    let documents = all_documents(&Http::h1(&server.url()), "all", true).await;
    assert_eq!(documents["1"], json!({"_key": "1", "id": 1, "n": 0.07}));

    let bad = write(dir.path(), "bad.json", &json!({"gdn_url": server.url()}));
    let (code, _, stderr) = in_blocking(move || target_gdn(&bad, "")).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("api_key"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_gdn_serves_the_old_metrics_while_it_runs() {
    use std::io::BufRead;

    let server = Server::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write(
        dir.path(),
        "target.json",
        &json!({"gdn_url": server.url(), "api_key": KEY, "batch_flush_interval": 1, "batch_flush_min_time_gap": 0}),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args([
            "target-gdn",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "-c",
        ])
        .arg(&config)
        .env("GDN_FABRIC", "_system")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start target-gdn");
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, r#"{{"type": "SCHEMA", "stream": "public-m", "schema": {{"properties": {{"id": {{"type": ["integer"]}}}}}}, "key_properties": ["id"]}}"#).expect("write");
    for id in 1..=3 {
        writeln!(
            stdin,
            r#"{{"type": "RECORD", "stream": "public-m", "record": {{"id": {id}}}}}"#
        )
        .expect("write");
    }
    writeln!(stdin, r#"{{"type": "STATE", "value": {{"n": 1}}}}"#).expect("write");
    stdin.flush().expect("flush");
    // The flush timer writes the records while stdin stays open, then the STATE comes out.
    let stdout = child.stdout.take().expect("stdout");
    let first = in_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .next()
            .and_then(Result::ok)
            .unwrap_or_default()
    })
    .await;
    assert_eq!(first, r#"{"n": 1}"#);
    let metrics = Http::h1(&format!("http://127.0.0.1:{port}"))
        .raw(hyper::Method::GET, "/metrics", Vec::new())
        .await;
    let text = String::from_utf8_lossy(&metrics.raw).into_owned();
    assert!(
        text.contains(
            r#"ingested_documents{region="NA",tenant="NA",fabric="_system",workflow="NA"} 3"#
        ),
        "{text}"
    );
    assert!(text.contains("ingest_errors{"), "{text}");
    drop(stdin);
    let output = in_blocking(move || child.wait_with_output())
        .await
        .expect("exit");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_gdn_retries_documents_gdn_fails_one_by_one() {
    // A third of the documents of every request fail alone (errorNum 1, "retry"): upserts,
    // partial updates and deletes must all be sent again, as `pgferry run` does, not stop the run.
    let server = Server::start_with(|config| {
        config.faults = pgferry::gdnlite::FaultConfig {
            document_error_rate: 0.3,
            seed: Some(7),
            ..pgferry::gdnlite::FaultConfig::default()
        };
    })
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write(
        dir.path(),
        "target.json",
        &json!({"gdn_url": server.url(), "api_key": KEY, "batch_size_rows": 20,
                "batch_flush_min_time_gap": 0}),
    );
    let schema = r#"{"type": "SCHEMA", "stream": "public-t", "schema": {"properties": {"id": {"type": ["integer"]}, "v": {"type": ["null", "integer"]}, "w": {"type": ["null", "string"]}, "_sdc_deleted_at": {"type": ["null", "string"]}}}, "key_properties": ["id"]}"#;
    let mut input = format!("{schema}\n");
    for id in 1..=60 {
        input.push_str(&format!(
            "{{\"type\": \"RECORD\", \"stream\": \"public-t\", \"record\": {{\"id\": {id}, \"v\": {id}, \"w\": \"w{id}\", \"_sdc_deleted_at\": null}}}}\n"
        ));
    }
    input.push_str("{\"type\": \"STATE\", \"value\": {\"n\": 1}}\n");
    // Partial updates (no `w`: an unchanged TOASTed column) of 1–30, deletes of 31–60.
    for id in 1..=30 {
        input.push_str(&format!(
            "{{\"type\": \"RECORD\", \"stream\": \"public-t\", \"record\": {{\"id\": {id}, \"v\": {}}}}}\n",
            -id
        ));
    }
    for id in 31..=60 {
        input.push_str(&format!(
            "{{\"type\": \"RECORD\", \"stream\": \"public-t\", \"record\": {{\"id\": {id}, \"_sdc_deleted_at\": \"2024-01-01T00:00:00Z\"}}}}\n"
        ));
    }
    input.push_str("{\"type\": \"STATE\", \"value\": {\"n\": 2}}\n");
    let (code, stdout, stderr) = in_blocking(move || target_gdn(&config, &input)).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "{\"n\": 1}\n{\"n\": 2}\n");
    let documents = all_documents(&Http::h1(&server.url()), "t", true).await;
    let expected: std::collections::BTreeMap<String, (Value, Value)> = (1..=30)
        .map(|id| (id.to_string(), (json!(-id), json!(format!("w{id}")))))
        .collect();
    let actual: std::collections::BTreeMap<String, (Value, Value)> = documents
        .iter()
        .map(|(key, document)| (key.clone(), (document["v"].clone(), document["w"].clone())))
        .collect();
    assert_eq!(actual, expected, "1–30 patched, keeping w; 31–60 deleted");
}
