//! pipelinewise-tap-postgres's integration suite, adapted: the same tables (discovery of every
//! type, unsupported types, column grants, a materialized view, the schema refresh of a stale
//! catalog, logical replication with inserts, an update, a new column, a delete and a
//! TRUNCATE), through the real `pgferry tap` binary against a private cluster. The SQL and the
//! assertions are written here from what each upstream test checked; where pgferry differs on
//! purpose the test asserts pgferry's behaviour and names the README row ("Differences from
//! the old tap").

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};
use support::PgCluster;

/// The table every upstream discovery test made.
const TABLE: &str = "CHICKEN TIMES";

fn write_json(dir: &Path, name: &str, value: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, value.to_string()).expect("write file");
    path
}

fn config(cluster: &PgCluster, user: &str, extra: Value) -> Value {
    let mut config = json!({
        "host": "127.0.0.1", "port": cluster.port(), "user": user, "password": "password",
        "dbname": "postgres", "filter_schemas": "public"
    });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    config
}

fn tap(args: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pgferry"));
    command.arg("tap");
    for (flag, path) in args {
        command.arg(flag).arg(path);
    }
    command.output().expect("run pgferry tap")
}

fn messages(output: &Output) -> Vec<Value> {
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}")))
        .collect()
}

/// Runs `pgferry tap -d` as `user` and returns the stream of `public.<table>`.
fn discover_as(cluster: &PgCluster, user: &str, table: &str) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_json(dir.path(), "config.json", &config(cluster, user, json!({})));
    let output = Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["tap", "-d", "-c"])
        .arg(&config)
        .output()
        .expect("run pgferry tap -d");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let catalog: Value = serde_json::from_slice(&output.stdout).expect("the catalog is JSON");
    let id = format!("public-{table}");
    let found: Vec<&Value> = catalog["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .filter(|stream| stream["tap_stream_id"] == id.as_str())
        .collect();
    assert_eq!(found.len(), 1, "one stream {id} in {catalog:#}");
    let stream = found[0].clone();
    assert_eq!(stream["table_name"], table);
    assert_eq!(stream["stream"], table);
    stream
}

fn discover(cluster: &PgCluster) -> Value {
    discover_as(cluster, "postgres", TABLE)
}

/// Metadata as singer's `metadata.to_map` gave it: breadcrumb → metadata. The keys pgferry's
/// root adds for the Macrometa console and the old fork (`selected`, `replication-method`)
/// are removed, since upstream discovery did not write them.
fn metadata_map(stream: &Value) -> BTreeMap<String, Value> {
    stream["metadata"]
        .as_array()
        .expect("metadata")
        .iter()
        .map(|entry| {
            let mut metadata = entry["metadata"].clone();
            if entry["breadcrumb"] == json!([]) {
                if let Some(root) = metadata.as_object_mut() {
                    root.remove("selected");
                    root.remove("replication-method");
                }
            }
            let breadcrumb = entry["breadcrumb"]
                .as_array()
                .map(|parts| {
                    parts
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("/")
                })
                .unwrap_or_default();
            (breadcrumb, metadata)
        })
        .collect()
}

/// `{"": root, "properties/<column>": {…}}` for the expected side.
fn expected_metadata(
    root: Value,
    columns: &[(&str, &str, &str)], // name, sql-datatype, inclusion
) -> BTreeMap<String, Value> {
    let mut map = BTreeMap::new();
    map.insert(String::new(), root);
    for (name, sql, inclusion) in columns {
        map.insert(
            format!("properties/{name}"),
            json!({"inclusion": inclusion, "sql-datatype": sql, "selected-by-default": *inclusion != "unsupported"}),
        );
    }
    map
}

/// The root metadata. `row-count` is `pg_class.reltuples::bigint`, the old tap's query;
/// upstream expected 0 for these never-analyzed tables, what servers before 14 reported;
/// from 14 on the same query says -1, and so do both taps.
fn root(keys: &[&str], is_view: bool) -> Value {
    json!({"table-key-properties": keys, "database-name": "postgres", "schema-name": "public",
           "is-view": is_view, "row-count": -1})
}

