//! The one reader of an Auth0 log entry's head: its `log_id`, `date`, `type` and `client_id`.
//!
//! Every part of the daemon that needs an entry's identity (bootstrap, paging, the cursor, the store, the
//! filters, the transform's ids) reads it here, so they can never disagree about which entries have one.
//! Entries come from the network and from archives, so nothing about them is trusted: a `log_id` is only a
//! [`LogId`] once it has been checked to be what Auth0 issues (a short ASCII alphanumeric string), which keeps a
//! megabyte-long or empty id out of the cursor, out of request URLs and out of log lines. Everything else in
//! the entry stays raw JSON text and is never interpreted here.

use std::cmp::Ordering;
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::value::RawValue;

/// The longest `log_id` accepted. Auth0's ids are 56 digits (24 hex digits before 2020); anything far longer
/// is not an id Auth0 issued.
pub const MAX_LOG_ID_LEN: usize = 128;

/// A validated Auth0 `log_id`: non-empty, at most [`MAX_LOG_ID_LEN`] bytes, ASCII letters and digits only.
///
/// Ids compare the way Auth0 orders them in checkpoint paging: a longer id is greater, and ids of equal length
/// compare byte by byte (for the usual decimal ids that is numeric order).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LogId(Box<str>);

/// Why a string is not a [`LogId`]. The messages never quote the string itself, which may be huge or hostile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidLogId {
    /// The empty string.
    #[error("the log_id is empty")]
    Empty,
    /// Longer than [`MAX_LOG_ID_LEN`].
    #[error("the log_id is {len} bytes long, more than {MAX_LOG_ID_LEN}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A byte other than an ASCII letter or digit.
    #[error("the log_id has a character other than an ASCII letter or digit at byte {at}")]
    BadCharacter {
        /// The byte offset of the first such character.
        at: usize,
    },
}

impl LogId {
    /// Check that `s` is an id Auth0 could have issued.
    pub fn parse(s: &str) -> Result<LogId, InvalidLogId> {
        if s.is_empty() {
            return Err(InvalidLogId::Empty);
        }
        if s.len() > MAX_LOG_ID_LEN {
            return Err(InvalidLogId::TooLong { len: s.len() });
        }
        if let Some(at) = s.bytes().position(|b| !b.is_ascii_alphanumeric()) {
            return Err(InvalidLogId::BadCharacter { at });
        }
        Ok(LogId(s.into()))
    }

    /// Whether `s` would parse, without allocating.
    pub fn is_valid(s: &str) -> bool {
        !s.is_empty() && s.len() <= MAX_LOG_ID_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric())
    }

    /// The id as text (safe to log and to put in a URL: it is short and alphanumeric).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Ord for LogId {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.len().cmp(&other.0.len()).then_with(|| self.0.as_bytes().cmp(other.0.as_bytes()))
    }
}

impl PartialOrd for LogId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogId({})", self.0)
    }
}

impl std::str::FromStr for LogId {
    type Err = InvalidLogId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LogId::parse(s)
    }
}

