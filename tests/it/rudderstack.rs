//! The RudderStack sink against the fake data plane: every response class, batching limits, webhook mode,
//! the key check, and that the write key never leaks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use auth0_rudderstack::config::{self, Mode};
use auth0_rudderstack::rudderstack::{Error, Item, Report, Sink};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::fake_rudderstack::{
    self, DISABLED_KEY, FakeRudderStack, HTTP_SOURCE_KEY, KeySource, Options, WRITE_KEY,
};
use crate::support::http::Reply;

fn cfg(url: &str, key: &str, mode: Mode) -> config::RudderStack {
    let mut c = config::RudderStack::new(url::Url::parse(url).unwrap(), key, mode).unwrap();
    c.timeout = Duration::from_secs(10);
    c
}

/// A shutdown that never comes.
fn never() -> CancellationToken {
    CancellationToken::new()
}

fn sink(c: &config::RudderStack) -> Sink {
    Sink::new(c).unwrap()
}

/// A valid event with a recognisable messageId.
fn event(i: i64) -> Item {
    let v = json!({"type": "track", "event": "Success Login", "anonymousId": format!("anon-{i}"),
                   "messageId": format!("msg-{i}"), "properties": {"i": i}});
    Item { seq: i, json: v.to_string() }
}

/// An event the gateway refuses: neither anonymousId nor userId.
fn bad_event(i: i64) -> Item {
    let v = json!({"type": "track", "event": "Success Login", "messageId": format!("msg-{i}")});
    Item { seq: i, json: v.to_string() }
}

/// An event padded to exactly `len` bytes of JSON.
fn event_of_len(i: i64, len: usize) -> Item {
    let base = json!({"anonymousId": format!("a{i}"), "messageId": format!("msg-{i}"), "p": ""}).to_string();
    let pad = "x".repeat(len - base.len());
    let item = Item { seq: i, json: base.replace("\"p\":\"\"", &format!("\"p\":\"{pad}\"")) };
    assert_eq!(item.json.len(), len);
    item
}

fn seqs(items: &[Item]) -> Vec<i64> {
    items.iter().map(|i| i.seq).collect()
}

fn ids(range: impl IntoIterator<Item = i64>) -> Vec<String> {
    range.into_iter().map(|i| format!("msg-{i}")).collect()
}

fn assert_clean(report: &Report) {
    assert!(report.error.is_none(), "unexpected error: {:?}", report.error);
}

/// A 2xx delivers every item, in order, in one request with the documented headers.
#[tokio::test]
async fn a_2xx_answer_delivers_every_item_in_order() {
    let fake = FakeRudderStack::start_default().await;
    let items: Vec<Item> = (0..10).map(event).collect();
    let report = sink(&cfg(&fake.url(), WRITE_KEY, Mode::Batch)).deliver(items.clone(), &never()).await;
    assert_clean(&report);
    assert_eq!(report.delivered, seqs(&items));
    assert!(report.rejected.is_empty());
    assert_eq!(fake.message_ids(), ids(0..10));
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str(), r.status, r.events),
        ("POST", "/v1/batch", 200, Some(10))
    );
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    assert!(r.user_agent.as_deref().unwrap().starts_with("auth0-rudderstack/"), "{:?}", r.user_agent);
    let expected =
        format!("Basic {}", fake_rudderstack::base64_std_encode(format!("{WRITE_KEY}:").as_bytes()));
    assert_eq!(r.authorization.as_deref(), Some(expected.as_str()));
}

/// A 503 stops delivery with a transient error and leaves every item pending; the next attempt delivers.
#[tokio::test]
async fn a_503_is_transient_and_leaves_every_item_pending_until_a_later_attempt_succeeds() {
    let fake = FakeRudderStack::start_default().await;
    let s = sink(&cfg(&fake.url(), WRITE_KEY, Mode::Batch));
    let items: Vec<Item> = (0..5).map(event).collect();
    fake.set_outage(true);
    let report = s.deliver(items.clone(), &never()).await;
    let err = report.error.expect("an error");
    assert!(err.is_transient() && !err.is_fatal(), "{err:?}");
    assert!(err.to_string().contains("503"), "{err}");
    assert!(report.delivered.is_empty() && report.rejected.is_empty());
    assert_eq!(fake.event_count(), 0);
    fake.set_outage(false);
    let report = s.deliver(items.clone(), &never()).await;
    assert_clean(&report);
    assert_eq!(report.delivered, seqs(&items));
}

