//! Discovery: tables and views, their columns and types, keys, replica identity, row estimates.
//!
//! Types are resolved once per column: a domain to its base type (through any depth of
//! domains), an array to its element, a composite to its attributes (read from `pg_attribute`
//! of its `typrelid`, each attribute resolved the same way, nested composites included),
//! extension types (`hstore`, `citext`) by name, enums to text. [`Column::codec`] then says how
//! the snapshot decodes the column's binary values, and whether the query must select it as
//! `::text` (some part of the type has no binary decoder here; the text is then read with the
//! same structure, see [`TypeCodec::TextForm`]).
//!
//! Key columns are the primary key, else the columns of the replica identity index; a table
//! with neither has no key (`check` and the run say how to add one).

use std::collections::HashMap;

use crate::decode::value::{CompositeAttribute, CompositeCodec, NumericOut, TypeCodec};
use crate::pg::query::{quote_literal, Row};
use crate::pg::{Connection, PgError};

/// What kind of relation a table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelationKind {
    /// An ordinary table.
    Table,
    /// A partitioned table (its partitions hold the rows).
    PartitionedTable,
    /// A view: FULL_TABLE only.
    View,
    /// A materialized view: FULL_TABLE only.
    MaterializedView,
    /// A foreign table: FULL_TABLE only.
    ForeignTable,
}

impl RelationKind {
    /// Whether changes to it are decoded from WAL (views and foreign tables have none).
    pub fn supports_log_based(self) -> bool {
        matches!(self, RelationKind::Table | RelationKind::PartitionedTable)
    }

    /// Whether the old source's catalog marks it `is-view`.
    pub fn is_view(self) -> bool {
        matches!(self, RelationKind::View | RelationKind::MaterializedView)
    }
}

/// `pg_class.relreplident`: what an UPDATE/DELETE logs of the old row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// The primary key (if any).
    Default,
    /// Nothing: UPDATE/DELETE carry no old key.
    Nothing,
    /// Every column.
    Full,
    /// The columns of a chosen unique index.
    Index,
}

/// Where a table's key columns come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// The primary key.
    PrimaryKey,
    /// The replica identity index.
    ReplicaIdentityIndex,
    /// No key: rows cannot be matched for update or delete.
    None,
}

/// A type as the catalog describes it, with what decoding needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    /// `pg_type.oid`.
    pub oid: u32,
    /// `pg_type.typname`.
    pub name: String,
    /// `pg_type.typtype`: b base, c composite, d domain, e enum, p pseudo, r range, m multirange.
    pub kind: char,
    /// Element type of an array type (0 otherwise).
    pub element: u32,
    /// Base type of a domain (0 otherwise).
    pub base: u32,
    /// Type modifier a domain applies to its base (-1 none).
    pub domain_typmod: i32,
    /// `pg_type.typdelim`: what separates elements in the text of an array of it (`;` for
    /// `box`, `,` for every other built-in type).
    pub delimiter: char,
    /// A composite's attributes (`pg_attribute` of `typrelid`, in attnum order, dropped ones
    /// left out) as `(name, declared type OID, typmod)`; empty for other kinds.
    pub attributes: Vec<(String, u32, i32)>,
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// `pg_attribute.attnum`.
    pub position: i16,
    /// The declared type, as `format_type` prints it (e.g. `numeric(12,2)`, `my_domain`).
    pub type_name: String,
    /// The declared type's OID.
    pub type_oid: u32,
    /// The type modifier (precision/length), after resolving domains (-1 none).
    pub typmod: i32,
    /// Whether the column is NOT NULL.
    pub not_null: bool,
    /// The resolved type chain: the declared type, then bases/elements as needed.
    pub resolved: ResolvedType,
}

/// A column type with domains resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedType {
    /// A scalar type: its OID and name after domain resolution, and its `typtype`.
    Scalar {
        /// Base type OID.
        oid: u32,
        /// Base type name.
        name: String,
        /// `typtype` of the base.
        kind: char,
        /// `typdelim`: the element separator in the text of an array of it.
        delimiter: char,
    },
    /// An array of a resolved element type.
    Array(Box<ResolvedType>),
    /// A composite type (domains over it resolved), with its attributes resolved.
    Composite {
        /// The composite type's OID.
        oid: u32,
        /// Its name, for messages.
        name: String,
        /// Its attributes in order, dropped ones left out (as its values carry them).
        attributes: Vec<ResolvedAttribute>,
    },
}

/// One attribute of a composite type, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedAttribute {
    /// `pg_attribute.attname`.
    pub name: String,
    /// The declared type's OID (a domain's own), which binary values carry per attribute.
    pub type_oid: u32,
    /// The type modifier, after resolving domains (-1 none).
    pub typmod: i32,
    /// The attribute's type resolved.
    pub resolved: ResolvedType,
}

/// A table or view with its columns and keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// `pg_class.oid`.
    pub oid: u32,
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Table, view, …
    pub kind: RelationKind,
    /// The planner's row estimate (`reltuples`, -1 when never analyzed on PG ≥ 14).
    pub row_estimate: i64,
    /// The catalog's estimate of the main fork's size (`relpages`, as of the last VACUUM or
    /// ANALYZE): read without a lock, so discovery never waits behind a table locked by
    /// someone else (`pg_relation_size` would).
    pub size_bytes: i64,
    /// `relreplident`.
    pub replica_identity: ReplicaIdentity,
    /// Columns in attnum order.
    pub columns: Vec<Column>,
    /// Key column names, in key order.
    pub key_columns: Vec<String>,
    /// Where the key comes from.
    pub key_source: KeySource,
    /// The key columns of the replica identity index (`REPLICA IDENTITY USING INDEX`), when
    /// that index is not the primary key; empty otherwise.
    pub identity_columns: Vec<String>,
}

