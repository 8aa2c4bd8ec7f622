//! `/api/v2/logs`: checkpoint paging for the steady state, and the search queries that find where a fresh
//! state begins.
//!
//! Entries are kept as raw JSON (`Box<RawValue>`) so that what reaches the outbox is byte-for-byte what Auth0
//! sent, and so that an element that is not even an object is still carried to the pipeline, which
//! dead-letters it instead of losing the whole page. For the same reason an element that is not valid UTF-8
//! is carried apart ([`Unreadable`]) rather than making the page unusable. Paging uses `from`/`take` only (search mode caps out at
//! 1,000 results), and `from` is always a validated [`LogId`], so no request URL is ever built from an
//! unchecked id.
//!
//! Every request, bootstrap included, goes through the shared pacer, carries a cached token, has the
//! configured timeout, reads at most `auth0.max_page_bytes` of (decoded) body, and on a 401 re-mints the
//! token once before giving up.

use std::sync::Arc;

use chrono::SecondsFormat;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, LOCATION};
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use super::pace::{self, Pacer};
use super::token::{self, OnMint, TokenCache};
use super::{Error, error_message};
use crate::config;
use crate::entry::LogId;
use crate::http::{BodyError, read_limited};
use crate::store::StoredToken;
use crate::telemetry::TenantTelemetry;

/// One page of `/api/v2/logs`.
#[derive(Debug)]
pub struct Page {
    /// The entries, raw, in the order Auth0 returned them (`log_id` order).
    pub entries: Vec<Box<RawValue>>,
    /// The elements that are not valid UTF-8 (see [`Unreadable`]), kept apart so the rest of the page is not
    /// lost with them.
    pub unreadable: Vec<Unreadable>,
    /// The `from` of the `Link: <...>; rel="next"` header, when Auth0 sent a valid one: on a non-empty page the
    /// last entry's `log_id`, on an empty page the `from` of the request. Informative only: the cursor comes
    /// from the entries themselves.
    pub next_from: Option<LogId>,
}

/// An element of an answer that is not valid UTF-8, which JSON requires: it cannot be read as text, so no
/// rule can be applied to it. What is kept is what identifies it without holding its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// 1-based position in its page.
    pub position: usize,
    /// Offset of the first byte that is not UTF-8, in the element.
    pub invalid_at: usize,
    /// Bytes of the element.
    pub size: u64,
    /// SHA-256 of the element's bytes.
    pub sha256: [u8; 32],
    /// The element with each invalid byte sequence replaced by U+FFFD, as a JavaScript reader decodes it:
    /// read for its `log_id` and kept whole only where no privacy rules apply.
    pub lossy: String,
}

impl Unreadable {
    fn new(position: usize, bytes: &[u8], invalid_at: usize) -> Unreadable {
        use sha2::Digest;
        Unreadable {
            position,
            invalid_at,
            size: bytes.len() as u64,
            sha256: sha2::Sha256::digest(bytes).into(),
            lossy: String::from_utf8_lossy(bytes).into_owned(),
        }
    }
}

/// What `GET /api/v2/logs/{id}` gave.
#[derive(Debug)]
pub enum ById {
    /// The entry.
    Found(Box<RawValue>),
    /// An entry that is not valid UTF-8.
    Unreadable(Unreadable),
    /// Auth0 does not hold that id (404): never logged, or aged out of the tenant's retention.
    Gone,
}

/// Where a state with no cursor begins.
#[derive(Debug)]
pub enum Bootstrap {
    /// Start after this id (`start` is a `log_id`); nothing is forwarded.
    After(LogId),
    /// The entry the bootstrap query found: forwarded itself (`oldest`, a time), or only started after
    /// (`now`).
    Found {
        /// The raw entry.
        entry: Box<RawValue>,
        /// Whether it is forwarded.
        forward: bool,
    },
    /// The tenant's log is empty.
    Empty,
}

/// The most entries one checkpoint page may hold (`take`).
const MAX_TAKE: u32 = 100;

/// How many pages `start = "now"` reads on from the newest-dated entry to find the greatest id.
const NOW_READ_ON_PAGES: usize = 10;

