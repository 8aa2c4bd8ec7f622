//! The Auth0 client against the fake Auth0: tokens, paging, bootstrap, error classification and pacing.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use auth0_rudderstack::auth0::{Bootstrap, Client, Error};
use auth0_rudderstack::config::{self, Start};
use auth0_rudderstack::entry::LogId;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::support::fake_auth0::{Bucket, ExpiredFrom, FakeAuth0, FakeOptions};
use crate::support::http::Reply;

async fn fake() -> FakeAuth0 {
    FakeAuth0::start(FakeOptions::realistic()).await
}

fn lid(s: &str) -> LogId {
    LogId::parse(s).expect("a valid log_id")
}

/// The entry a bootstrap found, and whether it is forwarded.
fn found(b: Bootstrap) -> Option<(Value, bool)> {
    match b {
        Bootstrap::Found { entry, forward } => Some((serde_json::from_str(entry.get()).unwrap(), forward)),
        _ => None,
    }
}

fn client(cfg: &config::Auth0) -> Client {
    Client::new(cfg).expect("client")
}

fn ids(entries: &[Value]) -> Vec<String> {
    entries.iter().map(|e| e["log_id"].as_str().unwrap().to_string()).collect()
}

fn raw_ids(page: &[Box<serde_json::value::RawValue>]) -> Vec<String> {
    page.iter()
        .map(|e| serde_json::from_str::<Value>(e.get()).unwrap()["log_id"].as_str().unwrap().to_string())
        .collect()
}

fn is_logs(req: &crate::support::http::Request) -> bool {
    req.path == "/api/v2/logs"
}

fn epoch() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn too_many() -> Reply {
    Reply::json(
        429,
        &json!({"statusCode":429,"error":"Too Many Requests","message":"Global limit has been reached","errorCode":"too_many_requests"}),
    )
}

/// Many pages are read with a single token: each mint would write a `seccft` entry into the tenant's log.
#[tokio::test]
async fn one_token_serves_many_pages() {
    let fake = fake().await;
    fake.push_synthetic(300);
    let c = client(&fake.config());
    let mut cursor = fake.log_id(0);
    for _ in 0..6 {
        let page = c.page_after(&lid(&cursor), 50).await.unwrap();
        cursor = page.next_from.unwrap().to_string();
    }
    assert_eq!(c.tokens_minted(), 1);
    assert_eq!(fake.tokens_minted(), 1);
    assert_eq!(fake.log_requests().len(), 6);
}

/// Callers that need a token at the same moment share one mint.
#[tokio::test]
async fn concurrent_callers_share_one_token_mint() {
    let fake = fake().await;
    fake.push_synthetic(10);
    let c = client(&fake.config());
    let from = fake.log_id(0);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            let from = from.clone();
            tokio::spawn(async move { c.page_after(&lid(&from), 5).await.map(|p| p.entries.len()) })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 5);
    }
    assert_eq!(fake.tokens_minted(), 1);
}

/// The successful mints the fake saw: when each was asked for.
fn mints(fake: &FakeAuth0) -> Vec<Instant> {
    fake.recorded()
        .into_iter()
        .filter(|r| r.path == "/oauth/token" && r.status == 200)
        .map(|r| r.at)
        .collect()
}

