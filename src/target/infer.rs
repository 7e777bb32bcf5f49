//! Columns inferred from GDN documents: which PostgreSQL type holds every value an attribute
//! has had, how a column widens when a new value disagrees, and how a value is written.
//!
//! | values of an attribute (nulls aside) | column |
//! |---|---|
//! | `true` / `false` | `boolean` |
//! | whole numbers that fit 64 bits | `bigint` |
//! | other numbers (GDN keeps them as IEEE doubles) | `double precision` |
//! | whole numbers and other numbers | `numeric` (holds every 64-bit integer and every double exactly) |
//! | strings | `text` |
//! | objects, arrays, or values of different kinds | `jsonb` |
//!
//! A column only widens: `bigint`/`double precision` → `numeric` → `jsonb`, anything else →
//! `jsonb`, each with an `ALTER … TYPE … USING` that keeps every stored value (a double goes
//! through its shortest exact text, never through `float8::numeric`, which rounds to 15 digits).
//! An attribute gets a column with its first non-null value; null and absent are both NULL.
//! Columns of other types (a table created by hand) are kept and fed with PostgreSQL's input
//! syntax: strings as their contents, everything else as JSON text.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::target::copy_encode::push_escaped;

/// The name of the key column.
pub const KEY_COLUMN: &str = "_key";
/// The deletion time column of tables loaded without `hard_delete`.
pub const DELETED_AT_COLUMN: &str = "_sdc_deleted_at";
/// Longest identifier PostgreSQL keeps.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// The type of a column that holds document attributes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ColumnType {
    /// `boolean`.
    Boolean,
    /// `bigint`.
    BigInt,
    /// `double precision`.
    Double,
    /// `numeric` without precision or scale.
    Numeric,
    /// `text`.
    Text,
    /// `jsonb`.
    Jsonb,
    /// Any other type, as `format_type()` prints it (kept as it is, never widened).
    Other(String),
}

/// What one JSON value asks of its column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// `null`: fits every column.
    Null,
    /// `true` / `false`.
    Boolean,
    /// A whole number within 64 bits.
    Integer,
    /// Any other number.
    Float,
    /// A string.
    String,
    /// An object or an array.
    Structure,
}

/// The kind of a JSON value.
pub fn value_kind(value: &Value) -> ValueKind {
    match value {
        Value::Null => ValueKind::Null,
        Value::Bool(_) => ValueKind::Boolean,
        Value::Number(number) if number.is_i64() => ValueKind::Integer,
        Value::Number(_) => ValueKind::Float,
        Value::String(_) => ValueKind::String,
        Value::Array(_) | Value::Object(_) => ValueKind::Structure,
    }
}

impl ColumnType {
    /// The type as SQL writes it (and `format_type()` prints it).
    pub fn sql(&self) -> &str {
        match self {
            ColumnType::Boolean => "boolean",
            ColumnType::BigInt => "bigint",
            ColumnType::Double => "double precision",
            ColumnType::Numeric => "numeric",
            ColumnType::Text => "text",
            ColumnType::Jsonb => "jsonb",
            ColumnType::Other(sql) => sql,
        }
    }

    /// The column type an existing column of `sql` (as `format_type()` prints it) counts as.
    pub fn from_sql(sql: &str) -> ColumnType {
        match sql {
            "boolean" => ColumnType::Boolean,
            "bigint" => ColumnType::BigInt,
            "double precision" => ColumnType::Double,
            "numeric" => ColumnType::Numeric,
            "text" => ColumnType::Text,
            "jsonb" => ColumnType::Jsonb,
            other => ColumnType::Other(other.to_owned()),
        }
    }

    /// The type a first value of `kind` gives a new column (`None` for null).
    pub fn for_kind(kind: ValueKind) -> Option<ColumnType> {
        Some(match kind {
            ValueKind::Null => return None,
            ValueKind::Boolean => ColumnType::Boolean,
            ValueKind::Integer => ColumnType::BigInt,
            ValueKind::Float => ColumnType::Double,
            ValueKind::String => ColumnType::Text,
            ValueKind::Structure => ColumnType::Jsonb,
        })
    }

    /// The narrowest type holding what this column holds and a value of `kind`.
    pub fn join(&self, kind: ValueKind) -> ColumnType {
        let Some(wanted) = ColumnType::for_kind(kind) else {
            return self.clone();
        };
        match (self, &wanted) {
            (current, wanted) if current == wanted => current.clone(),
            (ColumnType::Other(_) | ColumnType::Jsonb, _) => self.clone(),
            (ColumnType::BigInt, ColumnType::Double)
            | (ColumnType::Double, ColumnType::BigInt)
            | (ColumnType::Numeric, ColumnType::BigInt | ColumnType::Double) => ColumnType::Numeric,
            _ => ColumnType::Jsonb,
        }
    }

