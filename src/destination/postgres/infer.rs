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

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use crate::singer::target_postgres::copy_binary::numeric as numeric_binary;
use crate::singer::target_postgres::copy_encode::{
    is_integer_text, json_kind, push_escaped, string_contents, EncodeError, JsonKind,
};

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

impl ValueKind {
    /// Every kind, in the order of their bits in [`ValueKind::bit`].
    pub const ALL: [ValueKind; 6] = [
        ValueKind::Null,
        ValueKind::Boolean,
        ValueKind::Integer,
        ValueKind::Float,
        ValueKind::String,
        ValueKind::Structure,
    ];

    /// This kind as one bit, so the kinds an attribute has had fit in a `u8`.
    pub fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The kind of one JSON value given as its text (serde_json has checked its syntax), read
/// from the text itself: a whole number is an `Integer` when it fits 64 signed bits (`-0` is
/// not one, as for serde_json), every other number must be a finite double.
pub fn raw_kind(raw: &str) -> Result<ValueKind, ValueError> {
    Ok(match json_kind(raw) {
        JsonKind::Null => ValueKind::Null,
        JsonKind::Boolean => ValueKind::Boolean,
        JsonKind::String => ValueKind::String,
        JsonKind::Array | JsonKind::Object => ValueKind::Structure,
        JsonKind::Number => {
            if is_integer_text(raw) && raw != "-0" && raw.parse::<i64>().is_ok() {
                ValueKind::Integer
            } else if raw.parse::<f64>().is_ok_and(f64::is_finite) {
                ValueKind::Float
            } else {
                return Err(ValueError::OutOfRange);
            }
        }
    })
}

/// A JSON number's text as PostgreSQL's `double precision` input reads the same double as
/// serde_json: itself, except a number that underflows to zero (PostgreSQL refuses those
/// as out of range; serde_json, and GDN, read them as zero).
fn double_text(raw: &str) -> &str {
    let mantissa = raw.split(['e', 'E']).next().unwrap_or(raw);
    let underflows = raw.parse::<f64>().is_ok_and(|value| value == 0.0)
        && mantissa.bytes().any(|byte| matches!(byte, b'1'..=b'9'));
    match (underflows, raw.starts_with('-')) {
        (false, _) => raw,
        (true, false) => "0",
        (true, true) => "-0",
    }
}

/// Whether JSON text holds the escape `\u0000` (a NUL character), which PostgreSQL's text
/// and jsonb refuse; an escaped backslash followed by `u0000` is not one.
fn has_nul_escape(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    let mut from = 0;
    while let Some(found) = raw[from..].find("\\u0000") {
        let at = from + found;
        let backslashes = bytes[..=at]
            .iter()
            .rev()
            .take_while(|&&byte| byte == b'\\')
            .count();
        if backslashes % 2 == 1 {
            return true;
        }
        from = at + 1;
    }
    false
}

impl ColumnType {
    /// Whether [`encode_field_binary`] writes this column's values (the types pgferry infers
    /// that have an exact binary form; `double precision` and other types go as text).
    pub fn binary(&self) -> bool {
        matches!(
            self,
            ColumnType::Boolean
                | ColumnType::BigInt
                | ColumnType::Numeric
                | ColumnType::Text
                | ColumnType::Jsonb
        )
    }

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
            (ColumnType::Double, ColumnType::Numeric) => exact_numeric_sql(quoted),
            (_, ColumnType::Jsonb) => format!("to_jsonb({quoted})"),
            (_, wider) => format!("{quoted}::{}", wider.sql()),
        }
    }
}

/// The `jsonb` column holding, per row, the attributes beyond a table's column budget.
pub const OVERFLOW_COLUMN: &str = "_pgferry_overflow";
/// How a column records the attribute it holds when its name is not the attribute's own (a
/// column comment: this, then the attribute as a JSON string).
pub const ATTRIBUTE_COMMENT: &str = "pgferry attribute: ";

