//! A small JSON reader (RFC 8259) for configs, and the decimal parser it shares with numeric
//! rules. Our own rather than serde_json's: the filter pays for every byte per worker, and a
//! config needs only a value tree, a position for syntax errors and a canonical text.
//!
//! What the config walk relies on: an object's entries iterate in sorted key order (rollouts,
//! flags and the order of errors depend on it), a key given twice in one object is a syntax
//! error, nesting is limited to [`MAX_DEPTH`] (a hostile config cannot exhaust the stack), and
//! a number keeps its source text (error messages quote it, the revision hashes it).

use core::fmt;

use crate::error::{ConfigError, ErrorKind};

/// How deeply arrays and objects may nest; serde_json's limit, so that the same configs parse.
pub const MAX_DEPTH: usize = 128;

/// A parsed JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A finite number, with its source text.
    Number(Number),
    /// A string, unescaped.
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object, its entries sorted by key.
    Object(Object),
}

/// A JSON number: its text as written and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Number {
    text: String,
    value: f64,
}

/// A JSON object: entries sorted by key, each key once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Object(Vec<(String, Value)>);

impl Value {
    /// The object, if this is one.
    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The array, if this is one.
    pub fn as_array(&self) -> Option<&Vec<Value>> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The number, if this is one.
    pub fn as_number(&self) -> Option<&Number> {
        match self {
            Value::Number(n) => Some(n),
            _ => None,
        }
    }

    /// The number's value, if this is a number.
    pub fn as_f64(&self) -> Option<f64> {
        self.as_number().map(Number::as_f64)
    }

    /// The number, if it is written as a non-negative integer that fits a `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_number().and_then(Number::as_u64)
    }

    /// The value of `key`, if this is an object that has it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_object().and_then(|o| o.get(key))
    }
}

impl Number {
    /// The value (finite: the reader refuses numbers out of range).
    pub fn as_f64(&self) -> f64 {
        self.value
    }

    /// The value, if written as a non-negative integer (no sign, fraction or exponent) that
    /// fits a `u64`, as serde_json reads integers.
    pub fn as_u64(&self) -> Option<u64> {
        self.text.bytes().try_fold(0u64, |n, b| {
            let digit = if b.is_ascii_digit() {
                b - b'0'
            } else {
                return None;
            };
            n.checked_mul(10)?.checked_add(u64::from(digit))
        })
    }
}

impl Object {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let i = self.0.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok()?;
        self.0.get(i).map(|(_, v)| v)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }

    /// The entries, sorted by key.
    pub fn iter(&self) -> Entries<'_> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The iterator over an object's entries, sorted by key.
pub type Entries<'a> = core::iter::Map<
    core::slice::Iter<'a, (String, Value)>,
    fn(&'a (String, Value)) -> (&'a String, &'a Value),
>;

impl<'a> IntoIterator for &'a Object {
    type Item = (&'a String, &'a Value);
    type IntoIter = Entries<'a>;

    fn into_iter(self) -> Entries<'a> {
        self.iter()
    }
}

/// The canonical text: no whitespace, keys sorted, numbers as written, strings escaped as
/// serde_json escapes them. Error messages quote it and a rollout's revision hashes it.
/// FNV-1a 64 of text as it is written, without building it (FNV-1a goes byte by byte): how a
/// config's and a rollout's revisions hash their canonical text.
#[derive(Default)]
pub(crate) struct TextHash(fnv::FnvHasher);

impl TextHash {
    /// The hash of everything written so far.
    pub(crate) fn finish(&self) -> u64 {
        core::hash::Hasher::finish(&self.0)
    }
}

impl fmt::Write for TextHash {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        core::hash::Hasher::write(&mut self.0, s.as_bytes());
        Ok(())
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => f.write_str(if *b { "true" } else { "false" }),
            Value::Number(n) => f.write_str(&n.text),
            Value::String(s) => write_string(f, s),
            Value::Array(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    fmt::Display::fmt(item, f)?;
                }
                f.write_str("]")
            }
            Value::Object(o) => {
                f.write_str("{")?;
                for (i, (key, value)) in o.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write_string(f, key)?;
                    f.write_str(":")?;
                    fmt::Display::fmt(value, f)?;
                }
                f.write_str("}")
            }
        }
    }
}

