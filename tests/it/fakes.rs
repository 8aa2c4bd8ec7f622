//! Self-tests of the fakes: what a plain HTTP client sees from each realistic or hostile mode.
//!
//! The daemon's tests trust the fakes to be hostile in exactly the way they claim: a gzip bomb that really
//! inflates, an endless body the fake really ends, a TLS server that really refuses a client without the CA,
//! tenants that really do not see each other's logs, and a gateway that checks a request in rudder-server's
//! order. A fake that silently stopped doing one of these would turn those tests green for the wrong reason,
//! so each mode is driven here with reqwest alone, and every read is bounded in bytes and time.

use std::io::Read as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::support::fake_auth0::{Chunking, FakeAuth0, FakeOptions, Tenant, UNLIMITED};
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

/// A client that trusts `pem` (on top of the public roots).
fn client_trusting(pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Ask the token endpoint at `url` for a token for `tenant`, as the daemon does.
async fn token_response(client: &reqwest::Client, url: &str, tenant: &Tenant) -> reqwest::Response {
    client
        .post(format!("{url}/oauth/token"))
        .form(&[
            ("grant_type", "client_credentials".to_string()),
            ("client_id", tenant.client_id()),
            ("client_secret", tenant.client_secret()),
            ("audience", tenant.audience()),
        ])
        .send()
        .await
        .unwrap()
}

/// Mint a token for `tenant` at `url`.
async fn mint(client: &reqwest::Client, url: &str, tenant: &Tenant) -> String {
    let resp = token_response(client, url, tenant).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_string()
}

/// `GET /api/v2/logs?from=&take=` with a bearer token.
fn logs(client: &reqwest::Client, url: &str, token: &str, from: &str, take: u32) -> reqwest::RequestBuilder {
    client.get(format!("{url}/api/v2/logs?from={from}&take={take}")).bearer_auth(token)
}

/// The `log_id`s of a page.
fn ids(page: &Value) -> Vec<String> {
    page.as_array().unwrap().iter().map(|e| e["log_id"].as_str().unwrap().to_string()).collect()
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

/// A fake Auth0 with the given options and `n` entries in its first tenant's log.
async fn auth0_with(opts: FakeOptions, n: usize) -> FakeAuth0 {
    let fake = FakeAuth0::start(opts).await;
    fake.push_synthetic(n);
    fake
}

/// A gzip page is sent only to a client that accepts gzip, and decodes to the very entries of the plain one.
#[tokio::test]
async fn a_gzip_page_decodes_to_the_same_entries_as_the_plain_one() {
    let fake = auth0_with(FakeOptions { gzip_pages: true, ..FakeOptions::realistic() }, 20).await;
    let raw = raw_client();
    let token = mint(&raw, &fake.url(), &fake.tenant()).await;

    let plain = logs(&raw, &fake.url(), &token, "0", 100).send().await.unwrap();
    assert!(plain.headers().get("content-encoding").is_none(), "no gzip unless asked for");
    let plain: Value = plain.json().await.unwrap();
    assert_eq!(plain, Value::Array(fake.entries()));
    let refused =
        logs(&raw, &fake.url(), &token, "0", 100).header("accept-encoding", "gzip;q=0").send().await;
    assert!(refused.unwrap().headers().get("content-encoding").is_none(), "q=0 refuses gzip");

    let zipped =
        logs(&raw, &fake.url(), &token, "0", 100).header("accept-encoding", "gzip").send().await.unwrap();
    assert_eq!(zipped.headers()["content-encoding"], "gzip");
    let bytes = zipped.bytes().await.unwrap();
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "a gzip member");
    let mut text = Vec::new();
    flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut text).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&text).unwrap(), plain);

    // What the daemon's client does: ask, then decode transparently.
    let decoded: Value =
        logs(&client(), &fake.url(), &token, "0", 100).send().await.unwrap().json().await.unwrap();
    assert_eq!(decoded, plain);
}

