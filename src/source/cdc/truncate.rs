//! TRUNCATE in the stream: a table's truncate empties its collection (or target table); a
//! truncate of leaf partitions removes only the rows those leaves held.
//!
//! The destination holds a partitioned table's rows in one collection without saying which
//! partition held each, and the leaves' rows are gone from the source by now. So the
//! destination is read through, each row (its partition-key values, as the parent's row type)
//! is asked of the source against the truncated leaves' partition constraints, and the rows
//! that meet one are removed. What is pending is written first, so the destination holds
//! exactly the rows as of the truncate when it is read.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::value::RawValue;

use super::side::SideConnection;
use super::table::{CdcTable, CdcTables, LeafOf};
use super::{CdcError, Streamer};
use crate::decode::json_out::write_string;
use crate::destination::postgres::{ReplicaError, RowPicker};
use crate::gdn::client::{retrying, GdnClient, GdnError};
use crate::gdn::cursor::KeysetScan;
use crate::gdn::keys::document_attribute_names;
use crate::pg::partitions::{LeafPartition, Member};
use crate::pg::{Lsn, PgError};

/// Documents read per page while looking for a truncated partition's rows.
const PAGE: u64 = 1000;

/// What one TRUNCATE message does to one destination table.
enum Truncation {
    /// The table itself was truncated: everything goes.
    Whole(CdcTable),
    /// Only these leaves of it were: their rows go.
    Leaves(CdcTable, Vec<Arc<LeafOf>>),
}

impl Streamer<'_> {
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
        if let Some(replica) = self.context.replica {
            replica
                .truncate(&table.collection)
                .await
                .map_err(|error| CdcError::Replica(Box::new(error)))?;
        }
        if let Some(client) = self.context.client {
            retrying(self.context.settings.max_retries, || {
                client.truncate_collection(&table.collection)
            })
            .await
            .map_err(|source| gdn_error(table, source))?;
        }
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
            .plan
            .columns()
            .iter()
            .map(String::as_str)
            .filter(|column| partition_columns.reads(column))
            .collect();
        let names: Vec<String> = leaves
            .iter()
            .map(|leaf| format!("{}.{}", leaf.leaf.schema, leaf.leaf.name))
            .collect();
        let removed = if let Some(replica) = self.context.replica {
            let mut picker = LeafPicker {
                side,
                parent,
                leaves: &constraints,
                table: table.plan.table(),
            };
            replica
                .remove_rows(&table.collection, &columns, &mut picker)
                .await
                .map_err(|error| CdcError::Replica(Box::new(error)))?
        } else if let Some(client) = self.context.client {
            self.remove_documents(client, table, &constraints, &columns, side)
                .await?
        } else {
            0
        };
        tracing::info!(table = %table.plan.table(), partitions = %names.join(", "), removed, "partitions truncated: removed the rows they held, the other partitions' rows stay");
        Ok(())
    }

    /// Removes the documents of `table`'s collection that the truncated `leaves` held.
    async fn remove_documents(
        &mut self,
        client: &GdnClient,
        table: &CdcTable,
        leaves: &[&LeafPartition],
        columns: &[&str],
        side: &mut SideConnection,
    ) -> Result<u64, CdcError> {
        let plan = &table.plan;
        let parent = (table.table().schema.as_str(), table.table().name.as_str());
        let key_columns = plan.key_columns();
        let attributes: HashMap<&str, String> = plan
            .columns()
            .iter()
            .map(String::as_str)
            .zip(document_attribute_names(
                plan.columns(),
                &key_columns
                    .iter()
                    .map(|key| (*key).to_owned())
                    .collect::<Vec<_>>(),
            ))
            .collect();
        // Tables share the collection by request: a document is this table's when its key is
        // the one its key columns make (asked of the source with the rest).
        let shared = plan.key_prefix().is_some();
        let mut read: Vec<&str> = columns.to_vec();
        if shared {
            for key in &key_columns {
                if !read.contains(key) {
                    read.push(key);
                }
            }
        }
        let keys: &[&str] = if shared { &key_columns } else { &[] };
        let settings = self.context.settings;
        let mut scan = KeysetScan::new(client, &table.collection, PAGE, 60, settings.max_retries);
        let mut removed = 0u64;
        while let Some(page) = scan
            .next_page()
            .await
            .map_err(|source| gdn_error(table, source))?
        {
            let (rows, document_keys) = partition_rows(&page.documents, &read, &attributes)
                .map_err(|detail| {
                    CdcError::Unsupported(format!(
                        "collection {:?} holds a document pgferry cannot read while removing a truncated partition's rows of {}: {detail}",
                        &*table.collection,
                        plan.table()
                    ))
                })?;
            let members = side
                .partition_members(parent, leaves, keys, &rows)
                .await
                .map_err(CdcError::Postgres)?;
            let doomed: Vec<&str> = members
                .iter()
                .filter(|member| !shared || is_own(plan, member, &document_keys))
                .filter_map(|member| document_keys.get(member.position).map(String::as_str))
                .collect();
            if doomed.is_empty() {
                continue;
            }
            if let Some((key, failure)) = client
                .delete_keys(
                    &table.collection,
                    &doomed,
                    settings.max_retries,
                    settings.wait_for_sync,
                )
                .await
                .map_err(|source| gdn_error(table, source))?
            {
                return Err(CdcError::Refused {
                    operation: "delete",
                    table: plan.table().to_owned(),
                    collection: table.collection.to_string(),
                    key,
                    error_num: failure.error_num,
                    message: failure.message,
                });
            }
            removed += doomed.len() as u64;
        }
        Ok(removed)
    }
}

