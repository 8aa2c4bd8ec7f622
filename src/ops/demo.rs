//! `demo`: the real daemon (`run`, unchanged) against stand-ins of Auth0 and RudderStack started in the same
//! process, so a newcomer can watch the whole job before having any credentials.
//!
//! The stand-ins are the ones the integration tests hold to both services' documented behaviour
//! ([`crate::standin`]), on ephemeral ports of 127.0.0.1: an Auth0 tenant with the rate limit of Auth0's
//! Essentials plan on `/api/v2/logs` (a bucket of 10, refilled at 100 a minute), tokens that live a minute and
//! log a `seccft` entry when minted, and a RudderStack gateway. The tenant's log starts with the entries of
//! `examples/auth0-logs.json`, re-dated into the last hour, and then grows at `--rate` with varied entries
//! (logins, failed logins, sign-ups, organization changes). `--faults` makes both stand-ins fail some requests
//! the way the real services do (5xx, 429 with `Retry-After`, a RudderStack outage of a few seconds).
//!
//! Nothing here changes what `run` does: the demo writes a config file for itself (so `status` and `metrics`
//! work from another terminal, as for a real daemon), parses it with the same parser, and hands the result to
//! [`pipeline::run`]. At the end it stops generating, lets the pipeline drain (bounded in time), stops it, and
//! checks what the gateway received against what the tenant logged: every entry once, under the messageId the
//! transform derives from its `log_id` ([`transform::message_id`]). Only that check decides the exit status.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::Error;
use crate::config::Config;
use crate::logging;
use crate::pipeline::{self, RunMode};
use crate::standin::auth0::{Bucket, FakeAuth0, FakeOptions, Tenant};
use crate::standin::http::{Reply, Request};
use crate::standin::rudderstack::{self, FakeRudderStack, Refusal};
use crate::transform;

/// The stand-in tenant's domain: it seeds the ids, as a real tenant's does.
pub const DOMAIN: &str = "demo-tenant.example.com";
const CLIENT_ID: &str = "demo-client-id";
const CLIENT_SECRET: &str = "demo-client-secret-not-a-real-one";
const WRITE_KEY: &str = "demo-write-key-not-a-real-one";

/// The entries the log starts with (re-dated into the last hour).
const EXAMPLES: &str = include_str!("../../examples/auth0-logs.json");

/// The most entries a second `--rate` may ask for: at 100 requests a minute of 100 entries, Auth0's
/// Essentials limit lets a reader keep up with about 160 a second, and the demo must be able to drain.
pub const MAX_RATE: f64 = 100.0;

/// How long the pipeline may take to deliver what is left once the demo stops generating.
const DRAIN: Duration = Duration::from_secs(60);
/// How often the demo prints its running count while it generates.
const RUNNING_COUNT_EVERY: Duration = Duration::from_secs(5);

/// What the demo is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Stop after this long; `None` runs until the `stop` token is cancelled (Ctrl-C).
    pub duration: Option<Duration>,
    /// New entries a second.
    pub rate: f64,
    /// Make both stand-ins fail some requests.
    pub faults: bool,
    /// Print every event the gateway accepts on stdout, one compact JSON line each.
    pub show_events: bool,
    /// Keep the state (database, config, metrics) in this directory instead of a temporary one.
    pub state: Option<PathBuf>,
    /// Draw a progress bar instead of progress lines (a terminal).
    pub progress_bar: bool,
}

/// What the demo saw, for its closing summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Entries the tenant logged: those of the example file, the new ones, and one per token minted.
    pub generated: u64,
    /// Of those, the token mints (`seccft`).
    pub token_mints: u64,
    /// Entries the pipeline committed to its outbox.
    pub fetched: u64,
    /// Events the gateway accepted, repeats included.
    pub delivered: u64,
    /// Events the gateway accepted more than once (each extra copy counts).
    pub duplicates: u64,
    /// Logged entries whose event never arrived.
    pub missing: u64,
    /// Accepted events whose messageId belongs to no logged entry.
    pub unexpected: u64,
    /// Entries set aside as dead letters.
    pub dead_letters: u64,
    /// Failed answers the stand-ins gave on purpose (`--faults`).
    pub faults: u64,
    /// 429s from the tenant's rate limit (not faults: a real tenant answers them too).
    pub rate_limited: u64,
}

