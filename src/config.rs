//! The TOML configuration, its defaults, and its validation.
//!
//! Operators script against these key names, so they are fixed by the design and every struct denies
//! unknown keys: a typo must be an error that names the key and the file, never a silently ignored line.
//! Parsing happens in two steps. `serde` reads the file into raw structs (through `serde_path_to_error`, so
//! that a type error names its full dotted key), then [`Config::from_raw`] checks the values and derives the
//! rest (base URL, audience, resolved paths). Secrets are held as [`SecretString`] from the first moment, so
//! that `Debug` output and panics cannot show them, and they may come from the environment instead of the
//! file (`AUTH0_CLIENT_SECRET`, `RUDDERSTACK_WRITE_KEY`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

/// Environment variable that may hold `auth0.client_secret`.
pub const ENV_CLIENT_SECRET: &str = "AUTH0_CLIENT_SECRET";
/// Environment variable that may hold `rudderstack.write_key`.
pub const ENV_WRITE_KEY: &str = "RUDDERSTACK_WRITE_KEY";

/// A configuration that cannot be used. Every variant is fatal: the daemon exits 2 and the operator fixes the
/// file. The messages name the file and, where there is one, the dotted key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key is unknown, missing or of the wrong type.
    #[error("config file {path}: {key}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The dotted key, or `(file)` when the error is not tied to one.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A key parsed but its value cannot work.
    #[error("config file {path}: {key}: {message}")]
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
    LogId(String),
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

/// How events reach RudderStack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Transform here and POST `{"batch": [...]}` to `/v1/batch`.
    Batch,
    /// POST Log Streams wrappers to `/v1/webhook` and let RudderStack's Auth0 source transform them.
    Webhook,
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from, for messages.
    pub path: PathBuf,
    /// `[auth0]`.
    pub auth0: Auth0,
    /// `[rudderstack]`.
    pub rudderstack: RudderStack,
    /// `[state]`.
    pub state: State,
    /// `[retry]`.
    pub retry: Retry,
}

/// `[auth0]`: the tenant and how to read its log.
#[derive(Debug, Clone)]
pub struct Auth0 {
    /// The tenant's canonical domain; it keys the state and seeds the deterministic ids.
    pub domain: String,
    /// The machine-to-machine application's client id.
    pub client_id: String,
    /// Its client secret.
    pub client_secret: SecretString,
    /// Where `/oauth/token` and `/api/v2/logs` are called.
    pub base_url: Url,
    /// The token audience.
    pub audience: String,
    /// Where a fresh state starts.
    pub start: Start,
    /// How long to wait after Auth0 had nothing new.
    pub poll_interval: Duration,
    /// Type codes to forward; empty forwards all.
    pub log_types: Vec<String>,
    /// Entries per request, at most 100.
    pub page_size: u32,
    /// The pace of Management API requests.
    pub max_requests_per_second: f64,
    /// The plan's log retention.
    pub retention: Duration,
    /// What to do when the cursor's entry is gone.
    pub on_expired_checkpoint: OnExpiredCheckpoint,
    /// The limit for one HTTP request to Auth0.
    pub timeout: Duration,
}

/// `[rudderstack]`: the data plane and how to batch for it.
#[derive(Debug, Clone)]
pub struct RudderStack {
    /// The data plane's base URL.
    pub data_plane_url: Url,
    /// The source's write key.
    pub write_key: SecretString,
    /// Batch or webhook delivery.
    pub mode: Mode,
    /// Events per request.
    pub max_batch_events: usize,
    /// Bytes per request body.
    pub max_batch_bytes: usize,
    /// Bytes per event; a larger event is dead-lettered.
    pub max_event_bytes: usize,
    /// The limit for one HTTP request to RudderStack.
    pub timeout: Duration,
}

/// `[state]`: the SQLite file.
#[derive(Debug, Clone)]
pub struct State {
    /// The database file (a relative path is relative to the working directory).
    pub path: PathBuf,
    /// The fetcher pauses while the outbox holds this many entries.
    pub max_outbox_entries: u64,
    /// How hard each commit waits for the disk.
    pub synchronous: crate::store::Synchronous,
}

