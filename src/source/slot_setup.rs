//! What a LOG_BASED start reads and prepares on the server before it uses its slot: the facts
//! the plugin choice rests on (the slot's plugin, the publication, the allow-list) and the
//! publication pgoutput reads. `pgferry run`, `pgferry tap` and `pgferry check` all go through
//! here, so they decide alike.

use crate::config::{PgSourceConfig, Publications};
use crate::pg::catalog::{publication_coverage, PublicationCoverage};
use crate::pg::query::{quote_identifier, quote_literal};
use crate::pg::{ConnectOptions, Connection, PgError};
use crate::source::plugin_choice::{
    allow_list_fix, choose, is_refused_plugin, AllowList, Chosen, PluginFacts, PublicationState,
    Refusal,
};

/// Reads the server's `output_plugin_libraries` as far as this role may.
pub async fn read_allow_list(connection: &mut Connection) -> Result<AllowList, PgError> {
    match connection.query_one("SHOW output_plugin_libraries").await {
        Ok(row) => {
            let setting = row
                .and_then(|row| row.get(0).map(str::to_owned))
                .unwrap_or_default();
            let context = connection
                .query_one("SELECT context FROM pg_catalog.pg_settings WHERE name = 'output_plugin_libraries'")
                .await?
                .and_then(|row| row.get(0).map(str::to_owned));
            Ok(AllowList::parse(
                &setting,
                context.as_deref() != Some("postmaster"),
            ))
        }
        // 42704: no such setting (a release before the allow-list).
        Err(error) if error.code() == Some("42704") => Ok(AllowList::Unrestricted),
        // 42501: only superusers and pg_read_all_settings may read it.
        Err(error) if error.code() == Some("42501") => Ok(AllowList::Hidden),
        Err(error) => Err(error),
    }
}

/// The plugin of slot `slot`, when it exists.
pub async fn slot_plugin(
    connection: &mut Connection,
    slot: &str,
) -> Result<Option<String>, PgError> {
    Ok(connection
        .query_one(&format!(
            "SELECT plugin FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
            quote_literal(slot)
        ))
        .await?
        .map(|row| row.get(0).unwrap_or_default().to_owned()))
}

/// How a publication pgferry creates publishes a partitioned table's changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionNames {
    /// Under the partitions' own names (`publish_via_partition_root` off, PostgreSQL's
    /// default): a TRUNCATE of one partition reaches pgferry (with it on, PostgreSQL sends
    /// none). `pgferry run` maps the names to the table, partitions attached later included.
    Leaves,
    /// Under the table's name (`publish_via_partition_root` on, from PostgreSQL 13): for the
    /// Singer tap, whose messages carry no TRUNCATE.
    Root,
}

/// `CREATE PUBLICATION` for the selected tables.
pub fn create_publication_sql(
    publication: &str,
    tables: &[(String, String)],
    names: PartitionNames,
    server_version: u32,
) -> String {
    let list: Vec<String> = tables
        .iter()
        .map(|(schema, table)| format!("{}.{}", quote_identifier(schema), quote_identifier(table)))
        .collect();
    let with_root = if names == PartitionNames::Root && server_version >= 130_000 {
        " WITH (publish_via_partition_root = true)"
    } else {
        ""
    };
    format!(
        "CREATE PUBLICATION {} FOR TABLE {}{with_root}",
        quote_identifier(publication),
        list.join(", ")
    )
}

/// The selected partitioned tables (`schema.table`, sorted) whose partitions' TRUNCATEs the
/// publications would never send: one of them publishes the table through its root
/// (`publish_via_partition_root`) and they publish truncates, and PostgreSQL then sends a
/// truncate only for the root itself.
pub fn truncates_hidden_by_root(coverage: &PublicationCoverage) -> Vec<String> {
    let mut hidden: Vec<String> = coverage
        .published
        .iter()
        .filter(|table| table.partitioned && table.via_root && table.actions.truncate)
        .map(|table| format!("{}.{}", table.schema, table.table))
        .collect();
    hidden.sort();
    hidden
}

