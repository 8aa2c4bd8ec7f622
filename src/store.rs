//! The SQLite state: for every tenant its checkpoint (cursor), the outbox of fetched entries waiting for
//! delivery, its dead letters and gaps, its cached access token, its import progress, and the counters that
//! `status` and the metrics show. One file holds every tenant; each row is keyed by the tenant's domain.
//!
//! The delivery promise rests on this module: the cursor moves only in the same transaction that appends the
//! page to the outbox, and an outbox row disappears only in the transaction that records its delivery or moves
//! it to `dead_letter`. Counters are kept on the tenant row inside those same transactions, so reading the
//! outbox depth is O(1).
//!
//! Durability is `synchronous = NORMAL` in WAL mode unless `state.synchronous = "full"`. A commit that returned
//! survives the process being killed at any moment either way (it is in the WAL, in the OS's hands). What NORMAL
//! gives up is the last few commits on a power loss or kernel crash, and that loses nothing here: the database
//! rolls back to an earlier consistent state in which cursor and outbox still agree, so the entries after
//! the older cursor are read from Auth0 again (which retains them for days) and rows whose delete rolled back
//! are sent again with the same ids.
//!
//! The file holds raw log entries (IP addresses, e-mail addresses) and an encrypted token, so it is created
//! 0600 whatever the umask (SQLite gives its `-wal` and `-shm` the database file's mode), and a directory the
//! daemon creates for it is 0700.
//!
//! The file may be something the operator pointed us at by mistake. Before anything is opened read-write, the
//! file's header, schema version, application id and integrity are checked through a read-only connection; a
//! file that is not ours, is corrupt, or was written by a newer version is refused and left byte-for-byte
//! untouched. So is anything at the path that is not a regular file (a FIFO or a device, which SQLite would
//! take for an empty database; a symlink to a regular file is fine), and a `-wal` or `-shm` that is not one (a
//! symlink there included): refused before anything is opened or chmodded.
//!
//! The daemon's tasks reach the file through [`Handle`]s: each handle is one connection owned by one thread,
//! which runs the closures sent to it in order. Two handles (fetching and sending) let one task read while the
//! other writes, and a hundred tenants cost no more connections than one.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};
use rusqlite_migration::{M, Migrations};
use sha2::{Digest, Sha256};

use crate::entry::{LogId, format_date, parse_date};
use crate::logging::clip;

/// The schema, one plain SQL file per version, embedded at compile time; the version lives in `user_version`.
fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("../migrations/0001_init.sql")),
        M::up(include_str!("../migrations/0002_tenants_tokens_imports.sql")),
        M::up(include_str!("../migrations/0003_withheld_dead_letters.sql")),
        M::up(include_str!("../migrations/0004_poll_pressure.sql")),
    ])
}

/// The newest schema version this build knows (the number of migrations).
pub const SCHEMA_VERSION: i64 = 4;

/// `PRAGMA application_id` of our files ("A0RS"), set by the first migration, so a foreign SQLite database
/// that happens to have a `user_version` is still recognised as not ours.
pub const APPLICATION_ID: i64 = 0x4130_5253;

/// The first 16 bytes of every SQLite 3 database.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// How long a writer waits for another connection's transaction before giving up with a transient error.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `Store::open` waits before trying again when SQLite refused to wait (see there).
const BUSY_RETRY: Duration = Duration::from_millis(10);

/// Stored when a caller supplies an empty reason: a dead letter must always say something.
const NO_REASON: &str = "(no reason given)";

/// The longest text kept in `stall` and `last_error`.
const MAX_NOTE: usize = 2000;

/// How hard a commit waits for the disk (`state.synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// Safe against process crashes; a power loss may roll back the last commits, which are then re-read.
    #[default]
    Normal,
    /// An fsync per commit.
    Full,
}

/// A state database that cannot be used, or an operation on it that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file exists but is not an SQLite database, is corrupt, or belongs to another application.
    /// It was not modified.
    #[error("state database {} is not a usable SQLite database ({detail}); it was left untouched", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        detail: String,
    },
    /// Something other than a regular file where the state file or its `-wal` or `-shm` must be: a FIFO or a
    /// device, which SQLite would take for an empty database it then cannot write, or a symbolic link at the
    /// `-wal` or `-shm`, whose target is not ours to change. It was not modified.
    #[error("state file {} is {kind}, not a regular file; it was left untouched", path.display())]
    NotAFile {
        /// The file.
        path: PathBuf,
        /// What it is, in words ("a FIFO").
        kind: &'static str,
    },
    /// The file was written by a newer version of this program. It was not modified.
    #[error(
        "state database {} has schema version {found}, newer than this program's {supported}; it was left untouched",
        path.display()
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// `status` or `dead-letter` found a database written by an older version, which only `sync` or `run`
    /// upgrade. It was not modified.
    #[error(
        "state database {} has schema version {found}, older than this program's {supported}; run `sync` or `run` once to upgrade it",
        path.display()
    )]
    OlderSchema {
        /// The file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// A read-only command was asked about a database that does not exist.
    #[error("state database {} does not exist yet (run `sync` or `run` first)", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The file or its directory cannot be created, opened, or given private permissions.
    #[error("cannot {what} {}", path.display())]
    Unusable {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Upgrading the schema failed.
    #[error("state database {}: schema migration failed: {detail}", path.display())]
    Migration {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The stored cursor is not a valid `log_id` (written by an older version that trusted Auth0's ids).
    #[error("state database {}: the stored cursor of {tenant} is not a valid log_id", path.display())]
    BadCursor {
        /// The file.
        path: PathBuf,
        /// The tenant.
        tenant: String,
    },
    /// `resume` on a tenant whose fetching is not stopped.
    #[error(
        "fetching of {tenant} is not stopped; `resume` only continues after an expired checkpoint with on_expired_checkpoint = \"stop\""
    )]
    NotStopped {
        /// The tenant.
        tenant: String,
    },
    /// Dead letter ids that do not exist (for this tenant).
    #[error("no dead letter with id {}", ids.iter().map(i64::to_string).collect::<Vec<_>>().join(", "))]
    UnknownDeadLetters {
        /// The ids.
        ids: Vec<i64>,
    },
    /// SQLite could not write, and the file system holding the database has (next to) no space left. SQLite
    /// reports some of these as a bare "disk I/O error" (growing its shared-memory file on a full tmpfs, for
    /// one), which would send an operator looking for a failing disk.
    #[error("state database {}: its file system is full ({available} bytes free)", path.display())]
    NoSpace {
        /// The file.
        path: PathBuf,
        /// Bytes free for an unprivileged writer when the error was seen.
        available: u64,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// Any other SQLite error (disk full, locked past the busy timeout, ...).
    #[error("state database {}", path.display())]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// The error.
        source: rusqlite::Error,
    },
}

/// Below this many free bytes, an I/O error SQLite reports on the state is taken for a full file system.
const NEARLY_FULL: u64 = 1 << 20;

/// Bytes free for an unprivileged writer on the file system holding `path` (its directory, which exists even
/// when the file does not yet), or `None` when that cannot be asked.
// `fsblkcnt_t` and `c_ulong` are 32 bits wide on some targets, hence the conversions.
#[allow(clippy::useless_conversion)]
fn space_left(path: &Path) -> Option<u64> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let fs = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(u64::from(fs.blocks_available()).saturating_mul(u64::from(fs.fragment_size())))
}

impl StoreError {
    /// Whether waiting can help: another process holds the database, or the disk is full or failing. A full
    /// disk is an outage, not a verdict: once there is space again the same write succeeds.
    pub fn is_transient(&self) -> bool {
        if self.is_busy() {
            return true;
        }
        match self {
            StoreError::NoSpace { .. } => true,
            StoreError::Sqlite { source, .. } => {
                matches!(source.sqlite_error_code(), Some(ErrorCode::DiskFull | ErrorCode::SystemIoFailure))
            }
            StoreError::Unusable { source, .. } => {
                source.raw_os_error() == Some(28) || source.kind() == std::io::ErrorKind::StorageFull
            }
            _ => false,
        }
    }

    /// Whether another connection holds the database (SQLITE_BUSY or SQLITE_LOCKED).
    fn is_busy(&self) -> bool {
        match self {
            StoreError::Sqlite { source, .. } => {
                matches!(
                    source.sqlite_error_code(),
                    Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                )
            }
            _ => false,
        }
    }

