//! The input reader: gzip, EventBridge events, and the raw entries handed to an import, against the entries
//! the input was made of.

use std::io::{Read, Write};

use auth0_rudderstack::input::{EntryBatch, EntryReader, InputError, RawEntry, SetAside, transform_stream};
use auth0_rudderstack::transform::{
    TransformError, message_id, transform_any, transform_entry, transform_entry_with_log_id,
};
use flate2::Compression;
use flate2::write::GzEncoder;
use proptest::prelude::*;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::support::Trickle;
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

/// Every batch of an `EntryReader`, flattened, and the error that ended it if any.
fn read_all(reader: EntryReader<impl Read>) -> (Vec<Result<RawEntry, SetAside>>, Option<InputError>) {
    let mut items = Vec::new();
    for batch in reader {
        match batch {
            Ok(batch) => items.extend(batch),
            Err(e) => return (items, Some(e)),
        }
    }
    (items, None)
}

/// The raw entries of a read that must succeed with no set-asides.
fn entries_of(reader: EntryReader<impl Read>) -> Vec<RawEntry> {
    let (items, error) = read_all(reader);
    assert!(error.is_none(), "{error:?}");
    items.into_iter().map(|i| i.unwrap_or_else(|s| panic!("set aside: {s}"))).collect()
}

/// A gzip file read through the library gives exactly the events of the same entries uncompressed.
#[test]
fn a_gzip_file_gives_the_same_events_as_the_plain_file() {
    // Arrange
    let entries: Vec<String> = fixtures::synthetic_entries(2000).collect();
    let ndjson = entries.iter().map(|e| format!("{e}\n")).collect::<String>();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("logs");
    std::fs::write(&path, gzip(ndjson.as_bytes())).expect("write");

    // Act
    let plain = transform_all(ndjson.as_bytes()).expect("plain");
    let compressed = transform_all(std::fs::File::open(&path).expect("open")).expect("gzip");
    let read = entries_of(EntryReader::new(std::fs::File::open(&path).expect("open"), 300));

    // Assert
    assert_eq!(plain.0, (2000, 2000, 0));
    assert_eq!(compressed, plain);
    assert_eq!(read.iter().map(|e| e.raw.as_str()).collect::<Vec<_>>(), entries);
}

/// Concatenated gzip members (an appended archive) read as one stream, even when a member ends mid-entry.
#[test]
fn concatenated_gzip_members_read_as_one_stream() {
    let entries: Vec<String> = fixtures::synthetic_entries(300).collect();
    let ndjson = entries.iter().map(|e| format!("{e}\n")).collect::<String>();
    let bytes = ndjson.as_bytes();
    // Cut points inside entries and strings, not at line ends.
    let cuts = [0, 17, bytes.len() / 3 + 5, bytes.len() / 2 + 1, bytes.len() - 3, bytes.len()];
    let mut members = Vec::new();
    for pair in cuts.windows(2) {
        members.extend(gzip(&bytes[pair[0]..pair[1]]));
    }
    let plain = transform_all(bytes).expect("plain");
    assert_eq!(transform_all(&members[..]).expect("members"), plain);
    let read = entries_of(EntryReader::new(&members[..], 64));
    assert_eq!(read.iter().map(|e| e.raw.as_str()).collect::<Vec<_>>(), entries);
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
        let (items, error) = read_all(EntryReader::new(cut_input, 1000));
        check(error.expect("cut off"), "read");
        // What came before the cut is handed out, in order, and the error names the entry that follows.
        for (i, item) in items.iter().enumerate() {
            assert_eq!(item.as_ref().expect("entry").index, i as u64 + 1);
        }
    }
}

/// A damaged gzip stream is an input error too, and so are bytes after its last member that are not gzip.
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
    assert!(read_all(EntryReader::new(&flipped[..], 10)).1.is_some());
    let e = transform_all(&trailing[..]).expect_err("trailing bytes");
    assert!(matches!(e, InputError::GzipTrailing { .. }), "{e:?}");
    let (items, error) = read_all(EntryReader::new(&trailing[..], 10));
    assert_eq!(items.len(), 20);
    assert!(matches!(error, Some(InputError::GzipTrailing { .. })), "{error:?}");
}

