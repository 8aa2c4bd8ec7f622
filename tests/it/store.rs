//! The SQLite state: one transaction per page and per completion, counters that stay right, two stores on one
//! file, and files that are not ours left exactly as they were.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use auth0_rudderstack::entry::{LogId, parse_date};
use auth0_rudderstack::store::{Cursor, Gap, Kept, NewDeadLetter, NewEntry, PageCommit, Store, StoreError};

const TENANT: &str = "example-tenant.us.auth0.com";

fn id(s: &str) -> LogId {
    LogId::parse(s).expect("a valid log_id")
}

fn entry(log_id: &str) -> NewEntry {
    NewEntry { log_id: id(log_id), raw: format!(r#"{{"log_id":"{log_id}","type":"s"}}"#) }
}

/// A page of `n` entries named `{prefix}{i:03}`, moving the cursor to the last one.
fn page(prefix: &str, n: usize) -> PageCommit {
    let entries: Vec<NewEntry> = (0..n).map(|i| entry(&format!("{prefix}{i:03}"))).collect();
    let cursor = entries
        .last()
        .map(|e| Cursor { log_id: e.log_id.clone(), date: parse_date("2026-01-02T03:04:05.678Z") });
    PageCommit { entries, cursor, ..PageCommit::default() }
}

fn head_ids(store: &Store) -> Vec<String> {
    store.outbox_head(TENANT, 100_000).expect("head").into_iter().map(|r| r.log_id).collect()
}

/// A second, plain connection for what the store deliberately cannot do (inspect, inject faults).
fn raw(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).expect("raw connection");
    conn.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
    conn
}

fn integrity(path: &Path) -> String {
    raw(path).query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("integrity_check")
}

/// The file's bytes, its mtime, and the names in its directory: all must survive a refused open.
fn fingerprint(path: &Path) -> (Vec<u8>, SystemTime, Vec<PathBuf>) {
    let bytes = std::fs::read(path).expect("read file");
    let mtime = std::fs::metadata(path).expect("metadata").modified().expect("mtime");
    let mut names: Vec<PathBuf> = std::fs::read_dir(path.parent().expect("parent"))
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .collect();
    names.sort();
    (bytes, mtime, names)
}

/// Opens `path` with both constructors, expects both refused, and proves the file was not touched.
fn assert_refused_untouched(path: &Path, expect: impl Fn(&StoreError) -> bool) {
    let before = fingerprint(path);
    // A coarse-mtime filesystem would hide a write made in the same tick; wait for the clock to move on.
    std::thread::sleep(Duration::from_millis(20));
    let err = Store::open(path).err().expect("open must refuse the file");
    assert!(expect(&err), "unexpected error from open: {err:?}");
    let err = Store::open_existing(path).err().expect("open_existing must refuse the file");
    assert!(expect(&err), "unexpected error from open_existing: {err:?}");
    assert!(!err.is_transient(), "a refused file is not a transient condition");
    let after = fingerprint(path);
    assert!(before.0 == after.0, "the file's bytes changed");
    assert_eq!(before.1, after.1, "the file's mtime changed");
    assert_eq!(before.2, after.2, "files appeared or vanished beside it");
}

fn is_corrupt(e: &StoreError) -> bool {
    matches!(e, StoreError::Corrupt { .. })
}

/// A database of ours with `pages` pages of 20 entries of ~1 KB, closed cleanly (WAL folded in).
fn real_database(dir: &Path, pages: usize) -> PathBuf {
    let path = dir.join("state.db");
    let mut store = Store::open(&path).expect("open");
    for p in 0..pages {
        let mut page = page(&format!("p{p:04}"), 20);
        for e in &mut page.entries {
            e.raw = format!("{}{}", e.raw, "x".repeat(1000));
        }
        store.commit_page(TENANT, &page).expect("commit");
    }
    drop(store);
    path
}

/// A committed page is appended in order behind the earlier ones and moves the cursor with it.
#[test]
fn a_page_commit_appends_its_entries_in_order_and_moves_the_cursor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    let mut store = Store::open(&path).expect("open");
    assert_eq!(store.cursor(TENANT).expect("cursor"), None);

    store.commit_page(TENANT, &page("a", 3)).expect("first page");
    store.commit_page(TENANT, &page("b", 2)).expect("second page");

    assert_eq!(head_ids(&store), ["a000", "a001", "a002", "b000", "b001"]);
    let seqs: Vec<i64> = store.outbox_head(TENANT, 10).expect("head").iter().map(|r| r.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs not increasing: {seqs:?}");
    assert_eq!(store.outbox_head(TENANT, 2).expect("head").len(), 2);
    assert_eq!(
        store.cursor(TENANT).expect("cursor"),
        Some(Cursor { log_id: id("b001"), date: parse_date("2026-01-02T03:04:05.678Z") })
    );
    assert_eq!(store.outbox_depth(TENANT).expect("depth"), 5);

    // A page without a cursor (everything filtered) leaves the cursor where it was.
    store.commit_page(TENANT, &PageCommit { filtered: 4, ..PageCommit::default() }).expect("empty page");
    assert_eq!(store.cursor(TENANT).expect("cursor").map(|c| c.log_id), Some(id("b001")));
    assert_eq!(store.snapshot(TENANT).expect("snapshot").filtered_total, 4);

    // And it is all still there after reopening.
    drop(store);
    let store = Store::open(&path).expect("reopen");
    assert_eq!(store.outbox_depth(TENANT).expect("depth"), 5);
    assert_eq!(store.cursor(TENANT).expect("cursor").map(|c| c.log_id), Some(id("b001")));
}

/// When any insert of a page fails, the whole page is rolled back: neither the outbox nor the cursor moves.
#[test]
fn a_page_that_fails_midway_changes_neither_the_outbox_nor_the_cursor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    let mut store = Store::open(&path).expect("open");
    store.commit_page(TENANT, &page("a", 2)).expect("first page");
    // Fault injection: the dead-letter insert, which runs after the page's entries are in, aborts.
    raw(&path)
        .execute_batch(
            "CREATE TRIGGER poison BEFORE INSERT ON dead_letter WHEN NEW.raw = 'poison'
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
        )
        .expect("trigger");

    let mut bad = page("b", 5);
    bad.filtered = 7;
    bad.dead_letters = vec![
        NewDeadLetter { log_id: Some(id("bx")), kept: Kept::Whole("fine".into()), reason: "bad".into() },
        NewDeadLetter { log_id: None, kept: Kept::Whole("poison".into()), reason: "bad".into() },
    ];
    let err = store.commit_page(TENANT, &bad).expect_err("the injected failure must surface");
    assert!(!err.is_transient());

    assert_eq!(head_ids(&store), ["a000", "a001"]);
    assert_eq!(store.cursor(TENANT).expect("cursor").map(|c| c.log_id), Some(id("a001")));
    let snap = store.snapshot(TENANT).expect("snapshot");
    assert_eq!((snap.outbox_depth, snap.dead_letters, snap.filtered_total), (2, 0, 0));

    // The store is still usable afterwards.
    store.commit_page(TENANT, &page("c", 1)).expect("next page");
    assert_eq!(head_ids(&store), ["a000", "a001", "c000"]);
}

