//! The SQLite state: the checkpoint (cursor), the outbox of fetched entries waiting for delivery, the dead
//! letters, and the counters `status` shows, keyed by tenant domain so one file can hold several tenants.
//!
//! The delivery promise rests on this module: the cursor moves only in the same transaction that appends the
//! page to the outbox, and an outbox row disappears only in the transaction that records its delivery or moves
//! it to `dead_letter`. Counters are kept on the tenant row inside those same transactions so reading the outbox
//! depth is O(1).
//!
//! Durability is `synchronous = NORMAL` in WAL mode unless `state.synchronous = "full"`. A commit that returned
//! survives the process being killed at any moment either way (it is in the WAL, in the OS's hands). What NORMAL
//! gives up is the last few commits on a power loss or kernel crash, and that loses nothing here: the database
//! rolls back to an earlier consistent state in which cursor and outbox still agree, so the entries after
//! the older cursor are read from Auth0 again (which retains them for days) and rows whose delete rolled back
//! are sent again with the same ids. FULL adds an fsync to every page commit, which on slow disks caps the
//! catch-up rate well below Auth0's, for the benefit of fewer re-sends after a power cut.
//!
//! The fetcher and the sender each own a `Store` on the same file, from different threads: WAL lets one read
//! while the other writes, the busy timeout queues writers, and every write transaction starts with
//! `BEGIN IMMEDIATE` so two writers never deadlock upgrading a read lock.
//!
//! The file may be something the operator pointed us at by mistake. Before anything is opened read-write, the
//! file's header, schema version, application id and integrity are checked through a read-only connection; a
//! file that is not ours, is corrupt, or was written by a newer version is refused and left byte-for-byte
//! untouched.
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};
use rusqlite_migration::{M, Migrations};

/// The schema, one plain SQL file per version, embedded at compile time; the version lives in `user_version`.
fn migrations() -> Migrations<'static> {
    Migrations::new(vec![M::up(include_str!("../migrations/0001_init.sql"))])
}

/// The newest schema version this build knows (the number of migrations).
pub const SCHEMA_VERSION: i64 = 1;

/// `PRAGMA application_id` of our files ("A0RS"), set by the first migration, so a foreign SQLite database
/// that happens to have a `user_version` is still recognised as not ours.
pub const APPLICATION_ID: i64 = 0x4130_5253;

/// The first 16 bytes of every SQLite 3 database.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// How long a writer waits for the other task's transaction before giving up with a transient error.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Stored when a caller supplies an empty reason: a dead letter must always say something.
const NO_REASON: &str = "(no reason given)";

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

/// A state database that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file exists but is not an SQLite database, is corrupt, or belongs to another application.
    /// It was not modified.
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
    /// `status` or `dead-letter` found a database written by an older version, which only `sync` or `run`
    /// upgrade. It was not modified.
    #[error(
        "state database {path} has schema version {found}, older than this program's {supported}; run `sync` or `run` once to upgrade it"
    )]
    OlderSchema {
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
    /// Upgrading the schema failed.
    #[error("state database {path}: schema migration failed: {detail}")]
    Migration {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
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
        match self {
            StoreError::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
            ),
            _ => false,
        }
    }

    fn sqlite(path: &Path, source: rusqlite::Error) -> StoreError {
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
    /// How many gaps were detected, all time.
    pub gaps: u64,
    /// True while fetching is stopped because of an expired checkpoint (`on_expired_checkpoint = "stop"`).
    pub stopped: bool,
}

/// The state of one tenant in one SQLite file. Each task opens its own `Store`.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    tenant: String,
}

/// What the read-only look at an existing file found.
struct Probe {
    user_version: i64,
}