/// Bytes after a complete gzip stream that are not another member (text, a newline, zero padding, after one
/// member or two) are named as trailing data at their compressed offset, never as a cut or as damage; the
/// entries before them are handed out.
#[test]
fn trailing_bytes_after_a_gzip_stream_are_named_as_such() {
    let ndjson = fixtures::synthetic_entries(20).map(|e| e + "\n").collect::<String>();
    let one = gzip(ndjson.as_bytes());
    let two = [one.clone(), gzip(ndjson.as_bytes())].concat();
    for (stream, entries) in [(&one, 20), (&two, 40)] {
        for tail in [&b"not gzip at all"[..], b"\n", b"x", &[0u8; 512]] {
            let input = [stream.as_slice(), tail].concat();
            let check = |e: InputError, what: &str| match e {
                InputError::GzipTrailing { at, offset, .. } => {
                    assert_eq!(at, stream.len() as u64, "{what} {tail:?}");
                    assert_eq!(offset, (ndjson.len() * entries / 20) as u64, "{what} {tail:?}");
                    let text = e.to_string();
                    assert!(
                        text.contains(&format!(
                            "trailing data after the gzip stream at byte {}",
                            stream.len()
                        )),
                        "{text}"
                    );
                    assert!(!text.contains("cut off") && !text.contains("corrupt"), "{text}");
                }
                other => panic!("{what} {tail:?}: {other:?}"),
            };
            check(transform_all(&input[..]).expect_err("trailing bytes"), "transform");
            let (items, error) = read_all(EntryReader::new(&input[..], 7));
            assert_eq!(items.len(), entries, "{tail:?}");
            check(error.expect("trailing bytes"), "read");
        }
    }
    let input = [one.as_slice(), b"trailing"].concat();
    let (code, _, stderr) = run_cli(&input, true);
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains(&format!("trailing data after the gzip stream at byte {}", one.len())),
        "{stderr}"
    );
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
    let read = entries_of(EntryReader::new(mixed.as_bytes(), 7));
    assert_eq!(read.iter().map(|e| e.raw.as_str()).collect::<Vec<_>>(), entries);
}

/// Each raw entry is its input entry byte for byte (whitespace and escapes kept, for a wrapper its `data`),
/// with its 1-based index, the offset of the element holding it and the log_id to file it under.
#[test]
fn raw_entries_are_the_input_entries_byte_for_byte_with_index_offset_and_log_id() {
    // Arrange: entries written in unusual ways that re-serialising would change.
    let odd = [
        "{ \"type\" : \"s\",\n  \"log_id\": \"A\", \"description\": \"caf\\u00e9 \\\"q\\\" ]}\" }",
        "{\"log_id\":\"B\",\"type\":\"f\",\"date\":1.7E12,\"details\":{\"x\":[1,2,{}]}}",
        "{\"type\":\"s\",\"user_name\":\"Zoë 🦀\"}",
    ];
    let elements = [
        odd[0].to_string(),
        wrapper("\"W-B\"", odd[1]),
        eventbridge(&format!("{{\"data\":{}}}", odd[2])),
        wrapper("\"W-A\"", odd[0]),
        eventbridge(&wrapper("\"EB-B\"", odd[1])),
        odd[2].to_string(),
    ];
    let input = format!("[\n  {}\n]\n", elements.join(" ,\n\t"));

    // Act
    let read = entries_of(EntryReader::new(input.as_bytes(), 4));

    // Assert
    let want = [
        (odd[0], Some("A")),
        (odd[1], Some("W-B")),
        (odd[2], None),
        (odd[0], Some("W-A")),
        (odd[1], Some("EB-B")),
        (odd[2], None),
    ];
    assert_eq!(read.len(), want.len());
    for (i, (entry, (text, log_id))) in read.iter().zip(want).enumerate() {
        assert_eq!(entry.index, i as u64 + 1);
        assert_eq!(entry.raw, text, "entry {}", i + 1);
        assert_eq!(entry.log_id.as_deref(), log_id, "entry {}", i + 1);
        assert!(input[entry.offset as usize..].starts_with(&elements[i]), "entry {} offset", i + 1);
    }
}