/// The six recursive array definitions every upstream schema carried.
fn assert_base_definitions(schema: &Value) {
    let names: Vec<&String> = schema["definitions"]
        .as_object()
        .expect("definitions")
        .keys()
        .collect();
    assert_eq!(
        names,
        [
            "sdc_recursive_boolean_array",
            "sdc_recursive_integer_array",
            "sdc_recursive_number_array",
            "sdc_recursive_object_array",
            "sdc_recursive_string_array",
            "sdc_recursive_timestamp_array"
        ]
    );
    assert_eq!(
        schema["definitions"]["sdc_recursive_timestamp_array"],
        json!({"format": "date-time", "items": {"$ref": "#/definitions/sdc_recursive_timestamp_array"}, "type": ["null", "string", "array"]})
    );
    assert_eq!(schema["type"], "object");
}

fn assert_discovered(stream: &Value, metadata: BTreeMap<String, Value>, properties: Value) {
    assert_eq!(metadata_map(stream), metadata, "metadata");
    assert_eq!(
        stream["schema"]["properties"], properties,
        "schema properties"
    );
    assert_base_definitions(&stream["schema"]);
}

fn create(cluster: &PgCluster, columns: &str) {
    cluster.psql(&format!("CREATE TABLE public.\"{TABLE}\" ({columns})"));
}

#[test]
fn string_table_with_pk() {
    let cluster = PgCluster::start_default();
    create(
        &cluster,
        "id serial PRIMARY KEY, \"character-varying_name\" character varying, \"varchar-name\" varchar(28), char_name char(10), \"text-name\" text",
    );
    assert_discovered(
        &discover(&cluster),
        expected_metadata(
            root(&["id"], false),
            &[
                ("character-varying_name", "character varying", "available"),
                ("id", "integer", "automatic"),
                ("varchar-name", "character varying", "available"),
                ("text-name", "text", "available"),
                ("char_name", "character", "available"),
            ],
        ),
        json!({"id": {"type": ["integer"], "maximum": 2147483647, "minimum": -2147483648},
               "character-varying_name": {"type": ["null", "string"]},
               "varchar-name": {"type": ["null", "string"], "maxLength": 28},
               "char_name": {"type": ["null", "string"], "maxLength": 10},
               "text-name": {"type": ["null", "string"]}}),
    );
}

#[test]
fn integer_table() {
    let cluster = PgCluster::start_default();
    create(
        &cluster,
        "id serial, \"size integer\" integer, \"size smallint\" smallint, \"size bigint\" bigint",
    );
    assert_discovered(
        &discover(&cluster),
        expected_metadata(
            root(&[], false),
            &[
                ("id", "integer", "available"),
                ("size integer", "integer", "available"),
                ("size smallint", "smallint", "available"),
                ("size bigint", "bigint", "available"),
            ],
        ),
        json!({"id": {"type": ["null", "integer"], "minimum": -2147483648, "maximum": 2147483647},
               "size smallint": {"type": ["null", "integer"], "minimum": -32768, "maximum": 32767},
               "size integer": {"type": ["null", "integer"], "minimum": -2147483648, "maximum": 2147483647},
               "size bigint": {"type": ["null", "integer"], "minimum": -9223372036854775808i64, "maximum": 9223372036854775807i64}}),
    );
}

