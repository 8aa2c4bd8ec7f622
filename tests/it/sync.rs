//! The whole path through the real binary: fake Auth0 → `sync`/`run` → SQLite → fake RudderStack.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::app::{App, CLIENT_ID, CLIENT_SECRET, WRITE_KEY, run_bounded, sigterm, text};
use crate::support::fake_auth0::{Chunking, FakeAuth0, FakeOptions};
use crate::support::fake_rudderstack::{self, FakeRudderStack, KeySource};
use crate::support::http::Request;
use crate::support::{fixture_pairs_rekeyed, start_fakes, strip_ids};

/// With `start = "oldest"`, `sync` delivers every fixture entry once, exactly as RudderStack's transformer
/// would; new entries then arrive and a second `sync` delivers only those, resuming from the cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_delivers_every_fixture_entry_once_then_only_the_new_ones() {
    let (auth0, rudder) = start_fakes().await;
    let (entries, expected) = fixture_pairs_rekeyed(&auth0);
    assert_eq!(entries.len(), 142);
    auth0.push(entries.clone());
    let app = App::new(&auth0, &rudder);

    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let events = rudder.events();
    assert_eq!(events.len(), 142, "{}", text(&out));
    for (i, (event, want)) in events.iter().zip(&expected).enumerate() {
        assert_eq!(strip_ids(event), strip_ids(want), "event {i} differs from RudderStack's transformer");
    }
    let ids: HashSet<String> = rudder.message_ids().into_iter().collect();
    assert_eq!(ids.len(), 142, "every event has its own messageId");
    let last = entries.last().unwrap()["log_id"].as_str().unwrap().to_string();
    let status = app.status().await;
    assert_eq!(status["cursor"], Value::String(last.clone()));
    assert_eq!(status["outbox_depth"], 0);

    // New entries arrive; a second run picks up after the cursor and sends only them.
    let fresh = auth0.push_synthetic(37);
    let requests_before = auth0.log_requests().len();
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let events = rudder.events();
    assert_eq!(events.len(), 142 + 37, "{}", text(&out));
    let new_ids: Vec<&str> =
        events[142..].iter().map(|e| e["properties"]["log_id"].as_str().unwrap()).collect();
    let fresh_ids: Vec<&str> = fresh.iter().map(|e| e["log_id"].as_str().unwrap()).collect();
    assert_eq!(new_ids, fresh_ids);
    // The restart resumed from the cursor: its first read asked for entries after the last delivered one.
    let first = &auth0.log_requests()[requests_before];
    assert_eq!(first.query("from"), Some(last.as_str()), "the second sync must resume from the cursor");
}

/// A page whose entries are all filtered out by `log_types` still moves the cursor; only listed codes go out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_types_forwards_only_listed_codes_and_the_cursor_moves_past_the_rest() {
    let (auth0, rudder) = start_fakes().await;
    let entries = auth0.push_synthetic(250);
    let mut app = App::new(&auth0, &rudder);
    app.set("auth0", "log_types", toml::Value::Array(vec!["s".into(), "sapi".into()]));

    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let want: Vec<&str> = entries
        .iter()
        .filter(|e| matches!(e["type"].as_str(), Some("s" | "sapi")))
        .map(|e| e["log_id"].as_str().unwrap())
        .collect();
    let got: Vec<String> =
        rudder.events().iter().map(|e| e["properties"]["log_id"].as_str().unwrap().to_string()).collect();
    assert!(!want.is_empty() && want.len() < entries.len());
    assert_eq!(got, want);
    let status = app.status().await;
    assert_eq!(status["cursor"], entries.last().unwrap()["log_id"]);
    assert_eq!(status["filtered_total"], (entries.len() - want.len()) as u64);
}

/// `start = "now"` forwards nothing that existed before the first run, and everything after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_now_skips_existing_entries_and_forwards_new_ones() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(120);
    let mut app = App::new(&auth0, &rudder);
    app.set("auth0", "start", "now");
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(rudder.event_count(), 0);
    let fresh = auth0.push_synthetic(5);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let got: Vec<Value> = rudder.events().iter().map(|e| e["properties"]["log_id"].clone()).collect();
    let want: Vec<Value> = fresh.iter().map(|e| e["log_id"].clone()).collect();
    assert_eq!(got, want);
}

