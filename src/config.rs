//! The TOML configuration: its sections, defaults, bounds and validation, with messages that name the file
//! and the key.
//!
//! Operators script against these key names, so they are fixed by the design, and every section denies
//! unknown keys: a typo must be an error that names the key and the file, never a silently ignored line.
//!
//! Each section is deserialised once, straight into its final type. Values that need checking are checked by
//! the deserializer of their field (durations and numbers against documented ranges, URLs, the start point),
//! so a bad value is reported with its dotted key and line; what needs more than one field (secrets from the
//! environment or a file, the default base URL and audience, plain HTTP outside loopback, the example's
//! placeholders) is resolved in one pass afterwards. The document is first read as a spanned TOML tree so
//! that the two forms can be told apart before anything is typed: one tenant in `[auth0]`, or several in
//! `[[tenant]]` tables, each of which may override the default `[rudderstack]` destination key by key and
//! bring its own `[tenant.privacy]`.
//!
//! Secrets are [`SecretString`]s from the first moment, so `Debug` output and panics cannot show them, and
//! every secret is registered with the log sanitiser as soon as it is known.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use url::Url;

use crate::entry::LogId;
use crate::http::CaBundle;
use crate::logging::clip;

/// Environment variable that may hold `auth0.client_secret` (single-tenant form).
pub const ENV_CLIENT_SECRET: &str = "AUTH0_CLIENT_SECRET";
/// Environment variable that may hold the default `rudderstack.write_key`.
pub const ENV_WRITE_KEY: &str = "RUDDERSTACK_WRITE_KEY";
/// Environment variable that may hold the `[privacy]` hash key.
pub const ENV_HASH_KEY: &str = "AUTH0_RUDDERSTACK_HASH_KEY";

/// The example config's values, refused so that a copied example never runs against a made-up tenant.
const PLACEHOLDER_PREFIX: &str = "REPLACE_WITH_";
const PLACEHOLDER_DOMAIN: &str = "example-tenant.us.auth0.com";
const PLACEHOLDER_DATA_PLANE: &str = "example-dataplane.rudderstack.com";

/// A configuration that cannot be used. Every variant is fatal: the daemon exits 2 and the operator fixes the
/// file. The messages name the file and, where there is one, the dotted key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: crate::files::ReadError,
    },
    /// The file is not valid TOML, or a key is unknown, missing or of the wrong type.
    #[error("config file {}: {key}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The dotted key, or `(file)` when the error is not tied to one.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A key parsed but its value cannot work.
    #[error("config file {}: {key}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The dotted key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl Error {
    /// Configuration errors never heal by retrying.
    pub fn is_transient(&self) -> bool {
        false
    }

    /// The dotted key the error is about.
    pub fn key(&self) -> &str {
        match self {
            Error::Read { .. } => "(file)",
            Error::Parse { key, .. } | Error::Invalid { key, .. } => key,
        }
    }
}

/// Where a state with no cursor begins reading the tenant's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Forward only what is logged after start-up: the newest existing entry becomes the cursor.
    Now,
    /// Forward everything Auth0 still retains, beginning with the oldest entry.
    Oldest,
    /// Forward entries dated at or after this time, beginning with the first one found.
    Time(DateTime<Utc>),
    /// Forward entries after this `log_id` (exclusive, as Auth0's `from` is).
    LogId(LogId),
}

impl std::fmt::Display for Start {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Start::Now => f.write_str("now"),
            Start::Oldest => f.write_str("oldest"),
            Start::Time(t) => write!(f, "{}", crate::entry::format_date(t)),
            Start::LogId(id) => write!(f, "after log_id {id}"),
        }
    }
}

/// What to do when the cursor's entry has aged out of Auth0's retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExpiredCheckpoint {
    /// Report the gap and continue from the oldest entry Auth0 still has.
    Oldest,
    /// Report the gap and stop fetching until an operator intervenes.
    Stop,
}

/// `auth0.poll_interval`: how long the fetcher waits after Auth0 had nothing new.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PollInterval {
    /// As often as `poll_budget_share` of `max_requests_per_second` allows, within [`AUTO_POLL_MIN`] and
    /// [`AUTO_POLL_MAX`] (see `pipeline::poll`).
    #[default]
    Auto,
    /// This long, whatever the budget.
    Every(Duration),
}

/// The shortest wait `poll_interval = "auto"` chooses.
pub const AUTO_POLL_MIN: Duration = Duration::from_secs(1);
/// The longest wait `poll_interval = "auto"` chooses.
pub const AUTO_POLL_MAX: Duration = Duration::from_secs(60);
/// The smallest budget share, configured or halved under pressure.
pub const MIN_POLL_SHARE: f64 = 0.01;

impl Auth0 {
    /// The wait after an empty page at this share of the request budget: the configured duration, or, for
    /// `"auto"`, `1 / (share × max_requests_per_second)` within [`AUTO_POLL_MIN`] and [`AUTO_POLL_MAX`].
    pub fn idle_interval(&self, share: f64) -> Duration {
        match self.poll_interval {
            PollInterval::Every(d) => d,
            PollInterval::Auto => {
                let rate = share.max(MIN_POLL_SHARE) * self.max_requests_per_second;
                let secs = if rate.is_finite() && rate > 0.0 { 1.0 / rate } else { f64::INFINITY };
                Duration::from_secs_f64(secs.clamp(AUTO_POLL_MIN.as_secs_f64(), AUTO_POLL_MAX.as_secs_f64()))
            }
        }
    }
}

impl std::fmt::Display for PollInterval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PollInterval::Auto => f.write_str("auto"),
            PollInterval::Every(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

/// How events reach RudderStack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Transform here and POST `{"batch": [...]}` to `/v1/batch`.
    Batch,
    /// POST Log Streams wrappers to `/v1/webhook` and let RudderStack's Auth0 source transform them.
    Webhook,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Batch => "batch",
            Mode::Webhook => "webhook",
        })
    }
}

/// Which form the file is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// One tenant in `[auth0]`.
    Single,
    /// `[[tenant]]` tables.
    Tenants,
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from, for messages.
    pub path: PathBuf,
    /// Which form the file uses.
    pub form: Form,
    /// Every tenant, in file order (one in the `[auth0]` form).
    pub tenants: Vec<Tenant>,
    /// `[state]`.
    pub state: State,
    /// `[retry]`.
    pub retry: Retry,
    /// `[metrics]`.
    pub metrics: Metrics,
}

/// One tenant: where its log comes from, where it goes, and what is done to it on the way.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// How messages name its section: `auth0` or `tenant[N]` (counting from 1).
    pub section: String,
    /// Its Auth0 keys.
    pub auth0: Auth0,
    /// Its destination: the default `[rudderstack]` with the tenant's own keys laid over it.
    pub rudderstack: RudderStack,
    /// Its `[privacy]` rules (its own, else the global ones), when any.
    pub privacy: Option<PrivacyKeys>,
}

impl Tenant {
    /// The tenant's domain, which keys its state and seeds its ids.
    pub fn domain(&self) -> &str {
        &self.auth0.domain
    }
}

