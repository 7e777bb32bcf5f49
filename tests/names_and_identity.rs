//! Names, types and identities as PostgreSQL allows them, streamed through both plugins:
//! scenarios of wal2json's own regression suite (its `sql/*.sql`: quoted table names, type
//! names, renamed key columns, REPLICA IDENTITY NOTHING), with keys, a copy, the scenario's
//! changes and a second run. The oracle: every collection equals a fresh FULL_TABLE copy of its
//! table, document by document; a change that cannot be applied stops the run, naming it.

mod gdnlite_support;
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use gdnlite_support::{Server, KEY};
use serde_json::{json, Value};
use support::PgCluster;

/// One scenario's world: the cluster, a gdnlite for the pipeline and one for fresh copies.
struct World {
    cluster: PgCluster,
    runtime: tokio::runtime::Runtime,
    streamed: Server,
    copied: Server,
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let cluster = PgCluster::start_default();
        cluster.require_wal2json();
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        let streamed = runtime.block_on(Server::start());
        let copied = runtime.block_on(Server::start());
        World {
            cluster,
            runtime,
            streamed,
            copied,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// A pipeline of schema `public` into `server`, with `source` keys merged in.
    fn pipeline(&self, name: &str, server: &Server, source: Value) -> PathBuf {
        let mut config = json!({
            "source": {
                "host": "127.0.0.1", "port": self.cluster.port(), "user": "postgres",
                "dbname": "postgres", "sslmode": "disable", "filter_schemas": "public"
            },
            "destination": {"gdn_url": server.url(), "api_key": KEY, "batch_size_rows": 100},
            "state_file": self.dir.path().join(format!("{name}.state.json")).display().to_string()
        });
        support::merge_sections(&mut config, &json!({ "source": source }));
        let path = self.dir.path().join(format!("{name}.json"));
        std::fs::write(&path, config.to_string()).expect("write pipeline");
        path
    }

    /// A LOG_BASED pipeline through `plugin` into the streamed gdnlite.
    fn log_based(&self, plugin: &str) -> PathBuf {
        self.pipeline(
            "stream",
            &self.streamed,
            json!({"replication_method": "LOG_BASED", "plugin": plugin}),
        )
    }

    /// Every collection of `server` among `collections`, documents by key (without `_id`/`_rev`).
    fn documents(
        &self,
        server: &Server,
        collections: &[&str],
    ) -> BTreeMap<String, BTreeMap<String, Value>> {
        gdnlite_support::collections(&self.runtime, &server.url(), collections)
    }

    /// Streamed collections equal a fresh FULL_TABLE copy of their tables.
    fn assert_streamed_equals_a_fresh_copy(&self, collections: &[&str], what: &str) {
        let copy = self.pipeline(
            "copy",
            &self.copied,
            json!({"replication_method": "FULL_TABLE"}),
        );
        run_ok(&copy);
        let fresh = self.documents(&self.copied, collections);
        let streamed = self.documents(&self.streamed, collections);
        for collection in collections {
            assert!(
                !fresh[*collection].is_empty(),
                "{what}: the fresh copy of {collection} is empty; the scenario tests nothing"
            );
        }
        assert_eq!(
            streamed, fresh,
            "{what}: streamed collections ≠ a fresh copy"
        );
    }
}

fn run(config: &Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["run", "--once", "-c"])
        .arg(config)
        .output()
        .expect("run pgferry")
}

