//! pgoutput, PostgreSQL's own logical replication output plugin: every message of protocol
//! versions 1–4, decoded from one XLogData payload into typed values that slice the received
//! `Bytes` (column values and message contents are never copied).
//!
//! # Messages
//!
//! Layouts from "Logical Replication Message Formats" in the PostgreSQL docs and
//! `src/backend/replication/logical/proto.c`; all integers big-endian, strings NUL-terminated.
//! `[xid]` is present only inside a stream block (see below).
//!
//! ```text
//! B Begin              final_lsn:i64 commit_time:i64 xid:i32
//! C Commit             flags:i8=0 commit_lsn:i64 end_lsn:i64 commit_time:i64
//! O Origin             commit_lsn:i64 name:str
//! R Relation           [xid] oid:i32 namespace:str name:str replident:i8 natts:i16
//!                        natts × (flags:i8 name:str type_oid:i32 typmod:i32)
//! Y Type               [xid] oid:i32 namespace:str name:str
//! I Insert             [xid] oid:i32 'N' tuple
//! U Update             [xid] oid:i32 ['K' tuple | 'O' tuple] 'N' tuple
//! D Delete             [xid] oid:i32 ('K' | 'O') tuple
//! T Truncate           [xid] nrels:i32 options:i8 nrels × oid:i32
//! M Message            [xid] flags:i8 lsn:i64 prefix:str len:i32 content:len bytes
//! S Stream Start       xid:i32 first_segment:i8                              (protocol 2+)
//! E Stream Stop        —                                                      (protocol 2+)
//! c Stream Commit      xid:i32 flags:i8=0 commit_lsn:i64 end_lsn:i64 commit_time:i64
//! A Stream Abort       xid:i32 subxid:i32 [abort_lsn:i64 abort_time:i64]     (protocol 4,
//!                                                                  streaming=parallel only)
//! b Begin Prepare      prepare_lsn:i64 end_lsn:i64 prepare_time:i64 xid:i32 gid:str (3+)
//! P Prepare            flags:i8=0 prepare_lsn end_lsn prepare_time xid gid          (3+)
//! K Commit Prepared    flags:i8=0 commit_lsn end_lsn commit_time xid gid            (3+)
//! r Rollback Prepared  flags:i8=0 prepare_end_lsn rollback_end_lsn prepare_time
//!                        rollback_time xid gid                                      (3+)
//! p Stream Prepare     flags:i8=0 prepare_lsn end_lsn prepare_time xid gid          (3+)
//!
//! tuple: natts:i16, then per column 'n' (NULL) | 'u' (unchanged TOASTed value, not sent)
//!        | 't' len:i32 text | 'b' len:i32 binary (binary = true)
//! ```
//!
//! # What PostgreSQL 15 sends
//!
//! PostgreSQL 15 speaks protocols 1 to 3 (it refuses `proto_version '4'`): Begin, Commit,
//! Origin, Relation, Type, Insert, Update, Delete, Truncate, Message (with `messages 'true'`),
//! the stream messages (protocol 2+, `streaming 'on'`) and the two-phase ones (protocol 3,
//! `two_phase 'on'` on a slot created with two-phase enabled). Every one of them is in the
//! fixtures under `tests/fixtures/pgoutput/`, captured from PostgreSQL 15 by
//! `tests/capture_fixtures.rs`. PostgreSQL 16 adds protocol 4 with `streaming 'parallel'`, whose
//! only change to the messages is the abort LSN and time at the end of Stream Abort; those are
//! decoded from hand-built bytes here (no PostgreSQL 16 to capture from). Facts worth knowing:
//!
//! - Type is sent before a Relation whose columns use a non-built-in type (an enum, a domain);
//!   Relation precedes the first change of a relation in a transaction or stream, again after
//!   a schema change. Both (and sometimes a delayed Begin) arrive in XLogData frames whose
//!   `wal_start` is `0/0`, so `wal_start` is only context for errors, never a position to use.
//! - PostgreSQL 15 skips empty transactions: Begin is sent lazily with the first change.
//! - Origin follows Begin (or Stream Start) as a frame of its own when the transaction was
//!   replayed from elsewhere (`pg_replication_origin_session_setup`).
//! - A streamed transaction arrives as blocks `S … E` (the first with `first_segment`), each
//!   holding data messages that carry their (sub)transaction's xid; Stream Abort with
//!   `subxid != xid` drops a subtransaction already streamed, with `subxid == xid` the whole
//!   transaction; Stream Commit (or, with two-phase, Stream Prepare then Commit Prepared) ends
//!   it. Without streaming, a large transaction is sent whole at commit.
//! - Commit's `end_lsn` (and Stream Commit's, Commit Prepared's) is the position to confirm
//!   once the transaction is applied; it is also the Commit frame's `wal_start`.
//!
//! # Stream blocks
//!
//! Inside `S … E` the data messages (Relation, Type, Insert, Update, Delete, Truncate, Message)
//! carry an extra xid after the tag, and nothing in the bytes says so: [`PgOutputDecoder`]
//! remembers whether it is inside a stream block. It also checks the protocol version allows a
//! message (stream messages from 2, two-phase ones from 3) and that stream blocks nest
//! properly; a violation is an error rather than a misreading.
//!
//! # Use
//!
//! ```
//! use bytes::Bytes;
//! use pgferry::decode::pgoutput::{PgOutputDecoder, PgOutputMessage, ProtocolVersion};
//! use pgferry::pg::Lsn;
//!
//! // START_REPLICATION … (proto_version '2', publication_names 'pub', streaming 'on')
//! let mut decoder = PgOutputDecoder::new(ProtocolVersion::V2);
//! // For each XLogData of the replication stream: decoder.decode(&xlog.data, xlog.wal_start)
//! let begin = Bytes::from_static(b"B\0\0\0\0\x01\x93\x40\xc8\0\x03\x04\x2c\xe3\x95\xb1\xea\0\0\x02\xd6");
//! match decoder.decode(&begin, Lsn::from_u64(0x1933E98))? {
//!     PgOutputMessage::Begin(begin) => assert_eq!(begin.xid, 726),
//!     other => unreachable!("{other:?}"),
//! }
//! # Ok::<(), pgferry::decode::pgoutput::PgOutputError>(())
//! ```
//!
//! The consumer keeps a relation cache (id → Relation) to name the columns of Insert, Update and
//! Delete, fills `'u'` columns from the old tuple or its own state, and for streamed
//! transactions buffers changes per xid until Stream Commit (dropping them on Stream Abort).
//! Times are [`PgTimestamp`]s (microseconds since 2000-01-01 UTC), with
//! [`PgTimestamp::to_system_time`] for wall-clock use.

use bytes::Bytes;

use crate::decode::replication::PgTimestamp;
use crate::pg::Lsn;

/// A PostgreSQL object id (relation, type).
pub type Oid = u32;
/// A PostgreSQL transaction id.
pub type Xid = u32;

/// Tag of Begin.
pub const BEGIN_TAG: u8 = b'B';
/// Tag of Commit.
pub const COMMIT_TAG: u8 = b'C';
/// Tag of Origin.
pub const ORIGIN_TAG: u8 = b'O';
/// Tag of Relation.
pub const RELATION_TAG: u8 = b'R';
/// Tag of Type.
pub const TYPE_TAG: u8 = b'Y';
/// Tag of Insert.
pub const INSERT_TAG: u8 = b'I';
/// Tag of Update.
pub const UPDATE_TAG: u8 = b'U';
/// Tag of Delete.
pub const DELETE_TAG: u8 = b'D';
/// Tag of Truncate.
pub const TRUNCATE_TAG: u8 = b'T';
/// Tag of Message (`pg_logical_emit_message`).
pub const MESSAGE_TAG: u8 = b'M';
/// Tag of Stream Start.
pub const STREAM_START_TAG: u8 = b'S';
/// Tag of Stream Stop.
pub const STREAM_STOP_TAG: u8 = b'E';
/// Tag of Stream Commit.
pub const STREAM_COMMIT_TAG: u8 = b'c';
/// Tag of Stream Abort.
pub const STREAM_ABORT_TAG: u8 = b'A';
/// Tag of Begin Prepare.
pub const BEGIN_PREPARE_TAG: u8 = b'b';
/// Tag of Prepare.
pub const PREPARE_TAG: u8 = b'P';
/// Tag of Commit Prepared.
pub const COMMIT_PREPARED_TAG: u8 = b'K';
/// Tag of Rollback Prepared.
pub const ROLLBACK_PREPARED_TAG: u8 = b'r';
/// Tag of Stream Prepare.
pub const STREAM_PREPARE_TAG: u8 = b'p';

