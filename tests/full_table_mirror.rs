//! FULL_TABLE mirrors the table: rows deleted in PostgreSQL between two runs leave the
//! collection (or the PostgreSQL target table) at the second run's end; tables sharing a
//! collection by request keep each other's documents; a copy that fails removes nothing;
//! `"full_table_mirror": false` keeps the old append-only behaviour; `hard_delete: false`
//! marks rows instead of deleting them.

mod gdnlite_support;
mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;

use gdnlite_support::{Server, KEY};
use serde_json::{json, Value};
use support::{run_to_completion, PgCluster};

const TABLES: &str = "
    CREATE TABLE public.items (id int PRIMARY KEY, name text);
    CREATE TABLE public.pairs (a int, b text, v int, PRIMARY KEY (a, b));
    CREATE TABLE public.lines (id int PRIMARY KEY, v int);
    INSERT INTO public.items SELECT g, 'item ' || g FROM generate_series(1, 100) g;
    INSERT INTO public.pairs SELECT g % 10, 'k:' || g, g FROM generate_series(1, 50) g;
    INSERT INTO public.lines SELECT g, g FROM generate_series(1, 30) g;";

const DELETES: &str = "
    DELETE FROM public.items WHERE id % 10 = 0;
    DELETE FROM public.pairs WHERE a = 3;
    DELETE FROM public.lines WHERE id > 25;
    INSERT INTO public.items VALUES (1000, 'new');";

