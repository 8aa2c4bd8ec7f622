//! `import`: archives (gzip NDJSON, EventBridge events) into the outbox and on to RudderStack with the ids of
//! live delivery, never touching Auth0 or the cursor; resumable, idempotent, and sharing the work with a
//! running daemon without sending anything twice.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::app::{
    App, MAX_PEAK_RSS_KIB, peak_rss_kib_if_alive, run_bounded, text, transform_ids, wait_until,
};
use crate::support::fake_auth0::{DOMAIN, FakeAuth0, FakeOptions};
use crate::support::fake_rudderstack::{self, FakeRudderStack};

/// A config whose Auth0 is a closed port: any request to it would fail the import.
fn app_without_auth0(rudder: &FakeRudderStack) -> App {
    App::with_urls("http://127.0.0.1:9", &rudder.url())
}

async fn rudder() -> FakeRudderStack {
    FakeRudderStack::start(fake_rudderstack::Options {
        write_keys: vec![crate::support::app::WRITE_KEY.into()],
        ..fake_rudderstack::Options::default()
    })
    .await
}

/// `n` synthetic entries, made by a fake that serves nothing (only its entry maker is used).
async fn entries(n: usize) -> Vec<Value> {
    FakeAuth0::start(FakeOptions::realistic()).await.make_entries(n)
}

fn write_gzip_ndjson(path: &Path, entries: &[Value]) {
    let file = std::fs::File::create(path).unwrap();
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    for e in entries {
        serde_json::to_writer(&mut gz, e).unwrap();
        gz.write_all(b"\n").unwrap();
    }
    gz.finish().unwrap();
}

/// EventBridge events from Auth0's partner source; every third one without `detail.log_id`.
fn eventbridge(entries: &[Value]) -> Vec<Value> {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut detail = json!({ "log_id": e["log_id"], "data": e });
            if i % 3 == 0 {
                detail.as_object_mut().unwrap().remove("log_id");
            }
            json!({
                "version": "0",
                "id": format!("6a7e8feb-b491-4cf7-a9f1-bf3703467718-{i}"),
                "detail-type": "Auth0 log",
                "source": "aws.partner/auth0.com/fake-tenant-a1b2c3/auth0.logs",
                "account": "123456789012",
                "time": e["date"],
                "region": "eu-west-1",
                "resources": [],
                "detail": detail,
            })
        })
        .collect()
}

/// Every accepted event's log_id → messageId; every copy of an entry must carry its first messageId.
fn delivered(rudder: &FakeRudderStack) -> (HashMap<String, String>, usize) {
    let mut ids = HashMap::new();
    let mut copies = 0;
    for e in rudder.events() {
        let log_id = e["properties"]["log_id"].as_str().unwrap().to_string();
        let mid = e["messageId"].as_str().unwrap().to_string();
        match ids.get(&log_id) {
            Some(first) => {
                assert_eq!(first, &mid, "a copy of {log_id} carries another messageId");
                copies += 1;
            }
            None => {
                ids.insert(log_id, mid);
            }
        }
    }
    (ids, copies)
}

