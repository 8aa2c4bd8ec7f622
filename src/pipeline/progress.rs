//! What a running pipeline tells its operator while it works: progress lines (or a bar on a terminal)
//! during a catch-up, systemd's `STATUS=` and watchdog, and the metrics textfile.
//!
//! A catch-up of hours of log can take a long time at Auth0's request rate, so at least every
//! [`REPORT_EVERY`] each tenant that is behind gets one line: entries fetched and delivered since start, the
//! rate, how far behind the newest entry read is (`behind=`), and an ETA from the speed at which `behind`
//! shrinks. A quiet daemon logs nothing. The same summary goes to systemd as `STATUS=`, so `systemctl status`
//! shows it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::{RunMode, TenantRun};
use crate::config::Config;
use crate::store::Handle;
use crate::telemetry::Telemetry;

/// How often progress is reported during a catch-up.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);
/// How often a tenant that keeps up with a trickle of new entries says so.
pub const QUIET_REPORT_EVERY: Duration = Duration::from_secs(600);

/// A duration in words, to the second ("3h 2m 5s").
pub fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// How far behind the newest entry read is.
fn behind(t: &TenantRun) -> Option<Duration> {
    let date = t.position.lock().unwrap_or_else(|p| p.into_inner()).cursor_date?;
    (Utc::now() - date).to_std().ok()
}

/// Log that a tenant caught up (daemon), with the figures `status` shows: once after start, at once after it
/// had fallen behind (a full page), and otherwise at most every [`QUIET_REPORT_EVERY`] while new entries
/// trickle in; never while nothing new was fetched.
pub async fn caught_up(t: &TenantRun, store: &Handle) {
    let fetched = t.counters.fetched.load(Ordering::Relaxed);
    {
        let mut p = t.position.lock().unwrap_or_else(|p| p.into_inner());
        let due = p.behind_since_report || p.reported_at.is_none_or(|at| at.elapsed() >= QUIET_REPORT_EVERY);
        if p.reported_fetched == fetched || !due {
            return;
        }
        p.reported_fetched = fetched;
        p.reported_at = Some(Instant::now());
        p.behind_since_report = false;
    }
    let d = t.domain.clone();
    let Ok(s) = store.call(move |s| s.snapshot(&d)).await else { return };
    tracing::info!(
        tenant = %t.domain,
        fetched_since_start = fetched,
        delivered_since_start = t.counters.delivered.load(Ordering::Relaxed),
        outbox = s.outbox_depth,
        delivered_total = s.delivered_total,
        dead_letters = s.dead_letters,
        "caught up with Auth0"
    );
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&format!(
        "caught up; outbox {}; delivered {} in all",
        s.outbox_depth, s.delivered_total
    ))]);
}

/// One tenant's figures between two reports.
struct Window {
    at: Instant,
    fetched: u64,
    delivered: u64,
    behind: Option<Duration>,
}

/// Report progress every [`REPORT_EVERY`] (lines) or continuously (a bar), until `stop`.
pub async fn report(
    tenants: Vec<Arc<TenantRun>>,
    store: Handle,
    mode: RunMode,
    bar: bool,
    stop: CancellationToken,
) {
    let started = Instant::now();
    let snapshot = |t: &TenantRun| Window {
        at: Instant::now(),
        fetched: t.counters.fetched.load(Ordering::Relaxed),
        delivered: t.counters.delivered.load(Ordering::Relaxed),
        behind: behind(t),
    };
    let mut last: Vec<Window> = tenants.iter().map(|t| snapshot(t)).collect();
    let bars = bar.then(|| Bars::new(&tenants));
    let tick = if bars.is_some() { Duration::from_millis(250) } else { REPORT_EVERY };
    // Every tenant shares the run's activity: one read tells that none of them moved.
    let Some(activity) = tenants.first().map(|t| t.counters.activity()) else { return };
    let mut seen = activity.count();
    'report: loop {
        // Nothing fetched or delivered since the last report: nothing to say until something moves, so an
        // idle daemon does not even tick (the lines are only about tenants that moved).
        let mut waited = false;
        while bars.is_none() && activity.count() == seen {
            tokio::select! {
                _ = stop.cancelled() => break 'report,
                _ = activity.changed() => waited = true,
            }
        }
        if waited {
            // Rates run from the end of the lull, not from the last report before it.
            let at = Instant::now();
            for before in &mut last {
                before.at = at;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(tick) => {}
        }
        seen = activity.count();
        let mut statuses = Vec::new();
        let nows: Vec<Window> = tenants.iter().map(|t| snapshot(t)).collect();
        let moved: Vec<bool> = nows
            .iter()
            .zip(&last)
            .map(|(now, before)| {
                bars.is_some() || now.fetched != before.fetched || now.delivered != before.delivered
            })
            .collect();
        // The outboxes of all tenants in one pass over the store, and only when one of them moved.
        let depths: HashMap<String, u64> = if moved.contains(&true) {
            store.call(|s| s.outbox_depths()).await.map(HashMap::from_iter).unwrap_or_default()
        } else {
            HashMap::new()
        };
        for (i, (t, now)) in tenants.iter().zip(nows).enumerate() {
            let before = &last[i];
            let secs = now.at.duration_since(before.at).as_secs_f64().max(0.001);
            let rate = (now.fetched - before.fetched) as f64 / secs;
            let moved = moved[i];
            let outbox = if moved { depths.get(&t.domain).copied().unwrap_or(0) } else { 0 };
            let caught_up = t.position.lock().unwrap_or_else(|p| p.into_inner()).caught_up;
            let eta = match (before.behind, now.behind) {
                (Some(b), Some(n)) if b > n => {
                    // Log time covered per second of wall time.
                    let shrink = (b - n).as_secs_f64() / secs;
                    Some(Duration::from_secs_f64((n.as_secs_f64() / shrink).min(1e7)))
                }
                _ => None,
            };
            let behind_text = now.behind.map(human).unwrap_or_else(|| "unknown".into());
            let eta_text =
                if caught_up { "0s".into() } else { eta.map(human).unwrap_or_else(|| "unknown".into()) };
            if let Some(bars) = &bars {
                bars.update(i, t, now.behind, &behind_text, &eta_text, rate, outbox);
            } else {
                if moved && (!caught_up || outbox > 0) {
                    // Each figure once, as a field: a text line reads `progress fetched=… tenant=… outbox=…`,
                    // and a JSON line carries the same figures as numbers and strings.
                    tracing::info!(
                        fetched = now.fetched,
                        delivered = now.delivered,
                        rate = %format!("{rate:.0}/s"),
                        behind = %behind_text,
                        eta = %eta_text,
                        tenant = %t.domain,
                        outbox,
                        "progress"
                    );
                    statuses.push(format!("{}: behind {behind_text}, outbox {outbox}", t.domain));
                }
            }
            last[i] = now;
        }
        if !statuses.is_empty() {
            let line = if statuses.len() == 1 { statuses.remove(0) } else { statuses.join("; ") };
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&line)]);
        }
        let _ = (mode, started);
    }
    if let Some(bars) = bars {
        bars.finish();
    }
}

