//! `pgferry run` into gdnlite: values arrive exactly, every row arrives once with parallel
//! workers, and injected GDN faults (503s, 429s, dropped connections, per-document errors)
//! still end in an exact copy.

mod gdnlite_support;
mod support;

use std::collections::BTreeMap;

use gdnlite_support::{Http, Server, KEY};
use pgferry::config::PipelineConfig;
use serde_json::{json, Value};
use support::PgCluster;

fn pipeline(cluster: &PgCluster, gdn_url: &str, extra: Value) -> PipelineConfig {
    let mut config = json!({
        "source": {
            "host": "127.0.0.1", "port": cluster.port(), "user": "postgres",
            "password": "trust", "dbname": "postgres", "sslmode": "disable",
            "replication_method": "FULL_TABLE"
        },
        "destination": {"gdn_url": gdn_url, "api_key": KEY, "batch_size_rows": 1000},
        "parallelism": 2
    });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            config.insert(key.clone(), value.clone());
        }
    }
    match config {
        Value::Object(map) => PipelineConfig::from_object(&map).expect("valid pipeline"),
        _ => unreachable!("a JSON object"),
    }
}

/// Every document of `collection`, by `_key`.
async fn documents(http: &Http, collection: &str) -> BTreeMap<String, Value> {
    gdnlite_support::all_documents(http, collection, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_every_kind_arrive_as_the_conversion_table_says() {
    let cluster = PgCluster::start_default();
    cluster.psql(
        r#"CREATE TYPE mood AS ENUM ('sad', 'happy');
        CREATE TABLE public.kinds (
            id int PRIMARY KEY, i2 smallint, i8 bigint, f8 double precision, b boolean,
            t text, vc varchar(5), n12 numeric(12,2), nwide numeric, u uuid, j jsonb,
            ia int[], ta text[], d date, ts timestamp, tstz timestamptz, m mood,
            by bytea, iv interval, ip inet, "_key" text, "_rev" int
        );
        SET timezone = 'UTC';
        INSERT INTO public.kinds VALUES
          (1, -32768, 9007199254740993, 0.1, true, 'héllo "q"', 'abc', 12.30,
           123456789012345678901234567890.123456789, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
           '{"a": [1, 2.5, null], "b": {"c": "d"}}', ARRAY[[1,2],[3,4]], ARRAY['x', NULL],
           '2024-02-29', '2024-02-29 13:14:15.123456', '2024-02-29 13:14:15+02', 'happy',
           '\xdeadbeef', '1 year 2 mons 3 days 04:05:06', '192.168.0.1/24', 'own key', 7),
          (2, NULL, NULL, 'NaN', NULL, NULL, NULL, NULL, 'NaN', NULL, NULL, NULL, NULL,
           'infinity', '-infinity', NULL, NULL, NULL, NULL, NULL, NULL, NULL);"#,
    );
    let server = Server::start().await;
    let config = pipeline(&cluster, &server.url(), json!({"tables": ["public.kinds"]}));
    let summary = pgferry::pipeline::run(&config).await.expect("run");
    assert_eq!(summary.documents, 2);

    let http = Http::h1(&server.url());
    let docs = documents(&http, "kinds").await;
    let first = &docs["1"];
    let expect = |name: &str, value: Value| {
        assert_eq!(first[name], value, "attribute {name} of row 1: {first}");
    };
    expect("id", json!(1));
    expect("i2", json!(-32768));
    expect("i8", json!(9007199254740993i64));
    expect("f8", json!(0.1));
    expect("b", json!(true));
    expect("t", json!("héllo \"q\""));
    expect("vc", json!("abc"));
    expect("n12", json!(12.3));
    expect("nwide", json!("123456789012345678901234567890.123456789"));
    expect("u", json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"));
    expect("j", json!({"a": [1, 2.5, null], "b": {"c": "d"}}));
    expect("ia", json!([[1, 2], [3, 4]]));
    expect("ta", json!(["x", null]));
    expect("m", json!("happy"));
    // Reserved names are renamed with a leading underscore; the key stays the primary key.
    expect("__key", json!("own key"));
    expect("__rev", json!(7));
    assert_eq!(first["_key"], json!("1"));

    // The oracle for the date/time, bytea, interval and inet texts: PostgreSQL itself.
    let oracle: Value = serde_json::from_str(&cluster.psql(
        "SET timezone = 'UTC'; SELECT json_build_object('d', d, 'ts', ts, 'tstz', tstz, 'iv', iv::text, 'ip', ip::text) FROM public.kinds WHERE id = 1",
    ))
    .expect("oracle JSON");
    assert!(
        first["d"]
            .as_str()
            .expect("date text")
            .starts_with(oracle["d"].as_str().expect("d")),
        "{first}"
    );
    assert!(
        first["ts"]
            .as_str()
            .expect("ts text")
            .starts_with(oracle["ts"].as_str().expect("ts")),
        "{first}"
    );
    assert!(
        first["tstz"]
            .as_str()
            .expect("tstz")
            .starts_with("2024-02-29T11:14:15"),
        "{first}"
    );
    assert_eq!(first["ip"], json!("192.168.0.1/24"));

    let second = &docs["2"];
    assert_eq!(second["f8"], json!("NaN"));
    assert_eq!(second["nwide"], json!("NaN"));
    assert_eq!(second["i2"], Value::Null);
    assert_eq!(second["d"], json!("infinity"));
    assert_eq!(second["ts"], json!("-infinity"));
}

fn fill(cluster: &PgCluster, rows: u64) {
    cluster.psql(&format!(
        "CREATE TABLE public.events (tenant int, id bigint, body text, amount numeric(12,2), PRIMARY KEY (tenant, id));
         INSERT INTO public.events SELECT g % 7, g, md5(g::text), (g % 100000) / 100.0 FROM generate_series(1, {rows}) g;"
    ));
}

/// Every row's document is there once, with its values (composite key `tenant:id`).
async fn assert_exact_copy(http: &Http, rows: u64) {
    let docs = documents(http, "events").await;
    assert_eq!(docs.len() as u64, rows, "one document per row");
    let mut id_sum = 0u64;
    for (key, doc) in &docs {
        let id = doc["id"].as_u64().expect("id");
        let tenant = doc["tenant"].as_u64().expect("tenant");
        assert_eq!(key, &format!("{tenant}:{id}"), "composite key");
        assert_eq!(tenant, id % 7);
        assert_eq!(
            doc["amount"].as_f64().expect("amount"),
            (id % 100_000) as f64 / 100.0,
            "amount of {key} (never dropped or mangled, unlike the old target)"
        );
        id_sum += id;
    }
    assert_eq!(id_sum, rows * (rows + 1) / 2, "checksum of ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_arrives_exactly_once_with_parallel_workers_and_a_rerun_changes_nothing() {
    const ROWS: u64 = 1_000_000;
    let cluster = PgCluster::start_default();
    fill(&cluster, ROWS);
    let server = Server::start().await;
    let config = pipeline(&cluster, &server.url(), json!({"parallelism": 4}));
    let summary = pgferry::pipeline::run(&config).await.expect("run");
    assert_eq!(summary.documents, ROWS);
    let http = Http::h2(&server.url());
    assert_exact_copy(&http, ROWS).await;

    // A second run upserts the same keys: the collection does not change.
    let summary = pgferry::pipeline::run(&config).await.expect("second run");
    assert_eq!(summary.documents, ROWS);
    assert_eq!(
        gdnlite_support::document_count(&http, "events").await,
        Some(ROWS)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_collections_are_made_ready_at_once_and_keyless_reloads_replace_their_content() {
    // Twenty keyed and twenty keyless tables: every collection is created before the copy
    // (several at once), and a keyless table's collection is emptied before each reload.
    let cluster = PgCluster::start_default();
    let mut sql = String::new();
    for i in 0..20 {
        sql.push_str(&format!(
            "CREATE TABLE public.keyed{i} (id int PRIMARY KEY, v int);
             INSERT INTO public.keyed{i} SELECT g, g * {i} FROM generate_series(1, {i} + 1) g;
             CREATE TABLE public.loose{i} (note text);
             INSERT INTO public.loose{i} SELECT 'n' || g FROM generate_series(1, {i} + 1) g;"
        ));
    }
    cluster.psql(&sql);
    let server = Server::start().await;
    let config = pipeline(&cluster, &server.url(), json!({}));
    let http = Http::h2(&server.url());
    for run in ["first run", "second run"] {
        let summary = pgferry::pipeline::run(&config).await.expect(run);
        assert_eq!(summary.documents, 2 * (1..=20).sum::<u64>(), "{run}");
        for i in 0..20u64 {
            for table in ["keyed", "loose"] {
                let count = gdnlite_support::document_count(&http, &format!("{table}{i}")).await;
                assert_eq!(count, Some(i + 1), "{run}: {table}{i}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_gdn_faults_still_end_in_an_exact_copy() {
    const ROWS: u64 = 30_000;
    let cluster = PgCluster::start_default();
    fill(&cluster, ROWS);
    let mut server = Server::start_with(|config| {
        config.faults.error_5xx_rate = 0.10;
        config.faults.rate_limit_rate = 0.05;
        config.faults.reset_rate = 0.05;
        config.faults.document_error_rate = 0.01;
        config.faults.seed = Some(7);
    })
    .await;
    let config = pipeline(
        &cluster,
        &server.url(),
        json!({"destination": {"gdn_url": server.url(), "api_key": KEY, "batch_size_rows": 500, "max_retries": 30}}),
    );
    let summary = pgferry::pipeline::run(&config)
        .await
        .expect("run despite faults");
    assert_eq!(summary.documents, ROWS);
    assert!(summary.retries > 0, "faults were injected and retried");

    // Verify through the same data with the faults switched off.
    server.config.faults = Default::default();
    server.restart().await;
    assert_exact_copy(&Http::h1(&server.url()), ROWS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_api_key_fails_with_a_clear_error_and_writes_nothing() {
    let cluster = PgCluster::start_default();
    fill(&cluster, 10);
    let server = Server::start().await;
    let config = pipeline(
        &cluster,
        &server.url(),
        json!({"destination": {"gdn_url": server.url(), "api_key": "wrong-key-123"}}),
    );
    let error = pgferry::pipeline::run(&config)
        .await
        .expect_err("401 must fail the run")
        .to_string();
    assert!(error.contains("401"), "{error}");
    assert!(error.contains("api_key"), "says what to fix: {error}");
    assert!(
        !error.contains("wrong-key-123"),
        "never echoes the key: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_keys_and_reserved_names_follow_the_key_rules() {
    let cluster = PgCluster::start_default();
    cluster.psql(
        r#"CREATE TABLE public.odd (k text PRIMARY KEY, "_id" int, "_key" text);
        INSERT INTO public.odd VALUES ('plain-key_1', 1, 'a'), ('has space/and slash', 2, 'b'), (repeat('x', 300), 3, 'c');
        CREATE TABLE public.pairs (a text, b text, PRIMARY KEY (a, b));
        INSERT INTO public.pairs VALUES ('x:y', 'z'), ('x', 'y:z');"#,
    );
    let server = Server::start().await;
    let config = pipeline(&cluster, &server.url(), json!({}));
    pgferry::pipeline::run(&config).await.expect("run");
    let http = Http::h1(&server.url());

    let odd = documents(&http, "odd").await;
    assert_eq!(odd.len(), 3);
    assert_eq!(odd["plain-key_1"]["__id"], json!(1), "_id column renamed");
    assert_eq!(
        odd["plain-key_1"]["__key"],
        json!("a"),
        "_key column renamed"
    );
    use sha2::Digest;
    for raw in ["has space/and slash".to_owned(), "x".repeat(300)] {
        let hashed: String = sha2::Sha256::digest(raw.as_bytes())
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        assert_eq!(
            odd[&hashed]["k"],
            json!(raw),
            "invalid keys become their SHA-256 hex"
        );
    }

    let pairs = documents(&http, "pairs").await;
    assert_eq!(pairs.len(), 2, "composite keys do not collide: {pairs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_gdn_always_refuses_fails_the_run_naming_table_and_key() {
    let cluster = PgCluster::start_default();
    fill(&cluster, 5);
    let server = Server::start_with(|config| {
        config.faults.document_error_rate = 1.0;
        config.faults.seed = Some(1);
    })
    .await;
    let config = pipeline(
        &cluster,
        &server.url(),
        json!({"destination": {"gdn_url": server.url(), "api_key": KEY, "max_retries": 3}}),
    );
    let error = pgferry::pipeline::run(&config)
        .await
        .expect_err("a refused document must fail the run")
        .to_string();
    assert!(error.contains("public.events"), "names the table: {error}");
    assert!(error.contains("_key"), "names the key: {error}");
    assert!(
        error.contains("errorNum"),
        "carries GDN's errorNum: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_gdn_fails_with_the_address() {
    let cluster = PgCluster::start_default();
    fill(&cluster, 5);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let config = pipeline(
        &cluster,
        &url,
        json!({"destination": {"gdn_url": url, "api_key": KEY, "max_retries": 2}}),
    );
    let error = pgferry::pipeline::run(&config)
        .await
        .expect_err("nothing listens there")
        .to_string();
    assert!(error.contains(&url), "names the address: {error}");
    assert!(
        error.contains("gdn_url") || error.contains("gdn_host"),
        "says what to check: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_the_role_may_not_read_is_a_clear_error() {
    let cluster = PgCluster::start_default();
    fill(&cluster, 5);
    cluster.psql("CREATE ROLE reader LOGIN; GRANT USAGE ON SCHEMA public TO reader;");
    let server = Server::start().await;
    let mut config = pipeline(
        &cluster,
        &server.url(),
        json!({"tables": ["public.events"]}),
    );
    config.source.connection.user = "reader".into();
    let error = pgferry::pipeline::run(&config)
        .await
        .expect_err("no SELECT privilege")
        .to_string();
    assert!(error.contains("permission denied"), "{error}");
    assert!(error.contains("events"), "names the table: {error}");
}
