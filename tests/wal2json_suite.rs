//! wal2json's regression suite (its `sql/*.sql`), read for what each scenario exercises and
//! written again here for pgferry: tables with keys, a LOG_BASED copy through each plugin, the
//! scenario's changes, a second run, and every collection compared with a fresh FULL_TABLE copy
//! of its table, document by document. Both plugins stream the same changes from their own
//! slots, so each scenario also shows that pgoutput and wal2json give the same documents.
//! (Scenarios that need a fix of their own live in `names_and_identity.rs`.)

mod gdnlite_support;
mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;

use gdnlite_support::{all_documents, Http, Server, KEY};
use serde_json::{json, Value};
use support::PgCluster;

/// A scenario: tables and their first rows, then the changes that are streamed.
struct Scenario {
    setup: &'static str,
    changes: &'static str,
    collections: &'static [&'static str],
}

/// The wide table of wal2json's `insert1`, `update1`–`update3`, `delete1`–`delete3`, `typmod`:
/// a composite key and one column of each common type.
const WIDE: &str = "CREATE TABLE public.table_with_pk (
    a smallserial, b smallint, c int, d bigint, e numeric(5,3), f real NOT NULL,
    g double precision, h char(10), i varchar(30), j text, k bit varying(20), l timestamp,
    m date, n boolean NOT NULL, o json, p tsvector, PRIMARY KEY (b, c, d));
    INSERT INTO public.table_with_pk (b, c, d, e, f, g, h, i, j, k, l, m, n, o, p) VALUES
    (1, 2, 3, 3.54, 876.563452345, 1.23, 'teste', 'testando', 'um texto longo', B'001110010101010',
     '2013-11-02 17:30:52', '2013-02-04', true, '{ \"a\": 123 }', 'Old Old Parr'::tsvector),
    (4, 5, 6, 3.54, 876.563452345, 4.56, 'teste', 'testando', 'um texto longo', B'001110010101010',
     '2013-11-02 17:30:52', '2013-02-04', false, '{ \"a\": 123 }', 'Old Old Parr'::tsvector);";

fn run_scenario(scenario: &Scenario) {
    let cluster = PgCluster::start_default();
    cluster.require_wal2json();
    cluster.psql(scenario.setup);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let pipeline = |name: &str, server: &Server, source: Value| -> PathBuf {
        let mut config = json!({
            "source": {
                "host": "127.0.0.1", "port": cluster.port(), "user": "postgres",
                "dbname": "postgres", "sslmode": "disable", "filter_schemas": "public",
                "replication_slot": format!("suite_{name}"), "publication": format!("suite_{name}")
            },
            "destination": {"gdn_url": server.url(), "api_key": KEY, "batch_size_rows": 50},
            "state_file": dir.path().join(format!("{name}.state.json")).display().to_string()
        });
        support::merge_sections(&mut config, &json!({ "source": source }));
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, config.to_string()).expect("write pipeline");
        path
    };
    let plugins = ["wal2json", "pgoutput"];
    let servers: Vec<Server> = plugins
        .iter()
        .map(|_| runtime.block_on(Server::start()))
        .collect();
    let configs: Vec<PathBuf> = plugins
        .iter()
        .zip(&servers)
        .map(|(plugin, server)| {
            pipeline(
                plugin,
                server,
                json!({"replication_method": "LOG_BASED", "plugin": plugin}),
            )
        })
        .collect();
    for config in &configs {
        support::run_to_completion(config);
    }
    cluster.psql(scenario.changes);
    for config in &configs {
        support::run_to_completion(config);
    }
    let fresh_server = runtime.block_on(Server::start());
    support::run_to_completion(&pipeline(
        "fresh",
        &fresh_server,
        json!({"replication_method": "FULL_TABLE"}),
    ));
    let documents = |server: &Server| -> BTreeMap<String, BTreeMap<String, Value>> {
        let http = Http::h1(&server.url());
        scenario
            .collections
            .iter()
            .map(|collection| {
                (
                    (*collection).to_owned(),
                    runtime.block_on(all_documents(&http, collection, true)),
                )
            })
            .collect()
    };
    let fresh = documents(&fresh_server);
    assert!(
        fresh.values().any(|documents| !documents.is_empty()),
        "the fresh copy is empty: the scenario tests nothing"
    );
    for (plugin, server) in plugins.iter().zip(&servers) {
        assert_eq!(
            documents(server),
            fresh,
            "{plugin}: the streamed collections differ from a fresh copy"
        );
    }
}

