//! Running it as a service: metrics from the state file and the textfile `run` keeps, progress during a
//! catch-up, systemd's notifications, a token kept across starts, the daemon's own token exchanges, signals,
//! and the command line's small promises.

use std::collections::HashSet;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use auth0_rudderstack::store::Store;
use serde_json::Value;

use crate::support::app::{App, CLIENT_ID, CLIENT_SECRET, run_bounded, sigterm, text, wait_until};
use crate::support::fake_auth0::{DOMAIN, FakeAuth0, FakeOptions};
use crate::support::start_fakes;

/// The series the metrics must have, each with a `tenant` label.
const SERIES: [&str; 16] = [
    "auth0_rudderstack_checkpoint_timestamp_seconds",
    "auth0_rudderstack_outbox_entries",
    "auth0_rudderstack_dead_letters",
    "auth0_rudderstack_delivered_events_total",
    "auth0_rudderstack_fetched_entries_total",
    "auth0_rudderstack_filtered_entries_total",
    "auth0_rudderstack_last_fetch_timestamp_seconds",
    "auth0_rudderstack_last_delivery_timestamp_seconds",
    "auth0_rudderstack_gaps_total",
    "auth0_rudderstack_fetching_stopped",
    "auth0_rudderstack_retention_seconds",
    "auth0_rudderstack_repeated_entries_total",
    "auth0_rudderstack_fetching_stalled",
    "auth0_rudderstack_failing",
    "auth0_rudderstack_poll_interval_seconds",
    "auth0_rudderstack_poll_pressure",
];

/// The value of `name{tenant="…"}` in a Prometheus text exposition.
fn sample(text: &str, name: &str, tenant: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        (series.starts_with(&format!("{name}{{")) && series.contains(&format!("tenant=\"{tenant}\"")))
            .then(|| value.parse().ok())?
    })
}

/// Run `promtool check metrics` on `text`; a missing promtool fails under CI and says SKIPPED elsewhere.
pub(crate) fn promtool_check(text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            crate::support::missing_prerequisite(
                "promtool check metrics",
                &format!("promtool is not installed ({e})"),
            );
            return;
        }
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// After a sync of 500 entries, `metrics` prints every documented series labelled with the tenant, the text
/// passes `promtool check metrics`, 500 events count as delivered and the outbox is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_sync_have_every_series_and_pass_promtool() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(500);
    let app = App::new(&auth0, &rudder);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = app.run(&["metrics"], Duration::from_secs(20)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let metrics = String::from_utf8(out.stdout).unwrap();
    for name in SERIES {
        assert!(sample(&metrics, name, DOMAIN).is_some(), "{name} missing:\n{metrics}");
    }
    assert_eq!(sample(&metrics, "auth0_rudderstack_delivered_events_total", DOMAIN), Some(500.0));
    assert_eq!(sample(&metrics, "auth0_rudderstack_fetched_entries_total", DOMAIN), Some(500.0));
    assert_eq!(sample(&metrics, "auth0_rudderstack_outbox_entries", DOMAIN), Some(0.0));
    assert!(metrics.contains("auth0_rudderstack_build_info{version=\""), "{metrics}");
    promtool_check(&metrics);

    // Each series holds what `status --json` says of the same state: the timestamps as Unix seconds (to the
    // millisecond), the rest as they are.
    let status = app.status().await;
    let epoch = |key: &str| {
        let at = status[key].as_str().unwrap_or_else(|| panic!("{key}: {status}"));
        let at: chrono::DateTime<chrono::Utc> = at.parse().unwrap();
        Some(at.timestamp_millis() as f64 / 1000.0)
    };
    let number = |key: &str| status[key].as_f64().or_else(|| panic!("{key}: {status}"));
    for (series, expected) in [
        ("checkpoint_timestamp_seconds", epoch("cursor_date")),
        ("last_fetch_timestamp_seconds", epoch("last_fetch_at")),
        ("last_delivery_timestamp_seconds", epoch("last_delivery_at")),
        ("retention_seconds", number("retention_seconds")),
        ("dead_letters", number("dead_letters")),
        ("filtered_entries_total", number("filtered_total")),
        ("repeated_entries_total", number("repeated_total")),
        ("gaps_total", number("gaps")),
        ("poll_interval_seconds", number("poll_interval_seconds")),
    ] {
        let name = format!("auth0_rudderstack_{series}");
        assert_eq!(sample(&metrics, &name, DOMAIN), expected, "{name}:\n{metrics}\n{status}");
    }
    // The three timestamps differ: the cursor's entry is an hour old, the fetch and the delivery are now.
    assert!(epoch("cursor_date") < epoch("last_fetch_at"), "{status}");
    assert_eq!(number("retention_seconds"), Some(864_000.0), "{status}");
}

