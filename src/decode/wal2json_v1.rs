//! wal2json format-version 1: one JSON object per transaction, whole or in chunks, decoded into
//! the same borrowed [`Change`] values as format-version 2 ([`super::wal2json::parse_v2`]), so
//! everything after the decoder is the same for both formats.
//!
//! # What the server sends
//!
//! Without `write-in-chunks`, each transaction is one XLogData frame (wal2json 2.5 on
//! PostgreSQL 15, `pretty-print` off; `xid`, `nextlsn`, `timestamp` only with `include-xids`,
//! `include-lsn`, `include-timestamp`):
//!
//! ```text
//! {"xid":730,"nextlsn":"0/192FF20","timestamp":"…","change":[{"kind":"insert",…},{…}]}
//! ```
//!
//! With `write-in-chunks=1` (the old connector's setting) the same text arrives as several
//! frames: the begin part, each change alone (the second and later ones prefixed by `,`), and
//! the close:
//!
//! ```text
//! wal_start = first LSN      {"xid":730,"nextlsn":"0/192FF20","timestamp":"…","change":[
//! wal_start = change LSN     {"kind":"insert",…}
//! wal_start = change LSN     ,{"kind":"update",…}
//! wal_start = commit end     ]}
//! ```
//!
//! A change is `{"kind":"insert"|"update"|"delete", "schema", "table", "columnnames",
//! "columntypes", ["columntypeoids",] "columnvalues", ["pk":{"pknames","pktypes"},]
//! ["oldkeys":{"keynames","keytypes",["keytypeoids",]"keyvalues"}]}` or, with a
//! `pg_logical_emit_message`, `{"kind":"message","transactional":…,"prefix":…,"content":…}`.
//!
//! # Facts this relies on (checked in wal2json's source and in the captured fixtures under
//! `tests/fixtures/wal2json_v1/`, from `tests/capture_fixtures.rs`)
//!
//! - The `]}` frame's `wal_start` is the transaction's end LSN (PostgreSQL sets the write
//!   location of the commit callback to `txn->end_lsn`), equal to the begin part's `nextlsn`. It
//!   is the position to confirm once the transaction is applied; the decoder checks the two agree
//!   when both are present. A whole-transaction frame's `wal_start` is the transaction's *first*
//!   LSN instead, so without chunks the commit position is known only with `include-lsn`.
//! - UPDATE always carries `oldkeys` (from the new row when the key did not change); an unchanged
//!   TOASTed column is absent from `columnnames`/`columnvalues`; SQL NULL is `null`; `NaN` and
//!   `±Infinity` are `null` too; numbers are bare literals with every digit.
//! - TRUNCATE is never reported: its format-version 1 code is compiled out (`#ifdef _NOT_USED`
//!   in wal2json 2.5 and master), so a transaction holding only a TRUNCATE is an empty change
//!   list. Tables without a key or replica identity lose their UPDATEs and DELETEs (a server
//!   WARNING). Use format-version 2 or pgoutput when either matters.
//! - A non-transactional message is a frame of its own, `{"change":[{"kind":"message",
//!   "transactional":false,…}]}`, between transactions. wal2json 2.5 counts changes per
//!   transaction and does not reset the count for such a message, so after a transaction of two
//!   or more changes it sends **invalid JSON**, `{"change":[,{"kind":"message",…}]}`. The decoder
//!   accepts exactly that form.
//!
//! # Mapping to [`Change`]
//!
//! Begin: `xid`, `next_lsn` (from `nextlsn`), `timestamp`. Row changes: `xid` (the
//! transaction's), `schema`, `table`, `columns` (name, type, raw literal; `None` for NULL),
//! `identity` (from `oldkeys`), `pk` (from `pk.pknames`). Message: `prefix`, `content`, `xid`
//! (`None` outside a transaction). Commit: `xid`, `next_lsn`. Format 1 has no per-change or
//! commit-record LSN, so `lsn` is always `None`; a chunked and a whole transaction decode to the
//! same values.
//!
//! # Use
//!
//! ```
//! use pgferry::decode::wal2json_v1::V1Decoder;
//! use pgferry::pg::Lsn;
//!
//! let mut decoder = V1Decoder::new();
//! let mut changes = Vec::new();
//! let frame = br#"{"xid":7,"change":[{"kind":"delete","schema":"public","table":"t","oldkeys":{"keynames":["id"],"keytypes":["integer"],"keyvalues":[1]}}]}"#;
//! decoder.decode(frame, Lsn::from_u64(0x1000), &mut changes)?;
//! assert_eq!(changes.len(), 3); // Begin, Delete, Commit
//! # Ok::<(), pgferry::decode::wal2json::Wal2JsonError>(())
//! ```
//!
//! The decoder keeps only whether a chunked transaction is open (its xid and `nextlsn`); each
//! frame is decoded by itself and every change borrows from its own frame, never from a copy of
//! the transaction.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::wal2json::{Action, Change, ColumnValue, Wal2JsonError};
use crate::pg::Lsn;

