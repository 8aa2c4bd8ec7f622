//! STUB: the Auth0 Management API client (being written). The signatures are the contract the pipeline uses.
pub mod logs;
pub mod token;

use std::time::Duration;

pub use logs::{Bootstrap, Client, Page};

/// A failed call to Auth0.
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
    /// How long Auth0 asked us to wait (429 with `Retry-After` or `x-ratelimit-reset`).
    pub fn retry_after(&self) -> Option<Duration> {
        todo!()
    }
    /// True when Auth0 refused the `from` cursor (a 400 on a checkpoint read): the entry has likely expired.
    pub fn is_expired_checkpoint(&self) -> bool {
        todo!()
    }
}
