//! GDN documents into a PostgreSQL table: one row per `_key`, columns inferred from the
//! documents (`infer.rs`) and widened as new shapes arrive, one transaction per batch.
//!
//! A batch holds each key once (the last change wins: a document replaces the row, a delete
//! removes it). Applying it is one transaction:
//!
//! ```text
//! BEGIN
//!   ALTER TABLE … ADD COLUMN / ALTER COLUMN … TYPE …   (new attributes, disagreeing values)
//!   COPY staging FROM STDIN (binary where every column has an exact binary form, else text)
//!   INSERT INTO t SELECT … FROM staging ON CONFLICT ("_key") DO UPDATE SET every column
//!   DELETE FROM t USING deletes (hard_delete)  |  UPDATE t SET "_sdc_deleted_at" = now() …
//! COMMIT
//! ```
//!
//! so a batch, its schema changes included, is applied completely or not at all. Replaying a
//! batch (after a crash between COMMIT and the acknowledgement) gives the same rows: every
//! statement is an idempotent upsert or delete by key.
//!
//! A table pgferry creates starts without its primary key and is marked as loading (a table
//! comment): the initial scan is copied straight in, and the key is built once at its end
//! ([`DocumentTable::finish_load`]), which costs PostgreSQL far less than a B-tree insert per
//! row. A run that finds its own table still marked (an earlier scan was interrupted) empties
//! it and scans again; a key the scan read twice is kept once when the key is built.

use std::borrow::Cow;

use foldhash::{HashMap, HashSet};
use serde_json::value::RawValue;

use crate::destination::postgres::infer::{
    column_candidates, encode_field, encode_field_binary, raw_kind, ColumnType, ValueError,
    ValueKind, ATTRIBUTE_COMMENT, DELETED_AT_COLUMN, KEY_COLUMN, OVERFLOW_COLUMN,
};
use crate::pg::query::{quote_identifier, quote_literal};
use crate::pg::{Connection, PgError};
use crate::singer::target_postgres::copy_binary::{binary_type, text_to_binary_into};
use crate::singer::target_postgres::copy_encode::{json_kind, string_contents, JsonKind};
use crate::singer::target_postgres::naming::TableName;

/// COPY data is sent in messages of about this size.
const COPY_CHUNK_BYTES: usize = 256 * 1024;
/// The session's staging table of upserts.
const STAGING: &str = "pgferry_doc_stage";
/// The session's staging table of deleted keys.
const STAGING_DELETES: &str = "pgferry_doc_deletes";
/// Binary COPY's header and trailer.
const BINARY_HEADER: &[u8] = crate::singer::target_postgres::copy_binary::HEADER;
const BINARY_TRAILER: &[u8] = &(-1i16).to_be_bytes();
/// The comment on a table pgferry created whose initial load has not finished (it has no
/// primary key yet): how a later run tells its own half-loaded table from a user's table.
pub const LOADING_COMMENT: &str =
    "pgferry: initial load in progress; the primary key on \"_key\" is added when it completes";

/// Why a batch of documents could not be applied (it was rolled back).
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// A document that cannot be loaded.
    #[error("a document of {table} {reason}: {snippet}\n(nothing of this batch was applied and its messages were not acknowledged; fix or remove the document in GDN, or leave the collection out)")]
    Bad {
        /// The table.
        table: TableName,
        /// Why.
        reason: Box<BadDocument>,
        /// The start of the document.
        snippet: String,
    },
    /// A value that cannot be stored.
    #[error("document {key:?}, attribute {attribute:?} → {table}: {source}\n(nothing of this batch was applied and its messages were not acknowledged; a retry fails the same way)")]
    Value {
        /// The table.
        table: TableName,
        /// The document's `_key`.
        key: String,
        /// The attribute.
        attribute: String,
        /// Why.
        source: ValueError,
    },
    /// The table exists but cannot take documents.
    #[error("table {table} exists but {detail}\nHINT: drop or rename it so pgferry creates it, or point \"table_name\" / \"target_schema\" elsewhere")]
    Unusable {
        /// The table.
        table: TableName,
        /// What is missing.
        detail: String,
    },
    /// PostgreSQL refused a statement.
    #[error("{during} {table} failed: {source}\n(the batch was rolled back and its messages were not acknowledged; {})", if source.is_transient() { "a retry may succeed" } else { "fix the table or the privileges first" })]
    Postgres {
        /// What was being done.
        during: &'static str,
        /// The table.
        table: TableName,
        /// The server's error.
        source: PgError,
    },
}

/// One attribute of a document: the batch's name for it, what its value asks of a column,
/// and where the value's JSON text lies in the document (so it is read once and copied once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    /// Position in [`Attributes::names`].
    attribute: u32,
    kind: ValueKind,
    start: u32,
    end: u32,
}

/// A document kept as GDN sent it, with where each of its attributes (without `_key`, `_id`
/// and `_rev`) lies in it: no map or value tree is built per document.
#[derive(Debug)]
struct Document {
    raw: Box<RawValue>,
    fields: Vec<Field>,
}

impl Document {
    /// The JSON text of one of this document's fields.
    fn value(&self, field: &Field) -> &str {
        &self.raw.get()[field.start as usize..field.end as usize]
    }
}

/// What a batch does to one key.
#[derive(Debug)]
enum Change {
    /// Insert or replace the row with the document's attributes; each goes to its column
    /// ([`column_candidates`]) or the overflow column.
    Upsert(Document),
    /// Delete the row.
    Delete,
}

/// The attribute names of a batch, each once, in the order they were first seen (the order
/// new columns are added in).
#[derive(Debug, Default)]
struct Attributes {
    names: Vec<Box<str>>,
    ids: HashMap<Box<str>, u32>,
    /// The previous document's attributes by position: documents of a collection mostly
    /// share one shape, and comparing a name is cheaper than hashing it.
    last: Vec<u32>,
}

impl Attributes {
    /// The id of `name`, the `position`-th attribute of the document being read.
    fn id(&mut self, position: usize, name: &str) -> Result<u32, BadDocument> {
        if let Some(&id) = self.last.get(position) {
            if *self.names[id as usize] == *name {
                return Ok(id);
            }
        }
        let id = match self.ids.get(name) {
            Some(&id) => id,
            None => {
                let id = u32::try_from(self.names.len()).map_err(|_| BadDocument::TooLarge)?;
                self.names.push(name.into());
                self.ids.insert(name.into(), id);
                id
            }
        };
        match self.last.get_mut(position) {
            Some(slot) => *slot = id,
            None => self.last.push(id),
        }
        Ok(id)
    }

    fn clear(&mut self) {
        self.names.clear();
        self.ids.clear();
        self.last.clear();
    }
}

/// Why a GDN document cannot be loaded (the batch it came in is not applied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadDocument {
    /// Not a JSON object.
    #[error("is not a JSON object ({0})")]
    NotAnObject(String),
    /// No `_key`, or not a string.
    #[error("has no string \"_key\"")]
    NoKey,
    /// Beyond what a batch can address (4 GiB, or 4 billion attribute names).
    #[error("is larger than pgferry can hold in a batch (4 GiB)")]
    TooLarge,
    /// A value no column can hold.
    #[error("attribute {attribute:?} {source}")]
    Value {
        /// The attribute.
        attribute: String,
        /// Why.
        source: ValueError,
    },
}

/// A document [`DocumentBatch::upsert`] refused, and why.
#[derive(Debug)]
pub struct Rejected {
    /// Why.
    pub reason: BadDocument,
    /// The document.
    pub document: Box<RawValue>,
}

impl Rejected {
    /// The start of the document, for an error message.
    pub fn snippet(&self) -> String {
        self.document.get().chars().take(120).collect()
    }
}

/// Changes to apply in one transaction, each key once.
#[derive(Debug, Default)]
pub struct DocumentBatch {
    changes: HashMap<String, Change>,
    received: usize,
    attributes: Attributes,
}