/// The Management API client of one tenant: token cache, pacing, paging. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    logs_url: String,
    client_id: String,
    timeout: std::time::Duration,
    max_page_bytes: usize,
    token: Arc<TokenCache>,
    pacer: Pacer,
    telemetry: TenantTelemetry,
    /// The last sign of pressure on the tenant's budget an answer gave, until the fetcher takes it.
    pressure: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("logs_url", &self.inner.logs_url)
            .field("client_id", &self.inner.client_id)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Build a client from an `[auth0]` section with a client of its own (for tests and one-shot commands).
    pub fn new(cfg: &config::Auth0) -> Result<Client, Error> {
        let http = crate::http::client(cfg.tls_ca.as_ref())
            .map_err(|e| Error::Setup(crate::logging::Chain(&e).to_string()))?;
        Client::with(cfg, http, TenantTelemetry::disabled(), None, None)
    }

    /// Build a client on a shared HTTP client, with counters, a token kept from an earlier run, and a callback
    /// for each newly minted token.
    pub fn with(
        cfg: &config::Auth0,
        http: reqwest::Client,
        telemetry: TenantTelemetry,
        stored: Option<StoredToken>,
        on_mint: Option<OnMint>,
    ) -> Result<Client, Error> {
        let logs_url = token::join(&cfg.base_url, "api/v2/logs")?;
        let token = Arc::new(TokenCache::new(cfg, http.clone(), telemetry.clone(), stored, on_mint)?);
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                logs_url,
                client_id: cfg.client_id.clone(),
                timeout: cfg.timeout,
                max_page_bytes: cfg.max_page_bytes,
                token,
                pacer: Pacer::new(cfg.max_requests_per_second),
                telemetry,
                pressure: std::sync::Mutex::new(None),
            }),
        })
    }

    /// Make sure a valid token is cached, minting one if needed (for `check`).
    pub async fn ensure_token(&self) -> Result<(), Error> {
        self.inner.token.get().await.map(|_| ())
    }

    /// The last sign of pressure on the tenant's request budget since the previous call (a 429, or
    /// `x-ratelimit-remaining` at or below a tenth of the limit), in words.
    pub fn take_pressure(&self) -> Option<String> {
        self.inner.pressure.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Read the page after `from` (exclusive), at most `take` entries (Auth0 caps it at 100).
    pub async fn page_after(&self, from: &LogId, take: u32) -> Result<Page, Error> {
        let query = [("from", from.to_string()), ("take", take.to_string())];
        let (headers, body, url) = self.get(&query, Some(from)).await?;
        let (entries, unreadable) = parse_page(&body, &url)?;
        let next_from = headers
            .get_all(reqwest::header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(next_from_link)
            .and_then(|s| LogId::parse(&s).ok());
        tracing::debug!(from = %from, take, entries = entries.len(), unreadable = unreadable.len(), "read a page of /api/v2/logs");
        Ok(Page { entries, unreadable, next_from })
    }

    /// Read one entry by its `log_id` (`GET /api/v2/logs/{id}`), with the same pacing, token, bound on the
    /// body and error handling as a page. A 404 is [`ById::Gone`].
    pub async fn log_by_id(&self, id: &LogId) -> Result<ById, Error> {
        // A LogId is ASCII letters and digits only: it needs no escaping in a path.
        let url = reqwest::Url::parse(&format!("{}/{id}", self.inner.logs_url))
            .map_err(|e| Error::Setup(format!("{}: {e}", self.inner.logs_url)))?;
        let (_, body, shown) = match self.get_url(url, None).await {
            Err(Error::Status { status: 404, .. }) => return Ok(ById::Gone),
            other => other?,
        };
        match serde_json::from_slice::<Box<RawValue>>(&body) {
            Ok(entry) => Ok(ById::Found(entry)),
            Err(e) => match std::str::from_utf8(&body) {
                Err(bad) if serde_json::from_slice::<IgnoredAny>(&body).is_ok() => {
                    Ok(ById::Unreadable(Unreadable::new(1, &body, bad.valid_up_to())))
                }
                _ => Err(Error::Body {
                    url: shown,
                    message: format!("expected one log entry as JSON ({} bytes): {e}", body.len()),
                }),
            },
        }
    }

    /// Find where a fresh state begins. `LogId` needs no request; the others are one search-mode query each.
    pub async fn bootstrap(&self, start: &config::Start) -> Result<Bootstrap, Error> {
        let (sort, q) = match start {
            config::Start::LogId(id) => return Ok(Bootstrap::After(id.clone())),
            config::Start::Now => ("date:-1", None),
            config::Start::Oldest => ("date:1", None),
            config::Start::Time(t) => {
                ("date:1", Some(format!("date:[{} TO *]", t.to_rfc3339_opts(SecondsFormat::Millis, true))))
            }
        };
        let mut entries = self.search(sort, q).await?;
        Ok(match entries.drain(..).next() {
            None => Bootstrap::Empty,
            Some(entry) if matches!(start, config::Start::Now) => {
                Bootstrap::Found { entry: self.read_on_to_the_newest(entry).await?, forward: false }
            }
            Some(entry) => Bootstrap::Found { entry, forward: true },
        })
    }

    /// The entry with the greatest `log_id` now, starting from the newest by date. Auth0 orders its log by
    /// id and does not keep date order, so entries logged after the newest-dated one can follow it by id;
    /// `now` must skip them too, so read on from it to the end of the log (one short page, as a rule). A
    /// tenant logging faster than [`NOW_READ_ON_PAGES`] pages keeps the rest, which are delivered.
    async fn read_on_to_the_newest(&self, mut newest: Box<RawValue>) -> Result<Box<RawValue>, Error> {
        let id_of = |e: &RawValue| crate::entry::read_head(e.get()).ok().and_then(|h| h.log_id.ok());
        for _ in 0..NOW_READ_ON_PAGES {
            let Some(from) = id_of(&newest) else { break };
            let page = self.page_after(&from, MAX_TAKE).await?;
            let full = page.entries.len() >= MAX_TAKE as usize;
            // The greatest id after `from` (a page may repeat entries at or below it).
            let last = page
                .entries
                .into_iter()
                .filter_map(|e| id_of(&e).filter(|id| *id > from).map(|id| (id, e)))
                .max_by(|a, b| a.0.cmp(&b.0));
            match last {
                Some((_, entry)) => newest = entry,
                None => break,
            }
            if !full {
                break;
            }
        }
        Ok(newest)
    }

    /// Read the newest entry (one search-mode request) to prove that the token carries `read:logs`; returns
    /// how many entries came back (0 or 1). For `check`.
    pub async fn probe(&self) -> Result<usize, Error> {
        self.search("date:-1", None).await.map(|e| e.len())
    }

    /// How many tokens this client has minted (each one writes a `seccft` entry into the tenant log).
    pub fn tokens_minted(&self) -> u64 {
        self.inner.token.minted()
    }

    async fn search(&self, sort: &str, q: Option<String>) -> Result<Vec<Box<RawValue>>, Error> {
        let mut query = Vec::with_capacity(4);
        if let Some(q) = q {
            query.push(("q", q));
        }
        query.extend([("sort", sort.to_string()), ("per_page", "1".into()), ("page", "0".into())]);
        let (_, body, url) = self.get(&query, None).await?;
        match parse_page(&body, &url)? {
            (entries, unreadable) if unreadable.is_empty() => Ok(entries),
            // The one entry a search finds decides where a state begins: it has to be read.
            (_, unreadable) => Err(Error::Body {
                url,
                message: format!(
                    "the entry found is not valid UTF-8 (byte {} of it)",
                    unreadable[0].invalid_at
                ),
            }),
        }
    }

    /// One paced, authenticated GET of `/api/v2/logs` with this query (see `get_url`).
    async fn get(
        &self,
        query: &[(&str, String)],
        from: Option<&LogId>,
    ) -> Result<(HeaderMap, Vec<u8>, String), Error> {
        let url = reqwest::Url::parse_with_params(&self.inner.logs_url, query)
            .map_err(|e| Error::Setup(format!("{}: {e}", self.inner.logs_url)))?;
        self.get_url(url, from).await
    }

    /// One paced, authenticated GET of a logs URL, with a single re-authentication on 401. Returns the
    /// headers, the body, and the URL for messages.
    async fn get_url(
        &self,
        url: reqwest::Url,
        from: Option<&LogId>,
    ) -> Result<(HeaderMap, Vec<u8>, String), Error> {
        let inner = &*self.inner;
        let shown = url.to_string();
        let transport = |e: reqwest::Error| {
            let message = crate::logging::Chain(&e.without_url()).to_string();
            let hint = crate::http::tls_hint(&message, crate::http::Section::Auth0);
            Error::Transport { url: shown.clone(), message: format!("{message}{hint}") }
        };
        let mut reauthenticated = false;
        loop {
            // Pace first: a token fetched before a long hold (remaining = 0, a 429) could expire meanwhile.
            inner.pacer.wait().await;
            let bearer = inner.token.get().await?;
            let sent = inner
                .http
                .get(url.clone())
                .header(AUTHORIZATION, bearer.header())
                .timeout(inner.timeout)
                .send()
                .await;
            let response = match sent {
                Ok(r) => r,
                Err(e) => {
                    inner.telemetry.request("logs", None);
                    return Err(transport(e));
                }
            };
            let status = response.status();
            inner.telemetry.request("logs", Some(status.as_u16()));
            let headers = response.headers().clone();
            inner.pacer.observe(status, &headers);
            if let Some(why) = pace::pressure(status, &headers) {
                *inner.pressure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
            }
            let limit = if status.is_success() { inner.max_page_bytes } else { 64 * 1024 };
            let body = match read_limited(response, limit).await {
                Ok(b) => b,
                Err(BodyError::TooLarge { limit }) if status.is_success() => {
                    return Err(Error::Body {
                        url: shown,
                        message: format!(
                            "the page is larger than auth0.max_page_bytes ({limit} bytes, after decompression)"
                        ),
                    });
                }
                // An error answer is only quoted: its start is enough.
                Err(BodyError::TooLarge { .. }) => b"(an error answer too large to quote)".to_vec(),
                Err(BodyError::Read(e)) => return Err(transport(e)),
            };
            if status.is_success() {
                return Ok((headers, body, shown));
            }
            let message = error_message(&body);
            // Not `message`: that is the event's own field, and a JSON line would then hold the key twice.
            tracing::warn!(status = status.as_u16(), url = %shown, answer = %message, "Auth0 refused a logs request");
            match status {
                StatusCode::UNAUTHORIZED if !reauthenticated => {
                    reauthenticated = true;
                    inner.token.invalidate(bearer.generation);
                }
                StatusCode::UNAUTHORIZED => return Err(Error::Unauthorized { url: shown, message }),
                StatusCode::FORBIDDEN => {
                    return Err(Error::Forbidden { client_id: inner.client_id.clone(), url: shown, message });
                }
                StatusCode::BAD_REQUEST if from.is_some() => {
                    return Err(Error::ExpiredCheckpoint {
                        from: from.map(LogId::to_string).unwrap_or_default(),
                        message,
                    });
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    return Err(Error::RateLimited {
                        url: shown,
                        message,
                        retry_after: pace::retry_after(&headers),
                    });
                }
                s if s.is_redirection() => {
                    let to = headers.get(LOCATION).and_then(|v| v.to_str().ok()).map(super::clip);
                    return Err(Error::Status {
                        url: shown,
                        status: s.as_u16(),
                        message: format!(
                            "a redirect to {}; check auth0.base_url",
                            to.as_deref().unwrap_or("nowhere")
                        ),
                    });
                }
                s => return Err(Error::Status { url: shown, status: s.as_u16(), message }),
            }
        }
    }
}

/// The `from` query parameter of the `rel="next"` link in one `Link` header value.
fn next_from_link(header: &str) -> Option<String> {
    header.split(',').find_map(|link| {
        let (target, params) = link.split_once(';')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        });
        if !is_next {
            return None;
        }
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        let url = reqwest::Url::parse(target).ok()?;
        url.query_pairs().find(|(k, _)| k == "from").map(|(_, v)| v.into_owned())
    })
}

