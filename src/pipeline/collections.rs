//! Which collection each table writes, so that two tables never share one by accident.
//!
//! The naming rule (`collection_name`, default `{table}`) can give two tables one name:
//! `public.t` and `s1.t` both become `t`, and their documents would overwrite and delete each
//! other's. Such a run is refused at start with the fix. Tables share a collection only where
//! the config says so (`target_collection`, or one `collection` given to several tables); then
//! each document's `_key` starts with its table (`<schema>.<table>:<key>`), so equal keys of two
//! tables stay two documents. A keyless table cannot share: its reload empties the collection.
//!
//! Before a copy the collections are made ready (created, or emptied for a keyless table's
//! reload) several at once: at a distance that is a round trip or two each.

use std::collections::BTreeMap;

use crate::gdn::client::{retrying, GdnClient, GdnError};

/// One table's destination, as the config resolves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCollection {
    /// The table, as messages show it (`"public"."t"`).
    pub table: String,
    /// `schema.table` unquoted: the key prefix when the collection is shared.
    pub prefix: String,
    /// The collection it writes.
    pub collection: String,
    /// The config named this collection for it (`target_collection` or a per-table
    /// `collection`), rather than the naming rule.
    pub requested: bool,
    /// The table has no key (FULL_TABLE reloads of it empty the collection first).
    pub keyless: bool,
}

/// Refuses a collection name GDN does not take (a letter first, then letters, digits, `_` and
/// `-`, at most 256 bytes), naming the table, the rule and the per-table fix, before anything is
/// created.
pub fn check_names(tables: &[TableCollection]) -> Result<(), String> {
    match tables
        .iter()
        .find(|table| !crate::gdnlite::keys::is_valid_collection_name(&table.collection))
    {
        None => Ok(()),
        Some(table) => Err(format!(
            "table {} would write collection {:?}, a name GDN does not take (a letter first, then letters, digits, _ and -, at most 256 bytes)\nHINT: give the table a collection of its own: \"tables\": [{{\"table\": {}, \"collection\": \"<name>\"}}], or change \"collection_name\"",
            table.table,
            table.collection,
            serde_json::Value::String(table.table.clone())
        )),
    }
}