/// Why publications through the partitioned tables' root cannot be used, and the fixes.
pub fn via_root_message(publications: &Publications, tables: &[String]) -> String {
    let each = |set: &str| {
        publications
            .names()
            .iter()
            .map(|name| format!("ALTER PUBLICATION {} SET ({set});", quote_identifier(name)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "publication {} publishes the partitioned table{} {} through its root (publish_via_partition_root = true) and publishes TRUNCATE: PostgreSQL then sends no TRUNCATE of a single partition, so the partition's rows would stay in the destination\nHINT: publish the partitions under their own names (pgferry maps them to the table): {} or leave TRUNCATE out of the publication: {}",
        publications.describe(),
        if tables.len() > 1 { "s" } else { "" },
        tables.join(", "),
        each("publish_via_partition_root = false"),
        each("publish = 'insert, update, delete'"),
    )
}

/// What the publications offer a new pgoutput slot for `tables`.
pub async fn publication_state(
    connection: &mut Connection,
    publications: &Publications,
    tables: &[(String, String)],
) -> Result<PublicationState, PgError> {
    let coverage = publication_coverage(connection, publications.names(), tables).await?;
    if publications.several() && !coverage.exists() {
        return Ok(PublicationState::Missing(missing_publications(
            publications,
            &coverage.absent,
            tables,
        )));
    }
    if coverage.exists() {
        return Ok(if coverage.missing.is_empty() {
            PublicationState::Covers
        } else {
            PublicationState::Lacks(coverage.missing)
        });
    }
    let values: Vec<String> = tables
        .iter()
        .map(|(schema, table)| format!("({}, {})", quote_literal(schema), quote_literal(table)))
        .collect();
    let not_owned = if values.is_empty() {
        "false".to_owned()
    } else {
        format!(
            "EXISTS (SELECT 1 FROM (VALUES {}) AS t (schema_name, table_name) \
             JOIN pg_catalog.pg_namespace n ON n.nspname = t.schema_name \
             JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name \
             WHERE NOT pg_catalog.pg_has_role(c.relowner, 'USAGE'))",
            values.join(", ")
        )
    };
    let can_create = connection
        .query_one(&format!(
            "SELECT coalesce((SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user), false) \
             OR (has_database_privilege(current_database(), 'CREATE') AND NOT {not_owned})"
        ))
        .await?
        .and_then(|row| row.get(0).map(|value| value == "t"))
        .unwrap_or(false);
    Ok(PublicationState::Absent { can_create })
}

/// Reads the facts and applies the plugin rule for `config`'s slot and publication.
pub async fn resolve_plugin(
    connection: &mut Connection,
    config: &PgSourceConfig,
    slot: &str,
    tables: &[(String, String)],
    names: PartitionNames,
) -> Result<(Result<Chosen, Refusal>, AllowList), PgError> {
    let allow = read_allow_list(connection).await?;
    let used = slot_plugin(connection, slot).await?;
    let publication_state = publication_state(connection, &config.publication, tables).await?;
    let create = create_publication_sql(
        config.publication.first(),
        tables,
        names,
        connection.server_version_num().unwrap_or(0),
    );
    let facts = PluginFacts {
        slot,
        slot_plugin: used.as_deref(),
        publication: &config.publication,
        publication_state: &publication_state,
        create_publication: &create,
        allow: &allow,
        user: &config.connection.user,
    };
    Ok((choose(config.plugin, &facts), allow))
}

/// The error for a slot creation or `START_REPLICATION` the allow-list refused: what the
/// server said, and the fix. `None` when `error` is something else.
pub fn refused_plugin_message(
    error: &PgError,
    chosen: &Chosen,
    allow: &AllowList,
) -> Option<String> {
    is_refused_plugin(error).then(|| {
        format!(
            "the server refuses {} as an output plugin: {} ({})\nHINT: {}",
            chosen.plugin.name(),
            error.as_db_error().map_or("", |db| db.message.as_str()),
            allow.describe(),
            allow_list_fix(allow, chosen.plugin, chosen.pgoutput_fix.as_deref())
        )
    })
}

/// The error for a slot creation refused because every slot is taken (SQLSTATE 53400, `all
/// replication slots are in use`): a limit to raise or slots to drop, not a passing fault to
/// retry. `None` when `error` is something else.
pub fn slots_exhausted_message(error: &PgError) -> Option<String> {
    (error.code() == Some("53400")).then(|| {
        format!(
            "{}\nHINT: every replication slot is taken: list them with SELECT slot_name, database, active, pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)) AS held FROM pg_replication_slots; drop unused ones with SELECT pg_drop_replication_slot('<name>'); or raise max_replication_slots in postgresql.conf and restart PostgreSQL",
            error.as_db_error().map_or("all replication slots are in use", |db| db.message.as_str())
        )
    })
}

/// The message and fix when the server has no WAL sender left for a replication connection
/// (`max_wal_senders` reached, SQLSTATE 53300): a fix, not something to wait out.
pub fn wal_senders_exhausted_message(error: &PgError) -> Option<String> {
    let db = error.as_db_error()?;
    (db.code == "53300" && db.message.contains("max_wal_senders")).then(|| {
        format!(
            "{}\nHINT: every WAL sender is busy: see who holds them with SELECT pid, application_name, client_addr, backend_start FROM pg_stat_replication; stop an unused consumer (SELECT pg_terminate_backend(<pid>);) or raise max_wal_senders in postgresql.conf and restart PostgreSQL",
            db.message
        )
    })
}

/// Each publication with the column list it gives a table (`"p" (a, b)`, `"q" (every column)`),
/// for messages about lists that differ.
pub fn describe_column_lists(lists: &[(String, Option<Vec<String>>)]) -> Vec<String> {
    lists
        .iter()
        .map(|(publication, columns)| match columns {
            Some(columns) => format!("{publication:?} ({})", columns.join(", ")),
            None => format!("{publication:?} (every column)"),
        })
        .collect()
}

/// Why the publication pgoutput needs could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum PublicationError {
    /// Reading or creating it failed on the way (may be transient).
    #[error(transparent)]
    Postgres(#[from] PgError),
    /// It cannot serve the selected tables as it is: the reason and the statement to run.
    #[error("{0}")]
    Unusable(String),
}

/// Makes sure the publications exist and publish every selected table, and returns what
/// they publish of each (the contract the copy follows too). One publication is created when
/// missing; of several, a missing one is an error (pgferry creates no publication whose name
/// the user gave for another). A table whose publications disagree on its column list, or
/// publish its partitions with a row filter or column list, is an error with the fix.
pub async fn ensure_publication(
    options: &ConnectOptions,
    publications: &Publications,
    tables: &[(String, String)],
    names: PartitionNames,
) -> Result<PublicationCoverage, PublicationError> {
    let mut connection = Connection::connect(options).await?;
    let result = ensure_on(&mut connection, publications, tables, names).await;
    connection.close().await;
    result
}

async fn ensure_on(
    connection: &mut Connection,
    publications: &Publications,
    tables: &[(String, String)],
    names: PartitionNames,
) -> Result<PublicationCoverage, PublicationError> {
    let mut coverage = publication_coverage(connection, publications.names(), tables).await?;
    if coverage.exists() && !coverage.missing.is_empty() && !publications.explicit() {
        // pgferry's own publication (named like the slot): a table selected since it was made
        // is added here, and joins the pipeline (it is copied, then streamed).
        let missing = coverage.missing.join(", ");
        let sql = format!(
            "ALTER PUBLICATION {} ADD TABLE {missing}",
            quote_identifier(publications.first())
        );
        match connection.execute(&sql).await {
            Ok(_) => {
                tracing::info!(publication = %publications.first(), tables = %missing, "added the newly selected tables to pgferry's publication");
            }
            Err(error) if error.is_transient() => return Err(error.into()),
            Err(error) => {
                return Err(PublicationError::Unusable(format!(
                    "could not add {missing} to publication {:?}: {error}\nHINT: have the tables' owner (or a superuser) run: {sql};",
                    publications.first()
                )))
            }
        }
        let added = std::mem::take(&mut coverage.missing);
        coverage = publication_coverage(connection, publications.names(), tables).await?;
        coverage.added = added;
    }
    if coverage.exists() {
        if coverage.missing.is_empty() {
            usable(&coverage)?;
            return Ok(coverage);
        }
        let missing = coverage.missing.join(", ");
        let (which, verb) = if publications.several() {
            ("publications", "do")
        } else {
            ("publication", "does")
        };
        return Err(PublicationError::Unusable(format!(
            "{which} {} {verb} not publish {missing}\nHINT: ALTER PUBLICATION {} ADD TABLE {missing};",
            publications.describe(),
            quote_identifier(publications.first()),
        )));
    }
    if publications.several() {
        return Err(PublicationError::Unusable(missing_publications(
            publications,
            &coverage.absent,
            tables,
        )));
    }
    let publication = publications.first();
    let sql = create_publication_sql(
        publication,
        tables,
        names,
        connection.server_version_num().unwrap_or(0),
    );
    match connection.execute(&sql).await {
        Ok(_) => {
            tracing::info!(%publication, tables = tables.len(), "created the publication");
            Ok(publication_coverage(connection, publications.names(), tables).await?)
        }
        Err(error) if error.is_transient() => Err(error.into()),
        Err(error) => Err(PublicationError::Unusable(format!(
            "could not create publication {publication:?}: {error}\nHINT: have the tables' owner (or a superuser) run: {sql};"
        ))),
    }
}

/// The error for named publications that do not exist (when several are named).
pub fn missing_publications(
    publications: &Publications,
    absent: &[String],
    tables: &[(String, String)],
) -> String {
    let list: Vec<String> = tables
        .iter()
        .map(|(schema, table)| format!("{}.{}", quote_identifier(schema), quote_identifier(table)))
        .collect();
    let creates: Vec<String> = absent
        .iter()
        .map(|name| {
            format!(
                "CREATE PUBLICATION {} FOR TABLE {};",
                quote_identifier(name),
                if list.is_empty() {
                    "<tables>".to_owned()
                } else {
                    list.join(", ")
                }
            )
        })
        .collect();
    let names: Vec<String> = absent.iter().map(|name| format!("{name:?}")).collect();
    format!(
        "publication {} named in \"publication\" ({}) does not exist: with several publications pgferry reads them as they are and creates none\nHINT: create it with the tables and actions it should publish, e.g. {} or remove it from \"publication\"",
        names.join(", "),
        publications.describe(),
        creates.join(" ")
    )
}

/// Refuses what pgoutput cannot stream as the copy reads it: column lists that differ between
/// the publications of one table (PostgreSQL itself refuses to stream such a table), and row
/// filters or column lists on the partitions of a partitioned table published without
/// `publish_via_partition_root` (the copy reads the root).
fn usable(coverage: &PublicationCoverage) -> Result<(), PublicationError> {
    for table in &coverage.published {
        let name = format!(
            "{}.{}",
            quote_identifier(&table.schema),
            quote_identifier(&table.table)
        );
        if let Some(lists) = &table.column_conflict {
            let described = describe_column_lists(lists);
            return Err(PublicationError::Unusable(format!(
                "the publications publish different column lists for {name}: {}; PostgreSQL refuses to stream a table with different column lists in different publications\nHINT: give {name} the same column list in each of them (ALTER PUBLICATION … DROP TABLE {name}; ALTER PUBLICATION … ADD TABLE {name} (<columns>);), or name only one of them in \"publication\"",
                described.join(", ")
            )));
        }
        if table.partition_contract {
            return Err(PublicationError::Unusable(format!(
                "publication {} publishes the partitions of {name} with their own row filter or column list: pgferry copies and streams {name} as one table, so it cannot follow them\nHINT: publish the partitioned table itself, with one row filter or column list, through its root: ALTER PUBLICATION … SET (publish_via_partition_root = true);",
                table.publications.join(", ")
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_publication_statement_quotes_names_and_publishes_partitions_under_their_names() {
        let tables = vec![("public".to_owned(), "Order Items".to_owned())];
        assert_eq!(
            create_publication_sql("my pub", &tables, PartitionNames::Leaves, 150_000),
            "CREATE PUBLICATION \"my pub\" FOR TABLE \"public\".\"Order Items\""
        );
        assert_eq!(
            create_publication_sql("p", &tables, PartitionNames::Root, 150_000),
            "CREATE PUBLICATION \"p\" FOR TABLE \"public\".\"Order Items\" WITH (publish_via_partition_root = true)"
        );
        assert_eq!(
            create_publication_sql("p", &tables, PartitionNames::Root, 120_000),
            "CREATE PUBLICATION \"p\" FOR TABLE \"public\".\"Order Items\"",
            "before 13 partitions are always published under their own names"
        );
    }

    #[test]
    fn only_partitioned_tables_published_via_the_root_with_truncate_hide_partition_truncates() {
        use crate::pg::catalog::{PublishedActions, PublishedTable};
        let table =
            |name: &str, partitioned: bool, via_root: bool, truncate: bool| PublishedTable {
                schema: "public".into(),
                table: name.into(),
                publications: vec!["p".into()],
                actions: PublishedActions {
                    insert: true,
                    update: true,
                    delete: true,
                    truncate,
                },
                row_filter: None,
                columns: None,
                column_conflict: None,
                partition_contract: false,
                via_root,
                partitioned,
            };
        let coverage = PublicationCoverage {
            absent: Vec::new(),
            missing: Vec::new(),
            published: vec![
                table("z_parts", true, true, true),
                table("a_parts", true, true, true),
                table("plain", false, true, true),
                table("leaves", true, false, true),
                table("no_truncate", true, true, false),
            ],
            added: Vec::new(),
        };
        assert_eq!(
            truncates_hidden_by_root(&coverage),
            ["public.a_parts", "public.z_parts"]
        );
    }

    #[test]
    fn a_publication_via_the_root_is_refused_with_the_statement_that_fixes_it() {
        let publications = Publications::default_for_slot("pub1");
        let message = via_root_message(&publications, &["public.tab1".to_owned()]);
        assert!(
            message.contains(
                "publication \"pub1\" publishes the partitioned table public.tab1 through its root"
            ),
            "{message}"
        );
        assert!(
            message
                .contains("ALTER PUBLICATION \"pub1\" SET (publish_via_partition_root = false);"),
            "{message}"
        );
    }
}