/// A JSON string, borrowed from the frame when it has no escapes.
#[derive(Debug, Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

#[derive(Debug, Default, Deserialize)]
struct OldKeys<'a> {
    #[serde(borrow, default)]
    keynames: Vec<Text<'a>>,
    #[serde(borrow, default)]
    keytypes: Option<Vec<Text<'a>>>,
    #[serde(borrow, default)]
    keyvalues: Vec<Option<&'a RawValue>>,
}

#[derive(Debug, Default, Deserialize)]
struct PrimaryKey<'a> {
    #[serde(borrow, default)]
    pknames: Vec<Text<'a>>,
}

/// One element of `"change"`, as wal2json writes it.
#[derive(Debug, Deserialize)]
struct RawChange<'a> {
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    schema: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    table: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    columnnames: Vec<Text<'a>>,
    #[serde(borrow, default)]
    columntypes: Option<Vec<Text<'a>>>,
    #[serde(borrow, default)]
    columnvalues: Vec<Option<&'a RawValue>>,
    #[serde(borrow, default)]
    oldkeys: Option<OldKeys<'a>>,
    #[serde(borrow, default)]
    pk: Option<PrimaryKey<'a>>,
    #[serde(default)]
    transactional: Option<bool>,
    #[serde(borrow, default)]
    prefix: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
}

/// A whole transaction (or a non-transactional message) in one frame.
#[derive(Debug, Deserialize)]
struct Transaction<'a> {
    #[serde(default)]
    xid: Option<u64>,
    #[serde(borrow, default)]
    nextlsn: Option<&'a str>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    change: Vec<RawChange<'a>>,
}

/// What the begin part of a transaction says.
#[derive(Debug, Default)]
struct Header<'a> {
    xid: Option<u64>,
    next_lsn: Option<Lsn>,
    timestamp: Option<Cow<'a, str>>,
}

/// Where the decoder is in the stream of frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between transactions: the next frame is a whole transaction, a begin part, or a
    /// non-transactional message.
    Idle,
    /// Inside a chunked transaction: the next frame is a change or the closing `]}`.
    InChunks {
        xid: Option<u64>,
        next_lsn: Option<Lsn>,
        changes: u64,
    },
}

/// Incremental decoder of wal2json format-version 1, whole (one frame per transaction) or
/// `write-in-chunks` (one frame per part); it tells the two apart by the frames themselves.
#[derive(Debug, Clone)]
pub struct V1Decoder {
    state: State,
}

impl Default for V1Decoder {
    fn default() -> Self {
        V1Decoder::new()
    }
}

fn error(at: Lsn, detail: impl Into<String>) -> Wal2JsonError {
    Wal2JsonError {
        lsn: at,
        detail: detail.into(),
    }
}

/// The start of a frame for error messages, never split inside a UTF-8 character.
fn excerpt(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(&data[..data.len().min(200)]);
    format!("{text:?}")
}

fn is_json_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

fn trim(data: &[u8]) -> &[u8] {
    let start = data
        .iter()
        .position(|&byte| !is_json_space(byte))
        .unwrap_or(data.len());
    let end = data
        .iter()
        .rposition(|&byte| !is_json_space(byte))
        .map_or(start, |last| last + 1);
    &data[start..end.max(start)]
}

/// `data` after `token` (and the whitespace before it), or `None` when it does not start so.
fn after<'d>(data: &'d [u8], token: &[u8]) -> Option<&'d [u8]> {
    trim_start(data).strip_prefix(token)
}

fn trim_start(data: &[u8]) -> &[u8] {
    let start = data
        .iter()
        .position(|&byte| !is_json_space(byte))
        .unwrap_or(data.len());
    &data[start..]
}

fn parse_lsn(text: &str, at: Lsn) -> Result<Lsn, Wal2JsonError> {
    text.parse()
        .map_err(|_| error(at, format!("nextlsn {text:?} is not an LSN")))
}

/// Reads the next JSON value of `data` (after optional whitespace): the value and what follows.
fn next_value<'a>(data: &'a [u8], at: Lsn) -> Result<(&'a RawValue, &'a [u8]), Wal2JsonError> {
    let mut values = serde_json::Deserializer::from_slice(data).into_iter::<&'a RawValue>();
    match values.next() {
        Some(Ok(value)) => Ok((value, &data[values.byte_offset()..])),
        Some(Err(cause)) => Err(error(
            at,
            format!("{cause} in the begin part {}", excerpt(data)),
        )),
        None => Err(error(at, "the begin part ends before \"change\"")),
    }
}

