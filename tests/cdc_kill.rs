//! pgferry killed with SIGKILL again and again while it streams under a running workload:
//! after every kill, everything the slot was confirmed past is in GDN (the confirmed position
//! is never ahead of GDN), and in the end the collections equal the tables. Through wal2json,
//! and through pgoutput with large transactions streamed in progress and spooled (kills land
//! mid-spool too). A longer loop of the same: `scripts/stress-cdc-kill.sh`.

mod gdnlite_support;
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gdnlite_support::{api, Http, Server, KEY};
use hyper::Method;
use serde_json::{json, Value};
use support::PgCluster;

/// Kill iterations: 20 here, `PGFERRY_KILL_ITERATIONS` for the stress script.
fn iterations() -> usize {
    std::env::var("PGFERRY_KILL_ITERATIONS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(20)
}

/// The output plugin under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plugin {
    Wal2Json,
    /// pgoutput protocol 2 on a server that streams transactions over 64 kB.
    PgOutput,
}

fn write_pipeline(dir: &Path, cluster: &PgCluster, gdn_url: &str, plugin: Plugin) -> PathBuf {
    let plugin = match plugin {
        Plugin::Wal2Json => "wal2json",
        Plugin::PgOutput => "pgoutput",
    };
    let config = json!({
        "source": {
            "host": "127.0.0.1", "port": cluster.port(), "user": "postgres",
            "password": "trust", "dbname": "postgres", "sslmode": "disable",
            "replication_method": "LOG_BASED", "plugin": plugin
        },
        "destination": {"gdn_url": gdn_url, "api_key": KEY, "batch_size_rows": 200},
        "tables": ["public.events", "public.churn"],
        "parallelism": 2,
        "state_file": dir.join("state.json").display().to_string()
    });
    let path = dir.join("pipeline.json");
    std::fs::write(&path, config.to_string()).expect("write pipeline");
    path
}

fn pgferry(config: &Path, once: bool) -> std::process::Child {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pgferry"));
    command.args(["run", "-c"]).arg(config);
    if once {
        command.arg("--once");
    }
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start pgferry")
}

async fn keys(http: &Http, collection: &str) -> BTreeSet<String> {
    gdnlite_support::all_documents(http, collection, false)
        .await
        .into_keys()
        .collect()
}

/// Ids of `events` rows whose inserts the slot has not been confirmed past.
fn unconfirmed_event_ids(cluster: &PgCluster, plugin: Plugin) -> BTreeSet<String> {
    match plugin {
        Plugin::Wal2Json => {
            let lines = cluster.psql(
                "SELECT data FROM pg_logical_slot_peek_changes('macrometa_postgres', NULL, NULL, 'format-version', '2', 'add-tables', 'public.events')",
            );
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
                .collect()
        }
        Plugin::PgOutput => {
            use pgferry::decode::pgoutput::{
                PgOutputDecoder, PgOutputMessage, ProtocolVersion, TupleColumn,
            };
            // Whole transactions (protocol 1) from the SQL interface, decoded by pgferry's
            // own pgoutput decoder: the `events` relation's inserts, first column (`id`).
            let lines = cluster.psql(
                "SELECT encode(data, 'hex') FROM pg_logical_slot_peek_binary_changes('macrometa_postgres', NULL, NULL, 'proto_version', '1', 'publication_names', 'macrometa_postgres')",
            );
            let mut decoder = PgOutputDecoder::new(ProtocolVersion::V1);
            let mut events = None;
            let mut ids = BTreeSet::new();
            for line in lines.lines() {
                let bytes: Vec<u8> = (0..line.len() / 2)
                    .map(|i| u8::from_str_radix(&line[2 * i..2 * i + 2], 16).expect("hex"))
                    .collect();
                let message = decoder
                    .decode(&bytes::Bytes::from(bytes), pgferry::pg::Lsn::ZERO)
                    .expect("pgoutput message");
                match message {
                    PgOutputMessage::Relation(relation) if relation.name == "events" => {
                        events = Some(relation.id);
                    }
                    PgOutputMessage::Insert(insert) if Some(insert.relation_id) == events => {
                        if let Some(TupleColumn::Text(id)) = insert.new.columns.first() {
                            ids.insert(String::from_utf8_lossy(id).into_owned());
                        }
                    }
                    _ => {}
                }
            }
            ids
        }
    }
}

/// Sets the flag when dropped, so the workload thread stops even if an assertion fails.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn sigkill_during_streaming_never_confirms_ahead_of_gdn_and_converges() {
    kill_loop(Plugin::Wal2Json, iterations());
}

#[test]
fn sigkill_during_pgoutput_streaming_with_spooled_transactions_converges() {
    kill_loop(Plugin::PgOutput, iterations().div_ceil(2));
}

