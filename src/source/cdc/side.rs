//! A plain connection beside the replication stream, for the catalog questions streaming
//! asks (type names, heartbeats).

use std::collections::HashMap;

use crate::pg::catalog::{columns_with_missing_values, resolve_type_names, NamedType, Table};
use crate::pg::partitions::{self, LeafPartition, Member, PartitionColumns};
use crate::pg::query::quote_literal;
use crate::pg::{ConnectOptions, Connection, PgError};

/// A plain connection beside the replication stream: resolves the types of columns the
/// catalog read at start does not know, and emits heartbeats. Connected on first use,
/// re-connected after a failure.
pub struct SideConnection {
    options: ConnectOptions,
    connection: Option<Connection>,
    /// Type names (as changes spell them) already resolved.
    types: HashMap<String, NamedType>,
    /// `format_type(oid, typmod)` already asked.
    formatted: HashMap<(u32, i32), String>,
}

impl SideConnection {
    /// A side connection to the server `options` name (not connected yet).
    pub fn new(options: ConnectOptions) -> SideConnection {
        SideConnection {
            options,
            connection: None,
            types: HashMap::new(),
            formatted: HashMap::new(),
        }
    }

    /// Remembers the types of a catalog entry's columns, so the usual shapes need no query.
    pub fn learn(&mut self, table: &Table) {
        for column in &table.columns {
            self.types
                .entry(column.type_name.clone())
                .or_insert_with(|| NamedType {
                    oid: column.type_oid,
                    typmod: column.typmod,
                    resolved: column.resolved.clone(),
                });
        }
    }

    async fn connection(&mut self) -> Result<&mut Connection, PgError> {
        if self.connection.is_none() {
            self.connection = Some(Connection::connect(&self.options).await?);
        }
        self.connection.as_mut().ok_or(PgError::Closed {
            during: "connecting",
        })
    }

    /// Forgets the connection after a transient failure, so the next question connects again.
    fn after<T>(&mut self, result: Result<T, PgError>) -> Result<T, PgError> {
        if result.as_ref().is_err_and(PgError::is_transient) {
            self.connection = None;
        }
        result
    }

    /// Which of `rows` (a JSON array of objects keyed by column name) the truncated `leaves`
    /// of `parent` held, with the text of their `keys` columns.
    pub(super) async fn partition_members(
        &mut self,
        parent: (&str, &str),
        leaves: &[&LeafPartition],
        keys: &[&str],
        rows: &str,
    ) -> Result<Vec<Member>, PgError> {
        let result =
            partitions::members(self.connection().await?, parent, leaves, keys, rows).await;
        self.after(result)
    }

    /// The leaf partition `schema.name` of the partitioned table `root_oid`, if it is one,
    /// with the columns the tree's partition keys read.
    pub(super) async fn leaf_of(
        &mut self,
        root_oid: u32,
        schema: &str,
        name: &str,
    ) -> Result<Option<(LeafPartition, PartitionColumns)>, PgError> {
        let connection = self.connection().await?;
        let result = match partitions::leaf_of(connection, root_oid, schema, name).await {
            Ok(Some(leaf)) => partitions::key_columns(connection, root_oid)
                .await
                .map(|columns| Some((leaf, columns))),
            other => other.map(|_| None),
        };
        self.after(result)
    }

    /// Which of `columns` of table `oid` (or of its partitions) older rows hold a default of
    /// without it being written (see [`columns_with_missing_values`]).
    pub(super) async fn columns_with_missing_values(
        &mut self,
        oid: u32,
        columns: &[String],
    ) -> Result<Vec<String>, PgError> {
        let result = columns_with_missing_values(self.connection().await?, &[oid]).await;
        Ok(self
            .after(result)?
            .into_iter()
            .flatten()
            .filter(|name| columns.contains(name))
            .collect())
    }

