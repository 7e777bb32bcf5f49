//! Partitioned tables as PostgreSQL defines them, streamed into GDN (gdnlite) and into
//! PostgreSQL: a TRUNCATE of some partitions removes exactly their rows from the parent's
//! collection or table and never the others' — a list partition, a hash partition under a
//! range partition, an intermediate partition, a default partition, two tables in one
//! statement, then the parent itself — whichever publication delivers it (pgferry's own, or
//! one made by hand `FOR TABLE` the parent). A publication through the root, which PostgreSQL
//! lets send no partition's TRUNCATE, is refused at start with the fix. After every step the
//! destination equals a fresh copy of the source.

mod gdnlite_support;
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use gdnlite_support::{all_documents, Http, Server, KEY};
use serde_json::{json, Value};
use support::PgCluster;

const SOURCE: &str = "src";
const TARGET: &str = "dst";

/// A list-partitioned table with a default partition, and a range-partitioned one whose
/// 2024 partition is hash-partitioned again.
const TABLES: &str = "
    CREATE TABLE public.tab1 (a int PRIMARY KEY, b text) PARTITION BY LIST (a);
    CREATE TABLE public.tab1_1 PARTITION OF public.tab1 FOR VALUES IN (1, 2);
    CREATE TABLE public.tab1_2 PARTITION OF public.tab1 FOR VALUES IN (3, 4, 5);
    CREATE TABLE public.tab1_def PARTITION OF public.tab1 DEFAULT;
    CREATE TABLE public.metrics (id int, at date, v text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
    CREATE TABLE public.metrics_2024 PARTITION OF public.metrics
        FOR VALUES FROM ('2024-01-01') TO ('2025-01-01') PARTITION BY HASH (id);
    CREATE TABLE public.metrics_2024_h0 PARTITION OF public.metrics_2024 FOR VALUES WITH (MODULUS 2, REMAINDER 0);
    CREATE TABLE public.metrics_2024_h1 PARTITION OF public.metrics_2024 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
    CREATE TABLE public.metrics_2025 PARTITION OF public.metrics FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
    INSERT INTO public.tab1 VALUES (3, 'three'), (4, 'four'), (8, 'eight');
    INSERT INTO public.metrics SELECT g, date '2024-01-01' + g, 'v' || g FROM generate_series(1, 40) g;
    INSERT INTO public.metrics SELECT g, date '2025-01-01' + g, 'w' || g FROM generate_series(1, 20) g;";

/// The steps streamed after the copy, each followed by a run and a comparison.
const STEPS: &[&str] = &[
    // The issue's own case: rows 1 and 2 must stay.
    "INSERT INTO public.tab1 VALUES (1, 'one'), (2, 'two'), (5, 'five'); TRUNCATE public.tab1_2;",
    // A hash leaf under a range partition; rows written before it in the same transaction.
    "BEGIN; INSERT INTO public.metrics VALUES (100, '2024-06-01', 'new'), (101, '2024-06-01', 'new');
     UPDATE public.metrics SET v = 'changed' WHERE id % 3 = 0; TRUNCATE public.metrics_2024_h1; COMMIT;",
    // Two tables' partitions in one statement (one of them the default partition).
    "INSERT INTO public.tab1 VALUES (9, 'nine'); TRUNCATE public.metrics_2025, public.tab1_def;",
    // An intermediate partition (its leaves go), then rows again.
    "TRUNCATE public.metrics_2024; INSERT INTO public.metrics VALUES (7, '2024-02-02', 'back');",
    // The parent itself.
    "TRUNCATE public.tab1; INSERT INTO public.tab1 VALUES (2, 'again'), (5, 'again');",
];

/// With pgoutput and pgferry's own publication: a partition attached while streaming, written
/// to and truncated.
const ATTACHED: &str = "
    CREATE TABLE public.tab1_7 (a int NOT NULL, b text);
    ALTER TABLE public.tab1 ATTACH PARTITION public.tab1_7 FOR VALUES IN (7);
    INSERT INTO public.tab1 VALUES (7, 'seven'), (1, 'one');
    TRUNCATE public.tab1_7;";

/// Where the changes go.
#[derive(Clone, Copy, PartialEq)]
enum Into {
    Gdn,
    Postgres,
}

/// One cluster with the source database and a target database.
fn cluster() -> PgCluster {
    let cluster = PgCluster::start_default();
    cluster.require_wal2json();
    cluster.psql(&format!("CREATE DATABASE {SOURCE}"));
    cluster.psql(&format!("CREATE DATABASE {TARGET}"));
    cluster.psql_in(SOURCE, TABLES);
    cluster
}

fn write_pipeline(
    dir: &Path,
    name: &str,
    cluster: &PgCluster,
    destination: Value,
    source: Value,
) -> PathBuf {
    let mut config = json!({
        "source": {
            "host": "127.0.0.1", "port": cluster.port(), "user": "postgres",
            "dbname": SOURCE, "sslmode": "disable", "replication_method": "LOG_BASED",
            "replication_slot": format!("slot_{name}")
        },
        "destination": destination,
        "tables": ["public.tab1", "public.metrics"],
        "state_file": dir.join(format!("{name}.state.json"))
    });
    support::merge_sections(&mut config, &json!({ "source": source }));
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, config.to_string()).expect("write pipeline");
    path
}