    /// The `USING` expression converting a column `quoted` of this type into `wider`, keeping
    /// every value exactly.
    pub fn widen_using(&self, quoted: &str, wider: &ColumnType) -> String {
        match (self, wider) {
            (ColumnType::Double, ColumnType::Numeric) => format!("{quoted}::text::numeric"),
            (_, ColumnType::Jsonb) => format!("to_jsonb({quoted})"),
            (_, wider) => format!("{quoted}::{}", wider.sql()),
        }
    }
}

/// The column an attribute goes to: its own name when PostgreSQL can keep it as it is (1–63
/// bytes, no NUL, not a name pgferry reserves), else up to 54 bytes of it, `_`, and 8 hex digits
/// of its SHA-256 — so long names stay distinct instead of being cut to one.
pub fn column_name(attribute: &str) -> String {
    column_name_of(attribute).into_owned()
}

/// [`column_name`] without an allocation in the common case (the attribute's own name).
pub fn column_name_of(attribute: &str) -> std::borrow::Cow<'_, str> {
    let reserved = attribute == KEY_COLUMN || attribute == DELETED_AT_COLUMN;
    if !attribute.is_empty()
        && attribute.len() <= MAX_IDENTIFIER_BYTES
        && !attribute.contains('\0')
        && !reserved
    {
        return std::borrow::Cow::Borrowed(attribute);
    }
    let digest = Sha256::digest(attribute.as_bytes());
    let hex: String = digest[..4]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let mut end = attribute.len().min(54);
    while !attribute.is_char_boundary(end) {
        end -= 1;
    }
    let prefix: String = attribute[..end].chars().filter(|ch| *ch != '\0').collect();
    std::borrow::Cow::Owned(format!("{prefix}_{hex}"))
}

/// Why a value cannot be written to its column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// PostgreSQL's text and jsonb cannot hold U+0000.
    #[error("contains the character U+0000, which PostgreSQL text and jsonb cannot store")]
    Nul,
    /// The value does not fit the column (a column created by hand with another type).
    #[error("a {kind:?} value does not fit column type {column}")]
    Mismatch {
        /// The value's kind.
        kind: ValueKind,
        /// The column's type.
        column: String,
    },
}