/// The column names an attribute may get, in the order they are tried; the first no other
/// attribute of the table holds is its column. First its own name, when PostgreSQL can keep it
/// as it is (1–63 bytes, no U+0000, not `_key`, `_sdc_deleted_at` or `_pgferry_overflow`); then
/// up to 54 bytes of it (U+0000 removed), `_` and 8 hex digits of its SHA-256; then that with
/// `_2`, `_3`, … appended (its start shortened to stay within 63 bytes). So two attributes
/// never share a column.
pub fn column_candidates(attribute: &str) -> impl Iterator<Item = Cow<'_, str>> {
    let reserved =
        attribute == KEY_COLUMN || attribute == DELETED_AT_COLUMN || attribute == OVERFLOW_COLUMN;
    let own = (!attribute.is_empty()
        && attribute.len() <= MAX_IDENTIFIER_BYTES
        && !attribute.contains('\0')
        && !reserved)
        .then_some(Cow::Borrowed(attribute));
    let hashed = hashed_name(attribute);
    let numbered = (2u64..).map(move |n| {
        let suffix = format!("_{n}");
        let mut end = hashed.len().min(MAX_IDENTIFIER_BYTES - suffix.len());
        while !hashed.is_char_boundary(end) {
            end -= 1;
        }
        Cow::Owned(format!("{}{suffix}", &hashed[..end]))
    });
    own.into_iter()
        .chain(std::iter::once(Cow::Owned(hashed_name(attribute))))
        .chain(numbered)
}

/// Up to 54 bytes of `attribute` (U+0000 removed), `_` and 8 hex digits of its SHA-256.
fn hashed_name(attribute: &str) -> String {
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
    format!("{prefix}_{hex}")
}

/// The exact value of a finite double as decimal text (every double is a binary fraction
/// with a finite decimal expansion): what a `numeric` column holds for a double, so that
/// 2^63 is `9223372036854775808`, not its shortest text `9223372036854776000`, and
/// `::float8` gives back the same double. `-0` is `0` (numeric has no negative zero).
pub fn exact_decimal(value: f64) -> String {
    const BASE: u64 = 1_000_000_000;
    let bits = value.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i64;
    let mut mantissa = bits & ((1 << 52) - 1);
    if exponent != 0 {
        mantissa |= 1 << 52;
    }
    if mantissa == 0 || !value.is_finite() {
        return "0".into();
    }
    // value = mantissa × 2^power
    let power = exponent.max(1) - 1075;
    // A big number in base 10^9 limbs, least significant first.
    let mut limbs = vec![
        mantissa % BASE,
        mantissa / BASE % BASE,
        mantissa / BASE / BASE,
    ];
    let multiply = |limbs: &mut Vec<u64>, by: u64| {
        let mut carry = 0u64;
        for limb in limbs.iter_mut() {
            let product = *limb * by + carry;
            *limb = product % BASE;
            carry = product / BASE;
        }
        while carry > 0 {
            limbs.push(carry % BASE);
            carry /= BASE;
        }
    };
    // Below 2^29 and 5^12 a limb times the factor stays inside 64 bits.
    let (factor, step, mut left) = if power >= 0 {
        (2u64, 29u32, power as u64)
    } else {
        (5u64, 12u32, power.unsigned_abs())
    };
    while left > 0 {
        let now = left.min(u64::from(step));
        multiply(&mut limbs, factor.pow(now as u32));
        left -= now;
    }
    while limbs.len() > 1 && limbs.last() == Some(&0) {
        limbs.pop();
    }
    let mut digits = limbs.last().map(u64::to_string).unwrap_or_default();
    for limb in limbs.iter().rev().skip(1) {
        digits.push_str(&format!("{limb:09}"));
    }
    if power < 0 {
        // mantissa × 5^k / 10^k: k digits after the point.
        let places = power.unsigned_abs() as usize;
        if digits.len() <= places {
            digits = "0".repeat(places + 1 - digits.len()) + &digits;
        }
        digits.insert(digits.len() - places, '.');
        let trimmed = digits.trim_end_matches('0').trim_end_matches('.').len();
        digits.truncate(trimmed);
    }
    if value.is_sign_negative() {
        digits.insert(0, '-');
    }
    digits
}

