//! The counters `run` keeps in memory while it works: requests by endpoint and status class, rate limits,
//! retries and token mints, per tenant. Everything else the metrics show comes from the state file (see
//! `ops::metrics`), so that `auth0-rudderstack metrics` can print it without a running daemon.
//!
//! The clients and loops only call the small methods of [`TenantTelemetry`]; names and labels of the series
//! live here and in `ops::metrics`, nowhere else.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Labels of a request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The tenant's domain.
    pub tenant: String,
    /// `token`, `logs`, `batch`, `webhook`.
    pub endpoint: String,
    /// `2xx`, `3xx`, `4xx`, `5xx`, or `error` (no answer).
    pub class: String,
}

/// Labels of a per-tenant counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    /// The tenant's domain.
    pub tenant: String,
}

/// Labels of a retry counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    /// The tenant's domain.
    pub tenant: String,
    /// `fetch` or `send`.
    pub r#loop: String,
}

/// The runtime counters of one process.
#[derive(Default, Clone)]
pub struct Telemetry {
    requests: Family<RequestLabels, Counter>,
    rate_limited: Family<TenantLabels, Counter>,
    retries: Family<RetryLabels, Counter>,
    token_mints: Family<TenantLabels, Counter>,
}

impl Telemetry {
    /// A fresh set of counters.
    pub fn new() -> Arc<Telemetry> {
        Arc::new(Telemetry::default())
    }

    /// The counters of one tenant.
    pub fn tenant(self: &Arc<Self>, domain: &str) -> TenantTelemetry {
        TenantTelemetry { tenant: domain.to_string(), shared: Some(self.clone()) }
    }

    /// Add the counters to a registry (whose prefix is `auth0_rudderstack`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "requests",
            "HTTP requests made, by tenant, endpoint and status class",
            self.requests.clone(),
        );
        registry.register("rate_limited", "429 answers from Auth0", self.rate_limited.clone());
        registry.register("retries", "waits after a transient failure, by loop", self.retries.clone());
        registry.register("token_mints", "Management API access tokens minted", self.token_mints.clone());
    }
}

/// The counters of one tenant; a disabled one (for tests and one-shot commands) counts nothing.
#[derive(Clone, Default)]
pub struct TenantTelemetry {
    tenant: String,
    shared: Option<Arc<Telemetry>>,
}

impl std::fmt::Debug for TenantTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantTelemetry").field("tenant", &self.tenant).finish_non_exhaustive()
    }
}

impl TenantTelemetry {
    /// Counters that count nothing.
    pub fn disabled() -> TenantTelemetry {
        TenantTelemetry::default()
    }

    /// A request ended with `status` (`None`: no answer).
    pub fn request(&self, endpoint: &str, status: Option<u16>) {
        if let Some(t) = &self.shared {
            let class = match status {
                Some(s) => format!("{}xx", s / 100),
                None => "error".to_string(),
            };
            let labels = RequestLabels { tenant: self.tenant.clone(), endpoint: endpoint.to_string(), class };
            t.requests.get_or_create(&labels).inc();
            if status == Some(429) {
                t.rate_limited.get_or_create(&TenantLabels { tenant: self.tenant.clone() }).inc();
            }
        }
    }

    /// A loop waits before trying again.
    pub fn retry(&self, which: &str) {
        if let Some(t) = &self.shared {
            t.retries
                .get_or_create(&RetryLabels { tenant: self.tenant.clone(), r#loop: which.to_string() })
                .inc();
        }
    }

    /// A token was minted.
    pub fn token_minted(&self) {
        if let Some(t) = &self.shared {
            t.token_mints.get_or_create(&TenantLabels { tenant: self.tenant.clone() }).inc();
        }
    }
}
