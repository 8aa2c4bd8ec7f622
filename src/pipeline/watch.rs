//! Wakes a tenant's sender when another process (`dead-letter retry`, `import`) has queued rows for it.
//!
//! SQLite's `data_version` tells a connection that some other connection committed, but only when asked, and
//! asking once a second costs an idle daemon a thread wake-up a second: on a small VM that is most of what an
//! idle daemon costs. So the watcher asks only when the kernel says (inotify) that a file of the state database
//! was written, and then once a second for a few seconds, because a commit becomes visible a moment after its
//! first write and a long import writes many times. A slow safety poll covers what inotify cannot see (a state
//! file on a network file system); where inotify cannot be used at all, the watcher polls once a second.

use std::ffi::OsString;
use std::io::ErrorKind;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use inotify::{EventStream, Inotify, WatchMask};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::TenantRun;
use crate::store::Handle;

/// How often the database is asked while something is being written, and when inotify is unavailable.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How long the watcher keeps asking after the last write it was told of.
const LOOK_FOR: Duration = Duration::from_secs(2);
/// The safety poll when inotify is in use.
const SAFETY_POLL: Duration = Duration::from_secs(60);

/// Start the watcher; it ends when `stop` is cancelled.
pub fn spawn(tenants: Vec<Arc<TenantRun>>, store: Handle, state: &Path, stop: CancellationToken) {
    let changes = match Changes::watch(state) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::info!(error = %e, "cannot watch the state file's directory; looking for other processes' rows once a second");
            None
        }
    };
    tokio::spawn(async move {
        let seen = store.call(|s| s.data_version()).await.ok();
        let mut w = Watcher { tenants, store, seen, changes, look_until: None };
        while w.step(&stop).await == Step::Go {}
    });
}

#[derive(Debug, PartialEq, Eq)]
enum Step {
    Go,
    Stopped,
}

struct Watcher {
    tenants: Vec<Arc<TenantRun>>,
    store: Handle,
    /// The `data_version` last seen.
    seen: Option<i64>,
    changes: Option<Changes>,
    /// Keep asking once a second until then (a write was seen).
    look_until: Option<Instant>,
}

impl Watcher {
    /// Wait for a reason to look, then look once.
    async fn step(&mut self, stop: &CancellationToken) -> Step {
        let looking = self.look_until.is_some_and(|until| Instant::now() < until);
        match &mut self.changes {
            Some(changes) if !looking => {
                tokio::select! {
                    _ = stop.cancelled() => return Step::Stopped,
                    seen = changes.next() => match seen {
                        // Look a moment later: the write may belong to a commit not yet visible.
                        Ok(()) => self.look_until = Some(Instant::now() + LOOK_FOR),
                        Err(e) => {
                            tracing::info!(error = %e, "stopped watching the state file's directory; looking once a second");
                            self.changes = None;
                        }
                    },
                    _ = tokio::time::sleep(SAFETY_POLL) => self.look().await,
                }
            }
            changes => {
                tokio::select! {
                    _ = stop.cancelled() => return Step::Stopped,
                    _ = tokio::time::sleep(LOOK_EVERY) => {}
                }
                if let Some(c) = changes
                    && c.drain()
                {
                    self.look_until = Some(Instant::now() + LOOK_FOR);
                }
                self.look().await;
            }
        }
        Step::Go
    }

    /// Ask the database whether anyone committed, and if so wake each sender that has rows waiting.
    async fn look(&mut self) {
        let Ok(now) = self.store.call(|s| s.data_version()).await else { return };
        if self.seen == Some(now) {
            return;
        }
        self.seen = Some(now);
        let Ok(known) = self.store.call(|s| s.tenants()).await else { return };
        for t in &self.tenants {
            if known.iter().any(|k| k.domain == t.domain && k.outbox > 0) {
                t.wake_sender.notify_one();
            }
        }
    }
}

/// Writes to the state database's files, as inotify reports them for the directory that holds them (a
/// directory watch survives the `-wal` file being created and removed).
struct Changes {
    events: EventStream<[u8; 1024]>,
    /// The state file's name; its `-wal`, `-journal` and `-shm` files start with it.
    name: OsString,
}

impl Changes {
    fn watch(state: &Path) -> std::io::Result<Self> {
        let name = state.file_name().map(OsString::from).unwrap_or_default();
        let dir = match state.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let inotify = Inotify::init()?;
        inotify
            .watches()
            .add(dir, WatchMask::MODIFY | WatchMask::CLOSE_WRITE | WatchMask::CREATE | WatchMask::MOVED_TO)?;
        Ok(Self { events: inotify.into_event_stream([0; 1024])?, name })
    }

    /// Wait for an event that concerns the state database.
    async fn next(&mut self) -> std::io::Result<()> {
        loop {
            match self.events.next().await {
                Some(Ok(e)) if concerns(e.name.as_deref(), &self.name) => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "inotify closed")),
            }
        }
    }

    /// Take what is queued without waiting; whether any of it concerns the state database.
    fn drain(&mut self) -> bool {
        let mut any = false;
        // Bounded: a writer cannot queue events faster than this takes them for long, and the next look is at
        // most a second away anyway.
        for _ in 0..1024 {
            match self.events.next().now_or_never() {
                Some(Some(Ok(e))) => any |= concerns(e.name.as_deref(), &self.name),
                // An error or the end: look, to be safe.
                Some(_) => return true,
                None => break,
            }
        }
        any
    }
}

/// An event without a name (the queue overflowed, the directory itself changed) may hide one that matters.
fn concerns(event: Option<&std::ffi::OsStr>, state: &OsString) -> bool {
    use std::os::unix::ffi::OsStrExt;
    event.is_none_or(|n| n.as_bytes().starts_with(state.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_state_files_and_nameless_events_concern_the_watcher() {
        let state = OsString::from("state.db");
        assert!(concerns(Some("state.db-wal".as_ref()), &state));
        assert!(concerns(Some("state.db".as_ref()), &state));
        assert!(concerns(None, &state));
        assert!(!concerns(Some("other.db-wal".as_ref()), &state));
        assert!(!concerns(Some("state.d".as_ref()), &state));
    }
}
