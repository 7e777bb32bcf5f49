//! The `publication` key: the publications pgoutput reads, one name or several.
//!
//! Several names are written as a JSON list (`["p1", "p2"]`) or as one string the way
//! PostgreSQL's `publication_names` option is (`"p1, p2"`): names separated by commas, white
//! space around them ignored, a name in double quotes taken as written with `""` for a quote
//! inside (PostgreSQL's `SplitIdentifierString`), so a name holding a comma is `"\"a,b\""`.
//! Unlike PostgreSQL, an unquoted name keeps its case: pgferry has always taken
//! `"publication": "MyPub"` as the publication named `MyPub`, and a file written for that
//! keeps working.

use serde_json::Value;

use crate::config::ConfigError;

/// The publications LOG_BASED streaming through pgoutput reads, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publications {
    names: Vec<String>,
    explicit: bool,
}

impl Publications {
    /// The default: one publication named like the slot, which pgferry creates when missing.
    pub fn default_for_slot(slot: &str) -> Publications {
        Publications {
            names: vec![slot.to_owned()],
            explicit: false,
        }
    }

    /// Reads the `publication` value (a string or a list of strings); `Ok(None)` when it is
    /// absent or an empty string (then the slot's name is used).
    pub fn from_value(value: Option<&Value>) -> Result<Option<Publications>, ConfigError> {
        let names = match value {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(text)) if text.trim().is_empty() => return Ok(None),
            Some(Value::String(text)) => split_names(text).map_err(invalid)?,
            Some(Value::Array(items)) => {
                let mut names = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(name) if !name.is_empty() => names.push(name.clone()),
                        other => {
                            return Err(invalid(format!(
                                "every entry of the list must be a publication's name, got {other}"
                            )))
                        }
                    }
                }
                if names.is_empty() {
                    return Err(invalid(
                        "the list is empty: name at least one publication, or leave the key out (pgferry then uses the slot's name)".into(),
                    ));
                }
                names
            }
            Some(_) => {
                return Err(invalid(
                    "expected a publication's name, a list of names, or names separated by commas"
                        .into(),
                ))
            }
        };
        for (index, name) in names.iter().enumerate() {
            if names[..index].contains(name) {
                return Err(invalid(format!("publication {name:?} is named twice")));
            }
            if name.len() > 63 {
                return Err(invalid(format!(
                    "publication name {name:?} is longer than PostgreSQL's 63 bytes"
                )));
            }
        }
        Ok(Some(Publications {
            names,
            explicit: true,
        }))
    }

    /// The names, in the order given.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The first name (the only one, unless several were given).
    pub fn first(&self) -> &str {
        &self.names[0]
    }

    /// Whether several publications are named: then each must exist (pgferry creates only a
    /// single publication it names itself or that the config names alone).
    pub fn several(&self) -> bool {
        self.names.len() > 1
    }

    /// Whether the config named them (else it is the slot's name, the default).
    pub fn explicit(&self) -> bool {
        self.explicit
    }

    /// The `publication_names` value for `START_REPLICATION`: every name double-quoted, so
    /// PostgreSQL's `SplitIdentifierString` gives back each name exactly (case, commas, quotes).
    pub fn option_value(&self) -> String {
        self.names
            .iter()
            .map(|name| format!("\"{}\"", name.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The names for messages: `"p1"` or `"p1", "p2"`.
    pub fn describe(&self) -> String {
        self.names
            .iter()
            .map(|name| format!("{name:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn invalid(detail: String) -> ConfigError {
    ConfigError::Invalid {
        key: "publication".into(),
        detail,
    }
}

/// Splits `text` into names as `SplitIdentifierString` does with a comma separator, except
/// that unquoted names keep their case (see the module docs).
fn split_names(text: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut name = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => {
                        return Err(format!(
                            "{text:?}: a double quote is not closed (a quote inside a quoted name is written \"\")"
                        ))
                    }
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        name.push('"');
                    }
                    Some('"') => break,
                    Some(c) => name.push(c),
                }
            }
            if name.is_empty() {
                return Err(format!("{text:?}: a quoted name is empty"));
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            match chars.peek() {
                None | Some(',') => {}
                Some(_) => {
                    return Err(format!(
                        "{text:?}: a quoted name must be followed by a comma or the end (to put a quote in a name, write it twice inside the quotes)"
                    ))
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if c == '"' {
                    return Err(format!(
                        "{text:?}: a double quote inside an unquoted name; quote the whole name: \"\"\"a\"\"b\"\" is a\"b"
                    ));
                }
                name.push(c);
                chars.next();
            }
            let name = name.trim_end().to_owned();
            if name.is_empty() {
                return Err(format!(
                    "{text:?}: an empty name (two commas in a row, or a comma at an end)"
                ));
            }
            names.push(name);
            if chars.next().is_none() {
                return Ok(names);
            }
            continue;
        }
        names.push(name);
        if chars.next().is_none() {
            return Ok(names);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(value: Value) -> Vec<String> {
        Publications::from_value(Some(&value))
            .unwrap()
            .unwrap()
            .names()
            .to_vec()
    }

    fn error(value: Value) -> String {
        Publications::from_value(Some(&value))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn one_name_is_taken_as_written() {
        assert_eq!(names(json!("MyPub")), vec!["MyPub"]);
        assert_eq!(names(json!("my pub")), vec!["my pub"]);
        assert_eq!(names(json!("  p1  ")), vec!["p1"]);
        let one = Publications::from_value(Some(&json!("p1")))
            .unwrap()
            .unwrap();
        assert!(!one.several());
        assert!(one.explicit());
        assert_eq!(Publications::from_value(Some(&json!(""))).unwrap(), None);
        assert_eq!(Publications::from_value(None).unwrap(), None);
        assert!(!Publications::default_for_slot("macrometa_d").explicit());
    }

    #[test]
    fn a_string_with_commas_names_several_as_publication_names_does() {
        assert_eq!(names(json!("p1,p2")), vec!["p1", "p2"]);
        assert_eq!(names(json!(" p1 , p2 ")), vec!["p1", "p2"]);
        assert!(Publications::from_value(Some(&json!("p1,p2")))
            .unwrap()
            .unwrap()
            .several());
    }

    #[test]
    fn quoted_names_hold_commas_quotes_and_spaces() {
        assert_eq!(names(json!("\"a,b\", c")), vec!["a,b", "c"]);
        assert_eq!(names(json!("\"say \"\"hi\"\"\"")), vec!["say \"hi\""]);
        assert_eq!(names(json!("\"Mixed\",\" lead\"")), vec!["Mixed", " lead"]);
    }

    #[test]
    fn a_list_names_each_publication_exactly() {
        assert_eq!(names(json!(["p1", "p2"])), vec!["p1", "p2"]);
        assert_eq!(names(json!(["a,b", "\"q\""])), vec!["a,b", "\"q\""]);
    }

    #[test]
    fn bad_lists_say_what_is_wrong() {
        assert!(error(json!("p1,,p2")).contains("empty name"));
        assert!(error(json!("p1,")).contains("empty name"));
        assert!(error(json!("\"open")).contains("not closed"));
        assert!(error(json!("\"a\"b")).contains("followed by a comma"));
        assert!(error(json!("a\"b")).contains("quote the whole name"));
        assert!(error(json!("\"\"")).contains("quoted name is empty"));
        assert!(error(json!([])).contains("the list is empty"));
        assert!(error(json!(["p1", 2])).contains("publication's name"));
        assert!(error(json!(["p1", "p1"])).contains("named twice"));
        assert!(error(json!(true)).contains("list of names"));
        assert!(error(json!("x".repeat(64))).contains("63 bytes"));
        assert!(error(json!("p1,,p2")).contains("\"publication\""));
    }

    #[test]
    fn the_replication_option_quotes_every_name() {
        let publications = Publications::from_value(Some(&json!(["p1", "My \"Pub\"", "a,b"])))
            .unwrap()
            .unwrap();
        assert_eq!(
            publications.option_value(),
            "\"p1\",\"My \"\"Pub\"\"\",\"a,b\""
        );
        assert_eq!(
            split_names(&publications.option_value()).unwrap(),
            publications.names(),
            "PostgreSQL's split of the option gives back the names"
        );
    }
}
