//! The fetcher of one tenant: reads pages from Auth0 and commits each page to the outbox together with the
//! cursor, in one transaction.
//!
//! Nothing on a page is trusted. Each entry's head is read by [`entry::read_head`]; an entry without a valid
//! `log_id` is set aside as a dead letter (once, however often Auth0 serves it); the cursor becomes the
//! greatest valid `log_id` on the page and never moves backwards; an entry equal to the cursor or repeated
//! within the page is skipped and counted; an entry below the cursor is still forwarded (its ids are
//! deterministic, so a copy is harmless) but cannot move the cursor. A page that cannot move the cursor at
//! all (no valid `log_id`, or a full page entirely at or below it) stalls fetching: `sync` stops with a
//! message, `run` records the reason for `status` and backs off, and no loop of dead letters ever starts.
//!
//! [`Fetcher::step`] does one round and says what happened; the loop around it (in `mod.rs`) only waits, as
//! long as the tenant's idle schedule says (see `poll`). Each round also passes on what Auth0 said about
//! pressure on the tenant's budget: an answer's status and rate-limit headers, and `api_limit` or
//! `api_limit_warning` entries on the page.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use super::poll::{self, Change, Interval, Schedule};
use super::{Error, Next, RunMode, TenantRun};
use crate::auth0::{self, Bootstrap, Page};
use crate::config::{OnExpiredCheckpoint, Start};
use crate::entry::{self, LogId};
use crate::store::{Cursor, Gap, Handle, Kept, NewDeadLetter, NewEntry, PageCommit, StoreError};

/// A page sorted into what is stored, set aside, skipped and filtered, with the cursor it leads to.
#[derive(Debug, Default)]
pub struct Classified {
    /// What the page commit stores.
    pub commit: PageCommit,
    /// Entries with a valid `log_id`.
    pub valid: usize,
    /// The first entry with a valid `log_id`, in page order (for gap detection).
    pub first: Option<Cursor>,
    /// The last `api_limit` or `api_limit_warning` entry on the page: its type, `log_id` and date.
    pub limit_entry: Option<(String, LogId, Option<DateTime<Utc>>)>,
    /// Why the first entry without a valid `log_id` has none.
    pub first_problem: Option<String>,
}

/// The type codes Auth0 logs when the tenant's Management or Authentication API limit is reached or about to
/// be: a sign of pressure on the budget, whoever spent it.
pub const LIMIT_TYPES: [&str; 2] = ["api_limit", "api_limit_warning"];

/// What a rewrite of an entry before it is stored does: the privacy rules.
pub type Rewrite = dyn Fn(&str) -> Result<String, String> + Send + Sync;

