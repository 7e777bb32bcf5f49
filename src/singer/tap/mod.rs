//! `pgferry tap`: a Singer tap, drop-in for `macrometa-source-postgres` (a fork of
//! pipelinewise-tap-postgres): the same flags, config keys, catalog and state files, and the same
//! messages, so either half of `tap | target` can be swapped without touching a file.
//!
//! A run: read the config, catalog and state; check them against the database before anything
//! is written (so a target never sees half a run of bad input); then, as the old tap,
//! FULL_TABLE streams and the first copy of LOG_BASED streams one after the other
//! (`currently_syncing` first), then the LOG_BASED streams that finished their copy stream from
//! the slot (`logical.rs`). Where the old tap lost or repeated data pgferry does better, and the
//! module docs say how: the first LOG_BASED copy runs under the snapshot of the slot pgferry
//! creates (`full_table.rs`, `logical.rs`).

pub mod catalog;
mod error;
pub mod full_table;
pub mod logical;
pub mod output;
pub mod pgoutput_changes;
pub mod state;

use std::io::Write;
use std::path::PathBuf;

use serde_json::{json, Value};

pub use error::TapError;

use crate::config::{ConfigError, OutputPlugin, PgSourceConfig, ReplicationMethod};
use crate::metrics::{Metrics, Phase};
use crate::pg::query::quote_literal;
use crate::pg::replication::{ReplicationClient, SlotSnapshot};
use crate::pg::{ConnectOptions, Connection, Lsn};
use crate::singer::tap::catalog::{plan_streams, read_catalog, StreamPlan};
use crate::singer::tap::output::MessageWriter;
use crate::singer::tap::state::TapState;
use crate::source::slot_setup::{
    ensure_publication, refused_plugin_message, resolve_plugin, slots_exhausted_message,
    wal_senders_exhausted_message, PartitionNames, PublicationError,
};

/// The tap's command line, as the old tap took it.
#[derive(Debug, Clone)]
pub struct TapOptions {
    /// `-c/--config`.
    pub config: PathBuf,
    /// `-s/--state`.
    pub state: Option<PathBuf>,
    /// `--catalog` or `-p/--properties`.
    pub catalog: Option<PathBuf>,
    /// `-d/--discover`.
    pub discover: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct TapSummary {
    /// RECORD messages written.
    pub records: u64,
    /// Streams synced.
    pub streams: usize,
    /// The final `lsn` of the LOG_BASED streams, when some streamed.
    pub lsn: Option<Lsn>,
}

/// How a stream is synced this run (the old tap's `sync_method_for_streams`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncMethod {
    /// FULL_TABLE.
    Full,
    /// LOG_BASED without bookmarks: copy first, stream next run.
    LogicalInitial,
    /// LOG_BASED whose first copy was interrupted (`xmin` and `lsn` bookmarks).
    LogicalInitialInterrupted,
    /// LOG_BASED with only an `lsn` bookmark: stream.
    PureLogical,
}

/// Keys pipelinewise-tap-postgres read that are not source keys of `pgferry run`.
const PIPELINEWISE_TAP_KEYS: &[&str] = &[
    "max_run_seconds",
    "logical_poll_total_seconds",
    "default_replication_method",
    "limit",
];

/// A tap config: the source keys, and what pipelinewise-tap-postgres's own keys ask for.
#[derive(Debug, Clone)]
pub struct TapConfig {
    /// The source keys, as `pgferry run` reads them.
    pub source: PgSourceConfig,
    /// `max_run_seconds`: streaming stops at the first transaction boundary after this long.
    pub max_run: Option<std::time::Duration>,
    /// `logical_poll_total_seconds`: streaming stops after this long without a change.
    pub logical_poll_total: Option<std::time::Duration>,
    /// Keys ignored, each with why (logged at start).
    pub warnings: Vec<String>,
}