/// `[retry]`: backoff after transient failures.
#[derive(Debug, Clone)]
pub struct Retry {
    /// The first wait after a failure.
    pub initial_backoff: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
    /// How long `sync` keeps failing before it gives up with exit 1. `run` never gives up.
    pub sync_give_up_after: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    auth0: RawAuth0,
    rudderstack: RawRudderStack,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    retry: RawRetry,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth0 {
    domain: String,
    client_id: String,
    client_secret: Option<SecretString>,
    base_url: Option<String>,
    audience: Option<String>,
    #[serde(default = "default_start")]
    start: String,
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    poll_interval: Duration,
    #[serde(default)]
    log_types: Vec<String>,
    #[serde(default = "default_page_size")]
    page_size: u32,
    #[serde(default = "default_rps")]
    max_requests_per_second: f64,
    #[serde(default = "default_retention", with = "humantime_serde")]
    retention: Duration,
    #[serde(default = "default_on_expired")]
    on_expired_checkpoint: OnExpiredCheckpoint,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRudderStack {
    data_plane_url: String,
    write_key: Option<SecretString>,
    #[serde(default = "default_mode")]
    mode: Mode,
    #[serde(default = "default_max_batch_events")]
    max_batch_events: usize,
    #[serde(default = "default_max_batch_bytes")]
    max_batch_bytes: usize,
    #[serde(default = "default_max_event_bytes")]
    max_event_bytes: usize,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    #[serde(default = "default_state_path")]
    path: PathBuf,
    #[serde(default = "default_max_outbox")]
    max_outbox_entries: u64,
    #[serde(default)]
    synchronous: crate::store::Synchronous,
}

impl Default for RawState {
    fn default() -> Self {
        RawState {
            path: default_state_path(),
            max_outbox_entries: default_max_outbox(),
            synchronous: crate::store::Synchronous::default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    #[serde(default = "default_initial_backoff", with = "humantime_serde")]
    initial_backoff: Duration,
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    max_backoff: Duration,
    #[serde(default = "default_give_up", with = "humantime_serde")]
    sync_give_up_after: Duration,
}

impl Default for RawRetry {
    fn default() -> Self {
        RawRetry {
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            sync_give_up_after: default_give_up(),
        }
    }
}

fn default_start() -> String {
    "now".into()
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(30)
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

impl Config {
    /// Read, parse and validate a config file. Warnings (doubtful but legal settings, such as a secret in a
    /// file that others can read) are returned beside the config for the caller to log.
    pub fn load(path: &Path) -> Result<(Config, Vec<String>), Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| Error::Read { path: path.to_path_buf(), source })?;
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (config, mut warnings) = Self::parse(&text, path, env)?;
        warnings.extend(permission_warning(path, &text));
        Ok((config, warnings))
    }

    /// Parse and validate config text. `env` supplies environment variables; tests pass a closure.
    pub fn parse(
        text: &str,
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Config, Vec<String>), Error> {
        let parse_err =
            |key: String, message: String| Error::Parse { path: path.to_path_buf(), key, message };
        let located = |e: &toml::de::Error| {
            let line = e.span().map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            let message = one_line(e.message());
            match line {
                Some(line) => format!("{message} (line {line})"),
                None => message,
            }
        };
        let de = toml::Deserializer::parse(text).map_err(|e| parse_err("(file)".into(), located(&e)))?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let mut key = e.path().to_string();
            let message = located(e.inner());
            // A missing field is reported at its parent table; name the field itself.
            if let Some(field) = missing_field(&message) {
                key = if key == "." || key.is_empty() { field } else { format!("{key}.{field}") };
            }
            if key == "." || key.is_empty() {
                key = "(file)".into();
            }
            parse_err(key, message)
        })?;
        Self::from_raw(raw, path, env)
    }

    fn from_raw(
        raw: RawConfig,
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Config, Vec<String>), Error> {
        let invalid = |key: &str, message: String| Error::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        let mut warnings = Vec::new();
        let a = raw.auth0;

        let domain = a.domain.trim().to_string();
        if domain.is_empty()
            || domain.contains("://")
            || domain.contains('/')
            || domain.contains(char::is_whitespace)
        {
            return Err(invalid(
                "auth0.domain",
                format!("expected a bare host name such as example-tenant.us.auth0.com, got {domain:?}"),
            ));
        }
        if a.client_id.trim().is_empty() {
            return Err(invalid("auth0.client_id", "must not be empty".into()));
        }
        let client_secret = match env(ENV_CLIENT_SECRET) {
            Some(v) => SecretString::from(v),
            None => match a.client_secret {
                Some(s) if !s.expose_secret().is_empty() => s,
                _ => {
                    return Err(invalid(
                        "auth0.client_secret",
                        format!("missing: set it in the file or in the environment as {ENV_CLIENT_SECRET}"),
                    ));
                }
            },
        };
        let base_url = match a.base_url {
            Some(s) => parse_http_url(&s).map_err(|m| invalid("auth0.base_url", m))?,
            None => parse_http_url(&format!("https://{domain}")).map_err(|m| invalid("auth0.domain", m))?,
        };
        let audience = a.audience.unwrap_or_else(|| format!("https://{domain}/api/v2/"));
        let start = parse_start(&a.start).map_err(|m| invalid("auth0.start", m))?;
        if a.poll_interval.is_zero() {
            return Err(invalid("auth0.poll_interval", "must be longer than zero".into()));
        }
        for (i, t) in a.log_types.iter().enumerate() {
            if t.trim().is_empty() {
                return Err(invalid("auth0.log_types", format!("entry {i} is empty")));
            }
        }
        if !(1..=100).contains(&a.page_size) {
            return Err(invalid(
                "auth0.page_size",
                format!("must be between 1 and 100 (Auth0's limit), got {}", a.page_size),
            ));
        }
        if !(a.max_requests_per_second.is_finite() && a.max_requests_per_second > 0.0) {
            return Err(invalid(
                "auth0.max_requests_per_second",
                format!("must be a positive number, got {}", a.max_requests_per_second),
            ));
        }
        if a.retention.is_zero() {
            return Err(invalid("auth0.retention", "must be longer than zero".into()));
        }
        if a.timeout.is_zero() {
            return Err(invalid("auth0.timeout", "must be longer than zero".into()));
        }

        let r = raw.rudderstack;
        let data_plane_url =
            parse_http_url(&r.data_plane_url).map_err(|m| invalid("rudderstack.data_plane_url", m))?;
        let write_key = match env(ENV_WRITE_KEY) {
            Some(v) => SecretString::from(v),
            None => match r.write_key {
                Some(s) if !s.expose_secret().is_empty() => s,
                _ => {
                    return Err(invalid(
                        "rudderstack.write_key",
                        format!("missing: set it in the file or in the environment as {ENV_WRITE_KEY}"),
                    ));
                }
            },
        };
        if r.max_batch_events == 0 {
            return Err(invalid("rudderstack.max_batch_events", "must be at least 1".into()));
        }
        if r.max_event_bytes == 0 {
            return Err(invalid("rudderstack.max_event_bytes", "must be at least 1".into()));
        }
        // A batch must be able to hold at least one event of the largest allowed size plus the envelope.
        if r.max_batch_bytes < r.max_event_bytes + 16 {
            return Err(invalid(
                "rudderstack.max_batch_bytes",
                format!(
                    "must exceed rudderstack.max_event_bytes ({}) by the batch envelope (16 bytes), got {}",
                    r.max_event_bytes, r.max_batch_bytes
                ),
            ));
        }
        if r.timeout.is_zero() {
            return Err(invalid("rudderstack.timeout", "must be longer than zero".into()));
        }

        let s = raw.state;
        if s.path.as_os_str().is_empty() {
            return Err(invalid("state.path", "must not be empty".into()));
        }
        // Relative to the working directory, as operators expect; the systemd unit sets it to the
        // StateDirectory.
        let state_path = s.path;
        if s.max_outbox_entries < u64::from(a.page_size) {
            return Err(invalid(
                "state.max_outbox_entries",
                format!("must hold at least one page ({} entries)", a.page_size),
            ));
        }

        let t = raw.retry;
        if t.initial_backoff.is_zero() {
            return Err(invalid("retry.initial_backoff", "must be longer than zero".into()));
        }
        if t.max_backoff < t.initial_backoff {
            return Err(invalid(
                "retry.max_backoff",
                "must not be shorter than retry.initial_backoff".into(),
            ));
        }

        if a.timeout > a.poll_interval * 10 {
            warnings.push(format!(
                "config file {}: auth0.timeout ({}) is much longer than auth0.poll_interval ({})",
                path.display(),
                humantime::format_duration(a.timeout),
                humantime::format_duration(a.poll_interval)
            ));
        }

        let config = Config {
            path: path.to_path_buf(),
            auth0: Auth0 {
                domain,
                client_id: a.client_id.trim().to_string(),
                client_secret,
                base_url,
                audience,
                start,
                poll_interval: a.poll_interval,
                log_types: a.log_types,
                page_size: a.page_size,
                max_requests_per_second: a.max_requests_per_second,
                retention: a.retention,
                on_expired_checkpoint: a.on_expired_checkpoint,
                timeout: a.timeout,
            },
            rudderstack: RudderStack {
                data_plane_url,
                write_key,
                mode: r.mode,
                max_batch_events: r.max_batch_events,
                max_batch_bytes: r.max_batch_bytes,
                max_event_bytes: r.max_event_bytes,
                timeout: r.timeout,
            },
            state: State {
                path: state_path,
                max_outbox_entries: s.max_outbox_entries,
                synchronous: s.synchronous,
            },
            retry: Retry {
                initial_backoff: t.initial_backoff,
                max_backoff: t.max_backoff,
                sync_give_up_after: t.sync_give_up_after,
            },
        };
        Ok((config, warnings))
    }
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
    if decimal || mongo {
        return Ok(Start::LogId(s.to_string()));
    }
    Err(format!(
        "expected \"now\", \"oldest\", an RFC 3339 time (2026-01-31T00:00:00Z) or a log_id, got {s:?}"
    ))
}

fn parse_http_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s.trim()).map_err(|e| format!("not a valid URL ({e}): {s:?}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!("expected an http or https URL, got {s:?}"));
    }
    if url.host_str().is_none() {
        return Err(format!("the URL has no host: {s:?}"));
    }
    Ok(url)
}

