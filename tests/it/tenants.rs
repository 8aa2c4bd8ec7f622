//! Several tenants in one daemon: each with its own token, pacer, cursor, outbox and destination, isolated
//! from the others' failures, and a state that refuses to strand a tenant the config no longer names.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::app::{App, TenantSpec, sigterm, text, wait_until};
use crate::support::fake_auth0::{FakeAuth0, FakeOptions};
use crate::support::fake_rudderstack::{self, FakeRudderStack};

const A: &str = "acme-prod.eu.auth0.com";
const B: &str = "acme-dev.eu.auth0.com";
const B_KEY: &str = "wk-tenant-b-own-destination-0987";

/// A fake Auth0 serving one tenant with this domain.
async fn auth0_for(domain: &str, client_id: &str, secret: &str) -> FakeAuth0 {
    FakeAuth0::start(FakeOptions {
        domain: domain.into(),
        client_id: client_id.into(),
        client_secret: secret.into(),
        audience: format!("https://{domain}/api/v2/"),
        ..FakeOptions::realistic()
    })
    .await
}

fn spec(fake: &FakeAuth0) -> TenantSpec {
    TenantSpec::of(&fake.tenant(), &fake.url())
}

/// Tenants A and B on two fake Auth0 servers, each with its own fake RudderStack (B's key is `B_KEY`), and
/// B's RudderStack down.
async fn two_tenants_with_b_down() -> (FakeAuth0, FakeAuth0, FakeRudderStack, FakeRudderStack) {
    let auth0_a = auth0_for(A, "client-a", "secret-a-0123456789").await;
    let auth0_b = auth0_for(B, "client-b", "secret-b-0123456789").await;
    let rudder_a = FakeRudderStack::start(fake_rudderstack::Options {
        write_keys: vec![crate::support::app::WRITE_KEY.into()],
        ..fake_rudderstack::Options::default()
    })
    .await;
    let rudder_b = FakeRudderStack::start(fake_rudderstack::Options {
        write_keys: vec![B_KEY.into()],
        ..Default::default()
    })
    .await;
    rudder_b.set_outage(true);
    (auth0_a, auth0_b, rudder_a, rudder_b)
}

/// log_id → messageId, as `transform --domain DOMAIN` computes them for these entries.
async fn transform_ids(domain: &str, entries: &[Value]) -> HashMap<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("entries.json");
    std::fs::write(&file, serde_json::to_vec(entries).unwrap()).unwrap();
    crate::support::app::transform_ids(domain, &file).await
}

/// The messageId of every event a fake accepted, by log_id (every copy must carry the same one).
fn delivered_ids(rudder: &FakeRudderStack) -> HashMap<String, String> {
    let mut ids = HashMap::new();
    for e in rudder.events() {
        let log_id = e["properties"]["log_id"].as_str().unwrap().to_string();
        let mid = e["messageId"].as_str().unwrap().to_string();
        if let Some(first) = ids.insert(log_id.clone(), mid.clone()) {
            assert_eq!(first, mid, "{log_id} arrived twice with different messageIds");
        }
    }
    ids
}

