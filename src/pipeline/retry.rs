//! The one retry policy: which failures are worth waiting out, and how long to wait.
//!
//! Both loops of every tenant hand each failure to a [`RetryPolicy`] and do what it says, so the rules live in
//! one place (as vector's `RetryLogic` does): an error says whether it is transient and whether the other
//! side named a wait ([`Error::retry`]); the policy turns that into a jittered exponential backoff capped at
//! `retry.max_backoff`, honours a named wait (capped at [`MAX_WAIT`], with a warning when capped), and makes
//! `sync` give up after `retry.sync_give_up_after` while `run` never does.

use std::time::{Duration, Instant};

use backon::BackoffBuilder;

use super::{Error, RunMode};
use crate::config;

/// No wait is ever longer than this, whatever a server asked for.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

/// What an error says about trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Retrying cannot help: the operator must act.
    Never,
    /// Wait and try again; the other side may have said how long.
    After(Option<Duration>),
    /// Transient for `run` (which waits it out), final for `sync` (which reports it at once).
    OnlyInDaemon,
}

/// Backoff state of one loop.
pub struct RetryPolicy {
    builder: backon::ExponentialBuilder,
    delays: Option<backon::ExponentialBackoff>,
    failing_since: Option<Instant>,
    give_up_after: Option<Duration>,
    mode: RunMode,
    /// Consecutive failures so far.
    pub attempts: u32,
}

impl RetryPolicy {
    /// The policy of one loop, from `[retry]`.
    pub fn new(config: &config::Retry, mode: RunMode) -> RetryPolicy {
        let builder = backon::ExponentialBuilder::default()
            .with_min_delay(config.initial_backoff)
            .with_max_delay(config.max_backoff.min(MAX_WAIT))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        RetryPolicy {
            builder,
            delays: None,
            failing_since: None,
            give_up_after: (mode == RunMode::Sync).then_some(config.sync_give_up_after),
            mode,
            attempts: 0,
        }
    }

    /// A step succeeded: the next failure starts the backoff afresh.
    pub fn succeeded(&mut self) {
        self.delays = None;
        self.failing_since = None;
        self.attempts = 0;
    }

    /// Whether the loop is failing right now.
    pub fn is_failing(&self) -> bool {
        self.failing_since.is_some()
    }

    /// Decide how long to wait after `error`, or hand the error back when the loop must stop.
    pub fn failed(&mut self, error: Error) -> Result<Duration, Error> {
        let asked = match error.retry() {
            Retry::Never => return Err(error),
            Retry::OnlyInDaemon if self.mode == RunMode::Sync => return Err(error),
            Retry::OnlyInDaemon => None,
            Retry::After(asked) => asked,
        };
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        self.attempts += 1;
        if let Some(limit) = self.give_up_after
            && since.elapsed() >= limit
        {
            return Err(Error::GaveUp {
                waited: humantime::format_duration(Duration::from_secs(since.elapsed().as_secs()))
                    .to_string(),
                last: Box::new(error),
            });
        }
        let backoff = self.delays.get_or_insert_with(|| self.builder.build()).next().unwrap_or(MAX_WAIT);
        // The other side's own answer (Retry-After, x-ratelimit-reset) wins over our guess.
        let wait = asked.unwrap_or(backoff);
        if wait > MAX_WAIT {
            tracing::warn!(
                asked = %humantime::format_duration(wait),
                "a wait longer than {} was asked for; waiting {} instead",
                humantime::format_duration(MAX_WAIT),
                humantime::format_duration(MAX_WAIT)
            );
            return Ok(MAX_WAIT);
        }
        Ok(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    fn busy() -> Error {
        Error::Store(StoreError::Sqlite {
            path: "x".into(),
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                None,
            ),
        })
    }

    fn retry_config() -> config::Retry {
        config::Retry {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            sync_give_up_after: Duration::from_secs(3600),
        }
    }

    #[test]
    fn waits_grow_up_to_the_cap_and_restart_after_a_success() {
        let mut p = RetryPolicy::new(&retry_config(), RunMode::Daemon);
        let waits: Vec<Duration> = (0..8).map(|_| p.failed(busy()).unwrap()).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(2)), "{waits:?}");
        assert!(waits[6] > waits[0], "{waits:?}");
        p.succeeded();
        assert!(p.failed(busy()).unwrap() < Duration::from_millis(250));
    }

    #[test]
    fn a_named_wait_wins_but_never_beyond_an_hour() {
        let mut p = RetryPolicy::new(&retry_config(), RunMode::Daemon);
        let asked = |d: Duration| {
            Error::RudderStack(crate::rudderstack::Error::Unavailable {
                endpoint: "e".into(),
                status: 429,
                body: String::new(),
                retry_after: Some(d),
            })
        };
        assert_eq!(p.failed(asked(Duration::from_secs(7))).unwrap(), Duration::from_secs(7));
        assert_eq!(p.failed(asked(Duration::from_secs(1 << 40))).unwrap(), MAX_WAIT);
    }

    #[test]
    fn a_stall_waits_in_the_daemon_and_ends_a_sync() {
        let mut daemon = RetryPolicy::new(&retry_config(), RunMode::Daemon);
        assert!(daemon.failed(Error::Stalled("x".into())).is_ok());
        let mut sync = RetryPolicy::new(&retry_config(), RunMode::Sync);
        assert!(matches!(sync.failed(Error::Stalled("x".into())), Err(Error::Stalled(_))));
    }
}
