//! The logical replication connection: slots, `START_REPLICATION`, and the CopyBoth stream.
//!
//! # Slot creation and snapshots
//! `CREATE_REPLICATION_SLOT` changed syntax in PostgreSQL 15 (an option list,
//! `(SNAPSHOT 'export')`); before that it took bare keywords (`EXPORT_SNAPSHOT`, from 10), and
//! 9.4–9.6 always exported a snapshot and had no `TEMPORARY`. The command is built for the
//! server's version. An exported snapshot lives only while this connection stays idle in the
//! same state, so the caller keeps the client until its copy workers have imported it.
//!
//! # Status updates
//! The server tracks what we confirmed as `confirmed_flush_lsn`. [`LogicalStream`] reports
//! only what its owner confirmed with [`LogicalStream::confirm`] (never merely what it
//! received), answers keepalives that ask for a reply at once, and otherwise sends an update
//! every `status_interval` so that `wal_sender_timeout` never fires on a busy consumer.

use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::time::Instant;

use crate::decode::replication::{PgTimestamp, ReplicationMessage, StandbyStatusUpdate};
use crate::pg::conn::{server_error, unexpected, Backend, ConnectOptions, Connection};
use crate::pg::error::PgError;
use crate::pg::lsn::Lsn;
use crate::pg::query::quote_identifier;

/// What `IDENTIFY_SYSTEM` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's unique system identifier.
    pub system_id: String,
    /// The current timeline.
    pub timeline: u32,
    /// The current WAL flush position.
    pub xlog_position: Lsn,
    /// The database this replication connection is bound to.
    pub dbname: Option<String>,
}

/// What to do with the snapshot a new slot is created at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotSnapshot {
    /// Export it, so other sessions can `SET TRANSACTION SNAPSHOT` to it.
    Export,
    /// Use it in this session's current transaction (must be REPEATABLE READ, before any query).
    Use,
    /// Do not keep it.
    Nothing,
}

/// The result of `CREATE_REPLICATION_SLOT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// The slot's name.
    pub slot_name: String,
    /// The first position the slot will stream from; everything before is in the snapshot.
    pub consistent_point: Lsn,
    /// The exported snapshot's name, when one was exported.
    pub snapshot_name: Option<String>,
    /// The output plugin.
    pub output_plugin: String,
}

/// Checks a replication slot name against PostgreSQL's rule, with the fix in the error.
pub fn validate_slot_name(name: &str) -> Result<(), PgError> {
    if name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(PgError::Config {
            key: "replication_slot",
            detail: format!("{name:?} is not a valid slot name: use 1 to 63 characters of lower-case letters, digits and underscores"),
        });
    }
    Ok(())
}

/// A string literal of the replication command grammar (`repl_scanner.l`): quotes doubled,
/// backslashes as they are; it has no `E'…'` form.
fn replication_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The old connector's default slot name: `macrometa_<dbname>`, lower-cased, every character
/// outside `[a-z0-9_]` replaced by `_`.
pub fn default_slot_name(dbname: &str) -> String {
    let mut name: String = format!("macrometa_{dbname}")
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    name.truncate(63);
    name
}

/// A connection opened with `replication=database`, for slot commands and streaming.
#[derive(Debug)]
pub struct ReplicationClient {
    connection: Connection,
}

impl ReplicationClient {
    /// Opens a replication connection (`replication=database` is set for you).
    pub async fn connect(options: &ConnectOptions) -> Result<ReplicationClient, PgError> {
        let mut options = options.clone();
        options.replication = true;
        Ok(ReplicationClient {
            connection: Connection::connect(&options).await?,
        })
    }

    /// The underlying connection, for plain SQL (allowed on `replication=database` sessions).
    pub fn connection(&mut self) -> &mut Connection {
        &mut self.connection
    }

    /// Gives back the connection, e.g. to close it politely.
    pub fn into_inner(self) -> Connection {
        self.connection
    }

