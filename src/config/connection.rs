//! The PostgreSQL connection keys every config with a server shares (source, Singer target):
//! `host`, `port`, `user`, `password`, `dbname`, `ssl`/`sslmode`, the PEM keys and
//! `connect_timeout`, read with the old connectors' meanings.

use std::time::Duration;

use serde_json::Value;

use crate::config::value::{boolean, secret, string, unsigned};
use crate::config::ConfigError;
use crate::pg::{ConnectOptions, SslMode, TlsMaterial};
use crate::secret::Secret;

/// The connection keys, for a caller's list of known keys.
pub const CONNECTION_KEYS: &[&str] = &[
    "host",
    "port",
    "user",
    "password",
    "dbname",
    "ssl",
    "sslmode",
    "ssl_root_ca_cert",
    "ssl_client_certificate",
    "ssl_client_key",
    "ssl_client_password",
    "connect_timeout",
    "application_name",
];

/// Where and how to connect to one PostgreSQL server.
#[derive(Debug, Clone)]
pub struct PgConnectionConfig {
    /// Server host name, IP address, or Unix socket directory.
    pub host: String,
    /// Server port (default 5432).
    pub port: u16,
    /// Role to connect as.
    pub user: String,
    /// Its password (`password`, or the `PGPASSWORD` environment variable).
    pub password: Option<Secret>,
    /// Database.
    pub dbname: String,
    /// How much TLS to demand (`sslmode`, or `require` when `ssl` is true).
    pub sslmode: SslMode,
    /// Whether the file chose the TLS mode itself (`sslmode` or `ssl`), rather than the default.
    pub sslmode_explicit: bool,
    /// PEM contents for TLS.
    pub tls: TlsMaterial,
    /// Limit for establishing a connection (seconds in the file; default 30).
    pub connect_timeout: Duration,
    /// Shown in `pg_stat_activity`.
    pub application_name: String,
}

/// Whether `host` names this machine: `localhost`, a loopback address, or a Unix socket
/// directory (an absolute path).
pub fn is_local_host(host: &str) -> bool {
    let host = host.trim();
    if host.starts_with('/') || host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .map(|address| address.is_loopback())
        .unwrap_or(false)
}

/// A required, non-blank string key.
pub(crate) fn required(
    object: &serde_json::Map<String, Value>,
    key: &'static str,
    hint: &'static str,
) -> Result<String, ConfigError> {
    match string(object, key)? {
        Some(value) if !value.trim().is_empty() => Ok(value),
        _ => Err(ConfigError::Missing { key, hint }),
    }
}

