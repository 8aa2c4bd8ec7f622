//! The commands an operator runs, apart from the daemon itself: `status`, `check`, `metrics`, `resume`,
//! `forget-tenant`, `dead-letter`, `backup`, `import`, `transform`, `demo`. Each is a function here, so that
//! `main.rs` stays argument plumbing and tests can call them; each returns an [`Error`] that knows its exit
//! code.

pub mod admin;
pub mod check;
pub mod demo;
pub mod metrics;
pub mod status;

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::{self, Tenant};
use crate::store::StoreError;
use crate::{auth0, input, pipeline, rudderstack};

/// Exit status: a runtime failure (Auth0 or RudderStack refused us, `sync` gave up, a check failed).
pub const EXIT_FAILURE: u8 = 1;
/// Exit status: a usage or configuration error.
pub const EXIT_CONFIG: u8 = 2;
/// Exit status: the state database or its directory cannot be used (it is left untouched).
pub const EXIT_STATE: u8 = 3;
/// Exit status: input that is not JSON.
pub const EXIT_INPUT: u8 = 4;
/// Exit status: `demo` ran, but not every entry arrived exactly once.
pub const EXIT_DEMO_MISMATCH: u8 = 5;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// The state database failed or cannot be used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The daemon's work failed.
    #[error(transparent)]
    Pipeline(#[from] pipeline::Error),
    /// Auth0 refused or failed.
    #[error(transparent)]
    Auth0(#[from] auth0::Error),
    /// RudderStack refused or failed.
    #[error(transparent)]
    RudderStack(#[from] rudderstack::Error),
    /// Input that cannot be read as Auth0 entries.
    #[error(transparent)]
    Input(#[from] input::InputError),
    /// A file named on the command line cannot be opened.
    #[error("cannot open {}", path.display())]
    Open {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The command line asks for something that cannot be done as asked.
    #[error("{0}")]
    Usage(String),
    /// One or more checks failed (`check` printed which).
    #[error("{0}")]
    ChecksFailed(String),
}

impl Error {
    /// The documented exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Usage(_) => EXIT_CONFIG,
            Error::Store(e) if e.is_request() || e.is_transient() => EXIT_FAILURE,
            Error::Store(_) => EXIT_STATE,
            Error::Pipeline(pipeline::Error::Orphans(_) | pipeline::Error::File { .. }) => EXIT_CONFIG,
            Error::Pipeline(pipeline::Error::Input { .. }) => EXIT_INPUT,
            Error::Pipeline(e) if e.is_unusable_store() => EXIT_STATE,
            Error::Input(_) => EXIT_INPUT,
            Error::Open { .. } => EXIT_CONFIG,
            _ => EXIT_FAILURE,
        }
    }
}

/// How old an RFC 3339 time from the state file is.
pub fn age(date: Option<&str>) -> Option<chrono::Duration> {
    let t: DateTime<Utc> = crate::entry::parse_date(date?)?;
    Some(Utc::now() - t)
}

/// A chrono duration in words, to the second.
pub fn human_chrono(d: chrono::Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.num_seconds().max(0) as u64)).to_string()
}

/// A tenant's privacy rules in words, never the key.
pub fn privacy_description(t: &Tenant) -> String {
    match t.privacy.as_ref().and_then(|p| p.rules()) {
        Some(p) => p.describe(),
        None => "none".into(),
    }
}
