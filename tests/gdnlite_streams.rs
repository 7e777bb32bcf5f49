//! Collection change streams over the Pulsar WebSocket consumer API: every change once per
//! subscription, in commit order; unacknowledged messages come again after a reconnect;
//! acknowledged positions survive a restart.

mod gdnlite_support;

use gdnlite_support::{ack, api, close, consume, next_message, Http, Server, KEY};
use hyper::Method;
use serde_json::{json, Value};

fn auth() -> String {
    format!("apikey {KEY}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_once_in_order_with_redelivery_after_reconnect() {
    let mut server = Server::start().await;
    let http = Http::h2(&server.url());
    http.call(
        Method::POST,
        &api("collection"),
        json!({"name": "cdc", "stream": true}),
    )
    .await
    .assert_ok(200);
    let docs: Vec<Value> = (1..=5)
        .map(|i| json!({"_key": format!("k{i}"), "i": i}))
        .collect();
    http.call(
        Method::POST,
        &api("document/cdc?waitForSync=true"),
        Value::Array(docs),
    )
    .await
    .assert_ok(201);
    http.call(
        Method::PATCH,
        &api("document/cdc"),
        json!([{"_key": "k2", "j": 1}]),
    )
    .await
    .assert_ok(202);
    http.call(Method::DELETE, &api("document/cdc"), json!(["k3"]))
        .await
        .assert_ok(202);
    // A failed write publishes nothing.
    http.call(Method::POST, &api("document/cdc"), json!([{"_key": "k1"}]))
        .await
        .assert_ok(202);

    let expected = [
        ("INSERT", "k1"),
        ("INSERT", "k2"),
        ("INSERT", "k3"),
        ("INSERT", "k4"),
        ("INSERT", "k5"),
        ("UPDATE", "k2"),
        ("DELETE", "k3"),
    ];
    let mut ws = consume(&server.url(), "cdc", "s1", &auth())
        .await
        .expect("consumer connects");
    let mut ids = Vec::new();
    for (op, key) in expected {
        let m = next_message(&mut ws).await;
        assert_eq!(
            (m.op.as_str(), m.doc["_key"].as_str()),
            (op, Some(key)),
            "{m:?}"
        );
        ids.push(m.id.clone());
        if op == "UPDATE" {
            assert_eq!(
                (m.doc["i"].clone(), m.doc["j"].clone()),
                (json!(2), json!(1))
            );
        }
        if op == "DELETE" {
            assert_eq!(m.doc["_delete"], true);
        }
    }
    // Ack the first three, then disconnect: the other four come again, in order.
    for id in &ids[..3] {
        ack(&mut ws, id).await;
    }
    close(ws).await;
    let mut ws = consume(&server.url(), "cdc", "s1", &auth())
        .await
        .expect("reconnects");
    for (op, key) in &expected[3..] {
        let m = next_message(&mut ws).await;
        assert_eq!((m.op.as_str(), m.doc["_key"].as_str()), (*op, Some(*key)));
        ack(&mut ws, &m.id).await;
    }
    // Live delivery of a change made while the consumer is attached.
    http.call(Method::POST, &api("document/cdc"), json!({"_key": "live"}))
        .await
        .assert_ok(202);
    let m = next_message(&mut ws).await;
    assert_eq!(
        (m.op.as_str(), m.doc["_key"].as_str()),
        ("INSERT", Some("live"))
    );
    ack(&mut ws, &m.id).await;
    close(ws).await;

    // Another subscription starts at the earliest message.
    let mut ws2 = consume(&server.url(), "cdc", "s2", &auth())
        .await
        .expect("second subscription");
    let first = next_message(&mut ws2).await;
    assert_eq!(first.doc["_key"], "k1");
    close(ws2).await;

    // After a restart, s1 has nothing pending: the next message is a new change.
    server.restart().await;
    let http = Http::h1(&server.url());
    http.call(
        Method::POST,
        &api("document/cdc?waitForSync=true"),
        json!({"_key": "after"}),
    )
    .await
    .assert_ok(201);
    let mut ws = consume(&server.url(), "cdc", "s1", &auth())
        .await
        .expect("consumer after restart");
    let m = next_message(&mut ws).await;
    assert_eq!(
        (m.op.as_str(), m.doc["_key"].as_str()),
        ("INSERT", Some("after"))
    );
    close(ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabling_a_stream_later_and_refusing_bad_consumers() {
    let server = Server::start().await;
    let http = Http::h1(&server.url());
    http.call(
        Method::POST,
        &api("collection"),
        json!({"name": "later", "stream": false}),
    )
    .await
    .assert_ok(200);
    http.call(
        Method::POST,
        &api("document/later"),
        json!({"_key": "before"}),
    )
    .await
    .assert_ok(202);
    assert!(
        consume(&server.url(), "later", "s", &auth()).await.is_err(),
        "no stream yet"
    );
    http.call(
        Method::PUT,
        &api("collection/later/properties"),
        json!({"hasStream": true}),
    )
    .await
    .assert_ok(200);
    http.call(
        Method::POST,
        &api("document/later"),
        json!({"_key": "after"}),
    )
    .await
    .assert_ok(202);
    let err = consume(&server.url(), "later", "s", "apikey wrong")
        .await
        .expect_err("wrong key refused");
    assert!(err.contains("401"), "{err}");
    let mut ws = consume(&server.url(), "later", "s", &auth())
        .await
        .expect("consumer");
    let m = next_message(&mut ws).await;
    assert_eq!(m.doc["_key"], "after");
    close(ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_changes_arrive_in_commit_order_across_a_reconnect() {
    let server = Server::start().await;
    let http = Http::h2(&server.url());
    http.call(
        Method::POST,
        &api("collection"),
        json!({"name": "bulk", "stream": true}),
    )
    .await
    .assert_ok(200);
    // Concurrent writers: the stream order must equal the commit order, which each key's
    // revision sequence reflects; here every key is written once, so check completeness.
    let mut writers = Vec::new();
    for w in 0..4 {
        let http = http.clone();
        writers.push(tokio::spawn(async move {
            for b in 0..10 {
                let docs: Vec<Value> = (0..25)
                    .map(|i| json!({"_key": format!("w{w}-b{b}-{i:02}")}))
                    .collect();
                http.call(
                    Method::POST,
                    &api("document/bulk?waitForSync=true"),
                    Value::Array(docs),
                )
                .await
                .assert_ok(201);
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    let mut ws = consume(&server.url(), "bulk", "s", &auth())
        .await
        .expect("consumer");
    let mut seen = Vec::new();
    let mut last_id = 0u64;
    for n in 0..1000 {
        let m = next_message(&mut ws).await;
        let id: u64 = m.id.parse().expect("numeric id");
        assert!(id > last_id, "ids increase");
        last_id = id;
        seen.push(m.doc["_key"].as_str().unwrap_or_default().to_string());
        if n < 600 {
            ack(&mut ws, &m.id).await;
        }
    }
    close(ws).await;
    let mut ws = consume(&server.url(), "bulk", "s", &auth())
        .await
        .expect("reconnect");
    for expected in &seen[600..] {
        let m = next_message(&mut ws).await;
        assert_eq!(m.doc["_key"].as_str(), Some(expected.as_str()));
    }
    close(ws).await;
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_acknowledgements_redeliver_at_once() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let server = Server::start().await;
    let http = Http::h1(&server.url());
    http.call(
        Method::POST,
        &api("collection"),
        json!({"name": "n", "stream": true}),
    )
    .await
    .assert_ok(200);
    http.call(
        Method::POST,
        &api("document/n"),
        json!([{"_key": "a"}, {"_key": "b"}]),
    )
    .await
    .assert_ok(202);
    let mut ws = consume(&server.url(), "n", "s", &auth())
        .await
        .expect("consumer");
    let a = next_message(&mut ws).await;
    let b = next_message(&mut ws).await;
    assert_eq!(
        (a.doc["_key"].as_str(), b.doc["_key"].as_str()),
        (Some("a"), Some("b"))
    );
    ws.send(Message::text(
        json!({"type": "negativeAcknowledge", "messageId": a.id}).to_string(),
    ))
    .await
    .expect("nack");
    let again = next_message(&mut ws).await;
    assert_eq!(
        (again.id.as_str(), again.doc["_key"].as_str()),
        (a.id.as_str(), Some("a"))
    );
    ws.send(Message::text(r#"{"type":"isEndOfTopic"}"#))
        .await
        .expect("isEndOfTopic");
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
        .await
        .expect("answer")
        .expect("open")
        .expect("frame");
    assert_eq!(
        answer.into_text().expect("text").as_str(),
        r#"{"endOfTopic":false}"#
    );
    ack(&mut ws, &a.id).await;
    ack(&mut ws, &b.id).await;
    close(ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_consumer_takes_the_subscription_over() {
    use futures_util::StreamExt;
    let server = Server::start().await;
    let http = Http::h1(&server.url());
    http.call(
        Method::POST,
        &api("collection"),
        json!({"name": "t", "stream": true}),
    )
    .await
    .assert_ok(200);
    http.call(
        Method::POST,
        &api("document/t?waitForSync=true"),
        json!([{"_key": "a"}, {"_key": "b"}, {"_key": "c"}]),
    )
    .await
    .assert_ok(201);
    let mut first = consume(&server.url(), "t", "s", &auth())
        .await
        .expect("first consumer");
    let a = next_message(&mut first).await;
    ack(&mut first, &a.id).await;
    let _b = next_message(&mut first).await;
    let _c = next_message(&mut first).await;
    // The first connection is left open (as after a network failure). The ack of "a" reached the
    // server before the second connection was even opened, and the consumer reads its socket
    // before it looks at takeovers, so "a" is acknowledged when the second one attaches.
    let mut second = consume(&server.url(), "t", "s", &auth())
        .await
        .expect("second consumer");
    let m = next_message(&mut second).await;
    assert_eq!(
        m.doc["_key"], "b",
        "unacknowledged messages go to the new consumer"
    );
    assert_eq!(next_message(&mut second).await.doc["_key"], "c");
    // The first consumer was closed by the server.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match first.next().await {
                None
                | Some(Err(_))
                | Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the replaced consumer is closed");
    close(second).await;
}

/// `msgBacklog` of a subscription in the stream's stats (`result` is stringified JSON).
async fn backlog(http: &Http, stream: &str, subscription: &str) -> Option<u64> {
    let answer = http
        .call(
            Method::GET,
            &api(&format!("streams/c8locals.{stream}/stats")),
            Value::Null,
        )
        .await;
    answer.assert_ok(200);
    let stats: Value =
        serde_json::from_str(answer.json["result"].as_str().expect("stringified stats"))
            .expect("stats are JSON");
    stats["subscriptions"][subscription]["msgBacklog"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_stats_count_what_a_subscription_has_not_acknowledged() {
    let server = Server::start().await;
    let http = Http::h1(&server.url());
    http.call(
        Method::POST,
        &api("collection"),
        json!({"name": "st", "stream": true}),
    )
    .await
    .assert_ok(200);
    let docs: Vec<Value> = (1..=3).map(|i| json!({"_key": format!("k{i}")})).collect();
    http.call(
        Method::POST,
        &api("document/st?waitForSync=true"),
        Value::Array(docs),
    )
    .await
    .assert_ok(201);
    assert_eq!(backlog(&http, "st", "s").await, None, "not attached yet");
    let mut ws = consume(&server.url(), "st", "s", &auth())
        .await
        .expect("consumer");
    assert_eq!(
        backlog(&http, "st", "s").await,
        Some(3),
        "listed from the handshake on"
    );
    let first = next_message(&mut ws).await;
    let _second = next_message(&mut ws).await;
    let third = next_message(&mut ws).await;
    ack(&mut ws, &first.id).await;
    ack(&mut ws, &third.id).await;
    close(ws).await;
    assert_eq!(backlog(&http, "st", "s").await, Some(1));
    http.call(
        Method::GET,
        &api("streams/c8locals.nope/stats"),
        Value::Null,
    )
    .await
    .assert_error(404, 1203);
}

/// A truncate writes nothing to the collection's stream, as far as GDN's documentation goes
/// (no message is described for it): the next message after a truncate is the next write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_writes_nothing_to_the_stream() {
    let server = Server::start().await;
    let http = Http::h2(&server.url());
    http.call(
        Method::POST,
        &api("collection"),
        json!({"name": "cut", "stream": true}),
    )
    .await
    .assert_ok(200);
    let mut ws = consume(&server.url(), "cut", "s", &auth())
        .await
        .expect("consumer");
    http.call(
        Method::POST,
        &api("document/cut?waitForSync=true"),
        json!([{"_key": "a"}, {"_key": "b"}]),
    )
    .await
    .assert_ok(201);
    for key in ["a", "b"] {
        let message = next_message(&mut ws).await;
        assert_eq!(
            (message.op.as_str(), &message.doc["_key"]),
            ("INSERT", &json!(key))
        );
        ack(&mut ws, &message.id).await;
    }
    http.call(Method::PUT, &api("collection/cut/truncate"), Value::Null)
        .await
        .assert_ok(200);
    http.call(
        Method::POST,
        &api("document/cut?waitForSync=true"),
        json!([{"_key": "c"}]),
    )
    .await
    .assert_ok(201);
    let message = next_message(&mut ws).await;
    assert_eq!(
        (message.op.as_str(), &message.doc["_key"]),
        ("INSERT", &json!("c"))
    );
    close(ws).await;
}