    /// Whether the error is about what was asked (an id, a stopped flag) rather than the file itself.
    pub fn is_request(&self) -> bool {
        matches!(self, StoreError::NotStopped { .. } | StoreError::UnknownDeadLetters { .. })
    }

    fn sqlite(path: &Path, source: rusqlite::Error) -> StoreError {
        if source.sqlite_error_code() == Some(ErrorCode::SystemIoFailure)
            && let Some(available) = space_left(path).filter(|&a| a < NEARLY_FULL)
        {
            return StoreError::NoSpace { path: path.to_path_buf(), available, source };
        }
        StoreError::Sqlite { path: path.to_path_buf(), source }
    }

    /// While probing a file we do not yet trust, "not a database" and "corrupt" mean "not ours".
    fn probing(path: &Path, source: rusqlite::Error) -> StoreError {
        match source.sqlite_error_code() {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
                StoreError::Corrupt { path: path.to_path_buf(), detail: source.to_string() }
            }
            _ => StoreError::sqlite(path, source),
        }
    }
}

/// The cursor: the greatest `log_id` whose page is in the outbox (or delivered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The `log_id` to pass as `from`.
    pub log_id: LogId,
    /// The `date` of that entry, when it had one (for checkpoint age).
    pub date: Option<DateTime<Utc>>,
}

/// An entry bound for the outbox.
#[derive(Debug, Clone)]
pub struct NewEntry {
    /// Its `log_id`.
    pub log_id: LogId,
    /// The raw entry as it will be forwarded (after the privacy rules).
    pub raw: String,
}

/// An entry or event set aside for an operator.
#[derive(Debug, Clone)]
pub struct NewDeadLetter {
    /// Its `log_id`, when it had a valid one.
    pub log_id: Option<LogId>,
    /// What is kept of the entry.
    pub kept: Kept,
    /// Why it was set aside.
    pub reason: String,
}

/// What a dead letter keeps of its entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// The whole text, as it would have been forwarded.
    Whole(String),
    /// Not the text: an entry whose clear values must not be stored (the privacy rules could not read it) or
    /// that is too large to hold. Only its size, its SHA-256 and an excerpt that holds no clear value.
    Withheld {
        /// Bytes of the original text.
        size: u64,
        /// SHA-256 of the original text: the letter is set aside once however often the entry comes.
        sha256: [u8; 32],
        /// What may be shown of it (the privacy rules applied to its beginning), often empty.
        excerpt: String,
    },
}

impl Kept {
    /// Keep `original` only by its size and hash, with `excerpt` (which must hold no clear value).
    pub fn withheld(original: &[u8], excerpt: String) -> Kept {
        Kept::Withheld { size: original.len() as u64, sha256: Sha256::digest(original).into(), excerpt }
    }

    /// The text stored in the letter's `raw` column.
    fn text(&self) -> &str {
        match self {
            Kept::Whole(raw) => raw,
            Kept::Withheld { excerpt, .. } => excerpt,
        }
    }

    fn size(&self) -> u64 {
        match self {
            Kept::Whole(raw) => raw.len() as u64,
            Kept::Withheld { size, .. } => *size,
        }
    }

    fn sha256(&self) -> [u8; 32] {
        match self {
            Kept::Whole(raw) => Sha256::digest(raw.as_bytes()).into(),
            Kept::Withheld { sha256, .. } => *sha256,
        }
    }
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
    /// How many entries the filters kept back.
    pub filtered: u64,
    /// How many entries were served again (equal to the cursor, or twice in the page) and skipped.
    pub repeated: u64,
}

/// What a page commit stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// Rows appended to the outbox.
    pub entries: u64,
    /// The dead letters added: their id, as `dead-letter list` shows it, and their index in the list given
    /// (a raw entry already set aside is not added again).
    pub dead_letters: Vec<(i64, usize)>,
}

/// One outbox row.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Its position; rows are delivered in this order.
    pub seq: i64,
    /// Its `log_id` (empty for a re-queued dead letter that had none).
    pub log_id: String,
    /// The raw entry.
    pub raw: String,
}

/// A detected gap in the log (expired checkpoint).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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
    /// The tenant.
    pub tenant: String,
    /// The entry's `log_id`, when it had one.
    pub log_id: Option<String>,
    /// Why it was set aside.
    pub reason: String,
    /// When (RFC 3339).
    pub created_at: String,
    /// The raw entry; for a withheld letter, only its excerpt (often empty).
    pub raw: String,
    /// Whether the entry's text was withheld (see [`Kept::Withheld`]).
    pub withheld: bool,
    /// Bytes of the original entry.
    pub size: u64,
    /// SHA-256 of the original entry, in hex.
    pub sha256: String,
}

/// Everything `status` and the metrics report from the database about one tenant.
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
    /// Events delivered, all time.
    pub delivered_total: u64,
    /// Entries fetched into the outbox, all time.
    pub fetched_total: u64,
    /// Entries filtered out, all time.
    pub filtered_total: u64,
    /// Entries Auth0 served again and that were skipped, all time.
    pub repeated_total: u64,
    /// The most recent gap, if any.
    pub last_gap: Option<Gap>,
    /// How many gaps were detected, all time.
    pub gaps: u64,
    /// True while fetching is stopped because of an expired checkpoint (`on_expired_checkpoint = "stop"`).
    pub stopped: bool,
    /// Why fetching cannot advance, while it cannot.
    pub stall: Option<String>,
    /// The tenant's last error, until the next success.
    pub last_error: Option<String>,
    /// When that error happened.
    pub last_error_at: Option<String>,
    /// Until when idle polling is slowed because Auth0 signalled pressure (RFC 3339), as last recorded.
    pub pressure_until: Option<String>,
    /// Why.
    pub pressure_reason: Option<String>,
}

/// A tenant the file knows, with what it still holds.
#[derive(Debug, Clone)]
pub struct KnownTenant {
    /// The domain.
    pub domain: String,
    /// Rows waiting for delivery.
    pub outbox: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Whether it has a cursor (it was fetched from).
    pub has_cursor: bool,
}

/// A cached access token as stored: sealed, with its refresh time and what it was minted for.
#[derive(Debug, Clone)]
pub struct StoredToken {
    /// Nonce and ciphertext.
    pub sealed: Vec<u8>,
    /// When it must be replaced (Unix seconds).
    pub refresh_at: i64,
    /// Which client and audience it belongs to.
    pub minted_for: String,
}

/// What `retry_dead_letters` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retried {
    /// Letters moved back into the outbox.
    pub moved: u64,
    /// Letters whose text was withheld, left in place: their entries must be fetched again.
    pub withheld: Vec<WithheldLetter>,
}

/// A withheld dead letter that a retry cannot queue by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithheldLetter {
    /// Its id.
    pub id: i64,
    /// Its tenant.
    pub tenant: String,
    /// The entry's `log_id`, when one was found (without it, the entry cannot be fetched again).
    pub log_id: Option<String>,
}

/// How far an import of one file got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportProgress {
    /// Entries read and settled.
    pub entries: u64,
    /// Of those, enqueued.
    pub enqueued: u64,
    /// Whether the whole file was read.
    pub complete: bool,
}

/// One connection to the state file. Methods name the tenant they are about.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    // Declared after `conn`, so that it is dropped after the connection has closed.
    _live: Live,
}

/// The state files this process holds SQLite connections to, by device and inode, with how many.
///
/// SQLite's locks on the database file are POSIX record locks, and POSIX drops every lock a process holds on
/// a file when the process closes *any* descriptor of that file. A process that reads the header of a file it
/// already has connections to, through a descriptor of its own, silently loses the locks those connections rely
/// on; the next outside reader (`sqlite3 state.db`) that closes then believes it is the last connection,
/// checkpoints the write-ahead log and deletes it, while the daemon goes on writing into the deleted file.
/// SQLite itself never does this (it keeps such descriptors open until its last lock is released), so the rule
/// is ours to keep: a file is probed through a plain descriptor only while this process holds no connection to
/// it, and every open goes through this registry, under its lock, so that no other thread opens a connection
/// in between. A further connection to a file already open is a plain SQLite open: it was probed and migrated
/// by the first.
static LIVE: std::sync::Mutex<Vec<((u64, u64), usize)>> = std::sync::Mutex::new(Vec::new());

