//! Arrays of every element type are JSON arrays, and composite values are JSON objects keyed by
//! attribute name, on every path: the FULL_TABLE copy, then updates and new rows streamed
//! through wal2json, pgoutput in text and pgoutput in binary; into GDN each document equals
//! the JSON written out below, and into PostgreSQL the target equals the source row for row.
//! A composite type altered while changes wait is a clear error, never a misaligned object.

mod gdnlite_support;
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use gdnlite_support::{all_documents, Http, Server, KEY};
use serde_json::{json, Value};
use support::PgCluster;

/// `inner_t` had an attribute dropped: values and the catalog leave it out.
const TYPES: &str = "CREATE TYPE mood AS ENUM ('sad', 'happy');
    CREATE TYPE inner_t AS (x integer, gone text, y text);
    ALTER TYPE inner_t DROP ATTRIBUTE gone;
    CREATE TYPE outer_t AS (t text, n integer, d numeric(10,2), a integer[], i inner_t);
    CREATE DOMAIN outer_d AS outer_t;
    CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
    CREATE TYPE span_t AS (label text, r int4range);
    CREATE DOMAIN small_range AS int4range CHECK (upper(VALUE) < 100);";

/// Types without a binary decoder in pgferry (ranges, multiranges, box), alone, in arrays and
/// inside composites: the table is copied `::text` and streamed in text.
const RANGES: &str = "CREATE TABLE public.t_ranges (id integer PRIMARY KEY, r int4range[],
        z tstzrange[], m int4multirange[], e mood[], b box[], s span_t, sa span_t[],
        dr small_range[]);
    INSERT INTO public.t_ranges VALUES
    (1, '{\"[2,4)\",\"[20,31)\"}', ARRAY['[2024-01-01 00:00+00,2024-02-01 00:00+00)'::tstzrange, NULL],
        '{\"{[1,3),[5,7)}\",\"{}\"}', '{sad,happy}', '{(1,1),(0,0);(3,3),(2,2)}',
        ROW('a b', '[1,5)'), ARRAY[ROW('x', 'empty')::span_t, NULL], '{\"[1,2)\",NULL}'),
    (2, '{{\"[1,2)\",NULL},{empty,\"[5,6)\"}}', '{}', NULL, '{NULL}', NULL, ROW(NULL, NULL), '{}', '{}'),
    (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);";

/// Composites whose every attribute has a binary decoder: copied and streamed in binary form
/// (pgoutput with `binary`) when a pipeline has only such tables.
const COMPOSITES: &str = "CREATE TABLE public.t_composite (id integer PRIMARY KEY, c outer_t,
        ca outer_t[], cd outer_d, dd outer_d[], pa positive[]);
    INSERT INTO public.t_composite VALUES
    (1, ROW('x y', 7, 1.50, '{1,NULL}', ROW(2, 'q\"z')), ARRAY[ROW('a', 1, NULL, '{}', NULL)::outer_t, NULL],
        ROW('', NULL, 0, NULL, ROW(NULL, '')), ARRAY[ROW('d\\e', 2, 2.25, '{{1,2},{3,4}}', ROW(3, 'w'))::outer_d],
        '{1,2,NULL}'),
    (2, ROW(NULL, NULL, NULL, NULL, NULL), '{}', NULL, '{NULL}', '{}'),
    (3, NULL, NULL, NULL, NULL, NULL);";

/// The changes streamed: every row written again under `id + 10`, row 3 (all NULL) updated to
/// row 1's values and row 1 to row 2's, so updates carry every kind of value too.
fn changes(table: &str, columns: &[&str]) -> String {
    let names = columns.join(", ");
    let from = |source: u32| {
        columns
            .iter()
            .map(|column| format!("{column} = s.{column}"))
            .collect::<Vec<_>>()
            .join(", ")
            + &format!(" FROM public.{table} s WHERE s.id = {source}")
    };
    format!(
        "INSERT INTO public.{table} (id, {names}) SELECT id + 10, {names} FROM public.{table} ORDER BY id;
         UPDATE public.{table} t SET {} AND t.id = 3;
         UPDATE public.{table} t SET {} AND t.id = 1;",
        from(1),
        from(2)
    )
}

const RANGE_COLUMNS: &[&str] = &["r", "z", "m", "e", "b", "s", "sa", "dr"];
const COMPOSITE_COLUMNS: &[&str] = &["c", "ca", "cd", "dd", "pa"];

