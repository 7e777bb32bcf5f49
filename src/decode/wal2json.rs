//! wal2json format-version 2: one JSON object per action (`B`egin, `C`ommit, `I`nsert,
//! `U`pdate, `D`elete, `T`runcate, `M`essage), decoded into borrowed, typed changes.
//!
//! Parsing borrows from the received frame: names and unescaped strings are slices of it, and
//! every column value is kept as its raw JSON literal (`&RawValue`), so a `numeric` such as
//! `12345678901234567890.0123456789` keeps every digit (it never passes through an f64).
//! Facts of Debian's wal2json 2.5 this relies on: json/jsonb, arrays, dates and most other types
//! arrive as strings holding PostgreSQL's text output; numbers and booleans as bare literals;
//! `NaN`/`Infinity` (numeric and float) as `null` (a wal2json limitation: pgoutput keeps them);
//! an unchanged TOASTed column is absent from an UPDATE's `columns`.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::pg::Lsn;

/// Why a wal2json message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("wal2json message at {lsn} is invalid: {detail}")]
pub struct Wal2JsonError {
    /// Where the message starts in the WAL.
    pub lsn: Lsn,
    /// What was wrong.
    pub detail: String,
}

/// What a message reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A transaction begins.
    Begin,
    /// A transaction commits.
    Commit,
    /// A row was inserted.
    Insert,
    /// A row was updated.
    Update,
    /// A row was deleted.
    Delete,
    /// A table was truncated.
    Truncate,
    /// A `pg_logical_emit_message` message.
    Message,
}

/// One column of a row image.
#[derive(Debug, Clone, Deserialize)]
pub struct ColumnValue<'a> {
    /// Column name.
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// wal2json's type name (e.g. `numeric(30,10)`, `integer[]`).
    #[serde(rename = "type", borrow, default)]
    pub type_name: Cow<'a, str>,
    /// The type's oid (with `include-type-oids`): wal2json writes a type name that
    /// `format_type` quoted (`"char"`, `"Mixed_Case"`) without its quotes, so the name alone
    /// can name another type.
    #[serde(rename = "typeoid", default)]
    pub type_oid: Option<u32>,
    /// The raw JSON literal; `None` for SQL NULL.
    #[serde(borrow, default)]
    pub value: Option<&'a RawValue>,
}

impl ColumnValue<'_> {
    /// The value as PostgreSQL's text (strings unescaped, literals as written); `None` for NULL.
    pub fn text(&self) -> Result<Option<Cow<'_, str>>, String> {
        let Some(raw) = self.value else {
            return Ok(None);
        };
        let literal = raw.get();
        if literal.starts_with('"') {
            // Borrowed when the string has no escapes, unescaped into a copy otherwise.
            match serde_json::from_str::<&str>(literal) {
                Ok(text) => Ok(Some(Cow::Borrowed(text))),
                Err(_) => serde_json::from_str::<String>(literal)
                    .map(|text| Some(Cow::Owned(text)))
                    .map_err(|error| format!("column {:?}: {error}", self.name)),
            }
        } else {
            Ok(Some(Cow::Borrowed(literal)))
        }
    }
}

#[derive(Debug, Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    action: &'a str,
    #[serde(default)]
    xid: Option<u64>,
    #[serde(borrow, default)]
    lsn: Option<&'a str>,
    #[serde(borrow, default)]
    nextlsn: Option<&'a str>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    schema: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    table: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    columns: Vec<ColumnValue<'a>>,
    #[serde(borrow, default)]
    identity: Vec<ColumnValue<'a>>,
    #[serde(borrow, default)]
    pk: Vec<ColumnValue<'a>>,
    #[serde(borrow, default)]
    prefix: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
}

