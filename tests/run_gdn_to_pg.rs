//! `pgferry run` from GDN (gdnlite) into PostgreSQL: documents written before and during the
//! run all arrive, updates and deletes follow, new attributes add and widen columns, SIGKILL at
//! random points and restarts end exact, and bad configs say what to fix.

mod gdnlite_support;
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gdnlite_support::{all_documents, api, Http, Server, KEY};
use hyper::Method;
use serde_json::{json, Value};
use support::PgCluster;

/// A pipeline file from `collection` in gdnlite into `public.<collection>` of the cluster.
fn write_pipeline(dir: &Path, cluster: &PgCluster, gdn_url: &str, extra: Value) -> PathBuf {
    let mut config = json!({
        "source": {
            "type": "gdn", "gdn_url": gdn_url, "api_key": {"env": "PGFERRY_TEST_GDN_KEY"},
            "source_collection": "orders", "cursor_batch_size": 300, "cursor_ttl": 30,
            "max_retries": 3
        },
        "destination": {
            "type": "postgres", "host": "127.0.0.1", "port": cluster.port(), "user": "postgres",
            "dbname": "postgres", "sslmode": "disable",
            "batch_size_rows": 500, "batch_flush_interval": 0.2
        }
    });
    support::merge_sections(&mut config, &extra);
    let path = dir.join("pipeline.json");
    std::fs::write(&path, config.to_string()).expect("write pipeline");
    path
}

fn pgferry(args: &[&str], config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pgferry"));
    command
        .args(args)
        .arg("-c")
        .arg(config)
        .env("PGFERRY_TEST_GDN_KEY", KEY);
    command
}

/// Starts a following (continuous) run, logging to `log`.
fn spawn_run(config: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    pgferry(&["run"], config)
        .stdout(Stdio::null())
        .stderr(log.try_clone().expect("log file"))
        .spawn()
        .expect("start pgferry")
}

/// Runs `pgferry run --once` to completion; returns stdout (the summary).
fn run_once(config: &Path) -> String {
    run_once_logged(config).0
}

/// Runs `pgferry run --once` to completion; returns stdout and stderr (the log).
fn run_once_logged(config: &Path) -> (String, String) {
    let output = pgferry(&["run", "--once"], config)
        .output()
        .expect("run pgferry");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "pgferry run --once failed:\n{stdout}\n{stderr}"
    );
    (stdout, stderr)
}

async fn create_collection(http: &Http, name: &str) {
    http.call(
        Method::POST,
        &api("collection"),
        json!({"name": name, "type": 2}),
    )
    .await
    .assert_ok(200);
}

async fn upsert(http: &Http, collection: &str, documents: Vec<Value>) {
    let answer = http
        .call(
            Method::POST,
            &api(&format!(
                "document/{collection}?overwrite=true&waitForSync=true"
            )),
            Value::Array(documents),
        )
        .await;
    assert!(answer.status.is_success(), "upsert: {:?}", answer.json);
}

async fn delete(http: &Http, collection: &str, keys: Vec<String>) {
    let answer = http
        .call(
            Method::DELETE,
            &api(&format!("document/{collection}?waitForSync=true")),
            json!(keys),
        )
        .await;
    assert!(answer.status.is_success(), "delete: {:?}", answer.json);
}

/// Every row of `public.<table>` by `_key`, as JSON (`to_jsonb` of the row without `_key`).
fn rows(cluster: &PgCluster, table: &str) -> BTreeMap<String, Value> {
    let exists = cluster.psql(&format!(
        "SELECT to_regclass('public.\"{table}\"') IS NOT NULL"
    ));
    if exists != "t" {
        return BTreeMap::new();
    }
    let text = cluster.psql(&format!(
        "SELECT coalesce(jsonb_object_agg(\"_key\", to_jsonb(t) - '_key'), '{{}}') FROM public.\"{table}\" t"
    ));
    serde_json::from_str(&text).expect("rows as JSON")
}

/// Every row equals its document: the same keys, each attribute in its column with its value,
/// every other column NULL. `Err` says the first difference.
fn compare(
    rows: &BTreeMap<String, Value>,
    documents: &BTreeMap<String, Value>,
) -> Result<(), String> {
    if rows.len() != documents.len() {
        let missing: Vec<&String> = documents
            .keys()
            .filter(|key| !rows.contains_key(*key))
            .take(5)
            .collect();
        let extra: Vec<&String> = rows
            .keys()
            .filter(|key| !documents.contains_key(*key))
            .take(5)
            .collect();
        return Err(format!(
            "{} rows for {} documents (missing e.g. {missing:?}, extra e.g. {extra:?})",
            rows.len(),
            documents.len()
        ));
    }
    for (key, document) in documents {
        let row = rows
            .get(key)
            .ok_or_else(|| format!("no row for document {key}"))?;
        let row = row.as_object().ok_or("a row is not an object")?;
        for (attribute, value) in document.as_object().ok_or("a document is not an object")? {
            if attribute == "_key" {
                continue;
            }
            // An attribute that has only been null has no column yet: NULL all the same.
            let stored = row.get(attribute).unwrap_or(&Value::Null);
            if !same_value(stored, value) {
                return Err(format!(
                    "document {key}, attribute {attribute}: expected {value}, the row has {stored}"
                ));
            }
        }
        for (column, stored) in row {
            if document.get(column).is_none() && !stored.is_null() {
                return Err(format!(
                    "document {key} has no {column}, but the row holds {stored}"
                ));
            }
        }
    }
    Ok(())
}