/// The documents of `t_ranges`' three rows, as the README's conversion rules say.
fn range_rows() -> [Value; 3] {
    [
        json!({
            "r": ["[2,4)", "[20,31)"],
            "z": ["[\"2024-01-01 00:00:00+00\",\"2024-02-01 00:00:00+00\")", null],
            "m": ["{[1,3),[5,7)}", "{}"],
            "e": ["sad", "happy"],
            "b": ["(1,1),(0,0)", "(3,3),(2,2)"],
            "s": {"label": "a b", "r": "[1,5)"},
            "sa": [{"label": "x", "r": "empty"}, null],
            "dr": ["[1,2)", null]
        }),
        json!({
            "r": [["[1,2)", null], ["empty", "[5,6)"]],
            "z": [],
            "m": null,
            "e": [null],
            "b": null,
            "s": {"label": null, "r": null},
            "sa": [],
            "dr": []
        }),
        json!({"r": null, "z": null, "m": null, "e": null, "b": null, "s": null, "sa": null, "dr": null}),
    ]
}

/// The documents of `t_composite`'s three rows.
fn composite_rows() -> [Value; 3] {
    [
        json!({
            "c": {"t": "x y", "n": 7, "d": 1.50, "a": [1, null], "i": {"x": 2, "y": "q\"z"}},
            "ca": [{"t": "a", "n": 1, "d": null, "a": [], "i": null}, null],
            "cd": {"t": "", "n": null, "d": 0.00, "a": null, "i": {"x": null, "y": ""}},
            "dd": [{"t": "d\\e", "n": 2, "d": 2.25, "a": [[1, 2], [3, 4]], "i": {"x": 3, "y": "w"}}],
            "pa": [1, 2, null]
        }),
        json!({
            "c": {"t": null, "n": null, "d": null, "a": null, "i": null},
            "ca": [],
            "cd": null,
            "dd": [null],
            "pa": []
        }),
        json!({"c": null, "ca": null, "cd": null, "dd": null, "pa": null}),
    ]
}

/// The documents a table holds: `rows[i]` under the ids given, keyed by `_key`.
fn expected(rows: &[Value; 3], ids: &[(u32, usize)]) -> BTreeMap<String, Value> {
    ids.iter()
        .map(|(id, row)| {
            let mut document = rows[*row].clone();
            let object = document.as_object_mut().expect("object");
            object.insert("_key".into(), json!(id.to_string()));
            object.insert("id".into(), json!(id));
            (id.to_string(), document)
        })
        .collect()
}

/// After the copy: rows 1, 2, 3 as inserted.
const COPIED: &[(u32, usize)] = &[(1, 0), (2, 1), (3, 2)];
/// After [`changes`]: 1 has row 2's values, 3 row 1's, 11–13 copies of the originals.
const STREAMED: &[(u32, usize)] = &[(1, 1), (2, 1), (3, 0), (11, 0), (12, 1), (13, 2)];

fn write(dir: &Path, name: &str, config: Value) -> PathBuf {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, config.to_string()).expect("write pipeline");
    path
}

fn source(cluster: &PgCluster, database: &str, extra: Value) -> Value {
    let mut source = json!({
        "host": "127.0.0.1", "port": cluster.port(), "user": "postgres", "dbname": database,
        "sslmode": "disable", "filter_schemas": "public"
    });
    support::merge_sections(&mut source, &extra);
    source
}

/// Runs `pgferry run --once`, which must fail; returns its stdout and stderr.
fn run_failing(config: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["run", "--once", "-c"])
        .arg(config)
        .output()
        .expect("run pgferry");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "the run should fail:\n{text}");
    text
}