/// The state series show the states they name: repeated entries, a stall, a failing tenant, stopped
/// fetching, a gap and dead letters each move their series, and clear again when the state clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_repeats_stalls_failures_stops_gaps_and_dead_letters() {
    use auth0_rudderstack::entry::LogId;
    use auth0_rudderstack::store::{Gap, Kept, NewDeadLetter, PageCommit};
    let (auth0, rudder) = start_fakes().await;
    let app = App::new(&auth0, &rudder);
    let mut store = Store::open(&app.db_path()).unwrap();
    let page = PageCommit {
        repeated: 3,
        dead_letters: vec![NewDeadLetter {
            log_id: LogId::parse("d1").ok(),
            kept: Kept::Whole("{}".into()),
            reason: "no type".into(),
        }],
        ..PageCommit::default()
    };
    store.commit_page(DOMAIN, &page).unwrap();
    store.set_stall(DOMAIN, Some("a page without a valid log_id")).unwrap();
    store.set_error(DOMAIN, Some("Auth0 answered 503 (retrying)")).unwrap();
    let gap = Gap {
        detected_at: "2026-01-01T00:00:00.000Z".into(),
        from_log_id: "a1".into(),
        from_date: None,
        to_log_id: None,
        to_date: None,
        detail: "expired".into(),
    };
    store.record_gap(DOMAIN, &gap, true).unwrap();
    let metrics = || async {
        let out = app.run(&["metrics"], Duration::from_secs(20)).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let m = metrics().await;
    for (name, value) in [
        ("auth0_rudderstack_repeated_entries_total", 3.0),
        ("auth0_rudderstack_fetching_stalled", 1.0),
        ("auth0_rudderstack_failing", 1.0),
        ("auth0_rudderstack_fetching_stopped", 1.0),
        ("auth0_rudderstack_gaps_total", 1.0),
        ("auth0_rudderstack_dead_letters", 1.0),
    ] {
        assert_eq!(sample(&m, name, DOMAIN), Some(value), "{name}:\n{m}");
    }
    promtool_check(&m);
    store.set_stall(DOMAIN, None).unwrap();
    store.set_error(DOMAIN, None).unwrap();
    let m = metrics().await;
    for name in ["auth0_rudderstack_fetching_stalled", "auth0_rudderstack_failing"] {
        assert_eq!(sample(&m, name, DOMAIN), Some(0.0), "{name}:\n{m}");
    }
    assert_eq!(sample(&m, "auth0_rudderstack_repeated_entries_total", DOMAIN), Some(3.0), "{m}");
}

/// `metrics` works while `run` holds the lock, and needs no network (nothing answers on the configured ports).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_read_while_run_holds_the_state() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(30);
    let app = App::new(&auth0, &rudder);
    let child = app.spawn_run();
    rudder.wait_for_events(30, Duration::from_secs(20)).await;
    let out = app.run(&["metrics"], Duration::from_secs(20)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let metrics = String::from_utf8(out.stdout).unwrap();
    assert_eq!(sample(&metrics, "auth0_rudderstack_delivered_events_total", DOMAIN), Some(30.0), "{metrics}");
    sigterm(child).await;
}

