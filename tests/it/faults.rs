//! Losing nothing under crashes, outages, rate limits and bad input: each failure that users of other Auth0
//! log pullers reported, injected into the fakes and driven through the real binary.

use std::collections::{BTreeMap, HashSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use chrono::Utc;
use serde_json::Value;

use crate::support::app::{
    App, CLIENT_ID, CLIENT_SECRET, WRITE_KEY, run_bounded, sigterm_within, text, wait_until,
};
use auth0_rudderstack::store::{Store, StoreError};

use crate::support::fake_auth0::{Bucket, DOMAIN, ExpiredFrom, FakeAuth0, FakeOptions, synthetic_entry};
use crate::support::fake_rudderstack::{self, FakeRudderStack, Refusal, Refusing};
use crate::support::http::{Reply, Request};
use crate::support::start_fakes;

fn delivered_log_ids(rudder: &FakeRudderStack) -> Vec<String> {
    rudder
        .events()
        .iter()
        .map(|e| e["properties"]["log_id"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn log_ids(entries: &[Value]) -> Vec<String> {
    entries.iter().map(|e| e["log_id"].as_str().unwrap().to_string()).collect()
}

/// Every entry delivered at least once, and in first-delivery order equal to the log order.
fn assert_all_delivered_in_order(rudder: &FakeRudderStack, entries: &[Value]) {
    let mut seen = HashSet::new();
    let firsts: Vec<String> =
        delivered_log_ids(rudder).into_iter().filter(|id| seen.insert(id.clone())).collect();
    assert_eq!(firsts, log_ids(entries), "every entry must reach RudderStack, in log order");
}

fn open_db(app: &App) -> rusqlite::Connection {
    rusqlite::Connection::open(app.db_path()).expect("open the state database")
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// SIGKILL 24 times in a catch-up, often mid-delivery: the file stays sound, nothing lost, ids kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_and_duplicates_keep_their_message_id() {
    // Half the kills come at random moments, half just after RudderStack stored a batch whose answer the
    // daemon has not read yet. Kills go on until 24 have landed, 20 of them interrupting work (entries logged
    // but not yet delivered) and 8 mid-delivery (rows still in the outbox, events of this round delivered):
    // the budget follows what was observed, not how fast the machine is, within 300 rounds. Once the database was first created it must exist and
    // pass `PRAGMA integrity_check` after every kill, with the cursor never ahead of the outbox and the
    // deliveries; in the end every entry arrived, some more than once, each copy with its first messageId.
    const KILLS: usize = 24;
    const INTERRUPTING: usize = 20;
    const MID_DELIVERY: usize = 8;
    const CATCH_UP: usize = 5_000;
    let (auth0, rudder) = start_fakes().await;
    // RudderStack stores a batch, then answers 25 ms later: a window between storing and deleting.
    rudder.set_delay(Some(Duration::from_millis(25)));
    auth0.push_synthetic(CATCH_UP);
    let mut app = App::new(&auth0, &rudder);
    app.set("rudderstack", "max_batch_events", 50);

    let (mut kills, mut mid_delivery, mut interrupting, mut rounds) = (0, 0, 0, 0);
    let mut database_seen = false;
    while kills < KILLS || interrupting < INTERRUPTING || mid_delivery < MID_DELIVERY {
        rounds += 1;
        assert!(
            rounds <= 300,
            "{kills} kills, {interrupting} interrupting work, {mid_delivery} mid-delivery, in {rounds} rounds"
        );
        // Keep new entries arriving so there is always work to interrupt.
        auth0.push_synthetic(150);
        let delivered_before = rudder.event_count();
        let mut child = app.command(&["sync"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let at_delivery = rounds % 2 == 0;
        let moment = async {
            if at_delivery {
                // As soon as RudderStack stored the n-th batch of this round, before its answer is read.
                let batches = fastrand::usize(1..=4);
                let deadline = Instant::now() + Duration::from_secs(30);
                while rudder.event_count() < delivered_before + 50 * batches && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            } else {
                tokio::time::sleep(Duration::from_millis(fastrand::u64(5..250))).await;
            }
        };
        tokio::select! {
            status = child.wait() => {
                assert!(status.unwrap().success(), "sync failed on its own");
                continue;
            }
            _ = moment => {
                child.start_kill().unwrap();
                child.wait().await.unwrap();
            }
        }
        if !app.db_path().exists() {
            // Only a run killed before it created the file may leave none.
            assert!(!database_seen, "the database vanished after kill {kills}");
            continue;
        }
        let db = open_db(&app);
        let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok", "database damaged after kill {kills}");
        drop(db);
        let store = match Store::open_existing(&app.db_path()) {
            Ok(store) => store,
            // Killed while creating it, before its schema was committed: the next run starts afresh.
            Err(StoreError::Missing { .. }) if !database_seen => continue,
            Err(e) => panic!("after kill {kills}: {e}"),
        };
        database_seen = true;
        kills += 1;
        if distinct_delivered(&rudder) < auth0.entries().len() {
            interrupting += 1;
        }
        let outbox: HashSet<String> =
            store.outbox_head(DOMAIN, usize::MAX).unwrap().into_iter().map(|r| r.log_id).collect();
        if !outbox.is_empty() && rudder.event_count() > delivered_before {
            mid_delivery += 1;
        }
        if let Some(cursor) = store.cursor(DOMAIN).unwrap().map(|c| c.log_id.to_string()) {
            let delivered: HashSet<String> = delivered_log_ids(&rudder).into_iter().collect();
            for id in log_ids(&auth0.entries()) {
                if id.as_str() > cursor.as_str() {
                    break;
                }
                assert!(
                    outbox.contains(&id) || delivered.contains(&id),
                    "entry {id} is at or before the cursor {cursor} but neither in the outbox nor delivered (kill {kills})"
                );
            }
        }
    }
    rudder.set_delay(None);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let entries = auth0.entries();
    assert_all_delivered_in_order(&rudder, &entries);
    let mut first_id: BTreeMap<String, String> = BTreeMap::new();
    let mut duplicates = 0;
    for e in rudder.events() {
        let log_id = e["properties"]["log_id"].as_str().unwrap().to_string();
        let mid = e["messageId"].as_str().unwrap().to_string();
        match first_id.get(&log_id) {
            Some(first) => {
                duplicates += 1;
                assert_eq!(first, &mid, "a resent {log_id} must carry its first messageId");
            }
            None => {
                first_id.insert(log_id, mid);
            }
        }
    }
    assert!(
        duplicates > 0,
        "no kill between storing and deleting led to a re-send, so no messageId was compared"
    );
    eprintln!(
        "kills: {kills} ({mid_delivery} mid-delivery, {interrupting} interrupting work) in {rounds} rounds, entries: {}, duplicates compared: {duplicates}",
        entries.len()
    );
}

/// Against Auth0's bucket, with or without `Retry-After`, a catch-up keeps its pace and gets at most 1% 429s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_catch_up_stays_within_the_rate_limit_with_or_without_retry_after() {
    // The x-ratelimit-* headers come on every answer. The pace never exceeds max_requests_per_second, at most
    // 1% of requests get a 429, and everything is delivered. How much of the budget is used is a benchmark
    // figure (`cargo bench --bench pipeline`, "Budget").
    for retry_after_header in [true, false] {
        let auth0 = FakeAuth0::start(FakeOptions {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            bucket: Some(Bucket { burst: 10, per_second: 10.0 }),
            retry_after_header,
            ..FakeOptions::realistic()
        })
        .await;
        let (_unused, rudder) = start_fakes().await;
        let entries = auth0.push_synthetic(4_000);
        let mut app = App::new(&auth0, &rudder);
        app.set("auth0", "max_requests_per_second", 10.0);
        let out = app.sync().await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert_all_delivered_in_order(&rudder, &entries);

        let reqs = auth0.log_requests();
        assert!(reqs.len() >= 40, "{} requests", reqs.len());
        let limited = reqs.iter().filter(|r| r.status == 429).count();
        assert!(limited * 100 <= reqs.len(), "{limited} of {} requests got a 429", reqs.len());
        // Request starts are at least 100 ms apart, so the span is at least that many intervals; scheduling
        // noise can only stretch it.
        let span = reqs.last().unwrap().at.duration_since(reqs[0].at);
        let least = Duration::from_millis(100) * (reqs.len() as u32 - 1);
        assert!(
            span + Duration::from_millis(100) >= least,
            "Retry-After {retry_after_header}: {} requests in {span:?}, faster than 10 a second",
            reqs.len()
        );
    }
}

/// After a 429 the next request waits for the later of `Retry-After` and `x-ratelimit-reset`: a reset 3 s
/// away outlasts `Retry-After: 1`, and `Retry-After: 2` outlasts a reset that has already passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_honoured_until_the_later_of_retry_after_and_x_ratelimit_reset() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(500);
    let too_many = |retry_after: &str, reset: i64| {
        Reply::json(
            429,
            &serde_json::json!({"statusCode":429,"error":"Too Many Requests","message":"Global limit has been reached"}),
        )
        .header("retry-after", retry_after)
        .header("x-ratelimit-remaining", "0")
        .header("x-ratelimit-reset", &reset.to_string())
    };
    auth0.set_hook(move |req: &Request, n| {
        if req.path != "/api/v2/logs" {
            return None;
        }
        let now = Utc::now().timestamp();
        match n {
            3 => Some(too_many("1", now + 3)),
            6 => Some(too_many("2", now - 1)),
            _ => None,
        }
    });
    let mut app = App::new(&auth0, &rudder);
    app.set("auth0", "page_size", 50);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(rudder.event_count(), 500);
    let reqs = auth0.log_requests();
    let refused: Vec<usize> = (0..reqs.len()).filter(|&i| reqs[i].status == 429).collect();
    assert_eq!(refused.len(), 2, "{reqs:?}");
    // The reset is whole epoch seconds; the wall clock and the monotonic one may disagree by a few ms.
    let (first, next) = (&reqs[refused[0]], &reqs[refused[0] + 1]);
    let reset = UNIX_EPOCH + Duration::from_secs(first.reset.expect("a reset"));
    assert!(
        next.wall + Duration::from_millis(50) >= reset,
        "asked again {:?} before x-ratelimit-reset, after Retry-After: 1",
        reset.duration_since(next.wall).unwrap_or_default()
    );
    let (second, next) = (&reqs[refused[1]], &reqs[refused[1] + 1]);
    let waited = next.at.duration_since(second.at);
    assert!(waited >= Duration::from_secs(2), "asked again after {waited:?}, before Retry-After: 2 ran out");
}

/// With tokens that live 3 s, a fifth of all Auth0 requests failing and a 5-requests-a-second bucket, `sync`
/// delivers 1,500 entries in order within 60 s: a token serves until it expires, the next one is minted 5 s
/// after the last (never sooner), no request carries an expired token, and the short lifetime is warned
/// about once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_second_tokens_with_faults_and_a_rate_limit_stall_nothing() {
    let auth0 = FakeAuth0::start(FakeOptions {
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        expires_in: 3,
        bucket: Some(Bucket { burst: 5, per_second: 5.0 }),
        ..FakeOptions::realistic()
    })
    .await;
    // Every fifth request, token or page, answers 500 or 503.
    auth0.set_hook(|_: &Request, n| {
        (n % 5 == 3).then(|| {
            let status = if n % 10 == 3 { 500 } else { 503 };
            Reply::json(
                status,
                &serde_json::json!({"statusCode": status, "error": "fault", "message": "fault"}),
            )
        })
    });
    let (_unused, rudder) = start_fakes().await;
    let entries = auth0.push_synthetic(1_500);
    let mut app = App::new(&auth0, &rudder);
    app.set("auth0", "max_requests_per_second", 5.0);
    app.set("auth0", "page_size", 50);
    let started = Instant::now();
    let out = app.run(&["sync"], Duration::from_secs(60)).await;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_all_delivered_in_order(&rudder, &entries);
    let recorded = auth0.recorded();
    let faults = recorded.iter().filter(|r| r.status >= 500).count();
    assert!(faults * 6 >= recorded.len(), "{faults} faults in {} requests", recorded.len());
    let mints: Vec<Instant> =
        recorded.iter().filter(|r| r.path == "/oauth/token" && r.status == 200).map(|r| r.at).collect();
    assert!(mints.len() >= 2, "the sync outlived one token: {} mints", mints.len());
    // The daemon spaces the moments it asks for tokens 5 s apart; the fake records when it serves each
    // request, which a loaded machine can delay by a fraction of a second. Without the spacing, the
    // refreshes of a 3-second token would come 2.4 s apart.
    for pair in mints.windows(2) {
        let apart = pair[1] - pair[0];
        assert!(apart >= Duration::from_millis(4_750), "two tokens minted {apart:?} apart");
    }
    assert_eq!(auth0.log_requests_with(401), 0, "no request may carry an expired token");
    let err = stderr(&out);
    assert_eq!(err.matches("lives less than a minute").count(), 1, "{err}");
    assert!(err.contains("raise the Token Expiration"), "{err}");
    eprintln!(
        "1,500 entries in {took:?}, {} mints, {faults} faults in {} requests",
        mints.len(),
        recorded.len()
    );
}

/// Wrong credentials: exit 1 with a message that says which credential was rejected, and nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_exit_1_naming_the_rejected_credential() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(10);
    let mut app = App::new(&auth0, &rudder);
    app.set("auth0", "client_secret", "not-the-secret");
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = stderr(&out);
    assert!(err.contains(CLIENT_ID) && err.contains("rejected"), "{err}");
    assert!(!err.contains("not-the-secret"), "{err}");

    let mut app = App::new(&auth0, &rudder);
    app.set("rudderstack", "write_key", "not-the-write-key");
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = stderr(&out);
    assert!(err.contains("write key"), "{err}");
    assert!(!err.contains("not-the-write-key"), "{err}");
    // What was fetched before the sender hit the rejection waits in the outbox for a corrected key.
    let s = app.status().await;
    assert!(s["outbox_depth"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["delivered_total"], 0, "{s}");
    app.set("rudderstack", "write_key", WRITE_KEY);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(rudder.event_count(), 10);
}

/// The lower bound of the wait after the `k`-th failure in a row (from 1): the backoff doubles from
/// `initial` up to `cap`, and jitter only adds to it.
fn least_backoff(initial: Duration, cap: Duration, k: u32) -> Duration {
    (initial * 2u32.saturating_pow(k.saturating_sub(1).min(20))).min(cap)
}

/// Auth0 faults of every kind are retried with growing waits, a slow reply is cut at the timeout, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth0_faults_are_retried_and_the_cursor_never_moves_wrongly() {
    // 20% of requests answer 500, 502 or 503, four in a row do, one is slow past the timeout, one connection
    // resets and one body is truncated. Every entry arrives exactly once, in order; after every failure the next
    // request waits at least the backoff, which doubles with each failure in a row.
    const SLOW: u64 = 4;
    const RESET: u64 = 7;
    const TRUNCATED: u64 = 9;
    const STREAK: std::ops::RangeInclusive<u64> = 12..=15;
    let (auth0, rudder) = start_fakes().await;
    let entries = auth0.push_synthetic(3_000);
    let page = serde_json::to_vec(&entries[..100]).unwrap();
    auth0.set_hook(move |req: &Request, n| {
        if req.path != "/api/v2/logs" {
            return None;
        }
        match n {
            SLOW => Some(Reply::new(200, "[]").delayed(Duration::from_secs(3))),
            RESET => Some(Reply::Reset),
            TRUNCATED => Some(Reply::Truncate {
                status: 200,
                headers: vec![],
                body: page.clone(),
                keep: page.len() / 2,
            }),
            n if STREAK.contains(&n) => Some(Reply::text(503, "Service Unavailable")),
            _ if fastrand::u8(0..100) < 20 => Some(Reply::text(
                [500, 502, 503][fastrand::usize(0..3)],
                "Logs Service server responded with an internal error",
            )),
            _ => None,
        }
    });
    let mut app = App::new(&auth0, &rudder);
    app.set("auth0", "timeout", "1s");
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let delivered = delivered_log_ids(&rudder);
    assert_eq!(delivered, log_ids(&entries), "exactly every entry, once, in order");

    // Requests go out one at a time, so the record's order is the hook's numbering (from 1).
    let recorded = auth0.recorded();
    let failed = |n: u64, status: u16| [SLOW, RESET, TRUNCATED].contains(&n) || status >= 500;
    let numbered: Vec<(u64, &crate::support::fake_auth0::Recorded)> = recorded
        .iter()
        .enumerate()
        .map(|(i, r)| (i as u64 + 1, r))
        .filter(|(_, r)| r.path == "/api/v2/logs")
        .collect();
    assert!(
        STREAK.clone().all(|n| numbered.iter().any(|(m, r)| *m == n && r.status == 503)),
        "the streak fired"
    );
    let (initial, cap) = (Duration::from_millis(20), Duration::from_millis(200));
    let mut in_a_row = 0;
    let mut longest = 0;
    for w in numbered.windows(2) {
        let ((n, r), (_, next)) = (w[0], w[1]);
        if !failed(n, r.status) {
            in_a_row = 0;
            continue;
        }
        in_a_row += 1;
        longest = longest.max(in_a_row);
        let waited = next.at.duration_since(r.at);
        let least = least_backoff(initial, cap, in_a_row)
            + if n == SLOW { Duration::from_secs(1) } else { Duration::ZERO };
        assert!(waited >= least, "request {n} (failure {in_a_row} in a row): the next came after {waited:?}");
    }
    assert!(longest >= 4, "no streak of failures was checked");
    assert!(
        stderr(&out).contains("timed out"),
        "the slow reply was not given up at the timeout:\n{}",
        text(&out)
    );
}

/// Consecutive failures back off exponentially, with jitter, up to the cap, and every logged wait is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_back_off_exponentially_up_to_the_cap() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(10);
    auth0.set_hook(|req: &Request, _| {
        (req.path == "/api/v2/logs").then(|| Reply::text(503, "Service Unavailable"))
    });
    let mut app = App::new(&auth0, &rudder);
    app.set("retry", "initial_backoff", "50ms").set("retry", "max_backoff", "400ms");
    app.set("retry", "sync_give_up_after", "4s");
    let out = app.run(&["--log-format", "json", "sync"], Duration::from_secs(60)).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let waits: Vec<Duration> = stderr(&out)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["fields"]["retry_in"].as_str().map(|w| humantime::parse_duration(w).unwrap()))
        .collect();
    assert!(waits.len() >= 6, "{waits:?}\n{}", text(&out));
    let (initial, cap) = (Duration::from_millis(50), Duration::from_millis(400));
    for (k, w) in waits.iter().enumerate() {
        let least = least_backoff(initial, cap, k as u32 + 1);
        assert!(*w >= least && *w < least * 2, "wait {k} is {w:?}, expected [{least:?}, {:?})", least * 2);
    }
    let capped: Vec<&Duration> = waits.iter().filter(|w| **w >= cap).collect();
    assert!(capped.len() >= 2 && capped.windows(2).any(|w| w[0] != w[1]), "no jitter: {waits:?}");
    // Each wait was kept: one request per failure, none before the wait after the one before it was over.
    let reqs = auth0.log_requests();
    assert_eq!(reqs.len(), waits.len() + 1, "one request per logged wait, and the last one gave up");
    for (i, w) in reqs.windows(2).enumerate() {
        let gap = w[1].at.duration_since(w[0].at);
        assert!(
            gap >= waits[i],
            "request {} came {gap:?} after a failure that asked for {:?}",
            i + 1,
            waits[i]
        );
    }
}