/// Not a test on its own: the writer process that the next test kills with SIGKILL.
#[test]
#[ignore = "runs only as the child process of a_writer_killed_mid_stream_leaves_only_whole_pages"]
fn store_writer_child_process() {
    let Some(path) = std::env::var_os("STORE_CHILD_DB") else { return };
    let mut store = Store::open(Path::new(&path)).expect("child open");
    for p in 0..100_000 {
        store.commit_page(TENANT, &page(&format!("p{p:06}"), 50)).expect("child commit");
    }
}

/// A writer killed with SIGKILL in the middle of committing pages leaves whole pages and a cursor that
/// matches the last of them, never half a page.
#[test]
fn a_writer_killed_mid_stream_leaves_only_whole_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["store::store_writer_child_process", "--exact", "--ignored", "--quiet"])
        .env("STORE_CHILD_DB", &path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn child");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the child never committed 20 pages");
        assert!(child.try_wait().expect("try_wait").is_none(), "the child exited before it was killed");
        let depth = Store::open_existing(&path).ok().and_then(|s| s.outbox_depth(TENANT).ok()).unwrap_or(0);
        if depth >= 1000 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");

    let store = Store::open(&path).expect("reopen after the kill");
    let ids = head_ids(&store);
    assert_eq!(ids.len() % 50, 0, "a partial page survived: {} rows", ids.len());
    assert_eq!(store.outbox_depth(TENANT).expect("depth"), ids.len() as u64);
    let expected: Vec<String> = (0..ids.len() / 50)
        .flat_map(|p| page(&format!("p{p:06}"), 50).entries)
        .map(|e| e.log_id.to_string())
        .collect();
    assert_eq!(ids, expected);
    assert_eq!(store.cursor(TENANT).expect("cursor").map(|c| c.log_id.to_string()).as_ref(), ids.last());
    drop(store);
    assert_eq!(integrity(&path), "ok");
}