impl Summary {
    /// Whether every logged entry arrived exactly once, under its deterministic messageId, and nothing else.
    pub fn exactly_once(&self) -> bool {
        self.missing == 0 && self.duplicates == 0 && self.unexpected == 0 && self.dead_letters == 0
    }

    /// The closing lines.
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "demo summary: generated={} token_mints={} fetched={} delivered={} duplicates={} dead_letters={} \
             faults_survived={} rate_limited={}\n",
            self.generated,
            self.token_mints,
            self.fetched,
            self.delivered,
            self.duplicates,
            self.dead_letters,
            self.faults,
            self.rate_limited
        );
        if self.exactly_once() {
            text.push_str(
                "demo result: every generated entry arrived exactly once, with its deterministic messageId\n",
            );
        } else {
            text.push_str(&format!(
                "demo result: NOT exactly once: {} missing, {} duplicates, {} unexpected, {} dead letters\n",
                self.missing, self.duplicates, self.unexpected, self.dead_letters
            ));
        }
        text
    }
}

/// The demo's directory: given, or made under the system's temporary directory and removed at the end.
struct StateDir {
    path: PathBuf,
    temporary: bool,
}

impl StateDir {
    fn open(given: Option<&Path>) -> Result<StateDir, Error> {
        use std::os::unix::fs::DirBuilderExt;
        let Some(path) = given else {
            // A fresh name, created (never reused) with mode 0700: nobody else can plant or read files in it.
            let path = std::env::temp_dir().join(format!(
                "auth0-rudderstack-demo-{}-{:08x}",
                std::process::id(),
                fastrand::u32(..)
            ));
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&path)
                .map_err(|source| Error::Open { path: path.clone(), source })?;
            return Ok(StateDir { path, temporary: true });
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|source| Error::Open { path: path.to_path_buf(), source })?;
        // The stand-ins start empty on new ports each time, so an earlier demo's cursor would point at
        // entries that no longer exist.
        if path.join("state.db").exists() {
            return Err(Error::Usage(format!(
                "--state {}: it already holds a demo's state (state.db); give an empty or new directory",
                path.display()
            )));
        }
        Ok(StateDir { path: path.to_path_buf(), temporary: false })
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A TOML string literal.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The demo's config: the stand-ins, the state in `dir`, quick polling and retries so that a short demo shows
/// something. Everything else is the daemon's default.
fn config_text(dir: &Path, auth0_url: &str, rudderstack_url: &str) -> String {
    let path = |name: &str| quoted(&dir.join(name).display().to_string());
    format!(
        r#"# Written by `auth0-rudderstack demo` so that `status`, `metrics` and `dead-letter list` can read its
# state while it runs. It points at the demo's stand-ins, which exist only as long as the demo does.

[auth0]
domain = {domain}
client_id = {client_id}
client_secret = {client_secret}
base_url = {auth0_url}
start = "oldest"
poll_interval = "1s"
timeout = "5s"

[rudderstack]
data_plane_url = {rudderstack_url}
write_key = {write_key}
timeout = "5s"

[state]
path = {state}

[retry]
initial_backoff = "200ms"
max_backoff = "2s"

[metrics]
textfile = {metrics}
interval = "5s"
"#,
        domain = quoted(DOMAIN),
        client_id = quoted(CLIENT_ID),
        client_secret = quoted(CLIENT_SECRET),
        auth0_url = quoted(auth0_url),
        write_key = quoted(WRITE_KEY),
        rudderstack_url = quoted(rudderstack_url),
        state = path("state.db"),
        metrics = path("metrics.prom"),
    )
}

/// Write the config file (mode 0600: it holds the stand-ins' credentials, as a real one holds real ones).
/// Never through a symlink: `--state` may name a shared directory, where another user could plant one at
/// `config.toml` to have the demo overwrite a file of theirs choosing.
fn write_config(path: &Path, text: &str) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| Error::Open { path: path.to_path_buf(), source })?;
    file.write_all(text.as_bytes()).map_err(|source| Error::Open { path: path.to_path_buf(), source })
}