async fn status_of(app: &App, domain: &str) -> Value {
    let out = app.run(&["status", "--json", "--tenant", domain], Duration::from_secs(20)).await;
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Two tenants on two fake Auth0 servers, B with its own RudderStack that is down at first: within 8 s all of
/// A's entries arrive with the ids of `transform --domain A`, while B's wait in B's outbox; once B's
/// RudderStack is up, all of B's arrive, with B's ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_destination_holds_back_only_its_own_tenant() {
    let (auth0_a, auth0_b, rudder_a, rudder_b) = two_tenants_with_b_down().await;
    let entries_a = auth0_a.push_synthetic(300);
    let entries_b = auth0_b.push_synthetic(200);
    let app = App::with_tenants(
        &[spec(&auth0_a), spec(&auth0_b).sending_to(&rudder_b.url(), B_KEY)],
        &rudder_a.url(),
    );
    let started = Instant::now();
    let child = app.spawn_run();
    rudder_a.wait_for_events(entries_a.len(), Duration::from_secs(8)).await;
    let a_took = started.elapsed();
    let expected_a = transform_ids(A, &entries_a).await;
    assert_eq!(delivered_ids(&rudder_a), expected_a, "A's events carry the ids of `transform --domain A`");
    assert!(
        wait_until(Duration::from_secs(20), || {
            std::process::Command::new(crate::support::app::bin())
                .args(["--config"])
                .arg(app.config_path())
                .args(["status", "--json", "--tenant", B])
                .output()
                .ok()
                .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
                .is_some_and(|s| s["outbox_depth"] == entries_b.len() as u64)
        })
        .await,
        "B's entries wait in B's outbox: {}",
        app.run_log()
    );
    assert_eq!(rudder_b.event_count(), 0);
    assert!(rudder_b.count(503) > 0, "B's sender kept trying its own destination");
    assert!(rudder_a.events().iter().all(|e| e["properties"]["log_id"].as_str().unwrap().starts_with("900")));

    rudder_b.set_outage(false);
    rudder_b.wait_for_events(entries_b.len(), Duration::from_secs(30)).await;
    assert_eq!(delivered_ids(&rudder_b), transform_ids(B, &entries_b).await, "B's events carry B's ids");
    // Nothing crossed over: A's destination saw only A's entries.
    assert_eq!(rudder_a.event_count(), entries_a.len());
    let status = sigterm(child).await;
    assert_eq!(status.code(), Some(0), "{}", app.run_log());
    eprintln!("A's {} entries arrived in {a_took:?} while B's destination was down", entries_a.len());
}

/// A tenant the config no longer names, with undelivered entries, stops `run` and `sync` with exit 2 naming
/// it; `forget-tenant` (with --yes) drops its state and lets the daemon start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_removed_with_undelivered_entries_is_refused_until_forgotten() {
    let (auth0_a, auth0_b, rudder_a, rudder_b) = two_tenants_with_b_down().await;
    auth0_a.push_synthetic(20);
    auth0_b.push_synthetic(15);
    let mut app = App::with_tenants(
        &[spec(&auth0_a), spec(&auth0_b).sending_to(&rudder_b.url(), B_KEY)],
        &rudder_a.url(),
    );
    app.set("retry", "sync_give_up_after", "1s");
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(1), "B's destination is down: {}", text(&out));
    assert_eq!(rudder_a.event_count(), 20);
    assert_eq!(status_of(&app, B).await["outbox_depth"], 15);

    app.remove_tenant(1);
    for cmd in ["sync", "run"] {
        let out = app.run(&[cmd], Duration::from_secs(30)).await;
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(B) && err.contains("forget-tenant") && err.contains("15 undelivered"), "{err}");
    }
    let out = app.run(&["forget-tenant", B], Duration::from_secs(20)).await;
    assert_eq!(out.status.code(), Some(2), "without --yes nothing is dropped: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"), "{}", text(&out));
    let out = app.run(&["forget-tenant", B, "--yes"], Duration::from_secs(20)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("15 undelivered"), "{}", text(&out));
    auth0_a.push_synthetic(5);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(rudder_a.event_count(), 25);
}

/// Renaming a tenant's domain on an existing state would re-send every retained entry with new ids: the
/// daemon refuses (exit 2) and says how to go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_the_domain_of_a_state_is_refused_rather_than_resending_everything() {
    let auth0 = auth0_for(A, "client-a", "secret-a-0123456789").await;
    let (_unused, rudder) = crate::support::start_fakes().await;
    auth0.push_synthetic(10);
    let mut app = App::with_tenants(&[spec(&auth0)], &rudder.url());
    assert_eq!(app.sync().await.status.code(), Some(0));
    assert_eq!(rudder.event_count(), 10);
    app.set_tenant(0, "domain", "renamed.eu.auth0.com");
    app.set_tenant(0, "audience", format!("https://{A}/api/v2/"));
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(A) && err.contains("renamed.eu.auth0.com") && err.contains("new ids"), "{err}");
    assert_eq!(rudder.event_count(), 10, "nothing was re-sent");
}