/// SQL turning a `double precision` column `quoted` into its values' exact `numeric`, the
/// same text as [`exact_decimal`] (`float8::numeric` keeps 15 digits, `::text::numeric` the
/// shortest text): from the double's bits, sign × odd mantissa × 2^power, each step exact in
/// `numeric` (an odd mantissa times 5^k ends in a digit other than 0, so no trailing zeros).
fn exact_numeric_sql(quoted: &str) -> String {
    let bits = format!("(('x' || encode(float8send({quoted}), 'hex'))::bit(64)::bigint)");
    let exponent = format!("(({bits} >> 52) & 2047)");
    let mantissa = format!(
        "(({bits} & 4503599627370495) + CASE WHEN {exponent} = 0 THEN 0 ELSE 4503599627370496 END)"
    );
    let zeros = format!("length(substring({mantissa}::bit(64)::text from '0*$'))");
    let power = format!("(greatest({exponent}, 1) - 1075 + {zeros})");
    format!(
        "CASE WHEN {quoted} = 0 THEN 0::numeric ELSE sign({bits})::numeric * ({mantissa} >> {zeros})::numeric \
         * CASE WHEN {power} >= 0 THEN round(power(2::numeric, {power})) \
         ELSE round(power(5::numeric, -{power})) * ('1e' || {power})::numeric END END"
    )
}

/// Why a value cannot be written to its column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// PostgreSQL's text and jsonb cannot hold U+0000.
    #[error("contains the character U+0000, which PostgreSQL text and jsonb cannot store")]
    Nul,
    /// A JSON string with an escape that does not decode (a lone UTF-16 surrogate).
    #[error("holds a string that does not decode: {0}")]
    Unreadable(String),
    /// A number no double holds (GDN keeps numbers as doubles).
    #[error("is a number beyond the range of a double precision value")]
    OutOfRange,
    /// The value does not fit the column (a column created by hand with another type).
    #[error("a {kind:?} value does not fit column type {column}")]
    Mismatch {
        /// The value's kind.
        kind: ValueKind,
        /// The column's type.
        column: String,
    },
}

/// A value ready for its column, after the checks both COPY formats share: what the text
/// and the binary encoders write.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Prepared<'a> {
    /// NULL.
    Null,
    /// A `boolean` column's value.
    Boolean(bool),
    /// Input syntax PostgreSQL reads as it is: a number's text (of a number column, or of a
    /// column of another type), or `true` / `false` for a column of another type.
    Literal(Cow<'a, str>),
    /// A string's contents (no NUL).
    Text(Cow<'a, str>),
    /// JSON text PostgreSQL's `jsonb` accepts.
    Json(&'a str),
}

/// Checks `raw` (of `kind`) against `column` and gives the value to write.
fn prepare<'a>(
    raw: &'a str,
    kind: ValueKind,
    column: &ColumnType,
) -> Result<Prepared<'a>, ValueError> {
    Ok(match (kind, column) {
        (ValueKind::Null, _) => Prepared::Null,
        (ValueKind::Boolean, ColumnType::Boolean) => Prepared::Boolean(raw.starts_with('t')),
        (ValueKind::Boolean, ColumnType::Other(_))
        | (ValueKind::Integer, ColumnType::BigInt | ColumnType::Numeric | ColumnType::Other(_)) => {
            Prepared::Literal(Cow::Borrowed(raw))
        }
        (ValueKind::Float, ColumnType::Double) => {
            Prepared::Literal(Cow::Borrowed(double_text(raw)))
        }
        (ValueKind::Float, ColumnType::Numeric) => {
            let value = raw
                .parse::<f64>()
                .ok()
                .filter(|value| value.is_finite())
                .ok_or(ValueError::OutOfRange)?;
            Prepared::Literal(Cow::Owned(exact_decimal(value)))
        }
        (ValueKind::Float, ColumnType::Other(_)) => {
            if is_integer_text(raw) {
                Prepared::Literal(Cow::Borrowed(raw))
            } else {
                let shortest = raw
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .ok_or(ValueError::OutOfRange)?;
                Prepared::Literal(Cow::Owned(shortest.to_string()))
            }
        }
        (ValueKind::String, ColumnType::Text | ColumnType::Other(_)) => {
            let contents = string_contents(raw).map_err(|error| match error {
                EncodeError::String(detail) => ValueError::Unreadable(detail),
                other => ValueError::Unreadable(other.to_string()),
            })?;
            if contents.contains('\0') {
                return Err(ValueError::Nul);
            }
            Prepared::Text(contents)
        }
        (_, ColumnType::Jsonb) | (ValueKind::Structure, ColumnType::Other(_)) => {
            if raw.contains("\\u") {
                if has_nul_escape(raw) {
                    return Err(ValueError::Nul);
                }
                // An escape PostgreSQL's JSON parser refuses too (a lone surrogate).
                serde_json::from_str::<serde_json::Value>(raw)
                    .map_err(|error| ValueError::Unreadable(error.to_string()))?;
            }
            Prepared::Json(raw)
        }
        _ => {
            return Err(ValueError::Mismatch {
                kind,
                column: column.sql().to_owned(),
            })
        }
    })
}

