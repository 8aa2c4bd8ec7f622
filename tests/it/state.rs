//! The state file among other processes on the host: readers with any SQLite client, state-changing commands
//! run while the daemon works, and a second `import` beside the first. None of them may corrupt the state,
//! cut the daemon off its write-ahead log, or leave rows that nobody delivers.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::support::app::{App, run_bounded, sigterm, text, wait_until};
use crate::support::start_fakes;

/// The state files a process has open that were deleted while it held them (`/proc/PID/fd` says
/// "(deleted)"): a daemon writing into a deleted `-wal` loses every commit it makes from then on.
fn deleted_state_files(pid: u32, db: &Path) -> Vec<String> {
    let name = db.file_name().unwrap().to_string_lossy().to_string();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .map(|target| target.to_string_lossy().to_string())
        .filter(|target| target.contains(&name) && target.ends_with("(deleted)"))
        .collect()
}

/// Whether Python 3 is here to play the outside reader; without it the test says so, or fails under `CI`.
fn python3(test: &str) -> bool {
    let here = std::process::Command::new("python3").args(["-c", "import sqlite3, fcntl"]).status();
    let ok = here.is_ok_and(|s| s.success());
    if !ok {
        crate::support::missing_prerequisite(test, "python3 with its sqlite3 module is not installed");
    }
    ok
}

/// What an operator's `sqlite3 state.db 'select …'` does, forty times: open, read, close. It runs in Python's
/// `sqlite3` module, the system's own SQLite, as an operator's tools would. Half of the readers are read-only,
/// half are not: a read-write connection that closes last checkpoints the WAL and deletes it, so a daemon
/// whose own locks on the file were dropped would go on writing into deleted files. After each read the script
/// prints which of the daemon's state files are deleted.
const FORTY_READS: &str = r#"
import json, os, sqlite3, sys
db, pid = sys.argv[1], sys.argv[2]
for i in range(40):
    uri = "file:" + db + ("?mode=ro" if i % 2 == 0 else "?mode=rw")
    conn = sqlite3.connect(uri, uri=True, timeout=5)
    rows = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
    conn.close()
    links = []
    for fd in os.listdir("/proc/%s/fd" % pid):
        try:
            links.append(os.readlink("/proc/%s/fd/%s" % (pid, fd)))
        except OSError:
            pass
    deleted = [l for l in links if os.path.basename(db) in l and l.endswith("(deleted)")]
    print(json.dumps({"read": i + 1, "rows": rows, "deleted": deleted}), flush=True)
"#;

/// Forty outside reads, asserting after each that the daemon still holds no deleted state file.
async fn forty_reads(pid: u32, db: &Path, when: &str, log: impl Fn() -> String) {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg("-c").arg(FORTY_READS).arg(db).arg(pid.to_string()).kill_on_drop(true);
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let out = run_bounded(cmd, Duration::from_secs(60)).await;
    assert!(out.status.success(), "the outside reader failed: {}", text(&out));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 40, "{}", text(&out));
    for line in &lines {
        assert_eq!(line["deleted"], serde_json::json!([]), "{when}: {line}\n{}", log());
    }
    assert!(deleted_state_files(pid, db).is_empty());
}

