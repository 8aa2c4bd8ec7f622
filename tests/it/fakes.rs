//! Self-tests of the fakes: what a plain HTTP client sees from each realistic or hostile mode.
//!
//! The daemon's tests trust the fakes to be hostile in exactly the way they claim: a gzip bomb that really
//! inflates, an endless body the fake really ends, and a gateway that checks a request in rudder-server's
//! order. A fake that silently stopped doing one of these would turn those tests green for the wrong reason,
//! so each mode is driven here with reqwest alone, and every read is bounded in bytes and time.

use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use crate::support::fake_rudderstack::{self, Answers, FakeRudderStack, Refusal, Refusing, WRITE_KEY};
use crate::support::http::{EndReason, Hostile, Limits, Reply, Request, Server, StreamKind};

const MIB: u64 = 1 << 20;

/// A client that decodes gzip itself, as the daemon's does, with a total timeout so no test hangs.
fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

/// A client that leaves bodies as they came (no `accept-encoding` unless a request adds one).
fn raw_client() -> reqwest::Client {
    reqwest::Client::builder().no_gzip().timeout(Duration::from_secs(60)).build().unwrap()
}

/// Read at most `limit` bytes of the body, counting them and checking that each is `fill` when given.
/// Returns the count and whether the body ended (cleanly or not) before the limit.
async fn read_up_to(resp: &mut reqwest::Response, limit: u64, fill: Option<u8>) -> (u64, bool) {
    let mut seen = 0u64;
    // Each chunk holds at least one byte, so this loop ends by the limit; the client's timeout bounds the time.
    while seen < limit {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if let Some(f) = fill {
                    assert!(chunk.iter().all(|&b| b == f), "a byte other than {f} at about {seen}");
                }
                seen += chunk.len() as u64;
            }
            Ok(None) | Err(_) => return (seen, true),
        }
    }
    (seen, false)
}

/// A server that answers every request with `reply`.
async fn serve(reply: Reply) -> Server {
    Server::start(Arc::new(move |_: &Request| reply.clone())).await
}