/// With `[metrics] textfile`, `run` writes the whole text within two intervals, keeps it current, and leaves
/// no temporary file behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_keeps_the_metrics_textfile_complete_and_current() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(40);
    let mut app = App::new(&auth0, &rudder);
    let dir = app.dir.path().join("textfile");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("auth0-rudderstack.prom");
    app.set("metrics", "textfile", file.display().to_string()).set("metrics", "interval", "1s");
    let started = Instant::now();
    let child = app.spawn_run();
    assert!(wait_until(Duration::from_secs(20), || file.exists()).await, "no textfile: {}", app.run_log());
    let first = started.elapsed();
    // Kept current: the delivered count reaches 40 in a later rewrite.
    let current = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| sample(&t, "auth0_rudderstack_delivered_events_total", DOMAIN))
            == Some(40.0)
    })
    .await;
    assert!(current, "the textfile never showed the 40 deliveries");
    let text_now = std::fs::read_to_string(&file).unwrap();
    for name in SERIES {
        assert!(sample(&text_now, name, DOMAIN).is_some(), "{name} missing:\n{text_now}");
    }
    assert!(
        text_now.contains("auth0_rudderstack_requests_total{"),
        "run adds its request counters:\n{text_now}"
    );
    assert!(text_now.contains("auth0_rudderstack_token_mints_total{"), "{text_now}");
    promtool_check(&text_now);
    sigterm(child).await;
    let names: HashSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, HashSet::from(["auth0-rudderstack.prom".to_string()]), "leftover files");
    eprintln!("first textfile after {first:?} (interval 1 s)");
}

/// A catch-up that lasts longer than 10 s logs at least one progress line with `behind=` and an ETA, and
/// gives systemd the same summary as `STATUS=` (the `Status:` line of `systemctl status`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_catch_up_logs_its_progress() {
    let (auth0, rudder) = start_fakes().await;
    // 700 entries an hour old, 10 per page at 5 pages a second: about 14 s.
    auth0.push_synthetic(700);
    let mut app = App::new(&auth0, &rudder);
    app.set("auth0", "max_requests_per_second", 5.0).set("auth0", "page_size", 10);
    let socket_path = app.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let mut cmd = app.command(&["sync"]);
    cmd.env("NOTIFY_SOCKET", &socket_path);
    let out = run_bounded(cmd, Duration::from_secs(90)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // What systemd was told, queued on the socket while the sync ran.
    socket.set_nonblocking(true).unwrap();
    let mut told = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buf) {
        told.push(String::from_utf8_lossy(&buf[..n]).trim_end().to_string());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("progress") && l.contains("behind="))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("eta=") && line.contains("fetched=") && line.contains("rate="), "{line}");
    // Each figure appears once on the line.
    for field in ["fetched=", "delivered=", "rate=", "behind=", "eta=", "tenant=", "outbox="] {
        assert_eq!(line.matches(field).count(), 1, "{field} in {line}");
    }
    assert!(
        line.contains("behind=59m") || line.contains("behind=1h") || line.contains("behind=58m"),
        "{line}"
    );
    // The first progress line's figures, as systemd got them.
    let between = |from: &str, to: &str| {
        let rest = &line[line.find(from).unwrap() + from.len()..];
        rest[..rest.find(to).unwrap_or(rest.len())].trim().to_string()
    };
    let expected = format!(
        "STATUS={DOMAIN}: behind {}, outbox {}",
        between("behind=", " eta="),
        between("outbox=", " ")
    );
    assert!(told.contains(&expected), "{expected:?} not among {told:?}\n{line}");
    assert_eq!(rudder.event_count(), 700);
}

/// On a terminal, `sync` draws a progress bar with the same figures instead of log lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_on_a_terminal_draws_a_progress_bar() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(300);
    let mut app = App::new(&auth0, &rudder);
    app.set("auth0", "max_requests_per_second", 5.0).set("auth0", "page_size", 10);
    // `script` runs the command on a pseudo-terminal and copies what it drew to stdout.
    let command = format!("{} --config {} sync", crate::support::app::bin(), app.config_path().display());
    let mut cmd = tokio::process::Command::new("script");
    cmd.args(["-qefc", &command, "/dev/null"]).env("TERM", "xterm").env_remove("RUST_LOG");
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd.kill_on_drop(true);
    let out = run_bounded(cmd, Duration::from_secs(90)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let drawn = String::from_utf8_lossy(&out.stdout);
    assert!(drawn.contains(DOMAIN) && drawn.contains("behind=") && drawn.contains('%'), "{drawn}");
    assert!(!drawn.contains("progress fetched="), "a bar replaces the progress lines: {drawn}");
    assert_eq!(rudder.event_count(), 300);
}

