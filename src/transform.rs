//! The pure transform: one raw Auth0 log entry in, the RudderStack event that RudderStack's own Auth0 source
//! would have produced out, as JSON text.
//!
//! It reproduces the upstream transformer rule for rule (identify for `ss`, group for the "Add members to an
//! organization" API operation, track for everything else; every mapped field copied verbatim, `null` meaning
//! absent) and even the key order of `JSON.stringify`, so that our output is byte-for-byte what RudderStack would
//! store, modulo the two ids. Those two differ on purpose: upstream's `anonymousId` is random and it sets no
//! `messageId`; ours are UUID v5 of (tenant, log_id), so a re-sent event carries the same ids and can be deduplicated.
//! Where upstream would crash the whole webhook request (a group entry without a usable organization path, a
//! `null` element), or silently skip an entry (no truthy `type`), we return an error for that one entry, so that
//! the caller can dead-letter or report it instead of losing it or its neighbours.
//!
//! It is shaped for speed: an entry is never turned into a `serde_json::Value` tree. Its top-level keys are read
//! as borrowed raw slices (`&RawValue`), copied into the output untouched, and only the few small values the rules
//! look at (type, description, `details.auth.user.{email,name}`, `details.request.path`) are parsed. The output is
//! written directly into a `String`.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use uuid::Uuid;

/// Namespace of `messageId`s (`message_id`). Fixed forever: changing it would change every id already sent.
const MESSAGE_NAMESPACE: Uuid = Uuid::from_u128(0x6f1e_4c2a_9b7d_5e30_8a41_c2d9_e7b3_0f58);
/// Namespace of `anonymousId`s (`anonymous_id`), distinct from the messageId one so the two ids differ.
const ANONYMOUS_NAMESPACE: Uuid = Uuid::from_u128(0x2b9c_7d14_e5a6_5f81_9c03_47be_d18a_6c25);
/// Namespace for the stand-in log_id of an entry that has none, derived from its raw bytes.
const RAW_ENTRY_NAMESPACE: Uuid = Uuid::from_u128(0xd3a0_58f2_1c6b_5a97_b4e8_0f7c_29d1_63ae);

/// The description that, with type `sapi`, makes an entry a group event.
const ADD_MEMBERS: &str = "Add members to an organization";

/// Why an entry produced no event. Each of these is a property of the entry itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    /// The entry is JSON `null` (upstream crashes the whole request on it).
    #[error("the entry is null")]
    NullEntry,
    /// The entry is a JSON value other than an object.
    #[error("the entry is a JSON {kind}, not an object")]
    NotAnObject {
        /// `array`, `string`, `number` or `boolean`.
        kind: &'static str,
    },
    /// A `{log_id, data}` wrapper whose `data` is missing or not an object.
    #[error("{}: the wrapper has no `data` object", who(.log_id))]
    NoData {
        /// The wrapper's log_id, when it has a string one.
        log_id: Option<String>,
    },
    /// The entry's `type` is missing, null, `""`, `0` or `false` (upstream skips such entries silently).
    #[error("{}: no `type` (missing, null, empty, 0 or false), so no event can be named", who(.log_id))]
    NoType {
        /// The entry's log_id, when it has a string one.
        log_id: Option<String>,
    },
    /// A group entry (`sapi`, "Add members to an organization") whose `details.request.path` yields no
    /// organization id (upstream crashes the whole request on it).
    #[error(
        "{}: group event (sapi, \"{ADD_MEMBERS}\") but details.request.path {} gives no organization id \
         (expected /api/v2/organizations/{{id}}/members)",
        who(.log_id),
        .path.as_deref().map_or_else(|| "is missing".to_owned(), |p| format!("{p:?}"))
    )]
    GroupWithoutGroupId {
        /// The entry's log_id, when it has a string one.
        log_id: Option<String>,
        /// The path found, when it is a string.
        path: Option<String>,
    },
    /// A group entry whose `details.request.path` is not a string (upstream crashes on `path.split`).
    #[error("{}: group event but details.request.path is not a string: {path}", who(.log_id))]
    NonStringPath {
        /// The entry's log_id, when it has a string one.
        log_id: Option<String>,
        /// The path's JSON text.
        path: String,
    },
    /// The entry is larger than an entry may be (see `input::entry_limit`): it was measured and hashed while
    /// it was read, never held whole, and so was not transformed.
    #[error(
        "{}: {size} bytes, more than the {limit} an entry may have (the larger of 4 × \
         rudderstack.max_event_bytes and 1 MiB); set aside unread",
        who(.log_id)
    )]
    TooLarge {
        /// The log_id found near its beginning, when one was.
        log_id: Option<String>,
        /// Its size in bytes.
        size: u64,
        /// The limit it is over, in bytes.
        limit: u64,
    },
    /// The entry could not be read although it is valid JSON (should not happen; kept so it is never a panic).
    #[error("{}: unreadable entry: {reason}", who(.log_id))]
    Unreadable {
        /// The entry's log_id, when known.
        log_id: Option<String>,
        /// What the JSON reader said.
        reason: String,
    },
}

/// Name an entry in a message.
fn who(log_id: &Option<String>) -> String {
    match log_id {
        Some(id) => format!("entry with log_id {id:?}"),
        None => "entry without a log_id".to_owned(),
    }
}

impl TransformError {
    /// Transform failures are properties of the entry: retrying never helps.
    pub fn is_transient(&self) -> bool {
        false
    }

    /// The log_id of the entry this error is about, when it has a string one.
    pub fn log_id(&self) -> Option<&str> {
        match self {
            TransformError::NullEntry | TransformError::NotAnObject { .. } => None,
            TransformError::NoData { log_id }
            | TransformError::NoType { log_id }
            | TransformError::GroupWithoutGroupId { log_id, .. }
            | TransformError::NonStringPath { log_id, .. }
            | TransformError::TooLarge { log_id, .. }
            | TransformError::Unreadable { log_id, .. } => log_id.as_deref(),
        }
    }
}

/// One RudderStack event, serialized.
#[derive(Debug, Clone)]
pub struct Event {
    /// The deterministic messageId (also present in `json`).
    pub message_id: Uuid,
    /// The event as JSON text: upstream's key order, then `anonymousId` and `messageId`.
    pub json: String,
}

/// Transform one raw Auth0 log entry (as returned by `/api/v2/logs`) into its RudderStack event.
/// It is wrapped as `{log_id: entry.log_id, data: entry}` exactly as a Log Stream would.
pub fn transform_entry(tenant: &str, entry: &RawValue) -> Result<Event, TransformError> {
    to_event(|out| write_entry(tenant, entry, out))
}

