//! `pgferry verify`: proves that a pipeline's destination holds its source tables, by key and
//! by value, through the conversion the pipeline itself uses — or names what differs.
//!
//! What is compared:
//!
//! * PostgreSQL → GDN: the document the copy would write now for each row (binary COPY and the
//!   table's [`DocumentPlan`], key prefixes included) against the stored document without `_id`
//!   and `_rev`, both in one canonical JSON form (`canonical.rs`: members sorted, numbers as
//!   exact decimals, so `1.0` equals `1` and a 30-digit number is compared digit by digit).
//!   Tables that share a collection are compared together with it.
//! * PostgreSQL → PostgreSQL: each row as text under the copy's session settings, by the key
//!   columns; under `hard_delete: false` rows marked `_sdc_deleted_at` are left out.
//!
//! How (pgcopydb `compare data`, data-diff's hashed segments, pt-table-checksum's chunks):
//!
//! ```text
//!  pass 1   source ──hash(row)──► bucket = hash(key) mod N ──► Σ hashes, count  ┐ compare
//!           destination ───────────────────────── same ─────────────────────────┘ per bucket
//!  pass 2   per group of differing buckets: destination rows of the group held
//!           (key → hash, row), source rows of the group streamed and matched
//! ```
//!
//! Both sides are streamed once in pass 1, in any order (a bucket's digest is a sum mod 2¹²⁸,
//! so no sorting is needed and both sides agree on the boundaries without coordination). N is
//! chosen from the row estimate so that a bucket holds about `bucket_rows` rows; memory in pass
//! 1 is 24 bytes per bucket per side. Pass 2 reads both sides again once per group of
//! differing buckets, holding at most `detail_rows` destination rows (plus one bucket's worth
//! when a single bucket is larger), and nothing when no bucket differs. The fingerprints of
//! differing keys (16 bytes each) are kept for the re-check below.
//!
//! A running LOG_BASED pipeline is not reported as diverged for changes still in flight: when
//! the first comparison finds differences, verify reads the source's WAL position, waits
//! (at most `settle_timeout`) until the pipeline's slot has confirmed it, and compares the
//! buckets of the differing keys again; a key is reported only if it differed every time.
//! Rounds repeat while the set shrinks and time remains.
//!
//! Keyless tables are compared as multisets of row hashes; only counts are reported.

mod buckets;
mod canonical;
mod contract;
mod documents;
mod error;
mod report;
mod rows;
mod settle;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{DestinationConfig, Pipeline, PipelineConfig, ReplicationMethod};
use crate::destination::gdn::document::DocumentPlan;
use crate::destination::Written;
use crate::gdn::client::GdnClient;
use crate::pg::ConnectOptions;
use crate::pipeline::collections::{check_names, key_prefixes, TableCollection};
use crate::pipeline::{discover_selected, selected, RunError};

pub use buckets::{AttributeDiff, DifferentRow};
pub use error::VerifyError;
pub use report::{TableReport, VerifyReport};
pub use settle::Settled;

use buckets::{bucket_count, groups, Detail, Found, Tally};
use documents::{CollectionUnit, RowSink, SourceTable};
use rows::TableUnit;

/// How a verification runs.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Rows a bucket should hold (from the row estimate): smaller buckets mean less to read
    /// again when one differs.
    pub bucket_rows: u64,
    /// Most destination rows held at once while differing buckets are looked at.
    pub detail_rows: u64,
    /// LOG_BASED: the longest wait for the pipeline to confirm the source's WAL position.
    pub settle_timeout: Duration,
    /// Print a line per table on stderr.
    pub progress: bool,
}

impl Default for VerifyOptions {
    fn default() -> VerifyOptions {
        VerifyOptions {
            bucket_rows: 10_000,
            detail_rows: 200_000,
            settle_timeout: Duration::from_secs(60),
            progress: false,
        }
    }
}

/// One comparison: a collection and its tables, or a source table and its target table.
#[derive(Debug)]
enum Unit {
    Documents(CollectionUnit),
    Rows(TableUnit),
}

/// How to reach both ends.
struct Ends {
    source: ConnectOptions,
    destination: Written,
}