/// The new entry number `n`: a cycle of logins (some into an organization), failed logins, sign-ups and
/// organization changes, with details that vary with `n` so no two look alike. The stand-in gives it its
/// `date`, `log_id` and `_id`.
pub fn generated_entry(n: u64) -> Value {
    let user = n % 23;
    let email = format!("user{user}@example.com");
    let org = format!("org_demo{}", n % 3);
    let agents =
        ["Chrome 134.0.0 / Windows 10.0.0", "Safari 18.3 / Mac OS X 15.3", "Firefox 136.0 / Linux 0.0.0"];
    let agent = agents[(n % 3) as usize];
    let mut entry = json!({
        "description": "",
        "connection": "Username-Password-Authentication",
        "connection_id": "con_demo0123456789",
        "client_id": "demoAppClientId0123456789abcdef",
        "client_name": "Demo App",
        "ip": format!("203.0.113.{}", 1 + n % 250),
        "user_agent": agent,
        "hostname": DOMAIN,
        "user_id": format!("auth0|demo{user}"),
        "user_name": email,
        "strategy": "auth0",
        "strategy_type": "database",
        "details": { "prompts": [], "stats": { "loginsCount": 1 + n % 40 } },
        "isMobile": n.is_multiple_of(5),
        "tenant_name": "demo-tenant",
        "$event_schema": { "version": "1.0.0" },
    });
    match n % 8 {
        0 | 3 | 6 => {
            entry["type"] = json!("s");
            if n.is_multiple_of(2) {
                entry["organization_id"] = json!(org);
                entry["organization_name"] = json!(format!("Demo Org {}", n % 3));
            }
        }
        1 => {
            entry["type"] = json!("f");
            entry["description"] = json!("Wrong email or password.");
        }
        4 => {
            entry["type"] = json!("fp");
            entry["description"] = json!("Wrong email or password.");
        }
        2 => {
            entry["type"] = json!("ss");
            entry["user_id"] = json!(format!("auth0|demo-new{n}"));
            entry["user_name"] = json!(format!("new{n}@example.com"));
            entry["details"] = json!({ "body": { "email": format!("new{n}@example.com"), "connection": "Username-Password-Authentication" } });
        }
        5 => {
            // What RudderStack's Auth0 source turns into a `group` call.
            entry["type"] = json!("sapi");
            entry["description"] = json!("Add members to an organization");
            entry["details"] = json!({
                "request": {
                    "method": "post",
                    "path": format!("/api/v2/organizations/{org}/members"),
                    "body": { "members": [format!("auth0|demo{user}")] }
                },
                "response": { "statusCode": 204 }
            });
        }
        _ => {
            entry["type"] = json!("sapi");
            entry["description"] = json!("Create an organization");
            entry["details"] = json!({
                "request": {
                    "method": "post",
                    "path": "/api/v2/organizations",
                    "body": { "name": format!("demo-org-{n}"), "display_name": format!("Demo Org {n}") }
                },
                "response": { "statusCode": 201 }
            });
        }
    }
    entry
}

/// Log the example file's entries, in date order, spread over the hour before `now`.
fn seed(tenant: &Tenant, now: DateTime<Utc>) -> u64 {
    let mut entries: Vec<Value> = serde_json::from_str(EXAMPLES).unwrap_or_default();
    entries.sort_by(|a, b| a["date"].as_str().cmp(&b["date"].as_str()));
    let n = entries.len() as i32;
    for (i, entry) in entries.into_iter().enumerate() {
        let at =
            now - chrono::Duration::minutes(60) + chrono::Duration::minutes(60) * (i as i32 + 1) / (n + 1);
        tenant.push_dated(at, entry);
    }
    n as u64
}

