//! How fast pgoutput messages are decoded: a realistic mix of Insert (60 %), Update (30 %, some
//! with an old key, some with an unchanged TOASTed column) and Delete (10 %) messages of a
//! six-column `orders` table in text format, as protocol 1 sends them, with the Begin/Commit
//! around every hundred changes. Reports throughput in bytes and in messages.

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{black_box, criterion_main, Criterion, Throughput};
use pgferry::decode::pgoutput::{PgOutputDecoder, PgOutputMessage, ProtocolVersion};
use pgferry::pg::Lsn;

const CHANGES: u64 = 10_000;
const RELATION_ID: u32 = 16_391;

/// One tuple column: `Some(text)` or NULL, or `u` for an unchanged TOASTed value.
enum Column<'a> {
    Text(&'a str),
    Null,
    Unchanged,
}

fn put_tuple(out: &mut BytesMut, columns: &[Column<'_>]) {
    out.put_i16(columns.len() as i16);
    for column in columns {
        match column {
            Column::Text(text) => {
                out.put_u8(b't');
                out.put_i32(text.len() as i32);
                out.put_slice(text.as_bytes());
            }
            Column::Null => out.put_u8(b'n'),
            Column::Unchanged => out.put_u8(b'u'),
        }
    }
}

fn frames() -> Vec<Bytes> {
    let note = "customer asked for delivery to the back door; call before arriving";
    let mut frames = Vec::new();
    let mut lsn = 0x1_0000_0000u64;
    for index in 0..CHANGES {
        if index % 100 == 0 {
            let mut begin = BytesMut::new();
            begin.put_u8(b'B');
            begin.put_u64(lsn + 40_000);
            begin.put_i64(817_000_000_000_000);
            begin.put_u32(1_000 + (index / 100) as u32);
            frames.push(begin.freeze());
        }
        let id = (index * 7919 % 1_000_000).to_string();
        let amount = format!("{}.{:02}", index % 10_000, index % 100);
        let row = [
            Column::Text(&id),
            Column::Text("ACME Corporation Ltd"),
            Column::Text(&amount),
            Column::Text("2026-11-25 04:52:10.123456+00"),
            Column::Text(if index % 3 == 0 { "shipped" } else { "open" }),
            Column::Text(note),
        ];
        let mut message = BytesMut::new();
        match index % 10 {
            0..=5 => {
                message.put_u8(b'I');
                message.put_u32(RELATION_ID);
                message.put_u8(b'N');
                put_tuple(&mut message, &row);
            }
            6..=8 => {
                message.put_u8(b'U');
                message.put_u32(RELATION_ID);
                if index % 10 == 8 {
                    message.put_u8(b'K');
                    put_tuple(
                        &mut message,
                        &[
                            Column::Text("42"),
                            Column::Null,
                            Column::Null,
                            Column::Null,
                            Column::Null,
                            Column::Null,
                        ],
                    );
                }
                message.put_u8(b'N');
                let mut new = row;
                if index % 10 == 7 {
                    new[5] = Column::Unchanged;
                }
                put_tuple(&mut message, &new);
            }
            _ => {
                message.put_u8(b'D');
                message.put_u32(RELATION_ID);
                message.put_u8(b'K');
                put_tuple(
                    &mut message,
                    &[
                        Column::Text(&id),
                        Column::Null,
                        Column::Null,
                        Column::Null,
                        Column::Null,
                        Column::Null,
                    ],
                );
            }
        }
        frames.push(message.freeze());
        lsn += 120;
        if index % 100 == 99 {
            let mut commit = BytesMut::new();
            commit.put_u8(b'C');
            commit.put_u8(0);
            commit.put_u64(lsn);
            commit.put_u64(lsn + 48);
            commit.put_i64(817_000_000_000_000);
            frames.push(commit.freeze());
            lsn += 48;
        }
    }
    frames
}

fn decode_all(frames: &[Bytes]) -> usize {
    let mut decoder = PgOutputDecoder::new(ProtocolVersion::V1);
    let mut changes = 0;
    for (index, frame) in frames.iter().enumerate() {
        match decoder.decode(frame, Lsn::from_u64(index as u64)) {
            Ok(
                PgOutputMessage::Insert(_)
                | PgOutputMessage::Update(_)
                | PgOutputMessage::Delete(_),
            ) => changes += 1,
            Ok(_) => {}
            Err(error) => panic!("{error}"),
        }
    }
    changes
}

fn bench(c: &mut Criterion) {
    let frames = frames();
    let bytes: usize = frames.iter().map(Bytes::len).sum();
    assert_eq!(decode_all(&frames), CHANGES as usize);
    let mut group = c.benchmark_group("pgoutput");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("decode_mix_bytes", |b| {
        b.iter(|| decode_all(black_box(&frames)))
    });
    group.throughput(Throughput::Elements(frames.len() as u64));
    group.bench_function("decode_mix_messages", |b| {
        b.iter(|| decode_all(black_box(&frames)))
    });
    group.finish();
}

#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench);
}
use group::benches;
criterion_main!(benches);
