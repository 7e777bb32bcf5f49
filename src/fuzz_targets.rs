//! Entry points shared by the `fuzz/` targets (libFuzzer) and the stable-toolchain smoke test
//! (`tests/fuzz_smoke.rs`), so both exercise exactly the same code with the same invariants.
//!
//! Each function takes arbitrary bytes and must neither panic nor break its invariant: decoders
//! either return a typed error or a value whose JSON rendering is valid JSON.

use bytes::Bytes;

use crate::config::{
    DestinationConfig, GdnSourceConfig, PgDestinationConfig, PgSourceConfig, Pipeline,
    PipelineConfig,
};
use crate::decode::copy_binary::CopyBinaryDecoder;
use crate::decode::pgoutput::{
    PgOutputDecoder, PgOutputMessage, ProtocolVersion, TupleColumn, TupleData,
};
use crate::decode::replication::ReplicationMessage;
use crate::decode::value::{decode, CompositeAttribute, CompositeCodec, NumericOut, TypeCodec};
use crate::decode::wal2json::{parse_v2, Action};
use crate::decode::wal2json_v1::V1Decoder;
use crate::gdnlite::cursor::parse as cursor_parse;
use crate::gdnlite::documents::merge_patch;
use crate::gdnlite::http::path_segments;
use crate::gdnlite::json::{parse_body, transcode_batch, TranscodedBody, TranscodedDoc};
use crate::gdnlite::keys as gdnlite_keys;
use crate::gdnlite::params::Query;
use crate::pg::Lsn;
use crate::singer::target_postgres::batch::StreamBatch;
use crate::singer::target_postgres::config::TargetConfig;
use crate::singer::target_postgres::copy_binary::{binary_type, text_to_binary, BinaryType};
use crate::singer::target_postgres::schema::StreamSchema;
use crate::singer::{parse_line, Message};
use crate::source::cdc::RowChange;

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
    // A composite (int, text, int[], nested (int, text)), its array, and both read as text.
    let attribute = |name: &str, type_oid: u32, codec: TypeCodec| CompositeAttribute {
        name: name.into(),
        type_oid,
        codec,
    };
    let inner = TypeCodec::Composite(Box::new(CompositeCodec {
        type_name: "inner".into(),
        attributes: vec![
            attribute("x", 23, TypeCodec::Int4),
            attribute("y", 25, TypeCodec::Text),
        ],
    }));
    let outer = TypeCodec::Composite(Box::new(CompositeCodec {
        type_name: "outer".into(),
        attributes: vec![
            attribute("n", 23, TypeCodec::Int4),
            attribute("t", 25, TypeCodec::Text),
            attribute("a", 1007, TypeCodec::Array(Box::new(TypeCodec::Int4))),
            attribute("i", 16_384, inner),
        ],
    }));
    let structured = vec![
        outer.clone(),
        TypeCodec::Array(Box::new(outer.clone())),
        TypeCodec::TextForm(Box::new(outer.clone())),
        TypeCodec::TextForm(Box::new(TypeCodec::Array(Box::new(outer)))),
        TypeCodec::TextForm(Box::new(TypeCodec::Array(Box::new(TypeCodec::Text)))),
        TypeCodec::TextForm(Box::new(TypeCodec::Array(Box::new(
            TypeCodec::TextDelimited(';'),
        )))),
    ];
    scalars
        .into_iter()
        .chain(arrays)
        .chain(structured)
        .collect()
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
    use crate::singer::target_gdn::{record_effect, Operation, StreamShape};
    use crate::singer::{parse_line, Message};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::singer::tap::state::TapState::parse(text);
    let _ = crate::singer::tap::catalog::parse_catalog(text);
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

/// wal2json format-version 2: one frame per line. A decoded row action names its table, every
/// column value decodes or says why, the row change built from it is checked, and an error
/// names the frame's LSN.
pub fn wal2json_v2(data: &[u8]) {
    for (index, frame) in data.split(|&byte| byte == b'\n').enumerate() {
        let at = Lsn::from_u64(0x1_0000 + 0x10 * index as u64);
        match parse_v2(frame, at) {
            Ok(change) => {
                match change.action {
                    Action::Insert | Action::Update | Action::Delete | Action::Truncate => {
                        assert!(change.schema.is_some() && change.table.is_some());
                    }
                    // Streaming reads only a message's LSN: its other fields may be absent.
                    Action::Message | Action::Begin | Action::Commit => {}
                }
                for column in change.columns.iter().chain(&change.identity) {
                    let _ = column.text();
                }
                let _ = RowChange::from_wal2json(&change, at);
            }
            Err(error) => assert_eq!(error.lsn, at, "the error names the frame's LSN"),
        }
    }
}