/// What is wrong with a table whose replica identity index lacks primary-key columns
/// (`table` as SQL names it, `missing` those columns), and the statements that fix it.
pub fn identity_without_key(table: &str, missing: &[&str]) -> (String, String) {
    (
        format!(
            "{table} logs UPDATEs and DELETEs by a replica identity index without its primary-key column{} {}, so a DELETE cannot name the row it removes",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", ")
        ),
        format!(
            "ALTER TABLE {table} REPLICA IDENTITY DEFAULT; (the primary key identifies rows) or ALTER TABLE {table} REPLICA IDENTITY FULL;"
        ),
    )
}

impl Table {
    /// The primary-key columns an UPDATE or DELETE does not carry, when the replica identity
    /// is an index other than the primary key that lacks some of them: PostgreSQL then logs
    /// the old row by that index alone, so a DELETE cannot name the document (keyed by the
    /// primary key) it removes.
    pub fn key_columns_not_in_identity(&self) -> Vec<&str> {
        if self.replica_identity != ReplicaIdentity::Index
            || self.key_source != KeySource::PrimaryKey
            || self.identity_columns.is_empty()
        {
            return Vec::new();
        }
        self.key_columns
            .iter()
            .filter(|key| !self.identity_columns.contains(key))
            .map(String::as_str)
            .collect()
    }

    /// `schema-table`, the old source's stream id.
    pub fn stream_id(&self) -> String {
        format!("{}-{}", self.schema, self.name)
    }

    /// `"schema"."table"`, quoted for SQL.
    pub fn qualified_name(&self) -> String {
        format!(
            "{}.{}",
            crate::pg::query::quote_identifier(&self.schema),
            crate::pg::query::quote_identifier(&self.name)
        )
    }
}

/// How users want `numeric` columns written (see `DESIGN.md`, "Values and keys").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NumericMode {
    /// Numbers for `numeric(p,s)` with p ≤ 15, strings otherwise.
    #[default]
    Auto,
    /// Always numbers (precision beyond 15 digits is rounded by GDN).
    Number,
    /// Always strings.
    String,
}

/// Largest precision GDN stores exactly as a double.
const EXACT_DOUBLE_DIGITS: i32 = 15;

impl Column {
    /// How to decode this column's binary values, and whether to select it as `::text`.
    ///
    /// A type with a part that has no binary decoder (an array of ranges, a composite with a
    /// `point` attribute) is selected as `::text` and read as [`TypeCodec::TextForm`], keeping
    /// its structure; a scalar without a decoder is just its text.
    pub fn codec(&self, numeric_mode: NumericMode) -> (TypeCodec, bool) {
        codec_of(&self.resolved, self.typmod, numeric_mode)
    }
}

/// The codec of a resolved type and whether its values must be selected as `::text`.
pub fn codec_of(
    resolved: &ResolvedType,
    typmod: i32,
    numeric_mode: NumericMode,
) -> (TypeCodec, bool) {
    match codec_for(resolved, typmod, numeric_mode) {
        (codec, true) => (codec, false),
        (TypeCodec::Text | TypeCodec::TextDelimited(_), false) => (TypeCodec::Text, true),
        (codec, false) => (TypeCodec::TextForm(Box::new(codec)), true),
    }
}

/// The codec of a type, and whether every part of it has a binary decoder (`false`: only its
/// text form can be read; the codec then describes how to read that text).
fn codec_for(resolved: &ResolvedType, typmod: i32, numeric_mode: NumericMode) -> (TypeCodec, bool) {
    let (oid, name, kind, delimiter) = match resolved {
        ResolvedType::Array(element) => {
            // Element typmods are the column's typmod too (e.g. numeric(5,2)[]).
            let (codec, binary) = codec_for(element, typmod, numeric_mode);
            return (TypeCodec::Array(Box::new(codec)), binary);
        }
        ResolvedType::Composite {
            name, attributes, ..
        } => {
            let mut binary = true;
            let attributes = attributes
                .iter()
                .map(|attribute| {
                    let (codec, attribute_binary) =
                        codec_for(&attribute.resolved, attribute.typmod, numeric_mode);
                    binary &= attribute_binary;
                    CompositeAttribute {
                        name: attribute.name.clone(),
                        type_oid: attribute.type_oid,
                        codec,
                    }
                })
                .collect();
            let composite = CompositeCodec {
                type_name: name.clone(),
                attributes,
            };
            return (TypeCodec::Composite(Box::new(composite)), binary);
        }
        ResolvedType::Scalar {
            oid,
            name,
            kind,
            delimiter,
        } => (*oid, name.as_str(), *kind, *delimiter),
    };
    if kind == 'e' {
        return (TypeCodec::Text, true);
    }
    match scalar_codec(oid, name, typmod, numeric_mode) {
        Some(codec) => (codec, true),
        None if delimiter != ',' => (TypeCodec::TextDelimited(delimiter), false),
        None => (TypeCodec::Text, false),
    }
}