/// The faults of `--faults` on the Auth0 side: the first token request gets a 503, and some log reads a 500 or
/// a 429 with `Retry-After` (a cycle of 13, so no read fails twice in a row).
fn auth0_faults(auth0: &FakeAuth0, count: Arc<AtomicU64>) {
    let tokens = AtomicU64::new(0);
    auth0.set_hook(move |req: &Request, n: u64| {
        let fault = match req.path.as_str() {
            "/oauth/token" if tokens.fetch_add(1, Ordering::SeqCst) == 0 => Some(Reply::json(
                503,
                &json!({"statusCode": 503, "error": "Service Unavailable", "message": "Service Unavailable"}),
            )),
            "/api/v2/logs" if n % 13 == 6 => Some(Reply::json(
                500,
                &json!({"statusCode": 500, "error": "Internal Server Error", "message": "Internal Server Error"}),
            )),
            "/api/v2/logs" if n % 13 == 11 => Some(
                Reply::json(
                    429,
                    &json!({
                        "statusCode": 429, "error": "Too Many Requests",
                        "message": "Global limit has been reached", "errorCode": "too_many_requests"
                    }),
                )
                .header("retry-after", "1"),
            ),
            _ => None,
        };
        if fault.is_some() {
            count.fetch_add(1, Ordering::SeqCst);
        }
        fault
    });
}

/// The faults of `--faults` on the RudderStack side: some batches get the gateway's own 429 (with the
/// `Retry-After` a proxy in front of it may add) or 504; nothing of them is stored, as with the real gateway.
/// The cycle starts with a refusal, so that even a short demo that sends few batches meets one.
fn rudderstack_faults(rudder: &FakeRudderStack, count: Arc<AtomicU64>) {
    rudder.hook(move |_req: &Request, n: usize| {
        let fault = match n % 7 {
            0 => Some(Refusal::TooManyRequests.reply().header("retry-after", "1")),
            3 => Some(Refusal::GatewayTimeout.reply()),
            _ => None,
        };
        if fault.is_some() {
            count.fetch_add(1, Ordering::SeqCst);
        }
        fault
    });
}

/// Debug builds only: with `AUTH0_RUDDERSTACK_TEST_DEMO_LOSE` set, the RudderStack stand-in answers the first
/// batch 200 without storing it, as a gateway that loses what it acknowledged would. Nothing in the daemon can
/// notice that; the demo's closing check must, and the tests use this to see it fail (exit 5).
fn lying_gateway(rudder: &FakeRudderStack) {
    #[cfg(debug_assertions)]
    if std::env::var_os("AUTH0_RUDDERSTACK_TEST_DEMO_LOSE").is_some() {
        rudder.hook(|_req: &Request, n: usize| (n == 0).then(|| Reply::text(200, "OK")));
    }
    let _ = rudder;
}

/// When the RudderStack outage of `--faults` starts, and how long it lasts.
fn outage_window(duration: Option<Duration>) -> (Duration, Duration) {
    match duration {
        Some(d) => (
            (d / 4).min(Duration::from_secs(10)),
            (d / 4).clamp(Duration::from_secs(1), Duration::from_secs(4)),
        ),
        None => (Duration::from_secs(10), Duration::from_secs(4)),
    }
}

/// The command by which another terminal reads this demo's state.
fn command_for(config: &Path, what: &str) -> String {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "auth0-rudderstack".into());
    format!("{exe} --config {} {what}", config.display())
}