/// A token that lives two seconds serves until it expires and never after it; the next one is minted no
/// sooner than 5 s after the last (each mint is an entry in the tenant's log), and meanwhile requests wait.
#[tokio::test]
async fn a_short_lived_token_is_replaced_no_sooner_than_five_seconds_after_the_last_mint() {
    let fake = FakeAuth0::start(FakeOptions { expires_in: 2, ..FakeOptions::realistic() }).await;
    fake.push_synthetic(5);
    let mut cfg = fake.config();
    cfg.max_requests_per_second = 20.0;
    let c = client(&cfg);
    let from = lid(&fake.log_id(0));
    let start = Instant::now();
    let mut pages = 0;
    while start.elapsed() < Duration::from_millis(11_500) {
        let page = tokio::time::timeout(Duration::from_secs(10), c.page_after(&from, 10)).await;
        page.expect("no request is held past the spacing").expect("no request fails");
        pages += 1;
    }
    let mints = mints(&fake);
    assert_eq!(mints.len(), 3, "one token at 0, 5 and 10 s");
    for pair in mints.windows(2) {
        let apart = pair[1] - pair[0];
        assert!(apart >= Duration::from_secs(5), "two tokens minted {apart:?} apart");
    }
    assert!(pages >= 60, "each token served requests for most of its life: {pages} pages");
    assert_eq!(fake.log_requests_with(401), 0, "an expired token was used");
}

/// A refresh that is due is minted beside the requests: while a slow mint (2 s) is under way, requests go on
/// with the current, still valid token, and none of them waits for the mint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_refresh_never_holds_a_request_while_the_token_is_valid() {
    // A 20 s token is due at 16 s (80 % of its life), may be replaced from 10 s after the last mint, and
    // serves until 19 s: the 2 s mint ends a second before it expires.
    let fake = FakeAuth0::start(FakeOptions {
        expires_in: 20,
        token_delay: Some(Duration::from_secs(2)),
        ..FakeOptions::realistic()
    })
    .await;
    fake.push_synthetic(5);
    let mut cfg = fake.config();
    cfg.max_requests_per_second = 20.0;
    let c = client(&cfg);
    let from = lid(&fake.log_id(0));
    c.page_after(&from, 10).await.expect("the first page, after the first mint");
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    while start.elapsed() < Duration::from_secs(19) {
        let asked = Instant::now();
        c.page_after(&from, 10).await.expect("no request fails");
        slowest = slowest.max(asked.elapsed());
    }
    let mints = mints(&fake);
    assert_eq!(mints.len(), 2, "the first token and one refresh");
    // Served while the refresh was being minted: requests that arrived during the mint's 2 s, all answered.
    let during: Vec<_> = fake
        .log_requests()
        .into_iter()
        .filter(|r| r.at > mints[1] && r.at < mints[1] + Duration::from_millis(1_900))
        .collect();
    assert!(during.len() >= 10, "only {} requests went out during the mint", during.len());
    assert!(during.iter().all(|r| r.status == 200), "{during:?}");
    assert!(slowest < Duration::from_millis(1_500), "a request took {slowest:?}: it waited for the mint");
    assert_eq!(fake.log_requests_with(401), 0);
}

/// A 401 from /api/v2/logs (the token was revoked) leads to exactly one re-authentication, then success.
#[tokio::test]
async fn a_401_from_the_logs_endpoint_triggers_exactly_one_reauthentication() {
    let fake = fake().await;
    fake.push_synthetic(3);
    let c = client(&fake.config());
    c.page_after(&lid(&fake.log_id(0)), 10).await.unwrap();
    fake.revoke_tokens();
    let page = c.page_after(&lid(&fake.log_id(0)), 10).await.unwrap();
    assert_eq!(page.entries.len(), 2);
    assert_eq!(fake.tokens_minted(), 2);
    assert_eq!(fake.log_requests_with(401), 1);
    assert_eq!(fake.log_requests().len(), 3);
}