/// An answer slower than `rudderstack.timeout` is a transient timeout, with nothing delivered.
#[tokio::test]
async fn a_reply_slower_than_the_timeout_is_a_transient_error() {
    let fake = FakeRudderStack::start_default().await;
    fake.hook(|_, _| Some(Reply::new(200, "ok").delayed(Duration::from_secs(5))));
    let mut c = cfg(&fake.url(), WRITE_KEY, Mode::Batch);
    c.timeout = Duration::from_millis(200);
    let report = sink(&c).deliver((0..3).map(event).collect(), &never()).await;
    let err = report.error.expect("an error");
    assert!(matches!(err, Error::Timeout { .. }) && err.is_transient(), "{err:?}");
    assert!(report.delivered.is_empty() && report.rejected.is_empty());
}

/// An answer whose body trickles in, a byte a second, never holds delivery: the read is cut at
/// `rudderstack.timeout`. A 200 still means stored (its status is the commit point); a 503 is still a
/// transient refusal, quoting what arrived.
#[tokio::test]
async fn a_reply_whose_body_trickles_in_is_cut_at_the_timeout() {
    for (status, delivered) in [(200, 3), (503, 0)] {
        let fake = FakeRudderStack::start_default().await;
        fake.hook(move |_, _| {
            Some(Reply::new(status, "o".repeat(200)).chunked(1, Some(Duration::from_secs(1))))
        });
        let mut c = cfg(&fake.url(), WRITE_KEY, Mode::Batch);
        c.timeout = Duration::from_millis(500);
        // The whole body would take 200 s.
        let report = tokio::time::timeout(
            Duration::from_secs(30),
            sink(&c).deliver((0..3).map(event).collect(), &never()),
        )
        .await
        .unwrap_or_else(|_| panic!("a {status} whose body trickles held delivery"));
        assert_eq!(report.delivered.len(), delivered, "{status}: {report:?}");
        assert!(report.rejected.is_empty(), "{status}: {report:?}");
        match report.error {
            None => assert_eq!(status, 200),
            Some(err) => {
                assert!(status == 503 && err.is_transient(), "{status}: {err:?}");
                assert!(matches!(err, Error::Unavailable { status: 503, .. }), "{err:?}");
            }
        }
    }
}

/// A transient error after some requests succeeded still reports those as delivered, in order.
#[tokio::test]
async fn a_transient_error_after_some_requests_reports_what_was_delivered_before_it() {
    let fake = FakeRudderStack::start_default().await;
    fake.hook(|_, n| (n >= 1).then(|| Reply::text(500, "pq: could not write")));
    let mut c = cfg(&fake.url(), WRITE_KEY, Mode::Batch);
    c.max_batch_events = 5;
    let report = sink(&c).deliver((0..12).map(event).collect(), &never()).await;
    assert!(report.error.as_ref().unwrap().is_transient());
    assert_eq!(report.delivered, (0..5).collect::<Vec<_>>());
    assert!(report.rejected.is_empty());
    assert_eq!(fake.message_ids(), ids(0..5));
    assert_eq!(fake.requests().len(), 2, "nothing is sent after the failure");
}

/// A connection reset or a refused connection is a transient error.
#[tokio::test]
async fn a_reset_or_refused_connection_is_transient() {
    let fake = FakeRudderStack::start_default().await;
    fake.hook(|_, _| Some(Reply::Reset));
    let report = sink(&cfg(&fake.url(), WRITE_KEY, Mode::Batch)).deliver(vec![event(1)], &never()).await;
    let err = report.error.expect("an error");
    assert!(err.is_transient(), "{err:?}");
    assert!(report.delivered.is_empty());

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let report = sink(&cfg(&format!("http://127.0.0.1:{port}"), WRITE_KEY, Mode::Batch))
        .deliver(vec![event(1)], &never())
        .await;
    let err = report.error.expect("an error");
    assert!(matches!(err, Error::Transport { .. }) && err.is_transient(), "{err:?}");
}

