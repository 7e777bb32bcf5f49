//! Destination settings: a GDN fabric (the old `macrometa-target-collection` keys plus ours) or
//! the null destination used to measure the source alone.

use std::time::Duration;

use serde_json::Value;

use crate::config::error::ConfigError;
use crate::config::value::{boolean, reject_unknown_keys, secret, string, unsigned};
use crate::secret::Secret;

/// Keys of a GDN destination object (and of `pgferry target-gdn`'s config).
pub const GDN_KEYS: &[&str] = &[
    "type",
    "gdn_host",
    "gdn_url",
    "fabric",
    "api_key",
    "email",
    "password",
    "target_collection",
    "collection_name",
    "batch_size_rows",
    "batch_size_bytes",
    "batch_flush_interval",
    "batch_flush_min_time_gap",
    "max_in_flight",
    "wait_for_sync",
    "create_stream",
    "request_timeout",
    "max_retries",
];

/// How pgferry proves who it is to GDN.
#[derive(Debug, Clone)]
pub enum GdnAuth {
    /// `Authorization: apikey <key>`.
    ApiKey(Secret),
    /// `POST /_open/auth` with these, then `Authorization: bearer <jwt>`.
    Login {
        /// The account's e-mail.
        email: String,
        /// Its password.
        password: Secret,
    },
}

/// Settings of a GDN destination.
#[derive(Debug, Clone)]
pub struct GdnDestinationConfig {
    /// Base URL of the API, e.g. `https://api-gdn.paas.macrometa.io` or `http://127.0.0.1:8529`.
    pub base_url: String,
    /// The fabric (`_system` by default).
    pub fabric: String,
    /// Credentials.
    pub auth: GdnAuth,
    /// One collection for everything (the old target's key), when set.
    pub target_collection: Option<String>,
    /// Naming rule for per-table collections: `{schema}` and `{table}` are replaced.
    pub collection_name: String,
    /// Documents per request.
    pub batch_size_rows: usize,
    /// Bytes per request (a batch is cut at whichever limit comes first).
    pub batch_size_bytes: usize,
    /// A partly filled batch is sent after this long.
    pub batch_flush_interval: Duration,
    /// Requests in flight at once (HTTP/2 streams over one connection).
    pub max_in_flight: usize,
    /// `waitForSync=true`: a 201 means durable; required for exactly-once resume.
    pub wait_for_sync: bool,
    /// Create missing collections with a change stream.
    pub create_stream: bool,
    /// Limit for one HTTP request.
    pub request_timeout: Duration,
    /// Attempts for a retryable failure (429, 5xx, connection loss) before the run fails.
    pub max_retries: u32,
}

/// Where the rows go.
#[derive(Debug, Clone)]
pub enum DestinationConfig {
    /// A GDN fabric (or gdnlite).
    Gdn(Box<GdnDestinationConfig>),
    /// Nowhere: rows are decoded, encoded and batched, then dropped (for benchmarks).
    Null,
    /// Another PostgreSQL database: the source's tables replicated with their column types.
    Postgres(Box<crate::config::ReplicaDestinationConfig>),
}

/// A whole number of at least 1 (`default` when absent).
pub(crate) fn positive(
    object: &serde_json::Map<String, Value>,
    key: &'static str,
    default: u64,
) -> Result<u64, ConfigError> {
    match unsigned(object, key)? {
        None => Ok(default),
        Some(0) => Err(ConfigError::Invalid {
            key: key.into(),
            detail: "must be at least 1".into(),
        }),
        Some(value) => Ok(value),
    }
}

/// `https://api-<host>` as the old connectors built it, unless the host already says `api-`
/// or carries its own scheme.
fn base_url_from_host(host: &str) -> String {
    let host = host.trim().trim_end_matches('/');
    if host.starts_with("http://") || host.starts_with("https://") {
        return host.to_owned();
    }
    if host.starts_with("api-") {
        format!("https://{host}")
    } else {
        format!("https://api-{host}")
    }
}

/// The GDN base URL (`gdn_url`, or `gdn_host` as the old connectors built it) and credentials
/// (`api_key`, or `email` + `password`): the keys every GDN config shares, source or destination.
pub(crate) fn endpoint(
    object: &serde_json::Map<String, Value>,
) -> Result<(String, GdnAuth), ConfigError> {
    let base_url = match (string(object, "gdn_url")?, string(object, "gdn_host")?) {
        (Some(url), _) => {
            let url = url.trim().trim_end_matches('/').to_owned();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Invalid {
                    key: "gdn_url".into(),
                    detail: format!(
                        "{url:?} must start with http:// or https://, e.g. \"http://127.0.0.1:8529\""
                    ),
                });
            }
            url
        }
        (None, Some(host)) if !host.trim().is_empty() => base_url_from_host(&host),
        _ => {
            return Err(ConfigError::Missing {
                key: "gdn_host",
                hint: "the GDN host, e.g. \"gdn.paas.macrometa.io\" (or \"gdn_url\": \"http://127.0.0.1:8529\" for gdnlite)",
            })
        }
    };
    let auth = match (
        secret(object, "api_key")?,
        string(object, "email")?,
        secret(object, "password")?,
    ) {
        (Some(key), _, _) if !key.is_empty() => GdnAuth::ApiKey(key),
        (_, Some(email), Some(password)) => GdnAuth::Login { email, password },
        (_, Some(_), None) => {
            return Err(ConfigError::Missing {
                key: "password",
                hint: "the password for \"email\" (or use \"api_key\")",
            })
        }
        _ => {
            return Err(ConfigError::Missing {
                key: "api_key",
                hint: "a GDN API key, e.g. \"api_key\": {\"env\": \"GDN_API_KEY\"}",
            })
        }
    };
    Ok((base_url, auth))
}

