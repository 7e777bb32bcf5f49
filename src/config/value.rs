//! Lenient readers for the value shapes old Singer configs used, and "did you mean".

use serde_json::Value;

use crate::config::ConfigError;
use crate::secret::Secret;

/// The known key closest to `key` by edit distance, if it is close enough to be a typo.
pub fn did_you_mean<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|candidate| (edit_distance(key, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.len() / 3).max(2))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// Fails on the first key of `object` not in `known`, suggesting the closest known key.
pub fn reject_unknown_keys(
    object: &serde_json::Map<String, Value>,
    known: &[&str],
) -> Result<(), ConfigError> {
    for key in object.keys() {
        if !known.contains(&key.as_str()) {
            let suggestion = did_you_mean(key, known)
                .map(|candidate| format!("; did you mean {candidate:?}?"))
                .unwrap_or_default();
            return Err(ConfigError::UnknownKey {
                key: key.clone(),
                suggestion,
                known: known.join(", "),
            });
        }
    }
    Ok(())
}

/// The keys of `object` that a drop-in command (`tap`, `target`, `target-gdn`) does not know,
/// each as a warning with the closest known key, and `object` without them. Singer connectors
/// ignore keys they do not use and orchestrators (pipelinewise, Meltano) pass such keys, so a
/// config written for the old connectors must start; `pgferry run`'s own files stay strict
/// ([`reject_unknown_keys`]).
pub fn lenient_keys(
    object: &serde_json::Map<String, Value>,
    known: &[&str],
    command: &str,
) -> (serde_json::Map<String, Value>, Vec<String>) {
    let mut kept = serde_json::Map::new();
    let mut warnings = Vec::new();
    for (key, value) in object {
        if known.contains(&key.as_str()) {
            kept.insert(key.clone(), value.clone());
        } else {
            let suggestion = did_you_mean(key, known)
                .map(|candidate| format!("; did you mean {candidate:?}?"))
                .unwrap_or_default();
            warnings.push(format!(
                "config key {key:?} is not used by pgferry {command} and is ignored{suggestion}"
            ));
        }
    }
    (kept, warnings)
}

fn invalid(key: &str, detail: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        detail: detail.into(),
    }
}

/// A string value (numbers are accepted and printed, as old configs mixed them).
pub fn string(
    object: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<String>, ConfigError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(Value::Number(number)) => Ok(Some(number.to_string())),
        Some(_) => Err(invalid(key, "expected a string")),
    }
}

/// A boolean, also written as `"true"`/`"false"` or `1`/`0` in old configs.
pub fn boolean(
    object: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<bool>, ConfigError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(flag)) => Ok(Some(*flag)),
        Some(Value::String(text)) => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Some(true)),
            "false" | "0" | "no" | "off" | "" => Ok(Some(false)),
            _ => Err(invalid(
                key,
                format!("expected true or false, got {text:?}"),
            )),
        },
        Some(Value::Number(number)) => match number.as_u64() {
            Some(0) => Ok(Some(false)),
            Some(1) => Ok(Some(true)),
            _ => Err(invalid(
                key,
                format!("expected true or false, got {number}"),
            )),
        },
        Some(_) => Err(invalid(key, "expected true or false")),
    }
}

/// A non-negative integer, also written as a string.
pub fn unsigned(
    object: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<u64>, ConfigError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => number.as_u64().map(Some).ok_or_else(|| {
            invalid(
                key,
                format!("expected a non-negative whole number, got {number}"),
            )
        }),
        Some(Value::String(text)) => text.trim().parse().map(Some).map_err(|_| {
            invalid(
                key,
                format!("expected a non-negative whole number, got {text:?}"),
            )
        }),
        Some(_) => Err(invalid(key, "expected a non-negative whole number")),
    }
}

/// A secret: a string in the file, or `{"env": "NAME"}` naming an environment variable.
pub fn secret(
    object: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<Secret>, ConfigError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(Secret::new(text.clone()))),
        Some(Value::Object(reference)) => {
            let name = match (reference.len(), reference.get("env")) {
                (1, Some(Value::String(name))) => name,
                _ => {
                    return Err(invalid(
                        key,
                        "expected a string or {\"env\": \"VARIABLE_NAME\"}",
                    ))
                }
            };
            std::env::var(name)
                .map(|value| Some(Secret::new(value)))
                .map_err(|_| {
                    invalid(
                        key,
                        format!("environment variable {name} (named in the config) is not set"),
                    )
                })
        }
        // Never echo the value: it may be a mistyped secret.
        Some(_) => Err(invalid(
            key,
            "expected a string or {\"env\": \"VARIABLE_NAME\"}",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> serde_json::Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn suggests_the_closest_known_key() {
        assert_eq!(
            did_you_mean("replication_slt", &["replication_slot", "host"]),
            Some("replication_slot")
        );
        assert_eq!(did_you_mean("hots", &["host", "port"]), Some("host"));
        assert_eq!(did_you_mean("completely_else", &["host", "port"]), None);
        let error =
            reject_unknown_keys(&object(json!({"hots": 1})), &["host", "port"]).unwrap_err();
        assert!(
            error.to_string().contains("did you mean \"host\""),
            "{error}"
        );
    }

    #[test]
    fn drop_in_commands_warn_about_unknown_keys_and_keep_the_others() {
        let (kept, warnings) = lenient_keys(
            &object(json!({"host": "h", "hots": 1, "orchestrator_only": true})),
            &["host", "port"],
            "tap",
        );
        assert_eq!(kept, object(json!({"host": "h"})));
        assert_eq!(warnings.len(), 2);
        assert!(
            warnings[0].contains("\"hots\"") && warnings[0].contains("did you mean \"host\""),
            "{warnings:?}"
        );
        assert!(
            warnings[1].contains("orchestrator_only") && !warnings[1].contains("did you mean"),
            "{warnings:?}"
        );
    }

    #[test]
    fn accepts_the_old_value_shapes() {
        let config = object(json!({"port": "5433", "ssl": "true", "flag": 0, "n": 7}));
        assert_eq!(unsigned(&config, "port").unwrap(), Some(5433));
        assert_eq!(boolean(&config, "ssl").unwrap(), Some(true));
        assert_eq!(boolean(&config, "flag").unwrap(), Some(false));
        assert_eq!(string(&config, "n").unwrap(), Some("7".into()));
        assert!(unsigned(&object(json!({"port": -1})), "port").is_err());
        assert!(boolean(&object(json!({"ssl": "maybe"})), "ssl").is_err());
    }

    #[test]
    fn secrets_come_from_the_file_or_the_environment_and_are_never_echoed() {
        std::env::set_var("PGFERRY_TEST_SECRET_VALUE", "from-env");
        let config = object(
            json!({"a": "inline", "b": {"env": "PGFERRY_TEST_SECRET_VALUE"}, "c": {"env": "PGFERRY_TEST_UNSET_VAR"}, "d": 12345678}),
        );
        assert_eq!(secret(&config, "a").unwrap().unwrap().expose(), "inline");
        assert_eq!(secret(&config, "b").unwrap().unwrap().expose(), "from-env");
        assert!(secret(&config, "c")
            .unwrap_err()
            .to_string()
            .contains("PGFERRY_TEST_UNSET_VAR"));
        assert!(!secret(&config, "d")
            .unwrap_err()
            .to_string()
            .contains("12345678"));
    }
}
