//! pgoutput for the tap: each message becomes the change wal2json would have sent for it, so
//! the tap writes the same Singer messages whichever plugin its slot uses.
//!
//! The correspondence, per message: Begin and Commit bound a transaction (Commit's end
//! position is wal2json's `nextlsn`); Relation names the columns of later tuples (kept here,
//! no change); Insert, Update and Delete carry PostgreSQL's text output of each value, which
//! wal2json would have written as a JSON string or bare literal — the tap reads both the same
//! way. An unchanged TOASTed value is left out of the new row, as wal2json leaves it out; the
//! old key of a `K` tuple keeps only the identity columns (the others are sent as NULL), as
//! wal2json's `identity` holds only those; a `O` tuple (REPLICA IDENTITY FULL) keeps them all.
//! Truncate yields one change per relation. Type, Origin and logical messages yield nothing.
//! The tap asks for protocol 1 in text: large transactions arrive whole at their commit.

use std::borrow::Cow;
use std::collections::HashMap;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::decode::pgoutput::{
    Oid, OldTuple, PgOutputDecoder, PgOutputMessage, ProtocolVersion, Relation, TupleColumn,
    TupleData,
};
use crate::decode::wal2json::{Action, Change, ColumnValue};
use crate::pg::Lsn;

/// Why a pgoutput message could not become a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pgoutput message at {lsn}: {detail}")]
pub struct PgOutputChangeError {
    /// Where the message starts in the WAL.
    pub lsn: Lsn,
    /// What was wrong.
    pub detail: String,
}

/// A relation's names, as its last Relation message gave them.
#[derive(Debug, Clone)]
struct RelationNames {
    schema: String,
    table: String,
    /// `(column name, part of the replica identity)`, in tuple order.
    columns: Vec<(String, bool)>,
}

impl From<&Relation> for RelationNames {
    fn from(relation: &Relation) -> RelationNames {
        RelationNames {
            schema: relation.schema().to_owned(),
            table: relation.name.clone(),
            columns: relation
                .columns
                .iter()
                .map(|column| (column.name.clone(), column.is_key))
                .collect(),
        }
    }
}

/// One column with its value as a JSON string literal (`None` for NULL).
type OwnedColumn = (String, Option<Box<RawValue>>);

/// A change with owned names and values; [`OwnedChange::as_change`] lends it to the tap.
#[derive(Debug, Clone)]
pub struct OwnedChange {
    action: Action,
    lsn: Option<Lsn>,
    next_lsn: Option<Lsn>,
    schema: Option<String>,
    table: Option<String>,
    columns: Vec<OwnedColumn>,
    identity: Vec<OwnedColumn>,
}

impl OwnedChange {
    fn bare(action: Action, lsn: Lsn) -> OwnedChange {
        OwnedChange {
            action,
            lsn: Some(lsn),
            next_lsn: None,
            schema: None,
            table: None,
            columns: Vec::new(),
            identity: Vec::new(),
        }
    }

    /// The change as wal2json's decoder gives it.
    pub fn as_change(&self) -> Change<'_> {
        Change {
            action: self.action,
            xid: None,
            lsn: self.lsn,
            next_lsn: self.next_lsn,
            timestamp: None,
            schema: self.schema.as_deref().map(Cow::Borrowed),
            table: self.table.as_deref().map(Cow::Borrowed),
            columns: lend(&self.columns),
            identity: lend(&self.identity),
            pk: Vec::new(),
            prefix: None,
            content: None,
        }
    }
}

/// Lends owned columns as the decoder's borrowed ones.
fn lend(columns: &[OwnedColumn]) -> Vec<ColumnValue<'_>> {
    columns
        .iter()
        .map(|(name, value)| ColumnValue {
            type_oid: None,
            name: Cow::Borrowed(name.as_str()),
            type_name: Cow::Borrowed(""),
            value: value.as_deref(),
        })
        .collect()
}

/// pgoutput's decoder and the relations it has described.
#[derive(Debug)]
pub struct PgOutputChanges {
    decoder: PgOutputDecoder,
    relations: HashMap<Oid, RelationNames>,
}

impl Default for PgOutputChanges {
    fn default() -> Self {
        PgOutputChanges::new()
    }
}

impl PgOutputChanges {
    /// A reader of a protocol-1 text stream.
    pub fn new() -> PgOutputChanges {
        PgOutputChanges {
            decoder: PgOutputDecoder::new(ProtocolVersion::V1),
            relations: HashMap::new(),
        }
    }

