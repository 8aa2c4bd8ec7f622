//! The client-credentials access token: minted through the `oauth2` crate, cached, refreshed early.
//!
//! Every mint writes a `seccft` entry into the very log we forward, so a token is reused for as long as it is
//! safely valid, and concurrent callers wait on one mint instead of starting their own (a tokio mutex is held
//! across the request). It is refreshed when less than `max(60 s, 10 %)` of its lifetime remains, but never
//! later than at 80 % of it, so that short lifetimes (tests use two seconds) still get reused. A 401 from the
//! API invalidates the token by generation number, so a caller holding a stale token cannot throw away the
//! fresh one another caller just minted.
//!
//! The token request goes through a small [`AsyncHttpClient`] adapter around our reqwest client rather than
//! oauth2's own, because oauth2 drops the HTTP status and headers of error answers, and we need them to tell a
//! rejected credential (fatal) from a rate limit or an outage (transient).

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use oauth2::basic::{BasicClient, BasicErrorResponse};
use oauth2::{
    AsyncHttpClient, AuthType, ClientId, ClientSecret, EndpointNotSet, EndpointSet, HttpClientError,
    HttpRequest, HttpResponse, RequestTokenError, TokenResponse, TokenUrl,
};
use reqwest::header::{HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};

use super::{Error, error_message};
use crate::config;

type OAuthClient = BasicClient<EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// Used when Auth0 omits `expires_in` (it never has); short enough that a wrong guess heals quickly.
const ASSUMED_LIFETIME: Duration = Duration::from_secs(3600);

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
    client_id: String,
    audience: String,
    token_url: String,
    slot: tokio::sync::Mutex<Option<Cached>>,
    minted: AtomicU64,
    generation: AtomicU64,
}

impl TokenCache {
    pub(crate) fn new(cfg: &config::Auth0, http: reqwest::Client) -> Result<TokenCache, Error> {
        let token_url = join(&cfg.base_url, "oauth/token")?;
        let oauth = BasicClient::new(ClientId::new(cfg.client_id.clone()))
            .set_client_secret(ClientSecret::new(cfg.client_secret.expose_secret().to_string()))
            .set_auth_type(AuthType::RequestBody)
            .set_token_uri(
                TokenUrl::new(token_url.clone())
                    .map_err(|e| Error::Setup(format!("token URL {token_url}: {e}")))?,
            );
        Ok(TokenCache {
            oauth,
            http,
            client_id: cfg.client_id.clone(),
            audience: cfg.audience.clone(),
            token_url,
            slot: tokio::sync::Mutex::new(None),
            minted: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        })
    }

    /// A token that is valid for a while yet, minting one when the cached one is missing or due.
    pub(crate) async fn get(&self) -> Result<Bearer, Error> {
        let mut slot = self.slot.lock().await;
        if let Some(c) = slot.as_ref()
            && Instant::now() < c.refresh_at
        {
            return Ok(Bearer { token: c.token.clone(), generation: c.generation });
        }
        let cached = self.mint().await?;
        let bearer = Bearer { token: cached.token.clone(), generation: cached.generation };
        *slot = Some(cached);
        Ok(bearer)
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
        // The lifetime counts from before the request, so the cache errs on the early side.
        let asked = Instant::now();
        let http = CapturingClient { http: self.http.clone(), seen: StdMutex::new(None) };
        let result = self
            .oauth
            .exchange_client_credentials()
            .add_extra_param("audience", self.audience.clone())
            .request_async(&http)
            .await;
        let seen = http.seen.lock().map(|mut s| s.take()).unwrap_or(None);
        match result {
            Ok(response) => {
                let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                self.minted.fetch_add(1, Ordering::Relaxed);
                let lifetime = response.expires_in().unwrap_or(ASSUMED_LIFETIME);
                let refresh_at = asked + lifetime.saturating_sub(refresh_margin(lifetime));
                if let Some(scopes) = response.scopes()
                    && !scopes.iter().any(|s| s.as_str() == "read:logs")
                {
                    tracing::warn!(
                        client_id = %self.client_id,
                        "the access token does not carry the read:logs scope; /api/v2/logs will refuse it"
                    );
                }
                tracing::debug!(
                    client_id = %self.client_id,
                    expires_in_s = lifetime.as_secs(),
                    minted = generation,
                    "minted a Management API access token"
                );
                Ok(Cached {
                    token: SecretString::from(response.access_token().secret().to_string()),
                    refresh_at,
                    generation,
                })
            }
            Err(e) => Err(self.classify(e, seen)),
        }
    }

    fn classify(
        &self,
        e: RequestTokenError<HttpClientError<reqwest::Error>, BasicErrorResponse>,
        seen: Option<(u16, HeaderMap, Vec<u8>)>,
    ) -> Error {
        let url = self.token_url.clone();
        if let RequestTokenError::Request(e) = &e {
            return Error::Transport { url, message: crate::error_chain(e) };
        }
        let Some((status, headers, body)) = seen else {
            return Error::Transport { url, message: crate::error_chain(&e) };
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
                    error,
                    description,
                }
            }
            429 => Error::RateLimited { url, message, retry_after: super::pace::retry_after(&headers) },
            200..=299 => {
                Error::Body { url, message: format!("not a token response: {}", crate::error_chain(&e)) }
            }
            s if s >= 500 || s == 408 => Error::Status { url, status, message },
            _ => Error::TokenRefused { client_id: self.client_id.clone(), url, status, message },
        }
    }
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

/// oauth2's reqwest adapter, plus a record of the status, headers and body it saw.
struct CapturingClient {
    http: reqwest::Client,
    seen: StdMutex<Option<(u16, HeaderMap, Vec<u8>)>>,
}

impl<'c> AsyncHttpClient<'c> for CapturingClient {
    type Error = HttpClientError<reqwest::Error>;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Self::Error>> + Send + Sync + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let response = self
                .http
                .execute(request.try_into().map_err(Box::new)?)
                .await
                .map_err(|e| Box::new(e.without_url()))?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await.map_err(|e| Box::new(e.without_url()))?.to_vec();
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
}