impl Store {
    /// Open (creating and migrating if needed) the database for `tenant`.
    pub fn open(path: &Path, tenant: &str) -> Result<Store, StoreError> {
        let found = probe(path)?;
        if found.is_none()
            && let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty() && !p.exists())
        {
            // A fresh install may point at a directory nobody created yet.
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Sqlite {
                path: path.to_path_buf(),
                source: rusqlite::Error::InvalidPath(
                    format!("cannot create {}: {e}", parent.display()).into(),
                ),
            })?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| StoreError::sqlite(path, e))?;
        let mut store = Store { conn, path: path.to_path_buf(), tenant: tenant.to_owned() };
        store.configure()?;
        store.migrate(found.map_or(0, |p| p.user_version))?;
        store.write(|_, _| Ok(()))?;
        Ok(store)
    }

    /// Open an existing database without creating or migrating anything.
    pub fn open_existing(path: &Path, tenant: &str) -> Result<Store, StoreError> {
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
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| StoreError::sqlite(path, e))?;
        let store = Store { conn, path: path.to_path_buf(), tenant: tenant.to_owned() };
        store.configure()?;
        Ok(store)
    }

    /// The file this store works on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tenant domain this store is keyed by.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The cursor, if any.
    pub fn cursor(&self) -> Result<Option<Cursor>, StoreError> {
        self.read(|conn, tenant| {
            let row = conn
                .prepare_cached("SELECT cursor_log_id, cursor_date FROM tenant WHERE domain = ?1")?
                .query_row([tenant], |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, Option<String>>(1)?)))
                .optional()?;
            Ok(row.and_then(|(log_id, date)| log_id.map(|log_id| Cursor { log_id, date })))
        })
    }

    /// Append a page to the outbox, set dead letters aside and move the cursor, in one transaction.
    pub fn commit_page(&mut self, page: &PageCommit) -> Result<(), StoreError> {
        let now = now();
        self.write(|tx, tenant| {
            let mut insert = tx.prepare_cached(
                "INSERT INTO outbox (tenant, log_id, raw, fetched_at) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for entry in &page.entries {
                insert.execute(params![tenant, entry.log_id, entry.raw, now])?;
            }
            let mut dead = tx.prepare_cached(
                "INSERT INTO dead_letter (tenant, log_id, raw, reason, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for letter in &page.dead_letters {
                dead.execute(params![tenant, letter.log_id, letter.raw, reason(&letter.reason), now])?;
            }
            let (log_id, date) = match &page.cursor {
                Some(c) => (Some(c.log_id.as_str()), c.date.as_deref()),
                None => (None, None),
            };
            tx.prepare_cached(
                "UPDATE tenant SET
                    cursor_log_id = COALESCE(?2, cursor_log_id),
                    cursor_date = CASE WHEN ?2 IS NULL THEN cursor_date ELSE ?3 END,
                    filtered_total = filtered_total + ?4,
                    outbox_count = outbox_count + ?5,
                    last_fetch_at = ?6
                 WHERE domain = ?1",
            )?
            .execute(params![tenant, log_id, date, to_i64(page.filtered), to_i64(page.entries.len()), now])?;
            Ok(())
        })
    }

    /// Record that Auth0 answered (even with an empty page).
    pub fn touch_fetch(&mut self) -> Result<(), StoreError> {
        let now = now();
        self.write(|tx, tenant| {
            tx.prepare_cached("UPDATE tenant SET last_fetch_at = ?2 WHERE domain = ?1")?
                .execute(params![tenant, now])?;
            Ok(())
        })
    }

    /// Rows waiting for delivery.
    pub fn outbox_depth(&self) -> Result<u64, StoreError> {
        self.read(|conn, tenant| {
            let n: Option<i64> = conn
                .prepare_cached("SELECT outbox_count FROM tenant WHERE domain = ?1")?
                .query_row([tenant], |r| r.get(0))
                .optional()?;
            Ok(to_u64(n.unwrap_or(0)))
        })
    }

    /// The first `limit` outbox rows, in order.
    pub fn outbox_head(&self, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        self.read(|conn, tenant| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, log_id, raw FROM outbox WHERE tenant = ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![tenant, to_i64(limit)], |r| {
                Ok(OutboxRow { seq: r.get(0)?, log_id: r.get(1)?, raw: r.get(2)? })
            })?;
            rows.collect()
        })
    }

    /// Delete delivered rows and move rejected rows to dead letters, in one transaction.
    ///
    /// Seqs that are no longer in the outbox (a repeated completion) are ignored, and the counters move only by
    /// the rows actually deleted.
    pub fn complete(&mut self, delivered: &[i64], rejected: &[(i64, String)]) -> Result<(), StoreError> {
        let now = now();
        self.write(|tx, tenant| {
            let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1 AND tenant = ?2")?;
            let mut delivered_rows = 0usize;
            for seq in delivered {
                delivered_rows += delete.execute(params![seq, tenant])?;
            }
            let mut set_aside = tx.prepare_cached(
                "INSERT INTO dead_letter (tenant, log_id, raw, reason, created_at)
                 SELECT tenant, NULLIF(log_id, ''), raw, ?3, ?4 FROM outbox WHERE seq = ?1 AND tenant = ?2",
            )?;
            let mut rejected_rows = 0usize;
            for (seq, why) in rejected {
                if set_aside.execute(params![seq, tenant, reason(why), now])? > 0 {
                    rejected_rows += delete.execute(params![seq, tenant])?;
                }
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
                !delivered.is_empty(),
                now
            ])?;
            Ok(())
        })
    }

    /// Record a gap; with `stop`, fetching stays stopped until `resume_fetching`.
    pub fn record_gap(&mut self, gap: &Gap, stop: bool) -> Result<(), StoreError> {
        self.write(|tx, tenant| {
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

    /// Clear the stopped flag.
    pub fn resume_fetching(&mut self) -> Result<(), StoreError> {
        self.write(|tx, tenant| {
            tx.prepare_cached("UPDATE tenant SET stopped = 0 WHERE domain = ?1")?.execute([tenant])?;
            Ok(())
        })
    }

    /// True while fetching is stopped by an expired checkpoint (the O(1) part of `snapshot`).
    pub fn fetching_stopped(&self) -> Result<bool, StoreError> {
        self.read(|conn, tenant| {
            let stopped: Option<bool> = conn
                .prepare_cached("SELECT stopped FROM tenant WHERE domain = ?1")?
                .query_row([tenant], |r| r.get(0))
                .optional()?;
            Ok(stopped.unwrap_or(false))
        })
    }

    /// Everything `status` shows.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.read(|conn, tenant| {
            // One read transaction, so the figures agree with each other while the other task writes.
            let tx = conn.unchecked_transaction()?;
            let mut snap = tx
                .prepare_cached(
                    "SELECT cursor_log_id, cursor_date, outbox_count, last_fetch_at, last_delivery_at,
                            delivered_total, filtered_total, stopped
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

    /// Dead letters, oldest first.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.read(|conn, tenant| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, log_id, reason, created_at, raw FROM dead_letter WHERE tenant = ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![tenant, to_i64(limit)], |r| {
                Ok(DeadLetter {
                    id: r.get(0)?,
                    log_id: r.get(1)?,
                    reason: r.get(2)?,
                    created_at: r.get(3)?,
                    raw: r.get(4)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Move dead letters back into the outbox (all when `ids` is empty); returns how many moved.
    ///
    /// They go to the end of the outbox in dead-letter order. One without a `log_id` is queued with an empty
    /// one; if it still cannot be forwarded, the sender sets it aside again.
    pub fn retry_dead_letters(&mut self, ids: &[i64]) -> Result<u64, StoreError> {
        let now = now();
        self.write(|tx, tenant| {
            let moved = if ids.is_empty() {
                let moved = tx
                    .prepare_cached(
                        "INSERT INTO outbox (tenant, log_id, raw, fetched_at)
                         SELECT tenant, COALESCE(log_id, ''), raw, ?2 FROM dead_letter WHERE tenant = ?1 ORDER BY id",
                    )?
                    .execute(params![tenant, now])?;
                tx.prepare_cached("DELETE FROM dead_letter WHERE tenant = ?1")?.execute([tenant])?;
                moved
            } else {
                let mut ids = ids.to_vec();
                ids.sort_unstable();
                ids.dedup();
                let mut requeue = tx.prepare_cached(
                    "INSERT INTO outbox (tenant, log_id, raw, fetched_at)
                     SELECT tenant, COALESCE(log_id, ''), raw, ?3 FROM dead_letter WHERE id = ?1 AND tenant = ?2",
                )?;
                let mut delete = tx.prepare_cached("DELETE FROM dead_letter WHERE id = ?1 AND tenant = ?2")?;
                let mut moved = 0;
                for id in ids {
                    if requeue.execute(params![id, tenant, now])? > 0 {
                        moved += delete.execute(params![id, tenant])?;
                    }
                }
                moved
            };
            tx.prepare_cached("UPDATE tenant SET outbox_count = outbox_count + ?2 WHERE domain = ?1")?
                .execute(params![tenant, to_i64(moved)])?;
            Ok(to_u64(to_i64(moved)))
        })
    }

    /// Connection settings every `Store` needs, whatever opened it.
    fn configure(&self) -> Result<(), StoreError> {
        let err = |e| StoreError::sqlite(&self.path, e);
        // The busy timeout comes first: switching to WAL itself may have to wait for the other task.
        self.conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        let mode: String = self.conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %self.path.display(), journal_mode = %mode, "state database is not in WAL mode");
        }
        self.conn.pragma_update(None, "synchronous", "NORMAL").map_err(err)?;
        self.conn.pragma_update(None, "foreign_keys", true).map_err(err)?;
        self.conn.set_prepared_statement_cache_capacity(32);
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

    /// Bring the schema to `SCHEMA_VERSION`.
    fn migrate(&mut self, found: i64) -> Result<(), StoreError> {
        // IMMEDIATE, so a second `Store` opening a new file at the same moment waits for the first one's
        // migration instead of failing on a read-to-write upgrade.
        self.conn.set_transaction_behavior(TransactionBehavior::Immediate);
        if let Err(e) = migrations().to_latest(&mut self.conn) {
            // The other task may have migrated the same file between our version read and our transaction;
            // then its tables are there and our attempt failed on them, which is fine.
            let now: i64 = self
                .conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .map_err(|e| StoreError::sqlite(&self.path, e))?;
            if now != SCHEMA_VERSION {
                return Err(StoreError::Migration { path: self.path.clone(), detail: e.to_string() });
            }
        } else if found < SCHEMA_VERSION {
            tracing::info!(path = %self.path.display(), from = found, to = SCHEMA_VERSION, "state database schema migrated");
        }
        Ok(())
    }

    /// Run `f` in a `BEGIN IMMEDIATE` transaction, after making sure the tenant row exists.
    fn write<T>(
        &mut self,
        f: impl FnOnce(&Transaction<'_>, &str) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let path = &self.path;
        let tenant = self.tenant.as_str();
        let err = |e| StoreError::sqlite(path, e);
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err)?;
        tx.prepare_cached("INSERT INTO tenant (domain) VALUES (?1) ON CONFLICT (domain) DO NOTHING")
            .and_then(|mut s| s.execute([tenant]))
            .map_err(err)?;
        let out = f(&tx, tenant).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(out)
    }

    fn read<T>(&self, f: impl FnOnce(&Connection, &str) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        f(&self.conn, &self.tenant).map_err(|e| StoreError::sqlite(&self.path, e))
    }
}

/// Look at an existing file without changing it: `None` when there is nothing there yet.
///
/// Refuses a file without the SQLite header, one SQLite reports as corrupt or not a database, one that fails
/// `PRAGMA quick_check`, one from another application, and one with a newer schema.
fn probe(path: &Path) -> Result<Option<Probe>, StoreError> {
    // Reading a WAL-mode file, even read-only, creates its `-wal` and `-shm` beside it. When we then refuse
    // the file, we take back exactly what we created, and only while the `-wal` is still empty (nobody wrote).
    let sidecars = [sidecar(path, "-wal"), sidecar(path, "-shm")];
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
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(corrupt(format!("cannot read it: {e}"))),
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
        filtered_total: 0,
        last_gap: None,
        gaps: 0,
        stopped: false,
    }
}

fn reason(why: &str) -> &str {
    if why.trim().is_empty() { NO_REASON } else { why }
}

/// RFC 3339, UTC, milliseconds: the format every timestamp in the file uses, so they sort as text.
fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn to_i64<N: TryInto<i64>>(n: N) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
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

    /// A `Store` can be moved into a blocking task.
    #[test]
    fn a_store_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Store>();
    }

    /// Only busy and locked databases are worth retrying.
    #[test]
    fn only_busy_and_locked_errors_are_transient() {
        let sqlite = |code| StoreError::Sqlite {
            path: PathBuf::from("x"),
            source: rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None),
        };
        assert!(sqlite(rusqlite::ffi::SQLITE_BUSY).is_transient());
        assert!(sqlite(rusqlite::ffi::SQLITE_LOCKED).is_transient());
        assert!(!sqlite(rusqlite::ffi::SQLITE_FULL).is_transient());
        assert!(!sqlite(rusqlite::ffi::SQLITE_CORRUPT).is_transient());
        assert!(!StoreError::Missing { path: PathBuf::from("x") }.is_transient());
        assert!(!StoreError::Corrupt { path: PathBuf::from("x"), detail: String::new() }.is_transient());
    }

    /// Timestamps are RFC 3339 in UTC with milliseconds.
    #[test]
    fn timestamps_are_rfc3339_utc_with_millis() {
        let t = now();
        assert_eq!(t.len(), "2026-01-01T00:00:00.000Z".len(), "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[19] == b'.', "{t}");
    }
}
