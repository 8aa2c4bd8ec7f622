//! A stand-in ("fake") RudderStack data plane (gateway), following rudder-server's HTTP behaviour, for the
//! integration tests and `auth0-rudderstack demo`.
//!
//! It answers `/v1/batch` and `/v1/webhook` with the gateway's exact statuses and bodies: Basic auth parsed the
//! way Go's `Request.BasicAuth` parses it, 401 `failed to read writekey from header` / `invalid write key`,
//! 404 `source is disabled`, 400 `invalid json` / `empty batch payload` / `event is not a valid rudder event` /
//! `request neither has anonymousId nor userId`, 413 `request size exceeds max limit`, 200 `ok`; errors are
//! `text/plain; charset=utf-8` with a trailing newline, as Go's `http.Error` writes them. Validation is
//! all-or-nothing per request, like the real one, which is what makes the sink's bisection meaningful.
//! On top of that it has switches for the faults the tests need: an outage (503), a redirect, a predicate
//! that refuses requests containing certain events, a hook that replaces any answer, a delay, the gateway's
//! own transient refusals (429 `max requests limit reached`, 504 `gateway timeout`, 500 `failed to read body
//! from request`, optionally with the `Retry-After` a proxy in front of it may add), a gzip bomb or an endless
//! body in place of its answers, and HTTPS with a private CA.
//!
//! The checks run in the order rudder-server runs them, read from its source at f2655fb (`gateway/handle.go`,
//! `gateway/handle_http.go`, `gateway/webhook/webhook.go`, `gateway/response/response.go`), because a request that breaks two rules gets the
//! answer of the first, and the sink decides between splitting (413) and giving up (400) on that answer:
//!
//! - `/v1/batch` (`webRequestHandler` reads the whole body with `io.ReadAll`, no size cap, then
//!   `getJobDataFromRequest` validates): body read → `invalid json` → per event `event is not a valid rudder
//!   event` / `request neither has anonymousId nor userId` → rate limit (429) → size (413) → `empty batch
//!   payload` (decided by `userWebRequestWorkerProcess` once no job came out) → store (504 on a timeout).
//!   The size check is therefore *not* first: an oversized body that is not JSON gets 400 `invalid json`.
//! - `/v1/webhook` (`batchTransformLoop`): the body travels as a JSON string inside the request for the
//!   source transformer, which is valid JSON whatever the body; that request is measured against the limit
//!   (413) *before* the transformer sees the body, so here size comes before everything the transformer
//!   decides (what the fake answers as `invalid json`, `empty batch payload` or a refused wrapper).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::http::{Handler, Hostile, Reply, Request, Server, Tls};

/// The write key the fake accepts by default.
pub const WRITE_KEY: &str = "fake-write-key-7f3a9c";
/// A key the fake knows but whose source is disabled (404).
pub const DISABLED_KEY: &str = "fake-disabled-key-51d0";
/// A key of a non-webhook source: fine on `/v1/batch`, 401 on `/v1/webhook`.
pub const HTTP_SOURCE_KEY: &str = "fake-http-source-key-e2b8";

/// What the fake knows and how strict it is.
#[derive(Debug, Clone)]
pub struct Options {
    /// Keys of enabled webhook-category sources (accepted on both endpoints).
    pub write_keys: Vec<String>,
    /// Keys of enabled non-webhook sources (accepted on `/v1/batch` only).
    pub http_source_keys: Vec<String>,
    /// Keys of disabled sources.
    pub disabled_keys: Vec<String>,
    /// `Gateway.maxReqSizeInKB` × 1024.
    pub max_request_bytes: usize,
    /// Keep every accepted event (`events()`). When false, only each event's `properties.log_id` and arrival
    /// time are kept (`arrivals()`), so a long benchmark's own memory and CPU stay small: a well-formed batch
    /// is then checked by a quick typed parse, and anything that parse does not accept goes through the full
    /// one, so every refusal is the same as with `keep_events`.
    pub keep_events: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            write_keys: vec![WRITE_KEY.to_string()],
            http_source_keys: vec![HTTP_SOURCE_KEY.to_string()],
            disabled_keys: vec![DISABLED_KEY.to_string()],
            max_request_bytes: 4000 * 1024,
            keep_events: true,
        }
    }
}

