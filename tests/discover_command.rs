//! `pgferry discover`: the Singer catalog of a real database, in the old source's shape.

mod support;

use serde_json::{json, Value};
use support::PgCluster;

fn discover(cluster: &PgCluster, extra: Value) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = json!({
        "host": "127.0.0.1", "port": cluster.port(), "user": "postgres", "password": "x",
        "dbname": "postgres", "sslmode": "disable", "replication_method": "LOG_BASED"
    });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            config.insert(key.clone(), value.clone());
        }
    }
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).expect("write config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .arg("discover")
        .arg("-c")
        .arg(&path)
        .output()
        .expect("run pgferry discover");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn stream<'a>(catalog: &'a Value, id: &str) -> &'a Value {
    catalog["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .find(|stream| stream["tap_stream_id"] == id)
        .unwrap_or_else(|| panic!("stream {id} in {catalog}"))
}

fn column_metadata<'a>(stream: &'a Value, column: &str) -> &'a Value {
    stream["metadata"]
        .as_array()
        .expect("metadata")
        .iter()
        .find(|entry| entry["breadcrumb"] == json!(["properties", column]))
        .map(|entry| &entry["metadata"])
        .unwrap_or_else(|| panic!("metadata of {column}"))
}

#[test]
fn tables_views_columns_and_keys_are_described_like_the_old_source() {
    let cluster = PgCluster::start_default();
    cluster.psql(
        "CREATE DOMAIN short_name AS varchar(12);
         CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE SCHEMA sales;
         CREATE TABLE sales.orders (id bigint PRIMARY KEY, who short_name, amount numeric(12,2),
                                    at timestamptz, tags text[], m mood, flag bit(1), doc jsonb, spot point);
         INSERT INTO sales.orders (id) SELECT generate_series(1, 100);
         ANALYZE sales.orders;
         CREATE VIEW sales.big_orders AS SELECT id, amount FROM sales.orders WHERE amount > 100;",
    );
    let (code, stdout, stderr) = discover(&cluster, json!({"filter_schemas": "sales"}));
    assert_eq!(code, Some(0), "{stderr}");
    let catalog: Value = serde_json::from_str(&stdout).expect("the catalog is JSON");
    assert_eq!(catalog["streams"].as_array().map(Vec::len), Some(2));

    let orders = stream(&catalog, "sales-orders");
    assert_eq!(orders["stream"], "orders");
    assert_eq!(orders["table_name"], "orders");
    let top = &orders["metadata"][0]["metadata"];
    assert_eq!(top["table-key-properties"], json!(["id"]));
    assert_eq!(top["schema-name"], "sales");
    assert_eq!(top["database-name"], "postgres");
    assert_eq!(top["row-count"], 100);
    assert_eq!(top["is-view"], false);
    assert_eq!(top["replication-method"], "LOG_BASED");

    let properties = &orders["schema"]["properties"];
    assert_eq!(properties["id"]["type"], json!(["integer"]));
    assert_eq!(
        properties["who"],
        json!({"type": ["null", "string"], "maxLength": 12}),
        "domain resolved"
    );
    assert_eq!(properties["amount"]["multipleOf"], json!(0.01));
    assert_eq!(properties["at"]["format"], "date-time");
    assert_eq!(
        properties["tags"]["items"]["$ref"],
        "#/definitions/sdc_recursive_string_array"
    );
    assert_eq!(properties["m"]["type"], json!(["null", "string"]), "enum");
    assert_eq!(
        properties["flag"]["type"],
        json!(["null", "boolean"]),
        "bit(1)"
    );
    assert_eq!(
        properties["doc"]["type"],
        json!(["null", "object", "array"])
    );
    assert_eq!(column_metadata(orders, "id")["inclusion"], "automatic");
    assert_eq!(column_metadata(orders, "who")["sql-datatype"], "short_name");
    assert_eq!(column_metadata(orders, "spot")["inclusion"], "unsupported");

    let view = stream(&catalog, "sales-big_orders");
    assert_eq!(view["metadata"][0]["metadata"]["is-view"], true);
    assert_eq!(
        view["metadata"][0]["metadata"]["replication-method"], "FULL_TABLE",
        "views are FULL_TABLE only"
    );
}

#[test]
fn filter_table_selects_one_stream_and_errors_are_clear() {
    let cluster = PgCluster::start_default();
    cluster.psql("CREATE TABLE public.a (id int PRIMARY KEY); CREATE TABLE public.b (id int);");
    let (code, stdout, stderr) = discover(
        &cluster,
        json!({"filter_schemas": "public", "filter_table": "b"}),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let catalog: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(catalog["streams"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        stream(&catalog, "public-b")["metadata"][0]["metadata"]["table-key-properties"],
        json!([])
    );

    let (code, _, stderr) = discover(&cluster, json!({"dbname": "nope"}));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("nope"), "{stderr}");
}
