//! The transform against RudderStack's own output: every fixture entry, every webhook edge case, and the
//! deliberate differences (deterministic ids, per-entry errors instead of whole-request crashes, NDJSON).

use std::collections::{HashMap, HashSet};

use assert_cmd::Command;
use auth0_rudderstack::input::{SetAside, transform_stream};
use auth0_rudderstack::transform::{TransformError, transform_any, transform_entry, transform_wrapper};
use serde_json::Value;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::support::Trickle;
use crate::support::fixtures::{self, TENANT};

/// Parse JSON text into a `RawValue` for the transform.
fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_owned()).expect("valid JSON")
}

/// Remove and return the two ids we set, checking they are UUIDs.
fn take_ids(event: &mut Value) -> (Uuid, Uuid) {
    let obj = event.as_object_mut().expect("event is an object");
    let message = obj.shift_remove("messageId").expect("messageId present");
    let anonymous = obj.shift_remove("anonymousId").expect("anonymousId present");
    let parse = |v: Value| Uuid::parse_str(v.as_str().expect("id is a string")).expect("id is a UUID");
    (parse(message), parse(anonymous))
}

/// Upstream parses the entry with `JSON.parse` and re-serializes with `JSON.stringify`, so every number
/// comes out as a JS double (`1.7E12` becomes `1700000000000`); we copy the number's text verbatim. Compare
/// numbers as doubles on both sides so that only a real difference in value fails.
fn normalise_numbers(value: &mut Value) {
    match value {
        Value::Number(n) => {
            let f = n.as_f64().expect("finite number");
            *value = serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number);
        }
        Value::Array(items) => items.iter_mut().for_each(normalise_numbers),
        Value::Object(map) => map.values_mut().for_each(normalise_numbers),
        _ => {}
    }
}

/// Our event with the ids removed and numbers normalised, plus the ids.
fn comparable(json: &str) -> (Value, (Uuid, Uuid)) {
    let mut event: Value = serde_json::from_str(json).expect("event is JSON");
    let ids = take_ids(&mut event);
    normalise_numbers(&mut event);
    (event, ids)
}

/// An upstream event with its (pinned, random upstream) anonymousId removed and numbers normalised.
fn upstream(expected: &Value) -> Value {
    let mut expected = expected.clone();
    let obj = expected.as_object_mut().expect("expected event is an object");
    obj.shift_remove("anonymousId");
    assert!(!obj.contains_key("messageId"), "upstream sets no messageId");
    normalise_numbers(&mut expected);
    expected
}

/// Every fixture entry gives exactly RudderStack's event, with stable UUID ids, distinct per log_id.
#[test]
fn every_fixture_entry_transforms_to_exactly_the_upstream_event_with_deterministic_ids() {
    let mut compared = 0;
    let mut message_ids = HashSet::new();
    let mut anonymous_ids = HashSet::new();
    let mut by_log_id = HashMap::new();
    for (name, file) in fixtures::transform_files() {
        let inputs = file["input"].as_array().expect("input");
        let expected = file["expected"].as_array().expect("expected");
        assert_eq!(inputs.len(), expected.len(), "{name}");
        for (i, (input, expected)) in inputs.iter().zip(expected).enumerate() {
            let entry = raw(&serde_json::to_string(input).expect("serialize"));
            let first = transform_entry(TENANT, &entry).unwrap_or_else(|e| panic!("{name}[{i}]: {e}"));
            let again = transform_entry(TENANT, &entry).expect("second run");
            assert_eq!(first.json, again.json, "{name}[{i}]: not deterministic");
            let (ours, (message, anonymous)) = comparable(&first.json);
            assert_eq!(message, first.message_id, "{name}[{i}]: Event.message_id");
            assert_ne!(message, anonymous, "{name}[{i}]: messageId == anonymousId");
            // The ids derive from the log_id, and the fixtures reuse some log_ids (sample data): entries that
            // share a log_id share ids, entries that do not never do. Entries without a string log_id get ids
            // derived from their bytes.
            let key = match &input["log_id"] {
                Value::String(id) => id.clone(),
                _ => serde_json::to_string(input).expect("serialize"),
            };
            match by_log_id.get(&key) {
                Some(&ids) => assert_eq!(ids, (message, anonymous), "{name}[{i}]: same log_id, other ids"),
                None => {
                    by_log_id.insert(key, (message, anonymous));
                    assert!(message_ids.insert(message), "{name}[{i}]: messageId repeated");
                    assert!(anonymous_ids.insert(anonymous), "{name}[{i}]: anonymousId repeated");
                }
            }
            assert_eq!(ours, upstream(expected), "{name}[{i}]");
            compared += 1;
        }
    }
    assert_eq!(compared, 142);
}

