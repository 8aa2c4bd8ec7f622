//! A stateful stand-in ("fake") of the Auth0 endpoints the daemon calls, written from Auth0's documentation,
//! for one tenant or many on one server. The integration tests and `auth0-rudderstack demo` both run it.
//!
//! - `POST /oauth/token`: client credentials (form or JSON body), distinct opaque tokens with a configurable
//!   `expires_in` (or any raw JSON text in its place), whose expiry the fake enforces; `401 access_denied` on
//!   bad credentials.
//! - `GET /api/v2/logs/{id}`: one retained entry by its `log_id` (scope `read:logs`), 404 for any other id.
//! - `GET /api/v2/logs`: checkpoint mode (`from` strictly after, `take` ≤ 100, `Link: <...>; rel="next"`, an
//!   empty page links to the same URL) and the search mode used by bootstrap (`sort=date:±1`, `per_page`,
//!   `page`, `q=date:[T TO *]`, the 1,000-result cap). Retention can drop the oldest entries, and a `from`
//!   before the retained window either answers 400 or the oldest retained entries (Auth0 does not document
//!   which; both occur in the field). `x-ratelimit-*` headers on every answer, as Auth0 sends them: from a
//!   token bucket with Auth0's 429 when one is configured, generous ones otherwise.
//! - Realistic and hostile shapes of the same answers: gzip-encoded pages (when the client accepts gzip),
//!   chunked pages, pages that repeat entries at or below the cursor, and a gzip bomb or an endless body in
//!   place of a page or a token; HTTPS with a private CA.
//! - A fault hook consulted before anything else, a log of every request, and counters.
//!
//! Several tenants share one server, as one base URL would serve several custom domains: each has its own
//! credentials, audience, log, bucket, options, hook and counters ([`Tenant`]). A request belongs to the
//! tenant whose client id it presents (`/oauth/token`) or whose credentials minted its token
//! (`/api/v2/logs`); a token minted by one tenant therefore only ever reads that tenant's log, and is refused
//! as a bad audience when the request's `Host` names another tenant. A request that names no tenant (unknown
//! credentials or token, and no tenant's `Host`) is served by the first tenant, which is exactly what the
//! single-tenant fake always did. The first tenant is made by [`FakeAuth0::start`], and the methods of
//! [`FakeAuth0`] that concern a log or options act on it, so single-tenant tests need not know about tenants.
//!
//! Each tenant's state sits behind its own std mutex (a benchmark runs a hundred tenants on one fake), never
//! held across an await or while a hook runs; a tenant's lock may be held while taking the token map's, never
//! the other way round.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::http::{Hostile, Reply, Request, Server, Tls};

/// The domain of the first tenant by default; the default audience is derived from it.
pub const DOMAIN: &str = "fake-tenant.example.com";

/// What `x-ratelimit-limit` says when no bucket is configured: a bucket so large that `remaining` never
/// reaches 0 and no client ever has a reason to wait.
pub const UNLIMITED: u32 = 1000;

/// A fault hook: `Some(reply)` replaces the normal answer. The number counts every request from 1 (for a
/// tenant's hook: every request of that tenant).
pub type Hook = Arc<dyn Fn(&Request, u64) -> Option<Reply> + Send + Sync>;

/// What a `from` older than the retained window gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiredFrom {
    /// `400 {"statusCode":400,"error":"Bad Request","message":...}` (what Matatika's tap assumes).
    BadRequest,
    /// The oldest retained entries, silently (what a synthetic lower-bound `from` implies).
    OldestRetained,
}

/// A token bucket: `burst` requests at once, refilled continuously at `per_second`.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    /// Bucket size (`x-ratelimit-limit`).
    pub burst: u32,
    /// Refill rate.
    pub per_second: f64,
}

/// How `/api/v2/logs` pages are cut into chunks (`Transfer-Encoding: chunked`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunking {
    /// Bytes per chunk (of the encoded body, so after gzip when the page is gzipped).
    pub size: usize,
    /// A pause before every chunk but the first.
    pub delay: Option<Duration>,
}

/// How a tenant behaves.
#[derive(Debug, Clone)]
pub struct FakeOptions {
    /// The tenant's domain: the `Host` that names it, the `hostname` of its synthetic entries, the domain of
    /// [`Tenant::config`].
    pub domain: String,
    /// The accepted client id.
    pub client_id: String,
    /// The accepted client secret.
    pub client_secret: String,
    /// The accepted audience.
    pub audience: String,
    /// `expires_in` of minted tokens, in seconds.
    pub expires_in: u64,
    /// Send this JSON text as `expires_in` instead of the number above, e.g. `18446744073709551615`, `1e300`,
    /// `-5` or `"soon"` (quotes included). The fake still enforces an expiry: the text read as seconds when
    /// it is a number from 0 to ten years (a negative one expires at once), else `expires_in`.
    pub expires_in_raw: Option<String>,
    /// The scopes granted to minted tokens; `/api/v2/logs` answers 403 without `read:logs`.
    pub scope: String,
    /// The rate limit on `/api/v2/logs`, if any.
    pub bucket: Option<Bucket>,
    /// Send `Retry-After` with a 429.
    pub retry_after_header: bool,
    /// The answer to a `from` before the retained window.
    pub expired_from: ExpiredFrom,
    /// Append a `seccft` entry to the log on every mint, as Auth0 does.
    pub log_token_mints: bool,
    /// Start every checkpoint page up to this many entries before the first entry after `from`: with `from`
    /// an existing `log_id`, 1 repeats that very entry, more repeat the ones before it too. Capped at
    /// `take - 1`, so a page holds at least one new entry when there is one; the `Link` still points past
    /// the last entry of the page (or stays at `from` when nothing is new).
    pub below_cursor: usize,
    /// Gzip the 200 answers of `/api/v2/logs` when the request says `accept-encoding: gzip`.
    pub gzip_pages: bool,
    /// Send the 200 answers of `/api/v2/logs` chunked.
    pub chunked_pages: Option<Chunking>,
    /// Send this body instead of every 200 answer of `/api/v2/logs` (status and headers kept; the request is
    /// otherwise served as usual, rate limit included).
    pub hostile_logs: Option<Hostile>,
    /// Send this body instead of every 200 answer of `/oauth/token` (the token is minted all the same).
    pub hostile_token: Option<Hostile>,
    /// Hold every 200 answer of `/oauth/token` this long (the token is minted, and its life starts, at once).
    pub token_delay: Option<Duration>,
    /// Give synthetic entries ids of two lengths: the first 49 of the log have 55 digits, the rest 56, and
    /// across that step the ids' order (Auth0's: a longer id is greater) and their text order disagree.
    pub mixed_id_lengths: bool,
    /// Date every fifth synthetic entry 35 ms before the one logged just before it: Auth0 orders its log by
    /// `log_id`, and "date ordering is not guaranteed" within a page.
    pub dates_out_of_order: bool,
}