/// Over every fixture entry, in a wrapper with its own log_id, in a wrapper with another log_id and in
/// EventBridge events: transforming the raw entry with its `log_id` gives the event of the element it came
/// from, so an import delivers what `transform` would.
#[test]
fn transforming_a_raw_entry_with_its_log_id_gives_the_event_of_its_wrapper() {
    let corpus = fixtures::corpus_entries();
    let mut elements = Vec::new();
    for (i, entry) in corpus.iter().enumerate() {
        let id = own_log_id(entry);
        if id != "null" {
            elements.push(wrapper(&id, entry));
            elements.push(eventbridge(&format!(r#"{{"data":{entry}}}"#)));
        }
        elements.push(wrapper(&format!("\"other-{i}\""), entry));
        elements.push(eventbridge(&wrapper(&format!("\"eb-{i}\""), entry)));
    }
    let input = elements.join("\n");
    let read = entries_of(EntryReader::new(input.as_bytes(), 50));
    assert_eq!(read.len(), elements.len());
    for (entry, element) in read.iter().zip(&elements) {
        let expected = transform_any(TENANT, &raw(element)).expect("element");
        let log_id = entry.log_id.as_deref().expect("every element here has a log_id");
        let ours = transform_entry_with_log_id(TENANT, log_id, &raw(&entry.raw)).expect("raw");
        assert_eq!(ours.json, expected.json, "entry {}", entry.index);
        // When the log_ids agree, the raw entry alone gives the same event.
        if own_log_id(&entry.raw).trim_matches('"') == log_id {
            assert_eq!(transform_entry(TENANT, &raw(&entry.raw)).expect("raw").json, expected.json);
        }
    }
}

/// Elements that hold no entry are reported by index and offset, in order with the entries around them.
#[test]
fn elements_without_an_entry_are_reported_by_index_and_offset() {
    let input = concat!(
        "{\"type\":\"s\",\"log_id\":\"A\"}\n",
        "null\n",
        "[[1,2]]\n",
        "\"text\" 42 true\n",
        r#"{"detail-type":"Auth0 log","source":"aws.partner/auth0.com/x","detail":{"log_id":"EB"}}"#,
        "\n{\"type\":\"s\",\"log_id\":\"B\"}\n",
    );
    let (items, error) = read_all(EntryReader::new(input.as_bytes(), 3));
    assert!(error.is_none(), "{error:?}");
    let summary: Vec<(u64, &str)> = items
        .iter()
        .map(|i| match i {
            Ok(e) => (e.index, "entry"),
            Err(s) => (
                s.index,
                match s.error {
                    TransformError::NullEntry => "null",
                    TransformError::NotAnObject { kind } => kind,
                    TransformError::NoData { .. } => "no data",
                    _ => "other",
                },
            ),
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, "entry"),
            (2, "null"),
            (3, "array"),
            (4, "string"),
            (5, "number"),
            (6, "boolean"),
            (7, "no data"),
            (8, "entry")
        ]
    );
    let starts = ["{", "null", "[1,2]", "\"text\"", "42", "true", "{\"detail-type\"", "{\"type\""];
    for (item, start) in items.iter().zip(starts) {
        let offset = match item {
            Ok(e) => e.offset,
            Err(s) => s.offset,
        };
        assert!(input[offset as usize..].starts_with(start), "{item:?}");
    }
    let Err(no_data) = &items[6] else { panic!("set aside") };
    assert_eq!(no_data.error.log_id(), Some("EB"));
}

/// Batches hold at most `batch_size` entries, in order; the iterator and `next_batch` agree; the summary
/// counts what was read.
#[test]
fn batches_are_bounded_and_in_input_order() {
    let entries: Vec<String> = fixtures::synthetic_entries(1000).collect();
    let input = format!("[{}]", entries.join(","));
    let mut reader = EntryReader::new(input.as_bytes(), 128);
    let mut sizes = Vec::new();
    let mut next = 1;
    while let Some(batch) = reader.next_batch().expect("reads") {
        sizes.push(batch.len());
        for item in batch {
            assert_eq!(item.expect("entry").index, next);
            next += 1;
        }
    }
    assert_eq!(sizes, [128, 128, 128, 128, 128, 128, 128, 104]);
    assert_eq!(reader.summary().entries, 1000);
    assert!(reader.next_batch().expect("after the end").is_none());
    let batches: Vec<EntryBatch> =
        EntryReader::new(input.as_bytes(), 128).collect::<Result<_, _>>().expect("reads");
    assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), sizes);
}