#[test]
fn decimal_pk() {
    let cluster = PgCluster::start_default();
    create(
        &cluster,
        "our_decimal numeric PRIMARY KEY, our_decimal_10_2 decimal(10,2), our_decimal_38_4 decimal(38,4)",
    );
    let stream = discover(&cluster);
    assert_eq!(
        metadata_map(&stream),
        expected_metadata(
            root(&["our_decimal"], false),
            &[
                ("our_decimal", "numeric", "automatic"),
                ("our_decimal_38_4", "numeric", "available"),
                ("our_decimal_10_2", "numeric", "available"),
            ],
        )
    );
    assert_base_definitions(&stream["schema"]);
    // The bounds beyond 64 bits are checked on the catalog's text (a JSON parser here would
    // make them doubles): exact integers, as upstream's Python integers (10 ** 62, 10 ** 34).
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_json(
        dir.path(),
        "c.json",
        &config(&cluster, "postgres", json!({})),
    );
    let output = tap(&[("-c", &config)]);
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8_lossy(&output.stdout);
    let schema_line = text
        .lines()
        .find(|line| line.contains("\"SCHEMA\""))
        .expect("a SCHEMA");
    let z62 = "0".repeat(62);
    let z34 = "0".repeat(34);
    // The catalog of `-d` too.
    let catalog = Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["tap", "-d", "-c"])
        .arg(&config)
        .output()
        .expect("run pgferry tap -d");
    let catalog = String::from_utf8_lossy(&catalog.stdout);
    assert!(
        catalog.contains(&format!("\"maximum\": 1{}", "0".repeat(62)))
            && catalog.contains(&format!("\"minimum\": -1{}", "0".repeat(34)))
            && !catalog.contains("e62")
            && !catalog.contains("e34"),
        "{catalog}"
    );
    for expected in [
        format!("\"our_decimal\": {{\"exclusiveMaximum\": true, \"exclusiveMinimum\": true, \"maximum\": 1{z62}, \"minimum\": -1{z62}, \"multipleOf\": 1e-38, \"type\": [\"number\"]}}"),
        "\"our_decimal_10_2\": {\"exclusiveMaximum\": true, \"exclusiveMinimum\": true, \"maximum\": 100000000, \"minimum\": -100000000, \"multipleOf\": 0.01, \"type\": [\"null\", \"number\"]}".to_owned(),
        format!("\"our_decimal_38_4\": {{\"exclusiveMaximum\": true, \"exclusiveMinimum\": true, \"maximum\": 1{z34}, \"minimum\": -1{z34}, \"multipleOf\": 0.0001, \"type\": [\"null\", \"number\"]}}"),
    ] {
        assert!(schema_line.contains(&expected), "{expected}\nin\n{schema_line}");
    }
}

#[test]
fn dates_table_pk() {
    let cluster = PgCluster::start_default();
    create(
        &cluster,
        "our_date DATE PRIMARY KEY, our_ts TIMESTAMP, our_ts_tz TIMESTAMP WITH TIME ZONE, our_time TIME, our_time_tz TIME WITH TIME ZONE",
    );
    assert_discovered(
        &discover(&cluster),
        expected_metadata(
            root(&["our_date"], false),
            &[
                ("our_date", "date", "automatic"),
                ("our_ts", "timestamp without time zone", "available"),
                ("our_ts_tz", "timestamp with time zone", "available"),
                ("our_time", "time without time zone", "available"),
                ("our_time_tz", "time with time zone", "available"),
            ],
        ),
        json!({"our_date": {"type": ["string"], "format": "date-time"},
               "our_ts": {"type": ["null", "string"], "format": "date-time"},
               "our_ts_tz": {"type": ["null", "string"], "format": "date-time"},
               "our_time": {"format": "time", "type": ["null", "string"]},
               "our_time_tz": {"format": "time", "type": ["null", "string"]}}),
    );
}

#[test]
fn float_table_pk() {
    let cluster = PgCluster::start_default();
    create(
        &cluster,
        "our_float float PRIMARY KEY, our_real real, our_double double precision",
    );
    assert_discovered(
        &discover(&cluster),
        expected_metadata(
            root(&["our_float"], false),
            &[
                ("our_float", "double precision", "automatic"),
                ("our_real", "real", "available"),
                ("our_double", "double precision", "available"),
            ],
        ),
        json!({"our_float": {"type": ["number"]}, "our_real": {"type": ["null", "number"]},
               "our_double": {"type": ["null", "number"]}}),
    );
}