    /// Decodes the message that started at `at`, appending the changes it makes to `out`.
    pub fn decode(
        &mut self,
        data: &Bytes,
        at: Lsn,
        out: &mut Vec<OwnedChange>,
    ) -> Result<(), PgOutputChangeError> {
        let fail = |detail: String| PgOutputChangeError { lsn: at, detail };
        let message = self
            .decoder
            .decode(data, at)
            .map_err(|error| fail(error.detail))?;
        match message {
            PgOutputMessage::Begin(begin) => {
                out.push(OwnedChange::bare(Action::Begin, begin.final_lsn))
            }
            PgOutputMessage::Commit(commit) => {
                let mut change = OwnedChange::bare(Action::Commit, commit.commit_lsn);
                change.next_lsn = Some(commit.end_lsn);
                out.push(change);
            }
            PgOutputMessage::Relation(relation) => {
                self.relations
                    .insert(relation.id, RelationNames::from(&relation));
            }
            PgOutputMessage::Insert(insert) => {
                let relation = self.relation(insert.relation_id, at)?;
                let mut change = relation.change(Action::Insert, at);
                change.columns = relation.columns(&insert.new, false, at)?;
                out.push(change);
            }
            PgOutputMessage::Update(update) => {
                let relation = self.relation(update.relation_id, at)?;
                let mut change = relation.change(Action::Update, at);
                change.columns = relation.columns(&update.new, false, at)?;
                if let Some(old) = &update.old {
                    change.identity = relation.old_columns(old, at)?;
                }
                out.push(change);
            }
            PgOutputMessage::Delete(delete) => {
                let relation = self.relation(delete.relation_id, at)?;
                let mut change = relation.change(Action::Delete, at);
                change.identity = relation.old_columns(&delete.old, at)?;
                out.push(change);
            }
            PgOutputMessage::Truncate(truncate) => {
                for id in &truncate.relation_ids {
                    out.push(self.relation(*id, at)?.change(Action::Truncate, at));
                }
            }
            PgOutputMessage::Type(_) | PgOutputMessage::Origin(_) | PgOutputMessage::Message(_) => {
            }
            other => {
                return Err(fail(format!(
                    "{other:?} is not part of protocol 1, which the tap asked for"
                )))
            }
        }
        Ok(())
    }

    fn relation(&self, id: Oid, at: Lsn) -> Result<&RelationNames, PgOutputChangeError> {
        self.relations.get(&id).ok_or_else(|| PgOutputChangeError {
            lsn: at,
            detail: format!("a change of relation {id} came before its Relation message"),
        })
    }
}

impl RelationNames {
    fn change(&self, action: Action, at: Lsn) -> OwnedChange {
        let mut change = OwnedChange::bare(action, at);
        change.schema = Some(self.schema.clone());
        change.table = Some(self.table.clone());
        change
    }

    /// The columns of `tuple`; `keys_only` keeps the identity columns.
    fn columns(
        &self,
        tuple: &TupleData,
        keys_only: bool,
        at: Lsn,
    ) -> Result<Vec<OwnedColumn>, PgOutputChangeError> {
        let fail = |detail: String| PgOutputChangeError { lsn: at, detail };
        if tuple.columns.len() != self.columns.len() {
            return Err(fail(format!(
                "a tuple of {}.{} has {} columns, its Relation message {}",
                self.schema,
                self.table,
                tuple.columns.len(),
                self.columns.len()
            )));
        }
        let mut columns = Vec::with_capacity(tuple.columns.len());
        for ((name, is_key), column) in self.columns.iter().zip(&tuple.columns) {
            if keys_only && !is_key {
                continue;
            }
            let value = match column {
                TupleColumn::Null => None,
                TupleColumn::UnchangedToast => continue,
                TupleColumn::Text(bytes) => {
                    let text = std::str::from_utf8(bytes).map_err(|error| {
                        fail(format!("column {name:?} is not UTF-8 text: {error}"))
                    })?;
                    Some(
                        serde_json::value::to_raw_value(text)
                            .map_err(|error| fail(format!("column {name:?}: {error}")))?,
                    )
                }
                TupleColumn::Binary(_) => {
                    return Err(fail(format!(
                        "column {name:?} came in binary, which the tap did not ask for"
                    )))
                }
            };
            columns.push((name.clone(), value));
        }
        Ok(columns)
    }