/// `start = "oldest"` forwards the very first retained entry too (`from` is exclusive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_oldest_forwards_the_first_entry_too() {
    let (auth0, rudder) = start_fakes().await;
    let entries = auth0.push_synthetic(30);
    let app = App::new(&auth0, &rudder);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let got: Vec<Value> = rudder.events().iter().map(|e| e["properties"]["log_id"].clone()).collect();
    let want: Vec<Value> = entries.iter().map(|e| e["log_id"].clone()).collect();
    assert_eq!(got, want);
}

/// `start` as an RFC 3339 time forwards the entries dated from that time on, the first one included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_at_a_time_forwards_entries_from_that_time_on() {
    let (auth0, rudder) = start_fakes().await;
    let entries = auth0.push_synthetic(60);
    let mut app = App::new(&auth0, &rudder);
    let t = entries[25]["date"].as_str().unwrap().to_string();
    app.set("auth0", "start", t.as_str());
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let got: Vec<Value> = rudder.events().iter().map(|e| e["properties"]["log_id"].clone()).collect();
    let want: Vec<Value> = entries[25..].iter().map(|e| e["log_id"].clone()).collect();
    assert_eq!(got, want);
}

/// `start` as a time begins at the earliest entry dated at or after it and goes on in `log_id` order, as the
/// README says: Auth0 does not keep date order, so an entry dated after the time but logged (by id) before
/// that one is not forwarded, and one dated before it but logged after is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_at_a_time_begins_at_the_earliest_entry_dated_from_it_and_goes_on_by_log_id() {
    let (auth0, rudder) = start_fakes().await;
    let t = chrono::Utc::now() - chrono::Duration::minutes(30);
    let mut entries = auth0.make_entries(6);
    // Seconds from `t`, in log_id order: the earliest dated at or after `t` is the third (+1 s).
    for (e, offset) in entries.iter_mut().zip([-10, 5, 1, -3, 10, 2]) {
        let date = t + chrono::Duration::seconds(offset);
        e["date"] = serde_json::json!(date.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    }
    auth0.push(entries.clone());
    let mut app = App::new(&auth0, &rudder);
    app.set("auth0", "start", t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true).as_str());
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let got: Vec<Value> = rudder.events().iter().map(|e| e["properties"]["log_id"].clone()).collect();
    let want: Vec<Value> = entries[2..].iter().map(|e| e["log_id"].clone()).collect();
    assert_eq!(got, want);
}

/// `start` as a `log_id` forwards the entries after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_at_a_log_id_forwards_the_entries_after_it() {
    let (auth0, rudder) = start_fakes().await;
    let entries = auth0.push_synthetic(40);
    let mut app = App::new(&auth0, &rudder);
    app.set("auth0", "start", entries[9]["log_id"].as_str().unwrap());
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let got: Vec<Value> = rudder.events().iter().map(|e| e["properties"]["log_id"].clone()).collect();
    let want: Vec<Value> = entries[10..].iter().map(|e| e["log_id"].clone()).collect();
    assert_eq!(got, want);
}

/// A whole sync of many pages mints exactly one token (each mint writes an entry into the tenant log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_serves_a_whole_sync() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(2_000);
    let app = App::new(&auth0, &rudder);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(rudder.event_count(), 2_000);
    assert!(auth0.log_requests().len() >= 20, "the sync read many pages");
    assert_eq!(auth0.tokens_minted(), 1);
}

/// In webhook mode the raw entries go to `/v1/webhook` as Log Streams wrappers, for RudderStack to transform.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_mode_posts_log_stream_wrappers() {
    let (auth0, rudder) = start_fakes().await;
    let entries = auth0.push_synthetic(130);
    let mut app = App::new(&auth0, &rudder);
    app.set("rudderstack", "mode", "webhook");
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let wrappers = rudder.wrappers();
    assert_eq!(wrappers.len(), entries.len());
    for (w, e) in wrappers.iter().zip(&entries) {
        assert_eq!(&w["log_id"], &e["log_id"]);
        assert_eq!(&w["data"], e);
    }
    assert_eq!(rudder.event_count(), 0, "nothing went to /v1/batch");
}