/// Our key order is `JSON.stringify`'s: after removing our ids, the events' key sequences match upstream's
/// at every level (the fixtures keep upstream's order).
#[test]
fn fixture_events_keep_the_upstream_key_order_at_every_level() {
    fn keys(v: &Value, path: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    let p = format!("{path}.{k}");
                    out.push(p.clone());
                    if k != "details" && k != "auth0_client" {
                        keys(v, &p, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| keys(v, path, out)),
            _ => {}
        }
    }
    let mut compared = 0;
    for (name, file) in fixtures::transform_files() {
        let inputs = file["input"].as_array().expect("input");
        for (i, (input, expected)) in
            inputs.iter().zip(file["expected"].as_array().expect("expected")).enumerate()
        {
            let entry = raw(&serde_json::to_string(input).expect("serialize"));
            let (ours, _) = comparable(&transform_entry(TENANT, &entry).expect("transforms").json);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            keys(&ours, "", &mut a);
            keys(&upstream(expected), "", &mut b);
            assert_eq!(a, b, "{name}[{i}]");
            compared += 1;
        }
    }
    assert_eq!(compared, 142);
}

/// The entries of one webhook body, split the way upstream does (array, `{logs}`, single object).
/// `None` when the body is not JSON (upstream: 400 Malformed JSON).
fn webhook_entries(body: &str) -> Option<Vec<Box<RawValue>>> {
    Some(fixtures::webhook_body_entries(body)?.iter().map(|e| raw(e)).collect())
}

/// Every edge case upstream answers with a batch gives the same batch from us; entries upstream skipped are
/// per-entry errors (no type, or no `data`) here, never silently dropped.
#[test]
fn every_webhook_edge_case_with_an_upstream_batch_gives_the_same_events() {
    let mut requests = 0;
    for (name, file) in fixtures::edge_case_files() {
        for (r, (input, output)) in file["input"]
            .as_array()
            .expect("input")
            .iter()
            .zip(file["output"].as_array().expect("output"))
            .enumerate()
        {
            let Some(batch) = output.pointer("/output/batch").and_then(Value::as_array) else {
                continue; // whole-request failures have their own tests below
            };
            let body = input.pointer("/request/body").and_then(Value::as_str).expect("body");
            let entries = webhook_entries(body).expect("body is JSON");
            let mut ours = Vec::new();
            for entry in &entries {
                match transform_wrapper(TENANT, entry) {
                    Ok(event) => ours.push(comparable(&event.json).0),
                    Err(TransformError::NoType { .. } | TransformError::NoData { .. }) => {}
                    Err(e) => panic!("{name} request {r}: unexpected error {e}"),
                }
            }
            let theirs: Vec<Value> = batch.iter().map(upstream).collect();
            assert_eq!(ours, theirs, "{name} request {r}");
            requests += 1;
        }
    }
    assert!(requests >= 20, "only {requests} requests compared");
}

/// Where upstream loses a whole request to a group entry without a path, only that entry fails here.
#[test]
fn a_group_entry_without_a_path_fails_alone_and_names_its_log_id() {
    let file = fixtures::edge_case("05_group_without_path_crashes_request.json");
    let body = file.pointer("/input/0/request/body").and_then(Value::as_str).expect("body");
    let entries = webhook_entries(body).expect("JSON");
    assert_eq!(entries.len(), 2);
    let err = transform_wrapper(TENANT, &entries[0]).expect_err("group without path");
    assert!(matches!(err, TransformError::GroupWithoutGroupId { .. }), "{err:?}");
    assert_eq!(err.log_id(), Some("G1"));
    let text = err.to_string();
    assert!(text.contains("\"G1\"") && text.contains("details.request.path"), "{text}");
    let neighbour: Value =
        serde_json::from_str(&transform_wrapper(TENANT, &entries[1]).expect("neighbour").json).expect("json");
    assert_eq!(neighbour["event"], "Success Login");
    assert_eq!(neighbour["properties"]["log_id"], "G2");
}