/// One request as the fake saw it (bodies are not kept, to bound memory in long tests).
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The sequence number of the request, from 0.
    pub n: usize,
    /// When it was received in full (before any delay of its answer).
    pub at: Instant,
    /// `POST`, ...
    pub method: String,
    /// The path.
    pub path: String,
    /// The status the fake answered.
    pub status: u16,
    /// The body's length in bytes.
    pub body_bytes: usize,
    /// Elements of `batch` (or of the webhook array), when the body parsed.
    pub events: Option<usize>,
    /// The write key and where it came from, if one could be read.
    pub key: Option<(KeySource, String)>,
    /// The raw `Authorization` header.
    pub authorization: Option<String>,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The `User-Agent` header.
    pub user_agent: Option<String>,
}

/// Where the write key was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// `Authorization: Basic`.
    Basic,
    /// `?writeKey=`.
    Query,
}

/// A hook consulted after authentication: `Some(reply)` replaces the normal processing (nothing is stored).
pub type Hook = Arc<dyn Fn(&Request, usize) -> Option<Reply> + Send + Sync>;
/// Told of every event accepted through `/v1/batch`, in arrival order, as it is accepted. It runs inside the
/// stand-in's lock, so it must not call back into the stand-in.
pub type Listener = Arc<dyn Fn(&Value) + Send + Sync>;
/// A predicate over one event (or webhook wrapper); a match refuses the whole request.
pub type Predicate = Arc<dyn Fn(&Value) -> bool + Send + Sync>;

/// A transient failure of the real gateway, answered at the point of its handling where the gateway meets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 500 `failed to read body from request`: reading the body failed (`getPayloadFromRequest`, e.g. a client
    /// that sent a broken gzip body), right after authentication, before anything looks at the body.
    BodyReadFailed,
    /// 429 `max requests limit reached`: the workspace's event rate limit (`Gateway.enableRateLimit`), after
    /// the events were validated and before the size check; on `/v1/webhook` after the transformer.
    TooManyRequests,
    /// 504 `gateway timeout`: the transaction storing the events timed out (`WriteTimeout`), after every
    /// check; it rolled back, so nothing is stored.
    GatewayTimeout,
}

impl Refusal {
    /// The gateway's exact answer.
    pub fn reply(self) -> Reply {
        match self {
            Refusal::BodyReadFailed => gateway_error(500, "failed to read body from request"),
            Refusal::TooManyRequests => gateway_error(429, "max requests limit reached"),
            Refusal::GatewayTimeout => gateway_error(504, "gateway timeout"),
        }
    }
}

/// A [`Refusal`] to answer, how often, and with which `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusing {
    /// The refusal.
    pub refusal: Refusal,
    /// How many requests reaching the refusal's point to refuse; `None` refuses until cleared.
    pub times: Option<usize>,
    /// A `Retry-After` value to add. The gateway never sends one; a proxy or load balancer in front of it
    /// may, in seconds or as an HTTP date.
    pub retry_after: Option<String>,
}

impl Refusing {
    /// Refuse every request with `refusal` until cleared.
    pub fn always(refusal: Refusal) -> Refusing {
        Refusing { refusal, times: None, retry_after: None }
    }
    /// Refuse the next `n` requests with `refusal`, then answer normally again.
    pub fn times(refusal: Refusal, n: usize) -> Refusing {
        Refusing { refusal, times: Some(n), retry_after: None }
    }
    /// Add `Retry-After: value` to the refusals.
    pub fn with_retry_after(mut self, value: &str) -> Refusing {
        self.retry_after = Some(value.to_string());
        self
    }
}

/// Which answers a hostile body replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answers {
    /// The 2xx ones (the events are stored all the same).
    Success,
    /// The 4xx and 5xx ones.
    Errors,
    /// Every answer with a status (not a reset).
    All,
}

/// One event accepted through `/v1/batch`, as remembered without `keep_events`.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// The event's `properties.log_id` (empty when it has none).
    pub log_id: String,
    /// When the request carrying it was received in full.
    pub at: Instant,
}

#[derive(Default)]
struct State {
    n: usize,
    requests: Vec<Recorded>,
    /// Events accepted through `/v1/batch`, kept or not.
    accepted: usize,
    events: Vec<Value>,
    arrivals: Vec<Arrival>,
    wrappers: Vec<Value>,
    /// The bodies of the requests whose events or wrappers were accepted, byte for byte (with `keep_events`).
    bodies: Vec<Vec<u8>>,
    outage: bool,
    redirect: Option<(u16, String)>,
    hook: Option<Hook>,
    reject: Option<(Predicate, String)>,
    delay: Option<Duration>,
    refusing: Option<Refusing>,
    hostile: Option<(Hostile, Answers)>,
    listener: Option<Listener>,
}

