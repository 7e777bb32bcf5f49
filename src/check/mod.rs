//! `pgferry check`: every prerequisite of a PostgreSQL source, each with its fix.
//!
//! Checks run in order over one connection, plus one replication connection that proves
//! wal2json loads (a temporary slot is created and dropped). Each check yields a line with ✓ or ✗
//! and, for every ✗, the exact fix: the `postgresql.conf` line, the `ALTER ROLE`, the package,
//! or the SQL to run. LOG_BASED prerequisites only warn (⚠) for FULL_TABLE configs, which do
//! not need them. A check that cannot run because an earlier one failed is skipped (–).

use std::fmt::Write as _;

use serde::Serialize;

use crate::config::OutputPlugin;
use crate::config::{PgSourceConfig, ReplicationMethod};
use crate::pg::catalog::identity_without_key;
use crate::pg::catalog::publication_coverage;
use crate::pg::query::{quote_literal, Row};
use crate::pg::replication::{ReplicationClient, SlotSnapshot};
use crate::pg::{Connection, PgError};
use crate::source::plugin_choice::{allow_list_fix, is_refused_plugin, AllowList};
use crate::source::slot_setup::{resolve_plugin, PartitionNames};

mod destination;
pub use destination::run_pipeline;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The prerequisite holds.
    Pass,
    /// The prerequisite does not hold: the run would fail.
    Fail,
    /// Not needed for this config, but would be for LOG_BASED.
    Warn,
    /// Could not be checked because an earlier check failed.
    Skip,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Stable identifier, for machines (`wal_level`, `replication_privilege`, …).
    pub name: &'static str,
    /// The outcome.
    pub status: Status,
    /// What was found, in one sentence.
    pub detail: String,
    /// How to fix it, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// All checks of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Whether every check passed (warnings and skips aside, a skip implies a failure).
    pub ok: bool,
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
}

impl Report {
    /// The report for people: one line per check, fixes indented below.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for check in &self.checks {
            let mark = match check.status {
                Status::Pass => "✓",
                Status::Fail => "✗",
                Status::Warn => "⚠",
                Status::Skip => "–",
            };
            let _ = writeln!(out, "{mark} {}: {}", check.name, check.detail);
            if let Some(fix) = &check.fix {
                for (index, line) in fix.lines().enumerate() {
                    let lead = if index == 0 { "fix:" } else { "    " };
                    let _ = writeln!(out, "    {lead} {line}");
                }
            }
        }
        let failed = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count();
        if failed == 0 {
            let _ = writeln!(out, "all checks passed");
        } else {
            let _ = writeln!(out, "{failed} check(s) failed");
        }
        out
    }
}

/// Minor releases with the logical decoding bug (BUG #15114) the old connector refused:
/// (major as in server_version_num / 100 for 9.x, first fixed version_num).
const BUGGY_BEFORE: &[(u32, u32, &str)] = &[
    (904, 90_421, "9.4.21"),
    (905, 90_516, "9.5.16"),
    (906, 90_612, "9.6.12"),
    (1000, 100_007, "10.7"),
    (1100, 110_002, "11.2"),
];

/// Judges a server version: `Err(reason, fix)` when pgferry must refuse it.
pub fn judge_version(version_num: u32) -> Result<(), (String, String)> {
    if version_num < 90_400 {
        return Err((
            format!(
                "PostgreSQL {} is older than 9.4, the first release with logical decoding",
                format_version(version_num)
            ),
            "upgrade PostgreSQL to 9.4.21 or later (a supported release is best)".into(),
        ));
    }
    let series = if version_num >= 100_000 {
        version_num / 10_000 * 100
    } else {
        version_num / 100
    };
    for (buggy_series, fixed, fixed_text) in BUGGY_BEFORE {
        if series == *buggy_series && version_num < *fixed {
            return Err((
                format!(
                    "PostgreSQL {} has a logical decoding bug (BUG #15114) that can lose changes",
                    format_version(version_num)
                ),
                format!("upgrade to {fixed_text} or a later minor release"),
            ));
        }
    }
    Ok(())
}