/// A tenant with rejected credentials next to a healthy one: the healthy one delivers everything, `status`
/// shows the other's error, `run` keeps running, and `sync` exits 1 naming the failed tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_wrong_credentials_does_not_hold_back_a_healthy_one() {
    let auth0_a = auth0_for(A, "client-a", "secret-a-0123456789").await;
    let auth0_b = auth0_for(B, "client-b", "secret-b-0123456789").await;
    let (_unused, rudder) = crate::support::start_fakes().await;
    let entries_a = auth0_a.push_synthetic(120);
    auth0_b.push_synthetic(30);
    let mut app = App::with_tenants(&[spec(&auth0_a), spec(&auth0_b)], &rudder.url());
    app.set_tenant(1, "client_secret", "not-the-secret-of-b");
    let child = app.spawn_run();
    rudder.wait_for_events(entries_a.len(), Duration::from_secs(20)).await;
    let b = {
        let mut s = Value::Null;
        let seen = wait_until(Duration::from_secs(20), || {
            s = std::process::Command::new(crate::support::app::bin())
                .arg("--config")
                .arg(app.config_path())
                .args(["status", "--json", "--tenant", B])
                .output()
                .ok()
                .and_then(|o| serde_json::from_slice(&o.stdout).ok())
                .unwrap_or(Value::Null);
            s["last_error"].as_str().is_some_and(|e| e.contains("rejected the client credentials"))
        })
        .await;
        assert!(seen, "status shows B's error: {s}\n{}", app.run_log());
        s
    };
    assert!(b["warnings"].to_string().contains("client-b"), "{b}");
    assert!(!b.to_string().contains("not-the-secret-of-b"), "{b}");
    assert_eq!(status_of(&app, A).await["last_error"], Value::Null);
    assert_eq!(sigterm(child).await.code(), Some(0), "run kept going: {}", app.run_log());
    assert_eq!(rudder.event_count(), entries_a.len(), "only A's entries, each once");

    auth0_a.push_synthetic(7);
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains(B), "{}", text(&out));
    assert_eq!(rudder.event_count(), entries_a.len() + 7, "A still delivered its new entries");
}

/// Each tenant has its own token and its own state: two tenants on one fake Auth0 server, told apart only by
/// their credentials, each get one token, their own cursor, and only their own entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_on_one_auth0_server_keep_their_own_tokens_and_cursors() {
    let auth0 = auth0_for(A, "client-a", "secret-a-0123456789").await;
    let b = auth0.add_tenant(B, "client-b", "secret-b-0123456789", FakeOptions::realistic());
    let (_unused, rudder) = crate::support::start_fakes().await;
    let a_entries = auth0.push_synthetic(40);
    let b_entries = b.push_synthetic(25);
    let app = App::with_tenants(&[spec(&auth0), TenantSpec::of(&b, &auth0.url())], &rudder.url());
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(auth0.tenant().tokens_minted(), 1);
    assert_eq!(b.tokens_minted(), 1);
    let mut expected = transform_ids(A, &a_entries).await;
    expected.extend(transform_ids(B, &b_entries).await);
    assert_eq!(delivered_ids(&rudder), expected);
    assert_eq!(status_of(&app, A).await["cursor"], a_entries.last().unwrap()["log_id"]);
    assert_eq!(status_of(&app, B).await["cursor"], b_entries.last().unwrap()["log_id"]);
    let all: Value = {
        let out = app.run(&["status", "--json"], Duration::from_secs(20)).await;
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(all["tenants"].as_array().unwrap().len(), 2, "{all}");
}

