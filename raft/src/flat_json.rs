//! A JSON object whose fields are all scalars already written as `serde_json` writes them:
//! read without building a `serde_json::Value` tree, and written back by copying its text.
//!
//! A create turns the client's body into the stored record: parse it, check `cookie` and
//! `user_id`, set `created` and `last_used`, write it compactly. Through a `Value` that was
//! 5% of a leader's CPU at 64 clients (docs/benchmarks.md, issue 16's tenth pass): a
//! `String` for every key and every string value, an ordered map, then all of it written
//! again. An update pays that twice on every node (the patch and the stored record parsed,
//! merged and written at apply) and once more on the proposer (the patch checked and
//! written compactly into the command): it cost a fifth more of the servers' CPU than a
//! create (docs/benchmarks.md, thirty-first pass).
//!
//! Most bodies are flat objects of strings, integers and booleans, and for those the compact
//! text of each value is the text the client sent. So [`Flat::parse`] borrows every key and
//! value from the body and says yes only when copying them gives the very bytes the `Value`
//! path writes; anything else (an escape, a float, a nested object or array, a repeated key)
//! gets `None`, and the caller takes the `Value` path, which stays the definition. The
//! property tests in `command.rs` hold the two to the same bytes and the same errors on
//! arbitrary objects: a create, an update's patch, and the merge at apply.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// More fields than this and the quadratic check for repeated keys is not worth it: the
/// `Value` path decides.
const MAX_FIELDS: usize = 64;
/// Integers of at most this many digits are written back as sent by the `Value` path, and
/// fit a `u64` for `user_id`'s check. (With `serde_json`'s `arbitrary_precision` longer
/// ones are kept as sent too, but rarely sent: they take the `Value` path.)
const MAX_DIGITS: usize = 18;

/// The fields of a flat object, in the body's order: each key (no escapes, so its text is
/// its value) and the exact text of its value.
#[derive(Debug)]
pub struct Flat<'a> {
    fields: Vec<(&'a str, &'a str)>,
}

