//! What the privacy rules cost on top of the transform.
//!
//! `cargo bench --bench privacy` runs the pure transform and privacy + transform over the same entries in one
//! process, alternating the two in short rounds so that other load on the machine hits both alike, and prints
//! both rates, their ratio and whether privacy stays within its budget: at most 50 % slower than the
//! transform alone, with `hash = ["email", "user_name", "name"]` and `truncate_ip = true` (which searches
//! every string of the entry for addresses).
//!
//! Two corpora: the 142 fixture entries (they stay in the CPU caches), and 100,000 synthetic entries made
//! from them with unique log_ids (they do not). Two comparisons on each:
//!
//! - **strict**: `transform_entry` on an already parsed entry, against `Privacy::apply` on the entry's text
//!   plus `transform_entry` on the rewritten entry (parsed beforehand, outside the timing). This is the
//!   budget's comparison: privacy's whole cost against the transform's alone.
//! - **as the pipeline runs**: entry text → `RawValue::from_string` → `transform_entry`, against entry text →
//!   `apply` → `RawValue::from_string` → `transform_entry`. The pipeline parses stored text anyway, so this is
//!   the slowdown an operator would see.
//!
//! Times are CPU time of the benchmark thread (`/proc/thread-self/schedstat`), which time spent waiting for
//! a core does not inflate; wall-clock ratios are printed beside them. Set `BENCH_QUICK=1` for fewer rounds.
//!
//! Last, **the 100,000-entry transform**: the release binary's `transform FILE` on 100,000 entries, once with
//! `--domain` and once with `-c` naming a config with those `[privacy]` rules, alternating, fifteen runs each.
//! The budget's verdict is taken here, on the median CPU seconds of the child processes (user + system, which
//! waiting for a core does not inflate); the median wall-clock ratio is printed beside it. This is what an
//! operator running `transform` on an archive pays for privacy. A run takes a third of a second, and the
//! median of five moved by up to 0.02 from one invocation to the next, as much as the margins it judged.

use std::hint::black_box;
use std::time::{Duration, Instant};

use auth0_rudderstack::privacy::{Privacy, Rules};
use auth0_rudderstack::transform::transform_entry;
use secrecy::SecretSlice;
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
use table::fmt_int;

/// The budget: privacy + transform may take at most this many times the transform's time.
const BUDGET: f64 = 1.50;

fn main() {
    println!("load average at start: {}", load_average());
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let privacy = Privacy::new(
        &Rules {
            hash: vec!["email".into(), "user_name".into(), "name".into()],
            truncate_ip: true,
            ..Rules::default()
        },
        Some(SecretSlice::from(b"bench-key-0123456789abcdef".to_vec())),
    )
    .expect("rules");
    println!("privacy: {}", privacy.describe());
    let rounds = if quick { 6 } else { 20 };
    let fixture = fixtures::corpus_entries();
    let synthetic: Vec<String> = fixtures::synthetic_entries(100_000).collect();
    let mut pass = true;
    for (name, corpus, round_time) in [
        ("fixture corpus (142 entries)", &fixture, Duration::from_millis(250)),
        ("synthetic, 100,000 entries", &synthetic, Duration::ZERO),
    ] {
        pass &= compare(name, corpus, &privacy, rounds, round_time);
    }
    let whole = whole_process(if quick { 5 } else { 15 });
    println!("load average at end: {}", load_average());
    println!(
        "overall: {} (the budget is judged on the 100,000-entry transform; the per-entry ratios above are {})",
        if whole { "PASS" } else { "MISS" },
        if pass { "within it too" } else { "stricter and shown for information" }
    );
}

