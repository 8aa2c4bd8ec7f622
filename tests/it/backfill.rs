//! `import` as an operator relies on it beyond the basics in `import.rs`: a file known by its content, an
//! entry already waiting not queued twice, the summary's figures, and a running daemon that delivers what an
//! import beside it queued as soon as the import ends.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::app::{App, run_bounded, sigterm, text};
use crate::support::fake_auth0::{FakeAuth0, FakeOptions};
use crate::support::start_fakes;

/// `n` synthetic entries, made by a fake that serves nothing (only its entry maker is used).
async fn entries(n: usize) -> Vec<Value> {
    FakeAuth0::start(FakeOptions::realistic()).await.make_entries(n)
}

fn ndjson(entries: &[Value]) -> String {
    entries.iter().map(|e| format!("{e}\n")).collect()
}

/// `import FILES...` with JSON log lines, bounded.
async fn import(app: &App, files: &[&Path]) -> std::process::Output {
    let mut cmd = app.command(&["--log-format", "json", "import"]);
    cmd.args(files);
    run_bounded(cmd, Duration::from_secs(60)).await
}

/// The fields of the JSON log line whose message starts with `message`.
fn logged(out: &std::process::Output, message: &str) -> Vec<Value> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["message"].as_str().is_some_and(|m| m.starts_with(message)))
        .map(|l| l["fields"].clone())
        .collect()
}

/// The summary that ends an import.
fn summary(out: &std::process::Output) -> Value {
    logged(out, "import done").pop().unwrap_or_else(|| panic!("no summary: {}", text(out)))
}

fn ids(entries: &[Value]) -> Vec<String> {
    entries.iter().map(|e| e["log_id"].as_str().unwrap().to_string()).collect()
}

fn log_ids(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["properties"]["log_id"].as_str().unwrap().to_string()).collect()
}

