//! Every supported PostgreSQL major, each on its own private server: Debian's 15 (which has
//! wal2json) and 14, 16, 17 and 18 (server binaries `scripts/test.sh` fetches into
//! `$PGFERRY_PG_MAJORS`; they have pgoutput, not wal2json). On each, through the pgferry binary
//! and pgoutput:
//! - `pgferry check` passes for a LOG_BASED pipeline into gdnlite;
//! - a FULL_TABLE copy into gdnlite equals the table;
//! - LOG_BASED with protocol 2 (streaming): the copy, then an UPDATE leaving a TOASTed value
//!   unchanged, primary-key changes, deletes, TRUNCATE, an added column and a transaction larger
//!   than `logical_decoding_work_mem` (64kB) that the server streams in progress
//!   (`pg_stat_replication_slots.stream_txns` > 0): every collection equals its table, key by
//!   key and value by value;
//! - the same with protocol 1 (`"pgoutput_streaming": false`): the large transaction is spilled
//!   by the server, not streamed, and still lands exact;
//! - a following `pgferry run` stopped with SIGTERM after GDN holds the changes exits 0 with the
//!   slot confirmed at least to the WAL position read after those changes committed;
//! - PostgreSQL → PostgreSQL LOG_BASED: the target equals the source;
//! - a TRUNCATE of a list partition and of a hash partition under a range partition removes
//!   only their rows from the parent's target table (PostgreSQL → PostgreSQL);
//! - arrays of ranges and composite values are JSON arrays and objects, copied and streamed;
//! - a replica identity index without the primary key is refused at start with the fix;
//! - `pgferry tap` with an old tap config (no `plugin`): the first run copies under a new
//!   pgoutput slot, the next streams an insert, an update and a delete as Singer records.
//!
//! Each scenario gets its own database (so its own slot and publication) and its own gdnlite.
//! A new scenario is one function and one line in [`SCENARIOS`].

mod gdnlite_support;
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gdnlite_support::{Http, Server, KEY};
use serde_json::{json, Value};
use support::{run_to_completion, PgCluster};

/// A scenario: the major's server and the database made for it (named after the scenario).
type Scenario = fn(&Major, &str);

/// What runs on every major, in order, each in its own database.
const SCENARIOS: &[(&str, Scenario)] = &[
    ("pgferry_check", check_passes),
    ("full_table", full_table_copy_equals_the_table),
    ("streaming", log_based_protocol_2_follows_every_change),
    ("protocol_1", log_based_protocol_1_follows_the_same_changes),
    ("sigterm", sigterm_confirms_what_gdn_holds),
    ("pg_to_pg", pg_to_pg_target_equals_the_source),
    ("partitions", partition_truncates_remove_only_their_rows),
    ("values", arrays_and_composites_stream_as_json),
    (
        "identity_index",
        an_identity_index_without_the_key_is_refused,
    ),
    ("tap", tap_copies_then_streams_through_pgoutput),
];

#[test]
fn postgresql_14_passes_every_scenario() {
    every_scenario_on(14);
}

#[test]
fn postgresql_15_passes_every_scenario() {
    every_scenario_on(15);
}

#[test]
fn postgresql_16_passes_every_scenario() {
    every_scenario_on(16);
}

#[test]
fn postgresql_17_passes_every_scenario() {
    every_scenario_on(17);
}

#[test]
fn postgresql_18_passes_every_scenario() {
    every_scenario_on(18);
}

fn every_scenario_on(major: u32) {
    let env = Major::start(major);
    for (name, scenario) in SCENARIOS {
        eprintln!("PostgreSQL {major}: {name}");
        env.cluster.psql(&format!("CREATE DATABASE {name}"));
        scenario(&env, name);
    }
}

