//! Hostile upstreams and a hostile machine, driven through the real binary: bodies that never end or inflate
//! to gigabytes, absurd waits and lifetimes, ids built to break the cursor, plain HTTP and private CAs, state
//! files in odd places, a full disk, forged log lines, and the exit codes an operator scripts against.
//!
//! The memory figures are the daemon's own peak resident set (`VmHWM` of the child), read while it runs.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::app::{
    App, CLIENT_ID, CLIENT_SECRET, MAX_PEAK_RSS_KIB, WRITE_KEY, bin, peak_rss_kib, peak_rss_kib_if_alive,
    run_bounded, sigterm_within, text, wait_until,
};
use crate::support::fake_auth0::{FakeAuth0, FakeOptions};
use crate::support::fake_rudderstack::{self, Answers, FakeRudderStack};
use crate::support::http::{EndReason, Hostile, Reply, Request, Server, Tls};
use crate::support::start_fakes;

/// How soon after SIGTERM the daemon must have exited.
const MAX_STOP: Duration = Duration::from_secs(7);
/// A generous bound for conditions that take well under a second on an idle machine.
const PATIENCE: Duration = Duration::from_secs(60);

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Streamed replies of `server` that ended because the client hung up.
fn client_gone(server: &Server) -> usize {
    server.stream_ends().iter().filter(|e| e.why == EndReason::ClientGone).count()
}

/// Every streamed reply of `server` ended because the client hung up, none because the fake gave up on a
/// client that kept reading (or kept the connection open without reading).
fn assert_client_always_hung_up(case: &str, server: &Server) {
    let ends = server.stream_ends();
    assert!(ends.iter().all(|e| e.why == EndReason::ClientGone), "{case}: {ends:?}");
}

/// Run `run` until `ready` holds and its log says `said`, then check that it is still up, that its peak memory
/// stayed within [`MAX_PEAK_RSS_KIB`], that it never panicked, and that SIGTERM ends it with 0 within
/// [`MAX_STOP`]. Prints the figures and returns the daemon's log.
async fn hold_out(case: &str, app: &App, said: &str, mut ready: impl FnMut() -> bool) -> String {
    let mut child = app.spawn_run();
    let pid = child.id().expect("run started");
    let reached = wait_until(PATIENCE, || ready() && app.run_log().contains(said)).await;
    assert!(reached, "{case}: the condition or {said:?} never came:\n{}", app.run_log());
    assert!(child.try_wait().unwrap().is_none(), "{case}: run exited:\n{}", app.run_log());
    let peak_kib = peak_rss_kib(pid);
    let (status, stopped_after) = sigterm_within(child, Duration::from_secs(30)).await;
    let log = app.run_log();
    eprintln!(
        "{case}: peak RSS {:.1} MiB, exited {:?} {:.2} s after SIGTERM",
        peak_kib as f64 / 1024.0,
        status.code(),
        stopped_after.as_secs_f64()
    );
    assert!(!log.contains("panicked") && !log.contains("internal error (a bug)"), "{case}:\n{log}");
    assert_eq!(status.code(), Some(0), "{case}:\n{log}");
    assert!(stopped_after <= MAX_STOP, "{case}: took {stopped_after:?} to stop after SIGTERM:\n{log}");
    assert!(peak_kib <= MAX_PEAK_RSS_KIB, "{case}: peak RSS {peak_kib} KiB:\n{log}");
    log
}

/// A gzip body inflating to 16 GiB of JSON whitespace after `prefix`.
fn bomb(prefix: &str) -> Hostile {
    Hostile::GzipBomb { prefix: prefix.as_bytes().to_vec(), fill: b' ', inflated: 16 << 30 }
}

/// A body that never ends: `prefix`, then `chunk` over and over.
fn endless(prefix: &str, chunk: &str) -> Hostile {
    Hostile::Endless { prefix: prefix.as_bytes().to_vec(), chunk: chunk.as_bytes().to_vec() }
}

async fn auth0_with(options: FakeOptions) -> FakeAuth0 {
    FakeAuth0::start(FakeOptions {
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        ..options
    })
    .await
}

/// `/oauth/token` answers with `body` every time: `run` keeps retrying, each answer is cut at its limit.
async fn token_endpoint_sends(case: &str, body: Hostile) {
    let auth0 = auth0_with(FakeOptions { hostile_token: Some(body), ..FakeOptions::realistic() }).await;
    let (_unused, rudder) = start_fakes().await;
    auth0.push_synthetic(10);
    let app = App::new(&auth0, &rudder);
    let server = auth0.server();
    let log = hold_out(case, &app, "larger than the 65536-byte limit", || client_gone(server) >= 3).await;
    assert!(log.contains("/oauth/token"), "{log}");
    assert_client_always_hung_up(case, server);
    assert_eq!(rudder.event_count(), 0, "nothing can be read without a token");
}

/// `/api/v2/logs` answers every 200 with `body`: each page is cut at `auth0.max_page_bytes`.
async fn logs_endpoint_sends(case: &str, body: Hostile) {
    let auth0 = auth0_with(FakeOptions { hostile_logs: Some(body), ..FakeOptions::realistic() }).await;
    let (_unused, rudder) = start_fakes().await;
    auth0.push_synthetic(10);
    let app = App::new(&auth0, &rudder);
    let server = auth0.server();
    let log = hold_out(case, &app, "larger than auth0.max_page_bytes", || client_gone(server) >= 3).await;
    assert!(log.contains("will retry"), "{log}");
    assert_client_always_hung_up(case, server);
    assert_eq!(rudder.event_count(), 0);
}

/// `/v1/batch` answers every request with `body` after storing the events: delivery goes on, each answer is
/// cut at its limit.
async fn batch_endpoint_sends(case: &str, body: Hostile) {
    let (auth0, rudder) = start_fakes().await;
    rudder.set_hostile_body(Some((body, Answers::All)));
    auth0.push_synthetic(200);
    let mut app = App::new(&auth0, &rudder);
    app.set("rudderstack", "max_batch_events", 20);
    let server = rudder.server();
    let log = hold_out(case, &app, "larger than the 65536-byte limit", || {
        rudder.event_count() >= 200 && client_gone(server) >= 3
    })
    .await;
    assert!(log.contains("/v1/batch"), "{log}");
    assert_client_always_hung_up(case, server);
    assert_eq!(rudder.event_count(), 200, "a 2xx is stored whatever its body: nothing is sent twice");
}

/// A gzip bomb from `/oauth/token`: `run` stays up within 64 MB, says the answer is over its limit, hangs up
/// on the bomb, and stops on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_from_the_token_endpoint_is_cut_off_and_survived() {
    token_endpoint_sends("token gzip bomb", bomb(r#"{"access_token":""#)).await;
}

/// An endless body from `/oauth/token`: `run` stays up within 64 MB, says the answer is over its limit, hangs
/// up on it, and stops on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_body_from_the_token_endpoint_is_cut_off_and_survived() {
    token_endpoint_sends("token endless", endless(r#"{"access_token":""#, "aaaaaaaaaaaaaaaa")).await;
}

/// A gzip bomb from `/api/v2/logs`: `run` stays up within 64 MB, says the page is over
/// `auth0.max_page_bytes`, hangs up on the bomb, and stops on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_from_the_logs_endpoint_is_cut_off_and_survived() {
    logs_endpoint_sends("logs gzip bomb", bomb("[")).await;
}

/// An endless body from `/api/v2/logs`: `run` stays up within 64 MB, says the page is over
/// `auth0.max_page_bytes`, hangs up on it, and stops on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_body_from_the_logs_endpoint_is_cut_off_and_survived() {
    logs_endpoint_sends("logs endless", endless("[", r#"{"log_id":"1","type":"s"},"#)).await;
}

/// A gzip bomb in every answer of `/v1/batch`: `run` delivers everything, stays within 64 MB, says the answer
/// is over its limit, hangs up on the bomb, and stops on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_from_the_batch_endpoint_is_cut_off_and_survived() {
    batch_endpoint_sends("batch gzip bomb", bomb("ok")).await;
}

/// An endless body in every answer of `/v1/batch`: `run` delivers everything, stays within 64 MB, says the
/// answer is over its limit, hangs up on it, and stops on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_body_from_the_batch_endpoint_is_cut_off_and_survived() {
    batch_endpoint_sends("batch endless", endless("ok", "okokokokokokokok")).await;
}

/// The number of `/api/v2/logs` requests the fake has seen.
fn logs_requests(auth0: &FakeAuth0) -> usize {
    auth0.log_requests().len()
}

/// Whether the first `/api/v2/logs` request is at least `age` old: the window in which a daemon that ignored
/// a hold would have asked again (it polls every 200 ms).
fn first_logs_request_older_than(auth0: &FakeAuth0, age: Duration) -> bool {
    auth0.log_requests().first().is_some_and(|r| r.at.elapsed() >= age)
}