/// `insert1` / `update1` / `delete1`: every common type under a composite key.
#[test]
fn inserts_updates_and_deletes_of_every_common_type() {
    run_scenario(&Scenario {
        setup: WIDE,
        changes: "INSERT INTO public.table_with_pk (b, c, d, e, f, g, h, i, j, k, l, m, n, o, p) VALUES
               (7, 8, 9, -1.5, 1.5e-30, -0.0, 'x', '', E'tab\\there', B'1', '0001-01-01 00:00:00', '9999-12-31', true, '[1, 2.50, \"x\"]', 'a:1 b:2'::tsvector);
             UPDATE public.table_with_pk SET f = -f, j = 'changed' WHERE b = 1;
             DELETE FROM public.table_with_pk WHERE b = 4;",
        collections: &["table_with_pk"],
    });
}

/// `update2`/`update3`, `delete2`/`delete3`: key columns themselves changed.
#[test]
fn changes_of_the_key_itself_move_the_document() {
    run_scenario(&Scenario {
        setup: WIDE,
        changes: "UPDATE public.table_with_pk SET b = 10, c = 20 WHERE b = 1;
             UPDATE public.table_with_pk SET d = -d WHERE b = 4;
             DELETE FROM public.table_with_pk WHERE b = 10;",
        collections: &["table_with_pk"],
    });
}

/// `update4` / `delete4`: REPLICA IDENTITY USING INDEX on a unique index (no primary key),
/// its columns changed and rows deleted by them.
#[test]
fn a_replica_identity_index_keys_updates_and_deletes() {
    run_scenario(&Scenario {
        setup: "CREATE TABLE public.table_with_unique (a smallserial, b smallint, c int,
                 g double precision NOT NULL, n boolean NOT NULL, o json, UNIQUE (g, n));
             ALTER TABLE public.table_with_unique REPLICA IDENTITY USING INDEX table_with_unique_g_n_key;
             INSERT INTO public.table_with_unique (b, c, g, n, o) VALUES
               (1, 2, 1.23, false, '{\"a\": 123}'), (4, 5, 4.56, true, '{\"a\": 123}'), (7, 8, 7.89, true, NULL);",
        changes: "UPDATE public.table_with_unique SET c = -c WHERE b = 1;
             UPDATE public.table_with_unique SET g = -g WHERE n = true;
             DELETE FROM public.table_with_unique WHERE b = 7;",
        collections: &["table_with_unique"],
    });
}

/// `toast`: TOASTed columns left unchanged by an update keep their values; a delete after.
#[test]
fn toasted_values_left_unchanged_by_updates_are_kept() {
    run_scenario(&Scenario {
        setup: "CREATE TABLE public.xpto (id serial PRIMARY KEY, toasted_col1 text, rand1 float8,
                 toasted_col2 text, rand2 float8);
             ALTER TABLE public.xpto ALTER COLUMN toasted_col1 SET STORAGE EXTERNAL,
                 ALTER COLUMN toasted_col2 SET STORAGE EXTERNAL;
             INSERT INTO public.xpto (toasted_col1, rand1, toasted_col2, rand2)
               SELECT string_agg(g.i::text, ''), 11, string_agg((g.i * 2)::text, ''), 12 FROM generate_series(1, 2000) g(i);",
        changes: "INSERT INTO public.xpto (toasted_col2, rand1) SELECT repeat(string_agg(to_char(g.i, 'FM0000'), ''), 50), 13 FROM generate_series(1, 500) g(i);
             UPDATE public.xpto SET rand1 = 123.456 WHERE id = 1;
             UPDATE public.xpto SET toasted_col1 = 'short now' WHERE id = 2;
             INSERT INTO public.xpto (toasted_col1, rand1) VALUES ('third', 1);
             DELETE FROM public.xpto WHERE id = 3;",
        collections: &["xpto"],
    });
}

/// `savepoint`: rows of subtransactions rolled back never arrive; released ones do.
#[test]
fn rolled_back_savepoints_leave_nothing() {
    run_scenario(&Scenario {
        setup: "CREATE TABLE public.xpto (a serial PRIMARY KEY, b text);
             INSERT INTO public.xpto (b) VALUES ('john'), ('smith'), ('robert');",
        changes: "BEGIN;
             INSERT INTO public.xpto (b) VALUES ('marie');
             SAVEPOINT sp1;
             INSERT INTO public.xpto (b) VALUES ('ernesto');
             SAVEPOINT sp2;
             INSERT INTO public.xpto (b) VALUES ('peter');
             SAVEPOINT sp3;
             INSERT INTO public.xpto (b) VALUES ('albert');
             ROLLBACK TO SAVEPOINT sp2;
             RELEASE SAVEPOINT sp1;
             INSERT INTO public.xpto (b) VALUES ('francisco');
             END;",
        collections: &["xpto"],
    });
}

