//! `pgferry verify`: after a run the destination is reported equal (exit 0); a planted missing,
//! extra and changed row (document) is each named by key in the text and the JSON output
//! (exit 1); a table of many buckets reports only the one planted key; a LOG_BASED pipeline
//! streaming under a write load is not reported as diverged; bad configs exit 2.

mod gdnlite_support;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use gdnlite_support::{api, Http, Server, KEY};
use hyper::Method;
use serde_json::{json, Value};
use support::{run_to_completion, PgCluster};

const TABLES: &str = "
    CREATE TABLE public.items (id int PRIMARY KEY, name text, price numeric(12,2), doc json,
        at timestamptz, big bigint, ratio float8);
    CREATE TABLE public.pairs (a int, b text, v int, PRIMARY KEY (a, b));
    CREATE TABLE public.lines (id int PRIMARY KEY, v int, day date);
    CREATE TABLE public.log (msg text, n int);
    INSERT INTO public.items SELECT g, 'item ' || g, g * 1.5, json_build_object('g', g, 'x', 1.0),
        '2024-01-02 03:04:05.123456+00'::timestamptz + g * interval '1 hour',
        9007199254740993 + g, g / 3.0 FROM generate_series(1, 100) g;
    INSERT INTO public.pairs SELECT g % 10, 'k:' || g, g FROM generate_series(1, 50) g;
    INSERT INTO public.lines SELECT g, g, date '2024-01-01' + g FROM generate_series(1, 30) g;
    INSERT INTO public.log SELECT 'same', 1 FROM generate_series(1, 3);
    INSERT INTO public.log VALUES ('other', 2);
    ANALYZE;";

struct World {
    cluster: PgCluster,
    runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

impl World {
    fn new(tables: &str) -> World {
        let cluster = PgCluster::start_default();
        cluster.psql(tables);
        World {
            cluster,
            runtime: tokio::runtime::Runtime::new().expect("tokio runtime"),
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn source(&self, method: &str) -> Value {
        json!({
            "host": "127.0.0.1", "port": self.cluster.port(), "user": "postgres",
            "dbname": "postgres", "sslmode": "disable", "replication_method": method
        })
    }

    fn write(&self, name: &str, config: &Value) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.json"));
        std::fs::write(&path, config.to_string()).expect("write pipeline");
        path
    }

    fn gdn_pipeline(&self, name: &str, server: &Server, tables: Value) -> PathBuf {
        self.write(
            name,
            &json!({
                "source": self.source("FULL_TABLE"),
                "destination": {"gdn_url": server.url(), "api_key": KEY, "batch_size_rows": 300},
                "tables": tables,
                "parallelism": 2,
                "state_file": self.dir.path().join(format!("{name}.state.json"))
            }),
        )
    }

    fn call(&self, server: &Server, method: Method, path: &str, body: Value) {
        let http = Http::h1(&server.url());
        let answer = self.runtime.block_on(http.call(method, &api(path), body));
        assert!(answer.status.is_success(), "{path}: {:?}", answer.json);
    }
}

fn verify(config: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .arg("verify")
        .args(extra)
        .arg("-c")
        .arg(config)
        .output()
        .expect("run pgferry verify")
}

fn text(output: &Output) -> String {
    format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn report(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "verify --json printed no JSON object ({error}):\n{}",
            text(output)
        )
    })
}

fn table<'a>(report: &'a Value, destination: &str) -> &'a Value {
    report["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|table| table["destination"] == destination)
        .unwrap_or_else(|| panic!("no table into {destination}: {report}"))
}

fn keys(table: &Value, which: &str) -> Vec<String> {
    table[which]
        .as_array()
        .expect("keys")
        .iter()
        .map(|key| match key {
            Value::String(key) => key.clone(),
            other => other["key"].as_str().expect("key").to_owned(),
        })
        .collect()
}