/// `run` tells a fake systemd (`NOTIFY_SOCKET`) READY, feeds the watchdog, and once it has caught up says so
/// in `STATUS=` with the outbox and delivery totals of one moment (together, every entry fetched).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_notifies_systemd_ready_watchdog_and_status() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(50);
    let app = App::new(&auth0, &rudder);
    let socket_path = app.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let log = std::fs::File::create(app.dir.path().join("run.log")).unwrap();
    let mut cmd = app.command(&["run"]);
    cmd.env("NOTIFY_SOCKET", &socket_path).env("WATCHDOG_USEC", "1000000");
    cmd.stdout(std::process::Stdio::from(log.try_clone().unwrap())).stderr(std::process::Stdio::from(log));
    let child = cmd.spawn().unwrap();
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let wanted = |seen: &[String]| {
        ["READY=1", "WATCHDOG=1", "STATUS=caught up; "].iter().all(|w| seen.iter().any(|m| m.contains(w)))
    };
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !wanted(&seen) {
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    assert!(wanted(&seen), "notifications seen: {seen:?}\n{}", app.run_log());
    let watchdogs = seen.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(watchdogs >= 1, "{seen:?}");
    let status = seen.iter().find_map(|m| m.trim_end().strip_prefix("STATUS=caught up; outbox ")).unwrap();
    let totals: Vec<u64> = status
        .strip_suffix(" in all")
        .and_then(|s| s.split_once("; delivered "))
        .map(|(outbox, delivered)| vec![outbox.parse().unwrap(), delivered.parse().unwrap()])
        .unwrap_or_else(|| panic!("{status:?}"));
    assert_eq!(totals.iter().sum::<u64>(), 50, "{status:?}");
    sigterm(child).await;
}

/// The watchdog is fed only while every loop keeps its deadline: a sending loop that hangs (forced through the
/// debug builds' test variable) stops the `WATCHDOG=1` notifications, with an error naming the loop, while
/// fetching goes on; a healthy daemon keeps feeding it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_loop_stops_the_watchdog_being_fed() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(50);
    let app = App::new(&auth0, &rudder);
    let socket_path = app.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let log = std::fs::File::create(app.dir.path().join("run.log")).unwrap();
    let mut cmd = app.command(&["run"]);
    cmd.env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .env("AUTH0_RUDDERSTACK_TEST_WEDGE", "send");
    cmd.stdout(std::process::Stdio::from(log.try_clone().unwrap())).stderr(std::process::Stdio::from(log));
    let child = cmd.spawn().unwrap();
    let said = "a loop has overrun its deadline";
    assert!(wait_until(Duration::from_secs(30), || app.run_log().contains(said)).await, "{}", app.run_log());
    assert!(app.run_log().contains(&format!("{DOMAIN} sending")), "{}", app.run_log());
    // Drain what came before, then listen for three seconds: more than seven watchdog periods.
    let mut buf = [0u8; 4096];
    while socket.recv(&mut buf).is_ok() {}
    let mut fed = 0;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        if let Ok(n) = socket.recv(&mut buf) {
            fed += usize::from(String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1"));
        }
    }
    assert_eq!(fed, 0, "the watchdog was still fed with a wedged loop\n{}", app.run_log());
    let fetched = wait_until(Duration::from_secs(20), || {
        Store::open_existing(&app.db_path()).and_then(|s| s.outbox_depth(DOMAIN)).unwrap_or(0) == 50
    })
    .await;
    assert!(fetched, "fetching stopped too\n{}", app.run_log());
    assert_eq!(rudder.event_count(), 0);
    assert_eq!(sigterm(child).await.code(), Some(0), "{}", app.run_log());
}

/// Two consecutive syncs mint one token in all: the token is kept (sealed) in the state for the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_syncs_mint_one_token_in_all() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(20);
    let app = App::new(&auth0, &rudder);
    assert_eq!(app.sync().await.status.code(), Some(0));
    auth0.push_synthetic(20);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(rudder.event_count(), 40);
    assert_eq!(auth0.tokens_minted(), 1, "the second sync reused the kept token");
    let db = std::fs::read(app.db_path()).unwrap();
    for token in auth0.issued_tokens() {
        assert!(!db.windows(token.len()).any(|w| w == token.as_bytes()), "the token is kept in clear");
    }
}