/// Sort one page. `cursor` is the current cursor; the new one is never smaller.
pub fn classify(
    entries: &[Box<RawValue>],
    cursor: Option<&LogId>,
    filter: &crate::config::Filter,
    rewrite: Option<&Rewrite>,
) -> Classified {
    let mut out = Classified::default();
    let mut seen: std::collections::HashSet<LogId> = std::collections::HashSet::with_capacity(entries.len());
    let mut greatest: Option<Cursor> = None;
    for (i, raw) in entries.iter().enumerate() {
        let text = raw.get();
        // An entry that is not an object, or has no valid log_id, is set aside: it cannot move the cursor.
        let parsed = entry::read_head(text)
            .map_err(|e| e.to_string())
            .and_then(|h| h.log_id.clone().map(|id| (id, h)).map_err(|e| e.to_string()));
        let (log_id, head) = match parsed {
            Ok(found) => found,
            Err(problem) => {
                out.commit.dead_letters.push(NewDeadLetter {
                    log_id: None,
                    kept: kept(text, rewrite),
                    reason: format!("page entry {}: {problem}", i + 1),
                });
                out.first_problem.get_or_insert(problem);
                continue;
            }
        };
        out.valid += 1;
        if out.first.is_none() {
            out.first = Some(Cursor { log_id: log_id.clone(), date: head.date });
        }
        if cursor == Some(&log_id) || !seen.insert(log_id.clone()) {
            out.commit.repeated += 1;
            continue;
        }
        if let Some(kind) = head.kind.as_deref()
            && LIMIT_TYPES.contains(&kind)
        {
            out.limit_entry = Some((kind.to_string(), log_id.clone(), head.date));
        }
        let above = cursor.is_none_or(|c| &log_id > c);
        if above && greatest.as_ref().is_none_or(|g| log_id > g.log_id) {
            greatest = Some(Cursor { log_id: log_id.clone(), date: head.date });
        }
        if !filter.keeps(head.kind.as_deref(), head.client_id.as_deref()) {
            out.commit.filtered += 1;
            continue;
        }
        match rewrite.map(|f| f(text)) {
            Some(Err(why)) => out.commit.dead_letters.push(NewDeadLetter {
                log_id: Some(log_id),
                kept: Kept::withheld(text.as_bytes(), String::new()),
                reason: format!("page entry {}: the privacy rules cannot be applied: {why}", i + 1),
            }),
            Some(Ok(rewritten)) => out.commit.entries.push(NewEntry { log_id, raw: rewritten }),
            None => out.commit.entries.push(NewEntry { log_id, raw: text.to_string() }),
        }
    }
    out.commit.cursor = greatest;
    out
}

/// What a dead letter may keep of an element that holds no entry: with privacy rules, the element as the
/// rules rewrite it when it is an object or array (whose keys the rules can name); otherwise, or when the
/// rules cannot read it, nothing but its size and hash. A bare string or number is no entry whose fields a
/// rule could name, so whatever it holds (an e-mail address, say) is not kept.
pub fn kept(text: &str, rewrite: Option<&Rewrite>) -> Kept {
    let Some(rewrite) = rewrite else {
        return Kept::Whole(text.to_string());
    };
    let structured = matches!(text.trim_start().as_bytes().first(), Some(b'{' | b'['));
    match rewrite(text) {
        Ok(rewritten) if structured => Kept::Whole(rewritten),
        _ => Kept::withheld(text.as_bytes(), String::new()),
    }
}

/// Add the elements of a page that are not valid UTF-8 (see [`auth0::Unreadable`]) to a classified page.
/// Such an element is read for its head as a JavaScript reader would decode it (each invalid sequence as
/// U+FFFD); with a valid `log_id` it counts like any entry and may move the cursor. It is set aside: with
/// privacy rules, without its text; without them, as decoded, so that a retry can deliver that.
pub fn add_unreadable(
    out: &mut Classified,
    unreadable: &[auth0::Unreadable],
    cursor: Option<&LogId>,
    filter: &crate::config::Filter,
    privacy: bool,
) {
    for u in unreadable {
        let head = entry::read_head(&u.lossy).ok();
        let log_id = head.as_ref().and_then(|h| h.log_id.clone().ok());
        if let (Some(id), Some(h)) = (&log_id, &head) {
            out.valid += 1;
            let at = Cursor { log_id: id.clone(), date: h.date };
            out.first.get_or_insert_with(|| at.clone());
            let above = cursor.is_none_or(|c| id > c);
            if above && out.commit.cursor.as_ref().is_none_or(|g| *id > g.log_id) {
                out.commit.cursor = Some(at);
            }
            if cursor == Some(id) {
                out.commit.repeated += 1;
                continue;
            }
            if !filter.keeps(h.kind.as_deref(), h.client_id.as_deref()) {
                out.commit.filtered += 1;
                continue;
            }
        }
        let kept = if privacy {
            Kept::Withheld { size: u.size, sha256: u.sha256, excerpt: String::new() }
        } else {
            Kept::Whole(u.lossy.clone())
        };
        let problem = format!("not valid UTF-8 (byte {} of the entry)", u.invalid_at);
        out.first_problem.get_or_insert_with(|| problem.clone());
        out.commit.dead_letters.push(NewDeadLetter {
            log_id,
            kept,
            reason: format!("page entry {}: {problem}", u.position),
        });
    }
}