/// Completion deletes exactly the delivered rows and moves rejected rows, raw included, to dead letters with
/// their reason; the rest stay in order.
#[test]
fn complete_deletes_only_the_delivered_rows_and_sets_rejected_rows_aside_with_their_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    let mut store = Store::open(&path).expect("open");
    store.commit_page(TENANT, &page("a", 5)).expect("page");
    let rows = store.outbox_head(TENANT, 5).expect("head");
    let seq = |i: usize| rows[i].seq;

    store.complete(TENANT, &[seq(0), seq(2)], &[(seq(3), "400: event too large".into())]).expect("complete");

    assert_eq!(head_ids(&store), ["a001", "a004"]);
    let dead = store.dead_letters(Some(TENANT), 10).expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].log_id.as_deref(), Some("a003"));
    assert_eq!(dead[0].reason, "400: event too large");
    assert_eq!(dead[0].raw, rows[3].raw);
    let snap = store.snapshot(TENANT).expect("snapshot");
    assert_eq!((snap.outbox_depth, snap.delivered_total, snap.dead_letters), (2, 2, 1));
    assert!(snap.last_delivery_at.is_some());

    // A completion that only rejects does not count as a delivery.
    let before = snap.last_delivery_at;
    store.complete(TENANT, &[], &[(seq(4), String::new())]).expect("reject only");
    let snap = store.snapshot(TENANT).expect("snapshot");
    assert_eq!(snap.last_delivery_at, before);
    assert_eq!(snap.delivered_total, 2);
    assert_eq!(store.dead_letters(Some(TENANT), 10).expect("dead letters")[1].reason, "(no reason given)");
}

/// Completing the same rows twice (a retry after an unclear outcome) leaves every counter right.
#[test]
fn a_second_completion_of_the_same_rows_leaves_the_counts_right() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(&dir.path().join("state.db")).expect("open");
    store.commit_page(TENANT, &page("a", 4)).expect("page");
    let seqs: Vec<i64> = store.outbox_head(TENANT, 4).expect("head").iter().map(|r| r.seq).collect();

    for _ in 0..2 {
        store.complete(TENANT, &seqs[..2], &[(seqs[2], "rejected".into())]).expect("complete");
    }
    store.complete(TENANT, &[9_999], &[(9_998, "never there".into())]).expect("unknown seqs");

    let snap = store.snapshot(TENANT).expect("snapshot");
    assert_eq!((snap.outbox_depth, snap.delivered_total, snap.dead_letters), (1, 2, 1));
    assert_eq!(head_ids(&store), ["a003"]);
}