/// Run the demo until `duration` passes or `stop` is cancelled, then drain, check and summarise.
pub async fn run(options: Options, stop: CancellationToken) -> Result<Summary, Error> {
    if !(options.rate.is_finite() && options.rate > 0.0 && options.rate <= MAX_RATE) {
        return Err(Error::Usage(format!(
            "--rate: expected entries a second, more than 0 and at most {MAX_RATE}, got {}",
            options.rate
        )));
    }
    let dir = StateDir::open(options.state.as_deref())?;

    let listen = |e: std::io::Error| Error::Open { path: PathBuf::from("127.0.0.1:0"), source: e };
    let auth0 = FakeAuth0::try_start_with(
        FakeOptions {
            domain: DOMAIN.into(),
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            audience: format!("https://{DOMAIN}/api/v2/"),
            expires_in: 60,
            bucket: Some(Bucket { burst: 10, per_second: 100.0 / 60.0 }),
            log_token_mints: true,
            ..FakeOptions::default()
        },
        None,
    )
    .await
    .map_err(listen)?;
    let rudder = FakeRudderStack::try_start_with(
        rudderstack::Options {
            write_keys: vec![WRITE_KEY.into()],
            http_source_keys: Vec::new(),
            disabled_keys: Vec::new(),
            keep_events: false,
            ..rudderstack::Options::default()
        },
        None,
    )
    .await
    .map(Arc::new)
    .map_err(listen)?;

    // Every accepted event's messageId, with how often it came; and, asked for, the event itself.
    let received: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let seen = received.clone();
    let show = options.show_events;
    rudder.set_listener(Some(Arc::new(move |event: &Value| {
        let id = event.get("messageId").and_then(Value::as_str).unwrap_or_default().to_string();
        *seen.lock().unwrap_or_else(|p| p.into_inner()).entry(id).or_default() += 1;
        if show {
            let line = serde_json::to_string(event).unwrap_or_default();
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        }
    })));

    let tenant = auth0.tenant();
    seed(&tenant, Utc::now());

    let faults = Arc::new(AtomicU64::new(0));
    if options.faults {
        auth0_faults(&auth0, faults.clone());
        rudderstack_faults(&rudder, faults.clone());
    }
    lying_gateway(&rudder);

    let config_path = dir.path.join("config.toml");
    let text = config_text(&dir.path, &auth0.url(), &rudder.url());
    write_config(&config_path, &text)?;
    // Parsed from the text just written, with no environment: a secret exported for a real tenant must not
    // replace the stand-ins'.
    let (config, _) = Config::parse(&text, &config_path, |_: &str| None)?;

    logging::note(&format!(
        "demo: Auth0 stand-in for {DOMAIN} at {}, RudderStack stand-in at {}",
        auth0.url(),
        rudder.url()
    ));
    logging::note(&format!("demo: state in {}; from another terminal:", dir.path.display()));
    logging::note(&format!("demo:   {}", command_for(&config_path, "status")));
    logging::note(&format!("demo:   {}", command_for(&config_path, "metrics")));
    let until =
        options.duration.map(|d| format!("for {}", humantime::format_duration(d))).unwrap_or_default();
    logging::note(&format!(
        "demo: {} new entries a second {until}{}; Ctrl-C ends it{}",
        options.rate,
        if options.faults { ", with faults" } else { "" },
        if options.show_events { "; events on stdout" } else { "" }
    ));

    let pipeline_stop = CancellationToken::new();
    let mut pipeline = tokio::spawn(pipeline::run(
        Arc::new(config),
        RunMode::Daemon,
        pipeline_stop.clone(),
        pipeline::Options { progress_bar: options.progress_bar },
    ));

    let generating = CancellationToken::new();
    let generator = tokio::spawn(generate(tenant.clone(), options.rate, generating.clone()));
    let outage = options.faults.then(|| {
        let (after, lasting) = outage_window(options.duration);
        let (rudder, done) = (rudder.clone(), generating.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = done.cancelled() => return,
                _ = tokio::time::sleep(after) => {}
            }
            rudder.set_outage(true);
            tokio::select! {
                _ = done.cancelled() => {}
                _ = tokio::time::sleep(lasting) => {}
            }
            rudder.set_outage(false);
        })
    });

    let wait_end = async {
        match options.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(wait_end);
    // The daemon itself logs a caught-up tenant only now and then, so the demo shows its own running count.
    let running_count = async {
        let mut tick = tokio::time::interval(RUNNING_COUNT_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            let delivered: u64 = received.lock().unwrap_or_else(|p| p.into_inner()).values().sum();
            logging::note(&format!(
                "demo: {} entries in the Auth0 log so far, {delivered} events delivered to RudderStack",
                tenant.entries().len()
            ));
        }
    };
    let mut early: Option<Result<pipeline::Summary, pipeline::Error>> = None;
    tokio::select! {
        _ = running_count => {}
        _ = &mut wait_end => {}
        _ = stop.cancelled() => {}
        ended = &mut pipeline => {
            early = Some(ended.map_err(|e| pipeline::Error::Internal(e.to_string())).and_then(|r| r));
        }
    }

    // Stop the log growing (no more token-mint entries either), end any outage, and let the pipeline deliver
    // what it has not yet.
    generating.cancel();
    let _ = generator.await;
    if let Some(task) = outage {
        let _ = task.await;
    }
    rudder.set_outage(false);
    tenant.update(|o| o.log_token_mints = false);
    let expected: Vec<String> = tenant
        .entries()
        .iter()
        .map(|e| transform::message_id(DOMAIN, e["log_id"].as_str().unwrap_or_default()).to_string())
        .collect();
    let ran = match early {
        Some(ended) => ended,
        None => {
            logging::note(&format!(
                "demo: stopped generating; waiting up to {} for the last entries to arrive",
                humantime::format_duration(DRAIN)
            ));
            let deadline = tokio::time::Instant::now() + DRAIN;
            let last = tenant.entries().last().and_then(|e| e["log_id"].as_str().map(str::to_string));
            let state = dir.path.join("state.db");
            // Opened (and probed) once, then only read.
            let mut store = None;
            loop {
                let all = {
                    let got = received.lock().unwrap_or_else(|p| p.into_inner());
                    expected.iter().all(|id| got.contains_key(id))
                };
                if all || tokio::time::Instant::now() >= deadline || pipeline.is_finished() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                // Everything fetched and nothing left to send: waiting longer cannot bring what is missing.
                if store.is_none() {
                    store = crate::store::Store::open_existing(&state).ok();
                }
                if store.as_ref().is_some_and(|s| drained(s, last.as_deref())) {
                    break;
                }
            }
            pipeline_stop.cancel();
            pipeline.await.map_err(|e| pipeline::Error::Internal(e.to_string())).and_then(|r| r)
        }
    };
    let ran = ran?;

    let got = received.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let expected_set: std::collections::HashSet<&str> = expected.iter().map(String::as_str).collect();
    let entries = tenant.entries();
    let summary = Summary {
        generated: entries.len() as u64,
        token_mints: entries.iter().filter(|e| e["type"] == "seccft").count() as u64,
        fetched: ran.tenants.iter().map(|t| t.fetched).sum(),
        delivered: got.values().sum(),
        duplicates: got.values().map(|c| c.saturating_sub(1)).sum(),
        missing: expected.iter().filter(|id| !got.contains_key(id.as_str())).count() as u64,
        unexpected: got.keys().filter(|id| !expected_set.contains(id.as_str())).count() as u64,
        dead_letters: ran.states.iter().map(|s| s.dead_letters).sum(),
        faults: faults.load(Ordering::SeqCst) + rudder.count(503) as u64,
        rate_limited: tenant.rate_limited(),
    };
    if !dir.temporary {
        logging::note(&format!("demo: the state stays in {}", dir.path.display()));
    }
    drop(dir);
    Ok(summary)
}

/// Whether the state says the pipeline is done: its cursor at the log's last entry and its outbox empty.
fn drained(store: &crate::store::Store, last: Option<&str>) -> bool {
    let Ok(s) = store.snapshot(DOMAIN) else { return false };
    s.outbox_depth == 0 && s.cursor.is_some() && s.cursor.as_deref() == last
}

/// Log a new entry every `1 / rate` seconds until `stop`.
async fn generate(tenant: Tenant, rate: f64, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        tenant.push_dated(Utc::now(), generated_entry(n));
        n += 1;
    }
}