/// The binary decoder of a base type, if pgferry has one.
fn scalar_codec(oid: u32, name: &str, typmod: i32, numeric_mode: NumericMode) -> Option<TypeCodec> {
    Some(match oid {
        16 => TypeCodec::Bool,
        17 => TypeCodec::Bytea,
        18 => TypeCodec::Char,
        19 | 25 | 142 | 1042 | 1043 => TypeCodec::Text,
        20 => TypeCodec::Int8,
        21 => TypeCodec::Int2,
        23 => TypeCodec::Int4,
        26 => TypeCodec::Oid,
        114 => TypeCodec::Json,
        650 | 869 => TypeCodec::Inet,
        700 => TypeCodec::Float4,
        701 => TypeCodec::Float8,
        774 => TypeCodec::MacAddr8,
        790 => TypeCodec::Money { frac_digits: 2 },
        829 => TypeCodec::MacAddr,
        1082 => TypeCodec::Date,
        1083 => TypeCodec::Time,
        1114 => TypeCodec::Timestamp,
        1184 => TypeCodec::TimestampTz,
        1186 => TypeCodec::Interval,
        1266 => TypeCodec::TimeTz,
        1560 => TypeCodec::Bit {
            single: typmod == 1,
        },
        1562 => TypeCodec::VarBit,
        1700 => TypeCodec::Numeric(numeric_out(typmod, numeric_mode)),
        2950 => TypeCodec::Uuid,
        3802 => TypeCodec::Jsonb,
        _ if name == "hstore" => TypeCodec::Hstore,
        _ if name == "citext" => TypeCodec::Text,
        _ => return None,
    })
}

/// Number or string for a numeric column with `typmod`, per the mode.
pub fn numeric_out(typmod: i32, mode: NumericMode) -> NumericOut {
    match mode {
        NumericMode::Number => NumericOut::Number,
        NumericMode::String => NumericOut::String,
        NumericMode::Auto => {
            let precision = if typmod >= 4 {
                ((typmod - 4) >> 16) & 0xFFFF
            } else {
                i32::MAX
            };
            if precision <= EXACT_DOUBLE_DIGITS {
                NumericOut::Number
            } else {
                NumericOut::String
            }
        }
    }
}

fn parse<T: std::str::FromStr>(value: Option<&str>, what: &'static str) -> Result<T, PgError> {
    value
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| PgError::protocol("reading the catalog", format!("unexpected {what}")))
}

/// Reads the selected tables: `schemas` (all when empty), optionally only `table`.
pub async fn discover(
    connection: &mut Connection,
    schemas: &[String],
    table: Option<&str>,
) -> Result<Vec<Table>, PgError> {
    let mut filter = String::from("n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'");
    if !schemas.is_empty() {
        let list: Vec<String> = schemas.iter().map(|schema| quote_literal(schema)).collect();
        filter.push_str(&format!(" AND n.nspname IN ({})", list.join(", ")));
    }
    if let Some(table) = table {
        filter.push_str(&format!(" AND c.relname = {}", quote_literal(table)));
    }
    let relations = connection
        .query(&format!(
            "SELECT c.oid, n.nspname, c.relname, c.relkind, c.reltuples::bigint, \
                    c.relpages::bigint * current_setting('block_size')::bigint, c.relreplident \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition AND {filter} \
             ORDER BY n.nspname, c.relname"
        ))
        .await?;
    if relations.is_empty() {
        return Ok(Vec::new());
    }
    let oids: Vec<&str> = relations.iter().filter_map(|row| row.get(0)).collect();
    let oid_list = oids.join(",");
    let columns = connection
        .query(&format!(
            "SELECT a.attrelid, a.attnum, a.attname, a.atttypid, a.atttypmod, \
                    format_type(a.atttypid, a.atttypmod), a.attnotnull \
             FROM pg_attribute a \
             WHERE a.attrelid IN ({oid_list}) AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attrelid, a.attnum"
        ))
        .await?;
    // An index's key columns are its first `indnkeyatts` (PostgreSQL 11+); the rest are its
    // INCLUDE columns, which identify nothing.
    let key_attributes = if connection.server_version_num().unwrap_or(0) >= 110_000 {
        "i.indnkeyatts"
    } else {
        "i.indnatts"
    };
    let keys = connection
        .query(&format!(
            "SELECT i.indrelid, i.indisprimary, a.attname \
             FROM pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid IN ({oid_list}) AND (i.indisprimary OR i.indisreplident) \
               AND k.ord <= {key_attributes} \
             ORDER BY i.indrelid, i.indisprimary DESC, k.ord"
        ))
        .await?;
    let mut type_oids: Vec<u32> = columns
        .iter()
        .filter_map(|row| row.get(3)?.parse().ok())
        .collect();
    let types = load_types(connection, &mut type_oids).await?;

    let mut tables = Vec::with_capacity(relations.len());
    for row in &relations {
        let oid: u32 = parse(row.get(0), "relation oid")?;
        let kind = match row.get(3) {
            Some("r") => RelationKind::Table,
            Some("p") => RelationKind::PartitionedTable,
            Some("v") => RelationKind::View,
            Some("m") => RelationKind::MaterializedView,
            _ => RelationKind::ForeignTable,
        };
        let replica_identity = match row.get(6) {
            Some("n") => ReplicaIdentity::Nothing,
            Some("f") => ReplicaIdentity::Full,
            Some("i") => ReplicaIdentity::Index,
            _ => ReplicaIdentity::Default,
        };
        let mut table_columns = Vec::new();
        for column in columns.iter().filter(|column| column.get(0) == row.get(0)) {
            let type_oid: u32 = parse(column.get(3), "type oid")?;
            let mut typmod: i32 = parse(column.get(4), "typmod")?;
            let resolved = resolve(type_oid, &types, &mut typmod, 0)?;
            table_columns.push(Column {
                name: column.get(2).unwrap_or_default().to_owned(),
                position: parse(column.get(1), "attnum")?,
                type_name: column.get(5).unwrap_or_default().to_owned(),
                type_oid,
                typmod,
                not_null: column.get(6) == Some("t"),
                resolved,
            });
        }
        let table_keys: Vec<_> = keys.iter().filter(|key| key.get(0) == row.get(0)).collect();
        let primary: Vec<String> = table_keys
            .iter()
            .filter(|key| key.get(1) == Some("t"))
            .filter_map(|key| key.get(2).map(str::to_owned))
            .collect();
        let identity: Vec<String> = table_keys
            .iter()
            .filter(|key| key.get(1) == Some("f"))
            .filter_map(|key| key.get(2).map(str::to_owned))
            .collect();
        let (key_columns, key_source, identity_columns) = if !primary.is_empty() {
            (primary, KeySource::PrimaryKey, identity)
        } else if !identity.is_empty() {
            (identity, KeySource::ReplicaIdentityIndex, Vec::new())
        } else {
            (Vec::new(), KeySource::None, Vec::new())
        };
        tables.push(Table {
            oid,
            schema: row.get(1).unwrap_or_default().to_owned(),
            name: row.get(2).unwrap_or_default().to_owned(),
            kind,
            row_estimate: parse(row.get(4), "row estimate")?,
            size_bytes: parse(row.get(5), "relation size")?,
            replica_identity,
            columns: table_columns,
            key_columns,
            key_source,
            identity_columns,
        });
    }
    Ok(tables)
}

