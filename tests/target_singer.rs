//! `pgferry target` end to end: the binary reads Singer messages on stdin and loads a private
//! cluster; table contents are compared with psql output.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};
use support::PgCluster;

fn write_config(dir: &Path, cluster: &PgCluster, extra: Value) -> PathBuf {
    let mut config = json!({
        "host": "127.0.0.1", "port": cluster.port(), "user": "postgres",
        "password": "unused", "dbname": "postgres", "sslmode": "disable"
    });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    let path = dir.join("target.json");
    std::fs::write(&path, config.to_string()).expect("write config");
    path
}

/// Runs `pgferry target -c config` with `input` on stdin.
fn target(config: &Path, input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["target", "-c", config.to_str().unwrap_or_default()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pgferry target");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_owned();
    let writer = std::thread::spawn(move || {
        // The target may stop early on bad input; a broken pipe is then expected.
        let _ = stdin.write_all(input.as_bytes());
    });
    let output = child.wait_with_output().expect("wait for pgferry");
    writer.join().expect("stdin writer");
    output
}

fn run_ok(cluster: &PgCluster, extra: Value, input: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), cluster, extra);
    let output = target(&config, input);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr:\n{stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn run_failing(cluster: &PgCluster, extra: Value, input: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), cluster, extra);
    let output = target(&config, input);
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn lines(messages: &[Value]) -> String {
    messages
        .iter()
        .map(|message| format!("{message}\n"))
        .collect()
}

fn schema(stream: &str, properties: Value, key: &[&str]) -> Value {
    json!({"type": "SCHEMA", "stream": stream, "schema": {"type": "object", "properties": properties}, "key_properties": key})
}

fn record(stream: &str, record: Value) -> Value {
    json!({"type": "RECORD", "stream": stream, "record": record})
}

fn state(n: u64) -> Value {
    json!({"type": "STATE", "value": {"bookmarks": {"n": n}}})
}

fn columns(cluster: &PgCluster, table: &str) -> String {
    let (schema, table) = table.split_once('.').unwrap_or(("public", table));
    cluster.psql(&format!(
        "SELECT column_name || ' ' || pg_catalog.format_type(a.atttypid, a.atttypmod) \
         FROM information_schema.columns c JOIN pg_attribute a ON a.attrelid = (quote_ident(c.table_schema) || '.' || quote_ident(c.table_name))::regclass AND a.attname = c.column_name \
         WHERE table_schema = '{schema}' AND table_name = '{table}' ORDER BY ordinal_position"
    ))
}

#[test]
fn every_json_schema_type_with_nulls_and_nested_values_loads_exactly() {
    let cluster = PgCluster::start_default();
    // Raw lines: the property order and the number literals must reach pgferry as written.
    let input = r#"{"type": "SCHEMA", "stream": "sales-Every.Type", "key_properties": ["id"], "schema": {"type": "object", "properties": {"id": {"type": ["integer"], "minimum": -2147483648, "maximum": 2147483647}, "small": {"type": ["null", "integer"], "minimum": -32768, "maximum": 32767}, "big": {"type": ["null", "integer"]}, "price": {"type": ["null", "number"], "multipleOf": 0.01}, "ratio": {"type": ["null", "number"]}, "flag": {"type": ["null", "boolean"]}, "happened_at": {"type": ["null", "string"], "format": "date-time"}, "day": {"type": ["null", "string"], "format": "date"}, "at": {"type": ["null", "string"], "format": "time"}, "doc": {"type": ["null", "object"]}, "tags": {"type": ["null", "array"], "items": {"type": "string"}}, "Name": {"type": ["null", "string"]}, "anything": {}}}}
{"type": "RECORD", "stream": "sales-Every.Type", "record": {"id": 1, "small": -32768, "big": 9223372036854775807, "price": 12345678901234567890.12, "ratio": 0.1, "flag": true, "happened_at": "2024-03-01T12:30:00.123456+05:30", "day": "2024-02-29", "at": "23:59:59.5", "doc": {"a": {"b": [1, "two", null]}, "tab": "x\ty"}, "tags": ["x", "y\\z"], "Name": "line\nbreak", "anything": 42}}
{"type": "RECORD", "stream": "sales-Every.Type", "record": {"id": 2}}
{"type": "RECORD", "stream": "sales-Every.Type", "record": {"id": 3, "price": "0.29", "flag": false, "Name": "old", "anything": {"k": 1}}}
{"type": "STATE", "value": {"bookmarks": {"n": 1}}}
{"type": "RECORD", "stream": "sales-Every.Type", "record": {"id": 3, "price": 0.07, "flag": false, "Name": "new", "anything": "text"}}
{"type": "STATE", "value": {"bookmarks": {"n": 2}}}
"#;
    // Several STATEs are released together after the final commit: only the latest is written.
    let stdout = run_ok(&cluster, json!({}), input);
    assert_eq!(stdout, "{\"bookmarks\": {\"n\": 2}}\n");
    assert_eq!(
        columns(&cluster, "sales.every_type"),
        "id integer\nsmall smallint\nbig bigint\nprice numeric\nratio numeric\nflag boolean\n\
         happened_at timestamp with time zone\nday date\nat time without time zone\ndoc jsonb\n\
         tags jsonb\nname character varying\nanything character varying"
    );
    let rows = cluster.psql(
        "SET TIME ZONE 'UTC'; SELECT id, small, big, price, ratio, flag, happened_at, day, at, doc, tags, name, anything \
         FROM sales.every_type ORDER BY id",
    );
    assert_eq!(
        rows,
        [
            r#"1|-32768|9223372036854775807|12345678901234567890.12|0.1|t|2024-03-01 07:00:00.123456+00|2024-02-29|23:59:59.5|{"a": {"b": [1, "two", null]}, "tab": "x\ty"}|["x", "y\\z"]|line"#,
            "break|42",
            "2||||||||||||",
            "3|||0.07||f||||||new|text",
        ]
        .join("\n")
    );
    assert_eq!(
        cluster.psql("SELECT count(*) FROM pg_constraint WHERE conrelid = 'sales.every_type'::regclass AND contype = 'p'"),
        "1",
        "the key becomes the primary key"
    );
}