/// A positive number of seconds (pipelinewise wrote them as numbers or strings); 0 or absent
/// means no bound.
fn seconds_key(
    object: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<std::time::Duration>, ConfigError> {
    let invalid = |detail: String| ConfigError::Invalid {
        key: key.to_owned(),
        detail,
    };
    let seconds = match object.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(number)) => number.as_f64(),
        Some(Value::String(text)) => text.trim().parse::<f64>().ok(),
        Some(_) => None,
    };
    match seconds {
        Some(0.0) => Ok(None),
        Some(seconds) if seconds.is_finite() && seconds > 0.0 => {
            std::time::Duration::try_from_secs_f64(seconds)
                .map(Some)
                .map_err(|_| invalid(format!("{seconds} seconds is too long")))
        }
        _ => Err(invalid(format!(
            "expected a number of seconds, got {}",
            object.get(key).map(Value::to_string).unwrap_or_default()
        ))),
    }
}

/// Reads a tap config object: unknown keys are warnings (Singer taps ignore keys they do not
/// use, and orchestrators pass such keys); pipelinewise's keys are honoured or, for `limit`
/// (INCREMENTAL only, which this tap does not offer), accepted with a warning saying so.
pub fn tap_config_from_object(
    object: &serde_json::Map<String, Value>,
) -> Result<TapConfig, TapError> {
    let known: Vec<&str> = crate::config::SOURCE_KEYS
        .iter()
        .chain(PIPELINEWISE_TAP_KEYS)
        .copied()
        .collect();
    let (mut kept, mut warnings) = crate::config::lenient_keys(object, &known, "tap");
    let max_run = seconds_key(&kept, "max_run_seconds")?;
    let logical_poll_total = seconds_key(&kept, "logical_poll_total_seconds")?;
    if kept.get("limit").is_some_and(|limit| !limit.is_null()) {
        warnings.push("config key \"limit\" applies to INCREMENTAL streams only, which pgferry tap does not offer (use LOG_BASED or FULL_TABLE): it has no effect".into());
    }
    // pipelinewise's `default_replication_method` is the method of streams whose metadata
    // names none, which is what `replication_method` is here.
    if let Some(default) = kept.remove("default_replication_method") {
        if !default.is_null() && kept.get("replication_method").is_none_or(Value::is_null) {
            kept.insert("replication_method".into(), default);
        }
    }
    for key in PIPELINEWISE_TAP_KEYS {
        kept.remove(*key);
    }
    let source = PgSourceConfig::from_object(&kept)?;
    if source.filter_schemas.is_empty() {
        return Err(TapError::Config(ConfigError::Missing {
            key: "filter_schemas",
            hint: "the schema(s) to read, comma separated, e.g. \"filter_schemas\": \"public\"",
        }));
    }
    Ok(TapConfig {
        source,
        max_run,
        logical_poll_total,
        warnings,
    })
}

/// Reads a tap config file; ignored keys are logged as warnings.
pub fn read_tap_config(path: &std::path::Path) -> Result<TapConfig, TapError> {
    let config = tap_config_from_object(&crate::config::read_json_object(path)?)?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    Ok(config)
}

/// Reads and checks a source config for the tap and the console commands: the old tap's keys,
/// `filter_schemas` required, unknown keys warnings.
pub fn read_config(path: &std::path::Path) -> Result<PgSourceConfig, TapError> {
    read_tap_config(path).map(|config| config.source)
}

/// Connection options for reading whole tables: the replica with `use_secondary`.
fn full_table_options(config: &PgSourceConfig) -> Result<ConnectOptions, TapError> {
    let mut options = config.connect_options();
    if config.use_secondary {
        let Some(host) = config.secondary_host.clone() else {
            return Err(TapError::Config(ConfigError::Missing {
                key: "secondary_host",
                hint: "the replica to read FULL_TABLE streams from (use_secondary is true)",
            }));
        };
        options.host = host;
        options.port = config.secondary_port.unwrap_or(config.connection.port);
    }
    Ok(options)
}

/// Which database a state belongs to: `{"dbname", "system_identifier"}`.
async fn source_identity(connection: &mut Connection, dbname: &str) -> Value {
    let system = connection
        .query_one("SELECT system_identifier::text FROM pg_control_system()")
        .await
        .ok()
        .flatten()
        .and_then(|row| row.get(0).map(str::to_owned));
    json!({"dbname": dbname, "system_identifier": system})
}