/// With `forward_own_logs = false`, exactly the daemon's own token exchanges (`seccft` with its client_id)
/// are filtered out and counted; other applications' `seccft` entries are forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_own_logs_false_drops_exactly_the_daemons_own_token_exchanges() {
    let auth0 = FakeAuth0::start(FakeOptions {
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        log_token_mints: true,
        ..FakeOptions::realistic()
    })
    .await;
    let (_unused, rudder) = start_fakes().await;
    auth0.push_synthetic(50);
    let mut app = App::new(&auth0, &rudder);
    app.set("auth0", "forward_own_logs", false);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let all = auth0.entries();
    let own: Vec<&Value> =
        all.iter().filter(|e| e["type"] == "seccft" && e["client_id"] == CLIENT_ID).collect();
    assert_eq!(own.len(), 1, "the sync minted one token, which Auth0 logged");
    let others = all.iter().filter(|e| e["type"] == "seccft" && e["client_id"] != CLIENT_ID).count();
    assert!(others > 0, "the log also holds other applications' seccft entries");
    let delivered: HashSet<String> =
        rudder.events().iter().map(|e| e["properties"]["log_id"].as_str().unwrap().to_string()).collect();
    let expected: HashSet<String> = all
        .iter()
        .filter(|e| !(e["type"] == "seccft" && e["client_id"] == CLIENT_ID))
        .map(|e| e["log_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(delivered, expected);
    assert_eq!(app.status().await["filtered_total"], 1);
}

/// A `sync` stopped by SIGTERM before it caught up exits 143 (128 + 15), so cron can tell it from success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_stopped_by_sigterm_before_catching_up_exits_143() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(2_000);
    let mut app = App::new(&auth0, &rudder);
    app.set("auth0", "max_requests_per_second", 4.0).set("auth0", "page_size", 10);
    let log = std::fs::File::create(app.dir.path().join("run.log")).unwrap();
    let mut cmd = app.command(&["sync"]);
    cmd.stdout(std::process::Stdio::from(log.try_clone().unwrap())).stderr(std::process::Stdio::from(log));
    let child = cmd.spawn().unwrap();
    rudder.wait_for_events(20, Duration::from_secs(30)).await;
    let status = sigterm(child).await;
    assert_eq!(status.code(), Some(143), "{}", app.run_log());
    assert!(rudder.event_count() < 2_000);
    // And nothing is lost: the next sync finishes the job.
    let mut app = app;
    app.set("auth0", "max_requests_per_second", 1000.0).set("auth0", "page_size", 100);
    assert_eq!(app.sync().await.status.code(), Some(0));
    let ids: HashSet<String> =
        rudder.events().iter().map(|e| e["properties"]["log_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 2_000);
}

/// `dead-letter retry` with an id that does not exist exits 1 and names it; nothing moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_an_unknown_dead_letter_exits_1_and_names_it() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(5);
    let app = App::new(&auth0, &rudder);
    assert_eq!(app.sync().await.status.code(), Some(0));
    let out = app.run(&["dead-letter", "retry", "424242"], Duration::from_secs(20)).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("424242"), "{}", text(&out));
}

/// A second `run` refused by the lock says why and logs nothing as if it had started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_refused_by_the_lock_does_not_claim_to_have_started() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(5);
    let app = App::new(&auth0, &rudder);
    let child = app.spawn_run();
    rudder.wait_for_events(5, Duration::from_secs(20)).await;
    assert!(app.run_log().contains("started"), "{}", app.run_log());
    let out = app.run(&["run"], Duration::from_secs(20)).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("auth0-rudderstack `run` (pid") && err.contains("is using"), "{err}");
    assert!(!err.contains("started"), "{err}");
    sigterm(child).await;
}