/// Transform one Log Streams wrapper `{"log_id": ..., "data": {...}}`.
pub fn transform_wrapper(tenant: &str, wrapper: &RawValue) -> Result<Event, TransformError> {
    to_event(|out| write_wrapper(tenant, wrapper, out))
}

/// Transform a raw entry, a `{log_id, data}` wrapper or an Amazon EventBridge event, deciding which it is:
/// an object that has a `data` object and no (non-null) `type` is a wrapper; one without either whose
/// `detail` is an object and whose `detail-type` or `source` is a string is an EventBridge event, whose
/// `detail` is the wrapper; anything else is an entry.
pub fn transform_any(tenant: &str, value: &RawValue) -> Result<Event, TransformError> {
    to_event(|out| write_any(tenant, value, out))
}

/// Transform a raw entry as if it came in a wrapper `{"log_id": log_id, "data": entry}`: the event carries
/// `log_id` (in `properties.log_id` and the ids) whatever the entry's own `log_id` says.
///
/// This is how an entry taken out of a wrapper or an EventBridge event (see `input::EntryReader`) keeps the
/// wrapper's log_id when the two differ or the entry has none.
pub fn transform_entry_with_log_id(
    tenant: &str,
    log_id: &str,
    entry: &RawValue,
) -> Result<Event, TransformError> {
    // A JSON string literal is always a valid raw value.
    let literal = serde_json::to_string(log_id).unwrap_or_default();
    let log_id = RawValue::from_string(literal)
        .map_err(|e| TransformError::Unreadable { log_id: None, reason: e.to_string() })?;
    to_event(|out| {
        let data = Fields::read(entry.get()).map_err(known_json)?;
        write_event(tenant, Some(&log_id), &data, entry.get(), out)
    })
}

/// Run a writer into a fresh `String` sized for a typical event.
fn to_event(
    write: impl FnOnce(&mut String) -> Result<Uuid, TransformError>,
) -> Result<Event, TransformError> {
    let mut json = String::with_capacity(2048);
    let message_id = write(&mut json)?;
    Ok(Event { message_id, json })
}

/// The deterministic messageId of an entry.
pub fn message_id(tenant: &str, log_id: &str) -> Uuid {
    id_in(&MESSAGE_NAMESPACE, tenant, log_id)
}

/// The deterministic anonymousId of an entry.
pub fn anonymous_id(tenant: &str, log_id: &str) -> Uuid {
    id_in(&ANONYMOUS_NAMESPACE, tenant, log_id)
}

/// UUID v5 of `tenant/log_id`: a domain name never contains `/`, so the name is unambiguous.
fn id_in(namespace: &Uuid, tenant: &str, log_id: &str) -> Uuid {
    let mut name = Vec::with_capacity(tenant.len() + 1 + log_id.len());
    name.extend_from_slice(tenant.as_bytes());
    name.push(b'/');
    name.extend_from_slice(log_id.as_bytes());
    Uuid::new_v5(namespace, &name)
}

/// The event name RudderStack's Auth0 source gives a type code (its `eventMapping.json`, 92 codes, verbatim).
/// Codes not listed keep their raw value as the event name.
pub fn event_name(code: &str) -> Option<&'static str> {
    Some(match code {
        "api_limit" => "Rate Limit on the Authentication API",
        "cls" => "Code/Link Sent",
        "coff" => "Connector Offline",
        "con" => "Connector Online",
        "cs" => "Code Sent",
        "depnote" => "Deprecation Notice",
        "du" => "Deleted User",
        "f" => "Failed Login",
        "fc" => "Failed by Connector",
        "fce" => "Failed Change Email",
        "fco" => "Failed by CORS",
        "fcoa" => "Failed cross-origin authentication",
        "fcp" => "Failed Change Password",
        "fcph" => "Failed Post Change Password Hook",
        "fcpn" => "Failed Change Phone Number",
        "fcpr" => "Failed Change Password Request",
        "fcpro" => "Failed Connector Provisioning",
        "fcu" => "Failed Change Username",
        "fd" => "Failed Delegation",
        "fdeac" => "Failed Device Activation",
        "fdeaz" => "Failed Device Authorization Request",
        "fdecc" => "User Canceled Device Confirmation",
        "fdu" => "Failed User Deletion",
        "feacft" => "Failed Exchange",
        "feccft" => "Failed Exchange",
        "fede" => "Failed Exchange",
        "fens" => "Failed Exchange",
        "feoobft" => "Failed Exchange",
        "feotpft" => "Failed Exchange",
        "fepft" => "Failed Exchange",
        "fercft" => "Failed Exchange",
        "fertft" => "Failed Exchange",
        "ferrt" => "Failed Exchange",
        "flo" => "Failed Logout",
        "fn" => "Failed Sending Notification",
        "fp" => "Failed Login (Incorrect Password)",
        "fs" => "Failed Signup",
        "fsa" => "Failed Silent Auth",
        "fu" => "Failed Login (Invalid Email/Username)",
        "fui" => "Failed users import",
        "fv" => "Failed Verification Email",
        "fvr" => "Failed Verification Email Request",
        "gd_auth_failed" => "MFA Auth failed",
        "gd_auth_rejected" => "MFA Auth rejected",
        "gd_auth_succeed" => "MFA Auth success",
        "gd_enrollment_complete" => "MFA enrollment complete",
        "gd_otp_rate_limit_exceed" => "Too many failures",
        "gd_recovery_failed" => "Recovery failed",
        "gd_recovery_rate_limit_exceed" => "Too many failures",
        "gd_recovery_succeed" => "Recovery success",
        "gd_send_pn" => "Push notification sent",
        "gd_send_sms" => "SMS sent",
        "gd_send_sms_failure" => "SMS sent failures",
        "gd_send_voice" => "Voice call made",
        "gd_send_voice_failure" => "Voice call failure",
        "gd_start_auth" => "Second factor started",
        "gd_start_enroll" => "Enroll started",
        "gd_tenant_update" => "Guardian tenant update",
        "gd_unenroll" => "Unenroll device account",
        "gd_update_device_account" => "Update device account",
        "limit_delegation" => "Too Many Calls to /delegation",
        "limit_mu" => "Blocked IP Address",
        "limit_wc" => "Blocked Account",
        "pwd_leak" => "Breached password",
        "s" => "Success Login",
        "sapi" => "Success API Operation",
        "sce" => "Success Change Email",
        "scoa" => "Success cross-origin authentication",
        "scp" => "Success Change Password",
        "scph" => "Success Post Change Password Hook",
        "scpn" => "Success Change Phone Number",
        "scpr" => "Success Change Password Request",
        "scu" => "Success Change Username",
        "sd" => "Success Delegation",
        "sdu" => "Success User Deletion",
        "seacft" => "Success Exchange",
        "seccft" => "Success Exchange",
        "sede" => "Success Exchange",
        "sens" => "Success Exchange",
        "seoobft" => "Success Exchange",
        "seotpft" => "Success Exchange",
        "sepft" => "Success Exchange",
        "sercft" => "Success Exchange",
        "sertft" => "Success Exchange",
        "slo" => "Success Logout",
        "ss" => "Success Signup",
        "ssa" => "Success Silent Auth",
        "sui" => "Success users import",
        "sv" => "Success Verification Email",
        "svr" => "Success Verification Email Request",
        "ublkdu" => "User login block released",
        "w" => "Warnings During Login",
        _ => return None,
    })
}