fn kill_loop(plugin: Plugin, iterations: usize) {
    // gdnlite and the HTTP checks run on their own runtime; this thread drives processes.
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let cluster = match plugin {
        Plugin::Wal2Json => PgCluster::start_default(),
        Plugin::PgOutput => PgCluster::builder()
            .setting("logical_decoding_work_mem", "64kB")
            .start(),
    };
    if plugin == Plugin::Wal2Json {
        cluster.require_wal2json();
    }
    cluster.psql(
        "CREATE TABLE public.events (id bigserial PRIMARY KEY, v int);
         CREATE TABLE public.churn (id int PRIMARY KEY, v int);
         INSERT INTO public.churn SELECT g, 0 FROM generate_series(1, 100) g;",
    );
    let server = runtime.block_on(Server::start());
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_pipeline(dir.path(), &cluster, &server.url(), plugin);
    let http = runtime.block_on(async { Http::h1(&server.url()) });
    let status = pgferry(&config, true)
        .wait_with_output()
        .expect("first run");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );

    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let workload = scope.spawn(|| {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                cluster.psql(&format!(
                    "SET synchronous_commit = on; -- peek_changes reads only flushed WAL
                     INSERT INTO public.events (v) SELECT g FROM generate_series(1, 40) g;
                     UPDATE public.churn SET v = v + 1 WHERE id % 7 = {};
                     DELETE FROM public.churn WHERE id = {};
                     INSERT INTO public.churn VALUES ({}, {round}) ON CONFLICT (id) DO UPDATE SET v = excluded.v;",
                    round % 7,
                    round % 100 + 1,
                    (round * 13) % 100 + 1,
                ));
                if plugin == Plugin::PgOutput && round % 8 == 0 {
                    // Over 64 kB of changes: streamed while in progress, spooled by pgferry.
                    cluster.psql(
                        "SET synchronous_commit = on;
                         INSERT INTO public.events (v) SELECT g FROM generate_series(1, 3000) g;",
                    );
                }
            }
        });
        let _stop_workload = StopOnDrop(&stop);
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for iteration in 0..iterations {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut child = pgferry(&config, false);
            std::thread::sleep(Duration::from_millis(150 + seed % 600));
            child.kill().expect("SIGKILL pgferry");
            let _ = child.wait();

            // Read the table first, then what the slot still holds: every row committed
            // before the read is either still unconfirmed in the slot or in GDN.
            let table_ids: BTreeSet<String> = cluster
                .psql("SELECT id FROM public.events")
                .lines()
                .map(str::to_owned)
                .collect();
            let unconfirmed = unconfirmed_event_ids(&cluster, plugin);
            let in_gdn = runtime.block_on(keys(&http, "events"));
            let lost: Vec<&String> = table_ids
                .iter()
                .filter(|id| !unconfirmed.contains(*id) && !in_gdn.contains(*id))
                .take(5)
                .collect();
            assert!(
                lost.is_empty(),
                "iteration {iteration}: rows confirmed to PostgreSQL but missing in GDN: {lost:?} (slot at {}, state {}, {} rows, {} unconfirmed, {} in GDN)",
                cluster.psql("SELECT confirmed_flush_lsn FROM pg_replication_slots"),
                std::fs::read_to_string(dir.path().join("state.json")).unwrap_or_default(),
                table_ids.len(),
                unconfirmed.len(),
                in_gdn.len()
            );
        }
        drop(_stop_workload);
        workload.join().expect("workload thread");
    });

    let output = pgferry(&config, true)
        .wait_with_output()
        .expect("final run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table_ids: BTreeSet<String> = cluster
        .psql("SELECT id FROM public.events")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        runtime.block_on(keys(&http, "events")),
        table_ids,
        "events: exactly the table's rows"
    );
    let churn_rows: BTreeSet<String> = cluster
        .psql("SELECT id || ':' || v FROM public.churn")
        .lines()
        .map(str::to_owned)
        .collect();
    let churn_docs = runtime.block_on(async {
        let mut answer = http
            .call(
                Method::POST,
                &api("cursor"),
                json!({"query": "FOR d IN churn RETURN d", "batchSize": 1000}),
            )
            .await;
        let mut churn_docs = BTreeSet::new();
        loop {
            for document in answer.json["result"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                churn_docs.insert(format!("{}:{}", document["id"], document["v"]));
            }
            if answer.json["hasMore"] != json!(true) {
                return churn_docs;
            }
            let id = answer.json["id"].as_str().unwrap_or_default().to_owned();
            answer = http
                .call(Method::PUT, &api(&format!("cursor/{id}")), Value::Null)
                .await;
        }
    });
    assert_eq!(
        churn_docs, churn_rows,
        "churn: every update and delete applied"
    );
}
