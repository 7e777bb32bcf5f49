//! The Singer state the old tap read and wrote: `{"bookmarks": {"<stream>": {
//! "last_replication_method", "lsn", "version", "xmin"}}, "currently_syncing"}`.
//!
//! `lsn` and `xmin` are integers as the old tap wrote them (an LSN `16/B374D848` as the 64-bit
//! number); an LSN written as text is read too. pgferry adds `pgferry_source` (database name and
//! system identifier) so that a state written for another database is refused instead of
//! silently skipping or replaying changes; the old tap and targets ignore the extra key.

use serde_json::{Map, Value};

use crate::pg::Lsn;
use crate::singer::tap::TapError;

/// Which database a state belongs to, as pgferry records it.
pub const SOURCE_KEY: &str = "pgferry_source";

/// A Singer state object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TapState {
    value: Map<String, Value>,
}

impl TapState {
    /// Reads a state file; an empty file is an empty state.
    pub fn from_file(path: &std::path::Path) -> Result<TapState, TapError> {
        let error = |detail: String| TapError::State {
            path: path.display().to_string(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|cause| error(cause.to_string()))?;
        TapState::parse(&text).map_err(error)
    }

    /// Parses a state (a JSON object, or the last line of a file of STATE values).
    pub fn parse(text: &str) -> Result<TapState, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(TapState::default());
        }
        let value: Value = match serde_json::from_str(text) {
            Ok(value) => value,
            // A file the target appended STATE lines to: the last line is the state.
            Err(error) => match text.lines().last().map(serde_json::from_str::<Value>) {
                Some(Ok(value)) if text.lines().count() > 1 => value,
                _ => return Err(format!("not valid JSON: {error}\nHINT: the state must be the JSON object of the last STATE message (its \"value\")")),
            },
        };
        let Value::Object(mut value) = value else {
            return Err("expected a JSON object like {\"bookmarks\": {…}}".into());
        };
        // A whole STATE message instead of its value.
        if value.get("type").and_then(Value::as_str) == Some("STATE") {
            match value.remove("value") {
                Some(Value::Object(inner)) => value = inner,
                _ => return Err("a STATE message without an object \"value\"".into()),
            }
        }
        match value.get("bookmarks") {
            None | Some(Value::Object(_)) => {}
            Some(_) => return Err("\"bookmarks\" must be an object of streams".into()),
        }
        Ok(TapState { value })
    }

    /// The state as JSON, for a STATE message.
    pub fn value(&self) -> Value {
        Value::Object(self.value.clone())
    }

    /// The streams with bookmarks.
    pub fn streams(&self) -> Vec<String> {
        match self.value.get("bookmarks") {
            Some(Value::Object(bookmarks)) => bookmarks.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// One bookmark of a stream (`None` when absent or null).
    pub fn bookmark(&self, stream: &str, key: &str) -> Option<&Value> {
        self.value
            .get("bookmarks")?
            .get(stream)?
            .get(key)
            .filter(|value| !value.is_null())
    }

    /// Sets a bookmark (`Value::Null` keeps the key with null, as singer-python did).
    pub fn set_bookmark(&mut self, stream: &str, key: &str, value: Value) {
        let bookmarks = self
            .value
            .entry("bookmarks")
            .or_insert_with(|| Value::Object(Map::new()));
        if !bookmarks.is_object() {
            *bookmarks = Value::Object(Map::new());
        }
        if let Value::Object(bookmarks) = bookmarks {
            let entry = bookmarks
                .entry(stream)
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            if let Value::Object(entry) = entry {
                entry.insert(key.to_owned(), value);
            }
        }
    }

    /// Forgets a stream's bookmarks (its replication method changed).
    pub fn reset_stream(&mut self, stream: &str) {
        if let Some(Value::Object(bookmarks)) = self.value.get_mut("bookmarks") {
            bookmarks.insert(stream.to_owned(), Value::Object(Map::new()));
        }
    }

    /// Drops the bookmarks of streams not in `keep` whose method was LOG_BASED (the old tap
    /// did this so a deselected stream does not hold the slot back).
    pub fn drop_log_based_except(&mut self, keep: &[String]) {
        if let Some(Value::Object(bookmarks)) = self.value.get_mut("bookmarks") {
            bookmarks.retain(|stream, bookmark| {
                keep.contains(stream)
                    || bookmark
                        .get("last_replication_method")
                        .and_then(Value::as_str)
                        != Some("LOG_BASED")
            });
        }
    }

    /// The stream whose copy was interrupted, if the state says so.
    pub fn currently_syncing(&self) -> Option<&str> {
        self.value.get("currently_syncing").and_then(Value::as_str)
    }

    /// Marks (or clears) the stream being copied.
    pub fn set_currently_syncing(&mut self, stream: Option<&str>) {
        self.value.insert(
            "currently_syncing".into(),
            stream.map_or(Value::Null, Value::from),
        );
    }

    /// A stream's `lsn` bookmark: an integer (the old tap) or `X/Y` text.
    pub fn lsn(&self, stream: &str) -> Result<Option<Lsn>, String> {
        match self.bookmark(stream, "lsn") {
            None => Ok(None),
            Some(Value::Number(number)) => number
                .as_u64()
                .map(|lsn| Some(Lsn::from_u64(lsn)))
                .ok_or_else(|| format!("bookmark lsn of {stream} is {number}, not an LSN")),
            Some(Value::String(text)) => text
                .parse::<Lsn>()
                .map(Some)
                .map_err(|error| format!("bookmark lsn of {stream}: {error}")),
            Some(other) => Err(format!("bookmark lsn of {stream} is {other}, not an LSN")),
        }
    }

    /// A stream's `version` bookmark.
    pub fn version(&self, stream: &str) -> Option<i64> {
        self.bookmark(stream, "version").and_then(Value::as_i64)
    }

    /// Where the state says it came from (`pgferry_source`), if pgferry wrote it.
    pub fn source(&self) -> Option<&Value> {
        self.value.get(SOURCE_KEY)
    }

    /// Records which database this state belongs to.
    pub fn set_source(&mut self, source: Value) {
        self.value.insert(SOURCE_KEY.into(), source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_old_taps_state_and_its_integer_lsn() {
        let state = TapState::parse(
            r#"{"currently_syncing": null, "bookmarks": {"public-orders": {"last_replication_method": "LOG_BASED", "lsn": 23876768, "version": 1700000000000, "xmin": null}}}"#,
        )
        .unwrap();
        assert_eq!(
            state.lsn("public-orders").unwrap(),
            Some(Lsn::from_u64(23_876_768))
        );
        assert_eq!(state.version("public-orders"), Some(1_700_000_000_000));
        assert_eq!(state.bookmark("public-orders", "xmin"), None);
        assert_eq!(state.currently_syncing(), None);
        assert_eq!(state.streams(), vec!["public-orders"]);
    }

    #[test]
    fn bookmarks_are_written_as_singer_python_did() {
        let mut state = TapState::default();
        state.set_bookmark("s", "last_replication_method", json!("FULL_TABLE"));
        state.set_bookmark("s", "version", json!(5));
        state.set_bookmark("s", "xmin", Value::Null);
        state.set_currently_syncing(None);
        assert_eq!(
            state.value(),
            json!({"bookmarks": {"s": {"last_replication_method": "FULL_TABLE", "version": 5, "xmin": null}}, "currently_syncing": null})
        );
        state.reset_stream("s");
        assert_eq!(state.value()["bookmarks"]["s"], json!({}));
    }

    #[test]
    fn text_lsns_state_lines_and_bad_input() {
        let state =
            TapState::parse("{\"x\": 1}\n{\"bookmarks\": {\"s\": {\"lsn\": \"0/16B3748\"}}}")
                .unwrap();
        assert_eq!(state.lsn("s").unwrap(), Some("0/16B3748".parse().unwrap()));
        let message = TapState::parse(r#"{"type": "STATE", "value": {"bookmarks": {}}}"#).unwrap();
        assert_eq!(message.value(), json!({"bookmarks": {}}));
        assert!(TapState::parse("[1]").is_err());
        assert!(TapState::parse("{oops")
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(TapState::parse(r#"{"bookmarks": {"s": {"lsn": "nope"}}}"#)
            .unwrap()
            .lsn("s")
            .is_err());
        assert_eq!(TapState::parse("  ").unwrap(), TapState::default());
    }
}