/// `sync` gives up only after `retry.sync_give_up_after`, with exit 1 and a clear message; `run` never exits
/// for the same faults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_gives_up_after_the_configured_wait_but_run_keeps_going() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(10);
    auth0.set_hook(|req: &Request, _| (req.path == "/api/v2/logs").then(|| Reply::text(502, "Bad Gateway")));
    let mut app = App::new(&auth0, &rudder);
    app.set("retry", "sync_give_up_after", "2s");
    let started = Instant::now();
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(started.elapsed() >= Duration::from_secs(2), "gave up early");
    let err = stderr(&out);
    assert!(err.contains("gave up") && err.contains("502"), "{err}");

    // `run` meets the same faults again and again, for longer than sync_give_up_after, and stays up.
    let refused = auth0.log_requests_with(502);
    let mut child = app.spawn_run();
    let started = Instant::now();
    let met = wait_until(Duration::from_secs(60), || {
        auth0.log_requests_with(502) >= refused + 10 && started.elapsed() >= Duration::from_secs(3)
    })
    .await;
    assert!(met, "run did not keep retrying:\n{}", app.run_log());
    assert!(child.try_wait().unwrap().is_none(), "run exited under transient faults:\n{}", app.run_log());
    auth0.clear_hook();
    assert!(rudder.wait_for_events(10, Duration::from_secs(20)).await.len() >= 10);
    let (status, _) = sigterm_within(child, Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0));
}

