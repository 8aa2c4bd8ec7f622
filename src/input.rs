//! STUB: streaming reader for `transform` input (being written).
use std::io::{Read, Write};

/// What a `transform` run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Entries read.
    pub entries: u64,
    /// Events written.
    pub events: u64,
    /// Entries that produced no event (each reported through the callback).
    pub set_aside: u64,
}

/// Input that cannot be read as Auth0 entries.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Placeholder.
    #[error("{0}")]
    Other(String),
}

/// Read Auth0 entries (a JSON array, one object, NDJSON, or `{log_id,data}` wrappers) from `input` and write
/// a JSON array of RudderStack events to `output`, streaming. Entries that produce no event are reported
/// through `on_set_aside` with a message that names the entry.
pub fn transform_stream(
    tenant: &str,
    input: impl Read,
    output: impl Write,
    on_set_aside: &mut dyn FnMut(&str),
) -> Result<Summary, InputError> {
    let _ = (tenant, input, output, on_set_aside);
    todo!()
}