/// Parses a begin part, `{"xid":…,…,"change":[`, member by member (it is not a complete JSON
/// value, so it cannot be handed to a JSON parser whole).
fn parse_begin_part<'a>(part: &'a [u8], at: Lsn) -> Result<Header<'a>, Wal2JsonError> {
    let mut rest = after(part, b"{").ok_or_else(|| error(at, "the begin part is not an object"))?;
    let mut header = Header::default();
    loop {
        let (key, tail) = next_value(rest, at)?;
        let key: Text<'a> = serde_json::from_str(key.get())
            .map_err(|_| error(at, format!("a member name {} is not a string", key.get())))?;
        let tail = after(tail, b":")
            .ok_or_else(|| error(at, format!("no ':' after the member name {:?}", key.0)))?;
        if key.0 == "change" {
            return match after(tail, b"[") {
                Some(end) if trim(end).is_empty() => Ok(header),
                _ => Err(error(at, "the begin part does not end with \"change\":[")),
            };
        }
        let (value, tail) = next_value(tail, at)?;
        let invalid = |what: &str| error(at, format!("{} {} is not {what}", key.0, value.get()));
        match &*key.0 {
            "xid" => {
                header.xid =
                    Some(serde_json::from_str(value.get()).map_err(|_| invalid("a number"))?)
            }
            "nextlsn" => {
                let text: Text<'a> =
                    serde_json::from_str(value.get()).map_err(|_| invalid("a string"))?;
                header.next_lsn = Some(parse_lsn(&text.0, at)?);
            }
            "timestamp" => {
                let text: Text<'a> =
                    serde_json::from_str(value.get()).map_err(|_| invalid("a string"))?;
                header.timestamp = Some(text.0);
            }
            // `origin` (include-origin) and anything newer: not needed downstream.
            _ => {}
        }
        rest = after(tail, b",")
            .ok_or_else(|| error(at, format!("no ',' after the member {:?}", key.0)))?;
    }
}

/// The one change inside wal2json 2.5's malformed `{"change":[,{…}]}` message frame, if `frame`
/// has that form.
fn malformed_message_frame(frame: &[u8]) -> Option<&[u8]> {
    let rest = after(frame, b"{")?;
    let rest = after(rest, b"\"change\"")?;
    let rest = after(rest, b":")?;
    let rest = after(rest, b"[")?;
    let rest = after(rest, b",")?;
    let rest = trim(rest).strip_suffix(b"}")?;
    let rest = trim(rest).strip_suffix(b"]")?;
    Some(trim(rest))
}

fn texts(list: Vec<Text<'_>>) -> impl Iterator<Item = Cow<'_, str>> {
    list.into_iter().map(|text| text.0)
}

/// Zips names, optional types and values into columns, checking the lists agree.
fn columns<'a>(
    what: &str,
    names: Vec<Text<'a>>,
    types: Option<Vec<Text<'a>>>,
    values: Vec<Option<&'a RawValue>>,
    at: Lsn,
) -> Result<Vec<ColumnValue<'a>>, Wal2JsonError> {
    if names.len() != values.len() {
        return Err(error(
            at,
            format!("{what}: {} names but {} values", names.len(), values.len()),
        ));
    }
    let types: Vec<Cow<'a, str>> = match types {
        Some(types) if types.len() != names.len() => {
            return Err(error(
                at,
                format!("{what}: {} names but {} types", names.len(), types.len()),
            ))
        }
        Some(types) => texts(types).collect(),
        None => vec![Cow::Borrowed(""); names.len()],
    };
    Ok(texts(names)
        .zip(types)
        .zip(values)
        .map(|((name, type_name), value)| ColumnValue {
            name,
            type_name,
            type_oid: None,
            value,
        })
        .collect())
}

fn empty_change<'a>(action: Action, xid: Option<u64>) -> Change<'a> {
    Change {
        action,
        xid,
        lsn: None,
        next_lsn: None,
        timestamp: None,
        schema: None,
        table: None,
        columns: Vec::new(),
        identity: Vec::new(),
        pk: Vec::new(),
        prefix: None,
        content: None,
    }
}