/// A column type known only by the name `format_type` prints (what wal2json reports per
/// column), resolved against the catalog: the declared type's OID, its typmod, and its chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedType {
    /// The declared type's OID.
    pub oid: u32,
    /// The type modifier written in the name (`numeric(20,5)`, `bit(1)`), else -1.
    pub typmod: i32,
    /// Domains resolved, arrays unwrapped.
    pub resolved: ResolvedType,
}

/// What publications publish of some tables: which named publications exist, which tables
/// none of them publishes, and for each table they do publish the contract pgoutput applies
/// (actions, row filter, column list). One answer for `pgferry check`, `pgferry run` and the
/// tap (pgoutput), and for the LOG_BASED copy, which follows the same contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationCoverage {
    /// Named publications `pg_publication` does not have.
    pub absent: Vec<String>,
    /// Tables none of the publications publishes (as `schema.table`, quoted where SQL needs
    /// it), sorted.
    pub missing: Vec<String>,
    /// What the publications publish of each table they publish, in the order asked.
    pub published: Vec<PublishedTable>,
    /// Tables pgferry has just added to its own publication (as `missing` names them): they
    /// join the pipeline.
    pub added: Vec<String>,
}

impl PublicationCoverage {
    /// Whether every named publication exists.
    pub fn exists(&self) -> bool {
        self.absent.is_empty()
    }

    /// The contract for `(schema, table)`, when a publication publishes it.
    pub fn table(&self, schema: &str, table: &str) -> Option<&PublishedTable> {
        self.published
            .iter()
            .find(|published| published.schema == schema && published.table == table)
    }
}

/// The row changes publications send, the union over the publications publishing a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PublishedActions {
    /// `publish` includes `insert`.
    pub insert: bool,
    /// `publish` includes `update`.
    pub update: bool,
    /// `publish` includes `delete`.
    pub delete: bool,
    /// `publish` includes `truncate` (PostgreSQL ≥ 11).
    pub truncate: bool,
}

impl PublishedActions {
    /// Whether every kind of change is published.
    pub fn all(self) -> bool {
        self.insert && self.update && self.delete && self.truncate
    }