/// One decoded wal2json v2 message.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    /// What happened.
    pub action: Action,
    /// Transaction id (with `include-xids`).
    pub xid: Option<u64>,
    /// The message's LSN (with `include-lsn`); for `C`, the commit record.
    pub lsn: Option<Lsn>,
    /// For `B`/`C`: the LSN after the commit record, the position to confirm once applied.
    pub next_lsn: Option<Lsn>,
    /// Commit time (with `include-timestamp`), PostgreSQL's text.
    pub timestamp: Option<Cow<'a, str>>,
    /// Schema of the table (row actions and `T`).
    pub schema: Option<Cow<'a, str>>,
    /// Table name (row actions and `T`).
    pub table: Option<Cow<'a, str>>,
    /// New row image (`I`, `U`): every column except unchanged TOASTed ones.
    pub columns: Vec<ColumnValue<'a>>,
    /// Old key (`U` with a changed key or REPLICA IDENTITY FULL, and `D`).
    pub identity: Vec<ColumnValue<'a>>,
    /// Primary key column names (with `include-pk`).
    pub pk: Vec<Cow<'a, str>>,
    /// `M`: the message prefix.
    pub prefix: Option<Cow<'a, str>>,
    /// `M`: the content.
    pub content: Option<Cow<'a, str>>,
}

fn lsn(text: Option<&str>, at: Lsn) -> Result<Option<Lsn>, Wal2JsonError> {
    text.map(|text| {
        text.parse().map_err(|_| Wal2JsonError {
            lsn: at,
            detail: format!("{text:?} is not an LSN"),
        })
    })
    .transpose()
}

/// Decodes one format-version 2 message; `at` (the XLogData start) is named in errors.
pub fn parse_v2(data: &[u8], at: Lsn) -> Result<Change<'_>, Wal2JsonError> {
    let message: Message<'_> = serde_json::from_slice(data).map_err(|error| Wal2JsonError {
        lsn: at,
        detail: format!(
            "{error} in {:?}",
            String::from_utf8_lossy(&data[..data.len().min(200)])
        ),
    })?;
    let action = match message.action {
        "B" => Action::Begin,
        "C" => Action::Commit,
        "I" => Action::Insert,
        "U" => Action::Update,
        "D" => Action::Delete,
        "T" => Action::Truncate,
        "M" => Action::Message,
        other => {
            return Err(Wal2JsonError {
                lsn: at,
                detail: format!("unknown action {other:?}"),
            })
        }
    };
    let needs_table = matches!(
        action,
        Action::Insert | Action::Update | Action::Delete | Action::Truncate
    );
    if needs_table && (message.schema.is_none() || message.table.is_none()) {
        return Err(Wal2JsonError {
            lsn: at,
            detail: "a row action without schema or table".into(),
        });
    }
    if matches!(action, Action::Insert | Action::Update) && message.columns.is_empty() {
        return Err(Wal2JsonError {
            lsn: at,
            detail: "an insert or update without columns".into(),
        });
    }
    Ok(Change {
        action,
        xid: message.xid,
        lsn: lsn(message.lsn, at)?,
        next_lsn: lsn(message.nextlsn, at)?,
        timestamp: message.timestamp,
        schema: message.schema,
        table: message.table,
        columns: message.columns,
        identity: message.identity,
        pk: message.pk.into_iter().map(|column| column.name).collect(),
        prefix: message.prefix,
        content: message.content,
    })
}