/// The number as written.
impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A JSON string: quotes, backslashes and control characters escaped, nothing else.
fn write_string(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    let mut plain = 0;
    for (i, c) in s.char_indices() {
        let escaped = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            '\u{8}' => "\\b",
            '\u{c}' => "\\f",
            c if c < ' ' => "",
            _ => continue,
        };
        f.write_str(s.get(plain..i).unwrap_or_default())?;
        if escaped.is_empty() {
            write!(f, "\\u{:04x}", u32::from(c))?;
        } else {
            f.write_str(escaped)?;
        }
        plain = i + c.len_utf8();
    }
    f.write_str(s.get(plain..).unwrap_or_default())?;
    f.write_str("\"")
}

/// Parses one JSON document (whitespace around it allowed). A syntax error is a
/// [`ErrorKind::Syntax`] at the root, with the 1-based line and column (in bytes) where
/// serde_json would put it: the offending byte, or the last byte at the end of the input.
pub fn parse(bytes: &[u8]) -> Result<Value, ConfigError> {
    let mut reader = Reader { bytes, pos: 0 };
    let value = reader.value(MAX_DEPTH).and_then(|value| {
        reader.skip_ws();
        match reader.peek() {
            None => Ok(value),
            Some(_) => Err(reader.fail("trailing characters")),
        }
    });
    value.map_err(|Fail { message, at }| {
        let before = bytes.get(..at).unwrap_or(bytes);
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        ConfigError {
            path: String::new(),
            kind: ErrorKind::Syntax {
                message,
                line: 1 + before.iter().filter(|&&b| b == b'\n').count(),
                column: at - line_start,
            },
        }
    })
}

/// A syntax error: its message, and how many bytes were read when it was found.
struct Fail {
    message: String,
    at: usize,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// An error at the byte under the cursor (counted as read), or at the end of the input.
    fn fail(&self, message: &str) -> Fail {
        self.fail_at(self.pos, message.to_owned())
    }

    fn fail_at(&self, pos: usize, message: String) -> Fail {
        Fail {
            message,
            at: (pos + 1).min(self.bytes.len()),
        }
    }

    /// The error for the byte under the cursor: `eof` at the end of the input, else `message`.
    fn unexpected(&self, eof: &str, message: &str) -> Fail {
        self.fail(if self.pos >= self.bytes.len() {
            eof
        } else {
            message
        })
    }

