//! `pgferry tap`: the messages for a fixture database match, message by message, golden files
//! written from the old tap's documented behaviour; LOG_BASED copies then streams; runs resume
//! from states written by pgferry and by the old tap; bad input fails before any output.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};
use support::PgCluster;

/// The fixture database of the golden files (`tests/fixtures/tap/README.md`).
const FIXTURE: &str = r#"
CREATE TABLE public.orders (
    id integer PRIMARY KEY, amount numeric(12,2), note text, placed_at timestamptz,
    local_at timestamp, day date, paid boolean, tags text[], doc jsonb, code uuid,
    ratio double precision, flag bit(1), blob bytea);
INSERT INTO public.orders VALUES
  (1, 0.07, 'first', '2024-03-01 12:30:00+02', '2024-03-01 12:30:00.5', '2024-02-29', true,
   ARRAY['a', 'b'], '{"k": [1, 2.5, null]}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 0.5, B'1', '\xde'),
  (2, 0.29, NULL, NULL, NULL, NULL, false, '{}', NULL, NULL, NULL, B'0', NULL);
CREATE VIEW public.paid_orders AS SELECT id, amount FROM public.orders WHERE paid;
"#;

fn write_json(dir: &Path, name: &str, value: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, value.to_string()).expect("write file");
    path
}

fn config(cluster: &PgCluster, extra: Value) -> Value {
    let mut config = json!({
        "host": "127.0.0.1", "port": cluster.port(), "user": "postgres", "password": "x",
        "dbname": "postgres", "sslmode": "disable", "filter_schemas": "public"
    });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    config
}

fn tap(args: &[&Path], flags: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pgferry"));
    command.arg("tap");
    let mut paths = args.iter();
    for flag in flags {
        command.arg(flag);
        if !flag.starts_with("-d") {
            if let Some(path) = paths.next() {
                command.arg(path);
            }
        }
    }
    command.output().expect("run pgferry tap")
}

fn run_ok(args: &[&Path], flags: &[&str]) -> Vec<Value> {
    let output = tap(args, flags);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr:\n{stderr}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}")))
        .collect()
}

/// Replaces wall-clock and server-dependent values by the golden files' placeholders.
#[derive(Default)]
struct Normalizer {
    versions: HashMap<i64, usize>,
    lsns: HashMap<u64, usize>,
}

fn is_singer_time(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 27
        && bytes[4] == b'-'
        && bytes[10] == b'T'
        && bytes[19] == b'.'
        && text.ends_with('Z')
}

impl Normalizer {
    fn version(&mut self, value: &mut Value) {
        if let Some(version) = value.as_i64() {
            let next = self.versions.len() + 1;
            let n = *self.versions.entry(version).or_insert(next);
            *value = json!(format!("<version:{n}>"));
        }
    }

    fn lsn(&mut self, value: &mut Value) {
        if let Some(lsn) = value.as_u64() {
            let next = self.lsns.len() + 1;
            let n = *self.lsns.entry(lsn).or_insert(next);
            *value = json!(format!("<lsn:{n}>"));
        }
    }

    fn message(&mut self, mut message: Value) -> Value {
        if let Some(version) = message.get_mut("version") {
            self.version(version);
        }
        if let Some(time) = message.get_mut("time_extracted") {
            assert!(
                is_singer_time(time.as_str().unwrap_or_default()),
                "time_extracted {time}"
            );
            *time = json!("<time>");
        }
        if let Some(Value::String(deleted)) = message.pointer_mut("/record/_sdc_deleted_at") {
            assert!(is_singer_time(deleted), "_sdc_deleted_at {deleted}");
            *deleted = "<time>".into();
        }
        if let Some(system) = message.pointer_mut("/value/pgferry_source/system_identifier") {
            *system = json!("<system>");
        }
        if let Some(Value::Object(bookmarks)) = message.pointer_mut("/value/bookmarks") {
            for bookmark in bookmarks.values_mut() {
                if let Some(version) = bookmark.get_mut("version") {
                    self.version(version);
                }
                if let Some(lsn) = bookmark.get_mut("lsn") {
                    self.lsn(lsn);
                }
            }
        }
        message
    }
}

fn golden(name: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tap")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .lines()
        .map(|line| serde_json::from_str(line).expect("golden JSON"))
        .collect()
}

