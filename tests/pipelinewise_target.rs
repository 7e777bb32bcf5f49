//! pipelinewise-target-postgres's integration suite, adapted: the same Singer message files
//! (`tests/fixtures/pipelinewise/target/`, see the README there), the same configs with the old
//! keys, through the real `pgferry target` binary into a private cluster. Each test checks what
//! the upstream test checked; where pgferry differs on purpose, the test asserts pgferry's
//! behaviour and names the README row ("Differences from the old target").

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};
use support::PgCluster;

/// The schema every test loads into (the upstream `TARGET_POSTGRES_SCHEMA`).
const SCHEMA: &str = "pw_target";

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pipelinewise/target")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The upstream test config: connection, `default_target_schema`, and the keys it sets to
/// null (pgferry must start with them), then the test's own keys.
fn config(dir: &Path, cluster: &PgCluster, extra: Value) -> PathBuf {
    let mut config = json!({
        "host": "127.0.0.1", "port": cluster.port(), "user": "postgres",
        "password": "unused", "dbname": "postgres",
        "default_target_schema": SCHEMA,
        "disable_table_cache": null, "schema_mapping": null, "add_metadata_columns": null,
        "hard_delete": null, "flush_all_streams": null
    });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            if value.is_null() {
                config.remove(key);
            } else {
                config.insert(key.clone(), value.clone());
            }
        }
    }
    let path = dir.join("target.json");
    std::fs::write(&path, config.to_string()).expect("write config");
    path
}

fn run_target(cluster: &PgCluster, extra: Value, input: &str) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(dir.path(), cluster, extra);
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

/// Runs the target over a fixture; it must succeed. Returns the STATE lines and stderr.
fn load(cluster: &PgCluster, extra: Value, file: &str) -> (Vec<Value>, String) {
    let output = run_target(cluster, extra, &fixture(file));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(0), "{file}: stderr:\n{stderr}");
    let states = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a STATE line is JSON"))
        .collect();
    (states, stderr)
}

fn query(cluster: &PgCluster, sql: &str) -> String {
    cluster.psql(&format!("SET TIME ZONE 'UTC'; {sql}"))
}

/// `_sdc_*` columns of a table, in name order.
fn metadata_columns(cluster: &PgCluster, table: &str) -> String {
    cluster.psql(&format!(
        "SELECT string_agg(column_name, ',' ORDER BY column_name) FROM information_schema.columns \
         WHERE table_schema = '{SCHEMA}' AND table_name = '{table}' AND column_name LIKE '\\_sdc\\_%'"
    ))
}

/// What `assert_multiple_streams_are_into_postgres` checked upstream.
fn assert_multiple_streams(cluster: &PgCluster, metadata: bool, hard_deleted: bool) {
    assert_multiple_streams_in(cluster, SCHEMA, metadata, hard_deleted);
}

fn assert_multiple_streams_in(
    cluster: &PgCluster,
    schema: &str,
    metadata: bool,
    hard_deleted: bool,
) {
    assert_eq!(
        query(
            cluster,
            &format!("SELECT c_pk, c_int, c_varchar FROM {schema}.test_table_one ORDER BY c_pk")
        ),
        "1|1|1"
    );
    let two = query(
        cluster,
        &format!(
            "SELECT c_pk, c_int, c_varchar, c_date FROM {schema}.test_table_two ORDER BY c_pk"
        ),
    );
    let three = query(
        cluster,
        &format!(
            "SELECT c_pk, c_int, c_varchar, c_time FROM {schema}.test_table_three ORDER BY c_pk"
        ),
    );
    let four = query(
        cluster,
        &format!(
            "SELECT c_pk, c_smallint, c_integer, c_bigint, c_nobound_int FROM {schema}.test_table_four ORDER BY c_pk"
        ),
    );
    // c_date is `format: date-time` without an offset: pgferry's column is timestamptz (README:
    // "JSON schema → column type"), the value read in UTC, the old target's naive timestamp.
    if hard_deleted {
        assert_eq!(two, "2|2|2|2019-02-10 02:00:00+00");
        assert_eq!(three, "1|1|1|04:00:00\n2|2|2|07:15:00");
        assert_eq!(four, "1|1|1|1|1\n2|2|2|2|2");
    } else {
        assert_eq!(
            two, "1|1|1|2019-02-01 15:12:45+00\n2|2|2|2019-02-10 02:00:00+00",
            "a record with values and _sdc_deleted_at into a table without the column is an upsert"
        );
        assert_eq!(three, "1|1|1|04:00:00\n2|2|2|07:15:00\n3|3|3|23:00:03");
        assert_eq!(four, "1|1|1|1|1\n2|2|2|2|2\n3|3|3|3|3");
    }
    let wanted = if metadata {
        "_sdc_batched_at,_sdc_deleted_at,_sdc_extracted_at"
    } else {
        ""
    };
    for table in [
        "test_table_one",
        "test_table_two",
        "test_table_three",
        "test_table_four",
    ] {
        let found = cluster.psql(&format!(
            "SELECT coalesce(string_agg(column_name, ',' ORDER BY column_name), '') FROM information_schema.columns \
             WHERE table_schema = '{schema}' AND table_name = '{table}' AND column_name LIKE '\\_sdc\\_%'"
        ));
        assert_eq!(found, wanted, "metadata columns of {table}");
    }
}