#[test]
fn deletes_keep_their_time_without_hard_delete_and_remove_the_row_with_it() {
    let cluster = PgCluster::start_default();
    let properties = json!({
        "id": {"type": "integer"},
        "name": {"type": ["null", "string"]},
        "_sdc_deleted_at": {"type": ["null", "string"], "format": "date-time"}
    });
    let messages = |stream: &str| {
        lines(&[
            schema(stream, properties.clone(), &["id"]),
            record(
                stream,
                json!({"id": 1, "name": "one", "_sdc_deleted_at": null}),
            ),
            record(
                stream,
                json!({"id": 2, "name": "two", "_sdc_deleted_at": null}),
            ),
            record(
                stream,
                json!({"id": 3, "name": "three", "_sdc_deleted_at": null}),
            ),
            state(1),
            record(
                stream,
                json!({"id": 2, "_sdc_deleted_at": "2024-05-01T10:00:00+00:00"}),
            ),
            // Inserted and deleted within one batch: the last record wins.
            record(
                stream,
                json!({"id": 4, "name": "four", "_sdc_deleted_at": null}),
            ),
            record(
                stream,
                json!({"id": 4, "_sdc_deleted_at": "2024-05-01T11:00:00+00:00"}),
            ),
            // A key never seen before, deleted.
            record(
                stream,
                json!({"id": 5, "_sdc_deleted_at": "2024-05-01T12:00:00+00:00"}),
            ),
            state(2),
        ])
    };
    // batch_size_rows 3: the first three rows commit before the deletes arrive.
    let stdout = run_ok(
        &cluster,
        json!({"batch_size_rows": 3}),
        &messages("public-soft"),
    );
    assert_eq!(
        stdout,
        "{\"bookmarks\":{\"n\":1}}\n{\"bookmarks\":{\"n\":2}}\n"
    );
    assert_eq!(
        cluster.psql("SET TIME ZONE 'UTC'; SELECT id, name, _sdc_deleted_at FROM soft ORDER BY id"),
        "1|one|\n2|two|2024-05-01 10:00:00+00\n3|three|\n4|four|2024-05-01 11:00:00+00\n5||2024-05-01 12:00:00+00",
        "without hard_delete a delete keeps the row and records the time"
    );

    let stdout = run_ok(
        &cluster,
        json!({"batch_size_rows": 3, "hard_delete": true}),
        &messages("public-hard"),
    );
    assert_eq!(
        stdout,
        "{\"bookmarks\":{\"n\":1}}\n{\"bookmarks\":{\"n\":2}}\n"
    );
    assert_eq!(
        cluster.psql("SELECT id, name, _sdc_deleted_at FROM hard ORDER BY id"),
        "1|one|\n3|three|"
    );
    assert_eq!(
        columns(&cluster, "public.hard"),
        "_sdc_deleted_at timestamp with time zone\nid bigint\nname character varying\n\
         _sdc_extracted_at timestamp with time zone\n_sdc_batched_at timestamp with time zone",
        "hard_delete adds the metadata columns, as the old target did"
    );
}

#[test]
fn metadata_columns_carry_extraction_and_batch_times() {
    let cluster = PgCluster::start_default();
    let input = lines(&[
        schema("public-meta", json!({"id": {"type": "integer"}}), &["id"]),
        json!({"type": "RECORD", "stream": "public-meta", "record": {"id": 1}, "time_extracted": "2024-05-01T10:00:00.5Z"}),
    ]);
    run_ok(&cluster, json!({"add_metadata_columns": true}), &input);
    assert_eq!(
        cluster.psql(
            "SET TIME ZONE 'UTC'; SELECT id, _sdc_extracted_at, _sdc_deleted_at, \
             _sdc_batched_at BETWEEN now() - interval '5 minutes' AND now() FROM meta"
        ),
        "1|2024-05-01 10:00:00.5+00||t"
    );
}

#[test]
fn schema_changes_add_columns_and_rename_or_widen_changed_types() {
    let cluster = PgCluster::start_default();
    let first = json!({"id": {"type": "integer"}, "qty": {"type": ["null", "integer"], "minimum": 0, "maximum": 100}});
    let second = json!({
        "id": {"type": "integer"},
        "qty": {"type": ["null", "string"]},
        "note": {"type": ["null", "string"]}
    });
    let input = |stream: &str| {
        lines(&[
            schema(stream, first.clone(), &["id"]),
            record(stream, json!({"id": 1, "qty": 5})),
            state(1),
            // A new SCHEMA with rows pending flushes them first.
            schema(stream, second.clone(), &["id"]),
            record(stream, json!({"id": 2, "qty": "many", "note": "n"})),
            record(stream, json!({"id": 1, "qty": "six"})),
            state(2),
        ])
    };
    let stdout = run_ok(&cluster, json!({}), &input("public-renamed"));
    assert_eq!(
        stdout,
        "{\"bookmarks\":{\"n\":1}}\n{\"bookmarks\":{\"n\":2}}\n"
    );
    let described = columns(&cluster, "public.renamed");
    let described: Vec<&str> = described.lines().collect();
    assert_eq!(described.len(), 4, "{described:?}");
    assert_eq!(described[0], "id bigint");
    let old = described[1];
    assert!(
        old.starts_with("qty_")
            && old.ends_with(" smallint")
            && old.len() == "qty_20240101_1200 smallint".len(),
        "the old column is renamed to <col>_<YYYYMMDD_HHMM>: {old}"
    );
    // (json! sorts the properties: note comes before qty in this SCHEMA)
    assert_eq!(
        &described[2..],
        ["note character varying", "qty character varying"]
    );
    assert_eq!(
        cluster.psql("SELECT * FROM renamed ORDER BY id"),
        "1|5||six\n2||n|many"
    );

    run_ok(
        &cluster,
        json!({"schema_evolution": "widen"}),
        &input("public-widened"),
    );
    assert_eq!(
        columns(&cluster, "public.widened"),
        "id bigint\nqty character varying\nnote character varying"
    );
    assert_eq!(
        cluster.psql("SELECT * FROM widened ORDER BY id"),
        "1|six|\n2|many|n"
    );
}

