//! End-to-end benchmarks of the real binary against the fake Auth0 and RudderStack on 127.0.0.1.
//!
//! `cargo bench --bench pipeline` runs five scenarios, each once, and ends with one table with a PASS or MISS
//! against each target, decided from the measurement (the README quotes that table): (1) a `sync` of 200,000 realistic entries (the transform fixtures, about 1.3 KB each,
//! with fresh log ids) with no Auth0 rate limit: entries per second, peak resident memory and CPU seconds per
//! 100,000 entries; (2) the same catch-up split into fetch only (RudderStack in outage) and send only, to show
//! what running the two loops concurrently gains; (3) `run` with nothing to do: memory, and requests per
//! poll interval; (4) a catch-up against a token bucket of 10 requests a second: how much of the budget is
//! used, and how many 429s; (5) `run` with entries appearing at random moments: the delay from Auth0 to
//! RudderStack; (6) **sparse**: the defaults (no `poll_interval`, so `"auto"`; the default pace) against
//! Essentials' `/logs` bucket (burst 10, 100 a minute), one entry at a random moment every few seconds for
//! three minutes (`BENCH_QUICK=1`: 30 s, a smoke run only), then a quiet minute: the delay from Auth0 to
//! RudderStack and the `/api/v2/logs` requests a minute, with every entry delivered once. Every figure is a ratio or absolute from this one run; nothing is averaged across runs, so
//! on a busy machine a figure can be off, and the run says so by its MISS rather than by failing a test.
//!
//! The daemon runs under GNU time (`/usr/bin/time`), which reports its peak resident memory and CPU time; its
//! current memory is read from `/proc/<pid>/status` while it runs. Every wait is bounded and panics with the
//! daemon's stderr when something does not arrive: a benchmark of a broken run would be worthless, so each
//! scenario also checks that every entry was delivered.
//!
//! `BENCH_ONLY=end_to_end,idle,budget,latency,sparse` (any subset) runs only the named scenarios.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use auth0_rudderstack::store::Store;
use serde_json::Value;

#[path = "../tests/it/support/mod.rs"]
mod support;
#[path = "support/table.rs"]
mod table;

use support::app::{App, CLIENT_ID, CLIENT_SECRET, bin};
use support::fake_auth0::{Bucket, DOMAIN, FakeAuth0, FakeOptions};
use support::fake_rudderstack::{self, FakeRudderStack};
use table::{Table, fmt_int};