/// `[auth0]` or one `[[tenant]]`: the tenant and how to read its log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth0 {
    /// The tenant's canonical domain; it keys the state and seeds the deterministic ids.
    #[serde(deserialize_with = "domain")]
    pub domain: String,
    /// The machine-to-machine application's client id.
    #[serde(deserialize_with = "non_empty")]
    pub client_id: String,
    #[serde(default, rename = "client_secret")]
    client_secret_inline: Option<SecretString>,
    /// A file holding the client secret (e.g. a systemd credential).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// The client secret, from the environment, the file or the key (resolved after parsing).
    #[serde(skip, default = "unset_secret")]
    pub client_secret: SecretString,
    #[serde(default, rename = "base_url", deserialize_with = "optional_url")]
    base_url_given: Option<Url>,
    /// Where `/oauth/token` and `/api/v2/logs` are called (`https://{domain}` unless set).
    #[serde(skip, default = "unset_url")]
    pub base_url: Url,
    #[serde(default, rename = "audience")]
    audience_given: Option<String>,
    /// The token audience (`https://{domain}/api/v2/` unless set).
    #[serde(skip)]
    pub audience: String,
    /// Where a fresh state starts.
    #[serde(default = "default_start", deserialize_with = "start")]
    pub start: Start,
    /// How long to wait after Auth0 had nothing new: `"auto"` (from `poll_budget_share`) or a duration.
    #[serde(default, deserialize_with = "poll_interval")]
    pub poll_interval: PollInterval,
    /// The share of `max_requests_per_second` that idle polling may use when `poll_interval = "auto"`.
    #[serde(default = "default_poll_budget_share", deserialize_with = "share")]
    pub poll_budget_share: f64,
    /// Type codes to forward; empty forwards all (unless `categories` names some).
    #[serde(default, deserialize_with = "codes")]
    pub log_types: Vec<String>,
    /// Type codes never to forward; wins over `log_types` and `categories`.
    #[serde(default, deserialize_with = "codes")]
    pub exclude_types: Vec<String>,
    /// Log Streams category names, each standing for its documented type codes.
    #[serde(default)]
    pub categories: Vec<String>,
    /// Whether the daemon's own token exchanges (`seccft` entries with its `client_id`) are forwarded.
    #[serde(default = "yes")]
    pub forward_own_logs: bool,
    /// Entries per request, at most 100.
    #[serde(default = "default_page_size", deserialize_with = "count::<_, u32, 1, 100>")]
    pub page_size: u32,
    /// The pace of Management API requests.
    #[serde(default = "default_rps", deserialize_with = "rate")]
    pub max_requests_per_second: f64,
    /// The plan's log retention.
    #[serde(default = "default_retention", deserialize_with = "duration::<_, 3_600_000, 34_560_000_000>")]
    pub retention: Duration,
    /// What to do when the cursor's entry is gone.
    #[serde(default = "default_on_expired")]
    pub on_expired_checkpoint: OnExpiredCheckpoint,
    /// The limit for one HTTP request to Auth0, body included.
    #[serde(default = "default_timeout", deserialize_with = "duration::<_, 100, 600_000>")]
    pub timeout: Duration,
    /// The largest `/api/v2/logs` answer read, after decompression.
    #[serde(
        default = "default_max_page_bytes",
        deserialize_with = "count::<_, usize, 1_048_576, 268_435_456>"
    )]
    pub max_page_bytes: usize,
    /// Allow `http://` to a host other than this machine (the secret and tokens then travel in clear).
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// A PEM bundle of extra CAs to trust, beside the system's and the web PKI roots.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// The certificates of `tls_ca_file`.
    #[serde(skip)]
    pub tls_ca: Option<CaBundle>,
    /// The compiled filter (`log_types`, `exclude_types`, `categories`, `forward_own_logs`).
    #[serde(skip)]
    pub filter: Filter,
}

/// `[rudderstack]`, or a tenant's own `[tenant.rudderstack]` laid over it: the data plane and its batching.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RudderStack {
    /// The data plane's base URL.
    #[serde(deserialize_with = "url")]
    pub data_plane_url: Url,
    #[serde(default, rename = "write_key")]
    write_key_inline: Option<SecretString>,
    /// A file holding the write key (e.g. a systemd credential).
    #[serde(default)]
    pub write_key_file: Option<PathBuf>,
    /// The source's write key (resolved after parsing).
    #[serde(skip, default = "unset_secret")]
    pub write_key: SecretString,
    /// Batch or webhook delivery.
    #[serde(default = "default_mode")]
    pub mode: Mode,
    /// Events per request.
    #[serde(default = "default_max_batch_events", deserialize_with = "count::<_, usize, 1, 10_000>")]
    pub max_batch_events: usize,
    /// Bytes per request body.
    #[serde(default = "default_max_batch_bytes", deserialize_with = "count::<_, usize, 1_024, 4_096_000>")]
    pub max_batch_bytes: usize,
    /// Bytes per event; a larger event is dead-lettered.
    #[serde(default = "default_max_event_bytes", deserialize_with = "count::<_, usize, 256, 4_096_000>")]
    pub max_event_bytes: usize,
    /// The limit for one HTTP request to RudderStack.
    #[serde(default = "default_timeout", deserialize_with = "duration::<_, 100, 600_000>")]
    pub timeout: Duration,
    /// Allow `http://` to a host other than this machine (the write key then travels in clear).
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// A PEM bundle of extra CAs to trust.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// The certificates of `tls_ca_file`.
    #[serde(skip)]
    pub tls_ca: Option<CaBundle>,
}

/// `[privacy]` or `[tenant.privacy]`: what is hashed, masked, dropped or truncated before an entry is stored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyKeys {
    /// Keys whose values become HMAC-SHA256 hex.
    #[serde(default, deserialize_with = "names")]
    pub hash: Vec<String>,
    /// Keys whose values become a fixed mask.
    #[serde(default, deserialize_with = "names")]
    pub mask: Vec<String>,
    /// Keys removed.
    #[serde(default, deserialize_with = "names")]
    pub drop: Vec<String>,
    /// Truncate IP addresses (IPv4 /24, IPv6 /48).
    #[serde(default)]
    pub truncate_ip: bool,
    /// A file holding the hash key (else the environment variable `AUTH0_RUDDERSTACK_HASH_KEY`).
    #[serde(default)]
    pub hash_key_file: Option<PathBuf>,
    /// The rules, compiled with the key (resolved after parsing; the key itself is not kept).
    #[serde(skip)]
    pub compiled: Option<std::sync::Arc<crate::privacy::Privacy>>,
}

impl PrivacyKeys {
    /// Whether any rule is set.
    pub fn is_active(&self) -> bool {
        !(self.hash.is_empty() && self.mask.is_empty() && self.drop.is_empty()) || self.truncate_ip
    }

    /// The compiled rules, when any rule is set.
    pub fn rules(&self) -> Option<&std::sync::Arc<crate::privacy::Privacy>> {
        self.compiled.as_ref().filter(|p| !p.is_noop())
    }
}

/// `[state]`: the SQLite file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// The database file (a relative path is relative to the working directory).
    #[serde(default = "default_state_path", deserialize_with = "non_empty_path")]
    pub path: PathBuf,
    /// The fetcher pauses while a tenant's outbox holds this many entries.
    #[serde(default = "default_max_outbox", deserialize_with = "count::<_, u64, 1, 1_000_000_000>")]
    pub max_outbox_entries: u64,
    /// How hard each commit waits for the disk.
    #[serde(default)]
    pub synchronous: crate::store::Synchronous,
}

/// `[retry]`: backoff after transient failures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// The first wait after a failure.
    #[serde(default = "default_initial_backoff", deserialize_with = "duration::<_, 10, 3_600_000>")]
    pub initial_backoff: Duration,
    /// The longest wait between two attempts.
    #[serde(default = "default_max_backoff", deserialize_with = "duration::<_, 10, 3_600_000>")]
    pub max_backoff: Duration,
    /// How long `sync` keeps failing before it gives up with exit 1. `run` never gives up.
    #[serde(default = "default_give_up", deserialize_with = "duration::<_, 1_000, 604_800_000>")]
    pub sync_give_up_after: Duration,
}

/// `[metrics]`: the Prometheus textfile `run` keeps up to date.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Where `run` writes the metrics (node_exporter's textfile collector); none when unset.
    #[serde(default)]
    pub textfile: Option<PathBuf>,
    /// How often the file is rewritten.
    #[serde(default = "default_metrics_interval", deserialize_with = "duration::<_, 1_000, 3_600_000>")]
    pub interval: Duration,
}

/// Which entries are forwarded, compiled from `log_types`, `exclude_types`, `categories` and
/// `forward_own_logs`. A filtered entry still moves the cursor and is counted.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    include: HashSet<String>,
    exclude: HashSet<String>,
    own_client_id: Option<String>,
}

impl Filter {
    /// Whether an entry of this type (and `client_id`) is forwarded.
    pub fn keeps(&self, kind: Option<&str>, client_id: Option<&str>) -> bool {
        if let Some(k) = kind
            && self.exclude.contains(k)
        {
            return false;
        }
        if let Some(own) = &self.own_client_id
            && kind == Some("seccft")
            && client_id == Some(own.as_str())
        {
            return false;
        }
        self.include.is_empty() || kind.is_some_and(|k| self.include.contains(k))
    }

