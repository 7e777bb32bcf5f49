//! PostgreSQL *text* output → the same JSON values the binary decoder (`value.rs`) produces, so
//! a row reads the same whether it came from the snapshot (COPY binary) or from wal2json (text).
//!
//! It assumes the replication session runs with `DateStyle=ISO`, `TimeZone=UTC`,
//! `IntervalStyle=iso_8601` and `bytea_output=hex` (pgferry sets them at connection start), so
//! dates, timestamps and intervals arrive in one known shape.

use std::borrow::Cow;

use crate::decode::value::NumericOut;
use crate::decode::value::{
    bad, composite_changed, float, in_attribute, push_offset, push_padded, push_year,
    CompositeCodec, TypeCodec, Value, ValueError,
};

/// Converts one value's text (as PostgreSQL's output function wrote it) per `codec`.
pub fn from_text<'a>(codec: &TypeCodec, text: &'a str) -> Result<Value<'a>, ValueError> {
    Ok(match codec {
        TypeCodec::Bool => match text {
            "t" | "true" => Value::Bool(true),
            "f" | "false" => Value::Bool(false),
            other => return Err(bad("boolean", format!("{other:?}"))),
        },
        TypeCodec::Int2 | TypeCodec::Int4 | TypeCodec::Int8 | TypeCodec::Oid => Value::Int(
            text.parse()
                .map_err(|_| bad("integer", format!("{text:?} is not an integer")))?,
        ),
        TypeCodec::Float4 | TypeCodec::Float8 => {
            let single = matches!(codec, TypeCodec::Float4);
            let value: f64 = match text {
                "NaN" => f64::NAN,
                "Infinity" => f64::INFINITY,
                "-Infinity" => f64::NEG_INFINITY,
                other if single => f64::from(
                    other
                        .parse::<f32>()
                        .map_err(|_| bad("real", format!("{other:?}")))?,
                ),
                other => other
                    .parse()
                    .map_err(|_| bad("double precision", format!("{other:?}")))?,
            };
            float(value, single)
        }
        TypeCodec::Numeric(out) => numeric(text, *out)?,
        TypeCodec::Text
        | TypeCodec::TextDelimited(_)
        | TypeCodec::Char
        | TypeCodec::Uuid
        | TypeCodec::Inet => Value::Str(Cow::Borrowed(text)),
        TypeCodec::MacAddr | TypeCodec::MacAddr8 | TypeCodec::VarBit => {
            Value::Str(Cow::Borrowed(text))
        }
        TypeCodec::Bytea => {
            let hex = text.strip_prefix("\\x").unwrap_or(text);
            if hex.len() % 2 != 0 || !hex.bytes().all(|byte| byte.is_ascii_hexdigit()) {
                return Err(bad("bytea", "expected hex output (bytea_output = hex)"));
            }
            Value::Str(Cow::Owned(format!("\\x{}", hex.to_ascii_lowercase())))
        }
        TypeCodec::Json | TypeCodec::Jsonb => {
            serde_json::from_str::<&serde_json::value::RawValue>(text)
                .map_err(|error| bad("json", format!("not valid JSON: {error}")))?;
            Value::RawJson(Cow::Borrowed(text))
        }
        TypeCodec::Date => match text {
            "infinity" | "-infinity" => Value::Str(Cow::Borrowed(text)),
            _ => {
                let (date, bc) = split_era(text);
                let mut out = String::with_capacity(26);
                push_date(&mut out, date, bc)?;
                out.push_str("T00:00:00+00:00");
                Value::Str(Cow::Owned(out))
            }
        },
        TypeCodec::Time => Value::Str(Cow::Owned(clock(text, "time")?)),
        TypeCodec::TimeTz => {
            let split = text
                .rfind(['+', '-'])
                .ok_or_else(|| bad("time with time zone", format!("{text:?} has no offset")))?;
            let mut out = clock(&text[..split], "time with time zone")?;
            push_offset(&mut out, offset_seconds(&text[split..])?);
            Value::Str(Cow::Owned(out))
        }
        TypeCodec::Timestamp | TypeCodec::TimestampTz => match text {
            "infinity" | "-infinity" => Value::Str(Cow::Borrowed(text)),
            _ => Value::Str(Cow::Owned(timestamp(
                text,
                matches!(codec, TypeCodec::TimestampTz),
            )?)),
        },
        TypeCodec::Interval => Value::Str(Cow::Borrowed(text)),
        TypeCodec::Money { .. } => {
            let negative = text.starts_with('-') || text.starts_with('(');
            let digits: String = text
                .chars()
                .filter(|ch| ch.is_ascii_digit() || *ch == '.')
                .collect();
            Value::Str(Cow::Owned(if negative {
                format!("-{digits}")
            } else {
                digits
            }))
        }
        TypeCodec::Bit { single } => {
            if *single && text.len() == 1 {
                Value::Bool(text == "1")
            } else {
                Value::Str(Cow::Borrowed(text))
            }
        }
        TypeCodec::Hstore => hstore(text)?,
        TypeCodec::Array(element) => {
            let delimiter = match **element {
                TypeCodec::TextDelimited(delimiter) => delimiter,
                _ => ',',
            };
            let mut parser = ArrayParser {
                text,
                at: 0,
                delimiter,
                hstore: false,
            };
            parser.skip_dimensions();
            let value = parser.array(element, 1)?;
            if parser.at != text.len() {
                return Err(bad("array", format!("trailing text in {text:?}")));
            }
            value
        }
        TypeCodec::Composite(composite) => record(composite, text)?,
        TypeCodec::TextForm(inner) => from_text(inner, text)?,
    })
}