impl FakeOptions {
    /// A tenant as the field shows them, which the integration tests use unless they say otherwise: the
    /// rate limit of an Enterprise production tenant (burst 50, 16 requests a second), ids of mixed lengths
    /// and dates out of order within a page. [`FakeOptions::default`] stays the tidy, unlimited tenant the
    /// benchmarks measure throughput against.
    pub fn realistic() -> FakeOptions {
        FakeOptions {
            bucket: Some(Bucket { burst: 50, per_second: 16.0 }),
            mixed_id_lengths: true,
            dates_out_of_order: true,
            ..FakeOptions::default()
        }
    }
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            domain: DOMAIN.into(),
            client_id: "fake-client-id-0123".into(),
            client_secret: "fake-client-secret-s3cr3t-value".into(),
            audience: format!("https://{DOMAIN}/api/v2/"),
            expires_in: 86_400,
            expires_in_raw: None,
            scope: "read:logs read:logs_users".into(),
            bucket: None,
            retry_after_header: false,
            expired_from: ExpiredFrom::BadRequest,
            log_token_mints: false,
            below_cursor: 0,
            gzip_pages: false,
            chunked_pages: None,
            hostile_logs: None,
            hostile_token: None,
            token_delay: None,
            mixed_id_lengths: false,
            dates_out_of_order: false,
        }
    }
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// When it arrived (monotonic).
    pub at: Instant,
    /// When it arrived (wall clock, to compare with `x-ratelimit-reset`).
    pub wall: SystemTime,
    /// The index of the tenant it was served by (0 for the first; see [`Tenant::index`]).
    pub tenant: usize,
    /// The method.
    pub method: String,
    /// The path.
    pub path: String,
    /// The query parameters.
    pub query: Vec<(String, String)>,
    /// The status answered; 0 for a reset connection or a raw reply.
    pub status: u16,
    /// `x-ratelimit-remaining` sent, if any.
    pub remaining: Option<u32>,
    /// `x-ratelimit-reset` sent, if any (epoch seconds).
    pub reset: Option<u64>,
}

impl Recorded {
    /// A query parameter.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// One tenant's state.
struct TenantState {
    index: usize,
    opts: FakeOptions,
    /// All entries ever logged, in `log_id` order.
    entries: Vec<Value>,
    /// Each entry of `entries` as compact JSON, made once when it is logged: a benchmark reads hundreds of
    /// thousands of entries, and serialising them on every page would make the fake slower than the daemon.
    /// What is served for each entry: its compact JSON, or the raw bytes given to [`Tenant::push_raw`].
    texts: Vec<Vec<u8>>,
    /// Every entry has a string `log_id` greater than the one before it, so a `from` can be found by binary
    /// search (a benchmark holds hundreds of thousands of entries); otherwise pages are found by a scan.
    ordered: bool,
    /// Index of the first retained entry; those before it have aged out.
    retained_from: usize,
    minted: u64,
    issued: Vec<String>,
    /// Requests served by this tenant.
    requests: u64,
    rate_limited: u64,
    bucket_tokens: f64,
    bucket_at: Instant,
    hook: Option<Hook>,
    /// For synthetic entries: the next sequence number and date.
    next_seq: u64,
    next_date: DateTime<Utc>,
}

/// A minted token: whose it is, until when, and with which scopes.
#[derive(Clone)]
struct Grant {
    tenant: usize,
    expiry: Instant,
    scope: String,
    /// Revoked tokens are kept, so a request with one is still served (refused) by its own tenant.
    revoked: bool,
}

/// What every request and every tenant share.
struct Shared {
    /// The server's base URL, for `Link` headers; set once the server listens.
    url: OnceLock<String>,
    tenants: RwLock<Vec<Arc<Mutex<TenantState>>>>,
    /// client id → tenant, and domain → tenant.
    by_client: RwLock<HashMap<String, usize>>,
    by_domain: RwLock<HashMap<String, usize>>,
    tokens: Mutex<HashMap<String, Grant>>,
    global: Mutex<Global>,
}

/// Server-wide counters and the server-wide hook.
#[derive(Default)]
struct Global {
    requests: u64,
    recorded: Vec<Recorded>,
    hook: Option<Hook>,
}

impl Shared {
    fn tenant(&self, index: usize) -> Arc<Mutex<TenantState>> {
        self.tenants.read().unwrap()[index].clone()
    }

    fn url(&self) -> &str {
        self.url.get().map_or("", String::as_str)
    }

