//! A stateful fake of the two Auth0 endpoints the daemon calls, written from Auth0's documentation.
//!
//! - `POST /oauth/token`: client credentials (form or JSON body), distinct opaque tokens with a configurable
//!   `expires_in`, whose expiry the fake enforces; `401 access_denied` on bad credentials.
//! - `GET /api/v2/logs`: checkpoint mode (`from` strictly after, `take` ≤ 100, `Link: <...>; rel="next"`, an
//!   empty page links to the same URL) and the search mode used by bootstrap (`sort=date:±1`, `per_page`,
//!   `page`, `q=date:[T TO *]`, the 1,000-result cap). Retention can drop the oldest entries, and a `from`
//!   before the retained window either answers 400 or the oldest retained entries (Auth0 does not document
//!   which; both occur in the field).
//! - An optional token bucket on `/api/v2/logs` with `x-ratelimit-*` headers on every answer and Auth0's 429.
//! - A fault hook consulted before anything else, a log of every request, and counters.
//!
//! All state sits behind one std mutex that is never held across an await or while the hook runs.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use auth0_rudderstack::config;
use chrono::{DateTime, SecondsFormat, Utc};
use secrecy::SecretString;
use serde_json::{Value, json};

use super::http::{Reply, Request, Server};

/// The tenant domain the fake pretends to be; the default audience is derived from it.
pub const DOMAIN: &str = "fake-tenant.example.com";

/// A fault hook: `Some(reply)` replaces the normal answer. The number counts every request from 1.
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