/// The fake ends an endless body soon after the client hangs up, long before its time limit.
#[tokio::test]
async fn an_endless_body_is_ended_by_the_fake_once_the_client_hangs_up() {
    let server = serve(Reply::endless(200, "[", r#"{"log_id":"1"},"#)).await;
    let c = client();
    let mut resp = c.get(server.url()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let (read, ended) = read_up_to(&mut resp, 4 * MIB, None).await;
    assert!(!ended && read >= 4 * MIB, "the body went on: {read} bytes");
    drop(resp);
    drop(c);
    let ends = server.wait_for_stream_ends(1, Duration::from_secs(20)).await;
    assert_eq!((ends[0].kind, ends[0].why), (StreamKind::Endless, EndReason::ClientGone), "{ends:?}");
    assert!(ends[0].lasted < Limits::default().max_time);
    assert_eq!(server.open_streams(), 0);
}

/// An endless body stops at its byte limit, and the client sees a body that never completed.
#[tokio::test]
async fn an_endless_body_stops_at_its_byte_limit_and_never_completes() {
    let limits = Limits { max_wire_bytes: MIB, ..Limits::default() };
    let server = serve(Reply::endless(200, "", "x").limited(limits)).await;
    let resp = client().get(server.url()).send().await.unwrap();
    let err = resp.bytes().await.expect_err("an endless body cannot be read to a clean end");
    assert!(err.is_body() || err.is_decode(), "{err:?}");
    let ends = server.wait_for_stream_ends(1, Duration::from_secs(20)).await;
    assert_eq!(ends[0].why, EndReason::ByteLimit);
    assert!(ends[0].wire_bytes >= MIB && ends[0].wire_bytes < 2 * MIB, "{ends:?}");
}

/// An endless body sent to a client that stops reading but keeps the connection ends at the time limit.
#[tokio::test]
async fn an_endless_body_to_a_client_that_stops_reading_ends_at_the_time_limit() {
    let limits = Limits { max_time: Duration::from_secs(1), ..Limits::default() };
    let server = serve(Reply::endless(200, "", "y").limited(limits)).await;
    let resp = client().get(server.url()).send().await.unwrap();
    // Hold the response unread until the fake gave up on it.
    let ends = server.wait_for_stream_ends(1, Duration::from_secs(20)).await;
    assert_eq!(ends[0].why, EndReason::TimeLimit, "{ends:?}");
    drop(resp);
}

/// A gzip bomb inflates past 64 MiB for a client that reads it, while about a thousandth crosses the wire.
#[tokio::test]
async fn a_gzip_bomb_inflates_past_64_mib_while_little_crosses_the_wire() {
    let server = serve(Reply::gzip_bomb(200, 2 << 30, b' ').header("content-type", "application/json")).await;
    let c = client();
    let mut resp = c.get(server.url()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let (inflated, ended) = read_up_to(&mut resp, 100 * MIB, Some(b' ')).await;
    assert!(!ended && inflated > 64 * MIB, "inflated {inflated} bytes");
    drop(resp);
    drop(c);
    let ends = server.wait_for_stream_ends(1, Duration::from_secs(30)).await;
    assert_eq!(ends[0].kind, StreamKind::GzipBomb);
    // Whether the rest fit in the socket buffers or the write failed, the whole bomb is about 2 MB of wire.
    assert!(ends[0].wire_bytes < 3 * MIB, "{ends:?}");
}

/// A gzip bomb read to its end is a valid gzip stream (CRC and length) of exactly the promised bytes.
#[tokio::test]
async fn a_complete_gzip_bomb_is_valid_gzip_of_exactly_the_promised_size() {
    // Past one 16 MiB group, then whole units, then a part of a unit: every piece of the generator.
    let inflated = 16 * MIB + 3 * MIB + 12_345;
    let reply = Reply::GzipBomb {
        status: 200,
        headers: Vec::new(),
        prefix: b"[".to_vec(),
        fill: b'[',
        inflated,
        limits: Limits::default(),
    };
    let server = serve(reply).await;
    let resp = raw_client().get(server.url()).send().await.unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let wire = resp.bytes().await.unwrap();
    assert!((wire.len() as u64) < inflated / 500, "{} bytes on the wire", wire.len());
    let mut out = Vec::new();
    // GzDecoder checks the trailer's CRC-32 and length.
    flate2::read::GzDecoder::new(&wire[..]).read_to_end(&mut out).unwrap();
    assert_eq!(out.len() as u64, 1 + inflated);
    assert!(out.iter().all(|&b| b == b'['));
    let ends = server.wait_for_stream_ends(1, Duration::from_secs(10)).await;
    assert_eq!((ends[0].why, ends[0].body_bytes), (EndReason::Finished, 1 + inflated));
}

/// A raw reply is written byte for byte as the whole response, then the connection closes.
#[tokio::test]
async fn a_raw_reply_reaches_the_client_byte_for_byte() {
    let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n[]".to_vec();
    let server = serve(Reply::raw(raw.clone())).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut got);
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("the fake closes").unwrap();
    assert_eq!(got, raw);
    assert!(client().get(server.url()).send().await.is_err(), "an impossible length is refused");
}

/// The gateway fake checks size where rudder-server does: after JSON and per-event validation and the rate
/// limit on `/v1/batch`, before the empty-batch check; first of all on `/v1/webhook`.
#[tokio::test]
async fn the_gateway_fake_checks_size_in_rudder_servers_order() {
    let fake =
        FakeRudderStack::start(fake_rudderstack::Options { max_request_bytes: 1000, ..Default::default() })
            .await;
    let c = raw_client();
    let pad = " ".repeat(2000);
    let post = |path: &str, body: String| {
        c.post(format!("{}{path}", fake.url())).basic_auth(WRITE_KEY, Some("")).body(body).send()
    };
    let answer = |resp: reqwest::Response| async move {
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    };
    let cases = [
        ("/v1/batch", format!("not json{pad}"), 400, "invalid json\n"),
        (
            "/v1/batch",
            format!(r#"{{"batch":[{{"type":"track"}}]}}{pad}"#),
            400,
            "request neither has anonymousId nor userId\n",
        ),
        ("/v1/batch", format!(r#"{{"batch":[1]}}{pad}"#), 400, "event is not a valid rudder event\n"),
        (
            "/v1/batch",
            format!(r#"{{"batch":[{{"userId":"u"}}]}}{pad}"#),
            413,
            "request size exceeds max limit\n",
        ),
        ("/v1/batch", format!(r#"{{"batch":[]}}{pad}"#), 413, "request size exceeds max limit\n"),
        ("/v1/batch", r#"{"batch":[]}"#.to_string(), 400, "empty batch payload\n"),
        ("/v1/webhook", format!("not json{pad}"), 413, "request size exceeds max limit\n"),
        ("/v1/webhook", format!("[{pad}]"), 413, "request size exceeds max limit\n"),
        ("/v1/webhook", "not json".to_string(), 400, "invalid json\n"),
    ];
    for (path, body, status, text) in cases {
        let got = answer(post(path, body.clone()).await.unwrap()).await;
        assert_eq!(got, (status, text.to_string()), "{path} {}", &body[..body.len().min(40)]);
    }
    // The rate limit comes before the size check.
    fake.set_refusal(Some(Refusing::always(Refusal::TooManyRequests)));
    let got =
        answer(post("/v1/batch", format!(r#"{{"batch":[{{"userId":"u"}}]}}{pad}"#)).await.unwrap()).await;
    assert_eq!(got.0, 429);
    assert_eq!(fake.event_count(), 0);
}

/// Each transient refusal has the gateway's status and text, adds a `Retry-After` when asked, stores nothing,
/// and is met where the gateway meets it.
#[tokio::test]
async fn the_gateway_fake_refuses_as_the_gateway_does() {
    let fake = FakeRudderStack::start_default().await;
    let c = raw_client();
    let post = |body: &str| {
        c.post(format!("{}/v1/batch", fake.url()))
            .basic_auth(WRITE_KEY, Some(""))
            .body(body.to_string())
            .send()
    };
    let good = r#"{"batch":[{"userId":"u"}]}"#;
    for (refusal, status, text) in [
        (Refusal::TooManyRequests, 429, "max requests limit reached\n"),
        (Refusal::GatewayTimeout, 504, "gateway timeout\n"),
        (Refusal::BodyReadFailed, 500, "failed to read body from request\n"),
    ] {
        fake.set_refusal(Some(Refusing::times(refusal, 1).with_retry_after("7")));
        let resp = post(good).await.unwrap();
        assert_eq!(resp.status().as_u16(), status);
        assert_eq!(resp.headers()["retry-after"], "7");
        assert_eq!(resp.text().await.unwrap(), text);
        assert_eq!(post(good).await.unwrap().status(), 200, "{refusal:?} was for one request");
    }
    assert_eq!(fake.event_count(), 3, "only the accepted requests stored");

    // A body-read failure comes before the JSON check; a store timeout only after every check.
    fake.set_refusal(Some(Refusing::always(Refusal::BodyReadFailed)));
    assert_eq!(post("not json").await.unwrap().status(), 500);
    fake.set_refusal(Some(Refusing::times(Refusal::GatewayTimeout, 1)));
    assert_eq!(post("not json").await.unwrap().status(), 400);
    assert_eq!(post(good).await.unwrap().status(), 504, "the 400 did not use the refusal up");
    assert_eq!(post(good).await.unwrap().status(), 200);
}

/// A hostile body replaces the chosen gateway answers, and accepted events are stored all the same.
#[tokio::test]
async fn a_hostile_body_replaces_the_chosen_gateway_answers() {
    let fake = FakeRudderStack::start_default().await;
    let c = client();
    let post = |key: &str| {
        c.post(format!("{}/v1/batch", fake.url()))
            .basic_auth(key, Some(""))
            .body(r#"{"batch":[{"userId":"u"}]}"#)
            .send()
    };
    let endless = Hostile::Endless { prefix: b"ok".to_vec(), chunk: b"k".to_vec() };
    fake.set_hostile_body(Some((endless, Answers::Success)));
    let mut resp = post(WRITE_KEY).await.unwrap();
    assert_eq!(resp.status(), 200);
    let (read, ended) = read_up_to(&mut resp, MIB, None).await;
    assert!(!ended && read >= MIB);
    drop(resp);
    assert_eq!(fake.event_count(), 1, "stored before the endless answer");
    let resp = post("unknown-key").await.unwrap();
    assert_eq!(
        (resp.status().as_u16(), resp.text().await.unwrap()),
        (401, "invalid write key\n".to_string())
    );

    let bomb = Hostile::GzipBomb { prefix: Vec::new(), fill: 0, inflated: 1 << 30 };
    fake.set_hostile_body(Some((bomb, Answers::Errors)));
    let mut resp = post("unknown-key").await.unwrap();
    assert_eq!(resp.status(), 401);
    let (inflated, ended) = read_up_to(&mut resp, 8 * MIB, Some(0)).await;
    assert!(!ended && inflated >= 8 * MIB);
    drop(resp);
    let resp = post(WRITE_KEY).await.unwrap();
    assert_eq!((resp.status().as_u16(), resp.text().await.unwrap()), (200, "ok".to_string()));
}
