//! PostgreSQL binary values (COPY binary / `*_send` formats) → JSON, with exact rules.
//!
//! Each column gets a [`TypeCodec`] once, from the catalog (domains resolved to their base
//! type, enums and other text-like types as `Text`, types without a binary decoder selected as
//! `::text` by the query and decoded as `Text`). [`decode`] turns one field into a [`Value`];
//! [`Value::write_json`] appends it to a document. The rules, and where they differ from the
//! old source (which lost data), are in `docs/values.md`; in short:
//!
//! * integers → JSON numbers; `float4/8` → shortest round-trip numbers, `NaN`/`±Infinity` →
//!   strings; `numeric` → exact digits, as a number or a string per column (`NumericOut`),
//!   `NaN`/`±Infinity` always strings;
//! * `date`/`timestamp[tz]` → ISO 8601 with `+00:00` (`timestamptz` is stored in UTC), years
//!   outside 0000–9999 in ISO 8601's expanded form (`-0043-03-15…` for 44 BC, `+10000-…`),
//!   `±infinity` → the strings `"infinity"`/`"-infinity"`; `time` keeps `24:00:00`;
//!   `timetz` keeps its offset; `interval` → ISO 8601 duration;
//! * `json`/`jsonb` → embedded JSON; `hstore` → object; arrays → nested arrays (of any
//!   element type: elements without a binary decoder, such as ranges, are read from the
//!   array's text form, see [`TypeCodec::TextForm`]);
//! * composite types → an object keyed by attribute name, in attribute order, each attribute
//!   converted by these same rules (binary form: count, then per attribute type OID, length,
//!   bytes; the count and OIDs are checked against the catalog's description, so a type
//!   altered after pgferry read it is an error, never a misaligned object);
//! * `bit(1)` → boolean, other bit strings → `"0101"`; `bytea` → `"\\x…"` hex; `uuid`, `inet`,
//!   `cidr`, `macaddr[8]` → their canonical text; `money` → exact decimal string.

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::decode::civil::civil_from_days;
use crate::decode::json_out::write_string;

/// How a `numeric` column is written, stable for all its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumericOut {
    /// A JSON number literal with every digit (for `numeric(p,s)` with p ≤ 15 in `auto`).
    Number,
    /// A JSON string with every digit (wider or unconstrained numeric in `auto`).
    String,
}

/// The decoder for one column's binary values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeCodec {
    /// `boolean`.
    Bool,
    /// `smallint`.
    Int2,
    /// `integer`.
    Int4,
    /// `bigint`.
    Int8,
    /// `oid` and other unsigned 32-bit identifiers.
    Oid,
    /// `real`.
    Float4,
    /// `double precision`.
    Float8,
    /// `numeric`, written per [`NumericOut`].
    Numeric(NumericOut),
    /// Text-like: `text`, `varchar`, `char(n)`, `name`, `citext`, enums, `xml`, and `::text` casts.
    Text,
    /// A type without a decoder here whose arrays separate elements with another delimiter
    /// than a comma (`box`: `;`): its text, as [`TypeCodec::Text`].
    TextDelimited(char),
    /// The single-byte `"char"` type.
    Char,
    /// `bytea`.
    Bytea,
    /// `uuid`.
    Uuid,
    /// `json`.
    Json,
    /// `jsonb`.
    Jsonb,
    /// `date`.
    Date,
    /// `time without time zone`.
    Time,
    /// `time with time zone`.
    TimeTz,
    /// `timestamp without time zone`.
    Timestamp,
    /// `timestamp with time zone`.
    TimestampTz,
    /// `interval`.
    Interval,
    /// `money` with `frac_digits` decimals (2 for most `lc_monetary` settings).
    Money {
        /// Decimal places of the currency.
        frac_digits: u32,
    },
    /// `inet` and `cidr`.
    Inet,
    /// `macaddr`.
    MacAddr,
    /// `macaddr8`.
    MacAddr8,
    /// `bit(n)`; `bit(1)` becomes a boolean.
    Bit {
        /// Whether the column is `bit(1)`.
        single: bool,
    },
    /// `bit varying`.
    VarBit,
    /// `hstore` (extension type).
    Hstore,
    /// An array of the element codec (any number of dimensions).
    Array(Box<TypeCodec>),
    /// A composite (row) type, as the catalog described it: becomes an object.
    Composite(Box<CompositeCodec>),
    /// A value selected as its text output (`::text`) because some part of its type has no
    /// binary decoder here (an array of ranges, a composite with a `point` attribute): the
    /// field holds that text, read with the text rules of the inner codec, so the value keeps
    /// its structure instead of becoming one string.
    TextForm(Box<TypeCodec>),
}

/// A composite type's description, read from the catalog where column types are read
/// (`pg_attribute` of `pg_type.typrelid`), so decoding needs no I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompositeCodec {
    /// The type's name (`pg_type.typname`), for messages.
    pub type_name: String,
    /// Its attributes in attribute order, dropped attributes left out (as values carry them).
    pub attributes: Vec<CompositeAttribute>,
}

/// One attribute of a composite type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompositeAttribute {
    /// `pg_attribute.attname`: the object key.
    pub name: String,
    /// The declared type's OID (a domain's own OID), which the binary form carries to check
    /// the value has the shape the catalog described.
    pub type_oid: u32,
    /// How its values decode.
    pub codec: TypeCodec,
}