struct Shared {
    options: Options,
    state: Mutex<State>,
}

/// A running fake data plane; dropping it stops it.
pub struct FakeRudderStack {
    server: Server,
    shared: Arc<Shared>,
}

impl FakeRudderStack {
    /// Start a plain-HTTP fake on an ephemeral port of 127.0.0.1.
    pub async fn start(options: Options) -> FakeRudderStack {
        Self::start_with(options, None).await
    }

    /// Start an HTTPS fake whose certificate `tls`'s CA signed (see [`Tls::ca_pem`]).
    pub async fn start_tls(options: Options, tls: &Tls) -> FakeRudderStack {
        Self::start_with(options, Some(tls.clone())).await
    }

    async fn start_with(options: Options, tls: Option<Tls>) -> FakeRudderStack {
        match Self::try_start_with(options, tls).await {
            Ok(fake) => fake,
            Err(e) => panic!("fake RudderStack: cannot listen on 127.0.0.1: {e}"),
        }
    }

    /// Start on 127.0.0.1 (over TLS when `tls` is given), or say why not.
    pub async fn try_start_with(options: Options, tls: Option<Tls>) -> std::io::Result<FakeRudderStack> {
        let shared = Arc::new(Shared { options, state: Mutex::new(State::default()) });
        let handler_shared = shared.clone();
        let handler: Handler = Arc::new(move |req: &Request| handle(&handler_shared, req));
        let server = Server::try_start_with(handler, tls).await?;
        Ok(FakeRudderStack { server, shared })
    }