/// Singer message lines as `pgferry target` reads them: SCHEMA lines become column plans
/// (flattened to a depth picked by the line number), RECORD lines are encoded as COPY text
/// rows of the last schema. At the end, when every column has a binary COPY form, the batch
/// converted to COPY binary decodes back to exactly as many rows as the batch holds.
pub fn singer_lines(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut schema: Option<StreamSchema> = None;
    let mut batch = StreamBatch::default();
    let mut seq = 0u64;
    for (index, line) in text.lines().enumerate() {
        let number = index as u64 + 1;
        match parse_line(line, number) {
            Ok(Message::Schema(message)) => {
                schema = StreamSchema::flattened(
                    &message.schema,
                    &message.property_order,
                    &message.key_properties,
                    index % 2 == 0,
                    number % 3,
                )
                .ok();
                batch.clear();
            }
            Ok(Message::Record(record)) => {
                if let Some(schema) = &schema {
                    seq += 1;
                    let _ = batch.push(
                        schema,
                        &record,
                        number,
                        seq,
                        number % 2 == 0,
                        number % 3 == 0,
                        "2024-01-01 00:00:00.000000+00",
                    );
                }
            }
            Ok(Message::State(_) | Message::ActivateVersion { .. }) | Err(_) => {}
        }
    }
    let Some(schema) = &schema else {
        return;
    };
    let types: Option<Vec<BinaryType>> = schema
        .columns
        .iter()
        .map(|column| binary_type(column.pg_type.sql()))
        .collect();
    let Some(types) = types else {
        return;
    };
    let chunks = batch.chunks(1 << 16);
    if let Some(binary) = text_to_binary(&chunks, &types) {
        let mut decoder = CopyBinaryDecoder::new(types.len());
        let mut rows = Vec::new();
        let decoded = decoder.decode_chunk(Bytes::from(binary), &mut rows);
        assert!(decoded.is_ok(), "our own COPY binary stream: {decoded:?}");
        assert!(decoder.finish().is_ok(), "our own COPY binary stream ends");
        assert_eq!(
            rows.len(),
            batch.live(),
            "every buffered row is in the COPY binary stream"
        );
    }
}

/// Config files: the input as a JSON object through every config reader (pipeline, source,
/// Singer target, GDN source, PostgreSQL destination). Nothing panics; and with every string
/// under a secret key (`password`, `api_key`, `ssl_client_key`, `ssl_client_password`)
/// replaced by a marker, no error or debug rendering contains a marker.
pub fn config_file(data: &[u8]) {
    let Ok(serde_json::Value::Object(root)) = serde_json::from_slice::<serde_json::Value>(data)
    else {
        return;
    };
    let _ = read_every_config(&root);
    let mut marked = serde_json::Value::Object(root);
    let mut markers = 0usize;
    mark_secrets(&mut marked, &mut markers);
    let Some(marked) = marked.as_object() else {
        return;
    };
    for output in read_every_config(marked) {
        assert!(!output.contains(SECRET_MARKER), "a secret is in: {output}");
    }
}

/// Stands in for a secret value in [`config_file`]: no known key, hint or message contains it.
const SECRET_MARKER: &str = "zQ7-secret-marker";

/// Replaces one secret with the next numbered marker.
fn mark(text: &mut String, markers: &mut usize) {
    *markers += 1;
    *text = format!("{SECRET_MARKER}{markers}");
}

/// Every config reader's result for `root` and its `source` / `destination` objects.
fn read_every_config(root: &serde_json::Map<String, serde_json::Value>) -> Vec<String> {
    let mut outputs = vec![
        render(Pipeline::from_object(root)),
        render(PipelineConfig::from_object(root)),
        render(PgSourceConfig::from_object(root)),
        render(TargetConfig::from_object(root)),
        render(GdnSourceConfig::from_object(root)),
        render(PgDestinationConfig::from_object(root, 2)),
    ];
    for section in ["source", "destination"] {
        if let Some(serde_json::Value::Object(object)) = root.get(section) {
            outputs.push(render(PgSourceConfig::from_object(object)));
            outputs.push(render(GdnSourceConfig::from_object(object)));
            outputs.push(render(DestinationConfig::from_object(object)));
            outputs.push(render(PgDestinationConfig::from_object(object, 1)));
        }
    }
    outputs
}

/// Replaces the strings under secret keys anywhere in `value` with numbered markers (a
/// `{"env": …}` object names a variable, which is not secret, and is left alone).
fn mark_secrets(value: &mut serde_json::Value, markers: &mut usize) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                let secret_key = matches!(
                    key.as_str(),
                    "password" | "api_key" | "ssl_client_key" | "ssl_client_password"
                );
                match value {
                    serde_json::Value::String(text) if secret_key => mark(text, markers),
                    serde_json::Value::Array(items) if secret_key => {
                        for item in items.iter_mut() {
                            if let serde_json::Value::String(text) = item {
                                mark(text, markers);
                            }
                        }
                    }
                    other => mark_secrets(other, markers),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items.iter_mut() {
                mark_secrets(item, markers);
            }
        }
        _ => {}
    }
}