/// Skipping the first N entries resumes exactly after them, `{"logs": [...]}` bodies read whole included, and
/// gives the same entries as reading everything.
#[test]
fn skipping_resumes_exactly_after_the_entries_already_read() {
    let entries: Vec<String> = fixtures::synthetic_entries(60).collect();
    let input = format!(
        "[{}]\n{{\"total\":20,\"logs\":[{}]}}\n{}",
        entries[..20].join(","),
        entries[20..40].iter().map(|e| wrapper(&own_log_id(e), e)).collect::<Vec<_>>().join(","),
        entries[40..].iter().map(|e| e.clone() + "\n").collect::<String>()
    );
    let all = entries_of(EntryReader::new(input.as_bytes(), 9));
    assert_eq!(all.len(), 60);
    for skip in [0, 1, 19, 20, 21, 39, 40, 41, 59, 60, 100] {
        let mut reader = EntryReader::new(input.as_bytes(), 9).skipping(skip);
        let mut rest = Vec::new();
        while let Some(batch) = reader.next_batch().expect("reads") {
            rest.extend(batch.into_iter().map(|i| i.expect("entry")));
        }
        assert_eq!(rest, all[(skip as usize).min(60)..], "skip {skip}");
        let summary = reader.summary();
        assert_eq!((summary.entries, summary.skipped), (60, skip.min(60)), "skip {skip}");
    }
}

/// The reader reads only as far as the batches taken: a caller that stops early never pulls the rest.
#[test]
fn the_reader_reads_only_as_far_as_the_batches_taken() {
    /// Counts the bytes handed out.
    struct Counting<R> {
        inner: R,
        read: std::rc::Rc<std::cell::Cell<usize>>,
    }
    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read.set(self.read.get() + n);
            Ok(n)
        }
    }
    let ndjson = fixtures::synthetic_entries(20_000).map(|e| e + "\n").collect::<String>();
    let read = std::rc::Rc::new(std::cell::Cell::new(0));
    let mut reader = EntryReader::new(Counting { inner: ndjson.as_bytes(), read: read.clone() }, 100);
    let first = reader.next_batch().expect("reads").expect("a batch");
    assert_eq!(first.len(), 100);
    assert!(read.get() <= 2 << 20, "read {} of {} bytes for one batch", read.get(), ndjson.len());
}

/// Malformed input ends the read after the entries before it, naming the entry and byte; so does a cut.
#[test]
fn malformed_input_ends_the_read_after_the_entries_before_it() {
    let good = "{\"type\":\"s\",\"log_id\":\"A\"}\n{\"type\":\"s\",\"log_id\":\"B\"}\n";
    for (bad, entry, at) in [
        ("{\"type\":\"s\",\"date\": oops}\n", 3, good.len() + 20),
        ("{\"type\":\"s\" \"date\":1}\n", 3, good.len() + 12),
        ("]\n", 3, good.len()),
        ("{\"type\":\"s\"", 3, good.len() + 11),
        // A body read whole is parsed whole: its error names its first entry, and the exact byte.
        ("{\"total\":1,\"logs\":[{\"type\":\"s\"},{\"type\":}]}", 3, good.len() + 40),
    ] {
        let input = format!("{good}{bad}");
        let mut reader = EntryReader::new(input.as_bytes(), 1);
        let mut read = Vec::new();
        let error = loop {
            match reader.next_batch() {
                Ok(Some(batch)) => read.extend(batch.into_iter().map(|i| i.expect("entry").raw)),
                Ok(None) => panic!("{bad}: no error"),
                Err(e) => break e,
            }
        };
        assert_eq!(read, ["{\"type\":\"s\",\"log_id\":\"A\"}", "{\"type\":\"s\",\"log_id\":\"B\"}"], "{bad}");
        let (e_entry, e_offset) = match &error {
            InputError::Malformed { entry, offset, .. } => (*entry, *offset),
            InputError::UnexpectedEnd { entry, offset, .. } => (*entry, *offset),
            other => panic!("{bad}: {other:?}"),
        };
        assert_eq!((e_entry, e_offset), (entry, at as u64), "{bad}: {error}");
        assert!(reader.next_batch().expect("after an error").is_none());
    }
}

