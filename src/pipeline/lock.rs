//! The lock through which every command that changes the state coordinates with the others.
//!
//! Two `run`s on one state would fetch every page twice and race each other's deletes, delivering events
//! twice; a `forget-tenant` under a running daemon would wipe a tenant the daemon then starts afresh; an
//! `import` that only enqueues, believing a daemon delivers, would strand its rows if the holder were another
//! `import` about to exit. So `run`, `sync`, `import`, `resume`, `forget-tenant` and `dead-letter retry` take
//! an OS file lock on `<canonical state path>.lock`: canonical, so that a symlink or a relative path to the
//! same file finds the same lock; an OS lock (`flock`, which belongs to the open file, not to the process's
//! other descriptors), so that it goes away with the process however the process ends.
//!
//! The holder writes its PID and command into the lock file, so that a command refused or kept waiting can
//! say who holds the state and decide what that means: `import` leaves delivery to a `run` but waits for
//! anything else. What the file says is trusted only while its lock is held (a holder that died leaves its
//! text behind but not its lock). The file is created 0600 like the state itself, and is never opened
//! through a symlink, since its holder writes into it.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Error;
use crate::store::{self, StoreError};

/// How often a command waiting for the lock looks again.
const WAIT_STEP: Duration = Duration::from_millis(200);
/// The most of the lock file read to learn its holder.
const MAX_HOLDER_TEXT: u64 = 512;

/// Held for as long as the command uses the state file.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    /// The lock file.
    pub path: PathBuf,
    /// The state file's canonical path.
    pub state: PathBuf,
}

/// Who holds the lock, as its holder wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its process id.
    pub pid: u32,
    /// The command it runs (`run`, `sync`, `import`, ...).
    pub command: String,
}

impl Holder {
    /// Parse what a holder wrote: `PID COMMAND`. Anything else is no holder we can name.
    fn parse(text: &str) -> Option<Holder> {
        let (pid, command) = text.trim().split_once(' ')?;
        let pid = pid.parse().ok()?;
        let command = command.trim();
        let plain = !command.is_empty()
            && command.len() <= 32
            && command.bytes().all(|b| b.is_ascii_lowercase() || b == b'-' || b == b' ');
        plain.then(|| Holder { pid, command: command.to_string() })
    }

