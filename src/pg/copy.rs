//! COPY TO STDOUT and COPY FROM STDIN as streams with backpressure.
//!
//! `CopyOut` yields the server's CopyData payloads one by one as `Bytes` slices of the read
//! buffer; nothing is read from the socket until the caller asks for the next chunk, so a slow
//! consumer slows the server instead of growing memory. `CopyIn` writes CopyData messages into
//! a bounded buffer that is flushed to the socket whenever it passes a threshold, so a fast
//! producer waits for the network instead of buffering the table.
//!
//! Both borrow the connection mutably: no other command can interleave. Dropping either one
//! half-way leaves the protocol mid-COPY; the connection then refuses further commands.

use bytes::{BufMut, Bytes};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use crate::pg::conn::{server_error, unexpected, Connection, WRITE_FLUSH_THRESHOLD};
use crate::pg::error::PgError;

/// Format of the data a COPY carries, as the server announced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    /// Text or CSV.
    Text,
    /// `FORMAT binary`.
    Binary,
}

/// A running `COPY … TO STDOUT`: call [`CopyOut::next`] until it returns `None`.
#[derive(Debug)]
pub struct CopyOut<'a> {
    connection: &'a mut Connection,
    format: CopyFormat,
    rows: Option<u64>,
    finished: bool,
}

impl CopyOut<'_> {
    /// The format the server announced.
    pub fn format(&self) -> CopyFormat {
        self.format
    }

    /// The next chunk of data (one row for text COPY), or `None` when the COPY completed.
    pub async fn next(&mut self) -> Result<Option<Bytes>, PgError> {
        const DURING: &str = "reading COPY data";
        if self.finished {
            return Ok(None);
        }
        loop {
            match self.connection.read_message(DURING).await? {
                Message::CopyData(body) => return Ok(Some(body.into_bytes())),
                Message::CopyDone => {}
                Message::CommandComplete(body) => {
                    self.rows = body
                        .tag()
                        .ok()
                        .and_then(|tag| tag.rsplit(' ').next())
                        .and_then(|count| count.parse().ok());
                }
                Message::ReadyForQuery(_) => {
                    self.finished = true;
                    self.connection.desynchronized = false;
                    return Ok(None);
                }
                Message::ErrorResponse(body) => {
                    let error = server_error(body.fields());
                    self.finish_after_error().await?;
                    return Err(error);
                }
                other => return Err(unexpected(DURING, &other)),
            }
        }
    }

    /// Rows the server reported in `COPY n`, once the COPY finished.
    pub fn rows(&self) -> Option<u64> {
        self.rows
    }

    async fn finish_after_error(&mut self) -> Result<(), PgError> {
        loop {
            if let Message::ReadyForQuery(_) = self
                .connection
                .read_message("recovering from a COPY error")
                .await?
            {
                self.finished = true;
                self.connection.desynchronized = false;
                return Ok(());
            }
        }
    }
}

/// A running `COPY … FROM STDIN`: [`send`](CopyIn::send) data, then [`finish`](CopyIn::finish).
#[derive(Debug)]
pub struct CopyIn<'a> {
    connection: &'a mut Connection,
    format: CopyFormat,
}

