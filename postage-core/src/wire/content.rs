//! A message's `content`: kept as the JSON text it came in, read into a
//! `serde_json::Value` only when something asks for one, and a handler's payload decoded
//! straight from the text.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::OnceLock;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

/// The `content` of a [`Message`](crate::Message), a JSON object, read as a
/// `serde_json::Value` (it dereferences to one). A received message keeps the text its
/// content came in and builds the `Value` only when first asked, so a handler whose
/// payload is decoded straight from the text never pays for the tree.
pub struct Content {
    /// The text it was received as; `None` once built here or changed.
    text: Option<Box<str>>,
    value: OnceLock<Value>,
}

impl Content {
    /// Content received as `text`, a JSON value in a body that [`fits`] said reads.
    pub(crate) fn received(text: &str) -> Self {
        Self {
            text: Some(text.into()),
            value: OnceLock::new(),
        }
    }

    /// The JSON text it was received as, while it is unchanged.
    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// Whether it is a JSON object, as the wire contract asks; from the text when there
    /// is one.
    pub(crate) fn is_object(&self) -> bool {
        match &self.text {
            Some(text) => text.trim_start().starts_with('{'),
            None => self.value().is_object(),
        }
    }

    fn value(&self) -> &Value {
        self.value.get_or_init(|| match &self.text {
            // Checked when it came in: it reads.
            Some(text) => serde_json::from_str(text).unwrap_or_else(|error| {
                tracing::error!(%error, "a message content checked on arrival did not read; taken as empty");
                Value::Object(Map::new())
            }),
            None => Value::Object(Map::new()),
        })
    }

    /// Decodes the content's `field` (all of it with `None`) into `T`: straight from the
    /// text when there is one, through the `Value` when that fails (a `&str` borrowed
    /// from a string with escapes, a field missing, a bad payload), so what reads and any
    /// error are what the `Value` gives.
    pub(crate) fn decode<'a, T: Deserialize<'a>>(
        &'a self,
        field: Option<&str>,
    ) -> serde_json::Result<T> {
        if let Some(text) = &self.text {
            let mut reader = serde_json::Deserializer::from_str(text);
            let read = match field {
                Some(name) => Field::<T>::new(name).deserialize(&mut reader),
                None => T::deserialize(&mut reader),
            };
            if let Ok(payload) = read {
                return Ok(payload);
            }
        }
        let value = self.value();
        match field {
            Some(name) => T::deserialize(value.get(name).unwrap_or(&Value::Null)),
            None => T::deserialize(value),
        }
    }
}

impl From<Value> for Content {
    fn from(value: Value) -> Self {
        Self {
            text: None,
            value: OnceLock::from(value),
        }
    }
}

impl Deref for Content {
    type Target = Value;

    fn deref(&self) -> &Value {
        self.value()
    }
}

impl DerefMut for Content {
    /// The `Value`, to change; the text it came in is dropped.
    fn deref_mut(&mut self) -> &mut Value {
        self.value();
        self.text = None;
        self.value
            .get_mut()
            .unwrap_or_else(|| unreachable!("built just above"))
    }
}

impl Clone for Content {
    fn clone(&self) -> Self {
        Self {
            text: self.text.clone(),
            value: self.value.clone(),
        }
    }
}

impl PartialEq for Content {
    fn eq(&self, other: &Self) -> bool {
        self.value() == other.value()
    }
}

impl PartialEq<Value> for Content {
    fn eq(&self, other: &Value) -> bool {
        self.value() == other
    }
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.value(), f)
    }
}

/// The JSON text: as received when it was, else the `Value` written out.
impl fmt::Display for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.text {
            Some(text) => f.write_str(text),
            None => fmt::Display::fmt(self.value(), f),
        }
    }
}

impl Serialize for Content {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(Self::from)
    }
}

/// Reads one field of a JSON object into `T`, skipping the others; the last of
/// duplicates counts, as in a `Value`. A missing field is an error, for the caller to
/// read the `Value` instead.
struct Field<'n, T> {
    name: &'n str,
    payload: PhantomData<T>,
}

