//! JSON strings read as JavaScript reads them: as sequences of UTF-16 code units, lone surrogates included.
//!
//! JSON's grammar allows any `\uXXXX` escape, so `"\ud800"` (half of a surrogate pair, alone) is valid JSON,
//! and JavaScript's `JSON.parse` (RudderStack's transformer) reads it as a one-unit string. Rust's `String`
//! cannot hold it, so serde_json refuses such a string wherever it must produce a `str` (an object key read
//! by a derived struct, a `String` value), while it accepts it as raw text (`RawValue`, `IgnoredAny`). Every
//! place that reads an entry's keys or string values goes through this module instead, so that such an entry
//! is read, not refused: an entry an attacker can make unreadable by typing one escape into a login form
//! would otherwise be set aside, and with it the guarantee that its fields are hashed.
//!
//! A string's content is carried as **WTF-8** bytes: UTF-8, generalised so that a lone surrogate code unit
//! is encoded like any other code point of its value (three bytes, `ED A0 80` for U+D800). A surrogate pair,
//! escaped or not, is one supplementary code point, exactly as in UTF-8; only an unpaired half differs. For a
//! string without lone surrogates the WTF-8 bytes are its UTF-8 bytes, so nothing changes for ordinary text.
//! [`push_string`] writes such bytes back as a JSON string literal the way `JSON.stringify` does, lone
//! surrogates as `\uXXXX` escapes.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Why a string literal's content is not valid JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidString {
    /// A raw control character (below U+0020), which JSON requires to be escaped.
    ControlCharacter {
        /// Its offset in the content.
        at: usize,
    },
    /// A backslash followed by something that is no JSON escape, or by too little.
    BadEscape {
        /// The offset of the backslash in the content.
        at: usize,
    },
}

impl fmt::Display for InvalidString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidString::ControlCharacter { at } => write!(f, "control character at byte {at} of a string"),
            InvalidString::BadEscape { at } => write!(f, "invalid escape at byte {at} of a string"),
        }
    }
}

/// The WTF-8 bytes of the JSON string whose content (the text between its quotes) is `content`: borrowed
/// when it has no escapes.
pub fn unescape(content: &str) -> Result<Cow<'_, [u8]>, InvalidString> {
    let bytes = content.as_bytes();
    let Some(first) = memchr::memchr(b'\\', bytes) else {
        if let Some(at) = bytes.iter().position(|&b| b < 0x20) {
            return Err(InvalidString::ControlCharacter { at });
        }
        return Ok(Cow::Borrowed(bytes));
    };
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let mut next_escape = Some(first);
    while i < bytes.len() {
        let run_end = next_escape.unwrap_or(bytes.len());
        if let Some(at) = bytes[i..run_end].iter().position(|&b| b < 0x20) {
            return Err(InvalidString::ControlCharacter { at: i + at });
        }
        out.extend_from_slice(&bytes[i..run_end]);
        i = run_end;
        if i >= bytes.len() {
            break;
        }
        // A backslash at `i`.
        let bad = InvalidString::BadEscape { at: i };
        let simple = match bytes.get(i + 1) {
            Some(b'"') => Some(b'"'),
            Some(b'\\') => Some(b'\\'),
            Some(b'/') => Some(b'/'),
            Some(b'b') => Some(0x08),
            Some(b'f') => Some(0x0c),
            Some(b'n') => Some(b'\n'),
            Some(b'r') => Some(b'\r'),
            Some(b't') => Some(b'\t'),
            Some(b'u') => None,
            _ => return Err(bad),
        };
        if let Some(b) = simple {
            out.push(b);
            i += 2;
        } else {
            let unit = hex4(bytes, i + 2).ok_or(bad)?;
            i += 6;
            let mut code = u32::from(unit);
            // A high surrogate followed at once by an escaped low one is one code point, as in UTF-16.
            if (0xD800..0xDC00).contains(&unit)
                && bytes.get(i) == Some(&b'\\')
                && bytes.get(i + 1) == Some(&b'u')
                && let Some(low) = hex4(bytes, i + 2).filter(|l| (0xDC00..0xE000).contains(l))
            {
                code = 0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
                i += 6;
            }
            push_code_point(&mut out, code);
        }
        next_escape = memchr::memchr(b'\\', &bytes[i..]).map(|at| i + at);
    }
    Ok(Cow::Owned(out))
}

