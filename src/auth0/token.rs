//! The client-credentials access token: minted through the `oauth2` crate, cached, kept across restarts,
//! refreshed early.
//!
//! Every mint writes a `seccft` entry into the very log we forward, so a token is reused for as long as it is
//! safely valid, across restarts too (it is kept in the state file, sealed with a key derived from the client
//! secret), and concurrent callers wait on one mint instead of starting their own (a tokio mutex is held
//! across the request). It is refreshed when less than `max(60 s, 10 %)` of its lifetime remains, but never
//! later than at 80 % of it, so that short lifetimes still get reused. However short a lifetime Auth0 states,
//! at most one token is minted per minute; however long, it is taken as at most 30 days. A 401 from the API
//! invalidates the token by generation number, so a caller holding a stale token cannot throw away the fresh
//! one another caller just minted.
//!
//! The token request goes through a small [`AsyncHttpClient`] adapter around our reqwest client rather than
//! oauth2's own, because oauth2 drops the HTTP status and headers of error answers, and we need them to tell a
//! rejected credential (fatal) from a rate limit or an outage (transient); the adapter also bounds the answer
//! to 64 KiB and the request to the configured timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use oauth2::basic::{BasicClient, BasicErrorResponse, BasicTokenResponse};
use oauth2::{
    AsyncHttpClient, AuthType, ClientId, ClientSecret, EndpointNotSet, EndpointSet, HttpClientError,
    HttpRequest, HttpResponse, RequestTokenError, TokenResponse, TokenUrl,
};
use reqwest::header::{HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::{Error, error_message};
use crate::config;
use crate::store::StoredToken;
use crate::telemetry::TenantTelemetry;

type OAuthClient = BasicClient<EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// Used when Auth0 omits `expires_in` (it never has); short enough that a wrong guess heals quickly.
const ASSUMED_LIFETIME: Duration = Duration::from_secs(3600);
/// The longest lifetime believed (Auth0's maximum is 30 days).
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 86_400);
/// Tokens are minted at most this often.
const MIN_MINT_INTERVAL: Duration = Duration::from_secs(60);
/// The largest token answer read.
const MAX_TOKEN_ANSWER: usize = 64 * 1024;

/// Called with each newly minted token, sealed, so the caller can keep it for the next start.
pub type OnMint = Box<dyn Fn(StoredToken) + Send + Sync>;

/// A usable bearer credential and the generation it belongs to (for [`TokenCache::invalidate`]).
pub(crate) struct Bearer {
    token: SecretString,
    pub(crate) generation: u64,
}

impl Bearer {
    /// The `Authorization` header value, marked sensitive so that `Debug` of a request never shows it.
    pub(crate) fn header(&self) -> HeaderValue {
        let mut v = HeaderValue::from_str(&format!("Bearer {}", self.token.expose_secret()))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"));
        v.set_sensitive(true);
        v
    }
}

struct Cached {
    token: SecretString,
    refresh_at: Instant,
    generation: u64,
}

/// The token cache of one [`super::Client`].
pub(crate) struct TokenCache {
    oauth: OAuthClient,
    http: reqwest::Client,
    timeout: Duration,
    client_id: String,
    audience: String,
    token_url: String,
    /// The key that seals a token for the state file, derived from the client secret.
    seal_key: Key,
    /// What a stored token must have been minted for to be used.
    minted_for: String,
    slot: tokio::sync::Mutex<Option<Cached>>,
    last_mint: StdMutex<Option<Instant>>,
    minted: AtomicU64,
    generation: AtomicU64,
    telemetry: TenantTelemetry,
    on_mint: Option<OnMint>,
}

impl TokenCache {
    pub(crate) fn new(
        cfg: &config::Auth0,
        http: reqwest::Client,
        telemetry: TenantTelemetry,
        stored: Option<StoredToken>,
        on_mint: Option<OnMint>,
    ) -> Result<TokenCache, Error> {
        let token_url = join(&cfg.base_url, "oauth/token")?;
        let oauth = BasicClient::new(ClientId::new(cfg.client_id.clone()))
            .set_client_secret(ClientSecret::new(cfg.client_secret.expose_secret().to_string()))
            .set_auth_type(AuthType::RequestBody)
            .set_token_uri(
                TokenUrl::new(token_url.clone())
                    .map_err(|e| Error::Setup(format!("token URL {token_url}: {e}")))?,
            );
        let minted_for = hex(&Sha256::digest(
            format!("{}\0{}\0{}\0{}", cfg.domain, cfg.client_id, cfg.audience, token_url).as_bytes(),
        ));
        let seal_key = seal_key(cfg.client_secret.expose_secret(), &minted_for);
        let cache = TokenCache {
            oauth,
            http,
            timeout: cfg.timeout,
            client_id: cfg.client_id.clone(),
            audience: cfg.audience.clone(),
            token_url,
            seal_key,
            minted_for,
            slot: tokio::sync::Mutex::new(None),
            last_mint: StdMutex::new(None),
            minted: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            telemetry,
            on_mint,
        };
        if let Some(stored) = stored
            && let Some(cached) = cache.unseal(&stored)
        {
            tracing::debug!(client_id = %cache.client_id, "reusing the access token kept in the state file");
            *cache.slot.try_lock().map_err(|_| Error::Setup("token cache busy".into()))? = Some(cached);
        }
        Ok(cache)
    }