/// A 401 is fatal, quotes the gateway's reason and names the setting to fix; items stay pending.
#[tokio::test]
async fn a_401_is_fatal_and_quotes_the_gateways_reason() {
    let fake = FakeRudderStack::start_default().await;
    let report = sink(&cfg(&fake.url(), "not-a-known-key", Mode::Batch))
        .deliver((0..3).map(event).collect(), &never())
        .await;
    let err = report.error.expect("an error");
    assert!(err.is_fatal() && !err.is_transient());
    let msg = err.to_string();
    assert!(matches!(err, Error::WriteKeyRejected { .. }), "{err:?}");
    assert!(msg.contains("invalid write key") && msg.contains("rudderstack.write_key"), "{msg}");
    assert!(report.delivered.is_empty() && report.rejected.is_empty());
}

/// A 404 for a disabled source is fatal and says the source is disabled.
#[tokio::test]
async fn a_404_for_a_disabled_source_is_fatal_and_says_so() {
    let fake = FakeRudderStack::start_default().await;
    let report = sink(&cfg(&fake.url(), DISABLED_KEY, Mode::Batch)).deliver(vec![event(1)], &never()).await;
    let err = report.error.expect("an error");
    assert!(matches!(err, Error::SourceDisabled { .. }) && err.is_fatal(), "{err:?}");
    assert!(err.to_string().contains("source is disabled"), "{err}");
    assert!(report.delivered.is_empty() && report.rejected.is_empty());
}

/// A 413 splits the request in halves and delivers both, in order.
#[tokio::test]
async fn a_413_splits_the_request_and_delivers_the_halves() {
    let fake = FakeRudderStack::start(Options { max_request_bytes: 1000, ..Options::default() }).await;
    let items: Vec<Item> = (0..10).map(|i| event_of_len(i, 150)).collect();
    let report = sink(&cfg(&fake.url(), WRITE_KEY, Mode::Batch)).deliver(items.clone(), &never()).await;
    assert_clean(&report);
    assert_eq!(report.delivered, seqs(&items));
    assert_eq!(fake.message_ids(), ids(0..10));
    assert_eq!((fake.count(413), fake.count(200)), (1, 2));
}

/// An item that still gets 413 on its own is rejected with the reason; the others are delivered.
#[tokio::test]
async fn a_single_item_that_still_gets_413_is_rejected() {
    let fake = FakeRudderStack::start(Options { max_request_bytes: 300, ..Options::default() }).await;
    let items = vec![event_of_len(0, 60), event_of_len(1, 400), event_of_len(2, 60), event_of_len(3, 60)];
    let report = sink(&cfg(&fake.url(), WRITE_KEY, Mode::Batch)).deliver(items, &never()).await;
    assert_clean(&report);
    assert_eq!(report.delivered, vec![0, 2, 3]);
    assert_eq!(report.rejected.len(), 1);
    let (seq, reason) = &report.rejected[0];
    assert_eq!(*seq, 1);
    assert!(reason.contains("413") && reason.contains("request size exceeds max limit"), "{reason}");
    assert_eq!(fake.message_ids(), vec!["msg-0", "msg-2", "msg-3"]);
}