/// While `run` delivers, and again while it idles, another process opens the state with SQLite, reads and
/// closes, forty times each: the daemon never loses its files, every entry arrives once (those logged after
/// the reads too), and the file is sound after SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_readers_never_cut_the_daemon_off_its_state() {
    if !python3("outside_readers_never_cut_the_daemon_off_its_state") {
        return;
    }
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(2_000);
    // Slow delivery down, so that the first forty reads fall while the daemon is delivering.
    rudder.set_delay(Some(Duration::from_millis(40)));
    let mut app = App::new(&auth0, &rudder);
    app.set("rudderstack", "max_batch_events", 20);
    let db = app.db_path();
    let child = app.spawn_run();
    let pid = child.id().expect("run is running");
    let started = wait_until(Duration::from_secs(30), || rudder.event_count() >= 20).await;
    assert!(started, "run delivered nothing:\n{}", app.run_log());

    forty_reads(pid, &db, "while delivering", || app.run_log()).await;
    assert!(rudder.event_count() < 2_000, "the reads were meant to fall while the daemon delivers");
    rudder.set_delay(None);
    let all = wait_until(Duration::from_secs(60), || rudder.event_count() >= 2_000).await;
    assert!(all, "{} of 2000 delivered:\n{}", rudder.event_count(), app.run_log());

    forty_reads(pid, &db, "while idle", || app.run_log()).await;
    auth0.push_synthetic(50);
    let more = wait_until(Duration::from_secs(30), || rudder.event_count() >= 2_050).await;
    assert!(
        more,
        "entries logged after the reads: {} of 2050 delivered:\n{}",
        rudder.event_count(),
        app.run_log()
    );
    assert!(deleted_state_files(pid, &db).is_empty());

    let status = sigterm(child).await;
    assert_eq!(status.code(), Some(0), "{}", app.run_log());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for e in rudder.events() {
        *seen.entry(e["properties"]["log_id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    let expected: Vec<String> =
        auth0.entries().iter().map(|e| e["log_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(expected.len(), 2_050);
    for id in &expected {
        assert_eq!(seen.get(id), Some(&1), "entry {id} arrived {:?} times", seen.get(id));
    }
    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let left: i64 = conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0)).unwrap();
    assert_eq!(left, 0, "rows were left undelivered");
}

/// Whether another process can take SQLite's EXCLUSIVE lock on the database file (the byte range of its
/// SHARED locks): it can only when no connection holds the file, and that is when a closing connection
/// deletes the write-ahead log.
async fn another_process_could_delete_the_wal(db: &Path) -> bool {
    const TRY_LOCK: &str = r#"
import fcntl, sys
f = open(sys.argv[1], "r+b")
try:
    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 510, 1073741826, 0)
    print("free")
except OSError:
    print("held")
"#;
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg("-c").arg(TRY_LOCK).arg(db).kill_on_drop(true);
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let out = run_bounded(cmd, Duration::from_secs(30)).await;
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim() == "free"
}

/// Opening the state again in a process that already holds a connection to it (as `import`, `status` or a
/// test may) keeps the locks of the connections already open: nothing reads the file through a descriptor of
/// its own while they hold it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_the_state_again_in_one_process_keeps_the_open_connections_locks() {
    if !python3("opening_the_state_again_in_one_process_keeps_the_open_connections_locks") {
        return;
    }
    use auth0_rudderstack::store::Store;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let first = Store::open(&db).unwrap();
    first.outbox_depth("a.example.com").unwrap();
    assert!(!another_process_could_delete_the_wal(&db).await, "the first connection holds no lock");
    let again = Store::open(&db).unwrap();
    let existing = Store::open_existing(&db).unwrap();
    let sibling = first.connection().unwrap();
    for store in [&first, &again, &existing, &sibling] {
        store.outbox_depth("a.example.com").unwrap();
    }
    assert!(!another_process_could_delete_the_wal(&db).await, "opening the file again dropped its locks");
    drop((first, again, existing, sibling));
    assert!(another_process_could_delete_the_wal(&db).await, "the check cannot tell a free file");
}

/// `forget-tenant` of a tenant a running `run` serves (from a config that no longer names it) is refused while
/// the daemon runs, naming it, and nothing is dropped; once the daemon has stopped, it goes ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_tenant_is_refused_while_a_daemon_serves_the_state() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(30);
    rudder.set_outage(true);
    let app = App::new(&auth0, &rudder);
    let child = app.spawn_run();
    let pid = child.id().unwrap();
    let db = app.db_path();
    let depth = || {
        auth0_rudderstack::store::Store::open_existing(&db)
            .and_then(|s| s.outbox_depth(crate::support::fake_auth0::DOMAIN))
            .unwrap_or(0)
    };
    assert!(wait_until(Duration::from_secs(30), || depth() == 30).await, "{}", app.run_log());

    // The same state, from a config that names another tenant only.
    let mut other = app.config.clone();
    other["auth0"].as_table_mut().unwrap().insert("domain".into(), "other-tenant.example.com".into());
    let other_path = app.dir.path().join("other.toml");
    std::fs::write(&other_path, toml::to_string(&other).unwrap()).unwrap();
    let forget = || {
        let mut cmd = app.command(&["forget-tenant", crate::support::fake_auth0::DOMAIN, "--yes"]);
        cmd.arg("--config").arg(&other_path);
        cmd
    };
    let out = run_bounded(forget(), Duration::from_secs(30)).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("`run` (pid {pid}) is using")), "{err}");
    assert_eq!(depth(), 30, "the refused command dropped entries");

    assert_eq!(sigterm(child).await.code(), Some(0), "{}", app.run_log());
    let out = run_bounded(forget(), Duration::from_secs(30)).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("dropped 30 undelivered"), "{}", text(&out));
}

