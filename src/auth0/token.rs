//! The client-credentials access token: minted through the `oauth2` crate, cached, kept across restarts,
//! refreshed early.
//!
//! Every mint writes a `seccft` entry into the very log we forward, so a token is reused for as long as it is
//! valid, across restarts too (it is kept in the state file, sealed with its expiry under a key derived from
//! the client secret), and mints are spaced. And a request must never wait on a mint while a valid token
//! exists. So a token serves until it expires (less a moment for the request's flight); a refresh is due when
//! less than `max(60 s, 10 %)` of its lifetime remains, but no later than at 80 % of it, and is spaced at
//! least `min(60 s, lifetime / 2)` and at least 5 s from the last mint. A due refresh runs in a task of its
//! own while callers go on with the current token; only when no valid token is left does a caller wait, for
//! the spacing to pass and for the mint, and concurrent callers then wait on one mint instead of starting
//! their own. A lifetime under a minute is warned about once: it makes the refreshes frequent. A lifetime is
//! taken as at most 30 days. A 401 from the API invalidates the token by generation number, so a caller
//! holding a stale token cannot throw away the fresh one another caller just minted, and the next caller
//! mints at once: a refused token is not valid.
//!
//! When to use, refresh or mint is decided by [`plan`], a pure function of the time, so it is tested with a
//! clock the test controls.
//!
//! The token request goes through a small [`AsyncHttpClient`] adapter around our reqwest client rather than
//! oauth2's own, because oauth2 drops the HTTP status and headers of error answers, and we need them to tell a
//! rejected credential (fatal) from a rate limit or an outage (transient); the adapter also bounds the answer
//! to 64 KiB and the request to the configured timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
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
/// A due refresh waits at least this long after the last mint, however short the lifetime.
const MIN_SPACING: Duration = Duration::from_secs(5);
/// ... and at least half the lifetime, up to this.
const MAX_SPACING: Duration = Duration::from_secs(60);
/// Lifetimes shorter than this are warned about.
const SHORT_LIFETIME: Duration = Duration::from_secs(60);
/// A token is no longer sent this long before it expires (or a tenth of its lifetime, if less), so that a
/// request does not reach Auth0 after it.
const EXPIRY_SKEW: Duration = Duration::from_secs(1);
/// Marks a sealed token that carries its expiry (older states sealed the token alone).
const SEALED_V2: &[u8] = b"\0v2\0";
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
    timing: Timing,
    generation: u64,
}

/// When a token is due for refresh, when it stops serving, and how far apart mints must be while it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timing {
    refresh_at: Instant,
    expires_at: Instant,
    spacing: Duration,
}

impl Timing {
    /// The timing of a token asked for at `asked` that lives `lifetime`.
    fn of(asked: Instant, lifetime: Duration) -> Timing {
        Timing {
            refresh_at: asked + lifetime.saturating_sub(refresh_margin(lifetime)),
            expires_at: asked + lifetime.saturating_sub(EXPIRY_SKEW.min(lifetime / 10)),
            spacing: spacing(lifetime),
        }
    }
}

/// What a caller does about the token at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Use the cached token.
    Use,
    /// Use the cached token, and have a replacement minted beside the request.
    UseAndRefresh,
    /// No valid token: mint one now and use it.
    Mint,
    /// No valid token, and the last mint is too recent: wait until then, then mint.
    MintAt(Instant),
}

/// The mint state [`plan`] decides on.
#[derive(Debug, Clone, Copy, Default)]
struct Mints {
    /// When the last successful mint was asked for.
    last: Option<Instant>,
    /// A refresh that failed while a token was valid is not tried again before this.
    retry_refresh_at: Option<Instant>,
    /// A refresh is being minted beside the requests.
    refreshing: bool,
}

/// Decide what a caller does at `now` with the cached token's `timing` (none: no token, or Auth0 refused it).
fn plan(now: Instant, token: Option<Timing>, mints: Mints) -> Plan {
    let Some(t) = token else { return Plan::Mint };
    if now < t.refresh_at {
        return Plan::Use;
    }
    let allowed = mints.last.map(|m| m + t.spacing);
    if now < t.expires_at {
        let not_before = allowed.max(mints.retry_refresh_at);
        return if mints.refreshing || not_before.is_some_and(|at| now < at) {
            Plan::Use
        } else {
            Plan::UseAndRefresh
        };
    }
    match allowed {
        Some(at) if now < at => Plan::MintAt(at),
        _ => Plan::Mint,
    }
}