/// Where upstream loses a whole request to a `null` element, only that element fails here.
#[test]
fn a_null_element_fails_alone_and_its_neighbours_are_transformed() {
    let file = fixtures::edge_case("13_null_element_crashes_request.json");
    let body = file.pointer("/input/0/request/body").and_then(Value::as_str).expect("body");
    let entries = webhook_entries(body).expect("JSON");
    let results: Vec<_> = entries.iter().map(|e| transform_wrapper(TENANT, e)).collect();
    let nulls = results.iter().filter(|r| matches!(r, Err(TransformError::NullEntry))).count();
    assert_eq!(nulls, 1, "{results:?}");
    assert!(results.iter().filter(|r| r.is_ok()).count() >= 1, "{results:?}");
    assert!(results.iter().all(|r| r.is_ok() || matches!(r, Err(TransformError::NullEntry))), "{results:?}");
}

/// Entries upstream drops silently for lacking a type are errors here that say so and name the log_id.
#[test]
fn entries_without_a_truthy_type_are_errors_naming_their_log_id() {
    let file = fixtures::edge_case("03_missing_type_dropped.json");
    let body = file.pointer("/input/0/request/body").and_then(Value::as_str).expect("body");
    let entries = webhook_entries(body).expect("JSON");
    assert!(!entries.is_empty());
    for entry in &entries {
        let err = transform_wrapper(TENANT, entry).expect_err("no type");
        assert!(matches!(err, TransformError::NoType { .. } | TransformError::NoData { .. }), "{err:?}");
        if let Some(id) = err.log_id() {
            assert!(err.to_string().contains(id), "{err}");
        }
    }
    for ty in ["null", "\"\"", "0", "false", "-0.0"] {
        let entry = raw(&format!(r#"{{"log_id":"L","type":{ty},"date":"d"}}"#));
        let err = transform_entry(TENANT, &entry).expect_err(ty);
        assert_eq!(err, TransformError::NoType { log_id: Some("L".into()) });
        assert!(err.to_string().contains("\"L\"") && err.to_string().contains("type"), "{err}");
    }
}

/// A JSON Lines body, which upstream rejects as malformed, is read entry by entry by `transform_stream`.
#[test]
fn a_json_lines_body_is_accepted_by_the_stream_reader() {
    let file = fixtures::edge_case("14_json_lines_body_rejected.json");
    let body = file.pointer("/input/0/request/body").and_then(Value::as_str).expect("body");
    let mut out = Vec::new();
    let mut set_aside = Vec::new();
    let summary = transform_stream(TENANT, body.as_bytes(), &mut out, &mut |m: &SetAside| {
        set_aside.push(m.to_string())
    })
    .expect("NDJSON is accepted");
    assert!(set_aside.is_empty(), "{set_aside:?}");
    assert_eq!((summary.entries, summary.events), (2, 2));
    let events: Vec<Value> = serde_json::from_slice(&out).expect("output is a JSON array");
    let names: Vec<&str> = events.iter().map(|e| e["event"].as_str().expect("event")).collect();
    assert_eq!(names, ["Success Login", "Failed Login"]);
    assert_eq!(events[0]["properties"]["log_id"], "J1");
    assert_eq!(events[1]["properties"]["log_id"], "J2");
}

/// The same entry gives the same ids whether it comes raw or in a wrapper with the same log_id.
#[test]
fn a_raw_entry_and_its_wrapper_give_the_same_event() {
    let entry = with_log_ids(4).swap_remove(3);
    let log_id: Value = serde_json::from_str::<Value>(&entry).expect("json")["log_id"].clone();
    let wrapper = format!(r#"{{"log_id":{log_id},"data":{entry}}}"#);
    let a = transform_entry(TENANT, &raw(&entry)).expect("entry");
    let b = transform_wrapper(TENANT, &raw(&wrapper)).expect("wrapper");
    let c = transform_any(TENANT, &raw(&wrapper)).expect("any");
    assert_eq!(a.json, b.json);
    assert_eq!(b.json, c.json);
}

/// The first `n` fixture entries that have a string log_id.
fn with_log_ids(n: usize) -> Vec<String> {
    fixtures::corpus_entries()
        .into_iter()
        .filter(|e| serde_json::from_str::<Value>(e).expect("json")["log_id"].is_string())
        .take(n)
        .collect()
}

/// Run the binary's `transform` on `input`, via a file or stdin; returns (status, stdout, stderr).
pub(crate) fn run_cli(input: &[u8], via_stdin: bool) -> (i32, Vec<u8>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_auth0-rudderstack"));
    let dir = tempfile::tempdir().expect("tempdir");
    let output = if via_stdin {
        cmd.arg("transform").write_stdin(input.to_vec()).output()
    } else {
        let path = dir.path().join("input.json");
        std::fs::write(&path, input).expect("write input");
        cmd.arg("transform").arg(&path).output()
    }
    .expect("run binary");
    (output.status.code().unwrap_or(-1), output.stdout, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Every input shape the binary accepts (array, one object, NDJSON, wrappers, `{logs}`), from a file or stdin,
/// yields the same events.
#[test]
fn the_binary_gives_the_same_events_for_every_input_shape_from_a_file_or_stdin() {
    // Entries with a log_id: without one, the ids derive from the bytes given, which differ between shapes.
    let entries = with_log_ids(20);
    let wrap = |e: &String| {
        let id = serde_json::from_str::<Value>(e).expect("json")["log_id"].clone();
        format!(r#"{{"log_id":{id},"data":{e}}}"#)
    };
    let array = format!("[{}]", entries.join(",\n"));
    let ndjson = entries.iter().map(|e| format!("{e}\n")).collect::<String>();
    let wrappers = format!("[{}]", entries.iter().map(wrap).collect::<Vec<_>>().join(","));
    let wrapper_lines = entries.iter().map(|e| wrap(e) + "\n").collect::<String>();
    let logs = format!(r#"{{"logs":{wrappers}}}"#);
    let pretty =
        serde_json::to_string_pretty(&serde_json::from_str::<Value>(&array).expect("json")).expect("pretty");

    let (code, reference, stderr) = run_cli(array.as_bytes(), false);
    assert_eq!(code, 0, "{stderr}");
    let reference: Vec<Value> = serde_json::from_slice(&reference).expect("JSON array out");
    assert_eq!(reference.len(), 20);
    for (shape, input) in [
        ("array", &array),
        ("pretty array", &pretty),
        ("ndjson", &ndjson),
        ("wrappers", &wrappers),
        ("wrapper lines", &wrapper_lines),
        ("logs object", &logs),
    ] {
        for via_stdin in [false, true] {
            let (code, out, stderr) = run_cli(input.as_bytes(), via_stdin);
            assert_eq!(code, 0, "{shape} (stdin: {via_stdin}): {stderr}");
            let events: Vec<Value> = serde_json::from_slice(&out).expect("JSON array out");
            assert_eq!(events, reference, "{shape} (stdin: {via_stdin})");
        }
    }
    let (code, out, stderr) = run_cli(entries[0].as_bytes(), true);
    assert_eq!(code, 0, "{stderr}");
    let one: Vec<Value> = serde_json::from_slice(&out).expect("JSON array out");
    assert_eq!(one, reference[..1]);
}

/// Malformed JSON stops the run with a non-zero exit and a message that says where it went wrong.
#[test]
fn a_malformed_file_exits_4_naming_the_position() {
    let entries: Vec<String> = fixtures::corpus_entries().into_iter().take(3).collect();
    let broken = format!("[{},{},{{\"type\":\"s\",\"date\": oops}}]", entries[0], entries[1]);
    let (code, _, stderr) = run_cli(broken.as_bytes(), false);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("entry 3") && stderr.contains("byte"), "{stderr}");
    let (code, _, stderr) = run_cli(format!("[{}", entries[0]).as_bytes(), true);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("byte") && stderr.contains("end"), "{stderr}");
}

/// A directory is the wrong path on the command line, not input that is not JSON: exit 2 (a usage error)
/// naming it, not 4, and no events.
#[test]
fn a_directory_given_to_transform_exits_2_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_auth0-rudderstack"))
        .arg("transform")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&dir.path().display().to_string()) && stderr.contains("directory"), "{stderr}");
    assert!(output.stdout.is_empty(), "{}", String::from_utf8_lossy(&output.stdout));
}

/// An entry that produces no event is reported on stderr by its log_id, and the others still come out.
#[test]
fn a_set_aside_entry_is_reported_on_stderr_by_log_id_and_the_run_goes_on() {
    let entries: Vec<String> = fixtures::corpus_entries().into_iter().take(2).collect();
    let bad = r#"{"log_id":"BAD-1","type":"sapi","description":"Add members to an organization","date":"x"}"#;
    let input = format!("{}\n{bad}\nnull\n{}\n", entries[0], entries[1]);
    let (code, out, stderr) = run_cli(input.as_bytes(), true);
    assert_eq!(code, 0, "{stderr}");
    let events: Vec<Value> = serde_json::from_slice(&out).expect("JSON array out");
    assert_eq!(events.len(), 2);
    assert!(stderr.contains("BAD-1") && stderr.contains("details.request.path"), "{stderr}");
    assert!(stderr.contains("entry 3") && stderr.contains("null"), "{stderr}");
}

/// A stream larger than one read buffer, with entries straddling buffer edges, comes out complete and in order.
#[test]
fn a_large_stream_comes_out_complete_and_in_order() {
    let n = 3000;
    let mut input = Vec::new();
    input.extend_from_slice(b"[");
    for (i, e) in fixtures::synthetic_entries(n).enumerate() {
        if i > 0 {
            input.extend_from_slice(b" ,\n\t");
        }
        input.extend_from_slice(e.as_bytes());
    }
    input.extend_from_slice(b"]");
    let mut out = Vec::new();
    let summary =
        transform_stream(TENANT, &input[..], &mut out, &mut |m: &SetAside| panic!("set aside: {m}"))
            .expect("transforms");
    assert_eq!((summary.entries, summary.events, summary.set_aside), (n as u64, n as u64, 0));
    let events: Vec<Value> = serde_json::from_slice(&out).expect("JSON array");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["properties"]["log_id"], fixtures::synthetic_log_id(i).as_str(), "event {i}");
    }
}