    fn old_columns(
        &self,
        old: &OldTuple,
        at: Lsn,
    ) -> Result<Vec<OwnedColumn>, PgOutputChangeError> {
        match old {
            OldTuple::Key(tuple) => self.columns(tuple, true, at),
            OldTuple::Full(tuple) => self.columns(tuple, false, at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::pgoutput::{RelationColumn, ReplicaIdentity};

    /// Frames in pgoutput's protocol-1 layout, written by hand from the protocol docs.
    fn relation_frame() -> Bytes {
        let mut frame = vec![b'R'];
        frame.extend_from_slice(&16_384u32.to_be_bytes());
        frame.extend_from_slice(b"public\0t\0");
        frame.push(b'd');
        frame.extend_from_slice(&3u16.to_be_bytes());
        for (flags, name, oid) in [(1u8, "id", 23u32), (0, "note", 25), (0, "big", 25)] {
            frame.push(flags);
            frame.extend_from_slice(name.as_bytes());
            frame.push(0);
            frame.extend_from_slice(&oid.to_be_bytes());
            frame.extend_from_slice(&(-1i32).to_be_bytes());
        }
        Bytes::from(frame)
    }

    fn tuple(frame: &mut Vec<u8>, columns: &[Option<Option<&str>>]) {
        frame.push(b'N');
        frame.extend_from_slice(&u16::try_from(columns.len()).unwrap().to_be_bytes());
        for column in columns {
            match column {
                None => frame.push(b'u'),
                Some(None) => frame.push(b'n'),
                Some(Some(text)) => {
                    frame.push(b't');
                    frame.extend_from_slice(&u32::try_from(text.len()).unwrap().to_be_bytes());
                    frame.extend_from_slice(text.as_bytes());
                }
            }
        }
    }

    fn decode(reader: &mut PgOutputChanges, frame: Vec<u8>) -> Vec<OwnedChange> {
        let mut out = Vec::new();
        reader
            .decode(&Bytes::from(frame), Lsn::from_u64(100), &mut out)
            .expect("decodes");
        out
    }

    fn texts(columns: &[ColumnValue<'_>]) -> Vec<(String, Option<String>)> {
        columns
            .iter()
            .map(|column| {
                (
                    column.name.to_string(),
                    column.text().unwrap().map(|text| text.into_owned()),
                )
            })
            .collect()
    }

    #[test]
    fn rows_read_as_wal2json_would_have_sent_them() {
        let mut reader = PgOutputChanges::new();
        assert!(decode(&mut reader, relation_frame().to_vec()).is_empty());

        let mut insert = vec![b'I'];
        insert.extend_from_slice(&16_384u32.to_be_bytes());
        tuple(
            &mut insert,
            &[Some(Some("1")), Some(Some("a \"quoted\" note")), Some(None)],
        );
        let changes = decode(&mut reader, insert);
        let change = changes[0].as_change();
        assert_eq!(change.action, Action::Insert);
        assert_eq!(
            (change.schema.as_deref(), change.table.as_deref()),
            (Some("public"), Some("t"))
        );
        assert_eq!(
            texts(&change.columns),
            vec![
                ("id".into(), Some("1".into())),
                ("note".into(), Some("a \"quoted\" note".into())),
                ("big".into(), None)
            ]
        );

        // An update that moved the key and left a TOASTed value as it was.
        let mut update = vec![b'U'];
        update.extend_from_slice(&16_384u32.to_be_bytes());
        update.push(b'K');
        let mut old = Vec::new();
        tuple(&mut old, &[Some(Some("1")), Some(None), Some(None)]);
        update.extend_from_slice(&old[1..]);
        tuple(&mut update, &[Some(Some("2")), Some(Some("n")), None]);
        let changes = decode(&mut reader, update);
        let change = changes[0].as_change();
        assert_eq!(
            texts(&change.identity),
            vec![("id".into(), Some("1".into()))],
            "the K tuple keeps the key only"
        );
        assert_eq!(
            texts(&change.columns),
            vec![
                ("id".into(), Some("2".into())),
                ("note".into(), Some("n".into()))
            ],
            "the unchanged TOASTed column is left out"
        );
    }

    #[test]
    fn a_full_identity_delete_keeps_the_whole_old_row_and_truncate_names_each_table() {
        let mut reader = PgOutputChanges::new();
        decode(&mut reader, relation_frame().to_vec());
        let mut delete = vec![b'D'];
        delete.extend_from_slice(&16_384u32.to_be_bytes());
        delete.push(b'O');
        let mut old = Vec::new();
        tuple(&mut old, &[Some(Some("7")), Some(Some("x")), Some(None)]);
        delete.extend_from_slice(&old[1..]);
        let changes = decode(&mut reader, delete);
        assert_eq!(changes[0].as_change().identity.len(), 3);

        let mut truncate = vec![b'T'];
        truncate.extend_from_slice(&1u32.to_be_bytes());
        truncate.push(0);
        truncate.extend_from_slice(&16_384u32.to_be_bytes());
        let changes = decode(&mut reader, truncate);
        assert_eq!(changes[0].as_change().action, Action::Truncate);
        assert_eq!(changes[0].as_change().table.as_deref(), Some("t"));
    }

    #[test]
    fn a_change_before_its_relation_is_an_error_not_a_skip() {
        let mut reader = PgOutputChanges::new();
        let mut insert = vec![b'I'];
        insert.extend_from_slice(&99u32.to_be_bytes());
        tuple(&mut insert, &[Some(Some("1"))]);
        let error = reader
            .decode(&Bytes::from(insert), Lsn::from_u64(5), &mut Vec::new())
            .unwrap_err();
        assert!(
            error.detail.contains("before its Relation message"),
            "{error}"
        );
    }

    #[test]
    fn relation_names_take_pg_catalog_for_an_empty_namespace() {
        let relation = Relation {
            xid: None,
            id: 1,
            namespace: String::new(),
            name: "x".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![RelationColumn {
                is_key: true,
                name: "a".into(),
                type_oid: 23,
                type_modifier: -1,
            }],
        };
        assert_eq!(RelationNames::from(&relation).schema, "pg_catalog");
    }
}