    fn add(&self, opts: FakeOptions) -> usize {
        let mut tenants = self.tenants.write().unwrap();
        let index = tenants.len();
        let mut by_client = self.by_client.write().unwrap();
        let mut by_domain = self.by_domain.write().unwrap();
        assert!(
            !by_client.contains_key(&opts.client_id),
            "fake Auth0: client id {} is taken",
            opts.client_id
        );
        assert!(!by_domain.contains_key(&opts.domain), "fake Auth0: domain {} is taken", opts.domain);
        by_client.insert(opts.client_id.clone(), index);
        by_domain.insert(opts.domain.to_ascii_lowercase(), index);
        tenants.push(Arc::new(Mutex::new(TenantState {
            index,
            bucket_tokens: opts.bucket.map_or(0.0, |b| f64::from(b.burst)),
            bucket_at: Instant::now(),
            opts,
            entries: Vec::new(),
            texts: Vec::new(),
            ordered: true,
            retained_from: 0,
            minted: 0,
            issued: Vec::new(),
            requests: 0,
            rate_limited: 0,
            hook: None,
            next_seq: 1,
            next_date: Utc::now() - chrono::Duration::hours(1),
        })));
        index
    }
}

/// The running fake. Dropping it stops the server.
pub struct FakeAuth0 {
    server: Server,
    shared: Arc<Shared>,
    first: Tenant,
    /// The first tenant's client id.
    pub client_id: String,
    /// The first tenant's client secret.
    pub client_secret: String,
}

/// A handle on one tenant of a [`FakeAuth0`]; cheap to clone. It keeps the tenant's state alive, not the
/// server.
#[derive(Clone)]
pub struct Tenant {
    shared: Arc<Shared>,
    index: usize,
}

const TYPES: [&str; 10] = ["s", "f", "ss", "sapi", "seccft", "fp", "slo", "scoa", "w", "x_future_code"];

impl FakeAuth0 {
    /// Start a plain-HTTP fake on 127.0.0.1 with one tenant with these options and an empty log.
    pub async fn start(opts: FakeOptions) -> FakeAuth0 {
        Self::start_with(opts, None).await
    }

    /// Start an HTTPS fake whose certificate `tls`'s CA signed (see [`Tls::ca_pem`]).
    pub async fn start_tls(opts: FakeOptions, tls: &Tls) -> FakeAuth0 {
        Self::start_with(opts, Some(tls.clone())).await
    }

    async fn start_with(opts: FakeOptions, tls: Option<Tls>) -> FakeAuth0 {
        match Self::try_start_with(opts, tls).await {
            Ok(fake) => fake,
            Err(e) => panic!("fake Auth0: cannot listen on 127.0.0.1: {e}"),
        }
    }

    /// Start on 127.0.0.1 (over TLS when `tls` is given) with one tenant and an empty log, or say why not.
    pub async fn try_start_with(opts: FakeOptions, tls: Option<Tls>) -> std::io::Result<FakeAuth0> {
        let client_id = opts.client_id.clone();
        let client_secret = opts.client_secret.clone();
        let shared = Arc::new(Shared {
            url: OnceLock::new(),
            tenants: RwLock::new(Vec::new()),
            by_client: RwLock::new(HashMap::new()),
            by_domain: RwLock::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            global: Mutex::new(Global::default()),
        });
        let index = shared.add(opts);
        let handler_shared = shared.clone();
        let server =
            Server::try_start_with(Arc::new(move |req: &Request| handle(&handler_shared, req)), tls).await?;
        // Set once, here, before anyone has the handle.
        let _ = shared.url.set(server.url());
        let first = Tenant { shared: shared.clone(), index };
        Ok(FakeAuth0 { server, shared, first, client_id, client_secret })
    }

    /// Add a tenant with its own domain and credentials; the audience becomes `https://{domain}/api/v2/` and
    /// the other options are taken from `options` (its domain, credentials and audience are replaced).
    pub fn add_tenant(
        &self,
        domain: &str,
        client_id: &str,
        client_secret: &str,
        options: FakeOptions,
    ) -> Tenant {
        let opts = FakeOptions {
            domain: domain.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            audience: format!("https://{domain}/api/v2/"),
            ..options
        };
        Tenant { shared: self.shared.clone(), index: self.shared.add(opts) }
    }

    /// The first tenant.
    pub fn tenant(&self) -> Tenant {
        self.first.clone()
    }

    /// Every tenant, first first.
    pub fn tenants(&self) -> Vec<Tenant> {
        let n = self.shared.tenants.read().unwrap().len();
        (0..n).map(|index| Tenant { shared: self.shared.clone(), index }).collect()
    }

    /// The server, for its streamed replies ([`Server::stream_ends`]) and TLS handshakes.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// `http://127.0.0.1:PORT` (`https://` when started with TLS).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The PEM of the CA that signed the server's certificate, when it serves HTTPS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.server.ca_pem()
    }

    /// The first tenant's `[auth0]` section (see [`Tenant::config`]).
    pub fn config(&self) -> config::Auth0 {
        self.first.config()
    }

    /// Append entries to the first tenant's log (they must sort after the existing ones by `log_id`).
    pub fn push(&self, entries: impl IntoIterator<Item = Value>) {
        self.first.push(entries);
    }

    /// Append an entry to the first tenant's log, served as `text` (see [`Tenant::push_raw`]).
    pub fn push_raw(&self, entry: Value, text: impl Into<Vec<u8>>) {
        self.first.push_raw(entry, text);
    }

    /// Serve the first tenant's entry with this `log_id` as `text` from now on (see [`Tenant::replace_raw`]).
    pub fn replace_raw(&self, log_id: &str, text: impl Into<Vec<u8>>) {
        self.first.replace_raw(log_id, text);
    }

    /// Append `n` synthetic entries to the first tenant's log and return them.
    pub fn push_synthetic(&self, n: usize) -> Vec<Value> {
        self.first.push_synthetic(n)
    }

    /// Make `n` synthetic entries of the first tenant without logging them (see [`Tenant::make_entries`]).
    pub fn make_entries(&self, n: usize) -> Vec<Value> {
        self.first.make_entries(n)
    }

    /// Every entry ever logged by the first tenant, retained or not.
    pub fn entries(&self) -> Vec<Value> {
        self.first.entries()
    }

    /// The first tenant's retained entries.
    pub fn retained(&self) -> Vec<Value> {
        self.first.retained()
    }

    /// The `log_id` of the first tenant's entry `i`.
    pub fn log_id(&self, i: usize) -> String {
        self.first.log_id(i)
    }

    /// Let the first tenant's oldest `n` retained entries age out.
    pub fn expire_oldest(&self, n: usize) {
        self.first.expire_oldest(n);
    }

    /// Install a server-wide fault hook (replacing any other), consulted before anything else for every
    /// request of every tenant, with the server-wide request number.
    pub fn set_hook(&self, hook: impl Fn(&Request, u64) -> Option<Reply> + Send + Sync + 'static) {
        self.shared.global.lock().unwrap().hook = Some(Arc::new(hook));
    }

