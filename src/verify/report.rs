//! What `pgferry verify` prints: per table the rows equal, missing (in the source, not the
//! destination), extra (in the destination, not the source) and different, with the first
//! keys of each and what differs; as text for people or one JSON object for machines.

use super::buckets::{DifferentRow, Found};
use super::settle::Settled;

/// One compared table (or tables sharing one collection) and its destination.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableReport {
    /// The source table(s), `schema.table`.
    pub table: String,
    /// The collection or target table.
    pub destination: String,
    /// Keyless: rows compared as a multiset of row hashes; only counts are reported.
    pub keyless: bool,
    /// Rows read from the source.
    pub source_rows: u64,
    /// Rows (documents) read from the destination.
    pub destination_rows: u64,
    /// Source rows whose destination row is equal.
    pub equal: u64,
    /// Source rows the destination lacks.
    pub missing: u64,
    /// Destination rows the source lacks.
    pub extra: u64,
    /// Keys whose rows differ.
    pub different: u64,
    /// The first (smallest) missing keys, at most 5.
    pub missing_keys: Vec<String>,
    /// The first extra keys, at most 5.
    pub extra_keys: Vec<String>,
    /// The first different keys, at most 5, with the attributes that differ.
    pub different_rows: Vec<DifferentRow>,
    /// Buckets the table was split into.
    pub buckets: usize,
    /// Buckets whose digests differed in the first pass.
    pub buckets_differing: usize,
}

impl TableReport {
    /// The report of a table from what the passes found; `display` turns a key into the
    /// form people read.
    pub fn new(
        table: String,
        destination: String,
        keyless: bool,
        rows: (u64, u64),
        buckets: (usize, usize),
        found: &Found,
        display: &dyn Fn(&str) -> String,
    ) -> TableReport {
        let (source_rows, destination_rows) = rows;
        TableReport {
            table,
            destination,
            keyless,
            source_rows,
            destination_rows,
            equal: source_rows.saturating_sub(found.missing + found.different),
            missing: found.missing,
            extra: found.extra,
            different: found.different,
            missing_keys: found.missing_keys.keys().map(|key| display(key)).collect(),
            extra_keys: found.extra_keys.keys().map(|key| display(key)).collect(),
            different_rows: found
                .different_rows
                .iter()
                .map(|(key, attributes)| DifferentRow {
                    key: display(key),
                    attributes: attributes.clone(),
                })
                .collect(),
            buckets: buckets.0,
            buckets_differing: buckets.1,
        }
    }

    /// Whether the destination holds exactly the source's rows.
    pub fn is_equal(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.different == 0
    }
}

/// The whole verification.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    /// Every table equal.
    pub equal: bool,
    /// Per table.
    pub tables: Vec<TableReport>,
    /// LOG_BASED: the waits for the pipeline before differing keys were looked at again.
    pub settled: Vec<Settled>,
}

impl VerifyReport {
    /// Lines for people.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for table in &self.tables {
            let kind = if table.keyless {
                " (keyless: compared as a multiset of rows, counts only)"
            } else {
                ""
            };
            text.push_str(&format!(
                "{} -> {}: {} equal, {} missing, {} extra, {} different{kind}\n",
                table.table,
                table.destination,
                table.equal,
                table.missing,
                table.extra,
                table.different
            ));
            if !table.missing_keys.is_empty() {
                text.push_str(&format!("  missing: {}\n", keys(&table.missing_keys)));
            }
            if !table.extra_keys.is_empty() {
                text.push_str(&format!("  extra: {}\n", keys(&table.extra_keys)));
            }
            for row in &table.different_rows {
                let attributes: Vec<String> = row
                    .attributes
                    .iter()
                    .map(|attribute| {
                        format!(
                            "{}: {} -> {}",
                            attribute.name,
                            attribute.source.as_deref().unwrap_or("(absent)"),
                            attribute.destination.as_deref().unwrap_or("(absent)")
                        )
                    })
                    .collect();
                text.push_str(&format!(
                    "  different: {:?} ({})\n",
                    row.key,
                    attributes.join("; ")
                ));
            }
        }
        for settled in &self.settled {
            text.push_str(&format!(
                "waited for the pipeline to confirm {}: {} (slot at {})\n",
                settled.target_lsn,
                if settled.reached {
                    "reached"
                } else if !settled.active {
                    "the slot is not active"
                } else {
                    "timed out"
                },
                settled.confirmed_lsn.as_deref().unwrap_or("none")
            ));
        }
        let differing = self.tables.iter().filter(|table| !table.is_equal()).count();
        if differing == 0 {
            text.push_str(&format!("all {} tables equal\n", self.tables.len()));
        } else {
            text.push_str(&format!(
                "{differing} of {} tables differ\n",
                self.tables.len()
            ));
        }
        text
    }
}

fn keys(keys: &[String]) -> String {
    keys.iter()
        .map(|key| format!("{key:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}