impl Unit {
    fn table(&self) -> String {
        match self {
            Unit::Documents(unit) => unit
                .tables
                .iter()
                .map(|source| format!("{}.{}", source.table.schema, source.table.name))
                .collect::<Vec<_>>()
                .join(", "),
            Unit::Rows(unit) => format!("{}.{}", unit.table.schema, unit.table.name),
        }
    }

    fn destination(&self) -> String {
        match self {
            Unit::Documents(unit) => unit.collection.clone(),
            Unit::Rows(unit) => unit.target.to_string(),
        }
    }

    fn keyless(&self) -> bool {
        match self {
            Unit::Documents(unit) => unit.keyless,
            Unit::Rows(unit) => unit.table.key_columns.is_empty(),
        }
    }

    fn estimate(&self) -> u64 {
        let rows = match self {
            Unit::Documents(unit) => unit
                .tables
                .iter()
                .map(|source| source.table.row_estimate.max(0))
                .sum(),
            Unit::Rows(unit) => unit.table.row_estimate.max(0),
        };
        u64::try_from(rows).unwrap_or(0)
    }

    async fn read_source(&self, ends: &Ends, sink: RowSink<'_>) -> Result<u64, VerifyError> {
        match self {
            Unit::Documents(unit) => unit.source(&ends.source, sink).await,
            Unit::Rows(unit) => unit.source(&ends.source, sink).await,
        }
    }

    async fn read_destination(&self, ends: &Ends, sink: RowSink<'_>) -> Result<u64, VerifyError> {
        match self {
            Unit::Documents(unit) => unit.destination(&ends.destination, sink).await,
            Unit::Rows(unit) => unit.destination(&ends.destination, sink).await,
        }
    }

    fn describe(&self, source: &[u8], destination: &[u8]) -> Vec<AttributeDiff> {
        match self {
            Unit::Documents(_) => documents::describe(source, destination),
            Unit::Rows(unit) => {
                let columns: Vec<String> = unit
                    .table
                    .columns
                    .iter()
                    .map(|column| column.name.clone())
                    .collect();
                rows::describe(&columns, source, destination)
            }
        }
    }

    fn display(&self, key: &str) -> String {
        match self {
            Unit::Documents(_) => key.to_owned(),
            Unit::Rows(_) => rows::display_key(key),
        }
    }
}

/// One unit's comparison so far.
struct Compared {
    rows: (u64, u64),
    destination: Tally,
    differing: Vec<usize>,
    found: Found,
}

/// Compares every selected table of `pipeline` with its destination.
pub async fn verify(
    pipeline: &Pipeline,
    options: &VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    let config = match pipeline {
        Pipeline::FromPostgres(config) => config,
        Pipeline::GdnToPg(_) => {
            return Err(VerifyError::Unsupported(
                "pgferry verify compares pipelines from PostgreSQL (into GDN or PostgreSQL); this one reads GDN\nHINT: compare GDN -> PostgreSQL pipelines by hand for now".into(),
            ))
        }
    };
    let (units, ends) = plan(config).await?;
    let units: Vec<Arc<Unit>> = units.into_iter().map(Arc::new).collect();
    let ends = Arc::new(ends);
    let mut compared = Vec::with_capacity(units.len());
    for unit in &units {
        if options.progress {
            eprintln!(
                "verify: {} -> {}: comparing",
                unit.table(),
                unit.destination()
            );
        }
        let result = compare(unit, &ends, options).await?;
        if options.progress {
            eprintln!(
                "verify: {} -> {}: {} source rows, {} destination rows, {} differ",
                unit.table(),
                unit.destination(),
                result.rows.0,
                result.rows.1,
                result.found.missing + result.found.extra + result.found.different
            );
        }
        compared.push(result);
    }
    let mut settled = Vec::new();
    if config.source.replication_method == ReplicationMethod::LogBased
        && compared.iter().any(|result| !result.found.is_empty())
    {
        settle(config, &units, &ends, options, &mut compared, &mut settled).await?;
    }
    let tables: Vec<TableReport> = units
        .iter()
        .zip(&compared)
        .map(|(unit, result)| {
            TableReport::new(
                unit.table(),
                unit.destination(),
                unit.keyless(),
                result.rows,
                (result.destination.buckets(), result.differing.len()),
                &result.found,
                &|key| unit.display(key),
            )
        })
        .collect();
    Ok(VerifyReport {
        equal: tables.iter().all(TableReport::is_equal),
        tables,
        settled,
    })
}

