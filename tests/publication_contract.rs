//! The publications' definition is the contract of a LOG_BASED run through pgoutput, for the
//! copy as for the stream (as PostgreSQL's own initial table sync reads it):
//! - a row filter (`FOR TABLE t WHERE (id % 2 = 0)`, PostgreSQL 15+): after the copy the
//!   collection holds exactly the matching rows; after inserts, updates, deletes and UPDATEs
//!   that move a row out of the filter (sent as DELETE) and into it (sent as INSERT), it still
//!   equals `SELECT … WHERE id % 2 = 0`; the same into PostgreSQL, with a column list too;
//! - a column list (`FOR TABLE t (id, a)`, 15+): documents carry only `id` and `a`, after the
//!   copy and after updates; a list without the key column, deletes published, is refused at
//!   start with the statement that adds it, before any slot exists;
//! - several publications (`"p1,p2"` and `["p1", "p2"]`), p1 insert-only for table `a`, p2
//!   for `b`: each publishes what it says, no publication named `p1,p2` appears; a missing
//!   `p3` in a list is an error naming it, nothing created; `pgferry check` prints both and
//!   what each filters;
//! - wal2json (PostgreSQL 15 here) ignores publications: every row is copied and streamed, and
//!   `check` warns that the publication is not read.
//!
//! PostgreSQL 15 (the default cluster) runs every scenario; 16, 17 and 18 too; 14, which has no
//! row filters or column lists, runs the several-publications scenario.

mod gdnlite_support;
mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use gdnlite_support::{all_documents, Http, Server, KEY};
use serde_json::{json, Value};
use support::{run_to_completion, PgCluster};

/// A server of one major and a directory for pipelines; each scenario gets its own gdnlite.
struct Env {
    major: u32,
    cluster: PgCluster,
    runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

impl Env {
    /// `None`: the default cluster (Debian's 15).
    fn start(major: Option<u32>) -> Env {
        let cluster = match major {
            Some(major) => PgCluster::builder().major(major).start(),
            None => PgCluster::start_default(),
        };
        let version: u32 = cluster
            .psql("SHOW server_version_num")
            .parse()
            .expect("server_version_num");
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        Env {
            major: version / 10_000,
            cluster,
            runtime,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// A gdnlite of its own, and the destination section that writes into it.
    fn gdn(&self) -> (Server, Value) {
        let server = self.runtime.block_on(Server::start());
        let destination = json!({"gdn_url": server.url(), "api_key": KEY, "batch_size_rows": 500});
        (server, destination)
    }

    /// A fresh database for one scenario.
    fn database<'a>(&self, name: &'a str) -> &'a str {
        self.cluster.psql(&format!("CREATE DATABASE {name}"));
        self.cluster.psql_in(name, "SELECT 1");
        name
    }

    fn psql(&self, database: &str, sql: &str) -> String {
        self.cluster.psql_in(database, sql)
    }

    /// The destination section for `target`, a database of the same cluster.
    fn pg_destination(&self, target: &str) -> Value {
        json!({
            "type": "postgres", "host": "127.0.0.1", "port": self.cluster.port(),
            "user": "postgres", "dbname": target, "sslmode": "disable"
        })
    }

    /// A LOG_BASED pipeline from `database` (schema `public`, no `plugin` key) into
    /// `destination`.
    fn pipeline(&self, database: &str, publication: Value, destination: Value) -> PathBuf {
        let dir = self.dir.path().join(database);
        std::fs::create_dir_all(&dir).expect("pipeline dir");
        let config = json!({
            "source": {
                "host": "127.0.0.1", "port": self.cluster.port(), "user": "postgres",
                "password": "trust", "dbname": database, "sslmode": "disable",
                "replication_method": "LOG_BASED", "filter_schemas": "public",
                "publication": publication
            },
            "destination": destination,
            "parallelism": 2,
            "state_file": dir.join("state.json")
        });
        let path = dir.join("pipeline.json");
        std::fs::write(&path, config.to_string()).expect("write pipeline");
        path
    }

    /// Every document of `collection` in `server` by `_key`, without `_key`, `_id`, `_rev`.
    fn documents(&self, server: &Server, collection: &str) -> BTreeMap<String, Value> {
        let http = self.runtime.block_on(async { Http::h1(&server.url()) });
        self.runtime
            .block_on(all_documents(&http, collection, true))
            .into_iter()
            .map(|(key, mut document)| {
                document.as_object_mut().expect("object").remove("_key");
                (key, document)
            })
            .collect()
    }

