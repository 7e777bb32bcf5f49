//! FULL_TABLE mirroring into PostgreSQL: for each keyed target table that held rows before the
//! run, the source's key columns are shipped into a temporary table beside it and the target's
//! rows without a match are removed (soft-deleted with `hard_delete: false`), in one target
//! transaction per table. A keyless table was emptied before its reload, and a table empty
//! before the run holds only what this copy wrote.

use crate::destination::mirror::{MirrorError, Removed, SourceKeys};
use crate::pg::{Connection, PgError};

use super::copy::{ReplicaCopy, TEXT_SESSION};
use super::{pg, PostgresTarget};

/// Removes from each keyed target table of `postgres` the rows whose keys `source` no longer
/// has.
pub(crate) async fn remove_stale<K: SourceKeys>(
    postgres: &PostgresTarget,
    source: &mut K,
) -> Result<Removed, K::Error> {
    let mut removed = Removed::default();
    let mut into = Connection::connect(&postgres.target)
        .await
        .map_err(pg(
            "connecting to the target for",
            "removing rows the source no longer has",
        ))
        .map_err(MirrorError::from)?;
    into.execute(TEXT_SESSION)
        .await
        .map_err(pg("setting up the target session for", "removing rows"))
        .map_err(MirrorError::from)?;
    for (task, copy) in postgres.copies.iter().enumerate() {
        // Keyless tables were emptied before the reload; a table empty before the run holds
        // only what this copy wrote.
        if copy.table.keys.is_empty() || copy.status.empty {
            continue;
        }
        let name = copy.table.target.to_string();
        let count = remove_unmatched(source, &mut into, task, copy)
            .await
            .map_err(|error| match error {
                Side::Source(error) => K::Error::from(error),
                Side::Target(error) => K::Error::from(MirrorError::from(pg(
                    "removing rows the source no longer has from",
                    &name,
                )(error))),
            });
        let count = match count {
            Ok(count) => count,
            Err(error) => {
                let _ = into.execute("ROLLBACK").await;
                return Err(error);
            }
        };
        if count > 0 {
            tracing::info!(table = %name, removed = count, "removed the rows the source table no longer has");
        }
        removed.per_destination.push((name, count));
    }
    into.close().await;
    Ok(removed)
}

/// Which end failed.
enum Side {
    Source(PgError),
    Target(PgError),
}

/// Ships the source's key columns into a temporary table beside the target and removes the
/// target's rows without a match, in one target transaction.
async fn remove_unmatched<K: SourceKeys>(
    source: &mut K,
    into: &mut Connection,
    task: usize,
    copy: &ReplicaCopy,
) -> Result<u64, Side> {
    let table = &copy.table;
    into.execute("BEGIN").await.map_err(Side::Target)?;
    into.execute(&table.source_keys_sql())
        .await
        .map_err(Side::Target)?;
    let format = if copy.status.binary {
        " (FORMAT binary)"
    } else {
        ""
    };
    let mut sink = into
        .copy_in(&format!(
            "COPY pg_temp.pgferry_source_keys FROM STDIN{format}"
        ))
        .await
        .map_err(Side::Target)?;
    let mut out = match source.key_rows(task, &table.keys, copy.status.binary).await {
        Ok(out) => out,
        Err(error) => {
            let _ = sink.abort("the source could not be read").await;
            return Err(Side::Source(error));
        }
    };
    loop {
        match out.next().await {
            Ok(Some(data)) => sink.send(&data).await.map_err(Side::Target)?,
            Ok(None) => break,
            Err(error) => {
                let _ = sink.abort("the source could not be read").await;
                return Err(Side::Source(error));
            }
        }
    }
    sink.finish().await.map_err(Side::Target)?;
    into.execute("ANALYZE pg_temp.pgferry_source_keys")
        .await
        .map_err(Side::Target)?;
    let count = into
        .execute(&table.remove_unmatched_sql())
        .await
        .map_err(Side::Target)?;
    into.execute("COMMIT").await.map_err(Side::Target)?;
    Ok(count)
}
