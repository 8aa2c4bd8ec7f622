//! The daemon: for every tenant a fetcher (Auth0 → outbox) and a sender (outbox → RudderStack), and the
//! supervisor that keeps them apart, reports on them and stops them.
//!
//! Each tenant's two loops are structs with a `step()` that does one round and returns an outcome
//! ([`fetcher::Fetcher`], [`sender::Sender`]); the loops around them are trivial: run a step, hand a failure
//! to the one [`retry::RetryPolicy`], wait as the outcome says. The loops of one tenant share nothing with
//! another tenant's but the state file and the HTTP connection pools, so a tenant whose credentials are
//! rejected, whose RudderStack is down or whose checkpoint expired never delays the others; and the two loops
//! of one tenant share only the outbox, so a RudderStack outage never stops the fetcher from keeping up with
//! Auth0's retention window (up to `state.max_outbox_entries`) and an Auth0 outage never stops delivery of
//! what is already fetched.
//!
//! A loop that meets an error no wait can fix stops, records the error for `status`, and (in `run`) is
//! started again after [`FAILED_RETRY`]; `run` exits 1 only when every tenant has a stopped loop. A bug that
//! panics a task ends the process (see `logging`), and the systemd watchdog is fed only while every live loop
//! keeps within its own deadline, so a wedged loop is restarted by systemd rather than left hanging.

pub mod fetcher;
pub mod import;
pub mod lock;
pub mod poll;
pub mod progress;
pub mod retry;
pub mod sender;
mod watch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::logging::Chain;
use crate::rudderstack::Sink;
use crate::store::{Handle, Store, StoreError};
use crate::telemetry::{Telemetry, TenantTelemetry};
use crate::{auth0, rudderstack};

use fetcher::{Fetched, Fetcher, Rewrite};
use retry::{Retry, RetryPolicy};
use sender::{Sender, Sent};

pub use sender::SHUTDOWN_GRACE;

/// How long a loop stopped by an error no wait can fix rests before `run` starts it again.
pub const FAILED_RETRY: Duration = Duration::from_secs(300);

/// How long a stopped loop rests: [`FAILED_RETRY`]. Debug builds only: `AUTH0_RUDDERSTACK_TEST_FAILED_RETRY`
/// (a humantime duration, read once) shortens it, so that tests can watch a loop start again without waiting
/// five minutes. Release builds compile this to the constant.
fn failed_retry() -> Duration {
    #[cfg(debug_assertions)]
    {
        static OVERRIDE: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
        let set = OVERRIDE.get_or_init(|| {
            std::env::var("AUTH0_RUDDERSTACK_TEST_FAILED_RETRY")
                .ok()
                .and_then(|v| humantime::parse_duration(&v).ok())
        });
        if let Some(d) = set {
            return *d;
        }
    }
    FAILED_RETRY
}

/// Why the pipeline (or one tenant's loop) stopped before its work was done.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Auth0 refused us or failed.
    #[error(transparent)]
    Auth0(#[from] auth0::Error),
    /// RudderStack refused us or failed.
    #[error(transparent)]
    RudderStack(#[from] rudderstack::Error),
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `sync` kept failing for longer than `retry.sync_give_up_after`.
    #[error(
        "gave up after failing for {waited}; nothing was lost: the outbox and cursor are kept, run `sync` again once the cause is fixed"
    )]
    GaveUp {
        /// How long it kept trying.
        waited: String,
        /// The last error.
        #[source]
        last: Box<Error>,
    },
    /// Fetching is stopped because the checkpoint expired and `auth0.on_expired_checkpoint = "stop"`.
    #[error(
        "fetching is stopped: {detail}; on_expired_checkpoint = \"stop\", so nothing more is fetched until `auth0-rudderstack resume` is run"
    )]
    Stopped {
        /// The gap.
        detail: String,
    },
    /// Auth0 served something the cursor cannot move past.
    #[error("{0}")]
    Stalled(String),
    /// Another command holds the state's lock: two `run`s would fetch the same pages twice, and a command
    /// that changes the state must not work under a daemon that relies on it.
    #[error("{holder} is using {path} (it holds {lock}); stop it first, or wait for it to finish")]
    AlreadyRunning {
        /// The state database.
        path: String,
        /// The lock file.
        lock: String,
        /// Who holds it, in words.
        holder: String,
    },
    /// The state holds tenants the config no longer names, with entries that would be stranded.
    #[error("{0}")]
    Orphans(String),
    /// One tenant's loop stopped.
    #[error("tenant {tenant} ({which})")]
    Tenant {
        /// The tenant.
        tenant: String,
        /// `fetching` or `sending`.
        which: &'static str,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// Several tenants failed (`sync`), or every tenant has a stopped loop (`run`).
    #[error("{0}")]
    Failed(String),
    /// An archive given to `import` is not JSON, or is cut off.
    #[error("cannot import {file}")]
    Input {
        /// The file as named.
        file: String,
        /// What is wrong, and where.
        source: crate::input::InputError,
    },
    /// A file named on the command line cannot be read.
    #[error("cannot read {}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A worker task failed (a bug).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// What trying again can do about this error (see [`retry::RetryPolicy`]).
    pub fn retry(&self) -> Retry {
        match self {
            Error::Auth0(e) if e.is_transient() => Retry::After(e.retry_after()),
            Error::RudderStack(e) if e.is_transient() => Retry::After(e.retry_after()),
            Error::Store(e) if e.is_transient() => Retry::After(None),
            Error::Stalled(_) => Retry::OnlyInDaemon,
            Error::Tenant { source, .. } => source.retry(),
            _ => Retry::Never,
        }
    }

    /// Whether the error came from a state database that cannot be used (the binary exits 3 for those).
    pub fn is_unusable_store(&self) -> bool {
        match self {
            Error::Store(e) => !e.is_transient() && !e.is_request(),
            Error::Tenant { source, .. } => source.is_unusable_store(),
            _ => false,
        }
    }
}

