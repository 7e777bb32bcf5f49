//! The SQL a replicated table is created, loaded and changed with. Pure: strings only.
//!
//! Rows travel through a per-connection temporary staging table with the target's columns
//! (`ON COMMIT DELETE ROWS`): `COPY` fills it, one statement moves its rows into the target
//! (upsert, delete by key, or update of the columns a partial image carries).

use crate::pg::query::{quote_identifier, quote_literal};
use crate::singer::target_postgres::naming::TableName;

/// The column that marks deleted rows when `hard_delete` is off.
pub const DELETED_AT: &str = "_sdc_deleted_at";

/// A replicated table as the SQL needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaTable {
    /// `schema.table` of the source, for messages.
    pub source: String,
    /// The target table.
    pub target: TableName,
    /// `(column, type)` in source order; the types as `format_type` spells them.
    pub columns: Vec<(String, String)>,
    /// Key column names, in key order.
    pub keys: Vec<String>,
    /// Deletes set `_sdc_deleted_at` instead of deleting.
    pub soft_delete: bool,
    /// The session's staging table for this table (unqualified, in `pg_temp`).
    pub staging: String,
}

fn list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names
        .into_iter()
        .map(quote_identifier)
        .collect::<Vec<_>>()
        .join(", ")
}

impl ReplicaTable {
    /// Column names in source order.
    pub fn column_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.columns.iter().map(|(name, _)| name.as_str())
    }

    /// The type of `column`, if it is one of the table's.
    pub fn type_of(&self, column: &str) -> Option<&str> {
        self.columns
            .iter()
            .find(|(name, _)| name == column)
            .map(|(_, type_name)| type_name.as_str())
    }

    /// `CREATE TABLE IF NOT EXISTS` with the source's column types and its key as primary key.
    pub fn create_sql(&self) -> String {
        let mut definitions: Vec<String> = self
            .columns
            .iter()
            .map(|(name, type_name)| format!("{} {type_name}", quote_identifier(name)))
            .collect();
        if self.soft_delete {
            definitions.push(format!(
                "{} timestamp with time zone",
                quote_identifier(DELETED_AT)
            ));
        }
        if !self.keys.is_empty() {
            definitions.push(format!(
                "PRIMARY KEY ({})",
                list(self.keys.iter().map(String::as_str))
            ));
        }
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            self.target.quoted(),
            definitions.join(", ")
        )
    }

    /// (Re)creates the session's staging table with the target's current column types.
    pub fn staging_sql(&self) -> String {
        format!(
            "DROP TABLE IF EXISTS pg_temp.{staging}; CREATE TEMP TABLE {staging} ON COMMIT DELETE ROWS AS SELECT {} FROM {} WITH NO DATA",
            list(self.column_names()),
            self.target.quoted(),
            staging = quote_identifier(&self.staging)
        )
    }

    /// `COPY` of `columns` into the staging table (or straight into the target).
    pub fn copy_in_sql(&self, columns: &[&str], into_target: bool, binary: bool) -> String {
        let table = if into_target {
            self.target.quoted()
        } else {
            format!("pg_temp.{}", quote_identifier(&self.staging))
        };
        format!(
            "COPY {table} ({}) FROM STDIN{}",
            list(columns.iter().copied()),
            if binary { " (FORMAT binary)" } else { "" }
        )
    }

    /// Empties the staging table inside the transaction (between two uses).
    pub fn clear_staging_sql(&self) -> String {
        format!("TRUNCATE pg_temp.{}", quote_identifier(&self.staging))
    }

    /// Moves every staged row into the target: inserted, or replacing the row with its key.
    /// `columns` are the ones the rows carry (every column of a whole image); others keep
    /// their value (a column the source dropped) or default.
    pub fn upsert_sql(&self, columns: &[&str]) -> String {
        let carried = columns;
        let columns = list(carried.iter().copied());
        let (extra_column, extra_value, extra_set) = if self.soft_delete {
            let quoted = quote_identifier(DELETED_AT);
            (
                format!(", {quoted}"),
                ", NULL".to_owned(),
                vec![format!("{quoted} = NULL")],
            )
        } else {
            (String::new(), String::new(), Vec::new())
        };
        let mut sets: Vec<String> = carried
            .iter()
            .filter(|name| !self.keys.iter().any(|key| key == *name))
            .map(|name| {
                let quoted = quote_identifier(name);
                format!("{quoted} = EXCLUDED.{quoted}")
            })
            .collect();
        sets.extend(extra_set);
        let conflict = if sets.is_empty() {
            "DO NOTHING".to_owned()
        } else {
            format!("DO UPDATE SET {}", sets.join(", "))
        };
        format!(
            "INSERT INTO {} ({columns}{extra_column}) SELECT {columns}{extra_value} FROM pg_temp.{} ON CONFLICT ({}) {conflict}",
            self.target.quoted(),
            quote_identifier(&self.staging),
            list(self.keys.iter().map(String::as_str))
        )
    }

    fn key_match(&self) -> String {
        self.keys
            .iter()
            .map(|key| {
                let quoted = quote_identifier(key);
                format!("t.{quoted} = s.{quoted}")
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// Deletes (or marks deleted) the rows whose keys are staged.
    pub fn delete_sql(&self) -> String {
        if self.soft_delete {
            format!(
                "UPDATE {} AS t SET {} = now() FROM pg_temp.{} AS s WHERE {}",
                self.target.quoted(),
                quote_identifier(DELETED_AT),
                quote_identifier(&self.staging),
                self.key_match()
            )
        } else {
            format!(
                "DELETE FROM {} AS t USING pg_temp.{} AS s WHERE {}",
                self.target.quoted(),
                quote_identifier(&self.staging),
                self.key_match()
            )
        }
    }

    /// Sets `columns` (a partial image: unchanged TOASTed columns left out) of the rows whose
    /// keys are staged; `None` when the image holds nothing but the key.
    pub fn patch_sql(&self, columns: &[&str]) -> Option<String> {
        let sets: Vec<String> = columns
            .iter()
            .filter(|name| !self.keys.iter().any(|key| key == *name))
            .map(|name| {
                let quoted = quote_identifier(name);
                format!("{quoted} = s.{quoted}")
            })
            .collect();
        if sets.is_empty() {
            return None;
        }
        Some(format!(
            "UPDATE {} AS t SET {} FROM pg_temp.{} AS s WHERE {}",
            self.target.quoted(),
            sets.join(", "),
            quote_identifier(&self.staging),
            self.key_match()
        ))
    }

    /// A key change whose new image lacks unchanged TOASTed columns: the row under the new key
    /// is the old row with `values` on top (read before the old key's delete runs).
    pub fn move_sql(&self, from: &[String], values: &[(String, Option<String>)]) -> String {
        let literal = |name: &str, value: &Option<String>| match value {
            None => "NULL".to_owned(),
            Some(text) => format!(
                "{}::{}",
                quote_literal(text),
                self.type_of(name).unwrap_or("text")
            ),
        };
        let expressions: Vec<String> = self
            .column_names()
            .map(
                |name| match values.iter().find(|(column, _)| column == name) {
                    Some((_, value)) => literal(name, value),
                    None => format!("t.{}", quote_identifier(name)),
                },
            )
            .collect();
        let condition: Vec<String> = self
            .keys
            .iter()
            .zip(from)
            .map(|(key, value)| {
                format!(
                    "t.{} = {}",
                    quote_identifier(key),
                    literal(key, &Some(value.clone()))
                )
            })
            .collect();
        let sets: Vec<String> = self
            .column_names()
            .filter(|name| !self.keys.iter().any(|key| key == name))
            .map(|name| {
                let quoted = quote_identifier(name);
                format!("{quoted} = EXCLUDED.{quoted}")
            })
            .collect();
        let conflict = if sets.is_empty() {
            "DO NOTHING".to_owned()
        } else {
            format!("DO UPDATE SET {}", sets.join(", "))
        };
        format!(
            "INSERT INTO {target} ({}) SELECT {} FROM {target} AS t WHERE {} ON CONFLICT ({}) {conflict}",
            list(self.column_names()),
            expressions.join(", "),
            condition.join(" AND "),
            list(self.keys.iter().map(String::as_str)),
            target = self.target.quoted(),
        )
    }

    /// A temporary table (gone at commit) with the target's key columns, for the source's
    /// current keys (FULL_TABLE mirroring).
    pub fn source_keys_sql(&self) -> String {
        format!(
            "CREATE TEMPORARY TABLE pgferry_source_keys ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA",
            list(self.keys.iter().map(String::as_str)),
            self.target.quoted()
        )
    }

    /// Removes (or marks deleted) the target's rows whose key `pgferry_source_keys` lacks.
    pub fn remove_unmatched_sql(&self) -> String {
        let unmatched = format!(
            "NOT EXISTS (SELECT 1 FROM pg_temp.pgferry_source_keys AS s WHERE {})",
            self.key_match()
        );
        if self.soft_delete {
            format!(
                "UPDATE {} AS t SET {deleted} = now() WHERE t.{deleted} IS NULL AND {unmatched}",
                self.target.quoted(),
                deleted = quote_identifier(DELETED_AT),
            )
        } else {
            format!(
                "DELETE FROM {} AS t WHERE {unmatched}",
                self.target.quoted()
            )
        }
    }

    /// Empties the target table (a TRUNCATE in the source, or a keyless table's reload).
    pub fn truncate_sql(&self) -> String {
        format!("TRUNCATE {}", self.target.quoted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(soft_delete: bool) -> ReplicaTable {
        ReplicaTable {
            source: "public.orders".into(),
            target: TableName {
                schema: "mirror".into(),
                table: "Orders".into(),
            },
            columns: vec![
                ("id".into(), "integer".into()),
                ("total".into(), "numeric(12,2)".into()),
                ("note".into(), "text".into()),
            ],
            keys: vec!["id".into()],
            soft_delete,
            staging: "pgferry_stage_0".into(),
        }
    }

    #[test]
    fn created_with_source_types_and_the_key() {
        assert_eq!(
            table(false).create_sql(),
            r#"CREATE TABLE IF NOT EXISTS "mirror"."Orders" ("id" integer, "total" numeric(12,2), "note" text, PRIMARY KEY ("id"))"#
        );
        assert!(table(true)
            .create_sql()
            .contains(r#""_sdc_deleted_at" timestamp with time zone, PRIMARY KEY ("id")"#));
    }

    #[test]
    fn staged_rows_are_upserted_deleted_and_patched_by_key() {
        assert_eq!(
            table(false).upsert_sql(&["id", "total", "note"]),
            r#"INSERT INTO "mirror"."Orders" ("id", "total", "note") SELECT "id", "total", "note" FROM pg_temp."pgferry_stage_0" ON CONFLICT ("id") DO UPDATE SET "total" = EXCLUDED."total", "note" = EXCLUDED."note""#
        );
        assert!(table(true)
            .upsert_sql(&["id", "total", "note"])
            .ends_with(r#""note" = EXCLUDED."note", "_sdc_deleted_at" = NULL"#));
        assert_eq!(
            table(false).delete_sql(),
            r#"DELETE FROM "mirror"."Orders" AS t USING pg_temp."pgferry_stage_0" AS s WHERE t."id" = s."id""#
        );
        assert_eq!(
            table(true).delete_sql(),
            r#"UPDATE "mirror"."Orders" AS t SET "_sdc_deleted_at" = now() FROM pg_temp."pgferry_stage_0" AS s WHERE t."id" = s."id""#
        );
        assert_eq!(
            table(false).patch_sql(&["id", "total"]).unwrap(),
            r#"UPDATE "mirror"."Orders" AS t SET "total" = s."total" FROM pg_temp."pgferry_stage_0" AS s WHERE t."id" = s."id""#
        );
        assert_eq!(table(false).patch_sql(&["id"]), None);
    }

    #[test]
    fn a_key_move_copies_the_old_row_under_the_new_key() {
        assert_eq!(
            table(false).move_sql(
                &["1".into()],
                &[("id".into(), Some("2".into())), ("total".into(), None)]
            ),
            r#"INSERT INTO "mirror"."Orders" ("id", "total", "note") SELECT '2'::integer, NULL, t."note" FROM "mirror"."Orders" AS t WHERE t."id" = '1'::integer ON CONFLICT ("id") DO UPDATE SET "total" = EXCLUDED."total", "note" = EXCLUDED."note""#
        );
    }

    #[test]
    fn copies_name_their_columns() {
        assert_eq!(
            table(false).copy_in_sql(&["id", "note"], false, false),
            r#"COPY pg_temp."pgferry_stage_0" ("id", "note") FROM STDIN"#
        );
        assert_eq!(
            table(false).copy_in_sql(&["id"], true, true),
            r#"COPY "mirror"."Orders" ("id") FROM STDIN (FORMAT binary)"#
        );
    }
}