/// Auth0 answered with an entry inside the retention window right after a cursor that lies outside it, and
/// the two are far apart in time: the entries logged between them have most likely expired unread. (A
/// catch-up that is merely old has cursor and first entry on the same side of the window, or close together.)
pub fn detect_gap(cursor: &Cursor, first: &Cursor, retention: Duration) -> Option<Gap> {
    const MIN_JUMP: chrono::Duration = chrono::Duration::minutes(1);
    let cursor_date = cursor.date?;
    let first_date = first.date?;
    let retention = chrono::Duration::from_std(retention).ok()?;
    let window_start = Utc::now() - retention;
    if cursor_date >= window_start || first_date < window_start || first_date - cursor_date <= MIN_JUMP {
        return None;
    }
    Some(Gap {
        detected_at: now_rfc3339(),
        from_log_id: cursor.log_id.to_string(),
        from_date: Some(entry::format_date(&cursor_date)),
        to_log_id: Some(first.log_id.to_string()),
        to_date: Some(entry::format_date(&first_date)),
        detail: format!(
            "the cursor entry {} ({}) is older than auth0.retention; entries logged between it and {} ({}) may \
             have expired before they could be read",
            cursor.log_id,
            entry::format_date(&cursor_date),
            first.log_id,
            entry::format_date(&first_date)
        ),
    })
}

fn now_rfc3339() -> String {
    entry::format_date(&Utc::now())
}

/// What one fetch step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// A full page was committed; more is waiting.
    More,
    /// Auth0 has nothing newer right now.
    CaughtUp,
    /// The outbox is full; fetching waits for the sender.
    Paused,
    /// Fetching is stopped after an expired checkpoint, until `resume`.
    Stopped,
    /// Shutdown.
    Cancelled,
}

/// A page read ahead while the previous one was being committed, with the `from` it was read after.
type Prefetched = Option<(LogId, Result<Page, auth0::Error>)>;

/// The fetcher of one tenant.
pub struct Fetcher {
    t: Arc<TenantRun>,
    store: Handle,
    mode: RunMode,
    prefetched: Prefetched,
    paused_for_space: bool,
    stopped_reported: bool,
    /// When to poll while idle, and the pressure Auth0 signalled.
    schedule: Schedule,
    /// Whether the pressure the state recorded was taken up.
    restored: bool,
    /// A limit entry seen on the last page read, as a sign of pressure.
    page_pressure: Option<String>,
}

impl Fetcher {
    /// A fetcher for one tenant, on the fetching connection.
    pub fn new(t: Arc<TenantRun>, store: Handle, mode: RunMode) -> Fetcher {
        let schedule = Schedule::new(&t.domain);
        Fetcher {
            t,
            store,
            mode,
            prefetched: None,
            paused_for_space: false,
            stopped_reported: false,
            schedule,
            restored: false,
            page_pressure: None,
        }
    }

    /// The idle interval now, and why.
    pub fn interval(&self) -> Interval {
        self.schedule.interval(&self.t.cfg.auth0)
    }

    /// What the loop does after an outcome.
    pub fn next(&self, outcome: Fetched) -> Next {
        let every = self.interval().every;
        let poll = self.schedule.wait(every, std::time::Instant::now());
        match outcome {
            Fetched::More => Next::Again,
            Fetched::CaughtUp if self.mode == RunMode::Sync => Next::Done,
            Fetched::CaughtUp | Fetched::Stopped => Next::Wait { duration: poll, wake: None },
            Fetched::Paused => Next::Wait { duration: poll, wake: Some(self.t.space.clone()) },
            Fetched::Cancelled => Next::Done,
        }
    }