/// `record_out`'s form, `(a,"b c",,"")`: attributes separated by commas; an attribute with
/// nothing in it is NULL, `""` is the empty string; inside quotes `""` is a quote and a
/// backslash escapes the next character (`record_in` also takes backslashes outside quotes).
/// The attributes must be as many as the catalog's description has, or the type changed.
fn record(composite: &CompositeCodec, text: &str) -> Result<Value<'static>, ValueError> {
    const NAME: &str = "composite";
    let inner = text
        .strip_prefix('(')
        .and_then(|rest| rest.strip_suffix(')'))
        .ok_or_else(|| bad(NAME, format!("{text:?} is not in parentheses")))?;
    let mut raw: Vec<Option<String>> = Vec::with_capacity(composite.attributes.len());
    let mut chars = inner.chars().peekable();
    let mut current = String::new();
    let mut seen = false;
    let mut quoted = false;
    while let Some(ch) = chars.next() {
        match ch {
            '\\' => {
                let escaped = chars
                    .next()
                    .ok_or_else(|| bad(NAME, format!("{text:?} ends in a backslash")))?;
                current.push(escaped);
                seen = true;
            }
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                current.push('"');
            }
            '"' => {
                quoted = !quoted;
                seen = true;
            }
            ',' if !quoted => {
                raw.push(seen.then(|| std::mem::take(&mut current)));
                seen = false;
            }
            other => {
                current.push(other);
                seen = true;
            }
        }
    }
    if quoted {
        return Err(bad(NAME, format!("unterminated quote in {text:?}")));
    }
    // `()` is a type of no attributes or one NULL attribute; anything else has commas + 1.
    if seen || !raw.is_empty() || !composite.attributes.is_empty() {
        raw.push(seen.then_some(current));
    }
    if raw.len() != composite.attributes.len() {
        return Err(composite_changed(
            &composite.type_name,
            format_args!(
                "the value has {} attributes, the catalog {}",
                raw.len(),
                composite.attributes.len()
            ),
        ));
    }
    let mut pairs = Vec::with_capacity(raw.len());
    for (attribute, raw) in composite.attributes.iter().zip(raw) {
        let value = match raw {
            None => Value::Null,
            Some(text) => into_owned(
                from_text(&attribute.codec, &text)
                    .map_err(|error| in_attribute(composite, attribute, error))?,
            ),
        };
        pairs.push((Cow::Owned(attribute.name.clone()), value));
    }
    Ok(Value::Object(pairs))
}