// ---- Log Streams categories ----
//
// Auth0's Log Streams filter events by category; operators know these names from the dashboard, so a category
// is the natural unit to select events by. The table is Auth0's documentation page "Log Stream Filters"
// (https://auth0.com/docs/customize/log-streams/event-filters, revision of 2026-03-26), copied in the page's
// order. Two of the page's names are left out because the page lists no codes for them: "Management API -
// Failure", and "Other Events", which it describes as the unclassified rest.

/// Auth0's Log Stream filter categories: each documented category name with the type codes it selects, in the
/// documentation's order.
pub const CATEGORIES: &[(&str, &[&str])] = &[
    ("Action Execution - Failure", &["actions_execution_failed"]),
    ("Login - Failure", &["f", "fc", "fco", "fcoa", "fens", "fp", "fu"]),
    ("Login - Notification", &["w"]),
    ("Login - Success", &["s", "scoa", "sens"]),
    ("Logout - Failure", &["flo", "oidc_backchannel_logout_failed"]),
    ("Logout - Success", &["oidc_backchannel_logout_succeeded", "slo"]),
    ("Signup - Failure", &["fs"]),
    ("Signup - Success", &["ss"]),
    ("Silent Authentication - Failure", &["fsa"]),
    ("Silent Authentication - Success", &["ssa"]),
    (
        "Token Exchange - Failure",
        &["feacft", "feccft", "fede", "feoobft", "feotpft", "fepft", "fepotpft", "fercft", "ferrt", "fertft"],
    ),
    (
        "Token Exchange - Success",
        &["seacft", "seccft", "sede", "seoobft", "seotpft", "sepft", "sercft", "sertft"],
    ),
    ("Management API - Success", &["sapi", "mgmt_api_read"]),
    (
        "System - Notification",
        &[
            "admin_update_launch",
            "api_limit",
            "coff",
            "con",
            "depnote",
            "fcpro",
            "fui",
            "limit_delegation",
            "limit_mu",
            "limit_wc",
            "sys_os_update_start",
            "sys_os_update_end",
            "sys_update_start",
            "sys_update_end",
        ],
    ),
    (
        "User/Behavioral - Failure",
        &[
            "fce",
            "fcp",
            "fcpn",
            "fcpr",
            "fcu",
            "fd",
            "fdeaz",
            "fdecc",
            "fdu",
            "fn",
            "fv",
            "fvr",
            "ss_sso_failure",
        ],
    ),
    (
        "User/Behavioral - Notification",
        &[
            "cs",
            "gd_enrollment_complete",
            "gd_start_enroll",
            "gd_unenroll",
            "gd_update_device_account",
            "ss_sso_info",
            "ublkdu",
        ],
    ),
    (
        "User/Behavioral - Success",
        &["sce", "scp", "scpn", "scpr", "scu", "sdu", "srrt", "ss_sso_success", "sui", "sv", "svr"],
    ),
    ("SCIM Events", &["sscim", "fscim"]),
];

/// The type codes of a Log Stream filter category, by its documented name (exact, as in [`CATEGORIES`]).
pub fn category_codes(name: &str) -> Option<&'static [&'static str]> {
    CATEGORIES.iter().find(|(category, _)| *category == name).map(|(_, codes)| *codes)
}

#[cfg(test)]
mod category_tests {
    use super::*;

    /// Category names are unique, every category has codes, and no code is in two categories.
    #[test]
    fn categories_are_unique_and_disjoint() {
        let mut names = std::collections::HashSet::new();
        let mut codes = std::collections::HashSet::new();
        for (name, list) in CATEGORIES {
            assert!(names.insert(*name), "{name} twice");
            assert!(!list.is_empty(), "{name} has no codes");
            for code in *list {
                assert!(codes.insert(*code), "{code} in two categories");
            }
        }
        assert_eq!(CATEGORIES.len(), 18);
    }

    /// The documented categories hold the documented codes, in the documented order.
    #[test]
    fn categories_hold_the_documented_codes() {
        assert_eq!(
            category_codes("Login - Failure"),
            Some(&["f", "fc", "fco", "fcoa", "fens", "fp", "fu"][..])
        );
        assert_eq!(category_codes("Signup - Success"), Some(&["ss"][..]));
        assert_eq!(category_codes("Signup - Failure"), Some(&["fs"][..]));
        assert_eq!(category_codes("Management API - Success"), Some(&["sapi", "mgmt_api_read"][..]));
        assert_eq!(CATEGORIES.first().map(|c| c.0), Some("Action Execution - Failure"));
        assert_eq!(CATEGORIES.last().map(|c| c.0), Some("SCIM Events"));
        assert_eq!(category_codes("login - failure"), None, "names are exact");
        assert_eq!(category_codes("Management API - Failure"), None, "documented without codes");
    }
}

/// Why an entry's text produced no event: not JSON at all, or an entry the transform refuses.
#[derive(Debug)]
pub(crate) enum EntryError {
    /// The text is not valid JSON.
    Json(serde_json::Error),
    /// Valid JSON, but no event (see `TransformError`).
    Transform(TransformError),
}

impl From<TransformError> for EntryError {
    fn from(e: TransformError) -> Self {
        EntryError::Transform(e)
    }
}

/// Adapt an `EntryError` on text that is known to be valid JSON (a `RawValue`).
fn known_json(e: EntryError) -> TransformError {
    match e {
        EntryError::Transform(e) => e,
        EntryError::Json(e) => TransformError::Unreadable { log_id: None, reason: e.to_string() },
    }
}