    fn eat(&mut self, byte: u8) -> bool {
        let hit = self.peek() == Some(byte);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// One value; `depth` is how many more arrays and objects may open.
    fn value(&mut self, depth: usize) -> Result<Value, Fail> {
        self.skip_ws();
        match self.peek() {
            Some(b'n') => self.literal(b"null", Value::Null),
            Some(b't') => self.literal(b"true", Value::Bool(true)),
            Some(b'f') => self.literal(b"false", Value::Bool(false)),
            Some(b'"') => {
                self.pos += 1;
                self.string().map(Value::String)
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(open @ (b'[' | b'{')) => {
                let Some(depth) = depth.checked_sub(1) else {
                    return Err(self.fail("recursion limit exceeded"));
                };
                self.pos += 1;
                if open == b'[' {
                    self.array(depth)
                } else {
                    self.object(depth)
                }
            }
            _ => Err(self.unexpected("EOF while parsing a value", "expected value")),
        }
    }

    fn literal(&mut self, word: &[u8], value: Value) -> Result<Value, Fail> {
        for &want in word {
            if !self.eat(want) {
                return Err(self.unexpected("EOF while parsing a value", "expected ident"));
            }
        }
        Ok(value)
    }

    fn array(&mut self, depth: usize) -> Result<Value, Fail> {
        let mut items = Vec::new();
        self.skip_ws();
        if self.eat(b']') {
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value(depth)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                    if self.peek() == Some(b']') {
                        return Err(self.fail("trailing comma"));
                    }
                }
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => {
                    return Err(self.unexpected("EOF while parsing a list", "expected `,` or `]`"));
                }
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, Fail> {
        const EOF: &str = "EOF while parsing an object";
        // (key, value, where the key ends): the position names a duplicate.
        let mut entries: Vec<(String, Value, usize)> = Vec::new();
        self.skip_ws();
        if !self.eat(b'}') {
            loop {
                self.skip_ws();
                if !self.eat(b'"') {
                    return Err(self.unexpected(EOF, "key must be a string"));
                }
                let key = self.string()?;
                let key_end = self.pos - 1;
                self.skip_ws();
                if !self.eat(b':') {
                    return Err(self.unexpected(EOF, "expected `:`"));
                }
                let value = self.value(depth)?;
                entries.push((key, value, key_end));
                self.skip_ws();
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        self.skip_ws();
                        if self.peek() == Some(b'}') {
                            return Err(self.fail("trailing comma"));
                        }
                    }
                    Some(b'}') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(self.unexpected(EOF, "expected `,` or `}`")),
                }
            }
        }
        // Equal keys stay in source order (ties go by position): the first repeat in the
        // source is the one reported, as a reader that stopped there would. An unstable sort
        // with that tie-break gives the stable order; the stable sort is ~1 KB more code in
        // the filter.
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.2.cmp(&b.2)));
        let repeat = entries
            .windows(2)
            .filter_map(|pair| match pair {
                [a, b] if a.0 == b.0 => Some(b),
                _ => None,
            })
            .min_by_key(|e| e.2);
        if let Some((key, _, at)) = repeat {
            return Err(self.fail_at(*at, format!("duplicate key {key:?}")));
        }
        Ok(Value::Object(Object(
            entries.into_iter().map(|(k, v, _)| (k, v)).collect(),
        )))
    }

    /// A string's contents, after its opening quote, through its closing quote.
    fn string(&mut self) -> Result<String, Fail> {
        const EOF: &str = "EOF while parsing a string";
        let mut out = String::new();
        loop {
            let start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            let run = self.bytes.get(start..self.pos).unwrap_or_default();
            // Runs end at ASCII bytes, so a run that is not UTF-8 by itself is not UTF-8.
            match core::str::from_utf8(run) {
                Ok(text) => out.push_str(text),
                Err(e) => {
                    let at = start + e.valid_up_to();
                    return Err(self.fail_at(at, "invalid unicode code point".to_owned()));
                }
            }
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let c = self.escape()?;
                    out.push(c);
                }
                _ => {
                    return Err(self.unexpected(
                        EOF,
                        "control character (\\u0000-\\u001F) found while parsing a string",
                    ));
                }
            }
        }
    }

    /// The character of an escape, after its backslash.
    fn escape(&mut self) -> Result<char, Fail> {
        let c = match self.peek() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.pos += 1;
                return self.unicode_escape();
            }
            _ => {
                return Err(self.unexpected("EOF while parsing a string", "invalid escape"));
            }
        };
        self.pos += 1;
        Ok(c)
    }

    /// `XXXX` after `\u`, with the `\uXXXX` of a low surrogate after a high one.
    fn unicode_escape(&mut self) -> Result<char, Fail> {
        const LONE: &str = "lone leading surrogate in hex escape";
        let start = self.pos;
        let high = self.hex4()?;
        let code = match high {
            0xD800..=0xDBFF => {
                if !(self.eat(b'\\') && self.eat(b'u')) {
                    return Err(self.unexpected("EOF while parsing a string", LONE));
                }
                let low = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return Err(self.fail_at(self.pos - 1, LONE.to_owned()));
                }
                0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
            }
            _ => high,
        };
        // A lone low surrogate is not a character.
        char::from_u32(code).ok_or_else(|| {
            self.fail_at(
                start + 3,
                "lone trailing surrogate in hex escape".to_owned(),
            )
        })
    }

    fn hex4(&mut self) -> Result<u32, Fail> {
        let mut n = 0;
        for _ in 0..4 {
            let digit = self.peek().and_then(|b| char::from(b).to_digit(16));
            let Some(digit) = digit else {
                return Err(self.unexpected("EOF while parsing a string", "invalid escape"));
            };
            n = n * 16 + digit;
            self.pos += 1;
        }
        Ok(n)
    }

    /// Consumes ASCII digits; whether there was at least one.
    fn digits(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos > start
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, and finite.
    fn number(&mut self) -> Result<Value, Fail> {
        const EOF: &str = "EOF while parsing a value";
        const INVALID: &str = "invalid number";
        let start = self.pos;
        self.eat(b'-');
        if self.eat(b'0') {
            if self.peek().is_some_and(|b| b.is_ascii_digit()) {
                return Err(self.fail(INVALID));
            }
        } else if !self.digits() {
            return Err(self.unexpected(EOF, INVALID));
        }
        if self.eat(b'.') && !self.digits() {
            return Err(self.unexpected(EOF, INVALID));
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if !self.digits() {
                return Err(self.unexpected(EOF, INVALID));
            }
        }
        let text = self.bytes.get(start..self.pos).unwrap_or_default();
        let text = core::str::from_utf8(text).unwrap_or_default();
        match parse_decimal(text).filter(|v| v.is_finite()) {
            Some(value) => Ok(Value::Number(Number {
                text: text.to_owned(),
                value,
            })),
            None => Err(self.fail_at(start, "number out of range".to_owned())),
        }
    }
}