#[test]
fn arrays_and_composites_reach_gdn_as_json_arrays_and_objects_on_every_path() {
    let cluster = PgCluster::builder()
        .setting("log_replication_commands", "on")
        .start();
    cluster.require_wal2json();
    cluster.psql(TYPES);
    cluster.psql(RANGES);
    cluster.psql(COMPOSITES);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    // (name, plugin, only table): pgoutput over both tables streams text (t_ranges has no
    // binary decoder); over t_composite alone it streams binary values.
    let runs: [(&str, &str, Option<&str>); 3] = [
        ("wal2json", "wal2json", None),
        ("pgoutput_text", "pgoutput", None),
        ("pgoutput_binary", "pgoutput", Some("t_composite")),
    ];
    let servers: Vec<Server> = runs
        .iter()
        .map(|_| runtime.block_on(Server::start()))
        .collect();
    let configs: Vec<PathBuf> = runs
        .iter()
        .zip(&servers)
        .map(|((name, plugin, table), server)| {
            let mut extra = json!({"replication_method": "LOG_BASED", "plugin": plugin,
                "replication_slot": format!("values_{name}"), "publication": format!("values_{name}")});
            if let Some(table) = table {
                extra["filter_table"] = json!(table);
            }
            write(
                dir.path(),
                name,
                json!({
                    "source": source(&cluster, "postgres", extra),
                    "destination": {"gdn_url": server.url(), "api_key": KEY},
                    "state_file": dir.path().join(format!("{name}.state")).display().to_string()
                }),
            )
        })
        .collect();
    let documents = |server: &Server, table: &str| -> BTreeMap<String, Value> {
        let http = Http::h1(&server.url());
        runtime.block_on(all_documents(&http, table, true))
    };
    let check = |server: &Server, run: &str, table: Option<&str>, ids: &[(u32, usize)]| {
        let tables: [(&str, [Value; 3]); 2] = [
            ("t_ranges", range_rows()),
            ("t_composite", composite_rows()),
        ];
        for (name, rows) in &tables {
            if table.is_some_and(|only| only != *name) {
                continue;
            }
            let found = documents(server, name);
            let wanted = expected(rows, ids);
            for (key, document) in &wanted {
                assert_eq!(
                    found.get(key),
                    Some(document),
                    "{run}: {name} document {key}"
                );
            }
            assert_eq!(found.len(), wanted.len(), "{run}: {name} documents");
        }
    };
    for config in &configs {
        support::run_to_completion(config);
    }
    for ((name, _, table), server) in runs.iter().zip(&servers) {
        check(server, &format!("{name} copy"), *table, COPIED);
    }
    cluster.psql(&format!(
        "{}\n{}",
        changes("t_ranges", RANGE_COLUMNS),
        changes("t_composite", COMPOSITE_COLUMNS)
    ));
    for config in &configs {
        support::run_to_completion(config);
    }
    for ((name, _, table), server) in runs.iter().zip(&servers) {
        check(server, &format!("{name} stream"), *table, STREAMED);
    }
    let log = cluster.server_log();
    let starts = |slot: &str| -> Vec<String> {
        log.lines()
            .filter(|line| line.contains("START_REPLICATION") && line.contains(slot))
            .map(str::to_owned)
            .collect()
    };
    let (binary, text) = (
        starts("values_pgoutput_binary"),
        starts("values_pgoutput_text"),
    );
    assert!(
        !binary.is_empty() && binary.iter().all(|line| line.contains("\"binary\" 'true'")),
        "the composite-only pipeline streams binary values: {binary:?}"
    );
    assert!(
        !text.is_empty() && text.iter().all(|line| !line.contains("binary")),
        "the pipeline with ranges streams text values: {text:?}"
    );
    let fresh = runtime.block_on(Server::start());
    support::run_to_completion(&write(
        dir.path(),
        "fresh",
        json!({"source": source(&cluster, "postgres", json!({"replication_method": "FULL_TABLE"})),
               "destination": {"gdn_url": fresh.url(), "api_key": KEY}}),
    ));
    check(&fresh, "FULL_TABLE", None, STREAMED);
}

#[test]
fn arrays_and_composites_reach_postgresql_exactly() {
    let cluster = PgCluster::start_default();
    cluster.require_wal2json();
    let dir = tempfile::tempdir().expect("temp dir");
    for plugin in ["wal2json", "pgoutput"] {
        let (source_db, target_db) = (format!("src_{plugin}"), format!("dst_{plugin}"));
        cluster.psql(&format!("CREATE DATABASE {source_db}"));
        cluster.psql(&format!("CREATE DATABASE {target_db}"));
        for database in [&source_db, &target_db] {
            cluster.psql_in(database, TYPES);
        }
        cluster.psql_in(&source_db, RANGES);
        cluster.psql_in(&source_db, COMPOSITES);
        let config = write(
            dir.path(),
            plugin,
            json!({
                "source": source(&cluster, &source_db, json!({"replication_method": "LOG_BASED", "plugin": plugin})),
                "destination": {"type": "postgres", "host": "127.0.0.1", "port": cluster.port(),
                                "user": "postgres", "dbname": target_db, "sslmode": "disable"},
                "state_file": dir.path().join(format!("{plugin}.state")).display().to_string()
            }),
        );
        let digest = |database: &str, table: &str| {
            cluster.psql_in(
                database,
                &format!("SELECT count(*) || ' ' || coalesce(string_agg(t::text, ' | ' ORDER BY id), '') FROM public.{table} t"),
            )
        };
        support::run_to_completion(&config);
        for table in ["t_ranges", "t_composite"] {
            assert_eq!(
                digest(&target_db, table),
                digest(&source_db, table),
                "{plugin}: {table} differs in the target after the copy"
            );
        }
        cluster.psql_in(
            &source_db,
            &format!(
                "{}\n{}",
                changes("t_ranges", RANGE_COLUMNS),
                changes("t_composite", COMPOSITE_COLUMNS)
            ),
        );
        support::run_to_completion(&config);
        for table in ["t_ranges", "t_composite"] {
            assert_eq!(
                digest(&target_db, table),
                digest(&source_db, table),
                "{plugin}: {table} differs in the target after streaming"
            );
        }
    }
}