/// Whether a server WARNING is wal2json saying it skipped a row change, which it reports no
/// other way: a table without a replica identity (`REPLICA IDENTITY NOTHING`, or no primary
/// key) loses its UPDATEs and DELETEs, and a row without data its change.
pub fn is_skipped_change(message: &str) -> bool {
    const SKIPPED: &[&str] = &[
        "no tuple identifier for ",
        "no tuple data for ",
        "no old tuple data for ",
    ];
    SKIPPED.iter().any(|prefix| message.starts_with(prefix))
        || (message.starts_with("table ")
            && message.ends_with(" without primary key or replica identity is nothing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warnings_of_a_skipped_change_are_recognised() {
        for message in [
            "no tuple identifier for UPDATE in table \"public\".\"t\"",
            "no tuple identifier for DELETE in table \"s\".\"odd \"name\"",
            "no tuple data for INSERT in table \"public\".\"t\"",
            "no old tuple data for DELETE in table \"public\".\"t\"",
            "table \"t\" without primary key or replica identity is nothing",
        ] {
            assert!(is_skipped_change(message), "{message}");
        }
        assert!(!is_skipped_change("there is no transaction in progress"));
    }

    const AT: Lsn = Lsn::from_u64(0x152E6F0);

    #[test]
    fn an_insert_keeps_literals_exact_and_strings_borrowed() {
        let frame = br#"{"action":"I","xid":728,"timestamp":"2026-11-26 11:37:46.943744+00","lsn":"0/152E6F0","schema":"public","table":"t","columns":[{"name":"id","type":"integer","value":1},{"name":"n","type":"numeric(30,10)","value":12345678901234567890.0123456789},{"name":"nf","type":"numeric","value":null},{"name":"j","type":"jsonb","value":"{\"a\": [1, 2.50]}"},{"name":"m","type":"mood","value":"happy"}],"pk":[{"name":"id","type":"integer"}]}"#;
        let change = parse_v2(frame, AT).unwrap();
        assert_eq!(change.action, Action::Insert);
        assert_eq!(change.xid, Some(728));
        assert_eq!(change.lsn, Some(AT));
        assert_eq!(change.table.as_deref(), Some("t"));
        assert_eq!(change.pk, vec![Cow::Borrowed("id")]);
        let text = |index: usize| {
            change.columns[index]
                .text()
                .unwrap()
                .map(|t| t.into_owned())
        };
        assert_eq!(text(0).as_deref(), Some("1"));
        assert_eq!(text(1).as_deref(), Some("12345678901234567890.0123456789"));
        assert_eq!(text(2), None);
        assert_eq!(text(3).as_deref(), Some("{\"a\": [1, 2.50]}"));
        assert!(matches!(
            change.columns[4].text().unwrap(),
            Some(Cow::Borrowed("happy"))
        ));
    }

    #[test]
    fn begin_commit_delete_truncate_and_message() {
        let commit = parse_v2(
            br#"{"action":"C","xid":728,"lsn":"0/152E8B8","nextlsn":"0/152E8E8"}"#,
            AT,
        )
        .unwrap();
        assert_eq!(commit.action, Action::Commit);
        assert_eq!(commit.next_lsn, Some("0/152E8E8".parse().unwrap()));
        let delete = parse_v2(br#"{"action":"D","schema":"public","table":"t","identity":[{"name":"id","type":"integer","value":2}],"pk":[{"name":"id","type":"integer"}]}"#, AT).unwrap();
        assert_eq!(delete.identity[0].text().unwrap().as_deref(), Some("2"));
        let truncate = parse_v2(br#"{"action":"T","schema":"public","table":"t"}"#, AT).unwrap();
        assert_eq!(truncate.action, Action::Truncate);
        let message = parse_v2(
            br#"{"action":"M","transactional":true,"prefix":"pgferry","content":"hi"}"#,
            AT,
        )
        .unwrap();
        assert_eq!(message.prefix.as_deref(), Some("pgferry"));
    }

    #[test]
    fn malformed_and_truncated_messages_are_typed_errors_with_the_lsn() {
        for bad in [
            &br#"{"action":"I","schema":"public","table":"t","columns":[{"name":"id","value":1"#[..],
            br#"{"action":"X"}"#,
            br#"{"action":"I","schema":"public","table":"t"}"#,
            br#"{"action":"D","identity":[]}"#,
            br#"{"action":"C","nextlsn":"nope"}"#,
            b"",
            b"\xff\xfe",
        ] {
            let error = parse_v2(bad, AT).unwrap_err();
            assert_eq!(error.lsn, AT);
            assert!(error.to_string().contains("0/152E6F0"), "{error}");
        }
    }
}