/// How far apart a due refresh must be from the last mint: `min(60 s, lifetime / 2)`, at least 5 s.
fn spacing(lifetime: Duration) -> Duration {
    (lifetime / 2).min(MAX_SPACING).max(MIN_SPACING)
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
    /// The cached token; held only to read or replace it, never across a request.
    slot: StdMutex<Option<Cached>>,
    /// Held across every mint, so that mints never overlap and callers that need one share it.
    minting: tokio::sync::Mutex<()>,
    mints: StdMutex<Mints>,
    warned_short: AtomicBool,
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
            slot: StdMutex::new(None),
            minting: tokio::sync::Mutex::new(()),
            mints: StdMutex::new(Mints::default()),
            warned_short: AtomicBool::new(false),
            minted: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            telemetry,
            on_mint,
        };
        if let Some(stored) = stored
            && let Some(cached) = cache.unseal(&stored)
        {
            tracing::debug!(client_id = %cache.client_id, "reusing the access token kept in the state file");
            *cache.slot() = Some(cached);
        }
        Ok(cache)
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Cached>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mints(&self) -> std::sync::MutexGuard<'_, Mints> {
        self.mints.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The plan for now, with the cached token when there is one.
    fn look(&self, refreshing_counts: bool) -> (Plan, Option<Bearer>) {
        let slot = self.slot();
        let mut mints = *self.mints();
        mints.refreshing &= refreshing_counts;
        let plan = plan(Instant::now(), slot.as_ref().map(|c| c.timing), mints);
        let bearer = slot.as_ref().map(|c| Bearer { token: c.token.clone(), generation: c.generation });
        (plan, bearer)
    }

    /// A token to send now: the cached one while it is valid (starting a refresh beside the request when one
    /// is due), else a fresh one, minted once the spacing since the last mint has passed.
    pub(crate) async fn get(self: &Arc<Self>) -> Result<Bearer, Error> {
        let mut minting = None;
        loop {
            let (plan, bearer) = self.look(true);
            match (plan, bearer) {
                (Plan::Use, Some(bearer)) => return Ok(bearer),
                (Plan::UseAndRefresh, Some(bearer)) => {
                    self.refresh_beside();
                    return Ok(bearer);
                }
                // Wait for whoever is minting, then look again: their token may do.
                _ if minting.is_none() => minting = Some(self.minting.lock().await),
                (Plan::MintAt(at), _) => {
                    tracing::debug!(
                        client_id = %self.client_id,
                        wait = ?at.saturating_duration_since(Instant::now()),
                        "the access token has expired and the last mint is too recent; waiting to mint"
                    );
                    tokio::time::sleep_until(at.into()).await;
                }
                _ => {
                    let cached = self.mint().await?;
                    let bearer = Bearer { token: cached.token.clone(), generation: cached.generation };
                    *self.slot() = Some(cached);
                    return Ok(bearer);
                }
            }
        }
    }

    /// Mint a replacement in a task of its own, unless one is being minted already. The task takes the mint
    /// lock, looks again (a caller may have minted meanwhile), and on failure leaves the current token in
    /// place and tries again no sooner than [`MIN_SPACING`] later.
    fn refresh_beside(self: &Arc<Self>) {
        {
            let mut mints = self.mints();
            if mints.refreshing {
                return;
            }
            mints.refreshing = true;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let _minting = this.minting.lock().await;
            if matches!(this.look(false).0, Plan::UseAndRefresh | Plan::Mint) {
                match this.mint().await {
                    Ok(cached) => *this.slot() = Some(cached),
                    Err(e) => {
                        this.mints().retry_refresh_at = Some(Instant::now() + MIN_SPACING);
                        tracing::warn!(
                            client_id = %this.client_id,
                            error = %crate::logging::Chain(&e),
                            "cannot refresh the access token; the current one serves until it expires"
                        );
                    }
                }
            }
            this.mints().refreshing = false;
        });
    }

    /// Forget the token of this generation (after Auth0 refused it); a newer one is kept.
    pub(crate) fn invalidate(&self, generation: u64) {
        let mut slot = self.slot();
        if slot.as_ref().is_some_and(|c| c.generation == generation) {
            *slot = None;
        }
    }

    pub(crate) fn minted(&self) -> u64 {
        self.minted.load(Ordering::Relaxed)
    }

    async fn mint(&self) -> Result<Cached, Error> {
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
                if accepted.lifetime < SHORT_LIFETIME && !self.warned_short.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        client_id = %self.client_id,
                        lifetime = %humantime::format_duration(accepted.lifetime),
                        "the access token lives less than a minute, so it is replaced often, and every mint writes \
                         an entry into the tenant's log; raise the Token Expiration of the Auth0 Management API \
                         (Applications > APIs > Auth0 Management API > Settings)"
                    );
                }
                // The spacing counts from the answer, not from the request: then Auth0, which logs a mint when
                // the request reaches it, sees two mints at least the spacing apart whatever the network did
                // to either request. The token's own timing counts from the request, to err on the early side.
                self.mints().last = Some(Instant::now());
                let timing = Timing::of(asked, accepted.lifetime);
                if let Some(on_mint) = &self.on_mint {
                    let left = |at: Instant| at.saturating_duration_since(asked);
                    on_mint(self.seal(&accepted.token, left(timing.refresh_at), left(timing.expires_at)));
                }
                Ok(Cached { token: accepted.token, timing, generation })
            }
            Err(e) => Err(self.classify(e, seen)),
        }
    }

    /// Seal a token for the state file, with when it expires.
    fn seal(&self, token: &SecretString, refresh_in: Duration, expires_in: Duration) -> StoredToken {
        let cipher = ChaCha20Poly1305::new(&self.seal_key);
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let expires_at = unix_now().saturating_add(expires_in.as_secs() as i64);
        let mut plain = Vec::with_capacity(SEALED_V2.len() + 8 + token.expose_secret().len());
        plain.extend_from_slice(SEALED_V2);
        plain.extend_from_slice(&expires_at.to_be_bytes());
        plain.extend_from_slice(token.expose_secret().as_bytes());
        let sealed = cipher.encrypt(&nonce, plain.as_slice()).map(|mut ct| {
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

    /// A stored token, when it is for this client, not yet due, and opens with this client secret. One
    /// sealed without its expiry (by an older version) serves until it is due.
    fn unseal(&self, stored: &StoredToken) -> Option<Cached> {
        if stored.minted_for != self.minted_for || stored.sealed.len() <= 12 {
            return None;
        }
        let now = unix_now();
        let secs = |s: i64| Duration::from_secs(s as u64).min(MAX_LIFETIME);
        let refresh_in = secs(stored.refresh_at.checked_sub(now).filter(|s| *s > 10)?);
        let (nonce, ct) = stored.sealed.split_at(12);
        let plain = ChaCha20Poly1305::new(&self.seal_key).decrypt(Nonce::from_slice(nonce), ct).ok()?;
        let (expires_in, token) = match plain.strip_prefix(SEALED_V2) {
            Some(rest) if rest.len() >= 8 => {
                let (at, token) = rest.split_at(8);
                let at = i64::from_be_bytes(at.try_into().ok()?);
                // Whole seconds on both sides: a second less, so that it errs early.
                (secs(at.saturating_sub(now + 1).max(0)).max(refresh_in), token.to_vec())
            }
            Some(_) => return None,
            None => (refresh_in, plain),
        };
        let token = String::from_utf8(token).ok()?;
        crate::logging::register_secret(&token);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        // Unknown here: the lifetime. No mint of this process precedes it, so the spacing never applies.
        let timing =
            Timing { refresh_at: now + refresh_in, expires_at: now + expires_in, spacing: MIN_SPACING };
        Some(Cached { token: SecretString::from(token), timing, generation })
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
        let token = SecretString::from("the-token-value".to_string());
        let stored = a.seal(&token, Duration::from_secs(3000), Duration::from_secs(3590));
        assert!(
            !stored.sealed.windows(15).any(|w| w == b"the-token-value"),
            "sealed must not hold the token"
        );
        let opened = a.unseal(&stored).expect("same cache opens it");
        assert_eq!(opened.token.expose_secret(), "the-token-value");
        assert!(make(&cfg("secret-two-0123456789", "cid")).unseal(&stored).is_none(), "another secret");
        assert!(make(&cfg("secret-one-0123456789", "other")).unseal(&stored).is_none(), "another client");
        // It serves until its sealed expiry (less the second lost to rounding), and is due as stored.
        let left = opened.timing.expires_at.saturating_duration_since(Instant::now());
        assert!(left > Duration::from_secs(3580) && left <= Duration::from_secs(3590), "{left:?}");
        let due = opened.timing.refresh_at.saturating_duration_since(Instant::now());
        assert!(due > Duration::from_secs(2990) && due <= Duration::from_secs(3000), "{due:?}");
        let stale = StoredToken { refresh_at: unix_now() - 1, ..stored };
        assert!(a.unseal(&stale).is_none(), "a token past its refresh time is not used");

        // A token an older version sealed alone serves until it is due.
        let cipher = ChaCha20Poly1305::new(&a.seal_key);
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let mut sealed = nonce.to_vec();
        sealed.extend(cipher.encrypt(&nonce, b"the-old-token".as_slice()).unwrap());
        let old = StoredToken { sealed, refresh_at: unix_now() + 600, minted_for: a.minted_for.clone() };
        let opened = a.unseal(&old).expect("an old sealed token opens");
        assert_eq!(opened.token.expose_secret(), "the-old-token");
        assert_eq!(opened.timing.expires_at, opened.timing.refresh_at);
    }

    /// What steady traffic met, simulated against [`plan`] with a clock the test moves.
    #[derive(Debug, Default)]
    struct Sim {
        /// When each mint was asked for.
        mints: Vec<Duration>,
        /// Requests that waited for a mint: when they came, and whether a valid token existed then.
        waits: Vec<(Duration, bool)>,
        requests: usize,
    }

    /// A request every 100 ms for `run`, with tokens living `lifetime` and each mint taking `latency`. A due
    /// refresh is minted beside the requests, as `TokenCache::get` does; a request planned to mint waits for
    /// it (and first for a refresh in flight).
    fn simulate(lifetime: Duration, latency: Duration, run: Duration) -> Sim {
        let t0 = Instant::now();
        let mut sim = Sim::default();
        let (mut token, mut mints, mut pending) =
            (None::<Timing>, Mints::default(), None::<(Instant, Instant)>);
        let mut now = t0;
        while now < t0 + run {
            if let Some((asked, done)) = pending
                && now >= done
            {
                (token, mints.last, mints.refreshing, pending) =
                    (Some(Timing::of(asked, lifetime)), Some(asked), false, None);
            }
            let valid = token.is_some_and(|t| now < t.expires_at);
            match plan(now, token, mints) {
                Plan::Use => {}
                Plan::UseAndRefresh => {
                    sim.mints.push(now - t0);
                    mints.refreshing = true;
                    pending = Some((now, now + latency));
                }
                Plan::Mint | Plan::MintAt(_) if pending.is_some() => {
                    sim.waits.push((now - t0, valid));
                    now = pending.unwrap().1;
                    continue;
                }
                Plan::Mint | Plan::MintAt(_) => {
                    let at = match plan(now, token, mints) {
                        Plan::MintAt(at) => at,
                        _ => now,
                    };
                    sim.waits.push((now - t0, valid));
                    sim.mints.push(at - t0);
                    (token, mints.last) = (Some(Timing::of(at, lifetime)), Some(at));
                    now = at + latency;
                }
            }
            sim.requests += 1;
            now += Duration::from_millis(100);
        }
        sim
    }

    /// With a 90-second lifetime and a request every 100 ms for an hour, only the very first request (there
    /// is no token yet) waits for a mint: every refresh is minted beside the requests while the current token
    /// serves, 72 s into its life, so 72 s apart.
    #[test]
    fn with_a_90_second_lifetime_no_request_waits_on_a_mint_while_a_valid_token_exists() {
        let t = Timing::of(Instant::now(), Duration::from_secs(90));
        assert_eq!(t.spacing, Duration::from_secs(45));
        let sim = simulate(Duration::from_secs(90), Duration::from_secs(2), Duration::from_secs(3600));
        assert_eq!(sim.waits, [(Duration::ZERO, false)], "{sim:?}");
        assert!(sim.requests > 35_000, "{sim:?}");
        for pair in sim.mints.windows(2) {
            let apart = pair[1] - pair[0];
            assert!(apart >= Duration::from_secs(72) && apart < Duration::from_secs(73), "{pair:?}");
        }
        assert!((49..=51).contains(&sim.mints.len()), "{} mints in an hour", sim.mints.len());
    }

    /// Whatever the lifetime, no request waits on a mint while a valid token exists, and mints are spaced at
    /// least `min(60 s, lifetime / 2)` and at least 5 s apart; a slow mint changes neither.
    #[test]
    fn no_lifetime_makes_a_request_wait_while_a_token_is_valid_or_mints_crowd() {
        for secs in [1, 2, 3, 7, 10, 11, 30, 59, 60, 61, 90, 120, 600, 3600, 86_400] {
            for latency_ms in [5, 2_000] {
                let lifetime = Duration::from_secs(secs);
                let sim =
                    simulate(lifetime, Duration::from_millis(latency_ms), Duration::from_secs(3 * 3600));
                let case = format!("lifetime {secs} s, mint {latency_ms} ms");
                assert!(sim.waits.iter().all(|(_, valid)| !valid), "{case}: {:?}", sim.waits);
                let least = (lifetime / 2).clamp(MIN_SPACING, MAX_SPACING);
                for pair in sim.mints.windows(2) {
                    assert!(pair[1] - pair[0] >= least, "{case}: mints at {pair:?}");
                }
                // Long lifetimes are refreshed beside the requests, so only the first request ever waits.
                if lifetime >= Duration::from_secs(30) {
                    assert_eq!(sim.waits.len(), 1, "{case}: {:?}", sim.waits);
                }
            }
        }
    }

    /// A token that lives 3 s expires before the 5 s spacing has passed: the next request waits until 5 s
    /// after the last mint, and only then is one minted.
    #[test]
    fn a_three_second_token_is_replaced_five_seconds_after_the_last_mint() {
        let t0 = Instant::now();
        let t = Timing::of(t0, Duration::from_secs(3));
        let mints = Mints { last: Some(t0), ..Mints::default() };
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(plan(at(2_000), Some(t), mints), Plan::Use);
        // Due at 2.4 s, but not before 5 s after the last mint: it serves until it expires (2.7 s).
        assert_eq!(plan(at(2_500), Some(t), mints), Plan::Use);
        assert_eq!(plan(at(2_800), Some(t), mints), Plan::MintAt(at(5_000)));
        // It stops serving at its expiry instant itself, not a moment later.
        assert_eq!(plan(t.expires_at - Duration::from_millis(1), Some(t), mints), Plan::Use);
        assert_eq!(plan(t.expires_at, Some(t), mints), Plan::MintAt(at(5_000)));
        assert_eq!(plan(at(5_000), Some(t), mints), Plan::Mint);
    }

    /// A token Auth0 refused is replaced at once however recent the last mint; a refresh in flight is not
    /// started twice; a failed refresh is not tried again for 5 s while the token serves.
    #[test]
    fn a_refused_token_is_replaced_at_once_and_refreshes_are_not_repeated() {
        let t0 = Instant::now();
        let t = Timing::of(t0, Duration::from_secs(90));
        let just_minted = Mints { last: Some(t0), ..Mints::default() };
        assert_eq!(plan(t0 + Duration::from_secs(1), None, just_minted), Plan::Mint);
        let due = t0 + Duration::from_secs(80);
        assert_eq!(plan(due, Some(t), just_minted), Plan::UseAndRefresh);
        // Due from the refresh instant itself on, not a moment later.
        assert_eq!(plan(t.refresh_at - Duration::from_millis(1), Some(t), just_minted), Plan::Use);
        assert_eq!(plan(t.refresh_at, Some(t), just_minted), Plan::UseAndRefresh);
        assert_eq!(plan(due, Some(t), Mints { refreshing: true, ..just_minted }), Plan::Use);
        let failed = Mints { retry_refresh_at: Some(due + MIN_SPACING), ..just_minted };
        assert_eq!(plan(due, Some(t), failed), Plan::Use);
        assert_eq!(plan(due + MIN_SPACING, Some(t), failed), Plan::UseAndRefresh);
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