    /// The rows `select` gives (`id` and a JSON object per row), by `id`.
    fn rows(&self, database: &str, select: &str) -> BTreeMap<String, Value> {
        let text = self.psql(
            database,
            &format!("SELECT coalesce(jsonb_object_agg(id::text, row), '{{}}') FROM ({select}) AS s (id, row)"),
        );
        serde_json::from_str::<BTreeMap<String, Value>>(&text).expect("rows as JSON")
    }

    fn slots(&self, database: &str) -> String {
        self.psql(
            database,
            &format!("SELECT count(*) FROM pg_replication_slots WHERE database = '{database}'"),
        )
    }
}

fn pgferry(args: &[&str], config: &PathBuf) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .expect("run pgferry")
}

fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A row filter: the copy holds the matching rows, the stream keeps them, rows moving out of
/// the filter leave and rows moving in arrive.
fn row_filter_holds_for_the_copy_and_the_stream(env: &Env) {
    let db = env.database("rowfilter");
    env.psql(
        db,
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 20) g;
         CREATE PUBLICATION evens FOR TABLE t WHERE (id % 2 = 0);",
    );
    let (server, gdn) = env.gdn();
    let config = env.pipeline(db, json!("evens"), gdn);
    let check = pgferry(&["check"], &config);
    assert!(
        text(&check).contains("\"public\".\"t\" (\"evens\"): rows WHERE ((id % 2) = 0)"),
        "PostgreSQL {}: check prints the row filter:\n{}",
        env.major,
        text(&check)
    );
    run_to_completion(&config);
    let expected = "SELECT id, jsonb_build_object('id', id, 'v', v) FROM t WHERE id % 2 = 0";
    let copied = env.documents(&server, "t");
    let evens: Vec<String> = (1..=10).map(|n| (n * 2).to_string()).collect();
    let mut keys: Vec<String> = copied.keys().cloned().collect();
    keys.sort_by_key(|key| key.parse::<u32>().unwrap_or(0));
    assert_eq!(
        keys, evens,
        "PostgreSQL {}: the copy holds exactly the even rows",
        env.major
    );
    assert_eq!(copied, env.rows(db, expected), "PostgreSQL {}", env.major);
    env.psql(
        db,
        "INSERT INTO t VALUES (21, 'odd'), (22, 'even');
         UPDATE t SET v = 'changed' WHERE id IN (4, 5);
         UPDATE t SET id = 107 WHERE id = 6;
         UPDATE t SET id = 110 WHERE id = 9;
         DELETE FROM t WHERE id IN (8, 11);",
    );
    run_to_completion(&config);
    let streamed = env.documents(&server, "t");
    assert_eq!(
        streamed,
        env.rows(db, expected),
        "PostgreSQL {}: the collection equals SELECT … WHERE id % 2 = 0",
        env.major
    );
    assert!(!streamed.contains_key("6"), "moved out of the filter: gone");
    assert_eq!(streamed["110"]["v"], "v9", "moved into the filter: arrived");
}

/// A column list: documents carry only the listed columns, after the copy and after updates.
fn column_list_shapes_every_document(env: &Env) {
    let db = env.database("columnlist");
    env.psql(
        db,
        "CREATE TABLE t (id int PRIMARY KEY, a text, b text);
         INSERT INTO t SELECT g, 'a' || g, 'b' || g FROM generate_series(1, 10) g;
         CREATE PUBLICATION some_columns FOR TABLE t (id, a);",
    );
    let (server, gdn) = env.gdn();
    let config = env.pipeline(db, json!("some_columns"), gdn);
    run_to_completion(&config);
    let expected = "SELECT id, jsonb_build_object('id', id, 'a', a) FROM t";
    assert_eq!(
        env.documents(&server, "t"),
        env.rows(db, expected),
        "PostgreSQL {}: copied documents hold id and a only",
        env.major
    );
    env.psql(
        db,
        "UPDATE t SET b = 'b changed' WHERE id = 1;
         UPDATE t SET a = 'a changed', b = 'b too' WHERE id = 2;
         INSERT INTO t VALUES (11, 'a11', 'b11');
         DELETE FROM t WHERE id = 3;",
    );
    run_to_completion(&config);
    assert_eq!(
        env.documents(&server, "t"),
        env.rows(db, expected),
        "PostgreSQL {}: streamed documents keep the same shape",
        env.major
    );
}