/// A connection's entry in [`LIVE`], removed when the connection has closed.
struct Live(Option<(u64, u64)>);

/// The device and inode of the file at `path`, found without opening it.
fn file_key(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn live_list() -> std::sync::MutexGuard<'static, Vec<((u64, u64), usize)>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

impl Live {
    /// Whether this process holds a connection to the file at `path` (the caller holds the list's lock).
    fn held(list: &[((u64, u64), usize)], path: &Path) -> bool {
        file_key(path).is_some_and(|key| list.iter().any(|(k, n)| *k == key && *n > 0))
    }

    /// Count one more connection to the file at `path` (the caller holds the list's lock).
    fn register(list: &mut Vec<((u64, u64), usize)>, path: &Path) -> Live {
        let Some(key) = file_key(path) else { return Live(None) };
        match list.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => list.push((key, 1)),
        }
        Live(Some(key))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(key) = self.0 {
            let mut list = live_list();
            if let Some(i) = list.iter().position(|(k, _)| *k == key) {
                list[i].1 -= 1;
                if list[i].1 == 0 {
                    list.swap_remove(i);
                }
            }
        }
    }
}

/// What the read-only look at an existing file found.
struct Probe {
    user_version: i64,
}

impl Store {
    /// Open the database, creating it (and its directory) with private permissions, and migrating it.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        // SQLite's busy handler (`BUSY_TIMEOUT`) waits for other connections, except where waiting could
        // deadlock: two connections that both read a new, empty file and both want to write its first page
        // (switching it to WAL, or migrating it). SQLite then fails one of them at once with SQLITE_BUSY, and
        // its remedy is to try again once the other has finished, which takes milliseconds. This happens
        // when two processes (a first `run` and an `import`) or two stores of one process create the state
        // together. So the whole opening is tried again, with a fresh connection, for as long as the busy
        // handler would have waited.
        let deadline = Instant::now() + BUSY_TIMEOUT;
        loop {
            match Store::open_once(path) {
                Err(e) if e.is_busy() && Instant::now() < deadline => std::thread::sleep(BUSY_RETRY),
                result => return result,
            }
        }
    }

    /// One attempt of `open`.
    fn open_once(path: &Path) -> Result<Store, StoreError> {
        let mut list = live_list();
        if Live::held(&list, path) {
            return Store::connect(path, &mut list);
        }
        let found = probe(path)?;
        if found.is_none() {
            create_private(path)?;
        } else {
            make_private(path)?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| StoreError::sqlite(path, e))?;
        let mut store = Store { conn, path: path.to_path_buf(), _live: Live(None) };
        store.configure()?;
        store.migrate(found.map_or(0, |p| p.user_version))?;
        store._live = Live::register(&mut list, path);
        Ok(store)
    }

    /// Another connection to the file this store works on, for another thread: no probe, no migration, and
    /// never a descriptor of its own on the file (see [`LIVE`]).
    pub fn connection(&self) -> Result<Store, StoreError> {
        Store::connect(&self.path, &mut live_list())
    }

    /// A plain connection to a file this process already has open (the caller holds the list's lock).
    fn connect(path: &Path, list: &mut Vec<((u64, u64), usize)>) -> Result<Store, StoreError> {
        // No CREATE flag: if the file vanished meanwhile, this fails instead of making a new one.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| StoreError::sqlite(path, e))?;
        let mut store = Store { conn, path: path.to_path_buf(), _live: Live(None) };
        store.configure()?;
        store._live = Live::register(list, path);
        Ok(store)
    }

    /// Open an existing database without creating or migrating anything.
    pub fn open_existing(path: &Path) -> Result<Store, StoreError> {
        let mut list = live_list();
        if Live::held(&list, path) {
            return Store::connect(path, &mut list);
        }
        let missing = || StoreError::Missing { path: path.to_path_buf() };
        let found = probe(path)?.ok_or_else(missing)?;
        match found.user_version {
            // An empty file (or an SQLite file with nothing in it) was never initialised by us.
            0 => return Err(missing()),
            v if v < SCHEMA_VERSION => {
                return Err(StoreError::OlderSchema {
                    path: path.to_path_buf(),
                    found: v,
                    supported: SCHEMA_VERSION,
                });
            }
            _ => {}
        }
        // No CREATE flag: if the file vanished since the probe, this fails instead of making a new one.
        Store::connect(path, &mut list)
    }

    /// The file this store works on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cursor of a tenant, if any.
    pub fn cursor(&self, tenant: &str) -> Result<Option<Cursor>, StoreError> {
        let row = self.read(|conn| {
            conn.prepare_cached("SELECT cursor_log_id, cursor_date FROM tenant WHERE domain = ?1")?
                .query_row([tenant], |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, Option<String>>(1)?)))
                .optional()
        })?;
        let Some((Some(log_id), date)) = row else { return Ok(None) };
        let log_id = LogId::parse(&log_id)
            .map_err(|_| StoreError::BadCursor { path: self.path.clone(), tenant: tenant.to_string() })?;
        Ok(Some(Cursor { log_id, date: date.as_deref().and_then(parse_date) }))
    }

    /// Append a page to the outbox, set dead letters aside and move the cursor, in one transaction. Fetching
    /// advanced, so any stall note is cleared.
    pub fn commit_page(&mut self, tenant: &str, page: &PageCommit) -> Result<Committed, StoreError> {
        let now = now();
        self.write(tenant, |tx| insert_page(tx, tenant, page, &now, false))
    }

    /// Record that Auth0 answered (even with an empty page).
    pub fn touch_fetch(&mut self, tenant: &str) -> Result<(), StoreError> {
        let now = now();
        self.write(tenant, |tx| {
            tx.prepare_cached("UPDATE tenant SET last_fetch_at = ?2 WHERE domain = ?1")?
                .execute(params![tenant, now])?;
            Ok(())
        })
    }

    /// Rows waiting for delivery, of every tenant the state holds, in one pass over the tenant table (the
    /// watcher and the progress reporter ask for many tenants at once).
    pub fn outbox_depths(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT domain, outbox_count FROM tenant")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, to_u64(r.get(1)?))))?;
            rows.collect()
        })
    }

    /// Rows waiting for delivery.
    pub fn outbox_depth(&self, tenant: &str) -> Result<u64, StoreError> {
        self.read(|conn| {
            let n: Option<i64> = conn
                .prepare_cached("SELECT outbox_count FROM tenant WHERE domain = ?1")?
                .query_row([tenant], |r| r.get(0))
                .optional()?;
            Ok(to_u64(n.unwrap_or(0)))
        })
    }

    /// The first `limit` outbox rows of a tenant, in order.
    pub fn outbox_head(&self, tenant: &str, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, log_id, raw FROM outbox WHERE tenant = ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![tenant, to_i64(limit)], |r| {
                Ok(OutboxRow { seq: r.get(0)?, log_id: r.get(1)?, raw: r.get(2)? })
            })?;
            rows.collect()
        })
    }

    /// The first rows of a tenant's outbox, in order: at most `limit` rows, and no more once `max_bytes` of
    /// entries are read (but always one), so a window of huge entries cannot fill memory.
    pub fn outbox_window(
        &self,
        tenant: &str,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, log_id, raw FROM outbox WHERE tenant = ?1 ORDER BY seq LIMIT ?2",
            )?;
            let mut rows = stmt.query(params![tenant, to_i64(limit)])?;
            let mut out = Vec::new();
            let mut bytes = 0usize;
            while let Some(r) = rows.next()? {
                let row = OutboxRow { seq: r.get(0)?, log_id: r.get(1)?, raw: r.get(2)? };
                bytes += row.raw.len();
                out.push(row);
                if bytes >= max_bytes {
                    break;
                }
            }
            Ok(out)
        })
    }

    /// Delete delivered rows and move rejected rows to dead letters, in one transaction. Returns the dead letters
    /// added: id, `log_id`, reason.
    ///
    /// Seqs that are no longer in the outbox (a repeated completion) are ignored, and the counters move only by
    /// the rows actually deleted.
    pub fn complete(
        &mut self,
        tenant: &str,
        delivered: &[i64],
        rejected: &[(i64, String)],
    ) -> Result<Vec<(i64, String, String)>, StoreError> {
        let now = now();
        self.write(tenant, |tx| {
            let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1 AND tenant = ?2")?;
            let mut delivered_rows = 0usize;
            for seq in delivered {
                delivered_rows += delete.execute(params![seq, tenant])?;
            }
            let mut rejected_rows = 0usize;
            let mut letters = Vec::new();
            let mut read =
                tx.prepare_cached("SELECT log_id, raw FROM outbox WHERE seq = ?1 AND tenant = ?2")?;
            for (seq, why) in rejected {
                let row: Option<(String, String)> =
                    read.query_row(params![seq, tenant], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
                let Some((log_id, raw)) = row else { continue };
                let letter = NewDeadLetter {
                    log_id: LogId::parse(&log_id).ok(),
                    kept: Kept::Whole(raw),
                    reason: why.clone(),
                };
                for (id, _) in insert_dead_letters(tx, tenant, std::slice::from_ref(&letter), &now)? {
                    letters.push((id, log_id.clone(), reason(why)));
                }
                rejected_rows += delete.execute(params![seq, tenant])?;
            }
            tx.prepare_cached(
                "UPDATE tenant SET
                    outbox_count = outbox_count - ?2,
                    delivered_total = delivered_total + ?3,
                    last_delivery_at = CASE WHEN ?4 THEN ?5 ELSE last_delivery_at END
                 WHERE domain = ?1",
            )?
            .execute(params![
                tenant,
                to_i64(delivered_rows + rejected_rows),
                to_i64(delivered_rows),
                delivered_rows > 0,
                now
            ])?;
            Ok(letters)
        })
    }

    /// Record a gap; with `stop`, fetching stays stopped until [`Store::resume`].
    pub fn record_gap(&mut self, tenant: &str, gap: &Gap, stop: bool) -> Result<(), StoreError> {
        self.write(tenant, |tx| {
            tx.prepare_cached(
                "INSERT INTO gap (tenant, detected_at, from_log_id, from_date, to_log_id, to_date, detail, stopped)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                tenant,
                gap.detected_at,
                gap.from_log_id,
                gap.from_date,
                gap.to_log_id,
                gap.to_date,
                gap.detail,
                stop
            ])?;
            if stop {
                tx.prepare_cached("UPDATE tenant SET stopped = 1 WHERE domain = ?1")?.execute([tenant])?;
            }
            Ok(())
        })
    }

    /// After an expired checkpoint with `on_expired_checkpoint = "stop"`: commit the page that restarts
    /// fetching (the oldest retained entry) and clear the stopped flag, in one transaction. Refuses, changing
    /// nothing, when fetching is not stopped.
    pub fn resume(&mut self, tenant: &str, page: &PageCommit) -> Result<Committed, StoreError> {
        if !self.fetching_stopped(tenant)? {
            return Err(StoreError::NotStopped { tenant: tenant.to_string() });
        }
        let now = now();
        self.write(tenant, |tx| {
            let stopped: bool = tx
                .prepare_cached("SELECT stopped FROM tenant WHERE domain = ?1")?
                .query_row([tenant], |r| r.get(0))?;
            if !stopped {
                return Ok(None);
            }
            insert_page(tx, tenant, page, &now, true).map(Some)
        })?
        .ok_or_else(|| StoreError::NotStopped { tenant: tenant.to_string() })
    }

    /// True while fetching is stopped by an expired checkpoint (the O(1) part of `snapshot`).
    pub fn fetching_stopped(&self, tenant: &str) -> Result<bool, StoreError> {
        self.read(|conn| {
            let stopped: Option<bool> = conn
                .prepare_cached("SELECT stopped FROM tenant WHERE domain = ?1")?
                .query_row([tenant], |r| r.get(0))
                .optional()?;
            Ok(stopped.unwrap_or(false))
        })
    }

    /// Note why fetching cannot advance (`None` once it can).
    pub fn set_stall(&mut self, tenant: &str, why: Option<&str>) -> Result<(), StoreError> {
        let why = why.map(|w| clip(w, MAX_NOTE));
        self.write(tenant, |tx| {
            tx.prepare_cached("UPDATE tenant SET stall = ?2 WHERE domain = ?1")?
                .execute(params![tenant, why])?;
            Ok(())
        })
    }

    /// Record the tenant's last error (`None` clears it after a success).
    pub fn set_error(&mut self, tenant: &str, error: Option<&str>) -> Result<(), StoreError> {
        let error = error.map(|w| clip(w, MAX_NOTE));
        let now = now();
        self.write(tenant, |tx| {
            tx.prepare_cached(
                "UPDATE tenant SET last_error = ?2, last_error_at = CASE WHEN ?2 IS NULL THEN NULL ELSE ?3 END
                 WHERE domain = ?1",
            )?
            .execute(params![tenant, error, now])?;
            Ok(())
        })
    }

    /// Record until when idle polling is slowed for Auth0's pressure, and why (`None` once it is over).
    pub fn set_pressure(
        &mut self,
        tenant: &str,
        until: Option<(&DateTime<Utc>, &str)>,
    ) -> Result<(), StoreError> {
        let (until, why) = match until {
            Some((at, why)) => (Some(format_date(at)), Some(clip(why, MAX_NOTE))),
            None => (None, None),
        };
        self.write(tenant, |tx| {
            tx.prepare_cached(
                "UPDATE tenant SET pressure_until = ?2, pressure_reason = ?3 WHERE domain = ?1",
            )?
            .execute(params![tenant, until, why])?;
            Ok(())
        })
    }

    /// Everything `status` shows about a tenant.
    pub fn snapshot(&self, tenant: &str) -> Result<Snapshot, StoreError> {
        self.read(|conn| {
            // One read transaction, so the figures agree with each other while another connection writes.
            let tx = conn.unchecked_transaction()?;
            let mut snap = tx
                .prepare_cached(
                    "SELECT cursor_log_id, cursor_date, outbox_count, last_fetch_at, last_delivery_at,
                            delivered_total, filtered_total, stopped, fetched_total, repeated_total, stall,
                            last_error, last_error_at, pressure_until, pressure_reason
                     FROM tenant WHERE domain = ?1",
                )?
                .query_row([tenant], |r| {
                    Ok(Snapshot {
                        tenant: tenant.to_owned(),
                        cursor: r.get(0)?,
                        cursor_date: r.get(1)?,
                        outbox_depth: to_u64(r.get(2)?),
                        dead_letters: 0,
                        last_fetch_at: r.get(3)?,
                        last_delivery_at: r.get(4)?,
                        delivered_total: to_u64(r.get(5)?),
                        filtered_total: to_u64(r.get(6)?),
                        last_gap: None,
                        gaps: 0,
                        stopped: r.get(7)?,
                        fetched_total: to_u64(r.get(8)?),
                        repeated_total: to_u64(r.get(9)?),
                        stall: r.get(10)?,
                        last_error: r.get(11)?,
                        last_error_at: r.get(12)?,
                        pressure_until: r.get(13)?,
                        pressure_reason: r.get(14)?,
                    })
                })
                .optional()?
                .unwrap_or_else(|| empty_snapshot(tenant));
            snap.dead_letters = to_u64(
                tx.prepare_cached("SELECT count(*) FROM dead_letter WHERE tenant = ?1")?
                    .query_row([tenant], |r| r.get(0))?,
            );
            snap.gaps = to_u64(
                tx.prepare_cached("SELECT count(*) FROM gap WHERE tenant = ?1")?
                    .query_row([tenant], |r| r.get(0))?,
            );
            snap.last_gap = tx
                .prepare_cached(
                    "SELECT detected_at, from_log_id, from_date, to_log_id, to_date, detail
                     FROM gap WHERE tenant = ?1 ORDER BY id DESC LIMIT 1",
                )?
                .query_row([tenant], |r| {
                    Ok(Gap {
                        detected_at: r.get(0)?,
                        from_log_id: r.get(1)?,
                        from_date: r.get(2)?,
                        to_log_id: r.get(3)?,
                        to_date: r.get(4)?,
                        detail: r.get(5)?,
                    })
                })
                .optional()?;
            tx.finish()?;
            Ok(snap)
        })
    }

    /// Every tenant the file knows, with what it still holds.
    pub fn tenants(&self) -> Result<Vec<KnownTenant>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT domain, outbox_count, (SELECT count(*) FROM dead_letter d WHERE d.tenant = t.domain),
                        cursor_log_id IS NOT NULL
                 FROM tenant t ORDER BY domain",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(KnownTenant {
                    domain: r.get(0)?,
                    outbox: to_u64(r.get(1)?),
                    dead_letters: to_u64(r.get(2)?),
                    has_cursor: r.get(3)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Drop everything the file holds about a tenant; returns what was dropped (outbox rows, dead letters).
    pub fn forget_tenant(&mut self, tenant: &str) -> Result<(u64, u64), StoreError> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| StoreError::sqlite(&path, e))?;
        let run = |tx: &Transaction<'_>| -> rusqlite::Result<(u64, u64)> {
            let outbox = tx.execute("DELETE FROM outbox WHERE tenant = ?1", [tenant])?;
            let dead = tx.execute("DELETE FROM dead_letter WHERE tenant = ?1", [tenant])?;
            tx.execute("DELETE FROM gap WHERE tenant = ?1", [tenant])?;
            tx.execute("DELETE FROM import_file WHERE tenant = ?1", [tenant])?;
            tx.execute("DELETE FROM tenant WHERE domain = ?1", [tenant])?;
            Ok((outbox as u64, dead as u64))
        };
        let out = run(&tx).map_err(|e| StoreError::sqlite(&path, e))?;
        tx.commit().map_err(|e| StoreError::sqlite(&path, e))?;
        Ok(out)
    }

    /// Dead letters, oldest first, of one tenant or of all.
    pub fn dead_letters(&self, tenant: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, tenant, log_id, reason, created_at, raw, withheld,
                        COALESCE(size, length(CAST(raw AS BLOB))), raw_sha256
                 FROM dead_letter WHERE ?1 IS NULL OR tenant = ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![tenant, to_i64(limit)], |r| {
                let raw: String = r.get(5)?;
                let sha256 = match r.get::<_, Option<Vec<u8>>>(8)? {
                    Some(hash) => hex(&hash),
                    None => hex(&Sha256::digest(raw.as_bytes())),
                };
                Ok(DeadLetter {
                    id: r.get(0)?,
                    tenant: r.get(1)?,
                    log_id: r.get(2)?,
                    reason: r.get(3)?,
                    created_at: r.get(4)?,
                    raw,
                    withheld: r.get(6)?,
                    size: to_u64(r.get(7)?),
                    sha256,
                })
            })?;
            rows.collect()
        })
    }

    /// Move dead letters back into their tenants' outboxes: the given ids, or all of `tenant`'s (all tenants'
    /// when `None`) when `ids` is empty. Ids that do not exist (for that tenant) are refused, and nothing
    /// moves.
    ///
    /// They go to the end of the outbox in dead-letter order. One without a `log_id` is queued with an empty
    /// one; if it still cannot be forwarded, the sender sets it aside again. A withheld letter has no text to
    /// queue: it stays where it is and is returned, for the caller to fetch its entry again by `log_id`.
    pub fn retry_dead_letters(&mut self, tenant: Option<&str>, ids: &[i64]) -> Result<Retried, StoreError> {
        let now = now();
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| StoreError::sqlite(&path, e))?;
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let run = |tx: &Transaction<'_>| -> rusqlite::Result<Result<Retried, Vec<i64>>> {
            let chosen: Vec<(i64, String)> = if ids.is_empty() {
                let mut stmt = tx.prepare_cached(
                    "SELECT id, tenant FROM dead_letter WHERE ?1 IS NULL OR tenant = ?1 ORDER BY id",
                )?;
                stmt.query_map(params![tenant], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?
            } else {
                let mut found = Vec::new();
                let mut missing = Vec::new();
                let mut stmt = tx.prepare_cached(
                    "SELECT tenant FROM dead_letter WHERE id = ?1 AND (?2 IS NULL OR tenant = ?2)",
                )?;
                for &id in &ids {
                    match stmt.query_row(params![id, tenant], |r| r.get::<_, String>(0)).optional()? {
                        Some(t) => found.push((id, t)),
                        None => missing.push(id),
                    }
                }
                if !missing.is_empty() {
                    return Ok(Err(missing));
                }
                found
            };
            let mut withheld_letter =
                tx.prepare_cached("SELECT log_id FROM dead_letter WHERE id = ?1 AND withheld = 1")?;
            let mut requeue = tx.prepare_cached(
                "INSERT INTO outbox (tenant, log_id, raw, fetched_at)
                 SELECT tenant, COALESCE(log_id, ''), raw, ?2 FROM dead_letter WHERE id = ?1",
            )?;
            let mut delete = tx.prepare_cached("DELETE FROM dead_letter WHERE id = ?1")?;
            let mut count =
                tx.prepare_cached("UPDATE tenant SET outbox_count = outbox_count + 1 WHERE domain = ?1")?;
            let mut retried = Retried::default();
            for (id, t) in &chosen {
                if let Some(log_id) =
                    withheld_letter.query_row([id], |r| r.get::<_, Option<String>>(0)).optional()?
                {
                    retried.withheld.push(WithheldLetter { id: *id, tenant: t.clone(), log_id });
                    continue;
                }
                if requeue.execute(params![id, now])? > 0 {
                    delete.execute([id])?;
                    count.execute([t])?;
                    retried.moved += 1;
                }
            }
            Ok(Ok(retried))
        };
        match run(&tx).map_err(|e| StoreError::sqlite(&path, e))? {
            Ok(retried) => {
                tx.commit().map_err(|e| StoreError::sqlite(&path, e))?;
                Ok(retried)
            }
            Err(missing) => Err(StoreError::UnknownDeadLetters { ids: missing }),
        }
    }

    /// Queue the entry of a withheld dead letter, fetched again and now readable (`raw`, with the privacy
    /// rules applied), and delete the letter, in one transaction. `false` (and nothing changed) when the
    /// letter is no longer there or no longer withheld (another retry took it meanwhile).
    pub fn requeue_withheld(&mut self, id: i64, log_id: &LogId, raw: &str) -> Result<bool, StoreError> {
        let now = now();
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| StoreError::sqlite(&path, e))?;
        let run = |tx: &Transaction<'_>| -> rusqlite::Result<bool> {
            let tenant: Option<String> = tx
                .query_row("SELECT tenant FROM dead_letter WHERE id = ?1 AND withheld = 1", [id], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(tenant) = tenant else { return Ok(false) };
            tx.execute(
                "INSERT INTO outbox (tenant, log_id, raw, fetched_at) VALUES (?1, ?2, ?3, ?4)",
                params![tenant, log_id.as_str(), raw, now],
            )?;
            tx.execute("DELETE FROM dead_letter WHERE id = ?1", [id])?;
            tx.execute("UPDATE tenant SET outbox_count = outbox_count + 1 WHERE domain = ?1", [&tenant])?;
            Ok(true)
        };
        let done = run(&tx).map_err(|e| StoreError::sqlite(&path, e))?;
        if done {
            tx.commit().map_err(|e| StoreError::sqlite(&path, e))?;
        }
        Ok(done)
    }

    /// The cached token of a tenant.
    pub fn load_token(&self, tenant: &str) -> Result<Option<StoredToken>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT token_sealed, token_refresh_at, token_for FROM tenant
                 WHERE domain = ?1 AND token_sealed IS NOT NULL",
            )?
            .query_row([tenant], |r| {
                Ok(StoredToken { sealed: r.get(0)?, refresh_at: r.get(1)?, minted_for: r.get(2)? })
            })
            .optional()
        })
    }

    /// Keep a tenant's token (sealed) for the next start; `None` forgets it.
    pub fn save_token(&mut self, tenant: &str, token: Option<&StoredToken>) -> Result<(), StoreError> {
        self.write(tenant, |tx| {
            tx.prepare_cached(
                "UPDATE tenant SET token_sealed = ?2, token_refresh_at = ?3, token_for = ?4 WHERE domain = ?1",
            )?
            .execute(params![
                tenant,
                token.map(|t| t.sealed.as_slice()),
                token.map(|t| t.refresh_at),
                token.map(|t| t.minted_for.as_str())
            ])?;
            Ok(())
        })
    }

    /// How far the import of a file (by content id) got.
    pub fn import_progress(&self, tenant: &str, file_id: &str) -> Result<Option<ImportProgress>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT entries, enqueued, complete FROM import_file WHERE tenant = ?1 AND file_id = ?2",
            )?
            .query_row([tenant, file_id], |r| {
                Ok(ImportProgress {
                    entries: to_u64(r.get(0)?),
                    enqueued: to_u64(r.get(1)?),
                    complete: r.get(2)?,
                })
            })
            .optional()
        })
    }

    /// Enqueue a batch of imported entries and record the file's progress, in one transaction. An entry whose
    /// `log_id` is already waiting in the outbox is not enqueued again. Returns what was stored.
    #[allow(clippy::too_many_arguments)]
    pub fn import_batch(
        &mut self,
        tenant: &str,
        file_id: &str,
        name: &str,
        entries: &[NewEntry],
        dead_letters: &[NewDeadLetter],
        filtered: u64,
        progress: &ImportProgress,
    ) -> Result<Committed, StoreError> {
        let now = now();
        self.write(tenant, |tx| {
            let mut insert = tx.prepare_cached(
                "INSERT INTO outbox (tenant, log_id, raw, fetched_at)
                 SELECT ?1, ?2, ?3, ?4 WHERE NOT EXISTS (SELECT 1 FROM outbox WHERE tenant = ?1 AND log_id = ?2)",
            )?;
            let mut stored = 0u64;
            for entry in entries {
                stored += insert.execute(params![tenant, entry.log_id.as_str(), entry.raw, now])? as u64;
            }
            let dead = insert_dead_letters(tx, tenant, dead_letters, &now)?;
            tx.prepare_cached(
                "UPDATE tenant SET outbox_count = outbox_count + ?2, filtered_total = filtered_total + ?3
                 WHERE domain = ?1",
            )?
            .execute(params![tenant, to_i64(stored), to_i64(filtered)])?;
            tx.prepare_cached(
                "INSERT INTO import_file (tenant, file_id, name, entries, enqueued, complete, started_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
                 ON CONFLICT (tenant, file_id) DO UPDATE SET
                    name = ?3, entries = ?4, enqueued = enqueued + ?8, complete = ?6, updated_at = ?7",
            )?
            .execute(params![
                tenant,
                file_id,
                name,
                to_i64(progress.entries),
                to_i64(stored),
                progress.complete,
                now,
                to_i64(stored)
            ])?;
            Ok(Committed { entries: stored, dead_letters: dead })
        })
    }

    /// Forget an import's progress (for `import --force`).
    pub fn reset_import(&mut self, tenant: &str, file_id: &str) -> Result<(), StoreError> {
        self.write(tenant, |tx| {
            tx.prepare_cached("DELETE FROM import_file WHERE tenant = ?1 AND file_id = ?2")?
                .execute([tenant, file_id])?;
            Ok(())
        })
    }

    /// Fold the WAL into the database file and empty it, so that the file alone holds every commit. Returns
    /// false when another connection's reader kept part of it from being folded.
    pub fn checkpoint(&self) -> Result<bool, StoreError> {
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .map_err(|e| StoreError::sqlite(&self.path, e))?;
        Ok(busy == 0)
    }

    /// SQLite's `data_version`: it changes whenever another connection (or process) commits.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        self.read(|conn| conn.prepare_cached("PRAGMA data_version")?.query_row([], |r| r.get(0)))
    }

    /// Write a consistent copy of the whole database to `dest` (which must not exist), mode 0600. Safe while
    /// `run` is using the file: it reads one snapshot.
    pub fn backup(&self, dest: &Path) -> Result<(), StoreError> {
        let unusable =
            |source| StoreError::Unusable { what: "write the backup to", path: dest.to_path_buf(), source };
        // SQLite reads the name it is given as a URI when it begins with `file:`, so `file:/dir/x.db` would be
        // written at /dir/x.db (through whatever is there) while the checks below looked at ./file:/dir/x.db.
        // An absolute path is only ever a path: the copy lands exactly where it was checked.
        let dest = std::path::absolute(dest).map_err(unusable)?;
        let target = dest.to_str().ok_or_else(|| {
            unusable(std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path is not UTF-8"))
        })?;
        if let Some(parent) = dest.parent().filter(|p| !p.exists()) {
            let mut builder = std::fs::DirBuilder::new();
            std::os::unix::fs::DirBuilderExt::mode(builder.recursive(true), 0o700);
            builder.create(parent).map_err(unusable)?;
        }
        // Created here, exclusively: `O_EXCL` refuses any existing name, a symlink planted there (even one
        // pointing nowhere) included, so the copy never lands where another process chose.
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(&dest).map_err(unusable)?;
        // VACUUM INTO wants a file that does not exist or is empty; the empty 0600 file keeps its mode.
        if let Err(e) = self.conn.execute("VACUUM INTO ?1", [target]) {
            let _ = std::fs::remove_file(&dest);
            return Err(StoreError::sqlite(&self.path, e));
        }
        Ok(())
    }

    /// Connection settings every `Store` needs, whatever opened it.
    fn configure(&self) -> Result<(), StoreError> {
        let err = |e| StoreError::sqlite(&self.path, e);
        // The busy timeout comes first: switching to WAL itself may have to wait for another connection.
        self.conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        let mode: String = self.conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %self.path.display(), journal_mode = %mode, "state database is not in WAL mode");
        }
        self.conn.pragma_update(None, "synchronous", "NORMAL").map_err(err)?;
        self.conn.pragma_update(None, "foreign_keys", true).map_err(err)?;
        self.conn.set_prepared_statement_cache_capacity(48);
        Ok(())
    }

    /// Choose how hard each commit waits for the disk (see the module documentation).
    pub fn set_synchronous(&self, level: Synchronous) -> Result<(), StoreError> {
        let value = match level {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        };
        self.conn.pragma_update(None, "synchronous", value).map_err(|e| StoreError::sqlite(&self.path, e))
    }

    /// The `synchronous` setting in effect (1 NORMAL, 2 FULL).
    pub fn synchronous(&self) -> Result<i64, StoreError> {
        self.read(|conn| conn.query_row("PRAGMA synchronous", [], |r| r.get(0)))
    }

    /// Bring the schema to `SCHEMA_VERSION`.
    fn migrate(&mut self, found: i64) -> Result<(), StoreError> {
        // IMMEDIATE, so a second `Store` opening a new file at the same moment waits for the first one's
        // migration instead of failing on a read-to-write upgrade.
        self.conn.set_transaction_behavior(TransactionBehavior::Immediate);
        if let Err(e) = migrations().to_latest(&mut self.conn) {
            // Another connection may have migrated the same file between our version read and our transaction;
            // then its tables are there and our attempt failed on them, which is fine.
            let now: i64 = self
                .conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .map_err(|e| StoreError::sqlite(&self.path, e))?;
            if now == SCHEMA_VERSION {
                return Ok(());
            }
            // A full disk or a busy file is an outage, not a broken file: keep the SQLite error so that it is
            // retried instead of stopping the service for good.
            if let rusqlite_migration::Error::RusqliteError { err, .. } = e {
                let error = StoreError::sqlite(&self.path, err);
                if error.is_transient() {
                    return Err(error);
                }
                let detail = crate::logging::Chain(&error).to_string();
                return Err(StoreError::Migration { path: self.path.clone(), detail });
            }
            return Err(StoreError::Migration { path: self.path.clone(), detail: e.to_string() });
        } else if found < SCHEMA_VERSION && found > 0 {
            tracing::info!(path = %self.path.display(), from = found, to = SCHEMA_VERSION, "state database schema migrated");
        }
        Ok(())
    }

    /// Run `f` in a `BEGIN IMMEDIATE` transaction, after making sure the tenant row exists.
    fn write<T>(
        &mut self,
        tenant: &str,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let path = &self.path;
        let err = |e| StoreError::sqlite(path, e);
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err)?;
        tx.prepare_cached("INSERT INTO tenant (domain) VALUES (?1) ON CONFLICT (domain) DO NOTHING")
            .and_then(|mut s| s.execute([tenant]))
            .map_err(err)?;
        let out = f(&tx).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(out)
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        f(&self.conn).map_err(|e| StoreError::sqlite(&self.path, e))
    }
}

