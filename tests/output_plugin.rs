//! Which output plugin `pgferry run` streams through on current PostgreSQL releases, whose
//! `output_plugin_libraries` allows only pgoutput and test_decoding by default: with no
//! `plugin` key a stock server needs nothing more (pgoutput); an old wal2json slot resumes on
//! wal2json where the server allows it; a refused plugin stops the run at once with the fix,
//! nothing created or confirmed, whether the refusal is seen before the slot or only at
//! `START_REPLICATION` (a server reconfigured between runs, a role that cannot read the list).

mod gdnlite_support;
mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use gdnlite_support::{all_documents, Http, Server, KEY};
use serde_json::{json, Value};
use support::PgCluster;

fn pipeline(dir: &Path, cluster: &PgCluster, gdn_url: &str, user: &str, extra: Value) -> PathBuf {
    let mut config = json!({
        "source": {
            "host": "127.0.0.1", "port": cluster.port(), "user": user, "password": "trust",
            "dbname": "postgres", "sslmode": "disable", "replication_method": "LOG_BASED",
            "filter_schemas": "public"
        },
        "destination": {"gdn_url": gdn_url, "api_key": KEY, "batch_size_rows": 500},
        "state_file": dir.join("state.json").display().to_string()
    });
    support::merge_sections(&mut config, &json!({"source": extra}));
    let path = dir.join("pipeline.json");
    std::fs::write(&path, config.to_string()).expect("write pipeline");
    path
}

/// A test's gdnlite (on its own runtime), directory and pipeline from `cluster` as `user`.
struct Setup {
    runtime: tokio::runtime::Runtime,
    server: Server,
    _dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    fn new(cluster: &PgCluster, user: &str, extra: Value) -> Setup {
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        let server = runtime.block_on(Server::start());
        let dir = tempfile::tempdir().expect("temp dir");
        let config = pipeline(dir.path(), cluster, &server.url(), user, extra);
        Setup {
            runtime,
            server,
            _dir: dir,
            config,
        }
    }

    /// `pgferry run --once`, which must succeed; returns its output.
    fn run_ok(&self) -> String {
        let output = run_once(&self.config);
        assert!(output.status.success(), "{}", text(&output));
        text(&output)
    }

    /// The `v` attribute of every document of collection `t`, by key.
    fn documents(&self) -> Vec<(String, Value)> {
        let http = Http::h1(&self.server.url());
        self.runtime
            .block_on(all_documents(&http, "t", true))
            .into_iter()
            .map(|(key, document)| (key, document["v"].clone()))
            .collect()
    }
}

fn run_once(config: &Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["run", "--once", "-c"])
        .arg(config)
        .env("RUST_LOG", "info")
        .output()
        .expect("run pgferry")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn slot(cluster: &PgCluster) -> String {
    cluster.psql(
        "SELECT plugin || ' ' || confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'macrometa_postgres'",
    )
}

fn expected(pairs: &[(&str, &str)]) -> Vec<(String, Value)> {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), json!(value)))
        .collect()
}

#[test]
fn a_stock_server_copies_and_streams_through_pgoutput_with_no_plugin_key() {
    let cluster = PgCluster::builder().stock_allow_list().start();
    cluster.psql("CREATE TABLE public.t (id int PRIMARY KEY, v text); INSERT INTO public.t VALUES (1, 'one'), (2, 'two');");
    let setup = Setup::new(&cluster, "postgres", json!({}));
    let log = setup.run_ok();
    assert!(
        log.contains("a new slot: pgoutput (built in) with publication \"macrometa_postgres\", which will be created for the selected tables"),
        "the choice and its reason are logged:\n{log}"
    );
    assert!(
        slot(&cluster).starts_with("pgoutput "),
        "{}",
        slot(&cluster)
    );
    cluster.psql("UPDATE public.t SET v = 'uno' WHERE id = 1; DELETE FROM public.t WHERE id = 2; INSERT INTO public.t VALUES (3, 'three');");
    setup.run_ok();
    assert_eq!(setup.documents(), expected(&[("1", "uno"), ("3", "three")]));
}

#[test]
fn an_old_wal2json_slot_resumes_on_wal2json_where_the_server_allows_it() {
    let cluster = PgCluster::start_default();
    cluster.require_wal2json();
    cluster.psql("CREATE TABLE public.t (id int PRIMARY KEY, v text); INSERT INTO public.t VALUES (1, 'one');");
    // As the old connector's docs told users to create it.
    cluster
        .psql("SELECT * FROM pg_create_logical_replication_slot('macrometa_postgres', 'wal2json')");
    let setup = Setup::new(&cluster, "postgres", json!({}));
    let log = setup.run_ok();
    assert!(
        log.contains("the existing slot \"macrometa_postgres\" uses wal2json"),
        "{log}"
    );
    cluster.psql(
        "INSERT INTO public.t VALUES (2, 'two'); UPDATE public.t SET v = 'uno' WHERE id = 1;",
    );
    setup.run_ok();
    assert!(
        slot(&cluster).starts_with("wal2json "),
        "{}",
        slot(&cluster)
    );
    assert_eq!(
        cluster.psql("SELECT count(*) FROM pg_publication"),
        "0",
        "no publication is made for a wal2json slot"
    );
    assert_eq!(setup.documents(), expected(&[("1", "uno"), ("2", "two")]));
}

