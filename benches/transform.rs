//! Transform throughput and the memory bound of `transform`.
//!
//! `cargo bench --bench transform` measures (a) the pure transform over the fixture corpus, in process;
//! (b) the whole `transform` command on a 100,000-entry file, as an operator would run it; (c) the peak
//! resident memory of `transform` for 10k, 100k and 1M entries, as a JSON array and as NDJSON, which must
//! stay flat because the reader streams. Progress goes to stderr; stdout ends with one summary table whose
//! PASS or MISS against each target is decided from the measurement (the README quotes that table). Peak
//! memory is read from `/proc/<pid>/status` (`VmHWM`, the high-water mark) while the child runs, so nothing
//! beyond Linux is needed. Every run's events go to a file, which is then read back and checked (one event per
//! entry, each with its type, UUID ids and a distinct `log_id`) before its figure may PASS. Set
//! `BENCH_QUICK=1` to skip the 1M-entry runs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

#[path = "support/events.rs"]
mod events;
#[path = "../tests/it/support/fixtures.rs"]
mod fixtures;
#[path = "support/proc.rs"]
mod proc;
#[path = "support/table.rs"]
mod table;

use proc::{children_cpu_seconds, load_average};
use table::{Table, fmt_int};

const BIN: &str = env!("CARGO_BIN_EXE_auth0-rudderstack");

/// `transform FILE`, in entries per second of wall time.
const MIN_ENTRIES_PER_SECOND: f64 = 200_000.0;
/// The peak resident memory of `transform`, whatever the input size.
const MAX_PEAK_RSS_MB: f64 = 64.0;

fn main() {
    // Other work on the machine skews every figure below; say how busy it was.
    let load_before = load_average();
    let mut table = Table::default();
    pure_transform(&mut table);
    let dir = tempfile::tempdir().expect("temp dir");
    whole_process(dir.path(), &mut table);
    peak_memory(dir.path(), &mut table);
    table.section("Machine");
    table.info("load average (1, 5, 15 min) at start / end", format!("{load_before} / {}", load_average()));
    table.print();
}

/// (a) `transform_entry` over the 142 fixture entries, repeated for about two seconds.
fn pure_transform(table: &mut Table) {
    let corpus: Vec<Box<RawValue>> =
        fixtures::corpus_entries().into_iter().map(|e| RawValue::from_string(e).expect("JSON")).collect();
    let bytes_per_round: usize = corpus.iter().map(|e| e.get().len()).sum();
    let tenant = fixtures::TENANT;
    let mut rounds = 0u64;
    let mut out_bytes = 0u64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        for entry in &corpus {
            match auth0_rudderstack::transform::transform_entry(tenant, entry) {
                Ok(event) => out_bytes += event.json.len() as u64,
                Err(e) => panic!("{e}"),
            }
        }
        rounds += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let entries = rounds * corpus.len() as u64;
    eprintln!("(a) pure transform: {entries} entries in {secs:.2} s");
    table.section(&format!(
        "(a) pure transform, fixture corpus ({} entries, {} bytes per round), one thread",
        corpus.len(),
        bytes_per_round
    ));
    table.info(
        "throughput",
        format!(
            "{} entries/s, {:.1} MB/s in, {:.1} MB/s out",
            fmt_int(entries as f64 / secs),
            (rounds * bytes_per_round as u64) as f64 / secs / 1e6,
            out_bytes as f64 / secs / 1e6
        ),
    );
}

/// Check the events `transform` wrote to `out` for `n` entries, then remove the file.
fn check_output(out: &Path, n: usize) {
    let checked = events::check_events(out, &mut |_, _| {});
    assert_eq!(
        (checked.events, checked.distinct_log_ids),
        (n, n),
        "{}: events, distinct log_ids",
        out.display()
    );
    std::fs::remove_file(out).expect("remove");
}