/// The `_key` of a document (the payload of a stream message).
pub fn document_key(raw: &RawValue) -> Result<String, BadDocument> {
    #[derive(serde::Deserialize)]
    struct KeyOf<'a> {
        #[serde(rename = "_key", borrow)]
        key: Option<&'a RawValue>,
    }
    let KeyOf { key } = serde_json::from_str(raw.get())
        .map_err(|error| BadDocument::NotAnObject(error.to_string()))?;
    key.and_then(string_key).ok_or(BadDocument::NoKey)
}

/// The contents of a `_key` value, when it is a string.
fn string_key(raw: &RawValue) -> Option<String> {
    if json_kind(raw.get()) != JsonKind::String {
        return None;
    }
    string_contents(raw.get()).ok().map(Cow::into_owned)
}

/// Reads one document's attributes into the batch's names and its own fields.
struct Reader<'b> {
    attributes: &'b mut Attributes,
    /// Where the document's text starts (field offsets are relative to it).
    base: usize,
    /// What went wrong, when the visitor stopped with an error.
    problem: Option<BadDocument>,
}

/// The document's `_key` and fields.
type Read = (Option<String>, Vec<Field>);

impl<'de> serde::de::Visitor<'de> for &mut Reader<'_> {
    type Value = Read;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Read, M::Error> {
        let mut key = None;
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(Name(name)) = map.next_key::<Name<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            match name.as_ref() {
                KEY_COLUMN => key = string_key(value),
                "_id" | "_rev" => {}
                name => {
                    let text = value.get();
                    let kind = raw_kind(text).map_err(|source| {
                        self.stop(BadDocument::Value {
                            attribute: name.to_owned(),
                            source,
                        })
                    })?;
                    let start = (text.as_ptr() as usize).saturating_sub(self.base);
                    let mut offset = |at: usize| {
                        u32::try_from(at).map_err(|_| self.stop::<M::Error>(BadDocument::TooLarge))
                    };
                    let (start, end) = (offset(start)?, offset(start + text.len())?);
                    let attribute = self
                        .attributes
                        .id(fields.len(), name)
                        .map_err(|problem| self.stop(problem))?;
                    fields.push(Field {
                        attribute,
                        kind,
                        start,
                        end,
                    });
                }
            }
        }
        Ok((key, fields))
    }
}

impl Reader<'_> {
    /// Keeps `problem` and stops the visitor.
    fn stop<E: serde::de::Error>(&mut self, problem: BadDocument) -> E {
        let message = problem.to_string();
        self.problem = Some(problem);
        E::custom(message)
    }
}

/// An attribute name, borrowed from the document when it has no escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Name<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(transparent)]
        struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
        Borrowed::deserialize(deserializer).map(|Borrowed(name)| Name(name))
    }
}

impl DocumentBatch {
    /// Adds a document (it replaces any earlier change of its key in this batch). `_id` and
    /// `_rev` are dropped; `_key` becomes the key; every other attribute goes to its column.
    /// The document is kept as it is: only where each value lies and its kind are noted.
    pub fn upsert(&mut self, raw: Box<RawValue>) -> Result<(), Rejected> {
        match self.read(&raw) {
            Ok((key, fields)) => {
                self.received += 1;
                self.changes
                    .insert(key, Change::Upsert(Document { raw, fields }));
                Ok(())
            }
            Err(reason) => Err(Rejected {
                reason,
                document: raw,
            }),
        }
    }

    /// The `_key` and the fields of a document.
    fn read(&mut self, raw: &RawValue) -> Result<(String, Vec<Field>), BadDocument> {
        let text = raw.get();
        if u32::try_from(text.len()).is_err() {
            return Err(BadDocument::TooLarge);
        }
        let mut reader = Reader {
            attributes: &mut self.attributes,
            base: text.as_ptr() as usize,
            problem: None,
        };
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let read = serde::Deserializer::deserialize_map(&mut deserializer, &mut reader)
            .and_then(|read| deserializer.end().map(|()| read));
        let (key, fields) = match read {
            Ok(read) => read,
            Err(error) => {
                return Err(reader
                    .problem
                    .take()
                    .unwrap_or_else(|| BadDocument::NotAnObject(error.to_string())))
            }
        };
        Ok((key.ok_or(BadDocument::NoKey)?, fields))
    }

    /// Adds a delete of `key` (it replaces any earlier change of the key in this batch).
    pub fn delete(&mut self, key: String) {
        self.received += 1;
        self.changes.insert(key, Change::Delete);
    }

    /// Changes added (before coalescing by key).
    pub fn received(&self) -> usize {
        self.received
    }

    /// Distinct keys.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Forgets every change.
    pub fn clear(&mut self) {
        self.changes.clear();
        self.attributes.clear();
        self.received = 0;
    }
}

/// What applying a batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Rows inserted or replaced.
    pub upserts: u64,
    /// Keys deleted (or marked deleted).
    pub deletes: u64,
    /// Schema changes made (for the log).
    pub changes: Vec<String>,
    /// The rows went straight into the table (no key of the batch was there yet).
    pub direct: bool,
}

/// What a batch does to the table's columns.
struct Plan<'a> {
    /// Attribute columns in table order after the batch.
    columns: Vec<(String, ColumnType)>,
    /// The schema changes that get there.
    ddl: Vec<String>,
    /// The column position of each of the batch's attributes.
    column_of: Vec<Option<usize>>,
    /// Which attribute each column holds, after the batch (borrowed when the batch adds none).
    mapping: Cow<'a, Mapping>,
}

/// The columns a table has, or will have once the batches before are committed: what a batch
/// is planned and encoded against. Cheap to clone, so the encoding can run on its own thread,
/// a batch ahead of the commits.
#[derive(Debug, Clone)]
pub struct TableModel {
    name: TableName,
    /// Attribute columns in table order (without `_key` and `_sdc_deleted_at`; with the
    /// overflow column when there is one).
    columns: Vec<(String, ColumnType)>,
    /// Which attribute each column holds.
    mapping: Mapping,
}

/// Which column each attribute of a collection goes to: one column per attribute (never two
/// attributes in one), up to the column budget, then the overflow column. A column whose name
/// is not its attribute's own records the attribute in its comment ([`ATTRIBUTE_COMMENT`]),
/// so the next run maps it the same way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Mapping {
    /// Column position by attribute (attributes beyond the budget: the overflow column's).
    by_attribute: HashMap<Box<str>, usize>,
    /// The overflow column's position, once it exists.
    overflow: Option<usize>,
    /// Attribute columns a table may have before attributes go to the overflow column.
    max_columns: usize,
}

/// A batch planned and encoded for its table, ready for [`DocumentTable::commit`].
#[derive(Debug)]
pub struct Encoded {
    /// Attribute columns after the batch.
    columns: Vec<(String, ColumnType)>,
    /// Which attribute each holds.
    mapping: Mapping,
    /// The schema changes that get there.
    ddl: Vec<String>,
    /// The upserted rows as COPY data, binary when every column has an exact binary form.
    payload: Vec<u8>,
    binary: bool,
    /// A buffer for the next batch (the text rows when the payload is binary).
    spare: Vec<u8>,
    /// Deleted keys as COPY text.
    deletes: Vec<u8>,
    upserts: u64,
    removed: u64,
}

impl Encoded {
    /// Whether the batch adds or widens columns (it must commit after every batch before it
    /// and before any after it).
    pub fn changes_columns(&self) -> bool {
        !self.ddl.is_empty()
    }

    /// The buffers, for the next batch to reuse (their pages stay mapped).
    pub fn into_buffers(self) -> (Vec<u8>, Vec<u8>) {
        (self.payload, self.spare)
    }
}

/// A table loaded from documents, as pgferry knows it.
#[derive(Debug)]
pub struct DocumentTable {
    /// The columns as committed.
    model: TableModel,
    hard_delete: bool,
    /// The attribute columns (and types) the session's staging table was made for.
    staging: Option<Vec<(String, ColumnType)>>,
    /// COPY text and binary buffers, kept between batches.
    buffers: (Vec<u8>, Vec<u8>),
    /// The initial load is running: no primary key yet, batches are copied straight in.
    loading: bool,
}