#[test]
fn a_forced_wal2json_on_a_stock_server_fails_at_once_with_the_fix_and_creates_nothing() {
    let cluster = PgCluster::builder().stock_allow_list().start();
    cluster.psql("CREATE TABLE public.t (id int PRIMARY KEY, v text)");
    let setup = Setup::new(&cluster, "postgres", json!({"plugin": "wal2json"}));
    let output = run_once(&setup.config);
    let log = text(&output);
    assert_eq!(output.status.code(), Some(1), "{log}");
    assert!(
        log.contains("output_plugin_libraries = 'pgoutput, test_decoding'"),
        "{log}"
    );
    assert!(
        log.contains(
            "ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', 'wal2json';"
        ),
        "{log}"
    );
    assert!(!log.contains("reconnecting"), "not retried: {log}");
    assert_eq!(slot(&cluster), "", "no slot was created");
}

/// A replication role (not a superuser: it cannot read the allow-list) streams from a wal2json
/// slot; the server is then reconfigured to refuse wal2json. `START_REPLICATION` is refused: the
/// run stops at once with the fix, exit 1, the slot not confirmed any further.
#[test]
fn a_server_reconfigured_between_runs_stops_the_run_with_the_fix_not_a_retry() {
    let cluster = PgCluster::start_default();
    cluster.require_wal2json();
    cluster.psql(
        "CREATE ROLE etl LOGIN REPLICATION;
         CREATE TABLE public.t (id int PRIMARY KEY, v text);
         ALTER TABLE public.t OWNER TO etl;
         INSERT INTO public.t VALUES (1, 'one');",
    );
    let setup = Setup::new(
        &cluster,
        "etl",
        json!({"plugin": "wal2json", "max_reconnect_attempts": 1}),
    );
    setup.run_ok();
    let before = slot(&cluster);
    assert!(before.starts_with("wal2json "), "{before}");

    cluster.psql("ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding'");
    cluster.reload();
    cluster.psql("INSERT INTO public.t VALUES (2, 'two')");
    let output = run_once(&setup.config);
    let log = text(&output);
    assert_eq!(output.status.code(), Some(1), "{log}");
    assert!(
        log.contains("the server refuses wal2json as an output plugin: library \"wal2json\" may not be used as an output plugin"),
        "{log}"
    );
    assert!(log.contains("SHOW output_plugin_libraries"), "{log}");
    assert!(log.contains("\"plugin\": \"pgoutput\""), "{log}");
    assert!(
        !log.contains("reconnecting"),
        "not retried as a passing fault: {log}"
    );
    assert_eq!(slot(&cluster), before, "nothing confirmed past the refusal");
    assert_eq!(setup.documents(), expected(&[("1", "one")]));
}

/// Every replication slot taken: the run stops at once with the query that lists the slots
/// and the setting to raise, instead of retrying slot creation for good.
#[test]
fn every_slot_taken_is_a_fix_not_a_retry() {
    let cluster = PgCluster::builder()
        .setting("max_replication_slots", "1")
        .start();
    cluster.psql("CREATE TABLE public.t (id int PRIMARY KEY, v text)");
    cluster.psql("SELECT pg_create_logical_replication_slot('someone_else', 'pgoutput')");
    let setup = Setup::new(&cluster, "postgres", json!({"max_reconnect_attempts": 2}));
    let output = run_once(&setup.config);
    let log = text(&output);
    assert_eq!(output.status.code(), Some(1), "{log}");
    assert!(log.contains("all replication slots are in use"), "{log}");
    assert!(
        log.contains("pg_drop_replication_slot('<name>')") && log.contains("max_replication_slots"),
        "{log}"
    );
    assert!(!log.contains("starting again"), "not retried: {log}");
}

/// With every WAL sender taken (`max_wal_senders` reached), the run stops at once with the
/// query that shows who holds them and the setting to raise, instead of retrying.
#[test]
fn every_wal_sender_taken_is_a_fix_not_a_retry() {
    let cluster = PgCluster::builder().setting("max_wal_senders", "1").start();
    cluster.psql("CREATE TABLE public.t (id int PRIMARY KEY, v text)");
    // Another consumer holds the only WAL sender (a replication connection running SQL).
    let mut holder = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port().to_string(),
            "-U",
            "postgres",
        ])
        .args([
            "-d",
            "dbname=postgres replication=database",
            "-c",
            "SELECT pg_sleep(60)",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start psql");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while cluster.psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'")
        != "1"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the WAL sender holder never connected"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let setup = Setup::new(&cluster, "postgres", json!({"max_reconnect_attempts": 2}));
    let output = run_once(&setup.config);
    let _ = holder.kill();
    let _ = holder.wait();
    let log = text(&output);
    assert_eq!(output.status.code(), Some(1), "{log}");
    assert!(log.contains("max_wal_senders"), "{log}");
    assert!(
        log.contains("FROM pg_stat_replication") && log.contains("raise max_wal_senders"),
        "{log}"
    );
    assert!(!log.contains("starting again"), "not retried: {log}");
}