/// How the fake behaves.
#[derive(Debug, Clone)]
pub struct FakeOptions {
    /// The accepted client id.
    pub client_id: String,
    /// The accepted client secret.
    pub client_secret: String,
    /// The accepted audience.
    pub audience: String,
    /// `expires_in` of minted tokens, in seconds.
    pub expires_in: u64,
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
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            client_id: "fake-client-id-0123".into(),
            client_secret: "fake-client-secret-s3cr3t-value".into(),
            audience: format!("https://{DOMAIN}/api/v2/"),
            expires_in: 86_400,
            scope: "read:logs read:logs_users".into(),
            bucket: None,
            retry_after_header: false,
            expired_from: ExpiredFrom::BadRequest,
            log_token_mints: false,
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
    /// The method.
    pub method: String,
    /// The path.
    pub path: String,
    /// The query parameters.
    pub query: Vec<(String, String)>,
    /// The status answered; 0 for a reset connection.
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

struct State {
    opts: FakeOptions,
    /// The server's base URL, for `Link` headers.
    url: String,
    /// All entries ever logged, in `log_id` order.
    entries: Vec<Value>,
    /// Each entry of `entries` as compact JSON, made once when it is logged: a benchmark reads hundreds of
    /// thousands of entries, and serialising them on every page would make the fake slower than the daemon.
    texts: Vec<String>,
    /// Every entry has a string `log_id` greater than the one before it, so a `from` can be found by binary
    /// search (a benchmark holds hundreds of thousands of entries); otherwise pages are found by a scan.
    ordered: bool,
    /// Index of the first retained entry; those before it have aged out.
    retained_from: usize,
    /// token → (expiry, scope).
    tokens: HashMap<String, (Instant, String)>,
    minted: u64,
    issued: Vec<String>,
    requests: u64,
    rate_limited: u64,
    recorded: Vec<Recorded>,
    bucket_tokens: f64,
    bucket_at: Instant,
    hook: Option<Hook>,
    /// For synthetic entries: the next sequence number and date.
    next_seq: u64,
    next_date: DateTime<Utc>,
}

/// The running fake. Dropping it stops the server.
pub struct FakeAuth0 {
    server: Server,
    state: Arc<Mutex<State>>,
    /// The accepted client id.
    pub client_id: String,
    /// The accepted client secret.
    pub client_secret: String,
}

const TYPES: [&str; 10] = ["s", "f", "ss", "sapi", "seccft", "fp", "slo", "scoa", "w", "x_future_code"];

impl FakeAuth0 {
    /// Start a fake on 127.0.0.1 with these options and an empty log.
    pub async fn start(opts: FakeOptions) -> FakeAuth0 {
        let client_id = opts.client_id.clone();
        let client_secret = opts.client_secret.clone();
        let state = Arc::new(Mutex::new(State {
            bucket_tokens: opts.bucket.map_or(0.0, |b| f64::from(b.burst)),
            bucket_at: Instant::now(),
            opts,
            url: String::new(),
            entries: Vec::new(),
            texts: Vec::new(),
            ordered: true,
            retained_from: 0,
            tokens: HashMap::new(),
            minted: 0,
            issued: Vec::new(),
            requests: 0,
            rate_limited: 0,
            recorded: Vec::new(),
            hook: None,
            next_seq: 1,
            next_date: Utc::now() - chrono::Duration::hours(1),
        }));
        let handler_state = state.clone();
        let server = Server::start(Arc::new(move |req: &Request| handle(&handler_state, req))).await;
        state.lock().unwrap().url = server.url();
        FakeAuth0 { server, state, client_id, client_secret }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// An `[auth0]` section pointing at this fake: its credentials, a quick pace (50 requests a second) and a
    /// 5 s timeout. Tests adjust the fields they care about.
    pub fn config(&self) -> config::Auth0 {
        let opts = self.state.lock().unwrap().opts.clone();
        config::Auth0 {
            domain: DOMAIN.into(),
            client_id: opts.client_id,
            client_secret: SecretString::from(opts.client_secret),
            base_url: url::Url::parse(&self.url()).unwrap(),
            audience: opts.audience,
            start: config::Start::Now,
            poll_interval: Duration::from_millis(200),
            log_types: Vec::new(),
            page_size: 100,
            max_requests_per_second: 50.0,
            retention: Duration::from_secs(10 * 86_400),
            on_expired_checkpoint: config::OnExpiredCheckpoint::Oldest,
            timeout: Duration::from_secs(5),
        }
    }

    /// Append entries to the log (they must sort after the existing ones by `log_id`).
    pub fn push(&self, entries: impl IntoIterator<Item = Value>) {
        let mut s = self.state.lock().unwrap();
        for e in entries {
            s.append(e);
        }
    }

    /// Append `n` synthetic entries (see [`FakeAuth0::make_entries`]) and return them.
    pub fn push_synthetic(&self, n: usize) -> Vec<Value> {
        let made = self.make_entries(n);
        self.push(made.clone());
        made
    }

    /// Make `n` synthetic entries that continue this fake's sequence, without logging them: distinct 56-digit
    /// `900YYYYMMDDhhmmss…` log ids in increasing order, `_id` equal to `log_id`, dates 10 ms apart starting
    /// an hour ago, and types cycling through `s`, `f`, `ss`, `sapi`, `seccft`, ... and an unknown code.
    pub fn make_entries(&self, n: usize) -> Vec<Value> {
        let mut s = self.state.lock().unwrap();
        (0..n)
            .map(|_| {
                let seq = s.next_seq;
                let date = s.next_date;
                s.next_seq += 1;
                s.next_date = date + chrono::Duration::milliseconds(10);
                synthetic_entry(seq, date)
            })
            .collect()
    }

    /// Every entry ever logged, retained or not.
    pub fn entries(&self) -> Vec<Value> {
        self.state.lock().unwrap().entries.clone()
    }

    /// The retained entries.
    pub fn retained(&self) -> Vec<Value> {
        let s = self.state.lock().unwrap();
        s.entries[s.retained_from..].to_vec()
    }

    /// The `log_id` of entry `i`.
    pub fn log_id(&self, i: usize) -> String {
        self.state.lock().unwrap().entries[i]["log_id"].as_str().unwrap().to_string()
    }

    /// Let the oldest `n` retained entries age out.
    pub fn expire_oldest(&self, n: usize) {
        let mut s = self.state.lock().unwrap();
        s.retained_from = (s.retained_from + n).min(s.entries.len());
    }

    /// Install a fault hook (replacing any other).
    pub fn set_hook(&self, hook: impl Fn(&Request, u64) -> Option<Reply> + Send + Sync + 'static) {
        self.state.lock().unwrap().hook = Some(Arc::new(hook));
    }

    /// Remove the fault hook.
    pub fn clear_hook(&self) {
        self.state.lock().unwrap().hook = None;
    }

    /// Change the options while running (the bucket is refilled to its burst).
    pub fn update(&self, f: impl FnOnce(&mut FakeOptions)) {
        let mut s = self.state.lock().unwrap();
        f(&mut s.opts);
        s.bucket_tokens = s.opts.bucket.map_or(0.0, |b| f64::from(b.burst));
        s.bucket_at = Instant::now();
    }

    /// Forget every issued token, so the next use of one gets `401 Invalid token`.
    pub fn revoke_tokens(&self) {
        self.state.lock().unwrap().tokens.clear();
    }

    /// Requests received, of any kind.
    pub fn requests(&self) -> u64 {
        self.state.lock().unwrap().requests
    }

    /// 429s answered by the bucket.
    pub fn rate_limited(&self) -> u64 {
        self.state.lock().unwrap().rate_limited
    }

    /// Every access token ever issued, for leak checks.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.lock().unwrap().issued.clone()
    }