    /// Remove the server-wide fault hook.
    pub fn clear_hook(&self) {
        self.shared.global.lock().unwrap().hook = None;
    }

    /// Change the first tenant's options while running (the bucket is refilled to its burst).
    pub fn update(&self, f: impl FnOnce(&mut FakeOptions)) {
        self.first.update(f);
    }

    /// Forget every token of the first tenant, so the next use of one gets `401 Invalid token`.
    pub fn revoke_tokens(&self) {
        self.first.revoke_tokens();
    }

    /// Requests received, of any kind and tenant.
    pub fn requests(&self) -> u64 {
        self.shared.global.lock().unwrap().requests
    }

    /// 429s answered by the first tenant's bucket.
    pub fn rate_limited(&self) -> u64 {
        self.first.rate_limited()
    }

    /// Every access token the first tenant ever issued, for leak checks.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.first.issued_tokens()
    }

    /// Tokens minted by the first tenant.
    pub fn tokens_minted(&self) -> u64 {
        self.first.tokens_minted()
    }

    /// Every request so far, of every tenant, in arrival order.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.shared.global.lock().unwrap().recorded.clone()
    }

    /// The requests to `/api/v2/logs` so far, of every tenant.
    pub fn log_requests(&self) -> Vec<Recorded> {
        self.recorded().into_iter().filter(|r| r.path == "/api/v2/logs").collect()
    }

    /// The requests to `/api/v2/logs` answered with this status, of every tenant.
    pub fn log_requests_with(&self, status: u16) -> usize {
        self.log_requests().iter().filter(|r| r.status == status).count()
    }

    /// A JSON body holding these entries, as `/api/v2/logs` would send it (for hooks that truncate a page).
    pub fn page_body(entries: &[Value]) -> Vec<u8> {
        serde_json::to_vec(entries).unwrap()
    }
}

impl Tenant {
    fn state(&self) -> Arc<Mutex<TenantState>> {
        self.shared.tenant(self.index)
    }

    fn with<R>(&self, f: impl FnOnce(&mut TenantState) -> R) -> R {
        let cell = self.state();
        let mut s = cell.lock().unwrap();
        f(&mut s)
    }

    /// Its position on the server: 0 for the first tenant, then in the order added.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Its domain.
    pub fn domain(&self) -> String {
        self.with(|s| s.opts.domain.clone())
    }

    /// Its client id.
    pub fn client_id(&self) -> String {
        self.with(|s| s.opts.client_id.clone())
    }

    /// Its client secret.
    pub fn client_secret(&self) -> String {
        self.with(|s| s.opts.client_secret.clone())
    }

    /// Its audience.
    pub fn audience(&self) -> String {
        self.with(|s| s.opts.audience.clone())
    }

    /// Its current options.
    pub fn options(&self) -> FakeOptions {
        self.with(|s| s.opts.clone())
    }

    /// An `[auth0]` section pointing at this tenant on the fake: its domain, credentials and audience, a quick
    /// pace (50 requests a second) and a 5 s timeout. Tests adjust the fields they care about.
    pub fn config(&self) -> config::Auth0 {
        let opts = self.options();
        let mut c = config::Auth0::new(
            &opts.domain,
            &opts.client_id,
            &opts.client_secret,
            url::Url::parse(self.shared.url()).unwrap(),
        )
        .expect("a valid section");
        c.audience = opts.audience;
        c.poll_interval = crate::config::PollInterval::Every(Duration::from_millis(200));
        c.max_requests_per_second = 50.0;
        c.timeout = Duration::from_secs(5);
        c
    }

    /// Append entries to the log (they must sort after the existing ones by `log_id`).
    pub fn push(&self, entries: impl IntoIterator<Item = Value>) {
        self.with(|s| {
            for e in entries {
                s.append(e);
            }
        });
    }

    /// Append an entry served as `text`, byte for byte (a lone surrogate, invalid UTF-8, anything), in place
    /// of `entry`'s JSON; `entry` gives its `log_id` and `date` for paging, search and `GET /api/v2/logs/{id}`.
    pub fn push_raw(&self, entry: Value, text: impl Into<Vec<u8>>) {
        self.with(|s| {
            s.append(entry);
            if let Some(last) = s.texts.last_mut() {
                *last = text.into();
            }
        });
    }

    /// Serve the logged entry with this `log_id` as `text` from now on (an entry fixed, or damaged, after it
    /// was first read).
    pub fn replace_raw(&self, log_id: &str, text: impl Into<Vec<u8>>) {
        self.with(|s| {
            let i =
                s.entries.iter().position(|e| e["log_id"].as_str() == Some(log_id)).expect("a logged entry");
            s.texts[i] = text.into();
        });
    }

    /// Append `n` synthetic entries (see [`Tenant::make_entries`]) and return them.
    pub fn push_synthetic(&self, n: usize) -> Vec<Value> {
        let made = self.make_entries(n);
        self.push(made.clone());
        made
    }

    /// Log `entry` as the next entry of this tenant's sequence, dated `date` (or just after the last entry, if
    /// that is later, so the log stays in order): its `date`, `log_id` and `_id` are set as
    /// [`Tenant::make_entries`] sets them, the rest is kept. Returns the entry as logged.
    pub fn push_dated(&self, date: DateTime<Utc>, mut entry: Value) -> Value {
        self.with(|s| {
            s.next_date = s.next_date.max(date);
            let made = s.next_entry();
            for key in ["date", "log_id", "_id"] {
                entry[key] = made[key].clone();
            }
            s.append(entry.clone());
            entry
        })
    }

    /// Make `n` synthetic entries that continue this tenant's sequence, without logging them: distinct
    /// 56-digit `900YYYYMMDDhhmmss…` log ids in increasing order (the tenant's index in the digits before the
    /// sequence number, so no two tenants share an id), `_id` equal to `log_id`, dates 10 ms apart starting
    /// an hour ago, `hostname` the tenant's domain, and types cycling through `s`, `f`, `ss`, `sapi`,
    /// `seccft`, ... and an unknown code. [`FakeOptions::mixed_id_lengths`] and
    /// [`FakeOptions::dates_out_of_order`] change the ids and dates.
    pub fn make_entries(&self, n: usize) -> Vec<Value> {
        self.with(|s| (0..n).map(|_| s.next_entry()).collect())
    }