#[test]
fn the_old_sources_output_loads_every_row_and_every_digit() {
    let cluster = PgCluster::start_default();
    let fixture = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/old_source_orders.singer"),
    )
    .expect("fixture");
    let stdout = run_ok(&cluster, json!({"default_target_schema": "raw"}), &fixture);
    let states: Vec<&str> = stdout.lines().collect();
    assert_eq!(states.len(), 2, "{stdout}");
    assert!(
        states[0].contains("\"currently_syncing\": \"public-orders\""),
        "{stdout}"
    );
    assert!(states[1].contains("\"lsn\": 23877000"), "{stdout}");
    assert_eq!(
        columns(&cluster, "raw.orders"),
        "id integer\ncustomer character varying\namount numeric\nquantity smallint\npaid boolean\n\
         created_at timestamp with time zone\nship_date timestamp with time zone\ndetails jsonb\n\
         tags jsonb\nprice_tier character varying\n_sdc_deleted_at timestamp with time zone"
    );
    let rows = cluster.psql(
        "SET TIME ZONE 'UTC'; SELECT id, customer, amount, quantity, paid, created_at, ship_date, details, tags, price_tier, _sdc_deleted_at FROM raw.orders ORDER BY id",
    );
    let expected = [
        r#"1|customer 1|0.07|3|f|2024-05-01 10:11:00.123456+00|2024-06-01 00:00:00+00|{"note": "n1", "lines": [{"qty": 1, "sku": "S1"}]}|["a", "t1"]||"#,
        r#"2|customer 2 (renamed)|0.29|7|t|2024-05-02 10:12:00.123456+00|||[]||"#,
        r#"3|customer 3|1234.50|9|f|2024-05-03 10:13:00.123456+00|2024-06-03 00:00:00+00|{"note": "n3", "lines": [{"qty": 3, "sku": "S3"}]}|["a", "t3"]||2024-05-07 09:02:00+00"#,
        r#"4|customer 4|99999999.99|12|t|2024-05-04 10:14:00.123456+00|2024-06-04 00:00:00+00|{"note": "n4", "lines": [{"qty": 4, "sku": "S4"}]}|["a", "t4"]|money $1,234.50|"#,
        r#"5|customer 5|0.01|15|f|2024-05-05 10:15:00.123456+00|2024-06-05 00:00:00+00|{"note": "n5", "lines": [{"qty": 5, "sku": "S5"}]}|["a", "t5"]||"#,
        r#"6|customer 6|-12.34|18|t|2024-05-06 10:16:00.123456+00|2024-06-06 00:00:00+00|{"note": "n6", "lines": [{"qty": 6, "sku": "S6"}]}|["a", "t6"]||"#,
        r#"7|customer 7|0.29|2|f|9999-12-31 23:59:59.999+00|2024-07-07 00:00:00+00|{"a": [1, 2, {"b": null}]}|["x"]||"#,
    ];
    assert_eq!(rows, expected.join("\n"));

    // With hard_delete the deleted order is gone and nothing else changes.
    cluster.psql("DROP SCHEMA raw CASCADE");
    run_ok(
        &cluster,
        json!({"default_target_schema": "raw", "hard_delete": true}),
        &fixture,
    );
    assert_eq!(
        cluster.psql("SELECT string_agg(id::text, ',' ORDER BY id), sum(amount) FROM raw.orders"),
        "1,2,4,5,6,7|99999988.31"
    );
}

#[test]
fn a_state_is_never_written_before_the_rows_before_it_are_committed() {
    let cluster = PgCluster::start_default();
    cluster.psql(
        "CREATE TABLE public.checked (id bigint PRIMARY KEY, amount numeric CHECK (amount >= 0))",
    );
    let stream = "public-checked";
    let properties = json!({"id": {"type": "integer"}, "amount": {"type": ["null", "number"]}});
    let input = lines(&[
        schema(stream, properties, &["id"]),
        record(stream, json!({"id": 1, "amount": 1})),
        record(stream, json!({"id": 2, "amount": 2})),
        state(1),
        record(stream, json!({"id": 3, "amount": -1})),
        record(stream, json!({"id": 4, "amount": 4})),
        state(2),
    ]);
    let (code, stdout, stderr) = run_failing(&cluster, json!({"batch_size_rows": 2}), &input);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stdout, "{\"bookmarks\":{\"n\":1}}\n",
        "only the committed STATE"
    );
    assert!(stderr.contains("stream \"public-checked\""), "{stderr}");
    assert!(stderr.contains("public.checked"), "{stderr}");
    assert!(stderr.contains("checked_amount_check"), "{stderr}");
    assert!(
        stderr.contains("input lines 5–6 was rolled back"),
        "{stderr}"
    );
    assert_eq!(
        cluster.psql("SELECT id, amount FROM checked ORDER BY id"),
        "1|1\n2|2",
        "the failed batch is not half-applied"
    );
}

