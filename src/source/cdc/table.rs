//! The streamed tables and their document plans, which follow the row shape each change
//! carries (columns added, dropped or retyped since the catalog was read).

use std::collections::HashMap;
use std::sync::Arc;

use super::row::{Field, RowChange};
use super::side::SideConnection;
use super::CdcError;
use crate::decode::wal2json::Action;
use crate::gdn::document::DocumentPlan;
use crate::pg::catalog::{Column, NumericMode, Table};
use crate::pg::Lsn;
use crate::target::replica::ReplicaPlan;

/// One streamed table: how its rows become documents and where they go.
///
/// The plan follows the row shape the changes carry: wal2json names every column with its
/// type, so a column added, dropped or retyped since the catalog was read is decoded by the
/// type it had when the change was made (an INSERT is the whole row as it was then).
#[derive(Debug, Clone)]
pub struct CdcTable {
    /// Rows → documents (same attribute names and keys as the snapshot).
    pub plan: DocumentPlan,
    /// The collection (or, for a PostgreSQL destination, the target table's id).
    pub collection: Arc<str>,
    /// For a PostgreSQL destination: rows are kept as text values instead of documents.
    pub replica: Option<ReplicaPlan>,
    /// The catalog entry the plans are built on (its columns replaced as shapes change).
    table: Table,
    /// `(column, type name)` of the current plan, as the changes spell them.
    shape: Vec<(String, String)>,
}

impl CdcTable {
    /// A streamed table planned from its catalog entry.
    pub fn new(table: &Table, plan: DocumentPlan, collection: Arc<str>) -> CdcTable {
        CdcTable {
            shape: table
                .columns
                .iter()
                .map(|column| (column.name.clone(), column.type_name.clone()))
                .collect(),
            table: table.clone(),
            plan,
            collection,
            replica: None,
        }
    }

    /// A streamed table whose rows go to a PostgreSQL destination.
    pub fn for_replica(table: &Table, plan: DocumentPlan, id: Arc<str>) -> CdcTable {
        let mut streamed = CdcTable::new(table, plan, id);
        streamed.replica = Some(replica_plan(table));
        streamed
    }

    /// `(column, type name)` of the current plan.
    pub(super) fn shape(&self) -> &[(String, String)] {
        &self.shape
    }

