//! Waiting for a running LOG_BASED pipeline to catch up: the source's WAL insert position is
//! read (`pg_current_wal_insert_lsn()`: the write position can still be behind a transaction
//! committed with `synchronous_commit = off` that readers already see), then the pipeline's slot is watched until its
//! `confirmed_flush_lsn` passes it — every change committed before that point is then in the
//! destination — or the time is up. A slot that no process streams from (inactive) does not
//! move, so there is nothing to wait for.

use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::pg::lsn::Lsn;
use crate::pg::query::quote_literal;
use crate::pg::{ConnectOptions, Connection};

use super::error::{source, VerifyError};

/// How often the slot is looked at while waiting.
const POLL: Duration = Duration::from_millis(200);

/// How a wait ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Settled {
    /// The source's WAL position waited for.
    pub target_lsn: String,
    /// The slot's confirmed position when the wait ended (`None`: no such slot).
    pub confirmed_lsn: Option<String>,
    /// Whether the confirmed position passed the target.
    pub reached: bool,
    /// Whether a process was streaming from the slot.
    pub active: bool,
}

/// The source's current WAL insert position (past every commit a reader can see).
pub async fn current_lsn(options: &ConnectOptions) -> Result<Lsn, VerifyError> {
    let mut connection = Connection::connect(options)
        .await
        .map_err(source("connecting"))?;
    let row = connection
        .query_one("SELECT pg_current_wal_insert_lsn()::text")
        .await
        .map_err(source("reading the WAL position"))?;
    connection.close().await;
    row.and_then(|row| row.get(0).and_then(|text| Lsn::from_str(text).ok()))
        .ok_or_else(|| VerifyError::Internal("the source reported no WAL position".into()))
}

/// Waits until `slot` confirmed `target` or `deadline` passes (or the slot is inactive).
pub async fn wait_for(
    options: &ConnectOptions,
    slot: &str,
    target: Lsn,
    deadline: Instant,
) -> Result<Settled, VerifyError> {
    let mut connection = Connection::connect(options)
        .await
        .map_err(source("connecting"))?;
    let sql = format!(
        "SELECT confirmed_flush_lsn::text, active::text FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
        quote_literal(slot)
    );
    let outcome = loop {
        let row = connection
            .query_one(&sql)
            .await
            .map_err(source("reading the replication slot"))?;
        let confirmed = row
            .as_ref()
            .and_then(|row| row.get(0))
            .and_then(|text| Lsn::from_str(text).ok());
        let active = row
            .as_ref()
            .and_then(|row| row.get(1))
            .is_some_and(|text| text == "true");
        let reached = confirmed.is_some_and(|confirmed| confirmed >= target);
        if reached || !active || Instant::now() >= deadline {
            break Settled {
                target_lsn: target.to_string(),
                confirmed_lsn: confirmed.map(|lsn| lsn.to_string()),
                reached,
                active,
            };
        }
        tokio::time::sleep(POLL).await;
    };
    connection.close().await;
    Ok(outcome)
}
