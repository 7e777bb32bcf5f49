//! pgoutput in the streaming loop: the relation cache that names a tuple's columns, row
//! changes made from tuples, and the on-disk spool of streamed in-progress transactions.
//!
//! With protocol 2 and `streaming 'on'`, PostgreSQL sends a large transaction in blocks while
//! it is still running (`logical_decoding_work_mem` exceeded). Its messages are appended to a
//! spool file of their own, in memory only as a write buffer; Stream Commit replays the file
//! through the same path as a committed transaction (flushing to GDN as pending operations
//! pile up), Stream Abort deletes it or, for a subtransaction, marks that xid's messages to be
//! skipped. Relation messages inside a stream describe the relation for that transaction
//! until it commits (PostgreSQL sends them again to the main flow while it runs, and not after
//! its commit), so the replay reads them into a copy of the cache that replaces the cache at
//! Stream Commit. Spool files left by a crash are removed at start: the slot sends the
//! unconfirmed transactions again.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::row::{Field, FieldData, RowChange};
use super::side::SideConnection;
use super::table::{CdcTable, LeafOf};
use super::{CdcError, CdcSummary, CdcTables, Streamer};
use crate::decode::commit_time::from_postgres_micros;
use crate::decode::pgoutput::{
    Oid, OldTuple, PgOutputDecoder, PgOutputError, PgOutputMessage, ProtocolVersion, Relation,
    TupleColumn, TupleData, Xid,
};
use crate::decode::wal2json::Action;
use crate::pg::catalog::RelationKind;
use crate::pg::replication::LogicalStream;
use crate::pg::Lsn;
use std::sync::Arc;

/// A relation as the last Relation message described it, with type names resolved.
#[derive(Debug, Clone)]
pub(super) struct RelationInfo {
    schema: String,
    table: String,
    /// `(name, type name as format_type spells it, is part of the key)`, in tuple order.
    columns: Vec<(String, String, bool)>,
}

/// Relation id → relation.
type Relations = HashMap<Oid, RelationInfo>;

/// pgoutput's decoder, relation cache and spool.
#[derive(Debug)]
pub(super) struct PgOutputSource {
    decoder: PgOutputDecoder,
    relations: Relations,
    spool: Spool,
}

impl PgOutputSource {
    /// A source for a stream started with `version`, spooling under `spool_dir` (emptied now).
    pub(super) fn new(version: ProtocolVersion, spool_dir: PathBuf) -> Result<Self, CdcError> {
        Ok(PgOutputSource {
            decoder: PgOutputDecoder::new(version),
            relations: HashMap::new(),
            spool: Spool::new(spool_dir)?,
        })
    }
}

fn decode_error(error: PgOutputError) -> CdcError {
    CdcError::Unsupported(format!("{error}"))
}

/// Resolves a Relation message's column types to names.
async fn describe(
    relation: &Relation,
    side: &mut SideConnection,
) -> Result<RelationInfo, CdcError> {
    let types: Vec<(u32, i32)> = relation
        .columns
        .iter()
        .map(|column| (column.type_oid, column.type_modifier))
        .collect();
    let names = side.format_types(&types).await?;
    Ok(RelationInfo {
        schema: relation.schema().to_owned(),
        table: relation.name.clone(),
        columns: relation
            .columns
            .iter()
            .zip(names)
            .map(|(column, type_name)| (column.name.clone(), type_name, column.is_key))
            .collect(),
    })
}