#[test]
fn bools_and_bits() {
    let cluster = PgCluster::start_default();
    create(&cluster, "our_bool boolean, our_bit bit");
    assert_discovered(
        &discover(&cluster),
        expected_metadata(
            root(&[], false),
            &[
                ("our_bool", "boolean", "available"),
                ("our_bit", "bit", "available"),
            ],
        ),
        json!({"our_bool": {"type": ["null", "boolean"]}, "our_bit": {"type": ["null", "boolean"]}}),
    );
}

#[test]
fn json_tables() {
    let cluster = PgCluster::start_default();
    create(&cluster, "our_secrets json, our_secrets_b jsonb");
    assert_discovered(
        &discover(&cluster),
        expected_metadata(
            root(&[], false),
            &[
                ("our_secrets", "json", "available"),
                ("our_secrets_b", "jsonb", "available"),
            ],
        ),
        json!({"our_secrets": {"type": ["null", "object", "array"]},
               "our_secrets_b": {"type": ["null", "object", "array"]}}),
    );
}

#[test]
fn uuid_tables() {
    let cluster = PgCluster::start_default();
    create(&cluster, "our_pk uuid PRIMARY KEY, our_uuid uuid");
    assert_discovered(
        &discover(&cluster),
        expected_metadata(
            root(&["our_pk"], false),
            &[
                ("our_pk", "uuid", "automatic"),
                ("our_uuid", "uuid", "available"),
            ],
        ),
        json!({"our_uuid": {"type": ["null", "string"]}, "our_pk": {"type": ["string"]}}),
    );
}

#[test]
fn hstore_table() {
    let cluster = PgCluster::start_default();
    cluster.psql("CREATE EXTENSION hstore");
    create(&cluster, "our_pk hstore PRIMARY KEY, our_hstore hstore");
    cluster.psql(&format!(
        "INSERT INTO \"{TABLE}\" (our_pk, our_hstore) VALUES ('size=>\"small\",name=>\"betty\"', 'size=>\"big\",name=>\"fred\"')"
    ));
    let stream = discover(&cluster);
    assert_discovered(
        &stream,
        expected_metadata(
            root(&["our_pk"], false),
            &[
                ("our_pk", "hstore", "automatic"),
                ("our_hstore", "hstore", "available"),
            ],
        ),
        json!({"our_hstore": {"type": ["null", "object"], "properties": {}},
               "our_pk": {"type": ["object"], "properties": {}}}),
    );
    // Upstream also checked the escaping of hstore values (a quote inside a value): the
    // record carries the object, quote and all.
    cluster.psql(&format!(
        "INSERT INTO \"{TABLE}\" VALUES ('\"nickname\"=>\"Dave''s Courtyard\"', NULL)"
    ));
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_json(
        dir.path(),
        "c.json",
        &config(&cluster, "postgres", json!({})),
    );
    let records: Vec<Value> = messages(&tap(&[("-c", &config)]))
        .into_iter()
        .filter(|message| message["type"] == "RECORD")
        .map(|message| message["record"].clone())
        .collect();
    assert!(
        records.contains(&json!({"our_pk": {"nickname": "Dave's Courtyard"}, "our_hstore": null})),
        "{records:#?}"
    );
    assert!(records.contains(
        &json!({"our_pk": {"size": "small", "name": "betty"}, "our_hstore": {"size": "big", "name": "fred"}})
    ));
}

#[test]
fn enum_table() {
    let cluster = PgCluster::start_default();
    cluster.psql("CREATE TYPE mood_enum AS ENUM ('sad', 'ok', 'happy')");
    create(
        &cluster,
        "our_mood_enum_pk mood_enum PRIMARY KEY, our_mood_enum mood_enum",
    );
    cluster.psql(&format!(
        "INSERT INTO \"{TABLE}\" (our_mood_enum_pk, our_mood_enum) VALUES ('sad', 'happy')"
    ));
    assert_discovered(
        &discover(&cluster),
        expected_metadata(
            root(&["our_mood_enum_pk"], false),
            &[
                ("our_mood_enum_pk", "mood_enum", "automatic"),
                ("our_mood_enum", "mood_enum", "available"),
            ],
        ),
        json!({"our_mood_enum": {"type": ["null", "string"]}, "our_mood_enum_pk": {"type": ["string"]}}),
    );
}