    /// The types of `names`, in order, from the cache or the server.
    pub(super) async fn resolve_types(
        &mut self,
        names: &[&str],
    ) -> Result<Vec<NamedType>, PgError> {
        let mut missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|name| !self.types.contains_key(*name))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            let result = resolve_type_names(self.connection().await?, &missing).await;
            if result.as_ref().is_err_and(PgError::is_transient) {
                self.connection = None;
            }
            for (name, named) in missing.iter().zip(result?) {
                self.types.insert((*name).to_owned(), named);
            }
        }
        names
            .iter()
            .map(|name| {
                self.types.get(*name).cloned().ok_or_else(|| {
                    PgError::protocol("resolving type names", format!("{name} was not resolved"))
                })
            })
            .collect()
    }

    /// The type of each `(spelling, oid)`, with the spelling that names it exactly. Without an
    /// oid the spelling is taken as it is; with one, the spelling or, failing that, the
    /// spelling in double quotes (wal2json writes `format_type`'s `"char"` as `char`, which
    /// alone names `character`) must name the type of that oid.
    pub(super) async fn resolve_spellings(
        &mut self,
        spelled: &[(&str, Option<u32>)],
    ) -> Result<Vec<(String, NamedType)>, PgError> {
        let mut exact = Vec::with_capacity(spelled.len());
        for (spelling, oid) in spelled {
            let Some(oid) = oid else {
                exact.push((*spelling).to_owned());
                continue;
            };
            let quoted = format!("\"{}\"", spelling.replace('"', "\"\""));
            let known = [*spelling, quoted.as_str()]
                .into_iter()
                .find(|name| self.types.get(*name).is_some_and(|named| named.oid == *oid));
            let name = match known {
                Some(name) => name.to_owned(),
                None => {
                    let sql = format!(
                        "SELECT CASE WHEN to_regtype({plain}) = {oid} THEN {plain} WHEN to_regtype({quoted_literal}) = {oid} THEN {quoted_literal} ELSE format_type({oid}, NULL) END",
                        plain = quote_literal(spelling),
                        quoted_literal = quote_literal(&quoted),
                    );
                    let result = self.connection().await?.query_one(&sql).await;
                    if result.as_ref().is_err_and(PgError::is_transient) {
                        self.connection = None;
                    }
                    result?
                        .and_then(|row| row.get(0).map(str::to_owned))
                        .ok_or_else(|| {
                            PgError::protocol(
                                "resolving type names",
                                format!("no type has oid {oid} ({spelling})"),
                            )
                        })?
                }
            };
            exact.push(name);
        }
        let names: Vec<&str> = exact.iter().map(String::as_str).collect();
        let types = self.resolve_types(&names).await?;
        Ok(exact.into_iter().zip(types).collect())
    }

    /// `format_type(oid, typmod)` of each pair, in order (pgoutput names types by oid).
    pub(super) async fn format_types(
        &mut self,
        types: &[(u32, i32)],
    ) -> Result<Vec<String>, PgError> {
        let mut missing: Vec<(u32, i32)> = types
            .iter()
            .copied()
            .filter(|pair| !self.formatted.contains_key(pair))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            let oids: Vec<String> = missing.iter().map(|(oid, _)| oid.to_string()).collect();
            let typmods: Vec<String> = missing
                .iter()
                .map(|(_, typmod)| typmod.to_string())
                .collect();
            let sql = format!(
                "SELECT format_type(t.oid, t.typmod) FROM unnest(ARRAY[{}]::oid[], ARRAY[{}]::int[]) WITH ORDINALITY AS t(oid, typmod, ord) ORDER BY t.ord",
                oids.join(","),
                typmods.join(",")
            );
            let result = self.connection().await?.query(&sql).await;
            if result.as_ref().is_err_and(PgError::is_transient) {
                self.connection = None;
            }
            let rows = result?;
            if rows.len() != missing.len() {
                return Err(PgError::protocol(
                    "naming column types",
                    format!("{} types gave {} names", missing.len(), rows.len()),
                ));
            }
            for (pair, row) in missing.into_iter().zip(rows) {
                self.formatted
                    .insert(pair, row.get(0).unwrap_or_default().to_owned());
            }
        }
        Ok(types
            .iter()
            .map(|pair| self.formatted.get(pair).cloned().unwrap_or_default())
            .collect())
    }

    /// Writes a non-transactional logical message, which the slot sees as progress.
    pub(super) async fn heartbeat(&mut self) -> Result<(), PgError> {
        let result = self
            .connection()
            .await?
            .query_one("SELECT pg_logical_emit_message(false, 'pgferry_heartbeat', '')")
            .await;
        if result.is_err() {
            self.connection = None;
        }
        result.map(drop)
    }

    /// Closes the connection, if open.
    pub async fn close(&mut self) {
        if let Some(connection) = self.connection.take() {
            connection.close().await;
        }
    }
}

impl std::fmt::Debug for SideConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SideConnection")
            .field("address", &self.options.address())
            .field("connected", &self.connection.is_some())
            .finish()
    }
}
