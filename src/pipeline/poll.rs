//! When an idle fetcher asks Auth0 again: the wait after a page that was not full.
//!
//! Latency and the tenant's request budget pull against each other. A short wait brings an entry to
//! RudderStack sooner; every idle request spends budget that the customer's other Management API callers,
//! and our own catch-up after an outage, share. So with `poll_interval = "auto"` (the default) idle polling
//! spends a fixed share of `max_requests_per_second`, `poll_budget_share` (a fifth by default: every 3.1 s
//! at the default pace), within 1 s and 60 s; an explicit duration is taken as it is.
//!
//! When Auth0 signals pressure on the budget (a 429, a bucket at a tenth of its size, an `api_limit` or
//! `api_limit_warning` entry in the tenant's own log) the share is halved, never below 0.01, for
//! [`PRESSURE_PERIOD`] after the latest signal; then it comes back by itself. The pressure is kept in the
//! state (so `status` and `metrics` show it without the daemon, and a restart does not forget it) and logged
//! once at warn when it begins, with its reason.
//!
//! Many tenants in one process must not poll in one wave: each tenant's polls fall on a grid of its own
//! interval, shifted by a phase derived from its domain, so a hundred tenants spread their requests (and
//! their wake-ups) over the interval. A wait is never shorter than the interval (less a sliver that absorbs
//! the request's own time), so idle polling never asks more often than it should; a fetcher off its grid (after
//! a start, a catch-up, or a change of interval) stretches each wait by at most [`MAX_STRETCH`] of the
//! interval until it is back on it.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::config::{self, MIN_POLL_SHARE, PollInterval};

/// The most a wait is lengthened to bring a tenant back onto its grid, as a share of the interval.
pub const MAX_STRETCH: f64 = 0.15;
/// The most a wait is shortened so that a poll on its grid stays there despite the time each round takes.
const MAX_SHRINK: f64 = 0.02;

/// How long the share stays halved after Auth0's latest sign of pressure.
pub const PRESSURE_PERIOD: Duration = Duration::from_secs(600);

/// [`PRESSURE_PERIOD`]. Debug builds only: `AUTH0_RUDDERSTACK_TEST_PRESSURE_PERIOD` (a humantime duration,
/// read once) shortens it, so that tests can watch the rate come back without waiting ten minutes. Release
/// builds compile this to the constant.
pub fn pressure_period() -> Duration {
    #[cfg(debug_assertions)]
    {
        static OVERRIDE: OnceLock<Option<Duration>> = OnceLock::new();
        let set = OVERRIDE.get_or_init(|| {
            std::env::var("AUTH0_RUDDERSTACK_TEST_PRESSURE_PERIOD")
                .ok()
                .and_then(|v| humantime::parse_duration(&v).ok())
        });
        if let Some(d) = set {
            return *d;
        }
    }
    PRESSURE_PERIOD
}

/// The idle interval of a tenant, and why it is what it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    /// The wait after a page that was not full.
    pub every: Duration,
    /// The share of `max_requests_per_second` it spends (`None` for an explicit `poll_interval`).
    pub share: Option<f64>,
    /// Until when, and why, Auth0's pressure halves the share.
    pub pressure: Option<(DateTime<Utc>, String)>,
}

impl Interval {
    /// The interval `cfg` gives, under pressure until `until` (ignored once past `now`).
    pub fn of(
        cfg: &config::Auth0,
        pressure: Option<(DateTime<Utc>, String)>,
        now: DateTime<Utc>,
    ) -> Interval {
        let pressure = pressure.filter(|(until, _)| *until > now);
        let share = match cfg.poll_interval {
            PollInterval::Every(_) => None,
            PollInterval::Auto if pressure.is_some() => {
                Some((cfg.poll_budget_share / 2.0).max(MIN_POLL_SHARE))
            }
            PollInterval::Auto => Some(cfg.poll_budget_share),
        };
        Interval { every: cfg.idle_interval(share.unwrap_or(cfg.poll_budget_share)), share, pressure }
    }

    /// The interval as the state file records the pressure (`status`, `metrics`).
    pub fn stored(cfg: &config::Auth0, until: Option<&str>, reason: Option<&str>) -> Interval {
        let pressure =
            until.and_then(crate::entry::parse_date).map(|u| (u, reason.unwrap_or("?").to_string()));
        Interval::of(cfg, pressure, Utc::now())
    }

    /// `configured`, `auto` or `pressure`: what sets the interval now.
    pub fn basis(&self) -> &'static str {
        match (self.share, &self.pressure) {
            (None, _) => "configured",
            (Some(_), None) => "auto",
            (Some(_), Some(_)) => "pressure",
        }
    }

    /// The interval and its reason, in words.
    pub fn describe(&self, cfg: &config::Auth0) -> String {
        let every = seconds(self.every);
        let pressure = self.pressure.as_ref().map(|(until, why)| (crate::entry::format_date(until), why));
        match (self.share, pressure) {
            (None, None) => format!("every {every} (auth0.poll_interval)"),
            (None, Some((until, why))) => format!(
                "every {every} (auth0.poll_interval); Auth0 signals pressure until {until} ({why}), which an \
                 explicit poll_interval does not change"
            ),
            (Some(share), None) => format!(
                "every {every} (auto: poll_budget_share {} of max_requests_per_second {})",
                share, cfg.max_requests_per_second
            ),
            (Some(share), Some((until, why))) => format!(
                "every {every} (auto: share halved to {share} for Auth0's pressure until {until}: {why})"
            ),
        }
    }
}

