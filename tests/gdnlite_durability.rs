//! Durability of the real binary: writes answered 201 (waitForSync=true) from several
//! concurrent clients survive kill -9 in the middle of the load; stream subscription positions
//! survive too; the change stream holds exactly the committed documents.

mod gdnlite_support;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gdnlite_support::{ack, api, close, consume, next_message, wait_for, Http, KEY};
use hyper::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts `pgferry gdnlite` on a free port and returns the child and its base URL.
async fn spawn_gdnlite(dir: &std::path::Path) -> (Child, String) {
    spawn_gdnlite_with(dir, &[]).await
}

/// As [`spawn_gdnlite`], with extra flags.
async fn spawn_gdnlite_with(dir: &std::path::Path, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args([
            "gdnlite",
            "--listen",
            "127.0.0.1:0",
            "--api-key",
            KEY,
            "--data-dir",
        ])
        .arg(dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("pgferry gdnlite starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("gdnlite prints its address within 30 s")
        .expect("stdout readable")
        .expect("a line");
    let url = line
        .strip_prefix("gdnlite listening on ")
        .expect("the listening line")
        .trim()
        .to_string();
    (child, url)
}

async fn all_keys(http: &Http, collection: &str) -> BTreeSet<String> {
    let mut page = http.call(Method::POST, &api("cursor"), json!({"query": "FOR d IN @@c RETURN d", "bindVars": {"@c": collection}, "batchSize": 10000})).await;
    page.assert_ok(201);
    let mut keys = BTreeSet::new();
    loop {
        for d in page.json["result"].as_array().expect("result") {
            keys.insert(d["_key"].as_str().expect("_key").to_string());
        }
        if page.json["hasMore"] != true {
            return keys;
        }
        let id = page.json["id"].as_str().expect("id").to_string();
        page = http
            .call(Method::PUT, &api(&format!("cursor/{id}")), Value::Null)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_and_stream_positions_survive_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut child, url) = spawn_gdnlite(dir.path()).await;
    let http = Http::h2(&url);
    http.call(
        Method::POST,
        &api("collection"),
        json!({"name": "durable", "stream": true}),
    )
    .await
    .assert_ok(200);

    // A subscription that acknowledged the first 4 of 10 changes.
    let first: Vec<Value> = (0..10)
        .map(|i| json!({"_key": format!("pre{i}")}))
        .collect();
    http.call(
        Method::POST,
        &api("document/durable?waitForSync=true"),
        Value::Array(first),
    )
    .await
    .assert_ok(201);
    let auth = format!("apikey {KEY}");
    let mut ws = consume(&url, "durable", "s1", &auth)
        .await
        .expect("consumer");
    for _ in 0..4 {
        let m = next_message(&mut ws).await;
        ack(&mut ws, &m.id).await;
    }
    close(ws).await;
    let mut ws = consume(&url, "durable", "s1", &auth)
        .await
        .expect("consumer again");
    assert_eq!(next_message(&mut ws).await.doc["_key"], "pre4");
    close(ws).await;

    // Concurrent writers over HTTP/1.1 and h2c, recording every key answered 201.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..6 {
        let http = if w % 2 == 0 {
            Http::h2(&url)
        } else {
            Http::h1(&url)
        };
        let acked = Arc::clone(&acked);
        writers.push(tokio::spawn(async move {
            for b in 0.. {
                let keys: Vec<String> = (0..50).map(|i| format!("w{w}-{b:05}-{i:02}")).collect();
                let docs: Vec<Value> = keys
                    .iter()
                    .map(|k| json!({"_key": k, "pad": "x".repeat(200)}))
                    .collect();
                match http
                    .try_call_json(
                        Method::POST,
                        &api("document/durable?waitForSync=true"),
                        Value::Array(docs),
                    )
                    .await
                {
                    Ok((201, body)) => {
                        let items = body.as_array().cloned().unwrap_or_default();
                        assert_eq!(items.len(), keys.len());
                        assert!(
                            items.iter().all(|d| d["_id"].is_string()),
                            "every document written"
                        );
                        acked.lock().expect("lock").extend(keys);
                    }
                    Ok((status, body)) => panic!("unexpected answer {status}: {body}"),
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    wait_for(
        "3,000 acknowledged documents",
        Duration::from_secs(120),
        || {
            let acked = Arc::clone(&acked);
            async move { acked.lock().expect("lock").len() >= 3000 }
        },
    )
    .await;
    child.kill().await.expect("SIGKILL");
    for w in writers {
        w.await.expect("writer task");
    }
    let acked: BTreeSet<String> = acked.lock().expect("lock").iter().cloned().collect();
    assert!(acked.len() >= 3000);

    // Restart on the same directory: every 201 is there.
    let (_child, url) = spawn_gdnlite(dir.path()).await;
    let http = Http::h1(&url);
    let stored = all_keys(&http, "durable").await;
    let missing: Vec<&String> = acked.iter().filter(|k| !stored.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged documents lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );

    // Documents read back whole, and new writes go after whatever the crash left behind.
    let one = acked.iter().next().expect("an acknowledged key").clone();
    let doc = http
        .call(
            Method::GET,
            &api(&format!("document/durable/{one}")),
            Value::Null,
        )
        .await;
    doc.assert_ok(200);
    assert_eq!(doc.json["pad"], "x".repeat(200));
    http.call(
        Method::POST,
        &api("document/durable?waitForSync=true"),
        json!([{"_key": "after-crash", "v": 1}]),
    )
    .await
    .assert_ok(201);
    assert_eq!(
        http.call(
            Method::GET,
            &api("document/durable/after-crash"),
            Value::Null
        )
        .await
        .json["v"],
        1
    );
    let stored = all_keys(&http, "durable").await;

    // The subscription position survived: s1 resumes at pre4.
    let mut ws = consume(&url, "durable", "s1", &auth)
        .await
        .expect("consumer after kill -9");
    assert_eq!(next_message(&mut ws).await.doc["_key"], "pre4");
    close(ws).await;

    // The stream holds exactly the committed documents (written in the same transaction).
    let mut ws = consume(&url, "durable", "all", &auth)
        .await
        .expect("full consumer");
    let mut streamed = BTreeSet::new();
    for _ in 0..stored.len() {
        let m = next_message(&mut ws).await;
        assert_eq!(m.op, "INSERT");
        streamed.insert(m.doc["_key"].as_str().unwrap_or_default().to_string());
    }
    close(ws).await;
    assert_eq!(streamed, stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_during_writes_keeps_every_answered_write_and_restarts() {
    let mut server = gdnlite_support::Server::start().await;
    let url = server.url();
    let http = Http::h2(&url);
    http.call(
        Method::POST,
        &api("collection"),
        json!({"name": "c", "stream": true}),
    )
    .await
    .assert_ok(200);
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4 {
        let http = if w % 2 == 0 {
            Http::h2(&url)
        } else {
            Http::h1(&url)
        };
        let acked = Arc::clone(&acked);
        writers.push(tokio::spawn(async move {
            for b in 0.. {
                let keys: Vec<String> = (0..20).map(|i| format!("w{w}-{b:05}-{i:02}")).collect();
                let docs: Vec<Value> = keys.iter().map(|k| json!({"_key": k})).collect();
                // Alternate durable and non-durable writes: a clean stop keeps both.
                let sync = if b % 2 == 0 { "true" } else { "false" };
                match http
                    .try_call_json(
                        Method::POST,
                        &api(&format!("document/c?waitForSync={sync}")),
                        Value::Array(docs),
                    )
                    .await
                {
                    Ok((201 | 202, _)) => acked.lock().expect("lock").extend(keys),
                    Ok((status, body)) => panic!("unexpected answer {status}: {body}"),
                    Err(_) => return,
                }
            }
        }));
    }
    wait_for("1,000 answered documents", Duration::from_secs(60), || {
        let acked = Arc::clone(&acked);
        async move { acked.lock().expect("lock").len() >= 1000 }
    })
    .await;
    let handle = server.handle.take().expect("running");
    tokio::time::timeout(Duration::from_secs(20), handle.stop())
        .await
        .expect("stop returns while clients are writing");
    for w in writers {
        w.await.expect("writer task");
    }
    server.restart().await;
    let http = Http::h1(&server.url());
    let stored = all_keys(&http, "c").await;
    let acked: BTreeSet<String> = acked.lock().expect("lock").iter().cloned().collect();
    let missing = acked.iter().filter(|k| !stored.contains(*k)).count();
    assert_eq!(missing, 0, "answered documents lost by a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_line_flags_for_login_tenant_and_faults() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["gdnlite", "--help"])
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("development and test server") && help.contains("not a GDN"),
        "{help}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let (mut child, url) = spawn_gdnlite_with(
        dir.path(),
        &["--tenant", "acme", "--email", "a@b.c", "--password", "pw"],
    )
    .await;
    let http = Http::h1(&url);
    assert_eq!(
        http.call(Method::GET, "/_api/user", Value::Null).await.json["result"][0]["tenant"],
        "acme"
    );
    let login = http
        .with_auth(None)
        .call(
            Method::POST,
            "/_open/auth",
            json!({"email": "a@b.c", "password": "pw"}),
        )
        .await;
    login.assert_ok(200);
    let jwt = login.json["jwt"].as_str().expect("jwt").to_string();
    http.with_auth(Some(&format!("bearer {jwt}")))
        .call(Method::GET, &api("collection"), Value::Null)
        .await
        .assert_ok(200);
    child.kill().await.expect("kill");

    // The token is still valid after a restart with the same key (the signing key is derived from it).
    let (mut child, url) =
        spawn_gdnlite_with(dir.path(), &["--fault-5xx-rate", "1", "--fault-seed", "3"]).await;
    let http = Http::h1(&url);
    http.with_auth(Some(&format!("bearer {jwt}")))
        .call(Method::GET, &api("collection"), Value::Null)
        .await
        .assert_error(503, 503);
    child.kill().await.expect("kill");

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args([
            "gdnlite",
            "--listen",
            "127.0.0.1:0",
            "--api-key",
            KEY,
            "--fault-reset-rate",
            "2",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .expect("runs");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("reset_rate must be between 0 and 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_log_is_compacted_at_startup_without_losing_documents_or_stream_payloads() {
    let mut server = gdnlite_support::Server::start_with(|c| c.log_compaction_min_bytes = 1).await;
    let http = Http::h2(&server.url());
    http.call(Method::POST, &api("collection"), json!({"name": "g"}))
        .await
        .assert_ok(200);
    http.call(
        Method::POST,
        &api("collection"),
        json!({"name": "s", "stream": true}),
    )
    .await
    .assert_ok(200);
    // Every document of "g" is written six times: five of the six bodies become garbage.
    for round in 0..6 {
        let docs: Vec<Value> = (0..50)
            .map(|i| json!({"_key": format!("d{i:02}"), "round": round, "pad": "p".repeat(300)}))
            .collect();
        http.call(
            Method::POST,
            &api("document/g?overwrite=true&waitForSync=true"),
            Value::Array(docs),
        )
        .await
        .assert_ok(201);
    }
    http.call(
        Method::DELETE,
        &api("document/g?waitForSync=true"),
        json!(["d00", "d01"]),
    )
    .await
    .assert_ok(200);
    // Stream messages point into the log too, also at bodies the index no longer does.
    for round in 0..2 {
        http.call(
            Method::POST,
            &api("document/s?overwrite=true&waitForSync=true"),
            json!([{"_key": "a", "round": round}, {"_key": "b", "round": round}]),
        )
        .await
        .assert_ok(201);
    }
    let before = std::fs::metadata(server.dir.path().join("documents.log"))
        .expect("log")
        .len();
    server.restart().await;
    let after = std::fs::metadata(server.dir.path().join("documents.1.log"))
        .expect("compacted log")
        .len();
    assert!(
        !server.dir.path().join("documents.log").exists(),
        "the old generation is deleted"
    );
    assert!(
        after * 3 < before,
        "compaction drops the garbage: {before} -> {after}"
    );
    let http = Http::h1(&server.url());
    let keys = all_keys(&http, "g").await;
    assert_eq!(keys.len(), 48);
    let d = http
        .call(Method::GET, &api("document/g/d07"), Value::Null)
        .await;
    assert_eq!(
        (
            d.json["round"].clone(),
            d.json["pad"].as_str().map(str::len)
        ),
        (json!(5), Some(300))
    );
    // Stream messages kept their payloads through the move.
    let mut ws = consume(&server.url(), "s", "sub", &format!("apikey {KEY}"))
        .await
        .expect("consumer");
    for (op, key, round) in [
        ("INSERT", "a", 0),
        ("INSERT", "b", 0),
        ("UPDATE", "a", 1),
        ("UPDATE", "b", 1),
    ] {
        let m = next_message(&mut ws).await;
        assert_eq!(
            (
                m.op.as_str(),
                m.doc["_key"].as_str(),
                m.doc["round"].as_i64()
            ),
            (op, Some(key), Some(round))
        );
    }
    close(ws).await;
    // Writes after compaction go to the new generation and survive another restart.
    http.call(
        Method::POST,
        &api("document/g?waitForSync=true"),
        json!({"_key": "new", "v": 1}),
    )
    .await
    .assert_ok(201);
    server.restart().await;
    let http = Http::h1(&server.url());
    assert_eq!(
        http.call(Method::GET, &api("document/g/new"), Value::Null)
            .await
            .json["v"],
        1
    );
    assert_eq!(
        http.call(Method::GET, &api("document/g/d49"), Value::Null)
            .await
            .json["round"],
        5
    );
    assert_eq!(
        http.call(Method::GET, &api("document/s/a"), Value::Null)
            .await
            .json["round"],
        1
    );
}