    /// Every entry ever logged, retained or not.
    pub fn entries(&self) -> Vec<Value> {
        self.with(|s| s.entries.clone())
    }

    /// The retained entries.
    pub fn retained(&self) -> Vec<Value> {
        self.with(|s| s.entries[s.retained_from..].to_vec())
    }

    /// The `log_id` of entry `i`.
    pub fn log_id(&self, i: usize) -> String {
        self.with(|s| s.entries[i]["log_id"].as_str().unwrap().to_string())
    }

    /// Let the oldest `n` retained entries age out.
    pub fn expire_oldest(&self, n: usize) {
        self.with(|s| s.retained_from = (s.retained_from + n).min(s.entries.len()));
    }

    /// Install this tenant's fault hook (replacing any other), consulted for its requests after the
    /// server-wide hook, with this tenant's request number.
    pub fn set_hook(&self, hook: impl Fn(&Request, u64) -> Option<Reply> + Send + Sync + 'static) {
        self.with(|s| s.hook = Some(Arc::new(hook)));
    }

    /// Remove this tenant's fault hook.
    pub fn clear_hook(&self) {
        self.with(|s| s.hook = None);
    }

    /// Change the options while running (the bucket is refilled to its burst). The domain and client id
    /// that route requests here stay as they were.
    pub fn update(&self, f: impl FnOnce(&mut FakeOptions)) {
        self.with(|s| {
            let (domain, client_id) = (s.opts.domain.clone(), s.opts.client_id.clone());
            f(&mut s.opts);
            s.opts.domain = domain;
            s.opts.client_id = client_id;
            s.bucket_tokens = s.opts.bucket.map_or(0.0, |b| f64::from(b.burst));
            s.bucket_at = Instant::now();
        });
    }

    /// Revoke every token this tenant issued, so the next use of one gets `401 Invalid token`.
    pub fn revoke_tokens(&self) {
        for grant in self.shared.tokens.lock().unwrap().values_mut() {
            if grant.tenant == self.index {
                grant.revoked = true;
            }
        }
    }

    /// Requests this tenant served.
    pub fn requests(&self) -> u64 {
        self.with(|s| s.requests)
    }

    /// 429s answered by this tenant's bucket.
    pub fn rate_limited(&self) -> u64 {
        self.with(|s| s.rate_limited)
    }

    /// Every access token this tenant issued.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.with(|s| s.issued.clone())
    }

    /// Tokens this tenant minted.
    pub fn tokens_minted(&self) -> u64 {
        self.with(|s| s.minted)
    }

    /// The requests this tenant served, in arrival order.
    pub fn recorded(&self) -> Vec<Recorded> {
        let global = self.shared.global.lock().unwrap();
        global.recorded.iter().filter(|r| r.tenant == self.index).cloned().collect()
    }

    /// This tenant's requests to `/api/v2/logs`.
    pub fn log_requests(&self) -> Vec<Recorded> {
        self.recorded().into_iter().filter(|r| r.path == "/api/v2/logs").collect()
    }
}

/// The log id of entry `seq` (from 1) of tenant `tenant` when ids have mixed lengths: `900`, three digits of
/// tenant index, then the sequence number counted from 10^49 - 50. Entries 1 to 49 have 55 digits (`…99951`
/// to `…99999`), entry 50 is the first of 56 (`…1000…000`): by text it sorts before them all.
pub fn mixed_length_log_id(tenant: usize, seq: u64) -> String {
    let tenant = tenant % 1000;
    if seq < 50 {
        format!("900{tenant:03}{}{:02}", "9".repeat(47), 50 + seq)
    } else {
        format!("900{tenant:03}1{:049}", seq - 50)
    }
}

/// One synthetic entry of the first tenant with sequence number `seq` dated `date`.
pub fn synthetic_entry(seq: u64, date: DateTime<Utc>) -> Value {
    synthetic_entry_of(0, DOMAIN, seq, date)
}

/// One synthetic entry of tenant `tenant` (its index) of domain `domain`, with sequence number `seq`.
pub fn synthetic_entry_of(tenant: usize, domain: &str, seq: u64, date: DateTime<Utc>) -> Value {
    // Three digits of tenant index then thirty of sequence: for the first tenant the same 33 digits as a
    // plain sequence number.
    let log_id = format!(
        "900{}{:06}{:03}{:030}",
        date.format("%Y%m%d%H%M%S"),
        date.timestamp_subsec_micros(),
        tenant % 1000,
        seq
    );
    debug_assert_eq!(log_id.len(), 56);
    let kind = TYPES[(seq as usize) % TYPES.len()];
    let date_s = date.to_rfc3339_opts(SecondsFormat::Millis, true);
    let mut entry = json!({
        "date": date_s,
        "type": kind,
        "description": "",
        "connection": "Username-Password-Authentication",
        "connection_id": "con_0123456789abcdef",
        "client_id": "AaiyAPdpYdesoKnqjj8HJqRn4T5titww",
        "client_name": "My App",
        "ip": "203.0.113.7",
        "user_agent": "Chrome 134.0.0 / Windows 10.0.0",
        "hostname": domain,
        "user_id": format!("auth0|user{}", seq % 97),
        "user_name": format!("user{}@example.com", seq % 97),
        "strategy": "auth0",
        "strategy_type": "database",
        "details": { "prompts": [], "stats": { "loginsCount": seq % 13 } },
        "isMobile": false,
        "tenant_name": domain.split('.').next().unwrap_or(domain),
        "$event_schema": { "version": "1.0.0" },
        "log_id": log_id,
        "_id": log_id,
    });
    match kind {
        "f" => {
            entry["description"] = json!("Wrong email or password.");
        }
        "sapi" => {
            entry["description"] = json!("Update tenant settings");
            entry["user_id"] = json!("");
            entry["details"] = json!({
                "request": { "method": "patch", "path": "/api/v2/tenants/settings", "body": { "friendly_name": "x" } },
                "response": { "statusCode": 200 }
            });
        }
        "seccft" => {
            entry["user_id"] = json!("");
            entry["user_name"] = json!("");
            entry["scope"] = json!("read:logs read:logs_users");
            entry["audience"] = json!(format!("https://{domain}/api/v2/"));
        }
        _ => {}
    }
    entry
}