/// `default` and `truncate`: rows of `DEFAULT VALUES`, and a truncate followed by inserts.
#[test]
fn default_values_and_a_truncate_followed_by_inserts() {
    run_scenario(&Scenario {
        setup: "CREATE TABLE public.w2j_default (a serial PRIMARY KEY, b integer DEFAULT 6,
                 c text DEFAULT 'wal2json', d timestamp DEFAULT '2020-07-12 11:55:30', e integer DEFAULT NULL, f integer);
             CREATE TABLE public.w2j_truncate (a serial PRIMARY KEY, b text NOT NULL);
             INSERT INTO public.w2j_truncate (b) VALUES ('before@truncate');",
        changes: "INSERT INTO public.w2j_default (b, c, d, e, f) VALUES (2, 'test', '2020-03-01 08:09:00', 80, 10);
             INSERT INTO public.w2j_default DEFAULT VALUES;
             UPDATE public.w2j_default SET b = 3 WHERE a = 1;
             INSERT INTO public.w2j_truncate (b) VALUES ('foo@bar.com');
             TRUNCATE public.w2j_truncate;
             INSERT INTO public.w2j_truncate (b) VALUES ('after@truncate');",
        collections: &["w2j_default", "w2j_truncate"],
    });
}

/// `message` and `bytea`: logical messages in and between transactions change nothing;
/// `bytea` values (which wal2json writes without their `\x`) arrive as a copy gives them.
#[test]
fn messages_change_nothing_and_bytea_arrives_as_copied() {
    run_scenario(&Scenario {
        setup: "CREATE TABLE public.xpto (id int PRIMARY KEY, rand1 bytea, rand2 bytea);
             INSERT INTO public.xpto VALUES (1, '\\x00ff', NULL);",
        changes: "SELECT pg_logical_emit_message(false, 'wal2json', 'a non-transactional message');
             BEGIN;
             INSERT INTO public.xpto VALUES (2, '\\xdeadbeef', '\\x');
             SELECT pg_logical_emit_message(true, 'wal2json', 'a transactional message');
             UPDATE public.xpto SET rand2 = decode(repeat('ab', 3000), 'hex') WHERE id = 1;
             COMMIT;",
        collections: &["xpto"],
    });
}

/// `pk` and `position`: composite keys in an order other than the columns', and columns
/// dropped before the changes (positions with gaps).
#[test]
fn composite_keys_out_of_column_order_and_dropped_columns() {
    run_scenario(&Scenario {
        setup: "CREATE TABLE public.w2j_pk_with_pk (a int, b timestamp, c text, d boolean, e numeric(5,3),
                 PRIMARY KEY (b, d, e));
             CREATE TABLE public.w2j_position (a int PRIMARY KEY, gone text, b text, also_gone int, c text);
             ALTER TABLE public.w2j_position DROP COLUMN gone, DROP COLUMN also_gone;
             INSERT INTO public.w2j_pk_with_pk VALUES (123, '2020-04-26 16:23:59', 'Melanosuchus Niger', true, 4.56);
             INSERT INTO public.w2j_position VALUES (1, 'b', 'c');",
        changes: "UPDATE public.w2j_pk_with_pk SET a = 456, c = 'Panthera Onca', d = false;
             INSERT INTO public.w2j_pk_with_pk VALUES (1, '2021-01-01', 'x', true, 1.5);
             INSERT INTO public.w2j_position VALUES (2, 'bb', 'cc');
             UPDATE public.w2j_position SET c = 'changed' WHERE a = 1;",
        collections: &["w2j_pk_with_pk", "w2j_position"],
    });
}

/// A primary key with INCLUDE columns (`PRIMARY KEY (a) INCLUDE (b)`): the key is `a` alone;
/// deletes carry only it, and updates of `b` are updates, not key changes.
#[test]
fn a_primary_key_with_include_columns_keys_by_its_key_columns_only() {
    run_scenario(&Scenario {
        setup: "CREATE TABLE public.included (a int, b text NOT NULL, c text, PRIMARY KEY (a) INCLUDE (b));
             INSERT INTO public.included VALUES (1, 'one', 'x'), (2, 'two', 'y'), (3, 'three', 'z');",
        changes: "UPDATE public.included SET b = 'uno' WHERE a = 1;
             DELETE FROM public.included WHERE a = 2;
             INSERT INTO public.included VALUES (4, 'four', NULL);",
        collections: &["included"],
    });
}