/// `status --json` reports the cursor, outbox depth, dead letters, and the last fetch and delivery times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_cursor_outbox_dead_letters_and_times() {
    let (auth0, rudder) = start_fakes().await;
    let mut entries = auth0.make_entries(20);
    // Three entries RudderStack can never accept: no type (we refuse to drop it silently), not an object, and
    // an object without a log_id. A real tenant does not serve the last two, so a hook injects them into the
    // page after entry 0.
    entries[3].as_object_mut().unwrap().remove("type");
    auth0.push(entries.clone());
    let tail = auth0.push_synthetic(1);
    let mut page: Vec<Value> = entries[1..].to_vec();
    page.push(Value::from(42));
    page.push(serde_json::json!({"type": "s", "date": "2026-01-01T00:00:00.000Z"}));
    page.push(tail[0].clone());
    let first_from = entries[0]["log_id"].as_str().unwrap().to_string();
    auth0.set_hook(move |req, _| {
        (req.query("from") == Some(first_from.as_str()))
            .then(|| crate::support::http::Reply::json(200, &Value::Array(page.clone())))
    });
    let mut app = App::new(&auth0, &rudder);
    app.set("auth0", "start", entries[0]["log_id"].as_str().unwrap());
    let before = chrono::Utc::now();
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = app.status().await;
    assert_eq!(s["cursor"], tail[0]["log_id"]);
    assert_eq!(s["outbox_depth"], 0);
    assert_eq!(s["dead_letters"], 3, "{s}");
    assert_eq!(s["delivered_total"], 18 + 1);
    for key in ["last_fetch_at", "last_delivery_at"] {
        let t = s[key].as_str().unwrap_or_else(|| panic!("{key} missing: {s}"));
        let t = chrono::DateTime::parse_from_rfc3339(t).unwrap();
        assert!(t >= before - chrono::Duration::seconds(1), "{key} = {t} is not from this run");
    }
    let list = app.run(&["dead-letter", "list", "--json"], Duration::from_secs(20)).await;
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    let reasons: Vec<&str> = list.as_array().unwrap().iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert!(reasons.iter().any(|r| r.contains("not a JSON object")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("type")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("no string log_id")), "{reasons:?}");
}