/// A 429 with `Retry-After: 1e20` from `/api/v2/logs`: the wait is capped and said so, no overflow, no
/// hammering while it lasts, and SIGTERM still ends the wait at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_of_1e20_is_capped_and_sigterm_still_ends_the_wait() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(10);
    auth0.set_hook(|req: &Request, _| {
        (req.path == "/api/v2/logs").then(|| {
            Reply::json(429, &json!({"statusCode":429,"error":"Too Many Requests","message":"Global limit has been reached"}))
                .header("retry-after", "1e20")
        })
    });
    let app = App::new(&auth0, &rudder);
    let log = hold_out("Retry-After 1e20", &app, "waiting 5m instead", || {
        first_logs_request_older_than(&auth0, Duration::from_millis(1500))
    })
    .await;
    assert!(log.contains("Retry-After"), "{log}");
    assert_eq!(logs_requests(&auth0), 1, "asked again during a capped wait of five minutes");
}

/// A 503 with `Retry-After: 1e20` from RudderStack: the wait is capped at an hour and said so, no request is
/// made while it lasts, and SIGTERM still ends the wait at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rudderstack_retry_after_of_1e20_is_capped_at_an_hour() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(10);
    rudder.hook(|req: &Request, _| {
        (req.path == "/v1/batch")
            .then(|| Reply::text(503, "Service Unavailable").header("retry-after", "1e20"))
    });
    let app = App::new(&auth0, &rudder);
    let log = hold_out("RudderStack Retry-After 1e20", &app, "waiting 1h instead", || {
        rudder.requests().iter().any(|r| r.path == "/v1/batch")
    })
    .await;
    assert!(log.contains("Retry-After"), "{log}");
    let posts = rudder.requests().iter().filter(|r| r.path == "/v1/batch").count();
    assert_eq!(posts, 1, "posted again during a capped wait of an hour");
}

/// `x-ratelimit-remaining: 0` with `x-ratelimit-reset: 1e20`: the hold is capped and said so, no request is
/// made while it lasts, and SIGTERM still ends the wait at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_reset_of_1e20_is_capped_and_sigterm_still_ends_the_wait() {
    let (auth0, rudder) = start_fakes().await;
    auth0.set_hook(|req: &Request, _| {
        (req.path == "/api/v2/logs").then(|| {
            Reply::json(200, &json!([]))
                .header("x-ratelimit-limit", "100")
                .header("x-ratelimit-remaining", "0")
                .header("x-ratelimit-reset", "1e20")
        })
    });
    let app = App::new(&auth0, &rudder);
    let log = hold_out("x-ratelimit-reset 1e20", &app, "waiting 1m instead", || {
        first_logs_request_older_than(&auth0, Duration::from_millis(1500))
    })
    .await;
    assert!(log.contains("x-ratelimit-reset"), "{log}");
    // The empty answer means "caught up": the next poll is due after 200 ms but must wait for the hold.
    assert_eq!(logs_requests(&auth0), 1, "asked again during a held minute");
}

/// `expires_in` = u64::MAX: the lifetime is clamped and said so, no arithmetic overflows, one token serves
/// the whole run, and everything is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expires_in_of_u64_max_is_clamped_and_one_token_serves_the_run() {
    let auth0 =
        auth0_with(FakeOptions { expires_in_raw: Some(u64::MAX.to_string()), ..FakeOptions::realistic() })
            .await;
    let (_unused, rudder) = start_fakes().await;
    auth0.push_synthetic(50);
    let app = App::new(&auth0, &rudder);
    hold_out("expires_in u64::MAX", &app, "taking it as 30 days", || rudder.event_count() >= 50).await;
    assert_eq!(auth0.tokens_minted(), 1);
    assert_eq!(rudder.event_count(), 50);
}

fn id_of(entry: &Value) -> String {
    entry["log_id"].as_str().expect("a string log_id").to_string()
}

/// How many times each `log_id` reached RudderStack.
fn deliveries(rudder: &FakeRudderStack) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for e in rudder.events() {
        *n.entry(e["properties"]["log_id"].as_str().unwrap_or_default().to_string()).or_default() += 1;
    }
    n
}

/// Every `from` the daemon sent to `/api/v2/logs`.
fn froms(auth0: &FakeAuth0) -> Vec<String> {
    auth0.log_requests().iter().filter_map(|r| r.query("from").map(str::to_string)).collect()
}

/// A page holding a megabyte-long `log_id`, a backwards `log_id` and a repeated one, then a page that repeats
/// the cursor: the cursor ends at the greatest valid id, no `from` over 128 characters is ever sent, the bad id
/// is one dead letter, and every valid entry is delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_a_backwards_and_a_repeated_log_id_leave_the_cursor_at_the_greatest_valid_id() {
    let (auth0, rudder) = start_fakes().await;
    let e = auth0.push_synthetic(8);
    // The bootstrap forwards e0; the page after it is the hostile one. The huge id is all nines, so it would be
    // the greatest of all if it were trusted.
    let mut huge = e[5].clone();
    huge["log_id"] = json!("9".repeat(1 << 20));
    let page = json!([e[1], e[2], huge, e[4], e[3], e[4]]);
    let after = id_of(&e[0]);
    auth0.set_hook(move |req: &Request, _| {
        (req.path == "/api/v2/logs" && req.query("from") == Some(after.as_str()))
            .then(|| Reply::json(200, &page))
    });
    let app = App::new(&auth0, &rudder);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = app.status().await;
    assert_eq!(s["cursor"], json!(id_of(&e[4])), "{s}");
    assert_eq!(s["dead_letters"], 1, "{s}");

    // The next page starts with the cursor's own entry again, as some Auth0 answers do.
    auth0.clear_hook();
    auth0.update(|o| o.below_cursor = 1);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = app.status().await;
    assert_eq!(s["cursor"], json!(id_of(&e[7])), "{s}");
    assert_eq!(s["dead_letters"], 1, "{s}");
    assert!(s["repeated_total"].as_u64().unwrap() >= 2, "{s}");

    let sent = froms(&auth0);
    assert!(!sent.is_empty());
    assert!(
        sent.iter().all(|f| f.len() <= 128),
        "a from of {} characters",
        sent.iter().map(String::len).max().unwrap()
    );
    let expected: BTreeMap<String, usize> = e.iter().map(|x| (id_of(x), 1)).collect();
    assert_eq!(deliveries(&rudder), expected, "each valid entry exactly once");
}

/// The dead letters of the state, by a direct count.
fn dead_letter_count(app: &App) -> i64 {
    let db = rusqlite::Connection::open(app.db_path()).expect("open the state");
    db.query_row("SELECT count(*) FROM dead_letter", [], |r| r.get(0)).expect("count dead letters")
}

/// A page after the cursor whose every element is unreadable (not UTF-8) but for its `log_id`: each is set
/// aside as a dead letter under its `log_id`, and the cursor moves past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_only_unreadable_entries_is_set_aside_and_the_cursor_moves_past_it() {
    let (auth0, rudder) = start_fakes().await;
    let e = auth0.push_synthetic(3);
    let after = id_of(&e[0]);
    let mut body = b"[".to_vec();
    for (i, x) in e[1..].iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        // A byte that is never UTF-8, at the start of the entry's type.
        let text = serde_json::to_string(x).unwrap();
        let (head, tail) = text.split_once("\"type\":\"").expect("every entry has a type");
        body.extend(head.bytes().chain(*b"\"type\":\"\xff").chain(tail.bytes()));
    }
    body.push(b']');
    let page = body;
    auth0.set_hook(move |req: &Request, _| {
        (req.path == "/api/v2/logs" && req.query("from") == Some(after.as_str()))
            .then(|| Reply::new(200, page.clone()).header("content-type", "application/json"))
    });
    let app = App::new(&auth0, &rudder);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(dead_letter_count(&app), 2, "one dead letter per unreadable entry: {}", text(&out));
    assert!(stderr(&out).contains("not valid UTF-8"), "{}", text(&out));
    assert_eq!(rudder.event_count(), 1, "only the readable entry before them is delivered");
    let s = app.status().await;
    assert_eq!(s["cursor"], e[2]["log_id"], "the cursor moves past them: {s}");
}

