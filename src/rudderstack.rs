//! The RudderStack sink: packs outbox items into requests to the data plane and classifies every answer.
//!
//! The gateway validates a request all-or-nothing and answers with a fixed set of statuses (200 `ok` after
//! the events are committed, 400 for a malformed event, 401/404 for a bad key or disabled source, 413 for an
//! oversized body, 429/5xx for load). That shapes this module: a 2xx is the only commit point; 5xx, 429 and
//! transport failures stop delivery with a transient error so the caller backs off and re-sends the same rows;
//! 413 and 400 are answered by splitting the request in halves, so that a bad event is isolated in
//! O(log n) requests and everything else still goes through; 401/404 stop with a fatal error the operator must
//! fix. Redirects are never followed: a POST that gets redirected has not been stored, and following it
//! silently would hide a misconfigured URL. The sink itself never sleeps or retries; the pipeline owns
//! backoff, so that one place decides how long a row may stay pending.
//!
//! This module owns the whole envelope: the `{"batch":[...]}` body, the Log Streams `{log_id, data}` wrapper
//! of webhook mode ([`Item::webhook`]), authentication, and what an answer means. Answers are read with a
//! limit (a 2xx counts by its status alone), and once a shutdown is asked for no new request starts.
//!
//! Request bodies are built by concatenating the items' JSON text into one buffer (no re-parse), because this
//! is on the hot path. In webhook mode the write key travels in the query string, so every URL, error message
//! and server-provided text that could carry it is redacted before it is logged or returned.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::config;
use crate::telemetry::TenantTelemetry;

/// Server-provided text quoted in errors and reasons is cut to this many bytes.
const MAX_QUOTED_BODY: usize = 512;
/// What replaces the write key wherever it might otherwise show.
const REDACTED: &str = "[redacted]";
/// The most of a 2xx answer read (only its status counts).
const MAX_OK_BODY: usize = 64 * 1024;
/// The longest wait a `Retry-After` may ask for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A failed call to RudderStack. Messages never contain the write key, in any encoding we send it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The HTTP client could not be built (a TLS back-end problem); nothing was sent.
    #[error("cannot build the HTTP client for RudderStack: {0}")]
    Client(String),
    /// The data plane could not be reached, or the connection broke before an answer arrived.
    #[error("cannot reach RudderStack at {endpoint}: {message}")]
    Transport {
        /// The URL without any query string.
        endpoint: String,
        /// The transport error, redacted.
        message: String,
    },
    /// No complete answer within `rudderstack.timeout`.
    #[error("RudderStack did not answer {endpoint} within {}", humantime::format_duration(*.timeout))]
    Timeout {
        /// The URL without any query string.
        endpoint: String,
        /// The configured limit.
        timeout: Duration,
    },
    /// A 5xx, 429 or 408: the gateway is overloaded or failing; the same request may succeed later.
    #[error("RudderStack answered {status} for {endpoint}: {body:?}")]
    Unavailable {
        /// The URL without any query string.
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// The answer's body, trimmed and redacted.
        body: String,
        /// How long the answer's `Retry-After` asked to wait, when it did.
        retry_after: Option<Duration>,
    },
    /// 401: the gateway does not know the write key (or, in webhook mode, it is not a webhook source's key).
    #[error(
        "RudderStack rejected the write key (401 {body:?}): check rudderstack.write_key or RUDDERSTACK_WRITE_KEY{hint}"
    )]
    WriteKeyRejected {
        /// The answer's body, e.g. `invalid write key`.
        body: String,
        /// Extra advice for the mode in use.
        hint: &'static str,
    },
    /// 404: the write key belongs to a disabled source (or the URL does not point at a gateway).
    #[error(
        "RudderStack answered 404 {body:?} for {endpoint}: the source is disabled (enable it in RudderStack) or rudderstack.data_plane_url is not a data plane"
    )]
    SourceDisabled {
        /// The URL without any query string.
        endpoint: String,
        /// The answer's body, e.g. `source is disabled`.
        body: String,
    },
    /// A 3xx: the POST was not stored and is never followed.
    #[error(
        "the data plane answered a redirect ({status}, Location: {location}) — set rudderstack.data_plane_url to the final URL"
    )]
    Redirect {
        /// The HTTP status.
        status: u16,
        /// The `Location` header without its query string, or `(none)`.
        location: String,
    },
    /// A status the gateway never sends (e.g. a 403 or 422 from a proxy in front of it). It is not a verdict
    /// on any event, so nothing is set aside: delivery stops and the outbox is kept.
    #[error(
        "RudderStack answered {status} for {endpoint}: {body:?}; the gateway itself never sends this status, so a \
         proxy or firewall in between may be refusing the request (check rudderstack.data_plane_url)"
    )]
    Unexpected {
        /// The URL without any query string.
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// The answer's body, trimmed and redacted.
        body: String,
    },
}

