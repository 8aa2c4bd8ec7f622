//! The two loops that move entries from Auth0 to RudderStack, and everything about retrying and stopping.
//!
//! The fetcher reads pages from Auth0 and commits each page to the outbox together with the cursor, in one
//! transaction. The sender reads the head of the outbox, transforms it, posts it, and deletes exactly the rows
//! RudderStack answered 2xx for. The two loops share nothing but the SQLite file and two wake-up signals, so
//! a RudderStack outage never stops the fetcher from keeping up with Auth0's retention window (up to
//! `state.max_outbox_entries`), and an Auth0 outage never stops delivery of what is already fetched.
//!
//! Crash semantics, step by step: a crash before a page commit loses nothing (the cursor did not move, the
//! page is read again); a crash between a POST and the delete that follows it resends those rows, with the
//! same deterministic `messageId`s, so RudderStack's dedup (or the warehouse's) drops the copies. Only this
//! module knows the order "send, then delete", and only this module sleeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth0;
use crate::config::{Config, Mode, OnExpiredCheckpoint, Start};
use crate::rudderstack::{self, Item, Sink};
use crate::store::{Cursor, Gap, NewDeadLetter, NewEntry, PageCommit, Store, StoreError};
use crate::transform;

/// How long an in-flight POST may still run after a shutdown signal before it is abandoned. Abandoned rows
/// stay in the outbox and are resent on the next start with the same ids.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How many outbox rows the sender reads per round; `deliver` packs them into several requests, and the
/// delete that follows is one transaction, so a larger window means fewer commits.
const SEND_WINDOW_BATCHES: usize = 5;

/// Why the pipeline stopped before its work was done.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Auth0 refused us for good (credentials, scope) or could not be reached for too long.
    #[error("Auth0: {0}")]
    Auth0(#[from] auth0::Error),
    /// RudderStack refused us for good (write key, disabled source, redirect).
    #[error("RudderStack: {0}")]
    RudderStack(#[from] rudderstack::Error),
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `sync` kept failing for longer than `retry.sync_give_up_after`.
    #[error(
        "gave up after failing for {waited}; the last error was: {last}. Nothing was lost: the outbox and cursor are kept, run `sync` again once the cause is fixed"
    )]
    GaveUp {
        /// How long it kept trying.
        waited: String,
        /// The last error.
        last: String,
    },
    /// Fetching is stopped because the checkpoint expired and `auth0.on_expired_checkpoint = "stop"`.
    #[error("fetching is stopped: {0}")]
    Stopped(String),
    /// Another `run` or `sync` holds the state; two of them would fetch the same pages twice.
    #[error(
        "another auth0-rudderstack `run` or `sync` is already using {path} (it holds {lock}); stop it first"
    )]
    AlreadyRunning {
        /// The state database.
        path: String,
        /// The lock file.
        lock: String,
    },
    /// A worker thread panicked or was cancelled.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Whether the error came from the state database (the binary gives those their own exit code).
    pub fn is_store(&self) -> bool {
        matches!(self, Error::Store(_))
    }
}

/// Whether to run forever or to stop once caught up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// Poll every `poll_interval` until shut down.
    Daemon,
    /// Fetch until Auth0 has nothing newer, deliver the whole outbox, return.
    Sync,
}

/// What a run did.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Summary {
    /// Entries fetched from Auth0 into the outbox.
    pub fetched: u64,
    /// Entries filtered out by `auth0.log_types`.
    pub filtered: u64,
    /// Events RudderStack accepted.
    pub delivered: u64,
    /// Entries set aside as dead letters.
    pub dead_lettered: u64,
    /// `/api/v2/logs` requests made.
    pub pages: u64,
}

#[derive(Default)]
struct Counters {
    fetched: AtomicU64,
    filtered: AtomicU64,
    delivered: AtomicU64,
    dead_lettered: AtomicU64,
    pages: AtomicU64,
}

struct Shared {
    config: Config,
    auth0: auth0::Client,
    sink: Sink,
    /// The fetcher committed rows.
    new_rows: Notify,
    /// The sender freed outbox space.
    space: Notify,
    /// The fetcher is caught up and finished (sync mode only).
    fetch_done: AtomicBool,
    counters: Counters,
}