/// Whether `member`'s key columns make the key of the document it was read from (the
/// document is `plan`'s table's, not another's in a shared collection).
fn is_own(
    plan: &crate::destination::gdn::document::DocumentPlan,
    member: &Member,
    document_keys: &[String],
) -> bool {
    let Some(parts) = member.keys.iter().cloned().collect::<Option<Vec<String>>>() else {
        return false;
    };
    document_keys
        .get(member.position)
        .is_some_and(|key| plan.key_of(parts).as_str() == key)
}

/// A page of documents as the JSON array of objects the source reads (the `columns`, under
/// their column names, with the values exactly as stored), and the documents' keys.
fn partition_rows(
    documents: &[Box<RawValue>],
    columns: &[&str],
    attributes: &HashMap<&str, String>,
) -> Result<(String, Vec<String>), String> {
    let mut rows = String::from("[");
    let mut keys = Vec::with_capacity(documents.len());
    let mut buffer = Vec::new();
    for (index, document) in documents.iter().enumerate() {
        let fields: HashMap<&str, &RawValue> =
            serde_json::from_str(document.get()).map_err(|error| error.to_string())?;
        let key = fields
            .get("_key")
            .and_then(|key| serde_json::from_str::<String>(key.get()).ok())
            .ok_or_else(|| "a document has no string \"_key\"".to_owned())?;
        keys.push(key);
        if index > 0 {
            rows.push(',');
        }
        rows.push('{');
        let mut first = true;
        for column in columns {
            let Some(value) = attributes
                .get(column)
                .and_then(|name| fields.get(name.as_str()))
            else {
                continue;
            };
            if !first {
                rows.push(',');
            }
            first = false;
            buffer.clear();
            write_string(column, &mut buffer);
            rows.push_str(&String::from_utf8_lossy(&buffer));
            rows.push(':');
            rows.push_str(value.get());
        }
        rows.push('}');
    }
    rows.push(']');
    Ok((rows, keys))
}

fn gdn_error(table: &CdcTable, source: GdnError) -> CdcError {
    CdcError::Gdn {
        table: table.plan.table().to_owned(),
        collection: table.collection.to_string(),
        source: Box::new(source),
    }
}

/// Picks the target rows the truncated leaves held, by asking the source.
struct LeafPicker<'a> {
    side: &'a mut SideConnection,
    parent: (&'a str, &'a str),
    leaves: &'a [&'a LeafPartition],
    table: &'a str,
}

impl RowPicker for LeafPicker<'_> {
    async fn pick(&mut self, rows: &str) -> Result<Vec<usize>, ReplicaError> {
        let members = self
            .side
            .partition_members(self.parent, self.leaves, &[], rows)
            .await
            .map_err(|error| asking(self.table, error))?;
        Ok(members.into_iter().map(|member| member.position).collect())
    }
}

/// A failure of the source while it decides which rows a truncated partition held.
fn asking(table: &str, source: PgError) -> ReplicaError {
    ReplicaError::Postgres {
        during: "asking the source which rows a truncated partition held, for",
        table: table.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_become_rows_of_the_partition_columns_under_their_column_names() {
        let documents: Vec<Box<RawValue>> = [
            r#"{"_key":"1","__key":7,"a":1,"b":"x","big":123456789012345678901234567890}"#,
            r#"{"_key":"2","a":null}"#,
        ]
        .iter()
        .map(|text| RawValue::from_string((*text).to_owned()).unwrap())
        .collect();
        let attributes: HashMap<&str, String> = [
            ("_key", "__key".to_owned()),
            ("a", "a".into()),
            ("big", "big".into()),
        ]
        .into_iter()
        .collect();
        let (rows, keys) = partition_rows(&documents, &["_key", "a", "big"], &attributes).unwrap();
        assert_eq!(
            rows, r#"[{"_key":7,"a":1,"big":123456789012345678901234567890},{"a":null}]"#,
            "the column named _key is read from its document attribute __key; numbers stay exact"
        );
        assert_eq!(keys, ["1", "2"]);
    }

    #[test]
    fn a_document_without_a_key_is_an_error() {
        let documents = vec![RawValue::from_string(r#"{"a":1}"#.to_owned()).unwrap()];
        assert!(partition_rows(&documents, &["a"], &HashMap::new()).is_err());
    }
}