/// Stores opening one new file at the same moment all open it and can write. SQLite fails one of two
/// connections at once, without waiting, when both want to write the first page of a new file; `open` must
/// try again rather than pass that on.
#[test]
fn stores_creating_one_file_at_the_same_moment_all_open_it() {
    const ROUNDS: usize = 20;
    const STORES: usize = 6;
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.db");
        let start = std::sync::Arc::new(std::sync::Barrier::new(STORES));
        let threads: Vec<_> = (0..STORES)
            .map(|i| {
                let (path, start) = (path.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let mut store =
                        Store::open(&path).map_err(|e| format!("round {round}, store {i}: {e:?}"))?;
                    store.commit_page(TENANT, &page(&format!("s{i}"), 2)).map_err(|e| format!("{e:?}"))
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread").expect("opened and wrote");
        }
        let store = Store::open(&path).expect("reopen");
        assert_eq!(store.outbox_head(TENANT, 100).expect("head").len(), 2 * STORES);
    }
}

/// A fetcher and a sender, each with its own store on one file in its own thread, never lose or duplicate a
/// row, and the file passes `integrity_check` afterwards.
#[test]
fn two_stores_on_one_file_from_two_threads_never_lose_or_duplicate_a_row() {
    const PAGES: usize = 200;
    const PER_PAGE: usize = 10;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));

    let fetcher = {
        let (path, done) = (path.clone(), done.clone());
        std::thread::spawn(move || {
            let mut store = Store::open(&path).expect("fetcher open");
            for p in 0..PAGES {
                store.commit_page(TENANT, &page(&format!("p{p:03}"), PER_PAGE)).expect("commit");
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let sender = {
        let path = path.clone();
        std::thread::spawn(move || {
            let mut store = Store::open(&path).expect("sender open");
            let (mut delivered, mut rejected) = (Vec::new(), Vec::new());
            let deadline = Instant::now() + Duration::from_secs(120);
            for _ in 0..1_000_000 {
                assert!(Instant::now() < deadline, "the sender did not drain the outbox in time");
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let rows = store.outbox_head(TENANT, 37).expect("head");
                if rows.is_empty() && finished {
                    break;
                }
                let (mut ok, mut bad) = (Vec::new(), Vec::new());
                for row in rows {
                    if row.log_id.ends_with("007") {
                        bad.push((row.seq, "rejected".to_owned()));
                        rejected.push(row.log_id);
                    } else {
                        ok.push(row.seq);
                        delivered.push(row.log_id);
                    }
                }
                store.complete(TENANT, &ok, &bad).expect("complete");
            }
            (delivered, rejected)
        })
    };
    fetcher.join().expect("fetcher");
    let (delivered, rejected) = sender.join().expect("sender");

    let all: Vec<String> = (0..PAGES)
        .flat_map(|p| page(&format!("p{p:03}"), PER_PAGE).entries)
        .map(|e| e.log_id.to_string())
        .collect();
    let expected_ok: Vec<String> = all.iter().filter(|id| !id.ends_with("007")).cloned().collect();
    let expected_bad: Vec<String> = all.iter().filter(|id| id.ends_with("007")).cloned().collect();
    assert_eq!(delivered, expected_ok, "delivered rows lost, duplicated or out of order");
    assert_eq!(rejected, expected_bad);

    let store = Store::open_existing(&path).expect("open existing");
    let snap = store.snapshot(TENANT).expect("snapshot");
    assert_eq!(snap.outbox_depth, 0);
    assert_eq!(snap.delivered_total, expected_ok.len() as u64);
    assert_eq!(snap.dead_letters, PAGES as u64);
    let dead: Vec<String> = store
        .dead_letters(Some(TENANT), 10_000)
        .expect("dead letters")
        .into_iter()
        .filter_map(|d| d.log_id)
        .collect();
    assert_eq!(dead, expected_bad);
    drop(store);
    assert_eq!(integrity(&path), "ok");
}

/// `retry` moves the chosen dead letters (or all of them) to the end of the outbox, in dead-letter order.
#[test]
fn retrying_dead_letters_moves_them_back_to_the_end_of_the_outbox() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(&dir.path().join("state.db")).expect("open");
    let mut first = page("a", 2);
    first.dead_letters = vec![
        NewDeadLetter { log_id: Some(id("d1")), kept: Kept::Whole("{1}".into()), reason: "no type".into() },
        NewDeadLetter { log_id: Some(id("d2")), kept: Kept::Whole("{2}".into()), reason: "no type".into() },
        NewDeadLetter { log_id: None, kept: Kept::Whole("{3}".into()), reason: "no log_id".into() },
    ];
    store.commit_page(TENANT, &first).expect("page");
    let ids: Vec<i64> =
        store.dead_letters(Some(TENANT), 10).expect("dead letters").iter().map(|d| d.id).collect();
    assert_eq!(ids.len(), 3);

    // An id that does not exist is refused, naming it, and nothing moves.
    let err = store.retry_dead_letters(Some(TENANT), &[ids[1], 12_345]).expect_err("unknown id");
    assert!(err.to_string().contains("12345"), "{err}");
    assert_eq!(head_ids(&store), ["a000", "a001"]);
    assert_eq!(store.retry_dead_letters(Some(TENANT), &[ids[1], ids[1]]).expect("retry one").moved, 1);
    assert_eq!(head_ids(&store), ["a000", "a001", "d2"]);
    assert_eq!(store.outbox_head(TENANT, 10).expect("head")[2].raw, "{2}");

    assert_eq!(store.retry_dead_letters(Some(TENANT), &[]).expect("retry all").moved, 2);
    assert_eq!(head_ids(&store), ["a000", "a001", "d2", "d1", ""]);
    let snap = store.snapshot(TENANT).expect("snapshot");
    assert_eq!((snap.outbox_depth, snap.dead_letters), (5, 0));

    // Rejected again, the entry without a log_id goes back without one.
    let last = store.outbox_head(TENANT, 10).expect("head")[4].seq;
    store.complete(TENANT, &[], &[(last, "still no log_id".into())]).expect("reject");
    assert_eq!(store.dead_letters(Some(TENANT), 10).expect("dead letters")[0].log_id, None);
}

/// A withheld dead letter keeps its entry's size and hash, never its text; it is set aside once however often
/// it comes, and a retry leaves it in place and names it, for its entry to be fetched again.
#[test]
fn a_withheld_dead_letter_keeps_no_text_and_a_retry_leaves_it_for_a_fetch_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    let mut store = Store::open(&path).expect("open");
    let secret = r#"{"log_id":"w1","user_name":"victim@example.com"}"#;
    let letter = || NewDeadLetter {
        log_id: Some(id("w1")),
        kept: Kept::withheld(secret.as_bytes(), String::new()),
        reason: "unreadable".into(),
    };
    let mut p = page("a", 1);
    p.dead_letters = vec![letter(), letter()];
    p.dead_letters.push(NewDeadLetter {
        log_id: None,
        kept: Kept::Whole("{}".into()),
        reason: "whole".into(),
    });
    store.commit_page(TENANT, &p).expect("page");

    let letters = store.dead_letters(Some(TENANT), 10).expect("dead letters");
    assert_eq!(letters.len(), 2, "the same entry is set aside once");
    let w = &letters[0];
    assert!(w.withheld && !letters[1].withheld);
    assert_eq!((w.raw.as_str(), w.size, w.log_id.as_deref()), ("", secret.len() as u64, Some("w1")));
    use sha2::Digest as _;
    let expected: String = sha2::Sha256::digest(secret).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(w.sha256, expected);
    assert_eq!((letters[1].size, letters[1].raw.as_str()), (2, "{}"));

    let retried = store.retry_dead_letters(Some(TENANT), &[]).expect("retry all");
    assert_eq!(retried.moved, 1, "only the letter with its text is queued");
    assert_eq!(retried.withheld.len(), 1);
    assert_eq!((retried.withheld[0].id, retried.withheld[0].log_id.as_deref()), (w.id, Some("w1")));
    assert_eq!(head_ids(&store), ["a000", ""]);
    assert_eq!(store.dead_letters(Some(TENANT), 10).expect("dead letters").len(), 1);
    drop(store);
    let bytes =
        [std::fs::read(&path).unwrap(), std::fs::read(dir.path().join("state.db-wal")).unwrap_or_default()]
            .concat();
    assert!(!bytes.windows(18).any(|w| w == b"victim@example.com"), "the clear value reached the state file");
}

/// `snapshot` reports the cursor, counters, timestamps, the latest gap, the gap count and the stopped flag.
#[test]
fn the_snapshot_reports_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    let mut store = Store::open(&path).expect("open");
    let fresh = store.snapshot(TENANT).expect("snapshot");
    assert_eq!((fresh.cursor, fresh.last_fetch_at, fresh.last_gap, fresh.stopped), (None, None, None, false));

    let mut p = page("a", 3);
    p.filtered = 2;
    p.dead_letters =
        vec![NewDeadLetter { log_id: None, kept: Kept::Whole("{}".into()), reason: "no log_id".into() }];
    store.commit_page(TENANT, &p).expect("page");
    let seq = store.outbox_head(TENANT, 1).expect("head")[0].seq;
    store.complete(TENANT, &[seq], &[]).expect("complete");
    let gap = |n: &str| Gap {
        detected_at: "2026-02-01T00:00:00.000Z".into(),
        from_log_id: format!("old{n}"),
        from_date: Some("2026-01-01T00:00:00.000Z".into()),
        to_log_id: Some("a000".into()),
        to_date: None,
        detail: format!("checkpoint {n} expired"),
    };
    store.record_gap(TENANT, &gap("1"), false).expect("gap 1");
    assert!(!store.fetching_stopped(TENANT).expect("stopped"));
    store.record_gap(TENANT, &gap("2"), true).expect("gap 2");

    let snap = Store::open_existing(&path).expect("open existing").snapshot(TENANT).expect("snapshot");
    assert_eq!(snap.tenant, TENANT);
    assert_eq!(snap.cursor.as_deref(), Some("a002"));
    assert_eq!(snap.cursor_date.as_deref(), Some("2026-01-02T03:04:05.678Z"));
    assert_eq!(
        (snap.outbox_depth, snap.dead_letters, snap.delivered_total, snap.filtered_total),
        (2, 1, 1, 2)
    );
    let fetched = snap.last_fetch_at.expect("last_fetch_at");
    assert!(chrono::DateTime::parse_from_rfc3339(&fetched).is_ok() && fetched.ends_with('Z'), "{fetched}");
    assert!(snap.last_delivery_at.is_some());
    assert_eq!(snap.last_gap, Some(gap("2")));
    assert_eq!(snap.gaps, 2);
    assert!(snap.stopped && store.fetching_stopped(TENANT).expect("stopped"));

    store.resume(TENANT, &PageCommit::default()).expect("resume");
    assert!(!store.snapshot(TENANT).expect("snapshot").stopped);
    let before = store.snapshot(TENANT).expect("snapshot").last_fetch_at;
    std::thread::sleep(Duration::from_millis(5));
    store.touch_fetch(TENANT).expect("touch");
    assert_ne!(store.snapshot(TENANT).expect("snapshot").last_fetch_at, before);

    // Another tenant in the same file starts empty.
    let other =
        Store::open_existing(&path).expect("open existing").snapshot("other.eu.auth0.com").expect("snapshot");
    assert_eq!((other.cursor, other.outbox_depth, other.dead_letters, other.gaps), (None, 0, 0, 0));
    assert_eq!(other.tenant, "other.eu.auth0.com");
}

