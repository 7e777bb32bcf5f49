//! The streamed tables and their row plans (the destination's), which follow the row shape
//! each change carries (columns added, dropped or retyped since the catalog was read).

use std::collections::HashMap;
use std::sync::Arc;

use super::row::{same_type_spelling, Field, RowChange};
use super::side::SideConnection;
use super::CdcError;
use crate::decode::wal2json::Action;
use crate::destination::RowPlan;
use crate::pg::catalog::{Column, NumericMode, Table};
use crate::pg::partitions::{LeafPartition, PartitionColumns};
use crate::pg::Lsn;

/// A column of a change's row shape: name, type as the change spelled it, and the type's oid
/// when the change gave it.
pub(super) type SpelledColumn = (String, String, Option<u32>);

/// One streamed table: how its rows become the destination's and where they go.
///
/// The plan follows the row shape the changes carry: wal2json names every column with its
/// type, so a column added, dropped or retyped since the catalog was read is decoded by the
/// type it had when the change was made (an INSERT is the whole row as it was then).
#[derive(Debug, Clone)]
pub struct CdcTable {
    /// Rows → the destination's rows (made by the destination; the same keys as the copy).
    pub rows: RowPlan,
    /// The collection (or, for a PostgreSQL destination, the target table's id).
    pub collection: Arc<str>,
    /// `schema.table`, for messages.
    name: String,
    /// The catalog entry the plans are built on (its columns replaced as shapes change).
    table: Table,
    /// `(column, type name)` of the current plan, as the changes spell them.
    shape: Vec<(String, String)>,
    /// Set on the entry of a leaf partition's name: a TRUNCATE under this name empties only
    /// the leaf's rows of the parent's collection.
    pub partition: Option<Arc<LeafOf>>,
    /// For a table that joined the pipeline: its copy's consistent point; changes of
    /// transactions committed before it are in the copy and are skipped.
    pub copied_at: Option<Lsn>,
    /// For a table joining the pipeline whose copy runs beside the stream: every change is
    /// skipped, and comes again from the slot once the copy is durable (the pipeline holds the
    /// watermark until then).
    pub copying: bool,
}

/// A leaf partition whose changes stream under its own name into its parent's collection.
#[derive(Debug)]
pub struct LeafOf {
    /// The leaf and its partition constraint.
    pub leaf: LeafPartition,
    /// The columns the parent's partition constraints read.
    pub columns: Arc<PartitionColumns>,
}

impl CdcTable {
    /// A streamed table planned from its catalog entry (`rows`: the destination's plan).
    pub fn new(table: &Table, rows: RowPlan, collection: Arc<str>) -> CdcTable {
        CdcTable {
            name: format!("{}.{}", table.schema, table.name),
            shape: table
                .columns
                .iter()
                .map(|column| (column.name.clone(), column.type_name.clone()))
                .collect(),
            table: table.clone(),
            rows,
            collection,
            partition: None,
            copied_at: None,
            copying: false,
        }
    }

    /// The entry for a leaf partition of this (partitioned) table.
    pub fn for_leaf(&self, leaf: LeafOf) -> CdcTable {
        let mut entry = self.clone();
        entry.partition = Some(Arc::new(leaf));
        entry
    }

    /// `schema.table`, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `(column, type name)` of the current plan.
    pub(super) fn shape(&self) -> &[(String, String)] {
        &self.shape
    }

