//! `pgferry run` as a process: killed with SIGKILL mid-copy and started again it still ends in
//! an exact copy; its peak memory does not grow with the table.

mod gdnlite_support;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use gdnlite_support::{api, Http, Server, KEY};
use hyper::Method;
use serde_json::{json, Value};
use support::{peak_rss_mb, run_to_completion, PgCluster};

fn write_pipeline(dir: &Path, cluster: &PgCluster, gdn_url: &str) -> PathBuf {
    let config = json!({
        "source": {
            "host": "127.0.0.1", "port": cluster.port(), "user": "postgres",
            "password": "trust", "dbname": "postgres", "sslmode": "disable"
        },
        "destination": {"gdn_url": gdn_url, "api_key": KEY, "batch_size_rows": 1000, "max_in_flight": 4},
        "tables": ["public.events"],
        "parallelism": 2
    });
    let path = dir.join("pipeline.json");
    std::fs::write(&path, config.to_string()).expect("write pipeline");
    path
}

fn fill(cluster: &PgCluster, rows: u64) {
    cluster.psql(&format!(
        "DROP TABLE IF EXISTS public.events;
         CREATE TABLE public.events (id bigint PRIMARY KEY, body text, amount numeric(12,2));
         INSERT INTO public.events SELECT g, md5(g::text), (g % 100000) / 100.0 FROM generate_series(1, {rows}) g;"
    ));
}

async fn count(http: &Http) -> u64 {
    gdnlite_support::document_count(http, "events")
        .await
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_copy_and_restarted_the_collection_equals_the_table() {
    const ROWS: u64 = 150_000;
    let cluster = PgCluster::start_default();
    fill(&cluster, ROWS);
    let server = Server::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_pipeline(dir.path(), &cluster, &server.url());
    let http = Http::h1(&server.url());

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["run", "-c"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start pgferry");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let copied = count(&http).await;
        if copied >= ROWS / 10 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the copy never got going"
        );
        assert!(
            child.try_wait().expect("child status").is_none(),
            "pgferry finished before it could be killed; raise ROWS"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("SIGKILL pgferry");
    child.wait().expect("reap pgferry");
    let partial = count(&http).await;
    assert!(
        partial < ROWS,
        "killed mid-copy ({partial} of {ROWS} documents)"
    );

    // Rows changed while pgferry was down are picked up by the re-run too.
    cluster.psql("UPDATE public.events SET body = 'changed' WHERE id % 1000 = 0");
    let summary = run_to_completion(&config);
    assert!(
        summary.contains(&format!("public.events: {ROWS} rows")),
        "{summary}"
    );
    assert_eq!(count(&http).await, ROWS, "no duplicates, nothing missing");
    let changed = http
        .call(Method::GET, &api("document/events/5000"), Value::Null)
        .await;
    assert_eq!(changed.json["body"], json!("changed"), "{:?}", changed.json);
    let untouched = http
        .call(Method::GET, &api("document/events/5001"), Value::Null)
        .await;
    assert_eq!(untouched.json["amount"], json!(50.01));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_memory_stays_flat_from_100k_to_2m_rows() {
    let cluster = PgCluster::start_default();
    let server = Server::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_pipeline(dir.path(), &cluster, &server.url());

    fill(&cluster, 100_000);
    let small = peak_rss_mb(&run_to_completion(&config));
    fill(&cluster, 2_000_000);
    let large_summary = run_to_completion(&config);
    assert!(
        large_summary.contains("public.events: 2000000 rows"),
        "{large_summary}"
    );
    let large = peak_rss_mb(&large_summary);
    assert!(
        large < small * 1.5 + 32.0,
        "peak RSS grew from {small} MB (100k rows) to {large} MB (2M rows)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_based_copy_killed_mid_way_resumes_at_the_first_chunk_not_done() {
    const ROWS: u64 = 400_000;
    let cluster = PgCluster::start_default();
    cluster.require_wal2json();
    fill(&cluster, ROWS);
    let server = Server::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state.json");
    let config = dir.path().join("pipeline.json");
    std::fs::write(
        &config,
        json!({
            "source": {
                "host": "127.0.0.1", "port": cluster.port(), "user": "postgres",
                "password": "trust", "dbname": "postgres", "sslmode": "disable",
                "replication_method": "LOG_BASED"
            },
            "destination": {"gdn_url": server.url(), "api_key": KEY, "batch_size_rows": 1000, "max_in_flight": 2},
            "tables": ["public.events"],
            "parallelism": 1,
            "state_file": state.display().to_string()
        })
        .to_string(),
    )
    .expect("write pipeline");

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["run", "--once", "-c"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start pgferry");
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let recorded: Value = std::fs::read_to_string(&state)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or(Value::Null);
        let done = recorded["chunks"]["public.events"]["done"]
            .as_array()
            .map_or(0, Vec::len);
        if done >= 1 {
            break;
        }
        assert!(
            child.try_wait().expect("status").is_none(),
            "the copy finished before a kill; raise ROWS"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no chunk was ever recorded as done"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("SIGKILL pgferry");
    child.wait().expect("reap pgferry");

    // Changes while pgferry is down, also in the part already copied.
    cluster.psql(
        "UPDATE public.events SET body = 'changed' WHERE id % 1000 = 1;
         DELETE FROM public.events WHERE id BETWEEN 100 AND 199;
         INSERT INTO public.events VALUES (9000001, 'late', 1.00);",
    );
    let summary = run_to_completion(&config);
    let copied: u64 = summary
        .lines()
        .find_map(|line| line.strip_prefix("public.events: "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|rows| rows.parse().ok())
        .unwrap_or_else(|| panic!("no row count in:\n{summary}"));
    assert!(
        copied < ROWS,
        "the resumed copy skipped the chunks already done ({copied} rows copied)\n{summary}"
    );

    let http = Http::h1(&server.url());
    assert_eq!(
        count(&http).await,
        ROWS - 100 + 1,
        "every row once, deletes applied"
    );
    let changed = http
        .call(Method::GET, &api("document/events/1001"), Value::Null)
        .await;
    assert_eq!(changed.json["body"], json!("changed"));
    let deleted = http
        .call(Method::GET, &api("document/events/150"), Value::Null)
        .await;
    assert_eq!(deleted.status.as_u16(), 404);
    let state_after: Value =
        serde_json::from_str(&std::fs::read_to_string(&state).expect("state")).expect("json");
    assert_eq!(state_after["snapshot_done"], json!(true));
    assert!(
        state_after.get("chunks").is_none(),
        "chunk progress is cleared once the copy is done"
    );
}