/// `check` passes against healthy fakes and names each failed check otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_each_failed_check() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(3);
    let mut app = App::new(&auth0, &rudder);
    let out = app.run(&["check"], Duration::from_secs(30)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    app.set("rudderstack", "write_key", "not-the-key");
    let out = app.run(&["check"], Duration::from_secs(30)).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAILED  rudderstack"), "{stdout}");
    assert!(stdout.contains("ok      auth0 logs"), "{stdout}");

    // A token, but no log page: the application lacks read:logs.
    app.set("rudderstack", "write_key", WRITE_KEY);
    auth0.tenant().set_hook(|req, _| {
        (req.path == "/api/v2/logs").then(|| {
            crate::support::http::Reply::json(
                403,
                &serde_json::json!({"statusCode": 403, "error": "Forbidden", "message": "Insufficient scope, expected any of: read:logs", "errorCode": "insufficient_scope"}),
            )
        })
    });
    let out = app.run(&["check"], Duration::from_secs(30)).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ok      auth0 token") && stdout.contains("ok      rudderstack"), "{stdout}");
    let logs = stdout.lines().find(|l| l.contains("auth0 logs")).unwrap_or_default();
    assert!(logs.starts_with("FAILED") && logs.contains("read:logs"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 check failed: auth0 logs"), "{}", text(&out));
    auth0.tenant().clear_hook();

    app.set("auth0", "client_secret", "wrong-secret");
    let out = app.run(&["check"], Duration::from_secs(30)).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAILED  auth0 token"), "{stdout}");
    assert!(!stdout.contains("wrong-secret"), "{stdout}");
}

/// RudderStack rejects two events on their own: bisection sets exactly those aside with the gateway's reason,
/// everything else arrives in order, and `dead-letter retry` re-queues them for a later sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_events_become_dead_letters_and_retry_requeues_them() {
    let (auth0, rudder) = start_fakes().await;
    let entries = auth0.push_synthetic(120);
    let bad: Vec<Value> = vec![entries[17]["log_id"].clone(), entries[88]["log_id"].clone()];
    let bad_for_fake = bad.clone();
    rudder.reject_events("request neither has anonymousId nor userId", move |e| {
        bad_for_fake.contains(&e["properties"]["log_id"])
    });
    let app = App::new(&auth0, &rudder);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let got: Vec<Value> = rudder.events().iter().map(|e| e["properties"]["log_id"].clone()).collect();
    let want: Vec<Value> =
        entries.iter().map(|e| e["log_id"].clone()).filter(|id| !bad.contains(id)).collect();
    assert_eq!(got, want);
    let list = app.run(&["dead-letter", "list", "--json"], Duration::from_secs(20)).await;
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    for d in list {
        assert!(bad.contains(&Value::String(d["log_id"].as_str().unwrap().into())));
        assert!(d["reason"].as_str().unwrap().contains("neither has anonymousId nor userId"), "{d}");
    }

    rudder.clear_reject();
    let out = app.run(&["dead-letter", "retry"], Duration::from_secs(20)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let late: Vec<Value> = rudder.events()[118..].iter().map(|e| e["properties"]["log_id"].clone()).collect();
    assert_eq!(late, bad);
    assert_eq!(app.status().await["dead_letters"], 0);
}

/// A delivery in which RudderStack rejects as many events as it accepts, or rejects the only one, is still
/// settled: the rejected event becomes a dead letter, the accepted one arrives once, and nothing is resent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_that_rejects_as_many_events_as_it_accepts_is_settled() {
    let (auth0, rudder) = start_fakes().await;
    let app = App::new(&auth0, &rudder);
    let alone = auth0.push_synthetic(1);
    let rejected = alone[0]["log_id"].clone();
    let pair = auth0.push_synthetic(2);
    let rejected_too = pair[1]["log_id"].clone();
    rudder.reject_events("request neither has anonymousId nor userId", move |e| {
        e["properties"]["log_id"] == rejected || e["properties"]["log_id"] == rejected_too
    });
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let got: Vec<Value> = rudder.events().iter().map(|e| e["properties"]["log_id"].clone()).collect();
    assert_eq!(got, vec![pair[0]["log_id"].clone()], "the accepted event, once");
    let s = app.status().await;
    assert_eq!((s["dead_letters"].as_u64(), s["outbox_depth"].as_u64()), (Some(2), Some(0)), "{s}");
}

/// An event larger than `rudderstack.max_event_bytes` is set aside without being sent, with its size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_max_event_bytes_is_a_dead_letter() {
    let (auth0, rudder) = start_fakes().await;
    let mut entries = auth0.make_entries(10);
    entries[4]["details"] = serde_json::json!({ "blob": "x".repeat(40_000) });
    auth0.push(entries.clone());
    let app = App::new(&auth0, &rudder);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(rudder.event_count(), 9);
    let list = app.run(&["dead-letter", "list", "--json"], Duration::from_secs(20)).await;
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list[0]["log_id"], entries[4]["log_id"]);
    assert!(list[0]["reason"].as_str().unwrap().contains("32000"), "{list}");
}

