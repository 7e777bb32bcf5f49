//! Connections: socket, TLS negotiation, startup, authentication, and message framing.
//!
//! ```text
//! TCP/Unix ──SSLRequest──▶ 'S' → TLS handshake │ 'N' → plain (refused when sslmode demands TLS)
//!          ──StartupMessage(user, database, replication?)──▶
//!          ◀──Authentication*── trust │ cleartext │ MD5 │ SCRAM-SHA-256[-PLUS]
//!          ◀──ParameterStatus*, BackendKeyData, ReadyForQuery
//! ```
//!
//! The whole establishment runs under `connect_timeout`. Framing is ours: a message header is
//! checked (tag known during startup, length sane) before its body is awaited, so garbage from
//! a non-PostgreSQL server is a protocol error at once, never a wait for a gigabyte that will
//! not come. Bodies are parsed by `postgres-protocol` and stay slices of the read buffer.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{
    ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use postgres_protocol::message::{backend::Message, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::pg::error::{DbError, PgError};
use crate::pg::tls::{self, SslMode, TlsMaterial};
use crate::secret::Secret;

/// Largest message we accept from the server: PostgreSQL's own limit is 1 GiB per field.
const MAX_MESSAGE_LEN: usize = (1 << 30) + (1 << 20);
/// Write buffer size at which streaming writers flush to the socket (backpressure point).
pub(crate) const WRITE_FLUSH_THRESHOLD: usize = 256 * 1024;
const READ_CHUNK: usize = 64 * 1024;
/// A read smaller than this, on a stream that coalesces reads, waits before the next.
const SMALL_READ: usize = 16 * 1024;
/// Message tags a server may send before the first ReadyForQuery.
const STARTUP_TAGS: &[u8] = b"REKSZNv";

/// Tag of CopyBothResponse, which starts the replication stream.
const COPY_BOTH_RESPONSE_TAG: u8 = b'W';

/// A backend message, or the one message `postgres-protocol` does not know.
pub(crate) enum Backend {
    /// Any message `postgres-protocol` parses.
    Message(Message),
    /// CopyBothResponse: the replication stream has started.
    CopyBothResponse,
}

/// Everything needed to open a connection, with the old connector's meanings.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Host name, IP address, or a Unix socket directory (starting with `/`).
    pub host: String,
    /// TCP port (also names the Unix socket file).
    pub port: u16,
    /// Role to log in as.
    pub user: String,
    /// Password, when the server asks for one.
    pub password: Option<Secret>,
    /// Database to connect to.
    pub dbname: String,
    /// Shown in `pg_stat_activity`.
    pub application_name: String,
    /// How much TLS to demand.
    pub sslmode: SslMode,
    /// CA, client certificate and key as PEM contents.
    pub tls: TlsMaterial,
    /// Limit for the whole connection establishment.
    pub connect_timeout: Duration,
    /// Open a logical replication connection (`replication=database`).
    pub replication: bool,
    /// The session writes what pgferry acknowledges once committed (a destination): a server
    /// default of `synchronous_commit = off` is turned back `on` for it, since an
    /// asynchronous COMMIT returns before its WAL is flushed and a crash would lose rows whose
    /// GDN messages, slot position or Singer STATE were already let go.
    pub durable_commits: bool,
}

impl ConnectOptions {
    /// Options for `user@host:port/dbname` with libpq's defaults for the rest.
    pub fn new(host: &str, port: u16, user: &str, dbname: &str) -> ConnectOptions {
        ConnectOptions {
            host: host.to_owned(),
            port,
            user: user.to_owned(),
            password: None,
            dbname: dbname.to_owned(),
            application_name: "pgferry".to_owned(),
            sslmode: SslMode::Prefer,
            tls: TlsMaterial::default(),
            connect_timeout: Duration::from_secs(30),
            replication: false,
            durable_commits: false,
        }
    }