    /// The row shape this change needs when the current plan does not fit it, else `None`:
    /// `(column, type as spelled, type oid when the change gave it)`.
    pub(super) fn shape_for(&self, change: &RowChange<'_>) -> Option<Vec<SpelledColumn>> {
        let fits = |column: &Field<'_>, position: Option<usize>| {
            let known = position
                .and_then(|position| self.shape.get(position))
                .filter(|(name, _)| name == column.name)
                .or_else(|| self.shape.iter().find(|(name, _)| name == column.name));
            known.is_some_and(|(_, type_name)| {
                column.type_name.is_empty() || same_type_spelling(type_name, column.type_name)
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
        let spelled = |column: &Field<'_>, before: Option<&String>| match before {
            Some(before)
                if column.type_name.is_empty() || same_type_spelling(before, column.type_name) =>
            {
                (column.name.to_string(), before.clone(), None)
            }
            _ => (
                column.name.to_string(),
                column.type_name.to_string(),
                column.type_oid,
            ),
        };
        let mut shape: Vec<SpelledColumn> = if change.action == Action::Insert {
            // An INSERT carries every column the row had: that is the shape.
            change
                .columns
                .iter()
                .map(|column| spelled(column, self.type_of(column.name)))
                .collect()
        } else {
            // An UPDATE may leave out unchanged TOASTed columns: keep the ones it lacks.
            let mut shape: Vec<SpelledColumn> = self
                .shape
                .iter()
                .map(|(name, type_name)| (name.clone(), type_name.clone(), None))
                .collect();
            for column in &change.columns {
                let entry = spelled(column, self.type_of(column.name));
                match shape.iter_mut().find(|(name, _, _)| *name == entry.0) {
                    Some(existing) => *existing = entry,
                    None => shape.push(entry),
                }
            }
            shape
        };
        for column in &change.identity {
            if !shape.iter().any(|(name, _, _)| name == column.name) {
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

    /// Re-plans for `shape`, with column types resolved by name (and oid, where the change
    /// gave it) through the side connection; the plan keeps each type's exact spelling.
    pub(super) async fn reshape(
        &mut self,
        shape: Vec<SpelledColumn>,
        change_keys: &[&str],
        side: &mut SideConnection,
        numeric_mode: NumericMode,
        lsn: Lsn,
    ) -> Result<(), CdcError> {
        let columns: Vec<&str> = shape.iter().map(|(name, _, _)| name.as_str()).collect();
        let key_columns = keys_in_shape(&self.table.key_columns, &columns, change_keys)
            .map_err(|missing| {
                CdcError::Unsupported(format!(
                    "a change of {} at {lsn} has no key column {} (the table's key now is ({}); the change's columns are ({})): a key column was renamed or dropped after the change was made, and the change does not say which column took its place\nHINT: the key cannot be read from this change; copy the table again (delete the state file and drop the slot, then run){}",
                    self.name,
                    missing.join(", "),
                    self.table.key_columns.join(", "),
                    columns.join(", "),
                    self.rows.key_rename_hint()
                ))
            })?;
        let names: Vec<&str> = shape
            .iter()
            .map(|(_, type_name, _)| type_name.as_str())
            .collect();
        let spelled: Vec<(&str, Option<u32>)> = shape
            .iter()
            .map(|(_, type_name, oid)| (type_name.as_str(), *oid))
            .collect();
        let resolved = side.resolve_spellings(&spelled).await.map_err(|error| {
            if error.is_transient() {
                CdcError::Postgres(error)
            } else {
                CdcError::Unsupported(format!(
                    "a change of {} at {lsn} has column types ({}) that cannot be resolved: {error}\nHINT: a type dropped since the change was made cannot be decoded; restart with a fresh copy of this table",
                    self.name,
                    names.join(", ")
                ))
            }
        })?;
        let shape: Vec<(String, String)> = shape
            .into_iter()
            .zip(&resolved)
            .map(|((name, _, _), (exact, _))| (name, exact.clone()))
            .collect();
        let mut table = self.table.clone();
        if key_columns != table.key_columns {
            tracing::info!(table = %self.name, %lsn, from = ?table.key_columns, to = ?key_columns, "the key columns were renamed: the change keys by their names as of its time");
            table.key_columns = key_columns;
        }
        table.columns = shape
            .iter()
            .zip(resolved)
            .enumerate()
            .map(|(index, ((name, type_name), (_, named)))| Column {
                name: name.clone(),
                position: i16::try_from(index + 1).unwrap_or(i16::MAX),
                type_name: type_name.clone(),
                type_oid: named.oid,
                typmod: named.typmod,
                not_null: false,
                resolved: named.resolved,
            })
            .collect();
        self.rows = self.rows.replan(&table, numeric_mode, lsn)?;
        self.table = table;
        self.shape = shape;
        Ok(())
    }
}

/// The key columns for a row shape: the table's own, or, where some are not in `columns` (a
/// key column renamed after the change), those of `change_keys` (the key as of the change)
/// that are not among the table's, in their place and order. `Err` names the missing ones.
fn keys_in_shape(
    keys: &[String],
    columns: &[&str],
    change_keys: &[&str],
) -> Result<Vec<String>, Vec<String>> {
    let missing: Vec<&String> = keys
        .iter()
        .filter(|key| !columns.contains(&key.as_str()))
        .collect();
    if missing.is_empty() {
        return Ok(keys.to_vec());
    }
    let replacements: Vec<&str> = change_keys
        .iter()
        .copied()
        .filter(|key| columns.contains(key) && !keys.iter().any(|known| known == key))
        .collect();
    if replacements.len() != missing.len() {
        return Err(missing.into_iter().cloned().collect());
    }
    let mut replacements = replacements.into_iter();
    Ok(keys
        .iter()
        .map(|key| {
            if columns.contains(&key.as_str()) {
                key.clone()
            } else {
                replacements.next().unwrap_or(key).to_owned()
            }
        })
        .collect())
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

    /// Every table, to change.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut CdcTable> {
        self.by_name.values_mut()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renamed_key_column_is_found_by_the_changes_own_key() {
        let keys = vec!["a".to_owned(), "z".to_owned()];
        assert_eq!(
            keys_in_shape(&keys, &["a", "v", "z"], &[]),
            Ok(keys.clone()),
            "nothing renamed"
        );
        assert_eq!(
            keys_in_shape(&keys, &["a", "v", "old_z"], &["a", "old_z"]),
            Ok(vec!["a".to_owned(), "old_z".to_owned()]),
            "the key order of the table is kept"
        );
        assert_eq!(
            keys_in_shape(&keys, &["a", "v", "old_z"], &[]),
            Err(vec!["z".to_owned()]),
            "a change that does not say is an error naming the column"
        );
    }
}