/// Every entry arrived at least once, in log order by first arrival, and every copy carries the messageId of
/// its first delivery; returns how many copies there were.
fn assert_each_arrived_in_order_with_stable_ids(events: &[Value], entries: &[Value]) -> usize {
    let mut first: HashMap<String, String> = HashMap::new();
    let mut order = Vec::new();
    let mut copies = 0;
    for e in events {
        let log_id = e["properties"]["log_id"].as_str().unwrap().to_string();
        let mid = e["messageId"].as_str().unwrap().to_string();
        match first.get(&log_id) {
            Some(m) => {
                copies += 1;
                assert_eq!(m, &mid, "{log_id} was sent again with another messageId");
            }
            None => {
                first.insert(log_id.clone(), mid);
                order.push(log_id);
            }
        }
    }
    let want: Vec<String> = entries.iter().map(|e| e["log_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(order, want, "every entry, in log order");
    copies
}

/// Over TLS, through gzipped chunked pages repeating entries below the cursor, a sync delivers all in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_over_tls_through_gzip_chunked_pages_that_repeat_entries_delivers_each_in_order() {
    let tls = crate::support::http::generate_tls();
    let auth0 = FakeAuth0::start_tls(
        FakeOptions {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            below_cursor: 3,
            gzip_pages: true,
            chunked_pages: Some(Chunking { size: 1_500, delay: None }),
            ..FakeOptions::realistic()
        },
        &tls,
    )
    .await;
    let rudder = FakeRudderStack::start_tls(
        fake_rudderstack::Options {
            write_keys: vec![WRITE_KEY.into()],
            ..fake_rudderstack::Options::default()
        },
        &tls,
    )
    .await;
    let gzip_asked = Arc::new(Mutex::new(Vec::new()));
    let seen = gzip_asked.clone();
    auth0.set_hook(move |req: &Request, _| {
        if req.path == "/api/v2/logs" && req.query("from").is_some() {
            seen.lock().unwrap().push(req.accepts_gzip());
        }
        None
    });
    let entries = auth0.push_synthetic(450);
    let mut app = App::new(&auth0, &rudder);
    let ca = app.dir.path().join("ca.pem");
    tls.write_ca(&ca).unwrap();
    let ca = ca.display().to_string();
    app.set("auth0", "tls_ca_file", ca.as_str()).set("rudderstack", "tls_ca_file", ca.as_str());
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let copies = assert_each_arrived_in_order_with_stable_ids(&rudder.events(), &entries);

    let asked = gzip_asked.lock().unwrap().clone();
    assert!(asked.len() >= 5 && asked.iter().all(|g| *g), "every page request must accept gzip: {asked:?}");
    let chunked = auth0.server().stream_ends().len();
    assert!(chunked >= asked.len() - 1, "{chunked} chunked pages for {} page requests", asked.len());
    let s = app.status().await;
    assert_eq!(s["cursor"], entries[449]["log_id"], "{s}");
    assert!(s["repeated_total"].as_u64().unwrap() >= 4, "the entry equal to the cursor was skipped: {s}");
    assert!(copies > 0, "entries below the cursor were served again but never re-sent");
    assert_eq!(s["dead_letters"], 0, "{s}");
}

/// `state.synchronous` is in effect on every connection the daemon opens: NORMAL by default, FULL when set,
/// as SQLite itself reports it back; a sync works either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_synchronous_full_is_in_effect_on_every_connection() {
    for (setting, expected) in [(None, "NORMAL"), (Some("full"), "FULL")] {
        let (auth0, rudder) = start_fakes().await;
        let entries = auth0.push_synthetic(150);
        let mut app = App::new(&auth0, &rudder);
        if let Some(v) = setting {
            app.set("state", "synchronous", v);
        }
        let mut cmd = app.command(&["--log-format", "json", "sync"]);
        cmd.env("RUST_LOG", "debug");
        let out = run_bounded(cmd, Duration::from_secs(60)).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert_eq!(rudder.event_count(), entries.len());
        let levels: Vec<String> = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["fields"]["message"] == "state database connection open")
            .map(|v| v["fields"]["synchronous"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(levels, vec![expected; 3], "{setting:?}: {}", text(&out));
    }
}

/// Wait until `status --json` satisfies `f`, for at most `limit`.
async fn wait_for_status(app: &App, limit: Duration, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let s = app.status().await;
        if f(&s) || Instant::now() >= deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `dead-letter retry` while `run` is active is delivered at once, without waiting for a page or poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_retry_while_run_is_active_is_delivered_without_waiting_for_a_page() {
    let (auth0, rudder) = start_fakes().await;
    let entries = auth0.push_synthetic(30);
    let bad = entries[7]["log_id"].clone();
    let refused = bad.clone();
    rudder.reject_events("request neither has anonymousId nor userId", move |e| {
        e["properties"]["log_id"] == refused
    });
    let mut app = App::new(&auth0, &rudder);
    app.set("auth0", "poll_interval", "1h");
    let child = app.spawn_run();
    rudder.wait_for_events(29, Duration::from_secs(30)).await;
    let s = wait_for_status(&app, Duration::from_secs(30), |s| s["dead_letters"] == 1).await;
    assert_eq!(s["dead_letters"], 1, "{s}");
    rudder.clear_reject();

    let pages = auth0.log_requests().len();
    let out = app.run(&["dead-letter", "retry"], Duration::from_secs(20)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // The daemon is woken by the retry's commit. Neither its poll (an hour) nor the watcher's safety poll
    // (a minute) could deliver within this bound, which is loose only for a loaded machine.
    let retried_at = Instant::now();
    let events = rudder.wait_for_events(30, Duration::from_secs(10)).await;
    assert_eq!(events.len(), 30, "not delivered within {:?} of the retry", retried_at.elapsed());
    assert_eq!(events[29]["properties"]["log_id"], bad);
    assert_eq!(auth0.log_requests().len(), pages, "a page was fetched before the retried event went out");
    let s = wait_for_status(&app, Duration::from_secs(30), |s| s["outbox_depth"] == 0).await;
    assert_eq!((s["outbox_depth"].clone(), s["dead_letters"].clone()), (0.into(), 0.into()), "{s}");
    let status = sigterm(child).await;
    assert_eq!(status.code(), Some(0), "{}", app.run_log());
}

/// Webhook mode through `run`: key in the query only, a refused wrapper set aside and retried, rest in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_mode_runs_end_to_end_through_the_binary() {
    let (auth0, rudder) = start_fakes().await;
    let mut entries = auth0.push_synthetic(60);
    let bad = entries[13]["log_id"].clone();
    let refused = bad.clone();
    rudder.reject_events("TypeError: Cannot read properties of undefined", move |w| w["log_id"] == refused);
    let mut app = App::new(&auth0, &rudder);
    app.set("rudderstack", "mode", "webhook");
    let child = app.spawn_run();
    rudder.wait_for_wrappers(59, Duration::from_secs(30)).await;
    entries.extend(auth0.push_synthetic(20));
    let wrappers = rudder.wait_for_wrappers(79, Duration::from_secs(30)).await;
    let want: Vec<&Value> = entries.iter().filter(|e| e["log_id"] != bad).collect();
    assert_eq!(wrappers.len(), want.len());
    for (w, e) in wrappers.iter().zip(&want) {
        assert_eq!((&w["log_id"], &w["data"]), (&e["log_id"], *e));
    }
    let s = wait_for_status(&app, Duration::from_secs(30), |s| s["dead_letters"] == 1).await;
    assert_eq!(s["dead_letters"], 1, "{s}");

    rudder.clear_reject();
    let out = app.run(&["dead-letter", "retry"], Duration::from_secs(20)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let wrappers = rudder.wait_for_wrappers(80, Duration::from_secs(30)).await;
    assert_eq!(wrappers[79]["log_id"], bad);
    let status = sigterm(child).await;
    assert_eq!(status.code(), Some(0), "{}", app.run_log());

    let requests = rudder.requests();
    assert!(requests.iter().all(|r| r.path == "/v1/webhook"), "everything went to /v1/webhook");
    assert!(
        requests.iter().all(|r| r
            .key
            .as_ref()
            .is_some_and(|(from, key)| *from == KeySource::Query && key == WRITE_KEY)
            && r.authorization.is_none()),
        "the key travels in the query string only"
    );
    assert_eq!(rudder.event_count(), 0, "nothing went to /v1/batch");
}

/// `run` polls at once again after a full page: with `poll_interval = "1h"`, 35 entries in pages of 10 all
/// arrive within seconds, read by four checkpoint requests (10, 10, 10 and 4 entries) and no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reads_the_next_page_at_once_after_a_full_page() {
    let (auth0, rudder) = start_fakes().await;
    let entries = auth0.push_synthetic(35);
    let mut app = App::new(&auth0, &rudder);
    app.set("auth0", "page_size", 10);
    app.set("auth0", "poll_interval", "1h");
    let child = app.spawn_run();
    // An hour's poll could deliver only the first page within this bound.
    let events = rudder.wait_for_events(35, Duration::from_secs(20)).await;
    let got: Vec<&Value> = events.iter().map(|e| &e["properties"]["log_id"]).collect();
    let want: Vec<&Value> = entries.iter().map(|e| &e["log_id"]).collect();
    assert_eq!(got, want, "{}", app.run_log());
    let pages: Vec<String> = auth0
        .log_requests()
        .iter()
        .filter_map(|r| r.query("from").map(|f| format!("from={f} take={:?}", r.query("take"))))
        .collect();
    // The bootstrap found the first entry; the other 34 took three full pages and one short one.
    assert_eq!(pages.len(), 4, "{pages:?}");
    assert!(pages.iter().all(|p| p.ends_with("take=Some(\"10\")")), "{pages:?}");
    let status = sigterm(child).await;
    assert_eq!(status.code(), Some(0), "{}", app.run_log());
}

/// Secrets kept in files of their own (`client_secret_file`, `write_key_file`, mode 600), none in the config:
/// `sync` delivers with them and logs no warning. Made readable by their group, each file gets a warning that
/// names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_private_files_of_their_own_work_without_a_warning_and_group_readable_ones_warn() {
    use std::os::unix::fs::PermissionsExt;
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(10);
    let mut app = App::new(&auth0, &rudder);
    let secret = app.dir.path().join("client_secret");
    let key = app.dir.path().join("write_key");
    std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).unwrap();
    std::fs::write(&key, format!("{WRITE_KEY}\n")).unwrap();
    for f in [&secret, &key] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    app.unset("auth0", "client_secret").set("auth0", "client_secret_file", secret.display().to_string());
    app.unset("rudderstack", "write_key").set("rudderstack", "write_key_file", key.display().to_string());
    // `sync` never polls; a poll interval at least the timeout keeps the config free of any other warning.
    app.set("auth0", "poll_interval", "5s");
    // The config itself readable by all: it holds no secret, so that is no reason to warn either.
    std::fs::set_permissions(app.config_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(rudder.event_count(), 10);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("WARN"), "{err}");

    for f in [&secret, &key] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o640)).unwrap();
    }
    let out = app.run(&["status"], Duration::from_secs(20)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for f in [&secret, &key] {
        let line =
            err.lines().find(|l| l.contains(&f.display().to_string())).unwrap_or_else(|| panic!("{err}"));
        assert!(
            line.contains("WARN") && line.contains("readable by its group") && line.contains("chmod 600"),
            "{line}"
        );
    }
    assert!(!err.contains(CLIENT_SECRET) && !err.contains(WRITE_KEY));
}

