//! What a benchmark produced, checked before its figures count: a figure measured on output that is empty,
//! short or wrong would pass for the wrong reason. `transform`'s JSON array is read as a stream (it can be
//! larger than memory should hold), and every event is looked at: its type, its deterministic ids, its
//! `log_id`, and whatever else the caller asks of it.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::io::BufReader;
use std::path::Path;

use serde::Deserialize;
use serde::de::{DeserializeSeed, SeqAccess, Visitor};

/// The parts of an event the checks look at (each benchmark looks at some of them).
#[derive(Deserialize)]
#[allow(dead_code)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(rename = "messageId")]
    pub message_id: String,
    #[serde(rename = "anonymousId")]
    pub anonymous_id: String,
    #[serde(default)]
    pub properties: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub context: serde_json::Map<String, serde_json::Value>,
}

/// What the events held.
#[derive(Debug, Default)]
pub struct Checked {
    /// Events read.
    pub events: usize,
    /// Distinct `properties.log_id`s among them.
    pub distinct_log_ids: usize,
}

/// Read the JSON array of events at `path`, check each one (a known type, UUID ids, a `log_id`, and `each`),
/// and count them. Panics, naming the event, on the first that fails.
pub fn check_events(path: &Path, each: &mut dyn FnMut(usize, &Event)) -> Checked {
    let file = std::fs::File::open(path).expect("open the events");
    let mut de = serde_json::Deserializer::from_reader(BufReader::with_capacity(1 << 20, file));
    let checked = Walk { each }.deserialize(&mut de).expect("the output is a JSON array of events");
    de.end().expect("nothing follows the array");
    checked
}

struct Walk<'a> {
    each: &'a mut dyn FnMut(usize, &Event),
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = Checked;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Checked, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = Checked;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of events")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        // Hashes, not the ids themselves: a million ids would cost the benchmark more memory than the child.
        let state = std::collections::hash_map::RandomState::new();
        let mut seen = HashSet::new();
        let mut events = 0;
        while let Some(event) = seq.next_element::<Event>()? {
            assert!(
                matches!(event.kind.as_str(), "track" | "identify" | "group"),
                "event {events}: type {}",
                event.kind
            );
            for id in [&event.message_id, &event.anonymous_id] {
                assert!(uuid::Uuid::parse_str(id).is_ok(), "event {events}: {id} is not a UUID");
            }
            let log_id = event.properties.get("log_id").and_then(|v| v.as_str());
            let log_id = log_id.unwrap_or_else(|| panic!("event {events} has no properties.log_id"));
            seen.insert(state.hash_one(log_id));
            (self.each)(events, &event);
            events += 1;
        }
        Ok(Checked { events, distinct_log_ids: seen.len() })
    }
}
