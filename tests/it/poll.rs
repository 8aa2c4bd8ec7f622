//! Idle polling with `poll_interval = "auto"`: the rate follows the budget share, halves when Auth0 signals
//! pressure (a 429, an `api_limit_warning` entry in the tenant's log) and comes back by itself once the
//! pressure period is over; `status` and the metrics say why. The period is shortened with the debug-only
//! `AUTH0_RUDDERSTACK_TEST_PRESSURE_PERIOD`, and every rate is counted from the requests the fake saw.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::app::{App, sigterm, text, wait_until};
use crate::support::fake_auth0::{DOMAIN, FakeAuth0, Recorded};
use crate::support::fake_rudderstack::FakeRudderStack;
use crate::support::http::Reply;
use crate::support::start_fakes;

/// The shortened pressure period: long enough for about six polls at the halved rate, so that one wait
/// stretched by a busy machine does not decide the measured rate.
const PERIOD: Duration = Duration::from_secs(14);
/// Each measuring window.
const WINDOW: Duration = Duration::from_secs(6);

/// A config with no `poll_interval`: "auto" at a share of 0.5 of 2 requests a second, one poll a second
/// (two seconds while the share is halved).
fn auto_app(auth0: &FakeAuth0, rudder: &FakeRudderStack) -> App {
    let mut app = App::new(auth0, rudder);
    app.unset("auth0", "poll_interval");
    app.set("auth0", "max_requests_per_second", 2.0).set("auth0", "poll_budget_share", 0.5);
    app
}

fn spawn_run(app: &App) -> tokio::process::Child {
    let log = std::fs::File::create(app.dir.path().join("run.log")).unwrap();
    let mut cmd = app.command(&["run"]);
    cmd.env("AUTH0_RUDDERSTACK_TEST_PRESSURE_PERIOD", humantime::format_duration(PERIOD).to_string());
    cmd.stdout(Stdio::from(log.try_clone().unwrap())).stderr(Stdio::from(log));
    cmd.spawn().expect("spawn run")
}

/// The checkpoint reads (`from=`) the fake answered, in arrival order.
fn polls(auth0: &FakeAuth0) -> Vec<Recorded> {
    auth0.log_requests().into_iter().filter(|r| r.query("from").is_some()).collect()
}

/// Wait (bounded) until the fake has seen a checkpoint read at or after `t`.
async fn wait_for_poll_after(auth0: &FakeAuth0, app: &App, t: Instant) {
    let limit = t.saturating_duration_since(Instant::now()) + Duration::from_secs(15);
    let seen = wait_until(limit, || polls(auth0).iter().any(|r| r.at >= t)).await;
    assert!(seen, "no poll after the window; daemon log:\n{}", app.run_log());
}

/// The checkpoint reads answered 200 in `[from, from + len)`: how many, and how many a second between the
/// first and the last of them.
fn rate(auth0: &FakeAuth0, from: Instant, len: Duration) -> (usize, f64) {
    let at: Vec<Instant> = polls(auth0)
        .iter()
        .filter(|r| r.status == 200 && r.at >= from && r.at < from + len)
        .map(|r| r.at)
        .collect();
    match (at.first(), at.last()) {
        (Some(a), Some(b)) if at.len() >= 2 => (at.len(), (at.len() - 1) as f64 / (*b - *a).as_secs_f64()),
        _ => (at.len(), 0.0),
    }
}

/// The value of `name{tenant="…"}` in the metrics.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        (series.starts_with(&format!("{name}{{")) && series.contains(&format!("tenant=\"{DOMAIN}\"")))
            .then(|| value.parse().ok())?
    })
}

