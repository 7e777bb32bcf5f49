//! Query-string parameters and path segments: percent-decoding and GDN's boolean spellings.

use super::error::ApiError;

/// Decodes `%XX` escapes (and `+` as a space in query strings); `None` for invalid escapes or
/// invalid UTF-8.
pub fn percent_decode(raw: &str, plus_is_space: bool) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hi = (hex[0] as char).to_digit(16)?;
                let lo = (hex[1] as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The parsed query string of one request; unknown parameters are ignored, as GDN does.
#[derive(Debug, Default, Clone)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses `a=1&b=true`; a pair that does not decode is a 400.
    pub fn parse(raw: Option<&str>) -> Result<Query, ApiError> {
        let mut pairs = Vec::new();
        for part in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = percent_decode(name, true);
            let value = percent_decode(value, true);
            match (name, value) {
                (Some(name), Some(value)) => pairs.push((name, value)),
                _ => {
                    return Err(ApiError::bad_parameter(
                        "a query parameter is not valid percent-encoded UTF-8",
                    ))
                }
            }
        }
        Ok(Query { pairs })
    }

    /// The last value given for `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean parameter: `1`/`true`/`yes`/`on` or `0`/`false`/`no`/`off`, else 400.
    pub fn flag(&self, name: &str, default: bool) -> Result<bool, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(value) => parse_bool(value).ok_or_else(|| {
                ApiError::bad_parameter(format!(
                    "query parameter '{name}' must be a boolean (1/0 or true/false), got '{value}'"
                ))
            }),
        }
    }
}

/// GDN's boolean spellings in query strings.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_accept_numbers_and_words() {
        let q = Query::parse(Some("returnNew=0&silent=1&waitForSync=true&x=False&bad=2")).unwrap();
        assert!(!q.flag("returnNew", true).unwrap());
        assert!(q.flag("silent", false).unwrap());
        assert!(q.flag("waitForSync", false).unwrap());
        assert!(!q.flag("x", true).unwrap());
        assert!(q.flag("missing", true).unwrap());
        assert_eq!(q.flag("bad", false).unwrap_err().status.as_u16(), 400);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%25b%3A", false).as_deref(), Some("a%b:"));
        assert_eq!(percent_decode("a+b", true).as_deref(), Some("a b"));
        assert_eq!(percent_decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%zz", false), None);
        assert_eq!(percent_decode("%4", false), None);
        assert_eq!(percent_decode("%ff", false), None);
    }
}