/// Whether to run forever or to stop once caught up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// Poll after every `poll_interval` (see [`poll`]) until shut down.
    Daemon,
    /// Fetch until Auth0 has nothing newer, deliver the whole outbox, return.
    Sync,
}

/// What a loop does after a step.
#[derive(Clone)]
pub enum Next {
    /// Step again at once.
    Again,
    /// Wait this long, or until woken.
    Wait {
        /// How long at most.
        duration: Duration,
        /// What may end the wait early.
        wake: Option<Arc<Notify>>,
    },
    /// The loop is finished.
    Done,
}

/// What a run did, per tenant.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct TenantSummary {
    /// The tenant.
    pub tenant: String,
    /// Entries fetched from Auth0 into the outbox.
    pub fetched: u64,
    /// Entries the filters kept back.
    pub filtered: u64,
    /// Entries Auth0 served again, skipped.
    pub repeated: u64,
    /// Events RudderStack accepted.
    pub delivered: u64,
    /// Entries set aside as dead letters.
    pub dead_lettered: u64,
    /// `/api/v2/logs` requests made.
    pub pages: u64,
    /// Tokens minted.
    pub tokens_minted: u64,
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Per tenant.
    pub tenants: Vec<TenantSummary>,
    /// What the state says about each tenant at the end (the figures `status` shows).
    pub states: Vec<crate::store::Snapshot>,
    /// Whether a shutdown signal ended the run before every tenant was caught up (`sync`).
    pub interrupted: bool,
}

/// Counters of one tenant's run.
#[derive(Default)]
pub struct Counters {
    /// Shared by every tenant of the run (see [`Activity`]).
    activity: Arc<Activity>,
    /// Entries committed to the outbox.
    pub fetched: AtomicU64,
    /// Entries filtered.
    pub filtered: AtomicU64,
    /// Entries skipped as repeats.
    pub repeated: AtomicU64,
    /// Events delivered.
    pub delivered: AtomicU64,
    /// Dead letters added.
    pub dead_lettered: AtomicU64,
    /// `/api/v2/logs` requests.
    pub pages: AtomicU64,
}

impl Counters {
    /// Counters that share `activity` with the other tenants of the run.
    fn sharing(activity: &Arc<Activity>) -> Counters {
        Counters { activity: activity.clone(), ..Counters::default() }
    }

    /// Count entries committed to the outbox.
    pub fn add_fetched(&self, n: u64) {
        self.fetched.fetch_add(n, Ordering::Relaxed);
        self.activity.bump();
    }

    /// Count events delivered.
    pub fn add_delivered(&self, n: u64) {
        self.delivered.fetch_add(n, Ordering::Relaxed);
        self.activity.bump();
    }

    /// What the run as a whole did.
    pub fn activity(&self) -> &Activity {
        &self.activity
    }
}

/// How often any tenant of a run fetched or delivered, shared by all of them, so that the progress reporter
/// can sleep while nothing moves and tell with one read that nothing did, instead of ticking and visiting
/// every tenant: on a small VM, each wake-up of an idle daemon, and each idle tenant's memory it touches, costs
/// more than the report itself.
#[derive(Default)]
pub struct Activity {
    count: AtomicU64,
    changed: Notify,
}

