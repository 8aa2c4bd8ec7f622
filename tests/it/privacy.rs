//! The privacy rules on every fixture entry and webhook edge case, through the transform: what reaches
//! RudderStack holds no hashed value in the clear and no full IPv4 address, differs from the unprotected event
//! only under the listed and IP keys, and depends on the hash key exactly as a keyed hash should.

use std::collections::HashSet;

use auth0_rudderstack::privacy::{Privacy, Rules};
use auth0_rudderstack::transform::transform_any;
use secrecy::SecretSlice;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::support::fixtures::{self, TENANT};

/// The fields hashed in these tests.
const HASHED: [&str; 3] = ["email", "user_name", "name"];

/// Hash the usual identity fields and truncate IPs, under `key`.
fn privacy(key: &[u8]) -> Privacy {
    let rules = Rules { hash: HASHED.map(str::to_owned).to_vec(), truncate_ip: true, ..Rules::default() };
    Privacy::new(&rules, Some(SecretSlice::from(key.to_vec()))).expect("valid rules")
}

/// Every entry of the fixtures, as compact JSON text: the transform fixtures' entries, and each element of
/// each webhook edge case's body (split as upstream does: an array, a `{logs}` object, or one object).
fn entries() -> Vec<String> {
    let mut all = fixtures::corpus_entries();
    for (_, file) in fixtures::edge_case_files() {
        for input in file["input"].as_array().expect("input") {
            let Some(body) = input.pointer("/request/body").and_then(Value::as_str) else { continue };
            let Ok(value) = serde_json::from_str::<Value>(body) else { continue };
            let list = match value {
                Value::Array(items) => items,
                Value::Object(ref map) => match map.get("logs") {
                    Some(Value::Array(items)) => items.clone(),
                    _ => vec![value],
                },
                other => vec![other],
            };
            all.extend(list.iter().map(|e| serde_json::to_string(e).expect("serialize")));
        }
    }
    all
}

/// The event of an entry's text, when the transform gives one.
fn event(text: &str) -> Option<Value> {
    let raw = RawValue::from_string(text.to_owned()).expect("valid JSON");
    let event = transform_any(TENANT, &raw).ok()?;
    Some(serde_json::from_str(&event.json).expect("event is JSON"))
}

/// Each entry's event without and with privacy (entries without an event are skipped).
fn event_pairs(p: &Privacy) -> Vec<(String, Value, Value)> {
    let mut pairs = Vec::new();
    for text in entries() {
        let private = p.apply(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let Some(plain) = event(&text) else { continue };
        let protected = event(&private).expect("the rewritten entry gives an event too");
        pairs.push((text, plain, protected));
    }
    assert!(pairs.len() > 150, "only {} events", pairs.len());
    pairs
}

/// Whether a key is one `truncate_ip` applies to.
fn is_ip_key(key: &str) -> bool {
    key == "ip" || key.ends_with("_ip")
}

/// Split a JSON tree's string values into those under a hashed key and all others.
fn strings(value: &Value, under_hashed: bool, hashed: &mut Vec<String>, others: &mut HashSet<String>) {
    match value {
        Value::String(s) if under_hashed => hashed.push(s.clone()),
        Value::String(s) => {
            others.insert(s.clone());
        }
        Value::Array(items) => items.iter().for_each(|v| strings(v, under_hashed, hashed, others)),
        Value::Object(map) => {
            for (k, v) in map {
                strings(v, under_hashed || HASHED.contains(&k.as_str()), hashed, others);
            }
        }
        _ => {}
    }
}

/// No value of a hashed field reaches the event in the clear, and no email even as part of a longer string;
/// unless the same text stands elsewhere in the entry or the event, outside the hashed fields.
#[test]
fn no_hashed_value_appears_in_the_transformed_output() {
    let p = privacy(b"test-key-0123456789abcdef");
    let (mut checked, mut elsewhere) = (0, 0);
    for (text, plain, protected) in event_pairs(&p) {
        let input: Value = serde_json::from_str(&text).expect("JSON");
        let (mut hashed, mut allowed) = (Vec::new(), HashSet::new());
        strings(&input, false, &mut hashed, &mut allowed);
        // What the transform writes outside the hashed fields on its own (names, constants) is allowed too.
        strings(&plain, false, &mut Vec::new(), &mut allowed);
        let mut out_strings = HashSet::new();
        strings(&protected, false, &mut Vec::new(), &mut out_strings);
        for value in hashed.iter().filter(|v| !v.is_empty()) {
            let email = value.contains('@');
            let legitimate = if email {
                allowed.iter().any(|a| a.contains(value.as_str()))
            } else {
                allowed.contains(value)
            };
            if legitimate {
                elsewhere += 1;
                continue;
            }
            checked += 1;
            if email {
                let output = serde_json::to_string(&protected).expect("serialize");
                assert!(!output.contains(value.as_str()), "{value} leaked from {text}");
            } else {
                assert!(!out_strings.contains(value), "{value:?} leaked from {text}");
            }
        }
    }
    assert!(checked > 250, "only {checked} values checked");
    assert!(elsewhere * 10 < checked, "{elsewhere} of {checked} values also stand outside the hashed fields");
}

/// Every IPv4 address in `context.ip` and `context.request_ip` ends in `.0`.
#[test]
fn every_ipv4_context_ip_ends_in_zero() {
    let p = privacy(b"test-key-0123456789abcdef");
    let mut seen = 0;
    for (text, _, protected) in event_pairs(&p) {
        for key in ["ip", "request_ip"] {
            let Some(ip) = protected["context"][key].as_str() else { continue };
            if ip.parse::<std::net::Ipv4Addr>().is_ok() {
                assert!(ip.ends_with(".0"), "{key} {ip} from {text}");
                seen += 1;
            }
        }
    }
    assert!(seen > 200, "only {seen} IPv4 addresses seen");
}

/// Walk two event trees side by side and collect the paths (as key lists) where leaves differ.
fn differences(a: &Value, b: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys_x: Vec<&String> = x.keys().collect();
            let keys_y: Vec<&String> = y.keys().collect();
            assert_eq!(keys_x, keys_y, "different keys at {path:?}");
            for (k, v) in x {
                path.push(k.clone());
                differences(v, &y[k], path, out);
                path.pop();
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                path.push(format!("[{i}]"));
                differences(v, w, path, out);
                path.pop();
            }
        }
        _ if a != b => out.push(path.clone()),
        _ => {}
    }
}