/// Why a pgoutput message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pgoutput message at {lsn} is invalid: {detail}")]
pub struct PgOutputError {
    /// The XLogData `wal_start` of the message (`0/0` for Relation and Type messages).
    pub lsn: Lsn,
    /// What was wrong, naming the message and the byte offset.
    pub detail: String,
}

/// The `proto_version` given to `START_REPLICATION`; it decides which messages may arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// PostgreSQL 10+: transactions, relations, row changes (and truncate, messages).
    V1 = 1,
    /// PostgreSQL 14+: streaming of in-progress transactions.
    V2 = 2,
    /// PostgreSQL 15+: two-phase commit.
    V3 = 3,
    /// PostgreSQL 16+: parallel apply of streamed transactions (Stream Abort grows).
    V4 = 4,
}

impl ProtocolVersion {
    /// The version for a `proto_version` number, `None` outside 1–4.
    pub fn from_number(number: u32) -> Option<ProtocolVersion> {
        match number {
            1 => Some(ProtocolVersion::V1),
            2 => Some(ProtocolVersion::V2),
            3 => Some(ProtocolVersion::V3),
            4 => Some(ProtocolVersion::V4),
            _ => None,
        }
    }

    /// The number to send as `proto_version`.
    pub fn number(self) -> u32 {
        self as u32
    }
}

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutputMessage {
    /// A transaction begins.
    Begin(Begin),
    /// A transaction commits.
    Commit(Commit),
    /// The current transaction was replayed from another node.
    Origin(Origin),
    /// Describes a relation before changes to it.
    Relation(Relation),
    /// Names a non-built-in type used by a following Relation.
    Type(Type),
    /// A row was inserted.
    Insert(Insert),
    /// A row was updated.
    Update(Update),
    /// A row was deleted.
    Delete(Delete),
    /// Relations were truncated.
    Truncate(Truncate),
    /// A `pg_logical_emit_message` message.
    Message(LogicalMessage),
    /// A block of a streamed, in-progress transaction begins (protocol 2+).
    StreamStart(StreamStart),
    /// The current stream block ends (protocol 2+).
    StreamStop,
    /// A streamed transaction commits (protocol 2+).
    StreamCommit(StreamCommit),
    /// A streamed (sub)transaction aborts (protocol 2+).
    StreamAbort(StreamAbort),
    /// A transaction to be prepared begins (protocol 3+).
    BeginPrepare(PreparedTransaction),
    /// The transaction begun by Begin Prepare was prepared (protocol 3+).
    Prepare(PreparedTransaction),
    /// A prepared transaction commits (protocol 3+).
    CommitPrepared(CommitPrepared),
    /// A prepared transaction rolls back (protocol 3+).
    RollbackPrepared(RollbackPrepared),
    /// A streamed transaction was prepared (protocol 3+).
    StreamPrepare(PreparedTransaction),
}

/// Begin: the transaction's commit record position, time and xid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// Where the commit record is in the WAL.
    pub final_lsn: Lsn,
    /// When it committed.
    pub commit_time: PgTimestamp,
    /// Its transaction id.
    pub xid: Xid,
}

/// Commit: where the transaction ended; `end_lsn` is what to confirm once it is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// The commit record's position (Begin's `final_lsn`).
    pub commit_lsn: Lsn,
    /// The position after the commit record.
    pub end_lsn: Lsn,
    /// When it committed.
    pub commit_time: PgTimestamp,
}

/// Origin: the node a transaction was replayed from, for loop prevention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The commit position on the origin node.
    pub commit_lsn: Lsn,
    /// The replication origin's name.
    pub name: String,
}

/// Which old row image a relation's updates and deletes carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `d`: the primary key.
    Default,
    /// `n`: nothing.
    Nothing,
    /// `f`: the whole row.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

/// One column of a Relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Whether the column is part of the replica identity (the key).
    pub is_key: bool,
    /// Column name.
    pub name: String,
    /// Type oid.
    pub type_oid: Oid,
    /// Type modifier (`atttypmod`), -1 when none.
    pub type_modifier: i32,
}

/// Relation: what the relation id in later changes means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The (sub)transaction, inside a stream block.
    pub xid: Option<Xid>,
    /// The relation's oid, used by Insert, Update, Delete and Truncate.
    pub id: Oid,
    /// Schema (empty for `pg_catalog`).
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Which old image updates and deletes carry.
    pub replica_identity: ReplicaIdentity,
    /// Every column sent, in tuple order (dropped and generated columns are not sent).
    pub columns: Vec<RelationColumn>,
}

impl Relation {
    /// The relation's schema: PostgreSQL sends an empty namespace for `pg_catalog`.
    pub fn schema(&self) -> &str {
        if self.namespace.is_empty() {
            "pg_catalog"
        } else {
            &self.namespace
        }
    }
}

/// Type: the name of a non-built-in type a following Relation uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Type {
    /// The (sub)transaction, inside a stream block.
    pub xid: Option<Xid>,
    /// Type oid.
    pub id: Oid,
    /// Schema (empty for `pg_catalog`).
    pub namespace: String,
    /// Type name.
    pub name: String,
}

/// One column of a row image; values are slices of the received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleColumn {
    /// SQL NULL.
    Null,
    /// A TOASTed value that did not change; not sent (take it from the old row or keep it).
    UnchangedToast,
    /// The value in PostgreSQL's text output form.
    Text(Bytes),
    /// The value in the type's binary send form (`binary 'true'`).
    Binary(Bytes),
}

/// A row image: one entry per column of the Relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TupleData {
    /// The columns, in the Relation's order.
    pub columns: Vec<TupleColumn>,
}

/// Which old row image an Update or Delete carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: the replica identity columns (the others are Null).
    Key(TupleData),
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full(TupleData),
}

impl OldTuple {
    /// The row image, whichever kind it is.
    pub fn tuple(&self) -> &TupleData {
        match self {
            OldTuple::Key(tuple) | OldTuple::Full(tuple) => tuple,
        }
    }
}

/// Insert: the new row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// The (sub)transaction, inside a stream block.
    pub xid: Option<Xid>,
    /// The relation (see Relation).
    pub relation_id: Oid,
    /// The new row.
    pub new: TupleData,
}

/// Update: the new row, and the old key or row when the key changed or identity is FULL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The (sub)transaction, inside a stream block.
    pub xid: Option<Xid>,
    /// The relation (see Relation).
    pub relation_id: Oid,
    /// The old key (`K`) or row (`O`), when sent.
    pub old: Option<OldTuple>,
    /// The new row; unchanged TOASTed columns are `UnchangedToast`.
    pub new: TupleData,
}

/// Delete: the old key or row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// The (sub)transaction, inside a stream block.
    pub xid: Option<Xid>,
    /// The relation (see Relation).
    pub relation_id: Oid,
    /// The old key (`K`) or row (`O`).
    pub old: OldTuple,
}

/// Truncate: the relations truncated together, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// The (sub)transaction, inside a stream block.
    pub xid: Option<Xid>,
    /// `TRUNCATE … CASCADE`.
    pub cascade: bool,
    /// `TRUNCATE … RESTART IDENTITY`.
    pub restart_identity: bool,
    /// The relations (see Relation).
    pub relation_ids: Vec<Oid>,
}