/// A decoded value, borrowing from the field where it can.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// SQL NULL.
    Null,
    /// A boolean.
    Bool(bool),
    /// A 64-bit integer.
    Int(i64),
    /// A finite double.
    Float(f64),
    /// An exact decimal literal written as a JSON number.
    Number(String),
    /// A string.
    Str(Cow<'a, str>),
    /// JSON text from `json`/`jsonb`, already validated.
    RawJson(Cow<'a, str>),
    /// An array.
    Array(Vec<Value<'a>>),
    /// An object with string keys, in order.
    Object(Vec<(Cow<'a, str>, Value<'a>)>),
}

/// Why a binary value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {type_name} value: {detail}")]
pub struct ValueError {
    /// The PostgreSQL type being decoded.
    pub type_name: &'static str,
    /// What was wrong.
    pub detail: String,
    /// Whether the value has another shape than the catalog's description of its type (a
    /// composite altered with `ALTER TYPE` after pgferry read it), rather than bad bytes.
    pub type_changed: bool,
}

pub(crate) fn bad(type_name: &'static str, detail: impl Into<String>) -> ValueError {
    ValueError {
        type_name,
        detail: detail.into(),
        type_changed: false,
    }
}

/// The error for a composite value whose attributes are not those the catalog described.
pub(crate) fn composite_changed(type_name: &str, detail: impl std::fmt::Display) -> ValueError {
    ValueError {
        type_name: "composite",
        detail: format!(
            "type {type_name}: {detail}; the type was altered (ALTER TYPE) after pgferry read the catalog, so its attributes cannot be named safely\nHINT: restart the run to read the type again; changes made before the ALTER TYPE need a fresh copy of the table"
        ),
        type_changed: true,
    }
}

/// An attribute's decoding error, with the attribute named.
pub(crate) fn in_attribute(
    composite: &CompositeCodec,
    attribute: &CompositeAttribute,
    error: ValueError,
) -> ValueError {
    ValueError {
        type_name: error.type_name,
        detail: format!(
            "{} (attribute {:?} of {})",
            error.detail, attribute.name, composite.type_name
        ),
        type_changed: error.type_changed,
    }
}

fn fixed<const N: usize>(raw: &[u8], type_name: &'static str) -> Result<[u8; N], ValueError> {
    raw.try_into()
        .map_err(|_| bad(type_name, format!("{} bytes, expected {N}", raw.len())))
}

/// A cursor over a binary value with checked reads.
struct Reader<'a> {
    raw: &'a [u8],
    at: usize,
    type_name: &'static str,
}

impl<'a> Reader<'a> {
    fn new(raw: &'a [u8], type_name: &'static str) -> Reader<'a> {
        Reader {
            raw,
            at: 0,
            type_name,
        }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], ValueError> {
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.raw.len());
        let end = end.ok_or_else(|| bad(self.type_name, "value is truncated"))?;
        let slice = &self.raw[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn i16(&mut self) -> Result<i16, ValueError> {
        Ok(i16::from_be_bytes(fixed(self.take(2)?, self.type_name)?))
    }

    fn u16(&mut self) -> Result<u16, ValueError> {
        Ok(u16::from_be_bytes(fixed(self.take(2)?, self.type_name)?))
    }

    fn i32(&mut self) -> Result<i32, ValueError> {
        Ok(i32::from_be_bytes(fixed(self.take(4)?, self.type_name)?))
    }

    fn u8(&mut self) -> Result<u8, ValueError> {
        Ok(self.take(1)?[0])
    }

    fn done(&self) -> Result<(), ValueError> {
        if self.at == self.raw.len() {
            Ok(())
        } else {
            Err(bad(
                self.type_name,
                format!("{} unexpected trailing bytes", self.raw.len() - self.at),
            ))
        }
    }
}

fn utf8<'a>(raw: &'a [u8], type_name: &'static str) -> Result<&'a str, ValueError> {
    std::str::from_utf8(raw).map_err(|error| bad(type_name, format!("not UTF-8: {error}")))
}

/// Decodes one non-NULL field with `codec`.
pub fn decode<'a>(codec: &TypeCodec, raw: &'a [u8]) -> Result<Value<'a>, ValueError> {
    Ok(match codec {
        TypeCodec::Bool => match fixed::<1>(raw, "boolean")?[0] {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            other => return Err(bad("boolean", format!("byte {other}"))),
        },
        TypeCodec::Int2 => Value::Int(i16::from_be_bytes(fixed(raw, "smallint")?).into()),
        TypeCodec::Int4 => Value::Int(i32::from_be_bytes(fixed(raw, "integer")?).into()),
        TypeCodec::Int8 => Value::Int(i64::from_be_bytes(fixed(raw, "bigint")?)),
        TypeCodec::Oid => Value::Int(u32::from_be_bytes(fixed(raw, "oid")?).into()),
        TypeCodec::Float4 => float(f64::from(f32::from_be_bytes(fixed(raw, "real")?)), true),
        TypeCodec::Float8 => float(f64::from_be_bytes(fixed(raw, "double precision")?), false),
        TypeCodec::Numeric(out) => numeric(raw, *out)?,
        TypeCodec::Text | TypeCodec::TextDelimited(_) => {
            Value::Str(Cow::Borrowed(utf8(raw, "text")?))
        }
        TypeCodec::Char => {
            let byte = fixed::<1>(raw, "\"char\"").or_else(|_| {
                if raw.is_empty() {
                    Ok([0])
                } else {
                    Err(bad("\"char\"", "more than one byte"))
                }
            })?[0];
            Value::Str(Cow::Owned(match byte {
                0 => String::new(),
                1..=127 => char::from(byte).to_string(),
                _ => format!("\\{byte:03o}"),
            }))
        }
        TypeCodec::Bytea => {
            let mut text = String::with_capacity(2 + raw.len() * 2);
            text.push_str("\\x");
            for byte in raw {
                let _ = write!(text, "{byte:02x}");
            }
            Value::Str(Cow::Owned(text))
        }
        TypeCodec::Uuid => {
            let bytes = fixed::<16>(raw, "uuid")?;
            let mut text = String::with_capacity(36);
            for (index, byte) in bytes.iter().enumerate() {
                if matches!(index, 4 | 6 | 8 | 10) {
                    text.push('-');
                }
                let _ = write!(text, "{byte:02x}");
            }
            Value::Str(Cow::Owned(text))
        }
        TypeCodec::Json => Value::RawJson(Cow::Borrowed(json_text(raw, "json")?)),
        TypeCodec::Jsonb => match raw.split_first() {
            Some((1, text)) => Value::RawJson(Cow::Borrowed(json_text(text, "jsonb")?)),
            Some((version, _)) => {
                return Err(bad("jsonb", format!("unknown jsonb version {version}")))
            }
            None => return Err(bad("jsonb", "empty value")),
        },
        TypeCodec::Date => date(i32::from_be_bytes(fixed(raw, "date")?)),
        TypeCodec::Time => Value::Str(Cow::Owned(time_of_day(
            i64::from_be_bytes(fixed(raw, "time")?),
            "time",
        )?)),
        TypeCodec::TimeTz => {
            let mut reader = Reader::new(raw, "time with time zone");
            let micros = i64::from_be_bytes(fixed(reader.take(8)?, "time with time zone")?);
            let zone_west = reader.i32()?;
            reader.done()?;
            let mut text = time_of_day(micros, "time with time zone")?;
            push_offset(&mut text, -i64::from(zone_west));
            Value::Str(Cow::Owned(text))
        }
        TypeCodec::Timestamp | TypeCodec::TimestampTz => {
            timestamp(i64::from_be_bytes(fixed(raw, "timestamp")?))
        }
        TypeCodec::Interval => Value::Str(Cow::Owned(interval(raw)?)),
        TypeCodec::Money { frac_digits } => {
            let cents = i64::from_be_bytes(fixed(raw, "money")?);
            Value::Str(Cow::Owned(scaled_decimal(cents, *frac_digits)))
        }
        TypeCodec::Inet => Value::Str(Cow::Owned(inet(raw)?)),
        TypeCodec::MacAddr => Value::Str(Cow::Owned(mac(&fixed::<6>(raw, "macaddr")?))),
        TypeCodec::MacAddr8 => Value::Str(Cow::Owned(mac(&fixed::<8>(raw, "macaddr8")?))),
        TypeCodec::Bit { single } => {
            let bits = bit_string(raw, "bit")?;
            if *single && bits.len() == 1 {
                Value::Bool(bits == "1")
            } else {
                Value::Str(Cow::Owned(bits))
            }
        }
        TypeCodec::VarBit => Value::Str(Cow::Owned(bit_string(raw, "bit varying")?)),
        TypeCodec::Hstore => hstore(raw)?,
        TypeCodec::Array(element) => array(element, raw)?,
        TypeCodec::Composite(composite) => record(composite, raw)?,
        TypeCodec::TextForm(inner) => {
            crate::decode::text_value::from_text(inner, utf8(raw, "text")?)?
        }
    })
}