/// Run the daemon idle, measure its rate, `trigger` a sign of pressure (returning when the fake gave it),
/// then measure the rate under pressure and after the period; check what `status`, the metrics and the log
/// say. `reason` is a word the recorded reason must hold.
async fn halves_and_recovers(
    auth0: &FakeAuth0,
    rudder: &FakeRudderStack,
    app: &App,
    trigger: impl AsyncFnOnce() -> Instant,
    reason: &str,
) {
    auth0.push_synthetic(1);
    let daemon = spawn_run(app);
    assert!(
        wait_until(Duration::from_secs(20), || rudder.event_count() == 1).await,
        "the first entry was not delivered: {}",
        app.run_log()
    );
    // Calm: one poll a second.
    let calm_from = Instant::now() + Duration::from_millis(500);
    wait_for_poll_after(auth0, app, calm_from + WINDOW).await;
    let (calm_n, calm) = rate(auth0, calm_from, WINDOW);
    let status = app.status().await;
    assert_eq!(status["poll_basis"], "auto", "{status}");
    assert_eq!(status["poll_interval_seconds"], 1.0, "{status}");

    // The sign of pressure, at `signal`; from the first poll after it, half the rate.
    let signal = trigger().await;
    let first = {
        let seen = wait_until(Duration::from_secs(15), || {
            polls(auth0).iter().any(|r| r.at > signal && r.status == 200)
        })
        .await;
        assert!(seen, "no poll after the sign of pressure: {}", app.run_log());
        polls(auth0).iter().find(|r| r.at > signal && r.status == 200).unwrap().at
    };
    // What `status` and the metrics say while the pressure lasts.
    let status = app.status().await;
    let metrics = app.run(&["metrics"], Duration::from_secs(20)).await;
    let metrics = String::from_utf8_lossy(&metrics.stdout).to_string();
    // From the poll after that one.
    let pressed_from = first + Duration::from_millis(100);
    let pressed_len = PERIOD - (pressed_from - signal) - Duration::from_millis(500);
    wait_for_poll_after(auth0, app, pressed_from + pressed_len).await;
    let (pressed_n, pressed) = rate(auth0, pressed_from, pressed_len);
    // Within one interval: the very next wait is already the longer one.
    let second = polls(auth0).iter().find(|r| r.at > first && r.status == 200).map(|r| r.at - first);

    // After the period, by itself: one poll a second again.
    let back_from = signal + PERIOD + Duration::from_millis(2500);
    wait_for_poll_after(auth0, app, back_from + WINDOW).await;
    let (back_n, back) = rate(auth0, back_from, WINDOW);
    let after = app.status().await;
    let log = app.run_log();
    assert!(sigterm(daemon).await.success(), "{log}");

    let figures = format!(
        "calm {calm_n} polls in {WINDOW:?} ({calm:.2}/s), pressed {pressed_n} in {pressed_len:?} ({pressed:.2}/s), \
         first wait under pressure {second:?}, back {back_n} in {WINDOW:?} ({back:.2}/s)\nlog:\n{log}"
    );
    assert!((0.75..=1.2).contains(&calm), "{figures}");
    assert!(pressed <= calm * 0.65 && pressed >= calm * 0.3, "the rate did not halve: {figures}");
    assert!(pressed_n >= 3, "{figures}");
    // About the halved interval (a wait may also stretch towards the grid), so clearly longer than the calm one.
    assert!(
        second.is_some_and(|w| w >= Duration::from_millis(1450)),
        "not halved within one interval: {figures}"
    );
    assert!(back >= calm * 0.8, "the rate did not come back: {figures}");

    assert_eq!(status["poll_basis"], "pressure", "{status}");
    assert_eq!(status["poll_interval_seconds"], 2.0, "{status}");
    assert_eq!(status["poll_budget_share"], 0.25, "{status}");
    assert!(status["poll_pressure_reason"].as_str().is_some_and(|r| r.contains(reason)), "{status}");
    assert!(status["poll_pressure_until"].is_string(), "{status}");
    assert!(status["polling"].as_str().is_some_and(|p| p.contains("halved to 0.25")), "{status}");
    assert_eq!(sample(&metrics, "auth0_rudderstack_poll_pressure"), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, "auth0_rudderstack_poll_interval_seconds"), Some(2.0), "{metrics}");
    assert_eq!(after["poll_basis"], "auto", "{after}");
    assert_eq!(after["poll_pressure_until"], Value::Null, "{after}");

    // Logged once at warn with the reason, and its end once.
    let started: Vec<&str> = log.lines().filter(|l| l.contains("Auth0 signals pressure")).collect();
    assert_eq!(started.len(), 1, "{log}");
    assert!(started[0].contains("WARN") && started[0].contains(reason), "{log}");
    assert_eq!(log.matches("no sign of pressure from Auth0").count(), 1, "{log}");
}

