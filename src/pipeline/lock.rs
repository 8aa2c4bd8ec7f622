//! The lock that keeps two daemons off one state file.
//!
//! Two `run`s on one state would fetch every page twice and race each other's deletes, delivering events
//! twice. The lock is an OS file lock on `<canonical state path>.lock`: canonical, so that a symlink or a
//! relative path to the same file finds the same lock; an OS lock, so that it goes away with the process
//! however the process ends. The lock file is created 0600 like the state itself.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::Error;
use crate::store::{self, StoreError};

/// Held for as long as the daemon uses the state file.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    /// The lock file.
    pub path: PathBuf,
    /// The state file's canonical path.
    pub state: PathBuf,
}

impl StateLock {
    /// Take the lock of the state file at `path` (creating the file, privately, if it is missing).
    pub fn acquire(path: &Path) -> Result<StateLock, Error> {
        let state = store::prepare(path)?;
        let mut name = state.as_os_str().to_owned();
        name.push(".lock");
        let lock_path = PathBuf::from(name);
        let mut options = std::fs::OpenOptions::new();
        options.create(true).truncate(false).write(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&lock_path).map_err(|source| {
            Error::Store(StoreError::Unusable { what: "open the lock file", path: lock_path.clone(), source })
        })?;
        match file.try_lock() {
            Ok(()) => Ok(StateLock { _file: file, path: lock_path, state }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::AlreadyRunning {
                path: path.display().to_string(),
                lock: lock_path.display().to_string(),
            }),
            Err(std::fs::TryLockError::Error(source)) => {
                Err(Error::Store(StoreError::Unusable { what: "lock", path: lock_path, source }))
            }
        }
    }
}