/// The four hex digits at `at`, as a code unit.
fn hex4(bytes: &[u8], at: usize) -> Option<u16> {
    let digits = bytes.get(at..at + 4)?;
    let mut unit = 0u16;
    for &d in digits {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return None,
        };
        unit = unit << 4 | u16::from(v);
    }
    Some(unit)
}

/// Append one code point (or lone surrogate) in WTF-8.
fn push_code_point(out: &mut Vec<u8>, code: u32) {
    // Truncations below are of values already shifted and masked into byte range.
    match code {
        0..0x80 => out.push(code as u8),
        0x80..0x800 => out.extend_from_slice(&[0xC0 | (code >> 6) as u8, 0x80 | (code & 0x3F) as u8]),
        0x800..0x10000 => out.extend_from_slice(&[
            0xE0 | (code >> 12) as u8,
            0x80 | ((code >> 6) & 0x3F) as u8,
            0x80 | (code & 0x3F) as u8,
        ]),
        _ => out.extend_from_slice(&[
            0xF0 | (code >> 18) as u8,
            0x80 | ((code >> 12) & 0x3F) as u8,
            0x80 | ((code >> 6) & 0x3F) as u8,
            0x80 | (code & 0x3F) as u8,
        ]),
    }
}

/// The lone surrogate whose WTF-8 encoding starts at `bytes[at]`, if one does.
fn surrogate_at(bytes: &[u8], at: usize) -> Option<u16> {
    match bytes.get(at..at + 3)? {
        &[0xED, b1 @ 0xA0..=0xBF, b2] => Some(0xD000 | (u16::from(b1 & 0x3F) << 6) | u16::from(b2 & 0x3F)),
        _ => None,
    }
}

/// Append `wtf8` as a JSON string literal, quotes included, written as `JSON.stringify` writes it: `"` and
/// `\` escaped, control characters as `\b \f \n \r \t` or `\u00XX`, a lone surrogate as `\uXXXX` (lower case
/// hex), everything else as it is.
pub fn push_string(out: &mut String, wtf8: &[u8]) {
    out.push('"');
    let mut run = 0;
    let mut i = 0;
    while i < wtf8.len() {
        let b = wtf8[i];
        let escape: Option<Cow<'static, str>> = match b {
            b'"' => Some("\\\"".into()),
            b'\\' => Some("\\\\".into()),
            b'\n' => Some("\\n".into()),
            b'\r' => Some("\\r".into()),
            b'\t' => Some("\\t".into()),
            0x08 => Some("\\b".into()),
            0x0c => Some("\\f".into()),
            0..0x20 => Some(format!("\\u{:04x}", b).into()),
            0xED => surrogate_at(wtf8, i).map(|s| format!("\\u{s:04x}").into()),
            _ => None,
        };
        let Some(escape) = escape else {
            i += 1;
            continue;
        };
        push_utf8(out, &wtf8[run..i]);
        out.push_str(&escape);
        i += if b == 0xED { 3 } else { 1 };
        run = i;
    }
    push_utf8(out, &wtf8[run..]);
    out.push('"');
}

/// Append bytes that are UTF-8 (WTF-8 without its surrogates is); anything else is replaced, never copied.
fn push_utf8(out: &mut String, bytes: &[u8]) {
    out.push_str(&String::from_utf8_lossy(bytes));
}

/// WTF-8 as text for a place that needs a Rust string (a type code, a date): each lone surrogate becomes
/// U+FFFD, which no such value contains, so the result never equals a value the string did not hold.
pub fn to_str_lossy(wtf8: &[u8]) -> Cow<'_, str> {
    if let Ok(s) = std::str::from_utf8(wtf8) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(wtf8.len());
    let mut run = 0;
    let mut i = 0;
    while i < wtf8.len() {
        if wtf8[i] == 0xED && surrogate_at(wtf8, i).is_some() {
            push_utf8(&mut out, &wtf8[run..i]);
            out.push(char::REPLACEMENT_CHARACTER);
            i += 3;
            run = i;
        } else {
            i += 1;
        }
    }
    push_utf8(&mut out, &wtf8[run..]);
    Cow::Owned(out)
}

