//! `pgferry run` from PostgreSQL into PostgreSQL: the snapshot copies every type exactly (binary
//! and text paths), change data capture follows inserts, updates, deletes, unchanged TOASTed
//! values, key changes, TRUNCATE and added columns through wal2json and pgoutput, SIGKILL at
//! random points then a restart ends exact, and unusable target tables are clear errors.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::{run_to_completion, PgCluster};

/// The source database and the target database (one cluster, two databases).
const SOURCE: &str = "shop";
const TARGET: &str = "replica";

fn cluster() -> PgCluster {
    let cluster = PgCluster::start_default();
    cluster.require_wal2json();
    cluster.psql(&format!("CREATE DATABASE {SOURCE}"));
    cluster.psql(&format!("CREATE DATABASE {TARGET}"));
    cluster
}

/// A pipeline from `shop` into `replica`, with `extra` merged into its sections.
fn pipeline(dir: &Path, cluster: &PgCluster, extra: Value) -> PathBuf {
    let mut config = json!({
        "source": {
            "host": "127.0.0.1", "port": cluster.port(), "user": "postgres",
            "dbname": SOURCE, "sslmode": "disable", "replication_method": "FULL_TABLE",
            "filter_schemas": "public,sales"
        },
        "destination": {
            "type": "postgres", "host": "127.0.0.1", "port": cluster.port(), "user": "postgres",
            "dbname": TARGET, "sslmode": "disable"
        },
        "parallelism": 2,
        "state_file": dir.join("state.json")
    });
    support::merge_sections(&mut config, &extra);
    let path = dir.join("pipeline.json");
    std::fs::write(&path, config.to_string()).expect("write pipeline");
    path
}