impl Error {
    /// Whether waiting and trying again can help.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Transport { .. } | Error::Timeout { .. } | Error::Unavailable { .. })
    }

    /// Whether only an operator can fix it (key, source or URL); retrying the same request is pointless.
    pub fn is_fatal(&self) -> bool {
        !self.is_transient()
    }

    /// How long the gateway (or a proxy in front of it) asked us to wait.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// One thing to deliver: a transformed event (batch mode) or a Log Streams wrapper (webhook mode).
#[derive(Debug, Clone)]
pub struct Item {
    /// The outbox row it came from.
    pub seq: i64,
    /// Its JSON text.
    pub json: String,
}

impl Item {
    /// The Log Streams wrapper of a raw entry, `{"log_id": ..., "data": {...}}`, as Auth0's Custom Webhook
    /// stream posts it and RudderStack's Auth0 source expects it. An empty `log_id` (a re-queued dead letter
    /// that had none) is sent as `null`.
    pub fn webhook(seq: i64, log_id: &str, raw: &str) -> Item {
        let id = if log_id.is_empty() {
            "null".to_string()
        } else {
            serde_json::to_string(log_id).unwrap_or_else(|_| "null".into())
        };
        Item { seq, json: format!("{{\"log_id\":{id},\"data\":{raw}}}") }
    }
}

/// What one `deliver` call achieved.
#[derive(Debug, Default)]
pub struct Report {
    /// Rows RudderStack answered 2xx for, in the order they were given.
    pub delivered: Vec<i64>,
    /// Rows RudderStack can never accept, with the reason.
    pub rejected: Vec<(i64, String)>,
    /// The error that stopped delivery early; rows in neither list are still pending.
    pub error: Option<Error>,
    /// Delivery stopped early because a shutdown was asked for; rows in neither list are still pending.
    pub interrupted: bool,
    /// How many HTTP requests were sent.
    pub requests: usize,
}

/// The data-plane client. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct Sink {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Written by hand so that the key can never be part of it.
        f.debug_struct("Sink")
            .field("endpoint", &self.inner.endpoint)
            .field("mode", &self.inner.mode)
            .finish_non_exhaustive()
    }
}

struct Inner {
    client: reqwest::Client,
    /// `/v1/batch` or `/v1/webhook`, without the key.
    url: Url,
    /// `url` as text, for messages and logs.
    endpoint: String,
    write_key: SecretString,
    mode: config::Mode,
    max_batch_events: usize,
    max_batch_bytes: usize,
    max_event_bytes: usize,
    timeout: Duration,
    telemetry: TenantTelemetry,
}

/// How one request ended.
enum Answer {
    /// 2xx: the gateway stored every event of the request.
    Stored,
    /// The request as a whole is refused for good; smaller requests may pass.
    Refused { status: u16, body: String },
    /// Stop delivering.
    Stop(Error),
}

impl Sink {
    /// Build a sink from the `[rudderstack]` section with an HTTP client of its own.
    pub fn new(cfg: &config::RudderStack) -> Result<Sink, Error> {
        let client = crate::http::client(cfg.tls_ca.as_ref())
            .map_err(|e| Error::Client(crate::logging::Chain(&e).to_string()))?;
        Ok(Sink::with(cfg, client, TenantTelemetry::disabled()))
    }

    /// Build a sink on a shared HTTP client (tenants with the same TLS settings share one connection pool).
    pub fn with(cfg: &config::RudderStack, client: reqwest::Client, telemetry: TenantTelemetry) -> Sink {
        let path = match cfg.mode {
            config::Mode::Batch => "v1/batch",
            config::Mode::Webhook => "v1/webhook",
        };
        // Append rather than `join`, so that a data plane behind a path prefix keeps its prefix.
        let mut url = cfg.data_plane_url.clone();
        url.set_query(None);
        url.set_fragment(None);
        let base = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{base}/{path}"));
        let endpoint = url.to_string();
        Sink {
            inner: Arc::new(Inner {
                client,
                url,
                endpoint,
                write_key: cfg.write_key.clone(),
                mode: cfg.mode,
                max_batch_events: cfg.max_batch_events.max(1),
                max_batch_bytes: cfg.max_batch_bytes,
                max_event_bytes: cfg.max_event_bytes,
                timeout: cfg.timeout,
                telemetry,
            }),
        }
    }