fn epoch_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Compare two log ids: numerically for the usual decimal ids (longer is larger), else as text.
fn id_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn api_error(status: u16, error: &str, message: &str) -> Reply {
    Reply::json(status, &json!({ "statusCode": status, "error": error, "message": message }))
}

/// The tenant a request belongs to, and its token's grant for `/api/v2/logs`: see the module docs.
fn route(shared: &Shared, req: &Request) -> (usize, Option<Grant>) {
    let by_host = req
        .header("host")
        .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name).to_ascii_lowercase())
        .and_then(|h| shared.by_domain.read().unwrap().get(&h).copied());
    match req.path.as_str() {
        "/oauth/token" => {
            let by_client = token_params(req)
                .ok()
                .and_then(|p| p.get("client_id").cloned())
                .and_then(|id| shared.by_client.read().unwrap().get(&id).copied());
            (by_host.or(by_client).unwrap_or(0), None)
        }
        _ => {
            let grant = req
                .header("authorization")
                .and_then(|a| a.strip_prefix("Bearer "))
                .and_then(|t| shared.tokens.lock().unwrap().get(t).cloned());
            (by_host.or(grant.as_ref().map(|g| g.tenant)).unwrap_or(0), grant)
        }
    }
}

fn handle(shared: &Shared, req: &Request) -> Reply {
    let (number, hook) = {
        let mut g = shared.global.lock().unwrap();
        g.requests += 1;
        (g.requests, g.hook.clone())
    };
    let at = Instant::now();
    let wall = SystemTime::now();
    let (tenant, grant) = route(shared, req);
    let cell = shared.tenant(tenant);
    let (tenant_number, tenant_hook) = {
        let mut s = cell.lock().unwrap();
        s.requests += 1;
        (s.requests, s.hook.clone())
    };
    let reply = hook.and_then(|h| h(req, number)).or_else(|| tenant_hook.and_then(|h| h(req, tenant_number)));
    let reply = reply.unwrap_or_else(|| {
        let mut s = cell.lock().unwrap();
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/oauth/token") => s.token(shared, req),
            ("GET", "/api/v2/logs") => s.logs(shared, req, grant),
            ("GET", path) if path.starts_with("/api/v2/logs/") => s.log_by_id(req, grant),
            _ => api_error(404, "Not Found", "Not Found"),
        }
    });
    let find = |n: &str| reply.header_value(n).and_then(|v| v.parse::<u64>().ok());
    let recorded = Recorded {
        at,
        wall,
        tenant,
        method: req.method.clone(),
        path: req.path.clone(),
        query: req.query.clone(),
        status: reply.status().unwrap_or(0),
        remaining: find("x-ratelimit-remaining").map(|v| v as u32),
        reset: find("x-ratelimit-reset"),
    };
    shared.global.lock().unwrap().recorded.push(recorded);
    reply
}

/// The parameters of a token request, form or JSON; `Err` is the 400 for a JSON body that does not parse.
fn token_params(req: &Request) -> Result<HashMap<String, String>, Reply> {
    let is_json = req.header("content-type").is_some_and(|c| c.contains("json"));
    if !is_json {
        return Ok(url::form_urlencoded::parse(&req.body).into_owned().collect());
    }
    match serde_json::from_slice::<HashMap<String, Value>>(&req.body) {
        Ok(m) => Ok(m.into_iter().map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string())).collect()),
        Err(_) => Err(oauth_error(400, "invalid_request", "Invalid JSON body")),
    }
}

/// The expiry the fake enforces for a raw `expires_in` text: see [`FakeOptions::expires_in_raw`].
fn raw_lifetime(raw: &str, fallback: u64) -> Duration {
    const TEN_YEARS: f64 = 10.0 * 365.0 * 86_400.0;
    match raw.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs <= TEN_YEARS => Duration::from_secs_f64(secs.max(0.0)),
        _ => Duration::from_secs(fallback),
    }
}