/// Append a page's entries to the outbox, set its dead letters aside and move the cursor (a page committed
/// by the fetcher, or by `resume`, which also clears the stopped flag).
fn insert_page(
    tx: &Transaction<'_>,
    tenant: &str,
    page: &PageCommit,
    now: &str,
    resuming: bool,
) -> rusqlite::Result<Committed> {
    let mut insert =
        tx.prepare_cached("INSERT INTO outbox (tenant, log_id, raw, fetched_at) VALUES (?1, ?2, ?3, ?4)")?;
    for entry in &page.entries {
        insert.execute(params![tenant, entry.log_id.as_str(), entry.raw, now])?;
    }
    let dead_letters = insert_dead_letters(tx, tenant, &page.dead_letters, now)?;
    let (log_id, date) = match &page.cursor {
        Some(c) => (Some(c.log_id.as_str()), c.date.as_ref().map(format_date)),
        None => (None, None),
    };
    // Fetching advanced (or was resumed), so any stall note is cleared.
    tx.prepare_cached(
        "UPDATE tenant SET
            cursor_log_id = COALESCE(?2, cursor_log_id),
            cursor_date = CASE WHEN ?2 IS NULL THEN cursor_date ELSE ?3 END,
            filtered_total = filtered_total + ?4,
            outbox_count = outbox_count + ?5,
            fetched_total = fetched_total + ?5,
            repeated_total = repeated_total + ?6,
            last_fetch_at = ?7,
            stopped = CASE WHEN ?8 THEN 0 ELSE stopped END,
            stall = CASE WHEN ?2 IS NULL AND NOT ?8 THEN stall ELSE NULL END
         WHERE domain = ?1",
    )?
    .execute(params![
        tenant,
        log_id,
        date,
        to_i64(page.filtered),
        to_i64(page.entries.len()),
        to_i64(page.repeated),
        now,
        resuming
    ])?;
    Ok(Committed { entries: page.entries.len() as u64, dead_letters })
}