#[test]
fn a_value_the_server_rejects_names_its_line_and_column_and_rolls_back() {
    let cluster = PgCluster::start_default();
    let stream = "public-days";
    let properties =
        json!({"id": {"type": "integer"}, "day": {"type": ["null", "string"], "format": "date"}});
    let input = lines(&[
        schema(stream, properties, &["id"]),
        record(stream, json!({"id": 1, "day": "2024-02-29"})),
        record(stream, json!({"id": 2, "day": "2024-13-45"})),
        record(stream, json!({"id": 3, "day": "2024-03-01"})),
        state(1),
    ]);
    let (code, stdout, stderr) = run_failing(&cluster, json!({}), &input);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("line 3: stream \"public-days\", column \"day\""),
        "{stderr}"
    );
    assert!(stderr.contains("2024-13-45"), "{stderr}");
    assert_eq!(cluster.psql("SELECT count(*) FROM days"), "0");
}

#[test]
fn bad_input_is_a_clear_error_with_line_stream_and_column() {
    let cluster = PgCluster::start_default();
    let key = json!({"id": {"type": "integer"}, "qty": {"type": ["null", "integer"]}});
    let cases: Vec<(Value, String, &str)> = vec![
        (
            json!({}),
            lines(&[record("public-early", json!({"id": 1}))]),
            "line 1: RECORD for stream \"public-early\" before its SCHEMA",
        ),
        (
            json!({}),
            format!("{}this is not json\n", lines(&[schema("public-a", key.clone(), &["id"])])),
            "line 2: not a JSON Singer message",
        ),
        (
            json!({"validate_records": true}),
            lines(&[
                schema("public-v", key.clone(), &["id"]),
                record("public-v", json!({"id": 1, "qty": "5"})),
            ]),
            "line 2: stream \"public-v\", column \"qty\": expected a value of the schema's types (null, integer), got \"5\"",
        ),
        (
            json!({}),
            lines(&[schema("public-nokey", key.clone(), &[])]),
            "line 1: stream \"public-nokey\" has no key_properties, and primary_key_required is true",
        ),
        (
            json!({}),
            lines(&[
                schema("public-n", key.clone(), &["id"]),
                record("public-n", json!({"id": 1, "qty": 1})),
                state(1),
                record("public-n", json!({"id": 2, "qty": "abc"})),
            ]),
            "line 4: stream \"public-n\", column \"qty\": expected an integer, got \"abc\"",
        ),
        (
            json!({}),
            lines(&[
                schema("public-k", key.clone(), &["id"]),
                record("public-k", json!({"qty": 1})),
            ]),
            "line 2: stream \"public-k\", key column \"id\" is missing or null",
        ),
    ];
    for (extra, input, expected) in cases {
        let (code, stdout, stderr) = run_failing(&cluster, extra, &input);
        assert_eq!(code, 1, "{expected}: {stderr}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in:\n{stderr}"
        );
        assert_eq!(stdout, "", "no STATE past a bad line: {expected}");
    }
    assert_eq!(
        cluster.psql("SELECT count(*) FROM public.n"),
        "0",
        "the record before the bad one was pending, not half-loaded"
    );

    // A drop-in: an unknown key is a warning with the closest key, as Singer targets ignore
    // keys they do not use; a known key with a bad value is still a config error (exit 2).
    let (code, _, stderr) = run_failing(&cluster, json!({"hard_delet": true}), "");
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("did you mean \"hard_delete\""), "{stderr}");
    let (code, _, stderr) = run_failing(&cluster, json!({"hard_delete": "maybe"}), "");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("hard_delete"), "{stderr}");

    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), &cluster, json!({"port": 1}));
    let output = target(&config, "");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("could not connect"));
}

#[test]
fn keyless_streams_append_when_keys_are_not_required_and_validation_passes_decimals() {
    let cluster = PgCluster::start_default();
    let properties = json!({"note": {"type": ["null", "string"]}, "amount": {"type": ["null", "number"], "multipleOf": 0.01}});
    let input = lines(&[
        schema("public-log", properties, &[]),
        record("public-log", json!({"note": "x", "amount": 0.07})),
        record("public-log", json!({"note": "x", "amount": 0.29})),
        state(1),
    ]);
    let stdout = run_ok(
        &cluster,
        json!({"primary_key_required": false, "validate_records": true}),
        &input,
    );
    assert_eq!(stdout, "{\"bookmarks\":{\"n\":1}}\n");
    assert_eq!(
        cluster.psql("SELECT amount, note FROM log ORDER BY amount"),
        "0.07|x\n0.29|x"
    );
}

#[test]
fn a_state_waits_for_the_pending_rows_of_every_stream() {
    let cluster = PgCluster::start_default();
    cluster.psql("CREATE TABLE public.b (id bigint PRIMARY KEY, v bigint CHECK (v >= 0))");
    let properties = json!({"id": {"type": "integer"}, "v": {"type": ["null", "integer"]}});
    let input = lines(&[
        schema("public-a", properties.clone(), &["id"]),
        schema("public-b", properties, &["id"]),
        record("public-a", json!({"id": 1, "v": 1})),
        record("public-b", json!({"id": 1, "v": -1})),
        // Stream a reaches batch_size_rows and commits; b's row (before the STATE) is pending.
        record("public-a", json!({"id": 2, "v": 2})),
        state(1),
    ]);
    let (code, stdout, stderr) = run_failing(&cluster, json!({"batch_size_rows": 2}), &input);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("line 4: stream \"public-b\""), "{stderr}");
    assert_eq!(
        stdout, "",
        "stream b's row before the STATE never committed"
    );
    assert_eq!(cluster.psql("SELECT count(*) FROM a"), "2");
}

