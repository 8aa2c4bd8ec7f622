//! `/api/v2/logs`: checkpoint paging for the steady state, and the search queries that find where a fresh
//! state begins.
//!
//! Entries are kept as raw JSON (`Box<RawValue>`) so that what reaches the outbox is byte-for-byte what Auth0
//! sent, and so that an element that is not even an object is still carried to the pipeline, which
//! dead-letters it instead of losing the whole page. Paging uses `from`/`take` only (search mode caps out at
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
    /// The `from` of the `Link: <...>; rel="next"` header, when Auth0 sent a valid one: on a non-empty page the
    /// last entry's `log_id`, on an empty page the `from` of the request. Informative only: the cursor comes
    /// from the entries themselves.
    pub next_from: Option<LogId>,
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
            }),
        })
    }

    /// Make sure a valid token is cached, minting one if needed (for `check`).
    pub async fn ensure_token(&self) -> Result<(), Error> {
        self.inner.token.get().await.map(|_| ())
    }

    /// Read the page after `from` (exclusive), at most `take` entries (Auth0 caps it at 100).
    pub async fn page_after(&self, from: &LogId, take: u32) -> Result<Page, Error> {
        let query = [("from", from.to_string()), ("take", take.to_string())];
        let (headers, body, url) = self.get(&query, Some(from)).await?;
        let entries = parse_array(&body, &url)?;
        let next_from = headers
            .get_all(reqwest::header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(next_from_link)
            .and_then(|s| LogId::parse(&s).ok());
        tracing::debug!(from = %from, take, entries = entries.len(), "read a page of /api/v2/logs");
        Ok(Page { entries, next_from })
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
            Some(entry) => Bootstrap::Found { entry, forward: !matches!(start, config::Start::Now) },
        })
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
        parse_array(&body, &url)
    }

    /// One paced, authenticated GET of `/api/v2/logs`, with a single re-authentication on 401. Returns the
    /// headers, the body, and the URL for messages.
    async fn get(
        &self,
        query: &[(&str, String)],
        from: Option<&LogId>,
    ) -> Result<(HeaderMap, Vec<u8>, String), Error> {
        let inner = &*self.inner;
        let url = reqwest::Url::parse_with_params(&inner.logs_url, query)
            .map_err(|e| Error::Setup(format!("{}: {e}", inner.logs_url)))?;
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

fn parse_array(body: &[u8], url: &str) -> Result<Vec<Box<RawValue>>, Error> {
    serde_json::from_slice::<Vec<Box<RawValue>>>(body).map_err(|e| Error::Body {
        url: url.to_string(),
        message: format!("expected a JSON array of log entries ({} bytes): {e}", body.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_link_yields_its_from() {
        let h = "<https://t.example.com/api/v2/logs?from=900202&take=100>; rel=\"next\"";
        assert_eq!(next_from_link(h).as_deref(), Some("900202"));
        let two = "<https://x/api/v2/logs?from=1&take=1>; rel=\"prev\", <https://x/api/v2/logs?take=1&from=2>; rel=next";
        assert_eq!(next_from_link(two).as_deref(), Some("2"));
        assert_eq!(next_from_link("garbage"), None);
    }
}