/// A full page of entries without a `log_id`, served again and again: each is set aside once however often
/// it comes; `sync` exits 1 saying fetching cannot advance, and `run` shows the stall in `status` and backs
/// off instead of looping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_without_log_ids_is_set_aside_once_and_stalls_with_a_backoff() {
    let (auth0, rudder) = start_fakes().await;
    let e = auth0.push_synthetic(3);
    let nameless: Vec<Value> = e[1..]
        .iter()
        .map(|x| {
            let mut x = x.clone();
            x.as_object_mut().unwrap().remove("log_id");
            x
        })
        .collect();
    let after = id_of(&e[0]);
    auth0.set_hook(move |req: &Request, _| {
        (req.path == "/api/v2/logs" && req.query("from") == Some(after.as_str()))
            .then(|| Reply::json(200, &Value::Array(nameless.clone())))
    });
    let mut app = App::new(&auth0, &rudder);
    app.set("auth0", "page_size", 2);
    app.set("retry", "initial_backoff", "100ms").set("retry", "max_backoff", "2s");

    for round in 1..=2 {
        let out = app.sync().await;
        assert_eq!(out.status.code(), Some(1), "sync {round}: {}", text(&out));
        assert!(stderr(&out).contains("cannot move past it"), "sync {round}: {}", text(&out));
        assert_eq!(dead_letter_count(&app), 2, "sync {round}: one dead letter per entry");
    }
    assert_eq!(rudder.event_count(), 1, "the entry before the stall is delivered");

    let stalled = || froms(&auth0).iter().filter(|f| **f == id_of(&e[0])).count();
    let before = stalled();
    let child = app.spawn_run();
    assert!(
        wait_until(PATIENCE, || stalled() >= before + 6).await,
        "run did not retry the stalled page:\n{}",
        app.run_log()
    );
    let s = app.status().await;
    assert!(s["stall"].as_str().is_some_and(|w| w.contains("cannot move past it")), "{s}");
    assert!(s["warnings"].to_string().contains("fetching cannot advance"), "{s}");
    assert_eq!(dead_letter_count(&app), 2, "run must not add a dead letter per attempt");
    let (status, _) = sigterm_within(child, Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", app.run_log());
    assert!(app.run_log().contains("will retry"), "{}", app.run_log());

    // Back-off: the waits between attempts of `run` grow (100 ms doubling up to 2 s; jitter adds at most as much
    // again), so the fifth is at least 1.6 s while the first is at most 0.2 s plus scheduling.
    let times: Vec<Instant> = auth0
        .log_requests()
        .iter()
        .filter(|r| r.query("from") == Some(id_of(&e[0]).as_str()))
        .map(|r| r.at)
        .skip(before)
        .collect();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 5, "{gaps:?}");
    assert!(gaps[0] >= Duration::from_millis(90), "no back-off at all: {gaps:?}");
    assert!(gaps[4] > gaps[0] * 2, "the waits do not grow: {gaps:?}");
}

/// A proxy that only counts: every HTTP client the daemon builds would send its requests here.
async fn counting_proxy() -> (Server, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = seen.clone();
    let server = Server::start(std::sync::Arc::new(move |_: &Request| {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Reply::text(502, "no traffic expected")
    }))
    .await;
    (server, seen)
}

/// `status` with every proxy variable pointing at `proxy`, so that any request would be counted there.
async fn status_through(app: &App, proxy: &Server) -> Output {
    let mut cmd = app.command(&["status"]);
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        cmd.env(var, proxy.url());
    }
    cmd.env_remove("NO_PROXY").env_remove("no_proxy");
    run_bounded(cmd, Duration::from_secs(20)).await
}

/// Plain `http://` to a remote host exits 2 naming the key, in `[auth0]` and in `[rudderstack]`, and
/// `allow_insecure_http = true` in that section lets it through; all without a single request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_a_remote_host_exits_2_unless_allowed_without_any_traffic() {
    let (proxy, requests) = counting_proxy().await;
    for (section, key, mut app) in [
        ("auth0", "base_url", App::with_urls("http://plain.example.com", "http://127.0.0.1:9")),
        ("rudderstack", "data_plane_url", App::with_urls("http://127.0.0.1:9", "http://plain.example.com")),
    ] {
        let out = status_through(&app, &proxy).await;
        assert_eq!(out.status.code(), Some(2), "{section}: {}", text(&out));
        let err = stderr(&out);
        assert!(err.contains(&format!("{section}.{key}")), "{section}: {err}");
        assert!(err.contains(&format!("{section}.allow_insecure_http")), "{section}: {err}");
        assert!(err.contains("plain.example.com"), "{section}: {err}");

        app.set(section, "allow_insecure_http", true);
        let out = status_through(&app, &proxy).await;
        assert_eq!(out.status.code(), Some(0), "{section}: {}", text(&out));
    }
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 0, "status made a request");
}

/// A loopback HTTPS fake signed by a private CA is refused without `tls_ca_file`, by `check` and by `sync`,
/// with a message naming the certificate and the section's `tls_ca_file`; with it, `sync` delivers. Both for
/// `[auth0]` and for `[rudderstack]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_is_refused_without_tls_ca_file_and_trusted_with_it() {
    let tls = crate::support::http::generate_tls();
    for section in ["auth0", "rudderstack"] {
        let auth0_options = FakeOptions {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            ..FakeOptions::realistic()
        };
        let rudder_options = fake_rudderstack::Options {
            write_keys: vec![WRITE_KEY.into()],
            ..fake_rudderstack::Options::default()
        };
        let (auth0, rudder) = if section == "auth0" {
            (FakeAuth0::start_tls(auth0_options, &tls).await, FakeRudderStack::start(rudder_options).await)
        } else {
            (FakeAuth0::start(auth0_options).await, FakeRudderStack::start_tls(rudder_options, &tls).await)
        };
        auth0.push_synthetic(20);
        let mut app = App::new(&auth0, &rudder);
        app.set("retry", "sync_give_up_after", "1s");
        let server = if section == "auth0" { auth0.server() } else { rudder.server() };

        let out = app.run(&["check"], Duration::from_secs(30)).await;
        assert_eq!(out.status.code(), Some(1), "{section}: {}", text(&out));
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        let failed: Vec<&str> = report.lines().filter(|l| l.starts_with("FAILED")).collect();
        assert!(!failed.is_empty(), "{section}: {report}");
        // The hint names the key to set, in the section whose server was refused.
        let key = format!("{section}.tls_ca_file");
        for line in &failed {
            assert!(line.contains("certificate") && line.contains(&key), "{section}: {line}");
        }

        let out = app.sync().await;
        assert_eq!(out.status.code(), Some(1), "{section}: {}", text(&out));
        let err = stderr(&out);
        assert!(err.contains("certificate") && err.contains(&key), "{section}: {err}");
        assert!(server.failed_handshakes() > 0, "{section}: the client should have refused the certificate");
        assert_eq!(rudder.event_count(), 0);

        let ca = app.dir.path().join("private-ca.pem");
        tls.write_ca(&ca).unwrap();
        app.set(section, "tls_ca_file", ca.display().to_string());
        let out = app.sync().await;
        assert_eq!(out.status.code(), Some(0), "{section}: {}", text(&out));
        assert_eq!(rudder.event_count(), 20, "{section}");
    }
}

/// A section's `tls_ca_file` is trusted by that section only: with both services behind the same private CA,
/// `check` passes the side whose section names the CA and refuses the other on its certificate, naming the
/// other section's key, and `sync` (whose sections share clients by CA) delivers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_ca_file_is_trusted_by_its_own_section_only() {
    let tls = crate::support::http::generate_tls();
    let (auth0, rudder) = tls_fakes(&tls).await;
    auth0.push_synthetic(5);
    for (trusting, refused) in [("auth0", "rudderstack"), ("rudderstack", "auth0")] {
        let mut app = App::new(&auth0, &rudder);
        app.set("retry", "sync_give_up_after", "1s");
        let ca = app.dir.path().join("private-ca.pem");
        tls.write_ca(&ca).unwrap();
        app.set(trusting, "tls_ca_file", ca.display().to_string());
        let out = app.run(&["check"], Duration::from_secs(30)).await;
        assert_eq!(out.status.code(), Some(1), "{trusting}: {}", text(&out));
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        let ok = |what: &str| report.lines().any(|l| l.starts_with("ok") && l.contains(&format!("{what}:")));
        let failed = |what: &str| {
            report.lines().any(|l| {
                l.starts_with("FAILED")
                    && l.contains(&format!("{what}:"))
                    && l.contains("certificate")
                    && l.contains(&format!("{refused}.tls_ca_file"))
            })
        };
        if trusting == "auth0" {
            assert!(ok("auth0 token") && ok("auth0 logs") && failed("rudderstack"), "{report}");
        } else {
            assert!(ok("rudderstack") && failed("auth0 token"), "{report}");
        }

        let out = app.sync().await;
        assert_eq!(out.status.code(), Some(1), "{trusting}: {}", text(&out));
        let err = stderr(&out);
        assert!(
            err.contains("certificate") && err.contains(&format!("{refused}.tls_ca_file")),
            "{trusting}: {err}"
        );
        assert_eq!(rudder.event_count(), 0, "{trusting}");
    }
}

/// HTTPS fakes for both services, signed by a private CA, with the test credentials.
async fn tls_fakes(tls: &Tls) -> (FakeAuth0, FakeRudderStack) {
    let auth0_options = FakeOptions {
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        ..FakeOptions::realistic()
    };
    let rudder_options = fake_rudderstack::Options {
        write_keys: vec![WRITE_KEY.into()],
        ..fake_rudderstack::Options::default()
    };
    (FakeAuth0::start_tls(auth0_options, tls).await, FakeRudderStack::start_tls(rudder_options, tls).await)
}

/// The operating system's trust store is honoured: a private CA named by `SSL_CERT_FILE` (which the system
/// store loader reads, as it reads `/etc/ssl/certs`) is trusted without `tls_ca_file`, and without it the
/// same `sync` is refused on the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_in_ssl_cert_file_is_trusted_like_the_systems_own() {
    let tls = crate::support::http::generate_tls();
    let (auth0, rudder) = tls_fakes(&tls).await;
    auth0.push_synthetic(20);
    let mut app = App::new(&auth0, &rudder);
    app.set("retry", "sync_give_up_after", "1s");
    let ca = app.dir.path().join("system-ca.pem");
    tls.write_ca(&ca).unwrap();

    let mut refused = app.command(&["sync"]);
    refused.env_remove("SSL_CERT_FILE").env_remove("SSL_CERT_DIR");
    let out = run_bounded(refused, PATIENCE).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("certificate"), "{}", text(&out));
    assert_eq!(rudder.event_count(), 0);

    let mut trusted = app.command(&["sync"]);
    trusted.env("SSL_CERT_FILE", &ca).env_remove("SSL_CERT_DIR");
    let out = run_bounded(trusted, PATIENCE).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(rudder.event_count(), 20);
}

