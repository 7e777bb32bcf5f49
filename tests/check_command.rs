//! `pgferry check` as users run it: the real binary, a config file with the old tap's keys,
//! a private cluster, and the exit code and report they get.

mod support;

use std::path::Path;
use std::process::Output;

use support::PgCluster;

fn write_config(dir: &Path, config: serde_json::Value) -> std::path::PathBuf {
    let path = dir.join("config.json");
    std::fs::write(&path, config.to_string()).expect("write config");
    path
}

fn source_config(cluster: &PgCluster, user: &str) -> serde_json::Value {
    serde_json::json!({
        "host": "127.0.0.1",
        "port": cluster.port(),
        "user": user,
        "password": "unused-with-trust",
        "dbname": "postgres",
        "replication_method": "LOG_BASED",
        "sslmode": "disable"
    })
}

fn pgferry_check(config: &Path, extra: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .arg("check")
        .arg("-c")
        .arg(config)
        .args(extra)
        .output()
        .expect("run pgferry")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_good_cluster_passes_every_check() {
    let cluster = PgCluster::start_default();
    cluster.require_wal2json();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), source_config(&cluster, "postgres"));
    let output = pgferry_check(&config, &[]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "exit 0 expected:\n{text}");
    for name in [
        "connection",
        "server_version",
        "primary",
        "wal_level",
        "max_replication_slots",
        "max_wal_senders",
        "replication_privilege",
        "plugin",
        "pgoutput",
        "publication",
        "replication_slot",
    ] {
        assert!(
            text.contains(&format!("✓ {name}:")),
            "{name} passes:\n{text}"
        );
    }
    assert!(!text.contains('✗'), "nothing fails:\n{text}");
    assert!(text.contains("all checks passed"));
    assert!(
        text.contains("macrometa_postgres"),
        "the default slot name is reported:\n{text}"
    );
    assert_eq!(
        cluster.psql("SELECT count(*) FROM pg_replication_slots"),
        "0",
        "the plugin probe leaves no slot behind"
    );
}

/// A stock server of a release with `output_plugin_libraries` (only `wal_level = logical`
/// set): `auto` needs nothing more; a forced wal2json fails with the exact statement, and that
/// statement, run as printed, makes the check pass.
#[test]
fn a_stock_server_passes_with_auto_and_wal2json_gets_the_exact_allow_list_fix() {
    let cluster = PgCluster::builder().stock_allow_list().start();
    cluster.require_wal2json();
    assert_eq!(
        cluster.psql("SELECT setting FROM pg_settings WHERE name = 'output_plugin_libraries'"),
        "pgoutput, test_decoding",
        "this test needs a server release with the allow-list (Debian's 15.19 or later)"
    );
    cluster.psql("CREATE TABLE public.t (id int PRIMARY KEY)");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), source_config(&cluster, "postgres"));
    let output = pgferry_check(&path, &[]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains("✓ plugin: pgoutput (auto: a new slot: pgoutput"),
        "{text}"
    );
    assert!(text.contains("✓ pgoutput:"), "{text}");

    let mut config = source_config(&cluster, "postgres");
    config["plugin"] = serde_json::json!("wal2json");
    let path = write_config(dir.path(), config);
    let output = pgferry_check(&path, &[]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("✗ plugin: the server does not allow wal2json as an output plugin: output_plugin_libraries = 'pgoutput, test_decoding'"),
        "{text}"
    );
    let statement =
        "ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', 'wal2json';";
    assert!(text.contains(statement), "{text}");
    assert!(text.contains("SELECT pg_reload_conf();"), "{text}");
    assert!(text.contains("parameter group"), "{text}");
    assert!(text.contains("\"plugin\": \"pgoutput\""), "{text}");
    assert!(!text.contains("see the error above"), "{text}");

    // The fix as printed, then a reload: wal2json loads.
    cluster.psql(statement);
    cluster.reload();
    let output = pgferry_check(&path, &[]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains("✓ wal2json: the wal2json output plugin loads"),
        "{text}"
    );
}

