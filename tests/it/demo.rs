//! `demo`: the real pipeline against the stand-ins the other tests use (`auth0_rudderstack::standin`), started
//! by the binary itself; its closing check, its faults, and `status` and `metrics` read from another process
//! while it runs.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use crate::support::app::{bin, run_bounded, sigterm_within, text};

/// The stand-in tenant the demo runs.
const DOMAIN: &str = "demo-tenant.example.com";

/// A `demo` command with these arguments, its state in `dir`, none of the caller's secrets or log settings.
fn demo(dir: &std::path::Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.arg("demo").arg("--state").arg(dir).args(args);
    cmd.env_remove("AUTH0_CLIENT_SECRET").env_remove("RUDDERSTACK_WRITE_KEY").env_remove("RUST_LOG");
    cmd.env_remove("AUTH0_RUDDERSTACK_CONFIG");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    cmd
}

/// The figures of the demo's summary line (`demo summary: generated=N token_mints=M ...`).
fn figures(stderr: &str) -> std::collections::HashMap<String, u64> {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("demo summary:"))
        .unwrap_or_else(|| panic!("no summary:\n{stderr}"));
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

const EXACTLY_ONCE: &str =
    "demo result: every generated entry arrived exactly once, with its deterministic messageId";

/// A five-second demo exits 0 and says every entry arrived exactly once; with `--show-events`, stdout holds
/// one JSON event per delivered entry, each under a distinct messageId, and the example file's entries are
/// among them (re-dated into the last hour).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_demo_exits_0_and_every_entry_arrives_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_bounded(
        demo(dir.path(), &["--duration", "5s", "--rate", "5", "--show-events"]),
        Duration::from_secs(120),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stderr.contains(EXACTLY_ONCE), "{}", text(&out));
    let f = figures(&stderr);
    // The 5 examples, about 25 new entries, and at least one token mint.
    assert!(f["generated"] >= 16, "{f:?}");
    assert!(f["token_mints"] >= 1, "{f:?}");
    assert_eq!(f["delivered"], f["generated"], "{f:?}");
    assert_eq!(f["fetched"], f["generated"], "{f:?}");
    assert_eq!((f["duplicates"], f["dead_letters"], f["faults_survived"]), (0, 0, 0), "{f:?}");

    let events: Vec<Value> = String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON event per line ({e}): {l}")))
        .collect();
    assert_eq!(events.len() as u64, f["delivered"], "{}", text(&out));
    let ids: HashSet<&str> = events.iter().map(|e| e["messageId"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len());
    for e in &events {
        let log_id = e["properties"]["log_id"].as_str().unwrap();
        let want = auth0_rudderstack::transform::message_id(DOMAIN, log_id).to_string();
        assert_eq!(e["messageId"], want.as_str(), "{e}");
    }
    // The stand-in logs the example file's entries first, so they hold the five lowest log ids.
    let examples: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string("examples/auth0-logs.json").unwrap()).unwrap();
    let mut by_id: Vec<&Value> = events.iter().collect();
    by_id.sort_by_key(|e| e["properties"]["log_id"].as_str().unwrap().to_string());
    let mut first: Vec<&str> =
        by_id[..examples.len()].iter().map(|e| e["properties"]["source_type"].as_str().unwrap()).collect();
    let mut want: Vec<&str> = examples.iter().map(|e| e["type"].as_str().unwrap()).collect();
    first.sort();
    want.sort();
    assert_eq!(first, want, "the example entries were not delivered first");
    let kinds: HashSet<&str> =
        events.iter().filter_map(|e| e["properties"]["source_type"].as_str()).collect();
    for kind in ["s", "f", "fp", "ss", "sapi", "seccft"] {
        assert!(kinds.contains(kind), "no {kind} entry among {kinds:?}");
    }
    assert!(events.iter().any(|e| e["type"] == "group"), "no organization (group) event");
}

/// With `--faults`, both stand-ins fail some requests and RudderStack goes down for a while; the demo still
/// exits 0 with every entry delivered exactly once, and counts the faults it survived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_with_faults_survives_them_and_every_entry_arrives_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_bounded(
        demo(dir.path(), &["--duration", "8s", "--rate", "5", "--faults"]),
        Duration::from_secs(180),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stderr.contains(EXACTLY_ONCE), "{}", text(&out));
    let f = figures(&stderr);
    assert!(f["faults_survived"] > 0, "{f:?}");
    assert_eq!(f["delivered"], f["generated"], "{f:?}");
    assert_eq!((f["duplicates"], f["dead_letters"]), (0, 0), "{f:?}");
    // The daemon met each kind of failure (its retries say so in the log): Auth0's token endpoint and log
    // reads failing, RudderStack's own refusals, and the outage.
    for seen in [
        "Auth0 answered HTTP 503 at http://127.0.0.1",
        "Auth0 answered HTTP 500 at http://127.0.0.1",
        "RudderStack answered 503",
    ] {
        assert!(stderr.contains(seen), "no {seen:?} in the log: {}", text(&out));
    }
    assert!(
        stderr.contains("RudderStack answered 504") || stderr.contains("RudderStack answered 429"),
        "no refusal of the gateway's own: {}",
        text(&out)
    );
}