#[test]
fn a_composite_altered_while_changes_wait_is_a_clear_error_not_a_misaligned_object() {
    let cluster = PgCluster::start_default();
    cluster.require_wal2json();
    cluster.psql(TYPES);
    cluster.psql(COMPOSITES);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    // wal2json streams text; pgoutput over this table alone streams binary.
    let plugins = ["wal2json", "pgoutput"];
    let servers: Vec<Server> = plugins
        .iter()
        .map(|_| runtime.block_on(Server::start()))
        .collect();
    let configs: Vec<PathBuf> = plugins
        .iter()
        .zip(&servers)
        .map(|(plugin, server)| {
            write(
                dir.path(),
                plugin,
                json!({
                    "source": source(&cluster, "postgres", json!({"replication_method": "LOG_BASED", "plugin": plugin,
                        "replication_slot": format!("altered_{plugin}"), "publication": format!("altered_{plugin}")})),
                    "destination": {"gdn_url": server.url(), "api_key": KEY},
                    "state_file": dir.path().join(format!("{plugin}.state")).display().to_string()
                }),
            )
        })
        .collect();
    for config in &configs {
        support::run_to_completion(config);
    }
    // A change made with inner_t of two attributes waits in the slots while the type gains a
    // third: the next run reads three from the catalog, the change carries two.
    cluster.psql(
        "UPDATE public.t_composite SET c = ROW('changed', 8, 1, '{}', ROW(4, 'v')) WHERE id = 1;
         ALTER TYPE inner_t ADD ATTRIBUTE z integer;",
    );
    for (plugin, config) in plugins.iter().zip(&configs) {
        let output = run_failing(config);
        assert!(
            output.contains("type inner_t: the value has 2 attributes, the catalog 3")
                && output.contains("ALTER TYPE"),
            "{plugin}: {output}"
        );
    }
    // Nothing was written from the change: the document still has the copied values.
    for (plugin, server) in plugins.iter().zip(&servers) {
        let http = Http::h1(&server.url());
        let documents = runtime.block_on(all_documents(&http, "t_composite", true));
        assert_eq!(
            documents["1"]["c"],
            composite_rows()[0]["c"],
            "{plugin}: the document kept its copied value"
        );
    }
}

/// Runs `pgferry tap` with `args` (it must succeed); returns its messages.
fn tap(args: &[&str]) -> Vec<Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .arg("tap")
        .args(args)
        .output()
        .expect("run pgferry tap");
    assert!(
        output.status.success(),
        "pgferry tap failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}")))
        .collect()
}

