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
pub mod entry;
pub mod files;
pub mod http;
pub mod input;
pub mod json_text;
pub mod logging;
pub mod ops;
pub mod pipeline;
pub mod privacy;
pub mod rudderstack;
pub mod standin;
pub mod store;
pub mod telemetry;
pub mod transform;