/// `open_existing` on a missing path reports it missing and creates nothing, not even the directory entry.
#[test]
fn open_existing_on_a_missing_path_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    let err = Store::open_existing(&path).err().expect("must fail");
    assert!(matches!(err, StoreError::Missing { .. }), "{err:?}");
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);

    // An empty file was never initialised either, and stays empty.
    std::fs::write(&path, b"").expect("touch");
    let err = Store::open_existing(&path).err().expect("must fail");
    assert!(matches!(err, StoreError::Missing { .. }), "{err:?}");
    assert_eq!(std::fs::metadata(&path).expect("metadata").len(), 0);
}

/// A text file given as the state database is refused and left byte-for-byte untouched.
#[test]
fn a_text_file_is_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    std::fs::write(&path, "[auth0]\ndomain = \"example\"\n").expect("write");
    assert_refused_untouched(&path, is_corrupt);
}

/// A file of random bytes, even one that starts with the SQLite header, is refused and left untouched.
#[test]
fn random_bytes_are_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    let mut rng = fastrand::Rng::with_seed(7);
    let noise: Vec<u8> = (0..64 * 1024).map(|_| rng.u8(..)).collect();
    std::fs::write(&path, &noise).expect("write");
    assert_refused_untouched(&path, is_corrupt);

    let mut disguised = b"SQLite format 3\0".to_vec();
    disguised.extend_from_slice(&noise);
    std::fs::write(&path, &disguised).expect("write");
    assert_refused_untouched(&path, is_corrupt);
}