/// While a demo runs, its first lines say how to read its state from another terminal; `status --json` and
/// `metrics` (valid for `promtool check metrics`) then work against it, and SIGTERM ends it with the summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_read_a_running_demos_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = demo(dir.path(), &["--duration", "10m", "--rate", "5"]).spawn().unwrap();
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let sink = stderr.clone();
    let reader = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    let config = dir.path().join("config.toml");
    let status_line = format!("--config {} status", config.display());
    let told = crate::support::app::wait_until(Duration::from_secs(60), || {
        stderr.lock().unwrap().contains(&status_line)
    })
    .await;
    assert!(told, "the demo did not say how to run status:\n{}", stderr.lock().unwrap());
    assert!(stderr.lock().unwrap().contains(&format!("--config {} metrics", config.display())));

    let command = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(bin());
        cmd.arg("--config").arg(&config).args(args);
        cmd.env_remove("AUTH0_CLIENT_SECRET").env_remove("RUDDERSTACK_WRITE_KEY").env_remove("RUST_LOG");
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        cmd
    };
    // Bounded: the pipeline delivers the first entries within seconds.
    let mut status = Value::Null;
    for _ in 0..100 {
        let out = run_bounded(command(&["status", "--json"]), Duration::from_secs(30)).await;
        assert!(out.status.success(), "{}", text(&out));
        status = serde_json::from_slice(&out.stdout).unwrap();
        if status["delivered_total"].as_u64() > Some(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status["tenant"], DOMAIN, "{status}");
    assert!(status["delivered_total"].as_u64() > Some(5), "{status}");
    assert_eq!(status["dead_letters"], 0, "{status}");

    let out = run_bounded(command(&["metrics"]), Duration::from_secs(30)).await;
    assert!(out.status.success(), "{}", text(&out));
    let metrics = String::from_utf8(out.stdout).unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("auth0_rudderstack_delivered_events_total{")
            && l.contains(&format!("tenant=\"{DOMAIN}\""))),
        "{metrics}"
    );
    crate::ops::promtool_check(&metrics);
    // While it runs, the demo shows a running count (every 5 s) of what reached RudderStack.
    let counted = crate::support::app::wait_until(Duration::from_secs(30), || {
        stderr.lock().unwrap().contains("events delivered to RudderStack")
    })
    .await;
    assert!(counted, "no running count:\n{}", stderr.lock().unwrap());

    let (status, _) = sigterm_within(child, Duration::from_secs(90)).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
    let stderr = stderr.lock().unwrap().clone();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(EXACTLY_ONCE), "{stderr}");
}

/// `--state` refuses a directory that already holds a demo's state: the new stand-ins would not hold the
/// entries its cursor points at. It exits 2 and names the directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_refuses_a_state_directory_that_holds_an_earlier_demos_state() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("state.db"), b"").unwrap();
    let out = run_bounded(demo(dir.path(), &["--duration", "1s"]), Duration::from_secs(30)).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&dir.path().display().to_string()),
        "{}",
        text(&out)
    );
}

/// `--state` may name a directory others can write to: a symlink planted at its `config.toml` is never
/// written through. The demo stops before starting anything, naming the file, and the link's target keeps
/// its content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_never_writes_its_config_through_a_planted_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, b"someone else's file").unwrap();
    let state = dir.path().join("shared");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::symlink(&victim, state.join("config.toml")).unwrap();
    let out = run_bounded(demo(&state, &["--duration", "1s"]), Duration::from_secs(30)).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&state.join("config.toml").display().to_string()), "{err}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"someone else's file");
    assert!(!state.join("state.db").exists(), "the demo went on:\n{err}");
}

/// The closing check is not a formality: when the gateway loses a batch it acknowledged (the stand-in, told
/// to by the debug builds' `AUTH0_RUDDERSTACK_TEST_DEMO_LOSE`, answers the first one 200 without storing
/// it), the demo says how many entries are missing and exits 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_whose_gateway_loses_a_batch_says_so_and_exits_5() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = demo(&dir.path().join("state"), &["--duration", "3s"]);
    cmd.env("AUTH0_RUDDERSTACK_TEST_DEMO_LOSE", "1");
    let out = run_bounded(cmd, Duration::from_secs(60)).await;
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let result = err.lines().find(|l| l.starts_with("demo result:")).unwrap_or_else(|| panic!("{err}"));
    let missing: u64 = result
        .strip_prefix("demo result: NOT exactly once: ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{result}"));
    // The first batch held at least the example file's entries; none of them came back.
    let f = figures(&err);
    assert!(missing >= 1 && missing == f["generated"] - f["delivered"], "{result}\n{f:?}");
    assert!(!err.contains(EXACTLY_ONCE), "{err}");
}
