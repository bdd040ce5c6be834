//! Column values → JSON by type OID (ARCHITECTURE.md §2).
//!
//! pgoutput sends each value in its type's text output form. Integers and
//! floats become JSON numbers, bool a boolean, json/jsonb is embedded, numeric
//! stays a string (no precision loss), timestamps become ISO-8601 strings,
//! arrays of those become JSON arrays, and everything else is its text form.
//! The mapping assumes the replication session runs with `DateStyle=ISO` and
//! `TimeZone=UTC`; text in any other shape is passed through unchanged rather
//! than guessed at. No input panics: text that does not parse as its type is
//! emitted as a string.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::{Number, Value};

use crate::change::Row;
use crate::pgoutput::{Relation, Tuple, TupleValue};

/// Built-in type OIDs (`pg_type.oid`, stable across Postgres versions).
mod oid {
    pub(super) const BOOL: u32 = 16;
    pub(super) const INT8: u32 = 20;
    pub(super) const INT2: u32 = 21;
    pub(super) const INT4: u32 = 23;
    pub(super) const TEXT: u32 = 25;
    pub(super) const OID: u32 = 26;
    pub(super) const JSON: u32 = 114;
    pub(super) const FLOAT4: u32 = 700;
    pub(super) const FLOAT8: u32 = 701;
    pub(super) const VARCHAR: u32 = 1043;
    pub(super) const DATE: u32 = 1082;
    pub(super) const TIMESTAMP: u32 = 1114;
    pub(super) const TIMESTAMPTZ: u32 = 1184;
    pub(super) const NUMERIC: u32 = 1700;
    pub(super) const UUID: u32 = 2950;
    pub(super) const JSONB: u32 = 3802;

    /// The element type of the built-in array types we parse into JSON arrays.
    pub(super) fn array_element(array: u32) -> Option<u32> {
        Some(match array {
            1000 => BOOL,
            1005 => INT2,
            1007 => INT4,
            1016 => INT8,
            1009 => TEXT,
            1015 => VARCHAR,
            1021 => FLOAT4,
            1022 => FLOAT8,
            1231 => NUMERIC,
            199 => JSON,
            3807 => JSONB,
            1115 => TIMESTAMP,
            1185 => TIMESTAMPTZ,
            1182 => DATE,
            2951 => UUID,
            _ => return None,
        })
    }
}

/// Postgres's own limit on array dimensions (`MAXDIM`); deeper text is not a
/// valid array, and the limit keeps the recursive parser's depth bounded.
const MAX_DIMS: usize = 6;

/// How a scalar's text form maps to JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Integer,
    Float,
    Bool,
    Json,
    Timestamp,
    TimestampTz,
    Text,
}