fn format_version(num: u32) -> String {
    if num >= 100_000 {
        format!("{}.{}", num / 10_000, num % 10_000)
    } else {
        format!("{}.{}.{}", num / 10_000, num / 100 % 100, num % 100)
    }
}

struct Checker {
    checks: Vec<Check>,
    log_based: bool,
}

impl Checker {
    fn pass(&mut self, name: &'static str, detail: impl Into<String>) {
        self.checks.push(Check {
            name,
            status: Status::Pass,
            detail: detail.into(),
            fix: None,
        });
    }

    /// A failure; for FULL_TABLE configs, failures of LOG_BASED prerequisites are warnings.
    fn fail(
        &mut self,
        name: &'static str,
        log_based_only: bool,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        let status = if log_based_only && !self.log_based {
            Status::Warn
        } else {
            Status::Fail
        };
        self.checks.push(Check {
            name,
            status,
            detail: detail.into(),
            fix: Some(fix.into()),
        });
    }

    /// A warning: the run works, but something it streams will fail or be refused later.
    fn warn(&mut self, name: &'static str, detail: impl Into<String>, fix: impl Into<String>) {
        self.checks.push(Check {
            name,
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        });
    }

    fn skip(&mut self, name: &'static str, why: &str) {
        self.checks.push(Check {
            name,
            status: Status::Skip,
            detail: format!("not checked: {why}"),
            fix: None,
        });
    }

    fn report(self) -> Report {
        let ok = !self
            .checks
            .iter()
            .any(|c| matches!(c.status, Status::Fail | Status::Skip));
        Report {
            ok,
            checks: self.checks,
        }
    }
}

async fn setting(connection: &mut Connection, name: &str) -> Result<String, PgError> {
    let row = connection
        .query_one(&format!(
            "SELECT setting FROM pg_settings WHERE name = {}",
            quote_literal(name)
        ))
        .await?;
    Ok(row
        .and_then(|row| row.get(0).map(str::to_owned))
        .unwrap_or_default())
}

async fn count(connection: &mut Connection, sql: &str) -> Result<i64, PgError> {
    let row = connection.query_one(sql).await?;
    Ok(row
        .and_then(|row| row.get(0).and_then(|v| v.parse().ok()))
        .unwrap_or(0))
}