    /// The actions as `publish` spells them: `insert, update`.
    pub fn describe(self) -> String {
        [
            (self.insert, "insert"),
            (self.update, "update"),
            (self.delete, "delete"),
            (self.truncate, "truncate"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(", ")
    }
}

/// What the named publications publish of one selected table, combined as PostgreSQL's own
/// subscriber combines them for its initial copy (`tablesync.c`, `fetch_remote_table_info`):
/// row filters joined by `OR`, and no filter when any publication publishing the table has
/// none; one column list, since PostgreSQL ≥ 15 refuses different column lists for a table
/// across the publications of one subscription (`cannot use different column lists for table
/// … in different publications`, in tablesync.c and pgoutput.c).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedTable {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// The named publications that publish it (directly, or through its partitions).
    pub publications: Vec<String>,
    /// The changes they send, together.
    pub actions: PublishedActions,
    /// The combined row filter (`(f1) OR (f2)`), `None` when every row is published.
    pub row_filter: Option<String>,
    /// The listed columns, `None` when every column is published.
    pub columns: Option<Vec<String>>,
    /// The column lists differ between publications: each publication with its list
    /// (`None` = every column). PostgreSQL refuses to stream the table then.
    pub column_conflict: Option<Vec<(String, Option<Vec<String>>)>>,
    /// Some publication publishes the table through its partitions (not via the root) with a
    /// row filter or column list on them: the copy reads the root, so it cannot follow those.
    pub partition_contract: bool,
    /// Some publication publishes its changes under the root's name
    /// (`publish_via_partition_root`).
    pub via_root: bool,
    /// It is a partitioned table.
    pub partitioned: bool,
}

/// Reads what the publications `publications` publish of `tables` (`(schema, table)`); `pgferry
/// check`, `pgferry run` and `pgferry tap` (pgoutput) all decide from this, and the LOG_BASED
/// copy applies its row filters and column lists. A partitioned table counts as published when
/// a publication lists it (`publish_via_partition_root`) or all its leaves.
pub async fn publication_coverage(
    connection: &mut Connection,
    publications: &[String],
    tables: &[(String, String)],
) -> Result<PublicationCoverage, PgError> {
    let names: Vec<String> = publications
        .iter()
        .map(|name| quote_literal(name))
        .collect();
    // `IN (NULL)` matches nothing when no name is given.
    let names = if names.is_empty() {
        "NULL".to_owned()
    } else {
        names.join(", ")
    };
    let existing: Vec<String> = connection
        .query(&format!(
            "SELECT pubname FROM pg_catalog.pg_publication WHERE pubname IN ({names})"
        ))
        .await?
        .iter()
        .filter_map(|row| row.get(0).map(str::to_owned))
        .collect();
    let absent: Vec<String> = publications
        .iter()
        .filter(|name| !existing.contains(name))
        .cloned()
        .collect();
    if tables.is_empty() {
        return Ok(PublicationCoverage {
            added: Vec::new(),
            absent,
            missing: Vec::new(),
            published: Vec::new(),
        });
    }
    let values: Vec<String> = tables
        .iter()
        .map(|(schema, table)| format!("({}, {})", quote_literal(schema), quote_literal(table)))
        .collect();
    let values = values.join(", ");
    let missing = connection
        .query(&format!(
            "WITH wanted AS (SELECT t.schema_name, t.table_name, c.oid, c.relkind \
               FROM (VALUES {values}) AS t (schema_name, table_name) \
               LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = t.schema_name \
               LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name), \
             published AS (SELECT p.schemaname, p.tablename FROM pg_catalog.pg_publication_tables p WHERE p.pubname IN ({names})) \
             SELECT format('%I.%I', w.schema_name, w.table_name) FROM wanted w \
             WHERE NOT EXISTS (SELECT 1 FROM published p WHERE p.schemaname = w.schema_name AND p.tablename = w.table_name) \
             AND NOT (w.relkind = 'p' AND NOT EXISTS ( \
               WITH RECURSIVE tree (relid) AS (SELECT w.oid UNION ALL \
                 SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.relid) \
               SELECT 1 FROM tree JOIN pg_catalog.pg_class lc ON lc.oid = tree.relid \
               JOIN pg_catalog.pg_namespace ln ON ln.oid = lc.relnamespace \
               WHERE lc.relkind = 'r' AND NOT EXISTS (SELECT 1 FROM published p \
                 WHERE p.schemaname = ln.nspname AND p.tablename = lc.relname))) \
             ORDER BY 1"
        ))
        .await?
        .iter()
        .filter_map(|row| row.get(0).map(str::to_owned))
        .collect();
    let published = published_tables(connection, &names, &values).await?;
    let mut contracts = Vec::new();
    for (schema, table) in tables {
        let rows: Vec<&PublicationRow> = published
            .iter()
            .filter(|row| &row.schema == schema && &row.table == table)
            .collect();
        if !rows.is_empty() {
            contracts.push(combine(schema, table, &rows));
        }
    }
    Ok(PublicationCoverage {
        added: Vec::new(),
        absent,
        missing,
        published: contracts,
    })
}

/// One row of `pg_publication_tables` for a selected table (or one of its partitions).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PublicationRow {
    schema: String,
    table: String,
    publication: String,
    /// The row is the selected table itself, not one of its partitions.
    direct: bool,
    /// The selected table is partitioned.
    partitioned: bool,
    actions: PublishedActions,
    via_root: bool,
    row_filter: Option<String>,
    columns: Option<Vec<String>>,
}

/// Reads `pg_publication_tables` and `pg_publication` for the selected tables and their
/// partitions. Row filters and column lists exist from PostgreSQL 15; a column list naming
/// every column (what `attnames` shows from 16 for a table without a list) is no list, as
/// `fetch_remote_table_info` reads it.
async fn published_tables(
    connection: &mut Connection,
    names: &str,
    values: &str,
) -> Result<Vec<PublicationRow>, PgError> {
    let version = connection.server_version_num().unwrap_or(0);
    let truncate = if version >= 110_000 {
        "p.pubtruncate"
    } else {
        "false"
    };
    let via_root = if version >= 130_000 {
        "p.pubviaroot"
    } else {
        "false"
    };
    let (filter, columns) = if version >= 150_000 {
        (
            "pt.rowfilter",
            "CASE WHEN pt.attnames IS NULL OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a \
               JOIN pg_catalog.pg_namespace an ON an.nspname = pt.schemaname \
               JOIN pg_catalog.pg_class ac ON ac.relnamespace = an.oid AND ac.relname = pt.tablename \
               WHERE a.attrelid = ac.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
                 AND a.attname <> ALL (pt.attnames)) \
             THEN NULL ELSE array_to_json(pt.attnames)::text END",
        )
    } else {
        ("NULL::text", "NULL::text")
    };
    let rows = connection
        .query(&format!(
            "WITH RECURSIVE wanted AS (SELECT t.schema_name, t.table_name, c.oid \
               FROM (VALUES {values}) AS t (schema_name, table_name) \
               JOIN pg_catalog.pg_namespace n ON n.nspname = t.schema_name \
               JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name), \
             tree (schema_name, table_name, relid) AS (SELECT schema_name, table_name, oid FROM wanted UNION ALL \
               SELECT tree.schema_name, tree.table_name, i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.relid), \
             members AS (SELECT tree.schema_name, tree.table_name, rn.nspname, rc.relname, tree.relid = w.oid AS direct, \
               wc.relkind = 'p' AS partitioned \
               FROM tree JOIN wanted w ON w.schema_name = tree.schema_name AND w.table_name = tree.table_name \
               JOIN pg_catalog.pg_class wc ON wc.oid = w.oid \
               JOIN pg_catalog.pg_class rc ON rc.oid = tree.relid JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace) \
             SELECT m.schema_name, m.table_name, p.pubname, m.direct, p.pubinsert, p.pubupdate, p.pubdelete, {truncate}, {via_root}, \
               {filter}, {columns}, m.partitioned \
             FROM members m JOIN pg_catalog.pg_publication_tables pt ON pt.schemaname = m.nspname AND pt.tablename = m.relname \
             JOIN pg_catalog.pg_publication p ON p.pubname = pt.pubname \
             WHERE p.pubname IN ({names}) ORDER BY 1, 2, 3, 4 DESC"
        ))
        .await?;
    let flag = |row: &Row, index: usize| row.get(index) == Some("t");
    rows.iter()
        .map(|row| {
            let columns = match row.get(10) {
                None => None,
                Some(json) => Some(serde_json::from_str::<Vec<String>>(json).map_err(|error| {
                    PgError::protocol("reading pg_publication_tables.attnames", error.to_string())
                })?),
            };
            Ok(PublicationRow {
                schema: row.get(0).unwrap_or_default().to_owned(),
                table: row.get(1).unwrap_or_default().to_owned(),
                publication: row.get(2).unwrap_or_default().to_owned(),
                direct: flag(row, 3),
                partitioned: flag(row, 11),
                actions: PublishedActions {
                    insert: flag(row, 4),
                    update: flag(row, 5),
                    delete: flag(row, 6),
                    truncate: flag(row, 7),
                },
                via_root: flag(row, 8),
                row_filter: row.get(9).map(str::to_owned),
                columns,
            })
        })
        .collect()
}