    /// Where we connect, for messages: `host:port` or the socket path.
    pub fn address(&self) -> String {
        if self.is_unix_socket() {
            format!("{}/.s.PGSQL.{}", self.host, self.port)
        } else if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }
}

/// Any byte stream a connection can run over: TCP, TLS over TCP, or a Unix socket.
trait Transport: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Transport for T {}

/// Identifies this session to the server, for cancel requests and `pg_terminate_backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendKey {
    /// The server process serving this connection.
    pub process_id: i32,
    /// Secret used by cancel requests.
    pub secret_key: i32,
}

/// WARNING notices kept until taken: enough to act on, bounded against a chatty server.
const MAX_WARNINGS: usize = 64;

/// An established, authenticated connection, ready for queries.
pub struct Connection {
    io: Box<dyn Transport>,
    read_buf: BytesMut,
    pub(crate) write_buf: BytesMut,
    parameters: HashMap<String, String>,
    backend_key: Option<BackendKey>,
    address: String,
    tls: bool,
    tls_peer_certificate: Option<Vec<u8>>,
    authentication: &'static str,
    /// Set when a COPY was abandoned half-way: the protocol state is unknown.
    pub(crate) desynchronized: bool,
    /// Wait this long before reading again after a read that brought little (a stream).
    pub(crate) coalesce_reads: Option<Duration>,
    /// The last read brought less than [`SMALL_READ`].
    small_read: bool,
    /// WARNING notices not yet taken (a plugin's word that it skipped a change, say).
    warnings: Vec<DbError>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("address", &self.address)
            .field("tls", &self.tls)
            .field("backend_key", &self.backend_key)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Opens, secures and authenticates a connection, all within `connect_timeout`.
    pub async fn connect(options: &ConnectOptions) -> Result<Connection, PgError> {
        let address = options.address();
        match tokio::time::timeout(options.connect_timeout, Self::establish(options)).await {
            Ok(result) => result,
            Err(_) => Err(PgError::Timeout {
                during: "connecting",
                after: options.connect_timeout,
                address,
            }),
        }
    }

    async fn establish(options: &ConnectOptions) -> Result<Connection, PgError> {
        match Self::establish_once(options, options.sslmode).await {
            // libpq's `prefer`: when the TLS handshake itself fails, try once more without TLS.
            Err(PgError::Tls { .. }) if options.sslmode == SslMode::Prefer => {
                Self::establish_once(options, SslMode::Disable).await
            }
            result => result,
        }
    }

    async fn establish_once(
        options: &ConnectOptions,
        sslmode: SslMode,
    ) -> Result<Connection, PgError> {
        let address = options.address();
        let (io, peer_certificate): (Box<dyn Transport>, Option<Vec<u8>>) = if options
            .is_unix_socket()
        {
            #[cfg(unix)]
            {
                let stream = tokio::net::UnixStream::connect(&address)
                    .await
                    .map_err(|source| PgError::Connect {
                        address: address.clone(),
                        source,
                    })?;
                (Box::new(stream), None)
            }
            #[cfg(not(unix))]
            {
                return Err(PgError::Config {
                    key: "host",
                    detail: "Unix sockets are not available on this platform".into(),
                });
            }
        } else {
            let stream = TcpStream::connect((options.host.as_str(), options.port))
                .await
                .map_err(|source| PgError::Connect {
                    address: address.clone(),
                    source,
                })?;
            // Latency matters more than packet count for a request/response protocol.
            let _ = stream.set_nodelay(true);
            negotiate_tls(stream, options, sslmode).await?
        };
        let mut connection = Connection {
            io,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::with_capacity(8 * 1024),
            parameters: HashMap::new(),
            warnings: Vec::new(),
            backend_key: None,
            address,
            tls: peer_certificate.is_some(),
            tls_peer_certificate: peer_certificate.filter(|der| !der.is_empty()),
            authentication: "trust",
            desynchronized: false,
            coalesce_reads: None,
            small_read: false,
        };
        connection.startup(options).await?;
        if options.durable_commits {
            // Stronger settings (`remote_apply`, …) and `local` are kept as they are.
            connection
                .execute(
                    "SELECT pg_catalog.set_config('synchronous_commit', 'on', false) \
                     WHERE pg_catalog.current_setting('synchronous_commit') = 'off'",
                )
                .await?;
        }
        Ok(connection)
    }