fn import_cmd(app: &App, files: &[&PathBuf]) -> tokio::process::Command {
    let mut args = vec!["import".to_string()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    app.command(&refs)
}

/// `import FILES` started with its stderr going to `log` in the test directory, so a test can read what it
/// says while it runs; the child and the log's path.
fn spawn_logged(app: &App, files: &[&PathBuf], log: &str) -> (tokio::process::Child, PathBuf) {
    let log = app.dir.path().join(log);
    let mut cmd = import_cmd(app, files);
    cmd.stderr(std::fs::File::create(&log).unwrap());
    (cmd.spawn().unwrap(), log)
}

/// A gzipped NDJSON file of 20,000 entries and a JSON array of 10,000 EventBridge events: all 30,000 are
/// delivered exactly once with the messageIds `transform --domain` gives, no request goes to Auth0 (a closed
/// port), the cursor is untouched; and the same import again delivers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_are_delivered_once_with_live_ids_and_never_twice() {
    let rudder = rudder().await;
    let app = app_without_auth0(&rudder);
    let all = entries(30_000).await;
    let ndjson = app.dir.path().join("archive.ndjson.gz");
    write_gzip_ndjson(&ndjson, &all[..20_000]);
    let events = app.dir.path().join("eventbridge.json");
    std::fs::write(&events, serde_json::to_vec(&eventbridge(&all[20_000..])).unwrap()).unwrap();

    let out = run_bounded(import_cmd(&app, &[&ndjson, &events]), Duration::from_secs(180)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (ids, copies) = delivered(&rudder);
    assert_eq!((ids.len(), copies), (30_000, 0), "every entry exactly once");
    let mut expected = transform_ids(DOMAIN, &ndjson).await;
    expected.extend(transform_ids(DOMAIN, &events).await);
    assert_eq!(ids, expected, "the ids of live delivery");
    let s = app.status().await;
    assert_eq!(s["cursor"], Value::Null, "import never moves the cursor: {s}");
    assert_eq!(s["outbox_depth"], 0);

    let again = run_bounded(import_cmd(&app, &[&ndjson, &events]), Duration::from_secs(60)).await;
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("imported in full before"), "{}", text(&again));
    assert_eq!(rudder.event_count(), 30_000, "the same import again delivers nothing");
}

/// An import killed with SIGKILL part-way, then run again, delivers every entry; each copy sent twice carries
/// its first messageId.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_killed_part_way_goes_on_where_it_stopped() {
    let rudder = rudder().await;
    rudder.set_delay(Some(Duration::from_millis(20)));
    let app = app_without_auth0(&rudder);
    let all = entries(20_000).await;
    let file = app.dir.path().join("archive.ndjson.gz");
    write_gzip_ndjson(&file, &all);
    let mut child = import_cmd(&app, &[&file])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || rudder.event_count() >= 2_000).await,
        "nothing was delivered"
    );
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let before = rudder.event_count();
    assert!(before < 20_000, "the kill came too late to interrupt anything");
    rudder.set_delay(None);
    let out = run_bounded(import_cmd(&app, &[&file]), Duration::from_secs(180)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (ids, copies) = delivered(&rudder);
    assert_eq!(ids.len(), 20_000, "every entry arrived");
    let expected: HashSet<String> = all.iter().map(|e| e["log_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.keys().cloned().collect::<HashSet<_>>(), expected);
    // Only the rows of the round the kill interrupted (at most one sender window: 5 requests of 100 events)
    // can have reached RudderStack without being deleted from the outbox. An import that read the file again
    // from its start would send every event delivered before the kill a second time.
    assert!(
        copies <= 500,
        "{copies} events were sent again ({before} had been delivered before the kill): the import did not resume"
    );
    eprintln!("killed after {before} events; {copies} sent again, each with its first messageId");
}

/// With `run` active on the same state, `import` only enqueues, and the daemon delivers, without duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_running_daemon_import_enqueues_and_the_daemon_delivers() {
    let (auth0, rudder) = crate::support::start_fakes().await;
    let app = App::new(&auth0, &rudder);
    let live = auth0.push_synthetic(50);
    let child = app.spawn_run();
    rudder.wait_for_events(live.len(), Duration::from_secs(20)).await;
    let archived = entries(3_000).await;
    // Archived entries are older and have their own ids: give them a prefix live ids never have.
    let archived: Vec<Value> = archived
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            let id = format!("800{:053}", i);
            e["log_id"] = json!(id);
            e["_id"] = json!(id);
            e
        })
        .collect();
    let file = app.dir.path().join("old.json");
    std::fs::write(&file, serde_json::to_vec(&archived).unwrap()).unwrap();
    let out = run_bounded(import_cmd(&app, &[&file]), Duration::from_secs(60)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the running daemon delivers"), "{}", text(&out));
    let total = live.len() + archived.len();
    assert!(
        wait_until(Duration::from_secs(60), || rudder.event_count() >= total).await,
        "the daemon delivered {} of {total}:\n{}",
        rudder.event_count(),
        app.run_log()
    );
    let (ids, copies) = delivered(&rudder);
    assert_eq!((ids.len(), copies), (total, 0), "no duplicates");
    let pid = child.id().unwrap();
    std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .unwrap()
        .unwrap()
        .status;
    assert_eq!(status.code(), Some(0));
}