/// Message: what `pg_logical_emit_message` wrote; `content` is a slice of the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// The (sub)transaction, inside a stream block.
    pub xid: Option<Xid>,
    /// Whether it belongs to the surrounding transaction (else it was sent at once).
    pub transactional: bool,
    /// The message's WAL position.
    pub lsn: Lsn,
    /// The prefix given to `pg_logical_emit_message`.
    pub prefix: String,
    /// The content, as bytes.
    pub content: Bytes,
}

/// Stream Start: a block of transaction `xid` follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStart {
    /// The streamed top-level transaction.
    pub xid: Xid,
    /// Whether this is its first block.
    pub first_segment: bool,
}

/// Stream Commit: a streamed transaction committed; `end_lsn` is what to confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCommit {
    /// The streamed top-level transaction.
    pub xid: Xid,
    /// The commit record's position.
    pub commit_lsn: Lsn,
    /// The position after the commit record.
    pub end_lsn: Lsn,
    /// When it committed.
    pub commit_time: PgTimestamp,
}

/// Stream Abort: drop what was streamed for `subxid` (the whole transaction when it is `xid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamAbort {
    /// The streamed top-level transaction.
    pub xid: Xid,
    /// The aborted subtransaction, or `xid` itself.
    pub subxid: Xid,
    /// The abort record's position (protocol 4 with `streaming 'parallel'` only).
    pub abort_lsn: Option<Lsn>,
    /// When it aborted (protocol 4 with `streaming 'parallel'` only).
    pub abort_time: Option<PgTimestamp>,
}

/// Begin Prepare, Prepare and Stream Prepare: a two-phase transaction and its GID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedTransaction {
    /// The PREPARE record's position.
    pub prepare_lsn: Lsn,
    /// The position after it.
    pub end_lsn: Lsn,
    /// When it was prepared.
    pub prepare_time: PgTimestamp,
    /// Its transaction id.
    pub xid: Xid,
    /// The global transaction identifier given to `PREPARE TRANSACTION`.
    pub gid: String,
}

/// Commit Prepared: a prepared transaction committed; `end_lsn` is what to confirm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPrepared {
    /// The COMMIT PREPARED record's position.
    pub commit_lsn: Lsn,
    /// The position after it.
    pub end_lsn: Lsn,
    /// When it committed.
    pub commit_time: PgTimestamp,
    /// Its transaction id.
    pub xid: Xid,
    /// The global transaction identifier.
    pub gid: String,
}

/// Rollback Prepared: a prepared transaction rolled back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackPrepared {
    /// The end of the PREPARE record.
    pub prepare_end_lsn: Lsn,
    /// The end of the ROLLBACK PREPARED record.
    pub rollback_end_lsn: Lsn,
    /// When it was prepared.
    pub prepare_time: PgTimestamp,
    /// When it rolled back.
    pub rollback_time: PgTimestamp,
    /// Its transaction id.
    pub xid: Xid,
    /// The global transaction identifier.
    pub gid: String,
}

/// Reads one message, checking every length against the bytes left before using it.
struct Reader<'b> {
    data: &'b Bytes,
    pos: usize,
    at: Lsn,
    message: &'static str,
}

impl<'b> Reader<'b> {
    fn error(&self, detail: impl std::fmt::Display) -> PgOutputError {
        PgOutputError {
            lsn: self.at,
            detail: format!("{} message: {detail} (at byte {})", self.message, self.pos),
        }
    }

    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take(&mut self, len: usize, what: &str) -> Result<&'b [u8], PgOutputError> {
        if len > self.remaining() {
            return Err(self.error(format_args!(
                "truncated: {what} needs {len} bytes, {} left",
                self.remaining()
            )));
        }
        let data: &'b Bytes = self.data;
        let bytes = &data[self.pos..self.pos + len];
        self.pos += len;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], PgOutputError> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.take(N, what)?);
        Ok(array)
    }

    fn u8(&mut self, what: &str) -> Result<u8, PgOutputError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn i16(&mut self, what: &str) -> Result<i16, PgOutputError> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: &str) -> Result<i32, PgOutputError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32, PgOutputError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn lsn(&mut self, what: &str) -> Result<Lsn, PgOutputError> {
        Ok(Lsn::from_u64(u64::from_be_bytes(self.array(what)?)))
    }

    fn timestamp(&mut self, what: &str) -> Result<PgTimestamp, PgOutputError> {
        Ok(PgTimestamp(i64::from_be_bytes(self.array(what)?)))
    }

    /// A length field: non-negative and no longer than what is left.
    fn length(&mut self, what: &str, unit: usize) -> Result<usize, PgOutputError> {
        let raw = self.i32(what)?;
        let len = usize::try_from(raw)
            .map_err(|_| self.error(format_args!("{what} is negative ({raw})")))?;
        if len.saturating_mul(unit) > self.remaining() {
            return Err(self.error(format_args!(
                "truncated: {what} is {len} but only {} bytes are left",
                self.remaining()
            )));
        }
        Ok(len)
    }

    /// `len` bytes as a slice of the frame.
    fn slice(&mut self, len: usize, what: &str) -> Result<Bytes, PgOutputError> {
        let start = self.pos;
        self.take(len, what)?;
        Ok(self.data.slice(start..start + len))
    }

    /// A NUL-terminated string, as UTF-8 (the replication connection's client_encoding).
    fn string(&mut self, what: &str) -> Result<String, PgOutputError> {
        let rest = &self.data[self.pos..];
        let len = rest
            .iter()
            .position(|&byte| byte == 0)
            .ok_or_else(|| self.error(format_args!("truncated: {what} has no terminating NUL")))?;
        let text = std::str::from_utf8(&rest[..len])
            .map_err(|_| self.error(format_args!("{what} is not UTF-8")))?
            .to_owned();
        self.pos += len + 1;
        Ok(text)
    }

    /// The flags byte PostgreSQL sends as 0 and its own reader rejects otherwise.
    fn zero_flags(&mut self) -> Result<(), PgOutputError> {
        match self.u8("flags")? {
            0 => Ok(()),
            flags => Err(self.error(format_args!("unknown flags {flags:#04x}"))),
        }
    }

    fn finish<T>(self, value: T) -> Result<T, PgOutputError> {
        if self.remaining() != 0 {
            return Err(self.error(format_args!(
                "{} unexpected bytes after the message",
                self.remaining()
            )));
        }
        Ok(value)
    }

    fn tuple(&mut self) -> Result<TupleData, PgOutputError> {
        let count = self.i16("column count")?;
        let count = usize::try_from(count)
            .map_err(|_| self.error(format_args!("column count is negative ({count})")))?;
        // Every column takes at least its kind byte: a count beyond the bytes left is
        // malformed, and checking first keeps the allocation bounded by the frame.
        if count > self.remaining() {
            return Err(self.error(format_args!(
                "truncated: {count} columns but only {} bytes are left",
                self.remaining()
            )));
        }
        let mut columns = Vec::with_capacity(count);
        for _ in 0..count {
            let column = match self.u8("column kind")? {
                b'n' => TupleColumn::Null,
                b'u' => TupleColumn::UnchangedToast,
                b't' => {
                    let len = self.length("text value length", 1)?;
                    TupleColumn::Text(self.slice(len, "text value")?)
                }
                b'b' => {
                    let len = self.length("binary value length", 1)?;
                    TupleColumn::Binary(self.slice(len, "binary value")?)
                }
                kind => {
                    return Err(self.error(format_args!(
                        "unknown column kind {:?} (expected n, u, t or b)",
                        char::from(kind)
                    )))
                }
            };
            columns.push(column);
        }
        Ok(TupleData { columns })
    }

    fn old_tuple(&mut self, marker: u8) -> Result<OldTuple, PgOutputError> {
        match marker {
            b'K' => Ok(OldTuple::Key(self.tuple()?)),
            b'O' => Ok(OldTuple::Full(self.tuple()?)),
            other => Err(self.error(format_args!(
                "expected 'K' or 'O' before the old row, got {:?}",
                char::from(other)
            ))),
        }
    }
}

/// Incremental pgoutput decoder: one XLogData payload in, one typed message out. It remembers
/// whether it is inside a stream block, because data messages there carry an extra xid.
#[derive(Debug, Clone)]
pub struct PgOutputDecoder {
    version: ProtocolVersion,
    parallel_streaming: bool,
    stream: Option<Xid>,
}

