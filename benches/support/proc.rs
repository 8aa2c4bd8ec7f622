//! What `/proc` says about CPU time and load, for the benchmarks that measure the real binary.
//!
//! Included by each benchmark with `#[path]`.

#![allow(dead_code)]

/// The fields of a `/proc/.../stat` line after the command name, which is in parentheses and may hold spaces:
/// field `i` of the result is field `i + 3` of the whole line.
fn stat_fields(path: &str) -> Vec<u64> {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect()
}

/// Clock ticks to seconds (100 ticks a second on Linux).
fn seconds(ticks: u64) -> f64 {
    ticks as f64 / 100.0
}

/// User plus system CPU seconds of process `pid` so far (fields 14 and 15: utime, stime).
pub fn cpu_seconds(pid: u32) -> f64 {
    let f = stat_fields(&format!("/proc/{pid}/stat"));
    seconds(f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0))
}

/// User plus system CPU seconds of all waited-for children of this process so far, to the microsecond.
///
/// `getrusage` rather than `/proc/self/stat`, whose `cutime` and `cstime` count whole ticks of 10 ms: on a run
/// of a third of a second that alone would move a ratio by up to 3 %.
pub fn children_cpu_seconds() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage(RUSAGE_CHILDREN)");
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    secs(usage.user_time()) + secs(usage.system_time())
}

/// The 1, 5 and 15 minute load averages, from `/proc/loadavg`.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