    /// Tokens minted.
    pub fn tokens_minted(&self) -> u64 {
        self.state.lock().unwrap().minted
    }

    /// Every request so far, in arrival order.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().recorded.clone()
    }

    /// The requests to `/api/v2/logs` so far.
    pub fn log_requests(&self) -> Vec<Recorded> {
        self.recorded().into_iter().filter(|r| r.path == "/api/v2/logs").collect()
    }

    /// The requests to `/api/v2/logs` answered with this status.
    pub fn log_requests_with(&self, status: u16) -> usize {
        self.log_requests().iter().filter(|r| r.status == status).count()
    }

    /// A JSON body holding these entries, as `/api/v2/logs` would send it (for hooks that truncate a page).
    pub fn page_body(entries: &[Value]) -> Vec<u8> {
        serde_json::to_vec(entries).unwrap()
    }
}

/// One synthetic entry with sequence number `seq` dated `date`.
pub fn synthetic_entry(seq: u64, date: DateTime<Utc>) -> Value {
    let log_id =
        format!("900{}{:06}{:033}", date.format("%Y%m%d%H%M%S"), date.timestamp_subsec_micros(), seq);
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
        "hostname": DOMAIN,
        "user_id": format!("auth0|user{}", seq % 97),
        "user_name": format!("user{}@example.com", seq % 97),
        "strategy": "auth0",
        "strategy_type": "database",
        "details": { "prompts": [], "stats": { "loginsCount": seq % 13 } },
        "isMobile": false,
        "tenant_name": "fake-tenant",
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
            entry["audience"] = json!(format!("https://{DOMAIN}/api/v2/"));
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

fn handle(state: &Arc<Mutex<State>>, req: &Request) -> Reply {
    let (number, hook) = {
        let mut s = state.lock().unwrap();
        s.requests += 1;
        (s.requests, s.hook.clone())
    };
    let at = Instant::now();
    let wall = SystemTime::now();
    let reply = hook.and_then(|h| h(req, number)).unwrap_or_else(|| {
        let mut s = state.lock().unwrap();
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/oauth/token") => s.token(req),
            ("GET", "/api/v2/logs") => s.logs(req),
            _ => api_error(404, "Not Found", "Not Found"),
        }
    });
    let find = |n: &str| reply.header_value(n).and_then(|v| v.parse::<u64>().ok());
    let (status, remaining, reset) = (
        reply.status().unwrap_or(0),
        find("x-ratelimit-remaining").map(|v| v as u32),
        find("x-ratelimit-reset"),
    );
    state.lock().unwrap().recorded.push(Recorded {
        at,
        wall,
        method: req.method.clone(),
        path: req.path.clone(),
        query: req.query.clone(),
        status,
        remaining,
        reset,
    });
    reply
}