/// A CONNECT proxy on loopback that sends each tunnel for port `from` to 127.0.0.1:`to`, and counts them.
async fn connect_proxy(routes: Vec<(u16, u16)>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let tunnels = std::sync::Arc::new(AtomicUsize::new(0));
    let count = tunnels.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else { return };
            let (routes, count) = (routes.clone(), count.clone());
            tokio::spawn(async move {
                // The request head, bounded: a CONNECT line and a few headers.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let target = head.strip_prefix("CONNECT ").and_then(|r| r.split_whitespace().next());
                let port = target.and_then(|t| t.rsplit_once(':')).and_then(|(_, p)| p.parse::<u16>().ok());
                let Some(to) = routes.iter().find(|(from, _)| Some(*from) == port).map(|(_, to)| *to) else {
                    let _ = client.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n").await;
                    return;
                };
                let Ok(mut upstream) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                if client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    (url, tunnels)
}

/// `HTTPS_PROXY` is used: with both services named at ports where nothing listens, only a proxy that tunnels
/// to the real fakes can make `sync` deliver, and every tunnel is counted there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_carries_every_request() {
    let tls = crate::support::http::generate_tls();
    let (auth0, rudder) = tls_fakes(&tls).await;
    auth0.push_synthetic(20);
    let port = |url: &str| url.rsplit_once(':').unwrap().1.trim_end_matches('/').parse::<u16>().unwrap();
    // Ports 1 and 2: nothing listens there, so a request that bypassed the proxy would be refused.
    let (proxy, tunnels) = connect_proxy(vec![(1, port(&auth0.url())), (2, port(&rudder.url()))]).await;
    let mut app = App::new(&auth0, &rudder);
    let ca = app.dir.path().join("private-ca.pem");
    tls.write_ca(&ca).unwrap();
    app.set("auth0", "base_url", "https://localhost:1")
        .set("auth0", "tls_ca_file", ca.display().to_string())
        .set("rudderstack", "data_plane_url", "https://localhost:2")
        .set("rudderstack", "tls_ca_file", ca.display().to_string())
        .set("retry", "sync_give_up_after", "2s");

    let mut direct = app.command(&["sync"]);
    for var in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
        direct.env_remove(var);
    }
    let out = run_bounded(direct, PATIENCE).await;
    assert_eq!(out.status.code(), Some(1), "without the proxy nothing can be reached: {}", text(&out));

    let mut proxied = app.command(&["sync"]);
    proxied.env("HTTPS_PROXY", &proxy).env_remove("NO_PROXY").env_remove("no_proxy");
    let out = run_bounded(proxied, PATIENCE).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(rudder.event_count(), 20);
    assert!(tunnels.load(std::sync::atomic::Ordering::SeqCst) >= 2, "both services went through the proxy");
}

/// The permission bits of a file or directory.
fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Under umask 022, the state file, its `-wal`, `-shm` and `.lock` are 0600, and each directory the daemon
/// creates for it is 0700; the metrics textfile follows the umask (0644), so that node_exporter, another
/// user, can read it, as the README's drop-in with `UMask=0022` promises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_umask_022_the_state_files_are_0600_new_directories_0700_and_the_metrics_textfile_0644() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(20);
    let mut app = App::new(&auth0, &rudder);
    let made = app.dir.path().join("var");
    let db = made.join("lib").join("state.db");
    app.set("state", "path", db.display().to_string());
    let textfile = app.dir.path().join("auth0-rudderstack.prom");
    app.set("metrics", "textfile", textfile.display().to_string()).set("metrics", "interval", "1s");

    // `run` under umask 022 (a shell sets it and execs the binary, as a service manager would).
    let log = std::fs::File::create(app.dir.path().join("run.log")).unwrap();
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c").arg("umask 022 && exec \"$@\"").arg("sh").arg(bin());
    cmd.arg("--config").arg(app.config_path()).arg("run");
    cmd.env_remove("RUST_LOG").stdin(Stdio::null());
    cmd.stdout(Stdio::from(log.try_clone().unwrap())).stderr(Stdio::from(log)).kill_on_drop(true);
    let child = cmd.spawn().unwrap();
    rudder.wait_for_events(20, PATIENCE).await;

    // While it runs, every file of the state exists.
    let files = [db.clone(), with_suffix(&db, "-wal"), with_suffix(&db, "-shm"), with_suffix(&db, ".lock")];
    assert!(wait_until(PATIENCE, || files.iter().all(|f| f.exists())).await, "{files:?}");
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    for d in [&made, &made.join("lib")] {
        assert_eq!(mode(d), 0o700, "{}", d.display());
    }
    assert!(wait_until(PATIENCE, || textfile.exists()).await, "no textfile: {}", app.run_log());
    assert_eq!(mode(&textfile), 0o644, "{}", textfile.display());
    let (status, _) = sigterm_within(child, Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", app.run_log());
}

/// Two daemons on one database, the second through a symlink: the second is refused with exit 1 naming the
/// lock, and no event is delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_through_a_symlink_is_refused_and_nothing_is_sent_twice() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(100);
    let first = App::new(&auth0, &rudder);
    let child = first.spawn_run();
    rudder.wait_for_events(100, PATIENCE).await;

    let mut second = App::new(&auth0, &rudder);
    let link = second.dir.path().join("elsewhere.db");
    std::os::unix::fs::symlink(first.db_path(), &link).unwrap();
    second.set("state", "path", link.display().to_string());
    auth0.push_synthetic(50);
    for cmd in ["run", "sync"] {
        let out = second.run(&[cmd], Duration::from_secs(30)).await;
        assert_eq!(out.status.code(), Some(1), "{cmd}: {}", text(&out));
        let err = stderr(&out);
        assert!(err.contains("auth0-rudderstack `run` (pid") && err.contains("is using"), "{cmd}: {err}");
        let lock = with_suffix(&std::fs::canonicalize(first.db_path()).unwrap(), ".lock");
        assert!(err.contains(&lock.display().to_string()), "{cmd}: {err}");
    }
    rudder.wait_for_events(150, PATIENCE).await;
    let (status, _) = sigterm_within(child, Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", first.run_log());
    let twice: Vec<(String, usize)> = deliveries(&rudder).into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(rudder.event_count(), 150);
}

/// A tmpfs mounted for one test; unmounted when dropped, however the test ends.
struct Tmpfs {
    at: PathBuf,
}

impl Tmpfs {
    /// Mount a tmpfs of `size` (as mount(8) reads it, e.g. `32m`) at `at`, or say why not on stderr.
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(at)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { at: at.to_path_buf() }),
            Ok(o) => {
                let why = format!(
                    "cannot mount a tmpfs (needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                crate::support::missing_prerequisite("tmpfs", &why);
                None
            }
            Err(e) => {
                crate::support::missing_prerequisite("tmpfs", &format!("cannot run mount(8): {e}"));
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let plain = std::process::Command::new("umount").arg(&self.at).status();
        if !plain.is_ok_and(|s| s.success()) {
            // Something still has a file open there (a daemon a failed assertion left running): detach now,
            // and the kernel frees it once the last file is closed.
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.at).status();
        }
    }
}

/// Fill the file system holding `path` with one file until it is full; the number of bytes written.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0x5au8; 64 * 1024];
    let mut written = 0u64;
    // Bounded: a tmpfs of the test's size holds far fewer blocks than this.
    for _ in 0..100_000 {
        match f.write(&block) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let _ = f.flush();
    written
}

/// Every entry delivered at least once, and in order of first delivery.
fn assert_all_delivered_in_order(rudder: &FakeRudderStack, entries: &[Value]) {
    let mut seen = HashSet::new();
    let firsts: Vec<String> = rudder
        .events()
        .iter()
        .map(|e| e["properties"]["log_id"].as_str().unwrap_or_default().to_string())
        .filter(|id| seen.insert(id.clone()))
        .collect();
    let expected: Vec<String> = entries.iter().map(id_of).collect();
    assert_eq!(firsts.len(), expected.len(), "entries delivered");
    assert_eq!(firsts, expected, "every entry must arrive, in log order");
}

