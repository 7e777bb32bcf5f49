//! A GDN source (`"source": {"type": "gdn", …}`): the collections to read, how to scan them
//! with a cursor, and the change-stream subscription that follows them afterwards.

use std::time::Duration;

use serde_json::Value;

use crate::config::destination::{endpoint, positive};
use crate::config::error::ConfigError;
use crate::config::value::{reject_unknown_keys, string};
use crate::config::GdnAuth;

/// Keys a GDN source may hold.
pub const GDN_SOURCE_KEYS: &[&str] = &[
    "type",
    "gdn_host",
    "gdn_url",
    "fabric",
    "api_key",
    "email",
    "password",
    "source_collection",
    "cursor_batch_size",
    "cursor_ttl",
    "subscription_name",
    "request_timeout",
    "max_retries",
    "truncate_check_interval",
];

/// Default `truncate_check_interval` in seconds.
pub const DEFAULT_TRUNCATE_CHECK_SECONDS: u64 = 30;

/// The default subscription name: one per pipeline destination and collection, so that two
/// pipelines reading one collection into different tables never share acknowledgements.
pub const DEFAULT_SUBSCRIPTION_NAME: &str = "pgferry-{dbname}-{schema}-{table}";

/// Largest cursor page GDN serves (the OpenAPI's maximum `batchSize`).
pub const MAX_CURSOR_BATCH_SIZE: u64 = 1000;

/// Settings of a GDN source.
#[derive(Debug, Clone)]
pub struct GdnSourceConfig {
    /// Base URL of the API, e.g. `https://api-gdn.paas.macrometa.io` or `http://127.0.0.1:8529`.
    pub base_url: String,
    /// The fabric (`_system` by default).
    pub fabric: String,
    /// Credentials.
    pub auth: GdnAuth,
    /// The collections to read, each into a table of its own.
    pub collections: Vec<String>,
    /// Documents per cursor page (`batchSize`).
    pub cursor_batch_size: u64,
    /// Seconds an idle cursor lives on the server (`ttl`).
    pub cursor_ttl: u64,
    /// Subscription name template (`{collection}`, `{dbname}`, `{schema}`, `{table}`).
    pub subscription_name: String,
    /// Limit for one HTTP request.
    pub request_timeout: Duration,
    /// Attempts for a retryable failure (429, 5xx, connection loss) before the run fails.
    pub max_retries: u32,
    /// How long a collection's stream must be quiet before its table's row count is compared
    /// with the collection's (GDN's stream carries nothing for a truncate); `None`: never.
    pub truncate_check: Option<Duration>,
}

/// `truncate_check_interval`: whole seconds, `0` for never.
fn truncate_check(
    object: &serde_json::Map<String, Value>,
) -> Result<Option<Duration>, ConfigError> {
    let invalid = || ConfigError::Invalid {
        key: "truncate_check_interval".into(),
        detail: "expected whole seconds (0 turns the check off), e.g. 30".into(),
    };
    let seconds = match object.get("truncate_check_interval") {
        None | Some(Value::Null) => DEFAULT_TRUNCATE_CHECK_SECONDS,
        Some(Value::Number(number)) => number.as_u64().ok_or_else(invalid)?,
        Some(Value::String(text)) => text.trim().parse::<u64>().map_err(|_| invalid())?,
        Some(_) => return Err(invalid()),
    };
    Ok((seconds > 0).then(|| Duration::from_secs(seconds)))
}