    /// One round: check that fetching may go on, then read and commit one page (or bootstrap); and take note
    /// of any pressure Auth0 signalled meanwhile, whatever the round's outcome (a 429 is an error).
    pub async fn step(&mut self, stop: &CancellationToken) -> Result<Fetched, Error> {
        if !self.restored {
            let d = self.t.domain.clone();
            let s = self.store.call(move |s| s.snapshot(&d)).await?;
            self.schedule.restore(s.pressure_until.as_deref(), s.pressure_reason.as_deref());
            self.restored = true;
        }
        let outcome = self.round(stop).await;
        self.note_pressure().await;
        outcome
    }

    /// Pass on a sign of pressure from the last answers or page, or end a pressure whose period is over; log
    /// and record what changed.
    async fn note_pressure(&mut self) {
        let from_answer = self.t.auth0.take_pressure();
        let from_log = self.page_pressure.take();
        let change = match from_log.or(from_answer) {
            Some(why) => self.schedule.press(why),
            None => self.schedule.expire(),
        };
        let cfg = &self.t.cfg.auth0;
        let domain = &self.t.domain;
        let now = self.interval();
        match change {
            Change::None => return,
            Change::Started => {
                let (until, why) = self.schedule.pressure().unwrap_or_default();
                tracing::warn!(
                    tenant = %domain,
                    reason = %why,
                    until = %entry::format_date(&until),
                    "Auth0 signals pressure on the tenant's request budget: idle polling {}",
                    now.describe(cfg)
                );
            }
            Change::Extended => {}
            Change::Ended => {
                tracing::info!(tenant = %domain, "no sign of pressure from Auth0 for {}: idle polling {}", humantime::format_duration(poll::pressure_period()), now.describe(cfg));
            }
        }
        let d = domain.clone();
        let pressure = self.schedule.pressure();
        let recorded = self
            .store
            .call(move |s| s.set_pressure(&d, pressure.as_ref().map(|(until, why)| (until, why.as_str()))))
            .await;
        if let Err(e) = recorded {
            // Only what `status` shows is behind; the daemon polls as it should.
            tracing::warn!(tenant = %domain, error = %crate::logging::Chain(&e), "cannot record Auth0's pressure in the state");
        }
    }