/// The disk holding the state fills up while `run` fetches a large log and RudderStack is down: `run` keeps
/// running and logs errors naming the state file; once there is space again and RudderStack is back, every
/// entry arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_waited_out_and_nothing_is_lost() {
    let (auth0, rudder) = start_fakes().await;
    let entries = auth0.push_synthetic(3000);
    rudder.set_outage(true);
    let mut app = App::new(&auth0, &rudder);
    let Some(disk) = Tmpfs::mount(&app.dir.path().join("small-disk"), "24m") else { return };
    let db = disk.at.join("state.db");
    app.set("state", "path", db.display().to_string());
    // Slow enough that fetching is still under way when the disk fills.
    app.set("auth0", "max_requests_per_second", 4.0);
    let child = app.spawn_run();

    let depth = || {
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| c.query_row("SELECT count(*) FROM outbox", [], |r| r.get::<_, i64>(0)))
            .unwrap_or(0)
    };
    assert!(wait_until(PATIENCE, || depth() >= 200).await, "fetching never started:\n{}", app.run_log());
    let filler = disk.at.join("filler");
    assert!(fill(&filler) > 0);
    // The fetcher itself meets the full disk (fetching is still under way), and says which file.
    let path = db.display().to_string();
    let fetch_errors = || {
        app.run_log()
            .lines()
            .filter(|l| l.contains("fetching failed") && l.contains("disk is full") && l.contains(&path))
            .count()
    };
    assert!(
        wait_until(PATIENCE, || fetch_errors() >= 1).await,
        "no error naming the state file:\n{}",
        app.run_log()
    );
    // It keeps trying, and keeps running.
    let seen = fetch_errors();
    assert!(wait_until(PATIENCE, || fetch_errors() >= seen + 3).await, "{}", app.run_log());
    let mut child = child;
    assert!(child.try_wait().unwrap().is_none(), "run exited on a full disk:\n{}", app.run_log());

    std::fs::remove_file(&filler).unwrap();
    rudder.set_outage(false);
    let all = wait_until(Duration::from_secs(120), || deliveries(&rudder).len() >= entries.len()).await;
    assert!(all, "{} of {} entries arrived:\n{}", deliveries(&rudder).len(), entries.len(), app.run_log());
    let (status, _) = sigterm_within(child, Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", app.run_log());
    assert_all_delivered_in_order(&rudder, &entries);
    drop(disk);
}

/// `sync` on a full disk retries for `retry.sync_give_up_after`, then exits 1 (a failure worth restarting,
/// never the 2 of bad input) naming the state file and the full disk, with nothing fetched lost; once there
/// is space again, the next `sync` delivers every entry, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_on_a_full_disk_gives_up_with_exit_1_and_the_next_sync_loses_nothing() {
    let (auth0, rudder) = start_fakes().await;
    let mut entries = auth0.push_synthetic(100);
    let mut app = App::new(&auth0, &rudder);
    let Some(disk) = Tmpfs::mount(&app.dir.path().join("small-disk"), "8m") else { return };
    let db = disk.at.join("state.db");
    app.set("state", "path", db.display().to_string()).set("retry", "sync_give_up_after", "3s");
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(rudder.event_count(), 100);

    entries.extend(auth0.push_synthetic(2000));
    let filler = disk.at.join("filler");
    assert!(fill(&filler) > 0);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = stderr(&out);
    let last = err.lines().last().unwrap_or_default();
    // SQLite says "database or disk is full", or a bare "disk I/O error" that the daemon explains.
    assert!(
        last.starts_with("error: ")
            && (last.contains("disk is full") || last.contains("file system is full")),
        "{err}"
    );
    // The first error, logged as the retries begin, already says why.
    let first = err.lines().find(|l| l.contains("ERROR")).unwrap_or_else(|| panic!("{err}"));
    assert!(first.contains(&db.display().to_string()) && first.contains(" is full"), "{first}");
    assert!(!err.contains("panicked"), "{err}");

    std::fs::remove_file(&filler).unwrap();
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_all_delivered_in_order(&rudder, &entries);
    drop(disk);
}

/// A fake log line behind a newline, with terminal escapes (clear screen, set title, a C1 CSI, DEL and a bidi
/// override), as an upstream body, an entry or a config value might carry it.
const FORGED: &str = "\n2026-01-01T00:00:00.000000Z ERROR auth0_rudderstack: forged line\x1b[2J\x1b]0;pwned\x07\u{9b}31m\x7f\u{202e}";

/// Whether `line` is one the daemon writes in text mode: a tracing line (RFC 3339 time, level) or the final
/// `error:` line.
fn is_log_line(line: &str) -> bool {
    if line.starts_with("error: ") {
        return true;
    }
    let Some((time, rest)) = line.split_once(' ') else { return false };
    let level = rest.trim_start().split(' ').next().unwrap_or_default();
    time.len() >= 20
        && time.as_bytes()[4] == b'-'
        && time.as_bytes()[10] == b'T'
        && time.ends_with('Z')
        && time.parse::<chrono::DateTime<chrono::Utc>>().is_ok()
        && ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level)
}

/// Check one command's stderr in one format: no raw control character or bidi override at all, every line
/// well-formed (text) or a JSON object (json), and (when `quoted`) the forged text present inside a real line.
fn assert_no_forged_lines(what: &str, format: &str, out: &Output, quoted: bool) {
    let err = stderr(out);
    if quoted {
        assert!(
            err.contains("forged line"),
            "{what} ({format}): the injection never reached the log:\n{err}"
        );
    }
    for (i, c) in err.char_indices() {
        let bad = (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c);
        assert!(!bad, "{what} ({format}): raw {c:?} at byte {i}:\n{err}");
    }
    for line in err.lines() {
        match format {
            "json" => {
                let v: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{what}: a stderr line is not JSON ({e}): {line:?}"));
                assert!(v.is_object(), "{what}: {line:?}");
            }
            _ => {
                assert!(is_log_line(line), "{what}: not a log line: {line:?}");
                assert!(!line.starts_with("2026-01-01T00:00:00.000000Z"), "{what}: forged: {line:?}");
            }
        }
    }
    let last = err.lines().last().unwrap_or_default();
    match format {
        "json" => {
            let v: Value = serde_json::from_str(last).unwrap();
            assert_eq!(v["level"], "ERROR", "{what}: the final line is the error: {last}");
        }
        _ => assert!(last.starts_with("error: "), "{what}: the final line is the error: {last}"),
    }
}

/// An upstream error body, an entry's fields and a config value holding a newline, a fake log line and
/// terminal escapes: in text mode no raw newline or escape reaches stderr and every line is a log line; with
/// `--log-format json` every stderr line, the final error included, is a JSON object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_lines_and_escapes_never_reach_stderr_in_either_format() {
    for format in ["text", "json"] {
        let (auth0, rudder) = start_fakes().await;
        let mut entries = auth0.make_entries(4);
        // A field the transform quotes: a group event whose path names no organization. The first entry, so
        // that the sender meets it before RudderStack's refusal stops it.
        entries[0]["type"] = json!("sapi");
        entries[0]["description"] = json!("Add members to an organization");
        entries[0]["details"] = json!({"request": {"method": "post", "path": format!("/x{FORGED}")}});
        // A log_id that is no id at all.
        entries[2]["log_id"] = json!(format!("1{FORGED}"));
        auth0.push(entries);
        // Auth0 fails once with the injection in its error message, RudderStack rejects the write key with it.
        auth0.set_hook(|req: &Request, n| {
            (req.path == "/api/v2/logs" && n == 3).then(|| {
                Reply::json(503, &json!({"statusCode": 503, "error": "Service Unavailable", "message": format!("down{FORGED}")}))
            })
        });
        rudder.hook(|_, _| Some(Reply::text(401, &format!("invalid write key{FORGED}"))));
        let app = App::new(&auth0, &rudder);
        let mut cmd = app.command(&["--log-format", format, "sync"]);
        cmd.env("RUST_LOG", "debug");
        let out = run_bounded(cmd, PATIENCE).await;
        assert_eq!(out.status.code(), Some(1), "{format}: {}", text(&out));
        assert_no_forged_lines("upstream bodies and entries", format, &out, true);
        // Each injection reached the log, escaped (a backslash where its newline was).
        let err = stderr(&out);
        for quoted in ["down\\", "/x\\", "invalid write key\\"] {
            assert!(err.contains(quoted), "{format}: {quoted} is not in the log:\n{err}");
        }

        // Config values: a client id is refused outright, without quoting it (exit 2); a state path may hold
        // any byte, and is quoted when it cannot be used (exit 3).
        let mut app = App::new(&auth0, &rudder);
        app.set("auth0", "client_id", format!("{CLIENT_ID}{FORGED}"));
        let out = app.run(&["--log-format", format, "sync"], PATIENCE).await;
        assert_eq!(out.status.code(), Some(2), "{format}: {}", text(&out));
        assert!(stderr(&out).contains("auth0.client_id"), "{format}: {}", text(&out));
        assert_no_forged_lines("a refused config value", format, &out, false);

        let mut app = App::new(&auth0, &rudder);
        let file = app.dir.path().join(format!("not-a-directory{FORGED}"));
        std::fs::write(&file, b"a file").unwrap();
        app.set("state", "path", file.join("state.db").display().to_string());
        let out = app.run(&["--log-format", format, "sync"], PATIENCE).await;
        assert_eq!(out.status.code(), Some(3), "{format}: {}", text(&out));
        assert_no_forged_lines("a state path", format, &out, true);
    }
}

