//! pgoutput's streaming of in-progress transactions (protocol 2): a transaction larger than
//! `logical_decoding_work_mem` arrives in blocks before it commits; pgferry spools it to disk,
//! applies it at Stream Commit without the rows of a subtransaction rolled back in between,
//! drops a streamed transaction that aborts, and keeps its own memory bounded throughout.

mod gdnlite_support;
mod support;

use gdnlite_support::{api, Http, Server, KEY};
use hyper::Method;
use serde_json::{json, Value};
use support::PgCluster;

#[test]
fn streamed_transactions_apply_at_commit_skip_rollbacks_and_stay_in_bounded_memory() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let cluster = PgCluster::builder()
        .setting("logical_decoding_work_mem", "64kB")
        .start();
    cluster.psql("CREATE TABLE public.big (id int PRIMARY KEY, v text);");
    let server = runtime.block_on(Server::start());
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state.json");
    let config = json!({
        "source": {
            "host": "127.0.0.1", "port": cluster.port(), "user": "postgres",
            "password": "trust", "dbname": "postgres", "sslmode": "disable",
            "replication_method": "LOG_BASED", "plugin": "pgoutput", "publication": "big_pub"
        },
        "destination": {"gdn_url": server.url(), "api_key": KEY, "batch_size_rows": 1000},
        "tables": ["public.big"],
        "state_file": state.display().to_string()
    });
    let path = dir.path().join("pipeline.json");
    std::fs::write(&path, config.to_string()).expect("write pipeline");
    let run = || support::run_to_completion(&path);
    run();
    assert_eq!(
        cluster.psql("SELECT count(*) FROM pg_publication_tables WHERE pubname = 'big_pub' AND tablename = 'big'"),
        "1",
        "the publication was created for the selected table"
    );

    cluster.psql(
        "BEGIN;
         INSERT INTO public.big SELECT g, 'row ' || g FROM generate_series(1, 200000) g;
         SAVEPOINT half;
         INSERT INTO public.big SELECT g, 'rolled back' FROM generate_series(500001, 550000) g;
         ROLLBACK TO SAVEPOINT half;
         UPDATE public.big SET v = 'updated' WHERE id <= 1000;
         COMMIT;
         BEGIN;
         INSERT INTO public.big SELECT g, 'aborted' FROM generate_series(700001, 800000) g;
         ROLLBACK;
         UPDATE public.big SET v = 'small after streamed' WHERE id = 2;",
    );
    let summary = run();
    let streamed: u64 = cluster
        .psql("SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = 'macrometa_postgres'")
        .parse()
        .unwrap_or(0);
    assert!(
        streamed >= 1,
        "the server streamed the large transactions in progress (stream_txns = {streamed})"
    );

    let http = runtime.block_on(async { Http::h1(&server.url()) });
    let count = runtime.block_on(http.call(Method::GET, &api("collection/big/count"), Value::Null));
    assert_eq!(
        count.json["count"],
        json!(200_000),
        "{:?}\n{summary}",
        count.json
    );
    for (key, expected) in [
        ("1", json!("updated")),
        ("1001", json!("row 1001")),
        ("200000", json!("row 200000")),
    ] {
        let document = runtime.block_on(http.call(
            Method::GET,
            &api(&format!("document/big/{key}")),
            Value::Null,
        ));
        assert_eq!(document.json["v"], expected, "document {key}");
    }
    for key in ["500001", "700001"] {
        let document = runtime.block_on(http.call(
            Method::GET,
            &api(&format!("document/big/{key}")),
            Value::Null,
        ));
        assert_eq!(
            document.status.as_u16(),
            404,
            "rolled-back row {key} must not arrive"
        );
    }
    let peak = support::peak_rss_mb(&summary);
    assert!(
        peak < 120.0,
        "peak RSS {peak} MB while spooling 350,000 streamed rows"
    );
    let spool = dir.path().join("state.json.spool");
    let left: Vec<_> = std::fs::read_dir(&spool)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "spool files left behind: {left:?}");
}