/// Waits for the pipeline and looks at the differing keys again, while they keep resolving.
async fn settle(
    config: &PipelineConfig,
    units: &[Arc<Unit>],
    ends: &Ends,
    options: &VerifyOptions,
    compared: &mut [Compared],
    settled: &mut Vec<Settled>,
) -> Result<(), VerifyError> {
    let deadline = Instant::now() + options.settle_timeout;
    loop {
        let target = settle::current_lsn(&ends.source).await?;
        let outcome = settle::wait_for(
            &ends.source,
            &config.source.replication_slot,
            target,
            deadline,
        )
        .await?;
        if options.progress {
            eprintln!(
                "verify: differences found; waited for the pipeline to confirm {target}: {}",
                if outcome.reached {
                    "done"
                } else {
                    "not reached"
                }
            );
        }
        let reached = outcome.reached;
        settled.push(outcome);
        let mut shrank = false;
        for (unit, result) in units.iter().zip(compared.iter_mut()) {
            if result.found.is_empty() {
                continue;
            }
            let buckets = result.destination.buckets();
            let again: Vec<(usize, u64)> = if unit.keyless() {
                result.differing.clone()
            } else {
                result.found.buckets(buckets)
            }
            .into_iter()
            .map(|bucket| (bucket, result.destination.count(bucket)))
            .collect();
            let mut found = detail(unit, ends, options, buckets, &again).await?;
            if !unit.keyless() {
                found.retain_keys(&result.found);
                shrank |= found.keys.len() < result.found.keys.len();
            }
            result.found = found;
        }
        let differing = compared.iter().any(|result| !result.found.is_empty());
        if !differing || !reached || !shrank || Instant::now() >= deadline {
            return Ok(());
        }
    }
}

/// Pass 1 over both sides, then pass 2 over the differing buckets.
async fn compare(
    unit: &Arc<Unit>,
    ends: &Arc<Ends>,
    options: &VerifyOptions,
) -> Result<Compared, VerifyError> {
    let buckets = bucket_count(unit.estimate(), options.bucket_rows);
    // Each side on its own task, so conversion and hashing of the two use two cores.
    let read = |from_source: bool| {
        let unit = Arc::clone(unit);
        let ends = Arc::clone(ends);
        tokio::spawn(async move {
            let started = Instant::now();
            let mut tally = Tally::new(buckets);
            let mut into = |key: Option<&str>, hash: u128, _: &[u8]| tally.add(key, hash);
            let rows = if from_source {
                unit.read_source(&ends, &mut into).await?
            } else {
                unit.read_destination(&ends, &mut into).await?
            };
            let side = if from_source { "source" } else { "destination" };
            tracing::debug!(table = %unit.table(), side, rows, elapsed = ?started.elapsed(), "read one side");
            Ok::<_, VerifyError>((rows, tally))
        })
    };
    let (source_side, destination_side) = (read(true), read(false));
    let joined = |outcome: Result<Result<(u64, Tally), VerifyError>, tokio::task::JoinError>| {
        outcome
            .map_err(|error| VerifyError::Internal(format!("a comparison task failed: {error}")))?
    };
    let (source_rows, source) = match joined(source_side.await) {
        Ok(side) => side,
        Err(error) => {
            destination_side.abort();
            return Err(error);
        }
    };
    let (destination_rows, destination) = joined(destination_side.await)?;
    let differing = source.differing(&destination);
    let found = detail(unit, ends, options, buckets, &differing).await?;
    Ok(Compared {
        rows: (source_rows, destination_rows),
        differing: differing.iter().map(|(bucket, _)| *bucket).collect(),
        destination,
        found,
    })
}

