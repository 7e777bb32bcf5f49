//! Tables that join a running LOG_BASED pipeline: a table created after the pipeline started
//! (matching `filter_schemas`) is added to pgferry's publication by pgferry, copied under a
//! snapshot of its own while the slot keeps its later changes, then streamed — through pgoutput
//! and wal2json, into gdnlite and into PostgreSQL; under concurrent writes; with kill -9 during
//! its copy; `--resnapshot` of a table whose collection lost documents; a table leaving the
//! selection. The oracle: every collection equals a fresh FULL_TABLE copy of its table (a
//! PostgreSQL target equals its source, row for row).

mod gdnlite_support;
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gdnlite_support::{api, Http, Server, KEY};
use hyper::Method;
use serde_json::{json, Value};
use support::PgCluster;

struct World {
    cluster: PgCluster,
    runtime: tokio::runtime::Runtime,
    streamed: Server,
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let cluster = PgCluster::start_default();
        cluster.require_wal2json();
        cluster.psql(
            "CREATE TABLE public.t (id int PRIMARY KEY, v text);
             INSERT INTO public.t SELECT g, 'v' || g FROM generate_series(1, 100) g;",
        );
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        let streamed = runtime.block_on(Server::start());
        World {
            cluster,
            runtime,
            streamed,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn pipeline(&self, name: &str, destination: Value, source: Value) -> PathBuf {
        let mut config = json!({
            "source": {
                "host": "127.0.0.1", "port": self.cluster.port(), "user": "postgres",
                "dbname": "postgres", "sslmode": "disable", "filter_schemas": "public",
                "replication_method": "LOG_BASED"
            },
            "destination": destination,
            "parallelism": 2,
            "state_file": self.dir.path().join(format!("{name}.state.json"))
        });
        support::merge_sections(&mut config, &json!({ "source": source }));
        let path = self.dir.path().join(format!("{name}.json"));
        std::fs::write(&path, config.to_string()).expect("write pipeline");
        path
    }

    fn gdn_pipeline(&self, plugin: &str) -> PathBuf {
        self.pipeline(
            "stream",
            json!({"gdn_url": self.streamed.url(), "api_key": KEY, "batch_size_rows": 500}),
            json!({"plugin": plugin}),
        )
    }

    fn documents(
        &self,
        server: &Server,
        collections: &[&str],
    ) -> BTreeMap<String, BTreeMap<String, Value>> {
        gdnlite_support::collections(&self.runtime, &server.url(), collections)
    }

    /// The streamed collections equal a fresh FULL_TABLE copy of their tables.
    fn assert_equal_to_a_fresh_copy(&self, collections: &[&str], what: &str) {
        let fresh = self.runtime.block_on(Server::start());
        let copy = self.pipeline(
            "fresh",
            json!({"gdn_url": fresh.url(), "api_key": KEY}),
            json!({"replication_method": "FULL_TABLE"}),
        );
        run_ok(&copy);
        let expected = self.documents(&fresh, collections);
        for collection in collections {
            assert!(
                !expected[*collection].is_empty(),
                "{what}: {collection} is empty: the test tests nothing"
            );
        }
        let streamed = self.documents(&self.streamed, collections);
        for collection in collections {
            let (have, want) = (&streamed[*collection], &expected[*collection]);
            if have != want {
                let missing: Vec<&String> = want
                    .keys()
                    .filter(|key| !have.contains_key(*key))
                    .take(5)
                    .collect();
                let extra: Vec<&String> = have
                    .keys()
                    .filter(|key| !want.contains_key(*key))
                    .take(5)
                    .collect();
                let changed: Vec<&String> = want
                    .keys()
                    .filter(|key| have.get(*key).is_some_and(|doc| doc != &want[*key]))
                    .take(5)
                    .collect();
                panic!("{what}: {collection} differs from a fresh copy ({} vs {} documents): missing {missing:?}, extra {extra:?}, changed {changed:?}", have.len(), want.len());
            }
        }
    }
}

fn run(config: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["run", "--once", "-c"])
        .arg(config)
        .args(extra)
        .output()
        .expect("run pgferry")
}

