//! `import` measured: the release binary importing a 1,000,000-entry gzipped NDJSON archive into a loopback
//! fake RudderStack, end to end (read, decompress, enqueue, transform, deliver).
//!
//! `cargo bench --bench import` prints entries per second, peak resident memory (the child's `VmHWM`, from
//! GNU time) and CPU seconds per 100,000 entries, each with its target and PASS or MISS computed from the
//! measurement, and checks that every entry was delivered exactly once (a benchmark of a broken run would be
//! worthless). The archive is made of the 142 real fixture entries with fresh log ids (about 1.3 KB each).
//! `BENCH_ENTRIES=N` changes the size (for a quick look).

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[path = "../tests/it/support/mod.rs"]
mod support;

use support::app::App;
use support::fake_rudderstack::{self, FakeRudderStack};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("BENCH_ENTRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let rudder = FakeRudderStack::start(fake_rudderstack::Options {
        write_keys: vec![support::app::WRITE_KEY.into()],
        keep_events: false,
        ..fake_rudderstack::Options::default()
    })
    .await;
    // A closed port: an import never asks Auth0 anything.
    let app = App::with_urls("http://127.0.0.1:9", &rudder.url());
    let file = app.dir.path().join("archive.ndjson.gz");
    let made = Instant::now();
    let bytes = write_archive(&file, n);
    eprintln!(
        "archive: {n} entries, {:.0} MB gzipped, written in {:.1} s",
        bytes as f64 / 1e6,
        made.elapsed().as_secs_f64()
    );

    let time_out = app.dir.path().join("time.txt");
    let mut cmd = tokio::process::Command::new("/usr/bin/time");
    cmd.arg("-f").arg("%M %U %S").arg("-o").arg(&time_out).arg(support::app::bin());
    cmd.arg("--config").arg(app.config_path()).arg("import").arg(&file);
    cmd.env_remove("RUST_LOG").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    cmd.kill_on_drop(true);
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(1800), cmd.output())
        .await
        .expect("import finished")
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(out.status.success(), "import failed: {}", String::from_utf8_lossy(&out.stderr));
    let arrivals = rudder.arrivals();
    let distinct: std::collections::HashSet<&str> = arrivals.iter().map(|a| a.log_id.as_str()).collect();
    assert_eq!((arrivals.len(), distinct.len()), (n, n), "every entry exactly once");
    let time = std::fs::read_to_string(&time_out).expect("GNU time's report");
    let fields: Vec<f64> = time.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    let (peak_mb, cpu) = (fields[0] / 1024.0, fields[1] + fields[2]);
    let rate = n as f64 / secs;

    println!();
    println!("import of a {n}-entry gzipped NDJSON archive into a loopback RudderStack (one run)");
    let row = |what: &str, value: String, target: &str, pass: bool| {
        println!("    {what:<34} {value:<28} {target:<18} {}", if pass { "PASS" } else { "MISS" });
    };
    row("entries per second (wall)", format!("{:.0} ({secs:.1} s)", rate), "≥ 20,000", rate >= 20_000.0);
    row("peak RSS of the import", format!("{peak_mb:.1} MB"), "≤ 64 MB", peak_mb <= 64.0);
    println!("    {:<34} {:.2} s", "CPU seconds per 100,000 entries", cpu / n as f64 * 100_000.0);
    println!("    {:<34} {} events, {} distinct", "delivered", arrivals.len(), distinct.len());
}

/// Write `n` fixture entries with fresh, increasing log ids as gzipped NDJSON; returns the file's size.
fn write_archive(path: &std::path::Path, n: usize) -> u64 {
    let corpus = support::fixtures::corpus_entries();
    let values: Vec<serde_json::Value> = corpus.iter().map(|t| serde_json::from_str(t).unwrap()).collect();
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    for i in 0..n {
        let mut e = values[i % values.len()].clone();
        let id = format!("900{:053}", i + 1);
        e["log_id"] = serde_json::json!(id);
        if e.get("_id").is_some() {
            e["_id"] = serde_json::json!(id);
        }
        serde_json::to_writer(&mut gz, &e).unwrap();
        gz.write_all(b"\n").unwrap();
    }
    gz.finish().unwrap().into_inner().unwrap().sync_all().unwrap();
    std::fs::metadata(path).unwrap().len()
}