/// A state keyed by a domain in upper case (as older versions wrote it when the config did) is another
/// tenant than the same domain in lower case, whose ids differ: `sync` refuses as for a rename, and
/// `forget-tenant` drops that key, as the refusal says, while it never drops the configured tenant's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_key_in_upper_case_is_refused_as_a_rename_until_forget_tenant_drops_it() {
    let auth0 = auth0_for(A, "client-a", "secret-a-0123456789").await;
    let (_unused, rudder) = crate::support::start_fakes().await;
    auth0.push_synthetic(10);
    let app = App::with_tenants(&[spec(&auth0)], &rudder.url());
    assert_eq!(app.sync().await.status.code(), Some(0));
    assert_eq!(rudder.event_count(), 10);
    let upper = A.to_ascii_uppercase();
    let db = rusqlite::Connection::open(app.db_path()).unwrap();
    db.execute("UPDATE tenant SET domain = ?1 WHERE domain = ?2", [upper.as_str(), A]).unwrap();
    drop(db);

    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("forget-tenant {upper} --yes")) && err.contains("new ids"), "{err}");
    assert_eq!(rudder.event_count(), 10, "nothing was re-sent");

    let out = app.run(&["forget-tenant", A, "--yes"], Duration::from_secs(20)).await;
    assert_eq!(out.status.code(), Some(2), "the configured tenant is never forgotten: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a tenant of"), "{}", text(&out));
    let out = app.run(&["forget-tenant", &upper, "--yes"], Duration::from_secs(20)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("forgot {upper}")), "{}", text(&out));
    assert_eq!(app.sync().await.status.code(), Some(0));
}

/// A tenant loop stopped by an error no wait can fix (its credentials rejected) starts again after its rest
/// (five minutes; shortened here through the debug builds' test variable), and then delivers; `run` meanwhile
/// keeps serving the healthy tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_tenant_loop_starts_again_after_its_rest_and_delivers() {
    let auth0_a = auth0_for(A, "client-a", "secret-a-0123456789").await;
    let auth0_b = auth0_for(B, "client-b", "secret-b-0123456789").await;
    let (_unused, rudder) = crate::support::start_fakes().await;
    let a = auth0_a.push_synthetic(10);
    let b = auth0_b.push_synthetic(15);
    // B's Auth0 rejects the credentials until the hook is cleared.
    auth0_b.set_hook(|req: &crate::support::http::Request, _| {
        req.path.starts_with("/oauth/token").then(|| {
            crate::support::http::Reply::json(
                401,
                &serde_json::json!({"error": "access_denied", "error_description": "Unauthorized"}),
            )
        })
    });
    let app = App::with_tenants(&[spec(&auth0_a), spec(&auth0_b)], &rudder.url());
    let mut cmd = app.command(&["run"]);
    cmd.env("AUTH0_RUDDERSTACK_TEST_FAILED_RETRY", "2s");
    let log = std::fs::File::create(app.dir.path().join("run.log")).unwrap();
    cmd.stdout(std::process::Stdio::from(log.try_clone().unwrap())).stderr(std::process::Stdio::from(log));
    let child = cmd.spawn().unwrap();
    assert!(rudder.wait_for_events(a.len(), Duration::from_secs(20)).await.len() >= a.len());
    let stopped = wait_until(Duration::from_secs(20), || app.run_log().contains("starts again later")).await;
    assert!(stopped, "{}", app.run_log());
    auth0_b.clear_hook();
    let all = a.len() + b.len();
    let delivered = wait_until(Duration::from_secs(30), || rudder.event_count() >= all).await;
    assert!(delivered, "{} of {all}:\n{}", rudder.event_count(), app.run_log());
    assert!(app.run_log().contains("starting fetching again"), "{}", app.run_log());
    assert_eq!(sigterm(child).await.code(), Some(0), "{}", app.run_log());
    assert_eq!(rudder.event_count(), all, "each entry once");
}