/// A RudderStack outage fills the outbox to its cap, where fetching pauses; then all arrives in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rudderstack_outage_fills_the_outbox_to_its_cap_then_everything_arrives_in_order() {
    let (auth0, rudder) = start_fakes().await;
    rudder.set_outage(true);
    auth0.push_synthetic(300);
    let mut app = App::new(&auth0, &rudder);
    app.set("state", "max_outbox_entries", 500);
    let child = app.spawn_run();
    // Entries keep arriving during the outage.
    for _ in 0..5 {
        auth0.push_synthetic(100);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let db = app.db_path();
    let depth = || Store::open_existing(&db).and_then(|s| s.outbox_depth(DOMAIN)).unwrap_or(0);
    let paused = || depth() >= 500 && app.run_log().contains("outbox is full, pausing fetching");
    assert!(wait_until(Duration::from_secs(20), paused).await, "outbox never filled:\n{}", app.run_log());
    // Still more arrive, but the outbox stays capped (one page may overshoot the check). The fetcher looks
    // again every poll_interval (200 ms); watch the depth while the sender fails ten more times, each after a
    // backoff of at least 20 ms, so the fetcher has had many chances to go past the cap.
    auth0.push_synthetic(400);
    let retried = rudder.count(503);
    let (mut lowest, mut deepest) = (u64::MAX, 0);
    let watched = wait_until(Duration::from_secs(30), || {
        let d = depth();
        (lowest, deepest) = (lowest.min(d), deepest.max(d));
        rudder.count(503) >= retried + 10
    })
    .await;
    assert!(watched, "the sender stopped trying:\n{}", app.run_log());
    assert!(
        lowest >= 500 && deepest < 600,
        "outbox depth went from {lowest} to {deepest}, not held at the cap"
    );

    rudder.set_outage(false);
    let total = auth0.entries().len();
    rudder.wait_for_events(total, Duration::from_secs(30)).await;
    let (status, _) = sigterm_within(child, Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0));
    assert_all_delivered_in_order(&rudder, &auth0.entries());
}