/// Whether a stored value is the document's: equal JSON, except that a double in a `numeric`
/// column is its exact value (`0.0` is stored as `0`), so numbers compare as numbers.
fn same_value(stored: &Value, value: &Value) -> bool {
    match (stored, value) {
        (Value::Number(stored), Value::Number(value)) if value.is_f64() || stored.is_f64() => {
            stored.as_f64() == value.as_f64()
        }
        _ => stored == value,
    }
}

/// Waits until the table equals the collection (or fails with the last difference).
async fn wait_until_equal(
    cluster: &PgCluster,
    http: &Http,
    collection: &str,
    timeout: Duration,
    log: &Path,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let documents = all_documents(http, collection, true).await;
        let difference = match compare(&rows(cluster, collection), &documents) {
            Ok(()) => return,
            Err(difference) => difference,
        };
        assert!(
            Instant::now() < deadline,
            "the table never matched the collection: {difference}\npgferry's log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn column_types(cluster: &PgCluster, table: &str) -> BTreeMap<String, String> {
    cluster
        .psql(&format!(
            "SELECT attname || '=' || format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = 'public.\"{table}\"'::regclass AND attnum > 0 AND NOT attisdropped"
        ))
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, sql)| (name.to_owned(), sql.to_owned()))
        .collect()
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    child.wait().expect("pgferry exits")
}