/// Append the event of a raw entry to `out`; on error `out` is left as it was.
fn write_entry(tenant: &str, entry: &RawValue, out: &mut String) -> Result<Uuid, TransformError> {
    let text = entry.get();
    let data = Fields::read(text).map_err(known_json)?;
    // The Log Stream wrapper's log_id is the entry's own, null and absent included.
    write_event(tenant, data.get(LOG_ID), &data, text, out)
}

/// Append the event of a `{log_id, data}` wrapper to `out`; on error `out` is left as it was.
fn write_wrapper(tenant: &str, wrapper: &RawValue, out: &mut String) -> Result<Uuid, TransformError> {
    let text = wrapper.get();
    let outer = Fields::read(text).map_err(known_json)?;
    write_wrapped(tenant, &outer, text, out)
}

/// Append the event of an entry or wrapper (see `transform_any`) to `out`; on error `out` is left as it was.
fn write_any(tenant: &str, value: &RawValue, out: &mut String) -> Result<Uuid, TransformError> {
    write_any_text(tenant, value.get(), out).map_err(known_json)
}

/// `transform_any` on text that may not even be JSON, appending to `out` (left as it was on error). This is
/// the entry point of the stream reader: it validates and reads the entry in one pass.
pub(crate) fn write_any_text(tenant: &str, text: &str, out: &mut String) -> Result<Uuid, EntryError> {
    let entry = unwrap_text(text)?;
    Ok(write_event(tenant, entry.log_id, &entry.fields, entry.whole, out)?)
}

/// A raw entry found in an input element, with what its event needs from around it.
pub(crate) struct Unwrapped<'a> {
    /// The raw entry's text, a slice of the element: the element itself, a wrapper's `data`, or an
    /// EventBridge event's `detail.data`.
    pub(crate) text: &'a str,
    /// The entry's top-level keys.
    fields: Fields<'a>,
    /// The log_id the event carries, as written (see `write_event`).
    log_id: Option<&'a RawValue>,
    /// What the stand-in id of an entry without any log_id derives from: the wrapper as given.
    whole: &'a str,
}

impl Unwrapped<'_> {
    /// The log_id to file the entry under: the wrapper's when it is a string, else the entry's own when it
    /// is one. The event's ids derive from this same value.
    pub(crate) fn log_id(&self) -> Option<String> {
        self.log_id
            .and_then(json_str)
            .or_else(|| self.fields.present(LOG_ID).and_then(json_str))
            .map(Cow::into_owned)
    }
}

/// Find the raw entry in an element of the input (see `transform_any` for the rules), validating the
/// element's JSON on the way.
pub(crate) fn unwrap_text(text: &str) -> Result<Unwrapped<'_>, EntryError> {
    let fields = Fields::read(text)?;
    // Every Auth0 entry has a type, so the wrapper checks cost nothing on the common path.
    if fields.present(TYPE).is_none() {
        if let Some(data) = fields.present(DATA).filter(|d| is_object(d)) {
            let inner = Fields::read(data.get()).map_err(known_json)?;
            return Ok(Unwrapped {
                text: data.get(),
                fields: inner,
                log_id: fields.get(LOG_ID),
                whole: text,
            });
        }
        if let Some(detail) = eventbridge_detail(text) {
            return Ok(unwrap_eventbridge(detail)?);
        }
    }
    Ok(Unwrapped { text, log_id: fields.get(LOG_ID), fields, whole: text })
}

/// The `detail` of an object that looks like an Amazon EventBridge event (from Auth0's partner event
/// source: `{"version", "id", "detail-type": "Auth0 log", "source": "aws.partner/auth0.com/...", ...,
/// "detail": {"log_id", "data"}}`): `detail` is an object and `detail-type` or `source` is a string. Only
/// asked of objects with neither a `type` nor a `data` object (every Auth0 entry has a type).
fn eventbridge_detail(text: &str) -> Option<&RawValue> {
    // Skip the second parse unless the key can be there (it can only be spelled with `\u` escapes when the
    // text has some).
    if !text.contains("\\u") && !contains_key(text, "detail") {
        return None;
    }
    let [detail, detail_type, source] = pick_text(text, &["detail", "detail-type", "source"]).ok()?;
    let is_string = |v: Option<&RawValue>| v.is_some_and(|v| v.get().starts_with('"'));
    detail.filter(|d| is_object(d)).filter(|_| is_string(detail_type) || is_string(source))
}

/// The entry in an EventBridge event's `detail`, which is a Log Streams wrapper except that its `log_id` may
/// be missing: then the entry's own stands in, so the event is the one the entry would give by itself.
fn unwrap_eventbridge(detail: &RawValue) -> Result<Unwrapped<'_>, TransformError> {
    let outer = Fields::read(detail.get()).map_err(known_json)?;
    let Some(data) = outer.present(DATA).filter(|d| is_object(d)) else {
        return Err(TransformError::NoData {
            log_id: outer.get(LOG_ID).and_then(json_str).map(Cow::into_owned),
        });
    };
    let fields = Fields::read(data.get()).map_err(known_json)?;
    let log_id = outer.present(LOG_ID).or_else(|| fields.get(LOG_ID));
    Ok(Unwrapped { text: data.get(), fields, log_id, whole: detail.get() })
}

/// The wrapper half of `write_wrapper`, once its keys are read.
fn write_wrapped(
    tenant: &str,
    outer: &Fields<'_>,
    whole: &str,
    out: &mut String,
) -> Result<Uuid, TransformError> {
    let Some(data) = outer.present(DATA).filter(|d| is_object(d)) else {
        return Err(TransformError::NoData {
            log_id: outer.get(LOG_ID).and_then(json_str).map(Cow::into_owned),
        });
    };
    let inner = Fields::read(data.get()).map_err(known_json)?;
    write_event(tenant, outer.get(LOG_ID), &inner, whole, out)
}

/// What kind of event an entry becomes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Identify,
    Group,
    Track,
}