/// The WTF-8 content of a raw JSON value when it is a string; `None` for any other value (or an invalid
/// string, which a `RawValue` never holds).
pub fn string_value(value: &RawValue) -> Option<Cow<'_, [u8]>> {
    let text = value.get();
    let content = text.strip_prefix('"')?.strip_suffix('"')?;
    unescape(content).ok()
}

/// [`string_value`] as a Rust string, when the string holds no lone surrogate.
pub fn str_value(value: &RawValue) -> Option<Cow<'_, str>> {
    match string_value(value)? {
        Cow::Borrowed(b) => std::str::from_utf8(b).ok().map(Cow::Borrowed),
        Cow::Owned(b) => String::from_utf8(b).ok().map(Cow::Owned),
    }
}

/// Read the values of `keys` from `text`, which must be exactly one JSON object, as raw slices of it (the
/// last of duplicate keys wins, like `JSON.parse`). Keys are compared after unescaping, and a key holding a
/// lone surrogate (which no name in `keys` can equal) is read like any other. The whole text is checked to be
/// JSON on the way.
pub fn pick<'a, const N: usize>(
    text: &'a str,
    keys: &[&str; N],
) -> Result<[Option<&'a RawValue>; N], serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let found = de.deserialize_map(Pick { keys })?;
    de.end()?;
    Ok(found)
}

/// Visitor of `pick`.
struct Pick<'k, const N: usize> {
    keys: &'k [&'k str; N],
}

impl<'de, const N: usize> Visitor<'de> for Pick<'_, N> {
    type Value = [Option<&'de RawValue>; N];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = [None; N];
        while let Some(index) = map.next_key_seed(KeyIndex { keys: self.keys })? {
            match index {
                Some(i) => found[i] = Some(map.next_value::<&'de RawValue>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }
}

/// Reads an object key as its index in `keys`. The key is taken as raw text (which serde_json checks
/// strictly, control characters included, but which may hold lone surrogates) and unescaped only when it
/// has a backslash.
struct KeyIndex<'k> {
    keys: &'k [&'k str],
}

impl<'de> DeserializeSeed<'de> for KeyIndex<'_> {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        let raw = <&'de RawValue>::deserialize(de)?;
        let text = raw.get();
        let content = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text);
        // serde_json has checked the key; most keys have no escape and are compared as they stand.
        if memchr::memchr(b'\\', content.as_bytes()).is_none() {
            return Ok(self.keys.iter().position(|k| *k == content));
        }
        let name = unescape(content).map_err(de::Error::custom)?;
        Ok(self.keys.iter().position(|k| k.as_bytes() == &*name))
    }
}

