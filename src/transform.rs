//! STUB: the pure transform (being written).
use serde_json::value::RawValue;
use uuid::Uuid;

/// Why an entry produced no event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    /// Placeholder.
    #[error("{0}")]
    Invalid(String),
}

impl TransformError {
    /// Transform failures are properties of the entry: retrying never helps.
    pub fn is_transient(&self) -> bool {
        false
    }
}

/// One RudderStack event, serialized.
#[derive(Debug, Clone)]
pub struct Event {
    /// The deterministic messageId.
    pub message_id: Uuid,
    /// The event as JSON text.
    pub json: String,
}

/// Transform one raw Auth0 log entry (as returned by `/api/v2/logs`) into its RudderStack event.
/// It is wrapped as `{log_id: entry.log_id, data: entry}` exactly as a Log Stream would.
pub fn transform_entry(tenant: &str, entry: &RawValue) -> Result<Event, TransformError> {
    let _ = (tenant, entry);
    todo!()
}

/// Transform one Log Streams wrapper `{"log_id": ..., "data": {...}}`.
pub fn transform_wrapper(tenant: &str, wrapper: &RawValue) -> Result<Event, TransformError> {
    let _ = (tenant, wrapper);
    todo!()
}

/// The deterministic messageId of an entry.
pub fn message_id(tenant: &str, log_id: &str) -> Uuid {
    let _ = (tenant, log_id);
    todo!()
}

/// The deterministic anonymousId of an entry.
pub fn anonymous_id(tenant: &str, log_id: &str) -> Uuid {
    let _ = (tenant, log_id);
    todo!()
}