/// Run the pipeline until `shutdown` is cancelled (daemon) or until caught up (sync).
pub async fn run(config: Config, mode: RunMode, shutdown: CancellationToken) -> Result<Summary, Error> {
    let auth0 = auth0::Client::new(&config.auth0)?;
    let sink = Sink::new(&config.rudderstack)?;
    run_with(config, auth0, sink, mode, shutdown).await
}

/// Run with clients built by the caller (tests and benches inject their own).
pub async fn run_with(
    config: Config,
    auth0: auth0::Client,
    sink: Sink,
    mode: RunMode,
    shutdown: CancellationToken,
) -> Result<Summary, Error> {
    let tenant = config.auth0.domain.clone();
    let path = config.state.path.clone();
    // Held until this function returns; the OS releases it if the process dies.
    let _lock = lock_state(&path)?;
    let sync = config.state.synchronous;
    let open = move |p: std::path::PathBuf, t: String| {
        blocking(move || {
            let store = Store::open(&p, &t)?;
            store.set_synchronous(sync)?;
            Ok::<_, StoreError>(store)
        })
    };
    let fetch_store = open(path.clone(), tenant.clone()).await??;
    let send_store = open(path, tenant).await??;

    let shared = Arc::new(Shared {
        config,
        auth0,
        sink,
        new_rows: Notify::new(),
        space: Notify::new(),
        fetch_done: AtomicBool::new(false),
        counters: Counters::default(),
    });
    // A fatal error in one loop stops the other; a shutdown signal stops both. The loops are separate tasks
    // so that the fetcher's page parsing and the sender's transform run on both cores at once.
    let stop = shutdown.child_token();
    let fetcher = {
        let (shared, stop) = (shared.clone(), stop.clone());
        tokio::spawn(async move {
            let r = fetch_loop(&shared, fetch_store, mode, &stop).await;
            shared.fetch_done.store(true, Ordering::SeqCst);
            shared.new_rows.notify_one();
            if r.is_err() {
                stop.cancel();
            }
            r
        })
    };
    let sender = {
        let (shared, stop) = (shared.clone(), stop.clone());
        tokio::spawn(async move {
            let r = send_loop(&shared, send_store, mode, &stop, &shutdown).await;
            if r.is_err() {
                stop.cancel();
            }
            r
        })
    };
    let (f, s) = tokio::join!(fetcher, sender);
    let joined = |r: Result<Result<(), Error>, tokio::task::JoinError>| {
        r.map_err(|e| Error::Internal(format!("a pipeline task failed: {e}")))?
    };
    joined(f)?;
    joined(s)?;
    let c = &shared.counters;
    Ok(Summary {
        fetched: c.fetched.load(Ordering::Relaxed),
        filtered: c.filtered.load(Ordering::Relaxed),
        delivered: c.delivered.load(Ordering::Relaxed),
        dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
        pages: c.pages.load(Ordering::Relaxed),
    })
}

/// Take the exclusive lock beside the state database (`<path>.lock`), so that a second daemon on the same
/// state refuses to start instead of fetching every page a second time.
fn lock_state(path: &std::path::Path) -> Result<std::fs::File, Error> {
    let lock_path = std::path::PathBuf::from(format!("{}.lock", path.display()));
    if let Some(parent) = lock_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(parent);
    }
    let file =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(
            |e| Error::Internal(format!("cannot open the lock file {}: {e}", lock_path.display())),
        )?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::AlreadyRunning {
            path: path.display().to_string(),
            lock: lock_path.display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(Error::Internal(format!("cannot lock {}: {e}", lock_path.display())))
        }
    }
}

/// Run a blocking closure (SQLite work) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Internal(format!("storage task failed: {e}")))
}

/// A store owned by one loop, lent to `spawn_blocking` for each call.
struct Owned(Option<Store>);

impl Owned {
    async fn call<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Error> {
        let mut store =
            self.0.take().ok_or_else(|| Error::Internal("store lost after a failed call".into()))?;
        let (store, result) = blocking(move || {
            let r = f(&mut store);
            (store, r)
        })
        .await?;
        self.0 = Some(store);
        Ok(result?)
    }
}