#[test]
fn gdn_copies_verify_equal_and_planted_differences_are_named() {
    let world = World::new(TABLES);
    let server = world.runtime.block_on(Server::start());
    // items and pairs share a collection by request (key prefixes); lines and the keyless log
    // have their own.
    let config = world.gdn_pipeline(
        "gdn",
        &server,
        json!([
            {"table": "public.items", "collection": "shared"},
            {"table": "public.pairs", "collection": "shared"},
            "public.lines",
            "public.log"
        ]),
    );
    run_to_completion(&config);

    let equal = verify(&config, &[]);
    assert_eq!(equal.status.code(), Some(0), "{}", text(&equal));
    assert!(
        text(&equal).contains("all 3 tables equal"),
        "{}",
        text(&equal)
    );
    let json = report(&verify(&config, &["--json"]));
    assert_eq!(json["equal"], true, "{json}");
    assert_eq!(table(&json, "shared")["equal"], 150, "{json}");
    assert_eq!(table(&json, "log")["keyless"], true, "{json}");

    // One missing, one extra, one changed attribute in lines; one changed name in shared;
    // one surplus copy of a keyless row.
    world.call(&server, Method::DELETE, "document/lines/7", Value::Null);
    world.call(
        &server,
        Method::POST,
        "document/lines",
        json!({"_key": "999", "id": 999, "v": 1, "day": "2024-01-01"}),
    );
    world.call(
        &server,
        Method::PATCH,
        "document/lines/3",
        json!({"v": 300}),
    );
    world.call(
        &server,
        Method::PATCH,
        "document/shared/public.items:10",
        json!({"name": "changed"}),
    );
    world.call(
        &server,
        Method::POST,
        "document/log",
        json!({"msg": "same", "n": 1}),
    );

    let differs = verify(&config, &[]);
    assert_eq!(differs.status.code(), Some(1), "{}", text(&differs));
    let out = text(&differs);
    for expected in [
        "public.lines -> lines: 28 equal, 1 missing, 1 extra, 1 different",
        "missing: \"7\"",
        "extra: \"999\"",
        "different: \"3\" (v: 3 -> 300)",
        "different: \"public.items:10\" (name: \"item 10\" -> \"changed\")",
        "public.log -> log: 4 equal, 0 missing, 1 extra, 0 different (keyless",
    ] {
        assert!(out.contains(expected), "{expected:?} not in:\n{out}");
    }

    let json = report(&verify(&config, &["--json"]));
    assert_eq!(json["equal"], false, "{json}");
    let lines = table(&json, "lines");
    assert_eq!(keys(lines, "missing_keys"), ["7"]);
    assert_eq!(keys(lines, "extra_keys"), ["999"]);
    assert_eq!(keys(lines, "different_rows"), ["3"]);
    assert_eq!(lines["different_rows"][0]["attributes"][0]["name"], "v");
    let shared = table(&json, "shared");
    assert_eq!(shared["table"], "public.items, public.pairs");
    assert_eq!(keys(shared, "different_rows"), ["public.items:10"]);
    assert_eq!(
        (shared["missing"].as_u64(), shared["extra"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(table(&json, "log")["extra"], 1);
}

#[test]
fn a_table_of_many_buckets_reports_only_the_planted_key() {
    let world = World::new(
        "CREATE TABLE public.big (id bigint PRIMARY KEY, payload text, n numeric);
         INSERT INTO public.big SELECT g, md5(g::text), g / 7.0 FROM generate_series(1, 50000) g;
         ANALYZE public.big;",
    );
    let server = world.runtime.block_on(Server::start());
    let config = world.gdn_pipeline("big", &server, json!(["public.big"]));
    run_to_completion(&config);
    world.call(
        &server,
        Method::PATCH,
        "document/big/31337",
        json!({"payload": "planted"}),
    );
    let output = verify(
        &config,
        &["--json", "--bucket-rows", "1000", "--detail-rows", "5000"],
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let json = report(&output);
    let big = table(&json, "big");
    assert!(big["buckets"].as_u64().unwrap() >= 50, "{big}");
    assert_eq!(big["buckets_differing"], 1, "{big}");
    assert_eq!(big["equal"], 49_999, "{big}");
    assert_eq!(keys(big, "different_rows"), ["31337"]);
    assert_eq!(
        (big["missing"].as_u64(), big["extra"].as_u64()),
        (Some(0), Some(0))
    );
}

#[test]
fn postgresql_targets_verify_equal_and_planted_differences_are_named() {
    let world = World::new(TABLES);
    world.cluster.psql("CREATE DATABASE replica");
    world.cluster.psql("CREATE DATABASE marked");
    let pipeline = |name: &str, database: &str, hard_delete: bool| {
        world.write(
            name,
            &json!({
                "source": world.source("FULL_TABLE"),
                "destination": {
                    "type": "postgres", "host": "127.0.0.1", "port": world.cluster.port(),
                    "user": "postgres", "dbname": database, "sslmode": "disable",
                    "hard_delete": hard_delete
                },
                "tables": ["public.items", "public.pairs", "public.lines", "public.log"],
                "parallelism": 2,
                "state_file": world.dir.path().join(format!("{name}.state.json"))
            }),
        )
    };
    let config = pipeline("pg", "replica", true);
    run_to_completion(&config);
    let equal = verify(&config, &[]);
    assert_eq!(equal.status.code(), Some(0), "{}", text(&equal));
    assert!(
        text(&equal).contains("all 4 tables equal"),
        "{}",
        text(&equal)
    );

    world.cluster.psql_in(
        "replica",
        "DELETE FROM public.pairs WHERE a = 3 AND b = 'k:13';
         INSERT INTO public.lines VALUES (999, 1, '2024-01-01');
         UPDATE public.items SET price = 0.5 WHERE id = 42;",
    );
    let differs = verify(&config, &[]);
    assert_eq!(differs.status.code(), Some(1), "{}", text(&differs));
    let out = text(&differs);
    for expected in [
        "missing: \"3, k:13\"",
        "extra: \"999\"",
        "different: \"42\" (price: 63.00 -> 0.50)",
    ] {
        assert!(out.contains(expected), "{expected:?} not in:\n{out}");
    }
    let json = report(&verify(&config, &["--json"]));
    assert_eq!(
        keys(table(&json, "public.pairs"), "missing_keys"),
        ["3, k:13"]
    );
    assert_eq!(keys(table(&json, "public.lines"), "extra_keys"), ["999"]);
    assert_eq!(keys(table(&json, "public.items"), "different_rows"), ["42"]);

    // hard_delete false: rows the source lost stay marked, and marked rows are not compared.
    let marked = pipeline("marked", "marked", false);
    run_to_completion(&marked);
    world
        .cluster
        .psql("DELETE FROM public.lines WHERE id > 25; DELETE FROM public.items WHERE id = 1;");
    run_to_completion(&marked);
    let equal = verify(&marked, &[]);
    assert_eq!(equal.status.code(), Some(0), "{}", text(&equal));
}

#[test]
fn a_streaming_pipeline_under_load_is_not_reported_as_diverged() {
    let world = World::new(
        "CREATE TABLE public.orders (id int PRIMARY KEY, status text, amount numeric);
         INSERT INTO public.orders SELECT g, 'new', g * 2.5 FROM generate_series(1, 2000) g;",
    );
    let server = world.runtime.block_on(Server::start());
    let mut source = world.source("LOG_BASED");
    source["filter_schemas"] = json!("public");
    let config = world.write(
        "streaming",
        &json!({
            "source": source,
            "destination": {"gdn_url": server.url(), "api_key": KEY, "batch_size_rows": 200},
            "tables": ["public.orders"],
            "parallelism": 2,
            "state_file": world.dir.path().join("streaming.state.json")
        }),
    );
    let mut pipeline = Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["run", "-c"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start pgferry run");
    // Wait until the copy is in and streaming started (the collection holds every row).
    let http = Http::h1(&server.url());
    let started = Instant::now();
    loop {
        let count = world.runtime.block_on(http.call(
            Method::GET,
            &api("collection/orders/count"),
            Value::Null,
        ));
        if count.json["count"] == 2000 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the copy did not finish: {:?}",
            count.json
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let port = world.cluster.port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut round = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                round += 1;
                let base = 10_000 + round * 10;
                let sql = format!(
                    "INSERT INTO public.orders SELECT g, 'new', g FROM generate_series({base}, {}) g;
                     UPDATE public.orders SET status = 'paid', amount = amount + 1 WHERE id BETWEEN {} AND {};
                     DELETE FROM public.orders WHERE id = {};",
                    base + 4,
                    round * 5,
                    round * 5 + 4,
                    1000 + round
                );
                let status = Command::new("psql")
                    .args([
                        "-X",
                        "-q",
                        "-h",
                        "127.0.0.1",
                        "-U",
                        "postgres",
                        "-d",
                        "postgres",
                    ])
                    .args(["-p", &port.to_string(), "-v", "ON_ERROR_STOP=1", "-c", &sql])
                    .status()
                    .expect("psql");
                assert!(status.success(), "the writer failed");
                std::thread::sleep(Duration::from_millis(20));
            }
            round
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let during = verify(&config, &["--json", "--settle-timeout", "30"]);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = writer.join().expect("writer");
    let after = verify(&config, &["--settle-timeout", "30"]);
    let _ = Command::new("kill")
        .args(["-TERM", &pipeline.id().to_string()])
        .status();
    let _ = pipeline.wait();

    assert!(rounds >= 10, "the writer ran only {rounds} rounds");
    assert_eq!(during.status.code(), Some(0), "{}", text(&during));
    let json = report(&during);
    assert_eq!(json["equal"], true, "{json}");
    assert_eq!(after.status.code(), Some(0), "{}", text(&after));

    // Stopped, the pipeline confirms nothing more: a change it has not carried is a
    // difference, reported at once (an inactive slot is not waited for).
    world
        .cluster
        .psql("UPDATE public.orders SET status = 'late' WHERE id = 1500");
    let started = Instant::now();
    let stopped = verify(&config, &["--json", "--settle-timeout", "30"]);
    assert_eq!(stopped.status.code(), Some(1), "{}", text(&stopped));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "waited for a stopped pipeline"
    );
    let json = report(&stopped);
    assert_eq!(
        keys(table(&json, "orders"), "different_rows"),
        ["1500"],
        "{json}"
    );
    assert_eq!(json["settled"][0]["active"], false, "{json}");
}

#[test]
fn a_publication_contract_is_compared_as_the_pipeline_carries_it() {
    let world = World::new(
        "CREATE TABLE public.t (id int PRIMARY KEY, a int, secret text);
         INSERT INTO public.t SELECT g, g * 10, 'hidden ' || g FROM generate_series(1, 40) g;
         CREATE PUBLICATION evens FOR TABLE public.t (id, a) WHERE (id % 2 = 0);",
    );
    let server = world.runtime.block_on(Server::start());
    let mut source = world.source("LOG_BASED");
    source["plugin"] = json!("pgoutput");
    source["publication"] = json!("evens");
    let config = world.write(
        "contract",
        &json!({
            "source": source,
            "destination": {"gdn_url": server.url(), "api_key": KEY},
            "tables": ["public.t"],
            "state_file": world.dir.path().join("contract.state.json")
        }),
    );
    run_to_completion(&config);
    world
        .cluster
        .psql("UPDATE public.t SET a = a + 1, secret = 'x' WHERE id <= 10; DELETE FROM public.t WHERE id = 12;");
    run_to_completion(&config);
    // Only the even rows, without `secret`: equal.
    let equal = verify(&config, &["--settle-timeout", "5"]);
    assert_eq!(equal.status.code(), Some(0), "{}", text(&equal));
    assert!(
        text(&equal).contains("19 equal, 0 missing"),
        "{}",
        text(&equal)
    );
    world.call(&server, Method::PATCH, "document/t/4", json!({"a": 999}));
    let differs = verify(&config, &["--settle-timeout", "5"]);
    assert_eq!(differs.status.code(), Some(1), "{}", text(&differs));
    assert!(
        text(&differs).contains("different: \"4\" (a: 41 -> 999)"),
        "{}",
        text(&differs)
    );
}

#[test]
fn bad_configs_and_unsupported_pipelines_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let garbage = verify(&write("garbage.json", "{not json"), &[]);
    assert_eq!(garbage.status.code(), Some(2), "{}", text(&garbage));
    let missing = verify(&dir.path().join("absent.json"), &[]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    let source = json!({
        "host": "127.0.0.1", "port": 1, "user": "postgres", "dbname": "postgres",
        "sslmode": "disable"
    });
    let null = verify(
        &write(
            "null.json",
            &json!({"source": source, "destination": {"type": "null"}}).to_string(),
        ),
        &[],
    );
    assert_eq!(null.status.code(), Some(2), "{}", text(&null));
    assert!(text(&null).contains("null destination"), "{}", text(&null));
    let from_gdn = verify(
        &write(
            "gdn_to_pg.json",
            &json!({
                "source": {"type": "gdn", "gdn_url": "http://127.0.0.1:1", "api_key": "k",
                           "source_collection": "orders"},
                "destination": {"type": "postgres", "host": "127.0.0.1", "port": 1,
                                "user": "postgres", "dbname": "postgres", "sslmode": "disable"}
            })
            .to_string(),
        ),
        &[],
    );
    assert_eq!(from_gdn.status.code(), Some(2), "{}", text(&from_gdn));
    assert!(text(&from_gdn).contains("reads GDN"), "{}", text(&from_gdn));
}