#[test]
fn money() {
    let cluster = PgCluster::start_default();
    create(&cluster, "our_money_pk money PRIMARY KEY, our_money money");
    cluster.psql(&format!(
        "INSERT INTO \"{TABLE}\" (our_money_pk, our_money) VALUES ('$1.24', '$777.63')"
    ));
    assert_discovered(
        &discover(&cluster),
        expected_metadata(
            root(&["our_money_pk"], false),
            &[
                ("our_money_pk", "money", "automatic"),
                ("our_money", "money", "available"),
            ],
        ),
        json!({"our_money": {"type": ["null", "string"]}, "our_money_pk": {"type": ["string"]}}),
    );
    // The values, as the old tap sent them: PostgreSQL's text.
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_json(
        dir.path(),
        "c.json",
        &config(&cluster, "postgres", json!({})),
    );
    let records: Vec<Value> = messages(&tap(&[("-c", &config)]))
        .into_iter()
        .filter(|message| message["type"] == "RECORD")
        .map(|message| message["record"].clone())
        .collect();
    assert_eq!(
        records,
        [json!({"our_money": "$777.63", "our_money_pk": "$1.24"})]
    );
}

#[test]
fn arrays_table() {
    let cluster = PgCluster::start_default();
    create(
        &cluster,
        "our_int_array_pk integer[] PRIMARY KEY, our_string_array varchar[]",
    );
    cluster.psql(&format!(
        "INSERT INTO \"{TABLE}\" (our_int_array_pk, our_string_array) VALUES ('{{{{1,2,3}},{{4,5,6}}}}', '{{{{\"a\",\"b\",\"c\"}}}}')"
    ));
    assert_discovered(
        &discover(&cluster),
        expected_metadata(
            root(&["our_int_array_pk"], false),
            &[
                ("our_int_array_pk", "integer[]", "automatic"),
                ("our_string_array", "character varying[]", "available"),
            ],
        ),
        json!({"our_int_array_pk": {"type": ["null", "array"], "items": {"$ref": "#/definitions/sdc_recursive_integer_array"}},
               "our_string_array": {"type": ["null", "array"], "items": {"$ref": "#/definitions/sdc_recursive_string_array"}}}),
    );
}

#[test]
fn arrays_like_table() {
    let cluster = PgCluster::start_default();
    create(
        &cluster,
        "our_int_array_pk integer[] PRIMARY KEY, our_text_array text[]",
    );
    cluster.psql(&format!(
        "CREATE MATERIALIZED VIEW \"LIKE {TABLE}\" AS SELECT * FROM \"{TABLE}\""
    ));
    assert_discovered(
        &discover_as(&cluster, "postgres", &format!("LIKE {TABLE}")),
        expected_metadata(
            root(&[], true),
            &[
                ("our_int_array_pk", "integer[]", "available"),
                ("our_text_array", "text[]", "available"),
            ],
        ),
        json!({"our_int_array_pk": {"type": ["null", "array"], "items": {"$ref": "#/definitions/sdc_recursive_integer_array"}},
               "our_text_array": {"type": ["null", "array"], "items": {"$ref": "#/definitions/sdc_recursive_string_array"}}}),
    );
}

#[test]
fn column_grants() {
    let cluster = PgCluster::start_default();
    create(
        &cluster,
        "id serial, \"size integer\" integer, \"size smallint\" smallint, \"size bigint\" bigint",
    );
    cluster.psql(&format!(
        "CREATE USER tmp_user_for_grant_tests WITH PASSWORD 'password'; \
         GRANT SELECT (\"id\") ON \"{TABLE}\" TO tmp_user_for_grant_tests"
    ));
    assert_discovered(
        &discover_as(&cluster, "tmp_user_for_grant_tests", TABLE),
        expected_metadata(root(&[], false), &[("id", "integer", "available")]),
        json!({"id": {"type": ["null", "integer"], "minimum": -2147483648, "maximum": 2147483647}}),
    );
}