/// The fields of a tuple; `keys_only` keeps the key columns of a `K` old tuple.
fn fields<'m>(
    relation: &'m RelationInfo,
    tuple: &'m TupleData,
    keys_only: bool,
    lsn: Lsn,
) -> Result<Vec<Field<'m>>, CdcError> {
    if tuple.columns.len() != relation.columns.len() {
        return Err(CdcError::Unsupported(format!(
            "a pgoutput tuple of {}.{} at {lsn} has {} columns, its Relation message {}",
            relation.schema,
            relation.table,
            tuple.columns.len(),
            relation.columns.len()
        )));
    }
    let mut fields = Vec::with_capacity(tuple.columns.len());
    for ((name, type_name, is_key), column) in relation.columns.iter().zip(&tuple.columns) {
        if keys_only && !is_key {
            continue;
        }
        let value = match column {
            TupleColumn::Null => None,
            // Absent from the image: the document keeps its value (a PATCH), never a null.
            TupleColumn::UnchangedToast => continue,
            TupleColumn::Text(bytes) => Some(FieldData::Text(Cow::Borrowed(
                std::str::from_utf8(bytes).map_err(|_| {
                    CdcError::Unsupported(format!(
                        "column {name:?} of {}.{} at {lsn} is not valid UTF-8 (the server encoding must be UTF8)",
                        relation.schema, relation.table
                    ))
                })?,
            ))),
            TupleColumn::Binary(bytes) => Some(FieldData::Binary(bytes)),
        };
        fields.push(Field {
            name,
            type_name,
            // format_type's own spelling: the name alone is exact.
            type_oid: None,
            value,
        });
    }
    Ok(fields)
}

/// The row change an Insert, Update or Delete describes (`None` for other messages or an
/// unknown relation, which pgoutput never sends for published tables).
fn row_change<'m>(
    message: &'m PgOutputMessage,
    relations: &'m Relations,
    lsn: Lsn,
) -> Result<Option<RowChange<'m>>, CdcError> {
    let (action, relation_id, new, old) = match message {
        PgOutputMessage::Insert(insert) => {
            (Action::Insert, insert.relation_id, Some(&insert.new), None)
        }
        PgOutputMessage::Update(update) => (
            Action::Update,
            update.relation_id,
            Some(&update.new),
            update.old.as_ref(),
        ),
        PgOutputMessage::Delete(delete) => {
            (Action::Delete, delete.relation_id, None, Some(&delete.old))
        }
        _ => return Ok(None),
    };
    let relation = relations.get(&relation_id).ok_or_else(|| {
        CdcError::Unsupported(format!(
            "pgoutput sent a change of relation {relation_id} at {lsn} before describing it"
        ))
    })?;
    let columns = match new {
        Some(tuple) => fields(relation, tuple, false, lsn)?,
        None => Vec::new(),
    };
    let identity = match old {
        Some(OldTuple::Key(tuple)) => fields(relation, tuple, true, lsn)?,
        Some(OldTuple::Full(tuple)) => fields(relation, tuple, false, lsn)?,
        None => Vec::new(),
    };
    Ok(Some(RowChange {
        action,
        schema: &relation.schema,
        table: &relation.table,
        columns,
        identity,
        keys: relation
            .columns
            .iter()
            .filter(|(_, _, is_key)| *is_key)
            .map(|(name, _, _)| name.as_str())
            .collect(),
    }))
}

/// Transactions streamed before they committed, one file each.
#[derive(Debug)]
struct Spool {
    dir: PathBuf,
    open: HashMap<Xid, SpoolFile>,
}

#[derive(Debug)]
struct SpoolFile {
    path: PathBuf,
    writer: BufWriter<File>,
    /// Subtransactions aborted after their changes were streamed.
    aborted: HashSet<Xid>,
}

fn spool_error(path: &Path, error: std::io::Error) -> CdcError {
    CdcError::Unsupported(format!(
        "spooling a streamed transaction in {}: {error}\nHINT: pgferry needs a writable directory with room for the largest in-progress transaction",
        path.display()
    ))
}