/// A file is known by its content (a hash of its first MiB and its size), not its name: a copy under another
/// name is skipped as imported in full; one entry appended makes it another file, imported in full again
/// with the same ids; a byte changed past the first MiB, the size kept, is not noticed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_known_by_its_content_not_its_name() {
    let (_auth0, rudder) = start_fakes().await;
    let app = App::with_urls("http://127.0.0.1:9", &rudder.url());
    let all = entries(31).await;
    let first = app.dir.path().join("first.ndjson");
    std::fs::write(&first, ndjson(&all[..30])).unwrap();
    let out = import(&app, &[&first]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(rudder.event_count(), 30);

    let copy = app.dir.path().join("renamed-copy.ndjson");
    std::fs::copy(&first, &copy).unwrap();
    let out = import(&app, &[&copy]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(logged(&out, "imported in full before").len(), 1, "{}", text(&out));
    assert_eq!((summary(&out)["skipped_files"].clone(), rudder.event_count()), (json!(1), 30));

    std::fs::write(&copy, ndjson(&all)).unwrap();
    let out = import(&app, &[&copy]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(summary(&out)["enqueued"], 31, "{}", text(&out));
    let events = rudder.events();
    assert_eq!(log_ids(&events[30..]), ids(&all));
    for (a, b) in events[..30].iter().zip(&events[30..60]) {
        assert_eq!(a["messageId"], b["messageId"]);
    }

    // Only the first MiB and the size count: a byte changed after it, the size unchanged, is the same file.
    let big = entries(6_000).await;
    let large = app.dir.path().join("large.ndjson");
    let text_of = ndjson(&big);
    assert!(text_of.len() > 1 << 20);
    std::fs::write(&large, &text_of).unwrap();
    let out = import(&app, &[&large]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let last = big.last().unwrap()["log_id"].as_str().unwrap().to_string();
    let changed = format!("{}Z", &last[..last.len() - 1]);
    let edited = text_of.replacen(&format!("\"log_id\":\"{last}\""), &format!("\"log_id\":\"{changed}\""), 1);
    assert_eq!(edited.len(), text_of.len());
    assert_ne!(edited, text_of);
    std::fs::write(&large, edited).unwrap();
    let count = rudder.event_count();
    let out = import(&app, &[&large]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(logged(&out, "imported in full before").len(), 1, "{}", text(&out));
    assert_eq!(rudder.event_count(), count);
}

/// With RudderStack unreachable, the same entries imported from two files (an array and NDJSON) wait in the
/// outbox once each: the second file's entries are counted as skipped, not enqueued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_already_waiting_in_the_outbox_is_not_enqueued_twice() {
    let mut app = App::with_urls("http://127.0.0.1:9", "http://127.0.0.1:9");
    app.set("retry", "sync_give_up_after", "1s");
    let all = entries(20).await;
    let array = app.dir.path().join("archive.json");
    std::fs::write(&array, serde_json::to_vec(&all).unwrap()).unwrap();
    let lines = app.dir.path().join("archive.ndjson");
    std::fs::write(&lines, ndjson(&all)).unwrap();
    for file in [&array, &lines] {
        let out = import(&app, &[file]).await;
        assert_eq!(out.status.code(), Some(1), "RudderStack is unreachable: {}", text(&out));
        let read = logged(&out, "file read");
        assert_eq!(read.len(), 1, "{}", text(&out));
        let want = if file == &array { (20, 0) } else { (0, 20) };
        assert_eq!(
            (read[0]["enqueued"].clone(), read[0]["duplicates"].clone()),
            (json!(want.0), json!(want.1))
        );
    }
    assert_eq!(app.status().await["outbox_depth"], 20);
}

/// The summary that ends an import counts files, entries read, enqueued, skipped (already waiting), filtered
/// (by `log_types`), dead-lettered (no valid log_id) and delivered; a second run skips the file imported in
/// full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_import_summary_counts_every_entry_by_what_became_of_it() {
    let (_auth0, rudder) = start_fakes().await;
    let mut app = App::with_urls("http://127.0.0.1:9", &rudder.url());
    app.set("auth0", "log_types", vec!["s"]);
    let mut all = entries(20).await;
    for (i, e) in all.iter_mut().enumerate() {
        e["type"] = json!(if i % 2 == 0 { "s" } else { "f" });
    }
    let mut with_bad = all.clone();
    with_bad.push(json!({"type": "s", "date": "2020-01-01T00:00:00.000Z", "log_id": "not a log id!"}));
    let array = app.dir.path().join("a.json");
    std::fs::write(&array, serde_json::to_vec(&with_bad).unwrap()).unwrap();
    let lines = app.dir.path().join("b.ndjson");
    std::fs::write(&lines, ndjson(&all)).unwrap();
    // Slow answers keep a.json's rows waiting in the outbox while b.ndjson is read.
    rudder.set_delay(Some(Duration::from_secs(2)));
    let out = import(&app, &[&array, &lines]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = summary(&out);
    let figures: Vec<Value> =
        ["files", "skipped_files", "read", "enqueued", "skipped", "filtered", "dead_letters", "delivered"]
            .iter()
            .map(|k| s[*k].clone())
            .collect();
    assert_eq!(figures, [2, 0, 41, 10, 10, 20, 1, 10].map(|n| json!(n)), "{s}");
    let sent: Vec<String> = ids(&all).into_iter().step_by(2).collect();
    assert_eq!(log_ids(&rudder.events()), sent, "only the listed type, each once");

    rudder.set_delay(None);
    let out = import(&app, &[&array]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = summary(&out);
    assert_eq!(
        (s["files"].clone(), s["skipped_files"].clone(), s["read"].clone()),
        (json!(1), json!(1), json!(0))
    );
}

/// With `run` active and idle (`poll_interval = "1h"`), the rows an import queued are delivered within
/// seconds of its end, by the daemon, without another request to Auth0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_daemon_delivers_an_imports_rows_as_soon_as_it_ends() {
    let (auth0, rudder) = start_fakes().await;
    let live = auth0.push_synthetic(5);
    let mut app = App::new(&auth0, &rudder);
    app.set("auth0", "poll_interval", "1h");
    let child = app.spawn_run();
    rudder.wait_for_events(live.len(), Duration::from_secs(20)).await;
    // Caught up: the daemon's last page was short, and it now waits an hour.
    let caught_up = crate::support::app::wait_until(Duration::from_secs(20), || {
        auth0.log_requests().iter().filter(|r| r.query("from").is_some()).count() >= 1
    })
    .await;
    assert!(caught_up, "{}", app.run_log());
    let requests = auth0.log_requests().len();
    let archived = auth0.make_entries(8);
    let file: PathBuf = app.dir.path().join("archive.ndjson");
    std::fs::write(&file, ndjson(&archived)).unwrap();
    let out = import(&app, &[&file]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        summary(&out)["message"].as_str().unwrap().contains("the running daemon delivers"),
        "{}",
        text(&out)
    );
    let ended = Instant::now();
    let events = rudder.wait_for_events(live.len() + archived.len(), Duration::from_secs(5)).await;
    let took = ended.elapsed();
    assert_eq!(log_ids(&events[live.len()..]), ids(&archived));
    assert_eq!(auth0.log_requests().len(), requests, "the daemon was woken by the import, not by a poll");
    assert_eq!(sigterm(child).await.code(), Some(0), "{}", app.run_log());
    eprintln!("delivered {took:?} after the import ended");
}