pub(crate) fn float(value: f64, single: bool) -> Value<'static> {
    if value.is_nan() {
        Value::Str(Cow::Borrowed("NaN"))
    } else if value == f64::INFINITY {
        Value::Str(Cow::Borrowed("Infinity"))
    } else if value == f64::NEG_INFINITY {
        Value::Str(Cow::Borrowed("-Infinity"))
    } else if single {
        // Shortest text that round-trips the f32, as PostgreSQL prints it.
        Value::Number((value as f32).to_string())
    } else {
        Value::Float(value)
    }
}

/// Shortest round-trip text of a finite double, as a JSON number.
fn format_float(value: f64) -> String {
    serde_json::Number::from_f64(value)
        .map(|number| number.to_string())
        .unwrap_or_else(|| "null".into())
}

fn json_text<'a>(raw: &'a [u8], type_name: &'static str) -> Result<&'a str, ValueError> {
    let text = utf8(raw, type_name)?;
    serde_json::from_str::<&serde_json::value::RawValue>(text)
        .map_err(|error| bad(type_name, format!("not valid JSON: {error}")))?;
    Ok(text)
}

/// Decodes `numeric`'s binary form (base-10000 digits) into exact decimal text.
fn numeric(raw: &[u8], out: NumericOut) -> Result<Value<'static>, ValueError> {
    const NAME: &str = "numeric";
    let mut reader = Reader::new(raw, NAME);
    let ndigits = reader.i16()?;
    let weight = reader.i16()?;
    let sign = reader.u16()?;
    let dscale = reader.u16()?;
    let special = match sign {
        0x0000 | 0x4000 => None,
        0xC000 => Some("NaN"),
        0xD000 => Some("Infinity"),
        0xF000 => Some("-Infinity"),
        other => return Err(bad(NAME, format!("unknown sign word {other:#06x}"))),
    };
    let ndigits = usize::try_from(ndigits).map_err(|_| bad(NAME, "negative digit count"))?;
    let mut digits = Vec::with_capacity(ndigits);
    for _ in 0..ndigits {
        let digit = reader.i16()?;
        if !(0..10_000).contains(&digit) {
            return Err(bad(NAME, format!("digit group {digit} out of range")));
        }
        digits.push(digit as u16);
    }
    reader.done()?;
    if let Some(text) = special {
        return Ok(Value::Str(Cow::Borrowed(text)));
    }
    let dscale = usize::from(dscale & 0x3FFF);
    let weight = i32::from(weight);
    let group = |index: i32| -> u16 {
        usize::try_from(index)
            .ok()
            .and_then(|index| digits.get(index).copied())
            .unwrap_or(0)
    };
    let mut text = String::with_capacity(ndigits * 4 + dscale + 3);
    if sign == 0x4000 && digits.iter().any(|digit| *digit != 0) {
        text.push('-');
    }
    // The integer part. PostgreSQL sends normalized digits (no leading zero groups), but a
    // non-normalized value must still print as a valid number: leading zeros are dropped.
    let integer_start = text.len();
    for position in 0..=weight {
        let _ = write!(text, "{:04}", group(position));
    }
    let leading_zeros = text[integer_start..]
        .bytes()
        .take_while(|byte| *byte == b'0')
        .count();
    text.replace_range(integer_start..integer_start + leading_zeros, "");
    if text.len() == integer_start {
        text.push('0');
    }
    if dscale > 0 {
        text.push('.');
        let mut written = 0;
        let mut position = weight + 1;
        while written < dscale {
            let chunk = format!("{:04}", group(position));
            let take = (dscale - written).min(4);
            text.push_str(&chunk[..take]);
            written += take;
            position += 1;
        }
    }
    Ok(match out {
        NumericOut::Number => Value::Number(text),
        NumericOut::String => Value::Str(Cow::Owned(text)),
    })
}

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;
/// Days from 1970-01-01 to 2000-01-01, PostgreSQL's epoch.
const PG_EPOCH_DAYS: i64 = 10_957;

/// Appends `value` (0 ≤ value < 10^width) zero-padded to `width` digits, without `fmt`.
pub(crate) fn push_padded(text: &mut String, value: i64, width: u32) {
    let mut divisor = 10i64.pow(width.saturating_sub(1));
    while divisor > 0 {
        text.push(char::from(b'0' + (value / divisor % 10) as u8));
        divisor /= 10;
    }
}

pub(crate) fn push_year(text: &mut String, year: i64) {
    if (0..=9999).contains(&year) {
        push_padded(text, year, 4);
    } else if year > 9999 {
        let _ = write!(text, "+{year}");
    } else {
        let _ = write!(text, "-{:04}", -year);
    }
}

fn date(days: i32) -> Value<'static> {
    match days {
        i32::MAX => Value::Str(Cow::Borrowed("infinity")),
        i32::MIN => Value::Str(Cow::Borrowed("-infinity")),
        days => {
            let (year, month, day) = civil_from_days(i64::from(days) + PG_EPOCH_DAYS);
            let mut text = String::with_capacity(26);
            push_year(&mut text, year);
            text.push('-');
            push_padded(&mut text, i64::from(month), 2);
            text.push('-');
            push_padded(&mut text, i64::from(day), 2);
            text.push_str("T00:00:00+00:00");
            Value::Str(Cow::Owned(text))
        }
    }
}

