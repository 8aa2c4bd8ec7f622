//! The input reader: gzip and EventBridge events, against the entries the input was made of.

use std::io::{Read, Write};

use auth0_rudderstack::input::{InputError, SetAside, transform_stream};
use auth0_rudderstack::transform::{TransformError, message_id, transform_any, transform_entry};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::support::fixtures::{self, TENANT};
use crate::transform::run_cli;

/// Parse JSON text into a `RawValue`.
fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_owned()).expect("valid JSON")
}

/// `bytes` as one gzip member.
fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).expect("compress");
    encoder.finish().expect("compress")
}

/// An EventBridge event as Auth0's partner event source delivers it, around `detail`.
fn eventbridge(detail: &str) -> String {
    format!(
        r#"{{"version":"0","id":"6a7e8feb-b491-4cf7-a9f1-bf3703467718","detail-type":"Auth0 log","source":"aws.partner/auth0.com/example-tenant-5c1fb3a8-1fe4-4b88-9c5b-d9a2c3f1e0aa/auth0.logs","account":"123456789012","time":"2021-01-16T12:12:32Z","region":"eu-west-1","resources":[],"detail":{detail}}}"#
    )
}

/// A Log Streams wrapper around `entry` with `log_id` (JSON text).
fn wrapper(log_id: &str, entry: &str) -> String {
    format!(r#"{{"log_id":{log_id},"data":{entry}}}"#)
}

/// The entry's own `log_id` as JSON text (`null` when it has none).
fn own_log_id(entry: &str) -> String {
    serde_json::from_str::<Value>(entry).expect("JSON")["log_id"].to_string()
}

/// What `transform_stream` did: (entries, events, set aside), the output text, the set-aside indices.
type Transformed = ((u64, u64, u64), String, Vec<u64>);

/// Run `transform_stream` over `input`.
fn transform_all(input: impl Read) -> Result<Transformed, InputError> {
    let mut out = Vec::new();
    let mut set_aside = Vec::new();
    let summary = transform_stream(TENANT, input, &mut out, &mut |s: &SetAside| set_aside.push(s.index))?;
    let text = String::from_utf8(out).expect("UTF-8 output");
    Ok(((summary.entries, summary.events, summary.set_aside), text, set_aside))
}

/// A gzip file read through the library gives exactly the events of the same entries uncompressed.
#[test]
fn a_gzip_file_gives_the_same_events_as_the_plain_file() {
    // Arrange
    let ndjson = fixtures::synthetic_entries(2000).map(|e| e + "\n").collect::<String>();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("logs");
    std::fs::write(&path, gzip(ndjson.as_bytes())).expect("write");

    // Act
    let plain = transform_all(ndjson.as_bytes()).expect("plain");
    let compressed = transform_all(std::fs::File::open(&path).expect("open")).expect("gzip");

    // Assert
    assert_eq!(plain.0, (2000, 2000, 0));
    assert_eq!(compressed, plain);
}

/// Concatenated gzip members (an appended archive) read as one stream, even when a member ends mid-entry.
#[test]
fn concatenated_gzip_members_read_as_one_stream() {
    let ndjson = fixtures::synthetic_entries(300).map(|e| e + "\n").collect::<String>();
    let bytes = ndjson.as_bytes();
    // Cut points inside entries and strings, not at line ends.
    let cuts = [0, 17, bytes.len() / 3 + 5, bytes.len() / 2 + 1, bytes.len() - 3, bytes.len()];
    let mut members = Vec::new();
    for pair in cuts.windows(2) {
        members.extend(gzip(&bytes[pair[0]..pair[1]]));
    }
    let plain = transform_all(bytes).expect("plain");
    assert_eq!(transform_all(&members[..]).expect("members"), plain);
}

/// The binary takes gzip from a file or stdin alike.
#[test]
fn the_binary_reads_gzip_from_a_file_or_stdin() {
    let entries: Vec<String> = fixtures::synthetic_entries(50).collect();
    let array = format!("[{}]", entries.join(","));
    let (code, reference, stderr) = run_cli(array.as_bytes(), false);
    assert_eq!(code, 0, "{stderr}");
    for via_stdin in [false, true] {
        let (code, out, stderr) = run_cli(&gzip(array.as_bytes()), via_stdin);
        assert_eq!(code, 0, "stdin: {via_stdin}: {stderr}");
        assert_eq!(out, reference, "stdin: {via_stdin}");
    }
}

/// A gzip stream cut anywhere (in a header, in the data, in the trailer) is an input error that says how far
/// it got in the compressed and the decompressed input; it is never read as a shorter input.
#[test]
fn a_truncated_gzip_stream_is_an_input_error_naming_the_offsets() {
    let ndjson = fixtures::synthetic_entries(200).map(|e| e + "\n").collect::<String>();
    let whole = gzip(ndjson.as_bytes());
    let second = [whole.clone(), gzip(b"{\"type\":\"s\",\"log_id\":\"X\"}\n")].concat();
    let cuts = [
        (&whole, 1),
        (&whole, 5),
        (&whole, 12),
        (&whole, whole.len() / 2),
        (&whole, whole.len() - 9),
        (&whole, whole.len() - 4),
        (&whole, whole.len() - 1),
        (&second, whole.len() + 4),
    ];
    for (input, cut) in cuts {
        let cut_input = &input[..cut];
        let check = |e: InputError, what: &str| match e {
            InputError::GzipTruncated { entry, offset, compressed } => {
                assert_eq!(compressed, cut as u64, "{what} cut at {cut}");
                assert!(offset <= ndjson.len() as u64, "{what} cut at {cut}: {offset}");
                assert!(entry >= 1, "{what}");
                let text = e.to_string();
                assert!(text.contains("cut off") && text.contains("decompressed"), "{text}");
            }
            // One byte of gzip is no gzip magic: it is read as (malformed) JSON.
            InputError::Malformed { .. } if cut == 1 => {}
            other => panic!("{what} cut at {cut}: {other:?}"),
        };
        check(transform_all(cut_input).expect_err("cut off"), "transform");
    }
}

/// A damaged gzip stream, or bytes after its last member that are not gzip, is an input error too.
#[test]
fn a_corrupt_gzip_stream_is_an_input_error() {
    let whole = gzip(fixtures::synthetic_entries(20).map(|e| e + "\n").collect::<String>().as_bytes());
    let mut flipped = whole.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x55;
    let mut trailing = whole.clone();
    trailing.extend_from_slice(b"not gzip at all");
    // A damaged byte may decompress to text that is not JSON before the checksum says so: either way the
    // input is refused.
    assert!(transform_all(&flipped[..]).is_err());
    let e = transform_all(&trailing[..]).expect_err("trailing bytes");
    assert!(matches!(e, InputError::GzipCorrupt { .. }), "{e:?}");
    assert!(e.to_string().contains("gzip") && e.to_string().contains("corrupt"), "{e}");
}

/// The binary exits with the input error code and names the offsets of a cut-off gzip file.
#[test]
fn the_binary_reports_a_cut_off_gzip_file() {
    let whole = gzip(fixtures::synthetic_entries(20).map(|e| e + "\n").collect::<String>().as_bytes());
    let (code, _, stderr) = run_cli(&whole[..whole.len() - 6], true);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("cut off") && stderr.contains("decompressed"), "{stderr}");
}

