//! gdnlite insert throughput: 1,000-document batches of ~1 KB documents, `waitForSync=true`,
//! over h2c, with 1, 4 and 16 concurrent requests (one HTTP/2 connection, multiplexed).
//! Server and client share this process (and the machine's cores).

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pgferry::gdnlite::{GdnLite, GdnLiteConfig};

/// The allocator of the `pgferry` binary, so the numbers match `pgferry gdnlite`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 1000;
const KEY: &str = "bench.key.secret";

/// A batch of ~1 KB documents without `_key` (keys are generated, so bodies can be reused).
fn batch_body() -> Bytes {
    let docs: Vec<serde_json::Value> = (0..BATCH)
        .map(|i| {
            serde_json::json!({
                "id": i,
                "name": format!("customer-{i:06}"),
                "email": format!("customer{i}@example.com"),
                "balance": i as f64 * 1.25,
                "active": i % 2 == 0,
                "tags": ["alpha", "beta", "gamma"],
                "address": {"street": "1 Long Street", "city": "Springfield", "zip": "12345"},
                "notes": "x".repeat(780),
            })
        })
        .collect();
    Bytes::from(serde_json::to_vec(&docs).unwrap_or_default())
}

fn bench(c: &mut Criterion) {
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    else {
        return;
    };
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let Ok(server) = runtime.block_on(GdnLite::start(GdnLiteConfig::new(dir.path(), KEY))) else {
        return;
    };
    let url = server.url();
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .http2_initial_stream_window_size(4 * 1024 * 1024)
        .http2_initial_connection_window_size(32 * 1024 * 1024)
        .build_http();
    let body = batch_body();
    eprintln!("document size ≈ {} bytes", body.len() / BATCH);
    let created = runtime.block_on(
        client.request(
            Request::post(format!("{url}/_fabric/_system/_api/collection"))
                .header("authorization", format!("apikey {KEY}"))
                .body(Full::new(Bytes::from_static(br#"{"name":"bench"}"#)))
                .unwrap_or_default(),
        ),
    );
    if !created.is_ok_and(|r| r.status().is_success()) {
        eprintln!("could not create the bench collection");
        return;
    }
    let path = format!("{url}/_fabric/_system/_api/document/bench?waitForSync=true&silent=false");

    let mut group = c.benchmark_group("gdnlite_insert_h2c_waitForSync");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .warm_up_time(Duration::from_secs(2));
    for concurrency in [1usize, 4, 16] {
        group.throughput(Throughput::Elements((concurrency * BATCH) as u64));
        group.bench_with_input(
            BenchmarkId::new("concurrent_requests", concurrency),
            &concurrency,
            |b, &concurrency| {
                b.iter_custom(|iterations| {
                    runtime.block_on(async {
                        let started = Instant::now();
                        for _ in 0..iterations {
                            let mut requests = Vec::with_capacity(concurrency);
                            for _ in 0..concurrency {
                                let request = Request::post(&path)
                                    .header("authorization", format!("apikey {KEY}"))
                                    .header("content-type", "application/json")
                                    .body(Full::new(body.clone()))
                                    .unwrap_or_default();
                                let client = client.clone();
                                requests.push(tokio::spawn(async move {
                                    let response =
                                        client.request(request).await.map_err(|e| e.to_string())?;
                                    let status = response.status();
                                    response
                                        .into_body()
                                        .collect()
                                        .await
                                        .map_err(|e| e.to_string())?;
                                    if status != 201 {
                                        return Err(format!("status {status}"));
                                    }
                                    Ok::<(), String>(())
                                }));
                            }
                            for request in requests {
                                if let Ok(Err(e)) | Err(e) =
                                    request.await.map_err(|e| e.to_string())
                                {
                                    panic!("bench request failed: {e}");
                                }
                            }
                        }
                        started.elapsed()
                    })
                });
            },
        );
    }
    group.finish();
    runtime.block_on(server.stop());
}

/// Preparing a 1,000-document batch for storage: one-pass transcoding (what gdnlite does for
/// inserts) against parsing into `serde_json::Value` and serialising each document again.
fn prepare_batch(c: &mut Criterion) {
    let body = batch_body();
    let mut group = c.benchmark_group("gdnlite_prepare_batch");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("transcode", |b| {
        b.iter(|| {
            let Ok(pgferry::gdnlite::json::TranscodedBody::Array(docs)) =
                pgferry::gdnlite::json::transcode_batch(&body)
            else {
                panic!("transcode");
            };
            docs.into_iter()
                .map(|d| match d {
                    pgferry::gdnlite::json::TranscodedDoc::Object { open_body, .. } => {
                        pgferry::gdnlite::json::TranscodedDoc::finish(
                            &open_body, "k", "bench", "_r",
                        )
                        .len()
                    }
                    pgferry::gdnlite::json::TranscodedDoc::NotObject => 0,
                })
                .sum::<usize>()
        });
    });
    group.bench_function("value_tree", |b| {
        b.iter(|| {
            let Ok(serde_json::Value::Array(docs)) = pgferry::gdnlite::json::parse_body(&body)
            else {
                panic!("parse");
            };
            docs.into_iter()
                .map(|d| {
                    let mut map = match d {
                        serde_json::Value::Object(map) => map,
                        _ => serde_json::Map::new(),
                    };
                    map.insert("_key".into(), "k".into());
                    map.insert("_id".into(), "bench/k".into());
                    map.insert("_rev".into(), "_r".into());
                    serde_json::to_vec(&map).map(|v| v.len()).unwrap_or(0)
                })
                .sum::<usize>()
        });
    });
    group.finish();
}

/// The ceiling: redb alone, one thread, 1,000 ~1 KB values per durable transaction, as
/// gdnlite's writer stores them (no HTTP, no JSON).
fn redb_ceiling(c: &mut Criterion) {
    const TABLE: redb::TableDefinition<'_, &[u8], &[u8]> = redb::TableDefinition::new("documents");
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let Ok(db) = redb::Database::create(dir.path().join("ceiling.redb")) else {
        return;
    };
    let value = vec![b'x'; 1000];
    let mut next = 0u64;
    let mut group = c.benchmark_group("redb_ceiling");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .warm_up_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("insert_1000x1KB_durable_commit", |b| {
        b.iter(|| {
            let Ok(mut txn) = db.begin_write() else {
                panic!("begin_write");
            };
            txn.set_durability(redb::Durability::Immediate);
            if let Ok(mut table) = txn.open_table(TABLE) {
                for _ in 0..BATCH {
                    next += 1;
                    let key = format!("bench\0{next:016}");
                    if table.insert(key.as_bytes(), value.as_slice()).is_err() {
                        panic!("insert");
                    }
                }
            }
            if txn.commit().is_err() {
                panic!("commit");
            }
        });
    });
    group.finish();
}

#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(
        benches,
        super::bench,
        super::redb_ceiling,
        super::prepare_batch
    );
}
use group::benches;
criterion_main!(benches);