/// A column list without the key, with deletes published: refused before any slot exists.
fn column_list_without_the_key_is_refused(env: &Env) {
    let db = env.database("nokey");
    env.psql(
        db,
        "CREATE TABLE t (id int PRIMARY KEY, a text);
         CREATE PUBLICATION no_key FOR TABLE t (a);",
    );
    let (_server, gdn) = env.gdn();
    let config = env.pipeline(db, json!("no_key"), gdn);
    let output = pgferry(&["run", "--once"], &config);
    let said = text(&output);
    assert!(!output.status.success(), "refused:\n{said}");
    assert!(
        said.contains("without its key column \"id\"")
            && said.contains(
                "ALTER PUBLICATION \"no_key\" ADD TABLE \"public\".\"t\" (\"id\", \"a\");"
            ),
        "PostgreSQL {}: the error names the key and the fix:\n{said}",
        env.major
    );
    assert_eq!(env.slots(db), "0", "refused before the slot is made");
    let check = pgferry(&["check"], &config);
    assert!(
        !check.status.success()
            && text(&check).contains("✗ publication: publication \"no_key\" lists columns of \"public\".\"t\" without its key column \"id\""),
        "PostgreSQL {}: check says it too:\n{}",
        env.major,
        text(&check)
    );
}

/// PostgreSQL → PostgreSQL with a row filter and a column list: the target table has the
/// listed columns and the matching rows, after the copy and after changes.
fn pg_to_pg_follows_the_contract(env: &Env) {
    let db = env.database("contract_src");
    let target = env.database("contract_dst");
    env.psql(
        db,
        "CREATE TABLE t (id int PRIMARY KEY, v text, secret text);
         INSERT INTO t SELECT g, 'v' || g, 's' || g FROM generate_series(1, 20) g;
         CREATE PUBLICATION evens FOR TABLE t (id, v) WHERE (id % 2 = 0);",
    );
    let config = env.pipeline(db, json!("evens"), env.pg_destination(target));
    let expected = "SELECT id, jsonb_build_object('id', id, 'v', v) FROM t WHERE id % 2 = 0";
    let replicated = "SELECT id, to_jsonb(t) FROM t";
    run_to_completion(&config);
    assert_eq!(
        env.rows(target, replicated),
        env.rows(db, expected),
        "PostgreSQL {}: the target after the copy",
        env.major
    );
    env.psql(
        db,
        "INSERT INTO t VALUES (21, 'odd', 'x'), (22, 'even', 'x');
         UPDATE t SET v = 'changed', secret = 'y' WHERE id IN (4, 5);
         UPDATE t SET id = 107 WHERE id = 6;
         UPDATE t SET id = 110 WHERE id = 9;
         DELETE FROM t WHERE id IN (8, 11);",
    );
    run_to_completion(&config);
    assert_eq!(
        env.rows(target, replicated),
        env.rows(db, expected),
        "PostgreSQL {}: the target after streaming",
        env.major
    );
}

