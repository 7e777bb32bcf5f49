//! TRUNCATE in the stream: a table's truncate empties its collection (or target table); a
//! truncate of leaf partitions removes only the rows those leaves held.
//!
//! The destination holds a partitioned table's rows in one collection without saying which
//! partition held each, and the leaves' rows are gone from the source by now. So the
//! destination reads itself through, and this module answers, for each row (its
//! partition-key values, as the parent's row type), whether it meets one of the truncated
//! leaves' partition constraints ([`LeafPicker`]); the rows that do are removed. What is
//! pending is written first, so the destination holds exactly the rows as of the truncate
//! when it is read.

use std::collections::HashMap;
use std::sync::Arc;

use super::side::SideConnection;
use super::table::{CdcTable, CdcTables, LeafOf};
use super::{CdcError, Streamer};
use crate::destination::PartitionPicker;
use crate::pg::partitions::{LeafPartition, Member};
use crate::pg::{Lsn, PgError};

/// What one TRUNCATE message does to one destination table.
enum Truncation {
    /// The table itself was truncated: everything goes.
    Whole(CdcTable),
    /// Only these leaves of it were: their rows go.
    Leaves(CdcTable, Vec<Arc<LeafOf>>),
}

impl Streamer<'_, '_> {
    /// The relations `names` (`(schema, table)`) were truncated together: what is pending is
    /// written first, then each streamed table they belong to loses the rows they held.
    pub(super) async fn truncate(
        &mut self,
        tables: &mut CdcTables,
        names: &[(&str, &str)],
        side: &mut SideConnection,
    ) -> Result<(), CdcError> {
        let mut order: Vec<Arc<str>> = Vec::new();
        let mut by_table: HashMap<Arc<str>, Truncation> = HashMap::new();
        for (schema, name) in names {
            let Some(entry) = tables.get_mut(schema, name) else {
                continue;
            };
            if self.in_copy_now(entry, Lsn::MAX)? {
                continue;
            }
            let id = Arc::clone(&entry.collection);
            if !by_table.contains_key(&id) {
                order.push(Arc::clone(&id));
            }
            let truncation = match (by_table.remove(&id), &entry.partition) {
                (Some(Truncation::Whole(table)), _) => Truncation::Whole(table),
                (_, None) => Truncation::Whole(entry.clone()),
                (Some(Truncation::Leaves(table, mut leaves)), Some(leaf)) => {
                    leaves.push(Arc::clone(leaf));
                    Truncation::Leaves(table, leaves)
                }
                (None, Some(leaf)) => Truncation::Leaves(entry.clone(), vec![Arc::clone(leaf)]),
            };
            by_table.insert(id, truncation);
        }
        if order.is_empty() {
            return Ok(());
        }
        self.flush().await?;
        for id in order {
            match by_table.remove(&id) {
                Some(Truncation::Whole(table)) => self.empty(&table).await?,
                Some(Truncation::Leaves(table, leaves)) => {
                    self.remove_leaves(&table, &leaves, side).await?
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Empties `table`'s collection or target table.
    async fn empty(&mut self, table: &CdcTable) -> Result<(), CdcError> {
        self.context
            .destination
            .truncate(table.name(), &table.collection)
            .await?;
        Ok(())
    }

    /// Removes the rows `leaves` (partitions of `table`) held from `table`'s destination.
    async fn remove_leaves(
        &mut self,
        table: &CdcTable,
        leaves: &[Arc<LeafOf>],
        side: &mut SideConnection,
    ) -> Result<(), CdcError> {
        let parent = (table.table().schema.as_str(), table.table().name.as_str());
        let constraints: Vec<&LeafPartition> = leaves.iter().map(|leaf| &leaf.leaf).collect();
        let partition_columns = &leaves[0].columns;
        let columns: Vec<&str> = table
            .rows
            .columns()
            .iter()
            .map(String::as_str)
            .filter(|column| partition_columns.reads(column))
            .collect();
        let names: Vec<String> = leaves
            .iter()
            .map(|leaf| format!("{}.{}", leaf.leaf.schema, leaf.leaf.name))
            .collect();
        let mut picker = LeafPicker {
            side,
            parent,
            leaves: &constraints,
        };
        let removed = self
            .context
            .destination
            .remove_partition_rows(
                table.name(),
                &table.collection,
                &table.rows,
                &columns,
                &mut picker,
            )
            .await?;
        tracing::info!(table = %table.name(), partitions = %names.join(", "), removed, "partitions truncated: removed the rows they held, the other partitions' rows stay");
        Ok(())
    }
}

/// Answers which destination rows the truncated leaves held, by asking the source.
struct LeafPicker<'a> {
    side: &'a mut SideConnection,
    parent: (&'a str, &'a str),
    leaves: &'a [&'a LeafPartition],
}

impl PartitionPicker for LeafPicker<'_> {
    async fn members(&mut self, rows: &str, keys: &[&str]) -> Result<Vec<Member>, PgError> {
        self.side
            .partition_members(self.parent, self.leaves, keys, rows)
            .await
    }
}
