//! How fast replication frames are decoded: CopyData framing plus XLogData/keepalive parsing,
//! over a buffer of realistic wal2json format-version 2 messages (the per-frame work the
//! replication stream does before any JSON is looked at).

use bytes::{BufMut, BytesMut};
use criterion::{criterion_main, Criterion, Throughput};
use pgferry::decode::replication::ReplicationMessage;
use postgres_protocol::message::backend::Message;

const FRAMES: usize = 10_000;

fn wire_buffer() -> BytesMut {
    let payload = br#"{"action":"I","schema":"public","table":"orders","columns":[{"name":"id","type":"integer","value":12345},{"name":"customer","type":"text","value":"ACME Corporation Ltd"},{"name":"amount","type":"numeric(12,2)","value":1234.56},{"name":"created_at","type":"timestamp with time zone","value":"2026-11-25 04:52:10.123456+00"}]}"#;
    let mut buffer = BytesMut::new();
    for index in 0..FRAMES as u64 {
        let body_len = 1 + 24 + payload.len();
        buffer.put_u8(b'd');
        buffer.put_u32((body_len + 4) as u32);
        buffer.put_u8(b'w');
        buffer.put_u64(0x1_0000_0000 + index * 512);
        buffer.put_u64(0x1_0000_0000 + index * 512 + 400);
        buffer.put_i64(817_000_000_000_000);
        buffer.put_slice(payload);
        if index % 100 == 99 {
            buffer.put_u8(b'd');
            buffer.put_u32(4 + 18);
            buffer.put_u8(b'k');
            buffer.put_u64(0x1_0000_0000 + index * 512);
            buffer.put_i64(817_000_000_000_000);
            buffer.put_u8(0);
        }
    }
    buffer
}

fn decode_all(mut buffer: BytesMut) -> usize {
    let mut payload_bytes = 0;
    while let Ok(Some(message)) = Message::parse(&mut buffer) {
        if let Message::CopyData(body) = message {
            if let Ok(ReplicationMessage::XLogData(xlog)) =
                ReplicationMessage::parse(body.into_bytes())
            {
                payload_bytes += xlog.data.len();
            }
        }
    }
    payload_bytes
}

fn bench(c: &mut Criterion) {
    let buffer = wire_buffer();
    let mut group = c.benchmark_group("replication_frames");
    group.throughput(Throughput::Bytes(buffer.len() as u64));
    group.bench_function("copydata_xlogdata_decode", |b| {
        b.iter_batched(
            || buffer.clone(),
            decode_all,
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench);
}
use group::benches;
criterion_main!(benches);
