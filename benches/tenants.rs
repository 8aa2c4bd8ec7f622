//! Many tenants in one daemon, measured: the real binary against fake Auth0s and a fake RudderStack on
//! 127.0.0.1.
//!
//! `cargo bench --bench tenants` runs three scenarios once each and prints one table, each figure with its
//! target and PASS or MISS computed from the measurement:
//! 1. **scale**: 100 tenants on one fake Auth0 server, 10 entries each, `poll_interval = "30s"`: every one of
//!    the 1,000 events arrives, with 1,000 distinct messageIds; then the daemon idles, and its resident memory
//!    and the CPU time it spends in 35 s are measured (from `/proc`). After a catch-up a tenant's next poll
//!    comes between one and 1.15 intervals after its last (it stretches its waits to move onto its grid),
//!    so 35 s from the last delivery hold every tenant's next poll, once. The same with 1 tenant gives the
//!    memory each tenant costs; **auto** does the same with no `poll_interval` and the default pace
//!    (`"auto"`: a poll every 3.1 s per tenant), once every tenant is back on its grid (ten intervals), over
//!    30 s, and counts the requests each tenant made;
//! 2. **budget**: 10 tenants catching up at once, each against its own fake with a token bucket (burst 10,
//!    10 requests a second): the share of its own budget each one uses (requests per second between its
//!    first and last request, against the bucket's rate);
//! 3. **fairness**: one tenant catching up a large backlog (250,000 entries) while another receives new
//!    entries: how long the other's entries take to arrive (against `poll_interval` + 1 s), which passes only
//!    if the backlog was still being caught up when the last of them arrived.
//!
//! Every wait is bounded and panics with the daemon's log when something does not arrive, so a broken run
//! cannot pass as a fast one. `BENCH_ONLY=scale,auto,budget,fairness` (any subset) runs only those.

use std::collections::HashSet;
use std::time::{Duration, Instant};

#[path = "support/proc.rs"]
mod proc;
#[path = "../tests/it/support/mod.rs"]
mod support;

use support::app::{App, TenantSpec};
use support::fake_auth0::{Bucket, FakeAuth0, FakeOptions};
use support::fake_rudderstack::{self, FakeRudderStack};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut table = Table::default();
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|o| o.trim() == name);
    if wanted("scale") {
        scale(&mut table).await;
    }
    if wanted("auto") {
        auto(&mut table).await;
    }
    if wanted("budget") {
        budget(&mut table).await;
    }
    if wanted("fairness") {
        fairness(&mut table).await;
    }
    table.print();
}

fn tenant_options(domain: &str) -> FakeOptions {
    FakeOptions {
        domain: domain.into(),
        client_id: format!("client-{domain}"),
        client_secret: format!("secret-{domain}-0123456789"),
        audience: format!("https://{domain}/api/v2/"),
        ..FakeOptions::default()
    }
}

async fn rudder() -> FakeRudderStack {
    FakeRudderStack::start(fake_rudderstack::Options {
        write_keys: vec![support::app::WRITE_KEY.into()],
        keep_events: true,
        ..fake_rudderstack::Options::default()
    })
    .await
}

/// How long the idle daemon is measured with `poll_interval = "30s"` (see `idle_with`), and with "auto".
const IDLE_WINDOW: Duration = Duration::from_secs(35);
const AUTO_WINDOW: Duration = Duration::from_secs(30);
/// The interval of `poll_interval = "auto"` at the default pace: 1 / (0.2 × 1.6 requests a second).
const AUTO_INTERVAL: Duration = Duration::from_millis(3125);

/// What `/proc` says about a running daemon.
struct Proc {
    pid: u32,
}

impl Proc {
    fn status_kb(&self, key: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Resident memory in MB.
    fn rss_mb(&self) -> f64 {
        self.status_kb("VmRSS:") / 1024.0
    }

    /// User plus system CPU seconds so far.
    fn cpu_seconds(&self) -> f64 {
        proc::cpu_seconds(self.pid)
    }
}

async fn stop(child: tokio::process::Child) {
    let pid = child.id().expect("pid");
    let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output()).await;
}