    /// Whether every entry is forwarded.
    pub fn is_everything(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty() && self.own_client_id.is_none()
    }

    /// The active rules in words, for `status`.
    pub fn describe(&self) -> String {
        let sorted = |s: &HashSet<String>| {
            let mut v: Vec<&str> = s.iter().map(String::as_str).collect();
            v.sort_unstable();
            v.join(",")
        };
        let mut parts = Vec::new();
        if !self.include.is_empty() {
            parts.push(format!("only types {}", sorted(&self.include)));
        }
        if !self.exclude.is_empty() {
            parts.push(format!("never types {}", sorted(&self.exclude)));
        }
        if self.own_client_id.is_some() {
            parts.push("not the daemon's own seccft entries".to_string());
        }
        if parts.is_empty() { "everything".into() } else { parts.join("; ") }
    }
}

fn unset_secret() -> SecretString {
    SecretString::from(String::new())
}
fn unset_url() -> Url {
    Url::parse("https://unset.invalid/").expect("a valid constant URL")
}
fn yes() -> bool {
    true
}
fn default_start() -> Start {
    Start::Now
}
/// A fifth of the budget: every 3.1 s at the default pace, leaving four fifths for catch-up and for the
/// tenant's other Management API callers.
fn default_poll_budget_share() -> f64 {
    0.2
}
fn default_page_size() -> u32 {
    100
}
/// Essentials and Professional plans allow 100 `/logs` requests a minute; stay just under it.
fn default_rps() -> f64 {
    1.6
}
fn default_retention() -> Duration {
    Duration::from_secs(10 * 86_400)
}
fn default_on_expired() -> OnExpiredCheckpoint {
    OnExpiredCheckpoint::Oldest
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
/// Auth0 pages hold at most 100 entries of a few KB; 32 MiB leaves room for absurdly large `details`.
fn default_max_page_bytes() -> usize {
    32 << 20
}
fn default_mode() -> Mode {
    Mode::Batch
}
fn default_max_batch_events() -> usize {
    100
}
/// The gateway's default request limit is 4,000 KiB; keep a little under it.
fn default_max_batch_bytes() -> usize {
    4_000_000
}
/// RudderStack Cloud documents 32 KB per event.
fn default_max_event_bytes() -> usize {
    32_000
}
fn default_state_path() -> PathBuf {
    PathBuf::from("auth0-rudderstack.db")
}
fn default_max_outbox() -> u64 {
    1_000_000
}
fn default_initial_backoff() -> Duration {
    Duration::from_secs(1)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(60)
}
fn default_give_up() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_metrics_interval() -> Duration {
    Duration::from_secs(15)
}

impl Default for State {
    fn default() -> Self {
        State {
            path: default_state_path(),
            max_outbox_entries: default_max_outbox(),
            synchronous: crate::store::Synchronous::default(),
        }
    }
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            sync_give_up_after: default_give_up(),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics { textfile: None, interval: default_metrics_interval() }
    }
}

impl Auth0 {
    /// An `[auth0]` section with every default, for embedding the library and for tests.
    pub fn new(domain: &str, client_id: &str, client_secret: &str, base_url: Url) -> Result<Auth0, String> {
        let text = format!("domain = {}\nclient_id = {}\n", toml_str(domain), toml_str(client_id));
        let mut a: Auth0 = toml::from_str(&text).map_err(|e| e.message().to_string())?;
        a.client_secret = SecretString::from(client_secret.to_string());
        a.base_url_given = Some(base_url);
        a.derive();
        Ok(a)
    }

    /// Fill in what follows from the other keys: base URL, audience, filter.
    fn derive(&mut self) {
        self.base_url = self.base_url_given.clone().unwrap_or_else(|| {
            Url::parse(&format!("https://{}", self.domain)).unwrap_or_else(|_| unset_url())
        });
        self.audience =
            self.audience_given.clone().unwrap_or_else(|| format!("https://{}/api/v2/", self.domain));
        let mut include: HashSet<String> = self.log_types.iter().cloned().collect();
        for name in &self.categories {
            include.extend(
                crate::transform::category_codes(name).unwrap_or_default().iter().map(|c| c.to_string()),
            );
        }
        self.filter = Filter {
            include,
            exclude: self.exclude_types.iter().cloned().collect(),
            own_client_id: (!self.forward_own_logs).then(|| self.client_id.clone()),
        };
    }
}

impl RudderStack {
    /// A `[rudderstack]` section with every default, for embedding the library and for tests.
    pub fn new(data_plane_url: Url, write_key: &str, mode: Mode) -> Result<RudderStack, String> {
        let text = format!("data_plane_url = {}\nmode = \"{mode}\"\n", toml_str(data_plane_url.as_str()));
        let mut r: RudderStack = toml::from_str(&text).map_err(|e| e.message().to_string())?;
        r.write_key = SecretString::from(write_key.to_string());
        Ok(r)
    }
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Sources of values the file does not hold: the environment, and files named by `*_file` keys.
pub trait Environment {
    /// An environment variable, when set and not empty.
    fn var(&self, name: &str) -> Option<String>;
}

impl<F: Fn(&str) -> Option<String>> Environment for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// The process environment.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

/// Resolution context: the file being read, its text (for line numbers), the environment, and warnings.
struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    env: &'a dyn Environment,
    warnings: Vec<String>,
}

impl Ctx<'_> {
    fn invalid(&self, key: &str, message: impl Into<String>) -> Error {
        Error::Invalid { path: self.path.to_path_buf(), key: key.to_string(), message: message.into() }
    }

    fn parse_error(&self, key: &str, message: impl Into<String>) -> Error {
        Error::Parse { path: self.path.to_path_buf(), key: key.to_string(), message: message.into() }
    }

    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())].matches('\n').count() + 1
    }

    /// Deserialise one section, naming errors by `prefix.key` and line.
    fn section<T: DeserializeOwned>(&self, prefix: &str, value: Spanned<DeValue<'_>>) -> Result<T, Error> {
        let de = ValueDeserializer::from(value);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let mut key = e.path().to_string();
            let inner = e.into_inner();
            let message = one_line(inner.message());
            // A missing field is reported at its parent table, whose line says nothing useful: name the
            // field and leave the line out.
            if let Some(field) = missing_field(&message) {
                key = if key == "." || key.is_empty() { field } else { format!("{key}.{field}") };
                return self.parse_error(&join(prefix, &key), message);
            }
            if key == "." {
                key.clear();
            }
            // The parser quotes a value of the wrong type ("invalid type: integer `8675…`"); for a secret that
            // value may be the secret itself, so only its kind is said.
            let message = if SECRET_KEYS.contains(&key.rsplit('.').next().unwrap_or_default()) {
                "must be a string (the value given is not shown: it may be the secret)".to_string()
            } else {
                message
            };
            let message = match inner.span() {
                Some(span) => format!("{message} (line {})", self.line(span.start)),
                None => message,
            };
            self.parse_error(&join(prefix, &key), message)
        })
    }

    /// A secret from the environment, an inline key, or a file, in that order; exactly one of key and file.
    fn secret(
        &mut self,
        key: &str,
        env_name: Option<&str>,
        inline: Option<SecretString>,
        file: Option<&Path>,
    ) -> Result<Option<SecretString>, Error> {
        if let Some(name) = env_name
            && let Some(v) = self.env.var(name)
        {
            return Ok(Some(SecretString::from(v)));
        }
        match (inline, file) {
            (Some(_), Some(_)) => Err(self.invalid(key, format!("set either {key} or {key}_file, not both"))),
            (Some(s), None) if s.expose_secret().is_empty() => Ok(None),
            (Some(s), None) => Ok(Some(s)),
            (None, Some(f)) => {
                let text = read_secret_file(f).map_err(|m| self.invalid(&format!("{key}_file"), m))?;
                self.warnings.extend(secret_file_warning(f));
                Ok(Some(SecretString::from(text)))
            }
            (None, None) => Ok(None),
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    match (prefix.is_empty(), key.is_empty()) {
        (true, _) => key.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}.{key}"),
    }
}

