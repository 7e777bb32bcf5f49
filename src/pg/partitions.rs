//! What the catalog says about a partitioned table's leaves: their names, the constraint that
//! says which rows each holds, and the columns those constraints read.
//!
//! Why: a TRUNCATE of one partition arrives under the partition's name, and the destination
//! holds the parent's rows in one collection or table without saying which partition a row
//! came from. The partition's constraint (`pg_get_partition_constraintdef`, which includes its
//! ancestors' constraints) is PostgreSQL's own answer to "does this row belong to it", so the
//! destination's rows are asked that question, by the source, and those that answer yes go.

use crate::pg::query::{quote_identifier, quote_literal, Row};
use crate::pg::{Connection, PgError};

/// One leaf partition of a streamed partitioned table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafPartition {
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub name: String,
    /// Its partition constraint as SQL over the parent's column names, `None` when it has
    /// none (the only partition of a parent: every row is in it).
    pub constraint: Option<String>,
}

/// The columns a parent's partition constraints read, at every level of the tree.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionColumns {
    /// Column names of the partition keys.
    pub names: Vec<String>,
    /// A partition key is an expression: its columns are not listed, so every column is read.
    pub expressions: bool,
}

impl PartitionColumns {
    /// Whether `column` must be read to decide which partition a row is in.
    pub fn reads(&self, column: &str) -> bool {
        self.expressions || self.names.iter().any(|name| name == column)
    }
}

/// The recursive walk of the partition tree under `oid` (the table included).
fn tree(oid: u32) -> String {
    format!(
        "WITH RECURSIVE tree (relid) AS (SELECT {oid}::oid UNION ALL \
         SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.relid)"
    )
}

/// The leaves of the partitioned table `oid`, at any depth, with their constraints.
pub async fn leaves(connection: &mut Connection, oid: u32) -> Result<Vec<LeafPartition>, PgError> {
    let rows = connection
        .query(&format!(
            "{} SELECT n.nspname, c.relname, pg_catalog.pg_get_partition_constraintdef(c.oid) \
             FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.relid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'f') AND c.oid <> {oid}::oid ORDER BY 1, 2",
            tree(oid)
        ))
        .await?;
    Ok(rows.iter().map(leaf).collect())
}

fn leaf(row: &Row) -> LeafPartition {
    LeafPartition {
        schema: row.get(0).unwrap_or_default().to_owned(),
        name: row.get(1).unwrap_or_default().to_owned(),
        constraint: row.get(2).map(str::to_owned),
    }
}

/// The leaf `schema.name` when it is a partition, at any depth, of the table `root_oid`
/// (a partition attached while streaming, seen first in a change).
pub async fn leaf_of(
    connection: &mut Connection,
    root_oid: u32,
    schema: &str,
    name: &str,
) -> Result<Option<LeafPartition>, PgError> {
    let row = connection
        .query_one(&format!(
            "{} SELECT n.nspname, c.relname, pg_catalog.pg_get_partition_constraintdef(c.oid) \
             FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.relid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'f') AND c.oid <> {root_oid}::oid \
             AND n.nspname = {} AND c.relname = {}",
            tree(root_oid),
            quote_literal(schema),
            quote_literal(name)
        ))
        .await?;
    Ok(row.as_ref().map(leaf))
}

/// The columns the partition keys of `oid`'s tree read.
pub async fn key_columns(
    connection: &mut Connection,
    oid: u32,
) -> Result<PartitionColumns, PgError> {
    let rows = connection
        .query(&format!(
            "{} SELECT DISTINCT a.attname, k.attnum = 0 FROM tree \
             JOIN pg_catalog.pg_partitioned_table p ON p.partrelid = tree.relid \
             CROSS JOIN LATERAL unnest(p.partattrs::pg_catalog.int2[]) AS k (attnum) \
             LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = tree.relid AND a.attnum = k.attnum",
            tree(oid)
        ))
        .await?;
    let mut columns = PartitionColumns::default();
    for row in &rows {
        if row.get(1) == Some("t") {
            columns.expressions = true;
        } else if let Some(name) = row.get(0) {
            columns.names.push(name.to_owned());
        }
    }
    columns.names.sort();
    Ok(columns)
}