impl Activity {
    fn bump(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// Fetches and deliveries so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Wait for the next fetch or delivery (at once if one came since the last wait).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// A loop's promise to come back: the watchdog is fed only while every live loop is within its deadline.
pub struct Heartbeat {
    epoch: Instant,
    deadline_ms: AtomicU64,
    alive: AtomicBool,
}

impl Heartbeat {
    fn new() -> Heartbeat {
        Heartbeat {
            epoch: Instant::now(),
            deadline_ms: AtomicU64::new(u64::MAX),
            alive: AtomicBool::new(false),
        }
    }

    /// The loop starts work that takes at most `budget`.
    fn busy(&self, budget: Duration) {
        self.alive.store(true, Ordering::Relaxed);
        let at = self.epoch.elapsed() + budget;
        self.deadline_ms.store(at.as_millis() as u64, Ordering::Relaxed);
    }

    /// The loop sleeps by design for `d`.
    fn sleeping(&self, d: Duration) {
        self.busy(d + Duration::from_secs(10));
    }

    /// The loop ended (it is not wedged, it is gone; the supervisor knows).
    fn ended(&self) {
        self.alive.store(false, Ordering::Relaxed);
    }

    /// Whether a live loop has overrun its deadline.
    pub fn overdue(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
            && self.epoch.elapsed().as_millis() as u64 > self.deadline_ms.load(Ordering::Relaxed)
    }
}

/// Where a tenant's catch-up stands, for the progress reports.
#[derive(Default)]
pub struct Position {
    /// The date of the cursor's entry, as last committed.
    pub cursor_date: Option<DateTime<Utc>>,
    /// Whether the last page was not full (Auth0 had nothing more).
    pub caught_up: bool,
    /// Entries fetched when "caught up" was last logged, so a quiet daemon logs nothing.
    pub reported_fetched: u64,
    /// When "caught up" was last logged: with steady traffic every poll catches up again, and a line per poll
    /// would flood the journal, so the line comes after a real catch-up or now and then.
    pub reported_at: Option<std::time::Instant>,
    /// A full page was read since "caught up" was last logged: the tenant was behind, and its catching up
    /// is worth a line at once.
    pub behind_since_report: bool,
}

/// Everything one tenant's loops share.
pub struct TenantRun {
    /// The tenant's configuration.
    pub cfg: config::Tenant,
    /// Its domain.
    pub domain: String,
    /// Its Auth0 client.
    pub auth0: auth0::Client,
    /// Its destination.
    pub sink: Sink,
    /// The privacy rules, applied to each entry before it is stored.
    pub rewrite: Option<Arc<Rewrite>>,
    /// Fetching pauses while the outbox holds this many.
    pub max_outbox_entries: u64,
    /// Rows were committed (or another process queued some): the sender looks at once.
    pub wake_sender: Arc<Notify>,
    /// The sender freed outbox space.
    pub space: Arc<Notify>,
    /// The fetcher is caught up and finished (`sync`).
    pub fetch_done: AtomicBool,
    /// What this run did.
    pub counters: Counters,
    /// Where the catch-up stands.
    pub position: Mutex<Position>,
    /// The fetcher's heartbeat.
    pub fetch_beat: Heartbeat,
    /// The sender's heartbeat.
    pub send_beat: Heartbeat,
    /// The runtime counters.
    pub telemetry: TenantTelemetry,
}

impl TenantRun {
    fn note_cursor_date(&self, date: DateTime<Utc>) {
        let mut p = self.position.lock().unwrap_or_else(|p| p.into_inner());
        p.cursor_date = Some(date);
        p.caught_up = false;
    }

    fn note_caught_up(&self) {
        self.position.lock().unwrap_or_else(|p| p.into_inner()).caught_up = true;
    }

    fn summary(&self) -> TenantSummary {
        let c = &self.counters;
        TenantSummary {
            tenant: self.domain.clone(),
            fetched: c.fetched.load(Ordering::Relaxed),
            filtered: c.filtered.load(Ordering::Relaxed),
            repeated: c.repeated.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            pages: c.pages.load(Ordering::Relaxed),
            tokens_minted: self.auth0.tokens_minted(),
        }
    }

    /// The longest a fetch step may take: the pacer's longest hold, a throttled token mint, and three requests
    /// (token, page, read-ahead) running into the timeout.
    fn fetch_budget(&self) -> Duration {
        Duration::from_secs(180) + self.cfg.auth0.timeout * 3
    }
}

/// Build what an operator's `[privacy]` rules do to an entry, when they do anything.
pub fn privacy_rewrite(cfg: &config::Tenant) -> Option<Arc<Rewrite>> {
    let rules = cfg.privacy.as_ref()?.rules()?.clone();
    Some(Arc::new(move |raw: &str| rules.apply(raw).map(|c| c.into_owned()).map_err(|e| e.to_string())))
}

/// Options of a run that are not in the config.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Draw a progress bar instead of progress lines (a terminal).
    pub progress_bar: bool,
}

/// Run the pipeline until `shutdown` is cancelled (daemon) or until caught up (sync).
pub async fn run(
    config: Arc<Config>,
    mode: RunMode,
    shutdown: CancellationToken,
    options: Options,
) -> Result<Summary, Error> {
    // Held until this function returns; the OS releases it if the process dies.
    let command = match mode {
        RunMode::Daemon => "run",
        RunMode::Sync => "sync",
    };
    let lock = lock::StateLock::acquire(&config.state.path, command)?;
    let path = lock.state.clone();
    let opened = open_stores(&config, mode, &path, &shutdown).await?;
    let Some((fetch_store, send_store, watch_store)) = opened else {
        return Ok(Summary { interrupted: true, ..Summary::default() });
    };
    check_orphans(&config, &fetch_store).await?;

    let telemetry = Telemetry::new();
    let clients = crate::http::Clients::default();
    let activity = Arc::default();
    let mut tenants = Vec::with_capacity(config.tenants.len());
    for t in &config.tenants {
        let run = tenant_run(&config, t, &clients, &telemetry, &activity, &fetch_store, &send_store).await?;
        tenants.push(Arc::new(run));
    }
    let last = send_store.clone();
    let supervisor = Supervisor {
        config: config.clone(),
        mode,
        tenants,
        fetch_store,
        send_store,
        shutdown: shutdown.clone(),
        telemetry,
    };
    let result = supervisor.run(watch_store, path, options).await;
    // The connections live on threads that the process may end before they close (and fold the WAL in), so
    // fold it in now: after a clean stop the state file alone holds every commit, and no exit can interrupt
    // that copy halfway.
    match last.call(|s| s.checkpoint()).await {
        Ok(true) => {}
        Ok(false) => tracing::debug!("the state database's WAL could not be folded in completely at exit"),
        Err(e) => tracing::debug!(error = %Chain(&e), "cannot fold the state database's WAL in at exit"),
    }
    result
}

/// Open the fetching, sending and watching connections. A full disk or a busy file at start-up is waited out
/// like any other outage (`None` if a shutdown came first).
async fn open_stores(
    config: &Config,
    mode: RunMode,
    path: &std::path::Path,
    shutdown: &CancellationToken,
) -> Result<Option<(Handle, Handle, Handle)>, Error> {
    let mut policy = RetryPolicy::new(&config.retry, mode);
    let sync = config.state.synchronous;
    loop {
        let p = path.to_path_buf();
        let attempt = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            // The state is opened once (probed, made private, migrated); the other connections are made
            // from that one, so nothing ever opens the file a second way while connections hold it.
            let first = Store::open(&p)?;
            let open = |store: Store, name: &str| -> Result<Handle, StoreError> {
                store.set_synchronous(sync)?;
                // Read back what SQLite applied, so that the log shows the durability actually in effect.
                let level = match store.synchronous()? {
                    0 => "OFF",
                    1 => "NORMAL",
                    2 => "FULL",
                    _ => "EXTRA",
                };
                tracing::debug!(connection = name, synchronous = level, "state database connection open");
                Handle::spawn(store, name)
            };
            let (send, watch) = (first.connection()?, first.connection()?);
            Ok((open(first, "state-fetch")?, open(send, "state-send")?, open(watch, "state-watch")?))
        })
        .await
        .map_err(|e| Error::Internal(format!("opening the state database: {e}")))?;
        match attempt {
            Ok(handles) => return Ok(Some(handles)),
            Err(e) => {
                let why = crate::logging::Chain(&e).to_string();
                let wait = policy.failed(Error::Store(e))?;
                if policy.attempts == 1 {
                    tracing::error!(
                        path = %path.display(),
                        error = %why,
                        "the state database cannot be written; retrying until it can"
                    );
                }
                if !pause(wait, None, shutdown).await {
                    return Ok(None);
                }
            }
        }
    }
}