/// The most read of a file holding a secret (`client_secret_file`, `write_key_file`, `hash_key_file`).
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;
/// The most read of the config file itself.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;

/// Read a secret file: a regular file of at most 64 KiB, surrounding whitespace (a trailing newline) removed,
/// not empty.
fn read_secret_file(path: &Path) -> Result<String, String> {
    let bytes = crate::files::read_regular(path, MAX_SECRET_FILE_BYTES)
        .map_err(|e| format!("{}: {}", path.display(), crate::logging::Chain(&e)))?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{}: it is not UTF-8 text", path.display()))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(trimmed.to_string())
}

/// The top-level keys the file may have.
const SECTIONS: [&str; 7] = ["auth0", "tenant", "rudderstack", "privacy", "state", "retry", "metrics"];

impl Config {
    /// Read, parse and validate a config file, taking secrets from the process environment. Warnings
    /// (doubtful but legal settings, such as a secret in a file that others can read) are returned beside the
    /// config for the caller to log.
    pub fn load(path: &Path) -> Result<(Config, Vec<String>), Error> {
        // Only a regular file, and a bounded one: `-c /dev/zero` or a FIFO must not hang or exhaust memory.
        let bytes = crate::files::read_regular(path, MAX_CONFIG_FILE_BYTES)
            .map_err(|source| Error::Read { path: path.to_path_buf(), source })?;
        let text = String::from_utf8(bytes).map_err(|e| Error::Parse {
            path: path.to_path_buf(),
            key: "(file)".into(),
            message: format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        })?;
        let (config, mut warnings) = Self::parse(&text, path, ProcessEnv)?;
        warnings.extend(permission_warning(path, holds_secret(&text)));
        Ok((config, warnings))
    }

    /// Parse and validate config text. `env` supplies environment variables; tests pass a closure.
    pub fn parse(text: &str, path: &Path, env: impl Environment) -> Result<(Config, Vec<String>), Error> {
        let mut ctx = Ctx { path, text, env: &env, warnings: Vec::new() };
        let root = DeTable::parse(text).map_err(|e| {
            let message = one_line(e.message());
            let message = match e.span() {
                Some(span) => format!("{message} (line {})", ctx.line(span.start)),
                None => message,
            };
            ctx.parse_error("(file)", message)
        })?;
        let mut root = root.into_inner();
        if let Some((key, _)) = root.iter().find(|(k, _)| !SECTIONS.contains(&k.get_ref().as_ref())) {
            let message = format!(
                "unknown section or key `{}` (line {}); expected one of {}",
                key.get_ref(),
                ctx.line(key.span().start),
                SECTIONS.join(", ")
            );
            return Err(ctx.parse_error(key.get_ref(), message));
        }
        let auth0 = root.remove("auth0");
        let tenant = root.remove("tenant");
        let default_rudder = root.remove("rudderstack");
        let global_privacy = root.remove("privacy");
        let state: State = match root.remove("state") {
            Some(v) => ctx.section("state", v)?,
            None => State::default(),
        };
        let retry: Retry = match root.remove("retry") {
            Some(v) => ctx.section("retry", v)?,
            None => Retry::default(),
        };
        let metrics: Metrics = match root.remove("metrics") {
            Some(v) => ctx.section("metrics", v)?,
            None => Metrics::default(),
        };
        let global_privacy: Option<PrivacyKeys> = match global_privacy {
            Some(v) => Some(ctx.privacy("privacy", v)?),
            None => None,
        };
        let default_rudder = match default_rudder {
            Some(v) => Some(table_of(&ctx, "rudderstack", v)?),
            None => None,
        };

        let (form, sections): (Form, Vec<(String, Spanned<DeValue<'_>>)>) = match (auth0, tenant) {
            (Some(_), Some(t)) => {
                return Err(ctx.invalid(
                    "tenant",
                    format!(
                        "use either one [auth0] section or [[tenant]] tables, not both (line {})",
                        ctx.line(t.span().start)
                    ),
                ));
            }
            (None, None) => {
                return Err(ctx.parse_error(
                    "auth0",
                    "missing: add an [auth0] section for one tenant, or a [[tenant]] table for each tenant",
                ));
            }
            (Some(a), None) => (Form::Single, vec![("auth0".to_string(), a)]),
            (None, Some(t)) => {
                let span = t.span();
                let DeValue::Array(items) = t.into_inner() else {
                    return Err(ctx.parse_error(
                        "tenant",
                        format!("expected [[tenant]] tables (line {})", ctx.line(span.start)),
                    ));
                };
                if items.is_empty() {
                    return Err(ctx.invalid("tenant", "names no tenant"));
                }
                (
                    Form::Tenants,
                    items.into_iter().enumerate().map(|(i, v)| (format!("tenant[{}]", i + 1), v)).collect(),
                )
            }
        };

        let mut tenants = Vec::with_capacity(sections.len());
        let mut seen: Vec<(String, String)> = Vec::new();
        for (section, value) in sections {
            let tenant =
                ctx.tenant(form, &section, value, default_rudder.as_ref(), global_privacy.as_ref())?;
            if let Some((_, other)) = seen.iter().find(|(d, _)| d == tenant.domain()) {
                return Err(ctx.invalid(
                    &format!("{section}.domain"),
                    format!(
                        "{} is already the domain of {other}; each tenant must be named once",
                        tenant.auth0.domain
                    ),
                ));
            }
            seen.push((tenant.domain().to_string(), section.clone()));
            tenants.push(tenant);
        }

        if retry.max_backoff < retry.initial_backoff {
            return Err(ctx.invalid("retry.max_backoff", "must not be shorter than retry.initial_backoff"));
        }
        for t in &tenants {
            // Only a duration the operator chose: "auto" may pick a second at a high pace, which a 30 s
            // timeout does not contradict.
            if let PollInterval::Every(poll) = t.auth0.poll_interval
                && t.auth0.timeout > poll * 10
            {
                ctx.warnings.push(format!(
                    "config file {}: {}.timeout ({}) is much longer than its poll_interval ({})",
                    path.display(),
                    t.section,
                    humantime::format_duration(t.auth0.timeout),
                    humantime::format_duration(poll)
                ));
            }
            if state.max_outbox_entries < u64::from(t.auth0.page_size) {
                return Err(ctx.invalid(
                    "state.max_outbox_entries",
                    format!(
                        "must hold at least one page ({} entries, {}.page_size)",
                        t.auth0.page_size, t.section
                    ),
                ));
            }
        }
        let config = Config { path: path.to_path_buf(), form, tenants, state, retry, metrics };
        Ok((config, ctx.warnings))
    }

    /// The tenant whose state key is `domain`: the same bytes, since a domain keys the state as written (and
    /// is written in lower case).
    pub fn tenant(&self, domain: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| t.auth0.domain == domain)
    }

    /// The tenants a `--tenant` option selects: that one, or all when none is given.
    pub fn select(&self, domain: Option<&str>) -> Result<Vec<&Tenant>, Error> {
        match domain {
            None => Ok(self.tenants.iter().collect()),
            // An operator typing `--tenant Acme.eu.auth0.com` means the tenant written in lower case.
            Some(d) => self.tenant(&d.to_ascii_lowercase()).map(|t| vec![t]).ok_or_else(|| Error::Invalid {
                path: self.path.clone(),
                key: "--tenant".into(),
                message: format!(
                    "{d} is not a tenant of this config (it names {})",
                    self.tenants.iter().map(|t| t.auth0.domain.as_str()).collect::<Vec<_>>().join(", ")
                ),
            }),
        }
    }
}