/// The cursor's entry expired and Auth0 answers 400 on `from`: the gap is logged and shown in `status`, and
/// with the default `on_expired_checkpoint = "oldest"` the daemon goes on from the oldest retained entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_checkpoint_is_reported_and_fetching_goes_on_from_the_oldest() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(50);
    let app = App::new(&auth0, &rudder);
    assert_eq!(app.sync().await.status.code(), Some(0));
    let fresh = auth0.push_synthetic(30);
    auth0.expire_oldest(60); // the cursor (entry 49) and 10 newer entries are gone
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let err = stderr(&out);
    assert!(err.contains("gap"), "{err}");
    let got: Vec<String> = delivered_log_ids(&rudder)[50..].to_vec();
    assert_eq!(
        got,
        log_ids(&fresh[10..]),
        "continues from the oldest retained entry, the first one included"
    );
    let s = app.status().await;
    assert_eq!(s["last_gap"]["from_log_id"], Value::String(auth0.log_id(49)), "{s}");
    assert!(s["warnings"].to_string().contains("gap"), "{s}");
    // And no crash loop: a further sync is quiet.
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// With `on_expired_checkpoint = "stop"`, `sync` stops with exit 1 naming the gap, keeps the cursor, shows it in
/// `status`, and `resume` continues from the oldest retained entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_checkpoint_with_stop_waits_for_resume() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(20);
    let mut app = App::new(&auth0, &rudder);
    app.set("auth0", "on_expired_checkpoint", "stop");
    assert_eq!(app.sync().await.status.code(), Some(0));
    let fresh = auth0.push_synthetic(10);
    auth0.expire_oldest(25);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("resume"), "{}", text(&out));
    let s = app.status().await;
    assert_eq!(s["fetching_stopped"], true, "{s}");
    assert_eq!(s["cursor"], Value::String(auth0.log_id(19)));
    // Stopped is stable: a second sync does not crash-loop or move anything.
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(rudder.event_count(), 20);

    let out = app.run(&["resume"], Duration::from_secs(20)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(delivered_log_ids(&rudder)[20..].to_vec(), log_ids(&fresh[5..]));
}

/// A tenant whose 5 entries are three hours old, on an Auth0 that answers an expired `from` silently with
/// the oldest entries it still holds; and an app for it.
async fn three_hours_old_entries() -> (FakeAuth0, FakeRudderStack, App, Vec<Value>) {
    let auth0 = FakeAuth0::start(FakeOptions {
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        expired_from: ExpiredFrom::OldestRetained,
        ..FakeOptions::realistic()
    })
    .await;
    let (_unused, rudder) = start_fakes().await;
    let old: Vec<Value> = (1..=5)
        .map(|i| {
            synthetic_entry(i, Utc::now() - chrono::Duration::hours(3) + chrono::Duration::seconds(i as i64))
        })
        .collect();
    auth0.push(old.clone());
    let app = App::new(&auth0, &rudder);
    (auth0, rudder, app, old)
}

/// Three new entries arrive and the old ones age out: the next page after the old cursor jumps past them.
fn jump_past_the_retention(auth0: &FakeAuth0) -> Vec<Value> {
    let new: Vec<Value> =
        (6..=8).map(|i| synthetic_entry(i, Utc::now() - chrono::Duration::minutes(1))).collect();
    auth0.push(new.clone());
    auth0.expire_oldest(5);
    new
}

/// Auth0 silently answers with entries far newer than a cursor older than the retention: the gap is
/// reported, and `status` warned beforehand that the checkpoint was past half the retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jump_past_an_expired_cursor_is_reported_as_a_gap() {
    let (auth0, rudder, mut app, old) = three_hours_old_entries().await;
    app.set("auth0", "retention", "1h");
    assert_eq!(app.sync().await.status.code(), Some(0));
    let s = app.status().await;
    assert!(s["warnings"].to_string().contains("half of auth0.retention"), "{s}");

    let new = jump_past_the_retention(&auth0);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stderr(&out).contains("gap"), "{}", text(&out));
    let s = app.status().await;
    assert_eq!(s["last_gap"]["from_log_id"], old[4]["log_id"], "{s}");
    assert_eq!(s["last_gap"]["to_log_id"], new[0]["log_id"], "{s}");
    assert_eq!(delivered_log_ids(&rudder)[5..].to_vec(), log_ids(&new));
}

/// A silent jump past the retention, with `on_expired_checkpoint = "stop"`, stores nothing until `resume`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_jump_past_the_retention_with_stop_waits_for_resume() {
    let (auth0, rudder, mut app, old) = three_hours_old_entries().await;
    app.set("auth0", "retention", "1h").set("auth0", "on_expired_checkpoint", "stop");
    assert_eq!(app.sync().await.status.code(), Some(0));
    assert_eq!(rudder.event_count(), 5);

    let new = jump_past_the_retention(&auth0);
    for attempt in 1..=2 {
        let out = app.sync().await;
        assert_eq!(out.status.code(), Some(1), "attempt {attempt}: {}", text(&out));
        let err = stderr(&out);
        let cursor = old[4]["log_id"].as_str().unwrap();
        assert!(err.contains("resume") && err.contains(cursor), "attempt {attempt}: {err}");
        let s = app.status().await;
        assert_eq!(s["fetching_stopped"], true, "{s}");
        assert_eq!(s["cursor"], old[4]["log_id"], "the cursor stays before the gap: {s}");
        assert_eq!(s["last_gap"]["from_log_id"], old[4]["log_id"], "{s}");
        assert_eq!(s["last_gap"]["to_log_id"], new[0]["log_id"], "{s}");
        assert_eq!(s["outbox_depth"], 0, "nothing after the gap was stored: {s}");
        assert_eq!(rudder.event_count(), 5, "nothing after the gap was sent");
    }

    let out = app.run(&["resume"], Duration::from_secs(20)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(delivered_log_ids(&rudder)[5..].to_vec(), log_ids(&new));
    assert_eq!(app.status().await["fetching_stopped"], false);
}