fn postgres_destination(cluster: &PgCluster) -> Value {
    json!({
        "type": "postgres", "host": "127.0.0.1", "port": cluster.port(), "user": "postgres",
        "dbname": TARGET, "sslmode": "disable"
    })
}

/// Every document of the two collections.
fn documents(
    runtime: &tokio::runtime::Runtime,
    server: &Server,
) -> BTreeMap<String, BTreeMap<String, Value>> {
    let http = Http::h1(&server.url());
    ["tab1", "metrics"]
        .iter()
        .map(|collection| {
            (
                (*collection).to_owned(),
                runtime.block_on(all_documents(&http, collection, true)),
            )
        })
        .collect()
}

fn digest(cluster: &PgCluster, database: &str, table: &str) -> String {
    cluster.psql_in(
        database,
        &format!("SELECT count(*) || ' ' || md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t"),
    )
}

/// The destination equals the source now (a fresh FULL_TABLE copy into GDN, or the source's
/// rows for PostgreSQL).
fn assert_equal(
    cluster: &PgCluster,
    into: Into,
    runtime: &tokio::runtime::Runtime,
    server: Option<&Server>,
    dir: &Path,
    step: &str,
) {
    match into {
        Into::Postgres => {
            for table in ["public.tab1", "public.metrics"] {
                assert_eq!(
                    digest(cluster, SOURCE, table),
                    digest(cluster, TARGET, table),
                    "{table} differs after: {step}\nsource: {}\ntarget: {}",
                    cluster.psql_in(SOURCE, &format!("SELECT t::text FROM {table} t ORDER BY 1")),
                    cluster.psql_in(TARGET, &format!("SELECT t::text FROM {table} t ORDER BY 1")),
                );
            }
        }
        Into::Gdn => {
            let fresh = runtime.block_on(Server::start());
            let config = write_pipeline(
                dir,
                "fresh",
                cluster,
                json!({"gdn_url": fresh.url(), "api_key": KEY}),
                json!({"replication_method": "FULL_TABLE"}),
            );
            support::run_to_completion(&config);
            let expected = documents(runtime, &fresh);
            let streamed = documents(runtime, server.expect("a GDN destination"));
            assert_eq!(
                streamed, expected,
                "the collections differ from a fresh copy after: {step}"
            );
            let _ = std::fs::remove_file(dir.join("fresh.state.json"));
        }
    }
}

/// Copies, then streams each step and compares; `publication` names one made by hand.
fn truncates_remove_only_the_partitions_rows(plugin: &str, into: Into, publication: Option<&str>) {
    let cluster = cluster();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let server = (into == Into::Gdn).then(|| runtime.block_on(Server::start()));
    let destination = match &server {
        Some(server) => json!({"gdn_url": server.url(), "api_key": KEY, "batch_size_rows": 7}),
        None => postgres_destination(&cluster),
    };
    let mut source = json!({"plugin": plugin});
    if let Some(name) = publication {
        cluster.psql_in(
            SOURCE,
            &format!("CREATE PUBLICATION {name} FOR TABLE public.tab1, public.metrics"),
        );
        source["publication"] = json!(name);
    }
    let config = write_pipeline(dir.path(), "stream", &cluster, destination, source);
    support::run_to_completion(&config);
    assert_equal(
        &cluster,
        into,
        &runtime,
        server.as_ref(),
        dir.path(),
        "the copy",
    );
    let mut steps: Vec<&str> = STEPS.to_vec();
    if plugin == "pgoutput" {
        steps.push(ATTACHED);
    }
    for step in steps {
        cluster.psql_in(SOURCE, step);
        support::run_to_completion(&config);
        assert_equal(&cluster, into, &runtime, server.as_ref(), dir.path(), step);
    }
    let tab1 = cluster.psql_in(
        SOURCE,
        "SELECT string_agg(a::text, ',' ORDER BY a) FROM public.tab1",
    );
    let expected = if plugin == "pgoutput" { "1,2,5" } else { "2,5" };
    assert_eq!(
        tab1.trim(),
        expected,
        "the scenario ends with rows in several partitions"
    );
}