/// The elements of a JSON array of log entries: those that are text as raw JSON, and apart those that are
/// not valid UTF-8 but otherwise JSON, so that one damaged entry does not hold up the page. Anything else
/// that is not a JSON array is an unusable body.
fn parse_page(body: &[u8], url: &str) -> Result<(Vec<Box<RawValue>>, Vec<Unreadable>), Error> {
    let unusable = |e: serde_json::Error| Error::Body {
        url: url.to_string(),
        message: format!("expected a JSON array of log entries ({} bytes): {e}", body.len()),
    };
    let strict = match serde_json::from_slice::<Vec<Box<RawValue>>>(body) {
        Ok(entries) => return Ok((entries, Vec::new())),
        Err(e) => e,
    };
    // Only a body that is JSON but for its encoding is split; serde_json does not check UTF-8 when it
    // merely skips values.
    if std::str::from_utf8(body).is_ok() || serde_json::from_slice::<Vec<IgnoredAny>>(body).is_err() {
        return Err(unusable(strict));
    }
    let mut entries = Vec::new();
    let mut unreadable = Vec::new();
    for (i, element) in array_elements(body).into_iter().enumerate() {
        let bytes = &body[element];
        match std::str::from_utf8(bytes) {
            Ok(text) => entries.push(RawValue::from_string(text.to_owned()).map_err(unusable)?),
            Err(bad) => unreadable.push(Unreadable::new(i + 1, bytes, bad.valid_up_to())),
        }
    }
    Ok((entries, unreadable))
}