impl State {
    fn append(&mut self, entry: Value) {
        let follows = match (self.entries.last().and_then(|l| l["log_id"].as_str()), entry["log_id"].as_str())
        {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(last), Some(id)) => id_cmp(id, last).is_gt(),
        };
        self.ordered &= follows;
        self.texts.push(serde_json::to_string(&entry).unwrap());
        self.entries.push(entry);
    }

    fn token(&mut self, req: &Request) -> Reply {
        let is_json = req.header("content-type").is_some_and(|c| c.contains("json"));
        let params: HashMap<String, String> = if is_json {
            match serde_json::from_slice::<HashMap<String, Value>>(&req.body) {
                Ok(m) => {
                    m.into_iter().map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string())).collect()
                }
                Err(_) => return oauth_error(400, "invalid_request", "Invalid JSON body"),
            }
        } else {
            url::form_urlencoded::parse(&req.body).into_owned().collect()
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
        let token = format!("fake-at-{}-{:016x}", self.minted, fastrand::u64(..));
        self.issued.push(token.clone());
        let expires_in = self.opts.expires_in;
        self.tokens.insert(
            token.clone(),
            (Instant::now() + Duration::from_secs(expires_in), self.opts.scope.clone()),
        );
        if self.opts.log_token_mints {
            let seq = self.next_seq;
            self.next_seq += 1;
            let date = self.next_date.max(Utc::now());
            self.next_date = date + chrono::Duration::milliseconds(10);
            let mut e = synthetic_entry(seq, date);
            e["type"] = json!("seccft");
            e["client_id"] = json!(self.opts.client_id);
            self.append(e);
        }
        Reply::json(
            200,
            &json!({ "access_token": token, "expires_in": expires_in, "scope": self.opts.scope, "token_type": "Bearer" }),
        )
    }

    /// Take one request from the bucket; `Err` is the 429 to send, `Ok` the headers to add.
    fn take_from_bucket(&mut self) -> Result<Vec<(String, String)>, Reply> {
        let Some(b) = self.opts.bucket else { return Ok(Vec::new()) };
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

    fn logs(&mut self, req: &Request) -> Reply {
        let headers = match self.take_from_bucket() {
            Ok(h) => h,
            Err(reply) => return reply,
        };
        let mut reply = self.logs_inner(req);
        for (k, v) in &headers {
            reply = reply.header(k, v);
        }
        reply
    }

    fn logs_inner(&mut self, req: &Request) -> Reply {
        let Some(auth) = req.header("authorization") else {
            return api_error(401, "Unauthorized", "Missing authentication");
        };
        let token = auth.strip_prefix("Bearer ").unwrap_or_default();
        let Some((expiry, scope)) = self.tokens.get(token).cloned() else {
            return api_error(401, "Unauthorized", "Invalid token");
        };
        if Instant::now() >= expiry {
            return api_error(401, "Unauthorized", "Expired token received for JSON Web Token validation");
        }
        if !scope.split(' ').any(|s| s == "read:logs") {
            return Reply::json(
                403,
                &json!({
                    "statusCode": 403, "error": "Forbidden",
                    "message": "Insufficient scope, expected any of: read:logs", "errorCode": "insufficient_scope"
                }),
            );
        }
        match req.query("from") {
            Some(from) => self.checkpoint(req, from),
            None => self.search(req),
        }
    }

    fn checkpoint(&self, req: &Request, from: &str) -> Reply {
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
        let page: Vec<usize> = if self.ordered {
            let start =
                retained.partition_point(|e| id_cmp(e["log_id"].as_str().unwrap_or_default(), from).is_le());
            (start..retained.len()).take(take).collect()
        } else {
            (0..retained.len()).filter(|&i| id_cmp(&id(&retained[i]), from).is_gt()).take(take).collect()
        };
        let next = page.last().map_or(from.to_string(), |&i| id(&retained[i]));
        // The same bytes as serialising the page as one JSON array.
        let texts = &self.texts[self.retained_from..];
        let mut body = String::with_capacity(2 + page.iter().map(|&i| texts[i].len() + 1).sum::<usize>());
        body.push('[');
        for (k, &i) in page.iter().enumerate() {
            if k > 0 {
                body.push(',');
            }
            body.push_str(&texts[i]);
        }
        body.push(']');
        Reply::new(200, body)
            .header("content-type", "application/json")
            .header("link", &format!("<{}/api/v2/logs?from={next}&take={take}>; rel=\"next\"", self.url))
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
        let mut hits: Vec<&Value> = self.entries[self.retained_from..].iter().collect();
        if let Some(q) = req.query("q") {
            let Some(lower) = parse_date_query(q) else {
                return api_error(400, "Bad Request", &format!("The query '{q}' cannot be parsed"));
            };
            hits.retain(|e| e["date"].as_str().and_then(|d| d.parse::<DateTime<Utc>>().ok()) >= Some(lower));
        }
        let by_date = |a: &&Value, b: &&Value| {
            a["date"].as_str().unwrap_or_default().cmp(b["date"].as_str().unwrap_or_default())
        };
        match req.query("sort").unwrap_or("date:-1") {
            "date:1" => hits.sort_by(by_date),
            "date:-1" => {
                hits.sort_by(by_date);
                hits.reverse();
            }
            other => return api_error(400, "Bad Request", &format!("Invalid sort: {other}")),
        }
        let out: Vec<Value> = hits.into_iter().skip(page * per_page).take(per_page).cloned().collect();
        Reply::json(200, &Value::Array(out))
    }
}

/// `date:[T TO *]` → T (inclusive lower bound). Nothing else is understood.
fn parse_date_query(q: &str) -> Option<DateTime<Utc>> {
    let inner = q.strip_prefix("date:[")?.strip_suffix(" TO *]")?;
    inner.parse::<DateTime<Utc>>().ok()
}

fn oauth_error(status: u16, error: &str, description: &str) -> Reply {
    Reply::json(status, &json!({ "error": error, "error_description": description }))
}