/// Bisection on 400 isolates exactly the bad events of 37, delivers all others in order, in few requests.
#[tokio::test]
async fn a_400_is_bisected_to_reject_exactly_the_bad_events() {
    let fake = FakeRudderStack::start_default().await;
    let bad = [3, 17, 30];
    let items: Vec<Item> = (0..37).map(|i| if bad.contains(&i) { bad_event(i) } else { event(i) }).collect();
    let report = sink(&cfg(&fake.url(), WRITE_KEY, Mode::Batch)).deliver(items, &never()).await;
    assert_clean(&report);
    let good: Vec<i64> = (0..37).filter(|i| !bad.contains(i)).collect();
    assert_eq!(report.delivered, good);
    assert_eq!(fake.message_ids(), ids(good.clone()));
    assert_eq!(report.rejected.iter().map(|(s, _)| *s).collect::<Vec<_>>(), bad);
    for (_, reason) in &report.rejected {
        assert!(reason.contains("request neither has anonymousId nor userId"), "{reason}");
    }
    // k bad items among n cost at most about 2·k·log2(n) requests (here 3·2·6 = 36), far fewer than one
    // request per item plus the bisection tree would.
    let requests = fake.requests().len();
    assert!(requests <= 2 * bad.len() * 6, "{requests} requests");
    assert_eq!(report.requests, requests);
}

/// A 4xx the gateway never sends (a proxy's 403 or 422) is not a verdict on an event: delivery stops with a
/// fatal error that says so, and nothing is set aside, so a misbehaving proxy cannot empty the outbox into
/// dead letters.
#[tokio::test]
async fn an_unexpected_4xx_stops_delivery_without_setting_anything_aside() {
    let fake = FakeRudderStack::start_default().await;
    fake.hook(|req, _| req.body_text().contains("msg-2\"").then(|| Reply::text(403, "Forbidden by policy")));
    let report =
        sink(&cfg(&fake.url(), WRITE_KEY, Mode::Batch)).deliver((0..4).map(event).collect(), &never()).await;
    assert!(report.delivered.is_empty() && report.rejected.is_empty(), "{report:?}");
    let err = report.error.expect("an error");
    assert!(!err.is_transient());
    let message = err.to_string();
    assert!(message.contains("403") && message.contains("proxy"), "{message}");
}

/// A redirect is not success and is not followed: the target receives nothing, and the error names both.
#[tokio::test]
async fn a_redirect_is_neither_success_nor_followed() {
    let fake = FakeRudderStack::start_default().await;
    let target = FakeRudderStack::start_default().await;
    let location = format!("{}/v1/batch", target.url());
    fake.set_redirect(Some((302, location.clone())));
    let report =
        sink(&cfg(&fake.url(), WRITE_KEY, Mode::Batch)).deliver((0..3).map(event).collect(), &never()).await;
    let err = report.error.expect("an error");
    assert!(matches!(err, Error::Redirect { status: 302, .. }) && !err.is_transient(), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&location) && msg.contains("rudderstack.data_plane_url"), "{msg}");
    assert!(report.delivered.is_empty() && report.rejected.is_empty());
    assert!(target.requests().is_empty(), "the redirect was followed");
    assert_eq!(fake.count(302), 1);
}

/// An item over `max_event_bytes` is rejected without any request; its neighbours are delivered.
#[tokio::test]
async fn an_item_over_max_event_bytes_is_rejected_without_any_request() {
    let fake = FakeRudderStack::start_default().await;
    let mut c = cfg(&fake.url(), WRITE_KEY, Mode::Batch);
    c.max_event_bytes = 100;
    let s = sink(&c);
    let report = s.deliver(vec![event_of_len(7, 200)], &never()).await;
    assert_clean(&report);
    assert!(report.delivered.is_empty());
    let (seq, reason) = &report.rejected[0];
    assert_eq!(*seq, 7);
    assert!(reason.contains("200") && reason.contains("100"), "{reason}");
    assert!(fake.requests().is_empty());

    let report =
        s.deliver(vec![event_of_len(1, 90), event_of_len(2, 101), event_of_len(3, 90)], &never()).await;
    assert_eq!(report.delivered, vec![1, 3]);
    assert_eq!(report.rejected.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![2]);
    assert_eq!(fake.requests().len(), 1);
}

