//! A TRUNCATE of leaf partitions in GDN: the parent's collection holds its rows without saying
//! which partition held each, so the collection is read through in pages, each document's
//! partition-key values are asked of the source against the truncated leaves' constraints,
//! and the documents that meet one are deleted.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::value::RawValue;

use super::changes::{gdn_error, ChangeWriter};
use super::document::DocumentPlan;
use crate::decode::json_out::write_string;
use crate::destination::{ChangeError, PartitionPicker};
use crate::gdn::cursor::KeysetScan;
use crate::gdn::keys::document_attribute_names;
use crate::pg::partitions::Member;

/// Documents read per page while looking for a truncated partition's rows.
const PAGE: u64 = 1000;

impl ChangeWriter<'_> {
    /// Removes the documents of collection `id` (rows converted by `plan`) that truncated
    /// partitions held, as `picker` answers from their partition-key `columns`.
    pub async fn remove_partition_rows(
        &self,
        id: &Arc<str>,
        plan: &DocumentPlan,
        columns: &[&str],
        picker: &mut impl PartitionPicker,
    ) -> Result<u64, ChangeError> {
        let client = self.client;
        let table = plan.table();
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
        let mut scan = KeysetScan::new(client, id, PAGE, 60, self.max_retries);
        let mut removed = 0u64;
        while let Some(page) = scan
            .next_page()
            .await
            .map_err(|source| gdn_error(table, id, source))?
        {
            let (rows, document_keys) = partition_rows(&page.documents, &read, &attributes)
                .map_err(|detail| {
                    ChangeError::Unsupported(format!(
                        "collection {:?} holds a document pgferry cannot read while removing a truncated partition's rows of {}: {detail}",
                        &**id,
                        table
                    ))
                })?;
            let members = picker
                .members(&rows, keys)
                .await
                .map_err(ChangeError::Source)?;
            let doomed: Vec<&str> = members
                .iter()
                .filter(|member| !shared || is_own(plan, member, &document_keys))
                .filter_map(|member| document_keys.get(member.position).map(String::as_str))
                .collect();
            if doomed.is_empty() {
                continue;
            }
            if let Some((key, failure)) = client
                .delete_keys(id, &doomed, self.max_retries, self.wait_for_sync)
                .await
                .map_err(|source| gdn_error(table, id, source))?
            {
                return Err(ChangeError::Refused {
                    operation: "delete",
                    table: table.to_owned(),
                    collection: id.to_string(),
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
fn is_own(plan: &DocumentPlan, member: &Member, document_keys: &[String]) -> bool {
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