impl CopyIn<'_> {
    /// The format the server expects.
    pub fn format(&self) -> CopyFormat {
        self.format
    }

    /// Queues `data` as one CopyData message; waits for the socket when the buffer is full.
    pub async fn send(&mut self, data: &[u8]) -> Result<(), PgError> {
        let len = i32::try_from(data.len() + 4).map_err(|_| {
            PgError::protocol(
                "sending COPY data",
                "a CopyData chunk must be smaller than 2 GiB",
            )
        })?;
        let buf = &mut self.connection.write_buf;
        buf.reserve(data.len() + 5);
        buf.put_u8(b'd');
        buf.put_i32(len);
        buf.put_slice(data);
        if buf.len() >= WRITE_FLUSH_THRESHOLD {
            self.connection.flush("sending COPY data").await?;
        }
        Ok(())
    }

    /// Ends the data, waits for the server to commit the COPY, returns the rows it copied.
    pub async fn finish(self) -> Result<u64, PgError> {
        const DURING: &str = "finishing COPY FROM STDIN";
        frontend::copy_done(&mut self.connection.write_buf);
        self.connection.flush(DURING).await?;
        let mut rows = 0;
        let mut failure = None;
        loop {
            match self.connection.read_message(DURING).await? {
                Message::CommandComplete(body) => {
                    rows = body
                        .tag()
                        .ok()
                        .and_then(|tag| tag.rsplit(' ').next())
                        .and_then(|count| count.parse().ok())
                        .unwrap_or(0);
                }
                Message::ErrorResponse(body) => failure = Some(server_error(body.fields())),
                Message::ReadyForQuery(_) => {
                    self.connection.desynchronized = false;
                    return match failure {
                        Some(error) => Err(error),
                        None => Ok(rows),
                    };
                }
                other => return Err(unexpected(DURING, &other)),
            }
        }
    }

    /// Aborts the COPY with `reason`; the server rolls it back. Returns once it has.
    pub async fn abort(self, reason: &str) -> Result<(), PgError> {
        const DURING: &str = "aborting COPY FROM STDIN";
        frontend::copy_fail(reason, &mut self.connection.write_buf)
            .map_err(|error| PgError::protocol(DURING, error.to_string()))?;
        self.connection.flush(DURING).await?;
        loop {
            match self.connection.read_message(DURING).await? {
                Message::ReadyForQuery(_) => {
                    self.connection.desynchronized = false;
                    return Ok(());
                }
                Message::ErrorResponse(_) | Message::CommandComplete(_) => {}
                other => return Err(unexpected(DURING, &other)),
            }
        }
    }
}

impl Connection {
    /// Starts `COPY … TO STDOUT` (or any statement answering with CopyOut).
    pub async fn copy_out(&mut self, sql: &str) -> Result<CopyOut<'_>, PgError> {
        const DURING: &str = "starting COPY TO STDOUT";
        self.check_usable()?;
        frontend::query(sql, &mut self.write_buf)
            .map_err(|error| PgError::protocol(DURING, error.to_string()))?;
        self.flush(DURING).await?;
        match self.read_message(DURING).await? {
            Message::CopyOutResponse(body) => {
                self.desynchronized = true;
                let format = if body.format() == 1 {
                    CopyFormat::Binary
                } else {
                    CopyFormat::Text
                };
                Ok(CopyOut {
                    connection: self,
                    format,
                    rows: None,
                    finished: false,
                })
            }
            Message::ErrorResponse(body) => {
                let error = server_error(body.fields());
                self.read_until_ready(DURING).await?;
                Err(error)
            }
            Message::RowDescription(_) | Message::DataRow(_) | Message::CommandComplete(_) => {
                self.read_until_ready(DURING).await?;
                Err(PgError::protocol(
                    DURING,
                    "the statement is not a COPY … TO STDOUT",
                ))
            }
            other => Err(unexpected(DURING, &other)),
        }
    }

    /// Starts `COPY … FROM STDIN`.
    pub async fn copy_in(&mut self, sql: &str) -> Result<CopyIn<'_>, PgError> {
        const DURING: &str = "starting COPY FROM STDIN";
        self.check_usable()?;
        frontend::query(sql, &mut self.write_buf)
            .map_err(|error| PgError::protocol(DURING, error.to_string()))?;
        self.flush(DURING).await?;
        match self.read_message(DURING).await? {
            Message::CopyInResponse(body) => {
                self.desynchronized = true;
                let format = if body.format() == 1 {
                    CopyFormat::Binary
                } else {
                    CopyFormat::Text
                };
                Ok(CopyIn {
                    connection: self,
                    format,
                })
            }
            Message::ErrorResponse(body) => {
                let error = server_error(body.fields());
                self.read_until_ready(DURING).await?;
                Err(error)
            }
            Message::RowDescription(_) | Message::DataRow(_) | Message::CommandComplete(_) => {
                self.read_until_ready(DURING).await?;
                Err(PgError::protocol(
                    DURING,
                    "the statement is not a COPY … FROM STDIN",
                ))
            }
            other => Err(unexpected(DURING, &other)),
        }
    }

    pub(crate) async fn read_until_ready(&mut self, during: &'static str) -> Result<(), PgError> {
        loop {
            if let Message::ReadyForQuery(_) = self.read_message(during).await? {
                return Ok(());
            }
        }
    }
}