/// What `assert_logical_streams_are_in_postgres` checked upstream.
fn assert_logical_streams(cluster: &PgCluster) {
    assert_eq!(
        query(cluster, &format!("SELECT cid, cvarchar, cvarchar2 FROM {SCHEMA}.logical1_table1 ORDER BY cid")),
        "1|inserted row|\n2|inserted row|inserted row\n3|inserted row|inserted row\n4|inserted row|inserted row"
    );
    assert_eq!(
        query(cluster, &format!("SELECT cid, cvarchar FROM {SCHEMA}.logical1_table2 ORDER BY cid")),
        "1|updated row\n2|updated row\n3|updated row\n5|updated row\n7|updated row\n8|updated row\n9|updated row\n10|updated row"
    );
    assert_eq!(
        query(
            cluster,
            &format!("SELECT cid, cvarchar FROM {SCHEMA}.logical2_table1 ORDER BY cid")
        ),
        "1|updated row\n2|updated row\n3|updated row"
    );
    assert_eq!(
        query(
            cluster,
            &format!("SELECT cid, ctimentz, ctimetz FROM {SCHEMA}.logical1_edgydata WHERE cid IN (1,2,3,4,5,6,8,9) ORDER BY cid")
        ),
        "1||\n2|23:00:15|23:00:15\n3|12:00:15|12:00:15\n4|12:00:15|09:00:15\n5|12:00:15|15:00:15\n\
         6|00:00:00|00:00:00\n8|00:00:00|01:00:00\n9|00:00:00|00:00:00"
    );
    // JSON columns sent as strings (older taps dumped json/jsonb) are stored as the JSON they
    // hold, as the old target's COPY stored them: `"[]"` is an empty array, not a string.
    assert_eq!(
        query(
            cluster,
            &format!("SELECT cid, jsonb_typeof(cjson::jsonb), cjson, jsonb_typeof(cjsonb) FROM {SCHEMA}.logical1_edgydata WHERE cid IN (14, 15) ORDER BY cid")
        ),
        "14|array|[]|array\n15|object|{}|object"
    );
    for table in ["logical1_table1", "logical1_table2", "logical2_table1"] {
        assert_eq!(
            metadata_columns(cluster, table),
            "_sdc_batched_at,_sdc_deleted_at,_sdc_extracted_at",
            "{table}"
        );
    }
}