/// `status` counts with the right plural, and a log line names a dead letter by the id `dead-letter list`
/// shows and its entry by log_id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_name_dead_letters_by_their_listed_id_with_the_right_plural() {
    let (auth0, rudder) = start_fakes().await;
    let mut entries = auth0.make_entries(10);
    entries[4].as_object_mut().unwrap().remove("type");
    auth0.push(entries.clone());
    let app = App::new(&auth0, &rudder);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let list = app.run(&["dead-letter", "list", "--json"], Duration::from_secs(20)).await;
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    let id = list[0]["id"].as_i64().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().find(|l| l.contains("dead letter")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains(&format!("dead letter {id}")), "{line}");
    assert!(line.contains(entries[4]["log_id"].as_str().unwrap()), "{line}");
    let status = app.run(&["status"], Duration::from_secs(20)).await;
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("1 dead letter:"), "{status}");
    // The final line's figures are the state's.
    let last = err.lines().rev().find(|l| l.contains("caught up")).unwrap_or_else(|| panic!("{err}"));
    assert!(last.contains("delivered_total=9") && last.contains("dead_letters=1"), "{last}");
}

/// `status` without `--json` says what `--json` says, a line per field: the state, the tenant's destination,
/// filter, privacy and polling, the cursor with its date, the outbox, the dead letters, the last fetch and
/// delivery, the totals, and each warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_as_text_says_what_status_as_json_says() {
    let (auth0, rudder) = start_fakes().await;
    let mut entries = auth0.make_entries(12);
    for e in &mut entries[..3] {
        e["type"] = serde_json::json!("fsa");
    }
    entries[7].as_object_mut().unwrap().remove("type");
    auth0.push(entries);
    let mut app = App::new(&auth0, &rudder);
    app.set("auth0", "exclude_types", vec!["fsa"]);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let json = app.status().await;
    // The state this test meant to show: something filtered, a dead letter, so a warning.
    assert_eq!(
        (json["filtered_total"].as_u64(), json["dead_letters"].as_u64()),
        (Some(3), Some(1)),
        "{json}"
    );
    assert_eq!(json["delivered_total"].as_u64(), Some(8), "{json}");

    let out = app.run(&["status"], Duration::from_secs(20)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| -> String {
        let lines: Vec<&str> = report.lines().filter(|l| l.starts_with(&format!("{name}:"))).collect();
        assert_eq!(lines.len(), 1, "one {name:?} line: {report}");
        lines[0][name.len() + 1..].trim().to_string()
    };
    let s = |key: &str| json[key].as_str().unwrap_or_else(|| panic!("{key}: {json}")).to_string();
    let n = |key: &str| json[key].as_u64().unwrap_or_else(|| panic!("{key}: {json}"));
    assert_eq!(field("state"), s("state_path"));
    assert_eq!(field("tenant"), s("tenant"));
    assert_eq!(field("destination"), format!("{} ({} mode)", s("destination"), s("mode")));
    assert_eq!(field("forwards"), s("filter"));
    assert!(field("forwards").contains("fsa"), "{report}");
    assert_eq!(field("privacy"), s("privacy"));
    assert_eq!(field("idle polling"), s("polling"));
    let cursor = field("cursor");
    assert!(cursor.starts_with(&format!("{} ({}, ", s("cursor"), s("cursor_date"))), "{cursor} / {json}");
    assert!(cursor.ends_with(" old)"), "{cursor}");
    assert_eq!(field("outbox"), format!("{} entries waiting", n("outbox_depth")));
    assert_eq!(field("dead letters"), n("dead_letters").to_string());
    assert!(field("last fetch").starts_with(&format!("{} (", s("last_fetch_at"))), "{report}");
    assert!(field("last delivery").starts_with(&format!("{} (", s("last_delivery_at"))), "{report}");
    assert_eq!(
        field("delivered"),
        format!(
            "{} events in all; {} entries fetched, {} filtered out, {} repeats skipped",
            n("delivered_total"),
            n("fetched_total"),
            n("filtered_total"),
            n("repeated_total")
        )
    );
    let warnings: Vec<String> =
        report.lines().filter_map(|l| l.strip_prefix("warning: ")).map(str::to_string).collect();
    let expected: Vec<String> =
        json["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_string()).collect();
    assert!(!expected.is_empty(), "{json}");
    assert_eq!(warnings, expected, "{report}");
}

/// The text form of `dead-letter list` has real tab-separated columns, and a reason quoting a file name with
/// a tab, a line break and an escape sequence in it stays one field of one line, its characters escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_list_prints_one_line_of_six_tab_separated_columns_per_letter() {
    let (auth0, rudder) = start_fakes().await;
    let mut entries = auth0.make_entries(3);
    entries[1].as_object_mut().unwrap().remove("log_id");
    // Nothing is asked of Auth0: the entries come from a file whose name an outsider chose.
    let app = App::with_urls("http://127.0.0.1:9", &rudder.url());
    let file = app.dir.path().join("x\tforged\ncolumn\x1b[31m.ndjson");
    let lines: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let mut cmd = app.command(&["import"]);
    cmd.arg(&file);
    let out = run_bounded(cmd, Duration::from_secs(60)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let list = app.run(&["dead-letter", "list"], Duration::from_secs(20)).await;
    assert_eq!(list.status.code(), Some(0), "{}", text(&list));
    assert!(!list.stdout.contains(&0x1b), "an escape character reached the terminal: {}", text(&list));
    let stdout = String::from_utf8(list.stdout).unwrap();
    let rows: Vec<Vec<&str>> = stdout.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 2, "a header and one letter:\n{stdout}");
    assert_eq!(rows[0], ["id", "tenant", "created_at", "log_id", "kept", "reason"]);
    let row = &rows[1];
    assert_eq!(row.len(), 6, "{row:?}");
    assert!(row[0].parse::<i64>().is_ok(), "{row:?}");
    assert_eq!((row[1], row[3], row[4]), (DOMAIN, "-", "whole"), "{row:?}");
    assert!(row[5].contains(r"x\tforged\ncolumn\x1b[31m.ndjson"), "the file name, escaped: {row:?}");
}

