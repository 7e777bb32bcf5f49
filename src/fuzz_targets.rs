//! Entry points shared by the `fuzz/` targets (libFuzzer) and the stable-toolchain smoke test
//! (`tests/fuzz_smoke.rs`), so both exercise exactly the same code with the same invariants.
//!
//! Each function takes arbitrary bytes and must neither panic nor break its invariant: decoders
//! either return a typed error or a value whose JSON rendering is valid JSON.

use bytes::Bytes;

use crate::decode::copy_binary::CopyBinaryDecoder;
use crate::decode::pgoutput::{
    PgOutputDecoder, PgOutputMessage, ProtocolVersion, TupleColumn, TupleData,
};
use crate::decode::replication::ReplicationMessage;
use crate::decode::value::{decode, NumericOut, TypeCodec};
use crate::decode::wal2json::Action;
use crate::decode::wal2json_v1::V1Decoder;
use crate::pg::Lsn;

/// Replication CopyData frames: XLogData slices stay inside the frame.
pub fn replication_frame(data: &[u8]) {
    let frame = Bytes::copy_from_slice(data);
    if let Ok(ReplicationMessage::XLogData(xlog)) = ReplicationMessage::parse(frame) {
        assert_eq!(
            xlog.data.len() + 25,
            data.len(),
            "payload is the frame after its header"
        );
    }
}

/// COPY binary streams: byte 0 picks the field count, byte 1 where the stream is split in two
/// chunks; row counts never exceed what was decoded.
pub fn copy_binary(data: &[u8]) {
    let Some((&fields, rest)) = data.split_first() else {
        return;
    };
    let Some((&split, body)) = rest.split_first() else {
        return;
    };
    let mut decoder = CopyBinaryDecoder::new(usize::from(fields % 8));
    let at = usize::from(split).min(body.len());
    let mut rows = Vec::new();
    let body = Bytes::copy_from_slice(body);
    let first = decoder.decode_chunk(body.slice(..at), &mut rows);
    if first.is_ok() && decoder.decode_chunk(body.slice(at..), &mut rows).is_ok() {
        let _ = decoder.finish();
    }
    assert_eq!(
        decoder.rows(),
        rows.len() as u64,
        "every counted row was yielded"
    );
}

/// The codecs a fuzz input can pick with its first byte.
pub fn value_codecs() -> Vec<TypeCodec> {
    let scalars = vec![
        TypeCodec::Bool,
        TypeCodec::Int2,
        TypeCodec::Int4,
        TypeCodec::Int8,
        TypeCodec::Oid,
        TypeCodec::Float4,
        TypeCodec::Float8,
        TypeCodec::Numeric(NumericOut::Number),
        TypeCodec::Numeric(NumericOut::String),
        TypeCodec::Text,
        TypeCodec::Char,
        TypeCodec::Bytea,
        TypeCodec::Uuid,
        TypeCodec::Json,
        TypeCodec::Jsonb,
        TypeCodec::Date,
        TypeCodec::Time,
        TypeCodec::TimeTz,
        TypeCodec::Timestamp,
        TypeCodec::TimestampTz,
        TypeCodec::Interval,
        TypeCodec::Money { frac_digits: 2 },
        TypeCodec::Inet,
        TypeCodec::MacAddr,
        TypeCodec::MacAddr8,
        TypeCodec::Bit { single: true },
        TypeCodec::Bit { single: false },
        TypeCodec::VarBit,
        TypeCodec::Hstore,
    ];
    let arrays: Vec<TypeCodec> = scalars
        .iter()
        .map(|codec| TypeCodec::Array(Box::new(codec.clone())))
        .collect();
    scalars.into_iter().chain(arrays).collect()
}

/// Binary values: byte 0 picks the codec; a decoded value always renders as valid JSON.
///
/// Validity is checked syntactically (`IgnoredAny`): a legal PostgreSQL numeric may have
/// 131,072 digits, which is valid JSON even though it does not fit an f64.
pub fn value(data: &[u8]) {
    let Some((&pick, raw)) = data.split_first() else {
        return;
    };
    let codecs = value_codecs();
    let codec = &codecs[usize::from(pick) % codecs.len()];
    if let Ok(value) = decode(codec, raw) {
        let mut json = Vec::new();
        value.write_json(&mut json);
        if let Err(error) = serde_json::from_slice::<serde::de::IgnoredAny>(&json) {
            panic!(
                "{codec:?} rendered invalid JSON {:?}: {error}",
                String::from_utf8_lossy(&json)
            );
        }
    }
}

