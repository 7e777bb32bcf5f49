//! JSON as GDN keeps it: integers that fit in i64 stay integers, every other number becomes an
//! IEEE double. A 20-digit literal is therefore rounded on arrival, exactly as a real fabric
//! would round it, so that tests against gdnlite catch precision loss.

use serde_json::{Number, Value};

use super::error::ApiError;

/// Parses a request body as JSON and normalises its numbers to GDN's storage types.
///
/// Invalid UTF-8, trailing garbage and malformed JSON are all `CORRUPTED_JSON` errors.
pub fn parse_body(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::corrupted_json("the body is empty"));
    }
    let mut value: Value = serde_json::from_slice(bytes).map_err(ApiError::corrupted_json)?;
    normalize_numbers(&mut value);
    Ok(value)
}

/// Rewrites every unsigned integer above `i64::MAX` as a double, in place.
pub fn normalize_numbers(value: &mut Value) {
    match value {
        Value::Number(n) => {
            if let Some(rounded) = gdn_number(n) {
                *n = rounded;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_numbers),
        Value::Object(map) => map.values_mut().for_each(normalize_numbers),
        _ => {}
    }
}

fn gdn_number(n: &Number) -> Option<Number> {
    if n.is_u64() && n.as_i64().is_none() {
        n.as_f64().and_then(Number::from_f64)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_integers_stay_exact() {
        let v = parse_body(br#"{"a": 9223372036854775807, "b": -9223372036854775808}"#).unwrap();
        assert_eq!(v["a"].as_i64(), Some(i64::MAX));
        assert_eq!(v["b"].as_i64(), Some(i64::MIN));
    }

    #[test]
    fn wide_integers_become_doubles() {
        let v = parse_body(br#"{"a": 12345678901234567890, "b": [18446744073709551615]}"#).unwrap();
        assert!(v["a"].is_f64());
        assert_eq!(v["a"].to_string(), "1.2345678901234567e+19");
        assert!(v["b"][0].is_f64());
        let huge = parse_body(b"123456789012345678901234567890").unwrap();
        assert!(huge.is_f64());
    }

    #[test]
    fn decimals_are_doubles() {
        let v = parse_body(br#"[0.1000000000000000055511151231257827, 1.5]"#).unwrap();
        assert_eq!(v[0].as_f64(), Some(0.1));
        assert_eq!(v[1].as_f64(), Some(1.5));
    }

    #[test]
    fn malformed_and_non_utf8_bodies_are_corrupted_json() {
        for body in [
            &b"{"[..],
            b"",
            b"  ",
            b"[1,]",
            b"{\"a\": \"\xff\"}",
            b"{} x",
        ] {
            let err = parse_body(body).unwrap_err();
            assert_eq!(
                err.error_num,
                super::super::error::CORRUPTED_JSON,
                "{body:?}"
            );
            assert_eq!(err.status.as_u16(), 400);
        }
    }
}
