//! The Auth0 Management API client: a client-credentials token, a pacer, and `/api/v2/logs` paging.
//!
//! Only three endpoints are used, `POST /oauth/token`, `GET /api/v2/logs` and (for `dead-letter retry`)
//! `GET /api/v2/logs/{id}`, so this is a small hand-written client rather than an SDK (the generated SDKs dropped the `from`/`take` checkpoint mode we depend on).
//! Every failure becomes one [`Error`] whose classification drives the pipeline: transient errors are retried
//! with backoff, an expired checkpoint starts the gap handling, and anything else is fatal and must reach the
//! operator with a message that says what to fix. Messages name the URL and the client id, never the client
//! secret or an access token.

pub mod logs;
mod pace;
pub mod token;

use std::time::Duration;

pub use logs::{Bootstrap, ById, Client, Page, Unreadable};
pub use token::OnMint;

/// A failed call to Auth0.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client could not be built (a bad URL or TLS setup); never heals by retrying.
    #[error("cannot build the Auth0 client: {0}")]
    Setup(String),
    /// The token endpoint refused our client credentials (401/403): the operator must fix them or the grant.
    #[error(
        "Auth0 rejected the client credentials for client_id {client_id} at {url}: {error}: {description} \
         (check auth0.client_id and auth0.client_secret, and that the application is authorized for the \
         Management API)"
    )]
    CredentialsRejected {
        /// The client id (not a secret).
        client_id: String,
        /// The token endpoint.
        url: String,
        /// The HTTP status (401 or 403).
        status: u16,
        /// Auth0's `error` code.
        error: String,
        /// Auth0's `error_description`.
        description: String,
    },
    /// The token endpoint refused the request for another reason (a 4xx such as an unknown audience).
    #[error("the Auth0 token endpoint {url} answered HTTP {status} for client_id {client_id}: {message}")]
    TokenRefused {
        /// The client id.
        client_id: String,
        /// The token endpoint.
        url: String,
        /// The HTTP status.
        status: u16,
        /// What Auth0 said.
        message: String,
    },
    /// `/api/v2/logs` refused a freshly minted token too (a second 401 in a row).
    #[error("Auth0 refused a freshly minted access token at {url} (HTTP 401: {message})")]
    Unauthorized {
        /// The request URL.
        url: String,
        /// What Auth0 said.
        message: String,
    },
    /// `/api/v2/logs` answered 403: the application lacks the `read:logs` scope.
    #[error(
        "Auth0 denied {url} (HTTP 403: {message}): the application with client_id {client_id} needs the \
         read:logs scope on the Auth0 Management API"
    )]
    Forbidden {
        /// The client id.
        client_id: String,
        /// The request URL.
        url: String,
        /// What Auth0 said.
        message: String,
    },
    /// A checkpoint read answered 400: the entry named by `from` has most likely aged out of retention.
    #[error(
        "Auth0 refused the checkpoint from={from} (HTTP 400: {message}); the entry has probably aged out of \
         the tenant's log retention"
    )]
    ExpiredCheckpoint {
        /// The refused cursor.
        from: String,
        /// What Auth0 said.
        message: String,
    },
    /// Auth0's rate limit refused the request (429).
    #[error("Auth0 rate limit reached at {url} (HTTP 429: {message}); retry after {}", fmt_wait(.retry_after))]
    RateLimited {
        /// The request URL.
        url: String,
        /// What Auth0 said.
        message: String,
        /// How long Auth0 asked us to wait, when it said.
        retry_after: Option<Duration>,
    },
    /// Any other non-success status: 5xx and 408 are transient, 3xx and other 4xx are not.
    #[error("Auth0 answered HTTP {status} at {url}: {message}")]
    Status {
        /// The request URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// What Auth0 said (or where a redirect pointed).
        message: String,
    },
    /// The request did not complete: connection refused or reset, timeout, TLS failure.
    #[error("request to {url} failed: {message}")]
    Transport {
        /// The request URL.
        url: String,
        /// The cause chain.
        message: String,
    },
    /// A success status whose body is not what Auth0 sends (truncated, not a JSON array, no `log_id`).
    #[error("Auth0 sent an unusable body from {url}: {message}")]
    Body {
        /// The request URL.
        url: String,
        /// What is wrong.
        message: String,
    },
}

fn fmt_wait(d: &Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.1}s", d.as_secs_f64()),
        None => "an unspecified time".into(),
    }
}

impl Error {
    /// Whether waiting and trying again can help.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::RateLimited { .. } | Error::Transport { .. } | Error::Body { .. } => true,
            Error::Status { status, .. } => *status >= 500 || *status == 408,
            Error::Setup(_)
            | Error::CredentialsRejected { .. }
            | Error::TokenRefused { .. }
            | Error::Unauthorized { .. }
            | Error::Forbidden { .. }
            | Error::ExpiredCheckpoint { .. } => false,
        }
    }

    /// How long Auth0 asked us to wait (a 429: the later of `Retry-After` and `x-ratelimit-reset`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// True when Auth0 refused the `from` cursor (a 400 on a checkpoint read): the entry has likely expired.
    pub fn is_expired_checkpoint(&self) -> bool {
        matches!(self, Error::ExpiredCheckpoint { .. })
    }

    /// Retrying cannot help and it is not the expired-checkpoint case: the operator must act (credentials,
    /// scope, base URL).
    pub fn is_fatal(&self) -> bool {
        !self.is_transient() && !self.is_expired_checkpoint()
    }

    /// The HTTP status Auth0 answered with, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::CredentialsRejected { status, .. }
            | Error::TokenRefused { status, .. }
            | Error::Status { status, .. } => Some(*status),
            Error::Unauthorized { .. } => Some(401),
            Error::Forbidden { .. } => Some(403),
            Error::ExpiredCheckpoint { .. } => Some(400),
            Error::RateLimited { .. } => Some(429),
            Error::Setup(_) | Error::Transport { .. } | Error::Body { .. } => None,
        }
    }
}

/// The human part of an Auth0 error body: `message` (Management API), `error_description`/`error` (token
/// endpoint), or the start of the text. Bounded so a proxy's HTML page cannot flood the log.
pub(crate) fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        for key in ["message", "error_description", "error"] {
            if let Some(s) = v.get(key).and_then(|m| m.as_str()) {
                return clip(s);
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() { "(empty body)".into() } else { clip(text) }
}

/// At most 300 bytes of a text from Auth0, for a message.
pub(crate) fn clip(s: &str) -> String {
    crate::logging::clip(s, 300)
}