/// `RUST_LOG=debug` adds a line per page read and per delivery: as many as the fakes saw checkpoint requests
/// and batch requests, and commit lines that together count every event; at the default level there are none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_debug_adds_a_line_per_page_read_and_per_delivery() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(25);
    let mut app = App::new(&auth0, &rudder);
    app.set("auth0", "page_size", 10).set("rudderstack", "max_batch_events", 5);
    let mut cmd = app.command(&["sync"]);
    cmd.env("RUST_LOG", "debug");
    let out = run_bounded(cmd, Duration::from_secs(60)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(rudder.event_count(), 25);
    let err = String::from_utf8_lossy(&out.stderr);
    let pages =
        err.lines().filter(|l| l.contains("DEBUG") && l.contains("read a page of /api/v2/logs")).count();
    // A delivery is one request to RudderStack; the rows of several may be committed together.
    let deliveries =
        err.lines().filter(|l| l.contains("DEBUG") && l.contains("RudderStack answered")).count();
    let commits: usize = err
        .lines()
        .filter(|l| l.contains("DEBUG") && l.contains("delivery committed"))
        .filter_map(|l| l.split("delivered=").nth(1)?.split_whitespace().next()?.parse::<usize>().ok())
        .sum();
    assert_eq!(commits, 25, "the commits cover every event: {err}");
    let page_requests = auth0.log_requests().iter().filter(|r| r.query("from").is_some()).count();
    let accepted = rudder.requests().iter().filter(|r| r.path == "/v1/batch" && r.status == 200).count();
    assert!(page_requests >= 3 && accepted >= 5, "{page_requests} pages, {accepted} batches");
    assert_eq!((pages, deliveries), (page_requests, accepted), "{err}");

    auth0.push_synthetic(5);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("DEBUG"), "{}", text(&out));
}
