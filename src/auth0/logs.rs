//! `/api/v2/logs`: checkpoint paging for the steady state, and the search queries that find where a fresh
//! state begins.
//!
//! Entries are kept as raw JSON (`Box<RawValue>`) so that what reaches the outbox is byte-for-byte what Auth0
//! sent, and so that an element that is not even an object is still carried to the pipeline, which
//! dead-letters it instead of losing the whole page. Paging uses `from`/`take` only (search mode caps out at
//! 1,000 results); the `from` of Auth0's `Link: rel="next"` is reported on the [`Page`] and cross-checked
//! against the last entry, because Auth0 documents that link as the authoritative continuation.
//!
//! Every request, bootstrap included, goes through the shared pacer, carries a cached token, and on a 401
//! re-mints the token once before giving up.

use std::sync::Arc;

use chrono::SecondsFormat;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, LOCATION};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::pace::{self, Pacer};
use super::token::{self, TokenCache};
use super::{Error, error_message};
use crate::config;

/// One page of `/api/v2/logs`.
#[derive(Debug)]
pub struct Page {
    /// The entries, raw, in the order Auth0 returned them (`log_id` order).
    pub entries: Vec<Box<RawValue>>,
    /// The `from` carried by the `Link: <...>; rel="next"` header, when Auth0 sent one. On a non-empty page it
    /// is the last entry's `log_id`; on an empty page it is the `from` of the request.
    pub next_from: Option<String>,
}

/// The result of the bootstrap query for a state with no cursor.
#[derive(Debug)]
pub struct Bootstrap {
    /// An entry that must itself be forwarded (the first found by `oldest` or a time), which also becomes the cursor.
    pub first: Option<Box<RawValue>>,
    /// A cursor to start after without forwarding anything (`now`, or a `log_id`).
    pub cursor: Option<String>,
}

/// The Management API client: token cache, pacing, paging. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    logs_url: String,
    client_id: String,
    token: TokenCache,
    pacer: Pacer,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("logs_url", &self.inner.logs_url)
            .field("client_id", &self.inner.client_id)
            .finish_non_exhaustive()
    }
}

/// The identity of an entry, read from its raw JSON. Pre-2020 entries carry only `_id`.
#[derive(Deserialize)]
struct EntryId {
    log_id: Option<String>,
    #[serde(rename = "_id")]
    id: Option<String>,
}

/// The `log_id` of a raw entry, if it is an object that has one.
pub fn log_id_of(entry: &RawValue) -> Option<String> {
    let id: EntryId = serde_json::from_str(entry.get()).ok()?;
    id.log_id.or(id.id).filter(|s| !s.is_empty())
}