fn push_clock(text: &mut String, micros_of_day: i64) {
    let seconds = micros_of_day / MICROS_PER_SECOND;
    let fraction = micros_of_day % MICROS_PER_SECOND;
    push_padded(text, seconds / 3600, 2);
    text.push(':');
    push_padded(text, seconds / 60 % 60, 2);
    text.push(':');
    push_padded(text, seconds % 60, 2);
    if fraction != 0 {
        text.push('.');
        push_padded(text, fraction, 6);
    }
}

fn time_of_day(micros: i64, type_name: &'static str) -> Result<String, ValueError> {
    if !(0..=MICROS_PER_DAY).contains(&micros) {
        return Err(bad(
            type_name,
            format!("{micros} µs is outside 00:00:00–24:00:00"),
        ));
    }
    let mut text = String::with_capacity(21);
    push_clock(&mut text, micros);
    Ok(text)
}

pub(crate) fn push_offset(text: &mut String, offset_seconds: i64) {
    let sign = if offset_seconds < 0 { '-' } else { '+' };
    let total = offset_seconds.abs();
    let _ = write!(text, "{sign}{:02}:{:02}", total / 3600, total / 60 % 60);
    if total % 60 != 0 {
        let _ = write!(text, ":{:02}", total % 60);
    }
}

fn timestamp(micros: i64) -> Value<'static> {
    match micros {
        i64::MAX => Value::Str(Cow::Borrowed("infinity")),
        i64::MIN => Value::Str(Cow::Borrowed("-infinity")),
        micros => {
            let days = micros.div_euclid(MICROS_PER_DAY);
            let of_day = micros.rem_euclid(MICROS_PER_DAY);
            let (year, month, day) = civil_from_days(days + PG_EPOCH_DAYS);
            let mut text = String::with_capacity(32);
            push_year(&mut text, year);
            text.push('-');
            push_padded(&mut text, i64::from(month), 2);
            text.push('-');
            push_padded(&mut text, i64::from(day), 2);
            text.push('T');
            push_clock(&mut text, of_day);
            text.push_str("+00:00");
            Value::Str(Cow::Owned(text))
        }
    }
}

/// `interval` as an ISO 8601 duration, as PostgreSQL's `IntervalStyle = iso_8601` prints it.
fn interval(raw: &[u8]) -> Result<String, ValueError> {
    let mut reader = Reader::new(raw, "interval");
    let micros = i64::from_be_bytes(fixed(reader.take(8)?, "interval")?);
    let days = reader.i32()?;
    let months = reader.i32()?;
    reader.done()?;
    if micros == i64::MAX && days == i32::MAX && months == i32::MAX {
        return Ok("infinity".into());
    }
    if micros == i64::MIN && days == i32::MIN && months == i32::MIN {
        return Ok("-infinity".into());
    }
    if micros == 0 && days == 0 && months == 0 {
        return Ok("PT0S".into());
    }
    let mut text = String::from("P");
    let (years, months) = (months / 12, months % 12);
    for (amount, unit) in [
        (i64::from(years), 'Y'),
        (i64::from(months), 'M'),
        (i64::from(days), 'D'),
    ] {
        if amount != 0 {
            let _ = write!(text, "{amount}{unit}");
        }
    }
    if micros != 0 {
        text.push('T');
        let hours = micros / (3600 * MICROS_PER_SECOND);
        let minutes = micros / (60 * MICROS_PER_SECOND) % 60;
        let sub_minute = micros % (60 * MICROS_PER_SECOND);
        if hours != 0 {
            let _ = write!(text, "{hours}H");
        }
        if minutes != 0 {
            let _ = write!(text, "{minutes}M");
        }
        if sub_minute != 0 {
            let sign = if sub_minute < 0 { "-" } else { "" };
            let abs = sub_minute.abs();
            let _ = write!(text, "{sign}{}", abs / MICROS_PER_SECOND);
            let fraction = abs % MICROS_PER_SECOND;
            if fraction != 0 {
                let digits = format!("{fraction:06}");
                let _ = write!(text, ".{}", digits.trim_end_matches('0'));
            }
            text.push('S');
        }
    }
    Ok(text)
}

fn scaled_decimal(value: i64, scale: u32) -> String {
    let negative = value < 0;
    let digits = value.unsigned_abs().to_string();
    let scale = scale as usize;
    let mut text = String::with_capacity(digits.len() + 3);
    if negative {
        text.push('-');
    }
    if scale == 0 {
        text.push_str(&digits);
    } else if digits.len() > scale {
        text.push_str(&digits[..digits.len() - scale]);
        text.push('.');
        text.push_str(&digits[digits.len() - scale..]);
    } else {
        text.push_str("0.");
        text.push_str(&"0".repeat(scale - digits.len()));
        text.push_str(&digits);
    }
    text
}

fn inet(raw: &[u8]) -> Result<String, ValueError> {
    const NAME: &str = "inet";
    let mut reader = Reader::new(raw, NAME);
    let family = reader.u8()?;
    let bits = reader.u8()?;
    let is_cidr = reader.u8()? != 0;
    let length = reader.u8()?;
    let address = reader.take(usize::from(length))?;
    reader.done()?;
    let (text, max_bits) = match (family, address.len()) {
        (2, 4) => (
            std::net::Ipv4Addr::from(fixed::<4>(address, NAME)?).to_string(),
            32,
        ),
        (3, 16) => (
            std::net::Ipv6Addr::from(fixed::<16>(address, NAME)?).to_string(),
            128,
        ),
        _ => {
            return Err(bad(
                NAME,
                format!("family {family} with {} address bytes", address.len()),
            ))
        }
    };
    if bits > max_bits {
        return Err(bad(
            NAME,
            format!("netmask /{bits} longer than the address"),
        ));
    }
    Ok(if is_cidr || bits != max_bits {
        format!("{text}/{bits}")
    } else {
        text
    })
}

fn mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn bit_string(raw: &[u8], type_name: &'static str) -> Result<String, ValueError> {
    let mut reader = Reader::new(raw, type_name);
    let bits = usize::try_from(reader.i32()?).map_err(|_| bad(type_name, "negative bit length"))?;
    let bytes = reader.take(bits.div_ceil(8))?;
    reader.done()?;
    Ok((0..bits)
        .map(|bit| {
            if bytes[bit / 8] & (0x80 >> (bit % 8)) != 0 {
                '1'
            } else {
                '0'
            }
        })
        .collect())
}