/// The only paths where the protected event differs from the unprotected one end in a hashed key or an IP
/// key; and the two ids, only for entries without a string log_id, whose ids derive from the entry's bytes.
#[test]
fn the_output_differs_only_under_hashed_and_ip_keys() {
    let p = privacy(b"test-key-0123456789abcdef");
    let mut changed = 0;
    for (text, plain, protected) in event_pairs(&p) {
        let input: Value = serde_json::from_str(&text).expect("JSON");
        let log_id = input.get("log_id").or_else(|| input.pointer("/data/log_id"));
        let ids_from_bytes = !log_id.is_some_and(Value::is_string);
        let mut paths = Vec::new();
        differences(&plain, &protected, &mut Vec::new(), &mut paths);
        for path in &paths {
            let last = path.last().map(String::as_str).unwrap_or_default();
            let ids = matches!(last, "messageId" | "anonymousId") && path.len() == 1 && ids_from_bytes;
            assert!(HASHED.contains(&last) || is_ip_key(last) || ids, "{path:?} changed in {text}");
        }
        changed += paths.len();
    }
    assert!(changed > 500, "only {changed} values changed");
}

/// The same key gives byte-identical events twice; another key gives other hashes at every hashed path.
#[test]
fn the_same_key_repeats_and_another_key_gives_other_hashes() {
    let a = privacy(b"test-key-0123456789abcdef");
    let b = privacy(b"test-key-0123456789abcdeF");
    let mut compared = 0;
    for text in entries() {
        let once = a.apply(&text).expect("applies");
        let twice = a.apply(&text).expect("applies");
        assert_eq!(once, twice, "{text}");
        let other = b.apply(&text).expect("applies");
        let (Ok(x), Ok(y)) = (serde_json::from_str::<Value>(&once), serde_json::from_str::<Value>(&other))
        else {
            panic!("not JSON: {once} / {other}");
        };
        let mut paths = Vec::new();
        differences(&x, &y, &mut Vec::new(), &mut paths);
        let (mut hashed_a, mut hashed_b) = (Vec::new(), Vec::new());
        strings(&x, false, &mut hashed_a, &mut HashSet::new());
        strings(&y, false, &mut hashed_b, &mut HashSet::new());
        for (h, g) in hashed_a.iter().zip(&hashed_b) {
            assert_eq!(h.len(), 64, "{h} in {text}");
            assert_ne!(h, g, "{text}");
            compared += 1;
        }
        for path in &paths {
            assert!(path.iter().any(|k| HASHED.contains(&k.as_str())), "{path:?} differs in {text}");
        }
    }
    assert!(compared > 300, "only {compared} hashes compared");
}