/// Append one event. `wrapper_log_id` is the wrapper's `log_id` as written (`None` when the wrapper has none,
/// the text `null` when it is null); `whole` is what the caller was given, used only for the stand-in id.
fn write_event(
    tenant: &str,
    wrapper_log_id: Option<&RawValue>,
    d: &Fields<'_>,
    whole: &str,
    out: &mut String,
) -> Result<Uuid, TransformError> {
    // Everything that can fail happens before the first byte is written.
    let named_log_id = wrapper_log_id.and_then(json_str).or_else(|| d.present(LOG_ID).and_then(json_str));
    let ty = match d.present(TYPE) {
        Some(t) if is_truthy(t) => t,
        _ => {
            return Err(TransformError::NoType { log_id: named_log_id.map(Cow::into_owned) });
        }
    };
    let ty_str = json_str(ty);
    let kind = match ty_str.as_deref() {
        Some("ss") => Kind::Identify,
        Some("sapi") if d.present(DESCRIPTION).and_then(json_str).as_deref() == Some(ADD_MEMBERS) => {
            Kind::Group
        }
        _ => Kind::Track,
    };
    let details = d.present(DETAILS);
    let group_id = if kind == Kind::Group {
        Some(group_id(details).map_err(|e| e.with_log_id(named_log_id.as_deref()))?)
    } else {
        None
    };
    let [email, name] = match details.and_then(|det| nested(det, &["auth", "user"])) {
        Some(user) => {
            let [email, name] = pick(user, &["email", "name"]).unwrap_or_default();
            [email.filter(|v| !is_null(v)), name.filter(|v| !is_null(v))]
        }
        None => [None, None],
    };
    let id_source: Cow<'_, str> = match named_log_id {
        Some(id) => id,
        None => Cow::Owned(Uuid::new_v5(&RAW_ENTRY_NAMESPACE, whole.as_bytes()).hyphenated().to_string()),
    };
    let message = message_id(tenant, &id_source);
    let anonymous = anonymous_id(tenant, &id_source);

    let ip = d.present(IP);
    let user_name = d.present(USER_NAME);
    let user_agent = d.present(USER_AGENT);
    let user_id = d.present(USER_ID);

    out.push_str(
        r#"{"context":{"library":{"name":"unknown","version":"unknown"},"integration":{"name":"Auth0"}"#,
    );
    if let Some(ip) = ip {
        put(out, ",\"ip\":", ip);
        put(out, ",\"request_ip\":", ip);
    }
    // context.traits is created by the first of email/name/user_name/user_id present, and userAgent sits
    // between those: so traits comes before userAgent unless only user_id feeds it.
    let early_traits = email.is_some() || name.is_some() || user_name.is_some();
    let context_traits = |out: &mut String| {
        let mut obj = Obj::open(out, ",\"traits\":");
        obj.field(out, "email", email);
        obj.field(out, "name", name);
        obj.field(out, "user_name", user_name);
        obj.field(out, "userId", user_id);
        obj.close(out);
    };
    if early_traits {
        context_traits(out);
    }
    if let Some(ua) = user_agent {
        put(out, ",\"userAgent\":", ua);
    }
    if !early_traits && user_id.is_some() {
        context_traits(out);
    }
    out.push_str(r#"},"integrations":{"Auth0":false},"type":"#);
    out.push_str(match kind {
        Kind::Identify => "\"identify\"",
        Kind::Group => "\"group\"",
        Kind::Track => "\"track\"",
    });
    if kind == Kind::Track {
        out.push_str(",\"event\":");
        let known = match &ty_str {
            Some(code) => event_name(code),
            None => array_event_name(ty),
        };
        match known {
            Some(name) => {
                // The table's names need no escaping.
                out.push('"');
                out.push_str(name);
                out.push('"');
            }
            None => out.push_str(ty.get()),
        }
    }
    // `properties` is created by the first of its rows present; when only `type` feeds it, it comes after
    // the timestamps.
    let early_properties = [CLIENT_ID, CLIENT_NAME, DETAILS, AUTH0_CLIENT, LOG_ID, IS_MOBILE, DESCRIPTION]
        .iter()
        .any(|&k| d.present(k).is_some());
    let properties = |out: &mut String| {
        let mut obj = Obj::open(out, ",\"properties\":");
        obj.field(out, "client_id", d.present(CLIENT_ID));
        obj.field(out, "client_name", d.present(CLIENT_NAME));
        obj.field(out, "details", details);
        obj.field(out, "auth0_client", d.present(AUTH0_CLIENT));
        // log_id is reassigned to the wrapper's value: it keeps the slot of data.log_id if that existed,
        // else it is appended; a wrapper without log_id makes it disappear altogether.
        let data_log_id = d.present(LOG_ID).is_some();
        if data_log_id {
            obj.field(out, "log_id", wrapper_log_id);
        }
        obj.field(out, "is_mobile", d.present(IS_MOBILE));
        obj.field(out, "description", d.present(DESCRIPTION));
        obj.field(out, "source_type", Some(ty));
        if !data_log_id {
            obj.field(out, "log_id", wrapper_log_id);
        }
        obj.close(out);
    };
    if early_properties {
        properties(out);
    }
    if let Some(uid) = user_id {
        put(out, ",\"userId\":", uid);
    }
    let connection = d.present(CONNECTION);
    let connection_id = d.present(CONNECTION_ID);
    if connection.is_some() || connection_id.is_some() {
        let mut obj = Obj::open(out, ",\"traits\":");
        obj.field(out, "connection", connection);
        obj.field(out, "connection_id", connection_id);
        obj.close(out);
    }
    if let Some(date) = d.present(DATE) {
        put(out, ",\"originalTimestamp\":", date);
        put(out, ",\"sentAt\":", date);
    }
    if !early_properties {
        properties(out);
    }
    if let Some(group_id) = group_id {
        out.push_str(",\"groupId\":");
        crate::json_text::push_string(out, &group_id);
    }
    out.push_str(",\"anonymousId\":\"");
    out.push_str(anonymous.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
    out.push_str("\",\"messageId\":\"");
    out.push_str(message.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
    out.push_str("\"}");
    Ok(message)
}

/// Why `group_id` failed, before the log_id is attached.
enum GroupIdError {
    Missing(Option<String>),
    NotAString(String),
}

impl GroupIdError {
    fn with_log_id(self, log_id: Option<&str>) -> TransformError {
        let log_id = log_id.map(str::to_owned);
        match self {
            GroupIdError::Missing(path) => TransformError::GroupWithoutGroupId { log_id, path },
            GroupIdError::NotAString(path) => TransformError::NonStringPath { log_id, path },
        }
    }
}

/// Upstream's `getGroupId`: the second-to-last `/` segment of `details.request.path`, which must be non-empty,
/// as WTF-8 (see `json_text`).
fn group_id(details: Option<&RawValue>) -> Result<Vec<u8>, GroupIdError> {
    let path = details
        .and_then(|det| nested(det, &["request"]))
        .and_then(|req| pick(req, &["path"]).ok())
        .and_then(|[p]| p)
        .filter(|p| is_truthy(p));
    let Some(path) = path else {
        return Err(GroupIdError::Missing(None));
    };
    // As WTF-8: a path holding a lone surrogate still splits as JavaScript splits it.
    let Some(text) = crate::json_text::string_value(path) else {
        return Err(GroupIdError::NotAString(path.get().to_owned()));
    };
    let parts: Vec<&[u8]> = text.split(|&b| b == b'/').collect();
    match parts.len().checked_sub(2).map(|i| parts[i]) {
        Some(segment) if !segment.is_empty() => Ok(segment.to_vec()),
        _ => Err(GroupIdError::Missing(Some(crate::json_text::to_str_lossy(&text).into_owned()))),
    }
}

/// For a `type` that is an array: JS indexes the name table with the array's string form, so `["s"]` (and
/// `[["s"]]`) finds "Success Login". No other array can stringify to a code (codes have no digits or commas).
fn array_event_name(ty: &RawValue) -> Option<&'static str> {
    if !ty.get().starts_with('[') {
        return None;
    }
    let mut value: serde_json::Value = serde_json::from_str(ty.get()).ok()?;
    loop {
        match value {
            serde_json::Value::Array(mut items) if items.len() == 1 => value = items.pop()?,
            serde_json::Value::String(s) => return event_name(&s),
            _ => return None,
        }
    }
}

/// Append `,"key":value` style text: `prefix` then the raw value.
fn put(out: &mut String, prefix: &str, value: &RawValue) {
    out.push_str(prefix);
    out.push_str(value.get());
}

/// An object being written whose keys are all optional.
struct Obj {
    first: bool,
}

impl Obj {
    fn open(out: &mut String, prefix: &str) -> Obj {
        out.push_str(prefix);
        out.push('{');
        Obj { first: true }
    }
    fn field(&mut self, out: &mut String, key: &str, value: Option<&RawValue>) {
        if let Some(value) = value {
            if !self.first {
                out.push(',');
            }
            self.first = false;
            out.push('"');
            out.push_str(key);
            out.push_str("\":");
            out.push_str(value.get());
        }
    }
    fn close(self, out: &mut String) {
        out.push('}');
    }
}

/// Whether a raw value is JSON null.
fn is_null(v: &RawValue) -> bool {
    v.get() == "null"
}

/// Whether a raw value is an object.
fn is_object(v: &RawValue) -> bool {
    v.get().starts_with('{')
}

/// JS truthiness of a (non-null) JSON value: false, 0 (any spelling) and "" are falsy.
pub(crate) fn is_truthy(v: &RawValue) -> bool {
    let text = v.get();
    match text.as_bytes().first() {
        Some(b'f') | Some(b'n') | None => false,
        Some(b'"') => text != "\"\"",
        Some(b'-' | b'0'..=b'9') => !matches!(text.parse::<f64>(), Ok(n) if n == 0.0),
        _ => true,
    }
}

/// The text of a raw value when it is a JSON string without lone surrogates (a string with one never equals
/// a type code, a description the rules look for, or a valid log_id).
fn json_str(v: &RawValue) -> Option<Cow<'_, str>> {
    crate::json_text::str_value(v)
}

