//! The shared fixture files, and synthetic corpora built from them.
//!
//! The transform fixtures hold real Auth0 log entries next to the events RudderStack's Auth0 source produced for
//! them; tests compare against those. Throughput and memory tests need far more entries than the fixtures have,
//! so `synthetic_entries` repeats the fixture entries with fresh, unique `log_id`s: realistic sizes and shapes,
//! and no two events with the same ids.
//!
//! This file is also compiled into the benchmarks (`#[path]`), so it uses only std, serde_json and tempfile.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The tenant domain the tests transform for.
pub const TENANT: &str = "example-tenant.us.auth0.com";

/// The fixture directory shipped with the tests (`tests/fixtures`).
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every `*.json` file of a fixture subdirectory, sorted by name, as `(file name, parsed content)`.
pub fn load_dir(sub: &str) -> Vec<(String, Value)> {
    let dir = fixtures_dir().join(sub);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
            let value: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
            let name = p.file_name().expect("file name").to_string_lossy().into_owned();
            (name, value)
        })
        .collect()
}

/// The transform fixtures: `{"input": [raw entries], "expected": [events]}` per file.
pub fn transform_files() -> Vec<(String, Value)> {
    load_dir("transform")
}

/// The webhook edge cases: `{"input": [{"request": {"body": "..."}}], "output": [...]}` per file.
pub fn edge_case_files() -> Vec<(String, Value)> {
    load_dir("transform-edge-cases")
}

/// One edge-case file by name.
pub fn edge_case(name: &str) -> Value {
    edge_case_files().into_iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no edge case {name}")).1
}

/// All raw entries of the transform fixtures (142), in file order, as compact JSON text.
pub fn corpus_entries() -> Vec<String> {
    transform_files()
        .iter()
        .flat_map(|(_, f)| f["input"].as_array().expect("input array").clone())
        .map(|e| serde_json::to_string(&e).expect("serialize"))
        .collect()
}

/// `n` entries: the fixture corpus repeated, each copy with a fresh unique `log_id` (in place when the entry
/// has one, else added), as compact JSON text. Entry `i` is always the same for the same `i`.
pub fn synthetic_entries(n: usize) -> impl Iterator<Item = String> {
    let corpus: Vec<Value> = transform_files()
        .iter()
        .flat_map(|(_, f)| f["input"].as_array().expect("input array").clone())
        .collect();
    (0..n).map(move |i| {
        let mut entry = corpus[i % corpus.len()].clone();
        entry["log_id"] = Value::String(synthetic_log_id(i));
        serde_json::to_string(&entry).expect("serialize")
    })
}

/// The `log_id` of synthetic entry `i`: shaped like Auth0's (56 digits) and unique.
pub fn synthetic_log_id(i: usize) -> String {
    format!("9002026112611000000000000000000{i:025}")
}

/// Write `n` synthetic entries to `path` as a JSON array (one entry per line); returns the bytes written.
pub fn write_array(path: &Path, n: usize) -> u64 {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut bytes = 0u64;
    out.write_all(b"[\n").expect("write");
    bytes += 2;
    for (i, entry) in synthetic_entries(n).enumerate() {
        if i > 0 {
            out.write_all(b",\n").expect("write");
            bytes += 2;
        }
        out.write_all(entry.as_bytes()).expect("write");
        bytes += entry.len() as u64;
    }
    out.write_all(b"\n]\n").expect("write");
    out.flush().expect("flush");
    bytes + 3
}

/// Write `n` synthetic entries to `path` as NDJSON; returns the bytes written.
pub fn write_ndjson(path: &Path, n: usize) -> u64 {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut bytes = 0u64;
    for entry in synthetic_entries(n) {
        out.write_all(entry.as_bytes()).expect("write");
        out.write_all(b"\n").expect("write");
        bytes += entry.len() as u64 + 1;
    }
    out.flush().expect("flush");
    bytes
}

/// The entries of one webhook body, split the way upstream does (an array, a `{logs}` object, or one object),
/// each as compact JSON text. `None` when the body is not JSON (upstream: 400 Malformed JSON).
pub fn webhook_body_entries(body: &str) -> Option<Vec<String>> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    let list = match value {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(ref map) => match map.get("logs") {
            Some(serde_json::Value::Array(items)) => items.clone(),
            _ => vec![value],
        },
        other => vec![other],
    };
    Some(list.iter().map(|e| serde_json::to_string(e).expect("serialize")).collect())
}
