//! Errors of the wire client, typed by what the caller can do about them.
//!
//! A server `ErrorResponse` becomes a [`DbError`] with every field PostgreSQL sends (SQLSTATE,
//! message, detail, hint, position, …). Connection loss, timeouts, TLS and protocol violations
//! are their own kinds, so that callers can tell "retry later" from "fix your config".
//! No variant ever holds a password: configuration secrets are never formatted into errors.

use std::fmt;
use std::io;
use std::time::Duration;

use postgres_protocol::message::backend::ErrorFields;

/// An error the server reported, with every field of its `ErrorResponse` or `NoticeResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbError {
    /// `ERROR`, `FATAL`, `PANIC`, `WARNING`, `NOTICE`, … (non-localized when the server sends it).
    pub severity: String,
    /// The five-character SQLSTATE, e.g. `28P01` for a wrong password.
    pub code: String,
    /// The primary human-readable message.
    pub message: String,
    /// Optional secondary message with more detail.
    pub detail: Option<String>,
    /// Optional suggestion of what to do.
    pub hint: Option<String>,
    /// Cursor position (1-based, in characters) into the query text.
    pub position: Option<u32>,
    /// Where in the server the error arose (call stack of PL functions, …).
    pub where_: Option<String>,
    /// The schema the error concerns.
    pub schema: Option<String>,
    /// The table the error concerns.
    pub table: Option<String>,
    /// The column the error concerns.
    pub column: Option<String>,
    /// The constraint the error concerns.
    pub constraint: Option<String>,
}

impl DbError {
    /// Decodes the fields of an `ErrorResponse` or `NoticeResponse` body.
    pub fn from_fields(mut fields: ErrorFields<'_>) -> io::Result<DbError> {
        use fallible_iterator::FallibleIterator;
        let mut error = DbError::default();
        let mut localized_severity = None;
        while let Some(field) = fields.next()? {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'S' => localized_severity = Some(value),
                b'V' => error.severity = value,
                b'C' => error.code = value,
                b'M' => error.message = value,
                b'D' => error.detail = Some(value),
                b'H' => error.hint = Some(value),
                b'P' => error.position = value.parse().ok(),
                b'W' => error.where_ = Some(value),
                b's' => error.schema = Some(value),
                b't' => error.table = Some(value),
                b'c' => error.column = Some(value),
                b'n' => error.constraint = Some(value),
                _ => {}
            }
        }
        if error.severity.is_empty() {
            error.severity = localized_severity.unwrap_or_default();
        }
        if error.code.is_empty() || error.message.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "server error message lacks its SQLSTATE or message field",
            ));
        }
        Ok(error)
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.code
        )?;
        if let Some(detail) = &self.detail {
            write!(f, "\nDETAIL: {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\nHINT: {hint}")?;
        }
        if let Some(position) = self.position {
            write!(f, "\nPOSITION: {position}")?;
        }
        Ok(())
    }
}

/// Everything that can go wrong talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The TCP (or Unix socket) connection could not be opened.
    #[error("could not connect to PostgreSQL at {address}: {source}\nHINT: check host and port, that the server runs and accepts TCP connections (listen_addresses), and firewalls")]
    Connect {
        /// `host:port` or the socket path.
        address: String,
        /// The operating system's reason.
        source: io::Error,
    },
    /// An operation did not finish in time.
    #[error("timed out after {after:?} while {during} (server {address})\nHINT: raise connect_timeout, or check that the server is reachable and not overloaded")]
    Timeout {
        /// What we were doing.
        during: &'static str,
        /// The limit that ran out.
        after: Duration,
        /// `host:port` or the socket path.
        address: String,
    },
    /// The server closed the connection while we expected more.
    #[error("the server closed the connection unexpectedly while {during}\nHINT: the server may have restarted or terminated this session; see its log")]
    Closed {
        /// What we were doing.
        during: &'static str,
    },
    /// Reading or writing the socket failed.
    #[error("connection error while {during}: {source}")]
    Io {
        /// What we were doing.
        during: &'static str,
        /// The operating system's reason.
        source: io::Error,
    },
    /// The server answered with bytes that break the PostgreSQL protocol.
    #[error("protocol violation while {during}: {detail}\nHINT: is this port really a PostgreSQL server (and not, say, a proxy or another service)?")]
    Protocol {
        /// What we were doing.
        during: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The server reported an error.
    #[error("{0}")]
    Server(Box<DbError>),
    /// TLS could not be set up or the handshake failed.
    #[error("TLS error: {detail}")]
    Tls {
        /// What was wrong, with the fix where there is one.
        detail: String,
    },
    /// Authentication could not proceed (method unsupported, password missing, SCRAM failure).
    #[error("authentication failed: {detail}")]
    Auth {
        /// What was wrong, with the fix where there is one.
        detail: String,
    },
    /// The connection settings are invalid (bad PEM, bad sslmode, …).
    #[error("invalid connection setting {key}: {detail}")]
    Config {
        /// The config key at fault.
        key: &'static str,
        /// What was wrong and how to fix it.
        detail: String,
    },
}

impl PgError {
    /// The server's error, if this is one.
    pub fn as_db_error(&self) -> Option<&DbError> {
        match self {
            PgError::Server(error) => Some(error),
            _ => None,
        }
    }

    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        self.as_db_error().map(|error| error.code.as_str())
    }

    /// Whether retrying the same operation later may succeed (connection loss, timeouts,
    /// server shutdown or overload), as opposed to errors that need a fix first.
    pub fn is_transient(&self) -> bool {
        match self {
            PgError::Connect { .. }
            | PgError::Timeout { .. }
            | PgError::Closed { .. }
            | PgError::Io { .. } => true,
            PgError::Server(error) => {
                // Class 08: connection exception; 57P0x: admin/crash shutdown, cannot connect now;
                // 53xxx: insufficient resources (too many connections); 40001/40P01: retry the txn.
                error.code.starts_with("08")
                    || error.code.starts_with("57P")
                    || error.code.starts_with("53")
                    || error.code == "40001"
                    || error.code == "40P01"
            }
            PgError::Protocol { .. }
            | PgError::Tls { .. }
            | PgError::Auth { .. }
            | PgError::Config { .. } => false,
        }
    }

    /// Maps an I/O error from the socket to the right kind: EOF becomes `Closed`.
    pub(crate) fn io(during: &'static str, source: io::Error) -> PgError {
        match source.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => PgError::Closed { during },
            _ => PgError::Io { during, source },
        }
    }

    pub(crate) fn protocol(during: &'static str, detail: impl Into<String>) -> PgError {
        PgError::Protocol {
            during,
            detail: detail.into(),
        }
    }
}

impl From<DbError> for PgError {
    fn from(error: DbError) -> PgError {
        PgError::Server(Box::new(error))
    }
}