impl<'a> Flat<'a> {
    /// The body's fields, when it is a JSON object that the fast path writes back exactly.
    pub fn parse(body: &'a [u8]) -> Option<Flat<'a>> {
        let Fields(fields) = serde_json::from_slice::<Fields<'a>>(body).ok()?;
        if !fields.iter().all(|(_, v)| is_written_as_is(v)) {
            return None;
        }
        // A key serde_json reads as its own marker: the `Value` path refuses the body.
        if fields
            .iter()
            .any(|(k, _)| k.starts_with('$') && crate::reserved_keys::RESERVED.contains(k))
        {
            return None;
        }
        // A repeated key keeps its first place and its last value in a `Value` map.
        let repeated = fields
            .iter()
            .enumerate()
            .any(|(i, (k, _))| fields[..i].iter().any(|(seen, _)| seen == k));
        (!repeated).then_some(Flat { fields })
    }

    /// The text of field `key`'s value (a string keeps its quotes).
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// These fields with `patch`'s merged in as `serde_json::Map::insert` merges them: a
    /// field both have keeps its place here and takes `patch`'s value; `patch`'s other
    /// fields follow, in its order. (Neither repeats a key, so each is found once.)
    pub fn merged(&self, patch: &Flat<'a>) -> Flat<'a> {
        let mut fields: Vec<(&'a str, &'a str)> = self
            .fields
            .iter()
            .map(|&(k, v)| (k, patch.get(k).unwrap_or(v)))
            .collect();
        fields.extend(
            patch
                .fields
                .iter()
                .filter(|(k, _)| self.get(k).is_none())
                .copied(),
        );
        Flat { fields }
    }

    /// Compact JSON of these fields: the bytes that writing a `serde_json::Map` of them
    /// gives.
    pub fn write(&self) -> String {
        self.write_stamped(&[], 0)
    }

    /// Compact JSON of these fields with each of `stamps` set to `now` as a JSON string (how
    /// a record keeps `created` and `last_used`): in place where the body has the field,
    /// after the others (in `stamps`' order) where not. The bytes that inserting them into a
    /// `serde_json::Map` of these fields and writing it give.
    pub fn write_stamped(&self, stamps: &[&str], now: u64) -> String {
        let now = now.to_string();
        let len = self
            .fields
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .chain(stamps.iter().map(|k| k.len() + now.len() + 6))
            .sum::<usize>();
        let mut out = String::with_capacity(len + 2);
        out.push('{');
        let field = |out: &mut String, key: &str, value: &str, quoted: bool| {
            if out.len() > 1 {
                out.push(',');
            }
            out.push('"');
            out.push_str(key);
            out.push_str("\":");
            // Decimal digits need no escape.
            if quoted {
                out.push('"');
            }
            out.push_str(value);
            if quoted {
                out.push('"');
            }
        };
        for (k, v) in &self.fields {
            if stamps.contains(k) {
                field(&mut out, k, &now, true);
            } else {
                field(&mut out, k, v, false);
            }
        }
        for k in stamps {
            if self.get(k).is_none() {
                field(&mut out, k, &now, true);
            }
        }
        out.push('}');
        out
    }
}

/// Whether `serde_json` writes this value, once parsed, as exactly this text: `true`,
/// `false`, `null`, a string with no escape (a control character cannot appear unescaped in
/// valid JSON, and nothing else is escaped on writing), or an integer short enough to stay
/// one (not `-0`, which it reads as a float).
fn is_written_as_is(v: &str) -> bool {
    match v.as_bytes() {
        b"true" | b"false" | b"null" => true,
        [b'"', .., b'"'] => !v.contains('\\'),
        [b'-', b'0'] => false,
        [b'-', digits @ ..] | digits => {
            (1..=MAX_DIGITS).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit)
        }
    }
}

/// A JSON object read as borrowed (key, value text) pairs, repeats included. A key with an
/// escape cannot be borrowed, and fails the parse.
struct Fields<'a>(Vec<(&'a str, &'a str)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(16).min(MAX_FIELDS));
        while let Some((key, value)) = map.next_entry::<&'de str, &'de RawValue>()? {
            if fields.len() == MAX_FIELDS {
                return Err(de::Error::custom("too many fields for the fast path"));
            }
            fields.push((key, value.get()));
        }
        Ok(Fields(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_values_written_as_sent_are_taken() {
        for yes in [
            "true",
            "false",
            "null",
            "\"\"",
            "\"a é\"",
            "0",
            "-1",
            "123456789012345678",
        ] {
            assert!(is_written_as_is(yes), "{yes}");
        }
        for no in [
            "\"a\\\"b\"",
            "\"\\u0041\"",
            "-0",
            "1.0",
            "1e3",
            "1234567890123456789",
            "-",
            "",
            "[1]",
            "{}",
            "\"",
        ] {
            assert!(!is_written_as_is(no), "{no}");
        }
    }

    #[test]
    fn the_fast_path_declines_what_it_cannot_copy() {
        for body in [
            r#"{"a":1,"a":2}"#,
            r#"{"a\u0062":1}"#,
            r#"{"a":[1]}"#,
            r#"{"a":{"b":1}}"#,
            r#"{"a":1.5}"#,
            r#"[1]"#,
            r#"{"a":1"#,
            r#"{"a":1} x"#,
        ] {
            assert!(Flat::parse(body.as_bytes()).is_none(), "{body}");
        }
        let too_many = format!(
            "{{{}}}",
            (0..=MAX_FIELDS)
                .map(|i| format!("\"k{i}\":1"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(Flat::parse(too_many.as_bytes()).is_none());
    }

    #[test]
    fn writes_compactly_with_the_set_fields_in_place_or_after() {
        let flat = Flat::parse(br#" { "b" : 1 , "created" : 5, "a":"x" } "#).unwrap();
        assert_eq!(flat.get("a"), Some("\"x\""));
        assert_eq!(
            flat.write_stamped(&["created", "last_used"], 9),
            r#"{"b":1,"created":"9","a":"x","last_used":"9"}"#
        );
        let empty = Flat::parse(b"{}").unwrap();
        assert_eq!(empty.write_stamped(&["x"], 1), r#"{"x":"1"}"#);
        assert_eq!(flat.write(), r#"{"b":1,"created":5,"a":"x"}"#);
    }

    #[test]
    fn a_merge_keeps_the_stored_order_and_appends_what_is_new() {
        let base = Flat::parse(br#"{"a":1,"b":"x","last_used":"3"}"#).unwrap();
        let patch = Flat::parse(br#"{"c":true,"b":null,"d":2}"#).unwrap();
        assert_eq!(
            base.merged(&patch).write_stamped(&["last_used"], 9),
            r#"{"a":1,"b":null,"last_used":"9","c":true,"d":2}"#
        );
        let empty = Flat::parse(b"{}").unwrap();
        assert_eq!(empty.merged(&empty).write(), "{}");
        assert_eq!(empty.merged(&base).write(), base.write());
        assert_eq!(base.merged(&empty).write(), base.write());
    }
}