/// Tasks sharing one client, refused with 401 at once, make it re-mint the token once, then all succeed.
#[tokio::test]
async fn concurrent_401s_invalidate_the_token_once() {
    const TASKS: usize = 8;
    let fake = fake().await;
    fake.push_synthetic(3);
    let mut cfg = fake.config();
    cfg.max_requests_per_second = 1000.0;
    let c = client(&cfg);
    c.page_after(&lid(&fake.log_id(0)), 10).await.unwrap();
    let revoked = format!("Bearer {}", fake.issued_tokens()[0]);
    // The revoked token's 401 comes a second late, so that every task has sent it before any task is refused.
    fake.set_hook(move |req, _| {
        (is_logs(req) && req.header("authorization") == Some(revoked.as_str())).then(|| {
            Reply::json(401, &json!({"statusCode":401,"error":"Unauthorized","message":"Invalid token"}))
                .delayed(Duration::from_secs(1))
        })
    });
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (c, from) = (c.clone(), lid(&fake.log_id(0)));
            tokio::spawn(async move { c.page_after(&from, 10).await.map(|p| p.entries.len()) })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().expect("every task succeeds after the re-mint"), 2);
    }
    assert_eq!(fake.log_requests_with(401), TASKS, "every task was refused once");
    assert_eq!(fake.tokens_minted(), 2, "the first token, and one re-mint for all the 401s");
    assert_eq!(c.tokens_minted(), 2);
}

/// A second 401 right after a fresh mint is fatal, and the message shows no token.
#[tokio::test]
async fn two_401s_in_a_row_are_fatal() {
    let fake = fake().await;
    fake.set_hook(|req, _| {
        is_logs(req).then(|| {
            Reply::json(401, &json!({"statusCode":401,"error":"Unauthorized","message":"Invalid token"}))
        })
    });
    let c = client(&fake.config());
    let err =
        c.page_after(&lid("90020260101000000000000000000000000000000000000000000001"), 10).await.unwrap_err();
    assert!(err.is_fatal() && !err.is_transient(), "{err:?}");
    assert_eq!(err.status(), Some(401));
    assert_eq!(fake.tokens_minted(), 2, "exactly one re-authentication");
    assert_eq!(fake.log_requests().len(), 2);
    let shown = format!("{err} {err:?} {c:?}");
    assert!(!shown.contains("fake-at-"), "a token leaked: {shown}");
    assert!(!shown.contains(&fake.client_secret), "the secret leaked: {shown}");
}

/// A wrong client secret is fatal; the message names the client_id and the rejection and shows no secret.
#[tokio::test]
async fn a_wrong_client_secret_is_fatal_and_names_the_client_id() {
    let fake = fake().await;
    let mut cfg = fake.config();
    cfg.client_secret = SecretString::from("wrong-secret-value-xyz".to_string());
    let c = client(&cfg);
    let err =
        c.page_after(&lid("90020260101000000000000000000000000000000000000000000001"), 10).await.unwrap_err();
    assert!(err.is_fatal(), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&fake.client_id), "{msg}");
    assert!(msg.contains("rejected the client credentials"), "{msg}");
    assert!(msg.contains("/oauth/token"), "{msg}");
    assert!(msg.contains("access_denied"), "{msg}");
    let shown = format!("{err} {err:?} {c:?} {cfg:?}");
    assert!(!shown.contains("wrong-secret-value-xyz"), "the secret leaked: {shown}");
    assert!(!shown.contains("fake-at-"), "a token leaked: {shown}");
    assert!(fake.log_requests().is_empty(), "no logs request without a token");
    assert!(c.ensure_token().await.unwrap_err().is_fatal());
}

/// An outage or rate limit at the token endpoint is transient, and a 429 there carries its wait.
#[tokio::test]
async fn a_token_endpoint_outage_or_rate_limit_is_transient() {
    let fake = fake().await;
    fake.set_hook(|req, n| {
        (req.path == "/oauth/token").then(|| {
            if n == 1 {
                Reply::text(503, "Service Unavailable")
            } else {
                Reply::json(
                    429,
                    &json!({"error":"too_many_requests","error_description":"Client quota exceeded"}),
                )
                .header("retry-after", "3")
            }
        })
    });
    let c = client(&fake.config());
    let first = c.ensure_token().await.unwrap_err();
    assert!(first.is_transient(), "{first:?}");
    let second = c.ensure_token().await.unwrap_err();
    assert!(second.is_transient(), "{second:?}");
    assert_eq!(second.retry_after(), Some(Duration::from_secs(3)));
    fake.clear_hook();
    c.ensure_token().await.unwrap();
    assert_eq!(c.tokens_minted(), 1);
}