impl Spool {
    fn new(dir: PathBuf) -> Result<Spool, CdcError> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|error| spool_error(&dir, error))?;
        }
        std::fs::create_dir_all(&dir).map_err(|error| spool_error(&dir, error))?;
        Ok(Spool {
            dir,
            open: HashMap::new(),
        })
    }

    fn append(&mut self, xid: Xid, frame: &[u8]) -> Result<(), CdcError> {
        if !self.open.contains_key(&xid) {
            let path = self.dir.join(format!("{xid}.spool"));
            let file = File::create(&path).map_err(|error| spool_error(&path, error))?;
            self.open.insert(
                xid,
                SpoolFile {
                    writer: BufWriter::with_capacity(256 * 1024, file),
                    path,
                    aborted: HashSet::new(),
                },
            );
        }
        let Some(spooled) = self.open.get_mut(&xid) else {
            return Ok(());
        };
        let length = u32::try_from(frame.len()).map_err(|_| {
            CdcError::Unsupported(format!("a pgoutput message of {} bytes", frame.len()))
        })?;
        spooled
            .writer
            .write_all(&length.to_be_bytes())
            .and_then(|()| spooled.writer.write_all(frame))
            .map_err(|error| spool_error(&spooled.path, error))
    }

    fn abort(&mut self, xid: Xid, subxid: Xid) {
        if xid == subxid {
            if let Some(spooled) = self.open.remove(&xid) {
                drop(spooled.writer);
                let _ = std::fs::remove_file(&spooled.path);
            }
        } else if let Some(spooled) = self.open.get_mut(&xid) {
            spooled.aborted.insert(subxid);
        }
    }

    /// Closes `xid`'s file for replay: its path and the aborted subtransactions.
    fn finish(&mut self, xid: Xid) -> Result<Option<(PathBuf, HashSet<Xid>)>, CdcError> {
        let Some(mut spooled) = self.open.remove(&xid) else {
            return Ok(None);
        };
        spooled
            .writer
            .flush()
            .map_err(|error| spool_error(&spooled.path, error))?;
        Ok(Some((spooled.path, spooled.aborted)))
    }
}

/// Reads a spool file back, one frame at a time.
struct SpoolReader {
    path: PathBuf,
    reader: BufReader<File>,
}

impl SpoolReader {
    fn open(path: PathBuf) -> Result<SpoolReader, CdcError> {
        let file = File::open(&path).map_err(|error| spool_error(&path, error))?;
        Ok(SpoolReader {
            reader: BufReader::with_capacity(256 * 1024, file),
            path,
        })
    }

    fn next(&mut self) -> Result<Option<Bytes>, CdcError> {
        let mut length = [0u8; 4];
        match self.reader.read_exact(&mut length) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(error) => return Err(spool_error(&self.path, error)),
        }
        let mut frame = vec![0u8; u32::from_be_bytes(length) as usize];
        self.reader
            .read_exact(&mut frame)
            .map_err(|error| spool_error(&self.path, error))?;
        Ok(Some(Bytes::from(frame)))
    }
}

