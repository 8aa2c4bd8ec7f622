//! `import` measured: the release binary importing a 1,000,000-entry gzipped NDJSON archive into a loopback
//! fake RudderStack, end to end (read, decompress, enqueue, transform, deliver).
//!
//! `cargo bench --bench import` prints entries per second, peak resident memory (the child's `VmHWM`, from
//! GNU time) and CPU seconds per 100,000 entries, each with its target and PASS or MISS computed from the
//! measurement, and checks that every entry was delivered exactly once (a benchmark of a broken run would be
//! worthless). The archive is made of the 142 real fixture entries with fresh log ids (about 1.3 KB each).
//! `BENCH_ENTRIES=N` changes the size (for a quick look).
//!
//! Then one entry far over the entry limit: a small gzip holding 2,000 normal entries and, among them, one
//! Log Streams wrapper of 150 MB (`BENCH_BIG_MB` changes it), made on the fly through the encoder and never
//! held. `import` and `transform` of it must each peak at ≤ 64 MB; the bench checks that the normal entries
//! were delivered (and written by `transform`), and that exactly one dead letter holds the big entry's size and
//! SHA-256, as computed while the archive was written. `BENCH_PART=archive` or `BENCH_PART=oversized` runs one
//! part only. `BENCH_BIN=PATH` runs another build's binary through the same archive part (an older commit's,
//! to compare two builds on one machine in one sitting: figures from different days are not comparable).

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[path = "../tests/it/support/mod.rs"]
mod support;

use support::app::App;
use support::fake_rudderstack::{self, FakeRudderStack};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let part = std::env::var("BENCH_PART").unwrap_or_default();
    if part != "oversized" {
        archive().await;
    }
    if part != "archive" {
        oversized().await;
    }
}