/// Appends the value `raw` (JSON text of kind `kind`, from [`raw_kind`]) as one COPY text
/// field of a column of type `column` (`\N` for null). Numbers keep their JSON text where
/// PostgreSQL reads the same value from it; a fraction or exponent going into `numeric` is
/// written as the double's shortest exact text (GDN keeps numbers as doubles). Objects, arrays
/// and every value of a `jsonb` column are the document's own JSON text.
pub fn encode_field(
    out: &mut Vec<u8>,
    raw: &str,
    kind: ValueKind,
    column: &ColumnType,
) -> Result<(), ValueError> {
    match prepare(raw, kind, column)? {
        Prepared::Null => out.extend_from_slice(b"\\N"),
        Prepared::Boolean(value) => out.push(if value { b't' } else { b'f' }),
        Prepared::Literal(text) => out.extend_from_slice(text.as_bytes()),
        Prepared::Text(Cow::Borrowed(text)) => {
            // Without JSON escapes the contents hold no control characters: nothing to escape.
            out.extend_from_slice(text.as_bytes())
        }
        Prepared::Text(Cow::Owned(text)) => push_escaped(out, text.as_bytes()),
        Prepared::Json(json) => push_escaped(out, json.as_bytes()),
    }
    Ok(())
}

/// [`encode_field`] as one field of binary COPY (length and bytes) into a column whose
/// [`ColumnType::binary`] form is known. `Ok(false)` when the value has no binary form this
/// module writes with certainty (a numeric with an exponent): the batch then goes as text.
pub fn encode_field_binary(
    out: &mut Vec<u8>,
    raw: &str,
    kind: ValueKind,
    column: &ColumnType,
) -> Result<bool, ValueError> {
    let prepared = prepare(raw, kind, column)?;
    if prepared == Prepared::Null {
        out.extend_from_slice(&(-1i32).to_be_bytes());
        return Ok(true);
    }
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    let written = match (prepared, column) {
        (Prepared::Boolean(value), ColumnType::Boolean) => {
            out.push(u8::from(value));
            true
        }
        (Prepared::Literal(text), ColumnType::BigInt) => match text.parse::<i64>() {
            Ok(value) => {
                out.extend_from_slice(&value.to_be_bytes());
                true
            }
            Err(_) => false,
        },
        (Prepared::Literal(text), ColumnType::Numeric) => numeric_binary(&text, out).is_some(),
        (Prepared::Text(text), ColumnType::Text) => {
            out.extend_from_slice(text.as_bytes());
            true
        }
        (Prepared::Json(json), ColumnType::Jsonb) => {
            out.push(1);
            out.extend_from_slice(json.as_bytes());
            true
        }
        _ => false,
    };
    let Ok(length) = i32::try_from(out.len() - at - 4) else {
        return Ok(false);
    };
    out[at..at + 4].copy_from_slice(&length.to_be_bytes());
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn raw_field(raw: &str, column: ColumnType) -> Result<String, ValueError> {
        let mut out = Vec::new();
        encode_field(&mut out, raw, raw_kind(raw)?, &column)
            .map(|()| String::from_utf8(out).unwrap())
    }

    fn inferred(values: &[Value]) -> Option<ColumnType> {
        let mut column: Option<ColumnType> = None;
        for value in values {
            let kind = raw_kind(&value.to_string()).unwrap();
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
        assert!(ColumnType::Double
            .widen_using("\"x\"", &ColumnType::Numeric)
            .starts_with("CASE WHEN \"x\" = 0 THEN 0::numeric ELSE sign("));
        assert_eq!(
            ColumnType::BigInt.widen_using("\"x\"", &ColumnType::Numeric),
            "\"x\"::numeric"
        );
        assert_eq!(
            ColumnType::Text.widen_using("\"x\"", &ColumnType::Jsonb),
            "to_jsonb(\"x\")"
        );
    }

    fn column_name(attribute: &str) -> String {
        column_candidates(attribute).next().unwrap().into_owned()
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
        assert_ne!(column_name(OVERFLOW_COLUMN), OVERFLOW_COLUMN);
        assert!(!column_name("").is_empty());
        assert!(!column_name("a\0b").contains('\0'));
        let accented = "é".repeat(40);
        assert!(column_name(&accented).len() <= 63);
    }

    #[test]
    fn every_candidate_is_a_distinct_name_postgresql_keeps() {
        for attribute in ["x", &"é".repeat(40), &"a".repeat(70), "x\0y", ""] {
            let names: Vec<String> = column_candidates(attribute)
                .take(12)
                .map(Cow::into_owned)
                .collect();
            let distinct: std::collections::HashSet<&String> = names.iter().collect();
            assert_eq!(distinct.len(), names.len(), "{names:?}");
            assert!(names
                .iter()
                .all(|name| !name.is_empty() && name.len() <= 63 && !name.contains('\0')));
        }
        // A name that is another's hashed column gets its own name; the other its next.
        let long = "attr_".to_owned() + &"x".repeat(80);
        let hashed = column_name(&long);
        assert_eq!(column_name(&hashed), hashed);
        let mut of_long = column_candidates(&long);
        assert_eq!(of_long.next().unwrap(), hashed);
        assert_eq!(of_long.next().unwrap(), format!("{}_2", &hashed[..61]));
    }

    #[test]
    fn values_are_written_in_copy_text() {
        let field = |value: Value, column: ColumnType| raw_field(&value.to_string(), column);
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

    #[test]
    fn numbers_are_read_from_their_text_as_serde_json_reads_them() {
        let kind = |raw: &str| raw_kind(raw).unwrap();
        for (raw, value) in [
            ("0", json!(0)),
            ("-0", serde_json::from_str::<Value>("-0").unwrap()),
            ("9223372036854775807", json!(i64::MAX)),
            ("-9223372036854775808", json!(i64::MIN)),
            ("9223372036854775808", json!(9_223_372_036_854_775_808u64)),
            ("1e2", json!(100.0)),
            ("1.0", json!(1.0)),
        ] {
            let expected = match &value {
                Value::Number(number) if number.is_i64() => ValueKind::Integer,
                _ => ValueKind::Float,
            };
            assert_eq!(kind(raw), expected, "{raw}");
        }
        assert_eq!(raw_kind("1e400"), Err(ValueError::OutOfRange));
        assert_eq!(raw_kind("-1e400"), Err(ValueError::OutOfRange));
        assert_eq!(
            kind("1e-400"),
            ValueKind::Float,
            "underflow is zero, as for serde_json"
        );
    }

    #[test]
    fn a_double_in_numeric_is_its_exact_value() {
        assert_eq!(exact_decimal(2f64.powi(53)), "9007199254740992");
        assert_eq!(exact_decimal(2f64.powi(63)), "9223372036854775808");
        assert_eq!(
            exact_decimal(1e308),
            "100000000000000001097906362944045541740492309677311846336810682903157585404911491537163328978494688899061249669721172515611590283743140088328307009198146046031271664502933027185697489699588559043338384466165001178426897626212945177628091195786707458122783970171784415105291802893207873272974885715430223118336"
        );
        assert_eq!(exact_decimal(-1.5), "-1.5");
        assert_eq!(exact_decimal(-0.0), "0");
        assert_eq!(
            exact_decimal(5e-324).len(),
            "0.".len() + 1074,
            "the smallest subnormal has 1,074 places"
        );
        for value in [
            0.1,
            123.456,
            1e-300,
            1.7976931348623157e308,
            2.2250738585072014e-308,
        ] {
            let text = exact_decimal(value);
            assert_eq!(text.parse::<f64>().unwrap(), value, "{text}");
        }
        // Widening a column does the same in SQL (checked against PostgreSQL in the tests).
        assert!(ColumnType::Double
            .widen_using("\"x\"", &ColumnType::Numeric)
            .contains("float8send(\"x\")"));
    }

    #[test]
    fn raw_values_keep_their_text_where_postgresql_reads_the_same_value() {
        assert_eq!(raw_field("1.50", ColumnType::Double).unwrap(), "1.50");
        assert_eq!(raw_field("1.50", ColumnType::Numeric).unwrap(), "1.5");
        assert_eq!(
            raw_field("0.1", ColumnType::Numeric).unwrap(),
            "0.1000000000000000055511151231257827021181583404541015625",
            "the double's exact value"
        );
        assert_eq!(
            raw_field("18446744073709551615", ColumnType::Numeric).unwrap(),
            "18446744073709551616",
            "a whole number beyond 64 signed bits is the double GDN keeps"
        );
        assert_eq!(raw_field("-0", ColumnType::Numeric).unwrap(), "0");
        assert_eq!(raw_field("1e-400", ColumnType::Double).unwrap(), "0");
        assert_eq!(raw_field("-1.5e-400", ColumnType::Double).unwrap(), "-0");
        assert_eq!(
            raw_field("0.0e-400", ColumnType::Double).unwrap(),
            "0.0e-400"
        );
        assert_eq!(
            raw_field("5e-324", ColumnType::Double).unwrap(),
            "5e-324",
            "subnormal"
        );
        assert_eq!(raw_field("false", ColumnType::Boolean).unwrap(), "f");
        assert_eq!(
            raw_field("{ \"a\" :\n [1.50] }", ColumnType::Jsonb).unwrap(),
            "{ \"a\" :\\n [1.50] }",
            "jsonb gets the document's own text"
        );
        assert_eq!(raw_field(r#""plain""#, ColumnType::Text).unwrap(), "plain");
        assert_eq!(
            raw_field(r#""tab\tcr\r""#, ColumnType::Text).unwrap(),
            "tab\\tcr\\r"
        );
    }

    #[test]
    fn nul_and_undecodable_escapes_are_errors_naming_the_reason() {
        assert_eq!(
            raw_field(r#""a\u0000""#, ColumnType::Text),
            Err(ValueError::Nul)
        );
        assert_eq!(
            raw_field(r#"{"a": "\u0000"}"#, ColumnType::Jsonb),
            Err(ValueError::Nul)
        );
        assert_eq!(
            raw_field(r#"{"a": "\\u0000"}"#, ColumnType::Jsonb).unwrap(),
            r#"{"a": "\\\\u0000"}"#,
            "an escaped backslash before u0000 is not a NUL"
        );
        assert_eq!(
            raw_field(r#"["\\\u0000"]"#, ColumnType::Jsonb),
            Err(ValueError::Nul),
            "a backslash, then the NUL escape"
        );
        assert!(matches!(
            raw_field(r#""\ud800""#, ColumnType::Text),
            Err(ValueError::Unreadable(_))
        ));
        assert!(matches!(
            raw_field(r#"["\ud800"]"#, ColumnType::Jsonb),
            Err(ValueError::Unreadable(_))
        ));
        assert_eq!(
            raw_field("true", ColumnType::BigInt),
            Err(ValueError::Mismatch {
                kind: ValueKind::Boolean,
                column: "bigint".into()
            })
        );
    }
}
