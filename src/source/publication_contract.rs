//! The publications' definition as the contract of a LOG_BASED run through pgoutput: the
//! stream sends only the rows a row filter keeps and only the listed columns, so the copy
//! reads the same (as PostgreSQL's own initial table sync does, `tablesync.c`
//! `copy_table`: `COPY (SELECT <listed columns> FROM t WHERE (<filter>)) TO STDOUT`). Without
//! that, the collection would match neither the table nor the filter, and documents would
//! change shape at their first update.

use crate::config::Publications;
use crate::pg::catalog::{PublishedTable, Table};
use crate::pg::query::quote_identifier;

/// `table` as the publications publish it: only the listed columns, and the row filter the
/// copy applies. A column list without the table's key columns is an error with the fix:
/// pgferry finds documents and rows by key, and PostgreSQL refuses UPDATE and DELETE on a
/// table whose column list leaves out its replica identity while those are published.
pub fn shape_table(
    table: &Table,
    published: Option<&PublishedTable>,
    publications: &Publications,
) -> Result<(Table, Option<String>), String> {
    let Some(published) = published else {
        return Ok((table.clone(), None));
    };
    let mut shaped = table.clone();
    if let Some(listed) = &published.columns {
        let left_out: Vec<&String> = table
            .key_columns
            .iter()
            .filter(|key| !listed.contains(key))
            .collect();
        if !left_out.is_empty() {
            let name = table.qualified_name();
            let mut columns: Vec<String> = table
                .key_columns
                .iter()
                .filter(|key| !listed.contains(key))
                .chain(listed)
                .map(|column| quote_identifier(column))
                .collect();
            columns.dedup();
            let filter = published
                .row_filter
                .as_ref()
                .map(|filter| format!(" WHERE ({filter})"))
                .unwrap_or_default();
            let fixes: Vec<String> = published
                .publications
                .iter()
                .map(|publication| {
                    let publication = quote_identifier(publication);
                    format!(
                        "ALTER PUBLICATION {publication} DROP TABLE {name}; ALTER PUBLICATION {publication} ADD TABLE {name} ({}){filter};",
                        columns.join(", ")
                    )
                })
                .collect();
            let left_out: Vec<String> = left_out
                .iter()
                .map(|column| quote_identifier(column))
                .collect();
            return Err(format!(
                "publication {} lists columns of {name} without its key column {}: pgferry finds each row's document by its key (and PostgreSQL refuses UPDATE and DELETE on {name} while a publication that publishes them leaves its replica identity out of the column list)\nHINT: add the key to the column list: {}",
                publications.describe(),
                left_out.join(", "),
                fixes.join(" ")
            ));
        }
        shaped
            .columns
            .retain(|column| listed.contains(&column.name));
        if shaped.columns.len() != listed.len() {
            let known: Vec<&str> = table
                .columns
                .iter()
                .map(|column| column.name.as_str())
                .collect();
            return Err(format!(
                "publication {} lists columns of {} that pgferry did not find ({}; found {})\nHINT: run again; if the table changed meanwhile, check the publication with `pgferry check`",
                publications.describe(),
                table.qualified_name(),
                listed.join(", "),
                known.join(", ")
            ));
        }
    }
    Ok((shaped, published.row_filter.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::catalog::{
        Column, KeySource, PublishedActions, RelationKind, ReplicaIdentity, ResolvedType,
    };

    fn table() -> Table {
        let column = |name: &str, position: i16| Column {
            name: name.into(),
            position,
            type_name: "integer".into(),
            type_oid: 23,
            typmod: -1,
            not_null: false,
            resolved: ResolvedType::Scalar {
                oid: 23,
                name: "int4".into(),
                kind: 'b',
                delimiter: ',',
            },
        };
        Table {
            oid: 1,
            schema: "public".into(),
            name: "t".into(),
            kind: RelationKind::Table,
            row_estimate: 0,
            size_bytes: 0,
            replica_identity: ReplicaIdentity::Default,
            columns: vec![column("id", 1), column("a", 2), column("b", 3)],
            key_columns: vec!["id".into()],
            key_source: KeySource::PrimaryKey,
            identity_columns: Vec::new(),
        }
    }

    fn published(columns: Option<&[&str]>, row_filter: Option<&str>) -> PublishedTable {
        PublishedTable {
            schema: "public".into(),
            table: "t".into(),
            publications: vec!["p".into()],
            actions: PublishedActions {
                insert: true,
                update: true,
                delete: true,
                truncate: true,
            },
            row_filter: row_filter.map(str::to_owned),
            columns: columns.map(|list| list.iter().map(|c| c.to_string()).collect()),
            column_conflict: None,
            partition_contract: false,
            via_root: false,
            partitioned: false,
        }
    }

    fn publications() -> Publications {
        Publications::default_for_slot("p")
    }

    #[test]
    fn the_copy_takes_the_listed_columns_and_the_row_filter() {
        let contract = published(Some(&["id", "a"]), Some("((id % 2) = 0)"));
        let (shaped, filter) = shape_table(&table(), Some(&contract), &publications()).unwrap();
        let names: Vec<&str> = shaped.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "a"]);
        assert_eq!(filter.as_deref(), Some("((id % 2) = 0)"));
    }

    #[test]
    fn a_table_published_whole_is_copied_whole() {
        let (shaped, filter) =
            shape_table(&table(), Some(&published(None, None)), &publications()).unwrap();
        assert_eq!(shaped, table());
        assert_eq!(filter, None);
        let (unpublished, _) = shape_table(&table(), None, &publications()).unwrap();
        assert_eq!(unpublished, table());
    }

    #[test]
    fn a_column_list_without_the_key_is_refused_with_the_statement_that_adds_it() {
        let contract = published(Some(&["a"]), Some("(a > 1)"));
        let error = shape_table(&table(), Some(&contract), &publications()).unwrap_err();
        assert!(error.contains("without its key column \"id\""), "{error}");
        assert!(
            error.contains("ALTER PUBLICATION \"p\" DROP TABLE \"public\".\"t\"; ALTER PUBLICATION \"p\" ADD TABLE \"public\".\"t\" (\"id\", \"a\") WHERE ((a > 1));"),
            "{error}"
        );
    }
}