fn numeric(text: &str, out: NumericOut) -> Result<Value<'_>, ValueError> {
    if matches!(text, "NaN" | "Infinity" | "-Infinity") {
        return Ok(Value::Str(Cow::Borrowed(text)));
    }
    let body = text.strip_prefix('-').unwrap_or(text);
    let valid = !body.is_empty()
        && body
            .bytes()
            .all(|byte| byte.is_ascii_digit() || byte == b'.')
        && body.bytes().filter(|byte| *byte == b'.').count() <= 1
        && body
            .bytes()
            .next()
            .is_some_and(|byte| byte.is_ascii_digit());
    if !valid {
        return Err(bad("numeric", format!("{text:?} is not a decimal number")));
    }
    Ok(match out {
        NumericOut::Number => Value::Number(text.to_owned()),
        NumericOut::String => Value::Str(Cow::Borrowed(text)),
    })
}

/// `("2024-01-01 10:00:00", false)` from `"2024-01-01 10:00:00"`; BC dates carry a suffix.
fn split_era(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (text, false),
    }
}

/// Writes `YYYY-MM-DD` (astronomical year for BC) from ISO date text.
fn push_date(out: &mut String, date: &str, bc: bool) -> Result<(), ValueError> {
    let mut parts = date.splitn(3, '-');
    let (Some(year), Some(month), Some(day)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("date", format!("{date:?} is not YYYY-MM-DD")));
    };
    let number = |part: &str| {
        part.parse::<i64>()
            .map_err(|_| bad("date", format!("{date:?} is not YYYY-MM-DD")))
    };
    let year = number(year)?;
    push_year(out, if bc { 1 - year } else { year });
    out.push('-');
    push_padded(out, number(month)?, 2);
    out.push('-');
    push_padded(out, number(day)?, 2);
    Ok(())
}

/// `HH:MM:SS[.ffffff]` with the fraction padded to six digits, as the binary path writes it.
fn clock(text: &str, type_name: &'static str) -> Result<String, ValueError> {
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (text, None),
    };
    if whole.len() != 8
        || !whole.bytes().enumerate().all(|(index, byte)| {
            if index == 2 || index == 5 {
                byte == b':'
            } else {
                byte.is_ascii_digit()
            }
        })
    {
        return Err(bad(type_name, format!("{text:?} is not HH:MM:SS")));
    }
    let mut out = String::with_capacity(15);
    out.push_str(whole);
    if let Some(fraction) = fraction {
        if fraction.is_empty()
            || fraction.len() > 6
            || !fraction.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad(type_name, format!("{text:?} has a bad fraction")));
        }
        if fraction.bytes().any(|byte| byte != b'0') {
            out.push('.');
            out.push_str(fraction);
            for _ in fraction.len()..6 {
                out.push('0');
            }
        }
    }
    Ok(out)
}

/// `+02`, `-05:30`, `+05:45:10` → seconds east of UTC.
fn offset_seconds(text: &str) -> Result<i64, ValueError> {
    const NAME: &str = "time zone offset";
    let (sign, rest) = match text.as_bytes().first() {
        Some(b'+') => (1, &text[1..]),
        Some(b'-') => (-1, &text[1..]),
        _ => return Err(bad(NAME, format!("{text:?}"))),
    };
    let mut seconds = 0i64;
    for (index, part) in rest.split(':').enumerate() {
        let value: i64 = part.parse().map_err(|_| bad(NAME, format!("{text:?}")))?;
        seconds += value
            * [3600, 60, 1]
                .get(index)
                .copied()
                .ok_or_else(|| bad(NAME, format!("{text:?}")))?;
    }
    Ok(sign * seconds)
}