/// The key prefix of each table (in order): `Some` where it shares its collection by request;
/// an error naming the tables and the fix where tables would share one by accident.
pub fn key_prefixes(tables: &[TableCollection]) -> Result<Vec<Option<String>>, String> {
    let mut by_collection: BTreeMap<&str, Vec<&TableCollection>> = BTreeMap::new();
    for table in tables {
        by_collection
            .entry(table.collection.as_str())
            .or_default()
            .push(table);
    }
    for (collection, sharing) in &by_collection {
        if sharing.len() < 2 {
            continue;
        }
        let names: Vec<&str> = sharing.iter().map(|table| table.table.as_str()).collect();
        if sharing.iter().any(|table| !table.requested) {
            let example = sharing
                .iter()
                .find(|table| !table.requested)
                .map_or("", |table| table.prefix.as_str());
            return Err(format!(
                "tables {} would all write collection {collection:?}: the naming rule gives them one name, and their documents would overwrite and delete each other's\nHINT: name collections by schema too, \"collection_name\": \"{{schema}}_{{table}}\" in the destination, or give a table its own: \"tables\": [{{\"table\": \"{example}\", \"collection\": \"<name>\"}}]; to put them in one collection on purpose, name it for each table (their keys are then prefixed by the table)",
                names.join(", ")
            ));
        }
        if let Some(keyless) = sharing.iter().find(|table| table.keyless) {
            return Err(format!(
                "table {} has no key and shares collection {collection:?} with {}: a keyless table is reloaded by emptying its collection, which would delete the other tables' documents\nHINT: give it a collection of its own, or a primary key",
                keyless.table,
                names
                    .iter()
                    .filter(|name| **name != keyless.table)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    Ok(tables
        .iter()
        .map(|table| {
            (by_collection[table.collection.as_str()].len() > 1).then(|| table.prefix.clone())
        })
        .collect())
}

/// Collections made ready at once: at a distance each takes a round trip or two (does it
/// exist, create it, empty it), which one table after another added seconds before the copy
/// of a few dozen tables.
const READY_AT_ONCE: usize = 16;

/// Creates every collection `tasks` write that does not exist yet (each once, several at
/// once) and empties those of keyless tables before their reload (a keyless table's collection
/// is its own: [`key_prefixes`] refuses sharing it).
pub(crate) async fn make_ready(
    client: &GdnClient,
    tasks: &[super::TableTask],
    create_stream: bool,
    max_retries: u32,
) -> Result<(), GdnError> {
    // Collection → the keyless table that empties it first, if any.
    let mut collections: BTreeMap<&str, Option<&str>> = BTreeMap::new();
    for task in tasks {
        let emptied_for = collections.entry(&task.target.collection).or_default();
        if task.target.keyless {
            *emptied_for = Some(&task.target.table);
        }
    }
    let collections: Vec<(&str, Option<&str>)> = collections.into_iter().collect();
    for group in collections.chunks(READY_AT_ONCE) {
        let ready = group.iter().map(|&(collection, emptied_for)| {
            make_one_ready(client, collection, emptied_for, create_stream, max_retries)
        });
        futures_util::future::try_join_all(ready).await?;
    }
    Ok(())
}

/// Creates `collection` if it does not exist and, for a keyless table's reload, empties it.
async fn make_one_ready(
    client: &GdnClient,
    collection: &str,
    emptied_for: Option<&str>,
    create_stream: bool,
    max_retries: u32,
) -> Result<(), GdnError> {
    retrying(max_retries, || {
        client.ensure_collection(collection, create_stream)
    })
    .await?;
    if let Some(table) = emptied_for {
        tracing::info!(%table, %collection, "keyless table: emptying the collection before the reload");
        retrying(max_retries, || client.truncate_collection(collection)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, collection: &str, requested: bool) -> TableCollection {
        TableCollection {
            table: format!("\"{}\"", name.replace('.', "\".\"")),
            prefix: name.to_owned(),
            collection: collection.to_owned(),
            requested,
            keyless: false,
        }
    }

    #[test]
    fn tables_the_naming_rule_puts_in_one_collection_are_refused_with_the_fix() {
        let error =
            key_prefixes(&[table("public.t", "t", false), table("s1.t", "t", false)]).unwrap_err();
        assert!(
            error.contains("\"public\".\"t\", \"s1\".\"t\" would all write collection \"t\""),
            "{error}"
        );
        assert!(error.contains("{schema}_{table}"), "{error}");
        assert!(error.contains("\"table\": \"public.t\""), "{error}");
    }

    #[test]
    fn a_collection_name_gdn_refuses_is_refused_with_the_per_table_fix() {
        let error = check_names(&[table("public.a b", "a b", false)]).unwrap_err();
        assert!(error.contains("a name GDN does not take"), "{error}");
        assert!(error.contains("\"collection\": \"<name>\""), "{error}");
        assert!(check_names(&[table("public.t", "t", false)]).is_ok());
    }

    #[test]
    fn tables_that_share_by_request_get_their_table_as_key_prefix() {
        let prefixes = key_prefixes(&[
            table("public.a", "all", true),
            table("public.b", "all", true),
            table("public.c", "c", false),
        ])
        .unwrap();
        assert_eq!(
            prefixes,
            vec![
                Some("public.a".to_owned()),
                Some("public.b".to_owned()),
                None
            ]
        );
        let mut keyless = table("public.k", "all", true);
        keyless.keyless = true;
        let error = key_prefixes(&[table("public.a", "all", true), keyless]).unwrap_err();
        assert!(
            error.contains("has no key and shares collection"),
            "{error}"
        );
    }
}