/// A file that is cut off exits 4 naming the file and the byte offset, and what was enqueued before the
/// damage is kept (and delivered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_archive_exits_4_naming_the_offset_and_keeps_what_came_before() {
    let rudder = rudder().await;
    let app = app_without_auth0(&rudder);
    let all = entries(5_000).await;
    let file = app.dir.path().join("cut.ndjson");
    let mut text_of: Vec<u8> = Vec::new();
    for e in &all {
        serde_json::to_writer(&mut text_of, e).unwrap();
        text_of.push(b'\n');
    }
    let cut = text_of.len() - 500;
    std::fs::write(&file, &text_of[..cut]).unwrap();
    let out = run_bounded(import_cmd(&app, &[&file]), Duration::from_secs(60)).await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cut.ndjson") && err.contains("byte"), "{err}");
    assert!(rudder.event_count() >= 4_000, "what came before the damage arrived: {}", rudder.event_count());
}

/// A directory given to `import` is the wrong path on the command line, not input that is not JSON: exit 2 (a
/// usage error) naming it, not 4, with nothing read or enqueued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_given_to_import_exits_2_naming_it() {
    let rudder = rudder().await;
    let app = app_without_auth0(&rudder);
    let dir = app.dir.path().join("archives");
    std::fs::create_dir(&dir).unwrap();
    let out = run_bounded(import_cmd(&app, &[&dir]), Duration::from_secs(60)).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&dir.display().to_string()) && err.contains("directory"), "{err}");
    assert_eq!(app.status().await["outbox_depth"], 0);
    assert_eq!(rudder.event_count(), 0);
}

/// `import --force` imports a file that was imported in full before, with the same messageIds (RudderStack
/// drops the copies), where the same import without it is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_imports_a_finished_file_again_with_the_same_ids() {
    let rudder = rudder().await;
    let app = app_without_auth0(&rudder);
    let all = entries(300).await;
    let file = app.dir.path().join("archive.ndjson.gz");
    write_gzip_ndjson(&file, &all);
    for (round, force) in [(1, false), (2, false), (3, true)] {
        let mut cmd = import_cmd(&app, &[&file]);
        if force {
            cmd.arg("--force");
        }
        let out = run_bounded(cmd, Duration::from_secs(60)).await;
        assert_eq!(out.status.code(), Some(0), "round {round}: {}", text(&out));
        let skipped = String::from_utf8_lossy(&out.stderr).contains("imported in full before");
        assert_eq!(skipped, round == 2, "round {round}: {}", text(&out));
    }
    let (ids, copies) = delivered(&rudder);
    assert_eq!(
        (ids.len(), copies),
        (300, 300),
        "the forced import sent every entry again, with its first id"
    );
}

/// Elements that carry no entry `import` can deliver (an object without a `log_id`, a bare string, an
/// EventBridge event without `detail.data`) each become a dead letter naming the file and position; the
/// summary counts them, and the rest is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elements_without_a_deliverable_entry_become_dead_letters() {
    let rudder = rudder().await;
    let app = app_without_auth0(&rudder);
    let all = entries(20).await;
    let mut no_id = all[0].clone();
    no_id.as_object_mut().unwrap().remove("log_id");
    let mut elements: Vec<Value> = all[1..].to_vec();
    elements.insert(5, no_id);
    elements.insert(9, json!("a bare string"));
    elements.insert(
        13,
        json!({"version": "0", "detail-type": "Auth0 log", "source": "aws.partner/auth0.com/x/auth0.logs",
               "detail": {"log_id": "90020230101000000000000000000000000000000000000000000000"}}),
    );
    let file = app.dir.path().join("mixed.ndjson");
    let mut text_ = String::new();
    for e in &elements {
        text_.push_str(&serde_json::to_string(e).unwrap());
        text_.push('\n');
    }
    std::fs::write(&file, text_).unwrap();
    let out = run_bounded(import_cmd(&app, &[&file]), Duration::from_secs(60)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for figure in ["read=22 ", "enqueued=19 ", "dead_letters=3"] {
        assert!(err.contains(figure), "the summary says {figure}: {}", text(&out));
    }
    let (ids, copies) = delivered(&rudder);
    assert_eq!((ids.len(), copies), (19, 0));
    let list = app.run(&["dead-letter", "list", "--json"], Duration::from_secs(20)).await;
    assert!(list.status.success(), "{}", text(&list));
    let dead: Vec<Value> = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(dead.len(), 3, "{dead:?}");
    for d in &dead {
        let reason = d["reason"].as_str().unwrap();
        assert!(reason.contains("mixed.ndjson"), "the reason names the file: {reason}");
    }
}

