//! Wakes a tenant's sender when another process (`dead-letter retry`, `import`) has queued rows for it.
//!
//! SQLite's `data_version` tells a connection that some other connection committed, but only when asked, and
//! asking once a second costs an idle daemon a thread wake-up a second: on a small VM that is most of what an
//! idle daemon costs. So the watcher asks only when the kernel says (inotify) that another process closed a
//! file of the state database it had open for writing: the daemon's own connections stay open for its whole
//! life, so its own commits (a poll that found nothing still records when it asked) never wake it, while a
//! `dead-letter retry` or an `import` closes the files when it is done, its commits visible by then. A slow
//! safety poll covers what inotify cannot see (a state file on a network file system) and the rows an import
//! still running has queued; where inotify cannot be used at all, the watcher polls once a second.

use std::ffi::OsString;
use std::io::ErrorKind;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use inotify::{EventStream, Inotify, WatchMask};
use tokio_util::sync::CancellationToken;

use super::TenantRun;
use crate::store::Handle;

/// How often the database is asked when inotify is unavailable.
const LOOK_EVERY: Duration = Duration::from_secs(1);
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
        let mut w = Watcher { tenants, store, seen, changes };
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
}

impl Watcher {
    /// Wait for a reason to look, then look once.
    async fn step(&mut self, stop: &CancellationToken) -> Step {
        match &mut self.changes {
            Some(changes) => {
                tokio::select! {
                    _ = stop.cancelled() => return Step::Stopped,
                    seen = changes.next() => match seen {
                        // One process closing its files yields several events: one look answers them all.
                        Ok(()) => {
                            changes.drain();
                        }
                        Err(e) => {
                            tracing::info!(error = %e, "stopped watching the state file's directory; looking once a second");
                            self.changes = None;
                        }
                    },
                    _ = tokio::time::sleep(SAFETY_POLL) => {}
                }
            }
            None => {
                tokio::select! {
                    _ = stop.cancelled() => return Step::Stopped,
                    _ = tokio::time::sleep(LOOK_EVERY) => {}
                }
            }
        }
        self.look().await;
        Step::Go
    }

    /// Ask the database whether anyone committed, and if so wake each sender that has rows waiting.
    async fn look(&mut self) {
        let Ok(now) = self.store.call(|s| s.data_version()).await else { return };
        if self.seen == Some(now) {
            return;
        }
        self.seen = Some(now);
        let Ok(depths) = self.store.call(|s| s.outbox_depths()).await else { return };
        for t in &self.tenants {
            if depths.iter().any(|(domain, outbox)| *domain == t.domain && *outbox > 0) {
                t.wake_sender.notify_one();
            }
        }
    }
}

/// Other processes' writes to the state database's files, as inotify reports them for the directory that holds
/// them (a directory watch survives the `-wal` file being created and removed): a file opened for writing and
/// closed, or a file created or moved in. Writes through a descriptor still open (the daemon's own) are not
/// reported.
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
        inotify.watches().add(dir, WatchMask::CLOSE_WRITE | WatchMask::CREATE | WatchMask::MOVED_TO)?;
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
        // Bounded: events queued past this wake the watcher again, and cost one more look.
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

    /// The daemon's own connections write through descriptors they keep open, which must not wake the watcher;
    /// another process closing what it wrote must. inotify queues an event within the system call that causes
    /// it; a yield lets the runtime's reactor see it, so each check below is exact without any sleep.
    #[tokio::test]
    async fn writes_through_an_open_file_are_not_reported_and_its_close_is() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state.db");
        let wal = dir.path().join("state.db-wal");
        std::fs::write(&wal, b"").expect("wal");
        let mut changes = Changes::watch(&state).expect("inotify");
        let mut file = std::fs::OpenOptions::new().append(true).open(&wal).expect("open");
        file.write_all(b"a commit").expect("write");
        file.sync_all().expect("sync");
        tokio::task::yield_now().await;
        assert!(!changes.drain(), "a write through an open descriptor woke the watcher");
        drop(file);
        let woke = tokio::time::timeout(std::time::Duration::from_secs(10), changes.next()).await;
        assert!(matches!(woke, Ok(Ok(()))), "closing a file written to did not wake the watcher: {woke:?}");
        std::fs::write(dir.path().join("other.db-wal"), b"x").expect("other");
        tokio::task::yield_now().await;
        assert!(!changes.drain(), "another file's writes woke the watcher");
    }
}