/// (b) The release binary's `transform` on a 100,000-entry file, output to a file (median of 3 runs).
fn whole_process(dir: &Path, table: &mut Table) {
    let n = 100_000;
    table.section(&format!(
        "(b) `auth0-rudderstack transform FILE`, {} entries, median of 3 runs",
        fmt_int(n as f64)
    ));
    table.note("CPU time is the child's user + system time, which other load on the machine barely changes.");
    for (shape, write) in
        [("array", fixtures::write_array as fn(&Path, usize) -> u64), ("ndjson", fixtures::write_ndjson)]
    {
        let path = dir.join(format!("bench-{n}.{shape}"));
        let bytes = write(&path, n);
        let mut times: Vec<(f64, f64)> = (0..3)
            .map(|_| {
                let cpu_before = children_cpu_seconds();
                let start = Instant::now();
                let out = dir.join("events.json");
                let status = Command::new(BIN)
                    .arg("transform")
                    .arg(&path)
                    .stdout(std::fs::File::create(&out).expect("create the output"))
                    .stderr(Stdio::null())
                    .status()
                    .expect("run transform");
                assert!(status.success(), "transform failed: {status}");
                let times = (start.elapsed().as_secs_f64(), children_cpu_seconds() - cpu_before);
                check_output(&out, n);
                times
            })
            .collect();
        times.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (secs, cpu) = times[1];
        let rate = n as f64 / secs;
        eprintln!("(b) {shape}: {:.3} s", secs);
        table.row(
            &format!("{shape} ({:.1} MB)", bytes as f64 / 1e6),
            format!("{} entries/s, {:.1} MB/s ({secs:.3} s)", fmt_int(rate), bytes as f64 / secs / 1e6),
            format!("≥ {} entries/s", fmt_int(MIN_ENTRIES_PER_SECOND)),
            rate >= MIN_ENTRIES_PER_SECOND,
        );
        table.info(
            &format!("{shape}: CPU (user + system)"),
            format!("{cpu:.2} s, {} entries per CPU second", fmt_int(n as f64 / cpu)),
        );
        std::fs::remove_file(&path).expect("remove");
    }
}

/// (c) Peak RSS of `transform` for growing inputs.
fn peak_memory(dir: &Path, table: &mut Table) {
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    table.section("(c) peak RSS (VmHWM) of `transform FILE > events.json`");
    for n in [10_000usize, 100_000, 1_000_000] {
        if quick && n > 100_000 {
            continue;
        }
        for (shape, write) in
            [("array", fixtures::write_array as fn(&Path, usize) -> u64), ("ndjson", fixtures::write_ndjson)]
        {
            let path = dir.join(format!("rss-{n}.{shape}"));
            let bytes = write(&path, n);
            let start = Instant::now();
            let out = dir.join("events.json");
            let mut child = Command::new(BIN)
                .arg("transform")
                .arg(&path)
                .stdout(std::fs::File::create(&out).expect("create the output"))
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn transform");
            let status_file = format!("/proc/{}/status", child.id());
            let mut peak_kb = 0u64;
            let status = loop {
                if let Some(kb) = vm_hwm_kb(&status_file) {
                    peak_kb = peak_kb.max(kb);
                }
                if let Some(status) = child.try_wait().expect("wait") {
                    break status;
                }
                std::thread::sleep(Duration::from_millis(2));
            };
            assert!(status.success(), "transform failed: {status}");
            let secs = start.elapsed().as_secs_f64();
            check_output(&out, n);
            let peak_mb = peak_kb as f64 / 1024.0;
            eprintln!("(c) {n} {shape}: {peak_mb:.1} MB");
            table.row(
                &format!("{} entries, {shape} ({:.1} MB)", fmt_int(n as f64), bytes as f64 / 1e6),
                format!("{peak_mb:.1} MB ({secs:.2} s)"),
                format!("< {MAX_PEAK_RSS_MB:.0} MB"),
                peak_mb < MAX_PEAK_RSS_MB,
            );
            std::fs::remove_file(&path).expect("remove");
        }
    }
}

/// The `VmHWM` line of a `/proc/<pid>/status`, in kB (gone once the process has exited).
fn vm_hwm_kb(path: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