/// `2024-01-01 10:00:00.5+00` (timestamptz in UTC) or `… 10:00:00.5` → ISO 8601 with `+00:00`.
fn timestamp(text: &str, with_zone: bool) -> Result<String, ValueError> {
    let type_name = if with_zone {
        "timestamp with time zone"
    } else {
        "timestamp"
    };
    let (text_no_era, bc) = split_era(text);
    let (date, time) = text_no_era
        .split_once(' ')
        .ok_or_else(|| bad(type_name, format!("{text:?} is not 'YYYY-MM-DD HH:MM:SS'")))?;
    let time = if with_zone {
        let split = time
            .rfind(['+', '-'])
            .ok_or_else(|| bad(type_name, format!("{text:?} has no offset")))?;
        if offset_seconds(&time[split..])? != 0 {
            return Err(bad(
                type_name,
                format!("{text:?} is not in UTC (the replication session sets TimeZone=UTC)"),
            ));
        }
        &time[..split]
    } else {
        time
    };
    let mut out = String::with_capacity(32);
    push_date(&mut out, date, bc)?;
    out.push('T');
    out.push_str(&clock(time, type_name)?);
    out.push_str("+00:00");
    Ok(out)
}

/// `"a"=>"1", "b"=>NULL` → an object.
fn hstore(text: &str) -> Result<Value<'static>, ValueError> {
    const NAME: &str = "hstore";
    let mut parser = ArrayParser {
        text,
        at: 0,
        delimiter: ',',
        hstore: true,
    };
    let mut pairs = Vec::new();
    loop {
        parser.skip_spaces();
        if parser.at >= text.len() {
            return Ok(Value::Object(pairs));
        }
        let key = parser
            .token()?
            .ok_or_else(|| bad(NAME, format!("NULL key in {text:?}")))?;
        parser.skip_spaces();
        if !parser.rest().starts_with("=>") {
            return Err(bad(NAME, format!("expected => in {text:?}")));
        }
        parser.at += 2;
        parser.skip_spaces();
        let value = parser.token()?;
        pairs.push((
            Cow::Owned(key),
            value.map_or(Value::Null, |value| Value::Str(Cow::Owned(value))),
        ));
        parser.skip_spaces();
        if parser.rest().starts_with(',') {
            parser.at += 1;
        }
    }
}

/// A cursor over PostgreSQL array (and hstore) text.
struct ArrayParser<'t> {
    text: &'t str,
    at: usize,
    /// The element type's `typdelim` (`,`, or `;` for `box`).
    delimiter: char,
    /// Whether this is hstore text, where a bare token also ends at `=`.
    hstore: bool,
}