/// Where each element of a JSON array begins and ends. `body` must be a valid JSON array but for its
/// encoding (checked by the caller): only strings, escapes and brackets are tracked.
fn array_elements(body: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let Some(open) = body.iter().position(|&b| b == b'[') else { return out };
    let mut i = open + 1;
    let mut depth = 0usize;
    let mut start = None;
    let mut in_string = false;
    while let Some(&b) = body.get(i) {
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => depth += 1,
                b']' | b'}' if depth > 0 => depth -= 1,
                b',' | b']' if depth == 0 => {
                    if let Some(s) = start.take() {
                        out.push(s..trim_end(body, i));
                    }
                    if b == b']' {
                        break;
                    }
                }
                b' ' | b'\n' | b'\r' | b'\t' => {}
                _ => {}
            }
            if start.is_none() && !matches!(b, b' ' | b'\n' | b'\r' | b'\t' | b',' | b']') {
                start = Some(i);
            }
        }
        i += 1;
    }
    out
}

/// `end`, less the whitespace before it.
fn trim_end(body: &[u8], mut end: usize) -> usize {
    while end > 0 && matches!(body[end - 1], b' ' | b'\n' | b'\r' | b'\t') {
        end -= 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page with an element that is not UTF-8 keeps its other entries, in order, and that element apart.
    #[test]
    fn an_element_that_is_not_utf8_is_kept_apart() {
        let body = b" [ {\"log_id\":\"1\",\"a\":[1,{\"b\":\"]}\"}]} , {\"log_id\":\"2\",\"n\":\"\xff\\\"\"}, \"x\",7 ]";
        let (entries, bad) = parse_page(body, "u").expect("a page");
        let texts: Vec<&str> = entries.iter().map(|e| e.get()).collect();
        assert_eq!(texts, [r#"{"log_id":"1","a":[1,{"b":"]}"}]}"#, r#""x""#, "7"]);
        assert_eq!(bad.len(), 1);
        assert_eq!((bad[0].position, bad[0].invalid_at, bad[0].size), (2, 19, 24));
        assert_eq!(bad[0].lossy, "{\"log_id\":\"2\",\"n\":\"\u{FFFD}\\\"\"}");
        // Not JSON at all, or invalid UTF-8 where JSON is broken too: the whole body is unusable.
        assert!(parse_page(b"[{\"a\":1}", "u").is_err());
        assert!(parse_page(b"[{\"a\":\"\xff}]", "u").is_err());
        assert!(parse_page(b"[]", "u").expect("empty").0.is_empty());
    }

    #[test]
    fn the_next_link_yields_its_from() {
        let h = "<https://t.example.com/api/v2/logs?from=900202&take=100>; rel=\"next\"";
        assert_eq!(next_from_link(h).as_deref(), Some("900202"));
        let two = "<https://x/api/v2/logs?from=1&take=1>; rel=\"prev\", <https://x/api/v2/logs?take=1&from=2>; rel=next";
        assert_eq!(next_from_link(two).as_deref(), Some("2"));
        assert_eq!(next_from_link("garbage"), None);
    }
}