fn pg<'a>(
    during: &'static str,
    table: &'a TableName,
) -> impl FnOnce(PgError) -> DocumentError + 'a {
    move |source| DocumentError::Postgres {
        during,
        table: table.clone(),
        source,
    }
}

impl DocumentTable {
    /// Opens `name`, creating the schema and the table (`"_key" text`, plus
    /// `"_sdc_deleted_at"` without `hard_delete`) when missing. A table created now, or one of
    /// pgferry's whose initial load was interrupted (emptied now), is [loading](Self::loading):
    /// it gets its primary key from [`DocumentTable::finish_load`].
    pub async fn open(
        connection: &mut Connection,
        name: &TableName,
        hard_delete: bool,
        max_columns: usize,
    ) -> Result<DocumentTable, DocumentError> {
        let deleted_at = if hard_delete {
            String::new()
        } else {
            format!(
                ", {} timestamp with time zone",
                quote_identifier(DELETED_AT_COLUMN)
            )
        };
        let rows = connection
            .query(&format!(
                "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), \
                 EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisunique \
                   AND i.indnatts = 1 AND i.indkey[0] = a.attnum AND i.indpred IS NULL), \
                 pg_catalog.obj_description(c.oid, 'pg_class'), \
                 pg_catalog.col_description(c.oid, a.attnum) \
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                 WHERE n.nspname = {} AND c.relname = {} AND c.relkind IN ('r', 'p') ORDER BY a.attnum",
                quote_literal(&name.schema),
                quote_literal(&name.table)
            ))
            .await
            .map_err(pg("reading the columns of", name))?;
        let mut table = DocumentTable {
            model: TableModel {
                name: name.clone(),
                columns: Vec::new(),
                mapping: Mapping {
                    max_columns,
                    ..Mapping::default()
                },
            },
            hard_delete,
            staging: None,
            buffers: Default::default(),
            loading: true,
        };
        if rows.is_empty() {
            crate::singer::target_postgres::ensure_schema(connection, &name.schema)
                .await
                .map_err(pg("creating the schema of", name))?;
            // One implicit transaction: the table never exists without its mark.
            connection
                .execute(&format!(
                    "CREATE TABLE {table} ({} text NOT NULL{deleted_at}); COMMENT ON TABLE {table} IS {}",
                    quote_identifier(KEY_COLUMN),
                    quote_literal(LOADING_COMMENT),
                    table = name.quoted(),
                ))
                .await
                .map_err(pg("creating", name))?;
            return Ok(table);
        }
        let mut key = None;
        let mut has_deleted_at = false;
        let marked = rows[0].get(3) == Some(LOADING_COMMENT);
        for row in &rows {
            let column = row.get(0).unwrap_or_default();
            let sql = row.get(1).unwrap_or_default();
            match column {
                KEY_COLUMN => key = Some(row.get(2) == Some("t")),
                DELETED_AT_COLUMN => has_deleted_at = true,
                _ => {
                    let position = table.model.columns.len();
                    table
                        .model
                        .columns
                        .push((column.to_owned(), ColumnType::from_sql(sql)));
                    let mapping = &mut table.model.mapping;
                    if column == OVERFLOW_COLUMN {
                        mapping.overflow = Some(position);
                        continue;
                    }
                    // A column named for another attribute says which in its comment.
                    let attribute = row
                        .get(4)
                        .and_then(|comment| comment.strip_prefix(ATTRIBUTE_COMMENT))
                        .and_then(|json| serde_json::from_str::<String>(json).ok())
                        .unwrap_or_else(|| column.to_owned());
                    mapping.by_attribute.insert(attribute.into(), position);
                }
            }
        }
        match key {
            Some(true) => table.loading = false,
            Some(false) if marked => {
                tracing::warn!(table = %name, "an earlier run's initial load of this table was interrupted: emptying it and loading it again");
                connection
                    .execute(&format!("TRUNCATE {}", name.quoted()))
                    .await
                    .map_err(pg("emptying the interrupted load of", name))?;
            }
            _ => {
                return Err(DocumentError::Unusable {
                    table: name.clone(),
                    detail: "has no \"_key\" column with a unique index of its own".into(),
                })
            }
        }
        if !hard_delete && !has_deleted_at {
            connection
                .execute(&format!(
                    "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {}",
                    name.quoted(),
                    deleted_at.trim_start_matches(", ")
                ))
                .await
                .map_err(pg("adding _sdc_deleted_at to", name))?;
        }
        Ok(table)
    }

    /// Whether the initial load is running (the table has no primary key yet): the scan must
    /// run whatever the state file says, and [`DocumentTable::finish_load`] must follow it.
    pub fn loading(&self) -> bool {
        self.loading
    }

    /// Ends the initial load: builds the primary key on `_key` (one sort instead of a B-tree
    /// insert per row) and clears the loading mark, in one transaction. Copies of a key the
    /// scan read twice (a scan started again after a failure) are removed first, keeping the
    /// one copied last; the stream replays every change made since the scan began, so any
    /// copy is a state the row passes through. Returns how many copies were removed.
    pub async fn finish_load(&mut self, connection: &mut Connection) -> Result<u64, DocumentError> {
        if !self.loading {
            return Ok(0);
        }
        let name = self.model.name.clone();
        let table = name.quoted();
        let key = quote_identifier(KEY_COLUMN);
        let add_key = format!(
            "ALTER TABLE {table} ADD PRIMARY KEY ({key}); COMMENT ON TABLE {table} IS NULL"
        );
        let removed = match connection.execute(&add_key).await {
            Ok(_) => 0,
            Err(error) if error.code() == Some("23505") => {
                tracing::warn!(table = %name, "the scan read some documents twice (it was started again): keeping one row per key");
                // One simple query: one implicit transaction, all of it or nothing.
                let results = connection
                    .simple_query_all(&format!(
                        "DELETE FROM {table} a USING {table} b WHERE a.{key} = b.{key} AND a.ctid < b.ctid; {add_key}"
                    ))
                    .await
                    .map_err(pg("removing the copies of keys read twice and adding the primary key to", &name))?;
                results.first().map_or(0, |deleted| deleted.row_count())
            }
            Err(source) => return Err(pg("adding the primary key to", &name)(source)),
        };
        self.loading = false;
        Ok(removed)
    }

    /// The table's name.
    pub fn name(&self) -> &TableName {
        &self.model.name
    }

    /// The committed columns, to encode batches against.
    pub fn model(&self) -> &TableModel {
        &self.model
    }

    /// The same table, for another session on the same database (which has no staging
    /// tables yet).
    pub fn for_another_session(&self) -> DocumentTable {
        DocumentTable {
            model: self.model.clone(),
            hard_delete: self.hard_delete,
            staging: None,
            buffers: Default::default(),
            loading: self.loading,
        }
    }

    /// Takes `model` as the committed columns, after batches were committed over other
    /// sessions.
    pub fn committed_elsewhere(&mut self, model: TableModel) {
        self.model = model;
    }

    /// Applies `batch` in one transaction (schema changes included); on success the table
    /// model follows, on failure nothing changed. See [`DocumentTable::commit`] for
    /// `try_direct`.
    pub async fn apply(
        &mut self,
        connection: &mut Connection,
        batch: &DocumentBatch,
        try_direct: bool,
    ) -> Result<Applied, DocumentError> {
        // Encode before touching the database: a bad value fails the batch up front.
        let encoded = self
            .model
            .encode(batch, std::mem::take(&mut self.buffers))
            .map_err(|error| *error)?;
        let applied = self.commit(connection, &encoded, try_direct).await;
        self.buffers = encoded.into_buffers();
        applied
    }

