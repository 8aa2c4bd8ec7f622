//! Shared test helpers: the fake servers, the fixtures, and a driver for the real binary.
#![allow(dead_code)]

pub mod addresses;
pub mod app;
pub mod fake_auth0;
pub mod fake_rudderstack;
pub mod fixtures;
pub mod http;

use std::path::PathBuf;

use serde_json::Value;

use fake_auth0::{FakeAuth0, FakeOptions};
use fake_rudderstack::FakeRudderStack;

/// A fake Auth0 (with the credentials of [`app::App`]) and a fake RudderStack.
pub async fn start_fakes() -> (FakeAuth0, FakeRudderStack) {
    let auth0 = FakeAuth0::start(FakeOptions {
        client_id: app::CLIENT_ID.into(),
        client_secret: app::CLIENT_SECRET.into(),
        ..FakeOptions::realistic()
    })
    .await;
    let rudder = FakeRudderStack::start(fake_rudderstack::Options {
        write_keys: vec![app::WRITE_KEY.into()],
        ..fake_rudderstack::Options::default()
    })
    .await;
    (auth0, rudder)
}

/// Every (entry, expected event) pair of `tests/fixtures/transform`, in file order.
pub fn fixture_pairs() -> Vec<(Value, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures::fixtures_dir().join("transform"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut pairs = Vec::new();
    for f in files {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let input = v["input"].as_array().unwrap();
        let expected = v["expected"].as_array().unwrap();
        assert_eq!(input.len(), expected.len(), "{}", f.display());
        pairs.extend(input.iter().cloned().zip(expected.iter().cloned()));
    }
    pairs
}

/// The fixture entries as a real tenant would serve them: each given a fresh, increasing `log_id` (some
/// fixtures share ids or predate `log_id`), with the expected event's `properties.log_id` to match.
pub fn fixture_pairs_rekeyed(auth0: &FakeAuth0) -> (Vec<Value>, Vec<Value>) {
    let mut pairs = fixture_pairs();
    // A real tenant's log_id order follows the log's time; keep it so, or a date-sorted bootstrap query
    // would start in the middle.
    pairs.sort_by_key(|(entry, _)| entry["date"].as_str().unwrap_or_default().to_string());
    let fresh = auth0.make_entries(pairs.len());
    let mut entries = Vec::new();
    let mut expected = Vec::new();
    for ((mut entry, mut want), f) in pairs.into_iter().zip(fresh) {
        let id = f["log_id"].clone();
        entry["log_id"] = id.clone();
        if entry.get("_id").is_some() {
            entry["_id"] = id.clone();
        }
        want["properties"]["log_id"] = id;
        entries.push(entry);
        expected.push(want);
    }
    (entries, expected)
}

/// Whether every prerequisite of a test must be there: `.ci/run` sets `CI` (and, as before,
/// `AUTH0_RUDDERSTACK_REQUIRE_TOOLS`), and there a test that cannot run is a failure, never a silent pass.
pub fn prerequisites_required() -> bool {
    ["CI", "AUTH0_RUDDERSTACK_REQUIRE_TOOLS"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty() && x != "false" && x != "0"))
}

/// A test's prerequisite (root, a mount, a tool) is missing: under `CI` the test fails, saying which;
/// elsewhere it says on stderr that it did not run (`SKIPPED: ...`) and the caller returns.
pub fn missing_prerequisite(test: &str, why: &str) {
    assert!(!prerequisites_required(), "{test}: a prerequisite is missing and CI requires it: {why}");
    eprintln!("SKIPPED {test}: {why}");
}

/// An event without the two ids that upstream randomises (and we derive), for comparison.
pub fn strip_ids(event: &Value) -> Value {
    let mut e = event.clone();
    if let Some(o) = e.as_object_mut() {
        o.remove("messageId");
        o.remove("anonymousId");
    }
    e
}

/// A reader that hands out at most `step` bytes per read, so every state of a streaming reader meets a
/// buffer edge.
pub struct Trickle<'a> {
    pub data: &'a [u8],
    pub step: usize,
}

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}