    /// A token that is valid for a while yet, minting one when the cached one is missing or due.
    pub(crate) async fn get(&self) -> Result<Bearer, Error> {
        let mut slot = self.slot.lock().await;
        let due = match slot.as_ref() {
            Some(c) if Instant::now() < c.refresh_at => {
                return Ok(Bearer { token: c.token.clone(), generation: c.generation });
            }
            Some(_) => true,
            None => false,
        };
        if due {
            self.throttle().await;
        }
        let cached = self.mint().await?;
        let bearer = Bearer { token: cached.token.clone(), generation: cached.generation };
        *slot = Some(cached);
        Ok(bearer)
    }

    /// Wait until a minute has passed since the last mint. Only a refresh that is merely due waits: a token
    /// Auth0 refused (401) is replaced at once, which the caller does only once per request.
    async fn throttle(&self) {
        let since = self.last_mint.lock().unwrap_or_else(|p| p.into_inner()).map(|t| t.elapsed());
        if let Some(since) = since
            && since < MIN_MINT_INTERVAL
        {
            let wait = MIN_MINT_INTERVAL - since;
            tracing::warn!(
                client_id = %self.client_id,
                wait = %humantime::format_duration(Duration::from_secs(wait.as_secs())),
                "the access token is already due again; minting at most one token a minute"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// Forget the token of this generation (after Auth0 refused it); a newer one is kept.
    pub(crate) async fn invalidate(&self, generation: u64) {
        let mut slot = self.slot.lock().await;
        if slot.as_ref().is_some_and(|c| c.generation == generation) {
            *slot = None;
        }
    }

    pub(crate) fn minted(&self) -> u64 {
        self.minted.load(Ordering::Relaxed)
    }

    async fn mint(&self) -> Result<Cached, Error> {
        *self.last_mint.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        // The lifetime counts from before the request, so the cache errs on the early side.
        let asked = Instant::now();
        let http =
            CapturingClient { http: self.http.clone(), timeout: self.timeout, seen: StdMutex::new(None) };
        let result = self
            .oauth
            .exchange_client_credentials()
            .add_extra_param("audience", self.audience.clone())
            .request_async(&http)
            .await;
        let seen = http.seen.lock().map(|mut s| s.take()).unwrap_or(None);
        self.telemetry.request("token", seen.as_ref().map(|s| s.0));
        match result {
            Ok(response) => {
                let accepted = accept(&response);
                let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                self.minted.fetch_add(1, Ordering::Relaxed);
                self.telemetry.token_minted();
                if !accepted.has_read_logs {
                    tracing::warn!(
                        client_id = %self.client_id,
                        "the access token does not carry the read:logs scope; /api/v2/logs will refuse it"
                    );
                }
                tracing::debug!(
                    client_id = %self.client_id,
                    lifetime = %humantime::format_duration(accepted.lifetime),
                    minted = generation,
                    "minted a Management API access token"
                );
                crate::logging::register_secret(accepted.token.expose_secret());
                let refresh_in = accepted.lifetime.saturating_sub(refresh_margin(accepted.lifetime));
                if let Some(on_mint) = &self.on_mint {
                    on_mint(self.seal(&accepted.token, refresh_in));
                }
                Ok(Cached { token: accepted.token, refresh_at: asked + refresh_in, generation })
            }
            Err(e) => Err(self.classify(e, seen)),
        }
    }

    /// Seal a token for the state file.
    fn seal(&self, token: &SecretString, refresh_in: Duration) -> StoredToken {
        let cipher = ChaCha20Poly1305::new(&self.seal_key);
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = cipher.encrypt(&nonce, token.expose_secret().as_bytes()).map(|mut ct| {
            let mut out = nonce.to_vec();
            out.append(&mut ct);
            out
        });
        StoredToken {
            sealed: sealed.unwrap_or_default(),
            refresh_at: unix_now().saturating_add(refresh_in.as_secs() as i64),
            minted_for: self.minted_for.clone(),
        }
    }

    /// A stored token, when it is for this client, still fresh, and opens with this client secret.
    fn unseal(&self, stored: &StoredToken) -> Option<Cached> {
        if stored.minted_for != self.minted_for || stored.sealed.len() <= 12 {
            return None;
        }
        let left = stored.refresh_at.checked_sub(unix_now()).filter(|s| *s > 10)?;
        let left = Duration::from_secs(left as u64).min(MAX_LIFETIME);
        let (nonce, ct) = stored.sealed.split_at(12);
        let plain = ChaCha20Poly1305::new(&self.seal_key).decrypt(Nonce::from_slice(nonce), ct).ok()?;
        let token = String::from_utf8(plain).ok()?;
        crate::logging::register_secret(&token);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        Some(Cached { token: SecretString::from(token), refresh_at: Instant::now() + left, generation })
    }

    fn classify(
        &self,
        e: RequestTokenError<HttpClientError<reqwest::Error>, BasicErrorResponse>,
        seen: Option<(u16, HeaderMap, Vec<u8>)>,
    ) -> Error {
        let url = self.token_url.clone();
        if let RequestTokenError::Request(e) = &e {
            let message = crate::logging::Chain(e).to_string();
            let hint = crate::http::tls_hint(&message, crate::http::Section::Auth0);
            return Error::Transport { url, message: format!("{message}{hint}") };
        }
        let Some((status, headers, body)) = seen else {
            return Error::Transport { url, message: crate::logging::Chain(&e).to_string() };
        };
        let message = error_message(&body);
        match status {
            401 | 403 => {
                let (error, description) = match &e {
                    RequestTokenError::ServerResponse(r) => {
                        (r.error().to_string(), r.error_description().cloned().unwrap_or_default())
                    }
                    _ => (format!("HTTP {status}"), message),
                };
                Error::CredentialsRejected {
                    client_id: self.client_id.clone(),
                    url,
                    status,
                    error: super::clip(&error),
                    description: super::clip(&description),
                }
            }
            429 => Error::RateLimited { url, message, retry_after: super::pace::retry_after(&headers) },
            200..=299 => Error::Body {
                url,
                message: "not a token response (no access_token, or a field of the wrong type)".into(),
            },
            s if s >= 500 || s == 408 => Error::Status { url, status, message },
            _ => Error::TokenRefused { client_id: self.client_id.clone(), url, status, message },
        }
    }
}

/// What the daemon takes from a token answer, every number bounded.
struct Accepted {
    token: SecretString,
    lifetime: Duration,
    has_read_logs: bool,
}

/// Read a token answer: its lifetime is clamped to `[0, 30 days]` (a missing one assumed an hour).
fn accept(response: &BasicTokenResponse) -> Accepted {
    let stated = response.expires_in().unwrap_or(ASSUMED_LIFETIME);
    if stated > MAX_LIFETIME {
        tracing::warn!(
            expires_in = stated.as_secs(),
            "Auth0 stated a token lifetime longer than its 30-day maximum; taking it as 30 days"
        );
    }
    let lifetime = stated.min(MAX_LIFETIME);
    let has_read_logs =
        response.scopes().is_none_or(|scopes| scopes.iter().any(|s| s.as_str() == "read:logs"));
    Accepted {
        token: SecretString::from(response.access_token().secret().to_string()),
        lifetime,
        has_read_logs,
    }
}

/// The key that seals a stored token: HMAC-SHA256 keyed by the client secret, over what the token is for.
fn seal_key(client_secret: &str, minted_for: &str) -> Key {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(client_secret.as_bytes())
        .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new_from_slice(b"-").expect("HMAC takes any key length"));
    mac.update(b"auth0-rudderstack token seal v1\0");
    mac.update(minted_for.as_bytes());
    let bytes = mac.finalize().into_bytes();
    *Key::from_slice(&bytes)
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How long before expiry a token is replaced: `max(60 s, 10 %)` of its lifetime, capped at 20 % so a short
/// lifetime is still used for most of it.
pub(crate) fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).max(Duration::from_secs(60)).min(lifetime / 5)
}

/// `base` + `path`, tolerating a base with or without a trailing slash or a path prefix.
pub(crate) fn join(base: &url::Url, path: &str) -> Result<String, Error> {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        let p = format!("{}/", base.path());
        base.set_path(&p);
    }
    base.join(path).map(|u| u.to_string()).map_err(|e| Error::Setup(format!("{base}{path}: {e}")))
}