/// Turns one element of `"change"` into a [`Change`] of transaction `xid`.
fn convert<'a>(raw: RawChange<'a>, xid: Option<u64>, at: Lsn) -> Result<Change<'a>, Wal2JsonError> {
    let action = match &*raw.kind {
        "insert" => Action::Insert,
        "update" => Action::Update,
        "delete" => Action::Delete,
        "message" => Action::Message,
        other => {
            return Err(error(
                at,
                format!("unknown change kind {other:?} (format-version 1 has insert, update, delete and message)"),
            ))
        }
    };
    let mut change = empty_change(action, xid);
    if action == Action::Message {
        if raw.prefix.is_none() || raw.content.is_none() {
            return Err(error(at, "a message without prefix or content"));
        }
        change.prefix = raw.prefix;
        change.content = raw.content;
        return Ok(change);
    }
    if raw.schema.is_none() || raw.table.is_none() {
        return Err(error(at, format!("{} without schema or table", raw.kind)));
    }
    change.columns = columns(
        "columns",
        raw.columnnames,
        raw.columntypes,
        raw.columnvalues,
        at,
    )?;
    if matches!(action, Action::Insert | Action::Update) && change.columns.is_empty() {
        return Err(error(at, format!("an {} without columns", raw.kind)));
    }
    if let Some(keys) = raw.oldkeys {
        change.identity = columns("oldkeys", keys.keynames, keys.keytypes, keys.keyvalues, at)?;
    }
    change.pk = raw
        .pk
        .map_or_else(Vec::new, |pk| texts(pk.pknames).collect());
    change.schema = raw.schema;
    change.table = raw.table;
    Ok(change)
}

impl V1Decoder {
    /// A decoder between transactions, as at the start of a stream.
    pub fn new() -> V1Decoder {
        V1Decoder { state: State::Idle }
    }

    /// Whether a chunked transaction has begun and not yet closed.
    pub fn in_transaction(&self) -> bool {
        matches!(self.state, State::InChunks { .. })
    }

    /// Forgets an open chunked transaction, e.g. after reconnecting (the server starts again
    /// from a transaction boundary).
    pub fn reset(&mut self) {
        self.state = State::Idle;
    }