impl Ctx<'_> {
    /// One tenant: its Auth0 keys, its destination, its privacy rules, all resolved and checked.
    fn tenant(
        &mut self,
        form: Form,
        section: &str,
        value: Spanned<DeValue<'_>>,
        default_rudder: Option<&DeTable<'_>>,
        global_privacy: Option<&PrivacyKeys>,
    ) -> Result<Tenant, Error> {
        let span = value.span();
        let mut table = table_of(self, section, value)?;
        // In the [auth0] form the destination and privacy are top-level sections, not subtables.
        let own_rudder = match form {
            Form::Tenants => table.remove("rudderstack"),
            Form::Single => None,
        };
        let own_privacy = match form {
            Form::Tenants => table.remove("privacy"),
            Form::Single => None,
        };
        let mut auth0: Auth0 = self.section(section, Spanned::new(span.clone(), DeValue::Table(table)))?;
        let env_secret = (form == Form::Single).then_some(ENV_CLIENT_SECRET);
        let secret = self.secret(
            &format!("{section}.client_secret"),
            env_secret,
            auth0.client_secret_inline.take(),
            auth0.client_secret_file.clone().as_deref(),
        )?;
        auth0.client_secret = secret.ok_or_else(|| {
            let hint = match form {
                Form::Single => format!("; or set {ENV_CLIENT_SECRET}"),
                Form::Tenants => String::new(),
            };
            self.invalid(
                &format!("{section}.client_secret"),
                format!("missing: set client_secret or client_secret_file{hint}"),
            )
        })?;
        auth0.derive();
        self.check_auth0(section, &mut auth0)?;

        // The destination: the default section's keys, with the tenant's own laid over them.
        let own_rudder = match own_rudder {
            Some(v) => Some(table_of(self, &format!("{section}.rudderstack"), v)?),
            None => None,
        };
        let mut merged = default_rudder.cloned().unwrap_or_default();
        let mut own_keys = HashSet::new();
        if let Some(own) = own_rudder {
            for (k, v) in own {
                own_keys.insert(k.get_ref().to_string());
                merged.insert(k, v);
            }
        }
        if own_keys.contains("write_key") || own_keys.contains("write_key_file") {
            // A tenant's own key replaces the default's, whichever way either is given.
            if !own_keys.contains("write_key") {
                merged.remove("write_key");
            }
            if !own_keys.contains("write_key_file") {
                merged.remove("write_key_file");
            }
        }
        let rudder_section =
            if own_keys.is_empty() { "rudderstack".to_string() } else { format!("{section}.rudderstack") };
        let mut rudderstack: RudderStack = self
            .section::<RudderStack>("", Spanned::new(0..0, DeValue::Table(merged)))
            .map_err(|e| rename_rudder_key(e, section, &own_keys))?;
        let own_key = own_keys.contains("write_key") || own_keys.contains("write_key_file");
        let env_key = (!own_key).then_some(ENV_WRITE_KEY);
        let key_name =
            if own_key { format!("{section}.rudderstack.write_key") } else { "rudderstack.write_key".into() };
        let write_key = self.secret(
            &key_name,
            env_key,
            rudderstack.write_key_inline.take(),
            rudderstack.write_key_file.clone().as_deref(),
        )?;
        rudderstack.write_key = write_key.ok_or_else(|| {
            self.invalid(&key_name, format!("missing: set write_key or write_key_file, or {ENV_WRITE_KEY}"))
        })?;
        self.check_rudderstack(&rudder_section, &mut rudderstack)?;

        let privacy = match own_privacy {
            Some(v) => Some(self.privacy(&format!("{section}.privacy"), v)?),
            None => global_privacy.cloned(),
        };
        for s in [&auth0.client_secret, &rudderstack.write_key] {
            crate::logging::register_secret(s.expose_secret());
        }
        register_write_key_forms(rudderstack.write_key.expose_secret());
        Ok(Tenant { section: section.to_string(), auth0, rudderstack, privacy })
    }

    fn check_auth0(&mut self, section: &str, a: &mut Auth0) -> Result<(), Error> {
        let key = |k: &str| format!("{section}.{k}");
        if a.domain == PLACEHOLDER_DOMAIN {
            return Err(self.invalid(&key("domain"), placeholder_message(&a.domain)));
        }
        if a.client_id.starts_with(PLACEHOLDER_PREFIX) {
            return Err(self.invalid(&key("client_id"), placeholder_message(&a.client_id)));
        }
        if a.client_secret.expose_secret().starts_with(PLACEHOLDER_PREFIX) {
            return Err(self.invalid(
                &key("client_secret"),
                "still the example's placeholder; put the application's client secret here",
            ));
        }
        let url_key = if a.base_url_given.is_some() { key("base_url") } else { key("domain") };
        check_transport(&a.base_url, a.allow_insecure_http).map_err(|m| {
            self.invalid(&url_key, format!("{m}, or set {} = true", key("allow_insecure_http")))
        })?;
        if let Some(f) = &a.tls_ca_file {
            a.tls_ca = Some(CaBundle::read(f).map_err(|m| self.invalid(&key("tls_ca_file"), m))?);
        }
        for (i, name) in a.categories.iter().enumerate() {
            if crate::transform::category_codes(name).is_none() {
                return Err(self.invalid(
                    &key("categories"),
                    format!(
                        "entry {} ({name:?}) is not a Log Streams category; the known ones are: {}",
                        i + 1,
                        crate::transform::CATEGORIES
                            .iter()
                            .map(|(n, _)| format!("{n:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_rudderstack(&mut self, section: &str, r: &mut RudderStack) -> Result<(), Error> {
        let key = |k: &str| format!("{section}.{k}");
        if r.data_plane_url.host_str() == Some(PLACEHOLDER_DATA_PLANE) {
            return Err(self.invalid(
                &key("data_plane_url"),
                "still the example's placeholder; put your data plane URL here",
            ));
        }
        if r.write_key.expose_secret().starts_with(PLACEHOLDER_PREFIX) {
            return Err(self.invalid(
                &key("write_key"),
                "still the example's placeholder; put the source's write key here",
            ));
        }
        check_transport(&r.data_plane_url, r.allow_insecure_http).map_err(|m| {
            self.invalid(&key("data_plane_url"), format!("{m}, or set {} = true", key("allow_insecure_http")))
        })?;
        // A batch must be able to hold one event of the largest allowed size plus the envelope.
        if r.max_batch_bytes < r.max_event_bytes + 16 {
            return Err(self.invalid(
                &key("max_batch_bytes"),
                format!(
                    "must exceed {} ({}) by the batch envelope (16 bytes), got {}",
                    key("max_event_bytes"),
                    r.max_event_bytes,
                    r.max_batch_bytes
                ),
            ));
        }
        if let Some(f) = &r.tls_ca_file {
            r.tls_ca = Some(CaBundle::read(f).map_err(|m| self.invalid(&key("tls_ca_file"), m))?);
        }
        Ok(())
    }

    fn privacy(&mut self, section: &str, value: Spanned<DeValue<'_>>) -> Result<PrivacyKeys, Error> {
        use crate::privacy::{Privacy, PrivacyError, Rules, load_key};
        let mut p: PrivacyKeys = self.section(section, value)?;
        let env = self.env.var(ENV_HASH_KEY).map(std::ffi::OsString::from);
        let key_name = format!("{section}.hash_key_file");
        let key = load_key(p.hash_key_file.as_deref(), env)
            .map_err(|e| self.invalid(&key_name, crate::logging::Chain(&e).to_string()))?;
        if let Some(f) = &p.hash_key_file {
            self.warnings.extend(secret_file_warning(f));
        }
        if let Some(k) = &key
            && let Ok(text) = std::str::from_utf8(k.expose_secret())
        {
            crate::logging::register_secret(text);
        }
        let rules = Rules {
            hash: p.hash.clone(),
            mask: p.mask.clone(),
            drop: p.drop.clone(),
            truncate_ip: p.truncate_ip,
        };
        let compiled = Privacy::new(&rules, key).map_err(|e| {
            let key = match &e {
                PrivacyError::EmptyName { list } | PrivacyError::UnsupportedName { list, .. } => {
                    format!("{section}.{list}")
                }
                PrivacyError::NameInTwoLists { second, .. } => format!("{section}.{second}"),
                _ => key_name.clone(),
            };
            self.invalid(&key, e.to_string())
        })?;
        p.compiled = Some(std::sync::Arc::new(compiled));
        Ok(p)
    }
}

/// Name a `[rudderstack]` key by where it came from: the tenant's own table or the default section.
fn rename_rudder_key(e: Error, section: &str, own: &HashSet<String>) -> Error {
    match e {
        Error::Parse { path, key, message } => {
            let first = key.split('.').next().unwrap_or_default();
            let key = if own.contains(first) {
                format!("{section}.rudderstack.{key}")
            } else {
                format!("rudderstack.{key}")
            };
            Error::Parse { path, key, message }
        }
        other => other,
    }
}

/// A value a section must be a table.
fn table_of<'i>(ctx: &Ctx<'_>, key: &str, v: Spanned<DeValue<'i>>) -> Result<DeTable<'i>, Error> {
    let span = v.span();
    match v.into_inner() {
        DeValue::Table(t) => Ok(t),
        other => Err(ctx.parse_error(
            key,
            format!("expected a table, found a {} (line {})", other.type_str(), ctx.line(span.start)),
        )),
    }
}

/// The write key travels as Basic auth (`base64(key + ":")`) and, in webhook mode, URL-encoded in the query.
fn register_write_key_forms(key: &str) {
    use base64::Engine as _;
    crate::logging::register_secret(&base64::engine::general_purpose::STANDARD.encode(format!("{key}:")));
    let encoded: String = url::form_urlencoded::byte_serialize(key.as_bytes()).collect();
    crate::logging::register_secret(&encoded);
}

fn placeholder_message(value: &str) -> String {
    format!("{value:?} is still the example's placeholder; put your own value here")
}

/// Plain HTTP is allowed only to this machine unless the section says otherwise.
fn check_transport(url: &Url, allow_insecure_http: bool) -> Result<(), String> {
    if url.scheme() == "http" && !allow_insecure_http && !crate::http::is_loopback(url) {
        return Err(format!(
            "plain http:// to {} would send secrets in clear; use https://",
            url.host_str().unwrap_or("?")
        ));
    }
    Ok(())
}

/// Parse an `auth0.start` value.
pub fn parse_start(s: &str) -> Result<Start, String> {
    let s = s.trim();
    match s {
        "now" => return Ok(Start::Now),
        "oldest" => return Ok(Start::Oldest),
        _ => {}
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(Start::Time(t.with_timezone(&Utc)));
    }
    // Current log ids are long decimal strings; logs from before 2020 carry 24-hex Mongo ids.
    let decimal = s.len() >= 10 && s.bytes().all(|b| b.is_ascii_digit());
    let mongo = s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if (decimal || mongo)
        && let Ok(id) = LogId::parse(s)
    {
        return Ok(Start::LogId(id));
    }
    Err(format!(
        "expected \"now\", \"oldest\", an RFC 3339 time (2026-01-31T00:00:00Z) or a log_id, got {:?}",
        clip(s, 80)
    ))
}

fn missing_field(message: &str) -> Option<String> {
    let rest = message.split("missing field `").nth(1)?;
    Some(rest.split('`').next()?.to_string())
}

fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | ")
}

/// The keys whose values are secrets, written inline.
const SECRET_KEYS: [&str; 2] = ["client_secret", "write_key"];

/// Whether config text sets a secret inline.
fn holds_secret(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim_start();
        SECRET_KEYS.iter().any(|k| l.starts_with(k)) && !l.contains("_file") && l.contains('=')
    })
}

/// Warn when the config file holds a secret and can be read by its group or by others.
fn permission_warning(path: &Path, holds_secret: bool) -> Option<String> {
    let (mode, who) = readable_by_others(path).filter(|_| holds_secret)?;
    Some(format!(
        "{} holds a secret and is readable by {who} (mode {mode:o}); run `chmod 600 {}`, or keep the secrets in \
         files named by client_secret_file and write_key_file, or in {ENV_CLIENT_SECRET} and {ENV_WRITE_KEY}",
        path.display(),
        path.display()
    ))
}

/// Warn when a secret file (`client_secret_file`, `write_key_file`, `hash_key_file`) can be read by its group
/// or by others.
fn secret_file_warning(path: &Path) -> Option<String> {
    let (mode, who) = readable_by_others(path)?;
    Some(format!(
        "{} holds a secret and is readable by {who} (mode {mode:o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    ))
}

/// The permission bits of `path` and who besides its owner may read it, when someone may.
fn readable_by_others(path: &Path) -> Option<(u32, &'static str)> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    match mode {
        m if m & 0o004 != 0 => Some((m & 0o777, "others")),
        m if m & 0o040 != 0 => Some((m & 0o777, "its group")),
        _ => None,
    }
}

// Field deserializers: each checks its value where it is read, so errors carry the key and the line.

fn domain<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    parse_domain(&s).map_err(de::Error::custom)
}

/// Check a tenant domain (`auth0.domain`, `transform --domain`): a bare host name, in lower case.
pub fn parse_domain(s: &str) -> Result<String, String> {
    let s = s.trim();
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !s.starts_with('.')
        && !s.ends_with('.');
    if !ok {
        return Err(format!(
            "expected a bare host name such as example-tenant.us.auth0.com, got {:?}",
            clip(s, 80)
        ));
    }
    // The domain keys the tenant's state and seeds its event ids byte for byte, so `Acme.eu.auth0.com` would
    // be a second tenant beside `acme.eu.auth0.com` and re-send its whole log with new ids. One spelling is
    // accepted, the one Auth0 itself uses.
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "{s:?} has upper-case letters; write the domain in lower case ({:?}): a tenant is its domain in lower \
             case, which keys its state and seeds its event ids",
            s.to_ascii_lowercase()
        ));
    }
    Ok(s.to_string())
}

fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    let s = s.trim().to_string();
    if s.is_empty() {
        return Err(de::Error::custom("must not be empty"));
    }
    if s.chars().any(char::is_control) {
        return Err(de::Error::custom("must not contain control characters"));
    }
    Ok(s)
}

fn non_empty_path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    let p = PathBuf::deserialize(d)?;
    if p.as_os_str().is_empty() {
        return Err(de::Error::custom("must not be empty"));
    }
    Ok(p)
}

/// Type codes: short, non-empty, no whitespace.
fn codes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    for (i, c) in v.iter().enumerate() {
        if c.trim().is_empty() || c.len() > 64 || c.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
            return Err(de::Error::custom(format!("entry {} ({:?}) is not a type code", i + 1, clip(c, 40))));
        }
    }
    Ok(v)
}

/// Field names for `[privacy]`: non-empty, and not absurdly long.
fn names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    for (i, c) in v.iter().enumerate() {
        if c.is_empty() || c.len() > 256 {
            return Err(de::Error::custom(format!("entry {} is not a field name", i + 1)));
        }
    }
    Ok(v)
}

fn start<'de, D: Deserializer<'de>>(d: D) -> Result<Start, D::Error> {
    let s = String::deserialize(d)?;
    parse_start(&s).map_err(de::Error::custom)
}

fn parse_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s.trim()).map_err(|e| format!("not a valid URL ({e}): {:?}", clip(s, 200)))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!("expected an http or https URL, got {:?}", clip(s, 200)));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("the URL has no host: {:?}", clip(s, 200)));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the URL must not carry a user name or password".into());
    }
    Ok(url)
}

fn url<'de, D: Deserializer<'de>>(d: D) -> Result<Url, D::Error> {
    let s = String::deserialize(d)?;
    parse_url(&s).map_err(de::Error::custom)
}

fn optional_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Url>, D::Error> {
    url(d).map(Some)
}

/// A humantime duration within `[MIN_MS, MAX_MS]` milliseconds.
fn duration<'de, D: Deserializer<'de>, const MIN_MS: u64, const MAX_MS: u64>(
    d: D,
) -> Result<Duration, D::Error> {
    struct V<const A: u64, const B: u64>;
    impl<'de, const A: u64, const B: u64> Visitor<'de> for V<A, B> {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a duration such as \"30s\" or \"5m\"")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
            bounded_duration(s, Duration::from_millis(A), Duration::from_millis(B)).map_err(E::custom)
        }
    }
    d.deserialize_any(V::<MIN_MS, MAX_MS>)
}

/// A humantime duration within `[min, max]`, or the message that says why not.
fn bounded_duration(s: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("not a duration ({e}): {:?}; use e.g. \"30s\" or \"5m\"", clip(s, 40)))?;
    if d < min || d > max {
        return Err(format!(
            "must be between {} and {}, got {}",
            humantime::format_duration(min),
            humantime::format_duration(max),
            clip(s.trim(), 40)
        ));
    }
    Ok(d)
}