/// A query answering which of `rows` (a JSON array of objects keyed by the parent's column
/// names) belong to any of `leaves`: per such row, its 0-based position, then the text of
/// its `keys` columns (to tell the rows of tables sharing a collection apart).
///
/// Each object becomes a row of the parent's type (`jsonb_populate_record`, so values are read
/// by the columns' own input functions) and meets the leaves' constraints. Inside the lateral
/// subquery the parent's columns come first in name resolution, so the constraints' bare
/// column names can only mean them.
pub fn membership_sql(
    parent: (&str, &str),
    leaves: &[&LeafPartition],
    keys: &[&str],
    rows: &str,
) -> String {
    let condition = if leaves.iter().any(|leaf| leaf.constraint.is_none()) {
        "true".to_owned()
    } else {
        leaves
            .iter()
            .filter_map(|leaf| leaf.constraint.as_deref())
            .map(|constraint| format!("({constraint})"))
            .collect::<Vec<_>>()
            .join(" OR ")
    };
    let key_texts: String = keys
        .iter()
        .enumerate()
        .map(|(index, key)| format!(", r.{}::text AS k{index}", quote_identifier(key)))
        .collect();
    let key_outputs: String = (0..keys.len())
        .map(|index| format!(", v.k{index}"))
        .collect();
    format!(
        "SELECT u.o - 1{key_outputs} FROM pg_catalog.jsonb_array_elements({}::pg_catalog.jsonb) WITH ORDINALITY AS u (d, o) \
         CROSS JOIN LATERAL (SELECT {condition} AS member{key_texts} \
         FROM pg_catalog.jsonb_populate_record(NULL::{}.{}, u.d) AS r) AS v WHERE coalesce(v.member, false)",
        quote_literal(rows),
        quote_identifier(parent.0),
        quote_identifier(parent.1),
    )
}

/// A row of the destination that a truncated partition held: its position in the rows asked
/// about, and the text of the key columns asked for (NULL as `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// 0-based position in the JSON array.
    pub position: usize,
    /// The key columns' text, in the order asked.
    pub keys: Vec<Option<String>>,
}

/// The members a [`membership_sql`] answer names.
pub fn members_of(rows: &[Row], keys: usize) -> Result<Vec<Member>, PgError> {
    rows.iter()
        .map(|row| {
            let position = row
                .get(0)
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| {
                    PgError::protocol(
                        "deciding which rows a truncated partition held",
                        format!("not a position: {:?}", row.get(0)),
                    )
                })?;
            Ok(Member {
                position,
                keys: (1..=keys)
                    .map(|index| row.get(index).map(str::to_owned))
                    .collect(),
            })
        })
        .collect()
}

/// Asks the source which of `rows` belong to any of `leaves` of `parent`.
pub async fn members(
    connection: &mut Connection,
    parent: (&str, &str),
    leaves: &[&LeafPartition],
    keys: &[&str],
    rows: &str,
) -> Result<Vec<Member>, PgError> {
    let answer = connection
        .query(&membership_sql(parent, leaves, keys, rows))
        .await?;
    members_of(&answer, keys.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(name: &str, constraint: Option<&str>) -> LeafPartition {
        LeafPartition {
            schema: "public".into(),
            name: name.into(),
            constraint: constraint.map(str::to_owned),
        }
    }

    #[test]
    fn membership_meets_any_truncated_leaf_s_constraint_as_a_row_of_the_parent() {
        let two = leaf(
            "tab1_2",
            Some("((a IS NOT NULL) AND (a = ANY (ARRAY[3, 4, 5])))"),
        );
        let default = leaf(
            "tab1_def",
            Some("(NOT ((a IS NOT NULL) AND (a = ANY (ARRAY[1, 2]))))"),
        );
        let sql = membership_sql(
            ("public", "Tab 1"),
            &[&two, &default],
            &["a"],
            r#"[{"a":5}]"#,
        );
        assert_eq!(
            sql,
            "SELECT u.o - 1, v.k0 FROM pg_catalog.jsonb_array_elements('[{\"a\":5}]'::pg_catalog.jsonb) WITH ORDINALITY AS u (d, o) \
             CROSS JOIN LATERAL (SELECT (((a IS NOT NULL) AND (a = ANY (ARRAY[3, 4, 5])))) OR ((NOT ((a IS NOT NULL) AND (a = ANY (ARRAY[1, 2]))))) AS member, r.\"a\"::text AS k0 \
             FROM pg_catalog.jsonb_populate_record(NULL::\"public\".\"Tab 1\", u.d) AS r) AS v WHERE coalesce(v.member, false)"
        );
    }

    #[test]
    fn a_leaf_without_a_constraint_holds_every_row() {
        let only = leaf("only", None);
        assert!(
            membership_sql(("s", "t"), &[&only], &[], "[]").contains("SELECT true AS member FROM")
        );
    }

    #[test]
    fn expression_keys_read_every_column() {
        let columns = PartitionColumns {
            names: vec!["a".into()],
            expressions: false,
        };
        assert!(columns.reads("a") && !columns.reads("b"));
        let expressions = PartitionColumns {
            names: vec![],
            expressions: true,
        };
        assert!(expressions.reads("b"));
    }
}