/// `entries` as NDJSON text.
fn ndjson(entries: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        serde_json::to_writer(&mut out, e).unwrap();
        out.push(b'\n');
    }
    out
}

/// `bytes` as one gzip member.
fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// The log ids of `entries`.
fn log_ids(entries: &[Value]) -> HashSet<String> {
    entries.iter().map(|e| e["log_id"].as_str().unwrap().to_string()).collect()
}

/// The binary's command line for `import ARG` with this config, quoted for `bash -c`.
fn import_line(app: &App, arg: &str) -> String {
    format!("exec '{}' --config '{}' import {arg}", crate::support::app::bin(), app.config_path().display())
}

/// `bash -c LINE` with the environment the binary's tests use.
fn bash(line: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg("-c").arg(line);
    cmd.env_remove("AUTH0_CLIENT_SECRET").env_remove("RUDDERSTACK_WRITE_KEY").env_remove("RUST_LOG");
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped());
    cmd.stderr(std::process::Stdio::piped()).kill_on_drop(true);
    cmd
}

/// A FIFO at `path`, made with mkfifo(1) (the crate forbids the unsafe `mkfifo(3)`); false if there is none.
fn mkfifo(path: &Path, test: &str) -> bool {
    match std::process::Command::new("mkfifo").arg(path).status() {
        Ok(s) if s.success() => true,
        other => {
            crate::support::missing_prerequisite(test, &format!("mkfifo failed: {other:?}"));
            false
        }
    }
}

/// Whether process `pid` has `path` open (one of its descriptors links to it).
fn has_open(pid: u32, path: &Path) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == path)))
        .unwrap_or(false)
}

/// Process substitution (`import <(cat FILE)`, a pipe named `/dev/fd/N`) over 1 MiB is read once, as a stream:
/// every entry arrives once. A second run reads it again from its beginning (a pipe cannot be recognised, so
/// nothing says "imported before"), and what it sends again carries the same messageIds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_from_process_substitution_delivers_every_entry_once() {
    let rudder = rudder().await;
    let app = app_without_auth0(&rudder);
    let all = entries(3_000).await;
    let file = app.dir.path().join("archive.ndjson");
    std::fs::write(&file, ndjson(&all)).unwrap();
    assert!(std::fs::metadata(&file).unwrap().len() > 1 << 20, "the archive must be over 1 MiB");
    let line = import_line(&app, &format!("<(cat '{}')", file.display()));

    let out = run_bounded(bash(&line), Duration::from_secs(120)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (ids, copies) = delivered(&rudder);
    assert_eq!((ids.len(), copies), (all.len(), 0), "every entry exactly once: {}", text(&out));
    assert_eq!(ids.keys().cloned().collect::<HashSet<_>>(), log_ids(&all));

    let again = run_bounded(bash(&line), Duration::from_secs(120)).await;
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(!String::from_utf8_lossy(&again.stderr).contains("imported in full before"), "{}", text(&again));
    let (ids, _) = delivered(&rudder);
    assert_eq!(ids.len(), all.len(), "sent again only under the ids it was sent with");
}