/// A 403 (the application lacks the scope) is fatal and names read:logs.
#[tokio::test]
async fn a_403_is_fatal_and_names_the_read_logs_scope() {
    let fake = FakeAuth0::start(FakeOptions { scope: "read:users".into(), ..FakeOptions::realistic() }).await;
    fake.push_synthetic(2);
    let c = client(&fake.config());
    let err = c.page_after(&lid(&fake.log_id(0)), 10).await.unwrap_err();
    assert!(err.is_fatal(), "{err:?}");
    assert_eq!(err.status(), Some(403));
    assert!(err.to_string().contains("read:logs"), "{err}");
    assert!(err.to_string().contains(&fake.client_id), "{err}");
    let probe = c.probe().await.unwrap_err();
    assert!(probe.is_fatal() && probe.to_string().contains("read:logs"), "{probe}");
}

/// Paging sends from/take, returns entries strictly after `from` in log_id order, and the Link header's
/// `from` is the last entry's log_id (or the same `from` on the empty page that means "caught up").
#[tokio::test]
async fn paging_follows_from_and_take_and_the_link_from_matches() {
    let fake = fake().await;
    let all = fake.push_synthetic(250);
    let c = client(&fake.config());
    let mut cursor = fake.log_id(0);
    let mut seen = Vec::new();
    for _ in 0..10 {
        let page = c.page_after(&lid(&cursor), 100).await.unwrap();
        let got = raw_ids(&page.entries);
        let next = page.next_from.clone().expect("a Link header").to_string();
        if got.is_empty() {
            assert_eq!(next, cursor, "an empty page links to the same from");
            break;
        }
        assert_eq!(&next, got.last().unwrap());
        seen.extend(got);
        cursor = next;
    }
    assert_eq!(seen, ids(&all)[1..].to_vec());
    let requests = fake.log_requests();
    assert_eq!(requests.len(), 4, "100 + 100 + 49 + the empty page");
    assert!(requests.iter().all(|r| r.query("take") == Some("100") && r.query("from").is_some()));
    assert_eq!(requests[0].query("from"), Some(fake.log_id(0).as_str()));
    assert_eq!(requests[1].query("from"), Some(fake.log_id(100).as_str()));
}