#[test]
fn the_flush_timer_commits_and_releases_state_while_the_input_is_idle() {
    use std::io::{BufRead, BufReader};
    let cluster = PgCluster::start_default();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), &cluster, json!({"batch_flush_interval": 1}));
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["target", "-c", config.to_str().unwrap_or_default()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run pgferry target");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let input = lines(&[
        schema("public-timed", json!({"id": {"type": "integer"}}), &["id"]),
        record("public-timed", json!({"id": 1})),
        state(1),
    ]);
    stdin.write_all(input.as_bytes()).expect("write input");
    stdin.flush().expect("flush input");
    // stdin stays open: only the timer can load the row and release the STATE.
    let line = receiver
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the STATE is written after the timer flush");
    assert_eq!(line, "{\"bookmarks\":{\"n\":1}}");
    assert_eq!(cluster.psql("SELECT id FROM timed"), "1");
    drop(stdin);
    assert_eq!(child.wait().expect("wait").code(), Some(0));
}

#[test]
fn a_bad_record_stops_the_run_after_the_batch_in_flight_commits_with_its_state() {
    let cluster = PgCluster::start_default();
    let stream = "public-flight";
    let properties = json!({"id": {"type": "integer"}, "q": {"type": ["null", "integer"]}});
    let input = lines(&[
        schema(stream, properties, &["id"]),
        record(stream, json!({"id": 1, "q": 1})),
        record(stream, json!({"id": 2, "q": 2})),
        state(1),
        record(stream, json!({"id": 3, "q": 3})),
        state(2),
        record(stream, json!({"id": 4, "q": "abc"})),
    ]);
    let (code, stdout, stderr) = run_failing(&cluster, json!({"batch_size_rows": 2}), &input);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("line 7: stream \"public-flight\", column \"q\": expected an integer"),
        "{stderr}"
    );
    assert_eq!(
        stdout, "{\"bookmarks\":{\"n\":1}}\n",
        "STATE 2 covers row 3, never committed"
    );
    assert_eq!(
        cluster.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM flight"),
        "1,2"
    );
}

#[test]
fn nested_objects_become_columns_with_data_flattening_max_level() {
    let cluster = PgCluster::start_default();
    let input = r#"{"type": "SCHEMA", "stream": "public-people", "key_properties": ["id"], "schema": {"properties": {"id": {"type": "integer"}, "address": {"type": ["null", "object"], "properties": {"city": {"type": ["null", "string"]}, "geo": {"type": ["null", "object"], "properties": {"lat": {"type": ["null", "number"]}}}}}}}}
{"type": "RECORD", "stream": "public-people", "record": {"id": 1, "address": {"city": "Oslo", "geo": {"lat": 59.9139}}}}
{"type": "RECORD", "stream": "public-people", "record": {"id": 2, "address": null}}
{"type": "RECORD", "stream": "public-people", "record": {"id": 3, "address": {"geo": null, "extra": true}}}
"#;
    run_ok(&cluster, json!({"data_flattening_max_level": 1}), input);
    assert_eq!(
        columns(&cluster, "public.people"),
        "id bigint\naddress__city character varying\naddress__geo jsonb"
    );
    assert_eq!(
        cluster.psql("SELECT * FROM people ORDER BY id"),
        "1|Oslo|{\"lat\": 59.9139}\n2||\n3||"
    );
    cluster.psql("DROP TABLE people");
    run_ok(&cluster, json!({"data_flattening_max_level": 5}), input);
    assert_eq!(
        cluster.psql("SELECT * FROM people ORDER BY id"),
        "1|Oslo|59.9139\n2||\n3||"
    );
}

#[test]
fn a_table_without_a_unique_key_is_merged_the_old_way_without_duplicates() {
    let cluster = PgCluster::start_default();
    cluster.psql("CREATE TABLE public.legacy (id bigint, name character varying)");
    let stream = "public-legacy";
    let properties = json!({"id": {"type": "integer"}, "name": {"type": ["null", "string"]}});
    let first = lines(&[
        schema(stream, properties.clone(), &["id"]),
        record(stream, json!({"id": 1, "name": "a"})),
        record(stream, json!({"id": 2, "name": "b"})),
    ]);
    run_ok(&cluster, json!({}), &first);
    let second = lines(&[
        schema(stream, properties, &["id"]),
        record(stream, json!({"id": 2, "name": "B"})),
        record(stream, json!({"id": 3, "name": "c"})),
    ]);
    run_ok(&cluster, json!({}), &second);
    assert_eq!(
        cluster.psql("SELECT id, name FROM legacy ORDER BY id"),
        "1|a\n2|B\n3|c"
    );
}

#[test]
fn a_table_created_by_the_old_target_is_loaded_without_renaming_its_columns() {
    let cluster = PgCluster::start_default();
    cluster.psql(
        "CREATE TABLE public.legacy_orders (id integer PRIMARY KEY, amount double precision, \
         created_at timestamp without time zone, qty numeric, note character varying)",
    );
    let input = r#"{"type": "SCHEMA", "stream": "public-legacy_orders", "key_properties": ["id"], "schema": {"properties": {"id": {"type": "integer", "minimum": -2147483648, "maximum": 2147483647}, "amount": {"type": ["null", "number"]}, "created_at": {"type": ["null", "string"], "format": "date-time"}, "qty": {"type": ["null", "integer"]}, "note": {"type": ["null", "string"]}}}}
{"type": "RECORD", "stream": "public-legacy_orders", "record": {"id": 1, "amount": 0.5, "created_at": "2024-05-01T10:00:00+00:00", "qty": 3, "note": "x"}}
"#;
    let (code, _, stderr) = run_failing(&cluster, json!({}), input);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        columns(&cluster, "public.legacy_orders"),
        "id integer\namount double precision\ncreated_at timestamp without time zone\nqty numeric\nnote character varying",
        "no column renamed"
    );
    assert!(stderr.contains("ALTER it to numeric"), "{stderr}");
    assert!(
        stderr.contains("ALTER it to timestamp with time zone"),
        "{stderr}"
    );
    assert_eq!(
        cluster.psql("SELECT * FROM legacy_orders"),
        "1|0.5|2024-05-01 10:00:00|3|x"
    );
}