impl<'n, T> Field<'n, T> {
    fn new(name: &'n str) -> Self {
        Self {
            name,
            payload: PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for Field<'_, T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Field<'_, T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an object with {:?}", self.name)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut found = None;
        while let Some(wanted) = map.next_key_seed(Named(self.name))? {
            if wanted {
                found = Some(map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        found.ok_or_else(|| de::Error::missing_field("the wanted field"))
    }
}

/// A key, read as whether it is the one named.
struct Named<'n>(&'n str);

impl<'de> DeserializeSeed<'de> for Named<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for Named<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

/// serde_json's nesting limit: it refuses the 128th level.
const MAX_DEPTH: usize = 127;

/// The digits before a number's point plus its exponent, beyond which it might not fit
/// an `f64` (serde_json refuses a number past `f64::MAX`, about 1.8e308).
const MAX_MAGNITUDE: u64 = 300;

/// Whether every value in the JSON text `body` surely reads into a `Value`: nested no
/// deeper than serde_json's limit, and no number past what an `f64` holds. A byte scan,
/// cautious (it may say no to text that reads); a body it says no to is read into a
/// `Value` at once, failing there as it must. Invalid JSON is for the parser to refuse.
pub(crate) fn fits(body: &[u8]) -> bool {
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(&byte) = body.get(at) {
        match byte {
            b'"' => at = string_end(body, at + 1),
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return false;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => {
                let (end, magnitude) = number(body, at);
                if magnitude > MAX_MAGNITUDE {
                    return false;
                }
                at = end;
                continue;
            }
            _ => {}
        }
        at += 1;
    }
    true
}

/// Where the string whose text starts at `at` ends: its closing quote (found with
/// memchr: a payload's long strings are most of its bytes).
fn string_end(body: &[u8], mut at: usize) -> usize {
    while let Some(found) = body
        .get(at..)
        .and_then(|rest| memchr::memchr2(b'\\', b'"', rest))
    {
        at += found;
        match body[at] {
            b'"' => return at,
            _ => at += 2,
        }
    }
    body.len()
}

/// The end of the number starting at `at`, and its magnitude: digits before the point
/// plus a positive exponent.
fn number(body: &[u8], mut at: usize) -> (usize, u64) {
    let digits = |at: &mut usize| {
        let start = *at;
        while body.get(*at).is_some_and(u8::is_ascii_digit) {
            *at += 1;
        }
        &body[start..*at]
    };
    if body.get(at) == Some(&b'-') {
        at += 1;
    }
    let mut magnitude = digits(&mut at).len() as u64;
    if body.get(at) == Some(&b'.') {
        at += 1;
        digits(&mut at);
    }
    if matches!(body.get(at), Some(b'e' | b'E')) {
        at += 1;
        let negative = body.get(at) == Some(&b'-');
        if matches!(body.get(at), Some(b'-' | b'+')) {
            at += 1;
        }
        let exponent = digits(&mut at).iter().fold(0u64, |n, digit| {
            (n * 10 + u64::from(digit - b'0')).min(u64::from(u32::MAX))
        });
        if !negative {
            magnitude += exponent;
        }
    }
    (at, magnitude)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn received(value: &Value) -> Content {
        Content::received(&value.to_string())
    }

    #[test]
    fn fits_says_no_exactly_where_a_value_may_not_read() {
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        for depth in [1, 126, 127, 128, 129, 1000] {
            let text = nested(depth);
            let reads = serde_json::from_str::<Value>(&text).is_ok();
            assert_eq!(fits(text.as_bytes()), reads, "depth {depth}");
        }
        let long = format!("1{}", "0".repeat(400));
        for (number, fits_here) in [
            ("1e299", true),
            ("1e300", false),
            ("1e400", false),
            ("-1.8e308", false),
            ("1e-400", true),
            ("123.456", true),
            (long.as_str(), false),
        ] {
            let text = format!(r#"{{"a":[{number}]}}"#);
            assert_eq!(fits(text.as_bytes()), fits_here, "{number}");
            if fits_here {
                assert!(serde_json::from_str::<Value>(&text).is_ok(), "{number}");
            }
        }
        // Brackets and numbers inside strings are text.
        let quoted = format!(r#"{{"a":"{}\"1e999"}}"#, "[".repeat(200));
        assert!(fits(quoted.as_bytes()));
    }

    #[test]
    fn decode_reads_the_text_as_the_value_would() {
        let content = received(&json!({"parameters": {"a": 1, "b": [true]}, "other": 2}));
        let parameters: Value = content.decode(Some("parameters")).unwrap();
        assert_eq!(parameters, json!({"a": 1, "b": [true]}));
        assert!(content.value.get().is_none(), "no Value built");
        let all: Value = content.decode(None).unwrap();
        assert_eq!(all, *content);
    }

    #[test]
    fn decode_borrows_from_the_text_and_falls_back_to_the_value() {
        let plain = received(&json!({"parameters": "plain"}));
        assert_eq!(plain.decode::<&str>(Some("parameters")).unwrap(), "plain");
        assert!(plain.value.get().is_none());
        // An escaped string cannot be borrowed from the text, but can from the Value.
        let escaped = received(&json!({"parameters": "a \"quoted\" word"}));
        assert_eq!(
            escaped.decode::<&str>(Some("parameters")).unwrap(),
            "a \"quoted\" word"
        );
        // A missing field reads as null, as the Value gives it.
        let missing = received(&json!({"other": 1}));
        assert_eq!(
            missing.decode::<Option<u8>>(Some("parameters")).unwrap(),
            None
        );
        // The last of duplicate keys counts, as in a Value.
        let twice = Content::received(r#"{"parameters":1,"parameters":2}"#);
        assert_eq!(twice.decode::<u8>(Some("parameters")).unwrap(), 2);
        // A payload that does not decode fails with the Value's error.
        let bad = received(&json!({"parameters": {"a": "x"}}));
        let error = bad.decode::<std::collections::HashMap<String, u8>>(Some("parameters"));
        let expected = std::collections::HashMap::<String, u8>::deserialize(&json!({"a": "x"}));
        assert_eq!(
            error.unwrap_err().to_string(),
            expected.unwrap_err().to_string()
        );
    }

    #[test]
    fn a_changed_content_drops_its_text() {
        let mut content = received(&json!({"parameters": 1}));
        assert_eq!(content.text(), Some(r#"{"parameters":1}"#));
        content["parameters"] = json!(2);
        assert_eq!(content.text(), None);
        assert_eq!(content.decode::<u8>(Some("parameters")).unwrap(), 2);
        assert_eq!(content.to_string(), r#"{"parameters":2}"#);
    }
}