/// The release binary's `transform` on 100,000 entries, with and without the privacy rules; whether the
/// median CPU ratio is within the budget.
fn whole_process(runs: usize) -> bool {
    use std::process::{Command, Stdio};
    const BIN: &str = env!("CARGO_BIN_EXE_auth0-rudderstack");
    const DOMAIN: &str = "bench-tenant.example.com";
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("entries.json");
    let bytes = fixtures::write_array(&input, 100_000);
    let key = dir.path().join("hash.key");
    std::fs::write(&key, "bench-key-0123456789abcdef\n").expect("key");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"[auth0]
domain = "{DOMAIN}"
client_id = "bench"
client_secret = "bench-secret"
[rudderstack]
data_plane_url = "http://127.0.0.1:9"
write_key = "bench-key"
[privacy]
hash = ["email", "user_name", "name"]
truncate_ip = true
hash_key_file = "{}"
"#,
            key.display()
        ),
    )
    .expect("config");
    let out = dir.path().join("events.json");
    let run = |with_privacy: bool| -> (f64, f64) {
        let mut cmd = Command::new(BIN);
        if with_privacy {
            cmd.arg("-c").arg(&config).arg("transform");
        } else {
            cmd.args(["transform", "--domain", DOMAIN]);
        }
        let file = std::fs::File::create(&out).expect("create the output");
        cmd.arg(&input).stdout(file).stderr(Stdio::null());
        let cpu = children_cpu_seconds();
        let start = Instant::now();
        let status = cmd.status().expect("run transform");
        assert!(status.success(), "transform failed: {status}");
        let measured = (start.elapsed().as_secs_f64(), children_cpu_seconds() - cpu);
        check_run(&out, with_privacy);
        measured
    };
    let (mut plain, mut private) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        plain.push(run(false));
        private.push(run(true));
    }
    let median = |v: &mut Vec<(f64, f64)>, cpu: bool| {
        let mut x: Vec<f64> = v.iter().map(|&(w, c)| if cpu { c } else { w }).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    let (plain_cpu, private_cpu) = (median(&mut plain, true), median(&mut private, true));
    let (plain_wall, private_wall) = (median(&mut plain, false), median(&mut private, false));
    let ratio = private_cpu / plain_cpu;
    println!();
    println!(
        "the 100,000-entry transform ({:.0} MB), `transform FILE`, median of {runs} runs each",
        bytes as f64 / 1e6
    );
    println!(
        "    without privacy    {plain_cpu:.3} CPU s   {plain_wall:.2} s wall   {} entries/s",
        fmt_int(1e5 / plain_wall)
    );
    println!(
        "    with privacy       {private_cpu:.3} CPU s   {private_wall:.2} s wall   {} entries/s",
        fmt_int(1e5 / private_wall)
    );
    println!(
        "    ratio {ratio:.3} (privacy costs {:+.1} %; wall clock {:.3}): {} against ≤ {BUDGET:.2}",
        (ratio - 1.0) * 100.0,
        private_wall / plain_wall,
        if ratio <= BUDGET { "PASS" } else { "MISS" }
    );
    ratio <= BUDGET
}

/// Check what one `transform FILE` run of the 100,000 entries wrote: every event there, and the rules at work
/// exactly when they were asked for. With them, no IPv4 address in `context.ip` keeps its last octet and
/// every `context.traits.user_name` is a 64-digit hex hash; without them, clear values are there to rewrite
/// (so the check cannot pass on an input that had nothing to hide).
fn check_run(out: &std::path::Path, with_privacy: bool) {
    let (mut clear_ips, mut clear_names, mut ips, mut names) = (0usize, 0usize, 0usize, 0usize);
    let checked = events::check_events(out, &mut |i, e| {
        if let Some(ip) = e.context.get("ip").and_then(|v| v.as_str()) {
            ips += 1;
            if ip.parse::<std::net::Ipv4Addr>().is_ok_and(|a| a.octets()[3] != 0) {
                clear_ips += 1;
                assert!(!with_privacy, "event {i}: context.ip {ip} kept its last octet");
            }
        }
        let traits = e.context.get("traits").and_then(|t| t.as_object());
        let name = traits.and_then(|t| t.get("user_name")).and_then(|v| v.as_str()).unwrap_or_default();
        if !name.is_empty() {
            names += 1;
            let hashed = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
            clear_names += usize::from(!hashed);
            assert!(!with_privacy || hashed, "event {i}: user_name {name} is not hashed");
        }
    });
    assert_eq!((checked.events, checked.distinct_log_ids), (100_000, 100_000), "events, distinct log_ids");
    assert!(ips > 0 && names > 0, "the corpus has {ips} addresses and {names} user names to look at");
    if !with_privacy {
        assert!(
            clear_ips > 0 && clear_names > 0,
            "nothing in clear without the rules: the check would be empty"
        );
    }
}