    /// `IDENTIFY_SYSTEM`: system id, timeline, current WAL position, database.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity, PgError> {
        const DURING: &str = "reading IDENTIFY_SYSTEM";
        let row = self
            .connection
            .query_one("IDENTIFY_SYSTEM")
            .await?
            .ok_or_else(|| PgError::protocol(DURING, "no row returned"))?;
        let field = |index: usize| {
            row.get(index)
                .ok_or_else(|| PgError::protocol(DURING, format!("column {index} missing")))
        };
        Ok(SystemIdentity {
            system_id: field(0)?.to_owned(),
            timeline: field(1)?
                .parse()
                .map_err(|_| PgError::protocol(DURING, "timeline is not a number"))?,
            xlog_position: field(2)?
                .parse()
                .map_err(|error: crate::pg::lsn::ParseLsnError| {
                    PgError::protocol(DURING, error.to_string())
                })?,
            dbname: row.get(3).map(str::to_owned),
        })
    }

    /// Builds the `CREATE_REPLICATION_SLOT` command in the syntax of `server_version_num`.
    pub fn create_slot_command(
        server_version_num: u32,
        slot: &str,
        plugin: &str,
        snapshot: SlotSnapshot,
        temporary: bool,
    ) -> String {
        let temporary = if temporary && server_version_num >= 100_000 {
            " TEMPORARY"
        } else {
            ""
        };
        let slot = quote_identifier(slot);
        let plugin = quote_identifier(plugin);
        if server_version_num >= 150_000 {
            let action = match snapshot {
                SlotSnapshot::Export => "export",
                SlotSnapshot::Use => "use",
                SlotSnapshot::Nothing => "nothing",
            };
            format!(
                "CREATE_REPLICATION_SLOT {slot}{temporary} LOGICAL {plugin} (SNAPSHOT '{action}')"
            )
        } else if server_version_num >= 100_000 {
            let action = match snapshot {
                SlotSnapshot::Export => "EXPORT_SNAPSHOT",
                SlotSnapshot::Use => "USE_SNAPSHOT",
                SlotSnapshot::Nothing => "NOEXPORT_SNAPSHOT",
            };
            format!("CREATE_REPLICATION_SLOT {slot}{temporary} LOGICAL {plugin} {action}")
        } else {
            format!("CREATE_REPLICATION_SLOT {slot} LOGICAL {plugin}")
        }
    }

    /// Creates a logical slot with `plugin`, deciding what happens to its snapshot.
    pub async fn create_logical_slot(
        &mut self,
        slot: &str,
        plugin: &str,
        snapshot: SlotSnapshot,
        temporary: bool,
    ) -> Result<CreatedSlot, PgError> {
        const DURING: &str = "reading the CREATE_REPLICATION_SLOT result";
        validate_slot_name(slot)?;
        let version = self.connection.server_version_num().unwrap_or(0);
        let command = Self::create_slot_command(version, slot, plugin, snapshot, temporary);
        let row = self
            .connection
            .query_one(&command)
            .await?
            .ok_or_else(|| PgError::protocol(DURING, "no row returned"))?;
        Ok(CreatedSlot {
            slot_name: row.get(0).unwrap_or(slot).to_owned(),
            consistent_point: row
                .get(1)
                .ok_or_else(|| PgError::protocol(DURING, "consistent_point missing"))?
                .parse()
                .map_err(|error: crate::pg::lsn::ParseLsnError| {
                    PgError::protocol(DURING, error.to_string())
                })?,
            snapshot_name: row.get(2).map(str::to_owned),
            output_plugin: row.get(3).unwrap_or(plugin).to_owned(),
        })
    }

    /// Drops a slot; with `wait`, waits for a session still using it to let go (PG ≥ 10).
    pub async fn drop_slot(&mut self, slot: &str, wait: bool) -> Result<(), PgError> {
        validate_slot_name(slot)?;
        let wait = if wait && self.connection.server_version_num().unwrap_or(0) >= 100_000 {
            " WAIT"
        } else {
            ""
        };
        self.connection
            .execute(&format!(
                "DROP_REPLICATION_SLOT {}{wait}",
                quote_identifier(slot)
            ))
            .await
            .map(|_| ())
    }

    /// Builds the `START_REPLICATION … LOGICAL` command with quoted plugin options.
    ///
    /// The replication command grammar (`repl_scanner.l`) knows only `'…'` strings with `''`
    /// for a quote: a backslash is an ordinary character there, and `E'…'` is a syntax error.
    pub fn start_command(slot: &str, start: Lsn, options: &[(String, String)]) -> String {
        let mut command = format!(
            "START_REPLICATION SLOT {} LOGICAL {start}",
            quote_identifier(slot)
        );
        if !options.is_empty() {
            let list: Vec<String> = options
                .iter()
                .map(|(name, value)| {
                    format!("{} {}", quote_identifier(name), replication_literal(value))
                })
                .collect();
            command.push_str(&format!(" ({})", list.join(", ")));
        }
        command
    }

    /// Starts streaming `slot` from `start` with the plugin's `options`.
    pub async fn start_logical(
        mut self,
        slot: &str,
        start: Lsn,
        options: &[(String, String)],
        status_interval: Duration,
    ) -> Result<LogicalStream, PgError> {
        const DURING: &str = "starting replication";
        validate_slot_name(slot)?;
        self.connection.check_usable()?;
        let command = Self::start_command(slot, start, options);
        frontend::query(&command, &mut self.connection.write_buf)
            .map_err(|error| PgError::protocol(DURING, error.to_string()))?;
        self.connection.flush(DURING).await?;
        match self.connection.read_backend(DURING).await? {
            Backend::CopyBothResponse => {}
            Backend::Message(Message::ErrorResponse(body)) => {
                let error = server_error(body.fields());
                self.connection.read_until_ready(DURING).await?;
                return Err(error);
            }
            Backend::Message(other) => return Err(unexpected(DURING, &other)),
        }
        self.connection.coalesce_reads = Some(Duration::from_millis(1));
        Ok(LogicalStream {
            connection: self.connection,
            received: start,
            confirmed: start,
            status_interval,
            next_status: Instant::now() + status_interval,
            buffered_reads: 0,
            ended: false,
        })
    }
}