    /// The row shape this change needs when the current plan does not fit it, else `None`.
    pub(super) fn shape_for(&self, change: &RowChange<'_>) -> Option<Vec<(String, String)>> {
        let fits = |column: &Field<'_>, position: Option<usize>| {
            let known = position
                .and_then(|position| self.shape.get(position))
                .filter(|(name, _)| name == column.name)
                .or_else(|| self.shape.iter().find(|(name, _)| name == column.name));
            known.is_some_and(|(_, type_name)| {
                column.type_name.is_empty() || type_name == column.type_name
            })
        };
        let columns_fit = change
            .columns
            .iter()
            .enumerate()
            .all(|(position, column)| fits(column, Some(position)));
        let identity_fits = change.identity.iter().all(|column| fits(column, None));
        let exact = change.action != Action::Insert || change.columns.len() == self.shape.len();
        if columns_fit && identity_fits && exact {
            return None;
        }
        let spelled = |column: &Field<'_>, before: Option<&String>| {
            let type_name = if column.type_name.is_empty() {
                before.cloned().unwrap_or_default()
            } else {
                column.type_name.to_string()
            };
            (column.name.to_string(), type_name)
        };
        let mut shape: Vec<(String, String)> = if change.action == Action::Insert {
            // An INSERT carries every column the row had: that is the shape.
            change
                .columns
                .iter()
                .map(|column| spelled(column, self.type_of(column.name)))
                .collect()
        } else {
            // An UPDATE may leave out unchanged TOASTed columns: keep the ones it lacks.
            let mut shape = self.shape.clone();
            for column in &change.columns {
                let entry = spelled(column, self.type_of(column.name));
                match shape.iter_mut().find(|(name, _)| *name == entry.0) {
                    Some(existing) => *existing = entry,
                    None => shape.push(entry),
                }
            }
            shape
        };
        for column in &change.identity {
            if !shape.iter().any(|(name, _)| name == column.name) {
                shape.push(spelled(column, self.type_of(column.name)));
            }
        }
        Some(shape)
    }

    /// The catalog entry the current plan was built on.
    pub(super) fn table(&self) -> &Table {
        &self.table
    }

    fn type_of(&self, column: &str) -> Option<&String> {
        self.shape
            .iter()
            .find(|(name, _)| name == column)
            .map(|(_, type_name)| type_name)
    }

    /// Re-plans for `shape`, with column types resolved by name through `types`.
    pub(super) async fn reshape(
        &mut self,
        shape: Vec<(String, String)>,
        side: &mut SideConnection,
        numeric_mode: NumericMode,
        lsn: Lsn,
    ) -> Result<(), CdcError> {
        let names: Vec<&str> = shape
            .iter()
            .map(|(_, type_name)| type_name.as_str())
            .collect();
        let resolved = side.resolve_types(&names).await.map_err(|error| {
            if error.is_transient() {
                CdcError::Postgres(error)
            } else {
                CdcError::Unsupported(format!(
                    "a change of {} at {lsn} has column types ({}) that cannot be resolved: {error}\nHINT: a type dropped since the change was made cannot be decoded; restart with a fresh copy of this table",
                    self.plan.table(),
                    names.join(", ")
                ))
            }
        })?;
        let mut table = self.table.clone();
        table.columns = shape
            .iter()
            .zip(resolved)
            .enumerate()
            .map(|(index, ((name, type_name), named))| Column {
                name: name.clone(),
                position: i16::try_from(index + 1).unwrap_or(i16::MAX),
                type_name: type_name.clone(),
                type_oid: named.oid,
                typmod: named.typmod,
                not_null: false,
                resolved: named.resolved,
            })
            .collect();
        self.plan = DocumentPlan::new(&table, numeric_mode, false)
            .map_err(|source| CdcError::Document { lsn, source })?;
        if self.replica.is_some() {
            self.replica = Some(replica_plan(&table));
        }
        self.table = table;
        self.shape = shape;
        Ok(())
    }
}

/// The text-value plan of a table replicated into PostgreSQL.
fn replica_plan(table: &Table) -> ReplicaPlan {
    ReplicaPlan::new(
        &table.qualified_name(),
        table
            .columns
            .iter()
            .map(|column| column.name.clone())
            .collect(),
        table.key_columns.clone(),
    )
}

/// The streamed tables, found by a change's schema and table name without allocating.
#[derive(Debug, Default)]
pub struct CdcTables {
    by_name: HashMap<String, CdcTable>,
    scratch: String,
}

impl CdcTables {
    /// Adds (or replaces) `schema.table`.
    pub fn insert(&mut self, schema: &str, table: &str, streamed: CdcTable) {
        let mut key = String::with_capacity(schema.len() + table.len() + 1);
        Self::write_key(&mut key, schema, table);
        self.by_name.insert(key, streamed);
    }

    /// Every table.
    pub fn values(&self) -> impl Iterator<Item = &CdcTable> {
        self.by_name.values()
    }

    /// How many tables are streamed.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no table is streamed.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// `schema` NUL `table`: NUL cannot occur in PostgreSQL identifiers, so the pair maps to
    /// one string.
    fn write_key(out: &mut String, schema: &str, table: &str) {
        out.clear();
        out.push_str(schema);
        out.push('\0');
        out.push_str(table);
    }

    /// The streamed table `schema.table`, if it is one.
    pub(super) fn get_mut(&mut self, schema: &str, table: &str) -> Option<&mut CdcTable> {
        Self::write_key(&mut self.scratch, schema, table);
        self.by_name.get_mut(self.scratch.as_str())
    }
}