/// Several publications, as a string and as a list: each publishes what it says, none is
/// created; a missing one is an error; check prints them all.
fn several_publications_are_read_together(env: &Env) {
    for (name, publication) in [
        ("several_text", json!("p1, p2")),
        ("several_list", json!(["p1", "p2"])),
    ] {
        let db = env.database(name);
        env.psql(
            db,
            "CREATE TABLE a (id int PRIMARY KEY, v text);
             CREATE TABLE b (id int PRIMARY KEY, v text);
             INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 5) g;
             INSERT INTO b SELECT g, 'b' || g FROM generate_series(1, 5) g;
             CREATE PUBLICATION p1 FOR TABLE a WITH (publish = 'insert');
             CREATE PUBLICATION p2 FOR TABLE b;",
        );
        let (server, gdn) = env.gdn();
        let config = env.pipeline(db, publication.clone(), gdn);
        let check = pgferry(&["check"], &config);
        let said = text(&check);
        assert!(check.status.success(), "PostgreSQL {}: {said}", env.major);
        assert!(
            said.contains(
                "✓ publication: publications \"p1\", \"p2\" publish every selected table"
            ) && said.contains("\"public\".\"a\" (\"p1\"): publish insert only"),
            "PostgreSQL {}: check prints both publications and what p1 leaves out:\n{said}",
            env.major
        );
        run_to_completion(&config);
        env.psql(
            db,
            "INSERT INTO a VALUES (6, 'a6'); UPDATE a SET v = 'changed' WHERE id = 1; DELETE FROM a WHERE id = 2;
             INSERT INTO b VALUES (6, 'b6'); UPDATE b SET v = 'changed' WHERE id = 1; DELETE FROM b WHERE id = 2;",
        );
        run_to_completion(&config);
        let a = env.documents(&server, "a");
        assert_eq!(
            a.len(),
            6,
            "PostgreSQL {}: p1 publishes inserts only: {a:?}",
            env.major
        );
        assert_eq!(a["1"]["v"], "a1", "the update is not published");
        assert_eq!(a["2"]["v"], "a2", "nor the delete");
        assert_eq!(a["6"]["v"], "a6", "the insert is");
        assert_eq!(
            env.documents(&server, "b"),
            env.rows(db, "SELECT id, jsonb_build_object('id', id, 'v', v) FROM b"),
            "PostgreSQL {}: p2 publishes every change of b",
            env.major
        );
        assert_eq!(
            env.psql(
                db,
                "SELECT string_agg(pubname, ' ' ORDER BY pubname) FROM pg_publication"
            ),
            "p1 p2",
            "{publication}: no publication named after the list"
        );
    }
    let db = env.database("several_missing");
    env.psql(
        db,
        "CREATE TABLE a (id int PRIMARY KEY);
         CREATE PUBLICATION p1 FOR TABLE a;",
    );
    let (_server, gdn) = env.gdn();
    let config = env.pipeline(db, json!(["p1", "p3"]), gdn);
    let output = pgferry(&["run", "--once"], &config);
    let said = text(&output);
    assert!(!output.status.success(), "{said}");
    assert!(
        said.contains("publication \"p3\" named in \"publication\"")
            && said.contains("does not exist")
            && said.contains("CREATE PUBLICATION \"p3\" FOR TABLE \"public\".\"a\""),
        "PostgreSQL {}: the error names p3 and the fix:\n{said}",
        env.major
    );
    assert_eq!(
        env.psql(db, "SELECT string_agg(pubname, ' ') FROM pg_publication"),
        "p1",
        "nothing created"
    );
    assert_eq!(env.slots(db), "0");
    let check = pgferry(&["check"], &config);
    assert!(
        !check.status.success()
            && text(&check).contains("✗")
            && text(&check).contains("publication \"p3\" named in \"publication\""),
        "{}",
        text(&check)
    );
}