/// A replication role that may not read the allow-list nor create the publication: `auto`
/// falls back to wal2json, whose test slot the stock server refuses; the fix names both ways.
#[test]
fn a_role_that_cannot_see_the_allow_list_gets_both_fixes_from_the_probe() {
    let cluster = PgCluster::builder().stock_allow_list().start();
    cluster.require_wal2json();
    cluster.psql(
        "CREATE TABLE public.t (id int PRIMARY KEY); CREATE ROLE etl LOGIN REPLICATION; GRANT SELECT ON public.t TO etl;",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = source_config(&cluster, "etl");
    config["filter_schemas"] = serde_json::json!("public");
    let path = write_config(dir.path(), config);
    let output = pgferry_check(&path, &[]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("✓ plugin: wal2json (auto: a new slot: wal2json, since pgoutput cannot be used (publication \"macrometa_postgres\" does not exist and role \"etl\" may not create it"), "{text}");
    assert!(
        text.contains("✗ wal2json: the server refuses wal2json as an output plugin"),
        "{text}"
    );
    assert!(
        text.contains("or let pgferry stream through pgoutput (built in, always allowed): have the tables' owner or a superuser run: CREATE PUBLICATION \"macrometa_postgres\" FOR TABLE \"public\".\"t\""),
        "{text}"
    );
    assert!(text.contains("SHOW output_plugin_libraries"), "{text}");

    // The owner creates the publication: auto now takes pgoutput. A table whose UPDATEs carry
    // no key is a warning with the statement that fixes it.
    cluster.psql("ALTER TABLE public.t REPLICA IDENTITY NOTHING");
    cluster.psql("CREATE PUBLICATION macrometa_postgres FOR TABLE public.t");
    let output = pgferry_check(&path, &[]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("✓ plugin: pgoutput (auto: a new slot: pgoutput (built in) with publication \"macrometa_postgres\", which publishes every selected table)"), "{text}");
    assert!(
        text.contains("⚠ replica_identity: UPDATEs and DELETEs of public.t (REPLICA IDENTITY NOTHING) carry no key"),
        "{text}"
    );
    assert!(
        text.contains("ALTER TABLE public.t REPLICA IDENTITY DEFAULT;"),
        "{text}"
    );
}

#[test]
fn wal_level_replica_fails_that_check_and_prints_the_fix() {
    let cluster = PgCluster::builder().setting("wal_level", "replica").start();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), source_config(&cluster, "postgres"));

    let output = pgferry_check(&config, &[]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "exit 1 expected:\n{text}");
    assert!(text.contains("✗ wal_level:"), "wal_level fails:\n{text}");
    assert!(
        text.contains("wal_level = logical"),
        "the postgresql.conf line to set:\n{text}"
    );
    assert!(text.contains("✓ connection:"), "{text}");

    let output = pgferry_check(&config, &["--format", "json"]);
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("--format json prints JSON");
    assert_eq!(report["ok"], false);
    let wal_level = report["checks"]
        .as_array()
        .expect("checks array")
        .iter()
        .find(|check| check["name"] == "wal_level")
        .expect("a wal_level check");
    assert_eq!(wal_level["status"], "fail");
    assert!(wal_level["fix"]
        .as_str()
        .expect("a fix")
        .contains("wal_level = logical"));
}

#[test]
fn a_role_without_replication_gets_the_alter_role_fix() {
    let cluster = PgCluster::start_default();
    cluster.psql("CREATE ROLE reader LOGIN");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), source_config(&cluster, "reader"));
    let output = pgferry_check(&config, &[]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("✗ replication_privilege:"), "{text}");
    assert!(
        text.contains("ALTER ROLE \"reader\" REPLICATION;"),
        "{text}"
    );
}