impl PgOutputDecoder {
    /// A decoder for a stream started with this `proto_version`, outside any stream block.
    pub fn new(version: ProtocolVersion) -> PgOutputDecoder {
        PgOutputDecoder {
            version,
            parallel_streaming: false,
            stream: None,
        }
    }

    /// Whether the stream was started with `streaming 'parallel'` (protocol 4): then Stream
    /// Abort carries the abort LSN and time.
    pub fn with_parallel_streaming(mut self, parallel: bool) -> PgOutputDecoder {
        self.parallel_streaming = parallel;
        self
    }

    /// The protocol version this decoder expects.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// The transaction whose stream block is open, if any.
    pub fn in_stream(&self) -> Option<Xid> {
        self.stream
    }

    /// Forgets an open stream block, e.g. after reconnecting.
    pub fn reset(&mut self) {
        self.stream = None;
    }

    /// Decodes one XLogData payload that started at `wal_start` (used only in errors).
    ///
    /// Column values and message contents are slices of `data`; names are copied (short, and
    /// sent once per relation). On error the decoder's state is unchanged.
    pub fn decode(
        &mut self,
        data: &Bytes,
        wal_start: Lsn,
    ) -> Result<PgOutputMessage, PgOutputError> {
        let Some(&tag) = data.first() else {
            return Err(PgOutputError {
                lsn: wal_start,
                detail: "empty message".into(),
            });
        };
        let message = message_name(tag).ok_or_else(|| PgOutputError {
            lsn: wal_start,
            detail: format!("unknown message tag {:?} ({tag:#04x})", char::from(tag)),
        })?;
        let mut reader = Reader {
            data,
            pos: 1,
            at: wal_start,
            message,
        };
        let needed = minimum_version(tag);
        if self.version < needed {
            return Err(reader.error(format_args!(
                "needs protocol version {} but the stream uses {}",
                needed.number(),
                self.version.number()
            )));
        }
        let in_stream = self.stream.is_some();
        let carries_xid = matches!(
            tag,
            RELATION_TAG
                | TYPE_TAG
                | INSERT_TAG
                | UPDATE_TAG
                | DELETE_TAG
                | TRUNCATE_TAG
                | MESSAGE_TAG
        );
        let allowed_in_stream = carries_xid || matches!(tag, ORIGIN_TAG | STREAM_STOP_TAG);
        if in_stream && !allowed_in_stream {
            return Err(reader.error("not allowed inside a stream block (missing Stream Stop?)"));
        }
        if !in_stream && tag == STREAM_STOP_TAG {
            return Err(reader.error("Stream Stop outside a stream block"));
        }
        let xid = if in_stream && carries_xid {
            Some(reader.u32("xid")?)
        } else {
            None
        };
        let decoded = self.decode_body(tag, xid, &mut reader)?;
        let decoded = reader.finish(decoded)?;
        match &decoded {
            PgOutputMessage::StreamStart(start) => self.stream = Some(start.xid),
            PgOutputMessage::StreamStop => self.stream = None,
            _ => {}
        }
        Ok(decoded)
    }

    fn decode_body(
        &self,
        tag: u8,
        xid: Option<Xid>,
        r: &mut Reader<'_>,
    ) -> Result<PgOutputMessage, PgOutputError> {
        Ok(match tag {
            BEGIN_TAG => PgOutputMessage::Begin(Begin {
                final_lsn: r.lsn("final LSN")?,
                commit_time: r.timestamp("commit time")?,
                xid: r.u32("xid")?,
            }),
            COMMIT_TAG => {
                r.zero_flags()?;
                PgOutputMessage::Commit(Commit {
                    commit_lsn: r.lsn("commit LSN")?,
                    end_lsn: r.lsn("end LSN")?,
                    commit_time: r.timestamp("commit time")?,
                })
            }
            ORIGIN_TAG => PgOutputMessage::Origin(Origin {
                commit_lsn: r.lsn("origin commit LSN")?,
                name: r.string("origin name")?,
            }),
            RELATION_TAG => {
                let id = r.u32("relation id")?;
                let namespace = r.string("namespace")?;
                let name = r.string("relation name")?;
                let replica_identity = match r.u8("replica identity")? {
                    b'd' => ReplicaIdentity::Default,
                    b'n' => ReplicaIdentity::Nothing,
                    b'f' => ReplicaIdentity::Full,
                    b'i' => ReplicaIdentity::Index,
                    other => {
                        return Err(r.error(format_args!(
                            "unknown replica identity {:?}",
                            char::from(other)
                        )))
                    }
                };
                let count = r.i16("column count")?;
                let count = usize::try_from(count)
                    .map_err(|_| r.error(format_args!("column count is negative ({count})")))?;
                // A column takes at least 10 bytes (flags, NUL, type oid, typmod).
                if count.saturating_mul(10) > r.remaining() {
                    return Err(r.error(format_args!(
                        "truncated: {count} columns but only {} bytes are left",
                        r.remaining()
                    )));
                }
                let mut columns = Vec::with_capacity(count);
                for _ in 0..count {
                    columns.push(RelationColumn {
                        is_key: r.u8("column flags")? & 1 != 0,
                        name: r.string("column name")?,
                        type_oid: r.u32("column type")?,
                        type_modifier: r.i32("column type modifier")?,
                    });
                }
                PgOutputMessage::Relation(Relation {
                    xid,
                    id,
                    namespace,
                    name,
                    replica_identity,
                    columns,
                })
            }
            TYPE_TAG => PgOutputMessage::Type(Type {
                xid,
                id: r.u32("type id")?,
                namespace: r.string("namespace")?,
                name: r.string("type name")?,
            }),
            INSERT_TAG => {
                let relation_id = r.u32("relation id")?;
                match r.u8("tuple marker")? {
                    b'N' => {}
                    other => {
                        return Err(r.error(format_args!(
                            "expected 'N' before the new row, got {:?}",
                            char::from(other)
                        )))
                    }
                }
                PgOutputMessage::Insert(Insert {
                    xid,
                    relation_id,
                    new: r.tuple()?,
                })
            }
            UPDATE_TAG => {
                let relation_id = r.u32("relation id")?;
                let mut marker = r.u8("tuple marker")?;
                let old = if marker == b'N' {
                    None
                } else {
                    let old = r.old_tuple(marker)?;
                    marker = r.u8("tuple marker")?;
                    Some(old)
                };
                if marker != b'N' {
                    return Err(r.error(format_args!(
                        "expected 'N' before the new row, got {:?}",
                        char::from(marker)
                    )));
                }
                PgOutputMessage::Update(Update {
                    xid,
                    relation_id,
                    old,
                    new: r.tuple()?,
                })
            }
            DELETE_TAG => {
                let relation_id = r.u32("relation id")?;
                let marker = r.u8("tuple marker")?;
                PgOutputMessage::Delete(Delete {
                    xid,
                    relation_id,
                    old: r.old_tuple(marker)?,
                })
            }
            TRUNCATE_TAG => {
                let count = r.length("relation count", 4)?;
                let options = r.u8("options")?;
                // Re-check now that the options byte is read: every id takes 4 bytes.
                if count.saturating_mul(4) > r.remaining() {
                    return Err(r.error(format_args!(
                        "truncated: {count} relation ids but only {} bytes are left",
                        r.remaining()
                    )));
                }
                let mut relation_ids = Vec::with_capacity(count);
                for _ in 0..count {
                    relation_ids.push(r.u32("relation id")?);
                }
                PgOutputMessage::Truncate(Truncate {
                    xid,
                    cascade: options & 1 != 0,
                    restart_identity: options & 2 != 0,
                    relation_ids,
                })
            }
            MESSAGE_TAG => {
                let flags = r.u8("flags")?;
                let lsn = r.lsn("message LSN")?;
                let prefix = r.string("prefix")?;
                let len = r.length("content length", 1)?;
                PgOutputMessage::Message(LogicalMessage {
                    xid,
                    transactional: flags & 1 != 0,
                    lsn,
                    prefix,
                    content: r.slice(len, "content")?,
                })
            }
            STREAM_START_TAG => PgOutputMessage::StreamStart(StreamStart {
                xid: r.u32("xid")?,
                first_segment: match r.u8("first segment flag")? {
                    0 => false,
                    1 => true,
                    other => {
                        return Err(
                            r.error(format_args!("first segment flag is {other}, not 0 or 1"))
                        )
                    }
                },
            }),
            STREAM_STOP_TAG => PgOutputMessage::StreamStop,
            STREAM_COMMIT_TAG => {
                let xid = r.u32("xid")?;
                r.zero_flags()?;
                PgOutputMessage::StreamCommit(StreamCommit {
                    xid,
                    commit_lsn: r.lsn("commit LSN")?,
                    end_lsn: r.lsn("end LSN")?,
                    commit_time: r.timestamp("commit time")?,
                })
            }
            STREAM_ABORT_TAG => {
                let xid = r.u32("xid")?;
                let subxid = r.u32("subtransaction xid")?;
                let (abort_lsn, abort_time) =
                    if self.parallel_streaming && self.version >= ProtocolVersion::V4 {
                        (Some(r.lsn("abort LSN")?), Some(r.timestamp("abort time")?))
                    } else {
                        (None, None)
                    };
                PgOutputMessage::StreamAbort(StreamAbort {
                    xid,
                    subxid,
                    abort_lsn,
                    abort_time,
                })
            }
            BEGIN_PREPARE_TAG => PgOutputMessage::BeginPrepare(prepared(r)?),
            PREPARE_TAG => {
                r.zero_flags()?;
                PgOutputMessage::Prepare(prepared(r)?)
            }
            STREAM_PREPARE_TAG => {
                r.zero_flags()?;
                PgOutputMessage::StreamPrepare(prepared(r)?)
            }
            COMMIT_PREPARED_TAG => {
                r.zero_flags()?;
                PgOutputMessage::CommitPrepared(CommitPrepared {
                    commit_lsn: r.lsn("commit LSN")?,
                    end_lsn: r.lsn("end LSN")?,
                    commit_time: r.timestamp("commit time")?,
                    xid: r.u32("xid")?,
                    gid: r.string("gid")?,
                })
            }
            ROLLBACK_PREPARED_TAG => {
                r.zero_flags()?;
                PgOutputMessage::RollbackPrepared(RollbackPrepared {
                    prepare_end_lsn: r.lsn("prepare end LSN")?,
                    rollback_end_lsn: r.lsn("rollback end LSN")?,
                    prepare_time: r.timestamp("prepare time")?,
                    rollback_time: r.timestamp("rollback time")?,
                    xid: r.u32("xid")?,
                    gid: r.string("gid")?,
                })
            }
            other => return Err(r.error(format_args!("unknown message tag {other:#04x}"))),
        })
    }
}