impl TenantState {
    fn append(&mut self, entry: Value) {
        let follows = match (self.entries.last().and_then(|l| l["log_id"].as_str()), entry["log_id"].as_str())
        {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(last), Some(id)) => id_cmp(id, last).is_gt(),
        };
        self.ordered &= follows;
        self.texts.push(serde_json::to_vec(&entry).unwrap());
        self.entries.push(entry);
    }

    /// The next synthetic entry of this tenant's sequence.
    fn next_entry(&mut self) -> Value {
        let seq = self.next_seq;
        let date = self.next_date;
        self.next_seq += 1;
        self.next_date = date + chrono::Duration::milliseconds(10);
        let mut entry = synthetic_entry_of(self.index, &self.opts.domain, seq, date);
        if self.opts.mixed_id_lengths {
            let id = mixed_length_log_id(self.index, seq);
            entry["log_id"] = json!(id);
            entry["_id"] = json!(id);
        }
        if self.opts.dates_out_of_order && seq.is_multiple_of(5) {
            let earlier = date - chrono::Duration::milliseconds(35);
            entry["date"] = json!(earlier.to_rfc3339_opts(SecondsFormat::Millis, true));
        }
        entry
    }

    fn token(&mut self, shared: &Shared, req: &Request) -> Reply {
        let params = match token_params(req) {
            Ok(p) => p,
            Err(reply) => return reply,
        };
        let get = |k: &str| params.get(k).map(String::as_str).unwrap_or_default();
        if get("grant_type") != "client_credentials" {
            return oauth_error(403, "unauthorized_client", "Grant type not allowed for the client.");
        }
        if get("client_id") != self.opts.client_id || get("client_secret") != self.opts.client_secret {
            return oauth_error(401, "access_denied", "Unauthorized");
        }
        if get("audience") != self.opts.audience {
            return oauth_error(403, "access_denied", &format!("Service not found: {}", get("audience")));
        }
        self.minted += 1;
        let token = format!("fake-at-{}-{}-{:016x}", self.index, self.minted, fastrand::u64(..));
        self.issued.push(token.clone());
        let lifetime = match &self.opts.expires_in_raw {
            Some(raw) => raw_lifetime(raw, self.opts.expires_in),
            None => Duration::from_secs(self.opts.expires_in),
        };
        let grant = Grant {
            tenant: self.index,
            expiry: Instant::now() + lifetime,
            scope: self.opts.scope.clone(),
            revoked: false,
        };
        shared.tokens.lock().unwrap().insert(token.clone(), grant);
        if self.opts.log_token_mints {
            let date = self.next_date.max(Utc::now());
            self.next_date = date;
            let mut e = self.next_entry();
            e["type"] = json!("seccft");
            e["client_id"] = json!(self.opts.client_id);
            self.append(e);
        }
        let expires_in = match &self.opts.expires_in_raw {
            Some(raw) => raw.clone(),
            None => self.opts.expires_in.to_string(),
        };
        // Written by hand so that a raw `expires_in` goes out exactly as given, valid JSON or not.
        let body = format!(
            r#"{{"access_token":{},"expires_in":{expires_in},"scope":{},"token_type":"Bearer"}}"#,
            json!(token),
            json!(self.opts.scope)
        );
        let mut reply = Reply::new(200, body).header("content-type", "application/json");
        if let Some(by) = self.opts.token_delay {
            reply = reply.delayed(by);
        }
        match &self.opts.hostile_token {
            Some(hostile) => reply.with_body(hostile),
            None => reply,
        }
    }

    /// Take one request from the bucket; `Err` is the 429 to send, `Ok` the headers to add. Without a bucket
    /// the headers say there is plenty left, as a real tenant far from its limit does.
    fn take_from_bucket(&mut self) -> Result<Vec<(String, String)>, Reply> {
        let Some(b) = self.opts.bucket else {
            return Ok(vec![
                ("x-ratelimit-limit".to_string(), UNLIMITED.to_string()),
                ("x-ratelimit-remaining".to_string(), (UNLIMITED - 1).to_string()),
                ("x-ratelimit-reset".to_string(), (epoch_now().ceil() as u64).to_string()),
            ]);
        };
        let now = Instant::now();
        let burst = f64::from(b.burst);
        self.bucket_tokens =
            (self.bucket_tokens + (now - self.bucket_at).as_secs_f64() * b.per_second).min(burst);
        self.bucket_at = now;
        let allowed = self.bucket_tokens >= 1.0;
        if allowed {
            self.bucket_tokens -= 1.0;
        }
        // When the next whole request is added, rounded up to Auth0's whole seconds.
        let missing = 1.0 - self.bucket_tokens.fract();
        let reset_at = epoch_now() + if self.bucket_tokens >= burst { 0.0 } else { missing / b.per_second };
        let headers = vec![
            ("x-ratelimit-limit".to_string(), b.burst.to_string()),
            ("x-ratelimit-remaining".to_string(), (self.bucket_tokens.floor() as u64).to_string()),
            ("x-ratelimit-reset".to_string(), (reset_at.ceil() as u64).to_string()),
        ];
        if allowed {
            return Ok(headers);
        }
        self.rate_limited += 1;
        let mut reply = Reply::json(
            429,
            &json!({
                "statusCode": 429, "error": "Too Many Requests",
                "message": "Global limit has been reached", "errorCode": "too_many_requests"
            }),
        );
        for (k, v) in &headers {
            reply = reply.header(k, v);
        }
        if self.opts.retry_after_header {
            let wait = ((1.0 - self.bucket_tokens) / b.per_second).ceil().max(1.0);
            reply = reply.header("retry-after", &(wait as u64).to_string());
        }
        Err(reply)
    }

    fn logs(&mut self, shared: &Shared, req: &Request, grant: Option<Grant>) -> Reply {
        let headers = match self.take_from_bucket() {
            Ok(h) => h,
            Err(reply) => return reply,
        };
        let mut reply = self.logs_inner(shared, req, grant);
        if reply.status() == Some(200) {
            reply = match (&self.opts.hostile_logs, self.opts.gzip_pages && req.accepts_gzip()) {
                (Some(hostile), _) => reply.with_body(hostile),
                (None, true) => reply.gzip(),
                (None, false) => reply,
            };
            if let Some(c) = self.opts.chunked_pages {
                reply = reply.chunked(c.size, c.delay);
            }
        }
        for (k, v) in &headers {
            reply = reply.header(k, v);
        }
        reply
    }

    fn logs_inner(&mut self, shared: &Shared, req: &Request, grant: Option<Grant>) -> Reply {
        if let Err(refused) = self.authorize(req, grant) {
            return refused;
        }
        match req.query("from") {
            Some(from) => self.checkpoint(shared, req, from),
            None => self.search(req),
        }
    }

    /// `GET /api/v2/logs/{id}`: the one retained entry with that `log_id`, exactly as it is served in a page;
    /// 404 for an id it does not hold (never logged, or aged out), as the Management API answers.
    fn log_by_id(&mut self, req: &Request, grant: Option<Grant>) -> Reply {
        let headers = match self.take_from_bucket() {
            Ok(h) => h,
            Err(reply) => return reply,
        };
        let mut reply = match self.authorize(req, grant) {
            Err(refused) => refused,
            Ok(()) => {
                let id = req.path.trim_start_matches("/api/v2/logs/");
                let found = (self.retained_from..self.entries.len())
                    .find(|&i| self.entries[i]["log_id"].as_str() == Some(id));
                match found {
                    Some(i) => {
                        Reply::new(200, self.texts[i].clone()).header("content-type", "application/json")
                    }
                    None => api_error(404, "Not Found", "The log does not exist."),
                }
            }
        };
        for (k, v) in &headers {
            reply = reply.header(k, v);
        }
        reply
    }

    /// The checks every logs endpoint makes of the token: `Err` is the refusal to send.
    fn authorize(&self, req: &Request, grant: Option<Grant>) -> Result<(), Reply> {
        if req.header("authorization").is_none() {
            return Err(api_error(401, "Unauthorized", "Missing authentication"));
        }
        let Some(grant) = grant.filter(|g| !g.revoked) else {
            return Err(api_error(401, "Unauthorized", "Invalid token"));
        };
        // A token of another tenant, sent to this tenant's domain: its audience is not this API.
        if grant.tenant != self.index {
            return Err(api_error(401, "Unauthorized", &format!("Bad audience: {}", self.opts.audience)));
        }
        if Instant::now() >= grant.expiry {
            return Err(api_error(
                401,
                "Unauthorized",
                "Expired token received for JSON Web Token validation",
            ));
        }
        if !grant.scope.split(' ').any(|s| s == "read:logs") {
            return Err(Reply::json(
                403,
                &json!({
                    "statusCode": 403, "error": "Forbidden",
                    "message": "Insufficient scope, expected any of: read:logs", "errorCode": "insufficient_scope"
                }),
            ));
        }
        Ok(())
    }

    fn checkpoint(&self, shared: &Shared, req: &Request, from: &str) -> Reply {
        if from.is_empty() || !from.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return api_error(400, "Bad Request", &format!("Invalid value for from: '{from}'"));
        }
        let take: usize = match req.query("take").map(str::parse) {
            None => 50,
            Some(Ok(t)) if (1..=100).contains(&t) => t,
            Some(_) => {
                return api_error(400, "Bad Request", "Invalid value for take: must be between 1 and 100");
            }
        };
        let retained = &self.entries[self.retained_from..];
        let id = |e: &Value| e["log_id"].as_str().unwrap_or_default().to_string();
        let before_window =
            self.retained_from > 0 && retained.first().is_some_and(|first| id_cmp(from, &id(first)).is_lt());
        if before_window && self.opts.expired_from == ExpiredFrom::BadRequest {
            return api_error(
                400,
                "Bad Request",
                &format!("The log entry {from} does not exist or is older than the retention period"),
            );
        }
        // Entries at or below the cursor to repeat first, then the new ones after it.
        let back = self.opts.below_cursor.min(take - 1);
        let (old, mut new): (Vec<usize>, Vec<usize>) = if self.ordered {
            let start =
                retained.partition_point(|e| id_cmp(e["log_id"].as_str().unwrap_or_default(), from).is_le());
            ((start - back.min(start)..start).collect(), (start..retained.len()).take(take).collect())
        } else {
            let (old, new): (Vec<usize>, Vec<usize>) =
                (0..retained.len()).partition(|&i| id_cmp(&id(&retained[i]), from).is_le());
            (old[old.len() - back.min(old.len())..].to_vec(), new.into_iter().take(take).collect())
        };
        new.truncate(take - old.len());
        let next = new.last().map_or(from.to_string(), |&i| id(&retained[i]));
        let page: Vec<usize> = old.into_iter().chain(new).collect();
        // The same bytes as serialising the page as one JSON array.
        let texts = &self.texts[self.retained_from..];
        let body = array_body(page.iter().map(|&i| &texts[i][..]));
        Reply::new(200, body)
            .header("content-type", "application/json")
            .header("link", &format!("<{}/api/v2/logs?from={next}&take={take}>; rel=\"next\"", shared.url()))
    }

    fn search(&self, req: &Request) -> Reply {
        let per_page: usize = match req.query("per_page").map(str::parse) {
            None => 50,
            Some(Ok(n)) if (1..=100).contains(&n) => n,
            Some(_) => return api_error(400, "Bad Request", "Invalid value for per_page"),
        };
        let page: usize = match req.query("page").map(str::parse) {
            None => 0,
            Some(Ok(n)) => n,
            Some(_) => return api_error(400, "Bad Request", "Invalid value for page"),
        };
        if (page + 1) * per_page > 1000 {
            return api_error(
                400,
                "Bad Request",
                &format!(
                    "Requesting page {} exceeds the allowed maximum of 1000 records: please consider searching by checkpoint",
                    page + 1
                ),
            );
        }
        let mut hits: Vec<usize> = (self.retained_from..self.entries.len()).collect();
        if let Some(q) = req.query("q") {
            let Some(lower) = parse_date_query(q) else {
                return api_error(400, "Bad Request", &format!("The query '{q}' cannot be parsed"));
            };
            hits.retain(|&i| {
                self.entries[i]["date"].as_str().and_then(|d| d.parse::<DateTime<Utc>>().ok()) >= Some(lower)
            });
        }
        let date = |i: usize| self.entries[i]["date"].as_str().unwrap_or_default();
        let by_date = |a: &usize, b: &usize| date(*a).cmp(date(*b));
        match req.query("sort").unwrap_or("date:-1") {
            "date:1" => hits.sort_by(by_date),
            "date:-1" => {
                hits.sort_by(by_date);
                hits.reverse();
            }
            other => return api_error(400, "Bad Request", &format!("Invalid sort: {other}")),
        }
        let out = hits.into_iter().skip(page * per_page).take(per_page);
        Reply::new(200, array_body(out.map(|i| &self.texts[i][..])))
            .header("content-type", "application/json")
    }
}

/// A JSON array of these element texts, as they are.
fn array_body<'a>(elements: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut body = vec![b'['];
    for (k, e) in elements.enumerate() {
        if k > 0 {
            body.push(b',');
        }
        body.extend_from_slice(e);
    }
    body.push(b']');
    body
}

/// `date:[T TO *]` → T (inclusive lower bound). Nothing else is understood.
fn parse_date_query(q: &str) -> Option<DateTime<Utc>> {
    let inner = q.strip_prefix("date:[")?.strip_suffix(" TO *]")?;
    inner.parse::<DateTime<Utc>>().ok()
}

fn oauth_error(status: u16, error: &str, description: &str) -> Reply {
    Reply::json(status, &json!({ "error": error, "error_description": description }))
}