#[test]
fn the_tap_sends_arrays_of_ranges_and_composites_as_the_string_arrays_its_schema_says() {
    let cluster = PgCluster::start_default();
    cluster.require_wal2json();
    cluster.psql(TYPES);
    cluster.psql(
        "CREATE TABLE public.t_tap (id integer PRIMARY KEY, r int4range[], ca inner_t[],
             b box[], c inner_t);
         INSERT INTO public.t_tap VALUES (1, '{\"[2,4)\",\"[20,31)\"}',
             ARRAY[ROW(1, 'x y')::inner_t, NULL], '{(1,1),(0,0);(3,3),(2,2)}', ROW(1, 'x'));",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write(
        dir.path(),
        "tap",
        json!({"host": "127.0.0.1", "port": cluster.port(), "user": "postgres", "password": "x",
               "dbname": "postgres", "sslmode": "disable", "filter_schemas": "public",
               "replication_method": "LOG_BASED", "plugin": "wal2json"}),
    );
    let config = config.display().to_string();
    // The old tap's shapes: arrays of types it did not know are arrays of strings, composite
    // columns unsupported (left out).
    let string_array = json!({"type": ["null", "array"], "items": {"$ref": "#/definitions/sdc_recursive_string_array"}});
    let values = json!({
        "r": ["[2,4)", "[20,31)"],
        "ca": ["(1,\"x y\")", null],
        "b": ["(1,1),(0,0)", "(3,3),(2,2)"]
    });
    let records = |messages: &[Value]| -> Vec<Value> {
        messages
            .iter()
            .filter(|message| message["type"] == "RECORD")
            .map(|message| message["record"].clone())
            .collect()
    };
    let first = tap(&["-c", &config]);
    let schema = first
        .iter()
        .find(|message| message["type"] == "SCHEMA")
        .expect("a SCHEMA");
    for column in ["r", "ca", "b"] {
        assert_eq!(
            schema["schema"]["properties"][column], string_array,
            "{column}"
        );
    }
    assert!(schema["schema"]["properties"].get("c").is_none());
    let copied = records(&first);
    assert_eq!(copied.len(), 1);
    for column in ["r", "ca", "b"] {
        assert_eq!(
            copied[0][column], values[column],
            "FULL_TABLE copy: {column}"
        );
    }
    assert!(copied[0].get("c").is_none(), "{}", copied[0]);

    let state = first
        .iter()
        .rev()
        .find(|message| message["type"] == "STATE")
        .expect("a STATE")["value"]
        .clone();
    let state = write(dir.path(), "state", state).display().to_string();
    cluster.psql("INSERT INTO public.t_tap SELECT 2, r, ca, b, c FROM public.t_tap WHERE id = 1");
    let streamed = records(&tap(&["-c", &config, "-s", &state]));
    let row = streamed
        .iter()
        .find(|record| record["id"] == 2)
        .unwrap_or_else(|| panic!("no record of row 2 in {streamed:?}"));
    for column in ["r", "ca", "b"] {
        assert_eq!(row[column], values[column], "LOG_BASED stream: {column}");
    }
}

#[test]
fn composite_columns_added_while_changes_wait_stream_as_objects() {
    let cluster = PgCluster::builder()
        .setting("log_replication_commands", "on")
        .start();
    cluster.require_wal2json();
    cluster.psql(TYPES);
    cluster.psql(
        "CREATE TABLE public.t_late (id integer PRIMARY KEY, n integer);
         INSERT INTO public.t_late VALUES (1, 1);",
    );
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    // pgoutput streams binary here (every column at start has a decoder): the added composite
    // columns arrive in record_send's form; wal2json sends their text.
    let plugins = ["wal2json", "pgoutput"];
    let servers: Vec<Server> = plugins
        .iter()
        .map(|_| runtime.block_on(Server::start()))
        .collect();
    let configs: Vec<PathBuf> = plugins
        .iter()
        .zip(&servers)
        .map(|(plugin, server)| {
            write(
                dir.path(),
                plugin,
                json!({
                    "source": source(&cluster, "postgres", json!({"replication_method": "LOG_BASED", "plugin": plugin,
                        "replication_slot": format!("late_{plugin}"), "publication": format!("late_{plugin}")})),
                    "destination": {"gdn_url": server.url(), "api_key": KEY},
                    "state_file": dir.path().join(format!("{plugin}.state")).display().to_string()
                }),
            )
        })
        .collect();
    for config in &configs {
        support::run_to_completion(config);
    }
    cluster.psql(
        "ALTER TABLE public.t_late ADD COLUMN c outer_t, ADD COLUMN ca inner_t[];
         INSERT INTO public.t_late VALUES (2, 2, ROW('late', 9, 9.99, '{9}', ROW(9, 'nine')),
             ARRAY[ROW(1, 'one')::inner_t, NULL, ROW(NULL, '')::inner_t]);",
    );
    for config in &configs {
        support::run_to_completion(config);
    }
    for (plugin, server) in plugins.iter().zip(&servers) {
        let http = Http::h1(&server.url());
        let documents = runtime.block_on(all_documents(&http, "t_late", true));
        assert_eq!(
            documents.get("2"),
            Some(&json!({
                "_key": "2", "id": 2, "n": 2,
                "c": {"t": "late", "n": 9, "d": 9.99, "a": [9], "i": {"x": 9, "y": "nine"}},
                "ca": [{"x": 1, "y": "one"}, null, {"x": null, "y": ""}]
            })),
            "{plugin}"
        );
    }
    let log = cluster.server_log();
    let starts: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("START_REPLICATION") && line.contains("late_pgoutput"))
        .collect();
    assert!(
        !starts.is_empty() && starts.iter().all(|line| line.contains("\"binary\" 'true'")),
        "pgoutput streamed binary values: {starts:?}"
    );
}