#[test]
fn an_unreachable_server_fails_the_connection_check_with_a_hint() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        serde_json::json!({"host": "127.0.0.1", "port": port, "user": "u", "password": "p", "dbname": "d"}),
    );
    let output = pgferry_check(&config, &[]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("✗ connection:"), "{text}");
    assert!(
        text.contains(&port.to_string()),
        "names the address:\n{text}"
    );
}

#[test]
fn a_bad_config_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        serde_json::json!({"host": "127.0.0.1", "port": "not a port", "user": "u", "password": "hunter2-secret", "dbname": "d"}),
    );
    let output = pgferry_check(&config, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("port"), "names the key: {stderr}");
    assert!(!stderr.contains("hunter2-secret"), "no secret: {stderr}");

    let output = pgferry_check(&dir.path().join("missing.json"), &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("missing.json"), "names the file: {stderr}");
}

#[test]
fn pgoutput_checks_the_publication_and_prints_the_alter_publication_fix() {
    let cluster = PgCluster::start_default();
    cluster.psql(
        "CREATE TABLE public.a (id int PRIMARY KEY); CREATE TABLE public.b (id int PRIMARY KEY);",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = source_config(&cluster, "postgres");
    config["plugin"] = serde_json::json!("pgoutput");
    config["publication"] = serde_json::json!("shop pub");
    config["filter_schemas"] = serde_json::json!("public");
    let path = write_config(dir.path(), config);

    // No publication yet: `pgferry run` will create it.
    let output = pgferry_check(&path, &[]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("the pgoutput output plugin loads"), "{text}");
    assert!(text.contains("does not exist yet"), "{text}");

    // A publication that misses a table fails with the exact fix.
    cluster.psql("CREATE PUBLICATION \"shop pub\" FOR TABLE public.a;");
    let output = pgferry_check(&path, &[]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("ALTER PUBLICATION \"shop pub\" ADD TABLE public.b;"),
        "{text}"
    );
    cluster.psql("ALTER PUBLICATION \"shop pub\" ADD TABLE public.b;");
    let output = pgferry_check(&path, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
}

#[test]
fn a_pipeline_file_gets_its_destination_checked_too() {
    let cluster = PgCluster::start_default();
    cluster.require_wal2json();
    cluster.psql("CREATE DATABASE replica");
    cluster.psql("CREATE ROLE reader LOGIN; REVOKE CREATE ON DATABASE replica FROM PUBLIC");
    cluster.psql_in("replica", "REVOKE CREATE ON SCHEMA public FROM PUBLIC");
    let dir = tempfile::tempdir().expect("temp dir");
    let pipeline = |destination: serde_json::Value| {
        write_config(
            dir.path(),
            serde_json::json!({"source": source_config(&cluster, "postgres"), "destination": destination}),
        )
    };
    let target = |user: &str, port: u16| {
        serde_json::json!({"type": "postgres", "host": "127.0.0.1", "port": port, "user": user,
                           "dbname": "replica", "sslmode": "disable"})
    };

    let output = pgferry_check(&pipeline(target("postgres", cluster.port())), &[]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("✓ target_connection:"), "{text}");
    assert!(text.contains("✓ target_privileges:"), "{text}");

    let output = pgferry_check(&pipeline(target("reader", cluster.port())), &[]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("✗ target_privileges:"), "{text}");
    assert!(
        text.contains("GRANT CREATE ON DATABASE \"replica\" TO \"reader\";"),
        "{text}"
    );

    let output = pgferry_check(&pipeline(target("postgres", 1)), &[]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("✗ target_connection:"), "{text}");

    // A GDN destination nobody answers for.
    let output = pgferry_check(
        &pipeline(serde_json::json!({"gdn_url": "http://127.0.0.1:1", "api_key": "k"})),
        &[],
    );
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("✗ gdn_destination: cannot reach GDN"),
        "{text}"
    );
    assert!(text.contains("gdn_url"), "{text}");
}