#[test]
fn unsupported_types() {
    let cluster = PgCluster::start_default();
    cluster.psql("CREATE TYPE person_composite AS (age int, name text)");
    create(
        &cluster,
        "interval_col INTERVAL, bit_string_col bit(5), bytea_col bytea, point_col point, line_col line, \
         lseg_col lseg, box_col box, polygon_col polygon, circle_col circle, xml_col xml, \
         composite_col person_composite, int_range_col int4range",
    );
    let stream = discover(&cluster);
    let columns = [
        ("bytea_col", "bytea"),
        ("bit_string_col", "bit(5)"),
        ("line_col", "line"),
        ("xml_col", "xml"),
        ("int_range_col", "int4range"),
        ("circle_col", "circle"),
        ("polygon_col", "polygon"),
        ("box_col", "box"),
        ("lseg_col", "lseg"),
        ("composite_col", "person_composite"),
        ("interval_col", "interval"),
        ("point_col", "point"),
    ];
    let expected: Vec<(&str, &str, &str)> = columns
        .iter()
        .map(|(name, sql)| (*name, *sql, "unsupported"))
        .collect();
    assert_eq!(
        metadata_map(&stream),
        expected_metadata(root(&[], false), &expected)
    );
}

#[test]
fn refresh_streams_schema() {
    let cluster = PgCluster::start_default();
    create(
        &cluster,
        "id serial PRIMARY KEY, \"character-varying_name\" character varying, \"varchar-name\" varchar(28), char_name char(10), \"text-name\" text",
    );
    // A stale catalog: no schema, a key that is gone, an old row count. The tap reads the
    // table again at start; its SCHEMA message carries what the table is now.
    let dir = tempfile::tempdir().expect("temp dir");
    let catalog = write_json(
        dir.path(),
        "catalog.json",
        &json!({"streams": [{
            "table_name": TABLE, "stream": TABLE, "tap_stream_id": format!("public-{TABLE}"),
            "schema": [],
            "metadata": [{"breadcrumb": [], "metadata": {"replication-method": "FULL_TABLE",
                "table-key-properties": ["some_id"], "row-count": 1000, "selected": true}}]
        }]}),
    );
    let config = write_json(
        dir.path(),
        "c.json",
        &config(&cluster, "postgres", json!({})),
    );
    let all = messages(&tap(&[("-c", &config), ("--catalog", &catalog)]));
    let schema = all
        .iter()
        .find(|message| message["type"] == "SCHEMA")
        .expect("a SCHEMA");
    assert_eq!(schema["key_properties"], json!(["id"]));
    assert_eq!(
        schema["schema"]["properties"],
        json!({"id": {"type": ["integer"], "maximum": 2147483647, "minimum": -2147483648},
               "character-varying_name": {"type": ["null", "string"]},
               "varchar-name": {"type": ["null", "string"], "maxLength": 28},
               "char_name": {"type": ["null", "string"], "maxLength": 10},
               "text-name": {"type": ["null", "string"]}})
    );
    assert_base_definitions(&schema["schema"]);
}

