//! HTTP plumbing shared by the Auth0 and RudderStack clients: how clients are built and how bodies are read.
//!
//! Two rules live here so that neither client can forget them. First, trust: TLS accepts the compiled-in web
//! PKI roots *and* the operating system's store (so `SSL_CERT_FILE`, a company CA installed with
//! `update-ca-certificates`, or a TLS-inspecting proxy's CA work), plus an optional PEM bundle per config
//! section; proxies come from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` as reqwest reads them; redirects are
//! never followed. Second, memory: a body is only ever read through [`read_limited`], which counts *decoded*
//! bytes (after gzip) and stops at a limit, so a gzip bomb or an endless chunked body costs at most the limit.
//!
//! Clients are shared: every tenant with the same TLS settings uses one connection pool, and timeouts are set
//! per request, so a hundred tenants do not mean a hundred root stores in memory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// The longest a TCP connect may take, whatever the request timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Extra trust for one config section: the certificates of its `tls_ca_file`, read at config time.
#[derive(Debug, Clone)]
pub struct CaBundle {
    /// The file, for messages.
    pub path: PathBuf,
    /// Its certificates.
    pub certs: Vec<reqwest::Certificate>,
}

impl CaBundle {
    /// Read a PEM bundle; the message names what is wrong (the caller names the key and the file).
    pub fn read(path: &std::path::Path) -> Result<CaBundle, String> {
        let bytes = crate::files::read_regular(path, 16 << 20)
            .map_err(|e| format!("{}: {}", path.display(), crate::logging::Chain(&e)))?;
        let certs = reqwest::Certificate::from_pem_bundle(&bytes)
            .map_err(|e| format!("{} is not a PEM certificate bundle: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{} holds no PEM certificate", path.display()));
        }
        Ok(CaBundle { path: path.to_path_buf(), certs })
    }
}

/// A client could not be built (a TLS back-end problem); nothing was sent.
#[derive(Debug, thiserror::Error)]
#[error("cannot build an HTTP client")]
pub struct BuildError(#[source] pub reqwest::Error);

/// Build a client: no redirects, a bounded connect time, both root stores plus `ca`.
pub fn client(ca: Option<&CaBundle>) -> Result<reqwest::Client, BuildError> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("auth0-rudderstack/", env!("CARGO_PKG_VERSION")))
        // Never follow a redirect: for the token call that is an SSRF guard; for the data plane a redirected
        // POST was not stored; for the logs a redirect means the base URL is wrong. Each is reported instead.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(60))
        .tls_built_in_webpki_certs(true)
        .tls_built_in_native_certs(true);
    for cert in ca.map(|c| c.certs.as_slice()).unwrap_or_default() {
        builder = builder.add_root_certificate(cert.clone());
    }
    builder.build().map_err(BuildError)
}

/// Clients shared by every section with the same TLS settings.
#[derive(Default)]
pub struct Clients {
    by_ca: Mutex<HashMap<Option<PathBuf>, reqwest::Client>>,
}

impl Clients {
    /// The client for sections that trust `ca` in addition to the system's roots.
    pub fn get(&self, ca: Option<&CaBundle>) -> Result<reqwest::Client, BuildError> {
        let key = ca.map(|c| c.path.clone());
        let mut map = self.by_ca.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let c = client(ca)?;
        map.insert(key, c.clone());
        Ok(c)
    }
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// More bytes than allowed (after decoding); the rest was not read.
    #[error("the answer is larger than the {limit}-byte limit")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The connection broke, timed out, or the encoding was invalid.
    #[error("the answer could not be read completely")]
    Read(#[source] reqwest::Error),
}

/// Read a whole body, decoded, refusing more than `limit` bytes. A declared `Content-Length` over the limit
/// is refused before anything is read.
pub async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = Vec::with_capacity(response.content_length().map_or(8192, |n| n as usize).min(limit));
    while let Some(chunk) = response.chunk().await.map_err(|e| BodyError::Read(e.without_url()))? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// How long a `Retry-After` header asks to wait (seconds, or an HTTP date as RFC 9110 allows), at most
/// `cap`; a longer request is capped and logged at warn level. `None` when absent or unreadable. Numbers are
/// read into a bounded range before any arithmetic, so `Retry-After: 1e20` cannot overflow anything.
pub fn retry_after(headers: &reqwest::header::HeaderMap, cap: Duration) -> Option<Duration> {
    let given = headers.get("retry-after")?.to_str().ok()?.trim();
    if given.len() > 64 {
        return None;
    }
    let secs = match given.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => s,
        Ok(_) => return None,
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(given).ok()?;
            ((at.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_milliseconds() as f64 / 1000.0)
                .max(0.0)
        }
    };
    Some(capped(secs, cap, "Retry-After"))
}

/// Seconds as a wait no longer than `cap`; a longer request is capped and logged.
pub fn capped(secs: f64, cap: Duration, what: &str) -> Duration {
    if secs > cap.as_secs_f64() {
        tracing::warn!(
            header = what,
            asked_seconds = secs,
            "a server asked for a longer wait than is plausible; waiting {} instead",
            humantime::format_duration(cap)
        );
        return cap;
    }
    Duration::from_secs_f64(secs.max(0.0))
}

/// Whether `host` is this machine: `localhost`, 127.0.0.0/8 or `::1`. Plain HTTP is only allowed there
/// unless a section says `allow_insecure_http = true`.
pub fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The config section a client belongs to, for the hint that names where its `tls_ca_file` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// `[auth0]` or a `[[tenant]]` entry.
    Auth0,
    /// `[rudderstack]` or a `[tenant.rudderstack]` table.
    RudderStack,
}

/// A hint to add to a transport error whose chain says the server's certificate was not trusted; it names
/// the key to set.
pub fn tls_hint(chain: &str, section: Section) -> &'static str {
    let lower = chain.to_ascii_lowercase();
    if !(lower.contains("certificate") || lower.contains("unknownissuer") || lower.contains("invalid peer")) {
        return "";
    }
    match section {
        Section::Auth0 => {
            " (the server's certificate is not trusted: if a private CA or a TLS-inspecting proxy signs it, set \
             auth0.tls_ca_file, or tls_ca_file in the tenant's [[tenant]] entry, to its PEM bundle)"
        }
        Section::RudderStack => {
            " (the server's certificate is not trusted: if a private CA or a TLS-inspecting proxy signs it, set \
             rudderstack.tls_ca_file, or the tenant's [tenant.rudderstack] tls_ca_file, to its PEM bundle)"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_means_localhost_127_slash_8_and_ipv6_one() {
        let l = |s: &str| is_loopback(&url::Url::parse(s).unwrap());
        assert!(l("http://127.0.0.1:9"));
        assert!(l("http://127.9.8.7"));
        assert!(l("http://[::1]:80"));
        assert!(l("http://LOCALHOST:80"));
        assert!(!l("http://plain.example.com"));
        assert!(!l("http://128.0.0.1"));
        assert!(!l("http://localhost.example.com"));
        assert!(!l("http://[::2]"));
    }
}