fn hstore(raw: &[u8]) -> Result<Value<'_>, ValueError> {
    const NAME: &str = "hstore";
    let mut reader = Reader::new(raw, NAME);
    let count = usize::try_from(reader.i32()?).map_err(|_| bad(NAME, "negative pair count"))?;
    let mut pairs = Vec::with_capacity(count.min(raw.len() / 8));
    for _ in 0..count {
        let key_len =
            usize::try_from(reader.i32()?).map_err(|_| bad(NAME, "NULL or negative key length"))?;
        let key = utf8(reader.take(key_len)?, NAME)?;
        let value_len = reader.i32()?;
        let value = if value_len == -1 {
            Value::Null
        } else {
            let len = usize::try_from(value_len).map_err(|_| bad(NAME, "negative value length"))?;
            Value::Str(Cow::Borrowed(utf8(reader.take(len)?, NAME)?))
        };
        pairs.push((Cow::Borrowed(key), value));
    }
    reader.done()?;
    Ok(Value::Object(pairs))
}

fn array<'a>(element: &TypeCodec, raw: &'a [u8]) -> Result<Value<'a>, ValueError> {
    const NAME: &str = "array";
    let mut reader = Reader::new(raw, NAME);
    let ndim = usize::try_from(reader.i32()?).map_err(|_| bad(NAME, "negative dimension count"))?;
    if ndim > 6 {
        return Err(bad(
            NAME,
            format!("{ndim} dimensions, PostgreSQL allows at most 6"),
        ));
    }
    let _has_nulls = reader.i32()?;
    let _element_oid = reader.i32()?;
    let mut dims = Vec::with_capacity(ndim);
    for _ in 0..ndim {
        let size =
            usize::try_from(reader.i32()?).map_err(|_| bad(NAME, "negative dimension size"))?;
        let _lower_bound = reader.i32()?;
        dims.push(size);
    }
    if ndim == 0 {
        reader.done()?;
        return Ok(Value::Array(Vec::new()));
    }
    let total = dims
        .iter()
        .try_fold(1usize, |acc, size| acc.checked_mul(*size));
    let total = total
        .filter(|total| *total <= raw.len() / 4 + 1)
        .ok_or_else(|| bad(NAME, "dimensions larger than the value"))?;
    // PostgreSQL sends an empty array as zero dimensions. A dimension of size 0 would make
    // `total` 0 and let the others be any size, each then allocated when nesting; with
    // `total` > 0 every dimension is at most `total`, so nesting is bounded by the value.
    if total == 0 {
        return Err(bad(NAME, "a dimension of size 0"));
    }
    let mut flat = Vec::with_capacity(total);
    for _ in 0..total {
        let len = reader.i32()?;
        if len == -1 {
            flat.push(Value::Null);
        } else {
            let len = usize::try_from(len).map_err(|_| bad(NAME, "negative element length"))?;
            flat.push(decode(element, reader.take(len)?)?);
        }
    }
    reader.done()?;
    Ok(nest(&dims, &mut flat.into_iter()))
}

/// `record_send`'s form: Int32 attribute count, then per attribute its type OID, an Int32
/// length (-1 for NULL) and that many bytes of the attribute's own binary form.
fn record<'a>(composite: &CompositeCodec, raw: &'a [u8]) -> Result<Value<'a>, ValueError> {
    const NAME: &str = "composite";
    let mut reader = Reader::new(raw, NAME);
    let count = reader.i32()?;
    if usize::try_from(count).ok() != Some(composite.attributes.len()) {
        return Err(composite_changed(
            &composite.type_name,
            format_args!(
                "the value has {count} attributes, the catalog {}",
                composite.attributes.len()
            ),
        ));
    }
    let mut pairs = Vec::with_capacity(composite.attributes.len());
    for attribute in &composite.attributes {
        let oid = u32::from_be_bytes(fixed(reader.take(4)?, NAME)?);
        if oid != attribute.type_oid {
            return Err(composite_changed(
                &composite.type_name,
                format_args!(
                    "attribute {:?} has type OID {oid} in the value, {} in the catalog",
                    attribute.name, attribute.type_oid
                ),
            ));
        }
        let len = reader.i32()?;
        let value = if len == -1 {
            Value::Null
        } else {
            let len = usize::try_from(len).map_err(|_| bad(NAME, "negative attribute length"))?;
            decode(&attribute.codec, reader.take(len)?)
                .map_err(|error| in_attribute(composite, attribute, error))?
        };
        pairs.push((Cow::Owned(attribute.name.clone()), value));
    }
    reader.done()?;
    Ok(Value::Object(pairs))
}

fn nest<'a>(dims: &[usize], flat: &mut impl Iterator<Item = Value<'a>>) -> Value<'a> {
    match dims.split_first() {
        Some((size, [])) => Value::Array(flat.take(*size).collect()),
        Some((size, rest)) => Value::Array((0..*size).map(|_| nest(rest, flat)).collect()),
        None => Value::Array(Vec::new()),
    }
}