/// oauth2's reqwest adapter, plus a record of the status, headers and body it saw, a bounded answer and
/// the configured timeout.
struct CapturingClient {
    http: reqwest::Client,
    timeout: Duration,
    seen: StdMutex<Option<(u16, HeaderMap, Vec<u8>)>>,
}

impl<'c> AsyncHttpClient<'c> for CapturingClient {
    type Error = HttpClientError<reqwest::Error>;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Self::Error>> + Send + Sync + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let mut request: reqwest::Request = request.try_into().map_err(Box::new)?;
            *request.timeout_mut() = Some(self.timeout);
            let response = self.http.execute(request).await.map_err(|e| Box::new(e.without_url()))?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = crate::http::read_limited(response, MAX_TOKEN_ANSWER).await.map_err(|e| match e {
                crate::http::BodyError::Read(e) => HttpClientError::Reqwest(Box::new(e)),
                too_large => HttpClientError::Other(too_large.to_string()),
            })?;
            if let Ok(mut seen) = self.seen.lock() {
                *seen = Some((status.as_u16(), headers.clone(), body.clone()));
            }
            let mut builder = oauth2::http::Response::builder().status(status.as_u16());
            for (name, value) in headers.iter() {
                builder = builder.header(name, value);
            }
            builder.body(body).map_err(HttpClientError::Http)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn long_lifetimes_refresh_at_ten_percent_and_short_ones_at_eighty() {
        assert_eq!(refresh_margin(Duration::from_secs(86_400)), Duration::from_secs(8_640));
        assert_eq!(refresh_margin(Duration::from_secs(600)), Duration::from_secs(60));
        assert_eq!(refresh_margin(Duration::from_secs(2)), Duration::from_millis(400));
    }