    async fn startup(&mut self, options: &ConnectOptions) -> Result<(), PgError> {
        let mut params: Vec<(&str, &str)> = vec![
            ("user", &options.user),
            ("database", &options.dbname),
            ("application_name", &options.application_name),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("IntervalStyle", "iso_8601"),
            ("extra_float_digits", "3"),
            // Text output in one known shape (wal2json uses the session's output functions).
            ("TimeZone", "UTC"),
            ("bytea_output", "hex"),
        ];
        if options.replication {
            params.push(("replication", "database"));
        }
        frontend::startup_message(params.iter().copied(), &mut self.write_buf)
            .map_err(|error| PgError::protocol("sending the startup message", error.to_string()))?;
        self.flush("sending the startup message").await?;
        self.authenticate(options).await?;
        loop {
            match self
                .read_startup_message("waiting for the server to accept the session")
                .await?
            {
                Message::BackendKeyData(body) => {
                    self.backend_key = Some(BackendKey {
                        process_id: body.process_id(),
                        secret_key: body.secret_key(),
                    });
                }
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ErrorResponse(body) => return Err(server_error(body.fields())),
                other => {
                    return Err(unexpected(
                        "waiting for the server to accept the session",
                        &other,
                    ))
                }
            }
        }
    }

    async fn authenticate(&mut self, options: &ConnectOptions) -> Result<(), PgError> {
        const DURING: &str = "authenticating";
        loop {
            match self.read_startup_message(DURING).await? {
                Message::AuthenticationOk => return Ok(()),
                Message::AuthenticationCleartextPassword => {
                    let password = require_password(options, "cleartext password")?;
                    self.authentication = "password";
                    frontend::password_message(password.expose().as_bytes(), &mut self.write_buf)
                        .map_err(|error| PgError::protocol(DURING, error.to_string()))?;
                    self.flush(DURING).await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let password = require_password(options, "MD5")?;
                    self.authentication = "md5";
                    let hash = postgres_protocol::authentication::md5_hash(
                        options.user.as_bytes(),
                        password.expose().as_bytes(),
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.write_buf)
                        .map_err(|error| PgError::protocol(DURING, error.to_string()))?;
                    self.flush(DURING).await?;
                }
                Message::AuthenticationSasl(body) => {
                    let password = require_password(options, "SCRAM-SHA-256")?;
                    self.scram(body, password).await?;
                }
                Message::ErrorResponse(body) => {
                    let mut error = match server_error(body.fields()) {
                        PgError::Server(error) => error,
                        other => return Err(other),
                    };
                    if error.code == "28P01" && error.hint.is_none() {
                        error.hint = Some("check the password configured for this user".into());
                    }
                    return Err(PgError::Server(error));
                }
                Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential
                | Message::AuthenticationGss
                | Message::AuthenticationSspi
                | Message::AuthenticationGssContinue(_) => {
                    return Err(PgError::Auth {
                        detail: format!("the server asks for GSSAPI/SSPI/Kerberos authentication for user {:?}, which pgferry does not support\nHINT: allow scram-sha-256, md5 or password authentication for this user in pg_hba.conf", options.user),
                    })
                }
                other => return Err(unexpected(DURING, &other)),
            }
        }
    }