/// What one idle measurement found.
struct Idle {
    rss: f64,
    cpu: f64,
    /// `/api/v2/logs` requests in the window, of the busiest and of the quietest tenant.
    most: usize,
    least: usize,
}

/// `n` tenants on one fake, 10 entries each, polling every `poll` (`None`: `"auto"` at the default pace);
/// returns the idle figures after delivery.
async fn idle_with(n: usize, poll: Option<Duration>, table: Option<&mut Table>) -> Idle {
    let auth0 = FakeAuth0::start(tenant_options("t0.example.com")).await;
    let mut tenants = vec![auth0.tenant()];
    for i in 1..n {
        let o = tenant_options(&format!("t{i}.example.com"));
        tenants.push(auth0.add_tenant(&o.domain, &o.client_id, &o.client_secret, o.clone()));
    }
    for t in &tenants {
        t.push_synthetic(10);
    }
    let rudder = rudder().await;
    let specs: Vec<TenantSpec> = tenants.iter().map(|t| TenantSpec::of(t, &auth0.url())).collect();
    let mut app = App::with_tenants(&specs, &rudder.url());
    for i in 0..n {
        match poll {
            Some(d) => app.set_tenant(i, "poll_interval", humantime::format_duration(d).to_string()),
            // The defaults: no poll_interval, and the default pace.
            None => app.unset_tenant(i, "poll_interval").unset_tenant(i, "max_requests_per_second"),
        };
    }
    let every = poll.unwrap_or(AUTO_INTERVAL);
    let started = Instant::now();
    let child = app.spawn_run();
    let p = Proc { pid: child.id().unwrap() };
    let total = n * 10;
    let deadline = Instant::now() + Duration::from_secs(120);
    while rudder.event_count() < total {
        assert!(
            Instant::now() < deadline,
            "only {} of {total} events:\n{}",
            rudder.event_count(),
            app.run_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered_in = started.elapsed();
    let ids: HashSet<String> = rudder.message_ids().into_iter().collect();
    // With "auto", first let every tenant come back onto its grid (at most 15 % of an interval a wait), so
    // that the window measures steady idling; with 30 s, the window starts at once and holds each tenant's
    // next poll (see the module docs).
    let (settle, window) = match poll {
        Some(_) => (Duration::ZERO, IDLE_WINDOW),
        None => (AUTO_INTERVAL * 10, AUTO_WINDOW),
    };
    tokio::time::sleep(settle).await;
    let from = Instant::now();
    let cpu_before = p.cpu_seconds();
    tokio::time::sleep(window).await;
    let (rss, cpu) = (p.rss_mb(), p.cpu_seconds() - cpu_before);
    let until = Instant::now();
    stop(child).await;
    let mut per_tenant = vec![0usize; n];
    for r in auth0.log_requests() {
        if r.at >= from && r.at < until {
            per_tenant[r.tenant] += 1;
        }
    }
    let idle = Idle {
        rss,
        cpu,
        most: per_tenant.iter().copied().max().unwrap_or(0),
        least: per_tenant.iter().copied().min().unwrap_or(0),
    };
    if let Some(table) = table {
        let interval = match poll {
            Some(d) => format!("poll_interval = {}", humantime::format_duration(d)),
            None => "no poll_interval (auto, every 3.1 s)".into(),
        };
        table.section(&format!("{n} tenants on one fake Auth0, 10 entries each, {interval}"));
        table.row(
            "events delivered, distinct messageIds",
            format!(
                "{} events, {} distinct, in {:.1} s",
                rudder.event_count(),
                ids.len(),
                delivered_in.as_secs_f64()
            ),
            format!("{total} and {total}"),
            rudder.event_count() == total && ids.len() == total,
        );
        let secs = window.as_secs();
        table.row(&format!("idle RSS after {secs} s"), format!("{rss:.1} MB"), "≤ 30 MB".into(), rss <= 30.0);
        let (polls, budget) = match poll {
            Some(_) => ("one poll each", 0.3),
            None => ("a poll every 3.1 s each", 1.0),
        };
        table.row(
            &format!("CPU spent in {secs} s of idling ({polls})"),
            format!("{cpu:.2} s ({:.2} % of one core)", cpu / window.as_secs_f64() * 100.0),
            format!("≤ {budget} s"),
            cpu <= budget,
        );
        // Each tenant's requests in the window: one per interval, spread rather than in one wave.
        // 30 s: the next poll, once; auto: one per interval.
        let expected = match poll {
            Some(_) => 1.0,
            None => window.as_secs_f64() / every.as_secs_f64(),
        };
        table.row(
            &format!("/api/v2/logs requests per tenant in {secs} s"),
            format!("{} to {} (expected {expected:.1})", idle.least, idle.most),
            format!("≤ {}", expected.ceil()),
            idle.most as f64 <= expected.ceil() && idle.least >= 1,
        );
    }
    idle
}

async fn scale(table: &mut Table) {
    let many = idle_with(100, Some(Duration::from_secs(30)), Some(table)).await;
    let one = idle_with(1, Some(Duration::from_secs(30)), None).await;
    table.info("idle RSS with 1 tenant", format!("{:.1} MB, {:.2} CPU s in 35 s", one.rss, one.cpu));
    table.info("memory per tenant", format!("{:.0} KB", (many.rss - one.rss) * 1024.0 / 99.0));
}

async fn auto(table: &mut Table) {
    let many = idle_with(100, None, Some(table)).await;
    let one = idle_with(1, None, None).await;
    table.info("idle with 1 tenant, auto", format!("{:.1} MB, {:.2} CPU s in 30 s", one.rss, one.cpu));
    table.info("CPU per poll, 100 tenants", format!("{:.2} ms", many.cpu * 1000.0 / (100.0 * 9.6)));
}

async fn budget(table: &mut Table) {
    const TENANTS: usize = 10;
    const ENTRIES: usize = 5_000;
    let mut fakes = Vec::new();
    for i in 0..TENANTS {
        let mut o = tenant_options(&format!("b{i}.example.com"));
        o.bucket = Some(Bucket { burst: 10, per_second: 10.0 });
        let f = FakeAuth0::start(o).await;
        f.push_synthetic(ENTRIES);
        fakes.push(f);
    }
    let rudder = rudder().await;
    let specs: Vec<TenantSpec> = fakes.iter().map(|f| TenantSpec::of(&f.tenant(), &f.url())).collect();
    let mut app = App::with_tenants(&specs, &rudder.url());
    for i in 0..TENANTS {
        app.set_tenant(i, "max_requests_per_second", 10.0);
    }
    let out = app.run(&["sync"], Duration::from_secs(300)).await;
    assert!(out.status.success(), "{}", support::app::text(&out));
    assert_eq!(rudder.event_count(), TENANTS * ENTRIES);
    table.section(&format!(
        "{TENANTS} tenants catching up at once, each against its own bucket (burst 10, 10/s)"
    ));
    let mut worst = f64::MAX;
    let mut limited = 0;
    for f in &fakes {
        let r = f.log_requests();
        let span = r.last().unwrap().at.duration_since(r[0].at).as_secs_f64();
        let used = (r.len() - 1) as f64 / span / 10.0;
        worst = worst.min(used);
        limited += f.rate_limited();
    }
    table.row(
        "budget used by the slowest tenant",
        format!("{:.1} % ({} requests refused in all)", worst * 100.0, limited),
        "≥ 90 % each".into(),
        worst >= 0.90,
    );
}

async fn fairness(table: &mut Table) {
    // The backlog must last until the quiet tenant's last entry has arrived, whatever the machine's speed
    // (one caught up 60,000 before they were all sent, a faster one 250,000): it starts at BACKLOG and is
    // topped up by TOP_UP whenever less than that is left to deliver.
    const BACKLOG: usize = 250_000;
    const TOP_UP: usize = 100_000;
    let backlog = FakeAuth0::start(tenant_options("backlog.example.com")).await;
    backlog.push_synthetic(BACKLOG);
    let mut backlog_pushed = BACKLOG;
    let quiet = FakeAuth0::start(tenant_options("quiet.example.com")).await;
    let first_quiet = quiet.push_synthetic(1)[0]["log_id"].as_str().unwrap().to_string();
    let rudder = FakeRudderStack::start(fake_rudderstack::Options {
        write_keys: vec![support::app::WRITE_KEY.into()],
        keep_events: false,
        ..fake_rudderstack::Options::default()
    })
    .await;
    let specs =
        [TenantSpec::of(&backlog.tenant(), &backlog.url()), TenantSpec::of(&quiet.tenant(), &quiet.url())];
    let mut app = App::with_tenants(&specs, &rudder.url());
    app.set_tenant(0, "poll_interval", "1s").set_tenant(1, "poll_interval", "1s");
    let child = app.spawn_run();
    let deadline = Instant::now() + Duration::from_secs(60);
    while rudder.event_count() < 1_000 {
        assert!(Instant::now() < deadline, "the backlog never started:\n{}", app.run_log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // While the backlog is being caught up, the quiet tenant gets an entry every half second.
    let mut pushed = Vec::new();
    for _ in 0..10 {
        let e = quiet.push_synthetic(1);
        pushed.push((e[0]["log_id"].as_str().unwrap().to_string(), Instant::now()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        if backlog_pushed.saturating_sub(rudder.event_count()) < TOP_UP {
            backlog.push_synthetic(TOP_UP);
            backlog_pushed += TOP_UP;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut worst = Duration::ZERO;
    let mut last_quiet = None::<Instant>;
    for (log_id, at) in &pushed {
        let arrived = loop {
            if let Some(a) = rudder.arrivals().iter().find(|a| &a.log_id == log_id) {
                break a.at;
            }
            assert!(Instant::now() < deadline, "{log_id} never arrived:\n{}", app.run_log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        worst = worst.max(arrived.saturating_duration_since(*at));
        last_quiet = last_quiet.max(Some(arrived));
    }
    let last_quiet = last_quiet.expect("ten entries were pushed");
    // The figure only means something if the backlog was still being caught up when the quiet tenant's last
    // entry arrived: count the backlog's events that had arrived by then (ids differ between tenants).
    let quiet_ids: HashSet<&str> =
        pushed.iter().map(|(id, _)| id.as_str()).chain([first_quiet.as_str()]).collect();
    let backlog_by_then = rudder
        .arrivals()
        .iter()
        .filter(|a| a.at <= last_quiet && !quiet_ids.contains(a.log_id.as_str()))
        .count();
    let backlog_left = backlog_pushed.saturating_sub(backlog_by_then);
    stop(child).await;
    table.section(&format!(
        "one tenant catching up {backlog_pushed} entries, another receiving an entry every 0.5 s"
    ));
    table.row(
        "slowest arrival of the quiet tenant's entries",
        format!("{:.2} s (the backlog still had {backlog_left} to go)", worst.as_secs_f64()),
        "≤ poll_interval + 1 s = 2 s, backlog left".into(),
        worst <= Duration::from_secs(2) && backlog_left > 0,
    );
}

/// One printed line: what, the figure, and the target with its verdict.
type Line = (String, String, Option<(String, bool)>);

/// The printed results.
#[derive(Default)]
struct Table {
    lines: Vec<Line>,
}

impl Table {
    fn section(&mut self, title: &str) {
        self.lines.push((format!("## {title}"), String::new(), None));
    }
    fn row(&mut self, what: &str, value: String, target: String, pass: bool) {
        self.lines.push((what.to_string(), value, Some((target, pass))));
    }
    fn info(&mut self, what: &str, value: String) {
        self.lines.push((what.to_string(), value, None));
    }
    fn print(&self) {
        let (mut passed, mut missed) = (0, 0);
        println!();
        println!("{:<46} {:<58} {:<24} result", "figure", "measured (one run)", "target");
        for (what, value, target) in &self.lines {
            if what.starts_with("## ") {
                println!("\n{what}");
                continue;
            }
            match target {
                Some((t, pass)) => {
                    if *pass {
                        passed += 1;
                    } else {
                        missed += 1;
                    }
                    println!("{what:<46} {value:<58} {t:<24} {}", if *pass { "PASS" } else { "MISS" });
                }
                None => println!("{what:<46} {value:<58}"),
            }
        }
        println!("\n{passed} PASS, {missed} MISS");
    }
}