/// `cat FILE.gz | import -`: standard input, gzip compressed, is read once and every entry arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_from_stdin_delivers_every_entry_once() {
    let rudder = rudder().await;
    let app = app_without_auth0(&rudder);
    let all = entries(3_000).await;
    let file = app.dir.path().join("archive.ndjson.gz");
    std::fs::write(&file, gzip(&ndjson(&all))).unwrap();
    let line = format!("cat '{}' | {}", file.display(), import_line(&app, "-"));
    let out = run_bounded(bash(&line), Duration::from_secs(120)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (ids, copies) = delivered(&rudder);
    assert_eq!((ids.len(), copies), (all.len(), 0), "every entry exactly once: {}", text(&out));
    assert_eq!(ids.keys().cloned().collect::<HashSet<_>>(), log_ids(&all));
}

/// `import FIFO`, the writer coming after the import opened it: the FIFO is opened once and read to its end,
/// and every entry arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_from_a_fifo_delivers_every_entry_once() {
    let test = "an_import_from_a_fifo_delivers_every_entry_once";
    let rudder = rudder().await;
    let app = app_without_auth0(&rudder);
    let fifo = app.dir.path().join("archive.fifo");
    if !mkfifo(&fifo, test) {
        return;
    }
    let all = entries(3_000).await;
    let bytes = gzip(&ndjson(&all));
    let child = import_cmd(&app, &[&fifo]).spawn().unwrap();
    let pid = child.id().unwrap();
    assert!(wait_until(Duration::from_secs(20), || has_open(pid, &fifo)).await, "the import never opened it");
    let writer = {
        let fifo = fifo.clone();
        // Opening for writing blocks until a reader has it open: the import already does.
        std::thread::spawn(move || std::fs::OpenOptions::new().write(true).open(&fifo)?.write_all(&bytes))
    };
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the import ends once the writer is gone")
        .unwrap();
    writer.join().unwrap().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (ids, copies) = delivered(&rudder);
    assert_eq!((ids.len(), copies), (all.len(), 0), "every entry exactly once: {}", text(&out));
    assert_eq!(ids.keys().cloned().collect::<HashSet<_>>(), log_ids(&all));
}

/// SIGTERM ends an import waiting on a FIFO, whether no writer ever came or the writer holds it open and
/// writes nothing more: within 5 s, with 128 + 15. What was read before the signal is committed whole: it is
/// delivered or still waiting in the outbox, and nothing else is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_an_import_waiting_on_a_fifo_within_5_seconds() {
    let test = "sigterm_ends_an_import_waiting_on_a_fifo_within_5_seconds";
    let rudder = rudder().await;
    let app = app_without_auth0(&rudder);
    let fifo = app.dir.path().join("stalled.fifo");
    if !mkfifo(&fifo, test) {
        return;
    }

    // No writer at all.
    let child = import_cmd(&app, &[&fifo]).spawn().unwrap();
    let pid = child.id().unwrap();
    assert!(wait_until(Duration::from_secs(20), || has_open(pid, &fifo)).await, "the import never opened it");
    let (status, took) = crate::support::app::sigterm_within(child, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(143), "no writer: exited {status:?} after {took:?}");

    // A writer that wrote some entries and holds the FIFO open.
    let some = entries(10).await;
    let child = import_cmd(&app, &[&fifo]).spawn().unwrap();
    let pid = child.id().unwrap();
    assert!(wait_until(Duration::from_secs(20), || has_open(pid, &fifo)).await, "the import never opened it");
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    writer.write_all(&ndjson(&some)).unwrap();
    writer.flush().unwrap();
    // The import has read them once nothing is left in the FIFO to read.
    let (status, took) = crate::support::app::sigterm_within(child, Duration::from_secs(5)).await;
    drop(writer);
    assert_eq!(status.code(), Some(143), "a silent writer: exited {status:?} after {took:?}");
    let s = app.status().await;
    let kept = s["outbox_depth"].as_u64().unwrap() as usize + rudder.event_count();
    assert!(kept == 0 || kept == some.len(), "all or none of the entries read before the signal: {s}");
}