/// The `lsn` of every LOG_BASED stream in a STATE value, in stream order.
fn lsns(state: &Value) -> Vec<(String, u64)> {
    let mut found: Vec<(String, u64)> = state["bookmarks"]
        .as_object()
        .map(|bookmarks| {
            bookmarks
                .iter()
                .filter_map(|(stream, bookmark)| {
                    Some((stream.clone(), bookmark.get("lsn")?.as_u64()?))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

fn all_at(lsn: u64) -> Vec<(String, u64)> {
    [
        "logical1-logical1_edgydata",
        "logical1-logical1_table1",
        "logical1-logical1_table2",
        "logical2-logical2_table1",
    ]
    .iter()
    .map(|stream| ((*stream).to_owned(), lsn))
    .collect()
}

#[test]
fn invalid_json() {
    let cluster = PgCluster::start_default();
    let output = run_target(&cluster, json!({}), &fixture("invalid-json.json"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("line 3"), "names the line:\n{stderr}");
    // The STATE of line 1 precedes every record, so it is echoed; nothing after the bad line.
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "{\"currently_syncing\": \"tap_mysql_test-test_table_one\"}\n"
    );
}

#[test]
fn message_order() {
    let cluster = PgCluster::start_default();
    let output = run_target(&cluster, json!({}), &fixture("invalid-message-order.json"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("line 3") && stderr.contains("before its SCHEMA"),
        "{stderr}"
    );
}

#[test]
fn loading_tables() {
    let cluster = PgCluster::start_default();
    let (_, stderr) = load(&cluster, json!({}), "messages-with-multiple-streams.json");
    assert!(
        !stderr.contains("left unchanged"),
        "records with values are loaded, not left with a warning:\n{stderr}"
    );
    assert_multiple_streams(&cluster, false, false);
}

#[test]
fn loading_tables_with_metadata_columns() {
    let cluster = PgCluster::start_default();
    load(
        &cluster,
        json!({"add_metadata_columns": true}),
        "messages-with-multiple-streams.json",
    );
    assert_multiple_streams(&cluster, true, false);
    // Without hard_delete a delete keeps its row and records when it happened.
    assert_eq!(
        query(&cluster, &format!("SELECT c_pk, _sdc_deleted_at FROM {SCHEMA}.test_table_two WHERE _sdc_deleted_at IS NOT NULL")),
        "1|2019-02-12 01:10:10+00"
    );
}

#[test]
fn loading_tables_with_defined_parallelism() {
    let cluster = PgCluster::start_default();
    load(
        &cluster,
        json!({"parallelism": 1}),
        "messages-with-multiple-streams.json",
    );
    assert_multiple_streams(&cluster, false, false);
}

#[test]
fn loading_tables_with_hard_delete() {
    let cluster = PgCluster::start_default();
    load(
        &cluster,
        json!({"hard_delete": true}),
        "messages-with-multiple-streams.json",
    );
    assert_multiple_streams(&cluster, true, true);
}

#[test]
fn loading_with_multiple_schema() {
    let cluster = PgCluster::start_default();
    load(&cluster, json!({}), "messages-with-multiple-streams.json");
    assert_multiple_streams(&cluster, false, false);
}

/// What `assert_binary_data_is_in_postgres` checked upstream, for a table loaded with
/// `hard_delete` from tap-mysql output whose `_sdc_deleted_at` is `…+00:00+00:00`.
fn assert_binary_data(cluster: &PgCluster, table: &str) {
    assert_eq!(
        query(
            cluster,
            &format!("SELECT new, data, created_at FROM {SCHEMA}.{table} ORDER BY new")
        ),
        "706b32|6461746132|2019-12-17 16:02:55+00\n706b34|6461746134|2019-12-17 16:32:22+00"
    );
    assert_eq!(
        metadata_columns(cluster, table.trim_matches('"')),
        "_sdc_batched_at,_sdc_deleted_at,_sdc_extracted_at"
    );
}

#[test]
fn loading_table_with_reserved_word_as_name_and_hard_delete() {
    let cluster = PgCluster::start_default();
    let (_, stderr) = load(
        &cluster,
        json!({"hard_delete": true}),
        "messages-with-reserved-name-as-table-name.json",
    );
    assert_binary_data(&cluster, "\"order\"");
    // The value is not a timestamp: the column pgferry made becomes text, and says so.
    assert_eq!(
        cluster.psql(&format!(
            "SELECT data_type FROM information_schema.columns WHERE table_schema = '{SCHEMA}' AND table_name = 'order' AND column_name = '_sdc_deleted_at'"
        )),
        "text"
    );
    assert!(stderr.contains("is now text"), "{stderr}");
}

#[test]
fn loading_table_with_space() {
    let cluster = PgCluster::start_default();
    load(
        &cluster,
        json!({"hard_delete": true}),
        "messages-with-space-in-table-name.json",
    );
    assert_binary_data(&cluster, "\"table with space and uppercase\"");
}

#[test]
fn loading_unicode_characters() {
    let cluster = PgCluster::start_default();
    load(&cluster, json!({}), "messages-with-unicode-characters.json");
    assert_eq!(
        query(
            &cluster,
            &format!(
                "SELECT c_pk, c_int, c_varchar FROM {SCHEMA}.test_table_unicode ORDER BY c_pk"
            )
        ),
        [
            // The file writes έ and ό as U+1F73 and U+1F79 (with oxia): kept byte for byte.
            "1|1|Hello world, Καλημ\u{1f73}ρα κ\u{1f79}σμε, コンニチハ",
            "2|2|Chinese: 和毛泽东 <<重上井冈山>>. 严永欣, 一九八八年.",
            "3|3|Russian: Зарегистрируйтесь сейчас на Десятую Международную Конференцию по",
            "4|4|Thai: แผ่นดินฮั่นเสื่อมโทรมแสนสังเวช",
            "5|5|Arabic: لقد لعبت أنت وأصدقاؤك لمدة وحصلتم علي من إجمالي النقاط",
            "6|6|Special Characters: [\",'!@£$%^&*()]",
        ]
        .join("\n")
    );
}

#[test]
fn loading_long_text() {
    let cluster = PgCluster::start_default();
    load(&cluster, json!({}), "messages-with-long-texts.json");
    let short = query(
        &cluster,
        &format!("SELECT c_pk, c_int, c_varchar FROM {SCHEMA}.test_table_long_texts WHERE c_pk <= 3 ORDER BY c_pk"),
    );
    let rows: Vec<&str> = short.lines().collect();
    assert_eq!(rows.len(), 3, "{short}");
    assert_eq!(
        rows[0],
        "1|1|Up to 128 characters: Lorem ipsum dolor sit amet, consectetuer adipiscing elit."
    );
    assert!(
        rows[1].starts_with("2|2|Up to 256 characters: Lorem ipsum")
            && rows[1].ends_with("ultricies.")
    );
    assert!(
        rows[2].starts_with("3|3|Up to 1024 characters: Lorem ipsum")
            && rows[2].ends_with("sed ipsum.")
    );
    assert_eq!(
        query(
            &cluster,
            &format!("SELECT c_pk, c_int, length(c_varchar) FROM {SCHEMA}.test_table_long_texts WHERE c_pk > 3 ORDER BY c_pk")
        ),
        "4|4|4017\n5|5|32003"
    );
}

#[test]
fn non_db_friendly_columns() {
    let cluster = PgCluster::start_default();
    load(
        &cluster,
        json!({}),
        "messages-with-non-db-friendly-columns.json",
    );
    assert_eq!(
        query(
            &cluster,
            &format!("SELECT c_pk, camelcasecolumn, \"minus-column\" FROM {SCHEMA}.test_table_non_db_friendly_columns ORDER BY c_pk")
        ),
        (1..=5)
            .map(|n| format!("{n}|Dummy row {n}|Dummy row {n}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn nested_schema_unflattening() {
    let cluster = PgCluster::start_default();
    load(&cluster, json!({}), "messages-with-nested-schema.json");
    assert_eq!(
        query(
            &cluster,
            &format!("SELECT c_pk, c_array, c_object, c_object_with_props, c_nested_object FROM {SCHEMA}.test_table_nested_schema")
        ),
        "1|[1, 2, 3]|{\"key_1\": \"value_1\"}|{\"key_1\": \"value_1\"}|{\"nested_prop_1\": \"nested_value_1\", \"nested_prop_2\": \"nested_value_2\", \"nested_prop_3\": {\"multi_nested_prop_1\": \"multi_value_1\", \"multi_nested_prop_2\": \"multi_value_2\"}}"
    );
}

#[test]
fn nested_schema_flattening() {
    let cluster = PgCluster::start_default();
    load(
        &cluster,
        json!({"data_flattening_max_level": 10}),
        "messages-with-nested-schema.json",
    );
    // Difference (README): `c_object` has no `properties` to flatten into; the old target
    // wrote NULL there (the value was lost), pgferry keeps it as jsonb.
    assert_eq!(
        query(
            &cluster,
            &format!(
                "SELECT c_pk, c_array, c_object, c_object_with_props__key_1, c_nested_object__nested_prop_1, \
                 c_nested_object__nested_prop_2, c_nested_object__nested_prop_3__multi_nested_prop_1, \
                 c_nested_object__nested_prop_3__multi_nested_prop_2 FROM {SCHEMA}.test_table_nested_schema"
            )
        ),
        "1|[1, 2, 3]|{\"key_1\": \"value_1\"}|value_1|nested_value_1|nested_value_2|multi_value_1|multi_value_2"
    );
    assert_eq!(
        cluster.psql(&format!(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = '{SCHEMA}' AND table_name = 'test_table_nested_schema'"
        )),
        "8",
        "no other column"
    );
}

#[test]
fn column_name_change() {
    let cluster = PgCluster::start_default();
    load(&cluster, json!({}), "messages-with-multiple-streams.json");
    load(
        &cluster,
        json!({}),
        "messages-with-multiple-streams-modified-column.json",
    );
    assert_eq!(
        query(
            &cluster,
            &format!("SELECT c_pk, c_int, c_varchar FROM {SCHEMA}.test_table_one")
        ),
        "1|1|1"
    );
    // Difference (README): columns keep the SCHEMA's order, so the versioned column is found
    // by its name `c_date_<YYYYMMDD_HHMM>`, not (as upstream) at ordinal position 1.
    let versioned = cluster.psql(&format!(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = '{SCHEMA}' \
         AND table_name = 'test_table_two' AND column_name ~ '^c_date_[0-9]{{8}}_[0-9]{{4}}$'"
    ));
    assert!(
        !versioned.is_empty() && !versioned.contains('\n'),
        "{versioned:?}"
    );
    assert_eq!(
        query(
            &cluster,
            &format!("SELECT {versioned}, c_int, c_pk, c_varchar, c_date FROM {SCHEMA}.test_table_two ORDER BY c_pk")
        ),
        "2019-02-01 15:12:45+00|1|1|1|\n2019-02-10 02:00:00+00|2|2|2|2019-02-12 02:00:00\n|3|3|2|2019-02-15 02:00:00"
    );
    assert_eq!(
        query(
            &cluster,
            &format!("SELECT c_int, c_pk, c_time, c_varchar, c_time_renamed FROM {SCHEMA}.test_table_three ORDER BY c_pk")
        ),
        "1|1|04:00:00|1|\n2|2|07:15:00|2|\n3|3|23:00:03|3|08:15:00\n4|4||4|23:00:03"
    );
}

#[test]
fn schema_mapping() {
    let cluster = PgCluster::start_default();
    load(
        &cluster,
        json!({
            "hard_delete": true,
            "default_target_schema": null,
            "schema_mapping": {"tap_mysql_test": {
                "target_schema": SCHEMA,
                "indices": {"test_table_one": ["c_varchar"], "test_table_two": ["c_varchar", "c_int"]}
            }}
        }),
        "messages-with-multiple-streams.json",
    );
    assert_multiple_streams(&cluster, true, true);
    assert_eq!(
        cluster.psql(&format!(
            "SELECT tablename || ' ' || indexdef FROM pg_indexes WHERE schemaname = '{SCHEMA}' AND indexname LIKE 'i\\_%' ORDER BY indexname"
        )),
        format!(
            "test_table_one CREATE INDEX i_test_table_one_c_varchar ON {SCHEMA}.test_table_one USING btree (c_varchar)\n\
             test_table_two CREATE INDEX i_test_table_two_c_int ON {SCHEMA}.test_table_two USING btree (c_int)\n\
             test_table_two CREATE INDEX i_test_table_two_c_varchar ON {SCHEMA}.test_table_two USING btree (c_varchar)"
        )
    );
}

#[test]
fn grant_privileges() {
    let cluster = PgCluster::start_default();
    cluster.psql(
        "CREATE USER user_1; CREATE USER user_2; CREATE GROUP group_1 WITH USER user_1, user_2; \
         CREATE GROUP group_2 WITH USER user_2",
    );
    let file = "messages-with-multiple-streams.json";
    let can_read = |role: &str| {
        cluster.psql(&format!(
            "SELECT has_schema_privilege('{role}', '{SCHEMA}', 'USAGE') AND has_table_privilege('{role}', '{SCHEMA}.test_table_four', 'SELECT')"
        ))
    };
    let drop = || cluster.psql(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"));
    // A string: one grantee. The plural key is the one the old code read.
    load(
        &cluster,
        json!({"default_target_schema_select_permissions": "group_1"}),
        file,
    );
    assert_eq!(
        (can_read("group_1"), can_read("group_2")),
        ("t".into(), "f".into())
    );
    assert_eq!(can_read("user_1"), "t", "members of the group read");
    drop();
    // A list: every grantee; the singular key (the fork's README) does the same.
    load(
        &cluster,
        json!({"default_target_schema_select_permissions": ["group_1", "group_2"]}),
        file,
    );
    assert_eq!(
        (can_read("group_1"), can_read("group_2")),
        ("t".into(), "t".into())
    );
    drop();
    load(
        &cluster,
        json!({"default_target_schema_select_permission": "group_2"}),
        file,
    );
    assert_eq!(
        (can_read("group_1"), can_read("group_2")),
        ("f".into(), "t".into())
    );
    drop();
    // An object is accepted and ignored, as the old target ignored it.
    let (_, stderr) = load(
        &cluster,
        json!({"default_target_schema_select_permissions": {"users": ["user_1", "user_2"], "groups": ["group_1", "group_2"]}}),
        file,
    );
    assert!(stderr.contains("ignored"), "{stderr}");
    assert_eq!(
        (can_read("group_1"), can_read("group_2")),
        ("f".into(), "f".into())
    );
    drop();
    // A role that does not exist is an error, and nothing is created.
    for grantees in [
        json!("group_not_exists_1"),
        json!(["group_not_exists_1", "group_not_exists_2"]),
    ] {
        let output = run_target(
            &cluster,
            json!({"default_target_schema_select_permissions": grantees}),
            &fixture(file),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("default_target_schema_select_permissions: role \"group_not_exists_1\" does not exist")
                && stderr.contains("HINT: create the role"),
            "{stderr}"
        );
        assert_eq!(
            cluster.psql(&format!(
                "SELECT count(*) FROM pg_namespace WHERE nspname = '{SCHEMA}'"
            )),
            "0"
        );
        drop();
    }
    // schema_mapping's own grantees replace the default ones for its schema.
    load(
        &cluster,
        json!({"default_target_schema": null, "default_target_schema_select_permissions": "group_1",
               "schema_mapping": {"tap_mysql_test": {"target_schema": SCHEMA, "target_schema_select_permissions": ["group_2"]}}}),
        file,
    );
    assert_eq!(
        (can_read("group_1"), can_read("group_2")),
        ("f".into(), "t".into())
    );
}

#[test]
fn logical_streams_from_pg_with_hard_delete_and_default_batch_size_should_pass() {
    let cluster = PgCluster::start_default();
    load(
        &cluster,
        json!({"hard_delete": true}),
        "messages-pg-logical-streams.json",
    );
    assert_logical_streams(&cluster);
}

#[test]
fn logical_streams_from_pg_with_hard_delete_and_batch_size_of_5_should_pass() {
    let cluster = PgCluster::start_default();
    load(
        &cluster,
        json!({"hard_delete": true, "batch_size_rows": 5}),
        "messages-pg-logical-streams.json",
    );
    assert_logical_streams(&cluster);
}

#[test]
fn logical_streams_from_pg_with_hard_delete_and_batch_size_of_5_and_no_records_should_pass() {
    let cluster = PgCluster::start_default();
    load(
        &cluster,
        json!({"hard_delete": true, "batch_size_rows": 5}),
        "messages-pg-logical-streams-no-records.json",
    );
    for table in [
        "logical1_table1",
        "logical1_table2",
        "logical2_table1",
        "logical1_edgydata",
    ] {
        assert_eq!(
            cluster.psql(&format!("SELECT count(*) FROM {SCHEMA}.{table}")),
            "0",
            "{table} exists and is empty"
        );
    }
}

#[test]
fn flush_streams_with_no_intermediate_flushes() {
    let cluster = PgCluster::start_default();
    let (states, _) = load(
        &cluster,
        json!({"hard_delete": true, "batch_size_rows": 1000}),
        "messages-pg-logical-streams.json",
    );
    // Upstream: one STATE, the last one. pgferry writes a STATE as soon as the rows before it
    // are committed, so the STATEs before the first record are echoed at once (README: STATE).
    let last = states.last().expect("a STATE");
    assert_eq!(lsns(last), all_at(108_240_872));
    assert_eq!(
        last["bookmarks"]["public-city"]["replication_key_value"],
        4079
    );
    assert!(
        states[..states.len() - 1]
            .iter()
            .all(|state| lsns(state).iter().all(|(_, lsn)| *lsn <= 108_196_176)),
        "no STATE before the end covers a record: {states:#?}"
    );
    assert_logical_streams(&cluster);
}

#[test]
fn flush_streams_with_intermediate_flushes() {
    let cluster = PgCluster::start_default();
    let (states, _) = load(
        &cluster,
        json!({"hard_delete": true, "batch_size_rows": 10}),
        "messages-pg-logical-streams.json",
    );
    assert_state_sequence(&states);
    assert_logical_streams(&cluster);
}

#[test]
fn flush_streams_with_intermediate_flushes_on_all_streams() {
    let cluster = PgCluster::start_default();
    let (states, _) = load(
        &cluster,
        json!({"hard_delete": true, "batch_size_rows": 10, "flush_all_streams": true}),
        "messages-pg-logical-streams.json",
    );
    assert_state_sequence(&states);
    // Every load covers every stream, so each STATE of the tap whose records a load committed
    // is written: seven, where the old target wrote six of its own.
    let written: Vec<u64> = states
        .iter()
        .map(|state| lsns(state).iter().map(|(_, lsn)| *lsn).max().unwrap_or(0))
        .collect();
    assert_eq!(
        written,
        [
            108_197_216,
            108_201_336,
            108_237_600,
            108_238_768,
            108_239_176,
            108_239_896,
            108_240_872
        ]
    );
    assert!(states.iter().all(|state| {
        let positions = lsns(state);
        positions.iter().all(|(_, lsn)| *lsn == positions[0].1)
    }));
    assert_logical_streams(&cluster);
}

/// Difference (README: STATE): the old target composed a STATE per flushed stream (its
/// bookmark moved, the others kept), six of them; pgferry echoes the tap's own STATE values,
/// each once every record before it is committed, so bookmarks never run ahead of the rows,
/// and positions only grow.
fn assert_state_sequence(states: &[Value]) {
    assert!(
        states.len() >= 2,
        "intermediate STATEs are written: {states:#?}"
    );
    let last = states.last().expect("a STATE");
    assert_eq!(lsns(last), all_at(108_240_872));
    let mut previous = 0;
    for state in states {
        let highest = lsns(state).iter().map(|(_, lsn)| *lsn).max().unwrap_or(0);
        assert!(highest >= previous, "positions only grow: {states:#?}");
        previous = highest;
    }
    let input: Vec<Value> = fixture("messages-pg-logical-streams.json")
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| message["type"] == "STATE")
        .map(|message| message["value"].clone())
        .collect();
    assert!(
        states.iter().all(|state| input.contains(state)),
        "every STATE written is one the tap sent"
    );
}

#[test]
fn record_validation() {
    let cluster = PgCluster::start_default();
    let input = fixture("messages-with-invalid-records.json");
    // With validate_records the bad key fails validation; without it, it fails before
    // loading (upstream: at load time, by PostgreSQL). Either way the run stops on line 4.
    for validate in [true, false] {
        let output = run_target(&cluster, json!({"validate_records": validate}), &input);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("line 4") && stderr.contains("c_pk"),
            "{stderr}"
        );
        // Only the STATE of line 1, before any record, is echoed.
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "{\"currently_syncing\": \"tap_mysql_test-test_table_invalid_record\"}\n"
        );
    }
    let rows = cluster.try_psql(&format!(
        "SELECT count(*) FROM {SCHEMA}.test_table_invalid_record"
    ));
    assert!(
        matches!(rows.as_deref(), Ok("0") | Err(_)),
        "nothing of the batch loaded: {rows:?}"
    );
}

#[test]
fn loading_tables_with_custom_temp_dir() {
    let cluster = PgCluster::start_default();
    load(
        &cluster,
        json!({"temp_dir": "~/.pipelinewise/tmp"}),
        "messages-with-multiple-streams.json",
    );
    assert_multiple_streams(&cluster, false, false);
}