/// A TCP port, also written as a string.
pub(crate) fn port(
    object: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<u16>, ConfigError> {
    match unsigned(object, key)? {
        None => Ok(None),
        Some(value) => u16::try_from(value)
            .ok()
            .filter(|port| *port > 0)
            .map(Some)
            .ok_or_else(|| ConfigError::Invalid {
                key: key.to_owned(),
                detail: format!("{value} is not a TCP port (1–65535)"),
            }),
    }
}

fn pem(object: &serde_json::Map<String, Value>, key: &str) -> Result<Option<String>, ConfigError> {
    Ok(string(object, key)?.filter(|text| !text.trim().is_empty()))
}

impl PgConnectionConfig {
    /// Reads a destination object: its keys must be the connection keys or `extra`; then the
    /// connection as [`PgConnectionConfig::from_object`] reads it.
    pub(crate) fn from_destination(
        object: &serde_json::Map<String, Value>,
        extra: &[&str],
        dbname_hint: &'static str,
    ) -> Result<PgConnectionConfig, ConfigError> {
        let known: Vec<&str> = CONNECTION_KEYS.iter().chain(extra).copied().collect();
        crate::config::value::reject_unknown_keys(object, &known)?;
        PgConnectionConfig::from_object(object, dbname_hint)
    }

    /// Reads the connection keys of `object` (other keys are the caller's to check).
    /// `dbname_hint` says what the database is for, in the error when it is missing.
    pub fn from_object(
        object: &serde_json::Map<String, Value>,
        dbname_hint: &'static str,
    ) -> Result<PgConnectionConfig, ConfigError> {
        let dbname = required(object, "dbname", dbname_hint)?;
        let sslmode_explicit = object.contains_key("sslmode") || object.contains_key("ssl");
        let sslmode = match string(object, "sslmode")? {
            Some(mode) => {
                mode.parse()
                    .map_err(|error: crate::pg::PgError| ConfigError::Invalid {
                        key: "sslmode".into(),
                        detail: error.to_string(),
                    })?
            }
            None if boolean(object, "ssl")?.unwrap_or(false) => SslMode::Require,
            // The old connectors used plain connections unless `ssl` was set; libpq's `prefer`
            // keeps them working and upgrades to TLS where the server offers it.
            None => SslMode::Prefer,
        };
        let password = match secret(object, "password")? {
            Some(password) => Some(password),
            None => std::env::var("PGPASSWORD").ok().map(Secret::new),
        };
        let connect_timeout = unsigned(object, "connect_timeout")?.unwrap_or(30);
        if connect_timeout == 0 {
            return Err(ConfigError::Invalid {
                key: "connect_timeout".into(),
                detail: "must be at least 1 second".into(),
            });
        }
        Ok(PgConnectionConfig {
            host: required(
                object,
                "host",
                "the PostgreSQL server's host name or address",
            )?,
            port: port(object, "port")?.unwrap_or(5432),
            user: required(object, "user", "the role to connect as")?,
            password,
            dbname,
            sslmode,
            sslmode_explicit,
            tls: TlsMaterial {
                root_ca_pem: pem(object, "ssl_root_ca_cert")?,
                client_cert_pem: pem(object, "ssl_client_certificate")?,
                client_key_pem: secret(object, "ssl_client_key")?.filter(|key| !key.is_empty()),
                client_key_password: secret(object, "ssl_client_password")?
                    .filter(|key| !key.is_empty()),
            },
            connect_timeout: Duration::from_secs(connect_timeout),
            application_name: string(object, "application_name")?
                .unwrap_or_else(|| "pgferry".into()),
        })
    }

    /// The TLS rule of `pgferry run`: a server that is not on this machine gets `verify-full`
    /// unless the file chose a mode itself. Local servers (loopback addresses, `localhost`, a
    /// Unix socket directory) keep the old connectors' `prefer`.
    pub fn apply_run_tls_default(&mut self) {
        if !self.sslmode_explicit && !is_local_host(&self.host) {
            self.sslmode = SslMode::VerifyFull;
        }
    }

    /// The warning `pgferry run` logs when the file explicitly asks for less than `verify-full`
    /// towards a server that is not on this machine; `None` when there is nothing to say.
    pub fn tls_opt_out_warning(&self) -> Option<String> {
        if !self.sslmode_explicit
            || is_local_host(&self.host)
            || self.sslmode == SslMode::VerifyFull
        {
            return None;
        }
        Some(format!(
            "sslmode {} for {}:{} was set explicitly: the server's certificate or host name is not verified, so the connection can be intercepted (remove the setting to get verify-full, the default for remote hosts)",
            self.sslmode.as_str(),
            self.host,
            self.port
        ))
    }

    /// Options for [`crate::pg::Connection::connect`].
    pub fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            password: self.password.clone(),
            dbname: self.dbname.clone(),
            application_name: self.application_name.clone(),
            sslmode: self.sslmode,
            tls: self.tls.clone(),
            connect_timeout: self.connect_timeout,
            replication: false,
            durable_commits: false,
        }
    }

    /// [`Self::connect_options`] for a destination: its commits are durable before pgferry
    /// acknowledges what they hold (see [`ConnectOptions::durable_commits`]).
    pub fn destination_options(&self) -> ConnectOptions {
        ConnectOptions {
            durable_commits: true,
            ..self.connect_options()
        }
    }
}