#[test]
fn a_batch_loaded_on_size_releases_its_state_while_the_input_is_idle() {
    use std::io::{BufRead, BufReader};
    let cluster = PgCluster::start_default();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        &cluster,
        json!({"batch_flush_interval": 1, "batch_size_rows": 2}),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["target", "-c", config.to_str().unwrap_or_default()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run pgferry target");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    // The second record fills the batch: it is loaded at once, nothing stays buffered.
    let input = lines(&[
        state(0),
        schema("public-sized", json!({"id": {"type": "integer"}}), &["id"]),
        record("public-sized", json!({"id": 1})),
        state(1),
        record("public-sized", json!({"id": 2})),
        state(2),
    ]);
    stdin.write_all(input.as_bytes()).expect("write input");
    stdin.flush().expect("flush input");
    let wait = || receiver.recv_timeout(std::time::Duration::from_secs(30));
    assert_eq!(wait().expect("STATE 0"), "{\"bookmarks\":{\"n\":0}}");
    assert_eq!(
        wait().expect("STATE 2 while stdin is open"),
        "{\"bookmarks\":{\"n\":2}}"
    );
    assert_eq!(cluster.psql("SELECT count(*) FROM sized"), "2");
    drop(stdin);
    assert_eq!(child.wait().expect("wait").code(), Some(0));
}

#[test]
fn schema_mapping_target_table_and_flush_all_streams() {
    let cluster = PgCluster::start_default();
    let properties = json!({"id": {"type": "integer"}, "src": {"type": ["null", "string"]}});
    let input = lines(&[
        schema("sales-orders", properties.clone(), &["id"]),
        schema("public-orders", properties.clone(), &["id"]),
        record("sales-orders", json!({"id": 1, "src": "sales"})),
        record("public-orders", json!({"id": 2, "src": "public"})),
        state(1),
        // With flush_all_streams, stream sales-orders reaching the batch size loads both
        // streams, so STATE 1 is written before the input ends.
        record("sales-orders", json!({"id": 3, "src": "sales"})),
        state(2),
    ]);
    let stdout = run_ok(
        &cluster,
        json!({
            "default_target_schema": "landing",
            "schema_mapping": {"sales": {"target_schema": "analytics"}},
            "batch_size_rows": 2,
            "flush_all_streams": true
        }),
        &input,
    );
    assert_eq!(
        stdout,
        "{\"bookmarks\":{\"n\":1}}\n{\"bookmarks\":{\"n\":2}}\n"
    );
    assert_eq!(
        cluster.psql("SELECT id, src FROM analytics.orders ORDER BY id"),
        "1|sales\n3|sales"
    );
    assert_eq!(
        cluster.psql("SELECT id, src FROM landing.orders"),
        "2|public"
    );

    let stdout = run_ok(&cluster, json!({"target_table": "Everything"}), &input);
    assert_eq!(stdout, "{\"bookmarks\":{\"n\":2}}\n");
    assert_eq!(
        cluster.psql("SELECT 'sales', id, src FROM sales.everything UNION ALL SELECT 'public', id, src FROM public.everything ORDER BY 1, 2"),
        "public|2|public\nsales|1|sales\nsales|3|sales"
    );
}

#[test]
fn binary_and_text_copy_load_identical_tables() {
    let cluster = PgCluster::start_default();
    let schema_line = |stream: &str| {
        format!(
            r#"{{"type": "SCHEMA", "stream": "{stream}", "key_properties": ["id"], "schema": {{"properties": {{"id": {{"type": "integer", "minimum": -32768, "maximum": 32767}}, "n": {{"type": ["null", "number"]}}, "i": {{"type": ["null", "integer"]}}, "b": {{"type": ["null", "boolean"]}}, "ts": {{"type": ["null", "string"], "format": "date-time"}}, "d": {{"type": ["null", "string"], "format": "date"}}, "t": {{"type": ["null", "string"], "format": "time"}}, "j": {{"type": ["null", "object", "array"]}}, "s": {{"type": ["null", "string"]}}}}}}}}"#
        )
    };
    let values = [
        r#"{"id": 1, "n": 0.07, "i": -9223372036854775808, "b": true, "ts": "2024-05-01T10:00:00.123456+05:30", "d": "2024-02-29", "t": "24:00:00", "j": {"k": "v\t"}, "s": "tab\there \\ back"}"#,
        r#"{"id": 2, "n": -0.00001, "i": 0, "b": false, "ts": "1999-12-31 23:59:59Z", "d": "0001-01-01", "t": "00:00:00.000001", "j": [], "s": ""}"#,
        r#"{"id": 3, "n": "12345678901234567890.123456789012345678", "i": "42", "b": null, "ts": "2000-01-01T00:00:00-01", "d": "9999-12-31", "t": "12:34:56", "j": null, "s": "é\n"}"#,
        r#"{"id": 4, "n": -0, "i": 1.0, "ts": "9999-12-31T23:59:59.999+00:00", "d": "2024-01-01T00:00:00+00:00", "s": "x"}"#,
        r#"{"id": 5, "n": 1e3, "ts": "2024-05-01T10:00:00.1234567+00:00"}"#,
        r#"{"id": 6, "n": "NaN", "i": -1, "b": "yes"}"#,
    ];
    let input = |stream: &str| {
        let mut text = schema_line(stream);
        text.push('\n');
        for value in values {
            text.push_str(&format!(
                "{{\"type\": \"RECORD\", \"stream\": \"{stream}\", \"record\": {value}}}\n"
            ));
        }
        text
    };
    // One record per batch: rows 1–3 go binary, rows 4–6 have a value without an exact binary
    // form (-0 is fine; 1e3, seven fraction digits, a date with a time, NaN, "yes") and go text.
    let one = |format: &str| json!({"copy_format": format, "batch_size_rows": 1});
    run_ok(&cluster, one("text"), &input("public-as_text"));
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), &cluster, one("auto"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_pgferry"));
    command
        .args(["target", "-c", config.to_str().unwrap_or_default()])
        .env(
            "PGFERRY_LOG",
            "pgferry::singer::target_postgres::load=debug",
        );
    let output = {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run pgferry target");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(input("public-as_auto").as_bytes())
            .expect("write input");
        drop(stdin);
        child.wait_with_output().expect("wait")
    };
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{log}");
    assert_eq!(log.matches("\"binary\"").count(), 3, "{log}");
    assert_eq!(log.matches("\"text\"").count(), 3, "{log}");
    let dump = |table: &str| {
        cluster.psql(&format!(
            "SET TIME ZONE 'UTC'; SELECT id, n, i, b, ts, d, t, j, s FROM {table} ORDER BY id"
        ))
    };
    let text = dump("as_text");
    assert_eq!(dump("as_auto"), text);
    assert!(
        text.contains("12345678901234567890.123456789012345678"),
        "{text}"
    );
    assert!(text.contains("-0.00001"), "{text}");
    assert_eq!(cluster.psql("SELECT count(*) FROM as_auto"), "6");
}

#[test]
fn streams_load_in_parallel_and_states_still_wait_for_every_stream() {
    let cluster = PgCluster::start_default();
    cluster.psql("CREATE TABLE public.s5 (id bigint PRIMARY KEY, v bigint CHECK (v <> 999))");
    let properties = json!({"id": {"type": "integer"}, "v": {"type": ["null", "integer"]}});
    let streams: Vec<String> = (0..6).map(|n| format!("public-s{n}")).collect();
    let mut messages: Vec<Value> = streams
        .iter()
        .map(|stream| schema(stream, properties.clone(), &["id"]))
        .collect();
    // Records of all streams interleaved, a STATE every 300 records; stream s5's row 999 is
    // refused by the table, in the batch after STATE 10.
    let mut states = 0;
    for id in 0..600u64 {
        for stream in &streams {
            let v = if stream == "public-s5" && id == 520 {
                999
            } else {
                id
            };
            messages.push(record(stream, json!({"id": id, "v": v})));
        }
        if (id + 1) % 50 == 0 {
            states += 1;
            messages.push(state(states));
        }
    }
    let input = lines(&messages);
    let (code, stdout, stderr) = run_failing(
        &cluster,
        json!({"batch_size_rows": 100, "parallelism": 3}),
        &input,
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("stream \"public-s5\""), "{stderr}");
    // Every STATE written covers only committed rows: its number n means 50·n ids of every
    // stream are in their tables.
    let written: Vec<u64> = stdout
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).expect("a STATE line")["bookmarks"]["n"]
                .as_u64()
                .expect("n")
        })
        .collect();
    assert!(
        !written.is_empty(),
        "STATEs before the failure are released"
    );
    assert!(
        written.windows(2).all(|pair| pair[0] < pair[1]),
        "{written:?}"
    );
    let last = *written.last().unwrap_or(&0);
    assert!(
        last <= 10,
        "no STATE after the refused row's batch: {written:?}"
    );
    for n in 0..6 {
        let committed: u64 = cluster
            .psql(&format!(
                "SELECT count(*) FROM s{n} WHERE id < {}",
                last * 50
            ))
            .parse()
            .expect("count");
        assert_eq!(committed, last * 50, "stream s{n} before STATE {last}");
    }
    assert_eq!(
        cluster.psql("SELECT count(*) FROM s5 WHERE id >= 500"),
        "0",
        "the refused batch is not half-applied"
    );

    // Without the bad row, six streams over three connections load exactly.
    let good = input.replace("\"v\":999", "\"v\":520");
    let cluster = PgCluster::start_default();
    let stdout = run_ok(
        &cluster,
        json!({"batch_size_rows": 100, "parallelism": 3}),
        &good,
    );
    // (A STATE overtaken by a later releasable one is not written: the latest one is.)
    assert!(stdout.ends_with("{\"bookmarks\":{\"n\":12}}\n"), "{stdout}");
    for n in 0..6 {
        assert_eq!(
            cluster.psql(&format!("SELECT count(*), sum(id), sum(v) FROM s{n}")),
            "600|179700|179700"
        );
    }
}

