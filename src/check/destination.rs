//! `pgferry check` of a pipeline file: the source as for a source config (or a GDN source),
//! then the destination (GDN reachable with the key accepted, or the target database reachable
//! and open to creating tables).

use super::{first_line, run, Checker, Report, Status};
use crate::config::ReplicationMethod;
use crate::pg::Connection;

/// The checks of a pipeline file: its PostgreSQL source (as [`run`]), or its GDN source, then
/// its destination: GDN reachable and the key accepted, or the target database reachable and
/// open to creating tables.
pub async fn run_pipeline(pipeline: &crate::config::Pipeline) -> Report {
    use crate::config::{DestinationConfig, Pipeline};
    let (mut report, log_based) = match pipeline {
        Pipeline::FromPostgres(config) => (
            run(&config.source).await,
            config.source.replication_method == ReplicationMethod::LogBased,
        ),
        Pipeline::GdnToPg(config) => {
            let mut checker = Checker {
                checks: Vec::new(),
                log_based: true,
            };
            let source = &config.source;
            check_gdn(
                &mut checker,
                "gdn_source",
                &source.base_url,
                &source.fabric,
                &source.auth,
                source.request_timeout,
                &source.collections,
            )
            .await;
            (checker.report(), true)
        }
    };
    let mut checker = Checker {
        checks: Vec::new(),
        log_based,
    };
    match pipeline {
        Pipeline::FromPostgres(config) => match &config.destination {
            DestinationConfig::Gdn(gdn) => {
                check_gdn(
                    &mut checker,
                    "gdn_destination",
                    &gdn.base_url,
                    &gdn.fabric,
                    &gdn.auth,
                    gdn.request_timeout,
                    &[],
                )
                .await
            }
            DestinationConfig::Postgres(replica) => {
                check_target_database(&mut checker, &replica.connection).await
            }
            DestinationConfig::Null => {}
        },
        Pipeline::GdnToPg(config) => {
            check_target_database(&mut checker, &config.destination.connection).await
        }
    }
    report.checks.extend(checker.checks);
    report.ok = !report
        .checks
        .iter()
        .any(|check| matches!(check.status, Status::Fail | Status::Skip));
    report
}

/// GDN answers at `base_url`, accepts the credentials, and (for a source) has `collections`.
async fn check_gdn(
    checker: &mut Checker,
    name: &'static str,
    base_url: &str,
    fabric: &str,
    auth: &crate::config::GdnAuth,
    timeout: std::time::Duration,
    collections: &[String],
) {
    let fix_for = |error: &crate::gdn::client::GdnError| {
        match error.status() {
        Some(401 | 403) => "the API key (or email/password) was refused: check \"api_key\" (an {\"env\": \"NAME\"} must name a set variable) and that the key may use this fabric".to_owned(),
        Some(404) => format!("fabric {fabric:?} was not found: check \"fabric\""),
        Some(_) => "GDN answered with an error: retry later, or check the service's status".to_owned(),
        None => format!("check \"gdn_host\" / \"gdn_url\" ({base_url}), DNS and the network path (proxy, firewall)"),
    }
    };
    let client = match crate::gdn::client::GdnClient::open(base_url, fabric, auth, timeout).await {
        Ok(client) => client,
        Err(error) => {
            let fix = fix_for(&error);
            checker.fail(
                name,
                false,
                format!("cannot reach GDN: {}", first_line(&error.to_string())),
                fix,
            );
            return;
        }
    };
    match client.collection_names().await {
        Ok(existing) => {
            let missing: Vec<&String> = collections
                .iter()
                .filter(|collection| !existing.contains(collection))
                .collect();
            if missing.is_empty() {
                checker.pass(
                    name,
                    format!("GDN at {base_url} accepted the credentials; fabric {fabric:?} has {} collections", existing.len()),
                );
            } else {
                checker.fail(
                    name,
                    false,
                    format!(
                        "fabric {fabric:?} has no collection {}",
                        missing
                            .iter()
                            .map(|c| format!("{c:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    "check \"source_collection\" (names are case-sensitive)",
                );
            }
        }
        Err(error) => {
            let fix = fix_for(&error);
            let detail = match error.status() {
                Some(_) => format!(
                    "GDN refused the request: {}",
                    first_line(&error.to_string())
                ),
                None => first_line(&error.to_string()).to_owned(),
            };
            checker.fail(name, false, detail, fix);
        }
    }
}

/// The target database accepts the connection and lets the role create tables (in schemas
/// it creates, or in `public`).
async fn check_target_database(
    checker: &mut Checker,
    connection: &crate::config::PgConnectionConfig,
) {
    let options = connection.connect_options();
    let mut target = match Connection::connect(&options).await {
        Ok(target) => target,
        Err(error) => {
            checker.fail(
                "target_connection",
                false,
                format!(
                    "cannot connect to the target database at {}: {}",
                    options.address(),
                    first_line(&error.to_string())
                ),
                "check the destination's host, port, dbname, user and password (and sslmode)",
            );
            checker.skip("target_privileges", "no connection");
            return;
        }
    };
    checker.pass(
        "target_connection",
        format!(
            "connected to the target database {:?} at {} as {:?}",
            connection.dbname,
            options.address(),
            connection.user
        ),
    );
    let row = target
        .query_one("SELECT has_database_privilege(current_user, current_database(), 'CREATE'), has_schema_privilege(current_user, 'public', 'CREATE')")
        .await;
    match row {
        Ok(Some(row)) if row.get(0) == Some("t") || row.get(1) == Some("t") => checker.pass(
            "target_privileges",
            "the role may create schemas or tables in public",
        ),
        Ok(_) => checker.fail(
            "target_privileges",
            false,
            format!("role {:?} may neither create schemas in {:?} nor tables in public (pgferry creates missing tables)", connection.user, connection.dbname),
            format!("GRANT CREATE ON DATABASE {} TO {};", crate::pg::query::quote_identifier(&connection.dbname), crate::pg::query::quote_identifier(&connection.user)),
        ),
        Err(error) => checker.fail(
            "target_privileges",
            false,
            format!("could not read the role's privileges: {}", first_line(&error.to_string())),
            "retry; if it persists, check the role's access to pg_catalog",
        ),
    }
    target.close().await;
}