/// Reading a few bytes at a time gives the same entries and errors as reading whole, plain or gzip.
#[test]
fn entries_split_at_every_possible_point_read_the_same() {
    let input = concat!(
        r#"{"logs": [{"log_id":"A","data":{"type":"s","description":"q\"uo]te}\\","details":{"a":[1,{"b":"\\\\"}]}}}], "x": {"y": "]"}}"#,
        "\n",
        r#"[ {"type":"f","log_id":"B","user_agent":"ends with backslash \\"} , 7 ,"str", null ]"#,
        "\n",
        r#"{"type":"s","log_id":"C"}{"detail-type":"Auth0 log","detail":{"data":{"type":"s","log_id":"D"}}}"#,
        "\n  true\n",
        r#"{"total":2,"logs":[{"type":"s","log_id":"E"},{"log_id":"F2","data":{"type":"s","log_id":"F"}}]}"#,
    );
    let gz = gzip(input.as_bytes());
    let run = |data: &[u8], step: usize| {
        let (items, error) = read_all(EntryReader::new(Trickle { data, step }, 3));
        (items, error.map(|e| e.to_string()))
    };
    let whole = run(input.as_bytes(), usize::MAX);
    assert!(whole.1.is_none(), "{whole:?}");
    let ids: Vec<(u64, Option<&str>)> = whole
        .0
        .iter()
        .map(|i| match i {
            Ok(e) => (e.index, e.log_id.as_deref()),
            Err(s) => (s.index, None),
        })
        .collect();
    assert_eq!(
        ids,
        [
            (1, Some("A")),
            (2, Some("B")),
            (3, None),
            (4, None),
            (5, None),
            (6, Some("C")),
            (7, Some("D")),
            (8, None),
            (9, Some("E")),
            (10, Some("F2"))
        ]
    );
    for step in [1, 2, 3, 5, 7, 64] {
        assert_eq!(run(input.as_bytes(), step), whole, "step {step}");
        assert_eq!(run(&gz, step), whole, "gzip, step {step}");
    }
    // Cut short, the same prefix and the same error whatever the step.
    let cut = &input.as_bytes()[..input.len() - 30];
    let short = run(cut, usize::MAX);
    assert!(short.1.is_some());
    for step in [1, 2, 3, 7] {
        assert_eq!(run(cut, step), short, "cut, step {step}");
    }
}