/// Combines the rows of one selected table as PostgreSQL's initial table sync does (see
/// [`PublishedTable`]).
fn combine(schema: &str, table: &str, rows: &[&PublicationRow]) -> PublishedTable {
    let mut publications: Vec<String> = Vec::new();
    let mut actions = PublishedActions::default();
    let mut filters: Vec<String> = Vec::new();
    let mut unfiltered = false;
    let mut lists: Vec<(String, Option<Vec<String>>)> = Vec::new();
    let mut partition_contract = false;
    let mut via_root = false;
    let partitioned = rows.iter().any(|row| row.partitioned);
    for row in rows {
        if !publications.contains(&row.publication) {
            publications.push(row.publication.clone());
        }
        actions.insert |= row.actions.insert;
        actions.update |= row.actions.update;
        actions.delete |= row.actions.delete;
        actions.truncate |= row.actions.truncate;
        via_root |= row.direct && row.via_root;
        if !row.direct {
            // Published through its partitions: their changes carry their own contract.
            partition_contract |= row.row_filter.is_some() || row.columns.is_some();
            continue;
        }
        match &row.row_filter {
            None => unfiltered = true,
            Some(filter) => {
                if !filters.contains(filter) {
                    filters.push(filter.clone());
                }
            }
        }
        if !lists.iter().any(|(name, _)| name == &row.publication) {
            lists.push((row.publication.clone(), row.columns.clone()));
        }
    }
    let row_filter = if unfiltered || filters.is_empty() {
        None
    } else if filters.len() == 1 {
        Some(filters.remove(0))
    } else {
        Some(
            filters
                .iter()
                .map(|filter| format!("({filter})"))
                .collect::<Vec<_>>()
                .join(" OR "),
        )
    };
    let normalized = |list: &Option<Vec<String>>| {
        list.as_ref().map(|columns| {
            let mut sorted = columns.clone();
            sorted.sort();
            sorted
        })
    };
    let differ = lists
        .windows(2)
        .any(|pair| normalized(&pair[0].1) != normalized(&pair[1].1));
    PublishedTable {
        schema: schema.to_owned(),
        table: table.to_owned(),
        publications,
        actions,
        row_filter,
        columns: if differ {
            None
        } else {
            lists.first().and_then(|(_, list)| list.clone())
        },
        column_conflict: differ.then_some(lists),
        partition_contract,
        via_root,
        partitioned,
    }
}

/// Resolves type names such as `numeric(20,5)`, `character varying(40)`, `mood[]` or
/// `sales.money_amount`, so changes of columns added or retyped after the catalog was read
/// can be decoded by the type they carry. A name the server does not know is an error.
pub async fn resolve_type_names(
    connection: &mut Connection,
    names: &[&str],
) -> Result<Vec<NamedType>, PgError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let list: Vec<String> = names.iter().map(|name| quote_literal(name)).collect();
    let rows = connection
        .query(&format!(
            "SELECT n.ord, n.name::regtype::oid FROM unnest(ARRAY[{}]::text[]) WITH ORDINALITY AS n(name, ord) ORDER BY n.ord",
            list.join(", ")
        ))
        .await?;
    let mut oids = Vec::with_capacity(rows.len());
    for row in &rows {
        oids.push(parse::<u32>(row.get(1), "type oid")?);
    }
    if oids.len() != names.len() {
        return Err(PgError::protocol(
            "resolving type names",
            format!("{} names gave {} types", names.len(), oids.len()),
        ));
    }
    let mut wanted = oids.clone();
    let types = load_types(connection, &mut wanted).await?;
    names
        .iter()
        .zip(oids)
        .map(|(name, oid)| {
            let mut typmod = typmod_from_name(name);
            let resolved = resolve(oid, &types, &mut typmod, 0)?;
            Ok(NamedType {
                oid,
                typmod,
                resolved,
            })
        })
        .collect()
}

/// The typmod a type name spells out, for the types whose decoding depends on it: numeric's
/// precision and scale (`numeric(20,5)` → `(20 << 16 | 5) + 4`) and bit's length; else -1.
pub fn typmod_from_name(name: &str) -> i32 {
    let base = name.trim_end_matches("[]");
    let Some((head, rest)) = base.split_once('(') else {
        return -1;
    };
    let Some(arguments) = rest.strip_suffix(')') else {
        return -1;
    };
    let numbers: Vec<i32> = arguments
        .split(',')
        .filter_map(|part| part.trim().parse().ok())
        .collect();
    match (head.trim(), numbers.as_slice()) {
        ("numeric", [precision]) => (precision << 16) + 4,
        ("numeric", [precision, scale]) => ((precision << 16) | (scale & 0xFFFF)) + 4,
        ("bit", [length]) => *length,
        _ => -1,
    }
}