/// Strings with escaped quotes and backslashes, nesting, `{logs}` bodies and stray scalars read the same
/// whether the input arrives whole or a few bytes at a time.
#[test]
fn input_split_at_every_possible_point_reads_the_same() {
    let input = concat!(
        r#"{"logs": [{"log_id":"A","data":{"type":"s","description":"q\"uo]te}\\","details":{"a":[1,{"b":"\\\\"}]}}}], "x": {"y": "]"}}"#,
        "\n",
        r#"[ {"type":"f","log_id":"B","user_agent":"ends with backslash \\"} , 7 ,"str", null ]"#,
        "\n",
        r#"{"type":"s","log_id":"C"}{"type":"s","log_id":"D"}"#,
        "\n  true\n",
    );
    let run = |step: usize| {
        let mut out = Vec::new();
        let mut set_aside = Vec::new();
        let summary = transform_stream(
            TENANT,
            Trickle { data: input.as_bytes(), step },
            &mut out,
            &mut |s: &SetAside| set_aside.push((s.index, s.error.clone())),
        )
        .expect("reads");
        (summary, String::from_utf8(out).expect("UTF-8"), set_aside)
    };
    let whole = run(usize::MAX);
    let events: Vec<Value> = serde_json::from_str(&whole.1).expect("JSON array");
    let ids: Vec<&str> = events.iter().map(|e| e["properties"]["log_id"].as_str().expect("log_id")).collect();
    assert_eq!(ids, ["A", "B", "C", "D"]);
    assert_eq!(events[0]["properties"]["description"], "q\"uo]te}\\");
    assert_eq!((whole.0.entries, whole.0.events, whole.0.set_aside), (8, 4, 4));
    let kinds: Vec<u64> = whole.2.iter().map(|(i, _)| *i).collect();
    assert_eq!(kinds, [3, 4, 5, 8]);
    for step in [1, 2, 3, 5, 7, 64] {
        assert_eq!(run(step), whole, "step {step}");
    }
}