/// `poll_interval`: `"auto"`, or a duration from 100 ms to an hour.
fn poll_interval<'de, D: Deserializer<'de>>(d: D) -> Result<PollInterval, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = PollInterval;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "\"auto\" or a duration such as \"30s\"")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<PollInterval, E> {
            if s.trim() == "auto" {
                return Ok(PollInterval::Auto);
            }
            bounded_duration(s, Duration::from_millis(100), Duration::from_secs(3600))
                .map(PollInterval::Every)
                .map_err(|m| E::custom(format!("{m} (or \"auto\")")))
        }
    }
    d.deserialize_any(V)
}

/// A whole number within `[MIN, MAX]`.
fn count<'de, D, T, const MIN: u64, const MAX: u64>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    struct V<const A: u64, const B: u64>;
    impl<'de, const A: u64, const B: u64> Visitor<'de> for V<A, B> {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a whole number between {A} and {B}")
        }
        fn visit_i64<E: de::Error>(self, n: i64) -> Result<u64, E> {
            if n < 0 {
                return Err(E::custom(format!("must be positive, got {n}")));
            }
            self.visit_u64(n as u64)
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<u64, E> {
            if n < A || n > B {
                return Err(E::custom(format!("must be between {A} and {B}, got {n}")));
            }
            Ok(n)
        }
        fn visit_f64<E: de::Error>(self, n: f64) -> Result<u64, E> {
            Err(E::custom(format!("must be a whole number between {A} and {B}, got {n}")))
        }
    }
    let n = d.deserialize_any(V::<MIN, MAX>)?;
    T::try_from(n).map_err(|_| de::Error::custom(format!("{n} is too large here")))
}

/// `max_requests_per_second`: a positive rate from 0.01 (one request in 100 s) to 1000.
fn rate<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_any(Number { min: 0.01, max: 1000.0, what: "a number of requests per second" })
}

/// `poll_budget_share`: a share of the request budget, from 0.01 to 1.
fn share<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_any(Number { min: MIN_POLL_SHARE, max: 1.0, what: "a share of the budget, such as 0.2" })
}

/// A positive number within `[min, max]`, written as an integer or not.
struct Number {
    min: f64,
    max: f64,
    what: &'static str,
}