/// Refuse to start when the state holds a tenant the config no longer names and that still holds entries or
/// dead letters, or when it looks like a tenant was renamed (its entries would be re-sent with new ids).
///
/// Domains compare byte for byte, as they key the state: a state key in another case (written by a version
/// that took upper-case domains) is another tenant, whose entries went out with other ids.
async fn check_orphans(config: &Config, store: &Handle) -> Result<(), Error> {
    let known = store.call(|s| s.tenants()).await?;
    let named = |d: &str| config.tenant(d).is_some();
    let orphans: Vec<_> = known.iter().filter(|k| !named(&k.domain)).collect();
    if orphans.is_empty() {
        return Ok(());
    }
    let pending: Vec<String> = orphans
        .iter()
        .filter(|k| k.outbox > 0 || k.dead_letters > 0)
        .map(|k| {
            format!(
                "{} ({} undelivered, {} dead letter{})",
                k.domain,
                k.outbox,
                k.dead_letters,
                if k.dead_letters == 1 { "" } else { "s" }
            )
        })
        .collect();
    let how = |list: &str| {
        format!(
            "add it back to {} to deliver what it holds, or drop its state with `auth0-rudderstack forget-tenant {list} --yes`",
            config.path.display()
        )
    };
    if !pending.is_empty() {
        let names: Vec<&str> = orphans
            .iter()
            .filter(|k| k.outbox > 0 || k.dead_letters > 0)
            .map(|k| k.domain.as_str())
            .collect();
        return Err(Error::Orphans(format!(
            "the state holds entries of a tenant this config does not name: {}; {}",
            pending.join(", "),
            how(&names.join(" "))
        )));
    }
    let fresh: Vec<&str> =
        config.tenants.iter().map(|t| t.domain()).filter(|d| !known.iter().any(|k| k.domain == *d)).collect();
    let with_cursor: Vec<&str> = orphans.iter().filter(|k| k.has_cursor).map(|k| k.domain.as_str()).collect();
    if !fresh.is_empty() && !with_cursor.is_empty() {
        return Err(Error::Orphans(format!(
            "the state has a checkpoint for {} which this config no longer names, and the config names {} which \
             has none: if a domain was renamed, every retained entry would be sent again with new ids. If that is \
             what you want, drop the old state with `auth0-rudderstack forget-tenant {} --yes`",
            with_cursor.join(", "),
            fresh.join(", "),
            with_cursor.join(" ")
        )));
    }
    for k in orphans {
        tracing::warn!(tenant = %k.domain, "the state holds a tenant this config does not name (nothing pending); drop it with `auth0-rudderstack forget-tenant {} --yes`", k.domain);
    }
    Ok(())
}