    async fn scram(
        &mut self,
        body: postgres_protocol::message::backend::AuthenticationSaslBody,
        password: &Secret,
    ) -> Result<(), PgError> {
        use fallible_iterator::FallibleIterator;
        const DURING: &str = "authenticating with SCRAM-SHA-256";
        let mut mechanisms = Vec::new();
        let mut iter = body.mechanisms();
        while let Some(mechanism) = iter
            .next()
            .map_err(|error| PgError::protocol(DURING, error.to_string()))?
        {
            mechanisms.push(mechanism.to_owned());
        }
        let binding_data = if self.tls {
            self.channel_binding_data()
        } else {
            None
        };
        let (mechanism, binding) = match binding_data {
            Some(data) if mechanisms.iter().any(|m| m == SCRAM_SHA_256_PLUS) => (
                SCRAM_SHA_256_PLUS,
                ChannelBinding::tls_server_end_point(data),
            ),
            // We could bind but the server did not offer it: say so ('y'), as libpq does.
            Some(_) => (SCRAM_SHA_256, ChannelBinding::unrequested()),
            None => (SCRAM_SHA_256, ChannelBinding::unsupported()),
        };
        if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) && mechanism == SCRAM_SHA_256 {
            return Err(PgError::Auth {
                detail: format!("the server offers only SASL mechanisms {mechanisms:?}; pgferry supports SCRAM-SHA-256 and SCRAM-SHA-256-PLUS"),
            });
        }
        self.authentication = mechanism;
        let mut scram = ScramSha256::new(password.expose().as_bytes(), binding);
        frontend::sasl_initial_response(mechanism, scram.message(), &mut self.write_buf)
            .map_err(|error| PgError::protocol(DURING, error.to_string()))?;
        self.flush(DURING).await?;
        let server_first = match self.read_startup_message(DURING).await? {
            Message::AuthenticationSaslContinue(body) => body,
            Message::ErrorResponse(body) => return Err(server_error(body.fields())),
            other => return Err(unexpected(DURING, &other)),
        };
        scram
            .update(server_first.data())
            .map_err(|error| PgError::Auth {
                detail: format!("invalid SCRAM challenge from the server: {error}"),
            })?;
        frontend::sasl_response(scram.message(), &mut self.write_buf)
            .map_err(|error| PgError::protocol(DURING, error.to_string()))?;
        self.flush(DURING).await?;
        let server_final = match self.read_startup_message(DURING).await? {
            Message::AuthenticationSaslFinal(body) => body,
            Message::ErrorResponse(body) => return Err(server_error(body.fields())),
            other => return Err(unexpected(DURING, &other)),
        };
        scram.finish(server_final.data()).map_err(|error| PgError::Auth {
            detail: format!("the server's SCRAM signature is invalid ({error}): it does not know the password, or someone is in the middle\nHINT: check that you connect to the intended server"),
        })
    }

    fn channel_binding_data(&self) -> Option<Vec<u8>> {
        let certificate = self.tls_peer_certificate.as_ref()?;
        tls::channel_binding_hash(certificate)
    }

    /// Server parameters reported at startup and since (`server_version`, `TimeZone`, …).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The server's version as `server_version_num` would give it (e.g. 150018 for 15.18).
    pub fn server_version_num(&self) -> Option<u32> {
        self.parameter("server_version")
            .and_then(parse_server_version)
    }

    /// The process and cancel key of this session.
    pub fn backend_key(&self) -> Option<BackendKey> {
        self.backend_key
    }

    /// How the server authenticated us: `trust`, `password`, `md5`, `SCRAM-SHA-256` or
    /// `SCRAM-SHA-256-PLUS` (channel binding to the TLS session).
    pub fn authentication(&self) -> &'static str {
        self.authentication
    }

    /// Whether the connection runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// `host:port` (or socket path) of the server, for messages.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Sends everything buffered for writing.
    pub(crate) async fn flush(&mut self, during: &'static str) -> Result<(), PgError> {
        while self.write_buf.has_remaining() {
            let written = self
                .io
                .write(&self.write_buf)
                .await
                .map_err(|error| PgError::io(during, error))?;
            if written == 0 {
                return Err(PgError::Closed { during });
            }
            self.write_buf.advance(written);
        }
        self.io
            .flush()
            .await
            .map_err(|error| PgError::io(during, error))
    }

    async fn read_startup_message(&mut self, during: &'static str) -> Result<Message, PgError> {
        match self.read_frame(during, true).await? {
            Backend::Message(message) => Ok(message),
            Backend::CopyBothResponse => {
                Err(PgError::protocol(during, "unexpected CopyBothResponse"))
            }
        }
    }

    /// Reads the next message, handling notices and parameter changes on the way.
    pub(crate) async fn read_message(&mut self, during: &'static str) -> Result<Message, PgError> {
        match self.read_frame(during, false).await? {
            Backend::Message(message) => Ok(message),
            Backend::CopyBothResponse => {
                Err(PgError::protocol(during, "unexpected CopyBothResponse"))
            }
        }
    }

    /// The WARNING notices received since the last call (at most [`MAX_WARNINGS`] are kept),
    /// for callers that must act on them, not only log them.
    pub(crate) fn take_warnings(&mut self) -> Vec<DbError> {
        std::mem::take(&mut self.warnings)
    }

    /// Whether a whole message is already buffered, so reading it needs no I/O (and no timer).
    pub(crate) fn has_buffered_message(&self) -> bool {
        self.read_buf.len() >= 5 && {
            let len = u32::from_be_bytes([
                self.read_buf[1],
                self.read_buf[2],
                self.read_buf[3],
                self.read_buf[4],
            ]) as usize;
            self.read_buf.len() > len
        }
    }

    /// Reads the next message, including CopyBothResponse (which `postgres-protocol` lacks).
    pub(crate) async fn read_backend(&mut self, during: &'static str) -> Result<Backend, PgError> {
        self.read_frame(during, false).await
    }

    /// Cancel-safe: all progress lives in `read_buf`, so a dropped future loses nothing.
    async fn read_frame(
        &mut self,
        during: &'static str,
        startup: bool,
    ) -> Result<Backend, PgError> {
        loop {
            if self.read_buf.len() >= 5 {
                let tag = self.read_buf[0];
                if startup && !STARTUP_TAGS.contains(&tag) {
                    return Err(PgError::protocol(
                        during,
                        format!(
                            "the server sent {:?} where a PostgreSQL message was expected",
                            printable_prefix(&self.read_buf)
                        ),
                    ));
                }
                let len = u32::from_be_bytes([
                    self.read_buf[1],
                    self.read_buf[2],
                    self.read_buf[3],
                    self.read_buf[4],
                ]) as usize;
                if !(4..=MAX_MESSAGE_LEN).contains(&len) {
                    return Err(PgError::protocol(
                        during,
                        format!(
                            "message '{}' declares an impossible length of {len} bytes",
                            char::from(tag)
                        ),
                    ));
                }
                if self.read_buf.len() > len && tag == COPY_BOTH_RESPONSE_TAG {
                    self.read_buf.advance(len + 1);
                    return Ok(Backend::CopyBothResponse);
                }
                if self.read_buf.len() > len {
                    let message = Message::parse(&mut self.read_buf)
                        .map_err(|error| {
                            PgError::protocol(
                                during,
                                format!("malformed message '{}': {error}", char::from(tag)),
                            )
                        })?
                        .ok_or_else(|| {
                            PgError::protocol(during, "incomplete message after a complete frame")
                        })?;
                    match message {
                        Message::NoticeResponse(body) => {
                            if let Ok(notice) = DbError::from_fields(body.fields()) {
                                tracing::info!(target: "pgferry::server", severity = %notice.severity, code = %notice.code, "{}", notice.message);
                                if notice.severity == "WARNING"
                                    && self.warnings.len() < MAX_WARNINGS
                                {
                                    self.warnings.push(notice);
                                }
                            }
                        }
                        Message::ParameterStatus(body) => {
                            if let (Ok(name), Ok(value)) = (body.name(), body.value()) {
                                self.parameters.insert(name.to_owned(), value.to_owned());
                            }
                        }
                        Message::NotificationResponse(_) => {}
                        message => return Ok(Backend::Message(message)),
                    }
                    continue;
                }
                self.read_buf
                    .reserve((len + 1 - self.read_buf.len()).min(16 * READ_CHUNK));
            } else {
                self.read_buf.reserve(READ_CHUNK);
            }
            if let (Some(pause), true) = (self.coalesce_reads, self.small_read) {
                tokio::time::sleep(pause).await;
            }
            let read = self
                .io
                .read_buf(&mut self.read_buf)
                .await
                .map_err(|error| PgError::io(during, error))?;
            self.small_read = read < SMALL_READ;
            if read == 0 {
                if startup
                    && self
                        .read_buf
                        .first()
                        .is_some_and(|tag| !STARTUP_TAGS.contains(tag))
                {
                    return Err(PgError::protocol(
                        during,
                        format!(
                            "the server sent {:?} and closed the connection",
                            printable_prefix(&self.read_buf)
                        ),
                    ));
                }
                return Err(PgError::Closed { during });
            }
        }
    }

    /// Ends the session politely (Terminate), ignoring errors: the server may already be gone.
    pub async fn close(mut self) {
        frontend::terminate(&mut self.write_buf);
        let _ = self.flush("closing the connection").await;
        let _ = self.io.shutdown().await;
    }

    pub(crate) fn check_usable(&self) -> Result<(), PgError> {
        if self.desynchronized {
            return Err(PgError::protocol(
                "starting a new command",
                "a previous COPY was abandoned half-way; open a new connection",
            ));
        }
        Ok(())
    }
}