/// Loads `pg_type` rows for `oids` and, transitively, their domain bases and array elements.
async fn load_types(
    connection: &mut Connection,
    oids: &mut Vec<u32>,
) -> Result<HashMap<u32, TypeInfo>, PgError> {
    let mut types = HashMap::new();
    // Each round resolves one more level of domains/elements; PostgreSQL nests them shallowly.
    for _ in 0..16 {
        oids.retain(|oid| *oid != 0 && !types.contains_key(oid));
        oids.sort_unstable();
        oids.dedup();
        if oids.is_empty() {
            break;
        }
        let list = oids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let rows = connection
            .query(&format!("SELECT oid, typname, typtype, typelem, typbasetype, typtypmod, typrelid, typdelim FROM pg_type WHERE oid IN ({list})"))
            .await?;
        oids.clear();
        let mut composites = Vec::new();
        for row in rows {
            let info = TypeInfo {
                oid: parse(row.get(0), "type oid")?,
                name: row.get(1).unwrap_or_default().to_owned(),
                kind: row
                    .get(2)
                    .and_then(|kind| kind.chars().next())
                    .unwrap_or('b'),
                element: parse(row.get(3), "typelem")?,
                base: parse(row.get(4), "typbasetype")?,
                domain_typmod: parse(row.get(5), "typtypmod")?,
                delimiter: row
                    .get(7)
                    .and_then(|delimiter| delimiter.chars().next())
                    .unwrap_or(','),
                attributes: Vec::new(),
            };
            let relid: u32 = parse(row.get(6), "typrelid")?;
            if info.kind == 'c' && relid != 0 {
                composites.push((relid, info.oid));
            }
            oids.push(info.element);
            oids.push(info.base);
            types.insert(info.oid, info);
        }
        // A composite's attributes, whose types the next round loads (nested composites too).
        if !composites.is_empty() {
            let list = composites
                .iter()
                .map(|(relid, _)| relid.to_string())
                .collect::<Vec<_>>()
                .join(",");
            let rows = connection
                .query(&format!(
                    "SELECT attrelid, attname, atttypid, atttypmod FROM pg_attribute \
                     WHERE attrelid IN ({list}) AND attnum > 0 AND NOT attisdropped \
                     ORDER BY attrelid, attnum"
                ))
                .await?;
            for row in rows {
                let relid: u32 = parse(row.get(0), "attrelid")?;
                let type_oid: u32 = parse(row.get(2), "attribute type oid")?;
                let attribute = (
                    row.get(1).unwrap_or_default().to_owned(),
                    type_oid,
                    parse(row.get(3), "atttypmod")?,
                );
                let owner = composites.iter().find(|(rel, _)| *rel == relid);
                if let Some(info) = owner.and_then(|(_, oid)| types.get_mut(oid)) {
                    info.attributes.push(attribute);
                }
                oids.push(type_oid);
            }
        }
    }
    Ok(types)
}

fn resolve(
    oid: u32,
    types: &HashMap<u32, TypeInfo>,
    typmod: &mut i32,
    depth: u32,
) -> Result<ResolvedType, PgError> {
    let info = types.get(&oid).filter(|_| depth < 32).ok_or_else(|| {
        PgError::protocol(
            "reading the catalog",
            format!("type {oid} could not be resolved"),
        )
    })?;
    if info.kind == 'd' {
        if *typmod < 0 {
            *typmod = info.domain_typmod;
        }
        return resolve(info.base, types, typmod, depth + 1);
    }
    // Array types have typelem set and are named with a leading underscore by convention;
    // fixed-length types like `name` or `point` also have typelem but subscript differently.
    if info.element != 0 && info.name.starts_with('_') {
        return Ok(ResolvedType::Array(Box::new(resolve(
            info.element,
            types,
            typmod,
            depth + 1,
        )?)));
    }
    if info.kind == 'c' {
        let attributes = info
            .attributes
            .iter()
            .map(|(name, type_oid, typmod)| {
                let mut typmod = *typmod;
                let resolved = resolve(*type_oid, types, &mut typmod, depth + 1)?;
                Ok(ResolvedAttribute {
                    name: name.clone(),
                    type_oid: *type_oid,
                    typmod,
                    resolved,
                })
            })
            .collect::<Result<Vec<_>, PgError>>()?;
        return Ok(ResolvedType::Composite {
            oid: info.oid,
            name: info.name.clone(),
            attributes,
        });
    }
    Ok(ResolvedType::Scalar {
        oid: info.oid,
        name: info.name.clone(),
        kind: info.kind,
        delimiter: info.delimiter,
    })
}