/// The socket inodes a process holds (`/proc/PID/fd` links `socket:[INODE]`).
fn socket_inodes(pid: u32) -> HashSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().to_string();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect()
}

/// The TCP sockets of `/proc/PID/net/tcp` and `tcp6` as (inode, state, local address), state in hex as
/// the kernel writes it (`0A` is LISTEN, `01` ESTABLISHED).
fn tcp_sockets(pid: u32) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 {
                out.push((f[9].to_string(), f[3].to_string(), f[1].to_string()));
            }
        }
    }
    out
}

/// `run` opens no port: while it polls and delivers (textfile metrics on), none of its TCP sockets is in
/// the LISTEN state, while its connections to the fakes are there to be seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_opens_no_port() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(30);
    let mut app = App::new(&auth0, &rudder);
    let textfile = app.dir.path().join("metrics.prom");
    app.set("metrics", "textfile", textfile.display().to_string()).set("metrics", "interval", "1s");
    let child = app.spawn_run();
    let pid = child.id().unwrap();
    rudder.wait_for_events(30, Duration::from_secs(20)).await;
    assert!(wait_until(Duration::from_secs(10), || textfile.exists()).await, "{}", app.run_log());
    let mut seen_connected = false;
    for _ in 0..10 {
        let mine = socket_inodes(pid);
        for (inode, state, local) in tcp_sockets(pid).into_iter().filter(|(i, _, _)| mine.contains(i)) {
            assert_ne!(state, "0A", "the daemon listens on {local} (inode {inode}):\n{}", app.run_log());
            seen_connected |= state == "01";
        }
        auth0.push_synthetic(1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(seen_connected, "none of the daemon's sockets was found in /proc/{pid}/net/tcp*");
    assert_eq!(sigterm(child).await.code(), Some(0), "{}", app.run_log());
}

/// The value of `name` with exactly these labels (tenant included) in a Prometheus text exposition.
fn sample_with(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let inner = series.strip_prefix(name)?.strip_prefix('{')?.strip_suffix('}')?;
        let mut have: Vec<String> = inner.split(',').map(str::to_string).collect();
        let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        have.sort();
        want.sort();
        (have == want).then(|| value.parse().ok())?
    })
}