/// Starts a following (continuous) `pgferry run`, its log in `log`.
fn spawn_run(config: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["run", "-c"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start pgferry")
}

/// Row count and a digest of every row's text form, in key order.
fn digest(cluster: &PgCluster, database: &str, table: &str, order: &str) -> String {
    cluster.psql_in(
        database,
        &format!(
            "SELECT count(*) || ' ' || md5(coalesce(string_agg(t::text, '|' ORDER BY {order}), '')) FROM {table} t"
        ),
    )
}

/// Every listed table is equal in source and target, row for row.
fn assert_replicated(cluster: &PgCluster, tables: &[(&str, &str)]) {
    for (table, order) in tables {
        let source = digest(cluster, SOURCE, table, order);
        let target = digest(cluster, TARGET, table, order);
        if source != target {
            let rows = |database| {
                cluster.psql_in(
                    database,
                    &format!("SELECT t::text FROM {table} t ORDER BY {order} LIMIT 20"),
                )
            };
            panic!(
                "{table} differs: source {source}, target {target}\nsource rows:\n{}\ntarget rows:\n{}",
                rows(SOURCE),
                rows(TARGET)
            );
        }
    }
}

const TYPES_TABLE: &str = "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
    CREATE TABLE public.every_type (
        id integer PRIMARY KEY, big bigint, small smallint, exact numeric(38,10), free numeric,
        real4 real, double8 double precision, flag boolean, label varchar(20), body text,
        raw bytea, day date, at timestamp, at_tz timestamptz, clock time, span interval,
        uid uuid, doc json, docb jsonb, ints integer[], words text[], addr inet, feeling mood);";

const TYPES_ROWS: &str = "INSERT INTO public.every_type VALUES
    (1, 9223372036854775807, -32768, 1234567890123456789012345678.0123456789, 'NaN',
     3.4028235e38, 0.1, true, 'ünïcödé', E'tab\\there\\nnew line \\\\ backslash',
     '\\x00ff10'::bytea, '2024-02-29', '1999-12-31 23:59:59.999999', '2024-06-01 12:00:00+05:30',
     '23:59:59', '1 year 2 mons 3 days 04:05:06.789', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
     '{\"a\": [1, 2.50]}', '{\"b\": {\"c\": null}}', '{1,NULL,3}', '{\"x y\",\"q\\\"t\"}',
     '192.168.0.1/24', 'happy'),
    (2, NULL, NULL, -0.0000000001, 'Infinity', '-Infinity', 'NaN', false, '', '',
     '\\x'::bytea, '0001-01-01 BC', 'infinity', '-infinity', '00:00', '-1 days', NULL,
     'null', '[]', '{}', '{}', '::1', 'sad'),
    (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
    INSERT INTO public.every_type (id, exact, body, double8)
        SELECT g, g * 1.5, repeat('x', g % 50), g / 7.0 FROM generate_series(4, 20000) g;";

#[test]
fn full_table_copies_every_type_exactly_and_a_rerun_converges() {
    let cluster = cluster();
    cluster.psql_in(TARGET, "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')");
    cluster.psql_in(SOURCE, TYPES_TABLE);
    cluster.psql_in(SOURCE, TYPES_ROWS);
    cluster.psql_in(
        SOURCE,
        "CREATE SCHEMA sales;
         CREATE TABLE sales.lines (order_id int, line int, sku text, PRIMARY KEY (order_id, line));
         INSERT INTO sales.lines SELECT g / 10, g % 10, 'sku-' || g FROM generate_series(1, 50000) g;
         CREATE TABLE public.notes (note text);
         INSERT INTO public.notes VALUES ('a'), ('a'), ('b');",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let config = pipeline(dir.path(), &cluster, json!({}));
    let summary = run_to_completion(&config);
    assert!(
        summary.contains("public.every_type: 20000 rows"),
        "{summary}"
    );
    assert!(summary.contains("sales.lines: 50000 rows"), "{summary}");
    assert!(summary.contains("MB of rows"), "{summary}");
    let tables = [
        ("public.every_type", "id"),
        ("sales.lines", "order_id, line"),
        ("public.notes", "note"),
    ];
    assert_replicated(&cluster, &tables);
    // Column types are the source's, keys are primary keys.
    assert_eq!(
        cluster.psql_in(
            TARGET,
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.every_type'::regclass AND attname IN ('exact', 'label', 'feeling') ORDER BY attname"
        ),
        "numeric(38,10)\nmood\ncharacter varying(20)"
    );
    assert_eq!(
        cluster.psql_in(TARGET, "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'sales.lines'::regclass AND contype = 'p'"),
        "PRIMARY KEY (order_id, line)"
    );

    // A second run over the filled target: changed rows replaced, keyless table reloaded.
    cluster.psql_in(
        SOURCE,
        "UPDATE public.every_type SET body = 'changed' WHERE id % 1000 = 0;
         INSERT INTO sales.lines VALUES (99999, 1, 'new');
         INSERT INTO public.notes VALUES ('c');",
    );
    run_to_completion(&config);
    assert_replicated(&cluster, &tables);
    assert_eq!(
        cluster.psql_in(TARGET, "SELECT count(*) FROM public.notes"),
        "4"
    );
}

/// The streaming workload: every kind of change the replica must follow.
const STREAM_WORKLOAD: &str = "
    INSERT INTO public.items SELECT g, 'item ' || g, repeat('big', 3000) || g, g FROM generate_series(1001, 3000) g;
    UPDATE public.items SET qty = qty + 1 WHERE id % 7 = 0;
    DELETE FROM public.items WHERE id % 11 = 0;
    UPDATE public.items SET id = id + 100000 WHERE id % 13 = 0 AND id <= 500;
    BEGIN; UPDATE public.items SET name = 'twice' WHERE id = 2; UPDATE public.items SET qty = -1 WHERE id = 2; COMMIT;
    BEGIN; INSERT INTO public.items VALUES (5000, 'short-lived', 'x', 1); DELETE FROM public.items WHERE id = 5000; COMMIT;
    TRUNCATE public.scratch;
    INSERT INTO public.scratch VALUES (1, 'after truncate');
    ALTER TABLE public.items ADD COLUMN note text;
    UPDATE public.items SET note = 'noted' WHERE id % 5 = 0;
    INSERT INTO public.items VALUES (6000, 'with note', 'b', 2, 'n');";

fn stream_tables(cluster: &PgCluster) {
    cluster.psql_in(
        SOURCE,
        "CREATE TABLE public.items (id int PRIMARY KEY, name text, blob text, qty int);
         ALTER TABLE public.items ALTER COLUMN blob SET STORAGE EXTERNAL;
         INSERT INTO public.items SELECT g, 'item ' || g, repeat('big', 3000) || g, g FROM generate_series(1, 1000) g;
         CREATE TABLE public.scratch (id int PRIMARY KEY, v text);
         INSERT INTO public.scratch SELECT g, 'v' FROM generate_series(1, 100) g;",
    );
}

fn log_based_follows_every_change(plugin: &str) {
    let cluster = cluster();
    stream_tables(&cluster);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = pipeline(
        dir.path(),
        &cluster,
        json!({"source": {"replication_method": "LOG_BASED", "plugin": plugin, "filter_schemas": "public"}}),
    );
    run_to_completion(&config);
    let tables = [("public.items", "id"), ("public.scratch", "id")];
    assert_replicated(&cluster, &tables);
    cluster.psql_in(SOURCE, STREAM_WORKLOAD);
    let summary = run_to_completion(&config);
    assert!(summary.contains("streamed"), "{summary}");
    assert_replicated(&cluster, &tables);
    assert_eq!(
        cluster.psql_in(
            TARGET,
            "SELECT count(*) FROM public.items WHERE note = 'noted'"
        ),
        cluster.psql_in(
            SOURCE,
            "SELECT count(*) FROM public.items WHERE note = 'noted'"
        ),
    );
    // The slot was confirmed: no row change of the workload is left to replay.
    let slot = format!("macrometa_{SOURCE}");
    let peek = if plugin == "wal2json" {
        format!("SELECT count(*) FROM pg_logical_slot_peek_changes('{slot}', NULL, NULL, 'format-version', '2') WHERE data::json->>'action' IN ('I', 'U', 'D', 'T')")
    } else {
        format!("SELECT count(*) FROM pg_logical_slot_peek_binary_changes('{slot}', NULL, NULL, 'proto_version', '1', 'publication_names', '{slot}') WHERE chr(get_byte(data, 0)) IN ('I', 'U', 'D', 'T')")
    };
    assert_eq!(
        cluster.psql_in(SOURCE, &peek),
        "0",
        "row changes left unconfirmed in the slot"
    );
}

#[test]
fn log_based_wal2json_follows_inserts_updates_deletes_toast_key_moves_truncate_and_new_columns() {
    log_based_follows_every_change("wal2json");
}

#[test]
fn log_based_pgoutput_follows_the_same_changes() {
    log_based_follows_every_change("pgoutput");
}

#[test]
fn sigkill_at_random_points_then_a_restart_ends_exact() {
    let cluster = cluster();
    stream_tables(&cluster);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = pipeline(
        dir.path(),
        &cluster,
        json!({"source": {"replication_method": "LOG_BASED", "filter_schemas": "public"},
               "destination": {"batch_size_rows": 200}}),
    );
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(std::process::id());
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..4u64 {
        let mut child = spawn_run(&config, &dir.path().join(format!("run-{round}.log")));
        let base = 10_000 * (round + 1);
        for step in 0..5u64 {
            let from = base + step * 200;
            cluster.psql_in(
                SOURCE,
                &format!(
                    "INSERT INTO public.items SELECT g, 'r{round}', 'b', g FROM generate_series({from}, {}) g;
                     UPDATE public.items SET qty = qty * 2 WHERE id % 17 = {step};
                     DELETE FROM public.items WHERE id % 19 = {step} AND id > 1000;",
                    from + 199
                ),
            );
            std::thread::sleep(Duration::from_millis(next() % 150));
        }
        // A random point of the run: copying (round 0) or streaming.
        std::thread::sleep(Duration::from_millis(next() % 700));
        let _ = child.kill();
        let _ = child.wait();
    }
    run_to_completion(&config);
    assert_replicated(
        &cluster,
        &[("public.items", "id"), ("public.scratch", "id")],
    );
}

#[test]
fn soft_deletes_keep_rows_with_their_deletion_time() {
    let cluster = cluster();
    stream_tables(&cluster);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = pipeline(
        dir.path(),
        &cluster,
        json!({"source": {"replication_method": "LOG_BASED", "filter_schemas": "public"},
               "destination": {"hard_delete": false, "target_schema": "mirror", "table_name": "{table}_copy"}}),
    );
    run_to_completion(&config);
    cluster.psql_in(SOURCE, "DELETE FROM public.items WHERE id <= 10; INSERT INTO public.items VALUES (5, 'back', 'b', 0)");
    run_to_completion(&config);
    assert_eq!(
        cluster.psql_in(
            TARGET,
            "SELECT count(*), count(_sdc_deleted_at) FROM mirror.items_copy"
        ),
        "1000|9",
        "deleted rows stay, marked; the re-inserted row is live again"
    );
    assert_eq!(
        cluster.psql_in(
            TARGET,
            "SELECT name FROM mirror.items_copy WHERE id = 5 AND _sdc_deleted_at IS NULL"
        ),
        "back"
    );
}

#[test]
fn unusable_targets_are_clear_errors() {
    let cluster = cluster();
    cluster.psql_in(
        SOURCE,
        "CREATE TYPE mood AS ENUM ('sad'); CREATE TABLE public.feelings (id int PRIMARY KEY, m mood);
         CREATE TABLE public.accounts (id int PRIMARY KEY, name text);",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let run = |config: &Path| {
        let output = Command::new(env!("CARGO_BIN_EXE_pgferry"))
            .args(["run", "--once", "-c"])
            .arg(config)
            .output()
            .expect("run pgferry");
        assert!(!output.status.success(), "the run should fail");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let config = pipeline(dir.path(), &cluster, json!({"tables": ["public.feelings"]}));
    let error = run(&config);
    assert!(error.contains("type the target database lacks"), "{error}");
    assert!(error.contains("pg_dump --schema-only"), "{error}");

    cluster.psql_in(TARGET, "CREATE TABLE public.accounts (id int, name text)");
    let config = pipeline(dir.path(), &cluster, json!({"tables": ["public.accounts"]}));
    let error = run(&config);
    assert!(error.contains("no primary key or unique index"), "{error}");
    assert!(
        error.contains("ALTER TABLE \"public\".\"accounts\" ADD PRIMARY KEY (\"id\")"),
        "{error}"
    );

    let config = pipeline(
        dir.path(),
        &cluster,
        json!({"destination": {"table_name": "all_in_one"}}),
    );
    let error = run(&config);
    assert!(error.contains("must contain {table}"), "{error}");
    // The destination is the source database: each table would be its own target.
    let config = pipeline(
        dir.path(),
        &cluster,
        json!({"destination": {"dbname": SOURCE}, "tables": ["public.accounts"]}),
    );
    let error = run(&config);
    assert!(error.contains("is the table itself"), "{error}");
    let config = pipeline(
        dir.path(),
        &cluster,
        json!({"destination": {"port": 1}, "tables": ["public.accounts"]}),
    );
    let error = run(&config);
    assert!(error.contains("PostgreSQL destination"), "{error}");
}

#[test]
fn server_restarts_during_the_copy_and_mid_stream_are_ridden_out() {
    let mut cluster = cluster();
    stream_tables(&cluster);
    cluster.psql_in(
        SOURCE,
        "INSERT INTO public.scratch SELECT g, repeat('v', 500) FROM generate_series(101, 200000) g",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let config = pipeline(
        dir.path(),
        &cluster,
        json!({"source": {"replication_method": "LOG_BASED", "filter_schemas": "public"}}),
    );
    let log_path = dir.path().join("run.log");
    let mut child = spawn_run(&config, &log_path);
    // While the run copies (the slot exists, the copy of 100 MB runs): it starts again. (A
    // first attempt that reaches no server at all stops at once instead: a wrong address.)
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while cluster.psql("SELECT count(*) FROM pg_replication_slots") != "1" {
        assert!(std::time::Instant::now() < deadline, "no slot was created");
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.restart(Duration::from_secs(1));
    cluster.psql_in(
        SOURCE,
        "INSERT INTO public.items SELECT g, 'before', 'b', g FROM generate_series(20001, 21000) g",
    );
    // Streaming: the copy is recorded done (the retried copy may have taken these rows
    // already; the second restart must hit the stream, not the copy) and the rows inserted
    // after the start arrive.
    let state_file = dir.path().join("state.json");
    let copied = || {
        std::fs::read_to_string(&state_file)
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .is_some_and(|state| state["snapshot_done"] == json!(true))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !copied()
        || cluster.psql_in(
            TARGET,
            "SELECT count(*) FROM public.items WHERE name = 'before'",
        ) != "1000"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the run did not stream; log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Source and target are one server here: both connections break at once.
    cluster.restart(Duration::from_secs(1));
    cluster.psql_in(
        SOURCE,
        "INSERT INTO public.items SELECT g, 'after', 'b', g FROM generate_series(21001, 22000) g;
         UPDATE public.items SET qty = -qty WHERE id BETWEEN 20500 AND 21500;",
    );
    // The running pgferry reconnects and applies what came after the restart.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while digest(&cluster, SOURCE, "public.items", "id")
        != digest(&cluster, TARGET, "public.items", "id")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the replica did not catch up after the restart; log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(log.contains("reconnecting"), "{log}");
    assert!(!log.contains("error:"), "the run never gave up:\n{log}");
    assert_replicated(
        &cluster,
        &[("public.items", "id"), ("public.scratch", "id")],
    );
}

fn partitioned_tables_stream_their_partitions_changes(plugin: &str, publication: Option<&str>) {
    let cluster = cluster();
    cluster.psql_in(
        SOURCE,
        "CREATE TABLE public.events (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE public.events_eu PARTITION OF public.events FOR VALUES IN ('eu');
         CREATE TABLE public.events_us PARTITION OF public.events FOR VALUES IN ('us');
         INSERT INTO public.events SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g FROM generate_series(1, 100) g;",
    );
    let mut source = json!({"replication_method": "LOG_BASED", "plugin": plugin});
    if let Some(name) = publication {
        // A publication made by hand the PostgreSQL 10–12 way: it lists the leaves.
        cluster.psql_in(
            SOURCE,
            &format!("CREATE PUBLICATION {name} FOR TABLE public.events"),
        );
        source["publication"] = json!(name);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let config = pipeline(
        dir.path(),
        &cluster,
        json!({"source": source, "tables": ["public.events"]}),
    );
    run_to_completion(&config);
    cluster.psql_in(
        SOURCE,
        "INSERT INTO public.events SELECT g, 'eu', g FROM generate_series(101, 150) g;
         UPDATE public.events SET v = -v WHERE id % 3 = 0;
         DELETE FROM public.events WHERE id % 5 = 0;",
    );
    run_to_completion(&config);
    assert_replicated(&cluster, &[("public.events", "id, region")]);
    if plugin == "pgoutput" && publication.is_none() {
        // Published via the root: a partition attached later streams too.
        cluster.psql_in(
            SOURCE,
            "CREATE TABLE public.events_ap PARTITION OF public.events FOR VALUES IN ('ap');
             INSERT INTO public.events SELECT g, 'ap', g FROM generate_series(1, 30) g;",
        );
        run_to_completion(&config);
        assert_replicated(&cluster, &[("public.events", "id, region")]);
    }
}

#[test]
fn partitioned_tables_stream_through_wal2json() {
    partitioned_tables_stream_their_partitions_changes("wal2json", None);
}

#[test]
fn partitioned_tables_stream_through_pgoutput() {
    partitioned_tables_stream_their_partitions_changes("pgoutput", None);
}

#[test]
fn partitioned_tables_stream_through_a_publication_of_their_leaves() {
    partitioned_tables_stream_their_partitions_changes("pgoutput", Some("by_hand"));
}

/// Types wal2json writes in its own way, streamed into PostgreSQL through both plugins:
/// `bytea` (wal2json drops its `\x`), `"char"` and a mixed-case enum (wal2json drops the quotes
/// of their names: `char` alone names `character(1)`), a `regclass` and a `regtype` (their
/// binary form is a source oid: copied by name), in the copy and in the stream.
fn wal2json_shaped_types(plugin: &str) {
    let cluster = cluster();
    let types = r#"CREATE TYPE public."Mood_Mixed" AS ENUM ('Sad', 'ok');
        CREATE TABLE public.odd (id int PRIMARY KEY, raw bytea, qc "char", m public."Mood_Mixed",
                                 rel regclass, typ regtype, raws bytea[]);"#;
    cluster.psql_in(SOURCE, types);
    cluster.psql_in(
        TARGET,
        r#"CREATE TYPE public."Mood_Mixed" AS ENUM ('Sad', 'ok');"#,
    );
    cluster.psql_in(
        SOURCE,
        r#"INSERT INTO public.odd VALUES
             (1, '\xff', 'q', 'Sad', 'public.odd', 'integer', '{"\\x00ff"}'),
             (2, '\x000102', 'é', 'ok', 'pg_class', 'public."Mood_Mixed"', NULL);"#,
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let config = pipeline(
        dir.path(),
        &cluster,
        json!({"source": {"replication_method": "LOG_BASED", "plugin": plugin, "filter_schemas": "public"}}),
    );
    run_to_completion(&config);
    let tables = [("public.odd", "id")];
    assert_replicated(&cluster, &tables);
    cluster.psql_in(
        SOURCE,
        r#"INSERT INTO public.odd VALUES (3, '\xdeadbeef', 'ü', 'ok', 'public.odd', 'text', '{"\\x"}');
           UPDATE public.odd SET raw = '\x00', qc = 'z', m = 'ok' WHERE id = 1;
           UPDATE public.odd SET qc = 'ä' WHERE id = 2;"#,
    );
    run_to_completion(&config);
    assert_replicated(&cluster, &tables);
    assert_eq!(
        cluster.psql_in(TARGET, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.odd'::regclass AND attname = 'qc'"),
        "\"char\"",
        "the target column keeps its type"
    );
}

#[test]
fn wal2json_shaped_types_stream_exactly_through_wal2json() {
    wal2json_shaped_types("wal2json");
}

#[test]
fn wal2json_shaped_types_stream_exactly_through_pgoutput() {
    wal2json_shaped_types("pgoutput");
}

/// wal2json sends NaN and ±Infinity of real, double precision and numeric as null: a
/// PostgreSQL destination would hold NULL. Such tables are refused at start with the reason,
/// nothing created; pgoutput streams them exactly.
#[test]
fn wal2json_into_postgres_refuses_columns_whose_nan_it_would_null() {
    let cluster = cluster();
    cluster.psql_in(
        SOURCE,
        "CREATE TABLE public.nums (id int PRIMARY KEY, f float8, n numeric);
         INSERT INTO public.nums VALUES (1, 'NaN', 'Infinity');",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let config = pipeline(
        dir.path(),
        &cluster,
        json!({"source": {"replication_method": "LOG_BASED", "plugin": "wal2json", "filter_schemas": "public"}}),
    );
    let output = Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["run", "--once", "-c"])
        .arg(&config)
        .output()
        .expect("run pgferry");
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("\"public\".\"nums\".\"f\", \"public\".\"nums\".\"n\"")
            && text.contains("\"plugin\": \"pgoutput\""),
        "{text}"
    );
    assert_eq!(
        cluster.psql_in(SOURCE, "SELECT count(*) FROM pg_replication_slots"),
        "0",
        "refused before the slot"
    );
    let config = pipeline(
        dir.path(),
        &cluster,
        json!({"source": {"replication_method": "LOG_BASED", "plugin": "pgoutput", "filter_schemas": "public"}}),
    );
    run_to_completion(&config);
    cluster.psql_in(
        SOURCE,
        "INSERT INTO public.nums VALUES (2, '-Infinity', 'NaN'), (3, 1.5, 2.5);",
    );
    run_to_completion(&config);
    assert_replicated(&cluster, &[("public.nums", "id")]);
}