/// For each of the tables `oids` (with its partitions), the columns older rows hold a value
/// of without it being written: `ADD COLUMN … DEFAULT` since PostgreSQL 11 keeps the value in
/// the catalog (`atthasmissing`) and writes no row changes, so a stream never carries it for
/// those rows. One query for all, in `oids`' order.
pub async fn columns_with_missing_values(
    connection: &mut Connection,
    oids: &[u32],
) -> Result<Vec<Vec<String>>, PgError> {
    if oids.is_empty() {
        return Ok(Vec::new());
    }
    let list: Vec<String> = oids.iter().map(|oid| format!("{oid}::oid")).collect();
    let rows = connection
        .query(&format!(
            "SELECT DISTINCT o.n, a.attname FROM unnest(ARRAY[{}]) WITH ORDINALITY AS o (relid, n) \
             JOIN pg_catalog.pg_attribute a ON a.attrelid IN \
               (SELECT relid FROM pg_catalog.pg_partition_tree(o.relid) UNION SELECT o.relid) \
             WHERE a.atthasmissing AND NOT a.attisdropped ORDER BY 1, 2",
            list.join(", ")
        ))
        .await?;
    let mut columns = vec![Vec::new(); oids.len()];
    for row in &rows {
        let position: usize = parse(row.get(0), "table position")?;
        if let (Some(slot), Some(name)) = (columns.get_mut(position.wrapping_sub(1)), row.get(1)) {
            slot.push(name.to_owned());
        }
    }
    Ok(columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_columns_are_numbers_up_to_15_digits_in_auto_mode() {
        let typmod = |precision: i32, scale: i32| ((precision << 16) | scale) + 4;
        assert_eq!(typmod_from_name("numeric(15,2)"), typmod(15, 2));
        assert_eq!(typmod_from_name("numeric(20)"), typmod(20, 0));
        assert_eq!(typmod_from_name("numeric(5,2)[]"), typmod(5, 2));
        assert_eq!(typmod_from_name("bit(1)"), 1);
        assert_eq!(typmod_from_name("numeric"), -1);
        assert_eq!(typmod_from_name("character varying(40)"), -1);
        assert_eq!(typmod_from_name("timestamp(3) with time zone"), -1);
        assert_eq!(
            numeric_out(typmod(15, 2), NumericMode::Auto),
            NumericOut::Number
        );
        assert_eq!(
            numeric_out(typmod(16, 2), NumericMode::Auto),
            NumericOut::String
        );
        assert_eq!(numeric_out(-1, NumericMode::Auto), NumericOut::String);
        assert_eq!(numeric_out(-1, NumericMode::Number), NumericOut::Number);
        assert_eq!(
            numeric_out(typmod(5, 0), NumericMode::String),
            NumericOut::String
        );
    }

    #[test]
    fn unknown_types_are_read_as_text() {
        let column = Column {
            name: "p".into(),
            position: 1,
            type_name: "point".into(),
            type_oid: 600,
            typmod: -1,
            not_null: false,
            resolved: ResolvedType::Scalar {
                oid: 600,
                name: "point".into(),
                kind: 'b',
                delimiter: ',',
            },
        };
        assert_eq!(column.codec(NumericMode::Auto), (TypeCodec::Text, true));
        let bits = Column {
            resolved: ResolvedType::Array(Box::new(ResolvedType::Scalar {
                oid: 1560,
                name: "bit".into(),
                kind: 'b',
                delimiter: ',',
            })),
            typmod: 1,
            ..column
        };
        assert_eq!(
            bits.codec(NumericMode::Auto),
            (
                TypeCodec::Array(Box::new(TypeCodec::Bit { single: true })),
                false
            )
        );
    }

    fn scalar(oid: u32, name: &str, delimiter: char) -> ResolvedType {
        ResolvedType::Scalar {
            oid,
            name: name.into(),
            kind: 'b',
            delimiter,
        }
    }

    fn attribute(name: &str, type_oid: u32, resolved: ResolvedType) -> ResolvedAttribute {
        ResolvedAttribute {
            name: name.into(),
            type_oid,
            typmod: -1,
            resolved,
        }
    }

    #[test]
    fn arrays_and_composites_with_parts_without_a_decoder_are_read_from_their_text() {
        let codec = |resolved: ResolvedType| codec_of(&resolved, -1, NumericMode::Auto);
        let range = ResolvedType::Scalar {
            oid: 3904,
            name: "int4range".into(),
            kind: 'r',
            delimiter: ',',
        };
        assert_eq!(codec(range.clone()), (TypeCodec::Text, true));
        assert_eq!(
            codec(ResolvedType::Array(Box::new(range.clone()))),
            (
                TypeCodec::TextForm(Box::new(TypeCodec::Array(Box::new(TypeCodec::Text)))),
                true
            ),
            "int4range[] is an array of the ranges' text, not one string"
        );
        assert_eq!(
            codec(ResolvedType::Array(Box::new(scalar(603, "box", ';')))),
            (
                TypeCodec::TextForm(Box::new(TypeCodec::Array(Box::new(
                    TypeCodec::TextDelimited(';')
                )))),
                true
            ),
            "box[] separates its elements with ;"
        );
        let pair = ResolvedType::Composite {
            oid: 16_384,
            name: "pair".into(),
            attributes: vec![
                attribute("n", 23, scalar(23, "int4", ',')),
                attribute("t", 25, scalar(25, "text", ',')),
            ],
        };
        let pair_codec = TypeCodec::Composite(Box::new(CompositeCodec {
            type_name: "pair".into(),
            attributes: vec![
                CompositeAttribute {
                    name: "n".into(),
                    type_oid: 23,
                    codec: TypeCodec::Int4,
                },
                CompositeAttribute {
                    name: "t".into(),
                    type_oid: 25,
                    codec: TypeCodec::Text,
                },
            ],
        }));
        assert_eq!(codec(pair.clone()), (pair_codec.clone(), false));
        assert_eq!(
            codec(ResolvedType::Array(Box::new(pair))),
            (TypeCodec::Array(Box::new(pair_codec)), false),
            "composites of decodable attributes are read in binary"
        );
        let with_range = ResolvedType::Composite {
            oid: 16_390,
            name: "span".into(),
            attributes: vec![attribute("r", 3904, range)],
        };
        let (codec, text_cast) = codec(ResolvedType::Array(Box::new(with_range)));
        assert!(text_cast);
        assert!(
            matches!(&codec, TypeCodec::TextForm(inner) if matches!(**inner, TypeCodec::Array(_))),
            "{codec:?}"
        );
    }
}