/// `run` exits 1 only when every tenant has a stopped loop: with both tenants' credentials rejected it ends,
/// naming both, so that the service manager can start it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exits_1_when_every_tenant_has_failed() {
    let auth0_a = auth0_for(A, "client-a", "secret-a-0123456789").await;
    let auth0_b = auth0_for(B, "client-b", "secret-b-0123456789").await;
    let (_unused, rudder) = crate::support::start_fakes().await;
    let mut app = App::with_tenants(&[spec(&auth0_a), spec(&auth0_b)], &rudder.url());
    app.set_tenant(0, "client_secret", "not-the-secret-of-a");
    app.set_tenant(1, "client_secret", "not-the-secret-of-b");
    let out = app.run(&["run"], Duration::from_secs(30)).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("every tenant has a stopped loop"), "{err}");
    assert!(err.contains(A) && err.contains(B), "{err}");
}

/// Two tenants sharing one destination (one URL, one write key): while every request holding one of A's
/// events is refused with a 503, B's events still arrive, and A's wait in A's outbox until the refusals end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_sharing_a_destination_do_not_share_its_queue() {
    let auth0_a = auth0_for(A, "client-a", "secret-a-0123456789").await;
    let auth0_b = auth0_for(B, "client-b", "secret-b-0123456789").await;
    let (_unused, rudder) = crate::support::start_fakes().await;
    // Both fakes number their entries alike; A's ids carry a mark B's never have.
    let a: Vec<Value> = auth0_a
        .make_entries(30)
        .into_iter()
        .map(|mut e| {
            let id = format!("8{}", &e["log_id"].as_str().unwrap()[1..]);
            e["log_id"] = id.clone().into();
            e["_id"] = id.into();
            e
        })
        .collect();
    auth0_a.push(a.clone());
    let b = auth0_b.push_synthetic(40);
    rudder.hook(|req, _| {
        (req.body_text().contains("\"log_id\":\"8")).then(|| crate::support::http::Reply::text(503, "busy\n"))
    });
    let app = App::with_tenants(&[spec(&auth0_a), spec(&auth0_b)], &rudder.url());
    let child = app.spawn_run();
    let delivered = wait_until(Duration::from_secs(20), || rudder.event_count() >= b.len()).await;
    assert!(delivered, "B's events did not arrive while A's were refused:\n{}", app.run_log());
    assert_eq!(delivered_ids(&rudder), transform_ids(B, &b).await, "only B's events, with B's ids");
    assert!(rudder.count(503) > 0, "A's sender was refused");
    assert_eq!(status_of(&app, A).await["outbox_depth"], a.len() as u64);

    rudder.set_hook(None);
    let all = wait_until(Duration::from_secs(30), || rudder.event_count() >= a.len() + b.len()).await;
    assert!(all, "{}", app.run_log());
    let mut want = transform_ids(A, &a).await;
    want.extend(transform_ids(B, &b).await);
    assert_eq!(delivered_ids(&rudder), want);
    assert_eq!(sigterm(child).await.code(), Some(0), "{}", app.run_log());
}

/// A tenant the config dropped whose state holds only dead letters (nothing undelivered) is refused too:
/// exit 2, naming it and its dead letters, until `forget-tenant` drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_tenant_with_only_dead_letters_is_refused_until_forgotten() {
    let auth0_a = auth0_for(A, "client-a", "secret-a-0123456789").await;
    let auth0_b = auth0_for(B, "client-b", "secret-b-0123456789").await;
    let (_unused, rudder) = crate::support::start_fakes().await;
    auth0_a.push_synthetic(5);
    let b = auth0_b.push_synthetic(5);
    let bad = b[3]["log_id"].clone();
    rudder.reject_events("event is not a valid rudder event", move |e| e["properties"]["log_id"] == bad);
    let mut app = App::with_tenants(&[spec(&auth0_a), spec(&auth0_b)], &rudder.url());
    let out = app.sync().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = status_of(&app, B).await;
    assert_eq!((s["outbox_depth"].clone(), s["dead_letters"].clone()), (0.into(), 1.into()), "{s}");

    app.remove_tenant(1);
    for cmd in ["sync", "run"] {
        let out = app.run(&[cmd], Duration::from_secs(30)).await;
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{B} (0 undelivered, 1 dead letter)")) && err.contains("forget-tenant"),
            "{err}"
        );
    }
    let out = app.run(&["forget-tenant", B, "--yes"], Duration::from_secs(20)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(app.sync().await.status.code(), Some(0));
}