/// Walk `path` through nested objects; `None` when a step is missing, null or not an object.
fn nested<'a>(mut value: &'a RawValue, path: &[&str]) -> Option<&'a RawValue> {
    for key in path {
        if !is_object(value) {
            return None;
        }
        // Cheap pre-check before parsing a possibly large object: the key can only be spelled without
        // `\u` escapes when the text has none.
        let text = value.get();
        if !text.contains("\\u") && !contains_key(text, key) {
            return None;
        }
        let [found] = pick(value, &[key]).ok()?;
        value = found.filter(|v| !is_null(v))?;
    }
    Some(value)
}

/// Whether `"key"` occurs in `text` at all.
fn contains_key(text: &str, key: &str) -> bool {
    let mut needle = String::with_capacity(key.len() + 2);
    needle.push('"');
    needle.push_str(key);
    needle.push('"');
    text.contains(needle.as_str())
}

/// Read the values of `keys` from a JSON object (last duplicate wins, like `JSON.parse`).
fn pick<'a, const N: usize>(
    object: &'a RawValue,
    keys: &[&str; N],
) -> Result<[Option<&'a RawValue>; N], serde_json::Error> {
    pick_text(object.get(), keys)
}

/// `pick` on text, which must be exactly one JSON object; keys are read as JavaScript reads them, lone
/// surrogates included (see `json_text`).
fn pick_text<'a, const N: usize>(
    text: &'a str,
    keys: &[&str; N],
) -> Result<[Option<&'a RawValue>; N], serde_json::Error> {
    crate::json_text::pick(text, keys)
}

// Indices into `Fields`, in the order of `FIELD_KEYS`.
const CLIENT_ID: usize = 0;
const CLIENT_NAME: usize = 1;
const DETAILS: usize = 2;
const AUTH0_CLIENT: usize = 3;
const LOG_ID: usize = 4;
const IS_MOBILE: usize = 5;
const DESCRIPTION: usize = 6;
const IP: usize = 7;
const USER_NAME: usize = 8;
const USER_AGENT: usize = 9;
const USER_ID: usize = 10;
const CONNECTION: usize = 11;
const CONNECTION_ID: usize = 12;
const DATE: usize = 13;
const TYPE: usize = 14;
const DATA: usize = 15;
/// Every top-level key the transform reads (of an entry, or of a wrapper: `log_id` and `data`).
const FIELD_KEYS: [&str; 16] = [
    "client_id",
    "client_name",
    "details",
    "auth0_client",
    "log_id",
    "isMobile",
    "description",
    "ip",
    "user_name",
    "user_agent",
    "user_id",
    "connection",
    "connection_id",
    "date",
    "type",
    "data",
];

/// The top-level keys of an entry or wrapper, as raw slices of its text (`null` kept as the text `null`).
struct Fields<'a> {
    values: [Option<&'a RawValue>; 16],
}

impl<'a> Fields<'a> {
    /// Read an object's keys, refusing anything that is not an object.
    fn read(text: &'a str) -> Result<Fields<'a>, EntryError> {
        if text.starts_with('{') {
            let values = pick_text(text, &FIELD_KEYS).map_err(EntryError::Json)?;
            return Ok(Fields { values });
        }
        // Not an object: say what it is, but only once it is known to be JSON at all.
        serde_json::from_str::<IgnoredAny>(text).map_err(EntryError::Json)?;
        Err(EntryError::Transform(match text.as_bytes().first() {
            Some(b'n') => TransformError::NullEntry,
            Some(b'[') => TransformError::NotAnObject { kind: "array" },
            Some(b'"') => TransformError::NotAnObject { kind: "string" },
            Some(b't' | b'f') => TransformError::NotAnObject { kind: "boolean" },
            _ => TransformError::NotAnObject { kind: "number" },
        }))
    }

    /// The raw value as written, `null` included.
    fn get(&self, key: usize) -> Option<&'a RawValue> {
        self.values[key]
    }