/// Jittered exponential backoff with a cap, plus the bookkeeping for `sync`'s give-up rule.
struct Retrier {
    builder: backon::ExponentialBuilder,
    delays: Option<backon::ExponentialBackoff>,
    failing_since: Option<Instant>,
    give_up_after: Option<Duration>,
    attempts: u32,
}

impl Retrier {
    fn new(config: &Config, mode: RunMode) -> Retrier {
        let builder = backon::ExponentialBuilder::default()
            .with_min_delay(config.retry.initial_backoff)
            .with_max_delay(config.retry.max_backoff)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Retrier {
            builder,
            delays: None,
            failing_since: None,
            give_up_after: (mode == RunMode::Sync).then_some(config.retry.sync_give_up_after),
            attempts: 0,
        }
    }

    fn succeeded(&mut self) {
        self.delays = None;
        self.failing_since = None;
        self.attempts = 0;
    }

    /// Decide how long to wait after a transient failure, or give up (sync only).
    fn failed(&mut self, error: &dyn std::fmt::Display, asked: Option<Duration>) -> Result<Duration, Error> {
        use backon::BackoffBuilder;
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        self.attempts += 1;
        if let Some(limit) = self.give_up_after
            && since.elapsed() >= limit
        {
            return Err(Error::GaveUp {
                waited: humantime::format_duration(Duration::from_secs(since.elapsed().as_secs()))
                    .to_string(),
                last: error.to_string(),
            });
        }
        let backoff =
            self.delays.get_or_insert_with(|| self.builder.build()).next().unwrap_or(Duration::from_secs(1));
        // Auth0's own answer (Retry-After / x-ratelimit-reset) wins over our guess.
        Ok(asked.unwrap_or(backoff))
    }
}