/// A long import (a FIFO that stays open after one full batch of 2,000 elements) logs its progress every
/// 10 s, counting every element it settled (enqueued, repeated, filtered out or set aside); once the writer
/// closes, the summary counts each kind apart, `status` counts the filtered entries, and each distinct kept
/// entry arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_import_reports_its_progress_and_its_summary_counts_each_kind_of_element() {
    let test = "a_long_import_reports_its_progress_and_its_summary_counts_each_kind_of_element";
    let rudder = rudder().await;
    let mut app = app_without_auth0(&rudder);
    app.set("auth0", "exclude_types", vec!["fp"]);
    let fifo = app.dir.path().join("long.fifo");
    if !mkfifo(&fifo, test) {
        return;
    }
    let mut elements = entries(1_993).await;
    for e in &mut elements {
        if e["type"] == "fp" {
            e["type"] = json!("s");
        }
    }
    let kept: HashSet<String> = log_ids(&elements);
    elements.extend([elements[10].clone(), elements[20].clone()]);
    for i in 0..3 {
        let mut filtered = elements[i].clone();
        let id = format!("950{:053}", i);
        filtered["log_id"] = json!(id);
        filtered["_id"] = json!(id);
        filtered["type"] = json!("fp");
        elements.push(filtered);
    }
    elements.push(json!("a bare string"));
    elements.push(json!({"type": "s", "description": "no log_id"}));
    assert_eq!(elements.len(), 2_000, "one full batch");

    let (child, log) = spawn_logged(&app, &[&fifo], "import.log");
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    writer.write_all(&ndjson(&elements)).unwrap();
    writer.flush().unwrap();
    let said = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(30), || said().contains("import progress: read=2000 enqueued=1993 "))
            .await,
        "no progress line counting the batch: {}",
        said()
    );
    drop(writer);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", said());
    let done = said().lines().find(|l| l.contains("import done")).map(str::to_owned).unwrap_or_default();
    for figure in ["read=2000 ", "enqueued=1993 ", "skipped=2 ", "filtered=3 ", "dead_letters=2 "] {
        assert!(done.contains(figure), "the summary says {figure}: {done}");
    }
    let (ids, copies) = delivered(&rudder);
    assert_eq!(ids.keys().cloned().collect::<HashSet<_>>(), kept);
    assert_eq!(copies, 0);
    assert_eq!(app.status().await["filtered_total"], 3);
}

/// An import stopped by SIGTERM while its reader waits for room in a full outbox (RudderStack is down)
/// exits 143 saying so, and is not taken for a finished one: run again, it resumes after the entries it
/// had read, and every entry arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_stopped_by_sigterm_goes_on_where_it_stopped() {
    let rudder = rudder().await;
    let mut app = app_without_auth0(&rudder);
    app.set("state", "max_outbox_entries", 100);
    let all = entries(3_000).await;
    let file = app.dir.path().join("archive.ndjson");
    std::fs::write(&file, ndjson(&all)).unwrap();
    rudder.set_outage(true);
    let (child, log) = spawn_logged(&app, &[&file], "first.log");
    let said = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(30), || said().contains("the outbox is full")).await,
        "the reader never waited for room: {}",
        said()
    );
    let (status, _) = crate::support::app::sigterm_within(child, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(143), "{}", said());
    assert!(said().contains("stopped by signal; run the import again"), "{}", said());

    rudder.set_outage(false);
    let again = run_bounded(import_cmd(&app, &[&file]), Duration::from_secs(60)).await;
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("resuming an interrupted import"), "{}", text(&again));
    let (ids, copies) = delivered(&rudder);
    assert_eq!(ids.keys().cloned().collect::<HashSet<_>>(), log_ids(&all), "every entry arrived");
    assert_eq!(copies, 0);
}