/// Stdout is no safer a place for raw text than the log: `status` quotes the last error (Auth0's words) and
/// the privacy rules' field names (the config's), and `dead-letter retry` quotes Auth0's errors; each prints
/// them escaped, one report line per line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_dead_letter_retry_print_what_they_quote_escaped() {
    let raw_control = |text: &str| {
        text.char_indices()
            .find(|(_, c)| (c.is_control() && *c != '\n') || ('\u{202a}'..='\u{202e}').contains(c))
    };
    let (auth0, rudder) = start_fakes().await;
    let made = auth0.make_entries(3);
    let serialized = |e: &Value| serde_json::to_string(e).unwrap();
    let mut bad = made[1].clone();
    bad["description"] = json!("broken X here");
    // Not UTF-8: with privacy rules set, it is set aside without its text, to be fetched again by id.
    let not_utf8: Vec<u8> = serialized(&bad).bytes().map(|b| if b == b'X' { 0xff } else { b }).collect();
    auth0.push_raw(made[0].clone(), serialized(&made[0]));
    auth0.push_raw(made[1].clone(), not_utf8);
    auth0.push_raw(made[2].clone(), serialized(&made[2]));
    let mut app = App::new(&auth0, &rudder);
    // A field name may hold neither ',' nor ':', so this one forges a line without a time.
    app.set("privacy", "mask", vec!["phone\nforged line\x1b[2J\x1b]0;pwned\x07\u{9b}31m\x7f\u{202e}"]);
    app.set("retry", "sync_give_up_after", "1s");
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Auth0 now fails every read with the injection in its message.
    auth0.set_hook(|req: &Request, _| {
        req.path.starts_with("/api/v2/logs").then(|| {
            Reply::json(503, &json!({"statusCode": 503, "error": "Service Unavailable", "message": format!("down{FORGED}")}))
        })
    });
    let out = app.run(&["dead-letter", "retry"], PATIENCE).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(raw_control(&report), None, "{report:?}");
    let line = report
        .lines()
        .find(|l| l.contains("could not be fetched again"))
        .unwrap_or_else(|| panic!("{report}"));
    assert!(line.contains("down\\n2026-01-01") && line.ends_with("it stays set aside"), "{line}");

    auth0.push_synthetic(1);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = app.run(&["status"], PATIENCE).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(raw_control(&report), None, "{report:?}");
    // Every line is one of the report's own: a label, a warning, or the blank line between tenants.
    for line in report.lines() {
        let label = line.split(':').next().unwrap_or_default();
        assert!(
            line.is_empty()
                || [
                    "state",
                    "tenant",
                    "destination",
                    "forwards",
                    "privacy",
                    "idle polling",
                    "cursor",
                    "outbox",
                    "dead letters",
                    "last fetch",
                    "last delivery",
                    "delivered",
                    "warning"
                ]
                .contains(&label),
            "a line the report does not write: {line:?}\n{report}"
        );
    }
    let privacy = report.lines().find(|l| l.starts_with("privacy:")).unwrap();
    assert!(privacy.contains("phone\\nforged line\\x1b"), "{privacy}");
    assert!(
        report.lines().any(|l| l.starts_with("warning: last error") && l.contains("down\\n2026-01-01")),
        "{report}"
    );
}

/// Out-of-range values exit 2 with a message naming the key, before anything else happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_values_out_of_bounds_exit_2_naming_the_key() {
    let cases: [(&str, toml::Value); 5] = [
        ("retention", "300000 years".into()),
        ("poll_interval", "100000000000 years".into()),
        ("max_requests_per_second", 1e-30.into()),
        ("page_size", (-5).into()),
        ("timeout", "99999999999999999999 years".into()),
    ];
    for (key, value) in cases {
        let mut app = App::with_urls("http://127.0.0.1:9", "http://127.0.0.1:9");
        app.set("auth0", key, value.clone());
        let out = app.run(&["status"], Duration::from_secs(20)).await;
        assert_eq!(out.status.code(), Some(2), "{key} = {value}: {}", text(&out));
        assert!(stderr(&out).contains(&format!("auth0.{key}")), "{key} = {value}: {}", text(&out));
        assert!(!app.db_path().exists(), "{key}: a bad config must not create the state");
    }
}

/// Whether this process runs as root (the tests run as root in CI, which can then drop to another user).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Uid:")).map(|u| u.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// The lines of `check` that failed, by their label.
fn failed_checks(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("FAILED"))
        .map(|l| l.trim_start().split(':').next().unwrap_or_default().to_string())
        .collect()
}

/// A state path whose parent is a regular file: `run` and `sync` exit 3 naming it, and `check` reports the
/// state as a failed check (exit 1) while the network checks pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_path_under_a_regular_file_exits_3_and_fails_check() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(5);
    let mut app = App::new(&auth0, &rudder);
    let file = app.dir.path().join("not-a-directory");
    std::fs::write(&file, b"just a file").unwrap();
    app.set("state", "path", file.join("state.db").display().to_string());
    for cmd in ["run", "sync"] {
        let out = app.run(&[cmd], Duration::from_secs(30)).await;
        assert_eq!(out.status.code(), Some(3), "{cmd}: {}", text(&out));
        assert!(stderr(&out).contains("not-a-directory"), "{cmd}: {}", text(&out));
    }
    let out = app.run(&["check"], Duration::from_secs(30)).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(failed_checks(&out), ["state"], "{}", text(&out));
    assert_eq!(std::fs::read(&file).unwrap(), b"just a file");
    assert_eq!(rudder.event_count(), 0);
}

/// A state directory the daemon's user cannot write (the binary run as `nobody`): `run` and `sync` exit 3
/// naming it, and `check` reports the state as a failed check (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_the_user_cannot_write_exits_3_and_fails_check() {
    if !is_root() {
        crate::support::missing_prerequisite(
            "unwritable state directory",
            "dropping to another user needs root",
        );
        return;
    }
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(5);
    let mut app = App::new(&auth0, &rudder);
    let locked = app.dir.path().join("root-only");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    app.set("state", "path", locked.join("state.db").display().to_string());
    // `nobody` may enter the test's directory and read its config, and nothing more.
    std::fs::set_permissions(app.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(app.config_path(), Some(65534), Some(65534)).unwrap();
    let as_nobody = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(bin());
        cmd.arg("--config").arg(app.config_path()).args(args);
        cmd.env_remove("RUST_LOG").env_remove("AUTH0_CLIENT_SECRET").env_remove("RUDDERSTACK_WRITE_KEY");
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        cmd
    };
    let probe = run_bounded(as_nobody(&["status"]), Duration::from_secs(20)).await;
    if probe.status.code() != Some(0) {
        let why = format!("the binary cannot run as nobody here: {}", text(&probe));
        crate::support::missing_prerequisite("unwritable state directory", &why);
        return;
    }
    for cmd in ["run", "sync"] {
        let out = run_bounded(as_nobody(&[cmd]), Duration::from_secs(30)).await;
        assert_eq!(out.status.code(), Some(3), "{cmd}: {}", text(&out));
        assert!(stderr(&out).contains(&locked.display().to_string()), "{cmd}: {}", text(&out));
        assert!(stderr(&out).contains("ermission denied"), "{cmd}: {}", text(&out));
    }
    let out = run_bounded(as_nobody(&["check"]), Duration::from_secs(30)).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(failed_checks(&out), ["state"], "{}", text(&out));
    assert_eq!(std::fs::read_dir(&locked).unwrap().count(), 0, "nothing may be created there");
    assert_eq!(rudder.event_count(), 0);
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A FIFO at the state path, there or behind a symlink, is not taken for an empty database: `sync` and `run`
/// exit 3 at once naming the path and saying what it is, `check` reports the state as a failed check, and
/// the FIFO keeps its mode, with nothing created beside it. (Taken for a database that cannot be written,
/// `sync` would retry for `sync_give_up_after` and `run` for ever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_at_the_state_path_exits_3_at_once_and_is_left_as_it_was() {
    use std::os::unix::fs::FileTypeExt;
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(5);
    let mut app = App::new(&auth0, &rudder);
    app.set("retry", "sync_give_up_after", "10m");
    let fifo = app.dir.path().join("pipe");
    mkfifo(&fifo);
    std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o644)).unwrap();
    let link = app.dir.path().join("link.db");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    for state in [&fifo, &link] {
        app.set("state", "path", state.display().to_string());
        let before = names(app.dir.path());
        for cmd in ["sync", "run"] {
            let out = app.run(&[cmd], Duration::from_secs(30)).await;
            assert_eq!(out.status.code(), Some(3), "{cmd}: {}", text(&out));
            let err = stderr(&out);
            assert!(
                err.contains(&state.display().to_string()) && err.contains("FIFO"),
                "{cmd}: {}",
                text(&out)
            );
        }
        let out = app.run(&["check"], Duration::from_secs(30)).await;
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert_eq!(failed_checks(&out), ["state"], "{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("FIFO"), "{}", text(&out));
        assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
        assert_eq!(mode(&fifo), 0o644, "the FIFO's mode was changed");
        assert_eq!(names(app.dir.path()), before, "files were created beside the state");
    }
    assert_eq!(rudder.event_count(), 0);
}