/// Pass 2: the rows of the `differing` buckets, in groups of bounded size.
async fn detail(
    unit: &Unit,
    ends: &Ends,
    options: &VerifyOptions,
    buckets: usize,
    differing: &[(usize, u64)],
) -> Result<Found, VerifyError> {
    let mut found = Found::default();
    let describe = |source: &[u8], destination: &[u8]| unit.describe(source, destination);
    for group in groups(differing, options.detail_rows) {
        let mut pass = Detail::new(buckets, &group);
        unit.read_destination(ends, &mut |key, hash, row| {
            if pass.wants(key, hash) {
                pass.destination(key, hash, row, &mut found);
            }
        })
        .await?;
        unit.read_source(ends, &mut |key, hash, row| {
            if pass.wants(key, hash) {
                pass.source(key, hash, row, &mut found, &describe);
            }
        })
        .await?;
        pass.finish(&mut found);
    }
    Ok(found)
}

/// The comparisons a pipeline's selection makes, and its ends connected.
async fn plan(config: &PipelineConfig) -> Result<(Vec<Unit>, Ends), VerifyError> {
    // Refuse what cannot be compared before reading anything.
    if matches!(config.destination, DestinationConfig::Null) {
        return Err(VerifyError::Unsupported(
            "the null destination keeps nothing to compare\nHINT: verify a pipeline with a GDN or PostgreSQL destination".into(),
        ));
    }
    let discovered = discover_selected(&config.source, &config.tables).await?;
    let chosen = selected(&discovered, &config.tables)?;
    let carried = contract::carried(config, &chosen).await?;
    // LOG_BASED needs keys, as the run does; FULL_TABLE copies keyless tables too.
    let allow_keyless = config.source.replication_method != ReplicationMethod::LogBased;
    let source = config.source.connect_options();
    match &config.destination {
        DestinationConfig::Null => Err(VerifyError::Unsupported(
            "the null destination keeps nothing to compare".into(),
        )),
        DestinationConfig::Postgres(destination) => {
            let mut units = Vec::with_capacity(carried.len());
            for carried in carried {
                DocumentPlan::new(&carried.table, config.numeric_mode, allow_keyless)?;
                let target = crate::pipeline::pg_to_pg::target_name(
                    destination,
                    &carried.table,
                    carried.destination.as_deref(),
                )?;
                units.push(Unit::Rows(TableUnit {
                    table: carried.table,
                    target,
                    soft_delete: !destination.hard_delete,
                    row_filter: carried.row_filter,
                }));
            }
            let ends = Ends {
                source,
                destination: Written::Postgres(destination.connection.destination_options()),
            };
            Ok((units, ends))
        }
        DestinationConfig::Gdn(gdn) => {
            let destinations: Vec<TableCollection> = carried
                .iter()
                .map(|carried| TableCollection {
                    table: carried.table.qualified_name(),
                    prefix: format!("{}.{}", carried.table.schema, carried.table.name),
                    collection: carried.destination.clone().unwrap_or_else(|| {
                        gdn.collection_for(&carried.table.schema, &carried.table.name)
                    }),
                    requested: carried.destination.is_some() || gdn.target_collection.is_some(),
                    keyless: carried.table.key_columns.is_empty(),
                })
                .collect();
            check_names(&destinations).map_err(RunError::Unsupported)?;
            let prefixes = key_prefixes(&destinations).map_err(RunError::Unsupported)?;
            let mut units: Vec<CollectionUnit> = Vec::new();
            for ((carried, destination), prefix) in
                carried.into_iter().zip(destinations).zip(prefixes)
            {
                let plan = DocumentPlan::new(&carried.table, config.numeric_mode, allow_keyless)?
                    .with_key_prefix(prefix);
                let table = SourceTable {
                    table: carried.table,
                    plan,
                    row_filter: carried.row_filter,
                };
                match units
                    .iter_mut()
                    .find(|unit| unit.collection == destination.collection)
                {
                    Some(unit) => {
                        unit.keyless |= destination.keyless;
                        unit.tables.push(table);
                    }
                    None => units.push(CollectionUnit {
                        collection: destination.collection,
                        tables: vec![table],
                        keyless: destination.keyless,
                    }),
                }
            }
            let client = GdnClient::connect(gdn)
                .await
                .map_err(|error| VerifyError::GdnConnect(Box::new(error)))?;
            let ends = Ends {
                source,
                destination: Written::Gdn {
                    client,
                    max_retries: gdn.max_retries,
                },
            };
            Ok((units.into_iter().map(Unit::Documents).collect(), ends))
        }
    }
}