/// Why an entry has no usable `log_id`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoLogId {
    /// The key is absent or `null`.
    #[error("the entry has no string log_id")]
    Missing,
    /// The value is not a JSON string.
    #[error("the entry has no string log_id (its log_id is a JSON {0})")]
    NotAString(&'static str),
    /// A string, but not one Auth0 issues.
    #[error(transparent)]
    Invalid(#[from] InvalidLogId),
}

/// What the daemon needs to know about an entry before storing or forwarding it.
#[derive(Debug, Clone)]
pub struct EntryHead {
    /// The entry's id, or why it has none.
    pub log_id: Result<LogId, NoLogId>,
    /// The entry's `date`, when it is an RFC 3339 time.
    pub date: Option<DateTime<Utc>>,
    /// The type code, when `type` is a string.
    pub kind: Option<String>,
    /// The `client_id`, when it is a string (to recognise the daemon's own token exchanges).
    pub client_id: Option<String>,
}

/// An entry that is not even a JSON object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAnEntry {
    /// The text is not JSON.
    #[error("the entry is not valid JSON")]
    NotJson,
    /// Valid JSON, but not an object.
    #[error("the entry is not a JSON object but a JSON {0}")]
    NotAnObject(&'static str),
}

/// Read the head of one raw entry. Only the four head fields are read (everything else is skipped unparsed),
/// and keys are read as JavaScript reads them, so an entry holding a lone surrogate anywhere is still read.
pub fn read_head(raw: &str) -> Result<EntryHead, NotAnEntry> {
    let trimmed = raw.trim_start();
    if !trimmed.starts_with('{') {
        let value: &RawValue = serde_json::from_str(raw).map_err(|_| NotAnEntry::NotJson)?;
        return Err(NotAnEntry::NotAnObject(json_kind(value)));
    }
    let [log_id, date, kind, client_id] =
        crate::json_text::pick(raw, &["log_id", "date", "type", "client_id"])
            .map_err(|_| NotAnEntry::NotJson)?;
    let log_id = match log_id.filter(|v| v.get() != "null") {
        None => Err(NoLogId::Missing),
        Some(v) => match string(v) {
            Some(s) => LogId::parse(&s).map_err(NoLogId::from),
            None => Err(NoLogId::NotAString(json_kind(v))),
        },
    };
    let date = date.and_then(string).and_then(|d| parse_date(&d));
    Ok(EntryHead { log_id, date, kind: kind.and_then(string), client_id: client_id.and_then(string) })
}

/// Parse an entry date (RFC 3339). Anything else is no date at all.
pub fn parse_date(s: &str) -> Option<DateTime<Utc>> {
    if s.len() > 64 {
        return None;
    }
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
}

/// A date as the state file writes it: RFC 3339 in UTC with milliseconds, so dates sort as text.
pub fn format_date(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The value of a JSON string, unescaped; a lone surrogate in it becomes U+FFFD, which no log_id, date, type
/// code or client id holds, so such a value is read as what it is not: none of those.
fn string(v: &RawValue) -> Option<String> {
    let wtf8 = crate::json_text::string_value(v)?;
    Some(crate::json_text::to_str_lossy(&wtf8).into_owned())
}

/// The JSON kind of a value, for messages.
pub(crate) fn json_kind(v: &RawValue) -> &'static str {
    match v.get().as_bytes().first() {
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b'"') => "string",
        Some(b't' | b'f') => "boolean",
        Some(b'n') => "null",
        _ => "number",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_id_is_short_ascii_alphanumeric() {
        assert!(LogId::parse("90020260101000000000000000000000000000000000000000000001").is_ok());
        assert!(LogId::parse("5ef3bb0a72487a0047c32959").is_ok());
        assert_eq!(LogId::parse(""), Err(InvalidLogId::Empty));
        assert_eq!(LogId::parse(&"9".repeat(129)), Err(InvalidLogId::TooLong { len: 129 }));
        assert!(LogId::parse(&"9".repeat(128)).is_ok());
        assert_eq!(LogId::parse("12 4"), Err(InvalidLogId::BadCharacter { at: 2 }));
        assert_eq!(LogId::parse("1\n"), Err(InvalidLogId::BadCharacter { at: 1 }));
        assert!(matches!(LogId::parse("ü"), Err(InvalidLogId::BadCharacter { at: 0 })));
    }

    #[test]
    fn ids_order_by_length_then_bytes() {
        let id = |s: &str| LogId::parse(s).unwrap();
        assert!(id("9") < id("10"));
        assert!(id("100") > id("099"));
        assert!(id("abc") < id("abd"));
        assert_eq!(id("42").cmp(&id("42")), Ordering::Equal);
    }

    #[test]
    fn the_head_reads_the_four_fields_and_nothing_else() {
        let h = read_head(
            r#"{"date":"2026-01-02T03:04:05.678Z","type":"s","log_id":"900","client_id":"abc","details":{"log_id":"x"}}"#,
        )
        .unwrap();
        assert_eq!(h.log_id.unwrap().as_str(), "900");
        assert_eq!(h.kind.as_deref(), Some("s"));
        assert_eq!(h.client_id.as_deref(), Some("abc"));
        assert_eq!(format_date(&h.date.unwrap()), "2026-01-02T03:04:05.678Z");
    }

    #[test]
    fn an_unusable_log_id_says_why_without_quoting_it() {
        let missing = read_head(r#"{"type":"s","_id":"5ef3bb0a72487a0047c32959"}"#).unwrap();
        assert_eq!(missing.log_id.unwrap_err(), NoLogId::Missing);
        let null = read_head(r#"{"log_id":null}"#).unwrap();
        assert_eq!(null.log_id.unwrap_err(), NoLogId::Missing);
        let number = read_head(r#"{"log_id":42}"#).unwrap();
        assert_eq!(number.log_id.unwrap_err(), NoLogId::NotAString("number"));
        let huge = format!(r#"{{"log_id":"{}"}}"#, "9".repeat(1 << 20));
        let e = read_head(&huge).unwrap().log_id.unwrap_err();
        assert!(!e.to_string().contains("999"), "{e}");
        let escaped = read_head(r#"{"log_id":"12\n34"}"#).unwrap();
        assert_eq!(escaped.log_id.unwrap_err(), NoLogId::Invalid(InvalidLogId::BadCharacter { at: 2 }));
    }

    /// Keys and values holding lone surrogates (valid JSON, read by JavaScript) do not hide the head.
    #[test]
    fn the_head_is_read_whatever_escapes_the_entry_holds() {
        let h = read_head(r#"{"\ud800":"x","user_name":"\ud800v@x","l\u006fg_id":"900","type":"s\udc00"}"#)
            .expect("an entry");
        assert_eq!(h.log_id.expect("an id").as_str(), "900");
        assert_eq!(h.kind.as_deref(), Some("s\u{FFFD}"));
        let bad = read_head(r#"{"log_id":"9\ud8000"}"#).expect("an entry").log_id.expect_err("no id");
        assert_eq!(bad, NoLogId::Invalid(InvalidLogId::BadCharacter { at: 1 }));
    }

    #[test]
    fn values_that_are_not_objects_are_not_entries() {
        assert_eq!(read_head("[1,2]").unwrap_err(), NotAnEntry::NotAnObject("array"));
        assert_eq!(read_head("null").unwrap_err(), NotAnEntry::NotAnObject("null"));
        assert_eq!(read_head("{").unwrap_err(), NotAnEntry::NotJson);
        assert_eq!(read_head("").unwrap_err(), NotAnEntry::NotJson);
    }

    #[test]
    fn a_date_that_is_not_rfc3339_is_no_date() {
        assert!(read_head(r#"{"date":"yesterday"}"#).unwrap().date.is_none());
        assert!(read_head(r#"{"date":{"$date":1}}"#).unwrap().date.is_none());
        assert!(read_head(r#"{"date":"99999-01-01T00:00:00Z"}"#).unwrap().date.is_none());
    }
}