/// Insert dead letters, each raw entry at most once per tenant; returns the id and index of each new one.
fn insert_dead_letters(
    tx: &Transaction<'_>,
    tenant: &str,
    letters: &[NewDeadLetter],
    now: &str,
) -> rusqlite::Result<Vec<(i64, usize)>> {
    let mut dead = tx.prepare_cached(
        "INSERT INTO dead_letter (tenant, log_id, raw, reason, created_at, raw_sha256, withheld, size)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
    )?;
    let mut added = Vec::new();
    for (i, letter) in letters.iter().enumerate() {
        let n = dead.execute(params![
            tenant,
            letter.log_id.as_ref().map(LogId::as_str),
            letter.kept.text(),
            reason(&letter.reason),
            now,
            letter.kept.sha256().as_slice(),
            matches!(letter.kept, Kept::Withheld { .. }),
            to_i64(letter.kept.size())
        ])?;
        if n > 0 {
            added.push((tx.last_insert_rowid(), i));
        }
    }
    Ok(added)
}

/// Check, without changing anything, that `run` could use the state at `path`: an existing file must be ours
/// and readable and writable, and its directory (or the nearest existing ancestor, which `run` would create
/// the rest under) must be writable for the `-wal`, `-shm` and lock files. Returns what was found.
pub fn check_usable(path: &Path) -> Result<String, StoreError> {
    let unusable = |what: &'static str, p: &Path, source: std::io::Error| StoreError::Unusable {
        what,
        path: p.to_path_buf(),
        source,
    };
    let found = match Store::open_existing(path) {
        Ok(_) => format!("{} (schema {SCHEMA_VERSION})", path.display()),
        Err(StoreError::Missing { .. }) => format!("{} will be created on first run", path.display()),
        Err(StoreError::OlderSchema { found, .. }) => {
            format!("{} (schema {found}, upgraded on the next run)", path.display())
        }
        Err(e) => return Err(e),
    };
    if path.exists() {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| unusable("open for writing", path, e))?;
    }
    let mut dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    while !dir.exists() {
        match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => dir = p.to_path_buf(),
            _ => {
                dir = PathBuf::from(".");
                break;
            }
        }
    }
    let probe_file = dir.join(format!(".auth0-rudderstack-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe_file)
        .map_err(|e| unusable("create files in the state directory", &dir, e))?;
    let _ = std::fs::remove_file(&probe_file);
    Ok(found)
}

/// Make sure the state file exists (created with private permissions, with its directory, when missing) and
/// return its canonical path, which is what the lock is taken on: two paths to one file get one lock.
pub fn prepare(path: &Path) -> Result<PathBuf, StoreError> {
    match std::fs::metadata(path) {
        // Refused here, before the lock file is made beside it, so that nothing is left behind.
        Ok(m) if !m.is_file() => return Err(not_a_file(path, m.file_type())),
        Ok(_) => check_companions(path)?,
        Err(_) => create_private(path)?,
    }
    std::fs::canonicalize(path).map_err(|source| StoreError::Unusable {
        what: "resolve the path of",
        path: path.to_path_buf(),
        source,
    })
}

/// Create the state file (and any missing directories) with private permissions, before SQLite opens it:
/// SQLite then gives the `-wal` and `-shm` files the same mode.
fn create_private(path: &Path) -> Result<(), StoreError> {
    // Before anything is created: a state that cannot be used is refused with nothing left behind.
    check_companions(path)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(parent).map_err(|source| StoreError::Unusable {
            what: "create the state directory",
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(|source| StoreError::Unusable {
        what: "create the state file",
        path: path.to_path_buf(),
        source,
    })?;
    make_private(path)
}

/// Give an existing state file (and its `-wal` and `-shm`) mode 0600 if others could read it.
///
/// Only regular files are changed, and never through a symbolic link at the `-wal` or `-shm`: whoever planted
/// one there chose its target, and a chmod would take that file from its owner's group. The state path itself
/// may be a symlink (the README allows it), so it is resolved first.
fn make_private(path: &Path) -> Result<(), StoreError> {
    let state = resolved(path);
    let [wal, shm] = companions(path);
    for p in [state, wal, shm] {
        make_file_private(&p)?;
    }
    Ok(())
}

/// Chmod the regular file at `path` to 0600 if others could read it, or refuse what is not a regular file.
/// The file is opened without following a symlink (and without waiting, should a FIFO be swapped in after the
/// look), checked again through the open descriptor, and changed through it: what is changed is what was
/// checked.
fn make_file_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let unusable =
        |source| StoreError::Unusable { what: "make private (chmod 600)", path: path.to_path_buf(), source };
    // A look first, so that a FIFO or a device is never opened at all.
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => return Err(not_a_file(path, m.file_type())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(unusable(source)),
    }
    let file =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(StoreError::NotAFile { path: path.to_path_buf(), kind: "a symbolic link" });
        }
        Err(source) => return Err(unusable(source)),
    };
    let meta = file.metadata().map_err(unusable)?;
    if !meta.file_type().is_file() {
        return Err(not_a_file(path, meta.file_type()));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o700)).map_err(unusable)?;
        tracing::warn!(path = %path.display(), mode = %format!("{mode:o}"), "the state file was readable by others; it is now 0600");
    }
    Ok(())
}