#[test]
fn deleted_at_is_read_as_the_old_target_read_it_in_the_type_the_table_has() {
    let cluster = PgCluster::start_default();
    // A table the old target made: its metadata columns are `character varying`.
    cluster.psql(
        "CREATE TABLE public.old_made (id integer PRIMARY KEY, name character varying, \
         _sdc_extracted_at timestamp without time zone, _sdc_batched_at timestamp without time zone, \
         _sdc_deleted_at character varying); INSERT INTO old_made VALUES (1, 'one', NULL, NULL, NULL), (2, 'two', NULL, NULL, NULL)",
    );
    let properties = json!({"id": {"type": "integer", "minimum": -2147483648, "maximum": 2147483647}, "name": {"type": ["null", "string"]}});
    let input = lines(&[
        schema("public-old_made", properties.clone(), &["id"]),
        record(
            "public-old_made",
            json!({"id": 1, "_sdc_deleted_at": "2019-12-18T13:19:44+00:00+00:00"}),
        ),
        record(
            "public-old_made",
            json!({"id": 3, "name": "three", "_sdc_deleted_at": "2024-05-01T10:00:00Z"}),
        ),
        state(1),
    ]);
    let stdout = run_ok(&cluster, json!({"add_metadata_columns": true}), &input);
    assert_eq!(stdout, "{\"bookmarks\":{\"n\":1}}\n");
    assert_eq!(
        columns(&cluster, "public.old_made"),
        "id integer\nname character varying\n_sdc_extracted_at timestamp without time zone\n\
         _sdc_batched_at timestamp without time zone\n_sdc_deleted_at character varying",
        "metadata columns are never renamed or retyped"
    );
    assert_eq!(
        cluster.psql("SELECT id, name, _sdc_deleted_at FROM old_made ORDER BY id"),
        "1|one|2019-12-18T13:19:44+00:00+00:00\n2|two|\n3|three|2024-05-01T10:00:00Z"
    );
    // With hard_delete, any non-null value deletes, whatever it holds.
    let input = lines(&[
        schema("public-old_made", properties, &["id"]),
        record(
            "public-old_made",
            json!({"id": 2, "_sdc_deleted_at": "not a time at all"}),
        ),
    ]);
    run_ok(&cluster, json!({"hard_delete": true}), &input);
    assert_eq!(cluster.psql("SELECT id FROM old_made ORDER BY id"), "1\n3");

    // A table pgferry makes keeps timestamptz while every value is a timestamp…
    let properties = json!({"id": {"type": "integer"}, "name": {"type": ["null", "string"]}});
    let input = lines(&[
        schema("public-new_made", properties.clone(), &["id"]),
        record(
            "public-new_made",
            json!({"id": 1, "name": "one", "_sdc_deleted_at": "2024-05-01T10:00:00Z"}),
        ),
        record("public-new_made", json!({"id": 2, "name": "two"})),
    ]);
    run_ok(&cluster, json!({"add_metadata_columns": true}), &input);
    assert!(
        columns(&cluster, "public.new_made").ends_with("_sdc_deleted_at timestamp with time zone"),
        "{}",
        columns(&cluster, "public.new_made")
    );
    // …and becomes text, keeping the values it held, when one is not.
    let input = lines(&[
        schema("public-new_made", properties, &["id"]),
        record(
            "public-new_made",
            json!({"id": 2, "_sdc_deleted_at": "2019-12-18T13:19:44+00:00+00:00"}),
        ),
        state(2),
    ]);
    let (code, stdout, stderr) =
        run_failing(&cluster, json!({"add_metadata_columns": true}), &input);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "{\"bookmarks\":{\"n\":2}}\n");
    assert!(stderr.contains("is now text"), "{stderr}");
    assert!(columns(&cluster, "public.new_made").ends_with("_sdc_deleted_at text"));
    assert_eq!(
        cluster.psql("SELECT id, name, _sdc_deleted_at FROM new_made ORDER BY id"),
        "1|one|2024-05-01 10:00:00+00\n2|two|2019-12-18T13:19:44+00:00+00:00"
    );
    // The same for `_sdc_extracted_at` when a tap's time_extracted is not a timestamp.
    let input = format!(
        "{}\n{}\n",
        schema(
            "public-new_made",
            json!({"id": {"type": "integer"}, "name": {"type": ["null", "string"]}}),
            &["id"]
        ),
        r#"{"type": "RECORD", "stream": "public-new_made", "record": {"id": 3, "name": "three"}, "time_extracted": "yesterday"}"#
    );
    let (code, _, stderr) = run_failing(&cluster, json!({"add_metadata_columns": true}), &input);
    assert_eq!(code, 0, "{stderr}");
    assert!(columns(&cluster, "public.new_made").contains("_sdc_extracted_at text"));
    assert_eq!(
        cluster.psql("SELECT _sdc_extracted_at FROM new_made WHERE id = 3"),
        "yesterday"
    );
}