/// A RudderStack outage longer than `sync_give_up_after` ends `sync` with exit 1, every entry kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_gives_up_on_the_sender_side_during_a_long_rudderstack_outage_and_keeps_the_outbox() {
    let (auth0, rudder) = start_fakes().await;
    let entries = auth0.push_synthetic(300);
    rudder.set_outage(true);
    let mut app = App::new(&auth0, &rudder);
    app.set("retry", "sync_give_up_after", "2s");
    let started = Instant::now();
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(started.elapsed() >= Duration::from_secs(2), "gave up early");
    let err = stderr(&out);
    assert!(err.contains("gave up") && err.contains("sending") && err.contains("503"), "{err}");
    assert!(rudder.count(503) >= 2, "the sender kept trying until it gave up");
    let s = app.status().await;
    assert_eq!(s["outbox_depth"], 300, "{s}");
    assert_eq!(s["cursor"], entries[299]["log_id"], "fetching finished regardless: {s}");
    assert_eq!(s["delivered_total"], 0, "{s}");

    rudder.set_outage(false);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(delivered_log_ids(&rudder), log_ids(&entries), "each entry once, in order");
}

/// The gateway's own 429, 504 and 500 are retried without dead letters, waiting out any `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rudderstacks_429_504_and_500_are_retried_honouring_retry_after() {
    // (refusal, its status, Retry-After: seconds, or a date that many seconds ahead)
    let cases = [
        (Refusal::TooManyRequests, 429, Some((false, 2))),
        (Refusal::GatewayTimeout, 504, None),
        (Refusal::BodyReadFailed, 500, None),
        (Refusal::TooManyRequests, 429, Some((true, 4))),
    ];
    for (refusal, status, asked) in cases {
        let set_at = Instant::now();
        let retry_after = asked.map(|(date, secs)| match date {
            false => secs.to_string(),
            true => {
                (Utc::now() + chrono::Duration::seconds(secs)).format("%a, %d %b %Y %H:%M:%S GMT").to_string()
            }
        });
        let (auth0, rudder) = start_fakes().await;
        let entries = auth0.push_synthetic(120);
        let mut refusing = Refusing::times(refusal, 2);
        if let Some(v) = &retry_after {
            refusing = refusing.with_retry_after(v);
        }
        rudder.set_refusal(Some(refusing));
        let app = App::new(&auth0, &rudder);
        let out = app.sync().await;
        let what = format!("{status} (Retry-After {retry_after:?})");
        assert_eq!(out.status.code(), Some(0), "{what}: {}", text(&out));
        assert_eq!(delivered_log_ids(&rudder), log_ids(&entries), "{what}: each entry once, in order");
        let s = app.status().await;
        assert_eq!(s["dead_letters"], 0, "{what}: a transient refusal set events aside: {s}");
        let reqs = rudder.requests();
        let refused: Vec<usize> = (0..reqs.len()).filter(|&i| reqs[i].status == status).collect();
        assert_eq!(refused.len(), 2, "{what}: {reqs:?}");
        assert!(stderr(&out).contains(&status.to_string()), "{what}: {}", text(&out));
        match asked {
            Some((false, secs)) => {
                for &i in &refused {
                    let waited = reqs[i + 1].at.duration_since(reqs[i].at);
                    assert!(
                        waited >= Duration::from_secs(secs as u64),
                        "{what}: the next POST came after {waited:?}"
                    );
                }
            }
            // A date in whole seconds, written just before the sync: no POST after the first refusal before it.
            Some((true, secs)) => {
                let after = reqs[refused[0] + 1].at.duration_since(set_at);
                let least = Duration::from_secs(secs as u64 - 1);
                assert!(after >= least, "{what}: the next POST came {after:?} after the date was written");
            }
            None => {}
        }
    }
}

/// After `sync` or `run` exits cleanly the state file alone holds every commit, so a copy of it is complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_exit_leaves_a_state_file_complete_on_its_own() {
    let (auth0, rudder) = start_fakes().await;
    let entries = auth0.push_synthetic(300);
    let app = App::new(&auth0, &rudder);
    let copy = app.dir.path().join("copy.db");
    // Only the database file, as `cp state.db` after stopping the service would take it.
    let copied_cursor = || {
        std::fs::copy(app.db_path(), &copy).unwrap();
        let c = rusqlite::Connection::open(&copy).unwrap();
        let check: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok");
        drop(c);
        let store = Store::open_existing(&copy).unwrap();
        let cursor = store.cursor(DOMAIN).unwrap().map(|c| c.log_id.to_string());
        let depth = store.outbox_depth(DOMAIN).unwrap();
        drop(store);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", copy.display()));
        }
        (cursor, depth)
    };
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(copied_cursor(), (Some(log_ids(&entries)[299].clone()), 0), "after sync");

    let child = app.spawn_run();
    let more = auth0.push_synthetic(100);
    rudder.wait_for_events(400, Duration::from_secs(30)).await;
    let (status, _) = sigterm_within(child, Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{}", app.run_log());
    assert_eq!(copied_cursor(), (Some(log_ids(&more)[99].clone()), 0), "after run");
}

/// A state file that is not SQLite, is corrupt, or comes from a newer schema: exit 3, a message naming the
/// file, and the file is byte-for-byte untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_database_exits_3_and_is_never_modified() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(300);
    let app = App::new(&auth0, &rudder);
    assert_eq!(app.sync().await.status.code(), Some(0));
    let good = std::fs::read(app.db_path()).unwrap();

    // Keep the 100-byte file header (it is still "an SQLite file") but wreck the schema page after it.
    let mut corrupt = good.clone();
    for b in &mut corrupt[100..4096] {
        *b = 0x5a;
    }
    let mut newer = None;
    {
        let copy = app.dir.path().join("newer.db");
        std::fs::write(&copy, &good).unwrap();
        let c = rusqlite::Connection::open(&copy).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        newer = newer.or(Some(std::fs::read(&copy).unwrap()));
    }
    let cases: [(&str, Vec<u8>); 3] = [
        ("not sqlite", b"this is not a database, it is a text file\n".repeat(100)),
        ("corrupt", corrupt),
        ("newer schema", newer.unwrap()),
    ];
    for (name, bytes) in cases {
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", app.db_path().display()));
        }
        std::fs::write(app.db_path(), &bytes).unwrap();
        for cmd in [&["sync"][..], &["status"][..]] {
            let out = app.run(cmd, Duration::from_secs(30)).await;
            assert_eq!(out.status.code(), Some(3), "{name} / {cmd:?}: {}", text(&out));
            assert!(stderr(&out).contains(&app.db_path().display().to_string()), "{name}: {}", text(&out));
            assert_eq!(
                std::fs::read(app.db_path()).unwrap(),
                bytes,
                "{name}: the file was modified by {cmd:?}"
            );
        }
    }
}