    #[test]
    fn urls_join_with_or_without_a_trailing_slash() {
        let a = join(&url::Url::parse("http://127.0.0.1:9").unwrap(), "oauth/token").unwrap();
        let b = join(&url::Url::parse("http://127.0.0.1:9/prefix").unwrap(), "oauth/token").unwrap();
        assert_eq!(a, "http://127.0.0.1:9/oauth/token");
        assert_eq!(b, "http://127.0.0.1:9/prefix/oauth/token");
    }

    #[test]
    fn an_absurd_lifetime_is_taken_as_thirty_days() {
        let r: BasicTokenResponse = serde_json::from_str(
            r#"{"access_token":"t","token_type":"Bearer","expires_in":18446744073709551615}"#,
        )
        .unwrap();
        let a = accept(&r);
        assert_eq!(a.lifetime, MAX_LIFETIME);
        // And the arithmetic that follows cannot overflow.
        let _ = Instant::now() + a.lifetime.saturating_sub(refresh_margin(a.lifetime));
    }

    #[test]
    fn a_sealed_token_opens_only_with_the_same_secret_and_client() {
        let cfg = |secret: &str, client: &str| {
            config::Auth0::new(
                "t.example.com",
                client,
                secret,
                url::Url::parse("http://127.0.0.1:9").unwrap(),
            )
            .unwrap()
        };
        let http = reqwest::Client::new();
        let make = |c: &config::Auth0| {
            TokenCache::new(c, http.clone(), TenantTelemetry::disabled(), None, None).unwrap()
        };
        let a = make(&cfg("secret-one-0123456789", "cid"));
        let stored = a.seal(&SecretString::from("the-token-value".to_string()), Duration::from_secs(3600));
        assert!(
            !stored.sealed.windows(15).any(|w| w == b"the-token-value"),
            "sealed must not hold the token"
        );
        let opened = a.unseal(&stored).expect("same cache opens it");
        assert_eq!(opened.token.expose_secret(), "the-token-value");
        assert!(make(&cfg("secret-two-0123456789", "cid")).unseal(&stored).is_none(), "another secret");
        assert!(make(&cfg("secret-one-0123456789", "other")).unseal(&stored).is_none(), "another client");
        let stale = StoredToken { refresh_at: unix_now() - 1, ..stored };
        assert!(a.unseal(&stale).is_none(), "a token past its refresh time is not used");
    }

    proptest! {
        /// Whatever JSON the token endpoint sends, reading it never panics and the lifetime stays bounded.
        #[test]
        fn any_token_answer_is_read_without_panicking(
            expires in prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                any::<u64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|n| format!("{n:e}")),
                "[a-z\"{}\\[\\]0-9.eE+-]{0,30}",
            ],
            token in "[ -~]{0,40}",
        ) {
            let text = format!(r#"{{"access_token":{},"token_type":"Bearer","expires_in":{expires}}}"#,
                serde_json::to_string(&token).unwrap());
            if let Ok(r) = serde_json::from_str::<BasicTokenResponse>(&text) {
                let a = accept(&r);
                prop_assert!(a.lifetime <= MAX_LIFETIME);
                let _ = Instant::now() + a.lifetime.saturating_sub(refresh_margin(a.lifetime));
            }
        }
    }
}