impl ArrayParser<'_> {
    fn rest(&self) -> &str {
        &self.text[self.at..]
    }

    fn skip_spaces(&mut self) {
        while self.rest().starts_with([' ', '\t', '\n']) {
            self.at += 1;
        }
    }

    /// Skips a `[1:3]={…}` dimension decoration.
    fn skip_dimensions(&mut self) {
        if self.rest().starts_with('[') {
            if let Some(eq) = self.rest().find('=') {
                self.at += eq + 1;
            }
        }
    }

    /// A quoted or bare token; `None` for a bare NULL. A bare array element ends at the
    /// delimiter, `}` or a space; a bare hstore token also at `=`.
    fn token(&mut self) -> Result<Option<String>, ValueError> {
        if self.rest().starts_with('"') {
            self.at += 1;
            let mut out = String::new();
            let mut chars = self.rest().char_indices();
            while let Some((index, ch)) = chars.next() {
                match ch {
                    '\\' => match chars.next() {
                        Some((_, escaped)) => out.push(escaped),
                        None => break,
                    },
                    '"' => {
                        self.at += index + 1;
                        return Ok(Some(out));
                    }
                    other => out.push(other),
                }
            }
            return Err(bad(
                "array",
                format!("unterminated quote in {:?}", self.text),
            ));
        }
        let delimiter = self.delimiter;
        let hstore = self.hstore;
        let end = self
            .rest()
            .find(|ch: char| {
                ch == delimiter || matches!(ch, '}' | ' ' | '\t' | '\n') || (hstore && ch == '=')
            })
            .unwrap_or(self.rest().len());
        let token = self.rest()[..end].to_owned();
        self.at += end;
        if token.eq_ignore_ascii_case("NULL") {
            Ok(None)
        } else {
            Ok(Some(token))
        }
    }

    /// An array at nesting `depth` (1 for the outermost); PostgreSQL allows 6 dimensions,
    /// so deeper text is refused before it can exhaust the stack.
    fn array(&mut self, element: &TypeCodec, depth: usize) -> Result<Value<'static>, ValueError> {
        if depth > 6 {
            return Err(bad(
                "array",
                format!("more than 6 dimensions in {:?}", self.text),
            ));
        }
        if !self.rest().starts_with('{') {
            return Err(bad(
                "array",
                format!("{:?} does not start with {{", self.text),
            ));
        }
        self.at += 1;
        let mut items = Vec::new();
        if self.rest().starts_with('}') {
            self.at += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_spaces();
            if self.rest().starts_with('{') {
                items.push(self.array(element, depth + 1)?);
            } else {
                let item = match self.token()? {
                    None => Value::Null,
                    Some(text) => into_owned(from_text(element, &text)?),
                };
                items.push(item);
            }
            self.skip_spaces();
            match self.rest().chars().next() {
                Some(ch) if ch == self.delimiter => self.at += ch.len_utf8(),
                Some('}') => {
                    self.at += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(bad("array", format!("malformed array {:?}", self.text))),
            }
        }
    }
}