    /// Whether the holder is a daemon (`run`), which delivers whatever other commands queue.
    pub fn is_daemon(&self) -> bool {
        self.command == "run"
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` (pid {})", self.command, self.pid)
    }
}

/// What trying the lock found.
#[derive(Debug)]
pub enum Attempt {
    /// The lock is ours.
    Taken(StateLock),
    /// Another process holds it; who, when it said.
    Held(Option<Holder>),
}

/// The lock file and the state's canonical path (creating the state file, privately, if it is missing).
fn paths(path: &Path) -> Result<(PathBuf, PathBuf), Error> {
    let state = store::prepare(path)?;
    let mut name = state.as_os_str().to_owned();
    name.push(".lock");
    Ok((state, PathBuf::from(name)))
}

fn open(lock_path: &Path) -> Result<File, Error> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(lock_path)
        .map_err(|source| {
            Error::Store(StoreError::Unusable {
                what: "open the lock file",
                path: lock_path.to_path_buf(),
                source,
            })
        })
}

/// Read who holds the lock file, as its holder wrote it.
fn holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.take(MAX_HOLDER_TEXT).read_to_string(&mut text).ok()?;
    Holder::parse(&text)
}

impl StateLock {
    /// Try to take the lock of the state file at `path` for `command`, without waiting.
    pub fn try_acquire(path: &Path, command: &str) -> Result<Attempt, Error> {
        let (state, lock_path) = paths(path)?;
        let mut file = open(&lock_path)?;
        match file.try_lock() {
            Ok(()) => {
                // Say who holds it. The lock is what counts; a failure to say it only makes messages vaguer.
                let said = file
                    .set_len(0)
                    .and_then(|()| file.rewind())
                    .and_then(|()| writeln!(file, "{} {command}", std::process::id()));
                if let Err(e) = said {
                    tracing::debug!(error = %e, path = %lock_path.display(), "cannot write the lock holder");
                }
                Ok(Attempt::Taken(StateLock { _file: file, path: lock_path, state }))
            }
            Err(std::fs::TryLockError::WouldBlock) => Ok(Attempt::Held(holder(&mut file))),
            Err(std::fs::TryLockError::Error(source)) => {
                Err(Error::Store(StoreError::Unusable { what: "lock", path: lock_path, source }))
            }
        }
    }

    /// Take the lock for `command`, or refuse, naming the holder.
    pub fn acquire(path: &Path, command: &str) -> Result<StateLock, Error> {
        match StateLock::try_acquire(path, command)? {
            Attempt::Taken(lock) => Ok(lock),
            Attempt::Held(holder) => Err(already_running(path, holder)),
        }
    }

    /// Take the lock for `command`, waiting while another command holds it, unless `enough` says its holder
    /// is one the caller can work beside (then `Held`). `Cancelled` if `shutdown` came first.
    pub async fn acquire_unless(
        path: &Path,
        command: &str,
        enough: impl Fn(Option<&Holder>) -> bool,
        shutdown: &CancellationToken,
    ) -> Result<Waited, Error> {
        let mut said = None;
        loop {
            match StateLock::try_acquire(path, command)? {
                Attempt::Taken(lock) => return Ok(Waited::Taken(lock)),
                Attempt::Held(holder) if enough(holder.as_ref()) => return Ok(Waited::Held(holder)),
                Attempt::Held(holder) => {
                    if said.as_ref() != Some(&holder) {
                        tracing::info!(
                            state = %path.display(),
                            "{} is using the state; waiting for it to finish",
                            named(holder.as_ref())
                        );
                        said = Some(holder);
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(Waited::Cancelled),
                _ = tokio::time::sleep(WAIT_STEP) => {}
            }
        }
    }
}

/// How a wait for the lock ended.
#[derive(Debug)]
pub enum Waited {
    /// The lock is ours.
    Taken(StateLock),
    /// Its holder is one the caller works beside.
    Held(Option<Holder>),
    /// A shutdown came first.
    Cancelled,
}

/// The holder in words.
pub fn named(holder: Option<&Holder>) -> String {
    match holder {
        Some(h) => format!("auth0-rudderstack {h}"),
        None => "another auth0-rudderstack process".to_string(),
    }
}

fn already_running(path: &Path, holder: Option<Holder>) -> Error {
    let lock = paths(path).map(|(_, l)| l.display().to_string()).unwrap_or_default();
    Error::AlreadyRunning { path: path.display().to_string(), lock, holder: named(holder.as_ref()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_is_read_back_as_written_and_nothing_else_is_trusted() {
        assert_eq!(Holder::parse("123 run\n"), Some(Holder { pid: 123, command: "run".into() }));
        assert_eq!(
            Holder::parse("7 dead-letter retry\n"),
            Some(Holder { pid: 7, command: "dead-letter retry".into() })
        );
        for odd in ["", "run", "x run", "12", "12 ", "12 \u{1b}[31mrun", "12 RUN", "-1 run"] {
            assert_eq!(Holder::parse(odd), None, "{odd:?}");
        }
        assert!(Holder::parse("1 run").unwrap().is_daemon());
        assert!(!Holder::parse("1 import").unwrap().is_daemon());
    }

    #[test]
    fn the_holder_of_a_taken_lock_is_named_to_the_next_comer() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.db");
        let Attempt::Taken(lock) = StateLock::try_acquire(&state, "import").unwrap() else { panic!("free") };
        let Attempt::Held(Some(holder)) = StateLock::try_acquire(&state, "run").unwrap() else {
            panic!("the lock should be held and named")
        };
        assert_eq!(holder, Holder { pid: std::process::id(), command: "import".into() });
        let refused = StateLock::acquire(&state, "run").unwrap_err().to_string();
        assert!(refused.contains("`import` (pid"), "{refused}");
        drop(lock);
        assert!(matches!(StateLock::try_acquire(&state, "run").unwrap(), Attempt::Taken(_)));
    }

    #[test]
    fn a_symlink_at_the_lock_files_name_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.db");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("state.db.lock")).unwrap();
        let err = StateLock::acquire(&state, "run").unwrap_err();
        assert!(err.to_string().contains("lock file"), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }
}