/// A write key with characters that change under form encoding, for the webhook runs: its query-string form
/// differs from the raw key, so both can be searched for.
const QUERY_KEY: &str = "wk/Query+Key&x=9%s3cr3t";

/// Every form a secret travels in: as it is, form-encoded in a query string, and as `key:` in Basic auth.
fn secret_forms(secrets: &[&str]) -> Vec<String> {
    let mut forms = Vec::new();
    for s in secrets {
        forms.push(s.to_string());
        forms.push(url::form_urlencoded::byte_serialize(s.as_bytes()).collect());
        forms.push(crate::support::fake_rudderstack::base64_std_encode(format!("{s}:").as_bytes()));
    }
    forms.sort();
    forms.dedup();
    forms
}

/// Fail with the offending text when any of `forms` occurs in `text`.
fn assert_no_secret(what: &str, text: &[u8], forms: &[String]) {
    let text = String::from_utf8_lossy(text);
    for f in forms {
        assert!(!text.contains(f.as_str()), "{what}: a secret ({f}) leaked into:\n{text}");
    }
}

/// A command at trace level, this crate's and the HTTP stack's.
fn traced(app: &App, args: &[&str]) -> tokio::process::Command {
    let mut cmd = app.command(args);
    cmd.env("RUST_LOG", "trace,hyper=trace,hyper_util=trace,reqwest=trace,rustls=trace,h2=trace");
    cmd
}

/// `run` at trace level with its output in `run.log`, as [`App::spawn_run`] does.
fn spawn_traced_run(app: &App, extra: &[&str]) -> tokio::process::Child {
    let log = std::fs::File::create(app.dir.path().join("run.log")).unwrap();
    let mut args = extra.to_vec();
    args.push("run");
    let mut cmd = traced(app, &args);
    cmd.stdout(Stdio::from(log.try_clone().unwrap())).stderr(Stdio::from(log));
    cmd.spawn().expect("spawn run")
}

/// No client secret, write key (right or wrong, any encoding) or access token appears in any output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_any_output() {
    // At trace level, with errors forced on both sides: sync, run, --log-format json, webhook mode (the key in
    // the query string, echoed back by a proxy and a redirect), rejected credentials, a rejected write key,
    // status, check, --help and dead-letter list.
    const WRONG_SECRET: &str = "wrong-client-secret-4f1c";
    const WRONG_KEY: &str = "wrong-write-key-9d2e";
    let (auth0, rudder) = start_fakes().await;
    let entries = auth0.push_synthetic(400);
    auth0.set_hook(|req: &Request, n| match (req.path.as_str(), n) {
        ("/api/v2/logs", 3) => Some(Reply::text(503, "Service Unavailable")),
        ("/api/v2/logs", 5) => Some(Reply::json(
            401,
            &serde_json::json!({"statusCode":401,"error":"Unauthorized","message":"Invalid token"}),
        )),
        _ => None,
    });
    rudder.hook(|_, n| (n == 1).then(|| Reply::text(500, "gateway error")));
    let app = App::new(&auth0, &rudder);
    let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();
    let both = |out: &std::process::Output| [out.stdout.as_slice(), out.stderr.as_slice()].concat();

    let out = run_bounded(traced(&app, &["sync"]), Duration::from_secs(60)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(rudder.event_count(), entries.len());
    outputs.push(("sync".to_string(), both(&out)));
    for args in [&["status"][..], &["status", "--json"], &["check"], &["--help"], &["dead-letter", "list"]] {
        outputs.push((args.join(" "), both(&run_bounded(traced(&app, args), Duration::from_secs(30)).await)));
    }

    // `run`, with a failure on each side, until it has delivered what arrived meanwhile.
    auth0.set_hook(|req: &Request, n| {
        (req.path == "/api/v2/logs" && n % 7 == 0).then(|| Reply::text(502, "Bad Gateway"))
    });
    rudder.hook(|_, n| (n % 5 == 0).then(|| Reply::text(503, "Service Unavailable")));
    let child = spawn_traced_run(&app, &[]);
    let more = auth0.push_synthetic(150);
    rudder.wait_for_events(entries.len() + more.len(), Duration::from_secs(30)).await;
    let (status, _) = sigterm_within(child, Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{}", app.run_log());
    outputs.push(("run".into(), app.run_log().into_bytes()));

    // The JSON log format.
    auth0.push_synthetic(50);
    let out = run_bounded(traced(&app, &["--log-format", "json", "sync"]), Duration::from_secs(60)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    outputs.push(("sync --log-format json".to_string(), both(&out)));
    auth0.clear_hook();
    rudder.set_hook(None);

    // Rejected credentials and a rejected write key.
    let mut bad = App::new(&auth0, &rudder);
    bad.set("auth0", "client_secret", WRONG_SECRET);
    let out = run_bounded(traced(&bad, &["sync"]), Duration::from_secs(60)).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    outputs.push(("sync with a wrong client secret".to_string(), both(&out)));
    let out = run_bounded(traced(&bad, &["check"]), Duration::from_secs(30)).await;
    outputs.push(("check with a wrong client secret".to_string(), both(&out)));
    let mut bad = App::new(&auth0, &rudder);
    bad.set("rudderstack", "write_key", WRONG_KEY);
    let out = run_bounded(traced(&bad, &["sync"]), Duration::from_secs(60)).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    outputs.push(("sync with a wrong write key".to_string(), both(&out)));

    // Webhook mode: the key travels in the query string, so it is searched for form-encoded too, and a
    // redirect echoes it back in its Location.
    let hooked = FakeRudderStack::start(fake_rudderstack::Options {
        write_keys: vec![QUERY_KEY.into()],
        ..fake_rudderstack::Options::default()
    })
    .await;
    // A proxy that echoes the request's key back in its error page, raw and encoded.
    hooked.hook(|req: &Request, n| {
        (n == 0).then(|| {
            let key = req.query("writeKey").unwrap_or_default();
            let encoded: String = url::form_urlencoded::byte_serialize(key.as_bytes()).collect();
            Reply::text(502, &format!("bad gateway for /v1/webhook?writeKey={encoded} ({key})"))
        })
    });
    let mut webhook = App::new(&auth0, &hooked);
    webhook.set("rudderstack", "mode", "webhook").set("rudderstack", "write_key", QUERY_KEY);
    let out = run_bounded(traced(&webhook, &["sync"]), Duration::from_secs(60)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(hooked.wrappers().len() >= entries.len(), "webhook mode delivered");
    outputs.push(("webhook sync".to_string(), both(&out)));
    hooked
        .set_redirect(Some((307, format!("https://elsewhere.example.com/v1/webhook?writeKey={QUERY_KEY}"))));
    auth0.push_synthetic(5);
    let out = run_bounded(traced(&webhook, &["sync"]), Duration::from_secs(60)).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    outputs.push(("webhook sync redirected".to_string(), both(&out)));

    let tokens = auth0.issued_tokens();
    assert!(tokens.len() >= 2, "{tokens:?}");
    let mut secrets = vec![CLIENT_SECRET, WRITE_KEY, WRONG_SECRET, WRONG_KEY, QUERY_KEY];
    secrets.extend(tokens.iter().map(String::as_str));
    let forms = secret_forms(&secrets);
    for (what, output) in &outputs {
        assert!(output.len() > 10, "{what}: no output");
        assert_no_secret(what, output, &forms);
    }
}

/// The state file and its WAL hold no secret in clear, during `run` or after; the token only sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_file_and_its_wal_hold_no_secret_in_clear() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(200);
    let app = App::new(&auth0, &rudder);
    let child = app.spawn_run();
    rudder.wait_for_events(200, Duration::from_secs(30)).await;
    let files = |app: &App| -> Vec<(String, Vec<u8>)> {
        ["", "-wal", "-shm"]
            .iter()
            .filter_map(|suffix| {
                let path = format!("{}{suffix}", app.db_path().display());
                std::fs::read(&path).ok().map(|bytes| (path, bytes))
            })
            .collect()
    };
    let tokens = auth0.issued_tokens();
    assert_eq!(tokens.len(), 1);
    let mut secrets = vec![CLIENT_SECRET, WRITE_KEY];
    secrets.extend(tokens.iter().map(String::as_str));
    let forms = secret_forms(&secrets);
    let running = files(&app);
    assert!(running.iter().any(|(p, b)| p.ends_with("-wal") && !b.is_empty()), "no WAL while running");
    for (path, bytes) in &running {
        assert_no_secret(path, bytes, &forms);
    }
    let (status, _) = sigterm_within(child, Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0));
    for (path, bytes) in files(&app) {
        assert_no_secret(&path, &bytes, &forms);
    }
    // The token is there, sealed, for the next start.
    let sealed: Vec<u8> = open_db(&app)
        .query_row("SELECT token_sealed FROM tenant WHERE domain = ?1", [DOMAIN], |r| r.get(0))
        .unwrap();
    assert!(sealed.len() > tokens[0].len(), "the token is kept sealed");
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(auth0.tokens_minted(), 1, "the next start reused the sealed token");
}

/// A panicking loop is logged with the secret in its message redacted, and `run` exits 101 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_logged_with_the_secret_redacted_and_ends_the_process_with_101() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(20);
    let app = App::new(&auth0, &rudder);
    for which in ["fetch", "send"] {
        for format in ["text", "json"] {
            let mut cmd = app.command(&["--log-format", format, "run"]);
            cmd.env("AUTH0_RUDDERSTACK_TEST_PANIC", which);
            // `run` never ends on its own: only the panic can end it within the limit.
            let out = run_bounded(cmd, Duration::from_secs(30)).await;
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(101), "{which}/{format}: {}", text(&out));
            assert!(err.contains("internal error") && err.contains(&format!("the {which} loop")), "{err}");
            assert!(err.contains("[redacted]"), "{which}/{format}: {err}");
            assert_no_secret(&format!("{which}/{format}"), &out.stderr, &secret_forms(&[CLIENT_SECRET]));
            if format == "json" {
                for line in err.lines().filter(|l| !l.trim().is_empty()) {
                    serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
                }
            }
        }
    }
}