/// The 1,000,000-entry archive, end to end.
async fn archive() {
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
    let bin = std::env::var("BENCH_BIN").unwrap_or_else(|_| support::app::bin().to_owned());
    cmd.arg("-f").arg("%M %U %S").arg("-o").arg(&time_out).arg(&bin);
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
    println!("import of a {n}-entry gzipped NDJSON archive into a loopback RudderStack (one run of {bin})");
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

/// What was written of the oversized entry: its log_id, size and SHA-256 (hex).
struct Big {
    log_id: String,
    size: u64,
    sha256: String,
}

/// Write `normal` fixture entries as gzipped NDJSON with, in their middle, one Log Streams wrapper of about
/// `mb` megabytes (a `description` of that many `x`), streamed through the encoder in 64 KiB pieces and hashed
/// as it goes, so the bench never holds it either.
fn write_oversized_archive(path: &Path, normal: usize, mb: usize) -> Big {
    use sha2::Digest;
    let corpus = support::fixtures::corpus_entries();
    let values: Vec<serde_json::Value> = corpus.iter().map(|t| serde_json::from_str(t).unwrap()).collect();
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let entry = |i: usize| {
        let mut e = values[i % values.len()].clone();
        let id = format!("910{:053}", i + 1);
        e["log_id"] = serde_json::json!(id);
        if e.get("_id").is_some() {
            e["_id"] = serde_json::json!(id);
        }
        e
    };
    for i in 0..normal / 2 {
        serde_json::to_writer(&mut gz, &entry(i)).unwrap();
        gz.write_all(b"\n").unwrap();
    }
    let log_id = format!("920{:053}", 1);
    let mut hasher = sha2::Sha256::new();
    let mut size = 0u64;
    let mut put = |gz: &mut flate2::write::GzEncoder<_>, bytes: &[u8]| {
        gz.write_all(bytes).unwrap();
        hasher.update(bytes);
        size += bytes.len() as u64;
    };
    put(
        &mut gz,
        format!(r#"{{"log_id":"{log_id}","data":{{"type":"s","log_id":"{log_id}","description":""#)
            .as_bytes(),
    );
    let piece = vec![b'x'; 64 << 10];
    for _ in 0..(mb << 20) / piece.len() {
        put(&mut gz, &piece);
    }
    put(&mut gz, b"\"}}");
    gz.write_all(b"\n").unwrap();
    for i in normal / 2..normal {
        serde_json::to_writer(&mut gz, &entry(i)).unwrap();
        gz.write_all(b"\n").unwrap();
    }
    gz.finish().unwrap().into_inner().unwrap().sync_all().unwrap();
    let sha256 = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Big { log_id, size, sha256 }
}

/// Run the binary with `args` under GNU time; its output and peak RSS in MB.
async fn measured(args: &[&std::ffi::OsStr], dir: &Path) -> (std::process::Output, f64) {
    let time_out = dir.join("time-oversized.txt");
    let mut cmd = tokio::process::Command::new("/usr/bin/time");
    cmd.arg("-f").arg("%M").arg("-o").arg(&time_out).arg(support::app::bin()).args(args);
    cmd.env_remove("RUST_LOG").stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(900), cmd.output())
        .await
        .expect("finished in time")
        .unwrap();
    let time = std::fs::read_to_string(&time_out).expect("GNU time's report");
    let kb: f64 = time.split_whitespace().filter_map(|v| v.parse().ok()).next_back().expect("a figure");
    (out, kb / 1024.0)
}

/// `import` and `transform` of a gzip holding one 150 MB entry among normal ones.
async fn oversized() {
    let mb: usize = std::env::var("BENCH_BIG_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(150);
    let normal = 2_000;
    let rudder = FakeRudderStack::start(fake_rudderstack::Options {
        write_keys: vec![support::app::WRITE_KEY.into()],
        keep_events: false,
        ..fake_rudderstack::Options::default()
    })
    .await;
    let app = App::with_urls("http://127.0.0.1:9", &rudder.url());
    let file = app.dir.path().join("oversized.ndjson.gz");
    let big = write_oversized_archive(&file, normal, mb);
    eprintln!(
        "archive: {normal} entries and one of {} MB, {:.1} MB gzipped",
        big.size / 1_000_000,
        std::fs::metadata(&file).unwrap().len() as f64 / 1e6
    );
    let config = app.config_path();

    // import: the normal entries delivered, the big one a dead letter, counted in the summary.
    let args = [std::ffi::OsStr::new("--config"), config.as_os_str(), "import".as_ref(), file.as_os_str()];
    let (out, import_mb) = measured(&args, app.dir.path()).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "import failed: {stderr}");
    assert!(stderr.contains("dead_letters=1"), "the summary counts the entry set aside: {stderr}");
    let arrivals = rudder.arrivals();
    let distinct: std::collections::HashSet<&str> = arrivals.iter().map(|a| a.log_id.as_str()).collect();
    assert_eq!((arrivals.len(), distinct.len()), (normal, normal), "every normal entry exactly once");
    assert!(!distinct.contains(big.log_id.as_str()), "the big entry was delivered");
    let list = app.command(&["dead-letter", "list", "--json"]).output().await.unwrap();
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    let letters: Vec<serde_json::Value> = serde_json::from_slice(&list.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&list.stderr)));
    assert_eq!(letters.len(), 1, "exactly one dead letter: {letters:?}");
    let letter = &letters[0];
    assert_eq!(letter["size"].as_u64(), Some(big.size), "{letter}");
    assert_eq!(letter["sha256"].as_str(), Some(big.sha256.as_str()), "{letter}");
    assert_eq!(letter["log_id"].as_str(), Some(big.log_id.as_str()), "{letter}");
    assert_eq!(letter["withheld"], true);
    assert!(letter["raw"].as_str().is_some_and(|r| r.len() <= 4096), "at most 4 KiB kept");

    // transform: the normal entries' events written, the big one reported by its position.
    let args =
        ["transform".as_ref(), "--domain".as_ref(), support::fake_auth0::DOMAIN.as_ref(), file.as_os_str()];
    let (out, transform_mb) = measured(&args, app.dir.path()).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "transform failed: {stderr}");
    assert!(stderr.contains(&format!("entry {}", normal / 2 + 1)), "it names the entry: {stderr}");
    assert!(stderr.contains("1 entries set aside"), "{stderr}");
    // The events of 2,000 entries: a few megabytes.
    let events: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let written: std::collections::HashSet<&str> =
        events.iter().filter_map(|e| e["properties"]["log_id"].as_str()).collect();
    assert_eq!((events.len(), written.len()), (normal, normal), "an event for every normal entry");

    println!();
    println!("one {} MB entry among {normal} normal ones, gzipped (one run each)", big.size / 1_000_000);
    let row = |what: &str, value: String, target: &str, pass: bool| {
        println!("    {what:<34} {value:<28} {target:<18} {}", if pass { "PASS" } else { "MISS" });
    };
    row("peak RSS of import", format!("{import_mb:.1} MB"), "≤ 64 MB", import_mb <= 64.0);
    row("peak RSS of transform", format!("{transform_mb:.1} MB"), "≤ 64 MB", transform_mb <= 64.0);
    println!("    {:<34} {} events, 1 dead letter of {} bytes", "delivered", arrivals.len(), big.size);
}