async fn current_wal_lsn(connection: &mut Connection) -> Result<Lsn, TapError> {
    connection
        // The insert position: with asynchronous commit a committed transaction may not be
        // flushed (pg_current_wal_lsn) yet, and the run must still include it.
        .query_one("SELECT pg_current_wal_insert_lsn()::text")
        .await?
        .and_then(|row| row.get(0).and_then(|text| text.parse().ok()))
        .ok_or_else(|| {
            TapError::Postgres(crate::pg::PgError::protocol(
                "reading the WAL position",
                "pg_current_wal_lsn() returned nothing",
            ))
        })
}

/// Refuses a state written for another database (pgferry's `pgferry_source`) or one whose LSN
/// this server has not reached (the old format carries no database name).
fn check_state_source(
    state: &TapState,
    identity: &Value,
    wal_end: Lsn,
    path: &str,
) -> Result<(), TapError> {
    if let Some(source) = state.source() {
        let same_db = source.get("dbname") == identity.get("dbname");
        let same_system = match (
            source.get("system_identifier").and_then(Value::as_str),
            identity.get("system_identifier").and_then(Value::as_str),
        ) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        if !same_db || !same_system {
            return Err(TapError::State {
                path: path.to_owned(),
                detail: format!(
                    "it was written for database {} (system {}), but this config reads {} (system {})\nHINT: use the state file of this database, or start without -s to copy everything again",
                    source.get("dbname").unwrap_or(&Value::Null),
                    source.get("system_identifier").unwrap_or(&Value::Null),
                    identity.get("dbname").unwrap_or(&Value::Null),
                    identity.get("system_identifier").unwrap_or(&Value::Null),
                ),
            });
        }
    }
    for stream in state.streams() {
        if let Ok(Some(lsn)) = state.lsn(&stream) {
            if lsn > wal_end {
                return Err(TapError::State {
                    path: path.to_owned(),
                    detail: format!(
                        "bookmark lsn {lsn} of {stream} is ahead of this server's WAL ({wal_end}): the state belongs to another database server\nHINT: use the state file of this database, or start without -s to copy everything again"
                    ),
                });
            }
        }
        if let Err(detail) = state.lsn(&stream) {
            return Err(TapError::State {
                path: path.to_owned(),
                detail,
            });
        }
    }
    Ok(())
}

/// Classifies each stream, clearing bookmarks whose replication method changed.
fn sync_methods(
    plans: &[StreamPlan],
    state: &mut TapState,
    path: &str,
) -> Result<Vec<SyncMethod>, TapError> {
    let mut methods = Vec::with_capacity(plans.len());
    for plan in plans {
        let name = match plan.method {
            ReplicationMethod::FullTable => "FULL_TABLE",
            ReplicationMethod::LogBased => "LOG_BASED",
        };
        let last = state
            .bookmark(&plan.stream, "last_replication_method")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if last.as_deref().is_some_and(|last| last != name) {
            tracing::info!(stream = %plan.stream, from = ?last, to = name, "replication method changed: starting the stream over");
            state.reset_stream(&plan.stream);
        }
        state.set_bookmark(&plan.stream, "last_replication_method", Value::from(name));
        let xmin = state.bookmark(&plan.stream, "xmin").is_some();
        let lsn = state.bookmark(&plan.stream, "lsn").is_some();
        methods.push(match (plan.method, xmin, lsn) {
            (ReplicationMethod::FullTable, _, _) => SyncMethod::Full,
            (ReplicationMethod::LogBased, true, true) => SyncMethod::LogicalInitialInterrupted,
            (ReplicationMethod::LogBased, true, false) => {
                return Err(TapError::State {
                    path: path.to_owned(),
                    detail: format!("stream {} has an xmin bookmark but no lsn: a LOG_BASED copy cannot resume from it\nHINT: remove the stream's bookmarks to copy it again", plan.stream),
                })
            }
            (ReplicationMethod::LogBased, false, false) => SyncMethod::LogicalInitial,
            (ReplicationMethod::LogBased, false, true) => SyncMethod::PureLogical,
        });
    }
    Ok(methods)
}