/// A symlink planted at the state's `-wal` or `-shm`, on a fresh state or beside an existing one, the state
/// path being the file or a symlink to it in another directory (SQLite keeps the `-wal` beside the file
/// itself): `sync` exits 3 naming it, `check` reports the state as a failed check, no state file is created,
/// and the file the planted link points to keeps its mode and its content (a chmod through the link would
/// have taken it from its owner's group).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_at_the_wal_or_shm_exits_3_naming_it_and_its_target_is_left_as_it_was() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(5);
    let mut app = App::new(&auth0, &rudder);
    let victim = app.dir.path().join("victim");
    std::fs::write(&victim, b"not the daemon's\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    let real = app.dir.path().join("elsewhere").join("state.db");
    std::fs::create_dir(real.parent().unwrap()).unwrap();
    let link = app.dir.path().join("linked-state.db");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    for (state, db) in [(app.db_path(), app.db_path()), (link.clone(), real.clone())] {
        app.set("state", "path", state.display().to_string());
        for existing in [false, true] {
            if existing {
                let out = app.sync().await;
                assert_eq!(out.status.code(), Some(0), "{}", text(&out));
            }
            for suffix in ["-wal", "-shm"] {
                let planted = with_suffix(&db, suffix);
                let _ = std::fs::remove_file(&planted);
                std::os::unix::fs::symlink(&victim, &planted).unwrap();
                let case = format!("state path {}, {suffix}, existing state {existing}", state.display());
                let out = app.sync().await;
                assert_eq!(mode(&victim), 0o644, "{case}: the target's mode was changed");
                assert_eq!(std::fs::read(&victim).unwrap(), b"not the daemon's\n", "{case}");
                assert!(std::fs::symlink_metadata(&planted).unwrap().file_type().is_symlink(), "{case}");
                assert_eq!(out.status.code(), Some(3), "{case}: {}", text(&out));
                let said = format!("{} is a symbolic link", planted.display());
                assert!(stderr(&out).contains(&said), "{case}: {}", text(&out));
                let out = app.run(&["check"], Duration::from_secs(30)).await;
                assert_eq!(out.status.code(), Some(1), "{case}: {}", text(&out));
                assert_eq!(failed_checks(&out), ["state"], "{case}: {}", text(&out));
                assert_eq!(db.exists(), existing, "{case}: a state file was created");
                std::fs::remove_file(&planted).unwrap();
            }
        }
    }
}

/// Every row of every table, as text, for comparing a state before and after.
fn dump(db: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut rows = Vec::new();
    for t in tables {
        let mut stmt = c.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let n = stmt.column_count();
        let mut q = stmt.query([]).unwrap();
        while let Some(r) = q.next().unwrap() {
            let cells: Vec<String> = (0..n).map(|i| format!("{:?}", r.get_ref(i).unwrap())).collect();
            rows.push(format!("{t}: {}", cells.join(" | ")));
        }
    }
    rows
}

/// `resume` on a healthy state refuses with exit 1 and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_a_healthy_state_refuses_and_changes_nothing() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(30);
    let app = App::new(&auth0, &rudder);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let before = dump(&app.db_path());
    let requests = auth0.requests();
    let out = app.run(&["resume"], Duration::from_secs(20)).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("is not stopped"), "{}", text(&out));
    assert_eq!(dump(&app.db_path()), before, "resume changed the state");
    assert_eq!(auth0.requests(), requests, "resume asked Auth0 for something");
}

/// Split an error message into its clauses (by `: ` and `; `).
fn clauses(message: &str) -> Vec<String> {
    message
        .split(": ")
        .flat_map(|p| p.split("; "))
        .map(|c| c.trim().trim_end_matches('.').to_string())
        .filter(|c| !c.is_empty())
        .collect()
}

/// Assert that no clause of `message` appears twice, and no clause holds a later one.
fn assert_each_cause_once(what: &str, message: &str) {
    let parts = clauses(message);
    for (i, a) in parts.iter().enumerate() {
        for b in &parts[i + 1..] {
            assert!(a != b, "{what}: {a:?} appears twice in: {message}");
            assert!(
                b.len() < 12 || !a.contains(b.as_str()),
                "{what}: {b:?} repeats part of {a:?} in: {message}"
            );
        }
    }
}

/// The wrong-credentials and missing-config messages say each cause once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_credentials_and_missing_config_messages_say_each_cause_once() {
    let (auth0, rudder) = start_fakes().await;
    let mut app = App::new(&auth0, &rudder);
    app.set("auth0", "client_secret", "not-the-client-secret");
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = stderr(&out);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: ") && last.contains("rejected the client credentials"), "{err}");
    assert_each_cause_once("wrong credentials", last);

    let missing = app.dir.path().join("no-such-config.toml");
    let mut cmd = tokio::process::Command::new(bin());
    cmd.arg("--config").arg(&missing).arg("status");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = run_bounded(cmd, Duration::from_secs(20)).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = stderr(&out);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.contains(&missing.display().to_string()), "{err}");
    assert_each_cause_once("missing config", last);
}

/// How soon a command that meets an unreadable config or secret file must have exited.
const MAX_REFUSAL: Duration = Duration::from_secs(5);