fn collections(object: &serde_json::Map<String, Value>) -> Result<Vec<String>, ConfigError> {
    let invalid = |detail: &str| ConfigError::Invalid {
        key: "source_collection".into(),
        detail: detail.into(),
    };
    let names: Vec<String> =
        match object.get("source_collection") {
            None | Some(Value::Null) => return Err(ConfigError::Missing {
                key: "source_collection",
                hint: "the collection to read, e.g. \"orders\" (or a list [\"orders\", \"items\"])",
            }),
            Some(Value::String(name)) => vec![name.trim().to_owned()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(name) => Ok(name.trim().to_owned()),
                    _ => Err(invalid("expected a collection name or a list of names")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(invalid("expected a collection name or a list of names")),
        };
    if names.is_empty() || names.iter().any(String::is_empty) {
        return Err(invalid("collection names must not be empty"));
    }
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    if sorted.len() != names.len() {
        return Err(invalid("a collection is listed twice"));
    }
    Ok(names)
}

impl GdnSourceConfig {
    /// Reads and validates a GDN source object.
    pub fn from_object(
        object: &serde_json::Map<String, Value>,
    ) -> Result<GdnSourceConfig, ConfigError> {
        reject_unknown_keys(object, GDN_SOURCE_KEYS)?;
        let (base_url, auth) = endpoint(object)?;
        let cursor_batch_size = positive(object, "cursor_batch_size", MAX_CURSOR_BATCH_SIZE)?;
        if cursor_batch_size > MAX_CURSOR_BATCH_SIZE {
            return Err(ConfigError::Invalid {
                key: "cursor_batch_size".into(),
                detail: format!(
                    "{cursor_batch_size} is above {MAX_CURSOR_BATCH_SIZE}, the largest page GDN serves"
                ),
            });
        }
        let collections = collections(object)?;
        let subscription_name = string(object, "subscription_name")?
            .filter(|name| !name.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_SUBSCRIPTION_NAME.to_owned());
        if collections.len() > 1
            && !subscription_name.contains("{collection}")
            && !subscription_name.contains("{table}")
        {
            return Err(ConfigError::Invalid {
                key: "subscription_name".into(),
                detail: format!("{subscription_name:?} must contain {{collection}} or {{table}} when several collections are read, so each has a subscription of its own"),
            });
        }
        Ok(GdnSourceConfig {
            base_url,
            fabric: string(object, "fabric")?.unwrap_or_else(|| "_system".into()),
            auth,
            collections,
            cursor_batch_size,
            cursor_ttl: positive(object, "cursor_ttl", 60)?,
            subscription_name,
            request_timeout: Duration::from_secs(positive(object, "request_timeout", 60)?),
            max_retries: positive(object, "max_retries", 10)? as u32,
            truncate_check: truncate_check(object)?,
        })
    }

    /// The subscription of `collection` loaded into `schema.table` of database `dbname`:
    /// the template filled in, characters other than `[A-Za-z0-9_.-]` replaced by `_`.
    pub fn subscription_for(
        &self,
        collection: &str,
        dbname: &str,
        schema: &str,
        table: &str,
    ) -> String {
        self.subscription_name
            .replace("{collection}", collection)
            .replace("{dbname}", dbname)
            .replace("{schema}", schema)
            .replace("{table}", table)
            .chars()
            .map(|ch| {
                if ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.') {
                    ch
                } else {
                    '_'
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: Value) -> Result<GdnSourceConfig, ConfigError> {
        GdnSourceConfig::from_object(value.as_object().unwrap())
    }

    #[test]
    fn reads_collections_and_defaults() {
        let config = parse(serde_json::json!({
            "type": "gdn", "gdn_host": "gdn.paas.macrometa.io", "api_key": "t.k.s",
            "source_collection": "orders", "cursor_batch_size": "500"
        }))
        .unwrap();
        assert_eq!(config.base_url, "https://api-gdn.paas.macrometa.io");
        assert_eq!(config.collections, vec!["orders"]);
        assert_eq!(config.cursor_batch_size, 500);
        assert_eq!(config.cursor_ttl, 60);
        assert_eq!(config.truncate_check, Some(Duration::from_secs(30)));
        assert_eq!(
            config.subscription_for("orders", "Shop DB", "public", "orders"),
            "pgferry-Shop_DB-public-orders"
        );
        assert!(!format!("{config:?}").contains("t.k.s"));
        let several = parse(serde_json::json!({
            "gdn_url": "http://127.0.0.1:1", "api_key": "k", "source_collection": ["a", "b"]
        }))
        .unwrap();
        assert_eq!(several.collections, vec!["a", "b"]);
        let unchecked = parse(serde_json::json!({
            "gdn_url": "http://127.0.0.1:1", "api_key": "k", "source_collection": "a",
            "truncate_check_interval": 0
        }))
        .unwrap();
        assert_eq!(unchecked.truncate_check, None);
        let text = parse(serde_json::json!({
            "gdn_url": "http://127.0.0.1:1", "api_key": "k", "source_collection": "a",
            "truncate_check_interval": -1
        }))
        .unwrap_err()
        .to_string();
        assert!(text.contains("truncate_check_interval"), "{text}");
    }

    #[test]
    fn mistakes_name_the_key() {
        let error = |value| parse(value).unwrap_err().to_string();
        let text = error(serde_json::json!({"gdn_url": "http://h", "api_key": "k"}));
        assert!(text.contains("source_collection"), "{text}");
        let text = error(serde_json::json!({
            "gdn_url": "http://h", "api_key": "k", "source_colection": "a"
        }));
        assert!(
            text.contains("did you mean \"source_collection\""),
            "{text}"
        );
        let text = error(serde_json::json!({
            "gdn_url": "http://h", "api_key": "k", "source_collection": "a", "cursor_batch_size": 5000
        }));
        assert!(text.contains("cursor_batch_size"), "{text}");
        let text = error(serde_json::json!({
            "gdn_url": "http://h", "api_key": "k", "source_collection": ["a", "b"],
            "subscription_name": "fixed"
        }));
        assert!(text.contains("{collection}"), "{text}");
        let text = error(serde_json::json!({"gdn_url": "http://h", "source_collection": "a"}));
        assert!(text.contains("api_key"), "{text}");
    }
}