    /// The server, for its streamed replies ([`Server::stream_ends`]) and TLS handshakes.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The PEM of the CA that signed the server's certificate, when it serves HTTPS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.server.ca_pem()
    }

    /// Start with the default keys and limits.
    pub async fn start_default() -> FakeRudderStack {
        Self::start(Options::default()).await
    }

    /// `http://127.0.0.1:PORT` (`https://` when started with TLS), the data plane URL.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The first accepted write key.
    pub fn write_key(&self) -> &str {
        &self.shared.options.write_keys[0]
    }

    /// The first disabled write key.
    pub fn disabled_key(&self) -> &str {
        &self.shared.options.disabled_keys[0]
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap()
    }

    /// Answer every request with 503 `Service Unavailable` while on, as the gateway's concurrency limiter does.
    pub fn set_outage(&self, on: bool) {
        self.state().outage = on;
    }

    /// Answer every request with this redirect (e.g. 302 and a Location) while set.
    pub fn set_redirect(&self, redirect: Option<(u16, String)>) {
        self.state().redirect = redirect;
    }

    /// Install (or remove) a hook consulted after authentication with the request and its sequence number.
    pub fn set_hook(&self, hook: Option<Hook>) {
        self.state().hook = hook;
    }

    /// Install a hook from a closure.
    pub fn hook(&self, f: impl Fn(&Request, usize) -> Option<Reply> + Send + Sync + 'static) {
        self.set_hook(Some(Arc::new(f)));
    }

    /// Refuse, with 400 and `message`, any request holding an event for which `pred` is true.
    pub fn reject_events(&self, message: &str, pred: impl Fn(&Value) -> bool + Send + Sync + 'static) {
        self.state().reject = Some((Arc::new(pred), message.to_string()));
    }

    /// Stop refusing by predicate.
    pub fn clear_reject(&self) {
        self.state().reject = None;
    }

    /// Delay every successful answer; the events are stored first, as the gateway commits before it answers,
    /// so a client that times out has in fact delivered.
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.state().delay = delay;
    }

    /// Answer with a transient refusal of the gateway (see [`Refusal`] for where each is met), or stop.
    pub fn set_refusal(&self, refusing: Option<Refusing>) {
        self.state().refusing = refusing;
    }

    /// Send `body` instead of the body of the `answers` (status and headers kept; what was accepted is
    /// stored all the same), or stop. The delay of [`FakeRudderStack::set_delay`] does not apply to it.
    pub fn set_hostile_body(&self, body: Option<(Hostile, Answers)>) {
        self.state().hostile = body;
    }

    /// Tell `listener` of every event accepted through `/v1/batch` from now on (or stop, with `None`). Each
    /// event is then parsed in full, also without `keep_events`, which keeps only what the listener keeps.
    pub fn set_listener(&self, listener: Option<Listener>) {
        self.state().listener = listener;
    }

    /// Every event accepted through `/v1/batch`, in arrival order.
    pub fn events(&self) -> Vec<Value> {
        self.state().events.clone()
    }

    /// How many events were accepted through `/v1/batch` (also without `keep_events`).
    pub fn event_count(&self) -> usize {
        self.state().accepted
    }

    /// The `properties.log_id` and arrival time of every event accepted through `/v1/batch`, in arrival order.
    /// Always recorded; with `keep_events = false` it is all that is kept.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.state().arrivals.clone()
    }

    /// The body of every request whose events or wrappers were accepted, byte for byte, in arrival order
    /// (kept with `keep_events` only).
    pub fn bodies(&self) -> Vec<Vec<u8>> {
        self.state().bodies.clone()
    }

    /// Every wrapper accepted through `/v1/webhook`, in arrival order.
    pub fn wrappers(&self) -> Vec<Value> {
        self.state().wrappers.clone()
    }

    /// The `messageId` of every accepted event, in arrival order.
    pub fn message_ids(&self) -> Vec<String> {
        self.state()
            .events
            .iter()
            .map(|e| e.get("messageId").and_then(Value::as_str).unwrap_or_default().to_string())
            .collect()
    }

    /// Every request seen, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }

    /// How many requests were answered with `status`.
    pub fn count(&self, status: u16) -> usize {
        self.state().requests.iter().filter(|r| r.status == status).count()
    }

    /// Wait until at least `n` events were accepted, polling; panics after `within`.
    pub async fn wait_for_events(&self, n: usize, within: Duration) -> Vec<Value> {
        self.wait(n, within, |s| s.accepted, "events").await;
        self.events()
    }

    /// Wait until at least `n` webhook wrappers were accepted, polling; panics after `within`.
    pub async fn wait_for_wrappers(&self, n: usize, within: Duration) -> Vec<Value> {
        self.wait(n, within, |s| s.wrappers.len(), "wrappers").await;
        self.wrappers()
    }

    /// Wait until at least `n` requests arrived, polling; panics after `within`.
    pub async fn wait_for_requests(&self, n: usize, within: Duration) -> Vec<Recorded> {
        self.wait(n, within, |s| s.requests.len(), "requests").await;
        self.requests()
    }

    async fn wait(&self, n: usize, within: Duration, count: impl Fn(&State) -> usize, what: &str) {
        let deadline = Instant::now() + within;
        loop {
            let have = count(&self.state());
            if have >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "fake RudderStack: waited {within:?} for {n} {what}, have {have}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn handle(shared: &Shared, req: &Request) -> Reply {
    let received = Instant::now();
    let opts = &shared.options;
    let (n, redirect, outage, hook, reject, delay, hostile, listening) = {
        let mut s = shared.state.lock().unwrap();
        let n = s.n;
        s.n += 1;
        let listening = s.listener.is_some();
        (
            n,
            s.redirect.clone(),
            s.outage,
            s.hook.clone(),
            s.reject.clone(),
            s.delay,
            s.hostile.clone(),
            listening,
        )
    };
    let mut rec = Recorded {
        n,
        at: received,
        method: req.method.clone(),
        path: req.path.clone(),
        status: 0,
        body_bytes: req.body.len(),
        events: None,
        key: None,
        authorization: req.header("authorization").map(str::to_string),
        content_type: req.header("content-type").map(str::to_string),
        user_agent: req.header("user-agent").map(str::to_string),
    };
    let refuse = |at: Refusal| refusal_at(shared, at);
    let quick = !opts.keep_events && !listening;
    let (reply, accepted) = route(opts, quick, req, n, &mut rec, redirect, outage, hook, reject, &refuse);
    let reply = match (delay, &accepted) {
        (Some(d), Accepted::Events(_) | Accepted::LogIds(_) | Accepted::Wrappers(_)) => reply.delayed(d),
        _ => reply,
    };
    let reply = match (hostile, reply.status()) {
        (Some((body, Answers::Success)), Some(200..=299))
        | (Some((body, Answers::Errors)), Some(400..))
        | (Some((body, Answers::All)), Some(_)) => reply.with_body(&body),
        _ => reply,
    };
    rec.status = reply.status().unwrap_or(0);
    let mut s = shared.state.lock().unwrap();
    if opts.keep_events && matches!(accepted, Accepted::Events(_) | Accepted::Wrappers(_)) {
        s.bodies.push(req.body.clone());
    }
    match accepted {
        Accepted::Events(evs) => {
            s.accepted += evs.len();
            s.arrivals.extend(evs.iter().map(|e| {
                Arrival {
                    log_id: e
                        .get("properties")
                        .and_then(|p| p.get("log_id"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    at: received,
                }
            }));
            if let Some(listener) = &s.listener {
                evs.iter().for_each(|e| listener(e));
            }
            if opts.keep_events {
                s.events.extend(evs);
            }
        }
        Accepted::LogIds(ids) => {
            s.accepted += ids.len();
            s.arrivals.extend(ids.into_iter().map(|log_id| Arrival { log_id, at: received }));
        }
        Accepted::Wrappers(ws) => s.wrappers.extend(ws),
        Accepted::Nothing => {}
    }
    s.requests.push(rec);
    reply
}

/// The reply for a request that reached the point where `at` is met, if the fake is refusing with it now; a
/// refusal with a count uses one up.
fn refusal_at(shared: &Shared, at: Refusal) -> Option<Reply> {
    let mut s = shared.state.lock().unwrap();
    // A count of 0 refuses nothing.
    let refusing = s.refusing.as_mut().filter(|r| r.refusal == at && r.times != Some(0))?;
    if let Some(times) = &mut refusing.times {
        *times -= 1;
    }
    let retry_after = refusing.retry_after.clone();
    if refusing.times == Some(0) {
        s.refusing = None;
    }
    let reply = at.reply();
    Some(match retry_after {
        Some(v) => reply.header("retry-after", &v),
        None => reply,
    })
}

enum Accepted {
    Nothing,
    Events(Vec<Value>),
    /// The `properties.log_id`s of a batch accepted by the quick parse.
    LogIds(Vec<String>),
    Wrappers(Vec<Value>),
}

/// The only parts of a `/v1/batch` body the quick parse reads; everything else is skipped unparsed.
#[derive(serde::Deserialize)]
struct QuickBody {
    batch: Vec<QuickEvent>,
}

#[derive(serde::Deserialize)]
struct QuickEvent {
    #[serde(rename = "anonymousId")]
    anonymous_id: Option<Value>,
    #[serde(rename = "userId")]
    user_id: Option<Value>,
    properties: Option<QuickProperties>,
}

#[derive(serde::Deserialize)]
struct QuickProperties {
    log_id: Option<Value>,
}

/// Accept a well-formed batch without building its events: `Some` only when the full check would accept it
/// too (valid UTF-8 JSON, a non-empty `batch` of objects that each have an id, within the size limit).
fn quick_accept(opts: &Options, body: &[u8]) -> Option<Vec<String>> {
    std::str::from_utf8(body).ok()?;
    let parsed: QuickBody = serde_json::from_slice(body).ok()?;
    let ok = !parsed.batch.is_empty()
        && body.len() <= opts.max_request_bytes
        && parsed
            .batch
            .iter()
            .all(|e| !id_text(e.anonymous_id.as_ref()).is_empty() || !id_text(e.user_id.as_ref()).is_empty());
    ok.then(|| {
        parsed
            .batch
            .into_iter()
            .map(|e| {
                e.properties
                    .and_then(|p| p.log_id)
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            })
            .collect()
    })
}

#[allow(clippy::too_many_arguments)]
fn route(
    opts: &Options,
    quick: bool,
    req: &Request,
    n: usize,
    rec: &mut Recorded,
    redirect: Option<(u16, String)>,
    outage: bool,
    hook: Option<Hook>,
    reject: Option<(Predicate, String)>,
    refuse: &dyn Fn(Refusal) -> Option<Reply>,
) -> (Reply, Accepted) {
    // A redirecting load balancer and the concurrency limiter both answer before the gateway's handlers.
    if let Some((status, location)) = redirect {
        return (Reply::text(status, "Found").header("location", &location), Accepted::Nothing);
    }
    if outage {
        return (gateway_error(503, "Service Unavailable"), Accepted::Nothing);
    }
    let webhook = match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/v1/batch") => false,
        ("POST", "/v1/webhook") => true,
        ("GET", "/v1/webhook") => return (Reply::new(200, Vec::new()), Accepted::Nothing),
        _ => return (gateway_error(404, "404 page not found"), Accepted::Nothing),
    };

    // Authentication.
    let key = if webhook {
        match req.query("writeKey").filter(|k| !k.is_empty()) {
            Some(k) => Some((KeySource::Query, k.to_string())),
            None => basic_auth_user(req).map(|k| (KeySource::Basic, k)),
        }
    } else {
        basic_auth_user(req).map(|k| (KeySource::Basic, k))
    };
    rec.key = key.clone();
    let Some((_, key)) = key else {
        let msg = if webhook {
            "failed to read writekey from query params"
        } else {
            "failed to read writekey from header"
        };
        return (gateway_error(401, msg), Accepted::Nothing);
    };
    let known = opts.write_keys.contains(&key)
        || (!webhook && opts.http_source_keys.contains(&key))
        || opts.disabled_keys.contains(&key);
    if !known {
        return (gateway_error(401, "invalid write key"), Accepted::Nothing);
    }
    if opts.disabled_keys.contains(&key) {
        return (gateway_error(404, "source is disabled"), Accepted::Nothing);
    }

    if let Some(hook) = hook
        && let Some(reply) = hook(req, n)
    {
        return (reply, Accepted::Nothing);
    }

    // Both handlers read the whole body first (`io.ReadAll`, no cap): a read error is a 500.
    if let Some(reply) = refuse(Refusal::BodyReadFailed) {
        return (reply, Accepted::Nothing);
    }
    if webhook {
        return webhook_route(opts, req, rec, reject, refuse);
    }

    // `/v1/batch`, in the order of `getJobDataFromRequest` (see the module docs).
    // The quick parse keeps only the log ids, so it is for when nobody wants the events themselves.
    if quick
        && reject.is_none()
        && let Some(log_ids) = quick_accept(opts, &req.body)
    {
        // Only a batch every check accepts gets here, so only the refusals met after the checks apply.
        if let Some(reply) = refuse(Refusal::TooManyRequests).or_else(|| refuse(Refusal::GatewayTimeout)) {
            return (reply, Accepted::Nothing);
        }
        rec.events = Some(log_ids.len());
        return (ok(), Accepted::LogIds(log_ids));
    }
    // `gjson.ValidBytes`: an empty body is not JSON either (a Go server's request body is never nil).
    let Some(body) = go_json(&req.body) else {
        return (gateway_error(400, "invalid json"), Accepted::Nothing);
    };
    let events = match body {
        Value::Object(mut o) => match o.remove("batch") {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    rec.events = Some(events.len());
    for ev in &events {
        if !ev.is_object() {
            return (gateway_error(400, "event is not a valid rudder event"), Accepted::Nothing);
        }
        if id_text(ev.get("anonymousId")).is_empty() && id_text(ev.get("userId")).is_empty() {
            return (gateway_error(400, "request neither has anonymousId nor userId"), Accepted::Nothing);
        }
    }
    // Not the gateway's: a stand-in for an event refused for its content, met with the per-event checks.
    if let Some((pred, message)) = &reject
        && events.iter().any(|e| pred(e))
    {
        return (gateway_error(400, message), Accepted::Nothing);
    }
    if let Some(reply) = refuse(Refusal::TooManyRequests) {
        return (reply, Accepted::Nothing);
    }
    if req.body.len() > opts.max_request_bytes {
        return (gateway_error(413, "request size exceeds max limit"), Accepted::Nothing);
    }
    if events.is_empty() {
        return (gateway_error(400, "empty batch payload"), Accepted::Nothing);
    }
    if let Some(reply) = refuse(Refusal::GatewayTimeout) {
        return (reply, Accepted::Nothing);
    }
    (ok(), Accepted::Events(events))
}

/// `/v1/webhook` after authentication and the body read, in the order of `batchTransformLoop`.
fn webhook_route(
    opts: &Options,
    req: &Request,
    rec: &mut Recorded,
    reject: Option<(Predicate, String)>,
    refuse: &dyn Fn(Refusal) -> Option<Reply>,
) -> (Reply, Accepted) {
    // The body travels to the source transformer as a JSON string inside a larger request; that request is
    // what is measured against the limit, so the escaping counts, and it is measured before the transformer
    // has looked at the body at all.
    let escaped = serde_json::to_string(&req.body_text()).map(|s| s.len()).unwrap_or(usize::MAX);
    if escaped > opts.max_request_bytes {
        return (gateway_error(413, "request size exceeds max limit"), Accepted::Nothing);
    }
    // What follows stands in for the transformer's verdict on the body.
    if req.body.is_empty() {
        return (gateway_error(400, "request body is nil"), Accepted::Nothing);
    }
    let Some(body) = go_json(&req.body) else {
        return (gateway_error(400, "invalid json"), Accepted::Nothing);
    };
    let wrappers = match body {
        Value::Array(a) => a,
        other => vec![other],
    };
    rec.events = Some(wrappers.len());
    if wrappers.is_empty() {
        return (gateway_error(400, "empty batch payload"), Accepted::Nothing);
    }
    if let Some((pred, message)) = &reject
        && wrappers.iter().any(|w| pred(w))
    {
        return (gateway_error(400, message), Accepted::Nothing);
    }
    // The transformer's output goes through the same processing as a batch: rate limit, then the store.
    if let Some(reply) = refuse(Refusal::TooManyRequests).or_else(|| refuse(Refusal::GatewayTimeout)) {
        return (reply, Accepted::Nothing);
    }
    (ok(), Accepted::Wrappers(wrappers))
}

/// A body read as Go's `encoding/json` reads it: valid JSON, where a lone UTF-16 surrogate escape (valid JSON,
/// which serde_json's `Value` refuses) becomes U+FFFD.
pub fn go_json(body: &[u8]) -> Option<Value> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Some(v);
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(body).ok()?;
    let hex = |at: usize| -> Option<u16> {
        let digits = std::str::from_utf8(body.get(at..at + 4)?).ok()?;
        u16::from_str_radix(digits, 16).ok()
    };
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i] != b'\\' {
            out.push(body[i]);
            i += 1;
            continue;
        }
        if body.get(i + 1) != Some(&b'u') {
            out.extend_from_slice(&body[i..i + 2]);
            i += 2;
            continue;
        }
        let unit = hex(i + 2)?;
        let low =
            if body.get(i + 6) == Some(&b'\\') && body.get(i + 7) == Some(&b'u') { hex(i + 8) } else { None };
        match unit {
            0xD800..=0xDBFF if low.is_some_and(|l| (0xDC00..=0xDFFF).contains(&l)) => {
                out.extend_from_slice(&body[i..i + 12]);
                i += 12;
            }
            0xD800..=0xDFFF => {
                out.extend_from_slice(b"\\ufffd");
                i += 6;
            }
            _ => {
                out.extend_from_slice(&body[i..i + 6]);
                i += 6;
            }
        }
    }
    serde_json::from_slice(&out).ok()
}

/// `200 ok`: no newline, and Go sniffs the content type.
fn ok() -> Reply {
    Reply::new(200, "ok").header("content-type", "text/plain; charset=utf-8")
}

/// Go's `http.Error`.
fn gateway_error(status: u16, msg: &str) -> Reply {
    Reply::text(status, msg).header("x-content-type-options", "nosniff")
}

/// `stringify.Any` + trim: strings as they are, null/absent as "", anything else JSON-encoded.
fn id_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(other) => other.to_string(),
    }
}

/// The user name of `Authorization: Basic ...`, parsed as Go's `Request.BasicAuth` does; `None` when the
/// header is missing or unparseable or the user name is empty.
fn basic_auth_user(req: &Request) -> Option<String> {
    let auth = req.header("authorization")?;
    let prefix = auth.get(..6)?;
    if !prefix.eq_ignore_ascii_case("basic ") {
        return None;
    }
    let decoded = base64_std_decode(&auth[6..])?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, _password) = text.split_once(':')?;
    (!user.is_empty()).then(|| user.to_string())
}

/// Strict standard base64 with padding, like Go's `base64.StdEncoding`.
fn base64_std_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let last = i == bytes.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut acc = 0u32;
        for &c in &chunk[..4 - pad] {
            acc = (acc << 6) | val(c)?;
        }
        acc <<= 6 * pad as u32;
        let three = [(acc >> 16) as u8, (acc >> 8) as u8, acc as u8];
        out.extend_from_slice(&three[..3 - pad]);
    }
    Some(out)
}

/// Standard base64 with padding, for tests that build their own `Authorization` headers.
pub fn base64_std_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let acc = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(acc >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