impl Kind {
    fn of(type_oid: u32) -> Kind {
        match type_oid {
            oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => Kind::Integer,
            oid::FLOAT4 | oid::FLOAT8 => Kind::Float,
            oid::BOOL => Kind::Bool,
            oid::JSON | oid::JSONB => Kind::Json,
            oid::TIMESTAMP => Kind::Timestamp,
            oid::TIMESTAMPTZ => Kind::TimestampTz,
            _ => Kind::Text,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct NamedType {
    namespace: String,
    name: String,
}

/// Non-built-in types announced by pgoutput `Type` messages (enums, domains
/// and their array types), so that arrays of them (`_UserRole`) can be
/// recognised. Keyed by OID and replaced on re-announcement, so it holds at
/// most one entry per type of the database.
#[derive(Debug, Clone, Default)]
pub struct TypeRegistry {
    types: HashMap<u32, NamedType>,
}

impl TypeRegistry {
    /// Records (or replaces) the name of type `oid`.
    pub fn remember(&mut self, oid: u32, namespace: impl Into<String>, name: impl Into<String>) {
        self.types.insert(
            oid,
            NamedType {
                namespace: namespace.into(),
                name: name.into(),
            },
        );
    }

    /// The `(namespace, name)` announced for `oid`, if any.
    pub fn get(&self, oid: u32) -> Option<(&str, &str)> {
        self.types
            .get(&oid)
            .map(|t| (t.namespace.as_str(), t.name.as_str()))
    }

    /// Maps one column value of type `type_oid` to JSON.
    ///
    /// `None` for an unchanged TOASTed value (the value is unknown, which is
    /// not the same as NULL). Never panics, whatever the bytes.
    pub fn to_json(&self, type_oid: u32, value: &TupleValue) -> Option<Value> {
        Some(match value {
            TupleValue::UnchangedToast => return None,
            TupleValue::Null => Value::Null,
            TupleValue::Binary(bytes) => Value::String(hex(bytes)),
            TupleValue::Text(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => self.text_to_json(type_oid, text),
                Err(_) => Value::String(String::from_utf8_lossy(bytes).into_owned()),
            },
        })
    }

    fn text_to_json(&self, type_oid: u32, text: &str) -> Value {
        let element = match oid::array_element(type_oid) {
            Some(element) => Some(Kind::of(element)),
            // Postgres names an array type `_` + its element type's name.
            None => self
                .types
                .get(&type_oid)
                .filter(|t| t.name.starts_with('_'))
                .map(|_| Kind::Text),
        };
        match element {
            Some(kind) => parse_array(text, kind).unwrap_or_else(|| Value::String(text.to_owned())),
            None => scalar(Kind::of(type_oid), text),
        }
    }
}

/// Maps a tuple to a [`Row`] by the relation's column names and types.
///
/// Unchanged TOASTed columns are left out (absent, not null). A tuple with more
/// or fewer values than the relation has columns maps only the pairs that exist.
///
/// A value whose bytes are longer than `max_value_bytes` is not mapped: an
/// [`oversize`](crate::event_size::oversize) marker takes its place (see
/// [`crate::event_size`]), so a 100 MB TOASTed text costs no copy of itself.
pub fn row(
    relation: &Relation,
    tuple: &Tuple,
    types: &TypeRegistry,
    max_value_bytes: usize,
) -> Row {
    // In name order (see `Relation::by_name`): the map's collect finds
    // its keys sorted.
    relation
        .by_name
        .iter()
        .filter_map(|&i| Some((relation.columns.get(i)?, tuple.0.get(i)?)))
        .filter_map(|(column, value)| {
            let json = match value {
                TupleValue::Text(bytes) | TupleValue::Binary(bytes)
                    if bytes.len() > max_value_bytes =>
                {
                    crate::event_size::oversize(bytes)
                }
                _ => types.to_json(column.type_oid, value)?,
            };
            Some((column.name.clone(), json))
        })
        .collect()
}

fn scalar(kind: Kind, text: &str) -> Value {
    let mapped = match kind {
        Kind::Integer => text.parse::<i64>().ok().map(Value::from),
        // NaN and ±Infinity have no JSON number; they stay strings.
        Kind::Float => text
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number),
        Kind::Bool => match text {
            "t" => Some(Value::Bool(true)),
            "f" => Some(Value::Bool(false)),
            _ => None,
        },
        Kind::Json => serde_json::from_str(text).ok(),
        Kind::Timestamp => iso_timestamp(text, false).map(Value::String),
        Kind::TimestampTz => iso_timestamp(text, true).map(Value::String),
        Kind::Text => None,
    };
    mapped.unwrap_or_else(|| Value::String(text.to_owned()))
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 + 2 * bytes.len());
    out.push_str("\\x");
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Postgres ISO output → ISO-8601: `2024-01-02 03:04:05.678` → `…T03:04:05.678Z`
/// (timestamps without time zone are UTC by the application's convention);
/// with `with_offset`, `+00` → `Z`, `+05:30` kept, `-08` → `-08:00`.
///
/// `None` (keep the text) for anything else: `infinity`, BC dates, offsets
/// with seconds (pre-1900 local mean time, not expressible in ISO-8601), or
/// a non-ISO `DateStyle`.
fn iso_timestamp(text: &str, with_offset: bool) -> Option<String> {
    let mut c = Cursor::new(text);
    let date_start = c.pos;
    if c.digits() < 4 || !c.eat(b'-') || c.digits() != 2 || !c.eat(b'-') || c.digits() != 2 {
        return None;
    }
    let date = c.since(date_start);
    if !c.eat(b' ') {
        return None;
    }
    let time_start = c.pos;
    if c.digits() != 2 || !c.eat(b':') || c.digits() != 2 || !c.eat(b':') || c.digits() != 2 {
        return None;
    }
    if c.eat(b'.') && c.digits() == 0 {
        return None;
    }
    let time = c.since(time_start);
    let offset = if with_offset {
        std::borrow::Cow::Owned(iso_offset(&mut c)?)
    } else {
        std::borrow::Cow::Borrowed("Z")
    };
    c.at_end().then(|| {
        // Pushed, not `format!`ed: this runs for every timestamp column of
        // every row.
        let mut iso = String::with_capacity(date.len() + time.len() + offset.len() + 1);
        iso.push_str(date);
        iso.push('T');
        iso.push_str(time);
        iso.push_str(&offset);
        iso
    })
}

/// `+HH[:MM[:SS]]` → `Z` or `±HH:MM`; `None` for a nonzero seconds part.
fn iso_offset(c: &mut Cursor<'_>) -> Option<String> {
    let sign = if c.eat(b'+') {
        '+'
    } else if c.eat(b'-') {
        '-'
    } else {
        return None;
    };
    let mut parts = ["00"; 3];
    for (i, part) in parts.iter_mut().enumerate() {
        if i > 0 && !c.eat(b':') {
            break;
        }
        let start = c.pos;
        if c.digits() != 2 {
            return None;
        }
        *part = c.since(start);
    }
    let [hours, minutes, seconds] = parts;
    if seconds != "00" {
        return None;
    }
    if hours == "00" && minutes == "00" {
        return Some("Z".to_owned());
    }
    Some(format!("{sign}{hours}:{minutes}"))
}

/// Parses Postgres array text (`{1,2,NULL}`, `{"a b","c\"d"}`, `{{1,2},{3,4}}`,
/// `[0:1]={1,2}`) into a JSON array whose elements are mapped as `kind`.
/// `None` when the text is not a well-formed array of at most [`MAX_DIMS`]
/// dimensions. Assumes the `,` delimiter (true of every type we parse).
fn parse_array(text: &str, kind: Kind) -> Option<Value> {
    let mut c = Cursor::new(text);
    c.skip_space();
    if c.peek() == Some(b'[') {
        // Dimension decoration for non-default lower bounds: skipped, JSON
        // arrays are zero-based.
        while c.eat(b'[') {
            let start = c.pos;
            while c
                .peek()
                .is_some_and(|b| b.is_ascii_digit() || b"+-:".contains(&b))
            {
                c.pos += 1;
            }
            if c.pos == start || !c.eat(b']') {
                return None;
            }
        }
        c.skip_space();
        if !c.eat(b'=') {
            return None;
        }
        c.skip_space();
    }
    let value = array_body(&mut c, kind, 1)?;
    c.skip_space();
    c.at_end().then_some(value)
}

fn array_body(c: &mut Cursor<'_>, kind: Kind, depth: usize) -> Option<Value> {
    if depth > MAX_DIMS || !c.eat(b'{') {
        return None;
    }
    let mut items = Vec::new();
    c.skip_space();
    if c.eat(b'}') {
        return Some(Value::Array(items));
    }
    loop {
        c.skip_space();
        let item = match c.peek()? {
            b'{' => array_body(c, kind, depth + 1)?,
            b'"' => scalar(kind, &quoted_element(c)?),
            _ => match unquoted_element(c)? {
                None => Value::Null,
                Some(text) => scalar(kind, &text),
            },
        };
        items.push(item);
        c.skip_space();
        match c.next()? {
            b',' => {}
            b'}' => return Some(Value::Array(items)),
            _ => return None,
        }
    }
}

/// `"…"` with backslash escapes; a quoted `"NULL"` is the string `NULL`.
fn quoted_element(c: &mut Cursor<'_>) -> Option<String> {
    c.eat(b'"');
    let mut out = Vec::new();
    loop {
        match c.next()? {
            b'"' => break,
            b'\\' => out.push(c.next()?),
            b => out.push(b),
        }
    }
    // Only ASCII backslashes were removed from valid UTF-8: still valid.
    String::from_utf8(out).ok()
}

/// An unquoted element up to the next `,` or `}`; surrounding whitespace is
/// not part of it, and an unescaped `NULL` (any case) is `None`.
fn unquoted_element(c: &mut Cursor<'_>) -> Option<Option<String>> {
    let mut out = Vec::new();
    let mut keep = 0; // length without trailing unescaped whitespace
    let mut escaped = false;
    while let Some(b) = c.peek() {
        match b {
            b',' | b'}' => break,
            b'{' | b'"' => return None,
            b'\\' => {
                c.pos += 1;
                out.push(c.next()?);
                escaped = true;
                keep = out.len();
            }
            _ => {
                c.pos += 1;
                out.push(b);
                if !is_space(b) {
                    keep = out.len();
                }
            }
        }
    }
    out.truncate(keep);
    if out.is_empty() {
        return None;
    }
    if !escaped && out.eq_ignore_ascii_case(b"NULL") {
        return Some(None);
    }
    String::from_utf8(out).ok().map(Some)
}

/// Postgres's `scanner_isspace`.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

/// A byte cursor over ASCII-structured text. Invariant: `pos <= s.len()`, and
/// `pos` only stops on ASCII bytes or the end, so slices are on char boundaries.
struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(s: &'a str) -> Self {
        Cursor { s, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn eat(&mut self, want: u8) -> bool {
        let hit = self.peek() == Some(want);
        if hit {
            self.pos += 1;
        }
        hit
    }

    /// Skips ASCII digits and returns how many.
    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(is_space) {
            self.pos += 1;
        }
    }

    fn since(&self, start: usize) -> &'a str {
        self.s.get(start..self.pos).unwrap_or_default()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pgoutput::Column;
    use bytes::Bytes;
    use proptest::prelude::*;
    use serde_json::json;

    fn map(type_oid: u32, text: &str) -> Value {
        TypeRegistry::default()
            .to_json(
                type_oid,
                &TupleValue::Text(Bytes::copy_from_slice(text.as_bytes())),
            )
            .unwrap()
    }

    #[test]
    fn null_toast_binary() {
        let types = TypeRegistry::default();
        assert_eq!(types.to_json(23, &TupleValue::Null), Some(Value::Null));
        assert_eq!(types.to_json(23, &TupleValue::UnchangedToast), None);
        assert_eq!(
            types.to_json(
                17,
                &TupleValue::Binary(Bytes::from_static(&[0x00, 0xAB, 0xff]))
            ),
            Some(json!("\\x00abff"))
        );
        assert_eq!(
            types.to_json(23, &TupleValue::Binary(Bytes::new())),
            Some(json!("\\x"))
        );
    }

    #[test]
    fn integers() {
        assert_eq!(map(21, "-32768"), json!(-32768));
        assert_eq!(map(23, "42"), json!(42));
        assert_eq!(map(26, "4294967295"), json!(4_294_967_295u32));
        // Beyond f64's 2^53: must stay exact.
        let huge = map(20, "9223372036854775807");
        assert_eq!(huge, json!(i64::MAX));
        assert_eq!(huge.to_string(), "9223372036854775807");
        assert_eq!(
            map(20, "-9007199254740993").to_string(),
            "-9007199254740993"
        );
        assert_eq!(map(23, "not a number"), json!("not a number"));
    }

    #[test]
    fn floats() {
        assert_eq!(map(701, "1.5"), json!(1.5));
        assert_eq!(map(701, "-0.1"), json!(-0.1));
        assert_eq!(map(701, "1e+100"), json!(1e100));
        // float4's text is already rounded; parsing it as f64 keeps "1.1" 1.1.
        assert_eq!(map(700, "1.1").to_string(), "1.1");
        assert_eq!(map(700, "NaN"), json!("NaN"));
        assert_eq!(map(701, "Infinity"), json!("Infinity"));
        assert_eq!(map(701, "-Infinity"), json!("-Infinity"));
    }

    #[test]
    fn bools() {
        assert_eq!(map(16, "t"), json!(true));
        assert_eq!(map(16, "f"), json!(false));
        assert_eq!(map(16, "maybe"), json!("maybe"));
    }

    #[test]
    fn json_is_embedded() {
        assert_eq!(
            map(3802, r#"{"a": [1, 2.5, null], "b": {"c": "d"}}"#),
            json!({"a": [1, 2.5, null], "b": {"c": "d"}})
        );
        assert_eq!(map(114, "\"str\""), json!("str"));
        assert_eq!(map(114, "12"), json!(12));
        assert_eq!(map(3802, "{not json"), json!("{not json"));
        // Too deep for serde_json's recursion limit: a string, not a crash.
        let deep = "[".repeat(10_000);
        assert_eq!(map(3802, &deep), json!(deep));
    }

    #[test]
    fn numeric_stays_a_string() {
        assert_eq!(
            map(1700, "12345678901234567890.000000000001"),
            json!("12345678901234567890.000000000001")
        );
        assert_eq!(map(1700, "NaN"), json!("NaN"));
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            map(1114, "2024-01-02 03:04:05.678"),
            json!("2024-01-02T03:04:05.678Z")
        );
        assert_eq!(
            map(1114, "2024-01-02 03:04:05"),
            json!("2024-01-02T03:04:05Z")
        );
        assert_eq!(
            map(1114, "2024-01-02 03:04:05.123456"),
            json!("2024-01-02T03:04:05.123456Z")
        );
        assert_eq!(map(1114, "infinity"), json!("infinity"));
        assert_eq!(map(1114, "-infinity"), json!("-infinity"));
        assert_eq!(
            map(1114, "0044-03-15 12:00:00 BC"),
            json!("0044-03-15 12:00:00 BC")
        );
        // An offset on a timestamp without time zone is not the ISO shape.
        assert_eq!(
            map(1114, "2024-01-02 03:04:05+00"),
            json!("2024-01-02 03:04:05+00")
        );
        assert_eq!(
            map(1114, "Tue Jan 02 03:04:05 2024"),
            json!("Tue Jan 02 03:04:05 2024")
        );
    }

    #[test]
    fn timestamptz() {
        assert_eq!(
            map(1184, "2024-01-02 03:04:05.678+00"),
            json!("2024-01-02T03:04:05.678Z")
        );
        assert_eq!(
            map(1184, "2024-01-02 03:04:05+05:30"),
            json!("2024-01-02T03:04:05+05:30")
        );
        assert_eq!(
            map(1184, "2024-01-02 03:04:05.5-08"),
            json!("2024-01-02T03:04:05.5-08:00")
        );
        assert_eq!(
            map(1184, "1850-01-01 00:00:00+00:53:28"),
            json!("1850-01-01 00:00:00+00:53:28")
        );
        assert_eq!(
            map(1184, "1850-01-01 00:00:00+01:00:00"),
            json!("1850-01-01T00:00:00+01:00")
        );
        assert_eq!(map(1184, "infinity"), json!("infinity"));
        assert_eq!(
            map(1184, "0001-01-01 00:00:00+00 BC"),
            json!("0001-01-01 00:00:00+00 BC")
        );
        // No offset at all is not timestamptz output.
        assert_eq!(
            map(1184, "2024-01-02 03:04:05"),
            json!("2024-01-02 03:04:05")
        );
    }

    #[test]
    fn text_like_types_stay_text() {
        assert_eq!(map(1082, "2024-01-02"), json!("2024-01-02"));
        assert_eq!(map(1083, "03:04:05"), json!("03:04:05"));
        assert_eq!(
            map(2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
        assert_eq!(map(25, "42"), json!("42"));
        assert_eq!(map(1043, "t"), json!("t"));
        assert_eq!(map(16_400, "ADMIN"), json!("ADMIN"));
    }

    #[test]
    fn invalid_utf8_is_lossy() {
        let v = TypeRegistry::default()
            .to_json(25, &TupleValue::Text(Bytes::from_static(b"ab\xffc")))
            .unwrap();
        assert_eq!(v, json!("ab\u{fffd}c"));
    }

    #[test]
    fn arrays_of_numbers_and_bools() {
        assert_eq!(map(1007, "{1,2,NULL}"), json!([1, 2, null]));
        assert_eq!(map(1005, "{}"), json!([]));
        assert_eq!(
            map(1016, "{9223372036854775807}").to_string(),
            "[9223372036854775807]"
        );
        assert_eq!(
            map(1022, "{1.5,NaN,-Infinity}"),
            json!([1.5, "NaN", "-Infinity"])
        );
        assert_eq!(map(1021, "{0.1}").to_string(), "[0.1]");
        assert_eq!(map(1000, "{t,f,NULL}"), json!([true, false, null]));
        assert_eq!(map(1231, "{1.10,NaN}"), json!(["1.10", "NaN"]));
    }

    #[test]
    fn nested_arrays_and_dimensions() {
        assert_eq!(map(1007, "{{1,2},{3,4}}"), json!([[1, 2], [3, 4]]));
        assert_eq!(map(1007, "[0:1]={1,2}"), json!([1, 2]));
        assert_eq!(
            map(1007, "[1:2][-1:0]={{1,2},{3,4}}"),
            json!([[1, 2], [3, 4]])
        );
        assert_eq!(map(1007, "{{{{{{1}}}}}}"), json!([[[[[[1]]]]]]));
        // Beyond Postgres's MAXDIM: the text.
        assert_eq!(map(1007, "{{{{{{{1}}}}}}}"), json!("{{{{{{{1}}}}}}}"));
        let deep = "{".repeat(100_000);
        assert_eq!(map(1007, &deep), json!(deep));
    }

    #[test]
    fn quoted_array_elements() {
        assert_eq!(
            map(1009, r#"{"a b","c\"d","e\\f",plain,"NULL",NULL,"",null}"#),
            json!(["a b", "c\"d", "e\\f", "plain", "NULL", null, "", null])
        );
        assert_eq!(
            map(1015, r#"{"with,comma","{brace}",é}"#),
            json!(["with,comma", "{brace}", "é"])
        );
        // Escapes in unquoted elements; an escaped NULL is the string.
        assert_eq!(map(1009, r"{a\,b,\NULL}"), json!(["a,b", "NULL"]));
        // Whitespace around elements is not part of them.
        assert_eq!(map(1009, "{ a , b c }"), json!(["a", "b c"]));
        assert_eq!(
            map(1009, "{{a,\"b\"},{NULL,d}}"),
            json!([["a", "b"], [null, "d"]])
        );
    }

    #[test]
    fn arrays_of_json_and_timestamps() {
        assert_eq!(
            map(3807, r#"{"{\"a\": 1}","[1, 2]",NULL}"#),
            json!([{"a": 1}, [1, 2], null])
        );
        assert_eq!(map(199, r#"{"\"s\""}"#), json!(["s"]));
        assert_eq!(
            map(
                1185,
                r#"{"2024-01-02 03:04:05+00","2024-01-02 03:04:05.1-08",infinity}"#
            ),
            json!([
                "2024-01-02T03:04:05Z",
                "2024-01-02T03:04:05.1-08:00",
                "infinity"
            ])
        );
        assert_eq!(
            map(1115, r#"{"2024-01-02 03:04:05"}"#),
            json!(["2024-01-02T03:04:05Z"])
        );
        assert_eq!(map(1182, "{2024-01-02,NULL}"), json!(["2024-01-02", null]));
        assert_eq!(
            map(2951, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"),
            json!(["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"])
        );
    }

    #[test]
    fn malformed_arrays_are_text() {
        for text in [
            "",
            "{",
            "{1,2",
            "{1,,2}",
            "{1,}",
            "{,1}",
            "{1}x",
            "1,2",
            "{\"a}",
            "{a\"b}",
            "{\\",
            "[1:2]{1,2}",
            "[]={1}",
            "[1:2={1}",
        ] {
            assert_eq!(map(1009, text), json!(text), "{text:?}");
        }
        // The array is fine but its elements are not integers: strings.
        assert_eq!(map(1007, "{x,1}"), json!(["x", 1]));
    }

    #[test]
    fn registered_array_types() {
        let mut types = TypeRegistry::default();
        types.remember(16_400, "public", "UserRole");
        types.remember(16_401, "public", "_UserRole");
        let text = |s: &'static str| TupleValue::Text(Bytes::from_static(s.as_bytes()));
        assert_eq!(types.to_json(16_400, &text("ADMIN")), Some(json!("ADMIN")));
        assert_eq!(
            types.to_json(16_401, &text("{ADMIN,MEMBER}")),
            Some(json!(["ADMIN", "MEMBER"]))
        );
        // Elements of custom arrays stay text, even if they look like numbers.
        assert_eq!(
            types.to_json(16_401, &text("{1,NULL}")),
            Some(json!(["1", null]))
        );
        // Unknown before announcement; re-announcement replaces.
        assert_eq!(types.to_json(16_402, &text("{a}")), Some(json!("{a}")));
        types.remember(16_401, "public", "Renamed");
        assert_eq!(types.get(16_401), Some(("public", "Renamed")));
        assert_eq!(types.to_json(16_401, &text("{a}")), Some(json!("{a}")));
    }

    fn relation() -> Relation {
        let column = |name: &str, type_oid| Column {
            flags: 0,
            name: name.into(),
            type_oid,
            type_modifier: -1,
        };
        Relation::new(
            16_385,
            "public".into(),
            "Task".into(),
            b'f',
            vec![
                column("id", 25),
                column("count", 23),
                column("body", 25),
                column("deletedAt", 1114),
            ],
        )
    }

    fn text(s: &'static str) -> TupleValue {
        TupleValue::Text(Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn row_maps_by_column_and_skips_unchanged_toast() {
        let tuple = Tuple(vec![
            text("t1"),
            text("3"),
            TupleValue::UnchangedToast,
            TupleValue::Null,
        ]);
        let row = row(&relation(), &tuple, &TypeRegistry::default(), usize::MAX);
        assert_eq!(
            Value::Object(row),
            json!({"id": "t1", "count": 3, "deletedAt": null})
        );
    }

    #[test]
    fn values_over_the_limit_become_markers() {
        let big = "y".repeat(100);
        let tuple = Tuple(vec![
            text("t1"),
            text("3"),
            TupleValue::Text(bytes::Bytes::from(big.clone())),
            TupleValue::Binary(bytes::Bytes::from(vec![1u8; 100])),
        ]);
        let row = row(&relation(), &tuple, &TypeRegistry::default(), 99);
        assert_eq!(row["id"], "t1");
        assert_eq!(row["count"], 3);
        assert_eq!(
            row.values()
                .filter(|v| crate::event_size::is_oversize(v))
                .count(),
            2
        );
        assert_eq!(
            row.values().find(|v| crate::event_size::is_oversize(v)),
            Some(&crate::event_size::oversize(big.as_bytes()))
        );
    }

    #[test]
    fn row_with_mismatched_lengths() {
        let types = TypeRegistry::default();
        let short = Tuple(vec![text("t1")]);
        assert_eq!(
            Value::Object(row(&relation(), &short, &types, usize::MAX)),
            json!({"id": "t1"})
        );
        let long = Tuple(vec![TupleValue::Null; 9]);
        assert_eq!(row(&relation(), &long, &types, usize::MAX).len(), 4);
        assert!(row(&relation(), &Tuple::default(), &types, usize::MAX).is_empty());
    }

    const OIDS: &[u32] = &[
        16, 20, 21, 23, 25, 26, 114, 700, 701, 1082, 1114, 1184, 1700, 3802, 199, 1000, 1005, 1007,
        1009, 1015, 1016, 1021, 1022, 1115, 1182, 1185, 1231, 2951, 3807, 16_401,
    ];

    fn registry() -> TypeRegistry {
        let mut types = TypeRegistry::default();
        types.remember(16_401, "public", "_UserRole");
        types
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3_000))]

        #[test]
        fn to_json_never_panics_on_bytes(
            type_oid in prop::sample::select(OIDS),
            data in proptest::collection::vec(any::<u8>(), 0..128),
            binary in any::<bool>(),
        ) {
            let data = Bytes::from(data);
            let value = if binary { TupleValue::Binary(data) } else { TupleValue::Text(data) };
            prop_assert!(registry().to_json(type_oid, &value).is_some());
        }

        /// Text made of array and timestamp syntax, to reach the parsers' corners.
        #[test]
        fn to_json_never_panics_on_syntax(
            type_oid in prop::sample::select(OIDS),
            text in r#"[\[\]{}",\\ :=+\-.0-9NULaé\t]{0,80}"#,
        ) {
            let value = TupleValue::Text(Bytes::from(text.clone()));
            let mapped = registry().to_json(type_oid, &value);
            prop_assert!(mapped.is_some());
        }
    }
}