/// Run `cmd` to its end, sampling its peak resident set every few milliseconds while it lives: it must end
/// within [`MAX_REFUSAL`] (it is killed, and the test fails, if not) and never hold more than
/// [`MAX_PEAK_RSS_KIB`]. Returns its output and the highest peak seen.
async fn refused_in_time(case: &str, mut cmd: tokio::process::Command) -> (Output, u64) {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn the binary");
    let pid = child.id().expect("started");
    let started = Instant::now();
    let mut peak = 0;
    loop {
        // Gone once the process has exited; a sample is taken while it lives.
        peak = peak.max(peak_rss_kib_if_alive(pid).unwrap_or(0));
        assert!(peak <= MAX_PEAK_RSS_KIB, "{case}: peak RSS {peak} KiB");
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > MAX_REFUSAL {
            child.kill().await.unwrap();
            panic!("{case}: still running after {MAX_REFUSAL:?} (peak RSS {peak} KiB)");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let out = child.wait_with_output().await.unwrap();
    eprintln!(
        "{case}: exited {:?} after {:?}, peak RSS seen {peak} KiB",
        out.status.code(),
        started.elapsed()
    );
    (out, peak)
}

fn mkfifo(path: &Path) {
    let made = std::process::Command::new("mkfifo").arg(path).status().expect("run mkfifo");
    assert!(made.success(), "mkfifo {}", path.display());
}

/// `/dev/zero`, a FIFO with no writer, a directory and an oversized file as a secret file or CA bundle exit 2
/// within 5 s naming the key and the file, with the peak memory within 64 MiB; a secret file its group can
/// read gets a warning naming it, the hash key file as much as the client secret file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_files_that_are_not_small_regular_files_exit_2_at_once() {
    let scratch = tempfile::tempdir().unwrap();
    let fifo = scratch.path().join("secret.fifo");
    mkfifo(&fifo);
    let big = scratch.path().join("big-secret");
    std::fs::write(&big, vec![b'k'; 64 * 1024 + 1]).unwrap();
    let zero = PathBuf::from("/dev/zero");
    let cases: [(&str, &str, &Path, &str); 9] = [
        ("auth0", "client_secret_file", &zero, "a character device"),
        ("auth0", "client_secret_file", &fifo, "a FIFO"),
        ("auth0", "client_secret_file", &big, "larger than 64 KiB"),
        ("privacy", "hash_key_file", &zero, "a character device"),
        ("privacy", "hash_key_file", &fifo, "a FIFO"),
        ("privacy", "hash_key_file", &big, "larger than 64 KiB"),
        ("rudderstack", "write_key_file", scratch.path(), "a directory"),
        ("rudderstack", "write_key_file", &fifo, "a FIFO"),
        ("auth0", "tls_ca_file", &zero, "a character device"),
    ];
    for (section, key, file, what) in cases {
        let case = format!("{section}.{key} = {}", file.display());
        let mut app = App::with_urls("http://127.0.0.1:9", "http://127.0.0.1:9");
        match key {
            "client_secret_file" => app.unset("auth0", "client_secret"),
            "write_key_file" => app.unset("rudderstack", "write_key"),
            "hash_key_file" => app.set("privacy", "hash", vec!["user_name"]),
            _ => &mut app,
        };
        app.set(section, key, file.display().to_string());
        let (out, _) = refused_in_time(&case, app.command(&["status"])).await;
        assert_eq!(out.status.code(), Some(2), "{case}: {}", text(&out));
        let err = stderr(&out);
        let (key, file) = (format!("{section}.{key}: "), file.display().to_string());
        assert!(err.contains(&key) && err.contains(&file) && err.contains(what), "{case}: {err}");
    }

    let key_file = scratch.path().join("hash-key");
    std::fs::write(&key_file, "a-hash-key-of-enough-bytes-0123456789\n").unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let mut app = App::with_urls("http://127.0.0.1:9", "http://127.0.0.1:9");
    app.set("privacy", "hash", vec!["user_name"]).set(
        "privacy",
        "hash_key_file",
        key_file.display().to_string(),
    );
    let out = app.run(&["status"], PATIENCE).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let err = stderr(&out);
    let warned = format!("{} holds a secret and is readable by its group", key_file.display());
    assert!(err.contains(&warned) && err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = app.run(&["status"], PATIENCE).await;
    assert!(!stderr(&out).contains("holds a secret"), "{}", text(&out));
}

/// `/dev/zero`, a FIFO with no writer and a file over 1 MiB as the config file exit 2 within 5 s naming it,
/// with the peak memory within 64 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_that_is_not_a_small_regular_file_exits_2_at_once() {
    let scratch = tempfile::tempdir().unwrap();
    let fifo = scratch.path().join("config.fifo");
    mkfifo(&fifo);
    let big = scratch.path().join("big.toml");
    std::fs::write(&big, format!("# {}\n", "x".repeat(1 << 20))).unwrap();
    for (file, what) in
        [(PathBuf::from("/dev/zero"), "a character device"), (fifo, "a FIFO"), (big, "larger than 1 MiB")]
    {
        let case = format!("-c {}", file.display());
        let mut cmd = tokio::process::Command::new(bin());
        cmd.arg("--config").arg(&file).arg("status");
        let (out, _) = refused_in_time(&case, cmd).await;
        assert_eq!(out.status.code(), Some(2), "{case}: {}", text(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("config file {}", file.display())) && err.contains(what),
            "{case}: {err}"
        );
    }
}

/// Symlinks to two victims (a plain file and the state database itself) planted at the metrics textfile's
/// name, at the temporary name older versions used (`.{name}.{pid}.tmp`, for the daemon's pid and the pids
/// after it) and at other names a writer might pick: while `run` rewrites the textfile several times, no
/// victim changes, and every planted link is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_planted_around_the_metrics_textfile_redirect_no_write() {
    use std::os::unix::fs::MetadataExt;
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(20);
    let mut app = App::new(&auth0, &rudder);
    let dir = app.dir.path().join("textfile");
    std::fs::create_dir(&dir).unwrap();
    let name = "auth0-rudderstack.prom";
    let file = dir.join(name);
    app.set("metrics", "textfile", file.display().to_string()).set("metrics", "interval", "1s");
    // The state exists, with its header, before the daemon starts.
    assert_eq!(app.sync().await.status.code(), Some(0));
    let victim = app.dir.path().join("victim");
    std::fs::write(&victim, b"precious, not metrics").unwrap();
    let db_before = std::fs::read(app.db_path()).unwrap();

    let plant = |names: &[String]| {
        for (i, n) in names.iter().enumerate() {
            let target = if i % 2 == 0 { &victim } else { &app.db_path() };
            std::os::unix::fs::symlink(target, dir.join(n)).unwrap();
        }
    };
    let mut planted: Vec<String> =
        [format!(".{name}.tmp"), format!("{name}.tmp"), format!("{name}.new"), format!(".{name}.swp")].into();
    plant(&planted);
    let child = app.spawn_run();
    let pid = child.id().unwrap();
    let by_pid: Vec<String> = (pid..pid + 8).map(|p| format!(".{name}.{p}.tmp")).collect();
    plant(&by_pid);
    planted.extend(by_pid);

    // Several rewrites: each one renames a new file into place.
    let mut inodes = HashSet::new();
    let rewritten = wait_until(PATIENCE, || {
        if let Ok(m) = std::fs::symlink_metadata(&file) {
            inodes.insert(m.ino());
        }
        inodes.len() >= 4
    })
    .await;
    assert!(rewritten, "the textfile was not rewritten 4 times: {inodes:?}\n{}", app.run_log());
    let (status, _) = sigterm_within(child, PATIENCE).await;
    assert_eq!(status.code(), Some(0), "{}", app.run_log());

    let now = std::fs::read(&victim).unwrap();
    let start = String::from_utf8_lossy(&now[..now.len().min(80)]).into_owned();
    assert!(
        now == b"precious, not metrics",
        "a write went through a symlink; the victim now holds {start:?}"
    );
    let header = std::fs::read(app.db_path()).unwrap();
    assert!(header[..100] == db_before[..100], "the state's header changed");
    assert_eq!(app.status().await["delivered_total"], 20);
    for n in &planted {
        let meta = std::fs::symlink_metadata(dir.join(n)).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert!(meta.file_type().is_symlink(), "{n} was replaced");
    }
    let meta = std::fs::symlink_metadata(&file).unwrap();
    assert!(meta.file_type().is_file(), "the textfile is a file of its own");
    assert!(std::fs::read_to_string(&file).unwrap().contains("auth0_rudderstack_delivered_events_total"));
    let others: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != name && !planted.contains(n))
        .collect();
    assert!(others.is_empty(), "temporary files left behind: {others:?}");
}

/// A symlink planted at the destination of `backup`, even one that points nowhere, makes it refuse: nothing
/// is written where the link points.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_refuses_a_symlink_at_its_destination() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(5);
    let app = App::new(&auth0, &rudder);
    assert_eq!(app.sync().await.status.code(), Some(0));
    let dest = app.dir.path().join("copy.db");
    let pointed = app.dir.path().join("elsewhere.db");
    std::os::unix::fs::symlink(&pointed, &dest).unwrap();
    let out = app.run(&["backup", dest.to_str().unwrap()], PATIENCE).await;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stderr(&out).contains(&dest.display().to_string()), "{}", text(&out));
    assert!(!pointed.exists(), "the backup followed the symlink");
    assert!(std::fs::symlink_metadata(&dest).unwrap().file_type().is_symlink());

    std::fs::remove_file(&dest).unwrap();
    let out = app.run(&["backup", dest.to_str().unwrap()], PATIENCE).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let copy = rusqlite::Connection::open(&dest).unwrap();
    let n: i64 = copy.query_row("SELECT count(*) FROM tenant", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1);
}

/// Every file (not directory) under `dir`, at any depth.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if std::fs::symlink_metadata(&path).unwrap().is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// A `backup` destination that SQLite would read as a URI (`file:...`) is only a path: the copy is written,
/// private, at that path under the working directory, and nothing reaches the file the URI would name, even
/// an empty one behind a symlink planted there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_destination_beginning_with_file_colon_is_a_path_not_a_uri() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(5);
    let app = App::new(&auth0, &rudder);
    assert_eq!(app.sync().await.status.code(), Some(0));
    let victim = app.dir.path().join("victim.db");
    std::fs::write(&victim, b"").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    let planted = app.dir.path().join("planted");
    std::fs::create_dir(&planted).unwrap();
    std::os::unix::fs::symlink(&victim, planted.join("x.db")).unwrap();
    let work = app.dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let uri = format!("file:{}?mode=rwc", planted.join("x.db").display());
    let mut cmd = app.command(&["backup", &uri]);
    cmd.current_dir(&work);
    let out = run_bounded(cmd, PATIENCE).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let written = std::fs::metadata(&victim).unwrap().len();
    assert_eq!(written, 0, "the backup went through the planted symlink");
    assert_eq!(mode(&victim), 0o644);
    assert_eq!(names(&planted), ["x.db"]);
    let copy = work.join(&uri);
    assert_eq!(files_under(&work), std::slice::from_ref(&copy), "the copy, and nothing else");
    assert_eq!(mode(&copy), 0o600);
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let conn = rusqlite::Connection::open_with_flags(&copy, flags).unwrap();
    let n: i64 = conn.query_row("SELECT count(*) FROM tenant", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1);
}

/// A proxy on loopback that refuses everything (502) and counts the connections made to it.
async fn refusing_proxy() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = std::sync::Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else { return };
            count.fetch_add(1, Ordering::SeqCst);
            let _ = client
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    });
    (url, connections)
}

/// `HTTP_PROXY` is honoured for plain HTTP, and `NO_PROXY` (either case) exempts the hosts it names: with a
/// proxy that refuses everything, `sync` fails through it, and with `NO_PROXY=127.0.0.1` it reaches both fakes
/// directly, the proxy never contacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_exempts_the_hosts_it_names_from_http_proxy() {
    use std::sync::atomic::Ordering;
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(20);
    let (proxy, connections) = refusing_proxy().await;
    let mut app = App::new(&auth0, &rudder);
    app.set("retry", "sync_give_up_after", "2s");
    let clean = |cmd: &mut tokio::process::Command| {
        for var in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
            "NO_PROXY",
            "no_proxy",
        ] {
            cmd.env_remove(var);
        }
    };
    let mut proxied = app.command(&["sync"]);
    clean(&mut proxied);
    proxied.env("HTTP_PROXY", &proxy);
    let out = run_bounded(proxied, PATIENCE).await;
    assert_eq!(out.status.code(), Some(1), "the proxy refuses everything: {}", text(&out));
    assert!(connections.load(Ordering::SeqCst) > 0, "HTTP_PROXY was not used");
    assert_eq!(rudder.event_count(), 0);

    for no_proxy in ["NO_PROXY", "no_proxy"] {
        connections.store(0, Ordering::SeqCst);
        let mut direct = app.command(&["sync"]);
        clean(&mut direct);
        direct.env("HTTP_PROXY", &proxy).env(no_proxy, "127.0.0.1");
        let out = run_bounded(direct, PATIENCE).await;
        assert_eq!(out.status.code(), Some(0), "{no_proxy}: {}", text(&out));
        assert_eq!(connections.load(Ordering::SeqCst), 0, "{no_proxy}: the proxy was contacted");
    }
    assert_eq!(rudder.event_count(), 20);
}