async fn tenant_run(
    config: &Config,
    t: &config::Tenant,
    clients: &crate::http::Clients,
    telemetry: &Arc<Telemetry>,
    activity: &Arc<Activity>,
    fetch_store: &Handle,
    send_store: &Handle,
) -> Result<TenantRun, Error> {
    let domain = t.domain().to_string();
    let tel = telemetry.tenant(&domain);
    let setup = |e: crate::http::BuildError| Error::Auth0(auth0::Error::Setup(Chain(&e).to_string()));
    let auth0_http = clients.get(t.auth0.tls_ca.as_ref()).map_err(setup)?;
    let rudder_http = clients.get(t.rudderstack.tls_ca.as_ref()).map_err(setup)?;
    let d = domain.clone();
    let stored = fetch_store.call(move |s| s.load_token(&d)).await?;
    let (keep, d) = (send_store.clone(), domain.clone());
    let on_mint: auth0::OnMint = Box::new(move |token| {
        let (keep, d) = (keep.clone(), d.clone());
        tokio::spawn(async move {
            if let Err(e) = keep.call(move |s| s.save_token(&d, Some(&token))).await {
                tracing::warn!(error = %Chain(&e), "cannot keep the access token for the next start");
            }
        });
    });
    let auth0 = auth0::Client::with(&t.auth0, auth0_http, tel.clone(), stored, Some(on_mint))?;
    let sink = Sink::with(&t.rudderstack, rudder_http, tel.clone());
    Ok(TenantRun {
        cfg: t.clone(),
        domain,
        auth0,
        sink,
        rewrite: privacy_rewrite(t),
        max_outbox_entries: config.state.max_outbox_entries,
        wake_sender: Arc::new(Notify::new()),
        space: Arc::new(Notify::new()),
        fetch_done: AtomicBool::new(false),
        counters: Counters::sharing(activity),
        position: Mutex::new(Position::default()),
        fetch_beat: Heartbeat::new(),
        send_beat: Heartbeat::new(),
        telemetry: tel,
    })
}