/// Requests never exceed `max_batch_events`, and are packed greedily up to it.
#[tokio::test]
async fn batches_respect_max_batch_events() {
    let fake = FakeRudderStack::start_default().await;
    let mut c = cfg(&fake.url(), WRITE_KEY, Mode::Batch);
    c.max_batch_events = 4;
    let report = sink(&c).deliver((0..10).map(event).collect(), &never()).await;
    assert_clean(&report);
    let sizes: Vec<_> = fake.requests().iter().map(|r| r.events.unwrap()).collect();
    assert_eq!(sizes, vec![4, 4, 2]);
    assert_eq!(fake.message_ids(), ids(0..10));
}

/// Request bodies never exceed `max_batch_bytes`, and each is full: the next item would not have fit.
#[tokio::test]
async fn batches_respect_max_batch_bytes() {
    let fake = FakeRudderStack::start_default().await;
    let mut c = cfg(&fake.url(), WRITE_KEY, Mode::Batch);
    c.max_event_bytes = 500;
    c.max_batch_bytes = 1000;
    let lens = [300, 100, 450, 200, 200, 200, 500, 50, 60, 70];
    let items: Vec<Item> = lens.iter().enumerate().map(|(i, &l)| event_of_len(i as i64, l)).collect();
    let report = sink(&c).deliver(items, &never()).await;
    assert_clean(&report);
    assert_eq!(report.delivered, (0..10).collect::<Vec<_>>());
    let reqs = fake.requests();
    let mut next = 0;
    for r in &reqs {
        assert!(r.body_bytes <= 1000, "{} bytes", r.body_bytes);
        next += r.events.unwrap();
        if next < lens.len() {
            assert!(
                r.body_bytes + 1 + lens[next] > 1000,
                "request of {} bytes could have taken the next item",
                r.body_bytes
            );
        }
    }
    // {"batch":[ + 300,100,450 + ]} = 12 + 850 + 2 commas = 864; then 200×3, then 500,50,60,70.
    assert_eq!(reqs.iter().map(|r| r.events.unwrap()).collect::<Vec<_>>(), vec![3, 3, 4]);
    assert_eq!(reqs[0].body_bytes, 864);
}

/// Webhook mode posts `[wrapper, ...]` to `/v1/webhook` with the key in the query and no Basic auth.
#[tokio::test]
async fn webhook_mode_posts_wrappers_to_the_webhook_endpoint_with_the_key() {
    let fake = FakeRudderStack::start_default().await;
    let wrappers: Vec<Value> = (0..3)
        .map(|i| json!({"log_id": format!("9002021{i}"), "data": {"type": "s", "log_id": format!("9002021{i}")}}))
        .collect();
    let items: Vec<Item> =
        wrappers.iter().enumerate().map(|(i, w)| Item { seq: i as i64, json: w.to_string() }).collect();
    let report = sink(&cfg(&fake.url(), WRITE_KEY, Mode::Webhook)).deliver(items, &never()).await;
    assert_clean(&report);
    assert_eq!(report.delivered, vec![0, 1, 2]);
    assert_eq!(fake.wrappers(), wrappers);
    assert_eq!(fake.event_count(), 0);
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/v1/webhook");
    assert_eq!(reqs[0].key, Some((KeySource::Query, WRITE_KEY.to_string())));
    assert_eq!(reqs[0].authorization, None);
}

/// `check` accepts a good key without storing anything, and tells a rejected key from a disabled source.
#[tokio::test]
async fn check_tells_a_good_key_from_a_rejected_key_and_a_disabled_source() {
    let fake = FakeRudderStack::start_default().await;
    for mode in [Mode::Batch, Mode::Webhook] {
        sink(&cfg(&fake.url(), WRITE_KEY, mode)).check().await.unwrap();
        let err = sink(&cfg(&fake.url(), "unknown-key", mode)).check().await.unwrap_err();
        assert!(matches!(err, Error::WriteKeyRejected { .. }) && err.is_fatal(), "{err:?}");
        let err = sink(&cfg(&fake.url(), DISABLED_KEY, mode)).check().await.unwrap_err();
        assert!(matches!(err, Error::SourceDisabled { .. }) && err.is_fatal(), "{err:?}");
    }
    assert_eq!((fake.event_count(), fake.wrappers().len()), (0, 0), "check stored something");
    assert_eq!(fake.count(400), 2, "the good key reached validation in both modes");

    // A non-webhook source's key passes on /v1/batch but not on /v1/webhook, and the message says why.
    sink(&cfg(&fake.url(), HTTP_SOURCE_KEY, Mode::Batch)).check().await.unwrap();
    let err = sink(&cfg(&fake.url(), HTTP_SOURCE_KEY, Mode::Webhook)).check().await.unwrap_err();
    assert!(err.to_string().contains("webhook source"), "{err}");

    fake.set_outage(true);
    let err = sink(&cfg(&fake.url(), WRITE_KEY, Mode::Batch)).check().await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}