    /// The value when it is present and not null: upstream's "null means absent".
    fn present(&self, key: usize) -> Option<&'a RawValue> {
        self.values[key].filter(|v| !is_null(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    const T: &str = "example-tenant.us.auth0.com";

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).expect("valid JSON")
    }

    fn entry(text: &str) -> Result<String, TransformError> {
        transform_entry(T, &raw(text)).map(|e| e.json)
    }

    fn value(text: &str) -> Value {
        serde_json::from_str(&entry(text).expect("transforms")).expect("output is JSON")
    }

    fn keys(v: &Value) -> Vec<&str> {
        v.as_object().expect("object").keys().map(String::as_str).collect()
    }

    /// The table is upstream's: 92 codes, exact names, unknown codes absent.
    #[test]
    fn the_event_name_table_is_upstreams() {
        // A verbatim copy of upstream's eventMapping.json.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/event-names.json");
        let text = std::fs::read_to_string(path).expect("read the table");
        let table: serde_json::Map<String, Value> = serde_json::from_str(&text).expect("table");
        assert_eq!(table.len(), 92);
        for (code, name) in &table {
            assert_eq!(event_name(code), name.as_str(), "{code}");
        }
        assert_eq!(event_name("mgmt_api_read"), None);
        assert_eq!(event_name("toString"), None);
    }

