//! Pending row operations, coalesced per collection (or target table) and key, and taken as
//! one flush of [`TableChanges`] for the destination to write before the watermark may move.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::time::Instant;

use super::row::RowChange;
use super::table::CdcTable;
use super::CdcError;
use crate::decode::wal2json::Action;
use crate::destination::TableChanges;
use crate::pg::Lsn;

#[derive(Debug)]
enum Op {
    Upsert(Vec<u8>),
    Patch(Vec<u8>),
    Delete,
    /// A key change whose new image lacks unchanged TOASTed columns: the new document is the
    /// old one (read at flush time, before the old key is deleted) with this patch on top.
    MoveFrom(String, Vec<u8>),
}

#[derive(Debug, Default)]
struct CollectionOps {
    table: String,
    ops: HashMap<String, Op>,
}

/// Pending operations, coalesced per collection and key.
#[derive(Debug, Default)]
pub(super) struct Pending {
    collections: HashMap<Arc<str>, CollectionOps>,
    pub(super) documents: usize,
    pub(super) bytes: usize,
    pub(super) since: Option<Instant>,
}

impl Pending {
    pub(super) fn is_empty(&self) -> bool {
        self.documents == 0
    }

    /// The pending operation of `key`, if any.
    fn op(&self, collection: &Arc<str>, key: &str) -> Option<&Op> {
        self.collections.get(collection)?.ops.get(key)
    }

    fn put(
        &mut self,
        collection: &Arc<str>,
        table: &str,
        key: String,
        op: Op,
    ) -> Result<(), CdcError> {
        if !self.collections.contains_key(collection) {
            self.collections
                .insert(Arc::clone(collection), CollectionOps::default());
        }
        let Some(entry) = self.collections.get_mut(collection) else {
            return Err(CdcError::Merge(
                "a collection vanished from the batch".into(),
            ));
        };
        if entry.table.is_empty() {
            entry.table = table.to_owned();
        }
        let size = match &op {
            Op::Upsert(doc) | Op::Patch(doc) | Op::MoveFrom(_, doc) => doc.len(),
            Op::Delete => key.len(),
        };
        let merged = match (entry.ops.remove(&key), op) {
            (Some(Op::Upsert(doc)), Op::Patch(patch)) => Op::Upsert(merge_objects(&doc, &patch)?),
            (Some(Op::Patch(earlier)), Op::Patch(patch)) => {
                Op::Patch(merge_objects(&earlier, &patch)?)
            }
            (Some(Op::MoveFrom(from, earlier)), Op::Patch(patch)) => {
                Op::MoveFrom(from, merge_objects(&earlier, &patch)?)
            }
            (_, op) => op,
        };
        entry.ops.insert(key, merged);
        self.documents += 1;
        self.bytes += size;
        self.since.get_or_insert_with(Instant::now);
        Ok(())
    }
}

/// Overlays the attributes of JSON object `patch` on JSON object `base`.
fn merge_objects(base: &[u8], patch: &[u8]) -> Result<Vec<u8>, CdcError> {
    let parse = |bytes: &[u8]| {
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(bytes).map_err(
            |error| {
                CdcError::Merge(format!(
                    "{error} in {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(120)])
                ))
            },
        )
    };
    let mut merged = parse(base)?;
    merged.extend(parse(patch)?);
    serde_json::to_vec(&merged).map_err(|error| CdcError::Merge(error.to_string()))
}