fn run_ok_with(config: &Path, extra: &[&str]) -> String {
    let output = run(config, extra);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "pgferry run failed:\n{log}");
    log
}

fn run_ok(config: &Path) -> String {
    run_ok_with(config, &[])
}

/// A `pgferry run` without end, its log in a file.
struct Running {
    child: std::process::Child,
    log: PathBuf,
}

impl Running {
    /// Starts `pgferry run -c config`, logging to `log`.
    fn start(config: &Path, log: PathBuf) -> Running {
        let child = Command::new(env!("CARGO_BIN_EXE_pgferry"))
            .args(["run", "-c"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start pgferry");
        Running { child, log }
    }

    /// What it logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM: it flushes, confirms and exits 0.
    fn stop(mut self) {
        let status = Command::new("kill")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
        let exit = self.child.wait().expect("wait");
        assert!(exit.success(), "{}", self.log());
    }
}

/// Writes to `t` and `b` from another thread until stopped: inserts, updates, deletes.
fn writer(cluster: &PgCluster, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u32> {
    let port = cluster.port();
    std::thread::spawn(move || {
        let mut round = 0u32;
        while !stop.load(Ordering::Relaxed) {
            round += 1;
            let sql = format!(
                "INSERT INTO public.b SELECT 100000 + {round} * 10 + g, 'w' FROM generate_series(1, 5) g;
                 UPDATE public.b SET v = 'u{round}' WHERE id % 97 = {round} % 97;
                 DELETE FROM public.b WHERE id % 89 = {round} % 89 AND id < 100000;
                 UPDATE public.t SET v = 't{round}' WHERE id = 1 + {round} % 100;"
            );
            let status = Command::new("psql")
                .args([
                    "-X",
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-c",
                    &sql,
                ])
                .stdout(Stdio::null())
                .status()
                .expect("psql");
            assert!(status.success(), "the writer's SQL failed");
        }
        round
    })
}

/// The scenario: a table created after the pipeline started, with rows and a write
/// made before pgferry saw it.
fn a_new_table_is_copied_then_streamed(plugin: &str) {
    let world = World::new();
    let config = world.gdn_pipeline(plugin);
    run_ok(&config);
    world.cluster.psql(
        "CREATE TABLE public.b (id int PRIMARY KEY, v text);
         INSERT INTO public.b SELECT g, 'b' || g FROM generate_series(1, 3000) g;
         UPDATE public.t SET v = 'changed' WHERE id = 5;",
    );
    if plugin == "pgoutput" {
        let check = Command::new(env!("CARGO_BIN_EXE_pgferry"))
            .args(["check", "-c"])
            .arg(&config)
            .output()
            .expect("run pgferry check");
        let text = String::from_utf8_lossy(&check.stdout);
        assert!(
            text.contains("does not publish public.b yet; `pgferry run` adds them"),
            "{text}"
        );
    }
    let log = run_ok(&config);
    assert!(log.contains("join"), "the run says a table joined:\n{log}");
    world.assert_equal_to_a_fresh_copy(&["t", "b"], "after the join");
    world.cluster.psql(
        "INSERT INTO public.b VALUES (5000, 'late'); UPDATE public.b SET v = 'x' WHERE id < 10;
         DELETE FROM public.b WHERE id BETWEEN 20 AND 30;",
    );
    run_ok(&config);
    world.assert_equal_to_a_fresh_copy(&["t", "b"], "streamed after the join");
}

#[test]
fn a_new_table_joins_through_pgoutput() {
    a_new_table_is_copied_then_streamed("pgoutput");
}

#[test]
fn a_new_table_joins_through_wal2json() {
    a_new_table_is_copied_then_streamed("wal2json");
}

/// Writes keep coming to the joining table and to the streaming one while the join copies.
#[test]
fn a_table_joins_under_concurrent_writes() {
    let world = World::new();
    let config = world.gdn_pipeline("pgoutput");
    run_ok(&config);
    world.cluster.psql(
        "CREATE TABLE public.b (id int PRIMARY KEY, v text);
         INSERT INTO public.b SELECT g, 'b' || g FROM generate_series(1, 60000) g;",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writes = writer(&world.cluster, Arc::clone(&stop));
    run_ok(&config);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let rounds = writes.join().expect("writer");
    assert!(rounds > 0, "the writer wrote");
    run_ok(&config);
    world.assert_equal_to_a_fresh_copy(&["t", "b"], "after a join under writes");
    assert_verified(&config);
}

/// In a run without end the other tables keep streaming while a joining table is copied: a
/// session holds the joining table locked (and so holds a transaction id), so the join's
/// snapshot and copy wait, and `t`'s changes still arrive. The session then writes to the
/// table and commits; a concurrent writer keeps writing both tables during and after the copy.
#[test]
fn the_other_tables_keep_streaming_while_a_joining_table_is_copied() {
    let world = World::new();
    let config = world.pipeline(
        "stream",
        json!({"gdn_url": world.streamed.url(), "api_key": KEY}),
        json!({"plugin": "pgoutput", "table_check_interval": 1}),
    );
    run_ok(&config);
    // b joins through the publication pgferry made (named after its slot), so the run that
    // copies it has no lock of b to take before its stream starts.
    world.cluster.psql(
        "CREATE TABLE public.b (id int PRIMARY KEY, v text);
         INSERT INTO public.b SELECT g, 'b' || g FROM generate_series(1, 5000) g;
         ALTER PUBLICATION macrometa_postgres ADD TABLE public.b;",
    );
    let mut session = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .args(["-p", &world.cluster.port().to_string(), "-d", "postgres"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("psql session");
    let mut input = session.stdin.take().expect("session input");
    use std::io::Write;
    input
        .write_all(b"BEGIN;\nLOCK TABLE public.b IN ACCESS EXCLUSIVE MODE;\n")
        .expect("lock b");
    input.flush().expect("lock b");
    let locks = |granted: bool| {
        world.cluster.psql(&format!(
            "SELECT count(*) FROM pg_locks WHERE relation = 'public.b'::regclass AND granted = {granted}"
        ))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while locks(true).trim() == "0" {
        assert!(Instant::now() < deadline, "the session never locked b");
        std::thread::sleep(Duration::from_millis(50));
    }
    let running = Running::start(&config, world.dir.path().join("running.log"));
    let log = || running.log();
    // pgferry's snapshot for b waits for the session's transaction (its lock gave it an xid).
    let waiting = || {
        world.cluster.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE_REPLICATION_SLOT%_join_%' AND wait_event_type = 'Lock'",
        )
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while waiting().trim() == "0" {
        assert!(
            Instant::now() < deadline,
            "b's join never started:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    world
        .cluster
        .psql("INSERT INTO public.t VALUES (1001, 'during'); UPDATE public.t SET v = 'during' WHERE id = 5;");
    let http = Http::h1(&world.streamed.url());
    let get = |path: &str| {
        world
            .runtime
            .block_on(http.call(Method::GET, &api(path), Value::Null))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get("document/t/1001").status.is_success() {
        assert!(
            Instant::now() < deadline,
            "t's changes stopped streaming while b was being copied:\n{}\n{}",
            log(),
            world.cluster.psql("SELECT application_name, wait_event_type, state, query FROM pg_stat_activity WHERE backend_type = 'client backend' OR backend_type = 'walsender'")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get("document/t/5").json["v"], "during");
    assert_eq!(
        get("collection/b/count").json["count"]
            .as_u64()
            .unwrap_or(0),
        0,
        "b's copy was still waiting for the lock"
    );
    // The session writes b and commits; a writer keeps going through the copy and after.
    input
        .write_all(
            b"INSERT INTO public.b VALUES (900001, 'held');
              UPDATE public.b SET v = 'held' WHERE id = 1;
              DELETE FROM public.b WHERE id = 2;
              COMMIT;\n",
        )
        .expect("write b");
    drop(input);
    assert!(session.wait().expect("psql session").success());
    let stop = Arc::new(AtomicBool::new(false));
    let writes = writer(&world.cluster, Arc::clone(&stop));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log().contains("the joining tables are copied: streaming starts again") {
        assert!(
            Instant::now() < deadline,
            "b's copy never finished:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    world
        .cluster
        .psql("INSERT INTO public.b VALUES (900002, 'after'); DELETE FROM public.b WHERE id = 3;");
    // (The writer updates any row and deletes rows below 100000, but not these.)
    while !(get("document/b/900002").status.is_success()
        && get("document/b/3").status.as_u16() == 404
        && get("document/b/900001").status.is_success()
        && get("document/b/2").status.as_u16() == 404)
    {
        assert!(
            Instant::now() < deadline,
            "b's changes never streamed after its copy:\n{}\n{}",
            log(),
            world.cluster.psql("SELECT application_name, wait_event_type, wait_event, state, query FROM pg_stat_activity WHERE backend_type = 'client backend' OR backend_type = 'walsender'")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    assert!(writes.join().expect("writer") > 0, "the writer wrote");
    running.stop();
    run_ok(&config);
    world.assert_equal_to_a_fresh_copy(&["t", "b"], "a table copied beside the stream");
    assert_verified(&config);
}

/// `pgferry verify` finds the pipeline's destination equal to its source.
fn assert_verified(config: &Path) {
    let output = Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["verify", "-c"])
        .arg(config)
        .output()
        .expect("run pgferry verify");
    assert_eq!(
        output.status.code(),
        Some(0),
        "pgferry verify:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// kill -9 while the joining table is being copied: the next run copies it again and ends exact.
#[test]
fn a_join_killed_during_its_copy_resumes_without_loss() {
    let world = World::new();
    let config = world.gdn_pipeline("pgoutput");
    run_ok(&config);
    world.cluster.psql(
        "CREATE TABLE public.b (id int PRIMARY KEY, v text);
         INSERT INTO public.b SELECT g, repeat('b', 100) FROM generate_series(1, 100000) g;",
    );
    let log_path = world.dir.path().join("killed.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["run", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .spawn()
        .expect("start pgferry");
    let http = Http::h1(&world.streamed.url());
    let deadline = Instant::now() + Duration::from_secs(60);
    // Wait until some of b is in GDN, then kill.
    loop {
        let answer =
            world
                .runtime
                .block_on(http.call(Method::GET, &api("collection/b/count"), Value::Null));
        let count = answer.json["count"].as_u64().unwrap_or(0);
        if count > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the join never started copying:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill -9");
    let _ = child.wait();
    world.cluster.psql("DELETE FROM public.b WHERE id % 1000 = 0; UPDATE public.b SET v = 'after' WHERE id % 777 = 0;");
    run_ok(&config);
    world.assert_equal_to_a_fresh_copy(&["t", "b"], "after kill -9 during the join copy");
    assert_verified(&config);
}

/// `--resnapshot`: a collection that lost documents by hand is copied again (and its extra
/// documents removed) while the stream carries on.
#[test]
fn resnapshot_copies_one_table_again() {
    let world = World::new();
    let config = world.gdn_pipeline("pgoutput");
    run_ok(&config);
    let http = Http::h1(&world.streamed.url());
    world
        .runtime
        .block_on(http.call(Method::DELETE, &api("document/t"), json!(["1", "2", "3"])));
    world.runtime.block_on(http.call(
        Method::POST,
        &api("document/t"),
        json!([{"_key": "9999", "id": 9999, "v": "stray"}]),
    ));
    world
        .cluster
        .psql("UPDATE public.t SET v = 'before' WHERE id = 50;");
    let log = run_ok_with(&config, &["--resnapshot", "public.t"]);
    assert!(log.contains("join"), "{log}");
    world.assert_equal_to_a_fresh_copy(&["t"], "after --resnapshot");
    let refused = run(&config, &["--resnapshot", "public.nope"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr)
        .contains("public.nope is not one of the pipeline's selected tables"));
}

/// A table leaving the selection stops being streamed; its collection stays.
#[test]
fn a_table_that_leaves_the_selection_is_no_longer_streamed() {
    let world = World::new();
    world.cluster.psql(
        "CREATE TABLE public.b (id int PRIMARY KEY, v text); INSERT INTO public.b VALUES (1, 'one');",
    );
    let config = world.gdn_pipeline("pgoutput");
    run_ok(&config);
    let narrowed = world.pipeline(
        "stream",
        json!({"gdn_url": world.streamed.url(), "api_key": KEY}),
        json!({"plugin": "pgoutput", "filter_table": "t"}),
    );
    assert_eq!(narrowed, config);
    world
        .cluster
        .psql("INSERT INTO public.b VALUES (2, 'two'); UPDATE public.t SET v = 'x' WHERE id = 1;");
    run_ok(&config);
    let documents = world.documents(&world.streamed, &["b", "t"]);
    assert_eq!(documents["b"].len(), 1, "b is kept as it was, not streamed");
    assert_eq!(documents["t"]["1"]["v"], "x");
}

/// PostgreSQL → PostgreSQL: a new table joins; the target equals the source.
#[test]
fn a_new_table_joins_a_postgresql_pipeline() {
    let world = World::new();
    world.cluster.psql("CREATE DATABASE replica");
    let config = world.pipeline(
        "pg",
        json!({"type": "postgres", "host": "127.0.0.1", "port": world.cluster.port(),
               "user": "postgres", "dbname": "replica", "sslmode": "disable"}),
        json!({"plugin": "pgoutput"}),
    );
    run_ok(&config);
    world.cluster.psql(
        "CREATE TABLE public.b (id int PRIMARY KEY, v text);
         INSERT INTO public.b SELECT g, 'b' || g FROM generate_series(1, 500) g;",
    );
    run_ok(&config);
    world
        .cluster
        .psql("DELETE FROM public.b WHERE id < 50; UPDATE public.b SET v = 'y' WHERE id > 400;");
    run_ok(&config);
    let digest = |database: &str| {
        world.cluster.psql_in(
            database,
            "SELECT count(*) || ' ' || md5(string_agg(t::text, '|' ORDER BY id)) FROM public.b t",
        )
    };
    assert_eq!(digest("postgres"), digest("replica"));
}

/// PostgreSQL → PostgreSQL, a run without end: a new table is copied beside the stream while
/// both tables are written; the target ends equal to the source.
#[test]
fn a_new_table_joins_a_running_postgresql_pipeline() {
    let world = World::new();
    world.cluster.psql("CREATE DATABASE replica");
    let config = world.pipeline(
        "pg",
        json!({"type": "postgres", "host": "127.0.0.1", "port": world.cluster.port(),
               "user": "postgres", "dbname": "replica", "sslmode": "disable"}),
        json!({"plugin": "pgoutput", "table_check_interval": 1}),
    );
    run_ok(&config);
    let running = Running::start(&config, world.dir.path().join("pg-running.log"));
    let log = || running.log();
    world.cluster.psql(
        "CREATE TABLE public.b (id int PRIMARY KEY, v text);
         INSERT INTO public.b SELECT g, 'b' || g FROM generate_series(1, 20000) g;",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writes = writer(&world.cluster, Arc::clone(&stop));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log().contains("the joining tables are copied: streaming starts again") {
        assert!(Instant::now() < deadline, "b never joined:\n{}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    assert!(writes.join().expect("writer") > 0, "the writer wrote");
    world
        .cluster
        .psql("INSERT INTO public.b VALUES (900001, 'last');");
    let deadline = Instant::now() + Duration::from_secs(60);
    while world
        .cluster
        .psql_in("replica", "SELECT count(*) FROM public.b WHERE id = 900001")
        .trim()
        != "1"
    {
        assert!(
            Instant::now() < deadline,
            "b's last insert never streamed:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    running.stop();
    let digest = |database: &str, table: &str| {
        world.cluster.psql_in(
            database,
            &format!("SELECT count(*) || ' ' || md5(string_agg(t::text, '|' ORDER BY id)) FROM public.{table} t"),
        )
    };
    for table in ["t", "b"] {
        assert_eq!(
            digest("postgres", table),
            digest("replica", table),
            "{table}"
        );
    }
    assert_verified(&config);
}

/// A run without end notices a table that joined the selection (`table_check_interval`),
/// stops its stream cleanly, copies the table and streams it, while it keeps running.
#[test]
fn a_running_pipeline_picks_up_a_new_table() {
    let world = World::new();
    let config = world.pipeline(
        "stream",
        json!({"gdn_url": world.streamed.url(), "api_key": KEY}),
        json!({"plugin": "pgoutput", "table_check_interval": 1}),
    );
    run_ok(&config);
    let running = Running::start(&config, world.dir.path().join("running.log"));
    world.cluster.psql(
        "CREATE TABLE public.b (id int PRIMARY KEY, v text);
         INSERT INTO public.b SELECT g, 'b' || g FROM generate_series(1, 2000) g;",
    );
    let http = Http::h1(&world.streamed.url());
    let count = |collection: &str| {
        world
            .runtime
            .block_on(gdnlite_support::document_count(&http, collection))
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while count("b") < 2000 {
        assert!(
            Instant::now() < deadline,
            "the running pipeline never copied b:\n{}",
            running.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    world.cluster.psql(
        "INSERT INTO public.b VALUES (3000, 'streamed'); UPDATE public.t SET v = 'z' WHERE id = 7;",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while count("b") < 2001 {
        assert!(Instant::now() < deadline, "b's later insert never streamed");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A column added with a default while streaming: the stream sees it, the table is copied
    // again, and older rows' documents get the default.
    world.cluster.psql("ALTER TABLE public.t ADD COLUMN d int DEFAULT 3; UPDATE public.t SET v = 'q' WHERE id = 8;");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer =
            world
                .runtime
                .block_on(http.call(Method::GET, &api("document/t/50"), Value::Null));
        if answer.json["d"] == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "older rows never got the default:\n{}",
            running.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // An operator asks the running process to copy t again (a document was lost by hand).
    world
        .runtime
        .block_on(http.call(Method::DELETE, &api("document/t/60"), Value::Null));
    std::fs::write(
        world.dir.path().join("stream.state.json.resnapshot"),
        "public.t\n",
    )
    .expect("write the request");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer =
            world
                .runtime
                .block_on(http.call(Method::GET, &api("document/t/60"), Value::Null));
        if answer.status.is_success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the request was never served:\n{}",
            running.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !world
            .dir
            .path()
            .join("stream.state.json.resnapshot")
            .exists(),
        "the request is taken"
    );
    // SIGTERM: the run flushes, confirms and exits 0.
    running.stop();
    run_ok(&config);
    world.assert_equal_to_a_fresh_copy(&["t", "b"], "a table picked up while running");
}

/// `ADD COLUMN … DEFAULT` writes no row changes: the table is copied again when the stream
/// first sees the column, so older rows' documents get the default too.
fn a_column_added_with_a_default(plugin: &str) {
    let world = World::new();
    let config = world.gdn_pipeline(plugin);
    run_ok(&config);
    world.cluster.psql(
        "ALTER TABLE public.t ADD COLUMN c text DEFAULT 'x', ADD COLUMN n int DEFAULT 7;
         UPDATE public.t SET v = 'after' WHERE id = 3;",
    );
    let log = run_ok(&config);
    assert!(
        log.contains("copied again") || log.contains("copying it again"),
        "{log}"
    );
    world.assert_equal_to_a_fresh_copy(&["t"], "after ADD COLUMN … DEFAULT");
    let documents = world.documents(&world.streamed, &["t"]);
    assert_eq!(
        documents["t"]["50"]["c"], "x",
        "an older row has the default"
    );
    // A column added without a default: older rows are NULL there, and their documents lack
    // the attribute (which GDN reads as null) until they change; no copy again.
    world.cluster.psql("UPDATE public.t SET c = 'y' WHERE id = 4; ALTER TABLE public.t ADD COLUMN plain text; UPDATE public.t SET plain = 'p' WHERE id = 5;");
    let log = run_ok(&config);
    assert!(
        !log.contains("copying it again") && !log.contains("copied again"),
        "{log}"
    );
    let documents = world.documents(&world.streamed, &["t"]);
    assert_eq!(documents["t"]["5"]["plain"], "p");
    assert_eq!(documents["t"]["4"]["c"], "y");
    assert!(documents["t"]["6"].get("plain").is_none());
}

#[test]
fn a_column_added_with_a_default_through_pgoutput() {
    a_column_added_with_a_default("pgoutput");
}

#[test]
fn a_column_added_with_a_default_through_wal2json() {
    a_column_added_with_a_default("wal2json");
}