/// Append `text`, one valid JSON value, to `out` without the whitespace between its tokens: the bytes inside
/// its string literals (escapes included) are copied unchanged, so the value reads back exactly as before.
/// For `transform --ndjson`: an event embeds an entry's `details` as the entry wrote it, line breaks and
/// indentation included, and one event must fit on one line.
pub fn compact_into(text: &str, out: &mut String) {
    let mut in_string = false;
    let mut escaped = false;
    // Whole runs between removed bytes are copied at once; a removed byte is ASCII, so every cut is on a
    // character boundary.
    let mut run = 0;
    for (i, b) in text.bytes().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            out.push_str(&text[run..i]);
            run = i + 1;
        }
    }
    out.push_str(&text[run..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(content: &str) -> Vec<u8> {
        unescape(content).unwrap_or_else(|e| panic!("{content}: {e}")).into_owned()
    }

    /// Ordinary escapes give the characters serde_json gives.
    #[test]
    fn ordinary_strings_unescape_as_serde_json_does() {
        for content in
            [r"plain", r"a\u0040b", r#"q\"r\\s\/t"#, r"\b\f\n\r\t", r"\ud83d\ude00 é", r"\u00e9\u20ac"]
        {
            let want: String = serde_json::from_str(&format!("\"{content}\"")).expect("valid");
            assert_eq!(bytes(content), want.as_bytes(), "{content}");
        }
        assert!(matches!(unescape("a"), Ok(Cow::Borrowed(b"a"))));
    }

    /// A lone surrogate is kept as its three WTF-8 bytes, wherever it stands.
    #[test]
    fn lone_surrogates_are_kept_as_wtf8() {
        assert_eq!(bytes(r"\ud800"), [0xED, 0xA0, 0x80]);
        assert_eq!(bytes(r"\udfff"), [0xED, 0xBF, 0xBF]);
        assert_eq!(bytes(r"x\ud800victim"), b"x\xED\xA0\x80victim");
        // A high surrogate followed by something other than a low one stays alone; so does a low one first.
        assert_eq!(bytes(r"\ud800\u0041"), b"\xED\xA0\x80A");
        assert_eq!(bytes(r"\udc00\ud800"), b"\xED\xB0\x80\xED\xA0\x80");
        assert_eq!(bytes(r"\ud800\ud83d\ude00"), b"\xED\xA0\x80\xF0\x9F\x98\x80");
    }

    /// What JSON refuses is refused, with where.
    #[test]
    fn invalid_strings_are_refused() {
        assert_eq!(unescape("a\u{1}"), Err(InvalidString::ControlCharacter { at: 1 }));
        assert_eq!(unescape("\\n\u{1f}"), Err(InvalidString::ControlCharacter { at: 2 }));
        for bad in [r"\x", r"\u12", r"\u12g4", "\\", r"a\ud800\u"] {
            assert!(matches!(unescape(bad), Err(InvalidString::BadEscape { .. })), "{bad}");
        }
    }

    /// Written back, a string reads as the same code units, and lone surrogates come out as escapes.
    #[test]
    fn strings_are_written_back_as_json_stringify_writes_them() {
        let mut out = String::new();
        push_string(&mut out, b"a\"b\\c\n\x01\xED\xA0\x80\xF0\x9F\x98\x80/");
        assert_eq!(out, "\"a\\\"b\\\\c\\n\\u0001\\ud800\u{1F600}/\"");
        assert_eq!(bytes(&out[1..out.len() - 1]), b"a\"b\\c\n\x01\xED\xA0\x80\xF0\x9F\x98\x80/");
    }

    /// Keys are matched by their unescaped name, lone surrogates included, and the JSON is still checked.
    #[test]
    fn pick_reads_keys_with_lone_surrogates() {
        let text = r#"{"\ud800":1,"e\u006dail":"a","x\udc00":{"\ud800":2},"type":"s"}"#;
        let [email, ty, missing] = pick(text, &["email", "type", "nope"]).expect("read");
        assert_eq!(email.map(RawValue::get), Some("\"a\""));
        assert_eq!(ty.map(RawValue::get), Some("\"s\""));
        assert!(missing.is_none());
        assert!(pick("{\"a\u{1}\":1}", &["a"]).is_err());
        assert!(pick(r#"{"a":1} x"#, &["a"]).is_err());
        assert!(pick(r#"{"\x":1}"#, &["a"]).is_err());
    }

    proptest! {
        /// Any Rust string survives writing and reading back, and reads as serde_json reads it.
        #[test]
        fn any_string_round_trips(s in any::<String>()) {
            let mut out = String::new();
            push_string(&mut out, s.as_bytes());
            let back: String = serde_json::from_str(&out).expect("valid JSON");
            prop_assert_eq!(&back, &s);
            prop_assert_eq!(bytes(&out[1..out.len() - 1]), s.as_bytes());
        }

        /// Any sequence of UTF-16 code units, escaped, reads back as itself: its WTF-8 decodes to the units.
        #[test]
        fn any_code_units_round_trip(units in prop::collection::vec(any::<u16>(), 0..12)) {
            let content: String = units.iter().map(|u| format!("\\u{u:04x}")).collect();
            let wtf8 = bytes(&content);
            let mut out = String::new();
            push_string(&mut out, &wtf8);
            prop_assert_eq!(bytes(&out[1..out.len() - 1]), wtf8.clone());
            // Where the units are valid UTF-16, the bytes are its UTF-8.
            if let Ok(s) = String::from_utf16(&units) {
                prop_assert_eq!(wtf8, s.into_bytes());
            }
        }
    }

    #[test]
    fn compacting_removes_whitespace_between_tokens_and_keeps_every_string_byte() {
        let text = "{\n  \"a\" : [ 1,\t2 ],\r\n  \"b\": \"x  y\\\" \\n\\\\\",\n \"c\": \"\\ud800 \\\"\"\n}";
        let mut out = String::from("prefix:");
        compact_into(text, &mut out);
        assert_eq!(out, "prefix:{\"a\":[1,2],\"b\":\"x  y\\\" \\n\\\\\",\"c\":\"\\ud800 \\\"\"}");
    }
}