    /// Applies an encoded batch in one transaction (schema changes included); on success the
    /// table model follows, on failure nothing changed. With `try_direct` (an initial load) a
    /// batch without deletes is first copied straight into the table under a savepoint; a key
    /// that exists already rolls that back and the batch is merged through staging instead.
    pub async fn commit(
        &mut self,
        connection: &mut Connection,
        encoded: &Encoded,
        try_direct: bool,
    ) -> Result<Applied, DocumentError> {
        let Encoded {
            columns,
            mapping,
            ddl,
            upserts,
            removed,
            ..
        } = encoded;
        let mut script = ddl.clone();
        // The initial load copies straight into the table: no staging unless it deletes.
        let staged = !self.loading || !encoded.deletes.is_empty();
        if staged && self.staging.as_ref() != Some(columns) {
            let definitions: String = columns
                .iter()
                .map(|(name, sql_type)| format!(", {} {}", quote_identifier(name), sql_type.sql()))
                .collect();
            // The session's staging tables exist exactly when `staging` is set (a failed
            // transaction rolls their creation back along with the rest).
            if self.staging.is_some() {
                script.push(format!("DROP TABLE pg_temp.{STAGING}"));
            }
            script.push(format!(
                "CREATE TEMP TABLE {STAGING} ({} text{definitions}) ON COMMIT DELETE ROWS",
                quote_identifier(KEY_COLUMN)
            ));
            if self.staging.is_none() {
                script.push(format!(
                    "CREATE TEMP TABLE {STAGING_DELETES} ({} text) ON COMMIT DELETE ROWS",
                    quote_identifier(KEY_COLUMN)
                ));
            }
        }
        connection
            .execute("BEGIN")
            .await
            .map_err(pg("starting a transaction on", self.name()))?;
        let result = self
            .apply_in_transaction(connection, encoded, &script, try_direct)
            .await;
        let direct = match result {
            Ok(direct) => direct,
            Err(error) => {
                let _ = connection.execute("ROLLBACK").await;
                return Err(error);
            }
        };
        connection
            .execute("COMMIT")
            .await
            .map_err(pg("committing a batch into", self.name()))?;
        if staged {
            self.staging = Some(columns.clone());
        }
        self.model.columns.clone_from(columns);
        self.model.mapping.clone_from(mapping);
        Ok(Applied {
            upserts: *upserts,
            deletes: *removed,
            changes: ddl.clone(),
            direct,
        })
    }

    async fn apply_in_transaction(
        &self,
        connection: &mut Connection,
        encoded: &Encoded,
        script: &[String],
        try_direct: bool,
    ) -> Result<bool, DocumentError> {
        let name = self.name();
        let Encoded {
            columns,
            payload,
            binary,
            deletes,
            ..
        } = encoded;
        if !script.is_empty() {
            connection
                .execute(&script.join("; "))
                .await
                .map_err(pg("changing the columns of", name))?;
        }
        let key = quote_identifier(KEY_COLUMN);
        let list: String = std::iter::once(key.clone())
            .chain(columns.iter().map(|(column, _)| quote_identifier(column)))
            .collect::<Vec<_>>()
            .join(", ");
        if !payload.is_empty() {
            let format = if *binary { " (FORMAT binary)" } else { "" };
            let into_table = format!("COPY {} ({list}) FROM STDIN{format}", name.quoted());
            if self.loading {
                // No key to conflict on yet: the initial load is copied straight in (a key
                // copied twice is kept once when the key is built).
                copy(connection, &into_table, payload, name).await?;
            } else if try_direct
                && deletes.is_empty()
                && self.copy_direct(connection, &into_table, payload).await?
            {
                return Ok(true);
            } else {
                self.merge(connection, columns, &list, format, payload)
                    .await?;
            }
        }
        if !deletes.is_empty() {
            copy(
                connection,
                &format!("COPY {STAGING_DELETES} ({key}) FROM STDIN"),
                deletes,
                name,
            )
            .await?;
            let statement = if self.hard_delete {
                format!(
                    "DELETE FROM {} t USING {STAGING_DELETES} d WHERE t.{key} = d.{key}",
                    name.quoted()
                )
            } else {
                let deleted_at = quote_identifier(DELETED_AT_COLUMN);
                format!(
                    "UPDATE {} t SET {deleted_at} = now() FROM {STAGING_DELETES} d WHERE t.{key} = d.{key} AND t.{deleted_at} IS NULL",
                    name.quoted()
                )
            };
            connection
                .execute(&statement)
                .await
                .map_err(pg("deleting rows of", name))?;
        }
        Ok(self.loading)
    }