fn require_password<'a>(options: &'a ConnectOptions, method: &str) -> Result<&'a Secret, PgError> {
    options
        .password
        .as_ref()
        .filter(|password| !password.is_empty())
        .ok_or_else(|| PgError::Auth {
            detail: format!(
                "the server asks for a password ({method}) for user {:?} but none is configured\nHINT: set \"password\" in the config (or its environment variable)",
                options.user
            ),
        })
}

async fn negotiate_tls(
    mut stream: TcpStream,
    options: &ConnectOptions,
    sslmode: SslMode,
) -> Result<(Box<dyn Transport>, Option<Vec<u8>>), PgError> {
    const DURING: &str = "negotiating TLS";
    if sslmode == SslMode::Disable {
        return Ok((Box::new(stream), None));
    }
    let config = tls::client_config(sslmode, &options.tls)?;
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    stream
        .write_all(&request)
        .await
        .map_err(|error| PgError::io(DURING, error))?;
    let mut answer = [0u8; 1];
    let read = stream
        .read(&mut answer)
        .await
        .map_err(|error| PgError::io(DURING, error))?;
    if read == 0 {
        return Err(PgError::Closed { during: DURING });
    }
    match answer[0] {
        b'S' => {}
        b'N' if sslmode.requires_tls() => {
            return Err(PgError::Tls {
                detail: format!("the server at {} does not accept TLS connections (ssl = off), but sslmode={} demands TLS\nHINT: enable ssl on the server, or set sslmode to prefer or disable", options.address(), sslmode_name(sslmode)),
            })
        }
        b'N' => return Ok((Box::new(stream), None)),
        other => {
            return Err(PgError::protocol(
                DURING,
                format!("expected 'S' or 'N' in answer to SSLRequest, got byte {other:#04x}"),
            ))
        }
    }
    let server_name = tls::server_name(&options.host)?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let stream = connector
        .connect(server_name, stream)
        .await
        .map_err(|error| PgError::Tls {
            detail: tls::describe_handshake_error(&error, &options.host),
        })?;
    let peer_certificate = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|certificate| certificate.to_vec());
    Ok((Box::new(stream), peer_certificate.or(Some(Vec::new()))))
}