/// A real database of ours with overwritten middle pages is refused as corrupt and left untouched.
#[test]
fn a_database_with_corrupted_pages_is_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = real_database(dir.path(), 100);
    let mut bytes = std::fs::read(&path).expect("read");
    assert!(bytes.len() > 1_000_000, "the database should span many pages");
    let middle = bytes.len() / 2 / 4096 * 4096;
    for b in &mut bytes[middle..middle + 3 * 4096] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).expect("corrupt");
    assert_refused_untouched(&path, is_corrupt);
}

/// A real database of ours cut in half is refused as corrupt and left untouched.
#[test]
fn a_truncated_database_is_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = real_database(dir.path(), 100);
    let len = std::fs::metadata(&path).expect("metadata").len();
    std::fs::OpenOptions::new().write(true).open(&path).expect("open").set_len(len / 2).expect("truncate");
    assert_refused_untouched(&path, is_corrupt);
}

/// A database written by a newer version (user_version 99) is refused with `NewerSchema` and left untouched.
#[test]
fn a_database_with_a_newer_schema_is_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = real_database(dir.path(), 2);
    raw(&path).pragma_update(None, "user_version", 99).expect("user_version");
    assert_refused_untouched(&path, |e| {
        matches!(
            e,
            StoreError::NewerSchema { found: 99, supported: auth0_rudderstack::store::SCHEMA_VERSION, .. }
        )
    });
}