fn missing_field(message: &str) -> Option<String> {
    let rest = message.split("missing field `").nth(1)?;
    Some(rest.split('`').next()?.to_string())
}

fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | ")
}

/// Warn when a file that holds a secret can be read by its group or by others.
#[cfg(unix)]
fn permission_warning(path: &Path, text: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let holds_secret = text.lines().any(|l| {
        let l = l.trim_start();
        (l.starts_with("client_secret") || l.starts_with("write_key")) && l.contains('=')
    });
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (holds_secret && mode & 0o044 != 0).then(|| {
        format!(
            "config file {} holds a secret and is readable by {} (mode {:o}); run `chmod 600 {}` or move the \
             secrets to {ENV_CLIENT_SECRET} and {ENV_WRITE_KEY}",
            path.display(),
            if mode & 0o004 != 0 { "others" } else { "its group" },
            mode & 0o777,
            path.display()
        )
    })
}

#[cfg(not(unix))]
fn permission_warning(_path: &Path, _text: &str) -> Option<String> {
    None
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
        Config::parse(text, Path::new("/etc/a0rs/config.toml"), |_| None).map(|(c, _)| c)
    }

    #[test]
    fn a_minimal_file_gets_the_documented_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.auth0.audience, "https://t.example.com/api/v2/");
        assert_eq!(c.auth0.base_url.as_str(), "https://t.example.com/");
        assert_eq!(c.auth0.start, Start::Now);
        assert_eq!(c.auth0.page_size, 100);
        assert_eq!(c.auth0.poll_interval, Duration::from_secs(30));
        assert_eq!(c.rudderstack.mode, Mode::Batch);
        assert_eq!(c.state.path, PathBuf::from("auth0-rudderstack.db"));
    }

    #[test]
    fn an_unknown_key_is_named_with_its_table() {
        let err = parse(&MINIMAL.replace("client_id = \"cid\"", "client_id = \"cid\"\nclient_idd = 1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth0.client_idd") || err.contains("client_idd"), "{err}");
        assert!(err.contains("/etc/a0rs/config.toml"), "{err}");
    }

    #[test]
    fn a_missing_key_is_named_in_full() {
        let err = parse(&MINIMAL.replace("client_id = \"cid\"\n", "")).unwrap_err().to_string();
        assert!(err.contains("auth0.client_id"), "{err}");
    }

    #[test]
    fn a_bad_duration_names_its_key() {
        let err =
            parse(&MINIMAL.replace("client_id = \"cid\"", "client_id = \"cid\"\npoll_interval = \"soon\""))
                .unwrap_err()
                .to_string();
        assert!(err.contains("auth0.poll_interval"), "{err}");
    }

    #[test]
    fn secrets_from_the_environment_win_and_never_show_in_debug() {
        let (c, _) = Config::parse(MINIMAL, Path::new("c.toml"), |k| {
            (k == ENV_CLIENT_SECRET).then(|| "from-env-secret".to_string())
        })
        .unwrap();
        assert_eq!(c.auth0.client_secret.expose_secret(), "from-env-secret");
        let debug = format!("{c:?}");
        assert!(!debug.contains("from-env-secret") && !debug.contains("wkey"), "{debug}");
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
}