impl Client {
    /// Build a client from the `[auth0]` section.
    pub fn new(cfg: &config::Auth0) -> Result<Client, Error> {
        // Redirects are never followed: for the token call that is an SSRF guard, and a redirect from the
        // Management API means auth0.base_url is wrong, which the operator should see.
        let http = reqwest::Client::builder()
            .user_agent(concat!("auth0-rudderstack/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(std::time::Duration::from_secs(10)))
            .build()
            .map_err(|e| Error::Setup(crate::error_chain(&e)))?;
        let logs_url = token::join(&cfg.base_url, "api/v2/logs")?;
        let token = TokenCache::new(cfg, http.clone())?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                logs_url,
                client_id: cfg.client_id.clone(),
                token,
                pacer: Pacer::new(cfg.max_requests_per_second),
            }),
        })
    }

    /// Make sure a valid token is cached, minting one if needed (for `check`).
    pub async fn ensure_token(&self) -> Result<(), Error> {
        self.inner.token.get().await.map(|_| ())
    }

    /// Read the page after `from` (exclusive), at most `take` entries (Auth0 caps it at 100).
    pub async fn page_after(&self, from: &str, take: u32) -> Result<Page, Error> {
        let query = [("from", from.to_string()), ("take", take.to_string())];
        let (headers, body, url) = self.get(&query, Some(from)).await?;
        let entries = parse_array(&body, &url)?;
        let next_from = headers
            .get_all(reqwest::header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(next_from_link);
        if let Some(next) = &next_from {
            let expected = match entries.last() {
                Some(last) => log_id_of(last),
                None => Some(from.to_string()),
            };
            if let Some(expected) = expected
                && &expected != next
            {
                tracing::warn!(
                    link_from = %next,
                    expected = %expected,
                    entries = entries.len(),
                    "the Link rel=\"next\" cursor disagrees with the last entry's log_id"
                );
            }
        }
        tracing::debug!(from, take, entries = entries.len(), "read a page of /api/v2/logs");
        Ok(Page { entries, next_from })
    }

    /// Find where a fresh state begins. `LogId` needs no request; the others are one search-mode query each.
    pub async fn bootstrap(&self, start: &config::Start) -> Result<Bootstrap, Error> {
        let (sort, q) = match start {
            config::Start::LogId(id) => {
                return Ok(Bootstrap { first: None, cursor: Some(id.clone()) });
            }
            config::Start::Now => ("date:-1", None),
            config::Start::Oldest => ("date:1", None),
            config::Start::Time(t) => {
                ("date:1", Some(format!("date:[{} TO *]", t.to_rfc3339_opts(SecondsFormat::Millis, true))))
            }
        };
        let mut entries = self.search(sort, q).await?;
        let Some(entry) = entries.drain(..).next() else {
            tracing::info!(start = ?start, "the tenant has no log entry to start from yet");
            return Ok(Bootstrap { first: None, cursor: None });
        };
        let url = self.inner.logs_url.clone();
        let id = log_id_of(&entry)
            .ok_or_else(|| Error::Body { url, message: "the bootstrap entry has no log_id".into() })?;
        Ok(match start {
            config::Start::Now => Bootstrap { first: None, cursor: Some(id) },
            _ => Bootstrap { first: Some(entry), cursor: None },
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
        from: Option<&str>,
    ) -> Result<(HeaderMap, Vec<u8>, String), Error> {
        let inner = &*self.inner;
        let url = reqwest::Url::parse_with_params(&inner.logs_url, query)
            .map_err(|e| Error::Setup(format!("{}: {e}", inner.logs_url)))?;
        let shown = url.to_string();
        let mut reauthenticated = false;
        loop {
            // Pace first: a token fetched before a long hold (remaining = 0, a 429) could expire meanwhile.
            inner.pacer.wait().await;
            let bearer = inner.token.get().await?;
            let response =
                inner.http.get(url.clone()).header(AUTHORIZATION, bearer.header()).send().await.map_err(
                    |e| Error::Transport {
                        url: shown.clone(),
                        message: crate::error_chain(&e.without_url()),
                    },
                )?;
            let status = response.status();
            let headers = response.headers().clone();
            inner.pacer.observe(status, &headers);
            let body = response.bytes().await.map_err(|e| Error::Transport {
                url: shown.clone(),
                message: crate::error_chain(&e.without_url()),
            })?;
            if status.is_success() {
                return Ok((headers, body.to_vec(), shown));
            }
            let message = error_message(&body);
            tracing::warn!(status = status.as_u16(), url = %shown, message = %message, "Auth0 refused a logs request");
            match status {
                StatusCode::UNAUTHORIZED if !reauthenticated => {
                    reauthenticated = true;
                    inner.token.invalidate(bearer.generation).await;
                }
                StatusCode::UNAUTHORIZED => return Err(Error::Unauthorized { url: shown, message }),
                StatusCode::FORBIDDEN => {
                    return Err(Error::Forbidden { client_id: inner.client_id.clone(), url: shown, message });
                }
                StatusCode::BAD_REQUEST if from.is_some() => {
                    return Err(Error::ExpiredCheckpoint {
                        from: from.unwrap_or_default().to_string(),
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
                    let to = headers.get(LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("nowhere");
                    return Err(Error::Status {
                        url: shown,
                        status: s.as_u16(),
                        message: format!("a redirect to {to}; check auth0.base_url"),
                    });
                }
                s => return Err(Error::Status { url: shown, status: s.as_u16(), message }),
            }
        }
    }
}

fn parse_array(body: &[u8], url: &str) -> Result<Vec<Box<RawValue>>, Error> {
    serde_json::from_slice::<Vec<Box<RawValue>>>(body).map_err(|e| Error::Body {
        url: url.to_string(),
        message: format!("expected a JSON array of log entries ({} bytes): {e}", body.len()),
    })
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

    #[test]
    fn a_log_id_is_read_from_log_id_or_the_legacy_id() {
        let a = RawValue::from_string(r#"{"log_id":"9001","_id":"9001"}"#.into()).unwrap();
        let b = RawValue::from_string(r#"{"_id":"5ef3bb0a72487a0047c32959"}"#.into()).unwrap();
        let c = RawValue::from_string("[1,2]".into()).unwrap();
        assert_eq!(log_id_of(&a).as_deref(), Some("9001"));
        assert_eq!(log_id_of(&b).as_deref(), Some("5ef3bb0a72487a0047c32959"));
        assert_eq!(log_id_of(&c), None);
    }
}