/// A config result as the user could see it: the error's text, or the value's debug form.
fn render<T: std::fmt::Debug, E: std::fmt::Display + std::fmt::Debug>(
    result: Result<T, E>,
) -> String {
    match result {
        Ok(value) => format!("{value:?}"),
        Err(error) => format!("{error} {error:?}"),
    }
}

/// serde_json's private RawValue token (see [`gdnlite_request`]).
const RAW_VALUE_TOKEN: &[u8] = b"$serde_json::private::RawValue";

/// gdnlite requests: the first line is the URL (`path?query`), the rest the body. The path
/// decodes into segments (key and collection name rules applied to each), the query into
/// parameters; the body parses as GDN stores JSON, and the one-pass batch transcoder agrees
/// with the tree parser on what is valid JSON and on every stored document; a body that is an
/// object is also tried as a cursor query and as a PATCH of itself.
pub fn gdnlite_request(data: &[u8]) {
    let (url, body) = match data.iter().position(|&byte| byte == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(url) = std::str::from_utf8(url) {
        let (path, query) = match url.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (url, None),
        };
        if let Ok(segments) = path_segments(path) {
            for segment in &segments {
                let _ = gdnlite_keys::is_valid_key(segment);
                let _ = gdnlite_keys::is_valid_collection_name(segment);
            }
        }
        if let Ok(query) = Query::parse(query) {
            for flag in [
                "overwrite",
                "waitForSync",
                "silent",
                "returnNew",
                "keepNull",
            ] {
                let _ = query.flag(flag, false);
            }
        }
    }
    // serde_json (feature `raw_value`) reads an object whose key is this token as its private
    // RawValue protocol, so the tree parser refuses it while the transcoder takes it: a known
    // limit (RELIABILITY.md), not compared here.
    if body
        .windows(RAW_VALUE_TOKEN.len())
        .any(|window| window == RAW_VALUE_TOKEN)
    {
        let _ = (parse_body(body), transcode_batch(body));
        return;
    }
    let tree = parse_body(body);
    let transcoded = transcode_batch(body);
    assert_eq!(
        tree.is_ok(),
        transcoded.is_ok(),
        "the tree parser and the transcoder disagree on {:?}: {:?} / {:?}",
        String::from_utf8_lossy(body),
        tree.as_ref().err(),
        transcoded.as_ref().err()
    );
    if let (Ok(tree), Ok(transcoded)) = (&tree, &transcoded) {
        let pairs: Vec<(&serde_json::Value, &TranscodedDoc)> = match (tree, transcoded) {
            (serde_json::Value::Array(items), TranscodedBody::Array(docs)) => {
                assert_eq!(items.len(), docs.len(), "as many documents");
                items.iter().zip(docs).collect()
            }
            (value, TranscodedBody::Single(doc)) => vec![(value, doc)],
            (value, body) => panic!("shapes differ: {value} / {body:?}"),
        };
        for (value, doc) in pairs {
            match (value, doc) {
                (serde_json::Value::Object(object), TranscodedDoc::Object { open_body, .. }) => {
                    let stored = TranscodedDoc::finish(open_body, "k", "c", "_r");
                    let stored: serde_json::Value = match serde_json::from_slice(&stored) {
                        Ok(stored) => stored,
                        Err(error) => panic!(
                            "the transcoder stored invalid JSON {:?}: {error}",
                            String::from_utf8_lossy(&stored)
                        ),
                    };
                    let mut expected = object.clone();
                    let mut stored = stored.as_object().cloned().unwrap_or_default();
                    for name in ["_key", "_id", "_rev"] {
                        expected.remove(name);
                        stored.remove(name);
                    }
                    assert_eq!(
                        stored, expected,
                        "the transcoder stores what the tree holds"
                    );
                }
                (serde_json::Value::Object(_), other)
                | (_, other @ TranscodedDoc::Object { .. }) => {
                    panic!("{value} transcoded as {other:?}")
                }
                _ => {}
            }
        }
    }
    if let Ok(serde_json::Value::Object(object)) = tree {
        if let Some(query) = object.get("query").and_then(serde_json::Value::as_str) {
            let bind_vars = object
                .get("bindVars")
                .and_then(serde_json::Value::as_object)
                .cloned()
                .unwrap_or_default();
            let _ = cursor_parse(query, &bind_vars);
        }
        let mut base = object.clone();
        merge_patch(
            &mut base,
            object.clone(),
            body.len() % 2 == 0,
            body.len() % 3 == 0,
        );
    }
}