/// JSON text without the whitespace between tokens; strings (escapes included) and numbers are kept exactly as
/// written.
fn minify(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if !c.is_ascii_whitespace() {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

/// The anonymousId upstream's random one is pinned to in the fixtures.
const PINNED_ANONYMOUS_ID: &str = "00000000-0000-4000-8000-000000000000";

/// A fixture file with its entries and events as the text they were written in.
#[derive(serde::Deserialize)]
struct RawFixture {
    input: Vec<Box<RawValue>>,
    expected: Vec<Box<RawValue>>,
}

/// Whether `JSON.parse` then `JSON.stringify` gives `value`'s text back, so that upstream's output can be
/// compared as text: every number is an integer a double holds exactly (a JS double would respell `1.0`,
/// `1e3` or 2^53 + 1), and no object has a key that is an array index (`JSON.parse` moves those first).
fn js_round_trips(value: &Value) -> bool {
    const MAX_SAFE: u64 = (1 << 53) - 1;
    match value {
        Value::Number(n) => {
            n.as_u64().is_some_and(|u| u <= MAX_SAFE)
                || n.as_i64().is_some_and(|i| i.unsigned_abs() <= MAX_SAFE)
        }
        Value::Array(items) => items.iter().all(js_round_trips),
        Value::Object(map) => map.iter().all(|(k, v)| {
            let index =
                k == "0" || (!k.starts_with('0') && !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()));
            !index && js_round_trips(v)
        }),
        _ => true,
    }
}

/// The entries of a webhook body as the text they were sent in (array, `{logs}`, single object).
fn raw_webhook_entries(body: &str) -> Vec<Box<RawValue>> {
    #[derive(serde::Deserialize)]
    struct Logs {
        logs: Vec<Box<RawValue>>,
    }
    if body.trim_start().starts_with('[') {
        return serde_json::from_str(body).expect("an array body");
    }
    match serde_json::from_str::<Logs>(body) {
        Ok(l) => l.logs,
        Err(_) => vec![raw(body)],
    }
}

/// How our event's text differs from upstream's, once our two ids are replaced by upstream's pinned
/// anonymousId (and no messageId), where upstream has it: last. `None` when they are the same bytes.
fn text_difference(what: &str, input: &RawValue, ours: &str, theirs: &str, pinned: &str) -> Option<String> {
    assert!(
        js_round_trips(&serde_json::from_str(input.get()).expect("JSON")),
        "{what}: upstream is not exact"
    );
    let (_, (message, anonymous)) = comparable(ours);
    let tail = format!(r#","anonymousId":"{anonymous}","messageId":"{message}"}}"#);
    let head = ours.strip_suffix(&tail).unwrap_or_else(|| panic!("{what}: our ids are not last: {ours}"));
    let ours = format!(r#"{head},"anonymousId":"{pinned}"}}"#);
    let theirs = minify(theirs);
    (ours != theirs).then(|| format!("{what}\n  ours:     {ours}\n  upstream: {theirs}"))
}

/// Our events are upstream's text byte for byte, ids aside, wherever upstream's output is exact.
#[test]
fn events_are_upstreams_text_byte_for_byte_wherever_upstream_is_exact() {
    // Exact where `JSON.parse` then `JSON.stringify` gives the entry's text back (see `js_round_trips`): all 142
    // fixture entries and the edge cases produced by running upstream's code. This checks key order at every
    // level, `details` and `auth0_client` included, and the spelling of every number and string, which the
    // value comparison above does not.
    let mut compared = 0;
    let mut differ = Vec::new();
    for (name, _) in fixtures::transform_files() {
        let text =
            std::fs::read_to_string(fixtures::fixtures_dir().join("transform").join(&name)).expect("read");
        let file: RawFixture = serde_json::from_str(&text).expect("fixture shape");
        for (i, (input, expected)) in file.input.iter().zip(&file.expected).enumerate() {
            // Auth0 sends compact JSON; the fixture's indentation is not part of the entry.
            let entry = raw(&minify(input.get()));
            let event = transform_entry(TENANT, &entry).unwrap_or_else(|e| panic!("{name}[{i}]: {e}"));
            differ.extend(text_difference(
                &format!("{name}[{i}]"),
                &entry,
                &event.json,
                expected.get(),
                PINNED_ANONYMOUS_ID,
            ));
            compared += 1;
        }
    }
    assert_eq!(compared, 142);
    for (name, file) in fixtures::edge_case_files() {
        // Upstream's own test cases are hand-written expectations compared by value, so only the outputs
        // produced by running upstream's code are its text.
        let generated = file["origin"].as_str().is_some_and(|o| o.starts_with("GENERATED"));
        let Some(pinned) = file["mocked_uuid"].as_str().filter(|_| generated) else { continue };
        let text = std::fs::read_to_string(fixtures::fixtures_dir().join("transform-edge-cases").join(&name))
            .expect("read");
        #[derive(serde::Deserialize)]
        struct Output {
            output: Option<Batch>,
        }
        #[derive(serde::Deserialize)]
        struct Batch {
            batch: Vec<Box<RawValue>>,
        }
        #[derive(serde::Deserialize)]
        struct RawEdge {
            output: Vec<Output>,
        }
        let outputs: RawEdge = serde_json::from_str(&text).expect("edge case shape");
        for (r, (input, output)) in
            file["input"].as_array().expect("input").iter().zip(outputs.output).enumerate()
        {
            let Some(batch) = output.output else { continue };
            let body = input.pointer("/request/body").and_then(Value::as_str).expect("body");
            let mut theirs = batch.batch.iter();
            for (e, entry) in raw_webhook_entries(body).iter().enumerate() {
                let Ok(event) = transform_wrapper(TENANT, entry) else { continue };
                let what = format!("{name} request {r} entry {e}");
                let expected = theirs.next().unwrap_or_else(|| panic!("{what}: upstream has fewer events"));
                if js_round_trips(&serde_json::from_str(entry.get()).expect("JSON")) {
                    differ.extend(text_difference(&what, entry, &event.json, expected.get(), pinned));
                    compared += 1;
                }
            }
        }
    }
    assert!(differ.is_empty(), "{} events differ from upstream's text:\n{}", differ.len(), differ.join("\n"));
    assert_eq!(compared, 142 + 14, "the generated edge cases hold 14 events");
}

/// `transform` never reads a `config.toml` that merely sits in the working directory: neither its tenant (the
/// ids) nor its privacy rules apply unless the config is named with `-c`; with `-c` they both do.
#[test]
fn transform_ignores_a_config_in_the_working_directory_unless_it_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = r#"
[auth0]
domain = "cwd-tenant.example.com"
client_id = "id"
client_secret = "not-a-placeholder-secret-value"
[rudderstack]
data_plane_url = "https://plain.example.com"
write_key = "not-a-placeholder-write-key"
[privacy]
hash = ["user_name"]
"#;
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    std::fs::write(dir.path().join("hash.key"), "0123456789abcdef0123456789abcdef").unwrap();
    let entry = r#"{"log_id":"90020260101000000000000000000000000000000000000000001","type":"s","date":"2026-01-01T00:00:00.000Z","user_name":"someone@example.com"}"#;
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_auth0-rudderstack"))
            .current_dir(dir.path())
            .env_remove("AUTH0_RUDDERSTACK_CONFIG")
            .env("AUTH0_RUDDERSTACK_HASH_KEY", "0123456789abcdef0123456789abcdef")
            .args(args)
            .write_stdin(entry)
            .output()
            .expect("run binary");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let events: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        (events[0].clone(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let expected_id = |domain: &str| {
        let (e, _) = run(&["transform", "--domain", domain]);
        e["messageId"].as_str().unwrap().to_string()
    };

    let (plain, note) = run(&["transform"]);
    assert_eq!(
        plain["context"]["traits"]["user_name"], "someone@example.com",
        "the rules of an unnamed config applied"
    );
    let tenant_id = expected_id("cwd-tenant.example.com");
    assert_ne!(plain["messageId"].as_str().unwrap(), tenant_id, "the ids came from an unnamed config");
    assert!(note.contains("no --domain given"), "{note}");

    let (named, _) = run(&["-c", "config.toml", "transform"]);
    assert_ne!(named["context"]["traits"]["user_name"], "someone@example.com", "the named config's rules");
    assert_eq!(named["messageId"].as_str().unwrap(), tenant_id);
}

/// An entry over the entry limit (3 MB; the limit is 1 MiB without a config) is set aside while it is read:
/// `transform` names its position on stderr, writes the events of the entries around it, and exits 0.
#[test]
fn transform_reports_an_entry_over_the_limit_by_position_and_goes_on() {
    let entries = with_log_ids(6);
    let big = format!(r#"{{"type":"s","log_id":"big-1","description":"{}"}}"#, "z".repeat(3_000_000));
    let mut input = entries[..3].iter().map(|e| format!("{e}\n")).collect::<String>();
    let offset = input.len();
    input.push_str(&big);
    input.push('\n');
    input.extend(entries[3..].iter().map(|e| format!("{e}\n")));
    let (code, stdout, stderr) = run_cli(input.as_bytes(), false);
    assert_eq!(code, 0, "{stderr}");
    let events: Vec<Value> = serde_json::from_slice(&stdout).expect("a JSON array");
    assert_eq!(events.len(), 6, "{stderr}");
    assert!(stderr.contains(&format!("entry 4 (byte {offset})")), "{stderr}");
    assert!(stderr.contains(&big.len().to_string()) && stderr.contains("big-1"), "{stderr}");
    assert!(stderr.contains("1 entries set aside"), "{stderr}");
}

/// `transform --ndjson` of every fixture file's entries (pretty-printed, so `details` hold line breaks and
/// indentation) prints one line per event, each equal as JSON to the event of the default array output, in
/// the same order, and each compact: nothing outside its strings is whitespace.
#[test]
fn ndjson_output_is_one_compact_line_per_event_equal_to_the_array_form() {
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<_> = std::fs::read_dir(fixtures::fixtures_dir().join("transform"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    let (mut total, mut broken_lines) = (0, 0);
    for fixture in files {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&fixture).unwrap()).unwrap();
        let input = dir.path().join(fixture.file_name().unwrap());
        std::fs::write(&input, serde_json::to_string_pretty(&v["input"]).unwrap()).unwrap();
        let run = |extra: &[&str]| {
            let out = Command::new(env!("CARGO_BIN_EXE_auth0-rudderstack"))
                .args(["transform", "--domain", TENANT])
                .args(extra)
                .arg(&input)
                .timeout(std::time::Duration::from_secs(60))
                .output()
                .unwrap();
            assert!(out.status.success(), "{}: {}", fixture.display(), String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        };
        let array_text = run(&[]);
        let array: Vec<Value> = serde_json::from_str(&array_text).unwrap();
        // The array form keeps the input's line breaks inside events; the NDJSON form must not.
        broken_lines += array_text.lines().count().saturating_sub(array.len() + 1);
        let ndjson = run(&["--ndjson"]);
        assert!(ndjson.ends_with('\n') || ndjson.is_empty(), "{}", fixture.display());
        let lines: Vec<&str> = ndjson.lines().collect();
        assert_eq!(lines.len(), array.len(), "{}: one line per event", fixture.display());
        assert_eq!(array.len(), v["input"].as_array().unwrap().len(), "{}", fixture.display());
        for (line, event) in lines.iter().zip(&array) {
            let parsed: Value = serde_json::from_str(line).unwrap_or_else(|e| {
                panic!("{}: a line is not one JSON event ({e}): {line}", fixture.display())
            });
            assert_eq!(&parsed, event, "{}", fixture.display());
            let mut compact = String::new();
            auth0_rudderstack::json_text::compact_into(line, &mut compact);
            assert_eq!(&compact, line, "{}: not compact", fixture.display());
        }
        total += lines.len();
    }
    assert!(total > 50, "{total} events in all");
    assert!(broken_lines > 0, "no event of the array form spans lines: the test would show nothing");
}