/// The fields Begin Prepare, Prepare and Stream Prepare share (after any flags).
fn prepared(r: &mut Reader<'_>) -> Result<PreparedTransaction, PgOutputError> {
    Ok(PreparedTransaction {
        prepare_lsn: r.lsn("prepare LSN")?,
        end_lsn: r.lsn("end LSN")?,
        prepare_time: r.timestamp("prepare time")?,
        xid: r.u32("xid")?,
        gid: r.string("gid")?,
    })
}

/// The message's name for errors, `None` for an unknown tag.
fn message_name(tag: u8) -> Option<&'static str> {
    Some(match tag {
        BEGIN_TAG => "Begin",
        COMMIT_TAG => "Commit",
        ORIGIN_TAG => "Origin",
        RELATION_TAG => "Relation",
        TYPE_TAG => "Type",
        INSERT_TAG => "Insert",
        UPDATE_TAG => "Update",
        DELETE_TAG => "Delete",
        TRUNCATE_TAG => "Truncate",
        MESSAGE_TAG => "Message",
        STREAM_START_TAG => "Stream Start",
        STREAM_STOP_TAG => "Stream Stop",
        STREAM_COMMIT_TAG => "Stream Commit",
        STREAM_ABORT_TAG => "Stream Abort",
        BEGIN_PREPARE_TAG => "Begin Prepare",
        PREPARE_TAG => "Prepare",
        COMMIT_PREPARED_TAG => "Commit Prepared",
        ROLLBACK_PREPARED_TAG => "Rollback Prepared",
        STREAM_PREPARE_TAG => "Stream Prepare",
        _ => return None,
    })
}