/// The slot to use: the first candidate that exists (a slot of this database; its plugin is
/// judged by the plugin rule), else the name to create, with whether it exists.
async fn locate_slot(
    client: &mut ReplicationClient,
    config: &PgSourceConfig,
) -> Result<(String, bool), TapError> {
    let candidates = config.slot_candidates();
    for slot in &candidates {
        let row = client
            .connection()
            .query_one(&format!(
                "SELECT NULL, database FROM pg_replication_slots WHERE slot_name = {}",
                quote_literal(slot)
            ))
            .await?;
        if let Some(row) = row {
            if row.get(1) != Some(config.connection.dbname.as_str()) {
                return Err(TapError::Unsupported(format!(
                    "replication slot {slot:?} belongs to database {:?}, not {:?}\nHINT: slots are per database; set \"replication_slot\" (or \"tap_id\") to a slot of this database",
                    row.get(1).unwrap_or_default(),
                    config.connection.dbname
                )));
            }
            return Ok((slot.clone(), true));
        }
    }
    let create = if config.tap_id.is_some() && !config.replication_slot_explicit {
        candidates.last().cloned().unwrap_or_default()
    } else {
        config.replication_slot.clone()
    };
    Ok((create, false))
}

/// Runs the tap, writing Singer messages to `out`; stops streaming when `shutdown` turns true.
pub async fn run<W: Write>(
    options: &TapOptions,
    out: W,
    metrics: &Metrics,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<TapSummary, TapError> {
    let tap_config = read_tap_config(&options.config)?;
    let config = tap_config.source.clone();
    let mut out = MessageWriter::new(out);
    if options.discover {
        let catalog = crate::source::discover::catalog(&config).await?;
        let text = serde_json::to_string_pretty(&catalog)
            .map_err(|error| TapError::Decode(error.to_string()))?;
        let text = String::from_utf8_lossy(&output::exact_integers(text.as_bytes())).into_owned();
        out.raw(&text)?;
        return Ok(TapSummary::default());
    }
    let catalog = options.catalog.as_deref().map(read_catalog).transpose()?;
    let state_path = options
        .state
        .as_ref()
        .map_or_else(|| "(none)".to_owned(), |path| path.display().to_string());
    let mut state = match &options.state {
        Some(path) => TapState::from_file(path)?,
        None => TapState::default(),
    };

    // Everything is checked before the first message is written.
    let mut connection = Connection::connect(&config.connect_options()).await?;
    let mut plans = plan_streams(&mut connection, &config, catalog.as_deref()).await?;
    let identity = source_identity(&mut connection, &config.connection.dbname).await;
    let wal_end = current_wal_lsn(&mut connection).await?;
    check_state_source(&state, &identity, wal_end, &state_path)?;
    let methods = sync_methods(&plans, &mut state, &state_path)?;
    let logical: Vec<String> = plans
        .iter()
        .filter(|plan| plan.method == ReplicationMethod::LogBased)
        .map(|plan| plan.stream.clone())
        .collect();
    if !logical.is_empty() {
        state.drop_log_based_except(&logical);
    }
    state.set_source(identity);

    let mut slot = None;
    let mut holder = None;
    let mut initial_lsn = wal_end;
    let mut snapshot = None;
    let mut plugin = None;
    if !logical.is_empty() {
        let mut client = ReplicationClient::connect(&config.connect_options())
            .await
            .map_err(|error| match wal_senders_exhausted_message(&error) {
                Some(message) => TapError::Unsupported(message),
                None => TapError::Postgres(error),
            })?;
        let (name, exists) = locate_slot(&mut client, &config).await?;
        let tables: Vec<(String, String)> = plans
            .iter()
            .filter(|plan| plan.method == ReplicationMethod::LogBased)
            .map(|plan| (plan.table.schema.clone(), plan.table.name.clone()))
            .collect();
        let (choice, allow) = resolve_plugin(
            client.connection(),
            &config,
            &name,
            &tables,
            PartitionNames::Root,
        )
        .await?;
        let chosen = choice
            .map_err(|refusal| TapError::Unsupported(refusal.message()))?
            .log();
        if chosen.plugin == OutputPlugin::PgOutput {
            let coverage = ensure_publication(
                &config.connect_options(),
                &config.publication,
                &tables,
                PartitionNames::Root,
            )
            .await
            .map_err(|error| match error {
                PublicationError::Postgres(error) => TapError::Postgres(error),
                PublicationError::Unusable(message) => TapError::Unsupported(message),
            })?;
            // The publications' contract shapes the LOG_BASED streams' copy and SCHEMA too.
            for plan in plans
                .iter_mut()
                .filter(|plan| plan.method == ReplicationMethod::LogBased)
            {
                let published = coverage.table(&plan.table.schema, &plan.table.name);
                plan.follow_publication(published, &config.publication)
                    .map_err(TapError::Unsupported)?;
            }
        } else if config.publication.explicit() {
            tracing::warn!(publication = %config.publication.describe(), "wal2json ignores publications: every row and selected column is copied and streamed");
        }
        let needs_copy = methods.contains(&SyncMethod::LogicalInitial);
        if !exists {
            if methods.contains(&SyncMethod::PureLogical)
                || methods.contains(&SyncMethod::LogicalInitialInterrupted)
            {
                return Err(TapError::State {
                    path: state_path,
                    detail: format!("the state has lsn bookmarks but the replication slot {name:?} does not exist: the changes since are lost to this slot\nHINT: remove the LOG_BASED streams' bookmarks from the state (they are copied again), or create the slot the state was made with"),
                });
            }
            // A new slot: its exported snapshot is the first copy's snapshot, and its
            // consistent point the streams' lsn, so no change is missed or repeated.
            let created = client
                .create_logical_slot(&name, chosen.plugin.name(), SlotSnapshot::Export, false)
                .await
                .map_err(|error| {
                    match refused_plugin_message(&error, &chosen, &allow)
                        .or_else(|| slots_exhausted_message(&error))
                    {
                        Some(message) => TapError::Unsupported(message),
                        None => TapError::Postgres(error),
                    }
                })?;
            tracing::info!(slot = %name, consistent_point = %created.consistent_point, "created the replication slot");
            initial_lsn = created.consistent_point;
            snapshot = created.snapshot_name;
            holder = Some(client);
        } else if needs_copy {
            tracing::info!(slot = %name, lsn = %wal_end, "using the existing slot: streams start at the WAL position read before their copy");
        }
        slot = Some(name);
        plugin = Some((chosen, allow));
    }
    connection.close().await;

    let primary = config.connect_options();
    let secondary = full_table_options(&config)?;
    let mut order: Vec<usize> = (0..plans.len()).collect();
    if let Some(current) = state.currently_syncing().map(str::to_owned) {
        order.sort_by_key(|&index| plans[index].stream != current);
    }
    let mut summary = TapSummary {
        streams: plans.len(),
        ..TapSummary::default()
    };
    // Connected: copying, then streaming (`/readyz` with --metrics-addr).
    metrics.set_phase(Phase::Copying);
    for index in order {
        let plan = &plans[index];
        let method = methods[index];
        if method == SyncMethod::PureLogical {
            continue;
        }
        state.set_currently_syncing(Some(&plan.stream));
        let (options, under) = match method {
            SyncMethod::Full => (&secondary, None),
            SyncMethod::LogicalInitial => {
                state.set_bookmark(&plan.stream, "lsn", Value::from(initial_lsn.as_u64()));
                (&primary, snapshot.as_deref())
            }
            _ => (&primary, None),
        };
        out.schema(&plan.stream, &plan.schema, &plan.key_properties, &[])?;
        let copy = full_table::sync_stream(options, under, plan, &mut state, &mut out, metrics);
        tokio::select! {
            rows = copy => rows?,
            _ = async {
                while shutdown.changed().await.is_ok() {
                    if *shutdown.borrow() {
                        return;
                    }
                }
                std::future::pending::<()>().await;
            } => return Err(TapError::Interrupted(plan.stream.clone())),
        };
        state.set_currently_syncing(None);
        out.state(&state.value())?;
    }
    // The snapshot is no longer needed once every first copy is done.
    if let Some(client) = holder {
        client.into_inner().close().await;
    }

    let streaming: Vec<StreamPlan> = plans
        .iter()
        .zip(&methods)
        .filter(|(_, method)| **method == SyncMethod::PureLogical)
        .map(|(plan, _)| plan.clone())
        .collect();
    if let (false, Some(slot), Some((chosen, allow))) = (streaming.is_empty(), slot, plugin) {
        let settings = logical::LogicalSettings {
            slot,
            plugin: chosen,
            allow,
            end_lsn: wal_end,
            break_at_end_lsn: config.break_at_end_lsn.unwrap_or(true),
            max_run: tap_config.max_run,
            poll_total: tap_config.logical_poll_total,
            state_path: options.state.clone(),
        };
        metrics.set_phase(Phase::Streaming);
        let streamed = logical::sync(
            &config, streaming, &mut state, &settings, &mut out, shutdown, metrics,
        )
        .await?;
        summary.lsn = Some(streamed.lsn);
    }
    out.flush()?;
    summary.records = out.records();
    metrics.set_phase(Phase::Finished);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_secondary_reads_full_tables_from_the_replica() {
        let parse = |value: Value| {
            PgSourceConfig::from_object(value.as_object().expect("object")).expect("config")
        };
        let config = parse(
            json!({"host": "primary", "port": 5432, "user": "u", "dbname": "d",
            "use_secondary": true, "secondary_host": "replica", "secondary_port": "5433"}),
        );
        let options = full_table_options(&config).expect("options");
        assert_eq!((options.host.as_str(), options.port), ("replica", 5433));
        assert_eq!(
            config.connect_options().host,
            "primary",
            "streaming stays on the primary"
        );
        let missing =
            parse(json!({"host": "p", "user": "u", "dbname": "d", "use_secondary": "true"}));
        assert!(full_table_options(&missing)
            .unwrap_err()
            .to_string()
            .contains("secondary_host"));
        let off = parse(json!({"host": "p", "user": "u", "dbname": "d", "secondary_host": "r"}));
        assert_eq!(full_table_options(&off).expect("options").host, "p");
    }

    #[test]
    fn a_state_from_another_database_is_refused() {
        let mut state = TapState::default();
        state.set_source(json!({"dbname": "shop", "system_identifier": "1"}));
        let here = json!({"dbname": "shop", "system_identifier": "2"});
        let error = check_state_source(&state, &here, Lsn::MAX, "s.json").unwrap_err();
        assert!(error.to_string().contains("system"), "{error}");
        assert!(check_state_source(
            &state,
            &json!({"dbname": "shop", "system_identifier": "1"}),
            Lsn::MAX,
            "s"
        )
        .is_ok());

        let old = TapState::parse(r#"{"bookmarks": {"public-t": {"lsn": 99999999999}}}"#).unwrap();
        let error = check_state_source(&old, &here, Lsn::from_u64(1000), "s.json").unwrap_err();
        assert!(
            error.to_string().contains("ahead of this server's WAL"),
            "{error}"
        );
    }
}

#[cfg(test)]
mod tap_config_tests {
    use super::*;
    use serde_json::json;

    fn parse(extra: Value) -> Result<TapConfig, TapError> {
        let mut config =
            json!({"host": "h", "user": "u", "dbname": "d", "filter_schemas": "public"});
        if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
            config.extend(extra.clone());
        }
        tap_config_from_object(config.as_object().expect("object"))
    }

    #[test]
    fn pipelinewise_keys_are_read_and_other_keys_are_warnings() {
        let config = parse(
            json!({"max_run_seconds": 43200, "logical_poll_total_seconds": "2.5",
            "default_replication_method": "LOG_BASED", "limit": 10, "filter_tabel": "t"}),
        )
        .expect("starts");
        assert_eq!(config.max_run, Some(std::time::Duration::from_secs(43200)));
        assert_eq!(
            config.logical_poll_total,
            Some(std::time::Duration::from_millis(2500))
        );
        assert_eq!(
            config.source.replication_method,
            ReplicationMethod::LogBased
        );
        assert_eq!(config.warnings.len(), 2, "{:?}", config.warnings);
        assert!(config.warnings[0].contains("did you mean \"filter_table\""));
        assert!(config.warnings[1].contains("INCREMENTAL"));
        let explicit = parse(
            json!({"replication_method": "FULL_TABLE", "default_replication_method": "LOG_BASED"}),
        )
        .expect("starts");
        assert_eq!(
            explicit.source.replication_method,
            ReplicationMethod::FullTable
        );
        let zero = parse(json!({"max_run_seconds": 0})).expect("starts");
        assert_eq!(zero.max_run, None, "0 is no bound");
        for bad in [json!("soon"), json!(-1), json!(1e300), json!([1])] {
            let error = parse(json!({"max_run_seconds": bad}))
                .unwrap_err()
                .to_string();
            assert!(error.contains("max_run_seconds"), "{error}");
        }
    }
}
