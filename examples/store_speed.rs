//! One-off measurement of the state database, run by hand (`cargo run --release --example store_speed`):
//! 1,000 page commits of 100 entries of ~1.4 KB, then 1,000 completions of 100 rows, each one a durable
//! (`synchronous = FULL`) transaction; and, with `quick-check N`, how long opening takes with an N-row outbox,
//! which is dominated by `PRAGMA quick_check`.
use std::time::Instant;

use auth0_rudderstack::entry::{LogId, parse_date};
use auth0_rudderstack::store::{Cursor, NewEntry, PageCommit, Store};

const TENANT: &str = "example-tenant.us.auth0.com";

fn page(p: usize, size: usize, filler: &str) -> PageCommit {
    let entries: Vec<NewEntry> = (0..size)
        .map(|i| {
            let log_id = format!("9000000000000000000000000000{p:06}{i:03}");
            let raw = format!(r#"{{"log_id":"{log_id}","type":"s","details":"{filler}"}}"#);
            NewEntry { raw, log_id: LogId::parse(&log_id).expect("a valid id") }
        })
        .collect();
    let cursor = entries
        .last()
        .map(|e| Cursor { log_id: e.log_id.clone(), date: parse_date("2026-01-01T00:00:00.000Z") });
    PageCommit { entries, cursor, ..PageCommit::default() }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q) as usize]
}

fn report(what: &str, mut ms: Vec<f64>, rows: usize) {
    let total: f64 = ms.iter().sum();
    ms.sort_by(f64::total_cmp);
    println!(
        "{what}: {} calls in {:.0} ms: mean {:.2} ms, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {:.0} rows/s",
        ms.len(),
        total,
        total / ms.len() as f64,
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms[ms.len() - 1],
        rows as f64 / (total / 1000.0)
    );
}

fn main() {
    let dir = tempfile::tempdir_in(std::env::current_dir().expect("cwd")).expect("tempdir");
    let path = dir.path().join("state.db");
    let filler = "x".repeat(1_300);
    let args: Vec<String> = std::env::args().collect();

    if args.get(1).map(String::as_str) == Some("quick-check") {
        let rows: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(1_000_000);
        let mut store = Store::open(&path).expect("open");
        for p in 0..rows / 1000 {
            store.commit_page(TENANT, &page(p, 1000, &filler)).expect("commit");
        }
        drop(store);
        let size = std::fs::metadata(&path).expect("metadata").len();
        for _ in 0..2 {
            let t = Instant::now();
            let store = Store::open(&path).expect("reopen");
            let open = t.elapsed();
            let t = Instant::now();
            let _ = store.snapshot(TENANT).expect("snapshot");
            println!(
                "open with {rows} outbox rows ({:.0} MB): {:.0} ms (snapshot {:.2} ms)",
                size as f64 / 1e6,
                open.as_secs_f64() * 1000.0,
                t.elapsed().as_secs_f64() * 1000.0
            );
        }
        return;
    }

    let mut store = Store::open(&path).expect("open");
    let pages: Vec<PageCommit> = (0..1000).map(|p| page(p, 100, &filler)).collect();
    let mut commit_ms = Vec::with_capacity(pages.len());
    for p in &pages {
        let t = Instant::now();
        store.commit_page(TENANT, p).expect("commit");
        commit_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    report("commit_page (100 entries of ~1.4 KB)", commit_ms, 100_000);

    let mut head_ms = Vec::new();
    let mut complete_ms = Vec::new();
    for _ in 0..1000 {
        let t = Instant::now();
        let rows = store.outbox_head(TENANT, 100).expect("head");
        head_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        let t = Instant::now();
        store.complete(TENANT, &seqs, &[]).expect("complete");
        complete_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    report("outbox_head(100)", head_ms, 100_000);
    report("complete (100 delivered)", complete_ms, 100_000);
    assert_eq!(store.outbox_depth(TENANT).expect("depth"), 0);
}