    /// The endpoint posted to (without any key).
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// Deliver items in order: pack them into requests within the limits, split on 413, bisect on 400,
    /// reject items over `max_event_bytes`. Stops at the first transient or fatal error, and starts no new
    /// request once `stop` is cancelled (the one in flight is left to the caller's grace period).
    pub async fn deliver(&self, items: Vec<Item>, stop: &CancellationToken) -> Report {
        let inner = &*self.inner;
        let mut report = Report::default();
        let mut sendable: Vec<Item> = Vec::with_capacity(items.len());
        for item in items {
            if item.json.len() > inner.max_event_bytes {
                let reason = format!(
                    "the event is {} bytes, more than rudderstack.max_event_bytes ({})",
                    item.json.len(),
                    inner.max_event_bytes
                );
                report.rejected.push((item.seq, reason));
            } else {
                sendable.push(item);
            }
        }
        report.delivered.reserve(sendable.len());

        let mut start = 0;
        while start < sendable.len() {
            let end = start + inner.pack(&sendable[start..]);
            if let Err(e) = self.send_range(&sendable, start..end, &mut report, stop).await {
                tracing::warn!(
                    endpoint = %inner.endpoint,
                    transient = e.is_transient(),
                    error = %e,
                    delivered = report.delivered.len(),
                    "delivery stopped"
                );
                report.error = Some(e);
                break;
            }
            if report.interrupted {
                break;
            }
            start = end;
        }
        report
    }