#[test]
fn pgoutput_into_gdn_with_pgferry_s_own_publication() {
    truncates_remove_only_the_partitions_rows("pgoutput", Into::Gdn, None);
}

#[test]
fn pgoutput_into_postgres_with_a_publication_made_by_hand_for_the_parent() {
    truncates_remove_only_the_partitions_rows("pgoutput", Into::Postgres, Some("pub1"));
}

#[test]
fn wal2json_into_gdn() {
    truncates_remove_only_the_partitions_rows("wal2json", Into::Gdn, None);
}

#[test]
fn wal2json_into_postgres() {
    truncates_remove_only_the_partitions_rows("wal2json", Into::Postgres, None);
}

#[test]
fn a_publication_through_the_root_is_refused_with_the_fix_that_then_works() {
    let cluster = cluster();
    cluster.psql_in(
        SOURCE,
        "CREATE PUBLICATION via_root FOR TABLE public.tab1, public.metrics WITH (publish_via_partition_root = true)",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_pipeline(
        dir.path(),
        "root",
        &cluster,
        postgres_destination(&cluster),
        json!({"plugin": "pgoutput", "publication": "via_root"}),
    );
    let check = Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .expect("run pgferry check");
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success(), "{text}");
    assert!(
        text.contains("✗ publication: publication \"via_root\" publishes the partitioned tables public.metrics, public.tab1 through its root"),
        "{text}"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["run", "--once", "-c"])
        .arg(&config)
        .output()
        .expect("run pgferry");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "refused, not retried:\n{stderr}"
    );
    assert!(
        stderr.contains(
            "publishes the partitioned tables public.metrics, public.tab1 through its root"
        ),
        "{stderr}"
    );
    let fix = "ALTER PUBLICATION \"via_root\" SET (publish_via_partition_root = false);";
    assert!(stderr.contains(fix), "{stderr}");
    let slots = cluster.psql_in(SOURCE, "SELECT count(*) FROM pg_replication_slots");
    assert_eq!(slots.trim(), "0", "nothing was created before the refusal");
    cluster.psql_in(SOURCE, fix);
    support::run_to_completion(&config);
    cluster.psql_in(SOURCE, STEPS[0]);
    support::run_to_completion(&config);
    for table in ["public.tab1", "public.metrics"] {
        assert_eq!(
            digest(&cluster, SOURCE, table),
            digest(&cluster, TARGET, table),
            "{table}"
        );
    }
}

/// Partitions attached (holding rows) or detached write no row changes: the next start sees
/// the partition set changed and copies the parent again, so its collection or target table
/// gains the attached rows and loses the detached ones; a dropped partition the same.
fn attached_and_detached_partitions_are_followed(plugin: &str, into: Into) {
    let cluster = cluster();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let server = (into == Into::Gdn).then(|| runtime.block_on(Server::start()));
    let destination = match &server {
        Some(server) => json!({"gdn_url": server.url(), "api_key": KEY}),
        None => postgres_destination(&cluster),
    };
    let config = write_pipeline(
        dir.path(),
        "stream",
        &cluster,
        destination,
        json!({"plugin": plugin}),
    );
    support::run_to_completion(&config);
    let steps = [
        // A table with rows attached: its rows become the parent's without a row change.
        "CREATE TABLE public.tab1_67 (a int NOT NULL, b text);
         INSERT INTO public.tab1_67 VALUES (6, 'six'), (7, 'seven');
         DELETE FROM public.tab1_def WHERE a IN (6, 7);
         ALTER TABLE public.tab1 ATTACH PARTITION public.tab1_67 FOR VALUES IN (6, 7);
         INSERT INTO public.tab1 VALUES (1, 'one');",
        // Detached: its rows leave the parent without a row change.
        "ALTER TABLE public.tab1 DETACH PARTITION public.tab1_2;
         UPDATE public.tab1 SET b = 'ONE' WHERE a = 1;",
        // Dropped: the same.
        "DROP TABLE public.metrics_2025;",
    ];
    for step in steps {
        cluster.psql_in(SOURCE, step);
        support::run_to_completion(&config);
        assert_equal(&cluster, into, &runtime, server.as_ref(), dir.path(), step);
    }
}

#[test]
fn attached_and_detached_partitions_into_gdn_through_pgoutput() {
    attached_and_detached_partitions_are_followed("pgoutput", Into::Gdn);
}

#[test]
fn attached_and_detached_partitions_into_postgres_through_wal2json() {
    attached_and_detached_partitions_are_followed("wal2json", Into::Postgres);
}