/// The state file itself: the file a symlink at `path` points to, if it is one (through a chain of them, as
/// SQLite follows it). Followed by hand, because `canonicalize` fails on a link to a file not yet created.
fn resolved(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    // Linux's own limit on symlinks in one lookup; a longer chain fails to open anyway.
    for _ in 0..40 {
        match std::fs::read_link(&p) {
            // A relative target is relative to the link's directory (`join` keeps an absolute one as it is).
            Ok(target) => p = p.parent().map_or_else(|| target.clone(), |dir| dir.join(&target)),
            Err(_) => break,
        }
    }
    p
}

/// The `-wal` and `-shm` of the state at `path`, where SQLite keeps them: beside the state file itself, which
/// for a state path that is a symlink is beside the file it points to.
fn companions(path: &Path) -> [PathBuf; 2] {
    let state = resolved(path);
    [sidecar(&state, "-wal"), sidecar(&state, "-shm")]
}

/// Refuse a `-wal` or `-shm` that is there but is not a regular file, before anything (a chmod, the probe's
/// read-only connection) goes near it. A symlink there points at a file someone else chose, and SQLite, which
/// opens these by name, fails on one (or on a FIFO) in ways that say nothing of the cause.
fn check_companions(path: &Path) -> Result<(), StoreError> {
    for p in companions(path) {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if !m.file_type().is_file() => return Err(not_a_file(&p, m.file_type())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::Unusable { what: "examine", path: p, source }),
        }
    }
    Ok(())
}