fn log(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn run_ok(config: &Path) -> String {
    let output = run(config);
    assert!(
        output.status.success(),
        "pgferry run failed:\n{}",
        log(&output)
    );
    log(&output)
}

/// wal2json's `sql/selecttable.sql` and `sql/filtertable.sql`: table names with characters
/// its `add-tables` parser treats specially (space, quote, comma, dot, asterisk, backslash).
fn quoted_table_names(plugin: &str) {
    let world = World::new();
    world.cluster.psql(
        r#"CREATE TABLE public."test "" with 'quotes'" (id int PRIMARY KEY, v text);
           CREATE TABLE public."a.b, c*" (id int PRIMARY KEY, v text);
           CREATE TABLE public."back\slash	tab" (id int PRIMARY KEY, v text);
           INSERT INTO public."test "" with 'quotes'" VALUES (1, 'one');
           INSERT INTO public."a.b, c*" VALUES (1, 'one');
           INSERT INTO public."back\slash	tab" VALUES (1, 'one');"#,
    );
    let names = ["test \" with 'quotes'", "a.b, c*", "back\\slash\ttab"];
    let config = world.pipeline(
        "stream",
        &world.streamed,
        json!({"replication_method": "LOG_BASED", "plugin": plugin}),
    );
    // The default names are names GDN refuses: refused before anything is created.
    let refused = run(&config);
    assert_eq!(refused.status.code(), Some(1), "{}", log(&refused));
    assert!(
        log(&refused).contains("a name GDN does not take")
            && log(&refused).contains("\"collection\": \"<name>\""),
        "{}",
        log(&refused)
    );
    assert_eq!(
        world
            .cluster
            .psql("SELECT count(*) FROM pg_replication_slots"),
        "0"
    );
    // Mapped per table, they stream.
    let mut value: Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    value["tables"] = json!([
        {"table": "public.\"test \"\" with 'quotes'\"", "collection": "quotes"},
        {"table": "public.\"a.b, c*\"", "collection": "dots"},
        {"table": "public.\"back\\slash\ttab\"", "collection": "backslash"}
    ]);
    std::fs::write(&config, value.to_string()).unwrap();
    run_ok(&config);
    world.cluster.psql(
        r#"INSERT INTO public."test "" with 'quotes'" VALUES (2, 'two');
           UPDATE public."a.b, c*" SET v = 'uno' WHERE id = 1;
           INSERT INTO public."back\slash	tab" VALUES (2, 'two');"#,
    );
    run_ok(&config);
    let streamed = world.documents(&world.streamed, &["quotes", "dots", "backslash"]);
    assert_eq!(
        streamed["quotes"].len(),
        2,
        "{plugin}: {streamed:?} ({names:?})"
    );
    assert_eq!(streamed["dots"]["1"]["v"], "uno", "{plugin}: {streamed:?}");
    assert_eq!(streamed["backslash"].len(), 2, "{plugin}: {streamed:?}");
}

#[test]
fn quoted_table_names_stream_through_wal2json() {
    quoted_table_names("wal2json");
}

#[test]
fn quoted_table_names_stream_through_pgoutput() {
    quoted_table_names("pgoutput");
}

/// wal2json's `sql/type_oid.sql` and `sql/include_domain_data_type.sql` with names as ORMs
/// make them: a mixed-case enum (and an array of it), a mixed-case domain, and `"char"`, in
/// the table and in columns added while changes wait in the slot (every row is written after
/// the columns are added, so its document has them: what an added column means for documents
/// of rows not written since is another matter).
fn mixed_case_types(plugin: &str) {
    let world = World::new();
    world.cluster.psql(
        r#"CREATE TYPE public."wal2json_Type" AS ENUM ('a', 'B c');
           CREATE DOMAIN public."Dom_Mixed" AS varchar(10) CHECK (VALUE <> 'x');
           CREATE TABLE public.typed (id int PRIMARY KEY, e public."wal2json_Type", ea public."wal2json_Type"[], d public."Dom_Mixed", qc "char");
           INSERT INTO public.typed VALUES (1, 'a', '{a,"B c"}', 'dom', 'q');"#,
    );
    let config = world.log_based(plugin);
    run_ok(&config);
    world.cluster.psql(
        r#"INSERT INTO public.typed VALUES (2, 'B c', '{"B c"}', 'two', 'é');
           ALTER TABLE public.typed ADD COLUMN e2 public."wal2json_Type", ADD COLUMN qc2 "char";
           UPDATE public.typed SET e = 'B c', qc = 'z', e2 = 'a' WHERE id = 1;
           UPDATE public.typed SET qc2 = 'ü' WHERE id = 2;
           INSERT INTO public.typed VALUES (3, 'a', NULL, NULL, 'w', 'B c', 'y');"#,
    );
    run_ok(&config);
    world.assert_streamed_equals_a_fresh_copy(&["typed"], plugin);
}

#[test]
fn mixed_case_enums_domains_and_char_stream_through_wal2json() {
    mixed_case_types("wal2json");
}

#[test]
fn mixed_case_enums_domains_and_char_stream_through_pgoutput() {
    mixed_case_types("pgoutput");
}

/// wal2json's `sql/rename_column.sql` with the key column: changes wait in the slot while the
/// key column is renamed; they are applied by the key they were made with.
fn renamed_key_column(plugin: &str) {
    let world = World::new();
    world.cluster.psql(
        "CREATE TABLE public.w2j_rename_pk (a int PRIMARY KEY, b text);
         INSERT INTO public.w2j_rename_pk VALUES (1, 'one'), (2, 'two');",
    );
    let config = world.log_based(plugin);
    run_ok(&config);
    world.cluster.psql(
        "INSERT INTO public.w2j_rename_pk VALUES (3, 'three');
         UPDATE public.w2j_rename_pk SET b = 'uno' WHERE a = 1;
         DELETE FROM public.w2j_rename_pk WHERE a = 2;
         ALTER TABLE public.w2j_rename_pk RENAME COLUMN a TO aa;
         INSERT INTO public.w2j_rename_pk VALUES (4, 'four');
         UPDATE public.w2j_rename_pk SET b = 'tres' WHERE aa = 3;",
    );
    run_ok(&config);
    let streamed = world.documents(&world.streamed, &["w2j_rename_pk"]);
    let keys: Vec<&String> = streamed["w2j_rename_pk"].keys().collect();
    assert_eq!(keys, ["1", "3", "4"], "{plugin}: {streamed:?}");
    assert_eq!(streamed["w2j_rename_pk"]["1"]["b"], "uno", "{plugin}");
    assert_eq!(streamed["w2j_rename_pk"]["3"]["b"], "tres", "{plugin}");
    assert_eq!(
        streamed["w2j_rename_pk"]["4"]["aa"], 4,
        "{plugin}: the new name from the rename on"
    );
}

#[test]
fn a_key_column_renamed_with_changes_pending_streams_through_wal2json() {
    renamed_key_column("wal2json");
}

#[test]
fn a_key_column_renamed_with_changes_pending_streams_through_pgoutput() {
    renamed_key_column("pgoutput");
}

/// wal2json's `sql/update2.sql` and `sql/delete2.sql`: under REPLICA IDENTITY NOTHING wal2json
/// skips UPDATEs and DELETEs and only warns. The run stops, naming the table, and the slot is
/// not confirmed past the skipped change, on every rerun, until the table is dealt with.
#[test]
fn wal2json_changes_without_a_replica_identity_stop_the_run_instead_of_vanishing() {
    let world = World::new();
    world.cluster.psql(
        "CREATE TABLE public.nothing (id int PRIMARY KEY, f real);
         INSERT INTO public.nothing VALUES (1, 876.5635);",
    );
    let config = world.log_based("wal2json");
    run_ok(&config);
    world.cluster.psql(
        "ALTER TABLE public.nothing REPLICA IDENTITY NOTHING;
         UPDATE public.nothing SET f = -876.5635 WHERE id = 1;",
    );
    let confirmed = || {
        world.cluster.psql(
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'macrometa_postgres'",
        )
    };
    let before = confirmed();
    for attempt in 0..2 {
        let output = run(&config);
        let text = log(&output);
        assert_eq!(output.status.code(), Some(1), "attempt {attempt}:\n{text}");
        assert!(
            text.contains("wal2json skipped a row change")
                && text.contains("no tuple identifier for UPDATE in table \"public\".\"nothing\""),
            "{text}"
        );
        assert!(text.contains("REPLICA IDENTITY DEFAULT"), "{text}");
        assert_eq!(
            confirmed(),
            before,
            "the slot stays before the skipped change"
        );
    }
}

/// Two tables of one name in two schemas: the default naming rule would put both in one
/// collection, where an UPDATE of one and a DELETE of the other hit the same document. The run
/// is refused with the fix; named by schema they stream apart; shared on purpose
/// (`target_collection`) each key carries its table.
#[test]
fn tables_of_one_name_in_two_schemas_never_share_a_collection_by_accident() {
    let world = World::new();
    world.cluster.psql(
        "CREATE SCHEMA s1;
         CREATE TABLE public.t (a int PRIMARY KEY, v text);
         CREATE TABLE s1.t (a int PRIMARY KEY, v text);
         INSERT INTO public.t VALUES (1, 'public one'), (2, 'public two');
         INSERT INTO s1.t VALUES (1, 's1 one');",
    );
    let with = |name: &str, destination: Value| {
        let config = world.pipeline(
            name,
            &world.streamed,
            json!({"replication_method": "LOG_BASED", "plugin": "pgoutput", "filter_schemas": "public,s1"}),
        );
        let mut value: Value =
            serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
        support::merge_sections(&mut value, &json!({ "destination": destination }));
        std::fs::write(&config, value.to_string()).unwrap();
        config
    };

    let accidental = run(&with("accidental", json!({})));
    let text = log(&accidental);
    assert_eq!(accidental.status.code(), Some(1), "{text}");
    assert!(
        text.contains("tables \"public\".\"t\", \"s1\".\"t\" would all write collection \"t\"")
            && text.contains("\"collection_name\": \"{schema}_{table}\""),
        "{text}"
    );
    assert_eq!(
        world
            .cluster
            .psql("SELECT count(*) FROM pg_replication_slots"),
        "0",
        "refused before anything is created"
    );

    let by_schema = with("by_schema", json!({"collection_name": "{schema}_{table}"}));
    run_ok(&by_schema);
    world
        .cluster
        .psql("UPDATE public.t SET v = 'public uno' WHERE a = 1; DELETE FROM s1.t WHERE a = 1;");
    run_ok(&by_schema);
    let apart = world.documents(&world.streamed, &["public_t", "s1_t"]);
    assert_eq!(apart["public_t"]["1"]["v"], "public uno");
    assert_eq!(apart["public_t"].len(), 2);
    assert!(apart["s1_t"].is_empty(), "{apart:?}");

    let shared = world.pipeline(
        "shared",
        &world.copied,
        json!({"replication_method": "FULL_TABLE", "filter_schemas": "public,s1"}),
    );
    let mut value: Value =
        serde_json::from_str(&std::fs::read_to_string(&shared).unwrap()).unwrap();
    support::merge_sections(
        &mut value,
        &json!({"destination": {"target_collection": "all"}}),
    );
    std::fs::write(&shared, value.to_string()).unwrap();
    world
        .cluster
        .psql("INSERT INTO s1.t VALUES (1, 's1 again')");
    run_ok(&shared);
    let all = world.documents(&world.copied, &["all"]);
    let keys: Vec<&String> = all["all"].keys().collect();
    assert_eq!(keys, ["public.t:1", "public.t:2", "s1.t:1"], "{all:?}");
    assert_eq!(all["all"]["s1.t:1"]["v"], "s1 again");
}

/// `json` holds numbers no double can (`1e400`); GDN refuses the request that carries one. The
/// run stops naming the document's `_key` and attribute, not only the table.
#[test]
fn a_json_number_beyond_a_double_is_refused_naming_its_key_and_attribute() {
    let world = World::new();
    world.cluster.psql(
        r#"CREATE TABLE public.j (id int PRIMARY KEY, doc json);
           INSERT INTO public.j VALUES (1, '{"a": 1}'), (2, '{"a": 1e400}'), (3, '[]');"#,
    );
    let config = world.pipeline(
        "copy",
        &world.copied,
        json!({"replication_method": "FULL_TABLE"}),
    );
    let output = run(&config);
    let text = log(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("with _key \"2\"") && text.contains("attribute \"doc\""),
        "{text}"
    );
}

/// `REPLICA IDENTITY USING INDEX` on a unique column while the table has another primary key:
/// PostgreSQL logs DELETEs by the index alone, so no primary key arrives. `check` fails the
/// table and `run` refuses it at start (exit 1, no slot), each with the fix; an identity index
/// that contains the primary key streams, and so does the table once the fix is applied.
#[test]
fn a_replica_identity_index_without_the_primary_key_is_refused_with_the_fix() {
    let world = World::new();
    world.cluster.psql(
        "CREATE TABLE public.by_u (id int PRIMARY KEY, u int NOT NULL, v text);
         CREATE UNIQUE INDEX by_u_u ON public.by_u (u);
         ALTER TABLE public.by_u REPLICA IDENTITY USING INDEX by_u_u;
         CREATE TABLE public.by_u_id (id int PRIMARY KEY, u int NOT NULL, v text);
         CREATE UNIQUE INDEX by_u_id_u ON public.by_u_id (u, id);
         ALTER TABLE public.by_u_id REPLICA IDENTITY USING INDEX by_u_id_u;
         INSERT INTO public.by_u SELECT g, 100 + g, 'v' FROM generate_series(1, 5) g;
         INSERT INTO public.by_u_id SELECT g, 100 + g, 'v' FROM generate_series(1, 5) g;",
    );
    let config = world.log_based("pgoutput");
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .expect("run pgferry check");
    let text = log(&check);
    assert!(!check.status.success(), "{text}");
    assert!(
        text.contains("✗ replica_identity_index: public.by_u logs UPDATEs and DELETEs by a replica identity index without its primary-key column id"),
        "{text}"
    );
    assert!(
        !text.contains("public.by_u_id logs"),
        "an index with the key is fine:\n{text}"
    );
    assert!(
        text.contains("ALTER TABLE public.by_u REPLICA IDENTITY DEFAULT;"),
        "{text}"
    );
    let refused = run(&config);
    let text = log(&refused);
    assert_eq!(refused.status.code(), Some(1), "{text}");
    assert!(
        text.contains("\"public\".\"by_u\" logs UPDATEs and DELETEs by a replica identity index without its primary-key column id")
            && text.contains("ALTER TABLE \"public\".\"by_u\" REPLICA IDENTITY DEFAULT;"),
        "{text}"
    );
    assert_eq!(
        world
            .cluster
            .psql("SELECT count(*) FROM pg_replication_slots"),
        "0",
        "refused before the slot was made"
    );
    world
        .cluster
        .psql("ALTER TABLE public.by_u REPLICA IDENTITY DEFAULT");
    run_ok(&config);
    world.cluster.psql(
        "DELETE FROM public.by_u WHERE id = 2; UPDATE public.by_u SET u = 999 WHERE id = 3;
         DELETE FROM public.by_u_id WHERE id = 2; UPDATE public.by_u_id SET id = 33 WHERE id = 3;",
    );
    run_ok(&config);
    world.assert_streamed_equals_a_fresh_copy(&["by_u", "by_u_id"], "identity indexes");
}