/// A running logical replication stream.
#[derive(Debug)]
pub struct LogicalStream {
    connection: Connection,
    received: Lsn,
    confirmed: Lsn,
    status_interval: Duration,
    next_status: Instant,
    /// Messages read straight from the buffer (the status clock is checked every 1,024).
    buffered_reads: u64,
    ended: bool,
}

impl LogicalStream {
    /// The next XLogData or keepalive; `None` when the server ended the stream.
    ///
    /// Keepalives asking for a reply are answered before this returns them, and status updates
    /// go out every `status_interval` while waiting. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<ReplicationMessage>, PgError> {
        const DURING: &str = "streaming changes";
        loop {
            if self.ended {
                return Ok(None);
            }
            let message = if self.connection.has_buffered_message() {
                // The common case under load: no I/O to wait for, so no timer to arm.
                self.buffered_reads += 1;
                if self.buffered_reads % 1024 == 0 && Instant::now() >= self.next_status {
                    self.send_status(false).await?;
                }
                self.connection.read_message(DURING).await?
            } else {
                if Instant::now() >= self.next_status {
                    self.send_status(false).await?;
                }
                tokio::select! {
                    message = self.connection.read_message(DURING) => message?,
                    _ = tokio::time::sleep_until(self.next_status) => continue,
                }
            };
            match message {
                Message::CopyData(body) => {
                    let frame = ReplicationMessage::parse(body.into_bytes())
                        .map_err(|error| PgError::protocol(DURING, error.to_string()))?;
                    match &frame {
                        ReplicationMessage::XLogData(xlog) => {
                            self.received = self.received.max(xlog.wal_start);
                        }
                        ReplicationMessage::PrimaryKeepalive(keepalive) => {
                            if keepalive.reply_requested {
                                self.send_status(false).await?;
                            }
                        }
                    }
                    return Ok(Some(frame));
                }
                Message::CopyDone => {
                    // The server ends the stream (e.g. shutdown, or timeline switch).
                    frontend::copy_done(&mut self.connection.write_buf);
                    self.connection.flush(DURING).await?;
                }
                Message::CommandComplete(_) => {}
                Message::ReadyForQuery(_) => self.ended = true,
                Message::ErrorResponse(body) => return Err(server_error(body.fields())),
                other => return Err(unexpected(DURING, &other)),
            }
        }
    }

    /// Records that everything up to `lsn` is durable downstream; the next status update
    /// reports it as flushed. Never moves backwards.
    pub fn confirm(&mut self, lsn: Lsn) {
        self.confirmed = self.confirmed.max(lsn);
    }

    /// The server's WARNING notices since the last call: a plugin that skips a change says so
    /// only this way (wal2json: `no tuple identifier for UPDATE in table …`).
    pub fn take_warnings(&mut self) -> Vec<crate::pg::DbError> {
        self.connection.take_warnings()
    }

    /// The highest position confirmed so far.
    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    /// Sends a standby status update now: written = received, flushed = applied = confirmed.
    pub async fn send_status(&mut self, reply_requested: bool) -> Result<(), PgError> {
        let update = StandbyStatusUpdate {
            written: self.received.max(self.confirmed),
            flushed: self.confirmed,
            applied: self.confirmed,
            client_time: PgTimestamp::now(),
            reply_requested,
        };
        let mut payload =
            BytesMut::with_capacity(crate::decode::replication::STANDBY_STATUS_UPDATE_LEN);
        update.encode(&mut payload);
        frontend::CopyData::new(&payload[..])
            .map_err(|error| PgError::protocol("sending a status update", error.to_string()))?
            .write(&mut self.connection.write_buf);
        self.connection.flush("sending a status update").await?;
        self.next_status = Instant::now() + self.status_interval;
        Ok(())
    }

    /// Ends streaming cleanly: a final status update, CopyDone, and the server's completion;
    /// gives back the replication client for further commands (e.g. dropping the slot).
    pub async fn stop(mut self) -> Result<ReplicationClient, PgError> {
        const DURING: &str = "stopping replication";
        if !self.ended {
            self.send_status(false).await?;
            frontend::copy_done(&mut self.connection.write_buf);
            self.connection.flush(DURING).await?;
            loop {
                match self.connection.read_message(DURING).await? {
                    Message::ReadyForQuery(_) => break,
                    Message::ErrorResponse(body) => return Err(server_error(body.fields())),
                    _ => {}
                }
            }
        }
        Ok(ReplicationClient {
            connection: self.connection,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_creation_follows_the_server_version() {
        assert_eq!(
            ReplicationClient::create_slot_command(
                150_018,
                "s",
                "wal2json",
                SlotSnapshot::Export,
                false
            ),
            "CREATE_REPLICATION_SLOT \"s\" LOGICAL \"wal2json\" (SNAPSHOT 'export')"
        );
        assert_eq!(
            ReplicationClient::create_slot_command(
                140_005,
                "s",
                "wal2json",
                SlotSnapshot::Use,
                true
            ),
            "CREATE_REPLICATION_SLOT \"s\" TEMPORARY LOGICAL \"wal2json\" USE_SNAPSHOT"
        );
        assert_eq!(
            ReplicationClient::create_slot_command(
                90_624,
                "s",
                "wal2json",
                SlotSnapshot::Export,
                true
            ),
            "CREATE_REPLICATION_SLOT \"s\" LOGICAL \"wal2json\""
        );
    }

    #[test]
    fn start_command_quotes_plugin_options() {
        let command = ReplicationClient::start_command(
            "macrometa_db",
            "0/16B3748".parse().unwrap(),
            &[
                ("format-version".into(), "2".into()),
                ("add-tables".into(), "public.o'brien".into()),
                ("add-tables".into(), "public.a\\ b\\.c".into()),
            ],
        );
        assert_eq!(
            command,
            "START_REPLICATION SLOT \"macrometa_db\" LOGICAL 0/16B3748 (\"format-version\" '2', \"add-tables\" 'public.o''brien', \"add-tables\" 'public.a\\ b\\.c')",
            "no E'' form: the replication grammar takes backslashes as they are"
        );
    }

    #[test]
    fn default_slot_names_follow_the_old_connector() {
        assert_eq!(default_slot_name("Sales-DB.eu"), "macrometa_sales_db_eu");
        assert!(validate_slot_name(&default_slot_name(&"x".repeat(100))).is_ok());
        assert!(validate_slot_name("Bad-Name")
            .unwrap_err()
            .to_string()
            .contains("lower-case"));
    }
}