/// The refusal of something that is not a regular file, saying what it is.
fn not_a_file(path: &Path, kind: std::fs::FileType) -> StoreError {
    let kind = crate::files::kind(&kind).unwrap_or("a regular file that changed meanwhile");
    StoreError::NotAFile { path: path.to_path_buf(), kind }
}

/// Look at an existing file without changing it: `None` when there is nothing there yet.
///
/// Refuses what is not a regular file (at the state path, after following a symlink, or at its `-wal` or
/// `-shm`), a file without the SQLite header, one SQLite reports as corrupt or not a database, one that fails
/// `PRAGMA quick_check`, one from another application, and one with a newer schema.
fn probe(path: &Path) -> Result<Option<Probe>, StoreError> {
    check_companions(path)?;
    // Reading a WAL-mode file, even read-only, creates its `-wal` and `-shm` beside it. When we then refuse
    // the file, we take back exactly what we created, and only while the `-wal` is still empty (nobody wrote).
    let sidecars = companions(path);
    let existed = sidecars.clone().map(|p| p.exists());
    let found = probe_file(path);
    if found.is_err() && existed == [false, false] {
        let wal_empty = std::fs::metadata(&sidecars[0]).map(|m| m.len() == 0).unwrap_or(true);
        if wal_empty {
            for p in &sidecars {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    found
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn probe_file(path: &Path) -> Result<Option<Probe>, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt { path: path.to_path_buf(), detail };
    // Following a symlink (the state path may be one), and without opening anything: a FIFO would block the
    // read of its header, and it, a device and a socket all have length 0, which SQLite takes for an empty
    // database that it then cannot write.
    let len = match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => return Err(not_a_file(path, m.file_type())),
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Unusable {
                what: "read the state file",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if len == 0 {
        // SQLite itself treats an empty file as an empty database.
        return Ok(Some(Probe { user_version: 0 }));
    }
    let mut header = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .map_err(|e| corrupt(format!("cannot read its header: {e}")))?;
    if &header != SQLITE_HEADER {
        return Err(corrupt("it does not start with the SQLite header".to_owned()));
    }

    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| StoreError::probing(path, e))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| StoreError::sqlite(path, e))?;
    let (user_version, application_id, objects): (i64, i64, i64) = conn
        .query_row(
            "SELECT (SELECT user_version FROM pragma_user_version),
                    (SELECT application_id FROM pragma_application_id),
                    (SELECT count(*) FROM sqlite_schema)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(|e| StoreError::probing(path, e))?;
    let ours = application_id == APPLICATION_ID || (application_id == 0 && user_version == 0 && objects == 0);
    if !ours {
        return Err(corrupt(format!(
            "it belongs to another application (application_id {application_id}, user_version {user_version}, {objects} schema objects)"
        )));
    }
    if user_version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found: user_version,
            supported: SCHEMA_VERSION,
        });
    }
    let problems: Vec<String> = conn
        .prepare("PRAGMA quick_check(5)")
        .and_then(|mut s| s.query_map([], |r| r.get::<_, String>(0))?.collect())
        .map_err(|e| StoreError::probing(path, e))?;
    if problems != ["ok"] {
        return Err(corrupt(format!("quick_check: {}", problems.join("; "))));
    }
    Ok(Some(Probe { user_version }))
}