/// Turns one row change into pending operations on its table's collection.
pub(super) fn apply_row(
    change: &RowChange<'_>,
    lsn: Lsn,
    table: &CdcTable,
    pending: &mut Pending,
) -> Result<(), CdcError> {
    let name = table.name();
    match change.action {
        Action::Delete => {
            if change.identity.is_empty() {
                return Err(CdcError::Unsupported(format!(
                    "a DELETE on {name} at {lsn} carries no old key: the table has no primary key or replica identity\nHINT: ALTER TABLE {name} REPLICA IDENTITY USING INDEX <unique index>; (or add a primary key)"
                )));
            }
            let key = table.rows.key_from_image(&change.identity_pairs(), lsn)?;
            pending.put(&table.collection, name, key, Op::Delete)?;
        }
        _ => {
            let mut doc = Vec::with_capacity(256);
            let (key, complete) = table
                .rows
                .encode_image(&change.column_pairs(), &mut doc, lsn)?;
            // An INSERT is the whole row (a column it lacks did not exist then); only an
            // UPDATE leaves out unchanged TOASTed columns.
            let complete = complete || change.action == Action::Insert;
            if !change.identity.is_empty() {
                let old_key = table.rows.key_from_image(&change.identity_pairs(), lsn)?;
                if old_key != key {
                    // The key changed: the old row goes away, and a partial new image
                    // takes its missing (unchanged TOASTed) values from the old row.
                    let moved = if complete {
                        Op::Upsert(doc)
                    } else {
                        match pending.op(&table.collection, &old_key) {
                            Some(Op::Upsert(base)) => Op::Upsert(merge_objects(base, &doc)?),
                            // Earlier pending changes of the old key travel with it.
                            Some(Op::Patch(earlier)) => {
                                Op::MoveFrom(old_key.clone(), merge_objects(earlier, &doc)?)
                            }
                            Some(Op::MoveFrom(from, earlier)) => {
                                Op::MoveFrom(from.clone(), merge_objects(earlier, &doc)?)
                            }
                            Some(Op::Delete) | None => Op::MoveFrom(old_key.clone(), doc),
                        }
                    };
                    pending.put(&table.collection, name, old_key, Op::Delete)?;
                    return pending.put(&table.collection, name, key, moved);
                }
            }
            let op = if complete {
                Op::Upsert(doc)
            } else {
                Op::Patch(doc)
            };
            pending.put(&table.collection, name, key, op)?;
        }
    }
    Ok(())
}

impl Pending {
    /// Takes every pending operation, split per collection into the kinds of write, and
    /// leaves the batch empty.
    pub(super) fn take_changes(&mut self) -> Vec<(String, TableChanges)> {
        let collections = std::mem::take(&mut self.collections);
        *self = Pending::default();
        collections
            .into_iter()
            .map(|(collection, ops)| {
                let mut changes = TableChanges {
                    id: collection,
                    ..TableChanges::default()
                };
                for (key, op) in ops.ops {
                    match op {
                        Op::Upsert(doc) => changes.upserts.push((key, doc)),
                        Op::Patch(doc) => changes.patches.push((key, doc)),
                        Op::Delete => changes.deletes.push(key),
                        Op::MoveFrom(from, doc) => changes.moves.push((key, from, doc)),
                    }
                }
                (ops.table, changes)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalescing_keeps_the_last_write_per_key() {
        let collection: Arc<str> = Arc::from("c");
        let mut pending = Pending::default();
        pending
            .put(
                &collection,
                "t",
                "1".into(),
                Op::Upsert(br#"{"_key":"1","a":1,"b":"big"}"#.to_vec()),
            )
            .unwrap();
        pending
            .put(
                &collection,
                "t",
                "1".into(),
                Op::Patch(br#"{"_key":"1","a":2}"#.to_vec()),
            )
            .unwrap();
        pending
            .put(
                &collection,
                "t",
                "2".into(),
                Op::Upsert(br#"{"_key":"2"}"#.to_vec()),
            )
            .unwrap();
        pending
            .put(&collection, "t", "2".into(), Op::Delete)
            .unwrap();
        pending
            .put(
                &collection,
                "t",
                "3".into(),
                Op::Patch(br#"{"_key":"3","a":1}"#.to_vec()),
            )
            .unwrap();
        pending
            .put(
                &collection,
                "t",
                "3".into(),
                Op::Patch(br#"{"_key":"3","b":2}"#.to_vec()),
            )
            .unwrap();
        let ops = &pending.collections[&collection].ops;
        match &ops["1"] {
            Op::Upsert(doc) => {
                let value: serde_json::Value = serde_json::from_slice(doc).unwrap();
                assert_eq!(
                    value,
                    serde_json::json!({"_key": "1", "a": 2, "b": "big"}),
                    "a TOAST-less update keeps the big value"
                );
            }
            other => panic!("expected an upsert, got {other:?}"),
        }
        assert!(
            matches!(ops["2"], Op::Delete),
            "insert then delete is a delete"
        );
        match &ops["3"] {
            Op::Patch(doc) => {
                let value: serde_json::Value = serde_json::from_slice(doc).unwrap();
                assert_eq!(value, serde_json::json!({"_key": "3", "a": 1, "b": 2}));
            }
            other => panic!("expected a patch, got {other:?}"),
        }
        assert_eq!(pending.documents, 6);
        assert!(matches!(pending.op(&collection, "1"), Some(Op::Upsert(_))));
        assert!(pending.op(&collection, "4").is_none());
    }
}

#[cfg(test)]
#[path = "pending_props.rs"]
mod props;