    /// Copies a batch straight into the table under a savepoint: `Ok(false)` (rolled back)
    /// when a key of it is there already.
    async fn copy_direct(
        &self,
        connection: &mut Connection,
        into_table: &str,
        payload: &[u8],
    ) -> Result<bool, DocumentError> {
        let name = self.name();
        connection
            .execute("SAVEPOINT pgferry_direct")
            .await
            .map_err(pg("starting a direct copy into", name))?;
        match copy(connection, into_table, payload, name).await {
            Ok(()) => Ok(true),
            Err(DocumentError::Postgres { source, .. }) if source.code() == Some("23505") => {
                connection
                    .execute("ROLLBACK TO SAVEPOINT pgferry_direct")
                    .await
                    .map_err(pg("falling back to a merge into", name))?;
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    /// Copies a batch into staging and upserts it into the table by key.
    async fn merge(
        &self,
        connection: &mut Connection,
        columns: &[(String, ColumnType)],
        list: &str,
        format: &str,
        payload: &[u8],
    ) -> Result<(), DocumentError> {
        let name = self.name();
        let key = quote_identifier(KEY_COLUMN);
        copy(
            connection,
            &format!("COPY {STAGING} ({list}) FROM STDIN{format}"),
            payload,
            name,
        )
        .await?;
        let deleted_at = quote_identifier(DELETED_AT_COLUMN);
        let mut sets: Vec<String> = columns
            .iter()
            .map(|(column, _)| {
                let quoted = quote_identifier(column);
                format!("{quoted} = EXCLUDED.{quoted}")
            })
            .collect();
        if !self.hard_delete {
            sets.push(format!("{deleted_at} = NULL"));
        }
        let action = if sets.is_empty() {
            "DO NOTHING".to_owned()
        } else {
            format!("DO UPDATE SET {}", sets.join(", "))
        };
        connection
            .execute(&format!(
                "INSERT INTO {} AS t ({list}) SELECT {list} FROM {STAGING} ON CONFLICT ({key}) {action}",
                name.quoted()
            ))
            .await
            .map_err(pg("merging a batch into", name))?;
        Ok(())
    }
}

impl TableModel {
    /// The table's name.
    pub fn name(&self) -> &TableName {
        &self.name
    }

    /// The columns after this batch, the DDL that gets the table there, and the column each
    /// of the batch's attributes goes to (`None` for one that only ever was null or whose
    /// documents were all replaced within the batch). A new attribute gets a column of its
    /// own ([`column_candidates`]: the first name no column has) while the table has fewer
    /// than `max_columns` attribute columns, else the overflow column.
    fn plan(&self, batch: &DocumentBatch) -> Plan<'_> {
        // The kinds each attribute has in the documents the batch keeps, one bit per kind.
        let mut kinds = vec![0u8; batch.attributes.names.len()];
        for change in batch.changes.values() {
            if let Change::Upsert(document) = change {
                for field in &document.fields {
                    kinds[field.attribute as usize] |= field.kind.bit();
                }
            }
        }
        let mut columns = self.columns.clone();
        let mut mapping = Cow::Borrowed(&self.mapping);
        // The names taken, built when a new attribute needs a column.
        let mut taken: Option<HashSet<String>> = None;
        // New columns named for another attribute, with that attribute.
        let mut renamed: Vec<(usize, &str)> = Vec::new();
        let before = columns.len();
        let mut column_of = Vec::with_capacity(kinds.len());
        for (attribute, kinds) in batch.attributes.names.iter().zip(kinds) {
            let present = ValueKind::ALL
                .into_iter()
                .filter(|kind| kinds & kind.bit() != 0);
            let position = match mapping.by_attribute.get(attribute) {
                Some(&position) => Some(position),
                None => present
                    .clone()
                    .find_map(ColumnType::for_kind)
                    .map(|sql_type| {
                        let mapping = mapping.to_mut();
                        let budgeted = columns.len() - usize::from(mapping.overflow.is_some());
                        let position = if budgeted >= mapping.max_columns {
                            *mapping.overflow.get_or_insert_with(|| {
                                columns.push((OVERFLOW_COLUMN.to_owned(), ColumnType::Jsonb));
                                columns.len() - 1
                            })
                        } else {
                            let taken = taken.get_or_insert_with(|| {
                                [KEY_COLUMN, DELETED_AT_COLUMN, OVERFLOW_COLUMN]
                                    .into_iter()
                                    .map(str::to_owned)
                                    .chain(columns.iter().map(|(name, _)| name.clone()))
                                    .collect()
                            });
                            let name = column_candidates(attribute)
                                .find(|name| !taken.contains(name.as_ref()))
                                .map(Cow::into_owned)
                                .unwrap_or_default();
                            if name != **attribute {
                                renamed.push((columns.len(), attribute));
                            }
                            taken.insert(name.clone());
                            columns.push((name, sql_type));
                            columns.len() - 1
                        };
                        mapping.by_attribute.insert(attribute.clone(), position);
                        position
                    }),
            };
            if let Some(position) = position {
                if Some(position) != mapping.overflow {
                    for kind in present {
                        columns[position].1 = columns[position].1.join(kind);
                    }
                }
            }
            column_of.push(position);
        }
        let mut ddl = Vec::new();
        for (position, (column, sql_type)) in columns.iter().enumerate() {
            let quoted = quote_identifier(column);
            if position >= before {
                ddl.push(format!(
                    "ALTER TABLE {} ADD COLUMN {quoted} {}",
                    self.name.quoted(),
                    sql_type.sql()
                ));
            } else if self.columns[position].1 != *sql_type {
                ddl.push(format!(
                    "ALTER TABLE {} ALTER COLUMN {quoted} TYPE {} USING {}",
                    self.name.quoted(),
                    sql_type.sql(),
                    self.columns[position].1.widen_using(&quoted, sql_type)
                ));
            }
        }
        for (position, attribute) in renamed {
            let record = serde_json::to_string(attribute).unwrap_or_default();
            ddl.push(format!(
                "COMMENT ON COLUMN {}.{} IS {}",
                self.name.quoted(),
                quote_identifier(&columns[position].0),
                quote_literal(&format!("{ATTRIBUTE_COMMENT}{record}"))
            ));
        }
        Plan {
            columns,
            ddl,
            column_of,
            mapping,
        }
    }

    /// Plans `batch` against these columns and encodes it as COPY data (reusing `buffers`).
    /// The model itself does not change; see [`TableModel::assume_committed`].
    pub fn encode(
        &self,
        batch: &DocumentBatch,
        buffers: (Vec<u8>, Vec<u8>),
    ) -> Result<Encoded, Box<DocumentError>> {
        let Plan {
            columns,
            ddl,
            column_of,
            mapping,
        } = self.plan(batch);
        let mapping = mapping.into_owned();
        let overflow = mapping.overflow;
        let (mut rows, spare) = buffers;
        let mut deletes = Vec::new();
        // Binary COPY written straight from the documents when every column has a binary
        // form here; else (or when a value has no certain binary form) COPY text.
        if columns.iter().all(|(_, sql_type)| sql_type.binary()) {
            rows.clear();
            rows.extend_from_slice(BINARY_HEADER);
            if let Some(upserts) = self.encode_rows(
                batch,
                (&columns, overflow),
                &column_of,
                true,
                &mut rows,
                &mut deletes,
            )? {
                rows.extend_from_slice(BINARY_TRAILER);
                if upserts == 0 {
                    // Nothing to copy (a batch of deletes).
                    rows.clear();
                }
                return Ok(Encoded {
                    columns,
                    mapping,
                    ddl,
                    payload: rows,
                    binary: true,
                    spare,
                    deletes,
                    upserts,
                    removed: (batch.len() as u64).saturating_sub(upserts),
                });
            }
            deletes.clear();
        }
        rows.clear();
        let upserts = self
            .encode_rows(
                batch,
                (&columns, overflow),
                &column_of,
                false,
                &mut rows,
                &mut deletes,
            )?
            .unwrap_or_default();
        let (payload, binary, spare) = text_or_converted(&columns, rows, spare);
        Ok(Encoded {
            columns,
            mapping,
            ddl,
            payload,
            binary,
            spare,
            deletes,
            upserts,
            removed: (batch.len() as u64).saturating_sub(upserts),
        })
    }

    /// Starts a scan batch with `page`, planned against these columns; see [`PagedBatch`].
    pub fn start_paged(
        &self,
        page: &DocumentBatch,
        buffers: (Vec<u8>, Vec<u8>),
    ) -> Result<PagedBatch, Box<DocumentError>> {
        let Plan {
            columns,
            ddl,
            column_of,
            mapping,
        } = self.plan(page);
        let mapping = mapping.into_owned();
        let (payload, spare) = buffers;
        let mut paged = PagedBatch {
            target: TableModel {
                name: self.name.clone(),
                columns,
                mapping,
            },
            ddl,
            binary: false,
            payload,
            spare,
            upserts: 0,
            keys: HashSet::default(),
        };
        paged.binary = paged
            .target
            .columns
            .iter()
            .all(|(_, sql_type)| sql_type.binary());
        paged.payload.clear();
        if paged.binary {
            paged.payload.extend_from_slice(BINARY_HEADER);
        }
        if !paged.append_planned(page, &column_of)? {
            // A value without a certain binary form: the batch goes as text.
            paged.binary = false;
            paged.payload.clear();
            paged.append_planned(page, &column_of)?;
        }
        Ok(paged)
    }

    /// Appends the batch's upserts to `rows` (binary COPY rows without the stream's header and
    /// trailer, or COPY text) and its deletes to `deletes`; returns the upserts, or `None`
    /// when a value has no certain binary form.
    fn encode_rows(
        &self,
        batch: &DocumentBatch,
        (columns, overflow): (&[(String, ColumnType)], Option<usize>),
        column_of: &[Option<usize>],
        binary: bool,
        rows: &mut Vec<u8>,
        deletes: &mut Vec<u8>,
    ) -> Result<Option<u64>, Box<DocumentError>> {
        let Ok(count) = i16::try_from(columns.len() + 1) else {
            return Ok(None);
        };
        let mut upserts = 0u64;
        let mut fields: Vec<Option<Field>> = vec![None; columns.len()];
        // The document's attributes that go to the overflow column, and its JSON.
        let mut spilled: Vec<Field> = Vec::new();
        let mut spilled_json = String::new();
        for (key, change) in &batch.changes {
            let document = match change {
                Change::Delete => {
                    crate::singer::target_postgres::copy_encode::push_escaped(
                        deletes,
                        key.as_bytes(),
                    );
                    deletes.push(b'\n');
                    continue;
                }
                Change::Upsert(document) => document,
            };
            upserts += 1;
            fields.iter_mut().for_each(|field| *field = None);
            spilled.clear();
            for field in &document.fields {
                match column_of[field.attribute as usize] {
                    Some(index) if Some(index) == overflow && field.kind != ValueKind::Null => {
                        spilled.push(*field);
                    }
                    Some(index) if Some(index) == overflow => {}
                    Some(index) => fields[index] = Some(*field),
                    None => {}
                }
            }
            if let (Some(index), Some(first)) = (overflow, spilled.first()) {
                // One object of the attributes beyond the budget, each value as sent.
                spilled_json.clear();
                spilled_json.push('{');
                for field in &spilled {
                    if spilled_json.len() > 1 {
                        spilled_json.push(',');
                    }
                    let name = &batch.attributes.names[field.attribute as usize];
                    spilled_json.push_str(&serde_json::to_string(&**name).unwrap_or_default());
                    spilled_json.push(':');
                    spilled_json.push_str(document.value(field));
                }
                spilled_json.push('}');
                fields[index] = Some(Field {
                    kind: ValueKind::Structure,
                    ..*first
                });
            }
            if key.contains('\0') {
                return Err(Box::new(DocumentError::Value {
                    table: self.name.clone(),
                    key: key.clone(),
                    attribute: KEY_COLUMN.into(),
                    source: ValueError::Nul,
                }));
            }
            if binary {
                let Ok(length) = i32::try_from(key.len()) else {
                    return Ok(None);
                };
                rows.extend_from_slice(&count.to_be_bytes());
                rows.extend_from_slice(&length.to_be_bytes());
                rows.extend_from_slice(key.as_bytes());
            } else {
                crate::singer::target_postgres::copy_encode::push_escaped(rows, key.as_bytes());
            }
            for (index, (field, (_, sql_type))) in fields.iter().zip(columns).enumerate() {
                let Some(field) = field else {
                    if binary {
                        rows.extend_from_slice(&(-1i32).to_be_bytes());
                    } else {
                        rows.extend_from_slice(b"\t\\N");
                    }
                    continue;
                };
                let spills = Some(index) == overflow;
                let value = if spills {
                    spilled_json.as_str()
                } else {
                    document.value(field)
                };
                let written = if binary {
                    encode_field_binary(rows, value, field.kind, sql_type)
                } else {
                    rows.push(b'\t');
                    encode_field(rows, value, field.kind, sql_type).map(|()| true)
                };
                match written {
                    Ok(true) => {}
                    Ok(false) => return Ok(None),
                    Err(source) => {
                        return Err(Box::new(DocumentError::Value {
                            table: self.name.clone(),
                            key: key.clone(),
                            attribute: if spills {
                                OVERFLOW_COLUMN.to_owned()
                            } else {
                                batch.attributes.names[field.attribute as usize].to_string()
                            },
                            source,
                        }))
                    }
                }
            }
            if !binary {
                rows.push(b'\n');
            }
        }
        Ok(Some(upserts))
    }

    /// Takes the columns `encoded` leaves the table with, as if it committed: the next batch
    /// is encoded against them while this one is still being applied.
    pub fn assume_committed(&mut self, encoded: &Encoded) {
        self.columns.clone_from(&encoded.columns);
        self.mapping.clone_from(&encoded.mapping);
    }
}

/// Converts COPY text rows to binary when every column has an exact binary form (the text
/// rows are then the spare buffer): `(payload, binary, spare)`.
fn text_or_converted(
    columns: &[(String, ColumnType)],
    rows: Vec<u8>,
    mut spare: Vec<u8>,
) -> (Vec<u8>, bool, Vec<u8>) {
    let types: Option<Vec<_>> = std::iter::once("text")
        .chain(columns.iter().map(|(_, sql_type)| sql_type.sql()))
        .map(binary_type)
        .collect();
    let binary = !rows.is_empty()
        && types.is_some_and(|types| text_to_binary_into(&[&rows], &types, &mut spare));
    if binary {
        (spare, true, rows)
    } else {
        (rows, false, spare)
    }
}

/// A scan's batch, encoded page by page while each page is fresh in the cache (a whole batch
/// of documents does not fit in it, and reading them back for the encoding cost a fifth of
/// pgferry's time). Its columns are those its first page needs; a page that needs others
/// (a new attribute, a wider type), that repeats a key of the batch, or that has no certain
/// binary form in a binary batch, does not fit and starts the next batch. Scans have no
/// deletes.
#[derive(Debug)]
pub struct PagedBatch {
    /// The table's columns once this batch commits.
    target: TableModel,
    /// The schema changes that get there (from the columns before the batch).
    ddl: Vec<String>,
    binary: bool,
    /// Binary COPY (header and rows) or COPY text rows.
    payload: Vec<u8>,
    spare: Vec<u8>,
    upserts: u64,
    /// Hashes of the batch's keys: a page repeating one (a collision too) starts the next
    /// batch, so no batch holds a key twice.
    keys: HashSet<u64>,
}

impl PagedBatch {
    /// Documents in the batch.
    pub fn len(&self) -> u64 {
        self.upserts
    }

    /// Whether the batch holds no document yet.
    pub fn is_empty(&self) -> bool {
        self.upserts == 0
    }

    /// Appends `page` when it fits the batch (`Ok(false)` when it does not: nothing was
    /// added, finish this batch and start the next with the page).
    pub fn append(&mut self, page: &DocumentBatch) -> Result<bool, Box<DocumentError>> {
        let Plan { ddl, column_of, .. } = self.target.plan(page);
        if !ddl.is_empty() {
            return Ok(false);
        }
        self.append_planned(page, &column_of)
    }

    fn append_planned(
        &mut self,
        page: &DocumentBatch,
        column_of: &[Option<usize>],
    ) -> Result<bool, Box<DocumentError>> {
        let hasher = foldhash::fast::FixedState::with_seed(0x5CA7);
        let hashes: Vec<u64> = page
            .changes
            .keys()
            .map(|key| std::hash::BuildHasher::hash_one(&hasher, key))
            .collect();
        if hashes.iter().any(|hash| self.keys.contains(hash)) {
            return Ok(false);
        }
        let before = self.payload.len();
        let mut deletes = Vec::new();
        match self.target.encode_rows(
            page,
            (&self.target.columns, self.target.mapping.overflow),
            column_of,
            self.binary,
            &mut self.payload,
            &mut deletes,
        )? {
            Some(upserts) => {
                self.upserts += upserts;
                self.keys.extend(hashes);
                Ok(true)
            }
            None => {
                self.payload.truncate(before);
                Ok(false)
            }
        }
    }

    /// The batch, ready for [`DocumentTable::commit`].
    pub fn finish(self) -> Encoded {
        let PagedBatch {
            target,
            ddl,
            binary,
            mut payload,
            spare,
            upserts,
            ..
        } = self;
        let (payload, binary, spare) = if binary {
            payload.extend_from_slice(BINARY_TRAILER);
            (payload, true, spare)
        } else {
            text_or_converted(&target.columns, payload, spare)
        };
        Encoded {
            columns: target.columns,
            mapping: target.mapping,
            ddl,
            payload,
            binary,
            spare,
            deletes: Vec::new(),
            upserts,
            removed: 0,
        }
    }
}

async fn copy(
    connection: &mut Connection,
    sql: &str,
    payload: &[u8],
    table: &TableName,
) -> Result<(), DocumentError> {
    let mut copy = connection
        .copy_in(sql)
        .await
        .map_err(pg("copying a batch for", table))?;
    for chunk in payload.chunks(COPY_CHUNK_BYTES) {
        copy.send(chunk)
            .await
            .map_err(pg("copying a batch for", table))?;
    }
    copy.finish()
        .await
        .map(|_| ())
        .map_err(pg("copying a batch for", table))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn table(columns: &[(&str, ColumnType)]) -> TableModel {
        TableModel {
            name: TableName {
                schema: "public".into(),
                table: "orders".into(),
            },
            columns: columns
                .iter()
                .map(|(name, sql_type)| ((*name).to_owned(), sql_type.clone()))
                .collect(),
            mapping: Mapping {
                by_attribute: columns
                    .iter()
                    .enumerate()
                    .map(|(position, (name, _))| ((*name).into(), position))
                    .collect(),
                overflow: None,
                max_columns: 1000,
            },
        }
    }

    fn document(value: Value) -> Box<RawValue> {
        RawValue::from_string(value.to_string()).unwrap()
    }

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    /// The attributes of `key`'s pending document, as (name, JSON text, kind).
    fn fields_of(batch: &DocumentBatch, key: &str) -> Vec<(String, String, ValueKind)> {
        let Change::Upsert(document) = &batch.changes[key] else {
            panic!("{key} is not an upsert");
        };
        document
            .fields
            .iter()
            .map(|field| {
                (
                    batch.attributes.names[field.attribute as usize].to_string(),
                    document.value(field).to_owned(),
                    field.kind,
                )
            })
            .collect()
    }

    #[test]
    fn a_batch_keeps_the_last_change_of_each_key() {
        let mut batch = DocumentBatch::default();
        batch
            .upsert(document(
                json!({"_key": "a", "_id": "c/a", "_rev": "1", "n": 1}),
            ))
            .unwrap();
        batch
            .upsert(document(json!({"_key": "a", "n": 2})))
            .unwrap();
        batch.delete("b".into());
        batch
            .upsert(document(json!({"_key": "b", "n": 3})))
            .unwrap();
        batch.delete("c".into());
        let rejected = batch.upsert(document(json!({"n": 4}))).unwrap_err();
        assert_eq!(rejected.reason, BadDocument::NoKey);
        assert_eq!(rejected.snippet(), r#"{"n":4}"#);
        assert_eq!((batch.received(), batch.len()), (5, 3));
        assert_eq!(
            fields_of(&batch, "a"),
            vec![("n".into(), "2".into(), ValueKind::Integer)],
            "_key, _id and _rev are not columns"
        );
        assert!(matches!(batch.changes["c"], Change::Delete));
    }

    #[test]
    fn a_document_is_read_in_place_with_each_value_as_sent() {
        let mut batch = DocumentBatch::default();
        batch
            .upsert(raw(r#"{ "_key" : "k\u0031", "a\"b": 1.50, "s": "x\ty", "o": {"z": [1, 2]}, "nil": null, "big": 18446744073709551616 }"#))
            .unwrap();
        assert_eq!(
            fields_of(&batch, "k1"),
            vec![
                ("a\"b".into(), "1.50".into(), ValueKind::Float),
                ("s".into(), r#""x\ty""#.into(), ValueKind::String),
                ("o".into(), r#"{"z": [1, 2]}"#.into(), ValueKind::Structure),
                ("nil".into(), "null".into(), ValueKind::Null),
                (
                    "big".into(),
                    "18446744073709551616".into(),
                    ValueKind::Float
                ),
            ],
            "names and the key are decoded, values keep their text"
        );
        // A second shape, then the first again: the names stay one id each.
        batch
            .upsert(raw(r#"{"_key": "k2", "s": "y", "new": true}"#))
            .unwrap();
        batch
            .upsert(raw(r#"{"_key": "k3", "a\"b": 2, "s": "z"}"#))
            .unwrap();
        assert_eq!(
            batch
                .attributes
                .names
                .iter()
                .map(|name| &**name)
                .collect::<Vec<_>>(),
            ["a\"b", "s", "o", "nil", "big", "new"]
        );
        assert_eq!(fields_of(&batch, "k3")[1].0, "s");
    }

    #[test]
    fn documents_that_cannot_be_loaded_say_why() {
        let mut batch = DocumentBatch::default();
        let reason =
            |batch: &mut DocumentBatch, text: &str| batch.upsert(raw(text)).unwrap_err().reason;
        assert!(matches!(
            reason(&mut batch, "[1]"),
            BadDocument::NotAnObject(_)
        ));
        assert!(matches!(
            reason(&mut batch, r#""s""#),
            BadDocument::NotAnObject(_)
        ));
        assert_eq!(reason(&mut batch, r#"{"_key": 7}"#), BadDocument::NoKey);
        assert_eq!(
            reason(&mut batch, r#"{"_key": "a", "x": 1e999}"#),
            BadDocument::Value {
                attribute: "x".into(),
                source: ValueError::OutOfRange
            }
        );
        assert_eq!(
            reason(&mut batch, r#"{"_key": "a", "x": 1e999}"#).to_string(),
            "attribute \"x\" is a number beyond the range of a double precision value"
        );
        assert!(batch.is_empty(), "nothing of a refused document is kept");
        assert_eq!(
            document_key(&raw(r#"{"a": 1, "_key": "k"}"#)),
            Ok("k".into())
        );
        assert_eq!(document_key(&raw("{}")), Err(BadDocument::NoKey));
        assert!(matches!(
            document_key(&raw("[]")),
            Err(BadDocument::NotAnObject(_))
        ));
    }

    #[test]
    fn only_the_documents_a_batch_keeps_type_its_columns() {
        let existing = table(&[]);
        let mut batch = DocumentBatch::default();
        batch
            .upsert(raw(r#"{"_key": "a", "n": "text", "gone": 1}"#))
            .unwrap();
        batch
            .upsert(document(json!({"_key": "a", "n": 5})))
            .unwrap();
        batch
            .upsert(document(json!({"_key": "b", "only_null": null})))
            .unwrap();
        let plan = existing.plan(&batch);
        assert_eq!(plan.columns, vec![("n".into(), ColumnType::BigInt)]);
        assert_eq!(plan.column_of, vec![Some(0), None, None]);
    }

    #[test]
    fn new_attributes_add_columns_and_disagreeing_values_widen_them() {
        let existing = table(&[("n", ColumnType::BigInt), ("s", ColumnType::Text)]);
        let mut batch = DocumentBatch::default();
        batch
            .upsert(document(
                json!({"_key": "a", "n": 1.5, "s": "x", "new": {"k": 1}, "empty": null}),
            ))
            .unwrap();
        batch
            .upsert(document(json!({"_key": "b", "s": 7})))
            .unwrap();
        let Plan { columns, ddl, .. } = existing.plan(&batch);
        assert_eq!(
            columns,
            vec![
                ("n".into(), ColumnType::Numeric),
                ("s".into(), ColumnType::Jsonb),
                ("new".into(), ColumnType::Jsonb)
            ]
        );
        assert_eq!(
            ddl,
            vec![
                r#"ALTER TABLE "public"."orders" ALTER COLUMN "n" TYPE numeric USING "n"::numeric"#,
                r#"ALTER TABLE "public"."orders" ALTER COLUMN "s" TYPE jsonb USING to_jsonb("s")"#,
                r#"ALTER TABLE "public"."orders" ADD COLUMN "new" jsonb"#,
            ]
        );
        let mut same = DocumentBatch::default();
        same.upsert(document(json!({"_key": "c", "n": 1, "s": "y"})))
            .unwrap();
        assert!(existing.plan(&same).ddl.is_empty());
    }

    #[test]
    fn two_attributes_never_share_a_column() {
        let long = format!("attr_{}", "x".repeat(80));
        let hashed = crate::destination::postgres::infer::column_candidates(&long)
            .next()
            .unwrap()
            .into_owned();
        let mut model = table(&[]);
        let mut batch = DocumentBatch::default();
        batch
            .upsert(document(
                json!({"_key": "a", long.clone(): 1, hashed.clone(): "h", "x\u{0}y": 2}),
            ))
            .unwrap();
        let encoded = model.encode(&batch, Default::default()).unwrap();
        let names: Vec<&str> = encoded
            .columns
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        let distinct: HashSet<&str> = names.iter().copied().collect();
        assert_eq!(distinct.len(), 3, "{names:?}");
        assert!(names.contains(&hashed.as_str()), "{names:?}");
        assert!(!names.iter().any(|name| name.contains('\0')), "{names:?}");
        // Each renamed column records its attribute, in the same transaction.
        let comments: Vec<&String> = encoded
            .ddl
            .iter()
            .filter(|statement| statement.starts_with("COMMENT ON COLUMN"))
            .collect();
        assert_eq!(comments.len(), 2, "{:?}", encoded.ddl);
        assert!(comments
            .iter()
            .any(|c| c.contains(&format!("pgferry attribute: \"{long}\""))));
        // The next batch maps every attribute to the same column again.
        model.assume_committed(&encoded);
        let mut again = DocumentBatch::default();
        again
            .upsert(document(
                json!({"_key": "b", hashed.clone(): "k", long.clone(): 3}),
            ))
            .unwrap();
        let plan = model.plan(&again);
        assert!(plan.ddl.is_empty(), "{:?}", plan.ddl);
        let position = |attribute: &str| model.mapping.by_attribute[attribute];
        assert_ne!(position(&long), position(&hashed));
        assert_eq!(model.columns[position(&hashed)].0, hashed);
    }

    #[test]
    fn attributes_beyond_the_budget_go_to_the_overflow_column() {
        let mut model = table(&[]);
        model.mapping.max_columns = 2;
        let mut batch = DocumentBatch::default();
        batch
            .upsert(document(
                json!({"_key": "a", "d1": 1, "d2": "two", "d3": {"x": [1]}, "d4": null, "d5": 2.5}),
            ))
            .unwrap();
        batch
            .upsert(document(json!({"_key": "b", "d1": 7})))
            .unwrap();
        let encoded = model.encode(&batch, Default::default()).unwrap();
        assert_eq!(
            encoded.columns,
            vec![
                ("d1".into(), ColumnType::BigInt),
                ("d2".into(), ColumnType::Text),
                (OVERFLOW_COLUMN.into(), ColumnType::Jsonb),
            ]
        );
        assert!(encoded
            .ddl
            .iter()
            .any(|s| s.contains(r#"ADD COLUMN "_pgferry_overflow" jsonb"#)));
        // In text: the overflow holds the attributes beyond the budget, nulls left out; a
        // document without any has NULL there.
        let mut text = Vec::new();
        let mut deletes = Vec::new();
        model
            .encode_rows(
                &batch,
                (&encoded.columns, Some(2)),
                &{
                    let plan = model.plan(&batch);
                    plan.column_of
                },
                false,
                &mut text,
                &mut deletes,
            )
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("a\t1\ttwo\t{\"d3\":{\"x\":[1]},\"d5\":2.5}\n"),
            "{text}"
        );
        assert!(text.contains("b\t7\t\\N\t\\N\n"), "{text}");
        // Later attributes go there too; the columns stay.
        model.assume_committed(&encoded);
        let mut later = DocumentBatch::default();
        later
            .upsert(document(json!({"_key": "c", "d9": true})))
            .unwrap();
        assert!(model.plan(&later).ddl.is_empty());
    }

    /// The encoded batch, and its rows written as COPY text then converted by `copy_binary`
    /// (the conversion the Singer loader uses, checked there against PostgreSQL).
    fn binary_both_ways(model: &TableModel, batch: &DocumentBatch) -> (Encoded, Option<Vec<u8>>) {
        let encoded = model.encode(batch, Default::default()).unwrap();
        let (mut text, mut deletes) = (Vec::new(), Vec::new());
        model
            .encode_rows(
                batch,
                (&encoded.columns, encoded.mapping.overflow),
                &model.plan(batch).column_of,
                false,
                &mut text,
                &mut deletes,
            )
            .unwrap();
        let (converted, binary, _) = text_or_converted(&encoded.columns, text, Vec::new());
        let converted = binary.then_some(converted);
        (encoded, converted)
    }

    #[test]
    fn binary_rows_written_from_documents_equal_the_text_rows_converted() {
        let model = table(&[]);
        let mut batch = DocumentBatch::default();
        for text in [
            r#"{"_key": "a\tb", "flag": true, "n": -9223372036854775808, "d": 1.5, "s": "tab\tline\nslash\\ \u00e9", "j": {"x": [1, "\n"]}}"#,
            r#"{"_key": "b", "flag": false, "n": 9223372036854775807, "d": 7, "s": "", "j": "text"}"#,
            r#"{"_key": "c", "flag": null, "d": -0.000125, "j": 3}"#,
            r#"{"_key": "d"}"#,
        ] {
            batch.upsert(raw(text)).unwrap();
        }
        batch.delete("gone".into());
        let (encoded, converted) = binary_both_ways(&model, &batch);
        assert_eq!(
            encoded
                .columns
                .iter()
                .map(|(_, sql_type)| sql_type.clone())
                .collect::<Vec<_>>(),
            [
                ColumnType::Boolean,
                ColumnType::BigInt,
                ColumnType::Numeric,
                ColumnType::Text,
                ColumnType::Jsonb
            ]
        );
        assert!(encoded.binary);
        assert_eq!(Some(encoded.payload), converted);
        assert_eq!((encoded.upserts, encoded.removed), (4, 1));
        assert_eq!(encoded.deletes, b"gone\n");

        // A fraction sent with an exponent goes into numeric as its double's exact value,
        // which has a binary form.
        let mut batch = DocumentBatch::default();
        batch.upsert(raw(r#"{"_key": "e", "d": 1e-7}"#)).unwrap();
        batch.upsert(raw(r#"{"_key": "f", "d": 2}"#)).unwrap();
        let (encoded, converted) = binary_both_ways(&model, &batch);
        assert_eq!(encoded.columns, [("d".into(), ColumnType::Numeric)]);
        assert!(encoded.binary);
        assert_eq!(Some(encoded.payload), converted);

        // Only deletes: nothing to copy.
        let mut batch = DocumentBatch::default();
        batch.delete("k".into());
        let encoded = model.encode(&batch, Default::default()).unwrap();
        assert!(encoded.payload.is_empty());
    }

    fn page(documents: &[Value]) -> DocumentBatch {
        let mut batch = DocumentBatch::default();
        for value in documents {
            batch.upsert(document(value.clone())).unwrap();
        }
        batch
    }

    #[test]
    fn a_paged_batch_takes_pages_that_fit_and_refuses_the_others() {
        let model = table(&[]);
        let first = page(&[
            json!({"_key": "a", "n": 1, "s": "x"}),
            json!({"_key": "b", "n": 2}),
        ]);
        let second = page(&[json!({"_key": "c", "n": 3, "s": "y\tz"})]);
        let mut paged = model.start_paged(&first, Default::default()).unwrap();
        assert!(paged.append(&second).unwrap());
        assert_eq!(paged.len(), 3);
        for (refused, why) in [
            (
                page(&[json!({"_key": "d", "new": true})]),
                "a new attribute",
            ),
            (page(&[json!({"_key": "d", "n": 1.5})]), "a wider type"),
            (
                page(&[json!({"_key": "a", "n": 4})]),
                "a key the batch holds",
            ),
        ] {
            assert!(!paged.append(&refused).unwrap(), "{why}");
        }
        assert_eq!(paged.len(), 3, "a refused page adds nothing");
        let encoded = paged.finish();
        assert_eq!(
            encoded.columns,
            [
                ("n".into(), ColumnType::BigInt),
                ("s".into(), ColumnType::Text)
            ]
        );
        assert_eq!(encoded.ddl.len(), 2);
        assert!(encoded.binary);
        // The rows of each page, as the whole-batch encoder writes them, one after the other.
        let rows_of = |batch: &DocumentBatch| {
            let payload = model.encode(batch, Default::default()).unwrap().payload;
            payload[BINARY_HEADER.len()..payload.len() - BINARY_TRAILER.len()].to_vec()
        };
        let expected = [
            BINARY_HEADER,
            &rows_of(&first),
            &rows_of(&second),
            BINARY_TRAILER,
        ]
        .concat();
        assert_eq!(encoded.payload, expected);
        assert_eq!((encoded.upserts, encoded.removed), (3, 0));

        // Numbers of both kinds into numeric: every one has a binary form.
        let numeric = table(&[("d", ColumnType::Numeric)]);
        let mut paged = numeric
            .start_paged(&page(&[json!({"_key": "e", "d": 2})]), Default::default())
            .unwrap();
        assert!(paged
            .append(&page(&[json!({"_key": "f", "d": 1e-7})]))
            .unwrap());
        assert!(paged.finish().binary);
    }
}