fn empty_snapshot(tenant: &str) -> Snapshot {
    Snapshot {
        tenant: tenant.to_owned(),
        cursor: None,
        cursor_date: None,
        outbox_depth: 0,
        dead_letters: 0,
        last_fetch_at: None,
        last_delivery_at: None,
        delivered_total: 0,
        fetched_total: 0,
        filtered_total: 0,
        repeated_total: 0,
        last_gap: None,
        gaps: 0,
        stopped: false,
        stall: None,
        last_error: None,
        last_error_at: None,
        pressure_until: None,
        pressure_reason: None,
    }
}

fn reason(why: &str) -> String {
    if why.trim().is_empty() { NO_REASON.to_string() } else { clip(why, MAX_NOTE) }
}

/// RFC 3339, UTC, milliseconds: the format every timestamp in the file uses, so they sort as text.
fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn to_i64<N: TryInto<i64>>(n: N) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// Lower-case hex, as the SHA-256 of a dead letter is shown.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// One connection owned by one thread, shared by the daemon's tasks: closures sent to it run in order, off
/// the async threads. Cheap to clone.
#[derive(Clone)]
pub struct Handle {
    jobs: std::sync::mpsc::Sender<Job>,
    path: PathBuf,
}

type Job = Box<dyn FnOnce(&mut Store) + Send>;

impl Handle {
    /// Move `store` onto its own thread.
    pub fn spawn(store: Store, name: &str) -> Result<Handle, StoreError> {
        let path = store.path.clone();
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let mut store = store;
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&mut store);
                }
            })
            .map_err(|source| StoreError::Unusable {
                what: "start a thread for",
                path: path.clone(),
                source,
            })?;
        Ok(Handle { jobs, path })
    }

    /// Run `f` on the store's thread and wait for its result. If the caller stops waiting, `f` still runs to
    /// completion, so a transaction is never cut in half.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |store| {
            let _ = tx.send(f(store));
        });
        let gone = || StoreError::Unusable {
            what: "reach the thread of",
            path: self.path.clone(),
            source: std::io::Error::other("the state database thread has stopped"),
        };
        self.jobs.send(job).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded migrations are valid SQL that applies cleanly to an empty database.
    #[test]
    fn the_migrations_are_valid() {
        migrations().validate().expect("migrations");
    }

    /// `SCHEMA_VERSION` is the number of migrations, so the newer-schema check compares the right thing.
    #[test]
    fn the_schema_version_matches_the_migrations() {
        let mut conn = Connection::open_in_memory().expect("memory db");
        migrations().to_latest(&mut conn).expect("migrate");
        let v: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).expect("user_version");
        let app: i64 = conn.pragma_query_value(None, "application_id", |r| r.get(0)).expect("application_id");
        assert_eq!((v, app), (SCHEMA_VERSION, APPLICATION_ID));
    }

    /// A `Store` can be moved onto its thread.
    #[test]
    fn a_store_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Store>();
    }

    /// Busy, locked, full and failing disks are worth retrying; a corrupt file is not.
    #[test]
    fn busy_locked_full_and_io_errors_are_transient() {
        let sqlite = |code| StoreError::Sqlite {
            path: PathBuf::from("x"),
            source: rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None),
        };
        assert!(sqlite(rusqlite::ffi::SQLITE_BUSY).is_transient());
        assert!(sqlite(rusqlite::ffi::SQLITE_LOCKED).is_transient());
        assert!(sqlite(rusqlite::ffi::SQLITE_FULL).is_transient());
        assert!(sqlite(rusqlite::ffi::SQLITE_IOERR).is_transient());
        assert!(!sqlite(rusqlite::ffi::SQLITE_CORRUPT).is_transient());
        assert!(!StoreError::Missing { path: PathBuf::from("x") }.is_transient());
        assert!(!StoreError::Corrupt { path: PathBuf::from("x"), detail: String::new() }.is_transient());
        let io = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR), None);
        assert!(StoreError::NoSpace { path: PathBuf::from("x"), available: 0, source: io }.is_transient());
    }

    /// An I/O error on a file system with room is left as SQLite said it; the free space is read from the
    /// file's directory, which exists before the file does.
    #[test]
    fn an_io_error_with_space_left_is_not_called_a_full_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-yet.db");
        let free = space_left(&path).expect("statvfs of a temporary directory");
        assert!(free > 0);
        let io = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR), None);
        let e = StoreError::sqlite(&path, io);
        if free >= NEARLY_FULL {
            assert!(matches!(e, StoreError::Sqlite { .. }), "{e:?}");
        } else {
            assert!(matches!(e, StoreError::NoSpace { available, .. } if available == free), "{e:?}");
        }
        assert!(e.is_transient());
    }

    /// Timestamps are RFC 3339 in UTC with milliseconds.
    #[test]
    fn timestamps_are_rfc3339_utc_with_millis() {
        let t = now();
        assert_eq!(t.len(), "2026-01-01T00:00:00.000Z".len(), "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[19] == b'.', "{t}");
    }
}