/// Runs every check against the source in `config`.
pub async fn run(config: &PgSourceConfig) -> Report {
    let mut checker = Checker {
        checks: Vec::new(),
        log_based: config.replication_method == ReplicationMethod::LogBased,
    };
    let options = config.connect_options();
    let mut connection = match Connection::connect(&options).await {
        Ok(connection) => {
            let tls = if connection.is_tls() { "TLS" } else { "no TLS" };
            let tls = format!("{tls}, {} authentication", connection.authentication());
            checker.pass(
                "connection",
                format!(
                    "connected to {} as {:?}, database {:?} ({tls})",
                    options.address(),
                    config.connection.user,
                    config.connection.dbname
                ),
            );
            connection
        }
        Err(error) => {
            checker.fail(
                "connection",
                false,
                format!(
                    "cannot connect to {}: {}",
                    options.address(),
                    first_line(&error.to_string())
                ),
                connection_fix(&error, config),
            );
            for name in [
                "server_version",
                "primary",
                "wal_level",
                "max_replication_slots",
                "max_wal_senders",
                "replication_privilege",
                "plugin",
                "replication_slot",
            ] {
                checker.skip(name, "no connection");
            }
            return checker.report();
        }
    };
    if let Err(error) = run_on(&mut checker, &mut connection, config).await {
        checker.fail("query", false, format!("a check query failed: {}", first_line(&error.to_string())), "see the server log; the role may lack privileges to read pg_settings or pg_replication_slots");
    }
    connection.close().await;
    checker.report()
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

fn connection_fix(error: &PgError, config: &PgSourceConfig) -> String {
    match error.code() {
        Some("28P01") => format!("check the password of role {:?} (config key \"password\")", config.connection.user),
        Some("28000") => format!(
            "allow the connection in pg_hba.conf, e.g.\nhost {} {} <client address>/32 scram-sha-256\nthen reload PostgreSQL (SELECT pg_reload_conf();)",
            config.connection.dbname, config.connection.user
        ),
        Some("3D000") => format!("database {:?} does not exist: check \"dbname\", or CREATE DATABASE", config.connection.dbname),
        _ => error
            .to_string()
            .lines()
            .find_map(|line| line.strip_prefix("HINT: "))
            .unwrap_or("check host, port, user, password and dbname in the config")
            .to_owned(),
    }
}

async fn run_on(
    checker: &mut Checker,
    connection: &mut Connection,
    config: &PgSourceConfig,
) -> Result<(), PgError> {
    let version_num: u32 = setting(connection, "server_version_num")
        .await?
        .parse()
        .unwrap_or(0);
    let version_text = setting(connection, "server_version").await?;
    match judge_version(version_num) {
        Ok(()) => checker.pass(
            "server_version",
            format!("PostgreSQL {version_text} (9.4 or later, without the logical decoding bug)"),
        ),
        Err((detail, fix)) => checker.fail("server_version", false, detail, fix),
    }

    let in_recovery = connection
        .query_one("SELECT pg_is_in_recovery()")
        .await?
        .and_then(|r| r.get(0).map(|v| v == "t"))
        .unwrap_or(false);
    if in_recovery {
        checker.fail("primary", true, "this server is a standby (in recovery); log-based replication needs the primary (master)", "point \"host\" at the primary instance; use_secondary/secondary_host can read FULL_TABLE data from a replica");
    } else {
        checker.pass("primary", "the server is a primary (not in recovery)");
    }

    let wal_level = setting(connection, "wal_level").await?;
    let wal_level_ok = wal_level == "logical";
    if wal_level_ok {
        checker.pass("wal_level", "wal_level = logical");
    } else {
        checker.fail("wal_level", true, format!("wal_level is {wal_level:?}; logical decoding needs \"logical\""), "in postgresql.conf set\nwal_level = logical\nthen restart PostgreSQL (or run ALTER SYSTEM SET wal_level = logical; and restart)");
    }

    let candidates = config.slot_candidates();
    let slot_list = candidates
        .iter()
        .map(|name| quote_literal(name))
        .collect::<Vec<_>>()
        .join(", ");
    let existing = connection
        .query(&format!("SELECT slot_name, plugin, slot_type, database, active, confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name IN ({slot_list}) ORDER BY array_position(ARRAY[{slot_list}]::text[], slot_name::text)"))
        .await?;
    let slot_exists = !existing.is_empty();

    let max_slots: i64 = setting(connection, "max_replication_slots")
        .await?
        .parse()
        .unwrap_or(0);
    let used_slots = count(connection, "SELECT count(*) FROM pg_replication_slots").await?;
    if max_slots == 0 {
        checker.fail(
            "max_replication_slots",
            true,
            "max_replication_slots = 0: no replication slot can exist",
            "in postgresql.conf set\nmax_replication_slots = 5\nthen restart PostgreSQL",
        );
    } else if used_slots >= max_slots && !slot_exists {
        checker.fail("max_replication_slots", true, format!("all {max_slots} replication slots are in use"), format!("raise max_replication_slots in postgresql.conf (e.g. to {}) and restart, or drop an unused slot: SELECT pg_drop_replication_slot('<name>');", max_slots + 5));
    } else {
        checker.pass(
            "max_replication_slots",
            format!("max_replication_slots = {max_slots}, {used_slots} in use"),
        );
    }

    let max_senders: i64 = setting(connection, "max_wal_senders")
        .await?
        .parse()
        .unwrap_or(0);
    let used_senders = count(connection, "SELECT count(*) FROM pg_stat_replication").await?;
    if max_senders == 0 {
        checker.fail(
            "max_wal_senders",
            true,
            "max_wal_senders = 0: no replication connection is allowed",
            "in postgresql.conf set\nmax_wal_senders = 5\nthen restart PostgreSQL",
        );
    } else if used_senders >= max_senders {
        checker.fail(
            "max_wal_senders",
            true,
            format!("all {max_senders} WAL senders are busy"),
            format!(
                "raise max_wal_senders in postgresql.conf (e.g. to {}) and restart PostgreSQL",
                max_senders + 5
            ),
        );
    } else {
        checker.pass(
            "max_wal_senders",
            format!("max_wal_senders = {max_senders}, {used_senders} in use"),
        );
    }

    let privileged = connection
        .query_one("SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user")
        .await?
        .and_then(|row| row.get(0).map(|v| v == "t"))
        .unwrap_or(false);
    if privileged {
        checker.pass(
            "replication_privilege",
            format!("role {:?} may start replication", config.connection.user),
        );
    } else {
        checker.fail(
            "replication_privilege",
            true,
            format!(
                "role {:?} lacks the REPLICATION attribute",
                config.connection.user
            ),
            format!(
                "as a superuser run: ALTER ROLE {} REPLICATION;",
                crate::pg::query::quote_identifier(&config.connection.user)
            ),
        );
    }

    let tables = selected_tables(connection, config).await?;
    let slot_name = existing
        .first()
        .and_then(|slot| slot.get(0))
        .unwrap_or(&candidates[0])
        .to_owned();
    let (choice, allow) = resolve_plugin(
        connection,
        config,
        &slot_name,
        &tables,
        PartitionNames::Leaves,
    )
    .await?;
    let chosen = match choice {
        Ok(chosen) => {
            checker.pass(
                "plugin",
                format!(
                    "{} ({}: {})",
                    chosen.plugin.name(),
                    config.plugin.name(),
                    chosen.reason
                ),
            );
            Some(chosen)
        }
        Err(refusal) => {
            checker.fail("plugin", true, refusal.detail, refusal.fix);
            None
        }
    };
    if let Some(chosen) = &chosen {
        let plugin = chosen.plugin;
        if !wal_level_ok || !privileged || max_slots == 0 || max_senders == 0 {
            checker.skip(plugin.name(), "the checks above must pass first");
        } else {
            let instead = chosen.pgoutput_fix.as_deref();
            check_plugin(checker, config, plugin, instead, &allow, version_num).await;
        }
        if plugin == OutputPlugin::PgOutput {
            check_publication(checker, connection, config, &tables).await?;
        } else if config.publication.explicit() {
            checker.warn(
                "publication",
                format!("{} in the config is not read: wal2json ignores publications, so every row and column of the selected tables is copied and streamed", config.publication.describe()),
                "to have the publications' row filters, column lists and actions apply, stream through pgoutput: \"plugin\": \"pgoutput\" (a new slot: another \"replication_slot\", or drop this one)",
            );
        }
    }
    check_replica_identity(checker, connection, &tables).await?;

    match existing.first() {
        Some(slot) => {
            let name = slot.get(0).unwrap_or_default();
            let plugin = slot.get(1).unwrap_or_default();
            let database = slot.get(3).unwrap_or_default();
            if slot.get(2) != Some("logical") {
                checker.fail("replication_slot", true, format!("slot {name:?} exists but is a physical slot; logical decoding needs a logical one"), format!("set \"replication_slot\" to another name, or drop the slot: SELECT pg_drop_replication_slot({});", quote_literal(name)));
            } else if database != config.connection.dbname {
                checker.fail("replication_slot", true, format!("slot {name:?} belongs to database {database:?}, not {:?}", config.connection.dbname), "set \"replication_slot\" to a slot of this database, or create one: SELECT * FROM pg_create_logical_replication_slot('<name>', 'wal2json'); in that database");
            } else {
                let active = if slot.get(4) == Some("t") {
                    ", in use by another session"
                } else {
                    ""
                };
                checker.pass(
                    "replication_slot",
                    format!(
                        "slot {name:?} exists with plugin {plugin}, confirmed up to {}{active}",
                        slot.get(5).unwrap_or("?")
                    ),
                );
            }
        }
        None => {
            let name = &candidates[0];
            let plugin = chosen
                .as_ref()
                .map_or("pgoutput", |chosen| chosen.plugin.name());
            checker.pass("replication_slot", format!("slot {name:?} does not exist yet; `pgferry run` creates it with a consistent snapshot (to create it yourself: SELECT * FROM pg_create_logical_replication_slot({}, '{plugin}');)", quote_literal(name)));
        }
    }
    Ok(())
}

/// Selected tables whose UPDATEs and DELETEs carry no old key (REPLICA IDENTITY NOTHING, or
/// DEFAULT without a primary key), or that have no key at all (FULL without one): a warning
/// with the statement that gives each an identity.
async fn check_replica_identity(
    checker: &mut Checker,
    connection: &mut Connection,
    tables: &[(String, String)],
) -> Result<(), PgError> {
    if tables.is_empty() || !checker.log_based {
        return Ok(());
    }
    let values: Vec<String> = tables
        .iter()
        .map(|(schema, table)| format!("({}, {})", quote_literal(schema), quote_literal(table)))
        .collect();
    let rows = connection
        .query(&format!(
            "SELECT format('%I.%I', n.nspname, c.relname), c.relreplident, \
               EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), \
               EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisreplident) \
             FROM (VALUES {}) AS t (schema_name, table_name) \
             JOIN pg_catalog.pg_namespace n ON n.nspname = t.schema_name \
             JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name \
             WHERE c.relkind IN ('r', 'p') ORDER BY 1",
            values.join(", ")
        ))
        .await?;
    let mut without = Vec::new();
    let mut fixes = Vec::new();
    for row in &rows {
        let name = row.get(0).unwrap_or_default();
        let primary = row.get(2) == Some("t");
        let index = row.get(3) == Some("t");
        match (row.get(1), primary, index) {
            (Some("n"), true, _) => {
                without.push(format!("{name} (REPLICA IDENTITY NOTHING)"));
                fixes.push(format!("ALTER TABLE {name} REPLICA IDENTITY DEFAULT;"));
            }
            (Some("n"), false, _) | (Some("d"), false, _) => {
                without.push(format!("{name} (no primary key)"));
                fixes.push(format!(
                    "ALTER TABLE {name} ADD PRIMARY KEY (<its key columns>);"
                ));
            }
            (Some("i"), _, false) => {
                without.push(format!("{name} (its replica identity index is gone)"));
                fixes.push(format!("ALTER TABLE {name} REPLICA IDENTITY DEFAULT;"));
            }
            (Some("f"), false, _) => {
                without.push(format!("{name} (REPLICA IDENTITY FULL without a key)"));
                fixes.push(format!(
                    "ALTER TABLE {name} ADD PRIMARY KEY (<its key columns>);"
                ));
            }
            _ => {}
        }
    }
    // A replica identity index other than the primary key that lacks some of its columns: a
    // DELETE then carries no primary key, so run refuses the table.
    let lacking = connection
        .query(&format!(
            "SELECT format('%I.%I', n.nspname, c.relname), a.attname \
             FROM (VALUES {}) AS t (schema_name, table_name) \
             JOIN pg_catalog.pg_namespace n ON n.nspname = t.schema_name \
             JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name \
             JOIN pg_catalog.pg_index p ON p.indrelid = c.oid AND p.indisprimary AND NOT p.indisreplident \
             JOIN pg_catalog.pg_index r ON r.indrelid = c.oid AND r.indisreplident \
             CROSS JOIN LATERAL unnest(p.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k (attnum, ord) \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum \
             WHERE c.relreplident = 'i' AND k.ord <= p.indnkeyatts \
               AND NOT EXISTS (SELECT 1 FROM unnest(r.indkey::pg_catalog.int2[]) WITH ORDINALITY AS x (attnum, ord) \
                               WHERE x.ord <= r.indnkeyatts AND x.attnum = k.attnum) \
             ORDER BY 1, k.ord",
            values.join(", ")
        ))
        .await?;
    let mut by_table: Vec<(String, Vec<String>)> = Vec::new();
    for row in &lacking {
        let (table, column) = row.pair();
        match by_table.last_mut() {
            Some((last, columns)) if *last == table => columns.push(column),
            _ => by_table.push((table, vec![column])),
        }
    }
    if by_table.is_empty() {
        checker.pass(
            "replica_identity_index",
            "no selected table is identified by an index without its primary key",
        );
    } else {
        let (problems, fixes): (Vec<String>, Vec<String>) = by_table
            .iter()
            .map(|(table, columns)| {
                let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
                identity_without_key(table, &columns)
            })
            .unzip();
        checker.fail(
            "replica_identity_index",
            true,
            format!("{}: pgferry run refuses these tables", problems.join("; ")),
            fixes.join("\n"),
        );
    }
    if without.is_empty() {
        checker.pass(
            "replica_identity",
            "every selected table's UPDATEs and DELETEs carry its key",
        );
    } else {
        checker.warn(
            "replica_identity",
            format!("UPDATEs and DELETEs of {} carry no key: through pgoutput PostgreSQL refuses them (the writes fail while the table is published), through wal2json the run stops at the first one", without.join(", ")),
            fixes.join("\n"),
        );
    }
    Ok(())
}

/// The tables a source config selects (`filter_schemas`, `filter_table`), as `(schema, table)`.
async fn selected_tables(
    connection: &mut Connection,
    config: &PgSourceConfig,
) -> Result<Vec<(String, String)>, PgError> {
    let mut filter = String::from("c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' AND NOT c.relispartition");
    if !config.filter_schemas.is_empty() {
        let list: Vec<String> = config
            .filter_schemas
            .iter()
            .map(|schema| quote_literal(schema))
            .collect();
        filter.push_str(&format!(" AND n.nspname IN ({})", list.join(", ")));
    }
    if let Some(table) = &config.filter_table {
        filter.push_str(&format!(" AND c.relname = {}", quote_literal(table)));
    }
    Ok(connection
        .query(&format!(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {filter} ORDER BY 1, 2"
        ))
        .await?
        .iter()
        .map(Row::pair)
        .collect())
}

/// pgoutput reads the publications: together they must publish every selected table (or a
/// single one may not exist yet, and `pgferry run` creates it); several must all exist. Each
/// table's contract (row filter, column list, actions other than all) is printed, since the
/// copy follows it too.
async fn check_publication(
    checker: &mut Checker,
    connection: &mut Connection,
    config: &PgSourceConfig,
    tables: &[(String, String)],
) -> Result<(), PgError> {
    let publications = &config.publication;
    let coverage = publication_coverage(connection, publications.names(), tables).await?;
    let missing = &coverage.missing;
    let quoted = crate::pg::query::quote_identifier(publications.first());
    let named = publications.describe();
    let plural = if publications.several() {
        ("publications", "publish", "do not publish")
    } else {
        ("publication", "publishes", "does not publish")
    };
    if publications.several() && !coverage.exists() {
        let message =
            crate::source::slot_setup::missing_publications(publications, &coverage.absent, tables);
        let (detail, fix) = message.split_once("\nHINT: ").unwrap_or((&message, ""));
        checker.fail("publication", true, detail, fix);
        return Ok(());
    }
    if !coverage.exists() {
        checker.pass(
            "publication",
            format!("publication {named} does not exist yet; `pgferry run` creates it for the selected tables (the tables' owner must run pgferry, or create it: CREATE PUBLICATION {quoted} FOR TABLE {};)", if missing.is_empty() { "<tables>".to_owned() } else { missing.join(", ") }),
        );
        return Ok(());
    }
    if missing.is_empty() {
        checker.pass(
            "publication",
            format!("{} {named} {} every selected table", plural.0, plural.1),
        );
    } else if !publications.explicit() {
        // pgferry's own publication: `run` adds the tables, and they join the pipeline.
        checker.pass(
            "publication",
            format!("publication {named} does not publish {} yet; `pgferry run` adds them (they are copied, then streamed)", missing.join(", ")),
        );
    } else {
        checker.fail(
            "publication",
            true,
            format!("{} {named} {} {}", plural.0, plural.2, missing.join(", ")),
            format!(
                "ALTER PUBLICATION {quoted} ADD TABLE {};",
                missing.join(", ")
            ),
        );
    }
    // A partition's TRUNCATE never arrives through a publication via the root.
    let hidden = crate::source::slot_setup::truncates_hidden_by_root(&coverage);
    if !hidden.is_empty() {
        let message = crate::source::slot_setup::via_root_message(publications, &hidden);
        let (detail, fix) = message.split_once("\nHINT: ").unwrap_or((&message, ""));
        checker.fail("publication", true, detail, fix);
    }
    for table in &coverage.published {
        let name = format!(
            "{}.{}",
            crate::pg::query::quote_identifier(&table.schema),
            crate::pg::query::quote_identifier(&table.table)
        );
        if let Some(lists) = &table.column_conflict {
            let described = crate::source::slot_setup::describe_column_lists(lists);
            checker.fail(
                "publication",
                true,
                format!("{name}: the publications list different columns: {}; PostgreSQL refuses to stream it", described.join(", ")),
                format!("give {name} the same column list in each publication, or name only one of them in \"publication\""),
            );
            continue;
        }
        if table.columns.is_some() {
            // The run's own rule: the column list must hold the key.
            let found = crate::pg::catalog::discover(
                connection,
                std::slice::from_ref(&table.schema),
                Some(&table.table),
            )
            .await?;
            if let Some(discovered) = found.iter().find(|found| found.name == table.table) {
                if let Err(message) = crate::source::publication_contract::shape_table(
                    discovered,
                    Some(table),
                    publications,
                ) {
                    let (detail, fix) = message.split_once("\nHINT: ").unwrap_or((&message, ""));
                    checker.fail("publication", true, detail, fix);
                    continue;
                }
            }
        }
        let mut contract = Vec::new();
        if let Some(filter) = &table.row_filter {
            contract.push(format!("rows WHERE {filter}"));
        }
        if let Some(columns) = &table.columns {
            contract.push(format!("columns {}", columns.join(", ")));
        }
        if !table.actions.all() {
            contract.push(format!("publish {} only", table.actions.describe()));
        }
        if contract.is_empty() {
            continue;
        }
        let by: Vec<String> = table
            .publications
            .iter()
            .map(|name| format!("{name:?}"))
            .collect();
        checker.pass(
            "publication",
            format!(
                "{name} ({}): {}; the LOG_BASED copy follows the same rows and columns",
                by.join(", "),
                contract.join("; ")
            ),
        );
    }
    Ok(())
}

/// Proves the output plugin loads and replication connections are allowed: a temporary slot
/// is created over a replication connection and dropped at once.
async fn check_plugin(
    checker: &mut Checker,
    config: &PgSourceConfig,
    output_plugin: OutputPlugin,
    pgoutput_fix: Option<&str>,
    allow: &AllowList,
    version_num: u32,
) {
    let plugin = output_plugin.name();
    let options = config.connect_options();
    let mut client = match ReplicationClient::connect(&options).await {
        Ok(client) => client,
        Err(error)
            if crate::source::slot_setup::wal_senders_exhausted_message(&error).is_some() =>
        {
            let message = crate::source::slot_setup::wal_senders_exhausted_message(&error)
                .unwrap_or_default();
            let (detail, fix) = message.split_once("\nHINT: ").unwrap_or((&message, ""));
            checker.fail(
                plugin,
                true,
                format!("a replication connection was refused: {detail}"),
                fix,
            );
            return;
        }
        Err(error) => {
            checker.fail(plugin, true, format!("a replication connection was refused: {}", first_line(&error.to_string())), "allow it in pg_hba.conf for this database and user (logical replication matches the database name, not the keyword \"replication\"), then SELECT pg_reload_conf();");
            return;
        }
    };
    let slot = format!("pgferry_check_{}", std::process::id());
    let temporary = version_num >= 100_000;
    match client
        .create_logical_slot(&slot, plugin, SlotSnapshot::Nothing, temporary)
        .await
    {
        Ok(_) => {
            let dropped = client.drop_slot(&slot, false).await;
            match dropped {
                Ok(()) => checker.pass(
                    plugin,
                    format!(
                        "the {plugin} output plugin loads (a test slot was created and dropped)"
                    ),
                ),
                Err(error) => checker.fail(
                    plugin,
                    true,
                    format!(
                        "{plugin} loads, but the test slot {slot:?} could not be dropped: {}",
                        first_line(&error.to_string())
                    ),
                    format!("drop it by hand: SELECT pg_drop_replication_slot('{slot}');"),
                ),
            }
        }
        Err(error) if error.code() == Some("58P01") => {
            let major = if version_num >= 100_000 {
                (version_num / 10_000).to_string()
            } else {
                format!("{}.{}", version_num / 10_000, version_num / 100 % 100)
            };
            checker.fail("wal2json", true, "the wal2json output plugin is not installed on the server", format!("install it on the database server: Debian/Ubuntu: apt-get install postgresql-{major}-wal2json; RHEL/Fedora: dnf install wal2json_{}; or build it from source (no restart needed)", major.replace('.', "")));
        }
        Err(error) if is_refused_plugin(&error) => checker.fail(
            plugin,
            true,
            format!(
                "the server refuses {plugin} as an output plugin ({}): {}",
                allow.describe(),
                first_line(&error.to_string())
            ),
            allow_list_fix(allow, output_plugin, pgoutput_fix),
        ),
        Err(error) => checker.fail(
            plugin,
            true,
            format!(
                "a test slot with {plugin} could not be created: {}",
                first_line(&error.to_string())
            ),
            slot_failure_fix(&error),
        ),
    }
    client.into_inner().close().await;
}

/// The fix for a test slot the server refused for a reason other than the allow-list.
fn slot_failure_fix(error: &PgError) -> String {
    match error.code() {
        Some("53400") => "every replication slot or WAL sender is in use: list them with SELECT slot_name, active, database FROM pg_replication_slots; drop unused ones with SELECT pg_drop_replication_slot('<name>'); or raise max_replication_slots / max_wal_senders in postgresql.conf and restart".to_owned(),
        Some("55000") => "in postgresql.conf set\nwal_level = logical\nthen restart PostgreSQL".to_owned(),
        Some("42501") => "as a superuser run: ALTER ROLE <the config's user> REPLICATION;".to_owned(),
        _ => match error.as_db_error().and_then(|db| db.hint.clone()) {
            Some(hint) => hint,
            None => "the server's reason is in the line above; fix that, then run pgferry check again".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_judged_like_the_old_connector() {
        assert!(judge_version(90_399).is_err());
        assert!(judge_version(90_420).unwrap_err().0.contains("15114"));
        assert!(judge_version(90_421).is_ok());
        assert!(judge_version(90_515).is_err());
        assert!(judge_version(90_611).is_err());
        assert!(judge_version(100_006).is_err());
        assert!(judge_version(100_007).is_ok());
        assert!(judge_version(110_001).unwrap_err().1.contains("11.2"));
        assert!(judge_version(110_002).is_ok());
        assert!(judge_version(150_018).is_ok());
    }

    #[test]
    fn text_report_marks_failures_with_their_fix() {
        let report = Report {
            ok: false,
            checks: vec![
                Check {
                    name: "wal_level",
                    status: Status::Fail,
                    detail: "wal_level is \"replica\"".into(),
                    fix: Some("in postgresql.conf set\nwal_level = logical".into()),
                },
                Check {
                    name: "primary",
                    status: Status::Pass,
                    detail: "ok".into(),
                    fix: None,
                },
            ],
        };
        let text = report.to_text();
        assert!(text.contains("✗ wal_level"), "{text}");
        assert!(
            text.contains("    fix: in postgresql.conf set\n         wal_level = logical"),
            "{text}"
        );
        assert!(text.contains("✓ primary: ok"));
        assert!(text.ends_with("1 check(s) failed\n"));
    }
}