/// `run`'s own counters move: a 429 and a 503 from Auth0 and a 503 from RudderStack show in
/// `_rate_limited_total`, `_retries_total{loop="fetch"}` and `{loop="send"}`, and in
/// `_requests_total{endpoint,class}` beside the successful token, logs and batch requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_request_rate_limit_and_retry_counters_move() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(20);
    let logs = Arc::new(AtomicUsize::new(0));
    let counted = logs.clone();
    auth0.set_hook(move |req, _| {
        if !req.path.starts_with("/api/v2/logs") {
            return None;
        }
        match counted.fetch_add(1, Ordering::SeqCst) {
            0 => Some(
                crate::support::http::Reply::json(
                    429,
                    &serde_json::json!({"statusCode": 429, "error": "Too Many Requests", "message": "Global limit has been reached"}),
                )
                .header("retry-after", "1"),
            ),
            1 => Some(crate::support::http::Reply::json(503, &serde_json::json!({"statusCode": 503}))),
            _ => None,
        }
    });
    let batches = Arc::new(AtomicUsize::new(0));
    let counted = batches.clone();
    rudder.hook(move |_, _| {
        (counted.fetch_add(1, Ordering::SeqCst) == 0)
            .then(|| crate::support::http::Reply::text(503, "busy\n"))
    });
    let mut app = App::new(&auth0, &rudder);
    let file = app.dir.path().join("metrics.prom");
    app.set("metrics", "textfile", file.display().to_string()).set("metrics", "interval", "1s");
    let child = app.spawn_run();
    rudder.wait_for_events(20, Duration::from_secs(30)).await;
    let t = DOMAIN;
    let want: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("auth0_rudderstack_rate_limited_total", vec![("tenant", t)]),
        ("auth0_rudderstack_retries_total", vec![("tenant", t), ("loop", "fetch")]),
        ("auth0_rudderstack_retries_total", vec![("tenant", t), ("loop", "send")]),
        ("auth0_rudderstack_requests_total", vec![("tenant", t), ("endpoint", "logs"), ("class", "4xx")]),
        ("auth0_rudderstack_requests_total", vec![("tenant", t), ("endpoint", "logs"), ("class", "5xx")]),
        ("auth0_rudderstack_requests_total", vec![("tenant", t), ("endpoint", "logs"), ("class", "2xx")]),
        ("auth0_rudderstack_requests_total", vec![("tenant", t), ("endpoint", "token"), ("class", "2xx")]),
        ("auth0_rudderstack_requests_total", vec![("tenant", t), ("endpoint", "batch"), ("class", "5xx")]),
        ("auth0_rudderstack_requests_total", vec![("tenant", t), ("endpoint", "batch"), ("class", "2xx")]),
    ];
    let all_moved = |text: &str| want.iter().all(|(n, l)| sample_with(text, n, l).is_some_and(|v| v >= 1.0));
    let moved = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&file).is_ok_and(|text| all_moved(&text))
    })
    .await;
    let text_now = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        moved,
        "{:?}\n{text_now}",
        want.iter().filter(|(n, l)| sample_with(&text_now, n, l).is_none_or(|v| v < 1.0)).collect::<Vec<_>>()
    );
    assert_eq!(sample_with(&text_now, "auth0_rudderstack_rate_limited_total", &[("tenant", t)]), Some(1.0));
    assert_eq!(sigterm(child).await.code(), Some(0), "{}", app.run_log());
}

/// With a trickle of new entries every poll catches up again; "caught up" is logged once after start and at
/// once after a real catch-up (a full page), not at every poll, so a busy tenant does not flood the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caught_up_is_logged_after_a_catch_up_not_at_every_poll() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(150);
    let app = App::new(&auth0, &rudder);
    let child = app.spawn_run();
    rudder.wait_for_events(150, Duration::from_secs(30)).await;
    let lines = |log: &str| log.lines().filter(|l| l.contains("caught up with Auth0")).count();
    assert!(wait_until(Duration::from_secs(10), || lines(&app.run_log()) == 1).await, "{}", app.run_log());
    // A trickle: one entry at a time, each fetched by its own poll (200 ms apart).
    for i in 1..=8 {
        auth0.push_synthetic(1);
        rudder.wait_for_events(150 + i, Duration::from_secs(10)).await;
    }
    assert_eq!(lines(&app.run_log()), 1, "a line per poll:\n{}", app.run_log());
    // Falling behind (a full page) and catching up again is told at once.
    auth0.push_synthetic(250);
    rudder.wait_for_events(408, Duration::from_secs(30)).await;
    assert!(wait_until(Duration::from_secs(10), || lines(&app.run_log()) == 2).await, "{}", app.run_log());
    sigterm(child).await;
}
