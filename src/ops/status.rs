//! `status`: what the state file says about each tenant, read without touching the network, and the warnings
//! an operator should act on (a checkpoint past half the retention, stopped fetching, a stall, dead letters,
//! a gap, a failing tenant).

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::config::{Config, Tenant};
use crate::pipeline::poll::Interval;
use crate::store::{Snapshot, Store, StoreError};

use super::{age, human_chrono, privacy_description};

/// One tenant's status.
#[derive(Debug, Clone)]
pub struct TenantStatus {
    /// Its configuration.
    pub tenant: Tenant,
    /// What the state holds (none when the file does not exist yet).
    pub snapshot: Option<Snapshot>,
    /// Things to act on.
    pub warnings: Vec<String>,
}

/// The whole report.
#[derive(Debug, Clone)]
pub struct Report {
    /// The state file.
    pub state_path: std::path::PathBuf,
    /// Whether it exists.
    pub state_exists: bool,
    /// Each tenant asked about.
    pub tenants: Vec<TenantStatus>,
}

/// Read the status of the selected tenants (all, or the one named).
pub fn read(config: &Config, tenant: Option<&str>) -> Result<Report, super::Error> {
    let selected = config.select(tenant)?;
    let store = match Store::open_existing(&config.state.path) {
        Ok(s) => Some(s),
        Err(StoreError::Missing { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let mut tenants = Vec::new();
    for t in selected {
        let snapshot = match &store {
            Some(s) => Some(s.snapshot(t.domain())?),
            None => None,
        };
        let warnings = warnings(t, snapshot.as_ref());
        tenants.push(TenantStatus { tenant: t.clone(), snapshot, warnings });
    }
    Ok(Report { state_path: config.state.path.clone(), state_exists: store.is_some(), tenants })
}

fn warnings(t: &Tenant, s: Option<&Snapshot>) -> Vec<String> {
    let mut w = Vec::new();
    let Some(s) = s else { return w };
    let retention = chrono::Duration::from_std(t.auth0.retention).unwrap_or(chrono::Duration::MAX);
    if let Some(a) = age(s.cursor_date.as_deref())
        && a > retention / 2
    {
        w.push(format!(
            "the checkpoint is {} old, more than half of auth0.retention ({}): entries older than the retention are lost if it is not caught up",
            human_chrono(a),
            humantime::format_duration(t.auth0.retention)
        ));
    }
    if s.stopped {
        w.push(format!(
            "fetching is stopped after an expired checkpoint; run `auth0-rudderstack resume --tenant {}`",
            t.domain()
        ));
    }
    if let Some(stall) = &s.stall {
        w.push(format!("fetching cannot advance: {stall}"));
    }
    if let Some(e) = &s.last_error {
        w.push(format!("last error ({}): {e}", s.last_error_at.as_deref().unwrap_or("?")));
    }
    if s.dead_letters > 0 {
        w.push(format!(
            "{} dead letter{}: see `auth0-rudderstack dead-letter list`, re-queue with `dead-letter retry`",
            s.dead_letters,
            plural(s.dead_letters)
        ));
    }
    if let Some(g) = &s.last_gap {
        w.push(format!("gap detected at {}: {}", g.detected_at, g.detail));
    }
    w
}

/// "s" unless there is exactly one.
pub fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The tenant's idle interval now, as the state records Auth0's pressure.
fn interval(t: &TenantStatus) -> Interval {
    let s = t.snapshot.as_ref();
    Interval::stored(
        &t.tenant.auth0,
        s.and_then(|s| s.pressure_until.as_deref()),
        s.and_then(|s| s.pressure_reason.as_deref()),
    )
}

fn tenant_json(r: &Report, t: &TenantStatus) -> Value {
    let s = t.snapshot.as_ref();
    let checkpoint_age = s.and_then(|s| age(s.cursor_date.as_deref()));
    let poll = interval(t);
    json!({
        "tenant": t.tenant.domain(),
        "state_path": r.state_path,
        "state_exists": r.state_exists,
        "cursor": s.and_then(|s| s.cursor.clone()),
        "cursor_date": s.and_then(|s| s.cursor_date.clone()),
        "checkpoint_age_seconds": checkpoint_age.map(|a| a.num_seconds()),
        "retention_seconds": t.tenant.auth0.retention.as_secs(),
        "outbox_depth": s.map_or(0, |s| s.outbox_depth),
        "dead_letters": s.map_or(0, |s| s.dead_letters),
        "last_fetch_at": s.and_then(|s| s.last_fetch_at.clone()),
        "last_delivery_at": s.and_then(|s| s.last_delivery_at.clone()),
        "delivered_total": s.map_or(0, |s| s.delivered_total),
        "fetched_total": s.map_or(0, |s| s.fetched_total),
        "filtered_total": s.map_or(0, |s| s.filtered_total),
        "repeated_total": s.map_or(0, |s| s.repeated_total),
        "gaps": s.map_or(0, |s| s.gaps),
        "fetching_stopped": s.is_some_and(|s| s.stopped),
        "stall": s.and_then(|s| s.stall.clone()),
        "last_error": s.and_then(|s| s.last_error.clone()),
        "last_error_at": s.and_then(|s| s.last_error_at.clone()),
        "last_gap": s.and_then(|s| s.last_gap.clone()),
        "filter": t.tenant.auth0.filter.describe(),
        "privacy": privacy_description(&t.tenant),
        "destination": t.tenant.rudderstack.data_plane_url.as_str(),
        "mode": t.tenant.rudderstack.mode.to_string(),
        "poll_interval": t.tenant.auth0.poll_interval.to_string(),
        "poll_interval_seconds": poll.every.as_secs_f64(),
        "poll_basis": poll.basis(),
        "poll_budget_share": poll.share,
        "poll_pressure_until": poll.pressure.as_ref().map(|(until, _)| crate::entry::format_date(until)),
        "poll_pressure_reason": poll.pressure.as_ref().map(|(_, why)| why.clone()),
        "polling": poll.describe(&t.tenant.auth0),
        "warnings": t.warnings,
    })
}

/// The report as JSON: a `tenants` array with one object per tenant. When one tenant is reported, its fields
/// also stand at the top level, as they did before there could be several.
pub fn to_json(r: &Report) -> Value {
    let tenants: Vec<Value> = r.tenants.iter().map(|t| tenant_json(r, t)).collect();
    let mut top = if tenants.len() == 1 { tenants[0].clone() } else { json!({}) };
    if let Some(o) = top.as_object_mut() {
        o.insert("state_path".into(), json!(r.state_path));
        o.insert("state_exists".into(), json!(r.state_exists));
        o.insert("tenants".into(), Value::Array(tenants));
    }
    top
}

/// The report as text for a person. Every value is escaped: error texts come from Auth0 and RudderStack,
/// and paths and field names from the config, so a raw line break or terminal escape in one could forge a
/// line of the report or drive the operator's terminal.
pub fn to_text(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    // A label in a column of 17, and the value escaped.
    let line = |out: &mut String, label: &str, value: &str| {
        let _ = writeln!(out, "{label:<17}{}", crate::logging::escape(value));
    };
    let when = |t: Option<&String>| match t {
        Some(t) => match age(Some(t)) {
            Some(a) => format!("{t} ({} ago)", human_chrono(a)),
            None => t.clone(),
        },
        None => "never".into(),
    };
    line(&mut out, "state:", &r.state_path.display().to_string());
    if !r.state_exists {
        line(&mut out, "", "(no state yet: `sync` or `run` creates it)");
    }
    for t in &r.tenants {
        out.push('\n');
        line(&mut out, "tenant:", t.tenant.domain());
        line(
            &mut out,
            "destination:",
            &format!("{} ({} mode)", t.tenant.rudderstack.data_plane_url, t.tenant.rudderstack.mode),
        );
        line(&mut out, "forwards:", &t.tenant.auth0.filter.describe());
        line(&mut out, "privacy:", &privacy_description(&t.tenant));
        line(&mut out, "idle polling:", &interval(t).describe(&t.tenant.auth0));
        let Some(s) = &t.snapshot else { continue };
        let cursor = match (&s.cursor, age(s.cursor_date.as_deref())) {
            (Some(c), Some(a)) => {
                format!("{c} ({}, {} old)", s.cursor_date.as_deref().unwrap_or("?"), human_chrono(a))
            }
            (Some(c), None) => c.to_string(),
            (None, _) => "none (starts from auth0.start)".into(),
        };
        line(&mut out, "cursor:", &cursor);
        line(
            &mut out,
            "outbox:",
            &format!("{} entr{} waiting", s.outbox_depth, if s.outbox_depth == 1 { "y" } else { "ies" }),
        );
        line(&mut out, "dead letters:", &s.dead_letters.to_string());
        line(&mut out, "last fetch:", &when(s.last_fetch_at.as_ref()));
        line(&mut out, "last delivery:", &when(s.last_delivery_at.as_ref()));
        line(
            &mut out,
            "delivered:",
            &format!(
                "{} event{} in all; {} entr{} fetched, {} filtered out, {} repeat{} skipped",
                s.delivered_total,
                plural(s.delivered_total),
                s.fetched_total,
                if s.fetched_total == 1 { "y" } else { "ies" },
                s.filtered_total,
                s.repeated_total,
                plural(s.repeated_total)
            ),
        );
        for w in &t.warnings {
            let _ = writeln!(out, "warning: {}", crate::logging::escape(w));
        }
    }
    out
}

/// When a timestamp of the state file was, for a person.
pub fn since(t: Option<&str>) -> Option<DateTime<Utc>> {
    crate::entry::parse_date(t?)
}