    async fn round(&mut self, stop: &CancellationToken) -> Result<Fetched, Error> {
        let domain = self.t.domain.clone();
        // One call for all three: on an idle daemon each call into the store is a thread wake-up.
        let (stopped, depth, cursor) = {
            let d = domain.clone();
            self.store.call(move |s| Ok((s.fetching_stopped(&d)?, s.outbox_depth(&d)?, s.cursor(&d)))).await?
        };
        if stopped {
            let d = domain.clone();
            let detail = self
                .store
                .call(move |s| s.snapshot(&d))
                .await?
                .last_gap
                .map(|g| g.detail)
                .unwrap_or_default();
            if self.mode == RunMode::Sync {
                return Err(Error::Stopped { detail });
            }
            if !self.stopped_reported {
                tracing::error!(tenant = %domain, gap = %detail, "fetching is stopped after an expired checkpoint; run `auth0-rudderstack resume --tenant {domain}` to continue from the oldest retained entry");
                self.stopped_reported = true;
            }
            return Ok(Fetched::Stopped);
        }
        self.stopped_reported = false;
        let max = self.t.max_outbox_entries;
        if depth >= max {
            // A page read ahead could be stale by the time there is room again.
            self.prefetched = None;
            if !self.paused_for_space {
                tracing::warn!(tenant = %domain, outbox = depth, max_outbox_entries = max, "outbox is full, pausing fetching until RudderStack accepts events again");
                self.paused_for_space = true;
            }
            return Ok(Fetched::Paused);
        }
        if self.paused_for_space {
            tracing::info!(tenant = %domain, outbox = depth, "outbox has room again, resuming fetching");
            self.paused_for_space = false;
        }
        match cursor {
            Ok(None) => self.bootstrap(stop).await,
            Ok(Some(cursor)) => self.fetch_after(cursor, stop).await,
            Err(StoreError::BadCursor { .. }) => {
                // An older version stored an id Auth0 never issued; treat it as a checkpoint that expired.
                let error = auth0::Error::ExpiredCheckpoint {
                    from: "(an invalid stored cursor)".into(),
                    message: "the stored cursor is not a valid log_id".into(),
                };
                self.expired_checkpoint(None, &error, stop).await
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn bootstrap(&mut self, stop: &CancellationToken) -> Result<Fetched, Error> {
        let start = self.t.cfg.auth0.start.clone();
        let found = tokio::select! {
            _ = stop.cancelled() => return Ok(Fetched::Cancelled),
            r = self.t.auth0.bootstrap(&start) => r?,
        };
        self.t.counters.pages.fetch_add(1, Ordering::Relaxed);
        let domain = &self.t.domain;
        match found {
            Bootstrap::After(id) => {
                tracing::info!(tenant = %domain, start = %start, "fresh state: starting after this log_id");
                let commit =
                    PageCommit { cursor: Some(Cursor { log_id: id, date: None }), ..PageCommit::default() };
                self.commit(commit).await?;
                Ok(Fetched::More)
            }
            Bootstrap::Empty => {
                tracing::info!(tenant = %domain, start = %start, "the tenant has no log entries to start from yet");
                let d = domain.clone();
                self.store.call(move |s| s.touch_fetch(&d)).await?;
                Ok(Fetched::CaughtUp)
            }
            Bootstrap::Found { entry, forward } => {
                let c = self.classify(std::slice::from_ref(&entry), None);
                let Some(first) = c.first.clone() else {
                    return self.stall(c, "the entry that auth0.start found").await;
                };
                let commit = if forward {
                    c.commit
                } else {
                    PageCommit { cursor: Some(first.clone()), ..PageCommit::default() }
                };
                tracing::info!(tenant = %domain, start = %start, first = %first.log_id, "fresh state: starting from the entry found");
                self.commit(commit).await?;
                Ok(Fetched::More)
            }
        }
    }

    async fn fetch_after(&mut self, cursor: Cursor, stop: &CancellationToken) -> Result<Fetched, Error> {
        let page_size = self.t.cfg.auth0.page_size;
        let page = match self.prefetched.take() {
            Some((from, page)) if from == cursor.log_id => page,
            _ => {
                let page = tokio::select! {
                    _ = stop.cancelled() => return Ok(Fetched::Cancelled),
                    r = self.t.auth0.page_after(&cursor.log_id, page_size) => r,
                };
                self.t.counters.pages.fetch_add(1, Ordering::Relaxed);
                page
            }
        };
        let page = match page {
            Ok(p) => p,
            Err(e) if e.is_expired_checkpoint() => {
                return self.expired_checkpoint(Some(&cursor), &e, stop).await;
            }
            Err(e) => return Err(e.into()),
        };
        let n = page.entries.len() + page.unreadable.len();
        if n == 0 {
            let d = self.t.domain.clone();
            self.store.call(move |s| s.touch_fetch(&d)).await?;
            self.t.note_caught_up();
            return Ok(Fetched::CaughtUp);
        }
        let mut c = self.classify(&page.entries, Some(&cursor.log_id));
        if let Some((kind, id, date)) = c.limit_entry.take() {
            // An old entry read while catching up says nothing about the budget now.
            let recent = chrono::Duration::from_std(poll::pressure_period()).unwrap_or(chrono::Duration::MAX);
            if date.is_none_or(|d| d > Utc::now() - recent) {
                self.page_pressure = Some(format!("an {kind} entry in the tenant's log (log_id {id})"));
            }
        }
        let privacy = self.t.rewrite.is_some();
        add_unreadable(&mut c, &page.unreadable, Some(&cursor.log_id), &self.t.cfg.auth0.filter, privacy);
        if c.valid == 0 {
            return self.stall(c, &format!("the page after {}", cursor.log_id)).await;
        }
        let full = n >= page_size as usize;
        if c.commit.cursor.is_none() && full {
            let why = format!(
                "Auth0 answered a full page after {} whose entries are all at or below that cursor; fetching \
                 cannot move past it",
                cursor.log_id
            );
            return self.stall_with(c.commit, why).await;
        }
        if let Some(first) = &c.first
            && let Some(gap) = detect_gap(&cursor, first, self.t.cfg.auth0.retention)
        {
            let stop_fetching = self.t.cfg.auth0.on_expired_checkpoint == OnExpiredCheckpoint::Stop;
            tracing::error!(
                tenant = %self.t.domain,
                from_log_id = %gap.from_log_id,
                to_log_id = %gap.to_log_id.as_deref().unwrap_or("?"),
                on_expired_checkpoint = if stop_fetching { "stop" } else { "oldest" },
                "gap in the Auth0 log: {}", gap.detail
            );
            let d = self.t.domain.clone();
            self.store.call(move |s| s.record_gap(&d, &gap, stop_fetching)).await?;
            if stop_fetching {
                // The page is not committed: the operator decides.
                return Ok(Fetched::Stopped);
            }
        }
        match c.commit.cursor.as_ref().map(|c| c.log_id.clone()) {
            Some(next) if full => {
                // A full page means more is waiting. `from` is exclusive, so the next request needs only this
                // page's cursor: read it while this page commits. If the commit fails, the page read ahead is
                // dropped with it and nothing has moved.
                let auth0 = self.t.auth0.clone();
                let read_ahead = async {
                    tokio::select! {
                        _ = stop.cancelled() => None,
                        r = auth0.page_after(&next, page_size) => Some(r),
                    }
                };
                let (committed, ahead) = tokio::join!(self.commit(c.commit), read_ahead);
                committed?;
                if let Some(page) = ahead {
                    self.t.counters.pages.fetch_add(1, Ordering::Relaxed);
                    self.prefetched = Some((next, page));
                }
            }
            _ => self.commit(c.commit).await?,
        }
        if full {
            Ok(Fetched::More)
        } else {
            self.t.note_caught_up();
            Ok(Fetched::CaughtUp)
        }
    }

    /// Auth0 refused the cursor (a 400 on `from`), or the stored cursor is unusable: its entry has aged out.
    async fn expired_checkpoint(
        &mut self,
        cursor: Option<&Cursor>,
        error: &auth0::Error,
        stop: &CancellationToken,
    ) -> Result<Fetched, Error> {
        let cfg = &self.t.cfg.auth0;
        let stop_fetching = cfg.on_expired_checkpoint == OnExpiredCheckpoint::Stop;
        let from = cursor.map(|c| c.log_id.to_string()).unwrap_or_else(|| "(none)".into());
        let from_date = cursor.and_then(|c| c.date.as_ref()).map(entry::format_date);
        let mut gap = Gap {
            detected_at: now_rfc3339(),
            from_log_id: from.clone(),
            from_date: from_date.clone(),
            to_log_id: None,
            to_date: None,
            detail: format!(
                "Auth0 refused the cursor {from} ({}): {}; entries logged after it and before the oldest retained \
                 entry are lost",
                from_date.as_deref().unwrap_or("date unknown"),
                crate::logging::Chain(error)
            ),
        };
        let domain = self.t.domain.clone();
        if stop_fetching {
            tracing::error!(tenant = %domain, from_log_id = %gap.from_log_id, on_expired_checkpoint = "stop", "gap in the Auth0 log: {}", gap.detail);
            self.store.call(move |s| s.record_gap(&domain, &gap, true)).await?;
            return Ok(Fetched::Stopped);
        }
        let found = tokio::select! {
            _ = stop.cancelled() => return Ok(Fetched::Cancelled),
            r = self.t.auth0.bootstrap(&Start::Oldest) => r?,
        };
        let Bootstrap::Found { entry, .. } = found else {
            let d = domain.clone();
            self.store.call(move |s| s.record_gap(&d, &gap, false)).await?;
            return Ok(Fetched::CaughtUp);
        };
        let c = self.classify(std::slice::from_ref(&entry), None);
        if let Some(first) = &c.first {
            gap.to_log_id = Some(first.log_id.to_string());
            gap.to_date = first.date.as_ref().map(entry::format_date);
        }
        tracing::error!(tenant = %domain, from_log_id = %gap.from_log_id, to_log_id = %gap.to_log_id.as_deref().unwrap_or("?"), on_expired_checkpoint = "oldest", "gap in the Auth0 log, continuing from the oldest retained entry: {}", gap.detail);
        let d = domain.clone();
        self.store.call(move |s| s.record_gap(&d, &gap, false)).await?;
        if c.first.is_none() {
            return self.stall(c, "the oldest retained entry").await;
        }
        self.commit(c.commit).await?;
        Ok(Fetched::More)
    }

    /// A page (or bootstrap entry) without any valid `log_id`: set its entries aside once, note why fetching
    /// cannot advance, and report it.
    async fn stall(&mut self, c: Classified, what: &str) -> Result<Fetched, Error> {
        let why = format!(
            "Auth0 answered {what} without any valid log_id ({}); fetching cannot move past it until Auth0 \
             serves valid entries",
            c.first_problem.as_deref().unwrap_or("no entries")
        );
        self.stall_with(c.commit, why).await
    }

    async fn stall_with(&mut self, commit: PageCommit, why: String) -> Result<Fetched, Error> {
        // The cursor does not move; the page's dead letters are kept (each raw entry only once).
        let commit = PageCommit { cursor: None, ..commit };
        self.commit(commit).await?;
        let d = self.t.domain.clone();
        let note = why.clone();
        self.store.call(move |s| s.set_stall(&d, Some(&note))).await?;
        Err(Error::Stalled(why))
    }

    fn classify(&self, entries: &[Box<RawValue>], cursor: Option<&LogId>) -> Classified {
        classify(entries, cursor, &self.t.cfg.auth0.filter, self.t.rewrite.as_deref())
    }

    async fn commit(&self, commit: PageCommit) -> Result<(), Error> {
        let reasons: Vec<(Option<LogId>, String)> =
            commit.dead_letters.iter().map(|d| (d.log_id.clone(), d.reason.clone())).collect();
        let filtered = commit.filtered;
        let repeated = commit.repeated;
        let cursor_date: Option<DateTime<Utc>> = commit.cursor.as_ref().and_then(|c| c.date);
        let d = self.t.domain.clone();
        let committed = self.store.call(move |s| s.commit_page(&d, &commit)).await?;
        // A raw entry set aside before is not set aside again, so only the new ones are reported.
        for (id, i) in &committed.dead_letters {
            if let Some((log_id, reason)) = reasons.get(*i) {
                tracing::warn!(
                    tenant = %self.t.domain,
                    dead_letter = id,
                    log_id = %log_id.as_ref().map(LogId::as_str).unwrap_or("-"),
                    reason = %reason,
                    "entry set aside as dead letter {id} (see `dead-letter list`)"
                );
            }
        }
        let c = &self.t.counters;
        c.add_fetched(committed.entries);
        c.filtered.fetch_add(filtered, Ordering::Relaxed);
        c.repeated.fetch_add(repeated, Ordering::Relaxed);
        c.dead_lettered.fetch_add(committed.dead_letters.len() as u64, Ordering::Relaxed);
        if let Some(date) = cursor_date {
            self.t.note_cursor_date(date);
        }
        tracing::debug!(tenant = %self.t.domain, entries = committed.entries, filtered, repeated, dead_letters = committed.dead_letters.len(), "page committed");
        if committed.entries > 0 {
            self.t.wake_sender.notify_one();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Filter;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    fn ids(c: &Classified) -> Vec<&str> {
        c.commit.entries.iter().map(|e| e.log_id.as_str()).collect()
    }

    #[test]
    fn a_page_is_sorted_into_entries_dead_letters_and_filtered_entries() {
        let text = r#"
[auth0]
domain = "t.example.com"
client_id = "c"
client_secret = "s"
log_types = ["s", "sapi"]
[rudderstack]
data_plane_url = "http://127.0.0.1:9"
write_key = "k"
"#;
        let (cfg, _) =
            crate::config::Config::parse(text, std::path::Path::new("c.toml"), |_: &str| None).unwrap();
        let page = vec![
            raw(r#"{"log_id":"1","type":"s","date":"2026-01-01T00:00:00.000Z"}"#),
            raw(r#"5"#),
            raw(r#"{"type":"f"}"#),
            raw(r#"{"log_id":"2","type":"f"}"#),
            raw(r#"[1,2]"#),
            raw(r#"{"log_id":"3","type":"sapi","date":"2026-01-01T00:00:01.000Z"}"#),
        ];
        let c = classify(&page, None, &cfg.tenants[0].auth0.filter, None);
        assert_eq!(ids(&c), ["1", "3"]);
        assert_eq!(c.commit.dead_letters.len(), 3);
        assert!(c.commit.dead_letters[0].reason.contains("entry 2"), "{}", c.commit.dead_letters[0].reason);
        assert!(c.commit.dead_letters[1].reason.contains("no string log_id"));
        assert_eq!(c.commit.filtered, 1);
        // The cursor moves past filtered entries too.
        assert_eq!(c.commit.cursor.unwrap().log_id.as_str(), "3");
    }

    #[test]
    fn the_cursor_is_the_greatest_valid_id_and_never_moves_back() {
        let huge = format!(r#"{{"log_id":"{}"}}"#, "9".repeat(1 << 20));
        let page = vec![
            raw(r#"{"log_id":"105","type":"s"}"#),
            raw(&huge),
            raw(r#"{"log_id":"103","type":"s"}"#),
            raw(r#"{"log_id":"105","type":"s"}"#),
            raw(r#"{"log_id":"100","type":"s"}"#),
            raw(r#"{"log_id":"","type":"s"}"#),
            raw(r#"{"log_id":"99","type":"s"}"#),
        ];
        let cursor = LogId::parse("100").unwrap();
        let c = classify(&page, Some(&cursor), &Filter::default(), None);
        assert_eq!(c.commit.cursor.as_ref().unwrap().log_id.as_str(), "105");
        // 105 once; 103 and 99 are forwarded (below or between), 100 (= cursor) and the second 105 skipped.
        assert_eq!(ids(&c), ["105", "103", "99"]);
        assert_eq!(c.commit.repeated, 2);
        assert_eq!(c.commit.dead_letters.len(), 2);
        assert!(c.commit.dead_letters.iter().all(|d| d.reason.len() < 200));

        // A page entirely below the cursor leaves it where it is.
        let below = classify(&[raw(r#"{"log_id":"7"}"#)], Some(&cursor), &Filter::default(), None);
        assert!(below.commit.cursor.is_none());
        assert_eq!(ids(&below), ["7"]);
    }

    #[test]
    fn a_jump_from_outside_the_retention_window_into_it_is_a_gap() {
        let ago = |days: i64| Some(Utc::now() - chrono::Duration::days(days));
        let at = |id: &str, date| Cursor { log_id: LogId::parse(id).unwrap(), date };
        let ten_days = Duration::from_secs(10 * 86400);
        let gap = detect_gap(&at("1", ago(20)), &at("9", ago(2)), ten_days).expect("gap");
        assert_eq!(gap.to_log_id.as_deref(), Some("9"));
        // Both inside the window: an ordinary quiet period.
        assert!(detect_gap(&at("1", ago(5)), &at("9", ago(2)), ten_days).is_none());
        // Both outside: an old but continuous catch-up.
        assert!(detect_gap(&at("1", ago(20)), &at("9", ago(15)), ten_days).is_none());
    }
}