/// wal2json format-version 1: the input is frames, one per line, each `wal_start<TAB>payload`
/// as in `tests/fixtures/wal2json_v1/` (or a bare payload, then at a made-up LSN). Decoded
/// changes stay balanced (Begin … Commit, row changes inside), the decoder's state agrees, and
/// an error names the frame's LSN, appends nothing and leaves the decoder between transactions.
pub fn wal2json_v1(data: &[u8]) {
    let mut decoder = V1Decoder::new();
    let mut open = false;
    for (index, line) in data.split(|&byte| byte == b'\n').enumerate() {
        let fallback = Lsn::from_u64(0x1_0000 + 0x10 * index as u64);
        let (at, frame) = match line.iter().position(|&byte| byte == b'\t') {
            Some(tab) => (
                std::str::from_utf8(&line[..tab])
                    .ok()
                    .and_then(|text| text.parse().ok())
                    .unwrap_or(fallback),
                &line[tab + 1..],
            ),
            None => (fallback, line),
        };
        let mut out = Vec::new();
        match decoder.decode(frame, at, &mut out) {
            Ok(()) => {
                for change in &out {
                    match change.action {
                        Action::Begin => {
                            assert!(!open, "Begin inside a transaction");
                            open = true;
                        }
                        Action::Commit => {
                            assert!(open, "Commit outside a transaction");
                            open = false;
                        }
                        Action::Insert | Action::Update | Action::Delete => {
                            assert!(open, "a row change outside a transaction");
                            assert!(change.schema.is_some() && change.table.is_some());
                        }
                        Action::Message => {
                            assert!(change.prefix.is_some() && change.content.is_some());
                        }
                        Action::Truncate => panic!("format-version 1 has no truncate"),
                    }
                    for column in change.columns.iter().chain(&change.identity) {
                        let _ = column.text();
                    }
                }
            }
            Err(error) => {
                assert_eq!(error.lsn, at, "the error names the frame's LSN");
                assert!(out.is_empty(), "nothing appended on error");
                open = false;
            }
        }
        assert_eq!(decoder.in_transaction(), open, "decoder state agrees");
    }
}

/// pgoutput: byte 0 picks the protocol version (`1 + b % 4`) and `streaming 'parallel'`
/// (bit 2); then frames, each a big-endian u16 length and that many bytes (a short tail is one
/// last frame). Every value is a slice inside its frame, stream-block state follows Stream
/// Start/Stop, and an error names the frame's LSN and leaves the state unchanged.
pub fn pgoutput(data: &[u8]) {
    let Some((&config, mut rest)) = data.split_first() else {
        return;
    };
    let version =
        ProtocolVersion::from_number(1 + u32::from(config % 4)).unwrap_or(ProtocolVersion::V1);
    let mut decoder = PgOutputDecoder::new(version).with_parallel_streaming(config & 4 != 0);
    let mut index = 0u64;
    while !rest.is_empty() {
        let frame = match rest {
            [high, low, tail @ ..] => {
                let len = usize::from(u16::from_be_bytes([*high, *low])).min(tail.len());
                let (frame, tail) = tail.split_at(len);
                rest = tail;
                frame
            }
            _ => std::mem::take(&mut rest),
        };
        let at = Lsn::from_u64(0x1_0000 + 0x10 * index);
        index += 1;
        let frame = Bytes::copy_from_slice(frame);
        let before = decoder.in_stream();
        match decoder.decode(&frame, at) {
            Ok(message) => {
                let after = decoder.in_stream();
                match &message {
                    PgOutputMessage::StreamStart(start) => {
                        assert_eq!((before, after), (None, Some(start.xid)));
                    }
                    PgOutputMessage::StreamStop => assert!(before.is_some() && after.is_none()),
                    _ => assert_eq!(before, after, "only Stream Start/Stop change the state"),
                }
                let inside = |bytes: &Bytes| {
                    let range = frame.as_ptr() as usize..=frame.as_ptr() as usize + frame.len();
                    assert!(range.contains(&(bytes.as_ptr() as usize)) || bytes.is_empty());
                    assert!(bytes.len() < frame.len());
                };
                let tuple = |tuple: &TupleData| {
                    for column in &tuple.columns {
                        if let TupleColumn::Text(bytes) | TupleColumn::Binary(bytes) = column {
                            inside(bytes);
                        }
                    }
                };
                match &message {
                    PgOutputMessage::Insert(insert) => tuple(&insert.new),
                    PgOutputMessage::Update(update) => {
                        tuple(&update.new);
                        if let Some(old) = &update.old {
                            tuple(old.tuple());
                        }
                    }
                    PgOutputMessage::Delete(delete) => tuple(delete.old.tuple()),
                    PgOutputMessage::Message(message) => inside(&message.content),
                    _ => {}
                }
            }
            Err(error) => {
                assert_eq!(error.lsn, at, "the error names the frame's LSN");
                assert_eq!(
                    decoder.in_stream(),
                    before,
                    "errors leave the state unchanged"
                );
            }
        }
    }
}

/// Singer input of `pgferry target-gdn` (SCHEMA and RECORD lines) and the tap's state and
/// catalog files: never a panic, and every document a record makes is a JSON object.
pub fn singer_target(data: &[u8]) {
    use crate::singer::{parse_line, Message};
    use crate::target_gdn::{record_effect, Operation, StreamShape};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::tap::state::TapState::parse(text);
    let _ = crate::tap::catalog::parse_catalog(text);
    let mut shape = None;
    for (index, line) in text.lines().enumerate() {
        match parse_line(line, index as u64 + 1) {
            Ok(Message::Schema(schema)) => shape = Some(StreamShape::new(&schema)),
            Ok(Message::Record(record)) => {
                let Some(shape) = &shape else {
                    continue;
                };
                if let Ok(effect) = record_effect(shape, &record) {
                    if let Operation::Upsert(document) | Operation::Patch(document) =
                        &effect.operation
                    {
                        let value: Result<serde_json::Value, _> = serde_json::from_slice(document);
                        assert!(
                            value.as_ref().is_ok_and(serde_json::Value::is_object),
                            "not a JSON object: {}",
                            String::from_utf8_lossy(document)
                        );
                    }
                }
            }
            _ => {}
        }
    }
}
