//! STUB: the RudderStack sink (being written). The signatures are the contract the pipeline uses.
use crate::config;

/// A failed call to RudderStack.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Placeholder.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Whether waiting and trying again can help.
    pub fn is_transient(&self) -> bool {
        todo!()
    }
}

/// One thing to deliver: a transformed event (batch mode) or a Log Streams wrapper (webhook mode).
#[derive(Debug, Clone)]
pub struct Item {
    /// The outbox row it came from.
    pub seq: i64,
    /// Its JSON text.
    pub json: String,
}

/// What one `deliver` call achieved.
#[derive(Debug, Default)]
pub struct Report {
    /// Rows RudderStack answered 2xx for.
    pub delivered: Vec<i64>,
    /// Rows RudderStack can never accept, with the reason.
    pub rejected: Vec<(i64, String)>,
    /// The error that stopped delivery early; rows in neither list are still pending.
    pub error: Option<Error>,
}

/// The data-plane client.
#[derive(Clone)]
pub struct Sink {}

impl Sink {
    /// Build a sink from the `[rudderstack]` section.
    pub fn new(cfg: &config::RudderStack) -> Result<Sink, Error> {
        let _ = cfg;
        todo!()
    }
    /// Deliver items in order: pack them into requests within the limits, split on 413, bisect on 400,
    /// reject items over `max_event_bytes`. Stops at the first transient or fatal error.
    pub async fn deliver(&self, items: Vec<Item>) -> Report {
        let _ = items;
        todo!()
    }
    /// Check that the write key is accepted, without storing any event.
    pub async fn check(&self) -> Result<(), Error> {
        todo!()
    }
}