#[test]
fn logical_replication() {
    let cluster = PgCluster::start_default();
    cluster.psql(
        "CREATE TABLE public.awesome_table (id serial PRIMARY KEY, name character varying, colour character varying, \
         timestamp_ntz timestamp without time zone, timestamp_tz timestamp with time zone); \
         SET TIME ZONE 'UTC'; \
         INSERT INTO awesome_table (name, colour, timestamp_ntz, timestamp_tz) VALUES \
           ('betty', 'blue', '2020-09-01 10:40:59', '2020-09-01 00:50:59+02'), \
           ('smelly', 'brown', '2020-09-01 10:40:59 BC', '2020-09-01 00:50:59+02 BC'), \
           ('pooper', 'green', '30000-09-01 10:40:59', '10000-09-01 00:50:59+02')",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_json(
        dir.path(),
        "c.json",
        &config(
            &cluster,
            "postgres",
            json!({"filter_table": "awesome_table", "default_replication_method": "LOG_BASED"}),
        ),
    );
    // First run: the full initial copy.
    let first: Vec<Value> = messages(&tap(&[("-c", &config)]))
        .into_iter()
        .filter(|message| message["type"] != "ACTIVATE_VERSION")
        .collect();
    assert_eq!(first[0]["type"], "SCHEMA");
    assert_eq!(first[0]["stream"], "public-awesome_table");
    assert_eq!(first[1]["type"], "STATE");
    let record = |message: &Value| {
        assert_eq!(message["type"], "RECORD", "{message}");
        assert_eq!(message["stream"], "public-awesome_table");
        assert!(message["version"].is_i64() && message["time_extracted"].is_string());
        message["record"].clone()
    };
    assert_eq!(
        record(&first[2]),
        json!({"colour": "blue", "id": 1, "name": "betty",
               "timestamp_ntz": "2020-09-01T10:40:59+00:00", "timestamp_tz": "2020-08-31T22:50:59+00:00"})
    );
    // Difference (README, values): the old tap replaced BC and out-of-range timestamps by
    // 9999-12-31T23:59:59.999000+00:00; pgferry keeps them (ISO 8601, expanded years).
    assert_eq!(
        record(&first[3]),
        json!({"colour": "brown", "id": 2, "name": "smelly",
               "timestamp_ntz": "-2019-09-01T10:40:59+00:00", "timestamp_tz": "-2019-08-31T22:50:59+00:00"})
    );
    assert_eq!(
        record(&first[4]),
        json!({"colour": "green", "id": 3, "name": "pooper",
               "timestamp_ntz": "+30000-09-01T10:40:59+00:00", "timestamp_tz": "+10000-08-31T22:50:59+00:00"})
    );
    assert_eq!(first[5]["type"], "STATE");
    let state = first.last().expect("a STATE")["value"].clone();
    assert!(
        state["bookmarks"]["public-awesome_table"]["lsn"].is_u64(),
        "{state}"
    );
    let state_file = write_json(dir.path(), "state.json", &state);

    // Changes: an update, a new column, an insert, a delete, a TRUNCATE.
    cluster.psql(
        "UPDATE awesome_table SET colour = 'purple' WHERE name = 'betty'; \
         ALTER TABLE awesome_table ADD COLUMN nice_flag bool DEFAULT true; \
         INSERT INTO awesome_table (name, colour, timestamp_ntz, timestamp_tz, nice_flag) \
           VALUES ('milky', 'black', '2022-09-01 10:40:59', '10000-09-01 00:50:59+02', false); \
         DELETE FROM awesome_table WHERE name = 'pooper'; \
         TRUNCATE awesome_table",
    );
    let output = tap(&[("-c", &config), ("-s", &state_file)]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let second: Vec<Value> = messages(&output);
    let kinds: Vec<&str> = second
        .iter()
        .map(|message| message["type"].as_str().unwrap_or_default())
        .collect();
    // Upstream: the SCHEMA of the catalog, then a second one when the new column appeared.
    // pgferry reads the table at start (README: the schema is refreshed at start), so its one
    // SCHEMA already has `nice_flag` and records of either shape fit it.
    assert_eq!(kinds[0], "SCHEMA", "{second:#?}");
    assert_eq!(kinds.iter().filter(|kind| **kind == "SCHEMA").count(), 1);
    assert_eq!(
        second[0]["schema"]["properties"]["nice_flag"],
        json!({"type": ["null", "boolean"]})
    );
    assert_eq!(
        record(&second[1]),
        json!({"_sdc_deleted_at": null, "colour": "purple", "id": 1, "name": "betty",
               "timestamp_ntz": "2020-09-01T10:40:59+00:00", "timestamp_tz": "2020-08-31T22:50:59+00:00"})
    );
    assert_eq!(
        record(&second[2]),
        json!({"_sdc_deleted_at": null, "colour": "black", "id": 4, "name": "milky", "nice_flag": false,
               "timestamp_ntz": "2022-09-01T10:40:59+00:00", "timestamp_tz": "+10000-08-31T22:50:59+00:00"})
    );
    let deleted = record(&second[3]);
    assert_eq!(deleted["id"], 3);
    assert!(deleted["_sdc_deleted_at"].is_string(), "{deleted}");
    // TRUNCATE cannot be carried by Singer messages: logged, as upstream ignored it.
    assert!(stderr.contains("TRUNCATE"), "{stderr}");
    assert_eq!(second.last().expect("a STATE")["type"], "STATE");
    assert_eq!(
        second
            .iter()
            .filter(|message| message["type"] == "RECORD")
            .count(),
        3,
        "{second:#?}"
    );
}

/// What `clear_state_on_replication_change` checked upstream, through whole runs: a stream whose
/// method changed starts over (its bookmarks cleared but the new method), one whose method
/// stayed keeps them (an interrupted FULL_TABLE copy keeps its `version`).
#[test]
fn replication_method_changes() {
    let cluster = PgCluster::start_default();
    cluster.psql("CREATE TABLE public.chicken_table (id integer PRIMARY KEY, v text); INSERT INTO chicken_table VALUES (1, 'a')");
    let dir = tempfile::tempdir().expect("temp dir");
    let run = |method: &str, state: Value| {
        let config = write_json(
            dir.path(),
            "c.json",
            &config(
                &cluster,
                "postgres",
                json!({"filter_table": "chicken_table", "replication_method": method}),
            ),
        );
        let state = write_json(dir.path(), "s.json", &state);
        let all = messages(&tap(&[("-c", &config), ("-s", &state)]));
        let last = all
            .iter()
            .rev()
            .find(|message| message["type"] == "STATE")
            .expect("a STATE")["value"]["bookmarks"]["public-chicken_table"]
            .clone();
        let records = all
            .iter()
            .filter(|message| message["type"] == "RECORD")
            .count();
        (last, records)
    };
    // LOG_BASED → FULL_TABLE: the lsn is dropped, the table copied in full, a new version.
    let (bookmark, records) = run(
        "FULL_TABLE",
        json!({"bookmarks": {"public-chicken_table": {"version": 88, "last_replication_method": "LOG_BASED", "lsn": 1000}}}),
    );
    assert_eq!(records, 1);
    assert_eq!(bookmark["last_replication_method"], "FULL_TABLE");
    assert!(bookmark.get("lsn").is_none(), "{bookmark}");
    assert_ne!(bookmark["version"], 88);
    // An interrupted FULL_TABLE copy staying FULL_TABLE keeps its version (and reads the table
    // again in full: README, interrupted copy).
    let (bookmark, records) = run(
        "FULL_TABLE",
        json!({"bookmarks": {"public-chicken_table": {"version": 88, "last_replication_method": "FULL_TABLE", "xmin": 333333}}}),
    );
    assert_eq!(records, 1);
    assert_eq!(bookmark["version"], 88);
    assert_eq!(bookmark["xmin"], Value::Null);
    // An interrupted FULL_TABLE copy → LOG_BASED: its xmin is dropped, the first LOG_BASED copy
    // runs and leaves an lsn.
    let (bookmark, records) = run(
        "LOG_BASED",
        json!({"bookmarks": {"public-chicken_table": {"version": 2222, "last_replication_method": "FULL_TABLE", "xmin": 2}}}),
    );
    assert_eq!(records, 1);
    assert_eq!(bookmark["last_replication_method"], "LOG_BASED");
    assert!(bookmark["lsn"].is_u64(), "{bookmark}");
    assert_eq!(bookmark["xmin"], Value::Null);
    assert_ne!(bookmark["version"], 2222);
}