/// A key with characters that need escaping, so every encoding of it can be looked for.
const SECRET_KEY: &str = "wk/Sekr3t+key=9&z";

fn leak_forms() -> Vec<String> {
    vec![
        SECRET_KEY.to_string(),
        url::form_urlencoded::byte_serialize(SECRET_KEY.as_bytes()).collect(),
        fake_rudderstack::base64_std_encode(format!("{SECRET_KEY}:").as_bytes()),
    ]
}

fn assert_no_key(text: &str) {
    for form in leak_forms() {
        assert!(!text.contains(&form), "the write key ({form}) leaked into: {text}");
    }
}

/// Drive every error path that could carry the key: URL with the key, echoed bodies, echoed Locations.
async fn provoke_every_error(fake: &FakeRudderStack) -> Vec<Error> {
    let mut errors = Vec::new();
    let mut reports = Vec::new();
    let dead_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for mode in [Mode::Batch, Mode::Webhook] {
        // Refused connection: reqwest's own message would include the URL, which holds the key in webhook mode.
        let s = sink(&cfg(&format!("http://127.0.0.1:{dead_port}"), SECRET_KEY, mode));
        reports.push(s.deliver(vec![event(1)], &never()).await);
        errors.push(s.check().await.unwrap_err());

        let s = sink(&cfg(&fake.url(), SECRET_KEY, mode));
        // A body that echoes the key.
        fake.hook(|req, _| {
            let echo = format!("bad key {} / {}", req.query("writeKey").unwrap_or(""), SECRET_KEY);
            Some(Reply::text(500, &echo))
        });
        reports.push(s.deliver(vec![event(1)], &never()).await);
        // A rejection whose body echoes the key.
        fake.hook(|_, _| Some(Reply::text(400, &format!("event refused for {SECRET_KEY}"))));
        reports.push(s.deliver(vec![event(1)], &never()).await);
        // A timeout.
        let mut c = cfg(&fake.url(), SECRET_KEY, mode);
        c.timeout = Duration::from_millis(100);
        fake.hook(|_, _| Some(Reply::new(200, "ok").delayed(Duration::from_secs(3))));
        reports.push(sink(&c).deliver(vec![event(1)], &never()).await);
        fake.set_hook(None);
        // A redirect that echoes the query string, as an http→https redirect does.
        let enc: String = url::form_urlencoded::byte_serialize(SECRET_KEY.as_bytes()).collect();
        fake.set_redirect(Some((
            301,
            format!("https://elsewhere.example/v1/webhook?writeKey={enc}&k={SECRET_KEY}"),
        )));
        reports.push(s.deliver(vec![event(1)], &never()).await);
        errors.push(s.check().await.unwrap_err());
        fake.set_redirect(None);
        // A key the gateway refuses.
        fake.set_outage(false);
    }
    for mut r in reports {
        assert_no_key(&format!("{r:?}"));
        for (_, reason) in &r.rejected {
            assert_no_key(reason);
        }
        errors.extend(r.error.take());
    }
    errors
}