/// The progress bars of a `sync` on a terminal: one per tenant, its length how far behind it started, its
/// position how much of that it has caught up.
struct Bars {
    multi: indicatif::MultiProgress,
    bars: Vec<indicatif::ProgressBar>,
}

impl Bars {
    fn new(tenants: &[Arc<TenantRun>]) -> Bars {
        let multi = indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr());
        let style = indicatif::ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {percent:>3}% {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bars = tenants
            .iter()
            .map(|t| {
                let b = multi.add(indicatif::ProgressBar::new(1));
                b.set_style(style.clone());
                b.set_prefix(t.domain.clone());
                b
            })
            .collect();
        Bars { multi, bars }
    }

    #[allow(clippy::too_many_arguments)]
    fn update(
        &self,
        i: usize,
        t: &TenantRun,
        behind: Option<Duration>,
        behind_text: &str,
        eta: &str,
        rate: f64,
        outbox: u64,
    ) {
        let b = &self.bars[i];
        if let Some(behind) = behind {
            let secs = behind.as_secs().max(1);
            if b.length() == Some(1) || secs > b.length().unwrap_or(0) {
                b.set_length(secs);
            }
            b.set_position(b.length().unwrap_or(secs).saturating_sub(secs));
        }
        b.set_message(format!(
            "fetched={} delivered={} rate={rate:.0}/s behind={behind_text} eta={eta} outbox={outbox}",
            t.counters.fetched.load(Ordering::Relaxed),
            t.counters.delivered.load(Ordering::Relaxed)
        ));
    }

    fn finish(self) {
        for b in &self.bars {
            b.finish();
        }
        let _ = self.multi.clear();
    }
}

/// Feed systemd's watchdog while every live loop keeps within its deadline.
pub async fn watchdog(tenants: Vec<Arc<TenantRun>>, stop: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else { return };
    let every = (interval / 2).max(Duration::from_millis(100));
    let mut warned = false;
    loop {
        let overdue: Vec<String> = tenants
            .iter()
            .flat_map(|t| {
                let mut v = Vec::new();
                if t.fetch_beat.overdue() {
                    v.push(format!("{} fetching", t.domain));
                }
                if t.send_beat.overdue() {
                    v.push(format!("{} sending", t.domain));
                }
                v
            })
            .collect();
        if overdue.is_empty() {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            warned = false;
        } else if !warned {
            tracing::error!(loops = %overdue.join(", "), "a loop has overrun its deadline; no longer feeding the systemd watchdog, so that systemd restarts the daemon");
            warned = true;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Keep the metrics textfile up to date: rewritten every `metrics.interval`, atomically.
pub async fn write_metrics(
    config: Arc<Config>,
    store: Handle,
    telemetry: Arc<Telemetry>,
    path: std::path::PathBuf,
    stop: CancellationToken,
) {
    let mut warned = false;
    loop {
        let c = config.clone();
        let text = match store.call(move |s| crate::ops::metrics::snapshots(&c, s)).await {
            Ok(snaps) => Some(crate::ops::metrics::render(&config, &snaps, Some(&telemetry))),
            Err(e) => {
                tracing::warn!(error = %crate::logging::Chain(&e), "cannot read the state for the metrics file");
                None
            }
        };
        if let Some(text) = text {
            match crate::files::write_atomically(&path, text.as_bytes()) {
                Ok(()) => warned = false,
                Err(e) if !warned => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write the metrics file");
                    warned = true;
                }
                Err(_) => {}
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(config.metrics.interval) => {}
        }
    }
}