/// A duration as seconds with at most one decimal (`3.1s`), for a person.
fn seconds(d: Duration) -> String {
    let s = format!("{:.1}", d.as_secs_f64());
    format!("{}s", s.strip_suffix(".0").unwrap_or(&s))
}

/// What a sign of pressure, or the lack of one, changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Nothing to record.
    None,
    /// Pressure began (log it, record it).
    Started,
    /// It goes on for longer (record it).
    Extended,
    /// It is over (log it, record it).
    Ended,
}

/// The idle schedule of one tenant: its phase, and the pressure it is under.
#[derive(Debug)]
pub struct Schedule {
    /// Where in each interval this tenant's polls fall, in `[0, 1)`.
    phase: f64,
    pressure: Option<Pressure>,
}

#[derive(Debug)]
struct Pressure {
    until: DateTime<Utc>,
    /// `until` on the monotonic clock: a wall clock set back cannot make pressure last.
    deadline: Instant,
    reason: String,
    /// The `until` last written to the state.
    recorded: DateTime<Utc>,
}

/// The instant every tenant's grid is counted from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Schedule {
    /// The schedule of the tenant with this domain, under no pressure.
    pub fn new(domain: &str) -> Schedule {
        let digest = Sha256::digest(domain.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        let phase = (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64;
        Schedule { phase, pressure: None }
    }

    /// Take up a pressure the state recorded (a restart), as long as it lasts, and at most one period.
    pub fn restore(&mut self, until: Option<&str>, reason: Option<&str>) {
        let Some(until) = until.and_then(crate::entry::parse_date) else { return };
        let now = Utc::now();
        let Ok(left) = (until - now).to_std() else { return };
        let left = left.min(pressure_period());
        self.pressure = Some(Pressure {
            until,
            deadline: Instant::now() + left,
            reason: reason.unwrap_or("?").to_string(),
            recorded: until,
        });
    }

    /// Auth0 signalled pressure: halve the share for a period from now.
    pub fn press(&mut self, reason: String) -> Change {
        let period = pressure_period();
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(period).unwrap_or(chrono::Duration::MAX);
        let deadline = Instant::now() + period;
        match &mut self.pressure {
            Some(p) => {
                p.until = until;
                p.deadline = deadline;
                p.reason = reason;
                // Rewrite the state only when the end moved noticeably: a storm of 429s is one write.
                let moved = (until - p.recorded).to_std().unwrap_or_default();
                if moved >= period / 10 {
                    p.recorded = until;
                    Change::Extended
                } else {
                    Change::None
                }
            }
            None => {
                self.pressure = Some(Pressure { until, deadline, reason, recorded: until });
                Change::Started
            }
        }
    }

    /// End the pressure once its period has passed without a new sign.
    pub fn expire(&mut self) -> Change {
        match &self.pressure {
            Some(p) if Instant::now() >= p.deadline => {
                self.pressure = None;
                Change::Ended
            }
            _ => Change::None,
        }
    }

    /// Until when and why the share is halved.
    pub fn pressure(&self) -> Option<(DateTime<Utc>, String)> {
        self.pressure.as_ref().map(|p| (p.until, p.reason.clone()))
    }

    /// The interval now.
    pub fn interval(&self, cfg: &config::Auth0) -> Interval {
        // The monotonic deadline decides; the wall-clock `until` is what is shown.
        let active = self.pressure.as_ref().filter(|p| Instant::now() < p.deadline);
        let pressure =
            active.map(|p| (p.until.max(Utc::now() + chrono::Duration::milliseconds(1)), p.reason.clone()));
        Interval::of(cfg, pressure, Utc::now())
    }

    /// How long to wait from `now` for this tenant's next poll at `every`: until its next grid point, which
    /// is about `every` away while it polls on its grid; otherwise `every` stretched by at most
    /// [`MAX_STRETCH`] towards the grid.
    pub fn wait(&self, every: Duration, now: Instant) -> Duration {
        let e = every.as_secs_f64();
        if e <= 0.0 || !e.is_finite() {
            return every;
        }
        let t = now.saturating_duration_since(epoch()).as_secs_f64();
        let offset = self.phase * e;
        // The grid point a poll made on time would aim for: the first at least (1 - MAX_STRETCH) intervals
        // away, so that the time a round took does not push it to the one after.
        let k = ((t + e * (1.0 - MAX_STRETCH) - offset) / e).ceil();
        let next = offset + k * e;
        Duration::from_secs_f64((next - t).clamp(e * (1.0 - MAX_SHRINK), e * (1.0 + MAX_STRETCH)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth0(extra: &str) -> config::Auth0 {
        let text = format!(
            "[auth0]\ndomain = \"t.example.com\"\nclient_id = \"c\"\nclient_secret = \"s\"\n{extra}\n\
             [rudderstack]\ndata_plane_url = \"http://127.0.0.1:9\"\nwrite_key = \"k\"\n"
        );
        let (c, _) = config::Config::parse(&text, std::path::Path::new("c.toml"), |_: &str| None).unwrap();
        c.tenants[0].auth0.clone()
    }

    #[test]
    fn auto_spends_the_share_and_pressure_halves_it() {
        let cfg = auth0("");
        let now = Utc::now();
        let calm = Interval::of(&cfg, None, now);
        assert_eq!(calm.every, Duration::from_secs_f64(3.125));
        assert_eq!(calm.basis(), "auto");
        assert!(
            calm.describe(&cfg).contains("every 3.1s (auto: poll_budget_share 0.2"),
            "{}",
            calm.describe(&cfg)
        );
        let until = now + chrono::Duration::minutes(10);
        let pressed = Interval::of(&cfg, Some((until, "a 429".into())), now);
        assert_eq!(pressed.every, Duration::from_secs_f64(6.25));
        assert_eq!(pressed.share, Some(0.1));
        assert_eq!(pressed.basis(), "pressure");
        assert!(pressed.describe(&cfg).contains("halved to 0.1") && pressed.describe(&cfg).contains("a 429"));
        // A pressure that has passed counts for nothing.
        let past = Interval::of(&cfg, Some((now - chrono::Duration::seconds(1), "old".into())), now);
        assert_eq!(past, calm);
        // Never below the smallest share.
        let least = auth0("poll_budget_share = 0.01");
        assert_eq!(Interval::of(&least, Some((until, "x".into())), now).share, Some(MIN_POLL_SHARE));
        // An explicit duration wins, pressure or not.
        let fixed = auth0("poll_interval = \"30s\"");
        let i = Interval::of(&fixed, Some((until, "a 429".into())), now);
        assert_eq!((i.every, i.basis()), (Duration::from_secs(30), "configured"));
    }

    #[test]
    fn pressure_starts_once_is_extended_and_ends_by_itself() {
        let mut s = Schedule::new("t.example.com");
        assert_eq!(s.expire(), Change::None);
        assert_eq!(s.press("a 429".into()), Change::Started);
        // A second sign at once moves the end too little to be written again.
        assert_eq!(s.press("another 429".into()), Change::None);
        assert_eq!(s.pressure().unwrap().1, "another 429");
        assert_eq!(s.expire(), Change::None);
        s.pressure.as_mut().unwrap().deadline = Instant::now();
        assert_eq!(s.expire(), Change::Ended);
        assert!(s.pressure().is_none());
        // A recorded pressure is taken up; one that is over is not.
        let later = crate::entry::format_date(&(Utc::now() + chrono::Duration::minutes(5)));
        s.restore(Some(&later), Some("restored"));
        assert_eq!(s.interval(&auth0("")).basis(), "pressure");
        let mut t = Schedule::new("t.example.com");
        t.restore(Some("2020-01-01T00:00:00.000Z"), Some("old"));
        assert!(t.pressure().is_none());
        t.restore(Some("not a date"), None);
        assert!(t.pressure().is_none());
    }

    #[test]
    fn polls_fall_on_a_grid_shifted_by_the_domain() {
        let every = Duration::from_secs(3);
        let s = Schedule::new("a.example.com");
        let mut now = Instant::now();
        // The README's figures, not the constants: a wait is stretched by at most 15 %.
        let bounds = |w: Duration| {
            w >= every.mul_f64(1.0 - MAX_SHRINK) && w <= every.mul_f64(1.15) + Duration::from_nanos(1)
        };
        // However far off its grid it starts, each wait is about the interval, and within a few it is back on
        // the grid: then a round that took 20 ms is absorbed, and the polls stay 3 s apart.
        let mut waits = Vec::new();
        for _ in 0..10 {
            let w = s.wait(every, now);
            assert!(bounds(w), "{w:?}");
            waits.push(w);
            now += w + Duration::from_millis(20);
        }
        let last = waits[waits.len() - 1];
        assert!((last.as_secs_f64() - 2.98).abs() < 0.005, "{waits:?}");
        // A hundred domains spread over the interval rather than in one wave.
        let mut phases: Vec<f64> =
            (0..100).map(|i| Schedule::new(&format!("tenant-{i}.example.com")).phase).collect();
        phases.sort_by(f64::total_cmp);
        let buckets = (0..10).filter(|b| phases.iter().any(|p| (p * 10.0).floor() as usize == *b)).count();
        assert!(buckets >= 8, "{phases:?}");
    }
}