impl Drop for SpoolReader {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A relation not streamed by name may be a partition attached to a streamed partitioned
/// table after the start (pgferry's publication publishes partitions under their own names):
/// its changes then stream into the parent's collection from here on.
async fn adopt_partition(
    tables: &mut CdcTables,
    schema: &str,
    name: &str,
    side: &mut SideConnection,
) -> Result<(), CdcError> {
    if tables.get_mut(schema, name).is_some() {
        return Ok(());
    }
    let roots: Vec<CdcTable> = tables
        .values()
        .filter(|table| {
            table.partition.is_none() && table.table().kind == RelationKind::PartitionedTable
        })
        .cloned()
        .collect();
    for root in roots {
        if let Some((leaf, columns)) = side.leaf_of(root.table().oid, schema, name).await? {
            tracing::warn!(table = %root.name(), partition = %format!("{schema}.{name}"), "a partition attached while streaming: its changes stream into the table's collection from now on; rows it held when it was attached were not copied (copy the table again to include them)");
            tables.insert(
                schema,
                name,
                root.for_leaf(LeafOf {
                    leaf,
                    columns: Arc::new(columns),
                }),
            );
            break;
        }
    }
    Ok(())
}

impl Streamer<'_, '_> {
    /// Applies one pgoutput XLogData payload.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn apply_pgoutput(
        &mut self,
        source: &mut PgOutputSource,
        data: &Bytes,
        wal_start: Lsn,
        tables: &mut CdcTables,
        side: &mut SideConnection,
        stream: &mut LogicalStream,
        summary: &mut CdcSummary,
    ) -> Result<(), CdcError> {
        let in_stream = source.decoder.in_stream();
        let message = source
            .decoder
            .decode(data, wal_start)
            .map_err(decode_error)?;
        if let Some(xid) = in_stream {
            // Inside a stream block: keep everything for Stream Commit, apply nothing yet.
            if !matches!(
                message,
                PgOutputMessage::StreamStop | PgOutputMessage::Origin(_)
            ) {
                source.spool.append(xid, data)?;
            }
            return Ok(());
        }
        match message {
            PgOutputMessage::Begin(begin) => {
                self.begin(
                    Some(from_postgres_micros(begin.commit_time.0)),
                    Some(begin.final_lsn),
                );
            }
            PgOutputMessage::Commit(commit) => {
                self.commit(
                    commit.end_lsn,
                    Some(from_postgres_micros(commit.commit_time.0)),
                    stream,
                    summary,
                )
                .await?;
            }
            PgOutputMessage::Relation(relation) => {
                let info = describe(&relation, side).await?;
                adopt_partition(tables, &info.schema, &info.table, side).await?;
                source.relations.insert(relation.id, info);
            }
            PgOutputMessage::Insert(_)
            | PgOutputMessage::Update(_)
            | PgOutputMessage::Delete(_) => {
                if let Some(row) = row_change(&message, &source.relations, wal_start)? {
                    self.row(&row, wal_start, tables, side, summary).await?;
                }
            }
            PgOutputMessage::Truncate(truncate) => {
                self.truncate_relations(&truncate.relation_ids, &source.relations, tables, side)
                    .await?;
            }
            PgOutputMessage::Message(message) => {
                if !message.transactional {
                    self.message(message.lsn, stream, summary).await?;
                }
            }
            PgOutputMessage::StreamStart(_) | PgOutputMessage::StreamStop => {}
            PgOutputMessage::StreamAbort(abort) => source.spool.abort(abort.xid, abort.subxid),
            PgOutputMessage::StreamCommit(commit) => {
                self.begin(
                    Some(from_postgres_micros(commit.commit_time.0)),
                    Some(commit.commit_lsn),
                );
                if let Some((path, aborted)) = source.spool.finish(commit.xid)? {
                    // Relations described inside the stream count as described from now on:
                    // PostgreSQL does not send them again after the commit.
                    source.relations = self
                        .replay(source, path, &aborted, commit.xid, tables, side, summary)
                        .await?;
                }
                self.commit(
                    commit.end_lsn,
                    Some(from_postgres_micros(commit.commit_time.0)),
                    stream,
                    summary,
                )
                .await?;
            }
            PgOutputMessage::Origin(_) | PgOutputMessage::Type(_) => {}
            PgOutputMessage::BeginPrepare(_)
            | PgOutputMessage::Prepare(_)
            | PgOutputMessage::CommitPrepared(_)
            | PgOutputMessage::RollbackPrepared(_)
            | PgOutputMessage::StreamPrepare(_) => {
                return Err(CdcError::Unsupported(format!(
                    "pgoutput sent a two-phase commit message at {wal_start}, which pgferry does not ask for\nHINT: create the slot without two_phase"
                )));
            }
        }
        Ok(())
    }

    /// The truncated relations `ids` (those known) lose their rows in the destination.
    async fn truncate_relations(
        &mut self,
        ids: &[Oid],
        relations: &Relations,
        tables: &mut CdcTables,
        side: &mut SideConnection,
    ) -> Result<(), CdcError> {
        let names: Vec<(&str, &str)> = ids
            .iter()
            .filter_map(|id| relations.get(id))
            .map(|relation| (relation.schema.as_str(), relation.table.as_str()))
            .collect();
        self.truncate(tables, &names, side).await
    }