/// SIGTERM during a slow RudderStack POST: the daemon gives the request in flight its 5 s and no more (the
/// request's own timeout is far longer), exits 0, and the outbox is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_slow_post_exits_promptly_with_the_outbox_intact() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(250);
    rudder.hook(|_, _| Some(Reply::text(200, "ok").delayed(Duration::from_secs(60))));
    let mut app = App::new(&auth0, &rudder);
    app.set("rudderstack", "timeout", "60s");
    let child = app.spawn_run();
    // The first POST hangs; meanwhile the fetcher fills the outbox with the rest.
    rudder.wait_for_requests(1, Duration::from_secs(20)).await;
    let db = app.db_path();
    let depth = || Store::open_existing(&db).and_then(|s| s.outbox_depth(DOMAIN)).unwrap_or(0);
    assert!(
        wait_until(Duration::from_secs(20), || depth() == 250).await,
        "the fetcher did not fill the outbox"
    );
    let (status, took) = sigterm_within(child, Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0));
    // The README's 5 s, and a margin for a busy machine to end the process.
    assert!(took >= Duration::from_secs(5) && took < Duration::from_secs(8), "took {took:?}");
    let s = app.status().await;
    assert_eq!(s["outbox_depth"], 250, "{s}");
    assert_eq!(s["delivered_total"], 0, "{s}");
}

/// SIGTERM during a POST answered within the grace period: its rows are committed, and no new POST starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_post_answered_within_the_grace_period_commit_and_starts_no_new_one() {
    let (auth0, rudder) = start_fakes().await;
    let entries = auth0.make_entries(101);
    auth0.push(entries.clone());
    // Stored at once, answered 3 s later: well inside the 5 s grace period.
    rudder.set_delay(Some(Duration::from_secs(3)));
    let mut app = App::new(&auth0, &rudder);
    // One page of 100 after the start, sent 10 to a request, so more requests are waiting behind the first.
    app.set("auth0", "start", entries[0]["log_id"].as_str().unwrap());
    app.set("rudderstack", "max_batch_events", 10);
    let child = app.spawn_run();
    rudder.wait_for_requests(1, Duration::from_secs(30)).await;
    let (status, took) = sigterm_within(child, Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "{}", app.run_log());
    assert!(took < auth0_rudderstack::pipeline::SHUTDOWN_GRACE + Duration::from_secs(5), "took {took:?}");
    assert_eq!(rudder.requests().len(), 1, "a POST started after the signal:\n{}", app.run_log());
    assert_eq!(rudder.event_count(), 10);
    let s = app.status().await;
    assert_eq!(s["delivered_total"], 10, "the answered POST was committed: {s}");
    assert_eq!(s["outbox_depth"].as_u64().unwrap() + 10, 100, "{s}");

    rudder.set_delay(None);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let delivered = delivered_log_ids(&rudder);
    assert_eq!(delivered, log_ids(&entries[1..]), "every entry once, none of the first POST again");
}

/// Distinct `properties.log_id`s that reached RudderStack (re-sends counted once).
fn distinct_delivered(rudder: &FakeRudderStack) -> usize {
    delivered_log_ids(rudder).into_iter().collect::<HashSet<_>>().len()
}

/// Hold an exclusive lock on the state database from another connection, as another process would, until
/// the returned sender is dropped or sent to.
fn lock_database(app: &App) -> std::sync::mpsc::Sender<()> {
    let db = app.db_path();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
        locked_tx.send(()).unwrap();
        // Bounded: a test that fails before releasing does not hold the file forever.
        let _ = release_rx.recv_timeout(Duration::from_secs(120));
        conn.execute_batch("COMMIT").unwrap();
    });
    locked_rx.recv().unwrap();
    release_tx
}