fn sslmode_name(mode: SslMode) -> &'static str {
    match mode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    }
}

pub(crate) fn server_error(
    fields: postgres_protocol::message::backend::ErrorFields<'_>,
) -> PgError {
    match DbError::from_fields(fields) {
        Ok(error) => PgError::Server(Box::new(error)),
        Err(error) => PgError::protocol("reading an error from the server", error.to_string()),
    }
}

pub(crate) fn unexpected(during: &'static str, message: &Message) -> PgError {
    PgError::protocol(
        during,
        format!("unexpected message {}", message_name(message)),
    )
}

fn message_name(message: &Message) -> &'static str {
    match message {
        Message::AuthenticationOk => "AuthenticationOk",
        Message::AuthenticationCleartextPassword => "AuthenticationCleartextPassword",
        Message::AuthenticationMd5Password(_) => "AuthenticationMD5Password",
        Message::AuthenticationSasl(_) => "AuthenticationSASL",
        Message::AuthenticationSaslContinue(_) => "AuthenticationSASLContinue",
        Message::AuthenticationSaslFinal(_) => "AuthenticationSASLFinal",
        Message::BackendKeyData(_) => "BackendKeyData",
        Message::BindComplete => "BindComplete",
        Message::CloseComplete => "CloseComplete",
        Message::CommandComplete(_) => "CommandComplete",
        Message::CopyData(_) => "CopyData",
        Message::CopyDone => "CopyDone",
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::DataRow(_) => "DataRow",
        Message::EmptyQueryResponse => "EmptyQueryResponse",
        Message::ErrorResponse(_) => "ErrorResponse",
        Message::NoData => "NoData",
        Message::ParameterDescription(_) => "ParameterDescription",
        Message::ParseComplete => "ParseComplete",
        Message::PortalSuspended => "PortalSuspended",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        Message::RowDescription(_) => "RowDescription",
        _ => "of another kind",
    }
}

