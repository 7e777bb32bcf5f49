//! `pgferry validate / schemas / samples`: the old source's console interface against a real
//! database: attribute types among string/long/bool/double/object, the first 10 rows, reserved
//! names renamed as GDN documents will have them.

mod support;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use support::PgCluster;

fn config(dir: &Path, cluster: &PgCluster, extra: Value) -> PathBuf {
    let mut config = json!({
        "host": "127.0.0.1", "port": cluster.port(), "user": "postgres", "password": "secret-pw",
        "dbname": "postgres", "sslmode": "disable", "filter_schemas": "shop"
    });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            if value.is_null() {
                config.remove(key);
            } else {
                config.insert(key.clone(), value.clone());
            }
        }
    }
    let path = dir.join("config.json");
    std::fs::write(&path, config.to_string()).expect("write config");
    path
}

fn pgferry(command: &str, config: &Path) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args([command, "-c"])
        .arg(config)
        .output()
        .expect("run pgferry");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn schemas_samples_and_validate_speak_the_consoles_language() {
    let cluster = PgCluster::start_default();
    cluster.psql(
        r#"CREATE SCHEMA shop;
        CREATE TABLE shop.items (id bigint PRIMARY KEY, "_key" text, "_id" int, name varchar(20),
                                 price numeric(12,2), wide numeric, ok boolean, at timestamptz,
                                 doc jsonb, tags text[], ratio real, raw bytea);
        INSERT INTO shop.items SELECT n, 'k' || n, n, 'item ' || n, n / 100.0,
                                      123456789012345678901234567890.5, n % 2 = 0,
                                      '2024-01-01 00:00:00+00', '{"a": 1}', ARRAY['x'], 0.5, '\x00'
                               FROM generate_series(1, 12) AS n;
        CREATE TABLE shop.keyed ("_key" text PRIMARY KEY, v int);
        INSERT INTO shop.keyed VALUES ('a', 1);"#,
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = config(dir.path(), &cluster, json!({}));

    let (code, stdout, stderr) = pgferry("validate", &path);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).expect("JSON"),
        json!({"valid": true, "streams": 2})
    );

    let (code, stdout, stderr) = pgferry("schemas", &path);
    assert_eq!(code, 0, "{stderr}");
    let schemas: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(
        schemas,
        json!([
            {"name": "items", "attributes": [
                {"name": "id", "type": "long"}, {"name": "__key", "type": "string"},
                {"name": "__id", "type": "long"}, {"name": "name", "type": "string"},
                {"name": "price", "type": "double"}, {"name": "wide", "type": "double"},
                {"name": "ok", "type": "bool"}, {"name": "at", "type": "string"},
                {"name": "doc", "type": "object"}, {"name": "tags", "type": "object"},
                {"name": "ratio", "type": "double"}]},
            {"name": "keyed", "attributes": [{"name": "_key", "type": "string"}, {"name": "v", "type": "long"}]}
        ]),
        "bytea is unsupported by the old source and left out; _key stays when it is the key"
    );

    let (code, stdout, stderr) = pgferry("samples", &path);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("123456789012345678901234567890.5"),
        "every digit: {stdout}"
    );
    let samples: Value = serde_json::from_str(&stdout).expect("JSON");
    let items = &samples[0];
    assert_eq!(items["schema"]["name"], "items");
    let data = items["data"].as_array().expect("data");
    assert_eq!(data.len(), 10, "the first 10 rows");
    assert_eq!(data[0]["__key"], "k1");
    assert_eq!(data[0]["__id"], 1);
    assert_eq!(data[0]["at"], "2024-01-01T00:00:00+00:00");
    assert_eq!(data[0]["doc"], json!({"a": 1}));
    assert!(data[0].get("raw").is_none());
    assert_eq!(samples[1]["data"], json!([{"_key": "a", "v": 1}]));

    let bad = config(dir.path(), &cluster, json!({"dbname": "missing_db"}));
    let (code, stdout, stderr) = pgferry("validate", &bad);
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    assert!(stderr.contains("missing_db"), "{stderr}");
    assert!(
        !stderr.contains("secret-pw"),
        "no secret in errors: {stderr}"
    );
    let no_schemas = config(dir.path(), &cluster, json!({"filter_schemas": null}));
    let (code, _, stderr) = pgferry("schemas", &no_schemas);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("filter_schemas"), "{stderr}");
    let empty = config(
        dir.path(),
        &cluster,
        json!({"filter_schemas": "nothing_here"}),
    );
    let (code, _, stderr) = pgferry("validate", &empty);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no table or view"), "{stderr}");
}
