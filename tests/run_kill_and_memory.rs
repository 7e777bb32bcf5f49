//! `pgferry run` as a process: killed with SIGKILL mid-copy and started again it still ends in
//! an exact copy; its peak memory does not grow with the table.

mod gdnlite_support;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use gdnlite_support::{api, Http, Server, KEY};
use hyper::Method;
use serde_json::{json, Value};
use support::PgCluster;

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
    let answer = http
        .call(Method::GET, &api("collection/events/count"), Value::Null)
        .await;
    answer.json["count"].as_u64().unwrap_or(0)
}

/// Runs `pgferry run` to completion; returns its summary output.
fn run_to_completion(config: &Path) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["run", "-c"])
        .arg(config)
        .output()
        .expect("run pgferry");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "pgferry run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
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

fn peak_rss_mb(summary: &str) -> f64 {
    summary
        .lines()
        .find_map(|line| line.strip_prefix("peak RSS "))
        .and_then(|rest| rest.strip_suffix(" MB"))
        .and_then(|mb| mb.parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in the summary:\n{summary}"))
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