/// Parses a decimal number: an optional sign, digits with an optional point (`5`, `.5`,
/// `5.`), an optional exponent (`e-3`, `E+7`). `None` for anything else, including the
/// `inf` and `nan` that std's parser also takes (numeric rules drop non-finite values).
///
/// Exact where it matters: when the digits fit 2^53 and the power of ten is at most 22 (every
/// configured threshold and ordinary header value), the result is one IEEE multiplication or
/// division of two exact values, hence correctly rounded. Otherwise the value is scaled by
/// 1e22 a step at a time: each step rounds once, so the result is within (2 + |exp| / 22)
/// roundings, under 2^-48 relative for a normal result, far below what a rule can tell; the
/// tests measure it against std's parser. Beyond 19 significant digits the rest are dropped
/// (a relative error under 1e-18).
pub(crate) fn parse_decimal(text: &str) -> Option<f64> {
    let mut bytes = text.bytes().peekable();
    let negative = bytes.next_if(|&b| b == b'-' || b == b'+') == Some(b'-');
    let (mut mantissa, mut exp10, mut digits, mut exact, mut point) = (0u64, 0i64, 0, true, false);
    while let Some(b) = bytes.next_if(|&b| b.is_ascii_digit() || (b == b'.' && !point)) {
        if b == b'.' {
            point = true;
            continue;
        }
        digits += 1;
        let digit = u64::from(b - b'0');
        // Below 10^18, one more digit fits a u64.
        if mantissa < 1_000_000_000_000_000_000 {
            mantissa = mantissa * 10 + digit;
            exp10 -= i64::from(point);
        } else {
            exact &= digit == 0;
            exp10 += i64::from(!point);
        }
    }
    if digits == 0 {
        return None;
    }
    if bytes.next_if(|&b| b == b'e' || b == b'E').is_some() {
        let negative = bytes.next_if(|&b| b == b'-' || b == b'+') == Some(b'-');
        let mut exp = 0i64;
        let mut any = false;
        while let Some(b) = bytes.next_if(u8::is_ascii_digit) {
            any = true;
            // Past this every mantissa is 0 or infinite.
            exp = (exp * 10 + i64::from(b - b'0')).min(100_000);
        }
        if !any {
            return None;
        }
        exp10 += if negative { -exp } else { exp };
    }
    if bytes.next().is_some() {
        return None;
    }
    // Above 2^53 this conversion rounds once, within the bound above.
    let mut value = mantissa as f64;
    if mantissa != 0 {
        if !(exact && mantissa <= 1 << 53 && (-22..=22).contains(&exp10)) {
            let mut exp = exp10.clamp(-800, 800);
            while exp > 22 {
                value *= 1e22;
                exp -= 22;
            }
            while exp < -22 {
                value /= 1e22;
                exp += 22;
            }
            exp10 = exp;
        }
        // Every power of ten up to 1e22 is an exact f64, and so is each product on the way.
        let mut power = 1.0;
        for _ in 0..exp10.unsigned_abs() {
            power *= 10.0;
        }
        value = if exp10 < 0 {
            value / power
        } else {
            value * power
        };
    }
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::{MAX_DEPTH, Value, parse, parse_decimal};
    use crate::error::ErrorKind;

    /// The syntax error of `text`, as (message, line, column).
    fn error(text: &str) -> (String, usize, usize) {
        match parse(text.as_bytes()).map_err(|e| (e.path, e.kind)) {
            Err((
                path,
                ErrorKind::Syntax {
                    message,
                    line,
                    column,
                },
            )) if path.is_empty() => (message, line, column),
            other => panic!("{text:?}: {other:?}"),
        }
    }

    fn ok(text: &str) -> Value {
        parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    #[test]
    fn values_of_every_kind_parse_with_their_accessors() {
        let v = ok(
            r#" {"s": "x", "n": -1.5e2, "i": 42, "t": true, "f": false, "z": null,
                      "a": [1, "2", [], {}], "o": {"k": "v"}} "#,
        );
        assert_eq!(v.get("s").and_then(Value::as_str), Some("x"));
        assert_eq!(v.get("n").and_then(Value::as_f64), Some(-150.0));
        assert_eq!(v.get("i").and_then(Value::as_u64), Some(42));
        assert_eq!(v.get("t").and_then(Value::as_bool), Some(true));
        assert_eq!(v.get("f").and_then(Value::as_bool), Some(false));
        assert_eq!(v.get("z"), Some(&Value::Null));
        assert_eq!(v.get("a").and_then(Value::as_array).map(Vec::len), Some(4));
        assert_eq!(
            v.get("o").and_then(|o| o.get("k")).and_then(Value::as_str),
            Some("v")
        );
        assert_eq!(v.get("missing"), None);
        assert_eq!(v.get("s").and_then(Value::as_f64), None);
        assert_eq!(v.get("a").and_then(|a| a.get("k")), None);
        assert!(
            v.as_object()
                .is_some_and(|o| o.contains_key("o") && o.len() == 8)
        );
    }

    #[test]
    fn object_entries_iterate_in_sorted_key_order() {
        let v = ok(r#"{"b": 1, "a": 2, "c": {"z": 0, "y": 0}, "B": 3}"#);
        let object = v.as_object().unwrap();
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        assert_eq!(keys, ["B", "a", "b", "c"]);
        let values: Vec<String> = object.iter().map(|(_, v)| v.to_string()).collect();
        assert_eq!(values, ["3", "2", "1", r#"{"y":0,"z":0}"#]);
        assert_eq!(object.get("a").and_then(Value::as_u64), Some(2));
    }

    #[test]
    fn a_duplicate_key_is_a_syntax_error_naming_the_first_repeat() {
        assert_eq!(
            error("{\"a\": 1,\n \"b\": 2, \"a\": 3, \"b\": 4}"),
            ("duplicate key \"a\"".to_owned(), 2, 12)
        );
        // Nested: the inner object's repeat is found.
        assert_eq!(error(r#"{"x": {"k": 1, "k": 1}}"#).0, "duplicate key \"k\"");
        // The same key in two objects is not a repeat.
        ok(r#"{"x": {"k": 1}, "y": {"k": 1}}"#);
    }

    #[test]
    fn in_a_large_object_the_first_repeat_in_the_source_is_named() {
        // Enough keys for the sort to partition rather than insert, and a key written three
        // times among many repeats of another: each copy of a key is ordered by position.
        let mut keys: Vec<String> = (0..200).map(|i| format!("k{}", (i * 73) % 200)).collect();
        for i in 0..40 {
            keys.insert(20 + 4 * i, "k5".to_owned());
        }
        let text = format!(
            "{{{}}}",
            keys.iter()
                .enumerate()
                .map(|(i, k)| format!("\"{k}\": {i}"))
                .collect::<Vec<_>>()
                .join(",\n")
        );
        let first = keys
            .iter()
            .enumerate()
            .position(|(i, k)| keys[..i].contains(k));
        let line = first.unwrap() + 1;
        assert_eq!(error(&text), ("duplicate key \"k5\"".to_owned(), line, 4));
        // Without repeats, every key reads back its own value.
        let distinct: Vec<String> = (0..200).map(|i| format!("k{}", (i * 73) % 200)).collect();
        let text = format!(
            "{{{}}}",
            distinct
                .iter()
                .enumerate()
                .map(|(i, k)| format!("\"{k}\": {i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let value = ok(&text);
        let object = value.as_object().unwrap();
        assert!(object.keys().zip(object.keys().skip(1)).all(|(a, b)| a < b));
        for (i, k) in distinct.iter().enumerate() {
            assert_eq!(object.get(k).and_then(Value::as_u64), Some(i as u64), "{k}");
        }
    }

    #[test]
    fn as_u64_only_for_non_negative_integers_as_written() {
        let n = |text: &str| ok(text).as_u64();
        assert_eq!(n("0"), Some(0));
        assert_eq!(n("18446744073709551615"), Some(u64::MAX));
        assert_eq!(n("18446744073709551616"), None);
        for text in ["-1", "-0", "1.0", "1e2", "1E2", "0.5"] {
            assert_eq!(n(text), None, "{text}");
            assert!(ok(text).as_f64().is_some(), "{text}");
        }
    }

    #[test]
    fn syntax_errors_have_serde_json_messages_and_positions() {
        let cases: &[(&str, &str, usize, usize)] = &[
            ("{\"rollouts\": {", "EOF while parsing an object", 1, 14),
            ("{} x", "trailing characters", 1, 4),
            ("", "EOF while parsing a value", 1, 0),
            ("{\n  \"a\": x}", "expected value", 2, 8),
            ("{\"a\" 1}", "expected `:`", 1, 6),
            ("{\"a\": 1 \"b\": 2}", "expected `,` or `}`", 1, 9),
            ("[1 2]", "expected `,` or `]`", 1, 4),
            ("[1,", "EOF while parsing a value", 1, 3),
            ("[1", "EOF while parsing a list", 1, 2),
            ("[1,]", "trailing comma", 1, 4),
            ("{\"a\":1,}", "trailing comma", 1, 8),
            ("{1: 2}", "key must be a string", 1, 2),
            ("{nope", "key must be a string", 1, 2),
            ("nul", "EOF while parsing a value", 1, 3),
            ("nulL", "expected ident", 1, 4),
            ("\"abc", "EOF while parsing a string", 1, 4),
            (
                "\"a\nb\"",
                "control character (\\u0000-\\u001F) found while parsing a string",
                2,
                0,
            ),
            ("\"\\x\"", "invalid escape", 1, 3),
            ("\"\\u12G4\"", "invalid escape", 1, 6),
            ("\"\\uD800\"", "lone leading surrogate in hex escape", 1, 8),
            (
                "\"\\uD800\\u0041\"",
                "lone leading surrogate in hex escape",
                1,
                13,
            ),
            ("\"\\uDC00\"", "lone trailing surrogate in hex escape", 1, 7),
            ("-", "EOF while parsing a value", 1, 1),
            ("-x", "invalid number", 1, 2),
            ("01", "invalid number", 1, 2),
            ("1.", "EOF while parsing a value", 1, 2),
            ("1.e3", "invalid number", 1, 3),
            ("1e+", "EOF while parsing a value", 1, 3),
            ("1e400", "number out of range", 1, 1),
            ("-1e400", "number out of range", 1, 1),
            ("+1", "expected value", 1, 1),
            ("NaN", "expected value", 1, 1),
        ];
        for &(text, message, line, column) in cases {
            assert_eq!(error(text), (message.to_owned(), line, column), "{text:?}");
        }
    }

    #[test]
    fn strings_unescape_including_surrogate_pairs() {
        let v = ok(r#""a\"b\\c\/d\b\f\n\r\t\u00e9\u20AC\ud83d\ude00 é""#);
        assert_eq!(
            v.as_str(),
            Some("a\"b\\c/d\u{8}\u{c}\n\r\t\u{e9}\u{20ac}\u{1f600} é")
        );
    }

    #[test]
    fn invalid_utf8_is_refused_where_it_starts() {
        for (bytes, column) in [
            (&b"\"ab\xff\""[..], 4),
            (b"\"\xc3\"", 2),
            (b"\"\xed\xa0\x80\"", 2),
            (b"[\"\xe9\"]", 3),
        ] {
            match parse(bytes).map_err(|e| e.kind) {
                Err(ErrorKind::Syntax {
                    message,
                    line: 1,
                    column: c,
                }) => {
                    assert_eq!(
                        (message.as_str(), c),
                        ("invalid unicode code point", column)
                    );
                }
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
        // Outside a string a non-ASCII byte is no value.
        assert_eq!(
            parse(b"\xff").map_err(|e| e.to_string()),
            Err("(root): not valid JSON at line 1 column 1: expected value".to_owned())
        );
    }

    #[test]
    fn nesting_is_limited_to_max_depth() {
        let nested = |n: usize| "[".repeat(n) + &"]".repeat(n);
        ok(&nested(MAX_DEPTH));
        assert_eq!(
            error(&nested(MAX_DEPTH + 1)),
            ("recursion limit exceeded".to_owned(), 1, MAX_DEPTH + 1)
        );
        // Far deeper input fails the same way instead of exhausting the stack.
        assert_eq!(
            error(&"{\"a\":".repeat(100_000)).0,
            "recursion limit exceeded"
        );
    }

    #[test]
    fn canonical_text_sorts_keys_drops_whitespace_and_keeps_numbers_as_written() {
        let v = ok(
            "{ \"b\" : [ 1.50 , -0 , 1E3 ] ,\n \"a\" : \"q\\\"\\\\\\n\\u0001\\u00e9\\/\" , \"c\": null, \"d\": true }",
        );
        assert_eq!(
            v.to_string(),
            "{\"a\":\"q\\\"\\\\\\n\\u0001\u{e9}/\",\"b\":[1.50,-0,1E3],\"c\":null,\"d\":true}"
        );
        // It reads back as the same value.
        assert_eq!(ok(&v.to_string()), v);
    }

    #[test]
    fn malformed_inputs_never_panic() {
        // Every prefix of a document exercises each EOF path; each must be an error or a value.
        let doc = br#"{"a": [1, -2.5e-3, "x\u00e9\ud83d\ude00", true, false, null, {"b": {}}], "c": "\n"}"#;
        for end in 0..=doc.len() {
            let prefix = doc.get(..end).unwrap_or_default();
            assert_eq!(parse(prefix).is_ok(), end == doc.len(), "{end}");
        }
        // And every single-byte corruption of it.
        for i in 0..doc.len() {
            for b in [b'"', b'\\', b'{', b']', b',', b':', 0, 0xff, b'e', b'-'] {
                let mut bad = doc.to_vec();
                if let Some(slot) = bad.get_mut(i) {
                    *slot = b;
                }
                let _ = parse(&bad);
            }
        }
    }

    /// A small deterministic generator for the number tests.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// How many representable doubles lie between two finite values of the same sign.
    fn ulps(a: f64, b: f64) -> u64 {
        (a.abs().to_bits()).abs_diff(b.abs().to_bits())
    }

    fn oracle(text: &str) -> Option<f64> {
        text.parse::<f64>().ok().filter(|v| v.is_finite())
    }

    #[test]
    fn the_fast_path_agrees_exactly_with_std() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..200_000 {
            let mantissa = rng.below(1 << 53);
            let digits = mantissa.to_string();
            let point = rng.below(digits.len() as u64 + 1) as usize;
            let (int, frac) = digits.split_at(point);
            let exp = rng.below(45) as i64 - 22;
            let frac_len = frac.len() as i64;
            // Keep the effective power of ten within +-22.
            if !(-22..=22).contains(&(exp - frac_len)) {
                continue;
            }
            let sign = ["", "-", "+"][rng.below(3) as usize];
            let text = format!("{sign}{int}.{frac}e{exp}");
            let ours = parse_decimal(&text);
            assert_eq!(
                ours.map(f64::to_bits),
                oracle(&text).map(f64::to_bits),
                "{text}"
            );
        }
        for text in [
            "0",
            "-0",
            "1",
            "0.1",
            "0.2",
            "0.3",
            "12.34567",
            "100",
            "99.9999",
            "1e22",
            "1e-22",
            "123456789e-22",
            "4.35",
            "0.000001",
            "1000000",
            ".5",
            "5.",
            "-.5",
            "+5.",
        ] {
            let (ours, std) = (parse_decimal(text), oracle(text));
            assert_eq!(ours.map(f64::to_bits), std.map(f64::to_bits), "{text}");
        }
        // Outside the fast path, at the ends of the range: close.
        for text in [
            "9007199254740993",
            "1.7976931348623157e308",
            "2.2250738585072014e-308",
            "123456789012345678901234567890",
            "1e23",
            "1e-23",
        ] {
            let (ours, std) = (parse_decimal(text), oracle(text));
            assert!(
                ours.zip(std).is_some_and(|(a, b)| ulps(a, b) <= 32),
                "{text}: {ours:?} {std:?}"
            );
        }
        assert!(parse_decimal("5e-324").is_some_and(|v| v > 0.0 && v < 1e-323));
        assert_eq!(parse_decimal("-0").map(f64::is_sign_negative), Some(true));
    }

    #[test]
    fn outside_the_fast_path_the_error_stays_within_the_documented_bound() {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let mut worst = 0;
        for _ in 0..200_000 {
            let n_digits = 1 + rng.below(30) as usize;
            let mut digits: String = (0..n_digits)
                .map(|_| char::from(b'0' + rng.below(10) as u8))
                .collect();
            if rng.below(2) == 0 {
                let at = rng.below(n_digits as u64 + 1) as usize;
                digits.insert(at, '.');
            }
            let exp = rng.below(640) as i64 - 320;
            let text = format!("{digits}e{exp}");
            let (ours, std) = (parse_decimal(&text), text.parse::<f64>().ok());
            let (Some(ours), Some(std)) = (ours, std) else {
                panic!("{text}: {ours:?} {std:?}");
            };
            // Normal, finite results: the relative bound. Near the ends of the range the
            // steps may overflow or go subnormal; there only closeness is claimed.
            if std.is_finite() && std.abs() >= f64::MIN_POSITIVE && ours.is_finite() {
                worst = worst.max(ulps(ours, std));
            } else if std == 0.0 || std.is_infinite() {
                assert!(
                    ours.abs() < 1e-300 || ours.is_infinite() || ours == 0.0,
                    "{text}"
                );
            } else {
                assert!(
                    (ours - std).abs() <= std.abs() * 1e-10 + 1e-320,
                    "{text}: {ours} {std}"
                );
            }
        }
        // 2^-48 relative is at most 32 ulps.
        eprintln!("worst: {worst} ulps");
        assert!(worst <= 32, "worst {worst} ulps");
    }

    #[test]
    fn header_values_accepted_as_std_accepts_them() {
        let mut rng = XorShift(0xdead_beef_cafe_f00d);
        let alphabet = b"0123456789.eE+- x";
        for _ in 0..200_000 {
            let len = 1 + rng.below(8) as usize;
            let text: String = (0..len)
                .map(|_| {
                    char::from(
                        *alphabet
                            .get(rng.below(alphabet.len() as u64) as usize)
                            .unwrap(),
                    )
                })
                .collect();
            let (ours, std) = (
                parse_decimal(&text).filter(|v| v.is_finite()),
                oracle(&text),
            );
            assert_eq!(ours.is_some(), std.is_some(), "{text:?}: {ours:?} {std:?}");
            if let (Some(a), Some(b)) = (ours, std) {
                assert!(ulps(a, b) <= 32, "{text:?}: {a} {b}");
            }
        }
        for text in [
            "inf", "-inf", "NaN", "infinity", "", ".", "-", "+", "e5", ".e5", "1e", "1..2",
            "1.2.3", "0x10", "1_0", " 1",
        ] {
            assert_eq!(
                parse_decimal(text).filter(|v| v.is_finite()),
                None,
                "{text:?}"
            );
        }
    }
}