/// Another application's SQLite database is refused, not migrated into, and left untouched.
#[test]
fn another_applications_database_is_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    {
        let conn = raw(&path);
        conn.execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('keep me');")
            .expect("foreign");
    }
    assert_refused_untouched(&path, is_corrupt);

    // Even one that happens to have our schema version number.
    raw(&path).pragma_update(None, "user_version", 1).expect("user_version");
    assert_refused_untouched(&path, is_corrupt);
}

/// A state path in a directory that does not exist yet is created on first open.
#[test]
fn a_missing_parent_directory_is_created_on_first_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("var/lib/a0rs/state.db");
    let mut store = Store::open(&path).expect("open creates the directory");
    store.commit_page(TENANT, &page("a", 3)).unwrap();
    assert!(path.is_file());
    assert_eq!(head_ids(&store).len(), 3);
}

/// The sender's window stops at its byte budget (but always holds one row), whatever the row count allows.
#[test]
fn the_outbox_window_is_bounded_by_bytes_as_well_as_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("state.db")).unwrap();
    let big = "x".repeat(1 << 20);
    let entries: Vec<NewEntry> = (0..10)
        .map(|i| NewEntry {
            log_id: id(&format!("b{i:03}")),
            raw: format!(r#"{{"log_id":"b{i:03}","pad":"{big}"}}"#),
        })
        .collect();
    store.commit_page(TENANT, &PageCommit { entries, ..PageCommit::default() }).unwrap();
    assert_eq!(store.outbox_window(TENANT, 100, 3 << 20).unwrap().len(), 3);
    assert_eq!(store.outbox_window(TENANT, 2, 3 << 20).unwrap().len(), 2);
    assert_eq!(store.outbox_window(TENANT, 100, 1).unwrap().len(), 1, "always one row");
    assert_eq!(store.outbox_window(TENANT, 100, 100 << 20).unwrap().len(), 10);
}