impl GdnDestinationConfig {
    /// Reads and validates a GDN destination object.
    pub fn from_object(
        object: &serde_json::Map<String, Value>,
    ) -> Result<GdnDestinationConfig, ConfigError> {
        reject_unknown_keys(object, GDN_KEYS)?;
        let (base_url, auth) = endpoint(object)?;
        let collection_name =
            string(object, "collection_name")?.unwrap_or_else(|| "{table}".into());
        if !collection_name.contains("{table}") {
            return Err(ConfigError::Invalid {
                key: "collection_name".into(),
                detail: format!("{collection_name:?} must contain {{table}} so tables do not share a collection (use target_collection for one collection)"),
            });
        }
        Ok(GdnDestinationConfig {
            base_url,
            fabric: string(object, "fabric")?.unwrap_or_else(|| "_system".into()),
            auth,
            target_collection: string(object, "target_collection")?
                .filter(|name| !name.trim().is_empty()),
            collection_name,
            batch_size_rows: positive(object, "batch_size_rows", 1000)? as usize,
            batch_size_bytes: positive(object, "batch_size_bytes", 4 * 1024 * 1024)? as usize,
            batch_flush_interval: Duration::from_secs(positive(
                object,
                "batch_flush_interval",
                10,
            )?),
            max_in_flight: positive(object, "max_in_flight", 8)? as usize,
            wait_for_sync: boolean(object, "wait_for_sync")?.unwrap_or(true),
            create_stream: boolean(object, "create_stream")?.unwrap_or(false),
            request_timeout: Duration::from_secs(positive(object, "request_timeout", 60)?),
            max_retries: positive(object, "max_retries", 10)? as u32,
        })
    }

    /// The collection a table's documents go to.
    pub fn collection_for(&self, schema: &str, table: &str) -> String {
        match &self.target_collection {
            Some(name) => name.clone(),
            None => self
                .collection_name
                .replace("{schema}", schema)
                .replace("{table}", table),
        }
    }
}

impl DestinationConfig {
    /// Reads a destination object: `type` is `gdn` (the default), `null` or `postgres`.
    pub fn from_object(
        object: &serde_json::Map<String, Value>,
    ) -> Result<DestinationConfig, ConfigError> {
        match string(object, "type")?.as_deref() {
            None | Some("gdn") => Ok(DestinationConfig::Gdn(Box::new(GdnDestinationConfig::from_object(
                object,
            )?))),
            Some("null") => {
                reject_unknown_keys(object, &["type"])?;
                Ok(DestinationConfig::Null)
            }
            Some("postgres") => Ok(DestinationConfig::Postgres(Box::new(
                crate::config::ReplicaDestinationConfig::from_object(object)?,
            ))),
            Some(other) => Err(ConfigError::Invalid {
                key: "type".into(),
                detail: format!("destination type {other:?} is not supported here; expected \"gdn\", \"null\" or \"postgres\""),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: Value) -> serde_json::Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!("test objects are objects"),
        }
    }

    #[test]
    fn old_target_keys_with_defaults() {
        let config = GdnDestinationConfig::from_object(&object(serde_json::json!({
            "gdn_host": "gdn.paas.macrometa.io",
            "fabric": "sales",
            "api_key": "k.123",
            "target_collection": "orders",
            "batch_size_rows": "500",
            "batch_flush_interval": 10,
            "batch_flush_min_time_gap": 10
        })))
        .unwrap();
        assert_eq!(config.base_url, "https://api-gdn.paas.macrometa.io");
        assert_eq!(config.fabric, "sales");
        assert_eq!(config.batch_size_rows, 500);
        assert!(config.wait_for_sync);
        assert_eq!(config.collection_for("public", "anything"), "orders");
        assert!(
            !format!("{config:?}").contains("k.123"),
            "the key is redacted"
        );
    }

    #[test]
    fn gdnlite_url_and_naming_rule() {
        let config = GdnDestinationConfig::from_object(&object(serde_json::json!({
            "gdn_url": "http://127.0.0.1:8529/",
            "api_key": "k",
            "collection_name": "{schema}_{table}"
        })))
        .unwrap();
        assert_eq!(config.base_url, "http://127.0.0.1:8529");
        assert_eq!(config.fabric, "_system");
        assert_eq!(config.collection_for("public", "orders"), "public_orders");
    }

    #[test]
    fn mistakes_name_the_key() {
        let error = GdnDestinationConfig::from_object(&object(serde_json::json!({
            "gdn_host": "h", "api_key": "k", "batch_size_row": 5
        })))
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("did you mean \"batch_size_rows\""),
            "{error}"
        );
        let error =
            GdnDestinationConfig::from_object(&object(serde_json::json!({"gdn_host": "h"})))
                .unwrap_err()
                .to_string();
        assert!(error.contains("api_key"), "{error}");
        let error = GdnDestinationConfig::from_object(&object(serde_json::json!({
            "gdn_url": "127.0.0.1:8529", "api_key": "k"
        })))
        .unwrap_err()
        .to_string();
        assert!(error.contains("http://"), "{error}");
        let error = GdnDestinationConfig::from_object(&object(serde_json::json!({
            "gdn_host": "h", "api_key": "k", "max_in_flight": 0
        })))
        .unwrap_err()
        .to_string();
        assert!(error.contains("max_in_flight"), "{error}");
    }

    #[test]
    fn null_destination_takes_no_settings() {
        assert!(matches!(
            DestinationConfig::from_object(&object(serde_json::json!({"type": "null"}))).unwrap(),
            DestinationConfig::Null
        ));
        assert!(DestinationConfig::from_object(&object(
            serde_json::json!({"type": "null", "gdn_host": "h"})
        ))
        .is_err());
    }
}
