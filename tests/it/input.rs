//! The input reader on gzip input, against the same entries uncompressed.

use std::io::{Read, Write};

use auth0_rudderstack::input::{InputError, SetAside, transform_stream};
use flate2::Compression;
use flate2::write::GzEncoder;

use crate::support::fixtures::{self, TENANT};
use crate::transform::run_cli;

/// `bytes` as one gzip member.
fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).expect("compress");
    encoder.finish().expect("compress")
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
