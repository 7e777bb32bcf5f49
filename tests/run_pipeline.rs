//! `pgferry run` end to end on the FULL_TABLE path: the binary, a pipeline file, a private
//! cluster. (GDN-destination runs against gdnlite live in `tests/run_into_gdnlite.rs`.)

mod support;

use std::path::Path;
use std::process::Output;

use support::PgCluster;

fn pipeline(dir: &Path, cluster: &PgCluster, extra: serde_json::Value) -> std::path::PathBuf {
    let mut config = serde_json::json!({
        "source": {
            "host": "127.0.0.1", "port": cluster.port(), "user": "postgres",
            "password": "trust", "dbname": "postgres", "sslmode": "disable",
            "replication_method": "FULL_TABLE"
        },
        "destination": {"type": "null"}
    });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            config.insert(key.clone(), value.clone());
        }
    }
    let path = dir.join("pipeline.json");
    std::fs::write(&path, config.to_string()).expect("write pipeline");
    path
}

fn pgferry(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(args)
        .output()
        .expect("run pgferry")
}

#[test]
fn a_null_destination_run_reads_every_row_of_every_table_with_parallel_workers() {
    let cluster = PgCluster::start_default();
    cluster.psql(
        "CREATE TABLE public.big (id bigint PRIMARY KEY, payload text, amount numeric(12,2));
         INSERT INTO public.big SELECT g, md5(g::text), g / 100.0 FROM generate_series(1, 300000) g;
         CREATE TABLE public.small (a int, b int, PRIMARY KEY (a, b));
         INSERT INTO public.small VALUES (1, 1), (1, 2);
         CREATE TABLE public.keyless (note text);
         INSERT INTO public.keyless VALUES ('x'), ('x');",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let config = pipeline(dir.path(), &cluster, serde_json::json!({}));
    let output = pgferry(&[
        "run",
        "-c",
        config.to_str().unwrap_or_default(),
        "--parallelism",
        "4",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("public.big: 300000 rows"), "{stdout}");
    assert!(stdout.contains("public.small: 2 rows"), "{stdout}");
    assert!(stdout.contains("public.keyless: 2 rows"), "{stdout}");
    assert!(stdout.contains("copied 300004 rows"), "{stdout}");
}

#[test]
fn a_missing_table_and_a_bad_setting_are_clear_errors() {
    let cluster = PgCluster::start_default();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = pipeline(
        dir.path(),
        &cluster,
        serde_json::json!({"tables": ["public.nope"]}),
    );
    let output = pgferry(&["run", "-c", config.to_str().unwrap_or_default()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("public.nope"), "{stderr}");

    let config = pipeline(
        dir.path(),
        &cluster,
        serde_json::json!({"tables": ["public.nope"], "parallelism": 0}),
    );
    let output = pgferry(&["run", "-c", config.to_str().unwrap_or_default()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "config error: {stderr}");
    assert!(stderr.contains("parallelism"), "{stderr}");
}
