//! The metrics, in the Prometheus text format: from the state file alone (so `auth0-rudderstack metrics` works
//! without a running daemon, and while one holds the lock), plus the runtime counters when `run` writes its
//! textfile.
//!
//! Every series carries a `tenant` label with the tenant's domain. The names below, and the alert rules in
//! `packaging/alerts.yml`, are an interface operators build dashboards on: extend them, don't rename them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::config::{Config, Tenant};
use crate::pipeline::poll::Interval;
use crate::store::{Snapshot, Store, StoreError};
use crate::telemetry::{Telemetry, TenantLabels};

/// The labels of the rules info series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RulesLabels {
    tenant: String,
    filter: String,
    privacy: String,
}

/// The labels of `build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// Every configured tenant with its snapshot (an empty one when the file has none yet).
pub fn snapshots(config: &Config, store: &mut Store) -> Result<Vec<(Tenant, Snapshot)>, StoreError> {
    config.tenants.iter().map(|t| Ok((t.clone(), store.snapshot(t.domain())?))).collect()
}

fn seconds(rfc3339: Option<&str>) -> f64 {
    rfc3339.and_then(crate::entry::parse_date).map(|t| t.timestamp_millis() as f64 / 1000.0).unwrap_or(0.0)
}

/// Render the metrics of these tenants, and of `telemetry` when given.
pub fn render(_config: &Config, tenants: &[(Tenant, Snapshot)], telemetry: Option<&Telemetry>) -> String {
    let mut registry = Registry::with_prefix("auth0_rudderstack");
    let gauge = |registry: &mut Registry, name: &str, help: &str| {
        let f = Family::<TenantLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(name, help, f.clone());
        f
    };
    let counter = |registry: &mut Registry, name: &str, help: &str| {
        let f = Family::<TenantLabels, Counter>::default();
        registry.register(name, help, f.clone());
        f
    };
    let checkpoint =
        gauge(&mut registry, "checkpoint_timestamp_seconds", "date of the cursor's entry (0: no cursor yet)");
    let retention =
        gauge(&mut registry, "retention_seconds", "the configured log retention of the tenant's plan");
    let outbox = gauge(&mut registry, "outbox_entries", "entries fetched and waiting for delivery");
    let dead = gauge(&mut registry, "dead_letters", "entries set aside; see `dead-letter list`");
    let last_fetch =
        gauge(&mut registry, "last_fetch_timestamp_seconds", "last answer from Auth0 (0: never)");
    let last_delivery =
        gauge(&mut registry, "last_delivery_timestamp_seconds", "last 2xx from RudderStack (0: never)");
    let stopped = gauge(
        &mut registry,
        "fetching_stopped",
        "1 while fetching waits for `resume` after an expired checkpoint",
    );
    let stalled =
        gauge(&mut registry, "fetching_stalled", "1 while Auth0 serves entries the cursor cannot move past");
    let failing = gauge(&mut registry, "failing", "1 while the tenant's last attempt failed");
    let poll_interval = gauge(
        &mut registry,
        "poll_interval_seconds",
        "the wait after a page that was not full, as configured or chosen by poll_interval = \"auto\"",
    );
    let poll_pressure = gauge(
        &mut registry,
        "poll_pressure",
        "1 while Auth0 signals pressure on the request budget (poll_interval = \"auto\" then halves its share)",
    );
    let delivered = counter(&mut registry, "delivered_events", "events RudderStack accepted");
    let fetched = counter(&mut registry, "fetched_entries", "entries fetched into the outbox");
    let filtered = counter(&mut registry, "filtered_entries", "entries the filters kept back");
    let repeated = counter(&mut registry, "repeated_entries", "entries Auth0 served again, skipped");
    let gaps = counter(&mut registry, "gaps", "gaps detected in the Auth0 log (expired checkpoints)");
    let rules = Family::<RulesLabels, Gauge>::default();
    registry.register("rules", "the filters and privacy rules in effect (always 1)", rules.clone());

    for (t, s) in tenants {
        let l = TenantLabels { tenant: t.domain().to_string() };
        checkpoint.get_or_create(&l).set(seconds(s.cursor_date.as_deref()));
        retention.get_or_create(&l).set(t.auth0.retention.as_secs_f64());
        outbox.get_or_create(&l).set(s.outbox_depth as f64);
        dead.get_or_create(&l).set(s.dead_letters as f64);
        last_fetch.get_or_create(&l).set(seconds(s.last_fetch_at.as_deref()));
        last_delivery.get_or_create(&l).set(seconds(s.last_delivery_at.as_deref()));
        stopped.get_or_create(&l).set(if s.stopped { 1.0 } else { 0.0 });
        stalled.get_or_create(&l).set(if s.stall.is_some() { 1.0 } else { 0.0 });
        failing.get_or_create(&l).set(if s.last_error.is_some() { 1.0 } else { 0.0 });
        let poll = Interval::stored(&t.auth0, s.pressure_until.as_deref(), s.pressure_reason.as_deref());
        poll_interval.get_or_create(&l).set(poll.every.as_secs_f64());
        poll_pressure.get_or_create(&l).set(if poll.pressure.is_some() { 1.0 } else { 0.0 });
        delivered.get_or_create(&l).inc_by(s.delivered_total);
        fetched.get_or_create(&l).inc_by(s.fetched_total);
        filtered.get_or_create(&l).inc_by(s.filtered_total);
        repeated.get_or_create(&l).inc_by(s.repeated_total);
        gaps.get_or_create(&l).inc_by(s.gaps);
        rules
            .get_or_create(&RulesLabels {
                tenant: t.domain().to_string(),
                filter: t.auth0.filter.describe(),
                privacy: crate::ops::privacy_description(t),
            })
            .set(1);
    }
    registry.register(
        "build",
        "the running version",
        Info::new(BuildLabels { version: env!("CARGO_PKG_VERSION").to_string() }),
    );
    if let Some(t) = telemetry {
        t.register(&mut registry);
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}