/// Deep nesting, huge strings, NUL bytes and invalid UTF-8 end in an entry or an error, never a panic, and
/// memory stays bounded.
#[test]
fn hostile_input_never_panics() {
    let deep_array = "[".repeat(300_000);
    let deep_entry = format!(r#"{{"type":"s","details":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
    let huge = format!(r#"{{"type":"s","log_id":"H","description":"{}"}}"#, "x".repeat(3 * (1 << 20) + 17));
    let inputs: Vec<Vec<u8>> = vec![
        deep_array.clone().into_bytes(),
        deep_entry.clone().into_bytes(),
        format!("{deep_entry}\n{deep_entry}").into_bytes(),
        huge.clone().into_bytes(),
        b"{\"type\":\"s\",\"log_id\":\"a\0b\"}".to_vec(),
        b"\0\0\0".to_vec(),
        b"{\"type\":\"s\",\"log_id\":\"\xff\xfe\"}".to_vec(),
        b"[{\"type\":\"s\"},\xc3]".to_vec(),
        b"\x1f".to_vec(),
        b"\x1f\x8b".to_vec(),
        vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff, 0xff],
        b"{\"logs\":".to_vec(),
        b"{\"logs\":[".to_vec(),
        b"{\"logs\":[{\"type\":\"s\"}".to_vec(),
        b"{\"logs\":{}}".to_vec(),
        b"{\"logs\":\"x\"}".to_vec(),
        b"]]]]}}}}".to_vec(),
        b"\"\\".to_vec(),
        b"-".to_vec(),
        format!("{{{}", " ".repeat(100_000)).into_bytes(),
    ];
    for input in &inputs {
        let _ = transform_all(&input[..]);
        let _ = transform_all(&gzip(input)[..]);
        let _ = read_all(EntryReader::new(&input[..], 10));
        let _ = read_all(EntryReader::new(Trickle { data: input, step: 4093 }, 10));
    }
    // The huge entry is over the default limit: set aside, by its size. Under a limit it fits, it is still
    // an entry, read whole.
    let (items, error) = read_all(EntryReader::new(huge.as_bytes(), 1));
    assert!(error.is_none(), "{error:?}");
    let set_aside = items[0].as_ref().expect_err("over the limit");
    assert_eq!(set_aside.oversized.as_ref().map(|o| o.size), Some(huge.len() as u64));
    let (summary, _, _) = transform_all(huge.as_bytes()).expect("a huge entry");
    assert_eq!(summary, (1, 0, 1));
    let read = entries_of(EntryReader::new(huge.as_bytes(), 1).limited_to(4 << 20));
    assert_eq!(read[0].raw, huge);
    // An entry nested beyond the JSON parser's limit is read, not refused.
    assert_eq!(entries_of(EntryReader::new(deep_entry.as_bytes(), 1))[0].raw, deep_entry);
}

/// A long run of whitespace between entries (a gzip bomb of spaces) is read through, offsets intact.
#[test]
fn long_runs_of_whitespace_between_entries_are_read_through() {
    let spaces = vec![b' '; 8 << 20];
    let bomb = [
        gzip(b"{\"type\":\"s\",\"log_id\":\"A\"}"),
        gzip(&spaces),
        gzip(b"[{\"type\":\"s\",\"log_id\":\"B\"}]"),
    ]
    .concat();
    assert!(bomb.len() < 1 << 20);
    let read = entries_of(EntryReader::new(&bomb[..], 10));
    assert_eq!(read.iter().map(|e| e.log_id.as_deref()).collect::<Vec<_>>(), [Some("A"), Some("B")]);
    assert_eq!(read[1].offset, 25 + (8 << 20) + 1);
    let (summary, _, _) = transform_all(&bomb[..]).expect("reads");
    assert_eq!(summary, (2, 2, 0));
}

proptest! {
    // Each case runs six reads, and each read zeroes a 1 MiB buffer, which a test build does slowly.
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any bytes, and any damage to a valid input, end in entries or an error: never a panic.
    #[test]
    fn any_bytes_read_without_panicking(
        bytes in prop::collection::vec(prop_oneof![
            Just(b'{'), Just(b'}'), Just(b'['), Just(b']'), Just(b'"'), Just(b'\\'), Just(b','), Just(b':'),
            Just(b' '), Just(b'\n'), Just(0u8), Just(0xffu8), Just(0x1fu8), Just(0x8bu8), any::<u8>()
        ], 0..200),
        cut in 0usize..400,
        flip in any::<u8>(),
    ) {
        let _ = transform_all(&bytes[..]);
        let _ = read_all(EntryReader::new(&bytes[..], 3));
        let valid = b"[{\"log_id\":\"A\",\"data\":{\"type\":\"s\",\"description\":\"a\\\"b\"}},null,{\"logs\":[7]}]";
        let mut damaged = gzip(valid);
        let at = cut % damaged.len();
        damaged[at] ^= flip;
        let _ = transform_all(&damaged[..]);
        let _ = read_all(EntryReader::new(&damaged[..], 3));
        let mut damaged = valid.to_vec();
        damaged[cut % valid.len()] ^= flip;
        let _ = transform_all(&damaged[..]);
        let _ = read_all(EntryReader::new(Trickle { data: &damaged, step: 3 }, 2));
    }
}