    /// With only type, user_id, date and connection the keys come in JSON.stringify's insertion order.
    #[test]
    fn keys_follow_upstream_insertion_order_when_properties_come_last() {
        let v = value(r#"{"type":"s","user_id":"u","date":"d","connection":"c"}"#);
        assert_eq!(
            keys(&v),
            [
                "context",
                "integrations",
                "type",
                "event",
                "userId",
                "traits",
                "originalTimestamp",
                "sentAt",
                "properties",
                "anonymousId",
                "messageId"
            ]
        );
        assert_eq!(keys(&v["context"]), ["library", "integration", "traits"]);
        assert_eq!(keys(&v["properties"]), ["source_type"]);
    }

    /// context.traits comes after userAgent when only user_id feeds it, before it otherwise.
    #[test]
    fn context_traits_sit_after_user_agent_only_when_fed_by_user_id_alone() {
        let v = value(r#"{"type":"s","user_id":"u","user_agent":"ua","ip":"1.2.3.4"}"#);
        assert_eq!(
            keys(&v["context"]),
            ["library", "integration", "ip", "request_ip", "userAgent", "traits"]
        );
        let v = value(r#"{"type":"s","user_id":"u","user_agent":"ua","user_name":"n"}"#);
        assert_eq!(keys(&v["context"]), ["library", "integration", "traits", "userAgent"]);
        assert_eq!(keys(&v["context"]["traits"]), ["user_name", "userId"]);
    }

    /// null is absent, everything else is copied as written (no coercion, numbers keep their spelling).
    #[test]
    fn values_are_copied_verbatim_and_null_means_absent() {
        let json = entry(
            r#"{"type":"s","user_id":"","date":1.7E12,"client_name":{"a":[1,2]},"ip":null,"isMobile":false}"#,
        )
        .expect("transforms");
        assert!(json.contains(r#""originalTimestamp":1.7E12,"sentAt":1.7E12"#), "{json}");
        assert!(json.contains(r#""client_name":{"a":[1,2]}"#), "{json}");
        assert!(json.contains(r#""is_mobile":false"#), "{json}");
        assert!(json.contains(r#""userId":"""#), "{json}");
        assert!(!json.contains("\"ip\""), "{json}");
    }

    /// properties.log_id is the wrapper's: absent without one (even if data has one), null when null.
    #[test]
    fn properties_log_id_is_always_the_wrappers() {
        let w = |t: &str| -> Value {
            serde_json::from_str(&transform_wrapper(T, &raw(t)).expect("transforms").json).expect("JSON")
        };
        let v = w(r#"{"data":{"type":"s","log_id":"inner"}}"#);
        assert!(v["properties"].get("log_id").is_none(), "{v}");
        let v = w(r#"{"log_id":null,"data":{"type":"s"}}"#);
        assert_eq!(v["properties"]["log_id"], Value::Null);
        assert_eq!(keys(&v["properties"]), ["source_type", "log_id"]);
        let v = w(r#"{"log_id":42,"data":{"type":"s","log_id":"inner","client_id":"c"}}"#);
        assert_eq!(v["properties"]["log_id"], 42);
        assert_eq!(keys(&v["properties"]), ["client_id", "log_id", "source_type"]);
    }

    /// ss always identifies; sapi + the description groups with the second-to-last path segment.
    #[test]
    fn identify_and_group_follow_upstreams_rules() {
        let v = value(r#"{"type":"ss","description":"Add members to an organization"}"#);
        assert_eq!(v["type"], "identify");
        assert!(v.get("event").is_none());
        let group = r#"{"type":"sapi","description":"Add members to an organization","details":{"request":{"path":PATH}}}"#;
        let v = value(&group.replace("PATH", r#""/api/v2/organizations/org_1/members""#));
        assert_eq!((v["type"].as_str(), v["groupId"].as_str()), (Some("group"), Some("org_1")));
        let v = value(&group.replace("PATH", r#""/api/v2/organizations/org_1/members/""#));
        assert_eq!(v["groupId"], "members");
        for bad in [r#""members""#, r#""""#, "null", r#""/x//y""#] {
            let err = entry(&group.replace("PATH", bad)).expect_err(bad);
            assert!(matches!(err, TransformError::GroupWithoutGroupId { .. }), "{bad}: {err:?}");
        }
        let err = entry(&group.replace("PATH", "5")).expect_err("number path");
        assert!(matches!(err, TransformError::NonStringPath { .. }), "{err:?}");
        let v = value(r#"{"type":"sapi","description":"Update a client"}"#);
        assert_eq!(v["event"], "Success API Operation");
    }

    /// Truthy non-string types are tracked under their raw value, and an array indexes the table as JS does.
    #[test]
    fn non_string_types_follow_js_semantics() {
        assert_eq!(value(r#"{"type":5}"#)["event"], 5);
        assert_eq!(value(r#"{"type":true}"#)["event"], true);
        assert_eq!(value(r#"{"type":["s"]}"#)["event"], "Success Login");
        assert_eq!(value(r#"{"type":["ss"]}"#)["type"], "track");
        assert_eq!(value(r#"{"type":{}}"#)["event"], serde_json::json!({}));
        assert_eq!(value(r#"{"type":"brand_new"}"#)["event"], "brand_new");
    }

    /// Email and name come only from details.auth.user, never from details.request.auth.user.
    #[test]
    fn traits_come_from_details_auth_user_only() {
        let v = value(r#"{"type":"s","details":{"auth":{"user":{"email":"e","name":null}}}}"#);
        assert_eq!(v["context"]["traits"], serde_json::json!({"email": "e"}));
        let v = value(r#"{"type":"sapi","details":{"request":{"auth":{"user":{"email":"e"}}}}}"#);
        assert!(v["context"].get("traits").is_none(), "{v}");
        let v = value(r#"{"type":"s","details":{"\u0061uth":{"user":{"name":"n"}}}}"#);
        assert_eq!(v["context"]["traits"]["name"], "n");
    }

    /// A repeated key takes its last value, as JSON.parse does.
    #[test]
    fn the_last_of_duplicate_keys_wins() {
        let v = value(r#"{"type":"f","type":"s","user_id":"a","user_id":null}"#);
        assert_eq!(v["event"], "Success Login");
        assert!(v.get("userId").is_none());
        assert!(entry(r#"{"type":"s","type":null}"#).is_err());
        assert_eq!(value(r#"{"\u0074ype":"s"}"#)["event"], "Success Login");
    }

    /// The ids are stable, differ from each other, by log_id and by tenant; without a log_id they still exist.
    #[test]
    fn ids_are_deterministic_v5_uuids_per_tenant_and_log_id() {
        assert_ne!(message_id(T, "a"), anonymous_id(T, "a"));
        assert_ne!(message_id(T, "a"), message_id(T, "b"));
        assert_ne!(message_id(T, "a"), message_id("other.auth0.com", "a"));
        assert_eq!(message_id(T, "a").get_version_num(), 5);
        let e = transform_entry(T, &raw(r#"{"type":"s","log_id":"L"}"#)).expect("ok");
        assert_eq!(e.message_id, message_id(T, "L"));
        assert!(e.json.ends_with(&format!(
            r#""anonymousId":"{}","messageId":"{}"}}"#,
            anonymous_id(T, "L"),
            message_id(T, "L")
        )));
        let a = transform_entry(T, &raw(r#"{"type":"s"}"#)).expect("ok");
        let b = transform_entry(T, &raw(r#"{"type":"f"}"#)).expect("ok");
        assert_ne!(a.message_id, b.message_id);
        assert_eq!(a.message_id, transform_entry(T, &raw(r#"{"type":"s"}"#)).expect("ok").message_id);
    }

    /// Non-objects and type-less entries are errors that say what is wrong.
    /// Lone surrogates, valid JSON that JavaScript reads, are read too: in keys at any level, in copied
    /// values (kept as the escapes they are, as `JSON.stringify` writes them), in the type, and in the path a
    /// group id is cut from.
    #[test]
    fn entries_with_lone_surrogates_transform_as_javascript_reads_them() {
        let out = entry(
            r#"{"\ud800":1,"type":"f","user_name":"\ud800victim@example.org","log_id":"90","details":{"\udc00":"x"}}"#,
        )
        .expect("transforms");
        assert!(out.contains(r#""user_name":"\ud800victim@example.org""#), "{out}");
        assert!(out.contains(r#""event":"Failed Login""#), "{out}");
        assert!(out.contains(r#""details":{"\udc00":"x"}"#), "{out}");
        let out = entry(r#"{"type":"x\ud800","log_id":"91"}"#).expect("transforms");
        assert!(out.contains(r#""event":"x\ud800""#), "{out}");
        let group = r#"{"type":"sapi","description":"Add members to an organization","log_id":"92","details":{"request":{"path":"/api/v2/organizations/org_\ud800\u0041/members"}}}"#;
        let out = entry(group).expect("transforms");
        assert!(out.contains(r#""groupId":"org_\ud800A""#), "{out}");
        let wrapped = transform_any(T, &raw(r#"{"\ud800":0,"log_id":"93","data":{"type":"s","\ud800":1}}"#))
            .expect("a wrapper");
        assert!(wrapped.json.contains(r#""log_id":"93""#), "{}", wrapped.json);
    }

    #[test]
    fn unusable_entries_are_errors_with_reasons() {
        assert_eq!(entry("null"), Err(TransformError::NullEntry));
        assert_eq!(entry("[1]"), Err(TransformError::NotAnObject { kind: "array" }));
        assert_eq!(entry("\"s\""), Err(TransformError::NotAnObject { kind: "string" }));
        let err = entry(r#"{"log_id":"L1","date":"d"}"#).expect_err("no type");
        assert_eq!(err.log_id(), Some("L1"));
        assert!(err.to_string().contains("\"L1\""), "{err}");
        let err = transform_wrapper(T, &raw(r#"{"log_id":"W","data":"x"}"#)).expect_err("no data");
        assert_eq!(err, TransformError::NoData { log_id: Some("W".into()) });
    }

    /// Any JSON value.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
            prop_oneof![
                Just("ss"),
                Just("sapi"),
                Just("s"),
                Just(""),
                Just("Add members to an organization"),
                Just("/a/b/c")
            ]
            .prop_map(|s| Value::String(s.to_owned())),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((key(), inner), 0..8)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// Mostly keys the transform reads, sometimes anything.
    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::sample::select(
                FIELD_KEYS
                    .iter()
                    .chain(["auth", "user", "email", "name", "request", "path", "logs"].iter())
                    .copied()
                    .collect::<Vec<_>>()
            )
            .prop_map(str::to_owned),
            1 => "[a-z_]{0,6}",
        ]
    }

    proptest! {
        /// Whatever the JSON, the transform never panics, and every event it returns is a JSON object with
        /// the keys every event has.
        #[test]
        fn any_json_either_transforms_to_a_complete_event_or_errs(v in any_json()) {
            let text = serde_json::to_string(&v).expect("serialize");
            let raw = raw(&text);
            let results = [transform_entry(T, &raw), transform_wrapper(T, &raw), transform_any(T, &raw)];
            for event in results.into_iter().flatten() {
                let out: Value = serde_json::from_str(&event.json).expect("event is JSON");
                for k in ["context", "integrations", "type", "properties", "anonymousId", "messageId"] {
                    prop_assert!(out.get(k).is_some(), "{} missing in {}", k, event.json);
                }
                let id = event.message_id.to_string();
                prop_assert_eq!(out["messageId"].as_str(), Some(id.as_str()));
                prop_assert!(out["properties"].get("source_type").is_some());
            }
        }
    }
}