/// Sleep unless cancelled; returns false when cancelled.
async fn pause(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The few fields of an entry the fetcher looks at; everything else stays raw.
#[derive(Deserialize)]
struct Head {
    log_id: Option<serde_json::Value>,
    #[serde(rename = "type")]
    kind: Option<serde_json::Value>,
    date: Option<serde_json::Value>,
}

/// Sort one page into outbox entries, dead letters and filtered entries, and find the new cursor.
fn classify_page(entries: &[Box<RawValue>], log_types: &[String]) -> PageCommit {
    let mut commit = PageCommit::default();
    for (i, raw) in entries.iter().enumerate() {
        let text = raw.get();
        let head =
            if text.trim_start().starts_with('{') { serde_json::from_str::<Head>(text).ok() } else { None };
        let Some(head) = head else {
            commit.dead_letters.push(NewDeadLetter {
                log_id: None,
                raw: text.to_string(),
                reason: format!("page entry {i} is not a JSON object"),
            });
            continue;
        };
        let Some(serde_json::Value::String(log_id)) = head.log_id else {
            commit.dead_letters.push(NewDeadLetter {
                log_id: None,
                raw: text.to_string(),
                reason: format!("page entry {i} has no string log_id"),
            });
            continue;
        };
        let date = match head.date {
            Some(serde_json::Value::String(d)) => Some(d),
            _ => None,
        };
        commit.cursor = Some(Cursor { log_id: log_id.clone(), date });
        if !log_types.is_empty() {
            let keep =
                matches!(&head.kind, Some(serde_json::Value::String(t)) if log_types.iter().any(|w| w == t));
            if !keep {
                commit.filtered += 1;
                continue;
            }
        }
        commit.entries.push(NewEntry { log_id, raw: text.to_string() });
    }
    commit
}

fn parse_date(d: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(d).ok().map(|t| t.with_timezone(&Utc))
}

/// Auth0 answered with an entry inside the retention window right after a cursor that lies outside it, and
/// the two are far apart in time: the entries logged between them have most likely expired unread. (A
/// catch-up that is merely old has cursor and first entry on the same side of the window, or close together.)
fn detect_gap(
    cursor: &Cursor,
    page: &PageCommit,
    first: Option<&Cursor>,
    retention: Duration,
) -> Option<Gap> {
    const MIN_JUMP: chrono::Duration = chrono::Duration::minutes(1);
    let cursor_date = parse_date(cursor.date.as_deref()?)?;
    let retention = chrono::Duration::from_std(retention).ok()?;
    let window_start = Utc::now() - retention;
    let first_date = parse_date(first.or(page.cursor.as_ref())?.date.as_deref()?)?;
    if cursor_date >= window_start || first_date < window_start || first_date - cursor_date <= MIN_JUMP {
        return None;
    }
    let first = first.or(page.cursor.as_ref())?;
    Some(Gap {
        detected_at: now_rfc3339(),
        from_log_id: cursor.log_id.clone(),
        from_date: cursor.date.clone(),
        to_log_id: Some(first.log_id.clone()),
        to_date: first.date.clone(),
        detail: format!(
            "the cursor entry {} ({}) is older than auth0.retention; entries logged between it and {} ({}) may have expired before they could be read",
            cursor.log_id,
            cursor.date.as_deref().unwrap_or("?"),
            first.log_id,
            first.date.as_deref().unwrap_or("?")
        ),
    })
}

/// The page `resume` commits: the oldest retained entry, forwarded itself and made the cursor.
pub fn resume_commit(found: auth0::Bootstrap, log_types: &[String]) -> PageCommit {
    match found.first {
        Some(first) => classify_page(std::slice::from_ref(&first), log_types),
        None => PageCommit {
            cursor: found.cursor.map(|log_id| Cursor { log_id, date: None }),
            ..PageCommit::default()
        },
    }
}

fn first_cursor(entries: &[Box<RawValue>]) -> Option<Cursor> {
    classify_page(entries.get(..1)?, &[]).cursor
}

async fn fetch_loop(
    shared: &Shared,
    store: Store,
    mode: RunMode,
    stop: &CancellationToken,
) -> Result<(), Error> {
    let cfg = &shared.config;
    let mut store = Owned(Some(store));
    let mut retry = Retrier::new(cfg, mode);
    let mut paused_for_space = false;
    // Fetched-entry count at the last "caught up" report, so a quiet daemon logs nothing at info level.
    let mut reported = 0;
    let mut prefetched: Prefetched = None;
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        let result = fetch_step(shared, &mut store, mode, stop, &mut prefetched, &mut paused_for_space).await;
        match result {
            Ok(Progress::Cancelled) => return Ok(()),
            Ok(Progress::Waited) => {}
            Ok(Progress::More) => retry.succeeded(),
            Ok(Progress::CaughtUp) => {
                retry.succeeded();
                let fetched = shared.counters.fetched.load(Ordering::Relaxed);
                if fetched != reported && mode == RunMode::Daemon {
                    tracing::info!(
                        fetched = fetched - reported,
                        delivered_total = shared.counters.delivered.load(Ordering::Relaxed),
                        "caught up with Auth0"
                    );
                    reported = fetched;
                }
                if mode == RunMode::Sync {
                    return Ok(());
                }
                if !pause(cfg.auth0.poll_interval, stop).await {
                    return Ok(());
                }
            }
            Err(Error::Auth0(e)) if e.is_transient() => {
                let wait = retry.failed(&e, e.retry_after())?;
                tracing::warn!(error = %e, attempt = retry.attempts, retry_in = ?wait, "reading Auth0 logs failed, will retry");
                if !pause(wait, stop).await {
                    return Ok(());
                }
            }
            Err(Error::Store(e)) if e.is_transient() => {
                let wait = retry.failed(&e, None)?;
                tracing::warn!(error = %e, retry_in = ?wait, "state database busy, will retry");
                if !pause(wait, stop).await {
                    return Ok(());
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// One round of the fetcher: check that fetching may go on, then read and commit one page (or bootstrap).
/// Every error comes back to the caller, which alone decides between retrying and stopping.
async fn fetch_step(
    shared: &Shared,
    store: &mut Owned,
    mode: RunMode,
    stop: &CancellationToken,
    prefetched: &mut Prefetched,
    paused_for_space: &mut bool,
) -> Result<Progress, Error> {
    let cfg = &shared.config;
    // Two O(1) reads per page; the full snapshot (which counts dead letters) only when fetching is stopped.
    let (stopped, outbox_depth) = store.call(|s| Ok((s.fetching_stopped()?, s.outbox_depth()?))).await?;
    if stopped {
        let snapshot = store.call(|s| s.snapshot()).await?;
        let detail = snapshot.last_gap.as_ref().map(|g| g.detail.clone()).unwrap_or_default();
        if mode == RunMode::Sync {
            return Err(Error::Stopped(format!(
                "{detail}; auth0.on_expired_checkpoint = \"stop\", so nothing more is fetched until `auth0-rudderstack resume` is run"
            )));
        }
        tracing::error!(gap = %detail, "fetching is stopped after an expired checkpoint; run `auth0-rudderstack resume` to continue from the oldest retained entry");
        return Ok(if pause(cfg.auth0.poll_interval, stop).await {
            Progress::Waited
        } else {
            Progress::Cancelled
        });
    }
    if outbox_depth >= cfg.state.max_outbox_entries {
        // A page read ahead could be stale by the time there is room again.
        *prefetched = None;
        if !*paused_for_space {
            tracing::warn!(
                outbox_depth,
                max_outbox_entries = cfg.state.max_outbox_entries,
                "outbox is full, pausing fetching until RudderStack accepts events again"
            );
            *paused_for_space = true;
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(Progress::Cancelled),
            _ = shared.space.notified() => {},
            _ = tokio::time::sleep(cfg.auth0.poll_interval) => {},
        }
        return Ok(Progress::Waited);
    }
    if *paused_for_space {
        tracing::info!(outbox_depth, "outbox has room again, resuming fetching");
        *paused_for_space = false;
    }
    let cursor = store.call(|s| s.cursor()).await?;
    match &cursor {
        None => bootstrap(shared, store, &cfg.auth0.start, stop).await,
        Some(c) => fetch_after(shared, store, c, prefetched, stop).await,
    }
}

enum Progress {
    /// Fetching is paused (outbox full, or stopped after a gap) and waited; look again.
    Waited,
    /// A full page was read; read again at once.
    More,
    /// Auth0 has nothing newer right now.
    CaughtUp,
    /// Shutdown while waiting.
    Cancelled,
}

async fn bootstrap(
    shared: &Shared,
    store: &mut Owned,
    start: &Start,
    stop: &CancellationToken,
) -> Result<Progress, Error> {
    let found = tokio::select! {
        _ = stop.cancelled() => return Ok(Progress::Cancelled),
        r = shared.auth0.bootstrap(start) => r?,
    };
    shared.counters.pages.fetch_add(1, Ordering::Relaxed);
    let commit = match (found.first, found.cursor) {
        (Some(first), _) => {
            // `from` is exclusive, so the entry the bootstrap query found is forwarded itself.
            let commit = classify_page(std::slice::from_ref(&first), &shared.config.auth0.log_types);
            tracing::info!(start = ?start, first = ?commit.cursor.as_ref().map(|c| &c.log_id), "fresh state: starting from the first entry found");
            commit
        }
        (None, Some(cursor)) => {
            tracing::info!(start = ?start, cursor = %cursor, "fresh state: starting after this log_id");
            PageCommit { cursor: Some(Cursor { log_id: cursor, date: None }), ..PageCommit::default() }
        }
        (None, None) => {
            tracing::info!(start = ?start, "the tenant has no log entries to start from yet");
            store.call(|s| s.touch_fetch()).await?;
            return Ok(Progress::CaughtUp);
        }
    };
    commit_page(shared, store, commit).await?;
    Ok(Progress::More)
}

/// A page read ahead while the previous one was being committed, with the `from` it was read after.
type Prefetched = Option<(String, Result<auth0::Page, auth0::Error>)>;

async fn fetch_after(
    shared: &Shared,
    store: &mut Owned,
    cursor: &Cursor,
    prefetched: &mut Prefetched,
    stop: &CancellationToken,
) -> Result<Progress, Error> {
    let cfg = &shared.config.auth0;
    let page = match prefetched.take() {
        Some((from, page)) if from == cursor.log_id => page,
        _ => {
            let page = tokio::select! {
                _ = stop.cancelled() => return Ok(Progress::Cancelled),
                r = shared.auth0.page_after(&cursor.log_id, cfg.page_size) => r,
            };
            shared.counters.pages.fetch_add(1, Ordering::Relaxed);
            page
        }
    };
    let page = match page {
        Ok(p) => p,
        Err(e) if e.is_expired_checkpoint() => {
            return expired_checkpoint(shared, store, cursor, &e, stop).await;
        }
        Err(e) => return Err(e.into()),
    };
    let n = page.entries.len();
    if n == 0 {
        store.call(|s| s.touch_fetch()).await?;
        return Ok(Progress::CaughtUp);
    }
    let commit = classify_page(&page.entries, &cfg.log_types);
    if let Some(gap) = detect_gap(cursor, &commit, first_cursor(&page.entries).as_ref(), cfg.retention) {
        let stop_fetching = cfg.on_expired_checkpoint == OnExpiredCheckpoint::Stop;
        tracing::error!(
            from_log_id = %gap.from_log_id,
            to_log_id = ?gap.to_log_id,
            on_expired_checkpoint = if stop_fetching { "stop" } else { "oldest" },
            "gap in the Auth0 log: {}", gap.detail
        );
        store.call(move |s| s.record_gap(&gap, stop_fetching)).await?;
        if stop_fetching {
            // The page is not committed: the operator decides.
            return Ok(Progress::More);
        }
    }
    let full = n >= cfg.page_size as usize;
    match commit.cursor.as_ref().map(|c| c.log_id.clone()) {
        Some(next) if full => {
            // A full page means more is waiting. `from` is exclusive, so the next request needs only this
            // page's last log_id: read it while this page commits. If the commit fails, the page read ahead
            // is dropped with it and nothing has moved.
            let read_ahead = async {
                tokio::select! {
                    _ = stop.cancelled() => None,
                    r = shared.auth0.page_after(&next, cfg.page_size) => Some(r),
                }
            };
            let (committed, ahead) = tokio::join!(commit_page(shared, store, commit), read_ahead);
            committed?;
            if let Some(page) = ahead {
                shared.counters.pages.fetch_add(1, Ordering::Relaxed);
                *prefetched = Some((next, page));
            }
        }
        _ => commit_page(shared, store, commit).await?,
    }
    Ok(if full { Progress::More } else { Progress::CaughtUp })
}

/// Auth0 refused the cursor (a 400 on `from`): its entry has aged out of retention.
async fn expired_checkpoint(
    shared: &Shared,
    store: &mut Owned,
    cursor: &Cursor,
    error: &auth0::Error,
    stop: &CancellationToken,
) -> Result<Progress, Error> {
    let cfg = &shared.config.auth0;
    let stop_fetching = cfg.on_expired_checkpoint == OnExpiredCheckpoint::Stop;
    let mut gap = Gap {
        detected_at: now_rfc3339(),
        from_log_id: cursor.log_id.clone(),
        from_date: cursor.date.clone(),
        to_log_id: None,
        to_date: None,
        detail: format!(
            "Auth0 refused the cursor {} ({}): {error}; entries logged after it and before the oldest retained entry are lost",
            cursor.log_id,
            cursor.date.as_deref().unwrap_or("date unknown")
        ),
    };
    if stop_fetching {
        tracing::error!(from_log_id = %gap.from_log_id, on_expired_checkpoint = "stop", "gap in the Auth0 log: {}", gap.detail);
        store.call(move |s| s.record_gap(&gap, true)).await?;
        return Ok(Progress::More);
    }
    let found = tokio::select! {
        _ = stop.cancelled() => return Ok(Progress::Cancelled),
        r = shared.auth0.bootstrap(&Start::Oldest) => r?,
    };
    let commit = match found.first {
        Some(first) => classify_page(std::slice::from_ref(&first), &cfg.log_types),
        None => PageCommit::default(),
    };
    if let Some(c) = &commit.cursor {
        gap.to_log_id = Some(c.log_id.clone());
        gap.to_date = c.date.clone();
    }
    tracing::error!(from_log_id = %gap.from_log_id, to_log_id = ?gap.to_log_id, on_expired_checkpoint = "oldest", "gap in the Auth0 log, continuing from the oldest retained entry: {}", gap.detail);
    store.call(move |s| s.record_gap(&gap, false)).await?;
    if commit.cursor.is_some() {
        commit_page(shared, store, commit).await?;
    }
    Ok(Progress::More)
}

async fn commit_page(shared: &Shared, store: &mut Owned, commit: PageCommit) -> Result<(), Error> {
    let (entries, dead, filtered) =
        (commit.entries.len() as u64, commit.dead_letters.len() as u64, commit.filtered);
    for d in &commit.dead_letters {
        tracing::warn!(log_id = ?d.log_id, reason = %d.reason, "entry set aside as a dead letter");
    }
    let cursor = commit.cursor.as_ref().map(|c| c.log_id.clone());
    store.call(move |s| s.commit_page(&commit)).await?;
    let c = &shared.counters;
    c.fetched.fetch_add(entries, Ordering::Relaxed);
    c.filtered.fetch_add(filtered, Ordering::Relaxed);
    c.dead_lettered.fetch_add(dead, Ordering::Relaxed);
    tracing::debug!(entries, filtered, dead_letters = dead, cursor = ?cursor, "page committed");
    if entries > 0 {
        shared.new_rows.notify_one();
    }
    Ok(())
}

async fn send_loop(
    shared: &Shared,
    store: Store,
    mode: RunMode,
    stop: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    let cfg = &shared.config;
    let tenant = cfg.auth0.domain.clone();
    let window = cfg.rudderstack.max_batch_events * SEND_WINDOW_BATCHES;
    let mut store = Owned(Some(store));
    let mut retry = Retrier::new(cfg, mode);
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        let rows = match store.call(move |s| s.outbox_head(window)).await {
            Ok(rows) => rows,
            Err(Error::Store(e)) if e.is_transient() => {
                let wait = retry.failed(&e, None)?;
                tracing::warn!(error = %e, retry_in = ?wait, "state database busy, will retry");
                if !pause(wait, stop).await {
                    return Ok(());
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        if rows.is_empty() {
            if shared.fetch_done.load(Ordering::SeqCst) && mode == RunMode::Sync {
                // The fetcher may have committed between our read and its flag; look once more.
                match store.call(|s| s.outbox_depth()).await {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(Error::Store(e)) if e.is_transient() => {
                        let wait = retry.failed(&e, None)?;
                        if !pause(wait, stop).await {
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(e),
                }
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = shared.new_rows.notified() => {},
            }
            continue;
        }

        let mut rejected: Vec<(i64, String)> = Vec::new();
        let mut items = Vec::with_capacity(rows.len());
        for row in rows {
            match cfg.rudderstack.mode {
                Mode::Batch => match RawValue::from_string(row.raw) {
                    Ok(raw) => match transform::transform_entry(&tenant, &raw) {
                        Ok(event) => items.push(Item { seq: row.seq, json: event.json }),
                        Err(e) => rejected.push((row.seq, format!("transform: {e}"))),
                    },
                    Err(e) => rejected.push((row.seq, format!("stored entry is not valid JSON: {e}"))),
                },
                Mode::Webhook => {
                    let log_id = serde_json::to_string(&row.log_id).unwrap_or_else(|_| "null".into());
                    items.push(Item {
                        seq: row.seq,
                        json: format!("{{\"log_id\":{log_id},\"data\":{}}}", row.raw),
                    });
                }
            }
        }

        // A shutdown lets the request in flight finish (up to the grace period) so its rows can be deleted;
        // a fatal error in the fetcher does the same.
        let deliver = shared.sink.deliver(items);
        tokio::pin!(deliver);
        let report = tokio::select! {
            r = &mut deliver => Some(r),
            _ = async { stop.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => None,
        };
        let Some(report) = report else {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "shutdown: abandoned a delivery still in flight; its entries stay in the outbox and will be resent with the same ids");
            return Ok(());
        };
        for (seq, reason) in &report.rejected {
            tracing::warn!(seq, reason = %reason, "event set aside as a dead letter");
        }
        rejected.extend(report.rejected);
        let (delivered_n, rejected_n) = (report.delivered.len() as u64, rejected.len() as u64);
        if delivered_n + rejected_n > 0 {
            let delivered = report.delivered;
            match store.call(move |s| s.complete(&delivered, &rejected)).await {
                Ok(()) => {}
                // The rows stay in the outbox and go out again, with the same ids, on the next round.
                Err(Error::Store(e)) if e.is_transient() => {
                    let wait = retry.failed(&e, None)?;
                    tracing::warn!(error = %e, retry_in = ?wait, "state database busy after a delivery; those events will be sent again");
                    if !pause(wait, stop).await {
                        return Ok(());
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
            shared.counters.delivered.fetch_add(delivered_n, Ordering::Relaxed);
            shared.counters.dead_lettered.fetch_add(rejected_n, Ordering::Relaxed);
            shared.space.notify_one();
            tracing::debug!(delivered = delivered_n, dead_letters = rejected_n, "delivery committed");
        }
        match report.error {
            None => retry.succeeded(),
            Some(e) if e.is_transient() => {
                let wait = retry.failed(&e, None)?;
                tracing::warn!(error = %e, attempt = retry.attempts, retry_in = ?wait, "delivery to RudderStack failed, will retry; nothing is lost");
                if !pause(wait, stop).await {
                    return Ok(());
                }
            }
            Some(e) => return Err(e.into()),
        }
        if shutdown.is_cancelled() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn a_page_is_sorted_into_entries_dead_letters_and_filtered_entries() {
        let page = vec![
            raw(r#"{"log_id":"1","type":"s","date":"2026-01-01T00:00:00.000Z"}"#),
            raw(r#"5"#),
            raw(r#"{"type":"f"}"#),
            raw(r#"{"log_id":"2","type":"f"}"#),
            raw(r#"[1,2]"#),
            raw(r#"{"log_id":"3","type":"sapi","date":"2026-01-01T00:00:01.000Z"}"#),
        ];
        let c = classify_page(&page, &["s".into(), "sapi".into()]);
        assert_eq!(c.entries.iter().map(|e| e.log_id.as_str()).collect::<Vec<_>>(), ["1", "3"]);
        assert_eq!(c.dead_letters.len(), 3);
        assert!(c.dead_letters[0].reason.contains("entry 1 is not a JSON object"));
        assert!(c.dead_letters[1].reason.contains("no string log_id"));
        assert_eq!(c.filtered, 1);
        // The cursor moves past filtered entries too: it is the last entry with a log_id.
        assert_eq!(c.cursor.unwrap().log_id, "3");
    }

    #[test]
    fn a_jump_from_outside_the_retention_window_into_it_is_a_gap() {
        let ago = |days: i64| {
            (Utc::now() - chrono::Duration::days(days)).to_rfc3339_opts(SecondsFormat::Millis, true)
        };
        let entry =
            |id: &str, date: String| raw(&format!(r#"{{"log_id":"{id}","type":"s","date":"{date}"}}"#));
        let cursor = |date: String| Cursor { log_id: "1".into(), date: Some(date) };
        let ten_days = Duration::from_secs(10 * 86400);
        // Cursor outside the window, first entry inside it: a gap.
        let page = classify_page(&[entry("9", ago(2))], &[]);
        let gap = detect_gap(&cursor(ago(20)), &page, None, ten_days).expect("gap");
        assert_eq!(gap.to_log_id.as_deref(), Some("9"));
        // Both inside the window: an ordinary quiet period.
        assert!(detect_gap(&cursor(ago(5)), &page, None, ten_days).is_none());
        // Both outside: an old but continuous catch-up.
        let old_page = classify_page(&[entry("9", ago(15))], &[]);
        assert!(detect_gap(&cursor(ago(20)), &old_page, None, ten_days).is_none());
    }
}