/// Which loop of a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Which {
    Fetch,
    Send,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Fetch => "fetching",
            Which::Send => "sending",
        }
    }
}

struct Supervisor {
    config: Arc<Config>,
    mode: RunMode,
    tenants: Vec<Arc<TenantRun>>,
    fetch_store: Handle,
    send_store: Handle,
    shutdown: CancellationToken,
    telemetry: Arc<Telemetry>,
}

impl Supervisor {
    async fn run(
        self,
        watch_store: Handle,
        state: std::path::PathBuf,
        options: Options,
    ) -> Result<Summary, Error> {
        let mut set: JoinSet<(usize, Which, Result<(), Error>)> = JoinSet::new();
        let mut tenant_stops = Vec::with_capacity(self.tenants.len());
        for (i, t) in self.tenants.iter().enumerate() {
            let stop = self.shutdown.child_token();
            self.spawn(&mut set, i, Which::Fetch, &stop);
            self.spawn(&mut set, i, Which::Send, &stop);
            tenant_stops.push(stop);
            let _ = t;
        }
        let helpers = CancellationToken::new();
        if self.mode == RunMode::Daemon {
            // Only now, with the lock taken and the state open, is the daemon started.
            tracing::info!(
                tenants = %self.tenants.iter().map(|t| t.domain.as_str()).collect::<Vec<_>>().join(","),
                state = %self.config.state.path.display(),
                "started"
            );
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            watch::spawn(self.tenants.clone(), watch_store, &state, helpers.clone());
            tokio::spawn(progress::watchdog(self.tenants.clone(), helpers.clone()));
            if let Some(path) = self.config.metrics.textfile.clone() {
                tokio::spawn(progress::write_metrics(
                    self.config.clone(),
                    self.send_store.clone(),
                    self.telemetry.clone(),
                    path,
                    helpers.clone(),
                ));
            }
        }
        let reporter = tokio::spawn(progress::report(
            self.tenants.clone(),
            self.send_store.clone(),
            self.mode,
            options.progress_bar,
            helpers.clone(),
        ));

        // Loops that stopped with an error, by tenant; with when they may start again (`run`).
        let mut failed: HashMap<(usize, Which), (Error, Instant)> = HashMap::new();
        let mut finished_ok = 0usize;
        let mut all_failed = false;
        let result = loop {
            let next_restart = failed.values().map(|(_, at)| *at).min();
            tokio::select! {
                joined = set.join_next() => {
                    let Some(joined) = joined else { break Ok(()) };
                    let (i, which, result) = match joined {
                        Ok(r) => r,
                        Err(e) => break Err(Error::Internal(format!("a pipeline task failed: {e}"))),
                    };
                    let t = &self.tenants[i];
                    match which {
                        Which::Fetch => t.fetch_beat.ended(),
                        Which::Send => t.send_beat.ended(),
                    }
                    if which == Which::Fetch {
                        // In `sync`, the sender drains the outbox and ends once the fetcher is done, however
                        // the fetcher ended.
                        t.fetch_done.store(true, Ordering::SeqCst);
                        t.wake_sender.notify_one();
                    }
                    match result {
                        Ok(()) => finished_ok += 1,
                        Err(e) => {
                            let e = Error::Tenant { tenant: t.domain.clone(), which: which.name(), source: Box::new(e) };
                            if e.is_unusable_store() {
                                self.shutdown.cancel();
                                break Err(e);
                            }
                            tracing::error!(tenant = %t.domain, error = %Chain(&e), "{} stopped", which.name());
                            let note = Chain(&e).to_string();
                            let d = t.domain.clone();
                            let _ = self.send_store.call(move |s| s.set_error(&d, Some(&note))).await;
                            failed.insert((i, which), (e, Instant::now() + failed_retry()));
                            if self.mode == RunMode::Daemon && self.every_tenant_failed(&failed) {
                                tracing::error!("every tenant has a stopped loop; exiting so that the service manager starts the daemon again");
                                all_failed = true;
                                self.shutdown.cancel();
                            } else if self.mode == RunMode::Daemon {
                                tracing::warn!(tenant = %t.domain, retry_in = %humantime::format_duration(failed_retry()), "the other tenants go on; {} of this tenant starts again later", which.name());
                            }
                        }
                    }
                }
                _ = sleep_until(next_restart), if next_restart.is_some() && !self.shutdown.is_cancelled() => {
                    let now = Instant::now();
                    let due: Vec<(usize, Which)> = failed.iter().filter(|(_, (_, at))| *at <= now).map(|(k, _)| *k).collect();
                    for (i, which) in due {
                        failed.remove(&(i, which));
                        tracing::info!(tenant = %self.tenants[i].domain, "starting {} again", which.name());
                        self.spawn(&mut set, i, which, &tenant_stops[i]);
                    }
                }
            }
        };
        helpers.cancel();
        let _ = reporter.await;
        let _ = finished_ok;
        let mut states = Vec::with_capacity(self.tenants.len());
        for t in &self.tenants {
            let d = t.domain.clone();
            if let Ok(s) = self.send_store.call(move |s| s.snapshot(&d)).await {
                states.push(s);
            }
        }
        let summary = Summary {
            tenants: self.tenants.iter().map(|t| t.summary()).collect(),
            states,
            interrupted: self.shutdown.is_cancelled() && self.mode == RunMode::Sync,
        };
        result?;
        // A daemon stopped by a signal has reported its failed tenants already (logs, `status`); only a daemon
        // whose every tenant failed, or a `sync` with any failure, ends in an error.
        if failed.is_empty() || (self.mode == RunMode::Daemon && !all_failed) {
            return Ok(summary);
        }
        let mut lines: Vec<String> = failed.into_values().map(|(e, _)| Chain(&e).to_string()).collect();
        lines.sort();
        if lines.len() == 1 {
            return Err(Error::Failed(lines.remove(0)));
        }
        Err(Error::Failed(format!("{} loops stopped: {}", lines.len(), lines.join("; "))))
    }