fn order(index: u64) -> Value {
    json!({
        "_key": format!("o{index}"),
        "n": index,
        "price": index as f64 + 0.25,
        "name": format!("order\t{index}\n"),
        "paid": index % 2 == 0,
        "tags": ["a", index],
        "meta": {"nested": {"index": index}, "list": [1.5, null]},
        "note": null
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_before_and_during_the_run_all_arrive_with_updates_deletes_and_new_shapes() {
    let cluster = PgCluster::start_default();
    let server = Server::start().await;
    let http = Http::h1(&server.url());
    create_collection(&http, "orders").await;
    for chunk in (0..2_500u64).collect::<Vec<_>>().chunks(500) {
        upsert(
            &http,
            "orders",
            chunk.iter().map(|&index| order(index)).collect(),
        )
        .await;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_pipeline(dir.path(), &cluster, &server.url(), json!({}));
    let log = dir.path().join("run.log");
    let mut child = spawn_run(&config, &log);

    // Written while the scan runs and after: new documents (one with a new attribute), updates
    // that change the shape of a value, and deletes.
    for chunk in (2_500..3_500u64).collect::<Vec<_>>().chunks(250) {
        upsert(
            &http,
            "orders",
            chunk.iter().map(|&index| order(index)).collect(),
        )
        .await;
    }
    upsert(
        &http,
        "orders",
        vec![json!({"_key": "o3500", "extra": "new attribute", "n": 1})],
    )
    .await;
    wait_until_equal(&cluster, &http, "orders", Duration::from_secs(120), &log).await;
    upsert(
        &http,
        "orders",
        (0..50u64)
            .map(|index| json!({"_key": format!("o{index}"), "n": index as f64 / 4.0, "name": index, "paid": "yes"}))
            .collect(),
    )
    .await;
    delete(
        &http,
        "orders",
        (100..300u64).map(|index| format!("o{index}")).collect(),
    )
    .await;
    upsert(&http, "orders", vec![json!({"_key": "o150", "n": -5})]).await;
    wait_until_equal(&cluster, &http, "orders", Duration::from_secs(120), &log).await;

    let status = terminate(&mut child);
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.success(),
        "SIGTERM ends the run cleanly: {status}\n{log}"
    );
    let types = column_types(&cluster, "orders");
    let expected = [
        ("_key", "text"),
        ("n", "numeric"),
        ("price", "double precision"),
        ("name", "jsonb"),
        ("paid", "jsonb"),
        ("tags", "jsonb"),
        ("meta", "jsonb"),
        ("extra", "text"),
    ];
    for (column, sql) in expected {
        assert_eq!(
            types.get(column).map(String::as_str),
            Some(sql),
            "column {column}: {types:?}"
        );
    }
    assert!(
        !types.contains_key("note"),
        "an attribute that was only null has no column yet"
    );
    assert!(
        !types.contains_key("_id") && !types.contains_key("_rev"),
        "{types:?}"
    );
    let key = cluster.psql(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) WHERE i.indrelid = 'public.orders'::regclass AND i.indisprimary",
    );
    assert_eq!(key, "_key");

    // Everything was acknowledged: a --once run finds no backlog and changes nothing.
    let before = rows(&cluster, "orders");
    let summary = run_once(&config);
    assert!(
        summary.contains("scanned 0 documents, applied 0 stream messages"),
        "{summary}"
    );
    assert_eq!(rows(&cluster, "orders"), before);
}

/// A small deterministic generator for kill points and workloads.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// Writes, updates and deletes documents until `stop`; values change kind now and then.
async fn workload(http: Http, stop: Arc<AtomicBool>, writes: Arc<AtomicU64>, seed: u64) {
    let mut random = Random(seed);
    while !stop.load(Ordering::Relaxed) {
        let key = random.below(4_000);
        if random.below(5) == 0 {
            let keys = (0..5)
                .map(|step| format!("k{}", (key + step * 7) % 4_000))
                .collect();
            delete(&http, "events", keys).await;
        } else {
            let value = match random.below(4) {
                0 => json!(random.below(1_000)),
                1 => json!(random.below(1_000) as f64 / 8.0),
                2 => json!(format!("v{}", random.below(1_000))),
                _ => json!({"v": random.below(10)}),
            };
            let documents = (0..20)
                .map(|step| json!({"_key": format!("k{}", (key + step) % 4_000), "value": value, "step": step}))
                .collect();
            upsert(&http, "events", documents).await;
        }
        writes.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether the state file records the scan of `events` as done.
fn scan_done(state_file: &Path) -> Option<bool> {
    let state: Value = serde_json::from_str(&std::fs::read_to_string(state_file).ok()?).ok()?;
    state["collections"]["events"]["scan_done"].as_bool()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_sigkill_at_random_points_and_restarted_the_table_equals_the_collection() {
    let cluster = PgCluster::start_default();
    let server = Server::start().await;
    let http = Http::h1(&server.url());
    create_collection(&http, "events").await;
    for chunk in (0..20_000u64).collect::<Vec<_>>().chunks(2_000) {
        upsert(
            &http,
            "events",
            chunk
                .iter()
                .map(|index| json!({"_key": format!("k{index}"), "value": index}))
                .collect(),
        )
        .await;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_pipeline(
        dir.path(),
        &cluster,
        &server.url(),
        json!({"source": {"source_collection": "events", "cursor_batch_size": 100},
               "destination": {"batch_size_rows": 100}}),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(workload(
        http.clone(),
        Arc::clone(&stop),
        Arc::clone(&writes),
        0x9E37_79B9_7F4A_7C15,
    ));
    let mut random = Random(0x2545_F491_4F6C_DD1D);
    let state_file = dir.path().join("pipeline.state.json");
    let mut phases = Vec::new();
    for iteration in 0..6 {
        let log = dir.path().join(format!("run-{iteration}.log"));
        let mut child = spawn_run(&config, &log);
        let started = writes.load(Ordering::Relaxed);
        // The first kills come early, during the scan (each run scans again until one
        // finishes it); the later ones once the scan is recorded done, into streaming.
        if iteration >= 3 {
            let deadline = Instant::now() + Duration::from_secs(120);
            while scan_done(&state_file) != Some(true) {
                assert!(
                    Instant::now() < deadline,
                    "the scan never finished:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if iteration < 3 {
            // Killed while the scan runs (it is fast: a fixed wait from the start can miss it).
            let deadline = Instant::now() + Duration::from_secs(120);
            while !std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("scanning the collection")
            {
                assert!(
                    Instant::now() < deadline,
                    "the scan never started:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let pause = Duration::from_millis(if iteration < 3 {
            random.below(100)
        } else {
            100 + random.below(1_500)
        });
        tokio::time::sleep(pause).await;
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "pgferry stopped by itself ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        phases.push(if scan_done(&state_file) == Some(true) {
            "streaming"
        } else {
            "scanning"
        });
        assert!(
            writes.load(Ordering::Relaxed) > started || iteration == 0,
            "the workload kept writing"
        );
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("workload");
    eprintln!("SIGKILL points: {phases:?}");
    assert!(
        phases.contains(&"scanning") && phases.contains(&"streaming"),
        "kills hit both the scan and the streaming: {phases:?}"
    );
    // A kill mid-scan leaves the table keyless and marked: the next run starts it over.
    let restarted_loads = (0..6)
        .filter(|iteration| {
            std::fs::read_to_string(dir.path().join(format!("run-{iteration}.log")))
                .unwrap_or_default()
                .contains("was interrupted: emptying it")
        })
        .count();
    assert!(restarted_loads > 0, "no run found an interrupted load");

    let summary = run_once(&config);
    assert!(summary.contains("events → public.events"), "{summary}");
    let documents = all_documents(&http, "events", true).await;
    let table = rows(&cluster, "events");
    if let Err(difference) = compare(&table, &documents) {
        panic!("after SIGKILLs and a final --once run the table differs: {difference}");
    }
    let duplicates = cluster.psql("SELECT count(*) - count(DISTINCT \"_key\") FROM public.events");
    assert_eq!(duplicates, "0");
}

/// Runs pgferry with `config`, expecting failure; returns its exit code and stderr.
fn run_failing(config: &Path) -> (i32, String) {
    let output = pgferry(&["run", "--once"], config)
        .output()
        .expect("run pgferry");
    assert!(!output.status.success(), "expected a failure");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!text.contains(KEY), "the API key leaked: {text}");
    assert!(
        !text.contains("wrong-secret-key"),
        "the API key leaked: {text}"
    );
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configs_say_what_is_wrong_and_how_to_fix_it() {
    let cluster = PgCluster::start_default();
    let server = Server::start().await;
    let http = Http::h1(&server.url());
    create_collection(&http, "orders").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = [
        (
            json!({"source": {"source_colection": "orders"}}),
            2,
            "did you mean \"source_collection\"",
        ),
        (
            json!({"destination": {"type": "gdn"}}),
            2,
            "gdn → gdn pipeline is not supported",
        ),
        (
            json!({"source": {"source_collection": "nope"}}),
            1,
            "collection \"nope\" not found in fabric \"_system\" (it has: orders)",
        ),
        (
            json!({"source": {"gdn_url": "http://127.0.0.1:9", "max_retries": 1}}),
            1,
            "cannot reach GDN at http://127.0.0.1:9",
        ),
        (
            json!({"source": {"api_key": "wrong-secret-key"}}),
            1,
            "HTTP 401",
        ),
        (
            json!({"destination": {"dbname": "missing_db"}}),
            1,
            "missing_db",
        ),
    ];
    for (extra, code, expected) in cases {
        let config = write_pipeline(dir.path(), &cluster, &server.url(), extra.clone());
        let (exit, text) = run_failing(&config);
        assert_eq!(exit, code, "{extra}: {text}");
        assert!(
            text.contains(expected),
            "{extra}: expected {expected:?} in:\n{text}"
        );
        if expected == "HTTP 401" {
            assert!(text.contains("HINT: the API key"), "{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_into_a_table_that_holds_some_keys_already_merges_them() {
    let cluster = PgCluster::start_default();
    let server = Server::start().await;
    let http = Http::h1(&server.url());
    create_collection(&http, "orders").await;
    upsert(&http, "orders", (0..1_200u64).map(order).collect()).await;
    // A table from an earlier, interrupted load: two stale rows whose keys the scan meets in
    // its first and its last batch. The scan's first batch tries a plain COPY, meets "o0" and
    // must fall back to merging; later batches merge straight away.
    cluster.psql(
        "CREATE TABLE public.orders (\"_key\" text PRIMARY KEY, n bigint);
         INSERT INTO public.orders VALUES ('o0', -1), ('o1199', -1), ('gone', 7);",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_pipeline(
        dir.path(),
        &cluster,
        &server.url(),
        json!({"destination": {"batch_size_rows": 300}}),
    );
    run_once(&config);
    let documents = all_documents(&http, "orders", true).await;
    // The row no document has is removed by the check that follows the backlog (the table
    // holds more rows than the collection has documents: a truncate, or deletes not seen).
    if let Err(difference) = compare(&rows(&cluster, "orders"), &documents) {
        panic!("{difference}");
    }
}

/// A scan committed over four connections at once, whose later batches bring a new attribute
/// and widen another: the batches that change the columns commit alone and in order, and the
/// table ends equal to the collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_over_several_connections_changes_columns_in_order_and_ends_exact() {
    let cluster = PgCluster::start_default();
    let server = Server::start().await;
    let http = Http::h1(&server.url());
    create_collection(&http, "orders").await;
    // Every 600 documents (two batches of 300: the scan cuts at whole cursor pages) a new
    // attribute: a batch that adds a column, then one that only uses it.
    let documents: Vec<Value> = (0..3_000u64)
        .map(|index| {
            let mut document = match index {
                0..=999 => json!({"_key": format!("o{index:05}"), "n": index}),
                1_000..=1_999 => json!({"_key": format!("o{index:05}"), "n": index, "late": format!("l{index}")}),
                _ => json!({"_key": format!("o{index:05}"), "n": index as f64 + 0.5, "late": null, "later": [index]}),
            };
            document[format!("step{}", index / 600)] = json!(index);
            document
        })
        .collect();
    for chunk in documents.chunks(1_000) {
        upsert(&http, "orders", chunk.to_vec()).await;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_pipeline(
        dir.path(),
        &cluster,
        &server.url(),
        json!({"destination": {"batch_size_rows": 150, "parallelism": 4}}),
    );
    let summary = run_once(&config);
    assert!(summary.contains("scanned 3000 documents"), "{summary}");
    if let Err(difference) = compare(
        &rows(&cluster, "orders"),
        &all_documents(&http, "orders", true).await,
    ) {
        panic!("{difference}");
    }
    let types = column_types(&cluster, "orders");
    assert_eq!(
        types.get("n").map(String::as_str),
        Some("numeric"),
        "{types:?}"
    );
    assert_eq!(
        types.get("late").map(String::as_str),
        Some("text"),
        "{types:?}"
    );
    assert_eq!(
        types.get("later").map(String::as_str),
        Some("jsonb"),
        "{types:?}"
    );
}

/// A document with a value no column can hold stops the scan with an error naming the
/// document, the attribute and the reason; nothing of its batch is in the table, and once the
/// document is fixed the next run ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_no_column_can_hold_stops_the_scan_naming_it() {
    let cluster = PgCluster::start_default();
    let server = Server::start().await;
    let http = Http::h1(&server.url());
    create_collection(&http, "orders").await;
    let mut documents: Vec<Value> = (0..1_000u64)
        .map(|index| json!({"_key": format!("o{index:05}"), "name": format!("n{index}")}))
        .collect();
    documents[500] = json!({"_key": "o00500", "name": "before\u{0}after"});
    upsert(&http, "orders", documents).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_pipeline(
        dir.path(),
        &cluster,
        &server.url(),
        json!({"destination": {"batch_size_rows": 100}}),
    );
    let output = pgferry(&["run", "--once"], &config)
        .output()
        .expect("run pgferry");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    for needed in ["\"o00500\"", "attribute \"name\"", "U+0000"] {
        assert!(stderr.contains(needed), "{needed} missing from:\n{stderr}");
    }
    let loaded = cluster.psql(
        "SELECT count(*) FILTER (WHERE \"_key\" BETWEEN 'o00500' AND 'o00599') FROM public.orders",
    );
    assert_eq!(
        loaded, "0",
        "nothing of the refused document's batch was applied"
    );

    upsert(
        &http,
        "orders",
        vec![json!({"_key": "o00500", "name": "fixed"})],
    )
    .await;
    run_once(&config);
    if let Err(difference) = compare(
        &rows(&cluster, "orders"),
        &all_documents(&http, "orders", true).await,
    ) {
        panic!("{difference}");
    }
}

/// `public.<table>` equals the collection, holds each key once, and has its primary key on
/// `_key` with the loading mark cleared: what a finished load leaves.
fn assert_loaded(cluster: &PgCluster, table: &str, documents: &BTreeMap<String, Value>) {
    if let Err(difference) = compare(&rows(cluster, table), documents) {
        panic!("{table}: {difference}");
    }
    assert_eq!(duplicate_keys(cluster, table), "0", "{table}");
    assert_eq!(
        key_and_comment(cluster, table),
        "PRIMARY KEY (_key) / no comment"
    );
}

/// The primary key and the comment of `public.<table>`: a finished load has the key on
/// `_key` and no comment.
fn key_and_comment(cluster: &PgCluster, table: &str) -> String {
    cluster.psql(&format!(
        "SELECT coalesce((SELECT string_agg(pg_get_constraintdef(oid), ', ') FROM pg_constraint \
           WHERE conrelid = 'public.{table}'::regclass AND contype = 'p'), 'no primary key') \
         || ' / ' || coalesce(obj_description('public.{table}'::regclass, 'pg_class'), 'no comment')"
    ))
}

/// Rows beyond one per `_key`.
fn duplicate_keys(cluster: &PgCluster, table: &str) -> String {
    cluster.psql(&format!(
        "SELECT count(*) - count(DISTINCT \"_key\") FROM public.{table}"
    ))
}

/// The comment pgferry puts on a table it created until the table's initial load is in.
const LOADING_COMMENT: &str =
    "pgferry: initial load in progress; the primary key on \"_key\" is added when it completes";

/// A table pgferry creates is loaded without its primary key, which is built when the scan
/// is in. A table still marked as loading (an earlier scan was interrupted: stale rows, a key
/// twice) is emptied and loaded again; an unkeyed table that is not pgferry's is refused and
/// left as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_is_built_after_the_scan_and_an_interrupted_load_starts_over() {
    let cluster = PgCluster::start_default();
    let server = Server::start().await;
    let http = Http::h1(&server.url());
    create_collection(&http, "orders").await;
    upsert(&http, "orders", (0..1_200u64).map(order).collect()).await;
    let dir = tempfile::tempdir().expect("temp dir");

    let config = write_pipeline(dir.path(), &cluster, &server.url(), json!({}));
    let (_, log) = run_once_logged(&config);
    assert!(log.contains("adding the primary key"), "{log}");
    let documents = all_documents(&http, "orders", true).await;
    assert_loaded(&cluster, "orders", &documents);

    // What a run killed mid-scan leaves: the mark, no key, part of the rows, one key twice.
    cluster.psql(&format!(
        "CREATE TABLE public.half (\"_key\" text NOT NULL, n bigint);
         COMMENT ON TABLE public.half IS '{LOADING_COMMENT}';
         INSERT INTO public.half VALUES ('o0', -1), ('o0', -2), ('gone', 7);"
    ));
    let config = write_pipeline(
        dir.path(),
        &cluster,
        &server.url(),
        json!({"destination": {"table_name": "half"}, "state_file": dir.path().join("half.state.json")}),
    );
    let (_, log) = run_once_logged(&config);
    assert!(log.contains("was interrupted: emptying it"), "{log}");
    // Exact: the stale rows ("gone" included) are gone, each key once, the key built.
    assert_loaded(&cluster, "half", &documents);

    // A user's table without a unique "_key" and without the mark is refused, untouched.
    cluster.psql(
        "CREATE TABLE public.mine (\"_key\" text, n bigint);
         INSERT INTO public.mine VALUES ('o0', -1), ('o0', -2);",
    );
    let config = write_pipeline(
        dir.path(),
        &cluster,
        &server.url(),
        json!({"destination": {"table_name": "mine"}, "state_file": dir.path().join("mine.state.json")}),
    );
    let (_, text) = run_failing(&config);
    assert!(
        text.contains("public.mine exists but has no \"_key\" column with a unique index"),
        "{text}"
    );
    assert_eq!(cluster.psql("SELECT count(*) FROM public.mine"), "2");
}

/// A scan broken by server failures asks for the failed pages again (a keyset page can be
/// asked for again; nothing is read twice) and the table ends equal to the collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_broken_by_failures_asks_for_the_pages_again_and_ends_exact() {
    let cluster = PgCluster::start_default();
    let mut server = Server::start().await;
    let http = Http::h1(&server.url());
    create_collection(&http, "orders").await;
    upsert(&http, "orders", (0..1_500u64).map(order).collect()).await;
    let documents = all_documents(&http, "orders", true).await;
    server.config.faults = pgferry::gdnlite::FaultConfig {
        error_5xx_rate: 0.08,
        seed: Some(0x5EED_0007),
        ..pgferry::gdnlite::FaultConfig::default()
    };
    server.restart_in_place(Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_pipeline(
        dir.path(),
        &cluster,
        &server.url(),
        json!({"source": {"cursor_batch_size": 100, "max_retries": 40},
               "destination": {"batch_size_rows": 100}}),
    );
    let (_, log) = run_once_logged(&config);
    assert!(log.contains("retrying a GDN call"), "{log}");
    assert!(!log.contains("keys the scan read twice"), "{log}");
    assert_loaded(&cluster, "orders", &documents);
}

/// A pyC8-shaped document of about `size` bytes: nested, odd attribute names, a long string.
fn large_document(key: &str, version: u64, size: usize) -> Value {
    json!({
        "_key": key,
        "version": version,
        "customer name": format!("Ünïcode \"quoted\" {key}"),
        "address": {"lines": ["1 Main St", null], "geo": {"lat": 51.5, "lon": -0.12}},
        "items": [{"sku": "a-1", "qty": 2}, {"sku": "b-2", "qty": version}],
        "blob": format!("{version}:{}", "x".repeat(size)),
    })
}

/// Writes documents in requests of `per_request`, so no request body is huge.
async fn upsert_in_chunks(
    http: &Http,
    collection: &str,
    documents: Vec<Value>,
    per_request: usize,
) {
    let mut documents = documents.into_iter().peekable();
    while documents.peek().is_some() {
        upsert(
            http,
            collection,
            documents.by_ref().take(per_request).collect(),
        )
        .await;
    }
}

/// Per key, `version` and the SHA-256 of `blob` as PostgreSQL holds them.
fn large_rows(cluster: &PgCluster, table: &str) -> BTreeMap<String, String> {
    cluster
        .psql(&format!(
            "SELECT \"_key\" || '=' || version || ':' || encode(sha256(convert_to(blob, 'UTF8')), 'hex') FROM public.\"{table}\""
        ))
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, rest)| (key.to_owned(), rest.to_owned()))
        .collect()
}

/// The same of the documents.
fn large_expected(documents: &BTreeMap<String, Value>) -> BTreeMap<String, String> {
    documents
        .iter()
        .map(|(key, document)| {
            let blob = document["blob"].as_str().unwrap_or_default();
            let digest: String = sha2::Digest::finalize(sha2::Digest::chain_update(
                <sha2::Sha256 as sha2::Digest>::new(),
                blob.as_bytes(),
            ))
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
            (key.clone(), format!("{}:{digest}", document["version"]))
        })
        .collect()
}

/// ~1 MB documents (the first 5 MB) with GDN's default page size (1,000 documents: an answer
/// of 1 GB, past what pgferry reads in one piece) are scanned in smaller pages, an oversized
/// answer never retried as a network failure; then a backlog of ~1 MB messages with `batch_size_rows` 10,000 is committed in
/// batches cut by bytes. Both runs stay under the memory bound (the run summary's peak RSS),
/// and the table ends equal to the collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_documents_are_scanned_and_streamed_within_the_memory_bound() {
    const SIZE: usize = 1 << 20;
    const BOUND_MB: f64 = 150.0;
    let cluster = PgCluster::start_default();
    let server = Server::start().await;
    let http = Http::h1(&server.url());
    create_collection(&http, "orders").await;
    // The first page (16 documents) of 5 MB documents is 80 MB: larger than an answer
    // pgferry reads.
    let first: Vec<Value> = (0..120)
        .map(|n| {
            large_document(
                &format!("big{n:03}"),
                1,
                if n < 16 { 5 * SIZE } else { SIZE },
            )
        })
        .collect();
    upsert_in_chunks(&http, "orders", first, 4).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_pipeline(
        dir.path(),
        &cluster,
        &server.url(),
        json!({"source": {"cursor_batch_size": 1000},
               "destination": {"batch_size_rows": 10000}}),
    );
    let (summary, log) = run_once_logged(&config);
    assert!(
        !log.contains("retrying"),
        "an oversized page was retried:\n{log}"
    );
    assert!(log.contains("asking for fewer documents per page"), "{log}");
    let scanned = support::peak_rss_mb(&summary);
    let documents = all_documents(&http, "orders", true).await;
    assert_eq!(large_rows(&cluster, "orders"), large_expected(&documents));
    // A backlog: half replaced, new ones added.
    let second: Vec<Value> = (60..180)
        .map(|n| large_document(&format!("big{n:03}"), 2, SIZE))
        .collect();
    upsert_in_chunks(&http, "orders", second, 8).await;
    let streamed = support::peak_rss_mb(&run_once(&config));
    eprintln!("peak RSS: scan {scanned} MB, backlog {streamed} MB");
    let documents = all_documents(&http, "orders", true).await;
    assert_eq!(large_rows(&cluster, "orders"), large_expected(&documents));
    assert!(
        scanned <= BOUND_MB && streamed <= BOUND_MB,
        "peak RSS {scanned} MB (scan), {streamed} MB (backlog): above {BOUND_MB} MB"
    );
}

/// Every row of `public.<table>` by `_key`, keyed by **attribute**: a column named for another
/// attribute (its comment says which) under that attribute's name, the overflow column's
/// attributes merged in, NULLs left out.
fn rows_by_attribute(cluster: &PgCluster, table: &str) -> BTreeMap<String, Value> {
    let attribute_of: BTreeMap<String, String> = cluster
        .psql(&format!(
            "SELECT attname || E'\\t' || coalesce(col_description(attrelid, attnum), '') \
             FROM pg_attribute WHERE attrelid = 'public.\"{table}\"'::regclass AND attnum > 0 \
             AND NOT attisdropped"
        ))
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(column, comment)| {
            let attribute = comment
                .strip_prefix("pgferry attribute: ")
                .map(|json| serde_json::from_str::<String>(json).expect("attribute JSON"))
                .unwrap_or_else(|| column.to_owned());
            (column.to_owned(), attribute)
        })
        .collect();
    rows(cluster, table)
        .into_iter()
        .map(|(key, row)| {
            let mut object = serde_json::Map::new();
            for (column, value) in row.as_object().cloned().unwrap_or_default() {
                if column == "_pgferry_overflow" {
                    for (attribute, value) in value.as_object().cloned().unwrap_or_default() {
                        assert!(object.insert(attribute, value).is_none(), "{key}: twice");
                    }
                } else if !value.is_null() {
                    let attribute = attribute_of.get(&column).cloned().unwrap_or(column);
                    assert!(
                        object.insert(attribute.clone(), value).is_none(),
                        "{key}: two columns hold attribute {attribute:?}"
                    );
                }
            }
            (key, Value::Object(object))
        })
        .collect()
}

/// Attribute names that map to one column name under the simple rule each keep a column of
/// their own — a name over 63 bytes and a name equal to its hashed column, names with U+0000,
/// the names pgferry reserves — in one batch, and again in a later run, in another order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_that_map_to_one_name_keep_a_column_each_across_runs() {
    let cluster = PgCluster::start_default();
    let server = Server::start().await;
    let http = Http::h1(&server.url());
    create_collection(&http, "odd").await;
    let long = format!("attr_{}", "x".repeat(80));
    // The hashed column of the long name (as the README's rule makes it).
    let digest = <sha2::Sha256 as sha2::Digest>::digest(long.as_bytes());
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let hashed = format!("{}_{hex}", &long[..54]);
    let nul_hashed = {
        let digest = <sha2::Sha256 as sha2::Digest>::digest("xy\0".as_bytes());
        let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        format!("xy_{hex}")
    };
    upsert(
        &http,
        "odd",
        vec![json!({
            "_key": "a", long.clone(): 1, hashed.clone(): "same column name",
            "xy\u{0}": 2, nul_hashed.clone(): "also the same", "_sdc_deleted_at": "mine",
            "_pgferry_overflow": {"not": "pgferry's"}, "Mixed Case": true,
            "é".repeat(40): "accented"
        })],
    )
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_pipeline(
        dir.path(),
        &cluster,
        &server.url(),
        json!({"source": {"source_collection": "odd"}}),
    );
    run_once(&config);
    let documents = all_documents(&http, "odd", true).await;
    if let Err(difference) = compare(&rows_by_attribute(&cluster, "odd"), &documents) {
        panic!("{difference}");
    }
    // The other order, in a later run (stream messages): the mapping is the recorded one.
    upsert(
        &http,
        "odd",
        vec![
            json!({"_key": "b", hashed.clone(): "b-hashed", long.clone(): 3, nul_hashed.clone(): 4, "xy\u{0}": 5}),
        ],
    )
    .await;
    run_once(&config);
    let documents = all_documents(&http, "odd", true).await;
    if let Err(difference) = compare(&rows_by_attribute(&cluster, "odd"), &documents) {
        panic!("{difference}");
    }
    let columns = column_types(&cluster, "odd");
    assert_eq!(columns.len(), 1 + 8, "{columns:?}");
}

/// A collection of documents keyed by day (300 attributes each, 1,800 in all) gets
/// `max_columns` columns and the `_pgferry_overflow` column for the rest; a collection with a
/// document no column can hold stops alone — the healthy ones of the same run are loaded,
/// the run exits 1 naming it — and a run after the fix resumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wide_collection_overflows_and_a_broken_one_stops_alone_then_resumes() {
    let cluster = PgCluster::start_default();
    let server = Server::start().await;
    let http = Http::h1(&server.url());
    for name in ["days", "orders", "broken"] {
        create_collection(&http, name).await;
    }
    let days: Vec<Value> = (0..6)
        .map(|day| {
            let mut document = serde_json::Map::new();
            document.insert("_key".into(), json!(format!("day{day}")));
            for slot in 0..300 {
                document.insert(format!("d{day}_{slot:03}"), json!(day * 1000 + slot));
            }
            Value::Object(document)
        })
        .collect();
    upsert(&http, "days", days).await;
    upsert(&http, "orders", (0..50u64).map(order).collect()).await;
    upsert(
        &http,
        "broken",
        vec![
            json!({"_key": "ok", "text": "fine"}),
            json!({"_key": "bad", "text": "nul \u{0} inside"}),
        ],
    )
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_pipeline(
        dir.path(),
        &cluster,
        &server.url(),
        json!({"source": {"source_collection": ["days", "orders", "broken"]}}),
    );
    let (code, text) = run_failing(&config);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("1 of 3 collections stopped"), "{text}");
    assert!(text.contains("collection \"broken\""), "{text}");
    assert!(text.contains("\"bad\""), "{text}");
    let orders = all_documents(&http, "orders", true).await;
    if let Err(difference) = compare(&rows(&cluster, "orders"), &orders) {
        panic!("{difference}");
    }
    let days = all_documents(&http, "days", true).await;
    if let Err(difference) = compare(&rows_by_attribute(&cluster, "days"), &days) {
        panic!("{difference}");
    }
    let columns = column_types(&cluster, "days");
    assert_eq!(
        columns.len(),
        1 + 1000 + 1,
        "_key, the budget, the overflow"
    );
    assert_eq!(columns["_pgferry_overflow"], "jsonb");
    // The fix: the document is corrected in GDN; the next run loads the stopped collection.
    upsert(
        &http,
        "broken",
        vec![json!({"_key": "bad", "text": "no nul"})],
    )
    .await;
    run_once(&config);
    let broken = all_documents(&http, "broken", true).await;
    if let Err(difference) = compare(&rows(&cluster, "broken"), &broken) {
        panic!("{difference}");
    }
}

/// Truncates the collection as pyC8's `truncate()` does.
async fn truncate(http: &Http, collection: &str) {
    http.call(
        Method::PUT,
        &api(&format!("collection/{collection}/truncate")),
        Value::Null,
    )
    .await
    .assert_ok(200);
}

/// A collection truncated in GDN (whose stream carries nothing for it) is brought in line: by
/// a `--once` run at the end of its backlog, and by a following run once the stream has been
/// quiet for `truncate_check_interval`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_collection_empties_the_table_but_for_what_came_after() {
    let cluster = PgCluster::start_default();
    let server = Server::start().await;
    let http = Http::h1(&server.url());
    create_collection(&http, "orders").await;
    upsert(&http, "orders", (0..100u64).map(order).collect()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_pipeline(
        dir.path(),
        &cluster,
        &server.url(),
        json!({"source": {"truncate_check_interval": 1}}),
    );
    run_once(&config);
    assert_eq!(rows(&cluster, "orders").len(), 100);
    truncate(&http, "orders").await;
    upsert(&http, "orders", vec![order(1000)]).await;
    let (_, log) = run_once_logged(&config);
    assert!(log.contains("truncate"), "{log}");
    let documents = all_documents(&http, "orders", true).await;
    assert_eq!(documents.len(), 1);
    if let Err(difference) = compare(&rows(&cluster, "orders"), &documents) {
        panic!("{difference}");
    }
    // Following: truncated again, two documents after; the quiet stream is noticed.
    let log = dir.path().join("follow.log");
    let mut child = spawn_run(&config, &log);
    upsert(&http, "orders", (2000..2050u64).map(order).collect()).await;
    wait_until_equal(&cluster, &http, "orders", Duration::from_secs(60), &log).await;
    truncate(&http, "orders").await;
    upsert(&http, "orders", vec![order(3000), order(3001)]).await;
    wait_until_equal(&cluster, &http, "orders", Duration::from_secs(60), &log).await;
    assert_eq!(rows(&cluster, "orders").len(), 2);
    assert!(terminate(&mut child).success());
}

/// Doubles in a `numeric` column hold the double's exact value — written so by pgferry (`n`,
/// numeric from its first batch) and by the `ALTER … TYPE numeric` that widens a `double
/// precision` column (`d`, widened by a later whole number) — at 2^53, 2^63 and 1e308.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doubles_in_numeric_hold_their_exact_value() {
    let cluster = PgCluster::start_default();
    let server = Server::start().await;
    let http = Http::h1(&server.url());
    create_collection(&http, "numbers").await;
    let values = [
        ("p53", 2f64.powi(53), "9007199254740992"),
        ("p63", 2f64.powi(63), "9223372036854775808"),
        ("e308", 1e308, "100000000000000001097906362944045541740492309677311846336810682903157585404911491537163328978494688899061249669721172515611590283743140088328307009198146046031271664502933027185697489699588559043338384466165001178426897626212945177628091195786707458122783970171784415105291802893207873272974885715430223118336"),
        ("tenth", 0.1, "0.1000000000000000055511151231257827021181583404541015625"),
    ];
    let mut documents: Vec<Value> = values
        .iter()
        .map(|(key, value, _)| json!({"_key": key, "d": value, "n": value}))
        .collect();
    documents.push(json!({"_key": "whole", "n": 5}));
    upsert(&http, "numbers", documents).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_pipeline(
        dir.path(),
        &cluster,
        &server.url(),
        json!({"source": {"source_collection": "numbers"}}),
    );
    run_once(&config);
    let types = column_types(&cluster, "numbers");
    assert_eq!(
        (types["d"].as_str(), types["n"].as_str()),
        ("double precision", "numeric")
    );
    upsert(
        &http,
        "numbers",
        vec![json!({"_key": "whole", "d": 7, "n": 5})],
    )
    .await;
    run_once(&config);
    assert_eq!(column_types(&cluster, "numbers")["d"], "numeric");
    for (key, value, exact) in values {
        let stored = cluster.psql(&format!(
            "SELECT d::text || ' ' || n::text || ' ' || (d::float8 = {value:e}::float8) FROM public.numbers WHERE \"_key\" = '{key}'"
        ));
        assert_eq!(stored, format!("{exact} {exact} true"), "{key}");
    }
}

/// `--metrics-addr` readiness of a GDN → PostgreSQL run: ready ("streaming") once it follows
/// the change stream, not ready ("reconnect backoff") while gdnlite is away, ready again after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_change_stream_through_a_gdn_restart() {
    let cluster = PgCluster::start_default();
    let mut server = Server::start().await;
    let http = Http::h1(&server.url());
    create_collection(&http, "orders").await;
    upsert(&http, "orders", (0..50u64).map(order).collect()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_pipeline(
        dir.path(),
        &cluster,
        &server.url(),
        json!({"source": {"max_retries": 12}}),
    );
    let port = support::free_port();
    let log = dir.path().join("run.log");
    let mut child = pgferry(
        &["run", "--metrics-addr", &format!("127.0.0.1:{port}")],
        &config,
    )
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).expect("log file"))
    .spawn()
    .expect("start pgferry");
    let probes = Http::h1(&format!("http://127.0.0.1:{port}"));
    let readyz = || async {
        match probes
            .try_call_json(Method::GET, "/readyz", Value::Null)
            .await
        {
            Ok(_) => {
                let answer = probes.call(Method::GET, "/readyz", Value::Null).await;
                Some((
                    answer.status.as_u16(),
                    String::from_utf8_lossy(&answer.raw).trim().to_owned(),
                ))
            }
            Err(_) => None,
        }
    };
    let wait_for = |what: &'static str, want: (u16, &'static str)| {
        let readyz = &readyz;
        let log = &log;
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let seen = readyz().await;
                if seen
                    .as_ref()
                    .is_some_and(|(status, body)| (*status, body.as_str()) == want)
                {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: /readyz answered {seen:?}\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_for("ready while following", (200, "streaming")).await;
    let restart = tokio::spawn(async move {
        server.restart_in_place(Duration::from_secs(4)).await;
        server
    });
    wait_for(
        "not ready while gdnlite is away",
        (503, "reconnect backoff"),
    )
    .await;
    let _server = restart.await.expect("restart");
    wait_for("ready again", (200, "streaming")).await;
    assert!(terminate(&mut child).success(), "a clean stop");
}