#[test]
fn a_delete_with_values_into_a_table_without_deleted_at_is_loaded_and_only_key_only_deletes_are_left(
) {
    let cluster = PgCluster::start_default();
    let properties = json!({"id": {"type": "integer"}, "name": {"type": ["null", "string"]}});
    let input = lines(&[
        schema("public-plain", properties, &["id"]),
        record("public-plain", json!({"id": 1, "name": "one"})),
        record(
            "public-plain",
            json!({"id": 2, "name": "Thai: แผ่นดิน", "_sdc_deleted_at": "2019-02-12T01:10:10.000000Z"}),
        ),
        record(
            "public-plain",
            json!({"id": 1, "_sdc_deleted_at": "2019-02-12T01:10:10.000000Z"}),
        ),
        record(
            "public-plain",
            json!({"id": 9, "_sdc_deleted_at": "2019-02-12T01:10:10.000000Z"}),
        ),
        state(1),
    ]);
    let (code, stdout, stderr) = run_failing(&cluster, json!({}), &input);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "{\"bookmarks\":{\"n\":1}}\n");
    assert_eq!(
        cluster.psql("SELECT id, name FROM plain ORDER BY id"),
        "1|one\n2|Thai: แผ่นดิน",
        "the record with values is an upsert; the key-only delete leaves row 1 and makes no row 9"
    );
    assert!(
        stderr.contains("the row is left unchanged")
            && stderr.contains("left their rows unchanged"),
        "the key-only deletes are reported: {stderr}"
    );
}