/// The real EventBridge-delivered entry gives upstream's event whether it comes raw or in an EventBridge
/// event, with or without a `detail.log_id` (then `data.log_id` stands in, as the wrapper's log_id would).
#[test]
fn an_eventbridge_event_gives_the_event_of_the_entry_it_holds() {
    let file = fixtures::transform_files()
        .into_iter()
        .find(|(name, _)| name == "thiscovery-eventbridge.json")
        .expect("fixture")
        .1;
    let entry = serde_json::to_string(&file["input"][0]).expect("serialize");
    let id = own_log_id(&entry);
    let reference = transform_entry(TENANT, &raw(&entry)).expect("entry");
    for detail in [
        wrapper(&id, &entry),
        format!(r#"{{"data":{entry}}}"#),
        format!(r#"{{"log_id":null,"data":{entry}}}"#),
    ] {
        let event = transform_any(TENANT, &raw(&eventbridge(&detail))).expect("EventBridge");
        assert_eq!(event.json, reference.json, "{detail}");
        assert_eq!(event.message_id, message_id(TENANT, id.trim_matches('"')));
    }
    // `detail.log_id` is the wrapper's log_id when it has one, as in any wrapper.
    let event = transform_any(TENANT, &raw(&eventbridge(&wrapper("\"EB-1\"", &entry)))).expect("EventBridge");
    assert_eq!(event.message_id, message_id(TENANT, "EB-1"));
    let event: Value = serde_json::from_str(&event.json).expect("JSON");
    assert_eq!(event["properties"]["log_id"], "EB-1");
}

/// EventBridge events are told apart by their shape, not by exact header values; one without `data` is set
/// aside by its log_id, and an entry that merely lacks a type is still an entry.
#[test]
fn eventbridge_events_are_recognised_by_their_shape() {
    let entry = r#"{"type":"s","log_id":"L1","date":"2024-01-01T00:00:00.000Z"}"#;
    let reference = transform_entry(TENANT, &raw(entry)).expect("entry").json;
    let only_source = format!(r#"{{"source":"aws.partner/auth0.com/x/y","detail":{{"data":{entry}}}}}"#);
    let only_type = format!(r#"{{"detail-type":"Auth0 log","detail":{{"log_id":"L1","data":{entry}}}}}"#);
    for text in [only_source, only_type] {
        assert_eq!(transform_any(TENANT, &raw(&text)).expect("EventBridge").json, reference, "{text}");
    }
    let no_data = eventbridge(r#"{"log_id":"EB-2"}"#);
    assert_eq!(
        transform_any(TENANT, &raw(&no_data)).expect_err("no data"),
        TransformError::NoData { log_id: Some("EB-2".into()) }
    );
    // Without the EventBridge headers a `detail` is just a field of an entry without a type.
    let bare = format!(r#"{{"log_id":"L2","detail":{{"data":{entry}}}}}"#);
    assert_eq!(
        transform_any(TENANT, &raw(&bare)).expect_err("no type"),
        TransformError::NoType { log_id: Some("L2".into()) }
    );
}

/// EventBridge events give the same events as the raw entries in every container shape `transform` takes.
#[test]
fn eventbridge_events_are_read_in_every_container_shape() {
    let entries: Vec<String> = fixtures::synthetic_entries(40).collect();
    let (_, reference, _) = transform_all(format!("[{}]", entries.join(",")).as_bytes()).expect("raw");
    // Half with `detail.log_id`, half without.
    let events: Vec<String> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let detail = if i % 2 == 0 { wrapper(&own_log_id(e), e) } else { format!(r#"{{"data":{e}}}"#) };
            eventbridge(&detail)
        })
        .collect();
    let array = format!("[{}]", events.join(",\n"));
    let pretty =
        serde_json::to_string_pretty(&serde_json::from_str::<Value>(&array).expect("JSON")).expect("pretty");
    let shapes = [
        ("array", array.clone()),
        ("pretty", pretty),
        ("ndjson", events.iter().map(|e| e.clone() + "\n").collect()),
        ("concatenated", events.concat()),
        ("logs", format!(r#"{{"logs":{array}}}"#)),
        ("logs last", format!(r#"{{"total":40,"logs":{array}}}"#)),
    ];
    // Pretty-printing changes the whitespace inside the entries, which the events copy: compare values.
    let values = |text: &str| serde_json::from_str::<Value>(text).expect("JSON array out");
    let reference = values(&reference);
    for (shape, input) in shapes {
        let (summary, out, _) = transform_all(input.as_bytes()).expect(shape);
        assert_eq!(summary, (40, 40, 0), "{shape}");
        assert_eq!(values(&out), reference, "{shape}");
        let gz = transform_all(&gzip(input.as_bytes())[..]).expect(shape);
        assert_eq!(values(&gz.1), reference, "{shape} gzip");
    }
}

/// Raw entries, wrappers and EventBridge events mixed in one stream all give their entry's event.
#[test]
fn mixed_shapes_in_one_stream_give_the_events_of_their_entries() {
    let entries: Vec<String> = fixtures::synthetic_entries(30).collect();
    let (_, reference, _) = transform_all(format!("[{}]", entries.join(",")).as_bytes()).expect("raw");
    let mixed: String = entries
        .iter()
        .enumerate()
        .map(|(i, e)| match i % 3 {
            0 => e.clone(),
            1 => wrapper(&own_log_id(e), e),
            _ => eventbridge(&format!(r#"{{"data":{e}}}"#)),
        })
        .map(|e| e + "\n")
        .collect();
    assert_eq!(transform_all(mixed.as_bytes()).expect("mixed").1, reference);
}