/// Two imports started together on one state: the second waits for the first (which holds the lock and
/// delivers) instead of leaving its rows for a daemon that does not exist, then delivers its own; every
/// entry arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_imports_at_once_both_end_with_every_row_delivered() {
    let (auth0, rudder) = start_fakes().await;
    let entries = auth0.make_entries(1_000);
    let app = App::with_urls("http://127.0.0.1:9", &rudder.url());
    let mut files = Vec::new();
    for (i, half) in entries.chunks(500).enumerate() {
        let path = app.dir.path().join(format!("archive-{i}.ndjson"));
        let text: String = half.iter().map(|e| format!("{e}\n")).collect();
        std::fs::write(&path, text).unwrap();
        files.push(path);
    }
    // Slow delivery, so that the first import still holds the state when the second starts.
    rudder.set_delay(Some(Duration::from_millis(30)));
    let import = |file: &Path| {
        let mut cmd = app.command(&["import"]);
        cmd.arg(file);
        run_bounded(cmd, Duration::from_secs(120))
    };
    let (first, second) = tokio::join!(import(&files[0]), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        import(&files[1]).await
    });
    for out in [&first, &second] {
        assert!(out.status.success(), "{}", text(out));
    }
    let waited = String::from_utf8_lossy(&second.stderr);
    assert!(waited.contains("`import` (pid") && waited.contains("waiting for it to finish"), "{waited}");
    let mut seen: HashMap<String, usize> = HashMap::new();
    for e in rudder.events() {
        *seen.entry(e["properties"]["log_id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    for e in &entries {
        let id = e["log_id"].as_str().unwrap();
        assert_eq!(seen.get(id), Some(&1), "{id}");
    }
    let conn = rusqlite::Connection::open(app.db_path()).unwrap();
    let left: i64 = conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0)).unwrap();
    assert_eq!(left, 0);
}

/// `resume` takes the lock: while a daemon runs it is refused, naming the daemon, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_is_refused_while_a_daemon_holds_the_state() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(5);
    let app = App::new(&auth0, &rudder);
    let child = app.spawn_run();
    let pid = child.id().unwrap();
    assert!(rudder.wait_for_events(5, Duration::from_secs(30)).await.len() >= 5);
    let requests = auth0.requests();
    let out = app.run(&["resume"], Duration::from_secs(30)).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("`run` (pid {pid}) is using")), "{err}");
    assert!(auth0.requests() <= requests + 2, "resume asked Auth0 while refused");
    assert_eq!(sigterm(child).await.code(), Some(0), "{}", app.run_log());
    // Without the daemon, resume goes as far as its own check: fetching is not stopped.
    let out = app.run(&["resume"], Duration::from_secs(30)).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not stopped"), "{}", text(&out));
}

/// `backup` while `run` delivers: a copy that SQLite finds sound, whose counters agree with its rows (one
/// snapshot, not a file copied while it changed), and that only its owner can read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_the_daemon_delivers_is_consistent_and_private() {
    use std::os::unix::fs::PermissionsExt;
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(3_000);
    rudder.set_delay(Some(Duration::from_millis(20)));
    let mut app = App::new(&auth0, &rudder);
    app.set("rudderstack", "max_batch_events", 25);
    let child = app.spawn_run();
    assert!(wait_until(Duration::from_secs(30), || rudder.event_count() >= 50).await, "{}", app.run_log());
    let mut copies = Vec::new();
    for i in 0..5 {
        let dest = app.dir.path().join(format!("copy-{i}.db"));
        let out = app.run(&["backup", dest.to_str().unwrap()], Duration::from_secs(60)).await;
        assert!(out.status.success(), "{}", text(&out));
        copies.push(dest);
    }
    let delivered_meanwhile = rudder.event_count();
    assert!(delivered_meanwhile < 3_000, "the copies were meant to be taken while the daemon delivers");
    assert_eq!(sigterm(child).await.code(), Some(0), "{}", app.run_log());
    for copy in &copies {
        let mode = std::fs::metadata(copy).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", copy.display());
        let conn = rusqlite::Connection::open(copy).unwrap();
        let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok");
        let (counted, rows, fetched, delivered): (i64, i64, i64, i64) = conn
            .query_row(
                "SELECT outbox_count, (SELECT count(*) FROM outbox), fetched_total, delivered_total FROM tenant",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(counted, rows, "{}: the counter and the rows come from different moments", copy.display());
        assert_eq!(fetched, rows + delivered, "{}", copy.display());
    }
}