/// Entries that are not objects still come back, raw, for the pipeline to dead-letter.
#[tokio::test]
async fn a_page_keeps_elements_that_are_not_objects() {
    let fake = fake().await;
    fake.push_synthetic(1);
    fake.set_hook(|req, _| {
        is_logs(req).then(|| Reply::json(200, &json!([{"log_id":"9001","a":1}, 7, "x", null])))
    });
    let c = client(&fake.config());
    let page = c.page_after(&lid(&fake.log_id(0)), 10).await.unwrap();
    let raw: Vec<&str> = page.entries.iter().map(|e| e.get()).collect();
    assert_eq!(raw, vec![r#"{"log_id":"9001","a":1}"#, "7", r#""x""#, "null"]);
    assert_eq!(page.next_from, None);
}

/// `now` takes the greatest log_id as the cursor and forwards nothing. The fake dates its last entry before
/// the one logged just before it, as Auth0 may: the newest by date is then entry 28, and `now` reads on
/// from it by id to entry 29.
#[tokio::test]
async fn bootstrap_now_starts_after_the_newest_entry() {
    let fake = fake().await;
    fake.push_synthetic(30);
    let dates: Vec<String> = fake.entries().iter().map(|e| e["date"].as_str().unwrap().to_string()).collect();
    assert!(dates[29] < dates[28], "the last entry is dated before the one logged before it");
    let c = client(&fake.config());
    let (entry, forward) = found(c.bootstrap(&Start::Now).await.unwrap()).expect("an entry");
    assert_eq!(entry["log_id"], fake.log_id(29).as_str());
    assert!(!forward, "`now` forwards nothing");
    let requests = fake.log_requests();
    let r = &requests[0];
    assert_eq!(
        (r.query("sort"), r.query("per_page"), r.query("page")),
        (Some("date:-1"), Some("1"), Some("0"))
    );
    assert_eq!(r.query("from"), None);
    assert_eq!(requests[1].query("from"), Some(fake.log_id(28).as_str()), "read on from the newest by date");
    assert_eq!(requests.len(), 2, "one short page ends the reading on");
}

/// `oldest` returns the oldest retained entry to be forwarded itself.
#[tokio::test]
async fn bootstrap_oldest_forwards_the_oldest_retained_entry() {
    let fake = fake().await;
    fake.push_synthetic(30);
    fake.expire_oldest(5);
    let c = client(&fake.config());
    let (first, forward) = found(c.bootstrap(&Start::Oldest).await.unwrap()).expect("an entry");
    assert_eq!(first, fake.entries()[5]);
    assert!(forward);
    assert_eq!(fake.log_requests()[0].query("sort"), Some("date:1"));
}

/// A start time finds the first entry dated at or after it, through a `date:[T TO *]` search.
#[tokio::test]
async fn bootstrap_time_forwards_the_first_entry_at_or_after_the_time() {
    let fake = fake().await;
    let all = fake.push_synthetic(100);
    let t: DateTime<Utc> = all[42]["date"].as_str().unwrap().parse().unwrap();
    let c = client(&fake.config());
    let (first, forward) = found(c.bootstrap(&Start::Time(t)).await.unwrap()).expect("an entry");
    assert_eq!(first, all[42]);
    assert!(forward);
    let q = fake.log_requests()[0].query("q").unwrap().to_string();
    assert_eq!(q, format!("date:[{} TO *]", all[42]["date"].as_str().unwrap()));
    assert!(q.ends_with("Z TO *]") && q.contains('.'), "millisecond UTC form: {q}");
}

/// A configured log_id is the cursor as it is: no request, no token.
#[tokio::test]
async fn bootstrap_log_id_needs_no_request() {
    let fake = fake().await;
    let c = client(&fake.config());
    let id = lid("90020211201185132572079310688835925971249535794074878050");
    let b = c.bootstrap(&Start::LogId(id.clone())).await.unwrap();
    assert!(matches!(b, Bootstrap::After(ref after) if *after == id), "{b:?}");
    assert_eq!(fake.requests(), 0);
}

/// On an empty tenant every searching form yields neither a cursor nor an entry (never an empty `from`).
#[tokio::test]
async fn bootstrap_on_an_empty_tenant_yields_nothing() {
    let fake = fake().await;
    let c = client(&fake.config());
    for start in [Start::Now, Start::Oldest, Start::Time(Utc::now())] {
        let b = c.bootstrap(&start).await.unwrap();
        assert!(matches!(b, Bootstrap::Empty), "{start:?}: {b:?}");
    }
    assert_eq!(fake.log_requests().len(), 3);
    assert!(fake.log_requests().iter().all(|r| r.query("from").is_none()));
    assert_eq!(c.probe().await.unwrap(), 0);
    fake.push_synthetic(3);
    assert_eq!(c.probe().await.unwrap(), 1);
}

/// A 400 on a `from` request (the entry aged out) is reported as an expired checkpoint, neither transient
/// nor fatal.
#[tokio::test]
async fn a_400_on_from_is_an_expired_checkpoint() {
    let fake = fake().await;
    fake.push_synthetic(20);
    fake.expire_oldest(10);
    let c = client(&fake.config());
    let err = c.page_after(&lid(&fake.log_id(3)), 100).await.unwrap_err();
    assert!(err.is_expired_checkpoint(), "{err:?}");
    assert!(!err.is_transient() && !err.is_fatal());
    assert!(err.to_string().contains(&fake.log_id(3)), "{err}");
    // A checkpoint inside the window still reads.
    assert_eq!(c.page_after(&lid(&fake.log_id(12)), 100).await.unwrap().entries.len(), 7);
}

/// The other behaviour Auth0 may have: an aged-out `from` silently yields the oldest retained entries.
#[tokio::test]
async fn an_aged_out_from_can_also_yield_the_oldest_retained_entries() {
    let fake = FakeAuth0::start(FakeOptions {
        expired_from: ExpiredFrom::OldestRetained,
        ..FakeOptions::realistic()
    })
    .await;
    let all = fake.push_synthetic(20);
    fake.expire_oldest(10);
    let c = client(&fake.config());
    let page = c.page_after(&lid(&fake.log_id(3)), 100).await.unwrap();
    assert_eq!(raw_ids(&page.entries), ids(&all[10..]));
}

/// A 429 with Retry-After reports that wait, and the pacer holds the next request at least that long.
#[tokio::test]
async fn a_429_with_retry_after_reports_the_wait_and_holds_the_next_request() {
    let fake = fake().await;
    fake.push_synthetic(3);
    fake.set_hook(|req, n| (is_logs(req) && n == 2).then(|| too_many().header("retry-after", "1")));
    let c = client(&fake.config());
    let err = c.page_after(&lid(&fake.log_id(0)), 10).await.unwrap_err();
    assert!(err.is_transient());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    c.page_after(&lid(&fake.log_id(0)), 10).await.unwrap();
    let r = fake.log_requests();
    let gap = r[1].at - r[0].at;
    assert!(gap >= Duration::from_millis(950), "the next request came {gap:?} after the 429");
}

/// Without Retry-After, `x-ratelimit-reset` (absolute epoch seconds) gives the wait; a past, absurd or
/// garbage value stays sane and bounded.
#[tokio::test]
async fn a_429_wait_comes_from_x_ratelimit_reset_and_stays_bounded() {
    let fake = fake().await;
    // (x-ratelimit-reset, the accepted range of retry_after in ms, or None when it must be absent)
    let cases = [
        ((epoch() + 3).to_string(), Some((1_500, 3_000))),
        ((epoch() - 30).to_string(), Some((0, 1_000))),
        ((epoch() + 86_400).to_string(), Some((0, 60_000))),
        ("soon".to_string(), None),
        ("-5".to_string(), None),
    ];
    for (reset, expected) in cases {
        let value = reset.clone();
        fake.set_hook(move |req, _| {
            is_logs(req)
                .then(|| too_many().header("x-ratelimit-remaining", "0").header("x-ratelimit-reset", &value))
        });
        let c = client(&fake.config());
        let err = c
            .page_after(&lid("90020260101000000000000000000000000000000000000000000001"), 10)
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        let got = err.retry_after().map(|d| d.as_millis() as u64);
        let fits = match (expected, got) {
            (Some((lo, hi)), Some(ms)) => lo <= ms && ms <= hi,
            (None, None) => true,
            _ => false,
        };
        assert!(fits, "reset {reset}: retry_after {got:?} ms, expected {expected:?}");
    }
}

/// Request starts are spaced by 1 / max_requests_per_second, even when several tasks share the client.
#[tokio::test]
async fn the_pacer_spaces_request_starts_even_for_concurrent_callers() {
    // Each request has its own slot, so the k-th to arrive came at least k intervals after the start; noise can
    // only delay a request, never bring it forward.
    let fake = fake().await;
    fake.push_synthetic(5);
    let mut cfg = fake.config();
    cfg.max_requests_per_second = 10.0;
    let c = client(&cfg);
    let from = fake.log_id(0);
    let started = Instant::now();
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let c = c.clone();
            let from = from.clone();
            tokio::spawn(async move {
                for _ in 0..6 {
                    c.page_after(&lid(&from), 10).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let r = fake.log_requests();
    assert_eq!(r.len(), 18);
    // Unpaced, the three callers' requests would arrive in bursts of three, milliseconds apart.
    for (k, req) in r.iter().enumerate() {
        let after = req.at.duration_since(started);
        assert!(
            after >= Duration::from_millis(100) * k as u32,
            "request {k} arrived {after:?} after the start"
        );
    }
}

/// `x-ratelimit-remaining: 0` holds the next request until `x-ratelimit-reset`, so the client is never refused.
#[tokio::test]
async fn remaining_zero_makes_the_next_request_wait_for_the_reset() {
    let fake = FakeAuth0::start(FakeOptions {
        bucket: Some(Bucket { burst: 3, per_second: 2.0 }),
        ..FakeOptions::realistic()
    })
    .await;
    fake.push_synthetic(5);
    let c = client(&fake.config());
    for _ in 0..7 {
        c.page_after(&lid(&fake.log_id(0)), 10).await.unwrap();
    }
    assert_eq!(fake.rate_limited(), 0, "the client was refused");
    let r = fake.log_requests();
    let mut held = 0;
    for w in r.windows(2) {
        if w[0].remaining == Some(0) {
            held += 1;
            let reset = UNIX_EPOCH + Duration::from_secs(w[0].reset.unwrap());
            assert!(w[1].wall + Duration::from_millis(50) >= reset, "a request went out before the reset");
        }
    }
    assert!(held >= 1, "the bucket never ran dry, so nothing was tested: {r:?}");
}

/// A truncated page, or a success body that is not a JSON array, is a transient error.
#[tokio::test]
async fn a_truncated_or_malformed_page_is_transient() {
    let fake = fake().await;
    let all = fake.push_synthetic(5);
    let body = FakeAuth0::page_body(&all[1..]);
    fake.set_hook(move |req, n| {
        is_logs(req).then(|| {
            if n == 2 {
                Reply::Truncate { status: 200, headers: vec![], body: body.clone(), keep: body.len() / 2 }
            } else {
                Reply::json(200, &json!({"logs": []}))
            }
        })
    });
    let c = client(&fake.config());
    for _ in 0..2 {
        let err = c.page_after(&lid(&fake.log_id(0)), 10).await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
    }
}

/// A connection reset is transient.
#[tokio::test]
async fn a_connection_reset_is_transient() {
    let fake = fake().await;
    fake.set_hook(|req, _| is_logs(req).then_some(Reply::Reset));
    let c = client(&fake.config());
    let err =
        c.page_after(&lid("90020260101000000000000000000000000000000000000000000001"), 10).await.unwrap_err();
    assert!(err.is_transient() && err.status().is_none(), "{err:?}");
}

/// A reply slower than auth0.timeout is a transient error that says it timed out.
#[tokio::test]
async fn a_reply_slower_than_the_timeout_is_transient() {
    let fake = fake().await;
    fake.set_hook(|req, _| {
        is_logs(req).then(|| Reply::json(200, &json!([])).delayed(Duration::from_secs(3)))
    });
    let mut cfg = fake.config();
    cfg.timeout = Duration::from_millis(300);
    let c = client(&cfg);
    let err =
        c.page_after(&lid("90020260101000000000000000000000000000000000000000000001"), 10).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("timed out"), "{err}");
}

/// A body that trickles in, a byte at a time, forever under the page limit, is cut at auth0.timeout as well:
/// the timeout covers the whole answer, not only its head, at both endpoints.
#[tokio::test]
async fn a_reply_whose_body_trickles_in_is_cut_at_the_timeout() {
    // 200 bytes, one each 50 ms: ten seconds for an answer that would otherwise be valid.
    let trickle = |body: String| {
        Reply::new(200, body)
            .header("content-type", "application/json")
            .chunked(1, Some(Duration::from_millis(50)))
    };
    let paging = fake().await;
    paging.set_hook(move |req, _| is_logs(req).then(|| trickle(format!("[{}]", " ".repeat(198)))));
    let mut cfg = paging.config();
    cfg.timeout = Duration::from_millis(500);
    let c = client(&cfg);
    c.ensure_token().await.unwrap();
    let from = lid("90020260101000000000000000000000000000000000000000000001");
    let err = c.page_after(&from, 10).await.unwrap_err();
    assert!(err.is_transient() && err.to_string().contains("timed out"), "{err}");

    let minting = fake().await;
    minting.set_hook(move |req, _| {
        (req.path == "/oauth/token").then(|| {
            trickle(format!(
                r#"{{"access_token":"{}","token_type":"Bearer","expires_in":86400,"scope":"read:logs"}}"#,
                "a".repeat(150)
            ))
        })
    });
    let mut cfg = minting.config();
    cfg.timeout = Duration::from_millis(500);
    let err = client(&cfg).ensure_token().await.unwrap_err();
    assert!(err.is_transient() && err.to_string().contains("timed out"), "{err}");
}

/// 5xx answers are transient; a redirect is not a success and points at auth0.base_url.
#[tokio::test]
async fn a_5xx_is_transient_and_a_redirect_is_not_success() {
    let fake = fake().await;
    fake.set_hook(|req, n| {
        is_logs(req).then(|| {
            if n == 2 {
                Reply::text(502, "Bad Gateway: Logs Service server responded with an internal error")
            } else {
                Reply::new(302, "").header("location", "https://elsewhere.example.com/api/v2/logs")
            }
        })
    });
    let c = client(&fake.config());
    let from = "90020260101000000000000000000000000000000000000000000001";
    let e502 = c.page_after(&lid(from), 10).await.unwrap_err();
    assert!(e502.is_transient() && e502.status() == Some(502), "{e502:?}");
    let e302 = c.page_after(&lid(from), 10).await.unwrap_err();
    assert!(e302.is_fatal() && e302.status() == Some(302), "{e302:?}");
    assert!(e302.to_string().contains("auth0.base_url"), "{e302}");
}

/// Errors that tell the pipeline nothing special keep `retry_after` empty and their class stable.
#[test]
fn error_classes_are_exclusive() {
    let e = Error::ExpiredCheckpoint { from: "1".into(), message: "gone".into() };
    assert!(e.is_expired_checkpoint() && !e.is_transient() && !e.is_fatal() && e.retry_after().is_none());
}

/// The fake's bucket answers an unpaced caller with Auth0's 429 body, rate-limit headers and Retry-After
/// (and its token endpoint takes a JSON body), so later tests can rely on it.
#[tokio::test]
async fn the_fake_bucket_refuses_an_unpaced_caller_like_auth0() {
    let fake = FakeAuth0::start(FakeOptions {
        bucket: Some(Bucket { burst: 2, per_second: 0.5 }),
        retry_after_header: true,
        ..FakeOptions::realistic()
    })
    .await;
    let http = reqwest::Client::new();
    let token: Value = http
        .post(format!("{}/oauth/token", fake.url()))
        .json(&json!({
            "grant_type": "client_credentials", "client_id": fake.client_id,
            "client_secret": fake.client_secret, "audience": fake.config().audience
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bearer = format!("Bearer {}", token["access_token"].as_str().unwrap());
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = http
            .get(format!("{}/api/v2/logs?sort=date:-1&per_page=1&page=0", fake.url()))
            .header("authorization", &bearer)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        assert_eq!(r.headers()["x-ratelimit-limit"], "2");
        if r.status() == 429 {
            assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
            assert!(r.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["errorCode"], "too_many_requests");
        }
    }
    assert_eq!(statuses, vec![200, 200, 429]);
    assert_eq!(fake.rate_limited(), 1);
}