/// `pgferry tap` (LOG_BASED through pgoutput) copies and streams by the same contract: the
/// even rows, the listed columns, in the RECORDs and the SCHEMA.
fn the_tap_follows_the_contract(env: &Env) {
    let db = env.database("tap_contract");
    env.psql(
        db,
        "CREATE TABLE orders (id int PRIMARY KEY, note text, secret text);
         INSERT INTO orders SELECT g, 'n' || g, 's' || g FROM generate_series(1, 6) g;
         CREATE PUBLICATION evens FOR TABLE orders (id, note) WHERE (id % 2 = 0);",
    );
    let dir = env.dir.path().join(db);
    std::fs::create_dir_all(&dir).expect("tap dir");
    let config = dir.join("tap.json");
    std::fs::write(
        &config,
        json!({"host": "127.0.0.1", "port": env.cluster.port(), "user": "postgres",
               "dbname": db, "sslmode": "disable", "filter_schemas": "public",
               "replication_method": "LOG_BASED", "publication": "evens"})
        .to_string(),
    )
    .expect("write tap config");
    let tap = |state: Option<&PathBuf>| -> Vec<Value> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pgferry"));
        command.args(["tap", "-c"]).arg(&config);
        if let Some(state) = state {
            command.arg("-s").arg(state);
        }
        let output = command.output().expect("run pgferry tap");
        assert!(
            output.status.success(),
            "pgferry tap failed:\n{}",
            text(&output)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).expect("a Singer message per line"))
            .collect()
    };
    let records = |messages: &[Value]| -> Vec<Value> {
        messages
            .iter()
            .filter(|message| message["type"] == "RECORD")
            .map(|message| {
                let mut record = message["record"].clone();
                let object = record.as_object_mut().expect("record object");
                object.retain(|name, _| !name.starts_with("_sdc"));
                record
            })
            .collect()
    };
    let first = tap(None);
    assert_eq!(
        records(&first),
        vec![
            json!({"id": 2, "note": "n2"}),
            json!({"id": 4, "note": "n4"}),
            json!({"id": 6, "note": "n6"})
        ],
        "PostgreSQL {}: the tap's copy follows the row filter and the column list",
        env.major
    );
    for schema in first.iter().filter(|message| message["type"] == "SCHEMA") {
        assert!(
            schema["schema"]["properties"].get("secret").is_none(),
            "the SCHEMA has the listed columns only: {schema}"
        );
    }
    let state = first
        .iter()
        .rev()
        .find(|message| message["type"] == "STATE")
        .expect("a STATE")["value"]
        .clone();
    let state_path = dir.join("state.json");
    std::fs::write(&state_path, state.to_string()).expect("write state");
    env.psql(
        db,
        "INSERT INTO orders VALUES (7, 'n7', 's7'), (8, 'n8', 's8');
         UPDATE orders SET note = 'two', secret = 'x' WHERE id = 2;",
    );
    assert_eq!(
        records(&tap(Some(&state_path))),
        vec![
            json!({"id": 8, "note": "n8"}),
            json!({"id": 2, "note": "two"})
        ],
        "PostgreSQL {}: the tap's stream, by the same contract",
        env.major
    );
}

/// wal2json ignores publications: the copy and the stream take every row, and `check` says the
/// publication is not read (PostgreSQL 15 only: the other majors have no wal2json here).
fn wal2json_ignores_publications(env: &Env) {
    let db = env.database("wal2json_ignores");
    env.psql(
        db,
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 6) g;
         CREATE PUBLICATION evens FOR TABLE t WHERE (id % 2 = 0);",
    );
    let (server, gdn) = env.gdn();
    let config = env.pipeline(db, json!("evens"), gdn);
    let mut pipeline: Value =
        serde_json::from_str(&std::fs::read_to_string(&config).expect("pipeline")).expect("json");
    pipeline["source"]["plugin"] = json!("wal2json");
    std::fs::write(&config, pipeline.to_string()).expect("write pipeline");
    let check = pgferry(&["check"], &config);
    assert!(
        text(&check).contains(
            "⚠ publication: \"evens\" in the config is not read: wal2json ignores publications"
        ),
        "{}",
        text(&check)
    );
    run_to_completion(&config);
    env.psql(db, "INSERT INTO t VALUES (7, 'v7');");
    run_to_completion(&config);
    assert_eq!(
        env.documents(&server, "t"),
        env.rows(db, "SELECT id, jsonb_build_object('id', id, 'v', v) FROM t"),
        "every row, copied and streamed"
    );
}

fn row_filters_and_column_lists(env: &Env) {
    row_filter_holds_for_the_copy_and_the_stream(env);
    the_tap_follows_the_contract(env);
    column_list_shapes_every_document(env);
    column_list_without_the_key_is_refused(env);
    pg_to_pg_follows_the_contract(env);
}

#[test]
fn on_postgresql_15_the_publications_are_the_contract() {
    let env = Env::start(None);
    env.cluster.require_wal2json();
    row_filters_and_column_lists(&env);
    wal2json_ignores_publications(&env);
    several_publications_are_read_together(&env);
}

#[test]
fn on_postgresql_14_several_publications_are_read_together() {
    let env = Env::start(Some(14));
    several_publications_are_read_together(&env);
}

#[test]
fn on_postgresql_16_the_publications_are_the_contract() {
    let env = Env::start(Some(16));
    row_filters_and_column_lists(&env);
    several_publications_are_read_together(&env);
}

#[test]
fn on_postgresql_17_the_publications_are_the_contract() {
    let env = Env::start(Some(17));
    row_filters_and_column_lists(&env);
}

#[test]
fn on_postgresql_18_the_publications_are_the_contract() {
    let env = Env::start(Some(18));
    row_filters_and_column_lists(&env);
}