/// One major's server, the runtime its gdnlite servers run on, and a directory for pipelines.
struct Major {
    major: u32,
    cluster: PgCluster,
    runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

impl Major {
    fn start(major: u32) -> Major {
        let cluster = PgCluster::builder()
            .major(major)
            .setting("logical_decoding_work_mem", "64kB")
            .start();
        let version: u32 = cluster
            .psql("SHOW server_version_num")
            .parse()
            .expect("server_version_num");
        assert_eq!(
            version / 10_000,
            major,
            "the server runs PostgreSQL {major}"
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        Major {
            major,
            cluster,
            runtime,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn psql(&self, database: &str, sql: &str) -> String {
        self.cluster.psql_in(database, sql)
    }

    /// A gdnlite server of its own.
    fn gdn(&self) -> Gdn<'_> {
        let server = self.runtime.block_on(Server::start());
        let http = self.runtime.block_on(async { Http::h1(&server.url()) });
        Gdn {
            runtime: &self.runtime,
            server,
            http,
        }
    }

    /// Writes a pipeline from `database` (LOG_BASED, no `plugin` key: `auto` gives a new slot
    /// pgoutput, schema `public`) into
    /// `destination`, with `extra` merged into its sections; returns its path.
    fn pipeline(&self, database: &str, destination: Value, extra: Value) -> PathBuf {
        let dir = self.dir.path().join(database);
        std::fs::create_dir_all(&dir).expect("pipeline dir");
        let mut config = json!({
            "source": {
                "host": "127.0.0.1", "port": self.cluster.port(), "user": "postgres",
                "password": "trust", "dbname": database, "sslmode": "disable",
                "replication_method": "LOG_BASED", "filter_schemas": "public"
            },
            "destination": destination,
            "parallelism": 2,
            "state_file": dir.join("state.json")
        });
        support::merge_sections(&mut config, &extra);
        let path = dir.join("pipeline.json");
        std::fs::write(&path, config.to_string()).expect("write pipeline");
        path
    }

    /// The replication slot pgferry made in `database`.
    fn slot(&self, database: &str) -> String {
        let slot = self.psql(
            database,
            &format!("SELECT slot_name FROM pg_replication_slots WHERE database = '{database}'"),
        );
        assert!(
            !slot.is_empty() && !slot.contains('\n'),
            "one slot in {database}: {slot:?}"
        );
        slot
    }

    /// Waits for the slot's counter `column` of `pg_stat_replication_slots` to satisfy `ok`
    /// (statistics arrive asynchronously on PostgreSQL 14); `None` when the server has no such
    /// column. Returns the value seen.
    fn slot_stat(&self, slot: &str, column: &str, ok: impl Fn(u64) -> bool) -> Option<u64> {
        let has_column = self.cluster.psql(&format!(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass('pg_catalog.pg_stat_replication_slots') AND attname = '{column}'"
        ));
        if has_column != "1" {
            eprintln!(
                "PostgreSQL {}: pg_stat_replication_slots has no {column}: not checked",
                self.major
            );
            return None;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let value: u64 = self
                .cluster
                .psql(&format!(
                    "SELECT coalesce(max({column}), 0) FROM pg_stat_replication_slots WHERE slot_name = '{slot}'"
                ))
                .parse()
                .expect("a counter");
            if ok(value) || Instant::now() > deadline {
                return Some(value);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A gdnlite server and a client for it.
struct Gdn<'a> {
    runtime: &'a tokio::runtime::Runtime,
    server: Server,
    http: Http,
}

impl Gdn<'_> {
    fn destination(&self) -> Value {
        json!({"gdn_url": self.server.url(), "api_key": KEY, "batch_size_rows": 500})
    }

    /// Every document of `collection` by `_key`, without `_id` and `_rev`.
    fn documents(&self, collection: &str) -> BTreeMap<String, Value> {
        self.runtime
            .block_on(gdnlite_support::all_documents(&self.http, collection, true))
    }

    /// The document count, `None` while the collection does not exist.
    fn count(&self, collection: &str) -> Option<u64> {
        self.runtime
            .block_on(gdnlite_support::document_count(&self.http, collection))
    }
}

/// Every row of `public.<table>` (primary key `id`) as JSON, by key.
fn rows(env: &Major, database: &str, table: &str) -> BTreeMap<String, Value> {
    let text = env.psql(
        database,
        &format!("SELECT coalesce(json_object_agg(id::text, row_to_json(t)), '{{}}') FROM public.{table} t"),
    );
    serde_json::from_str(&text).expect("rows as JSON")
}

/// How the collection differs from the table (`None`: equal). A document equals its row when
/// its `_key` is the row's key and it has every column's value and nothing else; an attribute
/// missing from a document stands for NULL (a column added after the document was written).
fn difference(env: &Major, database: &str, gdn: &Gdn<'_>, table: &str) -> Option<String> {
    let rows = rows(env, database, table);
    let documents = gdn.documents(table);
    let missing: Vec<&String> = rows
        .keys()
        .filter(|k| !documents.contains_key(*k))
        .collect();
    let extra: Vec<&String> = documents
        .keys()
        .filter(|k| !rows.contains_key(*k))
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        return Some(format!(
            "{table}: {} rows, {} documents; keys missing in GDN {:?}, keys only in GDN {:?}",
            rows.len(),
            documents.len(),
            &missing[..missing.len().min(10)],
            &extra[..extra.len().min(10)]
        ));
    }
    for (key, row) in &rows {
        let document = &documents[key];
        let row = row.as_object().expect("a row object");
        let fields = document.as_object().expect("a document object");
        if fields.get("_key") != Some(&json!(key)) {
            return Some(format!(
                "{table}: document {key} has _key {:?}",
                fields.get("_key")
            ));
        }
        for (column, value) in row {
            let got = fields.get(column).unwrap_or(&Value::Null);
            if got != value {
                return Some(format!(
                    "{table}: document {key}, {column}: GDN has {}, PostgreSQL {}",
                    shorten(got),
                    shorten(value)
                ));
            }
        }
        if let Some(stray) = fields
            .keys()
            .find(|field| *field != "_key" && !row.contains_key(*field))
        {
            return Some(format!(
                "{table}: document {key} has {stray:?}, which is no column"
            ));
        }
    }
    None
}

fn shorten(value: &Value) -> String {
    let text = value.to_string();
    if text.len() > 120 {
        format!("{}… ({} chars)", &text[..120], text.len())
    } else {
        text
    }
}

fn assert_collection_equals_table(env: &Major, database: &str, gdn: &Gdn<'_>, table: &str) {
    if let Some(difference) = difference(env, database, gdn, table) {
        panic!("PostgreSQL {}: {difference}", env.major);
    }
}

/// `public.items`: `count` rows; the first `toasted` have a ~9.6 kB value of md5 digests in
/// `big` (incompressible: stored out of line in the TOAST table).
fn create_items(env: &Major, database: &str, count: u32, toasted: u32) {
    env.psql(
        database,
        &format!(
            "CREATE TABLE public.items (id int PRIMARY KEY, name text, qty int, flag boolean, doc jsonb, big text);
             INSERT INTO public.items
             SELECT g, 'item ' || g, g % 100, g % 2 = 0, jsonb_build_object('g', g, 'tags', jsonb_build_array('a', g)),
                    CASE WHEN g <= {toasted} THEN (SELECT string_agg(md5(g || ':' || i), '') FROM generate_series(1, 300) i) END
             FROM generate_series(1, {count}) g;"
        ),
    );
    if toasted > 0 {
        assert_eq!(
            env.psql(
                database,
                "SELECT pg_relation_size(reltoastrelid) > 0 FROM pg_class WHERE oid = 'public.items'::regclass"
            ),
            "t",
            "the big values are stored out of line"
        );
    }
}

/// An UPDATE that leaves TOASTed values unchanged, key changes (one of a TOASTed row), deletes,
/// an insert-then-delete in one transaction.
const ROW_CHANGES: &[&str] = &[
    "UPDATE public.items SET qty = qty + 1000, name = 'renamed ' || id WHERE id <= 10",
    "UPDATE public.items SET id = 5000 WHERE id = 3",
    "UPDATE public.items SET id = 5001 WHERE id = 40",
    "DELETE FROM public.items WHERE id BETWEEN 20 AND 24",
    "BEGIN; INSERT INTO public.items (id, name) VALUES (7000, 'short-lived'); DELETE FROM public.items WHERE id = 7000; COMMIT",
];

/// One transaction of `rows` rows, larger than the cluster's logical_decoding_work_mem.
fn large_transaction(rows: u32) -> String {
    format!(
        "BEGIN;
         INSERT INTO public.items (id, name, qty, flag, doc)
         SELECT g, 'bulk ' || g, g % 7, true, jsonb_build_object('g', g) FROM generate_series(10001, {}) g;
         UPDATE public.items SET qty = -qty WHERE id BETWEEN 10001 AND 10100;
         COMMIT",
        10_000 + rows
    )
}

/// `pgferry check` on a LOG_BASED pgoutput pipeline into gdnlite: every check passes.
fn check_passes(env: &Major, database: &str) {
    create_items(env, database, 10, 0);
    let gdn = env.gdn();
    let config = env.pipeline(database, gdn.destination(), json!({}));
    let output = Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .expect("run pgferry check");
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "PostgreSQL {}: pgferry check must pass:\n{text}\n{}",
        env.major,
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        &format!("✓ server_version: PostgreSQL {}.", env.major),
        "✓ wal_level:",
        "✓ replication_privilege:",
        "✓ plugin: pgoutput (auto: a new slot: pgoutput",
        "the pgoutput output plugin loads",
        "✓ gdn_destination:",
        "all checks passed",
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }
    assert!(!text.contains('✗'), "nothing fails:\n{text}");
    assert_eq!(
        env.psql(
            database,
            &format!("SELECT count(*) FROM pg_replication_slots WHERE database = '{database}'")
        ),
        "0",
        "the check leaves no slot behind"
    );
}

/// FULL_TABLE into gdnlite: the collection equals the table, TOASTed values included.
fn full_table_copy_equals_the_table(env: &Major, database: &str) {
    create_items(env, database, 2_000, 5);
    let gdn = env.gdn();
    let config = env.pipeline(
        database,
        gdn.destination(),
        json!({"source": {"replication_method": "FULL_TABLE"}}),
    );
    let summary = run_to_completion(&config);
    assert!(summary.contains("public.items: 2000 rows"), "{summary}");
    assert_collection_equals_table(env, database, &gdn, "items");
    // The comparison itself: one value changed behind pgferry's back is found.
    env.psql(database, "UPDATE public.items SET qty = -1 WHERE id = 7");
    let found = difference(env, database, &gdn, "items");
    assert!(
        found
            .as_deref()
            .is_some_and(|found| found.contains("document 7, qty")),
        "{found:?}"
    );
}

/// LOG_BASED, protocol 2 with streaming: the copy, then every kind of change; the large
/// transaction is streamed by the server while in progress.
fn log_based_protocol_2_follows_every_change(env: &Major, database: &str) {
    follow_changes(env, database, true);
}

/// The same through protocol 1: the server spills the large transaction instead of streaming.
fn log_based_protocol_1_follows_the_same_changes(env: &Major, database: &str) {
    follow_changes(env, database, false);
}

fn follow_changes(env: &Major, database: &str, streaming: bool) {
    create_items(env, database, 200, 10);
    env.psql(
        database,
        "CREATE TABLE public.scratch (id int PRIMARY KEY, v text);
         INSERT INTO public.scratch SELECT g, 'v' || g FROM generate_series(1, 50) g;",
    );
    let gdn = env.gdn();
    let config = env.pipeline(
        database,
        gdn.destination(),
        json!({"source": {"pgoutput_streaming": streaming}}),
    );
    run_to_completion(&config);
    assert_collection_equals_table(env, database, &gdn, "items");
    assert_collection_equals_table(env, database, &gdn, "scratch");

    for change in ROW_CHANGES {
        env.psql(database, change);
    }
    env.psql(database, "TRUNCATE public.scratch");
    env.psql(database, "ALTER TABLE public.items ADD COLUMN note text");
    env.psql(
        database,
        "UPDATE public.items SET note = 'noted ' || id WHERE id % 20 = 0;
         INSERT INTO public.items (id, name, qty, note) VALUES (6000, 'with note', 1, 'new');",
    );
    // Protocol 2 streams it in blocks; protocol 1 gets it whole at commit (lighter there).
    env.psql(
        database,
        &large_transaction(if streaming { 5_000 } else { 2_000 }),
    );
    let summary = run_to_completion(&config);

    assert_collection_equals_table(env, database, &gdn, "items");
    assert_collection_equals_table(env, database, &gdn, "scratch");
    let items = gdn.documents("items");
    assert!(
        items["1"]["big"]
            .as_str()
            .is_some_and(|big| big.len() == 9_600)
            && items["1"]["name"] == json!("renamed 1"),
        "the TOASTed value stays through an UPDATE that left it unchanged: {}\n{summary}",
        shorten(&items["1"])
    );
    assert!(
        !items.contains_key("3")
            && items["5000"]["big"]
                .as_str()
                .is_some_and(|big| big.len() == 9_600),
        "a key change moves the document with its TOASTed value"
    );
    assert_eq!(items["6000"]["note"], json!("new"), "the added column");
    assert_eq!(
        gdn.count("scratch"),
        Some(0),
        "TRUNCATE empties the collection"
    );

    let slot = env.slot(database);
    if streaming {
        if let Some(streamed) = env.slot_stat(&slot, "stream_txns", |n| n > 0) {
            assert!(
                streamed > 0,
                "PostgreSQL {}: the large transaction was streamed in progress (stream_txns = {streamed})",
                env.major
            );
        }
    } else {
        if let Some(spilled) = env.slot_stat(&slot, "spill_txns", |n| n > 0) {
            assert!(
                spilled > 0,
                "PostgreSQL {}: the large transaction went past logical_decoding_work_mem (spill_txns = {spilled})",
                env.major
            );
        }
        if let Some(streamed) = env.slot_stat(&slot, "stream_txns", |_| true) {
            assert_eq!(
                streamed, 0,
                "PostgreSQL {}: nothing is streamed in progress under protocol 1",
                env.major
            );
        }
    }
}

/// A child process killed on drop (when a test fails half-way).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `condition` until it holds, failing with `what` and the run's log after `timeout`.
fn wait_until(what: &str, timeout: Duration, log: &Path, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A following `pgferry run` (no `--once`): changes reach GDN, SIGTERM ends it with exit 0,
/// and the slot is then confirmed at least to the WAL position after those changes.
fn sigterm_confirms_what_gdn_holds(env: &Major, database: &str) {
    create_items(env, database, 100, 3);
    let gdn = env.gdn();
    let config = env.pipeline(database, gdn.destination(), json!({}));
    let log = env.dir.path().join(database).join("run.log");
    let mut run = Running(
        Command::new(env!("CARGO_BIN_EXE_pgferry"))
            .args(["run", "-c"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start pgferry run"),
    );
    wait_until("the copy", Duration::from_secs(60), &log, || {
        gdn.count("items") == Some(100)
    });
    for change in ROW_CHANGES {
        env.psql(database, change);
    }
    let after: String = env.psql(
        database,
        "BEGIN; INSERT INTO public.items (id, name, qty) SELECT g, 'late', g FROM generate_series(8001, 8300) g; COMMIT;
         SELECT pg_current_wal_insert_lsn();",
    );
    wait_until("the changes in GDN", Duration::from_secs(60), &log, || {
        difference(env, database, &gdn, "items").is_none()
    });
    assert_eq!(
        run.0.try_wait().expect("child status"),
        None,
        "pgferry run still follows"
    );
    let sent = Command::new("kill")
        .args(["-TERM", &run.0.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(sent.success(), "SIGTERM sent");
    let mut status = None;
    wait_until(
        "pgferry to exit after SIGTERM",
        Duration::from_secs(60),
        &log,
        || {
            status = run.0.try_wait().expect("child status");
            status.is_some()
        },
    );
    let status = status.expect("exited");
    assert!(
        status.success(),
        "SIGTERM ends the run with exit 0, not {status}; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let slot = env.slot(database);
    assert_eq!(
        env.psql(
            database,
            &format!("SELECT confirmed_flush_lsn >= '{after}'::pg_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'")
        ),
        "t",
        "PostgreSQL {}: the slot confirmed at least to {after} on the way out (it is at {})",
        env.major,
        env.psql(
            database,
            &format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'")
        )
    );
    assert_collection_equals_table(env, database, &gdn, "items");
}

/// Row count and a digest of every row's text form, in key order.
fn digest(env: &Major, database: &str, table: &str) -> String {
    env.psql(
        database,
        &format!("SELECT count(*) || ' ' || md5(coalesce(string_agg(t::text, '|' ORDER BY id), '')) FROM {table} t"),
    )
}

/// PostgreSQL → PostgreSQL (another database of the same server), LOG_BASED through pgoutput.
fn pg_to_pg_target_equals_the_source(env: &Major, database: &str) {
    let target = format!("{database}_target");
    env.cluster.psql(&format!("CREATE DATABASE {target}"));
    create_items(env, database, 200, 5);
    let config = env.pipeline(
        database,
        json!({"type": "postgres", "host": "127.0.0.1", "port": env.cluster.port(),
               "user": "postgres", "dbname": target, "sslmode": "disable"}),
        json!({}),
    );
    run_to_completion(&config);
    assert_eq!(
        digest(env, database, "public.items"),
        digest(env, &target, "public.items"),
        "the copy"
    );
    for change in ROW_CHANGES {
        env.psql(database, change);
    }
    env.psql(
        database,
        "INSERT INTO public.items (id, name, qty) SELECT g, 'more', g FROM generate_series(300, 400) g",
    );
    run_to_completion(&config);
    let source = digest(env, database, "public.items");
    assert_eq!(
        source,
        digest(env, &target, "public.items"),
        "PostgreSQL {}: the target equals the source",
        env.major
    );
    assert!(source.starts_with("296 "), "{source}");
}

/// Partitioned tables PostgreSQL → PostgreSQL: a TRUNCATE of some partitions empties only
/// them in the parent's target table (pgferry's publication publishes the partitions under
/// their own names, so PostgreSQL sends those TRUNCATEs).
fn partition_truncates_remove_only_their_rows(env: &Major, database: &str) {
    let target = format!("{database}_target");
    env.cluster.psql(&format!("CREATE DATABASE {target}"));
    env.psql(
        database,
        "CREATE TABLE public.tab1 (id int PRIMARY KEY, b text) PARTITION BY LIST (id);
         CREATE TABLE public.tab1_1 PARTITION OF public.tab1 FOR VALUES IN (1, 2);
         CREATE TABLE public.tab1_2 PARTITION OF public.tab1 FOR VALUES IN (3, 4, 5);
         CREATE TABLE public.tab1_def PARTITION OF public.tab1 DEFAULT;
         CREATE TABLE public.metrics (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
         CREATE TABLE public.metrics_2024 PARTITION OF public.metrics
             FOR VALUES FROM ('2024-01-01') TO ('2025-01-01') PARTITION BY HASH (id);
         CREATE TABLE public.metrics_h0 PARTITION OF public.metrics_2024 FOR VALUES WITH (MODULUS 2, REMAINDER 0);
         CREATE TABLE public.metrics_h1 PARTITION OF public.metrics_2024 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
         INSERT INTO public.tab1 VALUES (3, 'three'), (8, 'eight');
         INSERT INTO public.metrics SELECT g, date '2024-01-01' + g FROM generate_series(1, 40) g;",
    );
    let config = env.pipeline(
        database,
        json!({"type": "postgres", "host": "127.0.0.1", "port": env.cluster.port(),
               "user": "postgres", "dbname": target, "sslmode": "disable"}),
        json!({}),
    );
    run_to_completion(&config);
    env.psql(
        database,
        "INSERT INTO public.tab1 VALUES (1, 'one'), (2, 'two'), (5, 'five');
         TRUNCATE public.tab1_2, public.metrics_h1;",
    );
    run_to_completion(&config);
    for table in ["public.tab1", "public.metrics"] {
        assert_eq!(
            digest(env, database, table),
            digest(env, &target, table),
            "PostgreSQL {}: {table} equals the source after partition truncates",
            env.major
        );
    }
    let kept = env.psql(
        &target,
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM public.tab1",
    );
    assert_eq!(kept, "1,2,8", "PostgreSQL {}", env.major);
}

/// Arrays of ranges and composite values become JSON arrays and objects, in the copy and in
/// the stream (pgoutput) alike.
fn arrays_and_composites_stream_as_json(env: &Major, database: &str) {
    env.psql(
        database,
        "CREATE TYPE public.pair AS (label text, n int);
         CREATE TABLE public.shapes (id int PRIMARY KEY, spans int4range[], p public.pair, ps public.pair[]);
         INSERT INTO public.shapes VALUES (1, '{\"[2,4)\",\"[20,31)\"}', ROW('a b', 1), ARRAY[ROW('x', 2)::public.pair, NULL]);",
    );
    let gdn = env.gdn();
    let config = env.pipeline(database, gdn.destination(), json!({}));
    run_to_completion(&config);
    env.psql(
        database,
        "INSERT INTO public.shapes VALUES (2, '{\"[1,2)\"}', ROW(NULL, 3), '{}');
         UPDATE public.shapes SET p = ROW('c', 4) WHERE id = 1;",
    );
    run_to_completion(&config);
    let documents = gdn.documents("shapes");
    assert_eq!(
        documents["1"]["spans"],
        json!(["[2,4)", "[20,31)"]),
        "PostgreSQL {}",
        env.major
    );
    assert_eq!(
        documents["1"]["p"],
        json!({"label": "c", "n": 4}),
        "PostgreSQL {}",
        env.major
    );
    assert_eq!(
        documents["1"]["ps"],
        json!([{"label": "x", "n": 2}, null]),
        "PostgreSQL {}",
        env.major
    );
    assert_eq!(
        documents["2"]["p"],
        json!({"label": null, "n": 3}),
        "PostgreSQL {}",
        env.major
    );
    assert_eq!(
        documents["2"]["spans"],
        json!(["[1,2)"]),
        "PostgreSQL {}",
        env.major
    );
}

/// `REPLICA IDENTITY USING INDEX` on an index without the primary key: refused at start with
/// the fix, no slot made.
fn an_identity_index_without_the_key_is_refused(env: &Major, database: &str) {
    env.psql(
        database,
        "CREATE TABLE public.by_u (id int PRIMARY KEY, u int NOT NULL);
         CREATE UNIQUE INDEX by_u_u ON public.by_u (u);
         ALTER TABLE public.by_u REPLICA IDENTITY USING INDEX by_u_u;",
    );
    let gdn = env.gdn();
    let config = env.pipeline(database, gdn.destination(), json!({}));
    let output = Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["run", "--once", "-c"])
        .arg(&config)
        .output()
        .expect("run pgferry");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "PostgreSQL {}: {stderr}",
        env.major
    );
    assert!(
        stderr.contains("REPLICA IDENTITY DEFAULT"),
        "PostgreSQL {}: {stderr}",
        env.major
    );
    assert_eq!(
        env.psql(
            database,
            &format!("SELECT count(*) FROM pg_replication_slots WHERE database = '{database}'")
        ),
        "0"
    );
}

/// The Singer messages `pgferry tap -c <config> [-s <state>]` wrote, one JSON value per line.
fn tap(config: &Path, state: Option<&Path>) -> Vec<Value> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pgferry"));
    command.args(["tap", "-c"]).arg(config);
    if let Some(state) = state {
        command.arg("-s").arg(state);
    }
    let output = command.output().expect("run pgferry tap");
    assert!(
        output.status.success(),
        "pgferry tap failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a Singer message per line"))
        .collect()
}

/// `(id, note, deleted)` of each RECORD, in order.
fn tap_records(messages: &[Value]) -> Vec<(i64, Value, bool)> {
    messages
        .iter()
        .filter(|message| message["type"] == "RECORD")
        .map(|message| {
            let record = &message["record"];
            (
                record["id"].as_i64().expect("id"),
                record["note"].clone(),
                !record["_sdc_deleted_at"].is_null(),
            )
        })
        .collect()
}

fn tap_copies_then_streams_through_pgoutput(env: &Major, database: &str) {
    env.psql(
        database,
        "CREATE TABLE public.orders (id int PRIMARY KEY, note text);
         INSERT INTO public.orders VALUES (1, 'one'), (2, 'two');",
    );
    let dir = env.dir.path().join(database);
    std::fs::create_dir_all(&dir).expect("tap dir");
    let config = dir.join("tap.json");
    std::fs::write(
        &config,
        json!({"host": "127.0.0.1", "port": env.cluster.port(), "user": "postgres",
               "dbname": database, "sslmode": "disable", "filter_schemas": "public",
               "replication_method": "LOG_BASED"})
        .to_string(),
    )
    .expect("write tap config");
    let first = tap(&config, None);
    assert_eq!(
        tap_records(&first),
        vec![(1, json!("one"), false), (2, json!("two"), false)],
        "PostgreSQL {}: the first run copies",
        env.major
    );
    assert_eq!(
        env.psql(
            database,
            "SELECT plugin FROM pg_replication_slots WHERE slot_name = 'macrometa_tap'"
        ),
        "pgoutput"
    );
    let state = first
        .iter()
        .rev()
        .find(|message| message["type"] == "STATE")
        .expect("a STATE")["value"]
        .clone();
    let state_path = dir.join("state.json");
    std::fs::write(&state_path, state.to_string()).expect("write state");
    env.psql(
        database,
        "INSERT INTO public.orders VALUES (3, 'three');
         UPDATE public.orders SET note = 'uno' WHERE id = 1;
         DELETE FROM public.orders WHERE id = 2;",
    );
    let second = tap(&config, Some(&state_path));
    assert_eq!(
        tap_records(&second),
        vec![
            (3, json!("three"), false),
            (1, json!("uno"), false),
            (2, Value::Null, true)
        ],
        "PostgreSQL {}: the changes stream as records",
        env.major
    );
}