    /// Whether every tenant has a loop stopped by an error.
    fn every_tenant_failed(&self, failed: &HashMap<(usize, Which), (Error, Instant)>) -> bool {
        (0..self.tenants.len())
            .all(|i| failed.contains_key(&(i, Which::Fetch)) || failed.contains_key(&(i, Which::Send)))
    }

    fn spawn(
        &self,
        set: &mut JoinSet<(usize, Which, Result<(), Error>)>,
        i: usize,
        which: Which,
        stop: &CancellationToken,
    ) {
        let t = self.tenants[i].clone();
        let (stop, shutdown) = (stop.clone(), self.shutdown.clone());
        let policy = RetryPolicy::new(&self.config.retry, self.mode);
        match which {
            Which::Fetch => {
                t.fetch_done.store(false, Ordering::SeqCst);
                let store = self.fetch_store.clone();
                let f = Fetcher::new(t.clone(), store.clone(), self.mode);
                set.spawn(async move { (i, which, fetch_loop(f, t, store, policy, stop).await) });
            }
            Which::Send => {
                let store = self.send_store.clone();
                let s = Sender::new(t.clone(), store.clone(), self.mode);
                set.spawn(async move { (i, which, send_loop(s, t, store, policy, stop, shutdown).await) });
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The fetcher's loop: step, and wait as the outcome or the retry policy says.
async fn fetch_loop(
    mut fetcher: Fetcher,
    t: Arc<TenantRun>,
    store: Handle,
    mut policy: RetryPolicy,
    stop: CancellationToken,
) -> Result<(), Error> {
    let budget = t.fetch_budget();
    forced_panic(Which::Fetch, &t);
    forced_wedge(Which::Fetch, &t.fetch_beat, &stop).await;
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        t.fetch_beat.busy(budget);
        let next = match fetcher.step(&stop).await {
            Ok(outcome) => {
                recovered(&t, &store, &mut policy, Which::Fetch).await;
                match outcome {
                    Fetched::CaughtUp => progress::caught_up(&t, &store).await,
                    Fetched::More => {
                        t.position.lock().unwrap_or_else(|p| p.into_inner()).behind_since_report = true
                    }
                    _ => {}
                }
                fetcher.next(outcome)
            }
            Err(e) => failure(&t, &store, &mut policy, Which::Fetch, e).await?,
        };
        if !wait(next, &t.fetch_beat, &stop).await {
            return Ok(());
        }
    }
}

/// The sender's loop: step, and wait as the outcome or the retry policy says.
async fn send_loop(
    mut sender: Sender,
    t: Arc<TenantRun>,
    store: Handle,
    mut policy: RetryPolicy,
    stop: CancellationToken,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let budget = sender.budget();
    forced_panic(Which::Send, &t);
    forced_wedge(Which::Send, &t.send_beat, &stop).await;
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        t.send_beat.busy(budget);
        let next = match sender.step(&stop, &shutdown).await {
            Ok(outcome) => {
                if outcome != Sent::Idle {
                    recovered(&t, &store, &mut policy, Which::Send).await;
                }
                sender.next(outcome)
            }
            Err(e) => failure(&t, &store, &mut policy, Which::Send, e).await?,
        };
        if !wait(next, &t.send_beat, &stop).await {
            return Ok(());
        }
    }
}

/// Debug builds only: `AUTH0_RUDDERSTACK_TEST_PANIC=fetch|send` (read once) makes that loop panic as it
/// starts, with the tenant's client secret in the message, so that tests can prove what a bug costs: the
/// panic hook prints the message with the secret redacted and ends the process with `logging::EXIT_BUG`.
/// Release builds compile this to nothing.
fn forced_panic(which: Which, t: &TenantRun) {
    #[cfg(debug_assertions)]
    {
        use secrecy::ExposeSecret;
        static WHICH: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        let asked = WHICH.get_or_init(|| std::env::var("AUTH0_RUDDERSTACK_TEST_PANIC").ok());
        let name = match which {
            Which::Fetch => "fetch",
            Which::Send => "send",
        };
        if asked.as_deref() == Some(name) {
            panic!(
                "forced by AUTH0_RUDDERSTACK_TEST_PANIC in the {name} loop of {} (client secret {})",
                t.domain,
                t.cfg.auth0.client_secret.expose_secret()
            );
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = (which, t);
}

/// Debug builds only: `AUTH0_RUDDERSTACK_TEST_WEDGE=fetch|send` (read once) makes that loop promise to be back
/// within a second and then hang until shut down, as a wedged loop would, so that tests can prove the
/// watchdog stops being fed. Release builds compile this to nothing.
async fn forced_wedge(which: Which, beat: &Heartbeat, stop: &CancellationToken) {
    #[cfg(debug_assertions)]
    {
        static WHICH: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        let asked = WHICH.get_or_init(|| std::env::var("AUTH0_RUDDERSTACK_TEST_WEDGE").ok());
        let name = match which {
            Which::Fetch => "fetch",
            Which::Send => "send",
        };
        if asked.as_deref() == Some(name) {
            beat.busy(Duration::from_secs(1));
            stop.cancelled().await;
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = (which, beat, stop);
}

/// A step succeeded: reset the backoff, and clear the error `status` shows once a failing loop recovers.
async fn recovered(t: &TenantRun, store: &Handle, policy: &mut RetryPolicy, which: Which) {
    if policy.is_failing() {
        tracing::info!(tenant = %t.domain, "{} works again", which.name());
        let d = t.domain.clone();
        let _ = store.call(move |s| s.set_error(&d, None)).await;
    }
    policy.succeeded();
}

/// A step failed: ask the policy, report, and either wait or stop the loop.
async fn failure(
    t: &TenantRun,
    store: &Handle,
    policy: &mut RetryPolicy,
    which: Which,
    error: Error,
) -> Result<Next, Error> {
    let text = Chain(&error).to_string();
    let wait = policy.failed(error)?;
    t.telemetry.retry(match which {
        Which::Fetch => "fetch",
        Which::Send => "send",
    });
    tracing::warn!(
        tenant = %t.domain,
        error = %text,
        attempt = policy.attempts,
        retry_in = %humantime::format_duration(Duration::from_millis(wait.as_millis() as u64)),
        "{} failed, will retry; nothing is lost",
        which.name()
    );
    let d = t.domain.clone();
    let _ = store.call(move |s| s.set_error(&d, Some(&format!("{text} (retrying)")))).await;
    Ok(Next::Wait { duration: wait, wake: None })
}

/// Wait as `next` says; false when the loop is finished or shut down.
async fn wait(next: Next, beat: &Heartbeat, stop: &CancellationToken) -> bool {
    match next {
        Next::Again => true,
        Next::Done => false,
        Next::Wait { duration, wake } => {
            beat.sleeping(duration);
            pause(duration, wake.as_deref(), stop).await
        }
    }
}

/// Sleep for `d`, or until woken; false when cancelled.
async fn pause(d: Duration, wake: Option<&Notify>, stop: &CancellationToken) -> bool {
    let woken = async {
        match wake {
            Some(n) => n.notified().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
        _ = woken => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "A loop stopped by such an error starts again after five minutes".
    #[test]
    fn a_stopped_loop_rests_five_minutes() {
        assert_eq!(FAILED_RETRY, Duration::from_secs(5 * 60));
        if std::env::var_os("AUTH0_RUDDERSTACK_TEST_FAILED_RETRY").is_none() {
            assert_eq!(failed_retry(), FAILED_RETRY);
        }
    }
}