/// Appends `value` as one COPY text field of a column of type `column` (`\N` for null).
pub fn encode_field(
    out: &mut Vec<u8>,
    value: &Value,
    column: &ColumnType,
) -> Result<(), ValueError> {
    let kind = value_kind(value);
    let mismatch = || ValueError::Mismatch {
        kind,
        column: column.sql().to_owned(),
    };
    match (value, column) {
        (Value::Null, _) => out.extend_from_slice(b"\\N"),
        (Value::Bool(flag), ColumnType::Boolean) => {
            out.push(if *flag { b't' } else { b'f' });
        }
        (Value::Bool(flag), ColumnType::Other(_)) => {
            out.extend_from_slice(if *flag { b"true" } else { b"false" });
        }
        (Value::Number(number), ColumnType::BigInt) if number.is_i64() => {
            out.extend_from_slice(number.to_string().as_bytes());
        }
        (Value::Number(number), ColumnType::Double) if !number.is_i64() => {
            out.extend_from_slice(number.to_string().as_bytes());
        }
        (Value::Number(number), ColumnType::Numeric | ColumnType::Other(_)) => {
            out.extend_from_slice(number.to_string().as_bytes());
        }
        (Value::String(text), ColumnType::Text | ColumnType::Other(_)) => {
            if text.contains('\0') {
                return Err(ValueError::Nul);
            }
            push_escaped(out, text.as_bytes());
        }
        (_, ColumnType::Jsonb) | (Value::Array(_) | Value::Object(_), ColumnType::Other(_)) => {
            let text = value.to_string();
            if text.contains("\\u0000") {
                return Err(ValueError::Nul);
            }
            push_escaped(out, text.as_bytes());
        }
        _ => return Err(mismatch()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inferred(values: &[Value]) -> Option<ColumnType> {
        let mut column: Option<ColumnType> = None;
        for value in values {
            let kind = value_kind(value);
            column = match column {
                None => ColumnType::for_kind(kind),
                Some(current) => Some(current.join(kind)),
            };
        }
        column
    }

    #[test]
    fn a_column_is_typed_where_every_value_agrees() {
        assert_eq!(
            inferred(&[json!(1), json!(null), json!(-7)]),
            Some(ColumnType::BigInt)
        );
        assert_eq!(
            inferred(&[json!(1.5), json!(2e300)]),
            Some(ColumnType::Double)
        );
        assert_eq!(inferred(&[json!(1), json!(0.5)]), Some(ColumnType::Numeric));
        assert_eq!(inferred(&[json!(0.5), json!(1)]), Some(ColumnType::Numeric));
        assert_eq!(inferred(&[json!(u64::MAX)]), Some(ColumnType::Double));
        assert_eq!(
            inferred(&[json!(true), json!(false)]),
            Some(ColumnType::Boolean)
        );
        assert_eq!(inferred(&[json!("a"), json!("b")]), Some(ColumnType::Text));
        assert_eq!(inferred(&[json!({"a": 1})]), Some(ColumnType::Jsonb));
        assert_eq!(inferred(&[json!([1])]), Some(ColumnType::Jsonb));
        assert_eq!(inferred(&[json!("1"), json!(1)]), Some(ColumnType::Jsonb));
        assert_eq!(inferred(&[json!(1), json!(true)]), Some(ColumnType::Jsonb));
        assert_eq!(
            inferred(&[json!(1), json!(0.5), json!("x")]),
            Some(ColumnType::Jsonb)
        );
        assert_eq!(inferred(&[json!(null)]), None);
        let hand_made = ColumnType::from_sql("timestamp with time zone");
        assert_eq!(hand_made.join(ValueKind::String), hand_made);
        assert_eq!(
            ColumnType::from_sql("jsonb").join(ValueKind::Integer),
            ColumnType::Jsonb
        );
    }

    #[test]
    fn widening_keeps_every_value() {
        assert_eq!(
            ColumnType::Double.widen_using("\"x\"", &ColumnType::Numeric),
            "\"x\"::text::numeric"
        );
        assert_eq!(
            ColumnType::BigInt.widen_using("\"x\"", &ColumnType::Numeric),
            "\"x\"::numeric"
        );
        assert_eq!(
            ColumnType::Text.widen_using("\"x\"", &ColumnType::Jsonb),
            "to_jsonb(\"x\")"
        );
    }

    #[test]
    fn long_and_reserved_names_get_a_hashed_column() {
        assert_eq!(column_name("price"), "price");
        assert_eq!(column_name("Mixed Case.dots"), "Mixed Case.dots");
        let long = "a".repeat(70);
        let column = column_name(&long);
        assert_eq!(column.len(), 54 + 1 + 8);
        assert_ne!(column, column_name(&"a".repeat(71)));
        assert_ne!(column_name(DELETED_AT_COLUMN), DELETED_AT_COLUMN);
        assert!(!column_name("").is_empty());
        assert!(!column_name("a\0b").contains('\0'));
        let accented = "é".repeat(40);
        assert!(column_name(&accented).len() <= 63);
    }

    #[test]
    fn values_are_written_in_copy_text() {
        let field = |value: Value, column: ColumnType| {
            let mut out = Vec::new();
            encode_field(&mut out, &value, &column).map(|()| String::from_utf8(out).unwrap())
        };
        assert_eq!(field(json!(null), ColumnType::BigInt).unwrap(), "\\N");
        assert_eq!(field(json!(true), ColumnType::Boolean).unwrap(), "t");
        assert_eq!(field(json!(-42), ColumnType::BigInt).unwrap(), "-42");
        assert_eq!(field(json!(0.1), ColumnType::Double).unwrap(), "0.1");
        assert_eq!(field(json!(12), ColumnType::Numeric).unwrap(), "12");
        assert_eq!(
            field(json!("a\tb\\"), ColumnType::Text).unwrap(),
            "a\\tb\\\\"
        );
        assert_eq!(
            field(json!({"k": "v\n"}), ColumnType::Jsonb).unwrap(),
            "{\"k\":\"v\\\\n\"}"
        );
        assert_eq!(field(json!("s"), ColumnType::Jsonb).unwrap(), "\"s\"");
        assert_eq!(
            field(json!(1), ColumnType::Other("integer".into())).unwrap(),
            "1"
        );
        assert_eq!(
            field(json!("a\u{0}"), ColumnType::Text),
            Err(ValueError::Nul)
        );
        assert_eq!(
            field(json!(["a\u{0}"]), ColumnType::Jsonb),
            Err(ValueError::Nul)
        );
        assert!(field(json!("x"), ColumnType::BigInt).is_err());
    }
}