/// Under `run`, a tenant whose checkpoint expired with `on_expired_checkpoint = "stop"` is reported (log and
/// `status`) and stops fetching, while the other tenant goes on delivering and `run` keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_whose_checkpoint_expired_stops_alone_and_the_others_go_on() {
    let auth0_a = auth0_for(A, "client-a", "secret-a-0123456789").await;
    let auth0_b = auth0_for(B, "client-b", "secret-b-0123456789").await;
    let (_unused, rudder) = crate::support::start_fakes().await;
    auth0_a.push_synthetic(5);
    auth0_b.push_synthetic(5);
    let mut app = App::with_tenants(&[spec(&auth0_a), spec(&auth0_b)], &rudder.url());
    app.set_tenant(1, "on_expired_checkpoint", "stop");
    assert_eq!(app.sync().await.status.code(), Some(0));
    // B's cursor ages out of its tenant's log.
    auth0_b.push_synthetic(5);
    auth0_b.expire_oldest(7);
    let mut child = app.spawn_run();
    let stopped = wait_until(Duration::from_secs(20), || {
        std::process::Command::new(crate::support::app::bin())
            .arg("--config")
            .arg(app.config_path())
            .args(["status", "--json", "--tenant", B])
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
            .is_some_and(|s| s["fetching_stopped"] == true)
    })
    .await;
    assert!(stopped, "{}", app.run_log());
    let fresh = auth0_a.push_synthetic(7);
    let delivered = wait_until(Duration::from_secs(20), || rudder.event_count() >= 10 + fresh.len()).await;
    assert!(delivered, "A stopped delivering:\n{}", app.run_log());
    assert!(child.try_wait().unwrap().is_none(), "run ended:\n{}", app.run_log());
    let log = app.run_log();
    assert!(log.lines().any(|l| l.contains("gap in the Auth0 log") && l.contains(B)), "{log}");
    let s = status_of(&app, B).await;
    assert_eq!(s["fetching_stopped"], true, "{s}");
    assert_eq!(rudder.event_count(), 10 + fresh.len(), "nothing of B's after its gap");
    assert_eq!(sigterm(child).await.code(), Some(0), "{}", app.run_log());
}

/// Secrets come from the environment "with one tenant" only: with two `[[tenant]]`s, `AUTH0_CLIENT_SECRET`
/// neither fills a tenant's missing secret (exit 2 naming the key, without suggesting the variable) nor
/// replaces one that is written, so both tenants still deliver with their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_several_tenants_the_client_secret_is_never_taken_from_the_environment() {
    let auth0_a = auth0_for(A, "client-a", "secret-a-0123456789").await;
    let auth0_b = auth0_for(B, "client-b", "secret-b-0123456789").await;
    let (_unused, rudder) = crate::support::start_fakes().await;
    let a = auth0_a.push_synthetic(3);
    let b = auth0_b.push_synthetic(4);
    let mut app = App::with_tenants(&[spec(&auth0_a), spec(&auth0_b)], &rudder.url());
    let mut sync = app.command(&["sync"]);
    sync.env("AUTH0_CLIENT_SECRET", "secret-a-0123456789");
    let out = crate::support::app::run_bounded(sync, Duration::from_secs(60)).await;
    assert_eq!(out.status.code(), Some(0), "the written secrets are used: {}", text(&out));
    assert_eq!(rudder.event_count(), a.len() + b.len());

    let t = app.config["tenant"].as_array_mut().unwrap()[1].as_table_mut().unwrap();
    t.remove("client_secret");
    app.set("retry", "sync_give_up_after", "20s");
    let mut sync = app.command(&["sync"]);
    sync.env("AUTH0_CLIENT_SECRET", "secret-b-0123456789");
    let out = crate::support::app::run_bounded(sync, Duration::from_secs(60)).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("client_secret") && err.contains("missing") && !err.contains("AUTH0_CLIENT_SECRET"),
        "{err}"
    );
}
