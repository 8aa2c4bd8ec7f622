//! Transform throughput and the memory bound of `transform`.
//!
//! `cargo bench --bench transform` prints three tables: (a) the pure transform over the fixture corpus, in
//! process; (b) the whole `transform` command on a 100,000-entry file, as an operator would run it; (c) the
//! peak resident memory of `transform` for 10k, 100k and 1M entries, as a JSON array and as NDJSON, which must
//! stay flat because the reader streams. Peak memory is read from `/proc/<pid>/status` (`VmHWM`, the
//! high-water mark) while the child runs, so nothing beyond Linux is needed. Set `BENCH_QUICK=1` to skip the
//! 1M-entry runs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

#[path = "../tests/it/support/fixtures.rs"]
mod fixtures;

const BIN: &str = env!("CARGO_BIN_EXE_auth0-rudderstack");

fn main() {
    // Other work on the machine skews every figure below; say how busy it was.
    println!("load average at start: {}", load_average());
    pure_transform();
    let dir = tempfile::tempdir().expect("temp dir");
    whole_process(dir.path());
    peak_memory(dir.path());
    println!("load average at end: {}", load_average());
}

/// CPU seconds (user + system) of all waited-for children of this process so far: fields 16 and 17 of
/// `/proc/self/stat`, in clock ticks (100 per second on Linux).
fn children_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    // The command name (field 2) may contain spaces; fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[13].parse::<u64>().expect("cutime") + fields[14].parse::<u64>().expect("cstime");
    ticks as f64 / 100.0
}

/// The 1, 5 and 15 minute load averages, from `/proc/loadavg`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// (a) `transform_entry` over the 142 fixture entries, repeated for about two seconds.
fn pure_transform() {
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
    println!(
        "(a) pure transform, fixture corpus ({} entries, {} bytes per round), one thread",
        corpus.len(),
        bytes_per_round
    );
    println!(
        "    {:>12} entries/s   {:>8.1} MB/s in   {:>8.1} MB/s out   ({} entries in {:.2} s)",
        fmt_int(entries as f64 / secs),
        (rounds * bytes_per_round as u64) as f64 / secs / 1e6,
        out_bytes as f64 / secs / 1e6,
        entries,
        secs
    );
    println!();
}

/// (b) The release binary's `transform` on a 100,000-entry file, output to /dev/null and to a file.
fn whole_process(dir: &Path) {
    let n = 100_000;
    println!("(b) `auth0-rudderstack transform FILE` on {n} entries (median of 3 runs)");
    println!("    (CPU s = the child's user + system time, which other load on the machine barely changes)");
    println!(
        "    {:<8} {:>10} {:>14} {:>10} {:>10} {:>8} {:>18}",
        "input", "MB", "entries/s", "MB/s", "seconds", "CPU s", "entries/CPU-s"
    );
    for (shape, write) in
        [("array", fixtures::write_array as fn(&Path, usize) -> u64), ("ndjson", fixtures::write_ndjson)]
    {
        let path = dir.join(format!("bench-{n}.{shape}"));
        let bytes = write(&path, n);
        let mut times: Vec<(f64, f64)> = (0..3)
            .map(|_| {
                let cpu_before = children_cpu_seconds();
                let start = Instant::now();
                let status = Command::new(BIN)
                    .arg("transform")
                    .arg(&path)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .expect("run transform");
                assert!(status.success(), "transform failed: {status}");
                (start.elapsed().as_secs_f64(), children_cpu_seconds() - cpu_before)
            })
            .collect();
        times.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (secs, cpu) = times[1];
        println!(
            "    {:<8} {:>10.1} {:>14} {:>10.1} {:>10.3} {:>8.2} {:>18}",
            shape,
            bytes as f64 / 1e6,
            fmt_int(n as f64 / secs),
            bytes as f64 / secs / 1e6,
            secs,
            cpu,
            fmt_int(n as f64 / cpu)
        );
        std::fs::remove_file(&path).expect("remove");
    }
    println!();
}

/// (c) Peak RSS of `transform` for growing inputs.
fn peak_memory(dir: &Path) {
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    println!("(c) peak RSS (VmHWM) of `transform FILE > /dev/null`");
    println!(
        "    {:>9} {:<8} {:>10} {:>12} {:>10}",
        "entries", "input", "input MB", "peak RSS MB", "seconds"
    );
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
            let mut child = Command::new(BIN)
                .arg("transform")
                .arg(&path)
                .stdout(Stdio::null())
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
            println!(
                "    {:>9} {:<8} {:>10.1} {:>12.1} {:>10.2}",
                n,
                shape,
                bytes as f64 / 1e6,
                peak_kb as f64 / 1024.0,
                start.elapsed().as_secs_f64()
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

/// A count with thousands separators.
fn fmt_int(x: f64) -> String {
    let digits = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
