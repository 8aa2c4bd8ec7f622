//! STUB: the SQLite state (being written). The signatures here are the contract the pipeline uses.
use std::path::{Path, PathBuf};

/// A state database that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file exists but is not an SQLite database, or is corrupt. It was not modified.
    #[error("state database {path} is not a usable SQLite database ({detail}); it was left untouched")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        detail: String,
    },
    /// The file was written by a newer version of this program. It was not modified.
    #[error(
        "state database {path} has schema version {found}, newer than this program's {supported}; it was left untouched"
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// `status` or `dead-letter` was asked about a database that does not exist.
    #[error("state database {path} does not exist yet (run `sync` or `run` first)")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// Any other SQLite error (disk full, locked past the busy timeout, ...).
    #[error("state database {path}: {source}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// The error.
        source: rusqlite::Error,
    },
}

impl StoreError {
    /// A busy or locked database may clear up; everything else needs an operator.
    pub fn is_transient(&self) -> bool {
        todo!()
    }
}

/// The cursor: the last `log_id` whose page is in the outbox (or delivered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The `log_id` to pass as `from`.
    pub log_id: String,
    /// The `date` of that entry, when it had one (for checkpoint age).
    pub date: Option<String>,
}

/// An entry bound for the outbox.
#[derive(Debug, Clone)]
pub struct NewEntry {
    /// Its `log_id`.
    pub log_id: String,
    /// The raw entry as Auth0 returned it.
    pub raw: String,
}

/// An entry or event set aside for an operator.
#[derive(Debug, Clone)]
pub struct NewDeadLetter {
    /// Its `log_id`, when it had one.
    pub log_id: Option<String>,
    /// The raw entry.
    pub raw: String,
    /// Why it was set aside.
    pub reason: String,
}

/// What one fetched page changes, committed in one transaction.
#[derive(Debug, Clone, Default)]
pub struct PageCommit {
    /// Entries to append to the outbox, in order.
    pub entries: Vec<NewEntry>,
    /// Entries that cannot be forwarded.
    pub dead_letters: Vec<NewDeadLetter>,
    /// The new cursor; `None` leaves it unchanged.
    pub cursor: Option<Cursor>,
    /// How many entries `auth0.log_types` filtered out.
    pub filtered: u64,
}

/// One outbox row.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Its position; rows are delivered in this order.
    pub seq: i64,
    /// Its `log_id`.
    pub log_id: String,
    /// The raw entry.
    pub raw: String,
}

/// A detected gap in the log (expired checkpoint).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Gap {
    /// When it was detected (RFC 3339).
    pub detected_at: String,
    /// The cursor that had expired.
    pub from_log_id: String,
    /// The cursor's entry date, when known.
    pub from_date: Option<String>,
    /// The first entry read after the gap, when known.
    pub to_log_id: Option<String>,
    /// Its date.
    pub to_date: Option<String>,
    /// What happened, in words.
    pub detail: String,
}

/// A dead letter as `dead-letter list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    /// Its id, for `dead-letter retry`.
    pub id: i64,
    /// The entry's `log_id`, when it had one.
    pub log_id: Option<String>,
    /// Why it was set aside.
    pub reason: String,
    /// When (RFC 3339).
    pub created_at: String,
    /// The raw entry.
    pub raw: String,
}

/// Everything `status` reports from the database.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    /// The tenant.
    pub tenant: String,
    /// The cursor.
    pub cursor: Option<String>,
    /// The cursor entry's date.
    pub cursor_date: Option<String>,
    /// Rows waiting for delivery.
    pub outbox_depth: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Last successful read from Auth0 (RFC 3339).
    pub last_fetch_at: Option<String>,
    /// Last 2xx from RudderStack (RFC 3339).
    pub last_delivery_at: Option<String>,
    /// Entries delivered, all time.
    pub delivered_total: u64,
    /// Entries filtered out by `log_types`, all time.
    pub filtered_total: u64,
    /// The most recent gap, if any.
    pub last_gap: Option<Gap>,
    /// True while fetching is stopped because of an expired checkpoint (`on_expired_checkpoint = "stop"`).
    pub stopped: bool,
}

/// The state of one tenant in one SQLite file. Each task opens its own `Store`.
pub struct Store {
    _conn: rusqlite::Connection,
}

impl Store {
    /// Open (creating and migrating if needed) the database for `tenant`.
    pub fn open(path: &Path, tenant: &str) -> Result<Store, StoreError> {
        let _ = (path, tenant);
        todo!()
    }
    /// Open an existing database without creating or migrating anything.
    pub fn open_existing(path: &Path, tenant: &str) -> Result<Store, StoreError> {
        let _ = (path, tenant);
        todo!()
    }
    /// The cursor, if any.
    pub fn cursor(&self) -> Result<Option<Cursor>, StoreError> {
        todo!()
    }
    /// Append a page to the outbox, set dead letters aside and move the cursor, in one transaction.
    pub fn commit_page(&mut self, page: &PageCommit) -> Result<(), StoreError> {
        let _ = page;
        todo!()
    }
    /// Record that Auth0 answered (even with an empty page).
    pub fn touch_fetch(&mut self) -> Result<(), StoreError> {
        todo!()
    }
    /// Rows waiting for delivery.
    pub fn outbox_depth(&self) -> Result<u64, StoreError> {
        todo!()
    }
    /// The first `limit` outbox rows, in order.
    pub fn outbox_head(&self, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        let _ = limit;
        todo!()
    }
    /// Delete delivered rows and move rejected rows to dead letters, in one transaction.
    pub fn complete(&mut self, delivered: &[i64], rejected: &[(i64, String)]) -> Result<(), StoreError> {
        let _ = (delivered, rejected);
        todo!()
    }
    /// Record a gap; with `stop`, fetching stays stopped until `resume_fetching`.
    pub fn record_gap(&mut self, gap: &Gap, stop: bool) -> Result<(), StoreError> {
        let _ = (gap, stop);
        todo!()
    }
    /// Clear the stopped flag.
    pub fn resume_fetching(&mut self) -> Result<(), StoreError> {
        todo!()
    }
    /// Everything `status` shows.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        todo!()
    }
    /// Dead letters, oldest first.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let _ = limit;
        todo!()
    }
    /// Move dead letters back into the outbox (all when `ids` is empty); returns how many moved.
    pub fn retry_dead_letters(&mut self, ids: &[i64]) -> Result<u64, StoreError> {
        let _ = ids;
        todo!()
    }
}