struct World {
    cluster: PgCluster,
    runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let cluster = PgCluster::start_default();
        cluster.psql(TABLES);
        World {
            cluster,
            runtime: tokio::runtime::Runtime::new().expect("tokio runtime"),
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn pipeline(&self, name: &str, destination: Value, extra: Value) -> PathBuf {
        let mut config = json!({
            "source": {
                "host": "127.0.0.1", "port": self.cluster.port(), "user": "postgres",
                "dbname": "postgres", "sslmode": "disable", "replication_method": "FULL_TABLE"
            },
            "destination": destination,
            // items and pairs share a collection by request; lines has its own.
            "tables": [
                {"table": "public.items", "collection": "shared"},
                {"table": "public.pairs", "collection": "shared"},
                "public.lines"
            ],
            "parallelism": 2,
            "state_file": self.dir.path().join(format!("{name}.state.json"))
        });
        support::merge_sections(&mut config, &extra);
        let path = self.dir.path().join(format!("{name}.json"));
        std::fs::write(&path, config.to_string()).expect("write pipeline");
        path
    }

    fn gdn(&self) -> Server {
        self.runtime.block_on(Server::start())
    }

    fn documents(&self, server: &Server) -> BTreeMap<String, BTreeMap<String, Value>> {
        gdnlite_support::collections(&self.runtime, &server.url(), &["shared", "lines"])
    }

    /// What a fresh copy of the tables as they are now gives.
    fn fresh_documents(&self) -> BTreeMap<String, BTreeMap<String, Value>> {
        let fresh = self.gdn();
        run_to_completion(&self.pipeline(
            "fresh",
            json!({"gdn_url": fresh.url(), "api_key": KEY}),
            json!({}),
        ));
        self.documents(&fresh)
    }
}

fn destination(server: &Server) -> Value {
    json!({"gdn_url": server.url(), "api_key": KEY, "batch_size_rows": 17})
}

#[test]
fn rows_deleted_between_runs_leave_the_collections() {
    let world = World::new();
    let server = world.gdn();
    let config = world.pipeline("mirror", destination(&server), json!({}));
    run_to_completion(&config);
    assert_eq!(world.documents(&server)["shared"].len(), 150);
    world.cluster.psql(DELETES);
    let summary = run_to_completion(&config);
    let streamed = world.documents(&server);
    assert_eq!(
        streamed,
        world.fresh_documents(),
        "the collections are the tables"
    );
    assert_eq!(streamed["shared"].len(), 100 - 10 + 1 + 50 - 5);
    assert_eq!(streamed["lines"].len(), 25);
    assert!(
        summary.contains("removed 20 documents whose rows the tables no longer have"),
        "{summary}"
    );
    // A third run over the same tables removes nothing more.
    let again = run_to_completion(&config);
    assert!(again.contains("removed 0 documents"), "{again}");
}

#[test]
fn append_only_destinations_opt_out() {
    let world = World::new();
    let server = world.gdn();
    let config = world.pipeline(
        "append",
        destination(&server),
        json!({"full_table_mirror": false}),
    );
    run_to_completion(&config);
    world.cluster.psql(DELETES);
    let summary = run_to_completion(&config);
    assert!(!summary.contains("removed"), "{summary}");
    let documents = world.documents(&server);
    assert_eq!(
        documents["shared"].len(),
        151,
        "deleted rows' documents stay"
    );
    assert_eq!(documents["lines"].len(), 30);
}

#[test]
fn a_copy_that_fails_removes_nothing() {
    let world = World::new();
    let server = world.gdn();
    let config = world.pipeline("failing", destination(&server), json!({}));
    run_to_completion(&config);
    world.cluster.psql(DELETES);
    // lines now holds a value GDN refuses (a number beyond a double inside json): its copy
    // fails, so the run fails before anything is removed anywhere.
    world.cluster.psql(
        "ALTER TABLE public.lines ADD COLUMN doc json;
         UPDATE public.lines SET doc = '{\"x\": 1e400}' WHERE id = 1;",
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["run", "--once", "-c"])
        .arg(&config)
        .output()
        .expect("run pgferry");
    assert!(!output.status.success(), "the copy must fail");
    let documents = world.documents(&server);
    assert_eq!(
        documents["shared"].len(),
        151,
        "nothing removed from shared"
    );
    assert_eq!(documents["lines"].len(), 30, "nothing removed from lines");
}

fn postgres(world: &World, hard_delete: bool) -> Value {
    world.cluster.psql("CREATE DATABASE replica");
    json!({
        "type": "postgres", "host": "127.0.0.1", "port": world.cluster.port(),
        "user": "postgres", "dbname": "replica", "sslmode": "disable",
        "hard_delete": hard_delete
    })
}

fn target_rows(world: &World, table: &str, filter: &str) -> String {
    world.cluster.psql_in(
        "replica",
        &format!("SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM (SELECT * FROM {table} {filter}) t"),
    )
}

fn source_rows(world: &World, table: &str) -> String {
    world.cluster.psql(&format!(
        "SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {table} t"
    ))
}

fn into_postgres(world: &World, hard_delete: bool) -> PathBuf {
    let config = world.pipeline(
        "pg",
        postgres(world, hard_delete),
        json!({"tables": ["public.items", "public.pairs", "public.lines"]}),
    );
    run_to_completion(&config);
    world.cluster.psql(DELETES);
    config
}

#[test]
fn postgresql_targets_lose_the_rows_the_source_lost() {
    let world = World::new();
    let config = into_postgres(&world, true);
    let summary = run_to_completion(&config);
    for table in ["public.items", "public.pairs", "public.lines"] {
        assert_eq!(
            target_rows(&world, table, ""),
            source_rows(&world, table),
            "{table}"
        );
    }
    assert!(
        summary.contains("removed 20 rows whose rows the tables no longer have"),
        "{summary}"
    );
}

#[test]
fn soft_deleting_postgresql_targets_mark_the_rows_the_source_lost() {
    let world = World::new();
    let config = into_postgres(&world, false);
    run_to_completion(&config);
    let columns = |table: &str| {
        if table == "public.items" {
            "id, name"
        } else if table == "public.pairs" {
            "a, b, v"
        } else {
            "id, v"
        }
    };
    for table in ["public.items", "public.pairs", "public.lines"] {
        let live = world.cluster.psql_in(
            "replica",
            &format!(
                "SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM (SELECT {} FROM {table} WHERE _sdc_deleted_at IS NULL) t",
                columns(table)
            ),
        );
        assert_eq!(live, source_rows(&world, table), "{table}: live rows");
    }
    let marked = world.cluster.psql_in(
        "replica",
        "SELECT count(*) FROM public.items WHERE _sdc_deleted_at IS NOT NULL",
    );
    assert_eq!(marked, "10", "deleted rows stay, marked");
}