/// An import that is still waiting for the state lock (another import holds it, reading a FIFO no writer
/// opens) ends on SIGTERM with 128 + 15 and says it was stopped, having read and enqueued nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_an_import_waiting_for_the_lock_with_143() {
    let test = "sigterm_ends_an_import_waiting_for_the_lock_with_143";
    let rudder = rudder().await;
    let app = app_without_auth0(&rudder);
    let fifo = app.dir.path().join("holder.fifo");
    if !mkfifo(&fifo, test) {
        return;
    }
    let holder = import_cmd(&app, &[&fifo]).spawn().unwrap();
    let holder_pid = holder.id().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || has_open(holder_pid, &fifo)).await,
        "the holder never opened it"
    );

    let file = app.dir.path().join("archive.ndjson");
    std::fs::write(&file, ndjson(&entries(20).await)).unwrap();
    let (waiting, log) = spawn_logged(&app, &[&file], "waiting.log");
    let said = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(20), || said().contains("waiting for it to finish")).await,
        "the second import never said it waits: {}",
        said()
    );
    let (status, took) = crate::support::app::sigterm_within(waiting, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(143), "exited {status:?} after {took:?}: {}", said());
    assert!(said().contains("import stopped by signal"), "{}", said());

    let (status, _) = crate::support::app::sigterm_within(holder, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(143), "the holder exited {status:?}");
    let s = app.status().await;
    assert_eq!((s["outbox_depth"].as_u64(), rudder.event_count()), (Some(0), 0), "nothing was read: {s}");
}

/// The entry limit is the larger of 4 × `rudderstack.max_event_bytes` and 1 MiB, as the README says: with the
/// default 32,000 and with 400,000, an entry 2 KiB under the limit is read whole (and, larger than any event
/// may be, becomes a dead letter with its text), while one 2 KiB over it is set aside as it streams past,
/// its text withheld.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_entry_limit_is_four_times_max_event_bytes_and_at_least_a_mebibyte() {
    for (max_event_bytes, limit) in [(32_000usize, 1usize << 20), (400_000, 1_600_000)] {
        let rudder = rudder().await;
        let mut app = app_without_auth0(&rudder);
        app.set("rudderstack", "max_event_bytes", max_event_bytes as i64);
        let mut all = entries(3).await;
        // Pad `description` so that the entry's line is `size` bytes long; `log_id` first, where the reader
        // finds it in an entry it does not read whole.
        let sized = |e: &Value, size: usize| {
            let mut e: serde_json::Map<String, Value> = [("log_id".to_string(), e["log_id"].clone())]
                .into_iter()
                .chain(e.as_object().unwrap().clone())
                .collect();
            let mut e = Value::Object(std::mem::take(&mut e));
            e["description"] = json!("");
            let bare = serde_json::to_vec(&e).unwrap().len();
            e["description"] = json!("x".repeat(size - bare));
            assert_eq!(serde_json::to_vec(&e).unwrap().len(), size);
            e
        };
        all[0] = sized(&all[0], limit - 2048);
        all[1] = sized(&all[1], limit + 2048);
        let file = app.dir.path().join("sized.ndjson");
        std::fs::write(&file, ndjson(&all)).unwrap();
        let out = run_bounded(import_cmd(&app, &[&file]), Duration::from_secs(120)).await;
        assert_eq!(out.status.code(), Some(0), "{max_event_bytes}: {}", text(&out));
        assert_eq!(rudder.event_count(), 1, "{max_event_bytes}: only the small entry is an event");

        let out = app.run(&["dead-letter", "list", "--json"], Duration::from_secs(20)).await;
        assert!(out.status.success(), "{}", text(&out));
        let letters: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        // Only ids and flags in messages: the letters hold megabytes.
        let seen: Vec<(Value, Value)> =
            letters.iter().map(|l| (l["log_id"].clone(), l["withheld"].clone())).collect();
        let withheld = |i: usize| {
            let l = letters.iter().find(|l| l["log_id"] == all[i]["log_id"]);
            l.unwrap_or_else(|| panic!("{max_event_bytes}: no dead letter for entry {i}: {seen:?}"))["withheld"]
                .as_bool()
        };
        assert_eq!(letters.len(), 2, "{max_event_bytes}: {seen:?}");
        assert_eq!(withheld(0), Some(false), "{max_event_bytes}: under the limit, read whole");
        assert_eq!(withheld(1), Some(true), "{max_event_bytes}: over the limit, set aside while read");
    }
}