fn assert_messages(actual: &[Value], expected: &[Value], what: &str) {
    for (index, (actual, expected)) in actual.iter().zip(expected).enumerate() {
        assert_eq!(
            actual,
            expected,
            "{what}: message {} differs\nexpected: {expected}\n     got: {actual}",
            index + 1
        );
    }
    assert_eq!(
        actual.len(),
        expected.len(),
        "{what}: {} messages, expected {}:\n{}",
        actual.len(),
        expected.len(),
        actual
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn last_state(messages: &[Value]) -> Value {
    messages
        .iter()
        .rev()
        .find(|message| message["type"] == "STATE")
        .map(|message| message["value"].clone())
        .expect("a STATE message")
}

/// The discovered catalog with only `public-orders` selected, LOG_BASED.
fn orders_catalog(dir: &Path, config: &Path) -> PathBuf {
    let output = tap(&[config], &["-c", "-d"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut catalog: Value = serde_json::from_slice(&output.stdout).expect("the catalog is JSON");
    for stream in catalog["streams"].as_array_mut().expect("streams") {
        let selected = stream["tap_stream_id"] == "public-orders";
        stream["metadata"][0]["metadata"]["selected"] = json!(selected);
        stream["metadata"][0]["metadata"]["replication-method"] = json!("LOG_BASED");
    }
    write_json(dir, "catalog.json", &catalog)
}

#[test]
fn full_table_messages_match_the_golden_file() {
    let cluster = PgCluster::start_default();
    cluster.psql(FIXTURE);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_json(dir.path(), "config.json", &config(&cluster, json!({})));
    let mut normalizer = Normalizer::default();
    let messages: Vec<Value> = run_ok(&[&config], &["-c"])
        .into_iter()
        .map(|message| normalizer.message(message))
        .collect();
    assert_messages(&messages, &golden("full_table.golden.jsonl"), "FULL_TABLE");

    // The raw lines use Python's separators, as singer-python printed them.
    let output = tap(&[&config], &["-c"]);
    let first = String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(
        first.starts_with(r#"{"type": "SCHEMA", "stream": "public-orders", "schema": {"#),
        "{first}"
    );

    // A second run keeps the streams' versions out of ACTIVATE_VERSION until the copy is done.
    let state = write_json(
        dir.path(),
        "state.json",
        &last_state(&run_ok(&[&config], &["-c"])),
    );
    let again = run_ok(&[&config, &state], &["-c", "-s"]);
    let kinds: Vec<&str> = again
        .iter()
        .take(4)
        .map(|m| m["type"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        kinds,
        ["SCHEMA", "STATE", "RECORD", "RECORD"],
        "no ACTIVATE_VERSION before the rows on later runs"
    );
}

/// An old tap config (no `plugin`) on a stock server of a release with the allow-list: the new
/// slot uses pgoutput, and the messages are the golden files', message for message.
#[test]
fn log_based_copies_then_streams_as_the_golden_files_say() {
    let cluster = PgCluster::builder().stock_allow_list().start();
    log_based_golden(&cluster, json!({}), "pgoutput");
}

#[test]
fn log_based_through_wal2json_gives_the_same_messages() {
    let cluster = PgCluster::start_default();
    cluster.require_wal2json();
    log_based_golden(&cluster, json!({"plugin": "wal2json"}), "wal2json");
}

#[test]
fn the_old_taps_wal2json_format_1_in_chunks_gives_the_same_messages() {
    let cluster = PgCluster::start_default();
    cluster.require_wal2json();
    log_based_golden(
        &cluster,
        json!({"plugin": "wal2json", "wal2json_format_version": 1}),
        "wal2json",
    );
}

fn log_based_golden(cluster: &PgCluster, extra: Value, plugin: &str) {
    cluster.psql(FIXTURE);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = json!({"replication_method": "LOG_BASED", "debug_lsn": false});
    if let (Some(settings), Some(extra)) = (settings.as_object_mut(), extra.as_object()) {
        settings.extend(extra.clone());
    }
    let config = write_json(dir.path(), "config.json", &config(cluster, settings));
    let catalog = orders_catalog(dir.path(), &config);
    let mut normalizer = Normalizer::default();
    let first = run_ok(&[&config, &catalog], &["-c", "--catalog"]);
    let state = write_json(dir.path(), "state.json", &last_state(&first));
    let first: Vec<Value> = first.into_iter().map(|m| normalizer.message(m)).collect();
    assert_messages(
        &first,
        &golden("log_based_copy.golden.jsonl"),
        "LOG_BASED copy",
    );
    assert_eq!(
        cluster
            .psql("SELECT plugin FROM pg_replication_slots WHERE slot_name = 'macrometa_postgres'"),
        plugin,
        "the tap created the slot with the plugin the rule gives"
    );

    cluster.psql(
        "INSERT INTO public.orders (id, amount, note) VALUES (3, 1.50, 'third');
         UPDATE public.orders SET note = 'changed' WHERE id = 1;
         DELETE FROM public.orders WHERE id = 2;",
    );
    let start_lsn = json!(
        last_state(&[
            json!({"type": "STATE", "value": serde_json::from_str::<Value>(&std::fs::read_to_string(&state).unwrap()).unwrap()})
        ])["bookmarks"]["public-orders"]["lsn"]
    );
    let second = run_ok(&[&config, &catalog, &state], &["-c", "-p", "-s"]);
    let deleted_at = second[3]["record"]["_sdc_deleted_at"].clone();
    assert_eq!(
        deleted_at, second[3]["time_extracted"],
        "a delete is stamped with the run's time_extracted"
    );
    let final_state = last_state(&second);
    let second: Vec<Value> = second.into_iter().map(|m| normalizer.message(m)).collect();
    assert_messages(
        &second,
        &golden("log_based_stream.golden.jsonl"),
        "LOG_BASED stream",
    );

    // Confirmed only as far as the state read at start: the target has not echoed more yet.
    let confirmed: String = cluster.psql("SELECT (confirmed_flush_lsn - '0/0')::text FROM pg_replication_slots WHERE slot_name = 'macrometa_postgres'");
    assert_eq!(
        json!(confirmed.parse::<u64>().expect("confirmed lsn")),
        start_lsn
    );

    // A third run from the new state sends nothing again and confirms what that state covers.
    let state = write_json(dir.path(), "state2.json", &final_state);
    let third = run_ok(&[&config, &catalog, &state], &["-c", "--catalog", "-s"]);
    assert!(
        third.iter().all(|m| m["type"] != "RECORD"),
        "nothing is repeated: {third:?}"
    );
    let confirmed: String = cluster.psql("SELECT (confirmed_flush_lsn - '0/0')::text FROM pg_replication_slots WHERE slot_name = 'macrometa_postgres'");
    assert_eq!(
        json!(confirmed.parse::<u64>().expect("confirmed lsn")),
        final_state["bookmarks"]["public-orders"]["lsn"]
    );
}

#[test]
fn resumes_from_the_old_taps_state_files() {
    let cluster = PgCluster::start_default();
    cluster.require_wal2json();
    cluster.psql(FIXTURE);
    // As the old docs told users: the slot made by hand.
    cluster
        .psql("SELECT * FROM pg_create_logical_replication_slot('macrometa_postgres', 'wal2json')");
    let lsn: u64 = cluster
        .psql("SELECT (pg_current_wal_lsn() - '0/0')::text")
        .parse()
        .expect("lsn");
    cluster.psql("INSERT INTO public.orders (id, note) VALUES (10, 'after the old run')");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_json(
        dir.path(),
        "config.json",
        &config(
            &cluster,
            json!({"replication_method": "LOG_BASED", "debug_lsn": "true"}),
        ),
    );
    let catalog = orders_catalog(dir.path(), &config);
    // Exactly what macrometa-source-postgres wrote: integers, no pgferry_source.
    let old = dir.path().join("old-state.json");
    std::fs::write(&old, format!(r#"{{"currently_syncing": null, "bookmarks": {{"public-orders": {{"last_replication_method": "LOG_BASED", "lsn": {lsn}, "version": 1700000000000, "xmin": null}}}}}}"#)).unwrap();
    let messages = run_ok(&[&config, &catalog, &old], &["-c", "--catalog", "-s"]);
    let records: Vec<&Value> = messages.iter().filter(|m| m["type"] == "RECORD").collect();
    assert_eq!(records.len(), 1, "{messages:?}");
    assert_eq!(records[0]["record"]["id"], 10);
    assert_eq!(
        records[0]["version"], 1_700_000_000_000i64,
        "the old version is kept"
    );
    let lsn_text = records[0]["record"]["_sdc_lsn"]
        .as_str()
        .expect("debug_lsn adds _sdc_lsn");
    assert!(lsn_text.parse::<u64>().expect("a decimal LSN") >= lsn);
    assert_eq!(
        messages[0]["schema"]["properties"]["_sdc_lsn"],
        json!({"type": ["null", "string"]})
    );
    let state = last_state(&messages);
    assert!(
        state["bookmarks"]["public-orders"]["lsn"]
            .as_u64()
            .expect("integer lsn")
            > lsn
    );
    assert_eq!(
        state["bookmarks"]["public-orders"]["version"],
        1_700_000_000_000i64
    );

    // An interrupted first copy (xmin and lsn bookmarks): same version, every row again.
    let interrupted = dir.path().join("interrupted.json");
    std::fs::write(&interrupted, format!(r#"{{"currently_syncing": "public-orders", "bookmarks": {{"public-orders": {{"last_replication_method": "LOG_BASED", "lsn": {lsn}, "version": 1600000000000, "xmin": 731}}}}}}"#)).unwrap();
    let messages = run_ok(
        &[&config, &catalog, &interrupted],
        &["-c", "--catalog", "-s"],
    );
    let kinds: Vec<&str> = messages
        .iter()
        .map(|m| m["type"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        kinds,
        [
            "SCHEMA",
            "STATE",
            "RECORD",
            "RECORD",
            "RECORD",
            "ACTIVATE_VERSION",
            "STATE"
        ]
    );
    assert!(messages
        .iter()
        .filter(|m| m["type"] == "RECORD")
        .all(|m| m["version"] == 1_600_000_000_000i64));
    let state = last_state(&messages);
    assert_eq!(state["bookmarks"]["public-orders"]["xmin"], Value::Null);
    assert_eq!(state["bookmarks"]["public-orders"]["lsn"], json!(lsn));
}

fn failing(args: &[&Path], flags: &[&str]) -> (i32, String, String) {
    let output = tap(args, flags);
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_input_fails_clearly_before_any_message() {
    let cluster = PgCluster::start_default();
    cluster.psql(FIXTURE);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_json(dir.path(), "config.json", &config(&cluster, json!({})));

    let unknown = write_json(
        dir.path(),
        "unknown.json",
        &json!({"streams": [
        {"tap_stream_id": "public-gone", "metadata": [{"breadcrumb": [], "metadata": {"selected": true}}]}]}),
    );
    let (code, stdout, stderr) = failing(&[&config, &unknown], &["-c", "--catalog"]);
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert!(
        stderr.contains("public-gone") && stderr.contains("not found"),
        "{stderr}"
    );

    let other = dir.path().join("other-db.json");
    std::fs::write(&other, r#"{"bookmarks": {"public-orders": {"last_replication_method": "FULL_TABLE", "version": 1}}, "pgferry_source": {"dbname": "sales", "system_identifier": "1"}}"#).unwrap();
    let (code, stdout, stderr) = failing(&[&config, &other], &["-c", "-s"]);
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert!(
        stderr.contains("written for database \"sales\""),
        "{stderr}"
    );
    let ahead = dir.path().join("ahead.json");
    std::fs::write(&ahead, r#"{"bookmarks": {"public-orders": {"last_replication_method": "LOG_BASED", "lsn": 999999999999, "version": 1}}}"#).unwrap();
    let (code, stdout, stderr) = failing(&[&config, &ahead], &["-c", "-s"]);
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert!(stderr.contains("another database server"), "{stderr}");

    let mut no_schemas = config_value_without(&cluster, "filter_schemas");
    no_schemas["replication_method"] = json!("FULL_TABLE");
    let no_schemas = write_json(dir.path(), "no-schemas.json", &no_schemas);
    let (code, stdout, stderr) = failing(&[&no_schemas], &["-c"]);
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert!(stderr.contains("filter_schemas"), "{stderr}");

    let view = write_json(
        dir.path(),
        "view.json",
        &json!({"streams": [
        {"tap_stream_id": "public-paid_orders", "metadata": [{"breadcrumb": [], "metadata": {"selected": true, "replication-method": "LOG_BASED"}}]}]}),
    );
    let (code, stdout, stderr) = failing(&[&config, &view], &["-c", "--catalog"]);
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert!(stderr.contains("not possible for a view"), "{stderr}");

    // A slot of the default name made with another plugin.
    cluster.psql(
        "SELECT * FROM pg_create_logical_replication_slot('macrometa_postgres', 'test_decoding')",
    );
    let log_based = write_json(
        dir.path(),
        "log-based.json",
        &self::config(
            &cluster,
            json!({"replication_method": "LOG_BASED", "filter_table": "orders"}),
        ),
    );
    let (code, stdout, stderr) = failing(&[&log_based], &["-c"]);
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert!(
        stderr.contains("uses the output plugin \"test_decoding\", which pgferry cannot decode")
            && stderr.contains("pg_drop_replication_slot"),
        "{stderr}"
    );

    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\"streams\": [").unwrap();
    let (code, stdout, stderr) = failing(&[&config, &broken], &["-c", "--catalog"]);
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert!(stderr.contains("not valid JSON"), "{stderr}");
    assert!(
        !stderr.contains("\"x\""),
        "the password never appears: {stderr}"
    );
}

fn config_value_without(cluster: &PgCluster, key: &str) -> Value {
    let mut value = config(cluster, json!({}));
    if let Some(object) = value.as_object_mut() {
        object.remove(key);
    }
    value
}

#[test]
fn streaming_without_an_end_confirms_what_the_saved_state_covers() {
    use std::io::BufRead;
    use std::time::{Duration, Instant};

    let cluster = PgCluster::start_default();
    cluster.require_wal2json();
    cluster.psql(FIXTURE);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_json(
        dir.path(),
        "config.json",
        &config(
            &cluster,
            json!({"replication_method": "LOG_BASED", "break_at_end_lsn": false}),
        ),
    );
    let catalog = orders_catalog(dir.path(), &config);
    let state_path = write_json(
        dir.path(),
        "state.json",
        &last_state(&run_ok(&[&config, &catalog], &["-c", "--catalog"])),
    );
    let slot_confirmed = || -> u64 {
        cluster
            .psql("SELECT (confirmed_flush_lsn - '0/0')::text FROM pg_replication_slots WHERE slot_name = 'macrometa_postgres'")
            .parse()
            .expect("confirmed lsn")
    };
    let before = slot_confirmed();

    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args([
            "tap",
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
            "-c",
        ])
        .arg(&config)
        .arg("--catalog")
        .arg(&catalog)
        .arg("-s")
        .arg(&state_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the tap");
    let (lines, received) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    cluster.psql("INSERT INTO public.orders (id, note) VALUES (20, 'streamed')");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen_record = false;
    let state = loop {
        let line = received
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("a RECORD and then a STATE while streaming");
        let message: Value = serde_json::from_str(&line).expect("JSON");
        if message["type"] == "RECORD" && message["record"]["id"] == 20 {
            seen_record = true;
        }
        if seen_record && message["type"] == "STATE" {
            break message["value"].clone();
        }
    };
    let lsn = state["bookmarks"]["public-orders"]["lsn"]
        .as_u64()
        .expect("lsn");
    // The old tap's metrics port convention, here on --metrics-addr, while it streams; the
    // probes Kubernetes asks: alive, and ready because it streams.
    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut connection =
            std::net::TcpStream::connect(("127.0.0.1", metrics_port)).expect("metrics endpoint");
        connection
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .expect("request");
        let mut text = String::new();
        connection.read_to_string(&mut text).expect("response");
        text
    };
    let metrics = get("/metrics");
    let ready = get("/readyz");
    assert!(
        ready.starts_with("HTTP/1.1 200") && ready.trim_end().ends_with("streaming"),
        "{ready}"
    );
    assert!(get("/healthz").starts_with("HTTP/1.1 200"));
    assert!(
        metrics.contains(
            "pgferry_changes{region=\"NA\",tenant=\"NA\",fabric=\"NA\",workflow=\"NA\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("ingest_errors{"), "{metrics}");
    assert!(lsn > before);
    assert_eq!(
        slot_confirmed(),
        before,
        "not confirmed before the target's state says so"
    );

    // What an orchestrator does with the target's echo; the tap re-reads it every 10 s.
    std::fs::write(&state_path, state.to_string()).expect("save the state");
    let deadline = Instant::now() + Duration::from_secs(40);
    while slot_confirmed() != lsn {
        assert!(
            Instant::now() < deadline,
            "the slot was not confirmed to {lsn} (at {})",
            slot_confirmed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A column added while streaming: a new SCHEMA, then records with it.
    cluster.psql(
        "ALTER TABLE public.orders ADD COLUMN extra2 text;
         INSERT INTO public.orders (id, extra2) VALUES (21, 'new column');",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut schema_with_column = false;
    loop {
        let line = received
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("a SCHEMA and the RECORD of the new column");
        let message: Value = serde_json::from_str(&line).expect("JSON");
        if message["type"] == "SCHEMA" {
            schema_with_column = message["schema"]["properties"].get("extra2").is_some();
        }
        if message["type"] == "RECORD" && message["record"]["id"] == 21 {
            assert!(schema_with_column, "the SCHEMA with extra2 comes first");
            assert_eq!(message["record"]["extra2"], "new column");
            break;
        }
    }

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("send SIGTERM");
    assert!(status.success());
    let output = child.wait_with_output().expect("the tap stops");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    reader.join().expect("reader");
    let rest: Vec<String> = received.try_iter().collect();
    let last: Value = serde_json::from_str(rest.last().expect("a final STATE")).expect("JSON");
    assert_eq!(last["type"], "STATE");
}

#[test]
fn tap_id_names_the_slot_and_the_schema_is_refreshed_at_start() {
    let cluster = PgCluster::start_default();
    cluster.require_wal2json();
    cluster.psql(FIXTURE);
    cluster.psql(
        "SELECT * FROM pg_create_logical_replication_slot('macrometa_postgres_t1', 'wal2json')",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_json(
        dir.path(),
        "config.json",
        &config(
            &cluster,
            json!({"replication_method": "LOG_BASED", "tap_id": "t1", "wal_sender_timeout": 60000}),
        ),
    );
    let catalog = orders_catalog(dir.path(), &config);
    let state = write_json(
        dir.path(),
        "state.json",
        &last_state(&run_ok(&[&config, &catalog], &["-c", "--catalog"])),
    );
    assert_eq!(
        cluster.psql("SELECT string_agg(slot_name, ',') FROM pg_replication_slots"),
        "macrometa_postgres_t1",
        "the slot of the tap_id is found; no other is made"
    );
    cluster.psql(
        "ALTER TABLE public.orders ADD COLUMN extra int;
         INSERT INTO public.orders (id, extra) VALUES (11, 5);",
    );
    let messages = run_ok(&[&config, &catalog, &state], &["-c", "--catalog", "-s"]);
    let kinds: Vec<&str> = messages
        .iter()
        .map(|m| m["type"].as_str().unwrap_or_default())
        .collect();
    // The schema is refreshed from the database at start, as the old tap did.
    assert_eq!(kinds, ["SCHEMA", "RECORD", "STATE"], "{messages:?}");
    assert_eq!(
        messages[0]["schema"]["properties"]["extra"]["type"],
        json!(["null", "integer"])
    );
    assert_eq!(
        messages[0]["schema"]["properties"]["_sdc_deleted_at"]["format"],
        "date-time"
    );
    assert_eq!(messages[0]["bookmark_properties"], json!(["lsn"]));
    assert_eq!(messages[1]["record"]["extra"], 5);
    assert_eq!(messages[1]["record"]["id"], 11);
}

#[test]
fn a_state_every_1000_rows_carries_the_rows_xmin() {
    let cluster = PgCluster::start_default();
    cluster.psql("CREATE TABLE public.many (id int PRIMARY KEY); INSERT INTO public.many SELECT generate_series(1, 2500);");
    let xmin: i64 = cluster
        .psql("SELECT DISTINCT xmin::text FROM public.many")
        .parse()
        .expect("one xmin");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_json(
        dir.path(),
        "config.json",
        &config(&cluster, json!({"filter_table": "many"})),
    );
    let messages = run_ok(&[&config], &["-c"]);
    let states: Vec<(usize, &Value)> = messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m["type"] == "STATE")
        .collect();
    assert_eq!(
        states.len(),
        4,
        "version, after 1,000 and 2,000 rows, and the end"
    );
    // SCHEMA, STATE, ACTIVATE_VERSION, then 1,000 records before the second STATE.
    assert_eq!(states[1].0, 3 + 1000);
    assert_eq!(states[2].0, 3 + 2000 + 1);
    for (_, state) in &states[1..3] {
        assert_eq!(
            state["value"]["bookmarks"]["public-many"]["xmin"],
            json!(xmin)
        );
        assert_eq!(state["value"]["currently_syncing"], "public-many");
    }
    assert_eq!(
        states[3].1["value"]["bookmarks"]["public-many"]["xmin"],
        Value::Null
    );
    assert_eq!(
        messages.iter().filter(|m| m["type"] == "RECORD").count(),
        2500
    );
}

#[test]
fn a_partitioned_tables_changes_stream_under_its_own_stream() {
    partitioned_stream("pgoutput");
}

#[test]
fn a_partitioned_tables_changes_stream_under_its_own_stream_through_wal2json() {
    partitioned_stream("wal2json");
}

fn partitioned_stream(plugin: &str) {
    let cluster = PgCluster::start_default();
    cluster.require_wal2json();
    cluster.psql(
        "CREATE TABLE public.events (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE public.events_eu PARTITION OF public.events FOR VALUES IN ('eu');
         CREATE TABLE public.events_us PARTITION OF public.events FOR VALUES IN ('us');
         INSERT INTO public.events VALUES (1, 'eu'), (2, 'us');",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_json(
        dir.path(),
        "config.json",
        &config(
            &cluster,
            json!({"replication_method": "LOG_BASED", "plugin": plugin}),
        ),
    );
    let output = tap(&[&config], &["-c", "-d"]);
    let mut catalog: Value = serde_json::from_slice(&output.stdout).expect("the catalog is JSON");
    for stream in catalog["streams"].as_array_mut().expect("streams") {
        let selected = stream["tap_stream_id"] == "public-events";
        stream["metadata"][0]["metadata"]["selected"] = json!(selected);
        stream["metadata"][0]["metadata"]["replication-method"] = json!("LOG_BASED");
    }
    let catalog = write_json(dir.path(), "catalog.json", &catalog);
    let first = run_ok(&[&config, &catalog], &["-c", "--catalog"]);
    let state = write_json(dir.path(), "state.json", &last_state(&first));
    cluster.psql("INSERT INTO public.events VALUES (3, 'eu'), (4, 'us'); DELETE FROM public.events WHERE id = 1;");
    let second = run_ok(&[&config, &catalog, &state], &["-c", "--catalog", "-s"]);
    let records: Vec<(i64, bool)> = second
        .iter()
        .filter(|message| message["type"] == "RECORD")
        .map(|message| {
            assert_eq!(message["stream"], "public-events");
            (
                message["record"]["id"].as_i64().expect("id"),
                !message["record"]["_sdc_deleted_at"].is_null(),
            )
        })
        .collect();
    assert_eq!(
        records,
        vec![(3, false), (4, false), (1, true)],
        "the partitions' changes, in commit order, as the parent's stream"
    );
}

/// Runs the tap to its end, failing the test if it has not stopped by itself by `limit`.
fn run_within(
    args: &[&Path],
    flags: &[&str],
    limit: std::time::Duration,
) -> (Output, std::time::Duration) {
    use std::time::Instant;
    let mut command = Command::new(env!("CARGO_BIN_EXE_pgferry"));
    command.arg("tap");
    for (flag, path) in flags.iter().zip(args) {
        command.arg(flag).arg(path);
    }
    let started = Instant::now();
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run pgferry tap");
    while child.try_wait().expect("tap status").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let output = child.wait_with_output().expect("tap output");
            panic!(
                "the tap did not stop by itself within {limit:?}:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let elapsed = started.elapsed();
    (child.wait_with_output().expect("tap output"), elapsed)
}

#[test]
fn an_old_pipelinewise_tap_config_starts_and_its_keys_do_what_they_did() {
    use std::time::Duration;

    let cluster = PgCluster::start_default();
    cluster.psql(FIXTURE);
    let dir = tempfile::tempdir().expect("temp dir");
    // What pipelinewise wrote for tap-postgres: its own keys, and one an orchestrator adds.
    let mut old = config_value_without(&cluster, "sslmode");
    old["filter_table"] = json!("orders");
    old["default_replication_method"] = json!("LOG_BASED");
    old["max_run_seconds"] = json!(43200);
    old["logical_poll_total_seconds"] = json!("2");
    old["limit"] = json!(100);
    old["break_at_end_lsn"] = json!(false);
    old["orchestrator_run_id"] = json!("abc");
    let config = write_json(dir.path(), "config.json", &old);

    // First run: the copy of a LOG_BASED stream (default_replication_method applies to the
    // streams without a method of their own).
    let (output, _) = run_within(&[&config], &["-c"], Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("\"orchestrator_run_id\" is not used by pgferry tap and is ignored"),
        "{stderr}"
    );
    assert!(
        stderr.contains("\"limit\" applies to INCREMENTAL streams only"),
        "{stderr}"
    );
    let messages: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON"))
        .collect();
    let state = last_state(&messages);
    assert_eq!(
        state["bookmarks"]["public-orders"]["last_replication_method"],
        "LOG_BASED"
    );
    assert!(
        state["bookmarks"]["public-orders"]["lsn"].is_u64(),
        "{state}"
    );
    assert_eq!(
        messages
            .iter()
            .filter(|message| message["type"] == "RECORD")
            .count(),
        2
    );
    let state_file = write_json(dir.path(), "state.json", &state);

    // Second run streams without an end: logical_poll_total_seconds ends it after 2 s
    // without a change, with the change made before it and a final STATE.
    cluster.psql("INSERT INTO public.orders (id, amount) VALUES (3, 1.50)");
    let (output, took) = run_within(
        &[&config, &state_file],
        &["-c", "-s"],
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("logical_poll_total_seconds"), "{stderr}");
    assert!(
        took >= Duration::from_secs(2),
        "it waited for changes: {took:?}"
    );
    let messages: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON"))
        .collect();
    let records: Vec<&Value> = messages
        .iter()
        .filter(|message| message["type"] == "RECORD")
        .collect();
    assert_eq!(records.len(), 1, "{messages:#?}");
    assert_eq!(records[0]["record"]["id"], 3);
    assert_eq!(
        messages.last().map(|message| &message["type"]),
        Some(&json!("STATE"))
    );
    let state_file = write_json(dir.path(), "state.json", &last_state(&messages));

    // max_run_seconds bounds the whole run (the poll bound off: 0, as pipelinewise read it).
    old["logical_poll_total_seconds"] = json!(0);
    old["max_run_seconds"] = json!(3);
    let config = write_json(dir.path(), "config.json", &old);
    let (output, took) = run_within(
        &[&config, &state_file],
        &["-c", "-s"],
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("max_run_seconds reached"), "{stderr}");
    assert!(took >= Duration::from_secs(3), "{took:?}");

    // A known key with a value it cannot take is still an error, before any message.
    old["max_run_seconds"] = json!("soon");
    let config = write_json(dir.path(), "config.json", &old);
    let (code, stdout, stderr) = failing(&[&config], &["-c"]);
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert!(stderr.contains("max_run_seconds"), "{stderr}");
}

/// Whether `value` is of a JSON type the property schema lists (items of arrays too).
fn fits_schema(value: &Value, schema: &Value) -> bool {
    let types: Vec<&str> = schema["type"]
        .as_array()
        .map(|types| types.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(number) if number.is_i64() || number.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    types.contains(&kind) || (kind == "integer" && types.contains(&"number"))
}

#[test]
fn values_fit_the_schema_the_tap_sends_in_full_table_and_log_based_alike() {
    values_fit_the_schema("pgoutput");
}

#[test]
fn values_fit_the_schema_the_tap_sends_through_wal2json_too() {
    values_fit_the_schema("wal2json");
}

fn values_fit_the_schema(plugin: &str) {
    let cluster = PgCluster::start_default();
    if plugin == "wal2json" {
        cluster.require_wal2json();
    }
    cluster.psql(
        "CREATE TABLE public.odd (id integer PRIMARY KEY, f double precision, r real, n numeric, \
         n38 numeric(38,4), m money, ms money[]); \
         INSERT INTO public.odd VALUES \
           (1, 'NaN', 'Infinity', 'NaN', 1.5, '-1234.50', '{1.50,-2}'), \
           (2, '-Infinity', 0.5, 'Infinity', NULL, '0.07', NULL), \
           (3, 2.5, '-Infinity', '-Infinity', 12345678901234567890123456789012.1234, NULL, '{}')",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_json(
        dir.path(),
        "config.json",
        &config(
            &cluster,
            json!({"filter_table": "odd", "replication_method": "LOG_BASED", "plugin": plugin}),
        ),
    );
    let output = tap(&[&config], &["-c"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    // Schema bounds are exact integers, as the old tap (Python integers) wrote them.
    assert!(
        stdout.contains(&format!("\"maximum\": 1{}, ", "0".repeat(62)))
            && stdout.contains(&format!("\"minimum\": -1{}, ", "0".repeat(34))),
        "{stdout}"
    );
    assert!(
        !stdout.contains("e+") && !stdout.contains("e62"),
        "{stdout}"
    );
    let copy: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON"))
        .collect();
    let state = write_json(dir.path(), "state.json", &last_state(&copy));

    // The same values changed while streaming.
    cluster.psql(
        "INSERT INTO public.odd SELECT id + 10, f, r, n, n38, m, ms FROM public.odd; \
         UPDATE public.odd SET m = m, r = r WHERE id = 12",
    );
    let output = tap(&[&config, &state], &["-c", "-s"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let streamed_text = String::from_utf8_lossy(&output.stdout).into_owned();
    let streamed: Vec<Value> = streamed_text
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON"))
        .collect();
    // Every digit of a wide numeric, in both paths (checked on the text: a JSON parser here
    // would round it).
    for (text, id) in [(&stdout, 3), (&streamed_text, 13)] {
        let line = text
            .lines()
            .find(|line| line.contains("\"RECORD\"") && line.contains(&format!("\"id\": {id},")))
            .unwrap_or_else(|| panic!("row {id} in {text}"));
        assert!(
            line.contains("\"n38\": 12345678901234567890123456789012.1234,"),
            "{line}"
        );
    }

    for (messages, method, offset) in [(&copy, "FULL_TABLE copy", 0), (&streamed, "LOG_BASED", 10)]
    {
        let schema = messages
            .iter()
            .find(|message| message["type"] == "SCHEMA")
            .map(|message| message["schema"]["properties"].clone())
            .unwrap_or_else(|| panic!("{method}: a SCHEMA"));
        let records: HashMap<i64, &Value> = messages
            .iter()
            .filter(|message| message["type"] == "RECORD")
            .filter_map(|message| Some((message["record"]["id"].as_i64()?, &message["record"])))
            .collect();
        for record in records.values() {
            for (name, value) in record.as_object().expect("record") {
                if name == "_sdc_deleted_at" {
                    continue;
                }
                assert!(
                    fits_schema(value, &schema[name]),
                    "{method}: {name} = {value} does not fit {}",
                    schema[name]
                );
            }
        }
        let row = |id: i64| {
            records
                .get(&(id + offset))
                .copied()
                .unwrap_or_else(|| panic!("{method}: row {id}"))
        };
        // NaN and ±Infinity have no JSON number: null, as the old tap sent them.
        assert_eq!(
            (&row(1)["f"], &row(1)["r"], &row(1)["n"]),
            (&Value::Null, &Value::Null, &Value::Null),
            "{method}"
        );
        assert_eq!(
            (&row(2)["f"], &row(2)["n"], &row(3)["r"]),
            (&Value::Null, &Value::Null, &Value::Null)
        );
        assert_eq!(row(3)["f"], json!(2.5), "{method}");
        // money as PostgreSQL prints it, as the old tap sent it (schema: string).
        assert_eq!(row(1)["m"], json!("-$1,234.50"), "{method}");
        assert_eq!(row(2)["m"], json!("$0.07"), "{method}");
        assert_eq!(row(1)["ms"], json!(["$1.50", "-$2.00"]), "{method}");
        assert_eq!(row(3)["ms"], json!([]), "{method}");
    }
}

#[test]
fn a_log_based_first_copy_stopped_after_its_first_state_is_copied_again() {
    let cluster = PgCluster::start_default();
    cluster.psql(FIXTURE);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_json(
        dir.path(),
        "config.json",
        &config(
            &cluster,
            json!({"filter_table": "orders", "replication_method": "LOG_BASED"}),
        ),
    );
    let first = run_ok(&[&config], &["-c"]);
    // What a target echoes when the pipe dies right after the copy's first STATE (before any
    // row): the copy is marked unfinished, so the next run copies again, not streams past it.
    let early = first
        .iter()
        .find(|message| message["type"] == "STATE")
        .expect("a STATE")["value"]
        .clone();
    let bookmark = &early["bookmarks"]["public-orders"];
    assert!(bookmark["lsn"].is_u64(), "{early}");
    assert_eq!(bookmark["xmin"], 2, "{early}");
    let state = write_json(dir.path(), "state.json", &early);
    let again = run_ok(&[&config, &state], &["-c", "-s"]);
    let ids: Vec<&Value> = again
        .iter()
        .filter(|message| message["type"] == "RECORD")
        .map(|message| &message["record"]["id"])
        .collect();
    assert_eq!(ids, [&json!(1), &json!(2)], "{again:#?}");
    let last = last_state(&again);
    assert_eq!(last["bookmarks"]["public-orders"]["lsn"], bookmark["lsn"]);
    assert_eq!(last["bookmarks"]["public-orders"]["xmin"], Value::Null);
}

/// A stream selected after the tap started (a new table, added to the catalog): the next run
/// copies it with its own bookmark while the other stream goes on streaming, then streams its
/// changes — as the old tap did per stream. pgferry adds the new table to its publication.
#[test]
fn a_newly_selected_stream_gets_its_copy_then_its_changes() {
    let cluster = PgCluster::start_default();
    cluster.psql(
        "CREATE TABLE public.first (id int PRIMARY KEY, v text); INSERT INTO public.first VALUES (1, 'a');",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_json(
        dir.path(),
        "config.json",
        &config(&cluster, json!({"replication_method": "LOG_BASED"})),
    );
    let select = |names: &[&str]| {
        let output = tap(&[&config], &["-c", "-d"]);
        let mut catalog: Value =
            serde_json::from_slice(&output.stdout).expect("the catalog is JSON");
        for stream in catalog["streams"].as_array_mut().expect("streams") {
            let selected = names.contains(&stream["tap_stream_id"].as_str().unwrap_or(""));
            stream["metadata"][0]["metadata"]["selected"] = json!(selected);
            stream["metadata"][0]["metadata"]["replication-method"] = json!("LOG_BASED");
        }
        write_json(dir.path(), "catalog.json", &catalog)
    };
    let catalog = select(&["public-first"]);
    let first = run_ok(&[&config, &catalog], &["-c", "--catalog"]);
    let state = write_json(dir.path(), "state.json", &last_state(&first));
    cluster.psql(
        "CREATE TABLE public.added (id int PRIMARY KEY, v text);
         INSERT INTO public.added SELECT g, 'x' FROM generate_series(1, 30) g;
         INSERT INTO public.first VALUES (2, 'b');",
    );
    let catalog = select(&["public-first", "public-added"]);
    let second = run_ok(&[&config, &catalog, &state], &["-c", "--catalog", "-s"]);
    let ids = |messages: &[Value], stream: &str| -> Vec<i64> {
        messages
            .iter()
            .filter(|message| message["type"] == "RECORD" && message["stream"] == stream)
            .map(|message| message["record"]["id"].as_i64().expect("id"))
            .collect()
    };
    assert_eq!(
        ids(&second, "public-added"),
        (1..=30).collect::<Vec<i64>>(),
        "the new stream's copy"
    );
    assert_eq!(
        ids(&second, "public-first"),
        vec![2],
        "the other stream streamed on"
    );
    let bookmark = &last_state(&second)["bookmarks"]["public-added"];
    assert!(
        bookmark["lsn"].is_u64(),
        "the new stream has its own bookmark: {bookmark}"
    );
    let state = write_json(dir.path(), "state.json", &last_state(&second));
    cluster
        .psql("INSERT INTO public.added VALUES (31, 'y'); DELETE FROM public.added WHERE id = 1;");
    let third = run_ok(&[&config, &catalog, &state], &["-c", "--catalog", "-s"]);
    assert_eq!(ids(&third, "public-added"), vec![31, 1], "then its changes");
}