/// A state file and its companions that others can read are made private (0600) when the daemon opens
/// them, with a warning that names each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_readable_by_others_is_made_private_with_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(5);
    let app = App::new(&auth0, &rudder);
    let out = app.sync().await;
    assert!(out.status.success(), "{}", text(&out));
    let db = app.db_path();
    // Leave a -wal and -shm behind as a crash would, then open everything up.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute("UPDATE tenant SET last_error = NULL", []).unwrap();
        let files: Vec<_> = ["", "-wal", "-shm"].iter().map(|s| format!("{}{s}", db.display())).collect();
        for f in &files {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        auth0.push_synthetic(5);
        let out = app.sync().await;
        assert!(out.status.success(), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        for f in &files {
            if let Ok(meta) = std::fs::metadata(f) {
                assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{f}");
            }
            assert!(err.contains(&format!("path={f} ")), "no warning names {f}: {err}");
        }
        assert!(err.contains("readable by others"), "{err}");
        drop(conn);
    }
    assert_eq!(rudder.event_count(), 10);
}

/// A `sync` that holds the state for a few seconds: `n` new entries, sent one per request to a RudderStack
/// that answers each after 300 ms. Returns once the sync has sent its first request, so it holds the lock.
async fn slow_sync(
    app: &mut App,
    auth0: &crate::support::fake_auth0::FakeAuth0,
    rudder: &crate::support::fake_rudderstack::FakeRudderStack,
    n: usize,
) -> tokio::process::Child {
    app.set("rudderstack", "max_batch_events", 1);
    auth0.push_synthetic(n);
    rudder.set_delay(Some(Duration::from_millis(300)));
    let before = rudder.requests().len();
    let child = app.command(&["sync"]).spawn().unwrap();
    rudder.wait_for_requests(before + 1, Duration::from_secs(20)).await;
    child
}

/// Wait for `waiter` and `holder` to end (at most `limit`), failing if `waiter` ended while `holder` was
/// still running. The holder is looked at after the waiter, so a waiter seen ended with the holder still
/// running really did end first. Their outputs.
async fn ended_in_order(
    mut waiter: tokio::process::Child,
    mut holder: tokio::process::Child,
    limit: Duration,
) -> (std::process::Output, std::process::Output) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let waiter_ended = waiter.try_wait().unwrap().is_some();
        let holder_ended = holder.try_wait().unwrap().is_some();
        assert!(!waiter_ended || holder_ended, "the waiting command ended while the holder still ran");
        if waiter_ended {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the waiting command did not end within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (waiter.wait_with_output().await.unwrap(), holder.wait_with_output().await.unwrap())
}

/// `dead-letter retry` while a `sync` holds the state waits for it, naming it, and moves the letter only
/// once the sync has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_retry_beside_a_sync_waits_for_it_naming_it() {
    let (auth0, rudder) = start_fakes().await;
    let first = auth0.push_synthetic(5);
    let bad = first[2]["log_id"].clone();
    let refused = bad.clone();
    rudder.reject_events("event is not a valid rudder event", move |e| e["properties"]["log_id"] == refused);
    let mut app = App::new(&auth0, &rudder);
    assert_eq!(app.sync().await.status.code(), Some(0));
    rudder.clear_reject();
    assert_eq!(app.status().await["dead_letters"], 1);

    let sync = slow_sync(&mut app, &auth0, &rudder, 10).await;
    let sync_pid = sync.id().unwrap();
    let retry = app.command(&["dead-letter", "retry"]).spawn().unwrap();
    let (retry, sync) = ended_in_order(retry, sync, Duration::from_secs(60)).await;
    assert_eq!(sync.status.code(), Some(0), "{}", text(&sync));
    assert_eq!(retry.status.code(), Some(0), "{}", text(&retry));
    let err = String::from_utf8_lossy(&retry.stderr);
    assert!(
        err.contains(&format!("`sync` (pid {sync_pid}) is using the state; waiting for it to finish")),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&retry.stdout).contains("1 dead letter moved back"), "{}", text(&retry));
    // Moved after the sync ended, so the sync did not deliver it; the next one does.
    assert_eq!(rudder.events().iter().filter(|e| e["properties"]["log_id"] == bad).count(), 0);
    rudder.set_delay(None);
    assert_eq!(app.sync().await.status.code(), Some(0));
    assert_eq!(rudder.events().iter().filter(|e| e["properties"]["log_id"] == bad).count(), 1);
}