impl Value<'_> {
    /// Appends this value as JSON text.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(true) => out.extend_from_slice(b"true"),
            Value::Bool(false) => out.extend_from_slice(b"false"),
            Value::Int(value) => {
                out.extend_from_slice(itoa::Buffer::new().format(*value).as_bytes());
            }
            Value::Float(value) => out.extend_from_slice(format_float(*value).as_bytes()),
            Value::Number(text) => out.extend_from_slice(text.as_bytes()),
            Value::Str(text) => write_string(text, out),
            Value::RawJson(text) => out.extend_from_slice(text.as_bytes()),
            Value::Array(items) => {
                out.push(b'[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    item.write_json(out);
                }
                out.push(b']');
            }
            Value::Object(pairs) => {
                out.push(b'{');
                for (index, (key, value)) in pairs.iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    write_string(key, out);
                    out.push(b':');
                    value.write_json(out);
                }
                out.push(b'}');
            }
        }
    }

    /// This value as JSON text.
    pub fn to_json_string(&self) -> String {
        let mut out = Vec::new();
        self.write_json(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// The text a key column contributes to a document key: strings as they are, numbers as
    /// their literal, anything else as its JSON text.
    pub fn key_text(&self) -> Cow<'_, str> {
        match self {
            Value::Str(text) => Cow::Borrowed(text),
            Value::Number(text) => Cow::Borrowed(text),
            Value::Int(value) => Cow::Owned(value.to_string()),
            Value::Bool(value) => Cow::Borrowed(if *value { "true" } else { "false" }),
            other => Cow::Owned(other.to_json_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(codec: &TypeCodec, raw: &[u8]) -> String {
        decode(codec, raw).unwrap().to_json_string()
    }

    #[test]
    fn an_array_with_an_empty_dimension_is_refused_without_allocating_the_others() {
        // Found by fuzzing: dimensions [385875968, 0] hold no element, so the size check
        // passed, and nesting then allocated 385,875,968 empty sub-arrays (18 GB). PostgreSQL
        // sends an empty array as zero dimensions, never as a dimension of size 0.
        let codec = TypeCodec::Array(Box::new(TypeCodec::Int4));
        for dims in [[3i32, 0], [0x1701_0000, 0], [0, 5]] {
            let mut raw = Vec::new();
            for word in [2i32, 0, 23] {
                raw.extend_from_slice(&word.to_be_bytes());
            }
            for size in dims {
                raw.extend_from_slice(&size.to_be_bytes());
                raw.extend_from_slice(&1i32.to_be_bytes());
            }
            assert!(decode(&codec, &raw).is_err(), "{dims:?}");
        }
    }

    fn numeric_bytes(weight: i16, sign: u16, dscale: u16, digits: &[i16]) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(digits.len() as i16).to_be_bytes());
        raw.extend_from_slice(&weight.to_be_bytes());
        raw.extend_from_slice(&sign.to_be_bytes());
        raw.extend_from_slice(&dscale.to_be_bytes());
        for digit in digits {
            raw.extend_from_slice(&digit.to_be_bytes());
        }
        raw
    }

    #[test]
    fn integers_floats_and_booleans() {
        assert_eq!(json(&TypeCodec::Int2, &(-2i16).to_be_bytes()), "-2");
        assert_eq!(
            json(&TypeCodec::Int4, &i32::MAX.to_be_bytes()),
            "2147483647"
        );
        assert_eq!(
            json(&TypeCodec::Int8, &i64::MIN.to_be_bytes()),
            "-9223372036854775808"
        );
        assert_eq!(json(&TypeCodec::Oid, &u32::MAX.to_be_bytes()), "4294967295");
        assert_eq!(json(&TypeCodec::Float4, &0.1f32.to_be_bytes()), "0.1");
        assert_eq!(json(&TypeCodec::Float8, &0.1f64.to_be_bytes()), "0.1");
        assert_eq!(json(&TypeCodec::Float8, &1e300f64.to_be_bytes()), "1e+300");
        assert_eq!(json(&TypeCodec::Float8, &f64::NAN.to_be_bytes()), "\"NaN\"");
        assert_eq!(
            json(&TypeCodec::Float4, &f32::NEG_INFINITY.to_be_bytes()),
            "\"-Infinity\""
        );
        assert_eq!(json(&TypeCodec::Bool, &[1]), "true");
        assert!(decode(&TypeCodec::Bool, &[2]).is_err());
        assert!(decode(&TypeCodec::Int4, &[0, 0, 1]).is_err());
    }

    #[test]
    fn numeric_keeps_every_digit() {
        let number = TypeCodec::Numeric(NumericOut::Number);
        let string = TypeCodec::Numeric(NumericOut::String);
        assert_eq!(json(&number, &numeric_bytes(0, 0, 0, &[])), "0");
        assert_eq!(json(&number, &numeric_bytes(0, 0, 2, &[])), "0.00");
        assert_eq!(
            json(&number, &numeric_bytes(0, 0, 4, &[1234, 5600])),
            "1234.5600"
        );
        assert_eq!(
            json(&number, &numeric_bytes(-1, 0x4000, 4, &[12])),
            "-0.0012"
        );
        assert_eq!(
            json(&number, &numeric_bytes(5, 0, 0, &[1])),
            "100000000000000000000"
        );
        assert_eq!(
            json(&number, &numeric_bytes(1, 0, 3, &[0, 2345, 6780])),
            "2345.678",
            "a leading zero group (never sent by PostgreSQL) still prints a valid number"
        );
        assert_eq!(
            json(&number, &numeric_bytes(0, 0, 10, &[1, 5000])),
            "1.5000000000"
        );
        // 38 digits: 12345678901234567890123456789012345678
        let digits = [12, 3456, 7890, 1234, 5678, 9012, 3456, 7890, 1234, 5678];
        assert_eq!(
            json(&string, &numeric_bytes(9, 0, 0, &digits)),
            "\"12345678901234567890123456789012345678\""
        );
        assert_eq!(json(&number, &numeric_bytes(0, 0xC000, 0, &[])), "\"NaN\"");
        assert_eq!(
            json(&number, &numeric_bytes(0, 0xD000, 0, &[])),
            "\"Infinity\""
        );
        assert_eq!(
            json(&number, &numeric_bytes(0, 0xF000, 0, &[])),
            "\"-Infinity\""
        );
        assert!(decode(&number, &numeric_bytes(0, 0, 0, &[10_000])).is_err());
        assert!(decode(&number, &numeric_bytes(0, 0x1234, 0, &[])).is_err());
        assert!(decode(&number, &numeric_bytes(0, 0, 0, &[1])[..9]).is_err());
    }

    #[test]
    /// Expected dates were checked against PostgreSQL: `SELECT '2000-01-01'::date + n`.
    fn dates_and_timestamps_are_iso_8601_in_utc() {
        assert_eq!(
            json(&TypeCodec::Date, &0i32.to_be_bytes()),
            "\"2000-01-01T00:00:00+00:00\""
        );
        assert_eq!(
            json(&TypeCodec::Date, &(-730_119i32).to_be_bytes()),
            "\"0001-01-01T00:00:00+00:00\""
        );
        assert_eq!(
            json(&TypeCodec::Date, &(-730_120i32).to_be_bytes()),
            "\"0000-12-31T00:00:00+00:00\"",
            "1 BC is year 0"
        );
        assert_eq!(
            json(&TypeCodec::Date, &(-746_190i32).to_be_bytes()),
            "\"-0043-01-01T00:00:00+00:00\"",
            "44 BC"
        );
        assert_eq!(
            json(&TypeCodec::Date, &2_922_790i32.to_be_bytes()),
            "\"+10002-04-30T00:00:00+00:00\""
        );
        assert_eq!(
            json(&TypeCodec::Date, &i32::MAX.to_be_bytes()),
            "\"infinity\""
        );
        assert_eq!(
            json(&TypeCodec::TimestampTz, &0i64.to_be_bytes()),
            "\"2000-01-01T00:00:00+00:00\""
        );
        assert_eq!(
            json(&TypeCodec::Timestamp, &1_500_000i64.to_be_bytes()),
            "\"2000-01-01T00:00:01.500000+00:00\""
        );
        assert_eq!(
            json(&TypeCodec::Timestamp, &(-1i64).to_be_bytes()),
            "\"1999-12-31T23:59:59.999999+00:00\""
        );
        assert_eq!(
            json(&TypeCodec::Timestamp, &i64::MIN.to_be_bytes()),
            "\"-infinity\""
        );
    }

    #[test]
    fn times_keep_24_00_and_their_offsets() {
        assert_eq!(
            json(&TypeCodec::Time, &MICROS_PER_DAY.to_be_bytes()),
            "\"24:00:00\""
        );
        assert_eq!(
            json(&TypeCodec::Time, &3_723_000_001i64.to_be_bytes()),
            "\"01:02:03.000001\""
        );
        assert!(decode(&TypeCodec::Time, &(MICROS_PER_DAY + 1).to_be_bytes()).is_err());
        let mut timetz = (10 * 3600 * MICROS_PER_SECOND).to_be_bytes().to_vec();
        timetz.extend_from_slice(&(-3600i32).to_be_bytes());
        assert_eq!(json(&TypeCodec::TimeTz, &timetz), "\"10:00:00+01:00\"");
        let mut west = 0i64.to_be_bytes().to_vec();
        west.extend_from_slice(&(5 * 3600 + 30 * 60i32).to_be_bytes());
        assert_eq!(json(&TypeCodec::TimeTz, &west), "\"00:00:00-05:30\"");
    }

    #[test]
    fn intervals_are_iso_8601_durations() {
        let interval = |micros: i64, days: i32, months: i32| {
            let mut raw = micros.to_be_bytes().to_vec();
            raw.extend_from_slice(&days.to_be_bytes());
            raw.extend_from_slice(&months.to_be_bytes());
            json(&TypeCodec::Interval, &raw)
        };
        assert_eq!(interval(0, 0, 0), "\"PT0S\"");
        assert_eq!(
            interval(4 * 3_600_000_000 + 5 * 60_000_000 + 6_500_000, 3, 14),
            "\"P1Y2M3DT4H5M6.5S\""
        );
        assert_eq!(interval(-1_500_000, 0, 0), "\"PT-1.5S\"");
        assert_eq!(interval(0, -1, -1), "\"P-1M-1D\"");
    }

    #[test]
    fn network_identifier_and_bit_types() {
        assert_eq!(
            json(&TypeCodec::Inet, &[2, 32, 0, 4, 192, 168, 0, 1]),
            "\"192.168.0.1\""
        );
        assert_eq!(
            json(&TypeCodec::Inet, &[2, 24, 0, 4, 192, 168, 0, 1]),
            "\"192.168.0.1/24\""
        );
        assert_eq!(
            json(&TypeCodec::Inet, &[2, 8, 1, 4, 10, 0, 0, 0]),
            "\"10.0.0.0/8\""
        );
        let mut v6 = vec![3, 128, 0, 16];
        v6.extend_from_slice(&[0; 15]);
        v6.push(1);
        assert_eq!(json(&TypeCodec::Inet, &v6), "\"::1\"");
        assert!(decode(&TypeCodec::Inet, &[2, 33, 0, 4, 1, 2, 3, 4]).is_err());
        assert_eq!(
            json(&TypeCodec::MacAddr, &[8, 0, 0x2b, 1, 2, 3]),
            "\"08:00:2b:01:02:03\""
        );
        assert_eq!(
            json(
                &TypeCodec::Uuid,
                &[
                    0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd,
                    0x38, 0x0a, 0x11
                ]
            ),
            "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\""
        );
        assert_eq!(
            json(&TypeCodec::Bit { single: true }, &[0, 0, 0, 1, 0x80]),
            "true"
        );
        assert_eq!(
            json(&TypeCodec::Bit { single: false }, &[0, 0, 0, 3, 0xA0]),
            "\"101\""
        );
        assert_eq!(json(&TypeCodec::VarBit, &[0, 0, 0, 0]), "\"\"");
        assert_eq!(json(&TypeCodec::Bytea, &[0xde, 0xad]), "\"\\\\xdead\"");
        assert_eq!(
            json(&TypeCodec::Money { frac_digits: 2 }, &(-5i64).to_be_bytes()),
            "\"-0.05\""
        );
        assert_eq!(
            json(
                &TypeCodec::Money { frac_digits: 2 },
                &123_456i64.to_be_bytes()
            ),
            "\"1234.56\""
        );
    }

    #[test]
    fn structured_types_keep_their_structure() {
        assert_eq!(
            json(&TypeCodec::Jsonb, b"\x01{\"a\": [1, 2.50]}"),
            "{\"a\": [1, 2.50]}"
        );
        assert!(decode(&TypeCodec::Jsonb, b"\x02{}").is_err());
        assert!(decode(&TypeCodec::Json, b"{oops").is_err());
        let mut hstore = 2i32.to_be_bytes().to_vec();
        for (key, value) in [("a", Some("1")), ("b\"", None)] {
            hstore.extend_from_slice(&(key.len() as i32).to_be_bytes());
            hstore.extend_from_slice(key.as_bytes());
            match value {
                Some(value) => {
                    hstore.extend_from_slice(&(value.len() as i32).to_be_bytes());
                    hstore.extend_from_slice(value.as_bytes());
                }
                None => hstore.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        assert_eq!(
            json(&TypeCodec::Hstore, &hstore),
            "{\"a\":\"1\",\"b\\\"\":null}"
        );
        // int4[2][2] = {{1,2},{3,NULL}}
        let mut array = Vec::new();
        for word in [2i32, 1, 23, 2, 1, 2, 1] {
            array.extend_from_slice(&word.to_be_bytes());
        }
        for value in [Some(1i32), Some(2), Some(3), None] {
            match value {
                Some(value) => {
                    array.extend_from_slice(&4i32.to_be_bytes());
                    array.extend_from_slice(&value.to_be_bytes());
                }
                None => array.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        let int_array = TypeCodec::Array(Box::new(TypeCodec::Int4));
        assert_eq!(json(&int_array, &array), "[[1,2],[3,null]]");
        let empty = [0i32, 0, 23]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect::<Vec<_>>();
        assert_eq!(json(&int_array, &empty), "[]");
        let huge = [1i32, 0, 23, i32::MAX, 1]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect::<Vec<_>>();
        assert!(
            decode(&int_array, &huge).is_err(),
            "dimensions beyond the data are refused before allocating"
        );
    }

    fn attribute(name: &str, type_oid: u32, codec: TypeCodec) -> CompositeAttribute {
        CompositeAttribute {
            name: name.into(),
            type_oid,
            codec,
        }
    }

    /// `CREATE TYPE inner_t AS (x int, y text)` as the catalog describes it (OID 16384).
    fn inner_type() -> TypeCodec {
        TypeCodec::Composite(Box::new(CompositeCodec {
            type_name: "inner_t".into(),
            attributes: vec![
                attribute("x", 23, TypeCodec::Int4),
                attribute("y", 25, TypeCodec::Text),
            ],
        }))
    }

    /// `record_send`'s form: count, then per attribute its type OID, length and bytes.
    fn record_bytes(attributes: &[(u32, Option<&[u8]>)]) -> Vec<u8> {
        let mut raw = (attributes.len() as i32).to_be_bytes().to_vec();
        for (oid, value) in attributes {
            raw.extend_from_slice(&oid.to_be_bytes());
            match value {
                Some(bytes) => {
                    raw.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                    raw.extend_from_slice(bytes);
                }
                None => raw.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        raw
    }

    /// A one-dimensional binary array of `element_oid` with lower bound 1.
    fn array_bytes(element_oid: u32, items: &[Option<Vec<u8>>]) -> Vec<u8> {
        let mut raw = Vec::new();
        for word in [1i32, 1, element_oid as i32, items.len() as i32, 1] {
            raw.extend_from_slice(&word.to_be_bytes());
        }
        for item in items {
            match item {
                Some(bytes) => {
                    raw.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                    raw.extend_from_slice(bytes);
                }
                None => raw.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        raw
    }

    #[test]
    fn a_binary_composite_is_an_object_keyed_by_attribute_in_attribute_order() {
        let inner = record_bytes(&[(23, Some(&7i32.to_be_bytes())), (25, Some(b"x y"))]);
        let ints = array_bytes(23, &[Some(1i32.to_be_bytes().to_vec()), None]);
        let outer = TypeCodec::Composite(Box::new(CompositeCodec {
            type_name: "outer_t".into(),
            attributes: vec![
                attribute("t", 25, TypeCodec::Text),
                attribute("n", 23, TypeCodec::Int4),
                attribute("d", 1700, TypeCodec::Numeric(NumericOut::Number)),
                attribute("a", 1007, TypeCodec::Array(Box::new(TypeCodec::Int4))),
                attribute("i", 16_384, inner_type()),
                attribute("e", 25, TypeCodec::Text),
            ],
        }));
        let raw = record_bytes(&[
            (25, Some(b"")),
            (23, None),
            (1700, Some(&numeric_bytes(0, 0, 2, &[1, 5000]))),
            (1007, Some(&ints)),
            (16_384, Some(&inner)),
            (25, None),
        ]);
        assert_eq!(
            json(&outer, &raw),
            r#"{"t":"","n":null,"d":1.50,"a":[1,null],"i":{"x":7,"y":"x y"},"e":null}"#,
            "an empty string stays \"\", a NULL attribute is null"
        );
        // An array of composites, NULL elements null.
        let array = array_bytes(16_384, &[Some(inner.clone()), None]);
        assert_eq!(
            json(&TypeCodec::Array(Box::new(inner_type())), &array),
            r#"[{"x":7,"y":"x y"},null]"#
        );
    }

    #[test]
    fn a_binary_composite_of_another_shape_than_the_catalog_is_a_typed_error() {
        // ALTER TYPE inner_t ADD ATTRIBUTE z int: three attributes where the catalog has two.
        let added = record_bytes(&[
            (23, Some(&7i32.to_be_bytes())),
            (25, Some(b"x")),
            (23, None),
        ]);
        let error = decode(&inner_type(), &added).unwrap_err();
        assert!(error.type_changed, "{error}");
        assert!(
            error.to_string().contains("3 attributes, the catalog 2"),
            "{error}"
        );
        // DROP ATTRIBUTE y, ADD ATTRIBUTE y int: the count agrees, the type OID does not.
        let retyped = record_bytes(&[(23, Some(&7i32.to_be_bytes())), (23, None)]);
        let error = decode(&inner_type(), &retyped).unwrap_err();
        assert!(error.type_changed, "{error}");
        assert!(
            error.to_string().contains("\"y\" has type OID 23"),
            "{error}"
        );
        // Bad bytes are errors of their own kind, naming the attribute.
        let short = record_bytes(&[(23, Some(&[0, 7])), (25, None)]);
        let error = decode(&inner_type(), &short).unwrap_err();
        assert!(!error.type_changed);
        assert!(
            error.to_string().contains("attribute \"x\" of inner_t"),
            "{error}"
        );
        let valid = record_bytes(&[(23, None), (25, None)]);
        for cut in 0..valid.len() {
            assert!(
                decode(&inner_type(), &valid[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut trailing = valid.clone();
        trailing.push(0);
        assert!(decode(&inner_type(), &trailing).is_err());
        assert!(decode(&inner_type(), &(-1i32).to_be_bytes()).is_err());
    }

    #[test]
    fn a_value_selected_as_text_keeps_its_structure() {
        let ranges = TypeCodec::TextForm(Box::new(TypeCodec::Array(Box::new(TypeCodec::Text))));
        assert_eq!(
            json(&ranges, br#"{"[2,4)","[20,31)",empty,NULL}"#),
            r#"["[2,4)","[20,31)","empty",null]"#
        );
        let boxes = TypeCodec::TextForm(Box::new(TypeCodec::Array(Box::new(
            TypeCodec::TextDelimited(';'),
        ))));
        assert_eq!(
            json(&boxes, b"{(1,1),(0,0);(3,3),(2,2)}"),
            r#"["(1,1),(0,0)","(3,3),(2,2)"]"#
        );
        let composite = TypeCodec::TextForm(Box::new(inner_type()));
        assert_eq!(json(&composite, br#"(1,"a b")"#), r#"{"x":1,"y":"a b"}"#);
        assert!(decode(&composite, b"(1,a,b)").unwrap_err().type_changed);
    }

    #[test]
    fn key_text_is_the_plain_value() {
        assert_eq!(
            decode(&TypeCodec::Int4, &7i32.to_be_bytes())
                .unwrap()
                .key_text(),
            "7"
        );
        assert_eq!(decode(&TypeCodec::Text, b"a b").unwrap().key_text(), "a b");
        let numeric = numeric_bytes(0, 0, 2, &[1, 5000]);
        assert_eq!(
            decode(&TypeCodec::Numeric(NumericOut::String), &numeric)
                .unwrap()
                .key_text(),
            "1.50"
        );
    }
}