    /// Decodes one XLogData payload (`frame`, which started at `wal_start`) and appends what it
    /// holds to `out`, borrowing from `frame`:
    ///
    /// - a whole transaction: Begin, its changes, Commit;
    /// - a begin part: Begin; a change part: that change; the closing `]}`: Commit (its
    ///   `next_lsn` is `wal_start`);
    /// - a non-transactional message: one Message with no xid.
    ///
    /// On error nothing is appended, the error names `wal_start`, and the decoder is back
    /// between transactions (restart the stream from the last confirmed position).
    pub fn decode<'a>(
        &mut self,
        frame: &'a [u8],
        wal_start: Lsn,
        out: &mut Vec<Change<'a>>,
    ) -> Result<(), Wal2JsonError> {
        let result = match self.state {
            State::Idle => self.decode_idle(trim(frame), wal_start, out),
            State::InChunks {
                xid,
                next_lsn,
                changes,
            } => self.decode_in_chunks(trim(frame), wal_start, xid, next_lsn, changes, out),
        };
        if result.is_err() {
            self.state = State::Idle;
        }
        result
    }

    fn decode_idle<'a>(
        &mut self,
        frame: &'a [u8],
        at: Lsn,
        out: &mut Vec<Change<'a>>,
    ) -> Result<(), Wal2JsonError> {
        if frame.ends_with(b"[") {
            let header = parse_begin_part(frame, at)?;
            self.state = State::InChunks {
                xid: header.xid,
                next_lsn: header.next_lsn,
                changes: 0,
            };
            let mut begin = empty_change(Action::Begin, header.xid);
            begin.next_lsn = header.next_lsn;
            begin.timestamp = header.timestamp;
            out.push(begin);
            return Ok(());
        }
        if let Some(inner) = malformed_message_frame(frame) {
            let raw: RawChange<'a> = serde_json::from_slice(inner)
                .map_err(|cause| error(at, format!("{cause} in {}", excerpt(frame))))?;
            if raw.kind != "message" || raw.transactional != Some(false) {
                return Err(error(
                    at,
                    format!("a change list starting with ',' in {}", excerpt(frame)),
                ));
            }
            out.push(convert(raw, None, at)?);
            return Ok(());
        }
        let transaction: Transaction<'a> = serde_json::from_slice(frame)
            .map_err(|cause| error(at, format!("{cause} in {}", excerpt(frame))))?;
        let standalone_message = transaction.xid.is_none()
            && transaction.nextlsn.is_none()
            && transaction.timestamp.is_none()
            && transaction.change.len() == 1
            && transaction.change[0].kind == "message"
            && transaction.change[0].transactional == Some(false);
        if standalone_message {
            for raw in transaction.change {
                out.push(convert(raw, None, at)?);
            }
            return Ok(());
        }
        let next_lsn = transaction
            .nextlsn
            .map(|text| parse_lsn(text, at))
            .transpose()?;
        let xid = transaction.xid;
        let mut decoded = Vec::with_capacity(transaction.change.len() + 2);
        let mut begin = empty_change(Action::Begin, xid);
        begin.next_lsn = next_lsn;
        begin.timestamp = transaction.timestamp;
        decoded.push(begin);
        for raw in transaction.change {
            decoded.push(convert(raw, xid, at)?);
        }
        let mut commit = empty_change(Action::Commit, xid);
        commit.next_lsn = next_lsn;
        decoded.push(commit);
        out.append(&mut decoded);
        Ok(())
    }

    fn decode_in_chunks<'a>(
        &mut self,
        frame: &'a [u8],
        at: Lsn,
        xid: Option<u64>,
        next_lsn: Option<Lsn>,
        changes: u64,
        out: &mut Vec<Change<'a>>,
    ) -> Result<(), Wal2JsonError> {
        if let Some(rest) = after(frame, b"]") {
            if trim(rest) != b"}" {
                return Err(error(
                    at,
                    format!(
                        "expected the closing ]}} of a transaction, got {}",
                        excerpt(frame)
                    ),
                ));
            }
            if let Some(expected) = next_lsn.filter(|&expected| expected != at) {
                return Err(error(
                    at,
                    format!("the transaction's close arrived at {at} but its begin part said nextlsn {expected}"),
                ));
            }
            self.state = State::Idle;
            let mut commit = empty_change(Action::Commit, xid);
            commit.next_lsn = Some(at);
            out.push(commit);
            return Ok(());
        }
        let object = match (changes, after(frame, b",")) {
            (0, None) => frame,
            (0, Some(_)) => {
                return Err(error(
                    at,
                    "the first change of a transaction starts with ','",
                ))
            }
            (_, Some(rest)) => trim_start(rest),
            (_, None) => {
                return Err(error(
                    at,
                    format!(
                        "change {} of the transaction does not start with ',' (a frame was lost?)",
                        changes + 1
                    ),
                ))
            }
        };
        if !object.starts_with(b"{") {
            return Err(error(
                at,
                format!(
                    "expected a change or the closing ]}} inside a transaction, got {}",
                    excerpt(frame)
                ),
            ));
        }
        let raw: RawChange<'a> = serde_json::from_slice(object)
            .map_err(|cause| error(at, format!("{cause} in {}", excerpt(frame))))?;
        out.push(convert(raw, xid, at)?);
        self.state = State::InChunks {
            xid,
            next_lsn,
            changes: changes + 1,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of a fixture written by `tests/capture_fixtures.rs`: `(wal_start, payload)`.
    fn frames(fixture: &str) -> Vec<(Lsn, Vec<u8>)> {
        fixture
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (lsn, payload) = line.split_once('\t').expect("wal_start<TAB>payload");
                (lsn.parse().expect("wal_start"), payload.as_bytes().to_vec())
            })
            .collect()
    }

    fn hex_frames(fixture: &str) -> Vec<(Lsn, Vec<u8>)> {
        frames(fixture)
            .into_iter()
            .map(|(lsn, hex)| {
                let bytes = hex
                    .chunks(2)
                    .map(|pair| {
                        u8::from_str_radix(std::str::from_utf8(pair).expect("hex"), 16)
                            .expect("hex")
                    })
                    .collect();
                (lsn, bytes)
            })
            .collect()
    }

    const WHOLE: &str = include_str!("../../tests/fixtures/wal2json_v1/whole.frames");
    const CHUNKS: &str = include_str!("../../tests/fixtures/wal2json_v1/chunks.frames");
    const OLD_CONNECTOR: &str =
        include_str!("../../tests/fixtures/wal2json_v1/old_connector_chunks.frames");
    const PRETTY: &str = include_str!("../../tests/fixtures/wal2json_v1/pretty_whole.hex");

    fn decode_all(frames: &[(Lsn, Vec<u8>)]) -> Vec<Change<'_>> {
        let mut decoder = V1Decoder::new();
        let mut out = Vec::new();
        for (lsn, frame) in frames {
            decoder
                .decode(frame, *lsn, &mut out)
                .unwrap_or_else(|error| panic!("{error}"));
        }
        assert!(!decoder.in_transaction(), "every transaction closed");
        out
    }

    fn lsn(text: &str) -> Lsn {
        text.parse().expect("LSN")
    }

    fn names<'c>(columns: &'c [ColumnValue<'_>]) -> Vec<&'c str> {
        columns.iter().map(|column| &*column.name).collect()
    }

    fn types<'c>(columns: &'c [ColumnValue<'_>]) -> Vec<&'c str> {
        columns.iter().map(|column| &*column.type_name).collect()
    }

    fn texts_of(columns: &[ColumnValue<'_>]) -> Vec<Option<String>> {
        columns
            .iter()
            .map(|column| column.text().expect("text").map(Cow::into_owned))
            .collect()
    }

    fn actions(changes: &[Change<'_>]) -> Vec<Action> {
        changes.iter().map(|change| change.action).collect()
    }

    fn some(text: &str) -> Option<String> {
        Some(text.to_owned())
    }

    #[test]
    fn whole_transactions_from_wal2json_2_5_decode_every_field() {
        use Action::*;
        let frames = frames(WHOLE);
        let changes = decode_all(&frames);
        assert_eq!(
            actions(&changes),
            [
                Begin, Insert, Commit, // 1. every value shape
                Begin, Update, Commit, // 2. TOASTed column unchanged
                Begin, Update, Commit, // 3. key change
                Begin, Delete, Commit, // 4.
                Begin, Insert, Insert, Message, Update, Insert, Delete, Commit,  // 5.
                Message, // 6. non-transactional, in wal2json's malformed frame
                Begin, Commit, // 7. TRUNCATE: an empty change list
            ]
        );

        let begin = &changes[0];
        assert_eq!(begin.xid, Some(726));
        assert_eq!(begin.next_lsn, Some(lsn("0/192F7D0")));
        assert_eq!(
            begin.timestamp.as_deref(),
            Some("2026-11-26 13:42:57.188576+00")
        );
        assert_eq!(begin.lsn, None);

        let insert = &changes[1];
        assert_eq!(insert.xid, Some(726));
        assert_eq!(insert.schema.as_deref(), Some("public"));
        assert_eq!(insert.table.as_deref(), Some("w"));
        assert_eq!(insert.pk, vec![Cow::Borrowed("id")]);
        assert!(insert.identity.is_empty());
        assert_eq!(
            names(&insert.columns),
            ["id", "n", "nf", "t", "arr", "j", "js", "big", "m", "b", "f", "ts", "bin"]
        );
        assert_eq!(
            types(&insert.columns),
            [
                "integer",
                "numeric(30,10)",
                "numeric",
                "text",
                "integer[]",
                "jsonb",
                "json",
                "text",
                "mood",
                "boolean",
                "double precision",
                "timestamp with time zone",
                "bytea"
            ]
        );
        let values = texts_of(&insert.columns);
        assert_eq!(values[0], some("1"));
        assert_eq!(
            insert.columns[1].value.map(RawValue::get),
            Some("12345678901234567890.0123456789"),
            "30 digits, as the literal"
        );
        assert_eq!(values[2], None, "SQL NULL");
        assert_eq!(
            values[3],
            some("say \"hi\" \\ back\tslash\n line \u{e9}\u{2713} \u{1} end")
        );
        assert_eq!(values[4], some("{1,2,NULL}"));
        assert_eq!(values[5], some(r#"{"a": [1, 2.50], "b": null}"#));
        assert_eq!(values[6], some(r#"{"k" : "v"}"#));
        assert_eq!(values[7], Some("x".repeat(5000)));
        assert_eq!(values[8], some("happy"));
        assert_eq!(values[9], some("true"));
        assert_eq!(values[10], some("1.5"));
        assert_eq!(values[11], some("2026-11-26 12:00:00.123456+00"));
        assert_eq!(values[12], some("deadbeef"), "bytea without its \\x");
        assert!(
            matches!(insert.columns[7].text(), Ok(Some(Cow::Borrowed(_)))),
            "an unescaped string is borrowed from the frame"
        );
        let commit = &changes[2];
        assert_eq!(commit.xid, Some(726));
        assert_eq!(commit.next_lsn, Some(lsn("0/192F7D0")));

        let toast_update = &changes[4];
        assert!(
            !names(&toast_update.columns).contains(&"big"),
            "an unchanged TOASTed column is absent"
        );
        assert_eq!(toast_update.columns.len(), 12);
        assert_eq!(
            texts_of(&toast_update.columns)[2],
            None,
            "NaN arrives as null"
        );
        assert_eq!(texts_of(&toast_update.columns)[3], some("changed"));
        assert_eq!(names(&toast_update.identity), ["id"]);
        assert_eq!(texts_of(&toast_update.identity), [some("1")]);

        let key_change = &changes[7];
        assert_eq!(texts_of(&key_change.columns)[0], some("2"));
        assert_eq!(names(&key_change.identity), ["id"]);
        assert_eq!(types(&key_change.identity), ["integer"]);
        assert_eq!(texts_of(&key_change.identity), [some("1")], "the old key");

        let delete = &changes[10];
        assert!(delete.columns.is_empty());
        assert_eq!(texts_of(&delete.identity), [some("2")]);
        assert_eq!(delete.pk, vec![Cow::Borrowed("id")]);

        let several = &changes[12..20];
        assert!(several.iter().all(|change| change.xid == Some(730)));
        assert_eq!(several[1].table.as_deref(), Some("two_keys"));
        assert_eq!(several[1].pk, vec![Cow::Borrowed("a"), Cow::Borrowed("b")]);
        assert_eq!(several[3].prefix.as_deref(), Some("pgferry"));
        assert_eq!(several[3].content.as_deref(), Some("in \"tx\""));
        assert_eq!(
            texts_of(&several[4].identity),
            [some("1"), some("a")],
            "an update always carries oldkeys, here from the unchanged key"
        );
        assert_eq!(several[5].table.as_deref(), Some("no_key"));
        assert!(several[5].pk.is_empty());
        assert_eq!(texts_of(&several[6].identity), [some("2"), some("b")]);
        assert_eq!(several[7].next_lsn, Some(lsn("0/192FF20")));

        let outside = &changes[20];
        assert_eq!(outside.xid, None);
        assert_eq!(outside.prefix.as_deref(), Some("pgferry"));
        assert_eq!(outside.content.as_deref(), Some("outside"));

        assert_eq!(changes[21].xid, Some(731));
        assert_eq!(changes[22].next_lsn, Some(lsn("0/1930C80")));
    }

    #[test]
    fn a_chunked_transaction_decodes_to_the_same_changes_as_a_whole_one() {
        let whole = frames(WHOLE);
        let chunks = frames(CHUNKS);
        assert!(chunks.len() > whole.len() * 2, "the capture is chunked");
        let whole = decode_all(&whole);
        let chunks = decode_all(&chunks);
        assert_eq!(format!("{chunks:#?}"), format!("{whole:#?}"));
    }

    #[test]
    fn the_closing_frame_of_a_chunked_transaction_is_at_its_nextlsn() {
        let chunks = frames(CHUNKS);
        let mut next_lsn = None;
        let mut closes = 0;
        for (at, frame) in &chunks {
            let mut out = Vec::new();
            let mut decoder = V1Decoder::new();
            if frame.ends_with(b"[") {
                decoder.decode(frame, *at, &mut out).unwrap();
                next_lsn = out[0].next_lsn;
            } else if frame == b"]}" {
                assert_eq!(Some(*at), next_lsn, "close at the begin part's nextlsn");
                closes += 1;
            }
        }
        assert_eq!(closes, 6);
    }

    #[test]
    fn the_old_connectors_options_give_the_commit_position_from_the_closing_frame() {
        let frames = frames(OLD_CONNECTOR);
        let changes = decode_all(&frames);
        assert_eq!(changes.len(), 23);
        assert!(changes.iter().all(|change| change.xid.is_none()));
        assert!(changes.iter().all(|change| change.timestamp.is_none()));
        let commits: Vec<Option<Lsn>> = changes
            .iter()
            .filter(|change| change.action == Action::Commit)
            .map(|change| change.next_lsn)
            .collect();
        assert_eq!(
            commits,
            [
                "0/192F7D0",
                "0/192F938",
                "0/192FAF8",
                "0/192FC18",
                "0/192FF20",
                "0/1930C80"
            ]
            .map(|text| Some(lsn(text)))
        );
        assert!(changes[1].pk.is_empty(), "no include-pk");
        assert_eq!(changes[1].columns[1].type_name, "numeric(30,10)");
    }

    #[test]
    fn pretty_printed_transactions_decode_like_compact_ones() {
        let pretty = hex_frames(PRETTY);
        assert!(
            pretty[0].1.contains(&b'\n'),
            "the capture is pretty-printed"
        );
        let old = frames(OLD_CONNECTOR);
        let pretty = decode_all(&pretty);
        let old = decode_all(&old);
        assert_eq!(pretty.len(), old.len());
        for (pretty, compact) in pretty.iter().zip(&old) {
            if compact.action == Action::Commit {
                assert_eq!(pretty.action, Action::Commit);
                assert_eq!(pretty.next_lsn, None, "no include-lsn, no chunks");
            } else {
                assert_eq!(format!("{pretty:?}"), format!("{compact:?}"));
            }
        }
    }

    const AT: Lsn = Lsn::from_u64(0x1_0000_0010);

    fn decode_one(decoder: &mut V1Decoder, frame: &[u8]) -> Result<usize, Wal2JsonError> {
        let mut out = Vec::new();
        decoder.decode(frame, AT, &mut out).map(|()| out.len())
    }

    #[test]
    fn every_truncation_of_a_captured_frame_is_an_error_or_a_begin_part() {
        for fixture in [WHOLE, CHUNKS] {
            let mut decoder = V1Decoder::new();
            for (at, frame) in frames(fixture) {
                for len in 0..frame.len() {
                    let mut probe = decoder.clone();
                    let mut out = Vec::new();
                    let prefix = &frame[..len];
                    match probe.decode(prefix, at, &mut out) {
                        Err(error) => {
                            assert_eq!(error.lsn, at);
                            assert!(!probe.in_transaction(), "an error resets the decoder");
                            assert!(out.is_empty(), "nothing appended on error");
                        }
                        Ok(()) => assert!(
                            trim(prefix).ends_with(b"[") && out[0].action == Action::Begin,
                            "{:?} decoded",
                            String::from_utf8_lossy(prefix)
                        ),
                    }
                }
                decoder.decode(&frame, at, &mut Vec::new()).unwrap();
            }
        }
    }

    #[test]
    fn malformed_frames_are_typed_errors_with_the_lsn() {
        let begin = br#"{"xid":1,"nextlsn":"1/20","change":["#;
        let insert = br#"{"kind":"insert","schema":"s","table":"t","columnnames":["a"],"columntypes":["integer"],"columnvalues":[1]}"#;
        let cases: Vec<(&str, Vec<&[u8]>)> = vec![
            ("empty frame", vec![b""]),
            ("not UTF-8", vec![b"\xff\xfe"]),
            ("close outside a transaction", vec![b"]}"]),
            ("a change outside a transaction", vec![insert]),
            ("unknown kind", vec![br#"{"change":[{"kind":"truncate","schema":"s","table":"t"}]}"#]),
            ("missing table", vec![br#"{"change":[{"kind":"delete","schema":"s"}]}"#]),
            ("names and values differ", vec![br#"{"change":[{"kind":"insert","schema":"s","table":"t","columnnames":["a","b"],"columnvalues":[1]}]}"#]),
            ("names and types differ", vec![br#"{"change":[{"kind":"insert","schema":"s","table":"t","columnnames":["a"],"columntypes":[],"columnvalues":[1]}]}"#]),
            ("oldkeys lists differ", vec![br#"{"change":[{"kind":"delete","schema":"s","table":"t","oldkeys":{"keynames":["a"],"keyvalues":[]}}]}"#]),
            ("insert without columns", vec![br#"{"change":[{"kind":"insert","schema":"s","table":"t"}]}"#]),
            ("message without content", vec![br#"{"change":[{"kind":"message","transactional":false,"prefix":"p"}]}"#]),
            ("bad nextlsn", vec![br#"{"nextlsn":"nope","change":[]}"#]),
            ("bad nextlsn in a begin part", vec![br#"{"nextlsn":"nope","change":["#]),
            ("xid not a number", vec![br#"{"xid":"1","change":["#]),
            ("begin part without change", vec![br#"{"xid":1,"["#]),
            ("begin part with garbage", vec![br#"{"xid":1 2,"change":["#]),
            ("begin part not an object", vec![br#"["#]),
            ("leading comma on a change", vec![br#"{"change":[,{"kind":"delete","schema":"s","table":"t"}]}"#]),
            ("trailing garbage", vec![br#"{"change":[]}x"#]),
            ("first change with a comma", vec![begin, b",{}"]),
            ("second change without a comma", vec![begin, insert, insert]),
            ("a begin part inside a transaction", vec![begin, begin]),
            ("a close with garbage", vec![begin, b"]}}"]),
            ("a close at another LSN than nextlsn", vec![begin, b"]}"]),
            ("a truncated change", vec![begin, &insert[..40]]),
        ];
        for (case, frames) in cases {
            let mut decoder = V1Decoder::new();
            let (last, before) = frames.split_last().expect("frames");
            for frame in before {
                decode_one(&mut decoder, frame).unwrap_or_else(|error| panic!("{case}: {error}"));
            }
            let error = decode_one(&mut decoder, last).expect_err(case);
            assert_eq!(error.lsn, AT, "{case}");
            assert!(error.to_string().contains("1/10"), "{case}: {error}");
            assert!(
                !decoder.in_transaction(),
                "{case}: back between transactions"
            );
        }
    }

    #[test]
    fn a_chunked_transaction_closes_at_any_lsn_without_nextlsn() {
        let mut decoder = V1Decoder::new();
        let mut out = Vec::new();
        decoder.decode(br#" {"change":[ "#, AT, &mut out).unwrap();
        assert!(decoder.in_transaction());
        decoder
            .decode(
                br#"{"kind":"message","transactional":true,"prefix":"p","content":"c"}"#,
                AT,
                &mut out,
            )
            .unwrap();
        decoder
            .decode(b"\t] }\n", Lsn::from_u64(99), &mut out)
            .unwrap();
        assert!(!decoder.in_transaction());
        assert_eq!(
            actions(&out),
            [Action::Begin, Action::Message, Action::Commit]
        );
        assert_eq!(out[2].next_lsn, Some(Lsn::from_u64(99)));
    }

    #[test]
    fn reset_forgets_an_open_transaction() {
        let mut decoder = V1Decoder::new();
        decode_one(&mut decoder, br#"{"xid":5,"change":["#).unwrap();
        assert!(decoder.in_transaction());
        decoder.reset();
        assert!(!decoder.in_transaction());
        assert_eq!(
            decode_one(&mut decoder, br#"{"xid":6,"change":[]}"#).unwrap(),
            2
        );
    }
}