/// A state database locked by another process past the busy timeout is reported, waited out, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_by_another_process_is_waited_out() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(40);
    let app = App::new(&auth0, &rudder);
    let child = app.spawn_run();
    rudder.wait_for_events(40, Duration::from_secs(20)).await;

    let release = lock_database(&app);
    let more = auth0.push_synthetic(30);
    // The lock is held until the daemon has run into the busy timeout and said it will retry.
    let met = wait_until(Duration::from_secs(60), || {
        let log = app.run_log();
        log.contains("database is locked") && log.contains("will retry")
    })
    .await;
    drop(release);
    assert!(met, "the daemon never reported the lock:\n{}", app.run_log());
    // Re-sends of rows whose delete met the lock count once.
    let arrived = wait_until(Duration::from_secs(60), || distinct_delivered(&rudder) >= 70).await;
    assert!(arrived, "only {} entries arrived:\n{}", distinct_delivered(&rudder), app.run_log());
    let (status, _) = sigterm_within(child, Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{}", app.run_log());
    let mut all = auth0.entries();
    all.truncate(40 + more.len());
    assert_all_delivered_in_order(&rudder, &all);
}

/// A database locked between RudderStack's 2xx and the delete: rows go out again with the same ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_when_deleting_after_a_2xx_resends_the_rows_with_the_same_ids() {
    let (auth0, rudder) = start_fakes().await;
    let entries = auth0.push_synthetic(40);
    let app = App::new(&auth0, &rudder);
    // The lock is taken while the first POST is being answered: after RudderStack stored its events, before
    // the daemon can see the answer.
    let release: Arc<Mutex<Option<std::sync::mpsc::Sender<()>>>> = Arc::default();
    let (hook_release, db) = (release.clone(), app.db_path());
    rudder.hook(move |_, n| {
        if n == 0 {
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            std::thread::spawn(move || {
                let _ = rx.recv_timeout(Duration::from_secs(120));
                conn.execute_batch("COMMIT").unwrap();
            });
            *hook_release.lock().unwrap() = Some(tx);
        }
        None
    });
    let child = app.spawn_run();
    let first = rudder.wait_for_requests(1, Duration::from_secs(30)).await[0].events.unwrap();
    // Held until the delete has failed and the same rows have gone out again.
    let met = wait_until(Duration::from_secs(60), || {
        let log = app.run_log();
        log.contains("sending failed, will retry")
            && log.contains("database is locked")
            && rudder.event_count() >= 2 * first
    })
    .await;
    drop(release.lock().unwrap().take());
    assert!(met, "no re-send while the delete was locked out:\n{}", app.run_log());
    let arrived = wait_until(Duration::from_secs(60), || distinct_delivered(&rudder) >= entries.len()).await;
    assert!(arrived, "only {} entries arrived:\n{}", distinct_delivered(&rudder), app.run_log());
    let (status, _) = sigterm_within(child, Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{}", app.run_log());

    assert_all_delivered_in_order(&rudder, &entries);
    let events = rudder.events();
    let mut first_id: BTreeMap<String, (String, usize)> = BTreeMap::new();
    for e in &events {
        let log_id = e["properties"]["log_id"].as_str().unwrap().to_string();
        let mid = e["messageId"].as_str().unwrap().to_string();
        let seen = first_id.entry(log_id.clone()).or_insert((mid.clone(), 0));
        assert_eq!(seen.0, mid, "{log_id} was re-sent with another messageId");
        seen.1 += 1;
    }
    let resent: Vec<&String> = first_id.iter().filter(|(_, (_, n))| *n > 1).map(|(id, _)| id).collect();
    let first_batch: Vec<String> = delivered_log_ids(&rudder)[..first].to_vec();
    assert!(first_batch.iter().all(|id| resent.contains(&id)), "the first batch was not re-sent: {resent:?}");
    let s = app.status().await;
    assert_eq!(s["outbox_depth"], 0, "{s}");
}

/// A second `run` or `sync` on the same state refuses to start, naming the lock, instead of fetching every
/// page twice; once the first one stops, the state is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_state_refuses_to_start() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(20);
    let app = App::new(&auth0, &rudder);
    let child = app.spawn_run();
    rudder.wait_for_events(20, Duration::from_secs(20)).await;
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("auth0-rudderstack `run` (pid") && err.contains("is using") && err.contains(".lock"),
        "{err}"
    );
    let (status, _) = sigterm_within(child, Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0));
    auth0.push_synthetic(5);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(rudder.event_count(), 25);
}

/// During an Auth0 outage, what is already fetched is still delivered, in order: the fetcher's failures never
/// hold the sender back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_fetched_is_delivered_in_order_during_an_auth0_outage() {
    let (auth0, rudder) = start_fakes().await;
    let logged = auth0.push_synthetic(400);
    // First RudderStack is down, so that everything fetched waits in the outbox.
    rudder.set_outage(true);
    let app = App::new(&auth0, &rudder);
    let db = app.db_path();
    let child = app.spawn_run();
    let depth = || Store::open_existing(&db).and_then(|s| s.outbox_depth(DOMAIN)).unwrap_or(0);
    assert!(wait_until(Duration::from_secs(30), || depth() == 400).await, "{}", app.run_log());

    // Then Auth0 goes down for good, and RudderStack comes back.
    auth0.set_hook(|_: &Request, _| Some(Reply::text(503, "Service Unavailable")));
    let down_since = Instant::now();
    let failing = auth0.requests();
    assert!(
        wait_until(Duration::from_secs(30), || auth0.requests() >= failing + 2).await,
        "{}",
        app.run_log()
    );
    rudder.set_outage(false);
    let events = rudder.wait_for_events(400, Duration::from_secs(60)).await;
    let order: Vec<&str> = events.iter().map(|e| e["properties"]["log_id"].as_str().unwrap()).collect();
    let expected: Vec<&str> = logged.iter().map(|e| e["log_id"].as_str().unwrap()).collect();
    assert_eq!(order, expected, "delivered out of order, or not all:\n{}", app.run_log());
    // Every request that reached Auth0 while the events went out was refused (how many depends on the
    // backoff, so only their answers are checked).
    let during: Vec<u16> = auth0.recorded().iter().filter(|r| r.at > down_since).map(|r| r.status).collect();
    assert!(
        during.len() >= 2 && during.iter().all(|&s| s == 503),
        "Auth0 was not failing throughout: {during:?}"
    );
    assert!(app.run_log().contains("fetching failed, will retry"), "{}", app.run_log());
    let (status, _) = sigterm_within(child, Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0));
}

/// `status` warns as soon as the checkpoint is older than half the retention, and not before: a three-hour-old
/// cursor is past half of 5h50m and within half of 6h10m.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_half_retention_warning_starts_at_half_the_retention() {
    let (_auth0, _rudder, mut app, _old) = three_hours_old_entries().await;
    app.set("auth0", "retention", "10h");
    assert_eq!(app.sync().await.status.code(), Some(0));
    for (retention, warned) in [("5h 50m", true), ("6h 10m", false)] {
        app.set("auth0", "retention", retention);
        let s = app.status().await;
        let says = s["warnings"].to_string().contains("half of auth0.retention");
        assert_eq!(says, warned, "retention {retention}: {s}");
    }
}