impl<'de> Visitor<'de> for Number {
    type Value = f64;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.what)
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<f64, E> {
        if !n.is_finite() || n <= 0.0 {
            return Err(E::custom(format!("must be positive, got {n}")));
        }
        if !(self.min..=self.max).contains(&n) {
            return Err(E::custom(format!("must be between {} and {}, got {n}", self.min, self.max)));
        }
        Ok(n)
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<f64, E> {
        self.visit_f64(n as f64)
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<f64, E> {
        self.visit_f64(n as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[auth0]
domain = "t.example.com"
client_id = "cid"
client_secret = "csecret"
[rudderstack]
data_plane_url = "http://127.0.0.1:9"
write_key = "wkey"
"#;

    fn parse(text: &str) -> Result<Config, Error> {
        Config::parse(text, Path::new("/etc/a0rs/config.toml"), |_: &str| None).map(|(c, _)| c)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_minimal_file_gets_the_documented_defaults() {
        let c = parse(MINIMAL).unwrap();
        let t = &c.tenants[0];
        assert_eq!(c.form, Form::Single);
        assert_eq!(t.auth0.audience, "https://t.example.com/api/v2/");
        assert_eq!(t.auth0.base_url.as_str(), "https://t.example.com/");
        assert_eq!(t.auth0.start, Start::Now);
        assert_eq!(t.auth0.page_size, 100);
        assert_eq!(t.auth0.poll_interval, PollInterval::Auto);
        assert_eq!(t.auth0.poll_budget_share, 0.2);
        // 1 / (0.2 × 1.6 requests a second).
        assert_eq!(t.auth0.idle_interval(0.2), Duration::from_secs_f64(3.125));
        assert_eq!(t.auth0.max_page_bytes, 32 << 20);
        assert!(t.auth0.forward_own_logs);
        assert_eq!(t.rudderstack.mode, Mode::Batch);
        assert_eq!(c.state.path, PathBuf::from("auth0-rudderstack.db"));
        assert_eq!(c.metrics.interval, Duration::from_secs(15));
    }

    #[test]
    fn poll_interval_is_auto_from_the_budget_share_unless_a_duration_is_given() {
        let with = |keys: &str| {
            parse(&MINIMAL.replace("client_id = \"cid\"", &format!("client_id = \"cid\"\n{keys}"))).unwrap()
        };
        let c = with("poll_interval = \"auto\"\npoll_budget_share = 0.5\nmax_requests_per_second = 1");
        let a = &c.tenants[0].auth0;
        assert_eq!(a.poll_interval, PollInterval::Auto);
        assert_eq!(a.idle_interval(0.5), Duration::from_secs(2));
        // Halved under pressure: twice as long; never below the smallest share.
        assert_eq!(a.idle_interval(0.25), Duration::from_secs(4));
        assert_eq!(a.idle_interval(0.0), a.idle_interval(MIN_POLL_SHARE));
        // Clamped to 1 s ... 60 s.
        let fast = with("max_requests_per_second = 1000\npoll_budget_share = 1");
        assert_eq!(fast.tenants[0].auth0.idle_interval(1.0), AUTO_POLL_MIN);
        let slow = with("max_requests_per_second = 0.01\npoll_budget_share = 0.01");
        assert_eq!(slow.tenants[0].auth0.idle_interval(0.01), AUTO_POLL_MAX);
        // A duration wins, whatever the share.
        let fixed = with("poll_interval = \"30s\"\npoll_budget_share = 1");
        assert_eq!(fixed.tenants[0].auth0.poll_interval, PollInterval::Every(Duration::from_secs(30)));
        assert_eq!(fixed.tenants[0].auth0.idle_interval(0.01), Duration::from_secs(30));
    }

    #[test]
    fn an_unknown_key_is_named_with_its_table() {
        let e = err(&MINIMAL.replace("client_id = \"cid\"", "client_id = \"cid\"\nclient_idd = 1"));
        assert!(e.contains("client_idd"), "{e}");
        assert!(e.contains("/etc/a0rs/config.toml"), "{e}");
        let e = err(&format!("{MINIMAL}\n[sate]\npath = \"x\""));
        assert!(e.contains("sate") && e.contains("line"), "{e}");
    }

    #[test]
    fn a_missing_key_is_named_in_full_without_a_line() {
        let e = err(&MINIMAL.replace("client_id = \"cid\"\n", ""));
        assert!(e.contains("auth0.client_id"), "{e}");
        assert!(!e.contains("line"), "{e}");
    }

    #[test]
    fn a_bad_duration_names_its_key() {
        let e = err(&MINIMAL.replace("client_id = \"cid\"", "client_id = \"cid\"\npoll_interval = \"soon\""));
        assert!(e.contains("auth0.poll_interval"), "{e}");
    }

    #[test]
    fn durations_and_rates_outside_their_range_name_the_key() {
        for (key, value, words) in [
            ("retention", "\"300000 years\"", "must be between"),
            ("poll_interval", "\"100000000000 years\"", "auth0.poll_interval"),
            ("max_requests_per_second", "1e-30", "must be between"),
            ("max_requests_per_second", "-1.0", "must be positive"),
            ("page_size", "-5", "must be positive"),
            ("page_size", "1000", "between 1 and 100"),
            ("timeout", "\"0s\"", "must be between"),
            ("poll_budget_share", "0", "must be positive"),
            ("poll_budget_share", "0.001", "must be between 0.01 and 1"),
            ("poll_budget_share", "1.5", "must be between 0.01 and 1"),
            ("poll_budget_share", "\"half\"", "a share of the budget"),
            ("poll_interval", "\"sometimes\"", "\"auto\""),
        ] {
            let e = err(
                &MINIMAL.replace("client_id = \"cid\"", &format!("client_id = \"cid\"\n{key} = {value}"))
            );
            assert!(e.contains(&format!("auth0.{key}")) && e.contains(words), "{key} = {value}: {e}");
        }
    }

    /// A secret of the wrong type (a number, a table, an array) is refused naming its key, and the message
    /// never repeats the value, which may be the secret itself: in `[auth0]`, `[rudderstack]`, a
    /// `[[tenant]]` and its `[tenant.rudderstack]`.
    #[test]
    fn a_secret_of_the_wrong_type_is_refused_without_quoting_it() {
        let tenants = "[[tenant]]\ndomain = \"t.example.com\"\nclient_id = \"cid\"\nclient_secret = \"csecret\"\n\
                       [tenant.rudderstack]\nwrite_key = \"wkey2\"\n\
                       [rudderstack]\ndata_plane_url = \"http://127.0.0.1:9\"\nwrite_key = \"wkey\"\n";
        assert!(parse(tenants).is_ok());
        for value in ["8675309867530986", "{ s = \"8675309867530986\" }", "[\"8675309867530986\"]"] {
            for (text, was, key) in [
                (MINIMAL, "client_secret = \"csecret\"", "auth0.client_secret"),
                (MINIMAL, "write_key = \"wkey\"", "rudderstack.write_key"),
                (tenants, "client_secret = \"csecret\"", "tenant.client_secret"),
                (tenants, "write_key = \"wkey2\"", "tenant.rudderstack.write_key"),
            ] {
                let name = was.split(' ').next().unwrap();
                let e = err(&text.replacen(was, &format!("{name} = {value}"), 1));
                assert!(e.contains(name) && e.contains("must be a string"), "{key} = {value}: {e}");
                assert!(!e.contains("867530"), "{key} = {value}: {e}");
            }
        }
    }

    #[test]
    fn secrets_from_the_environment_win_and_never_show_in_debug() {
        let (c, _) = Config::parse(MINIMAL, Path::new("c.toml"), |k: &str| {
            (k == ENV_CLIENT_SECRET).then(|| "from-env-secret".to_string())
        })
        .unwrap();
        assert_eq!(c.tenants[0].auth0.client_secret.expose_secret(), "from-env-secret");
        let debug = format!("{c:?}");
        assert!(!debug.contains("from-env-secret") && !debug.contains("wkey"), "{debug}");
    }

    #[test]
    fn plain_http_outside_loopback_needs_an_explicit_yes() {
        let remote = MINIMAL.replace("http://127.0.0.1:9", "http://plain.example.com");
        let e = err(&remote);
        assert!(e.contains("rudderstack.data_plane_url") && e.contains("allow_insecure_http"), "{e}");
        let allowed =
            remote.replace("write_key = \"wkey\"", "write_key = \"wkey\"\nallow_insecure_http = true");
        assert!(parse(&allowed).is_ok());
        let auth0 = MINIMAL
            .replace("client_id = \"cid\"", "client_id = \"cid\"\nbase_url = \"http://plain.example.com\"");
        assert!(err(&auth0).contains("auth0.base_url"));
    }

    #[test]
    fn the_examples_placeholders_are_refused() {
        let e = err(&MINIMAL.replace("t.example.com", PLACEHOLDER_DOMAIN));
        assert!(e.contains("auth0.domain") && e.contains("placeholder"), "{e}");
        let e = err(&MINIMAL.replace("\"cid\"", "\"REPLACE_WITH_CLIENT_ID\""));
        assert!(e.contains("auth0.client_id"), "{e}");
        let e = err(&MINIMAL.replace("\"wkey\"", "\"REPLACE_WITH_WRITE_KEY\""));
        assert!(e.contains("rudderstack.write_key"), "{e}");
    }

    #[test]
    fn tenants_inherit_the_default_destination_key_by_key() {
        let text = r#"
[rudderstack]
data_plane_url = "http://127.0.0.1:9"
write_key = "default-key"
[[tenant]]
domain = "a.example.com"
client_id = "a"
client_secret = "sa"
[[tenant]]
domain = "b.example.com"
client_id = "b"
client_secret = "sb"
[tenant.rudderstack]
write_key = "b-key"
"#;
        let c = parse(text).unwrap();
        assert_eq!(c.form, Form::Tenants);
        assert_eq!(c.tenants[0].rudderstack.write_key.expose_secret(), "default-key");
        assert_eq!(c.tenants[1].rudderstack.write_key.expose_secret(), "b-key");
        assert_eq!(c.tenants[1].rudderstack.data_plane_url.as_str(), "http://127.0.0.1:9/");
        assert_eq!(c.tenants[1].section, "tenant[2]");
        let dup = text.replace("b.example.com", "a.example.com");
        assert!(err(&dup).contains("tenant[2].domain") && err(&dup).contains("named once"), "{}", err(&dup));
        let upper = text.replace("b.example.com", "B.example.com");
        let e = err(&upper);
        assert!(e.contains("tenant[2].domain") && e.contains("lower case") && e.contains("line 10"), "{e}");
        assert!(e.contains("\"b.example.com\""), "the lower-case spelling is shown: {e}");
        let both =
            format!("{text}\n[auth0]\ndomain = \"c.example.com\"\nclient_id = \"c\"\nclient_secret = \"x\"");
        assert!(err(&both).contains("not both"));
    }

    #[test]
    fn every_start_form_parses() {
        assert_eq!(parse_start("now").unwrap(), Start::Now);
        assert_eq!(parse_start("oldest").unwrap(), Start::Oldest);
        assert!(matches!(parse_start("2026-01-31T00:00:00Z").unwrap(), Start::Time(_)));
        assert!(matches!(
            parse_start("90020211201185132572079310688835925971249535794074878050").unwrap(),
            Start::LogId(_)
        ));
        assert!(parse_start("yesterday").is_err());
    }

    #[test]
    fn the_filter_excludes_first_then_includes() {
        let text = MINIMAL.replace(
            "client_id = \"cid\"",
            "client_id = \"cid\"\nlog_types = [\"s\", \"f\"]\nexclude_types = [\"f\"]\nforward_own_logs = false",
        );
        let c = parse(&text).unwrap();
        let f = &c.tenants[0].auth0.filter;
        assert!(f.keeps(Some("s"), None));
        assert!(!f.keeps(Some("f"), None));
        assert!(!f.keeps(Some("ss"), None));
        assert!(!f.keeps(None, None));
        let open =
            parse(&MINIMAL.replace("client_id = \"cid\"", "client_id = \"cid\"\nforward_own_logs = false"))
                .unwrap();
        let f = &open.tenants[0].auth0.filter;
        assert!(f.keeps(Some("seccft"), Some("other")));
        assert!(!f.keeps(Some("seccft"), Some("cid")));
        assert!(f.keeps(None, None));
    }

    /// The defaults the README's table documents that the test above leaves out.
    #[test]
    fn a_minimal_file_gets_the_remaining_documented_defaults() {
        let c = parse(MINIMAL).unwrap();
        let t = &c.tenants[0];
        assert_eq!(t.auth0.max_requests_per_second, 1.6);
        assert_eq!(t.auth0.retention, Duration::from_secs(10 * 24 * 3600));
        assert_eq!(t.auth0.on_expired_checkpoint, OnExpiredCheckpoint::Oldest);
        assert_eq!(t.auth0.timeout, Duration::from_secs(30));
        assert!(!t.auth0.allow_insecure_http && t.auth0.tls_ca_file.is_none());
        assert!(
            t.auth0.log_types.is_empty() && t.auth0.categories.is_empty() && t.auth0.exclude_types.is_empty()
        );
        assert_eq!(t.rudderstack.max_batch_events, 100);
        assert_eq!(t.rudderstack.max_batch_bytes, 4_000_000);
        assert_eq!(t.rudderstack.max_event_bytes, 32_000);
        assert_eq!(t.rudderstack.timeout, Duration::from_secs(30));
        assert!(!t.rudderstack.allow_insecure_http && t.rudderstack.tls_ca_file.is_none());
        assert!(t.privacy.is_none());
        assert_eq!(c.state.max_outbox_entries, 1_000_000);
        assert_eq!(c.state.synchronous, crate::store::Synchronous::Normal);
        assert_eq!(c.retry.initial_backoff, Duration::from_secs(1));
        assert_eq!(c.retry.max_backoff, Duration::from_secs(60));
        assert_eq!(c.retry.sync_give_up_after, Duration::from_secs(15 * 60));
        assert!(c.metrics.textfile.is_none());
    }
}