    /// Applies a committed streamed transaction from its spool file, flushing as it goes;
    /// returns the relation cache with the stream's Relation messages applied.
    #[allow(clippy::too_many_arguments)]
    async fn replay(
        &mut self,
        source: &PgOutputSource,
        path: PathBuf,
        aborted: &HashSet<Xid>,
        xid: Xid,
        tables: &mut CdcTables,
        side: &mut SideConnection,
        summary: &mut CdcSummary,
    ) -> Result<Relations, CdcError> {
        // The spooled messages were sent inside a stream block: decode them as such.
        let mut decoder = PgOutputDecoder::new(source.decoder.version());
        let mut start = vec![b'S'];
        start.extend_from_slice(&xid.to_be_bytes());
        start.push(1);
        decoder
            .decode(&Bytes::from(start), Lsn::ZERO)
            .map_err(decode_error)?;
        let mut relations = source.relations.clone();
        let mut reader = SpoolReader::open(path)?;
        while let Some(frame) = reader.next()? {
            let message = decoder.decode(&frame, Lsn::ZERO).map_err(decode_error)?;
            let sub = match &message {
                PgOutputMessage::Insert(change) => change.xid,
                PgOutputMessage::Update(change) => change.xid,
                PgOutputMessage::Delete(change) => change.xid,
                PgOutputMessage::Truncate(change) => change.xid,
                _ => None,
            };
            if sub.is_some_and(|sub| aborted.contains(&sub)) {
                continue;
            }
            match &message {
                PgOutputMessage::Relation(relation) => {
                    let info = describe(relation, side).await?;
                    adopt_partition(tables, &info.schema, &info.table, side).await?;
                    relations.insert(relation.id, info);
                }
                PgOutputMessage::Truncate(truncate) => {
                    self.truncate_relations(&truncate.relation_ids, &relations, tables, side)
                        .await?;
                }
                _ => {
                    if let Some(row) = row_change(&message, &relations, Lsn::ZERO)? {
                        self.row(&row, Lsn::ZERO, tables, side, summary).await?;
                        self.flush_if_full().await?;
                    }
                }
            }
        }
        Ok(relations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relation() -> RelationInfo {
        RelationInfo {
            schema: "public".into(),
            table: "t".into(),
            columns: vec![
                ("id".into(), "integer".into(), true),
                ("big".into(), "text".into(), false),
                ("note".into(), "text".into(), false),
            ],
        }
    }

    #[test]
    fn unchanged_toast_is_left_out_and_key_tuples_keep_only_key_columns() {
        let relation = relation();
        let tuple = TupleData {
            columns: vec![
                TupleColumn::Text(Bytes::from_static(b"7")),
                TupleColumn::UnchangedToast,
                TupleColumn::Null,
            ],
        };
        let all = fields(&relation, &tuple, false, Lsn::ZERO).unwrap();
        let names: Vec<(&str, bool)> = all
            .iter()
            .map(|field| (field.name, field.value.is_some()))
            .collect();
        assert_eq!(names, vec![("id", true), ("note", false)]);
        assert!(matches!(&all[0].value, Some(FieldData::Text(text)) if text == "7"));
        let keys = fields(&relation, &tuple, true, Lsn::ZERO).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].type_name, "integer");
    }

    #[test]
    fn a_tuple_that_does_not_match_its_relation_is_an_error() {
        let tuple = TupleData {
            columns: vec![TupleColumn::Null],
        };
        let error = fields(&relation(), &tuple, false, Lsn::from_u64(16)).unwrap_err();
        assert!(error.to_string().contains("has 1 columns"), "{error}");
        let binary = TupleData {
            columns: vec![
                TupleColumn::Binary(Bytes::from_static(b"\0\0\0\x07")),
                TupleColumn::Null,
                TupleColumn::Null,
            ],
        };
        let relation = relation();
        let fields = fields(&relation, &binary, false, Lsn::ZERO).unwrap();
        assert!(matches!(
            fields[0].value,
            Some(FieldData::Binary(b"\0\0\0\x07"))
        ));
    }

    #[test]
    fn the_spool_replays_what_it_kept_and_forgets_aborted_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::new(dir.path().join("spool")).unwrap();
        spool.append(9, b"first").unwrap();
        spool.append(9, b"second").unwrap();
        spool.append(10, b"gone").unwrap();
        spool.abort(10, 10);
        spool.abort(9, 11);
        assert!(
            spool.finish(10).unwrap().is_none(),
            "aborted: nothing to replay"
        );
        let (path, aborted) = spool.finish(9).unwrap().unwrap();
        assert!(aborted.contains(&11));
        let mut reader = SpoolReader::open(path.clone()).unwrap();
        assert_eq!(
            reader.next().unwrap().unwrap(),
            Bytes::from_static(b"first")
        );
        assert_eq!(
            reader.next().unwrap().unwrap(),
            Bytes::from_static(b"second")
        );
        assert!(reader.next().unwrap().is_none());
        drop(reader);
        assert!(!path.exists(), "a replayed spool file is removed");
    }
}