/// Time both comparisons over `corpus` in `rounds` alternating rounds; each round runs every entry at least
/// once and for at least `round_time`. Returns whether the strict ratio is within the budget.
fn compare(name: &str, corpus: &[String], privacy: &Privacy, rounds: u32, round_time: Duration) -> bool {
    let tenant = fixtures::TENANT;
    let parsed: Vec<Box<RawValue>> =
        corpus.iter().map(|e| RawValue::from_string(e.clone()).expect("JSON")).collect();
    let rewritten: Vec<Box<RawValue>> = corpus
        .iter()
        .map(|e| RawValue::from_string(privacy.apply(e).expect("applies").into_owned()).expect("JSON"))
        .collect();
    let changed = corpus.iter().zip(&rewritten).filter(|(a, b)| a.as_str() != b.get()).count();
    let bytes: usize = corpus.iter().map(String::len).sum();

    // Each closure runs the whole corpus once.
    let transform_alone = || {
        for entry in &parsed {
            black_box(transform_entry(tenant, entry).expect("transforms"));
        }
    };
    let privacy_alone = || {
        for entry in corpus {
            black_box(privacy.apply(entry).expect("applies"));
        }
    };
    let transform_rewritten = || {
        for entry in &rewritten {
            black_box(transform_entry(tenant, entry).expect("transforms"));
        }
    };
    let pipeline_without = || {
        for entry in corpus {
            let raw = RawValue::from_string(entry.clone()).expect("JSON");
            black_box(transform_entry(tenant, &raw).expect("transforms"));
        }
    };
    let pipeline_with = || {
        for entry in corpus {
            let text = privacy.apply(entry).expect("applies").into_owned();
            let raw = RawValue::from_string(text).expect("JSON");
            black_box(transform_entry(tenant, &raw).expect("transforms"));
        }
    };

    let mut cpu = [0u64; 5];
    let mut wall = [Duration::ZERO; 5];
    let mut runs = [0u64; 5];
    let work: [&dyn Fn(); 5] =
        [&transform_alone, &privacy_alone, &transform_rewritten, &pipeline_without, &pipeline_with];
    for _ in 0..rounds {
        for (i, run) in work.iter().enumerate() {
            let cpu_start = cpu_ns();
            let start = Instant::now();
            loop {
                run();
                runs[i] += 1;
                if start.elapsed() >= round_time {
                    break;
                }
            }
            wall[i] += start.elapsed();
            cpu[i] += cpu_ns() - cpu_start;
        }
    }
    // CPU seconds per entry of each piece of work, and the same in wall-clock time.
    let entries = |i: usize| runs[i] as f64 * corpus.len() as f64;
    let per_entry: Vec<f64> = (0..5).map(|i| cpu[i] as f64 / 1e9 / entries(i)).collect();
    let wall_per_entry: Vec<f64> = (0..5).map(|i| wall[i].as_secs_f64() / entries(i)).collect();
    // One line per measurement: entries per second and time per entry.
    let row = |label: &str, secs: f64| {
        println!("    {label:<27}{:>10} entries/s  {:>7.3} µs", fmt_int(1.0 / secs), secs * 1e6);
    };
    let strict_with = per_entry[1] + per_entry[2];
    let strict = strict_with / per_entry[0];
    let strict_wall = (wall_per_entry[1] + wall_per_entry[2]) / wall_per_entry[0];
    let pipeline = per_entry[4] / per_entry[3];
    let pipeline_wall = wall_per_entry[4] / wall_per_entry[3];

    println!();
    println!(
        "{name}: {} bytes per entry on average, {changed} of {} entries rewritten",
        bytes / corpus.len(),
        corpus.len()
    );
    println!("  strict (the budget's comparison), CPU time per entry");
    row("transform alone", per_entry[0]);
    row("privacy alone", per_entry[1]);
    row("transform, rewritten entry", per_entry[2]);
    row("privacy + transform", strict_with);
    println!(
        "    ratio {strict:.3} (privacy costs {:+.1} %; wall clock {strict_wall:.3}): {} against ≤ {BUDGET:.2}",
        (strict - 1.0) * 100.0,
        if strict <= BUDGET { "PASS" } else { "MISS" }
    );
    println!("  as the pipeline runs (stored text parsed, then transformed), CPU time per entry");
    row("without privacy", per_entry[3]);
    row("with privacy", per_entry[4]);
    println!(
        "    ratio {pipeline:.3} (privacy costs {:+.1} %; wall clock {pipeline_wall:.3})",
        (pipeline - 1.0) * 100.0
    );
    strict <= BUDGET
}

/// Nanoseconds this thread has run on a CPU: the first field of `/proc/thread-self/schedstat`.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .expect("read /proc/thread-self/schedstat")
}