/// The first bytes of unexpected input, shown safely in an error.
fn printable_prefix(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(24)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '.'
            }
        })
        .collect()
}

/// Parses `server_version` ("15.18 (Debian 15.18-0+deb12u1)", "9.6.24", "16beta1") into the
/// `server_version_num` form.
pub fn parse_server_version(text: &str) -> Option<u32> {
    let numeric: String = text
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = numeric.split('.').filter(|part| !part.is_empty());
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next().and_then(|part| part.parse().ok()).unwrap_or(0);
    if major >= 10 {
        Some(major * 10_000 + minor)
    } else {
        let patch: u32 = parts.next().and_then(|part| part.parse().ok()).unwrap_or(0);
        Some(major * 10_000 + minor * 100 + patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_become_version_numbers() {
        assert_eq!(
            parse_server_version("15.18 (Debian 15.18-0+deb12u1)"),
            Some(150018)
        );
        assert_eq!(parse_server_version("9.6.24"), Some(90624));
        assert_eq!(parse_server_version("9.4.21"), Some(90421));
        assert_eq!(parse_server_version("16beta1"), Some(160000));
        assert_eq!(parse_server_version("10.7"), Some(100007));
        assert_eq!(parse_server_version("garbage"), None);
    }

    #[test]
    fn addresses_name_host_and_port() {
        let mut options = ConnectOptions::new("db.example.com", 5433, "u", "d");
        assert_eq!(options.address(), "db.example.com:5433");
        options.host = "::1".into();
        assert_eq!(options.address(), "[::1]:5433");
        options.host = "/var/run/postgresql".into();
        assert_eq!(options.address(), "/var/run/postgresql/.s.PGSQL.5433");
    }

    #[test]
    fn debug_output_of_options_hides_the_password() {
        let mut options = ConnectOptions::new("h", 1, "u", "d");
        options.password = Some(Secret::new("s3cr3t-pw"));
        assert!(!format!("{options:?}").contains("s3cr3t-pw"));
    }
}