/// Two 429s halve the idle rate from the next poll on, `status` and the metrics show why, the warning is
/// logged once, and the rate comes back by itself when the (shortened) pressure period is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_halves_idle_polling_until_the_pressure_period_is_over() {
    let (auth0, rudder) = start_fakes().await;
    let app = auto_app(&auth0, &rudder);
    let armed = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU32::new(0));
    let (a, r) = (armed.clone(), refused.clone());
    auth0.tenant().set_hook(move |req, _| {
        if req.path != "/api/v2/logs" || !a.load(Ordering::SeqCst) || r.load(Ordering::SeqCst) >= 2 {
            return None;
        }
        r.fetch_add(1, Ordering::SeqCst);
        Some(Reply::json(
            429,
            &json!({"statusCode": 429, "error": "Too Many Requests", "message": "Global limit has been reached"}),
        ))
    });
    let trigger = async || {
        armed.store(true, Ordering::SeqCst);
        assert!(
            wait_until(Duration::from_secs(15), || refused.load(Ordering::SeqCst) == 2).await,
            "no 429 sent"
        );
        auth0.log_requests().iter().rev().find(|r| r.status == 429).unwrap().at
    };
    halves_and_recovers(&auth0, &rudder, &app, trigger, "429").await;
    assert_eq!(auth0.log_requests_with(429), 2);
}

/// An `api_limit_warning` entry in the tenant's own log halves the idle rate too (and is delivered like any
/// entry), until the pressure period is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_limit_warning_entry_halves_idle_polling_until_the_pressure_period_is_over() {
    let (auth0, rudder) = start_fakes().await;
    let app = auto_app(&auth0, &rudder);
    let trigger = async || {
        let mut e = auth0.make_entries(1).remove(0);
        e["type"] = json!("api_limit_warning");
        e["date"] = json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        e["description"] =
            json!("The limit of requests to the Management API in given time is about to be reached");
        let id = e["log_id"].as_str().unwrap().to_string();
        auth0.push([e]);
        assert!(
            wait_until(Duration::from_secs(15), || {
                polls(&auth0).iter().any(|r| r.status == 200 && r.query("from").is_some_and(|f| f == id))
            })
            .await,
            "the entry was not read: {}",
            app.run_log()
        );
        // The sign is the read that returned the entry: the read whose `from` is the entry before it.
        let reads = polls(&auth0);
        let after = reads.iter().position(|r| r.query("from") == Some(id.as_str())).unwrap();
        reads[after - 1].at
    };
    halves_and_recovers(&auth0, &rudder, &app, trigger, "api_limit_warning").await;
    let events = rudder.events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        events[1]["properties"]["description"].as_str().map(|d| d.contains("about to be reached")),
        Some(true)
    );
}

/// `poll_budget_share` outside 0.01 to 1 exits 2 naming the key; `poll_interval` takes "auto" or a duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_share_outside_its_range_exits_2_naming_the_key() {
    let (auth0, rudder) = start_fakes().await;
    let mut app = App::new(&auth0, &rudder);
    for bad in [0.0, 0.005, 1.5] {
        app.set("auth0", "poll_budget_share", bad);
        let out = app.run(&["status"], Duration::from_secs(20)).await;
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        let why = if bad > 0.0 { "must be between 0.01 and 1" } else { "must be positive" };
        assert!(err.contains("auth0.poll_budget_share") && err.contains(why), "{bad}: {err}");
    }
    app.set("auth0", "poll_budget_share", 0.01).set("auth0", "poll_interval", "whenever");
    let out = app.run(&["status"], Duration::from_secs(20)).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth0.poll_interval"), "{}", text(&out));
    app.set("auth0", "poll_interval", "auto");
    let status = app.status().await;
    // 1 / (0.01 × 1000 requests a second) is 0.1 s: clamped to a second.
    assert_eq!(status["poll_interval_seconds"], 1.0, "{status}");
    assert_eq!(status["poll_interval"], "auto", "{status}");
    app.set("auth0", "poll_interval", "45s");
    let status = app.status().await;
    assert_eq!(
        (status["poll_interval_seconds"].as_f64(), status["poll_basis"].as_str()),
        (Some(45.0), Some("configured"))
    );
}
