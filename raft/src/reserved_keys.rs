//! Object keys that `serde_json::Value` does not read as keys.
//!
//! serde_json marks its own number and raw-value types with objects of one private key, and
//! its `Value` reads any object whose first key is that marker as the type it marks: with
//! `arbitrary_precision` (records keep their numbers' digits) a client's
//! `{"$serde_json::private::Number":"12.50"}` became the number `12.50`, and with
//! `raw_value` the other marker made the text fail to parse at all. The fast path
//! ([`crate::flat_json`]) reads keys as keys, so a flat body holding one was stored as
//! sent, and every backup of the store then failed its check on that record. So a write
//! whose JSON holds such a key anywhere is refused, on both paths, before it is proposed.

/// The markers (serde_json 1.0's `arbitrary_precision` and `raw_value` tokens). The test
/// below fails if serde_json stops treating them so.
pub const RESERVED: [&str; 2] = [
    "$serde_json::private::Number",
    "$serde_json::private::RawValue",
];

/// The first reserved key in `json`, which should be JSON text (anything else only ends
/// the scan early). One pass over the bytes: a string followed by `:` is a key, and only a
/// key that could spell a marker (one holding `$`, as is or escaped) is decoded.
pub fn find(json: &[u8]) -> Option<&'static str> {
    let mut i = 0;
    while i < json.len() {
        if json[i] != b'"' {
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        let mut maybe = false;
        while i < json.len() && json[i] != b'"' {
            match json[i] {
                b'\\' => {
                    maybe = true;
                    i += 1;
                }
                b'$' => maybe = true,
                _ => {}
            }
            i += 1;
        }
        let text = json.get(start..=i)?;
        i += 1;
        let after = json[i.min(json.len())..]
            .iter()
            .find(|b| !b.is_ascii_whitespace());
        if maybe && after == Some(&b':') {
            if let Ok(key) = serde_json::from_slice::<std::borrow::Cow<'_, str>>(text) {
                if let Some(r) = RESERVED.iter().find(|r| **r == key) {
                    return Some(r);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn serde_json_still_reads_the_markers_as_its_own() {
        let number: Value = serde_json::from_str(r#"{"$serde_json::private::Number":"12.50"}"#)
            .expect("read as a number");
        assert!(number.is_number(), "{number}");
        let raw = serde_json::from_str::<Value>(r#"{"$serde_json::private::RawValue":"1"}"#);
        assert!(!raw.is_ok_and(|v| v.is_object()));
    }

    #[test]
    fn keys_are_found_as_is_escaped_and_nested_and_values_are_not_keys() {
        let found = [
            r#"{"$serde_json::private::Number":"5","cookie":"a"}"#,
            r#"{"cookie":"a","x":{"$serde_json::private::Number":"12.50"}}"#,
            r#"{"cookie":"a","x":[1,{"y":{"$serde_json::private::RawValue" : 1}}]}"#,
            r#"{"\u0024serde_json::private::Number":"5"}"#,
            r#"{"a":"\"","$serde_json::private::Number":1}"#,
        ];
        for json in found {
            assert!(find(json.as_bytes()).is_some(), "{json}");
        }
        let clean = [
            r#"{"cookie":"$serde_json::private::Number"}"#,
            r#"{"cookie":"a","list":["$serde_json::private::Number",1]}"#,
            r#"{"$price":"5","a\"b":"$serde_json::private::Number"}"#,
            r#"{"$serde_json::private::Numbers":1}"#,
            r#"{"cookie":"a\\","b":1}"#,
            "",
            r#"{"unterminated"#,
        ];
        for json in clean {
            assert_eq!(find(json.as_bytes()), None, "{json}");
        }
    }
}
