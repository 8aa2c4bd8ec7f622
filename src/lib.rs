//! Pull an Auth0 tenant's logs through the Management API and deliver them to RudderStack, as the events
//! RudderStack's own Auth0 source would have produced.
//!
//! The crate is a library plus a thin binary so that tests and benchmarks can drive every part in-process.
//! The data path is `auth0` (token, paging, pacing) → `store` (SQLite outbox and cursor, one transaction per
//! page) → `transform` (pure) → `rudderstack` (batching, response classification), tied together by
//! `pipeline`, which owns the order "send, then delete" and all retrying.

pub mod auth0;
pub mod cli;
pub mod config;
pub mod input;
pub mod pipeline;
pub mod privacy;
pub mod rudderstack;
pub mod store;
pub mod transform;

/// An error and its sources on one line, without repeating a source its parent already quotes. reqwest's own
/// Display says little ("error sending request"); the useful part ("connection reset", "operation timed
/// out") sits in the sources.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