    /// Send `range` as one request, splitting it in halves on 400/413 (depth first, left half first, so that
    /// delivered rows stay in order). Returns the error that must stop delivery.
    async fn send_range(
        &self,
        items: &[Item],
        range: Range<usize>,
        report: &mut Report,
        stop: &CancellationToken,
    ) -> Result<(), Error> {
        let mut stack = vec![range];
        while let Some(r) = stack.pop() {
            if stop.is_cancelled() {
                report.interrupted = true;
                return Ok(());
            }
            let part = &items[r.clone()];
            let body = self.inner.body(part);
            report.requests += 1;
            match self.post(body, part.len()).await {
                Answer::Stored => report.delivered.extend(part.iter().map(|i| i.seq)),
                Answer::Refused { status, body } if part.len() == 1 => {
                    let reason = refusal_reason(status, &body);
                    tracing::debug!(status, reason = %reason, "RudderStack refused an event on its own");
                    report.rejected.push((part[0].seq, reason));
                }
                Answer::Refused { status, .. } => {
                    tracing::debug!(status, events = part.len(), "request refused, splitting it in halves");
                    let mid = r.start + part.len() / 2;
                    stack.push(mid..r.end);
                    stack.push(r.start..mid);
                }
                Answer::Stop(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// POST one body and classify the answer.
    async fn post(&self, body: Vec<u8>, events: usize) -> Answer {
        let inner = &*self.inner;
        let bytes = body.len();
        let request = match inner.mode {
            config::Mode::Batch => {
                inner.client.post(inner.url.clone()).basic_auth(inner.write_key.expose_secret(), Some(""))
            }
            config::Mode::Webhook => {
                let mut url = inner.url.clone();
                url.query_pairs_mut().append_pair("writeKey", inner.write_key.expose_secret());
                inner.client.post(url)
            }
        };
        let response = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(inner.timeout)
            .body(body)
            .send()
            .await;
        let label = match inner.mode {
            config::Mode::Batch => "batch",
            config::Mode::Webhook => "webhook",
        };
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                inner.telemetry.request(label, None);
                return Answer::Stop(inner.transport_error(e));
            }
        };
        let status = response.status().as_u16();
        inner.telemetry.request(label, Some(status));
        tracing::debug!(endpoint = %inner.endpoint, status, events, bytes, "RudderStack answered");
        if response.status().is_success() {
            // The gateway answers only after committing, so the status alone is the commit point; the body
            // is read (up to a limit) just to keep the connection reusable, and whatever it holds is ignored.
            // The gateway's own answer is "ok": anything that cannot be read is worth a word to the operator.
            if let Err(e) = crate::http::read_limited(response, MAX_OK_BODY).await {
                tracing::warn!(
                    endpoint = %inner.endpoint,
                    status,
                    error = %crate::logging::Chain(&e),
                    "RudderStack's answer was not read to its end; the events count as stored, as its status says"
                );
            }
            return Answer::Stored;
        }
        if response.status().is_redirection() {
            return Answer::Stop(inner.redirect_error(&response));
        }
        let retry_after = crate::http::retry_after(response.headers(), MAX_RETRY_AFTER);
        let body = inner.read_body(response).await;
        match status {
            401 => Answer::Stop(inner.key_rejected(body)),
            404 => Answer::Stop(Error::SourceDisabled { endpoint: inner.endpoint.clone(), body }),
            408 | 429 | 500..=599 => Answer::Stop(Error::Unavailable {
                endpoint: inner.endpoint.clone(),
                status,
                body,
                retry_after,
            }),
            // The gateway's verdicts on the events themselves: all-or-nothing per request, so bisect.
            400 | 413 => Answer::Refused { status, body },
            _ => Answer::Stop(Error::Unexpected { endpoint: inner.endpoint.clone(), status, body }),
        }
    }

    /// Check that the write key is accepted, without storing any event.
    ///
    /// It posts an empty batch (`{"batch":[]}`, or `[]` in webhook mode). The gateway authenticates before it
    /// looks at the body, and an empty batch can only be refused with 400 `empty batch payload`, so a 400
    /// means the key passed, while 401/404 mean a bad key or a disabled source.
    pub async fn check(&self) -> Result<(), Error> {
        let inner = &*self.inner;
        match self.post(inner.body(&[]), 0).await {
            Answer::Stored => Ok(()),
            Answer::Refused { status: 400, body } => {
                tracing::debug!(body = %body, "the write key is accepted (an empty batch is refused after authentication)");
                Ok(())
            }
            Answer::Refused { status, body } => {
                Err(Error::Unexpected { endpoint: inner.endpoint.clone(), status, body })
            }
            Answer::Stop(e) => Err(e),
        }
    }
}

impl Inner {
    /// How many of `items` (at least one) fit in the next request.
    fn pack(&self, items: &[Item]) -> usize {
        let mut bytes = self.envelope_len();
        let mut n = 0;
        for item in items.iter().take(self.max_batch_events) {
            let add = item.json.len() + usize::from(n > 0);
            if n > 0 && bytes + add > self.max_batch_bytes {
                break;
            }
            bytes += add;
            n += 1;
        }
        n.max(1)
    }

    fn envelope(&self) -> (&'static [u8], &'static [u8]) {
        match self.mode {
            config::Mode::Batch => (b"{\"batch\":[", b"]}"),
            config::Mode::Webhook => (b"[", b"]"),
        }
    }

    fn envelope_len(&self) -> usize {
        let (open, close) = self.envelope();
        open.len() + close.len()
    }

    /// The request body: the items' JSON text joined inside the envelope, in one allocation.
    fn body(&self, items: &[Item]) -> Vec<u8> {
        let (open, close) = self.envelope();
        let len = open.len() + close.len() + items.iter().map(|i| i.json.len() + 1).sum::<usize>();
        let mut body = Vec::with_capacity(len);
        body.extend_from_slice(open);
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(item.json.as_bytes());
        }
        body.extend_from_slice(close);
        body
    }

    fn transport_error(&self, e: reqwest::Error) -> Error {
        let e = e.without_url();
        if e.is_timeout() {
            Error::Timeout { endpoint: self.endpoint.clone(), timeout: self.timeout }
        } else {
            let message = crate::logging::Chain(&e).to_string();
            let hint = crate::http::tls_hint(&message, crate::http::Section::RudderStack);
            Error::Transport {
                endpoint: self.endpoint.clone(),
                message: format!("{}{hint}", self.redact(&message)),
            }
        }
    }

    fn redirect_error(&self, response: &reqwest::Response) -> Error {
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .map(|v| {
                let text = String::from_utf8_lossy(v.as_bytes());
                // A redirect of the webhook URL typically echoes the query, which holds the key.
                match response.url().join(&text) {
                    Ok(mut u) => {
                        u.set_query(None);
                        u.to_string()
                    }
                    Err(_) => text.split('?').next().unwrap_or_default().to_string(),
                }
            })
            .map(|l| self.redact(&l))
            .unwrap_or_else(|| "(none)".to_string());
        Error::Redirect { status: response.status().as_u16(), location }
    }

    fn key_rejected(&self, body: String) -> Error {
        let hint = match self.mode {
            config::Mode::Batch => "",
            config::Mode::Webhook => {
                " (in webhook mode it must be the key of a webhook source, such as RudderStack's Auth0 source)"
            }
        };
        Error::WriteKeyRejected { body, hint }
    }

    /// The answer's body as text, trimmed, cut, and redacted. At most a few chunks are read.
    async fn read_body(&self, mut response: reqwest::Response) -> String {
        let mut buf = Vec::new();
        while buf.len() < MAX_QUOTED_BODY {
            match response.chunk().await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk[..chunk.len().min(MAX_QUOTED_BODY)]),
                _ => break,
            }
        }
        let mut text = String::from_utf8_lossy(&buf).trim().to_string();
        if text.len() > MAX_QUOTED_BODY {
            let mut cut = MAX_QUOTED_BODY;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        self.redact(&text)
    }

