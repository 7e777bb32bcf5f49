//! Which rows and columns of each table the pipeline carries. FULL_TABLE and wal2json: all of
//! them. A LOG_BASED pipeline whose slot decodes with pgoutput follows its publications'
//! contract (row filters, column lists) in the copy and the stream alike, so verify compares
//! the table as the publications publish it. The slot tells which plugin the pipeline uses; a
//! pipeline that has not run yet (no slot) is compared against whole tables.

use crate::config::{PipelineConfig, ReplicationMethod};
use crate::pg::catalog::{publication_coverage, Table};
use crate::pg::Connection;
use crate::source::publication_contract::shape_table;
use crate::source::slot_setup::slot_plugin;

use super::error::{source, VerifyError};

/// A selected table as the pipeline carries it.
#[derive(Debug, Clone)]
pub struct Carried {
    /// The table, with only the published columns.
    pub table: Table,
    /// The `tables` entry's collection (or target table), when it names one.
    pub destination: Option<String>,
    /// The publications' row filter, a SQL condition on the table.
    pub row_filter: Option<String>,
}

/// The chosen tables as the pipeline carries them.
pub async fn carried(
    config: &PipelineConfig,
    chosen: &[(&Table, Option<String>)],
) -> Result<Vec<Carried>, VerifyError> {
    let whole = || {
        chosen
            .iter()
            .map(|(table, destination)| Carried {
                table: (*table).clone(),
                destination: destination.clone(),
                row_filter: None,
            })
            .collect()
    };
    if config.source.replication_method != ReplicationMethod::LogBased {
        return Ok(whole());
    }
    let mut connection = Connection::connect(&config.source.connect_options())
        .await
        .map_err(source("connecting"))?;
    let plugin = slot_plugin(&mut connection, &config.source.replication_slot)
        .await
        .map_err(source("reading the replication slot"))?;
    if plugin.as_deref() != Some("pgoutput") {
        connection.close().await;
        return Ok(whole());
    }
    let names: Vec<(String, String)> = chosen
        .iter()
        .map(|(table, _)| (table.schema.clone(), table.name.clone()))
        .collect();
    let coverage = publication_coverage(&mut connection, config.source.publication.names(), &names)
        .await
        .map_err(source("reading the publications"))?;
    connection.close().await;
    chosen
        .iter()
        .map(|(table, destination)| {
            let published = coverage.table(&table.schema, &table.name);
            let (shaped, row_filter) = shape_table(table, published, &config.source.publication)
                .map_err(VerifyError::Unsupported)?;
            Ok(Carried {
                table: shaped,
                destination: destination.clone(),
                row_filter,
            })
        })
        .collect()
}

/// ` WHERE (filter)` for a table's SELECT, or nothing.
pub fn where_clause(row_filter: Option<&str>) -> String {
    row_filter
        .map(|filter| format!(" WHERE ({filter})"))
        .unwrap_or_default()
}