/// Entries in the end-to-end catch-up.
const CATCH_UP: usize = 200_000;
/// Entries in the rate-limited catch-up: 300 pages, 30 s at 10 requests a second.
const BUDGET_ENTRIES: usize = 30_000;
/// Entries appended at random moments in the latency scenario, and over how long.
const LATENCY_ENTRIES: usize = 100;
const LATENCY_SPREAD: Duration = Duration::from_secs(40);
/// How long the idle daemon is watched.
const IDLE_WATCH: Duration = Duration::from_secs(10);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total = Instant::now();
    let corpus = Corpus::load();
    eprintln!(
        "corpus: {} fixture entries, {:.0} bytes each on average",
        corpus.entries.len(),
        corpus.mean_bytes()
    );
    let mut table = Table::default();
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|o| o.trim() == name);
    if wanted("end_to_end") {
        end_to_end(&corpus, &mut table).await;
    }
    if wanted("idle") {
        idle(&corpus, &mut table).await;
    }
    if wanted("budget") {
        budget(&corpus, &mut table).await;
    }
    if wanted("latency") {
        latency(&corpus, &mut table).await;
    }
    if wanted("sparse") {
        sparse(&corpus, &mut table).await;
    }
    table.print();
    println!("whole benchmark: {:.0} s of wall time", total.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------------------------
// Scenarios

/// Targets 3 and the overlap: a fresh `sync` of 200,000 entries, then the same work split into its halves.
async fn end_to_end(corpus: &Corpus, table: &mut Table) {
    let auth0 = fake_auth0(None).await;
    let made = Instant::now();
    let ids = corpus.push(&auth0, CATCH_UP);
    eprintln!("pushed {CATCH_UP} entries into the fake Auth0 in {:.1} s", made.elapsed().as_secs_f64());

    // (c) a fresh state, a normal sync.
    eprintln!("(c) sync of {CATCH_UP} entries, fetching and sending together ...");
    let rudder = fake_rudder().await;
    let app = bench_app(&auth0, &rudder);
    let fakes_cpu = self_cpu_seconds();
    let daemon = Daemon::spawn(&app, &["sync"]).await;
    let c = daemon.wait(Duration::from_secs(150), "sync of the whole catch-up").await;
    let fakes_cpu = self_cpu_seconds() - fakes_cpu;
    c.expect_success("sync");
    let (distinct, dups) = delivered(&rudder, &ids);
    let rate = CATCH_UP as f64 / c.wall;
    let cpu_per_100k = c.cpu() / (CATCH_UP as f64 / 100_000.0);
    table
        .section(&format!("End to end: `sync` of {} entries, no Auth0 rate limit", fmt_int(CATCH_UP as f64)));
    table.row(
        "delivered (distinct log_ids at the fake)",
        format!("{} of {} ({dups} sent twice)", fmt_int(distinct as f64), fmt_int(CATCH_UP as f64)),
        "all, each once".into(),
        distinct == CATCH_UP && dups == 0,
    );
    table.row(
        "throughput",
        format!("{} entries/s ({:.2} s)", fmt_int(rate), c.wall),
        "≥ 20,000 entries/s".into(),
        rate >= 20_000.0,
    );
    table.row(
        "peak RSS",
        format!("{:.1} MB", c.max_rss_kb as f64 / 1024.0),
        "< 50 MB".into(),
        c.max_rss_kb < 50 * 1024,
    );
    table.info(
        "CPU per 100k entries",
        format!("{:.2} s ({:.2} user + {:.2} sys in all)", cpu_per_100k, c.user, c.sys),
    );
    table.info("CPU of the two fakes meanwhile", format!("{fakes_cpu:.2} s (same 2 cores)"));
    drop(rudder);

    // (a) fetch only: RudderStack is down, so the sender gets nowhere and the outbox fills.
    eprintln!("(a) fetch only: RudderStack in outage, until the outbox holds {CATCH_UP} ...");
    let rudder = fake_rudder().await;
    rudder.set_outage(true);
    let app = bench_app(&auth0, &rudder);
    let daemon = Daemon::spawn(&app, &["sync"]).await;
    let a = wait_for_outbox(&app, &daemon, CATCH_UP as u64, Duration::from_secs(150)).await;
    daemon.signal("KILL");
    let _ = daemon.wait(Duration::from_secs(20), "killed fetch-only sync").await;
    assert_eq!(rudder.event_count(), 0, "the fake RudderStack accepted events during its outage");

    // (b) send only: RudderStack is back; the fetcher finds nothing new.
    eprintln!("(b) send only: RudderStack back, the outbox drains ...");
    rudder.set_outage(false);
    let daemon = Daemon::spawn(&app, &["sync"]).await;
    let b = daemon.wait(Duration::from_secs(150), "send-only sync").await;
    b.expect_success("send-only sync");
    verify_delivered(&rudder, &ids, "send-only sync");
    let gain = (a + b.wall) / c.wall;
    table.section("Overlap of the fetcher and the sender (same 200,000 entries)");
    table.info("(a) fetch only, until the outbox holds all", format!("{a:.2} s"));
    table.info("(b) send only, outbox to RudderStack", format!("{:.2} s", b.wall));
    table.info("(c) both loops together (the run above)", format!("{:.2} s", c.wall));
    table.info("gain (a + b) / c", format!("{gain:.2}×"));
    table.note(
        "The fetcher commits each page and wakes the sender, which transforms and posts that page while the \
         fetcher already reads the next; they share only the SQLite file (WAL), so the two halves overlap \
         on the two cores.",
    );
}

/// Target 4: `run` with nothing to do.
async fn idle(corpus: &Corpus, table: &mut Table) {
    const POLL: Duration = Duration::from_secs(1);
    eprintln!("idle: `run` caught up, poll_interval 1s, watched for {IDLE_WATCH:?} ...");
    let auth0 = fake_auth0(None).await;
    let ids = corpus.push(&auth0, 100);
    let rudder = fake_rudder().await;
    let mut app = bench_app(&auth0, &rudder);
    app.set("auth0", "poll_interval", "1s");
    // Catch up first, so `run` starts with nothing to do.
    Daemon::spawn(&app, &["sync"])
        .await
        .wait(Duration::from_secs(30), "catch-up sync")
        .await
        .expect_success("sync");
    verify_delivered(&rudder, &ids, "catch-up sync");
    let requests_before = auth0.log_requests().len();

    let daemon = Daemon::spawn(&app, &["run"]).await;
    let start = Instant::now();
    let mut samples = Vec::new();
    while start.elapsed() < IDLE_WATCH + Duration::from_millis(500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(kb) = daemon.proc_status_kb("VmRSS") {
            samples.push((start.elapsed(), kb));
        }
    }
    daemon.signal("TERM");
    let run = daemon.wait(Duration::from_secs(20), "idle run after SIGTERM").await;
    run.expect_success("run (stopped by SIGTERM)");
    // The catch-up sync minted one token and kept it, sealed, in the state file; `run` reuses it.
    let minted = auth0.tokens_minted();
    let reqs: Vec<Instant> = auth0.log_requests()[requests_before..].iter().map(|r| r.at).collect();
    assert!(reqs.len() >= 3, "the idle daemon made only {} log requests", reqs.len());
    let gaps: Vec<f64> = reqs.windows(2).map(|w| w[1].duration_since(w[0]).as_secs_f64()).collect();
    let (min_gap, max_gap) =
        (gaps.iter().copied().fold(f64::INFINITY, f64::min), gaps.iter().copied().fold(0.0, f64::max));
    let span = reqs.last().unwrap().duration_since(reqs[0]).as_secs_f64();
    let per_interval = gaps.len() as f64 / (span / POLL.as_secs_f64());
    let one_per_interval =
        gaps.iter().all(|&g| g >= POLL.as_secs_f64() * 0.99 && g <= POLL.as_secs_f64() * 1.2);
    let steady: Vec<u64> =
        samples.iter().filter(|(at, _)| *at >= Duration::from_secs(2)).map(|&(_, kb)| kb).collect();
    let steady_max = steady.iter().copied().max().unwrap_or(0);
    let steady_last = steady.last().copied().unwrap_or(0);

    table.section("Idle: `run`, caught up, poll_interval = 1s");
    table.row(
        "peak RSS (VmHWM, whole run)",
        format!("{:.1} MB", run.max_rss_kb as f64 / 1024.0),
        "< 15 MB".into(),
        run.max_rss_kb < 15 * 1024,
    );
    table.row(
        "steady RSS (after 2 s: max / last)",
        format!("{:.1} / {:.1} MB", steady_max as f64 / 1024.0, steady_last as f64 / 1024.0),
        "< 15 MB".into(),
        steady_max > 0 && steady_max < 15 * 1024,
    );
    table.row(
        "/api/v2/logs requests per poll_interval",
        format!(
            "{per_interval:.2} ({} requests in {span:.1} s, gaps {min_gap:.3}–{max_gap:.3} s)",
            reqs.len()
        ),
        "exactly 1".into(),
        one_per_interval,
    );
    table.row("token mints (catch-up sync, then `run`)", minted.to_string(), "1".into(), minted == 1);
    table.info(
        "CPU while idle",
        format!("{:.3} s in {:.1} s ({:.2}% of one core)", run.cpu(), run.wall, run.cpu() / run.wall * 100.0),
    );
}

/// Target 5: a long catch-up against Auth0's token bucket.
async fn budget(corpus: &Corpus, table: &mut Table) {
    const LIMIT: f64 = 10.0;
    eprintln!("budget: sync of {BUDGET_ENTRIES} entries against a bucket of 10 requests/s ...");
    let auth0 = fake_auth0(Some(Bucket { burst: 10, per_second: LIMIT })).await;
    let ids = corpus.push(&auth0, BUDGET_ENTRIES);
    let rudder = fake_rudder().await;
    let mut app = bench_app(&auth0, &rudder);
    app.set("auth0", "max_requests_per_second", LIMIT);
    let run = Daemon::spawn(&app, &["sync"]).await.wait(Duration::from_secs(90), "rate-limited sync").await;
    run.expect_success("rate-limited sync");
    verify_delivered(&rudder, &ids, "rate-limited sync");
    let reqs = auth0.log_requests();
    let first = reqs[0].at;
    let span = reqs.last().unwrap().at.duration_since(first).as_secs_f64();
    let rate = (reqs.len() - 1) as f64 / span;
    let used = rate / LIMIT * 100.0;
    let late_429 =
        reqs.iter().filter(|r| r.status == 429 && r.at.duration_since(first).as_secs_f64() > 1.0).count();
    let all_429 = reqs.iter().filter(|r| r.status == 429).count();

    table.section("Budget: token bucket of burst 10, 10 requests/s; max_requests_per_second = 10");
    table.row(
        "sustained request rate",
        format!("{rate:.2}/s = {used:.1}% of 10/s ({} requests in {span:.1} s)", reqs.len()),
        "≥ 95%".into(),
        used >= 95.0,
    );
    table.row(
        "429s after the first second",
        format!("{late_429} (of {all_429} in all)"),
        "0".into(),
        late_429 == 0,
    );
    table.info("entries delivered", format!("{} in {:.1} s", fmt_int(BUDGET_ENTRIES as f64), run.wall));
}

/// Target 6: entries appearing at random moments, delivered by a polling `run`.
async fn latency(corpus: &Corpus, table: &mut Table) {
    const POLL: Duration = Duration::from_secs(2);
    eprintln!(
        "latency: {LATENCY_ENTRIES} entries at random moments over {LATENCY_SPREAD:?}, poll_interval 2s ..."
    );
    let auth0 = fake_auth0(None).await;
    let warm = corpus.push(&auth0, 10);
    let rudder = fake_rudder().await;
    let mut app = bench_app(&auth0, &rudder);
    app.set("auth0", "poll_interval", "2s");
    let daemon = Daemon::spawn(&app, &["run"]).await;
    wait_until(&daemon, "the first 10 entries at RudderStack", Duration::from_secs(30), || {
        rudder.event_count() >= warm.len()
    })
    .await;

    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut offsets: Vec<Duration> =
        (0..LATENCY_ENTRIES).map(|_| LATENCY_SPREAD.mul_f64(rng.f64())).collect();
    offsets.sort();
    let origin = tokio::time::Instant::now();
    let mut pushed: HashMap<String, Instant> = HashMap::new();
    for offset in offsets {
        tokio::time::sleep_until(origin + offset).await;
        let id = corpus.push(&auth0, 1).pop().expect("one entry");
        pushed.insert(id, Instant::now());
    }
    let want = warm.len() + LATENCY_ENTRIES;
    wait_until(&daemon, "every entry of the latency run at RudderStack", Duration::from_secs(30), || {
        rudder.event_count() >= want
    })
    .await;
    daemon.signal("TERM");
    daemon.wait(Duration::from_secs(20), "latency run after SIGTERM").await.expect_success("run");

    let mut first_arrival: HashMap<String, Instant> = HashMap::new();
    for a in rudder.arrivals() {
        first_arrival.entry(a.log_id).or_insert(a.at);
    }
    let mut lat: Vec<f64> = pushed
        .iter()
        .map(|(id, at)| {
            let arrived =
                first_arrival.get(id).unwrap_or_else(|| panic!("entry {id} never reached RudderStack"));
            arrived.duration_since(*at).as_secs_f64()
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1];
    let target = POLL.as_secs_f64() + 1.0;

    table.section(&format!(
        "Latency: `run`, poll_interval = 2s, {LATENCY_ENTRIES} entries at random moments over {} s (seed {seed})",
        LATENCY_SPREAD.as_secs()
    ));
    table.info("p50 Auth0 → RudderStack", format!("{:.2} s", pct(0.50)));
    table.row(
        "p99 Auth0 → RudderStack",
        format!("{:.2} s", pct(0.99)),
        format!("≤ {target:.0} s"),
        pct(0.99) <= target,
    );
    table.info("max", format!("{:.2} s", lat[lat.len() - 1]));
}

/// Sparse traffic at the defaults: one entry every `SPARSE_GAP` on average, at random moments, against
/// Essentials' `/logs` bucket, with no `poll_interval` and no `max_requests_per_second` in the config.
async fn sparse(corpus: &Corpus, table: &mut Table) {
    const SPARSE_GAP: Duration = Duration::from_secs(4);
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let (spread, quiet) = if quick {
        (Duration::from_secs(30), Duration::from_secs(15))
    } else {
        (Duration::from_secs(180), Duration::from_secs(60))
    };
    let n = (spread.as_secs_f64() / SPARSE_GAP.as_secs_f64()).round() as usize;
    eprintln!(
        "sparse: {n} entries at random moments over {spread:?}, then {quiet:?} quiet, defaults, Essentials' bucket ..."
    );
    let essentials = Bucket { burst: 10, per_second: 100.0 / 60.0 };
    let auth0 = fake_auth0(Some(essentials)).await;
    let warm = corpus.push(&auth0, 10);
    let rudder = fake_rudder().await;
    let mut app = bench_app(&auth0, &rudder);
    app.unset("auth0", "poll_interval").unset("auth0", "max_requests_per_second");
    let daemon = Daemon::spawn(&app, &["run"]).await;
    wait_until(&daemon, "the first 10 entries at RudderStack", Duration::from_secs(30), || {
        rudder.event_count() >= warm.len()
    })
    .await;

    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut offsets: Vec<Duration> = (0..n).map(|_| spread.mul_f64(rng.f64())).collect();
    offsets.sort();
    let origin = tokio::time::Instant::now();
    let window_from = Instant::now();
    let mut pushed: HashMap<String, Instant> = HashMap::new();
    for offset in offsets {
        tokio::time::sleep_until(origin + offset).await;
        let id = corpus.push(&auth0, 1).pop().expect("one entry");
        pushed.insert(id, Instant::now());
    }
    tokio::time::sleep_until(origin + spread).await;
    let window_to = Instant::now();
    let want = warm.len() + n;
    wait_until(&daemon, "every entry of the sparse run at RudderStack", Duration::from_secs(30), || {
        rudder.event_count() >= want
    })
    .await;
    // Then nothing at all for a while: the idle rate alone.
    let quiet_from = Instant::now();
    tokio::time::sleep(quiet).await;
    let quiet_to = Instant::now();
    daemon.signal("TERM");
    daemon.wait(Duration::from_secs(20), "sparse run after SIGTERM").await.expect_success("run");

    // Every entry once: the arrivals are exactly the entries pushed, each once.
    let arrivals = rudder.arrivals();
    let mut first_arrival: HashMap<String, Instant> = HashMap::new();
    let mut copies: HashMap<String, usize> = HashMap::new();
    for a in &arrivals {
        first_arrival.entry(a.log_id.clone()).or_insert(a.at);
        *copies.entry(a.log_id.clone()).or_default() += 1;
    }
    let expected: HashSet<&String> = warm.iter().chain(pushed.keys()).collect();
    let got: HashSet<&String> = copies.keys().collect();
    let twice = copies.values().filter(|c| **c > 1).count();
    let exact = got == expected && twice == 0 && arrivals.len() == want;
    let mut lat: Vec<f64> = pushed
        .iter()
        .map(|(id, at)| {
            let arrived =
                first_arrival.get(id).unwrap_or_else(|| panic!("entry {id} never reached RudderStack"));
            arrived.duration_since(*at).as_secs_f64()
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1];
    let requests = auth0.log_requests();
    let per_minute = |from: Instant, to: Instant| {
        let k = requests.iter().filter(|r| r.at >= from && r.at < to).count();
        (k, k as f64 * 60.0 / (to - from).as_secs_f64())
    };
    let (busy_n, busy_rate) = per_minute(window_from, window_to);
    let (quiet_n, quiet_rate) = per_minute(quiet_from, quiet_to);
    let refused = auth0.log_requests_with(429);

    table.section(&format!(
        "Sparse traffic at the defaults (poll_interval \"auto\", 1.6 requests/s), Essentials' bucket (burst 10, \
         100/min): {n} entries at random moments over {} s (seed {seed}){}",
        spread.as_secs(),
        if quick { "; BENCH_QUICK: a smoke run, not a figure" } else { "" }
    ));
    table.row(
        "entries delivered, each once",
        format!("{} of {want} distinct, {twice} twice, {} arrivals", got.len(), arrivals.len()),
        format!("{want}, each once"),
        exact,
    );
    table.info("p50 Auth0 → RudderStack", format!("{:.2} s", pct(0.50)));
    table.row("p99 Auth0 → RudderStack", format!("{:.2} s", pct(0.99)), "≤ 5 s".into(), pct(0.99) <= 5.0);
    table.info("max", format!("{:.2} s", lat[lat.len() - 1]));
    table.row(
        "/api/v2/logs requests a minute, with the traffic",
        format!("{busy_rate:.1} ({busy_n} in {:.0} s)", (window_to - window_from).as_secs_f64()),
        "≤ 20".into(),
        busy_rate <= 20.0,
    );
    table.row(
        "/api/v2/logs requests a minute, quiet",
        format!("{quiet_rate:.1} ({quiet_n} in {:.0} s)", (quiet_to - quiet_from).as_secs_f64()),
        "≤ 20".into(),
        quiet_rate <= 20.0,
    );
    table.row("429s", refused.to_string(), "0".into(), refused == 0);
}

// ---------------------------------------------------------------------------------------------------------
// Fakes, entries and checks

async fn fake_auth0(bucket: Option<Bucket>) -> FakeAuth0 {
    FakeAuth0::start(FakeOptions {
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        bucket,
        retry_after_header: true,
        ..FakeOptions::default()
    })
    .await
}

/// A fake RudderStack that remembers only log ids and arrival times, so the bench's own memory stays small.
async fn fake_rudder() -> FakeRudderStack {
    FakeRudderStack::start(fake_rudderstack::Options {
        write_keys: vec![support::app::WRITE_KEY.into()],
        keep_events: false,
        ..fake_rudderstack::Options::default()
    })
    .await
}

/// The test installation with what the benchmark needs on top: the highest pace the config allows (1,000
/// requests a second, far above what a page takes), a sync that does not give up during a long outage, and
/// the default page and batch sizes.
fn bench_app(auth0: &FakeAuth0, rudder: &FakeRudderStack) -> App {
    let mut app = App::new(auth0, rudder);
    app.set("auth0", "max_requests_per_second", 1_000.0)
        .set("retry", "initial_backoff", "100ms")
        .set("retry", "max_backoff", "1s")
        .set("retry", "sync_give_up_after", "10m");
    app
}

/// The transform fixtures' raw entries, in date order: real shapes and sizes.
struct Corpus {
    entries: Vec<Value>,
}

impl Corpus {
    fn load() -> Corpus {
        let mut entries: Vec<Value> = support::fixture_pairs().into_iter().map(|(entry, _)| entry).collect();
        entries.sort_by_key(|e| e["date"].as_str().unwrap_or_default().to_string());
        assert!(!entries.is_empty(), "no fixture entries found");
        Corpus { entries }
    }

    fn mean_bytes(&self) -> f64 {
        let total: usize = self.entries.iter().map(|e| serde_json::to_string(e).unwrap().len()).sum();
        total as f64 / self.entries.len() as f64
    }

    /// Log `n` more entries in the fake: the fixtures in turn, each with the fake's next log id and date (so
    /// log ids and dates keep increasing together, as in a real tenant). Returns the log ids.
    fn push(&self, auth0: &FakeAuth0, n: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        let mut done = 0;
        while done < n {
            let chunk = (n - done).min(10_000);
            let page: Vec<Value> = auth0
                .make_entries(chunk)
                .into_iter()
                .enumerate()
                .map(|(j, fresh)| {
                    let mut e = self.entries[(done + j) % self.entries.len()].clone();
                    let id = fresh["log_id"].as_str().expect("synthetic log_id").to_string();
                    e["log_id"] = Value::String(id.clone());
                    if e.get("_id").is_some() {
                        e["_id"] = Value::String(id.clone());
                    }
                    e["date"] = fresh["date"].clone();
                    ids.push(id);
                    e
                })
                .collect();
            auth0.push(page);
            done += chunk;
        }
        ids
    }
}

/// How many of the pushed log ids reached the fake RudderStack (distinct), and how many events arrived more
/// than once. An event whose log id was never pushed fails the benchmark: the run would measure a bug.
fn delivered(rudder: &FakeRudderStack, ids: &[String]) -> (usize, usize) {
    let arrivals = rudder.arrivals();
    let distinct: HashSet<&str> = arrivals.iter().map(|a| a.log_id.as_str()).collect();
    let pushed: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let strangers = distinct.iter().filter(|id| !pushed.contains(*id)).count();
    assert_eq!(strangers, 0, "RudderStack received {strangers} log ids that were never logged");
    (distinct.len(), arrivals.len() - distinct.len())
}

/// Every pushed log id reached the fake RudderStack, and nothing else did; a scenario whose figures depend on
/// a complete delivery panics otherwise. Returns how many distinct log ids arrived and how many events arrived
/// more than once.
fn verify_delivered(rudder: &FakeRudderStack, ids: &[String], what: &str) -> (usize, usize) {
    let (distinct, dups) = delivered(rudder, ids);
    assert_eq!(
        distinct,
        ids.len(),
        "{what}: {} of {} entries never reached RudderStack",
        ids.len() - distinct,
        ids.len()
    );
    (distinct, dups)
}

/// Seconds from the daemon's start until the outbox holds `n` rows, read from the state file as the daemon
/// writes it (WAL lets a reader in beside the writer).
async fn wait_for_outbox(app: &App, daemon: &Daemon, n: u64, limit: Duration) -> f64 {
    let mut store: Option<Store> = None;
    let mut depth = 0;
    while daemon.started.elapsed() < limit {
        if store.is_none() {
            // The file appears, and is migrated, only after the daemon started.
            store = Store::open_existing(&app.db_path()).ok();
        }
        if let Some(s) = &store {
            depth = s.outbox_depth(DOMAIN).unwrap_or(depth);
            if depth >= n {
                return daemon.started.elapsed().as_secs_f64();
            }
        }
        daemon.assert_alive("waiting for the outbox to fill");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the outbox held {depth} of {n} rows after {limit:?}\n{}", daemon.stderr_tail());
}

/// Wait for a condition while the daemon runs; panics with its stderr when it exits or time runs out.
async fn wait_until(daemon: &Daemon, what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        daemon.assert_alive(what);
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}\n{}", daemon.stderr_tail());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// CPU seconds (user + system) this benchmark process (the fakes) has used so far.
fn self_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; clock ticks are 1/100 s.
    (ticks(11) + ticks(12)) / 100.0
}

// ---------------------------------------------------------------------------------------------------------
// The daemon under GNU time

static SPAWNED: AtomicUsize = AtomicUsize::new(0);

/// The real binary, started under `/usr/bin/time`; `pid` is the daemon itself, not time.
struct Daemon {
    child: tokio::process::Child,
    pid: u32,
    stats: PathBuf,
    stderr: PathBuf,
    started: Instant,
}

/// What GNU time reported, and the wall time measured here.
struct Finished {
    /// The daemon's exit code (time passes it on), if it exited rather than was killed.
    code: Option<i32>,
    /// Seconds from spawn to exit, measured by the benchmark.
    wall: f64,
    max_rss_kb: u64,
    user: f64,
    sys: f64,
    stderr: String,
}

impl Finished {
    fn cpu(&self) -> f64 {
        self.user + self.sys
    }

    fn expect_success(&self, what: &str) {
        assert_eq!(self.code, Some(0), "{what} failed\n{}", tail(&self.stderr));
    }
}

impl Daemon {
    async fn spawn(app: &App, args: &[&str]) -> Daemon {
        let n = SPAWNED.fetch_add(1, Ordering::Relaxed);
        let dir = app.dir.path();
        let stats = dir.join(format!("time-{n}.txt"));
        let stdout = dir.join(format!("stdout-{n}.txt"));
        let stderr = dir.join(format!("stderr-{n}.txt"));
        let mut cmd = tokio::process::Command::new("/usr/bin/time");
        cmd.arg("-o").arg(&stats).arg("-f").arg("%M %U %S %e");
        cmd.arg(bin()).arg("--config").arg(app.config_path()).args(args);
        cmd.env_remove("AUTH0_CLIENT_SECRET").env_remove("RUDDERSTACK_WRITE_KEY").env_remove("RUST_LOG");
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .kill_on_drop(true);
        let started = Instant::now();
        let child = cmd.spawn().expect("spawn /usr/bin/time (GNU time) with the daemon");
        let time_pid = child.id().expect("time's pid");
        // time forks the daemon at once; find it among time's children.
        let children = format!("/proc/{time_pid}/task/{time_pid}/children");
        let deadline = Instant::now() + Duration::from_secs(5);
        let pid = loop {
            let found = std::fs::read_to_string(&children)
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok());
            if let Some(pid) = found {
                break pid;
            }
            assert!(Instant::now() < deadline, "the daemon did not start under /usr/bin/time within 5 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        Daemon { child, pid, stats, stderr, started }
    }

    /// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), while the daemon runs.
    fn proc_status_kb(&self, key: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Send a signal to the daemon itself (time would not pass SIGTERM on). The crate forbids unsafe code,
    /// so this goes through kill(1).
    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "could not send SIG{sig} to the daemon (pid {})", self.pid);
    }

    fn assert_alive(&self, what: &str) {
        let alive = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .is_ok_and(|s| !s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')));
        assert!(alive, "the daemon exited while {what}\n{}", self.stderr_tail());
    }

    fn stderr_tail(&self) -> String {
        tail(&std::fs::read_to_string(&self.stderr).unwrap_or_default())
    }

    async fn wait(mut self, limit: Duration, what: &str) -> Finished {
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(s) => s.expect("wait for /usr/bin/time"),
            Err(_) => {
                self.signal("KILL");
                panic!("{what}: the daemon did not finish within {limit:?}\n{}", self.stderr_tail());
            }
        };
        let wall = self.started.elapsed().as_secs_f64();
        let stats = std::fs::read_to_string(&self.stats).unwrap_or_default();
        // time writes "Command exited with non-zero status N" or "Command terminated by signal N" first.
        let line = stats.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 4, "{what}: unexpected GNU time output {stats:?}");
        let num = |i: usize| f[i].parse::<f64>().unwrap_or_else(|_| panic!("GNU time field {:?}", f[i]));
        let killed = stats.contains("terminated by signal");
        Finished {
            code: if killed { None } else { status.code() },
            wall,
            max_rss_kb: num(0) as u64,
            user: num(1),
            sys: num(2),
            stderr: std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // After a panic elsewhere, do not leave the daemon running (killing time would orphan it).
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = std::process::Command::new("kill").arg("-KILL").arg(self.pid.to_string()).status();
        }
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(30);
    format!("--- daemon stderr (last {} lines)\n{}", lines.len() - from, lines[from..].join("\n"))
}