/// An entry of 3 MB (over the 1 MiB limit the default `max_event_bytes` gives) among normal ones is set aside
/// while it is read: its dead letter keeps its log_id, size, SHA-256 and first 4 KiB, the state never holds
/// its text (its last bytes are nowhere in the state file or its WAL), the summary counts it, and the entries
/// around it are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_over_the_limit_is_set_aside_while_read_and_never_stored() {
    let rudder = rudder().await;
    let app = app_without_auth0(&rudder);
    let mut all = entries(41).await;
    let mut big = all.remove(20);
    let tail = "TAIL-OF-THE-OVERSIZED-ENTRY-5f3a";
    big["description"] = json!(format!("{}{tail}", "x".repeat(3_000_000)));
    // As a Log Streams wrapper, whose log_id comes first: only the first 4 KiB are looked at for one.
    let big = json!({ "log_id": big["log_id"], "data": big });
    let big_text = serde_json::to_vec(&big).unwrap();
    let mut text_of = ndjson(&all[..20]);
    text_of.extend_from_slice(&big_text);
    text_of.push(b'\n');
    text_of.extend(ndjson(&all[20..]));
    let file = app.dir.path().join("big.ndjson.gz");
    std::fs::write(&file, gzip(&text_of)).unwrap();

    let out = run_bounded(import_cmd(&app, &[&file]), Duration::from_secs(120)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dead_letters=1"), "the summary counts it: {err}");
    let (ids, copies) = delivered(&rudder);
    assert_eq!((ids.len(), copies), (all.len(), 0));
    assert_eq!(ids.keys().cloned().collect::<HashSet<_>>(), log_ids(&all));

    let out = app.run(&["dead-letter", "list", "--json"], Duration::from_secs(20)).await;
    assert!(out.status.success(), "{}", text(&out));
    let letters: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let l = &letters[0];
    use sha2::Digest;
    let sha: String = sha2::Sha256::digest(&big_text).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(l["log_id"], big["log_id"]);
    assert_eq!(l["withheld"], true);
    assert_eq!(l["size"].as_u64(), Some(big_text.len() as u64));
    assert_eq!(l["sha256"].as_str(), Some(sha.as_str()));
    assert_eq!(l["raw"].as_str().map(str::as_bytes), Some(&big_text[..4096]));
    assert!(l["reason"].as_str().unwrap().contains("entry 21"), "{l}");

    for path in [app.db_path(), app.db_path().with_extension("db-wal")] {
        let bytes = std::fs::read(&path).unwrap_or_default();
        assert!(
            memchr::memmem::find(&bytes, tail.as_bytes()).is_none(),
            "{} holds the entry",
            path.display()
        );
    }
}

/// 300 entries of about 1 MB each (just under the 1 MiB entry limit, so each is read whole) in a gzipped
/// NDJSON file, all filtered out: the reader's peak resident set stays within 64 MiB, since a batch ends once
/// it holds a few MiB rather than only after 2,000 entries, and each entry is counted exactly once. Filtered
/// out, nothing is sent, so the figure is the reading alone. `VmHWM` is a high-water mark, sampled every few
/// milliseconds while the import lives; reading, not the exit, is where the memory would pile up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_of_large_entries_stays_under_64_mb() {
    let rudder = rudder().await;
    let mut app = app_without_auth0(&rudder);
    app.set("auth0", "log_types", toml::Value::Array(vec!["no-such-type".into()]));
    let mut all = entries(300).await;
    for e in &mut all {
        e["description"] = json!("x".repeat(1_000_000));
    }
    let file = app.dir.path().join("large.ndjson.gz");
    write_gzip_ndjson(&file, &all);

    let mut child = import_cmd(&app, &[&file]).spawn().expect("spawn the import");
    let pid = child.id().expect("started");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        peak = peak.max(peak_rss_kib_if_alive(pid).unwrap_or(0));
        assert!(peak <= MAX_PEAK_RSS_KIB, "peak RSS {peak} KiB");
        assert!(std::time::Instant::now() < deadline, "the import did not finish within 120 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let out = child.wait_with_output().await.unwrap();
    eprintln!("peak RSS seen {:.1} MiB", peak as f64 / 1024.0);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("read=300 enqueued=0") && err.contains("filtered=300"), "{err}");
    assert_eq!(app.status().await["outbox_depth"], 0);
    assert_eq!(rudder.event_count(), 0);
}
