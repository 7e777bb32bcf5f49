//! The crash-and-fault matrix, reduced: for each of PostgreSQL → GDN snapshot, PostgreSQL → GDN
//! streaming, tables joining a streaming pipeline, GDN → PostgreSQL, the Singer target and the Singer pipe `tap | target-gdn`, every
//! iteration injects one fault while pgferry works — SIGKILL at a random point (of either side
//! of the pipe), gdnlite SIGKILLed and restarted on its port, PostgreSQL restarted or SIGKILLed,
//! or gdnlite answering with 5xx/429/latency/resets/per-document errors — then lets pgferry
//! finish (the pipe: reruns from the last STATE) and compares the final states exactly (lost,
//! extra and divergent rows must all be 0). Streaming and the pipe also check after every fault
//! that the slot's `confirmed_flush_lsn` never passed data GDN does not hold.
//!
//! `PGFERRY_CHAOS_ITERATIONS` sets the iterations per scenario (default 4, or 5 where a scenario
//! has five faults: each fault once);
//! `PGFERRY_CHAOS_SEED` the random timing. `scripts/chaos.sh` runs many and prints the table
//! from the `CHAOS|…` lines each scenario prints.

mod gdnlite_support;
mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gdnlite_support::{all_documents, api, Http, KEY};
use hyper::Method;
use pgferry::gdnlite::FaultConfig;
use serde_json::{json, Value};
use support::PgCluster;

/// Iterations per scenario: `PGFERRY_CHAOS_ITERATIONS`, by default 4 or enough to inject each
/// of the scenario's faults once.
fn iterations(faults: &[Fault]) -> usize {
    std::env::var("PGFERRY_CHAOS_ITERATIONS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(faults.len().max(4))
}

/// xorshift64*: reproducible timing from `PGFERRY_CHAOS_SEED`.
struct Rng(u64);

impl Rng {
    fn new(scenario: &str) -> Rng {
        let seed = std::env::var("PGFERRY_CHAOS_SEED")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(0x9E37_79B9_7F4A_7C15u64);
        Rng(seed
            ^ scenario.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3)
            }))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

/// The fault an iteration injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// pgferry is SIGKILLed at a random point.
    Kill,
    /// gdnlite is SIGKILLed and started again on its port while pgferry works.
    GdnRestart,
    /// PostgreSQL restarts (fast shutdown) while pgferry works.
    PgRestart,
    /// PostgreSQL is SIGKILLed (postmaster and every server process) while pgferry works, and
    /// started again on its data directory (crash recovery).
    PgKill,
    /// The Singer tap of a `tap | target-gdn` pipe is SIGKILLed at a random point.
    KillTap,
    /// The `target-gdn` of a `tap | target-gdn` pipe is SIGKILLed at a random point, or just
    /// after it echoes a STATE with a new `lsn`.
    KillTarget,
    /// gdnlite answers with 5xx, 429, latency, connection resets and per-document errors.
    Faults,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill -9",
            Fault::GdnRestart => "gdnlite kill -9 + restart",
            Fault::PgRestart => "postgres restart",
            Fault::PgKill => "postgres kill -9 + restart",
            Fault::KillTap => "tap kill -9",
            Fault::KillTarget => "target-gdn kill -9",
            Fault::Faults => "5xx/429/latency/resets/doc errors",
        }
    }
}

/// What gdnlite injects in a [`Fault::Faults`] iteration.
fn injected(seed: u64) -> FaultConfig {
    FaultConfig {
        latency: Duration::from_millis(2),
        error_5xx_rate: 0.05,
        rate_limit_rate: 0.05,
        reset_rate: 0.03,
        document_error_rate: 0.02,
        seed: Some(seed),
    }
}

/// Lost, extra and divergent rows over a scenario's iterations.
#[derive(Default)]
struct Tally {
    iterations: usize,
    lost: usize,
    extra: usize,
    divergent: usize,
    faults: BTreeMap<Fault, usize>,
    /// Evidence that faults landed mid-work, e.g. "resumed mid-stream" → iterations.
    notes: BTreeMap<&'static str, usize>,
    examples: Vec<String>,
}

impl Tally {
    /// Compares what should be there with what is, by key.
    fn compare(
        &mut self,
        what: &str,
        expected: &BTreeMap<String, String>,
        actual: &BTreeMap<String, String>,
    ) {
        for (key, value) in expected {
            match actual.get(key) {
                None => {
                    self.lost += 1;
                    self.example(format!("{what}: {key} lost (expected {value})"));
                }
                Some(found) if found != value => {
                    self.divergent += 1;
                    self.example(format!("{what}: {key} is {found}, expected {value}"));
                }
                Some(_) => {}
            }
        }
        for (key, value) in actual {
            if !expected.contains_key(key) {
                self.extra += 1;
                self.example(format!("{what}: {key} extra ({value})"));
            }
        }
    }

    fn example(&mut self, text: String) {
        if self.examples.len() < 10 {
            self.examples.push(text);
        }
    }

    /// Prints the scenario's `CHAOS|…` line, then fails if anything was lost, extra or divergent.
    fn report(&self, scenario: &str) {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(fault, count)| format!("{} ×{count}", fault.name()))
            .chain(
                self.notes
                    .iter()
                    .map(|(note, count)| format!("({note}: {count})")),
            )
            .collect();
        println!(
            "CHAOS|{scenario}|{}|{}|{}|{}|{}",
            self.iterations,
            self.lost,
            self.extra,
            self.divergent,
            faults.join(", ")
        );
        assert!(
            self.lost == 0 && self.extra == 0 && self.divergent == 0,
            "{scenario}: {} lost, {} extra, {} divergent; e.g. {:#?}",
            self.lost,
            self.extra,
            self.divergent,
            self.examples
        );
    }
}