    /// Remove the write key, raw or as it appears in a query string, from text we did not write ourselves.
    fn redact(&self, text: &str) -> String {
        let key = self.write_key.expose_secret();
        if key.is_empty() {
            return text.to_string();
        }
        let encoded: String = url::form_urlencoded::byte_serialize(key.as_bytes()).collect();
        text.replace(key, REDACTED).replace(&encoded, REDACTED)
    }
}

/// The reason recorded for a row the gateway refused on its own.
fn refusal_reason(status: u16, body: &str) -> String {
    match status {
        400 => format!("RudderStack refused the event (400 {body:?})"),
        413 => format!("RudderStack refused the event as too large even on its own (413 {body:?})"),
        _ => format!("RudderStack refused the event ({status} {body:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(mode: config::Mode, events: usize, bytes: usize) -> Sink {
        let mut cfg =
            config::RudderStack::new(Url::parse("http://127.0.0.1:9/prefix/").unwrap(), "k&y", mode).unwrap();
        cfg.max_batch_events = events;
        cfg.max_batch_bytes = bytes;
        cfg.max_event_bytes = 100;
        cfg.timeout = Duration::from_secs(1);
        Sink::new(&cfg).unwrap()
    }

    fn items(lens: &[usize]) -> Vec<Item> {
        lens.iter().enumerate().map(|(i, &n)| Item { seq: i as i64, json: "x".repeat(n) }).collect()
    }

    #[test]
    fn the_body_is_the_items_joined_inside_the_envelope() {
        let s = sink(config::Mode::Batch, 10, 1000);
        let body = s.inner.body(&[Item { seq: 1, json: "{}".into() }, Item { seq: 2, json: "[1]".into() }]);
        assert_eq!(body, br#"{"batch":[{},[1]]}"#);
        let w = sink(config::Mode::Webhook, 10, 1000);
        assert_eq!(w.inner.body(&[Item { seq: 1, json: "{}".into() }]), b"[{}]");
        assert_eq!(w.inner.body(&[]), b"[]");
    }

    #[test]
    fn packing_counts_the_envelope_and_commas_exactly() {
        let s = sink(config::Mode::Batch, 10, 12 + 10 + 1 + 10);
        // Two 10-byte items need 12 + 10 + 1 + 10 bytes: they fit exactly; a third does not.
        assert_eq!(s.inner.pack(&items(&[10, 10, 10])), 2);
        assert_eq!(s.inner.body(&items(&[10, 10])).len(), 33);
        let s = sink(config::Mode::Batch, 3, 10_000);
        assert_eq!(s.inner.pack(&items(&[1; 7])), 3);
    }

    #[test]
    fn endpoints_keep_a_path_prefix() {
        assert_eq!(sink(config::Mode::Batch, 1, 200).inner.endpoint, "http://127.0.0.1:9/prefix/v1/batch");
        assert_eq!(
            sink(config::Mode::Webhook, 1, 200).inner.endpoint,
            "http://127.0.0.1:9/prefix/v1/webhook"
        );
    }

    #[test]
    fn debug_output_shows_the_endpoint_but_not_the_key() {
        let debug = format!("{:?}", sink(config::Mode::Webhook, 1, 200));
        assert!(
            debug.contains("/prefix/v1/webhook") && !debug.contains("k&y") && !debug.contains("k%26y"),
            "{debug}"
        );
    }

    #[test]
    fn the_webhook_wrapper_quotes_the_log_id_and_keeps_the_entry_verbatim() {
        assert_eq!(Item::webhook(1, "90", r#"{"a":1}"#).json, r#"{"log_id":"90","data":{"a":1}}"#);
        assert_eq!(Item::webhook(1, "", "{}").json, r#"{"log_id":null,"data":{}}"#);
    }

    #[test]
    fn redaction_covers_the_raw_and_the_query_encoded_key() {
        let s = sink(config::Mode::Webhook, 1, 200);
        assert_eq!(s.inner.redact("a k&y b k%26y c"), "a [redacted] b [redacted] c");
    }
}