/// A chunked page (gzipped or not) arrives whole, in the chunks asked for.
#[tokio::test]
async fn a_chunked_page_arrives_whole() {
    let chunking = Chunking { size: 100, delay: Some(Duration::from_millis(2)) };
    let fake =
        auth0_with(FakeOptions { chunked_pages: Some(chunking), ..FakeOptions::realistic() }, 10).await;
    let c = raw_client();
    let token = mint(&c, &fake.url(), &fake.tenant()).await;
    let resp = logs(&c, &fake.url(), &token, "0", 100).send().await.unwrap();
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    assert!(resp.headers().get("content-length").is_none());
    let page: Value = resp.json().await.unwrap();
    assert_eq!(page, Value::Array(fake.entries()));
    let ends = fake.server().wait_for_stream_ends(1, Duration::from_secs(10)).await;
    assert_eq!((ends[0].kind, ends[0].why), (StreamKind::Chunked, EndReason::Finished));
    assert_eq!(ends[0].body_bytes, serde_json::to_vec(&page).unwrap().len() as u64);

    fake.update(|o| o.gzip_pages = true);
    let page: Value =
        logs(&client(), &fake.url(), &token, "0", 100).send().await.unwrap().json().await.unwrap();
    assert_eq!(page, Value::Array(fake.entries()), "gzip, then chunks");
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

/// Over TLS, a client without the fake's CA (or with another CA) cannot connect; with it, both fakes answer.
#[tokio::test]
async fn tls_fails_without_the_ca_and_works_with_it() {
    let tls = crate::support::http::generate_tls();
    assert!(tls.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    let auth0 = FakeAuth0::start_tls(FakeOptions::realistic(), &tls).await;
    auth0.push_synthetic(2);
    assert!(auth0.url().starts_with("https://127.0.0.1:"), "{}", auth0.url());
    assert_eq!(auth0.ca_pem(), Some(tls.ca_pem()));
    let token_url = format!("{}/oauth/token", auth0.url());

    let err = client().post(&token_url).send().await.expect_err("public roots do not know the CA");
    assert!(err.is_connect(), "{err:?}");
    let other = crate::support::http::generate_tls();
    let err = client_trusting(other.ca_pem()).post(&token_url).send().await.expect_err("another CA");
    assert!(err.is_connect(), "{err:?}");
    // Both refusals were handshakes the fake saw fail.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while auth0.server().failed_handshakes() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} failed handshakes",
            auth0.server().failed_handshakes()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    tls.write_ca(&ca_file).unwrap();
    let trusted = client_trusting(&std::fs::read_to_string(&ca_file).unwrap());
    let token = mint(&trusted, &auth0.url(), &auth0.tenant()).await;
    let page: Value =
        logs(&trusted, &auth0.url(), &token, "0", 10).send().await.unwrap().json().await.unwrap();
    assert_eq!(page, Value::Array(auth0.entries()));

    let rudder = FakeRudderStack::start_tls(fake_rudderstack::Options::default(), &tls).await;
    let resp = trusted
        .post(format!("{}/v1/batch", rudder.url()))
        .basic_auth(WRITE_KEY, Some(""))
        .json(&json!({"batch": [{"userId": "u", "type": "track", "event": "e"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!((resp.status().as_u16(), resp.text().await.unwrap()), (200, "ok".to_string()));
    assert_eq!(rudder.event_count(), 1);
}

/// A token reads only the log of the tenant that minted it, and is a bad audience on another tenant's host.
#[tokio::test]
async fn tenants_on_one_fake_never_see_each_others_logs() {
    let fake = FakeAuth0::start(FakeOptions::realistic()).await;
    let a = fake.tenant();
    let b = fake.add_tenant("tenant-b.example.com", "client-b", "secret-b", FakeOptions::realistic());
    a.push_synthetic(3);
    b.push_synthetic(5);
    assert!(ids(&json!(a.entries())).iter().all(|id| !ids(&json!(b.entries())).contains(id)), "distinct ids");
    let c = raw_client();
    let (token_a, token_b) = (mint(&c, &fake.url(), &a).await, mint(&c, &fake.url(), &b).await);

    let page_a: Value = logs(&c, &fake.url(), &token_a, "0", 100).send().await.unwrap().json().await.unwrap();
    let page_b: Value = logs(&c, &fake.url(), &token_b, "0", 100).send().await.unwrap().json().await.unwrap();
    assert_eq!(page_a, Value::Array(a.entries()));
    assert_eq!(page_b, Value::Array(b.entries()));
    assert!(page_b.as_array().unwrap().iter().all(|e| e["hostname"] == "tenant-b.example.com"));

    // B's token sent to A's domain is not for A's API.
    let resp = logs(&c, &fake.url(), &token_b, "0", 100).header("host", a.domain()).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["message"], format!("Bad audience: {}", a.audience()));
    // A's credentials do not mint for B's audience, and B's secret is not A's.
    let form = |id: &str, secret: &str, audience: String| {
        c.post(format!("{}/oauth/token", fake.url())).form(&[
            ("grant_type", "client_credentials".to_string()),
            ("client_id", id.to_string()),
            ("client_secret", secret.to_string()),
            ("audience", audience),
        ])
    };
    assert_eq!(form(&a.client_id(), &a.client_secret(), b.audience()).send().await.unwrap().status(), 403);
    assert_eq!(form(&a.client_id(), "secret-b", a.audience()).send().await.unwrap().status(), 401);

    // Revoking B's tokens leaves A's working, and each tenant counts its own requests.
    b.revoke_tokens();
    assert_eq!(logs(&c, &fake.url(), &token_b, "0", 1).send().await.unwrap().status(), 401);
    assert_eq!(logs(&c, &fake.url(), &token_a, "0", 1).send().await.unwrap().status(), 200);
    assert_eq!((a.tokens_minted(), b.tokens_minted()), (1, 1));
    assert_eq!(b.recorded().len() as u64, b.requests());
    assert!(b.recorded().iter().all(|r| r.tenant == b.index()));
    assert_eq!(fake.requests(), a.requests() + b.requests());
}

/// A hundred tenants on one fake each serve their own log to their own token.
#[tokio::test]
async fn a_hundred_tenants_share_one_fake() {
    let fake = FakeAuth0::start(FakeOptions::realistic()).await;
    let tenants: Vec<Tenant> = (1..=100)
        .map(|i| {
            fake.add_tenant(
                &format!("t{i}.example.com"),
                &format!("id-{i}"),
                &format!("s-{i}"),
                FakeOptions::realistic(),
            )
        })
        .collect();
    for t in &tenants {
        t.push_synthetic(1);
    }
    let c = raw_client();
    for t in &tenants {
        let token = mint(&c, &fake.url(), t).await;
        let page: Value = logs(&c, &fake.url(), &token, "0", 100).send().await.unwrap().json().await.unwrap();
        assert_eq!(page, Value::Array(t.entries()), "{}", t.domain());
    }
    assert_eq!(fake.tenants().len(), 101);
}

/// Without a bucket every `/api/v2/logs` answer, even a 401, carries rate-limit headers that never ask to wait.
#[tokio::test]
async fn rate_limit_headers_are_sent_without_a_bucket() {
    let fake = auth0_with(FakeOptions::default(), 1).await;
    let c = raw_client();
    let token = mint(&c, &fake.url(), &fake.tenant()).await;
    for token in [token.as_str(), "not-a-token"] {
        let resp = logs(&c, &fake.url(), token, "0", 10).send().await.unwrap();
        let h = resp.headers();
        let num = |name: &str| h[name].to_str().unwrap().parse::<u64>().unwrap();
        assert_eq!(num("x-ratelimit-limit"), u64::from(UNLIMITED));
        assert!(num("x-ratelimit-remaining") > 0);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!((now.saturating_sub(2)..=now + 2).contains(&num("x-ratelimit-reset")), "{h:?}");
    }
    assert!(fake.log_requests().iter().all(|r| r.remaining == Some(UNLIMITED - 1)));
}

/// The tenant the integration tests use by default is as untidy as a real one: a page holds ids of two
/// lengths, in Auth0's order (a longer id is greater) which their text order contradicts, dates out of order,
/// and the rate-limit headers of a real bucket.
#[tokio::test]
async fn the_realistic_tenant_pages_ids_of_two_lengths_with_dates_out_of_order() {
    let fake = auth0_with(FakeOptions::realistic(), 120).await;
    let c = raw_client();
    let token = mint(&c, &fake.url(), &fake.tenant()).await;
    let resp = logs(&c, &fake.url(), &token, "0", 100).send().await.unwrap();
    assert_eq!(resp.headers()["x-ratelimit-limit"].to_str().unwrap(), "50");
    let page: Value = resp.json().await.unwrap();
    let first = ids(&page);
    assert_eq!(first.len(), 100);
    let lengths: std::collections::BTreeSet<usize> = first.iter().map(String::len).collect();
    assert_eq!(lengths, [55, 56].into(), "ids of two lengths in one page");
    let by_auth0 = |a: &String, b: &String| a.len().cmp(&b.len()).then_with(|| a.cmp(b));
    assert!(first.windows(2).all(|w| by_auth0(&w[0], &w[1]).is_lt()), "in Auth0's order");
    let mut by_text = first.clone();
    by_text.sort();
    assert_ne!(by_text, first, "text order disagrees with Auth0's");
    let dates: Vec<&str> = page.as_array().unwrap().iter().map(|e| e["date"].as_str().unwrap()).collect();
    let earlier = dates.windows(2).filter(|w| w[1] < w[0]).count();
    assert!(earlier >= 10, "{earlier} entries dated before the one logged before them");

    // Paging from the last id of the first page goes on after it, across both lengths.
    let next: Value =
        logs(&c, &fake.url(), &token, first.last().unwrap(), 100).send().await.unwrap().json().await.unwrap();
    assert_eq!(ids(&next), (100..120).map(|i| fake.log_id(i)).collect::<Vec<_>>());
}

/// With `below_cursor`, a checkpoint page starts with entries at or below `from`, yet always moves on.
#[tokio::test]
async fn pages_repeat_entries_at_and_below_the_cursor_when_asked() {
    let fake = auth0_with(FakeOptions { below_cursor: 2, ..FakeOptions::realistic() }, 10).await;
    let id = |i: usize| fake.log_id(i);
    let c = raw_client();
    let token = mint(&c, &fake.url(), &fake.tenant()).await;

    let resp = logs(&c, &fake.url(), &token, &id(4), 3).send().await.unwrap();
    let link = resp.headers()["link"].to_str().unwrap().to_string();
    let page: Value = resp.json().await.unwrap();
    assert_eq!(ids(&page), vec![id(3), id(4), id(5)], "two at or below the cursor, then one new");
    assert!(link.contains(&format!("from={}&", id(5))), "{link}");

    // The repeats never fill a page: with take 2 one entry is new.
    let page: Value = logs(&c, &fake.url(), &token, &id(4), 2).send().await.unwrap().json().await.unwrap();
    assert_eq!(ids(&page), vec![id(4), id(5)]);

    // Nothing new: only repeats, and the link stays at the cursor.
    let resp = logs(&c, &fake.url(), &token, &id(9), 100).send().await.unwrap();
    let link = resp.headers()["link"].to_str().unwrap().to_string();
    assert_eq!(ids(&resp.json().await.unwrap()), vec![id(8), id(9)]);
    assert!(link.contains(&format!("from={}&", id(9))), "{link}");
}

/// A raw `expires_in` goes out exactly as given, and the fake enforces the expiry it can read from it.
#[tokio::test]
async fn the_token_answer_carries_expires_in_exactly_as_given() {
    let fake = auth0_with(FakeOptions::realistic(), 1).await;
    let c = raw_client();
    // (raw text, whether the token still reads the log right away)
    for (raw, usable) in [("18446744073709551615", true), ("1e300", true), ("-5", false), (r#""soon""#, true)]
    {
        fake.update(|o| o.expires_in_raw = Some(raw.to_string()));
        let tenant = fake.tenant();
        let resp = token_response(&c, &fake.url(), &tenant).await;
        let text = resp.text().await.unwrap();
        assert!(text.contains(&format!(r#""expires_in":{raw},"#)), "{text}");
        let token =
            serde_json::from_str::<Value>(&text).unwrap()["access_token"].as_str().unwrap().to_string();
        let status = logs(&c, &fake.url(), &token, "0", 1).send().await.unwrap().status();
        assert_eq!(status == 200, usable, "{raw}: {status}");
    }
}

/// Hostile bodies replace Auth0's successful answers while the rest stays real: rate-limit headers, minting.
#[tokio::test]
async fn hostile_bodies_replace_auth0_answers() {
    let bomb = Hostile::GzipBomb { prefix: b"[".to_vec(), fill: b'[', inflated: 1 << 30 };
    let fake = auth0_with(FakeOptions { hostile_logs: Some(bomb), ..FakeOptions::realistic() }, 1).await;
    let c = raw_client();
    let token = mint(&c, &fake.url(), &fake.tenant()).await;
    let resp = logs(&c, &fake.url(), &token, "0", 10).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    assert!(resp.headers().contains_key("x-ratelimit-remaining"));
    drop(resp);
    let mut resp = logs(&client(), &fake.url(), &token, "0", 10).send().await.unwrap();
    let (inflated, ended) = read_up_to(&mut resp, 8 * MIB, Some(b'[')).await;
    assert!(!ended && inflated >= 8 * MIB);
    drop(resp);

    let endless = Hostile::Endless { prefix: br#"{"access_token":""#.to_vec(), chunk: b"a".to_vec() };
    fake.update(|o| o.hostile_token = Some(endless));
    let mut resp = c
        .post(format!("{}/oauth/token", fake.url()))
        .form(&[
            ("grant_type", "client_credentials".to_string()),
            ("client_id", fake.client_id.clone()),
            ("client_secret", fake.client_secret.clone()),
            ("audience", fake.tenant().audience()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (read, ended) = read_up_to(&mut resp, MIB, None).await;
    assert!(!ended && read >= MIB);
    assert_eq!(fake.tokens_minted(), 2, "minted all the same");
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
    fake.set_refusal(Some(Refusing::times(Refusal::GatewayTimeout, 0)));
    assert_eq!(post(good).await.unwrap().status(), 200, "a count of 0 refuses nothing");
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