/// `value` as comparison text: strings bare, null empty, anything else as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Documents of `collection` as `_key` → the `fields` joined with `|`.
fn documents(
    runtime: &tokio::runtime::Runtime,
    http: &Http,
    collection: &str,
    fields: &[&str],
) -> BTreeMap<String, String> {
    runtime
        .block_on(all_documents(http, collection, true))
        .into_iter()
        .map(|(key, document)| {
            let line: Vec<String> = fields.iter().map(|field| text(&document[*field])).collect();
            (key, line.join("|"))
        })
        .collect()
}

/// Rows of a query returning a key (without `|`) and a line (psql's unaligned output separates
/// the two with `|`).
fn rows(cluster: &PgCluster, sql: &str) -> BTreeMap<String, String> {
    cluster
        .psql(sql)
        .lines()
        .filter_map(|line| line.split_once('|'))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

fn pgferry(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pgferry"));
    command.args(args).env("PGFERRY_LOG", "warn");
    command
}

/// Starts `pgferry run -c config` in the background.
fn spawn_run(config: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    pgferry(&["run", "-c"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start pgferry")
}

/// Runs `pgferry run -c config [--once]` to the end; panics with its log if it fails.
fn run_to_end(config: &Path, once: bool, what: &str) {
    let mut command = pgferry(&["run", "-c"]);
    command.arg(config);
    if once {
        command.arg("--once");
    }
    let output = command.output().expect("run pgferry");
    assert!(
        output.status.success(),
        "{what}: pgferry run failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Waits up to `limit` for `child` to exit by itself, then kills it.
fn finish(child: &mut Child, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Restarts PostgreSQL cleanly ([`Fault::PgRestart`]) or crashes it ([`Fault::PgKill`]), down
/// for `down`.
fn disrupt_postgres(cluster: &mut PgCluster, fault: Fault, down: Duration) {
    if fault == Fault::PgKill {
        cluster.kill_and_restart(down);
    } else {
        cluster.restart(down);
    }
}

/// The fault of iteration `index`: each in turn, so a short run still sees every one.
fn fault_of(index: usize, faults: &[Fault]) -> Fault {
    faults[index % faults.len()]
}

/// gdnlite as a process of its own (`pgferry gdnlite`), so it can be SIGKILLed and started
/// again on the same port and data directory, with or without injected faults.
struct GdnProcess {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    faults: FaultConfig,
}

impl GdnProcess {
    fn start() -> GdnProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .expect("a free port");
        let mut gdn = GdnProcess {
            child: None,
            dir: tempfile::tempdir().expect("gdnlite data dir"),
            port,
            faults: FaultConfig::default(),
        };
        gdn.spawn();
        gdn
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("gdnlite.log"))
            .expect("gdnlite log");
        let faults = &self.faults;
        let child = pgferry(&["gdnlite", "--listen"])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--api-key", KEY])
            .args([
                "--fault-latency-ms",
                &faults.latency.as_millis().to_string(),
            ])
            .args(["--fault-5xx-rate", &faults.error_5xx_rate.to_string()])
            .args(["--fault-429-rate", &faults.rate_limit_rate.to_string()])
            .args(["--fault-reset-rate", &faults.reset_rate.to_string()])
            .args([
                "--fault-document-error-rate",
                &faults.document_error_rate.to_string(),
            ])
            .args(["--fault-seed", &faults.seed.unwrap_or(1).to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start gdnlite");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "gdnlite did not come back:\n{}",
                std::fs::read_to_string(self.dir.path().join("gdnlite.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs gdnlite, waits `down`, and starts it again on its port and data directory.
    fn kill_and_restart(&mut self, down: Duration) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
        std::thread::sleep(down);
        self.spawn();
    }

    /// Restarts gdnlite (SIGKILL) with these faults injected.
    fn set_faults(&mut self, faults: FaultConfig) {
        self.faults = faults;
        self.kill_and_restart(Duration::ZERO);
    }
}

impl Drop for GdnProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }
}

#[test]
fn snapshot_pg_to_gdn_survives_every_fault() {
    let scenario = "PG → GDN snapshot";
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let mut cluster = PgCluster::start_default();
    cluster.psql(
        "CREATE TABLE public.snap (id int PRIMARY KEY, v int, note text);
         INSERT INTO public.snap SELECT g, g, repeat('n', g % 50) FROM generate_series(1, 4000) g;",
    );
    let mut server = GdnProcess::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("pipeline.json");
    std::fs::write(
        &config,
        json!({
            "source": {"host": "127.0.0.1", "port": cluster.port(), "user": "postgres",
                       "dbname": "postgres", "sslmode": "disable"},
            "destination": {"gdn_url": server.url(), "api_key": KEY, "batch_size_rows": 250},
            "tables": ["public.snap"], "parallelism": 2
        })
        .to_string(),
    )
    .expect("write pipeline");
    let http = runtime.block_on(async { Http::h1(&server.url()) });
    let log = dir.path().join("run.log");
    let mut rng = Rng::new(scenario);
    let mut tally = Tally::default();
    let all = [
        Fault::Kill,
        Fault::GdnRestart,
        Fault::PgRestart,
        Fault::Faults,
    ];
    for index in 0..iterations(&all) {
        let fault = fault_of(index, &all);
        // New data for this round: changed values and new rows (FULL_TABLE never deletes).
        cluster.psql(&format!(
            "UPDATE public.snap SET v = v + 1, note = note || 'u' WHERE id % 13 = {};
             INSERT INTO public.snap SELECT g, -g, 'new' FROM generate_series({}, {}) g;",
            index % 13,
            4001 + index * 100,
            4100 + index * 100
        ));
        match fault {
            Fault::Kill | Fault::KillTap | Fault::KillTarget => {
                let mut child = spawn_run(&config, &log);
                std::thread::sleep(rng.millis(20, 900));
                kill(&mut child);
            }
            Fault::GdnRestart => {
                let mut child = spawn_run(&config, &log);
                std::thread::sleep(rng.millis(20, 600));
                server.kill_and_restart(rng.millis(100, 1500));
                finish(&mut child, Duration::from_secs(120));
            }
            Fault::PgRestart | Fault::PgKill => {
                let mut child = spawn_run(&config, &log);
                std::thread::sleep(rng.millis(20, 600));
                disrupt_postgres(&mut cluster, fault, rng.millis(50, 800));
                finish(&mut child, Duration::from_secs(120));
            }
            Fault::Faults => server.set_faults(injected(rng.next())),
        }
        // The run that must finish (under the injected faults in a Faults round).
        run_to_end(&config, false, &format!("{scenario}, iteration {index}"));
        if fault == Fault::Faults {
            server.set_faults(FaultConfig::default());
        }
        let expected = rows(
            &cluster,
            "SELECT id, id || '|' || v || '|' || coalesce(note, '') FROM public.snap",
        );
        let actual = documents(&runtime, &http, "snap", &["id", "v", "note"]);
        tally.compare(
            &format!("iteration {index} ({fault:?})"),
            &expected,
            &actual,
        );
        tally.iterations += 1;
        *tally.faults.entry(fault).or_default() += 1;
    }
    tally.report(scenario);
}

/// Ids of `public.ev` rows whose inserts the slot has not been confirmed past (retried while
/// a killed run's walsender still holds the slot).
/// Both streamed tables (`ev`, `ch`) equal their collections, row for row.
fn compare_streamed(
    cluster: &PgCluster,
    runtime: &tokio::runtime::Runtime,
    http: &Http,
    tally: &mut Tally,
    what: &str,
) {
    tally.compare(
        &format!("{what} ev"),
        &rows(cluster, "SELECT id, v FROM public.ev"),
        &documents(runtime, http, "ev", &["v"]),
    );
    tally.compare(
        &format!("{what} ch"),
        &rows(
            cluster,
            "SELECT id, v || '|' || coalesce(note, '') FROM public.ch",
        ),
        &documents(runtime, http, "ch", &["v", "note"]),
    );
}

/// The slot never confirmed past what GDN holds: every row of `public.ev` is either still in
/// the slot (unconfirmed) or in the `ev` collection. The table is read first, then the slot.
/// A row in neither counts as lost; `note` counts the times changes were still unconfirmed.
fn assert_slot_never_ahead(
    cluster: &PgCluster,
    runtime: &tokio::runtime::Runtime,
    http: &Http,
    tally: &mut Tally,
    when: &str,
    note: &'static str,
) {
    let table_ids: Vec<String> = cluster
        .psql("SELECT id FROM public.ev")
        .lines()
        .map(str::to_owned)
        .collect();
    let unconfirmed = unconfirmed_ev_ids(cluster).unwrap_or_default();
    if !unconfirmed.is_empty() {
        *tally.notes.entry(note).or_default() += 1;
    }
    let in_gdn = documents(runtime, http, "ev", &[]);
    for id in table_ids {
        if !unconfirmed.contains(&id) && !in_gdn.contains_key(&id) {
            tally.lost += 1;
            tally.example(format!(
                "{when}: ev {id} confirmed but not in GDN (slot at {})",
                cluster.psql("SELECT confirmed_flush_lsn FROM pg_replication_slots")
            ));
        }
    }
}

fn unconfirmed_ev_ids(cluster: &PgCluster) -> Option<std::collections::BTreeSet<String>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match cluster.try_psql(
            "SELECT data FROM pg_logical_slot_peek_changes('macrometa_postgres', NULL, NULL, 'format-version', '2', 'add-tables', 'public.ev')",
        ) {
            Ok(lines) => {
                return Some(
                    lines
                        .lines()
                        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                        .filter(|change| change["action"] == "I")
                        .filter_map(|change| {
                            change["columns"]
                                .as_array()?
                                .iter()
                                .find(|column| column["name"] == "id")
                                .map(|column| column["value"].to_string())
                        })
                        .collect(),
                )
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(error) => panic!("cannot peek at the slot: {error}"),
        }
    }
}

/// One round of the streaming workload: inserts, updates, deletes and re-inserts.
fn stream_workload(cluster: &PgCluster, round: u64) {
    cluster.psql(&format!(
        "SET synchronous_commit = on; -- peek_changes reads only flushed WAL
         INSERT INTO public.ev (v) SELECT g FROM generate_series(1, 60) g;
         UPDATE public.ch SET v = v + 1, note = note || 'x' WHERE id % 7 = {};
         DELETE FROM public.ch WHERE id = {};
         INSERT INTO public.ch VALUES ({}, {round}, 'r') ON CONFLICT (id) DO UPDATE SET v = excluded.v, note = excluded.note;
         BEGIN; INSERT INTO public.ev (v) SELECT g FROM generate_series(1, 300) g; UPDATE public.ch SET v = -v WHERE id % 11 = {}; COMMIT;",
        round % 7,
        round % 150 + 1,
        (round * 13) % 150 + 1,
        round % 11,
    ));
}

/// A cluster with wal2json and the streaming scenarios' tables: `ev` (inserts, serial key) and
/// `ch` (150 rows the workload updates and deletes).
fn streaming_cluster() -> PgCluster {
    let cluster = PgCluster::start_default();
    cluster.require_wal2json();
    cluster.psql(
        "CREATE TABLE public.ev (id bigserial PRIMARY KEY, v int);
         CREATE TABLE public.ch (id int PRIMARY KEY, v int, note text);
         INSERT INTO public.ch SELECT g, g, 'c' FROM generate_series(1, 150) g;",
    );
    cluster
}

#[test]
fn streaming_pg_to_gdn_never_confirms_ahead_and_converges() {
    let scenario = "PG → GDN streaming";
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let mut cluster = streaming_cluster();
    let mut server = GdnProcess::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("pipeline.json");
    std::fs::write(
        &config,
        json!({
            "source": {"host": "127.0.0.1", "port": cluster.port(), "user": "postgres",
                       "dbname": "postgres", "sslmode": "disable",
                       "replication_method": "LOG_BASED", "max_reconnect_attempts": 0,
                       "plugin": "wal2json"},
            "destination": {"gdn_url": server.url(), "api_key": KEY, "batch_size_rows": 100,
                            "batch_flush_interval": 1},
            "tables": ["public.ev", "public.ch"], "parallelism": 2,
            "state_file": dir.path().join("state.json").display().to_string()
        })
        .to_string(),
    )
    .expect("write pipeline");
    let http = runtime.block_on(async { Http::h1(&server.url()) });
    let log = dir.path().join("run.log");
    run_to_end(&config, true, "first copy");
    let mut rng = Rng::new(scenario);
    let mut tally = Tally::default();
    let all = [
        Fault::Kill,
        Fault::GdnRestart,
        Fault::PgRestart,
        Fault::PgKill,
        Fault::Faults,
    ];
    let mut round = 0u64;
    for index in 0..iterations(&all) {
        let fault = fault_of(index, &all);
        round += 1;
        stream_workload(&cluster, round);
        if fault == Fault::Faults {
            server.set_faults(injected(rng.next()));
        }
        let mut child = spawn_run(&config, &log);
        std::thread::sleep(rng.millis(50, 700));
        round += 1;
        stream_workload(&cluster, round);
        match fault {
            Fault::GdnRestart => {
                server.kill_and_restart(rng.millis(100, 1500));
            }
            Fault::PgRestart | Fault::PgKill => {
                disrupt_postgres(&mut cluster, fault, rng.millis(50, 800))
            }
            Fault::Kill | Fault::KillTap | Fault::KillTarget | Fault::Faults => {}
        }
        round += 1;
        stream_workload(&cluster, round);
        std::thread::sleep(rng.millis(0, 900));
        kill(&mut child);
        if fault == Fault::Faults {
            server.set_faults(FaultConfig::default());
        }
        // The slot never confirmed past what GDN holds: every row is either still in the slot
        // (unconfirmed) or in GDN. The table is read first, then the slot.
        assert_slot_never_ahead(
            &cluster,
            &runtime,
            &http,
            &mut tally,
            &format!("iteration {index} ({fault:?})"),
            "killed with changes unconfirmed",
        );
        // Then it catches up, and both tables equal their collections.
        run_to_end(&config, true, &format!("{scenario}, iteration {index}"));
        let what = format!("iteration {index} ({fault:?})");
        compare_streamed(&cluster, &runtime, &http, &mut tally, &what);
        tally.iterations += 1;
        *tally.faults.entry(fault).or_default() += 1;
    }
    tally.report(scenario);
}

/// Tables joining a running pipeline under faults: each iteration creates a table (rows and
/// writes before pgferry sees it) that matches `filter_schemas`, starts a run that must copy it
/// while the others stream, injects a fault during that copy or its stream, then lets a run
/// finish: every table equals its collection.
#[test]
fn tables_joining_a_streaming_pipeline_survive_every_fault() {
    let scenario = "PG → GDN tables joining";
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let mut cluster = streaming_cluster();
    let mut server = GdnProcess::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("pipeline.json");
    std::fs::write(
        &config,
        json!({
            "source": {"host": "127.0.0.1", "port": cluster.port(), "user": "postgres",
                       "dbname": "postgres", "sslmode": "disable", "filter_schemas": "public",
                       "replication_method": "LOG_BASED", "max_reconnect_attempts": 0,
                       "table_check_interval": 1},
            "destination": {"gdn_url": server.url(), "api_key": KEY, "batch_size_rows": 100,
                            "batch_flush_interval": 1},
            "parallelism": 2,
            "state_file": dir.path().join("state.json").display().to_string()
        })
        .to_string(),
    )
    .expect("write pipeline");
    let http = runtime.block_on(async { Http::h1(&server.url()) });
    let log = dir.path().join("run.log");
    run_to_end(&config, true, "first copy");
    let mut rng = Rng::new(scenario);
    let mut tally = Tally::default();
    let all = [
        Fault::Kill,
        Fault::GdnRestart,
        Fault::PgRestart,
        Fault::PgKill,
        Fault::Faults,
    ];
    let mut round = 0u64;
    let mut joined: Vec<String> = Vec::new();
    for index in 0..iterations(&all) {
        let fault = fault_of(index, &all);
        let table = format!("j{index}");
        cluster.psql(&format!(
            "CREATE TABLE public.{table} (id int PRIMARY KEY, v int);
             INSERT INTO public.{table} SELECT g, g FROM generate_series(1, {}) g;",
            5_000 + rng.next() % 20_000
        ));
        joined.push(table.clone());
        if fault == Fault::Faults {
            server.set_faults(injected(rng.next()));
        }
        let mut child = spawn_run(&config, &log);
        round += 1;
        stream_workload(&cluster, round);
        cluster.psql(&format!(
            "UPDATE public.{table} SET v = -v WHERE id % 13 = {round} % 13;
             DELETE FROM public.{table} WHERE id % 17 = 0;
             INSERT INTO public.{table} VALUES ({}, 1) ON CONFLICT (id) DO NOTHING;",
            100_000 + round
        ));
        std::thread::sleep(rng.millis(50, 900));
        match fault {
            Fault::GdnRestart => server.kill_and_restart(rng.millis(100, 1500)),
            Fault::PgRestart | Fault::PgKill => {
                disrupt_postgres(&mut cluster, fault, rng.millis(50, 800))
            }
            Fault::Kill | Fault::KillTap | Fault::KillTarget | Fault::Faults => {}
        }
        std::thread::sleep(rng.millis(0, 900));
        kill(&mut child);
        if fault == Fault::Faults {
            server.set_faults(FaultConfig::default());
        }
        run_to_end(&config, true, &format!("{scenario}, iteration {index}"));
        let what = format!("iteration {index} ({fault:?})");
        compare_streamed(&cluster, &runtime, &http, &mut tally, &what);
        for table in &joined {
            tally.compare(
                &format!("{what} {table}"),
                &rows(&cluster, &format!("SELECT id, v FROM public.{table}")),
                &documents(&runtime, &http, table, &["v"]),
            );
        }
        tally.iterations += 1;
        *tally.faults.entry(fault).or_default() += 1;
    }
    tally.report(scenario);
}

/// Sends `body` until gdnlite takes all of it (faults may refuse whole requests or single
/// documents); "not found" on a delete is done.
fn write_until_done(
    runtime: &tokio::runtime::Runtime,
    http: &Http,
    method: Method,
    path: &str,
    body: Value,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = runtime.block_on(http.try_call_json(method.clone(), path, body.clone()));
        if let Ok((status, json)) = &answer {
            let refused = json.as_array().is_some_and(|entries| {
                entries
                    .iter()
                    .any(|entry| entry["error"] == json!(true) && entry["errorNum"] != json!(1202))
            });
            if (200..300).contains(status) && !refused {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "gdnlite kept refusing {path}: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One round of writes into the `orders` collection: upserts and deletes of random keys.
fn gdn_workload(runtime: &tokio::runtime::Runtime, http: &Http, rng: &mut Rng, round: u64) {
    let documents: Vec<Value> = (0..80)
        .map(|_| {
            let key = 1 + rng.below(600);
            json!({"_key": key.to_string(), "v": round * 1000 + key, "note": format!("r{round}")})
        })
        .collect();
    write_until_done(
        runtime,
        http,
        Method::POST,
        &api("document/orders?overwrite=true&waitForSync=true"),
        Value::Array(documents),
    );
    let keys: Vec<String> = (0..15).map(|_| (1 + rng.below(600)).to_string()).collect();
    write_until_done(
        runtime,
        http,
        Method::DELETE,
        &api("document/orders?waitForSync=true"),
        json!(keys),
    );
}

#[test]
fn gdn_to_pg_survives_every_fault() {
    let scenario = "GDN → PG";
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let mut cluster = PgCluster::start_default();
    let mut server = GdnProcess::start();
    let http = runtime.block_on(async { Http::h1(&server.url()) });
    runtime
        .block_on(http.call(
            Method::POST,
            &api("collection"),
            json!({"name": "orders", "type": 2}),
        ))
        .assert_ok(200);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("pipeline.json");
    std::fs::write(
        &config,
        json!({
            "source": {"type": "gdn", "gdn_url": server.url(), "api_key": KEY,
                       "source_collection": "orders", "cursor_batch_size": 100},
            "destination": {"type": "postgres", "host": "127.0.0.1", "port": cluster.port(),
                            "user": "postgres", "dbname": "postgres", "sslmode": "disable",
                            "batch_size_rows": 50, "batch_flush_interval": 0.1},
            "state_file": dir.path().join("state.json").display().to_string()
        })
        .to_string(),
    )
    .expect("write pipeline");
    let log = dir.path().join("run.log");
    let mut rng = Rng::new(scenario);
    gdn_workload(&runtime, &http, &mut rng, 0);
    let mut tally = Tally::default();
    let all = [
        Fault::Kill,
        Fault::GdnRestart,
        Fault::PgRestart,
        Fault::PgKill,
        Fault::Faults,
    ];
    let mut round = 0;
    for index in 0..iterations(&all) {
        let fault = fault_of(index, &all);
        round += 1;
        gdn_workload(&runtime, &http, &mut rng, round);
        if fault == Fault::Faults {
            server.set_faults(injected(rng.next()));
        }
        let mut child = spawn_run(&config, &log);
        std::thread::sleep(rng.millis(50, 700));
        round += 1;
        gdn_workload(&runtime, &http, &mut rng, round);
        match fault {
            Fault::GdnRestart => {
                server.kill_and_restart(rng.millis(100, 1500));
            }
            Fault::PgRestart | Fault::PgKill => {
                disrupt_postgres(&mut cluster, fault, rng.millis(50, 800))
            }
            Fault::Kill | Fault::KillTap | Fault::KillTarget | Fault::Faults => {}
        }
        round += 1;
        gdn_workload(&runtime, &http, &mut rng, round);
        std::thread::sleep(rng.millis(0, 900));
        kill(&mut child);
        if fault == Fault::Faults {
            server.set_faults(FaultConfig::default());
        }
        run_to_end(&config, true, &format!("{scenario}, iteration {index}"));
        tally.compare(
            &format!("iteration {index} ({fault:?})"),
            &documents(&runtime, &http, "orders", &["v", "note"]),
            &rows(
                &cluster,
                "SELECT \"_key\", v || '|' || coalesce(note, '') FROM public.orders",
            ),
        );
        tally.iterations += 1;
        *tally.faults.entry(fault).or_default() += 1;
    }
    tally.report(scenario);
}

/// Singer lines of one round and the state each key of each stream ends in.
struct SingerRound {
    lines: Vec<String>,
}

const SINGER_STREAMS: [&str; 2] = ["items", "parts"];

fn singer_schema(stream: &str) -> String {
    json!({"type": "SCHEMA", "stream": format!("public-{stream}"), "key_properties": ["id"],
           "schema": {"properties": {
               "id": {"type": ["integer"]}, "v": {"type": ["null", "integer"]},
               "note": {"type": ["null", "string"]},
               "_sdc_deleted_at": {"type": ["null", "string"], "format": "date-time"}}}})
    .to_string()
}

/// 1,200 records over two streams (10% deletes), a STATE after every 40 lines whose value is
/// the number of lines before it; `model` receives every record in order.
fn singer_round(
    rng: &mut Rng,
    round: u64,
    model: &mut BTreeMap<&'static str, BTreeMap<String, String>>,
) -> SingerRound {
    let mut lines: Vec<String> = SINGER_STREAMS.iter().map(|s| singer_schema(s)).collect();
    for index in 0..1200u64 {
        let stream = SINGER_STREAMS[usize::from(rng.below(2) == 1)];
        let id = 1 + rng.below(300);
        let rows = model.entry(stream).or_default();
        if rng.below(10) == 0 {
            lines.push(
                json!({"type": "RECORD", "stream": format!("public-{stream}"),
                       "record": {"id": id, "_sdc_deleted_at": "2024-01-01T00:00:00Z"}})
                .to_string(),
            );
            rows.remove(&id.to_string());
        } else {
            let v = round * 10_000 + index;
            let note = format!("r{round}-{index}");
            lines.push(
                json!({"type": "RECORD", "stream": format!("public-{stream}"),
                       "record": {"id": id, "v": v, "note": note, "_sdc_deleted_at": null}})
                .to_string(),
            );
            rows.insert(id.to_string(), format!("{v}|{note}"));
        }
        if lines.len() % 40 == 0 {
            let position = lines.len();
            lines.push(json!({"type": "STATE", "value": {"position": position}}).to_string());
        }
    }
    let position = lines.len();
    lines.push(json!({"type": "STATE", "value": {"position": position}}).to_string());
    SingerRound { lines }
}

/// Starts `pgferry target`, feeding `lines` at a steady pace from a thread.
fn spawn_target(config: &Path, lines: Vec<String>) -> (Child, std::thread::JoinHandle<()>) {
    let mut child = pgferry(&["target", "-c"])
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pgferry target");
    let mut stdin = child.stdin.take().expect("stdin");
    let feeder = std::thread::spawn(move || {
        // About 1.2 s for a round: the faults land while it loads.
        for chunk in lines.chunks(10) {
            let mut text = chunk.join("\n");
            text.push('\n');
            if stdin.write_all(text.as_bytes()).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    (child, feeder)
}

/// The position of the last STATE a target printed (`None`: none yet).
fn last_state(stdout: &[u8]) -> Option<usize> {
    stdout
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
        .filter_map(|value| value["position"].as_u64())
        .last()
        .and_then(|position| usize::try_from(position).ok())
}

fn singer_target_config(dir: &Path, cluster: &PgCluster) -> PathBuf {
    let config = dir.join("target.json");
    std::fs::write(
        &config,
        json!({"host": "127.0.0.1", "port": cluster.port(), "user": "postgres",
               "dbname": "postgres", "sslmode": "disable", "default_target_schema": "singer",
               "hard_delete": true, "batch_size_rows": 100, "batch_flush_interval": 1})
        .to_string(),
    )
    .expect("write target config");
    config
}

#[test]
fn singer_target_resumes_from_its_last_state_after_every_fault() {
    let scenario = "Singer target";
    let mut cluster = PgCluster::start_default();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = singer_target_config(dir.path(), &cluster);
    let mut rng = Rng::new(scenario);
    let mut model: BTreeMap<&'static str, BTreeMap<String, String>> = BTreeMap::new();
    let mut tally = Tally::default();
    let all = [Fault::Kill, Fault::PgRestart, Fault::PgKill];
    for index in 0..iterations(&all) {
        let fault = fault_of(index, &all);
        let round = singer_round(&mut rng, index as u64 + 1, &mut model);
        let (mut child, feeder) = spawn_target(&config, round.lines.clone());
        std::thread::sleep(rng.millis(50, 1300));
        if fault == Fault::Kill {
            let _ = child.kill();
        } else {
            disrupt_postgres(&mut cluster, fault, rng.millis(50, 600));
        }
        let output = {
            let deadline = Instant::now() + Duration::from_secs(120);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            child.wait_with_output().expect("target output")
        };
        let _ = feeder.join();
        // A tap resumes after the last STATE the target printed: SCHEMAs, then what followed.
        let from = last_state(&output.stdout).map_or(0, |position| position + 1);
        eprintln!(
            "{scenario}, iteration {index} ({fault:?}): resumed at line {from} of {}",
            round.lines.len()
        );
        if from > 0 && from < round.lines.len() {
            *tally.notes.entry("resumed mid-stream").or_default() += 1;
        }
        let mut rest: Vec<String> = SINGER_STREAMS.iter().map(|s| singer_schema(s)).collect();
        rest.extend(round.lines[from.min(round.lines.len())..].iter().cloned());
        let (child, feeder) = spawn_target(&config, rest);
        let output = child.wait_with_output().expect("resumed target");
        let _ = feeder.join();
        assert!(
            output.status.success(),
            "{scenario}, iteration {index}: the resumed target failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        for stream in SINGER_STREAMS {
            tally.compare(
                &format!("iteration {index} ({fault:?}) {stream}"),
                model.get(stream).unwrap_or(&BTreeMap::new()),
                &rows(
                    &cluster,
                    &format!("SELECT id, v || '|' || coalesce(note, '') FROM singer.{stream}"),
                ),
            );
        }
        tally.iterations += 1;
        *tally.faults.entry(fault).or_default() += 1;
    }
    tally.report(scenario);
}

/// `pgferry tap | pgferry target-gdn`: two processes joined by a pipe, as an orchestrator runs
/// them; the target's stdout (the STATE lines) goes to a file.
struct SingerPipe {
    tap: Child,
    target: Child,
    states: PathBuf,
}

/// The files of the Singer pipe scenario.
struct PipeFiles {
    tap: PathBuf,
    catalog: PathBuf,
    target: PathBuf,
    /// The last STATE the target echoed (what an orchestrator saves); absent before the first.
    state: PathBuf,
    log: PathBuf,
}

impl PipeFiles {
    /// Starts `pgferry tap -c … -p … [-s state] | pgferry target-gdn -c …`.
    fn spawn(&self, run: usize) -> SingerPipe {
        let log = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .expect("pipe log")
        };
        let mut tap = pgferry(&["tap", "-c"]);
        tap.arg(&self.tap).arg("-p").arg(&self.catalog);
        if self.state.exists() {
            tap.arg("-s").arg(&self.state);
        }
        let mut tap = tap
            .stdout(Stdio::piped())
            .stderr(log())
            .spawn()
            .expect("start pgferry tap");
        let states = self.log.with_file_name(format!("states-{run}.jsonl"));
        let target = pgferry(&["target-gdn", "-c"])
            .arg(&self.target)
            .stdin(tap.stdout.take().expect("tap stdout"))
            .stdout(std::fs::File::create(&states).expect("states file"))
            .stderr(log())
            .spawn()
            .expect("start pgferry target-gdn");
        SingerPipe {
            tap,
            target,
            states,
        }
    }

    /// Waits up to `limit` for both sides (killing what is left), saves the last STATE the
    /// target echoed as the next run's state; returns whether both exited 0, whether a STATE
    /// came, and how long each side ran (about: from now, for the tap and the target).
    fn finish(&self, mut pipe: SingerPipe, limit: Duration) -> (bool, bool, [Duration; 2]) {
        let started = Instant::now();
        let deadline = started + limit;
        let mut took = [Duration::ZERO; 2];
        for (child, took) in [&mut pipe.tap, &mut pipe.target].into_iter().zip(&mut took) {
            finish(child, deadline.saturating_duration_since(Instant::now()));
            *took = started.elapsed();
        }
        let succeeded = [&mut pipe.tap, &mut pipe.target]
            .into_iter()
            .all(|child| matches!(child.wait(), Ok(status) if status.success()));
        // A line cut by a kill does not parse: the last whole one counts.
        let last = std::fs::read_to_string(&pipe.states)
            .unwrap_or_default()
            .lines()
            .rev()
            .find(|line| serde_json::from_str::<Value>(line).is_ok())
            .map(str::to_owned);
        if let Some(state) = &last {
            std::fs::write(&self.state, state).expect("save the state");
        }
        (succeeded, last.is_some(), took)
    }

    /// The `lsn` bookmark of `stream` in the saved state.
    fn saved_lsn(&self, stream: &str) -> Option<u64> {
        last_lsn(
            &std::fs::read_to_string(&self.state).unwrap_or_default(),
            stream,
        )
    }

    /// Whether the saved state says the LOG_BASED copy of `stream` is done (an `lsn` and no
    /// `xmin` bookmark): from then on its rows are either in GDN or still in the slot.
    fn copied(&self, stream: &str) -> bool {
        let state: Value = std::fs::read_to_string(&self.state)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or(Value::Null);
        let bookmark = &state["bookmarks"][stream];
        bookmark["lsn"].is_u64() && bookmark["xmin"].is_null()
    }
}

/// The `lsn` bookmark of `stream` in the last whole STATE line of `states`.
fn last_lsn(states: &str, stream: &str) -> Option<u64> {
    states
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<Value>(line).ok())
        .and_then(|state| state["bookmarks"][stream]["lsn"].as_u64())
}

/// Waits until the target echoes a STATE whose `lsn` for `stream` differs from `saved` (the
/// moment it promised new progress), or exits, or a minute passes.
fn await_new_lsn(pipe: &mut SingerPipe, stream: &str, saved: Option<u64>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && matches!(pipe.target.try_wait(), Ok(None)) {
        let echoed = last_lsn(
            &std::fs::read_to_string(&pipe.states).unwrap_or_default(),
            stream,
        );
        if echoed.is_some() && echoed != saved {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// The Singer pipe's FULL_TABLE stream changes: updated values and new rows (a FULL_TABLE sync
/// never deletes).
fn full_table_workload(cluster: &PgCluster, round: u64) {
    cluster.psql(&format!(
        "UPDATE public.sf SET v = v + 1, note = note || 'u' WHERE id % 17 = {};
         INSERT INTO public.sf SELECT g, -g, 'new' FROM generate_series({}, {}) g;",
        round % 17,
        3001 + round * 50,
        3050 + round * 50
    ));
}

#[test]
fn singer_tap_into_target_gdn_resumes_from_its_last_state_after_every_fault() {
    let scenario = "Singer tap → target-gdn";
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let mut cluster = streaming_cluster();
    cluster.psql(
        "CREATE TABLE public.sf (id int PRIMARY KEY, v int, note text);
         INSERT INTO public.ev (v) SELECT g FROM generate_series(1, 2000) g;
         INSERT INTO public.sf SELECT g, g, repeat('n', g % 40) FROM generate_series(1, 3000) g;",
    );
    let mut server = GdnProcess::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, value: Value| {
        let path = dir.path().join(name);
        std::fs::write(&path, value.to_string()).expect("write config");
        path
    };
    let stream = |id: &str, method: &str| {
        json!({"tap_stream_id": id, "metadata": [{"breadcrumb": [],
               "metadata": {"selected": true, "replication-method": method}}]})
    };
    let files = PipeFiles {
        tap: write(
            "tap.json",
            json!({"host": "127.0.0.1", "port": cluster.port(), "user": "postgres",
                   "dbname": "postgres", "sslmode": "disable", "filter_schemas": "public",
                   "replication_method": "LOG_BASED", "plugin": "wal2json"}),
        ),
        catalog: write(
            "catalog.json",
            json!({"streams": [stream("public-ev", "LOG_BASED"), stream("public-ch", "LOG_BASED"),
                               stream("public-sf", "FULL_TABLE")]}),
        ),
        target: write(
            "target.json",
            json!({"gdn_url": server.url(), "api_key": KEY, "batch_size_rows": 100,
                   "batch_flush_interval": 1, "batch_flush_min_time_gap": 0}),
        ),
        state: dir.path().join("state.json"),
        log: dir.path().join("pipe.log"),
    };
    let http = runtime.block_on(async { Http::h1(&server.url()) });
    let mut rng = Rng::new(scenario);
    let mut tally = Tally::default();
    let all = [
        Fault::KillTap,
        Fault::KillTarget,
        Fault::GdnRestart,
        Fault::PgRestart,
        Fault::Faults,
    ];
    let mut round = 0u64;
    let mut runs = 0usize;
    // How long the tap and the target ran in the last clean run without injected faults: a
    // fault lands at a random point of the run of the side it hits.
    let mut run_time = [Duration::from_millis(900); 2];
    for index in 0..iterations(&all) {
        let fault = fault_of(index, &all);
        let streaming = files.copied("public-ev");
        round += 1;
        stream_workload(&cluster, round);
        full_table_workload(&cluster, round);
        if fault == Fault::Faults {
            server.set_faults(injected(rng.next()));
        }
        runs += 1;
        let mut pipe = files.spawn(runs);
        // Half the target's kills land at a random point, half at the most dangerous instant:
        // right after it promised new streaming progress (a STATE with a new `lsn`), when the
        // records before that STATE must already be in GDN.
        let after_promise = fault == Fault::KillTarget && rng.below(2) == 0;
        // The tap reads PostgreSQL, the target writes GDN.
        let side = usize::from(matches!(
            fault,
            Fault::KillTarget | Fault::GdnRestart | Fault::Faults
        ));
        if !after_promise {
            let within = u64::try_from(run_time[side].as_millis()).unwrap_or(u64::MAX);
            std::thread::sleep(rng.millis(10, within.max(20)));
        }
        let running =
            [&mut pipe.tap, &mut pipe.target].map(|child| matches!(child.try_wait(), Ok(None)));
        if running[side] && fault != Fault::Faults {
            *tally.notes.entry("fault while its side ran").or_default() += 1;
        }
        match fault {
            Fault::KillTap => kill(&mut pipe.tap),
            Fault::KillTarget => {
                if after_promise
                    && await_new_lsn(&mut pipe, "public-ev", files.saved_lsn("public-ev"))
                {
                    *tally
                        .notes
                        .entry("target killed just after a new lsn")
                        .or_default() += 1;
                }
                kill(&mut pipe.target);
            }
            Fault::GdnRestart => server.kill_and_restart(rng.millis(100, 1500)),
            Fault::PgRestart | Fault::PgKill => {
                disrupt_postgres(&mut cluster, fault, rng.millis(50, 800))
            }
            Fault::Kill | Fault::Faults => {}
        }
        // Changes while it runs (a LOG_BASED run stops at the WAL position it read at start:
        // these are for the next run).
        round += 1;
        stream_workload(&cluster, round);
        full_table_workload(&cluster, round);
        let (succeeded, stated, _) = files.finish(pipe, Duration::from_secs(120));
        eprintln!(
            "{scenario}, iteration {index} ({fault:?}{}): run {}, a STATE came: {stated} (the last clean run: tap, target {:?} ms)",
            if after_promise {
                ", just after a new lsn"
            } else {
                ""
            },
            if succeeded { "ended cleanly" } else { "failed" },
            run_time.map(|took| took.as_millis())
        );
        if !succeeded && stated {
            *tally
                .notes
                .entry("resumed from a mid-run STATE")
                .or_default() += 1;
        }
        if fault == Fault::Faults {
            // Reads of the check below must not meet the faults.
            server.set_faults(FaultConfig::default());
        }
        // The tap confirms the slot only up to the state the target echoed: every row of the
        // insert-only table is either in GDN or still unconfirmed in the slot.
        if streaming {
            assert_slot_never_ahead(
                &cluster,
                &runtime,
                &http,
                &mut tally,
                &format!("iteration {index} ({fault:?})"),
                "changes left unconfirmed in the slot",
            );
        }
        // The orchestrator runs the pipe again from the last STATE until a run ends cleanly
        // (under the injected faults in a Faults round).
        if fault == Fault::Faults {
            server.set_faults(injected(rng.next()));
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            runs += 1;
            let logged = std::fs::metadata(&files.log).map_or(0, |file| file.len());
            let pipe = files.spawn(runs);
            let (succeeded, _, took) = files.finish(pipe, Duration::from_secs(180));
            if succeeded {
                if fault != Fault::Faults {
                    run_time = took;
                }
                break;
            }
            let log = std::fs::read(&files.log).unwrap_or_default();
            eprintln!(
                "{scenario}, iteration {index} ({fault:?}): rerun {attempts} failed:\n{}",
                String::from_utf8_lossy(log.get(logged as usize..).unwrap_or_default())
            );
            assert!(
                attempts < 10,
                "{scenario}, iteration {index}: 10 runs failed in a row:\n{}",
                std::fs::read_to_string(&files.log).unwrap_or_default()
            );
        }
        if attempts > 1 {
            *tally
                .notes
                .entry("runs that failed and were rerun")
                .or_default() += attempts - 1;
        }
        if fault == Fault::Faults {
            server.set_faults(FaultConfig::default());
        }
        let what = format!("iteration {index} ({fault:?})");
        compare_streamed(&cluster, &runtime, &http, &mut tally, &what);
        tally.compare(
            &format!("{what} sf"),
            &rows(
                &cluster,
                "SELECT id, v || '|' || coalesce(note, '') FROM public.sf",
            ),
            &documents(&runtime, &http, "sf", &["v", "note"]),
        );
        tally.iterations += 1;
        *tally.faults.entry(fault).or_default() += 1;
    }
    tally.report(scenario);
}
