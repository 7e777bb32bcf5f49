//! HTTP conformance of gdnlite against the GDN surface pyC8 and the connectors use: every
//! endpoint, every error path with its exact status and errorNum, over HTTP/1.1 and h2c.

mod gdnlite_support;

use std::time::{Duration, Instant};

use gdnlite_support::{api, Http, Server, KEY};
use hyper::Method;
use pgferry::gdnlite::FaultConfig;
use serde_json::{json, Value};

async fn create(http: &Http, name: &str, stream: bool) {
    let a = http
        .call(Method::POST, &api("collection"), json!({"name": name, "waitForSync": false, "keyOptions": {"type": "traditional", "allowUserKeys": true}, "type": 2, "isSpot": false, "strongConsistency": false, "isLocal": false, "isSystem": false, "stream": stream}))
        .await;
    a.assert_ok(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_api_keys_login_and_tokens() {
    let server = Server::start_with(|c| {
        c.tenant = "acme".into();
        c.login = Some(("dev@example.com".into(), pgferry::secret::Secret::new("pw")));
    })
    .await;
    let http = Http::h1(&server.url());
    for auth in [
        None,
        Some("apikey wrong"),
        Some(KEY),
        Some("basic abc"),
        Some("bearer not.a.jwt"),
    ] {
        http.with_auth(auth)
            .call(Method::GET, &api("collection"), Value::Null)
            .await
            .assert_error(401, 401);
    }
    for path in ["/_api/user", "/_api/user/"] {
        let a = http.call(Method::GET, path, Value::Null).await;
        a.assert_ok(200);
        assert_eq!(a.json["result"][0]["tenant"], "acme");
    }
    // A wrong key makes /_api/user fail, which pyC8 ignores; fabric calls fail with 401.
    http.with_auth(Some("apikey nope"))
        .call(Method::GET, "/_api/user", Value::Null)
        .await
        .assert_error(401, 401);

    let login = http
        .with_auth(None)
        .call(
            Method::POST,
            "/_open/auth",
            json!({"email": "dev@example.com", "password": "pw"}),
        )
        .await;
    login.assert_ok(200);
    assert_eq!(login.json["tenant"], "acme");
    let jwt = login.json["jwt"].as_str().expect("jwt").to_string();
    for scheme in ["bearer", "Bearer"] {
        http.with_auth(Some(&format!("{scheme} {jwt}")))
            .call(Method::GET, &api("collection"), Value::Null)
            .await
            .assert_ok(200);
    }
    http.with_auth(Some(&format!("bearer {jwt}x")))
        .call(Method::GET, &api("collection"), Value::Null)
        .await
        .assert_error(401, 401);
    http.with_auth(None)
        .call(
            Method::POST,
            "/_open/auth",
            json!({"email": "dev@example.com", "password": "no"}),
        )
        .await
        .assert_error(401, 401);
    http.with_auth(None)
        .call(Method::POST, "/_open/auth", json!({"email": 5}))
        .await
        .assert_error(400, 400);
    http.with_auth(None)
        .raw(Method::POST, "/_open/auth", "{oops")
        .await
        .assert_error(400, 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_lifecycle_and_errors() {
    let server = Server::start().await;
    for http in [Http::h1(&server.url()), Http::h2(&server.url())] {
        let name = if http
            .call(Method::GET, &api("collection/orders"), Value::Null)
            .await
            .status
            == 404
        {
            "orders"
        } else {
            "orders2"
        };
        create(&http, name, false).await;
        let list = http
            .call(Method::GET, &api("collection"), Value::Null)
            .await;
        list.assert_ok(200);
        let entry = list.json["result"]
            .as_array()
            .expect("result")
            .iter()
            .find(|c| c["name"] == name)
            .expect("listed")
            .clone();
        for field in [
            "id",
            "name",
            "isSystem",
            "type",
            "status",
            "collectionModel",
            "isSpot",
            "strongConsistency",
        ] {
            assert!(
                entry.get(field).is_some(),
                "list entry lacks {field}: {entry}"
            );
        }
        assert!(entry["id"].is_string());
        assert_eq!(
            (entry["type"].as_u64(), entry["status"].as_u64()),
            (Some(2), Some(3))
        );

        http.call(Method::POST, &api("collection"), json!({"name": name}))
            .await
            .assert_error(409, 1207);
        http.call(Method::POST, &api("collection"), json!({"name": "1bad"}))
            .await
            .assert_error(400, 1208);
        http.call(Method::POST, &api("collection"), json!({"nome": "x"}))
            .await
            .assert_error(400, 1208);
        http.raw(Method::POST, &api("collection"), "{\"name\":")
            .await
            .assert_error(400, 600);

        let get = http
            .call(
                Method::GET,
                &api(&format!("collection/{name}")),
                Value::Null,
            )
            .await;
        get.assert_ok(200);
        assert_eq!(get.json["hasStream"], false);
        let props = http
            .call(
                Method::PUT,
                &api(&format!("collection/{name}/properties")),
                json!({"hasStream": true}),
            )
            .await;
        props.assert_ok(200);
        assert_eq!(props.json["hasStream"], true);
        assert_eq!(
            http.call(
                Method::GET,
                &api(&format!("collection/{name}/properties")),
                Value::Null
            )
            .await
            .json["hasStream"],
            true
        );

        http.call(
            Method::POST,
            &api(&format!("document/{name}")),
            json!([{"_key": "a"}, {"_key": "b"}]),
        )
        .await
        .assert_ok(202);
        let count = http
            .call(
                Method::GET,
                &api(&format!("collection/{name}/count")),
                Value::Null,
            )
            .await;
        count.assert_ok(200);
        assert_eq!(count.json["count"], 2);
        http.call(
            Method::PUT,
            &api(&format!("collection/{name}/truncate")),
            Value::Null,
        )
        .await
        .assert_ok(200);
        assert_eq!(
            http.call(
                Method::GET,
                &api(&format!("collection/{name}/count")),
                Value::Null
            )
            .await
            .json["count"],
            0
        );

        let dropped = http
            .call(
                Method::DELETE,
                &api(&format!("collection/{name}")),
                Value::Null,
            )
            .await;
        dropped.assert_ok(200);
        for (method, path) in [
            (Method::GET, format!("collection/{name}")),
            (Method::GET, format!("collection/{name}/count")),
            (Method::PUT, format!("collection/{name}/truncate")),
            (Method::DELETE, format!("collection/{name}")),
            (Method::GET, format!("document/{name}/a")),
            (Method::POST, format!("document/{name}")),
        ] {
            http.call(method, &api(&path), json!({}))
                .await
                .assert_error(404, 1203);
        }
        http.call(
            Method::PUT,
            &api(&format!("collection/{name}/properties")),
            json!({"hasStream": true}),
        )
        .await
        .assert_error(404, 1203);
        http.call(Method::GET, "/_fabric/other/_api/collection", Value::Null)
            .await
            .assert_error(404, 1228);
        http.call(Method::GET, &api("nothing/here"), Value::Null)
            .await
            .assert_error(404, 404);
        http.call(Method::PATCH, &api("collection"), Value::Null)
            .await
            .assert_error(405, 405);
    }
}

/// The target connector's upsert: insert batch, patch the failures, delete by keys.
async fn document_batches(http: &Http, coll: &str) {
    create(http, coll, false).await;
    let insert = http
        .call(
            Method::POST,
            &api(&format!("document/{coll}?returnNew=0&silent=0")),
            json!([{"_key": "1", "v": 1}, {"_key": "2", "v": 2}, {"v": 3}]),
        )
        .await;
    insert.assert_ok(202);
    let items = insert.json.as_array().expect("array").clone();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["_id"], format!("{coll}/1"));
    assert_eq!(items[1]["_key"], "2");
    let generated = items[2]["_key"]
        .as_str()
        .expect("generated key")
        .to_string();
    assert!(!generated.is_empty() && items[2]["_rev"].is_string());
    assert!(insert.headers.get("x-c8-error-codes").is_none());

    // Duplicates without overwrite: 1210 per entry, the header counts them, others are written.
    let dup = http
        .call(Method::POST, &api(&format!("document/{coll}?waitForSync=true")), json!([{"_key": "1", "v": 10}, {"_key": "3", "v": 3}, {"_key": "2", "v": 20}, {"_key": "bad key"}, 7]))
        .await;
    dup.assert_ok(201);
    let d = dup.json.as_array().expect("array");
    assert_eq!(d.len(), 5);
    for i in [0, 2] {
        assert_eq!(d[i]["error"], true);
        assert_eq!(d[i]["errorNum"], 1210);
        assert!(d[i].get("_id").is_none());
    }
    assert_eq!(d[1]["_id"], format!("{coll}/3"));
    assert_eq!(d[3]["errorNum"], 1221);
    assert_eq!(d[4]["errorNum"], 1227);
    assert_eq!(
        dup.headers
            .get("x-c8-error-codes")
            .and_then(|v| v.to_str().ok()),
        Some("1210:2,1221:1,1227:1")
    );
    assert_eq!(
        http.call(
            Method::GET,
            &api(&format!("document/{coll}/1")),
            Value::Null
        )
        .await
        .json["v"],
        1
    );

    // PATCH of the failed ones, as the target does: success items carry _id and _oldRev.
    let before = http
        .call(
            Method::GET,
            &api(&format!("document/{coll}/1")),
            Value::Null,
        )
        .await
        .json;
    let patch = http
        .call(
            Method::PATCH,
            &api(&format!("document/{coll}?keepNull=1&mergeObjects=1&returnNew=0&returnOld=0&ignoreRevs=0&overwrite=0&silent=0")),
            json!([{"_key": "1", "v": 10, "o": {"a": 1}}, {"_key": "nope", "v": 0}, {"v": 1}]),
        )
        .await;
    patch.assert_ok(202);
    let p = patch.json.as_array().expect("array");
    assert_eq!(p[0]["_id"], format!("{coll}/1"));
    assert_eq!(p[0]["_oldRev"], before["_rev"]);
    assert_ne!(p[0]["_rev"], before["_rev"]);
    assert_eq!(p[1]["errorNum"], 1202);
    assert_eq!(p[2]["errorNum"], 1226);
    assert_eq!(
        patch
            .headers
            .get("x-c8-error-codes")
            .and_then(|v| v.to_str().ok()),
        Some("1202:1,1226:1")
    );
    let after = http
        .call(
            Method::GET,
            &api(&format!("document/{coll}/1")),
            Value::Null,
        )
        .await
        .json;
    assert_eq!(
        (after["v"].clone(), after["o"].clone()),
        (json!(10), json!({"a": 1}))
    );

    // keepNull=false removes; mergeObjects=false replaces nested objects.
    http.call(
        Method::PATCH,
        &api(&format!("document/{coll}?keepNull=false&mergeObjects=true")),
        json!([{"_key": "1", "v": null, "o": {"b": 2}}]),
    )
    .await
    .assert_ok(202);
    let after = http
        .call(
            Method::GET,
            &api(&format!("document/{coll}/1")),
            Value::Null,
        )
        .await
        .json;
    assert!(after.get("v").is_none());
    assert_eq!(after["o"], json!({"a": 1, "b": 2}));
    http.call(
        Method::PATCH,
        &api(&format!("document/{coll}?mergeObjects=false")),
        json!([{"_key": "1", "o": {"c": 3}}]),
    )
    .await
    .assert_ok(202);
    assert_eq!(
        http.call(
            Method::GET,
            &api(&format!("document/{coll}/1")),
            Value::Null
        )
        .await
        .json["o"],
        json!({"c": 3})
    );

    // overwrite=true replaces and reports _oldRev; returnOld / returnNew carry the documents.
    let over = http
        .call(
            Method::POST,
            &api(&format!(
                "document/{coll}?overwrite=true&returnOld=true&returnNew=1"
            )),
            json!([{"_key": "2", "w": 1}]),
        )
        .await;
    over.assert_ok(202);
    assert_eq!(over.json[0]["old"]["v"], 2);
    assert_eq!(over.json[0]["new"]["w"], 1);
    assert!(over.json[0]["new"].get("v").is_none());
    assert!(over.json[0]["_oldRev"].is_string());

    // PUT replaces whole documents; a missing one is 1202.
    let put = http
        .call(
            Method::PUT,
            &api(&format!("document/{coll}?returnNew=true")),
            json!([{"_key": "2", "x": 1}, {"_key": "zz"}]),
        )
        .await;
    put.assert_ok(202);
    assert_eq!(
        put.json[0]["new"],
        json!({"_key": "2", "_id": format!("{coll}/2"), "_rev": put.json[0]["_rev"], "x": 1})
    );
    assert_eq!(put.json[1]["errorNum"], 1202);

    // silent=true: only errors are reported.
    let silent = http
        .call(
            Method::POST,
            &api(&format!("document/{coll}?silent=true")),
            json!([{"_key": "s1"}, {"_key": "1"}]),
        )
        .await;
    silent.assert_ok(202);
    assert_eq!(silent.json.as_array().map(Vec::len), Some(1));
    assert_eq!(silent.json[0]["errorNum"], 1210);

    // DELETE with a JSON body of keys (and objects with _key); missing keys are 1202.
    let del = http
        .call(
            Method::DELETE,
            &api(&format!(
                "document/{coll}?returnOld=0&ignoreRevs=0&overwrite=0&silent=0"
            )),
            json!(["1", {"_key": "3"}, "missing", "bad key", "other/x", format!("{coll}/s1")]),
        )
        .await;
    del.assert_ok(202);
    let x = del.json.as_array().expect("array");
    assert_eq!(x[0]["_id"], format!("{coll}/1"));
    assert_eq!(x[1]["_key"], "3");
    assert_eq!(x[2]["errorNum"], 1202);
    assert_eq!(x[3]["errorNum"], 1221);
    assert_eq!(x[4]["errorNum"], 1205, "a handle of another collection");
    assert_eq!(x[5]["_key"], "s1", "a document handle selects by key");
    // A synced removal answers 200, as the OpenAPI's DELETE says.
    http.call(
        Method::DELETE,
        &api(&format!("document/{coll}?waitForSync=true")),
        json!(["missing"]),
    )
    .await
    .assert_ok(200);
    http.call(
        Method::GET,
        &api(&format!("document/{coll}/1")),
        Value::Null,
    )
    .await
    .assert_error(404, 1202);

    // Revision preconditions with ignoreRevs=false.
    let current = http
        .call(
            Method::GET,
            &api(&format!("document/{coll}/2")),
            Value::Null,
        )
        .await
        .json;
    let stale = http.call(Method::PATCH, &api(&format!("document/{coll}?ignoreRevs=false")), json!([{"_key": "2", "_rev": "_stale", "y": 1}, {"_key": "2", "_rev": current["_rev"], "y": 2}])).await;
    assert_eq!(stale.json[0]["errorNum"], 1200);
    assert!(stale.json[1]["_id"].is_string(), "{}", stale.json);

    // Whole-body errors: not JSON, not UTF-8, not an array/object, bad boolean.
    http.raw(
        Method::POST,
        &api(&format!("document/{coll}")),
        "[{\"_key\": \"x\",]",
    )
    .await
    .assert_error(400, 600);
    http.raw(
        Method::POST,
        &api(&format!("document/{coll}")),
        &b"[{\"_key\": \"\xff\"}]"[..],
    )
    .await
    .assert_error(400, 600);
    http.raw(Method::POST, &api(&format!("document/{coll}")), "")
        .await
        .assert_error(400, 600);
    http.call(Method::POST, &api(&format!("document/{coll}")), json!(5))
        .await
        .assert_error(400, 1227);
    http.call(
        Method::POST,
        &api(&format!("document/{coll}?waitForSync=maybe")),
        json!([]),
    )
    .await
    .assert_error(400, 400);
    http.call(
        Method::POST,
        &api("document/no_such_collection"),
        json!([{"_key": "a"}]),
    )
    .await
    .assert_error(404, 1203);
    // Left: "2" and the generated key.
    assert_eq!(
        http.call(
            Method::GET,
            &api(&format!("collection/{coll}/count")),
            Value::Null
        )
        .await
        .json["count"],
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_batches_over_http1_and_h2c() {
    let server = Server::start().await;
    document_batches(&Http::h1(&server.url()), "docs_h1").await;
    document_batches(&Http::h2(&server.url()), "docs_h2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_document_forms() {
    let server = Server::start().await;
    let http = Http::h2(&server.url());
    create(&http, "one", false).await;
    let ins = http.call(Method::POST, &api("document/one?waitForSync=true&returnNew=true"), json!({"_key": "k:1", "n": 12345678901234567890u64, "i": 9007199254740993i64, "f": 1.5})).await;
    ins.assert_ok(201);
    assert_eq!(ins.json["_id"], "one/k:1");
    assert_eq!(ins.json["new"]["f"], 1.5);
    http.call(Method::POST, &api("document/one"), json!({"_key": "k:1"}))
        .await
        .assert_error(409, 1210);
    http.call(Method::POST, &api("document/one"), json!({"_key": "a/b"}))
        .await
        .assert_error(400, 1221);
    http.call(
        Method::POST,
        &api("document/one"),
        json!({"_key": "k".repeat(255)}),
    )
    .await
    .assert_error(400, 1221);
    http.call(
        Method::POST,
        &api("document/one?silent=true"),
        json!({"_key": "k".repeat(254)}),
    )
    .await
    .assert_ok(202);

    // Numbers are kept as GDN keeps them: i64 exact, wider integers rounded to doubles.
    let got = http
        .call(Method::GET, &api("document/one/k%3A1"), Value::Null)
        .await;
    got.assert_ok(200);
    assert_eq!(got.json["i"].as_i64(), Some(9007199254740993));
    assert!(got.json["n"].is_f64());
    assert_eq!(got.json["n"].as_f64(), Some(12345678901234567890.0));
    assert!(
        String::from_utf8_lossy(&got.raw).contains("\"n\":1.2345678901234567e+19"),
        "{}",
        String::from_utf8_lossy(&got.raw)
    );
    let etag = got
        .headers
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    assert_eq!(
        etag,
        Some(format!(
            "\"{}\"",
            got.json["_rev"].as_str().unwrap_or_default()
        ))
    );

    let patched = http
        .call(
            Method::PATCH,
            &api("document/one/k:1?returnOld=true"),
            json!({"m": 1}),
        )
        .await;
    patched.assert_ok(202);
    assert_eq!(patched.json["_oldRev"], got.json["_rev"]);
    assert_eq!(patched.json["old"]["f"], 1.5);
    let replaced = http
        .call(
            Method::PUT,
            &api("document/one/k:1?waitForSync=1"),
            json!({"only": true}),
        )
        .await;
    replaced.assert_ok(201);
    let now = http
        .call(Method::GET, &api("document/one/k:1"), Value::Null)
        .await
        .json;
    assert_eq!(
        now,
        json!({"_key": "k:1", "_id": "one/k:1", "_rev": replaced.json["_rev"], "only": true})
    );
    http.call(Method::PUT, &api("document/one/missing"), json!({}))
        .await
        .assert_error(404, 1202);
    http.call(Method::PATCH, &api("document/one/missing"), json!({}))
        .await
        .assert_error(404, 1202);
    http.call(Method::PATCH, &api("document/one/k:1"), json!([1]))
        .await
        .assert_error(400, 1227);
    http.call(Method::GET, &api("document/one/missing"), Value::Null)
        .await
        .assert_error(404, 1202);
    http.call(Method::GET, &api("document/one/bad%20key"), Value::Null)
        .await
        .assert_error(400, 1221);
    let del = http
        .call(
            Method::DELETE,
            &api("document/one/k:1?waitForSync=true"),
            Value::Null,
        )
        .await;
    del.assert_ok(200);
    assert_eq!(del.json["_key"], "k:1");
    http.call(Method::DELETE, &api("document/one/k:1"), Value::Null)
        .await
        .assert_error(404, 1202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_one_key_within_one_batch_see_each_other() {
    let server = Server::start().await;
    let http = Http::h1(&server.url());
    create(&http, "same", false).await;
    let a = http
        .call(
            Method::POST,
            &api("document/same?overwrite=true&returnOld=true&returnNew=true"),
            json!([{"_key": "k", "v": 1}, {"_key": "k", "v": 2}, {"_key": "k", "v": 3}]),
        )
        .await;
    a.assert_ok(202);
    assert!(a.json[0].get("old").is_none());
    assert_eq!(a.json[1]["old"]["v"], 1);
    assert_eq!(a.json[2]["old"]["v"], 2);
    assert_eq!(a.json[2]["_oldRev"], a.json[1]["_rev"]);
    let p = http
        .call(
            Method::PATCH,
            &api("document/same?returnNew=true"),
            json!([{"_key": "k", "w": 1}, {"_key": "k", "x": 1}]),
        )
        .await;
    assert_eq!(
        p.json[1]["new"],
        json!({"_key": "k", "_id": "same/k", "_rev": p.json[1]["_rev"], "v": 3, "w": 1, "x": 1})
    );
    let d = http
        .call(Method::DELETE, &api("document/same"), json!(["k", "k"]))
        .await;
    assert_eq!(d.json[0]["_key"], "k");
    assert_eq!(d.json[1]["errorNum"], 1202);
    http.call(Method::GET, &api("document/same/k"), Value::Null)
        .await
        .assert_error(404, 1202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limit_is_413() {
    let server = Server::start_with(|c| c.max_body_bytes = 1024).await;
    for http in [Http::h1(&server.url()), Http::h2(&server.url())] {
        create(
            &http,
            if http
                .call(Method::GET, &api("collection/big"), Value::Null)
                .await
                .status
                == 404
            {
                "big"
            } else {
                "big2"
            },
            false,
        )
        .await;
        let big = json!([{"_key": "a", "pad": "x".repeat(4096)}]);
        http.call(Method::POST, &api("document/big"), big)
            .await
            .assert_error(413, 413);
    }
    let http = Http::h1(&server.url());
    assert_eq!(
        http.call(Method::GET, &api("collection/big/count"), Value::Null)
            .await
            .json["count"],
        0
    );
}

/// Documents written out of key order, some replaced since (their bodies moved to the end of
/// the document log), come back whole and in key order, page after page.
#[tokio::test]
async fn cursor_pages_hold_whole_documents_whatever_their_place_in_the_log() {
    let server = Server::start().await;
    let http = Http::h2(&server.url());
    create(&http, "scattered", false).await;
    for chunk in (0..60).rev().collect::<Vec<i64>>().chunks(9) {
        let docs: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"_key": format!("k{i:03}"), "i": i, "pad": "x".repeat(*i as usize)}))
            .collect();
        http.call(Method::POST, &api("document/scattered"), Value::Array(docs))
            .await
            .assert_ok(202);
    }
    let replaced: Vec<Value> = (0..60)
        .step_by(3)
        .map(|i| json!({"_key": format!("k{i:03}"), "i": i, "replaced": true}))
        .collect();
    http.call(
        Method::PUT,
        &api("document/scattered"),
        Value::Array(replaced),
    )
    .await
    .assert_ok(202);
    let mut page = http
        .call(
            Method::POST,
            &api("cursor"),
            json!({"query": "FOR d IN scattered RETURN d", "batchSize": 7}),
        )
        .await;
    page.assert_ok(201);
    let mut seen = Vec::new();
    loop {
        for doc in page.json["result"].as_array().expect("result") {
            let i = doc["i"].as_i64().expect("i");
            assert_eq!(doc["_key"], format!("k{i:03}"));
            if i % 3 == 0 {
                assert_eq!(doc["replaced"], true, "{doc}");
                assert!(doc.get("pad").is_none(), "{doc}");
            } else {
                assert_eq!(doc["pad"], "x".repeat(i as usize), "{doc}");
            }
            seen.push(i);
        }
        if page.json["hasMore"] != true {
            break;
        }
        let id = page.json["id"].as_str().expect("id").to_string();
        page = http
            .call(Method::PUT, &api(&format!("cursor/{id}")), Value::Null)
            .await;
        page.assert_ok(200);
    }
    assert_eq!(seen, (0..60).collect::<Vec<i64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_page_in_key_order() {
    let server = Server::start().await;
    let http = Http::h2(&server.url());
    create(&http, "items", false).await;
    let docs: Vec<Value> = (0..120)
        .map(|i| json!({"_key": format!("k{i:03}"), "i": i}))
        .collect();
    http.call(
        Method::POST,
        &api("document/items?waitForSync=true"),
        Value::Array(docs),
    )
    .await
    .assert_ok(201);

    // Discovery (S1): first batch only, 50 documents.
    let s1 = http.call(Method::POST, &api("cursor"), json!({"query": "FOR d IN @@collection LIMIT 0, @count RETURN d", "count": false, "bindVars": {"@collection": "items", "count": 50}})).await;
    s1.assert_ok(201);
    assert_eq!(s1.json["result"].as_array().map(Vec::len), Some(50));
    assert_eq!(s1.json["hasMore"], false);

    // Full scan (S5/S6) with the default batch size: one page.
    let s5 = http.call(Method::POST, &api("cursor"), json!({"query": "FOR d IN @@collection RETURN d", "count": false, "bindVars": {"@collection": "items"}, "options": {"stream": true}, "stream": true})).await;
    s5.assert_ok(201);
    assert_eq!(s5.json["result"].as_array().map(Vec::len), Some(120));
    assert_eq!(s5.json["hasMore"], false);

    // Paging with batchSize, count, ttl; PUT fetches the next page in key order.
    let mut page = http
        .call(
            Method::POST,
            &api("cursor"),
            json!({"query": "for  d in items return d", "batchSize": 50, "count": true, "ttl": 10}),
        )
        .await;
    page.assert_ok(201);
    assert_eq!(page.json["count"], 120);
    let mut keys = Vec::new();
    loop {
        keys.extend(
            page.json["result"]
                .as_array()
                .expect("result")
                .iter()
                .map(|d| d["_key"].as_str().unwrap_or_default().to_string()),
        );
        if page.json["hasMore"] != true {
            assert!(page.json.get("id").is_none());
            break;
        }
        let id = page.json["id"].as_str().expect("id").to_string();
        // A write after the cursor was opened is not seen by it (snapshot).
        http.call(
            Method::POST,
            &api("document/items"),
            json!({"_key": "k050x"}),
        )
        .await;
        page = http
            .call(Method::PUT, &api(&format!("cursor/{id}")), Value::Null)
            .await;
        page.assert_ok(200);
    }
    let expected: Vec<String> = (0..120).map(|i| format!("k{i:03}")).collect();
    assert_eq!(keys, expected);

    let limited = http
        .call(
            Method::POST,
            &api("cursor"),
            json!({"query": "FOR x IN items LIMIT 10, 3 RETURN x", "count": true}),
        )
        .await;
    assert_eq!(
        limited.json["result"]
            .as_array()
            .map(|r| r.iter().map(|d| d["i"].clone()).collect::<Vec<_>>()),
        Some(vec![json!(10), json!(11), json!(12)])
    );
    assert_eq!(limited.json["count"], 3);

    // Delete, unknown ids, unsupported queries, unknown collections.
    let open = http
        .call(
            Method::POST,
            &api("cursor"),
            json!({"query": "FOR d IN items RETURN d", "batchSize": 1}),
        )
        .await;
    let id = open.json["id"].as_str().expect("id").to_string();
    http.call(Method::DELETE, &api(&format!("cursor/{id}")), Value::Null)
        .await
        .assert_ok(202);
    http.call(Method::PUT, &api(&format!("cursor/{id}")), Value::Null)
        .await
        .assert_error(404, 1600);
    http.call(Method::DELETE, &api("cursor/999"), Value::Null)
        .await
        .assert_error(404, 1600);
    let bad = http
        .call(
            Method::POST,
            &api("cursor"),
            json!({"query": "FOR d IN items FILTER d.i > 3 RETURN d"}),
        )
        .await;
    bad.assert_error(400, 1501);
    assert!(bad.json["errorMessage"]
        .as_str()
        .unwrap_or_default()
        .contains("FOR d IN @@collection RETURN d"));
    http.call(
        Method::POST,
        &api("cursor"),
        json!({"query": "FOR d IN nope RETURN d"}),
    )
    .await
    .assert_error(404, 1203);
    http.call(Method::POST, &api("cursor"), json!({"query": 5}))
        .await
        .assert_error(400, 400);
    http.call(
        Method::POST,
        &api("cursor"),
        json!({"query": "FOR d IN items RETURN d", "batchSize": 0}),
    )
    .await
    .assert_error(400, 400);
    http.raw(Method::POST, &api("cursor"), "{")
        .await
        .assert_error(400, 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_cursors_are_gone() {
    let server = Server::start().await;
    let http = Http::h1(&server.url());
    create(&http, "items", false).await;
    http.call(
        Method::POST,
        &api("document/items"),
        json!([{"_key": "a"}, {"_key": "b"}, {"_key": "c"}]),
    )
    .await
    .assert_ok(202);
    let open = http
        .call(
            Method::POST,
            &api("cursor"),
            json!({"query": "FOR d IN items RETURN d", "batchSize": 1, "ttl": 2}),
        )
        .await;
    let id = open.json["id"].as_str().expect("id").to_string();
    // Used within its ttl, a cursor lives on (and its ttl restarts).
    let second = http
        .call(Method::PUT, &api(&format!("cursor/{id}")), Value::Null)
        .await;
    second.assert_ok(200);
    assert_eq!(second.json["hasMore"], true);
    let idle_since = Instant::now();
    // The ttl is a duration, so the test has to let time pass before looking.
    gdnlite_support::wait_for("the ttl to pass", Duration::from_secs(5), || async move {
        idle_since.elapsed() >= Duration::from_millis(2500)
    })
    .await;
    http.call(Method::PUT, &api(&format!("cursor/{id}")), Value::Null)
        .await
        .assert_error(404, 1600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_listing_and_datacenter() {
    let server = Server::start().await;
    let http = Http::h1(&server.url());
    create(&http, "plain", false).await;
    create(&http, "changes", true).await;
    let streams = http
        .call(Method::GET, &api("streams?global=false"), Value::Null)
        .await;
    streams.assert_ok(200);
    let result = streams.json["result"].as_array().expect("result");
    assert_eq!(result.len(), 1);
    assert_eq!(result[0]["topic"], "changes");
    assert_eq!(result[0]["type"], 4);
    assert_eq!(result[0]["local"], true);
    let dc = http
        .call(Method::GET, "/datacenter/local", Value::Null)
        .await;
    dc.assert_ok(200);
    assert!(dc.json["tags"]["url"].is_string());
    // A WebSocket path without the upgrade is a clean 400; unknown streams are 404.
    http.call(
        Method::GET,
        "/_ws/ws/v2/consumer/persistent/_mm/c8local._system/changes/s1",
        Value::Null,
    )
    .await
    .assert_error(400, 400);
    http.call(
        Method::GET,
        "/_ws/ws/v2/consumer/persistent/_mm/c8local._system/plain/s1",
        Value::Null,
    )
    .await
    .assert_error(404, 1203);
    http.call(
        Method::GET,
        "/_ws/ws/v2/consumer/persistent/_mm/c8local.other/changes/s1",
        Value::Null,
    )
    .await
    .assert_error(404, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_data() {
    let mut server = Server::start().await;
    let http = Http::h1(&server.url());
    create(&http, "kept", true).await;
    http.call(
        Method::POST,
        &api("document/kept?waitForSync=true"),
        json!([{"_key": "a", "v": 1}]),
    )
    .await
    .assert_ok(201);
    http.call(
        Method::POST,
        &api("document/kept?waitForSync=false"),
        json!([{"_key": "b", "v": 2}]),
    )
    .await
    .assert_ok(202);
    server.restart().await;
    let http = Http::h2(&server.url());
    assert_eq!(
        http.call(Method::GET, &api("document/kept/a"), Value::Null)
            .await
            .json["v"],
        1
    );
    // A clean stop also keeps 202 writes (the shutdown commit is durable).
    assert_eq!(
        http.call(Method::GET, &api("document/kept/b"), Value::Null)
            .await
            .json["v"],
        2
    );
    let list = http
        .call(Method::GET, &api("collection/kept"), Value::Null)
        .await;
    assert_eq!(list.json["hasStream"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults() {
    let faulty = |f: FaultConfig| move |c: &mut pgferry::gdnlite::GdnLiteConfig| c.faults = f;
    let server = Server::start_with(faulty(FaultConfig {
        error_5xx_rate: 1.0,
        seed: Some(1),
        ..FaultConfig::default()
    }))
    .await;
    Http::h1(&server.url())
        .call(Method::GET, &api("collection"), Value::Null)
        .await
        .assert_error(503, 503);
    // Calls outside the fabric (login, user) are not faulted.
    Http::h1(&server.url())
        .call(Method::GET, "/_api/user", Value::Null)
        .await
        .assert_ok(200);

    let server = Server::start_with(faulty(FaultConfig {
        rate_limit_rate: 1.0,
        seed: Some(1),
        ..FaultConfig::default()
    }))
    .await;
    let a = Http::h2(&server.url())
        .call(Method::GET, &api("collection"), Value::Null)
        .await;
    a.assert_error(429, 429);
    assert!(a.headers.get("retry-after").is_some());

    let server = Server::start_with(faulty(FaultConfig {
        reset_rate: 1.0,
        seed: Some(1),
        ..FaultConfig::default()
    }))
    .await;
    assert!(Http::h1(&server.url())
        .try_call(Method::GET, &api("collection"), Value::Null)
        .await
        .is_err());

    let server = Server::start_with(faulty(FaultConfig {
        latency: Duration::from_millis(150),
        ..FaultConfig::default()
    }))
    .await;
    let started = Instant::now();
    Http::h1(&server.url())
        .call(Method::GET, &api("collection"), Value::Null)
        .await
        .assert_ok(200);
    assert!(started.elapsed() >= Duration::from_millis(150));

    // Per-document errors: deterministic for a seed, failed documents are not written.
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let server = Server::start_with(faulty(FaultConfig {
            document_error_rate: 0.5,
            seed: Some(7),
            ..FaultConfig::default()
        }))
        .await;
        let http = Http::h1(&server.url());
        create(&http, "f", false).await;
        let docs: Vec<Value> = (0..40).map(|i| json!({"_key": format!("d{i}")})).collect();
        let a = http
            .call(Method::POST, &api("document/f"), Value::Array(docs))
            .await;
        a.assert_ok(202);
        let failed: Vec<bool> = a
            .json
            .as_array()
            .expect("array")
            .iter()
            .map(|d| d["error"] == true)
            .collect();
        let n_failed = failed.iter().filter(|f| **f).count();
        assert!((5..35).contains(&n_failed), "{n_failed} of 40 failed");
        assert_eq!(
            a.headers
                .get("x-c8-error-codes")
                .and_then(|v| v.to_str().ok()),
            Some(format!("1:{n_failed}").as_str())
        );
        assert_eq!(
            http.call(Method::GET, &api("collection/f/count"), Value::Null)
                .await
                .json["count"],
            40 - n_failed as u64
        );
        outcomes.push(failed);
    }
    assert_eq!(
        outcomes[0], outcomes[1],
        "same seed, same per-document faults"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_get_gdn_errors_and_the_server_keeps_serving() {
    let server = Server::start().await;
    let http = Http::h1(&server.url());
    create(&http, "h", false).await;
    let bodies: Vec<&[u8]> = vec![
        b"\x00\x01\x02",
        b"\xff\xfe{}",
        b"[[[[[[[[[[",
        b"{\"_key\": \"a\", \"_key\": }",
        b"[{\"_key\": \"\\ud800\"}]",
        b"1e999999",
        b"[null, true, \"s\", 1.5, []]",
        b"{\"_key\": \"\\u0000\"}",
    ];
    for body in bodies {
        for (method, path) in [
            (Method::POST, "document/h"),
            (Method::PUT, "document/h"),
            (Method::PATCH, "document/h"),
            (Method::DELETE, "document/h"),
            (Method::PUT, "document/h/k"),
            (Method::POST, "cursor"),
            (Method::POST, "collection"),
            (Method::PUT, "collection/h/properties"),
        ] {
            let a = http.raw(method.clone(), &api(path), body.to_vec()).await;
            let status = a.status.as_u16();
            assert!(
                status < 500,
                "{method} {path} {body:?}: {status} {}",
                a.json
            );
            if !(200..300).contains(&status) {
                assert_eq!(a.json["error"], true, "{method} {path}: {}", a.json);
                assert!(a.json["errorNum"].is_u64(), "{method} {path}: {}", a.json);
            }
        }
    }
    // Deep nesting is refused by the JSON parser's recursion limit, not by a stack overflow.
    let deep = format!("[{}{}]", "[".repeat(10_000), "]".repeat(10_000));
    http.raw(Method::POST, &api("document/h"), deep)
        .await
        .assert_error(400, 600);
    // Odd paths and query strings.
    http.call(
        Method::GET,
        "/_fabric/_system/_api/document/h/%zz",
        Value::Null,
    )
    .await
    .assert_error(400, 400);
    http.call(
        Method::GET,
        "/_fabric/_system/_api/document/h/%ff",
        Value::Null,
    )
    .await
    .assert_error(400, 400);
    http.call(Method::GET, &api("collection?excludeSystem=%"), Value::Null)
        .await
        .assert_error(400, 400);
    http.call(Method::GET, "/", Value::Null)
        .await
        .assert_error(404, 404);
    // Still serving, and nothing invalid was written.
    let count = http
        .call(Method::GET, &api("collection/h/count"), Value::Null)
        .await;
    count.assert_ok(200);
    let keys: Vec<String> = http
        .call(
            Method::POST,
            &api("cursor"),
            json!({"query": "FOR d IN h RETURN d"}),
        )
        .await
        .json["result"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|d| d["_key"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        keys.iter().all(|k| pgferry::gdnlite::keys::is_valid_key(k)),
        "{keys:?}"
    );
}

/// pgferry's keyset page: documents (or only their keys) after a key, in key order, at most
/// `count`; the first page starts after the empty key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyset_pages_of_documents_and_of_keys() {
    let server = Server::start().await;
    let http = Http::h1(&server.url());
    http.call(Method::POST, &api("collection"), json!({"name": "ks"}))
        .await
        .assert_ok(200);
    let docs: Vec<Value> = (0..7)
        .map(|i| json!({"_key": format!("k{i}"), "i": i}))
        .collect();
    http.call(Method::POST, &api("document/ks"), Value::Array(docs))
        .await
        .assert_ok(202);
    let page = |returned: &str, after: &str, count: u64| {
        json!({
            "query": format!("FOR d IN @@collection FILTER d._key > @after SORT d._key LIMIT @count RETURN {returned}"),
            "bindVars": {"@collection": "ks", "after": after, "count": count},
            "batchSize": count,
        })
    };
    let first = http
        .call(Method::POST, &api("cursor"), page("d", "", 3))
        .await;
    first.assert_ok(201);
    let keys: Vec<&str> = first.json["result"]
        .as_array()
        .expect("result")
        .iter()
        .map(|d| d["_key"].as_str().expect("_key"))
        .collect();
    assert_eq!(keys, ["k0", "k1", "k2"]);
    assert_eq!(first.json["hasMore"], json!(false));
    let keys = http
        .call(Method::POST, &api("cursor"), page("d._key", "k2", 10))
        .await;
    keys.assert_ok(201);
    assert_eq!(keys.json["result"], json!(["k3", "k4", "k5", "k6"]));
    let none = http
        .call(Method::POST, &api("cursor"), page("d._key", "k6", 10))
        .await;
    assert_eq!(none.json["result"], json!([]));
}