/// `import` while a `sync` holds the state waits for it, naming it, then delivers its own rows itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_beside_a_sync_waits_for_it_then_delivers_its_own_rows() {
    let (auth0, rudder) = start_fakes().await;
    let mut app = App::new(&auth0, &rudder);
    auth0.push_synthetic(3);
    assert_eq!(app.sync().await.status.code(), Some(0));
    let archived = auth0.make_entries(20);
    let file = app.dir.path().join("archive.ndjson");
    std::fs::write(&file, archived.iter().map(|e| format!("{e}\n")).collect::<String>()).unwrap();

    let sync = slow_sync(&mut app, &auth0, &rudder, 10).await;
    let sync_pid = sync.id().unwrap();
    let mut cmd = app.command(&["--log-format", "json", "import"]);
    cmd.arg(&file);
    let import = cmd.spawn().unwrap();
    let (import, sync) = ended_in_order(import, sync, Duration::from_secs(90)).await;
    assert_eq!(sync.status.code(), Some(0), "{}", text(&sync));
    assert_eq!(import.status.code(), Some(0), "{}", text(&import));
    let err = String::from_utf8_lossy(&import.stderr);
    assert!(
        err.contains(&format!("`sync` (pid {sync_pid}) is using the state; waiting for it to finish")),
        "{err}"
    );
    let summary: serde_json::Value = err
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["fields"]["message"] == "import done")
        .unwrap_or_else(|| panic!("no summary: {err}"));
    assert_eq!(summary["fields"]["delivered"], 20, "the import delivered its own rows: {summary}");
    let mut seen: HashMap<String, usize> = HashMap::new();
    for e in rudder.events() {
        *seen.entry(e["properties"]["log_id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    for e in &archived {
        assert_eq!(seen.get(e["log_id"].as_str().unwrap()), Some(&1), "{e}");
    }
}

/// Restoring a backup makes the daemon fetch again from the copy's checkpoint: everything after it is sent
/// again with the ids it had, and nothing before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_a_backup_fetches_again_from_its_checkpoint_with_the_same_ids() {
    let (auth0, rudder) = start_fakes().await;
    let before = auth0.push_synthetic(20);
    let app = App::new(&auth0, &rudder);
    assert_eq!(app.sync().await.status.code(), Some(0));
    let copy = app.dir.path().join("copy.db");
    let out = app.run(&["backup", copy.to_str().unwrap()], Duration::from_secs(20)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let after = auth0.push_synthetic(15);
    assert_eq!(app.sync().await.status.code(), Some(0));
    let first_ids: HashMap<String, String> = rudder
        .events()
        .iter()
        .map(|e| {
            (e["properties"]["log_id"].as_str().unwrap().into(), e["messageId"].as_str().unwrap().into())
        })
        .collect();
    assert_eq!(first_ids.len(), 35);

    // Restore: the copy in place of the state file, with no write-ahead log of the newer state beside it.
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", app.db_path().display()));
    }
    std::fs::copy(&copy, app.db_path()).unwrap();
    let requests = auth0.log_requests().len();
    assert_eq!(app.sync().await.status.code(), Some(0));
    let from = auth0.log_requests()[requests].query("from").map(str::to_string);
    assert_eq!(from.as_deref(), before.last().unwrap()["log_id"].as_str(), "fetched from the copy's cursor");
    let again: Vec<(String, String)> = rudder.events()[35..]
        .iter()
        .map(|e| {
            (e["properties"]["log_id"].as_str().unwrap().into(), e["messageId"].as_str().unwrap().into())
        })
        .collect();
    let want: Vec<String> = after.iter().map(|e| e["log_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(
        again.iter().map(|(l, _)| l.clone()).collect::<Vec<_>>(),
        want,
        "the entries after the checkpoint"
    );
    for (log_id, mid) in &again {
        assert_eq!(first_ids.get(log_id), Some(mid), "{log_id} sent again with another messageId");
    }
}

/// `backup` refuses a regular file already at its path, empty or not, and leaves it as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_refuses_a_regular_file_already_at_its_path() {
    let (auth0, rudder) = start_fakes().await;
    auth0.push_synthetic(5);
    let app = App::new(&auth0, &rudder);
    assert_eq!(app.sync().await.status.code(), Some(0));
    for content in [&b"precious data, not a database"[..], b""] {
        let dest = app.dir.path().join("existing.db");
        std::fs::write(&dest, content).unwrap();
        let out = app.run(&["backup", dest.to_str().unwrap()], Duration::from_secs(20)).await;
        assert_ne!(out.status.code(), Some(0), "{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains(&dest.display().to_string()), "{}", text(&out));
        assert_eq!(std::fs::read(&dest).unwrap(), content, "the file at the path was changed");
    }
}