/// The first protocol version that has the message.
fn minimum_version(tag: u8) -> ProtocolVersion {
    match tag {
        STREAM_START_TAG | STREAM_STOP_TAG | STREAM_COMMIT_TAG | STREAM_ABORT_TAG => {
            ProtocolVersion::V2
        }
        BEGIN_PREPARE_TAG
        | PREPARE_TAG
        | COMMIT_PREPARED_TAG
        | ROLLBACK_PREPARED_TAG
        | STREAM_PREPARE_TAG => ProtocolVersion::V3,
        _ => ProtocolVersion::V1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_TEXT: &str = include_str!("../../tests/fixtures/pgoutput/v1_text.hex");
    const V1_BINARY: &str = include_str!("../../tests/fixtures/pgoutput/v1_binary.hex");
    const V2_STREAMING: &str = include_str!("../../tests/fixtures/pgoutput/v2_streaming.hex");
    const V3_TWO_PHASE: &str =
        include_str!("../../tests/fixtures/pgoutput/v3_two_phase_streaming.hex");

    /// Frames of a fixture written by `tests/capture_fixtures.rs`: `(wal_start, payload)`.
    fn frames(fixture: &str) -> Vec<(Lsn, Bytes)> {
        fixture
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (lsn, hex) = line.split_once('\t').expect("wal_start<TAB>hex");
                let bytes: Vec<u8> = (0..hex.len())
                    .step_by(2)
                    .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).expect("hex"))
                    .collect();
                (lsn.parse().expect("wal_start"), Bytes::from(bytes))
            })
            .collect()
    }

    fn decode_all(fixture: &str, mut decoder: PgOutputDecoder) -> Vec<(Lsn, PgOutputMessage)> {
        let decoded = frames(fixture)
            .into_iter()
            .map(|(at, data)| {
                let message = decoder
                    .decode(&data, at)
                    .unwrap_or_else(|error| panic!("{error}"));
                (at, message)
            })
            .collect();
        assert_eq!(decoder.in_stream(), None, "every stream block closed");
        decoded
    }

    fn tags(messages: &[(Lsn, PgOutputMessage)]) -> String {
        let mut out = String::new();
        let mut inserts = 0;
        for (_, message) in messages {
            if let PgOutputMessage::Insert(_) = message {
                inserts += 1;
                continue;
            }
            if inserts > 0 {
                out.push_str(&format!("I{inserts} "));
                inserts = 0;
            }
            out.push_str(match message {
                PgOutputMessage::Begin(_) => "B ",
                PgOutputMessage::Commit(_) => "C ",
                PgOutputMessage::Origin(_) => "O ",
                PgOutputMessage::Relation(_) => "R ",
                PgOutputMessage::Type(_) => "Y ",
                PgOutputMessage::Insert(_) => "I ",
                PgOutputMessage::Update(_) => "U ",
                PgOutputMessage::Delete(_) => "D ",
                PgOutputMessage::Truncate(_) => "T ",
                PgOutputMessage::Message(_) => "M ",
                PgOutputMessage::StreamStart(_) => "S ",
                PgOutputMessage::StreamStop => "E ",
                PgOutputMessage::StreamCommit(_) => "c ",
                PgOutputMessage::StreamAbort(_) => "A ",
                PgOutputMessage::BeginPrepare(_) => "b ",
                PgOutputMessage::Prepare(_) => "P ",
                PgOutputMessage::CommitPrepared(_) => "K ",
                PgOutputMessage::RollbackPrepared(_) => "r ",
                PgOutputMessage::StreamPrepare(_) => "p ",
            });
        }
        if inserts > 0 {
            out.push_str(&format!("I{inserts} "));
        }
        out.trim_end().to_owned()
    }

    fn lsn(text: &str) -> Lsn {
        text.parse().expect("LSN")
    }

    fn text(value: &str) -> TupleColumn {
        TupleColumn::Text(Bytes::copy_from_slice(value.as_bytes()))
    }

    fn binary(value: &[u8]) -> TupleColumn {
        TupleColumn::Binary(Bytes::copy_from_slice(value))
    }

    fn nulls(count: usize) -> Vec<TupleColumn> {
        vec![TupleColumn::Null; count]
    }

    /// The commit time of the first captured transaction.
    const FIRST_COMMIT_TIME: PgTimestamp = PgTimestamp(0x0003_042c_e395_b1ea);

    #[test]
    fn protocol_1_text_decodes_every_message_postgres_15_sent() {
        let messages = decode_all(V1_TEXT, PgOutputDecoder::new(ProtocolVersion::V1));
        assert_eq!(
            tags(&messages),
            "B Y R I2 C B U C B U C B R I1 C B U C B D C B D C B R I1 R I1 C B R R T C \
             B M R I1 C M B O I1 C B I1400 C B I1 C B I700 C"
        );
        let message = |index: usize| &messages[index].1;

        assert_eq!(
            message(0),
            &PgOutputMessage::Begin(Begin {
                final_lsn: lsn("0/19340C8"),
                commit_time: FIRST_COMMIT_TIME,
                xid: 726,
            })
        );
        assert_eq!(
            message(1),
            &PgOutputMessage::Type(Type {
                xid: None,
                id: 16386,
                namespace: "public".into(),
                name: "mood".into(),
            })
        );
        assert_eq!(messages[1].0, Lsn::ZERO, "Type frames start at 0/0");
        let PgOutputMessage::Relation(items) = message(2) else {
            panic!("Relation expected, got {:?}", message(2));
        };
        assert_eq!((items.xid, items.id), (None, 16391));
        assert_eq!((&*items.namespace, &*items.name), ("public", "items"));
        assert_eq!(items.replica_identity, ReplicaIdentity::Default);
        let columns: Vec<(&str, bool, Oid, i32)> = items
            .columns
            .iter()
            .map(|c| (&*c.name, c.is_key, c.type_oid, c.type_modifier))
            .collect();
        assert_eq!(
            columns,
            [
                ("id", true, 23, -1),
                ("n", false, 1700, (30 << 16 | 10) + 4),
                ("t", false, 25, -1),
                ("arr", false, 1007, -1),
                ("j", false, 3802, -1),
                ("big", false, 25, -1),
                ("m", false, 16386, -1),
                ("b", false, 16, -1),
                ("f", false, 701, -1),
                ("ts", false, 1184, -1),
                ("bin", false, 17, -1),
            ]
        );
        assert_eq!(
            message(3),
            &PgOutputMessage::Insert(Insert {
                xid: None,
                relation_id: 16391,
                new: TupleData {
                    columns: vec![
                        text("1"),
                        text("12345678901234567890.0123456789"),
                        text("say \"hi\" \u{e9}"),
                        text("{1,2,NULL}"),
                        text(r#"{"a": [1, 2.50]}"#),
                        text(&"x".repeat(5000)),
                        text("happy"),
                        text("t"),
                        text("1.5"),
                        text("2026-11-26 12:00:00.123456+00"),
                        text("\\xdeadbeef"),
                    ]
                },
            })
        );
        let PgOutputMessage::Insert(second) = message(4) else {
            panic!("Insert expected");
        };
        let mut expected = nulls(11);
        expected[0] = text("2");
        expected[8] = text("NaN");
        assert_eq!(second.new.columns, expected, "NULLs, and NaN kept as text");
        assert_eq!(
            message(5),
            &PgOutputMessage::Commit(Commit {
                commit_lsn: lsn("0/19340C8"),
                end_lsn: lsn("0/19340F8"),
                commit_time: FIRST_COMMIT_TIME,
            })
        );
        assert_eq!(messages[5].0, lsn("0/19340F8"), "Commit frame at end_lsn");

        let PgOutputMessage::Update(toast) = message(7) else {
            panic!("Update expected");
        };
        assert_eq!(toast.old, None, "no old row when the key is unchanged");
        assert_eq!(toast.new.columns[2], text("changed"));
        assert_eq!(toast.new.columns[5], TupleColumn::UnchangedToast);

        let PgOutputMessage::Update(key_change) = message(10) else {
            panic!("Update expected");
        };
        let mut old_key = nulls(11);
        old_key[0] = text("2");
        assert_eq!(
            key_change.old,
            Some(OldTuple::Key(TupleData { columns: old_key }))
        );
        assert_eq!(key_change.new.columns[0], text("3"));

        let PgOutputMessage::Relation(full) = message(13) else {
            panic!("Relation expected");
        };
        assert_eq!(full.replica_identity, ReplicaIdentity::Full);
        assert!(full.columns.iter().all(|column| column.is_key));
        assert_eq!(
            message(17),
            &PgOutputMessage::Update(Update {
                xid: None,
                relation_id: 16398,
                old: Some(OldTuple::Full(TupleData {
                    columns: vec![text("1"), text("a")]
                })),
                new: TupleData {
                    columns: vec![text("1"), text("b")]
                },
            })
        );
        assert_eq!(
            message(20),
            &PgOutputMessage::Delete(Delete {
                xid: None,
                relation_id: 16398,
                old: OldTuple::Full(TupleData {
                    columns: vec![text("1"), text("b")]
                }),
            })
        );
        let PgOutputMessage::Delete(by_key) = message(23) else {
            panic!("Delete expected");
        };
        let mut old_key = nulls(11);
        old_key[0] = text("3");
        assert_eq!(by_key.old, OldTuple::Key(TupleData { columns: old_key }));

        assert_eq!(
            message(34),
            &PgOutputMessage::Truncate(Truncate {
                xid: None,
                cascade: true,
                restart_identity: true,
                relation_ids: vec![16403, 16409],
            })
        );
        assert_eq!(
            message(37),
            &PgOutputMessage::Message(LogicalMessage {
                xid: None,
                transactional: true,
                lsn: lsn("0/19357B0"),
                prefix: "pgferry".into(),
                content: Bytes::from_static(b"in tx"),
            })
        );
        assert_eq!(
            message(41),
            &PgOutputMessage::Message(LogicalMessage {
                xid: None,
                transactional: false,
                lsn: lsn("0/1935900"),
                prefix: "pgferry".into(),
                content: Bytes::from_static(b"\x00\xff"),
            })
        );
        assert_eq!(
            message(43),
            &PgOutputMessage::Origin(Origin {
                commit_lsn: lsn("0/ABCDEF"),
                name: "upstream".into(),
            })
        );
        let PgOutputMessage::Begin(replayed) = message(42) else {
            panic!("Begin expected");
        };
        let origin_time = replayed.commit_time.to_system_time().expect("time");
        assert_eq!(
            origin_time
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_secs(),
            1_795_694_400,
            "the origin's commit time, 2026-11-26 12:00:00 UTC"
        );
    }

    #[test]
    fn protocol_1_binary_sends_values_in_their_send_form() {
        let messages = decode_all(V1_BINARY, PgOutputDecoder::new(ProtocolVersion::V1));
        let text_messages = decode_all(V1_TEXT, PgOutputDecoder::new(ProtocolVersion::V1));
        assert_eq!(tags(&messages), tags(&text_messages));
        let PgOutputMessage::Insert(insert) = &messages[3].1 else {
            panic!("Insert expected");
        };
        let columns = &insert.new.columns;
        assert_eq!(columns[0], binary(&1i32.to_be_bytes()));
        assert_eq!(columns[2], binary("say \"hi\" \u{e9}".as_bytes()));
        assert_eq!(columns[5], binary("x".repeat(5000).as_bytes()));
        assert_eq!(columns[7], binary(&[1]));
        assert_eq!(columns[8], binary(&1.5f64.to_be_bytes()));
        assert_eq!(columns[10], binary(&[0xde, 0xad, 0xbe, 0xef]));
        let PgOutputMessage::Update(update) = &messages[7].1 else {
            panic!("Update expected");
        };
        assert_eq!(update.new.columns[5], TupleColumn::UnchangedToast);
    }

    #[test]
    fn protocol_2_streams_large_transactions_in_blocks_with_xids() {
        let messages = decode_all(V2_STREAMING, PgOutputDecoder::new(ProtocolVersion::V2));
        let summary = tags(&messages);
        assert!(
            summary.ends_with(
                "B O I1 C S Y R I469 E S I469 E A S Y R I469 E S I231 E c \
                 S Y R I469 E A B I1 C S Y R I469 E S I231 E c"
            ),
            "{summary}"
        );
        let mut stream = None;
        let mut xids_in_stream = std::collections::BTreeMap::<Xid, usize>::new();
        let mut ends = Vec::new();
        for (at, message) in &messages {
            match message {
                PgOutputMessage::StreamStart(start) => stream = Some(*start),
                PgOutputMessage::StreamStop => stream = None,
                PgOutputMessage::Insert(insert) => {
                    assert_eq!(insert.xid.is_some(), stream.is_some());
                    if let Some(xid) = insert.xid {
                        *xids_in_stream.entry(xid).or_default() += 1;
                    }
                }
                // The (sub)transaction whose change needed them, not always the stream's xid.
                PgOutputMessage::Relation(relation) => {
                    assert_eq!(relation.xid.is_some(), stream.is_some());
                }
                PgOutputMessage::Type(ty) => assert_eq!(ty.xid.is_some(), stream.is_some()),
                PgOutputMessage::StreamAbort(abort) => {
                    assert_eq!((abort.abort_lsn, abort.abort_time), (None, None));
                    ends.push(format!("abort {} {}", abort.xid, abort.subxid));
                }
                PgOutputMessage::StreamCommit(commit) => {
                    assert_eq!(commit.end_lsn, *at, "Stream Commit frame at end_lsn");
                    assert!(commit.commit_lsn < commit.end_lsn);
                    ends.push(format!("commit {}", commit.xid));
                }
                _ => {}
            }
        }
        assert_eq!(
            ends,
            ["abort 737 738", "commit 737", "abort 740 740", "commit 743"],
            "a subtransaction rolled back, a whole transaction rolled back"
        );
        let starts: Vec<StreamStart> = messages
            .iter()
            .filter_map(|(_, message)| match message {
                PgOutputMessage::StreamStart(start) => Some(*start),
                _ => None,
            })
            .collect();
        assert_eq!(starts.len(), 7);
        assert_eq!(
            starts.iter().filter(|start| start.first_segment).count(),
            3,
            "one first segment per streamed transaction"
        );
        assert_eq!(
            xids_in_stream.into_iter().collect::<Vec<_>>(),
            [(737, 700), (738, 238), (739, 700), (740, 469), (743, 700)],
            "rows streamed per (sub)transaction: 738 is the rolled-back savepoint, 739 the \
             savepoint re-established after it, 740 the aborted transaction"
        );
    }

    #[test]
    fn protocol_3_decodes_two_phase_transactions() {
        let messages = decode_all(V3_TWO_PHASE, PgOutputDecoder::new(ProtocolVersion::V3));
        let summary = tags(&messages);
        assert!(
            summary.ends_with("A b I1 P K b I1 P r S Y R I469 E S I231 E p K"),
            "{summary}"
        );
        let two_phase: Vec<(Lsn, &PgOutputMessage)> = messages
            .iter()
            .filter(|(_, message)| {
                matches!(
                    message,
                    PgOutputMessage::BeginPrepare(_)
                        | PgOutputMessage::Prepare(_)
                        | PgOutputMessage::CommitPrepared(_)
                        | PgOutputMessage::RollbackPrepared(_)
                        | PgOutputMessage::StreamPrepare(_)
                )
            })
            .map(|(at, message)| (*at, message))
            .collect();
        let prepared = |prepare_lsn, end_lsn, time, xid, gid: &str| PreparedTransaction {
            prepare_lsn: lsn(prepare_lsn),
            end_lsn: lsn(end_lsn),
            prepare_time: PgTimestamp(time),
            xid,
            gid: gid.into(),
        };
        let commit_prepared = prepared(
            "0/19943D0",
            "0/19944D0",
            0x0003_042c_e39c_d8e0,
            741,
            "gid-commit",
        );
        assert_eq!(
            two_phase[0].1,
            &PgOutputMessage::BeginPrepare(commit_prepared.clone())
        );
        assert_eq!(two_phase[1].1, &PgOutputMessage::Prepare(commit_prepared));
        assert_eq!(two_phase[1].0, lsn("0/19944D0"), "Prepare frame at end_lsn");
        assert_eq!(
            two_phase[2].1,
            &PgOutputMessage::CommitPrepared(CommitPrepared {
                commit_lsn: lsn("0/19944D0"),
                end_lsn: lsn("0/1994510"),
                commit_time: PgTimestamp(0x0003_042c_e39d_55f7),
                xid: 741,
                gid: "gid-commit".into(),
            })
        );
        let PgOutputMessage::Prepare(rolled_back) = two_phase[4].1 else {
            panic!("Prepare expected");
        };
        assert_eq!(
            two_phase[5].1,
            &PgOutputMessage::RollbackPrepared(RollbackPrepared {
                prepare_end_lsn: rolled_back.end_lsn,
                rollback_end_lsn: lsn("0/19946D0"),
                prepare_time: rolled_back.prepare_time,
                rollback_time: PgTimestamp(0x0003_042c_e39e_8016),
                xid: 742,
                gid: "gid-rollback".into(),
            })
        );
        let PgOutputMessage::StreamPrepare(streamed) = two_phase[6].1 else {
            panic!("Stream Prepare expected");
        };
        assert_eq!((streamed.xid, &*streamed.gid), (743, "gid-streamed"));
        assert_eq!(two_phase[6].0, streamed.end_lsn);
        let PgOutputMessage::CommitPrepared(committed) = two_phase[7].1 else {
            panic!("Commit Prepared expected");
        };
        assert_eq!(committed.commit_lsn, streamed.end_lsn);
    }

    #[test]
    fn every_truncation_and_extension_of_a_captured_message_is_an_error() {
        for (fixture, version) in [
            (V1_TEXT, ProtocolVersion::V1),
            (V1_BINARY, ProtocolVersion::V1),
            (V3_TWO_PHASE, ProtocolVersion::V3),
        ] {
            let mut decoder = PgOutputDecoder::new(version);
            let mut inserts = 0;
            for (at, data) in frames(fixture) {
                let is_insert = data[0] == INSERT_TAG;
                inserts += usize::from(is_insert);
                if !is_insert || inserts < 10 {
                    for len in 0..data.len() {
                        let mut probe = decoder.clone();
                        let error = probe
                            .decode(&data.slice(..len), at)
                            .expect_err("a truncated message");
                        assert_eq!(error.lsn, at);
                        assert_eq!(probe.in_stream(), decoder.in_stream(), "state unchanged");
                    }
                    let mut longer = data.to_vec();
                    longer.push(0);
                    let error = decoder
                        .clone()
                        .decode(&Bytes::from(longer), at)
                        .unwrap_err();
                    assert!(error.detail.contains("unexpected bytes"), "{error}");
                }
                decoder.decode(&data, at).expect("the whole message");
            }
        }
    }

    #[test]
    fn values_are_slices_of_the_received_frame() {
        let (at, data) = frames(V1_TEXT).swap_remove(3);
        let Ok(PgOutputMessage::Insert(insert)) =
            PgOutputDecoder::new(ProtocolVersion::V1).decode(&data, at)
        else {
            panic!("Insert expected");
        };
        let range = data.as_ptr() as usize..data.as_ptr() as usize + data.len();
        for column in &insert.new.columns {
            if let TupleColumn::Text(value) = column {
                assert!(range.contains(&(value.as_ptr() as usize)), "borrowed");
            }
        }
    }

    fn message(bytes: &[u8]) -> Bytes {
        Bytes::copy_from_slice(bytes)
    }

    #[test]
    fn protocol_4_parallel_streaming_adds_the_abort_lsn_and_time() {
        // Hand-built (PostgreSQL 15 cannot send protocol 4), from PostgreSQL 16's proto.c.
        let mut abort = vec![STREAM_ABORT_TAG];
        abort.extend_from_slice(&737u32.to_be_bytes());
        abort.extend_from_slice(&738u32.to_be_bytes());
        let short = message(&abort);
        abort.extend_from_slice(&0x1964D10u64.to_be_bytes());
        abort.extend_from_slice(&820_000_000_000_000i64.to_be_bytes());
        let long = message(&abort);
        let parallel = || PgOutputDecoder::new(ProtocolVersion::V4).with_parallel_streaming(true);
        assert_eq!(
            parallel().decode(&long, Lsn::ZERO),
            Ok(PgOutputMessage::StreamAbort(StreamAbort {
                xid: 737,
                subxid: 738,
                abort_lsn: Some(lsn("0/1964D10")),
                abort_time: Some(PgTimestamp(820_000_000_000_000)),
            }))
        );
        assert!(
            parallel().decode(&short, Lsn::ZERO).is_err(),
            "fields missing"
        );
        let on = PgOutputDecoder::new(ProtocolVersion::V4).decode(&short, Lsn::ZERO);
        assert!(
            matches!(
                on,
                Ok(PgOutputMessage::StreamAbort(StreamAbort {
                    abort_lsn: None,
                    ..
                }))
            ),
            "streaming 'on' keeps the protocol 2 layout: {on:?}"
        );
        let v3 = PgOutputDecoder::new(ProtocolVersion::V3).with_parallel_streaming(true);
        assert!(
            v3.clone().decode(&short, Lsn::ZERO).is_ok(),
            "parallel needs 4"
        );
        assert_eq!(ProtocolVersion::from_number(4), Some(ProtocolVersion::V4));
        assert_eq!(ProtocolVersion::from_number(5), None);
        assert_eq!(ProtocolVersion::V3.number(), 3);
    }

    const AT: Lsn = Lsn::from_u64(0x16_B374_D848);

    fn decode_error(decoder: &mut PgOutputDecoder, bytes: &[u8]) -> String {
        let error = decoder.decode(&message(bytes), AT).expect_err("malformed");
        assert_eq!(error.lsn, AT);
        let text = error.to_string();
        assert!(text.contains("16/B374D848"), "{text}");
        text
    }

    #[test]
    fn malformed_messages_are_typed_errors_with_the_lsn() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty message"),
            (b"Z", "unknown message tag"),
            (b"C\x01", "unknown flags"),
            (b"I\0\0\0\x01X\0\0", "expected 'N'"),
            (b"I\0\0\0\x01N\0\x01x", "unknown column kind"),
            (b"I\0\0\0\x01N\xff\xff", "column count is negative"),
            (
                b"I\0\0\0\x01N\0\x01t\xff\xff\xff\xff",
                "text value length is negative",
            ),
            (
                b"I\0\0\0\x01N\0\x01b\0\0\0\x05abc",
                "binary value length is 5",
            ),
            (b"U\0\0\0\x01K\0\0X\0\0", "expected 'N'"),
            (b"U\0\0\0\x01Q\0\0", "expected 'K' or 'O'"),
            (b"D\0\0\0\x01N\0\0", "expected 'K' or 'O'"),
            (b"R\0\0\0\x01public\0t\0x\0\0", "unknown replica identity"),
            (b"R\0\0\0\x01public\0t", "no terminating NUL"),
            (b"R\0\0\0\x01\xff\0t\0d\0\0", "namespace is not UTF-8"),
            (
                b"R\0\0\0\x01public\0t\0d\xff\xff",
                "column count is negative",
            ),
            (b"T\xff\xff\xff\xff\0", "relation count is negative"),
            (
                b"M\x01\0\0\0\0\0\0\0\x01p\0\xff\xff\xff\xff",
                "content length is negative",
            ),
            (b"B\0\0\0\0\0\0\x01", "final LSN needs 8 bytes, 7 left"),
            (b"E", "Stream Stop outside a stream block"),
        ];
        for (bytes, expected) in cases {
            let mut decoder = PgOutputDecoder::new(ProtocolVersion::V3);
            let text = decode_error(&mut decoder, bytes);
            assert!(text.contains(expected), "{bytes:?}: {text}");
        }
    }

    #[test]
    fn length_fields_are_checked_before_allocating() {
        let mut decoder = PgOutputDecoder::new(ProtocolVersion::V1);
        for (bytes, expected) in [
            (
                &b"I\0\0\0\x01N\x7f\xff"[..],
                "32767 columns but only 0 bytes",
            ),
            (
                b"I\0\0\0\x01N\0\x01t\x7f\xff\xff\xff",
                "text value length is 2147483647",
            ),
            (b"T\x7f\xff\xff\xff\0", "relation count is 2147483647"),
            (
                b"T\0\0\0\x02\0\0\0\0\x01\0\0\0",
                "2 relation ids but only 7 bytes",
            ),
            (
                b"R\0\0\0\x01p\0t\0d\x7f\xff",
                "32767 columns but only 0 bytes",
            ),
            (
                b"M\0\0\0\0\0\0\0\0\x01p\0\x7f\xff\xff\xff",
                "content length is 2147483647",
            ),
        ] {
            let text = decode_error(&mut decoder, bytes);
            assert!(text.contains(expected), "{bytes:?}: {text}");
        }
    }

    #[test]
    fn stream_blocks_nest_and_messages_need_their_protocol_version() {
        let start = b"S\0\0\x02\xe1\x01";
        let insert_in_stream = b"I\0\0\x02\xe2\0\0\x40\x07N\0\x01n";
        let mut decoder = PgOutputDecoder::new(ProtocolVersion::V2);
        assert!(decoder.decode(&message(start), AT).is_ok());
        assert_eq!(decoder.in_stream(), Some(737));
        assert!(decode_error(&mut decoder, start).contains("inside a stream block"));
        let begin = b"B\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\x02\0\0\0\x03";
        assert!(decode_error(&mut decoder, begin).contains("inside a stream block"));
        assert_eq!(
            decoder.in_stream(),
            Some(737),
            "errors leave the state alone"
        );
        assert_eq!(
            decoder.decode(&message(insert_in_stream), AT),
            Ok(PgOutputMessage::Insert(Insert {
                xid: Some(738),
                relation_id: 16391,
                new: TupleData {
                    columns: vec![TupleColumn::Null]
                },
            }))
        );
        assert_eq!(
            decoder.decode(&message(b"E"), AT),
            Ok(PgOutputMessage::StreamStop)
        );
        assert_eq!(decoder.in_stream(), None);
        assert!(
            decoder.decode(&message(insert_in_stream), AT).is_err(),
            "outside the block the xid would be read as the relation id"
        );
        assert!(decoder.decode(&message(start), AT).is_ok());
        decoder.reset();
        assert_eq!(decoder.in_stream(), None);
        assert!(decode_error(&mut decoder, b"S\0\0\0\x01\x02").contains("first segment flag"));

        let mut v1 = PgOutputDecoder::new(ProtocolVersion::V1);
        assert!(decode_error(&mut v1, start).contains("needs protocol version 2"));
        let mut v2 = PgOutputDecoder::new(ProtocolVersion::V2);
        let prepare = b"b\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\x02\0\0\0\0\0\0\0\x03\0\0\0\x04g\0";
        assert!(decode_error(&mut v2, prepare).contains("needs protocol version 3"));
        assert_eq!(v2.version(), ProtocolVersion::V2);
        let mut v3 = PgOutputDecoder::new(ProtocolVersion::V3);
        assert!(matches!(
            v3.decode(&message(prepare), AT),
            Ok(PgOutputMessage::BeginPrepare(PreparedTransaction {
                xid: 4,
                ..
            }))
        ));
    }
}