/// Detaches a value from the text it borrowed.
fn into_owned(value: Value<'_>) -> Value<'static> {
    match value {
        Value::Null => Value::Null,
        Value::Bool(flag) => Value::Bool(flag),
        Value::Int(number) => Value::Int(number),
        Value::Float(number) => Value::Float(number),
        Value::Number(text) => Value::Number(text),
        Value::Str(text) => Value::Str(Cow::Owned(text.into_owned())),
        Value::RawJson(text) => Value::RawJson(Cow::Owned(text.into_owned())),
        Value::Array(items) => Value::Array(items.into_iter().map(into_owned).collect()),
        Value::Object(pairs) => Value::Object(
            pairs
                .into_iter()
                .map(|(key, value)| (Cow::Owned(key.into_owned()), into_owned(value)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::value::CompositeAttribute;

    fn json(codec: &TypeCodec, text: &str) -> String {
        from_text(codec, text).unwrap().to_json_string()
    }

    #[test]
    fn scalars_read_as_the_binary_path_writes_them() {
        assert_eq!(
            json(&TypeCodec::Int8, "-9223372036854775808"),
            "-9223372036854775808"
        );
        assert_eq!(json(&TypeCodec::Float4, "0.1"), "0.1");
        assert_eq!(json(&TypeCodec::Float8, "1e+300"), "1e+300");
        assert_eq!(json(&TypeCodec::Float8, "NaN"), "\"NaN\"");
        assert_eq!(
            json(&TypeCodec::Numeric(NumericOut::Number), "1.5000"),
            "1.5000"
        );
        assert_eq!(
            json(
                &TypeCodec::Numeric(NumericOut::String),
                "12345678901234567890.0123456789"
            ),
            "\"12345678901234567890.0123456789\""
        );
        assert!(from_text(&TypeCodec::Numeric(NumericOut::Number), "1e5").is_err());
        assert_eq!(json(&TypeCodec::Bool, "t"), "true");
        assert_eq!(json(&TypeCodec::Bytea, "de00"), "\"\\\\xde00\"");
        assert_eq!(json(&TypeCodec::Bytea, "\\xDE00"), "\"\\\\xde00\"");
        assert_eq!(
            json(&TypeCodec::Jsonb, "{\"a\": [1, 2.50]}"),
            "{\"a\": [1, 2.50]}"
        );
        assert_eq!(json(&TypeCodec::Bit { single: true }, "1"), "true");
        assert_eq!(
            json(&TypeCodec::Money { frac_digits: 2 }, "-$1,234.56"),
            "\"-1234.56\""
        );
    }

    #[test]
    fn dates_and_times_become_iso_8601() {
        assert_eq!(
            json(&TypeCodec::Date, "2024-02-29"),
            "\"2024-02-29T00:00:00+00:00\""
        );
        assert_eq!(
            json(&TypeCodec::Date, "0044-03-15 BC"),
            "\"-0043-03-15T00:00:00+00:00\""
        );
        assert_eq!(json(&TypeCodec::Date, "infinity"), "\"infinity\"");
        assert_eq!(
            json(&TypeCodec::TimestampTz, "2023-12-31 22:00:00.1234+00"),
            "\"2023-12-31T22:00:00.123400+00:00\""
        );
        assert_eq!(
            json(&TypeCodec::Timestamp, "2024-02-29 13:14:15"),
            "\"2024-02-29T13:14:15+00:00\""
        );
        assert!(from_text(&TypeCodec::TimestampTz, "2024-02-29 13:14:15+02").is_err());
        assert_eq!(json(&TypeCodec::Time, "24:00:00"), "\"24:00:00\"");
        assert_eq!(
            json(&TypeCodec::TimeTz, "13:14:15.5+05:30"),
            "\"13:14:15.500000+05:30\""
        );
    }

    #[test]
    fn arrays_and_hstore_keep_structure() {
        let ints = TypeCodec::Array(Box::new(TypeCodec::Int4));
        assert_eq!(json(&ints, "{{1,2},{3,NULL}}"), "[[1,2],[3,null]]");
        assert_eq!(json(&ints, "[0:1]={5,6}"), "[5,6]");
        assert_eq!(json(&ints, "{}"), "[]");
        let texts = TypeCodec::Array(Box::new(TypeCodec::Text));
        assert_eq!(
            json(&texts, r#"{"x y","q\"z",NULL,"NULL",plain}"#),
            r#"["x y","q\"z",null,"NULL","plain"]"#
        );
        assert!(from_text(&ints, "{1,2").is_err());
        assert_eq!(json(&ints, "{{{{{{1}}}}}}"), "[[[[[[1]]]]]]");
        assert!(
            from_text(&ints, &format!("{}1{}", "{".repeat(7), "}".repeat(7))).is_err(),
            "PostgreSQL allows 6 dimensions"
        );
        assert!(from_text(&ints, &"{".repeat(100_000)).is_err());
        assert!(from_text(&ints, "{1,x}").is_err());
        assert_eq!(
            json(&TypeCodec::Hstore, r#""a"=>"1", "b c"=>NULL"#),
            r#"{"a":"1","b c":null}"#
        );
    }

    fn attribute(name: &str, type_oid: u32, codec: TypeCodec) -> CompositeAttribute {
        CompositeAttribute {
            name: name.into(),
            type_oid,
            codec,
        }
    }

    fn composite(name: &str, attributes: Vec<CompositeAttribute>) -> TypeCodec {
        TypeCodec::Composite(Box::new(CompositeCodec {
            type_name: name.into(),
            attributes,
        }))
    }

    /// `CREATE TYPE inner_t AS (x int, y text)`.
    fn inner_type() -> TypeCodec {
        composite(
            "inner_t",
            vec![
                attribute("x", 23, TypeCodec::Int4),
                attribute("y", 25, TypeCodec::Text),
            ],
        )
    }

    #[test]
    fn composite_text_quotes_backslashes_empty_strings_and_nulls() {
        let texts = composite(
            "texts",
            vec![
                attribute("a", 25, TypeCodec::Text),
                attribute("b", 25, TypeCodec::Text),
                attribute("c", 25, TypeCodec::Text),
                attribute("d", 25, TypeCodec::Text),
                attribute("e", 25, TypeCodec::Text),
            ],
        );
        // SELECT ROW(E'say "hi" \\ there', NULL, '', 'NULL', ' ')::texts
        assert_eq!(
            json(&texts, r#"("say ""hi"" \\ there",,"",NULL," ")"#),
            r#"{"a":"say \"hi\" \\ there","b":null,"c":"","d":"NULL","e":" "}"#,
            "nothing is NULL, \"\" is empty, a bare NULL is the string NULL"
        );
        // record_in also takes backslash escapes inside and outside quotes.
        assert_eq!(
            json(&texts, r#"(a\,b,"x\"y",,,)"#),
            r#"{"a":"a,b","b":"x\"y","c":null,"d":null,"e":null}"#
        );
        let one = composite("one", vec![attribute("x", 23, TypeCodec::Int4)]);
        assert_eq!(json(&one, "()"), r#"{"x":null}"#, "one NULL attribute");
        assert_eq!(json(&composite("none", Vec::new()), "()"), "{}");
        assert!(from_text(&inner_type(), "(1,\"x").is_err());
        assert!(from_text(&inner_type(), "1,x").is_err());
        assert!(
            from_text(&inner_type(), "(x,y)").is_err(),
            "x is no integer"
        );
    }

    #[test]
    fn nested_composites_and_arrays_inside_composites() {
        let outer = composite(
            "outer_t",
            vec![
                attribute("t", 25, TypeCodec::Text),
                attribute("d", 1700, TypeCodec::Numeric(NumericOut::Number)),
                attribute("a", 1007, TypeCodec::Array(Box::new(TypeCodec::Int4))),
                attribute("i", 16_384, inner_type()),
                attribute("l", 16_390, TypeCodec::Array(Box::new(inner_type()))),
            ],
        );
        // SELECT ROW('x y', 1.50, '{1,NULL}', ROW(2, 'q"z'), ARRAY[ROW(3, 'a b'), NULL])::outer_t
        let text = r#"("x y",1.50,"{1,NULL}","(2,""q""""z"")","{""(3,\\""a b\\"")"",NULL}")"#;
        assert_eq!(
            json(&outer, text),
            r#"{"t":"x y","d":1.50,"a":[1,null],"i":{"x":2,"y":"q\"z"},"l":[{"x":3,"y":"a b"},null]}"#
        );
    }

    #[test]
    fn arrays_of_composites_ranges_and_boxes_are_arrays() {
        let pairs = TypeCodec::Array(Box::new(inner_type()));
        assert_eq!(
            json(&pairs, r#"{"(1,\"x y\")",NULL,"(2,)","(,\"\")"}"#),
            r#"[{"x":1,"y":"x y"},null,{"x":2,"y":null},{"x":null,"y":""}]"#
        );
        assert_eq!(
            json(&pairs, r#"{{"(1,a)"},{NULL}}"#),
            r#"[[{"x":1,"y":"a"}],[null]]"#
        );
        let ranges = TypeCodec::Array(Box::new(TypeCodec::Text));
        assert_eq!(
            json(&ranges, r#"{"[2,4)","[20,31)",empty}"#),
            r#"["[2,4)","[20,31)","empty"]"#
        );
        assert_eq!(
            json(&ranges, r#"{"{[1,3),[5,7)}","{}"}"#),
            r#"["{[1,3),[5,7)}","{}"]"#,
            "multiranges"
        );
        assert_eq!(
            json(&ranges, "{a=b,c}"),
            r#"["a=b","c"]"#,
            "an array element may hold ="
        );
        let boxes = TypeCodec::Array(Box::new(TypeCodec::TextDelimited(';')));
        assert_eq!(
            json(&boxes, "{(1,1),(0,0);(3,3),(2,2)}"),
            r#"["(1,1),(0,0)","(3,3),(2,2)"]"#
        );
        let error = from_text(&pairs, r#"{"(1,a,3)"}"#).unwrap_err();
        assert!(error.type_changed, "{error}");
        assert!(
            error.to_string().contains("3 attributes, the catalog 2"),
            "{error}"
        );
    }
}