/// The write key never appears in any error's Display or Debug, nor in rejection reasons.
#[tokio::test]
async fn the_write_key_never_appears_in_errors() {
    let fake =
        FakeRudderStack::start(Options { write_keys: vec![SECRET_KEY.to_string()], ..Options::default() })
            .await;
    let errors = provoke_every_error(&fake).await;
    assert!(errors.len() >= 10, "only {} errors provoked", errors.len());
    let kinds: std::collections::HashSet<_> = errors.iter().map(std::mem::discriminant).collect();
    assert!(kinds.len() >= 4, "too few kinds of error: {errors:?}");
    for e in &errors {
        assert_no_key(&e.to_string());
        assert_no_key(&format!("{e:?}"));
    }
    let unknown = sink(&cfg(&fake.url(), "wk/other+key", Mode::Batch)).check().await.unwrap_err();
    assert!(!format!("{unknown} {unknown:?}").contains("wk/other+key"));
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// With every log level on, the write key never appears in the logs of any delivery or check path.
#[tokio::test]
async fn the_write_key_never_appears_in_logs_even_at_trace_level() {
    let captured = Captured::default();
    let writer = captured.clone();
    // While only one dispatcher exists, tracing-core decides a callsite's interest from the default of
    // whichever thread reaches it first; a test running concurrently would then switch this test's callsites
    // off. A second registered dispatcher makes it ask every dispatcher instead.
    let _second = tracing::Dispatch::new(tracing_subscriber::registry());
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // Thread-local, and the test runtime is single-threaded, so every task of this test logs here.
    let _guard = tracing::subscriber::set_default(subscriber);

    let fake =
        FakeRudderStack::start(Options { write_keys: vec![SECRET_KEY.to_string()], ..Options::default() })
            .await;
    for mode in [Mode::Batch, Mode::Webhook] {
        let s = sink(&cfg(&fake.url(), SECRET_KEY, mode));
        s.check().await.unwrap();
        let items = vec![event(1), bad_event(2), event(3)];
        let items = if mode == Mode::Webhook { items[..1].to_vec() } else { items };
        let report = s.deliver(items, &never()).await;
        assert_clean(&report);
    }
    let _ = provoke_every_error(&fake).await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for expected in ["RudderStack answered", "delivery stopped", "RudderStack refused an event on its own"] {
        assert!(logs.contains(expected), "no {expected:?} in the captured logs:\n{logs}");
    }
    assert_no_key(&logs);
}

/// The fake answers exactly as rudder-server's gateway does (statuses, bodies, content type).
#[tokio::test]
async fn the_fake_gateway_answers_as_rudder_server_does() {
    let fake = FakeRudderStack::start_default().await;
    let client = reqwest::Client::new();
    let basic =
        |k: &str| format!("Basic {}", fake_rudderstack::base64_std_encode(format!("{k}:").as_bytes()));
    let batch = format!("{}/v1/batch", fake.url());
    let webhook = format!("{}/v1/webhook", fake.url());
    let cases: Vec<(&str, Option<String>, &str, u16, &str)> = vec![
        (&batch, None, r#"{"batch":[{"userId":"u"}]}"#, 401, "failed to read writekey from header\n"),
        (
            &batch,
            Some("Basic !!!".into()),
            r#"{"batch":[{"userId":"u"}]}"#,
            401,
            "failed to read writekey from header\n",
        ),
        (
            &batch,
            Some(basic("")),
            r#"{"batch":[{"userId":"u"}]}"#,
            401,
            "failed to read writekey from header\n",
        ),
        (&batch, Some(basic("nope")), r#"{"batch":[{"userId":"u"}]}"#, 401, "invalid write key\n"),
        (&batch, Some(basic(DISABLED_KEY)), r#"{"batch":[{"userId":"u"}]}"#, 404, "source is disabled\n"),
        (&batch, Some(basic(WRITE_KEY)), r#"{"batch":[{"userId":"u"}"#, 400, "invalid json\n"),
        (&batch, Some(basic(WRITE_KEY)), r#"{"batch":[]}"#, 400, "empty batch payload\n"),
        (&batch, Some(basic(WRITE_KEY)), r#"{"events":[{"userId":"u"}]}"#, 400, "empty batch payload\n"),
        (
            &batch,
            Some(basic(WRITE_KEY)),
            r#"{"batch":[{"userId":"u"},1]}"#,
            400,
            "event is not a valid rudder event\n",
        ),
        (
            &batch,
            Some(basic(WRITE_KEY)),
            r#"{"batch":[{"userId":" ","anonymousId":null}]}"#,
            400,
            "request neither has anonymousId nor userId\n",
        ),
        (&batch, Some(basic(WRITE_KEY)), r#"{"batch":[{"userId":"u"}]}"#, 200, "ok"),
        (&batch, Some(basic(HTTP_SOURCE_KEY)), r#"{"batch":[{"anonymousId":"a"}]}"#, 200, "ok"),
        (&webhook, None, "[]", 401, "failed to read writekey from query params\n"),
        (&webhook, Some(basic(HTTP_SOURCE_KEY)), "[]", 401, "invalid write key\n"),
        (&webhook, Some(basic(WRITE_KEY)), "[]", 400, "empty batch payload\n"),
    ];
    for (url, auth, body, status, text) in cases {
        let mut req = client.post(url).body(body.to_string());
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{url} {auth:?} {body}");
        assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
        assert_eq!(resp.text().await.unwrap(), text, "{url} {auth:?} {body}");
    }
    assert_eq!(fake.event_count(), 2, "only the two good batches are stored");
}

/// In webhook mode a 400 is bisected too, so one wrapper the source refuses does not hold back the others.
#[tokio::test]
async fn webhook_mode_bisects_a_400_down_to_the_refused_wrapper() {
    let fake = FakeRudderStack::start_default().await;
    fake.reject_events("TypeError: cannot read properties of undefined", |w| w.get("data").is_none());
    let items: Vec<Item> = (0..6)
        .map(|i| {
            let w =
                if i == 4 { json!({"log_id": "x"}) } else { json!({"log_id": format!("{i}"), "data": {}}) };
            Item { seq: i, json: w.to_string() }
        })
        .collect();
    let report = sink(&cfg(&fake.url(), WRITE_KEY, Mode::Webhook)).deliver(items, &never()).await;
    assert_clean(&report);
    assert_eq!(report.delivered, vec![0, 1, 2, 3, 5]);
    assert_eq!(report.rejected.len(), 1);
    assert!(report.rejected[0].1.contains("TypeError"), "{:?}", report.rejected);
    let logged: Vec<_> = fake.wrappers().iter().map(|w| w["log_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(logged, vec!["0", "1", "2", "3", "5"]);
}

/// A timeout after the gateway stored the events leaves them pending: delivery is at-least-once, never lossy.
#[tokio::test]
async fn a_timeout_after_the_gateway_stored_the_events_leaves_them_pending() {
    let fake = FakeRudderStack::start_default().await;
    fake.set_delay(Some(Duration::from_secs(5)));
    let mut c = cfg(&fake.url(), WRITE_KEY, Mode::Batch);
    c.timeout = Duration::from_millis(200);
    let report = sink(&c).deliver((0..3).map(event).collect(), &never()).await;
    assert!(report.error.as_ref().is_some_and(Error::is_transient), "{report:?}");
    assert!(report.delivered.is_empty());
    fake.wait_for_events(3, Duration::from_secs(5)).await;
    fake.set_delay(None);
    let report = sink(&c).deliver((0..3).map(event).collect(), &never()).await;
    assert_clean(&report);
    assert_eq!(
        fake.message_ids(),
        [ids(0..3), ids(0..3)].concat(),
        "the re-send carries the same messageIds"
    );
}

/// A disabled source (RudderStack's 404 `source is disabled`) ends `sync` with exit 1 saying so, and the
/// outbox is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_source_ends_sync_with_exit_1_and_keeps_the_outbox() {
    let (auth0, _) = crate::support::start_fakes().await;
    let fake = FakeRudderStack::start_default().await;
    auth0.push_synthetic(7);
    let mut app = crate::support::app::App::new(&auth0, &fake);
    app.set("rudderstack", "write_key", fake.disabled_key());
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(1), "{}", crate::support::app::text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("disabled"), "{err}");
    assert_eq!(fake.count(404), 1, "a disabled source is not retried");
    assert_eq!(app.status().await["outbox_depth"], 7);
}
