//! PostgreSQL → GDN: both sides as documents. The source side is what the copy would write
//! now (binary COPY of the table, each row through the pipeline's [`DocumentPlan`]); the
//! destination side is the collection in `_key` order (keyset pages, read through
//! `destination::Written`), each document without GDN's `_id` and `_rev`. Both are put in the canonical form of [`super::canonical`] before
//! hashing, so attribute order and number spelling (`1.0`, `1`) do not matter.

use crate::decode::copy_binary::CopyBinaryDecoder;
use crate::destination::gdn::document::DocumentPlan;
use crate::destination::{Place, ReadError, Written};
use crate::pg::catalog::Table;
use crate::pg::{ConnectOptions, Connection};

use super::buckets::{hash128, shorten, AttributeDiff};
use super::canonical::{canonical, canonical_with_key, members};
use super::contract::where_clause;
use super::error::{source, VerifyError};

/// Receives each row of one side: its key (`None` for keyless tables), its hash and its
/// canonical form.
pub type RowSink<'s> = &'s mut (dyn FnMut(Option<&str>, u128, &[u8]) + Send);

/// A source table, the plan the copy uses for it, and the publications' row filter.
#[derive(Debug, Clone)]
pub struct SourceTable {
    /// The table (its published columns).
    pub table: Table,
    /// Rows → documents, as the copy does it.
    pub plan: DocumentPlan,
    /// The rows the pipeline carries, when not all.
    pub row_filter: Option<String>,
}

/// One collection and the source tables that write it (several when they share it by request,
/// then with key prefixes).
#[derive(Debug, Clone)]
pub struct CollectionUnit {
    /// The collection.
    pub collection: String,
    /// Each table with the plan the copy uses for it.
    pub tables: Vec<SourceTable>,
    /// The tables have no key: documents are compared as a multiset, without `_key`.
    pub keyless: bool,
}

impl CollectionUnit {
    /// Top-level attributes left out of the comparison: GDN's own, and for keyless tables the
    /// `_key` GDN generated.
    fn skipped(&self) -> &'static [&'static str] {
        if self.keyless {
            &["_id", "_rev", "_key"]
        } else {
            &["_id", "_rev"]
        }
    }

    /// Streams the documents the copy would write now into `sink`; returns how many.
    pub async fn source(
        &self,
        options: &ConnectOptions,
        sink: RowSink<'_>,
    ) -> Result<u64, VerifyError> {
        let mut connection = Connection::connect(options)
            .await
            .map_err(source("connecting"))?;
        let mut rows = 0u64;
        let mut document = Vec::new();
        let mut form = Vec::new();
        for SourceTable {
            table,
            plan,
            row_filter,
        } in &self.tables
        {
            let name = table.qualified_name();
            let mut copy = connection
                .copy_out(&format!(
                    "COPY (SELECT {} FROM {name}{}) TO STDOUT (FORMAT binary)",
                    plan.select_list(),
                    where_clause(row_filter.as_deref())
                ))
                .await
                .map_err(source(format!("reading {name}")))?;
            let mut decoder = CopyBinaryDecoder::new(plan.width());
            while let Some(data) = copy
                .next()
                .await
                .map_err(source(format!("reading {name}")))?
            {
                decoder.decode_chunk_with(data, |row| {
                    document.clear();
                    let key = plan.encode(row, &mut document)?;
                    form.clear();
                    canonical(&document, self.skipped(), &mut form).map_err(|error| {
                        VerifyError::Document {
                            side: "source",
                            place: name.clone(),
                            source: error,
                        }
                    })?;
                    rows += 1;
                    sink(key.as_ref().map(|key| key.as_str()), hash128(&form), &form);
                    Ok::<(), VerifyError>(())
                })?;
            }
            decoder.finish()?;
        }
        connection.close().await;
        Ok(rows)
    }

    /// Streams the collection's documents (a missing collection has none) into `sink`;
    /// returns how many.
    pub async fn destination(
        &self,
        destination: &Written,
        sink: RowSink<'_>,
    ) -> Result<u64, VerifyError> {
        let mut form = Vec::new();
        let read = destination
            .read(Place::Collection(&self.collection), |raw| {
                form.clear();
                let key = canonical_with_key(raw, self.skipped(), &mut form).map_err(|error| {
                    VerifyError::Document {
                        side: "destination",
                        place: format!("collection {:?}", self.collection),
                        source: error,
                    }
                })?;
                sink(key.as_deref(), hash128(&form), &form);
                Ok(())
            })
            .await;
        read.map_err(|error| match error {
            ReadError::Gdn(source) => VerifyError::Gdn {
                collection: self.collection.clone(),
                source: Box::new(source),
            },
            ReadError::Reader(error) => error,
            ReadError::Postgres(_) | ReadError::Elsewhere => not_connected(),
        })
    }
}

/// The destination given is not where this comparison's rows are (a bug in `plan`).
pub(crate) fn not_connected() -> VerifyError {
    VerifyError::Internal("the destination of this table is not connected".into())
}

/// The attributes two canonical documents disagree on, values shortened.
pub fn describe(source: &[u8], destination: &[u8]) -> Vec<AttributeDiff> {
    let (Ok(left), Ok(right)) = (members(source, &[]), members(destination, &[])) else {
        return Vec::new();
    };
    let text = |value: &Vec<u8>| shorten(&String::from_utf8_lossy(value));
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < left.len() || j < right.len() {
        match (left.get(i), right.get(j)) {
            (Some(a), Some(b)) if a.0 == b.0 => {
                if a.1 != b.1 {
                    out.push(AttributeDiff {
                        name: a.0.clone(),
                        source: Some(text(&a.1)),
                        destination: Some(text(&b.1)),
                    });
                }
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a.0 < b.0 => {
                out.push(AttributeDiff {
                    name: a.0.clone(),
                    source: Some(text(&a.1)),
                    destination: None,
                });
                i += 1;
            }
            (Some(a), None) => {
                out.push(AttributeDiff {
                    name: a.0.clone(),
                    source: Some(text(&a.1)),
                    destination: None,
                });
                i += 1;
            }
            (_, Some(b)) => {
                out.push(AttributeDiff {
                    name: b.0.clone(),
                    source: None,
                    destination: Some(text(&b.1)),
                });
                j += 1;
            }
            (None, None) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_names_changed_missing_and_added_attributes() {
        let diff = describe(
            br#"{"_key":"1","a":1,"b":"x","c":2}"#,
            br#"{"_key":"1","a":1,"b":"y","d":3}"#,
        );
        let names: Vec<&str> = diff.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["b", "c", "d"]);
        assert_eq!(diff[0].source.as_deref(), Some("\"x\""));
        assert_eq!(diff[1].destination, None);
        assert_eq!(diff[2].source, None);
    }
}
